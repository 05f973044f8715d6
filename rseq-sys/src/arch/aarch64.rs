//! aarch64 commit sequences.
//!
//! Same shape as the x86_64 module (see there, also for the three kinds of exits: labels, codes
//! and zero), with the arm64 details:
//!
//! ```text
//!   __rseq_cs:            3: descriptor {0, 0, 4f, 5f - 4f, 6f}
//!   __rseq_cs_ptr_array:  &3b
//!   text:                 tmp = &3b (adrp + :lo12:); rseq->rseq_cs = tmp
//!                       4: if *id != expected goto 6f
//!                          body ... (a failed compare jumps to 8f)
//!                          commit store
//!                       5: (committed) b 7f
//!                       8: compare failed
//!                          .inst 0xd428bc00             (signature: `brk #0x45e0`)
//!                       6: aborted
//!                       7:
//! ```
//!
//! The abort handler sits inline after an unconditional branch, so the fast path never executes
//! the signature word; if anything did, it is a `brk`, a defined trap. Unlike x86_64, the failure
//! exits cannot move to their own section: a conditional branch reaches only ±1 MiB, and the
//! linker may place that section further away in a large binary. Addresses are formed with
//! `adrp` + `:lo12:` so the code is position independent. Loads and stores are plain `ldr`/`str`:
//! the commit is a single naturally aligned 64-bit store, which is single-copy atomic.
//!
//! Options as on x86_64: memory is read and written (no `nomem`/`readonly`), flags are clobbered
//! by `cmp` (no `preserves_flags`), the stack is untouched (`nostack`), and temporaries are `out`
//! rather than `lateout` because they are written before the inputs are last read.

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

/// The thread pointer (`tpidr_el0`), from which glibc's `__rseq_offset` counts.
#[inline(always)]
pub(crate) fn thread_pointer() -> Option<*mut u8> {
    let tp: *mut u8;
    // SAFETY: reading tpidr_el0 is always allowed at EL0; touches no memory and no flags.
    unsafe {
        asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags, pure));
    }
    Some(tp)
}

/// Builds a sequence's template around its body: `compare` records `8:` as an exit point (for
/// sequences whose compare can fail), and the exits are codes (the default), `goto` labels or
/// `zero` (see the x86_64 module's docs).
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
            "adrp {tmp}, 3b\n",
            "add {tmp}, {tmp}, :lo12:3b\n",
            "str {tmp}, [{area}, #8]\n",
            "4:\n",
            "ldr {tmp:w}, [{id}]\n",
            "cmp {tmp:w}, {expected:w}\n",
            "b.ne 6f\n",
            $($body, "\n",)*
            "5:\n",
            $committed,
            "b 7f\n",
            "8:\n",
            $compare_failed,
            ".inst ", $sig, "\n",
            "6:\n",
            $aborted,
            "7:\n",
        )
    };
    (@exit_point) => {
        ".pushsection __rseq_exit_point_array, \"awR\"\n.balign 8\n.quad 4f, 8f\n.popsection\n"
    };
    // Tests only: a sequence with another signature, which the kernel must refuse.
    (signature = $sig:literal, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = $sig, exit_point = "", body = [$($body),*],
            committed = "mov {res:w}, #0\n",
            compare_failed = "mov {res:w}, #1\nb 7f\n",
            aborted = "mov {res:w}, #2\n")
    };
    (body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0xd428bc00", exit_point = "", body = [$($body),*],
            committed = "mov {res:w}, #0\n",
            compare_failed = "mov {res:w}, #1\nb 7f\n",
            aborted = "mov {res:w}, #2\n")
    };
    (compare, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0xd428bc00", exit_point = rseq_sequence!(@exit_point), body = [$($body),*],
            committed = "mov {res:w}, #0\n",
            compare_failed = "mov {res:w}, #1\nb 7f\n",
            aborted = "mov {res:w}, #2\n")
    };
    (goto, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0xd428bc00", exit_point = "", body = [$($body),*],
            committed = "", compare_failed = "", aborted = "b {aborted}\n")
    };
    (goto, compare, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0xd428bc00", exit_point = rseq_sequence!(@exit_point), body = [$($body),*],
            committed = "", compare_failed = "b {compare_failed}\n", aborted = "b {aborted}\n")
    };
    (zero, compare, body = [$($body:literal),* $(,)?]) => {
        rseq_sequence!(@template signature = "0xd428bc00", exit_point = rseq_sequence!(@exit_point), body = [$($body),*],
            committed = "",
            compare_failed = "mov {popped}, #0\nb 7f\n",
            aborted = "mov {popped}, #0\n")
    };
}

const _: () = {
    assert!(crate::abi::RSEQ_SIG == 0xd428_bc00);
    assert!(COMMITTED == 0 && COMPARE_FAILED == 1 && ABORTED == 2);
    assert!(core::mem::offset_of!(crate::abi::Rseq, rseq_cs) == 8);
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
    // SAFETY: caller's contract; the only stores are `rseq_cs` and the commit to `*slot`.
    unsafe {
        asm!(
            rseq_sequence!(goto, body = [
                "ldr {tmp}, [{slot}]",
                "add {tmp}, {tmp}, {value}",
                "str {tmp}, [{slot}]",
            ]),
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
                "ldr {tmp}, [{ptr}]",
                "cmp {tmp}, {expect}",
                "b.ne 8f",
                "str {new}, [{ptr}]",
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
    // SAFETY: caller's contract; the only stores are `rseq_cs` and the commit to `*head`.
    unsafe {
        asm!(
            rseq_sequence!(compare, body = [
                "ldr {popped}, [{head}]",
                "cmp {popped}, {sentinel}",
                "b.eq 8f",
                "ldr {tmp}, [{popped}, {next_offset}]",
                "str {tmp}, [{head}]",
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
                "ldr {tmp}, [{ptr}]",
                "cmp {tmp}, {expect}",
                "b.ne 8f",
                "str {spec_value}, [{spec}]",
                "str {new}, [{ptr}]",
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

/// The push shared by [`stack_push`] and [`stack_push_limited`]: `$load_cap` (if any) puts the
/// capacity in `{cap}`.
///
/// The depth is the word's low 16 bits sign-extended: a locked word (bit 15) is negative, which
/// the unsigned compare reads as full.
macro_rules! stack_push_sequence {
    ($($load_cap:literal)?) => {
        rseq_sequence!(goto, compare, body = [
            "ldr {tmp}, [{count}]",
            $($load_cap,)?
            "sxth {depth}, {tmp:w}",
            "cmp {depth}, {cap}",
            "b.hs 8f",
            "str {value}, [{slots}, {depth}, lsl #3]",
            "add {tmp}, {tmp}, #1",
            "str {tmp}, [{count}]",
        ])
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
    // SAFETY: caller's contract; the slot store is speculative, the `count` store commits.
    unsafe {
        asm!(
            stack_push_sequence!(),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = in(reg) slots,
            cap = in(reg) cap,
            value = in(reg) value,
            tmp = out(reg) _,
            depth = out(reg) _,
            compare_failed = label { return COMPARE_FAILED },
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// [`stack_push`] with the capacity read from the word after `count`, inside the sequence.
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
            stack_push_sequence!("ldr {cap}, [{count}, #8]"),
            area = in(reg) area,
            id = in(reg) id,
            expected = in(reg) expected,
            count = in(reg) count,
            slots = in(reg) slots,
            value = in(reg) value,
            cap = out(reg) _,
            tmp = out(reg) _,
            depth = out(reg) _,
            compare_failed = label { return COMPARE_FAILED },
            aborted = label { return ABORTED },
            options(nostack),
        );
    }
    COMMITTED
}

/// The pop shared by [`stack_pop`] (code exits) and [`stack_try_pop`] (`zero` exits).
///
/// Empty (0) or locked (negative once sign-extended) fails the signed compare.
/// Adding 0x10000 and taking 1 counts the pop and lowers the depth (at least 1: no
/// borrow); 0xffff is no add immediate, 16 << 12 is.
macro_rules! stack_pop_sequence {
    ($($exits:ident)?) => {
        rseq_sequence!($($exits,)? compare, body = [
            "ldr {tmp}, [{count}]",
            "sxth {depth}, {tmp:w}",
            "cmp {depth}, #0",
            "b.le 8f",
            "sub {depth}, {depth}, #1",
            "ldr {popped}, [{slots}, {depth}, lsl #3]",
            "add {tmp}, {tmp}, #16, lsl #12",
            "sub {tmp}, {tmp}, #1",
            "str {tmp}, [{count}]",
        ])
    };
}

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
            depth = out(reg) _,
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
            depth = out(reg) _,
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
    // SAFETY: caller's contract; the slot stores are speculative, the `count` store commits.
    unsafe {
        asm!(
            // As on x86_64: full or locked fails, `{cap}` becomes the room and `{n}` the number
            // pushed, min(n, room), at least 1; `{depth}` counts the copies.
            rseq_sequence!(compare, body = [
                "ldr {tmp}, [{count}]",
                "sxth {depth}, {tmp:w}",
                "cmp {depth}, {cap}",
                "b.hs 8f",
                "sub {cap}, {cap}, {depth}",
                "cmp {n}, {cap}",
                "csel {n}, {cap}, {n}, hi",
                "add {slots}, {slots}, {depth}, lsl #3",
                "mov {depth}, #0",
                "9:",
                "ldr {value}, [{items}, {depth}, lsl #3]",
                "str {value}, [{slots}, {depth}, lsl #3]",
                "add {depth}, {depth}, #1",
                "cmp {depth}, {n}",
                "b.lo 9b",
                "add {tmp}, {tmp}, {n}",
                "str {tmp}, [{count}]",
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
    // SAFETY: caller's contract; the stores to `out` are the caller's own memory, the `count`
    // store commits.
    unsafe {
        asm!(
            // As on x86_64: `{n}` becomes min(n, depth), `{slots}` walks down from just past
            // the top slot (pre-decrementing loads), and the count takes n << 16 - n.
            rseq_sequence!(compare, body = [
                "ldr {tmp}, [{count}]",
                "sxth {depth}, {tmp:w}",
                "cmp {depth}, #0",
                "b.le 8f",
                "cmp {n}, {depth}",
                "csel {n}, {depth}, {n}, hi",
                "add {slots}, {slots}, {depth}, lsl #3",
                "mov {depth}, #0",
                "9:",
                "ldr {value}, [{slots}, #-8]!",
                "str {value}, [{out}, {depth}, lsl #3]",
                "add {depth}, {depth}, #1",
                "cmp {depth}, {n}",
                "b.lo 9b",
                "lsl {value}, {n}, #16",
                "sub {value}, {value}, {n}",
                "add {tmp}, {tmp}, {value}",
                "str {tmp}, [{count}]",
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

    /// Traps (`brk #0`, SIGTRAP) inside the critical section, then would store `value`.
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
                rseq_sequence!(body = ["brk #0", "str {value}, [{slot}]"]),
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
                rseq_sequence!(body = ["9:", "subs {spins}, {spins}, #1", "b.ne 9b", "ldr {tmp}, [{slot}]", "add {tmp}, {tmp}, {value}", "str {tmp}, [{slot}]"]),
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

    /// Like [`trap_then_store`] with a wrong signature: the kernel must kill with SIGSEGV.
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
                    signature = "0xd428bc01", body = ["brk #0", "str {value}, [{slot}]"]
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
