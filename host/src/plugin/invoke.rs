//! Invoking a plugin's handler on an event, and naming what went wrong.
//!
//! Calls are synchronous wasmtime calls made on blocking threads: every import ferry provides
//! is synchronous (log, config, publish only touch store state), so there is no need for
//! async wasmtime and its fiber stacks. A handler's own error, a trap or limit hit, and a
//! host-side failure are kept apart because they lead to different dispositions.
//!
//! Instance lifecycle: `reuse` (default) keeps instances for up to `recycle_after` events and
//! throws one away after any trap (a trap poisons the store); `per-event` instantiates for
//! every event. Measured in `ferry bench`: reuse costs about a microsecond a call for a Rust
//! plugin, a fresh instance tens of microseconds, so reuse is the default; `per-event` is for
//! plugins that must not carry state between events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Store, Trap};

use super::bindings::Subscriber;
use super::bindings::ferry::plugin::types::{self as wit, HandlerError};
use super::sandbox::{Current, FollowUp, Grants, HostState, MemoryLimitExceeded};
use super::{Engine, Plugin};
use crate::config::InstanceMode;
use crate::event::Event;

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
    /// Handled: acknowledge, and publish the follow-ups with the acknowledgement.
    Handled {
        /// Events queued through `publish`.
        follow_ups: Vec<FollowUp>,
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

/// A handler's future: what [`Invoke::handle`] returns.
pub type Handling = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'static>>;

/// Something that handles one event at a time, possibly many at once: a plugin [`Runner`],
/// or a native handler (the benchmark's baseline, which must share everything but
/// WebAssembly).
pub trait Invoke: Send + Sync + 'static {
    /// Handle one job. Cancel-safe: dropping the future abandons the call and discards the
    /// instance.
    fn handle(&self, job: Job) -> Handling;
    /// Subscriber name.
    fn name(&self) -> &str;
    /// Version id recorded in dead letters.
    fn version(&self) -> &str;
}

impl Invoke for Runner {
    fn handle(&self, job: Job) -> Handling {
        let runner = self.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || runner.handle_all(std::slice::from_ref(&job)).pop()).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => Outcome::HostError("the handler returned no outcome".into()),
                Err(e) => Outcome::HostError(format!("handler thread failed: {e}")),
            }
        })
    }
    fn name(&self) -> &str {
        &self.grants.subscriber
    }
    fn version(&self) -> &str {
        &self.grants.version
    }
}

struct Live {
    store: Store<HostState>,
    bindings: Subscriber,
    uses: u64,
}

/// Runs one plugin version's handler for one subscriber, managing its instances. Clones
/// share the instance pool.
#[derive(Clone)]
pub struct Runner {
    engine: Engine,
    plugin: Arc<Plugin>,
    grants: Arc<Grants>,
    idle: Arc<Mutex<Vec<Live>>>,
}

/// A store for `grants`, with its limiter and nothing else granted.
pub fn new_store(engine: &Engine, grants: Arc<Grants>) -> Store<HostState> {
    let fuel = grants.limits.fuel;
    let deadline = grants.limits.deadline;
    let mut store = Store::new(&engine.engine, HostState::new(grants));
    store.limiter(|state| state.limiter());
    store.set_epoch_deadline(Engine::ticks(deadline));
    if engine.config.fuel {
        // Without a configured budget a metered engine still needs fuel to run at all.
        let _ = store.set_fuel(fuel.unwrap_or(u64::MAX));
    }
    store
}

impl Runner {
    /// A runner for `plugin` with `grants`.
    pub fn new(engine: Engine, plugin: Arc<Plugin>, grants: Arc<Grants>) -> Self {
        Self { engine, plugin, grants, idle: Arc::new(Mutex::new(Vec::new())) }
    }

    /// The plugin version this runner runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// What the plugin was granted.
    pub fn grants(&self) -> &Arc<Grants> {
        &self.grants
    }

    fn take(&self) -> Result<Live, String> {
        if self.grants.limits.instance_mode == InstanceMode::Reuse
            && let Some(live) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
        {
            return Ok(live);
        }
        let mut store = new_store(&self.engine, self.grants.clone());
        let bindings = self.plugin.pre.instantiate(&mut store).map_err(|e| format!("cannot instantiate: {e:#}"))?;
        Ok(Live { store, bindings, uses: 0 })
    }

    fn give_back(&self, live: Live) {
        if self.grants.limits.instance_mode == InstanceMode::Reuse && live.uses < self.grants.limits.recycle_after {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(live);
        }
    }

    /// Handle `jobs` one after the other, in order. Blocking: run on a blocking thread.
    pub fn handle_all(&self, jobs: &[Job]) -> Vec<Outcome> {
        let mut live: Option<Live> = None;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut current = match live.take() {
                Some(l) => l,
                None => match self.take() {
                    Ok(l) => l,
                    Err(e) => {
                        out.push(Outcome::HostError(e));
                        continue;
                    }
                },
            };
            let (outcome, healthy) = self.call(&mut current, job);
            out.push(outcome);
            if healthy
                && self.grants.limits.instance_mode == InstanceMode::Reuse
                && current.uses < self.grants.limits.recycle_after
            {
                live = Some(current);
            }
        }
        if let Some(l) = live {
            self.give_back(l);
        }
        out
    }

    /// Call the handler once. Returns the outcome and whether the instance may be reused.
    fn call(&self, live: &mut Live, job: &Job) -> (Outcome, bool) {
        let limits = &self.grants.limits;
        live.uses += 1;
        let event = &job.event;
        live.store.data_mut().begin(Current {
            event_id: event.id.clone(),
            correlationid: event.correlationid.clone(),
            stream: job.stream.clone(),
        });
        live.store.set_epoch_deadline(Engine::ticks(limits.deadline));
        if let Some(fuel) = limits.fuel
            && self.engine.config.fuel
        {
            let _ = live.store.set_fuel(fuel);
        }
        let wit_event = to_wit(event);
        let delivery = wit::Delivery {
            stream: job.stream.clone(),
            entry_id: job.entry_id.clone(),
            attempt: job.attempt,
            subscriber: self.grants.subscriber.to_string(),
        };
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            event_type = %event.event_type,
            subscriber = %self.grants.subscriber,
            plugin_version = %self.grants.version,
            attempt = job.attempt,
            correlationid = event.correlationid.as_deref().unwrap_or(""),
            traceparent = event.traceparent.as_deref().unwrap_or(""),
        );
        let _entered = span.enter();
        let result = live.bindings.ferry_plugin_handler().call_handle(&mut live.store, &wit_event, &delivery);
        let stderr = live.store.data_mut().drain_stdio();
        match result {
            Ok(Ok(())) => {
                let follow_ups = std::mem::take(&mut live.store.data_mut().follow_ups);
                (Outcome::Handled { follow_ups }, true)
            }
            Ok(Err(HandlerError::Retry(r))) => (
                Outcome::Failed {
                    kind: FailureKind::HandlerRetry,
                    reason: r.reason,
                    delay_hint: r.delay_ms.map(Duration::from_millis),
                },
                true,
            ),
            Ok(Err(HandlerError::Reject(reason))) => {
                (Outcome::Failed { kind: FailureKind::HandlerReject, reason, delay_hint: None }, true)
            }
            Err(err) => {
                let (kind, mut reason) = classify(&err, limits.deadline, limits.memory);
                if !stderr.is_empty() {
                    reason.push_str("; stderr: ");
                    reason.push_str(super::sandbox::truncate(stderr.trim(), 1024));
                }
                (Outcome::Failed { kind, reason, delay_hint: None }, false)
            }
        }
    }
}

fn classify(err: &wasmtime::Error, deadline: Duration, memory: u64) -> (FailureKind, String) {
    if let Some(limit) = err.downcast_ref::<MemoryLimitExceeded>() {
        return (FailureKind::OutOfMemory, limit.to_string());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            (FailureKind::Deadline, format!("deadline of {} exceeded", humantime::format_duration(deadline)))
        }
        Some(Trap::OutOfFuel) => (FailureKind::OutOfFuel, "fuel exhausted".into()),
        Some(Trap::StackOverflow) => (FailureKind::StackOverflow, "wasm stack overflow".into()),
        Some(trap) => (FailureKind::Trap, format!("wasm trap: {trap}")),
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
