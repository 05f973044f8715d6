//! Per-CPU freelists: [`RawFreeList`] of memory blocks, and the typed [`FreeList`] and [`Pool`].
//!
//! # Shape
//! Each CPU (or mm_cid) has a bounded array stack, tcmalloc-style: a count word and `capacity`
//! slots in that CPU's own region of memory (`caches.rs`; the slab allocator keeps all its
//! classes' count words side by side there). Push and pop are single rseq sequences
//! ([`rseq_sys::Sequences::stack_push`] / [`stack_pop`](rseq_sys::Sequences::stack_pop)): a
//! load, a compare, a store of the item and a commit store of the count, no atomic
//! read-modify-write and no shared cache line. Arrays rather than intrusive lists because a pop
//! then touches only the cache's own lines, never the block (which may be cold), and because a
//! batch of items can leave or join the cache without walking blocks.
//!
//! A push onto a full cache moves a batch (half the capacity, at most 64) to the shared global
//! level; a pop from an empty cache takes a batch back. Each batch leaves or joins the cache in
//! one sequence ([`rseq_sys::Sequences::stack_pop_many`], `stack_push_many`), whose copies run
//! inside the critical section: one commit per batch, not one per item, which took 8% off a
//! program that builds and frees long lists. So a producer that only frees and a
//! consumer that only allocates, on different CPUs, each pay one global operation per batch,
//! not per item. The global level (`global.rs`) is lock-free and allocation-free, and split into
//! shards, one per CPU up to 16: batches go to the shard of the CPU they leave, and a pop that
//! finds its own shard empty looks at the others before reporting empty.
//!
//! The count word of each cache also counts its pops (see [`rseq_sys::STACK_LOCKED`]), so
//! [`RawFreeList::stats`] is exact without adding a single instruction to push or pop.
//!
//! # Without rseq
//! Threads without rseq (or all threads under `PERCPU_FORCE_FALLBACK=1`) never write an rseq
//! cache: its commits are plain stores, which an atomic write from another CPU could be lost
//! under. They have caches of their own instead, the same array stacks found by the CPU
//! `sched_getcpu()` reports (asked once every 64 operations: [`rseq_sys::cpu_hint`]), each
//! behind a try-lock in its count word: a compare-exchange takes it, the store of the new count
//! releases it. A thread that finds its CPU's cache held (by a thread preempted inside, or one
//! that migrated, or because this one did) goes to the global level (its CPU's shard) instead
//! of waiting, so no thread ever waits for another, and asks for its CPU again next time. A push
//! and pop pair costs two compare-exchanges, about 1.5× glibc's malloc and free. Threads of both
//! kinds can share one freelist.
//!
//! # Draining
//! Items parked in one CPU's cache are invisible to pops on other CPUs until
//! [`RawFreeList::drain`] moves every cache to the global level. It locks each cache by setting
//! the top bit of its count ([`rseq_sys::STACK_LOCKED`]: sequences then read the cache as full
//! and empty), fences every CPU ([`rseq_sys::fence_all_cpus`]: membarrier, or visiting each CPU)
//! so no sequence that read the old count can still commit, re-locks any cache a commit slipped
//! past the lock, and then owns the caches until it stores their new counts. It takes the
//! try-locks of the caches without rseq as their threads do, waiting for a holder (up to
//! 100 ms: a holder only `fork` left behind never lets go).
//!
//! Nothing here calls the global allocator: caches and the global level live in `mmap`ed memory.

pub(crate) mod caches;
pub(crate) mod global;
pub(crate) mod homes;
mod typed;

pub use typed::{FreeList, Pool, Pooled};

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use core::time::Duration;

use rseq_sys::{
    FenceMethod, Index, Outcome, STACK_DEPTH_MASK, STACK_LOCKED, STACK_POPS_SHIFT, Sequences,
};

use crate::counter::{CounterArena, RawCounters};
use crate::mode::{forced_fallback, rseq_path};
use caches::Caches;
pub(crate) use caches::{CacheArena, DirectCaches};
#[cfg(test)]
pub(crate) use global::MAX_SHARDS;
use global::{Global, Shards};
pub(crate) use global::{MAX_CHAIN, SlotPool};

/// How long a drain waits for one locked cache before leaving it as it is.
const DRAIN_PATIENCE: Duration = Duration::from_millis(100);

/// Per-CPU capacity when none is given.
pub const DEFAULT_CAPACITY_PER_CPU: usize = 64;
/// The largest per-CPU capacity accepted.
pub const MAX_CAPACITY_PER_CPU: usize = 1 << 14;

/// Why a freelist could not be created or drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeListError {
    /// Capacity per CPU must be in `1..=MAX_CAPACITY_PER_CPU`.
    BadCapacity(usize),
    /// The kernel refused memory for the caches or the global level.
    OutOfMemory,
    /// Draining could not fence other CPUs; the caches were left as they were.
    Fence(rseq_sys::FenceError),
    /// Draining found a cache of threads without rseq locked for longer than it waits (held by
    /// a thread that `fork` did not copy into this process, or one preempted for that long);
    /// that cache was left as it was, everything else was drained.
    CacheBusy,
}

impl fmt::Display for FreeListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeListError::BadCapacity(n) => write!(
                f,
                "capacity per CPU must be between 1 and {MAX_CAPACITY_PER_CPU}, not {n}"
            ),
            FreeListError::OutOfMemory => f.write_str("out of memory for freelist storage"),
            FreeListError::Fence(e) => write!(f, "drain failed: {e}"),
            FreeListError::CacheBusy => {
                f.write_str("drain left a cache that another thread kept locked")
            }
        }
    }
}

impl std::error::Error for FreeListError {}

/// What lies below a freelist's global level (the slab allocator's spans; nothing for a plain
/// freelist): where overflow goes once the global level is long enough, and where pops get a
/// batch when the global level is empty.
pub(crate) trait Backing: Copy {
    /// Whether [`Backing::spill`] takes items; a backing that does not is never asked to.
    const SPILLS: bool;
    /// Whether [`Backing::fill`] can produce items.
    const FILLS: bool;
    /// Global-level length from which overflow spills instead of staying at the global level;
    /// 0: overflow always spills.
    fn global_limit(&self) -> usize;
    /// Takes `items` (at most [`MAX_CHAIN`]) for good. Must not fail: callers have already
    /// taken them out of the caches.
    fn spill(&self, items: &[usize]);
    /// Fills the front of `out` with new items: how many (0 when out of memory). `home` is the
    /// rseq index whose cache the items are for (`None` for a thread without rseq).
    fn fill(&self, out: &mut [usize], home: Option<usize>) -> usize;
    /// Whether an rseq cache's refill asks [`Backing::fill`] right after its own shard of the
    /// global level, before other shards: for a backing whose items belong to the index that
    /// takes them (the slab allocator's homed classes), so that others' items stay theirs.
    fn fills_before_other_shards(&self) -> bool {
        false
    }
}

/// A plain freelist: nothing below the global level.
#[derive(Clone, Copy)]
struct Unbacked;

impl Backing for Unbacked {
    const SPILLS: bool = false;
    const FILLS: bool = false;
    fn global_limit(&self) -> usize {
        usize::MAX
    }
    fn spill(&self, _: &[usize]) {
        unreachable!("a plain freelist never spills")
    }
    fn fill(&self, _: &mut [usize], _: Option<usize>) -> usize {
        0
    }
}

/// A per-CPU freelist of non-null addresses (memory blocks), safe to use from many threads.
///
/// It never reads or writes the blocks: any non-null address goes in and comes back out
/// unchanged, exactly once. Ownership of what the address points to is the caller's business
/// (see [`FreeList`] for a typed, owning layer).
#[repr(C)] // Everything push and pop read in its first 64 bytes: one cache line when aligned.
pub struct RawFreeList {
    /// The rseq caches: written only by sequences on their CPU (and by drains that locked them).
    caches: Caches,
    /// Indices below this use their cache: `cpus`, or 0 under `PERCPU_FORCE_FALLBACK=1`.
    rseq_cpus: usize,
    capacity: usize,
    /// Caches of the same shape for threads without rseq, each behind a try-lock (its count
    /// word's lock bit): see `push_direct`.
    locked: Caches,
    /// Possible CPUs: caches exist for indices below this.
    cpus: usize,
    /// Items moved per overflow or refill.
    batch: usize,
    /// The least a cache's limit word can be; below `capacity` when limits adapt (see
    /// `adapt_limit`), else equal to it.
    min_limit: usize,
    /// The global level, one shard per CPU (up to 16).
    global: Shards,
    /// Operations that bypass the count words' pop counting (see [`FreeListStats`]).
    ops: RawCounters<OP_COUNTERS>,
}

const _: () = assert!(core::mem::offset_of!(RawFreeList, capacity) + 8 <= 64);

/// Where items leaving a cache (or not fitting into one) go.
#[must_use]
enum Destination<'a> {
    /// Slots reserved at the global level (or a batch's own slots), which cannot fail.
    Global(Global<'a>, global::Reserved),
    /// The backing, which takes whatever it is given.
    Backing,
    /// Fresh items from the backing: to the global level, or back to the backing.
    Park,
}

impl Destination<'_> {
    fn send<B: Backing>(self, list: &RawFreeList, items: &[usize], backing: B) {
        match self {
            Destination::Global(shard, reserved) => shard.fill_reserved(reserved, items),
            Destination::Backing => backing.spill(items),
            Destination::Park => list.park(backing, items),
        }
    }
}

/// Cold-path operation counters of a freelist, indices into `RawFreeList::ops`.
const DIRECT_PUSHES: usize = 0; // pushes that went past the caches
const DIRECT_POPS: usize = 1; // pops served from past the caches
const OVERFLOW_POPS: usize = 2; // cache pops that moved items down, not to a caller
const REFILL_PUSHES: usize = 3; // cache pushes that moved items up, not from a caller
const DRAINED: usize = 4; // items a drain took out of caches
const OP_COUNTERS: usize = 5;

/// The operation counters of several freelists in one mapping: see [`RawFreeList::in_arena`].
pub(crate) type OpCounterArena = CounterArena<OP_COUNTERS>;

/// Pushes and pops of a [`RawFreeList`], and where its items are.
///
/// Exact for operations that finished before the call (with the list quiet, exact); items
/// moving meanwhile may be counted in neither place or in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeListStats {
    /// Items pushed by callers.
    pub pushes: u64,
    /// Items popped by callers.
    pub pops: u64,
    /// Items in the per-CPU caches.
    pub cached: usize,
    /// Items at the global level.
    pub global: usize,
}

impl fmt::Debug for RawFreeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFreeList")
            .field("capacity_per_cpu", &self.capacity)
            .field("caches", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl RawFreeList {
    /// An empty freelist holding up to `capacity_per_cpu` items in each CPU's cache (plus any
    /// number at the global level).
    pub fn new(capacity_per_cpu: usize) -> Result<RawFreeList, FreeListError> {
        if !(1..=MAX_CAPACITY_PER_CPU).contains(&capacity_per_cpu) {
            return Err(FreeListError::BadCapacity(capacity_per_cpu));
        }
        let cpus = rseq_sys::possible_cpus() as usize;
        let caches = Caches::new(cpus, capacity_per_cpu).ok_or(FreeListError::OutOfMemory)?;
        let locked = Caches::new(cpus, capacity_per_cpu).ok_or(FreeListError::OutOfMemory)?;
        let global = Shards::new(cpus).ok_or(FreeListError::OutOfMemory)?;
        Ok(RawFreeList::with_caches(
            caches,
            locked,
            RawCounters::new(),
            global,
            cpus,
            capacity_per_cpu,
            false,
        ))
    }

    /// A freelist whose caches are list `list` of `arena` (rseq) and of `locked` (threads
    /// without rseq), both made for possible CPUs with `capacity_per_cpu` slots for that list,
    /// whose operation counters are set `list` of `counters`, and whose global level is list
    /// `list` of `slots`. With `adaptive`, each rseq cache's limit follows its use (see
    /// `adapt_limit`) instead of staying at the capacity.
    ///
    /// # Safety
    /// The arenas and the pool outlive the freelist, and no other freelist uses list `list` of
    /// them (or set `list` of `counters`).
    pub(crate) unsafe fn in_arena(
        arena: &CacheArena,
        locked: &CacheArena,
        counters: &OpCounterArena,
        slots: &SlotPool,
        list: usize,
        capacity_per_cpu: usize,
        adaptive: bool,
    ) -> Result<RawFreeList, FreeListError> {
        if !(1..=MAX_CAPACITY_PER_CPU).contains(&capacity_per_cpu) {
            return Err(FreeListError::BadCapacity(capacity_per_cpu));
        }
        // SAFETY: forwarded contract.
        let (caches, locked, ops, global) = unsafe {
            (
                arena.caches(list),
                locked.caches(list),
                counters.counters(list),
                slots.shards(list),
            )
        };
        let cpus = rseq_sys::possible_cpus() as usize;
        Ok(RawFreeList::with_caches(
            caches,
            locked,
            ops,
            global,
            cpus,
            capacity_per_cpu,
            adaptive,
        ))
    }

    fn with_caches(
        caches: Caches,
        locked: Caches,
        ops: RawCounters<OP_COUNTERS>,
        global: Shards,
        cpus: usize,
        capacity_per_cpu: usize,
        adaptive: bool,
    ) -> RawFreeList {
        let batch = (capacity_per_cpu / 2).clamp(1, MAX_CHAIN);
        RawFreeList {
            caches,
            locked,
            cpus,
            rseq_cpus: if forced_fallback() { 0 } else { cpus },
            capacity: capacity_per_cpu,
            batch,
            min_limit: if adaptive { batch } else { capacity_per_cpu },
            global,
            ops,
        }
    }

    /// The per-CPU capacity.
    pub fn capacity_per_cpu(&self) -> usize {
        self.capacity
    }

    /// Indices below this use their rseq cache: the possible CPUs, or 0 under
    /// `PERCPU_FORCE_FALLBACK=1`.
    pub(crate) fn rseq_cpus(&self) -> usize {
        self.rseq_cpus
    }

    /// The id, count word and slots of the rseq cache of the CPU (or mm_cid) this thread runs on
    /// now; `None` past the rseq caches (no such CPU, or `PERCPU_FORCE_FALLBACK=1`).
    #[inline(always)]
    fn rseq_cache(&self, seq: Sequences, index: Index) -> Option<(u32, *mut usize, *mut usize)> {
        let id = seq.current().index(index) as usize;
        if id >= self.rseq_cpus {
            return None;
        }
        let (count, slots) = self.cache(id);
        Some((id as u32, count, slots))
    }

    /// `(count, slots)` of cache `id < cpus`: the count word (depth, lock, pops: see
    /// [`rseq_sys::STACK_LOCKED`]) and the slots.
    #[inline(always)]
    fn cache(&self, id: usize) -> (*mut usize, *mut usize) {
        debug_assert!(id < self.cpus);
        self.caches.of(id)
    }

    /// Harvests the current CPU's cache: cold paths do, so that busy caches stay exact even if
    /// nobody reads the statistics for a long time.
    /// Returns the current index.
    fn harvest_current(&self, seq: Sequences, index: Index) -> usize {
        let id = seq.current().index(index) as usize;
        if id < self.cpus {
            self.caches.harvest(id);
        }
        id
    }

    /// Adds `block`. Fails (handing it back) only when no memory can be had for the global level.
    #[inline]
    pub fn push(&self, block: NonNull<u8>) -> Result<(), NonNull<u8>> {
        self.push_backed(block, Unbacked)
    }

    /// [`Self::push`] over `backing`: overflow goes below the global level once that holds
    /// [`Backing::global_limit`] items, or when it has no memory.
    #[inline]
    pub(crate) fn push_backed<B: Backing>(
        &self,
        block: NonNull<u8>,
        backing: B,
    ) -> Result<(), NonNull<u8>> {
        let item = block.as_ptr() as usize;
        if let Some((seq, index)) = rseq_path() {
            // Spelled out, not `while let` over `rseq_cache`: LLVM lays that loop out worse, and
            // `alloc_ab`'s pairs took 1.5× as long.
            loop {
                let id = seq.current().index(index) as usize;
                if id >= self.rseq_cpus {
                    break;
                }
                let (count, slots) = self.cache(id);
                // SAFETY: the cache of `id`, written only by sequences on `id` (or by a drain
                // that locked it first); its limit word, after the count word, is at most the
                // capacity.
                match unsafe { seq.stack_push_limited(index, id as u32, count, slots, item) } {
                    Outcome::Committed(()) => return Ok(()),
                    Outcome::Aborted => continue,
                    Outcome::CompareFailed => {
                        return self.push_overflow(item, backing).map_err(|()| block);
                    }
                }
            }
        }
        self.push_direct(item, backing).map_err(|()| block)
    }

    /// A push without rseq: into this CPU's locked cache when its try-lock is free (a full one
    /// first moves a batch down), else past it to the global level.
    ///
    /// Threads without rseq must not write the rseq caches, and the global level costs several
    /// compare-exchanges an item, so they have caches of their own: the same array stacks,
    /// found by [`rseq_sys::cpu_hint`], each locked by setting its count word's lock bit with a
    /// compare-exchange and unlocked by the store that commits the new count. A thread that finds
    /// the lock taken (its holder was preempted, or migrated here) goes past the cache instead of
    /// waiting, so nobody ever waits for another thread: still lock-free. Only drains wait.
    #[inline(never)]
    fn push_direct<B: Backing>(&self, item: usize, backing: B) -> Result<(), ()> {
        let id = self.fallback_id();
        let Some(word) = self.try_lock(id) else {
            // Taken: its holder may be on that CPU and this thread no longer (a stale hint).
            rseq_sys::forget_cpu_hint();
            return self.push_shared(id, item, backing);
        };
        let depth = word & STACK_DEPTH_MASK;
        if depth < self.capacity {
            let slots = self.locked.of(id).1;
            // SAFETY: `depth < capacity`: a slot of cache `id`, ours while we hold its lock.
            unsafe { slots.add(depth).write(item) };
            // Unlocks: the count and the slot become visible together to the next holder.
            self.locked
                .count(id)
                .store(word - STACK_LOCKED + 1, Ordering::Release);
            return Ok(());
        }
        self.locked_overflow(id, word, item, backing)
    }

    /// Locked cache `id` is full: move a batch from it to the global level (or below), then push
    /// `item`, with the destination made certain first as in `push_overflow`. Unlocks.
    #[cold]
    fn locked_overflow<B: Backing>(
        &self,
        id: usize,
        word: usize,
        item: usize,
        backing: B,
    ) -> Result<(), ()> {
        self.locked.harvest(id);
        let count = self.locked.count(id);
        let n = self.batch.min(self.capacity);
        let Some(destination) = self.overflow_destination(id, n, backing) else {
            count.store(word - STACK_LOCKED, Ordering::Release);
            return Err(());
        };
        let depth = word & STACK_DEPTH_MASK;
        let slots = self.locked.of(id).1;
        let mut batch = [0usize; MAX_CHAIN];
        for (i, out) in batch[..n].iter_mut().enumerate() {
            // SAFETY: below the depth, inside cache `id`, which we hold.
            *out = unsafe { slots.add(depth - n + i).read() };
        }
        // SAFETY: `depth - n < capacity`, as above.
        unsafe { slots.add(depth - n).write(item) };
        // The batch leaves as pops (then uncounted by OVERFLOW_POPS, as for the rseq caches);
        // `item` arrives as one push. The pop count wraps, as the sequences' does.
        let word = (word - STACK_LOCKED - n + 1).wrapping_add(n << STACK_POPS_SHIFT);
        count.store(word, Ordering::Release);
        destination.send(self, &batch[..n], backing);
        self.ops.add(OVERFLOW_POPS, n as i64);
        Ok(())
    }

    /// A push past every cache, from CPU `id`: to its shard of the global level, or below it.
    #[cold]
    fn push_shared<B: Backing>(&self, id: usize, item: usize, backing: B) -> Result<(), ()> {
        let shard = self.global.shard(id);
        if B::SPILLS && shard.len() >= self.shard_limit(backing) {
            backing.spill(&[item]);
        } else if shard.push_items(&[item]).is_err() {
            if !B::SPILLS {
                return Err(());
            }
            backing.spill(&[item]);
        }
        self.ops.add(DIRECT_PUSHES, 1);
        Ok(())
    }

    /// Puts `items` (at most [`MAX_CHAIN`]) into index `id`'s shard of the global level, where
    /// `id`'s refills look first; or, with that shard at its limit or out of memory, into the
    /// backing. For items that belong to index `id` but were freed elsewhere.
    pub(crate) fn push_to_shard<B: Backing>(&self, id: usize, items: &[usize], backing: B) {
        debug_assert!(B::SPILLS && items.len() <= MAX_CHAIN);
        let shard = self.global.shard(id);
        if shard.len() >= self.shard_limit(backing) || shard.push_items(items).is_err() {
            backing.spill(items);
        }
    }

    /// The rseq index the current thread's operations use: `None` when it takes the fallback
    /// path (no rseq, or `PERCPU_FORCE_FALLBACK=1`).
    pub(crate) fn current_index(&self) -> Option<usize> {
        let (seq, index) = rseq_path()?;
        Some(seq.current().index(index) as usize)
    }

    /// The locked cache a thread without rseq uses: its CPU's, as [`rseq_sys::cpu_hint`] last
    /// saw it (a `sched_getcpu` call every time would cost more than the cache saves).
    #[inline]
    fn fallback_id(&self) -> usize {
        let cpu = rseq_sys::cpu_hint().unwrap_or(0) as usize;
        // Always below the possible CPUs in practice: no division on the way.
        if cpu < self.cpus {
            cpu
        } else {
            cpu % self.cpus
        }
    }

    /// Takes locked cache `id`'s lock if it is free: the count word as it now stands (locked).
    #[inline]
    fn try_lock(&self, id: usize) -> Option<usize> {
        let count = self.locked.count(id);
        let word = count.load(Ordering::Relaxed);
        if word & STACK_LOCKED != 0 {
            return None;
        }
        count
            .compare_exchange(
                word,
                word | STACK_LOCKED,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()
            .map(|_| word | STACK_LOCKED)
    }

    /// Takes locked cache `id`'s lock, yielding to its holder for up to `patience` (for ever
    /// with `None`): the word, locked, or `None` if it stayed held.
    fn lock_within(&self, id: usize, patience: Option<Duration>) -> Option<usize> {
        let start = std::time::Instant::now();
        loop {
            if let Some(word) = self.try_lock(id) {
                return Some(word);
            }
            if patience.is_some_and(|patience| start.elapsed() >= patience) {
                return None;
            }
            // The holder never waits while holding it, but it may be preempted.
            std::thread::yield_now();
        }
    }

    /// Takes every locked cache's lock, waiting for the holders: for `fork`, so that a child
    /// never starts with a lock whose holder it does not have.
    pub(crate) fn lock_fallback_caches(&self) {
        for id in 0..self.cpus {
            let _ = self.lock_within(id, None);
        }
    }

    /// Releases what [`Self::lock_fallback_caches`] took.
    ///
    /// # Safety
    /// Only after `lock_fallback_caches`, once, in the parent or the child of the fork.
    pub(crate) unsafe fn unlock_fallback_caches(&self) {
        for id in 0..self.cpus {
            self.locked
                .count(id)
                .fetch_and(!STACK_LOCKED, Ordering::Release);
        }
    }

    /// The cache is full (or locked by a drain, or has no limit yet: then it gets one, and
    /// `item` goes in if it can): move `item` and a batch from the cache to the global level
    /// (or below it), with the destination made certain first so nothing can be
    /// stranded: reserved global slots, or a backing that always takes what it is given.
    #[cold]
    fn push_overflow<B: Backing>(&self, item: usize, backing: B) -> Result<(), ()> {
        // Found again here rather than passed, so the fast path keeps nothing around for it.
        let Some((seq, index)) = rseq_path() else {
            return self.push_direct(item, backing);
        };
        let id = self.harvest_current(seq, index);
        // The cache's first push finds it with no limit yet: give it one and push once more.
        if self.start_limit(id) && self.push_once(seq, index, item) {
            return Ok(());
        }
        let adapts = id < self.cpus && self.min_limit < self.capacity;
        let popped_since = if adapts {
            self.popped_since_overflow(id)
        } else {
            0
        };
        let destination = self
            .overflow_destination(id, self.batch, backing)
            .ok_or(())?;
        let mut batch = [0usize; MAX_CHAIN];
        batch[0] = item;
        let mut n = 1;
        // The rest of the batch in one sequence (retried when aborted); fewer than asked means
        // the cache is empty now.
        while n < self.batch {
            let Some((id, count, slots)) = self.rseq_cache(seq, index) else {
                break;
            };
            let wanted = self.batch - n;
            // SAFETY: as in `push_backed`.
            match unsafe { seq.stack_pop_many(index, id, count, slots, &mut batch[n..self.batch]) }
            {
                Outcome::Committed(popped) => {
                    n += popped;
                    if popped < wanted {
                        break;
                    }
                }
                Outcome::Aborted => continue,
                Outcome::CompareFailed => break,
            }
        }
        destination.send(self, &batch[..n], backing);
        self.ops.add(DIRECT_PUSHES, 1);
        self.ops.add(OVERFLOW_POPS, n as i64 - 1);
        if adapts {
            self.adapt_limit(id, popped_since);
        }
        Ok(())
    }

    /// One push attempt into the current CPU's cache, as the fast path makes it.
    fn push_once(&self, seq: Sequences, index: Index, item: usize) -> bool {
        let Some((id, count, slots)) = self.rseq_cache(seq, index) else {
            return false;
        };
        // SAFETY: as in `push_backed`.
        let outcome = unsafe { seq.stack_push_limited(index, id, count, slots, item) };
        matches!(outcome, Outcome::Committed(()))
    }

    /// Gives rseq cache `id` its first limit (the least one, or the capacity when limits do
    /// not adapt) and starts its overflow mark, if it has none yet: whether it had none (another
    /// thread may have set it meanwhile). `false` for indices without an rseq cache.
    fn start_limit(&self, id: usize) -> bool {
        if id >= self.cpus {
            return false;
        }
        let limit = self.caches.limit(id);
        if limit.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let first = limit.compare_exchange(0, self.min_limit, Ordering::Relaxed, Ordering::Relaxed);
        if first.is_ok() {
            self.caches
                .mark(id)
                .store(self.caches.pops(id), Ordering::Relaxed);
        }
        true
    }

    /// Pops from cache `id` since its last overflow ended (or since its limit was set).
    fn popped_since_overflow(&self, id: usize) -> usize {
        let mark = self.caches.mark(id).load(Ordering::Relaxed);
        self.caches.pops(id).wrapping_sub(mark) & caches::POPS_MASK as usize
    }

    /// After an overflow of cache `id`, which saw `popped` pops since the one before, its limit
    /// follows its use:
    /// - callers took at least half a batch from it meanwhile: it is used both ways, and a
    ///   larger one saves trips to the global level, so the limit doubles (up to the capacity);
    /// - it has overflowed a capacity's worth of times in a row with fewer pops: it only
    ///   collects (its CPU frees what others allocate), and what it holds nobody here reuses,
    ///   so the limit halves (down to a batch).
    ///
    /// The second rule waits for a whole capacity of pushes so that a burst of frees that a
    /// larger cache would hold is not taken for collecting. The mark then records the pop count
    /// past this overflow's own pops, and the overflows in a row in its top bits.
    fn adapt_limit(&self, id: usize, popped: usize) {
        let limit = self.caches.limit(id);
        let mark = self.caches.mark(id);
        let now = limit.load(Ordering::Relaxed).max(self.min_limit);
        let in_a_row = mark.load(Ordering::Relaxed) >> caches::POPS_BITS;
        let (next, in_a_row) = if 2 * popped >= self.batch {
            ((2 * now).min(self.capacity), 0)
        } else if (in_a_row + 1) * self.batch >= self.capacity {
            ((now / 2).max(self.min_limit), 0)
        } else {
            (now, in_a_row + 1)
        };
        limit.store(next, Ordering::Relaxed);
        mark.store(
            self.caches.pops(id) | in_a_row << caches::POPS_BITS,
            Ordering::Relaxed,
        );
    }

    /// Where a batch of `n` leaving cache `id` goes, made certain before it leaves so nothing
    /// can be stranded: reserved slots at the global level, or a backing that always takes what
    /// it is given. `None` when neither can take it.
    fn overflow_destination<B: Backing>(
        &self,
        id: usize,
        n: usize,
        backing: B,
    ) -> Option<Destination<'_>> {
        let shard = self.global.shard(id);
        let reserved = if B::SPILLS && shard.len() >= self.shard_limit(backing) {
            None
        } else {
            shard.reserve(n)
        };
        match reserved {
            Some(reserved) => Some(Destination::Global(shard, reserved)),
            None if B::SPILLS => Some(Destination::Backing),
            None => None,
        }
    }

    /// Fills the front of `batch` for an empty cache `id` (an rseq cache when `rseq`, else a
    /// locked one): a batch from the global level (starting with `id`'s shard), else from the
    /// backing; for a backing that [fills before other shards], an rseq cache asks it right
    /// after its own shard. How many (0 when none had any), and where the ones the cache does
    /// not keep go back.
    ///
    /// [fills before other shards]: Backing::fills_before_other_shards
    fn refill_batch<B: Backing>(
        &self,
        id: usize,
        rseq: bool,
        batch: &mut [usize; MAX_CHAIN],
        backing: B,
    ) -> (usize, Destination<'_>) {
        let home = rseq.then_some(id);
        if B::FILLS && rseq && backing.fills_before_other_shards() {
            let shard = self.global.shard(id);
            if let Some((n, slots)) = shard.take_batch(batch) {
                return (n, Destination::Global(shard, slots));
            }
            let n = backing.fill(&mut batch[..self.batch], home);
            if n > 0 {
                return (n, Destination::Park);
            }
            // Out of memory: other shards' items are better than none.
        }
        let taken = self
            .global
            .from(id)
            .find_map(|shard| Some((shard, shard.take_batch(batch)?)));
        match taken {
            Some((shard, (n, slots))) => (n, Destination::Global(shard, slots)),
            None if B::FILLS => (
                backing.fill(&mut batch[..self.batch], home),
                Destination::Park,
            ),
            None => (0, Destination::Park),
        }
    }

    /// Takes a block: from this CPU's cache, else a batch from the global level. `None` when both
    /// are empty (blocks may still sit in other CPUs' caches: see [`Self::drain`]).
    #[inline]
    pub fn pop(&self) -> Option<NonNull<u8>> {
        self.pop_backed(Unbacked)
    }

    /// [`Self::pop`] over `backing`: when the cache and the global level are empty, a batch comes
    /// from [`Backing::fill`].
    #[inline]
    pub(crate) fn pop_backed<B: Backing>(&self, backing: B) -> Option<NonNull<u8>> {
        if let Some((seq, index)) = rseq_path() {
            // Spelled out: see `push_backed`.
            loop {
                let id = seq.current().index(index) as usize;
                if id >= self.rseq_cpus {
                    break;
                }
                let (count, slots) = self.cache(id);
                // SAFETY: as in `push_backed`.
                match unsafe { seq.stack_pop(index, id as u32, count, slots) } {
                    Outcome::Committed(x) => return NonNull::new(x as *mut u8),
                    Outcome::Aborted => continue,
                    Outcome::CompareFailed => return self.refill(backing),
                }
            }
        }
        self.pop_direct(backing)
    }

    /// A pop without rseq: from this CPU's locked cache when its try-lock is free (see
    /// `push_direct`), else past it.
    #[inline(never)]
    fn pop_direct<B: Backing>(&self, backing: B) -> Option<NonNull<u8>> {
        let id = self.fallback_id();
        let Some(word) = self.try_lock(id) else {
            // As in `push_direct`.
            rseq_sys::forget_cpu_hint();
            return self.pop_shared(id, backing);
        };
        let depth = word & STACK_DEPTH_MASK;
        if depth == 0 {
            return self.locked_refill(id, word, backing);
        }
        let slots = self.locked.of(id).1;
        // SAFETY: `0 < depth <= capacity`: a slot of cache `id`, ours while we hold its lock.
        let item = unsafe { slots.add(depth - 1).read() };
        // Unlocks, takes one from the depth and counts the pop, as the pop sequence does.
        let word = (word - STACK_LOCKED - 1).wrapping_add(1 << STACK_POPS_SHIFT);
        self.locked.count(id).store(word, Ordering::Release);
        NonNull::new(item as *mut u8)
    }

    /// Locked cache `id` is empty: take a batch (from the global level, else from below it),
    /// keep one item for the caller and cache the rest (what does not fit goes back). Unlocks.
    #[cold]
    fn locked_refill<B: Backing>(&self, id: usize, word: usize, backing: B) -> Option<NonNull<u8>> {
        self.locked.harvest(id);
        let count = self.locked.count(id);
        let mut batch = [0usize; MAX_CHAIN];
        let (n, rest) = self.refill_batch(id, false, &mut batch, backing);
        if n == 0 {
            count.store(word - STACK_LOCKED, Ordering::Release);
            return None;
        }
        // batch[0] is the caller's; batch[1..kept] go into the empty cache.
        let kept = n.min(self.capacity + 1);
        let cache = self.locked.of(id).1;
        for (i, &item) in batch[1..kept].iter().enumerate() {
            // SAFETY: `i < kept - 1 <= capacity`: a slot of cache `id`, which we hold.
            unsafe { cache.add(i).write(item) };
        }
        count.store(word - STACK_LOCKED + (kept - 1), Ordering::Release);
        rest.send(self, &batch[kept..n], backing);
        self.ops.add(DIRECT_POPS, 1);
        self.ops.add(REFILL_PUSHES, (kept - 1) as i64);
        NonNull::new(batch[0] as *mut u8)
    }

    /// A pop past every cache, from CPU `id`: from the global level (its shard first), or from
    /// below it.
    #[cold]
    fn pop_shared<B: Backing>(&self, id: usize, backing: B) -> Option<NonNull<u8>> {
        let item = match self.global.from(id).find_map(|shard| shard.pop_one()) {
            Some(item) => item,
            None if B::FILLS => {
                let mut batch = [0usize; MAX_CHAIN];
                let n = backing.fill(&mut batch[..self.batch], None);
                if n == 0 {
                    return None;
                }
                self.park(backing, &batch[1..n]);
                batch[0]
            }
            None => return None,
        };
        self.ops.add(DIRECT_POPS, 1);
        NonNull::new(item as *mut u8)
    }

    /// The cache is empty (or locked): take a batch (from the global level, else from below it),
    /// keep one item for the caller and cache the rest; what does not fit goes back into the
    /// batch's own global slots, or to the global level or the backing.
    #[cold]
    fn refill<B: Backing>(&self, backing: B) -> Option<NonNull<u8>> {
        // As in `push_overflow`.
        let Some((seq, index)) = rseq_path() else {
            return self.pop_direct(backing);
        };
        let id = self.harvest_current(seq, index);
        self.start_limit(id);
        let mut batch = [0usize; MAX_CHAIN];
        let (n, rest) = self.refill_batch(id, true, &mut batch, backing);
        if n == 0 {
            return None;
        }
        // batch[0] is the caller's; the rest goes into the cache in one sequence (retried when
        // aborted), pushed last to first so that batch[1] ends on top and leaves next. What
        // does not fit (the cache filled meanwhile) goes back where the batch came from.
        batch[1..n].reverse();
        let mut placed = 1; // batch[placed..n] still need a home
        while placed < n {
            let Some((id, count, cache)) = self.rseq_cache(seq, index) else {
                break;
            };
            let limit = self.caches.limit(id as usize).load(Ordering::Relaxed);
            // SAFETY: as in `push_backed`.
            match unsafe { seq.stack_push_many(index, id, count, cache, limit, &batch[placed..n]) }
            {
                Outcome::Committed(pushed) => placed += pushed,
                Outcome::Aborted => continue,
                Outcome::CompareFailed => break,
            }
        }
        rest.send(self, &batch[placed..n], backing);
        self.ops.add(DIRECT_POPS, 1);
        self.ops.add(REFILL_PUSHES, (placed - 1) as i64);
        NonNull::new(batch[0] as *mut u8)
    }

    /// Puts fresh items from the backing at the global level, or back into the backing when the
    /// global level has no memory for them.
    fn park<B: Backing>(&self, backing: B, items: &[usize]) {
        let shard = self.global.local();
        for chunk in items.chunks(MAX_CHAIN) {
            if shard.push_items(chunk).is_err() {
                backing.spill(chunk);
            }
        }
    }

    /// Moves one batch from the global level into `out` (at least [`MAX_CHAIN`] long): how many.
    /// With [`Self::drain`] first, repeating this until 0 empties the freelist of everything
    /// pushed before the drain. Not counted as pops: the items leave the freelist for its
    /// backing (the allocator's trim), not for a caller.
    pub(crate) fn pop_global_batch(&self, out: &mut [usize]) -> usize {
        for shard in self.global.from(0) {
            if let Some((n, slots)) = shard.take_batch(out) {
                shard.fill_reserved(slots, &[]);
                return n;
            }
        }
        0
    }

    /// The transfer length one shard may reach before overflow spills to the backing: the
    /// backing's limit shared among the shards.
    fn shard_limit<B: Backing>(&self, backing: B) -> usize {
        match backing.global_limit() {
            0 => 0,
            limit => (limit / self.global.count()).max(MAX_CHAIN),
        }
    }

    /// Pushes and pops so far, and where the items are. Allocates nothing.
    ///
    /// Pops are counted in each cache's count word by the pop sequence itself, 48 bits wide;
    /// each call (and each refill or overflow on that CPU) folds them into 64-bit totals, so
    /// counts stay exact as long as one of those happens before a CPU pops 2^48 times from one
    /// freelist (about 9 days of nothing else at 3 ns a pop).
    pub fn stats(&self) -> FreeListStats {
        let (mut cache_pops, mut depths) = (0u64, 0u64);
        for caches in [&self.caches, &self.locked] {
            for id in 0..self.cpus {
                cache_pops += caches.harvest(id);
                depths += caches.depth(id, self.capacity) as u64;
            }
        }
        let ops = self.ops.sums().map(|n| n as u64);
        // Every item a cache ever got is still there, was popped, or was drained.
        let cache_pushes = depths + cache_pops + ops[DRAINED];
        FreeListStats {
            pushes: (cache_pushes + ops[DIRECT_PUSHES]).saturating_sub(ops[REFILL_PUSHES]),
            pops: (cache_pops + ops[DIRECT_POPS]).saturating_sub(ops[OVERFLOW_POPS]),
            cached: depths as usize,
            global: self.global.len(),
        }
    }

    /// Takes a block from the global level only, never refilling a cache: after [`Self::drain`],
    /// popping this until `None` yields every item the caches and the global level held, wherever
    /// the calling thread runs meanwhile (a plain [`Self::pop`] parks refilled items in the
    /// current CPU's cache, which a migrating thread would leave behind).
    pub fn pop_global(&self) -> Option<NonNull<u8>> {
        let item = self.global.from(0).find_map(|shard| shard.pop_one())?;
        self.ops.add(DIRECT_POPS, 1);
        NonNull::new(item as *mut u8)
    }

    /// Moves every CPU's cache to the global level, so any thread's pops can reach every item.
    /// Safe while other threads push and pop: they overflow and refill through the global level
    /// while the caches are locked.
    pub fn drain(&self) -> Result<FenceMethod, FreeListError> {
        let count = |id| self.caches.count(id);
        for id in 0..self.cpus {
            count(id).fetch_or(STACK_LOCKED, Ordering::AcqRel);
        }
        let method = loop {
            let method = match rseq_sys::fence_all_cpus() {
                Ok(method) => method,
                Err(e) => {
                    for id in 0..self.cpus {
                        count(id).fetch_and(!STACK_LOCKED, Ordering::AcqRel);
                    }
                    return Err(FreeListError::Fence(e));
                }
            };
            // A sequence that read the count before the lock may have committed over it before
            // the fence: lock again and fence again until every lock held through a fence.
            let mut all_held = true;
            for id in 0..self.cpus {
                if count(id).load(Ordering::Acquire) & STACK_LOCKED == 0 {
                    count(id).fetch_or(STACK_LOCKED, Ordering::AcqRel);
                    all_held = false;
                }
            }
            if all_held {
                break method;
            }
        };
        let mut result = Ok(method);
        for id in 0..self.cpus {
            // Ours now: every sequence fails on the locked count until the store below.
            let word = count(id).load(Ordering::Acquire);
            if let Err(e) = self.drain_cache(&self.caches, id, word) {
                result = Err(e);
            }
        }
        // The locked caches: their holders never wait, so waiting for each lock is short, unless
        // the holder does not exist (a lock copied held into a `fork` child).
        for id in 0..self.cpus {
            let drained = match self.lock_within(id, Some(DRAIN_PATIENCE)) {
                Some(word) => self.drain_cache(&self.locked, id, word),
                None => Err(FreeListError::CacheBusy),
            };
            if let Err(e) = drained {
                result = Err(e);
            }
        }
        result
    }

    /// Moves cache `id` of `caches` (its count word, locked, is `word`) to the global level, and
    /// unlocks it with whatever could not move (only when the global level has no memory).
    fn drain_cache(&self, caches: &Caches, id: usize, word: usize) -> Result<(), FreeListError> {
        let depth = (word & STACK_DEPTH_MASK).min(self.capacity);
        let mut n = depth;
        let slots = caches.of(id).1;
        let mut result = Ok(());
        while n > 0 {
            let take = n.min(MAX_CHAIN);
            // SAFETY: the cache is locked, so slots[..n] are stable and ours to read.
            let items = unsafe { core::slice::from_raw_parts(slots.add(n - take), take) };
            if self.global.shard(id).push_items(items).is_err() {
                result = Err(FreeListError::OutOfMemory);
                break;
            }
            n -= take;
        }
        // Keep the pop count; unlock with what is left.
        caches.count(id).store(
            word & !(STACK_DEPTH_MASK | STACK_LOCKED) | n,
            Ordering::Release,
        );
        self.ops.add(DRAINED, (depth - n) as i64);
        result
    }

    /// Hands every item to `f`, emptying the freelist: for `Drop`, where `&mut` proves no other
    /// thread (and so no sequence) can touch it.
    pub(crate) fn take_all(&mut self, mut f: impl FnMut(NonNull<u8>)) {
        for caches in [&self.caches, &self.locked] {
            for id in 0..self.cpus {
                let (count, slots) = caches.of(id);
                // SAFETY: exclusive access: drains and locked-cache holders borrow `&self` and
                // have finished (a lock bit `fork` copied in is cleared below); the depth is at
                // most the capacity.
                let n = unsafe { *count } & STACK_DEPTH_MASK;
                for i in 0..n.min(self.capacity) {
                    // SAFETY: `i < capacity`, inside the cache.
                    let item = unsafe { *slots.add(i) };
                    if let Some(block) = NonNull::new(item as *mut u8) {
                        f(block);
                    }
                }
                // SAFETY: exclusive access.
                unsafe { *count &= !(STACK_DEPTH_MASK | STACK_LOCKED) };
            }
        }
        while let Some(item) = self.global.from(0).find_map(|shard| shard.pop_one()) {
            if let Some(block) = NonNull::new(item as *mut u8) {
                f(block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cpus::pin;

    fn block(n: usize) -> NonNull<u8> {
        NonNull::new((n * 16) as *mut u8).unwrap()
    }

    #[test]
    fn bad_capacities_are_refused() {
        assert_eq!(
            RawFreeList::new(0).unwrap_err(),
            FreeListError::BadCapacity(0)
        );
        let too_big = MAX_CAPACITY_PER_CPU + 1;
        assert_eq!(
            RawFreeList::new(too_big).unwrap_err(),
            FreeListError::BadCapacity(too_big)
        );
    }

    #[test]
    fn every_item_comes_back_exactly_once_through_overflow_and_refill() {
        let list = RawFreeList::new(8).unwrap();
        for n in 1..=1000 {
            list.push(block(n)).unwrap();
        }
        let mut seen = Vec::new();
        while let Some(b) = list.pop() {
            seen.push(b.as_ptr() as usize / 16);
        }
        list.drain().unwrap();
        while let Some(b) = list.pop_global() {
            seen.push(b.as_ptr() as usize / 16);
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_pop_past_the_caches_finds_items_in_other_cpus_shards() {
        std::thread::spawn(|| {
            let list = RawFreeList::new(8).unwrap();
            if list.global.count() < 2 || !pin(0) {
                return; // One shard: nothing to look across.
            }
            for n in 1..=3 {
                list.push_shared(list.fallback_id(), n * 16, Unbacked)
                    .unwrap();
            }
            assert!(pin(1), "CPU 1 exists when there are two shards");
            let mut got: Vec<usize> =
                std::iter::from_fn(|| list.pop_shared(list.fallback_id(), Unbacked))
                    .map(|b| b.as_ptr() as usize / 16)
                    .collect();
            got.sort_unstable();
            assert_eq!(got, [1, 2, 3], "items pushed on CPU 0 popped from CPU 1");
        })
        .join()
        .unwrap();
    }

    /// Runs `f` on a thread pinned to CPU 0 (the locked cache it uses is then cache 0).
    fn on_cpu0(f: impl FnOnce() + Send) {
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(pin(0), "CPU 0 is always allowed here");
                f();
            });
        });
    }

    #[test]
    fn threads_without_rseq_use_their_cpus_locked_cache_last_in_first_out() {
        let list = RawFreeList::new(8).unwrap();
        on_cpu0(|| {
            for n in 1..=3 {
                list.push_direct(n * 16, Unbacked).unwrap();
            }
            assert_eq!(list.locked.depth(0, list.capacity), 3);
            assert_eq!((list.caches.depth(0, 8), list.global.len()), (0, 0));
            let got: Vec<usize> = std::iter::from_fn(|| list.pop_direct(Unbacked))
                .map(|b| b.as_ptr() as usize / 16)
                .collect();
            assert_eq!(got, [3, 2, 1]);
            let stats = list.stats();
            assert_eq!((stats.pushes, stats.pops, stats.cached), (3, 3, 0));
        });
    }

    #[test]
    fn a_locked_cache_held_by_another_thread_is_passed_not_waited_for() {
        let list = RawFreeList::new(8).unwrap();
        on_cpu0(|| {
            let word = list.try_lock(0).expect("free at first");
            assert_eq!(list.try_lock(0), None, "a held lock cannot be taken again");
            list.push_direct(16, Unbacked).unwrap();
            assert_eq!(list.global.len(), 1, "went past the held cache");
            assert_eq!(list.pop_direct(Unbacked), Some(block(1)));
            list.locked
                .count(0)
                .store(word - STACK_LOCKED, Ordering::Release);
            list.push_direct(32, Unbacked).unwrap();
            assert_eq!((list.locked.depth(0, 8), list.global.len()), (1, 0));
        });
    }

    #[test]
    fn locked_caches_overflow_refill_and_drain_losing_nothing() {
        let list = RawFreeList::new(8).unwrap();
        on_cpu0(|| {
            for n in 1..=1000 {
                list.push_direct(n * 16, Unbacked).unwrap();
            }
            let mid = list.stats();
            assert_eq!((mid.pushes, mid.pops), (1000, 0));
            assert_eq!(
                (mid.cached, mid.global),
                (8, 992),
                "a full cache, the rest global"
            );
            let mut seen: Vec<usize> = (0..600)
                .map(|_| list.pop_direct(Unbacked).unwrap().as_ptr() as usize / 16)
                .collect();
            let stats = list.stats();
            assert_eq!((stats.pushes, stats.pops), (1000, 600));
            assert_eq!(stats.cached + stats.global, 400);
            // A drain waits for a holder, then empties the locked caches too.
            let word = list.try_lock(0).unwrap();
            std::thread::scope(|s| {
                let drain = s.spawn(|| list.drain().unwrap());
                std::thread::sleep(DRAIN_PATIENCE / 5);
                assert!(!drain.is_finished(), "the drain waits for the held lock");
                list.locked
                    .count(0)
                    .store(word - STACK_LOCKED, Ordering::Release);
                drain.join().unwrap();
            });
            assert_eq!(list.stats().cached, 0);
            seen.extend(std::iter::from_fn(|| list.pop_global()).map(|b| b.as_ptr() as usize / 16));
            seen.sort_unstable();
            assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
            let end = list.stats();
            assert_eq!(
                (end.pushes, end.pops, end.cached, end.global),
                (1000, 1000, 0, 0)
            );
        });
    }

    #[test]
    fn a_drain_leaves_a_cache_locked_for_too_long_and_says_so() {
        let list = RawFreeList::new(8).unwrap();
        on_cpu0(|| {
            for n in 1..=20 {
                list.push_direct(n * 16, Unbacked).unwrap();
            }
            let (cached, global) = (list.locked.depth(0, 8), list.global.len());
            assert!(cached > 0 && global > 0);
            // Held past the drain's patience, as by a thread fork did not copy.
            let word = list.try_lock(0).unwrap();
            assert_eq!(list.drain(), Err(FreeListError::CacheBusy));
            assert_eq!(
                list.locked.count(0).load(Ordering::Relaxed),
                word,
                "left as it was"
            );
            list.locked
                .count(0)
                .store(word - STACK_LOCKED, Ordering::Release);
            let mut popped: Vec<usize> = std::iter::from_fn(|| list.pop_global())
                .map(|b| b.as_ptr() as usize / 16)
                .collect();
            assert_eq!(popped.len(), global);
            assert!(list.drain().is_ok());
            popped
                .extend(std::iter::from_fn(|| list.pop_global()).map(|b| b.as_ptr() as usize / 16));
            popped.sort_unstable();
            assert_eq!(popped, (1..=20).collect::<Vec<_>>());
        });
    }

    #[test]
    fn stats_count_every_push_and_pop_through_every_path() {
        let list = RawFreeList::new(8).unwrap();
        // Overflows (cache full) and refills (cache empty) move batches both ways.
        for n in 1..=1000 {
            list.push(block(n)).unwrap();
        }
        let mid = list.stats();
        assert_eq!((mid.pushes, mid.pops), (1000, 0));
        assert_eq!(mid.cached + mid.global, 1000);
        for _ in 0..600 {
            list.pop().unwrap();
        }
        for n in 1..=50 {
            list.push(block(n)).unwrap();
        }
        let stats = list.stats();
        assert_eq!((stats.pushes, stats.pops), (1050, 600));
        assert_eq!(stats.cached + stats.global, 450);
        // A drain moves items without pushing or popping.
        list.drain().unwrap();
        let drained = list.stats();
        assert_eq!((drained.pushes, drained.pops), (1050, 600));
        assert_eq!((drained.cached, drained.global), (0, 450));
        while list.pop_global().is_some() {}
        assert_eq!(list.stats().global, 0);
    }

    #[test]
    fn harvest_folds_the_48_bit_pop_count_into_64_bits() {
        let list = RawFreeList::new(8).unwrap();
        let count = list.caches.count(0);
        // Pops counted in the word: 5, then the word wraps past 2^48 to 3.
        count.store(5 << STACK_POPS_SHIFT, Ordering::Relaxed);
        assert_eq!(list.caches.harvest(0), 5);
        count.store(
            (caches::POPS_MASK as usize) << STACK_POPS_SHIFT,
            Ordering::Relaxed,
        );
        assert_eq!(list.caches.harvest(0), caches::POPS_MASK);
        count.store(3 << STACK_POPS_SHIFT, Ordering::Relaxed);
        assert_eq!(list.caches.harvest(0), caches::POPS_MASK + 4);
        count.store(0, Ordering::Relaxed);
    }

    #[test]
    fn drain_makes_other_cpus_items_reachable() {
        let list = RawFreeList::new(16).unwrap();
        // Park items in this CPU's cache only (fewer than the capacity: no overflow).
        for n in 1..=10 {
            list.push(block(n)).unwrap();
        }
        list.drain().unwrap();
        // Every cache is empty now: the items wait at the global level.
        for id in 0..list.cpus {
            assert_eq!(list.caches.depth(id, list.capacity), 0, "cache {id}");
        }
        let mut popped: Vec<usize> = std::iter::from_fn(|| list.pop_global())
            .map(|b| b.as_ptr() as usize / 16)
            .collect();
        popped.sort_unstable();
        assert_eq!(popped, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn take_all_empties_caches_and_global() {
        let mut list = RawFreeList::new(4).unwrap();
        for n in 1..=50 {
            list.push(block(n)).unwrap();
        }
        let mut seen = Vec::new();
        list.take_all(|b| seen.push(b.as_ptr() as usize / 16));
        seen.sort_unstable();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        assert_eq!(list.pop(), None);
    }
}
