//! Throughput rows of `ferry bench` (section 1): preloaded events drained by the plain
//! redis-rs consumer (the ceiling every throughput row is a ratio to), ferry's loop with a
//! native handler, the Rust plugin and the polyglot plugins given; then each run's cost.

use std::sync::Arc;

use ferry::config::InstanceMode;
use ferry::plugin::Plugin;

use super::harness::{Bench, Native, Shape};
use super::report::{Report, vs_native};
use super::startup::Polyglot;
use super::{Only, plain};

/// The throughput rows `wants` selects, `n` events each (`polyglot_events` for the polyglot
/// plugins), then their cost rows. Returns the plain consumer's events/s (0 when not run).
pub(super) async fn figures(
    bench: &Bench,
    noop: &Arc<Plugin>,
    polyglot: &[Polyglot],
    (n, polyglot_events): (usize, usize),
    wants: impl Fn(Only) -> bool,
    report: &mut Report,
) -> anyhow::Result<f64> {
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
            bench.throughput("rust", bench.runner(noop, "rust", InstanceMode::Reuse), n, Shape::Order).await?;
        report.throughput(
            format!("throughput: Rust plugin, {n} events"),
            rust,
            "events/s",
            plain,
            format!("{}target >= 0.9x plain", vs_native(rust, native)),
        );
        costs.push(("Rust plugin".to_string(), cost));
    }
    for (lang, plugin, shape) in polyglot {
        let m = polyglot_events;
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
    Ok(plain)
}
