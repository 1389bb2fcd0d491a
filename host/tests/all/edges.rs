//! Delivery at the edges: duplicates that arrive together, bounded dedupe records, partition
//! keys that never stay held, crashes that are not the event's fault, live work that is
//! never taken over, slow events that do not hold back fast ones, and the smaller holes
//! (over-large entries, keys of the wrong type, silent consumers, trimming, replays).
//!
//! Each test forces the interleaving it asserts (an event provably in flight, two copies in
//! one pipeline, a holder deleted while pending) instead of hoping for it.

use std::collections::HashMap;
use std::time::Duration;

use ferry::config::RetentionConfig;
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::support::{
    Env, HostProcess, InProcessHost, RECORDER_TOML, counts, no_key_held, parked, publish, publish_keyed, recorder,
    records,
};

/// Runs recorded for `key` in the in-flight hash (events being handled now).
async fn in_flight(conn: &mut MultiplexedConnection, keys: &SubscriberKeys) -> u64 {
    redis::cmd("HLEN").arg(&keys.inflight).query_async(conn).await.expect("HLEN")
}

/// Runs of `event_id` recorded without a verdict (from its in-flight marker).
async fn starts(conn: &mut MultiplexedConnection, keys: &SubscriberKeys, event_id: &str) -> u64 {
    let marker: Option<String> =
        redis::cmd("HGET").arg(&keys.inflight).arg(event_id).query_async(conn).await.expect("HGET");
    marker.and_then(|m| m.split(':').nth(1)?.parse().ok()).unwrap_or(0)
}

/// Wait until `event_id` has been started `n` times without a verdict.
async fn started(env: &Env, keys: &SubscriberKeys, event_id: &str, n: u64) {
    let conn = env.conn().await;
    env.wait_for(&format!("{event_id} started {n} times"), Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move { (starts(&mut conn, &keys, event_id).await >= n).then_some(()) }
    })
    .await;
}

/// Wait until `subscriber` has dead letters; returns them.
async fn dead_letters(env: &Env, subscriber: &str) -> Vec<ferry::dlq::DeadLetter> {
    let conn = env.conn().await;
    env.wait_for(&format!("dead letters of {subscriber}"), Duration::from_secs(30), || {
        let mut conn = conn.clone();
        async move {
            let letters = ferry::dlq::list(&mut conn, Some(subscriber), 10).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await
}

/// Wait until `n` events of `keys` are being handled.
async fn running(env: &Env, keys: &SubscriberKeys, n: u64) {
    let conn = env.conn().await;
    env.wait_for(&format!("{n} events in flight"), Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move { (in_flight(&mut conn, &keys).await >= n).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_an_event_added_twice_in_one_pipeline_are_handled_once() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    // An outbox that retried its XADD after a lost reply: every event twice, back to back.
    let mut pipe = redis::pipe();
    let mut ids = Vec::new();
    for i in 0..200 {
        let event = Event::new("Twice", "tests", format!(r#"{{"i":{i}}}"#));
        ferry::outbox::add(&mut pipe, "events", &event);
        ferry::outbox::add(&mut pipe, "events", &event);
        ids.push(event.id);
    }
    let _: Vec<String> = pipe.query_async(&mut conn).await.expect("pipeline");
    let host = InProcessHost::start(env.config());
    env.settled("events", Duration::from_secs(60)).await;
    let recs = records(&mut conn, "records").await;
    let counts = counts(&recs);
    assert_eq!(counts.len(), 200, "every event handled");
    assert!(counts.values().all(|n| *n == 1), "each exactly once: {:?}", counts.values().filter(|n| **n > 1).count());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_read_while_the_first_runs_on_another_host_waits_and_is_acked_as_a_duplicate() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let keys = SubscriberKeys::new("events", "rec");
    let mut a = env.config();
    a.consumer = Some("host-a".into());
    let mut b = env.config();
    b.consumer = Some("host-b".into());
    let host_a = InProcessHost::start(a);
    let host_b = InProcessHost::start(b);
    let mut conn = env.conn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // The first copy is provably running (its run is recorded) when the second is added.
        let event = Event::new("Slow", "tests", format!(r#"{{"i":{i},"act":"sleep","ms":700}}"#));
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("first copy");
        running(&env, &keys, 1).await;
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("second copy");
        ids.push(event.id);
        env.settled("events", Duration::from_secs(30)).await;
    }
    let recs = records(&mut conn, "records").await;
    let counts = counts(&recs);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} handled exactly once");
    }
    assert_eq!(in_flight(&mut conn, &keys).await, 0, "no run left recorded");
    host_a.stop().await;
    host_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_the_source_stream_and_a_replay_of_its_dead_letter_are_handled_once() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let poison = Event::new("Poison", "tests", r#"{"act":"reject"}"#);
    ferry::outbox::publish(&mut conn, "events", &poison).await.expect("publish");
    env.settled("events", Duration::from_secs(20)).await;
    assert_eq!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").len(), 1);
    host.stop_all().await;

    // Fixed, the operator replays the dead letter while a late copy of the same event sits in
    // the source stream: one of them runs, the other is a duplicate.
    let fixed = RECORDER_TOML.replace("[config]\n", "[config]\nignore_acts = \"yes\"\n");
    std::fs::write(env.plugins.path().join("rec.toml"), fixed).expect("write");
    ferry::outbox::publish(&mut conn, "events", &poison).await.expect("late copy");
    let n = ferry::dlq::replay(&mut conn, "rec", &ferry::dlq::Selection::All, |_, _| {}).await.expect("replay");
    assert_eq!(n, 1);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    env.settled("events", Duration::from_secs(20)).await;
    let recs = records(&mut conn, "records").await;
    assert_eq!(counts(&recs).get(&poison.id), Some(&1), "handled once: {recs:?}");
    assert!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").is_empty());
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedupe_record_is_pruned_on_every_path() {
    let env = Env::new();
    // Every event publishes a follow-up (the recorder's record): the scripted settle path.
    env.add_plugin("rec", fixtures::RECORDER, &recorder("dedupe_window = \"1s\""));
    let keys = SubscriberKeys::new("events", "rec");
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    for i in 0..200 {
        publish(&mut conn, "events", "Early", &format!(r#"{{"i":{i}}}"#)).await;
    }
    env.settled("events", Duration::from_secs(30)).await;
    let before: u64 = redis::cmd("ZCARD").arg(&keys.seen).query_async(&mut conn).await.expect("zcard");
    assert!(before > 0, "handled events are recorded");
    // Once the window has passed, the next settle prunes what fell out of it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..5 {
        publish(&mut conn, "events", "Late", &format!(r#"{{"i":{i}}}"#)).await;
    }
    env.settled("events", Duration::from_secs(30)).await;
    let after: u64 = redis::cmd("ZCARD").arg(&keys.seen).query_async(&mut conn).await.expect("zcard");
    assert!(after <= 5, "only the last window's events are kept: {after}");
    host.stop().await;
}

/// Wait until `n` records exist for partition key `key`; returns their `i` values in order.
async fn order_of(env: &Env, key: &str, n: usize) -> Vec<u64> {
    let conn = env.conn().await;
    env.wait_for(&format!("{n} records of key {key}"), Duration::from_secs(30), || {
        let mut conn = conn.clone();
        async move {
            let recs = records(&mut conn, "records").await;
            let mine: Vec<u64> = recs
                .iter()
                .filter(|r| r["partitionkey"] == key)
                .filter_map(|r| serde_json::from_str::<Value>(r["data"].as_str()?).ok()?["i"].as_u64())
                .collect();
            (mine.len() >= n).then_some(mine)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_entry_and_a_retry_entry_with_the_same_id_release_their_own_keys() {
    let env = Env::new();
    env.add_plugin("ord", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "ord");
    let mut conn = env.conn().await;
    // Entry 1000-0 in the source stream (key A) and 1000-0 in the retry stream (key B, a
    // holder moved there earlier): read together in one XREADGROUP.
    let mut a = Event::new("Keyed", "tests", r#"{"i":0}"#);
    a.partitionkey = Some("A".into());
    let mut cmd = redis::cmd("XADD");
    cmd.arg("events").arg("1000-0");
    a.write_fields(&mut cmd);
    let _: String = cmd.query_async(&mut conn).await.expect("xadd source");
    let mut b = Event::new("Keyed", "tests", r#"{"i":0}"#);
    b.partitionkey = Some("B".into());
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&keys.retry).arg("1000-0");
    b.write_fields(&mut cmd);
    cmd.arg("_attempt").arg(1).arg("_origin").arg("events/999-0");
    let _: String = cmd.query_async(&mut conn).await.expect("xadd retry");
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(&keys.holds)
        .arg("B")
        .arg("events/999-0")
        .ignore()
        .cmd("HSET")
        .arg(&keys.holders)
        .arg("events/999-0")
        .arg("B")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("hold");
    let host = InProcessHost::start(env.config());
    for i in 1..=3 {
        publish_keyed(&mut conn, "A", &format!(r#"{{"i":{i}}}"#)).await;
        publish_keyed(&mut conn, "B", &format!(r#"{{"i":{i}}}"#)).await;
    }
    assert_eq!(order_of(&env, "A", 4).await, vec![0, 1, 2, 3]);
    assert_eq!(order_of(&env, "B", 4).await, vec![0, 1, 2, 3]);
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_order_off_while_a_key_is_held_releases_it_and_drains_the_parked_in_order() {
    let env = Env::new();
    let ordered = recorder("ordered = true");
    env.add_plugin("ord", fixtures::RECORDER, &ordered);
    let keys = SubscriberKeys::new("events", "ord");
    let mut conn = env.conn().await;
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    // The holder fails until its third attempt; the others park behind it.
    publish_keyed(&mut conn, "K", r#"{"i":0,"act":"retry","until":3,"delay_ms":300}"#).await;
    for i in 1..=3 {
        publish_keyed(&mut conn, "K", &format!(r#"{{"i":{i}}}"#)).await;
    }
    parked(&env, &keys, 3).await;
    host.stop_all().await;
    // Reloaded (here: restarted) with per-key order off while the key is held.
    std::fs::write(env.plugins.path().join("ord.toml"), recorder("ordered = false")).expect("write");
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    assert_eq!(order_of(&env, "K", 4).await, vec![0, 1, 2, 3]);
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_deleted_while_pending_releases_its_key() {
    let env = Env::new();
    // Several workers, so the events behind the holder are read (and parked) while it runs.
    env.add_plugin("ord", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "ord");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = env.config();
    let mut doomed = HostProcess::start(&config, dir.path(), "doomed");
    let mut conn = env.conn().await;
    let holder = publish_keyed(&mut conn, "K", r#"{"i":0,"act":"sleep","ms":4000}"#).await;
    running(&env, &keys, 1).await;
    publish_keyed(&mut conn, "K", r#"{"i":1}"#).await;
    publish_keyed(&mut conn, "K", r#"{"i":2}"#).await;
    parked(&env, &keys, 2).await;
    doomed.kill();
    // A producer's MAXLEN (here: XDEL) removes the holder's entry while it is pending.
    let entries = records_of(&mut conn, "events").await;
    let holder_entry = entries.iter().find(|(_, id)| *id == holder.id).expect("holder entry").0.clone();
    let _: u64 = redis::cmd("XDEL").arg("events").arg(&holder_entry).query_async(&mut conn).await.expect("xdel");
    let host = InProcessHost::start(config);
    assert_eq!(order_of(&env, "K", 2).await, vec![1, 2]);
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

/// (entry id, event id) of every entry of `stream`.
async fn records_of(conn: &mut MultiplexedConnection, stream: &str) -> Vec<(String, String)> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.expect("xrange");
    ferry::consume::read::parse_entries(stream, value)
        .into_iter()
        .map(|e| (e.id.clone(), e.field("id").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()))
        .collect()
}

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
    let letters = dead_letters(&env, "rec").await;
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
async fn an_entry_with_too_many_fields_is_dead_lettered_with_its_reason_and_the_next_flows() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    let huge = Event::new("Huge", "tests", "{}");
    let mut cmd = ferry::outbox::xadd("events", &huge);
    for i in 0..4000 {
        cmd.arg(format!("x{i}")).arg("v");
    }
    let huge_entry: String = cmd.query_async(&mut conn).await.expect("xadd");
    let next = publish(&mut conn, "events", "Next", "{}").await;
    let host = InProcessHost::start(env.config());
    let recs = env.records_at_least(1, Duration::from_secs(20)).await;
    assert_eq!(recs[0]["id"], next.id.as_str());
    env.settled("events", Duration::from_secs(20)).await;
    let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].kind, "invalid-event");
    assert!(letters[0].reason.contains("at most 1000 fields"), "{}", letters[0].reason);
    assert_eq!(letters[0].event_id, huge.id, "the dead letter names the event");
    let still: Vec<(String, String)> = records_of(&mut conn, "events").await;
    assert!(still.iter().any(|(entry, _)| *entry == huge_entry), "the entry itself stays in its stream");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_key_of_the_wrong_type_leaves_the_event_pending_not_lost() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("[limits]\ndeadline = \"1s\""));
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    let _: () = redis::cmd("SET").arg(&keys.dlq).arg("not a stream").query_async(&mut conn).await.expect("set");
    let mut config = env.config();
    config.read.claim_idle = Some(Duration::from_millis(1500));
    let host = InProcessHost::start(config);
    let poison = publish(&mut conn, "events", "Poison", r#"{"act":"reject"}"#).await;
    // The settle is refused before the ack: the entry stays pending (and its run is over).
    env.wait_for("the refused settle", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let summary: (u64, Option<String>, Option<String>, redis::Value) =
                redis::cmd("XPENDING").arg("events").arg("rec").query_async(&mut conn).await.ok()?;
            (summary.0 == 1 && in_flight(&mut conn, &keys).await == 0).then_some(())
        }
    })
    .await;
    let _: () = redis::cmd("DEL").arg(&keys.dlq).query_async(&mut conn).await.expect("del");
    // Once the key is fixed, the entry is taken over again and dead-lettered.
    let letters = dead_letters(&env, "rec").await;
    assert_eq!(letters[0].event_id, poison.id);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_to_a_key_of_the_wrong_type_dead_letters_the_event_instead_of_losing_it() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    let _: () = redis::cmd("SET").arg("records").arg("not a stream").query_async(&mut conn).await.expect("set");
    let host = InProcessHost::start(env.config());
    let event = publish(&mut conn, "events", "Any", "{}").await;
    let letters = dead_letters(&env, "rec").await;
    assert_eq!(letters[0].event_id, event.id);
    assert!(letters[0].reason.contains("another type"), "{}", letters[0].reason);
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
async fn trimming_by_length_does_not_read_payloads_out_of_redis() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let payload = format!(r#"{{"blob":"{}"}}"#, "p".repeat(10_000));
    let mut pipe = redis::pipe();
    for _ in 0..2000 {
        ferry::outbox::add(&mut pipe, "events", &Event::new("Big", "tests", payload.clone()));
    }
    let _: Vec<String> = pipe.query_async(&mut conn).await.expect("xadd");
    // A group that has read and settled everything: the floor is the end of the stream.
    let _: () =
        redis::cmd("XGROUP").arg("CREATE").arg("events").arg("g").arg("$").query_async(&mut conn).await.expect("group");
    let out_bytes = |info: String| -> u64 {
        info.lines().find_map(|l| l.strip_prefix("total_net_output_bytes:")?.trim().parse().ok()).unwrap_or(0)
    };
    let before: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.expect("info");
    let retention = RetentionConfig { max_len: Some(1000), max_age: None, interval: Duration::from_secs(1) };
    let removed = ferry::consume::trim::trim(&mut conn, "events", Some(&retention), ferry::consume::now_ms())
        .await
        .expect("trim");
    let after: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.expect("info");
    assert_eq!(removed, 1000);
    let sent = out_bytes(after) - out_bytes(before);
    assert!(sent < 100_000, "trimming sent {sent} bytes; the kept entries alone are 10 MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_dead_letters_twice_at_once_publishes_each_once() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    for i in 0..50 {
        publish(&mut conn, "events", "Poison", &format!(r#"{{"i":{i},"act":"reject"}}"#)).await;
    }
    env.settled("events", Duration::from_secs(30)).await;
    host.stop_all().await;
    let keys = SubscriberKeys::new("events", "rec");
    let mut other = env.conn().await;
    let all = ferry::dlq::Selection::All;
    let (a, b) = tokio::join!(
        ferry::dlq::replay(&mut conn, "rec", &all, |_, _| {}),
        ferry::dlq::replay(&mut other, "rec", &all, |_, _| {})
    );
    assert_eq!(a.expect("replay") + b.expect("replay"), 50, "each dead letter replayed by exactly one call");
    let len: u64 = redis::cmd("XLEN").arg(&keys.retry).query_async(&mut conn).await.expect("xlen");
    assert_eq!(len, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_duplicate_that_becomes_the_holder_hands_its_key_on() {
    let env = Env::new();
    env.add_plugin("ord", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "ord");
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    // The holder runs; an event and its copy (a relay or outbox retry) park behind it, then
    // one more event. The copy reaches the retry stream after the event was handled: it is a
    // duplicate that holds the key, and must pass it on.
    publish_keyed(&mut conn, "K", r#"{"i":0,"act":"sleep","ms":500}"#).await;
    running(&env, &keys, 1).await;
    let mut twice = Event::new("Keyed", "tests", r#"{"i":1}"#);
    twice.partitionkey = Some("K".into());
    ferry::outbox::publish(&mut conn, "events", &twice).await.expect("first copy");
    ferry::outbox::publish(&mut conn, "events", &twice).await.expect("second copy");
    publish_keyed(&mut conn, "K", r#"{"i":2}"#).await;
    assert_eq!(order_of(&env, "K", 3).await, vec![0, 1, 2]);
    env.settled("events", Duration::from_secs(30)).await;
    assert_eq!(order_of(&env, "K", 3).await.len(), 3, "the copy was not handled");
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_of_fresh_duplicate_dead_replayed_waiting_and_spent_events_decides_each_as_alone() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &RECORDER_TOML.replace("[retry]\n", "[retry]\nmax_deliveries = 3\n"));
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    let now = ferry::consume::now_ms();
    let event = |name: &str| Event::new("Mixed", "tests", format!(r#"{{"name":"{name}"}}"#));
    let fresh: Vec<Event> = (0..3).map(|i| event(&format!("fresh{i}"))).collect();
    let (twice, handled, dead, elsewhere, spent, replayed) =
        (event("twice"), event("handled"), event("dead"), event("elsewhere"), event("spent"), event("replayed"));
    // Everything is in Redis before the host starts, so its first read (500 entries, one
    // worker) holds every case at once, interleaved.
    let mut spent_entry = String::new();
    for e in [&fresh[0], &handled, &twice, &dead, &elsewhere, &fresh[1], &spent, &twice, &fresh[2]] {
        let id = ferry::outbox::publish(&mut conn, "events", e).await.expect("publish");
        if e.id == spent.id {
            spent_entry = id;
        }
    }
    // An operator's replay of a dead letter: it runs although its id is recorded as dead.
    let mut fields = ferry::consume::settle::event_fields(&replayed);
    fields.extend([(b"_attempt".to_vec(), b"1".to_vec()), (b"_origin".to_vec(), b"events/1-1".to_vec())]);
    fields.push((b"_replay".to_vec(), b"1".to_vec()));
    let _: String =
        redis::cmd("XADD").arg(&keys.retry).arg("*").arg(&fields).query_async(&mut conn).await.expect("xadd");
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(&keys.seen)
        .arg(now)
        .arg(&handled.id)
        .ignore()
        .cmd("ZADD")
        .arg(&keys.dead)
        .arg(now)
        .arg(&dead.id)
        .arg(now)
        .arg(&replayed.id)
        .ignore()
        // Being handled on another host right now (its lease runs for a minute).
        .cmd("HSET")
        .arg(&keys.inflight)
        .arg(&elsewhere.id)
        .arg(format!("{}:1:events/9-9", now + 60_000))
        .ignore()
        // Started three times without a verdict, its lease long gone: the crash budget is spent.
        .cmd("HSET")
        .arg(&keys.inflight)
        .arg(&spent.id)
        .arg(format!("0:3:events/{spent_entry}"))
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("seed");

    let host = InProcessHost::start(env.config());
    let recs = env.records_at_least(5, Duration::from_secs(30)).await;
    let letters = dead_letters(&env, "rec").await;
    assert_eq!(
        (letters.len(), letters[0].event_id.as_str(), letters[0].kind.as_str()),
        (1, spent.id.as_str(), "crash")
    );
    // Everything but the event handled elsewhere is settled; it waits in this host's hands.
    env.pending("events", 1, Duration::from_secs(30)).await;
    assert_eq!(in_flight(&mut conn, &keys).await, 1, "only the other host's run is recorded");
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(&keys.seen)
        .arg(ferry::consume::now_ms())
        .arg(&elsewhere.id)
        .ignore()
        .cmd("HDEL")
        .arg(&keys.inflight)
        .arg(&elsewhere.id)
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("the other host settles");
    env.settled("events", Duration::from_secs(30)).await;
    let counts = counts(&records(&mut conn, "records").await);
    let expected: HashMap<String, usize> = fresh.iter().chain([&twice, &replayed]).map(|e| (e.id.clone(), 1)).collect();
    assert_eq!(counts, expected, "each fresh event, the copied one and the replay ran once; no other ran: {recs:?}");
    assert_eq!(in_flight(&mut conn, &keys).await, 0, "no run left recorded");
    assert_eq!(ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq").len(), 1);
    host.stop().await;
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

/// Per-key order across hosts: host A reads the first event of a key and dies before it
/// dispatches it (a SIGKILL between the read and the dispatch); host B reads the second. The
/// second must not run before the first, which runs once A's entry is taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_read_by_a_host_that_died_before_dispatching_it_still_runs_before_later_events_of_its_key() {
    let env = Env::new();
    env.add_plugin("ord", fixtures::RECORDER, &recorder("ordered = true\n[limits]\ndeadline = \"1s\""));
    let keys = SubscriberKeys::new("events", "ord");
    let mut conn = env.conn().await;
    ferry::consume::ensure_groups(&mut conn, &keys, "ord", ferry::config::Start::Beginning).await.expect("groups");
    publish_keyed(&mut conn, "K", r#"{"i":0}"#).await;
    publish_keyed(&mut conn, "K", r#"{"i":1}"#).await;
    // Host A's read, exactly as a host reads new entries under per-key order; then host A is
    // gone. (With a plain XREADGROUP here, as hosts read before, the order came out [1, 0].)
    let read =
        ferry::consume::reader::read_fresh_ordered(&mut conn, &keys, "ord", "host-a", 1).await.expect("host A reads");
    let ferry::consume::read::Fresh::Read(read) = read else { panic!("host A read nothing") };
    assert_eq!(read.len(), 1, "host A read the first event");
    let mut config = env.config();
    config.read.claim_idle = Some(Duration::from_secs(2));
    let host = InProcessHost::start(config);
    assert_eq!(order_of(&env, "K", 2).await, vec![0, 1], "the key's events ran in stream order");
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

/// An event parked behind its key as it was read has not been checked against the
/// subscriptions yet: when its turn comes an unwanted one is skipped (not run) and hands the
/// key on to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwanted_event_parked_as_it_was_read_is_skipped_in_its_turn_and_hands_the_key_on() {
    use ferry::consume::read::Fresh;
    use ferry::consume::reader::read_fresh_ordered;
    let env = Env::new();
    let toml = format!(
        "subscriptions = [{{ type = \"Keyed\" }}]\n{}",
        recorder("ordered = true\n[limits]\ndeadline = \"1s\"")
    );
    env.add_plugin("ord", fixtures::RECORDER, &toml);
    let keys = SubscriberKeys::new("events", "ord");
    let mut conn = env.conn().await;
    ferry::consume::ensure_groups(&mut conn, &keys, "ord", ferry::config::Start::Beginning).await.expect("groups");
    publish_keyed(&mut conn, "K", r#"{"i":0}"#).await;
    let mut other = Event::new("Other", "tests", r#"{"i":1}"#);
    other.partitionkey = Some("K".into());
    ferry::outbox::publish(&mut conn, "events", &other).await.expect("publish");
    publish_keyed(&mut conn, "K", r#"{"i":2}"#).await;
    // A host that is gone read all three: the first took the key, the others were parked.
    let Fresh::Read(read) = read_fresh_ordered(&mut conn, &keys, "ord", "gone", 10).await.expect("read") else {
        panic!("nothing read")
    };
    assert_eq!(read.len(), 1, "only the key's first event is handed to the reader");
    let parked: i64 = redis::cmd("GET").arg(&keys.parked_count).query_async(&mut conn).await.expect("GET");
    assert_eq!(parked, 2, "the other two wait behind the key");
    let mut config = env.config();
    config.read.claim_idle = Some(Duration::from_secs(2));
    let host = InProcessHost::start(config);
    assert_eq!(order_of(&env, "K", 2).await, vec![0, 2]);
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    let recs = records(&mut conn, "records").await;
    assert!(recs.iter().all(|r| r["type"] != "Other"), "the unwanted event did not run: {recs:?}");
    host.stop().await;
}
