//! The scaling rows of `ferry bench` (section 7): how cost grows with payload size, backlog
//! size, subscribers on one stream and plugins loaded. A cost per unit that grows by half
//! again or more where it should stay flat is flagged `FASTER THAN LINEAR`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::config::{Config, InstanceMode};
use ferry::handler::Invoke;
use ferry::plugin::Plugin;
use ferry::plugin::cache::Cache;

use super::Sizes;
use super::cost;
use super::harness::{Bench, Shape, preload, rss_mb};
use super::report::{Report, human_bytes};

/// Every scaling row; `plain` is the plain consumer's events/s, the ceiling.
pub(super) async fn figures(
    bench: &Bench,
    noop: &Arc<Plugin>,
    guests: &Path,
    cache: &Cache,
    sizes: &Sizes,
    plain: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    payload(bench, noop, sizes.payload_events, plain, report).await?;
    backlog(bench, noop, sizes.backlog_events, plain, report).await?;
    subscribers(bench, noop, sizes.scaling_fanout_events, plain, report).await?;
    plugins_loaded(bench, &guests.join("fixture_noop.wasm"), cache, report).await
}

/// Payload size: the Rust plugin parses the JSON payload, so its work grows with it.
async fn payload(
    bench: &Bench,
    noop: &Arc<Plugin>,
    events: [usize; 3],
    plain: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut base: Option<f64> = None;
    for (bytes, n) in [100usize, 10 << 10, 1 << 20].into_iter().zip(events) {
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

    Ok(())
}

/// Backlog size: a subscriber that starts behind by 10k or 1M events drains it. The cost per
/// event should not grow with the backlog (the dedupe record grows, the reads do not).
async fn backlog(
    bench: &Bench,
    noop: &Arc<Plugin>,
    events: [usize; 2],
    plain: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut small: Option<f64> = None;
    for n in events {
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

    Ok(())
}

/// Subscribers on one stream: deliveries/s with 1, 4 and 16 groups, `m` events each.
async fn subscribers(
    bench: &Bench,
    noop: &Arc<Plugin>,
    m: usize,
    plain: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
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

    Ok(())
}

/// Plugins loaded: start-up of a host (artifacts cached), its memory and the load its idle
/// subscribers put on Redis, with 1, 20 and 100 copies of the no-op plugin at `noop`.
async fn plugins_loaded(bench: &Bench, noop: &Path, cache: &Cache, report: &mut Report) -> anyhow::Result<()> {
    // Per-plugin cost at the previous size: growing by half again or more is flagged.
    let mut previous: Option<(f64, f64, f64)> = None;
    for k in [1usize, 20, 100] {
        let loaded = load_host(bench, noop, cache, k).await?;
        let (start_ms, grown, idle_calls) = (loaded.start_ms, loaded.grown_mb, loaded.idle_calls);
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
                "{calls_each:.1} calls/s per plugin; Redis CPU {:.1}% of a core{}",
                loaded.idle_redis_pct,
                flag(calls_each, calls_before)
            ),
        );
    }
    Ok(())
}

/// What one host with `k` plugins loaded cost.
struct Loaded {
    /// From `Host::start` to every plugin running.
    start_ms: f64,
    /// RSS growth once started.
    grown_mb: f64,
    /// Redis calls/s of the idle subscribers (reads, promotion and takeover timers).
    idle_calls: f64,
    /// Redis CPU of the idle subscribers, in % of a core.
    idle_redis_pct: f64,
}

/// Start a host with `k` copies of `noop` (artifacts cached), measure it idle, stop it.
async fn load_host(bench: &Bench, noop: &Path, cache: &Cache, k: usize) -> anyhow::Result<Loaded> {
    let dir = tempfile::tempdir()?;
    for i in 0..k {
        std::fs::copy(noop, dir.path().join(format!("load-{i}.wasm")))?;
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
    let grown_mb = rss_mb() - base;
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
    Ok(Loaded { start_ms, grown_mb, idle_calls, idle_redis_pct: idle_cost.redis_us / idle_secs / 1e4 })
}
