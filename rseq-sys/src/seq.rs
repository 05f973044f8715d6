//! Commit sequences: the architecture-independent interface.
//!
//! Every sequence has the same shape. It publishes its descriptor in `rseq->rseq_cs`, checks that
//! the thread still has the index (CPU or mm_cid) the caller computed its pointers from, does its
//! loads and compares, and ends with one store, the commit. If the thread is preempted, migrated
//! or signalled before the commit, the kernel moves it to the abort handler and nothing was
//! stored except, for [`Sequences::compare_store_store`], the speculative store the caller allows.
//!
//! The index is compared *inside* the sequence, reading the same field the caller indexed with:
//! with mm_cid indexing two threads can share a CPU number but never an mm_cid, and vice versa.
//!
//! Each function is `unsafe` because its pointers must be valid, and because its per-index data
//! must only ever be written by sequences on that index: a commit is a plain store, so a
//! concurrent atomic write from elsewhere would be lost.

use core::marker::PhantomData;

use crate::abi;
use crate::arch;
use crate::registration::Current;

/// The bit of an array stack's count word that locks it against [`Sequences::stack_push`] and
/// [`Sequences::stack_pop`].
///
/// # The count word
/// An array stack's count is one word: bits 0–14 the depth, bit 15 the lock, bits 16–63 the
/// number of pops so far (modulo 2^48). Each pop adds `0x10000 - 1`, so it takes one item and
/// counts it in the same commit: per-CPU pop counts, exact, for no extra sequence. A word of
/// depth `n` with nothing else set is just `n`.
pub const STACK_LOCKED: usize = 1 << 15;
/// The depth bits of an array stack's count word.
pub const STACK_DEPTH_MASK: usize = STACK_LOCKED - 1;
/// Where the pop count starts in an array stack's count word.
pub const STACK_POPS_SHIFT: u32 = 16;
/// The largest capacity an array stack may have.
pub const STACK_MAX_CAPACITY: usize = STACK_DEPTH_MASK;

/// Which `struct rseq` field indexes per-CPU data.
///
/// Each variant's value is its field's byte offset, so finding the field is one add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Index {
    /// `cpu_id`: one slot per possible CPU.
    CpuId = abi::CPU_ID_OFFSET as u8,
    /// `mm_cid`: compact ids `< min(threads, CPUs)`, so a process with few threads touches few
    /// slots (needs `kernel_size >= 28`).
    MmCid = abi::MM_CID_OFFSET as u8,
}

impl Index {
    /// mm_cid when the kernel fills it for this thread, else cpu_id.
    #[inline]
    pub fn best(kernel_size: u32) -> Index {
        if kernel_size >= abi::MM_CID_END {
            Index::MmCid
        } else {
            Index::CpuId
        }
    }

    /// Byte offset of the field in `struct rseq`.
    #[inline]
    pub const fn field_offset(self) -> usize {
        self as usize
    }

    /// `"cpu_id"` or `"mm_cid"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Index::CpuId => "cpu_id",
            Index::MmCid => "mm_cid",
        }
    }
}

/// How a sequence ended.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T = ()> {
    /// The commit store happened; carries the sequence's result.
    Committed(T),
    /// The sequence's own comparison failed (value differs, list or stack empty, stack full).
    /// Nothing was stored.
    CompareFailed,
    /// Preempted, migrated or signalled, or the index no longer matched. Nothing was committed:
    /// read the index again and retry.
    Aborted,
}

/// Raw result codes shared with the architecture modules.
pub(crate) const COMMITTED: u32 = 0;
pub(crate) const COMPARE_FAILED: u32 = 1;
pub(crate) const ABORTED: u32 = 2;

impl<T> Outcome<T> {
    #[inline(always)]
    pub(crate) fn from_code(code: u32, value: T) -> Outcome<T> {
        match code {
            COMMITTED => Outcome::Committed(value),
            COMPARE_FAILED => Outcome::CompareFailed,
            code => {
                debug_assert_eq!(code, ABORTED, "unknown sequence result code");
                Outcome::Aborted
            }
        }
    }
}

/// The commit sequences of the current thread's registration.
///
/// Obtained from [`Current::sequences`]; only exists on architectures that have sequences.
/// `expected` is always the value of the `index` field the caller read (see [`Current::index`])
/// to compute its pointers.
#[derive(Clone, Copy, Debug)]
pub struct Sequences {
    current: Current,
    _arch: arch::Token,
    _not_send: PhantomData<*mut ()>,
}

impl Sequences {
    #[inline]
    pub(crate) fn new(current: Current) -> Option<Sequences> {
        Some(Sequences {
            current,
            _arch: arch::Token::new()?,
            _not_send: PhantomData,
        })
    }

    /// The registration these sequences run on.
    #[inline]
    pub fn current(self) -> Current {
        self.current
    }

    #[inline(always)]
    fn area(self) -> *mut abi::Rseq {
        self.current.area().as_ptr()
    }

    #[inline(always)]
    fn field(self, index: Index) -> *const u32 {
        self.current.index_field(index)
    }

    /// `*slot += value` on the current index.
    ///
    /// # Safety
    /// `slot` is valid, aligned, and written only by sequences running on index `expected`.
    #[inline(always)]
    pub unsafe fn add(self, index: Index, expected: u32, slot: *mut i64, value: i64) -> Outcome {
        // SAFETY: forwarded contract; the area and field belong to this thread's registration.
        let code = unsafe {
            arch::add(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                slot,
                value,
            )
        };
        Outcome::from_code(code, ())
    }

    /// `if *ptr == expect { *ptr = new }` on the current index.
    ///
    /// # Safety
    /// As for [`Self::add`], for `ptr`.
    #[inline(always)]
    pub unsafe fn compare_store(
        self,
        index: Index,
        expected: u32,
        ptr: *mut usize,
        expect: usize,
        new: usize,
    ) -> Outcome {
        // SAFETY: forwarded contract.
        let code = unsafe {
            arch::compare_store(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                ptr,
                expect,
                new,
            )
        };
        Outcome::from_code(code, ())
    }

    /// Linked-list pop: `let h = *head; if h == sentinel { fail }; *head = *(h + next_offset)`,
    /// returning `h`.
    ///
    /// # Safety
    /// As for [`Self::add`], for `head`; every node reachable from `head` is valid and holds its
    /// successor at `next_offset`, and nodes are not freed while they may still be on the list.
    #[inline(always)]
    pub unsafe fn list_pop(
        self,
        index: Index,
        expected: u32,
        head: *mut usize,
        sentinel: usize,
        next_offset: usize,
    ) -> Outcome<usize> {
        // SAFETY: forwarded contract.
        let (code, popped) = unsafe {
            arch::list_pop(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                head,
                sentinel,
                next_offset,
            )
        };
        Outcome::from_code(code, popped)
    }

    /// `if *ptr == expect { *spec = spec_value; *ptr = new }`: the speculative store may happen
    /// without the commit (then it must be harmless), the commit never without it.
    ///
    /// # Safety
    /// As for [`Self::add`], for `ptr`; `spec` is valid and writable by this thread.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn compare_store_store(
        self,
        index: Index,
        expected: u32,
        ptr: *mut usize,
        expect: usize,
        spec: *mut usize,
        spec_value: usize,
        new: usize,
    ) -> Outcome {
        // SAFETY: forwarded contract.
        let code = unsafe {
            arch::compare_store_store(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                ptr,
                expect,
                spec,
                spec_value,
                new,
            )
        };
        Outcome::from_code(code, ())
    }

    /// Array-stack push: `if depth < cap { slots[depth] = value; depth += 1 }`, where `depth`
    /// is `*count`'s depth bits ([`Outcome::CompareFailed`] when full). `cap` is at most
    /// [`STACK_MAX_CAPACITY`]; see [`STACK_LOCKED`] for the count word.
    ///
    /// A count with its lock bit set ([`STACK_LOCKED`]) reads as full here and as empty in
    /// [`Self::stack_pop`], so another thread can take a stack away from the sequences: set the
    /// bit atomically, fence with [`crate::fence_all_cpus`], check the bit survived (a sequence
    /// may have committed over it before the fence), and the stack is its own until it stores a
    /// new count.
    ///
    /// # Safety
    /// As for [`Self::add`], for `count` and `slots[..cap]`.
    #[inline(always)]
    pub unsafe fn stack_push(
        self,
        index: Index,
        expected: u32,
        count: *mut usize,
        slots: *mut usize,
        cap: usize,
        value: usize,
    ) -> Outcome {
        debug_assert!(cap <= STACK_MAX_CAPACITY);
        // SAFETY: forwarded contract.
        let code = unsafe {
            arch::stack_push(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                count,
                slots,
                cap,
                value,
            )
        };
        Outcome::from_code(code, ())
    }

    /// [`Self::stack_push`] for a stack whose capacity is the word after its count word (its
    /// limit), read inside the sequence: `if depth < count[1] { slots[depth] = value; depth += 1
    /// }`. One instruction and one register fewer than loading the limit for `stack_push`, and
    /// the push sees a limit changed up to the moment it starts. Whoever changes the limit
    /// stores the word whole (as an atomic store does), so the sequence reads one value.
    ///
    /// # Safety
    /// As for [`Self::add`], for `count`, and for `slots[..limit]`, where `limit` is any value
    /// `count.add(1)` (aligned, readable) holds while the sequence may run, at most
    /// [`STACK_MAX_CAPACITY`].
    #[inline(always)]
    pub unsafe fn stack_push_limited(
        self,
        index: Index,
        expected: u32,
        count: *mut usize,
        slots: *mut usize,
        value: usize,
    ) -> Outcome {
        // SAFETY: forwarded contract.
        let code = unsafe {
            arch::stack_push_limited(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                count,
                slots,
                value,
            )
        };
        Outcome::from_code(code, ())
    }

    /// Array-stack pop: `if depth > 0 { depth -= 1; pops += 1; return slots[depth] }` in
    /// `*count`'s word ([`Outcome::CompareFailed`] when empty or locked, see
    /// [`Self::stack_push`]).
    ///
    /// # Safety
    /// As for [`Self::add`], for `count` and `slots[..*count]`.
    #[inline(always)]
    pub unsafe fn stack_pop(
        self,
        index: Index,
        expected: u32,
        count: *mut usize,
        slots: *const usize,
    ) -> Outcome<usize> {
        // SAFETY: forwarded contract.
        let (code, popped) = unsafe {
            arch::stack_pop(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                count,
                slots,
            )
        };
        Outcome::from_code(code, popped)
    }

    /// [`Self::stack_pop`] reporting only its value: the popped value, or 0 when it did not
    /// commit (empty, locked or aborted). For stacks of non-zero values whose callers start over
    /// on any failure: without a result code to set and test, a fast path is a few instructions
    /// shorter.
    ///
    /// # Safety
    /// As for [`Self::stack_pop`].
    #[inline(always)]
    pub unsafe fn stack_try_pop(
        self,
        index: Index,
        expected: u32,
        count: *mut usize,
        slots: *const usize,
    ) -> usize {
        // SAFETY: forwarded contract.
        unsafe {
            arch::stack_try_pop(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                count,
                slots,
            )
        }
    }

    /// Array-stack push of several items in one commit: as many of `items` as fit (at least
    /// one), pushed in order, so the last of them ends on top, exactly as that many
    /// [`Self::stack_push`]es would leave the stack. [`Outcome::CompareFailed`] when the stack
    /// is full or locked (see [`Self::stack_push`]); `Committed(0)` for no items.
    ///
    /// The copies run inside the critical section, so a long batch is more likely to be aborted
    /// (by preemption or a signal) than a single push; an aborted push stored nothing.
    ///
    /// # Safety
    /// As for [`Self::stack_push`].
    #[inline(always)]
    pub unsafe fn stack_push_many(
        self,
        index: Index,
        expected: u32,
        count: *mut usize,
        slots: *mut usize,
        cap: usize,
        items: &[usize],
    ) -> Outcome<usize> {
        debug_assert!(cap <= STACK_MAX_CAPACITY);
        if items.is_empty() {
            return Outcome::Committed(0);
        }
        // SAFETY: forwarded contract; `items` is a non-empty readable slice.
        let (code, pushed) = unsafe {
            arch::stack_push_many(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                count,
                slots,
                cap,
                items.as_ptr(),
                items.len(),
            )
        };
        Outcome::from_code(code, pushed)
    }

    /// Array-stack pop of several items in one commit: up to `out.len()` of them (at least
    /// one), written to the front of `out` in the order that many [`Self::stack_pop`]s would
    /// return them (the top first), each counted as a pop. [`Outcome::CompareFailed`] when the
    /// stack is empty or locked; `Committed(0)` for an empty `out`. The rest of `out`, and all
    /// of it when the sequence does not commit, holds nothing meaningful.
    ///
    /// # Safety
    /// As for [`Self::stack_pop`].
    #[inline(always)]
    pub unsafe fn stack_pop_many(
        self,
        index: Index,
        expected: u32,
        count: *mut usize,
        slots: *const usize,
        out: &mut [usize],
    ) -> Outcome<usize> {
        if out.is_empty() {
            return Outcome::Committed(0);
        }
        // SAFETY: forwarded contract; `out` is a non-empty writable slice.
        let (code, popped) = unsafe {
            arch::stack_pop_many(
                self._arch,
                self.area(),
                self.field(index),
                expected,
                count,
                slots,
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Outcome::from_code(code, popped)
    }
}
