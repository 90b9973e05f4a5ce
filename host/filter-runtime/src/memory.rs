//! Linear-memory limits: per store, and one budget for the whole process.
//!
//! Each store may grow to [`EngineConfig::memory_bytes`](crate::EngineConfig), but a
//! process holds many stores at once (warm pools of every instance of every hook, across
//! generations while a reload swaps), so a per-store limit alone does not bound the
//! process. [`MemoryBudget`] counts the bytes of linear memory reserved by live stores;
//! every store's [`StoreLimiter`] reserves from it before a memory grows and gives its
//! share back when the store is dropped. Growth that would pass either limit traps, and
//! the call fails as out of memory instead of the process growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of linear memory reserved by the live stores of one engine, against a fixed
/// budget. Shared by every store the engine creates.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    reserved: AtomicUsize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            reserved: AtomicUsize::new(0),
        })
    }

    /// The budget in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved by live stores now.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// Takes `bytes` from the budget; on refusal, returns what was reserved at the time.
    fn reserve(&self, bytes: usize) -> Result<(), usize> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(drop)
    }

    /// Gives back `bytes` taken earlier.
    fn release(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a memory was not allowed to grow. Raised as the trap of the growing instruction, so
/// the call's failure can be classified as out of memory by type, not by message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MemoryRefused {
    /// The store would pass its own limit.
    #[error(
        "growing linear memory to {desired} bytes passes the limit of {limit} bytes per instance"
    )]
    StoreLimit {
        /// Size asked for.
        desired: usize,
        /// The per-store limit, or the module's own maximum when lower.
        limit: usize,
    },
    /// Live stores together would pass the process-wide budget.
    #[error(
        "growing linear memory by {delta} bytes passes the process-wide Wasm memory budget of {budget} bytes ({reserved} bytes held by live instances)"
    )]
    Budget {
        /// Bytes asked for.
        delta: usize,
        /// The budget.
        budget: usize,
        /// Bytes reserved by live stores when it was refused.
        reserved: usize,
    },
    /// The limits allowed the growth but the memory could not grow (the operating system
    /// refused the mapping, say).
    #[error("growing linear memory failed: {reason}")]
    Failed {
        /// wasmtime's error.
        reason: String,
    },
}

/// The resource limiter of one store: its own memory limit, counts of instances, tables
/// and memories, and its share of the engine's [`MemoryBudget`], released on drop.
pub(crate) struct StoreLimiter {
    budget: Arc<MemoryBudget>,
    memory_bytes: usize,
    /// Bytes this store took from the budget.
    held: usize,
    /// A growth allowed by `memory_growing` whose outcome is not known yet: returned to
    /// the budget if wasmtime reports that the growth failed after all.
    pending: usize,
}

/// Instances, tables and memories a filter component may create: what a component built
/// by the guest SDK needs, with room to spare, and no more.
const MAX_INSTANCES: usize = 4;
const MAX_TABLES: usize = 8;
const MAX_MEMORIES: usize = 2;

impl StoreLimiter {
    pub(crate) fn new(budget: Arc<MemoryBudget>, memory_bytes: usize) -> StoreLimiter {
        StoreLimiter {
            budget,
            memory_bytes,
            held: 0,
            pending: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.pending = 0;
        // The module's declared maximum (or the pooling allocator's slot) counts too; every
        // refusal traps, so a module cannot keep running on a failed allocation.
        let limit = maximum.map_or(self.memory_bytes, |max| max.min(self.memory_bytes));
        if desired > limit {
            return Err(MemoryRefused::StoreLimit { desired, limit }.into());
        }
        let delta = desired.saturating_sub(current);
        self.budget
            .reserve(delta)
            .map_err(|reserved| MemoryRefused::Budget {
                delta,
                budget: self.budget.limit(),
                reserved,
            })?;
        self.held += delta;
        self.pending = delta;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.held -= pending;
        self.budget.release(pending);
        Err(MemoryRefused::Failed {
            reason: format!("{error:#}"),
        }
        .into())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

impl Drop for StoreLimiter {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    const MIB: usize = 1 << 20;

    #[test]
    fn stores_share_the_budget_and_give_it_back_on_drop() {
        let budget = MemoryBudget::new(10 * MIB);
        let mut a = StoreLimiter::new(budget.clone(), 8 * MIB);
        let mut b = StoreLimiter::new(budget.clone(), 8 * MIB);
        assert!(a.memory_growing(0, 6 * MIB, None).unwrap());
        assert_eq!(budget.reserved(), 6 * MIB);
        // b fits its own limit but not what a left of the budget.
        let refused = b.memory_growing(0, 5 * MIB, None).unwrap_err();
        assert_eq!(
            refused.downcast_ref::<MemoryRefused>(),
            Some(&MemoryRefused::Budget {
                delta: 5 * MIB,
                budget: 10 * MIB,
                reserved: 6 * MIB
            })
        );
        assert!(b.memory_growing(0, 4 * MIB, None).unwrap());
        assert_eq!(budget.reserved(), 10 * MIB);
        drop(a);
        assert_eq!(budget.reserved(), 4 * MIB, "a's share came back");
        assert!(b.memory_growing(4 * MIB, 8 * MIB, None).unwrap());
        drop(b);
        assert_eq!(budget.reserved(), 0);
    }

    #[test]
    fn the_store_limit_applies_first() {
        let budget = MemoryBudget::new(100 * MIB);
        let mut a = StoreLimiter::new(budget.clone(), 8 * MIB);
        let refused = a.memory_growing(0, 9 * MIB, None).unwrap_err();
        assert!(matches!(
            refused.downcast_ref::<MemoryRefused>(),
            Some(MemoryRefused::StoreLimit { limit, .. }) if *limit == 8 * MIB
        ));
        assert_eq!(budget.reserved(), 0, "nothing taken for a refused growth");
        // The module's declared maximum, when lower, is the limit.
        let refused = a.memory_growing(0, 2 * MIB, Some(MIB)).unwrap_err();
        assert!(matches!(
            refused.downcast_ref::<MemoryRefused>(),
            Some(MemoryRefused::StoreLimit { limit, .. }) if *limit == MIB
        ));
        assert_eq!(budget.reserved(), 0);
    }

    #[test]
    fn a_growth_that_fails_later_is_returned() {
        let budget = MemoryBudget::new(10 * MIB);
        let mut a = StoreLimiter::new(budget.clone(), 8 * MIB);
        assert!(a.memory_growing(0, MIB, None).unwrap());
        assert!(a.memory_growing(MIB, 3 * MIB, None).unwrap());
        let failed = a
            .memory_grow_failed(wasmtime::format_err!("mmap failed"))
            .unwrap_err();
        assert!(matches!(
            failed.downcast_ref::<MemoryRefused>(),
            Some(MemoryRefused::Failed { reason }) if reason == "mmap failed"
        ));
        assert_eq!(
            budget.reserved(),
            MIB,
            "only the growth that happened is held"
        );
        drop(a);
        assert_eq!(budget.reserved(), 0);
    }
}
