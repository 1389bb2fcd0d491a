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
    fn register(&self, registry: &mut Registry) {
        registry.register("http_requests", "Plugins' outbound HTTP requests by outcome", self.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time from a plugin's outbound HTTP request to the response head or the failure",
            self.duration.clone(),
        );
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
    fn new(shortfalls: Shortfalls, unconfirmed: Family<WriteLabels, Counter>) -> Self {
        Self {
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
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("relay_rows_relayed", "Outbox rows published to their stream", self.relayed.clone());
        registry.register("relay_rows_failed", "Outbox rows marked failed", self.failed.clone());
        registry.register("relay_backlog", "Outbox rows waiting to be relayed", self.backlog.clone());
        registry.register(
            "relay_oldest_unrelayed_age_seconds",
            "Age of the oldest outbox row waiting to be relayed",
            self.oldest_age.clone(),
        );
        registry.register(
            "relay_latency_seconds",
            "Time from an outbox row's insert to its event being in the stream",
            self.latency.clone(),
        );
        registry.register("relay_active", "1 while this process is the table's active relay", self.active.clone());
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
    fn new() -> Self {
        Self { over: Family::default(), oldest_age_seconds: Family::default() }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "stream_entries_over_retention",
            "Entries over max_len left after the last trimming pass (kept by the safe floor)",
            self.over.clone(),
        );
        registry.register(
            "stream_oldest_entry_age_seconds",
            "Age of the oldest entry left after the last trimming pass",
            self.oldest_age_seconds.clone(),
        );
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
        let replication_shortfalls = Shortfalls::default();
        let unconfirmed_writes = Family::<WriteLabels, Counter>::default();
        let mut metrics = Self {
            registry: Arc::default(),
            handled: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            skipped: Family::default(),
            deduplicated: Family::default(),
            failures: Family::default(),
            in_flight: Family::default(),
            duration: Family::<SubscriberLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_01, 4.0, 12))
            }),
            lag: Family::default(),
            pending: Family::default(),
            retries_waiting: Family::default(),
            dead_letters: Family::default(),
            unforwarded: Family::default(),
            held_keys: Family::default(),
            parked: Family::default(),
            oldest_hold_seconds: Family::default(),
            state_bytes: Family::default(),
            plugin_loads: Family::default(),
            plugin_refused: Family::default(),
            redis_up: Gauge::default(),
            relay: RelayMetrics::new(replication_shortfalls.clone(), unconfirmed_writes.clone()),
            replication_shortfalls,
            missing_replica_seconds: Family::default(),
            writes_waiting_for_replica: Family::default(),
            unconfirmed_writes,
            retention: RetentionMetrics::new(),
            http: HttpMetrics::default(),
        };
        let mut registry = Registry::with_prefix("ferry");
        metrics.register(&mut registry);
        metrics.registry = Arc::new(registry);
        metrics
    }

    /// Register every metric, in the order the exposition lists them.
    fn register(&self, registry: &mut Registry) {
        registry.register("events_handled", "Events handled successfully", self.handled.clone());
        registry.register("events_retried", "Events scheduled for another attempt", self.retried.clone());
        registry.register("events_dead_lettered", "Events moved to the dead-letter stream", self.dead_lettered.clone());
        registry.register(
            "events_skipped",
            "Events acked without calling the plugin (not subscribed)",
            self.skipped.clone(),
        );
        registry.register(
            "events_deduplicated",
            "Events acked because their id was already handled",
            self.deduplicated.clone(),
        );
        registry.register("failures", "Handler failures by kind", self.failures.clone());
        registry.register("events_in_flight", "Events being handled now", self.in_flight.clone());
        registry.register("handler_duration_seconds", "Time spent in the handler per event", self.duration.clone());
        registry.register(
            "group_lag",
            "Entries not yet delivered to the consumer group (-1: unknown)",
            self.lag.clone(),
        );
        registry.register("group_pending", "Entries delivered but not yet settled", self.pending.clone());
        registry.register("retries_waiting", "Retries waiting for their due time", self.retries_waiting.clone());
        registry.register("dead_letters", "Entries in the dead-letter stream", self.dead_letters.clone());
        registry.register(
            "follow_ups_unforwarded",
            "Follow-ups set aside because their target stream refused them (on a cluster)",
            self.unforwarded.clone(),
        );
        registry.register("held_keys", "Partition keys held by an event (per-key order)", self.held_keys.clone());
        registry.register("parked", "Events parked behind a held partition key", self.parked.clone());
        registry.register(
            "oldest_hold_seconds",
            "Age of the oldest partition-key hold (0: none)",
            self.oldest_hold_seconds.clone(),
        );
        registry.register(
            "state_bytes",
            "Bytes of keys and values in the subscriber's handler state, over its streams",
            self.state_bytes.clone(),
        );
        registry.register("plugin_loads", "Plugin versions loaded", self.plugin_loads.clone());
        registry.register("plugin_refused", "Plugin versions refused", self.plugin_refused.clone());
        registry.register("redis_up", "1 while Redis is reachable", self.redis_up.clone());
        registry.register(
            "replication_shortfalls",
            "Writes no replica confirmed in time under durability = replicated",
            self.replication_shortfalls.clone(),
        );
        registry.register(
            "missing_replica_seconds",
            "Time a stream key's writes went without a confirming replica (durability = replicated)",
            self.missing_replica_seconds.clone(),
        );
        registry.register(
            "writes_waiting_for_replica",
            "Writes to a stream key waiting for a replica's confirmation now",
            self.writes_waiting_for_replica.clone(),
        );
        registry.register(
            "writes_unconfirmed",
            "Writes that went ahead without a replica's confirmation (durability_on_missing_replica = continue)",
            self.unconfirmed_writes.clone(),
        );
        self.relay.register(registry);
        self.retention.register(registry);
        self.http.register(registry);
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
