//! Fencing other CPUs' critical sections, so one thread can take per-CPU data away from the
//! sequences (drain a cache, reset a slot).
//!
//! A sequence only protects against its own CPU. After [`fence_all_cpus`] returns, every
//! sequence that was running anywhere when it was called has been aborted, or had committed, and
//! every sequence that was preempted mid-way will abort when it resumes; any sequence that starts
//! afterwards sees whatever the caller stored before calling. With mm_cid indexing a slot is not
//! tied to a CPU, so the fence always covers all CPUs.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::{abi, errno};

/// How [`fence_all_cpus`] fenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceMethod {
    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)`: an IPI to every CPU running one of
    /// this process's threads (Linux 5.10+).
    Membarrier,
    /// The calling thread ran on each CPU the process can use, in turn, preempting whatever ran
    /// there (its own affinity mask is restored afterwards).
    VisitedCpus,
}

/// Why [`fence_all_cpus`] could not fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceError {
    /// The errno of the affinity call that failed (membarrier was already unavailable).
    pub errno: i32,
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot fence other CPUs: membarrier unavailable and sched_setaffinity failed (errno {})",
            self.errno
        )
    }
}

const UNKNOWN: u8 = 0;
const REGISTERED: u8 = 1;
const UNAVAILABLE: u8 = 2;
static MEMBARRIER: AtomicU8 = AtomicU8::new(UNKNOWN);

fn membarrier(cmd: i32) -> bool {
    // SAFETY: membarrier takes plain integers; flags 0 and cpu_id 0 mean "all CPUs".
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) == 0 }
}

/// Whether the expedited-rseq membarrier is usable (registering for it on first call).
pub fn membarrier_available() -> bool {
    match MEMBARRIER.load(Ordering::Acquire) {
        REGISTERED => true,
        UNAVAILABLE => false,
        _ => {
            let ok = membarrier(abi::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ);
            MEMBARRIER.store(if ok { REGISTERED } else { UNAVAILABLE }, Ordering::Release);
            ok
        }
    }
}

/// Aborts every in-flight critical section of this process, on all CPUs.
pub fn fence_all_cpus() -> Result<FenceMethod, FenceError> {
    if membarrier_available() && membarrier(abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) {
        return Ok(FenceMethod::Membarrier);
    }
    visit_cpus().map(|()| FenceMethod::VisitedCpus)
}

/// Runs the calling thread on every CPU this process can use, then restores its mask.
///
/// Every possible CPU, not just the caller's mask: a drainer pinned elsewhere must still fence
/// the CPUs its sibling threads run on. A CPU that `sched_setaffinity` refuses with `EINVAL` lies
/// outside the process's cpuset, where none of its threads can run, and needs no fence.
pub(crate) fn visit_cpus() -> Result<(), FenceError> {
    let size = core::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut original: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `original` is a valid, writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut original) } != 0 {
        return Err(FenceError { errno: errno() });
    }
    let cpus = (crate::possible_cpus() as usize).min(libc::CPU_SETSIZE as usize);
    let mut result = Ok(());
    for cpu in 0..cpus {
        // SAFETY: as above.
        let mut one: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        // SAFETY: `cpu < CPU_SETSIZE`, inside the set.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        // SAFETY: a valid cpu_set_t; returning means this thread now runs on `cpu`.
        if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
            match errno() {
                libc::EINVAL => continue, // Outside our cpuset: none of our threads run there.
                e => {
                    result = Err(FenceError { errno: e });
                    break;
                }
            }
        }
    }
    // SAFETY: restoring the mask read above.
    unsafe { libc::sched_setaffinity(0, size, &original) };
    result
}
