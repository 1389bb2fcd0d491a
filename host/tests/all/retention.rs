//! Retention under load: trimming keeps up with any inflow the host can consume, never goes
//! below the safe floor, and says which group holds it back.

use std::time::{Duration, Instant};

use ferry::config::RetentionConfig;
use ferry_test_fixtures as fixtures;

use crate::support::{Env, InProcessHost, RECORDER_TOML};

/// Add `n` small events to `stream` in pipelines of 1,000, paced to `per_sec` (as fast as
/// Redis takes them when it cannot keep up: the pace is a ceiling, not a promise).
async fn feed(conn: &mut redis::aio::MultiplexedConnection, stream: &str, n: usize, per_sec: usize) {
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for i in sent..(sent + 1000).min(n) {
            let event = ferry::event::Event::new("Fed", "tests", format!(r#"{{"i":{i}}}"#));
            ferry::outbox::add(&mut pipe, stream, &event);
            pipe.ignore();
        }
        pipe.query_async::<()>(conn).await.expect("xadd");
        sent = (sent + 1000).min(n);
        let due = started + Duration::from_secs_f64(sent as f64 / per_sec as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query_async(conn).await.expect("xlen")
}

async fn group_exists(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> bool {
    let groups: redis::Value =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await.unwrap_or(redis::Value::Nil);
    let redis::Value::Array(groups) = groups else { return false };
    groups.into_iter().any(|g| {
        ferry::consume::read::pair_str(&ferry::consume::read::pairs(g), "name").as_deref() == Some(group)
    })
}

/// 60,000 entries that no group needs (the subscriber's group starts at the end) are six old
/// passes' worth (10,000 per pass): the first pass now removes them all. Four intervals from
/// the moment the group exists leave the old trimmer at 20,000+ entries whatever the speed of
/// the machine (it cannot remove more than 10,000 per pass, and runs at most once per interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_a_burst_larger_than_one_old_pass_within_a_few_intervals() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &RECORDER_TOML.replace("start = \"beginning\"", "start = \"new\""));
    let mut conn = env.conn().await;
    // 20,000 events/s for three seconds, before the subscriber's group exists.
    feed(&mut conn, "events", 60_000, 20_000).await;
    let interval = Duration::from_secs(1);
    let mut config = env.config();
    config.retention = Some(RetentionConfig { max_len: Some(1000), max_age: None, interval });
    let host = InProcessHost::start(config);
    env.wait_for("the subscriber's group", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { group_exists(&mut conn, "events", "rec").await.then_some(()) }
    })
    .await;
    env.wait_for("the stream back at max_len", interval * 4, || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn, "events").await <= 1000).then_some(()) }
    })
    .await;
    assert_eq!(xlen(&mut conn, "events").await, 1000, "exactly max_len is kept: nobody needs more, max_len wants that many");
    host.stop().await;
}
