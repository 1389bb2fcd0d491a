//! The settler: the last stage of an event's path. Each finished event becomes a
//! [`Settlement`]; the [`Settler`] batches the settlements that are ready together into one
//! round trip, so a slow event never holds back the acks of fast ones and a busy stream
//! still settles hundreds of events per call.
//!
//! Every move is one script over keys that share the stream's hash tag (`settle.lua`):
//! validate what it will write, `XACK`, and only if the ack removed the entry apply its
//! effects (record the event as handled, publish follow-ups, schedule a retry, write a dead
//! letter, hand the partition key on). A settle replayed after a lost reply, or racing
//! another consumer that took the entry over, therefore never writes anything twice, and a
//! write that would fail is found before the ack, so nothing is acked and then lost.

use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::mpsc;

use super::scripts::{self, netstrings};
use super::{Context, Counters, InFlight, Tally, now_ms};
use crate::backoff::Backoff;
use crate::connection::Conn;
use crate::event::Event;
use crate::handler::Effects;
use crate::handler::FailureKind;
use crate::keys::{self, SubscriberKeys};
use crate::stop::Stop;

/// What to do with one entry: the disposition of its event.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Handled: acknowledge, record the event id as handled if `record`, write its effects
    /// (publish its follow-ups).
    Ack {
        /// Record the event id for dedupe.
        record: bool,
        /// What the handler left to write with the ack.
        effects: Effects,
    },
    /// Acknowledge only: a duplicate, or an event the subscriber does not want.
    Skip,
    /// Acknowledge and schedule `fields` to be delivered again at `due_ms`.
    Retry {
        /// When the retry is due (Unix ms).
        due_ms: u64,
        /// Fields of the retry-stream entry.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Acknowledge and add `fields` to the dead-letter stream.
    DeadLetter {
        /// Fields of the dead-letter entry.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// No verdict (a host-side failure, or the host stopping): the entry stays pending and
    /// is delivered again; a run that was `charged` (its start recorded) is taken off the
    /// event's crash budget.
    GiveBack {
        /// The run's start was recorded (start.lua): take it back.
        charged: bool,
    },
}

/// One entry to settle.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// Stream key the entry was read from (source or retry stream).
    pub key: String,
    /// Entry id.
    pub id: String,
    /// The event's id (empty for an entry that is not a valid event).
    pub event_id: String,
    /// The run's owner: the event's `_origin`, stable across its retries.
    pub owner: String,
    /// Whether the event may hold a partition key to hand on.
    pub hand_on: bool,
    /// What to do.
    pub disposition: Disposition,
    /// The dead letter to write instead if a follow-up's stream refuses the ack.
    pub fallback: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// For an ack with state writes: what to do instead when the commit is refused.
    pub state_fallbacks: Option<Box<StateFallbacks>>,
    /// What it adds to the metrics once settled.
    pub tally: Tally,
}

impl Settlement {
    /// The settlement that gives an entry back without a verdict: it stays pending and, if
    /// its run was `charged` (started), the run is taken off its event's crash budget.
    pub fn give_back(key: String, id: String, event_id: String, owner: String, charged: bool) -> Self {
        Self {
            key,
            id,
            event_id,
            owner,
            hand_on: false,
            disposition: Disposition::GiveBack { charged },
            fallback: None,
            state_fallbacks: None,
            tally: Tally::None,
        }
    }
}

/// What an ack with state writes becomes when its commit is refused (worked out by the
/// worker, which knows the event's attempt and the retry policy).
#[derive(Debug, Clone, PartialEq)]
pub struct StateFallbacks {
    /// A key the event read changed meanwhile: run the event again at once, on the same
    /// attempt (it did nothing wrong): a retry due now that keeps its attempt number.
    pub conflict: Disposition,
    /// Its writes would pass the subscriber's quota: a failure of the event, retried or
    /// dead-lettered by the retry policy.
    pub over_quota: Disposition,
}

/// How a settle script answered for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Settled now.
    Done,
    /// Not pending any more: another consumer settled it.
    Elsewhere,
    /// A follow-up's stream key holds another type: nothing was written or acked.
    FollowUpRefused,
    /// The schedule or dead-letter key holds another type: nothing was written or acked.
    KeyRefused,
    /// A state key the event read changed meanwhile: nothing was written or acked.
    StateConflict,
    /// The event's state writes would pass the quota: nothing was written or acked.
    StateOverQuota,
}

impl Settled {
    /// The answer `settle.lua` writes as `code`; `None` for a code it never writes.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::Done,
            0 => Self::Elsewhere,
            -1 => Self::FollowUpRefused,
            -2 => Self::KeyRefused,
            -3 => Self::StateConflict,
            -4 => Self::StateOverQuota,
            _ => return None,
        })
    }
}

/// Fields of an event as owned pairs, as `XADD` writes them.
pub fn event_fields(event: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> =
        event.to_fields().into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect();
    out.push((b"schemaversion".to_vec(), event.schemaversion.to_string().into_bytes()));
    out
}

/// Where a settle writes follow-ups: straight to their streams, or, on a cluster, the ones
/// bound for another hash slot into the stream's forward key (same slot, written with the
/// ack), from which the housekeeper forwards them with their ids.
#[derive(Debug, Clone, Copy)]
pub struct Routing<'a> {
    /// Talking to a cluster.
    pub cluster: bool,
    /// The subscriber's keys on the source stream.
    pub keys: &'a SubscriberKeys,
    /// Partition counts of partitioned streams: a follow-up goes to its partition.
    pub partitions: &'a std::collections::BTreeMap<String, u32>,
}

/// The meta field naming a forwarded follow-up's target stream.
pub const FORWARD_TO: &str = "_to";

/// The settle script's arguments for one settlement, flat (Lua reads them by index, which
/// costs a fraction of decoding netstrings there): their count, then the op and identity,
/// then what the op needs; only the fields of an entry to write (`XADD`) are a netstring
/// list, as `unpack` takes them.
fn encode(s: &Settlement, routing: Routing<'_>) -> Vec<Vec<u8>> {
    let flag = |b: bool| if b { b"1".to_vec() } else { b"0".to_vec() };
    let (op, rest): (&str, Vec<Vec<u8>>) = match &s.disposition {
        Disposition::Ack { record, effects } => {
            let mut rest = vec![flag(*record)];
            if let Some(state) = &effects.state {
                rest.push(state.args.len().to_string().into_bytes());
                rest.extend(state.args.iter().cloned());
            }
            let home = keys::slot(&routing.keys.stream);
            for f in &effects.follow_ups {
                let mut fields = event_fields(&f.event);
                let n = routing.partitions.get(&f.stream).copied().unwrap_or(1);
                let target = keys::route(&f.stream, n, f.event.partitionkey.as_deref(), &f.event.id);
                if routing.cluster && keys::slot(&target) != home {
                    fields.push((FORWARD_TO.into(), target.into_bytes()));
                    rest.push(routing.keys.forward.as_bytes().to_vec());
                } else {
                    rest.push(target.into_bytes());
                }
                rest.push(netstrings(&fields));
            }
            (if effects.state.is_some() { "ackst" } else { "ack" }, rest)
        }
        Disposition::Skip => ("skip", Vec::new()),
        Disposition::Retry { due_ms, fields } => ("retry", vec![due_ms.to_string().into_bytes(), netstrings(fields)]),
        Disposition::DeadLetter { fields } => ("dlq", vec![netstrings(fields)]),
        Disposition::GiveBack { charged } => ("giveback", vec![flag(*charged)]),
    };
    let mut out = Vec::with_capacity(7 + rest.len());
    out.push((6 + rest.len()).to_string().into_bytes());
    out.push(op.as_bytes().to_vec());
    out.push(s.key.as_bytes().to_vec());
    out.push(s.id.as_bytes().to_vec());
    out.push(s.event_id.as_bytes().to_vec());
    out.push(s.owner.as_bytes().to_vec());
    out.push(flag(s.hand_on));
    out.extend(rest);
    out
}

/// Apply `settlements` for subscriber `group`: plain acks in one `MULTI`, acks that write
/// state and nothing else in one `acks.lua` call, the rest in one `settle.lua` call; one
/// answer each.
pub async fn settle<C: ConnectionLike>(
    conn: &mut C,
    routing: Routing<'_>,
    group: &str,
    dedupe_window_ms: u64,
    lease_ms: u64,
    settlements: &[Settlement],
) -> redis::RedisResult<Vec<Settled>> {
    if settlements.is_empty() {
        return Ok(Vec::new());
    }
    // The hot path: acks without follow-ups or a key to hand on go as one MULTI of native
    // commands (no Lua); those whose only effect is state through the lean script; the rest
    // through the whole one.
    let mut ways: [Vec<usize>; 3] = Default::default();
    for (i, s) in settlements.iter().enumerate() {
        ways[way(s) as usize].push(i);
    }
    let [plain, acks, scripted] = ways;
    let mut answers = vec![Settled::Done; settlements.len()];
    if !plain.is_empty() {
        let plain: Vec<&Settlement> = plain.iter().map(|&i| &settlements[i]).collect();
        settle_plain(conn, routing.keys, group, dedupe_window_ms, &plain).await?;
    }
    for (indices, lean) in [(acks, true), (scripted, false)] {
        if indices.is_empty() {
            continue;
        }
        let these: Vec<&Settlement> = indices.iter().map(|&i| &settlements[i]).collect();
        let args = script_args(routing, group, dedupe_window_ms, lease_ms, &these);
        let lean = if lean { settle_acks(conn, routing.keys, &args, these.len()).await? } else { None };
        // None from acks.lua: the state key holds another type, which settle.lua answers for.
        let codes = match lean {
            Some(codes) => codes,
            None => settle_scripted(conn, routing.keys, &args, these.len()).await?,
        };
        for (i, code) in indices.into_iter().zip(codes) {
            answers[i] = code;
        }
    }
    Ok(answers)
}

/// Which way a settlement goes (see [`settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// An ack (or skip) with nothing else to write: the `MULTI`.
    Plain = 0,
    /// An ack whose only effect is a state commit: `acks.lua`.
    Acks = 1,
    /// Anything else: `settle.lua`.
    Script = 2,
}

fn way(s: &Settlement) -> Way {
    if s.hand_on {
        return Way::Script;
    }
    match &s.disposition {
        Disposition::Ack { effects, .. } if effects.is_empty() => Way::Plain,
        Disposition::Ack { effects, .. } if effects.follow_ups.is_empty() => Way::Acks,
        Disposition::Skip => Way::Plain,
        _ => Way::Script,
    }
}

/// Settle plain acks in one MULTI: `XACK` per stream, the handled ids recorded, their
/// run markers removed, the dedupe records pruned. Idempotent as a whole. A marker is
/// removed whoever holds it: the event is recorded as handled in the same step, so any other
/// delivery of it is a duplicate from now on.
async fn settle_plain<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
    dedupe_window_ms: u64,
    settlements: &[&Settlement],
) -> redis::RedisResult<()> {
    let now = now_ms();
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut by_key: Vec<(&str, Vec<&str>)> = Vec::new();
    for s in settlements {
        match by_key.iter_mut().find(|(k, _)| *k == s.key) {
            Some((_, ids)) => ids.push(&s.id),
            None => by_key.push((&s.key, vec![&s.id])),
        }
    }
    for (key, ids) in &by_key {
        pipe.cmd("XACK").arg(*key).arg(group).arg(ids).ignore();
    }
    let handled: Vec<&str> = settlements
        .iter()
        .filter(|s| matches!(s.disposition, Disposition::Ack { record: true, .. }))
        .map(|s| s.event_id.as_str())
        .collect();
    if !handled.is_empty() && dedupe_window_ms > 0 {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&keys.seen);
        for id in &handled {
            zadd.arg(now).arg(*id);
        }
        pipe.add_command(zadd).ignore();
        let cutoff = format!("({}", now.saturating_sub(dedupe_window_ms));
        pipe.cmd("ZREMRANGEBYSCORE").arg(&keys.seen).arg("-inf").arg(&cutoff).ignore();
        pipe.cmd("ZREMRANGEBYSCORE").arg(&keys.dead).arg("-inf").arg(&cutoff).ignore();
    }
    let runs: Vec<&str> = settlements
        .iter()
        .filter(|s| matches!(s.disposition, Disposition::Ack { .. }) && !s.event_id.is_empty())
        .map(|s| s.event_id.as_str())
        .collect();
    if !runs.is_empty() {
        pipe.cmd("HDEL").arg(&keys.inflight).arg(&runs).ignore();
    }
    pipe.query_async(conn).await
}

/// The arguments of a settle script call (`settle.lua` and `acks.lua` take the same): group,
/// now, dedupe window, lease, then each settlement (`encode`).
fn script_args(
    routing: Routing<'_>,
    group: &str,
    dedupe_window_ms: u64,
    lease_ms: u64,
    settlements: &[&Settlement],
) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = vec![
        group.as_bytes().to_vec(),
        now_ms().to_string().into_bytes(),
        dedupe_window_ms.to_string().into_bytes(),
        lease_ms.to_string().into_bytes(),
    ];
    args.extend(settlements.iter().flat_map(|s| encode(s, routing)));
    args
}

/// The codes of a settle script's reply for `n` entries.
fn codes(script: &scripts::Lua, reply: redis::Value, n: usize) -> redis::RedisResult<Vec<Settled>> {
    scripts::list(script, reply, n, |v| match v {
        redis::Value::Int(code) => Settled::from_code(*code),
        _ => None,
    })
}

/// Settle `n` entries through `settle.lua` with `args` ([`script_args`]); one answer each.
async fn settle_scripted<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    args: &[Vec<u8>],
    n: usize,
) -> redis::RedisResult<Vec<Settled>> {
    let reply = scripts::call(conn, &scripts::SETTLE, &scripts::settle_keys(keys), args).await?;
    codes(&scripts::SETTLE, reply, n)
}

/// Settle `n` acks whose only effect is state through `acks.lua`; `None` (nothing written)
/// when the state key holds another type, which `settle.lua` then answers for.
async fn settle_acks<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    args: &[Vec<u8>],
    n: usize,
) -> redis::RedisResult<Option<Vec<Settled>>> {
    match scripts::call(conn, &scripts::ACKS, &scripts::acks_keys(keys), args).await? {
        redis::Value::Nil => Ok(None),
        reply => codes(&scripts::ACKS, reply, n).map(Some),
    }
}

/// The largest batch of settlements sent in one call.
const MAX_BATCH: usize = 512;

/// The settler of one (subscriber, stream): receives settlements from the dispatcher and the
/// workers and applies them, grouped, retrying through Redis outages until the host stops.
pub struct Settler {
    /// Shared host context.
    pub ctx: std::sync::Arc<Context>,
    /// The subscriber's keys on this stream.
    pub keys: SubscriberKeys,
    /// The subscriber: its active version's dedupe window and lease are read for every
    /// batch, so a reload reaches the settler (a window kept from the first version would
    /// record nothing after `0s` → `1h`, or prune at the old window).
    pub subscriber: std::sync::Arc<super::Subscriber>,
    /// Entries in this host's hands; settled ones leave it.
    pub in_flight: InFlight,
    /// Metric handles.
    pub counters: Counters,
}

impl Settler {
    /// Settle what arrives on `rx` until every sender is gone. On `stop`, a settle that
    /// cannot reach Redis is given up: its entries stay pending and are delivered again.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Settlement>, stop: Stop) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut own = None;
        while let Some(first) = self.next(&mut rx, &mut own, &stop).await {
            batch.push(first);
            super::fill(&mut batch, &mut rx, MAX_BATCH);
            self.settle_batch(&mut own, &mut batch, &stop).await;
            batch.clear();
        }
    }

    /// The next settlement; while settles of this settler stand unconfirmed (policy
    /// `continue`), meanwhile ask every second whether a replica has them now.
    async fn next(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Settlement>,
        own: &mut Option<Conn>,
        stop: &Stop,
    ) -> Option<Settlement> {
        loop {
            let writer = self.writer();
            if !writer.unconfirmed() {
                return rx.recv().await;
            }
            tokio::select! {
                s = rx.recv() => return s,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let checked = match self.ctx.write_conn(own).await {
                Ok(mut conn) => writer.recheck(&mut conn, stop).await,
                Err(e) => Err(e),
            };
            if checked.is_err() {
                *own = None;
            }
        }
    }

    fn writer(&self) -> crate::replica::Writer<'_> {
        crate::replica::Writer::new(
            &self.ctx.replicas,
            &self.ctx.metrics,
            self.ctx.replication,
            "settle",
            &self.subscriber.name,
            &self.keys.stream,
        )
    }

    /// Under `durability = "replicated"`: wait for a replica to have the `writes` settles just
    /// made on `conn`, as `durability_on_missing_replica` says ([`crate::replica::Writer`]):
    /// `wait` sends `WAIT` again on the same connection until a replica confirms, taking no
    /// other settle meanwhile (and the reader holds back); `continue` counts them and goes on.
    /// A settle that stands on the primary only and is lost in a failover is delivered again
    /// (at least once; its effects were written atomically with the ack, so they are lost or
    /// kept together). A failed `WAIT` is returned: the primary may be gone with the settle.
    async fn confirm(&self, conn: &mut Conn, writes: usize, stop: &Stop) -> redis::RedisResult<()> {
        self.writer().confirm(conn, &self.keys.stream, writes as u64, None, stop).await.map(|_| ())
    }

    /// Settle `batch` on `conn` once; under `durability = "replicated"` then wait for a
    /// replica (see [`Settler::confirm`]).
    async fn settle_once(
        &self,
        own: &mut Option<Conn>,
        batch: &[Settlement],
        stop: &Stop,
    ) -> redis::RedisResult<Vec<Settled>> {
        let routing =
            Routing { cluster: self.ctx.redis.is_cluster(), keys: &self.keys, partitions: &self.ctx.partitions };
        let active = self.subscriber.active();
        let settings = &active.settings;
        let window_ms = settings.dedupe_window.as_millis() as u64;
        let lease_ms = self.ctx.claim_idle_of(&self.subscriber).as_millis() as u64;
        let mut conn = self.ctx.write_conn(own).await?;
        let answers = settle(&mut conn, routing, &self.subscriber.name, window_ms, lease_ms, batch).await?;
        if let Err(e) = self.confirm(&mut conn, batch.len(), stop).await {
            // The connection failed before a replica was known to have the settle: its primary
            // may have died with it (a failover). Settle again, on whichever primary serves the
            // slot now: the effects are guarded by the XACK, so a settle that survived writes
            // nothing twice, and one that was lost is written again with the same follow-up
            // ids; a give-back applied again finds its lease ended and changes nothing. The
            // first answers count.
            tracing::warn!(subscriber = %self.subscriber.name, stream = %self.keys.stream, "confirming a settle failed ({e}); settling again");
            *own = None;
            let mut conn = self.ctx.write_conn(own).await?;
            settle(&mut conn, routing, &self.subscriber.name, window_ms, lease_ms, batch).await?;
            self.confirm(&mut conn, batch.len(), stop).await?;
        }
        Ok(answers)
    }

    /// What to settle instead of `s`, whose settle Redis refused with `answer` (a follow-up's
    /// stream of the wrong type, a state commit in conflict or over its quota): the fallback the
    /// worker worked out, or `None` (logged) when there is none and the entry stays pending.
    fn instead(&self, s: &Settlement, answer: Settled) -> Option<Settlement> {
        let mut again = s.clone();
        if answer == Settled::FollowUpRefused {
            let Some(fields) = &s.fallback else {
                tracing::error!(subscriber = %self.subscriber.name, entry_id = %s.id, "cannot settle: a follow-up's stream holds another type of key; the entry stays pending");
                return None;
            };
            tracing::warn!(subscriber = %self.subscriber.name, event_id = %s.event_id, "a follow-up's stream holds another type of key; the event is dead-lettered");
            again.disposition = Disposition::DeadLetter { fields: fields.clone() };
            again.tally = Tally::DeadLettered(FailureKind::Trap);
        } else {
            let Some(instead) = &s.state_fallbacks else {
                tracing::error!(subscriber = %self.subscriber.name, entry_id = %s.id, "cannot settle: a state commit was refused and no fallback was given; the entry stays pending");
                return None;
            };
            let conflict = answer == Settled::StateConflict;
            tracing::debug!(subscriber = %self.subscriber.name, event_id = %s.event_id, conflict, "state commit refused; settling the event as its fallback");
            // A conflict's retry keeps the partition key held (as any retry).
            (again.disposition, again.tally) = match (&instead.over_quota, conflict) {
                (_, true) => (instead.conflict.clone(), Tally::None),
                (retry @ Disposition::Retry { .. }, false) => (retry.clone(), Tally::Retried(FailureKind::StateQuota)),
                (other, false) => (other.clone(), Tally::DeadLettered(FailureKind::StateQuota)),
            };
            again.state_fallbacks = None;
        }
        again.fallback = None;
        Some(again)
    }

    async fn settle_batch(&self, own: &mut Option<Conn>, batch: &mut Vec<Settlement>, stop: &Stop) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let result = self.settle_once(own, batch, stop).await;
            if result.is_err() {
                *own = None;
            }
            match result {
                Ok(answers) => {
                    self.ctx.health.up(&self.ctx.metrics);
                    let mut refused = Vec::new();
                    for (s, answer) in batch.iter().zip(answers) {
                        match answer {
                            Settled::Done => self.counters.count(s.tally),
                            Settled::Elsewhere => {}
                            Settled::KeyRefused => tracing::error!(
                                subscriber = %self.subscriber.name, entry_id = %s.id, schedule = %self.keys.schedule, dlq = %self.keys.dlq,
                                "cannot settle: the retry schedule or the dead-letter key holds another type of key; the entry stays pending until an operator fixes it"
                            ),
                            Settled::FollowUpRefused | Settled::StateConflict | Settled::StateOverQuota => {
                                if let Some(again) = self.instead(s, answer) {
                                    refused.push(again);
                                    continue;
                                }
                            }
                        }
                        self.in_flight.remove(&s.key, &s.id);
                    }
                    if refused.is_empty() {
                        return;
                    }
                    *batch = refused;
                }
                Err(e) => {
                    self.ctx.health.down(&self.ctx.metrics, &e);
                    if stop.is_stopped() {
                        for s in batch.iter() {
                            self.in_flight.remove(&s.key, &s.id);
                        }
                        return;
                    }
                    backoff.wait().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstrings_are_length_prefixed_and_binary_safe() {
        let fields = vec![(b"a".to_vec(), b"x:y,".to_vec()), (b"".to_vec(), vec![0u8, 255])];
        assert_eq!(netstrings(&fields), b"1:a,4:x:y,,0:,2:\x00\xff,".to_vec());
    }

    #[test]
    fn on_a_cluster_a_follow_up_to_another_slot_goes_to_the_forward_key() {
        let keys = SubscriberKeys::new("events", "sub");
        use crate::handler::FollowUp;
        let follow = |stream: &str| FollowUp { stream: stream.into(), event: Event::new("F", "sub", "{}") };
        assert_ne!(keys::slot("records"), keys::slot("events"));
        let s = Settlement {
            key: "events".into(),
            id: "1-0".into(),
            event_id: "e".into(),
            owner: "events/1-0".into(),
            hand_on: false,
            disposition: Disposition::Ack {
                record: true,
                effects: Effects { follow_ups: vec![follow("records"), follow("{events}x")], state: None },
            },
            fallback: None,
            state_fallbacks: None,
            tally: Tally::Handled,
        };
        let none = std::collections::BTreeMap::new();
        let text = |routing| String::from_utf8_lossy(&encode(&s, routing).join(&b"|"[..])).into_owned();
        let on_cluster = text(Routing { cluster: true, keys: &keys, partitions: &none });
        assert!(
            on_cluster.contains("|ferry:forward:{events}|") && on_cluster.contains("3:_to,7:records,"),
            "{on_cluster}"
        );
        assert!(on_cluster.contains("|{events}x|"), "same slot: written directly");
        let single = text(Routing { cluster: false, keys: &keys, partitions: &none });
        assert!(!single.contains("forward") && single.contains("|records|"));
    }

    #[test]
    fn a_settlement_encodes_its_op_and_identity_first() {
        let s = Settlement {
            key: "events".into(),
            id: "1-0".into(),
            event_id: "e".into(),
            owner: "events/1-0".into(),
            hand_on: true,
            disposition: Disposition::Retry { due_ms: 7, fields: vec![(b"k".to_vec(), b"v".to_vec())] },
            fallback: None,
            state_fallbacks: None,
            tally: Tally::None,
        };
        let keys = SubscriberKeys::new("events", "sub");
        assert_eq!(
            encode(&s, Routing { cluster: true, keys: &keys, partitions: &Default::default() }).join(&b"|"[..]),
            b"8|retry|events|1-0|e|events/1-0|1|7|1:k,1:v,".to_vec()
        );
    }

    /// A fresh redis-server (stopped when dropped) and a connection to it.
    async fn fresh_redis() -> (ferry_test_kit::redis_server::RedisServer, redis::aio::MultiplexedConnection) {
        let server = ferry_test_kit::redis_server::RedisServer::start().expect("redis");
        let client = redis::Client::open(server.url()).expect("url");
        let conn = client.get_multiplexed_async_connection().await.expect("connect");
        (server, conn)
    }

    /// `n` entries added to `stream` and read by `group` (pending, for a settle to ack).
    async fn read_by_group(
        conn: &mut redis::aio::MultiplexedConnection,
        stream: &str,
        group: &str,
        n: usize,
    ) -> Vec<String> {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await
            .expect("group");
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(redis::cmd("XADD").arg(stream).arg("*").arg("k").arg("v").query_async(conn).await.expect("xadd"));
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(group).arg("c").arg("STREAMS").arg(stream).arg(">");
        let _: redis::Value = read.query_async(conn).await.expect("read");
        ids
    }

    /// A handled entry `id` of stream `events` settled as `disposition`.
    fn settlement(id: &str, disposition: Disposition) -> Settlement {
        Settlement {
            key: "events".into(),
            id: id.into(),
            event_id: format!("e-{id}"),
            owner: format!("events/{id}"),
            hand_on: false,
            disposition,
            fallback: None,
            state_fallbacks: None,
            tally: Tally::Handled,
        }
    }

    /// An ack of entry `id` with the state commit `state`.
    fn state_ack(id: &str, state: crate::handler::StateCommit) -> Settlement {
        let effects = Effects { follow_ups: Vec::new(), state: Some(state) };
        settlement(id, Disposition::Ack { record: false, effects })
    }

    /// Issue 25: state writes ride in the settle, guarded by the same XACK as follow-ups.
    /// Against a real server: a commit whose reads are current writes with the ack; one whose
    /// key changed meanwhile, or that passes the quota, writes and acks nothing; a settle
    /// replayed after its ack writes nothing twice.
    #[tokio::test]
    async fn state_commits_with_the_ack_and_a_stale_read_or_the_quota_refuses_both() {
        let (_server, mut conn) = fresh_redis().await;
        let keys = SubscriberKeys::new("events", "sub");
        let ids = read_by_group(&mut conn, "events", "sub", 3).await;
        // quota, reads n, (key, version seen)*, writes m, the checked writes' change of the
        // total, (key, op, value, next version)*
        let commit = |quota: &str, seen: &str, delta: &str, value: &str, next: &str| crate::handler::StateCommit {
            args: args(&[quota, "1", "n", seen, "1", delta, "n", "s", value, next]),
        };
        let none = std::collections::BTreeMap::new();
        let routing = Routing { cluster: false, keys: &keys, partitions: &none };
        let reader = conn.clone();
        let hget = |field: &'static str| {
            let mut conn = reader.clone();
            let key = keys.state.clone();
            async move {
                redis::cmd("HGET").arg(key).arg(field).query_async::<Option<String>>(&mut conn).await.expect("hget")
            }
        };
        // Two events read `n` at version 0 and each writes 1: the first commits with its ack.
        let first = state_ack(&ids[0], commit("0", "0", "2", "1", "1"));
        let answers = settle(&mut conn, routing, "sub", 0, 60_000, std::slice::from_ref(&first)).await.expect("settle");
        assert_eq!(answers, [Settled::Done]);
        assert_eq!((hget("=n").await.as_deref(), hget("#n").await.as_deref()), (Some("1"), Some("1")));
        // The second read a version that is gone: refused, nothing acked or written.
        let second = state_ack(&ids[1], commit("0", "0", "2", "1", "1"));
        let answers = settle(&mut conn, routing, "sub", 0, 60_000, &[second]).await.expect("settle");
        assert_eq!(answers, [Settled::StateConflict]);
        let pending: redis::Value =
            redis::cmd("XPENDING").arg("events").arg("sub").query_async(&mut conn).await.expect("xpending");
        let redis::Value::Array(summary) = pending else { panic!("{pending:?}") };
        assert_eq!(summary.first(), Some(&redis::Value::Int(2)), "still pending: the second and the third");
        // Replayed after its ack (a lost reply): its own write moved the version, so the check
        // refuses it before the XACK, and the fallback the settler then sends (a retry) finds
        // it no longer pending. Nothing is applied twice.
        let answers = settle(&mut conn, routing, "sub", 0, 60_000, std::slice::from_ref(&first)).await.expect("settle");
        assert_eq!(answers, [Settled::StateConflict]);
        let mut fallback = first.clone();
        fallback.disposition = Disposition::Retry { due_ms: 0, fields: vec![(b"k".to_vec(), b"v".to_vec())] };
        let answers = settle(&mut conn, routing, "sub", 0, 60_000, &[fallback]).await.expect("settle");
        assert_eq!(answers, [Settled::Elsewhere]);
        assert_eq!(hget("#n").await.as_deref(), Some("1"), "applied once");
        // Past the quota: refused before the ack as well.
        let big = state_ack(&ids[2], commit("8", "1", "28", "a value longer than the quota", "2"));
        let answers = settle(&mut conn, routing, "sub", 0, 60_000, &[big]).await.expect("settle");
        assert_eq!(answers, [Settled::StateOverQuota]);
        assert_eq!(hget("=n").await.as_deref(), Some("1"));
    }

    /// Byte strings of `parts`.
    fn args(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    /// `batch` settled through `acks.lua` where [`settle`] sends it (`lean`), or all through
    /// `settle.lua`: both must answer the same.
    async fn settle_through(
        conn: &mut redis::aio::MultiplexedConnection,
        keys: &SubscriberKeys,
        window_ms: u64,
        batch: &[Settlement],
        lean: bool,
    ) -> Vec<Settled> {
        let none = std::collections::BTreeMap::new();
        let routing = Routing { cluster: false, keys, partitions: &none };
        if lean {
            return settle(conn, routing, "sub", window_ms, 60_000, batch).await.expect("settle");
        }
        let refs: Vec<&Settlement> = batch.iter().collect();
        let args = script_args(routing, "sub", window_ms, 60_000, &refs);
        settle_scripted(conn, keys, &args, refs.len()).await.expect("settle")
    }

    /// The state hash's fields, and whether its `_bytes` is the sum of its keys and values.
    async fn state_of(
        conn: &mut redis::aio::MultiplexedConnection,
        keys: &SubscriberKeys,
    ) -> std::collections::HashMap<String, String> {
        let fields: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(&keys.state).query_async(conn).await.expect("hgetall");
        let stored: usize = fields.iter().filter_map(|(f, v)| f.strip_prefix('=').map(|k| k.len() + v.len())).sum();
        assert_eq!(fields.get("_bytes").map_or("0", String::as_str), stored.to_string(), "the total: {fields:?}");
        fields
    }

    /// The commits of one settle call read the state once and see each other's writes: of two
    /// events that read `n` at version 0, only the first commits; one that read the first's
    /// version commits after it, across a retry entry (which, in settle.lua, sends the writes
    /// so far), and a delete after a set leaves the version bumped, the value gone and the
    /// total even. The same through acks.lua (the acks) and through settle.lua alone.
    #[tokio::test]
    async fn the_commits_of_one_settle_call_see_each_others_writes() {
        for lean in [true, false] {
            let (_server, mut conn) = fresh_redis().await;
            let keys = SubscriberKeys::new("events", "sub");
            let ids = read_by_group(&mut conn, "events", "sub", 5).await;
            let commit = |seen: &str, delta: &str, op: &str, value: &str, next: &str| crate::handler::StateCommit {
                args: args(&["0", "1", "n", seen, "1", delta, "n", op, value, next]),
            };
            let retry =
                settlement(&ids[2], Disposition::Retry { due_ms: 0, fields: vec![(b"k".to_vec(), b"v".to_vec())] });
            let batch = [
                state_ack(&ids[0], commit("0", "2", "s", "1", "1")),
                state_ack(&ids[1], commit("0", "2", "s", "x", "1")),
                retry,
                state_ack(&ids[3], commit("1", "1", "s", "22", "2")),
                state_ack(&ids[4], commit("2", "-3", "d", "", "3")),
            ];
            let answers = settle_through(&mut conn, &keys, 0, &batch, lean).await;
            assert_eq!(answers, [Settled::Done, Settled::StateConflict, Settled::Done, Settled::Done, Settled::Done]);
            let fields = state_of(&mut conn, &keys).await;
            assert_eq!(fields.get("=n"), None, "deleted last");
            assert_eq!(fields.get("#n").map(String::as_str), Some("3"), "three writes applied, one refused");
        }
    }

    /// A blind write (a key the event did not read) is looked up by the script: after a
    /// checked write of the same key in the same call it takes the next version and counts
    /// the size against what the first wrote; a blind delete of a key never written bumps
    /// its version and changes no total. The acks are recorded as handled and their run
    /// markers forgotten. The same through acks.lua and settle.lua.
    #[tokio::test]
    async fn a_blind_write_after_a_checked_one_in_the_same_call_counts_from_the_first() {
        for lean in [true, false] {
            let (_server, mut conn) = fresh_redis().await;
            let keys = SubscriberKeys::new("events", "sub");
            let ids = read_by_group(&mut conn, "events", "sub", 3).await;
            let mut markers = redis::cmd("HSET");
            markers.arg(&keys.inflight);
            for (n, id) in ids.iter().enumerate() {
                markers.arg(format!("e-{id}")).arg(scripts::marker(
                    now_ms() + 60_000,
                    1 + n as u32 % 2,
                    &format!("events/{id}"),
                ));
            }
            let _: () = markers.query_async(&mut conn).await.expect("markers");
            let commit = |parts: &[&str]| crate::handler::StateCommit { args: args(parts) };
            let mut batch = vec![
                // Read n (absent), set it to "abc": checked, +4.
                state_ack(&ids[0], commit(&["0", "1", "n", "0", "1", "4", "n", "s", "abc", "1"])),
                // Blind: set n to "hello" (+2 over "abc"), delete m (absent), set z to "zz".
                state_ack(
                    &ids[1],
                    commit(&["0", "0", "3", "0", "n", "s", "hello", "", "m", "d", "", "", "z", "s", "zz", ""]),
                ),
                // Blind again, after both: z to "y" (-1).
                state_ack(&ids[2], commit(&["0", "0", "1", "0", "z", "s", "y", ""])),
            ];
            for s in &mut batch {
                s.disposition = match s.disposition.clone() {
                    Disposition::Ack { effects, .. } => Disposition::Ack { record: true, effects },
                    other => other,
                };
            }
            let answers = settle_through(&mut conn, &keys, 60_000, &batch, lean).await;
            assert_eq!(answers, [Settled::Done; 3]);
            let fields = state_of(&mut conn, &keys).await;
            let field = |f: &str| fields.get(f).map(String::as_str);
            assert_eq!((field("=n"), field("#n")), (Some("hello"), Some("2")));
            assert_eq!((field("=m"), field("#m")), (None, Some("1")));
            assert_eq!((field("=z"), field("#z")), (Some("y"), Some("2")));
            assert_eq!(field("_bytes"), Some("8"), "n=hello and z=y");
            let recorded: usize = redis::cmd("ZCARD").arg(&keys.seen).query_async(&mut conn).await.expect("zcard");
            assert_eq!(recorded, 3, "recorded as handled");
            let left: usize = redis::cmd("HLEN").arg(&keys.inflight).query_async(&mut conn).await.expect("hlen");
            assert_eq!(left, 0, "run markers forgotten");
        }
    }

    /// acks.lua meets a state key of another type: it writes nothing and settle.lua answers
    /// (the entry refused, given back, still pending), while a plain ack beside it settles.
    #[tokio::test]
    async fn a_state_key_of_another_type_falls_back_to_settle_lua_and_loses_nothing() {
        let (_server, mut conn) = fresh_redis().await;
        let keys = SubscriberKeys::new("events", "sub");
        let ids = read_by_group(&mut conn, "events", "sub", 2).await;
        let _: () = redis::cmd("SET").arg(&keys.state).arg("not a hash").query_async(&mut conn).await.expect("set");
        let commit = crate::handler::StateCommit { args: args(&["0", "0", "1", "0", "n", "s", "1", ""]) };
        let plain = settlement(&ids[1], Disposition::Ack { record: false, effects: Effects::default() });
        let answers = settle_through(&mut conn, &keys, 0, &[state_ack(&ids[0], commit), plain], true).await;
        assert_eq!(answers, [Settled::KeyRefused, Settled::Done]);
        let pending: redis::Value =
            redis::cmd("XPENDING").arg("events").arg("sub").query_async(&mut conn).await.expect("xpending");
        let redis::Value::Array(summary) = pending else { panic!("{pending:?}") };
        assert_eq!(summary.first(), Some(&redis::Value::Int(1)), "the state ack is still pending");
        let kept: String = redis::cmd("GET").arg(&keys.state).query_async(&mut conn).await.expect("get");
        assert_eq!(kept, "not a hash");
    }
}
