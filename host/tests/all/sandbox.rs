//! The hostile-plugin suite: each misbehaviour is stopped and named, the host stays up, and
//! a well-behaved plugin next to it keeps handling its events.

use std::time::{Duration, Instant};

use ferry::event::Event;
use ferry_test_fixtures as fixtures;

use crate::support::{Env, HostProcess, InProcessHost, RECORDER_TOML, by_subscriber, publish, records};

/// The hostile plugin: only `Hostile` events, two attempts, tight limits.
fn hostile_toml() -> String {
    let base = RECORDER_TOML.replace("max_attempts = 3", "max_attempts = 2");
    format!("subscriptions = [{{ type = \"Hostile\" }}]\n{base}\n[limits]\nmemory = 33554432\ndeadline = \"500ms\"\n")
}

/// The well-behaved neighbour: only `Good` events.
fn good_toml() -> String {
    format!("subscriptions = [{{ type = \"Good\" }}]\n{RECORDER_TOML}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hostile_behaviour_is_stopped_named_and_dead_lettered_while_a_neighbour_keeps_working() {
    let env = Env::new();
    env.add_plugin("hostile", fixtures::RECORDER, &hostile_toml());
    env.add_plugin("good", fixtures::RECORDER, &good_toml());
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;

    let cases = [
        ("loop", "deadline", "deadline of 500ms exceeded"),
        ("alloc", "out-of-memory", "memory limit exceeded"),
        ("recurse", "stack-overflow", "stack overflow"),
        ("panic", "trap", "boom on purpose at attempt 2"),
        ("slow\",\"ms\":\"5000", "deadline", "deadline of 500ms exceeded"),
    ];
    let mut ids = Vec::new();
    for (act, _, _) in &cases {
        let data = if act.starts_with("slow") {
            r#"{"act":"slow","ms":5000}"#.to_string()
        } else {
            format!(r#"{{"act":"{act}"}}"#)
        };
        ids.push(publish(&mut conn, "events", "Hostile", &data).await.id);
        for i in 0..20 {
            publish(&mut conn, "events", "Good", &format!(r#"{{"i":{i}}}"#)).await;
        }
    }
    env.settled("events", Duration::from_secs(60)).await;
    let letters = ferry::dlq::list(&mut conn, Some("hostile"), 100).await.expect("dlq");
    for ((act, kind, reason), id) in cases.iter().zip(&ids) {
        let letter =
            letters.iter().find(|d| d.event_id == *id).unwrap_or_else(|| panic!("{act} was not dead-lettered"));
        assert_eq!(letter.kind, *kind, "{act}: {}", letter.reason);
        assert!(letter.reason.contains(reason), "{act}: {}", letter.reason);
        assert_eq!(letter.attempts, "2", "{act}: retried once, then dead-lettered");
    }
    let recs = records(&mut conn, "records").await;
    assert_eq!(by_subscriber(&recs, "good").len(), 100, "the neighbour handled every event");
    let m = &host.context().metrics;
    for (_, kind, _) in &cases {
        let failures = m
            .failures
            .get_or_create(&ferry::metrics::FailureLabels { subscriber: "hostile".into(), kind: (*kind).into() })
            .get();
        assert!(failures >= 2, "{kind} counted: {failures}");
    }
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_have_no_files_environment_or_sockets_and_publish_only_where_granted() {
    let env = Env::new();
    env.add_plugin("hostile", fixtures::RECORDER, &hostile_toml());
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    let port = env.redis.port();
    for data in [
        r#"{"act":"open_file"}"#.to_string(),
        r#"{"act":"env"}"#.to_string(),
        format!(r#"{{"act":"socket","port":{port}}}"#),
        r#"{"act":"publish_forbidden"}"#.to_string(),
        r#"{"act":"publish_huge"}"#.to_string(),
    ] {
        publish(&mut conn, "events", "Hostile", &data).await;
    }
    let recs = env.records_at_least(5, Duration::from_secs(30)).await;
    let notes: Vec<&str> = recs.iter().filter_map(|r| r["note"].as_str()).collect();
    assert!(notes[0].starts_with("file: denied"), "{notes:?}");
    assert_eq!(notes[1], "env: 0 variables");
    assert!(notes[2].starts_with("socket: denied"), "{notes:?}");
    assert!(notes[3].contains("publishing to stream `forbidden` is not allowed"), "{notes:?}");
    assert!(notes[4].contains("exceeds the limit of 1048576 bytes"), "{notes:?}");
    let forbidden: u64 = redis::cmd("XLEN").arg("forbidden").query_async(&mut conn).await.expect("xlen");
    assert_eq!(forbidden, 0, "nothing reached the forbidden stream");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_stdout_floods_are_capped_and_the_host_stays_up() {
    let env = Env::new();
    env.add_plugin(
        "hostile",
        fixtures::RECORDER,
        &hostile_toml().replace("deadline = \"500ms\"", "deadline = \"10s\""),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let host = HostProcess::start(&env.config(), dir.path(), "host");
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Hostile", r#"{"act":"log_flood"}"#).await;
    publish(&mut conn, "events", "Hostile", r#"{"act":"stdout_flood"}"#).await;
    let recs = env.records_at_least(2, Duration::from_secs(60)).await;
    assert_eq!(recs[0]["note"], "flooded the log");
    assert_eq!(recs[1]["note"], "flooded stdout");
    let log = host.log();
    assert!(
        log.contains("dropped 99901 log lines over the limit of 100 per event"),
        "log cap reported:\n{}",
        log.lines().filter(|l| l.contains("dropped")).collect::<Vec<_>>().join("\n")
    );
    assert!(log.contains("dropped_bytes=10481824"), "stdout capped at 4096 of 10485920 bytes");
    // 100 lines of at most 2048 bytes plus 4 KiB of stdout, not the 100 MB the guest wrote
    // (99,900 flood lines over the cap + the recorder's own debug line = 99,901 dropped).
    assert!(log.len() < 1_000_000, "host log stayed small: {} bytes", log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_limits_stop_a_busy_loop_with_a_named_reason() {
    let env = Env::new();
    let toml = hostile_toml().replace("deadline = \"500ms\"", "deadline = \"30s\"\nfuel = 50000000");
    env.add_plugin("hostile", fixtures::RECORDER, &toml);
    let mut config = env.config();
    config.engine.fuel = true;
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
    let event = publish(&mut conn, "events", "Hostile", r#"{"act":"loop"}"#).await;
    publish(&mut conn, "events", "Hostile", r#"{}"#).await;
    env.settled("events", Duration::from_secs(30)).await;
    let letters = ferry::dlq::list(&mut conn, Some("hostile"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, event.id);
    assert_eq!(letters[0].kind, "out-of-fuel");
    assert_eq!(records(&mut conn, "records").await.len(), 1, "a normal event runs within its fuel");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbours_throughput_with_and_without_a_hostile_plugin() {
    async fn run(with_hostile: bool) -> Duration {
        let env = Env::new();
        env.add_plugin("good", fixtures::RECORDER, &good_toml());
        if with_hostile {
            env.add_plugin("hostile", fixtures::RECORDER, &hostile_toml());
        }
        let host = InProcessHost::start(env.config());
        let mut conn = env.conn().await;
        let mut batch = redis::pipe();
        for i in 0..2000 {
            ferry::outbox::add(&mut batch, "events", &Event::new("Good", "tests", format!(r#"{{"i":{i}}}"#)));
            if with_hostile && i % 100 == 0 {
                ferry::outbox::add(&mut batch, "events", &Event::new("Hostile", "tests", r#"{"act":"loop"}"#));
            }
        }
        let started = Instant::now();
        batch.query_async::<()>(&mut conn).await.expect("publish");
        let recs = env.records_at_least(2000, Duration::from_secs(120)).await;
        let took = started.elapsed();
        assert_eq!(by_subscriber(&recs, "good").len(), 2000);
        host.stop().await;
        took
    }
    let alone = run(false).await;
    let beside = run(true).await;
    println!(
        "neighbour throughput: {:.0} events/s alone, {:.0} events/s beside a plugin looping on 20 events (40 deadline hits of 500 ms)",
        2000.0 / alone.as_secs_f64(),
        2000.0 / beside.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_instances_carry_no_state_and_reused_ones_are_recycled() {
    async fn calls(mode: &str) -> Vec<u64> {
        let env = Env::new();
        let toml = format!("{RECORDER_TOML}\n[limits]\ninstance_mode = \"{mode}\"\nrecycle_after = 3\n");
        env.add_plugin("rec", fixtures::RECORDER, &toml);
        let host = InProcessHost::start(env.config());
        let mut conn = env.conn().await;
        for i in 0..30 {
            publish(&mut conn, "events", "Count", &format!(r#"{{"i":{i}}}"#)).await;
        }
        let recs = env.records_at_least(30, Duration::from_secs(30)).await;
        host.stop().await;
        recs.iter().map(|r| r["calls"].as_u64().expect("calls")).collect()
    }
    let fresh = calls("per-event").await;
    assert!(fresh.iter().all(|c| *c == 1), "a fresh instance per event: {fresh:?}");
    let reused = calls("reuse").await;
    assert!(reused.iter().all(|c| (1..=3).contains(c)), "recycled after 3 events: {reused:?}");
    assert!(reused.iter().any(|c| *c > 1), "instances are reused: {reused:?}");
}
