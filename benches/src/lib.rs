//! Shared pieces of the benchmarks: a crew of threads started before timing, and the counter
//! contenders compared against `percpu::Counter`.
#![allow(missing_docs, missing_debug_implementations)]

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `threads` threads that each run `op` a given number of times per round, started once; only
/// the rounds are timed.
pub struct Crew {
    shared: Arc<CrewShared>,
    handles: Vec<JoinHandle<()>>,
}

struct CrewShared {
    start: Barrier,
    end: Barrier,
    iters: AtomicU64,
    quit: AtomicBool,
}

impl Crew {
    pub fn new<F: Fn() + Send + Sync + 'static>(threads: usize, op: F) -> Crew {
        let shared = Arc::new(CrewShared {
            start: Barrier::new(threads + 1),
            end: Barrier::new(threads + 1),
            iters: AtomicU64::new(0),
            quit: AtomicBool::new(false),
        });
        let op = Arc::new(op);
        let handles = (0..threads)
            .map(|_| {
                let (shared, op) = (shared.clone(), op.clone());
                std::thread::spawn(move || {
                    loop {
                        shared.start.wait();
                        if shared.quit.load(Ordering::Relaxed) {
                            return;
                        }
                        for _ in 0..shared.iters.load(Ordering::Relaxed) {
                            op();
                        }
                        shared.end.wait();
                    }
                })
            })
            .collect();
        Crew { shared, handles }
    }

    /// Every thread runs `op` `iters` times; returns the wall time of the round.
    ///
    /// The clock starts before the barrier that releases the threads, not after it: a timer
    /// started once this thread is past the barrier would miss the work done while it waited for
    /// a CPU, all of it if it waited the whole round (on a busy machine, rounds then read as
    /// a few µs, an alloc + free pair as 0.2 ns). This way a round's time can only be too long,
    /// by the threads' wake-up.
    pub fn round(&self, iters: u64) -> Duration {
        self.shared.iters.store(iters, Ordering::Relaxed);
        let t0 = Instant::now();
        self.shared.start.wait();
        self.shared.end.wait();
        t0.elapsed()
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Relaxed);
        self.shared.start.wait();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// 1, 2, 4, ... up to and including 2 × the CPUs this process may use.
pub fn thread_counts() -> Vec<usize> {
    let max = 2 * num_cpus::get().max(1);
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n < max)
        .collect();
    counts.push(max);
    counts
}

#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Padded slots indexed by `sched_getcpu()`, added to atomically.
pub struct SchedSlots(Vec<Padded<AtomicU64>>);

impl SchedSlots {
    pub fn new() -> SchedSlots {
        SchedSlots(
            (0..rseq_sys::possible_cpus())
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
        )
    }
    #[inline]
    pub fn inc(&self) {
        let cpu = rseq_sys::sched_getcpu().unwrap_or(0) as usize;
        self.0[cpu % self.0.len()].0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for SchedSlots {
    fn default() -> Self {
        Self::new()
    }
}

/// rseq-sys's per-CPU add on padded slots, with nothing around it but the retry loop: the floor
/// `percpu::Counter::inc` is compared with.
pub struct RawRseqSlots(Vec<Padded<UnsafeCell<i64>>>);

// SAFETY: slots are written only by commit sequences on their own index.
unsafe impl Sync for RawRseqSlots {}

impl RawRseqSlots {
    pub fn new() -> RawRseqSlots {
        RawRseqSlots(
            (0..rseq_sys::possible_cpus())
                .map(|_| Padded(UnsafeCell::new(0)))
                .collect(),
        )
    }
    #[inline]
    pub fn inc(&self) {
        let current = rseq_sys::current().expect("rseq for the raw contender");
        let seq = current
            .sequences()
            .expect("sequences for the raw contender");
        let index = current.best_index();
        loop {
            let id = current.index(index);
            let slot = self.0[id as usize].0.get();
            // SAFETY: the slot is only written by sequences on index `id`.
            if let rseq_sys::Outcome::Committed(()) = unsafe { seq.add(index, id, slot, 1) } {
                return;
            }
        }
    }
}

impl Default for RawRseqSlots {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static LOCAL: Cell<u64> = const { Cell::new(0) };
}

/// A thread-local plain add: the floor no shared counter can beat.
#[inline]
pub fn thread_local_inc() {
    LOCAL.with(|c| c.set(std::hint::black_box(c.get()) + 1));
}

/// The criterion settings every benchmark here uses: short warm-up and measurement, so a whole
/// family runs in a minute or two on a small machine.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20)
}

/// Nanoseconds per call of `op`, over `calls` calls (for the alternating A/B examples).
pub fn ns_per_call(calls: u64, mut op: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    for _ in 0..calls {
        op();
    }
    t0.elapsed().as_nanos() as f64 / calls as f64
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round's time covers all of its work, even on a machine with more busy threads than
    /// CPUs: the thread that times it may wait for a CPU after releasing the crew, and a clock
    /// started then missed what the crew did meanwhile (rounds of a few µs, pairs of 0.2 ns).
    #[test]
    fn a_round_takes_at_least_the_work_in_it() {
        const SPIN: Duration = Duration::from_micros(200);
        const ITERS: u64 = 5;
        let crew = Crew::new(4 * num_cpus::get(), || {
            let start = Instant::now();
            while start.elapsed() < SPIN {
                std::hint::spin_loop();
            }
        });
        for round in 0..40 {
            let took = crew.round(ITERS);
            assert!(
                took >= SPIN * ITERS as u32,
                "round {round} took {took:?}, less than one thread's {:?} of spinning",
                SPIN * ITERS as u32
            );
        }
    }
}
