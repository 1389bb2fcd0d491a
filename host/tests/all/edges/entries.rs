//! Entries and keys at the edges: an over-large entry, dead-letter and follow-up keys of the
//! wrong type, and trimming that never reads payloads out of Redis.

use std::time::Duration;

use ferry::config::RetentionConfig;
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;

use super::{in_flight, records_of};
use crate::support::{Env, InProcessHost, RECORDER_TOML, publish, recorder, wait_dead_letters};

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
    let letters = wait_dead_letters(&env, "rec", 1).await;
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
    let letters = wait_dead_letters(&env, "rec", 1).await;
    assert_eq!(letters[0].event_id, event.id);
    assert!(letters[0].reason.contains("another type"), "{}", letters[0].reason);
    host.stop().await;
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
