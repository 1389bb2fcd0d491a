//! The fan-out row of `ferry bench` (section 3): 4 Rust subscribers on one stream.

use std::sync::Arc;

use ferry::config::InstanceMode;
use ferry::handler::Invoke;
use ferry::plugin::Plugin;

use super::harness::{Bench, preload};
use super::report::Report;

/// Deliveries/s of 4 subscribers draining `m` preloaded events; `plain` is the ceiling.
pub(super) async fn figures(
    bench: &Bench,
    noop: &Arc<Plugin>,
    m: usize,
    plain: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut conn = bench.ctx.shared.clone();
    preload(&mut conn, "bench-fanout", m).await?;
    let subs: Vec<(String, Arc<dyn Invoke>)> = (0..4)
        .map(|i| {
            let name = format!("fan-{i}");
            let runner: Arc<dyn Invoke> = bench.runner(noop, &name, InstanceMode::Reuse);
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
    Ok(())
}
