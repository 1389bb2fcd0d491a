//! Issue 30: under `durability = "replicated"`, a shard whose primary died and stays dead (its
//! replica promoted, so the shard has no replica left). Real local cluster, primary SIGKILLed
//! and never restarted.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry::connection::{Conn, Durability, Target};
use ferry::event::Event;
use ferry::keys;
use ferry_test_fixtures as fixtures;
use serde_json::Value;

use crate::cluster::{ClusterEnv, records};
use crate::support::HostProcess;

const PARTITIONS: u32 = 6;

/// Publish events `from..to` (keyed `key-{i % 30}`) to the partitions, each retried until the
/// primary serving its partition took it.
async fn publish(conn: &mut Conn, from: usize, to: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in from..to {
        let mut event = Event::new("Lossy", "tests", format!(r#"{{"i":{i}}}"#));
        event.partitionkey = Some(format!("key-{}", i % 30));
        let stream = ferry::outbox::route("events", PARTITIONS, &event);
        while ferry::outbox::publish(conn, &stream, &event).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids.push(event.id);
    }
    ids
}

/// Per handled event, the follow-up ids that recorded it.
async fn handled(conn: &mut Conn) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for (follow_up, r) in records(conn, "records").await {
        out.entry(r["id"].as_str().unwrap_or_default().to_string()).or_default().insert(follow_up);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_a_shard_without_replica_stalls() {
    let mut world = ClusterEnv::new();
    let toml = "start = \"beginning\"\nconcurrency = 8\npublish_streams = [\"records\"]\n[config]\nrecord_to = \"records\"\n";
    world.env.add_plugin("rec", fixtures::RECORDER, toml);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = world.config();
    config.durability = Durability::Replicated;
    config.durability_timeout = Duration::from_millis(500);
    config.read.claim_idle = Some(Duration::from_secs(3));
    config.streams.insert("events".into(), ferry::config::StreamConfig { partitions: PARTITIONS });
    let hosts: Vec<HostProcess> = (0..2)
        .map(|n| {
            let mut config = config.clone();
            config.consumer = Some(format!("host-{n}"));
            HostProcess::start(&config, dir.path(), &format!("host-{n}"))
        })
        .collect();
    let mut conn = world.conn().await;
    let mut sent = publish(&mut conn, 0, 300).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled(&mut conn).await.len() < sent.len() {
        assert!(Instant::now() < deadline, "before the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slot = keys::slot(&keys::partition("events", 0));
    let records_primary = world.cluster.primary_of(keys::slot("records"));
    let (killed, promoted) = tokio::task::block_in_place(|| world.cluster.kill_primary(slot, Duration::from_secs(60)))
        .expect("kill");
    eprintln!("killed node {killed}, promoted {promoted}; records on {records_primary:?}");
    let _ = Target::Node(String::new());
    sent.extend(publish(&mut conn, 300, 600).await);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let h = handled(&mut conn).await;
        if h.len() >= sent.len() {
            eprintln!("all handled");
            break;
        }
        if Instant::now() > deadline {
            let status = ferry::status::collect(&mut conn, &(0..PARTITIONS).map(|p| keys::partition("events", p)).collect::<Vec<_>>()).await;
            eprintln!("status: {status:#?}");
            for h in &hosts {
                let log = h.log();
                eprintln!("--- {}: {} lines, {} 'Failed to connect', {} 'no replica'\n{}", h.log.display(), log.lines().count(),
                    log.matches("Failed to connect").count(), log.matches("no replica").count(),
                    log.lines().rev().take(40).collect::<Vec<_>>().join("\n"));
            }
            panic!("handled {} of {}", h.len(), sent.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _: Value = Value::Null;
    drop(hosts);
}
