//! A subscriber's idle instances, kept for the next calls.
//!
//! `reuse` (default) keeps an instance for up to `recycle_after` events; an instance is never
//! put back after a trap (a trap poisons the store) or an abandoned call: the runner drops
//! it. `per-event` keeps none. Measured in `ferry bench`: reuse costs about a microsecond a
//! call for a Rust plugin, a fresh instance tens of microseconds.

use std::sync::Mutex;

use wasmtime::Store;

use super::instance::Instance;
use super::sandbox::HostState;
use crate::config::{InstanceMode, LimitsConfig};

/// An instance with its store, and how many events it has handled.
pub struct Live {
    /// Its store.
    pub store: Store<HostState>,
    /// The instance.
    pub instance: Instance,
    /// Events it has handled.
    pub uses: u64,
}

/// The idle instances of one runner.
pub struct Pool {
    reuse: bool,
    recycle_after: u64,
    idle: Mutex<Vec<Live>>,
}

impl Pool {
    /// A pool following `limits.instance_mode` and `limits.recycle_after`.
    pub fn new(limits: &LimitsConfig) -> Self {
        let reuse = limits.instance_mode == InstanceMode::Reuse;
        Self { reuse, recycle_after: limits.recycle_after, idle: Mutex::new(Vec::new()) }
    }

    /// An idle instance, if one is kept.
    pub fn take(&self) -> Option<Live> {
        if !self.reuse {
            return None;
        }
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keep `live` for a next call, unless instances are not reused or it has handled
    /// `recycle_after` events.
    pub fn put(&self, live: Live) {
        if self.reuse && live.uses < self.recycle_after {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(live);
        }
    }
}
