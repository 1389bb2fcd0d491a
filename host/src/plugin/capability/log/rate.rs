//! A plugin's log rate: lines and bytes per second across all its instances and events, in
//! one-second windows. Everything a plugin writes into the host's log passes it: `log` lines
//! and its captured stdout/stderr (see `sandbox::HostState::drain_stdio`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

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
    pub fn of(limits: &LimitsConfig) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new(limits.log_rate_lines, limits.log_rate_bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

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
