//! Duplicates at the edges: copies of an event that arrive together, in one pipeline or on
//! two hosts, a copy beside a replay of its dead letter, the bounded dedupe record, and one
//! read that mixes fresh, duplicate, dead, replayed, waiting and spent events.

use std::collections::HashMap;
use std::time::Duration;

use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;

use super::{in_flight, running};
use crate::support::{Env, InProcessHost, RECORDER_TOML, counts, publish, recorder, records, wait_dead_letters};

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
    let letters = wait_dead_letters(&env, "rec", 1).await;
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
