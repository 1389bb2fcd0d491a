//! `ferry bench`: the benchmark, on a throwaway `redis-server` it starts itself.
//!
//! It measures, in one run: throughput of preloaded events through the real consumer loop for
//! a native handler (the ceiling: same reads, batching and acks, no WebAssembly), the Rust
//! plugin and, when given, the Python and JavaScript plugins; publish→handled latency at a
//! steady rate; fan-out to 4 subscribers; per-event cost of a fresh versus a reused instance;
//! cold versus cached plugin start; the hot-reload swap time; and host memory with 1 and 20
//! plugins, idle and under load. It prints a table and writes the same figures as JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, InstanceMode, LimitsConfig, Start, SubscriberConfig};
use crate::consume::{self, Active, Context, RedisHealth, Subscriber};
use crate::event::Event;
use crate::metrics::{self, Metrics};
use crate::plugin::cache::Cache;
use crate::plugin::invoke::{Invoke, Job, Outcome, Runner};
use crate::plugin::sandbox::Grants;
use crate::plugin::{Engine, Plugin, Subscription};
use crate::redis_server::RedisServer;

/// `ferry bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A small, fast run (CI): proves the benchmark works; figures are not meaningful.
    #[arg(long)]
    pub quick: bool,
    /// Directory of the built guest fixtures (`fixture_noop.wasm`, `fixture_recorder*.wasm`).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    pub guests: PathBuf,
    /// The Python example plugin, if built.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The JavaScript example plugin, if built.
    #[arg(long)]
    pub javascript: Option<PathBuf>,
    /// Measure only the PostgreSQL outbox relay (needs PostgreSQL installed).
    #[arg(long)]
    pub relay_only: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Context: ratio to the ceiling, target, notes.
    pub note: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, value: f64, unit: &str, note: impl Into<String>) {
        let row = Row { name: name.into(), value, unit: unit.into(), note: note.into() };
        eprintln!("  {:<52} {:>12.1} {:<10} {}", row.name, row.value, row.unit, row.note);
        self.rows.push(row);
    }
}

struct Sizes {
    events: usize,
    latency_secs: u64,
    fanout_events: usize,
    calls: usize,
    polyglot_events: usize,
    many_plugins: usize,
    relay_rows: usize,
}

/// The native ceiling: acknowledges every event without WebAssembly.
struct Native;

impl Invoke for Native {
    fn handle_all(&self, jobs: &[Job]) -> Vec<Outcome> {
        jobs.iter().map(|_| Outcome::Handled { follow_ups: Vec::new() }).collect()
    }
    fn name(&self) -> &str {
        "native"
    }
    fn version(&self) -> &str {
        "native"
    }
}

/// Wraps a handler and records publish→handled latency from the payload's `sent_us`.
struct Probe {
    inner: Arc<dyn Invoke>,
    samples: Mutex<Vec<u64>>,
}

impl Invoke for Probe {
    fn handle_all(&self, jobs: &[Job]) -> Vec<Outcome> {
        let out = self.inner.handle_all(jobs);
        let now = now_us();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for job in jobs {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&job.event.data)
                && let Some(sent) = v["sent_us"].as_u64()
            {
                samples.push(now.saturating_sub(sent));
            }
        }
        out
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The payload shape a benchmarked handler expects.
#[derive(Clone, Copy)]
enum Shape {
    /// `OrderCreated` (the noop and Python inventory plugins).
    Order,
    /// `UserRegistered` (the JavaScript welcome plugin).
    User,
}

/// A realistic event with a ~100-byte JSON payload.
fn sample_event(i: usize) -> Event {
    shaped_event(i, Shape::Order)
}

fn shaped_event(i: usize, shape: Shape) -> Event {
    if let Shape::User = shape {
        let data = format!(
            r#"{{"user_id":"u-{i:08}","email":"user{i}@example.com","name":"User {i}","sent_us":{}}}"#,
            now_us()
        );
        let mut e = Event::new("UserRegistered", "users", data);
        e.correlationid = Some(format!("signup-{i}"));
        return e;
    }
    let data = format!(
        r#"{{"order_id":"o-{i:08}","sku":"sku-{:04}","quantity":{},"price_cents":{},"sent_us":{}}}"#,
        i % 9973,
        1 + i % 5,
        1999 + i % 100,
        now_us()
    );
    let mut e = Event::new("OrderCreated", "orders", data);
    e.correlationid = Some(format!("checkout-{i}"));
    e.partitionkey = Some(format!("o-{i:08}"));
    e
}

async fn preload(conn: &mut redis::aio::ConnectionManager, stream: &str, n: usize) -> anyhow::Result<()> {
    preload_shaped(conn, stream, n, Shape::Order).await
}

async fn preload_shaped(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    n: usize,
    shape: Shape,
) -> anyhow::Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            crate::outbox::add(&mut pipe, stream, &shaped_event(*i, shape));
            pipe.ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

fn settings() -> anyhow::Result<crate::config::Effective> {
    Ok(SubscriberConfig { start: Some(Start::Beginning), ..SubscriberConfig::default() }.resolve()?)
}

fn active(invoke: Arc<dyn Invoke>, stream: &str) -> anyhow::Result<Active> {
    Ok(Active {
        runner: invoke,
        subscriptions: vec![(
            stream.to_string(),
            Subscription { event_type: "*".into(), versions: vec![], stream: None },
        )],
        settings: settings()?,
    })
}

struct Bench {
    url: String,
    ctx: Arc<Context>,
    engine: Engine,
}

impl Bench {
    /// Run `subscribers` on `stream` until each has handled `n` events; returns the seconds.
    async fn drain(&self, stream: &str, subscribers: Vec<(String, Arc<dyn Invoke>)>, n: usize) -> anyhow::Result<f64> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let names: Vec<String> = subscribers.iter().map(|(name, _)| name.clone()).collect();
        let started = Instant::now();
        for (name, invoke) in subscribers {
            let sub = Arc::new(Subscriber::new(name, active(invoke, stream)?));
            tasks.push(tokio::spawn(consume::run_stream(self.ctx.clone(), sub, stream.to_string(), rx.clone())));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let done = names.iter().all(|name| metrics::count(&self.ctx.metrics.handled, name) >= n as u64);
            if done {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "benchmark run on {stream} did not finish");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        Ok(secs)
    }

    fn runner(&self, plugin: &Arc<Plugin>, name: &str, mode: InstanceMode) -> Arc<Runner> {
        let grants = Arc::new(Grants {
            subscriber: name.into(),
            version: plugin.version.as_str().into(),
            config: Default::default(),
            publish_streams: Vec::new(),
            limits: LimitsConfig { instance_mode: mode, ..LimitsConfig::default() },
        });
        Arc::new(Runner::new(self.engine.clone(), plugin.clone(), grants))
    }

    async fn throughput(&self, label: &str, invoke: Arc<dyn Invoke>, n: usize, shape: Shape) -> anyhow::Result<f64> {
        let stream = format!("bench-{label}");
        let mut conn = self.ctx.shared.clone();
        preload_shaped(&mut conn, &stream, n, shape).await?;
        let secs = self.drain(&stream, vec![(format!("tp-{label}"), invoke)], n).await?;
        Ok(n as f64 / secs)
    }
}

fn load(engine: &Engine, path: &Path, cache: Option<&Cache>) -> anyhow::Result<(Arc<Plugin>, f64)> {
    let started = Instant::now();
    let plugin = Plugin::load(engine, path, cache).with_context(|| format!("loading {}", path.display()))?;
    Ok((plugin, started.elapsed().as_secs_f64() * 1000.0))
}

fn invocation_cost(bench: &Bench, plugin: &Arc<Plugin>, calls: usize, shape: Shape) -> (f64, f64) {
    let jobs: Vec<Job> = (0..calls)
        .map(|i| Job { event: shaped_event(i, shape), stream: "bench".into(), entry_id: format!("{i}-0"), attempt: 1 })
        .collect();
    let per_call = |mode| {
        let runner = bench.runner(plugin, "cost", mode);
        runner.handle_all(&jobs[..jobs.len().min(10)]);
        let started = Instant::now();
        runner.handle_all(&jobs);
        started.elapsed().as_secs_f64() * 1e6 / calls as f64
    };
    (per_call(InstanceMode::PerEvent), per_call(InstanceMode::Reuse))
}

/// Run the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sizes = if args.quick {
        Sizes {
            events: 5_000,
            latency_secs: 1,
            fanout_events: 2_000,
            calls: 2_000,
            polyglot_events: 1_000,
            many_plugins: 5,
            relay_rows: 2_000,
        }
    } else {
        Sizes {
            events: 200_000,
            latency_secs: 10,
            fanout_events: 100_000,
            calls: 20_000,
            polyglot_events: 50_000,
            many_plugins: 20,
            relay_rows: 50_000,
        }
    };
    let server = RedisServer::start().context("starting redis-server for the benchmark")?;
    let (client, shared) = crate::host::connect(&server.url()).await?;
    let metrics = Metrics::new();
    let read = crate::config::ReadConfig::default();
    let ctx = Arc::new(Context {
        client,
        shared,
        consumer: "bench".into(),
        read,
        metrics,
        health: RedisHealth::default(),
        grace: Duration::from_secs(10),
        retention: None,
    });
    let engine = Engine::new(&Default::default())?;
    let bench = Bench { url: server.url(), ctx, engine };
    let mut report = Report::default();
    let cache_dir = tempfile::tempdir()?;
    let cache = Cache::new(cache_dir.path());
    eprintln!("ferry bench{} on redis {}", if args.quick { " --quick" } else { "" }, bench.url);

    // 5. Start-up (first, so the cold compile is really cold).
    let noop_path = args.guests.join("fixture_noop.wasm");
    let (noop, cold) = load(&bench.engine, &noop_path, Some(&cache))?;
    let (_, cached) = load(&bench.engine, &noop_path, Some(&cache))?;
    report.add("start-up: Rust plugin, cold compile", cold, "ms", "");
    report.add("start-up: Rust plugin, from the artifact cache", cached, "ms", "");
    if args.relay_only {
        relay_figures(&bench, &noop, &sizes, &mut report).await?;
        return finish(&args, &report);
    }
    let mut polyglot: Vec<(&str, Arc<Plugin>, Shape)> = Vec::new();
    for (lang, path, shape) in [("Python", &args.python, Shape::Order), ("JavaScript", &args.javascript, Shape::User)] {
        if let Some(path) = path {
            let (plugin, cold) = load(&bench.engine, path, Some(&cache))?;
            let (_, cached) = load(&bench.engine, path, Some(&cache))?;
            report.add(format!("start-up: {lang} plugin, cold compile"), cold, "ms", "");
            report.add(format!("start-up: {lang} plugin, from the artifact cache"), cached, "ms", "target < 1000 ms");
            polyglot.push((lang, plugin, shape));
        }
    }

    // 1. Throughput.
    let n = sizes.events;
    let native = bench.throughput("native", Arc::new(Native), n, Shape::Order).await?;
    report.add(format!("throughput: native consumer, {n} events"), native, "events/s", "ceiling");
    let rust = bench.throughput("rust", bench.runner(&noop, "rust", InstanceMode::Reuse), n, Shape::Order).await?;
    let ratio = rust / native;
    report.add(
        format!("throughput: Rust plugin, {n} events"),
        rust,
        "events/s",
        format!("{ratio:.2}x native; target >= 100000 and >= 0.8x"),
    );
    for (lang, plugin, shape) in &polyglot {
        let m = sizes.polyglot_events;
        let tp =
            bench.throughput(&lang.to_lowercase(), bench.runner(plugin, lang, InstanceMode::Reuse), m, *shape).await?;
        report.add(
            format!("throughput: {lang} plugin, {m} events"),
            tp,
            "events/s",
            format!("{:.2}x native; target >= 20000", tp / native),
        );
    }

    // 2. Latency at a steady 5,000 events/s.
    let probe =
        Arc::new(Probe { inner: bench.runner(&noop, "latency", InstanceMode::Reuse), samples: Mutex::new(Vec::new()) });
    let (stop, rx) = watch::channel(false);
    let sub = Arc::new(Subscriber::new("latency".into(), active(probe.clone(), "bench-latency")?));
    let task = tokio::spawn(consume::run_stream(bench.ctx.clone(), sub, "bench-latency".into(), rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = bench.ctx.shared.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let total = 5_000 * sizes.latency_secs as usize;
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let mut pipe = redis::pipe();
        for i in sent..sent + 10 {
            crate::outbox::add(&mut pipe, "bench-latency", &sample_event(i));
            pipe.ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        sent += 10;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics::count(&bench.ctx.metrics.handled, "latency") < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    let _ = task.await;
    let mut samples = std::mem::take(&mut *probe.samples.lock().unwrap_or_else(|p| p.into_inner()));
    samples.sort_unstable();
    let pct = |p: f64| {
        samples.get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))).copied().unwrap_or(0)
            as f64
            / 1000.0
    };
    report.add("latency at 5000 events/s: p50", pct(0.50), "ms", "publish -> handled");
    report.add("latency at 5000 events/s: p99", pct(0.99), "ms", "target < 5 ms");
    report.add("latency at 5000 events/s: max", samples.last().copied().unwrap_or(0) as f64 / 1000.0, "ms", "");

    // 2b. The PostgreSQL outbox relay (skipped when PostgreSQL is not installed).
    if let Err(e) = relay_figures(&bench, &noop, &sizes, &mut report).await {
        eprintln!("  relay figures skipped: {e:#}");
    }

    // 3. Fan-out: 4 subscribers on one stream.
    let m = sizes.fanout_events;
    preload(&mut conn, "bench-fanout", m).await?;
    let subs: Vec<(String, Arc<dyn Invoke>)> = (0..4)
        .map(|i| {
            let name = format!("fan-{i}");
            let runner: Arc<dyn Invoke> = bench.runner(&noop, &name, InstanceMode::Reuse);
            (name, runner)
        })
        .collect();
    let secs = bench.drain("bench-fanout", subs, m).await?;
    report.add(
        format!("fan-out: 4 Rust subscribers, {m} events"),
        4.0 * m as f64 / secs,
        "deliveries/s",
        format!("{:.0} events/s through all four", m as f64 / secs),
    );

    // 4. Invocation cost.
    let (fresh, reused) = invocation_cost(&bench, &noop, sizes.calls, Shape::Order);
    report.add("invocation: Rust, fresh instance per event", fresh, "us/event", "");
    report.add("invocation: Rust, reused instance", reused, "us/event", "");
    for (lang, plugin, shape) in &polyglot {
        let (fresh, reused) = invocation_cost(&bench, plugin, sizes.calls / 10, *shape);
        report.add(format!("invocation: {lang}, fresh instance per event"), fresh, "us/event", "");
        report.add(format!("invocation: {lang}, reused instance"), reused, "us/event", "");
    }

    // 5b. Hot-reload swap, 6. memory: a real host on a plugin directory.
    host_figures(&bench, &args, &cache, &sizes, &mut report).await?;

    finish(&args, &report)
}

fn finish(args: &BenchArgs, report: &Report) -> anyhow::Result<ExitCode> {
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report.rows)?)?;
    println!("{}", table(&report.rows));
    println!("results written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// The outbox relay: rows/s relayed from a preloaded table, and commit → handled latency at a
/// steady 1,000 transactions/s (one row each), on a throwaway PostgreSQL.
async fn relay_figures(bench: &Bench, noop: &Arc<Plugin>, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(crate::postgres_server::PostgresServer::start)
        .await?
        .context("starting PostgreSQL")?;
    let (client, _) = crate::relay::connect(&pg.url(), "ferry bench").await?;
    let table = crate::relay::Table::default();
    crate::relay::manage::init(&client, &table).await?;
    let relay_config = crate::config::RelayConfig { postgres: pg.url(), ..Default::default() };
    let run_relay = |stream: &str| -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
        let settings = crate::relay::Settings::from_config(&relay_config, &bench.url, stream)?;
        let relay = crate::relay::Relay::new(settings, bench.ctx.metrics.relay.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        Ok((
            stop,
            tokio::spawn(async move {
                relay
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
            }),
        ))
    };
    let relayed =
        || bench.ctx.metrics.relay.relayed.get_or_create(&metrics::RelayLabels { table: "ferry_outbox".into() }).get();

    // Throughput: rows committed beforehand, relayed in batches of 500.
    let n = sizes.relay_rows;
    client
        .execute(
            "INSERT INTO ferry_outbox (id, type, source, data, partitionkey) \
             SELECT gen_random_uuid(), 'OrderCreated', 'bench', jsonb_build_object('order_id', i), 'k' || (i % 100) \
             FROM generate_series(1, $1::int) AS i",
            &[&(n as i32)],
        )
        .await?;
    let started = Instant::now();
    let (stop, task) = run_relay("bench-relay-throughput")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while relayed() < n as u64 {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not finish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = task.await;
    report.add(format!("relay: PostgreSQL outbox -> stream, {n} rows"), n as f64 / secs, "rows/s", "batches of 500");

    // Latency: one row per transaction at a steady rate; stamped just before COMMIT.
    let probe = Arc::new(Probe {
        inner: bench.runner(noop, "relay-latency", InstanceMode::Reuse),
        samples: Mutex::new(Vec::new()),
    });
    let (stop_sub, rx) = watch::channel(false);
    let sub = Arc::new(Subscriber::new("relay-latency".into(), active(probe.clone(), "bench-relay-latency")?));
    let sub_task = tokio::spawn(consume::run_stream(bench.ctx.clone(), sub, "bench-relay-latency".into(), rx));
    let (stop, task) = run_relay("bench-relay-latency")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = 1_000 * sizes.latency_secs as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut producer, _) = crate::relay::connect(&pg.url(), "ferry bench producer").await?;
    for i in 0..total {
        tick.tick().await;
        let tx = producer.transaction().await?;
        let data = serde_json::json!({ "order_id": i, "sent_us": now_us() }).to_string();
        crate::relay::add(&tx, &Event::new("OrderCreated", "bench", data)).await?;
        tx.commit().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics::count(&bench.ctx.metrics.handled, "relay-latency") < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    let _ = task.await;
    let _ = stop_sub.send(true);
    let _ = sub_task.await;
    let mut samples = std::mem::take(&mut *probe.samples.lock().unwrap_or_else(|p| p.into_inner()));
    samples.sort_unstable();
    let pct = |p: f64| {
        samples.get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))).copied().unwrap_or(0)
            as f64
            / 1000.0
    };
    report.add("relay latency at 1000 commits/s: p50", pct(0.50), "ms", "commit -> handled, through PostgreSQL");
    report.add("relay latency at 1000 commits/s: p99", pct(0.99), "ms", "");
    drop(pg);
    Ok(())
}

async fn host_figures(
    bench: &Bench,
    args: &BenchArgs,
    cache: &Cache,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let base = rss_mb();
    let dir = tempfile::tempdir()?;
    let noop = args.guests.join("fixture_noop.wasm");
    let mut config = Config {
        redis: bench.url.clone(),
        plugins: dir.path().to_path_buf(),
        cache_dir: Some(cache.dir().to_path_buf()),
        stream: "bench-memory".into(),
        ..Config::default()
    };
    config.admin.listen = String::new();
    config.defaults.start = Some(Start::Beginning);
    std::fs::copy(&noop, dir.path().join("mem-0.wasm"))?;
    let host = crate::host::Host::start(config.clone()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one = rss_mb();
    report.add("memory: host with 1 Rust plugin, idle", one - base, "MB RSS", "growth over the benchmark process");
    for i in 1..sizes.many_plugins {
        std::fs::copy(&noop, dir.path().join(format!("mem-{i}.wasm")))?;
        host.apply(&dir.path().join(format!("mem-{i}.wasm"))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let many = rss_mb();
    let k = sizes.many_plugins;
    report.add(
        format!("memory: host with {k} Rust plugins, idle"),
        many - base,
        "MB RSS",
        format!("{:.1} MB per plugin; target < 10", (many - one) / (k - 1) as f64),
    );
    let mut conn = bench.ctx.shared.clone();
    let n = sizes.fanout_events / 4;
    preload(&mut conn, "bench-memory", n).await?;
    let mut peak = many;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        peak = peak.max(rss_mb());
        let done = (0..k).all(|i| metrics::count(&host.context().metrics.handled, &format!("mem-{i}")) >= n as u64);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.add(
        format!("memory: host with {k} Rust plugins, under load"),
        peak - base,
        "MB RSS",
        format!("peak while {k} subscribers drain {n} events"),
    );
    host.stop_all().await;

    // Hot reload: from the rename of a new version to its first handled event.
    let recorder = args.guests.join("fixture_recorder.wasm");
    let recorder_v2 = args.guests.join("fixture_recorder_v2.wasm");
    if recorder.exists() && recorder_v2.exists() {
        let swap_dir = tempfile::tempdir()?;
        std::fs::write(
            swap_dir.path().join("swap.toml"),
            "start = \"beginning\"\npublish_streams = [\"bench-swap-records\"]\n[config]\nrecord_to = \"bench-swap-records\"\n",
        )?;
        std::fs::copy(&recorder, swap_dir.path().join("swap.wasm"))?;
        let mut config = config.clone();
        config.plugins = swap_dir.path().to_path_buf();
        config.stream = "bench-swap".into();
        let host = crate::host::Host::start(config).await?;
        let watcher = crate::reload::watch(host.clone())?;
        // Compile v2 into the cache first, as a deploy pipeline would with `ferry plugins check`.
        Plugin::load(&bench.engine, &recorder_v2, Some(cache))?;
        let tmp = swap_dir.path().join("swap.new");
        std::fs::copy(&recorder_v2, &tmp)?;
        let published = tokio::spawn({
            let mut conn = conn.clone();
            async move {
                for i in 0..5000 {
                    let _ = crate::outbox::publish(&mut conn, "bench-swap", &sample_event(i)).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let renamed = Instant::now();
        std::fs::rename(&tmp, swap_dir.path().join("swap.wasm"))?;
        let mut swap_ms = None;
        while renamed.elapsed() < Duration::from_secs(30) {
            let value: redis::Value = redis::cmd("XREVRANGE")
                .arg("bench-swap-records")
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let last = crate::consume::read::parse_entries("bench-swap-records", value);
            if last.first().and_then(|e| e.field("data")).is_some_and(|d| String::from_utf8_lossy(d).contains("\"v2\""))
            {
                swap_ms = Some(renamed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        published.abort();
        drop(watcher);
        host.stop_all().await;
        report.add(
            "hot reload: rename to first event on the new version",
            swap_ms.unwrap_or(f64::NAN),
            "ms",
            "Rust plugin; target < 250 ms",
        );
    }
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut out = vec![vec!["MEASURE".to_string(), "VALUE".into(), "UNIT".into(), "NOTE".into()]];
    for r in rows {
        out.push(vec![r.name.clone(), format!("{:.1}", r.value), r.unit.clone(), r.note.clone()]);
    }
    crate::cli::table(&out)
}
