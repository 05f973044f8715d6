//! Restartable sequences (rseq) for Linux.
//!
//! A thin crate: it finds or makes the calling thread's rseq registration, says how much of
//! `struct rseq` the kernel fills for it ([`kernel_size`]), reads CPU ids, and provides the
//! inline-asm commit sequences that per-CPU data structures are built from.
//!
//! - [`abi`]: the kernel's types and constants.
//! - [`registration`]: per-thread registration cooperating with glibc; [`current`] (and
//!   [`current_if_registered`], which never registers), [`kernel_size`], [`status`],
//!   [`unregister_current_thread`].
//! - [`shared`]: one registration for every copy of this crate in a process where glibc makes
//!   none; a library that stays loaded offers its area with [`export_shared_area!`].
//! - [`cpu`]: [`current_cpu`], [`current_node`], [`current_mm_cid`], [`possible_cpus`], and for
//!   threads without rseq [`cpu_hint`] (`sched_getcpu` once every 64 calls).
//! - [`fence`]: [`fence_all_cpus`], to take per-CPU data away from in-flight sequences.
//! - [`memo`]: [`current_with_memo`], a per-thread memo of one value derived from the index, so
//!   that a fast path need not derive it on every call.
//! - [`seq`]: [`Sequences`], one interface over the per-architecture asm (x86_64 and aarch64;
//!   elsewhere [`HAS_SEQUENCES`] is false and [`Current::sequences`] is `None`).
//!
//! # Features
//! - `initial-exec-tls` (x86_64, glibc): the registration's fast-path block in the initial-exec
//!   TLS model, saving a shared object a call on every read. Only for executables and preloaded
//!   libraries: a shared object built with it fails to `dlopen` when glibc's static TLS cannot
//!   hold its thread-locals. Without it (the default) any object using this crate can be
//!   `dlopen`ed.
//!
//! Nothing here aborts or panics because rseq is missing: without it, [`current`] is `None` and
//! callers fall back to atomics. Read `../shared/rseq-abi.md` (in the project) for the ABI facts
//! this follows.
//!
//! ```
//! let status = rseq_sys::status();
//! match rseq_sys::current() {
//!     Some(rseq) => {
//!         assert!(rseq.kernel_size() >= 20);
//!         assert!(rseq.cpu_id() < rseq_sys::possible_cpus());
//!     }
//!     None => assert_eq!(status.kernel_size, 0),
//! }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
pub mod cpu;
pub mod fence;
pub mod memo;
pub mod registration;
pub mod seq;
pub mod shared;
mod thread_block;

// One module per architecture behind one interface. `--cfg rseq_sys_no_sequences` selects the
// no-sequences module anywhere, so that path is built and tested on the machines we have.
#[cfg_attr(
    all(target_arch = "x86_64", not(rseq_sys_no_sequences)),
    path = "arch/x86_64.rs"
)]
#[cfg_attr(
    all(target_arch = "aarch64", not(rseq_sys_no_sequences)),
    path = "arch/aarch64.rs"
)]
#[cfg_attr(
    any(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        rseq_sys_no_sequences
    ),
    path = "arch/unsupported.rs"
)]
mod arch;

pub use arch::HAS_SEQUENCES;
pub use cpu::{
    cpu_hint, current_cpu, current_mm_cid, current_node, forget_cpu_hint, possible_cpus,
    sched_getcpu,
};
pub use fence::{FenceError, FenceMethod, fence_all_cpus, membarrier_available};
pub use memo::{Memo, MemoTag, NO_MEMO_TAG, NoMemo, current_with_memo};
pub use registration::{
    Current, Owner, Status, Unavailable, UnregisterError, current, current_if_registered,
    feature_align, feature_size, glibc_rseq_size, kernel_size, status, unregister_current_thread,
};
pub use seq::{
    Index, Outcome, STACK_DEPTH_MASK, STACK_LOCKED, STACK_MAX_CAPACITY, STACK_POPS_SHIFT, Sequences,
};

/// This thread's `errno`, after a call that failed.
fn errno() -> i32 {
    // SAFETY: `__errno_location` always returns this thread's valid errno slot.
    unsafe { *libc::__errno_location() }
}

#[cfg(all(test, not(rseq_sys_no_sequences)))]
mod tests;
// The integration tests' helpers (child processes, seccomp), for unit tests that need them;
// they name this crate `rseq_sys`.
#[cfg(all(test, not(rseq_sys_no_sequences)))]
#[path = "../tests/common/mod.rs"]
mod test_common;
#[cfg(all(test, not(rseq_sys_no_sequences)))]
extern crate self as rseq_sys;
// Linked so that `--features percpu/global-allocator` runs the unit tests on `PerCpuAlloc` too
// (it brings a second copy of this crate, which shares glibc's registration with this one).
#[cfg(test)]
extern crate percpu as _;
