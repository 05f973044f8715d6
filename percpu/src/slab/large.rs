//! Large blocks (beyond the size classes): a mapping each, at page granularity, with a bounded
//! cache of freed mappings so that repeated large allocations do not call the kernel every time.
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
    /// `(base, len)` of cached mappings; len 0 marks a free entry (under the lock).
    cache: [(AtomicUsize, AtomicUsize); CACHE_ENTRIES],
    cached_bytes: AtomicUsize,
    in_use_bytes: AtomicUsize,
    allocs: AtomicUsize,
    frees: AtomicUsize,
    page_size: usize,
}

impl Large {
    pub(crate) fn new(page_size: usize) -> Large {
        Large {
            lock: SpinLock::new(),
            cache: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; CACHE_ENTRIES],
            cached_bytes: AtomicUsize::new(0),
            in_use_bytes: AtomicUsize::new(0),
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
                None => LargeBlock {
                    ptr: self.install(map(len)?, len),
                    zeroed: true,
                },
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
            LargeBlock {
                ptr: self.install(base, len),
                zeroed: true,
            }
        };
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Some(block)
    }

    /// Writes the header of the mapping `[base, base + len)` and returns its block.
    fn install(&self, base: usize, len: usize) -> *mut u8 {
        let block = base + self.page_size;
        // SAFETY: the header's 16 bytes end at the block, inside the mapping's first page.
        unsafe { ptr::write((block - HEADER) as *mut Header, Header { base, len }) };
        self.in_use_bytes.fetch_add(len, Ordering::Relaxed);
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
        Some(self.install(new_base as usize, new_len))
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
            .map(|e| (e.1.load(Ordering::Relaxed), e))
            .filter(|&(l, _)| l >= len && l <= limit)
            .min_by_key(|&(l, _)| l)?;
        let base = entry.0.load(Ordering::Relaxed);
        let len = entry.1.swap(0, Ordering::Relaxed);
        self.cached_bytes.fetch_sub(len, Ordering::Relaxed);
        Some((base, len))
    }

    fn put_cached(&self, base: usize, len: usize) -> bool {
        let _guard = self.lock.lock();
        if self.cached_bytes.load(Ordering::Relaxed) + len > CACHE_BYTES {
            return false;
        }
        let Some(entry) = self.cache.iter().find(|e| e.1.load(Ordering::Relaxed) == 0) else {
            return false;
        };
        entry.0.store(base, Ordering::Relaxed);
        entry.1.store(len, Ordering::Relaxed);
        self.cached_bytes.fetch_add(len, Ordering::Relaxed);
        true
    }

    /// Unmaps every cached mapping: the bytes released.
    pub(crate) fn release_cached(&self) -> usize {
        let _guard = self.lock.lock();
        let mut released = 0;
        for entry in &self.cache {
            let len = entry.1.swap(0, Ordering::Relaxed);
            if len > 0 {
                // SAFETY: a cached mapping is no block's; unmapping it loses nothing.
                unsafe { libc::munmap(entry.0.load(Ordering::Relaxed) as *mut libc::c_void, len) };
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

impl Drop for Large {
    fn drop(&mut self) {
        self.release_cached();
    }
}
