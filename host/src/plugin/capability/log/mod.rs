//! The `log` capability: structured lines into the host's tracing, tagged with the event.
//!
//! Needs no grant. Limits (`[subscribers.NAME.limits]`): `log_lines` per event (more are
//! dropped and counted, summed up in one warning after the event), `log_line_bytes` per line;
//! every line also passes the plugin's rate across all its instances and events
//! (`log_rate_lines`, `log_rate_bytes`, see `sandbox::LogRate`). A line is made printable
//! first: a newline would forge a log line, an escape sequence reach a terminal.

use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::config::Effective;
use crate::plugin::bindings::{v0_1, v0_2};
use crate::plugin::contract::Contract;
use crate::plugin::sandbox::HostState;

/// The `log` capability.
pub struct Log;

/// Its per-event caps.
#[derive(Debug, Clone, Copy)]
pub struct LogGrant {
    /// Lines per event.
    pub lines: u32,
    /// Bytes kept of one line.
    pub line_bytes: usize,
}

/// What one call wrote.
#[derive(Debug, Default)]
pub struct LogCall {
    /// Lines written by the current event.
    pub lines: u32,
    /// Lines dropped by the per-event cap during the current event.
    pub dropped: u32,
}

impl Capability for Log {
    type Grant = LogGrant;
    type Call = LogCall;

    const IMPORTS: &'static [(&'static str, &'static str)] =
        &[("log", "no grant needed (capped per event and per plugin)")];

    fn grant(settings: &Effective) -> LogGrant {
        LogGrant { lines: settings.limits.log_lines, line_bytes: settings.limits.log_line_bytes }
    }

    fn link(linker: &mut Linker<HostState>, contract: Contract) -> wasmtime::Result<()> {
        match contract {
            Contract::V0_1 => v0_1::ferry::plugin::log::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
            Contract::V0_2 => v0_2::ferry::plugin::log::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
        }
    }
}

impl HostState {
    fn log_write(&mut self, level: tracing::Level, message: &str) {
        let enabled = match level {
            tracing::Level::TRACE => tracing::enabled!(target: "ferry::plugin", tracing::Level::TRACE),
            tracing::Level::DEBUG => tracing::enabled!(target: "ferry::plugin", tracing::Level::DEBUG),
            tracing::Level::INFO => tracing::enabled!(target: "ferry::plugin", tracing::Level::INFO),
            tracing::Level::WARN => tracing::enabled!(target: "ferry::plugin", tracing::Level::WARN),
            tracing::Level::ERROR => tracing::enabled!(target: "ferry::plugin", tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        let call = &mut self.calls.log;
        call.lines += 1;
        if call.lines > self.grants.log.lines {
            call.dropped += 1;
            return;
        }
        let message = crate::redact::truncate(message, self.grants.log.line_bytes);
        // A newline would forge a log line, an escape sequence reach a terminal.
        let message = crate::redact::printable(message);
        if !self.rate.admit(&self.grants.subscriber, message.len()) {
            return;
        }
        // The plugin and the event id are the `event` span's fields (`subscriber`, `event_id`),
        // which every line written during the call carries: not repeated on the line.
        match level {
            tracing::Level::TRACE => tracing::trace!(target: "ferry::plugin", "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "ferry::plugin", "{message}"),
            tracing::Level::INFO => tracing::info!(target: "ferry::plugin", "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "ferry::plugin", "{message}"),
            tracing::Level::ERROR => tracing::error!(target: "ferry::plugin", "{message}"),
        }
    }
}

impl v0_1::ferry::plugin::log::Host for HostState {
    fn write(&mut self, level: v0_1::ferry::plugin::log::Level, message: String) {
        use v0_1::ferry::plugin::log::Level;
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.log_write(level, &message);
    }
}

impl v0_2::ferry::plugin::log::Host for HostState {
    fn write(&mut self, level: v0_2::ferry::plugin::log::Level, message: String) {
        use v0_2::ferry::plugin::log::Level;
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.log_write(level, &message);
    }
}
