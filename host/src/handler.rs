//! The handler contract between the consume pipeline and whatever runs handlers.
//!
//! `consume` asks for one event to be handled and gets one outcome back; `plugin` runs a
//! WebAssembly handler to give it. Both import this module and nothing of each other, so the
//! pipeline can be driven by a native handler (the benchmark's baseline, tests) and the
//! plugin side knows nothing of Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;

/// The future [`Invoke::handle`] returns.
pub type Handling = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Something that handles jobs: a plugin [`Runner`], or a native handler (the benchmark's
/// baseline, which must share everything but WebAssembly).
pub trait Invoke: Send + Sync + 'static {
    /// Handle one job. Cancel-safe: dropping the future abandons the call and discards the
    /// instance. Resolves within the subscriber's deadline plus a small slack once the guest
    /// runs, whatever the guest does (loops in wasm, blocks in a WASI call such as
    /// sleep/poll); before that it may wait for the subscriber's adaptive limit of calls in
    /// flight (see `plugin::throttle`), which only a subscriber that keeps failing ever meets.
    /// The job is shared: a caller that tries again after a host-side failure keeps it
    /// without copying the event.
    fn handle(&self, job: Arc<Job>) -> Handling;
    /// Subscriber name.
    fn name(&self) -> &str;
    /// Version id recorded in dead letters.
    fn version(&self) -> &str;
    /// The adaptive limit of calls in flight, for a handler that has one (a plugin: see
    /// `plugin::throttle`).
    fn throttle(&self) -> Option<Throttling> {
        None
    }
}

/// A handler's adaptive limit of calls in flight now, as the status views show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Throttling {
    /// Calls allowed at once now.
    pub limit: usize,
    /// Calls allowed at once while healthy (the subscriber's concurrency).
    pub max: usize,
    /// Whether its last call failed (deadline, trap, limit) or the limit is below its maximum:
    /// its long calls pause between ticks.
    pub penalized: bool,
}

/// One subscription, resolved: the plugin wants events of this type/versions from this stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Subscription {
    /// Event type, or a prefix ending in `*`.
    pub event_type: String,
    /// Accepted schema versions; empty: all.
    pub versions: Vec<u32>,
    /// Stream read; `None` means the host's default stream.
    pub stream: Option<String>,
}

impl Subscription {
    /// Whether `event` is wanted.
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_type(&event.event_type)
            && (self.versions.is_empty() || self.versions.contains(&event.schemaversion))
    }

    /// Whether events of `event_type` may be wanted (whatever their schema version).
    pub fn matches_type(&self, event_type: &str) -> bool {
        match self.event_type.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => event_type == self.event_type,
        }
    }
}

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
    /// Runs of it ended without a verdict (its host died or was stopped while handling it)
    /// `retry.max_deliveries` times: counted by the run markers (`start.lua`), not by the
    /// stream's delivery count.
    Crash,
    /// The entry is not a valid event.
    InvalidEvent,
    /// An upcaster could not convert the event to a version the subscriber accepts (or the
    /// converted payload breaks the target schema): deterministic, so not retried.
    UpcastFailed,
    /// The event's state writes would pass the subscriber's state quota.
    StateQuota,
    /// A state key the event read changed before its commit: it runs again at once, on the
    /// same attempt (recorded on its retry entry only; never a dead letter's kind).
    StateConflict,
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
            Self::UpcastFailed => "upcast-failed",
            Self::StateQuota => "state-quota",
            Self::StateConflict => "state-conflict",
        }
    }

    /// Whether another attempt may help.
    pub fn retryable(self) -> bool {
        !matches!(self, Self::HandlerReject | Self::InvalidEvent | Self::UpcastFailed)
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
    /// The committed state of the event's partition key, read when its run was recorded (a
    /// subscriber granted state, on an event with a partition key): its first read of that
    /// key needs no round trip. Checked like any read when the event's state commits.
    pub prefetched: Option<Arc<Prefetched>>,
}

/// A state key's committed value and version, read ahead of the handler's call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefetched {
    /// The key (the event's partition key).
    pub key: String,
    /// Its committed value, if any.
    pub value: Option<Vec<u8>>,
    /// Its version (0: never written).
    pub version: u64,
}

/// What a handled event leaves for the settle to write atomically with its acknowledgement.
/// Each capability adds its own (see `plugin::capability::Capability::finish`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Follow-up events queued through `publish`, in order.
    pub follow_ups: Vec<FollowUp>,
    /// State writes through `state`, committed with the acknowledgement if every key the
    /// event read is still at the version it saw (`plugin::state`).
    pub state: Option<StateCommit>,
}

impl Effects {
    /// Whether the settle has nothing to write besides the acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.follow_ups.is_empty() && self.state.is_none()
    }
}

/// One event's state commit, as the settle sends it: the arguments of `state_plan` and
/// `state_apply` (consume/state.lua), from `plugin::state::Txn::commit_args`. The hash is
/// the subscriber's state key on the stream the settle is for (`keys::SubscriberKeys::state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCommit {
    /// The commit's arguments.
    pub args: Vec<Vec<u8>>,
}

/// A follow-up event queued through `publish`, written when the handled event is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    /// Target stream.
    pub stream: String,
    /// The event.
    pub event: Event,
}
