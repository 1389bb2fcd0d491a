//! The benchmark's harness: the `redis-server` and consumer context every section runs on,
//! the handlers it measures beside plugins (a native no-op, a latency probe), the events it
//! preloads, and draining a stream through real subscribers.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ferry::stop::Stop;

use ferry::config::{InstanceMode, LimitsConfig, Start, SubscriberConfig};
use ferry::consume::{self, Active, Context, RedisHealth, Subscriber};
use ferry::event::Event;
use ferry::handler::Subscription;
use ferry::handler::{Handling, Invoke, Job, Outcome};
use ferry::metrics::{self, Metrics};
use ferry::plugin::cache::Cache;
use ferry::plugin::capability::Grants;
use ferry::plugin::capability::seam::Services;
use ferry::plugin::invoke::Runner;
use ferry::plugin::{Engine, Plugin};

use super::{cost, plain};

/// The native ceiling: acknowledges every event without WebAssembly.
pub(super) struct Native;

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
pub(super) struct Probe {
    pub(super) inner: Arc<dyn Invoke>,
    pub(super) samples: Arc<Mutex<Vec<u64>>>,
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
    pub(super) fn sorted_samples(&self) -> Vec<u64> {
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        samples.sort_unstable();
        samples
    }
}

/// Wait (at most a minute) until subscriber `name` has handled `total` events.
pub(super) async fn wait_handled(bench: &Bench, name: &str, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics::count(&bench.ctx.metrics.handled, name) < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Now, in µs since the Unix epoch (what a payload's `sent_us` holds).
pub(super) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// This process's resident memory, in MB.
pub(super) fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The payload shape a benchmarked handler expects.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    /// `OrderCreated` (the noop and Python inventory plugins).
    Order,
    /// `UserRegistered` (the JavaScript welcome plugin).
    User,
    /// `OrderCreated` with its JSON payload padded to about this many bytes.
    Padded(usize),
}

/// A realistic event with a ~100-byte JSON payload.
pub(super) fn sample_event(i: usize) -> Event {
    shaped_event(i, Shape::Order)
}

/// Event `i` of `shape`.
pub(super) fn shaped_event(i: usize, shape: Shape) -> Event {
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

/// Add `n` events of the default shape to `stream`.
pub(super) async fn preload(conn: &mut ferry::connection::Conn, stream: &str, n: usize) -> anyhow::Result<()> {
    preload_shaped(conn, stream, n, Shape::Order).await
}

/// Add `n` events of `shape` to `stream`, pipelined.
pub(super) async fn preload_shaped(
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

/// A benchmarked subscriber's settings: the defaults, reading from the beginning.
pub(super) fn settings() -> anyhow::Result<ferry::config::Effective> {
    Ok(SubscriberConfig { start: Some(Start::Beginning), ..SubscriberConfig::default() }.resolve()?)
}

/// `invoke` as a subscriber of every event on `stream`.
pub(super) fn active(invoke: Arc<dyn Invoke>, stream: &str) -> anyhow::Result<Active> {
    let every = Subscription { event_type: "*".into(), versions: vec![], stream: None };
    Ok(Active { runner: invoke, subscriptions: vec![(stream.to_string(), every)], settings: settings()? })
}

/// The benchmark's consumer context on `redis`/`shared`, with a schema registry and
/// upcasters when given.
pub(super) fn context(
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

/// What every section runs on: the server, the consumer context, the engine.
pub(super) struct Bench {
    pub(super) url: String,
    pub(super) ctx: Arc<Context>,
    pub(super) engine: Engine,
}

impl Bench {
    /// Run `subscribers` on `stream` until each has handled `n` events; returns the seconds.
    pub(super) async fn drain(
        &self,
        stream: &str,
        subscribers: Vec<(String, Arc<dyn Invoke>)>,
        n: usize,
    ) -> anyhow::Result<f64> {
        let every = |invoke| active(invoke, stream);
        self.drain_with(stream, subscribers, n, every).await
    }

    /// [`Bench::drain`] with each subscriber's [`Active`] made by `active`.
    pub(super) async fn drain_with(
        &self,
        stream: &str,
        subscribers: Vec<(String, Arc<dyn Invoke>)>,
        n: usize,
        active: impl Fn(Arc<dyn Invoke>) -> anyhow::Result<Active>,
    ) -> anyhow::Result<f64> {
        let (stop, rx) = Stop::channel();
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

    /// A runner of `plugin` as subscriber `name`, with instance mode `mode`.
    /// A runner of `plugin` granted state (on the bench's Redis) and nothing else: the Python
    /// and JavaScript examples keep state on every event; a plugin that never calls it pays
    /// nothing for the grant.
    pub(super) fn runner(&self, plugin: &Arc<Plugin>, name: &str, mode: InstanceMode) -> Arc<Runner> {
        let limits = LimitsConfig { instance_mode: mode, ..LimitsConfig::default() };
        let settings = SubscriberConfig {
            limits: Some(limits),
            state: Some(ferry::config::StateSetting::On(true)),
            ..Default::default()
        }
        .fill();
        let services = Services { redis: Some(self.ctx.shared.clone()), ..Default::default() };
        let grants = Arc::new(Grants::with(name, &plugin.version, &settings, &services));
        Arc::new(Runner::new(self.engine.clone(), plugin.clone(), grants))
    }

    /// Events/s through one subscriber on a stream preloaded with `n` events, and the cost.
    pub(super) async fn throughput(
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
    pub(super) async fn plain(&self, n: usize) -> anyhow::Result<(f64, cost::Cost)> {
        let stream = "bench-plain";
        let mut conn = self.ctx.shared.clone();
        preload_shaped(&mut conn, stream, n, Shape::Order).await?;
        let before = cost::sample(&mut conn).await?;
        let secs = plain::drain(&self.url, stream, n).await?;
        let after = cost::sample(&mut conn).await?;
        Ok((n as f64 / secs, cost::Cost::between(&before, &after, n)))
    }
}

/// Load the plugin at `path`; returns it and the milliseconds it took.
pub(super) async fn load(engine: &Engine, path: &Path, cache: Option<&Cache>) -> anyhow::Result<(Arc<Plugin>, f64)> {
    let started = Instant::now();
    let plugin = Plugin::load(engine, path, cache, &LimitsConfig::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((plugin, started.elapsed().as_secs_f64() * 1000.0))
}
