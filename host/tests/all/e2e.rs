//! The spine, end to end: events reach exactly their subscribers, intact; bad input is set
//! aside; bad plugins are refused; an unreachable Redis is a clear error.

use std::time::Duration;

use ferry::event::Event;
use ferry_test_fixtures as fixtures;

use crate::support::{Env, InProcessHost, RECORDER_TOML, by_subscriber, ferry, publish, recorder_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_exactly_their_subscribers_with_attributes_intact() {
    let env = Env::new();
    env.add_plugin("alpha", fixtures::RECORDER, &recorder_of(&["OrderCreated"]));
    env.add_plugin("beta", fixtures::RECORDER, &recorder_of(&["OrderCreated", "UserRegistered"]));
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;

    let mut sent = Vec::new();
    for i in 0..40 {
        let (ty, data) = if i % 2 == 0 {
            ("OrderCreated", format!(r#"{{"order":{i},"note":"grüße, 注文 ✓"}}"#))
        } else {
            ("UserRegistered", format!(r#"{{"user":{i},"name":"Zoë 🚀"}}"#))
        };
        let mut event = Event::new(ty, "orders", data);
        event.subject = Some(format!("subject-{i}"));
        event.correlationid = Some(format!("corr-{i}"));
        event.causationid = Some(format!("cause-{i}"));
        event.partitionkey = Some(format!("key-{}", i % 3));
        event.dataschema = Some("https://example.com/schema".into());
        event.schemaversion = 2;
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
        sent.push(event);
    }

    let records = env.records_at_least(20 + 40, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(10)).await;
    let alpha = by_subscriber(&records, "alpha");
    let beta = by_subscriber(&records, "beta");
    assert_eq!(alpha.len(), 20, "alpha handles only OrderCreated");
    assert_eq!(beta.len(), 40, "beta handles both types");
    assert!(alpha.iter().all(|r| r["type"] == "OrderCreated"));
    for event in &sent {
        let seen: Vec<_> = beta.iter().filter(|r| r["id"] == event.id.as_str()).collect();
        assert_eq!(seen.len(), 1, "beta handled {} once", event.id);
        let r = seen[0];
        assert_eq!(r["type"], event.event_type.as_str());
        assert_eq!(r["source"], "orders");
        assert_eq!(r["time"], event.time.as_str());
        assert_eq!(r["subject"], event.subject.as_deref().unwrap_or_default());
        assert_eq!(r["correlationid"], event.correlationid.as_deref().unwrap_or_default());
        assert_eq!(r["causationid"], event.causationid.as_deref().unwrap_or_default());
        assert_eq!(r["partitionkey"], event.partitionkey.as_deref().unwrap_or_default());
        assert_eq!(r["dataschema"], "https://example.com/schema");
        assert_eq!(r["schemaversion"], 2);
        assert_eq!(r["datacontenttype"], "application/json");
        assert_eq!(r["data"], String::from_utf8(event.data.clone()).expect("utf-8"), "payload intact");
        assert_eq!(r["attempt"], 1);
        assert_eq!(r["stream"], "events");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_with_their_reason_while_good_ones_flow() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;

    let good = Event::new("Good", "tests", r#"{"n":1}"#);
    let mut bad_json = good.clone();
    bad_json.id = "bad-json".into();
    bad_json.data = b"{not json".to_vec();
    let mut bad_time = good.clone();
    bad_time.id = "bad-time".into();
    bad_time.time = "last tuesday".into();
    for e in [&bad_json, &bad_time] {
        ferry::outbox::publish(&mut conn, "events", e).await.expect("publish");
    }
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("type")
        .arg("NoId")
        .arg("data")
        .arg("{}")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    ferry::outbox::publish(&mut conn, "events", &good).await.expect("publish");
    let after = publish(&mut conn, "events", "Good", r#"{"n":2}"#).await;

    let records = env.records_at_least(2, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 2, "only the two valid events reach the plugin");
    assert_eq!(records[1]["id"], after.id.as_str());
    env.settled("events", Duration::from_secs(10)).await;

    let letters = ferry::dlq::list(&mut conn, Some("rec"), 100).await.expect("dlq list");
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|d| d.kind == "invalid-event"));
    let reasons: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
    assert!(reasons[0].contains("not valid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("`time`"), "{reasons:?}");
    assert!(reasons[2].contains("missing required attribute `id`"), "{reasons:?}");
    // The original fields are kept untouched.
    let kept = letters[0].fields.iter().find(|(k, _)| k == "data").map(|(_, v)| v.as_str());
    assert_eq!(kept, Some("{not json"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plugin_files_are_refused_with_a_precise_reason_and_others_keep_running() {
    let env = Env::new();
    let dir = env.plugins.path();
    std::fs::write(dir.join("text.wasm"), "hello").expect("write");
    // The smallest valid core module: magic + version 1.
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    env.add_plugin("noexport", fixtures::NO_EXPORT, "");
    env.add_plugin("oldcontract", fixtures::WRONG_CONTRACT, "");
    env.add_plugin("good", fixtures::RECORDER, RECORDER_TOML);

    let host = ferry::host::Host::start(env.config()).await.expect("host starts despite bad plugins");
    let plugins = host.plugins().await;
    let state = |name: &str| plugins.iter().find(|p| p.name == name).cloned().expect(name);
    assert_eq!(state("good").state, "running");
    for (name, expected) in [
        ("text", "not a WebAssembly file"),
        ("core", "a core WebAssembly module, not a component"),
        ("noexport", "missing export `ferry:plugin/handler@0.1.0`"),
        ("oldcontract", "built against contract ferry:plugin@9.0.0, but this host implements ferry:plugin@0.1.0"),
    ] {
        let p = state(name);
        assert_eq!(p.state, "refused", "{name}");
        let error = p.error.unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
    }

    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Any", "{}").await;
    env.records_at_least(1, Duration::from_secs(20)).await;
    host.stop_all().await;

    // `ferry plugins check` says the same on the command line.
    let (status, stdout, _) = ferry(&["plugins", "check", fixtures::RECORDER]);
    assert!(status.success());
    assert!(stdout.contains("subscribes to * (all versions)"), "{stdout}");
    // And which grants its imports need (the recorder, built with the SDK on 0.2.0, publishes and reads config).
    assert!(
        stdout.contains("imports ferry:plugin/publish@0.2.0: needs `publish_streams")
            && stdout.contains("imports ferry:plugin/config@0.2.0"),
        "{stdout}"
    );
    let (status, _, stderr) = ferry(&["plugins", "check", fixtures::WRONG_CONTRACT]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("built against contract ferry:plugin@9.0.0"), "{stderr}");
    let (status, _, stderr) = ferry(&["plugins", "check", dir.join("core.wasm").to_str().expect("utf-8")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not a component"), "{stderr}");
}

#[test]
fn unreachable_redis_at_start_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().to_str().expect("utf-8");
    let (status, _, stderr) =
        ferry(&["run", "--redis", "redis://127.0.0.1:1", "--plugins", plugins, "--admin", "", "--no-watch"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot reach Redis at redis://127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, _, stderr) = ferry(&["publish", "--type", "T", "--redis", "redis://127.0.0.1:1"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_command_prints_the_id_of_a_valid_event() {
    let env = Env::new();
    let url = env.redis.url();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ferry(&[
            "publish",
            "--type",
            "OrderCreated",
            "--data",
            r#"{"order_id":"o-1"}"#,
            "--key",
            "o-1",
            "--correlation-id",
            "c-9",
            "--redis",
            &url,
        ])
    })
    .await
    .expect("join");
    assert!(status.success(), "{stderr}");
    let id = stdout.trim();
    assert_eq!(uuid::Uuid::parse_str(id).map(|u| u.get_version_num()), Ok(7));
    let mut conn = env.conn().await;
    let value: redis::Value =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let entries = ferry::consume::read::parse_entries("events", value);
    let event = Event::from_fields(&entries[0].fields).expect("valid event");
    assert_eq!(event.id, id);
    assert_eq!(event.partitionkey.as_deref(), Some("o-1"));
    assert_eq!(event.correlationid.as_deref(), Some("c-9"));
    assert_eq!(event.source, "ferry-cli");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_writes_the_event_only_with_the_callers_own_writes() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let mut other = env.conn().await;
    let event = Event::new("OrderCreated", "orders", r#"{"order_id":"o-1"}"#);

    // Committed together.
    let mut tx = redis::pipe();
    tx.atomic().hset("order:o-1", "status", "created").ignore();
    ferry::outbox::add(&mut tx, "events", &event);
    let (entry_id,): (String,) = tx.query_async(&mut conn).await.expect("transaction");
    assert!(entry_id.contains('-'));

    // Aborted together: a concurrent change to a watched key makes EXEC fail, and no event
    // is left behind without its write.
    let _: () = redis::cmd("WATCH").arg("order:o-2").query_async(&mut conn).await.expect("watch");
    let _: () = redis::cmd("SET").arg("order:o-2").arg("changed elsewhere").query_async(&mut other).await.expect("set");
    let mut tx = redis::pipe();
    tx.atomic().hset("order:o-2:data", "status", "created").ignore();
    ferry::outbox::add(&mut tx, "events", &Event::new("OrderCreated", "orders", r#"{"order_id":"o-2"}"#));
    let aborted: Option<(String,)> = tx.query_async(&mut conn).await.expect("exec");
    assert!(aborted.is_none(), "EXEC aborted");
    let len: u64 = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.expect("xlen");
    assert_eq!(len, 1, "only the committed event exists");
    let exists: bool = redis::cmd("EXISTS").arg("order:o-2:data").query_async(&mut conn).await.expect("exists");
    assert!(!exists);
}

/// `ferry demo` (what `examples/demo.sh` runs) with the example plugins: it starts its own
/// redis-server and mail API, every event ends handled or dead-lettered with its reason, the
/// event that breaks its schema is dead-lettered as `invalid-event` with the validation
/// error's path, welcome's messages reach the mail API with the host's idempotency key, and
/// inventory, keeping its stock in state, rejects the order it cannot serve.
#[test]
fn the_demo_runs_end_to_end_and_shows_an_invalid_event_with_its_validation_error() {
    let plugins = tempfile::tempdir().expect("tempdir");
    for (name, fixture) in
        [("inventory", fixtures::INVENTORY), ("welcome", fixtures::WELCOME), ("event-logger", fixtures::EVENT_LOGGER)]
    {
        std::fs::copy(fixture, plugins.path().join(format!("{name}.wasm"))).expect("copy plugin");
    }
    let dir = plugins.path().to_str().expect("utf-8 path");
    let (status, out, err) = ferry(&["demo", "--plugins", dir, "--timeout", "120"]);
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("demo finished: every event was handled or dead-lettered with its reason"), "{out}");
    let invalid = out
        .lines()
        .find(|l| l.starts_with("dead letter for") && l.contains("UserRegistered") && l.contains("(invalid-event)"))
        .unwrap_or_else(|| panic!("the invalid event's dead letter: {out}"));
    assert!(invalid.contains("UserRegistered@1") && invalid.contains("at "), "its validation error: {invalid}");
    let mails: Vec<&str> = out.lines().filter(|l| l.starts_with("mail API received POST /messages")).collect();
    assert_eq!(mails.len(), 2, "one message per valid registration: {out}");
    assert!(
        mails.iter().any(|l| l.contains("(Idempotency-Key welcome:") && l.contains(r#""to":"ada@example.com""#)),
        "{mails:?}"
    );
    assert!(out.lines().any(|l| l.starts_with("welcome ") && l.contains("handled  2")), "{out}");
    let unserved = out
        .lines()
        .find(|l| l.starts_with("dead letter for inventory: OrderCreated") && l.contains("(handler-reject)"))
        .unwrap_or_else(|| panic!("the order it cannot serve: {out}"));
    assert!(unserved.contains("insufficient stock for 500 x sku-7 (100 left)"), "{unserved}");
    assert!(out.contains("state of inventory: stock:sku-42 = 98\n"), "the served order took its stock: {out}");
    assert!(
        out.contains("state of inventory: stock:sku-7 = (never written)\n"),
        "the rejected one wrote nothing: {out}"
    );
}
