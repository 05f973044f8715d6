//! The page heap: memory in 256 KiB slabs, mapped 4 MiB at a time, and the map from any address
//! to its slab's descriptor.
//!
//! Slabs are aligned to their size, so an address's slab is `address >> SLAB_SHIFT`. The map is
//! a two-level radix tree over 48-bit addresses: a top array of leaves, each leaf an array of
//! slab descriptors covering 8 GiB, mapped when the first slab in its range is. Descriptors live
//! beside the slabs, never inside them, so a slab handed back to the kernel with
//! `MADV_DONTNEED` keeps its descriptor, and block alignment is never disturbed by a header.
//!
//! Slab address space is never unmapped while the heap lives: a slab the kernel took back stays
//! reserved for reuse, and reading a stale descriptor is always safe.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use super::lock::SpinLock;
use crate::storage::{Mapping, map};

pub(crate) const SLAB_SHIFT: u32 = 18;
/// Bytes per slab.
pub(crate) const SLAB_SIZE: usize = 1 << SLAB_SHIFT;
/// Slabs per mapping.
const CHUNK_SLABS: usize = 16;
const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 15;
const LEAF_SLABS: usize = 1 << LEAF_BITS;
const TOP_ENTRIES: usize = 1 << (ADDRESS_BITS - SLAB_SHIFT - LEAF_BITS);
/// Empty slabs kept resident for quick reuse (16 MiB); beyond these, empty slabs go back to the
/// kernel. With 16, a program that builds and frees a 12 MiB structure over and over spent a
/// third of its time faulting the same pages back in; `trim()` releases them all.
pub(crate) const RESIDENT_EMPTY_SLABS: usize = 64;

/// One slab's descriptor. `class` is read without locks; everything else belongs to whoever
/// holds the slab: its class's central lock while it serves a class, the page heap's lock
/// while it is free (so relaxed atomics suffice: the locks order them).
#[repr(C, align(64))]
pub(crate) struct Slab {
    /// Class + 1 while the slab serves a size class, 0 otherwise.
    pub(crate) class: AtomicU32,
    /// Blocks handed above the central level and not back yet.
    pub(crate) live: AtomicU32,
    /// Bytes carved from the slab's start so far; blocks are carved lazily so untouched
    /// memory stays untouched.
    pub(crate) carved: AtomicU32,
    /// On its class's partial list (has free or uncarved blocks).
    pub(crate) partial: AtomicBool,
    /// Part of a chunk this heap mapped.
    mapped: AtomicBool,
    /// The slab's first byte.
    pub(crate) base: AtomicUsize,
    /// First free block, linked through each block's first word; 0 for none.
    pub(crate) free: AtomicUsize,
    /// Neighbours on whichever list holds the slab (descriptor addresses; null for none).
    pub(crate) next: AtomicPtr<Slab>,
    pub(crate) prev: AtomicPtr<Slab>,
}

const _: () = assert!(core::mem::size_of::<Slab>() == 64);

/// A LIFO list of slabs linked through `next`, under the page heap's lock.
struct SlabStack {
    head: AtomicPtr<Slab>,
    /// Read without the lock by statistics.
    len: AtomicUsize,
}

impl SlabStack {
    const fn new() -> SlabStack {
        SlabStack {
            head: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }

    fn push(&self, slab: &Slab) {
        slab.next
            .store(self.head.load(Ordering::Relaxed), Ordering::Relaxed);
        self.head
            .store(ptr::from_ref(slab).cast_mut(), Ordering::Relaxed);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    fn pop(&self) -> Option<&Slab> {
        let head = self.head.load(Ordering::Relaxed);
        // SAFETY: stacks hold descriptors in mapped leaves, which live as long as the heap.
        let slab = unsafe { head.as_ref() }?;
        self.head
            .store(slab.next.load(Ordering::Relaxed), Ordering::Relaxed);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(slab)
    }
}

pub(crate) struct PageHeap {
    /// Also taken around `fork` (see `Heap::lock_for_fork`).
    pub(super) lock: SpinLock,
    /// `[AtomicPtr<Slab>; TOP_ENTRIES]`: leaves, null until mapped.
    top: Mapping,
    /// Empty slabs still resident.
    empty: SlabStack,
    /// Slabs the kernel holds no memory for (never touched, or given back): zero when reused.
    released: SlabStack,
    mapped_bytes: AtomicUsize,
}

impl PageHeap {
    pub(crate) fn new() -> Option<PageHeap> {
        Some(PageHeap {
            lock: SpinLock::new(),
            top: Mapping::new(TOP_ENTRIES * core::mem::size_of::<AtomicPtr<Slab>>())?,
            empty: SlabStack::new(),
            released: SlabStack::new(),
            mapped_bytes: AtomicUsize::new(0),
        })
    }

    fn top(&self) -> &[AtomicPtr<Slab>] {
        // SAFETY: the mapping holds TOP_ENTRIES zeroed pointers (null) for as long as `self`.
        unsafe { core::slice::from_raw_parts(self.top.as_ptr().cast(), TOP_ENTRIES) }
    }

    /// The descriptor of the slab holding `address`, mapped or not, if its leaf is published.
    /// Lock-free: leaves are published with Release before any of their slabs is handed out.
    #[inline(always)]
    fn descriptor(&self, address: usize) -> Option<&Slab> {
        let top = address >> (SLAB_SHIFT + LEAF_BITS);
        let leaf = self.top().get(top)?.load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: a published leaf holds LEAF_SLABS descriptors and stays mapped while the heap
        // lives; the index is masked below LEAF_SLABS.
        Some(unsafe { &*leaf.add((address >> SLAB_SHIFT) & (LEAF_SLABS - 1)) })
    }

    /// The descriptor of the slab holding `address`, if the heap ever mapped one there.
    #[inline]
    pub(crate) fn lookup(&self, address: usize) -> Option<&Slab> {
        self.descriptor(address)
            .filter(|slab| slab.mapped.load(Ordering::Relaxed))
    }

    /// The class word (class + 1, or 0) of the slab holding `address`; 0 where the heap never
    /// mapped a slab. `lookup` without its `mapped` test: a descriptor in a published leaf is
    /// zeroed until its slab serves a class, which only mapped slabs do.
    #[inline]
    pub(crate) fn class_word(&self, address: usize) -> u32 {
        self.descriptor(address)
            .map_or(0, |slab| slab.class.load(Ordering::Relaxed))
    }

    /// A slab for a size class: a resident empty one, else a released one, else a new chunk's.
    pub(crate) fn take(&self) -> Option<&Slab> {
        let _guard = self.lock.lock();
        if let Some(slab) = self.empty.pop() {
            return Some(slab);
        }
        if self.released.len.load(Ordering::Relaxed) == 0 {
            self.grow()?;
        }
        self.released.pop()
    }

    /// Takes back a slab no block of which is in use.
    pub(crate) fn give(&self, slab: &Slab) {
        slab.class.store(0, Ordering::Relaxed);
        let _guard = self.lock.lock();
        if self.empty.len.load(Ordering::Relaxed) < RESIDENT_EMPTY_SLABS {
            self.empty.push(slab);
        } else {
            self.release(slab);
        }
    }

    /// Hands every resident empty slab's memory back to the kernel: the bytes released.
    pub(crate) fn release_empty(&self) -> usize {
        let _guard = self.lock.lock();
        let mut released = 0;
        while let Some(slab) = self.empty.pop() {
            self.release(slab);
            released += SLAB_SIZE;
        }
        released
    }

    fn release(&self, slab: &Slab) {
        let base = slab.base.load(Ordering::Relaxed);
        // SAFETY: the slab is ours and free: no block in it is in use, so discarding its
        // contents loses nothing. A refusal leaves the memory resident, which is still correct.
        unsafe { libc::madvise(base as *mut libc::c_void, SLAB_SIZE, libc::MADV_DONTNEED) };
        self.released.push(slab);
    }

    /// Maps a chunk of slabs onto the released stack (under the lock).
    fn grow(&self) -> Option<()> {
        let chunk = CHUNK_SLABS * SLAB_SIZE;
        let raw = map(chunk + SLAB_SIZE)?;
        // Keep the slab-aligned part; hand the rest back.
        let base = raw.next_multiple_of(SLAB_SIZE);
        let head = base - raw;
        let tail = SLAB_SIZE - head;
        // SAFETY: both ranges lie inside the mapping just made and are page-aligned (SLAB_SIZE
        // is a multiple of the page size); nothing uses them.
        unsafe {
            if head > 0 {
                libc::munmap(raw as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((base + chunk) as *mut libc::c_void, tail);
            }
        }
        if (base + chunk) >> ADDRESS_BITS != 0 {
            // Beyond the map's reach (a 57-bit address space); give it back and fail.
            // SAFETY: the chunk is ours and unused.
            unsafe { libc::munmap(base as *mut libc::c_void, chunk) };
            return None;
        }
        // Publish every slab's leaf before the slabs themselves; a missing leaf means no memory,
        // and the chunk goes back.
        for i in 0..CHUNK_SLABS {
            if self.leaf_for(base + i * SLAB_SIZE).is_none() {
                // SAFETY: as above.
                unsafe { libc::munmap(base as *mut libc::c_void, chunk) };
                return None;
            }
        }
        for i in (0..CHUNK_SLABS).rev() {
            let address = base + i * SLAB_SIZE;
            let leaf = self.leaf_for(address)?;
            // SAFETY: the leaf is mapped; the index is masked below LEAF_SLABS.
            let slab = unsafe { &*leaf.add((address >> SLAB_SHIFT) & (LEAF_SLABS - 1)) };
            slab.base.store(address, Ordering::Relaxed);
            slab.mapped.store(true, Ordering::Relaxed);
            self.released.push(slab);
        }
        self.mapped_bytes.fetch_add(chunk, Ordering::Relaxed);
        Some(())
    }

    /// The leaf covering `address`, mapped if needed (under the lock).
    fn leaf_for(&self, address: usize) -> Option<*mut Slab> {
        let entry = &self.top()[address >> (SLAB_SHIFT + LEAF_BITS)];
        let leaf = entry.load(Ordering::Relaxed);
        if !leaf.is_null() {
            return Some(leaf);
        }
        let leaf = map(LEAF_SLABS * core::mem::size_of::<Slab>())? as *mut Slab;
        entry.store(leaf, Ordering::Release);
        Some(leaf)
    }

    /// Bytes of slab address space mapped.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.mapped_bytes.load(Ordering::Relaxed)
    }

    /// Bytes in slabs the kernel holds no memory for.
    pub(crate) fn released_bytes(&self) -> usize {
        self.released.len.load(Ordering::Relaxed) * SLAB_SIZE
    }

    /// Bytes in empty slabs kept resident.
    pub(crate) fn empty_bytes(&self) -> usize {
        self.empty.len.load(Ordering::Relaxed) * SLAB_SIZE
    }
}

impl Drop for PageHeap {
    fn drop(&mut self) {
        for entry in self.top() {
            let leaf = entry.load(Ordering::Relaxed);
            if leaf.is_null() {
                continue;
            }
            for i in 0..LEAF_SLABS {
                // SAFETY: `i < LEAF_SLABS` inside a mapped leaf.
                let slab = unsafe { &*leaf.add(i) };
                if slab.mapped.load(Ordering::Relaxed) {
                    // SAFETY: the slab is this heap's mapping; with the heap gone nothing may
                    // use it (blocks outliving their allocator are the owner's bug).
                    unsafe {
                        libc::munmap(
                            slab.base.load(Ordering::Relaxed) as *mut libc::c_void,
                            SLAB_SIZE,
                        )
                    };
                }
            }
            // SAFETY: the leaf was mapped with this length and nothing refers to it any more.
            unsafe { libc::munmap(leaf.cast(), LEAF_SLABS * core::mem::size_of::<Slab>()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `class_word` skips `lookup`'s `mapped` test: that is sound only while every descriptor
    /// of a slab that serves no class (mapped or not) reads 0, and the one that serves a class
    /// reads its word, at any address inside it.
    #[test]
    fn only_a_slab_serving_a_class_has_a_class_word() {
        let pages = PageHeap::new().expect("memory");
        let slab = pages.take().expect("memory");
        let base = slab.base.load(Ordering::Relaxed);
        assert_eq!(
            pages.class_word(base),
            0,
            "a taken slab serves no class yet"
        );
        slab.class.store(7, Ordering::Relaxed);
        for offset in [0, 64, SLAB_SIZE - 1] {
            assert_eq!(pages.class_word(base + offset), 7);
        }
        // Every other slab of the leaf, mapped by this heap or not, and addresses in no leaf or
        // beyond the map.
        let leaf_start = base & !((LEAF_SLABS << SLAB_SHIFT) - 1);
        let others = (0..LEAF_SLABS)
            .map(|i| leaf_start + (i << SLAB_SHIFT))
            .filter(|&address| address != base);
        for address in others {
            assert_eq!(pages.class_word(address), 0, "slab at {address:#x}");
        }
        let other_leaf = leaf_start ^ (1 << (SLAB_SHIFT + LEAF_BITS));
        assert_eq!(pages.class_word(other_leaf), 0);
        assert_eq!(pages.class_word(1 << ADDRESS_BITS), 0);
        assert_eq!(pages.class_word(usize::MAX), 0);
        // The slab goes back (and `Drop` unmaps it) serving no class, as `give` expects.
        pages.give(slab);
        assert_eq!(pages.class_word(base), 0);
    }
}
