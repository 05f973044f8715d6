//! Which path the current thread takes: rseq sequences or the atomic fallback.
//!
//! Chosen per thread and per call, from the thread's registration: a process whose threads differ
//! (one under a seccomp filter, say) uses both paths at once, and the structures keep the two
//! apart so both stay exact.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use rseq_sys::{Index, Memo, NoMemo, Sequences, Unavailable};

/// The path the current thread's per-CPU operations take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// rseq commit sequences on per-CPU slots chosen by `index`.
    Rseq {
        /// cpu_id, or mm_cid when the kernel fills it.
        index: Index,
    },
    /// Relaxed atomics on shards of their own.
    Fallback(FallbackReason),
}

/// Why a thread takes the atomic fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// `PERCPU_FORCE_FALLBACK=1` is set for the process.
    Forced,
    /// The thread has no rseq registration.
    NoRseq(Option<Unavailable>),
    /// This architecture has no commit sequences.
    NoSequences,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Rseq { index } => write!(f, "rseq ({})", index.as_str()),
            Mode::Fallback(FallbackReason::Forced) => {
                f.write_str("atomic fallback (PERCPU_FORCE_FALLBACK=1)")
            }
            Mode::Fallback(FallbackReason::NoRseq(Some(why))) => {
                write!(f, "atomic fallback (no rseq: {why})")
            }
            Mode::Fallback(FallbackReason::NoRseq(None)) => {
                f.write_str("atomic fallback (no rseq)")
            }
            Mode::Fallback(FallbackReason::NoSequences) => {
                f.write_str("atomic fallback (no sequences for this architecture)")
            }
        }
    }
}

/// The current thread's [`Mode`].
pub fn mode() -> Mode {
    if forced_fallback() {
        return Mode::Fallback(FallbackReason::Forced);
    }
    match rseq_sys::current() {
        None => Mode::Fallback(FallbackReason::NoRseq(rseq_sys::status().reason)),
        Some(current) => match current.sequences() {
            None => Mode::Fallback(FallbackReason::NoSequences),
            Some(_) => Mode::Rseq {
                index: current.best_index(),
            },
        },
    }
}

/// The sequences and index for the current thread, or `None` when it has no rseq or no
/// sequences. `PERCPU_FORCE_FALLBACK` is the caller's to honour: structures fold it into a check
/// they make anyway (see `RawCounters::rseq_cpus`), keeping the fast path a TLS load and a test.
#[inline(always)]
pub(crate) fn rseq_path() -> Option<(Sequences, Index)> {
    let current = rseq_sys::current()?;
    Some((current.sequences()?, current.best_index()))
}

/// [`rseq_path`] for a thread already registered (`None` otherwise, with nothing done): for fast
/// attempts whose slow path calls [`rseq_path`].
#[inline(always)]
pub(crate) fn rseq_path_if_registered() -> Option<(Sequences, Index)> {
    let current = rseq_sys::current_if_registered()?;
    Some((current.sequences()?, current.best_index()))
}

/// [`rseq_path_if_registered`] with the memo the thread keeps for raw tag `tag` (see
/// [`rseq_sys::memo`]), or why there is none (a thread with a memo always has sequences: it
/// was written with them).
#[inline(always)]
pub(crate) fn rseq_path_remembered(tag: u32) -> Result<(Sequences, Index, Memo), NoMemo> {
    let (current, memo) = rseq_sys::current_with_memo(tag)?;
    match current.sequences() {
        Some(seq) => Ok((seq, current.best_index(), memo)),
        None => Err(NoMemo::Unregistered),
    }
}

const FORCE_UNKNOWN: u8 = 0;
const FORCE_OFF: u8 = 1;
const FORCE_ON: u8 = 2;
static FORCE: AtomicU8 = AtomicU8::new(FORCE_UNKNOWN);

/// Whether `PERCPU_FORCE_FALLBACK=1` is set, read once per process without allocating (so it is
/// safe inside a global allocator).
#[inline(always)]
pub fn forced_fallback() -> bool {
    match FORCE.load(Ordering::Relaxed) {
        FORCE_OFF => false,
        FORCE_ON => true,
        _ => read_force_fallback(),
    }
}

#[cold]
fn read_force_fallback() -> bool {
    // SAFETY: getenv with a NUL-terminated name; the result is read before any other call.
    let value = unsafe { libc::getenv(c"PERCPU_FORCE_FALLBACK".as_ptr()) };
    let on = !value.is_null() && {
        // SAFETY: getenv returns a NUL-terminated string.
        let value = unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes();
        value == b"1"
    };
    FORCE.store(if on { FORCE_ON } else { FORCE_OFF }, Ordering::Relaxed);
    on
}
