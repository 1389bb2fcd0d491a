//! The honest ceiling: a plain redis-rs consumer that reads `XREADGROUP COUNT 500`, parses the
//! reply into entries and acknowledges the batch with one `XACK`, one after the other. No
//! envelope parsing, no dedupe, no scripts, no handler. Every throughput row is reported as a
//! ratio to it, so the figures show what ferry costs over reading and acking alone.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::streams::StreamReadReply;

/// Entries per read, as ferry's default `read.count`.
pub const COUNT: usize = 500;

const GROUP: &str = "plain";

/// Read and acknowledge `n` entries of `stream` (already preloaded) through a new group;
/// returns the seconds it took.
pub async fn drain(url: &str, stream: &str, n: usize) -> anyhow::Result<f64> {
    let client = redis::Client::open(url).context("plain consumer: Redis URL")?;
    let mut conn = client.get_multiplexed_async_connection().await.context("plain consumer: connecting")?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(&mut conn)
        .await
        .context("plain consumer: creating its group")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let started = Instant::now();
    let mut acked = 0;
    let mut fields = 0usize;
    while acked < n {
        anyhow::ensure!(Instant::now() < deadline, "plain consumer on {stream} did not finish");
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("bench")
            .arg("COUNT")
            .arg(COUNT)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .context("plain consumer: XREADGROUP")?;
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| {
                fields += e.map.len();
                e.id
            })
            .collect();
        if ids.is_empty() {
            continue;
        }
        let _: usize = redis::cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .context("plain consumer: XACK")?;
        acked += ids.len();
    }
    let secs = started.elapsed().as_secs_f64();
    // The parsed fields are used, so the parsing is not optimised away.
    anyhow::ensure!(fields >= n, "plain consumer parsed {fields} fields for {n} entries");
    Ok(secs)
}
