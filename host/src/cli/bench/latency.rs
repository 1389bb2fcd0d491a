//! The latency rows of `ferry bench` (section 2): publish → handled at a steady 5,000
//! events/s through the Rust plugin, measured by a probe around its runner.

use std::sync::Arc;
use std::time::Duration;

use ferry::stop::Stop;

use ferry::config::InstanceMode;
use ferry::consume::{self, Subscriber};
use ferry::plugin::Plugin;

use super::harness::{Bench, Probe, active, sample_event, wait_handled};
use super::report::{Report, percentile_ms};

/// p50, p99 and max latency over `secs` seconds of publishing.
pub(super) async fn figures(bench: &Bench, noop: &Arc<Plugin>, secs: u64, report: &mut Report) -> anyhow::Result<()> {
    let probe = Arc::new(Probe { inner: bench.runner(noop, "latency", InstanceMode::Reuse), samples: Arc::default() });
    let (stop, rx) = Stop::channel();
    let sub = Arc::new(Subscriber::new("latency".into(), active(probe.clone(), "bench-latency")?));
    let task = tokio::spawn(consume::run_stream(bench.ctx.clone(), sub, "bench-latency".into(), rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = bench.ctx.shared.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let total = 5_000 * secs as usize;
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
    wait_handled(bench, "latency", total).await;
    let _ = stop.send(true);
    let _ = task.await;
    let samples = probe.sorted_samples();
    report.add("latency at 5000 events/s: p50", percentile_ms(&samples, 0.50), "ms", "publish -> handled");
    report.add("latency at 5000 events/s: p99", percentile_ms(&samples, 0.99), "ms", "target < 2 ms");
    report.add("latency at 5000 events/s: max", percentile_ms(&samples, 1.0), "ms", "");
    Ok(())
}
