//! Unit tests of the sequences' semantics and of the abort path, which needs the crate-private
//! test-only sequences.

use core::sync::atomic::{AtomicUsize, Ordering};
use std::vec::Vec;

use crate::{Index, Outcome, Sequences, current};

fn sequences() -> Sequences {
    current()
        .expect("these tests run where rseq works (see tests/regimes.rs for the rest)")
        .sequences()
        .expect("x86_64 and aarch64 have sequences")
}

/// Runs `op` with the current index until it does not abort.
fn retry<T>(index: Index, mut op: impl FnMut(Sequences, u32) -> Outcome<T>) -> Outcome<T> {
    loop {
        let seq = sequences();
        let expected = seq.current().index(index);
        match op(seq, expected) {
            Outcome::Aborted => continue,
            done => return done,
        }
    }
}

fn indexes() -> Vec<Index> {
    let mut v = std::vec![Index::CpuId];
    if crate::kernel_size() >= 28 {
        v.push(Index::MmCid);
    }
    v
}

#[test]
fn add_commits_on_the_current_index() {
    for index in indexes() {
        let mut slot = 40i64;
        // SAFETY: `slot` is a local only this thread touches.
        let r = retry(index, |s, e| unsafe { s.add(index, e, &mut slot, 2) });
        assert_eq!(r, Outcome::Committed(()));
        assert_eq!(slot, 42);
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe { s.add(index, e, &mut slot, -50) });
        assert_eq!(r, Outcome::Committed(()));
        assert_eq!(slot, -8);
    }
}

#[test]
fn a_mismatched_index_aborts_without_storing() {
    let possible = crate::possible_cpus();
    for index in indexes() {
        let mut slot = 7i64;
        let mut word = 1usize;
        let mut count = 0usize;
        let mut slots = [0usize; 4];
        let seq = sequences();
        let wrong = seq.current().index(index).wrapping_add(possible);
        // SAFETY: locals only this thread touches.
        unsafe {
            assert_eq!(seq.add(index, wrong, &mut slot, 1), Outcome::Aborted);
            assert_eq!(
                seq.compare_store(index, wrong, &mut word, 1, 9),
                Outcome::Aborted
            );
            assert_eq!(
                seq.stack_push(index, wrong, &mut count, slots.as_mut_ptr(), 4, 5),
                Outcome::Aborted
            );
            let mut limited = [0usize, 4];
            assert_eq!(
                seq.stack_push_limited(index, wrong, limited.as_mut_ptr(), slots.as_mut_ptr(), 5),
                Outcome::Aborted
            );
            assert_eq!(limited, [0, 4]);
            let mut spec = 3usize;
            assert_eq!(
                seq.compare_store_store(index, wrong, &mut word, 1, &mut spec, 4, 9),
                Outcome::Aborted
            );
            assert_eq!(spec, 3);
        }
        assert_eq!((slot, word, count), (7, 1, 0));
        // A pop of a non-empty stack: aborted, so nothing taken (and the zero exit says so).
        let (mut one, items) = (1usize, [5usize; 4]);
        // SAFETY: locals only this thread touches.
        unsafe {
            assert_eq!(
                seq.stack_pop(index, wrong, &mut one, items.as_ptr()),
                Outcome::Aborted
            );
            assert_eq!(seq.stack_try_pop(index, wrong, &mut one, items.as_ptr()), 0);
            let mut out = [0usize; 2];
            assert_eq!(
                seq.stack_pop_many(index, wrong, &mut one, items.as_ptr(), &mut out),
                Outcome::Aborted
            );
            assert_eq!(
                seq.stack_push_many(index, wrong, &mut count, slots.as_mut_ptr(), 4, &[1, 2]),
                Outcome::Aborted
            );
        }
        assert_eq!((one, count, slots), (1, 0, [0; 4]));
    }
}

#[test]
fn compare_store_only_stores_on_a_match() {
    for index in indexes() {
        let mut word = 10usize;
        // SAFETY: a local only this thread touches.
        let r = retry(index, |s, e| unsafe {
            s.compare_store(index, e, &mut word, 11, 99)
        });
        assert_eq!(r, Outcome::CompareFailed);
        assert_eq!(word, 10);
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe {
            s.compare_store(index, e, &mut word, 10, 99)
        });
        assert_eq!(r, Outcome::Committed(()));
        assert_eq!(word, 99);
    }
}

#[test]
fn compare_store_store_writes_both_or_neither() {
    for index in indexes() {
        let mut word = 1usize;
        let mut spec = 0usize;
        // SAFETY: locals only this thread touches.
        let r = retry(index, |s, e| unsafe {
            s.compare_store_store(index, e, &mut word, 2, &mut spec, 5, 3)
        });
        assert_eq!(r, Outcome::CompareFailed);
        assert_eq!((word, spec), (1, 0));
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe {
            s.compare_store_store(index, e, &mut word, 1, &mut spec, 5, 3)
        });
        assert_eq!(r, Outcome::Committed(()));
        assert_eq!((word, spec), (3, 5));
    }
}

#[test]
fn list_pop_walks_a_linked_list_to_the_sentinel() {
    #[repr(C)]
    struct Node {
        payload: u64,
        next: usize,
    }
    const SENTINEL: usize = usize::MAX;
    for index in indexes() {
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                payload: i,
                next: SENTINEL,
            })
            .collect();
        let addr = |n: &Node| n as *const Node as usize;
        nodes[2].next = SENTINEL;
        nodes[1].next = addr(&nodes[2]);
        nodes[0].next = addr(&nodes[1]);
        let mut head = addr(&nodes[0]);
        let next_offset = core::mem::offset_of!(Node, next);
        let mut popped = Vec::new();
        loop {
            // SAFETY: every node reachable from `head` is alive in `nodes`.
            match retry(index, |s, e| unsafe {
                s.list_pop(index, e, &mut head, SENTINEL, next_offset)
            }) {
                Outcome::Committed(node) => popped.push(node),
                Outcome::CompareFailed => break,
                Outcome::Aborted => unreachable!("retry() never returns Aborted"),
            }
        }
        let expect: Vec<usize> = nodes.iter().map(addr).collect();
        assert_eq!(popped, expect);
        assert_eq!(head, SENTINEL);
    }
}

#[test]
fn stack_push_and_pop_respect_capacity_and_order() {
    const CAP: usize = 4;
    for index in indexes() {
        let mut count = 0usize;
        let mut slots = [0usize; CAP];
        for value in 1..=CAP {
            // SAFETY: locals only this thread touches.
            let r = retry(index, |s, e| unsafe {
                s.stack_push(index, e, &mut count, slots.as_mut_ptr(), CAP, value * 10)
            });
            assert_eq!(r, Outcome::Committed(()));
        }
        // SAFETY: as above.
        let full = retry(index, |s, e| unsafe {
            s.stack_push(index, e, &mut count, slots.as_mut_ptr(), CAP, 999)
        });
        assert_eq!(full, Outcome::CompareFailed);
        assert_eq!((count, slots), (CAP, [10, 20, 30, 40]));
        for value in (1..=CAP).rev() {
            // SAFETY: as above.
            let r = retry(index, |s, e| unsafe {
                s.stack_pop(index, e, &mut count, slots.as_ptr())
            });
            assert_eq!(r, Outcome::Committed(value * 10));
        }
        // SAFETY: as above.
        let empty = retry(index, |s, e| unsafe {
            s.stack_pop(index, e, &mut count, slots.as_ptr())
        });
        assert_eq!(empty, Outcome::CompareFailed);
        // Depth 0, and the four pops counted in the same word.
        assert_eq!(count & crate::STACK_DEPTH_MASK, 0);
        assert_eq!(count >> crate::STACK_POPS_SHIFT, CAP);
        // Counted pops do not disturb the depth: a push and a pop again.
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe {
            s.stack_push(index, e, &mut count, slots.as_mut_ptr(), CAP, 77)
        });
        assert_eq!(r, Outcome::Committed(()));
        assert_eq!(count, (CAP << crate::STACK_POPS_SHIFT) | 1);
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe {
            s.stack_pop(index, e, &mut count, slots.as_ptr())
        });
        assert_eq!(r, Outcome::Committed(77));
        assert_eq!(count, (CAP + 1) << crate::STACK_POPS_SHIFT);
    }
}

#[test]
fn stack_push_limited_fills_to_the_limit_word_it_reads_in_the_sequence() {
    const CAP: usize = 4;
    for index in indexes() {
        // The count word, then the limit word after it.
        let mut words = [0usize, 2];
        let mut slots = [0usize; CAP];
        let (count, slots_at) = (words.as_mut_ptr(), slots.as_mut_ptr());
        let push = |value| {
            // SAFETY: locals only this thread touches; the limit word never exceeds CAP.
            retry(index, |s, e| unsafe {
                s.stack_push_limited(index, e, count, slots_at, value)
            })
        };
        assert_eq!(push(10), Outcome::Committed(()));
        assert_eq!(push(20), Outcome::Committed(()));
        assert_eq!(push(30), Outcome::CompareFailed, "full at the limit, 2");
        // SAFETY: the limit word, between sequences.
        unsafe { count.add(1).write(CAP) };
        assert_eq!(push(30), Outcome::Committed(()));
        assert_eq!(push(40), Outcome::Committed(()));
        assert_eq!(push(50), Outcome::CompareFailed, "full at the limit, CAP");
        // A limit lowered below the depth refuses every push and takes nothing away.
        // SAFETY: as above.
        unsafe { count.add(1).write(1) };
        assert_eq!(push(60), Outcome::CompareFailed);
        assert_eq!((words, slots), ([CAP, 1], [10, 20, 30, 40]));
        // The pops see the same stack.
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe {
            s.stack_pop(index, e, count, slots_at)
        });
        assert_eq!(r, Outcome::Committed(40));
    }
}

/// One `stack_try_pop` per call of `op`'s retry loop: the value, or 0 once the stack is empty
/// (an abort, which also gives 0, is retried while items remain).
fn try_pop_until_empty(index: Index, count: &mut usize, slots: &[usize]) -> usize {
    loop {
        let seq = sequences();
        let expected = seq.current().index(index);
        // SAFETY: locals only this thread touches.
        let popped = unsafe { seq.stack_try_pop(index, expected, count, slots.as_ptr()) };
        if popped != 0 || *count & crate::STACK_DEPTH_MASK == 0 {
            return popped;
        }
    }
}

#[test]
fn stack_try_pop_returns_the_value_or_zero() {
    for index in indexes() {
        let mut count = 0usize;
        let mut slots = [0usize; 4];
        for value in [10, 20] {
            // SAFETY: locals only this thread touches.
            let r = retry(index, |s, e| unsafe {
                s.stack_push(index, e, &mut count, slots.as_mut_ptr(), 4, value)
            });
            assert_eq!(r, Outcome::Committed(()));
        }
        assert_eq!(try_pop_until_empty(index, &mut count, &slots), 20);
        assert_eq!(try_pop_until_empty(index, &mut count, &slots), 10);
        assert_eq!(try_pop_until_empty(index, &mut count, &slots), 0);
        // Each committed pop counted once, in the same word, and the depth back to 0.
        assert_eq!(count, 2 << crate::STACK_POPS_SHIFT);
    }
}

#[test]
fn bulk_push_and_pop_move_what_fits_in_single_operation_order() {
    const CAP: usize = 4;
    for index in indexes() {
        // Pops counted above the depth already: the bulk sequences must keep them.
        let mut count = 9 << crate::STACK_POPS_SHIFT;
        let mut slots = [0usize; CAP];
        let push = |count: &mut usize, slots: &mut [usize; CAP], items: &[usize]| {
            // SAFETY: locals only this thread touches.
            retry(index, |s, e| unsafe {
                s.stack_push_many(index, e, count, slots.as_mut_ptr(), CAP, items)
            })
        };
        assert_eq!(push(&mut count, &mut slots, &[]), Outcome::Committed(0));
        assert_eq!(
            push(&mut count, &mut slots, &[1, 2, 3]),
            Outcome::Committed(3)
        );
        assert_eq!(
            push(&mut count, &mut slots, &[4, 5, 6]),
            Outcome::Committed(1),
            "only the room left"
        );
        assert_eq!(push(&mut count, &mut slots, &[7]), Outcome::CompareFailed);
        assert_eq!(
            (count, slots),
            ((9 << crate::STACK_POPS_SHIFT) | 4, [1, 2, 3, 4])
        );

        let pop = |count: &mut usize, slots: &[usize; CAP], out: &mut [usize]| {
            // SAFETY: as above.
            retry(index, |s, e| unsafe {
                s.stack_pop_many(index, e, count, slots.as_ptr(), out)
            })
        };
        let mut out = [0usize; 3];
        assert_eq!(pop(&mut count, &slots, &mut []), Outcome::Committed(0));
        assert_eq!(
            pop(&mut count, &slots, &mut out[..2]),
            Outcome::Committed(2)
        );
        assert_eq!(out[..2], [4, 3], "the top first, as single pops give them");
        assert_eq!(
            count,
            (11 << crate::STACK_POPS_SHIFT) | 2,
            "two pops counted"
        );
        // A single push lands on the new top.
        // SAFETY: as above.
        let r = retry(index, |s, e| unsafe {
            s.stack_push(index, e, &mut count, slots.as_mut_ptr(), CAP, 8)
        });
        assert_eq!(r, Outcome::Committed(()));
        assert_eq!(
            pop(&mut count, &slots, &mut out),
            Outcome::Committed(3),
            "all there is"
        );
        assert_eq!(out, [8, 2, 1]);
        assert_eq!(pop(&mut count, &slots, &mut out), Outcome::CompareFailed);
        assert_eq!(count, 14 << crate::STACK_POPS_SHIFT);
    }
}

/// Bulk moves between two stacks under a steady stream of signals: every aborted move must
/// leave both stacks as they were, so that retrying it loses and duplicates nothing.
#[test]
fn bulk_moves_aborted_by_signals_lose_and_duplicate_nothing() {
    let _alone = TIMING_SENSITIVE.lock().unwrap_or_else(|e| e.into_inner());
    const CAP: usize = 1000;
    let ((all, aborts), _) = under_signals(std::time::Duration::from_micros(50), || {
        let index = Index::CpuId;
        let mut stacks = [
            (0usize, std::vec![0usize; CAP]),
            (0usize, std::vec![0usize; CAP]),
        ];
        let items: Vec<usize> = (1..=CAP).collect();
        let (count, slots) = (&mut stacks[0].0, &mut stacks[0].1);
        // SAFETY: locals only this thread touches.
        let r = retry(index, |s, e| unsafe {
            s.stack_push_many(index, e, count, slots.as_mut_ptr(), CAP, &items)
        });
        assert_eq!(r, Outcome::Committed(CAP));
        let (mut aborts, mut batch) = (0u64, [0usize; 300]);
        // At least 3000 moves, and on until some were aborted (the signals start only once
        // this thread is running), within a bound that fails the test rather than hangs.
        let mut round = 0;
        while round < 3000 || (aborts < 20 && round < 20_000_000) {
            round += 1;
            let (from, to) = (round % 2, 1 - round % 2);
            let n = 1 + round * 7 % batch.len();
            // Pop up to n from one stack, then push exactly those onto the other.
            let popped = loop {
                let seq = sequences();
                let e = seq.current().index(index);
                let (count, slots) = (&mut stacks[from].0, &stacks[from].1);
                // SAFETY: as above.
                match unsafe {
                    seq.stack_pop_many(index, e, count, slots.as_ptr(), &mut batch[..n])
                } {
                    Outcome::Aborted => aborts += 1,
                    Outcome::Committed(k) => break k,
                    Outcome::CompareFailed => break 0,
                }
            };
            let mut placed = 0;
            while placed < popped {
                let seq = sequences();
                let e = seq.current().index(index);
                let (count, slots) = (&mut stacks[to].0, &mut stacks[to].1);
                // SAFETY: as above.
                match unsafe {
                    seq.stack_push_many(
                        index,
                        e,
                        count,
                        slots.as_mut_ptr(),
                        CAP,
                        &batch[placed..popped],
                    )
                } {
                    Outcome::Aborted => aborts += 1,
                    Outcome::Committed(k) => placed += k,
                    Outcome::CompareFailed => panic!("room for everything"),
                }
            }
        }
        let mut all: Vec<usize> = stacks
            .iter()
            .flat_map(|(count, slots)| slots[..count & crate::STACK_DEPTH_MASK].iter().copied())
            .collect();
        all.sort_unstable();
        (all, aborts)
    });
    assert_eq!(
        all,
        (1..=CAP).collect::<Vec<_>>(),
        "every item exactly once"
    );
    assert!(
        aborts > 0,
        "no bulk move was ever aborted: the test proved nothing"
    );
}

static TRAPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_trap(_: libc::c_int) {
    TRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Installs `handler` for `signal` (with SA_RESTART).
fn install_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a plain handler is valid; the handlers here only touch
    // atomics, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signal, &action, core::ptr::null_mut()), 0);
    }
}

/// The raw area, the cpu_id field and its current value, for the test-only sequences.
fn raw_cpu_id_parts(current: crate::Current) -> (*mut crate::abi::Rseq, *const u32, u32) {
    let area = current.area().as_ptr();
    // SAFETY: the cpu_id field lies inside the registered area.
    let id = unsafe { area.cast::<u8>().add(Index::CpuId.field_offset()) }.cast::<u32>();
    (area, id, current.index(Index::CpuId))
}

/// How many times the trap tests try: an attempt whose index check fails (the thread migrated
/// after reading its CPU) jumps to the abort label without reaching the trap, so it is retried.
const TRAP_ATTEMPTS: usize = 1000;

#[test]
fn a_trap_inside_the_critical_section_ends_in_the_abort_handler() {
    install_handler(libc::SIGTRAP, count_trap);
    let mut slot = 5i64;
    for _ in 0..TRAP_ATTEMPTS {
        let before = TRAPS.load(Ordering::Relaxed);
        let (area, id, expected) = raw_cpu_id_parts(current().expect("rseq works here"));
        // SAFETY: our own registration and a local slot; the SIGTRAP handler is installed.
        let code =
            unsafe { crate::arch::testing::trap_then_store(area, id, expected, &mut slot, 6) };
        assert_eq!(code, crate::seq::ABORTED, "the sequence must never commit");
        assert_eq!(slot, 5, "the commit after the trap must not have run");
        if TRAPS.load(Ordering::Relaxed) > before {
            return; // The trap fired inside the section and the kernel resumed at the abort.
        }
    }
    panic!("the trap never fired in {TRAP_ATTEMPTS} attempts");
}

#[test]
fn a_wrong_signature_kills_the_process_with_sigsegv() {
    // Register (and find glibc's area) before forking: the child only inherits it.
    current().expect("rseq works here");
    // SAFETY: fork in a test process; the child only calls async-signal-safe functions and the
    // sequence (no allocation, no locks) before `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        install_handler(libc::SIGTRAP, count_trap);
        let mut slot = 0i64;
        for _ in 0..TRAP_ATTEMPTS {
            let (area, id, expected) = raw_cpu_id_parts(current().expect("inherited"));
            // SAFETY: the registration is inherited by the child; this is meant to kill it.
            let _ = unsafe {
                crate::arch::testing::trap_with_bad_signature(area, id, expected, &mut slot, 1)
            };
        }
        // SAFETY: leaving the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
        "child should die of SIGSEGV, status {status:#x}"
    );
}

/// Held by tests that count aborts against a rate: they run one at a time, so another test's
/// threads do not share their pinned CPU.
static TIMING_SENSITIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

static USR1_HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_usr1(_: libc::c_int) {
    USR1_HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Runs `work` on a thread of its own while this one sends it SIGUSR1 (handled by
/// `count_usr1`) every `every`, until `work` returns; then its result and the signals sent. A
/// panic in `work` fails the caller here rather than leaving it signalling forever.
fn under_signals<T: Send + 'static>(
    every: std::time::Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, usize) {
    install_handler(libc::SIGUSR1, count_usr1);
    let tid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let worker = {
        let tid = tid.clone();
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
            work()
        })
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut sent = 0;
    while !worker.is_finished() {
        let target = tid.load(Ordering::Relaxed);
        if target != 0 {
            // SAFETY: signalling our own worker thread, which has a SIGUSR1 handler.
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, target, libc::SIGUSR1) };
            sent += usize::from(rc == 0);
        }
        std::thread::sleep(every);
    }
    (worker.join().unwrap(), sent)
}

/// Asynchronous signals (not only synchronous traps) landing inside a critical section must
/// abort it, and an aborted sequence must not commit. The section spins long enough that some of
/// a steady stream of signals land inside it, on any machine and under emulation.
#[test]
fn signals_landing_inside_a_long_critical_section_abort_it() {
    let _alone = TIMING_SENSITIVE.lock().unwrap_or_else(|e| e.into_inner());
    const ATTEMPTS: u64 = 300;
    const VALUE: i64 = 3;
    let ((slot, commits, aborts), sent) =
        under_signals(std::time::Duration::from_micros(200), || {
            let mut slot = 0i64;
            let (mut commits, mut aborts) = (0i64, 0u64);
            for _ in 0..ATTEMPTS {
                let (area, id, expected) = raw_cpu_id_parts(current().expect("rseq works here"));
                // SAFETY: our own registration and a local slot.
                let code = unsafe {
                    crate::arch::testing::spin_then_add(
                        area, id, expected, &mut slot, VALUE, 200_000,
                    )
                };
                match code {
                    crate::seq::COMMITTED => commits += 1,
                    crate::seq::ABORTED => aborts += 1,
                    other => panic!("unexpected result code {other}"),
                }
            }
            (slot, commits, aborts)
        });
    assert_eq!(slot, commits * VALUE, "an aborted sequence committed");
    assert!(
        aborts > 0,
        "none of {ATTEMPTS} long sequences aborted although {sent} signals were sent \
         ({} handled)",
        USR1_HANDLED.load(Ordering::Relaxed)
    );
}

#[test]
fn a_locked_stack_reads_as_full_and_empty() {
    for index in indexes() {
        let mut slots = [7usize; 4];
        // Locked, with pops counted above it: the lock still reads as full and empty.
        let mut count = (5 << crate::STACK_POPS_SHIFT) | 2 | crate::STACK_LOCKED;
        // SAFETY: locals only this thread touches.
        let pushed = retry(index, |s, e| unsafe {
            s.stack_push(index, e, &mut count, slots.as_mut_ptr(), 4, 99)
        });
        // SAFETY: as above.
        let popped = retry(index, |s, e| unsafe {
            s.stack_pop(index, e, &mut count, slots.as_ptr())
        });
        assert_eq!(
            (pushed, popped),
            (Outcome::CompareFailed, Outcome::CompareFailed)
        );
        let mut limited = [count, 4];
        // SAFETY: as above.
        let pushed_limited = retry(index, |s, e| unsafe {
            s.stack_push_limited(index, e, limited.as_mut_ptr(), slots.as_mut_ptr(), 99)
        });
        assert_eq!(pushed_limited, Outcome::CompareFailed);
        assert_eq!(limited, [count, 4]);
        let zero = retry(index, |s, e| {
            // SAFETY: as above.
            let popped = unsafe { s.stack_try_pop(index, e, &mut count, slots.as_ptr()) };
            match popped {
                0 if s.current().index(index) != e => Outcome::Aborted,
                popped => Outcome::Committed(popped),
            }
        });
        assert_eq!(zero, Outcome::Committed(0), "a locked stack gives nothing");
        let mut out = [0usize; 2];
        // SAFETY: as above.
        let pushed_many = retry(index, |s, e| unsafe {
            s.stack_push_many(index, e, &mut count, slots.as_mut_ptr(), 4, &[1, 2])
        });
        // SAFETY: as above.
        let popped_many = retry(index, |s, e| unsafe {
            s.stack_pop_many(index, e, &mut count, slots.as_ptr(), &mut out)
        });
        assert_eq!(
            (pushed_many, popped_many),
            (Outcome::CompareFailed, Outcome::CompareFailed)
        );
        assert_eq!(
            (count, slots),
            (
                (5 << crate::STACK_POPS_SHIFT) | 2 | crate::STACK_LOCKED,
                [7; 4]
            ),
            "nothing stored"
        );
    }
}

/// Pins the calling thread to `cpu` (modulo the CPUs it may use).
fn pin_to(cpu: usize) {
    let size = core::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: plain cpu_set_t manipulation with in-range CPU numbers.
    unsafe {
        let mut allowed: libc::cpu_set_t = core::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        let mut one: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpus[cpu % cpus.len()], &mut one);
        assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
    }
}

/// `fence_all_cpus` alone (no signals) must abort a sequence in flight on another CPU.
#[test]
fn fencing_all_cpus_aborts_a_sequence_in_flight() {
    fence_aborts_sequences_in_flight(crate::fence_all_cpus);
}

/// The fallback fence (visiting every CPU) must do the same where membarrier is missing.
#[test]
fn visiting_every_cpu_aborts_a_sequence_in_flight() {
    fence_aborts_sequences_in_flight(|| {
        crate::fence::visit_cpus().map(|()| crate::FenceMethod::VisitedCpus)
    });
}

fn fence_aborts_sequences_in_flight(fence: fn() -> Result<crate::FenceMethod, crate::FenceError>) {
    let _alone = TIMING_SENSITIVE.lock().unwrap_or_else(|e| e.into_inner());
    const FENCES: u64 = 200;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (done, started) = (done.clone(), started.clone());
        std::thread::spawn(move || {
            pin_to(0);
            let mut slot = 0i64;
            let (mut commits, mut aborts) = (0i64, 0u64);
            started.store(true, Ordering::Relaxed);
            while !done.load(Ordering::Relaxed) {
                let (area, id, expected) = raw_cpu_id_parts(current().expect("rseq works here"));
                // SAFETY: our own registration and a local slot.
                let code = unsafe {
                    crate::arch::testing::spin_then_add(area, id, expected, &mut slot, 1, 100_000)
                };
                if code == crate::seq::COMMITTED {
                    commits += 1;
                } else {
                    aborts += 1;
                }
            }
            (slot, commits, aborts)
        })
    };
    while !started.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    // The fencing thread runs on another CPU, so it never preempts the worker itself.
    let fencer = std::thread::spawn(move || {
        pin_to(1);
        let mut methods = Vec::new();
        for _ in 0..FENCES {
            methods.push(fence().expect("a fence is available here"));
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        methods
    });
    let methods = fencer.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let (slot, commits, aborts) = worker.join().unwrap();
    assert_eq!(slot, commits, "an aborted sequence committed");
    // The worker is inside a sequence nearly all the time, so nearly every fence aborts one;
    // without fences, preemption alone aborts a handful at most in this short window.
    assert!(
        aborts >= FENCES / 4,
        "{FENCES} fences aborted only {aborts} sequences ({commits} commits), methods {:?}",
        &methods[..1]
    );
}

/// A thread whose registration failed (here: seccomp fails `rseq(2)` with ENOSYS) is marked so in
/// its thread block, where `current` answers it on every later call without the thread-local
/// that holds the reason.
#[test]
fn a_failed_registration_is_remembered_in_the_thread_block() {
    let name = "tests::child_failed_registration_is_remembered";
    let out = crate::test_common::run_child(name, &[], Some(crate::test_common::deny_rseq_enosys));
    crate::test_common::assert_child_passed(name, &out);
}

#[test]
#[ignore = "run in a child by a_failed_registration_is_remembered_in_the_thread_block"]
fn child_failed_registration_is_remembered() {
    // (Whether the block is marked before: with `percpu/global-allocator`, the harness's own
    // allocations on this thread have already asked.)
    let known = || crate::thread_block::read().known_unavailable();
    assert!(current().is_none());
    assert!(known(), "the failure is in the block");
    let tag = crate::MemoTag::new().unwrap().get();
    assert_eq!(
        crate::current_with_memo(tag).err(),
        Some(crate::NoMemo::Unregistered),
        "and no memo answers"
    );
    assert!(current().is_none());
    let status = crate::status();
    assert_eq!(status.reason, Some(crate::Unavailable::Errno(libc::ENOSYS)));
    assert!(known(), "and stays there");
}

/// The CPU hint is `sched_getcpu`'s answer, asked again only after `CPU_HINT_USES` calls or
/// after `forget_cpu_hint`: a thread moved to another CPU sees its old one until then.
#[test]
fn the_cpu_hint_is_asked_again_after_its_uses_or_when_forgotten() {
    use crate::test_common::{allowed_cpus, set_affinity};
    use crate::thread_block::CPU_HINT_USES;
    let cpus = allowed_cpus();
    // A new thread: its block's hint is unset.
    std::thread::spawn(move || {
        let (a, b) = (cpus[0] as u32, cpus[cpus.len() - 1] as u32);
        set_affinity(&[a as usize]);
        assert_eq!(crate::cpu_hint(), Some(a));
        if a == b {
            eprintln!("one CPU allowed: staleness not tested");
            return;
        }
        set_affinity(&[b as usize]);
        for call in 1..CPU_HINT_USES {
            assert_eq!(crate::cpu_hint(), Some(a), "call {call} after the first");
        }
        assert_eq!(crate::cpu_hint(), Some(b), "asked again");
        set_affinity(&[a as usize]);
        crate::forget_cpu_hint();
        assert_eq!(crate::cpu_hint(), Some(a), "asked again once forgotten");
    })
    .join()
    .unwrap();
}
