//! The central level of one size class: the slabs serving it, with the blocks inside them that
//! no cache holds. Below the per-CPU caches and the transfer level (the freelist's global
//! level), reached only in batches, so one lock per class is enough.
//!
//! Each slab keeps its own free list, linked through the free blocks' first word, and a count
//! of live blocks (handed up and not back). Slabs with a free or uncarved block sit on the
//! class's partial list; a slab whose last live block comes back returns to the page heap.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::lock::SpinLock;
use super::pages::{PageHeap, SLAB_SIZE, Slab};

pub(crate) struct Central {
    /// Also taken around `fork` (see `Heap::lock_for_fork`).
    pub(super) lock: SpinLock,
    /// Slabs with blocks to give (under the lock).
    partial: AtomicPtr<Slab>,
    class: u32,
    size: usize,
    /// Slabs serving this class (statistics).
    slabs: AtomicUsize,
    /// Blocks handed above this level and not back (statistics).
    live: AtomicUsize,
}

impl Central {
    pub(crate) const fn new(class: usize, size: usize) -> Central {
        Central {
            lock: SpinLock::new(),
            partial: AtomicPtr::new(ptr::null_mut()),
            class: class as u32,
            size,
            slabs: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
        }
    }

    /// Fills the front of `out` with blocks: how many (fewer only when out of memory).
    pub(crate) fn fill(&self, pages: &PageHeap, out: &mut [usize]) -> usize {
        let _guard = self.lock.lock();
        let mut n = 0;
        while n < out.len() {
            let slab = match self.partial_head() {
                Some(slab) => slab,
                None => match pages.take() {
                    Some(slab) => {
                        pages.set_class(slab, self.class + 1);
                        slab.live.store(0, Ordering::Relaxed);
                        slab.carved.store(0, Ordering::Relaxed);
                        slab.free.store(0, Ordering::Relaxed);
                        self.push_partial(slab);
                        self.slabs.fetch_add(1, Ordering::Relaxed);
                        slab
                    }
                    None => break,
                },
            };
            n += self.take_from(slab, &mut out[n..]);
        }
        self.live.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Takes blocks from one partial slab into `out`: free ones first (warm), then carved ones;
    /// a slab left with neither leaves the partial list.
    fn take_from(&self, slab: &Slab, out: &mut [usize]) -> usize {
        let base = slab.base.load(Ordering::Relaxed);
        let mut free = slab.free.load(Ordering::Relaxed);
        let mut carved = slab.carved.load(Ordering::Relaxed) as usize;
        let mut n = 0;
        while n < out.len() {
            if free != 0 {
                out[n] = free;
                // SAFETY: `free` is a free block of this slab (ours, at least 16 bytes and
                // aligned), whose first word links the slab's free list.
                free = unsafe { ptr::read(free as *const usize) };
            } else if carved + self.size <= SLAB_SIZE {
                out[n] = base + carved;
                carved += self.size;
            } else {
                break;
            }
            n += 1;
        }
        slab.free.store(free, Ordering::Relaxed);
        slab.carved.store(carved as u32, Ordering::Relaxed);
        // Written only under the class lock: a plain update, no read-modify-write.
        let live = slab.live.load(Ordering::Relaxed);
        slab.live.store(live + n as u32, Ordering::Relaxed);
        if free == 0 && carved + self.size > SLAB_SIZE {
            self.remove_partial(slab);
        }
        n
    }

    /// Takes back blocks of this class; slabs left with no live block return to the page heap.
    pub(crate) fn spill(&self, pages: &PageHeap, items: &[usize]) {
        let _guard = self.lock.lock();
        let mut returned = 0;
        for &item in items {
            let Some(slab) = pages.lookup(item) else {
                // Not a block of this heap: the caller broke the contract. Leak it rather
                // than corrupt a slab.
                debug_assert!(false, "{item:#x} is not a slab block");
                continue;
            };
            debug_assert_eq!(PageHeap::slab_class_word(slab), self.class + 1);
            // SAFETY: `item` is a block of this slab that nobody uses any more; its first word
            // becomes the free-list link.
            unsafe { ptr::write(item as *mut usize, slab.free.load(Ordering::Relaxed)) };
            slab.free.store(item, Ordering::Relaxed);
            returned += 1;
            // As in `take_from`: ours under the lock.
            let live = slab.live.load(Ordering::Relaxed).wrapping_sub(1);
            slab.live.store(live, Ordering::Relaxed);
            if live == 0 {
                if slab.partial.load(Ordering::Relaxed) {
                    self.remove_partial(slab);
                }
                self.slabs.fetch_sub(1, Ordering::Relaxed);
                pages.give(slab);
            } else if !slab.partial.load(Ordering::Relaxed) {
                self.push_partial(slab);
            }
        }
        self.live.fetch_sub(returned, Ordering::Relaxed);
    }

    fn partial_head(&self) -> Option<&Slab> {
        // SAFETY: the list holds descriptors in mapped leaves, which live as long as the heap.
        unsafe { self.partial.load(Ordering::Relaxed).as_ref() }
    }

    fn push_partial(&self, slab: &Slab) {
        let head = self.partial.load(Ordering::Relaxed);
        slab.prev.store(ptr::null_mut(), Ordering::Relaxed);
        slab.next.store(head, Ordering::Relaxed);
        // SAFETY: as in `partial_head`.
        if let Some(head) = unsafe { head.as_ref() } {
            head.prev
                .store(ptr::from_ref(slab).cast_mut(), Ordering::Relaxed);
        }
        self.partial
            .store(ptr::from_ref(slab).cast_mut(), Ordering::Relaxed);
        slab.partial.store(true, Ordering::Relaxed);
    }

    fn remove_partial(&self, slab: &Slab) {
        let prev = slab.prev.load(Ordering::Relaxed);
        let next = slab.next.load(Ordering::Relaxed);
        // SAFETY: as in `partial_head`.
        match unsafe { prev.as_ref() } {
            Some(prev) => prev.next.store(next, Ordering::Relaxed),
            None => self.partial.store(next, Ordering::Relaxed),
        }
        // SAFETY: as in `partial_head`.
        if let Some(next) = unsafe { next.as_ref() } {
            next.prev.store(prev, Ordering::Relaxed);
        }
        slab.partial.store(false, Ordering::Relaxed);
    }

    /// Slabs serving this class.
    pub(crate) fn slabs(&self) -> usize {
        self.slabs.load(Ordering::Relaxed)
    }

    /// Blocks above this level (in use, or in caches and the transfer level).
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}
