//! Delivery promises a review of `consume/` found broken (issue 22), each reproduced as it was
//! found: a replayed dead letter parked behind its key, leases of events waiting for a worker,
//! crashes charged to events that never ran, settings a reload did not reach, entries that
//! held a key forever, forged metadata on source streams, a follow-up that stalled
//! forwarding, a host whose clock runs ahead, and the smaller ones (give-backs, forwarders
//! never reaped, status reading payloads).
//!
//! Each test forces the interleaving it asserts (a key provably held, an event provably
//! queued behind a busy worker, a settle provably made by the skewed host).

use std::time::Duration;

use ferry::consume::scripts;
use ferry::consume::settle::{Routing, Settlement};
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;
use redis::aio::MultiplexedConnection;

use crate::support::{
    Env, HostProcess, InProcessHost, RECORDER_TOML, counts, dead_letters, no_key_held, parked, publish, publish_keyed,
    recorder, records, wait_dead_letters,
};

/// `XADD events * <event's fields> <extra fields>`: an entry as a producer wrote it.
async fn add_raw(conn: &mut MultiplexedConnection, event: &Event, extra: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg("events").arg("*");
    event.write_fields(&mut cmd);
    for (k, v) in extra {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(conn).await.expect("xadd")
}

/// The in-flight marker of `event_id` (`expiry:starts:owner`), if any.
async fn marker(conn: &mut MultiplexedConnection, keys: &SubscriberKeys, event_id: &str) -> Option<String> {
    redis::cmd("HGET").arg(&keys.inflight).arg(event_id).query_async(conn).await.expect("HGET")
}

fn starts_of(marker: &Option<String>) -> u64 {
    marker.as_deref().and_then(|m| m.split(':').nth(1)?.parse().ok()).unwrap_or(0)
}

// 1. A replayed dead letter parked behind its key.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_parked_behind_its_held_key_runs_when_the_key_is_handed_on() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "rec");
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    let p = publish_keyed(&mut conn, "k", r#"{"act":"reject"}"#).await;
    let first = wait_dead_letters(&env, "rec", 1).await;
    assert_eq!(first[0].event_id, p.id);
    // Q holds k through two failed attempts, 3 s apart.
    publish_keyed(&mut conn, "k", r#"{"act":"retry","until":3,"delay_ms":3000}"#).await;
    env.wait_for("Q's first retry to be scheduled", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let n: u64 = redis::cmd("ZCARD").arg(&keys.schedule).query_async(&mut conn).await.ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    let replayed = ferry::dlq::replay(&mut conn, "rec", &ferry::dlq::Selection::Ids(vec![p.id.clone()]), |_, _| {})
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    // The replay is parked behind Q (k is held): its copy must keep the replay marker.
    parked(&env, &keys, 1).await;
    let recs = env.records_at_least(1, Duration::from_secs(60)).await;
    assert_eq!(recs[0]["data"].as_str().map(|d| d.contains("retry")), Some(true), "Q handled");
    env.settled("events", Duration::from_secs(30)).await;
    // The replay ran: the recorder rejected P again, into a new dead letter.
    let letters = dead_letters(&mut conn, "rec").await;
    assert_eq!(letters.len(), 1, "the replayed event ran and was rejected again: {letters:?}");
    assert_eq!(letters[0].event_id, p.id);
    assert_ne!(letters[0].id, first[0].id, "a new dead letter, from the replay's run");
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_that_fails_and_is_retried_keeps_its_replay_marker() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = InProcessHost::start(env.config());
    let mut conn = env.conn().await;
    // Dead-lettered after its three attempts (each asks to retry).
    let p = publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":5}"#).await;
    let first = wait_dead_letters(&env, "rec", 1).await;
    ferry::dlq::replay(&mut conn, "rec", &ferry::dlq::Selection::Ids(vec![p.id.clone()]), |_, _| {})
        .await
        .expect("replay");
    // The replay fails again and is retried: the retry must still be a replay, or the dead
    // set (its id is there) acks it as a duplicate and it vanishes.
    env.wait_for("the replay's second dead letter", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let first = first[0].id.clone();
        async move {
            let letters = dead_letters(&mut conn, "rec").await;
            letters.iter().find(|l| l.id != first && l.attempts == "3").map(|_| ())
        }
    })
    .await;
    host.stop().await;
}

// 2. Leases of events waiting for a worker; crashes charged only to running events.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_waiting_for_a_worker_keeps_its_lease_so_a_copy_waits_instead_of_running() {
    let env = Env::new();
    // A deadline below the 2 s lease (`claim_idle` must exceed it).
    env.add_plugin("rec", fixtures::RECORDER, &recorder("concurrency = 1\n[limits]\ndeadline = \"1500ms\""));
    let mut conn = env.conn().await;
    let mut events = Vec::new();
    for i in 0..20 {
        events.push(publish(&mut conn, "events", "Slow", &format!(r#"{{"i":{i},"act":"sleep","ms":800}}"#)).await);
    }
    let mut a = env.config();
    a.consumer = Some("host-a".into());
    // A lease of 2 s, and one read of all 20: A reads again only once 10 have started, so
    // until then a new entry can only go to B.
    a.read.claim_idle = Some(Duration::from_secs(2));
    a.read.count = 20;
    let mut b = a.clone();
    b.consumer = Some("host-b".into());
    let host_a = InProcessHost::start(a);
    env.pending("events", 20, Duration::from_secs(60)).await;
    let host_b = InProcessHost::start(b);
    env.wait_for("host B reading", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move {
            let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.ok()?;
            groups.iter().any(|g| g.consumers.iter().any(|c| c.name == "host-b")).then_some(())
        }
    })
    .await;
    // Three handled: the last event has waited longer than its 2 s lease in A's hands.
    let recs = env.records_at_least(3, Duration::from_secs(60)).await;
    assert!(recs.len() < 10, "A has not read again yet ({} handled)", recs.len());
    let last = events.last().expect("events");
    // A copy of it (a producer retrying a publish): read by B, whose worker is free.
    ferry::outbox::publish(&mut conn, "events", last).await.expect("copy");
    env.records_at_least(20, Duration::from_secs(90)).await;
    env.settled("events", Duration::from_secs(60)).await;
    let recs = records(&mut conn, "records").await;
    assert_eq!(counts(&recs).get(&last.id), Some(&1), "the copy waited for the original and was a duplicate");
    host_a.stop().await;
    host_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_a_read_waiting_for_a_worker_charges_only_the_running_event_and_the_next() {
    let env = Env::new();
    // One start without a verdict is the whole crash budget.
    let toml = "start = \"beginning\"\npublish_streams = [\"records\"]\nconcurrency = 1\n[config]\n\
                record_to = \"records\"\n[retry]\nmax_attempts = 1\nmax_deliveries = 1\n";
    env.add_plugin("rec", fixtures::RECORDER, toml);
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    let mut events = Vec::new();
    for i in 0..6 {
        events.push(publish(&mut conn, "events", "Slow", &format!(r#"{{"i":{i},"act":"sleep","ms":4000}}"#)).await);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = env.config();
    let mut host = HostProcess::start(&config, dir.path(), "host");
    // The first event runs; the other five were read and wait for the one worker (the next
    // one's start is recorded ahead, so it is charged too: at most `concurrency` ahead).
    env.wait_for("the first event running, the rest read", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        let first = events[0].id.clone();
        async move {
            let running = starts_of(&marker(&mut conn, &keys, &first).await) == 1;
            let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.ok()?;
            (running && groups.iter().map(|g| g.pending).sum::<u64>() == 6).then_some(())
        }
    })
    .await;
    host.kill();
    let host = HostProcess::start(&config, dir.path(), "host");
    let recs = env.records_at_least(4, Duration::from_secs(90)).await;
    env.settled("events", Duration::from_secs(60)).await;
    let handled: Vec<&str> = recs.iter().filter_map(|r| r["id"].as_str()).collect();
    for e in &events[2..] {
        assert!(handled.contains(&e.id.as_str()), "{} never ran before the crash: it is handled", e.id);
    }
    let letters = dead_letters(&mut conn, "rec").await;
    assert!(letters.len() <= 2, "the running event and at most one ahead spent their budget: {letters:?}");
    assert!(letters.iter().all(|l| l.kind == "crash"));
    assert!(letters.iter().any(|l| l.event_id == events[0].id), "the running one did: {letters:?}");
    drop(host);
}

// 3. Every setting a stage reads comes from the active version.

async fn reload(host: &ferry::host::Host, env: &Env, toml: &str) {
    std::fs::write(env.plugins.path().join("rec.toml"), toml).expect("writing rec.toml");
    host.apply(&env.plugins.path().join("rec.wasm")).await;
    let status = host.plugins().await.into_iter().find(|p| p.name == "rec").expect("rec");
    assert_eq!((status.state.as_str(), status.error), ("running", None), "the new settings are running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_dedupe_window_reaches_the_settler() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("dedupe_window = \"0s\""));
    let keys = SubscriberKeys::new("events", "rec");
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "A", "{}").await;
    env.records_at_least(1, Duration::from_secs(30)).await;
    let seen: u64 = redis::cmd("ZCARD").arg(&keys.seen).query_async(&mut conn).await.expect("zcard");
    assert_eq!(seen, 0, "dedupe off: nothing recorded");
    reload(&host, &env, &recorder("dedupe_window = \"1h\"")).await;
    let b = publish(&mut conn, "events", "B", "{}").await;
    // Plain acks and scripted settles (a follow-up: the record) both record under the new window.
    env.records_at_least(2, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(30)).await;
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg(&keys.seen).arg(&b.id).query_async(&mut conn).await.expect("zscore");
    assert!(score.is_some(), "the event handled after the reload is recorded for dedupe");
    // And a copy of it is now a duplicate.
    ferry::outbox::publish(&mut conn, "events", &b).await.expect("copy");
    env.settled("events", Duration::from_secs(30)).await;
    assert_eq!(counts(&records(&mut conn, "records").await).get(&b.id), Some(&1));
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_concurrency_reaches_the_running_pipeline() {
    let env = Env::new();
    // A deadline above the sleeps: the four runs overlap however slowly they start.
    let toml = |n: u32| recorder(&format!("concurrency = {n}\n[limits]\ndeadline = \"300s\""));
    env.add_plugin("rec", fixtures::RECORDER, &toml(1));
    let keys = SubscriberKeys::new("events", "rec");
    let mut config = env.config();
    config.shutdown_grace = Duration::from_millis(200);
    let host = ferry::host::Host::start(config).await.expect("host");
    let mut conn = env.conn().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(publish(&mut conn, "events", "Slow", &format!(r#"{{"i":{i},"act":"sleep","ms":120000}}"#)).await.id);
    }
    let running = |conn: &MultiplexedConnection, want: u64| {
        let (mut conn, keys, ids) = (conn.clone(), keys.clone(), ids.clone());
        async move {
            let mut running = 0;
            for id in &ids {
                running += u64::from(starts_of(&marker(&mut conn, &keys, id).await) == 1);
            }
            (running >= want).then_some(())
        }
    };
    // Under concurrency 1 the first runs (for two minutes) and the other three wait for its
    // permit, already taken from the stream into this host's hands.
    env.wait_for("the first event running", Duration::from_secs(60), || running(&conn, 1)).await;
    reload(&host, &env, &toml(4)).await;
    // The waiting three start at once: four have a started run in the in-flight hash (one
    // worker could never have four: each run lasts two minutes and its marker goes with its
    // settle, and a start is recorded at most one event ahead of a free worker).
    env.wait_for("four events running at once", Duration::from_secs(60), || running(&conn, 4)).await;
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_retry_policy_order_limits_and_grants_take_effect() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let keys = SubscriberKeys::new("events", "rec");
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    // Retry policy: one attempt only, so a failure dead-letters at once.
    let one_attempt = RECORDER_TOML.replace("max_attempts = 3", "max_attempts = 1");
    reload(&host, &env, &one_attempt).await;
    let failing = publish(&mut conn, "events", "Flaky", r#"{"act":"retry"}"#).await;
    let letters = wait_dead_letters(&env, "rec", 1).await;
    assert_eq!((letters[0].event_id.as_str(), letters[0].attempts.as_str()), (failing.id.as_str(), "1"));
    // Grants: a stream granted by the reload can be published to.
    let granted = recorder("[limits]\ndeadline = \"1s\"")
        .replace("publish_streams = [\"records\"]", "publish_streams = [\"records\", \"forbidden\"]");
    reload(&host, &env, &format!("ordered = true\n{granted}")).await;
    publish(&mut conn, "events", "Sneaky", r#"{"act":"publish_forbidden"}"#).await;
    let recs = env.records_at_least(1, Duration::from_secs(30)).await;
    assert_eq!(recs[0]["note"], "publish: allowed");
    // Limits: the new 1 s deadline stops a 5 s sleeper.
    let sleeper = publish(&mut conn, "events", "Slow", r#"{"act":"sleep","ms":5000}"#).await;
    let letters = wait_dead_letters(&env, "rec", 2).await;
    let timed_out = letters.iter().find(|l| l.event_id == sleeper.id).expect("the sleeper's dead letter");
    assert_eq!(timed_out.kind, "deadline");
    // Order: with `ordered` on, a second event of a held key is parked behind the first.
    publish_keyed(&mut conn, "k", r#"{"act":"slow","ms":600}"#).await;
    publish_keyed(&mut conn, "k", "{}").await;
    parked(&env, &keys, 1).await;
    env.settled("events", Duration::from_secs(60)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop_all().await;
}

// 4. Malformed entries that held a key forever; forged metadata.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_entry_with_too_many_fields_is_dead_lettered_and_the_next_event_of_its_key_flows() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    publish_keyed(&mut conn, "k", r#"{"act":"sleep","ms":1500}"#).await;
    let host = InProcessHost::start(env.config());
    env.wait_for("k held", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let held: u64 = redis::cmd("HLEN").arg(&keys.holds).query_async(&mut conn).await.ok()?;
            (held == 1).then_some(())
        }
    })
    .await;
    let mut big = Event::new("Keyed", "tests", "{}");
    big.partitionkey = Some("k".into());
    let extra: Vec<(String, String)> = (0..4000).map(|i| (format!("x{i}"), "v".to_string())).collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    add_raw(&mut conn, &big, &extra).await;
    let next = publish_keyed(&mut conn, "k", r#"{"after":"big"}"#).await;
    let recs = env.records_at_least(2, Duration::from_secs(60)).await;
    assert!(recs.iter().any(|r| r["id"] == next.id.as_str()), "the next event of k flows");
    let letters = wait_dead_letters(&env, "rec", 1).await;
    assert_eq!((letters[0].event_id.as_str(), letters[0].kind.as_str()), (big.id.as_str(), "invalid-event"));
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_with_a_duplicated_field_is_refused_as_invalid_and_holds_no_key() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    let mut twice = Event::new("Keyed", "tests", "{}");
    twice.partitionkey = Some("a".into());
    add_raw(&mut conn, &twice, &[("partitionkey", "b")]).await;
    let next = publish_keyed(&mut conn, "b", "{}").await;
    let host = InProcessHost::start(env.config());
    let recs = env.records_at_least(1, Duration::from_secs(30)).await;
    assert_eq!(recs[0]["id"], next.id.as_str(), "the next event of b flows");
    let letters = wait_dead_letters(&env, "rec", 1).await;
    assert_eq!(letters[0].kind, "invalid-event");
    assert!(letters[0].reason.contains("partitionkey"), "{}", letters[0].reason);
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_origin_on_a_source_entry_neither_strands_its_key_nor_touches_another_hold() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &recorder("ordered = true\nconcurrency = 4"));
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    let holder =
        Event { partitionkey: Some("k".into()), ..Event::new("Keyed", "tests", r#"{"act":"sleep","ms":1500}"#) };
    let holder_entry = add_raw(&mut conn, &holder, &[]).await;
    let forged = Event { partitionkey: Some("k2".into()), ..Event::new("Keyed", "tests", "{}") };
    add_raw(&mut conn, &forged, &[("_origin", &format!("events/{holder_entry}")), ("_attempt", "7")]).await;
    let next = publish_keyed(&mut conn, "k2", "{}").await;
    let host = InProcessHost::start(env.config());
    let recs = env.records_at_least(3, Duration::from_secs(30)).await;
    let c = counts(&recs);
    for e in [&holder.id, &forged.id, &next.id] {
        assert_eq!(c.get(e), Some(&1), "{e} handled once");
    }
    let forged_rec = recs.iter().find(|r| r["id"] == forged.id.as_str()).expect("forged");
    assert_eq!(forged_rec["attempt"], 1, "a source entry's `_attempt` means nothing");
    env.settled("events", Duration::from_secs(30)).await;
    no_key_held(&mut conn, &keys).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_replay_marker_on_a_source_entry_does_not_skip_the_dead_set() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    let host = InProcessHost::start(env.config());
    let doomed = publish(&mut conn, "events", "Doomed", r#"{"act":"reject"}"#).await;
    wait_dead_letters(&env, "rec", 1).await;
    add_raw(&mut conn, &doomed, &[("_replay", "1")]).await;
    let after = publish(&mut conn, "events", "After", "{}").await;
    let recs = env.records_at_least(1, Duration::from_secs(30)).await;
    assert_eq!(recs[0]["id"], after.id.as_str());
    env.settled("events", Duration::from_secs(30)).await;
    assert_eq!(dead_letters(&mut conn, "rec").await.len(), 1, "the forged replay was a duplicate of the dead event");
    host.stop().await;
}

// 6. One clock.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_clock_runs_ahead_does_not_prune_other_hosts_dedupe_records() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    let mut b = env.config();
    b.consumer = Some("host-b".into());
    let host_b = InProcessHost::start(b);
    let first = publish(&mut conn, "events", "First", "{}").await;
    env.records_at_least(1, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(30)).await;
    host_b.stop().await;
    // Host A's clock runs two hours ahead (dedupe window: 1 h); it settles one event.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = env.config();
    a.consumer = Some("host-a".into());
    let host_a = HostProcess::start_with(&a, dir.path(), "host-a", &crate::support::faketime("+2h"));
    publish(&mut conn, "events", "Second", "{}").await;
    env.records_at_least(2, Duration::from_secs(60)).await;
    env.settled("events", Duration::from_secs(30)).await;
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg(&keys.seen).arg(&first.id).query_async(&mut conn).await.expect("zscore");
    assert!(score.is_some(), "the other host's dedupe record survives the skewed host's settle\n{}", host_a.log());
    // A copy of the first event is still a duplicate.
    ferry::outbox::publish(&mut conn, "events", &first).await.expect("copy");
    env.settled("events", Duration::from_secs(30)).await;
    assert_eq!(counts(&records(&mut conn, "records").await).get(&first.id), Some(&1));
    drop(host_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_clock_runs_ahead_does_not_take_over_a_live_run() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = env.conn().await;
    // A run of the event live on another host: its lease ends 20 s from now on Redis's clock.
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.expect("time");
    let event = Event::new("Live", "tests", "{}");
    let lease_end = secs * 1000 + 20_000;
    let _: () = redis::cmd("HSET")
        .arg(&keys.inflight)
        .arg(&event.id)
        .arg(format!("{lease_end}:1:events/0-1"))
        .query_async(&mut conn)
        .await
        .expect("hset");
    // A copy of it, read by a host whose clock is an hour ahead (past any lease).
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("copy");
    let dir = tempfile::tempdir().expect("temp dir");
    let host_a = HostProcess::start_with(&env.config(), dir.path(), "host-a", &crate::support::faketime("+1h"));
    env.pending("events", 1, Duration::from_secs(60)).await;
    // Read: from now on it may only wait. Give a wrong verdict time to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (now, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.expect("time");
    assert!(now * 1000 < lease_end, "the check ran while the lease was live");
    assert!(records(&mut conn, "records").await.is_empty(), "the copy ran beside the live run\n{}", host_a.log());
    // Once the lease ends (nobody pushes it), the copy runs: once.
    let recs = env.records_at_least(1, Duration::from_secs(60)).await;
    assert_eq!(counts(&recs).get(&event.id), Some(&1));
    drop(host_a);
}

// 7. The smaller ones.

fn give_back(keys: &SubscriberKeys, event_id: &str) -> Settlement {
    Settlement::give_back(keys.stream.clone(), "1-0".into(), event_id.into(), "events/1-0".into(), true)
}

async fn settle_one(conn: &mut MultiplexedConnection, keys: &SubscriberKeys, s: Settlement) {
    let none = std::collections::BTreeMap::new();
    let routing = Routing { cluster: false, keys, partitions: &none };
    ferry::consume::settle::settle(conn, routing, "rec", 3_600_000, 20_000, &[s]).await.expect("settle");
}

/// A live run of event `e` (owner `events/1-0`) with two starts without a verdict.
async fn a_live_run_started_twice(env: &Env) -> (MultiplexedConnection, SubscriberKeys) {
    let mut conn = env.conn().await;
    let keys = SubscriberKeys::new("events", "rec");
    let expiry = ferry::consume::now_ms() + 20_000;
    let marker = format!("{expiry}:2:events/1-0");
    let _: () = redis::cmd("HSET").arg(&keys.inflight).arg("e").arg(marker).query_async(&mut conn).await.expect("hset");
    (conn, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_back_run_keeps_its_crash_count_through_the_sweep() {
    let env = Env::new();
    let (mut conn, keys) = a_live_run_started_twice(&env).await;
    settle_one(&mut conn, &keys, give_back(&keys, "e")).await;
    // The sweep drops only markers whose lease ended an hour ago.
    let before = (ferry::consume::now_ms() - 3_600_000).to_string();
    let sweep = scripts::evalsha(&scripts::SWEEP, &[&keys.inflight], &["0".to_string(), before, "200".to_string()]);
    let _: String = scripts::run(&mut conn, &sweep).await.expect("sweep");
    let m = marker(&mut conn, &keys, "e").await;
    assert_eq!(starts_of(&m), 1, "one run given back, one still counted: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_back_the_same_run_twice_takes_one_run_off_the_budget() {
    let env = Env::new();
    let (mut conn, keys) = a_live_run_started_twice(&env).await;
    // A settle re-sent after its WAIT failed applies the same give-back again.
    settle_one(&mut conn, &keys, give_back(&keys, "e")).await;
    settle_one(&mut conn, &keys, give_back(&keys, "e")).await;
    let m = marker(&mut conn, &keys, "e").await;
    assert_eq!(starts_of(&m), 1, "the second give-back of the same run changes nothing: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_undelivered_entries_without_reading_their_payloads() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("events")
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    let payload = format!(r#"{{"blob":"{}"}}"#, "p".repeat(10_000));
    let mut pipe = redis::pipe();
    for _ in 0..2000 {
        ferry::outbox::add(&mut pipe, "events", &Event::new("Big", "tests", payload.clone()));
    }
    let ids: Vec<String> = pipe.query_async(&mut conn).await.expect("xadd");
    // A deletion after the group's position: Redis reports the lag as null.
    let _: u64 = redis::cmd("XDEL").arg("events").arg(&ids[1000]).query_async(&mut conn).await.expect("xdel");
    let out_bytes = |info: String| -> u64 {
        info.lines().find_map(|l| l.strip_prefix("total_net_output_bytes:")?.trim().parse().ok()).unwrap_or(0)
    };
    let before: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.expect("info");
    let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.expect("status");
    let after: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.expect("info");
    assert_eq!(groups[0].lag, Some(1999), "every entry left is undelivered");
    let sent = out_bytes(after) - out_bytes(before);
    assert!(sent < 200_000, "status sent {sent} bytes; the entries are 20 MB");
}

// 5. A follow-up that cannot be forwarded; forwarders that are gone.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_to_a_key_of_the_wrong_type_is_set_aside_and_the_rest_are_forwarded() {
    let world = crate::cluster::ClusterEnv::new();
    let (bad, good) = ("bad-target", "records");
    assert!(
        ferry::keys::slot(bad) != ferry::keys::slot("events") && ferry::keys::slot(good) != ferry::keys::slot("events"),
        "both follow-ups cross slots"
    );
    // Each event publishes a FollowUp to `bad` (a string key), then its record to `good`.
    let toml = format!(
        "start = \"beginning\"\npublish_streams = [\"{good}\", \"{bad}\"]\n[config]\nrecord_to = \"{good}\"\nfollow_to = \"{bad}\"\n"
    );
    world.env.add_plugin("rec", fixtures::RECORDER, &toml);
    let mut conn = world.conn().await;
    let _: () = redis::cmd("SET").arg(bad).arg("not a stream").query_async(&mut conn).await.expect("set");
    let host = InProcessHost::start(world.config());
    let mut sent = Vec::new();
    for i in 0..5 {
        let event = Event::new("Follow", "tests", format!(r#"{{"i":{i},"act":"follow","until":0}}"#));
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
        sent.push(event.id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let recs = crate::cluster::records(&mut conn, good).await;
        if recs.len() >= sent.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the records were never forwarded: {} of 5", recs.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The five follow-ups to the string key are set aside with their reason.
    let keys = SubscriberKeys::new("events", "rec");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stuck = loop {
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(&keys.forward_dead)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange");
        let stuck = ferry::consume::read::parse_entries(&keys.forward_dead, value);
        if stuck.len() >= 5 || std::time::Instant::now() > deadline {
            break stuck;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stuck.len(), 5, "each undeliverable follow-up set aside");
    let reason = String::from_utf8_lossy(stuck[0].field("_reason").expect("reason")).into_owned();
    assert!(reason.contains("WRONGTYPE"), "{reason}");
    assert_eq!(stuck[0].field("_to"), Some(bad.as_bytes()));
    let forward_left: u64 = redis::cmd("XLEN").arg(&keys.forward).query_async(&mut conn).await.expect("xlen");
    assert_eq!(forward_left, 0, "nothing left in the forward key");
    let status = ferry::status::collect(&mut conn, &["events".to_string()]).await.expect("status");
    assert_eq!(status.iter().map(|g| g.unforwarded).sum::<u64>(), 5, "status shows them");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarders_of_hosts_that_are_gone_are_reaped() {
    let world = crate::cluster::ClusterEnv::new();
    // A deadline below the short `claim_idle` (which must exceed it).
    world.env.add_plugin("rec", fixtures::RECORDER, &recorder("[limits]\ndeadline = \"200ms\""));
    let keys = SubscriberKeys::new("events", "rec");
    let mut conn = world.conn().await;
    // A forwarder of a host that died long ago, with nothing pending.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.forward)
        .arg("ferry-forward")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&keys.forward)
        .arg("ferry-forward")
        .arg("gone-host/rec")
        .query_async(&mut conn)
        .await
        .expect("consumer");
    let mut config = world.config();
    config.read.claim_idle = Some(Duration::from_millis(500));
    let host = InProcessHost::start(config);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let value: redis::Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&keys.forward)
            .arg("ferry-forward")
            .query_async(&mut conn)
            .await
            .expect("xinfo");
        let names: Vec<String> = match value {
            redis::Value::Array(items) => items
                .into_iter()
                .filter_map(|c| ferry::consume::read::pair_str(&ferry::consume::read::pairs(c), "name"))
                .collect(),
            _ => Vec::new(),
        };
        if !names.iter().any(|n| n == "gone-host/rec") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the dead forwarder was never reaped: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.stop().await;
}
