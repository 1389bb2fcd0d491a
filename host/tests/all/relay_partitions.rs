//! The outbox relay on partitioned streams and on a Redis Cluster: each row goes to its
//! partition (the documented routing), a key's rows stay in order within their partition,
//! and under `durability = "replicated"` rows are marked only once a replica has them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry::connection::{Conn, Durability, Replication, Target};
use ferry::event::Event;
use ferry_test_kit::redis_server::{RedisCluster, RedisServer};

use crate::pg::{self, InProcessRelay};

const PARTITIONS: u32 = 4;

/// Commit `keys` × `per_key` keyed rows (sequence `i` per key, interleaved across keys, some
/// in multi-row transactions) and `unkeyed` rows without a key; returns every event.
async fn produce(client: &mut tokio_postgres::Client, keys: usize, per_key: usize, unkeyed: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..per_key {
        let tx = client.transaction().await.expect("begin");
        for k in 0..keys {
            let mut event = Event::new("Keyed", "tests", format!(r#"{{"k":{k},"i":{i}}}"#));
            event.partitionkey = Some(format!("key-{k}"));
            ferry::outbox::postgres::add(&tx, &event).await.expect("add");
            events.push(event);
        }
        tx.commit().await.expect("commit");
    }
    for n in 0..unkeyed {
        let event = Event::new("Loose", "tests", format!(r#"{{"n":{n}}}"#));
        ferry::outbox::postgres::add(&*client, &event).await.expect("add");
        events.push(event);
    }
    events
}

/// The events in `key`, in stream order.
async fn stream_events(conn: &mut Conn, key: &str) -> Vec<Event> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(conn).await.unwrap_or(redis::Value::Nil);
    ferry::consume::read::parse_entries(key, value)
        .into_iter()
        .filter_map(|e| Event::from_fields(&e.fields).ok())
        .collect()
}

/// Relay rows to partitioned `events` at `target` and check where and in which order they land.
async fn relays_to_partitions(target: Target, durability: Durability) {
    let pg = pg::start().await;
    let mut client = pg::client(&pg.url()).await;
    let mut settings = pg::settings(&pg, "redis://unused");
    settings.target = target.clone();
    settings.partitions.insert("events".into(), PARTITIONS);
    settings.replication = Replication { durability, timeout: Duration::from_secs(5) };
    let relay = InProcessRelay::start(settings);
    let events = produce(&mut client, 10, 20, 40).await;
    let (_, mut conn) = ferry::connection::connect(&target).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    let by_partition = loop {
        let mut by_partition = Vec::new();
        for p in 0..PARTITIONS {
            by_partition.push(stream_events(&mut conn, &ferry::keys::partition("events", p)).await);
        }
        if by_partition.iter().map(Vec::len).sum::<usize>() >= events.len() {
            break by_partition;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {} events in the partitions", events.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let plain: Vec<Event> = stream_events(&mut conn, "events").await;
    assert!(plain.is_empty(), "nothing goes to the unpartitioned key");
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for (p, events_here) in by_partition.iter().enumerate() {
        for e in events_here {
            let want = ferry::outbox::route("events", PARTITIONS, e);
            assert_eq!(want, ferry::keys::partition("events", p as u32), "event {} in its partition", e.id);
            if let Some(key) = &e.partitionkey {
                let data: serde_json::Value = serde_json::from_slice(&e.data).expect("json");
                order.entry(key.clone()).or_default().push(data["i"].as_u64().expect("i"));
            }
        }
    }
    let spread = by_partition.iter().filter(|events| events.iter().any(|e| e.partitionkey.is_none())).count();
    assert!(spread >= 2, "rows without a key spread over partitions ({spread})");
    assert_eq!(by_partition.iter().map(Vec::len).sum::<usize>(), events.len(), "each row once");
    for (key, seq) in order {
        assert_eq!(seq, (0..20).collect::<Vec<u64>>(), "{key}: rows in commit order within their partition");
    }
    // Every row marked published: a row is marked after its events are in the stream (under
    // `replicated`, once a replica confirmed them), so the marks may trail what we just saw.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ferry::relay::manage::status(&client, &ferry::relay::Table::default()).await.expect("status");
        if status.backlog == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "every row marked: {} left unmarked", status.backlog);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_routes_rows_to_their_partitions_on_a_single_node() {
    let redis = RedisServer::start().expect("redis");
    relays_to_partitions(Target::node(redis.url()), Durability::Primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_routes_rows_to_their_partitions_on_a_cluster_with_replicated_durability() {
    let cluster = tokio::task::block_in_place(RedisCluster::start).expect("cluster");
    relays_to_partitions(Target::new(&cluster.seeds(), true), Durability::Replicated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_replicated_durability_rows_stay_unmarked_until_a_replica_has_them() {
    let primary = RedisServer::start().expect("primary");
    let pg = pg::start().await;
    let mut client = pg::client(&pg.url()).await;
    let mut settings = pg::settings(&pg, &primary.url());
    settings.replication = Replication { durability: Durability::Replicated, timeout: Duration::from_millis(100) };
    let relay = InProcessRelay::start(settings);
    let events = produce(&mut client, 2, 5, 0).await;
    // No replica: the events reach the primary (again and again) but no row is marked.
    let shortfalls = || {
        relay.metrics.replication_shortfalls.get_or_create(&ferry::metrics::WriteLabels { write: "relay".into() }).get()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while shortfalls() < 2 {
        assert!(Instant::now() < deadline, "no shortfall counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = ferry::relay::manage::status(&client, &ferry::relay::Table::default()).await.expect("status");
    assert_eq!(status.backlog, events.len() as i64, "no row marked without a replica");
    // A replica arrives: the rows are marked, and the stream holds each event (copies share ids).
    let replica = RedisServer::start().expect("replica");
    let port = primary.port().to_string();
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &replica.port().to_string(), "REPLICAOF", "127.0.0.1", &port])
        .output()
        .expect("redis-cli");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ferry::relay::manage::status(&client, &ferry::relay::Table::default()).await.expect("status");
        if status.backlog == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "rows not marked after a replica arrived: {}", status.backlog);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, mut conn) = ferry::connection::connect(&Target::node(primary.url())).await.expect("connect");
    let ids: std::collections::HashSet<String> =
        stream_events(&mut conn, "events").await.into_iter().map(|e| e.id).collect();
    assert!(events.iter().all(|e| ids.contains(&e.id)), "every event in the stream");
    relay.stop().await;
}
