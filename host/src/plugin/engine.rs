//! The one long-lived wasmtime [`Engine`](wasmtime::Engine) and its linker.
//!
//! wasmtime 48 keeps compiler state per engine, so ferry builds exactly one and reuses it for
//! every plugin and every reload. Epoch interruption enforces per-event deadlines; the epoch
//! is ticked by a plain OS thread (a tokio task could starve on a busy runtime) that holds only
//! a weak handle, so it ends when the engine is dropped.

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Subscriber;
use super::sandbox::HostState;
use crate::config::EngineConfig;

/// How often the epoch advances; deadlines are rounded up to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The shared engine, linker and engine-wide settings.
#[derive(Clone)]
pub struct Engine {
    /// The wasmtime engine.
    pub engine: wasmtime::Engine,
    /// WASI p2 (inert: nothing granted) plus ferry's imports.
    pub linker: Linker<HostState>,
    /// Engine-wide settings it was built with.
    pub config: EngineConfig,
}

impl Engine {
    /// Build the engine and start its epoch ticker.
    pub fn new(config: &EngineConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .max_wasm_stack(config.max_stack)
            .parallel_compilation(true);
        if config.pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(1000)
                .total_core_instances(4000)
                .total_memories(1000)
                .total_tables(2000)
                .max_memories_per_component(20)
                .max_tables_per_component(40)
                .max_core_instances_per_component(40)
                .max_memory_size(usize::try_from(config.max_memory).context("engine.max_memory too large")?);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            // Keep the per-slot reservation close to the cap so 1000 slots fit comfortably.
            wasm.memory_reservation(config.max_memory);
        }
        let engine =
            wasmtime::Engine::new(&wasm).map_err(super::wasm_err).context("configuring the WebAssembly engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(super::wasm_err).context("linking WASI")?;
        Subscriber::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(super::wasm_err)
            .context("linking ferry imports")?;

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

        Ok(Self { engine, linker, config: config.clone() })
    }

    /// Epoch ticks that make up `deadline` (at least one).
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }
}
