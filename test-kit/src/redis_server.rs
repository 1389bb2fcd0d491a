//! A throwaway `redis-server`: its own port, its own temp dir, killed on drop.
//!
//! Used by `ferry demo` when no Redis URL is given, by the benchmark, and by every
//! integration test, so none of them depends on a server already running on 6379 or shares
//! state with another. [`Options`] adds TLS (a `--tls-port` beside the plain port, for the
//! TLS tests) and a password.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a [`RedisServer`] (or every node of a [`RedisCluster`]).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Persist every write (`appendfsync always`) so a restart keeps everything.
    pub appendonly: bool,
    /// Also listen for TLS on a port of its own (`--tls-port`), with this certificate; on a
    /// cluster the bus and replication use TLS too. Clients are not asked for a certificate.
    pub tls: Option<TlsFiles>,
    /// `requirepass` (and `masterauth` on a cluster): the `default` user's password.
    pub password: Option<String>,
}

/// The PEM files of a TLS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signed it (`--tls-ca-cert-file`; redis-server wants one even when it does
    /// not check clients).
    pub ca: PathBuf,
}

/// A running `redis-server` owned by this process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// The TLS port, with `options.tls`.
    tls_port: u16,
    dir: tempfile::TempDir,
    /// Run as a Redis Cluster node.
    cluster: bool,
    options: Options,
}

impl RedisServer {
    /// Start a server with no persistence.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(false)
    }

    /// Start a server; with `appendonly` it persists every write (`appendfsync always`) so a
    /// restart keeps everything.
    pub fn start_with(appendonly: bool) -> std::io::Result<Self> {
        Self::start_with_options(Options { appendonly, ..Options::default() })
    }

    /// Start a server as `options` say.
    pub fn start_with_options(options: Options) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-redis-").tempdir()?;
        let mut server = Self { child: None, port: 0, tls_port: 0, dir, options, cluster: false };
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            if server.options.tls.is_some() {
                server.tls_port = free_port()?;
            }
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .arg("--daemonize")
            .arg("no");
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"));
        }
        if let Some(tls) = &self.options.tls {
            cmd.arg("--tls-port")
                .arg(self.tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]);
            if self.cluster {
                cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
        }
        if let Some(password) = &self.options.password {
            cmd.arg("--requirepass").arg(password).arg("--masterauth").arg(password);
        }
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start redis-server (is it installed?): {e}"))
            })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&mut self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(std::io::Error::other(format!("redis-server exited with {status}: {}", self.log())));
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(std::io::Error::other(format!("redis-server not ready in {timeout:?}: {}", self.log())))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:TLS_PORT`, with `default:PASSWORD@` when the server has a password
    /// (started with [`Options::tls`]).
    pub fn tls_url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("rediss://default:{password}@127.0.0.1:{}", self.tls_port),
            None => format!("rediss://127.0.0.1:{}", self.tls_port),
        }
    }

    /// The TLS port (0 without [`Options::tls`]).
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kill the server (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and directory (after [`RedisServer::kill`]).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free port below 55535: a cluster node also listens on its port + 10000 (the bus).
fn free_cluster_port() -> std::io::Result<u16> {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if port < 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port below 55535 with a free bus port"))
}

/// A throwaway local Redis Cluster: 3 primaries and 3 replicas, each in its own temp dir on
/// free ports, created with `redis-cli --cluster create` and ready (`cluster_state:ok` on
/// every node) when [`RedisCluster::start`] returns. Stopped on drop.
pub struct RedisCluster {
    /// The nodes, primaries first as created.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start six nodes and join them into a cluster.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with_options(Options::default())
    }

    /// Start six nodes as `options` say and join them into a cluster. With TLS the nodes
    /// talk to each other (bus, replication) over TLS and announce their TLS ports; each keeps
    /// a plain port too, for [`RedisCluster::cli`].
    pub fn start_with_options(options: Options) -> std::io::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Self::start_node(&options)?);
        }
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &options.tls {
            create.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        if let Some(password) = &options.password {
            create.arg("-a").arg(password).arg("--no-auth-warning");
        }
        create.arg("--cluster").arg("create");
        for node in &nodes {
            // The port the cluster bus is derived from (+10000): the TLS one under tls-cluster.
            let port = if options.tls.is_some() { node.tls_port } else { node.port };
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create.args(["--cluster-replicas", "1", "--cluster-yes"]).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30))?;
        // `cluster_state:ok` can come before a replica has finished its first sync; a `WAIT`
        // (durability = "replicated") would then find no replica.
        cluster.wait_for("every replica to be in sync with its primary", Duration::from_secs(30), || {
            (0..cluster.nodes.len()).all(|i| {
                let info = cluster.cli(i, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        })?;
        Ok(cluster)
    }

    /// A fresh cluster-enabled node on a free port below 55535 (its bus port is port + 10000),
    /// not yet in a cluster.
    fn start_node(options: &Options) -> std::io::Result<RedisServer> {
        let dir = tempfile::Builder::new().prefix("ferry-redis-cluster-").tempdir()?;
        let options = Options { appendonly: false, ..options.clone() };
        let mut node = RedisServer { child: None, port: 0, tls_port: 0, dir, options, cluster: true };
        for _ in 0..5 {
            // Under tls-cluster the bus is the TLS port + 10000, else the plain port + 10000.
            if node.options.tls.is_some() {
                node.port = free_port()?;
                node.tls_port = free_cluster_port()?;
            } else {
                node.port = free_cluster_port()?;
            }
            if node.spawn().is_ok() {
                return Ok(node);
            }
            node.kill();
        }
        Err(std::io::Error::other("a cluster node did not start"))
    }

    /// Start a fresh node and make it a replica of primary `primary`, as an operator adds one:
    /// `CLUSTER MEET` (it joins the cluster), then `CLUSTER REPLICATE` once it knows the
    /// primary. Waits until its replication link is up and every node lists it. Returns its
    /// index in [`RedisCluster::nodes`]. For a cluster started without TLS or a password.
    pub fn add_replica(&mut self, primary: usize, timeout: Duration) -> std::io::Result<usize> {
        let node = Self::start_node(&Options::default())?;
        let primary_port = self.nodes[primary].port;
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        let primary_id = self.node_id(primary);
        let answer = self.cli(i, &["CLUSTER", "MEET", "127.0.0.1", &primary_port.to_string()]);
        if !answer.contains("OK") {
            return Err(std::io::Error::other(format!("CLUSTER MEET: {answer}")));
        }
        // The new node learns the primary's id by gossip; REPLICATE fails until it has.
        self.wait_for("the new node to accept CLUSTER REPLICATE", timeout, || {
            self.cli(i, &["CLUSTER", "REPLICATE", &primary_id]).contains("OK")
        })?;
        self.wait_for("the new replica's link to its primary", timeout, || {
            self.cli(i, &["INFO", "replication"]).contains("master_link_status:up")
        })?;
        let me = self.node_id(i);
        // Every node, not only the primary: clients ask any node for the topology.
        self.wait_for("every node to list the new replica", timeout, || {
            (0..self.nodes.len())
                .filter(|&n| self.nodes[n].child.is_some())
                .all(|n| self.cli(n, &["CLUSTER", "NODES"]).lines().any(|l| l.starts_with(&me) && l.contains("slave")))
        })?;
        self.wait_ok(timeout)?;
        Ok(i)
    }

    /// Wait until every running node reports `cluster_state:ok` and agrees on the slots.
    pub fn wait_ok(&self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = cli(n, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("the cluster did not reach cluster_state:ok"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed node URLs, comma-separated, as `--redis` takes them with `--cluster`.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    /// The TLS seed URLs (`rediss://`, with the password), comma-separated.
    pub fn tls_seeds(&self) -> String {
        self.nodes.iter().map(RedisServer::tls_url).collect::<Vec<_>>().join(",")
    }

    /// The index of the node that serves `slot` as primary now.
    pub fn primary_of(&self, slot: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.child.is_some() && cli(n, &["ROLE"]).starts_with("master") && owns(n, slot))
    }

    /// The index of a replica of node `primary`.
    pub fn replica_of(&self, primary: usize) -> Option<usize> {
        let id = cli(&self.nodes[primary], &["CLUSTER", "MYID"]).trim().to_string();
        self.nodes.iter().position(|n| {
            n.child.is_some()
                && cli(n, &["CLUSTER", "NODES"]).lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[2].contains("myself") && f[2].contains("slave") && f[3] == id
                })
        })
    }

    /// `redis-cli -p PORT args...` on node `i`; its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        cli(&self.nodes[i], args)
    }

    /// Node `i`'s id (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        self.cli(i, &["CLUSTER", "MYID"]).trim().to_string()
    }

    /// `CLUSTER FAILOVER` on the replica of the primary serving `slot` (a coordinated
    /// hand-over: the replica catches up first); waits until it serves the slot. Returns the
    /// new primary.
    pub fn failover(&self, slot: u16, timeout: Duration) -> std::io::Result<usize> {
        let primary = self.primary_of(slot).ok_or_else(|| std::io::Error::other("no primary serves the slot"))?;
        let replica = self.replica_of(primary).ok_or_else(|| std::io::Error::other("the primary has no replica"))?;
        let answer = self.cli(replica, &["CLUSTER", "FAILOVER"]);
        if !answer.contains("OK") {
            return Err(std::io::Error::other(format!("CLUSTER FAILOVER: {answer}")));
        }
        self.wait_for("the replica to take over after CLUSTER FAILOVER", timeout, || {
            self.primary_of(slot) == Some(replica)
        })?;
        self.wait_ok(timeout)?;
        Ok(replica)
    }

    /// SIGKILL the primary serving `slot` (no hand-over: what it had not yet replicated is
    /// lost) and wait until its replica has been promoted by the others and the cluster is
    /// ok again. Returns (killed node, new primary).
    pub fn kill_primary(&mut self, slot: u16, timeout: Duration) -> std::io::Result<(usize, usize)> {
        let primary = self.primary_of(slot).ok_or_else(|| std::io::Error::other("no primary serves the slot"))?;
        let replica = self.replica_of(primary).ok_or_else(|| std::io::Error::other("the primary has no replica"))?;
        self.nodes[primary].kill();
        self.wait_for("the replica to be promoted after its primary was killed", timeout, || {
            self.primary_of(slot) == Some(replica)
        })?;
        self.wait_ok(timeout)?;
        Ok((primary, replica))
    }

    /// Start a killed node again (same port, directory and `nodes.conf`): a former primary
    /// whose slots were taken over rejoins as a replica of the node that took them. Waits
    /// until its replication link is up.
    pub fn restart_as_replica(&mut self, i: usize, timeout: Duration) -> std::io::Result<()> {
        self.nodes[i].restart()?;
        self.wait_for("the restarted node to replicate its new primary", timeout, || {
            self.cli(i, &["ROLE"]).starts_with("slave")
                && self.cli(i, &["INFO", "replication"]).contains("master_link_status:up")
        })?;
        self.wait_ok(timeout)
    }

    /// Move `slot` and its keys to primary `to`, as `redis-cli --cluster reshard` does:
    /// `SETSLOT IMPORTING` / `MIGRATING`, `MIGRATE` the keys in batches (clients writing
    /// meanwhile get `ASK` and `TRYAGAIN`), then `SETSLOT NODE` on every primary. Waits until
    /// `to` serves the slot and the cluster is ok.
    pub fn migrate_slot(&self, slot: u16, to: usize, timeout: Duration) -> std::io::Result<()> {
        let from = self.primary_of(slot).ok_or_else(|| std::io::Error::other("no primary serves the slot"))?;
        if from == to {
            return Ok(());
        }
        let (slot_arg, from_id, to_id) = (slot.to_string(), self.node_id(from), self.node_id(to));
        let to_port = self.nodes[to].port.to_string();
        let setslot = |i: usize, args: &[&str]| -> std::io::Result<()> {
            let mut cmd = vec!["CLUSTER", "SETSLOT", slot_arg.as_str()];
            cmd.extend_from_slice(args);
            let answer = self.cli(i, &cmd);
            if answer.trim() == "OK" {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("CLUSTER SETSLOT {slot} {} on node {i}: {answer}", args.join(" "))))
            }
        };
        setslot(to, &["IMPORTING", &from_id])?;
        setslot(from, &["MIGRATING", &to_id])?;
        let deadline = Instant::now() + timeout;
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let answer = self.cli(from, &args);
            if !(answer.contains("OK") || answer.contains("NOKEY")) {
                // A refused batch (a key busy on the target, a timeout): try again shortly.
                if Instant::now() > deadline {
                    return Err(std::io::Error::other(format!("MIGRATE of slot {slot}: {answer}")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The target first, then the source, then the other primaries (as redis-cli does).
        setslot(to, &["NODE", &to_id])?;
        setslot(from, &["NODE", &to_id])?;
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() && ![to, from].contains(&i) && self.cli(i, &["ROLE"]).starts_with("master")
            {
                setslot(i, &["NODE", &to_id])?;
            }
        }
        self.wait_for("every node to agree on the migrated slot", timeout, || self.primary_of(slot) == Some(to))?;
        self.wait_ok(timeout)
    }

    /// Poll `done` every 50 ms until it holds, or fail with `what` after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn() -> bool) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("timed out after {timeout:?} waiting for {what}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// Whether the node on `port` serves `slot`, from its own line of `CLUSTER NODES`.
fn owns(node: &RedisServer, slot: u16) -> bool {
    cli(node, &["CLUSTER", "NODES"]).lines().filter(|l| l.contains("myself")).any(|l| {
        l.split_whitespace().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        })
    })
}

/// `redis-cli` on `node`'s plain port (with its password).
fn cli(node: &RedisServer, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-p").arg(node.port.to_string());
    if let Some(password) = &node.options.password {
        cmd.arg("-a").arg(password).arg("--no-auth-warning");
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(&mut stream);
    // A server with a password answers `-NOAUTH`: up all the same.
    reader.read_line(&mut line).is_ok() && (line.starts_with("+PONG") || line.starts_with("-NOAUTH"))
}
