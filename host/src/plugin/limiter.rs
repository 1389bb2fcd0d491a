//! What one store may hold: the resource limiter behind `limits.memory` and
//! `limits.instances`, and the error it traps with so the failure can be named.

use wasmtime::ResourceLimiter;

/// Why the limiter stopped a plugin; surfaces as the trap's error so it can be named.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: wanted {desired} bytes, limit is {limit} bytes")]
pub struct MemoryLimitExceeded {
    /// Bytes the instance would hold with this growth: all its memories and tables together.
    pub desired: usize,
    /// The cap.
    pub limit: u64,
}

/// Host memory a table element costs (a function reference), counted against
/// `limits.memory` with the linear memories.
pub const TABLE_ELEMENT_BYTES: u64 = 8;

/// Most elements one table may have, whatever `limits.memory` allows.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Bounds what one store (one component instance: all its core instances) may hold.
/// `limits.memory` is the total of every linear memory and table of the store, not a cap per
/// memory: a component of 20 core modules must not hold 20 times the limit.
pub struct Limiter {
    memory: u64,
    instances: usize,
    /// Bytes granted so far to all memories and tables of the store. Stores are never
    /// shrunk, and memories and tables live as long as their store, so this only grows. A
    /// growth granted here that wasmtime then refuses (past a declared maximum) stays counted:
    /// only the guest that asked loses by it.
    used: u64,
}

impl Limiter {
    /// A limiter of `memory` bytes and `instances` core instances (and as many memories,
    /// twice as many tables).
    pub fn new(memory: u64, instances: usize) -> Self {
        Self { memory, instances, used: 0 }
    }

    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<()> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.memory {
            // Trap with our own error rather than failing the growth: a guest allocator that
            // sees a failed growth aborts with an anonymous `unreachable`, which would hide
            // the cause.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired: usize::try_from(total).unwrap_or(usize::MAX),
                limit: self.memory,
            }));
        }
        self.used = total;
        Ok(())
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)?;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow(current as u64 * TABLE_ELEMENT_BYTES, desired as u64 * TABLE_ELEMENT_BYTES)?;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances * 2
    }
}
