//! The memory rows of `ferry bench` (section 6): a real host on a plugin directory, with one
//! Rust plugin and with many, idle and while they drain a backlog.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry::config::{Config, Start};
use ferry::metrics;
use ferry::plugin::cache::Cache;

use super::harness::{Bench, preload, rss_mb};
use super::report::Report;

/// A host's configuration for the benchmark: plugins from `plugins`, artifacts from `cache`,
/// every subscriber reading `stream` from the beginning, no admin endpoint.
pub(super) fn host_config(bench: &Bench, plugins: &Path, cache: &Cache, stream: &str) -> Config {
    let mut config = Config {
        redis: bench.url.clone(),
        plugins: plugins.to_path_buf(),
        cache_dir: Some(cache.dir().to_path_buf()),
        stream: stream.into(),
        ..Config::default()
    };
    config.admin.listen = String::new();
    config.defaults.start = Some(Start::Beginning);
    config
}

/// Host memory with 1 and `k` copies of the no-op plugin at `noop`, idle, then under a load
/// of `n` events for each.
pub(super) async fn figures(
    bench: &Bench,
    noop: &Path,
    cache: &Cache,
    (k, n): (usize, usize),
    report: &mut Report,
) -> anyhow::Result<()> {
    let base = rss_mb();
    let dir = tempfile::tempdir()?;
    let config = host_config(bench, dir.path(), cache, "bench-memory");
    std::fs::copy(noop, dir.path().join("mem-0.wasm"))?;
    let host = ferry::host::Host::start(config).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one = rss_mb();
    report.add("memory: host with 1 Rust plugin, idle", one - base, "MB RSS", "growth over the benchmark process");
    for i in 1..k {
        std::fs::copy(noop, dir.path().join(format!("mem-{i}.wasm")))?;
        host.apply(&dir.path().join(format!("mem-{i}.wasm"))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let many = rss_mb();
    report.add(
        format!("memory: host with {k} Rust plugins, idle"),
        many - base,
        "MB RSS",
        format!("{:.1} MB per plugin; target < 10", (many - one) / (k - 1) as f64),
    );
    let mut conn = bench.ctx.shared.clone();
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
    Ok(())
}
