//! loom models of the counter protocol. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p percpu --test loom_counter --release`.
//!
//! An rseq sequence on a CPU either commits with no other code running on that CPU in between, or
//! aborts; so a committed sequence is modelled as holding that CPU's try-lock for its plain load
//! and store, and an abort as the try-lock failing (then the thread retries). Fallback adds are
//! relaxed `fetch_add`s from any CPU, readers use relaxed loads, and `take` swaps the baseline, as
//! in `percpu/src/counter.rs`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use loom::thread;

const CPUS: usize = 2;

struct Model {
    rseq: [AtomicI64; CPUS],
    shards: [AtomicI64; CPUS],
    cpu_held: [AtomicBool; CPUS],
    baseline: AtomicI64,
    /// The design error the real layout avoids: fallback adds into the rseq slots.
    fallback_into_rseq_slots: bool,
}

impl Model {
    fn new(fallback_into_rseq_slots: bool) -> Arc<Model> {
        Arc::new(Model {
            rseq: [AtomicI64::new(0), AtomicI64::new(0)],
            shards: [AtomicI64::new(0), AtomicI64::new(0)],
            cpu_held: [AtomicBool::new(false), AtomicBool::new(false)],
            baseline: AtomicI64::new(0),
            fallback_into_rseq_slots,
        })
    }

    /// The rseq path: a load and a commit store, with the CPU held in between.
    fn rseq_add(&self, cpu: usize, value: i64) {
        loop {
            if self.cpu_held[cpu]
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let old = self.rseq[cpu].load(Ordering::Relaxed);
                self.rseq[cpu].store(old.wrapping_add(value), Ordering::Relaxed);
                self.cpu_held[cpu].store(false, Ordering::Release);
                return;
            }
            thread::yield_now(); // aborted: another sequence had this CPU; retry
        }
    }

    /// The fallback path: a relaxed atomic add on the shard of the CPU it last saw.
    fn fallback_add(&self, shard: usize, value: i64) {
        let slot = if self.fallback_into_rseq_slots {
            &self.rseq[shard]
        } else {
            &self.shards[shard]
        };
        slot.fetch_add(value, Ordering::Relaxed);
    }

    fn sum(&self) -> i64 {
        self.rseq
            .iter()
            .chain(&self.shards)
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0, i64::wrapping_add)
    }

    fn take(&self) -> i64 {
        let sum = self.sum();
        sum.wrapping_sub(self.baseline.swap(sum, Ordering::Relaxed))
    }
}

fn bounded() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder
}

/// Two rseq threads preempting each other on CPU 0, and a fallback thread on the same CPU's
/// index from elsewhere: the total is exact.
#[test]
fn rseq_and_fallback_adds_are_exact() {
    bounded().check(|| {
        let m = Model::new(false);
        let threads: Vec<_> = [(0usize, true, 3i64), (0, true, 5), (0, false, 7)]
            .into_iter()
            .map(|(cpu, rseq, value)| {
                let m = m.clone();
                thread::spawn(move || {
                    if rseq {
                        m.rseq_add(cpu, value);
                    } else {
                        m.fallback_add(cpu, value);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.sum(), 15);
    });
}

/// A reporter taking while both paths add: the takes plus a final take count every add once.
#[test]
fn take_counts_every_add_exactly_once() {
    bounded().check(|| {
        let m = Model::new(false);
        let rseq = {
            let m = m.clone();
            thread::spawn(move || {
                m.rseq_add(1, 4);
                m.rseq_add(0, -1);
            })
        };
        let fallback = {
            let m = m.clone();
            thread::spawn(move || m.fallback_add(0, 10))
        };
        let reporter = {
            let m = m.clone();
            thread::spawn(move || m.take() + m.take())
        };
        rseq.join().unwrap();
        fallback.join().unwrap();
        let taken = reporter.join().unwrap();
        assert_eq!(taken + m.take(), 13);
        assert_eq!(m.take(), 0);
    });
}

/// The fallback alone (no thread has rseq): relaxed shard adds are exact.
#[test]
fn fallback_path_alone_is_exact() {
    bounded().check(|| {
        let m = Model::new(false);
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let m = m.clone();
                thread::spawn(move || m.fallback_add(i % CPUS, i as i64 + 1))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.sum(), 6);
    });
}

/// Negative control: if fallback adds shared the rseq slots, an atomic add landing between a
/// sequence's load and commit store would be lost. loom must find that interleaving.
#[test]
#[should_panic(expected = "lost update")]
fn fallback_adds_into_rseq_slots_would_lose_updates() {
    bounded().check(|| {
        let m = Model::new(true);
        let rseq = {
            let m = m.clone();
            thread::spawn(move || m.rseq_add(0, 1))
        };
        let fallback = {
            let m = m.clone();
            thread::spawn(move || m.fallback_add(0, 2))
        };
        rseq.join().unwrap();
        fallback.join().unwrap();
        assert_eq!(m.sum(), 3, "lost update");
    });
}
