//! The one long-lived wasmtime [`Engine`](wasmtime::Engine), its linker and the permits that
//! bound how much guest code runs at once.
//!
//! wasmtime 48 keeps compiler state per engine, so ferry builds exactly one and reuses it for
//! every plugin and every reload. Guests run as async calls on the tokio runtime: every epoch
//! tick makes a running guest yield (see `schedule`), so a guest in a loop holds a runtime thread
//! for at most one tick at a time. The epoch is ticked by a plain OS thread (a tokio task could
//! starve on a busy runtime) that holds only a weak handle, so it ends when the engine is
//! dropped. WASI is linked in its async form: a guest blocked in a host call (`sleep`, `poll`)
//! waits on a tokio timer, so the call can be cut off by dropping it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::contract::Contract;
use super::sandbox::HostState;
use super::schedule::{EPOCH_TICK, Permits, guest_permits};
use crate::config::EngineConfig;

/// Slots of the pooling allocator, engine-wide.
pub const POOL_COMPONENTS: usize = 1000;
/// Core instance slots.
pub const POOL_CORE_INSTANCES: usize = 4000;
/// Linear memory slots.
pub const POOL_MEMORIES: usize = 1000;
/// Table slots.
pub const POOL_TABLES: usize = 2000;
/// One plugin may hold at most this fraction (1/N) of each kind of pool slot, so however
/// greedy one is (many core modules, high concurrency), the others still instantiate.
pub const POOL_SHARE: usize = 8;

/// What one instance of a component takes from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    /// Linear memories.
    pub memories: usize,
    /// Tables.
    pub tables: usize,
    /// Core instances (at most `limits.instances`; wasmtime does not count them for us).
    pub core_instances: usize,
}

impl Slots {
    /// The slots of `component`, whose core instances are bounded by `instances`. A
    /// component that imports core modules (wasmtime cannot count then) is assumed to take
    /// as many memories and tables as `limits.instances` allows.
    pub fn of(component: &wasmtime::component::Component, instances: usize) -> Self {
        match component.resources_required() {
            Some(r) => {
                Self { memories: r.num_memories as usize, tables: r.num_tables as usize, core_instances: instances }
            }
            None => Self { memories: instances, tables: instances * 2, core_instances: instances },
        }
    }

    /// How many instances of this shape one plugin may keep at once within its pool share.
    pub fn max_live(self) -> usize {
        let share = |total: usize, each: usize| (total / POOL_SHARE).checked_div(each).unwrap_or(usize::MAX);
        (POOL_COMPONENTS / POOL_SHARE)
            .min(share(POOL_MEMORIES, self.memories))
            .min(share(POOL_TABLES, self.tables))
            .min(share(POOL_CORE_INSTANCES, self.core_instances))
            .max(1)
    }
}

/// The shared engine, linker and engine-wide settings.
#[derive(Clone)]
pub struct Engine {
    /// The wasmtime engine.
    pub engine: wasmtime::Engine,
    /// WASI p2 (inert: nothing granted) plus ferry's imports of every contract version.
    pub linker: Linker<HostState>,
    /// Engine-wide settings it was built with.
    pub config: EngineConfig,
    /// Permits to run guest code past its first epoch tick, shared by every plugin: one fewer
    /// than the machine's cores (at least one), so long-running guests, however many, never
    /// take every core from the host's own work and from short handler calls.
    pub permits: Arc<Permits>,
}

impl Engine {
    /// Build the engine and start its epoch ticker.
    pub fn new(config: &EngineConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .max_wasm_stack(config.max_stack)
            // The async stack must stay above the wasm stack limit (else overflowing it aborts
            // the process); 2 MiB is wasmtime's default.
            .async_stack_size((config.max_stack + (512 << 10)).max(2 << 20))
            .parallel_compilation(true);
        if config.pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(POOL_COMPONENTS as u32)
                .total_core_instances(POOL_CORE_INSTANCES as u32)
                .total_memories(POOL_MEMORIES as u32)
                .total_tables(POOL_TABLES as u32)
                .max_memories_per_component(20)
                .max_tables_per_component(40)
                .max_core_instances_per_component(40)
                .max_memory_size(usize::try_from(config.max_memory).context("engine.max_memory too large")?);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            // Keep the per-slot reservation close to the cap so 1000 slots fit comfortably.
            wasm.memory_reservation(config.max_memory);
        }
        let engine = wasmtime::Engine::new(&wasm).map_err(wasm_err).context("configuring the WebAssembly engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_err).context("linking WASI")?;
        // Outbound HTTP: every request goes through the `http` capability's hooks, and a plugin
        // importing it without a grant is refused before it is instantiated.
        super::capability::http::link_wasi(&mut linker).map_err(wasm_err).context("linking wasi:http")?;
        for contract in Contract::ALL {
            // `types` holds only types: an empty instance satisfies a guest's import of it.
            linker.instance(&contract.interface("types")).map_err(wasm_err)?;
            super::capability::link(&mut linker, contract)
                .map_err(wasm_err)
                .with_context(|| format!("linking ferry imports of {}", contract.interface("*")))?;
        }

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("ferry-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch thread")?;

        let permits = Arc::new(Permits::new(guest_permits()));
        Ok(Self { engine, linker, config: config.clone(), permits })
    }

    /// Epoch ticks that make up `deadline` (at least one).
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }
}

/// wasmtime's own error type as an `anyhow` error, keeping its whole message chain.
pub(crate) fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}
