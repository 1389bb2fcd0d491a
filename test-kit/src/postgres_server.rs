//! A throwaway PostgreSQL: `initdb` in its own temp dir, its own port, stopped on drop.
//!
//! Used by the relay's integration tests and its benchmark, so neither touches a server
//! already running on 5432 nor shares state with another. `initdb` refuses to run as root, so
//! as root the binaries run as the `postgres` user (`runuser`) on a directory that user owns.
//! Binaries are found through `FERRY_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`,
//! else `PATH`. [`PostgresServer::start_with_tls`] serves TLS only (`ssl = on`, `hostssl`),
//! for the relay's TLS tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL owned by this process.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    port: u16,
    running: bool,
}

impl PostgresServer {
    /// Create a cluster and start it. Durability is relaxed (`fsync=off`): a killed server
    /// keeps every commit, only an OS crash would not.
    pub fn start() -> std::io::Result<Self> {
        Self::start_inner(None)
    }

    /// Like [`PostgresServer::start`], with `ssl = on` and this certificate and key (PEM),
    /// and TCP connections accepted only over TLS (`hostssl` lines in `pg_hba.conf`): a
    /// client that sends plaintext is refused.
    pub fn start_with_tls(cert: &Path, key: &Path) -> std::io::Result<Self> {
        Self::start_inner(Some((cert, key)))
    }

    fn start_inner(tls: Option<(&Path, &Path)>) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-pg-").tempdir()?;
        let as_postgres = is_root();
        let mut server = Self { dir, bin: bin_dir(), as_postgres, port: 0, running: false };
        if as_postgres {
            server.run(Command::new("chown").arg("-R").arg("postgres:").arg(server.dir.path()), false)?;
        }
        let data = server.data();
        server.run(
            server.tool("initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ]),
            true,
        )?;
        if let Some((cert, key)) = tls {
            server.enable_tls(cert, key)?;
        }
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("postgres did not start")))
    }

    /// Copy the certificate and key into the data directory (the key mode 0600 and owned by
    /// the server's user, or the server refuses it), turn `ssl` on and make every TCP line of
    /// `pg_hba.conf` a `hostssl` line.
    fn enable_tls(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.data();
        std::fs::copy(cert, data.join("server.crt"))?;
        std::fs::copy(key, data.join("server.key"))?;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
        if self.as_postgres {
            self.run(
                Command::new("chown").arg("postgres:").arg(data.join("server.crt")).arg(data.join("server.key")),
                false,
            )?;
        }
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )?;
        let hba = std::fs::read_to_string(data.join("pg_hba.conf"))?;
        let hba: String = hba
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(data.join("pg_hba.conf"), hba)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn run(&self, cmd: &mut Command, quiet: bool) -> std::io::Result<()> {
        let out = cmd.stdin(Stdio::null()).output()?;
        if out.status.success() {
            return Ok(());
        }
        let what = if quiet { String::new() } else { format!("{cmd:?}") };
        Err(std::io::Error::other(format!(
            "{what} failed with {}: {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        )))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c full_page_writes=off \
             -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let data = self.data();
        let log = self.log_path();
        self.run(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o"])
                .arg(&options)
                .arg("start"),
            false,
        )?;
        self.running = true;
        // pg_ctl -w waits for the server to accept connections; check TCP too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "postgres is not listening on {}: {}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stop the server at once (`pg_ctl stop -m immediate`: like a crash, recovery on start).
    pub fn stop(&mut self) -> std::io::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data();
        self.run(self.tool("pg_ctl").arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]), false)
    }

    /// Stop and start again on the same port and data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The data directory's parent (logs live there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    // Empty: found through PATH.
    versions.pop().map(|(_, bin)| bin).unwrap_or_default()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
