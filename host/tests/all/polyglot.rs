//! Python (componentize-py) and JavaScript (componentize-js) handlers, built from source by
//! their example build scripts, running in the real host: envelope attributes, JSON payload,
//! retry and reject, a thrown exception, `log`, `config` and `publish`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry::event::Event;
use serde_json::Value;

use crate::support::{Env, HostProcess};

/// The plugin built by `examples/LANG/build.sh`: `$ENV_VAR` if set (CI builds them first),
/// else built now into `target/polyglot` (the scripts are idempotent and pinned).
fn plugin(env_var: &str, lang: &str, file: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/polyglot");
    let path = out.join(file);
    if !path.exists() {
        let status = Command::new(root.join(format!("examples/{lang}/build.sh")))
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("running examples/{lang}/build.sh: {e}"));
        assert!(status.success(), "examples/{lang}/build.sh failed");
    }
    path
}

fn toml(event_type: &str) -> String {
    format!(
        r#"
start = "beginning"
publish_streams = ["records"]
subscriptions = [{{ type = "{event_type}" }}]
[config]
publish = "records"
[retry]
max_attempts = 2
initial_delay = "20ms"
max_delay = "50ms"
jitter = 0.0
"#
    )
}

/// The shared compiled-artifact cache: these components take seconds to compile, and the
/// cache's own behaviour is tested elsewhere.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache")
}

async fn run_language(name: &str, wasm: &Path, event_type: &str, payload: &str, follow_up: &str, log_line: &str) {
    let env = Env::new();
    env.add_plugin(name, wasm.to_str().expect("utf-8"), &toml(event_type));
    let mut config = env.config();
    config.cache_dir = Some(shared_cache());
    let dir = tempfile::tempdir().expect("temp dir");
    let host = HostProcess::start(&config, dir.path(), "host");
    let mut conn = env.conn().await;

    let mut event = Event::new(event_type, "tests", payload);
    event.subject = Some("subject-1".into());
    event.correlationid = Some("corr-1".into());
    event.partitionkey = Some("key-1".into());
    event.schemaversion = 3;
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
    let bad_json = Event::new(event_type, "tests", "[1, 2");
    let mut bad_json = bad_json;
    bad_json.datacontenttype = "text/plain".into();
    ferry::outbox::publish(&mut conn, "events", &bad_json).await.expect("publish");
    let retry = publish_with(&mut conn, event_type, payload, "retry").await;
    let reject = publish_with(&mut conn, event_type, payload, "reject").await;
    let crash = publish_with(&mut conn, event_type, payload, if name == "py" { "raise" } else { "throw" }).await;

    env.settled("events", Duration::from_secs(180)).await;
    let follow_ups = raw_events(&mut conn).await;
    assert_eq!(follow_ups.len(), 1, "{name}: one follow-up for the one good event");
    let f = &follow_ups[0];
    assert_eq!(f.event_type, follow_up);
    assert_eq!(f.source, name, "{name}: the host sets source to the plugin");
    assert_eq!(f.causationid.as_deref(), Some(event.id.as_str()));
    assert_eq!(f.correlationid.as_deref(), Some("corr-1"));
    let data: Value = serde_json::from_slice(&f.data).expect("follow-up JSON");
    let handled = &data["handled"];
    assert_eq!(handled["id"], event.id.as_str(), "{name}: {data}");
    assert_eq!(handled["type"], event_type);
    assert_eq!(handled["source"], "tests");
    assert_eq!(handled["time"], event.time.as_str());
    assert_eq!(handled["schemaversion"], 3);
    assert_eq!(handled["subject"], "subject-1");
    assert_eq!(handled["correlationid"], "corr-1");
    assert_eq!(handled["partitionkey"], "key-1");
    assert_eq!(handled["attempt"], 1);
    assert_eq!(handled["stream"], "events");
    assert_eq!(handled["data"], payload, "{name}: non-ASCII payload intact");

    let letters = ferry::dlq::list(&mut conn, Some(name), 10).await.expect("dlq");
    let kind_of = |id: &str| {
        letters.iter().find(|d| d.event_id == id).map(|d| (d.kind.clone(), d.reason.clone(), d.attempts.clone()))
    };
    let (kind, reason, attempts) = kind_of(&retry.id).expect("retry dead-lettered after max attempts");
    assert_eq!((kind.as_str(), attempts.as_str()), ("handler-retry", "2"), "{reason}");
    let (kind, _, attempts) = kind_of(&reject.id).expect("reject dead-lettered");
    assert_eq!((kind.as_str(), attempts.as_str()), ("handler-reject", "1"));
    let (kind, reason, _) = kind_of(&crash.id).expect("exception dead-lettered");
    assert_eq!(kind, "trap", "{name}: an uncaught exception traps: {reason}");
    assert!(reason.contains("crashed on purpose"), "{name}: the exception's message is kept: {reason}");
    let (kind, reason, _) = kind_of(&bad_json.id).expect("bad JSON rejected by the handler");
    assert_eq!(kind, "handler-reject", "{reason}");
    let log = host.log();
    assert!(
        log.contains(log_line) && log.contains(&format!("subscriber={name}")),
        "{name}: the log import reaches the host log:\n{log}"
    );
}

async fn publish_with(
    conn: &mut redis::aio::MultiplexedConnection,
    event_type: &str,
    payload: &str,
    fail: &str,
) -> Event {
    let mut value: Value = serde_json::from_str(payload).expect("payload");
    value["fail"] = Value::String(fail.into());
    let event = Event::new(event_type, "tests", value.to_string());
    ferry::outbox::publish(conn, "events", &event).await.expect("publish");
    event
}

async fn raw_events(conn: &mut redis::aio::MultiplexedConnection) -> Vec<Event> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg("records").arg("-").arg("+").query_async(conn).await.expect("xrange");
    ferry::consume::read::parse_entries("records", value)
        .iter()
        .map(|e| Event::from_fields(&e.fields).expect("valid follow-up"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_runs_in_the_host() {
    let wasm = tokio::task::spawn_blocking(|| plugin("FERRY_PYTHON_PLUGIN", "python", "inventory-py.wasm"))
        .await
        .expect("build");
    let payload = r#"{"order_id":"o-1","sku":"sku-ü✓","quantity":2}"#;
    run_language("py", &wasm, "OrderCreated", payload, "StockReserved", "reserving 2 x sku-ü✓ for order o-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_handler_runs_in_the_host() {
    let wasm = tokio::task::spawn_blocking(|| plugin("FERRY_JS_PLUGIN", "javascript", "welcome-js.wasm"))
        .await
        .expect("build");
    let payload = r#"{"user_id":"u-1","email":"zoë@example.com","name":"Zoë 🚀"}"#;
    run_language("js", &wasm, "UserRegistered", payload, "WelcomeSent", "sending welcome message to zoë@example.com")
        .await;
}
