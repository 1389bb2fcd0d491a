//! `ferry demo`: the README's end-to-end run.
//!
//! Starts a throwaway `redis-server` unless `--redis` is given, and a small local "mail API"
//! (an HTTP server on a free loopback port that prints what it received), runs a host
//! in-process with the example plugins (inventory keeps its stock in handler state, welcome
//! is granted outbound HTTP to the mail API), publishes the seeds' events (an order placed
//! through the outbox pattern, users registering, one order that cannot be served and one
//! malformed entry), waits until every subscriber has settled everything, prints a summary
//! and exits 0. It needs nothing but itself and `redis-server`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use ferry::config::{Config, HttpConfig, RetryConfig, Start, StateSetting, SubscriberConfig};
use ferry::event::Event;
use ferry::host::Host;
use ferry::metrics;
use ferry_test_kit::redis_server::RedisServer;

/// `ferry demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Redis URL; without it a throwaway redis-server is started.
    #[arg(long, env = "FERRY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Directory with the example plugins (built by `examples/demo.sh`).
    #[arg(long, default_value = "target/demo-plugins")]
    pub plugins: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// The demo's schema of `UserRegistered@1`.
const USER_REGISTERED: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "user_id": {"type": "string"},
    "email": {"type": "string", "pattern": "@"},
    "name": {"type": "string"}
  },
  "required": ["user_id", "email"]
}"#;

/// Start the demo's mail API on a free loopback port: `POST /messages` prints what it
/// received (the idempotency key the host added, the body) and answers 202. Its URL.
async fn mail_api() -> anyhow::Result<String> {
    use axum::http::{HeaderMap, StatusCode};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("starting the demo's mail API")?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/messages",
        axum::routing::post(|headers: HeaderMap, body: String| async move {
            let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("-");
            let body = ferry::redact::printable(&body).into_owned();
            println!("mail API received POST /messages (Idempotency-Key {key}): {body}");
            StatusCode::ACCEPTED
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the demo's mail API stopped: {e}");
        }
    });
    Ok(url)
}

/// The demo host's configuration: the example plugins in `args.plugins` on `stream`, the
/// users' contract in `schemas`, inventory granted state, welcome HTTP to the `mail` API.
fn demo_config(args: &DemoArgs, url: &str, stream: &str, schemas: &std::path::Path, mail: &str) -> Config {
    let mut config = Config {
        redis: url.to_string(),
        plugins: args.plugins.clone(),
        stream: stream.to_string(),
        watch: false,
        ..Config::default()
    };
    config.admin.listen = String::new();
    config.schemas = Some(schemas.to_path_buf());
    config.defaults = SubscriberConfig {
        start: Some(Start::Beginning),
        retry: Some(RetryConfig {
            initial_delay: Duration::from_millis(200),
            max_attempts: 3,
            ..RetryConfig::default()
        }),
        ..SubscriberConfig::default()
    };
    config.subscribers.insert(
        "inventory".into(),
        SubscriberConfig {
            config: Some([("publish".to_string(), stream.to_string())].into()),
            publish_streams: Some(vec![stream.to_string()]),
            state: Some(StateSetting::On(true)),
            ..SubscriberConfig::default()
        },
    );
    config.subscribers.insert(
        "welcome".into(),
        SubscriberConfig {
            config: Some([("mail_url".to_string(), mail.to_string())].into()),
            http: Some(HttpConfig { allow: vec![mail.to_string()], ..HttpConfig::default() }),
            ..SubscriberConfig::default()
        },
    );
    config
}

/// Publish the seeds' events and one malformed entry to `stream`.
async fn publish_seeds(conn: &mut ferry::connection::Conn, stream: &str) -> anyhow::Result<()> {
    // The orders module writes its order and the event in one transaction (the outbox pattern).
    let mut order = Event::new("OrderCreated", "orders", r#"{"order_id":"o-1001","sku":"sku-42","quantity":2}"#);
    order.partitionkey = Some("o-1001".into());
    order.correlationid = Some("checkout-7".into());
    let mut tx = redis::pipe();
    tx.atomic().hset("demo:order:o-1001", "status", "created").ignore();
    ferry::outbox::add(&mut tx, stream, &order);
    tx.query_async::<()>(conn).await?;
    let seeds = [
        Event::new("UserRegistered", "users", r#"{"user_id":"u-1","email":"ada@example.com","name":"Ada Lovelace"}"#),
        Event::new(
            "UserRegistered",
            "users",
            r#"{"user_id":"u-2","email":"grace@example.com","name":"Grace Hopper 🚀"}"#,
        ),
        // More than the 100 in stock: inventory rejects it, its state unchanged.
        Event::new("OrderCreated", "orders", r#"{"order_id":"o-1002","sku":"sku-7","quantity":500}"#),
        // Breaks its contract (no email): dead-lettered as invalid-event before any handler.
        Event::new("UserRegistered", "users", r#"{"user_id":"u-3","name":"Nobody"}"#),
    ];
    for e in &seeds {
        ferry::outbox::publish(conn, stream, e).await?;
    }
    // A producer bug: an entry that is not a valid event. It is set aside, never handled.
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("type")
        .arg("OrderCreated")
        .arg("data")
        .arg("{oops")
        .query_async::<String>(conn)
        .await?;
    println!("published 6 events (one breaks its schema) and 1 malformed entry to {stream}");
    Ok(())
}

/// Wait until every subscriber settled everything on `stream`, then print the status table.
async fn settled(conn: &mut ferry::connection::Conn, stream: &str, timeout: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let groups = ferry::status::collect(conn, &[stream.to_string()]).await?;
        let done = !groups.is_empty()
            && groups
                .iter()
                .all(|g| g.lag == Some(0) && g.pending == 0 && g.retries_scheduled == 0 && g.retries_pending == 0);
        if done {
            println!();
            print!("{}", super::status::render(&groups));
            return Ok(());
        }
        if Instant::now() > deadline {
            print!("{}", super::status::render(&groups));
            anyhow::bail!("the demo did not settle within {timeout}s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (url, _server) = match &args.redis {
        Some(url) => (url.clone(), None),
        None => {
            let server = RedisServer::start().context("starting a local redis-server for the demo")?;
            println!("started redis-server on {}", server.url());
            (server.url(), Some(server))
        }
    };
    let stream = "demo-events".to_string();
    // The users team's contract (docs/contracts.md): an event that breaks it is dead-lettered
    // with the validation error, never handled.
    let schemas = tempfile::Builder::new().prefix("ferry-demo-schemas-").tempdir()?;
    std::fs::create_dir_all(schemas.path().join("UserRegistered"))?;
    std::fs::write(schemas.path().join("UserRegistered/1.json"), USER_REGISTERED)?;
    let mail = mail_api().await?;
    println!("started the mail API on {mail}");
    let config = demo_config(&args, &url, &stream, schemas.path(), &mail);
    let host = Host::start(config).await.context("starting the host")?;
    let plugins = host.plugins().await;
    if plugins.iter().all(|p| p.state != "running") {
        anyhow::bail!("no plugin running from {}: build them with examples/demo.sh", args.plugins.display());
    }
    for p in &plugins {
        println!("plugin {} {} {}", p.name, p.version.as_deref().unwrap_or("-"), p.state);
    }
    let (_, mut conn) = ferry::connection::connect(&ferry::connection::Target::node(url.clone())).await?;
    publish_seeds(&mut conn, &stream).await?;
    settled(&mut conn, &stream, args.timeout).await?;
    let m = &host.context().metrics;
    println!();
    for p in &plugins {
        println!(
            "{:<14} handled {:>2}  skipped {:>2}  dead-lettered {:>2}",
            p.name,
            metrics::count(&m.handled, &p.name),
            metrics::count(&m.skipped, &p.name),
            metrics::count(&m.dead_lettered, &p.name)
        );
    }
    println!();
    for d in ferry::dlq::list(&mut conn, None, 100).await? {
        println!("dead letter for {}: {} {} ({}): {}", d.subscriber, d.event_type, d.event_id, d.kind, d.reason);
    }
    for key in ["stock:sku-42", "stock:sku-7"] {
        let value = ferry::plugin::capability::state::stored::get(&mut conn, &stream, "inventory", key).await?;
        let value = value.map_or_else(|| "(never written)".to_string(), |v| String::from_utf8_lossy(&v).into_owned());
        println!("state of inventory: {key} = {value}");
    }
    host.stop_all().await;
    println!("\ndemo finished: every event was handled or dead-lettered with its reason");
    Ok(ExitCode::SUCCESS)
}
