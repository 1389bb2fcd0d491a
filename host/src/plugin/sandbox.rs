//! What a plugin instance can reach: its store state.
//!
//! No ambient authority: the WASI context grants nothing (no files, no environment, no
//! arguments, no sockets, no name lookup, no stdin); clocks and randomness stay available.
//! Guest stdout/stderr go to a capped in-memory pipe ([`CappedPipe`]) that the host writes
//! into its log after each event. ferry's own imports are the capabilities of
//! [`super::capability`], each with its context in [`HostState::capabilities`]; everything a
//! plugin writes into the host's log also passes its per-plugin rate
//! (`capability::log::rate::LogRate`), so a plugin flooding the log across many events is
//! capped in time too. The store's bounds are the [`Limiter`]'s; the call in progress is
//! the scheduler's ([`CallState`]).

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::capability::seam::Current;
use super::capability::{Ctxs, Grants, HasCapabilities};
use super::limiter::Limiter;
use super::pipe::CappedPipe;
use super::schedule::CallState;
use crate::handler::Effects;

/// Most WASI resources (streams, pollables, ...) one instance may hold at once. wasmtime's
/// default is a million, over 100 MB of host memory the guest's limits do not count, kept
/// across events by a reused instance; a guest past this gets an error from the import that
/// would create one more.
pub const MAX_RESOURCES: usize = 65_536;

/// Store state of one plugin instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    /// What the plugin was granted.
    pub grants: Arc<Grants>,
    /// The call in progress, if any.
    pub call: Option<CallState>,
    /// The event being handled.
    pub current: Arc<Current>,
    /// Every capability's context.
    pub capabilities: Ctxs,
    /// Captured stdout.
    pub stdout: CappedPipe,
    /// Captured stderr.
    pub stderr: CappedPipe,
}

impl HostState {
    /// A fresh state with nothing granted but what `grants` says.
    pub fn new(grants: Arc<Grants>) -> Self {
        let stdout = CappedPipe::new(grants.limits.stdio_bytes);
        let stderr = CappedPipe::new(grants.limits.stdio_bytes);
        // Sockets and name lookup off by ferry's choice, not only by wasmtime's defaults: a
        // plugin reaches the network only through a capability it was granted.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limiter = Limiter::new(grants.limits.memory, grants.limits.instances);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let capabilities = Ctxs::new(&grants);
        Self { wasi, table, limiter, grants, call: None, current: Arc::default(), capabilities, stdout, stderr }
    }

    /// The resource limiter for `Store::limiter`.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Reset per-event state before handling `current`.
    pub fn begin(&mut self, current: Current) {
        self.current = Arc::new(current);
        self.capabilities.begin(&self.current);
    }

    /// The handler succeeded: what every capability hands to the settle.
    pub fn finish(&mut self) -> Effects {
        self.capabilities.finish()
    }

    /// A grant the current event needed and the operator has not given (publishing to a
    /// stream not in `publish_streams`): the operator's to fix, so the event is retried
    /// whatever the handler made of the refusal (see `invoke`).
    pub fn denied(&mut self) -> Option<String> {
        self.capabilities.denied()
    }

    /// Write what the guest printed into the host log, tagged with the plugin and event.
    /// Returns what it wrote to stderr (a panic message, an exception), for failure reasons.
    pub fn drain_stdio(&mut self) -> String {
        let rate = &self.capabilities.log.grant.rate;
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
            if !rate.admit(&self.grants.subscriber, bytes.len()) {
                continue;
            }
            tracing::info!(
                target: "ferry::plugin",
                subscriber = %self.grants.subscriber, plugin = %self.grants.subscriber,
                event_id = %self.current.event_id,
                dropped_bytes = dropped,
                "{name}: {}",
                crate::redact::printable(text.trim_end())
            );
        }
        let dropped = self.capabilities.log.dropped;
        if dropped > 0 && rate.admit(&self.grants.subscriber, 0) {
            tracing::warn!(
                subscriber = %self.grants.subscriber, plugin = %self.grants.subscriber,
                event_id = %self.current.event_id,
                "dropped {dropped} log lines over the limit of {} per event",
                self.grants.limits.log_lines
            );
        }
        rate.summarize(&self.grants.subscriber);
        stderr
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `wasi:http` shares WASI's resource table (its bodies are `wasi:io` streams); the hooks and
/// context are the `http` capability's.
impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        let http = &mut self.capabilities.http;
        wasmtime_wasi_http::WasiHttpCtxView { hooks: &mut http.hooks, table: &mut self.table, ctx: &mut http.ctx }
    }
}

impl HasCapabilities for HostState {
    fn capabilities(&mut self) -> &mut Ctxs {
        &mut self.capabilities
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;

    /// Issue 23, item 10: host memory the guest's limits do not count is bounded too.
    #[test]
    fn an_instance_holds_at_most_max_resources_wasi_resources() {
        let mut state = HostState::new(Arc::new(Grants::none("amp", "0", LimitsConfig::default())));
        for _ in 0..MAX_RESOURCES {
            state.table.push(()).expect("within the cap");
        }
        assert!(state.table.push(()).is_err(), "one more is refused");
    }

    /// Issue 23, "checked and sound": the WASI context a guest gets has no preopened
    /// directory, no arguments, no environment and no working directory, read through
    /// wasmtime's own `wasi:filesystem` and `wasi:cli` hosts (what the guest's imports call).
    #[test]
    fn the_wasi_context_has_no_preopens_arguments_environment_or_working_directory() {
        use wasmtime_wasi::cli::WasiCliView;
        use wasmtime_wasi::filesystem::WasiFilesystemView;
        use wasmtime_wasi::p2::bindings::cli::environment::Host as _;
        use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;

        let mut state = HostState::new(Arc::new(Grants::none("ambient", "0", LimitsConfig::default())));
        let preopens = state.filesystem().get_directories().expect("preopens");
        let names: Vec<&str> = preopens.iter().map(|(_, name)| name.as_str()).collect();
        assert!(names.is_empty(), "preopened: {names:?}");
        let mut cli = state.cli();
        assert_eq!(cli.get_arguments().expect("arguments"), Vec::<String>::new());
        assert_eq!(cli.get_environment().expect("environment"), Vec::<(String, String)>::new());
        assert_eq!(cli.initial_cwd().expect("working directory"), None);
    }
}
