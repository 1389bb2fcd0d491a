//! Recovery: taking over a dead host's entries, removing dead consumers, safe trimming, and
//! the chaos run (SIGKILL, restart, repeat).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ferry::config::RetentionConfig;
use ferry_test_fixtures as fixtures;

use crate::support::{Env, HostProcess, InProcessHost, RECORDER_TOML, by_subscriber, publish, records};

async fn consumers(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> Vec<String> {
    let status = ferry::status::collect(conn, &[stream.to_string()]).await.expect("status");
    status.into_iter().filter(|g| g.group == group).flat_map(|g| g.consumers).map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_host_takes_over_a_dead_hosts_entries_and_removes_the_dead_consumer() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &format!("{RECORDER_TOML}\n[limits]\ndeadline = \"3s\"\n"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = env.config();
    config.read.claim_idle = Some(Duration::from_millis(3500));
    config.consumer = Some("doomed".into());
    let mut doomed = HostProcess::start(&config, dir.path(), "doomed");
    let mut conn = env.conn().await;
    let slow = publish(&mut conn, "events", "Slow", r#"{"act":"slow","ms":1500}"#).await;
    env.pending("events", 1, Duration::from_secs(20)).await;
    doomed.kill();

    config.consumer = Some("survivor".into());
    let survivor = InProcessHost::start(config);
    let recs = env.records_at_least(1, Duration::from_secs(20)).await;
    assert_eq!(recs[0]["id"], slow.id.as_str());
    // The dead host's run ended without a verdict: it is counted against the crash budget
    // (`max_deliveries`), not as an attempt.
    assert_eq!(recs[0]["attempt"], 1, "a host's death is not the event's failed attempt");
    env.wait_for("the dead consumer to be removed", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move {
            let names = consumers(&mut conn, "events", "rec").await;
            (!names.contains(&"doomed".to_string()) && names.contains(&"survivor".to_string())).then_some(())
        }
    })
    .await;
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_trims_entries_a_group_still_needs() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    config.retention = Some(RetentionConfig { max_len: Some(10), max_age: None, interval: Duration::from_millis(50) });
    let mut conn = env.conn().await;
    // A group of a plugin that is not running (removed, or another team's): its events wait.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("events")
        .arg("laggard")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    let host = InProcessHost::start(config);
    for i in 0..100 {
        publish(&mut conn, "events", "Kept", &format!(r#"{{"i":{i}}}"#)).await;
    }
    publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":2}"#).await;
    env.records_at_least(101, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let len: u64 = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.expect("xlen");
    assert_eq!(len, 101, "nothing trimmed while the laggard has read nothing");

    // The laggard reads 60 and settles the first 40: 20 pending, 41 undelivered.
    let value: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("laggard")
        .arg("l1")
        .arg("COUNT")
        .arg(60)
        .arg("STREAMS")
        .arg("events")
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("read");
    let read = ferry::consume::read::parse_read_reply(value);
    let acked: Vec<&str> = read[..40].iter().map(|e| e.id.as_str()).collect();
    let _: i64 = redis::cmd("XACK").arg("events").arg("laggard").arg(&acked).query_async(&mut conn).await.expect("ack");
    env.wait_for("trimming down to the laggard's floor", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let len: u64 = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.ok()?;
            (len == 61).then_some(())
        }
    })
    .await;
    let value: redis::Value =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let left: Vec<String> = ferry::consume::read::parse_entries("events", value).into_iter().map(|e| e.id).collect();
    assert_eq!(left.first(), Some(&read[40].id), "the oldest pending entry is kept");
    let retry_len: u64 = redis::cmd("XLEN").arg("ferry:retry:{events}:rec").query_async(&mut conn).await.expect("xlen");
    assert_eq!(retry_len, 0, "settled retries are trimmed from the retry stream");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_and_restart_loses_nothing() {
    let env = Env::new();
    // claim_idle (2s) must exceed the deadline.
    let limits = "\n[limits]\ndeadline = \"1s\"\n";
    let steady_toml = RECORDER_TOML.replace("[config]\n", "[config]\nignore_acts = \"yes\"\n");
    env.add_plugin("steady", fixtures::RECORDER, &format!("{steady_toml}{limits}"));
    env.add_plugin("flaky", fixtures::RECORDER, &format!("{RECORDER_TOML}{limits}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = env.config();
    config.read.claim_idle = Some(Duration::from_secs(2));
    let total = 3000usize;
    let url = env.redis.url();
    // A producer publishes steadily while the host is killed and restarted.
    let producer = tokio::spawn(async move {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let client = redis::Client::open(url).expect("url");
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.expect("conn");
        let mut ids = Vec::new();
        for i in 0..total {
            // For `flaky`: every 7th event fails once; every 97th is rejected (dead-lettered).
            let act = if i % 97 == 0 {
                r#","act":"reject""#
            } else if i % 7 == 0 {
                r#","act":"retry","until":2"#
            } else {
                ""
            };
            ids.push(publish(&mut conn, "events", "Chaos", &format!(r#"{{"i":{i}{act}}}"#)).await.id);
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ids
    });
    let mut kills = 0;
    for round in 0..8u64 {
        let mut host = HostProcess::start(&config, dir.path(), "host");
        tokio::time::sleep(Duration::from_millis(300 + (round * 211) % 600)).await;
        host.kill();
        kills += 1;
    }
    let sent = producer.await.expect("producer");
    let host = HostProcess::start(&config, dir.path(), "host");
    let mut conn = env.conn().await;
    env.settled("events", Duration::from_secs(90)).await;

    let recs = records(&mut conn, "records").await;
    let letters = ferry::dlq::list(&mut conn, None, 10_000).await.expect("dlq");
    let mut report = Vec::new();
    for sub in ["steady", "flaky"] {
        let handled: Vec<String> =
            by_subscriber(&recs, sub).iter().filter_map(|r| r["id"].as_str().map(String::from)).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &handled {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let duplicates = counts.values().filter(|n| **n > 1).count();
        // Handler runs whose ack died with the host: delivered again, handled again (the
        // at-least-once duplicates); for `steady` every attempt above 1 is one of those.
        let redelivered = by_subscriber(&recs, sub).iter().filter(|r| r["attempt"].as_u64() > Some(1)).count();
        let dead: HashSet<&str> = letters.iter().filter(|d| d.subscriber == sub).map(|d| d.event_id.as_str()).collect();
        let lost: Vec<&String> =
            sent.iter().filter(|id| !counts.contains_key(id.as_str()) && !dead.contains(id.as_str())).collect();
        report.push(format!(
            "{sub}: {} handled, {} dead-lettered, {duplicates} duplicate records, {redelivered} handled on a later attempt, {} lost",
            counts.len(),
            dead.len(),
            lost.len()
        ));
        assert!(lost.is_empty(), "{sub} lost {} events, e.g. {:?}\n{}", lost.len(), lost.first(), host.log());
        assert_eq!(duplicates, 0, "{sub}: records are written atomically with the ack");
        let expected_dead = if sub == "flaky" { total.div_ceil(97) } else { 0 };
        assert_eq!(dead.len(), expected_dead, "{sub}: only the rejected events are dead letters");
    }
    println!("chaos: {kills} SIGKILLs; {}", report.join("; "));
}
