//! Where the per-CPU caches of freelists live.
//!
//! Each CPU gets one region of `1 << shift` bytes, so finding CPU `id`'s cache is a shift (or a
//! multiply by the region's size, see [`DirectCaches`]) and an add. A region holds the caches of
//! one or more freelists: first a header with the region's away mask (see
//! [`homes`](super::homes)); then each freelist's count word and limit word (how many slots a
//! push may fill now, read with the count), side by side; then a pointer to each freelist's
//! slots, for [`DirectCaches`]; then each one's harvested word and overflow mark (written by any
//! thread, so kept off the lines of the words before); then each freelist's slots. The slab
//! allocator puts all its size classes in one arena this way, so a program using many classes
//! keeps their count words in a few cache lines per CPU instead of one line (and one page) per
//! class.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use rseq_sys::{
    Index, MemoTag, NO_MEMO_TAG, NoMemo, Outcome, STACK_DEPTH_MASK, STACK_POPS_SHIFT, Sequences,
};

use super::homes::away_mask;
use crate::mode::{rseq_path_if_registered, rseq_path_remembered};
use crate::storage::{CPU_BLOCK_ALIGN, Mapping, round_up};

/// Bits of pop count a count word holds: harvest at least this often per CPU.
pub(crate) const POPS_BITS: u32 = usize::BITS - STACK_POPS_SHIFT;
pub(crate) const POPS_MASK: u64 = (1 << POPS_BITS) - 1;

/// Alignment of each freelist's slots inside a region: a whole cache line.
const SLOTS_ALIGN: usize = 64;

/// Bytes per list in each of a region's two word blocks: (count, limit), then (harvested, mark).
pub(crate) const WORD_PAIR: usize = 16;
/// Bytes of a region before its first count word: the header, which holds the region's away
/// mask (see [`homes`](super::homes)), one pair's worth to keep the pairs aligned.
pub(crate) const REGION_HEADER: usize = WORD_PAIR;

/// Byte offset of list `list`'s count word in a region.
#[inline(always)]
pub(crate) const fn count_at(list: usize) -> usize {
    REGION_HEADER + list * WORD_PAIR
}

/// Bytes from a region's first count word to its slot pointers (list `list`'s slots' address,
/// `8 * list` further): past room for every list's count pair, so that a fast path finds one at
/// a constant displacement from the remembered count word and the list's number.
const SLOT_POINTERS_AT: usize = MAX_LISTS * WORD_PAIR;

/// Byte offset of a region's harvested words, after its count words and slot pointers, on lines
/// of their own.
const fn harvested_at(lists: usize) -> usize {
    round_up(count_at(0) + SLOT_POINTERS_AT + lists * 8, CPU_BLOCK_ALIGN)
}

/// The away mask in the header before `counts`.
///
/// # Safety
/// `counts` is the first count word of a region of a live arena, and this thread stored the
/// mask, or read it with Acquire, before (see [`Table::prepare`]): a remembered region's.
#[inline(always)]
unsafe fn away_mask_before(counts: usize) -> u32 {
    // SAFETY: the region's header (the caller's contract), only ever accessed atomically.
    unsafe { AtomicU32::from_ptr((counts - REGION_HEADER) as *mut u32) }.load(Ordering::Relaxed)
}

/// Where the slot pointer of list `list` lies in the region whose first count word is `counts`:
/// inside the region (see [`harvested_at`]), aligned, only ever accessed atomically.
#[inline(always)]
const fn slot_pointer_at(counts: usize, list: usize) -> *mut usize {
    (counts + SLOT_POINTERS_AT + list * 8) as *mut usize
}

/// Per-CPU memory for the caches of `lists` freelists.
#[derive(Debug)]
pub(crate) struct CacheArena {
    mapping: Mapping,
    shift: u32,
    lists: usize,
    /// Byte offset of each freelist's slots inside a region.
    slots_at: [usize; MAX_LISTS],
    /// Each freelist's capacity (slots per CPU).
    capacities: [usize; MAX_LISTS],
}

/// Most freelists one arena holds.
pub(crate) const MAX_LISTS: usize = 64;

impl CacheArena {
    /// Maps regions for `cpus` CPUs holding caches of the given capacities (1 to
    /// [`MAX_LISTS`] of them); `None` when there are too many or the kernel refuses the memory.
    /// Pages are touched only as caches fill.
    pub(crate) fn new(cpus: usize, capacities: &[usize]) -> Option<CacheArena> {
        let lists = capacities.len();
        if !(1..=MAX_LISTS).contains(&lists) {
            return None;
        }
        let mut slots_at = [0; MAX_LISTS];
        let mut stored_capacities = [0; MAX_LISTS];
        stored_capacities[..lists].copy_from_slice(capacities);
        let mut end = round_up(harvested_at(lists) + lists * WORD_PAIR, CPU_BLOCK_ALIGN);
        for (at, &capacity) in slots_at.iter_mut().zip(capacities) {
            *at = end;
            end = round_up(end + capacity * 8, SLOTS_ALIGN);
        }
        // Whole cache-line pairs per CPU, so no two CPUs ever write the same line.
        let region = round_up(end, CPU_BLOCK_ALIGN).checked_next_power_of_two()?;
        let shift = region.trailing_zeros();
        let mapping = Mapping::new(cpus.checked_mul(region)?)?;
        Some(CacheArena {
            mapping,
            shift,
            lists,
            slots_at,
            capacities: stored_capacities,
        })
    }

    /// One table that finds the rseq cache of every freelist in this arena (see
    /// [`DirectCaches`]), for indices below `rseq_cpus`.
    ///
    /// # Safety
    /// As for [`DirectCaches::publish`].
    #[cfg(test)]
    pub(crate) unsafe fn direct(&self, rseq_cpus: usize) -> DirectCaches {
        let table = DirectCaches::unpublished();
        // SAFETY: the caller's contract; the table is new, published once.
        unsafe { table.publish(self, rseq_cpus) };
        table
    }

    /// The caches of freelist `list` (below the number of capacities given to `new`).
    ///
    /// # Safety
    /// `list` is below the number of capacities given to `new` and handed out once, and the
    /// arena's mapping outlives the returned caches.
    pub(crate) unsafe fn caches(&self, list: usize) -> Caches {
        debug_assert!(list < self.lists);
        let base = self.mapping.as_ptr();
        let harvested = harvested_at(self.lists) + list * WORD_PAIR;
        // SAFETY: all three offsets lie inside region 0 of the mapping (see `new`).
        unsafe {
            Caches {
                counts: NonNull::new_unchecked(base.add(count_at(list)).cast()),
                harvested: NonNull::new_unchecked(base.add(harvested).cast()),
                slots: NonNull::new_unchecked(base.add(self.slots_at[list]).cast()),
                shift: self.shift,
                _own: None,
            }
        }
    }
}

/// The rseq caches of every freelist in one arena, found from the list's number alone.
///
/// For the fast paths of a caller that keeps many freelists in one arena (the slab allocator,
/// one per size class): a freelist finds its caches through its own fields, which come one
/// cache line per freelist and must be loaded before its count word's address is known. This
/// table is a few lines for all the lists, and a list's entry (where its slots start, and its
/// capacity) is loaded alongside the count word rather than before it, since count words sit at
/// fixed offsets. It writes exactly what the freelists' own sequences write, so the two mix.
///
/// Its owner may keep it where the fast path finds it with no pointer to load first (the slab
/// allocator keeps it in `PerCpuAlloc` itself, often a `static`), before the arena exists: it
/// starts [unpublished](Self::unpublished), refusing every index, and is
/// [published](Self::publish) once. The index bound is an atomic, stored last (Release) and
/// loaded first (Acquire); the rest is plain memory, written before the bound admits any index
/// and never after, so the fast paths read it as plain loads, which the compiler may fold into
/// the instructions that use them.
///
/// The table finds a region by its first count word, at `counts + id * stride`, and its lists
/// from there. The fast paths do not compute it: each thread keeps its index's in its rseq memo
/// (see [`rseq_sys::memo`]), under the table's own tag, and the fast paths read it with the
/// registration. From the remembered count word they find a list's count word by its number and
/// its slots through the region's slot pointer, one load (the region is prepared when a memo
/// first names it). The sequence compares the remembered index with the kernel's, so a thread
/// that moved fails its attempt, and the slow paths call [`Self::remember`] to refresh the memo.
/// That saves the index load, the bound and the multiply: with the commits by `add` (see
/// rseq-sys), 10 instructions from a `malloc` and `free` pair and 0.96 of the time on `larson`
/// and `mstress`. The memo is kept for one table at a time per thread; a thread that alternates
/// between two allocators only takes their slow paths more often.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct DirectCaches {
    /// Indices below this have rseq caches: as each freelist of the arena allows. 0 until
    /// published, and stored last.
    rseq_cpus: AtomicU32,
    /// The table's memo tag ([`NO_MEMO_TAG`] until published, or if the process ran out of
    /// tags): what the fast paths ask the thread's memo for. Stored before `rseq_cpus`.
    memo_tag: AtomicU32,
    table: UnsafeCell<Table>,
}

/// What [`DirectCaches::publish`] writes before admitting any index.
#[derive(Debug)]
#[repr(C)]
struct Table {
    /// Region 0's first count word.
    counts: usize,
    /// Bytes from one region to the next.
    stride: usize,
    /// Per list: its slots' byte offset from its region's first count word (low half) and its
    /// capacity (high half). The capacity bounds the limit words; pushes go by the limit.
    lists: [u64; MAX_LISTS],
    /// The tag [`DirectCaches::memo_tag`] holds, for writing the memo.
    memo: Option<MemoTag>,
}

impl Table {
    /// Writes the thread's memo for index `id` under `tag`: its region, by the first count
    /// word, once the region is prepared for the fast paths that read it through the memo.
    fn remember(&self, seq: Sequences, tag: MemoTag, id: u32) {
        let counts = self.counts + id as usize * self.stride;
        self.prepare(counts, id);
        seq.current().remember(tag, id, counts);
    }

    /// Stores what the fast paths read in the region of index `id`, whose first count word is
    /// `counts`, besides the count words: each list's slot pointer, then the away mask (see
    /// [`homes`](super::homes)), which marks the region prepared. Done when a memo is about to
    /// name the region, so that regions of indices never run on stay untouched. Any thread may
    /// prepare a region, at the same time as others: they store the same values.
    fn prepare(&self, counts: usize, id: u32) {
        // SAFETY: the region's header, inside the arena's mapping, only ever accessed
        // atomically.
        let header = unsafe { AtomicU32::from_ptr((counts - REGION_HEADER) as *mut u32) };
        let mask = away_mask(id);
        // Acquire: a mask stored by another thread comes with the pointers it stored first. No
        // index's mask is 0, what an unprepared header holds.
        if header.load(Ordering::Acquire) == mask {
            return;
        }
        for (list, &entry) in self.lists.iter().enumerate().take_while(|&(_, &e)| e != 0) {
            // SAFETY: a slot pointer of a region of the published arena, which outlives the
            // table.
            unsafe { AtomicUsize::from_ptr(slot_pointer_at(counts, list)) }
                .store(counts + (entry as u32) as usize, Ordering::Relaxed);
        }
        header.store(mask, Ordering::Release);
    }
}

// SAFETY: the table behind the UnsafeCell is written only by `publish` (once, by one thread,
// before the Release store that first admits an index) and read only after an Acquire load of
// that bound admitted one: every read happens after the only write, and none races with it.
unsafe impl Sync for DirectCaches {}

impl DirectCaches {
    /// A table that refuses every index until [`Self::publish`]ed.
    pub(crate) const fn unpublished() -> DirectCaches {
        DirectCaches {
            rseq_cpus: AtomicU32::new(0),
            memo_tag: AtomicU32::new(NO_MEMO_TAG),
            table: UnsafeCell::new(Table {
                counts: 0,
                stride: 0,
                lists: [0; MAX_LISTS],
                memo: None,
            }),
        }
    }

    /// Points the table at `arena`'s lists, for indices below `rseq_cpus`; the bound is stored
    /// last (Release), so a fast path that sees an index admitted sees the rest.
    ///
    /// # Safety
    /// Called once, by one thread, before any other use of the table. The arena's mapping
    /// outlives the table's use, every list in it belongs to a freelist (so its count words and
    /// slots are only written by that freelist's sequences, or under its lock bit), and
    /// `rseq_cpus` is at most the CPUs the arena was made for and no more than those freelists
    /// allow the sequences.
    pub(crate) unsafe fn publish(&self, arena: &CacheArena, rseq_cpus: usize) {
        let mut lists = [0; MAX_LISTS];
        for (entry, (&at, &capacity)) in lists
            .iter_mut()
            .zip(arena.slots_at.iter().zip(&arena.capacities))
            .take(arena.lists)
        {
            *entry = (at - count_at(0)) as u64 | (capacity as u64) << 32;
        }
        let memo = MemoTag::new();
        // SAFETY: the caller's contract: no other thread reads the table before the Release
        // store below admits an index, and nothing else writes it.
        unsafe {
            self.table.get().write(Table {
                counts: arena.mapping.as_ptr() as usize + count_at(0),
                stride: 1 << arena.shift,
                lists,
                memo,
            })
        };
        // Before the bound: no memo holds this tag until a thread has seen an index admitted.
        self.memo_tag
            .store(memo.map_or(NO_MEMO_TAG, MemoTag::get), Ordering::Relaxed);
        self.rseq_cpus.store(rseq_cpus as u32, Ordering::Release);
    }

    /// Refreshes this thread's memo for this table: the index it runs on now and that index's
    /// region (its first count word), after storing the region's away mask. `true` if it
    /// changed the memo (there was none for this table, or a stale one), `false` if it did
    /// nothing: the memo was right already, or the thread has no rseq, or the index has no
    /// caches (so a fast attempt that just failed would fail again). For slow paths, after a
    /// fast attempt failed.
    #[inline(always)]
    pub(crate) fn refresh_memo(&self) -> bool {
        // No caches at all (`PERCPU_FORCE_FALLBACK`, or not published yet): nothing to read.
        let rseq_cpus = self.rseq_cpus.load(Ordering::Acquire);
        if rseq_cpus == 0 {
            return false;
        }
        let Some((seq, index)) = rseq_path_if_registered() else {
            return false;
        };
        let id = seq.current().index(index);
        if id >= rseq_cpus {
            return false;
        }
        if self.remembered().is_ok_and(|memo| memo.id == id) {
            return false;
        }
        // SAFETY: an index was admitted, so the table is published and never written again
        // (see the `Sync` impl).
        let table = unsafe { &*self.table.get() };
        let Some(tag) = table.memo else {
            return false;
        };
        table.remember(seq, tag, id);
        true
    }

    /// [`Self::refresh_memo`] for slow paths inlined into their callers: the tests that let it
    /// skip its work inline (threads without rseq take the slow paths on every call), the rest
    /// out of line.
    #[inline(always)]
    pub(crate) fn remember(&self) {
        if self.rseq_cpus.load(Ordering::Relaxed) != 0
            && rseq_sys::current_if_registered().is_some()
        {
            self.remember_out_of_line();
        }
    }

    #[cold]
    #[inline(never)]
    fn remember_out_of_line(&self) {
        self.refresh_memo();
    }

    /// Writes a memo naming index `id`, whether or not the thread runs there (tests of what a
    /// stale memo can do).
    #[cfg(test)]
    pub(crate) fn remember_as(&self, id: u32) {
        assert!(id < self.rseq_cpus.load(Ordering::Acquire));
        let (seq, _) = rseq_path_if_registered().expect("a registered thread");
        // SAFETY: an index was admitted, so the table is published.
        let table = unsafe { &*self.table.get() };
        table.remember(seq, table.memo.expect("a tag"), id);
    }

    /// The thread's sequences and index, and the index and region (its first count word) it
    /// remembered for this table; else why it has no memo for it (see [`Self::remember`]).
    #[inline(always)]
    fn remembered(&self) -> Result<Remembered, NoMemo> {
        // Relaxed: a memo holding this tag was written by this thread after it saw an index
        // admitted (Acquire, in `remember`), so the table's contents are visible to it.
        let (seq, index, memo) = rseq_path_remembered(self.memo_tag.load(Ordering::Relaxed))?;
        Ok(Remembered {
            seq,
            index,
            id: memo.index,
            counts: memo.value,
        })
    }

    /// List `list`'s count word and slots in the region whose first count word is at `counts`,
    /// a region this table gave (a remembered one: see [`Self::remember`]).
    #[inline(always)]
    fn cache_in(&self, counts: usize, list: usize) -> (*mut usize, *mut usize) {
        // SAFETY: a remembered region comes from a published table (see `Self::remembered`),
        // never written again.
        let table = unsafe { &*self.table.get() };
        debug_assert!(list < MAX_LISTS && table.lists[list] != 0, "no list {list}");
        // SAFETY: `list` is a list of the arena (the caller's contract), below MAX_LISTS.
        let entry = unsafe { *table.lists.get_unchecked(list) };
        // (count, limit) pairs side by side, as `CacheArena::caches` lays them: the limit shares
        // the count word's line.
        (
            (counts + list * WORD_PAIR) as *mut usize,
            (counts + (entry as u32) as usize) as *mut usize,
        )
    }

    /// List `list`'s count word and slots in the region whose first count word is at `counts`,
    /// a remembered one (so prepared: see [`Table::prepare`]): the slots from the region's slot
    /// pointer, one load, where [`Self::cache_in`] takes the table's offset and an add.
    #[inline(always)]
    fn remembered_cache(&self, counts: usize, list: usize) -> (*mut usize, *mut usize) {
        // SAFETY: a remembered region's slot pointer, stored (or seen with Acquire) by this
        // thread before it wrote the memo; the arena outlives the table.
        let slots = unsafe { AtomicUsize::from_ptr(slot_pointer_at(counts, list)) }
            .load(Ordering::Relaxed) as *mut usize;
        debug_assert_eq!(
            slots,
            self.cache_in(counts, list).1,
            "list {list}'s slot pointer"
        );
        ((counts + list * WORD_PAIR) as *mut usize, slots)
    }

    /// List `list`'s rseq cache on index `id`: count word and slots; `None` for indices without
    /// one (every index, before the table is published).
    #[inline(always)]
    fn cache(&self, id: u32, list: usize) -> Option<(*mut usize, *mut usize)> {
        if id >= self.rseq_cpus.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: an index was admitted, so the table is published and never written again
        // (see the `Sync` impl).
        let table = unsafe { &*self.table.get() };
        Some(self.cache_in(table.counts + id as usize * table.stride, list))
    }

    /// Whether the limit word beside `count`, a count word [`Self::cache`] returned for `list`,
    /// is within the list's capacity, as the pushes, which read it inside their sequences, need.
    fn limit_within_capacity(&self, count: *mut usize, list: usize) -> bool {
        // SAFETY: the word after a count word is its limit word (the layout above), aligned,
        // only ever accessed atomically (or by the sequences' plain loads).
        let limit = unsafe { AtomicUsize::from_ptr(count.add(1)) }.load(Ordering::Relaxed);
        // SAFETY: as in `cache`.
        limit <= (unsafe { (*self.table.get()).lists[list] } >> 32) as usize
    }

    /// One attempt to push `item` into list `list`'s rseq cache on this CPU, the sequence the
    /// freelist's own push runs: `false`, with nothing done, when the thread has no memo for
    /// this table (see [`Self::remember`]: no rseq, none yet, or another table's), the cache is
    /// full or locked, or the attempt was aborted (the thread may have moved since it
    /// remembered).
    ///
    /// # Safety
    /// Once the table is published, `list` is a list of the arena it was published with.
    #[inline(always)]
    pub(crate) unsafe fn try_push(&self, list: usize, item: NonNull<u8>) -> bool {
        // SAFETY: the caller's contract; `self` for both tables.
        unsafe { self.push_homed_with(list, item, 0, self) }
    }

    /// The push for an item whose home code is `home` (see [`homes`](super::homes); 0 for
    /// none; bits above [`HOME_MASK`](super::homes::HOME_MASK) are ignored): into `away`'s
    /// list `list` instead when this thread runs on another index. `false`, with nothing done,
    /// as for [`Self::try_push`].
    ///
    /// # Safety
    /// Once the tables are published, `list` is a list of the arena this one was published
    /// with, and of `away`'s when `home` has bits of a home code.
    #[inline(always)]
    pub(crate) unsafe fn push_homed_with(
        &self,
        list: usize,
        item: NonNull<u8>,
        home: u32,
        away: &DirectCaches,
    ) -> bool {
        let Ok(Remembered {
            seq,
            index,
            id,
            counts,
        }) = self.remembered()
        else {
            return false;
        };
        // Chosen before the sequence, which then aborts if the thread is not on index `id`. A
        // branch, not a select: the usual table's loads then need not wait for `id`. And one
        // branch for both cases (no home, or index `id`'s): a branch on `home != 0` alone
        // mispredicts in programs that mix homed and other classes (16 and 516 bytes at random
        // took 1.47× the time without homes that way, 1.11× with one branch).
        // SAFETY: a remembered region's (see `remember`).
        if home & unsafe { away_mask_before(counts) } != 0 {
            // The other table's region is not remembered: found through its own bound.
            let Some((count, slots)) = away.cache(id, list) else {
                return false;
            };
            // SAFETY: the caller's contract.
            return unsafe { away.push_at(seq, index, id, list, count, slots, item) };
        }
        let (count, slots) = self.remembered_cache(counts, list);
        // SAFETY: the caller's contract; `counts` is index `id`'s region's in this table.
        unsafe { self.push_at(seq, index, id, list, count, slots, item) }
    }

    /// [`Self::try_push`] for an item whose home code is `home` (as for
    /// [`Self::push_homed_with`], which sends it home), which fails as well, with nothing done,
    /// when the thread runs on another index; and says whether the thread is registered when it
    /// fails. The fast path of C's `free`: with the remote table's push
    /// inline it needs a stack frame.
    ///
    /// # Safety
    /// As for [`Self::try_push`].
    #[inline(always)]
    pub(crate) unsafe fn push_at_home(
        &self,
        list: usize,
        item: NonNull<u8>,
        home: u32,
    ) -> Result<bool, NoMemo> {
        let Remembered {
            seq,
            index,
            id,
            counts,
        } = self.remembered()?;
        // As in `push_homed_with`.
        // SAFETY: a remembered region's (see `remember`).
        if home & unsafe { away_mask_before(counts) } != 0 {
            return Ok(false);
        }
        let (count, slots) = self.remembered_cache(counts, list);
        // SAFETY: the caller's contract; `counts` is index `id`'s region's in this table.
        Ok(unsafe { self.push_at(seq, index, id, list, count, slots, item) })
    }

    /// The push sequence into `count` and `slots`, list `list`'s cache on index `id`.
    ///
    /// # Safety
    /// As for [`Self::try_push`]; `count` and `slots` are list `list`'s on index `id`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn push_at(
        &self,
        seq: Sequences,
        index: Index,
        id: u32,
        list: usize,
        count: *mut usize,
        slots: *mut usize,
        item: NonNull<u8>,
    ) -> bool {
        debug_assert!(
            self.limit_within_capacity(count, list),
            "limit past capacity"
        );
        // SAFETY: `count`, the limit word after it and `slots[..limit]` are index `id`'s cache
        // of a freelist (the table's contract; limits never exceed the capacity), written only
        // by sequences on `id` or under its lock bit, which makes the push fail. The sequence
        // fails unless the thread runs on `id`.
        let outcome =
            unsafe { seq.stack_push_limited(index, id, count, slots, item.as_ptr() as usize) };
        matches!(outcome, Outcome::Committed(()))
    }

    /// One attempt to pop from list `list`'s rseq cache on this CPU, the sequence the
    /// freelist's own pop runs: `None`, with nothing done, when the thread has no memo for this
    /// table, the cache is empty or locked, or the attempt was aborted (as for
    /// [`Self::try_push`]).
    ///
    /// # Safety
    /// As for [`Self::try_push`].
    #[inline(always)]
    pub(crate) unsafe fn try_pop(&self, list: usize) -> Option<NonNull<u8>> {
        let Remembered {
            seq,
            index,
            id,
            counts,
        } = self.remembered().ok()?;
        let (count, slots) = self.remembered_cache(counts, list);
        // SAFETY: as in `push_at`; items are never 0.
        NonNull::new(unsafe { seq.stack_try_pop(index, id, count, slots) } as *mut u8)
    }
}

/// A thread's memo for one [`DirectCaches`] (see [`DirectCaches::remember`]), with the thread's
/// sequences: the index it remembered, which it may have left since, and that index's region.
#[derive(Clone, Copy)]
pub(crate) struct Remembered {
    seq: Sequences,
    index: Index,
    id: u32,
    /// The region's first count word.
    counts: usize,
}

/// One freelist's per-CPU caches: CPU `id`'s count word, limit word, harvested word, overflow
/// mark and slots lie `id << shift` bytes past CPU 0's (the limit 8 bytes past the count, the
/// mark 8 past the harvested word).
#[derive(Debug)]
#[repr(C)] // What push and pop read first (see `RawFreeList`).
pub(crate) struct Caches {
    counts: NonNull<usize>,
    slots: NonNull<usize>,
    shift: u32,
    harvested: NonNull<u64>,
    /// The arena's mapping, when these caches have one to themselves.
    _own: Option<Mapping>,
}

// SAFETY: the pointers lead into mapped memory that lives as long as the caches (their own arena,
// or one the owner keeps alive); the freelist decides how that memory is shared between threads.
unsafe impl Send for Caches {}
// SAFETY: as above.
unsafe impl Sync for Caches {}

impl Caches {
    /// Caches of `capacity` slots for `cpus` CPUs, in their own arena.
    pub(crate) fn new(cpus: usize, capacity: usize) -> Option<Caches> {
        let arena = CacheArena::new(cpus, &[capacity])?;
        // SAFETY: the arena's mapping moves into the caches, so it lives exactly as long; the
        // arena has one list, handed out once.
        let mut caches = unsafe { arena.caches(0) };
        caches._own = Some(arena.mapping);
        Some(caches)
    }

    /// CPU `id`'s count word and slots. `id` must be below the CPUs the arena was made for.
    #[inline(always)]
    pub(crate) fn of(&self, id: usize) -> (*mut usize, *mut usize) {
        let offset = id << self.shift;
        // SAFETY: region `id` exists (the caller's bound), and both lie inside it.
        unsafe {
            (
                self.counts.as_ptr().byte_add(offset),
                self.slots.as_ptr().byte_add(offset),
            )
        }
    }

    /// CPU `id`'s count word (depth, lock, pops: see [`rseq_sys::STACK_LOCKED`]).
    #[inline]
    pub(crate) fn count(&self, id: usize) -> &AtomicUsize {
        // SAFETY: an aligned usize inside region `id`; other threads write it only with single
        // aligned stores (commits) or atomics, so atomic access is sound.
        unsafe { AtomicUsize::from_ptr(self.of(id).0) }
    }

    /// CPU `id`'s limit word: how many items a push may leave in the cache now (0 until the
    /// freelist first sets it; never more than the capacity).
    #[inline(always)]
    pub(crate) fn limit(&self, id: usize) -> &AtomicUsize {
        // SAFETY: an aligned usize inside region `id`, 8 bytes past its count word; only ever
        // accessed atomically (the fast paths load it, the slow paths store it).
        unsafe { AtomicUsize::from_ptr(self.of(id).0.byte_add(8)) }
    }

    /// CPU `id`'s overflow mark: the count word's pop count when its last overflow ended (low
    /// [`POPS_BITS`] bits), and how many overflows in a row saw few pops (the bits above).
    pub(crate) fn mark(&self, id: usize) -> &AtomicUsize {
        // SAFETY: an aligned usize inside region `id`, 8 bytes past its harvested word; only
        // ever accessed atomically.
        unsafe {
            AtomicUsize::from_ptr(
                self.harvested
                    .as_ptr()
                    .byte_add((id << self.shift) + 8)
                    .cast(),
            )
        }
    }

    /// CPU `id`'s pop count, from its count word (modulo `POPS_MASK + 1`).
    pub(crate) fn pops(&self, id: usize) -> usize {
        self.count(id).load(Ordering::Relaxed) >> STACK_POPS_SHIFT
    }

    /// CPU `id`'s depth, from its count word (at most `capacity`).
    pub(crate) fn depth(&self, id: usize, capacity: usize) -> usize {
        (self.count(id).load(Ordering::Relaxed) & STACK_DEPTH_MASK).min(capacity)
    }

    /// CPU `id`'s pops so far, in 64 bits: the count word's 48-bit pop count folded into a
    /// running total (the harvested word), which any thread may advance.
    pub(crate) fn harvest(&self, id: usize) -> u64 {
        // SAFETY: region `id`'s harvested word, aligned; only ever accessed atomically.
        let harvested =
            unsafe { AtomicU64::from_ptr(self.harvested.as_ptr().byte_add(id << self.shift)) };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_keep_lists_apart_and_cpus_on_separate_lines() {
        let arena = CacheArena::new(4, &[3, 2048, 1]).unwrap();
        // SAFETY: the arena outlives the caches; each list once.
        let lists: Vec<Caches> = (0..3).map(|l| unsafe { arena.caches(l) }).collect();
        let region = 1usize << arena.shift;
        assert!(region >= harvested_at(3) + 128 + 8 * (3 + 2048 + 1));
        let mut spans = Vec::new();
        for id in 0..4 {
            for (l, (caches, capacity)) in lists.iter().zip([3, 2048, 1]).enumerate() {
                let (count, slots) = caches.of(id);
                let limit = caches.limit(id).as_ptr() as usize;
                let harvested = caches.harvested.as_ptr() as usize + (id << arena.shift);
                let mark = caches.mark(id).as_ptr() as usize;
                let base = arena.mapping.as_ptr() as usize + id * region;
                assert_eq!(
                    count as usize,
                    base + REGION_HEADER + 16 * l,
                    "count words side by side after the header"
                );
                assert_eq!(
                    limit,
                    count as usize + 8,
                    "each limit beside its count word"
                );
                let pointer = slot_pointer_at(count as usize - 16 * l, l) as usize;
                assert_eq!(pointer, base + REGION_HEADER + SLOT_POINTERS_AT + 8 * l);
                // Written by any thread: on lines of their own, past the fast paths' words.
                assert_eq!(harvested, base + harvested_at(3) + 16 * l);
                assert!(harvested_at(3) >= REGION_HEADER + SLOT_POINTERS_AT + 3 * 8);
                assert_eq!(harvested_at(3) % 64, 0);
                assert_eq!(mark, harvested + 8, "each mark beside its harvested word");
                assert_eq!(slots as usize % 64, 0);
                for word in [count as usize, limit, pointer, harvested, mark] {
                    spans.push((word, word + 8));
                }
                spans.push((slots as usize, slots as usize + capacity * 8));
                assert!(slots as usize + capacity * 8 <= base + region);
            }
            let header = arena.mapping.as_ptr() as usize + id * region;
            spans.push((header, header + REGION_HEADER));
        }
        spans.sort_unstable();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "overlap: {pair:?}");
        }
    }

    /// The table finds exactly each list's own caches and limits, and none past its index
    /// bound.
    #[test]
    fn direct_caches_agree_with_each_lists_own() {
        let capacities = [3, 2048, 1, 100];
        let arena = CacheArena::new(4, &capacities).unwrap();
        // SAFETY: the arena outlives the caches and the tables; each list once.
        let lists: Vec<Caches> = (0..4).map(|l| unsafe { arena.caches(l) }).collect();
        // SAFETY: as above; nothing is pushed or popped through them.
        let (direct, partial) = unsafe { (arena.direct(4), arena.direct(2)) };
        for id in 0..4u32 {
            for (l, caches) in lists.iter().enumerate() {
                // A limit of its own per CPU and list, below the capacity.
                let limit = (id as usize + l) % (capacities[l] + 1);
                caches.limit(id as usize).store(limit, Ordering::Relaxed);
            }
        }
        for id in 0..4u32 {
            for (l, caches) in lists.iter().enumerate() {
                let (count, slots) = caches.of(id as usize);
                assert_eq!(
                    direct.cache(id, l),
                    Some((count, slots)),
                    "index {id}, list {l}"
                );
                // The pushes compare with the word after the count word: the list's limit.
                assert_eq!(
                    count.wrapping_add(1),
                    caches.limit(id as usize).as_ptr(),
                    "index {id}, list {l}"
                );
                assert!(direct.limit_within_capacity(count, l));
                let expected = (id < 2).then_some((count, slots));
                assert_eq!(partial.cache(id, l), expected, "index {id}, list {l}");
            }
        }
        assert_eq!(direct.cache(4, 0), None);
        assert_eq!(direct.cache(u32::MAX, 0), None);
        let unpublished = DirectCaches::unpublished();
        assert!(
            (0..4).all(|id| unpublished.cache(id, 0).is_none()),
            "an unpublished table admits no index"
        );
    }

    /// The sequences compare the remembered index with the kernel's: a memo naming an index the
    /// thread does not run on (here one no thread ever runs on: past the possible CPUs) never
    /// pushes into or pops from that index's cache. Refreshed, the same calls reach the
    /// thread's own.
    #[test]
    fn a_stale_memo_never_reaches_another_index_s_cache() {
        if crate::mode::rseq_path().is_none() {
            return; // No rseq here: no memo (the next test checks that).
        }
        let cpus = rseq_sys::possible_cpus() as usize;
        let arena = CacheArena::new(cpus + 1, &[8]).unwrap();
        // SAFETY: the arena outlives the caches and the table; its one list once.
        let (list, direct) = unsafe { (arena.caches(0), arena.direct(cpus + 1)) };
        for id in 0..=cpus {
            list.limit(id).store(8, Ordering::Relaxed);
        }
        // An item waiting in the cache of the index no thread runs on.
        let (count, slots) = list.of(cpus);
        // SAFETY: that cache's count word and first slot; no sequence can run on its index.
        unsafe {
            *slots = 0x1000;
            *count = 1;
        }
        let item = NonNull::new(0x2000 as *mut u8).unwrap();
        direct.remember_as(cpus as u32);
        for _ in 0..100 {
            // SAFETY: list 0 is the arena's.
            assert!(!unsafe { direct.try_push(0, item) });
            // SAFETY: as above.
            assert!(unsafe { direct.try_pop(0) }.is_none());
        }
        assert_eq!(list.count(cpus).load(Ordering::Relaxed), 1, "untouched");
        // SAFETY: as above.
        let pushed = (0..1000).any(|_| {
            direct.remember();
            // SAFETY: as above.
            unsafe { direct.try_push(0, item) }
        });
        assert!(pushed, "a refreshed memo reaches this CPU's cache");
        let depths: usize = (0..cpus).map(|id| list.depth(id, 8)).sum();
        assert_eq!(depths, 1, "once, in a CPU's own cache");
        assert_eq!(
            list.count(cpus).load(Ordering::Relaxed),
            1,
            "still untouched"
        );
    }

    /// Each table answers only its own memo, under a tag no other table has had: not the one a
    /// dropped table left behind, even at the same address; an unpublished table none.
    #[test]
    fn each_table_answers_only_its_own_memo() {
        let registered = crate::mode::rseq_path().is_some();
        let arena = |cpus| CacheArena::new(cpus, &[4]).unwrap();
        let cpus = rseq_sys::possible_cpus() as usize;
        let second = arena(cpus);
        // SAFETY: the arena outlives the table.
        let b = unsafe { second.direct(cpus) };
        let remembered = |t: &DirectCaches| t.remembered().map(|_| ());
        let none = if registered {
            NoMemo::Forgotten
        } else {
            NoMemo::Unregistered
        };
        for _ in 0..2 {
            // Built where the last one was (the same stack slot, likely), each is another
            // table.
            let first = arena(cpus);
            // SAFETY: as above.
            let a = unsafe { first.direct(cpus) };
            assert_eq!(remembered(&a), Err(none));
            a.remember();
            if registered {
                assert_eq!(remembered(&a), Ok(()));
            }
            assert_eq!(remembered(&b), Err(none));
            b.remember();
            assert_eq!(remembered(&a), Err(none));
        }
        assert!(DirectCaches::unpublished().remembered().is_err());
    }

    /// The pushes test an item's home code against the away mask of the index the memo names,
    /// which remembering stores in that index's region: an item homed at any other index is
    /// refused before the sequence, wherever the thread runs, and nothing is pushed; an item
    /// with no home, or homed here, goes in.
    #[test]
    fn pushes_refuse_items_homed_at_other_indices() {
        use super::super::homes::{away_mask, home_code};
        if crate::mode::rseq_path().is_none() {
            return; // No rseq here: no memo.
        }
        let cpus = rseq_sys::possible_cpus();
        let arena = CacheArena::new(cpus as usize + 1, &[8]).unwrap();
        // SAFETY: the arena outlives the caches and the table; its one list once.
        let (list, direct) = unsafe { (arena.caches(0), arena.direct(cpus as usize + 1)) };
        for id in 0..=cpus as usize {
            list.limit(id).store(8, Ordering::Relaxed);
        }
        let item = NonNull::new(0x2000 as *mut u8).unwrap();
        let counts = |list: &Caches| -> Vec<usize> {
            (0..=cpus as usize)
                .map(|id| list.count(id).load(Ordering::Relaxed))
                .collect()
        };
        let before = counts(&list);
        for id in 0..=cpus {
            direct.remember_as(id);
            let header = arena.mapping.as_ptr() as usize + ((id as usize) << arena.shift);
            // SAFETY: the region's header, inside the mapping.
            let stored = unsafe { AtomicU32::from_ptr(header as *mut u32) }.load(Ordering::Relaxed);
            assert_eq!(stored, away_mask(id), "index {id}'s header");
            for other in (0..=cpus + 1).filter(|&other| other != id) {
                let code = home_code(other);
                if code == 0 {
                    continue; // Past the homed indices: no home, which any index takes.
                }
                // SAFETY: list 0 is the arena's, and so is the remote table's (itself).
                unsafe {
                    assert_eq!(direct.push_at_home(0, item, code), Ok(false));
                    assert!(!direct.push_homed_with(0, item, code, &DirectCaches::unpublished()));
                }
            }
        }
        assert_eq!(counts(&list), before, "nothing pushed anywhere");
        // With the memo of the index the thread runs on, its own home and none go in (a
        // migration may fail an attempt; another follows).
        for code_of_here in [false, true] {
            let pushed = (0..1000).any(|_| {
                direct.remember();
                let Some(id) =
                    crate::mode::rseq_path().map(|(seq, index)| seq.current().index(index))
                else {
                    return false;
                };
                let code = if code_of_here { home_code(id) } else { 0 };
                // SAFETY: as above.
                unsafe { direct.push_at_home(0, item, code) == Ok(true) }
            });
            assert!(pushed, "home here: {code_of_here}");
        }
    }

    /// Remembering a region prepares it for the fast paths: each list's slot pointer is the
    /// list's slots there, as the table finds them, and the header holds the index's away mask.
    /// A region no memo named stays untouched (zeroed), however many others were prepared.
    #[test]
    fn remembering_a_region_prepares_it_and_no_other() {
        use super::super::homes::away_mask;
        if crate::mode::rseq_path().is_none() {
            return; // No rseq here: no memo.
        }
        let capacities = [3, 2048, 1, 100];
        let arena = CacheArena::new(4, &capacities).unwrap();
        // SAFETY: the arena outlives the table; nothing is pushed or popped.
        let direct = unsafe { arena.direct(4) };
        let counts_of = |id: u32| {
            arena.mapping.as_ptr() as usize + ((id as usize) << arena.shift) + REGION_HEADER
        };
        let header = |id: u32| {
            // SAFETY: a region's header, inside the mapping, only ever accessed atomically.
            unsafe { AtomicU32::from_ptr((counts_of(id) - REGION_HEADER) as *mut u32) }
                .load(Ordering::Relaxed)
        };
        for id in [2, 0, 2] {
            direct.remember_as(id);
            assert_eq!(header(id), away_mask(id));
            for list in 0..capacities.len() {
                // SAFETY: a slot pointer of the arena's, only ever accessed atomically.
                let pointer =
                    unsafe { AtomicUsize::from_ptr(slot_pointer_at(counts_of(id), list)) }
                        .load(Ordering::Relaxed);
                assert_eq!(
                    Some(pointer as *mut usize),
                    direct.cache(id, list).map(|c| c.1)
                );
            }
        }
        for id in [1, 3] {
            assert_eq!(header(id), 0, "index {id}'s header");
            for list in 0..capacities.len() {
                // SAFETY: as above.
                let pointer =
                    unsafe { AtomicUsize::from_ptr(slot_pointer_at(counts_of(id), list)) };
                assert_eq!(pointer.load(Ordering::Relaxed), 0);
            }
        }
    }
}
