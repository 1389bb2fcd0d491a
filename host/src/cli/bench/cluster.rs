//! `ferry bench --cluster`: how ferry scales out on Redis Cluster, in one run.
//!
//! Real `ferry run` processes (this binary) drain a preloaded partitioned stream: one host on
//! a single `redis-server`, then 1, 2 and 3 hosts on a local Redis Cluster of 3 primaries and
//! 3 replicas, each with a fresh stream of the same size and shape. Throughput is measured
//! from the first handled event to the last (the hosts load the plugin from a warm artifact
//! cache, so start-up is not what is measured), progress read from the consumer groups
//! (`XINFO GROUPS`: entries read minus pending, summed over the partitions). Cost per event:
//! Redis CPU summed over every node (replication included) and host CPU summed over the host
//! processes. On a 2-core machine the hosts and the nodes share two cores, so absolute scaling
//! cannot show; the ratios and the per-event CPU can.
//!
//! The cost of `durability = "replicated"`: the 3-host run again with every settle and
//! forward waiting for a replica, and one publish at a time with and without its `WAIT`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry::config::{Config, Start, StreamConfig};
use ferry::connection::{Conn, Durability, Replication, Target};
use ferry::consume::read;
use ferry::event::Event;
use ferry_test_kit::redis_server::{RedisCluster, RedisServer};

use super::cost;
use super::harness::sample_event;
use super::report::Report;

/// Partitions of the benchmark stream: two per primary.
const PARTITIONS: u32 = 6;
/// The subscriber (the no-op plugin's file name).
const SUBSCRIBER: &str = "noop";

/// One measured scenario.
struct Run {
    events_per_sec: f64,
    redis_us: f64,
    host_us: f64,
}

/// Where the hosts of a scenario connect.
struct Place<'a> {
    redis: String,
    cluster: bool,
    /// Every node's URL, for their CPU counters.
    nodes: Vec<String>,
    label: &'a str,
}

/// Host processes of one scenario, killed on drop.
struct Hosts(Vec<Child>);

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Measure the scenarios and add their rows to `report`.
pub async fn figures(noop: &Path, events: usize, report: &mut Report) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("ferry-bench-cluster-").tempdir()?;
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(noop, plugins.join(format!("{SUBSCRIBER}.wasm")))
        .with_context(|| format!("copying {}", noop.display()))?;
    let single = RedisServer::start().context("starting redis-server")?;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await?
        .context("starting a local Redis Cluster (redis-server --cluster-enabled, redis-cli --cluster create)")?;
    eprintln!("  cluster: 3 primaries + 3 replicas on {}", cluster.seeds());
    let on_node = Place { redis: single.url(), cluster: false, nodes: vec![single.url()], label: "single node" };
    let on_cluster = Place {
        redis: cluster.seeds(),
        cluster: true,
        nodes: cluster.nodes.iter().map(RedisServer::url).collect(),
        label: "cluster",
    };
    let base = run(work.path(), &on_node, 1, events, "s1", Durability::Primary).await?;
    let single_note = "ferry run, partitioned stream, one redis-server";
    add(report, "cluster bench: 1 host, single node", &base, base.events_per_sec, single_note);
    let mut three = base.events_per_sec;
    for hosts in 1..=3 {
        let r = run(work.path(), &on_cluster, hosts, events, &format!("c{hosts}"), Durability::Primary).await?;
        let name = format!("cluster bench: {hosts} host{}, 3-primary cluster", if hosts == 1 { "" } else { "s" });
        add(report, &name, &r, base.events_per_sec, "ferry run processes, 6 partitions over 3 primaries");
        three = r.events_per_sec;
    }
    let r = run(work.path(), &on_cluster, 3, events, "r3", Durability::Replicated).await?;
    let note = format!("{:.2}x the same 3 hosts without; every settle waits for a replica", r.events_per_sec / three);
    add(report, "cluster bench: 3 hosts, durability = replicated", &r, base.events_per_sec, &note);
    publish_cost(&on_cluster, events.min(2_000), report).await
}

/// One publish at a time (a producer that waits for each answer), with and without waiting
/// for a replica: µs per publish.
async fn publish_cost(place: &Place<'_>, n: usize, report: &mut Report) -> anyhow::Result<()> {
    let (_, mut conn) = ferry::connection::connect(&Target::new(&place.redis, place.cluster)).await?;
    let mut per_publish = [0.0; 2];
    for (i, durability) in [Durability::Primary, Durability::Replicated].into_iter().enumerate() {
        let replication = Replication { durability, timeout: Duration::from_secs(1) };
        let started = Instant::now();
        for k in 0..n {
            let event = sample_event(k);
            let key = ferry::outbox::route("bench-publish", PARTITIONS, &event);
            ferry::outbox::publish_with(&mut conn, &key, &event, replication).await?;
        }
        per_publish[i] = started.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    }
    report.add("cluster bench: publish, primary", per_publish[0], "us/publish", "one at a time, on the cluster");
    let note = format!("{:.2}x primary: XADD and WAIT 1 in one round trip", per_publish[1] / per_publish[0]);
    report.add("cluster bench: publish, durability = replicated", per_publish[1], "us/publish", note);
    Ok(())
}

/// The rows of one scenario: throughput (with its ratio to the single-node figure), Redis CPU
/// and host CPU per event.
fn add(report: &mut Report, name: &str, r: &Run, single: f64, note: &str) {
    report.add(
        format!("{name}: throughput"),
        r.events_per_sec,
        "events/s",
        format!("{:.2}x single node; {note}", r.events_per_sec / single),
    );
    report.add(format!("{name}: Redis CPU"), r.redis_us, "us/event", "every node, replication included");
    report.add(format!("{name}: host CPU"), r.host_us, "us/event", "every host process");
}

/// Preload `events` into a fresh partitioned stream at `place`, drain it with `hosts` host
/// processes writing with `durability`, and measure.
async fn run(
    work: &Path,
    place: &Place<'_>,
    hosts: usize,
    events: usize,
    tag: &str,
    durability: Durability,
) -> anyhow::Result<Run> {
    let stream = format!("bench-{tag}");
    let (_, mut conn) = ferry::connection::connect(&Target::new(&place.redis, place.cluster)).await?;
    preload(&mut conn, &stream, events).await?;
    let mut config = host_config(work, place, &stream);
    config.durability = durability;
    let mut children = Hosts(Vec::new());
    for i in 0..hosts {
        children.0.push(spawn(work, &config, &format!("{tag}-host-{i}"))?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    // The first handled event starts the clock.
    let (started, first, before) = loop {
        let done = handled(&mut conn, &stream).await?;
        if done > 0 {
            break (Instant::now(), done, counters(place, &children).await?);
        }
        check(&mut children, deadline, work, tag)?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        if handled(&mut conn, &stream).await? >= events as u64 {
            break;
        }
        check(&mut children, deadline, work, tag)?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = counters(place, &children).await?;
    let n = (events as u64 - first).max(1) as f64;
    eprintln!("  {} with {hosts} host(s): {:.0} events/s", place.label, n / secs);
    Ok(Run { events_per_sec: n / secs, redis_us: (after.0 - before.0) / n, host_us: (after.1 - before.1) / n })
}

/// Fail early, with the host's log, when a host exits or the run takes too long.
fn check(children: &mut Hosts, deadline: Instant, work: &Path, tag: &str) -> anyhow::Result<()> {
    for (i, child) in children.0.iter_mut().enumerate() {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(work.join(format!("{tag}-host-{i}.log"))).unwrap_or_default();
            anyhow::bail!("host {i} exited ({status}) during the cluster benchmark:\n{log}");
        }
    }
    anyhow::ensure!(Instant::now() < deadline, "the cluster benchmark run {tag} did not finish in 10 minutes");
    Ok(())
}

/// The hosts' configuration: the no-op plugin from the beginning of a partitioned stream.
fn host_config(work: &Path, place: &Place<'_>, stream: &str) -> Config {
    let mut config = Config {
        redis: place.redis.clone(),
        cluster: place.cluster,
        plugins: work.join("plugins"),
        stream: stream.to_string(),
        cache_dir: Some(work.join("cache")),
        watch: false,
        ..Config::default()
    };
    config.admin.listen = String::new();
    config.defaults.start = Some(Start::Beginning);
    config.streams.insert(stream.to_string(), StreamConfig { partitions: PARTITIONS, ..Default::default() });
    config
}

/// Start `ferry run` (this binary) with `config`, its output in `NAME.log`.
fn spawn(work: &Path, config: &Config, name: &str) -> anyhow::Result<Child> {
    let mut config = config.clone();
    config.consumer = Some(name.to_string());
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&config)?)?;
    let log = std::fs::File::create(work.join(format!("{name}.log")))?;
    Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ferry run")
}

/// Add `n` events to partitioned `stream`, routed as producers route them, in batches per
/// partition (a pipeline holds one slot's commands).
async fn preload(conn: &mut Conn, stream: &str, n: usize) -> anyhow::Result<()> {
    let mut by_key: Vec<Vec<Event>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for i in 0..n {
        let event = sample_event(i);
        let p = ferry::keys::partition_of(None, &event.id, PARTITIONS);
        by_key[p as usize].push(event);
    }
    for (p, events) in by_key.iter().enumerate() {
        let key = ferry::keys::partition(stream, p as u32);
        for chunk in events.chunks(1_000) {
            let mut pipe = redis::pipe();
            for event in chunk {
                ferry::outbox::add(&mut pipe, &key, event);
                pipe.ignore();
            }
            pipe.query_async::<()>(conn).await.with_context(|| format!("preloading {key}"))?;
        }
    }
    Ok(())
}

/// Events the subscriber has handled on `stream`: entries read minus pending, summed over
/// the partitions.
async fn handled(conn: &mut Conn, stream: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for p in 0..PARTITIONS {
        let key = ferry::keys::partition(stream, p);
        let groups: redis::Value = match redis::cmd("XINFO").arg("GROUPS").arg(&key).query_async(conn).await {
            Ok(v) => v,
            Err(_) => continue,
        };
        total += group_progress(groups, SUBSCRIBER);
    }
    Ok(total)
}

/// `entries-read - pending` of `group` in an `XINFO GROUPS` reply (0 when absent).
fn group_progress(groups: redis::Value, group: &str) -> u64 {
    let redis::Value::Array(groups) = groups else { return 0 };
    groups.into_iter().map(read::pairs).find(|g| read::pair_str(g, "name").as_deref() == Some(group)).map_or(0, |g| {
        let int = |name| read::pair_int(&g, name).unwrap_or(0);
        (int("entries-read") - int("pending")).max(0) as u64
    })
}

/// (Redis CPU of every node, CPU of every host process), µs.
async fn counters(place: &Place<'_>, hosts: &Hosts) -> anyhow::Result<(f64, f64)> {
    let mut redis_us = 0.0;
    for url in &place.nodes {
        let mut node = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
        redis_us += cost::sample(&mut node).await?.redis_cpu_us();
    }
    let host_us = hosts.0.iter().map(|c| cost::process_cpu_us(&c.id().to_string())).sum();
    Ok((redis_us, host_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_entries_read_minus_pending_of_the_named_group() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let group = |name: &str, read: i64, pending: i64| {
            redis::Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("pending"),
                redis::Value::Int(pending),
                bulk("entries-read"),
                redis::Value::Int(read),
            ])
        };
        let reply = redis::Value::Array(vec![group("other", 50, 0), group(SUBSCRIBER, 40, 15)]);
        assert_eq!(group_progress(reply.clone(), SUBSCRIBER), 25);
        assert_eq!(group_progress(reply, "absent"), 0);
    }
}
