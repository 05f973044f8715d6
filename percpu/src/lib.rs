//! Lock-free per-CPU data structures for Linux, built on restartable sequences (rseq).
//!
//! - [`counter`]: [`Counter`] and [`CounterGroup`], per-CPU statistics counters.
//! - [`freelist`]: [`RawFreeList`] of memory blocks, and the typed [`FreeList`] and [`Pool`]:
//!   per-CPU array caches over a lock-free global level.
//! - [`slab`]: [`PerCpuAlloc`], a slab allocator with per-CPU caches, usable as
//!   `#[global_allocator]`.
//! - [`mode`](mod@mode): which path the current thread takes ([`mode()`]): rseq sequences, or the atomic
//!   fallback used when the thread has no rseq or `PERCPU_FORCE_FALLBACK=1` is set.
//!
//! Every structure works unchanged without rseq (old kernels, seccomp, valgrind, emulators): it
//! falls back to atomics per thread, and stays exact when threads of both kinds share it.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod counter;
pub mod freelist;
pub mod mode;
pub mod slab;
mod storage;
#[cfg(test)]
mod test_cpus;

pub use counter::{Counter, CounterGroup, CounterName, Snapshot};
pub use freelist::{FreeList, FreeListError, FreeListStats, Pool, Pooled, RawFreeList};
pub use mode::{FallbackReason, Mode, forced_fallback, mode};
pub use slab::{AllocStats, ClassStats, PerCpuAlloc};

/// The global allocator installed by the `global-allocator` feature.
#[cfg(feature = "global-allocator")]
#[global_allocator]
pub static GLOBAL_ALLOCATOR: PerCpuAlloc = PerCpuAlloc::new();

/// The allocator the `global-allocator` feature installed, or `None` without the feature: lets
/// code (tests, diagnostics) reach its statistics without naming the feature.
pub fn installed_global_allocator() -> Option<&'static PerCpuAlloc> {
    #[cfg(feature = "global-allocator")]
    return Some(&GLOBAL_ALLOCATOR);
    #[cfg(not(feature = "global-allocator"))]
    None
}
