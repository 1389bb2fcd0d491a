//! Issue 30: under `durability = "replicated"`, a shard whose primary died and stays dead (its
//! replica promoted, so the shard has no replica left). A real local cluster; the primary is
//! SIGKILLed and never restarted; a new replica is added later (`CLUSTER MEET` + `CLUSTER
//! REPLICATE`). Each `durability_on_missing_replica` policy: nothing lost, nothing handled
//! twice, the shard's stream keys marked in `ferry status`, `/readyz` degraded, the metrics and
//! one log line per change while it has no replica, and recovery once it has one again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry::connection::{Conn, Durability, OnMissingReplica};
use ferry::event::Event;
use ferry::keys;
use ferry_test_fixtures as fixtures;
use serde_json::Value;

use crate::cluster::{ClusterEnv, records};
use crate::support::{HostProcess, cluster_recorder, ferry, free_port};

const PARTITIONS: u32 = 6;

/// Publish events `from..to` (keyed `key-{i % 30}`) to the partitions, each retried until a
/// primary took it; returns (event id, partition) pairs.
async fn publish(conn: &mut Conn, from: usize, to: usize) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for i in from..to {
        let mut event = Event::new("Lossy", "tests", format!(r#"{{"i":{i}}}"#));
        event.partitionkey = Some(format!("key-{}", i % 30));
        let stream = ferry::outbox::route("events", PARTITIONS, &event);
        while ferry::outbox::publish(conn, &stream, &event).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p = (0..PARTITIONS).find(|&p| keys::partition("events", p) == stream).expect("a partition");
        out.push((event.id, p));
    }
    out
}

/// Per handled event, the ids of the follow-ups that recorded it (two ids: handled twice).
async fn handled(conn: &mut Conn) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for (follow_up, r) in records(conn, "records").await {
        out.entry(r["id"].as_str().unwrap_or_default().to_string()).or_default().insert(follow_up);
    }
    out
}

/// The test's world: the cluster, two `ferry run` hosts with admin endpoints.
struct World {
    world: ClusterEnv,
    hosts: Vec<HostProcess>,
    admin: Vec<String>,
    _dir: tempfile::TempDir,
}

impl World {
    fn start(policy: OnMissingReplica) -> Self {
        let world = ClusterEnv::new();
        world.env.add_plugin("rec", fixtures::RECORDER, &cluster_recorder("records", ""));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = world.config();
        config.durability = Durability::Replicated;
        config.durability_timeout = Duration::from_millis(300);
        config.durability_on_missing_replica = policy;
        config.read.claim_idle = Some(Duration::from_secs(3));
        config
            .streams
            .insert("events".into(), ferry::config::StreamConfig { partitions: PARTITIONS, ..Default::default() });
        let mut admin = Vec::new();
        let hosts = (0..2)
            .map(|n| {
                let mut config = config.clone();
                config.consumer = Some(format!("host-{n}"));
                config.admin.listen = format!("127.0.0.1:{}", free_port());
                admin.push(config.admin.listen.clone());
                HostProcess::start(&config, dir.path(), &format!("host-{n}"))
            })
            .collect();
        Self { world, hosts, admin, _dir: dir }
    }

    /// A partition whose primary does not serve `records` (so the follow-ups' own stream keeps
    /// its replica), and every partition on that primary: the ones that lose their replica.
    fn victim(&self) -> (u32, HashSet<u32>) {
        let primary = |key: &str| self.world.cluster.primary_of(keys::slot(key));
        let records = primary("records");
        let p = (0..PARTITIONS).find(|&p| primary(&keys::partition("events", p)) != records).expect("a partition");
        let on = primary(&keys::partition("events", p));
        (p, (0..PARTITIONS).filter(|&q| primary(&keys::partition("events", q)) == on).collect())
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let log = h.log();
            out.push_str(&format!(
                "--- {}\n{}\n",
                h.log.display(),
                log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }

    /// `/readyz` of every host: (status line or "ready", body).
    async fn readiness(&self) -> Vec<String> {
        let mut out = Vec::new();
        for addr in &self.admin {
            out.push(match ferry::status::http_get(addr, "/readyz").await {
                Ok(body) => body,
                Err(e) => format!("{e:#}"),
            });
        }
        out
    }

    /// The value of the metric line starting with `series` on host `n` (0 when absent).
    async fn metric(&self, n: usize, series: &str) -> f64 {
        let text = ferry::status::http_get(&self.admin[n], "/metrics").await.unwrap_or_default();
        text.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    /// `ferry status --cluster --json`, by stream key (group `rec`).
    async fn status(&self) -> HashMap<String, Value> {
        let seeds = self.world.cluster.seeds();
        let (ok, out, err) =
            tokio::task::spawn_blocking(move || ferry(&["status", "--cluster", "--redis", &seeds, "--json"]))
                .await
                .expect("status");
        assert!(ok.success(), "ferry status: {err}");
        let rows: Value = serde_json::from_str(&out).expect("status json");
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["group"] == "rec")
            .map(|g| (g["stream"].as_str().unwrap_or_default().to_string(), g.clone()))
            .collect()
    }

    fn log_lines(&self, needle: &str) -> Vec<usize> {
        self.hosts.iter().map(|h| h.log().matches(needle).count()).collect()
    }
}

/// Poll `check` every 100 ms until it holds, or fail with `what` after `secs`.
async fn until<F, Fut>(world: &World, what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}\n{}", world.dump());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until every event of `ids` is handled, or fail with `what` after `secs`.
async fn until_handled(world: &World, conn: &Conn, what: &str, secs: u64, ids: &[String]) {
    until(world, what, secs, || {
        let mut conn = conn.clone();
        async move {
            let h = handled(&mut conn).await;
            ids.iter().all(|id| h.contains_key(id))
        }
    })
    .await;
}

/// Where [`lose_a_replica`] leaves the test.
struct Lost {
    w: World,
    conn: Conn,
    /// Every event published, (id, partition).
    sent: Vec<(String, u32)>,
    /// How many of them were published before the kill.
    before: usize,
    /// The node that serves the shard alone.
    promoted: usize,
    /// The partitions on that shard.
    lost: HashSet<u32>,
}

/// The scenario up to the point where the shard has no replica: events handled, the primary
/// of a partition killed for good, more events published.
async fn lose_a_replica(policy: OnMissingReplica) -> Lost {
    let mut w = World::start(policy);
    let mut conn = w.world.conn().await;
    let mut sent = publish(&mut conn, 0, 120).await;
    let n = sent.len();
    until(&w, "the events before the kill to be handled", 90, || {
        let mut conn = conn.clone();
        async move { handled(&mut conn).await.len() >= n }
    })
    .await;
    let (p, lost) = w.victim();
    let slot = keys::slot(&keys::partition("events", p));
    let (killed, promoted) =
        tokio::task::block_in_place(|| w.world.cluster.kill_primary(slot, Duration::from_secs(60))).expect("kill");
    eprintln!("killed node {killed} (never restarted); node {promoted} serves partitions {lost:?} alone");
    let before = sent.len();
    sent.extend(publish(&mut conn, 120, 360).await);
    Lost { w, conn, sent, before, promoted, lost }
}

/// While the shard has no replica: `ferry status` marks its stream keys naming the node,
/// `/readyz` of a host says degraded with the key and node, the metrics count.
async fn signals_present(w: &World, promoted: usize, lost: &HashSet<u32>, gauge: &str) {
    let node = format!("127.0.0.1:{}", w.world.cluster.nodes[promoted].port());
    let keys: Vec<String> = lost.iter().map(|&p| keys::partition("events", p)).collect();
    let status = w.status().await;
    for key in &keys {
        let row = status.get(key).unwrap_or_else(|| panic!("no status row for {key}: {status:?}"));
        assert_eq!(row["node"], node.as_str(), "{key}: {row}");
        assert_eq!(row["replicas"], 0, "{key}: {row}");
        let why = row["degraded"].as_str().unwrap_or_default();
        assert!(why.contains("no replica") && why.contains(&node), "{key} is marked: {row}");
    }
    for (key, row) in status.iter().filter(|(k, _)| !keys.contains(k)) {
        assert!(row["degraded"].is_null(), "{key} keeps its replica: {row}");
    }
    let (node2, keys2) = (node.clone(), keys.clone());
    until(w, "a host's /readyz to say degraded, naming the stream key and the node", 30, || {
        let (node, keys) = (node2.clone(), keys2.clone());
        async move {
            w.readiness().await.iter().any(|r| {
                r.contains("503")
                    && r.contains("degraded")
                    && r.contains(&node)
                    && keys.iter().any(|k| r.contains(k.as_str()))
            })
        }
    })
    .await;
    until(w, &format!("{gauge} and the time without a replica to be counted"), 30, || async move {
        let mut counted = false;
        for n in 0..w.hosts.len() {
            counted |= w.metric(n, gauge).await > 0.0 && w.metric(n, "ferry_missing_replica_seconds_total").await > 0.0;
        }
        counted
    })
    .await;
    // One log line per stream key entering the state, per host, whatever the number of writes.
    for (n, count) in w.log_lines("no replica confirms writes to").into_iter().enumerate() {
        assert!(count <= lost.len(), "host-{n} logged the state {count} times for {} keys\n{}", lost.len(), w.dump());
    }
}

/// A replica is added to the promoted primary: every event is handled exactly once, the
/// signals clear, and the dead node is no longer dialled.
async fn recover(mut w: World, mut conn: Conn, sent: &[(String, u32)], promoted: usize) {
    tokio::task::block_in_place(|| w.world.cluster.add_replica(promoted, Duration::from_secs(60)))
        .expect("add a replica");
    let n = sent.len();
    until(&w, "every event to be handled once a replica was added", 90, || {
        let mut conn = conn.clone();
        async move { handled(&mut conn).await.len() >= n }
    })
    .await;
    until(&w, "every host's /readyz to be ready again", 30, || async {
        w.readiness().await.iter().all(|r| r.trim() == "ready")
    })
    .await;
    until(&w, "ferry status to mark nothing", 30, || async {
        w.status().await.values().all(|row| row["degraded"].is_null() && row["replicas"] == 1)
    })
    .await;
    let h = handled(&mut conn).await;
    let lost: Vec<&String> = sent.iter().map(|(id, _)| id).filter(|id| !h.contains_key(*id)).collect();
    let twice = h.values().filter(|ids| ids.len() > 1).count();
    assert!(lost.is_empty(), "lost {}", lost.len());
    assert_eq!(twice, 0, "each event handled once");
    for (n, count) in w.log_lines("a replica confirms writes to").into_iter().enumerate() {
        eprintln!("host-{n}: {count} recovery lines");
    }
}

/// Connections to the dead node stop being retried once it is out of the topology: the
/// count of "Failed to connect" lines from the cluster client stops growing (two samples 3 s
/// apart agree) well within the deadline.
async fn dead_node_not_dialled(w: &World) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let before = w.log_lines("Failed to connect");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = w.log_lines("Failed to connect");
        if before == after {
            eprintln!("the dead node is no longer dialled ({after:?} attempts logged per host)");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node is still being dialled: {before:?} -> {after:?}\n{}",
            w.dump()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_wait_a_shard_without_replica_makes_no_progress_visibly_and_resumes_once_a_replica_is_added() {
    let Lost { w, mut conn, sent, before, promoted, lost } = lose_a_replica(OnMissingReplica::Wait).await;
    // Every partition that kept its replica is consumed; the shard without one is not.
    let elsewhere: Vec<String> = sent.iter().filter(|(_, p)| !lost.contains(p)).map(|(id, _)| id.clone()).collect();
    until_handled(&w, &conn, "the partitions that kept their replica to be consumed", 90, &elsewhere).await;
    signals_present(&w, promoted, &lost, "ferry_writes_waiting_for_replica").await;
    let h = handled(&mut conn).await;
    let waiting = sent[before..].iter().filter(|(_, p)| lost.contains(p)).collect::<Vec<_>>();
    assert!(!waiting.is_empty(), "events were published to the shard without a replica");
    let went_ahead = waiting.iter().filter(|(id, _)| h.contains_key(id)).count();
    assert_eq!(went_ahead, 0, "nothing unconfirmed: no follow-up of the shard without a replica was forwarded");
    // The settlers of the partitions that kept their replica have been idle for longer than
    // their one-second recheck while the other shard has none (the interleaving that once
    // stalled them: a healthy partition's settler took the lost key's unconfirmed writes for
    // its own and waited on them forever). New events to those partitions are still consumed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent = sent;
    let later = publish(&mut conn, 360, 420).await;
    let later_elsewhere: Vec<String> =
        later.iter().filter(|(_, p)| !lost.contains(p)).map(|(id, _)| id.clone()).collect();
    sent.extend(later);
    let what = "events published later to the partitions that kept their replica to be consumed";
    until_handled(&w, &conn, what, 60, &later_elsewhere).await;
    dead_node_not_dialled(&w).await;
    recover(w, conn, &sent, promoted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_continue_a_shard_without_replica_keeps_consuming_counts_unconfirmed_writes_and_clears_once_a_replica_is_added()
 {
    let Lost { w, conn, sent, promoted, lost, .. } = lose_a_replica(OnMissingReplica::Continue).await;
    let n = sent.len();
    until(&w, "every event to be handled without a replica", 90, || {
        let mut conn = conn.clone();
        async move { handled(&mut conn).await.len() >= n }
    })
    .await;
    signals_present(&w, promoted, &lost, "ferry_writes_unconfirmed_total").await;
    dead_node_not_dialled(&w).await;
    recover(w, conn, &sent, promoted).await;
}
