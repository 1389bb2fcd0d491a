//! Start-up rows of `ferry bench` (section 5, measured first so the cold compile is really
//! cold): each plugin loaded once with an empty artifact cache and once from it.

use std::path::Path;
use std::sync::Arc;

use ferry::plugin::Plugin;
use ferry::plugin::cache::Cache;

use super::harness::{Bench, Shape, load};
use super::report::Report;

/// A polyglot plugin the throughput and invocation sections measure beside the Rust one:
/// its language, the plugin, and the payload its handler expects.
pub(super) type Polyglot = (&'static str, Arc<Plugin>, Shape);

/// The Rust (no-op) plugin's cold and cached start-up; returns the plugin.
pub(super) async fn rust(
    bench: &Bench,
    path: &Path,
    cache: &Cache,
    report: &mut Report,
) -> anyhow::Result<Arc<Plugin>> {
    let (noop, cold) = load(&bench.engine, path, Some(cache)).await?;
    let (_, cached) = load(&bench.engine, path, Some(cache)).await?;
    report.add("start-up: Rust plugin, cold compile", cold, "ms", "");
    report.add("start-up: Rust plugin, from the artifact cache", cached, "ms", "");
    Ok(noop)
}

/// The Python and JavaScript plugins' start-up, for those given: `(language, path, shape)`.
pub(super) async fn polyglot(
    bench: &Bench,
    plugins: [(&'static str, Option<&Path>, Shape); 2],
    cache: &Cache,
    report: &mut Report,
) -> anyhow::Result<Vec<Polyglot>> {
    let mut polyglot = Vec::new();
    for (lang, path, shape) in plugins {
        if let Some(path) = path {
            let (plugin, cold) = load(&bench.engine, path, Some(cache)).await?;
            let (_, cached) = load(&bench.engine, path, Some(cache)).await?;
            report.add(format!("start-up: {lang} plugin, cold compile"), cold, "ms", "");
            report.add(format!("start-up: {lang} plugin, from the artifact cache"), cached, "ms", "target < 1000 ms");
            polyglot.push((lang, plugin, shape));
        }
    }
    Ok(polyglot)
}
