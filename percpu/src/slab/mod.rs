//! A per-CPU slab allocator: [`PerCpuAlloc`], usable as `#[global_allocator]`.
//!
//! # Levels
//! - **Per-CPU caches**, one per size class: a [`RawFreeList`](crate::RawFreeList)'s array
//!   stacks. `alloc` and `dealloc` of a small block are one rseq sequence each (the pop also
//!   counts the allocation for [`PerCpuAlloc::stats`], in its own commit); nothing shared is
//!   written. Each cache's limit follows its use, up to the configured budget: it starts at a
//!   batch, doubles when the cache is used both ways, and halves when its CPU only frees, so a
//!   CPU that collects what others allocate holds a batch or two, not the whole budget.
//! - **Transfer level**, per class: the freelist's lock-free global level, in per-CPU shards,
//!   whose slots come from one pool for all classes. Full caches overflow into it and empty
//!   ones refill from it, a batch at a time, so a thread that frees what another allocates
//!   passes blocks across CPUs without reaching the slabs.
//! - **Homes**, for blocks smaller than a cache line (16, 32 and 48 bytes), which share lines:
//!   their slabs belong to the CPU whose cache carved them, and [`PerCpuAlloc::free`] sends such
//!   a block freed on another CPU home (through a small per-CPU remote buffer, to the home's
//!   transfer shard) instead of caching it where a neighbour in the same line is in use
//!   elsewhere. The details are in `heap.rs`.
//! - **Central level**, per class (`central.rs`): the slabs serving the class, each with its own
//!   free list and live count, under one lock reached only in batches: when the transfer level
//!   is empty (fill) or holds more than about 1 MiB (spill).
//! - **Page heap** (`pages.rs`): 256 KiB slabs, mapped 4 MiB at a time, the address → slab
//!   descriptor map, and the class map that finds any block's class from its pointer in one
//!   load, with its home (2 GiB of reserved address space, where `RLIMIT_AS` leaves it free to
//!   reserve). Empty slabs come back here; beyond a few kept resident, their memory goes back to
//!   the kernel with `MADV_DONTNEED`.
//! - **Large blocks** (`large.rs`) beyond 128 KiB: a mapping each, with a bounded cache of freed
//!   mappings, and `mremap` for `realloc`.
//!
//! Memory is bounded by CPUs, not threads: caches belong to CPUs, so a thread that exits
//! strands nothing, and there is nothing to flush.
//!
//! # Without rseq
//! Threads without rseq (or every thread under `PERCPU_FORCE_FALLBACK=1`) use the freelists'
//! caches for threads without rseq: per CPU, behind a try-lock that is passed by rather than
//! waited for, over the same transfer level. Allocation-free, and no thread waits for another.
//!
//! # Rules it keeps
//! Every path is free of the global allocator (all memory is `mmap`ed), of panics and unwinding,
//! and of locks that could allocate: the only locks are the spinlocks of the slow paths, taken
//! by `pthread_atfork` around `fork` so that the child can allocate at once.

mod central;
mod class;
mod heap;
mod large;
mod lock;
mod pages;
mod stats;

pub use stats::{AllocStats, ClassStats};

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use crate::freelist::DirectCaches;
use class::{
    CLASSES, MAX_SMALL, SIZES, TABLE_MAX, class_by_table, class_for, class_of_small, keeps_block,
};
use heap::{ALIAS_GAP, Heap};
use lock::SpinLock;
use pages::{ClassMapRef, class_and_home_of, class_of_word};
use rseq_sys::NoMemo;

/// Number of size classes ([`AllocStats::classes`] has one entry each).
pub const SIZE_CLASSES: usize = CLASSES;
/// The largest block served from slabs; larger requests get a mapping each.
pub const MAX_SMALL_SIZE: usize = MAX_SMALL;
/// Default per-CPU cache budget per size class, in bytes (see
/// [`PerCpuAlloc::with_cpu_cache_bytes`]).
pub const DEFAULT_CPU_CACHE_BYTES: usize = 64 << 10;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;

/// A per-CPU slab allocator.
///
/// ```
/// use percpu::PerCpuAlloc;
///
/// #[global_allocator]
/// static GLOBAL: PerCpuAlloc = PerCpuAlloc::new();
///
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// assert!(GLOBAL.stats().allocs() > 0);
/// ```
///
/// It can also be used as a value (through [`GlobalAlloc`]); dropping it unmaps all its memory,
/// so every block it gave must be freed (or forgotten) first.
///
/// Initialisation happens on first use and allocates nothing. Sizes up to
/// [`MAX_SMALL_SIZE`] come from size classes (at most 15 bytes or 25% above the request);
/// any power-of-two alignment is honoured.
///
/// A page in size (and alignment): the tables its fast paths read are kept in it, away from the
/// page offsets the per-CPU caches' count words sit at.
#[repr(C, align(4096))]
pub struct PerCpuAlloc {
    heap: AtomicPtr<Heap>,
    state: AtomicU8,
    /// `pthread_self()` of the thread initialising, so it can refuse re-entry instead of
    /// waiting for itself.
    initializer: AtomicUsize,
    cpu_cache_bytes: usize,
    fast: FastPaths,
}

/// What the fast paths of `malloc`, `free` and their Rust counterparts read, kept in the
/// allocator value itself: usually a `static`, whose fields load relative to the code, so the
/// first loads of a fast path wait on no pointer to the heap (the heap is mapped, and found
/// through [`PerCpuAlloc::heap`]). Published once the heap is, after it: until then every
/// attempt fails and takes the slow path, which initialises.
///
/// Aligned to 1 KiB, it lies at the page offsets from 1 KiB up: off those of the count words,
/// which the fast paths store to (the first [`ALIAS_GAP`] bytes of each CPU's region). A load
/// at the page offset of a store still in flight waits for it (4 KiB aliasing); such loads of
/// the heap's fields once made pairs 10% slower.
#[repr(C, align(1024))]
struct FastPaths {
    /// Every class's rseq cache.
    direct: DirectCaches,
    /// The remote buffers' (homed classes only).
    remote: DirectCaches,
    /// Finds a block's class and home for `free`.
    class_map: ClassMapRef,
}

const _: () = {
    let at = core::mem::offset_of!(PerCpuAlloc, fast);
    assert!(at >= ALIAS_GAP && at + core::mem::size_of::<FastPaths>() <= 4096);
};

impl PerCpuAlloc {
    /// An allocator with the default per-CPU cache budget.
    pub const fn new() -> PerCpuAlloc {
        PerCpuAlloc::with_cpu_cache_bytes(DEFAULT_CPU_CACHE_BYTES)
    }

    /// An allocator whose per-CPU caches hold about `bytes` per size class (at least 2 and at
    /// most 2048 blocks each): per CPU, at most about `48 × bytes` sit in caches, plus two blocks
    /// of each class above `bytes` (about 4 MiB in all by default). Caches grow to this budget
    /// only when their CPU both allocates and frees the class.
    pub const fn with_cpu_cache_bytes(bytes: usize) -> PerCpuAlloc {
        PerCpuAlloc {
            heap: AtomicPtr::new(ptr::null_mut()),
            state: AtomicU8::new(UNINIT),
            initializer: AtomicUsize::new(0),
            cpu_cache_bytes: bytes,
            fast: FastPaths {
                direct: DirectCaches::unpublished(),
                remote: DirectCaches::unpublished(),
                class_map: ClassMapRef::unpublished(),
            },
        }
    }

    #[inline(always)]
    fn heap(&self) -> Option<&Heap> {
        let heap = self.heap.load(Ordering::Acquire);
        if heap.is_null() {
            return self.init();
        }
        // SAFETY: a published heap lives until `self` is dropped.
        Some(unsafe { &*heap })
    }

    /// The heap if it is initialised, without initialising it: always, for an allocator that
    /// gave out a block.
    #[inline(always)]
    fn heap_if_ready(&self) -> Option<&Heap> {
        // SAFETY: as in `heap`; the Acquire load pairs with the Release that published the heap.
        unsafe { self.heap.load(Ordering::Acquire).as_ref() }
    }

    #[cold]
    #[inline(never)]
    fn init(&self) -> Option<&Heap> {
        // SAFETY: pthread_self has no preconditions and allocates nothing.
        let me = unsafe { libc::pthread_self() } as usize;
        loop {
            match self.state.compare_exchange(
                UNINIT,
                INITIALIZING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(READY) => return self.heap_if_ready(),
                Err(_) => {
                    if self.initializer.load(Ordering::Relaxed) == me {
                        return None; // Re-entered while initialising: refuse, never wait on itself.
                    }
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
        self.initializer.store(me, Ordering::Relaxed);
        let heap = create_heap(self.cpu_cache_bytes);
        self.initializer.store(0, Ordering::Relaxed);
        let Some(heap) = heap else {
            self.state.store(UNINIT, Ordering::Release);
            return None;
        };
        self.heap.store(heap.as_ptr(), Ordering::Release);
        self.state.store(READY, Ordering::Release);
        // SAFETY: just published; it lives until `self` drops (and unregisters it).
        let heap = unsafe { heap.as_ref() };
        // SAFETY: once (only the thread that built the heap gets here), into tables that die
        // with `self`, as the heap does.
        unsafe {
            heap.publish_fast_paths(&self.fast.direct, &self.fast.remote);
            self.fast.class_map.publish(&heap.pages);
        }
        register_for_fork(heap);
        Some(heap)
    }

    /// Statistics: bytes in use per size class, bytes cached at each level, mapped and released
    /// bytes, allocation and free counts. Allocates nothing.
    pub fn stats(&self) -> AllocStats {
        self.heap_if_ready().map(Heap::stats).unwrap_or_default()
    }

    /// Moves every free block in the per-CPU caches and the transfer level back to its slab
    /// (fencing other CPUs, as [`RawFreeList::drain`](crate::RawFreeList::drain) does), and
    /// returns empty slabs and cached large mappings to the kernel. Returns the bytes released.
    /// Safe while other threads allocate.
    pub fn trim(&self) -> usize {
        self.heap_if_ready().map_or(0, Heap::trim)
    }

    /// Bytes usable at `block` (at least the size it was allocated with).
    ///
    /// # Safety
    /// `block` was returned by this allocator and not freed.
    pub unsafe fn usable_size(&self, block: *const u8) -> usize {
        let Some(heap) = self.heap_if_ready() else {
            return 0;
        };
        match heap.class_of_block(block) {
            Some(class) => SIZES[class],
            None => heap.large.usable_size(block),
        }
    }

    /// One attempt at a block of `size` bytes aligned to 16 (C's `malloc`) from this CPU's
    /// cache: `None`, with nothing done, when that takes more (a first call, an empty cache, a
    /// size above 1 KiB, a thread without sequences, an interrupted attempt). The caller then
    /// allocates the usual way ([`Self::alloc_by_size`], whose own attempt covers every size
    /// class). It has no call in it, so it needs no stack frame: a C `malloc` that tries it first
    /// (percpu-malloc) spends fewer instructions in the common case. Only sizes up to 1 KiB, those
    /// whose class is in a table, which C programs' mixed sizes favour: one test of the size
    /// then admits them all (`alloc` keeps the arithmetic, which tight loops of one size favour).
    #[inline]
    pub fn try_alloc_fast(&self, size: usize) -> Option<NonNull<u8>> {
        if size > TABLE_MAX {
            return None;
        }
        // SAFETY: every class is a list of the arena the table is published with.
        unsafe { self.fast.direct.try_pop(class_by_table(size)) }
    }

    /// `size` bytes aligned to 16, as C's `malloc` asks (a `size` of 0 gets the smallest
    /// block); null when out of memory. The counterpart of [`Self::free`]: it takes no `Layout`.
    /// A C `malloc` tries [`Self::try_alloc_fast`] first (inline, with no stack frame) before
    /// calling this, which then makes no attempt of its own for the sizes that one covers (the
    /// heap's own path tries the cache again before refilling it). Threads without rseq come
    /// here for every block.
    pub fn alloc_by_size(&self, size: usize) -> *mut u8 {
        if size <= TABLE_MAX {
            return self.alloc_small_past_fast(class_by_table(size));
        }
        if size <= MAX_SMALL {
            return self.alloc_small(class_of_small(size));
        }
        let Some(heap) = self.heap() else {
            return ptr::null_mut();
        };
        match Layout::from_size_align(size, 16) {
            Ok(layout) => Self::alloc_large(heap, layout, false),
            Err(_) => ptr::null_mut(),
        }
    }

    /// Frees `block` knowing only its address (as C's `free` does).
    ///
    /// # Safety
    /// `block` was returned by this allocator and not freed, or is null (then nothing happens).
    // Inline, always: a C `free` built on this (percpu-malloc) would otherwise reach it through
    // a jump at best (the GOT at worst).
    #[inline(always)]
    pub unsafe fn free(&self, block: *mut u8) {
        // The common case in one attempt with no call in it (so no stack frame); anything else
        // starts over out of line.
        // Null needs no test of its own: no slab holds address 0 (the page heap refuses a chunk
        // there), so it has no class and goes to the slow path, which ignores it.
        // A block homed at another index (see `heap`'s docs) goes into the remote buffer, on
        // the slow path. Spelled out, with no closures: the compiler would not inline them.
        let word = u32::from(self.fast.class_map.slab_word(block as usize));
        if let Some(class) = class_of_word(word) {
            // SAFETY: a block with a class is a slab block, never null.
            let slab_block = unsafe { NonNull::new_unchecked(block) };
            // The class is known, so the slow paths need not look it up again (they get the
            // word: one register, where the class and home take two across the attempt). The
            // push takes the word as the home code: it ignores the class bits above the code.
            // SAFETY: every class is a list of the arena the direct table is published with.
            return match unsafe { self.fast.direct.push_at_home(class, slab_block, word) } {
                Ok(true) => {}
                Ok(false) | Err(NoMemo::Forgotten) => free_small_retrying(self, word, slab_block),
                Err(NoMemo::Unregistered) => free_small_unregistered(self, word, slab_block),
            };
        }
        // SAFETY: the caller's contract; the attempt above did nothing.
        unsafe { self.free_slow(block) }
    }

    /// [`Self::free`] after its fast attempt did nothing. `extern "C"`, so that the compiler
    /// knows it never unwinds: a C `free` built on [`Self::free`] then needs no landing pad and
    /// ends in a tail call, with no stack frame of its own.
    ///
    /// Where there is no class map (under a finite `RLIMIT_AS`, see `pages.rs`), every small
    /// block comes here: the slab descriptors give its class, and [`free_small_slow`] tries the
    /// cache's push once more before the freelist's own path (`larson` took 1.27× the time
    /// without that).
    ///
    /// # Safety
    /// As for [`Self::free`].
    #[cold]
    #[inline(never)]
    unsafe extern "C" fn free_slow(&self, block: *mut u8) {
        let (Some(heap), Some(nonnull)) = (self.heap_if_ready(), NonNull::new(block)) else {
            return;
        };
        let word = heap.slab_word(block);
        if class_and_home_of(word).is_none() {
            return heap.large.free(block);
        }
        free_small_slow(self, word, nonnull);
    }

    /// One attempt to push `block`, of size class `class`, into this CPU's cache (or its remote
    /// buffer, for a block homed at another index): `false`, with nothing done, when that takes
    /// more.
    ///
    /// # Safety
    /// `class` is the class in `word`, the word of `block`'s slab (which gives the home code).
    #[inline(always)]
    unsafe fn try_push_slab_block(&self, class: usize, block: NonNull<u8>, word: u32) -> bool {
        // SAFETY: every class is a list of the arena the direct table is published with (an
        // unpublished one admits nothing), and every class with homes of the remote table's:
        // only their slabs have one.
        unsafe {
            self.fast
                .direct
                .push_homed_with(class, block, word, &self.fast.remote)
        }
    }

    /// Resizes `block` knowing only its address (as C's `realloc` does): in place when the new
    /// size fits its block and uses at least half of it (as mimalloc and tcmalloc do), or when
    /// its mapping can be remapped; else moved to a block aligned to 16. Null when out of memory
    /// (the block is then unchanged); a `new_size` of 0 gets the smallest block.
    ///
    /// A block shrunk in place keeps its size class, which the new size may not name: free it
    /// with [`Self::free`], by address, never with a `Layout` of the new size.
    ///
    /// # Safety
    /// `block` was returned by this allocator and not freed.
    pub unsafe fn realloc_unsized(&self, block: *mut u8, new_size: usize) -> *mut u8 {
        let Some(heap) = self.heap_if_ready() else {
            return ptr::null_mut();
        };
        let old_size = match heap.class_of_block(block) {
            Some(class) if keeps_block(class, new_size) => return block,
            Some(class) => SIZES[class],
            None => {
                if new_size > MAX_SMALL
                    && let Some(moved) = heap.large.realloc(block, new_size, 16)
                {
                    return moved;
                }
                heap.large.usable_size(block)
            }
        };
        // Most moves take a cached block, as C's `malloc` does: one attempt first.
        if let Some(moved) = self.try_alloc_fast(new_size) {
            // SAFETY: both blocks are live and disjoint; `moved` holds `new_size` bytes, `block`
            // `old_size`; then `block` goes, by its address alone.
            unsafe {
                ptr::copy_nonoverlapping(block, moved.as_ptr(), old_size.min(new_size));
                self.free(block);
            }
            return moved.as_ptr();
        }
        let Ok(layout) = Layout::from_size_align(new_size, 16) else {
            return ptr::null_mut();
        };
        // SAFETY: `block` is live and holds `old_size` bytes; `free` needs only its address.
        unsafe { self.move_block(block, old_size, layout, |alloc| alloc.free(block)) }
    }

    /// Allocates `layout`, copies the first `min(old_size, layout.size())` bytes of `block` into
    /// it and frees `block` with `free_old`; null (with `block` untouched) when out of memory.
    ///
    /// # Safety
    /// `block` is live, holds `old_size` bytes, and `free_old` frees it correctly.
    unsafe fn move_block(
        &self,
        block: *mut u8,
        old_size: usize,
        layout: Layout,
        free_old: impl FnOnce(&Self),
    ) -> *mut u8 {
        // SAFETY: a valid layout, this allocator's own alloc.
        let moved = unsafe { self.alloc(layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are live and disjoint; both hold the bytes copied.
            unsafe { ptr::copy_nonoverlapping(block, moved, old_size.min(layout.size())) };
            free_old(self);
        }
        moved
    }

    /// A block of size class `class`, or null when out of memory: from this CPU's cache in one
    /// attempt, else through the heap (initialising it on the first call).
    #[inline(always)]
    fn alloc_small(&self, class: usize) -> *mut u8 {
        // SAFETY: every class is a list of the arena the table is published with.
        if let Some(block) = unsafe { self.fast.direct.try_pop(class) } {
            return block.as_ptr();
        }
        self.alloc_small_slow(class)
    }

    /// [`Self::alloc_small`]'s way on when its attempt fails, out of line: inlined, its calls
    /// made the callers (`GlobalAlloc::alloc` included) save registers on every call, the
    /// fast one too.
    #[cold]
    #[inline(never)]
    fn alloc_small_slow(&self, class: usize) -> *mut u8 {
        self.alloc_small_past_fast(class)
    }

    /// [`Self::alloc_small`] after its attempt: through the heap, which tries the cache again
    /// (by the index, not the memo) before it refills it.
    #[inline(always)]
    fn alloc_small_past_fast(&self, class: usize) -> *mut u8 {
        // The attempt may have failed for want of a memo, or a stale one.
        self.fast.direct.remember();
        match self.heap() {
            Some(heap) => heap.alloc_small_past_fast(class),
            None => ptr::null_mut(),
        }
    }

    /// `dealloc`'s way on when its attempt fails, out of line (see [`Self::alloc_small_slow`]).
    #[cold]
    #[inline(never)]
    fn dealloc_small_slow(&self, class: usize, block: NonNull<u8>) {
        // As in `alloc_small_past_fast`.
        self.fast.direct.remember();
        if let Some(heap) = self.heap_if_ready() {
            heap.free_small_past_fast(class, block);
        }
    }

    /// `dealloc` of a large block, out of line (see [`Self::alloc_small_slow`]).
    #[cold]
    #[inline(never)]
    fn dealloc_large(&self, block: NonNull<u8>) {
        if let Some(heap) = self.heap_if_ready() {
            heap.large.free(block.as_ptr());
        }
    }

    /// A large block, or null; zeroed when asked (skipping the memset on fresh mappings).
    #[cold]
    fn alloc_large(heap: &Heap, layout: Layout, zeroed: bool) -> *mut u8 {
        match heap.large.alloc(layout.size(), layout.align()) {
            Some(block) => {
                if zeroed && !block.zeroed {
                    // SAFETY: the block has at least `size` writable bytes.
                    unsafe { ptr::write_bytes(block.ptr, 0, layout.size()) };
                }
                block.ptr
            }
            None => ptr::null_mut(),
        }
    }
}

impl Default for PerCpuAlloc {
    fn default() -> PerCpuAlloc {
        PerCpuAlloc::new()
    }
}

impl core::fmt::Debug for PerCpuAlloc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuAlloc")
            .field("cpu_cache_bytes", &self.cpu_cache_bytes)
            .field("initialised", &!self.heap.load(Ordering::Acquire).is_null())
            .finish_non_exhaustive()
    }
}

/// [`PerCpuAlloc::free`] of a slab block, whose slab's word is `word` (one with a class), when
/// the fast attempt could not be made or failed: [`free_small_retrying`] for a thread with rseq,
/// [`free_small_unregistered`] for one without.
#[inline(never)]
extern "C" fn free_small_slow(alloc: &PerCpuAlloc, word: u32, block: NonNull<u8>) {
    if rseq_sys::current_if_registered().is_some() {
        free_small_retrying(alloc, word, block)
    } else {
        free_small_unregistered(alloc, word, block)
    }
}

/// [`free_small_slow`] for a thread with rseq: the push into the remote buffer for a block homed
/// elsewhere (which `free` leaves to this path, to keep its own short), else the memo refreshed
/// (the attempt may have failed for want of one, or a stale one) and the push tried again, then
/// the freelist's own path. `extern "C"` (it never unwinds) and out of line, so that `free` ends
/// in a tail call with no stack frame.
#[inline(never)]
extern "C" fn free_small_retrying(alloc: &PerCpuAlloc, word: u32, block: NonNull<u8>) {
    let Some((class, home)) = class_and_home_of(word) else {
        return;
    };
    // A block homed at another index comes here with the memo intact: one attempt with it.
    // SAFETY: the class comes from the block's slab word (the caller's).
    if home != 0 && unsafe { alloc.try_push_slab_block(class, block, word) } {
        return;
    }
    // Any other attempt failed for a full cache, or for want of a memo or a stale one: once
    // that is mended, one more.
    // SAFETY: as above.
    if alloc.fast.direct.refresh_memo() && unsafe { alloc.try_push_slab_block(class, block, word) }
    {
        return;
    }
    // Always there: the class map or descriptors that gave the class are published after it.
    if let Some(heap) = alloc.heap_if_ready() {
        heap.free_homed(class, block, home);
    }
}

/// [`free_small_slow`] for a thread without rseq (none yet, or none at all): straight to the
/// freelist, which registers the thread if it can. Threads without rseq come here for every
/// block.
#[inline(never)]
extern "C" fn free_small_unregistered(alloc: &PerCpuAlloc, word: u32, block: NonNull<u8>) {
    if let (Some((class, home)), Some(heap)) = (class_and_home_of(word), alloc.heap_if_ready()) {
        heap.free_homed(class, block, home);
    }
}

/// Maps and builds a heap; `None` when out of memory.
fn create_heap(cpu_cache_bytes: usize) -> Option<NonNull<Heap>> {
    // SAFETY: sysconf has no preconditions.
    let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 && (n as usize).is_power_of_two() => n as usize,
        _ => 4096,
    };
    let len = core::mem::size_of::<Heap>();
    let at = crate::storage::map(len)? as *mut Heap;
    const { assert!(core::mem::align_of::<Heap>() <= 4096) };
    // SAFETY: a fresh mapping (zeroed), page-aligned and large enough, holding nothing.
    if unsafe { Heap::init(at, cpu_cache_bytes, page_size) } {
        NonNull::new(at)
    } else {
        // SAFETY: the mapping just made; `init` left nothing in it.
        unsafe { libc::munmap(at.cast(), len) };
        None
    }
}

// SAFETY: every method upholds GlobalAlloc's contract: blocks are at least `layout.size()`
// bytes, aligned to `layout.align()`, disjoint while live; failure returns null; nothing
// unwinds (no path panics) and nothing calls the global allocator.
unsafe impl GlobalAlloc for PerCpuAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_for(layout.size(), layout.align()) {
            Some(class) => self.alloc_small(class),
            None => match self.heap() {
                Some(heap) => Self::alloc_large(heap, layout, false),
                None => ptr::null_mut(),
            },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(block) = NonNull::new(block) else {
            return;
        };
        match class_for(layout.size(), layout.align()) {
            Some(class) => {
                debug_assert_eq!(
                    self.heap_if_ready()
                        .and_then(|heap| heap.class_of_block(block.as_ptr())),
                    Some(class)
                );
                // SAFETY: every class is a list of the arena the table is published with.
                if unsafe { self.fast.direct.try_push(class, block) } {
                    return;
                }
                self.dealloc_small_slow(class, block);
            }
            None => self.dealloc_large(block),
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_for(layout.size(), layout.align()) {
            Some(class) => {
                let block = self.alloc_small(class);
                if !block.is_null() {
                    // SAFETY: the block has at least `size` writable bytes.
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
            None => match self.heap() {
                Some(heap) => Self::alloc_large(heap, layout, true),
                None => ptr::null_mut(),
            },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(heap) = self.heap_if_ready() else {
            return ptr::null_mut();
        };
        let old = class_for(layout.size(), layout.align());
        let new = class_for(new_size, layout.align());
        match (old, new) {
            (Some(a), Some(b)) if a == b => return block,
            (None, None) => {
                if let Some(moved) = heap.large.realloc(block, new_size, layout.align()) {
                    return moved;
                }
            }
            _ => {}
        }
        // SAFETY: (caller's contract) the new layout is valid: same alignment, a size that
        // does not overflow isize when rounded up.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `block` is live with `layout`, which holds `layout.size()` bytes, and is freed
        // with it.
        unsafe {
            self.move_block(block, layout.size(), new_layout, |alloc| {
                alloc.dealloc(block, layout)
            })
        }
    }
}

impl Drop for PerCpuAlloc {
    fn drop(&mut self) {
        let heap = *self.heap.get_mut();
        if heap.is_null() {
            return;
        }
        // SAFETY: the heap lives until the end of this function.
        unregister_for_fork(unsafe { &*heap });
        // SAFETY: `&mut self`: no thread uses the heap any more. It was built in a mapping of
        // exactly this size, which goes with it.
        unsafe {
            ptr::drop_in_place(heap);
            libc::munmap(heap.cast(), core::mem::size_of::<Heap>());
        }
    }
}

/// Live heaps, for the fork handlers: linked through `Heap::fork_next`. Heaps, unlike their
/// `PerCpuAlloc` values, never move.
static FORK_REGISTRY: SpinLock = SpinLock::new();
static FORK_LIST: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());
static FORK_HANDLERS: AtomicU8 = AtomicU8::new(0);

fn register_for_fork(heap: &Heap) {
    if FORK_HANDLERS.swap(1, Ordering::AcqRel) == 0 {
        // SAFETY: the handlers are plain functions that live for the whole program. A failure
        // (ENOMEM) leaves fork unguarded, as it was before.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    }
    let _guard = FORK_REGISTRY.lock();
    heap.fork_next
        .store(FORK_LIST.load(Ordering::Relaxed), Ordering::Relaxed);
    FORK_LIST.store(ptr::from_ref(heap).cast_mut(), Ordering::Relaxed);
}

fn unregister_for_fork(heap: &Heap) {
    let _guard = FORK_REGISTRY.lock();
    let me = ptr::from_ref(heap).cast_mut();
    let mut link = &FORK_LIST;
    loop {
        let at = link.load(Ordering::Relaxed);
        // SAFETY: registered heaps stay alive until they unregister under this lock.
        let Some(entry) = (unsafe { at.as_ref() }) else {
            return;
        };
        if at == me {
            link.store(entry.fork_next.load(Ordering::Relaxed), Ordering::Relaxed);
            return;
        }
        link = &entry.fork_next;
    }
}

/// Calls `f` with each registered heap (under the registry lock, held by the caller).
fn for_each_registered_heap(mut f: impl FnMut(&Heap)) {
    let mut at = FORK_LIST.load(Ordering::Relaxed);
    // SAFETY: registered heaps stay alive until they unregister under the registry lock.
    while let Some(heap) = unsafe { at.as_ref() } {
        f(heap);
        at = heap.fork_next.load(Ordering::Relaxed);
    }
}

extern "C" fn before_fork() {
    FORK_REGISTRY.acquire();
    for_each_registered_heap(Heap::lock_for_fork);
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` took every lock in this process (the child is a copy of it).
    for_each_registered_heap(|heap| unsafe { heap.unlock_after_fork() });
    // SAFETY: as above.
    unsafe { FORK_REGISTRY.release() };
}

#[cfg(test)]
mod tests;
