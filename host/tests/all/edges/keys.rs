//! Partition keys that never stay held: a source and a retry entry with the same id, order
//! turned off while a key is held, a holder deleted while pending, a parked duplicate that
//! becomes the holder, a host that died between read and dispatch, an unwanted parked event.

use std::time::Duration;

use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;
use serde_json::Value;

use super::{records_of, running};
use crate::support::{Env, HostProcess, InProcessHost, no_key_held, parked, publish_keyed, recorder, records};

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
