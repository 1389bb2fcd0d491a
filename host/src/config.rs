//! Host configuration: the TOML file, per-plugin files, and their defaults.
//!
//! Precedence, highest first: CLI flags and `FERRY_*` environment variables (applied by the
//! binary), `[subscribers.NAME]` in the host file, the plugin's own `NAME.toml` beside its
//! `.wasm`, `[defaults]` in the host file, then the built-in defaults documented on each field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors reading configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid configuration in {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A plugin's own file is not valid TOML for this schema. Says where, never what: the
    /// file is the plugin author's, and its text must not reach logs or the admin endpoint.
    #[error("invalid plugin configuration in {path} at line {line}, column {column}: {message}")]
    PluginFile {
        /// The file.
        path: PathBuf,
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// The parser's message with every quoted fragment of the file left out.
        message: String,
    },
}

/// The host configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis URL. Default `redis://127.0.0.1:6379`. With `cluster`, a comma-separated list of
    /// seed nodes.
    pub redis: String,
    /// Talk to a Redis Cluster (`redis` lists seed nodes). Default false.
    pub cluster: bool,
    /// PEM file of the CA certificates that `rediss://` trusts, instead of the system's roots
    /// (for a private or self-signed CA). Needs `rediss://` in `redis`. Default: none (the
    /// system's roots).
    pub tls_ca: Option<PathBuf>,
    /// What ferry's writes (publish, settles, forwarded follow-ups, the relay) must reach
    /// before they count as done: `"primary"` (default) or `"replicated"` (`WAIT 1` for one
    /// replica; docs/scale-out.md).
    pub durability: crate::connection::Durability,
    /// How long a write waits for a replica under `durability = "replicated"`. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub durability_timeout: Duration,
    /// Under `durability = "replicated"`, what writes do when no replica confirms them (the
    /// shard lost its replica): `"wait"` (default: no progress on that shard, nothing
    /// unconfirmed, resumes once a replica is added) or `"continue"` (progress, each
    /// unconfirmed write counted). docs/scale-out.md, "Failover and durability".
    pub durability_on_missing_replica: crate::connection::OnMissingReplica,
    /// Directory of `*.wasm` plugins (and optional `NAME.toml` beside each). Default `plugins`.
    pub plugins: PathBuf,
    /// Stream read by subscriptions that do not name one. Default `events`.
    pub stream: String,
    /// Consumer name of this host instance; unique per instance. Default `HOSTNAME-PID-RANDOM`.
    pub consumer: Option<String>,
    /// Directory for compiled plugins, so restarts skip compilation. Default
    /// `$XDG_CACHE_HOME/ferry` or `~/.cache/ferry`; `""` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// File holding the secret that authenticates compiled-artifact cache entries (32 bytes,
    /// mode 0600, created on first use). Kept outside the cache directory: whoever can write
    /// the cache must not be able to read it. Default `$XDG_STATE_HOME/ferry/cache.key` or
    /// `~/.local/state/ferry/cache.key` (else `CACHE_DIR.key` beside the cache directory).
    pub cache_key: Option<PathBuf>,
    /// Watch the plugin directory and reload changed plugins. Default true.
    pub watch: bool,
    /// How long to wait for in-flight events on shutdown before leaving them pending. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Reading from Redis.
    pub read: ReadConfig,
    /// Optional retention of the source streams this host reads (off by default).
    pub retention: Option<RetentionConfig>,
    /// The WebAssembly engine, shared by every plugin.
    pub engine: EngineConfig,
    /// Admin HTTP endpoint (metrics, health, status page).
    pub admin: AdminConfig,
    /// Defaults for every subscriber.
    pub defaults: SubscriberConfig,
    /// What a plugin's own `NAME.toml` may ask for (the operator's `[subscribers.NAME]` is
    /// not bounded by it).
    pub plugin_files: PluginFilesConfig,
    /// Per-subscriber settings, by plugin name.
    pub subscribers: BTreeMap<String, SubscriberConfig>,
    /// Per-stream settings, by stream name (`[streams.orders]`).
    pub streams: BTreeMap<String, StreamConfig>,
    /// Relay a PostgreSQL outbox table to the streams from this host too (off by default).
    pub relay: Option<RelayConfig>,
    /// Directory of event schemas, `TYPE/VERSION.json` (JSON Schema 2020-12) with an optional
    /// `TYPE/contract.toml`, watched and reloaded like the plugin directory (docs/contracts.md).
    /// Default: none (no schema registry, events are not validated).
    pub schemas: Option<PathBuf>,
    /// Directory of upcaster plugins (`*.wasm` of the `upcaster` world), watched and reloaded
    /// whole like the schema directory: an event a subscriber accepts only at another version
    /// is converted for it along the shortest chain of their steps (docs/contracts.md,
    /// "Upcasting"). They run under `[defaults]` limits. Default: none.
    pub upcasters: Option<PathBuf>,
    /// How events are checked against their schemas (with `schemas` set).
    pub validation: ValidationConfig,
}

/// What validation does with an event that fails its schema, per type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ValidationMode {
    /// Refuse it: at publish an error, before dispatch a dead letter (`invalid-event`).
    #[default]
    Enforce,
    /// Log it and let it through.
    Warn,
    /// Do not check.
    Off,
}

/// `[validation]`: how events are checked against the schema registry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// The mode of every type without one of its own. Default `enforce`.
    pub mode: ValidationMode,
    /// Refuse events whose `type@schemaversion` has no schema (under the type's mode).
    /// Default false: such events pass.
    pub refuse_unknown: bool,
    /// Modes by event type (`OrderCreated = "warn"`); over the type's `contract.toml`.
    pub types: BTreeMap<String, ValidationMode>,
}

/// Settings of one logical stream.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Number of partitions: stream keys `NAME#0` … `NAME#N-1`, each in its own hash slot,
    /// events routed by partition key (docs/scale-out.md). Default 1 (the stream itself).
    /// Changing it on a stream that has data is refused.
    pub partitions: u32,
    /// Retention of this stream (each partition by itself), whoever reads it: also for
    /// streams no ferry subscriber reads, such as follow-up targets. Trimmed by every host
    /// with this setting, never below the safe floor; replaces the host's `[retention]` for
    /// this stream. Default: none.
    pub retention: Option<RetentionConfig>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { partitions: 1, retention: None }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis: "redis://127.0.0.1:6379".into(),
            cluster: false,
            tls_ca: None,
            durability: crate::connection::Durability::Primary,
            durability_timeout: Duration::from_secs(1),
            durability_on_missing_replica: crate::connection::OnMissingReplica::Wait,
            plugins: PathBuf::from("plugins"),
            stream: "events".into(),
            consumer: None,
            cache_dir: None,
            cache_key: None,
            watch: true,
            shutdown_grace: Duration::from_secs(10),
            read: ReadConfig::default(),
            retention: None,
            engine: EngineConfig::default(),
            admin: AdminConfig::default(),
            defaults: SubscriberConfig::default(),
            plugin_files: PluginFilesConfig::default(),
            subscribers: BTreeMap::new(),
            streams: BTreeMap::new(),
            relay: None,
            schemas: None,
            upcasters: None,
            validation: ValidationConfig::default(),
        }
    }
}

/// How the host reads streams.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadConfig {
    /// Entries per `XREADGROUP`. Default 500.
    pub count: usize,
    /// How long one `XREADGROUP` blocks waiting for new entries. Finite, so shutdown is
    /// noticed between reads. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// How often due retries are promoted and idle pending entries reclaimed. Default `100ms`.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Entries pending this long on any consumer are taken over (the consumer is presumed
    /// dead). Must exceed the longest handler deadline. Default: twice the subscriber's
    /// deadline plus 10 s.
    #[serde(default, with = "humantime_serde::option")]
    pub claim_idle: Option<Duration>,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self { count: 500, block: Duration::from_secs(2), poll: Duration::from_millis(100), claim_idle: None }
    }
}

/// Retention of a stream (`[retention]`: the source streams this host reads;
/// `[streams.NAME] retention`: that stream). Entries are removed only once every consumer
/// group has settled them, whatever the limits say (docs/operations.md, "Retention").
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Keep at most this many entries (fewer may be removed if groups still need them).
    pub max_len: Option<u64>,
    /// Remove entries older than this.
    #[serde(with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// How often to trim. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_len: None, max_age: None, interval: Duration::from_secs(10) }
    }
}

/// The PostgreSQL outbox relay (`[relay]`, or the flags of `ferry relay`). See docs/relay.md.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// PostgreSQL URL (`postgres://user:password@host:port/database`). Required.
    pub postgres: String,
    /// The outbox table, optionally schema-qualified. Default `ferry_outbox`.
    pub table: String,
    /// Rows read and published per round. Default 500.
    pub batch: usize,
    /// How often the table is polled when no NOTIFY arrives (NOTIFY is only a hint: a row
    /// held back by an older transaction is found by polling). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// How often a standby relay tries to become the active one. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub lock_retry: Duration,
    /// Delete rows once published instead of marking them. Default false.
    pub delete_published: bool,
    /// Delete published rows older than this (when they are kept). Default `7d`; `0s` keeps
    /// them forever.
    #[serde(with = "humantime_serde")]
    pub keep_published: Duration,
    /// Streams rows may name; a row naming another is marked failed. Default: any valid
    /// stream name except ferry's own `ferry:*` keys.
    pub streams: Option<Vec<String>>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            postgres: String::new(),
            table: "ferry_outbox".into(),
            batch: 500,
            poll: Duration::from_secs(1),
            lock_retry: Duration::from_secs(1),
            delete_published: false,
            keep_published: Duration::from_secs(7 * 24 * 3600),
            streams: None,
        }
    }
}

/// What a plugin's own `NAME.toml` (written by the plugin's authors, beside its `.wasm`) may
/// ask for. A file asking for more is refused with a message naming the key; the plugin then
/// does not run (or its running version stays).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginFilesConfig {
    /// Whether a plugin file may grant access: set `config`, `publish_streams`,
    /// `read_streams` or `subscriptions`. Off, only the operator grants (in `[defaults]` and
    /// `[subscribers.NAME]`). Default true.
    pub grants: bool,
    /// Highest `concurrency` a plugin file may set. Default: no ceiling.
    pub max_concurrency: Option<usize>,
    /// Highest value of each limit a plugin file may set (`memory`, `deadline`, `fuel`,
    /// `instances`, `stdio_bytes`, `log_*`, `publish_count`, `publish_bytes`). Fields left out
    /// here take their built-in defaults, and a plugin file's `[limits]` fields left out take
    /// theirs too. Default: no ceiling.
    pub max_limits: Option<LimitsConfig>,
}

impl Default for PluginFilesConfig {
    fn default() -> Self {
        Self { grants: true, max_concurrency: None, max_limits: None }
    }
}

impl PluginFilesConfig {
    /// Refuse what `file` asks for beyond what the operator allows plugin files.
    pub fn check(&self, file: &SubscriberConfig) -> Result<(), ConfigError> {
        let refuse = |what: &str, why: String| {
            Err(ConfigError::Invalid(format!("the plugin's own file may not set {what}: {why}")))
        };
        if !self.grants {
            let grants = [
                ("config", file.config.is_some()),
                ("publish_streams", file.publish_streams.is_some()),
                ("read_streams", file.read_streams.is_some()),
                ("subscriptions", file.subscriptions.is_some()),
                ("state", file.state.is_some()),
                ("http", file.http.is_some()),
            ];
            if let Some((what, _)) = grants.iter().find(|(_, set)| *set) {
                return refuse(what, "plugin_files.grants is off (grant it in [subscribers.NAME])".into());
            }
        }
        if let (Some(max), Some(asked)) = (self.max_concurrency, file.concurrency)
            && asked > max
        {
            return refuse("concurrency", format!("{asked} is above plugin_files.max_concurrency ({max})"));
        }
        if let (Some(max), Some(asked)) = (&self.max_limits, &file.limits) {
            let unmetered = |fuel: Option<u64>| fuel.map_or(u128::MAX, u128::from);
            let limits: [(&str, u128, u128); 11] = [
                ("memory", asked.memory.into(), max.memory.into()),
                ("deadline", asked.deadline.as_nanos(), max.deadline.as_nanos()),
                ("fuel", unmetered(asked.fuel), unmetered(max.fuel)),
                ("instances", asked.instances as u128, max.instances as u128),
                ("stdio_bytes", asked.stdio_bytes as u128, max.stdio_bytes as u128),
                ("log_lines", asked.log_lines.into(), max.log_lines.into()),
                ("log_line_bytes", asked.log_line_bytes as u128, max.log_line_bytes as u128),
                ("log_rate_lines", asked.log_rate_lines.into(), max.log_rate_lines.into()),
                ("log_rate_bytes", asked.log_rate_bytes.into(), max.log_rate_bytes.into()),
                ("publish_count", asked.publish_count as u128, max.publish_count as u128),
                ("publish_bytes", asked.publish_bytes as u128, max.publish_bytes as u128),
            ];
            if let Some((what, _, _)) = limits.iter().find(|(_, asked, max)| asked > max) {
                return refuse(
                    &format!("limits.{what}"),
                    format!("above plugin_files.max_limits.{what} (a value left out takes its default)"),
                );
            }
        }
        Ok(())
    }
}

/// Engine-wide settings (wasmtime cannot vary these per plugin).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Use the pooling instance allocator (fast instantiation). Default true.
    pub pooling: bool,
    /// Upper bound of any plugin's linear memory, in bytes (per-plugin caps must be lower).
    /// Default 1 GiB.
    pub max_memory: u64,
    /// WebAssembly stack limit, in bytes. Default 512 KiB.
    pub max_stack: usize,
    /// Enable fuel metering, so subscribers can set `limits.fuel`. Costs speed. Default false.
    pub fuel: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { pooling: true, max_memory: 1 << 30, max_stack: 512 << 10, fuel: false }
    }
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on; `""` turns the endpoint off. Default `127.0.0.1:9464`.
    pub listen: String,
    /// Host names (without port) by which the endpoint may be addressed, besides IP
    /// addresses and `localhost`. A request whose `Host` header names anything else is
    /// refused: a web page rebinding its own DNS name to this address cannot read it.
    /// Default: none.
    pub hosts: Vec<String>,
    /// File of access tokens, one `name role token` a line (`role`: `viewer` or `operator`;
    /// `#` starts a comment). It must not be readable by group or others, nor lie inside the
    /// plugin directory. `FERRY_ADMIN_TOKENS` adds tokens in the same form, separated by
    /// newlines or commas. Without any token the endpoint only listens on a loopback address,
    /// and is open there. Default: none.
    pub tokens_file: Option<PathBuf>,
    /// Whether `/metrics`, `/healthz` and `/readyz` answer without a token, for scrapers and
    /// probes. Default true.
    pub open_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into(), hosts: Vec::new(), tokens_file: None, open_metrics: true }
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// Only events added after the group is created.
    New,
    /// Every event still in the stream.
    Beginning,
}

/// How plugin instances are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// A fresh instance for every event: no state survives between events.
    PerEvent,
    /// Reuse an instance for up to `recycle_after` events, and never after a trap.
    Reuse,
}

/// One subscription, as the operator overrides it in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Event type; a trailing `*` is a prefix match.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Accepted schema versions; empty: all.
    #[serde(default)]
    pub versions: Vec<u32>,
    /// Stream to read; default: the host's `stream`.
    #[serde(default)]
    pub stream: Option<String>,
}

/// Settings of one subscriber. Every field is optional so layers can be merged.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriberConfig {
    /// Replace the subscriptions the plugin declares.
    pub subscriptions: Option<Vec<SubscriptionConfig>>,
    /// Where a new consumer group starts. Default `new`.
    pub start: Option<Start>,
    /// Events handled at the same time by this subscriber on one stream, each settled as
    /// soon as it finishes. Default 1 when `ordered` (events of different keys could run
    /// together, but one at a time keeps the simplest guarantee), else 16.
    pub concurrency: Option<usize>,
    /// Keep events with the same `partitionkey` in stream order. Default false.
    pub ordered: Option<bool>,
    /// Deduplicate by event id over this window; `0s` turns it off. Default `1h`.
    #[serde(default, with = "humantime_serde::option")]
    pub dedupe_window: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetryConfig>,
    /// Sandbox limits.
    pub limits: Option<LimitsConfig>,
    /// Values the plugin may read through the `config` import. Default: none.
    pub config: Option<BTreeMap<String, String>>,
    /// Streams the plugin may publish follow-up events to. Default: none.
    pub publish_streams: Option<Vec<String>>,
    /// Streams besides the host's `stream` the subscriber may read (its subscriptions may
    /// name). Default: none, so a plugin reads only the host's stream.
    pub read_streams: Option<Vec<String>>,
    /// Handler state (the `state` interface of `ferry:plugin@0.2.0`), committed with each
    /// event's acknowledgement: `state = true`, or a table of its bounds
    /// (`[subscribers.NAME.state] quota_bytes = ...`). Default: off.
    pub state: Option<StateSetting>,
    /// Outbound HTTP (`wasi:http/outgoing-handler`), granted by a table:
    /// `[subscribers.NAME.http] allow = ["https://api.example.com", ...]` with its bounds.
    /// Default: not granted (a plugin importing `wasi:http` is refused at load).
    pub http: Option<HttpConfig>,
}

/// A subscriber's outbound HTTP grant and bounds (`[subscribers.NAME.http]`); every key but
/// `allow` has a default. The grammar of `allow` is `plugin::capability::http::allow`'s.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where requests may go: `scheme://host[:port]` (`http` or `https`; the host a name, a
    /// name with a leading `*.` for its subdomains, an IP literal or a CIDR block; an omitted
    /// port is the scheme's default). Empty: every request is refused. Default: empty.
    pub allow: Vec<String>,
    /// Add `Idempotency-Key: SUBSCRIBER:EVENT_ID` to every request (the same on every
    /// attempt of an event), unless the guest set one. Default true.
    pub idempotency_key: bool,
    /// Connecting (TCP and TLS). Default `2s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From the request sent to the response's first byte. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Between two chunks of the response body. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub between_bytes_timeout: Duration,
    /// Requests one event may make (each attempt counts afresh). Default 16.
    pub requests_per_event: u32,
    /// Bytes of one request body. Default 1 MiB.
    pub request_bytes: u64,
    /// Bytes of one response body. Default 4 MiB.
    pub response_bytes: u64,
    /// Requests of the subscriber in flight at once, across its concurrent events; a request
    /// past it waits (within the event's deadline). Default 32.
    pub concurrent_requests: usize,
    /// A PEM bundle of the CAs that `https` servers are checked against, instead of the
    /// system's roots (a private API's CA). Default: none (the system's roots, which honour
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`).
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            idempotency_key: true,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(5),
            between_bytes_timeout: Duration::from_secs(5),
            requests_per_event: 16,
            request_bytes: 1 << 20,
            response_bytes: 4 << 20,
            concurrent_requests: 32,
            ca_file: None,
        }
    }
}

/// `state = true | false`, or a table of bounds (which grants it).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StateSetting {
    /// Granted with the default bounds, or not.
    On(bool),
    /// Granted with these bounds.
    With(StateLimits),
}

/// A subscriber's state bounds (`[subscribers.NAME.state]`); every key has a default.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StateLimits {
    /// Bytes of one key. Default 512.
    pub key_bytes: usize,
    /// Bytes of one value. Default 64 KiB.
    pub value_bytes: usize,
    /// Keys written (set, delete, increment) by one event. Default 64.
    pub writes_per_event: usize,
    /// Keys and values stored in total by the subscriber on one stream (each partition by
    /// itself); 0: no quota. Default 64 MiB.
    pub quota_bytes: u64,
    /// Read the state of an event's partition key together with the record of its run's
    /// start (one read for every event about to start), so the handler's first read of that
    /// key needs no round trip; checked at the commit like any read. Turn off for a handler
    /// that keeps no state under its events' partition keys. Default true.
    pub prefetch: bool,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self { key_bytes: 512, value_bytes: 64 << 10, writes_per_event: 64, quota_bytes: 64 << 20, prefetch: true }
    }
}

/// Retry policy of a subscriber.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; then the event is dead-lettered. Default 5.
    pub max_attempts: u32,
    /// Delay before the second attempt. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Factor applied to the delay after each attempt. Default 2.
    pub multiplier: f64,
    /// Upper bound of any delay (also of a handler's hint). Default `5m`.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Random spread, a fraction of the delay (0.2 = ±20%). Default 0.2.
    pub jitter: f64,
    /// Runs of one event that may end without a verdict (the host died or was stopped
    /// while handling it) before the event is dead-lettered as `crash`. Kept apart from
    /// `max_attempts`: a crash of the host is not the event's fault, but an event that
    /// brings the host down every time must not do so forever. Default 10.
    pub max_deliveries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
            max_deliveries: 10,
        }
    }
}

/// Sandbox limits of a subscriber.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Linear memory cap per instance, bytes. Default 64 MiB.
    pub memory: u64,
    /// Wall-clock deadline per event. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Fuel per event (needs `engine.fuel = true`); none: unmetered. Default none.
    pub fuel: Option<u64>,
    /// Core instances per component instance. Default 20.
    pub instances: usize,
    /// How instances are used. Default `reuse`.
    pub instance_mode: InstanceMode,
    /// With `reuse`: replace an instance after this many events. Default 10000.
    pub recycle_after: u64,
    /// Bytes of guest stdout/stderr kept per event (the rest is dropped). Default 4096.
    pub stdio_bytes: usize,
    /// Log lines a plugin may write per event; more are dropped and counted. Default 100.
    pub log_lines: u32,
    /// Bytes kept of one log line. Default 2048.
    pub log_line_bytes: usize,
    /// Log lines (including captured stdout/stderr) one plugin may write per second across
    /// all its events; more are dropped and summed up in one line per second. Default 100.
    pub log_rate_lines: u32,
    /// Log bytes one plugin may write per second across all its events. Default 64 KiB.
    pub log_rate_bytes: u64,
    /// Follow-up events per handled event. Default 100.
    pub publish_count: usize,
    /// Bytes of one follow-up event's data. Default 1 MiB.
    pub publish_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            deadline: Duration::from_secs(5),
            fuel: None,
            instances: 20,
            instance_mode: InstanceMode::Reuse,
            recycle_after: 10_000,
            stdio_bytes: 4096,
            log_lines: 100,
            log_line_bytes: 2048,
            log_rate_lines: 100,
            log_rate_bytes: 64 << 10,
            publish_count: 100,
            publish_bytes: 1 << 20,
        }
    }
}

/// The effective settings of one subscriber after merging every layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// Operator override of the subscriptions.
    pub subscriptions: Option<Vec<SubscriptionConfig>>,
    /// Group start position.
    pub start: Start,
    /// Events at once per stream.
    pub concurrency: usize,
    /// Per-key order.
    pub ordered: bool,
    /// Dedupe window (zero: off).
    pub dedupe_window: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Sandbox limits.
    pub limits: LimitsConfig,
    /// Granted config values.
    pub config: BTreeMap<String, String>,
    /// Streams the plugin may publish to.
    pub publish_streams: Vec<String>,
    /// Streams besides the host's that the subscriber may read.
    pub read_streams: Vec<String>,
    /// Its state bounds, when state is granted.
    pub state: Option<StateLimits>,
    /// Its outbound HTTP grant and bounds, when granted.
    pub http: Option<HttpConfig>,
}

impl SubscriberConfig {
    /// `self` with every unset field taken from `lower`.
    pub fn over(&self, lower: &SubscriberConfig) -> SubscriberConfig {
        SubscriberConfig {
            subscriptions: self.subscriptions.clone().or_else(|| lower.subscriptions.clone()),
            start: self.start.or(lower.start),
            concurrency: self.concurrency.or(lower.concurrency),
            ordered: self.ordered.or(lower.ordered),
            dedupe_window: self.dedupe_window.or(lower.dedupe_window),
            retry: self.retry.or(lower.retry),
            limits: self.limits.or(lower.limits),
            config: self.config.clone().or_else(|| lower.config.clone()),
            publish_streams: self.publish_streams.clone().or_else(|| lower.publish_streams.clone()),
            read_streams: self.read_streams.clone().or_else(|| lower.read_streams.clone()),
            state: self.state.or(lower.state),
            http: self.http.clone().or_else(|| lower.http.clone()),
        }
    }

    /// Fill the remaining gaps with built-in defaults, unchecked (see [`Self::resolve`]).
    pub fn fill(&self) -> Effective {
        let ordered = self.ordered.unwrap_or(false);
        Effective {
            subscriptions: self.subscriptions.clone(),
            start: self.start.unwrap_or(Start::New),
            concurrency: self.concurrency.unwrap_or(if ordered { 1 } else { 16 }),
            ordered,
            dedupe_window: self.dedupe_window.unwrap_or(Duration::from_secs(3600)),
            retry: self.retry.unwrap_or_default(),
            limits: self.limits.unwrap_or_default(),
            config: self.config.clone().unwrap_or_default(),
            publish_streams: self.publish_streams.clone().unwrap_or_default(),
            read_streams: self.read_streams.clone().unwrap_or_default(),
            state: match self.state {
                None | Some(StateSetting::On(false)) => None,
                Some(StateSetting::On(true)) => Some(StateLimits::default()),
                Some(StateSetting::With(limits)) => Some(limits),
            },
            http: self.http.clone(),
        }
    }

    /// Fill the remaining gaps with built-in defaults and check the values.
    pub fn resolve(&self) -> Result<Effective, ConfigError> {
        let effective = self.fill();
        if effective.concurrency == 0 {
            return Err(ConfigError::Invalid("concurrency must be at least 1".into()));
        }
        if effective.retry.max_attempts == 0 {
            return Err(ConfigError::Invalid("retry.max_attempts must be at least 1".into()));
        }
        if effective.retry.max_deliveries == 0 {
            return Err(ConfigError::Invalid("retry.max_deliveries must be at least 1".into()));
        }
        if effective.retry.multiplier.is_nan()
            || effective.retry.multiplier < 1.0
            || !(0.0..=1.0).contains(&effective.retry.jitter)
        {
            return Err(ConfigError::Invalid("retry.multiplier must be >= 1 and retry.jitter in 0..=1".into()));
        }
        if effective.limits.publish_bytes > crate::event::MAX_ENTRY_BYTES {
            return Err(ConfigError::Invalid(format!(
                "limits.publish_bytes must be at most {} (the largest entry a consumer accepts)",
                crate::event::MAX_ENTRY_BYTES
            )));
        }
        let bounded = [
            ("limits.deadline", effective.limits.deadline, MAX_DEADLINE),
            ("retry.initial_delay", effective.retry.initial_delay, MAX_DURATION),
            ("retry.max_delay", effective.retry.max_delay, MAX_DURATION),
            ("dedupe_window", effective.dedupe_window, MAX_DURATION),
        ];
        for (what, value, max) in bounded {
            check_duration(what, value, max)?;
        }
        if effective.limits.deadline.is_zero() {
            return Err(ConfigError::Invalid("limits.deadline must be above zero".into()));
        }
        // `http.allow` is read where the grant is made (`plugin::capability::http`, at load),
        // which owns its grammar: config depends on no other module of the host.
        if let Some(http) = &effective.http {
            for (what, value) in [
                ("http.connect_timeout", http.connect_timeout),
                ("http.first_byte_timeout", http.first_byte_timeout),
                ("http.between_bytes_timeout", http.between_bytes_timeout),
            ] {
                check_duration(what, value, MAX_DURATION)?;
                if value.is_zero() {
                    return Err(ConfigError::Invalid(format!("{what} must be above zero")));
                }
            }
            if http.concurrent_requests == 0 {
                return Err(ConfigError::Invalid("http.concurrent_requests must be at least 1".into()));
            }
        }
        Ok(effective)
    }
}

/// Longest `limits.deadline`: a handler call longer than a day is not a handler call.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Longest of every other duration. Durations are added to clocks and multiplied (twice the
/// deadline, `started + deadline`); bounding them at load means that never overflows (and
/// panics a task) later.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn check_duration(what: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::Invalid(format!(
            "{what} must be at most {} (it is {})",
            humantime::format_duration(max),
            humantime::format_duration(value)
        )));
    }
    Ok(())
}

impl Config {
    /// Check the host-wide values (each subscriber's are checked by [`Config::subscriber`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut durations = vec![
            ("shutdown_grace", self.shutdown_grace),
            ("durability_timeout", self.durability_timeout),
            ("read.block", self.read.block),
            ("read.poll", self.read.poll),
        ];
        durations.extend(self.read.claim_idle.map(|d| ("read.claim_idle", d)));
        if let Some(retention) = &self.retention {
            durations.push(("retention.interval", retention.interval));
            durations.extend(retention.max_age.map(|d| ("retention.max_age", d)));
        }
        for (what, value) in durations {
            check_duration(what, value, MAX_DURATION)?;
        }
        Ok(())
    }

    /// The partitions of every stream that has more than one.
    pub fn partitions(&self) -> BTreeMap<String, u32> {
        self.streams.iter().filter(|(_, s)| s.partitions > 1).map(|(name, s)| (name.clone(), s.partitions)).collect()
    }

    /// Streams with a retention of their own, by stream name.
    pub fn stream_retention(&self) -> BTreeMap<String, RetentionConfig> {
        self.streams.iter().filter_map(|(name, s)| Some((name.clone(), s.retention?))).collect()
    }

    /// The stream keys (each partition of a partitioned stream) with a retention of their own.
    pub fn retention_keys(&self) -> Vec<(String, RetentionConfig)> {
        let mut out = Vec::new();
        for (name, s) in &self.streams {
            let Some(retention) = s.retention else { continue };
            match s.partitions {
                0 | 1 => out.push((name.clone(), retention)),
                n => out.extend((0..n).map(|p| (crate::keys::partition(name, p), retention))),
            }
        }
        out
    }

    /// The durability of ferry's writes.
    pub fn replication(&self) -> crate::connection::Replication {
        crate::connection::Replication { durability: self.durability, timeout: self.durability_timeout }
    }

    /// Where Redis is.
    pub fn target(&self) -> crate::connection::Target {
        crate::connection::Target::new(&self.redis, self.cluster).with_tls_ca(self.tls_ca.clone())
    }

    /// Read a host configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        parse_file(path)
    }

    /// The effective settings of subscriber `name`, given its plugin's own file (if any).
    pub fn subscriber(&self, name: &str, plugin_file: Option<&SubscriberConfig>) -> Result<Effective, ConfigError> {
        let mut merged = self.defaults.clone();
        if let Some(file) = plugin_file {
            self.plugin_files.check(file)?;
            merged = file.over(&merged);
        }
        if let Some(host) = self.subscribers.get(name) {
            merged = host.over(&merged);
        }
        let effective = merged.resolve()?;
        // An entry is taken over after `claim_idle` of silence and a host keeps its entries
        // alive every `claim_idle / 4`; a value below the deadline would let one stalled
        // keep-alive hand a running event to another host.
        if let Some(idle) = self.read.claim_idle
            && idle <= effective.limits.deadline
        {
            return Err(ConfigError::Invalid(format!(
                "read.claim_idle ({}) must be longer than the subscriber's deadline ({})",
                humantime::format_duration(idle),
                humantime::format_duration(effective.limits.deadline)
            )));
        }
        Ok(effective)
    }

    /// The compiled-artifact cache directory, if enabled.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
                Some(base.join("ferry"))
            }
        }
    }
}

impl Config {
    /// The file holding the cache's secret, for the cache in `dir`.
    pub fn cache_key_file(&self, dir: &Path) -> PathBuf {
        if let Some(key) = &self.cache_key {
            return key.clone();
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
        match state {
            Some(state) => state.join("ferry/cache.key"),
            None => {
                let mut beside = dir.as_os_str().to_owned();
                beside.push(".key");
                PathBuf::from(beside)
            }
        }
    }
}

/// Largest plugin file read (a link to `/dev/zero` must not fill the host's memory).
const MAX_PLUGIN_FILE_BYTES: u64 = 1 << 20;

/// Read a plugin's own `NAME.toml` at `path` in `plugin_dir`. The file is the plugin author's,
/// not the operator's: a symbolic link is followed only to a file inside the plugin directory
/// (a ConfigMap mount), the file must be a regular file of at most 1 MiB, and a parse error
/// says where, never what (the text could be the host's environment or its own config).
pub fn load_plugin_file(plugin_dir: &Path, path: &Path) -> Result<SubscriberConfig, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let read = |source| ConfigError::Read { path: path.into(), source };
    let refuse = |why: &str| ConfigError::Invalid(format!("{}: {why}", path.display()));
    let meta = std::fs::symlink_metadata(path).map_err(read)?;
    let real = if meta.file_type().is_symlink() {
        let real = std::fs::canonicalize(path).map_err(read)?;
        let dir = std::fs::canonicalize(plugin_dir).map_err(read)?;
        if !real.starts_with(&dir) {
            return Err(refuse("a symbolic link to a file outside the plugin directory: refused"));
        }
        real
    } else {
        path.to_path_buf()
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&real)
        .map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(refuse("not a regular file"));
    }
    if meta.len() > MAX_PLUGIN_FILE_BYTES {
        return Err(refuse("larger than 1 MiB"));
    }
    let mut text = String::new();
    file.take(MAX_PLUGIN_FILE_BYTES).read_to_string(&mut text).map_err(read)?;
    toml::from_str(&text).map_err(|e| {
        let start = e.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..start).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::PluginFile { path: path.into(), line, column, message: without_quotes(e.message()) }
    })
}

/// `message` with every quoted fragment (`` `..` ``, `".."`, `'..'`) replaced by `…`, control
/// characters dropped, cut to 200 bytes: what is left is the parser's own words.
fn without_quotes(message: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '`' | '"' | '\'') => {
                quote = Some(c);
                out.push('…');
            }
            None if c.is_control() => out.push(' '),
            None => out.push(c),
        }
    }
    crate::redact::truncate(out.trim(), 200).to_string()
}

fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_ca_travels_with_the_redis_target() {
        let config: Config =
            toml::from_str("redis = \"rediss://a:1,rediss://b:2\"\ncluster = true\ntls_ca = \"/etc/ferry/ca.pem\"")
                .expect("valid config");
        let target = config.target();
        assert_eq!(target.tls_ca.as_deref(), Some(Path::new("/etc/ferry/ca.pem")));
        assert!(matches!(target.nodes, crate::connection::Nodes::Cluster(ref seeds) if seeds.len() == 2));
        assert_eq!(Config::default().target().tls_ca, None, "the system's roots by default");
    }

    #[test]
    fn layers_merge_with_host_file_on_top() {
        let config: Config = toml::from_str(
            r#"
            [defaults]
            concurrency = 2
            [subscribers.a]
            ordered = true
            [subscribers.a.retry]
            max_attempts = 3
            initial_delay = "250ms"
            "#,
        )
        .expect("valid config");
        let plugin_file: SubscriberConfig =
            toml::from_str("concurrency = 8\nordered = false").expect("valid plugin file");
        let a = config.subscriber("a", Some(&plugin_file)).expect("resolves");
        assert!(a.ordered);
        assert_eq!(a.concurrency, 8);
        assert_eq!(a.retry.max_attempts, 3);
        assert_eq!(a.retry.initial_delay, Duration::from_millis(250));
        let b = config.subscriber("b", None).expect("resolves");
        assert_eq!(b.concurrency, 2);
        assert_eq!(b.retry, RetryConfig::default());
    }

    /// Issue 23, item 5: `x.toml -> /proc/self/environ` (or `-> ../ferry.toml`) made toml's
    /// error quote the host's secrets into `/api/plugins`, the status page and the log.
    #[test]
    fn a_plugin_file_is_read_only_inside_the_plugin_dir_and_its_content_never_echoed() {
        let dir = tempfile::tempdir().expect("dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("plugins");
        let secret = dir.path().join("ferry.toml");
        std::fs::write(&secret, "redis = \"redis://ferry:hunter2@db:6379\"\nFERRY_REDIS=redis://ferry:hunter2@db")
            .expect("secret");
        let outside = plugins.join("x.toml");
        std::os::unix::fs::symlink(&secret, &outside).expect("symlink");
        let err = load_plugin_file(&plugins, &outside).expect_err("outside the plugin dir").to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("outside the plugin directory"), "{err}");
        // A link that stays inside the plugin dir (a Kubernetes ConfigMap mount) is fine.
        std::fs::write(plugins.join("real.toml"), "concurrency = 2").expect("real");
        std::os::unix::fs::symlink("real.toml", plugins.join("y.toml")).expect("symlink");
        assert_eq!(load_plugin_file(&plugins, &plugins.join("y.toml")).expect("inside").concurrency, Some(2));
        // Invalid content inside the dir: where, never what.
        std::fs::copy(&secret, plugins.join("z.toml")).expect("copy");
        let err = load_plugin_file(&plugins, &plugins.join("z.toml")).expect_err("invalid").to_string();
        assert!(!err.contains("hunter2") && !err.contains("FERRY_REDIS"), "{err}");
        assert!(err.contains("line"), "says where: {err}");
    }

    #[test]
    fn a_plugin_file_cannot_grant_itself_more_than_the_operator_allows() {
        let config: Config = toml::from_str(
            r#"
            [plugin_files]
            max_concurrency = 4
            [plugin_files.max_limits]
            deadline = "10s"
            publish_count = 10
            "#,
        )
        .expect("valid config");
        let ok: SubscriberConfig =
            toml::from_str("concurrency = 4\n[limits]\ndeadline = \"2s\"\npublish_count = 5").expect("file");
        config.subscriber("a", Some(&ok)).expect("within the ceilings");
        for (what, file) in [
            ("concurrency", "concurrency = 64"),
            ("limits.deadline", "[limits]\ndeadline = \"1h\""),
            ("limits.publish_count", "[limits]\npublish_count = 100000"),
        ] {
            let file: SubscriberConfig = toml::from_str(file).expect("file");
            let err = config.subscriber("a", Some(&file)).expect_err(what).to_string();
            assert!(err.contains(what), "names the key: {err}");
        }
        // The operator's own [subscribers.a] is not bounded by them.
        let mut host = config.clone();
        host.subscribers.insert("a".into(), toml::from_str("concurrency = 64").expect("host"));
        assert_eq!(host.subscriber("a", None).expect("operator").concurrency, 64);

        // And with grants off, a plugin file may not grant itself config, streams or reads.
        let strict: Config = toml::from_str("[plugin_files]\ngrants = false").expect("valid config");
        for (what, file) in [
            ("publish_streams", "publish_streams = [\"payments\"]"),
            ("config", "[config]\ntoken = \"x\""),
            ("subscriptions", "[[subscriptions]]\ntype = \"*\"\nstream = \"payments\""),
        ] {
            let file: SubscriberConfig = toml::from_str(file).expect("file");
            let err = strict.subscriber("a", Some(&file)).expect_err(what).to_string();
            assert!(err.contains(what), "{err}");
        }
        let limits_only: SubscriberConfig = toml::from_str("concurrency = 2").expect("file");
        strict.subscriber("a", Some(&limits_only)).expect("settings that grant nothing are fine");
    }

    /// Issue 23, item 15: `started + deadline` and `deadline * 2` panicked a task on a huge
    /// value; durations are bounded at load instead.
    #[test]
    fn huge_durations_are_refused_at_load_not_panicking_later() {
        for file in [
            "[limits]\ndeadline = \"100000000000y\"",
            "[limits]\ndeadline = \"2days\"",
            "[retry]\nmax_delay = \"100000000000y\"",
            "[retry]\ninitial_delay = \"100000000000y\"",
            "dedupe_window = \"100000000000y\"",
        ] {
            let file: SubscriberConfig = toml::from_str(file).expect("parses");
            let err = Config::default().subscriber("a", Some(&file)).expect_err("refused").to_string();
            assert!(err.contains("at most"), "{err}");
        }
        for text in [
            "shutdown_grace = \"100000000000y\"",
            "durability_timeout = \"100000000000y\"",
            "[read]\nblock = \"100000000000y\"",
            "[read]\nclaim_idle = \"100000000000y\"",
            "[retention]\nmax_age = \"100000000000y\"",
        ] {
            let config: Config = toml::from_str(text).expect("parses");
            assert!(config.validate().is_err(), "{text}");
        }
        Config::default().validate().expect("the defaults are fine");
    }

    #[test]
    fn a_stream_has_a_retention_of_its_own_for_each_partition() {
        let config: Config = toml::from_str(
            r#"
            [retention]
            max_len = 1000
            [streams.records.retention]
            max_age = "1h"
            [streams.orders]
            partitions = 2
            retention = { max_len = 10, interval = "1s" }
            "#,
        )
        .expect("valid config");
        let keys: Vec<String> = config.retention_keys().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["orders#0", "orders#1", "records"]);
        let records = config.stream_retention()["records"];
        assert_eq!(records.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(records.interval, Duration::from_secs(10), "unset keys take the defaults");
        assert_eq!(config.retention.and_then(|r| r.max_len), Some(1000), "[retention] keeps working");
        assert!(
            toml::from_str::<Config>(
                "[streams.x.retention]
max = 1"
            )
            .is_err()
        );
    }

    #[test]
    fn an_http_table_grants_outbound_http_with_defaults_for_each_bound() {
        let config: Config = toml::from_str(
            "[subscribers.welcome.http]\nallow = [\"https://api.example.com\", \"http://10.0.0.0/8\"]\nresponse_bytes = 1024\nfirst_byte_timeout = \"250ms\"\nidempotency_key = false",
        )
        .expect("valid config");
        let http = config.subscriber("welcome", None).expect("effective").http.expect("granted");
        assert_eq!(http.allow, ["https://api.example.com", "http://10.0.0.0/8"]);
        assert_eq!(http.response_bytes, 1024);
        assert_eq!(http.first_byte_timeout, Duration::from_millis(250));
        assert!(!http.idempotency_key);
        assert_eq!(http.connect_timeout, HttpConfig::default().connect_timeout, "a bound left out keeps its default");
        assert!(config.subscriber("other", None).expect("effective").http.is_none(), "deny by default");
        let zero: Config = toml::from_str("[subscribers.w.http]\nconnect_timeout = \"0s\"").expect("parses");
        assert!(zero.subscriber("w", None).is_err());
        assert!(toml::from_str::<SubscriberConfig>("[http]\nallowed = []").is_err(), "unknown key");
        let strict: Config = toml::from_str("[plugin_files]\ngrants = false").expect("valid");
        let file: SubscriberConfig = toml::from_str("[http]\nallow = [\"https://x.example\"]").expect("valid");
        assert!(strict.subscriber("w", Some(&file)).is_err(), "a plugin file may not grant itself HTTP then");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("redis_url = 'x'").is_err());
        assert!(toml::from_str::<SubscriberConfig>("[retry]\nmax = 1").is_err());
    }
}
