//! What a plugin instance can reach: its store state, its limits and ferry's imports.
//!
//! No ambient authority: the WASI context grants nothing (no files, no environment, no
//! arguments, no sockets, no name lookup, no stdin); clocks and randomness stay available.
//! Guest stdout/stderr go to a capped in-memory pipe that the host writes into its log after
//! each event. ferry's own imports are the capabilities of [`super::capability`], each with
//! its per-call state in [`HostState::calls`]; everything a plugin writes into the host's log
//! also passes its per-plugin rate ([`LogRate`]), so a plugin flooding the log across many
//! events is capped in time too.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::capability::Calls;
pub use super::capability::Grants;
use crate::config::LimitsConfig;
use crate::handler::Effects;

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
    /// What each capability holds for the current event.
    pub calls: Calls,
    /// A grant the current event needed and the operator has not given (publishing to a
    /// stream not in `publish_streams`): the operator's to fix, so the event is retried
    /// whatever the handler made of the refusal (see `invoke`).
    pub denied: Option<String>,
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
            calls: Calls::default(),
            denied: None,
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
        self.calls = Calls::default();
        self.denied = None;
    }

    /// The handler succeeded: what every capability hands to the settle.
    pub fn finish(&mut self) -> Effects {
        self.calls.finish(&self.grants, &self.current)
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
        let dropped = self.calls.log.dropped;
        if dropped > 0 && self.rate.admit(&self.grants.subscriber, 0) {
            tracing::warn!(
                plugin = %self.grants.subscriber,
                event_id = %self.current.event_id,
                "dropped {dropped} log lines over the limit of {} per event",
                self.grants.log.lines
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

    fn state() -> HostState {
        let grants = Arc::new(Grants::none("amp", "0", LimitsConfig::default()));
        let rate = LogRate::of(&grants.limits);
        HostState::new(grants, rate)
    }

    /// Issue 23, item 10: host memory the guest's limits do not count is bounded too.
    #[test]
    fn an_instance_holds_at_most_max_resources_wasi_resources() {
        let mut state = state();
        for _ in 0..MAX_RESOURCES {
            state.table.push(()).expect("within the cap");
        }
        assert!(state.table.push(()).is_err(), "one more is refused");
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
