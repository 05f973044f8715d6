//! Exactness under stress: many more threads than CPUs doing per-CPU adds while they yield,
//! migrate and are hit by a storm of signals. Any lost or doubled commit changes the total.

// Linked so that `--features percpu/global-allocator` puts these tests on `PerCpuAlloc`.
extern crate percpu as _;

mod common;

use common::{Rng, SignalStorm, Slots, allowed_cpus, scaled, set_affinity, stress_threads};
use rseq_sys::Index;
use std::sync::atomic::{AtomicU64, Ordering};

const ADDS_PER_THREAD: usize = 400_000;
/// How long a run without any abort keeps going before the power check fails.
const ABORT_SEARCH: std::time::Duration = std::time::Duration::from_secs(30);

struct Report {
    total: i64,
    expected: i64,
    aborts: u64,
    signals: u64,
    adds: u64,
    handled: u64,
}

fn stress(index: Index, threads: usize, pin_to: Option<usize>) -> Report {
    let allowed = allowed_cpus();
    let storm = SignalStorm::start(threads);
    let slots = Slots::new(index);
    let seen_aborts = AtomicU64::new(0);
    let (expected, aborts, adds) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (slots, allowed, storm) = (&slots, &allowed, storm.handle());
                let seen_aborts = &seen_aborts;
                s.spawn(move || {
                    storm.enlist(t);
                    let mut rng = Rng::new(t as u64 + 1);
                    if let Some(cpu) = pin_to {
                        set_affinity(&[cpu]);
                    }
                    let (mut model, mut aborts) = (0i64, 0u64);
                    let min = scaled(ADDS_PER_THREAD);
                    let started = std::time::Instant::now();
                    let mut i = 0;
                    // At least `min` adds; past that, keep going (for up to 30 s) until some
                    // sequence has aborted, so the power check below is not left to luck where
                    // preemption rarely lands inside a sequence (emulators).
                    while i < min
                        || (seen_aborts.load(Ordering::Relaxed) == 0
                            && (i % 1024 != 0 || started.elapsed() < ABORT_SEARCH))
                    {
                        i += 1;
                        let value = rng.below(2001) as i64 - 1000;
                        let a = slots.add(value);
                        if a > 0 {
                            aborts += a;
                            seen_aborts.fetch_add(a, Ordering::Relaxed);
                        }
                        model += value;
                        if i % 997 == 0 {
                            std::thread::yield_now();
                        }
                        if pin_to.is_none() && i % 4099 == 0 {
                            set_affinity(&[allowed[rng.below(allowed.len() as u64) as usize]]);
                        }
                    }
                    storm.leave(t);
                    (model, aborts, i as u64)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0, 0), |(m, a, n), (wm, wa, wn)| {
                (m + wm, a + wa, n + wn)
            })
    });
    let signals = storm.finish();
    let mut slots = slots;
    Report {
        total: slots.sum(),
        expected,
        aborts,
        signals,
        adds,
        handled: common::SIGNALS_HANDLED.load(Ordering::Relaxed),
    }
}

fn check(index: Index, report: Report) {
    assert_eq!(
        report.total, report.expected,
        "{index:?}: per-CPU total differs from the model"
    );
    assert!(report.signals > 0, "the signal storm sent nothing");
    assert!(
        report.aborts > 0,
        "{index:?}: no sequence aborted in {} adds ({} signals sent, {} handled so far), \
         so the abort path went untested",
        report.adds,
        report.signals,
        report.handled
    );
}

#[test]
fn per_cpu_adds_stay_exact_under_migration_and_signals_cpu_id() {
    check(Index::CpuId, stress(Index::CpuId, stress_threads(), None));
}

#[test]
fn per_cpu_adds_stay_exact_under_migration_and_signals_mm_cid() {
    if rseq_sys::kernel_size() < 28 {
        // Pre-6.3 kernel: mm_cid does not exist; the cpu_id test above still runs.
        eprintln!(
            "kernel_size {} < 28: no mm_cid on this kernel",
            rseq_sys::kernel_size()
        );
        assert!(rseq_sys::current_mm_cid().is_none());
        return;
    }
    check(Index::MmCid, stress(Index::MmCid, stress_threads(), None));
}

/// Several threads on one CPU preempting each other on one slot: every preemption inside a
/// sequence must abort it (the 6.19 arm64 regression lost exactly this).
#[test]
fn threads_pinned_to_one_cpu_hammering_one_slot_stay_exact() {
    let cpu = allowed_cpus()[0];
    check(Index::CpuId, stress(Index::CpuId, 6, Some(cpu)));
}
