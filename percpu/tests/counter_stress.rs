//! Counter exactness under stress, in both paths: far more threads than CPUs adding random
//! positive and negative values while they yield, migrate and take signals, with `take()` racing
//! them. The end state must equal the model exactly.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;

use common::{
    Rng, SignalStorm, allowed_cpus, assert_child_passed, run_child, scaled, set_affinity,
    stress_threads,
};
use percpu::{Counter, CounterGroup, CounterName, FallbackReason, Mode};
use std::sync::atomic::{AtomicBool, Ordering};

const ADDS_PER_THREAD: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stat {
    Requests,
    Bytes,
    Errors,
}

impl CounterName for Stat {
    const ALL: &'static [Self] = &[Stat::Requests, Stat::Bytes, Stat::Errors];
    fn index(self) -> usize {
        self as usize
    }
}

/// How each worker thread behaves.
#[derive(Clone, Copy)]
struct Plan {
    threads: usize,
    pin_to: Option<usize>,
    /// Workers with an odd id give up their rseq registration first (our own area only).
    unregister_odd: bool,
}

struct Outcome {
    model: i64,
    group_model: [i64; 3],
    taken: i64,
    modes: Vec<Mode>,
}

fn run(plan: Plan, counter: &Counter, group: &CounterGroup<Stat, 3>) -> Outcome {
    let allowed = allowed_cpus();
    let storm = SignalStorm::start(plan.threads);
    let adders_done = AtomicBool::new(false);
    let (model, group_model, taken, modes) = std::thread::scope(|s| {
        let reporter = s.spawn(|| {
            let mut taken = 0i64;
            while !adders_done.load(Ordering::Relaxed) {
                taken += counter.take();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            taken
        });
        let workers: Vec<_> = (0..plan.threads)
            .map(|t| {
                let (allowed, storm) = (&allowed, storm.handle());
                s.spawn(move || {
                    storm.enlist(t);
                    if plan.unregister_odd && t % 2 == 1 {
                        rseq_sys::unregister_current_thread().expect("own registration");
                    }
                    if let Some(cpu) = plan.pin_to {
                        set_affinity(&[cpu]);
                    }
                    let mode = percpu::mode();
                    let mut rng = Rng::new(t as u64 + 7);
                    let (mut model, mut group_model) = (0i64, [0i64; 3]);
                    for i in 0..scaled(ADDS_PER_THREAD) {
                        let value = rng.below(2001) as i64 - 1000;
                        counter.add(value);
                        model += value;
                        let stat = Stat::ALL[rng.below(3) as usize];
                        group.add(stat, value);
                        group_model[stat as usize] += value;
                        if i % 1013 == 0 {
                            std::thread::yield_now();
                        }
                        if plan.pin_to.is_none() && i % 4099 == 0 {
                            set_affinity(&[allowed[rng.below(allowed.len() as u64) as usize]]);
                        }
                    }
                    storm.leave(t);
                    (model, group_model, mode)
                })
            })
            .collect();
        let mut total = (0i64, [0i64; 3], Vec::new());
        for w in workers {
            let (m, g, mode) = w.join().unwrap();
            total.0 += m;
            for (acc, v) in total.1.iter_mut().zip(g) {
                *acc += v;
            }
            total.2.push(mode);
        }
        adders_done.store(true, Ordering::Relaxed);
        let taken = reporter.join().unwrap();
        (total.0, total.1, taken, total.2)
    });
    assert!(storm.finish() > 0, "the signal storm sent nothing");
    Outcome {
        model,
        group_model,
        taken,
        modes,
    }
}

fn check(plan: Plan) -> Vec<Mode> {
    let counter = Counter::new();
    let group = CounterGroup::<Stat, 3>::new();
    let out = run(plan, &counter, &group);
    assert_eq!(
        counter.sum(),
        out.model,
        "Counter::sum differs from the model"
    );
    assert_eq!(
        out.taken + counter.take(),
        out.model,
        "takes must count every add exactly once"
    );
    assert_eq!(counter.take(), 0);
    let snapshot = group.snapshot();
    for stat in Stat::ALL {
        assert_eq!(snapshot[*stat], out.group_model[*stat as usize], "{stat:?}");
    }
    assert_eq!(group.take_snapshot().values(), out.group_model);
    out.modes
}

fn default_plan() -> Plan {
    Plan {
        threads: stress_threads(),
        pin_to: None,
        unregister_odd: false,
    }
}

#[test]
fn counters_stay_exact_on_the_rseq_path() {
    let modes = check(default_plan());
    assert!(
        modes.iter().all(|m| matches!(m, Mode::Rseq { .. })),
        "{modes:?}"
    );
}

#[test]
fn counters_stay_exact_with_threads_pinned_to_one_cpu() {
    let modes = check(Plan {
        threads: 6,
        pin_to: Some(allowed_cpus()[0]),
        unregister_odd: false,
    });
    assert!(modes.iter().all(|m| matches!(m, Mode::Rseq { .. })));
}

#[test]
fn counters_stay_exact_on_the_forced_fallback_path() {
    let out = run_child(
        "child_forced_fallback",
        &[("PERCPU_FORCE_FALLBACK", "1")],
        None,
    );
    assert_child_passed("child_forced_fallback", &out);
}

#[test]
#[ignore = "run in a child by counters_stay_exact_on_the_forced_fallback_path"]
fn child_forced_fallback() {
    assert!(percpu::forced_fallback());
    let modes = check(default_plan());
    assert!(
        modes
            .iter()
            .all(|m| *m == Mode::Fallback(FallbackReason::Forced)),
        "{modes:?}"
    );
}

/// Threads with and without rseq share the counters: rseq commits (plain stores) and atomic adds
/// must never meet on one slot.
#[test]
fn counters_stay_exact_when_threads_with_and_without_rseq_share_them() {
    let out = run_child(
        "child_mixed_paths",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        None,
    );
    assert_child_passed("child_mixed_paths", &out);
}

#[test]
#[ignore = "run in a child by counters_stay_exact_when_threads_with_and_without_rseq_share_them"]
fn child_mixed_paths() {
    assert_eq!(rseq_sys::status().owner, rseq_sys::Owner::Own);
    let modes = check(Plan {
        unregister_odd: true,
        ..default_plan()
    });
    let fallback = modes
        .iter()
        .filter(|m| matches!(m, Mode::Fallback(FallbackReason::NoRseq(_))))
        .count();
    let rseq = modes
        .iter()
        .filter(|m| matches!(m, Mode::Rseq { .. }))
        .count();
    assert!(fallback > 0 && rseq > 0, "{modes:?}");
}
