//! Safe trimming: retention (`max_len`, `max_age`) that keeps up with any inflow and never
//! removes an entry still pending or not yet delivered to every consumer group.
//!
//! Redis 7.0 has no "acked only" trim, so the safe floor is computed from all groups of the
//! stream (ferry's and anyone else's, including groups of removed plugins, whose events wait):
//! for each group, its oldest pending entry, or the entry after its last delivered one. An
//! entry below every group's floor has been delivered to and settled by every group. Ferry's
//! own retry streams are always trimmed to their floor.
//!
//! A pass is a loop of `trim.lua` calls, each one bounded: it computes the floor and frees
//! at most [`NODES_PER_CALL`] radix-tree nodes with `XTRIM … ~ … LIMIT` (no entry walked),
//! then the exact cut inside one node. Where the length limit cuts is decided
//! without reading entries in the common case: `XTRIM MAXLEN` when everything the floor keeps
//! is within the last `max_len` entries (counted from the floor group's lag), else `XTRIM
//! MINID` at the floor (counting what the floor keeps walks at most [`WALK_PER_CALL`] entries,
//! and only when the group holding the floor has entries pending). So the work of a pass grows
//! with the nodes removed, not with the entries: the excess of any inflow goes in one pass, and one call blocks Redis for a bounded
//! time (measured by `ferry bench`, docs/benchmarks.md).
//!
//! Who trims: the housekeeper of each (subscriber, stream) trims its source stream by the
//! host's `[retention]` and its retry stream to the floor; the host's [`Retention`] task trims
//! every stream with a `[streams.NAME] retention` of its own (each partition by itself),
//! whether a ferry subscriber reads it or not (follow-up targets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use tokio::sync::watch;

use super::read::{self, cmp_ids, parse_id};
use super::{Context, now_ms, scripts};
use crate::config::RetentionConfig;
use crate::stop::Stop;

/// Most radix-tree nodes one `trim.lua` call frees with an approximate `XTRIM … LIMIT` (whole
/// nodes; the limit, in entries, is this many nodes' worth at the stream's mean entries per
/// node): about 0.6-0.8 µs of Redis time per node on the benchmark machine.
pub const NODES_PER_CALL: u64 = 1_000;

/// Most entries one call walks to count what the floor keeps (a few ms at most); only a group
/// with a long pending window makes a call walk at all.
pub const WALK_PER_CALL: u64 = 1_000;

/// Most calls in one pass (with [`NODES_PER_CALL`], a million nodes: tens of millions of
/// entries): the rest waits for the next pass, so one pass always ends.
const MAX_CALLS_PER_PASS: u32 = 1_000;

/// The lowest id any group still needs on a stream, and the group that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The oldest entry id some group still needs.
    pub id: String,
    /// The group holding it (the oldest pending entry, or the least far read).
    pub group: String,
}

/// The floor of `stream`, or `None` when the stream has no group.
pub async fn floor<C: ConnectionLike>(conn: &mut C, stream: &str) -> redis::RedisResult<Option<Floor>> {
    let groups: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
    let redis::Value::Array(groups) = groups else { return Ok(None) };
    let mut floor: Option<Floor> = None;
    for group in groups {
        let group = read::pairs(group);
        let name = read::pair_str(&group, "name");
        let last = read::pair_str(&group, "last-delivered-id");
        let pending = read::pair_int(&group, "pending").unwrap_or(0);
        let (Some(name), Some(last)) = (name, last) else { continue };
        let needed = if pending > 0 {
            let summary: redis::Value = redis::cmd("XPENDING").arg(stream).arg(&name).query_async(conn).await?;
            match summary {
                redis::Value::Array(items) => items.get(1).and_then(read::text).unwrap_or(last),
                _ => last,
            }
        } else {
            let (ms, seq) = parse_id(&last);
            format!("{ms}-{}", seq + 1)
        };
        if floor.as_ref().is_none_or(|f| cmp_ids(&needed, &f.id).is_lt()) {
            floor = Some(Floor { id: needed, group: name });
        }
    }
    Ok(floor)
}

/// The lowest id any group still needs on `stream`, or `None` when the stream has no group.
pub async fn safe_floor<C: ConnectionLike>(conn: &mut C, stream: &str) -> redis::RedisResult<Option<String>> {
    Ok(floor(conn, stream).await?.map(|f| f.id))
}

/// What one trimming pass did and found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pass {
    /// Entries removed.
    pub removed: u64,
    /// `trim.lua` calls made.
    pub calls: u32,
    /// The longest call, as the client saw it (round trip included).
    pub longest_call: Duration,
    /// Entries left.
    pub length: u64,
    /// Whether the floor keeps entries the limits would remove.
    pub held: bool,
    /// The floor and the group holding it (`None`: no group).
    pub floor: Option<Floor>,
    /// Id of the oldest entry left.
    pub first_id: Option<String>,
}

impl Pass {
    /// Entries over `max_len` left after the pass (what the floor keeps, plus what arrived
    /// during the pass).
    pub fn over(&self, retention: Option<&RetentionConfig>) -> u64 {
        retention.and_then(|r| r.max_len).map_or(0, |max| self.length.saturating_sub(max))
    }

    /// Age of the oldest entry left, ms (`None`: empty).
    pub fn oldest_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.first_id.as_deref().map(|id| now_ms.saturating_sub(parse_id(id).0))
    }
}

/// One pass over `stream`: by `retention`, or with none down to its safe floor; never past
/// the safe floor. A stream without consumer groups is trimmed by its limits alone (with no
/// limits, not at all).
pub async fn pass<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    retention: Option<&RetentionConfig>,
    now_ms: u64,
) -> redis::RedisResult<Pass> {
    let max_len = retention.and_then(|r| r.max_len).map_or(String::new(), |n| n.to_string());
    let age = retention
        .and_then(|r| r.max_age)
        .map_or(String::new(), |age| format!("{}-0", now_ms.saturating_sub(age.as_millis() as u64)));
    let to_floor = if retention.is_none() { "1" } else { "0" };
    let mut args =
        [max_len, age, to_floor.into(), NODES_PER_CALL.to_string(), WALK_PER_CALL.to_string(), String::new()];
    let mut out = Pass::default();
    loop {
        let started = Instant::now();
        type Reply = (u64, u8, u64, u8, Option<String>, Option<String>, Option<String>, Option<String>);
        let reply = scripts::call(conn, &scripts::TRIM, &[stream], &args).await?;
        let (removed, more, length, held, holder, floor, first_id, counted): Reply =
            scripts::parse(&scripts::TRIM, &reply)?;
        // What this call counted spares the next calls of the pass the same walk.
        if let Some(counted) = counted {
            args[5] = counted;
        }
        out.longest_call = out.longest_call.max(started.elapsed());
        out.calls += 1;
        out.removed += removed;
        out.length = length;
        out.held = held == 1;
        out.floor = floor.zip(holder).map(|(id, group)| Floor { id, group });
        out.first_id = first_id;
        if more == 0 || out.calls >= MAX_CALLS_PER_PASS {
            return Ok(out);
        }
    }
}

/// Trim `stream` by `retention` (or, with no limits, to its safe floor), never past the
/// safe floor. Returns the number of entries removed.
pub async fn trim<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    retention: Option<&RetentionConfig>,
    now_ms: u64,
) -> redis::RedisResult<u64> {
    Ok(pass(conn, stream, retention, now_ms).await?.removed)
}

/// Retention of one stream as a trimmer sees it over time: its last holder, so a group that
/// starts or stops holding the stream over its limits is logged once, not every pass.
#[derive(Debug, Default)]
pub struct Trimmer {
    held_by: Option<String>,
}

impl Trimmer {
    /// One pass over `stream` by `retention`; sets the stream's retention gauges and logs a
    /// change of the group holding it over its limits.
    pub async fn run(&mut self, ctx: &Context, stream: &str, retention: &RetentionConfig) -> redis::RedisResult<Pass> {
        let mut conn = ctx.shared.clone();
        let now = now_ms();
        let pass = pass(&mut conn, stream, Some(retention), now).await?;
        let gauges = &ctx.metrics.retention;
        let labels = crate::metrics::RetentionLabels { stream: stream.to_string() };
        gauges.over.get_or_create(&labels).set(i64::try_from(pass.over(Some(retention))).unwrap_or(i64::MAX));
        let age_s = pass.oldest_age_ms(now).map_or(0, |ms| ms / 1000);
        gauges.oldest_age_seconds.get_or_create(&labels).set(i64::try_from(age_s).unwrap_or(i64::MAX));
        let held_by = pass.floor.as_ref().filter(|_| pass.held).map(|f| f.group.clone());
        if held_by != self.held_by {
            match &held_by {
                Some(group) => tracing::warn!(
                    %stream, %group, length = pass.length, over = pass.over(Some(retention)),
                    "retention held back: this group still needs entries the limits would remove"
                ),
                None => tracing::info!(%stream, "retention no longer held back by a group"),
            }
            self.held_by = held_by;
        }
        if pass.removed > 0 {
            tracing::debug!(%stream, removed = pass.removed, calls = pass.calls, "trimmed by retention");
        }
        Ok(pass)
    }
}

/// The host's trimmer of the streams with a retention of their own (`[streams.NAME]
/// retention`): one task, each stream on its own interval. Stops when dropped.
pub struct Retention {
    _stop: watch::Sender<bool>,
}

impl Retention {
    /// Start trimming `streams` (stream keys with their retention); nothing runs when empty.
    pub fn spawn(ctx: Arc<Context>, streams: Vec<(String, RetentionConfig)>) -> Self {
        let (stop, rx) = Stop::channel();
        if !streams.is_empty() {
            tokio::spawn(run(ctx, streams, rx));
        }
        Self { _stop: stop }
    }
}

async fn run(ctx: Arc<Context>, streams: Vec<(String, RetentionConfig)>, stop: Stop) {
    let every = streams.iter().map(|(_, r)| r.interval).min().unwrap_or(Duration::from_secs(10));
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state: Vec<(Trimmer, Option<Instant>)> = streams.iter().map(|_| (Trimmer::default(), None)).collect();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A closed channel (the host was dropped) stops the task too.
            _ = stop.stopped() => break,
        }
        for ((stream, retention), (trimmer, last)) in streams.iter().zip(state.iter_mut()) {
            if last.is_some_and(|at| at.elapsed() < retention.interval) {
                continue;
            }
            *last = Some(Instant::now());
            if let Err(e) = trimmer.run(&ctx, stream, retention).await {
                tracing::warn!(%stream, "trimming by retention failed: {e}");
            }
        }
    }
}
