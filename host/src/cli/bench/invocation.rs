//! The invocation rows of `ferry bench` (section 4): what one handler call costs with a
//! fresh instance per event and with a reused instance, for each plugin.

use std::sync::Arc;
use std::time::Instant;

use ferry::config::InstanceMode;
use ferry::handler::{Invoke, Job};
use ferry::plugin::Plugin;

use super::harness::{Bench, Shape, shaped_event};
use super::report::Report;
use super::startup::Polyglot;

/// µs per call, fresh and reused, of the Rust plugin (`calls` calls) and each polyglot
/// plugin (a tenth as many).
pub(super) async fn figures(
    bench: &Bench,
    noop: &Arc<Plugin>,
    polyglot: &[Polyglot],
    calls: usize,
    report: &mut Report,
) {
    let (fresh, reused) = invocation_cost(bench, noop, calls, Shape::Order).await;
    report.add("invocation: Rust, fresh instance per event", fresh, "us/event", "");
    report.add("invocation: Rust, reused instance", reused, "us/event", "");
    for (lang, plugin, shape) in polyglot {
        let (fresh, reused) = invocation_cost(bench, plugin, calls / 10, *shape).await;
        report.add(format!("invocation: {lang}, fresh instance per event"), fresh, "us/event", "");
        report.add(format!("invocation: {lang}, reused instance"), reused, "us/event", "");
    }
}

/// µs per call of `plugin`, with a fresh instance per event and with a reused one.
async fn invocation_cost(bench: &Bench, plugin: &Arc<Plugin>, calls: usize, shape: Shape) -> (f64, f64) {
    let jobs: Vec<Arc<Job>> = (0..calls)
        .map(|i| {
            Arc::new(Job {
                event: shaped_event(i, shape),
                stream: "bench".into(),
                entry_id: format!("{i}-0"),
                attempt: 1,
                prefetched: None,
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
