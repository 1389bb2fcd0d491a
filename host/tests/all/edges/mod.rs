//! Delivery at the edges: duplicates that arrive together, bounded dedupe records, partition
//! keys that never stay held, crashes that are not the event's fault, live work that is
//! never taken over, slow events that do not hold back fast ones, and the smaller holes
//! (over-large entries, keys of the wrong type, silent consumers, trimming, replays).
//!
//! Each test forces the interleaving it asserts (an event provably in flight, two copies in
//! one pipeline, a holder deleted while pending) instead of hoping for it.
//!
//! One file per behaviour: [`duplicates`], partition [`keys`], [`hosts`] (crashes, live work,
//! silent consumers), odd [`entries`] and keys; the waits they share are here.

mod duplicates;
mod entries;
mod hosts;
mod keys;

use std::time::Duration;

use ferry::keys::SubscriberKeys;
use redis::aio::MultiplexedConnection;

use crate::support::Env;

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

/// (entry id, event id) of every entry of `stream`.
async fn records_of(conn: &mut MultiplexedConnection, stream: &str) -> Vec<(String, String)> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.expect("xrange");
    ferry::consume::read::parse_entries(stream, value)
        .into_iter()
        .map(|e| (e.id.clone(), e.field("id").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()))
        .collect()
}
