//! Freelist exactness under stress, in both paths: many more threads than CPUs pushing and
//! popping while they yield, migrate, take signals and race a draining thread. At the end every
//! object is present exactly once (count and identity), and the statistics counted every push
//! and pop.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{
    Rng, SignalStorm, allowed_cpus, assert_child_passed, run_child, scaled, set_affinity,
    stress_threads,
};
use percpu::{FallbackReason, Mode, RawFreeList};

const OPS_PER_THREAD: usize = 60_000;
const OBJECTS_PER_THREAD: usize = 48;
/// Drains that must overlap the workers in every churn run.
const MIN_DRAINS: usize = 3;

/// Object `n` (1-based) as a fake, never-dereferenced block address.
fn object(n: usize) -> NonNull<u8> {
    NonNull::new((n * 64) as *mut u8).unwrap()
}

fn id(block: NonNull<u8>) -> usize {
    block.as_ptr() as usize / 64
}

/// Takes everything out (draining other CPUs' caches) and checks it is exactly 1..=objects.
fn assert_exactly_once(list: &RawFreeList, objects: usize) {
    list.drain().expect("drain");
    let mut seen: Vec<usize> = std::iter::from_fn(|| list.pop_global()).map(id).collect();
    seen.sort_unstable();
    let duplicates = seen.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(duplicates, 0, "objects handed out twice");
    assert_eq!(
        seen.len(),
        objects,
        "objects lost: {} of {objects} present",
        seen.len()
    );
    assert_eq!(seen, (1..=objects).collect::<Vec<_>>());
    // Every push and pop of the churn was counted: all pushed, all popped again.
    let stats = list.stats();
    assert_eq!(stats.pushes, stats.pops, "{stats:?}");
    assert!(stats.pops >= objects as u64, "{stats:?}");
}

#[derive(Clone, Copy)]
struct Plan {
    threads: usize,
    pin_to: Option<usize>,
    unregister_odd: bool,
    capacity: usize,
}

fn churn(plan: Plan) -> Vec<Mode> {
    let objects = plan.threads * OBJECTS_PER_THREAD;
    let list = RawFreeList::new(plan.capacity).unwrap();
    for n in 1..=objects {
        list.push(object(n)).unwrap();
    }
    let allowed = allowed_cpus();
    let storm = SignalStorm::start(plan.threads);
    let stop_draining = AtomicBool::new(false);
    let drains = AtomicUsize::new(0);
    let modes = std::thread::scope(|s| {
        let drainer = s.spawn(|| {
            while !stop_draining.load(Ordering::Relaxed) {
                // A locked cache whose holder stays preempted past the drain's patience is left
                // for the next drain; anything else is a failure.
                match list.drain() {
                    Ok(_) | Err(percpu::FreeListError::CacheBusy) => {}
                    Err(e) => panic!("drain while others run: {e}"),
                }
                drains.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        });
        let workers: Vec<_> = (0..plan.threads)
            .map(|t| {
                let (list, allowed, storm, drains) = (&list, &allowed, storm.handle(), &drains);
                s.spawn(move || {
                    storm.enlist(t);
                    if plan.unregister_odd && t % 2 == 1 {
                        rseq_sys::unregister_current_thread().expect("own registration");
                    }
                    if let Some(cpu) = plan.pin_to {
                        set_affinity(&[cpu]);
                    }
                    let mode = percpu::mode();
                    let mut rng = Rng::new(t as u64 + 99);
                    let mut held: Vec<NonNull<u8>> = Vec::with_capacity(64);
                    let started = std::time::Instant::now();
                    let mut i = 0;
                    // At least the scaled op count; past that, keep going (up to 30 s) until a
                    // few drains have run concurrently, so no run passes without racing one.
                    while i < scaled(OPS_PER_THREAD)
                        || (drains.load(Ordering::Relaxed) < MIN_DRAINS
                            && started.elapsed() < std::time::Duration::from_secs(30))
                    {
                        i += 1;
                        let pop = held.is_empty() || (held.len() < 64 && rng.below(2) == 0);
                        if pop {
                            if let Some(b) = list.pop() {
                                held.push(b);
                            }
                        } else {
                            let at = rng.below(held.len() as u64) as usize;
                            list.push(held.swap_remove(at)).unwrap();
                        }
                        if i % 509 == 0 {
                            std::thread::yield_now();
                        }
                        if plan.pin_to.is_none() && i % 4099 == 0 {
                            set_affinity(&[allowed[rng.below(allowed.len() as u64) as usize]]);
                        }
                    }
                    for b in held {
                        list.push(b).unwrap();
                    }
                    storm.leave(t);
                    mode
                })
            })
            .collect();
        let modes: Vec<Mode> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        stop_draining.store(true, Ordering::Relaxed);
        drainer.join().unwrap();
        modes
    });
    assert!(storm.finish() > 0, "the signal storm sent nothing");
    assert!(
        drains.load(Ordering::Relaxed) >= MIN_DRAINS,
        "only {} drains overlapped the workers",
        drains.load(Ordering::Relaxed)
    );
    assert_exactly_once(&list, objects);
    modes
}

fn default_plan() -> Plan {
    Plan {
        threads: stress_threads(),
        pin_to: None,
        unregister_odd: false,
        capacity: 16,
    }
}

#[test]
fn every_object_survives_churn_on_the_rseq_path() {
    let modes = churn(default_plan());
    assert!(
        modes.iter().all(|m| matches!(m, Mode::Rseq { .. })),
        "{modes:?}"
    );
}

#[test]
fn every_object_survives_churn_with_a_capacity_of_one() {
    // Every second push overflows and every second pop refills: the global level works hardest.
    churn(Plan {
        capacity: 1,
        ..default_plan()
    });
}

#[test]
fn every_object_survives_threads_pinned_to_one_cpu() {
    churn(Plan {
        threads: 6,
        pin_to: Some(allowed_cpus()[0]),
        ..default_plan()
    });
}

#[test]
fn every_object_survives_churn_on_the_forced_fallback_path() {
    let out = run_child(
        "child_forced_fallback",
        &[("PERCPU_FORCE_FALLBACK", "1")],
        None,
    );
    assert_child_passed("child_forced_fallback", &out);
}

#[test]
#[ignore = "run in a child by every_object_survives_churn_on_the_forced_fallback_path"]
fn child_forced_fallback() {
    let modes = churn(default_plan());
    assert!(
        modes
            .iter()
            .all(|m| *m == Mode::Fallback(FallbackReason::Forced)),
        "{modes:?}"
    );
}

/// Threads with and without rseq share one freelist: fallback threads must never write a
/// per-CPU cache.
#[test]
fn every_object_survives_threads_with_and_without_rseq_sharing_a_list() {
    let out = run_child(
        "child_mixed_paths",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        None,
    );
    assert_child_passed("child_mixed_paths", &out);
}

#[test]
#[ignore = "run in a child by every_object_survives_threads_with_and_without_rseq_sharing_a_list"]
fn child_mixed_paths() {
    let modes = churn(Plan {
        unregister_odd: true,
        ..default_plan()
    });
    assert!(
        modes.iter().any(|m| matches!(m, Mode::Rseq { .. })),
        "{modes:?}"
    );
    assert!(
        modes.iter().any(|m| matches!(m, Mode::Fallback(_))),
        "{modes:?}"
    );
}

/// Producers on one CPU only push, consumers on another only pop: items must flow through the
/// global level in batches, and all arrive once the producers' caches are drained.
#[test]
fn producers_and_consumers_on_different_cpus_exchange_every_object() {
    let allowed = allowed_cpus();
    let (producer_cpu, consumer_cpu) = (allowed[0], allowed[allowed.len() - 1]);
    const PAIRS: usize = 4;
    let per_producer = scaled(20_000);
    let list = RawFreeList::new(32).unwrap();
    let produced = AtomicUsize::new(0);
    let received = std::thread::scope(|s| {
        for p in 0..PAIRS {
            let (list, produced) = (&list, &produced);
            s.spawn(move || {
                set_affinity(&[producer_cpu]);
                for n in 0..per_producer {
                    list.push(object(1 + p * per_producer + n)).unwrap();
                }
                produced.fetch_add(1, Ordering::Release);
            });
        }
        let consumers: Vec<_> = (0..PAIRS)
            .map(|_| {
                let (list, produced) = (&list, &produced);
                s.spawn(move || {
                    set_affinity(&[consumer_cpu]);
                    let mut got = Vec::new();
                    loop {
                        match list.pop() {
                            Some(b) => got.push(id(b)),
                            None if produced.load(Ordering::Acquire) == PAIRS => break,
                            None => std::thread::yield_now(),
                        }
                    }
                    got
                })
            })
            .collect();
        consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    // The producers' last partial batches sit in their CPU's cache until drained.
    list.drain().unwrap();
    let mut all: Vec<usize> = received
        .into_iter()
        .chain(std::iter::from_fn(|| list.pop_global()).map(id))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=PAIRS * per_producer).collect::<Vec<_>>());
}
