//! The page heap: memory in 256 KiB slabs, mapped 4 MiB at a time, and the maps from any address
//! to its slab's descriptor and size class.
//!
//! Slabs are aligned to their size, so an address's slab is `address >> SLAB_SHIFT`. The
//! descriptor map is a two-level radix tree over 48-bit addresses: a top array of leaves (inside
//! the page heap, untouched beyond the entries in use), each leaf an array of slab descriptors
//! covering 8 GiB, mapped when the first slab in its range is. Descriptors live beside the
//! slabs, never inside them, so a slab handed back to the kernel with `MADV_DONTNEED` keeps its
//! descriptor, and block alignment is never disturbed by a header.
//!
//! `free` needs only a block's class and home (see [`Slab`]), and finds both in one load: the
//! class map is two bytes per slab over the whole 48-bit address space, 2 GiB of address space
//! reserved with `MAP_NORESERVE`, of which only the pages covering slabs in use are ever written
//! (one 4 KiB page covers 512 MiB of slabs). A load through the radix tree depends on the block's address
//! twice; this one once, which `larson` and `mstress` measured at 4% of their time. Where the
//! reservation would cost more than address space there is no class map, and the class comes
//! from the descriptor instead: under a finite `RLIMIT_AS`, under strict overcommit accounting
//! (`vm.overcommit_memory=2` ignores `MAP_NORESERVE` and would charge the whole 2 GiB), where that
//! setting cannot be read, or when the reservation is refused.
//!
//! Slab address space is never unmapped while the heap lives: a slab the kernel took back stays
//! reserved for reuse, and reading a stale descriptor is always safe.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicUsize, Ordering};

use super::class::CLASSES;
use super::lock::SpinLock;
use crate::freelist::homes::{HOME_BITS, HOME_MASK, home_code, home_index};
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
/// Entries in the class map: one per slab-sized stretch of the address space.
const CLASS_MAP_ENTRIES: usize = 1 << (ADDRESS_BITS - SLAB_SHIFT);
/// Bytes of the class map.
const CLASS_MAP_BYTES: usize = CLASS_MAP_ENTRIES * core::mem::size_of::<AtomicU16>();

/// A slab's word holds its home's code (see [`homes`](crate::freelist::homes), 0 for none) in
/// its low [`HOME_BITS`] bits and its class word (class + 1, 0 for none) above: see [`Slab`].
/// The class above, so that `free` finds it, and tests it for 0, with one shift, and hands the
/// word to the cache's push as the home code (which ignores the bits above).
pub(crate) const CLASS_SHIFT: u32 = HOME_BITS;
/// Indices from this one up carve slabs with no home (the codes run out).
pub(crate) use crate::freelist::homes::HOMED_INDICES;
const _: () = assert!(((CLASSES + 1) << CLASS_SHIFT) <= u16::MAX as usize + 1);

/// A slab's word for its class word and home (index + 1, 0 for none).
pub(crate) const fn slab_word_of(class_word: u32, home: u32) -> u32 {
    let code = match home {
        0 => 0,
        home => home_code(home - 1),
    };
    class_word << CLASS_SHIFT | code
}

/// The class word (class + 1, or 0) in a slab's word.
#[inline(always)]
pub(crate) const fn class_word_of(word: u32) -> u32 {
    word >> CLASS_SHIFT
}

/// The home (index + 1, or 0) in a slab's word.
#[inline(always)]
pub(crate) const fn home_of(word: u32) -> u32 {
    match home_index(word & HOME_MASK) {
        Some(index) => index + 1,
        None => 0,
    }
}

/// The size class in a slab's word; `None` for a slab that serves no class (or no slab: a word
/// of 0).
#[inline(always)]
pub(crate) const fn class_of_word(word: u32) -> Option<usize> {
    match class_word_of(word) {
        0 => None,
        class_word => Some(class_word as usize - 1),
    }
}

/// The size class and home (index + 1, or 0) in a slab's word; `None` for a slab that serves
/// no class (or no slab: a word of 0).
#[inline(always)]
pub(crate) const fn class_and_home_of(word: u32) -> Option<(usize, u32)> {
    match class_of_word(word) {
        Some(class) => Some((class, home_of(word))),
        None => None,
    }
}

/// Empty slabs kept resident for quick reuse (16 MiB); beyond these, empty slabs go back to the
/// kernel. With 16, a program that builds and frees a 12 MiB structure over and over spent a
/// third of its time faulting the same pages back in; `trim()` releases them all.
pub(crate) const RESIDENT_EMPTY_SLABS: usize = 64;

/// The class map's address, kept where a fast path finds it with no pointer to the heap first
/// (`PerCpuAlloc` keeps one). Until [published](Self::publish), and where there is no class
/// map, it admits no address: its bound, the number of entries, is 0. The bound is stored after
/// the address (Release) and loaded before it (Acquire), so one test of a slab index against it
/// is both the range check and the test that there is a map, and the address itself is plain
/// memory, written once before the bound admits anything.
pub(crate) struct ClassMapRef {
    entries: AtomicUsize,
    map: core::cell::UnsafeCell<*const AtomicU16>,
}

// SAFETY: `map` is written only by `publish` (once, by one thread, before the Release store of
// `entries` that first admits an index) and read only after an Acquire load of `entries` admitted
// one: every read happens after the only write. The entries it points to are atomics.
unsafe impl Sync for ClassMapRef {}
// SAFETY: `map` is an address into a mapping of the heap, which is no thread's: moving the
// reference to another thread changes nothing about who may read through it.
unsafe impl Send for ClassMapRef {}

impl ClassMapRef {
    pub(crate) const fn unpublished() -> ClassMapRef {
        ClassMapRef {
            entries: AtomicUsize::new(0),
            map: core::cell::UnsafeCell::new(ptr::null()),
        }
    }

    /// Points at `pages`' class map, if it has one.
    ///
    /// # Safety
    /// Called once, by one thread, before any other use; `pages` outlives every use of `self`.
    pub(crate) unsafe fn publish(&self, pages: &PageHeap) {
        let Some(map) = pages.class_map.as_ref() else {
            return;
        };
        // SAFETY: the caller's contract: nothing reads `map` before the store below admits an
        // index, and nothing else writes it.
        unsafe { self.map.get().write(map.as_ptr().cast()) };
        self.entries.store(CLASS_MAP_ENTRIES, Ordering::Release);
    }

    /// The word (see [`Slab`]) of the slab holding `address`, as [`PageHeap::slab_word`] gives
    /// it; 0 also when that takes more than one load (no class map, or none published yet).
    #[inline(always)]
    pub(crate) fn slab_word(&self, address: usize) -> u16 {
        let index = address >> SLAB_SHIFT;
        if index >= self.entries.load(Ordering::Acquire) {
            return 0;
        }
        // SAFETY: an index was admitted, so `map` is published: it holds CLASS_MAP_ENTRIES
        // entries (the bound just checked), zeroed or written only as atomics, for as long as
        // its page heap (the publisher's contract).
        unsafe { &*(*self.map.get()).add(index) }.load(Ordering::Relaxed)
    }
}

/// One slab's descriptor. `word` is read without locks; everything else belongs to whoever
/// holds the slab: its class's central lock while it serves a class, the page heap's lock
/// while it is free (so relaxed atomics suffice: the locks order them).
///
/// A slab of a homed class (blocks smaller than a cache line, see `Heap`) also has a home: the
/// cache index whose refill carved it. Its blocks go back to that index's shard of the transfer
/// level when freed elsewhere, so that blocks sharing a cache line stay with one CPU.
#[repr(C, align(64))]
pub(crate) struct Slab {
    /// The home's code (0 for none), and class + 1 while the slab serves a size class (0
    /// otherwise) shifted by [`CLASS_SHIFT`] ([`slab_word_of`]; set with
    /// [`PageHeap::set_word`], which keeps the class map in step).
    word: AtomicU32,
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

/// Built in place in zeroed memory ([`PageHeap::init`]): its top array is too large for a stack.
#[repr(C)]
pub(crate) struct PageHeap {
    /// Also taken around `fork` (see `Heap::lock_for_fork`).
    pub(super) lock: SpinLock,
    /// Empty slabs still resident.
    empty: SlabStack,
    /// Slabs the kernel holds no memory for (never touched, or given back): zero when reused.
    released: SlabStack,
    mapped_bytes: AtomicUsize,
    /// `[AtomicU16; CLASS_MAP_ENTRIES]`: each slab's word, 0 for address space that holds no
    /// slab serving a class. `None` where address space is scarce (see the module docs).
    class_map: Option<Mapping>,
    /// Leaves, null until mapped.
    top: [AtomicPtr<Slab>; TOP_ENTRIES],
}

impl PageHeap {
    /// Builds an empty page heap at `at`, whose top array is already zeroed (null leaves). The
    /// array is left untouched, so that its pages stay unfaulted until a leaf is published.
    /// `class_map` asks for a class map; it is reserved only where address space is not scarce.
    ///
    /// # Safety
    /// `at` is valid for writes of a `PageHeap` and suitably aligned, holds nothing that needs
    /// dropping, and its `top` bytes are all zero.
    pub(crate) unsafe fn init(at: *mut PageHeap, class_map: bool) {
        let class_map = if class_map && reserving_is_free() {
            Mapping::new(CLASS_MAP_BYTES)
        } else {
            None
        };
        // SAFETY: the caller's contract: each field is valid for a write; `top`'s zero bytes
        // are null pointers already.
        unsafe {
            ptr::addr_of_mut!((*at).lock).write(SpinLock::new());
            ptr::addr_of_mut!((*at).empty).write(SlabStack::new());
            ptr::addr_of_mut!((*at).released).write(SlabStack::new());
            ptr::addr_of_mut!((*at).mapped_bytes).write(AtomicUsize::new(0));
            ptr::addr_of_mut!((*at).class_map).write(class_map);
        }
    }

    /// The class map's entry for `address` (below 2^48), if there is a class map.
    #[inline(always)]
    fn class_entry(&self, address: usize) -> Option<&AtomicU16> {
        debug_assert!(address >> ADDRESS_BITS == 0);
        let map = self.class_map.as_ref()?;
        // SAFETY: the map holds CLASS_MAP_ENTRIES entries (page-aligned), zeroed or written only
        // as atomics, for as long as `self`; the index is below that for any address below 2^48.
        Some(unsafe { &*map.as_ptr().cast::<AtomicU16>().add(address >> SLAB_SHIFT) })
    }

    /// The descriptor of the slab holding `address`, mapped or not, if its leaf is published.
    /// Lock-free: leaves are published with Release before any of their slabs is handed out.
    #[inline(always)]
    fn descriptor(&self, address: usize) -> Option<&Slab> {
        let top = address >> (SLAB_SHIFT + LEAF_BITS);
        let leaf = self.top.get(top)?.load(Ordering::Acquire);
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

    /// The word of the slab holding `address` (class word and home, see [`Slab`]): 0 for any
    /// address in no slab serving a class (large blocks, foreign memory, null). Lock-free: a
    /// block's class is set before the block is first handed out, and whatever passed the block
    /// to this thread ordered that. The home may be a moment stale, which costs only locality.
    ///
    /// From the class map, else from the descriptor: that is `lookup` without its `mapped`
    /// test, since a descriptor in a published leaf is zeroed until its slab serves a class,
    /// which only mapped slabs do.
    #[inline]
    pub(crate) fn slab_word(&self, address: usize) -> u32 {
        if address >> ADDRESS_BITS != 0 {
            return 0;
        }
        match self.class_entry(address) {
            Some(entry) => u32::from(entry.load(Ordering::Relaxed)),
            None => self
                .descriptor(address)
                .map_or(0, |slab| slab.word.load(Ordering::Relaxed)),
        }
    }

    /// The class word (class + 1, or 0) of the slab holding `address`, as [`Self::slab_word`]
    /// (the tests' view; the allocator reads the whole word).
    #[cfg(test)]
    pub(crate) fn class_word(&self, address: usize) -> u32 {
        class_word_of(self.slab_word(address))
    }

    /// The class word of `slab`, as its descriptor holds it.
    pub(crate) fn slab_class_word(slab: &Slab) -> u32 {
        class_word_of(slab.word.load(Ordering::Relaxed))
    }

    /// The home of `slab` (index + 1, 0 for none), as its descriptor holds it.
    pub(crate) fn slab_home(slab: &Slab) -> u32 {
        home_of(slab.word.load(Ordering::Relaxed))
    }

    /// Sets the class word (class + 1, or 0 for none) of `slab`, a slab this heap mapped, with
    /// no home.
    pub(crate) fn set_class(&self, slab: &Slab, class_word: u32) {
        self.set_word(slab, class_word, 0);
    }

    /// Sets the class word and home (index + 1, 0 for none) of `slab`, a slab this heap mapped,
    /// in its descriptor and the class map. Only its holder calls this: before handing out any
    /// of its blocks, when it moves to another home, or after the last block came back.
    pub(crate) fn set_word(&self, slab: &Slab, class_word: u32, home: u32) {
        debug_assert!(class_word as usize <= CLASSES && home <= HOMED_INDICES);
        let word = slab_word_of(class_word, home);
        slab.word.store(word, Ordering::Relaxed);
        if let Some(entry) = self.class_entry(slab.base.load(Ordering::Relaxed)) {
            entry.store(word as u16, Ordering::Relaxed);
        }
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
        self.set_class(slab, 0);
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
        if base == 0 || (base + chunk) >> ADDRESS_BITS != 0 {
            // Beyond the maps' reach (a 57-bit address space), or at address 0, which must stay
            // classless so that `free(NULL)` needs no test of its own: give it back and fail.
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
        let entry = &self.top[address >> (SLAB_SHIFT + LEAF_BITS)];
        let leaf = entry.load(Ordering::Relaxed);
        if !leaf.is_null() {
            return Some(leaf);
        }
        let leaf = map(LEAF_SLABS * core::mem::size_of::<Slab>())? as *mut Slab;
        entry.store(leaf, Ordering::Release);
        Some(leaf)
    }

    /// Bytes of address space reserved for the class map (0 when there is none).
    pub(crate) fn class_map_bytes(&self) -> usize {
        self.class_map.as_ref().map_or(0, |_| CLASS_MAP_BYTES)
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

/// Whether reserving the 2 GiB class map costs nothing but address space: there is no
/// `RLIMIT_AS` for it to eat into (or fail under), and the kernel is known not to do strict
/// overcommit accounting, which ignores `MAP_NORESERVE` and would charge the whole 2 GiB against
/// the system's commit limit.
fn reserving_is_free() -> bool {
    address_space_is_unlimited() && read_overcommit_is_strict() == Some(false)
}

/// Whether `vm.overcommit_memory` is 2 (strict accounting); `None` when it cannot be read (no
/// `/proc`), which callers treat as strict. Allocates nothing.
fn read_overcommit_is_strict() -> Option<bool> {
    let mut contents = [0u8; 16];
    // SAFETY: a NUL-terminated path; the descriptor is closed below on every path.
    let fd = unsafe {
        libc::open(
            c"/proc/sys/vm/overcommit_memory".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads into a stack buffer we own, no more than its length.
    let n = unsafe { libc::read(fd, contents.as_mut_ptr().cast(), contents.len()) };
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    overcommit_is_strict(&contents[..usize::try_from(n).ok()?])
}

/// Parses `/proc/sys/vm/overcommit_memory`: `Some(true)` for mode 2, `Some(false)` for 0 or 1,
/// `None` for anything else.
fn overcommit_is_strict(contents: &[u8]) -> Option<bool> {
    match contents.trim_ascii() {
        b"0" | b"1" => Some(false),
        b"2" => Some(true),
        _ => None,
    }
}

/// Whether this process may reserve address space freely: no `RLIMIT_AS`.
fn address_space_is_unlimited() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into `limit`, a valid rlimit, and allocates nothing.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    known && limit.rlim_cur == libc::RLIM_INFINITY
}

impl Drop for PageHeap {
    fn drop(&mut self) {
        for entry in &self.top {
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
pub(super) mod tests {
    use super::*;

    /// A page heap of its own, built as `Heap::init` builds one: in zeroed memory; with a class
    /// map or without one (as where address space is limited).
    pub(in crate::slab) fn page_heap(class_map: bool) -> Box<PageHeap> {
        let mut pages = Box::<PageHeap>::new_zeroed();
        // SAFETY: a zeroed, aligned allocation of a PageHeap; `init` completes it.
        let pages = unsafe {
            PageHeap::init(pages.as_mut_ptr(), class_map);
            pages.assume_init()
        };
        let reserved = class_map && reserving_is_free();
        assert_eq!(
            pages.class_map_bytes(),
            if reserved { CLASS_MAP_BYTES } else { 0 }
        );
        pages
    }

    #[test]
    fn strict_overcommit_is_read_from_its_proc_file() {
        assert_eq!(overcommit_is_strict(b"0\n"), Some(false));
        assert_eq!(overcommit_is_strict(b"1\n"), Some(false));
        assert_eq!(overcommit_is_strict(b"2\n"), Some(true));
        assert_eq!(overcommit_is_strict(b""), None);
        assert_eq!(overcommit_is_strict(b"20\n"), None);
        // This machine's, whatever it is, parses.
        assert!(
            read_overcommit_is_strict().is_some(),
            "no /proc/sys/vm/overcommit_memory"
        );
    }

    /// Every descriptor of a slab that serves no class (mapped or not) reads 0, and the one that
    /// serves a class reads its word at any address inside it: from the class map, and from the
    /// descriptors without one (`lookup` without its `mapped` test, sound only while this holds).
    #[test]
    fn only_a_slab_serving_a_class_has_a_class_word() {
        for class_map in [true, false] {
            let pages = page_heap(class_map);
            let slab = pages.take().expect("memory");
            let base = slab.base.load(Ordering::Relaxed);
            assert_eq!(
                pages.class_word(base),
                0,
                "a taken slab serves no class yet"
            );
            pages.set_class(slab, 7);
            for offset in [0, 64, SLAB_SIZE - 1] {
                assert_eq!(pages.class_word(base + offset), 7);
            }
            assert_eq!(PageHeap::slab_class_word(slab), 7);
            // Every other slab of the leaf, mapped by this heap or not, and addresses in no
            // leaf or beyond the maps.
            let leaf_start = base & !((LEAF_SLABS << SLAB_SHIFT) - 1);
            let others = (0..LEAF_SLABS)
                .map(|i| leaf_start + (i << SLAB_SHIFT))
                .filter(|&address| address != base);
            for address in others {
                assert_eq!(pages.class_word(address), 0, "slab at {address:#x}");
            }
            let other_leaf = leaf_start ^ (1 << (SLAB_SHIFT + LEAF_BITS));
            assert_eq!(pages.class_word(other_leaf), 0);
            assert_eq!(pages.class_word(0), 0, "null");
            assert_eq!(pages.class_word(1 << ADDRESS_BITS), 0);
            assert_eq!(pages.class_word(usize::MAX), 0);
            // The slab goes back (and `Drop` unmaps it) serving no class, as `give` expects.
            pages.give(slab);
            for offset in [0, 64, SLAB_SIZE - 1] {
                assert_eq!(pages.class_word(base + offset), 0);
            }
        }
    }

    /// A slab's home travels with its class word, in the class map and the descriptor alike,
    /// and never shows in the class word; a slab given back loses both.
    #[test]
    fn the_published_class_map_gives_each_slab_s_word_in_one_load() {
        for class_map in [true, false] {
            let pages = page_heap(class_map);
            let slab = pages.take().expect("memory");
            let base = slab.base.load(Ordering::Relaxed);
            pages.set_word(slab, 5, 2);
            let map = ClassMapRef::unpublished();
            assert_eq!(map.slab_word(base), 0, "nothing before it is published");
            // SAFETY: once, and `pages` outlives `map`.
            unsafe { map.publish(&pages) };
            let expected = if class_map { slab_word_of(5, 2) } else { 0 };
            assert_eq!(u32::from(map.slab_word(base + 100)), expected);
            assert_eq!(
                map.slab_word(base + SLAB_SIZE),
                0,
                "the next slab serves nothing"
            );
            assert_eq!(map.slab_word(1 << ADDRESS_BITS | base), 0, "past 2^48");
            assert_eq!(map.slab_word(usize::MAX), 0);
            pages.give(slab);
            assert_eq!(map.slab_word(base), 0);
        }
    }

    /// Every class and every home survive a slab word, within the class map's 16 bits, and
    /// `free`'s push finds the home's code in the word's low bits.
    #[test]
    fn every_class_and_home_survive_the_slab_word() {
        for class_word in 0..=CLASSES as u32 {
            for home in 0..=HOMED_INDICES {
                let word = slab_word_of(class_word, home);
                assert!(
                    word <= u32::from(u16::MAX),
                    "class word {class_word}, home {home}"
                );
                assert_eq!(class_word_of(word), class_word);
                assert_eq!(home_of(word), home, "class word {class_word}");
                let code = if home == 0 { 0 } else { home_code(home - 1) };
                assert_eq!(word & HOME_MASK, code);
                let class = class_word.checked_sub(1).map(|c| c as usize);
                assert_eq!(class_of_word(word), class);
                assert_eq!(class_and_home_of(word), class.map(|c| (c, home)));
            }
        }
    }

    #[test]
    fn a_slab_word_holds_class_and_home() {
        for class_map in [true, false] {
            let pages = page_heap(class_map);
            let slab = pages.take().expect("memory");
            let base = slab.base.load(Ordering::Relaxed);
            pages.set_word(slab, 3, HOMED_INDICES);
            assert_eq!(pages.slab_word(base + 100), slab_word_of(3, HOMED_INDICES));
            assert_eq!(pages.class_word(base + 100), 3);
            assert_eq!(PageHeap::slab_class_word(slab), 3);
            assert_eq!(PageHeap::slab_home(slab), HOMED_INDICES);
            // Moving home keeps the class.
            pages.set_word(slab, 3, 1);
            assert_eq!(pages.slab_word(base), slab_word_of(3, 1));
            assert_eq!(PageHeap::slab_home(slab), 1);
            pages.give(slab);
            assert_eq!(pages.slab_word(base), 0);
            assert_eq!(PageHeap::slab_home(slab), 0);
        }
    }
}
