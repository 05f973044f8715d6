//! Large blocks (beyond the size classes): a mapping each, at page granularity, with a bounded
//! cache of freed mappings so that repeated large allocations do not call the kernel every time.
//! The cache keeps its mappings resident, so it is bounded by what the program has shown it
//! needs: the large blocks in use and the cache together never hold more bytes than the most
//! large blocks ever in use at once (beyond a floor), the oldest cached evicted first, on frees
//! and on allocations the cache cannot serve. A program that allocates a batch of large blocks,
//! frees them and allocates them again finds them all cached, while one whose large blocks keep
//! growing (each new one allocated before the old is freed, as a growing table is) keeps only
//! the latest: a larger block in use leaves less room.
//!
//! A large block's mapping starts one page before the block; the last 16 bytes of that page
//! record the mapping (its start and length), so a pointer alone finds its size, `realloc` can
//! `mremap` the whole mapping, and any page-multiple alignment is possible.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::lock::SpinLock;
use crate::storage::map;

/// Freed mappings kept for reuse.
const CACHE_ENTRIES: usize = 32;
/// At most this many bytes are kept in the cache, and no single mapping above this.
const CACHE_BYTES: usize = 64 << 20;
const CACHE_SPAN: usize = 16 << 20;
/// Large blocks in use and cached together may hold as many bytes as the most large blocks in
/// use at once, and at least this many.
const CACHE_FLOOR: usize = 4 << 20;
/// Cached mappings one lock hold evicts at most (unmapped once it is released).
const EVICT_BATCH: usize = 4;

/// A cached mapping; `len` 0 marks a free entry. Written under the lock.
struct Cached {
    base: AtomicUsize,
    len: AtomicUsize,
    /// When it was cached (a count of mappings cached): eviction takes the oldest first.
    stamp: AtomicUsize,
}

#[repr(C)]
struct Header {
    base: usize,
    len: usize,
}

const HEADER: usize = core::mem::size_of::<Header>();

/// A large block just allocated.
pub(crate) struct LargeBlock {
    pub(crate) ptr: *mut u8,
    /// Fresh from the kernel: every byte is zero.
    pub(crate) zeroed: bool,
}

pub(crate) struct Large {
    /// Also taken around `fork` (see `Heap::lock_for_fork`).
    pub(super) lock: SpinLock,
    cache: [Cached; CACHE_ENTRIES],
    /// Mappings cached so far (the next stamp).
    cached_count: AtomicUsize,
    cached_bytes: AtomicUsize,
    in_use_bytes: AtomicUsize,
    /// The most bytes of large blocks in use at once (since the last trim).
    peak_in_use_bytes: AtomicUsize,
    allocs: AtomicUsize,
    frees: AtomicUsize,
    page_size: usize,
}

impl Large {
    pub(crate) fn new(page_size: usize) -> Large {
        Large {
            lock: SpinLock::new(),
            cache: [const {
                Cached {
                    base: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                    stamp: AtomicUsize::new(0),
                }
            }; CACHE_ENTRIES],
            cached_count: AtomicUsize::new(0),
            cached_bytes: AtomicUsize::new(0),
            in_use_bytes: AtomicUsize::new(0),
            peak_in_use_bytes: AtomicUsize::new(0),
            allocs: AtomicUsize::new(0),
            frees: AtomicUsize::new(0),
            page_size,
        }
    }

    /// Mapping length for `size` bytes: the header page plus whole pages; `None` on overflow.
    fn mapping_len(&self, size: usize) -> Option<usize> {
        size.max(1)
            .checked_next_multiple_of(self.page_size)?
            .checked_add(self.page_size)
    }

    /// A block of `size` bytes aligned to `align` (a power of two); `None` when out of memory.
    pub(crate) fn alloc(&self, size: usize, align: usize) -> Option<LargeBlock> {
        let len = self.mapping_len(size)?;
        let block = if align <= self.page_size {
            match self.take_cached(len) {
                Some((base, cached_len)) => LargeBlock {
                    ptr: self.install(base, cached_len),
                    zeroed: false,
                },
                None => {
                    let ptr = self.install(map(len)?, len);
                    self.shrink_cache();
                    LargeBlock { ptr, zeroed: true }
                }
            }
        } else {
            // Over-map, then keep the part where the block is aligned.
            let total = len.checked_add(align - self.page_size)?;
            let raw = map(total)?;
            let block = (raw + self.page_size).next_multiple_of(align);
            let base = block - self.page_size;
            // SAFETY: both ranges lie inside the mapping just made, page-aligned, unused.
            unsafe {
                if base > raw {
                    libc::munmap(raw as *mut libc::c_void, base - raw);
                }
                if raw + total > base + len {
                    libc::munmap((base + len) as *mut libc::c_void, raw + total - base - len);
                }
            }
            let ptr = self.install(base, len);
            self.shrink_cache();
            LargeBlock { ptr, zeroed: true }
        };
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Some(block)
    }

    /// Writes the header of the mapping `[base, base + len)` and returns its block.
    fn install(&self, base: usize, len: usize) -> *mut u8 {
        let block = base + self.page_size;
        // SAFETY: the header's 16 bytes end at the block, inside the mapping's first page.
        unsafe { ptr::write((block - HEADER) as *mut Header, Header { base, len }) };
        let in_use = self.in_use_bytes.fetch_add(len, Ordering::Relaxed) + len;
        // A budget, not an account: a racing store may lower it a little, and no RMW is paid.
        if in_use > self.peak_in_use_bytes.load(Ordering::Relaxed) {
            self.peak_in_use_bytes.store(in_use, Ordering::Relaxed);
        }
        block as *mut u8
    }

    fn header(block: *const u8) -> Header {
        // SAFETY: (callers' contract) `block` is a live large block, so the 16 bytes before it
        // hold its header.
        unsafe { ptr::read((block as usize - HEADER) as *const Header) }
    }

    /// Bytes usable at `block`, a live large block.
    pub(crate) fn usable_size(&self, block: *const u8) -> usize {
        let header = Self::header(block);
        header.base + header.len - block as usize
    }

    /// Frees `block`, a live large block: into the cache, or back to the kernel.
    pub(crate) fn free(&self, block: *mut u8) {
        let Header { base, len } = Self::header(block);
        self.in_use_bytes.fetch_sub(len, Ordering::Relaxed);
        self.frees.fetch_add(1, Ordering::Relaxed);
        if len <= CACHE_SPAN && self.put_cached(base, len) {
            return;
        }
        // SAFETY: the whole mapping is the freed block's; nothing uses it any more.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }

    /// Resizes `block` (a live large block) to `size` bytes by remapping, keeping it aligned to
    /// `align`; `None` when `align` is beyond a page (the kernel may move the mapping to any
    /// page) or the kernel refuses. The block is then unchanged.
    pub(crate) fn realloc(&self, block: *mut u8, size: usize, align: usize) -> Option<*mut u8> {
        if align > self.page_size {
            return None;
        }
        let Header { base, len } = Self::header(block);
        let new_len = self.mapping_len(size)?;
        if new_len == len {
            return Some(block);
        }
        // SAFETY: remapping exactly the block's whole mapping; MAYMOVE lets the kernel move it
        // (with its header page) when it cannot grow in place. On failure nothing changes.
        let new_base = unsafe {
            libc::mremap(
                base as *mut libc::c_void,
                len,
                new_len,
                libc::MREMAP_MAYMOVE,
            )
        };
        if new_base == libc::MAP_FAILED {
            return None;
        }
        self.in_use_bytes.fetch_sub(len, Ordering::Relaxed);
        let block = self.install(new_base as usize, new_len);
        if new_len > len {
            self.shrink_cache();
        }
        Some(block)
    }

    /// A cached mapping of at least `len` bytes and at most a quarter more; best fit.
    fn take_cached(&self, len: usize) -> Option<(usize, usize)> {
        if self.cached_bytes.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let _guard = self.lock.lock();
        let limit = len + len / 4;
        let (_, entry) = self
            .cache
            .iter()
            .map(|e| (e.len.load(Ordering::Relaxed), e))
            .filter(|&(l, _)| l >= len && l <= limit)
            .min_by_key(|&(l, _)| l)?;
        let base = entry.base.load(Ordering::Relaxed);
        let len = entry.len.swap(0, Ordering::Relaxed);
        self.cached_bytes.fetch_sub(len, Ordering::Relaxed);
        Some((base, len))
    }

    /// Bytes the cache may hold now: what the most large blocks ever in use at once (at least
    /// [`CACHE_FLOOR`]) leaves beside those in use, at most [`CACHE_BYTES`]. A budget read
    /// without the lock: racing allocations and frees move it a little.
    fn room(&self) -> usize {
        let peak = self
            .peak_in_use_bytes
            .load(Ordering::Relaxed)
            .max(CACHE_FLOOR);
        peak.saturating_sub(self.in_use_bytes.load(Ordering::Relaxed))
            .min(CACHE_BYTES)
    }

    /// Takes the oldest cached mapping out of the cache (under the lock): `(base, len)`, for the
    /// caller to unmap once the lock is released; `None` when the cache is empty.
    fn evict_oldest(&self) -> Option<(usize, usize)> {
        let oldest = self
            .cache
            .iter()
            .filter(|e| e.len.load(Ordering::Relaxed) != 0)
            .min_by_key(|e| e.stamp.load(Ordering::Relaxed))?;
        let len = oldest.len.swap(0, Ordering::Relaxed);
        self.cached_bytes.fetch_sub(len, Ordering::Relaxed);
        Some((oldest.base.load(Ordering::Relaxed), len))
    }

    /// Caches the freed mapping `[base, base + len)` within [`Self::room`], unmapping the oldest
    /// cached mappings to make room; `false` when it does not fit at all (the caller unmaps it).
    fn put_cached(&self, base: usize, len: usize) -> bool {
        if len > self.room() {
            return false;
        }
        let mut evicted = [(0usize, 0usize); EVICT_BATCH];
        let mut count = 0;
        let kept = {
            let _guard = self.lock.lock();
            loop {
                let fits = self.cached_bytes.load(Ordering::Relaxed) + len <= self.room();
                let free = self
                    .cache
                    .iter()
                    .find(|e| e.len.load(Ordering::Relaxed) == 0);
                if let (true, Some(entry)) = (fits, free) {
                    entry.base.store(base, Ordering::Relaxed);
                    entry.len.store(len, Ordering::Relaxed);
                    let stamp = self.cached_count.fetch_add(1, Ordering::Relaxed);
                    entry.stamp.store(stamp, Ordering::Relaxed);
                    self.cached_bytes.fetch_add(len, Ordering::Relaxed);
                    break true;
                }
                // Ends: each turn empties an entry, and with every entry empty the mapping fits
                // (it was within the room, unless a racing allocation took some: then the cache
                // runs dry and the mapping is left out). Evictions beyond a batch leave it out.
                let victim = if count < EVICT_BATCH {
                    self.evict_oldest()
                } else {
                    None
                };
                let Some(victim) = victim else {
                    break false;
                };
                evicted[count] = victim;
                count += 1;
            }
        };
        unmap_all(&evicted[..count]);
        kept
    }

    /// Evicts the oldest cached mappings until the cache fits in [`Self::room`]: after an
    /// allocation the cache could not serve, which leaves less room beside the blocks in use.
    fn shrink_cache(&self) {
        while self.cached_bytes.load(Ordering::Relaxed) > self.room() {
            let mut evicted = [(0usize, 0usize); EVICT_BATCH];
            let mut count = 0;
            {
                let _guard = self.lock.lock();
                while count < EVICT_BATCH
                    && self.cached_bytes.load(Ordering::Relaxed) > self.room()
                    && let Some(victim) = self.evict_oldest()
                {
                    evicted[count] = victim;
                    count += 1;
                }
            }
            unmap_all(&evicted[..count]);
            if count < EVICT_BATCH {
                return;
            }
        }
    }

    /// Unmaps every cached mapping: the bytes released. The budget starts again from the
    /// blocks in use.
    pub(crate) fn release_cached(&self) -> usize {
        let _guard = self.lock.lock();
        self.peak_in_use_bytes
            .store(self.in_use_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut released = 0;
        for entry in &self.cache {
            let len = entry.len.swap(0, Ordering::Relaxed);
            if len > 0 {
                // SAFETY: a cached mapping is no block's; unmapping it loses nothing.
                unsafe {
                    libc::munmap(entry.base.load(Ordering::Relaxed) as *mut libc::c_void, len)
                };
                released += len;
            }
        }
        self.cached_bytes.fetch_sub(released, Ordering::Relaxed);
        released
    }

    pub(crate) fn cached_bytes(&self) -> usize {
        self.cached_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn in_use_bytes(&self) -> usize {
        self.in_use_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn allocs(&self) -> usize {
        self.allocs.load(Ordering::Relaxed)
    }

    pub(crate) fn frees(&self) -> usize {
        self.frees.load(Ordering::Relaxed)
    }
}

/// Unmaps mappings evicted from the cache.
fn unmap_all(evicted: &[(usize, usize)]) {
    for &(base, len) in evicted {
        // SAFETY: an evicted mapping is no block's and no longer in the cache.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }
}

impl Drop for Large {
    fn drop(&mut self) {
        self.release_cached();
    }
}
