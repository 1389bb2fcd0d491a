//! The dispatcher: turns the entries of a read into work and immediate settlements.
//!
//! For each entry it decides, in this order: is it a valid event of a sane size (else it is
//! dead-lettered as `invalid-event`), does the subscriber want it (else it is acked as
//! skipped), and then, atomically with recording the decision (a precheck `MULTI` of native
//! commands decides the common case, a fresh event with no key to take; `dispatch.lua`,
//! one call for the rest of the read, decides every other case): was this event already handled or dead-lettered (a
//! duplicate: acked without running), is another delivery of it being handled right now
//! (it waits and is decided after that one settles), has it used up its crash budget
//! (dead-lettered as `crash`), is its partition key held (parked behind the holder). What
//! is left runs.

use std::sync::Arc;

use redis::Value;

use super::Tally;
use super::letters::Failure;
use super::letters::meta;
use super::read::Entry;
use super::scripts::{Decision, netstrings};
use super::settle::{Disposition, Settlement};
use super::{Active, now_ms, origin, scripts};
use crate::contract::upcast::{Plan as Upcast, Upcasters};
use crate::event::Event;
use crate::handler::{FailureKind, Job};
use crate::keys::SubscriberKeys;

/// The entry-size rule, shared with what plugins may publish (`event`).
pub use crate::event::{MAX_ENTRY_BYTES, MAX_FIELDS};

/// An event to run.
#[derive(Debug)]
pub struct Work {
    /// The entry it came from.
    pub entry: Entry,
    /// What the handler gets.
    pub job: Arc<Job>,
    /// The run's owner (`_origin`).
    pub owner: String,
    /// The host running it (its consumer name), recorded in a dead letter.
    pub host: Arc<str>,
    /// It holds its partition key: its settle hands the key on.
    pub hand_on: bool,
    /// The chain that converts the event to a version the subscriber accepts, if it needs one
    /// (the job holds the event as stored; the worker converts it for the handler's call).
    pub upcast: Option<Upcast>,
}

/// What the dispatcher made of a read.
#[derive(Debug, Default)]
pub struct Plan {
    /// Events to run, in read order.
    pub run: Vec<Work>,
    /// Entries settled without running.
    pub settle: Vec<Settlement>,
    /// Entries waiting for another delivery of the same event to settle.
    pub wait: Vec<Entry>,
    /// Entries parked behind their partition key (already acked and stored).
    pub parked: Vec<Entry>,
}

/// Written and removed again within the precheck's `MULTI` (under the field `""`, which no
/// event id can be: ids are not empty), so nothing else ever sees it. Redis keeps a hash of
/// up to 512 fields of at most 64 bytes as a listpack and scans it linearly on every lookup:
/// with a read's 500 markers an `HSETNX` cost 5.8 µs of Redis CPU. A longer value turns the
/// hash into a hash table (0.4 µs per `HSETNX`), which it stays until it is emptied.
const HASH_TABLE: &str = "keeps ferry's in-flight hash a hash table: see dispatch.rs, HASH_TABLE";

/// A read the dispatcher could not decide in full: Redis failed part-way.
#[derive(Debug)]
pub struct Undecided {
    /// What was decided (and recorded) before the failure: it stands.
    pub plan: Plan,
    /// Entries without a verdict: they stay pending and are read again.
    pub entries: Vec<Entry>,
    /// The failure.
    pub error: redis::RedisError,
}

/// The scores of a `ZMSCORE` reply (RESP2 bulk strings or RESP3 doubles; nil: absent).
fn scores(reply: Option<Value>) -> Vec<Option<f64>> {
    let Some(Value::Array(items)) = reply else { return Vec::new() };
    items
        .into_iter()
        .map(|v| match v {
            Value::Double(d) => Some(d),
            Value::Int(n) => Some(n as f64),
            Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
            _ => None,
        })
        .collect()
}

/// The dispatcher of one (subscriber, stream).
pub struct Dispatcher {
    /// The subscriber's keys on this stream.
    pub keys: SubscriberKeys,
    /// The subscriber's name (also its consumer group's).
    pub subscriber: String,
    /// This host's consumer name, recorded in the dead letters it writes.
    pub host: Arc<str>,
    /// The configured `claim_idle` (`None`: derived from the active version's deadline). The
    /// lease of a run (how long another delivery of the event waits for this one unless the
    /// housekeeper pushes it, which it does while the event waits and runs) is that idle time,
    /// read from the version each read is dispatched under.
    pub claim_idle: Option<std::time::Duration>,
    /// The schema registry: a wanted event whose payload fails its schema is an invalid event.
    pub contracts: Option<Arc<crate::contract::Registry>>,
    /// The active upcasters, if the host has any.
    pub upcasters: Option<Arc<Upcasters>>,
}

/// An entry's decision before the script: the part decided from the entry alone.
enum Local {
    Settle(Settlement),
    Candidate(Box<Candidate>),
}

/// A valid, wanted event whose fate the dispatch script decides.
struct Candidate {
    entry: Entry,
    event: Event,
    attempt: u32,
    owner: String,
    replay: bool,
    upcast: Option<Upcast>,
}

fn flag(on: bool) -> Vec<u8> {
    if on { b"1".to_vec() } else { b"0".to_vec() }
}

impl Dispatcher {
    /// Decide what happens to each of `entries` under `active`. On a Redis failure, what was
    /// already decided (and recorded) stands and comes back with the entries left undecided.
    pub async fn plan<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        active: &Active,
        entries: Vec<Entry>,
    ) -> Result<Plan, Box<Undecided>> {
        let mut plan = Plan::default();
        let mut candidates = Vec::new();
        for entry in entries {
            match self.local(active, entry) {
                Local::Settle(s) => plan.settle.push(s),
                Local::Candidate(c) => candidates.push(*c),
            }
        }
        if candidates.is_empty() {
            return Ok(plan);
        }
        let now = now_ms();
        let lease_ms = super::lease(self.claim_idle, &active.settings).as_millis() as u64;
        let undecided = |plan, candidates: Vec<Candidate>, error| {
            Box::new(Undecided { plan, entries: candidates.into_iter().map(|c| c.entry).collect(), error })
        };
        let guesses = match self.precheck(conn, active, &candidates, now, lease_ms).await {
            Ok(guesses) => guesses,
            Err(error) => return Err(undecided(plan, candidates, error)),
        };
        let asked: Vec<(&Candidate, &str)> =
            candidates.iter().zip(&guesses).filter_map(|(c, g)| Some((c, g.as_deref()?))).collect();
        let mut decisions: Vec<Decision> = Vec::new();
        if !asked.is_empty() {
            let args = self.script_args(active, &asked, now, lease_ms);
            let keys = scripts::dispatch_keys(&self.keys);
            let reply = scripts::call(conn, &scripts::DISPATCH, &keys, &args).await;
            decisions = match reply.and_then(|reply| Decision::parse_all(reply, asked.len())) {
                Ok(decisions) => decisions,
                Err(error) => {
                    // The prechecked runs are recorded: they stand. The rest is read again.
                    let (asked, decided): (Vec<_>, Vec<_>) =
                        candidates.into_iter().zip(guesses).partition(|(_, g)| g.is_some());
                    for (candidate, _) in decided {
                        self.apply(active, &mut plan, candidate, Decision::Run { holds: false });
                    }
                    return Err(undecided(plan, asked.into_iter().map(|(c, _)| c).collect(), error));
                }
            };
        }
        // In read order, so a single worker still runs events in the order they were read.
        // One decision per event asked (`Decision::parse_all` checked the count).
        let mut decisions = decisions.into_iter();
        for (candidate, guess) in candidates.into_iter().zip(guesses) {
            let decision = match guess {
                None => Decision::Run { holds: false },
                // Never short: counted by `parse_all`.
                Some(_) => decisions.next().unwrap_or(Decision::Wait),
            };
            self.apply(active, &mut plan, candidate, decision);
        }
        Ok(plan)
    }

    /// The precheck: one `MULTI` of native commands for the whole read (`HLEN holds`,
    /// `ZMSCORE` of the handled and dead-lettered records, `HSETNX` of a run marker per
    /// event). An event whose marker was new, that is not in either record within the window,
    /// that does not take a partition key and with no key held at all is decided here: it
    /// runs, recorded exactly as `dispatch.lua` would record it. For every other event the
    /// answer is `Some(marker it wrote, or '')`: the script decides it, treating that marker
    /// as absent. This keeps Lua (about 11 µs of Redis CPU per event) off the common path.
    async fn precheck<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        active: &Active,
        candidates: &[Candidate],
        now: u64,
        lease_ms: u64,
    ) -> redis::RedisResult<Vec<Option<String>>> {
        let settings = &active.settings;
        let mut guesses = vec![Some(String::new()); candidates.len()];
        // An event that may take its partition key is the script's from the start.
        let eligible: Vec<usize> = (0..candidates.len())
            .filter(|&i| !(settings.ordered && candidates[i].event.partitionkey.is_some()))
            .collect();
        if eligible.is_empty() || settings.retry.max_deliveries == 0 {
            return Ok(guesses);
        }
        let window = settings.dedupe_window.as_millis() as u64;
        let keys = &self.keys;
        let ids: Vec<&str> = eligible.iter().map(|&i| candidates[i].event.id.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HLEN").arg(&keys.holds);
        if window > 0 {
            pipe.cmd("ZMSCORE").arg(&keys.seen).arg(&ids);
            pipe.cmd("ZMSCORE").arg(&keys.dead).arg(&ids);
        }
        let expiry = now + lease_ms;
        // Leased, not yet started: a worker's start charges the run (start.lua).
        let markers: Vec<String> = eligible.iter().map(|&i| scripts::marker(expiry, 0, &candidates[i].owner)).collect();
        pipe.cmd("HSET").arg(&keys.inflight).arg("").arg(HASH_TABLE).ignore();
        for (id, marker) in ids.iter().zip(&markers) {
            pipe.cmd("HSETNX").arg(&keys.inflight).arg(*id).arg(marker);
        }
        pipe.cmd("HDEL").arg(&keys.inflight).arg("").ignore();
        let mut replies = pipe.query_async::<Vec<Value>>(conn).await?.into_iter();
        let holds = !matches!(replies.next(), Some(Value::Int(0)));
        let (seen, dead) =
            if window > 0 { (scores(replies.next()), scores(replies.next())) } else { (Vec::new(), Vec::new()) };
        let cutoff = now as f64 - window as f64;
        let recent = |scores: &[Option<f64>], k: usize| scores.get(k).copied().flatten().is_some_and(|s| s >= cutoff);
        for (k, (i, marker)) in eligible.into_iter().zip(markers).enumerate() {
            if !matches!(replies.next(), Some(Value::Int(1))) {
                continue;
            }
            let known = window > 0 && (recent(&seen, k) || (!candidates[i].replay && recent(&dead, k)));
            guesses[i] = if holds || known { Some(marker) } else { None };
        }
        Ok(guesses)
    }

    /// The dispatch script's arguments for `asked` (each with the marker the precheck wrote).
    fn script_args(&self, active: &Active, asked: &[(&Candidate, &str)], now: u64, lease_ms: u64) -> Vec<Vec<u8>> {
        let settings = &active.settings;
        let mut args: Vec<Vec<u8>> = vec![
            self.subscriber.as_bytes().to_vec(),
            now.to_string().into_bytes(),
            (settings.dedupe_window.as_millis() as u64).to_string().into_bytes(),
            lease_ms.to_string().into_bytes(),
            settings.retry.max_deliveries.to_string().into_bytes(),
            flag(settings.ordered),
        ];
        for (c, guess) in asked {
            // Under per-key order, what to store if the event is parked behind its key.
            let parked = match (&c.event.partitionkey, settings.ordered) {
                (Some(_), true) => {
                    netstrings(&super::letters::parked_fields(&c.entry, &self.keys.stream, c.attempt, &c.owner))
                }
                _ => Vec::new(),
            };
            args.extend([
                c.entry.key.as_bytes().to_vec(),
                c.entry.id.as_bytes().to_vec(),
                c.event.id.as_bytes().to_vec(),
                c.owner.as_bytes().to_vec(),
                flag(c.replay),
                c.event.partitionkey.as_deref().unwrap_or("").as_bytes().to_vec(),
                parked,
                guess.as_bytes().to_vec(),
            ]);
        }
        args
    }

    /// Add `candidate` to `plan` as the script's `decision` says.
    fn apply(&self, active: &Active, plan: &mut Plan, candidate: Candidate, decision: Decision) {
        let Candidate { entry, event, attempt, owner, upcast, .. } = candidate;
        let settle = |disposition, tally, hand_on| Settlement {
            key: entry.key.clone(),
            id: entry.id.clone(),
            event_id: event.id.clone(),
            owner: owner.clone(),
            hand_on,
            disposition,
            fallback: None,
            state_fallbacks: None,
            tally,
        };
        match decision {
            Decision::Run { holds } => {
                let (stream, entry_id) = (self.keys.stream.clone(), entry.id.clone());
                let job = Arc::new(Job { stream, entry_id, attempt, event, prefetched: None });
                plan.run.push(Work { entry, job, owner, host: self.host.clone(), hand_on: holds, upcast });
            }
            Decision::Duplicate { holds } | Decision::Dead { holds } => {
                plan.settle.push(settle(Disposition::Skip, Tally::Deduplicated, holds))
            }
            Decision::Crash => {
                let reason = format!(
                    "the event was started {} times without a verdict (the host stopped or failed while handling it)",
                    active.settings.retry.max_deliveries
                );
                let failure =
                    Failure { kind: FailureKind::Crash, reason: &reason, attempts: attempt, host: &self.host };
                let fields = super::dead_letter_fields(&entry, active, &self.keys.stream, &failure, now_ms());
                let hand_on = event.partitionkey.is_some();
                let tally = Tally::DeadLettered(FailureKind::Crash);
                plan.settle.push(settle(Disposition::DeadLetter { fields }, tally, hand_on));
            }
            Decision::Wait => plan.wait.push(entry),
            Decision::Park => plan.parked.push(entry),
        }
    }

    /// The settlement of an entry that is not a valid event (`reason`): its dead letter,
    /// keeping only the fields in `keep` if given. An entry that names a type this
    /// subscriber does not want is another subscriber's problem: skipped here, dead-lettered by
    /// those that want the type. Without a readable type (or from the retry stream: it was
    /// this subscriber's) it is dead-lettered by every subscriber that reads the stream.
    #[expect(clippy::too_many_arguments, reason = "the entry's facts the caller already worked out")]
    fn invalid(
        &self,
        active: &Active,
        entry: &Entry,
        is_retry: bool,
        owner: &str,
        attempt: u32,
        reason: &str,
        keep: Option<&[&[u8]]>,
    ) -> Local {
        let unwanted = !is_retry
            && entry
                .field(crate::event::field::TYPE)
                .and_then(|t| std::str::from_utf8(t).ok())
                .is_some_and(|t| !active.wants_type(&self.keys.stream, t));
        let (disposition, tally) = if unwanted {
            (Disposition::Skip, Tally::Skipped)
        } else {
            tracing::warn!(subscriber = %self.subscriber, stream = %self.keys.stream, entry_id = %entry.id, "invalid event set aside: {reason}");
            let failure = Failure { kind: FailureKind::InvalidEvent, reason, attempts: attempt, host: &self.host };
            let mut letter = super::dead_letter_fields(entry, active, &self.keys.stream, &failure, now_ms());
            if let Some(keep) = keep {
                // Kept attributes are cut like every attribute a producer may write
                // (`event::MAX_ATTRIBUTE_BYTES`): a huge `type` stays only in its stream.
                letter.retain(|(k, _)| k.starts_with(b"_") || keep.contains(&k.as_slice()));
                for (k, v) in &mut letter {
                    if !k.starts_with(b"_") {
                        v.truncate(crate::event::MAX_ATTRIBUTE_BYTES);
                    }
                }
            }
            (Disposition::DeadLetter { fields: letter }, Tally::DeadLettered(FailureKind::InvalidEvent))
        };
        Local::Settle(Settlement {
            key: entry.key.clone(),
            id: entry.id.clone(),
            event_id: String::new(),
            owner: owner.to_string(),
            // A deleted entry may have held its partition key: hand it on by owner.
            hand_on: true,
            disposition,
            fallback: None,
            state_fallbacks: None,
            tally,
        })
    }

    fn local(&self, active: &Active, entry: Entry) -> Local {
        // ferry's `_` metadata counts only on the retry stream, which ferry writes (a source
        // entry's `_` fields are a producer's and are ignored: see `letters::meta_field`).
        let is_retry = entry.key == self.keys.retry;
        let meta_field = |name| super::letters::meta_field(&entry, &self.keys.stream, name);
        let attempt = if is_retry {
            meta_field(meta::ATTEMPT).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(1u32).max(1)
        } else {
            1
        };
        let owner = String::from_utf8_lossy(&origin(&entry, &self.keys.stream)).into_owned();
        let invalid = |reason: String, keep: Option<&[&[u8]]>| {
            self.invalid(active, &entry, is_retry, &owner, attempt, &reason, keep)
        };
        if entry.fields.is_empty() {
            return invalid("the entry was deleted or trimmed from its stream before it was handled".into(), None);
        }
        let bytes: usize = entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        if entry.fields.len() > MAX_FIELDS || bytes > MAX_ENTRY_BYTES {
            let reason = format!(
                "the entry has {} fields and {bytes} bytes; at most {MAX_FIELDS} fields and {MAX_ENTRY_BYTES} bytes are accepted",
                entry.fields.len()
            );
            // Keep the identifying attributes only: the whole entry stays in its stream.
            let keep: &[&[u8]] = &[b"id", b"type", b"source", b"time"];
            return invalid(reason, Some(keep));
        }
        let event = match Event::from_fields(&entry.fields) {
            Ok(event) => event,
            Err(e) => return invalid(e.to_string(), None),
        };
        // A retry of an event it wanted still runs; an event parked as it was read has not
        // been asked about yet.
        let parked = meta_field(meta::PARKED).is_some();
        let replay = meta_field(meta::REPLAY).is_some();
        // Not wanted as it is, but an upcaster chain reaches a version it accepts: wanted, and
        // converted when it runs. A retry was wanted when it first ran: planned again, since
        // the upcasters may have changed since.
        let accepts = |v| active.accepts(&self.keys.stream, &event.event_type, v);
        let upcast = self.upcasters.as_ref().and_then(|u| u.plan(&event.event_type, event.schemaversion, accepts));
        if (!is_retry || parked) && upcast.is_none() && !active.wants(&self.keys.stream, &event) {
            // Under per-key order it may hold its key (taken as it was read, or handed on to
            // it from the parked list): the settle hands the key on.
            let hand_on = event.partitionkey.is_some();
            return Local::Settle(Settlement {
                key: entry.key.clone(),
                id: entry.id.clone(),
                event_id: event.id,
                owner,
                hand_on,
                disposition: Disposition::Skip,
                fallback: None,
                state_fallbacks: None,
                tally: Tally::Skipped,
            });
        }
        // Its contract, on every path (new, retried, replayed): the schema may have changed.
        if let Some(Err(e)) = self.contracts.as_ref().map(|c| c.validate(&event)) {
            return invalid(e.to_string(), None);
        }
        Local::Candidate(Box::new(Candidate { entry, event, attempt, owner, replay, upcast }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::testing::{active, entry};

    fn dispatcher() -> Dispatcher {
        Dispatcher {
            keys: SubscriberKeys::new("events", "sub"),
            subscriber: "sub".into(),
            host: "host-1".into(),
            claim_idle: None,
            contracts: None,
            upcasters: None,
        }
    }

    fn field<'a>(s: &'a Settlement, name: &str) -> Option<&'a [u8]> {
        match &s.disposition {
            Disposition::DeadLetter { fields } => {
                fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
            }
            _ => None,
        }
    }

    #[test]
    fn an_entry_that_is_not_an_event_is_dead_lettered_with_its_reason() {
        let bad = Entry { key: "events".into(), id: "1-0".into(), fields: vec![(b"type".to_vec(), b"A".to_vec())] };
        let Local::Settle(s) = dispatcher().local(&active("*"), bad) else { panic!("settled at once") };
        assert_eq!(s.tally, Tally::DeadLettered(FailureKind::InvalidEvent));
        assert_eq!(field(&s, meta::KIND), Some(&b"invalid-event"[..]));
        assert!(s.hand_on, "it may have held a partition key");
    }

    #[test]
    fn an_invalid_entry_of_a_type_the_subscriber_does_not_want_is_skipped_not_dead_lettered() {
        let bad = || Entry {
            key: "events".into(),
            id: "1-0".into(),
            fields: vec![(b"type".to_vec(), b"OrderCreated".to_vec())],
        };
        let Local::Settle(s) = dispatcher().local(&active("UserRegistered"), bad()) else { panic!("settled") };
        assert_eq!((s.disposition, s.tally), (Disposition::Skip, Tally::Skipped));
        let Local::Settle(s) = dispatcher().local(&active("Order*"), bad()) else { panic!("settled") };
        assert_eq!(s.tally, Tally::DeadLettered(FailureKind::InvalidEvent), "it wants the type: its dead letter");
        let untyped = Entry { key: "events".into(), id: "1-0".into(), fields: vec![(b"x".to_vec(), b"y".to_vec())] };
        let Local::Settle(s) = dispatcher().local(&active("UserRegistered"), untyped) else { panic!("settled") };
        assert_eq!(s.tally, Tally::DeadLettered(FailureKind::InvalidEvent), "no type: everyone's dead letter");
    }

    #[test]
    fn an_entry_deleted_while_pending_is_named_so() {
        let gone = Entry { key: "events".into(), id: "1-0".into(), fields: Vec::new() };
        let Local::Settle(s) = dispatcher().local(&active("*"), gone) else { panic!("settled at once") };
        let reason = String::from_utf8_lossy(field(&s, meta::REASON).expect("reason")).into_owned();
        assert!(reason.contains("deleted or trimmed"), "{reason}");
    }

    #[test]
    fn an_over_large_entry_keeps_only_its_identifying_attributes_in_the_dead_letter() {
        let event = Event::new("A", "tests", "{}");
        let mut e = entry("events", "1-0", &event);
        e.fields.extend((0..MAX_FIELDS).map(|i| (format!("x{i}").into_bytes(), b"v".to_vec())));
        let Local::Settle(s) = dispatcher().local(&active("*"), e) else { panic!("settled at once") };
        assert_eq!(field(&s, "id"), Some(event.id.as_bytes()));
        assert_eq!(field(&s, "x1"), None);
        let reason = String::from_utf8_lossy(field(&s, meta::REASON).expect("reason")).into_owned();
        assert!(reason.contains("at most 1000 fields"), "{reason}");
    }

    #[test]
    fn an_over_large_entry_with_huge_attributes_keeps_them_cut_in_its_dead_letter() {
        // Security review (issue 23, item 11): an oversize entry's dead letter kept its `type`
        // (and id, source, time) whole, so a 15 MiB type was copied into the dead-letter stream.
        let huge = "T".repeat(MAX_ENTRY_BYTES);
        let e = Entry {
            key: "events".into(),
            id: "1-0".into(),
            fields: vec![
                (b"id".to_vec(), "i".repeat(100_000).into_bytes()),
                (b"type".to_vec(), huge.into_bytes()),
                (b"source".to_vec(), b"tests".to_vec()),
            ],
        };
        let Local::Settle(s) = dispatcher().local(&active("*"), e) else { panic!("settled at once") };
        let Disposition::DeadLetter { fields } = &s.disposition else { panic!("dead-lettered: {s:?}") };
        let bytes: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes < 4 * crate::event::MAX_ATTRIBUTE_BYTES + 4096, "the dead letter holds {bytes} bytes");
        let kept = field(&s, "type").expect("its type, cut");
        assert_eq!(kept.len(), crate::event::MAX_ATTRIBUTE_BYTES);
        assert!(kept.iter().all(|b| *b == b'T'));
        assert_eq!(field(&s, "source"), Some(&b"tests"[..]), "short attributes are kept whole");
    }

    #[test]
    fn an_unsubscribed_event_is_skipped_but_a_retry_of_it_still_runs() {
        let event = Event::new("Other", "tests", "{}");
        let Local::Settle(s) = dispatcher().local(&active("Mine"), entry("events", "1-0", &event)) else {
            panic!("skipped")
        };
        assert_eq!((s.disposition, s.tally), (Disposition::Skip, Tally::Skipped));
        let mut retry = entry("ferry:retry:{events}:sub", "2-0", &event);
        retry.fields.push((meta::ATTEMPT.into(), b"3".to_vec()));
        retry.fields.push((meta::ORIGIN.into(), b"events/1-0".to_vec()));
        retry.fields.push((meta::REPLAY.into(), b"1".to_vec()));
        let Local::Candidate(c) = dispatcher().local(&active("Mine"), retry) else { panic!("runs") };
        assert_eq!((c.attempt, c.owner.as_str(), c.replay), (3, "events/1-0", true));
    }

    #[test]
    fn decisions_sort_candidates_into_the_plan() {
        let d = dispatcher();
        let a = active("*");
        let mut plan = Plan::default();
        for (i, decision) in ["run", "dup", "dead", "wait", "park", "crash"].iter().enumerate() {
            let event = Event::new("A", "tests", "{}");
            let e = entry("events", &format!("{i}-0"), &event);
            let c =
                Candidate { entry: e, event, attempt: 1, owner: format!("events/{i}-0"), replay: false, upcast: None };
            d.apply(&a, &mut plan, c, Decision::from_word(decision.as_bytes()).expect("a decision"));
        }
        assert_eq!((plan.run.len(), plan.wait.len(), plan.parked.len()), (1, 1, 1));
        let tallies: Vec<Tally> = plan.settle.iter().map(|s| s.tally).collect();
        assert_eq!(tallies, vec![Tally::Deduplicated, Tally::Deduplicated, Tally::DeadLettered(FailureKind::Crash)]);
    }
}
