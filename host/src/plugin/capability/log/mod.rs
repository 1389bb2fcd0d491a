//! The `log` capability: structured lines into the host's tracing, tagged with the event.
//!
//! Needs no grant. Limits (`[subscribers.NAME.limits]`): `log_lines` per event (more are
//! dropped and counted, summed up in one warning after the event), `log_line_bytes` per line;
//! every line also passes the plugin's rate across all its instances and events
//! (`log_rate_lines`, `log_rate_bytes`, [`rate::LogRate`]). A line is made printable first:
//! a newline would forge a log line, an escape sequence reach a terminal.

pub mod rate;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use self::rate::LogRate;
use super::seam::{Capability, Current};
use crate::config::Effective;
use crate::plugin::bindings::{v0_1, v0_2};
use crate::plugin::contract::Contract;

/// The `log` capability.
pub struct Log;

/// Its caps: per event, and the plugin's rate across all its instances.
#[derive(Debug)]
pub struct LogGrant {
    /// The subscriber, named when its rate drops lines.
    pub subscriber: Arc<str>,
    /// Lines per event.
    pub lines: u32,
    /// Bytes kept of one line.
    pub line_bytes: usize,
    /// The plugin's log rate, shared by all its instances.
    pub rate: Arc<LogRate>,
    /// Where lines are recorded too (`ferry plugins invoke`), whatever the log filter.
    pub watch: Option<super::seam::Watch>,
}

/// A store's log: its grant and what the current call wrote.
pub struct LogCtx {
    /// The grant.
    pub grant: Arc<LogGrant>,
    /// Lines written by the current event.
    pub lines: u32,
    /// Lines dropped by the per-event cap during the current event.
    pub dropped: u32,
}

impl Capability for Log {
    type Grant = LogGrant;
    type Ctx = LogCtx;

    const IMPORTS: &'static [(&'static str, &'static str)] =
        &[("log", "no grant needed (capped per event and per plugin)")];

    fn grant(subscriber: &Arc<str>, settings: &Effective, services: &super::seam::Services) -> LogGrant {
        LogGrant {
            subscriber: subscriber.clone(),
            lines: settings.limits.log_lines,
            line_bytes: settings.limits.log_line_bytes,
            rate: LogRate::of(&settings.limits),
            watch: services.watch.clone(),
        }
    }

    fn ctx(grant: &Arc<LogGrant>) -> LogCtx {
        LogCtx { grant: grant.clone(), lines: 0, dropped: 0 }
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        contract: Contract,
        get: fn(&mut T) -> &mut LogCtx,
    ) -> wasmtime::Result<()> {
        match contract {
            Contract::V0_1 => v0_1::ferry::plugin::log::add_to_linker::<T, HasSelf<LogCtx>>(linker, get),
            Contract::V0_2 => v0_2::ferry::plugin::log::add_to_linker::<T, HasSelf<LogCtx>>(linker, get),
        }
    }

    fn begin(ctx: &mut LogCtx, _current: &Arc<Current>) {
        ctx.lines = 0;
        ctx.dropped = 0;
    }
}

impl LogCtx {
    fn emit(&mut self, level: tracing::Level, message: &str) {
        let enabled = match level {
            tracing::Level::TRACE => tracing::enabled!(target: "ferry::plugin", tracing::Level::TRACE),
            tracing::Level::DEBUG => tracing::enabled!(target: "ferry::plugin", tracing::Level::DEBUG),
            tracing::Level::INFO => tracing::enabled!(target: "ferry::plugin", tracing::Level::INFO),
            tracing::Level::WARN => tracing::enabled!(target: "ferry::plugin", tracing::Level::WARN),
            tracing::Level::ERROR => tracing::enabled!(target: "ferry::plugin", tracing::Level::ERROR),
        };
        let watch = self.grant.watch.as_ref();
        if !enabled && watch.is_none() {
            return;
        }
        self.lines += 1;
        if self.lines > self.grant.lines {
            self.dropped += 1;
            return;
        }
        let message = crate::redact::truncate(message, self.grant.line_bytes);
        // A newline would forge a log line, an escape sequence reach a terminal.
        let message = crate::redact::printable(message);
        if let Some(watch) = watch {
            let line = super::seam::LogLine { level: level.as_str(), message: message.to_string() };
            watch.record(|seen| seen.lines.push(line));
        }
        if !enabled || !self.grant.rate.admit(&self.grant.subscriber, message.len()) {
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

/// `log.write` for one contract version: each version's `level` is its own generated enum
/// (the WIT `types` are shared, `log` is not), mapped to tracing's level the same way.
macro_rules! log_host {
    ($version:ident) => {
        impl $version::ferry::plugin::log::Host for LogCtx {
            fn write(&mut self, level: $version::ferry::plugin::log::Level, message: String) {
                use $version::ferry::plugin::log::Level;
                let level = match level {
                    Level::Trace => tracing::Level::TRACE,
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.emit(level, &message);
            }
        }
    };
}

log_host!(v0_1);
log_host!(v0_2);
