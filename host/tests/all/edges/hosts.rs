//! Hosts at the edges: crashes that are not the event's fault, live work that is never taken
//! over, slow events that do not hold back fast ones, silent consumers reaped, and a host that
//! holds at most one read beyond what runs.

use std::time::Duration;

use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;

use super::started;
use crate::support::{Env, HostProcess, InProcessHost, counts, publish, recorder, records, wait_dead_letters};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_crashes_do_not_spend_attempts_and_only_a_repeated_crash_dead_letters() {
    let env = Env::new();
    // One attempt only: before, a single SIGKILL during the run dead-lettered the event.
    let toml = "start = \"beginning\"\npublish_streams = [\"records\"]\n[config]\nrecord_to = \"records\"\n\
                [retry]\nmax_attempts = 1\nmax_deliveries = 3\n";
    env.add_plugin("rec", fixtures::RECORDER, toml);
    let keys = SubscriberKeys::new("events", "rec");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = env.config();
    let mut conn = env.conn().await;
    let survivor = publish(&mut conn, "events", "Slow", r#"{"act":"sleep","ms":1500}"#).await;
    for n in 1..=2 {
        let mut host = HostProcess::start(&config, dir.path(), "host");
        started(&env, &keys, &survivor.id, n).await;
        host.kill();
    }
    let host = HostProcess::start(&config, dir.path(), "host");
    let recs = env.records_at_least(1, Duration::from_secs(30)).await;
    assert_eq!(recs[0]["id"], survivor.id.as_str());
    assert_eq!(recs[0]["attempt"], 1, "two crashes spent no attempt");
    env.settled("events", Duration::from_secs(30)).await;
    assert!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").is_empty());
    drop(host);

    // An event that is running every time the host dies: dead-lettered as `crash` once its
    // runs without a verdict reach max_deliveries.
    let doomed = publish(&mut conn, "events", "Slow", r#"{"act":"sleep","ms":3000}"#).await;
    for n in 1..=3 {
        let mut host = HostProcess::start(&config, dir.path(), "host");
        started(&env, &keys, &doomed.id, n).await;
        host.kill();
    }
    let host = HostProcess::start(&config, dir.path(), "host");
    let letters = wait_dead_letters(&env, "rec", 1).await;
    assert_eq!(letters[0].event_id, doomed.id);
    assert_eq!(letters[0].kind, "crash");
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_never_take_over_each_others_live_work() {
    let env = Env::new();
    // Dedupe off, so a second run of any event shows as a second record.
    let toml = recorder("dedupe_window = \"0s\"\nconcurrency = 2\n[limits]\ndeadline = \"2s\"\n");
    env.add_plugin("rec", fixtures::RECORDER, &toml);
    let mut conn = env.conn().await;
    let mut ids = Vec::new();
    // 40 events of 700 ms for 4 workers: about 7 s of work, longer than claim_idle, so most
    // entries wait in a host's hands far longer than claim_idle.
    for i in 0..40 {
        ids.push(publish(&mut conn, "events", "Slow", &format!(r#"{{"i":{i},"act":"sleep","ms":700}}"#)).await.id);
    }
    let mut a = env.config();
    a.consumer = Some("host-a".into());
    a.read.claim_idle = Some(Duration::from_millis(2500));
    // Small reads, so both hosts hold work.
    a.read.count = 5;
    let mut b = a.clone();
    b.consumer = Some("host-b".into());
    let host_a = InProcessHost::start(a);
    let host_b = InProcessHost::start(b);
    env.settled("events", Duration::from_secs(90)).await;
    let recs = records(&mut conn, "records").await;
    let counts = counts(&recs);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} ran exactly once");
    }
    assert!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").is_empty());
    let status = ferry::status::collect(&mut conn, &["events".to_string()]).await.expect("status");
    let names: Vec<String> = status.iter().flat_map(|g| g.consumers.iter().map(|c| c.name.clone())).collect();
    assert!(names.contains(&"host-a".to_string()) && names.contains(&"host-b".to_string()), "{names:?}");
    host_a.stop().await;
    host_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_event_does_not_hold_back_the_settling_of_fast_ones() {
    let env = Env::new();
    // The slow events run for 30 s (within their deadline): every fast event must be handled
    // and acknowledged while both are still running. The margin is the slow events' whole
    // run, not the machine's speed.
    env.add_plugin("rec", fixtures::RECORDER, &recorder("concurrency = 8\n[limits]\ndeadline = \"60s\""));
    let mut conn = env.conn().await;
    for i in 0..2 {
        publish(&mut conn, "events", "Slow", &format!(r#"{{"i":{i},"act":"sleep","ms":30000}}"#)).await;
    }
    for i in 0..200 {
        publish(&mut conn, "events", "Fast", &format!(r#"{{"i":{i}}}"#)).await;
    }
    let mut config = env.config();
    config.shutdown_grace = Duration::from_millis(100);
    let host = InProcessHost::start(config);
    let recs = env.records_at_least(200, Duration::from_secs(25)).await;
    assert_eq!(recs.iter().filter(|r| r["type"] == "Fast").count(), 200, "every fast event handled");
    assert!(recs.iter().all(|r| r["type"] == "Fast"), "the slow events are still running");
    // Settled too: only the two slow entries are still pending.
    env.pending("events", 2, Duration::from_secs(10)).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_consumers_with_nothing_pending_are_reaped_and_busy_ones_kept() {
    let env = Env::new();
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "A", "{}").await;
    let _: () =
        redis::cmd("XGROUP").arg("CREATE").arg("events").arg("g").arg("0").query_async(&mut conn).await.expect("group");
    // `busy` holds an entry; `idle` read nothing; `me` is the caller.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("busy")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("events")
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("read");
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg("events")
        .arg("g")
        .arg("idle")
        .query_async(&mut conn)
        .await
        .expect("c");
    // Both are now idle for longer than the 10 ms the script is given.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cmd = ferry::consume::scripts::evalsha(&ferry::consume::scripts::REAP, &["events"], &["g", "me", "10"]);
    let removed: Vec<String> = ferry::consume::scripts::run(&mut conn, &cmd).await.expect("reap");
    assert_eq!(removed, vec!["idle".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holds_at_most_one_read_of_events_beyond_those_running() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("concurrency = 2"));
    let mut conn = env.conn().await;
    for i in 0..60 {
        publish(&mut conn, "events", "Slow", &format!(r#"{{"i":{i},"act":"sleep","ms":60}}"#)).await;
    }
    let mut config = env.config();
    config.read.count = 10;
    let host = InProcessHost::start(config);
    // Pending on the group = read and not yet acked: running (2), waiting for a worker (at most
    // one read's worth, whether read ahead or not), and finished but not yet settled (a
    // settle is a round trip against a 60 ms handler: at most a worker's worth).
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while records(&mut conn, "records").await.len() < 60 {
        assert!(std::time::Instant::now() < deadline, "60 events handled within a minute");
        // The group does not exist until the host has started.
        let summary: Option<redis::Value> =
            redis::cmd("XPENDING").arg("events").arg("rec").query_async(&mut conn).await.ok();
        if let Some(redis::Value::Array(parts)) = summary
            && let Some(redis::Value::Int(n)) = parts.first()
        {
            most = most.max(*n);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most > 2, "the host read ahead of its workers: {most}");
    assert!(most <= 10 + 2 * 2, "at most one read (10) beyond the 2 running and 2 settling: {most}");
    host.stop().await;
}
