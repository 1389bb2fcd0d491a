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
//! Neighbours keep their throughput: the CPU is shared at epoch ticks (`schedule`), and each
//! subscriber has an adaptive limit of calls in flight (`throttle`): halved whenever a call
//! hits its deadline, traps or runs out of memory, raised by one on each healthy call. What
//! went wrong is named by `failure`; instances are kept by `pool`.
//!
//! Instance lifecycle: `reuse` (default) keeps instances for up to `recycle_after` events and
//! throws one away after any trap (a trap poisons the store) or abandoned call; `per-event`
//! instantiates for every event. Measured in `ferry bench`: reuse costs about a microsecond a
//! call for a Rust plugin, a fresh instance tens of microseconds, so reuse is the default;
//! `per-event` is for plugins that must not carry state between events.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;
use wasmtime::Store;

use super::bindings::types::{self as wit, HandlerError};
use super::capability::Grants;
use super::capability::seam::Current;
use super::engine::Engine;
use super::failure::{cap_reason, classify, deadline_reason, guest_failure, with_stderr};
use super::instance::Instance;
use super::load::Plugin;
use super::pool::{Live, Pool};
use super::sandbox::HostState;
use super::schedule::cutoff;
use super::store::{arm, disarm, new_store};
use super::throttle::Throttle;
use crate::event::Event;
use crate::handler::{FailureKind, Handling, Invoke, Job, Outcome};

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
    fn throttle(&self) -> Option<crate::handler::Throttling> {
        let throttle = &self.inner.throttle;
        Some(crate::handler::Throttling {
            limit: throttle.limit(),
            max: throttle.max(),
            penalized: throttle.penalized(),
        })
    }
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
    throttle: Throttle,
    pool: Pool,
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

/// How a call ended: cut off in a host call, failed to instantiate, or returned (the guest's
/// result) on `instance`.
type Ran = Result<
    Result<(Instance, wasmtime::Result<Result<(), HandlerError>>), wasmtime::Error>,
    tokio::time::error::Elapsed,
>;

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
                    subscriber = %grants.subscriber, plugin = %grants.subscriber,
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
        let throttle = Throttle::new(concurrency);
        let pool = Pool::new(&grants.limits);
        Self { inner: Arc::new(Inner { engine, plugin, grants, throttle, pool }) }
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
        if let Some(outcome) = too_deep(&job.event) {
            return (outcome, Health::Unknown);
        }
        let (mut store, instance, uses) = match self.pool.take() {
            Some(live) => (live.store, Some(live.instance), live.uses),
            None => (new_store(&self.engine, self.grants.clone()), None, 0),
        };
        self.begin(&mut store, job);
        let span = self.span(job);
        let deadline = self.grants.limits.deadline;
        let started = arm(&mut store, &self.engine, deadline, self.throttle.penalized());
        let ran = self.run_guest(&mut store, instance, job).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        disarm(&mut store);
        let stderr = span.in_scope(|| store.data_mut().drain_stdio());
        self.judge(store, uses, ran, elapsed, &stderr)
    }

    /// Reset the store for `job`.
    fn begin(&self, store: &mut Store<HostState>, job: &Job) {
        let event = &job.event;
        store.data_mut().begin(Current {
            event_id: event.id.clone(),
            correlationid: event.correlationid.clone(),
            stream: job.stream.clone(),
            depth: event.causationdepth.unwrap_or(0),
            budget: event
                .causationbudget
                .map_or(crate::event::CAUSATION_BUDGET, |b| b.min(crate::event::CAUSATION_BUDGET)),
            traceparent: event.traceparent.clone(),
            prefetched: job.prefetched.clone(),
        });
        if let Some(fuel) = self.grants.limits.fuel
            && self.engine.config.fuel
        {
            let _ = store.set_fuel(fuel);
        }
    }

    /// The `event` span every line written during the call carries. Absent values are left
    /// out of the span (and of text logs) rather than shown empty.
    fn span(&self, job: &Job) -> tracing::Span {
        let event = &job.event;
        tracing::info_span!(
            "event",
            event_id = %event.id,
            event_type = %event.event_type,
            subscriber = %self.grants.subscriber,
            plugin_version = %self.grants.version,
            attempt = job.attempt,
            correlationid = event.correlationid.as_deref(),
            traceparent = event.traceparent.as_deref(),
        )
    }

    /// Instantiate if needed and call `handle`, within the deadline's cutoff.
    async fn run_guest(&self, store: &mut Store<HostState>, instance: Option<Instance>, job: &Job) -> Ran {
        let wit_event = to_wit(&job.event);
        let delivery = wit::Delivery {
            stream: job.stream.clone(),
            entry_id: job.entry_id.clone(),
            attempt: job.attempt,
            subscriber: self.grants.subscriber.to_string(),
        };
        let pre = &self.plugin.pre;
        tokio::time::timeout(cutoff(self.grants.limits.deadline), async {
            let instance = match instance {
                Some(instance) => instance,
                None => pre.instantiate_async(store).await?,
            };
            let result = instance.handle(store, &wit_event, &delivery).await;
            Ok((instance, result))
        })
        .await
    }

    /// The outcome of a call that ended as `ran`; the store goes back to the pool if it may.
    fn judge(
        &self,
        mut store: Store<HostState>,
        uses: u64,
        ran: Ran,
        elapsed: Duration,
        stderr: &str,
    ) -> (Outcome, Health) {
        let limits = &self.grants.limits;
        let failed = |kind, reason| Outcome::Failed { kind, reason, delay_hint: None };
        let (instance, result) = match ran {
            Err(_) => {
                // Cut off in a host call; the abandoned instance goes with the store.
                let reason = deadline_reason(limits.deadline, elapsed, true);
                return (failed(FailureKind::Deadline, reason), Health::Unhealthy);
            }
            // Guest code failing while its instance is created (a `start` function trapping,
            // a memory or table over the limit, the deadline) is the guest's verdict like any
            // other; only what is not the guest's doing (the pool is full, the host is out of
            // memory) is a host error, which charges nothing.
            Ok(Err(e)) if guest_failure(&e) => {
                let (kind, mut reason) = classify(&e, limits.deadline, limits.memory, elapsed);
                reason.insert_str(0, "while instantiating: ");
                return (failed(kind, with_stderr(reason, stderr)), Health::Unhealthy);
            }
            Ok(Err(e)) => return (Outcome::HostError(format!("cannot instantiate: {e:#}")), Health::Unknown),
            Ok(Ok(done)) => done,
        };
        let keep = |store| self.pool.put(Live { store, instance, uses: uses + 1 });
        // A grant the event needed was missing: the operator's fault, not the event's. It is
        // retried (and dead-lettered only when the retries run out, with the grant named),
        // whatever the handler made of the refusal: after the grant is fixed, a retry succeeds.
        if let Some(reason) = store.data_mut().denied()
            && result.is_ok()
        {
            keep(store);
            let reason = format!("{reason} (an operator's grant is missing: retried until it is given)");
            return (failed(FailureKind::HandlerRetry, reason), Health::Healthy);
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
                (failed(FailureKind::HandlerReject, cap_reason(reason)), Health::Healthy)
            }
            Err(err) => {
                let (kind, reason) = classify(&err, limits.deadline, limits.memory, elapsed);
                (failed(kind, with_stderr(reason, stderr)), Health::Unhealthy)
            }
        }
    }
}

/// A chain of follow-ups past the maximum depth is a loop (a plugin re-emitting what it
/// reads): the event is invalid, so it is dead-lettered at once and the chain ends.
fn too_deep(event: &Event) -> Option<Outcome> {
    let depth = event.causationdepth?;
    (depth > crate::event::MAX_CAUSATION_DEPTH).then(|| Outcome::Failed {
        kind: FailureKind::InvalidEvent,
        reason: format!(
            "causation depth {depth} exceeds the maximum of {}: follow-ups of follow-ups in a loop?",
            crate::event::MAX_CAUSATION_DEPTH
        ),
        delay_hint: None,
    })
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

/// Attacks on the memory bound (issue 23): a component of many core modules, each with a
/// memory or table that alone fits `limits.memory`.
#[cfg(test)]
mod memory_bound {
    use super::*;
    use crate::config::{EngineConfig, LimitsConfig};

    fn store(engine: &Engine, memory: u64) -> Store<HostState> {
        let limits = LimitsConfig { memory, ..LimitsConfig::default() };
        new_store(engine, Arc::new(Grants::none("greedy", "0", limits)))
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
        assert!(
            err.downcast_ref::<crate::plugin::limiter::MemoryLimitExceeded>().is_some(),
            "named as the memory limit: {err:#}"
        );
        // Growing one memory counts against what the others already hold.
        let grow = r#"(memory 400) (func $grow (drop (memory.grow (i32.const 200)))) (start $grow)"#;
        instantiate(&engine, 64 << 20, &many(1, grow)).await.expect("one grows to 37.5 MiB");
        let err = instantiate(&engine, 64 << 20, &many(2, grow)).await.expect_err("the second's growth is over");
        assert!(err.downcast_ref::<crate::plugin::limiter::MemoryLimitExceeded>().is_some(), "{err:#}");
    }

    #[test]
    fn one_plugin_holds_at_most_its_share_of_the_pool() {
        use crate::plugin::engine::{POOL_MEMORIES, POOL_SHARE, Slots};
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
        assert!(err.downcast_ref::<crate::plugin::limiter::MemoryLimitExceeded>().is_some(), "{err:#}");
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
            prefetched: None,
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
            let mut store = new_store(&engine, Arc::new(Grants::none("start", "0", limits)));
            arm(&mut store, &engine, limits.deadline, false);
            let err = engine.linker.instantiate_async(&mut store, &component).await.expect_err(what);
            assert!(guest_failure(&err), "{what}: {err:#}");
            assert_eq!(classify(&err, limits.deadline, limits.memory, Duration::ZERO).0, kind, "{what}");
        }
    }
}
