//! Naming what went wrong in a guest call: a trap, a limit hit or the deadline, each a
//! [`FailureKind`] with a reason a person can act on.
//!
//! A handler's own error, a trap or limit hit, and a host-side failure are kept apart
//! because they lead to different dispositions: only the first two are the guest's verdict.

use std::time::Duration;

use wasmtime::{Trap, WasmBacktrace};

use super::limiter::MemoryLimitExceeded;
use crate::handler::FailureKind;

/// The reason given when a deadline stopped a call after `elapsed`.
pub fn deadline_reason(deadline: Duration, elapsed: Duration, in_host_call: bool) -> String {
    let ms = Duration::from_millis(elapsed.as_millis() as u64);
    let place = if in_host_call { " (blocked in a host call)" } else { "" };
    format!(
        "deadline of {} exceeded: stopped after {}{place}",
        humantime::format_duration(deadline),
        humantime::format_duration(ms)
    )
}

/// Most bytes kept of a handler's retry or reject reason, as of its stderr in a failure
/// reason: the reason is logged and copied into every retry and dead-letter entry.
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason` cut to [`MAX_REASON_BYTES`], saying how much was cut.
pub fn cap_reason(reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let kept = crate::redact::truncate(&reason, MAX_REASON_BYTES);
    format!("{kept}... ({} bytes cut)", reason.len() - kept.len())
}

/// Name a failed call: the kind and a reason without wasmtime's doubled prefixes.
pub fn classify(err: &wasmtime::Error, deadline: Duration, memory: u64, elapsed: Duration) -> (FailureKind, String) {
    if let Some(limit) = err.downcast_ref::<MemoryLimitExceeded>() {
        return (FailureKind::OutOfMemory, limit.to_string());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (FailureKind::Deadline, deadline_reason(deadline, elapsed, false)),
        Some(Trap::OutOfFuel) => (FailureKind::OutOfFuel, "fuel exhausted".into()),
        Some(Trap::StackOverflow) => (FailureKind::StackOverflow, "stack overflow: wasm call stack exhausted".into()),
        Some(Trap::MemoryOutOfBounds) if recursing(err) => (
            FailureKind::StackOverflow,
            "stack overflow: the guest's own stack in linear memory ran out in deep recursion (trapped as an out of bounds memory access)"
                .into(),
        ),
        // `Trap`'s own text already reads "wasm trap: ...".
        Some(trap) => (FailureKind::Trap, trap.to_string()),
        None => {
            let text = format!("{err:#}");
            if text.contains("memory") && text.contains("limit") {
                (FailureKind::OutOfMemory, format!("memory limit of {memory} bytes: {text}"))
            } else {
                (FailureKind::Trap, text)
            }
        }
    }
}

/// Whether `err` is the guest's own doing: a trap (deadline and fuel included) or a limit of
/// the limiter.
pub fn guest_failure(err: &wasmtime::Error) -> bool {
    err.downcast_ref::<MemoryLimitExceeded>().is_some() || err.downcast_ref::<Trap>().is_some()
}

/// Whether the trap's backtrace is a deep recursion: every captured frame (wasmtime keeps
/// 20) is one of at most three functions. Compilers for wasm (Rust, C) keep large locals on a
/// stack of their own in linear memory; when recursion exhausts it, the stack pointer wraps
/// below address zero and the next store is out of bounds, not a wasm stack overflow.
fn recursing(err: &wasmtime::Error) -> bool {
    let Some(trace) = err.downcast_ref::<WasmBacktrace>() else { return false };
    let frames = trace.frames();
    if frames.len() < 16 {
        return false;
    }
    let mut seen: Vec<(Option<&str>, u32)> = Vec::new();
    for frame in frames {
        let key = (frame.module().name(), frame.func_index());
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    seen.len() <= 3
}

/// `stderr` appended to a failure `reason`, cut.
pub fn with_stderr(mut reason: String, stderr: &str) -> String {
    if !stderr.is_empty() {
        reason.push_str("; stderr: ");
        reason.push_str(crate::redact::truncate(stderr.trim(), 1024));
    }
    reason
}
