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
//! - [`plugin`]: load, validate and pre-instantiate `.wasm` components; the sandbox, the
//!   imports, invoking the handler and naming failures; the compiled-artifact cache.
//! - [`consume`]: per subscriber and stream: read → dispatch → invoke → settle (ack, retry,
//!   dead-letter), plus promotion of due retries and reclaiming entries of dead consumers.
//! - [`dlq`]: inspect, replay and purge dead letters.
//! - [`host`]: the running host: loads plugins, starts subscribers, reloads, shuts down.
//! - [`reload`]: watch the plugin directory and swap plugins in place.
//! - [`admin`]: the admin HTTP endpoint (metrics, health, status page).
//! - [`metrics`]: Prometheus metrics; [`telemetry`]: logs (text or JSON) and span export.
//! - [`config`]: the TOML configuration and its layering.
//! - [`redis_server`]: a throwaway `redis-server` for the demo, benchmarks and tests;
//!   [`postgres_server`]: a throwaway PostgreSQL for the relay's tests and benchmark.
//! - [`demo`]: the README's end-to-end demo; [`bench`]: the benchmark.
//! - [`cli`]: the `ferry` command line; [`status`]: `ferry status` straight from Redis.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod consume;
pub mod demo;
pub mod dlq;
pub mod event;
pub mod host;
pub mod keys;
pub mod metrics;
pub mod outbox;
pub mod plugin;
pub mod postgres_server;
pub mod redis_server;
pub mod relay;
pub mod reload;
pub mod status;
pub mod telemetry;
