//! One clock for everything hosts compare with each other: Redis's.
//!
//! Leases of runs, dedupe windows and retry due times are written by one host and read by
//! others, so they must be measured on one clock. Each host's own clock may be off by any
//! amount (a host two hours ahead would prune every other host's dedupe records on each
//! settle, and take over live runs); Redis's `TIME` is the same for every host that talks to
//! it. [`now_ms`] is this process's wall clock corrected by the offset to Redis's clock, as
//! last measured by [`sync`] (the host measures at start and every [`SYNC_EVERY`]); until a
//! first measurement it is the process's own clock. The error is half a round trip plus the
//! drift between two measurements: milliseconds, far inside any lease or window.
//!
//! On a Redis Cluster `TIME` is asked of one node: the nodes' clocks must agree with each
//! other (they are assumed to, as Redis Cluster itself assumes for its timeouts).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionLike;

/// How often a running host measures the offset again.
pub const SYNC_EVERY: Duration = Duration::from_secs(5);

/// Redis's clock minus this process's, ms.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// This process's own wall clock, ms since the Unix epoch.
fn local_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch on Redis's clock (as last measured).
pub fn now_ms() -> u64 {
    u64::try_from(local_ms() + OFFSET_MS.load(Ordering::Relaxed)).unwrap_or(0)
}

/// The current offset (Redis minus this process), ms.
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// Measure Redis's clock with `TIME` and adopt the offset; returns it (ms).
pub async fn sync<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<i64> {
    let before = local_ms();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    let after = local_ms();
    let redis_ms = secs * 1000 + micros / 1000;
    let offset = redis_ms - (before + after) / 2;
    let previous = OFFSET_MS.swap(offset, Ordering::Relaxed);
    if (offset - previous).abs() > 1000 {
        tracing::info!(offset_ms = offset, "this host's clock differs from Redis's; ferry uses Redis's");
    }
    Ok(offset)
}
