//! The hot-reload row of `ferry bench` (section 5b): from the rename of a new plugin version
//! into a running host's directory to the first event that version handles.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry::config::LimitsConfig;
use ferry::plugin::Plugin;
use ferry::plugin::cache::Cache;

use super::harness::{Bench, sample_event};
use super::memory::host_config;
use super::report::Report;

/// The swap time of the recorder fixture to its v2 (skipped when they are not built), while
/// events arrive every millisecond.
pub(super) async fn figures(bench: &Bench, guests: &Path, cache: &Cache, report: &mut Report) -> anyhow::Result<()> {
    let recorder = guests.join("fixture_recorder.wasm");
    let recorder_v2 = guests.join("fixture_recorder_v2.wasm");
    if !(recorder.exists() && recorder_v2.exists()) {
        return Ok(());
    }
    let swap_dir = tempfile::tempdir()?;
    std::fs::write(
        swap_dir.path().join("swap.toml"),
        "start = \"beginning\"\npublish_streams = [\"bench-swap-records\"]\n[config]\nrecord_to = \"bench-swap-records\"\n",
    )?;
    std::fs::copy(&recorder, swap_dir.path().join("swap.wasm"))?;
    let host = ferry::host::Host::start(host_config(bench, swap_dir.path(), cache, "bench-swap")).await?;
    let watcher = ferry::reload::watch(host.clone())?;
    // Compile v2 into the cache first, as a deploy pipeline would with `ferry plugins check`.
    Plugin::load(&bench.engine, &recorder_v2, Some(cache), &LimitsConfig::default()).await?;
    let tmp = swap_dir.path().join("swap.new");
    std::fs::copy(&recorder_v2, &tmp)?;
    let mut conn = bench.ctx.shared.clone();
    let published = tokio::spawn({
        let mut conn = conn.clone();
        async move {
            for i in 0..5000 {
                let _ = ferry::outbox::publish(&mut conn, "bench-swap", &sample_event(i)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renamed = Instant::now();
    std::fs::rename(&tmp, swap_dir.path().join("swap.wasm"))?;
    let mut swap_ms = None;
    while renamed.elapsed() < Duration::from_secs(30) {
        if last_record_is_v2(&mut conn).await? {
            swap_ms = Some(renamed.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    published.abort();
    drop(watcher);
    host.stop_all().await;
    report.add(
        "hot reload: rename to first event on the new version",
        swap_ms.unwrap_or(f64::NAN),
        "ms",
        "Rust plugin; target < 250 ms",
    );
    Ok(())
}

/// Whether the recorder's last record was written by its v2.
async fn last_record_is_v2(conn: &mut ferry::connection::Conn) -> anyhow::Result<bool> {
    let value: redis::Value = redis::cmd("XREVRANGE")
        .arg("bench-swap-records")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let last = ferry::consume::read::parse_entries("bench-swap-records", value);
    Ok(last.first().and_then(|e| e.field("data")).is_some_and(|d| String::from_utf8_lossy(d).contains("\"v2\"")))
}
