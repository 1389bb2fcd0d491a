//! Which stream keys this host cannot get a replica to confirm writes for, under
//! `durability = "replicated"`.
//!
//! A shard whose primary died and stays dead has no replica left: its promoted replica is
//! the only copy, and `WAIT 1` answers 0 after `durability_timeout` for every write. What ferry
//! then does is the operator's choice ([`OnMissingReplica`]); this module makes it visible,
//! whichever was chosen. Every writer that waits for a replica (a settler, a forwarder)
//! reports each `WAIT`'s answer here: [`ReplicaWatch::short`] when none confirmed,
//! [`ReplicaWatch::confirmed`] when one did. The watch keeps one state per stream key, logs
//! once per change of it (not once per write, per host), feeds the metrics (time without a
//! replica, writes waiting) and answers `/readyz` and the readers' "may I read?".

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::connection::{Conn, NotReplicated, OnMissingReplica, Replication};
use crate::metrics::{KeyLabels, Metrics, WriteLabels};
use crate::stop::Stop;

/// Why a stream key's writes are not confirmed, as last seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Missing {
    /// The stream key.
    pub stream: String,
    /// The primary serving its slot (`host:port`), if known.
    pub node: Option<String>,
    /// What was seen: no replica attached, or none answered in time.
    pub reason: String,
    /// Writes held back (wait) or gone ahead unconfirmed (continue) right now.
    pub waiting: u64,
    /// Milliseconds since the key lost its confirmation.
    pub for_ms: u64,
}

/// One stream key without a confirming replica.
struct Short {
    node: Option<String>,
    reason: String,
    since: Instant,
    /// When the time counter was last advanced.
    counted: Instant,
    /// Writes waiting, per writer (e.g. `settle/SUBSCRIBER`, `forward/SUBSCRIBER`).
    waiting: BTreeMap<String, u64>,
}

/// The stream keys of this host whose writes no replica confirms (see the module docs).
pub struct ReplicaWatch {
    /// The operator's policy.
    pub policy: OnMissingReplica,
    keys: Mutex<BTreeMap<String, Short>>,
}

impl ReplicaWatch {
    /// An empty watch applying `policy`.
    pub fn new(policy: OnMissingReplica) -> Self {
        Self { policy, keys: Mutex::new(BTreeMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Short>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `writer`'s `WAIT` for a write to `stream` found no replica: `waiting` writes of it are
    /// unconfirmed (under `wait`, the writes it holds back; under `continue`, more writes gone
    /// ahead, added to its count until a replica confirms). `node` is the primary, `reason` what was seen. Logs when `stream` enters
    /// this state.
    pub fn short(
        &self,
        metrics: &Metrics,
        stream: &str,
        writer: &str,
        waiting: u64,
        node: Option<String>,
        reason: &str,
    ) {
        let mut keys = self.lock();
        let now = Instant::now();
        let entry = keys.entry(stream.to_string()).or_insert_with(|| {
            let shown = node.as_deref().unwrap_or("its primary");
            let action = match self.policy {
                OnMissingReplica::Wait => "its writes wait (no progress) until a replica confirms them",
                OnMissingReplica::Continue => "its writes go ahead unconfirmed and are counted",
            };
            tracing::warn!(
                %stream, node = shown, %reason, policy = self.policy.as_str(),
                "no replica confirms writes to {stream} on {shown} ({reason}); {action}; add a replica to {shown}"
            );
            Short { node: node.clone(), reason: reason.to_string(), since: now, counted: now, waiting: BTreeMap::new() }
        });
        if node.is_some() {
            entry.node = node;
        }
        entry.reason = reason.to_string();
        // Under `wait` the same writes are reported again until confirmed; under `continue`
        // each report is of new writes gone ahead.
        let count = entry.waiting.entry(writer.to_string()).or_insert(0);
        match self.policy {
            OnMissingReplica::Wait => *count = waiting,
            OnMissingReplica::Continue => *count += waiting,
        }
        Self::count(metrics, stream, entry, now);
    }

    /// `writer`'s `WAIT` was confirmed by a replica: its writes to `stream` are replicated.
    /// Logs when `stream` leaves the state (no writer waits any more).
    pub fn confirmed(&self, metrics: &Metrics, stream: &str, writer: &str) {
        let mut keys = self.lock();
        let Some(entry) = keys.get_mut(stream) else { return };
        entry.waiting.remove(writer);
        Self::count(metrics, stream, entry, Instant::now());
        // One confirmation proves a replica is there; the other writers confirm with their next
        // WAIT. The key is clear once none is left waiting.
        if entry.waiting.is_empty() {
            let entry = keys.remove(stream);
            let after = entry.map(|e| e.since.elapsed()).unwrap_or_default();
            tracing::info!(%stream, "a replica confirms writes to {stream} again (after {:.1}s)", after.as_secs_f64());
        }
    }

    /// Advance the time counter and set the writes-waiting gauge of `stream`.
    fn count(metrics: &Metrics, stream: &str, entry: &mut Short, now: Instant) {
        let labels = KeyLabels { stream: stream.to_string() };
        let elapsed = now.saturating_duration_since(entry.counted).as_secs_f64();
        metrics.missing_replica_seconds.get_or_create(&labels).inc_by(elapsed);
        entry.counted = now;
        let waiting: u64 = entry.waiting.values().sum();
        metrics.writes_waiting_for_replica.get_or_create(&labels).set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Whether readers of `stream` hold back: the policy is `wait` and its writes are not
    /// confirmed (reading would only add entries that cannot be settled).
    pub fn holds_back(&self, stream: &str) -> bool {
        self.policy == OnMissingReplica::Wait && self.lock().contains_key(stream)
    }

    /// The stream keys on which `writer` has writes no replica confirmed.
    pub fn keys_of(&self, writer: &str) -> Vec<String> {
        self.lock().iter().filter(|(_, s)| s.waiting.contains_key(writer)).map(|(k, _)| k.clone()).collect()
    }

    /// Every stream key without a confirming replica now.
    pub fn missing(&self) -> Vec<Missing> {
        self.lock()
            .iter()
            .map(|(stream, s)| Missing {
                stream: stream.clone(),
                node: s.node.clone(),
                reason: s.reason.clone(),
                waiting: s.waiting.values().sum(),
                for_ms: s.since.elapsed().as_millis() as u64,
            })
            .collect()
    }
}

/// One writer that waits for a replica (a settler, a forwarder): applies the policy to its
/// `WAIT`s' answers and reports them to the [`ReplicaWatch`].
pub struct Writer<'a> {
    /// Where states are kept, with the policy.
    pub watch: &'a ReplicaWatch,
    /// Metrics (shortfalls, unconfirmed writes).
    pub metrics: &'a Metrics,
    /// The `WAIT` to send.
    pub replication: Replication,
    /// Which kind of write (`settle`, `forward`), for the metrics' `write` label.
    pub write: &'static str,
    /// This writer's name in the watch, `WRITE/SUBSCRIBER/STREAM` ([`Writer::new`]): one per
    /// (subscriber, stream), because each writer rechecks only what it wrote itself.
    name: String,
}

/// Entries of a consumer group that a writer holds while it waits for a replica.
pub struct Hold<'a> {
    /// The stream key.
    pub key: &'a str,
    /// The consumer group.
    pub group: &'a str,
    /// The consumer holding them.
    pub consumer: &'a str,
    /// Their ids.
    pub ids: &'a [String],
}

impl Hold<'_> {
    /// Reset their idle time (`XCLAIM … JUSTID`: no delivery counted).
    async fn refresh(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let mut claim = redis::cmd("XCLAIM");
        claim.arg(self.key).arg(self.group).arg(self.consumer).arg(0).arg(self.ids).arg("JUSTID");
        claim.query_async::<redis::Value>(conn).await.map(|_| ())
    }
}

/// What [`Writer::confirm`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// A replica has the writes.
    Replicated,
    /// No replica has them and the policy is `continue`: they were counted; go ahead.
    Unconfirmed,
    /// The policy is `wait` and the host is stopping: give up waiting (the writes stand on the
    /// primary, unconfirmed).
    Stopped,
}

impl<'a> Writer<'a> {
    /// The `write` writer (`settle`, `forward`) of `group` on `stream`. Its name is unique to
    /// the pair: a subscriber's writers on two stream keys must not share one, or a writer on
    /// a healthy key would take the other key's unconfirmed writes for its own and wait on
    /// them forever (issue 30: a healthy partition's settler stalled that way).
    pub fn new(
        watch: &'a ReplicaWatch,
        metrics: &'a Metrics,
        replication: Replication,
        write: &'static str,
        group: &str,
        stream: &str,
    ) -> Self {
        Self { watch, metrics, replication, write, name: format!("{write}/{group}/{stream}") }
    }

    /// Whether this writer has writes no replica confirmed (under `continue`, gone ahead).
    pub fn unconfirmed(&self) -> bool {
        !self.watch.keys_of(&self.name).is_empty()
    }

    /// Ask again, with a `WAIT` on `conn` (the connection the writes went through: it covers
    /// them all), whether a replica now has this writer's unconfirmed writes: an idle writer
    /// under `continue` would otherwise never learn that a replica was added.
    pub async fn recheck(&self, conn: &mut Conn, stop: &Stop) -> redis::RedisResult<()> {
        for key in self.watch.keys_of(&self.name) {
            self.confirm(conn, &key, 0, None, stop).await?;
        }
        Ok(())
    }

    /// After `writes` writes to `key` made on `conn` (and `answer`, the reply of a `WAIT` sent
    /// with them, if one was): under policy `wait`, `WAIT` again on the same connection (which
    /// covers every write made on it) until a replica confirms or `stop`; under `continue`,
    /// count them and go ahead. A failed `WAIT` is returned (the connection may have died with
    /// its primary).
    pub async fn confirm(
        &self,
        conn: &mut Conn,
        key: &str,
        writes: u64,
        answer: Option<Result<(), NotReplicated>>,
        stop: &Stop,
    ) -> redis::RedisResult<Confirmed> {
        self.confirm_holding(conn, key, writes, answer, stop, None).await
    }

    /// [`Writer::confirm`], keeping `hold`'s entries alive before each new `WAIT` while the
    /// policy is `wait` (the forwarder's, so other hosts do not take them over and send them
    /// again).
    pub async fn confirm_holding(
        &self,
        conn: &mut Conn,
        key: &str,
        writes: u64,
        mut answer: Option<Result<(), NotReplicated>>,
        stop: &Stop,
        hold: Option<Hold<'_>>,
    ) -> redis::RedisResult<Confirmed> {
        if !self.replication.waits() {
            return Ok(Confirmed::Replicated);
        }
        loop {
            let result = match answer.take() {
                Some(answer) => answer,
                None => crate::connection::replicated(conn, key, self.replication).await,
            };
            match result {
                Ok(()) => {
                    self.watch.confirmed(self.metrics, key, &self.name);
                    return Ok(Confirmed::Replicated);
                }
                Err(NotReplicated::Redis(e)) => return Err(e),
                Err(NotReplicated::Shortfall(timeout)) => {
                    crate::metrics::shortfall(&self.metrics.replication_shortfalls, self.write);
                    let (node, reason) = match crate::connection::replicas_of(conn, key).await {
                        Ok((node, 0)) => (node, "the primary has no replica".to_string()),
                        Ok((node, n)) => (node, format!("none of its {n} replicas confirmed within {timeout:?}")),
                        Err(e) => (None, format!("no replica confirmed within {timeout:?} ({e})")),
                    };
                    self.watch.short(self.metrics, key, &self.name, writes, node, &reason);
                    if self.watch.policy == OnMissingReplica::Continue {
                        let labels = WriteLabels { write: self.write.to_string() };
                        self.metrics.unconfirmed_writes.get_or_create(&labels).inc_by(writes);
                        return Ok(Confirmed::Unconfirmed);
                    }
                    if stop.is_stopped() {
                        return Ok(Confirmed::Stopped);
                    }
                    if let Some(hold) = &hold {
                        hold.refresh(conn).await?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_missing_until_every_waiting_writer_is_confirmed() {
        let metrics = Metrics::new();
        let watch = ReplicaWatch::new(OnMissingReplica::Wait);
        watch.short(&metrics, "events#0", "settle/a", 3, Some("127.0.0.1:7000".into()), "no replica");
        watch.short(&metrics, "events#0", "forward/a", 2, None, "no replica");
        assert!(watch.holds_back("events#0") && !watch.holds_back("events#1"));
        let missing = watch.missing();
        assert_eq!(missing.len(), 1);
        assert_eq!((missing[0].waiting, missing[0].node.as_deref()), (5, Some("127.0.0.1:7000")));
        let gauge =
            |m: &Metrics| m.writes_waiting_for_replica.get_or_create(&KeyLabels { stream: "events#0".into() }).get();
        assert_eq!(gauge(&metrics), 5);
        watch.confirmed(&metrics, "events#0", "settle/a");
        assert!(watch.holds_back("events#0"), "the forwarder still waits");
        watch.confirmed(&metrics, "events#0", "forward/a");
        assert!(watch.missing().is_empty() && !watch.holds_back("events#0"));
        assert_eq!(gauge(&metrics), 0);
        assert!(!ReplicaWatch::new(OnMissingReplica::Continue).holds_back("events#0"));
    }

    #[test]
    fn a_subscribers_writer_on_a_healthy_key_does_not_take_another_keys_shortfall_for_its_own() {
        let metrics = Metrics::new();
        let watch = ReplicaWatch::new(OnMissingReplica::Wait);
        let replication = Replication::PRIMARY;
        let lost = Writer::new(&watch, &metrics, replication, "settle", "rec", "events#0");
        let healthy = Writer::new(&watch, &metrics, replication, "settle", "rec", "events#1");
        watch.short(&metrics, "events#0", &lost.name, 3, None, "the primary has no replica");
        assert!(lost.unconfirmed());
        assert!(!healthy.unconfirmed(), "the healthy key's settler has nothing to recheck");
        assert!(watch.keys_of(&healthy.name).is_empty());
    }
}
