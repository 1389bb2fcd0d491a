//! Invoking a plugin's handler on an event, and naming what went wrong.
//!
//! Every call is an async wasmtime call on the tokio runtime, so a deadline ends any guest
//! (issue 12): guest code in wasm yields at every epoch tick and is interrupted by the epoch
//! callback once the deadline has passed; a guest blocked in a WASI host call (`sleep`,
//! `poll`) waits on the runtime and is cut off by `tokio::time::timeout`. Either way the
//! instance is thrown away and the failure reports the time the call actually took. Dropping
//! the future of [`Invoke::handle`] abandons the call the same way, which is what makes it
//! cancel-safe.
//!
//! Neighbours keep their throughput: a call's first epoch tick is free, so short handler
//! calls never wait; past it a call needs one of the engine's permits (one fewer than the
//! cores), handed over at a tick whenever another call waits for one, so long-running guests
//! take turns on what is left of the machine.
//! Each subscriber has an adaptive limit of calls in flight ([`Throttle`]): halved whenever a
//! call hits its deadline, traps or runs out of memory, raised by one on each healthy call. A
//! subscriber below its limit is penalized: its long calls pause between ticks.
//!
//! A handler's own error, a trap or limit hit, and a host-side failure are kept apart because
//! they lead to different dispositions.
//!
//! Instance lifecycle: `reuse` (default) keeps instances for up to `recycle_after` events and
//! throws one away after any trap (a trap poisons the store) or abandoned call; `per-event`
//! instantiates for every event. Measured in `ferry bench`: reuse costs about a microsecond a
//! call for a Rust plugin, a fresh instance tens of microseconds, so reuse is the default;
//! `per-event` is for plugins that must not carry state between events.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;
use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};

use super::bindings::types::{self as wit, HandlerError};
use super::contract::Instance;
use super::engine::EPOCH_TICK;
use super::sandbox::{CallState, Current, Grants, HostState, LogRate, MemoryLimitExceeded};
use super::{Engine, Plugin};
use crate::config::InstanceMode;
use crate::event::Event;
use crate::handler::Effects;
/// The kind of a failure, recorded in dead-letter entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The handler returned `retry`.
    HandlerRetry,
    /// The handler returned `reject`.
    HandlerReject,
    /// The guest trapped (panic, exception, `unreachable`, ...).
    Trap,
    /// The guest exceeded its memory cap.
    OutOfMemory,
    /// The guest exceeded its per-event deadline.
    Deadline,
    /// The guest overflowed its stack.
    StackOverflow,
    /// The guest ran out of fuel.
    OutOfFuel,
    /// The host died while handling it (counted from the stream's delivery count).
    Crash,
    /// The entry is not a valid event.
    InvalidEvent,
}

impl FailureKind {
    /// The stable name used in dead-letter entries and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandlerRetry => "handler-retry",
            Self::HandlerReject => "handler-reject",
            Self::Trap => "trap",
            Self::OutOfMemory => "out-of-memory",
            Self::Deadline => "deadline",
            Self::StackOverflow => "stack-overflow",
            Self::OutOfFuel => "out-of-fuel",
            Self::Crash => "crash",
            Self::InvalidEvent => "invalid-event",
        }
    }

    /// Whether another attempt may help.
    pub fn retryable(self) -> bool {
        !matches!(self, Self::HandlerReject | Self::InvalidEvent)
    }
}

/// What handling one event produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Handled: acknowledge, and write its effects (follow-ups) with the acknowledgement.
    Handled {
        /// What the capabilities hand to the settle.
        effects: Effects,
    },
    /// The event failed; the retry policy decides what follows.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// Human-readable reason.
        reason: String,
        /// The handler's delay hint.
        delay_hint: Option<Duration>,
    },
    /// The host could not run the handler (instantiation failed, pool full): not the event's
    /// fault, so no attempt is charged; the event stays pending and is tried again.
    HostError(String),
}

/// One event to handle with its delivery metadata.
#[derive(Debug, Clone)]
pub struct Job {
    /// The event.
    pub event: Event,
    /// Stream it was read from (the source stream, also for retries).
    pub stream: String,
    /// Entry id in the stream it was read from.
    pub entry_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// The future [`Invoke::handle`] returns.
pub type Handling = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Something that handles jobs: a plugin [`Runner`], or a native handler (the benchmark's
/// baseline, which must share everything but WebAssembly).
pub trait Invoke: Send + Sync + 'static {
    /// Handle one job. Cancel-safe: dropping the future abandons the call and discards the
    /// instance. Resolves within the subscriber's deadline plus a small slack once the guest
    /// runs, whatever the guest does (loops in wasm, blocks in a WASI call such as
    /// sleep/poll); before that it may wait for the subscriber's adaptive limit of calls in
    /// flight (see [`Throttle`]), which only a subscriber that keeps failing ever meets.
    /// The job is shared: a caller that tries again after a host-side failure keeps it
    /// without copying the event.
    fn handle(&self, job: Arc<Job>) -> Handling;
    /// Subscriber name.
    fn name(&self) -> &str;
    /// Version id recorded in dead letters.
    fn version(&self) -> &str;
}

impl Invoke for Runner {
    fn handle(&self, job: Arc<Job>) -> Handling {
        Box::pin(self.inner.clone().run(job))
    }
    fn name(&self) -> &str {
        &self.inner.grants.subscriber
    }
    fn version(&self) -> &str {
        &self.inner.grants.version
    }
}

struct Live {
    store: Store<HostState>,
    bindings: Instance,
    uses: u64,
}

/// Runs one plugin version's handler for one subscriber, managing its instances. Calls may
/// run concurrently: each takes an instance of its own from the pool.
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    plugin: Arc<Plugin>,
    grants: Arc<Grants>,
    rate: Arc<LogRate>,
    throttle: Throttle,
    idle: Mutex<Vec<Live>>,
}

/// A store for `grants`, with its limiter, the epoch callback that enforces deadlines and
/// shares the CPU, and nothing else granted.
pub fn new_store(engine: &Engine, grants: Arc<Grants>, rate: Arc<LogRate>) -> Store<HostState> {
    let fuel = grants.limits.fuel;
    let mut store = Store::new(&engine.engine, HostState::new(grants, rate));
    store.limiter(|state| state.limiter());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(on_tick);
    if engine.config.fuel {
        // Without a configured budget a metered engine still needs fuel to run at all.
        let _ = store.set_fuel(fuel.unwrap_or(u64::MAX));
    }
    store
}

/// Called at every epoch tick while guest code runs: interrupt a call past its deadline, else
/// yield to the runtime, first taking (or re-taking) one of the engine's permits.
fn on_tick(mut ctx: wasmtime::StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let Some(call) = ctx.data_mut().call.as_ref() else {
        return Ok(UpdateDeadline::Yield(1));
    };
    if Instant::now() >= call.deadline_at {
        return Ok(UpdateDeadline::Interrupt);
    }
    call.ticks.fetch_add(1, Ordering::Relaxed);
    let held = call.permit.lock().unwrap_or_else(|p| p.into_inner()).is_some();
    // Keep the permit unless another call waits for one: then take turns (one tick each).
    if held && !call.penalized && !call.permits.contended() {
        return Ok(UpdateDeadline::Yield(1));
    }
    let (slot, permits, penalized) = (call.permit.clone(), call.permits.clone(), call.penalized);
    let ticks = call.ticks.clone();
    Ok(UpdateDeadline::YieldCustom(
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
    ))
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
const SLACK: Duration = Duration::from_millis(2 * EPOCH_TICK.as_millis() as u64);

/// Mark `store` as running a call with `deadline` for the epoch callback; returns when the
/// call started. Wrap the call in `tokio::time::timeout(cutoff(deadline), ..)` and [`disarm`]
/// after.
pub(crate) fn arm(store: &mut Store<HostState>, engine: &Engine, deadline: Duration, penalized: bool) -> Instant {
    let started = Instant::now();
    store.data_mut().call = Some(CallState {
        deadline_at: started + deadline,
        permit: Arc::new(Mutex::new(None)),
        permits: engine.permits.clone(),
        ticks: Arc::default(),
        penalized,
    });
    // Fire the callback at the next tick: that is where the deadline and the permits live.
    store.set_epoch_deadline(1);
    started
}

/// The call on `store` is over: give its permit back.
pub(crate) fn disarm(store: &mut Store<HostState>) {
    store.data_mut().call = None;
}

/// The time a deadline allows beyond itself before the host call is cut off.
pub(crate) fn cutoff(deadline: Duration) -> Duration {
    deadline + SLACK
}

/// The reason given when a deadline stopped a call after `elapsed`.
pub(crate) fn deadline_reason(deadline: Duration, elapsed: Duration, in_host_call: bool) -> String {
    let ms = Duration::from_millis(elapsed.as_millis() as u64);
    let place = if in_host_call { " (blocked in a host call)" } else { "" };
    format!(
        "deadline of {} exceeded: stopped after {}{place}",
        humantime::format_duration(deadline),
        humantime::format_duration(ms)
    )
}

impl Runner {
    /// A runner for `plugin` with `grants`, allowing up to 16 calls in flight.
    pub fn new(engine: Engine, plugin: Arc<Plugin>, grants: Arc<Grants>) -> Self {
        Self::with_concurrency(engine, plugin, grants, 16)
    }

    /// A runner allowing up to `concurrency` calls in flight (the subscriber's setting), and
    /// never more than the plugin's share of the pooling allocator holds instances of it (see
    /// [`super::engine::POOL_SHARE`]): a component of many core modules at a high concurrency
    /// gets fewer instances in flight, not the pool.
    pub fn with_concurrency(engine: Engine, plugin: Arc<Plugin>, grants: Arc<Grants>, concurrency: usize) -> Self {
        let concurrency = if engine.config.pooling {
            let max = plugin.slots.max_live();
            if concurrency > max {
                tracing::warn!(
                    plugin = %grants.subscriber,
                    "at most {max} instances in flight instead of concurrency {concurrency}: each instance takes {} memories, {} tables and up to {} core instances, and one plugin may hold 1/{} of the engine's pool",
                    plugin.slots.memories,
                    plugin.slots.tables,
                    plugin.slots.core_instances,
                    super::engine::POOL_SHARE
                );
            }
            concurrency.min(max)
        } else {
            concurrency
        };
        let rate = LogRate::of(&grants.limits);
        let throttle = Throttle::new(concurrency);
        Self { inner: Arc::new(Inner { engine, plugin, grants, rate, throttle, idle: Mutex::new(Vec::new()) }) }
    }

    /// The plugin version this runner runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// What the plugin was granted.
    pub fn grants(&self) -> &Arc<Grants> {
        &self.inner.grants
    }

    /// The subscriber's adaptive limit of calls in flight now.
    pub fn limit(&self) -> usize {
        self.inner.throttle.limit()
    }
}

impl Inner {
    fn reuse(&self) -> bool {
        self.grants.limits.instance_mode == InstanceMode::Reuse
    }

    async fn run(self: Arc<Self>, job: Arc<Job>) -> Outcome {
        let _slot = self.throttle.acquire().await;
        let (outcome, health) = self.call(&job).await;
        match health {
            Health::Healthy => self.throttle.record(true),
            Health::Unhealthy => self.throttle.record(false),
            Health::Unknown => {}
        }
        outcome
    }

    /// Call the handler once on a pooled or fresh instance.
    async fn call(&self, job: &Job) -> (Outcome, Health) {
        let limits = &self.grants.limits;
        // A chain of follow-ups past the maximum depth is a loop (a plugin re-emitting what it
        // reads): the event is invalid, so it is dead-lettered at once and the chain ends.
        if let Some(depth) = job.event.causationdepth
            && depth > crate::event::MAX_CAUSATION_DEPTH
        {
            let reason = format!(
                "causation depth {depth} exceeds the maximum of {}: follow-ups of follow-ups in a loop?",
                crate::event::MAX_CAUSATION_DEPTH
            );
            return (Outcome::Failed { kind: FailureKind::InvalidEvent, reason, delay_hint: None }, Health::Unknown);
        }
        let idle = if self.reuse() { self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() } else { None };
        let (mut store, bindings, uses) = match idle {
            Some(live) => (live.store, Some(live.bindings), live.uses),
            None => (new_store(&self.engine, self.grants.clone(), self.rate.clone()), None, 0),
        };
        let event = &job.event;
        store.data_mut().begin(Current {
            event_id: event.id.clone(),
            correlationid: event.correlationid.clone(),
            stream: job.stream.clone(),
            depth: event.causationdepth.unwrap_or(0),
            budget: event
                .causationbudget
                .map_or(crate::event::CAUSATION_BUDGET, |b| b.min(crate::event::CAUSATION_BUDGET)),
        });
        if let Some(fuel) = limits.fuel
            && self.engine.config.fuel
        {
            let _ = store.set_fuel(fuel);
        }
        let wit_event = to_wit(event);
        let delivery = wit::Delivery {
            stream: job.stream.clone(),
            entry_id: job.entry_id.clone(),
            attempt: job.attempt,
            subscriber: self.grants.subscriber.to_string(),
        };
        // Absent values are left out of the span (and of text logs) rather than shown empty.
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            event_type = %event.event_type,
            subscriber = %self.grants.subscriber,
            plugin_version = %self.grants.version,
            attempt = job.attempt,
            correlationid = event.correlationid.as_deref(),
            traceparent = event.traceparent.as_deref(),
        );
        let pre = &self.plugin.pre;
        let started = arm(&mut store, &self.engine, limits.deadline, self.throttle.penalized());
        let result = tokio::time::timeout(
            cutoff(limits.deadline),
            async {
                let bindings = match bindings {
                    Some(b) => b,
                    None => match pre.instantiate_async(&mut store).await {
                        Ok(b) => b,
                        Err(e) => return Err(e),
                    },
                };
                let result = bindings.handle(&mut store, &wit_event, &delivery).await;
                Ok((bindings, result))
            }
            .instrument(span.clone()),
        )
        .await;
        let elapsed = started.elapsed();
        disarm(&mut store);
        let stderr = span.in_scope(|| store.data_mut().drain_stdio());
        let (bindings, result) = match result {
            Err(_) => {
                // Cut off in a host call; the abandoned instance goes with the store.
                let reason = deadline_reason(limits.deadline, elapsed, true);
                return (Outcome::Failed { kind: FailureKind::Deadline, reason, delay_hint: None }, Health::Unhealthy);
            }
            // Guest code failing while its instance is created (a `start` function trapping,
            // a memory or table over the limit, the deadline) is the guest's verdict like any
            // other; only what is not the guest's doing (the pool is full, the host is out of
            // memory) is a host error, which charges nothing.
            Ok(Err(e)) if guest_failure(&e) => {
                let (kind, mut reason) = classify(&e, limits.deadline, limits.memory, elapsed);
                reason.insert_str(0, "while instantiating: ");
                if !stderr.is_empty() {
                    reason.push_str("; stderr: ");
                    reason.push_str(super::sandbox::truncate(stderr.trim(), 1024));
                }
                return (Outcome::Failed { kind, reason, delay_hint: None }, Health::Unhealthy);
            }
            Ok(Err(e)) => return (Outcome::HostError(format!("cannot instantiate: {e:#}")), Health::Unknown),
            Ok(Ok(done)) => done,
        };
        let keep = |store: Store<HostState>| {
            let uses = uses + 1;
            if self.reuse() && uses < limits.recycle_after {
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(Live { store, bindings, uses });
            }
        };
        // A grant the event needed was missing: the operator's fault, not the event's. It is
        // retried (and dead-lettered only when the retries run out, with the grant named),
        // whatever the handler made of the refusal: after the grant is fixed, a retry succeeds.
        if let Some(reason) = store.data_mut().denied.take()
            && result.is_ok()
        {
            keep(store);
            let reason = format!("{reason} (an operator's grant is missing: retried until it is given)");
            return (Outcome::Failed { kind: FailureKind::HandlerRetry, reason, delay_hint: None }, Health::Healthy);
        }
        match result {
            Ok(Ok(())) => {
                let effects = store.data_mut().finish();
                keep(store);
                (Outcome::Handled { effects }, Health::Healthy)
            }
            Ok(Err(HandlerError::Retry(r))) => {
                keep(store);
                let delay_hint = r.delay_ms.map(Duration::from_millis);
                let reason = cap_reason(r.reason);
                (Outcome::Failed { kind: FailureKind::HandlerRetry, reason, delay_hint }, Health::Healthy)
            }
            Ok(Err(HandlerError::Reject(reason))) => {
                keep(store);
                let reason = cap_reason(reason);
                (Outcome::Failed { kind: FailureKind::HandlerReject, reason, delay_hint: None }, Health::Healthy)
            }
            Err(err) => {
                let (kind, mut reason) = classify(&err, limits.deadline, limits.memory, elapsed);
                if !stderr.is_empty() {
                    reason.push_str("; stderr: ");
                    reason.push_str(super::sandbox::truncate(stderr.trim(), 1024));
                }
                (Outcome::Failed { kind, reason, delay_hint: None }, Health::Unhealthy)
            }
        }
    }
}

/// Most bytes kept of a handler's retry or reject reason, as of its stderr in a failure
/// reason: the reason is logged and copied into every retry and dead-letter entry.
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason` cut to [`MAX_REASON_BYTES`], saying how much was cut.
fn cap_reason(reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let kept = super::sandbox::truncate(&reason, MAX_REASON_BYTES);
    format!("{kept}... ({} bytes cut)", reason.len() - kept.len())
}

/// What a call says about the subscriber's behaviour, for its [`Throttle`].
enum Health {
    /// The guest ran and returned.
    Healthy,
    /// The guest hit its deadline, trapped or hit a limit.
    Unhealthy,
    /// The host could not run it: says nothing about the guest.
    Unknown,
}

/// A subscriber's adaptive limit of calls in flight: halved on every call that hits its
/// deadline, traps or hits a limit, raised by one on every healthy call, between 1 and the
/// subscriber's concurrency. While below its maximum (or right after a failure) the subscriber
/// is penalized: its long calls pause between ticks.
pub struct Throttle {
    max: usize,
    state: Mutex<ThrottleState>,
    changed: tokio::sync::Notify,
}

struct ThrottleState {
    limit: usize,
    running: usize,
    failing: bool,
}

/// A call's place under its subscriber's [`Throttle`]; released on drop.
struct Slot<'a>(&'a Throttle);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.changed.notify_waiters();
    }
}

impl Throttle {
    /// A throttle allowing `max` calls in flight while healthy.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            state: Mutex::new(ThrottleState { limit: max, running: 0, failing: false }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn acquire(&self) -> Slot<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.running < state.limit {
                    state.running += 1;
                    return Slot(self);
                }
            }
            changed.await;
        }
    }

    /// Adjust the limit after a call.
    pub fn record(&self, healthy: bool) {
        let mut state = self.lock();
        state.failing = !healthy;
        if healthy {
            if state.limit < self.max {
                state.limit += 1;
                drop(state);
                self.changed.notify_waiters();
            }
        } else {
            state.limit = (state.limit / 2).max(1);
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Whether the subscriber's long calls should pause between ticks.
    pub fn penalized(&self) -> bool {
        let state = self.lock();
        state.failing || state.limit < self.max
    }
}

/// Name a failed call: the kind and a reason without wasmtime's doubled prefixes.
pub(crate) fn classify(
    err: &wasmtime::Error,
    deadline: Duration,
    memory: u64,
    elapsed: Duration,
) -> (FailureKind, String) {
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
fn guest_failure(err: &wasmtime::Error) -> bool {
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

fn to_wit(e: &Event) -> wit::Event {
    wit::Event {
        id: e.id.clone(),
        source: e.source.clone(),
        event_type: e.event_type.clone(),
        specversion: crate::event::SPEC_VERSION.to_string(),
        time: e.time.clone(),
        datacontenttype: e.datacontenttype.clone(),
        schemaversion: e.schemaversion,
        subject: e.subject.clone(),
        dataschema: e.dataschema.clone(),
        correlationid: e.correlationid.clone(),
        causationid: e.causationid.clone(),
        partitionkey: e.partitionkey.clone(),
        traceparent: e.traceparent.clone(),
        data: e.data.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_throttle_halves_on_failures_and_recovers_one_by_one() {
        let throttle = Throttle::new(8);
        assert!(!throttle.penalized());
        for expected in [4, 2, 1, 1] {
            throttle.record(false);
            assert_eq!(throttle.limit(), expected);
            assert!(throttle.penalized());
        }
        throttle.record(true);
        assert_eq!(throttle.limit(), 2, "one more per healthy call");
        for _ in 0..10 {
            throttle.record(true);
        }
        assert_eq!(throttle.limit(), 8, "never above the subscriber's concurrency");
        assert!(!throttle.penalized());
    }

    #[tokio::test]
    async fn a_throttled_subscriber_waits_for_its_slot() {
        let throttle = Arc::new(Throttle::new(2));
        throttle.record(false);
        let first = throttle.acquire().await;
        let waiting = {
            let throttle = throttle.clone();
            tokio::spawn(async move {
                let _slot = throttle.acquire().await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the limit is 1 and the slot is taken");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("task");
    }
}

/// Attacks on the memory bound (issue 23): a component of many core modules, each with a
/// memory or table that alone fits `limits.memory`.
#[cfg(test)]
mod memory_bound {
    use super::*;
    use crate::config::{EngineConfig, LimitsConfig};

    fn store(engine: &Engine, memory: u64) -> Store<HostState> {
        let limits = LimitsConfig { memory, ..LimitsConfig::default() };
        let grants = Arc::new(Grants::none("greedy", "0", limits));
        new_store(engine, grants, LogRate::of(&limits))
    }

    /// `n` core instances of a module whose only content is `body`.
    fn many(n: usize, body: &str) -> String {
        let instances: String = (0..n).map(|i| format!("(core instance $i{i} (instantiate $m))")).collect();
        format!("(component (core module $m {body}) {instances})")
    }

    async fn instantiate(engine: &Engine, memory: u64, wat: &str) -> Result<(), wasmtime::Error> {
        let component = wasmtime::component::Component::new(&engine.engine, wat)?;
        let mut store = store(engine, memory);
        engine.linker.instantiate_async(&mut store, &component).await.map(drop)
    }

    fn engine() -> Engine {
        Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine")
    }

    #[tokio::test]
    async fn the_memories_of_all_core_instances_together_stay_within_limits_memory() {
        let engine = engine();
        // 25 MiB each: one, two fit in 64 MiB; three do not.
        let memory = "(memory 400)";
        instantiate(&engine, 64 << 20, &many(2, memory)).await.expect("two memories fit");
        let err = instantiate(&engine, 64 << 20, &many(3, memory)).await.expect_err("three do not");
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some(), "named as the memory limit: {err:#}");
        // Growing one memory counts against what the others already hold.
        let grow = r#"(memory 400) (func $grow (drop (memory.grow (i32.const 200)))) (start $grow)"#;
        instantiate(&engine, 64 << 20, &many(1, grow)).await.expect("one grows to 37.5 MiB");
        let err = instantiate(&engine, 64 << 20, &many(2, grow)).await.expect_err("the second's growth is over");
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some(), "{err:#}");
    }

    #[test]
    fn one_plugin_holds_at_most_its_share_of_the_pool() {
        use super::super::engine::{POOL_MEMORIES, POOL_SHARE, Slots};
        let engine = engine();
        let component = wasmtime::component::Component::new(&engine.engine, many(20, "(memory 1)")).expect("compile");
        let greedy = Slots::of(&component, 20);
        assert_eq!(greedy.memories, 20);
        // The issue's attack: 20 memories at concurrency 16 would take 320 of 1000 slots.
        assert!(greedy.max_live() * greedy.memories <= POOL_MEMORIES / POOL_SHARE, "{}", greedy.max_live());
        assert!(greedy.max_live() >= 1, "it still runs");
        // So the pool always has room for the others: POOL_SHARE - 1 greedy plugins leave
        // at least a share free.
        let small =
            Slots::of(&wasmtime::component::Component::new(&engine.engine, many(1, "(memory 1)")).expect("c"), 20);
        assert!(small.max_live() >= 16, "a plain plugin keeps its default concurrency: {}", small.max_live());
    }

    #[tokio::test]
    async fn tables_count_against_limits_memory_too() {
        let engine = engine();
        // A million-element table costs the host 8 MB whatever the guest's memory.
        let table = "(table 1000000 funcref)";
        instantiate(&engine, 64 << 20, &many(4, table)).await.expect("four fit");
        let err = instantiate(&engine, 64 << 20, &many(10, table)).await.expect_err("ten do not");
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some(), "{err:#}");
    }
}

/// Issue 23, item 4: guest code failing while its instance is created (a `start` function
/// trapping, a memory or table over the limit, a deadline) is the guest's verdict, not a
/// host error: charged, throttled, and dead-lettered after the last attempt.
#[cfg(test)]
mod instantiation {
    use super::*;
    use crate::config::{EngineConfig, LimitsConfig};

    #[tokio::test]
    async fn a_limit_hit_while_instantiating_is_charged_to_the_guest() {
        let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
        let limits = LimitsConfig::default();
        let plugin =
            Plugin::load(&engine, std::path::Path::new(ferry_test_fixtures::NOOP), None, &limits).await.expect("load");
        // The instance's initial memory alone is over this limit.
        let tight = LimitsConfig { memory: 64 << 10, ..limits };
        let grants = Arc::new(Grants::none("noop", &plugin.version, tight));
        let runner = Runner::with_concurrency(engine, plugin, grants, 4);
        let job = Arc::new(Job {
            event: Event::new("T", "test", "{}"),
            stream: "events".into(),
            entry_id: "1-0".into(),
            attempt: 1,
        });
        let outcome = runner.handle(job).await;
        assert!(
            matches!(outcome, Outcome::Failed { kind: FailureKind::OutOfMemory, .. }),
            "the guest's failure, not a host error: {outcome:?}"
        );
        assert_eq!(runner.limit(), 2, "and the subscriber is throttled");
    }

    #[tokio::test]
    async fn a_start_function_trap_or_loop_is_named_as_the_guests_failure() {
        let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
        let limits = LimitsConfig { deadline: Duration::from_millis(50), ..LimitsConfig::default() };
        for (what, body, kind) in [
            ("trap", "(func $s unreachable) (start $s)", FailureKind::Trap),
            ("loop", "(func $s (loop $l (br $l))) (start $s)", FailureKind::Deadline),
        ] {
            let wat = format!("(component (core module $m {body}) (core instance (instantiate $m)))");
            let component = wasmtime::component::Component::new(&engine.engine, wat).expect("compile");
            let grants = Arc::new(Grants::none("start", "0", limits));
            let mut store = new_store(&engine, grants, LogRate::of(&limits));
            arm(&mut store, &engine, limits.deadline, false);
            let err = engine.linker.instantiate_async(&mut store, &component).await.expect_err(what);
            assert!(guest_failure(&err), "{what}: {err:#}");
            assert_eq!(classify(&err, limits.deadline, limits.memory, Duration::ZERO).0, kind, "{what}");
        }
    }
}
