//! Per-thread registration, cooperating with glibc, and the thread's `kernel_size`.
//!
//! # Who owns the area
//! A thread can have exactly one rseq registration. glibc 2.35+ registers every thread itself and
//! publishes where (`__rseq_offset` from the thread pointer) and how much (`__rseq_size`). So:
//!
//! 1. glibc registered (`__rseq_size != 0`): use its area. Registering our own would fail with
//!    `EINVAL`/`EBUSY`, and unregistering glibc's would break glibc.
//! 2. Nobody did (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, musl, glibc < 2.35): register a
//!    thread-local area of our own, on the thread's first use; or, where a library in the
//!    process offers its area to every copy of this crate, that one, so that all copies share
//!    the thread's one registration (see [`crate::shared`]).
//! 3. Anything fails: this thread has no rseq, with the reason kept. Nothing aborts; callers fall
//!    back to atomics.
//!
//! # `kernel_size` and the 2020 RFC
//! The seed RFC proposed an in-struct handshake: user space sets `RSEQ_TLS_FLAG_SIZE` in
//! `rseq->flags` and writes `user_size`; the kernel answers with `kernel_size`. It was not merged,
//! and `flags` became kernel-owned (a non-zero value kills the process on 6.0+), so the flag can
//! never be used. What shipped in 6.3 answers the same question out of band:
//!
//! | RFC            | today                                                               |
//! |----------------|---------------------------------------------------------------------|
//! | `user_size`    | the `rseq_len` passed to `rseq(2)` (glibc: `__rseq_size`)            |
//! | `kernel_size`  | `getauxval(AT_RSEQ_FEATURE_SIZE)` capped by what the area exposes   |
//!
//! [`kernel_size`] is that answer per thread: 0 without rseq, 20 for the original fields, 24 with
//! `node_id`, 28 with `mm_cid`, 33 on 7.0+. For glibc's area, glibc's 20/32 rule applies: when
//! `__rseq_size` is 20 or 32, the kernel fills `min(32, feature size)` bytes (6.3+ kernels fill
//! `node_id`/`mm_cid` even in 32-byte areas); any other value is the size itself.
//!
//! # Where the state lives
//! Thread-locals without destructors, so the whole thing is usable from inside a global
//! allocator: registration allocates nothing, never panics, and guards against re-entry (glibc's
//! `dlsym` may call `malloc`). What the fast path reads (the area, its kernel size, the index
//! choice) is a 16-byte block of its own, reached through a TLS descriptor on glibc
//! (`thread_block.rs`), so [`current`] is a load and a compare in an executable, and no call to
//! `__tls_get_addr` in a shared library.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicIsize, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use crate::abi::{self, Rseq};
use crate::arch;
use crate::shared::{self, NotNow};
use crate::thread_block::{self, ThreadBlock};

/// Who registered the current thread's rseq area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// glibc registered it; we share its area.
    Glibc,
    /// This crate registered a thread-local area of its own (this copy, or another copy in the
    /// process that shares its area: see [`crate::shared`]).
    Own,
    /// The thread has no rseq; see [`Unavailable`] for why.
    None,
}

impl Owner {
    /// `"glibc"`, `"own"` or `"none"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Owner::Glibc => "glibc",
            Owner::Own => "own",
            Owner::None => "none",
        }
    }
}

/// Why the current thread has no rseq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unavailable {
    /// `rseq(2)` failed with this errno: `ENOSYS` (old kernel, valgrind, rr, seccomp), `EPERM`
    /// (seccomp), `EINVAL`/`EBUSY` (someone else registered this thread).
    Errno(i32),
    /// `rseq(2)` returned success but `cpu_id` stayed negative (some emulators).
    CpuIdNotSet,
    /// glibc registers rseq in this process, but not for this thread (created with a raw
    /// `clone`, or glibc's registration for it failed).
    GlibcAreaNotRegistered,
    /// The kernel asks for a larger or more aligned area than this build reserves.
    AreaTooSmall {
        /// `AT_RSEQ_FEATURE_SIZE`.
        feature_size: u32,
        /// `AT_RSEQ_ALIGN`.
        align: u32,
    },
    /// glibc owns the area, but this architecture has no known way to read the thread pointer.
    NoThreadPointer,
    /// The thread gave up its own registration with [`unregister_current_thread`].
    Unregistered,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Unavailable::Errno(e) => write!(f, "rseq(2) failed: {} (errno {e})", errno_name(e)),
            Unavailable::CpuIdNotSet => f.write_str("rseq(2) succeeded but cpu_id was not set"),
            Unavailable::GlibcAreaNotRegistered => {
                f.write_str("glibc's rseq area is not registered for this thread")
            }
            Unavailable::AreaTooSmall {
                feature_size,
                align,
            } => write!(
                f,
                "kernel needs a {feature_size}-byte area aligned to {align}; \
                 this build reserves {OWN_AREA_SIZE} bytes aligned to {OWN_AREA_ALIGN}"
            ),
            Unavailable::NoThreadPointer => {
                f.write_str("no thread-pointer access on this architecture")
            }
            Unavailable::Unregistered => f.write_str("unregistered by the program"),
        }
    }
}

/// Symbolic name for the errnos `rseq(2)` returns.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::EBUSY => "EBUSY",
        libc::EFAULT => "EFAULT",
        libc::EACCES => "EACCES",
        _ => "unknown",
    }
}

/// A registered rseq area of the current thread.
///
/// `Copy` and cheap; neither `Send` nor `Sync`, because the area belongs to the thread that
/// obtained it from [`current`].
#[derive(Clone, Copy)]
pub struct Current {
    area: NonNull<Rseq>,
    /// The field of `area` that [`Self::best_index`] names, kept so fast paths need not add its
    /// offset (nor load it).
    best_field: NonNull<u32>,
    kernel_size: u32,
    /// `Index::best(kernel_size)`, kept so fast paths need not recompute it.
    best: crate::Index,
    owner: Owner,
    _not_send: PhantomData<*mut ()>,
}

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Current")
            .field("area", &self.area)
            .field("kernel_size", &self.kernel_size)
            .field("owner", &self.owner)
            .finish()
    }
}

impl Current {
    /// A registration of `area`, whose kernel fills `kernel_size` bytes.
    fn new(area: NonNull<Rseq>, kernel_size: u32, owner: Owner) -> Current {
        let best = crate::Index::best(kernel_size);
        // SAFETY: the offset of a u32 field inside the area.
        let best_field = unsafe { area.cast::<u8>().add(best.field_offset()).cast() };
        Current {
            area,
            best_field,
            kernel_size,
            best,
            owner,
            _not_send: PhantomData,
        }
    }

    /// The registered area.
    #[inline]
    pub fn area(self) -> NonNull<Rseq> {
        self.area
    }

    /// Bytes of `struct rseq` the kernel fills for this thread (>= 20).
    #[inline]
    pub fn kernel_size(self) -> u32 {
        self.kernel_size
    }

    /// The index to use for per-CPU data: [`Index::best`](crate::Index::best) of
    /// [`Self::kernel_size`], read from the thread's registration rather than computed.
    ///
    /// The same for every registered thread of a process: the kernel size follows from the
    /// kernel's feature size and from whether glibc registers rseq, both fixed for the process.
    /// So per-CPU data shared by all threads can rely on one thread's choice for all (mixing
    /// `cpu_id` and `mm_cid` indexing on the same data would let two threads on different CPUs
    /// share an index).
    #[inline]
    pub fn best_index(self) -> crate::Index {
        self.best
    }

    /// [`Owner::Glibc`] or [`Owner::Own`].
    #[inline]
    pub fn owner(self) -> Owner {
        self.owner
    }

    /// Reads a kernel-owned `u32` field at `offset`.
    #[inline]
    fn read_field(self, offset: usize) -> u32 {
        // SAFETY: `area` points to this thread's registered `struct rseq`, alive for the
        // thread's lifetime and 32-byte aligned, so `offset` (a field offset < 32) is an aligned,
        // in-bounds u32. The kernel updates it only while this thread is not running user code
        // (like a signal handler would), so a relaxed atomic load is the right access.
        unsafe {
            (*self
                .area
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<AtomicU32>())
            .load(Ordering::Relaxed)
        }
    }

    /// The CPU this thread runs on now (may be stale by the time it is used).
    #[inline]
    pub fn cpu_id(self) -> u32 {
        self.read_field(core::mem::offset_of!(Rseq, cpu_id_start))
    }

    /// The NUMA node of [`Self::cpu_id`], when the kernel fills it (`kernel_size >= 24`).
    #[inline]
    pub fn node_id(self) -> Option<u32> {
        (self.kernel_size >= abi::NODE_ID_END)
            .then(|| self.read_field(core::mem::offset_of!(Rseq, node_id)))
    }

    /// The memory-map concurrency id, when the kernel fills it (`kernel_size >= 28`).
    #[inline]
    pub fn mm_cid(self) -> Option<u32> {
        (self.kernel_size >= abi::MM_CID_END).then(|| self.read_field(abi::MM_CID_OFFSET))
    }

    /// The index this thread uses now under `kind`. For [`crate::Index::MmCid`] the caller must
    /// have checked `kernel_size >= 28` (see [`crate::Index::best`]).
    #[inline]
    pub fn index(self, kind: crate::Index) -> u32 {
        // SAFETY: as in `read_field`, for the field `index_field` points at.
        unsafe { AtomicU32::from_ptr(self.index_field(kind).cast_mut()) }.load(Ordering::Relaxed)
    }

    /// The address of the index field `kind` names. For the best index, the one the block
    /// keeps: a caller that passes [`Self::best_index`] (as fast paths do) then reads no offset
    /// at all, the comparison folding away.
    #[inline(always)]
    pub(crate) fn index_field(self, kind: crate::Index) -> *const u32 {
        if kind == self.best {
            self.best_field.as_ptr()
        } else {
            // SAFETY: the offset of a u32 field inside the area.
            unsafe {
                self.area
                    .as_ptr()
                    .cast::<u8>()
                    .add(kind.field_offset())
                    .cast()
            }
        }
    }

    /// The commit sequences, or `None` on architectures without them.
    #[inline]
    pub fn sequences(self) -> Option<crate::Sequences> {
        crate::Sequences::new(self)
    }
}

/// Why a thread has no registration yet, or at all.
#[derive(Clone, Copy)]
enum NotRegistered {
    Unknown,
    /// Registration is running on this thread; a re-entrant caller gets `None` (not cached).
    Registering,
    Unavailable(Unavailable),
}

thread_local! {
    /// Why this thread has no registration (meaningful while its block's area is null); the
    /// registration itself is in [`crate::thread_block`], where the fast path reads it.
    static NOT_REGISTERED: Cell<NotRegistered> = const { Cell::new(NotRegistered::Unknown) };
}

/// Bytes reserved for our own registration: the 7.0 layout is 33 bytes, the rest is headroom for
/// fields future kernels add (the kernel fills at most `AT_RSEQ_FEATURE_SIZE` bytes).
pub const OWN_AREA_SIZE: usize = 256;
/// Alignment of our own area (the kernel asks for 32 before 7.0, 64 since). No more: the area is
/// a thread-local, and glibc refuses to `dlopen` a library built with `initial-exec-tls` whose
/// TLS is aligned beyond its static TLS alignment (64 on x86_64).
pub const OWN_AREA_ALIGN: usize = 64;

/// The current thread's registration, registering on first use.
///
/// `None` when the thread has no rseq (or while its registration is in progress, for a
/// re-entrant caller). This is the fast path: one TLS load and a test once registered.
#[inline]
pub fn current() -> Option<Current> {
    let t = thread_block::read();
    match NonNull::new(t.area) {
        Some(area) => Some(Current::from_block(area, t)),
        // Known: answered from the block, which threads without rseq (old kernels, seccomp,
        // valgrind) reach on every operation; the thread-local that says why costs a
        // `__tls_get_addr` call in a shared object.
        None if t.known_unavailable() => None,
        None => thread_block::with(current_slow),
    }
}

/// The current thread's registration if it already has one; unlike [`current`], never
/// registers. For fast paths that fall back to a slow path calling [`current`] anyway: with no
/// call in it, the fast path needs no stack frame.
#[inline]
pub fn current_if_registered() -> Option<Current> {
    let t = thread_block::read();
    Some(Current::from_block(NonNull::new(t.area)?, t))
}

impl Current {
    /// The registration a thread block holds, whose area is `area` (non-null).
    #[inline(always)]
    pub(crate) fn from_block(area: NonNull<Rseq>, t: thread_block::Snapshot) -> Current {
        Current {
            area,
            // SAFETY: the block's best field is non-null while its area is (`ThreadBlock::set`).
            best_field: unsafe { NonNull::new_unchecked(t.best_field.cast_mut()) },
            kernel_size: t.kernel_size,
            best: t.best(),
            owner: t.owner(),
            _not_send: PhantomData,
        }
    }
}

#[cold]
#[inline(never)]
fn current_slow(t: &ThreadBlock) -> Option<Current> {
    if !matches!(NOT_REGISTERED.get(), NotRegistered::Unknown) {
        return None;
    }
    NOT_REGISTERED.set(NotRegistered::Registering);
    match register_thread() {
        Ok(current) => {
            t.set(
                current.area.as_ptr(),
                current.best_field.as_ptr(),
                current.kernel_size,
                current.best,
                current.owner,
            );
            Some(current)
        }
        Err(NotNow::Unavailable(why)) => {
            set_unavailable(why);
            None
        }
        // Interrupted another copy's registration of the shared area: answer "none" for now,
        // as to any re-entrant call, and register when asked after it.
        Err(NotNow::Busy) => {
            NOT_REGISTERED.set(NotRegistered::Unknown);
            None
        }
    }
}

/// Marks the current thread as having no rseq, for `why`.
fn set_unavailable(why: Unavailable) {
    thread_block::with(|t| {
        t.set(
            ptr::null_mut(),
            ptr::null(),
            0,
            crate::Index::CpuId,
            Owner::None,
        )
    });
    NOT_REGISTERED.set(NotRegistered::Unavailable(why));
}

/// This thread's registration status, registering on first use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Who registered the area.
    pub owner: Owner,
    /// Why there is no rseq, when `owner` is [`Owner::None`].
    pub reason: Option<Unavailable>,
    /// Bytes of `struct rseq` the kernel fills for this thread; 0 without rseq.
    pub kernel_size: u32,
}

/// The current thread's [`Status`].
pub fn status() -> Status {
    // The block may say "no rseq" for another copy of this crate in the process (one of the
    // same version shares the block, not the thread-local with the reason): then ask ourselves.
    let registered = current().or_else(|| match NOT_REGISTERED.get() {
        NotRegistered::Unknown => thread_block::with(current_slow),
        _ => None,
    });
    match (registered, NOT_REGISTERED.get()) {
        (Some(c), _) => Status {
            owner: c.owner,
            reason: None,
            kernel_size: c.kernel_size,
        },
        (None, NotRegistered::Unavailable(why)) => Status {
            owner: Owner::None,
            reason: Some(why),
            kernel_size: 0,
        },
        // Asked re-entrantly while registering: report no rseq for now, without a reason.
        (None, _) => Status {
            owner: Owner::None,
            reason: None,
            kernel_size: 0,
        },
    }
}

/// Bytes of `struct rseq` the kernel fills for the current thread's registration: 0 means no rseq.
#[inline]
pub fn kernel_size() -> u32 {
    current().map_or(0, Current::kernel_size)
}

/// Why [`unregister_current_thread`] did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnregisterError {
    /// The area is glibc's; only glibc may unregister it.
    OwnedByGlibc,
    /// The thread has no registration.
    NotRegistered,
    /// `rseq(2)` refused with this errno; or `EBUSY`: another copy of this crate is registering
    /// or leaving the thread's shared area right now (this call interrupted it, from a signal
    /// handler; see [`crate::shared`]).
    Errno(i32),
}

impl fmt::Display for UnregisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UnregisterError::OwnedByGlibc => f.write_str("the rseq area belongs to glibc"),
            UnregisterError::NotRegistered => f.write_str("the thread has no rseq registration"),
            UnregisterError::Errno(e) => {
                write!(
                    f,
                    "rseq(2) unregister failed: {} (errno {e})",
                    errno_name(e)
                )
            }
        }
    }
}

/// Unregisters the current thread's own area (for code about to be unloaded, for example).
///
/// Afterwards the thread reports [`Unavailable::Unregistered`] and structures built on this crate
/// take their atomic fallback on it; it is not registered again. glibc's area is never touched.
/// Where other copies of this crate in the process share the area ([`crate::shared`]), the
/// kernel's registration stays for them: this copy only stops using it (and clears `rseq_cs`,
/// which may point at its code); the last copy to leave unregisters it.
pub fn unregister_current_thread() -> Result<(), UnregisterError> {
    // Resolve the thread's state first: a thread that never used rseq may still be glibc's.
    let current = current().ok_or(UnregisterError::NotRegistered)?;
    if current.owner == Owner::Glibc {
        return Err(UnregisterError::OwnedByGlibc);
    }
    shared::unregister(current.area, registration_len(process().feature_size))?;
    set_unavailable(Unavailable::Unregistered);
    Ok(())
}

fn register_thread() -> Result<Current, NotNow> {
    let process = process();
    if process.glibc_size != 0 {
        glibc_area(process).map_err(NotNow::Unavailable)
    } else {
        register_own_area(process)
    }
}

fn glibc_area(process: ProcessInfo) -> Result<Current, Unavailable> {
    let tp = arch::thread_pointer().ok_or(Unavailable::NoThreadPointer)?;
    let area = tp.wrapping_offset(process.glibc_offset).cast::<Rseq>();
    let area = NonNull::new(area).ok_or(Unavailable::GlibcAreaNotRegistered)?;
    // glibc's 20/32 rule: those two values predate the feature size and mean "the original
    // 32-byte area", of which a 6.3+ kernel fills up to its feature size.
    let kernel_size = match process.glibc_size {
        20 | 32 => process.feature_size.min(abi::ORIG_RSEQ_LEN as u32),
        size => size,
    };
    let current = Current::new(area, kernel_size, Owner::Glibc);
    if (current.read_field(abi::CPU_ID_OFFSET) as i32) < 0 {
        return Err(Unavailable::GlibcAreaNotRegistered);
    }
    Ok(current)
}

fn registration_len(feature_size: u32) -> usize {
    (feature_size as usize).max(abi::ORIG_RSEQ_LEN)
}

fn register_own_area(process: ProcessInfo) -> Result<Current, NotNow> {
    let too_small = Unavailable::AreaTooSmall {
        feature_size: process.feature_size,
        align: process.feature_align,
    };
    let len = registration_len(process.feature_size);
    if len > OWN_AREA_SIZE || process.feature_align as usize > OWN_AREA_ALIGN {
        return Err(NotNow::Unavailable(too_small));
    }
    let area = shared::register(process.exporter, len)?;
    Ok(Current::new(area, process.feature_size, Owner::Own))
}

/// Process-wide facts, computed once (racily but idempotently: every thread computes the same).
#[derive(Clone, Copy, Debug)]
struct ProcessInfo {
    feature_size: u32,
    feature_align: u32,
    glibc_size: u32,
    glibc_offset: isize,
    /// Where glibc registers none: the object that shares its area with every copy of this
    /// crate ([`crate::shared`]), if any.
    exporter: shared::Exporter,
}

static PROCESS_READY: AtomicU8 = AtomicU8::new(0);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);
static FEATURE_ALIGN: AtomicU32 = AtomicU32::new(0);
static GLIBC_SIZE: AtomicU32 = AtomicU32::new(0);
static GLIBC_OFFSET: AtomicIsize = AtomicIsize::new(0);
static EXPORTER: AtomicUsize = AtomicUsize::new(0);

fn process() -> ProcessInfo {
    if PROCESS_READY.load(Ordering::Acquire) == 0 {
        let (glibc_size, glibc_offset) = glibc_registration();
        // SAFETY: getauxval has no preconditions; it returns 0 for absent keys.
        let feature_size = unsafe { libc::getauxval(abi::AT_RSEQ_FEATURE_SIZE) } as u32;
        // SAFETY: as above.
        let feature_align = unsafe { libc::getauxval(abi::AT_RSEQ_ALIGN) } as u32;
        FEATURE_SIZE.store(
            if feature_size == 0 {
                abi::ORIG_RSEQ_FEATURE_SIZE
            } else {
                feature_size
            },
            Ordering::Relaxed,
        );
        FEATURE_ALIGN.store(
            if feature_align == 0 {
                abi::ORIG_RSEQ_LEN as u32
            } else {
                feature_align
            },
            Ordering::Relaxed,
        );
        GLIBC_SIZE.store(glibc_size, Ordering::Relaxed);
        GLIBC_OFFSET.store(glibc_offset, Ordering::Relaxed);
        // Only where glibc registers none: a failed lookup costs glibc an error message.
        if glibc_size == 0 {
            EXPORTER.store(shared::find_exporter(), Ordering::Relaxed);
        }
        PROCESS_READY.store(1, Ordering::Release);
    }
    ProcessInfo {
        feature_size: FEATURE_SIZE.load(Ordering::Relaxed),
        feature_align: FEATURE_ALIGN.load(Ordering::Relaxed),
        glibc_size: GLIBC_SIZE.load(Ordering::Relaxed),
        glibc_offset: GLIBC_OFFSET.load(Ordering::Relaxed),
        exporter: EXPORTER.load(Ordering::Relaxed),
    }
}

/// The object that shares its area with every copy of this crate, where glibc registers none
/// ([`crate::shared`]); 0 where none does, or where glibc registers.
pub(crate) fn exporter() -> shared::Exporter {
    process().exporter
}

/// `__rseq_size` and `__rseq_offset` when this glibc exports them, else `(0, 0)`.
///
/// Looked up with `dlsym` rather than linked, so binaries still start on glibc < 2.35 and musl.
#[cfg(not(all(target_env = "gnu", target_feature = "crt-static")))]
pub(crate) fn glibc_registration() -> (u32, isize) {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other preconditions.
    let size = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) };
    // SAFETY: as above.
    let offset = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
    if size.is_null() || offset.is_null() {
        return (0, 0);
    }
    // SAFETY: glibc defines `const unsigned int __rseq_size` and `const ptrdiff_t
    // __rseq_offset`; both are set before user code runs and never change afterwards.
    unsafe { (*size.cast::<u32>(), *offset.cast::<isize>()) }
}

/// Statically linked glibc: `dlsym` cannot see the executable's own symbols, but the link already
/// fixed the glibc version (>= 2.35 is required to build this way), so read the symbols directly.
#[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
pub(crate) fn glibc_registration() -> (u32, isize) {
    unsafe extern "C" {
        static __rseq_size: libc::c_uint;
        static __rseq_offset: isize;
    }
    // SAFETY: both are constants glibc sets before user code runs.
    unsafe { (__rseq_size, __rseq_offset) }
}

/// The process-wide `AT_RSEQ_FEATURE_SIZE` (20 when the kernel does not report one).
pub fn feature_size() -> u32 {
    process().feature_size
}

/// The process-wide `AT_RSEQ_ALIGN` (32 when the kernel does not report one).
pub fn feature_align() -> u32 {
    process().feature_align
}

/// glibc's `__rseq_size`: 0 when glibc did not register rseq (or does not export it).
pub fn glibc_rseq_size() -> u32 {
    process().glibc_size
}
