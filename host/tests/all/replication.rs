//! `durability = "replicated"`: publish, settles and forwarded follow-ups wait for one replica
//! (`WAIT 1`) and say so when none confirmed; real primaries and replicas, killed for real.

use std::time::{Duration, Instant};

use ferry::connection::{Durability, NotReplicated, Replication, Target};
use ferry::event::Event;
use ferry::metrics::WriteLabels;
use ferry::outbox::PublishError;
use ferry_test_fixtures as fixtures;
use ferry_test_kit::redis_server::{RedisCluster, RedisServer};

use crate::support::{Env, RECORDER_TOML, ferry};

fn replicated(timeout_ms: u64) -> Replication {
    Replication { durability: Durability::Replicated, timeout: Duration::from_millis(timeout_ms) }
}

/// Make `replica` a replica of `primary` and wait until the link is up.
pub fn replicate(primary: &RedisServer, replica: &RedisServer) {
    let port = primary.port().to_string();
    redis_cli(replica.port(), &["REPLICAOF", "127.0.0.1", &port]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis_cli(replica.port(), &["INFO", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica did not connect to its primary");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-cli -p PORT ARGS...`: its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out =
        std::process::Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_for_a_replica_and_says_when_none_confirmed() {
    let primary = RedisServer::start().expect("primary");
    let mut replica = RedisServer::start().expect("replica");
    replicate(&primary, &replica);
    let (_, mut conn) = ferry::connection::connect(&Target::node(primary.url())).await.expect("connect");
    let event = Event::new("OrderCreated", "tests", "{}");
    let entry = ferry::outbox::publish_with(&mut conn, "events", &event, replicated(5_000)).await.expect("replicated");
    // Confirmed means the replica has it now, not eventually.
    let on_replica = redis_cli(replica.port(), &["XRANGE", "events", &entry, &entry]);
    assert!(on_replica.contains(&event.id), "the replica has the entry: {on_replica}");

    replica.kill();
    let lost = Event::new("OrderCreated", "tests", "{}");
    match ferry::outbox::publish_with(&mut conn, "events", &lost, replicated(200)).await {
        Err(PublishError::NotReplicated { entry_id, source: NotReplicated::Shortfall(_) }) => {
            let on_primary = redis_cli(primary.port(), &["XRANGE", "events", &entry_id, &entry_id]);
            assert!(on_primary.contains(&lost.id), "the event is on the primary: {on_primary}");
        }
        other => panic!("expected a replication shortfall, got {other:?}"),
    }
    // The primary-only default does not wait.
    ferry::outbox::publish_with(&mut conn, "events", &lost, Replication::PRIMARY).await.expect("primary durability");

    // The command line: --durability (or FERRY_DURABILITY, or `durability` in the config).
    let url = primary.url();
    let (status, _, stderr) = ferry(&["publish", "--type", "A", "--redis", &url, "--durability", "replicated"]);
    assert!(!status.success(), "no replica: publish fails");
    assert!(stderr.contains("no replica confirmed") && stderr.contains("again is safe"), "{stderr}");
    let (status, stdout, stderr) = ferry(&["publish", "--type", "A", "--redis", &url, "--durability", "primary"]);
    assert!(status.success(), "{stdout}{stderr}");
    // durability_on_missing_replica = "continue": published, with a warning that says so.
    let continue_ = ["publish", "--type", "A", "--redis", &url, "--durability", "replicated"];
    let (status, stdout, stderr) = ferry(&[&continue_[..], &["--durability-on-missing-replica", "continue"]].concat());
    assert!(
        status.success() && stderr.contains("no replica confirmed") && stderr.contains("continue"),
        "{stdout}{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_under_replicated_durability_keeps_settling_and_counts_shortfalls_without_a_replica() {
    let env = Env::new();
    let mut replica = RedisServer::start().expect("replica");
    replicate(&env.redis, &replica);
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    config.durability = Durability::Replicated;
    config.durability_timeout = Duration::from_millis(200);
    // Keep settling without a replica (the default, "wait", makes no progress: replica_loss.rs).
    config.durability_on_missing_replica = ferry::connection::OnMissingReplica::Continue;
    let host = ferry::host::Host::start(config).await.expect("host");
    let shortfalls =
        || host.context().metrics.replication_shortfalls.get_or_create(&WriteLabels { write: "settle".into() }).get();
    let mut conn = env.conn().await;
    for i in 0..20 {
        crate::support::publish(&mut conn, "events", "A", &format!(r#"{{"i":{i}}}"#)).await;
    }
    env.records_at_least(20, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(30)).await;
    assert_eq!(shortfalls(), 0, "every settle reached the replica");
    let port = replica.port();
    env.wait_for("the replica to have every handled record", Duration::from_secs(30), || async move {
        (redis_cli(port, &["ZCARD", "ferry:seen:{events}:rec"]).trim() == "20").then_some(())
    })
    .await;

    replica.kill();
    for i in 20..30 {
        crate::support::publish(&mut conn, "events", "A", &format!(r#"{{"i":{i}}}"#)).await;
    }
    env.records_at_least(30, Duration::from_secs(30)).await;
    env.settled("events", Duration::from_secs(30)).await;
    assert!(shortfalls() > 0, "settles without a replica are counted");
    let m = &host.context().metrics;
    assert!(m.unconfirmed_writes.get_or_create(&WriteLabels { write: "settle".into() }).get() > 0, "and gone ahead");
    let missing = host.context().replicas.missing();
    assert!(
        missing.iter().any(|m| m.stream == "events" && m.reason.contains("no replica") && m.waiting > 0),
        "the stream is marked: {missing:?}"
    );
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_wait_goes_to_the_primary_of_the_streams_slot() {
    let mut cluster = RedisCluster::start().expect("cluster");
    let (_, mut conn) =
        ferry::connection::connect(&Target::new(&cluster.seeds(), true)).await.expect("connect to the cluster");
    // Two streams in slots served by different primaries.
    let streams = ["events", "orders", "payments", "shipments"];
    let mut by_primary = std::collections::BTreeMap::new();
    for s in streams {
        let primary = cluster.primary_of(ferry::keys::slot(s)).expect("primary");
        by_primary.entry(primary).or_insert(s);
    }
    assert!(by_primary.len() >= 2, "the streams span primaries");
    for stream in by_primary.values() {
        let event = Event::new("A", "tests", "{}");
        ferry::outbox::publish_with(&mut conn, stream, &event, replicated(5_000)).await.expect("replicated");
        ferry::connection::replicated(&mut conn, stream, replicated(5_000)).await.expect("a separate WAIT too");
    }
    // Without the replica of one stream's primary, that stream's writes fall short; the
    // others' do not.
    let (&primary, &short) = by_primary.iter().next().expect("one");
    let replica = cluster.replica_of(primary).expect("replica");
    cluster.nodes[replica].kill();
    let event = Event::new("A", "tests", "{}");
    let result = ferry::outbox::publish_with(&mut conn, short, &event, replicated(300)).await;
    assert!(matches!(result, Err(PublishError::NotReplicated { .. })), "{result:?}");
    for stream in by_primary.values().filter(|s| **s != short) {
        let event = Event::new("A", "tests", "{}");
        ferry::outbox::publish_with(&mut conn, stream, &event, replicated(5_000)).await.expect("still replicated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_replicated_durability_says_when_no_replica_confirmed_its_moves() {
    let primary = RedisServer::start().expect("primary");
    let mut replica = RedisServer::start().expect("replica");
    replicate(&primary, &replica);
    let (_, mut conn) = ferry::connection::connect(&Target::node(primary.url())).await.expect("connect");
    let dlq = ferry::keys::SubscriberKeys::new("events", "rec").dlq;
    let dead_letter = |conn: &mut ferry::connection::Conn| {
        let event = Event::new("A", "tests", "{}");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&dlq).arg("*");
        event.write_fields(&mut cmd);
        cmd.arg("_reason").arg("rejected on purpose").arg("_origin").arg("events/1-0");
        let mut conn = conn.clone();
        async move {
            let _: String = cmd.query_async(&mut conn).await.expect("dead letter");
        }
    };
    dead_letter(&mut conn).await;
    let all = ferry::dlq::Selection::All;
    let n = ferry::dlq::replay_with(&mut conn, "rec", &all, replicated(5_000), |_, _| {}).await.expect("replayed");
    assert_eq!(n, 1);
    let retry = ferry::keys::SubscriberKeys::new("events", "rec").retry;
    assert_eq!(redis_cli(replica.port(), &["XLEN", &retry]).trim(), "1", "the replica has the move");

    replica.kill();
    dead_letter(&mut conn).await;
    let err = ferry::dlq::replay_with(&mut conn, "rec", &all, replicated(200), |_, _| {}).await.expect_err("short");
    assert!(err.to_string().contains("no replica confirmed"), "{err}");
    let url = primary.url();
    dead_letter(&mut conn).await;
    let (status, _, stderr) =
        ferry(&["dlq", "replay", "--subscriber", "rec", "--all", "--redis", &url, "--durability", "replicated"]);
    assert!(!status.success() && stderr.contains("no replica confirmed"), "{stderr}");
}
