//! One allocator's state: per size class a freelist (per-CPU caches over a transfer level)
//! backed by the class's central level; the page heap under them; large blocks beside them.
//!
//! # Homed classes
//! Blocks smaller than a cache line share lines with their neighbours. Handed from one thread
//! to another and freed there, such a block would land in the freeing CPU's cache and be reused
//! there while its neighbours are in use on the CPU that carved it: the two CPUs then write one
//! line (passive false sharing, which `cache-scratch` measures). So these classes' slabs have a
//! home, the cache index whose refill carved them (see `pages::Slab`), and a block of one freed
//! by `free` on another index goes home instead: into that CPU's remote buffer (a small
//! per-CPU freelist of its own), whose overflow goes to each block's home shard of the class's
//! transfer level, where the home's refills look first (before the central level, whose fills
//! also prefer the index's own slabs). Homes are a placement policy, not an invariant: a block
//! may be used anywhere. It stays approximate where indices share a transfer shard (past 16)
//! and for indices past 251, whose slabs have no home (the codes run out: see
//! `freelist::homes`); and Rust's `dealloc`, which knows the class from the layout and never
//! looks a block up, keeps the plain per-CPU path.
//!
//! What it costs, on a 2-vCPU guest (BENCHMARKS.md, eighth and fifteenth rounds): `free` tests
//! the home (a load and a `test` against the region's away mask; a comparison took 2–4% of
//! `larson` and `mstress`), and a producer/consumer (`xmalloc`, where every small block is freed
//! away from home) pays about 5% for the trip home; `cache-scratch` runs 2.8× faster.

use core::ptr::{self, NonNull};

use super::central::Central;
use super::class::{CLASSES, SIZES};
use super::large::Large;
use super::lock::SpinLock;
use super::pages::{HOMED_INDICES, PageHeap, class_and_home_of, home_of};
use super::stats::{AllocStats, ClassStats};
use crate::freelist::{
    Backing, CacheArena, DirectCaches, MAX_CHAIN, OpCounterArena, RawFreeList, SlotPool,
};

/// Most blocks one class's per-CPU cache holds: enough that a burst of a thousand small
/// allocations followed by their frees stays within the cache.
pub(crate) const MAX_CACHE_BLOCKS: usize = 2048;

/// Per-CPU cache capacity, in blocks, for a class of `size` bytes given a byte budget per class.
pub(crate) fn cache_capacity(size: usize, cache_bytes: usize) -> usize {
    (cache_bytes / size).clamp(2, MAX_CACHE_BLOCKS)
}

/// Bytes of a cache line: classes of smaller blocks are homed.
const CACHE_LINE: usize = 64;

/// Number of homed classes: those whose blocks are smaller than a cache line (the first ones).
pub(crate) const HOMED_CLASSES: usize = {
    let mut n = 0;
    while SIZES[n] < CACHE_LINE {
        n += 1;
    }
    n
};

/// Blocks each CPU's remote buffer of a homed class holds before half of them go home.
const REMOTE_CAPACITY: usize = 128;

/// Transfer-level length beyond which a class's overflow goes to its slabs: about 1 MiB.
fn transfer_limit(size: usize) -> usize {
    ((1 << 20) / size).clamp(2 * MAX_CHAIN, 8192)
}

/// Cache-line aligned, the freelist first: a class's fast path reads one line of it.
#[repr(C, align(64))]
pub(crate) struct Class {
    pub(crate) list: RawFreeList,
    pub(crate) central: Central,
    limit: usize,
}

/// In C order. The heap starts a page, as the caches' regions do, so the fields its refills and
/// overflows read first are kept off the page offsets of the count words (the first
/// `ALIAS_GAP` bytes): otherwise a load of one would wait on the last store to the count word at
/// its offset (4 KiB aliasing), which once made pairs 10% slower. (The fast paths read nothing
/// here: their tables are in `PerCpuAlloc`, laid out the same way.)
#[repr(C)]
pub(crate) struct Heap {
    /// Never touched; it only moves the page heap's fields up the page.
    _alias_gap: [u8; ALIAS_GAP],
    pub(crate) pages: PageHeap,
    pub(crate) large: Large,
    /// Serialises `trim` (and holds off `fork` while one runs).
    trim_lock: SpinLock,
    /// Next heap registered for the fork handlers.
    pub(crate) fork_next: core::sync::atomic::AtomicPtr<Heap>,
    /// Every class's per-CPU caches, one region per CPU (their count words side by side).
    caches: CacheArena,
    /// The same for threads without rseq (touched only when there are some).
    _locked_caches: CacheArena,
    /// The remote buffers' caches (their locked ones serve only indices past the rseq caches':
    /// threads without rseq do not send blocks home).
    remote_caches: CacheArena,
    _remote_locked_caches: CacheArena,
    /// Every class's freelist operation counters, side by side (a page per class otherwise).
    _counters: OpCounterArena,
    _remote_counters: OpCounterArena,
    /// Every class's transfer level: their stack heads and the slots they hold blocks in.
    _transfer_slots: SlotPool,
    /// The same for the remote buffers' own global levels.
    _remote_slots: SlotPool,
    classes: [Class; CLASSES],
    /// Per homed class, blocks freed away from their home, on their way there.
    remote: [RawFreeList; HOMED_CLASSES],
}

/// Bytes of a cache region's first page that hold the away mask and the count and limit words,
/// which the fast paths store to and load (with room to spare: 48 classes use 784). The
/// harvested words and marks after them are written only by slow paths.
pub(crate) const ALIAS_GAP: usize = 1024;
const _: () = assert!(crate::freelist::caches::count_at(CLASSES) <= ALIAS_GAP);

/// A class's levels below its freelist, as the freelist sees them.
#[derive(Clone, Copy)]
struct Below<'a> {
    class: &'a Class,
    pages: &'a PageHeap,
}

impl Backing for Below<'_> {
    const SPILLS: bool = true;
    const FILLS: bool = true;

    fn global_limit(&self) -> usize {
        self.class.limit
    }

    fn spill(&self, items: &[usize]) {
        self.class.central.spill(self.pages, items);
    }

    fn fill(&self, out: &mut [usize], home: Option<usize>) -> usize {
        let home = match home {
            Some(id) if id < HOMED_INDICES as usize => id as u32 + 1,
            _ => 0,
        };
        self.class.central.fill(self.pages, out, home)
    }

    fn fills_before_other_shards(&self) -> bool {
        self.class.central.homed()
    }
}

/// Where a remote buffer's overflow goes: each block to its home's shard of the class's
/// transfer level (or below it, as that level's own overflow would).
#[derive(Clone, Copy)]
struct ToHome<'a>(Below<'a>);

impl Backing for ToHome<'_> {
    const SPILLS: bool = true;
    const FILLS: bool = false;

    /// Nothing stays in the buffers' own transfer level: it is nobody's to take from.
    fn global_limit(&self) -> usize {
        0
    }

    fn spill(&self, items: &[usize]) {
        let Below { class, pages } = self.0;
        // Grouped by home, one transfer push per home.
        let mut homed = [(0u32, 0usize); MAX_CHAIN];
        let homed = &mut homed[..items.len()];
        for (entry, &item) in homed.iter_mut().zip(items) {
            *entry = (home_of(pages.slab_word(item)), item);
        }
        homed.sort_unstable();
        let mut run = [0usize; MAX_CHAIN];
        for group in homed.chunk_by(|a, b| a.0 == b.0) {
            let run = &mut run[..group.len()];
            for (out, &(_, item)) in run.iter_mut().zip(group.iter()) {
                *out = item;
            }
            match group[0].0 {
                0 => self.0.spill(run),
                home => class.list.push_to_shard(home as usize - 1, run, self.0),
            }
        }
    }

    fn fill(&self, _: &mut [usize], _: Option<usize>) -> usize {
        0
    }
}

impl Heap {
    /// Builds a heap in place at `at` (zeroed, suitably aligned memory). `false` when out of
    /// memory; nothing is left allocated then.
    ///
    /// # Safety
    /// `at` is valid for writes of a `Heap`, holds nothing that needs dropping, and is zeroed.
    pub(crate) unsafe fn init(at: *mut Heap, cache_bytes: usize, page_size: usize) -> bool {
        const { assert!(CLASSES <= crate::freelist::caches::MAX_LISTS) };
        let capacities = SIZES.map(|size| cache_capacity(size, cache_bytes));
        let cpus = rseq_sys::possible_cpus() as usize;
        let remote_capacities = [REMOTE_CAPACITY; HOMED_CLASSES];
        let (
            Some(arena),
            Some(locked),
            Some(counters),
            Some(slots),
            Some(remote_arena),
            Some(remote_locked),
            Some(remote_counters),
            Some(remote_slots),
        ) = (
            CacheArena::new(cpus, &capacities),
            CacheArena::new(cpus, &capacities),
            OpCounterArena::new(cpus, CLASSES),
            SlotPool::new(CLASSES, cpus),
            CacheArena::new(cpus, &remote_capacities),
            CacheArena::new(cpus, &remote_capacities),
            OpCounterArena::new(cpus, HOMED_CLASSES),
            SlotPool::new(HOMED_CLASSES, cpus),
        )
        else {
            return false;
        };
        // Built in place, one class at a time: a `Heap` is too large to build on small stacks.
        for (c, &size) in SIZES.iter().enumerate() {
            // SAFETY: the arenas and the pool move into the heap below and are dropped with it
            // (their mappings, which the caches and levels point into, never move); class `c`
            // takes list `c` only.
            let list = unsafe {
                RawFreeList::in_arena(&arena, &locked, &counters, &slots, c, capacities[c], true)
            };
            let Ok(list) = list else {
                for done in 0..c {
                    // SAFETY: classes below `c` were written just now and are dropped once.
                    unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*at).classes[done])) };
                }
                return false;
            };
            let class = Class {
                list,
                central: Central::new(c, size, c < HOMED_CLASSES),
                limit: transfer_limit(size),
            };
            // SAFETY: `at` is valid for a Heap, so its `classes[c]` is valid for writes.
            unsafe { ptr::addr_of_mut!((*at).classes[c]).write(class) };
        }
        for c in 0..HOMED_CLASSES {
            // SAFETY: as above, for the remote arenas; list `c` of them is this buffer's only.
            let remote = unsafe {
                RawFreeList::in_arena(
                    &remote_arena,
                    &remote_locked,
                    &remote_counters,
                    &remote_slots,
                    c,
                    REMOTE_CAPACITY,
                    false,
                )
            };
            let Ok(remote) = remote else {
                for done in 0..CLASSES {
                    // SAFETY: every class was written above and is dropped once.
                    unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*at).classes[done])) };
                }
                for done in 0..c {
                    // SAFETY: buffers below `c` were written just now and are dropped once.
                    unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*at).remote[done])) };
                }
                return false;
            };
            // SAFETY: `at` is valid for a Heap, so its `remote[c]` is valid for writes.
            unsafe { ptr::addr_of_mut!((*at).remote[c]).write(remote) };
        }
        // SAFETY: field by field; the page heap's top array is still zeroed, as
        // `PageHeap::init` needs.
        unsafe {
            ptr::addr_of_mut!((*at).caches).write(arena);
            ptr::addr_of_mut!((*at)._locked_caches).write(locked);
            ptr::addr_of_mut!((*at).remote_caches).write(remote_arena);
            ptr::addr_of_mut!((*at)._remote_locked_caches).write(remote_locked);
            ptr::addr_of_mut!((*at)._counters).write(counters);
            ptr::addr_of_mut!((*at)._remote_counters).write(remote_counters);
            ptr::addr_of_mut!((*at)._transfer_slots).write(slots);
            ptr::addr_of_mut!((*at)._remote_slots).write(remote_slots);
            PageHeap::init(ptr::addr_of_mut!((*at).pages), true);
            ptr::addr_of_mut!((*at).large).write(Large::new(page_size));
            ptr::addr_of_mut!((*at).trim_lock).write(SpinLock::new());
            ptr::addr_of_mut!((*at).fork_next).write(Default::default());
        }
        true
    }

    #[inline(always)]
    pub(crate) fn class(&self, class: usize) -> &Class {
        debug_assert!(class < CLASSES);
        // SAFETY: class indices come from `class_for` or a slab descriptor, both below CLASSES.
        unsafe { self.classes.get_unchecked(class) }
    }

    /// Publishes the tables the fast paths find the per-CPU caches by (see
    /// `PerCpuAlloc::fast`): the classes' caches in `direct`, the remote buffers' in `remote`.
    ///
    /// # Safety
    /// Once per heap, by one thread, into tables that are not used past the heap's life.
    pub(crate) unsafe fn publish_fast_paths(&self, direct: &DirectCaches, remote: &DirectCaches) {
        // SAFETY: the arenas live as long as the heap, which outlives the tables' use (the
        // caller's contract); each of their lists belongs to a class's freelist (or remote
        // buffer), all of which allow the sequences on the same indices.
        unsafe {
            direct.publish(&self.caches, self.classes[0].list.rseq_cpus());
            remote.publish(&self.remote_caches, self.remote[0].rseq_cpus());
        }
    }

    /// A block of size class `class` (or null when out of memory) after a fast attempt
    /// (`PerCpuAlloc`'s, on its table) did nothing: through the class's freelist, which tries the
    /// cache again, refills it, or goes past it for a thread without rseq.
    #[inline(always)]
    pub(crate) fn alloc_small_past_fast(&self, class: usize) -> *mut u8 {
        let below = Below {
            class: self.class(class),
            pages: &self.pages,
        };
        // Counted by the freelist itself: its pop sequence counts in the same commit.
        match below.class.list.pop_backed(below) {
            Some(block) => block.as_ptr(),
            None => ptr::null_mut(),
        }
    }

    /// Frees `block`, a live block of size class `class`, after a fast attempt did nothing (or
    /// was not made): through the class's freelist, which tries the cache again, moves a batch
    /// down when it is full, or goes past it for a thread without rseq.
    #[inline(always)]
    pub(crate) fn free_small_past_fast(&self, class: usize, block: NonNull<u8>) {
        let below = Below {
            class: self.class(class),
            pages: &self.pages,
        };
        // A backed freelist always finds room (its backing takes what the global level cannot).
        let _ = below.class.list.push_backed(block, below);
    }

    /// Frees `block`, a live block of size class `class` whose slab's home is `home` (index + 1,
    /// 0 for none), when `PerCpuAlloc::free`'s fast attempt (`DirectCaches::push_homed_with`)
    /// did nothing or could not be made: sent home when this thread runs on another index, else
    /// as [`Self::free_small_past_fast`]. Only homed classes ask for the thread's index.
    pub(crate) fn free_homed(&self, class: usize, block: NonNull<u8>, home: u32) {
        if home != 0
            && let Some(remote) = self.remote.get(class)
            && let Some(id) = self.class(class).list.current_index()
            && id.wrapping_add(1) != home as usize
        {
            let below = Below {
                class: self.class(class),
                pages: &self.pages,
            };
            // Always finds room: its backing takes whatever overflows.
            let _ = remote.push_backed(block, ToHome(below));
            return;
        }
        self.free_small_past_fast(class, block);
    }

    /// The size class of `block` when it is a slab block (`None` for large blocks), and its
    /// slab's home (index + 1, or 0).
    #[inline(always)]
    pub(crate) fn class_and_home(&self, block: *const u8) -> Option<(usize, u32)> {
        class_and_home_of(self.slab_word(block))
    }

    /// The word of `block`'s slab (see `pages.rs`): 0 for a large block.
    #[inline(always)]
    pub(crate) fn slab_word(&self, block: *const u8) -> u32 {
        self.pages.slab_word(block as usize)
    }

    /// The size class of `block` when it is a slab block; `None` for large blocks.
    #[inline]
    pub(crate) fn class_of_block(&self, block: *const u8) -> Option<usize> {
        self.class_and_home(block).map(|(class, _)| class)
    }

    /// Moves every cached block back to its slab and returns empty slabs and cached large
    /// mappings to the kernel: the bytes released.
    pub(crate) fn trim(&self) -> usize {
        let _guard = self.trim_lock.lock();
        let mut batch = [0usize; MAX_CHAIN];
        for class in &self.classes {
            // Without a fence, other CPUs' caches stay as they are; the rest still goes back.
            let _ = class.list.drain();
            let below = Below {
                class,
                pages: &self.pages,
            };
            loop {
                let n = class.list.pop_global_batch(&mut batch);
                if n == 0 {
                    break;
                }
                below.spill(&batch[..n]);
            }
        }
        for (remote, class) in self.remote.iter().zip(&self.classes) {
            // Blocks on their way home go back to their slabs instead.
            let _ = remote.drain();
            let below = Below {
                class,
                pages: &self.pages,
            };
            loop {
                let n = remote.pop_global_batch(&mut batch);
                if n == 0 {
                    break;
                }
                below.spill(&batch[..n]);
            }
        }
        self.pages.release_empty() + self.large.release_cached()
    }

    pub(crate) fn stats(&self) -> AllocStats {
        let classes = core::array::from_fn(|c| {
            let class = &self.classes[c];
            let size = SIZES[c];
            let mut list = class.list.stats();
            if let Some(remote) = self.remote.get(c) {
                // Frees sent home count as frees; the buffers count as CPU caches.
                let remote = remote.stats();
                list.pushes += remote.pushes;
                list.cached += remote.cached;
                list.global += remote.global;
            }
            let slabs = class.central.slabs();
            let live = class.central.live();
            ClassStats {
                size,
                allocs: list.pops,
                frees: list.pushes,
                in_use_bytes: list.pops.saturating_sub(list.pushes) as usize * size,
                cpu_cached_bytes: list.cached * size,
                transfer_bytes: list.global * size,
                central_bytes: (slabs * (super::pages::SLAB_SIZE / size)).saturating_sub(live)
                    * size,
                slabs,
            }
        });
        AllocStats {
            classes,
            large_allocs: self.large.allocs() as u64,
            large_frees: self.large.frees() as u64,
            large_in_use_bytes: self.large.in_use_bytes(),
            large_cached_bytes: self.large.cached_bytes(),
            slab_mapped_bytes: self.pages.mapped_bytes(),
            class_map_reserved_bytes: self.pages.class_map_bytes(),
            slab_empty_bytes: self.pages.empty_bytes(),
            slab_released_bytes: self.pages.released_bytes(),
        }
    }

    /// Takes every lock, in the one order they nest (trim, the caches of threads without rseq,
    /// central levels, page heap, large cache), so `fork` copies none of them held by a thread
    /// that will not exist in the child.
    pub(crate) fn lock_for_fork(&self) {
        self.trim_lock.acquire();
        for list in self.classes.iter().map(|c| &c.list).chain(&self.remote) {
            list.lock_fallback_caches();
        }
        for class in &self.classes {
            class.central.lock.acquire();
        }
        self.pages.lock.acquire();
        self.large.lock.acquire();
    }

    /// # Safety
    /// After [`Self::lock_for_fork`], in the parent or the child.
    pub(crate) unsafe fn unlock_after_fork(&self) {
        // SAFETY: the caller took them all in `lock_for_fork`.
        unsafe {
            self.large.lock.release();
            self.pages.lock.release();
            for class in &self.classes {
                class.central.lock.release();
            }
            for list in self.classes.iter().map(|c| &c.list).chain(&self.remote) {
                list.unlock_fallback_caches();
            }
            self.trim_lock.release();
        }
    }
}
