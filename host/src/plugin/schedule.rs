//! Sharing the machine among guests: the engine-wide CPU permits and what every epoch tick
//! decides for the call it interrupts.
//!
//! A call's first epoch tick is free, so short handler calls never wait; past it a call needs
//! one of the engine's permits (one fewer than the cores), handed over at a tick whenever
//! another call waits for one, so long-running guests take turns on what is left of the
//! machine. A penalized subscriber (see `throttle`) pauses between ticks. The deadline is
//! enforced here too: a tick past it interrupts the guest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::UpdateDeadline;

/// How often the epoch advances; deadlines are rounded up to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine-wide permits to run guest code past a call's first tick, and how many calls are
/// queued for one: a holder hands its permit over at its next tick when someone waits, so
/// guests that never stop running take turns, one tick each, instead of keeping the permit
/// until they end (or hit their deadline).
#[derive(Debug)]
pub struct Permits {
    semaphore: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Permits {
    /// `n` permits.
    pub fn new(n: usize) -> Self {
        Self { semaphore: Arc::new(tokio::sync::Semaphore::new(n)), waiting: Default::default() }
    }

    /// Queue for a permit (FIFO); `None` only if the semaphore was closed.
    pub async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        /// Counts this call as waiting until it has a permit or gives up (is dropped).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        self.semaphore.clone().acquire_owned().await.ok()
    }

    /// Whether a call is queued for a permit.
    pub fn contended(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// How many guest calls may run past their first tick at once on this machine.
pub fn guest_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

/// The call a store is running, as the epoch callback needs it (see `invoke`).
pub struct CallState {
    /// When the call's deadline passes.
    pub deadline_at: Instant,
    /// The engine-wide permit this call holds to run past its first tick, if it holds one.
    pub permit: Arc<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// The engine-wide permits.
    pub permits: Arc<Permits>,
    /// Ticks seen while the call ran guest code: a permit whose call stops ticking is in a
    /// host call (asleep in WASI, waiting on I/O) and is taken back (see `invoke`).
    pub ticks: Arc<AtomicU64>,
    /// Whether the subscriber is being throttled for hitting deadlines or trapping: its long
    /// calls then pause between ticks, so it gets less CPU, not more.
    pub penalized: bool,
}

/// Called at every epoch tick while guest code runs: interrupt a call past its deadline, else
/// yield to the runtime, first taking (or re-taking) one of the engine's permits.
pub fn on_tick(call: Option<&CallState>) -> UpdateDeadline {
    let Some(call) = call else {
        return UpdateDeadline::Yield(1);
    };
    if Instant::now() >= call.deadline_at {
        return UpdateDeadline::Interrupt;
    }
    call.ticks.fetch_add(1, Ordering::Relaxed);
    let held = call.permit.lock().unwrap_or_else(|p| p.into_inner()).is_some();
    // Keep the permit unless another call waits for one: then take turns (one tick each).
    if held && !call.penalized && !call.permits.contended() {
        return UpdateDeadline::Yield(1);
    }
    let (slot, permits, penalized) = (call.permit.clone(), call.permits.clone(), call.penalized);
    let ticks = call.ticks.clone();
    UpdateDeadline::YieldCustom(
        1,
        Box::pin(async move {
            // Let go of the permit while pausing, so others run; queue for it again (FIFO).
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if penalized {
                tokio::time::sleep(PENALTY_PAUSE).await;
            }
            if let Some(permit) = permits.acquire().await {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
                tokio::spawn(take_back_when_idle(Arc::downgrade(&slot), ticks));
            }
        }),
    )
}

/// Watch a granted permit: when its call stops ticking for two ticks in a row it is not
/// running guest code (it sleeps or waits in a host call), so the permit goes back to the
/// engine; the call takes one again at its next tick in guest code. Without this, a guest
/// asleep in WASI would keep other guests from running past their first tick. Ends when the
/// call ends (the slot is gone) or the permit is let go.
async fn take_back_when_idle(slot: std::sync::Weak<Mutex<Option<OwnedSemaphorePermit>>>, ticks: Arc<AtomicU64>) {
    let mut seen = ticks.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(2 * EPOCH_TICK).await;
        let Some(slot) = slot.upgrade() else { return };
        let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            return;
        }
        let now = ticks.load(Ordering::Relaxed);
        if now == seen {
            held.take();
            return;
        }
        seen = now;
    }
}

/// How long a penalized subscriber's long call pauses at every tick: three ticks, so it runs
/// at most a quarter of the time.
const PENALTY_PAUSE: Duration = Duration::from_millis(3 * EPOCH_TICK.as_millis() as u64);

/// Slack beyond the deadline before the host call is cut off: the epoch callback stops guest
/// code in wasm itself, within a tick.
pub const SLACK: Duration = Duration::from_millis(2 * EPOCH_TICK.as_millis() as u64);

/// The time a deadline allows beyond itself before the host call is cut off.
pub fn cutoff(deadline: Duration) -> Duration {
    deadline + SLACK
}
