//! The central level of one size class: the slabs serving it, with the blocks inside them that
//! no cache holds. Below the per-CPU caches and the transfer level (the freelist's global
//! level), reached only in batches, so one lock per class is enough.
//!
//! Each slab keeps its own free list, linked through the free blocks' first word, and a count
//! of live blocks (handed up and not back). Slabs with a free or uncarved block sit on the
//! class's partial list; a slab whose last live block comes back returns to the page heap.
//!
//! A homed class (see `Heap`) fills each cache from slabs homed at its index: a partial slab
//! of its own, else one with returned blocks that it adopts (so freed memory is reused before
//! new memory is touched), else a new slab, else any partial one.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::lock::SpinLock;
use super::pages::{PageHeap, SLAB_SIZE, Slab};

/// Partial slabs a homed fill looks at for one of its own or one to adopt: the search is under
/// the class lock, so it stays short; past it, a fill takes a new slab.
const HOME_SEARCH: usize = 16;

pub(crate) struct Central {
    /// Also taken around `fork` (see `Heap::lock_for_fork`).
    pub(super) lock: SpinLock,
    /// Slabs with blocks to give (under the lock).
    partial: AtomicPtr<Slab>,
    class: u32,
    size: usize,
    /// Whether the class's slabs have homes (see `Heap`).
    homed: bool,
    /// Slabs serving this class (statistics).
    slabs: AtomicUsize,
    /// Blocks handed above this level and not back (statistics).
    live: AtomicUsize,
}

impl Central {
    pub(crate) const fn new(class: usize, size: usize, homed: bool) -> Central {
        Central {
            lock: SpinLock::new(),
            partial: AtomicPtr::new(ptr::null_mut()),
            class: class as u32,
            size,
            homed,
            slabs: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
        }
    }

    /// Whether this class's slabs have homes.
    pub(crate) fn homed(&self) -> bool {
        self.homed
    }

    /// Fills the front of `out` with blocks for the cache of index `home - 1` (0: no index, or
    /// a class without homes): how many (fewer only when out of memory).
    pub(crate) fn fill(&self, pages: &PageHeap, out: &mut [usize], home: u32) -> usize {
        let home = if self.homed { home } else { 0 };
        let _guard = self.lock.lock();
        let mut n = 0;
        while n < out.len() {
            let chosen = if home == 0 {
                self.partial_head().or_else(|| self.take_new(pages, 0))
            } else {
                self.partial_homed_at(pages, home)
                    .or_else(|| self.take_new(pages, home))
                    .or_else(|| self.partial_head())
            };
            let Some(slab) = chosen else {
                break;
            };
            n += self.take_from(slab, &mut out[n..]);
        }
        self.live.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// A partial slab homed at `home`, else one with returned blocks, which moves there; among
    /// the first [`HOME_SEARCH`] of the partial list.
    fn partial_homed_at(&self, pages: &PageHeap, home: u32) -> Option<&Slab> {
        let mut at = self.partial_head();
        let mut adoptable = None;
        for _ in 0..HOME_SEARCH {
            let Some(slab) = at else {
                break;
            };
            if PageHeap::slab_home(slab) == home {
                return Some(slab);
            }
            if adoptable.is_none() && slab.free.load(Ordering::Relaxed) != 0 {
                adoptable = Some(slab);
            }
            // SAFETY: as in `partial_head`.
            at = unsafe { slab.next.load(Ordering::Relaxed).as_ref() };
        }
        let slab = adoptable?;
        pages.set_word(slab, self.class + 1, home);
        Some(slab)
    }

    /// A slab from the page heap, homed at `home`, onto the partial list.
    fn take_new<'p>(&self, pages: &'p PageHeap, home: u32) -> Option<&'p Slab> {
        let slab = pages.take()?;
        pages.set_word(slab, self.class + 1, home);
        slab.live.store(0, Ordering::Relaxed);
        slab.carved.store(0, Ordering::Relaxed);
        slab.free.store(0, Ordering::Relaxed);
        self.push_partial(slab);
        self.slabs.fetch_add(1, Ordering::Relaxed);
        Some(slab)
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

#[cfg(test)]
mod tests {
    use super::super::pages::SLAB_SHIFT;
    use super::super::pages::tests::page_heap;
    use super::*;

    fn homes(pages: &PageHeap, blocks: &[usize]) -> Vec<u32> {
        let slab = |&b: &usize| pages.lookup(b).expect("a slab block");
        blocks
            .iter()
            .map(|b| PageHeap::slab_home(slab(b)))
            .collect()
    }

    /// The free blocks on the list of the slab holding `block`.
    fn free_list(pages: &PageHeap, block: usize) -> Vec<usize> {
        let slab = pages.lookup(block).expect("a slab block");
        let mut blocks = Vec::new();
        let mut at = slab.free.load(Ordering::Relaxed);
        while at != 0 {
            blocks.push(at);
            assert!(blocks.len() <= SLAB_SIZE / 16, "a cycle in the free list");
            // SAFETY: the test holds the only reference to the class, so the list is as the
            // last spill or fill left it: each free block's first word links the next.
            at = unsafe { ptr::read(at as *const usize) };
        }
        blocks
    }

    /// Returns in every order and fills of every size against a model: no block is handed out
    /// while held, every returned block is on its slab's free list until handed out again or
    /// its slab empties (and goes back to the page heap), and once all are returned no slab is
    /// left.
    #[test]
    fn returns_and_fills_lose_and_duplicate_nothing() {
        use std::collections::HashSet;
        let pages = page_heap(true);
        let size = 32;
        let central = Central::new(1, size, false);
        let mut held: Vec<usize> = Vec::new();
        let mut returned = HashSet::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..2000 {
            if held.is_empty() || next() % 2 == 0 {
                let mut out = vec![0usize; 1 + (next() % 64) as usize];
                assert_eq!(central.fill(&pages, &mut out, 0), out.len());
                for &b in &out {
                    assert!(!held.contains(&b), "round {round}: {b:#x} handed out twice");
                    returned.remove(&b);
                    held.push(b);
                }
            } else {
                // Some held blocks back: a sorted stretch (either way) or a shuffled one.
                held.sort_unstable();
                let n = 1 + (next() as usize % held.len().min(64));
                let at = next() as usize % (held.len() - n + 1);
                let mut back: Vec<usize> = held.drain(at..at + n).collect();
                match next() % 3 {
                    0 => {}
                    1 => back.reverse(),
                    _ => {
                        for i in (1..back.len()).rev() {
                            back.swap(i, next() as usize % (i + 1));
                        }
                    }
                }
                central.spill(&pages, &back);
                returned.extend(back);
                // Slabs with no block held any more went back, their free blocks with them.
                let in_use: HashSet<usize> = held.iter().map(|&b| b >> SLAB_SHIFT).collect();
                returned.retain(|&b| in_use.contains(&(b >> SLAB_SHIFT)));
            }
            assert_eq!(central.live(), held.len());
            let slabs: HashSet<usize> = held.iter().map(|&b| b >> SLAB_SHIFT).collect();
            let listed: Vec<usize> = slabs
                .into_iter()
                .flat_map(|slab| free_list(&pages, slab << SLAB_SHIFT))
                .collect();
            assert_eq!(listed.len(), returned.len(), "round {round}: once each");
            assert_eq!(
                listed.into_iter().collect::<HashSet<_>>(),
                returned,
                "round {round}: the free lists hold what came back"
            );
        }
        central.spill(&pages, &held);
        assert_eq!(central.live(), 0);
        assert_eq!(central.slabs(), 0, "every slab back to the page heap");
    }

    /// A homed class fills each index from a slab of its own; failing that, it adopts one with
    /// returned blocks (which come first) before it takes a new slab. Without homes, fills
    /// share slabs and ignore the index.
    #[test]
    fn homed_fills_take_their_own_slab_then_adopt_then_take_a_new_one() {
        let pages = page_heap(true);
        let central = Central::new(0, 16, true);
        let mut first = [0usize; 8];
        assert_eq!(central.fill(&pages, &mut first, 1), 8);
        let mut second = [0usize; 8];
        assert_eq!(central.fill(&pages, &mut second, 2), 8);
        assert_eq!(homes(&pages, &first), [1; 8]);
        assert_eq!(
            homes(&pages, &second),
            [2; 8],
            "index 2 takes a slab of its own"
        );
        assert_ne!(first[0] >> SLAB_SHIFT, second[0] >> SLAB_SHIFT);
        assert_eq!(central.slabs(), 2);

        // Index 1's slab gets blocks back: index 3 adopts it rather than touch a new slab,
        // and takes the returned blocks first.
        central.spill(&pages, &first[..4]);
        let mut third = [0usize; 6];
        assert_eq!(central.fill(&pages, &mut third, 3), 6);
        let mut returned = first[..4].to_vec();
        returned.sort_unstable();
        let mut taken = third[..4].to_vec();
        taken.sort_unstable();
        assert_eq!(taken, returned);
        assert_eq!(
            third[4] >> SLAB_SHIFT,
            first[0] >> SLAB_SHIFT,
            "then carved from the same slab"
        );
        assert_eq!(homes(&pages, &third), [3; 6]);
        assert_eq!(central.slabs(), 2);

        // Index 2 still finds its own slab; index 1 now has none and nothing to adopt.
        let mut fourth = [0usize; 4];
        assert_eq!(central.fill(&pages, &mut fourth, 2), 4);
        assert_eq!(fourth[0] >> SLAB_SHIFT, second[0] >> SLAB_SHIFT);
        assert_eq!(central.fill(&pages, &mut fourth, 1), 4);
        assert_eq!(homes(&pages, &fourth), [1; 4]);
        assert_eq!(central.slabs(), 3);

        // A fill for no index (a thread without rseq) takes the first partial slab.
        let mut fifth = [0usize; 4];
        assert_eq!(central.fill(&pages, &mut fifth, 0), 4);
        assert_eq!(central.slabs(), 3);

        // A class without homes shares one slab among indices and gives it no home.
        let plain = Central::new(5, 96, false);
        let (mut a, mut b) = ([0usize; 4], [0usize; 4]);
        assert_eq!(plain.fill(&pages, &mut a, 1), 4);
        assert_eq!(plain.fill(&pages, &mut b, 2), 4);
        assert_eq!(a[0] >> SLAB_SHIFT, b[0] >> SLAB_SHIFT);
        assert_eq!(homes(&pages, &[a[0], b[0]]), [0, 0]);
    }
}
