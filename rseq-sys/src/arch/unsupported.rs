//! Architectures without commit sequences: registration and CPU ids still work, but
//! [`crate::Current::sequences`] is always `None`, so callers take their atomic fallback.
//!
//! The sequence functions exist so the interface is the same everywhere; they take a [`Token`],
//! which is uninhabited here, so none of them can ever be called.

/// Uninhabited: no value proves this architecture has sequences.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Token {}

impl Token {
    #[inline(always)]
    pub(crate) fn new() -> Option<Token> {
        None
    }
}

/// Whether this architecture has commit sequences.
pub const HAS_SEQUENCES: bool = false;

/// No portable way to read the thread pointer: glibc's area cannot be located.
#[inline(always)]
pub(crate) fn thread_pointer() -> Option<*mut u8> {
    None
}

macro_rules! unreachable_sequences {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        /// Never callable: see the module docs.
        ///
        /// # Safety
        /// Cannot be called (requires an uninhabited [`Token`]).
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $name(token: Token, $(_: $ty),*) -> $ret {
            match token {}
        }
    )*};
}

unreachable_sequences! {
    add(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, slot: *mut i64, value: i64) -> u32;
    compare_store(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, ptr: *mut usize, expect: usize, new: usize) -> u32;
    list_pop(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, head: *mut usize, sentinel: usize, next_offset: usize) -> (u32, usize);
    compare_store_store(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, ptr: *mut usize, expect: usize, spec: *mut usize, spec_value: usize, new: usize) -> u32;
    stack_push(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, count: *mut usize, slots: *mut usize, cap: usize, value: usize) -> u32;
    stack_push_limited(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, count: *mut usize, slots: *mut usize, value: usize) -> u32;
    stack_pop(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, count: *mut usize, slots: *const usize) -> (u32, usize);
    stack_try_pop(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, count: *mut usize, slots: *const usize) -> usize;
    stack_push_many(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, count: *mut usize, slots: *mut usize, cap: usize, items: *const usize, n: usize) -> (u32, usize);
    stack_pop_many(area: *mut crate::abi::Rseq, id: *const u32, expected: u32, count: *mut usize, slots: *const usize, out: *mut usize, n: usize) -> (u32, usize);
}
