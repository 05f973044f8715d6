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
//! level; a pop from an empty cache takes a batch back. So a producer that only frees and a
//! consumer that only allocates, on different CPUs, each pay one global operation per batch,
//! not per item. The global level (`global.rs`) is lock-free and allocation-free, and split into
//! shards, one per CPU up to 16: batches go to the shard of the CPU they leave, and a pop that
//! finds its own shard empty looks at the others before reporting empty.
//!
//! The count word of each cache also counts its pops (see [`rseq_sys::STACK_LOCKED`]), so
//! [`RawFreeList::stats`] is exact without adding a single instruction to push or pop.
//!
//! # Without rseq
//! Threads without rseq (or all threads under `PERCPU_FORCE_FALLBACK=1`) push and pop at the
//! global level directly, on the shard of the CPU `sched_getcpu()` reports, so they contend
//! only with threads on the same CPU. They never write a per-CPU cache: a cache's commits are
//! plain stores, which an atomic write from another CPU could be lost under. Threads of both
//! kinds can share one freelist.
//!
//! # Draining
//! Items parked in one CPU's cache are invisible to pops on other CPUs until
//! [`RawFreeList::drain`] moves every cache to the global level. It locks each cache by setting
//! the top bit of its count ([`rseq_sys::STACK_LOCKED`]: sequences then read the cache as full
//! and empty), fences every CPU ([`rseq_sys::fence_all_cpus`]: membarrier, or visiting each CPU)
//! so no sequence that read the old count can still commit, re-locks any cache a commit slipped
//! past the lock, and then owns the caches until it stores their new counts.
//!
//! Nothing here calls the global allocator: caches and the global level live in `mmap`ed memory.

pub(crate) mod caches;
pub(crate) mod global;
mod typed;

pub use typed::{FreeList, Pool, Pooled};

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rseq_sys::{
    FenceMethod, Index, Outcome, STACK_DEPTH_MASK, STACK_LOCKED, STACK_POPS_SHIFT, Sequences,
};

use crate::counter::RawCounters;
use crate::mode::{forced_fallback, rseq_path};
pub(crate) use caches::CacheArena;
use caches::Caches;
pub(crate) use global::MAX_CHAIN;
use global::{Global, Shards};

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
    /// Global-level length from which overflow spills instead of staying at the global level.
    fn global_limit(&self) -> usize;
    /// Takes `items` (at most [`MAX_CHAIN`]) for good. Must not fail: callers have already
    /// taken them out of the caches.
    fn spill(&self, items: &[usize]);
    /// Fills the front of `out` with new items: how many (0 when out of memory).
    fn fill(&self, out: &mut [usize]) -> usize;
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
    fn fill(&self, _: &mut [usize]) -> usize {
        0
    }
}

/// A per-CPU freelist of non-null addresses (memory blocks), safe to use from many threads.
///
/// It never reads or writes the blocks: any non-null address goes in and comes back out
/// unchanged, exactly once. Ownership of what the address points to is the caller's business
/// (see [`FreeList`] for a typed, owning layer).
pub struct RawFreeList {
    caches: Caches,
    /// Possible CPUs: caches exist for indices below this.
    cpus: usize,
    /// Indices below this use their cache: `cpus`, or 0 under `PERCPU_FORCE_FALLBACK=1`.
    rseq_cpus: usize,
    capacity: usize,
    /// Items moved per overflow or refill.
    batch: usize,
    /// The global level, one shard per CPU (up to 16).
    global: Shards,
    /// Operations that bypass the count words' pop counting (see [`FreeListStats`]).
    ops: RawCounters<OP_COUNTERS>,
}

/// Cold-path operation counters of a freelist, indices into `RawFreeList::ops`.
const DIRECT_PUSHES: usize = 0; // pushes that went past the caches
const DIRECT_POPS: usize = 1; // pops served from past the caches
const OVERFLOW_POPS: usize = 2; // cache pops that moved items down, not to a caller
const REFILL_PUSHES: usize = 3; // cache pushes that moved items up, not from a caller
const DRAINED: usize = 4; // items a drain took out of caches
const OP_COUNTERS: usize = 5;

/// Bits of pop count a count word holds: harvest at least this often per CPU.
const POPS_BITS: u32 = usize::BITS - STACK_POPS_SHIFT;
const POPS_MASK: u64 = (1 << POPS_BITS) - 1;

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
        RawFreeList::with_caches(caches, cpus, capacity_per_cpu)
    }

    /// A freelist whose caches are list `list` of `arena`, made for possible CPUs with
    /// `capacity_per_cpu` slots for that list.
    ///
    /// # Safety
    /// The arena outlives the freelist, and no other freelist uses list `list` of it.
    pub(crate) unsafe fn in_arena(
        arena: &CacheArena,
        list: usize,
        capacity_per_cpu: usize,
    ) -> Result<RawFreeList, FreeListError> {
        if !(1..=MAX_CAPACITY_PER_CPU).contains(&capacity_per_cpu) {
            return Err(FreeListError::BadCapacity(capacity_per_cpu));
        }
        // SAFETY: forwarded contract.
        let caches = unsafe { arena.caches(list) };
        RawFreeList::with_caches(caches, rseq_sys::possible_cpus() as usize, capacity_per_cpu)
    }

    fn with_caches(
        caches: Caches,
        cpus: usize,
        capacity_per_cpu: usize,
    ) -> Result<RawFreeList, FreeListError> {
        let global = Shards::new(cpus).ok_or(FreeListError::OutOfMemory)?;
        Ok(RawFreeList {
            caches,
            cpus,
            rseq_cpus: if forced_fallback() { 0 } else { cpus },
            capacity: capacity_per_cpu,
            batch: (capacity_per_cpu / 2).clamp(1, MAX_CHAIN),
            global,
            ops: RawCounters::new(),
        })
    }

    /// The per-CPU capacity.
    pub fn capacity_per_cpu(&self) -> usize {
        self.capacity
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
            self.harvest(id);
        }
        id
    }

    /// Cache `id`'s pops so far, in 64 bits: the count word's 48-bit pop count folded into a
    /// running total, which any thread may advance.
    fn harvest(&self, id: usize) -> u64 {
        debug_assert!(id < self.cpus);
        // SAFETY: cache `id`'s harvested word, aligned; only ever accessed atomically.
        let harvested = unsafe { AtomicU64::from_ptr(self.caches.harvested(id)) };
        let mut total = harvested.load(Ordering::Relaxed);
        loop {
            let pops = (self.count(id).load(Ordering::Relaxed) >> STACK_POPS_SHIFT) as u64;
            let delta = pops.wrapping_sub(total) & POPS_MASK;
            if delta == 0 {
                return total;
            }
            match harvested.compare_exchange_weak(
                total,
                total + delta,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return total + delta,
                Err(now) => total = now,
            }
        }
    }

    fn count(&self, id: usize) -> &AtomicUsize {
        // SAFETY: the count is an aligned usize inside the mapping; other threads write it only
        // with single aligned stores (commits), so atomic access is sound.
        unsafe { AtomicUsize::from_ptr(self.cache(id).0) }
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
            loop {
                let id = seq.current().index(index) as usize;
                if id >= self.rseq_cpus {
                    break;
                }
                let (count, slots) = self.cache(id);
                // SAFETY: the cache of `id`, written only by sequences on `id` (or by a drain
                // that locked it first).
                match unsafe { seq.stack_push(index, id as u32, count, slots, self.capacity, item) }
                {
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

    /// A push past the caches: to the global level, or below it.
    #[cold]
    fn push_direct<B: Backing>(&self, item: usize, backing: B) -> Result<(), ()> {
        let shard = self.global.local();
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

    /// The cache is full (or locked by a drain): move `item` and a batch from the cache to the
    /// global level (or below it), with the destination made certain first so nothing can be
    /// stranded: reserved global slots, or a backing that always takes what it is given.
    #[cold]
    fn push_overflow<B: Backing>(&self, item: usize, backing: B) -> Result<(), ()> {
        // Found again here rather than passed, so the fast path keeps nothing around for it.
        let Some((seq, index)) = rseq_path() else {
            return self.push_direct(item, backing);
        };
        let shard = self.global.shard(self.harvest_current(seq, index));
        let reserved = if B::SPILLS && shard.len() >= self.shard_limit(backing) {
            None
        } else {
            shard.reserve(self.batch)
        };
        if reserved.is_none() && !B::SPILLS {
            return Err(());
        }
        let mut batch = [0usize; MAX_CHAIN];
        batch[0] = item;
        let mut n = 1;
        while n < self.batch {
            let id = seq.current().index(index) as usize;
            if id >= self.rseq_cpus {
                break;
            }
            let (count, slots) = self.cache(id);
            // SAFETY: as in `push_backed`.
            match unsafe { seq.stack_pop(index, id as u32, count, slots) } {
                Outcome::Committed(x) => {
                    batch[n] = x;
                    n += 1;
                }
                Outcome::Aborted => continue,
                Outcome::CompareFailed => break,
            }
        }
        match reserved {
            Some(reserved) => shard.fill_reserved(reserved, &batch[..n]),
            None => backing.spill(&batch[..n]),
        }
        self.ops.add(DIRECT_PUSHES, 1);
        self.ops.add(OVERFLOW_POPS, n as i64 - 1);
        Ok(())
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

    /// A pop past the caches: from the global level, or from below it.
    #[cold]
    fn pop_direct<B: Backing>(&self, backing: B) -> Option<NonNull<u8>> {
        let local = rseq_sys::sched_getcpu().unwrap_or(0) as usize;
        let item = match self.global.from(local).find_map(Global::pop_one) {
            Some(item) => item,
            None if B::FILLS => {
                let mut batch = [0usize; MAX_CHAIN];
                let n = backing.fill(&mut batch[..self.batch]);
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
        let mut batch = [0usize; MAX_CHAIN];
        let taken = self
            .global
            .from(id)
            .find_map(|shard| Some((shard, shard.take_batch(&mut batch)?)));
        let (n, slots) = match taken {
            Some((shard, (n, slots))) => (n, Some((shard, slots))),
            None if B::FILLS => match backing.fill(&mut batch[..self.batch]) {
                0 => return None,
                n => (n, None),
            },
            None => return None,
        };
        let mut unplaced = n; // batch[1..unplaced] still need a home
        while unplaced > 1 {
            let id = seq.current().index(index) as usize;
            if id >= self.rseq_cpus {
                break;
            }
            let (count, cache) = self.cache(id);
            // SAFETY: as in `push_backed`.
            match unsafe {
                seq.stack_push(
                    index,
                    id as u32,
                    count,
                    cache,
                    self.capacity,
                    batch[unplaced - 1],
                )
            } {
                Outcome::Committed(()) => unplaced -= 1,
                Outcome::Aborted => continue,
                Outcome::CompareFailed => break,
            }
        }
        match slots {
            Some((shard, slots)) => shard.fill_reserved(slots, &batch[1..unplaced]),
            None => self.park(backing, &batch[1..unplaced]),
        }
        self.ops.add(DIRECT_POPS, 1);
        self.ops.add(REFILL_PUSHES, (n - unplaced) as i64);
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
        (backing.global_limit() / self.global.count()).max(MAX_CHAIN)
    }

    /// Cache `id`'s depth.
    fn depth(&self, id: usize) -> usize {
        (self.count(id).load(Ordering::Relaxed) & STACK_DEPTH_MASK).min(self.capacity)
    }

    /// Pushes and pops so far, and where the items are. Allocates nothing.
    ///
    /// Pops are counted in each cache's count word by the pop sequence itself, 48 bits wide;
    /// each call (and each refill or overflow on that CPU) folds them into 64-bit totals, so
    /// counts stay exact as long as one of those happens before a CPU pops 2^48 times from one
    /// freelist (about 9 days of nothing else at 3 ns a pop).
    pub fn stats(&self) -> FreeListStats {
        let (mut cache_pops, mut depths) = (0u64, 0u64);
        for id in 0..self.cpus {
            cache_pops += self.harvest(id);
            depths += self.depth(id) as u64;
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
        let item = self.global.from(0).find_map(Global::pop_one)?;
        self.ops.add(DIRECT_POPS, 1);
        NonNull::new(item as *mut u8)
    }

    /// Moves every CPU's cache to the global level, so any thread's pops can reach every item.
    /// Safe while other threads push and pop: they overflow and refill through the global level
    /// while the caches are locked.
    pub fn drain(&self) -> Result<FenceMethod, FreeListError> {
        for id in 0..self.cpus {
            self.count(id).fetch_or(STACK_LOCKED, Ordering::AcqRel);
        }
        let method = loop {
            let method = match rseq_sys::fence_all_cpus() {
                Ok(method) => method,
                Err(e) => {
                    for id in 0..self.cpus {
                        self.count(id).fetch_and(!STACK_LOCKED, Ordering::AcqRel);
                    }
                    return Err(FreeListError::Fence(e));
                }
            };
            // A sequence that read the count before the lock may have committed over it before
            // the fence: lock again and fence again until every lock held through a fence.
            let mut all_held = true;
            for id in 0..self.cpus {
                if self.count(id).load(Ordering::Acquire) & STACK_LOCKED == 0 {
                    self.count(id).fetch_or(STACK_LOCKED, Ordering::AcqRel);
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
            let word = self.count(id).load(Ordering::Acquire);
            let depth = (word & STACK_DEPTH_MASK).min(self.capacity);
            let mut n = depth;
            let slots = self.cache(id).1;
            while n > 0 && result.is_ok() {
                let take = n.min(MAX_CHAIN);
                // SAFETY: the cache is locked, so slots[..n] are stable and ours to read.
                let items = unsafe { core::slice::from_raw_parts(slots.add(n - take), take) };
                match self.global.shard(id).push_items(items) {
                    Ok(()) => n -= take,
                    Err(()) => result = Err(FreeListError::OutOfMemory),
                }
            }
            // Keep the pop count; unlock with what is left.
            self.count(id).store(
                word & !(STACK_DEPTH_MASK | STACK_LOCKED) | n,
                Ordering::Release,
            );
            self.ops.add(DRAINED, (depth - n) as i64);
        }
        result
    }

    /// Hands every item to `f`, emptying the freelist: for `Drop`, where `&mut` proves no other
    /// thread (and so no sequence) can touch it.
    pub(crate) fn take_all(&mut self, mut f: impl FnMut(NonNull<u8>)) {
        for id in 0..self.cpus {
            let (count, slots) = self.cache(id);
            // SAFETY: exclusive access; the count is at most the capacity (never locked here,
            // since drains hold `&self` and have finished).
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
        while let Some(item) = self.global.from(0).find_map(Global::pop_one) {
            if let Some(block) = NonNull::new(item as *mut u8) {
                f(block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Pins the calling thread to `cpu`; false if it may not run there.
    fn pin(cpu: usize) -> bool {
        // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set) == 0
        }
    }

    #[test]
    fn a_pop_past_the_caches_finds_items_in_other_cpus_shards() {
        std::thread::spawn(|| {
            let list = RawFreeList::new(8).unwrap();
            if list.global.count() < 2 || !pin(0) {
                return; // One shard: nothing to look across.
            }
            for n in 1..=3 {
                list.push_direct(n * 16, Unbacked).unwrap();
            }
            assert!(pin(1), "CPU 1 exists when there are two shards");
            let mut got: Vec<usize> = std::iter::from_fn(|| list.pop_direct(Unbacked))
                .map(|b| b.as_ptr() as usize / 16)
                .collect();
            got.sort_unstable();
            assert_eq!(got, [1, 2, 3], "items pushed on CPU 0 popped from CPU 1");
        })
        .join()
        .unwrap();
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
        let count = list.count(0);
        // Pops counted in the word: 5, then the word wraps past 2^48 to 3.
        count.store(5 << STACK_POPS_SHIFT, Ordering::Relaxed);
        assert_eq!(list.harvest(0), 5);
        count.store((POPS_MASK as usize) << STACK_POPS_SHIFT, Ordering::Relaxed);
        assert_eq!(list.harvest(0), POPS_MASK);
        count.store(3 << STACK_POPS_SHIFT, Ordering::Relaxed);
        assert_eq!(list.harvest(0), POPS_MASK + 4);
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
            assert_eq!(list.depth(id), 0, "cache {id}");
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
