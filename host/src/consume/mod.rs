//! Consuming one stream for one subscriber: the event's path, stage by stage.
//!
//! ```text
//!            ┌──────────── housekeeper (own task, own timers) ────────────┐
//!            │ promote due retries · keep runs alive · take over · reap   │
//!            │ silent consumers · sweep markers · trim                    │
//!            └──────────────┬─────────────────────────────────────────────┘
//!                           │ entries taken over
//! reader ── entries ──> dispatcher ── work ──> workers (≤ concurrency) ──┐
//! (XREADGROUP: own        (validate, subscribed?,      (invoke the        │ settlement
//!  pending, then new)      dedupe + crash budget +      handler, one      v
//!                          per-key order: one script)   task per event)  settler (grouped
//!                               └── immediate settlements ──────────────> round trips)
//! ```
//!
//! - [`reader`]: the blocking reads, on a connection of its own per (subscriber, stream).
//! - [`dispatch`]: what happens to each entry read, decided atomically with recording it.
//! - [`worker`]: runs one event and turns its outcome into a disposition.
//! - [`settle`]: applies dispositions (ack, retry, dead-letter, release), grouped.
//! - [`housekeeping`]: everything on a timer.
//! - [`read`]: reply parsing; [`scripts`]: the Lua scripts; [`retry`]: the backoff policy;
//!   [`trim`]: safe trimming.
//!
//! [`run_stream`] only wires the stages together and owns shutdown.

pub mod dispatch;
pub mod housekeeping;
pub mod read;
pub mod reader;
pub mod retry;
pub mod scripts;
pub mod settle;
pub mod trim;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use self::dispatch::{Dispatcher, Failure, Work};
use self::housekeeping::Housekeeper;
use self::read::Entry;
use self::reader::Reader;
use self::settle::{Disposition, Settlement, Settler, Tally, meta};
use crate::config::{Effective, ReadConfig, Start};
use crate::event::Event;
use crate::keys::SubscriberKeys;
use crate::metrics::{FailureLabels, Metrics};
use crate::plugin::Subscription;
use crate::plugin::invoke::{FailureKind, Invoke};

/// The version of a subscriber that new batches use. Swapped atomically on reload; batches
/// already running keep the version they started with.
pub struct Active {
    /// Runs the handler (a plugin runner, or a native handler in the benchmark).
    pub runner: Arc<dyn Invoke>,
    /// Subscriptions with their stream resolved.
    pub subscriptions: Vec<(String, Subscription)>,
    /// Effective settings.
    pub settings: Effective,
}

impl Active {
    /// The streams this version reads.
    pub fn streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = self.subscriptions.iter().map(|(s, _)| s.clone()).collect();
        streams.sort();
        streams.dedup();
        streams
    }

    /// Whether an event read from `stream` is wanted.
    pub fn wants(&self, stream: &str, event: &Event) -> bool {
        self.subscriptions.iter().any(|(s, sub)| s == stream && sub.matches(event))
    }
}

/// A subscriber: a plugin bound to its consumer groups.
pub struct Subscriber {
    /// Subscriber (plugin) name, also the consumer group name.
    pub name: String,
    active: RwLock<Arc<Active>>,
}

impl Subscriber {
    /// A subscriber running `active`.
    pub fn new(name: String, active: Active) -> Self {
        Self { name, active: RwLock::new(Arc::new(active)) }
    }

    /// The version new batches use.
    pub fn active(&self) -> Arc<Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the version new batches use; returns the old one.
    pub fn swap(&self, active: Active) -> Arc<Active> {
        std::mem::replace(&mut *self.active.write().unwrap_or_else(|p| p.into_inner()), Arc::new(active))
    }
}

/// Whether Redis is reachable, logged once per change.
#[derive(Default)]
pub struct RedisHealth {
    down: Mutex<bool>,
}

impl RedisHealth {
    /// Record a failure; logs only on the change from up to down.
    pub fn down(&self, metrics: &Metrics, err: &dyn std::fmt::Display) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if !*down {
            *down = true;
            metrics.redis_up.set(0);
            tracing::error!("redis unavailable: {err}; retrying with backoff");
        }
    }

    /// Record a success; logs only on the change from down to up.
    pub fn up(&self, metrics: &Metrics) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        metrics.redis_up.set(1);
        if *down {
            *down = false;
            tracing::info!("redis reachable again");
        }
    }

    /// Whether the last operation reached Redis.
    pub fn is_up(&self) -> bool {
        !*self.down.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What every stream consumer of a host shares.
pub struct Context {
    /// Redis client, for the per-reader connections.
    pub client: redis::Client,
    /// Shared connection for settling, promoting and claiming.
    pub shared: ConnectionManager,
    /// This host instance's consumer name.
    pub consumer: String,
    /// Read settings.
    pub read: ReadConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Redis reachability.
    pub health: RedisHealth,
    /// How long in-flight batches may finish on stop.
    pub grace: Duration,
    /// Retention of source streams.
    pub retention: Option<crate::config::RetentionConfig>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 of a Unix-ms instant.
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Open a connection whose response timeout exceeds the blocking read time.
pub async fn reader_connection(client: &redis::Client, block: Duration) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Create the subscriber's groups on `keys` (idempotent).
pub async fn ensure_groups<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
    start: Start,
) -> redis::RedisResult<()> {
    let start_id = match start {
        Start::New => "$",
        Start::Beginning => "0",
    };
    for (key, id) in [(&keys.stream, start_id), (&keys.retry, "0")] {
        let result: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(key).arg(group).arg(id).arg("MKSTREAM").query_async(conn).await;
        match result {
            Ok(()) => {}
            Err(e) if e.to_string().contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One entry in this host's hands: read and not yet settled (waiting for a permit,
/// running, waiting for another delivery of its event, or queued to settle).
#[derive(Debug, Clone)]
pub struct Held {
    /// Stream key it was read from.
    pub key: String,
    /// Entry id.
    pub id: String,
    /// Its event's id once a run was recorded for it; empty before.
    pub event_id: String,
    /// The run's owner.
    pub owner: String,
}

/// The entries of one (subscriber, stream) in this host's hands, so a re-read of the pending
/// list or a takeover does not dispatch them twice, and the housekeeper keeps them alive.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<(String, String), Held>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Held>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `entries` into this host's hands; returns those that were not already.
    pub fn admit(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut held = self.lock();
        entries
            .into_iter()
            .filter(|e| {
                let key = (e.key.clone(), e.id.clone());
                if held.contains_key(&key) {
                    return false;
                }
                let h = Held { key: e.key.clone(), id: e.id.clone(), event_id: String::new(), owner: String::new() };
                held.insert(key, h);
                true
            })
            .collect()
    }

    /// Note that a run of `event_id` owned by `owner` was recorded for the entry.
    pub fn running(&self, key: &str, id: &str, event_id: &str, owner: &str) {
        if let Some(h) = self.lock().get_mut(&(key.to_string(), id.to_string())) {
            h.event_id = event_id.to_string();
            h.owner = owner.to_string();
        }
    }

    /// The entry left this host's hands.
    pub fn remove(&self, key: &str, id: &str) {
        self.lock().remove(&(key.to_string(), id.to_string()));
    }

    /// Whether the entry is in this host's hands.
    pub fn contains(&self, key: &str, id: &str) -> bool {
        self.lock().contains_key(&(key.to_string(), id.to_string()))
    }

    /// Every entry in this host's hands.
    pub fn snapshot(&self) -> Vec<Held> {
        self.lock().values().cloned().collect()
    }
}

/// The metric handles of one subscriber, looked up once so the per-event path does no
/// label lookups.
#[derive(Clone)]
pub struct Counters {
    subscriber: String,
    metrics: Metrics,
    handled: Counter,
    retried: Counter,
    dead_lettered: Counter,
    skipped: Counter,
    deduplicated: Counter,
    /// Events running now.
    pub in_flight: Gauge,
    /// Handler durations.
    pub duration: Histogram,
}

impl Counters {
    /// The handles of `subscriber`.
    pub fn new(metrics: &Metrics, subscriber: &str) -> Self {
        let labels = Metrics::sub(subscriber);
        Self {
            subscriber: subscriber.to_string(),
            metrics: metrics.clone(),
            handled: metrics.handled.get_or_create(&labels).clone(),
            retried: metrics.retried.get_or_create(&labels).clone(),
            dead_lettered: metrics.dead_lettered.get_or_create(&labels).clone(),
            skipped: metrics.skipped.get_or_create(&labels).clone(),
            deduplicated: metrics.deduplicated.get_or_create(&labels).clone(),
            in_flight: metrics.in_flight.get_or_create(&labels).clone(),
            duration: metrics.duration.get_or_create(&labels).clone(),
        }
    }

    /// Count one settled entry.
    pub fn count(&self, tally: Tally) {
        let failure = |kind: FailureKind| {
            let labels = FailureLabels { subscriber: self.subscriber.clone(), kind: kind.as_str().into() };
            self.metrics.failures.get_or_create(&labels).inc();
        };
        match tally {
            Tally::None => {}
            Tally::Handled => {
                self.handled.inc();
            }
            Tally::Retried(kind) => {
                self.retried.inc();
                failure(kind);
            }
            Tally::DeadLettered(kind) => {
                self.dead_lettered.inc();
                failure(kind);
            }
            Tally::Skipped => {
                self.skipped.inc();
            }
            Tally::Deduplicated => {
                self.deduplicated.inc();
            }
        }
    }
}

/// How long an entry may sit idle on a consumer before another takes it over: configured,
/// or twice the deadline plus 10 s.
pub fn claim_idle(read: &ReadConfig, settings: &Effective) -> Duration {
    read.claim_idle.unwrap_or(settings.limits.deadline * 2 + Duration::from_secs(10))
}

/// Run the consumer of `subscriber` on `stream` until `stop` turns true. Then stop taking
/// work, let running events finish within the grace period, interrupt what still runs at
/// its end, and give those entries back (pending, not charged).
pub async fn run_stream(
    ctx: Arc<Context>,
    subscriber: Arc<Subscriber>,
    stream: String,
    mut stop: watch::Receiver<bool>,
) {
    let keys = SubscriberKeys::new(&stream, &subscriber.name);
    let group = subscriber.name.clone();
    let first = subscriber.active();
    let claim_idle = claim_idle(&ctx.read, &first.settings);
    let lease_ms = claim_idle.as_millis() as u64;
    let in_flight = InFlight::default();
    let counters = Counters::new(&ctx.metrics, &group);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let (claimed_tx, mut claimed_rx) = mpsc::channel(4);
    let settler = Settler {
        ctx: ctx.clone(),
        keys: keys.clone(),
        group: group.clone(),
        dedupe_window_ms: first.settings.dedupe_window.as_millis() as u64,
        lease_ms,
        in_flight: in_flight.clone(),
        counters: counters.clone(),
    };
    let settler = tokio::spawn(settler.run(settle_rx, stop.clone()));
    let housekeeper = Housekeeper {
        ctx: ctx.clone(),
        keys: keys.clone(),
        group: group.clone(),
        claim_idle,
        in_flight: in_flight.clone(),
        claimed: claimed_tx,
    };
    let housekeeper = tokio::spawn(housekeeper.run(stop.clone()));
    let dispatcher = Dispatcher { keys: keys.clone(), group: group.clone(), lease_ms };
    let block = ctx.read.block.max(Duration::from_millis(1));
    let mut reader = Reader::new(keys.clone(), group.clone(), first.settings.start, block);
    let permits = Arc::new(Semaphore::new(first.settings.concurrency));
    let mut workers = JoinSet::new();
    let mut waiting: Vec<Entry> = Vec::new();
    let mut recheck = Instant::now();
    tracing::info!(subscriber = %group, %stream, consumer = %ctx.consumer, "consumer started");

    'read: loop {
        while let Some(done) = workers.try_join_next() {
            if let Err(e) = done {
                tracing::error!(subscriber = %group, "an event's task failed: {e}; its entry stays pending");
            }
        }
        // Read only when a worker is free: what is read waits in this host's hands.
        tokio::select! {
            p = permits.clone().acquire_owned() => drop(p),
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        // Taken-over and waiting entries first; a read is never cancelled for them (a
        // cancelled XREADGROUP still delivers its entries into this consumer's pending list).
        let entries = if !waiting.is_empty() && recheck <= Instant::now() {
            std::mem::take(&mut waiting)
        } else if let Ok(taken) = claimed_rx.try_recv() {
            in_flight.admit(taken)
        } else {
            tokio::select! {
                _ = stop.changed() => break,
                read = reader.next(&ctx, ctx.read.count) => in_flight.admit(read),
            }
        };
        if entries.is_empty() {
            continue;
        }
        let active = subscriber.active();
        let ids: Vec<(String, String)> = entries.iter().map(|e| (e.key.clone(), e.id.clone())).collect();
        let mut conn = ctx.shared.clone();
        let plan = match dispatcher.plan(&mut conn, &active, entries).await {
            Ok(plan) => plan,
            Err(e) => {
                // Not knowing what was recorded, give the entries back: they stay pending and
                // are read again from this consumer's pending list.
                ctx.health.down(&ctx.metrics, &e);
                for (key, id) in ids {
                    in_flight.remove(&key, &id);
                }
                reader.rewind();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
        };
        for entry in &plan.parked {
            in_flight.remove(&entry.key, &entry.id);
        }
        for s in plan.settle {
            let _ = settle_tx.send(s);
        }
        if !plan.wait.is_empty() {
            waiting.extend(plan.wait);
            recheck = Instant::now() + ctx.read.poll;
        }
        let mut run = plan.run.into_iter();
        while let Some(work) = run.next() {
            in_flight.running(&work.entry.key, &work.entry.id, &work.job.event.id, &work.owner);
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p,
                _ = stop.changed() => {
                    // Recorded but never started: give them back uncharged.
                    for w in std::iter::once(work).chain(run) {
                        let _ = settle_tx.send(release(&w));
                    }
                    break 'read;
                }
            };
            let Ok(permit) = permit else { break 'read };
            let (active, tx, counters, stream) = (active.clone(), settle_tx.clone(), counters.clone(), stream.clone());
            workers.spawn(async move {
                let settlement = worker::run(active, &stream, work, &counters).await;
                let _ = tx.send(settlement);
                drop(permit);
            });
        }
    }

    // Stop: no more reads. Running events may finish within the grace period.
    let finished = tokio::time::timeout(ctx.grace, async { while workers.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(subscriber = %group, %stream, "grace period over: interrupting running events; they stay pending");
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }
    // Whatever still holds a recorded run got no verdict: give it back uncharged. (An entry
    // whose settlement is already queued is settled first; its release then finds nothing.)
    for held in in_flight.snapshot() {
        if !held.event_id.is_empty() {
            let _ = settle_tx.send(Settlement {
                key: held.key,
                id: held.id,
                event_id: held.event_id,
                owner: held.owner,
                release: false,
                disposition: Disposition::Release,
                fallback: None,
                tally: Tally::None,
            });
        }
    }
    drop(settle_tx);
    if tokio::time::timeout(Duration::from_millis(800), settler).await.is_err() {
        tracing::warn!(subscriber = %group, %stream, "settling at shutdown took too long; unsettled entries stay pending");
    }
    housekeeper.abort();
    tracing::info!(subscriber = %group, %stream, "consumer stopped");
}

/// The settlement that gives `work` back without a verdict.
fn release(work: &Work) -> Settlement {
    Settlement {
        key: work.entry.key.clone(),
        id: work.entry.id.clone(),
        event_id: work.job.event.id.clone(),
        owner: work.owner.clone(),
        release: false,
        disposition: Disposition::Release,
        fallback: None,
        tally: Tally::None,
    }
}

pub(crate) fn origin(entry: &Entry, stream: &str) -> Vec<u8> {
    entry.field(meta::ORIGIN).map(<[u8]>::to_vec).unwrap_or_else(|| format!("{stream}/{}", entry.id).into_bytes())
}

fn first_failure(entry: &Entry, now: u64) -> Vec<u8> {
    entry.field(meta::FIRST_FAILURE).map(<[u8]>::to_vec).unwrap_or_else(|| rfc3339_ms(now).into_bytes())
}

pub(crate) fn retry_fields(
    entry: &Entry,
    stream: &str,
    kind: FailureKind,
    reason: &str,
    next_attempt: u32,
    now: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = settle::original_fields(entry);
    fields.push((meta::ATTEMPT.into(), next_attempt.to_string().into_bytes()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields.push((meta::KIND.into(), kind.as_str().into()));
    fields.push((meta::REASON.into(), reason.as_bytes().to_vec()));
    fields
}

pub(crate) fn dead_letter_fields(
    entry: &Entry,
    active: &Active,
    stream: &str,
    failure: &Failure<'_>,
    now: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = settle::original_fields(entry);
    let runner = &active.runner;
    fields.push((meta::REASON.into(), failure.reason.as_bytes().to_vec()));
    fields.push((meta::KIND.into(), failure.kind.as_str().into()));
    fields.push((meta::ATTEMPTS.into(), failure.attempts.to_string().into_bytes()));
    fields.push((meta::SUBSCRIBER.into(), runner.name().as_bytes().to_vec()));
    fields.push((meta::VERSION.into(), runner.version().as_bytes().to_vec()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields
}
