//! One registration for every copy of this crate in a process, where glibc registers none.
//!
//! A thread has one rseq registration. Where glibc makes it, every copy of rseq-sys in the
//! process (the program's, a preloaded allocator's, a library's) uses glibc's area. Where glibc
//! makes none (before 2.35, `glibc.pthread.rseq=0`, musl), each copy would register a
//! thread-local area of its own, and the kernel would refuse every copy after the first in each
//! thread (`EINVAL`): a program using percpu under `LD_PRELOAD=libpercpu_malloc.so` would lose
//! rseq, thread by thread, in its own code or in its allocator, whichever came second.
//!
//! So a shared object that stays loaded as long as the process (a preloaded library, a library
//! the program links) offers its area to the others with [`export_shared_area!`](crate::export_shared_area).
//! A copy about to register an area of its own first looks for that symbol
//! (`dlsym(RTLD_DEFAULT)`, once per process), and where some object defines it, takes the area
//! it gives for the thread instead. Every copy then names the same area, length and signature:
//! the first registration in a thread succeeds, and the kernel answers every later one with
//! `EBUSY`, which means exactly "registered so already"; those copies use it too. Beside the
//! area, a count of the copies using it in the thread lets an unregistration leave the kernel's
//! registration in place while any other copy still uses it.
//!
//! The symbol's name fixes [`SharedArea`]'s layout: a change to it needs a new name. An object
//! that a copy cannot see when it looks (one `dlopen`ed later, or with `RTLD_LOCAL` into another
//! scope) is not shared with: that copy keeps the old behaviour, first come first served.

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_void};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::{self, Rseq};
use crate::errno;
use crate::registration::{OWN_AREA_ALIGN, OWN_AREA_SIZE, Unavailable, UnregisterError};

/// The symbol [`export_shared_area!`](crate::export_shared_area) defines: an
/// `extern "C" fn() -> *mut c_void` that returns the calling thread's [`SharedArea`] in the
/// object that defines it.
pub const SHARED_AREA_SYMBOL: &CStr = c"rseq_sys_shared_area_v1";

/// A thread's area as the copies of this crate share it, in the object that exports it (or in
/// each copy, for its own use where no object does).
///
/// The layout is the protocol's (named by [`SHARED_AREA_SYMBOL`]): the `struct rseq` with room
/// for fields future kernels add, then the count of users, as a `u32`.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SharedArea {
    area: UnsafeCell<[u8; OWN_AREA_SIZE]>,
    /// 0: not registered by any copy; [`REGISTERING`]: a copy is registering it now (so one
    /// interrupted by a signal handler that uses another copy is left alone); `n`: registered,
    /// and used by `n` thread blocks (copies of one link share a block, and count once).
    users: AtomicU32,
}
const _: () = assert!(core::mem::align_of::<SharedArea>() == OWN_AREA_ALIGN);
const _: () = assert!(core::mem::offset_of!(SharedArea, users) == OWN_AREA_SIZE);

/// [`SharedArea::users`] while a copy registers the area.
const REGISTERING: u32 = u32::MAX;

thread_local! {
    /// This copy's area: the one it exports, or the one it registers where nobody exports one.
    static OWN_AREA: SharedArea = const {
        SharedArea { area: UnsafeCell::new([0; OWN_AREA_SIZE]), users: AtomicU32::new(0) }
    };
}

/// The calling thread's area in this copy, as the exported symbol returns it. Not for direct
/// use: see [`export_shared_area!`](crate::export_shared_area).
#[doc(hidden)]
pub fn this_copys_area() -> *mut c_void {
    own_area().as_ptr().cast()
}

fn own_area() -> NonNull<SharedArea> {
    // A const-initialised thread-local without a destructor: `with` cannot fail.
    OWN_AREA.with(|a| NonNull::from(a))
}

/// Defines the symbol through which the other copies of rseq-sys in the process share this
/// object's rseq area where glibc registers none (see [`crate::shared`]).
///
/// Invoke it once, at the top level of a `cdylib` that stays loaded for the whole life of the
/// process (an `LD_PRELOAD` library, or one that programs link): the kernel writes the thread's
/// area, which lives in this object's thread-local storage, for as long as the thread runs.
/// Executables need not: they do not export symbols, and find an exporting library themselves.
#[macro_export]
macro_rules! export_shared_area {
    () => {
        /// This thread's rseq area, for the copies of rseq-sys in the process to share.
        #[unsafe(no_mangle)]
        pub extern "C" fn rseq_sys_shared_area_v1() -> *mut ::core::ffi::c_void {
            $crate::shared::this_copys_area()
        }
    };
}

/// The exported function, as a `usize` (0: no object exports one).
pub(crate) type Exporter = usize;

/// Looks up the exporting object's function.
#[cfg(not(all(target_env = "gnu", target_feature = "crt-static")))]
pub(crate) fn find_exporter() -> Exporter {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other preconditions.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, SHARED_AREA_SYMBOL.as_ptr()) as usize }
}

/// Statically linked: no other object to share with.
#[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
pub(crate) fn find_exporter() -> Exporter {
    0
}

/// The calling thread's shared area: the exporter's, else this copy's.
fn area_of(exporter: Exporter) -> NonNull<SharedArea> {
    let exported = match exporter {
        0 => ptr::null_mut(),
        f => {
            // SAFETY: `f` is the address of a function `export_shared_area!` defined with this
            // signature, in an object that stays loaded (its contract).
            let f = unsafe { core::mem::transmute::<usize, extern "C" fn() -> *mut c_void>(f) };
            f()
        }
    };
    NonNull::new(exported.cast()).unwrap_or_else(own_area)
}

/// The calling thread's registration where it is an area that some object exports (see the
/// module's documentation), as [`current_use`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedUse {
    /// The exporting object's path, as the dynamic loader names it.
    pub object: &'static CStr,
    /// How many copies of this crate use the area on this thread now (copies of one link share
    /// a thread block and count once).
    pub users: u32,
}

/// Whether the calling thread's registration (made on first use, as [`crate::current`] makes it)
/// is an area that some object in the process exports, and which one: `None` where the thread
/// uses glibc's area or has no rseq, and where this copy registered an area of its own because
/// nobody exports one.
pub fn current_use() -> Option<SharedUse> {
    let current = crate::current()?;
    let exporter = crate::registration::exporter();
    if current.owner() != crate::Owner::Own || exporter == 0 {
        return None;
    }
    let shared = area_of(exporter);
    if shared.cast::<Rseq>() != current.area() {
        return None;
    }
    // SAFETY: a live `SharedArea` of this thread whose count is only accessed atomically.
    let users = unsafe { &(*shared.as_ptr()).users }.load(Ordering::Relaxed);
    Some(SharedUse {
        object: object_of(exporter)?,
        users,
    })
}

/// The path of the object that defines the function at `exporter`.
#[cfg(not(all(target_env = "gnu", target_feature = "crt-static")))]
fn object_of(exporter: Exporter) -> Option<&'static CStr> {
    // SAFETY: `Dl_info` is plain data, valid zeroed.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the address; `info` is valid for writes.
    if unsafe { libc::dladdr(exporter as *const c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: the loader's NUL-terminated name of the object, which stays loaded for the life of
    // the process (`export_shared_area!`'s contract), and with it its name.
    Some(unsafe { CStr::from_ptr(info.dli_fname) })
}

/// Statically linked: nothing is exported (see [`find_exporter`]).
#[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
fn object_of(_: Exporter) -> Option<&'static CStr> {
    None
}

/// Why [`register`] did not register.
pub(crate) enum NotNow {
    /// Another copy is registering the area on this thread right now (this call interrupted it,
    /// from a signal handler): ask again later.
    Busy,
    /// The thread cannot have it.
    Unavailable(Unavailable),
}

/// Registers the thread's shared area with `len` bytes, or joins the registration another copy
/// made of it: the area.
pub(crate) fn register(exporter: Exporter, len: usize) -> Result<NonNull<Rseq>, NotNow> {
    let shared = area_of(exporter);
    // SAFETY: a live `SharedArea` of this thread (the exporter's or ours), whose count is only
    // accessed atomically and whose area only through raw pointers.
    let users = unsafe { &(*shared.as_ptr()).users };
    let area = shared.cast::<Rseq>();
    match users.load(Ordering::Relaxed) {
        REGISTERING => Err(NotNow::Busy),
        0 => {
            // Claimed with one atomic step, so that a signal handler on this thread using
            // another copy sees either nobody or the claim.
            if users
                .compare_exchange(0, REGISTERING, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                return Err(NotNow::Busy);
            }
            let result = register_fresh(area, len);
            users.store(u32::from(result.is_ok()), Ordering::Relaxed);
            result.map(|()| area).map_err(NotNow::Unavailable)
        }
        _ => {
            // Registered by another copy: the kernel confirms it is this area, length and
            // signature (`EBUSY`). Its fields are the kernel's now, so nothing is written. (0:
            // the registration was gone, unregistered outside this protocol, and is made again;
            // the kernel fills the fields before this thread runs on.)
            // SAFETY: the area is valid for `len` bytes and aligned for the thread's lifetime.
            let rc = unsafe {
                libc::syscall(abi::SYS_RSEQ, area.as_ptr(), len as u32, 0, abi::RSEQ_SIG)
            };
            match (rc, errno()) {
                (0, _) | (_, libc::EBUSY) => {}
                (_, e) => return Err(NotNow::Unavailable(Unavailable::Errno(e))),
            }
            users.fetch_add(1, Ordering::Relaxed);
            Ok(area)
        }
    }
}

/// Registers `area`, which no copy has registered, with `len` bytes.
fn register_fresh(area: NonNull<Rseq>, len: usize) -> Result<(), Unavailable> {
    let area = area.as_ptr();
    // SAFETY: the area is this thread's, alive as long as the thread, aligned and large enough
    // for `Rseq`, and not registered (no copy counts itself a user), so it is ours to write.
    // cpu_id starts at "uninitialised" so a silent no-op registration is detectable below.
    unsafe {
        ptr::write_bytes(area.cast::<u8>(), 0, OWN_AREA_SIZE);
        (*area).cpu_id = abi::RSEQ_CPU_ID_UNINITIALIZED as u32;
    }
    // SAFETY: the area is valid for `len` bytes and suitably aligned for the thread's lifetime
    // (thread-locals live until the thread exits, after which the kernel no longer writes it).
    let rc = unsafe { libc::syscall(abi::SYS_RSEQ, area, len as u32, 0, abi::RSEQ_SIG) };
    if rc != 0 {
        return Err(Unavailable::Errno(errno()));
    }
    // SAFETY: as above; the kernel has written cpu_id by the time the call returns.
    let cpu_id = unsafe { ptr::read_volatile(ptr::addr_of!((*area).cpu_id)) };
    if (cpu_id as i32) < 0 {
        // "Success" without effect: leave no half-registration behind. The result is ignored
        // because there is nothing better to do if this fails too.
        // SAFETY: as for the registration above.
        let _ = unsafe { unregister_syscall(area, len) };
        return Err(Unavailable::CpuIdNotSet);
    }
    Ok(())
}

/// Leaves the thread's registration of `area` (which [`register`] returned) with `len` bytes:
/// unregisters it if this copy was its last user, else only stops using it.
pub(crate) fn unregister(area: NonNull<Rseq>, len: usize) -> Result<(), UnregisterError> {
    // SAFETY: `register` returned `area` as the start of a live `SharedArea` of this thread.
    let users = unsafe { &(*area.cast::<SharedArea>().as_ptr()).users };
    // One user fewer where others remain; claimed as while registering where this copy is the
    // last, so that a signal handler's copy waits rather than joins what is about to go.
    let mut seen = users.load(Ordering::Relaxed);
    let leaving_last = loop {
        if seen == REGISTERING {
            // Another copy is in the middle of registering or leaving on this thread (this call
            // interrupted it): not now.
            return Err(UnregisterError::Errno(libc::EBUSY));
        }
        let last = seen < 2;
        let next = if last { REGISTERING } else { seen - 1 };
        match users.compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break last,
            Err(now) => seen = now,
        }
    };
    if !leaving_last {
        // What this copy leaves behind is its last sequence's descriptor in `rseq_cs` (user
        // space's field), which would point into unloaded code if this copy's object goes
        // away: cleared, outside any sequence.
        // SAFETY: the area is this thread's and registered; `rseq_cs` is ours to write between
        // sequences, and the kernel reads it only when this thread is interrupted.
        unsafe { ptr::write_volatile(ptr::addr_of_mut!((*area.as_ptr()).rseq_cs), 0) };
        return Ok(());
    }
    // SAFETY: the same area, length and signature as registered, as the kernel requires; the
    // area stays valid memory whatever the outcome.
    let rc = unsafe { unregister_syscall(area.as_ptr(), len) };
    if rc != 0 {
        let e = errno();
        users.store(seen, Ordering::Relaxed);
        return Err(UnregisterError::Errno(e));
    }
    users.store(0, Ordering::Relaxed);
    Ok(())
}

/// `rseq(area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG)`.
///
/// # Safety
/// `area` is valid memory for `len` bytes.
unsafe fn unregister_syscall(area: *mut Rseq, len: usize) -> libc::c_long {
    // SAFETY: the caller's contract; the kernel checks the rest.
    unsafe {
        libc::syscall(
            abi::SYS_RSEQ,
            area,
            len as u32,
            abi::RSEQ_FLAG_UNREGISTER,
            abi::RSEQ_SIG,
        )
    }
}
