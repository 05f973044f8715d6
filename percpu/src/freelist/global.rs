//! The global level: lock-free stacks of chains of slots, allocation-free and ABA-safe.
//!
//! Items (block addresses) sit six to a 64-byte slot, slots addressed by 32-bit indices. A chain
//! is a linked run of slots (`next`); its first slot records its length and the chain below it
//! on a stack (`next_chain`). Each level (a shard of one freelist's global level) has two stacks
//! of chains:
//!
//! - `full`: batches of items, each at most [`MAX_CHAIN`] long, packed in order into their
//!   chain's slots (item `i` in slot `i / SLOT_ITEMS`); lengths count items;
//! - `free`: slots holding nothing, ready to carry items; lengths count slots.
//!
//! Each stack's head is one `AtomicU64`: the first chain's index in the low half, a tag in the
//! high half that every successful push and pop increments. A pop that read the head, was
//! preempted while the same chain was popped and pushed back (ABA), fails its compare-exchange on
//! the tag instead of installing a stale `next_chain`. Slots are never unmapped while the pool
//! lives, so reading a stale slot is harmless; 2^32 head changes during one preemption would be
//! needed to fool the tag.
//!
//! # The pool
//! Levels take their slots from a [`SlotPool`], shared by every shard of a freelist and, in the
//! slab allocator, by every class: its slots lie in chunks handed out from the front as first
//! needed, and a level takes fresh ones only when its own `free` stack is empty, keeping them
//! from then on. So the memory the levels touch is the sum of their largest holdings, packed
//! together, rather than a page or more for every level that ever held an item (on 2 CPUs a
//! producer/consumer program uses 34 of the slab allocator's 102 levels; see BENCHMARKS.md).
//! The pool also holds the levels' stack heads, two cache lines per level, each freelist's
//! shards side by side: a program using a few size classes touches their heads only.
//!
//! Everything here is plain atomics over `mmap`ed memory: no global allocator, no locks, so
//! threads without rseq use it directly and a global allocator can build on it.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::storage::{Mapping, round_up};

/// End of a chain or of a stack.
const NIL: u32 = u32::MAX;
const CHUNK_SHIFT: u32 = 8;
const CHUNK_SLOTS: usize = 1 << CHUNK_SHIFT;
/// Chunks of 256 slots (16 KiB of address space, a page of which is touched per 64 slots used):
/// up to 16 M slots, 100 M items, per pool.
const MAX_CHUNKS: usize = 1 << 16;
/// Longest chain on the `full` stack: the most items one batch move carries.
pub(crate) const MAX_CHAIN: usize = 64;
/// Items per slot: six words and the links fill a cache line, so an item held costs 11 bytes
/// of slot in a full batch (a slot per item cost 32).
const SLOT_ITEMS: usize = 6;

/// Slots that carry `items` items.
const fn slots_for(items: u32) -> u32 {
    items.div_ceil(SLOT_ITEMS as u32)
}

#[repr(C, align(64))]
struct Slot {
    /// The blocks this slot carries (meaningless on the `free` stack).
    items: [AtomicUsize; SLOT_ITEMS],
    /// Next slot of the chain, or NIL.
    next: AtomicU32,
    /// Length of the chain starting here, in items on `full` and slots on `free` (first slots
    /// only).
    len: AtomicU32,
    /// The chain below on a stack (first slots only).
    next_chain: AtomicU32,
    /// Length of this chain and every chain below it (first slots only): the stack's length,
    /// read from its top without a shared counter.
    depth: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Slot>() == 64);

/// A head holds its first slot XOR NIL, so zeroed memory is an empty stack: a level whose
/// freelist is never used costs no touched page.
const fn pack(tag: u32, first: u32) -> u64 {
    ((tag as u64) << 32) | (first ^ NIL) as u64
}

const fn first_of(head: u64) -> u32 {
    head as u32 ^ NIL
}

const fn tag_of(head: u64) -> u32 {
    (head >> 32) as u32
}

/// One level's two Treiber stacks of chains with tagged heads, together (the operations that
/// use one use the other: a batch moved in takes slots from `free` and pushes onto `full`, from
/// the same thread) and alone on a pair of cache lines (adjacent-line prefetch makes 64-byte
/// separation share in practice), as other CPUs use the levels beside it.
#[repr(C, align(128))]
struct Heads {
    full: AtomicU64,
    free: AtomicU64,
}

/// The start of a pool's mapping; the levels' heads follow it, from [`HEADS_AT`].
#[repr(C)]
struct PoolHeader {
    /// The first slot never handed out: slots below it belong to levels (on their stacks or
    /// taken), slots from it on are untouched. Only grows; on a line of its own, as every level
    /// of the pool may claim slots.
    fresh: CachePadded<AtomicU32>,
    /// The chunks, mapped on demand, in order.
    chunks: [AtomicPtr<Slot>; MAX_CHUNKS],
}

/// Byte offset of the first level's heads in a pool's mapping.
const HEADS_AT: usize = round_up(
    core::mem::size_of::<PoolHeader>(),
    core::mem::align_of::<Heads>(),
);

/// Slots for the levels of one or more freelists (`lists` of them, `shards` levels each), and
/// the levels' stack heads, in one zeroed mapping; chunks of slots are mapped as first needed.
pub(crate) struct SlotPool {
    header: Mapping,
    lists: usize,
    shards: usize,
}

impl core::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotPool")
            .field("lists", &self.lists)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl SlotPool {
    /// A pool for the global levels of `lists` freelists over `cpus` possible CPUs (each
    /// freelist a shard per CPU up to [`MAX_SHARDS`]). `None` if the kernel refuses memory.
    pub(crate) fn new(lists: usize, cpus: usize) -> Option<SlotPool> {
        let shards = cpus.clamp(1, MAX_SHARDS);
        let levels = lists.checked_mul(shards)?;
        let len = levels
            .checked_mul(core::mem::size_of::<Heads>())?
            .checked_add(HEADS_AT)?;
        // Zeroed: every stack empty (see `pack`), no chunk mapped, nothing written until used.
        let header = Mapping::new(len)?;
        Some(SlotPool {
            header,
            lists,
            shards,
        })
    }

    /// Freelist `list`'s global level, its shards in this pool.
    ///
    /// # Safety
    /// `list` is below the pool's `lists`, the pool outlives the returned shards, and no other
    /// `Shards` is made for `list`.
    pub(crate) unsafe fn shards(&self, list: usize) -> Shards {
        debug_assert!(
            list < self.lists,
            "list {list} of a pool for {}",
            self.lists
        );
        // A list's shards side by side: a program using a few lists (size classes) touches
        // their heads only, however many CPUs there are.
        let at = HEADS_AT + list * self.shards * core::mem::size_of::<Heads>();
        // SAFETY: inside the mapping (`new` sized it for `lists * shards` heads), aligned like
        // `HEADS_AT` and the heads' size, zeroed or written only as `Heads`.
        let heads = unsafe { NonNull::new_unchecked(self.header.as_ptr().add(at).cast()) };
        Shards {
            pool: NonNull::from(self.h()),
            heads,
            count: self.shards,
            _own_pool: None,
        }
    }

    fn h(&self) -> &PoolHeader {
        // SAFETY: the mapping is at least `HEADS_AT` bytes, page-aligned, zeroed (a valid
        // header: null chunks, atomics), and lives as long as `self`.
        unsafe { &*self.header.as_ptr().cast::<PoolHeader>() }
    }
}

impl Drop for SlotPool {
    fn drop(&mut self) {
        // Chunks are mapped in order, up to the one `fresh` points into (mapped before any of
        // its slots is claimed, so possibly with none claimed yet).
        let last = (self.h().fresh.load(Ordering::Relaxed) >> CHUNK_SHIFT) as usize;
        for entry in &self.h().chunks[..=last.min(MAX_CHUNKS - 1)] {
            let chunk = entry.load(Ordering::Relaxed);
            if !chunk.is_null() {
                // SAFETY: each chunk was mapped with exactly this length, and nothing uses it
                // once the pool is dropped (its levels do not outlive it: `shards`' contract).
                unsafe { libc::munmap(chunk.cast(), CHUNK_SLOTS * core::mem::size_of::<Slot>()) };
            }
        }
    }
}

impl PoolHeader {
    fn slot(&self, index: u32) -> &Slot {
        let (chunk, offset) = (index >> CHUNK_SHIFT, index as usize & (CHUNK_SLOTS - 1));
        let chunk = self.chunks[chunk as usize].load(Ordering::Acquire);
        debug_assert!(!chunk.is_null(), "slot {index} in an unmapped chunk");
        // SAFETY: indices reach callers only from stacks, whose chains were built from mapped
        // chunks published (Release) before their slots were pushed; chunks stay mapped until
        // the pool drops, and the offset is below CHUNK_SLOTS.
        unsafe { &*chunk.add(offset) }
    }

    /// Up to `k` (at least 1) slots never handed out before, linked into a chain: `(first,
    /// len)`, all in one chunk, which is mapped first if no thread has mapped it yet. `None`
    /// when every chunk is used or the kernel refuses memory.
    fn take_fresh(&self, k: u32) -> Option<(u32, u32)> {
        let fresh = &*self.fresh;
        let mut first = fresh.load(Ordering::Relaxed);
        loop {
            let chunk = first as usize >> CHUNK_SHIFT;
            if chunk >= MAX_CHUNKS {
                return None;
            }
            // Mapped before any of its slots is claimed, so a refused mapping loses none.
            let slots = self.map_chunk(chunk)?;
            let offset = first as usize & (CHUNK_SLOTS - 1);
            let len = k.min((CHUNK_SLOTS - offset) as u32);
            match fresh.compare_exchange_weak(
                first,
                first + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // Ours alone: `[first, first + len)` was claimed by the exchange.
                    for i in 0..len as usize {
                        let next = if i + 1 == len as usize {
                            NIL
                        } else {
                            first + i as u32 + 1
                        };
                        // SAFETY: `offset + i < CHUNK_SLOTS`, inside the mapped chunk.
                        unsafe { (*slots.add(offset + i)).next.store(next, Ordering::Relaxed) };
                    }
                    return Some((first, len));
                }
                Err(now) => first = now,
            }
        }
    }

    /// Chunk `chunk`'s slots, mapping the chunk if nobody has yet. `None` when the kernel
    /// refuses memory.
    fn map_chunk(&self, chunk: usize) -> Option<*mut Slot> {
        let entry = &self.chunks[chunk];
        let slots = entry.load(Ordering::Acquire);
        if !slots.is_null() {
            return Some(slots);
        }
        let mapping = Mapping::new(CHUNK_SLOTS * core::mem::size_of::<Slot>())?;
        let slots = mapping.as_ptr().cast::<Slot>();
        // Release: whoever finds the pointer finds the mapping (zeroed) with it.
        match entry.compare_exchange(ptr::null_mut(), slots, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                core::mem::forget(mapping); // Unmapped when the pool drops.
                Some(slots)
            }
            // Another thread mapped it first: use theirs; ours is unmapped as it drops.
            Err(theirs) => Some(theirs),
        }
    }
}

/// One shard of a freelist's global level: its stack heads and the pool its slots come from,
/// both in the pool's mapping, borrowed from the [`Shards`] that found them.
#[derive(Clone, Copy)]
pub(crate) struct Global<'a> {
    pool: &'a PoolHeader,
    heads: &'a Heads,
}

impl core::fmt::Debug for Global<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Global").finish_non_exhaustive()
    }
}

impl<'a> Global<'a> {
    fn full(&self) -> &'a AtomicU64 {
        &self.heads.full
    }

    fn free(&self) -> &'a AtomicU64 {
        &self.heads.free
    }

    fn slot(&self, index: u32) -> &'a Slot {
        self.pool.slot(index)
    }

    fn push_chain(&self, head: &AtomicU64, first: u32, len: u32) {
        let slot = self.slot(first);
        slot.len.store(len, Ordering::Relaxed);
        // Acquire: the depth read below is the one the chain's pusher published.
        let mut old = head.load(Ordering::Acquire);
        loop {
            slot.next_chain.store(first_of(old), Ordering::Relaxed);
            // The chains below never change while this one is on the stack, so its depth stays
            // true; a stale read here is caught by the exchange, which then retries.
            slot.depth.store(
                len.saturating_add(self.depth(first_of(old))),
                Ordering::Relaxed,
            );
            let new = pack(tag_of(old).wrapping_add(1), first);
            // Release: the chain's slots (items, links, length) are visible to its popper.
            match head.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    /// Pops a chain: `(first, len)`.
    fn pop_chain(&self, head: &AtomicU64) -> Option<(u32, u32)> {
        let mut old = head.load(Ordering::Acquire);
        loop {
            let first = first_of(old);
            if first == NIL {
                return None;
            }
            // May be stale if `first` was popped and reused meanwhile; the tag then fails the
            // exchange below.
            let next = self.slot(first).next_chain.load(Ordering::Relaxed);
            let new = pack(tag_of(old).wrapping_add(1), next);
            match head.compare_exchange_weak(old, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some((first, self.slot(first).len.load(Ordering::Relaxed))),
                Err(current) => old = current,
            }
        }
    }

    /// Items from chain `first` down to the bottom of its stack; 0 for NIL.
    fn depth(&self, first: u32) -> u32 {
        if first == NIL {
            0
        } else {
            self.slot(first).depth.load(Ordering::Relaxed)
        }
    }

    /// About how many items the global level holds: exact when nothing changes meanwhile, and
    /// never unsafe to ask (a top chain popped and reused during the read gives a stale count).
    pub(crate) fn len(&self) -> usize {
        self.depth(first_of(self.full().load(Ordering::Acquire))) as usize
    }

    /// The slot `steps` links after `from`.
    fn walk(&self, mut from: u32, steps: u32) -> u32 {
        for _ in 0..steps {
            from = self.slot(from).next.load(Ordering::Relaxed);
        }
        from
    }

    /// A chain of exactly `k` free slots, or `None` when no memory can be had.
    fn take_slots(&self, k: u32) -> Option<u32> {
        debug_assert!(k > 0);
        let (mut first, mut last, mut have) = (NIL, NIL, 0u32);
        while have < k {
            let taken = self
                .pop_chain(self.free())
                .or_else(|| self.pool.take_fresh(k - have));
            let Some((chain, len)) = taken else {
                if have > 0 {
                    self.push_chain(self.free(), first, have);
                }
                return None;
            };
            let need = k - have;
            let take = len.min(need);
            let tail = self.walk(chain, take - 1);
            if len > need {
                let rest = self.slot(tail).next.load(Ordering::Relaxed);
                self.push_chain(self.free(), rest, len - need);
            }
            self.slot(tail).next.store(NIL, Ordering::Relaxed);
            if first == NIL {
                first = chain;
            } else {
                self.slot(last).next.store(chain, Ordering::Relaxed);
            }
            last = tail;
            have += take;
        }
        Some(first)
    }

    /// Publishes `items` (at most [`MAX_CHAIN`]) as one batch; hands them back if no slots can
    /// be had.
    pub(crate) fn push_items(&self, items: &[usize]) -> Result<(), ()> {
        debug_assert!(!items.is_empty() && items.len() <= MAX_CHAIN);
        let first = self.take_slots(slots_for(items.len() as u32)).ok_or(())?;
        self.write_items(first, items);
        self.push_chain(self.full(), first, items.len() as u32);
        Ok(())
    }

    /// Stores `items` in order into the chain from `first`, which has room for them.
    fn write_items(&self, first: u32, items: &[usize]) {
        let mut at = first;
        for group in items.chunks(SLOT_ITEMS) {
            let slot = self.slot(at);
            for (word, &item) in slot.items.iter().zip(group) {
                word.store(item, Ordering::Relaxed);
            }
            at = slot.next.load(Ordering::Relaxed);
        }
    }

    /// Loads the chain from `first`'s items into `out`, as many as `out` is long.
    fn read_items(&self, first: u32, out: &mut [usize]) {
        let mut at = first;
        for group in out.chunks_mut(SLOT_ITEMS) {
            let slot = self.slot(at);
            for (item, word) in group.iter_mut().zip(&slot.items) {
                *item = word.load(Ordering::Relaxed);
            }
            at = slot.next.load(Ordering::Relaxed);
        }
    }

    /// Reserves slots for `k` items for a later [`Self::fill_reserved`], so a caller can move
    /// items out of a place they cannot go back to only once their destination is certain.
    pub(crate) fn reserve(&self, k: usize) -> Option<Reserved> {
        self.take_slots(slots_for(k as u32)).map(|first| Reserved {
            first,
            len: k as u32,
        })
    }

    /// Publishes `items` into reserved slots (as many as were reserved at most); unused slots
    /// go back to the free stack.
    pub(crate) fn fill_reserved(&self, reserved: Reserved, items: &[usize]) {
        let used = items.len() as u32;
        debug_assert!(used <= reserved.len);
        let (slots, used_slots) = (slots_for(reserved.len), slots_for(used));
        if used == 0 {
            return self.push_chain(self.free(), reserved.first, slots);
        }
        let tail = self.walk(reserved.first, used_slots - 1);
        if used_slots < slots {
            let rest = self.slot(tail).next.load(Ordering::Relaxed);
            self.slot(tail).next.store(NIL, Ordering::Relaxed);
            self.push_chain(self.free(), rest, slots - used_slots);
        }
        self.write_items(reserved.first, items);
        self.push_chain(self.full(), reserved.first, used);
    }

    /// Pops one batch into `out` (at least [`MAX_CHAIN`] long): how many items, and the batch's
    /// slots, to be given back with [`Self::fill_reserved`] (with the items that must return to
    /// the global level, or none), so putting items back never needs new memory.
    pub(crate) fn take_batch(&self, out: &mut [usize]) -> Option<(usize, Reserved)> {
        debug_assert!(out.len() >= MAX_CHAIN);
        let (first, len) = self.pop_chain(self.full())?;
        self.read_items(first, &mut out[..len as usize]);
        Some((len as usize, Reserved { first, len }))
    }

    /// Pops one item (the last of the top batch; the rest of the batch goes back).
    pub(crate) fn pop_one(&self) -> Option<usize> {
        let (first, len) = self.pop_chain(self.full())?;
        let last = len - 1;
        let slot_index = last / SLOT_ITEMS as u32;
        // The slot before the last one too, in one walk: it ends the chain if the last empties.
        let before = (slot_index > 0).then(|| self.walk(first, slot_index - 1));
        let slot = before.map_or(first, |b| self.slot(b).next.load(Ordering::Relaxed));
        let item = self.slot(slot).items[last as usize % SLOT_ITEMS].load(Ordering::Relaxed);
        if last % SLOT_ITEMS as u32 == 0 {
            // The item was its slot's only one: the chain ends before it, and the slot (whose
            // `next` is NIL, as the chain's last) goes to the free stack.
            if let Some(before) = before {
                self.slot(before).next.store(NIL, Ordering::Relaxed);
            }
            self.push_chain(self.free(), slot, 1);
        }
        if last > 0 {
            self.push_chain(self.full(), first, last);
        }
        Some(item)
    }
}

/// Slots set aside by [`Global::reserve`]; must be given to [`Global::fill_reserved`].
#[must_use]
#[derive(Debug)]
pub(crate) struct Reserved {
    first: u32,
    /// Items the slots have room for.
    len: u32,
}

/// Most shards a global level is split into.
pub(crate) const MAX_SHARDS: usize = 16;

/// The global level split into shards, one per CPU up to [`MAX_SHARDS`]: threads push to and pop
/// from their own CPU's shard, so threads without rseq (which reach the global level whenever
/// their CPU's locked cache is busy) do not all contend on one stack head, and pops look at the
/// other shards before reporting empty.
pub(crate) struct Shards {
    pool: NonNull<PoolHeader>,
    /// Shard 0's heads; shard `s`'s are `s` further.
    heads: NonNull<Heads>,
    count: usize,
    /// The pool the shards' slots come from, when it is theirs alone (a freelist of its own;
    /// the slab allocator's freelists share their heap's). Dropped after the shards.
    _own_pool: Option<SlotPool>,
}

// SAFETY: the shards are views of atomics in a pool's mapping, shared by design, which lives as
// long as they do (`SlotPool::shards`' contract, or it is their own).
unsafe impl Send for Shards {}
// SAFETY: as above: every access through them is atomic.
unsafe impl Sync for Shards {}

impl Shards {
    /// A shard for each of `cpus` possible CPUs, up to [`MAX_SHARDS`], in a pool of their own;
    /// `None` if the kernel refuses memory.
    pub(crate) fn new(cpus: usize) -> Option<Shards> {
        let pool = SlotPool::new(1, cpus)?;
        // SAFETY: the pool moves into the shards and drops after them (its mapping, which they
        // point into, never moves); list 0 is theirs alone.
        let mut shards = unsafe { pool.shards(0) };
        shards._own_pool = Some(pool);
        Some(shards)
    }

    /// The shard for CPU (or mm_cid) `id`.
    #[inline]
    pub(crate) fn shard(&self, id: usize) -> Global<'_> {
        // SAFETY: the pool outlives the shards (`SlotPool::shards`' contract, or it is their own
        // and drops after them), and its mapping holds `count` heads from `heads`, zeroed or
        // written only as `Heads`.
        unsafe {
            Global {
                pool: self.pool.as_ref(),
                heads: self.heads.add(id % self.count).as_ref(),
            }
        }
    }

    /// The shard of the CPU the caller runs on.
    #[inline]
    pub(crate) fn local(&self) -> Global<'_> {
        self.shard(rseq_sys::cpu_hint().unwrap_or(0) as usize)
    }

    /// Every shard, starting with `id`'s.
    pub(crate) fn from(&self, id: usize) -> impl Iterator<Item = Global<'_>> {
        (0..self.count).map(move |i| self.shard(id + i))
    }

    /// How many shards there are.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// About how many items all shards hold.
    pub(crate) fn len(&self) -> usize {
        self.from(0).map(|shard| shard.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes a batch and releases its slots.
    fn pop_batch(g: Global<'_>, out: &mut [usize]) -> usize {
        match g.take_batch(out) {
            Some((n, slots)) => {
                g.fill_reserved(slots, &[]);
                n
            }
            None => 0,
        }
    }

    /// Whether the page at `address` is resident.
    fn resident(address: *const u8) -> bool {
        let page = address as usize & !4095;
        let mut vec = 0u8;
        // SAFETY: mincore on one page of a live mapping, into a one-byte vector.
        let rc = unsafe { libc::mincore(page as *mut libc::c_void, 1, &mut vec) };
        assert_eq!(rc, 0);
        vec & 1 == 1
    }

    /// Whether transparent huge pages are on for every mapping: then a fault anywhere in the same
    /// 2 MiB (another test's allocation) can make an untouched page resident.
    fn huge_pages_always() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]"))
    }

    /// A level with a pool of its own, as a freelist of its own has.
    fn one_level() -> Shards {
        Shards::new(1).unwrap()
    }

    /// The pool a freelist's shards own.
    fn own_pool(shards: &Shards) -> &SlotPool {
        shards._own_pool.as_ref().unwrap()
    }

    /// Slots the pool has handed out.
    fn fresh(pool: &SlotPool) -> u32 {
        pool.h().fresh.load(Ordering::Relaxed)
    }

    /// The chunks mapped so far.
    fn chunks(pool: &SlotPool) -> Vec<*const u8> {
        let last = (fresh(pool) >> CHUNK_SHIFT) as usize;
        pool.h().chunks[..=last]
            .iter()
            .map(|c| c.load(Ordering::Relaxed).cast_const().cast())
            .filter(|c: &*const u8| !c.is_null())
            .collect()
    }

    /// The pages of `len` bytes from `start` (page-aligned) that are resident.
    fn resident_pages(start: *const u8, len: usize) -> Vec<usize> {
        let page = 4096;
        // SAFETY: every page lies inside the mapping that starts at `start`.
        (0..len.div_ceil(page))
            .filter(|&p| resident(unsafe { start.add(p * page) }))
            .collect()
    }

    /// Resident pages of the pool's heads (`levels` of them) and of its chunks.
    fn touched(pool: &SlotPool, levels: usize) -> (usize, usize) {
        // SAFETY: the heads lie inside the pool's mapping, from `HEADS_AT`.
        let heads = unsafe { pool.header.as_ptr().add(HEADS_AT & !4095) };
        let heads_len = HEADS_AT % 4096 + levels * core::mem::size_of::<Heads>();
        let chunk_len = CHUNK_SLOTS * core::mem::size_of::<Slot>();
        let slots = chunks(pool)
            .into_iter()
            .map(|c| resident_pages(c, chunk_len).len())
            .sum();
        (resident_pages(heads, heads_len).len(), slots)
    }

    #[test]
    fn a_new_level_touches_no_memory_until_used() {
        let shards = one_level();
        let (g, pool) = (shards.shard(0), own_pool(&shards));
        if !huge_pages_always() {
            assert_eq!(touched(pool, 1), (0, 0), "a new level's heads are resident");
        }
        assert!(
            chunks(pool).is_empty(),
            "a chunk mapped before any slot is needed"
        );
        assert_eq!(g.len(), 0);
        assert_eq!(g.pop_one(), None, "a zeroed level must read as empty");
        g.push_items(&[1]).unwrap();
        assert_eq!(chunks(pool).len(), 1);
        if !huge_pages_always() {
            assert_eq!(touched(pool, 1), (1, 1), "one page of heads, one of slots");
        }
        assert_eq!(g.pop_one(), Some(1));
        assert_eq!(g.pop_one(), None);
    }

    /// Slots are handed out from the front of a chunk as first needed: a level that has held a
    /// batch has touched one page of slots.
    #[test]
    fn a_level_is_touched_only_as_far_as_its_slots_are_used() {
        let shards = one_level();
        let (g, pool) = (shards.shard(0), own_pool(&shards));
        let items: Vec<usize> = (1..=MAX_CHAIN).collect();
        g.push_items(&items).unwrap();
        if !huge_pages_always() {
            assert_eq!(touched(pool, 1).1, 1, "one batch: one page of slots");
        }
        // Popped and pushed again, the batch reuses its slots: still one page.
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(g, &mut out), MAX_CHAIN);
        g.push_items(&items).unwrap();
        let batch_slots = slots_for(MAX_CHAIN as u32);
        assert_eq!(fresh(pool), batch_slots);
        // Enough items for (nearly) every slot of the first chunk: each of its pages in use, and
        // no second chunk mapped.
        for _ in 1..CHUNK_SLOTS / batch_slots as usize {
            g.push_items(&items).unwrap();
        }
        let chunk_pages = (CHUNK_SLOTS * core::mem::size_of::<Slot>()).div_ceil(4096);
        assert_eq!(chunks(pool).len(), 1);
        if !huge_pages_always() {
            assert_eq!(touched(pool, 1).1, chunk_pages, "a full first chunk");
        }
        // One batch more opens the second chunk, a mapping of its own, and touches its first
        // page only.
        g.push_items(&items).unwrap();
        let mapped = chunks(pool);
        assert_eq!(mapped.len(), 2);
        assert!(
            resident(mapped[1]),
            "the second chunk's first page holds the batch"
        );
        if !huge_pages_always() {
            assert_eq!(
                touched(pool, 1).1,
                chunk_pages + 1,
                "one batch in the second chunk"
            );
        }
    }

    /// The levels of many freelists share their pool's pages: each holding one batch, 34 levels
    /// of a slab heap's 96 touch the pages their slots fill, packed, not a page or more each
    /// (34 when every level had a mapping of its own), and the pages of their heads.
    #[test]
    fn levels_of_many_freelists_share_the_pool_pages() {
        let (lists, cpus) = (48, 2);
        let pool = SlotPool::new(lists, cpus).unwrap();
        // SAFETY: the pool outlives the shards (dropped at the end of the test, in reverse order
        // of declaration); each list's shards are made once.
        let all: Vec<Shards> = (0..lists).map(|l| unsafe { pool.shards(l) }).collect();
        let used = 17;
        for (l, shards) in all.iter().enumerate().take(used) {
            for s in 0..cpus {
                let first = (l * cpus + s) * MAX_CHAIN;
                let items: Vec<usize> = (first + 1..=first + MAX_CHAIN).collect();
                shards.shard(s).push_items(&items).unwrap();
            }
        }
        let slots = (2 * used) as u32 * slots_for(MAX_CHAIN as u32);
        assert_eq!(fresh(&pool), slots);
        if !huge_pages_always() {
            let slot_pages = (slots as usize * core::mem::size_of::<Slot>()).div_ceil(4096);
            let (heads, slot_pages_touched) = touched(&pool, lists * cpus);
            assert_eq!(slot_pages_touched, slot_pages, "packed");
            let heads_len = HEADS_AT % 4096 + 2 * used * core::mem::size_of::<Heads>();
            assert_eq!(
                heads,
                heads_len.div_ceil(4096),
                "the used lists' heads only"
            );
        }
        // And each level gives back its own batch, whole.
        for (l, shards) in all.iter().enumerate().take(used) {
            for s in 0..cpus {
                let mut out = [0usize; MAX_CHAIN];
                assert_eq!(pop_batch(shards.shard(s), &mut out), MAX_CHAIN);
                let first = (l * cpus + s) * MAX_CHAIN;
                assert_eq!(out[0], first + 1, "list {l} shard {s}");
                assert_eq!(shards.len(), (cpus - 1 - s) * MAX_CHAIN);
            }
        }
    }

    /// Dropping a pool unmaps the chunks its levels used. Checked in a child process: in this
    /// one, another test's mapping may take the addresses as soon as they are free.
    #[test]
    fn dropping_a_pool_unmaps_its_chunks() {
        /// What the child finds, as its exit status.
        fn check() -> i32 {
            let shards = one_level();
            let items: Vec<usize> = (1..=MAX_CHAIN).collect();
            // One batch more than the first chunk holds.
            for _ in 0..=CHUNK_SLOTS / slots_for(MAX_CHAIN as u32) as usize {
                shards.shard(0).push_items(&items).unwrap();
            }
            let mapped = chunks(own_pool(&shards));
            if mapped.len() != 2 {
                return 3;
            }
            drop(shards);
            let still_mapped = mapped.iter().any(|&chunk| {
                let mut vec = 0u8;
                // SAFETY: mincore only reports on the range; an unmapped one fails (ENOMEM).
                unsafe { libc::mincore(chunk as *mut libc::c_void, 1, &mut vec) == 0 }
            });
            i32::from(still_mapped)
        }
        // SAFETY: the child runs `check` on this thread alone (the harness's other threads do
        // not exist there, and hold no lock it takes: glibc's malloc is fork-safe), then leaves
        // with `_exit`, running nothing of the parent's.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let status = std::panic::catch_unwind(check).unwrap_or(2);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(status) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status),
            "the child died: status {status:#x}"
        );
        let code = libc::WEXITSTATUS(status);
        assert!(code != 3, "the batches did not fill two chunks");
        assert!(code != 2, "the child panicked");
        assert_eq!(code, 0, "a chunk is still mapped after the pool dropped");
    }

    #[test]
    fn batches_come_back_whole_and_last_in_first_out() {
        let shards = one_level();
        let g = shards.shard(0);
        g.push_items(&[1, 2, 3]).unwrap();
        g.push_items(&[4]).unwrap();
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(g, &mut out), 1);
        assert_eq!(out[0], 4);
        assert_eq!(pop_batch(g, &mut out), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(pop_batch(g, &mut out), 0);
    }

    #[test]
    fn len_counts_items_through_pushes_and_pops() {
        let shards = one_level();
        let g = shards.shard(0);
        assert_eq!(g.len(), 0);
        g.push_items(&[1, 2, 3]).unwrap();
        g.push_items(&[4, 5]).unwrap();
        assert_eq!(g.len(), 5);
        assert_eq!(g.pop_one(), Some(5));
        assert_eq!(g.len(), 4);
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(g, &mut out), 1);
        assert_eq!(g.len(), 3);
        assert_eq!(pop_batch(g, &mut out), 3);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn pop_one_splits_a_batch() {
        let shards = one_level();
        let g = shards.shard(0);
        g.push_items(&[10, 11, 12]).unwrap();
        assert_eq!(g.pop_one(), Some(12));
        assert_eq!(g.pop_one(), Some(11));
        assert_eq!(g.pop_one(), Some(10));
        assert_eq!(g.pop_one(), None);
    }

    /// A batch over several slots, popped one item at a time, gives every item back and each
    /// slot as it empties: pushed again, it needs no fresh slot.
    #[test]
    fn pop_one_frees_each_slot_as_it_empties() {
        let shards = one_level();
        let g = shards.shard(0);
        let items: Vec<usize> = (1..=2 * SLOT_ITEMS + 1).collect();
        g.push_items(&items).unwrap();
        let used = fresh(own_pool(&shards));
        assert_eq!(used, 3);
        for (popped, &item) in items.iter().rev().enumerate() {
            assert_eq!(g.pop_one(), Some(item));
            assert_eq!(g.len(), items.len() - popped - 1);
        }
        assert_eq!(g.pop_one(), None);
        g.push_items(&items).unwrap();
        assert_eq!(fresh(own_pool(&shards)), used);
    }

    #[test]
    fn reserved_slots_are_filled_or_returned() {
        let shards = one_level();
        let g = shards.shard(0);
        let r = g.reserve(5).unwrap();
        g.fill_reserved(r, &[7, 8]);
        let r = g.reserve(3).unwrap();
        g.fill_reserved(r, &[]);
        let mut out = [0usize; MAX_CHAIN];
        let (n, slots) = g.take_batch(&mut out).unwrap();
        assert_eq!(&out[..n], &[7, 8]);
        // Put one back through the batch's own slots: no new memory needed.
        g.fill_reserved(slots, &[8]);
        assert_eq!(pop_batch(g, &mut out), 1);
        assert_eq!(out[0], 8);
        assert_eq!(pop_batch(g, &mut out), 0);
    }

    /// A reservation gives back the slots its items do not need, and those slots serve the
    /// next push.
    #[test]
    fn unused_reserved_slots_go_back_to_the_free_stack() {
        let shards = one_level();
        let g = shards.shard(0);
        let r = g.reserve(4 * SLOT_ITEMS).unwrap();
        assert_eq!(fresh(own_pool(&shards)), 4);
        let filled: Vec<usize> = (1..=SLOT_ITEMS + 1).collect();
        g.fill_reserved(r, &filled);
        let pushed: Vec<usize> = (100..100 + 2 * SLOT_ITEMS).collect();
        g.push_items(&pushed).unwrap();
        assert_eq!(fresh(own_pool(&shards)), 4, "the two unused slots served");
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(g, &mut out), pushed.len());
        assert_eq!(&out[..pushed.len()], &pushed[..]);
        assert_eq!(pop_batch(g, &mut out), filled.len());
        assert_eq!(&out[..filled.len()], &filled[..]);
        assert_eq!(pop_batch(g, &mut out), 0);
    }

    #[test]
    fn slots_are_recycled_across_many_cycles_and_chunks() {
        let shards = one_level();
        let g = shards.shard(0);
        // More items than one chunk holds, then back: slots must be reused, not leaked.
        let items: Vec<usize> = (1..=3 * CHUNK_SLOTS * SLOT_ITEMS).collect();
        for round in 0..3 {
            for batch in items.chunks(MAX_CHAIN) {
                g.push_items(batch).unwrap();
            }
            let mut seen = Vec::new();
            let mut out = [0usize; MAX_CHAIN];
            loop {
                let n = pop_batch(g, &mut out);
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&out[..n]);
            }
            seen.sort_unstable();
            assert_eq!(seen, items, "round {round}");
        }
        let mapped = chunks(own_pool(&shards)).len();
        let slots = items.len().div_ceil(MAX_CHAIN) * slots_for(MAX_CHAIN as u32) as usize;
        assert_eq!(
            mapped,
            slots.div_ceil(CHUNK_SLOTS),
            "the chunks that one round's {slots} slots need; later rounds reuse them"
        );
    }

    /// Many threads (far more than CPUs) move batches through the levels of many freelists that
    /// share one pool, claiming fresh slots from its one counter at the same time as they grow:
    /// every item pushed comes back exactly once.
    #[test]
    fn levels_sharing_a_pool_lose_and_duplicate_nothing_under_threads() {
        let (lists, cpus, threads, rounds) = (6, 16, 32, 300);
        let pool = SlotPool::new(lists, cpus).unwrap();
        // SAFETY: the pool outlives the shards (declared after it, dropped first); each list's
        // shards are made once.
        let all: Vec<Shards> = (0..lists).map(|l| unsafe { pool.shards(l) }).collect();
        // Per thread: the items it popped, and how many it pushed.
        let results: Vec<(Vec<usize>, usize)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let all = &all;
                    scope.spawn(move || {
                        let mut seed = (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        let mut next = move || {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            seed as usize
                        };
                        let (mut got, mut pushed) = (Vec::new(), 0);
                        let mut out = [0usize; MAX_CHAIN];
                        for round in 0..rounds {
                            // Unique items: the thread, the round and the place in the batch.
                            let n = 1 + next() % MAX_CHAIN;
                            let items: Vec<usize> =
                                (0..n).map(|i| (t << 32 | round << 8 | i) + 1).collect();
                            let to = all[next() % lists].shard(next());
                            to.push_items(&items).unwrap();
                            pushed += n;
                            let from = all[next() % lists].shard(next());
                            match next() % 3 {
                                0 => got.extend(from.pop_one()),
                                1 => {
                                    if let Some((k, slots)) = from.take_batch(&mut out) {
                                        // Keep half, put the rest back through its own slots.
                                        got.extend_from_slice(&out[..k / 2]);
                                        from.fill_reserved(slots, &out[k / 2..k]);
                                    }
                                }
                                _ => {
                                    let k = pop_batch(from, &mut out);
                                    got.extend_from_slice(&out[..k]);
                                }
                            }
                        }
                        (got, pushed)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let pushed: usize = results.iter().map(|(_, n)| n).sum();
        let mut seen: Vec<usize> = results.into_iter().flat_map(|(got, _)| got).collect();
        let mut out = [0usize; MAX_CHAIN];
        for shards in &all {
            for s in 0..cpus {
                loop {
                    let n = pop_batch(shards.shard(s), &mut out);
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&out[..n]);
                }
            }
        }
        assert_eq!(all.iter().map(Shards::len).sum::<usize>(), 0);
        assert_eq!(seen.len(), pushed, "items lost or duplicated");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), pushed, "an item came back twice");
    }
}
