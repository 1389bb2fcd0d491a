//! What a plugin instance can reach: its store state, its limits and ferry's imports.
//!
//! No ambient authority: the WASI context grants nothing (no files, no environment, no
//! arguments, no sockets, no name lookup, no stdin); clocks and randomness stay available.
//! Guest stdout/stderr go to a capped in-memory pipe that the host writes into its log after
//! each event. The `log`, `config` and `publish` imports are implemented here with their
//! per-event caps; everything a plugin writes into the host's log also passes its per-plugin
//! rate ([`LogRate`]), so a plugin flooding the log across many events is capped in time too.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::ferry::plugin::{config, log, publish, types};
use crate::config::LimitsConfig;
use crate::event::{self, Event};
use crate::keys;

/// Per-subscriber settings every instance of the plugin shares.
#[derive(Debug)]
pub struct Grants {
    /// Subscriber (plugin) name.
    pub subscriber: Arc<str>,
    /// Plugin version id (content hash).
    pub version: Arc<str>,
    /// Values readable through the `config` import.
    pub config: BTreeMap<String, String>,
    /// Streams the plugin may publish to.
    pub publish_streams: Vec<String>,
    /// Limits.
    pub limits: LimitsConfig,
}

/// The event being handled, as the imports need it.
#[derive(Debug, Default, Clone)]
pub struct Current {
    /// Id of the handled event.
    pub event_id: String,
    /// Its correlation id.
    pub correlationid: Option<String>,
    /// The stream it came from.
    pub stream: String,
    /// Its causation depth (0 for a producer's own event); its follow-ups get one more.
    pub depth: u32,
    /// How many follow-ups it may still have in its chain (see `Event::causationbudget`).
    pub budget: u32,
}

/// A follow-up event queued through `publish`, written when the handled event is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    /// Target stream.
    pub stream: String,
    /// The event.
    pub event: Event,
}

/// Why the limiter stopped a plugin; surfaces as the trap's error so it can be named.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: wanted {desired} bytes, limit is {limit} bytes")]
pub struct MemoryLimitExceeded {
    /// Bytes the instance would hold with this growth: all its memories and tables together.
    pub desired: usize,
    /// The cap.
    pub limit: u64,
}

/// The call a store is running, as the epoch callback needs it (see `invoke`).
pub struct CallState {
    /// When the call's deadline passes.
    pub deadline_at: Instant,
    /// The engine-wide permit this call holds to run past its first tick, if it holds one.
    pub permit: Arc<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// The engine-wide permits.
    pub permits: Arc<super::engine::Permits>,
    /// Ticks seen while the call ran guest code: a permit whose call stops ticking is in a
    /// host call (asleep in WASI, waiting on I/O) and is taken back (see `invoke`).
    pub ticks: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the subscriber is being throttled for hitting deadlines or trapping: its long
    /// calls then pause between ticks, so it gets less CPU, not more.
    pub penalized: bool,
}

/// Store state of one plugin instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    /// What the plugin was granted.
    pub grants: Arc<Grants>,
    /// The plugin's log rate, shared by all its instances.
    pub rate: Arc<LogRate>,
    /// The call in progress, if any.
    pub call: Option<CallState>,
    /// The event being handled.
    pub current: Current,
    /// Follow-ups queued by the current event.
    pub follow_ups: Vec<FollowUp>,
    /// A grant the current event needed and the operator has not given (publishing to a
    /// stream not in `publish_streams`): the operator's to fix, so the event is retried
    /// whatever the handler made of the refusal (see `invoke`).
    pub denied: Option<String>,
    /// Log lines written by the current event.
    pub log_lines: u32,
    /// Log lines dropped by the rate cap during the current event.
    pub log_dropped: u32,
    /// Captured stdout.
    pub stdout: CappedPipe,
    /// Captured stderr.
    pub stderr: CappedPipe,
}

impl HostState {
    /// A fresh state with nothing granted but what `grants` says.
    pub fn new(grants: Arc<Grants>, rate: Arc<LogRate>) -> Self {
        let stdout = CappedPipe::new(grants.limits.stdio_bytes);
        let stderr = CappedPipe::new(grants.limits.stdio_bytes);
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
        let limiter = Limiter { memory: grants.limits.memory, instances: grants.limits.instances, used: 0 };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            limiter,
            grants,
            rate,
            call: None,
            current: Current::default(),
            follow_ups: Vec::new(),
            denied: None,
            log_lines: 0,
            log_dropped: 0,
            stdout,
            stderr,
        }
    }

    /// The resource limiter for `Store::limiter`.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Reset per-event state before handling `current`.
    pub fn begin(&mut self, current: Current) {
        self.current = current;
        self.follow_ups.clear();
        self.denied = None;
        self.log_lines = 0;
        self.log_dropped = 0;
    }

    /// Write what the guest printed into the host log, tagged with the plugin and event.
    /// Returns what it wrote to stderr (a panic message, an exception), for failure reasons.
    pub fn drain_stdio(&mut self) -> String {
        let mut stderr = String::new();
        for (name, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (bytes, dropped) = pipe.take();
            if bytes.is_empty() && dropped == 0 {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            if name == "stderr" {
                stderr = text.to_string();
            }
            if !self.rate.admit(&self.grants.subscriber, bytes.len()) {
                continue;
            }
            tracing::info!(
                target: "ferry::plugin",
                plugin = %self.grants.subscriber,
                event_id = %self.current.event_id,
                dropped_bytes = dropped,
                "{name}: {}",
                crate::redact::printable(text.trim_end())
            );
        }
        if self.log_dropped > 0 && self.rate.admit(&self.grants.subscriber, 0) {
            tracing::warn!(
                plugin = %self.grants.subscriber,
                event_id = %self.current.event_id,
                "dropped {} log lines over the limit of {} per event",
                self.log_dropped,
                self.grants.limits.log_lines
            );
        }
        self.rate.summarize(&self.grants.subscriber);
        stderr
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Most WASI resources (streams, pollables, ...) one instance may hold at once. wasmtime's
/// default is a million, over 100 MB of host memory the guest's limits do not count, kept
/// across events by a reused instance; a guest past this gets an error from the import that
/// would create one more.
pub const MAX_RESOURCES: usize = 65_536;

/// Host memory a table element costs (a function reference), counted against
/// `limits.memory` with the linear memories.
pub const TABLE_ELEMENT_BYTES: u64 = 8;

/// Most elements one table may have, whatever `limits.memory` allows.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Bounds what one store (one component instance: all its core instances) may hold.
/// `limits.memory` is the total of every linear memory and table of the store, not a cap per
/// memory: a component of 20 core modules must not hold 20 times the limit.
struct Limiter {
    memory: u64,
    instances: usize,
    /// Bytes granted so far to all memories and tables of the store. Stores are never
    /// shrunk, and memories and tables live as long as their store, so this only grows. A
    /// growth granted here that wasmtime then refuses (past a declared maximum) stays counted:
    /// only the guest that asked loses by it.
    used: u64,
}

impl Limiter {
    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<()> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.memory {
            // Trap with our own error rather than failing the growth: a guest allocator that
            // sees a failed growth aborts with an anonymous `unreachable`, which would hide
            // the cause.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired: usize::try_from(total).unwrap_or(usize::MAX),
                limit: self.memory,
            }));
        }
        self.used = total;
        Ok(())
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)?;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow(current as u64 * TABLE_ELEMENT_BYTES, desired as u64 * TABLE_ELEMENT_BYTES)?;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances * 2
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) {
        let enabled = match level {
            log::Level::Trace => tracing::enabled!(target: "ferry::plugin", tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(target: "ferry::plugin", tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(target: "ferry::plugin", tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(target: "ferry::plugin", tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(target: "ferry::plugin", tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        self.log_lines += 1;
        if self.log_lines > self.grants.limits.log_lines {
            self.log_dropped += 1;
            return;
        }
        let message = truncate(&message, self.grants.limits.log_line_bytes);
        // A newline would forge a log line, an escape sequence reach a terminal.
        let message = crate::redact::printable(message);
        if !self.rate.admit(&self.grants.subscriber, message.len()) {
            return;
        }
        // The plugin and the event id are the `event` span's fields (`subscriber`, `event_id`),
        // which every line written during the call carries: not repeated on the line.
        match level {
            log::Level::Trace => tracing::trace!(target: "ferry::plugin", "{message}"),
            log::Level::Debug => tracing::debug!(target: "ferry::plugin", "{message}"),
            log::Level::Info => tracing::info!(target: "ferry::plugin", "{message}"),
            log::Level::Warn => tracing::warn!(target: "ferry::plugin", "{message}"),
            log::Level::Error => tracing::error!(target: "ferry::plugin", "{message}"),
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).cloned()
    }
}

impl publish::Host for HostState {
    fn send(&mut self, out: types::OutgoingEvent) -> Result<String, String> {
        let limits = &self.grants.limits;
        // Every field is bounded before anything is copied or echoed in an error.
        let attributes = [
            ("event type", Some(&out.event_type)),
            ("stream", out.stream.as_ref()),
            ("content type", out.datacontenttype.as_ref()),
            ("subject", out.subject.as_ref()),
            ("partition key", out.partitionkey.as_ref()),
        ];
        for (what, value) in attributes {
            if let Some(value) = value
                && value.len() > event::MAX_ATTRIBUTE_BYTES
            {
                return Err(format!(
                    "{what} of {} bytes exceeds the limit of {} bytes",
                    value.len(),
                    event::MAX_ATTRIBUTE_BYTES
                ));
            }
        }
        if out.data.len() > limits.publish_bytes {
            return Err(format!(
                "event data of {} bytes exceeds the limit of {} bytes",
                out.data.len(),
                limits.publish_bytes
            ));
        }
        let stream = out.stream.unwrap_or_else(|| self.current.stream.clone());
        if !self.grants.publish_streams.contains(&stream) {
            let message = format!(
                "publishing to stream `{stream}` is not allowed for this plugin: grant it with `publish_streams = [\"{stream}\"]` in its `[subscribers.{name}]` (or its NAME.toml)",
                stream = escape(&stream),
                name = escape(&self.grants.subscriber),
            );
            self.denied = Some(message.clone());
            return Err(message);
        }
        keys::check_name("stream", &stream)?;
        if self.follow_ups.len() as u64 >= u64::from(self.current.budget) {
            return Err(format!(
                "causation budget exhausted: this event may have {} more follow-ups in its chain (all descendants of a producer's event share {})",
                self.current.budget,
                event::CAUSATION_BUDGET
            ));
        }
        if self.follow_ups.len() >= limits.publish_count {
            return Err(format!("at most {} follow-up events per handled event", limits.publish_count));
        }
        if out.event_type.trim().is_empty() {
            return Err("event type is empty".into());
        }
        let datacontenttype = out.datacontenttype.unwrap_or_else(|| event::JSON.to_string());
        if event::is_json(&datacontenttype) {
            serde_json::from_slice::<serde::de::IgnoredAny>(&out.data)
                .map_err(|e| format!("data is not valid JSON: {e}"))?;
        }
        let mut event = Event::new(out.event_type, self.grants.subscriber.to_string(), out.data);
        event.datacontenttype = datacontenttype;
        event.schemaversion = out.schemaversion.unwrap_or(1);
        event.subject = out.subject;
        event.partitionkey = out.partitionkey;
        event.correlationid = Some(self.current.correlationid.clone().unwrap_or_else(|| self.current.event_id.clone()));
        event.causationid = Some(self.current.event_id.clone());
        event.causationdepth = Some(self.current.depth.saturating_add(1));
        // The rule the consumer side applies to every entry it reads: a follow-up it would
        // refuse is refused here, before it is held.
        let bytes = event.entry_bytes();
        if bytes > event::MAX_ENTRY_BYTES {
            return Err(format!(
                "the event would be an entry of {bytes} bytes; at most {} are accepted",
                event::MAX_ENTRY_BYTES
            ));
        }
        let id = event.id.clone();
        self.follow_ups.push(FollowUp { stream, event });
        Ok(id)
    }
}

/// A plugin's log rate: lines and bytes per second across all its instances and events, in
/// one-second windows. What a window drops is summed up in one warning when the window ends.
#[derive(Debug)]
pub struct LogRate {
    lines: u32,
    bytes: u64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// Length of one rate window.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl LogRate {
    /// A rate of `lines` lines and `bytes` bytes per second.
    pub fn new(lines: u32, bytes: u64) -> Self {
        let window = Window { start: Instant::now(), lines: 0, bytes: 0, dropped_lines: 0, dropped_bytes: 0 };
        Self { lines, bytes, window: Mutex::new(window) }
    }

    /// The rate `limits` set.
    pub fn of(limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(Self::new(limits.log_rate_lines, limits.log_rate_bytes))
    }

    /// Whether a line of `len` bytes of `plugin` may be written now; counts it as dropped if
    /// not. Ends the window first if it is over.
    pub fn admit(&self, plugin: &str, len: usize) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut w, plugin);
        let len = len as u64;
        if w.lines < self.lines && w.bytes + len <= self.bytes {
            w.lines += 1;
            w.bytes += len;
            true
        } else {
            w.dropped_lines += 1;
            w.dropped_bytes += len;
            false
        }
    }

    /// If the current window is over, log what it dropped (one line) and start a new one.
    pub fn summarize(&self, plugin: &str) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut w, plugin);
    }

    fn roll(&self, w: &mut Window, plugin: &str) {
        let elapsed = w.start.elapsed();
        if elapsed < RATE_WINDOW {
            return;
        }
        if w.dropped_lines > 0 {
            tracing::warn!(
                target: "ferry::plugin",
                plugin,
                dropped_lines = w.dropped_lines,
                dropped_bytes = w.dropped_bytes,
                "dropped {} log lines ({} bytes) of this plugin in the last {:.1?}: over its rate of {} lines and {} bytes per second",
                w.dropped_lines,
                w.dropped_bytes,
                elapsed,
                self.lines,
                self.bytes
            );
        }
        *w = Window { start: Instant::now(), lines: 0, bytes: 0, dropped_lines: 0, dropped_bytes: 0 };
    }
}

pub use crate::redact::escape;

pub use crate::redact::truncate;

/// An output pipe that accepts every write but keeps only the first `capacity` bytes, so a
/// guest flooding stdout neither blocks nor traps nor grows the host's memory.
#[derive(Clone)]
pub struct CappedPipe {
    capacity: usize,
    inner: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl CappedPipe {
    /// A pipe keeping up to `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Arc::new(Mutex::new((Vec::new(), 0))) }
    }

    fn push(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = self.capacity.saturating_sub(inner.0.len());
        let keep = room.min(bytes.len());
        inner.0.extend_from_slice(&bytes[..keep]);
        inner.1 += bytes.len() - keep;
    }

    /// Take the captured bytes and the count of dropped bytes, emptying the pipe.
    pub fn take(&self) -> (Vec<u8>, usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dropped = std::mem::take(&mut inner.1);
        (std::mem::take(&mut inner.0), dropped)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: wasmtime_wasi_io::bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> HostState {
        let grants = Arc::new(Grants {
            subscriber: "amp".into(),
            version: "0".into(),
            config: Default::default(),
            publish_streams: vec!["events".into()],
            limits: LimitsConfig::default(),
        });
        let rate = LogRate::of(&grants.limits);
        let mut state = HostState::new(grants, rate);
        state.begin(Current {
            event_id: "e1".into(),
            correlationid: None,
            stream: "events".into(),
            depth: 0,
            budget: 10,
        });
        state
    }

    fn outgoing() -> types::OutgoingEvent {
        types::OutgoingEvent {
            event_type: "T".into(),
            stream: None,
            data: b"{}".to_vec(),
            datacontenttype: None,
            schemaversion: None,
            subject: None,
            partitionkey: None,
        }
    }

    /// Issue 23, item 10: host memory the guest's limits do not count is bounded too.
    #[test]
    fn an_instance_holds_at_most_max_resources_wasi_resources() {
        let mut state = publisher();
        for _ in 0..MAX_RESOURCES {
            state.table.push(()).expect("within the cap");
        }
        assert!(state.table.push(()).is_err(), "one more is refused");
    }

    /// Issue 23, item 3: only `data` was capped, so 100 follow-ups with a 60 MiB type each
    /// made the host hold gigabytes. Every field is capped by the rule the consumer side
    /// applies to entries it reads.
    #[test]
    fn every_field_of_a_follow_up_is_capped() {
        use publish::Host as _;
        let huge = "t".repeat(event::MAX_ATTRIBUTE_BYTES + 1);
        type Set<'a> = Box<dyn Fn(&mut types::OutgoingEvent) + 'a>;
        let cases: [(&str, Set<'_>); 5] = [
            ("type", Box::new(|o| o.event_type = huge.clone())),
            ("subject", Box::new(|o| o.subject = Some(huge.clone()))),
            ("partition key", Box::new(|o| o.partitionkey = Some(huge.clone()))),
            ("content type", Box::new(|o| o.datacontenttype = Some(format!("text/{huge}")))),
            ("stream", Box::new(|o| o.stream = Some(huge.clone()))),
        ];
        for (what, set) in cases {
            let mut state = publisher();
            let mut out = outgoing();
            set(&mut out);
            let err = state.send(out).expect_err(what);
            assert!(err.len() < 300, "{what}: the error does not echo the value: {} bytes", err.len());
            assert!(state.follow_ups.is_empty(), "{what}: nothing held");
        }
        let mut state = publisher();
        let mut out = outgoing();
        out.data = vec![b' '; LimitsConfig::default().publish_bytes + 1];
        assert!(state.send(out).is_err(), "data");
        // At the limits, every field together still makes an entry the consumer side accepts.
        let mut state = publisher();
        let at = "t".repeat(event::MAX_ATTRIBUTE_BYTES);
        let mut out = outgoing();
        out.event_type = at.clone();
        out.subject = Some(at.clone());
        out.partitionkey = Some(at);
        state.send(out).expect("at the limits");
        let entry = &state.follow_ups[0].event;
        assert!(entry.entry_bytes() <= event::MAX_ENTRY_BYTES);
    }

    #[test]
    fn the_log_rate_caps_lines_and_bytes_per_window() {
        let rate = LogRate::new(3, 100);
        assert!(rate.admit("p", 10) && rate.admit("p", 10));
        assert!(!rate.admit("p", 90), "over the bytes");
        assert!(rate.admit("p", 10));
        assert!(!rate.admit("p", 1), "over the lines");
        let w = rate.window.lock().expect("lock");
        assert_eq!((w.lines, w.bytes, w.dropped_lines, w.dropped_bytes), (3, 30, 2, 91));
    }

    #[test]
    fn a_new_window_starts_after_a_second() {
        let rate = LogRate::new(1, 100);
        assert!(rate.admit("p", 1));
        assert!(!rate.admit("p", 1));
        rate.window.lock().expect("lock").start -= RATE_WINDOW;
        assert!(rate.admit("p", 1), "the window rolled over");
        assert_eq!(rate.window.lock().expect("lock").dropped_lines, 0, "and its drops were summed up");
    }
}
