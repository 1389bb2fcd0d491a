//! ferry: runs integration-event handlers from a Redis Streams outbox as sandboxed
//! WebAssembly components.
//!
//! # Layout
//!
//! An event's life, in module order:
//!
//! - [`event`]: the envelope (CloudEvents attribute names) and its stream-entry encoding.
//! - [`outbox`]: the producer side: add events to a stream, inside the caller's MULTI/EXEC.
//! - [`relay`]: the PostgreSQL outbox: a table in the application's database relayed to the
//!   streams (`ferry relay`).
//! - [`keys`]: Redis key names; every key a transition touches shares the stream's hash tag.
//! - [`connection`]: connections to one Redis node or a Redis Cluster, behind one type.
//! - [`clock`]: Redis's clock, the one every time two hosts compare is read on.
//! - [`handler`]: the handler contract between `consume` and `plugin`: a job in, an outcome
//!   and its effects out.
//! - [`plugin`]: load, validate and pre-instantiate `.wasm` components; the sandbox, the
//!   imports, invoking the handler and naming failures; the compiled-artifact cache.
//! - [`consume`]: per subscriber and stream: read → dispatch → invoke → settle (ack, retry,
//!   dead-letter), plus promotion of due retries and reclaiming entries of dead consumers.
//! - [`replica`]: which stream keys have no replica confirming writes (`durability =
//!   "replicated"`): one state per key, logged once per change, for metrics and `/readyz`.
//! - [`contract`]: the schema registry: a JSON Schema per event type and version, validation
//!   at publish and before dispatch, compatibility modes, the AsyncAPI document.
//! - [`dlq`]: inspect, replay and purge dead letters; edit one and replay it.
//! - [`find`]: an event by id or correlation id across streams: where it is, what it caused.
//! - [`host`]: the running host: loads plugins, starts and swaps subscribers, shuts down.
//! - [`status`]: queue state (lag, pending, retries, dead letters) read straight from Redis.
//! - [`metrics`]: Prometheus metrics; [`telemetry`]: logs (text or JSON) and span export.
//! - [`config`]: the TOML configuration and its layering.
//! - [`stop`]: the stop signal every long-running task watches; [`backoff`]: the wait
//!   before trying Redis or PostgreSQL again.
//!
//! Around the host, each depending on it and never the other way round:
//!
//! - [`reload`]: watch the plugin directory and apply changes to a [`host::Host`]
//!   ([`fs_events`]: the debounce and the changed-contents rule it shares with the schema watcher).
//! - [`audit`]: the audit trail of operator actions, a bounded Redis stream.
//! - [`admin`]: the admin HTTP endpoint (metrics, health, plugins, status page); `admin/auth.rs` decides who may use it.
//! - [`redact`]: credentials masked out of every address shown in an error, a log or `--help`.
//! - [`tls`]: the TLS client settings (roots, CA bundle, verification) shared by Redis,
//!   PostgreSQL and plugins' outbound HTTP.
//!
//! The `ferry` binary (`src/main.rs`, `src/cli/`) holds the command line and its commands,
//! the demo and the benchmark; its `run` command wires [`host::Host`], [`admin`] and
//! [`reload`] together. Modules import each other without cycles: `scripts/module-deps.sh`
//! checks it.

pub mod admin;
pub mod audit;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod connection;
pub mod consume;
pub mod contract;
pub mod dlq;
pub mod event;
pub mod find;
pub mod fs_events;
pub mod handler;
pub mod host;
pub mod keys;
pub mod metrics;
pub mod outbox;
pub mod plugin;
pub mod redact;
pub mod relay;
pub mod reload;
pub mod replica;
pub mod status;
pub mod stop;
pub mod telemetry;
pub mod tls;
