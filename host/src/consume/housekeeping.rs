//! Housekeeping of one (subscriber, stream), on its own task and its own timers, apart
//! from the read loop: promote due retries, keep this host's runs visibly alive, take over
//! entries of dead consumers, remove silent consumers, sweep abandoned in-flight markers and
//! trim settled entries.
//!
//! Liveness rule: an entry this host holds (running, waiting for a permit, or waiting for
//! another delivery of its event) has its idle time reset (`XCLAIM … JUSTID`, which does not
//! count a delivery) and its lease pushed every `claim_idle / 4`. So only entries of a host
//! that has been silent for `claim_idle` are taken over, however long its events run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::read::{self, Entry};
use super::{Context, InFlight, now_ms, scripts, settle, trim};
use crate::connection::Conn;
use crate::keys::SubscriberKeys;

/// The consumer group of the forwarders on a stream's forward key.
const FORWARDERS: &str = "ferry-forward";

/// Markers whose lease ended this long ago are swept (their entries are gone).
const SWEEP_AFTER: Duration = Duration::from_secs(3600);

/// The housekeeper of one (subscriber, stream).
pub struct Housekeeper {
    /// Shared host context.
    pub ctx: Arc<Context>,
    /// The subscriber's keys on this stream.
    pub keys: SubscriberKeys,
    /// The consumer group (subscriber name).
    pub group: String,
    /// Idle time after which another consumer's entry is taken over.
    pub claim_idle: Duration,
    /// Entries in this host's hands.
    pub in_flight: InFlight,
    /// Where entries taken over go (to the dispatcher).
    pub claimed: mpsc::Sender<Vec<Entry>>,
}

impl Housekeeper {
    /// Run until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.ctx.read.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let trim_every = self.ctx.source_retention(&self.keys.stream).map_or(Duration::from_secs(10), |r| r.interval);
        let mut last_liveness = Instant::now();
        let mut last_trim = Instant::now();
        let mut trimmer = trim::Trimmer::default();
        let mut sweep_cursor = "0".to_string();
        let mut forwarders_ready = false;
        let mut forwarder_conn = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            let mut conn = self.ctx.shared.clone();
            if let Err(e) = settle::promote(&mut conn, &self.keys, now_ms(), 1000).await {
                tracing::warn!(subscriber = %self.group, stream = %self.keys.stream, "promoting due retries failed: {e}");
            }
            if self.ctx.redis.is_cluster()
                && let Err(e) = self.forward(&mut forwarders_ready, &mut forwarder_conn).await
            {
                tracing::warn!(stream = %self.keys.stream, "forwarding follow-ups failed: {e}");
            }
            if last_liveness.elapsed() >= self.claim_idle / 4 {
                last_liveness = Instant::now();
                if let Err(e) = self.refresh().await {
                    tracing::warn!(subscriber = %self.group, stream = %self.keys.stream, "keeping runs alive failed: {e}");
                }
                match self.take_over().await {
                    Ok(entries) if !entries.is_empty() => {
                        if self.claimed.send(entries).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(subscriber = %self.group, stream = %self.keys.stream, "taking over idle entries failed: {e}")
                    }
                }
                if let Err(e) = self.reap().await {
                    tracing::warn!(subscriber = %self.group, stream = %self.keys.stream, "removing dead consumers failed: {e}");
                }
                match self.sweep(&sweep_cursor).await {
                    Ok(next) => sweep_cursor = next,
                    Err(e) => tracing::warn!(subscriber = %self.group, "sweeping in-flight markers failed: {e}"),
                }
            }
            if last_trim.elapsed() >= trim_every {
                last_trim = Instant::now();
                self.trim(&mut trimmer).await;
            }
        }
    }

    /// On a cluster: move follow-ups bound for other slots from the stream's forward key to
    /// their streams, each with its own event id. Read through a consumer group, so hosts
    /// share the work and a dead forwarder's entries are taken over; `XADD` comes before the
    /// ack, so a forwarder that dies in between re-sends the same event, which consumers'
    /// dedupe absorbs. Nothing is lost. The group is created once (`ready`), and again after
    /// Redis lost it (`NOGROUP`: a restart without persistence, a failover).
    ///
    /// Under `durability = "replicated"` (on a connection of its own, `own`: a `WAIT` blocks
    /// its connection) a follow-up is forwarded only once a replica of the source slot has it
    /// (so has the ack written with it: a follow-up of a settle that a failover then loses is
    /// never sent), and leaves the forward key only once a replica of its target has it.
    /// Entries left behind are read again from this forwarder's own pending list.
    async fn forward(&self, ready: &mut bool, own: &mut Option<Conn>) -> redis::RedisResult<()> {
        let mut conn = self.ctx.write_conn(own).await?;
        let result = self.forward_on(&mut conn, ready).await;
        if result.is_err() {
            *own = None;
        }
        result
    }

    async fn forward_on(&self, conn: &mut Conn, ready: &mut bool) -> redis::RedisResult<()> {
        let key = &self.keys.forward;
        if !*ready {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(FORWARDERS)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            if let Err(e) = created
                && !e.to_string().contains("BUSYGROUP")
            {
                return Err(e);
            }
            *ready = true;
        }
        let idle = self.claim_idle.as_millis() as u64;
        // One forwarder per (host, subscriber) on the stream's forward key: its own name, so
        // its own pending list is its own (a host's other subscribers forward the same key).
        let consumer = format!("{}/{}", self.ctx.consumer, self.group);
        let read = async {
            // A dead forwarder's entries, else this one's own left-overs, else new ones.
            let mut entries = read::auto_claim(conn, key, FORWARDERS, &consumer, idle, 100).await?;
            for id in ["0", ">"] {
                if entries.is_empty() {
                    entries = read::read_group(conn, FORWARDERS, &consumer, 100, None, &[key], id).await?;
                }
            }
            Ok::<_, redis::RedisError>(entries)
        };
        let entries = match read.await {
            Ok(entries) => entries,
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    *ready = false;
                }
                return Err(e);
            }
        };
        if entries.is_empty() {
            return Ok(());
        }
        // The read is a write (it moves the entries into this forwarder's pending list), so
        // this WAIT covers every settle that wrote them.
        if let Err(e) = crate::connection::replicated(conn, key, self.ctx.replication).await {
            crate::metrics::shortfall(&self.ctx.metrics.replication_shortfalls, "forward");
            return Err(e.into_redis("follow-ups to forward"));
        }
        for entry in entries {
            self.forward_one(conn, entry).await?;
        }
        Ok(())
    }

    /// `XADD` one follow-up to its stream (with a `WAIT` under `durability = "replicated"`),
    /// then remove it from the forward key.
    async fn forward_one(&self, conn: &mut Conn, entry: Entry) -> redis::RedisResult<()> {
        let key = &self.keys.forward;
        let target = entry.field(settle::FORWARD_TO).map(|t| String::from_utf8_lossy(t).into_owned());
        if let Some(target) = target {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&target).arg("*");
            for (k, v) in entry.fields.iter().filter(|(k, _)| k.as_slice() != settle::FORWARD_TO.as_bytes()) {
                xadd.arg(k).arg(v);
            }
            let mut pipe = redis::pipe();
            pipe.add_command(xadd);
            self.ctx.replication.append_wait(&mut pipe);
            let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
            if let Err(e) = self.ctx.replication.take_wait(&mut replies) {
                crate::metrics::shortfall(&self.ctx.metrics.replication_shortfalls, "forward");
                return Err(e.into_redis("a follow-up forwarded to another slot"));
            }
        }
        let _: () = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(key)
            .arg(FORWARDERS)
            .arg(&entry.id)
            .ignore()
            .cmd("XDEL")
            .arg(key)
            .arg(&entry.id)
            .ignore()
            .query_async(conn)
            .await?;
        Ok(())
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
                    .arg(&self.group)
                    .arg(&self.ctx.consumer)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID")
                    .query_async(&mut conn)
                    .await?;
            }
        }
        let expiry = now_ms() + self.claim_idle.as_millis() as u64;
        let runs: Vec<&super::Held> = held.iter().filter(|h| !h.event_id.is_empty()).collect();
        for chunk in runs.chunks(500) {
            let mut args: Vec<String> = vec![expiry.to_string()];
            for h in chunk {
                args.push(h.event_id.clone());
                args.push(h.owner.clone());
            }
            let cmd = scripts::evalsha(&scripts::REFRESH, &[&self.keys.inflight], &args);
            let _: i64 = scripts::run(&mut conn, &cmd).await?;
        }
        Ok(())
    }

    /// Take over entries idle for `claim_idle` on any consumer (dead hosts).
    async fn take_over(&self) -> redis::RedisResult<Vec<Entry>> {
        let mut conn = self.ctx.shared.clone();
        let mut out = Vec::new();
        let min_idle = self.claim_idle.as_millis() as u64;
        for key in [&self.keys.stream, &self.keys.retry] {
            let claimed =
                read::auto_claim(&mut conn, key, &self.group, &self.ctx.consumer, min_idle, self.ctx.read.count)
                    .await?;
            out.extend(claimed.into_iter().filter(|e| !self.in_flight.contains(&e.key, &e.id)));
        }
        if !out.is_empty() {
            tracing::info!(subscriber = %self.group, stream = %self.keys.stream, count = out.len(), "took over idle pending entries");
        }
        Ok(out)
    }

    /// Remove consumers with nothing pending that have been silent for twice `claim_idle`.
    async fn reap(&self) -> redis::RedisResult<()> {
        let mut conn = self.ctx.shared.clone();
        let idle = (self.claim_idle * 2).as_millis() as u64;
        for key in [&self.keys.stream, &self.keys.retry] {
            let args = [self.group.clone(), self.ctx.consumer.clone(), idle.to_string()];
            let cmd = scripts::evalsha(&scripts::REAP, &[key.as_str()], &args);
            let removed: Vec<String> = scripts::run(&mut conn, &cmd).await?;
            for name in removed {
                tracing::info!(subscriber = %self.group, stream = %key, consumer = %name, "removed a silent consumer with nothing pending");
            }
        }
        Ok(())
    }

    /// One step of sweeping abandoned in-flight markers; the next cursor.
    async fn sweep(&self, cursor: &str) -> redis::RedisResult<String> {
        let mut conn = self.ctx.shared.clone();
        let before = now_ms().saturating_sub(SWEEP_AFTER.as_millis() as u64);
        let args = [cursor.to_string(), before.to_string(), "200".to_string()];
        let cmd = scripts::evalsha(&scripts::SWEEP, &[&self.keys.inflight], &args);
        scripts::run(&mut conn, &cmd).await
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
                tracing::debug!(subscriber = %self.group, stream = %self.keys.stream, source = a, retry = b, "trimmed settled entries")
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(stream = %self.keys.stream, "trimming failed: {e}"),
            _ => {}
        }
    }
}
