//! The trait every capability implements, and what the sandbox tells a capability about
//! the event being handled. Knows nothing of the store type: a capability reaches only its
//! own context, through the getter the registry hands to [`Capability::link`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::Linker;

use crate::config::Effective;
use crate::handler::Effects;
use crate::plugin::contract::Contract;

/// One capability a plugin may import.
pub trait Capability {
    /// What the operator granted one subscriber, shared by all its instances.
    type Grant: std::fmt::Debug + Send + Sync + 'static;
    /// What the capability keeps in one instance's store: its grant and its per-call state.
    /// It implements the capability's WIT host traits.
    type Ctx: Send + 'static;

    /// The interfaces this capability provides (names without package and version), each
    /// with what a plugin importing it needs, as `ferry plugins check` says it.
    const IMPORTS: &'static [(&'static str, &'static str)];

    /// The grant the settings of subscriber `subscriber` give, with the host's `services`.
    fn grant(subscriber: &Arc<str>, settings: &Effective, services: &Services) -> Self::Grant;

    /// A store's context, nothing yet called.
    fn ctx(grant: &Arc<Self::Grant>) -> Self::Ctx;

    /// Link this capability's interfaces of `contract` into `linker`, reaching its context in
    /// a store through `get`. A capability that a version does not have links nothing for it.
    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        contract: Contract,
        get: fn(&mut T) -> &mut Self::Ctx,
    ) -> wasmtime::Result<()>;

    /// A call of the handler on `current` begins: reset the per-call state.
    fn begin(ctx: &mut Self::Ctx, current: &Arc<Current>);

    /// The handler succeeded: move what the call produced into `effects`, written by the
    /// settle with the acknowledgement. Nothing by default.
    fn finish(_ctx: &mut Self::Ctx, _effects: &mut Effects) {}

    /// A grant the call needed and the operator has not given: the event is retried whatever
    /// the handler made of the refusal (the operator's to fix). None by default.
    fn denied(_ctx: &mut Self::Ctx) -> Option<String> {
        None
    }
}

/// What the host lends every capability, whichever subscriber it serves: the parts of the
/// host a capability needs that are no grant of one subscriber's (the schema registry that
/// follow-ups are validated against). Empty where no host runs (`ferry plugins invoke`
/// without `--schemas`, unit tests).
#[derive(Default, Clone)]
pub struct Services {
    /// The schema registry, when the host has one (`schemas = "DIR"`).
    pub contracts: Option<Arc<crate::contract::Registry>>,
    /// Where handler state is read (the host's shared connection), when there is a Redis.
    pub redis: Option<crate::connection::Conn>,
    /// Where plugins' outbound HTTP requests are counted, when there is a registry.
    pub http_metrics: Option<crate::metrics::HttpMetrics>,
    /// Handler state held in memory, where there is no Redis (`ferry plugins invoke`).
    pub memory: Option<crate::plugin::state::Memory>,
    /// Where the capabilities record what a call did, for `ferry plugins invoke`; none in a host.
    pub watch: Option<Watch>,
}

/// What the capabilities saw of the calls of a subscriber, beside their outcome: log lines,
/// outbound HTTP requests, state writes. `ferry plugins invoke` prints it; a host keeps none.
/// Clones share the record.
#[derive(Debug, Clone, Default)]
pub struct Watch(Arc<Mutex<Seen>>);

/// What a [`Watch`] recorded.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Log lines written, as kept (capped, made printable).
    pub lines: Vec<LogLine>,
    /// Outbound HTTP requests, refused ones too.
    pub requests: Vec<Request>,
    /// The state writes of each handled call (`None`: a delete).
    pub writes: Vec<(String, Option<Vec<u8>>)>,
}

/// A log line a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `TRACE` to `ERROR`.
    pub level: &'static str,
    /// The line.
    pub message: String,
}

/// An outbound HTTP request a plugin made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: String,
    /// `scheme://host:port/path` (no query).
    pub url: String,
    /// The response's status, if one arrived.
    pub status: Option<u16>,
    /// `ok`, or why it was refused or failed.
    pub outcome: String,
    /// Until the response head arrived, or the failure.
    pub took: Duration,
}

impl Watch {
    /// Record into what was seen.
    pub fn record(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// What was seen so far.
    pub fn seen(&self) -> Seen {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("contracts", &self.contracts).field("redis", &self.redis.is_some()).finish()
    }
}

/// The event being handled, as the capabilities need it.
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
    /// Its W3C `traceparent`, if the producer traced it (outbound HTTP carries it on).
    pub traceparent: Option<String>,
    /// Its partition key's state, read ahead with its start (`handler::Job::prefetched`).
    pub prefetched: Option<Arc<crate::handler::Prefetched>>,
}
