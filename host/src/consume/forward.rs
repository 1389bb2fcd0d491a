//! The forwarder of one (subscriber, stream) on a cluster: moves follow-ups bound for other
//! slots from the stream's forward key (written with the ack, same slot) to their streams,
//! each with its own event id. On a task of its own with its own timer, because under
//! `durability = "replicated"` it may wait for a replica, and nothing else may wait with it.
//!
//! Read through a consumer group, so hosts share the work and a dead forwarder's entries are
//! taken over; `XADD` comes before the ack, so a forwarder that dies in between re-sends the
//! same event, which consumers' dedupe absorbs. Nothing is lost. The group is created once,
//! and again after Redis lost it (`NOGROUP`: a restart without persistence, a failover).

use std::sync::Arc;
use std::time::Duration;

use super::read::{self, Entry};
use super::{Context, letters, settle};
use crate::connection::Conn;
use crate::keys::SubscriberKeys;
use crate::replica::{Confirmed, Hold, Writer};
use crate::stop::Stop;

/// The consumer group of the forwarders on a stream's forward key.
const FORWARDERS: &str = "ferry-forward";

/// The forwarder of one (subscriber, stream).
pub struct Forwarder {
    /// Shared host context.
    pub ctx: Arc<Context>,
    /// The subscriber's keys on this stream (the forward key is the stream's).
    pub keys: SubscriberKeys,
    /// The subscriber: the idle time after which another forwarder's entry is taken over
    /// (`claim_idle`) is its active version's, so a reload reaches it.
    pub subscriber: Arc<super::Subscriber>,
}

/// Whether a forwarding error is the follow-up's own (its target refuses the `XADD`, the first
/// command of its pipeline: a key of another type, a command error), not Redis's or the
/// network's (those are retried).
fn undeliverable(e: &redis::RedisError) -> bool {
    let refused = |code: &str| matches!(code, "WRONGTYPE" | "ERR");
    match e.clone().into_server_errors() {
        Some(errors) => errors.iter().any(|(index, error)| *index == 0 && refused(error.code())),
        None => e.code().is_some_and(refused),
    }
}

impl Forwarder {
    /// Idle time after which another forwarder's entry is taken over (the active version's).
    fn claim_idle(&self) -> Duration {
        self.ctx.claim_idle_of(&self.subscriber)
    }

    /// This host's forwarder for this subscriber on the stream's forward key: its own name, so
    /// its own pending list is its own (a host's other subscribers forward the same key).
    fn name(&self) -> String {
        format!("{}/{}", self.ctx.consumer, self.subscriber.name)
    }

    /// Forward every `read.poll` until `stop`.
    pub async fn run(self, stop: Stop) {
        let mut tick = tokio::time::interval(self.ctx.read.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut ready, mut own) = (false, None);
        let mut rechecked = std::time::Instant::now();
        let mut reaped = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.stopped() => break,
            }
            if stop.is_stopped() {
                break;
            }
            if let Err(e) = self.forward(&mut ready, &mut own, &stop).await {
                tracing::warn!(stream = %self.keys.stream, "forwarding follow-ups failed: {e}");
            }
            if ready && reaped.elapsed() >= self.claim_idle() / 4 {
                reaped = std::time::Instant::now();
                if let Err(e) = self.reap().await {
                    tracing::warn!(stream = %self.keys.stream, "removing dead forwarders failed: {e}");
                }
            }
            // Follow-ups forwarded unconfirmed (policy `continue`): ask every second whether a
            // replica has them now, so the state ends once one was added even with nothing new
            // to forward.
            if rechecked.elapsed() >= Duration::from_secs(1) && self.writer().unconfirmed() {
                rechecked = std::time::Instant::now();
                let checked = match self.ctx.write_conn(&mut own).await {
                    Ok(mut conn) => self.writer().recheck(&mut conn, &stop).await,
                    Err(e) => Err(e),
                };
                if checked.is_err() {
                    own = None;
                }
            }
        }
    }

    fn writer(&self) -> Writer<'_> {
        Writer::new(
            &self.ctx.replicas,
            &self.ctx.metrics,
            self.ctx.replication,
            "forward",
            &self.subscriber.name,
            &self.keys.stream,
        )
    }

    /// Under `durability = "replicated"` (on a connection of its own, `own`: a `WAIT` blocks
    /// its connection) a follow-up is forwarded only once a replica of the source slot has it
    /// (so has the ack written with it: a follow-up of a settle that a failover then loses is
    /// never sent), and leaves the forward key only once a replica of its target has it. When
    /// no replica confirms, `durability_on_missing_replica` decides: `wait` sends `WAIT` again
    /// on the same connection (never the `XADD`: each would add a copy to the target) until one
    /// does; `continue` counts the follow-ups and goes on. A shortfall keeps the connection:
    /// only a failed command drops it (a new cluster connection dials every seed, dead ones
    /// too).
    async fn forward(&self, ready: &mut bool, own: &mut Option<Conn>, stop: &Stop) -> redis::RedisResult<()> {
        let mut conn = self.ctx.write_conn(own).await?;
        let result = self.forward_on(&mut conn, ready, stop).await;
        if result.is_err() {
            *own = None;
        }
        result
    }

    async fn forward_on(&self, conn: &mut Conn, ready: &mut bool, stop: &Stop) -> redis::RedisResult<()> {
        let entries = match self.read(conn, ready).await {
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
        // this WAIT covers every settle that wrote them. Entries left behind (stopping) are
        // read again from this forwarder's own pending list.
        let n = entries.len() as u64;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let consumer = self.name();
        let hold = Some(self.hold(&consumer, &ids));
        if self.writer().confirm_holding(conn, &self.keys.stream, n, None, stop, hold).await? == Confirmed::Stopped {
            return Ok(());
        }
        for (i, entry) in entries.into_iter().enumerate() {
            if !self.forward_one(conn, entry, &ids[i..], stop).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// What this forwarder holds while it waits for a replica: `ids`, kept from looking
    /// abandoned so other hosts' forwarders do not take them over and send them again
    /// (harmless, same ids, but each a copy in the target).
    fn hold<'a>(&'a self, consumer: &'a str, ids: &'a [String]) -> Hold<'a> {
        Hold { key: &self.keys.forward, group: FORWARDERS, consumer, ids }
    }

    /// A dead forwarder's entries, else this one's own left-overs, else new ones. One forwarder
    /// per (host, subscriber) on the stream's forward key: its own name, so its own pending list
    /// is its own (a host's other subscribers forward the same key).
    async fn read(&self, conn: &mut Conn, ready: &mut bool) -> redis::RedisResult<Vec<Entry>> {
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
        let idle = self.claim_idle().as_millis() as u64;
        let consumer = self.name();
        let mut entries = read::auto_claim(conn, key, FORWARDERS, &consumer, idle, 100).await?;
        for id in ["0", ">"] {
            if entries.is_empty() {
                entries = read::read_group(conn, FORWARDERS, &consumer, 100, None, &[key], id).await?;
            }
        }
        Ok(entries)
    }

    /// `XADD` one follow-up to its stream (with a `WAIT` under `durability = "replicated"`),
    /// then remove it from the forward key. `held`: this entry and the ones after it, kept
    /// alive while waiting. False when stopping while waiting for a replica (the entry stays
    /// in the forward key).
    async fn forward_one(
        &self,
        conn: &mut Conn,
        entry: Entry,
        held: &[String],
        stop: &Stop,
    ) -> redis::RedisResult<bool> {
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
            let mut replies: Vec<redis::Value> = match pipe.query_async(conn).await {
                Ok(replies) => replies,
                Err(e) if undeliverable(&e) => return self.set_aside(conn, &entry, &e).await.map(|()| true),
                Err(e) => return Err(e),
            };
            let answer = self.ctx.replication.take_wait(&mut replies);
            let consumer = self.name();
            let hold = Some(self.hold(&consumer, held));
            if self.writer().confirm_holding(conn, &target, 1, Some(answer), stop, hold).await? == Confirmed::Stopped {
                return Ok(false);
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
        Ok(true)
    }

    /// A follow-up its target refused (a key of another type): moved, with the reason, from
    /// the forward key to the stream's unforwarded key in one step, so the follow-ups behind
    /// it flow (before, the forwarder stopped at it and re-read it first on every tick, and
    /// all cross-slot forwarding of the stream stopped). `ferry status` counts them.
    async fn set_aside(&self, conn: &mut Conn, entry: &Entry, error: &redis::RedisError) -> redis::RedisResult<()> {
        let target =
            entry.field(settle::FORWARD_TO).map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
        tracing::warn!(stream = %self.keys.stream, %target, entry_id = %entry.id, "a follow-up cannot be forwarded ({error}); set aside in {}", self.keys.forward_dead);
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.keys.forward_dead).arg("*");
        for (k, v) in &entry.fields {
            xadd.arg(k).arg(v);
        }
        xadd.arg(letters::meta::REASON).arg(error.to_string());
        let mut pipe = redis::pipe();
        pipe.atomic().add_command(xadd).ignore();
        pipe.cmd("XACK").arg(&self.keys.forward).arg(FORWARDERS).arg(&entry.id).ignore();
        pipe.cmd("XDEL").arg(&self.keys.forward).arg(&entry.id).ignore();
        pipe.query_async(conn).await
    }

    /// Remove forwarders (of hosts that are gone) with nothing pending that have been silent
    /// for twice `claim_idle`, as the housekeeper does for the subscriber's consumers.
    async fn reap(&self) -> redis::RedisResult<()> {
        let mut conn = self.ctx.shared.clone();
        let idle = (self.claim_idle() * 2).as_millis() as u64;
        for name in
            super::housekeeping::reap_silent(&mut conn, &self.keys.forward, FORWARDERS, &self.name(), idle).await?
        {
            tracing::info!(stream = %self.keys.stream, forwarder = %name, "removed a silent forwarder with nothing pending");
        }
        Ok(())
    }
}
