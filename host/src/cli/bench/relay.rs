//! The relay rows of `ferry bench` (section 2b, skipped when PostgreSQL is not installed):
//! rows/s from a preloaded PostgreSQL outbox table to the stream, and commit → handled
//! latency at 1,000 commits/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry::stop::Stop;

use ferry::config::InstanceMode;
use ferry::consume::{self, Subscriber};
use ferry::event::Event;
use ferry::metrics;
use ferry::plugin::Plugin;

use super::Sizes;
use super::harness::{Bench, Probe, active, now_us, wait_handled};
use super::report::{Report, percentile_ms};

/// The relay's throughput and latency on a throwaway PostgreSQL.
pub(super) async fn figures(
    bench: &Bench,
    noop: &Arc<Plugin>,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(ferry_test_kit::postgres_server::PostgresServer::start)
        .await?
        .context("starting PostgreSQL")?;
    let (client, _) = ferry::relay::connect(&pg.url(), "ferry bench").await?;
    let table = ferry::relay::Table::default();
    ferry::relay::manage::init(&client, &table).await?;
    let relay_config = ferry::config::RelayConfig { postgres: pg.url(), ..Default::default() };
    let run_relay = |stream: &str| start(bench, &relay_config, stream);
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
    let (stop_sub, rx) = Stop::channel();
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

/// A relay from the outbox table to `stream`, on a task; send on the sender to stop it.
fn start(
    bench: &Bench,
    config: &ferry::config::RelayConfig,
    stream: &str,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    let settings = ferry::relay::Settings::from_config(config, &bench.url, stream)?;
    let relay = ferry::relay::Relay::new(settings, bench.ctx.metrics.relay.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok((stop, task))
}
