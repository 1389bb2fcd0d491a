//! `ferry bench`: the benchmark, on a throwaway `redis-server` it starts itself.
//!
//! It measures, in one run: throughput of preloaded events for a plain redis-rs consumer
//! ([`plain`]: read and ack, nothing else; the honest ceiling every throughput row is a ratio
//! to), ferry's real consumer loop with a native handler (same loop, no WebAssembly), the Rust
//! plugin and, when given, the Python and JavaScript plugins, each with its cost per event
//! ([`cost`]: Redis CPU, per Redis command, host CPU), and the Rust plugin with one state
//! `get` + `set` or one HTTP call per event ([`capabilities`]); publish→handled latency at a steady
//! rate; fan-out to 4 subscribers; per-event cost of a fresh versus a reused instance; cold
//! versus cached plugin start; the hot-reload swap time; host memory with 1 and 20 plugins,
//! idle and under load; and how cost scales with payload size, subscribers and plugins
//! loaded. It prints a table and writes the same figures as JSON.

mod capabilities;
mod cluster;
mod contracts;
mod cost;
mod plain;
mod retention;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use tokio::sync::watch;

use ferry::config::{Config, InstanceMode, LimitsConfig, Start, SubscriberConfig};
use ferry::consume::{self, Active, Context, RedisHealth, Subscriber};
use ferry::event::Event;
use ferry::handler::Subscription;
use ferry::handler::{Handling, Invoke, Job, Outcome};
use ferry::metrics::{self, Metrics};
use ferry::plugin::cache::Cache;
use ferry::plugin::capability::Grants;
use ferry::plugin::invoke::Runner;
use ferry::plugin::{Engine, Plugin};
use ferry::redis_server::RedisServer;

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
    /// Measure only scale-out: 1, 2 and 3 `ferry run` processes on a local 3-primary Redis
    /// Cluster beside one host on a single node (needs redis-server and redis-cli).
    #[arg(long)]
    pub cluster: bool,
    /// Measure only retention: one trimming pass over a large backlog, then passes under a
    /// steady inflow consumed at full speed.
    #[arg(long)]
    pub retention_only: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// Run only these throughput rows (and their cost), nothing else: for profiling one
    /// consumer, e.g. `perf record -- ferry bench --only rust`. Repeat or comma-separate.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Only>,
}

/// A throughput row `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The plain redis-rs consumer.
    Plain,
    /// ferry's loop with a native no-op handler.
    Native,
    /// The Rust plugin.
    Rust,
    /// The Python plugin (needs --python).
    Python,
    /// The JavaScript plugin (needs --javascript).
    Javascript,
    /// The contract rows: validation off and on, an upcast step per event.
    Contracts,
    /// The capability rows: one state get + set, one HTTP call per event.
    Capabilities,
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
    /// For throughput rows: the figure as a ratio to the plain redis-rs consumer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_plain: Option<f64>,
    /// Context: ratio to the ceiling, target, notes.
    pub note: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, value: f64, unit: &str, note: impl Into<String>) {
        self.push(Row { name: name.into(), value, unit: unit.into(), ratio_to_plain: None, note: note.into() });
    }

    /// A throughput row, with its ratio to the plain consumer's `plain` events/s.
    fn throughput(&mut self, name: impl Into<String>, value: f64, unit: &str, plain: f64, note: impl Into<String>) {
        let ratio = (plain > 0.0).then(|| value / plain);
        self.push(Row { name: name.into(), value, unit: unit.into(), ratio_to_plain: ratio, note: note.into() });
    }

    /// The cost rows of one measured run: host and Redis CPU per event, then each Redis
    /// command's share.
    fn cost(&mut self, label: &str, cost: &cost::Cost) {
        self.add(format!("cost: {label}: host CPU"), cost.host_us, "us/event", "this process, every thread");
        self.add(format!("cost: {label}: Redis CPU"), cost.redis_us, "us/event", "redis-server user+sys");
        for (command, calls, us, per_call) in &cost.commands {
            self.add(
                format!("cost: {label}: redis {command}"),
                *us,
                "us/event",
                format!("{calls:.3} calls/event, {per_call:.1} us/call"),
            );
        }
    }

    fn push(&mut self, row: Row) {
        let ratio = row.ratio_to_plain.map_or(String::new(), |r| format!("{r:.2}x plain"));
        eprintln!("  {:<52} {:>12.1} {:<12} {:<12} {}", row.name, row.value, row.unit, ratio, row.note);
        self.rows.push(row);
    }
}

struct Sizes {
    events: usize,
    /// Events per payload size: 100 B, 10 KB, 1 MB.
    payload_events: [usize; 3],
    /// Events for each of the 1/4/16-subscriber runs.
    scaling_fanout_events: usize,
    /// Backlogs drained for the backlog-size rows.
    backlog_events: [usize; 2],
    /// Rows relayed from a preloaded PostgreSQL outbox table.
    relay_rows: usize,
    /// Events per scale-out scenario (`--cluster`).
    cluster_events: usize,
    latency_secs: u64,
    fanout_events: usize,
    calls: usize,
    polyglot_events: usize,
    many_plugins: usize,
}

/// The native ceiling: acknowledges every event without WebAssembly.
struct Native;

impl Invoke for Native {
    fn handle(&self, _job: Arc<Job>) -> Handling {
        Box::pin(std::future::ready(Outcome::Handled { effects: Default::default() }))
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
    samples: Arc<Mutex<Vec<u64>>>,
}

impl Invoke for Probe {
    fn handle(&self, job: Arc<Job>) -> Handling {
        let sent =
            serde_json::from_slice::<serde_json::Value>(&job.event.data).ok().and_then(|v| v["sent_us"].as_u64());
        let handling = self.inner.handle(job);
        let samples = self.samples.clone();
        Box::pin(async move {
            let out = handling.await;
            if let Some(sent) = sent {
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(now_us().saturating_sub(sent));
            }
            out
        })
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
}

impl Probe {
    /// The latencies recorded so far (µs), sorted; the probe is emptied.
    fn sorted_samples(&self) -> Vec<u64> {
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        samples.sort_unstable();
        samples
    }
}

/// `"0.85x native; "`, or nothing when the native row was not run (`--only rust`).
fn vs_native(events_per_sec: f64, native: f64) -> String {
    if native.is_finite() && native > 0.0 { format!("{:.2}x native; ", events_per_sec / native) } else { String::new() }
}

/// The `p` quantile (0..=1) of sorted µs `samples`, in ms; 0 when there are none.
fn percentile_ms(samples: &[u64], p: f64) -> f64 {
    let i = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
    samples.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// Wait (at most a minute) until subscriber `name` has handled `total` events.
async fn wait_handled(bench: &Bench, name: &str, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics::count(&bench.ctx.metrics.handled, name) < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    /// `OrderCreated` with its JSON payload padded to about this many bytes.
    Padded(usize),
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
    let mut data = format!(
        r#"{{"order_id":"o-{i:08}","sku":"sku-{:04}","quantity":{},"price_cents":{},"sent_us":{}}}"#,
        i % 9973,
        1 + i % 5,
        1999 + i % 100,
        now_us()
    );
    if let Shape::Padded(bytes) = shape {
        let pad = bytes.saturating_sub(data.len() + 10);
        data.pop();
        data.push_str(&format!(r#","note":"{}"}}"#, "x".repeat(pad)));
    }
    let mut e = Event::new("OrderCreated", "orders", data);
    e.correlationid = Some(format!("checkout-{i}"));
    e.partitionkey = Some(format!("o-{i:08}"));
    e
}

async fn preload(conn: &mut ferry::connection::Conn, stream: &str, n: usize) -> anyhow::Result<()> {
    preload_shaped(conn, stream, n, Shape::Order).await
}

async fn preload_shaped(
    conn: &mut ferry::connection::Conn,
    stream: &str,
    n: usize,
    shape: Shape,
) -> anyhow::Result<()> {
    // Pipelines of at most ~8 MB, so 1 MB payloads do not build one huge request.
    let per_pipe = match shape {
        Shape::Padded(bytes) => (8 << 20) / bytes.max(1),
        _ => 1000,
    }
    .clamp(1, 1000);
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_pipe) {
        let mut pipe = redis::pipe();
        for i in chunk {
            ferry::outbox::add(&mut pipe, stream, &shaped_event(*i, shape));
            pipe.ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

fn settings() -> anyhow::Result<ferry::config::Effective> {
    Ok(SubscriberConfig { start: Some(Start::Beginning), ..SubscriberConfig::default() }.resolve()?)
}

fn active(invoke: Arc<dyn Invoke>, stream: &str) -> anyhow::Result<Active> {
    let every = Subscription { event_type: "*".into(), versions: vec![], stream: None };
    Ok(Active { runner: invoke, subscriptions: vec![(stream.to_string(), every)], settings: settings()? })
}

/// The benchmark's consumer context on `redis`/`shared`, with a schema registry and
/// upcasters when given.
fn context(
    redis: ferry::connection::Redis,
    shared: ferry::connection::Conn,
    contracts: Option<Arc<ferry::contract::Registry>>,
    upcasters: Option<Arc<ferry::contract::upcast::Upcasters>>,
) -> Context {
    Context {
        redis,
        shared,
        consumer: "bench".into(),
        read: ferry::config::ReadConfig::default(),
        metrics: Metrics::new(),
        health: RedisHealth::default(),
        grace: Duration::from_secs(10),
        retention: None,
        stream_retention: Default::default(),
        partitions: Default::default(),
        replication: ferry::connection::Replication::PRIMARY,
        replicas: ferry::replica::ReplicaWatch::new(Default::default()),
        contracts,
        upcasters,
    }
}

struct Bench {
    url: String,
    ctx: Arc<Context>,
    engine: Engine,
}

impl Bench {
    /// Run `subscribers` on `stream` until each has handled `n` events; returns the seconds.
    async fn drain(&self, stream: &str, subscribers: Vec<(String, Arc<dyn Invoke>)>, n: usize) -> anyhow::Result<f64> {
        let every = |invoke| active(invoke, stream);
        self.drain_with(stream, subscribers, n, every).await
    }

    /// [`Bench::drain`] with each subscriber's [`Active`] made by `active`.
    async fn drain_with(
        &self,
        stream: &str,
        subscribers: Vec<(String, Arc<dyn Invoke>)>,
        n: usize,
        active: impl Fn(Arc<dyn Invoke>) -> anyhow::Result<Active>,
    ) -> anyhow::Result<f64> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let names: Vec<String> = subscribers.iter().map(|(name, _)| name.clone()).collect();
        let started = Instant::now();
        for (name, invoke) in subscribers {
            let sub = Arc::new(Subscriber::new(name, active(invoke)?));
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
        let limits = LimitsConfig { instance_mode: mode, ..LimitsConfig::default() };
        let grants = Arc::new(Grants::none(name, &plugin.version, limits));
        Arc::new(Runner::new(self.engine.clone(), plugin.clone(), grants))
    }

    /// Events/s through one subscriber on a stream preloaded with `n` events, and the cost.
    async fn throughput(
        &self,
        label: &str,
        invoke: Arc<dyn Invoke>,
        n: usize,
        shape: Shape,
    ) -> anyhow::Result<(f64, cost::Cost)> {
        let stream = format!("bench-{label}");
        let mut conn = self.ctx.shared.clone();
        preload_shaped(&mut conn, &stream, n, shape).await?;
        let before = cost::sample(&mut conn).await?;
        let secs = self.drain(&stream, vec![(format!("tp-{label}"), invoke)], n).await?;
        let after = cost::sample(&mut conn).await?;
        Ok((n as f64 / secs, cost::Cost::between(&before, &after, n)))
    }

    /// The plain redis-rs consumer on `n` preloaded events of the same shape.
    async fn plain(&self, n: usize) -> anyhow::Result<(f64, cost::Cost)> {
        let stream = "bench-plain";
        let mut conn = self.ctx.shared.clone();
        preload_shaped(&mut conn, stream, n, Shape::Order).await?;
        let before = cost::sample(&mut conn).await?;
        let secs = plain::drain(&self.url, stream, n).await?;
        let after = cost::sample(&mut conn).await?;
        Ok((n as f64 / secs, cost::Cost::between(&before, &after, n)))
    }
}

async fn load(engine: &Engine, path: &Path, cache: Option<&Cache>) -> anyhow::Result<(Arc<Plugin>, f64)> {
    let started = Instant::now();
    let plugin = Plugin::load(engine, path, cache, &LimitsConfig::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((plugin, started.elapsed().as_secs_f64() * 1000.0))
}

async fn invocation_cost(bench: &Bench, plugin: &Arc<Plugin>, calls: usize, shape: Shape) -> (f64, f64) {
    let jobs: Vec<Arc<Job>> = (0..calls)
        .map(|i| {
            Arc::new(Job {
                event: shaped_event(i, shape),
                stream: "bench".into(),
                entry_id: format!("{i}-0"),
                attempt: 1,
            })
        })
        .collect();
    let per_call = async |mode| {
        let runner = bench.runner(plugin, "cost", mode);
        for job in &jobs[..jobs.len().min(10)] {
            runner.handle(job.clone()).await;
        }
        let started = Instant::now();
        for job in &jobs {
            runner.handle(job.clone()).await;
        }
        started.elapsed().as_secs_f64() * 1e6 / calls as f64
    };
    (per_call(InstanceMode::PerEvent).await, per_call(InstanceMode::Reuse).await)
}

/// Run the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sizes = if args.quick {
        Sizes {
            events: 5_000,
            payload_events: [1_000, 200, 10],
            scaling_fanout_events: 1_000,
            backlog_events: [1_000, 10_000],
            relay_rows: 2_000,
            cluster_events: 2_000,
            latency_secs: 1,
            fanout_events: 2_000,
            calls: 2_000,
            polyglot_events: 1_000,
            many_plugins: 5,
        }
    } else {
        Sizes {
            events: 200_000,
            payload_events: [50_000, 10_000, 100],
            scaling_fanout_events: 20_000,
            backlog_events: [10_000, 1_000_000],
            relay_rows: 50_000,
            cluster_events: 100_000,
            latency_secs: 10,
            fanout_events: 100_000,
            calls: 20_000,
            polyglot_events: 50_000,
            many_plugins: 20,
        }
    };
    let server = RedisServer::start().context("starting redis-server for the benchmark")?;
    let (redis, shared) = ferry::connection::connect(&ferry::connection::Target::node(server.url())).await?;
    let ctx = Arc::new(context(redis, shared, None, None));
    let engine = Engine::new(&Default::default())?;
    let bench = Bench { url: server.url(), ctx, engine };
    let mut report = Report::default();
    let cache_dir = tempfile::tempdir()?;
    let cache = Cache::open(cache_dir.path().join("cache"), &cache_dir.path().join("cache.key"))?;
    eprintln!("ferry bench{} on redis {}", if args.quick { " --quick" } else { "" }, bench.url);

    // 5. Start-up (first, so the cold compile is really cold).
    let noop_path = args.guests.join("fixture_noop.wasm");
    let (noop, cold) = load(&bench.engine, &noop_path, Some(&cache)).await?;
    let (_, cached) = load(&bench.engine, &noop_path, Some(&cache)).await?;
    report.add("start-up: Rust plugin, cold compile", cold, "ms", "");
    report.add("start-up: Rust plugin, from the artifact cache", cached, "ms", "");
    if args.relay_only {
        relay_figures(&bench, &noop, &sizes, &mut report).await?;
        return finish(&args, &report);
    }
    if args.retention_only {
        retention::figures(&bench, args.quick, &mut report).await?;
        return finish(&args, &report);
    }
    if args.cluster {
        cluster::figures(&noop_path, sizes.cluster_events, &mut report).await?;
        return finish(&args, &report);
    }
    let wants = |which: Only| args.only.is_empty() || args.only.contains(&which);
    let mut polyglot: Vec<(&str, Arc<Plugin>, Shape)> = Vec::new();
    for (lang, path, shape, which) in [
        ("Python", &args.python, Shape::Order, Only::Python),
        ("JavaScript", &args.javascript, Shape::User, Only::Javascript),
    ] {
        if let Some(path) = path.as_ref().filter(|_| wants(which)) {
            let (plugin, cold) = load(&bench.engine, path, Some(&cache)).await?;
            let (_, cached) = load(&bench.engine, path, Some(&cache)).await?;
            report.add(format!("start-up: {lang} plugin, cold compile"), cold, "ms", "");
            report.add(format!("start-up: {lang} plugin, from the artifact cache"), cached, "ms", "target < 1000 ms");
            polyglot.push((lang, plugin, shape));
        }
    }

    // 1. Throughput.
    let n = sizes.events;
    let mut costs = Vec::new();
    let mut plain = 0.0;
    if wants(Only::Plain) {
        let cost;
        (plain, cost) = bench.plain(n).await?;
        report.throughput(
            format!("throughput: plain redis-rs consumer, {n} events"),
            plain,
            "events/s",
            plain,
            format!("XREADGROUP COUNT {} + XACK, nothing else: the ceiling", plain::COUNT),
        );
        costs.push(("plain consumer".to_string(), cost));
    }
    let mut native = f64::NAN;
    if wants(Only::Native) {
        let cost;
        (native, cost) = bench.throughput("native", Arc::new(Native), n, Shape::Order).await?;
        report.throughput(
            format!("throughput: native consumer, {n} events"),
            native,
            "events/s",
            plain,
            "ferry's loop, no-op native handler",
        );
        costs.push(("native consumer".to_string(), cost));
    }
    if wants(Only::Rust) {
        let (rust, cost) =
            bench.throughput("rust", bench.runner(&noop, "rust", InstanceMode::Reuse), n, Shape::Order).await?;
        report.throughput(
            format!("throughput: Rust plugin, {n} events"),
            rust,
            "events/s",
            plain,
            format!("{}target >= 0.9x plain", vs_native(rust, native)),
        );
        costs.push(("Rust plugin".to_string(), cost));
    }
    for (lang, plugin, shape) in &polyglot {
        let m = sizes.polyglot_events;
        let (tp, cost) =
            bench.throughput(&lang.to_lowercase(), bench.runner(plugin, lang, InstanceMode::Reuse), m, *shape).await?;
        let target = if *lang == "Python" { 50_000 } else { 20_000 };
        report.throughput(
            format!("throughput: {lang} plugin, {m} events"),
            tp,
            "events/s",
            plain,
            format!("{}target >= {target}", vs_native(tp, native)),
        );
        costs.push((format!("{lang} plugin"), cost));
    }
    for (label, cost) in &costs {
        report.cost(label, cost);
    }
    // 1b. Contracts: validation on and off, and an upcast step per event.
    if wants(Only::Contracts) {
        contracts::figures(&bench, &noop, &args.guests, sizes.polyglot_events, &mut report).await?;
    }
    // 1c. Capabilities: state with the ack, outbound HTTP.
    if wants(Only::Capabilities) {
        capabilities::figures(&bench, &args.guests, sizes.polyglot_events, plain, &mut report).await?;
    }
    if !args.only.is_empty() {
        return finish(&args, &report);
    }

    // 2. Latency at a steady 5,000 events/s.
    let probe = Arc::new(Probe { inner: bench.runner(&noop, "latency", InstanceMode::Reuse), samples: Arc::default() });
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
            ferry::outbox::add(&mut pipe, "bench-latency", &sample_event(i));
            pipe.ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        sent += 10;
    }
    wait_handled(&bench, "latency", total).await;
    let _ = stop.send(true);
    let _ = task.await;
    let samples = probe.sorted_samples();
    report.add("latency at 5000 events/s: p50", percentile_ms(&samples, 0.50), "ms", "publish -> handled");
    report.add("latency at 5000 events/s: p99", percentile_ms(&samples, 0.99), "ms", "target < 2 ms");
    report.add("latency at 5000 events/s: max", percentile_ms(&samples, 1.0), "ms", "");

    // 2b. The PostgreSQL outbox relay (skipped when PostgreSQL is not installed).
    if args.only.is_empty()
        && let Err(e) = relay_figures(&bench, &noop, &sizes, &mut report).await
    {
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
    report.throughput(
        format!("fan-out: 4 Rust subscribers, {m} events"),
        4.0 * m as f64 / secs,
        "deliveries/s",
        plain,
        format!("{:.0} events/s through all four", m as f64 / secs),
    );

    // 3b. Retention: trimming passes under a steady inflow.
    retention::figures(&bench, args.quick, &mut report).await?;

    // 4. Invocation cost.
    let (fresh, reused) = invocation_cost(&bench, &noop, sizes.calls, Shape::Order).await;
    report.add("invocation: Rust, fresh instance per event", fresh, "us/event", "");
    report.add("invocation: Rust, reused instance", reused, "us/event", "");
    for (lang, plugin, shape) in &polyglot {
        let (fresh, reused) = invocation_cost(&bench, plugin, sizes.calls / 10, *shape).await;
        report.add(format!("invocation: {lang}, fresh instance per event"), fresh, "us/event", "");
        report.add(format!("invocation: {lang}, reused instance"), reused, "us/event", "");
    }

    // 5b. Hot-reload swap, 6. memory: a real host on a plugin directory.
    host_figures(&bench, &args, &cache, &sizes, &mut report).await?;

    // 7. Scaling with work.
    scaling(&bench, &noop, &args, &cache, &sizes, plain, &mut report).await?;

    finish(&args, &report)
}

/// Print the table and write the JSON.
fn finish(args: &BenchArgs, report: &Report) -> anyhow::Result<ExitCode> {
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report.rows)?)?;
    println!("{}", table(&report.rows));
    println!("results written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
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
    let host = ferry::host::Host::start(config.clone()).await?;
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
        let host = ferry::host::Host::start(config).await?;
        let watcher = ferry::reload::watch(host.clone())?;
        // Compile v2 into the cache first, as a deploy pipeline would with `ferry plugins check`.
        Plugin::load(&bench.engine, &recorder_v2, Some(cache), &LimitsConfig::default()).await?;
        let tmp = swap_dir.path().join("swap.new");
        std::fs::copy(&recorder_v2, &tmp)?;
        let published = tokio::spawn({
            let mut conn = conn.clone();
            async move {
                for i in 0..5000 {
                    let _ = ferry::outbox::publish(&mut conn, "bench-swap", &sample_event(i)).await;
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
            let last = ferry::consume::read::parse_entries("bench-swap-records", value);
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
    let mut out = vec![super::table::header(&["MEASURE", "VALUE", "UNIT", "VS PLAIN", "NOTE"])];
    for r in rows {
        let ratio = r.ratio_to_plain.map_or(String::new(), |x| format!("{x:.2}x"));
        out.push(vec![r.name.clone(), format!("{:.1}", r.value), r.unit.clone(), ratio, r.note.clone()]);
    }
    super::table::table(&out)
}

/// How cost grows with payload size, subscribers on one stream and plugins loaded.
async fn scaling(
    bench: &Bench,
    noop: &Arc<Plugin>,
    args: &BenchArgs,
    cache: &Cache,
    sizes: &Sizes,
    plain: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Payload size: the Rust plugin parses the JSON payload, so its work grows with it.
    let mut base: Option<f64> = None;
    for (bytes, n) in [100usize, 10 << 10, 1 << 20].into_iter().zip(sizes.payload_events) {
        let label = format!("payload-{bytes}");
        let runner = bench.runner(noop, &label, InstanceMode::Reuse);
        let (tp, cost) = bench.throughput(&label, runner, n, Shape::Padded(bytes)).await?;
        let total = cost.host_us + cost.redis_us;
        let per_kb = total / (bytes as f64 / 1024.0);
        let growth = match base {
            None => {
                base = Some(total);
                String::new()
            }
            Some(b) => {
                let (grew, bigger) = (total / b, bytes as f64 / 100.0);
                let flag = if grew > bigger { " FASTER THAN LINEAR" } else { "" };
                format!("; {grew:.1}x the 100 B cost for {bigger:.0}x the bytes{flag}")
            }
        };
        report.throughput(
            format!("scaling: payload {}, Rust plugin, {n} events", human_bytes(bytes)),
            tp,
            "events/s",
            plain,
            format!(
                "{:.1} MB/s; host {:.1} + Redis {:.1} us/event ({per_kb:.2} us/KB){growth}",
                tp * bytes as f64 / 1e6,
                cost.host_us,
                cost.redis_us
            ),
        );
    }

    // Backlog size: a subscriber that starts behind by 10k or 1M events drains it. The cost per
    // event should not grow with the backlog (the dedupe record grows, the reads do not).
    let mut small: Option<f64> = None;
    for n in sizes.backlog_events {
        let label = format!("backlog-{n}");
        let runner = bench.runner(noop, &label, InstanceMode::Reuse);
        let (tp, cost) = bench.throughput(&label, runner, n, Shape::Order).await?;
        let per_event = cost.host_us + cost.redis_us;
        let base = *small.get_or_insert(per_event);
        let flag = if per_event > 1.5 * base { " FASTER THAN LINEAR" } else { "" };
        report.throughput(
            format!("scaling: backlog of {n} events, Rust plugin"),
            tp,
            "events/s",
            plain,
            format!(
                "host {:.1} + Redis {:.1} us/event; {:.2}x the smallest backlog's cost{flag}",
                cost.host_us,
                cost.redis_us,
                per_event / base
            ),
        );
    }

    // Subscribers on one stream: deliveries/s with 1, 4 and 16 groups.
    let m = sizes.scaling_fanout_events;
    let mut one = None;
    let mut first_cost: Option<f64> = None;
    for k in [1usize, 4, 16] {
        let stream = format!("bench-scale-subs-{k}");
        let mut conn = bench.ctx.shared.clone();
        preload(&mut conn, &stream, m).await?;
        let subs: Vec<(String, Arc<dyn Invoke>)> = (0..k)
            .map(|i| {
                let name = format!("scale-{k}-{i}");
                let runner: Arc<dyn Invoke> = bench.runner(noop, &name, InstanceMode::Reuse);
                (name, runner)
            })
            .collect();
        let before = cost::sample(&mut conn).await?;
        let secs = bench.drain(&stream, subs, m).await?;
        let after = cost::sample(&mut conn).await?;
        let deliveries = k as f64 * m as f64 / secs;
        let c = cost::Cost::between(&before, &after, k * m);
        let vs_one = *one.get_or_insert(deliveries);
        let target = if k == 4 { "; target >= 0.8x of 1" } else { "" };
        // CPU per delivery should stay flat as subscribers are added.
        let per_delivery = c.host_us + c.redis_us;
        let flag =
            if per_delivery > 1.5 * *first_cost.get_or_insert(per_delivery) { " FASTER THAN LINEAR" } else { "" };
        report.throughput(
            format!("scaling: {k} Rust subscriber{} on one stream, {m} events", if k == 1 { "" } else { "s" }),
            deliveries,
            "deliveries/s",
            plain,
            format!(
                "{:.2}x the 1-subscriber rate{target}; host {:.1} + Redis {:.1} us/delivery{flag}",
                deliveries / vs_one,
                c.host_us,
                c.redis_us
            ),
        );
    }

    // Plugins loaded: start-up of a host (artifacts cached) and its memory.
    let noop_path = args.guests.join("fixture_noop.wasm");
    // Per-plugin cost at the previous size: growing by half again or more is flagged.
    let mut previous: Option<(f64, f64, f64)> = None;
    for k in [1usize, 20, 100] {
        let dir = tempfile::tempdir()?;
        for i in 0..k {
            std::fs::copy(&noop_path, dir.path().join(format!("load-{i}.wasm")))?;
        }
        let mut config = Config {
            redis: bench.url.clone(),
            plugins: dir.path().to_path_buf(),
            cache_dir: Some(cache.dir().to_path_buf()),
            stream: format!("bench-scale-plugins-{k}"),
            watch: false,
            ..Config::default()
        };
        config.admin.listen = String::new();
        let base = rss_mb();
        let started = Instant::now();
        let host = ferry::host::Host::start(config).await?;
        let start_ms = started.elapsed().as_secs_f64() * 1000.0;
        let running = host.plugins().await.iter().filter(|p| p.state == "running").count();
        anyhow::ensure!(running == k, "{running} of {k} plugins running");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let grown = rss_mb() - base;
        // What idle subscribers cost Redis: their reads, promotion and takeover timers.
        let mut conn = bench.ctx.shared.clone();
        let before = cost::sample(&mut conn).await?;
        let idle = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = cost::sample(&mut conn).await?;
        let idle_secs = idle.elapsed().as_secs_f64();
        host.stop_all().await;
        let idle_cost = cost::Cost::between(&before, &after, 1);
        let idle_calls: f64 = idle_cost.commands.iter().map(|c| c.1).sum::<f64>() / idle_secs;
        let idle_redis_pct = idle_cost.redis_us / idle_secs / 1e4;
        let (ms_each, mb_each, calls_each) = (start_ms / k as f64, grown / k as f64, idle_calls / k as f64);
        let (ms_before, mb_before, calls_before) = previous.unwrap_or((ms_each, mb_each, calls_each));
        previous = Some((ms_each, mb_each, calls_each));
        let flag = |each: f64, before: f64| if each > 1.5 * before { " FASTER THAN LINEAR" } else { "" };
        let plugins = if k == 1 { "plugin" } else { "plugins" };
        report.add(
            format!("scaling: {k} Rust {plugins} loaded: start-up"),
            start_ms,
            "ms",
            format!("{ms_each:.2} ms per plugin, artifacts cached{}", flag(ms_each, ms_before)),
        );
        report.add(
            format!("scaling: {k} Rust {plugins} loaded: memory"),
            grown,
            "MB RSS",
            format!("{mb_each:.2} MB per plugin, idle{}", flag(mb_each, mb_before)),
        );
        report.add(
            format!("scaling: {k} Rust {plugins} loaded: idle Redis load"),
            idle_calls,
            "calls/s",
            format!(
                "{calls_each:.1} calls/s per plugin; Redis CPU {idle_redis_pct:.1}% of a core{}",
                flag(calls_each, calls_before)
            ),
        );
    }
    Ok(())
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MB", b >> 20),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} B"),
    }
}

async fn relay_figures(bench: &Bench, noop: &Arc<Plugin>, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(ferry::postgres_server::PostgresServer::start)
        .await?
        .context("starting PostgreSQL")?;
    let (client, _) = ferry::relay::connect(&pg.url(), "ferry bench").await?;
    let table = ferry::relay::Table::default();
    ferry::relay::manage::init(&client, &table).await?;
    let relay_config = ferry::config::RelayConfig { postgres: pg.url(), ..Default::default() };
    let run_relay = |stream: &str| -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
        let settings = ferry::relay::Settings::from_config(&relay_config, &bench.url, stream)?;
        let relay = ferry::relay::Relay::new(settings, bench.ctx.metrics.relay.clone());
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
    let probe =
        Arc::new(Probe { inner: bench.runner(noop, "relay-latency", InstanceMode::Reuse), samples: Arc::default() });
    let (stop_sub, rx) = watch::channel(false);
    let sub = Arc::new(Subscriber::new("relay-latency".into(), active(probe.clone(), "bench-relay-latency")?));
    let sub_task = tokio::spawn(consume::run_stream(bench.ctx.clone(), sub, "bench-relay-latency".into(), rx));
    let (stop, task) = run_relay("bench-relay-latency")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = 1_000 * sizes.latency_secs as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut producer, _) = ferry::relay::connect(&pg.url(), "ferry bench producer").await?;
    for i in 0..total {
        tick.tick().await;
        let tx = producer.transaction().await?;
        let data = serde_json::json!({ "order_id": i, "sent_us": now_us() }).to_string();
        ferry::relay::add(&tx, &Event::new("OrderCreated", "bench", data)).await?;
        tx.commit().await?;
    }
    wait_handled(bench, "relay-latency", total).await;
    let _ = stop.send(());
    let _ = task.await;
    let _ = stop_sub.send(true);
    let _ = sub_task.await;
    let samples = probe.sorted_samples();
    let note = "commit -> handled, through PostgreSQL";
    report.add("relay latency at 1000 commits/s: p50", percentile_ms(&samples, 0.50), "ms", note);
    report.add("relay latency at 1000 commits/s: p99", percentile_ms(&samples, 0.99), "ms", "");
    drop(pg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::vs_native;

    #[test]
    fn without_a_native_row_there_is_no_ratio_to_it() {
        assert_eq!(vs_native(100.0, f64::NAN), "");
        assert_eq!(vs_native(85.0, 100.0), "0.85x native; ");
    }
}
