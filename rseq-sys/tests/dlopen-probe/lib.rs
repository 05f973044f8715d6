//! What `tests/dlopen.rs` loads: rseq-sys in a shared object, next to thread-local data aligned
//! beyond 64 bytes, which glibc's static TLS cannot place. It also offers its rseq area to the
//! other copies of rseq-sys in the process, as a preloaded library would (`tests/dlopen.rs`
//! also preloads it).

use std::cell::Cell;

/// 4 KiB aligned to 128 (the alignment of `crossbeam_utils::CachePadded`).
#[repr(C, align(128))]
struct Scratch([Cell<u8>; 4096]);

thread_local! {
    static SCRATCH: Scratch = const { Scratch([const { Cell::new(0) }; 4096]) };
}

/// What this object's copy of rseq-sys sees of the calling thread, written to `out`:
/// `current()`'s area and kernel size, `current_if_registered()`'s area and kernel size (both
/// areas 0 without rseq), and the address of this thread's `SCRATCH`.
///
/// # Safety
/// `out` is valid for writes of five `usize`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rseq_sys_probe(out: *mut usize) {
    let area = |c: Option<rseq_sys::Current>| c.map_or(0, |c| c.area().as_ptr() as usize);
    let size = |c: Option<rseq_sys::Current>| c.map_or(0, |c| c.kernel_size() as usize);
    let registered = rseq_sys::current();
    let fast = rseq_sys::current_if_registered();
    let scratch = SCRATCH.with(|s| {
        s.0[4095].set(s.0[4095].get().wrapping_add(1));
        s as *const Scratch as usize
    });
    let report = [area(registered), size(registered), area(fast), size(fast), scratch];
    // SAFETY: the caller's contract.
    unsafe { out.copy_from_nonoverlapping(report.as_ptr(), report.len()) };
}

rseq_sys::export_shared_area!();

/// This object's copy gives up the calling thread's registration: 0, or the errno it was refused
/// with (-1: not registered, -2: glibc's).
#[unsafe(no_mangle)]
pub extern "C" fn rseq_sys_probe_unregister() -> i32 {
    match rseq_sys::unregister_current_thread() {
        Ok(()) => 0,
        Err(rseq_sys::UnregisterError::Errno(e)) => e,
        Err(rseq_sys::UnregisterError::NotRegistered) => -1,
        Err(rseq_sys::UnregisterError::OwnedByGlibc) => -2,
    }
}
