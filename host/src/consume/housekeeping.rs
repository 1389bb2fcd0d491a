//! Housekeeping of one (subscriber, stream), on its own task and its own timers, apart
//! from the read loop: promote due retries, keep this host's runs visibly alive, take over
//! entries of dead consumers, remove silent consumers, sweep abandoned run markers and
//! trim settled entries. (Forwarding follow-ups to other slots is [`super::forward`]'s, on a
//! task of its own: it may wait for a replica, and keeping runs alive must never wait.)
//!
//! Liveness rule: an entry this host holds (running, waiting for a permit, or waiting for
//! another delivery of its event) has its idle time reset (`XCLAIM … JUSTID`, which does not
//! count a delivery) and its lease pushed every `claim_idle / 4`. So only entries of a host
//! that has been silent for `claim_idle` are taken over, however long its events run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::read::{self, Entry};
use super::{Context, InFlight, now_ms, scripts, trim};
use crate::keys::SubscriberKeys;
use crate::stop::Stop;

/// Markers whose lease ended this long ago are swept (their entries are gone).
const SWEEP_AFTER: Duration = Duration::from_secs(3600);

/// The housekeeper of one (subscriber, stream).
pub struct Housekeeper {
    /// Shared host context.
    pub ctx: Arc<Context>,
    /// The subscriber's keys on this stream.
    pub keys: SubscriberKeys,
    /// The subscriber: the idle time after which another consumer's entry is taken over
    /// (`claim_idle`) is read from its active version on every tick, so a reload reaches it.
    pub subscriber: Arc<super::Subscriber>,
    /// Entries in this host's hands.
    pub in_flight: InFlight,
    /// Where entries taken over go (to the dispatcher).
    pub claimed: mpsc::Sender<Vec<Entry>>,
}

impl Housekeeper {
    /// Idle time after which another consumer's entry is taken over (the active version's).
    fn claim_idle(&self) -> Duration {
        self.ctx.claim_idle_of(&self.subscriber)
    }

    /// Run until `stop`.
    pub async fn run(self, stop: Stop) {
        let mut tick = tokio::time::interval(self.ctx.read.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let trim_every = self.ctx.source_retention(&self.keys.stream).map_or(Duration::from_secs(10), |r| r.interval);
        let mut last_liveness = Instant::now();
        let mut last_trim = Instant::now();
        let mut trimmer = trim::Trimmer::default();
        let mut sweep_cursor = "0".to_string();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.stopped() => break,
            }
            if stop.is_stopped() {
                break;
            }
            let mut conn = self.ctx.shared.clone();
            if let Err(e) = promote(&mut conn, &self.keys, now_ms(), 1000).await {
                tracing::warn!(subscriber = %self.subscriber.name, stream = %self.keys.stream, "promoting due retries failed: {e}");
            }
            if last_liveness.elapsed() >= self.claim_idle() / 4 {
                last_liveness = Instant::now();
                if let Err(e) = self.refresh().await {
                    tracing::warn!(subscriber = %self.subscriber.name, stream = %self.keys.stream, "keeping runs alive failed: {e}");
                }
                match self.take_over().await {
                    Ok(entries) if !entries.is_empty() => {
                        if self.claimed.send(entries).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(subscriber = %self.subscriber.name, stream = %self.keys.stream, "taking over idle entries failed: {e}")
                    }
                }
                if let Err(e) = self.reap().await {
                    tracing::warn!(subscriber = %self.subscriber.name, stream = %self.keys.stream, "removing dead consumers failed: {e}");
                }
                match self.sweep(&sweep_cursor).await {
                    Ok(next) => sweep_cursor = next,
                    Err(e) => {
                        tracing::warn!(subscriber = %self.subscriber.name, "sweeping run markers failed: {e}")
                    }
                }
            }
            if last_trim.elapsed() >= trim_every {
                last_trim = Instant::now();
                self.trim(&mut trimmer).await;
            }
        }
    }

    /// Reset the idle time of every entry this host holds and push their leases.
    async fn refresh(&self) -> redis::RedisResult<()> {
        let held = self.in_flight.snapshot();
        if held.is_empty() {
            return Ok(());
        }
        let mut conn = self.ctx.shared.clone();
        for key in [&self.keys.stream, &self.keys.retry] {
            let ids: Vec<&str> = held.iter().filter(|h| &h.key == key).map(|h| h.id.as_str()).collect();
            for chunk in ids.chunks(500) {
                let _: redis::Value = redis::cmd("XCLAIM")
                    .arg(key)
                    .arg(&self.subscriber.name)
                    .arg(&self.ctx.consumer)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID")
                    .query_async(&mut conn)
                    .await?;
            }
        }
        let expiry = now_ms() + self.claim_idle().as_millis() as u64;
        let runs: Vec<&super::Held> = held.iter().filter(|h| !h.event_id.is_empty()).collect();
        for chunk in runs.chunks(500) {
            let mut args: Vec<String> = vec![expiry.to_string()];
            for h in chunk {
                args.push(h.event_id.clone());
                args.push(h.owner.clone());
            }
            let reply = scripts::call(&mut conn, &scripts::REFRESH, &[&self.keys.inflight], &args).await?;
            let _pushed: u64 = scripts::parse(&scripts::REFRESH, &reply)?;
        }
        Ok(())
    }

    /// Take over entries idle for `claim_idle` on any consumer (dead hosts).
    async fn take_over(&self) -> redis::RedisResult<Vec<Entry>> {
        let mut conn = self.ctx.shared.clone();
        let mut out = Vec::new();
        let min_idle = self.claim_idle().as_millis() as u64;
        for key in [&self.keys.stream, &self.keys.retry] {
            let claimed = read::auto_claim(
                &mut conn,
                key,
                &self.subscriber.name,
                &self.ctx.consumer,
                min_idle,
                self.ctx.read.count,
            )
            .await?;
            out.extend(claimed.into_iter().filter(|e| !self.in_flight.contains(&e.key, &e.id)));
        }
        if !out.is_empty() {
            tracing::info!(subscriber = %self.subscriber.name, stream = %self.keys.stream, count = out.len(), "took over idle pending entries");
        }
        Ok(out)
    }

    /// Remove consumers with nothing pending that have been silent for twice `claim_idle`.
    async fn reap(&self) -> redis::RedisResult<()> {
        let mut conn = self.ctx.shared.clone();
        let idle = (self.claim_idle() * 2).as_millis() as u64;
        for key in [&self.keys.stream, &self.keys.retry] {
            for name in reap_silent(&mut conn, key, &self.subscriber.name, &self.ctx.consumer, idle).await? {
                tracing::info!(subscriber = %self.subscriber.name, stream = %key, consumer = %name, "removed a silent consumer with nothing pending");
            }
        }
        Ok(())
    }

    /// One step of sweeping abandoned run markers; the next cursor.
    async fn sweep(&self, cursor: &str) -> redis::RedisResult<String> {
        let mut conn = self.ctx.shared.clone();
        let before = now_ms().saturating_sub(SWEEP_AFTER.as_millis() as u64);
        let args = [cursor.to_string(), before.to_string(), "200".to_string()];
        let reply = scripts::call(&mut conn, &scripts::SWEEP, &[&self.keys.inflight], &args).await?;
        scripts::parse(&scripts::SWEEP, &reply)
    }

    /// Trim the source stream by the host's `[retention]` (if any, and if the stream has
    /// none of its own) and the retry stream to its floor.
    async fn trim(&self, trimmer: &mut trim::Trimmer) {
        let mut conn = self.ctx.shared.clone();
        let source = match self.ctx.source_retention(&self.keys.stream) {
            Some(r) => trimmer.run(&self.ctx, &self.keys.stream, r).await.map(|p| p.removed),
            None => Ok(0),
        };
        let retry = trim::trim(&mut conn, &self.keys.retry, None, now_ms()).await;
        match (source, retry) {
            (Ok(a), Ok(b)) if a + b > 0 => {
                tracing::debug!(subscriber = %self.subscriber.name, stream = %self.keys.stream, source = a, retry = b, "trimmed settled entries")
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(stream = %self.keys.stream, "trimming failed: {e}"),
            _ => {}
        }
    }
}

/// Move up to `limit` due retries from the schedule into the subscriber's retry stream.
/// Returns how many moved. Atomic per retry, so several hosts can promote at once.
pub async fn promote<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    now_ms: u64,
    limit: usize,
) -> redis::RedisResult<usize> {
    let reply = scripts::call(conn, &scripts::PROMOTE, &[&keys.schedule, &keys.retry], &[now_ms, limit as u64]).await?;
    scripts::parse(&scripts::PROMOTE, &reply)
}

/// Remove the consumers of `group` on `key` other than `me` that have nothing pending and have
/// been silent for longer than `idle_ms`, in one step (`reap.lua`); the names removed. Used for
/// a subscriber's consumers and for the forwarders of a stream's forward key.
pub(super) async fn reap_silent<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    key: &str,
    group: &str,
    me: &str,
    idle_ms: u64,
) -> redis::RedisResult<Vec<String>> {
    let args = [group.to_string(), me.to_string(), idle_ms.to_string()];
    let reply = scripts::call(conn, &scripts::REAP, &[key], &args).await?;
    scripts::parse(&scripts::REAP, &reply)
}
