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
//!                          per-key order: a MULTI,      task per event)  settler (batched
//!                          a script for the rest)                         round trips)
//!                               └── immediate settlements ──────────────────────^
//! ```
//!
//! - [`reader`]: the blocking reads, on a connection and a task of its own per (subscriber,
//!   stream), one read ahead of the workers.
//! - [`dispatch`]: what happens to each entry read, decided atomically with recording it.
//! - [`start`]: charges a run to its event's crash budget when a worker really starts it.
//! - [`worker`]: runs one event and turns its outcome into a disposition.
//! - [`settle`]: applies dispositions (ack, retry, dead-letter, give back), grouped.
//! - [`housekeeping`]: everything on a timer; [`forward`]: on a cluster, follow-ups to
//!   other slots, on a timer and a task of its own (it may wait for a replica).
//! - [`pipeline`]: wires the stages together for one (subscriber, stream) and owns shutdown;
//!   [`inflight`]: the entries in this host's hands; [`letters`]: the fields of retry and
//!   dead-letter entries.
//! - [`read`]: reply parsing; [`scripts`]: the Lua scripts; [`retry`]: the backoff policy;
//!   [`trim`]: safe trimming.
//!

pub mod dispatch;
pub mod forward;
pub mod housekeeping;
pub mod inflight;
pub mod letters;
pub mod pipeline;
pub mod read;
pub mod reader;
pub mod retry;
pub mod scripts;
pub mod settle;
pub mod start;
pub mod trim;
pub mod worker;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::{Effective, ReadConfig, Start};
use crate::connection::{Conn, Redis};
use crate::event::Event;
use crate::handler::Subscription;
use crate::handler::{FailureKind, Invoke};
use crate::keys::SubscriberKeys;
use crate::metrics::{FailureLabels, Metrics};

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

    /// Whether events of `event_type` read from `stream` may be wanted (any schema version):
    /// asked of an entry that is not a valid event but names its type.
    pub fn wants_type(&self, stream: &str, event_type: &str) -> bool {
        let stream = crate::keys::logical(stream);
        self.subscriptions.iter().any(|(s, sub)| s == stream && sub.matches_type(event_type))
    }

    /// Whether a subscription on `stream` takes `event_type` at `version` as it is.
    pub fn accepts(&self, stream: &str, event_type: &str, version: u32) -> bool {
        let stream = crate::keys::logical(stream);
        self.subscriptions.iter().any(|(s, sub)| {
            s == stream && sub.matches_type(event_type) && (sub.versions.is_empty() || sub.versions.contains(&version))
        })
    }

    /// Whether an event read from `stream` (a stream key: a partition counts as its stream)
    /// is wanted.
    pub fn wants(&self, stream: &str, event: &Event) -> bool {
        let stream = crate::keys::logical(stream);
        self.subscriptions.iter().any(|(s, sub)| s == stream && sub.matches(event))
    }
}

/// A subscriber: a plugin bound to its consumer groups.
pub struct Subscriber {
    /// Subscriber (plugin) name, also the consumer group name.
    pub name: String,
    active: RwLock<Arc<Active>>,
    /// Woken on every swap, so a pipeline waiting for a worker's permit follows a reloaded
    /// `concurrency` at once rather than after the events it holds have run.
    swapped: tokio::sync::Notify,
}

impl Subscriber {
    /// A subscriber running `active`.
    pub fn new(name: String, active: Active) -> Self {
        Self { name, active: RwLock::new(Arc::new(active)), swapped: tokio::sync::Notify::new() }
    }

    /// The version new batches use.
    pub fn active(&self) -> Arc<Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the version new batches use; returns the old one.
    pub fn swap(&self, active: Active) -> Arc<Active> {
        let old = std::mem::replace(&mut *self.active.write().unwrap_or_else(|p| p.into_inner()), Arc::new(active));
        self.swapped.notify_waiters();
        old
    }

    /// Completes on the next `swap` after this call (even if first polled later).
    pub fn swapped(&self) -> tokio::sync::futures::Notified<'_> {
        self.swapped.notified()
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
    pub redis: Redis,
    /// Shared connection for settling, promoting and taking over.
    pub shared: Conn,
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
    /// Streams with a retention of their own (`[streams.NAME] retention`), by stream name:
    /// the host's [`trim::Retention`] task trims them, so their housekeepers do not.
    pub stream_retention: std::collections::BTreeMap<String, crate::config::RetentionConfig>,
    /// Partition counts of partitioned streams (others have one): subscribers read every
    /// partition, follow-ups are routed to one.
    pub partitions: std::collections::BTreeMap<String, u32>,
    /// Whether settles and forwarded follow-ups wait for a replica.
    pub replication: crate::connection::Replication,
    /// The stream keys whose writes no replica confirms, and what to do then (the
    /// `durability_on_missing_replica` policy).
    pub replicas: crate::replica::ReplicaWatch,
    /// The schema registry (`schemas`): entries whose payload fails its schema are
    /// dead-lettered before dispatch. `None`: no registry.
    pub contracts: Option<Arc<crate::contract::Registry>>,
    /// The active upcasters (`upcasters = "DIR"`): an event a subscriber wants only at another
    /// version is converted for it (`contract::upcast`).
    pub upcasters: Option<Arc<crate::contract::upcast::Upcasters>>,
}

impl Context {
    /// The connection for writes that may wait for a replica (settles, forwarding): the
    /// shared one, or under `durability = "replicated"` one of the writer's own (`own`, made
    /// when first needed; drop it after an error), since a `WAIT` must ride on the writes'
    /// connection and blocks it until a replica answers: on the shared connection it would
    /// stall every other command to that node.
    pub async fn write_conn(&self, own: &mut Option<Conn>) -> redis::RedisResult<Conn> {
        if !self.replication.waits() {
            return Ok(self.shared.clone());
        }
        match own {
            Some(conn) => Ok(conn.clone()),
            None => Ok(own.insert(self.redis.dedicated(self.replication.timeout).await?).clone()),
        }
    }

    /// The retention a housekeeper trims source stream (or partition) `key` by: the host's
    /// `[retention]`, unless the stream has one of its own (trimmed by [`trim::Retention`]).
    pub fn source_retention(&self, key: &str) -> Option<&crate::config::RetentionConfig> {
        let own =
            self.stream_retention.contains_key(key) || self.stream_retention.contains_key(crate::keys::logical(key));
        if own { None } else { self.retention.as_ref() }
    }

    /// [`claim_idle`] of `subscriber`'s active version: what the stages that outlive a reload
    /// (settler, starter, housekeeper, forwarder) read on every use.
    pub fn claim_idle_of(&self, subscriber: &Subscriber) -> Duration {
        claim_idle(&self.read, &subscriber.active().settings)
    }

    /// The partitions of `stream` (1: not partitioned).
    pub fn partitions_of(&self, stream: &str) -> u32 {
        self.partitions.get(stream).copied().unwrap_or(1)
    }
}

/// Milliseconds since the Unix epoch on Redis's clock ([`crate::clock`]): every time that
/// hosts compare with each other (leases, dedupe windows, retry due times) is read here.
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
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

/// How long an entry may sit idle on a consumer before another takes it over: configured,
/// or twice the deadline plus 10 s.
pub fn claim_idle(read: &ReadConfig, settings: &Effective) -> Duration {
    lease(read.claim_idle, settings)
}

/// Move what is queued on `rx` into `group`, up to `max` in all, without waiting: the
/// settler and the starter send everything that is ready together in one round trip.
pub(crate) fn fill<T>(group: &mut Vec<T>, rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, max: usize) {
    while group.len() < max {
        match rx.try_recv() {
            Ok(item) => group.push(item),
            Err(_) => break,
        }
    }
}

/// [`claim_idle`] from the configured value (`None`: derived from the deadline).
pub fn lease(configured: Option<Duration>, settings: &Effective) -> Duration {
    configured.unwrap_or_else(|| settings.limits.deadline.saturating_mul(2).saturating_add(Duration::from_secs(10)))
}

/// What a settled entry adds to the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Nothing.
    None,
    /// Handled.
    Handled,
    /// Scheduled for a retry after a failure of this kind.
    Retried(FailureKind),
    /// Dead-lettered after a failure of this kind.
    DeadLettered(FailureKind),
    /// Not subscribed.
    Skipped,
    /// A duplicate of an event already handled or dead-lettered.
    Deduplicated,
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

pub use self::inflight::{Held, InFlight};
pub(crate) use self::letters::{dead_letter_fields, origin, retry_fields};
pub use self::pipeline::run_stream;

/// What the stages' unit tests share: an [`Active`] whose handler never runs.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::Active;
    use super::read::Entry;
    use super::settle::event_fields;
    use crate::config::SubscriberConfig;
    use crate::event::Event;
    use crate::handler::Subscription;
    use crate::handler::{Handling, Invoke, Job, Outcome};

    struct Unused;

    impl Invoke for Unused {
        fn handle(&self, _job: Arc<Job>) -> Handling {
            Box::pin(std::future::ready(Outcome::HostError("not in unit tests".into())))
        }
        fn name(&self) -> &str {
            "sub"
        }
        fn version(&self) -> &str {
            "v1"
        }
    }

    /// A subscriber of `event_type` on stream `events`, with default settings.
    pub fn active(event_type: &str) -> Active {
        let settings = SubscriberConfig::default().resolve().expect("defaults are valid");
        let subscription = Subscription { event_type: event_type.into(), versions: Vec::new(), stream: None };
        Active { runner: Arc::new(Unused), subscriptions: vec![("events".into(), subscription)], settings }
    }

    /// An entry of `key` holding `event`.
    pub fn entry(key: &str, id: &str, event: &Event) -> Entry {
        Entry { key: key.into(), id: id.into(), fields: event_fields(event) }
    }
}
