//! Handler state under faults (issue 25 §4), with the counter fixture
//! (`tests/guests/counter`): an attempt stopped at its deadline leaves no write; the count is
//! exact through SIGKILLs of the host and a Redis restart, with two hosts incrementing one key
//! 10,000 times, on a Redis Cluster with a partitioned stream (the partition key is the state
//! key), and under `durability = "replicated"` a handled event's state is on a replica.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ferry::connection::Conn;
use ferry::event::Event;
use ferry::keys;
use ferry_test_fixtures as fixtures;
use ferry_test_kit::redis_server::RedisServer;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::cluster::ClusterEnv;
use crate::replication::{redis_cli, replicate};
use crate::support::{Env, HostProcess, records};

/// The counter with state granted, recording into `records`, retrying fast.
const COUNTER_TOML: &str = r#"
start = "beginning"
state = true
publish_streams = ["records"]
[config]
record_to = "records"
[retry]
max_attempts = 3
initial_delay = "20ms"
multiplier = 2.0
max_delay = "200ms"
jitter = 0.0
"#;

/// The committed value of the counter's `key` in its state hash on `stream`.
async fn committed<C: redis::aio::ConnectionLike>(conn: &mut C, stream: &str, key: &str) -> Option<String> {
    redis::cmd("HGET").arg(keys::state(stream, "counter")).arg(format!("={key}")).query_async(conn).await.expect("hget")
}

fn counted(i: usize, key: &str) -> Event {
    let mut e = Event::new("Count", "tests", format!(r#"{{"act":"none","i":{i}}}"#));
    e.partitionkey = Some(key.into());
    e
}

/// Publish `n` counter events to `stream`, keyed `k0`…`k9` in turn, in pipelines.
async fn preload(conn: &mut MultiplexedConnection, stream: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let e = counted(*i, &format!("k{}", i % 10));
            ferry::outbox::add(&mut pipe, stream, &e);
            pipe.ignore();
            ids.push(e.id);
        }
        let _: () = pipe.query_async(conn).await.expect("publish");
    }
    ids
}

/// The per-key counters (`kK`, the partition keys) on `stream`, summed.
async fn per_key_sum(conn: &mut MultiplexedConnection, stream: &str) -> u64 {
    let mut sum = 0;
    for k in 0..10 {
        sum += committed(conn, stream, &format!("k{k}")).await.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    sum
}

/// Every record written once per event: (records, distinct events they name).
fn once_each(recs: &[Value]) -> (usize, usize) {
    let handled: BTreeSet<&str> = recs.iter().filter_map(|r| r["of"].as_str()).collect();
    (recs.len(), handled.len())
}

/// An attempt stopped by its deadline (the guest spins after its increment) is retried, and
/// its increment is gone: the second attempt counts from 0, and the count ends at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_stopped_at_its_deadline_leaves_no_state_write_behind() {
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, &format!("{COUNTER_TOML}\n[limits]\ndeadline = \"500ms\"\n"));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let slow = Event::new("Count", "tests", r#"{"act":"slow"}"#);
    ferry::outbox::publish(&mut conn, "events", &slow).await.expect("publish");
    let recs = env.records_at_least(1, Duration::from_secs(60)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(60)).await;
    assert_eq!(recs[0]["of"], slow.id.as_str());
    assert_eq!(recs[0]["attempt"], 2, "the first attempt was stopped at its deadline: {recs:?}");
    assert_eq!(recs[0]["count"], 1, "the stopped attempt's increment was not seen by the next: {recs:?}");
    assert_eq!(committed(&mut conn, "events", "count").await.as_deref(), Some("1"));
    let letters = ferry::dlq::list(&mut conn, Some("counter"), 10).await.expect("dlq");
    assert!(letters.is_empty(), "{letters:?}");
    host.stop_all().await;
}

/// One host counting 2,000 events (4 at once) is SIGKILLed twice and its Redis (AOF,
/// `appendfsync always`) killed and restarted once between: the count ends at exactly 2,000,
/// the per-key counts add up, and every event's follow-up was written once with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_is_exact_through_host_sigkills_and_a_redis_restart() {
    const N: usize = 2_000;
    let mut env = Env::with_redis(RedisServer::start_with(true).expect("redis with AOF"));
    env.add_plugin("counter", fixtures::COUNTER, &format!("concurrency = 4\n{COUNTER_TOML}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = env.config();
    // The restarted host reads its own pending entries at once (the same consumer name).
    config.consumer = Some("solo".into());
    config.read.claim_idle = Some(Duration::from_secs(10));
    config.defaults.concurrency = None;
    let mut conn = env.conn().await;
    let sent = preload(&mut conn, "events", N).await;
    let mut host = HostProcess::start(&config, dir.path(), "host-0");
    env.records_at_least(N / 4, Duration::from_secs(180)).await;
    host.kill();
    host = HostProcess::start(&config, dir.path(), "host-1");
    env.records_at_least(N / 2, Duration::from_secs(180)).await;
    // Redis dies under the running host and comes back from its AOF.
    tokio::task::block_in_place(|| env.redis.restart()).expect("redis restarts");
    env.records_at_least(3 * N / 4, Duration::from_secs(180)).await;
    host.kill();
    let host = HostProcess::start(&config, dir.path(), "host-2");
    env.records_at_least(N, Duration::from_secs(300)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(120)).await;
    let mut conn = env.conn().await;
    let recs = records(&mut conn, "records").await;
    let log = host.log();
    assert_eq!(once_each(&recs), (N, N), "one follow-up per event, written once\n{log}");
    let handled: BTreeSet<&str> = recs.iter().filter_map(|r| r["of"].as_str()).collect();
    assert!(sent.iter().all(|id| handled.contains(id.as_str())), "every event handled");
    assert_eq!(committed(&mut conn, "events", "count").await, Some(N.to_string()), "no lost or doubled update");
    assert_eq!(per_key_sum(&mut conn, "events").await, N as u64, "the per-key counters add up");
    drop(host);
}

/// Two hosts, each running 4 events at once, increment one key (`count`) 10,000 times: the
/// count ends at exactly 10,000 and each event's follow-up was written once. Both hosts' logs
/// show refused (conflicting) commits, so concurrent increments of the key really met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_incrementing_one_key_ten_thousand_times_lose_no_update() {
    const N: usize = 10_000;
    let env = Env::new();
    env.add_plugin("counter", fixtures::COUNTER, &format!("concurrency = 4\n{COUNTER_TOML}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = env.conn().await;
    preload(&mut conn, "events", N).await;
    let debug = [("FERRY_LOG".to_string(), "info,ferry::consume::settle=debug".to_string())];
    let hosts: Vec<HostProcess> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut config = env.config();
            config.consumer = Some(name.into());
            config.defaults.concurrency = None;
            HostProcess::start_with(&config, dir.path(), name, &debug)
        })
        .collect();
    env.records_at_least(N, Duration::from_secs(600)).await;
    env.settled_groups("events", &["counter"], Duration::from_secs(120)).await;
    let recs = records(&mut conn, "records").await;
    assert_eq!(once_each(&recs), (N, N), "one follow-up per event, written once");
    assert_eq!(committed(&mut conn, "events", "count").await, Some(N.to_string()), "no lost update");
    assert_eq!(per_key_sum(&mut conn, "events").await, N as u64, "the per-key counters add up");
    let conflicts: Vec<usize> = hosts.iter().map(|h| h.log().matches("state commit refused").count()).collect();
    eprintln!("conflicting commits run again, per host: {conflicts:?}");
    assert!(conflicts.iter().all(|n| *n > 0), "both hosts met concurrent increments: {conflicts:?}");
    drop(hosts);
}

/// On a Redis Cluster, a stream of 6 partitions counted by two hosts (4 events at once each):
/// each partition's state is its own hash in its own slot, and with the partition key as the
/// state key (`count:KEY`) every key's count is exact and lives only in its key's partition;
/// each partition's `count` is exactly the events routed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_each_partition_counts_its_own_keys_exactly() {
    const PER_KEY: usize = 40;
    const PARTITIONS: u32 = 6;
    let world = ClusterEnv::new();
    world.env.add_plugin("counter", fixtures::COUNTER, &format!("concurrency = 4\n{COUNTER_TOML}"));
    let mut config = world.config();
    config.defaults.concurrency = None;
    config
        .streams
        .insert("events".into(), ferry::config::StreamConfig { partitions: PARTITIONS, ..Default::default() });
    let mut conn = world.conn().await;
    let mut routed: HashMap<String, usize> = HashMap::new();
    let mut partition_of: HashMap<String, String> = HashMap::new();
    for i in 0..PER_KEY {
        for k in 0..10 {
            let key = format!("k{k}");
            let e = counted(i, &key);
            let stream = ferry::outbox::route("events", PARTITIONS, &e);
            ferry::outbox::publish(&mut conn, &stream, &e).await.expect("publish");
            *routed.entry(stream.clone()).or_default() += 1;
            partition_of.insert(key, stream);
        }
    }
    assert!(routed.len() >= 3, "the keys spread over the partitions: {routed:?}");
    let hosts: Vec<crate::support::InProcessHost> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut config = config.clone();
            config.consumer = Some(name.into());
            crate::support::InProcessHost::start(config)
        })
        .collect();
    let total = 10 * PER_KEY;
    wait_cluster_records(&mut conn, total, Duration::from_secs(180)).await;
    for p in 0..PARTITIONS {
        let stream = keys::partition("events", p);
        let want = routed.get(&stream).copied().unwrap_or(0);
        let count = wait_committed(&mut conn, &stream, "count", want).await;
        assert_eq!(count, want, "partition {stream} counted its events");
        for k in 0..10 {
            let key = format!("k{k}");
            let here = partition_of.get(&key) == Some(&stream);
            let got = committed(&mut conn, &stream, &key).await;
            let want = here.then(|| PER_KEY.to_string());
            assert_eq!(got, want, "key {key} is counted in its own partition only ({stream})");
        }
    }
    for host in hosts {
        host.stop().await;
    }
}

/// The records on the cluster: wait until `n` distinct events are recorded, each by one
/// follow-up (a forwarder may send one follow-up twice, with its id: that is one).
async fn wait_cluster_records(conn: &mut Conn, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut by_event: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (follow_up, r) in crate::cluster::records(conn, "records").await {
            by_event.entry(r["of"].as_str().unwrap_or_default().to_string()).or_default().insert(follow_up);
        }
        let twice: Vec<&String> = by_event.iter().filter(|(_, ids)| ids.len() > 1).map(|(of, _)| of).collect();
        assert!(twice.is_empty(), "events handled twice: {twice:?}");
        if by_event.len() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {n} records, have {}", by_event.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `key` on `stream` once it reaches `want` (a record is forwarded after its ack, so the state
/// is committed by then; this only absorbs reading the partitions one after another), or what
/// it holds after 10 s.
async fn wait_committed(conn: &mut Conn, stream: &str, key: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = committed(conn, stream, key).await.and_then(|v| v.parse().ok()).unwrap_or(0);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under `durability = "replicated"` a state write is confirmed by a replica before its event
/// counts as handled: with the replica stopped (SIGSTOP) the settle has written the event's
/// follow-up and count on the primary, but the event does not count as handled until the
/// replica runs again, and when it does the replica holds the new count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_replicated_durability_a_state_write_is_on_a_replica_before_its_event_counts_as_handled() {
    let env = Env::new();
    let replica = RedisServer::start().expect("replica");
    replicate(&env.redis, &replica);
    let pid = redis_cli(replica.port(), &["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:").map(|p| p.trim().to_string()))
        .expect("the replica's process id");
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").arg(sig).arg(&pid).status().expect("kill");
        assert!(status.success(), "kill {sig} {pid}");
    };
    env.add_plugin("counter", fixtures::COUNTER, COUNTER_TOML);
    let mut config = env.config();
    config.durability = ferry::connection::Durability::Replicated;
    config.durability_timeout = Duration::from_secs(30);
    let host = ferry::host::Host::start(config).await.expect("host");
    let handled = || ferry::metrics::count(&host.context().metrics.handled, "counter");
    let on_replica = || redis_cli(replica.port(), &["HGET", &keys::state("events", "counter"), "=count"]);
    let mut conn = env.conn().await;
    for n in 1..=3u64 {
        signal("-STOP");
        let event = Event::new("Count", "tests", r#"{"act":"none"}"#);
        ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
        // The settle ran on the primary: the follow-up is there, and so is the count.
        env.records_at_least(n as usize, Duration::from_secs(30)).await;
        assert_eq!(committed(&mut conn, "events", "count").await, Some(n.to_string()));
        // A while with the replica stopped: the event must not count as handled meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = handled();
        signal("-CONT");
        assert_eq!(before, n - 1, "handled before any replica confirmed its state write");
        env.wait_for("the event to count as handled", Duration::from_secs(30), || async {
            (handled() >= n).then_some(())
        })
        .await;
        assert_eq!(on_replica().trim(), n.to_string(), "the replica has the count when the event is handled");
    }
    let shortfalls = host
        .context()
        .metrics
        .replication_shortfalls
        .get_or_create(&ferry::metrics::WriteLabels { write: "settle".into() })
        .get();
    assert_eq!(shortfalls, 0, "every settle was confirmed");
    host.stop_all().await;
}
