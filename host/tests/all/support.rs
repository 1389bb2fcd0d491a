//! Shared test support: a Redis per test, plugin directories, in-process and out-of-process
//! hosts, polling with deadlines.

#![allow(dead_code, reason = "each test module uses a different part")]

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Config;
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_kit::redis_server::RedisServer;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

/// A test's world: its own redis-server, plugin directory and cache directory.
pub struct Env {
    pub redis: RedisServer,
    pub plugins: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

/// The plugin config every recorder fixture gets unless a test says otherwise: reads from
/// the beginning, records into `records`, retries fast.
pub const RECORDER_TOML: &str = r#"
start = "beginning"
publish_streams = ["records"]
[config]
record_to = "records"
[retry]
max_attempts = 3
initial_delay = "50ms"
multiplier = 2.0
max_delay = "1s"
jitter = 0.0
"#;

impl Env {
    pub fn new() -> Self {
        Self::with_redis(RedisServer::start().expect("starting redis-server"))
    }

    pub fn with_redis(redis: RedisServer) -> Self {
        Self {
            redis,
            plugins: tempfile::Builder::new().prefix("ferry-plugins-").tempdir().expect("temp dir"),
            cache: tempfile::Builder::new().prefix("ferry-cache-").tempdir().expect("temp dir"),
        }
    }

    /// Copy `fixture` into the plugin directory as `NAME.wasm`, with `toml` beside it.
    pub fn add_plugin(&self, name: &str, fixture: &str, toml: &str) -> PathBuf {
        let path = self.plugins.path().join(format!("{name}.wasm"));
        if !toml.is_empty() {
            std::fs::write(self.plugins.path().join(format!("{name}.toml")), toml).expect("writing plugin toml");
        }
        std::fs::copy(fixture, &path).expect("copying fixture");
        path
    }

    /// A host configuration for this environment: no admin port, no watching, fast polling.
    pub fn config(&self) -> Config {
        let mut config = Config {
            redis: self.redis.url(),
            plugins: self.plugins.path().to_path_buf(),
            cache_dir: Some(self.cache.path().to_path_buf()),
            watch: false,
            shutdown_grace: Duration::from_secs(5),
            ..Config::default()
        };
        config.admin.listen = String::new();
        // One event at a time unless a test's plugin file says otherwise: many tests read
        // their records in publish order, which only per-key order or a single worker keeps.
        config.defaults.concurrency = Some(1);
        config.read.poll = Duration::from_millis(20);
        config.read.block = Duration::from_millis(100);
        config
    }

    /// A connection to this test's Redis, with connect and response timeouts long enough for
    /// a loaded machine (redis-rs's defaults are 1 s and 500 ms: beside a CPU hog a test
    /// failed to connect within 1 s).
    pub async fn conn(&self) -> MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(30)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        redis::Client::open(self.redis.url())
            .expect("url")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connecting to the test redis")
    }

    /// Poll `check` until it returns `Some`, or fail after `timeout` with the Redis log.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() > deadline {
                let log = self.redis.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- redis log (tail) ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the records stream holds at least `n` records; return them all.
    pub async fn records_at_least(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let conn = self.conn().await;
        self.wait_for(&format!("{n} records"), timeout, || {
            let mut conn = conn.clone();
            async move {
                let r = records(&mut conn, "records").await;
                (r.len() >= n).then_some(r)
            }
        })
        .await
    }

    /// Wait until the groups on `stream` have `n` entries pending in all (events in flight).
    pub async fn pending(&self, stream: &str, n: u64, timeout: Duration) {
        let conn = self.conn().await;
        self.wait_for(&format!("{n} pending on {stream}"), timeout, || {
            let mut conn = conn.clone();
            let stream = stream.to_string();
            async move {
                let groups = ferry::status::collect(&mut conn, &[stream]).await.ok()?;
                (groups.iter().map(|g| g.pending).sum::<u64>() == n).then_some(())
            }
        })
        .await
    }

    /// Wait until every group on `stream` has no lag, nothing pending and no waiting retry,
    /// seen on two polls in a row (one poll reads several keys and can fall between moves).
    pub async fn settled(&self, stream: &str, timeout: Duration) -> Vec<ferry::status::GroupStatus> {
        self.settled_groups(stream, &[], timeout).await
    }

    /// [`Env::settled`], once every one of `groups` exists on `stream` too: a host creates its
    /// subscribers' groups one after another, so with several subscribers the first group can
    /// be settled before the next one exists.
    pub async fn settled_groups(
        &self,
        stream: &str,
        groups: &[&str],
        timeout: Duration,
    ) -> Vec<ferry::status::GroupStatus> {
        self.settled_once(stream, groups, timeout).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.settled_once(stream, groups, timeout).await
    }

    async fn settled_once(&self, stream: &str, want: &[&str], timeout: Duration) -> Vec<ferry::status::GroupStatus> {
        let conn = self.conn().await;
        self.wait_for(&format!("every group on {stream} ({want:?} among them) to settle"), timeout, || {
            let mut conn = conn.clone();
            let stream = stream.to_string();
            async move {
                let groups = ferry::status::collect(&mut conn, std::slice::from_ref(&stream)).await.ok()?;
                let mut done = !groups.is_empty()
                    && want.iter().all(|w| groups.iter().any(|g| g.group == *w))
                    && groups.iter().all(|g| {
                        g.lag == Some(0) && g.pending == 0 && g.retries_scheduled == 0 && g.retries_pending == 0
                    });
                // A promoted retry sits in the retry stream, not yet read: not pending, but lag.
                for g in &groups {
                    let retry = ferry::keys::SubscriberKeys::new(&stream, &g.group).retry;
                    // Compare ids rather than `lag`, which Redis reports as null after trimming.
                    let info: redis::Value =
                        redis::cmd("XINFO").arg("STREAM").arg(&retry).query_async(&mut conn).await.ok()?;
                    let last = ferry::consume::read::pair_str(&ferry::consume::read::pairs(info), "last-generated-id");
                    let value: redis::Value =
                        redis::cmd("XINFO").arg("GROUPS").arg(&retry).query_async(&mut conn).await.ok()?;
                    if let redis::Value::Array(items) = value {
                        for item in items {
                            let pairs = ferry::consume::read::pairs(item);
                            done &= ferry::consume::read::pair_str(&pairs, "last-delivered-id") == last;
                        }
                    }
                }
                done.then_some(groups)
            }
        })
        .await
    }
}

/// The records (data of `Recorded` events) in `stream`, oldest first.
pub async fn records(conn: &mut MultiplexedConnection, stream: &str) -> Vec<Value> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.unwrap_or(redis::Value::Nil);
    ferry::consume::read::parse_entries(stream, value)
        .into_iter()
        .filter_map(|e| serde_json::from_slice(e.field("data")?).ok())
        .collect()
}

/// Publish an event of `event_type` with `data` to `stream`.
pub async fn publish(conn: &mut MultiplexedConnection, stream: &str, event_type: &str, data: &str) -> Event {
    let event = Event::new(event_type, "tests", data);
    ferry::outbox::publish(conn, stream, &event).await.expect("publishing");
    event
}

/// What `ferry run` does, in this process: the host, its admin endpoint and the plugin-directory
/// watcher (each as configured) until `shutdown`, then a graceful stop. The binary's `run`
/// command wires the same three pieces; the library leaves the composition to its user.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let host = ferry::host::Host::start(config).await?;
    let admin = ferry::admin::spawn(host.clone()).await?;
    let watcher = if host.config().watch { Some(ferry::reload::watch(host.clone())?) } else { None };
    shutdown.await;
    drop(watcher);
    host.stop_all().await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

/// A host running in this process until stopped.
pub struct InProcessHost {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessHost {
    pub fn start(config: Config) -> Self {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(serve(config, async move {
            let _ = rx.await;
        }));
        Self { stop: Some(stop), handle }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.handle).await.expect("host task");
        result.expect("host ran without error");
    }
}

/// The `ferry` binary of this build.
pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// A host in its own process, for tests that kill it for real.
pub struct HostProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl HostProcess {
    /// Start `ferry run` with a config file written from `config`.
    pub fn start(config: &Config, dir: &Path, name: &str) -> Self {
        Self::start_with(config, dir, name, &[])
    }

    /// [`HostProcess::start`] with extra environment variables.
    pub fn start_with(config: &Config, dir: &Path, name: &str, env: &[(String, String)]) -> Self {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml::to_string(config).expect("config serializes")).expect("writing config");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(ferry_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("FERRY_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting ferry");
        Self { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        self.child.wait().expect("waiting for ferry")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the `ferry` binary with `args`; returns (status, stdout, stderr).
pub fn ferry(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    // Never the user's own artifact cache.
    let cache = std::env::temp_dir().join("ferry-tests-cache");
    let out = Command::new(ferry_bin())
        .args(args)
        .env("FERRY_LOG", "warn")
        .env("FERRY_CACHE_DIR", cache)
        .output()
        .expect("running ferry");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A free TCP port on 127.0.0.1 (for an admin endpoint or a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A free `127.0.0.1:PORT` address.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The length of `stream` (0 when it does not exist); the caller decides what a failed
/// `XLEN` means (a failover test may poll through one).
pub async fn xlen<C: redis::aio::ConnectionLike>(conn: &mut C, stream: &str) -> redis::RedisResult<u64> {
    redis::cmd("XLEN").arg(stream).query_async(conn).await
}

/// The dead letters of `subscriber` now (up to 100).
pub async fn dead_letters(conn: &mut MultiplexedConnection, subscriber: &str) -> Vec<ferry::dlq::DeadLetter> {
    ferry::dlq::list(conn, Some(subscriber), 100).await.expect("dlq")
}

/// Wait until `subscriber` has at least `n` dead letters; returns them.
pub async fn wait_dead_letters(env: &Env, subscriber: &str, n: usize) -> Vec<ferry::dlq::DeadLetter> {
    let conn = env.conn().await;
    env.wait_for(&format!("{n} dead letters of {subscriber}"), Duration::from_secs(30), || {
        let mut conn = conn.clone();
        async move {
            let letters = dead_letters(&mut conn, subscriber).await;
            (letters.len() >= n).then_some(letters)
        }
    })
    .await
}

/// Records grouped by subscriber, as (subscriber, event id) pairs.
pub fn by_subscriber(records: &[Value], subscriber: &str) -> Vec<Value> {
    records.iter().filter(|r| r["subscriber"] == subscriber).cloned().collect()
}

/// The environment that runs a process with its wall clock shifted by `offset` (libfaketime,
/// e.g. `"+2h"`); monotonic time is left alone, so timers and deadlines behave.
pub fn faketime(offset: &str) -> Vec<(String, String)> {
    let lib = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libfaketime is installed (scripts/setup.sh installs it)");
    vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ]
}

// Helpers of the delivery tests (edges.rs, guarantees.rs).

/// The recorder's settings with `extra`: its top-level keys first, its sections last.
pub fn recorder(extra: &str) -> String {
    let (top, sections) = extra.split_at(extra.find('[').unwrap_or(extra.len()));
    format!("{top}\n{RECORDER_TOML}\n{sections}\n")
}

/// The recorder's settings subscribed to `types` only.
pub fn recorder_of(types: &[&str]) -> String {
    let subs: Vec<String> = types.iter().map(|t| format!("{{ type = \"{t}\" }}")).collect();
    format!("subscriptions = [{}]\n{RECORDER_TOML}", subs.join(", "))
}

/// The recorder on a cluster: recording into `stream` (granted to it), 8 at a time, with a
/// short deadline so a dead host's entries are taken over soon (`claim_idle` must exceed
/// it); `extra` first.
pub fn cluster_recorder(stream: &str, extra: &str) -> String {
    format!(
        "{extra}\nstart = \"beginning\"\nconcurrency = 8\npublish_streams = [\"{stream}\"]\n\
         [config]\nrecord_to = \"{stream}\"\n[limits]\ndeadline = \"1s\"\n"
    )
}

/// How often each event id was recorded.
pub fn counts(recs: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in recs {
        *counts.entry(r["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    counts
}

/// Publish a `Keyed` event with partition key `key` to `events`.
pub async fn publish_keyed(conn: &mut MultiplexedConnection, key: &str, data: &str) -> Event {
    let mut event = Event::new("Keyed", "tests", data);
    event.partitionkey = Some(key.into());
    ferry::outbox::publish(conn, "events", &event).await.expect("publish");
    event
}

/// Wait until `n` events are parked behind held keys.
pub async fn parked(env: &Env, keys: &SubscriberKeys, n: i64) {
    let conn = env.conn().await;
    env.wait_for(&format!("{n} parked"), Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let parked: Option<i64> = redis::cmd("GET").arg(&keys.parked_count).query_async(&mut conn).await.ok()?;
            (parked == Some(n)).then_some(())
        }
    })
    .await;
}

/// Nothing held, nothing parked.
pub async fn no_key_held(conn: &mut MultiplexedConnection, keys: &SubscriberKeys) {
    let held: u64 = redis::cmd("HLEN").arg(&keys.holds).query_async(conn).await.expect("HLEN");
    let holders: u64 = redis::cmd("HLEN").arg(&keys.holders).query_async(conn).await.expect("HLEN");
    let parked: Option<i64> = redis::cmd("GET").arg(&keys.parked_count).query_async(conn).await.expect("GET");
    assert_eq!((held, holders, parked.unwrap_or(0)), (0, 0, 0), "no key held, nothing parked");
}
