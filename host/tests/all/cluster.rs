//! Redis Cluster: a real local cluster (3 primaries, 3 replicas) per test. Hosts in cluster
//! mode read, settle and forward follow-ups across slots; the CLI scans every primary; host
//! processes are killed and a primary fails over while events flow.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry::connection::{Conn, Target};
use ferry::event::Event;
use ferry::keys;
use ferry_test_fixtures as fixtures;
use ferry_test_kit::redis_server::RedisCluster;
use serde_json::Value;

use crate::support::{Env, HostProcess, InProcessHost, RECORDER_TOML, ferry};

/// A test's world on a cluster: the cluster and a plugin directory.
pub struct ClusterEnv {
    pub cluster: RedisCluster,
    pub env: Env,
}

impl ClusterEnv {
    pub fn new() -> Self {
        let cluster = RedisCluster::start().expect("starting a local Redis Cluster");
        // The single-node Redis of `Env` is not used; the plugin and cache dirs are.
        Self { cluster, env: Env::new() }
    }

    pub fn config(&self) -> ferry::config::Config {
        let mut config = self.env.config();
        config.redis = self.cluster.seeds();
        config.cluster = true;
        config
    }

    pub async fn conn(&self) -> Conn {
        ferry::connection::connect(&Target::new(&self.cluster.seeds(), true)).await.expect("cluster connection").1
    }
}

/// The records in `stream`, read through the cluster, with the id of the follow-up event
/// that carried each.
pub async fn records(conn: &mut Conn, stream: &str) -> Vec<(String, Value)> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.unwrap_or(redis::Value::Nil);
    ferry::consume::read::parse_entries(stream, value)
        .into_iter()
        .filter_map(|e| {
            let id = String::from_utf8_lossy(e.field("id")?).into_owned();
            Some((id, serde_json::from_slice(e.field("data")?).ok()?))
        })
        .collect()
}

/// Wait until `stream` holds records of `n` distinct handled events; returns, per handled
/// event, the ids of the follow-ups that recorded it. A forwarder that dies after its `XADD`
/// re-sends the same follow-up (same id: consumers' dedupe absorbs it); a second handling
/// would show as a second id.
async fn wait_records(conn: &mut Conn, stream: &str, n: usize, timeout: Duration) -> HashMap<String, HashSet<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut handled: HashMap<String, HashSet<String>> = HashMap::new();
        for (follow_up, r) in records(conn, stream).await {
            handled.entry(r["id"].as_str().unwrap_or_default().to_string()).or_default().insert(follow_up);
        }
        if handled.len() >= n {
            return handled;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {n} records in {stream}, have {}", handled.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_a_cluster_handles_events_and_forwards_follow_ups_to_other_slots() {
    let world = ClusterEnv::new();
    assert_ne!(keys::slot("events"), keys::slot("records"), "the follow-ups cross slots");
    world.env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = InProcessHost::start(world.config());
    let mut conn = world.conn().await;
    let mut sent = Vec::new();
    for i in 0..300 {
        let event = Event::new("Clustered", "tests", format!(r#"{{"i":{i}}}"#));
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
        sent.push(event.id);
    }
    let counts = wait_records(&mut conn, "records", sent.len(), Duration::from_secs(60)).await;
    assert!(sent.iter().all(|id| counts.get(id).map(HashSet::len) == Some(1)), "each event once");
    let forward_left: u64 = redis::cmd("XLEN")
        .arg(keys::SubscriberKeys::new("events", "rec").forward)
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(forward_left, 0, "every follow-up forwarded and removed");

    // The CLI in cluster mode: publish, status and dlq scan every primary.
    let seeds = world.cluster.seeds();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        let publish = ferry(&["publish", "--cluster", "--redis", &seeds, "--type", "Late", "--data", "{}"]);
        let status = ferry(&["status", "--cluster", "--redis", &seeds, "--json"]);
        let dlq = ferry(&["dlq", "list", "--cluster", "--redis", &seeds]);
        (
            publish.0.success() && status.0.success() && dlq.0.success(),
            status.1,
            format!("{}{}{}", publish.2, status.2, dlq.2),
        )
    })
    .await
    .expect("cli");
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).expect("status json");
    assert!(
        status.as_array().is_some_and(|g| g.iter().any(|g| g["group"] == "rec" && g["stream"] == "events")),
        "{out}"
    );
    wait_records(&mut conn, "records", sent.len() + 1, Duration::from_secs(30)).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_a_cluster_lose_nothing_through_host_kills_and_a_failover() {
    let world = ClusterEnv::new();
    world.env.add_plugin("rec", fixtures::RECORDER, &format!("{RECORDER_TOML}\n[limits]\ndeadline = \"1s\"\n"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = world.config();
    config.read.claim_idle = Some(Duration::from_secs(2));
    let mut hosts: Vec<HostProcess> = (0..3)
        .map(|i| {
            config.consumer = Some(format!("host-{i}"));
            HostProcess::start(&config, dir.path(), &format!("host-{i}"))
        })
        .collect();
    let mut conn = world.conn().await;
    let total = 3000;
    let seeds = world.cluster.seeds();
    let producer = tokio::spawn(async move {
        let mut conn = ferry::connection::connect(&Target::new(&seeds, true)).await.expect("conn").1;
        let mut ids = Vec::new();
        for i in 0..total {
            let event = Event::new("Load", "tests", format!(r#"{{"i":{i}}}"#));
            // A publish refused during the failover is retried: the producer's own at-least-once.
            while ferry::outbox::publish(&mut conn, "events", &event).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids.push(event.id);
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ids
    });
    // Faults while the producer runs: two host kills (restarted), then a coordinated failover
    // of the primary that serves the stream.
    for (round, host) in hosts.iter_mut().take(2).enumerate() {
        wait_records(&mut conn, "records", 300 * (round + 1), Duration::from_secs(60)).await;
        host.kill();
        config.consumer = Some(format!("host-{round}"));
        *host = HostProcess::start(&config, dir.path(), &format!("host-{round}"));
    }
    let primary = world.cluster.primary_of(keys::slot("events")).expect("a primary serves events");
    let replica = world.cluster.replica_of(primary).expect("it has a replica");
    let answer = world.cluster.cli(replica, &["CLUSTER", "FAILOVER"]);
    assert!(answer.contains("OK"), "CLUSTER FAILOVER: {answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.cluster.primary_of(keys::slot("events")) != Some(replica) {
        assert!(Instant::now() < deadline, "the replica did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = producer.await.expect("producer");
    let counts = wait_records(&mut conn, "records", sent.len(), Duration::from_secs(120)).await;
    let lost: Vec<&String> = sent.iter().filter(|id| !counts.contains_key(*id)).collect();
    let twice = counts.values().filter(|ids| ids.len() > 1).count();
    let resent = records(&mut conn, "records").await.len() - counts.values().map(HashSet::len).sum::<usize>();
    println!(
        "cluster: {} events, 2 host kills, 1 failover: {} lost, {twice} handled twice, {resent} follow-ups re-sent by a forwarder",
        sent.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost {}", lost.len());
    assert_eq!(twice, 0, "each event handled once: its follow-up is written with its ack");
    drop(hosts);
}

/// Publish `n` events per key (`k0`…`k9`) to partitioned `events` through `conn`, in order
/// per key; returns their ids.
async fn publish_partitioned<C: redis::aio::ConnectionLike>(conn: &mut C, partitions: u32, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        for k in 0..10 {
            let mut event = Event::new("Keyed", "tests", format!(r#"{{"i":{i}}}"#));
            event.partitionkey = Some(format!("k{k}"));
            let key = ferry::outbox::route("events", partitions, &event);
            ferry::outbox::publish(conn, &key, &event).await.expect("publish");
            ids.push(event.id);
        }
    }
    ids
}

fn partitioned(config: &mut ferry::config::Config, partitions: u32) {
    config.streams.insert("events".into(), ferry::config::StreamConfig { partitions, ..Default::default() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_stream_is_read_in_every_partition_with_per_key_order() {
    let env = Env::new();
    env.add_plugin("ord", fixtures::RECORDER, &format!("ordered = true\n{RECORDER_TOML}"));
    let mut config = env.config();
    partitioned(&mut config, 6);
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
    let sent = publish_partitioned(&mut conn, 6, 30).await;
    let used: u64 = {
        let mut n = 0;
        for p in 0..6 {
            let len: u64 =
                redis::cmd("XLEN").arg(keys::partition("events", p)).query_async(&mut conn).await.expect("xlen");
            n += u64::from(len > 0);
        }
        n
    };
    assert!(used >= 3, "keys spread over the partitions ({used} of 6 used)");
    let recs = env.records_at_least(sent.len(), Duration::from_secs(60)).await;
    for k in 0..10 {
        let key = format!("k{k}");
        let order: Vec<u64> = recs
            .iter()
            .filter(|r| r["partitionkey"] == key.as_str())
            .filter_map(|r| serde_json::from_str::<Value>(r["data"].as_str()?).ok()?["i"].as_u64())
            .collect();
        assert_eq!(order, (0..30).collect::<Vec<u64>>(), "key {key} in order");
        let partition = recs.iter().filter(|r| r["partitionkey"] == key.as_str()).map(|r| r["stream"].clone());
        assert_eq!(partition.collect::<HashSet<Value>>().len(), 1, "key {key} lives in one partition");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_partition_count_of_a_stream_with_data_is_refused() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut conn = env.conn().await;
    crate::support::publish(&mut conn, "events", "Before", "{}").await;
    let mut config = env.config();
    partitioned(&mut config, 4);
    let err = ferry::host::Host::start(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("changing it to 4 is refused"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_a_partitioned_stream_on_a_cluster_and_handle_each_event_once() {
    let world = ClusterEnv::new();
    world.env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = world.config();
    partitioned(&mut config, 6);
    config.consumer = Some("host-a".into());
    let a = InProcessHost::start(config.clone());
    config.consumer = Some("host-b".into());
    let b = InProcessHost::start(config);
    let mut conn = world.conn().await;
    let sent = publish_partitioned(&mut conn, 6, 50).await;
    let handled = wait_records(&mut conn, "records", sent.len(), Duration::from_secs(90)).await;
    assert!(sent.iter().all(|id| handled.get(id).map(HashSet::len) == Some(1)), "each event once");
    let nodes: HashSet<Option<usize>> =
        (0..6).map(|p| world.cluster.primary_of(keys::slot(&keys::partition("events", p)))).collect();
    assert!(nodes.len() >= 2, "the partitions live on several primaries: {nodes:?}");

    // `ferry status` shows each partition with its lag and the primary that holds it.
    let seeds = world.cluster.seeds();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || ferry(&["status", "--cluster", "--redis", &seeds, "--json"]))
            .await
            .expect("status");
    assert!(ok.success(), "{err}");
    let status: Value = serde_json::from_str(&out).expect("status json");
    for p in 0..6 {
        let key = keys::partition("events", p);
        let row = status
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == "rec" && g["stream"] == key.as_str()))
            .unwrap_or_else(|| panic!("no status row for {key}: {out}"));
        let primary = world.cluster.primary_of(keys::slot(&key)).expect("a primary");
        let node = format!("127.0.0.1:{}", world.cluster.nodes[primary].port());
        assert_eq!(row["node"], node.as_str(), "{key}'s node: {out}");
        assert_eq!((row["lag"].as_u64(), row["pending"].as_u64()), (Some(0), Some(0)), "{key} drained: {out}");
    }
    a.stop().await;
    b.stop().await;
}
