//! Handler state that commits with the acknowledgement (issue 25), with the counter fixture
//! (`tests/guests/counter`, built against `ferry:plugin@0.2.0`): changed exactly once per
//! event through retries, traps, rejections, duplicates, concurrent hosts and SIGKILLs.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry::event::Event;
use ferry_test_fixtures as fixtures;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::support::{Env, HostProcess, records};

/// The counter with state granted, recording into `records`, retrying fast.
const COUNTER_TOML: &str = r#"
start = "beginning"
state = true
publish_streams = ["records"]
[config]
record_to = "records"
[retry]
max_attempts = 3
initial_delay = "20ms"
multiplier = 2.0
max_delay = "200ms"
jitter = 0.0
"#;

/// The committed value of the counter's `key` on `stream`.
async fn committed(conn: &mut MultiplexedConnection, stream: &str, key: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(ferry::keys::state(stream, "counter"))
        .arg(format!("={key}"))
        .query_async(conn)
        .await
        .expect("hget")
}

fn act(act: &str) -> Event {
    Event::new("Count", "tests", format!(r#"{{"act":"{act}"}}"#))
}

/// Reads see the event's own writes; a retried, trapped or rejected event leaves none
/// behind (the retry's attempt writes once), a duplicate writes nothing, a read alone writes
/// nothing, and a value over the bound is refused at the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_once_per_handled_event_and_never_for_a_failed_attempt() {
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, COUNTER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let plain = act("none");
    let events = [plain.clone(), act("fail"), act("trap"), act("reject"), act("none")];
    for e in &events {
        ferry::outbox::publish(&mut conn, "events", e).await.expect("publish");
    }
    // The same event again: a duplicate, skipped without running.
    ferry::outbox::publish(&mut conn, "events", &plain).await.expect("publish again");
    env.wait_for("the rejected event's dead letter", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { (ferry::dlq::list(&mut conn, Some("counter"), 10).await.ok()?.len() == 1).then_some(()) }
    })
    .await;
    let recs = env.records_at_least(4, Duration::from_secs(60)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(60)).await;
    assert_eq!(committed(&mut conn, "events", "count").await.as_deref(), Some("4"), "four handled events: {recs:?}");
    let counts: BTreeSet<u64> = recs.iter().filter_map(|r| parse(r)["count"].as_u64()).collect();
    assert_eq!(counts, BTreeSet::from([1, 2, 3, 4]), "each handled event saw its own increment once: {recs:?}");
    let retried = recs.iter().map(parse).find(|d| d["of"] == events[1].id.as_str()).expect("the failing event");
    assert_eq!(retried["attempt"], 2, "handled on its second attempt, its first write gone");
    let read = act("read");
    ferry::outbox::publish(&mut conn, "events", &read).await.expect("publish");
    let recs = env.records_at_least(5, Duration::from_secs(60)).await;
    assert_eq!(parse(&recs[4])["read"], "4", "a read sees the committed state");
    let big = act("big");
    ferry::outbox::publish(&mut conn, "events", &big).await.expect("publish");
    env.wait_for("the oversize value's dead letter", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let id = big.id.clone();
        async move {
            let letters = ferry::dlq::list(&mut conn, Some("counter"), 10).await.ok()?;
            letters.into_iter().find(|l| l.event_id == id)
        }
    })
    .await;
    assert_eq!(committed(&mut conn, "events", "big").await, None);
    host.stop_all().await;
}

/// A record: the data of a `Counted` follow-up (`support::records` parses it).
fn parse(record: &Value) -> Value {
    record.clone()
}

/// Without the grant a state call fails and the event is retried, then dead-lettered with a
/// reason naming the grant; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_without_a_grant_is_refused_naming_the_grant() {
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, &COUNTER_TOML.replace("state = true\n", ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let e = act("none");
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    let letter = env
        .wait_for("the dead letter", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move { ferry::dlq::list(&mut conn, Some("counter"), 10).await.ok()?.into_iter().next() }
        })
        .await;
    assert!(letter.reason.contains("state = true"), "{}", letter.reason);
    assert_eq!(committed(&mut conn, "events", "count").await, None);
    host.stop_all().await;
}

/// Two hosts, each running 4 events at once, count 4,000 events on one key while each is
/// SIGKILLed and restarted: the count ends at exactly 4,000 (no lost update, no double
/// write), and every event's follow-up was written exactly once with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_counting_through_sigkills_lose_no_update_and_write_none_twice() {
    const N: usize = 4_000;
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, &format!("concurrency = 4\n{COUNTER_TOML}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |name: &str| {
        let mut config = env.config();
        config.consumer = Some(name.into());
        // A killed host's entries are taken over quickly.
        config.read.claim_idle = Some(Duration::from_secs(12));
        config.defaults.concurrency = None;
        config
    };
    let mut conn = env.conn().await;
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let mut e = act("none");
            e.partitionkey = Some(format!("k{}", i % 10));
            ferry::outbox::add(&mut pipe, "events", &e);
            pipe.ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.expect("publish");
    }
    let mut a = HostProcess::start(&config("a"), dir.path(), "a");
    let mut b = HostProcess::start(&config("b"), dir.path(), "b");
    for (round, fraction) in [(0, 4), (1, 2)] {
        env.records_at_least(N / fraction, Duration::from_secs(120)).await;
        let (victim, name) = if round == 0 { (&mut a, "a") } else { (&mut b, "b") };
        victim.kill();
        *victim = HostProcess::start(&config(name), dir.path(), &format!("{name}-{round}"));
    }
    env.records_at_least(N, Duration::from_secs(300)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(120)).await;
    let recs = records(&mut conn, "records").await;
    let handled: BTreeSet<String> = recs.iter().filter_map(|r| parse(r)["of"].as_str().map(String::from)).collect();
    assert_eq!((recs.len(), handled.len()), (N, N), "one follow-up per event, written once");
    assert_eq!(committed(&mut conn, "events", "count").await, Some(N.to_string()), "no lost or doubled update");
    let per_key: u64 = per_key_sum(&mut conn).await;
    assert_eq!(per_key, N as u64, "the per-key counters add up");
    drop((a, b));
}

async fn per_key_sum(conn: &mut MultiplexedConnection) -> u64 {
    let mut sum = 0;
    for k in 0..10 {
        sum += committed(conn, "events", &format!("k{k}")).await.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    sum
}

/// Run `ferry state ARGS --subscriber counter --redis URL`; (success, stdout, stderr).
async fn ferry_state(redis: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(crate::support::ferry_bin());
    cmd.arg("state").args(args).args(["--subscriber", "counter", "--redis", redis]).env("FERRY_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") && k != "FERRY_LOG" {
            cmd.env_remove(k);
        }
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("running ferry")).await.expect("join");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `ferry state get` shows what the counter committed, `ferry state set` repairs it (on a
/// partition, named by `--stream`), and the next event counts on from the repaired value;
/// `list` shows each key's size with control characters escaped, `delete` removes a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_state_shows_and_repairs_the_count_and_the_next_event_continues_from_the_repair() {
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, COUNTER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    for _ in 0..3 {
        ferry::outbox::publish(&mut conn, "events", &act("none")).await.expect("publish");
    }
    env.records_at_least(3, Duration::from_secs(60)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(60)).await;
    let url = env.redis.url();
    let got = ferry_state(&url, &["get", "count"]).await;
    assert!(got.0, "{}", got.2);
    assert_eq!(got.1.trim(), "3");
    let set = ferry_state(&url, &["set", "count", "100"]).await;
    assert!(set.0, "{}", set.2);
    ferry::outbox::publish(&mut conn, "events", &act("none")).await.expect("publish");
    let recs = env.records_at_least(4, Duration::from_secs(60)).await;
    assert_eq!(parse(&recs[3])["count"], 101, "continued from the repair: {recs:?}");
    assert_eq!(committed(&mut conn, "events", "count").await.as_deref(), Some("101"));
    // A partition's state is its own hash, reached by `--stream`.
    let odd = ferry_state(&url, &["set", "bad\u{1b}[2Jkey", "xyz", "--stream", "events#2"]).await;
    assert!(odd.0, "{}", odd.2);
    let listed = ferry_state(&url, &["list", "--stream", "events#2"]).await;
    assert!(listed.0, "{}", listed.2);
    assert!(!listed.1.contains('\u{1b}'), "escaped: {:?}", listed.1);
    assert!(listed.1.contains("bad\\u{1b}[2Jkey") && listed.1.contains("  3"), "{}", listed.1);
    let main = ferry_state(&url, &["list", "--json"]).await;
    let keys: Value = serde_json::from_str(&main.1).expect("json");
    assert_eq!(keys[0]["key"], "count");
    assert_eq!(keys[0]["bytes"], 3);
    let deleted = ferry_state(&url, &["delete", "bad\u{1b}[2Jkey", "--stream", "events#2"]).await;
    assert!(deleted.0, "{}", deleted.2);
    let gone = ferry_state(&url, &["get", "bad\u{1b}[2Jkey", "--stream", "events#2"]).await;
    assert!(!gone.0, "a missing key fails: {}", gone.1);
    host.stop_all().await;
}

/// `ferry status` shows each subscriber's state size and the admin endpoint exports it as
/// `ferry_state_bytes{subscriber}`: the quota's own total, summed over the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_size_is_in_the_status_and_the_state_bytes_gauge() {
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, COUNTER_TOML);
    let mut config = env.config();
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    config.admin.listen = addr.clone();
    let host = crate::support::InProcessHost::start(config);
    let mut conn = env.conn().await;
    for _ in 0..12 {
        ferry::outbox::publish(&mut conn, "events", &act("none")).await.expect("publish");
    }
    env.records_at_least(12, Duration::from_secs(60)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(60)).await;
    // `count` = "12": 5 + 2 bytes.
    let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.expect("status");
    let counter = groups.iter().find(|g| g.group == "counter").expect("the counter's group");
    assert_eq!(counter.state_bytes, 7);
    let gauge = env
        .wait_for("the state gauge", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move {
                let body = ferry::status::http_get(&addr, "/metrics").await.ok()?;
                let line = body.lines().find(|l| l.starts_with(r#"ferry_state_bytes{subscriber="counter"}"#))?;
                let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
                (value == 7.0).then_some(value)
            }
        })
        .await;
    assert_eq!(gauge, 7.0);
    let url = env.redis.url();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::ferry_bin())
            .args(["status", "--redis", &url, "--stream", "events"])
            .env("FERRY_LOG", "warn")
            .env_remove("FERRY_CONFIG")
            .output()
            .expect("running ferry")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("STATE") && text.contains(" 7B "), "{text}");
    host.stop().await;
}
