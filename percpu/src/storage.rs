//! Per-CPU memory: one zeroed `mmap` region per structure, sized by possible CPUs.
//!
//! Mapped directly rather than taken from the global allocator, so structures built on it can
//! serve inside a global allocator (the slab allocator's statistics) without recursion.

use core::ptr::NonNull;

/// Bytes between two CPUs' blocks: whole cache-line pairs (adjacent-line prefetch makes 64-byte
/// separation share in practice), so CPUs never write the same line.
pub(crate) const CPU_BLOCK_ALIGN: usize = 128;

/// A zeroed anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; what lives in it decides its own thread-safety.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` zeroed bytes (rounded up to pages); `None` if the kernel refuses.
    pub(crate) fn new(len: usize) -> Option<Mapping> {
        let len = len.max(1);
        Some(Mapping {
            ptr: NonNull::new(map(len)? as *mut u8)?,
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region we mapped, which nothing uses any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Maps `len` zeroed bytes without reserving swap for them (much of what is mapped here is never
/// touched); the address, or `None` if the kernel refuses. The caller unmaps it.
pub(crate) fn map(len: usize) -> Option<usize> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as usize)
}

/// `n` rounded up to a multiple of `align` (a power of two).
pub(crate) const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}
