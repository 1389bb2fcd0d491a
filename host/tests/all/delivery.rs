//! Delivery guarantees: retries in Redis with backoff, dead letters with reasons and replay,
//! idempotency, crash recovery, graceful shutdown, Redis outages.

use std::time::{Duration, Instant};

use ferry::event::Event;
use ferry::metrics;
use ferry_test_fixtures as fixtures;

use crate::support::{
    Env, HostProcess, InProcessHost, RECORDER_TOML, by_subscriber, ferry, publish, recorder_of, records,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_requests_are_retried_with_backoff_until_success() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let started = Instant::now();
    let event = publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":3}"#).await;
    let records = env.records_at_least(1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["id"], event.id.as_str());
    assert_eq!(records[0]["attempt"], 3, "handled on the third attempt");
    // Backoff 50 ms then 100 ms (no jitter in the test policy).
    assert!(started.elapsed() >= Duration::from_millis(150));
    env.settled("events", Duration::from_secs(10)).await;
    let m = &host.context().metrics;
    assert_eq!(metrics::count(&m.retried, "rec"), 2);
    assert_eq!(metrics::count(&m.handled, "rec"), 1);
    assert!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").is_empty());
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_at_once_with_reason_and_metadata() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    let mut event = Event::new("Bad", "tests", r#"{"act":"reject"}"#);
    event.correlationid = Some("corr-1".into());
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
    env.settled("events", Duration::from_secs(20)).await;
    let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 1);
    let d = &letters[0];
    assert_eq!(d.event_id, event.id);
    assert_eq!(d.kind, "handler-reject");
    assert_eq!(d.reason, "rejected on purpose");
    assert_eq!(d.attempts, "1");
    assert_eq!(d.subscriber, "rec");
    assert_eq!(d.plugin_version.len(), 12);
    assert!(!d.first_failure.is_empty() && !d.last_failure.is_empty());
    let field = |name: &str| d.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(field("correlationid").as_deref(), Some("corr-1"), "original attributes kept");
    assert_eq!(field("data").as_deref(), Some(r#"{"act":"reject"}"#));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_that_traps_is_dead_lettered_after_max_attempts_and_replays_after_a_fix() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    let host = ferry::host::Host::start(config.clone()).await.expect("host");
    let mut conn = env.conn().await;
    let poison = publish(&mut conn, "events", "Poison", r#"{"act":"panic"}"#).await;
    let fine = publish(&mut conn, "events", "Fine", "{}").await;
    let letters = env
        .wait_for("the poison event to be dead-lettered", Duration::from_secs(20), || {
            let mut conn = conn.clone();
            async move {
                let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.ok()?;
                (!letters.is_empty()).then_some(letters)
            }
        })
        .await;
    env.settled("events", Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, poison.id);
    assert_eq!(letters[0].kind, "trap");
    assert_eq!(letters[0].attempts, "3");
    assert!(letters[0].reason.contains("boom on purpose at attempt 3"), "{}", letters[0].reason);
    let recs = records(&mut conn, "records").await;
    assert_eq!(recs.len(), 1, "the other event was not held up");
    assert_eq!(recs[0]["id"], fine.id.as_str());
    host.stop_all().await;

    // The operator fixes the plugin (here: through its config) and replays the dead letter.
    let fixed = RECORDER_TOML.replace("[config]\n", "[config]\nignore_acts = \"yes\"\n");
    std::fs::write(env.plugins.path().join("rec.toml"), fixed).expect("write");
    config.watch = false;
    let host = ferry::host::Host::start(config).await.expect("host");
    let url = env.redis.url();
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || ferry(&["dlq", "replay", "--subscriber", "rec", "--all", "--redis", &url]))
            .await
            .expect("join");
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("replayed 1 dead letter(s) to rec"), "{stdout}");
    let recs = env.records_at_least(2, Duration::from_secs(20)).await;
    assert_eq!(recs[1]["id"], poison.id.as_str());
    assert_eq!(recs[1]["attempt"], 1, "attempts reset on replay");
    assert!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").is_empty());
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reaches_only_that_subscriber_and_purge_needs_ids_or_all() {
    let env = Env::new();
    env.add_plugin("picky", fixtures::RECORDER, RECORDER_TOML);
    env.add_plugin("other", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let event = publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    env.settled("events", Duration::from_secs(20)).await;
    assert_eq!(ferry::dlq::list(&mut conn, None, 10).await.expect("dlq").len(), 2);

    let n = ferry::dlq::replay(&mut conn, "picky", &ferry::dlq::Selection::Ids(vec![event.id.clone()]), |_, _| {})
        .await
        .expect("replay");
    assert_eq!(n, 1);
    env.settled("events", Duration::from_secs(20)).await;
    let letters = ferry::dlq::list(&mut conn, None, 10).await.expect("dlq");
    assert_eq!(letters.len(), 2, "picky rejected it again; other was not re-delivered");
    let m = &host.context().metrics;
    assert_eq!(metrics::count(&m.dead_lettered, "picky"), 2);
    assert_eq!(metrics::count(&m.dead_lettered, "other"), 1);

    let url = env.redis.url();
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || ferry(&["dlq", "purge", "--subscriber", "other", "--redis", &url]))
            .await
            .expect("join");
    assert!(!status.success());
    assert!(stderr.contains("--all"), "{stderr}");
    let purged = ferry::dlq::purge(&mut conn, "other", &ferry::dlq::Selection::All).await.expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(ferry::dlq::list(&mut conn, None, 10).await.expect("dlq").len(), 1);
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_handled_once() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let event = Event::new("Twice", "tests", "{}");
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
    env.records_at_least(1, Duration::from_secs(20)).await;
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish again");
    let last = publish(&mut conn, "events", "After", "{}").await;
    let recs = env.records_at_least(2, Duration::from_secs(20)).await;
    env.settled("events", Duration::from_secs(10)).await;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1]["id"], last.id.as_str());
    assert_eq!(metrics::count(&host.context().metrics.deduplicated, "rec"), 1);
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_survives_a_host_restart_and_runs_at_its_due_time() {
    let env = Env::new();
    let toml = RECORDER_TOML
        .replace("initial_delay = \"50ms\"", "initial_delay = \"2s\"")
        .replace("max_delay = \"1s\"", "max_delay = \"10s\"");
    env.add_plugin("rec", fixtures::RECORDER, &toml);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let failed_at = Instant::now();
    publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":2}"#).await;
    env.wait_for("the retry to be scheduled", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let n: u64 = redis::cmd("ZCARD").arg("ferry:schedule:{events}:rec").query_async(&mut conn).await.ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    host.stop_all().await;
    drop(host);

    let host = ferry::host::Host::start(env.config()).await.expect("host restarts");
    let recs = env.records_at_least(1, Duration::from_secs(20)).await;
    assert_eq!(recs[0]["attempt"], 2);
    assert!(failed_at.elapsed() >= Duration::from_millis(1900), "not before its due time: {:?}", failed_at.elapsed());
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_of_a_retried_event_is_written_once_with_the_final_ack() {
    let env = Env::new();
    let toml = RECORDER_TOML
        .replace("publish_streams = [\"records\"]", "publish_streams = [\"records\", \"follow\"]")
        .replace("[config]\n", "[config]\nfollow_to = \"follow\"\n");
    env.add_plugin("rec", fixtures::RECORDER, &toml);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    let mut event = Event::new("Chain", "tests", r#"{"act":"follow","until":3}"#);
    event.correlationid = Some("flow-1".into());
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
    env.records_at_least(1, Duration::from_secs(20)).await;
    let value: redis::Value =
        redis::cmd("XRANGE").arg("follow").arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let follow = ferry::consume::read::parse_entries("follow", value);
    assert_eq!(follow.len(), 1, "two failed attempts left no follow-ups behind");
    let follow_up = Event::from_fields(&follow[0].fields).expect("valid event");
    assert_eq!(follow_up.source, "rec");
    assert_eq!(follow_up.causationid.as_deref(), Some(event.id.as_str()));
    assert_eq!(follow_up.correlationid.as_deref(), Some("flow-1"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_events_finish_and_exits_zero() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut host = HostProcess::start(&env.config(), dir.path(), "host");
    let mut conn = env.conn().await;
    let slow = publish(&mut conn, "events", "Slow", r#"{"act":"slow","ms":1500}"#).await;
    env.pending("events", 1, Duration::from_secs(20)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = host.terminate();
        (status, host.log())
    })
    .await
    .expect("join");
    assert!(status.0.success(), "exit status {:?}\n{}", status.0, status.1);
    let recs = records(&mut conn, "records").await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["id"], slow.id.as_str());
    let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.expect("status");
    assert_eq!(groups[0].pending, 0, "settled before exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_rides_out_a_redis_restart_without_losing_events() {
    let env = Env::with_redis(ferry_test_kit::redis_server::RedisServer::start_with(true).expect("redis with AOF"));
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    let mut sent = Vec::new();
    for i in 0..100 {
        sent.push(publish(&mut conn, "events", "Before", &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    env.records_at_least(100, Duration::from_secs(20)).await;
    let mut redis = env.redis;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().expect("redis restarts");
    let env = crate::support::Env { redis, plugins: env.plugins, cache: env.cache };
    let mut conn = env.conn().await;
    for i in 0..100 {
        sent.push(publish(&mut conn, "events", "After", &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    let recs = env.records_at_least(200, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(10)).await;
    let handled: std::collections::HashSet<&str> = recs.iter().filter_map(|r| r["id"].as_str()).collect();
    assert!(sent.iter().all(|id| handled.contains(id.as_str())), "every event handled");
    assert_eq!(by_subscriber(&recs, "rec").len(), 200, "none handled twice");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_subscribers_handle_each_key_in_stream_order_even_across_retries() {
    let env = Env::new();
    let toml = format!("ordered = true\n{}", RECORDER_TOML.replace("max_attempts = 3", "max_attempts = 4"));
    env.add_plugin("rec", fixtures::RECORDER, &toml);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    // Key a: its first event fails twice and then succeeds; key b's first is rejected
    // (dead-lettered: later b events continue after it); key c flows freely.
    let mut sent = Vec::new();
    for seq in 0..30 {
        let key = ["a", "b", "c"][seq % 3];
        let act = match (key, seq) {
            ("a", 0) => r#","act":"retry","until":3"#,
            ("b", 1) => r#","act":"reject""#,
            _ => "",
        };
        let mut event = Event::new("Step", "tests", format!(r#"{{"seq":{seq}{act}}}"#));
        event.partitionkey = Some(key.to_string());
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
        sent.push(event);
    }
    let recs = env.records_at_least(29, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(20)).await;
    assert_eq!(recs.len(), 29, "everything but the rejected event handled once");
    let seq_of = |r: &serde_json::Value| -> u64 {
        let data: serde_json::Value = serde_json::from_str(r["data"].as_str().expect("data")).expect("json");
        data["seq"].as_u64().expect("seq")
    };
    for key in ["a", "b", "c"] {
        let seqs: Vec<u64> = recs.iter().filter(|r| r["partitionkey"] == key).map(seq_of).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "key {key} handled in stream order");
    }
    // Key c did not wait for key a's retries.
    let first_a = recs.iter().position(|r| r["partitionkey"] == "a").expect("a handled");
    let c_before = recs[..first_a].iter().filter(|r| r["partitionkey"] == "c").count();
    assert!(c_before >= 5, "other keys flow while a waits (c handled before a's first: {c_before})");
    assert_eq!(recs[first_a]["attempt"], 3);
    let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 1);
    let holds: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("ferry:holds:{events}:rec").query_async(&mut conn).await.expect("holds");
    assert!(holds.is_empty(), "every key released: {holds:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_show_print_a_table_and_json() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    let bad = publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    env.settled("events", Duration::from_secs(20)).await;
    host.stop().await;
    let url = env.redis.url();
    let id = bad.id.clone();
    let (table, json, show, text, wide) = tokio::task::spawn_blocking(move || {
        (
            ferry(&["dlq", "list", "--redis", &url]),
            ferry(&["dlq", "list", "--subscriber", "rec", "--json", "--redis", &url]),
            ferry(&["dlq", "show", &id, "--json", "--redis", &url]),
            ferry(&["dlq", "show", &id, "--redis", &url]),
            ferry(&["dlq", "list", "--wide", "--redis", &url]),
        )
    })
    .await
    .expect("join");
    assert!(text.0.success(), "{}", text.2);
    assert!(
        text.1.contains("reason:   rejected on purpose") && text.1.contains("fields:") && text.1.contains("_kind"),
        "a readable dead letter: {}",
        text.1
    );
    assert!(wide.1.contains(&format!("event:    {} (Bad)", bad.id)), "one block per dead letter: {}", wide.1);
    assert!(table.0.success(), "{}", table.2);
    let header = table.1.lines().next().unwrap_or_default();
    assert!(header.starts_with("SUBSCRIBER") && header.contains("REASON"), "{}", table.1);
    assert!(table.1.contains("rejected on purpose") && table.1.contains("1 dead letter(s)"), "{}", table.1);
    let listed: serde_json::Value = serde_json::from_str(&json.1).expect("json");
    assert_eq!(listed[0]["event_id"], bad.id.as_str());
    assert_eq!(listed[0]["kind"], "handler-reject");
    let shown: serde_json::Value = serde_json::from_str(&show.1).expect("json");
    assert_eq!(shown["reason"], "rejected on purpose");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_each_way_and_the_host_keeps_running() {
    let env = Env::with_redis(ferry_test_kit::redis_server::RedisServer::start_with(true).expect("redis with AOF"));
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    env.add_plugin("rec2", fixtures::RECORDER, RECORDER_TOML);
    let dir = tempfile::tempdir().expect("temp dir");
    let host = HostProcess::start(&env.config(), dir.path(), "host");
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Before", "{}").await;
    env.records_at_least(2, Duration::from_secs(20)).await;
    let mut redis = env.redis;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().expect("redis restarts");
    let env = Env { redis, plugins: env.plugins, cache: env.cache };
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "After", "{}").await;
    env.records_at_least(4, Duration::from_secs(30)).await;
    let log = host.log();
    assert_eq!(log.matches("redis unavailable").count(), 1, "one line going down:\n{log}");
    assert_eq!(log.matches("redis reachable again").count(), 1, "one line coming back:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_entry_is_dead_lettered_only_by_subscribers_that_want_its_type() {
    let env = Env::new();
    env.add_plugin("orders", fixtures::RECORDER, &recorder_of(&["OrderCreated"]));
    env.add_plugin("greeter", fixtures::RECORDER, &recorder_of(&["UserRegistered"]));
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    // A malformed OrderCreated (its data is not the JSON its content type says) and an entry
    // with no readable type at all.
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("id")
        .arg("bad-order")
        .arg("type")
        .arg("OrderCreated")
        .arg("source")
        .arg("tests")
        .arg("specversion")
        .arg("1.0")
        .arg("time")
        .arg("2026-01-01T00:00:00Z")
        .arg("data")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let _: String =
        redis::cmd("XADD").arg("events").arg("*").arg("garbage").arg("1").query_async(&mut conn).await.expect("xadd");
    env.settled_groups("events", &["orders", "greeter"], Duration::from_secs(30)).await;
    let letters = |sub: &'static str| {
        let mut conn = conn.clone();
        async move { ferry::dlq::list(&mut conn, Some(sub), 10).await.expect("dlq") }
    };
    let orders = letters("orders").await;
    let greeter = letters("greeter").await;
    assert_eq!(orders.len(), 2, "the order subscriber gets both: {orders:?}");
    assert!(orders.iter().any(|l| l.event_id == "bad-order") && orders.iter().all(|l| l.kind == "invalid-event"));
    assert_eq!(greeter.len(), 1, "the greeter gets only the untyped entry: {greeter:?}");
    assert_eq!(greeter[0].event_id, "");
    host.stop().await;
}
