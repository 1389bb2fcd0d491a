//! `ferry bench` rows for the handler capabilities of `ferry:plugin@0.2.0` (issue 25): the
//! Rust counter fixture doing one state `get` + `set` per event (committed with the ack),
//! the same plugin doing the same work without state (so the two differ by the state alone;
//! target: state at most 1.3× the CPU per event), and the fetcher fixture making one HTTP
//! call per event to a local keep-alive server. Each as events/s against the plain redis-rs
//! consumer, with its CPU per event.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cost;
use super::harness::{Bench, Shape};
use super::report::Report;
use ferry::config::{HttpConfig, Start, StateSetting, SubscriberConfig};
use ferry::consume::Active;
use ferry::event::Event;
use ferry::handler::{Invoke, Subscription};
use ferry::plugin::Plugin;
use ferry::plugin::capability::Grants;
use ferry::plugin::capability::seam::Services;
use ferry::plugin::invoke::Runner;

/// Target of the state row: CPU per event with state over the same plugin without.
const STATE_TARGET: f64 = 1.3;

/// A subscriber of `plugin` on every event of its stream, granted what `settings` say, with
/// the host's services (state reads on the bench's shared connection).
fn subscriber(
    bench: &Bench,
    plugin: &Arc<Plugin>,
    name: &str,
    settings: SubscriberConfig,
) -> anyhow::Result<(Arc<dyn Invoke>, ferry::config::Effective)> {
    let settings = SubscriberConfig { start: Some(Start::Beginning), ..settings }.resolve()?;
    let services = Services {
        contracts: None,
        redis: Some(bench.ctx.shared.clone()),
        http_metrics: Some(bench.ctx.metrics.http.clone()),
        ..Services::default()
    };
    let grants = Arc::new(Grants::with(name, &plugin.version, &settings, &services));
    Ok((Arc::new(Runner::new(bench.engine.clone(), plugin.clone(), grants)), settings))
}

/// Events/s and cost of `invoke` (with `settings`) on `n` events of `stream`, preloaded.
async fn measure(
    bench: &Bench,
    stream: &str,
    name: &str,
    (invoke, settings): (Arc<dyn Invoke>, ferry::config::Effective),
    n: usize,
) -> anyhow::Result<(f64, cost::Cost)> {
    let mut conn = bench.ctx.shared.clone();
    let before = cost::sample(&mut conn).await?;
    let every = Subscription { event_type: "*".into(), versions: vec![], stream: None };
    let active = |runner| -> anyhow::Result<Active> {
        Ok(Active { runner, subscriptions: vec![(stream.to_string(), every.clone())], settings: settings.clone() })
    };
    let secs = bench.drain_with(stream, vec![(name.to_string(), invoke)], n, active).await?;
    let after = cost::sample(&mut conn).await?;
    Ok((n as f64 / secs, cost::Cost::between(&before, &after, n)))
}

/// The counter fixture in benchmark mode `mode` (`"state"` or `"plain"`).
fn counter_settings(mode: &str) -> SubscriberConfig {
    SubscriberConfig {
        config: Some(BTreeMap::from([("bench".to_string(), mode.to_string())])),
        state: (mode == "state").then_some(StateSetting::On(true)),
        ..SubscriberConfig::default()
    }
}

/// The capability rows; `plain` is the plain consumer's events/s (0 when not measured).
pub async fn figures(bench: &Bench, guests: &Path, n: usize, plain: f64, report: &mut Report) -> anyhow::Result<()> {
    let load = async |file: &str| {
        let path = guests.join(file);
        let limits = ferry::config::LimitsConfig::default();
        Plugin::load(&bench.engine, &path, None, &limits).await.with_context(|| format!("loading {}", path.display()))
    };
    let counter = load("fixture_counter.wasm").await?;
    let total = |c: &cost::Cost| c.host_us + c.redis_us;
    let mut rows = Vec::new();
    for mode in ["plain", "state"] {
        let stream = format!("bench-counter-{mode}");
        let mut conn = bench.ctx.shared.clone();
        super::harness::preload_shaped(&mut conn, &stream, n, Shape::Order).await?;
        let name = format!("counter-{mode}");
        let sub = subscriber(bench, &counter, &name, counter_settings(mode))?;
        rows.push(measure(bench, &stream, &name, sub, n).await?);
    }
    let (with, with_cost) = rows.pop().context("the state row")?;
    let (without, without_cost) = rows.pop().context("the no-state row")?;
    report.throughput(
        format!("capabilities: Rust plugin, no state, {n} events"),
        without,
        "events/s",
        plain,
        "the counter fixture's benchmark mode without its state calls",
    );
    report.throughput(
        format!("capabilities: Rust plugin, one state get + set per event, {n} events"),
        with,
        "events/s",
        plain,
        "written with the ack by the settle script",
    );
    report.cost("capabilities: no state", &without_cost);
    report.cost("capabilities: state get + set", &with_cost);
    let ratio = total(&with_cost) / total(&without_cost).max(f64::MIN_POSITIVE);
    let met = if ratio <= STATE_TARGET { "met" } else { "NOT MET" };
    report.add(
        "capabilities: state / no state, CPU per event",
        ratio,
        "x",
        format!("host + Redis CPU; target <= {STATE_TARGET}x: {met}"),
    );

    let server = Server::start().await?;
    let fetcher = load("fixture_fetcher.wasm").await?;
    let stream = "bench-http";
    let mut conn = bench.ctx.shared.clone();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let data = serde_json::json!({"url": server.url(&format!("/orders/{i}")), "method": "GET"});
            ferry::outbox::add(&mut pipe, stream, &Event::new("Fetch", "orders", data.to_string()));
            pipe.ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let grant = HttpConfig { allow: vec![server.url("")], ..HttpConfig::default() };
    let sub = subscriber(bench, &fetcher, "fetcher", SubscriberConfig { http: Some(grant), ..Default::default() })?;
    let (http, http_cost) = measure(bench, stream, "fetcher", sub, n).await?;
    server.stop();
    let vs_without = total(&http_cost) / total(&without_cost).max(f64::MIN_POSITIVE);
    report.throughput(
        format!("capabilities: Rust plugin, one HTTP call per event, {n} events"),
        http,
        "events/s",
        plain,
        format!("GET to a local keep-alive server; {vs_without:.1}x the no-state plugin's CPU per event"),
    );
    report.cost("capabilities: one HTTP call", &http_cost);
    Ok(())
}

/// A local HTTP/1.1 server answering every request `200 ok`, keeping connections alive.
struct Server {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn));
            }
        });
        Ok(Self { port, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Answer each request on `conn` (bodiless: the benchmark sends GETs) until it closes.
async fn answer(mut conn: tokio::net::TcpStream) {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = conn.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if conn.write_all(OK).await.is_err() {
                return;
            }
        }
    }
}
