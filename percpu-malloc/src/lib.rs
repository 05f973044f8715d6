//! `libpercpu_malloc.so`: [`percpu::PerCpuAlloc`] behind the C allocation functions, for
//! `LD_PRELOAD=target/release/libpercpu_malloc.so program`.
//!
//! Exports `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`, `malloc_trim`,
//! `malloc_stats`, `malloc_info`, `mallinfo` and `mallinfo2`, with glibc's semantics:
//! `errno = ENOMEM` on failure, `free(NULL)` does nothing, `realloc(p, 0)` frees `p` and returns
//! NULL, `calloc` and `reallocarray` check their multiplication. Every other name through which a program can reach
//! glibc's allocator is ours too, so no block crosses between the two heaps: C23's `free_sized`
//! and `free_aligned_sized`, the obsolete `cfree`, and glibc's `__libc_malloc`, `__libc_free`,
//! `__libc_calloc`, `__libc_realloc`, `__libc_memalign`, `__libc_valloc` and `__libc_pvalloc`.
//! Also `rseq_sys_shared_area_v1`, through which other copies of rseq-sys in the program share
//! this library's rseq area where glibc registers none (see rseq-sys's `shared` module).
//!
//! # The first call
//! The first call may come from libc or the dynamic loader before `main`. The allocator
//! initialises itself on that call without allocating (only `mmap`, `getenv` and reading
//! `/sys`), so there is no bootstrap heap to outgrow. Its rseq registration may call `dlsym`,
//! which may call `malloc` again: rseq-sys refuses re-entrant registration, so that inner call
//! takes the atomic fallback path and nothing recurses or deadlocks.
//!
//! `PERCPU_MALLOC_STATS=1` prints the allocator's statistics to stderr at exit; `malloc_stats()`
//! prints them whenever a program calls it, `mallinfo2()` returns them in glibc's fields, and
//! `malloc_info()` writes them as glibc's XML.

#![deny(unsafe_op_in_unsafe_fn)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr;

use percpu::PerCpuAlloc;

/// The allocator behind every exported function.
static ALLOCATOR: PerCpuAlloc = PerCpuAlloc::new();

// Where glibc registers no rseq (before 2.35, or `glibc.pthread.rseq=0`), the program's own copy
// of rseq-sys (a Rust program using percpu) shares this library's area instead of losing rseq,
// or taking it from the allocator, in every thread where the other registered first. Preloaded,
// the library stays loaded as long as the process, as the export requires.
rseq_sys::export_shared_area!();

/// What `malloc` guarantees: alignment for any fundamental type.
const MALLOC_ALIGN: usize = 16;

fn set_errno(value: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno.
    unsafe { *libc::__errno_location() = value };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// `size` bytes aligned to `align` (a power of two), or NULL with `errno = ENOMEM`.
///
/// `extern "C"`, so that the compiler knows it never unwinds: `malloc` then needs no landing pad
/// around the call and makes it a tail call, with no stack frame of its own.
extern "C" fn allocate(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size, align.max(MALLOC_ALIGN)) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a valid layout; zero sizes are served (PerCpuAlloc gives them a unique block).
    let block = unsafe {
        if zeroed {
            ALLOCATOR.alloc_zeroed(layout)
        } else {
            ALLOCATOR.alloc(layout)
        }
    };
    if block.is_null() {
        set_errno(libc::ENOMEM);
    }
    block.cast()
}

/// # Safety
/// C's `malloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    match ALLOCATOR.try_alloc_fast(size) {
        Some(block) => block.as_ptr().cast(),
        None => allocate_by_size(size),
    }
}

/// `malloc` past its fast attempt. `extern "C"` for the same reason as [`allocate`], and out of
/// line so that `malloc` keeps no stack frame.
#[inline(never)]
extern "C" fn allocate_by_size(size: usize) -> *mut c_void {
    let block = ALLOCATOR.alloc_by_size(size);
    if block.is_null() {
        set_errno(libc::ENOMEM);
    }
    block.cast()
}

/// # Safety
/// C's `free`: `block` is NULL or a live block from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(block: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { ALLOCATOR.free(block.cast()) };
}

/// # Safety
/// C23's `free_sized` (glibc 2.43): `block` is NULL or a live block from `malloc`, `calloc` or
/// `realloc`. The size only restates what the block's address tells `free`; without this, a
/// program built against glibc 2.43 would hand our blocks to glibc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_sized(block: *mut c_void, _size: usize) {
    // SAFETY: the caller's contract.
    unsafe { ALLOCATOR.free(block.cast()) };
}

/// # Safety
/// C23's `free_aligned_sized` (glibc 2.43): `block` is NULL or a live block from
/// `aligned_alloc`; as [`free_sized`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(block: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: the caller's contract.
    unsafe { ALLOCATOR.free(block.cast()) };
}

/// # Safety
/// The obsolete `cfree`, which glibc keeps as a compatibility symbol for old binaries: `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(block: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { ALLOCATOR.free(block.cast()) };
}

/// # Safety
/// C's `calloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => allocate(total, MALLOC_ALIGN, true),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// C's `realloc`: `block` is NULL or a live block from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(block: *mut c_void, size: usize) -> *mut c_void {
    if block.is_null() {
        return allocate(size, MALLOC_ALIGN, false);
    }
    if size == 0 {
        // glibc: realloc(p, 0) frees p and returns NULL.
        // SAFETY: the caller's contract.
        unsafe { ALLOCATOR.free(block.cast()) };
        return ptr::null_mut();
    }
    // SAFETY: the caller's contract.
    let moved = unsafe { ALLOCATOR.realloc_unsized(block.cast(), size) };
    if moved.is_null() {
        set_errno(libc::ENOMEM);
    }
    moved.cast()
}

/// # Safety
/// glibc's `reallocarray`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(
    block: *mut c_void,
    count: usize,
    size: usize,
) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(total) => unsafe { realloc(block, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// POSIX `posix_memalign`: `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // posix_memalign reports through its result and leaves errno alone.
    // SAFETY: reading errno, this thread's.
    let saved = unsafe { *libc::__errno_location() };
    let block = allocate(size, align, false);
    set_errno(saved);
    if block.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's contract.
    unsafe { *out = block };
    0
}

/// # Safety
/// C11 `aligned_alloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    allocate(size, align, false)
}

/// # Safety
/// glibc's `memalign` (an alignment that is not a power of two is rounded up to one).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(align) => allocate(size, align, false),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// glibc's `valloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    allocate(size, page_size(), false)
}

/// # Safety
/// glibc's `pvalloc`: page-aligned, size rounded up to whole pages.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(size) => allocate(size, page, false),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// glibc's `malloc_usable_size`: `block` is NULL or a live block from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(block: *mut c_void) -> usize {
    if block.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract.
    unsafe { ALLOCATOR.usable_size(block.cast()) }
}

/// glibc's `malloc_trim`: 1 if memory went back to the kernel.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(ALLOCATOR.trim() > 0)
}

/// glibc's own names for its allocator, which it exports too: malloc wrappers and debugging
/// tools call them for "the real malloc". Under the preload that is this library, or their
/// blocks would come from glibc's heap and reach our `free`, or ours reach glibc's.
mod glibc_names {
    use super::{c_void, calloc, free, malloc, memalign, pvalloc, realloc, valloc};

    /// # Safety
    /// [`malloc`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
        // SAFETY: the caller's contract.
        unsafe { malloc(size) }
    }

    /// # Safety
    /// [`free`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_free(block: *mut c_void) {
        // SAFETY: the caller's contract.
        unsafe { free(block) }
    }

    /// # Safety
    /// [`calloc`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut c_void {
        // SAFETY: the caller's contract.
        unsafe { calloc(count, size) }
    }

    /// # Safety
    /// [`realloc`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_realloc(block: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: the caller's contract.
        unsafe { realloc(block, size) }
    }

    /// # Safety
    /// [`memalign`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
        // SAFETY: the caller's contract.
        unsafe { memalign(align, size) }
    }

    /// # Safety
    /// [`valloc`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
        // SAFETY: the caller's contract.
        unsafe { valloc(size) }
    }

    /// # Safety
    /// [`pvalloc`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
        // SAFETY: the caller's contract.
        unsafe { pvalloc(size) }
    }
}

/// glibc's `mallinfo2`: the allocator's statistics in glibc's fields, for programs that report
/// their memory through it (glibc's own would describe arenas this library never uses).
/// - `arena`: slab memory mapped and not handed back to the kernel; `uordblks` of it is in
///   blocks in use, `fordblks` is the rest (free blocks, and slab space not carved yet);
/// - `hblks` and `hblkhd`: the large blocks in use (a mapping each) and their bytes;
/// - free-chunk counts, fastbins and the releasable top have no counterpart here: 0.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
    glibc_fields(&ALLOCATOR.stats())
}

/// [`mallinfo2`]'s fields from one reading of the statistics.
fn glibc_fields(stats: &percpu::AllocStats) -> libc::mallinfo2 {
    let arena = stats
        .slab_mapped_bytes
        .saturating_sub(stats.slab_released_bytes);
    let in_use = stats.in_use_bytes() - stats.large_in_use_bytes;
    libc::mallinfo2 {
        arena,
        ordblks: 0,
        smblks: 0,
        hblks: stats.large_allocs.saturating_sub(stats.large_frees) as usize,
        hblkhd: stats.large_in_use_bytes,
        usmblks: 0,
        fsmblks: 0,
        uordblks: in_use,
        fordblks: arena.saturating_sub(in_use),
        keepcost: 0,
    }
}

/// glibc's `mallinfo`: [`mallinfo2`]'s fields as `int`s, each held at `INT_MAX` where it is
/// larger (glibc's wrap around instead).
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> libc::mallinfo {
    let info = mallinfo2();
    let int = |n: usize| c_int::try_from(n).unwrap_or(c_int::MAX);
    libc::mallinfo {
        arena: int(info.arena),
        ordblks: int(info.ordblks),
        smblks: int(info.smblks),
        hblks: int(info.hblks),
        hblkhd: int(info.hblkhd),
        usmblks: int(info.usmblks),
        fsmblks: int(info.fsmblks),
        uordblks: int(info.uordblks),
        fordblks: int(info.fordblks),
        keepcost: int(info.keepcost),
    }
}

/// glibc's `malloc_info`: the allocator's statistics as glibc's XML, on `stream` (`options` must be
/// 0, as glibc requires: `EINVAL` otherwise). One heap, as glibc words it:
/// - `sizes`: per size class, the freed blocks its caches hold (per-CPU and transfer level) as
///   `count` blocks of up to `to` bytes, `total` bytes in all;
/// - `total type="rest"`: every free byte of the slabs (`mallinfo2`'s `fordblks`: also the slabs'
///   free lists and space not carved yet, as glibc's counts its top chunk), `count` the blocks
///   above; `type="mmap"`: the large blocks in use (`hblks`, `hblkhd`);
/// - `system`: slab memory held (`arena`; `max` is the same figure, no high-water is kept),
///   `aspace`: slab address space mapped.
///
/// # Safety
/// `stream` is an open stdio stream, as glibc's requires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        // glibc returns the error itself, and leaves errno alone.
        return libc::EINVAL;
    }
    // glibc's reports no error of the stream either: stdio keeps it for `ferror`.
    let _ = core::fmt::write(
        &mut Stream(stream),
        format_args!("{}", MallocInfo(ALLOCATOR.stats())),
    );
    0
}

/// A stdio stream as a `fmt::Write`.
struct Stream(*mut libc::FILE);

impl core::fmt::Write for Stream {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: `malloc_info`'s caller gave an open stream; the bytes are initialised.
        let written = unsafe { libc::fwrite(s.as_ptr().cast(), 1, s.len(), self.0) };
        if written == s.len() {
            Ok(())
        } else {
            Err(core::fmt::Error)
        }
    }
}

/// [`malloc_info`]'s document.
struct MallocInfo(percpu::AllocStats);

impl core::fmt::Display for MallocInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let stats = &self.0;
        let info = glibc_fields(stats);
        f.write_str("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n")?;
        let (mut from, mut blocks) = (1, 0);
        for class in &stats.classes {
            let free = class.cpu_cached_bytes + class.transfer_bytes;
            let count = free / class.size;
            if count > 0 {
                writeln!(
                    f,
                    "  <size from=\"{from}\" to=\"{}\" total=\"{free}\" count=\"{count}\"/>",
                    class.size
                )?;
            }
            blocks += count;
            from = class.size + 1;
        }
        f.write_str("</sizes>\n")?;
        let rest = format_args!(
            "<total type=\"fast\" count=\"0\" size=\"0\"/>\n\
             <total type=\"rest\" count=\"{blocks}\" size=\"{}\"/>\n",
            info.fordblks
        );
        let system = format_args!(
            "<system type=\"current\" size=\"{arena}\"/>\n\
             <system type=\"max\" size=\"{arena}\"/>\n\
             <aspace type=\"total\" size=\"{mapped}\"/>\n\
             <aspace type=\"mprotect\" size=\"{mapped}\"/>\n",
            arena = info.arena,
            mapped = stats.slab_mapped_bytes
        );
        write!(f, "{rest}{system}</heap>\n{rest}")?;
        writeln!(
            f,
            "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>",
            info.hblks, info.hblkhd
        )?;
        writeln!(f, "{system}</malloc>")
    }
}

/// A copy of stderr taken at load time: programs may close fd 2 at exit before our report runs
/// (GNU tools' `close_stdout` does).
static STATS_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);

/// Writes to the saved stderr without allocating.
struct Stderr;

impl core::fmt::Write for Stderr {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let fd = STATS_FD.load(core::sync::atomic::Ordering::Relaxed);
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            // SAFETY: writing initialised bytes to a descriptor we own.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if n <= 0 {
                return Err(core::fmt::Error);
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }
}

extern "C" fn print_stats() {
    let _ = core::fmt::write(
        &mut Stderr,
        format_args!("percpu-malloc statistics:\n{}\n", ALLOCATOR.stats()),
    );
}

/// glibc's `malloc_stats`: the statistics, now, to stderr (the report `PERCPU_MALLOC_STATS=1`
/// prints at exit). glibc's own would describe arenas this library never uses.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    // A program may call it with no report arranged: then fd 2 as it is now.
    let _ = STATS_FD.compare_exchange(
        -1,
        2,
        core::sync::atomic::Ordering::Relaxed,
        core::sync::atomic::Ordering::Relaxed,
    );
    print_stats();
}

/// Runs when the library loads: arranges the statistics report.
extern "C" fn on_load() {
    // SAFETY: getenv with a NUL-terminated name; the value is read at once.
    let value = unsafe { libc::getenv(c"PERCPU_MALLOC_STATS".as_ptr()) };
    // SAFETY: getenv's result is NULL or a NUL-terminated string.
    if !value.is_null() && unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes() == b"1" {
        // SAFETY: duplicating fd 2 (close-on-exec, so children do not inherit it).
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            STATS_FD.store(fd, core::sync::atomic::Ordering::Relaxed);
            // SAFETY: a plain function that lives for the whole program.
            unsafe { libc::atexit(print_stats) };
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;
