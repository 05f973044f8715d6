//! The allocator's only lock: a spinlock that yields, for the slow paths below the per-CPU
//! caches (central span lists, the page heap, the large-span cache).
//!
//! Not `std::sync::Mutex`: these locks must be taken and released from `pthread_atfork`
//! handlers, which have no guard to drop, and must never allocate or unwind. Critical sections
//! are short (list splices, a few hundred pointer moves), so spinning briefly and then yielding
//! the CPU (for a holder that was preempted) serves better than parking.

use core::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct SpinLock {
    locked: AtomicBool,
}

/// Releases the lock when dropped.
pub(crate) struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl SpinLock {
    pub(crate) const fn new() -> SpinLock {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_> {
        self.acquire();
        SpinGuard { lock: self }
    }

    /// Takes the lock without a guard: for fork handlers, paired with [`Self::release`].
    pub(crate) fn acquire(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                if spins < 64 {
                    core::hint::spin_loop();
                    spins += 1;
                } else {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }

    /// Releases a lock taken with [`Self::acquire`].
    ///
    /// # Safety
    /// The caller took the lock with `acquire` (in this process, or in the parent before fork)
    /// and nothing else believes it holds it.
    pub(crate) unsafe fn release(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while its lock is held by this owner.
        unsafe { self.lock.release() };
    }
}
