//! x86_64 commit sequences.
//!
//! Every sequence is one `asm!` block built by [`rseq_sequence!`]:
//!
//! ```text
//!   __rseq_cs:            3: descriptor {0, 0, 4f, 5f - 4f, 6f}  (32-byte aligned)
//!   __rseq_cs_ptr_array:  &3b                                    (for tools)
//!   text:                 rseq->rseq_cs = &3b
//!                       4: if *id != expected goto 6f            (migrated: abort)
//!                          body ... (a failed compare jumps to 8f, recorded as an exit point)
//!                          commit store
//!                       5: (committed)
//!                       7:
//!   __rseq_failure:       8: compare failed
//!                          ud1 with the signature as its operand
//!                       6: aborted
//! ```
//!
//! The exits come in three kinds, one per kind of caller:
//! - **Labels** (`asm goto`), for sequences that return no value: `8:` and `6:` jump straight to
//!   the caller's code for that outcome (a `label` operand), and the committed path simply runs
//!   off the end of the block. No result register is set or tested, which the fast paths of the
//!   allocator feel.
//! - **Codes**, for sequences that return a value (stable `asm goto` takes no outputs): `{res}`
//!   is set to COMMITTED at `5:`, COMPARE_FAILED at `8:` or ABORTED at `6:`, and the failure
//!   exits jump back to `7:`.
//! - **Zero**, for a pop whose caller only needs its value: both failures zero `{popped}` (items
//!   are never 0) and jump back to `7:`.
//!
//! Only numeric local labels are used, so the block can be inlined and duplicated freely; 0 and 1
//! are avoided because `0b`/`1b` read as binary literals in Intel syntax. Both failure exits live
//! out of line in `__rseq_failure`, so a committing sequence runs straight through with no jump
//! at all. The abort handler's signature is encoded as the operand of `ud1`, a defined trap, so
//! stray execution cannot run through it.
//!
//! Options: the blocks read and write memory the compiler cannot see (the rseq area and the
//! per-CPU data), so none is `nomem`/`readonly`; they compare, so none preserves flags; they never
//! touch the stack, so all are `nostack`. Temporaries are plain `out` operands, never `lateout`,
//! because they are written before the inputs are last read.

// Each asm operand is an argument: the wrappers are as wide as their sequences.
#![allow(clippy::too_many_arguments)]

use core::arch::asm;

use crate::seq::{ABORTED, COMMITTED, COMPARE_FAILED};

/// Proof that this architecture has sequences (inhabited here).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token(());

impl Token {
    #[inline(always)]
    pub(crate) fn new() -> Option<Token> {
        Some(Token(()))
    }
}

/// Whether this architecture has commit sequences.
pub const HAS_SEQUENCES: bool = true;

/// The thread pointer (glibc's TCB, whose first word points to itself).
#[inline(always)]
pub(crate) fn thread_pointer() -> Option<*mut u8> {
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux `fs:0` is the TCB's self-pointer, always mapped for a running
    // thread. A pure load that touches no Rust-visible memory and no flags.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags, pure));
    }
    Some(tp)
}

/// Builds a sequence's template around its body: `compare` records `8:` as an exit point (for
/// sequences whose compare can fail), and the exits are codes (the default), `goto` labels or
/// `zero` (see the module docs).
macro_rules! rseq_sequence {
    (@template signature = $sig:literal, exit_point = $exit:expr, body = [$($body:literal),* $(,)?],
     committed = $committed:literal, compare_failed = $compare_failed:literal,
     aborted = $aborted:literal) => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "3:\n",
            ".long 0, 0\n",
            ".quad 4f, 5f - 4f, 6f\n",
            ".popsection\n",
            ".pushsection __rseq_cs_ptr_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 3b\n",
            ".popsection\n",
            $exit,
            "lea {tmp}, [rip + 3b]\n",
            "mov qword ptr [{area} + 8], {tmp}\n",
            "4:\n",
            "cmp dword ptr [{id}], {expected:e}\n",
            "jne 6f\n",
            $($body, "\n",)*
            "5:\n",
            $committed,
            "7:\n",
            ".pushsection __rseq_failure, \"ax\"\n",
            "8:\n",
            $compare_failed,
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long ", $sig, "\n",
            "6:\n",
            $aborted,
            ".popsection\n",
        )
    };
    (@exit_point) => {
        ".pushsection __rseq_exit_point_array, \"awR\"\n.balign 8\n.quad 4f, 8f\n.popsection\n"
    };
    // Tests only: a sequence with another signature, which the kernel must refuse.
    (signature = $sig:literal, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = $sig, exit_point = "", body = [$($body),*],
            committed = "xor {res:e}, {res:e}\n",
            compare_failed = "mov {res:e}, 1\njmp 7b\n",
            aborted = "mov {res:e}, 2\njmp 7b\n")
    };
    (body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0x53053053", exit_point = "", body = [$($body),*],
            committed = "xor {res:e}, {res:e}\n",
            compare_failed = "mov {res:e}, 1\njmp 7b\n",
            aborted = "mov {res:e}, 2\njmp 7b\n")
    };
    (compare, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0x53053053", exit_point = rseq_sequence!(@exit_point), body = [$($body),*],
            committed = "xor {res:e}, {res:e}\n",
            compare_failed = "mov {res:e}, 1\njmp 7b\n",
            aborted = "mov {res:e}, 2\njmp 7b\n")
    };
    (goto, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0x53053053", exit_point = "", body = [$($body),*],
            committed = "", compare_failed = "", aborted = "jmp {aborted}\n")
    };
    (goto, compare, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0x53053053", exit_point = rseq_sequence!(@exit_point), body = [$($body),*],
            committed = "", compare_failed = "jmp {compare_failed}\n", aborted = "jmp {aborted}\n")
    };
    (zero, compare, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0x53053053", exit_point = rseq_sequence!(@exit_point), body = [$($body),*],
            committed = "",
            compare_failed = "xor {popped:e}, {popped:e}\njmp 7b\n",
            aborted = "xor {popped:e}, {popped:e}\njmp 7b\n")
    };
}

const _: () = {
    assert!(crate::abi::RSEQ_SIG == 0x5305_3053);
    assert!(COMMITTED == 0 && COMPARE_FAILED == 1 && ABORTED == 2);
    assert!(
        crate::abi::CPU_ID_OFFSET == 4 && core::mem::offset_of!(crate::abi::Rseq, rseq_cs) == 8
    );
};

/// # Safety
/// `area` is the current thread's registered area, `id` a u32 field in it; `slot` is valid and
/// written only by sequences on index `expected`.
#[inline(always)]
pub(crate) unsafe fn add(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    slot: *mut i64,
    value: i64,
) -> u32 {
    // SAFETY: caller's contract; the block only writes `rseq_cs` and `*slot` (the commit, one
    // `add` instruction, so it is either wholly done or not at all).
    unsafe {
        asm!(
            rseq_sequence!(goto, body = ["add qword ptr [{slot}], {value}"]),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            slot = in(reg) slot,
            value = in(reg) value,
            tmp = out(reg) _,
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// # Safety
/// As for [`add`], for `ptr`.
#[inline(always)]
pub(crate) unsafe fn compare_store(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    ptr: *mut usize,
    expect: usize,
    new: usize,
) -> u32 {
    // SAFETY: caller's contract; the only stores are `rseq_cs` and the commit to `*ptr`.
    unsafe {
        asm!(
            rseq_sequence!(goto, compare, body = [
                "cmp qword ptr [{ptr}], {expect}",
                "jne 8f",
                "mov qword ptr [{ptr}], {new}",
            ]),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            ptr = in(reg) ptr,
            expect = in(reg) expect,
            new = in(reg) new,
            tmp = out(reg) _,
            compare_failed = label { return COMPARE_FAILED },
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// # Safety
/// As for [`add`], for `head`; nodes reachable from it are valid with their link at `next_offset`.
#[inline(always)]
pub(crate) unsafe fn list_pop(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    head: *mut usize,
    sentinel: usize,
    next_offset: usize,
) -> (u32, usize) {
    let res: u32;
    let popped: usize;
    // SAFETY: caller's contract; `tmp` is reused for the successor once the descriptor is armed.
    unsafe {
        asm!(
            rseq_sequence!(compare, body = [
                "mov {popped}, qword ptr [{head}]",
                "cmp {popped}, {sentinel}",
                "je 8f",
                "mov {tmp}, qword ptr [{popped} + {next_offset}]",
                "mov qword ptr [{head}], {tmp}",
            ]),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            head = in(reg) head,
            sentinel = in(reg) sentinel,
            next_offset = in(reg) next_offset,
            popped = out(reg) popped,
            tmp = out(reg) _,
            res = out(reg) res,
            options(nostack),
        );
    }
    (res, popped)
}

/// # Safety
/// As for [`add`], for `ptr`; `spec` is valid and writable.
#[inline(always)]
pub(crate) unsafe fn compare_store_store(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    ptr: *mut usize,
    expect: usize,
    spec: *mut usize,
    spec_value: usize,
    new: usize,
) -> u32 {
    // SAFETY: caller's contract; stores are `rseq_cs`, the speculative `*spec`, the commit `*ptr`.
    unsafe {
        asm!(
            rseq_sequence!(goto, compare, body = [
                "cmp qword ptr [{ptr}], {expect}",
                "jne 8f",
                "mov qword ptr [{spec}], {spec_value}",
                "mov qword ptr [{ptr}], {new}",
            ]),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            ptr = in(reg) ptr,
            expect = in(reg) expect,
            spec = in(reg) spec,
            spec_value = in(reg) spec_value,
            new = in(reg) new,
            tmp = out(reg) _,
            compare_failed = label { return COMPARE_FAILED },
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// The push shared by [`stack_push`] and [`stack_push_limited`], which compare the depth with
/// the capacity `$compare` names.
///
/// The depth is the word's low 16 bits sign-extended (loaded so: `{tmp}` is the descriptor's
/// address until then): a locked word (bit 15) is negative, which the unsigned compare reads as
/// full. The commit adds to the word in memory, one instruction (see `COUNT_COMMITS`).
macro_rules! stack_push_sequence {
    ($compare:literal) => {
        rseq_sequence!(
            goto,
            compare,
            body = [
                "movsx {tmp}, word ptr [{count}]",
                $compare,
                "jae 8f",
                "mov qword ptr [{slots} + {tmp} * 8], {value}",
                "add qword ptr [{count}], 1",
            ]
        )
    };
}

/// # Safety
/// As for [`add`], for `count` and `slots[..cap]`.
#[inline(always)]
pub(crate) unsafe fn stack_push(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    count: *mut usize,
    slots: *mut usize,
    cap: usize,
    value: usize,
) -> u32 {
    // SAFETY: caller's contract; the slot store is speculative (invisible until `count` grows),
    // the `count` update commits.
    unsafe {
        asm!(
            stack_push_sequence!("cmp {tmp}, {cap}"),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = in(reg) slots,
            cap = in(reg) cap,
            value = in(reg) value,
            tmp = out(reg) _,
            compare_failed = label { return COMPARE_FAILED },
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// [`stack_push`] with the capacity read from the word after `count`, inside the sequence: a
/// compare with memory, where loading it first takes an instruction and a register.
///
/// # Safety
/// As for [`add`], for `count`, `count.add(1)` and `slots[..*count.add(1)]`.
#[inline(always)]
pub(crate) unsafe fn stack_push_limited(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    count: *mut usize,
    slots: *mut usize,
    value: usize,
) -> u32 {
    // SAFETY: caller's contract; as in `stack_push`.
    unsafe {
        asm!(
            stack_push_sequence!("cmp {tmp}, qword ptr [{count} + 8]"),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = in(reg) slots,
            value = in(reg) value,
            tmp = out(reg) _,
            compare_failed = label { return COMPARE_FAILED },
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// The pop shared by [`stack_pop`] (code exits) and [`stack_try_pop`] (`zero` exits).
///
/// The depth is loaded sign-extended into `{tmp}` (the descriptor's address until then): empty
/// (0) or locked (negative) fails the signed test. Adding 0xffff to the word in memory, the
/// commit, takes one from the depth (at least 1: no borrow) and adds one to the pops (see
/// `COUNT_COMMITS`).
macro_rules! stack_pop_sequence {
    ($($exits:ident)?) => {
        rseq_sequence!($($exits,)? compare, body = [
            "movsx {tmp}, word ptr [{count}]",
            "test {tmp}, {tmp}",
            "jle 8f",
            "mov {popped}, qword ptr [{slots} + {tmp} * 8 - 8]",
            "add qword ptr [{count}], 0xffff",
        ])
    };
}

// COUNT_COMMITS: `stack_push` and the pops commit by adding to the count word in memory, one
// instruction (as `add` commits), rather than storing the word they read plus the change: that
// saves a register and two instructions on the allocator's fast paths. The two are the same
// inside a sequence: nothing on this CPU writes the word without aborting the sequence, and
// another CPU writes it only after locking it and fencing every CPU (a drain, which reads the
// word again after its fence), so between the sequence's read and its commit the word changes,
// if at all, by a lock bit set from another CPU. The add keeps that bit, where a store would
// lose it (and the drain would lock again): the item pushed or popped is then in the word the
// drain reads.

/// # Safety
/// As for [`add`], for `count` and `slots[..*count]`.
#[inline(always)]
pub(crate) unsafe fn stack_pop(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    count: *mut usize,
    slots: *const usize,
) -> (u32, usize) {
    let res: u32;
    let popped: usize;
    // SAFETY: caller's contract; the only stores are `rseq_cs` and the commit to `*count`.
    unsafe {
        asm!(
            stack_pop_sequence!(),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = in(reg) slots,
            popped = out(reg) popped,
            tmp = out(reg) _,
            res = out(reg) res,
            options(nostack),
        );
    }
    (res, popped)
}

/// [`stack_pop`] with the zero exits: the popped value, or 0 if it did not commit.
///
/// # Safety
/// As for [`stack_pop`].
#[inline(always)]
pub(crate) unsafe fn stack_try_pop(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    count: *mut usize,
    slots: *const usize,
) -> usize {
    let popped: usize;
    // SAFETY: caller's contract; the only stores are `rseq_cs` and the commit to `*count`.
    unsafe {
        asm!(
            stack_pop_sequence!(zero),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = in(reg) slots,
            popped = out(reg) popped,
            tmp = out(reg) _,
            options(nostack),
        );
    }
    popped
}

/// # Safety
/// As for [`add`], for `count` and `slots[..cap]`; `items[..n]` is readable and `n >= 1`.
#[inline(always)]
pub(crate) unsafe fn stack_push_many(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    count: *mut usize,
    slots: *mut usize,
    cap: usize,
    items: *const usize,
    n: usize,
) -> (u32, usize) {
    let res: u32;
    let pushed: usize;
    // SAFETY: caller's contract; the slot stores are speculative (invisible until `count`
    // grows), the `count` store commits.
    unsafe {
        asm!(
            // As in `stack_push`, a locked word reads as full. Then `{cap}` becomes the room
            // and `{n}` the number pushed, min(n, room), at least 1; `{slots}` points at the
            // first free slot and `{depth}` counts the copies.
            rseq_sequence!(compare, body = [
                "mov {tmp}, qword ptr [{count}]",
                "movsx {depth}, {tmp:x}",
                "cmp {depth}, {cap}",
                "jae 8f",
                "sub {cap}, {depth}",
                "cmp {n}, {cap}",
                "cmova {n}, {cap}",
                "lea {slots}, [{slots} + {depth} * 8]",
                "xor {depth:e}, {depth:e}",
                "9:",
                "mov {value}, qword ptr [{items} + {depth} * 8]",
                "mov qword ptr [{slots} + {depth} * 8], {value}",
                "add {depth}, 1",
                "cmp {depth}, {n}",
                "jb 9b",
                "add {tmp}, {n}",
                "mov qword ptr [{count}], {tmp}",
            ]),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = inout(reg) slots => _,
            cap = inout(reg) cap => _,
            items = in(reg) items,
            n = inout(reg) n => pushed,
            value = out(reg) _,
            tmp = out(reg) _,
            depth = out(reg) _,
            res = out(reg) res,
            options(nostack),
        );
    }
    (res, pushed)
}

/// # Safety
/// As for [`add`], for `count` and `slots[..*count]`; `out[..n]` is writable and `n >= 1`.
#[inline(always)]
pub(crate) unsafe fn stack_pop_many(
    _token: Token,
    area: *mut crate::abi::Rseq,
    id: *const u32,
    expected: u32,
    count: *mut usize,
    slots: *const usize,
    out: *mut usize,
    n: usize,
) -> (u32, usize) {
    let res: u32;
    let popped: usize;
    // SAFETY: caller's contract; the stores to `out` are the caller's own memory (meaningless
    // unless the sequence commits), the `count` store commits.
    unsafe {
        asm!(
            // As in the pop, empty or locked fails the signed test. `{n}` becomes the number
            // popped, min(n, depth), at least 1; `{slots}` walks down from the top slot while
            // `{depth}` counts the copies, so `out` gets the items in the order single pops
            // would give them. Each pop adds 0xffff, as in the single pop.
            rseq_sequence!(compare, body = [
                "mov {tmp}, qword ptr [{count}]",
                "movsx {depth}, {tmp:x}",
                "test {depth}, {depth}",
                "jle 8f",
                "cmp {n}, {depth}",
                "cmova {n}, {depth}",
                "lea {slots}, [{slots} + {depth} * 8 - 8]",
                "xor {depth:e}, {depth:e}",
                "9:",
                "mov {value}, qword ptr [{slots}]",
                "mov qword ptr [{out} + {depth} * 8], {value}",
                "sub {slots}, 8",
                "add {depth}, 1",
                "cmp {depth}, {n}",
                "jb 9b",
                "imul {value}, {n}, 0xffff",
                "add {tmp}, {value}",
                "mov qword ptr [{count}], {tmp}",
            ]),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = inout(reg) slots => _,
            out = in(reg) out,
            n = inout(reg) n => popped,
            value = out(reg) _,
            tmp = out(reg) _,
            depth = out(reg) _,
            res = out(reg) res,
            options(nostack),
        );
    }
    (res, popped)
}

/// Test-only sequences that prove the abort path is real.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Traps (`int3`, SIGTRAP) inside the critical section, then would store `value` to `*slot`.
    /// With a SIGTRAP handler installed, the kernel must resume at the abort handler.
    ///
    /// # Safety
    /// As for [`add`]; a SIGTRAP handler must be installed.
    pub(crate) unsafe fn trap_then_store(
        area: *mut crate::abi::Rseq,
        id: *const u32,
        expected: u32,
        slot: *mut i64,
        value: i64,
    ) -> u32 {
        let res: u32;
        // SAFETY: caller's contract.
        unsafe {
            asm!(
                rseq_sequence!(body = ["int3", "mov qword ptr [{slot}], {value}"]),
                area = in(reg) area,
                id = in(reg) id,
                expected = in(reg) expected,
                slot = in(reg) slot,
                value = in(reg) value,
                tmp = out(reg) _,
                res = out(reg) res,
                options(nostack),
            );
        }
        res
    }

    /// Spins `spins` times inside the critical section, then adds `value` to `*slot`: a window
    /// long enough for an asynchronous signal or preemption to land inside it.
    ///
    /// # Safety
    /// As for [`add`].
    pub(crate) unsafe fn spin_then_add(
        area: *mut crate::abi::Rseq,
        id: *const u32,
        expected: u32,
        slot: *mut i64,
        value: i64,
        spins: u64,
    ) -> u32 {
        let res: u32;
        // SAFETY: caller's contract; the loop stays inside the critical section.
        unsafe {
            asm!(
                rseq_sequence!(body = ["9:", "sub {spins}, 1", "jnz 9b", "add qword ptr [{slot}], {value}"]),
                area = in(reg) area,
                id = in(reg) id,
                expected = in(reg) expected,
                slot = in(reg) slot,
                value = in(reg) value,
                spins = inout(reg) spins.max(1) => _,
                tmp = out(reg) _,
                res = out(reg) res,
                options(nostack),
            );
        }
        res
    }

    /// Like [`trap_then_store`], but the word before the abort handler is not the signature:
    /// the kernel must kill the process with SIGSEGV instead of aborting.
    ///
    /// # Safety
    /// Only in a child process that is meant to die.
    pub(crate) unsafe fn trap_with_bad_signature(
        area: *mut crate::abi::Rseq,
        id: *const u32,
        expected: u32,
        slot: *mut i64,
        value: i64,
    ) -> u32 {
        let res: u32;
        // SAFETY: caller's contract.
        unsafe {
            asm!(
                rseq_sequence!(
                    signature = "0x53053054", body = ["int3", "mov qword ptr [{slot}], {value}"]
                ),
                area = in(reg) area,
                id = in(reg) id,
                expected = in(reg) expected,
                slot = in(reg) slot,
                value = in(reg) value,
                tmp = out(reg) _,
                res = out(reg) res,
                options(nostack),
            );
        }
        res
    }
}
