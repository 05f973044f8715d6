//! The global level: lock-free stacks of chains of slots, allocation-free and ABA-safe.
//!
//! Items (block addresses) sit six to a 64-byte slot, slots addressed by 32-bit indices, in
//! chunks handed out from the front as first needed, so that a chunk's pages are touched only as
//! far as its slots have been used (most levels hold a few batches). The first chunk lies in the
//! level's header, right after the stack heads, so a level holding a few batches touches one
//! page in all; the others are mapped on demand. A chain is a linked run of slots (`next`); its
//! first slot records its length and the chain below it on a stack (`next_chain`). Two stacks
//! of chains:
//!
//! - `full`: batches of items, each at most [`MAX_CHAIN`] long, packed in order into their
//!   chain's slots (item `i` in slot `i / SLOT_ITEMS`); lengths count items;
//! - `free`: slots holding nothing, ready to carry items; lengths count slots.
//!
//! Each stack's head is one `AtomicU64`: the first chain's index in the low half, a tag in the
//! high half that every successful push and pop increments. A pop that read the head, was
//! preempted while the same chain was popped and pushed back (ABA), fails its compare-exchange on
//! the tag instead of installing a stale `next_chain`. Slots are never unmapped while the
//! structure lives, so reading a stale slot is harmless; 2^32 head changes during one preemption
//! would be needed to fool the tag.
//!
//! Everything here is plain atomics over `mmap`ed memory: no global allocator, no locks, so
//! threads without rseq use it directly and a global allocator can build on it.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::storage::Mapping;

/// End of a chain or of a stack.
const NIL: u32 = u32::MAX;
const CHUNK_SHIFT: u32 = 8;
const CHUNK_SLOTS: usize = 1 << CHUNK_SHIFT;
/// Chunks of 256 slots (16 KiB of address space, a page of which is touched per 64 slots used):
/// up to 4 M slots, 25 M items, per shard.
const MAX_CHUNKS: usize = 1 << 14;
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

/// A Treiber stack of chains with a tagged head.
struct ChainStack {
    head: CachePadded<AtomicU64>,
}

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

/// Everything at the global level, in one zeroed mapping.
#[repr(C)]
struct Header {
    full: ChainStack,
    free: ChainStack,
    /// The first slot never handed out: slots below it are in chains (on a stack or taken),
    /// slots from it on are untouched. Only grows.
    fresh: AtomicU32,
    /// Chunk 0's slots, on the stack heads' page and the pages after it: a level that never
    /// holds more than about 350 items touches that one page in all. Its entry in `chunks`
    /// stays null.
    first_chunk: [Slot; CHUNK_SLOTS],
    /// Chunks 1 and up, mapped on demand.
    chunks: [AtomicPtr<Slot>; MAX_CHUNKS],
}

/// The global level of a freelist.
pub(crate) struct Global {
    header: Mapping,
}

impl core::fmt::Debug for Global {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Global").finish_non_exhaustive()
    }
}

impl Global {
    /// Maps the header (chunks come later, on demand). `None` if the kernel refuses memory.
    pub(crate) fn new() -> Option<Global> {
        let header = Mapping::new(core::mem::size_of::<Header>())?;
        // Zeroed: both stacks empty (see `pack`), nothing written until first used.
        Some(Global { header })
    }

    fn h(&self) -> &Header {
        // SAFETY: the mapping is at least `size_of::<Header>()` bytes, page-aligned, zeroed
        // (a valid Header: null chunks, atomics), and lives as long as `self`.
        unsafe { &*self.header.as_ptr().cast::<Header>() }
    }

    fn slot(&self, index: u32) -> &Slot {
        let (chunk, offset) = (index >> CHUNK_SHIFT, index as usize & (CHUNK_SLOTS - 1));
        if chunk == 0 {
            return &self.h().first_chunk[offset];
        }
        let chunk = self.h().chunks[chunk as usize].load(Ordering::Acquire);
        debug_assert!(!chunk.is_null(), "slot {index} in an unmapped chunk");
        // SAFETY: indices reach callers only from stacks, whose chains were built from mapped
        // chunks published (Release) before their slots were pushed; chunks stay mapped until
        // drop, and the offset is below CHUNK_SLOTS.
        unsafe { &*chunk.add(offset) }
    }

    fn push_chain(&self, stack: &ChainStack, first: u32, len: u32) {
        let slot = self.slot(first);
        slot.len.store(len, Ordering::Relaxed);
        // Acquire: the depth read below is the one the chain's pusher published.
        let mut old = stack.head.load(Ordering::Acquire);
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
            match stack
                .head
                .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    /// Pops a chain: `(first, len)`.
    fn pop_chain(&self, stack: &ChainStack) -> Option<(u32, u32)> {
        let mut old = stack.head.load(Ordering::Acquire);
        loop {
            let first = first_of(old);
            if first == NIL {
                return None;
            }
            // May be stale if `first` was popped and reused meanwhile; the tag then fails the
            // exchange below.
            let next = self.slot(first).next_chain.load(Ordering::Relaxed);
            let new = pack(tag_of(old).wrapping_add(1), next);
            match stack
                .head
                .compare_exchange_weak(old, new, Ordering::Acquire, Ordering::Acquire)
            {
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
        self.depth(first_of(self.h().full.head.load(Ordering::Acquire))) as usize
    }

    /// The slot `steps` links after `from`.
    fn walk(&self, mut from: u32, steps: u32) -> u32 {
        for _ in 0..steps {
            from = self.slot(from).next.load(Ordering::Relaxed);
        }
        from
    }

    /// Up to `k` (at least 1) slots never handed out before, linked into a chain: `(first,
    /// len)`, all in one chunk, which is mapped first if no thread has mapped it yet. `None`
    /// when every chunk is used or the kernel refuses memory.
    fn take_fresh(&self, k: u32) -> Option<(u32, u32)> {
        let fresh = &self.h().fresh;
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
        if chunk == 0 {
            // In the header's mapping, which exists as long as the level does.
            return Some(self.h().first_chunk.as_ptr().cast_mut());
        }
        let entry = &self.h().chunks[chunk];
        let slots = entry.load(Ordering::Acquire);
        if !slots.is_null() {
            return Some(slots);
        }
        let mapping = Mapping::new(CHUNK_SLOTS * core::mem::size_of::<Slot>())?;
        let slots = mapping.as_ptr().cast::<Slot>();
        // Release: whoever finds the pointer finds the mapping (zeroed) with it.
        match entry.compare_exchange(ptr::null_mut(), slots, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                core::mem::forget(mapping); // Unmapped in Drop.
                Some(slots)
            }
            // Another thread mapped it first: use theirs; ours is unmapped as it drops.
            Err(theirs) => Some(theirs),
        }
    }

    /// A chain of exactly `k` free slots, or `None` when no memory can be had.
    fn take_slots(&self, k: u32) -> Option<u32> {
        debug_assert!(k > 0);
        let (mut first, mut last, mut have) = (NIL, NIL, 0u32);
        while have < k {
            let taken = self
                .pop_chain(&self.h().free)
                .or_else(|| self.take_fresh(k - have));
            let Some((chain, len)) = taken else {
                if have > 0 {
                    self.push_chain(&self.h().free, first, have);
                }
                return None;
            };
            let need = k - have;
            let take = len.min(need);
            let tail = self.walk(chain, take - 1);
            if len > need {
                let rest = self.slot(tail).next.load(Ordering::Relaxed);
                self.push_chain(&self.h().free, rest, len - need);
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
        self.push_chain(&self.h().full, first, items.len() as u32);
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
            return self.push_chain(&self.h().free, reserved.first, slots);
        }
        let tail = self.walk(reserved.first, used_slots - 1);
        if used_slots < slots {
            let rest = self.slot(tail).next.load(Ordering::Relaxed);
            self.slot(tail).next.store(NIL, Ordering::Relaxed);
            self.push_chain(&self.h().free, rest, slots - used_slots);
        }
        self.write_items(reserved.first, items);
        self.push_chain(&self.h().full, reserved.first, used);
    }

    /// Pops one batch into `out` (at least [`MAX_CHAIN`] long): how many items, and the batch's
    /// slots, to be given back with [`Self::fill_reserved`] (with the items that must return to
    /// the global level, or none), so putting items back never needs new memory.
    pub(crate) fn take_batch(&self, out: &mut [usize]) -> Option<(usize, Reserved)> {
        debug_assert!(out.len() >= MAX_CHAIN);
        let (first, len) = self.pop_chain(&self.h().full)?;
        self.read_items(first, &mut out[..len as usize]);
        Some((len as usize, Reserved { first, len }))
    }

    /// Pops one item (the last of the top batch; the rest of the batch goes back).
    pub(crate) fn pop_one(&self) -> Option<usize> {
        let (first, len) = self.pop_chain(&self.h().full)?;
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
            self.push_chain(&self.h().free, slot, 1);
        }
        if last > 0 {
            self.push_chain(&self.h().full, first, last);
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

impl Drop for Global {
    fn drop(&mut self) {
        for entry in &self.h().chunks {
            let chunk = entry.load(Ordering::Relaxed);
            if !chunk.is_null() {
                // SAFETY: each chunk was mapped with exactly this length and nothing uses it
                // once the global level is dropped.
                unsafe { libc::munmap(chunk.cast(), CHUNK_SLOTS * core::mem::size_of::<Slot>()) };
            }
        }
    }
}

/// Most shards a global level is split into.
pub(crate) const MAX_SHARDS: usize = 16;

/// The global level split into shards, one per CPU up to [`MAX_SHARDS`]: threads push to and pop
/// from their own CPU's shard, so threads without rseq (which reach the global level whenever
/// their CPU's locked cache is busy) do not all contend on one stack head, and pops look at the
/// other shards before reporting empty.
pub(crate) struct Shards {
    shards: [Option<Global>; MAX_SHARDS],
    count: usize,
}

impl Shards {
    /// `count` shards (1 ..= MAX_SHARDS); `None` if the kernel refuses memory.
    pub(crate) fn new(count: usize) -> Option<Shards> {
        let count = count.clamp(1, MAX_SHARDS);
        let mut shards = [const { None }; MAX_SHARDS];
        for shard in &mut shards[..count] {
            *shard = Some(Global::new()?);
        }
        Some(Shards { shards, count })
    }

    /// The shard for CPU (or mm_cid) `id`.
    #[inline]
    pub(crate) fn shard(&self, id: usize) -> &Global {
        let shard = &self.shards[id % self.count];
        debug_assert!(shard.is_some());
        // SAFETY: shards below `count` are all `Some`, by construction.
        unsafe { shard.as_ref().unwrap_unchecked() }
    }

    /// The shard of the CPU the caller runs on.
    #[inline]
    pub(crate) fn local(&self) -> &Global {
        self.shard(rseq_sys::cpu_hint().unwrap_or(0) as usize)
    }

    /// Every shard, starting with `id`'s.
    pub(crate) fn from(&self, id: usize) -> impl Iterator<Item = &Global> {
        (0..self.count).map(move |i| self.shard(id + i))
    }

    /// How many shards there are.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// About how many items all shards hold.
    pub(crate) fn len(&self) -> usize {
        self.from(0).map(Global::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes a batch and releases its slots.
    fn pop_batch(g: &Global, out: &mut [usize]) -> usize {
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

    #[test]
    fn a_new_level_touches_no_memory_until_used() {
        let g = Global::new().unwrap();
        let header = g.header.as_ptr();
        if !huge_pages_always() {
            assert!(!resident(header), "a new level's header page is resident");
        }
        assert_eq!(g.len(), 0);
        assert_eq!(g.pop_one(), None, "a zeroed level must read as empty");
        g.push_items(&[1]).unwrap();
        assert!(resident(header));
        assert_eq!(g.pop_one(), Some(1));
        assert_eq!(g.pop_one(), None);
    }

    /// The pages of `len` bytes from `start` (page-aligned) that are resident.
    fn resident_pages(start: *const u8, len: usize) -> Vec<usize> {
        let page = 4096;
        // SAFETY: every page lies inside the mapping that starts at `start`.
        (0..len.div_ceil(page))
            .filter(|&p| resident(unsafe { start.add(p * page) }))
            .collect()
    }

    /// Slots are handed out from the front of a chunk as first needed, the first chunk right
    /// after the stack heads: a level that has held a batch has touched one page in all.
    #[test]
    fn a_level_is_touched_only_as_far_as_its_slots_are_used() {
        let g = Global::new().unwrap();
        let header = g.header.as_ptr().cast_const();
        // The heads and the first chunk; the chunk table after them is left out, because
        // reading its entries below would make its first page count as resident.
        let before_table = core::mem::offset_of!(Header, chunks);
        let chunk_len = CHUNK_SLOTS * core::mem::size_of::<Slot>();
        // Resident pages before the table and in the chunks mapped (only two are used here).
        let touched = |g: &Global| {
            let head = resident_pages(header, before_table).len();
            let chunks = g.h().chunks[..2].iter().map(|c| c.load(Ordering::Relaxed));
            head + chunks
                .filter(|c| !c.is_null())
                .map(|c| resident_pages(c.cast(), chunk_len).len())
                .sum::<usize>()
        };
        let items: Vec<usize> = (1..=MAX_CHAIN).collect();
        g.push_items(&items).unwrap();
        if !huge_pages_always() {
            assert_eq!(touched(&g), 1, "one batch: only the heads' page");
        }
        // Popped and pushed again, the batch reuses its slots: still one page.
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(&g, &mut out), MAX_CHAIN);
        g.push_items(&items).unwrap();
        let batch_slots = slots_for(MAX_CHAIN as u32);
        assert_eq!(g.h().fresh.load(Ordering::Relaxed), batch_slots);
        // Enough items for (nearly) every slot of the first chunk: each of its pages in use, and
        // no chunk mapped.
        for _ in 1..CHUNK_SLOTS / batch_slots as usize {
            g.push_items(&items).unwrap();
        }
        let pages = before_table.div_ceil(4096);
        assert!(g.h().chunks[1].load(Ordering::Relaxed).is_null());
        if !huge_pages_always() {
            assert_eq!(touched(&g), pages, "a full first chunk");
        }
        // One batch more opens the second chunk, a mapping of its own, and touches its first
        // page only.
        g.push_items(&items).unwrap();
        let chunk1 = g.h().chunks[1].load(Ordering::Relaxed).cast::<u8>();
        assert!(!chunk1.is_null());
        assert!(
            resident(chunk1),
            "the second chunk's first page holds the batch"
        );
        if !huge_pages_always() {
            assert_eq!(touched(&g), pages + 1, "one batch in the second chunk");
        }
    }

    #[test]
    fn batches_come_back_whole_and_last_in_first_out() {
        let g = Global::new().unwrap();
        g.push_items(&[1, 2, 3]).unwrap();
        g.push_items(&[4]).unwrap();
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(&g, &mut out), 1);
        assert_eq!(out[0], 4);
        assert_eq!(pop_batch(&g, &mut out), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(pop_batch(&g, &mut out), 0);
    }

    #[test]
    fn len_counts_items_through_pushes_and_pops() {
        let g = Global::new().unwrap();
        assert_eq!(g.len(), 0);
        g.push_items(&[1, 2, 3]).unwrap();
        g.push_items(&[4, 5]).unwrap();
        assert_eq!(g.len(), 5);
        assert_eq!(g.pop_one(), Some(5));
        assert_eq!(g.len(), 4);
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(&g, &mut out), 1);
        assert_eq!(g.len(), 3);
        assert_eq!(pop_batch(&g, &mut out), 3);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn pop_one_splits_a_batch() {
        let g = Global::new().unwrap();
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
        let g = Global::new().unwrap();
        let items: Vec<usize> = (1..=2 * SLOT_ITEMS + 1).collect();
        g.push_items(&items).unwrap();
        let fresh = g.h().fresh.load(Ordering::Relaxed);
        assert_eq!(fresh, 3);
        for (popped, &item) in items.iter().rev().enumerate() {
            assert_eq!(g.pop_one(), Some(item));
            assert_eq!(g.len(), items.len() - popped - 1);
        }
        assert_eq!(g.pop_one(), None);
        g.push_items(&items).unwrap();
        assert_eq!(g.h().fresh.load(Ordering::Relaxed), fresh);
    }

    #[test]
    fn reserved_slots_are_filled_or_returned() {
        let g = Global::new().unwrap();
        let r = g.reserve(5).unwrap();
        g.fill_reserved(r, &[7, 8]);
        let r = g.reserve(3).unwrap();
        g.fill_reserved(r, &[]);
        let mut out = [0usize; MAX_CHAIN];
        let (n, slots) = g.take_batch(&mut out).unwrap();
        assert_eq!(&out[..n], &[7, 8]);
        // Put one back through the batch's own slots: no new memory needed.
        g.fill_reserved(slots, &[8]);
        assert_eq!(pop_batch(&g, &mut out), 1);
        assert_eq!(out[0], 8);
        assert_eq!(pop_batch(&g, &mut out), 0);
    }

    /// A reservation gives back the slots its items do not need, and those slots serve the
    /// next push.
    #[test]
    fn unused_reserved_slots_go_back_to_the_free_stack() {
        let g = Global::new().unwrap();
        let r = g.reserve(4 * SLOT_ITEMS).unwrap();
        assert_eq!(g.h().fresh.load(Ordering::Relaxed), 4);
        let filled: Vec<usize> = (1..=SLOT_ITEMS + 1).collect();
        g.fill_reserved(r, &filled);
        let pushed: Vec<usize> = (100..100 + 2 * SLOT_ITEMS).collect();
        g.push_items(&pushed).unwrap();
        assert_eq!(
            g.h().fresh.load(Ordering::Relaxed),
            4,
            "the two unused slots served"
        );
        let mut out = [0usize; MAX_CHAIN];
        assert_eq!(pop_batch(&g, &mut out), pushed.len());
        assert_eq!(&out[..pushed.len()], &pushed[..]);
        assert_eq!(pop_batch(&g, &mut out), filled.len());
        assert_eq!(&out[..filled.len()], &filled[..]);
        assert_eq!(pop_batch(&g, &mut out), 0);
    }

    #[test]
    fn slots_are_recycled_across_many_cycles_and_chunks() {
        let g = Global::new().unwrap();
        // More items than one chunk holds, then back: slots must be reused, not leaked.
        let items: Vec<usize> = (1..=3 * CHUNK_SLOTS * SLOT_ITEMS).collect();
        for round in 0..3 {
            for batch in items.chunks(MAX_CHAIN) {
                g.push_items(batch).unwrap();
            }
            let mut seen = Vec::new();
            let mut out = [0usize; MAX_CHAIN];
            loop {
                let n = pop_batch(&g, &mut out);
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&out[..n]);
            }
            seen.sort_unstable();
            assert_eq!(seen, items, "round {round}");
        }
        let mapped = g
            .h()
            .chunks
            .iter()
            .filter(|c| !c.load(Ordering::Relaxed).is_null())
            .count();
        let slots = items.len().div_ceil(MAX_CHAIN) * slots_for(MAX_CHAIN as u32) as usize;
        assert_eq!(
            mapped,
            slots.div_ceil(CHUNK_SLOTS) - 1,
            "the chunks that one round's {slots} slots need (the header's and the mapped ones); \
             later rounds reuse them"
        );
    }
}
