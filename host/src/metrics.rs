//! Prometheus metrics, through `prometheus-client`.
//!
//! Counters are bumped once per batch with the batch's totals, not once per event, so the
//! label lookup stays off the per-event path.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-subscriber metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberLabels {
    /// Subscriber name.
    pub subscriber: String,
}

/// Labels of per-subscriber, per-stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// Subscriber name.
    pub subscriber: String,
    /// Stream name.
    pub stream: String,
}

/// Labels of failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Subscriber name.
    pub subscriber: String,
    /// Failure kind (`trap`, `deadline`, ...).
    pub kind: String,
}

/// Labels of plugin lifecycle events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// Plugin name.
    pub plugin: String,
}

/// Labels of outbox-relay metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// The outbox table relayed.
    pub table: String,
}

/// Labels of replication shortfalls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Which write: `settle`, `forward` or `relay`.
    pub write: String,
}

/// Labels of per-stream-key metrics (a partition is a key of its own).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The stream key.
    pub stream: String,
}

/// Labels of plugins' outbound HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Subscriber name.
    pub subscriber: String,
    /// `ok` (a response arrived, whatever its status), `refused` (the grant or a bound) or
    /// `failed` (sent or tried, and it failed: connect, timeout, protocol).
    pub outcome: String,
}

/// Plugins' outbound HTTP (`plugin::capability::http`), in the host's registry.
#[derive(Clone)]
pub struct HttpMetrics {
    /// Requests by subscriber and outcome (`ferry_http_requests_total`).
    pub requests: Family<HttpLabels, Counter>,
    /// Time to the response head (or the failure), seconds, by subscriber.
    pub duration: Family<SubscriberLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 10))),
        }
    }
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register("http_requests", "Plugins' outbound HTTP requests by outcome", metrics.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time from a plugin's outbound HTTP request to the response head or the failure",
            metrics.duration.clone(),
        );
        metrics
    }
}

/// Writes no replica confirmed in time under `durability = "replicated"`, by write.
pub type Shortfalls = Family<WriteLabels, Counter>;

/// Count one replication shortfall of `write`.
pub fn shortfall(family: &Shortfalls, write: &str) {
    family.get_or_create(&WriteLabels { write: write.to_string() }).inc();
}

/// Metrics of the PostgreSQL outbox relay ([`crate::relay`]), in the host's registry so
/// `ferry run` exports them on its admin endpoint.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Rows published to their stream (a row published twice after a crash counts twice).
    pub relayed: Family<RelayLabels, Counter>,
    /// Rows marked failed (invalid row).
    pub failed: Family<RelayLabels, Counter>,
    /// Rows neither published nor failed, as last counted.
    pub backlog: Family<RelayLabels, Gauge>,
    /// Age of the oldest row neither published nor failed, in seconds (0 when none).
    pub oldest_age: Family<RelayLabels, Gauge<f64, AtomicU64>>,
    /// Time from a row's insert to Redis confirming its `XADD`, in seconds.
    pub latency: Family<RelayLabels, Histogram>,
    /// 1 while this process holds the table's relay lock (is the active relay).
    pub active: Family<RelayLabels, Gauge>,
    /// Replication shortfalls (shared with [`Metrics::replication_shortfalls`]; the relay
    /// counts under `write="relay"`).
    pub shortfalls: Shortfalls,
    /// Writes gone ahead unconfirmed (shared with [`Metrics::unconfirmed_writes`]).
    pub unconfirmed: Family<WriteLabels, Counter>,
}

impl RelayMetrics {
    fn register(registry: &mut Registry, shortfalls: Shortfalls, unconfirmed: Family<WriteLabels, Counter>) -> Self {
        let metrics = Self {
            shortfalls,
            unconfirmed,
            relayed: Family::default(),
            failed: Family::default(),
            backlog: Family::default(),
            oldest_age: Family::default(),
            latency: Family::<RelayLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
            active: Family::default(),
        };
        registry.register("relay_rows_relayed", "Outbox rows published to their stream", metrics.relayed.clone());
        registry.register("relay_rows_failed", "Outbox rows marked failed", metrics.failed.clone());
        registry.register("relay_backlog", "Outbox rows waiting to be relayed", metrics.backlog.clone());
        registry.register(
            "relay_oldest_unrelayed_age_seconds",
            "Age of the oldest outbox row waiting to be relayed",
            metrics.oldest_age.clone(),
        );
        registry.register(
            "relay_latency_seconds",
            "Time from an outbox row's insert to its event being in the stream",
            metrics.latency.clone(),
        );
        registry.register("relay_active", "1 while this process is the table's active relay", metrics.active.clone());
        metrics
    }
}

/// Labels of per-stream retention metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionLabels {
    /// Stream key (a partition is a stream of its own).
    pub stream: String,
}

/// Retention of the streams this host trims ([`crate::consume::trim`]), set after each pass.
#[derive(Clone)]
pub struct RetentionMetrics {
    /// Entries over `max_len` left after the last pass: what the safe floor keeps (a group
    /// that stopped reading), plus what arrived during the pass.
    pub over: Family<RetentionLabels, Gauge>,
    /// Age of the oldest entry left after the last pass, in seconds (0 when empty).
    pub oldest_age_seconds: Family<RetentionLabels, Gauge>,
}

impl RetentionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self { over: Family::default(), oldest_age_seconds: Family::default() };
        registry.register(
            "stream_entries_over_retention",
            "Entries over max_len left after the last trimming pass (kept by the safe floor)",
            metrics.over.clone(),
        );
        registry.register(
            "stream_oldest_entry_age_seconds",
            "Age of the oldest entry left after the last trimming pass",
            metrics.oldest_age_seconds.clone(),
        );
        metrics
    }
}

/// Every metric the host exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Events handled successfully.
    pub handled: Family<SubscriberLabels, Counter>,
    /// Events scheduled for a retry.
    pub retried: Family<SubscriberLabels, Counter>,
    /// Events moved to the dead-letter stream.
    pub dead_lettered: Family<SubscriberLabels, Counter>,
    /// Events acked without calling the plugin (not subscribed).
    pub skipped: Family<SubscriberLabels, Counter>,
    /// Events acked because their id was already handled.
    pub deduplicated: Family<SubscriberLabels, Counter>,
    /// Failures by kind.
    pub failures: Family<FailureLabels, Counter>,
    /// Events being handled now.
    pub in_flight: Family<SubscriberLabels, Gauge>,
    /// Handler duration in seconds.
    pub duration: Family<SubscriberLabels, Histogram>,
    /// Consumer-group lag, polled from `XINFO GROUPS` (-1 when Redis cannot tell).
    pub lag: Family<StreamLabels, Gauge>,
    /// Pending entries of the group, polled from `XINFO GROUPS`.
    pub pending: Family<StreamLabels, Gauge>,
    /// Retries waiting in the schedule.
    pub retries_waiting: Family<StreamLabels, Gauge>,
    /// Entries in the dead-letter stream.
    pub dead_letters: Family<StreamLabels, Gauge>,
    /// Follow-ups of the stream set aside because they could not be forwarded (cluster).
    pub unforwarded: Family<StreamLabels, Gauge>,
    /// Partition keys held by an event (per-key order).
    pub held_keys: Family<StreamLabels, Gauge>,
    /// Events parked behind a held partition key.
    pub parked: Family<StreamLabels, Gauge>,
    /// Age of the oldest hold in seconds (0: none): a stuck key shows here.
    pub oldest_hold_seconds: Family<StreamLabels, Gauge>,
    /// Bytes of keys and values in the subscriber's handler state, over every stream it
    /// reads (the quota's own total, polled with the queue gauges).
    pub state_bytes: Family<SubscriberLabels, Gauge>,
    /// Plugin versions loaded (first load and reloads).
    pub plugin_loads: Family<PluginLabels, Counter>,
    /// Plugin versions refused (invalid file).
    pub plugin_refused: Family<PluginLabels, Counter>,
    /// 1 while Redis is reachable.
    pub redis_up: Gauge,
    /// Writes no replica confirmed in time (`durability = "replicated"`).
    pub replication_shortfalls: Shortfalls,
    /// Seconds a stream key's writes went without a confirming replica
    /// (`durability = "replicated"`; [`crate::replica`]).
    pub missing_replica_seconds: Family<KeyLabels, Counter<f64, AtomicU64>>,
    /// Writes to a stream key waiting for a replica now (policy `wait`: held back; `continue`:
    /// gone ahead unconfirmed), 0 once one confirms.
    pub writes_waiting_for_replica: Family<KeyLabels, Gauge>,
    /// Writes that went ahead without a replica's confirmation
    /// (`durability_on_missing_replica = "continue"`), by write.
    pub unconfirmed_writes: Family<WriteLabels, Counter>,
    /// The outbox relay's metrics.
    pub relay: RelayMetrics,
    /// Retention of the streams this host trims.
    pub retention: RetentionMetrics,
    /// Plugins' outbound HTTP.
    pub http: HttpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let handled = Family::default();
        let retried = Family::default();
        let dead_lettered = Family::default();
        let skipped = Family::default();
        let deduplicated = Family::default();
        let failures = Family::default();
        let in_flight = Family::default();
        let duration = Family::<SubscriberLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 4.0, 12))
        });
        let lag = Family::default();
        let pending = Family::default();
        let retries_waiting = Family::default();
        let dead_letters = Family::default();
        let unforwarded = Family::default();
        let held_keys = Family::default();
        let parked = Family::default();
        let oldest_hold_seconds = Family::default();
        let state_bytes = Family::default();
        let plugin_loads = Family::default();
        let plugin_refused = Family::default();
        let redis_up = Gauge::default();
        registry.register("events_handled", "Events handled successfully", handled.clone());
        registry.register("events_retried", "Events scheduled for another attempt", retried.clone());
        registry.register("events_dead_lettered", "Events moved to the dead-letter stream", dead_lettered.clone());
        registry.register(
            "events_skipped",
            "Events acked without calling the plugin (not subscribed)",
            skipped.clone(),
        );
        registry.register(
            "events_deduplicated",
            "Events acked because their id was already handled",
            deduplicated.clone(),
        );
        registry.register("failures", "Handler failures by kind", failures.clone());
        registry.register("events_in_flight", "Events being handled now", in_flight.clone());
        registry.register("handler_duration_seconds", "Time spent in the handler per event", duration.clone());
        registry.register("group_lag", "Entries not yet delivered to the consumer group (-1: unknown)", lag.clone());
        registry.register("group_pending", "Entries delivered but not yet settled", pending.clone());
        registry.register("retries_waiting", "Retries waiting for their due time", retries_waiting.clone());
        registry.register("dead_letters", "Entries in the dead-letter stream", dead_letters.clone());
        registry.register(
            "follow_ups_unforwarded",
            "Follow-ups set aside because their target stream refused them (on a cluster)",
            unforwarded.clone(),
        );
        registry.register("held_keys", "Partition keys held by an event (per-key order)", held_keys.clone());
        registry.register("parked", "Events parked behind a held partition key", parked.clone());
        registry.register(
            "oldest_hold_seconds",
            "Age of the oldest partition-key hold (0: none)",
            oldest_hold_seconds.clone(),
        );
        registry.register(
            "state_bytes",
            "Bytes of keys and values in the subscriber's handler state, over its streams",
            state_bytes.clone(),
        );
        registry.register("plugin_loads", "Plugin versions loaded", plugin_loads.clone());
        registry.register("plugin_refused", "Plugin versions refused", plugin_refused.clone());
        registry.register("redis_up", "1 while Redis is reachable", redis_up.clone());
        let replication_shortfalls = Shortfalls::default();
        registry.register(
            "replication_shortfalls",
            "Writes no replica confirmed in time under durability = replicated",
            replication_shortfalls.clone(),
        );
        let missing_replica_seconds = Family::<KeyLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "missing_replica_seconds",
            "Time a stream key's writes went without a confirming replica (durability = replicated)",
            missing_replica_seconds.clone(),
        );
        let writes_waiting_for_replica = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "writes_waiting_for_replica",
            "Writes to a stream key waiting for a replica's confirmation now",
            writes_waiting_for_replica.clone(),
        );
        let unconfirmed_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "writes_unconfirmed",
            "Writes that went ahead without a replica's confirmation (durability_on_missing_replica = continue)",
            unconfirmed_writes.clone(),
        );
        let relay = RelayMetrics::register(&mut registry, replication_shortfalls.clone(), unconfirmed_writes.clone());
        let retention = RetentionMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        Self {
            registry: Arc::new(registry),
            handled,
            retried,
            dead_lettered,
            skipped,
            deduplicated,
            failures,
            in_flight,
            duration,
            lag,
            pending,
            retries_waiting,
            dead_letters,
            unforwarded,
            held_keys,
            parked,
            oldest_hold_seconds,
            state_bytes,
            plugin_loads,
            plugin_refused,
            redis_up,
            replication_shortfalls,
            missing_replica_seconds,
            writes_waiting_for_replica,
            unconfirmed_writes,
            relay,
            retention,
            http,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Labels for `subscriber`.
    pub fn sub(subscriber: &str) -> SubscriberLabels {
        SubscriberLabels { subscriber: subscriber.to_string() }
    }
}

/// Read a counter of the family for `subscriber` (for tests and the status view).
pub fn count(family: &Family<SubscriberLabels, Counter>, subscriber: &str) -> u64 {
    family.get_or_create(&Metrics::sub(subscriber)).get()
}
