//! Test support for the PostgreSQL outbox relay: a PostgreSQL per test (initdb + pg_ctl in a
//! temp dir, see `ferry_test_kit::postgres_server`), clients, relays in their own processes, reading
//! a stream back as events.

#![allow(dead_code, reason = "each relay test uses a different part")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry::event::Event;
use ferry_test_kit::postgres_server::PostgresServer;
use redis::aio::MultiplexedConnection;

/// Start a PostgreSQL with the default outbox table created.
pub async fn start() -> PostgresServer {
    let pg = tokio::task::block_in_place(PostgresServer::start).expect("starting postgres");
    let client = client(&pg.url()).await;
    ferry::relay::manage::init(&client, &ferry::relay::Table::default()).await.expect("creating the outbox table");
    pg
}

/// A client to `url`, its connection driven on a task.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connecting to postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Relay settings for tests: fast polling and takeover.
pub fn settings(pg: &PostgresServer, redis_url: &str) -> ferry::relay::Settings {
    let config = ferry::config::RelayConfig {
        postgres: pg.url(),
        poll: Duration::from_millis(100),
        lock_retry: Duration::from_millis(100),
        ..Default::default()
    };
    ferry::relay::Settings::from_config(&config, redis_url, "events").expect("valid relay settings")
}

/// Relay settings for tests with the PostgreSQL connection string `postgres`.
pub fn settings_for(postgres: &str, redis_url: &str) -> ferry::relay::Settings {
    let config = ferry::config::RelayConfig {
        postgres: postgres.to_string(),
        poll: Duration::from_millis(100),
        lock_retry: Duration::from_millis(100),
        ..Default::default()
    };
    ferry::relay::Settings::from_config(&config, redis_url, "events").expect("valid relay settings")
}

/// A relay running in this process until stopped.
pub struct InProcessRelay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    pub metrics: ferry::metrics::Metrics,
}

impl InProcessRelay {
    pub fn start(settings: ferry::relay::Settings) -> Self {
        let metrics = ferry::metrics::Metrics::new();
        let relay = ferry::relay::Relay::new(settings, metrics.relay.clone());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = rx.await;
                })
                .await
        });
        Self { stop: Some(stop), handle, metrics }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.expect("relay task");
    }
}

/// `ferry relay` in its own process, for tests that kill it for real.
pub struct RelayProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl RelayProcess {
    pub fn start(pg_url: &str, redis_url: &str, dir: &Path, name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(crate::support::ferry_bin())
            .args(["relay", "--postgres", pg_url, "--redis", redis_url, "--poll", "100ms", "--lock-retry", "100ms"])
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting ferry relay");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pid of the process holding the relay lock, from its session's `application_name`.
pub async fn active_relay(client: &tokio_postgres::Client) -> Option<u32> {
    let rows = client
        .query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted",
            &[],
        )
        .await
        .ok()?;
    let name: String = rows.first()?.try_get(0).ok()?;
    name.strip_prefix("ferry relay ")?.parse().ok()
}

/// Every entry of `stream` as an event, oldest first. Entries that are not valid events fail
/// the test.
pub async fn stream_events(conn: &mut MultiplexedConnection, stream: &str) -> Vec<Event> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.unwrap_or(redis::Value::Nil);
    ferry::consume::read::parse_entries(stream, value)
        .into_iter()
        .map(|e| Event::from_fields(&e.fields).unwrap_or_else(|err| panic!("entry {} is not an event: {err}", e.id)))
        .collect()
}

/// Every entry of a large `stream`, read in pages on a connection that waits long enough
/// (redis-rs times replies out after 500 ms by default; a busy machine needs more). Fails the
/// test on a Redis error rather than returning a short list.
pub async fn all_events(redis_url: &str, stream: &str) -> Vec<Event> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = redis::Client::open(redis_url)
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connecting to the test redis");
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(2000)
            .query_async(&mut conn)
            .await
            .expect("reading the stream");
        let entries = ferry::consume::read::parse_entries(stream, value);
        let Some(last) = entries.last() else { return out };
        start = format!("({}", last.id);
        for e in entries {
            out.push(
                Event::from_fields(&e.fields).unwrap_or_else(|err| panic!("entry {} is not an event: {err}", e.id)),
            );
        }
    }
}

/// Insert a minimal row the way any language would.
pub async fn insert_plain(client: &tokio_postgres::Client, event_type: &str, data: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    client
        .execute(
            "INSERT INTO ferry_outbox (id, type, source, data) VALUES ($1, $2, 'tests', $3::text::jsonb)",
            &[&id, &event_type, &data],
        )
        .await
        .expect("inserting an outbox row");
    id
}
