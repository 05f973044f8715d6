//! Counter increments at 1 … CPUs threads, timed the way `../shared/anchors/counters.md` times
//! librseq: each thread measures its own CPU time (`CLOCK_THREAD_CPUTIME_ID`) over its
//! increments, so a thread that waits for a CPU is not charged for the wait. Prints, per thread
//! count, the median thread's ns per increment for each contender (median of the rounds, which
//! alternate the contenders) and the ratio of each to `percpu::Counter`; checks that percpu and
//! the shared atomic counted every increment.
//!
//! `cargo run --release -p percpu-benches --example counter_scaling [ROUNDS (3)] [INCS (5000000)]`

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};

use percpu_benches::{RawRseqSlots, SchedSlots, median, thread_local_inc};

/// Everything the contenders add to, shared by all threads of a run.
#[derive(Default)]
struct State {
    counter: percpu::Counter,
    raw: RawRseqSlots,
    shared: AtomicU64,
    sched: SchedSlots,
}

const CONTENDERS: [&str; 5] = [
    "percpu",
    "raw rseq add",
    "sched_getcpu shards",
    "shared atomic",
    "thread-local",
];

/// Contender `i` on `threads` threads: the median thread's CPU ns per increment. Each gets its
/// own monomorphised loop, as a caller's code would, rather than a call through a pointer.
fn run_contender(i: usize, state: &State, threads: usize, incs: u64) -> f64 {
    match i {
        0 => run(|| state.counter.inc(), threads, incs),
        1 => run(|| state.raw.inc(), threads, incs),
        2 => run(|| state.sched.inc(), threads, incs),
        3 => run(
            || {
                state.shared.fetch_add(1, Ordering::Relaxed);
            },
            threads,
            incs,
        ),
        _ => run(thread_local_inc, threads, incs),
    }
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid timespec to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs `inc` on `threads` threads, `incs` times each: the median thread's CPU ns per increment.
fn run(inc: impl Fn() + Sync, threads: usize, incs: u64) -> f64 {
    let start = Barrier::new(threads);
    let mut per_thread: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let t0 = thread_cpu_ns();
                    for _ in 0..incs {
                        inc();
                    }
                    (thread_cpu_ns() - t0) as f64 / incs as f64
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    per_thread.sort_by(f64::total_cmp);
    per_thread[threads / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| {
        a.parse::<u64>()
            .expect("arguments: ROUNDS INCS, as numbers")
    });
    let rounds = args.next().unwrap_or(3).max(1) as usize;
    let incs = args.next().unwrap_or(5_000_000).max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let counts: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n < cpus)
        .chain([cpus])
        .collect();
    println!(
        "mode: {}; {cpus} CPUs; {incs} increments per thread, {rounds} rounds; \
         median thread's CPU ns per increment",
        percpu::mode()
    );
    print!("| threads |");
    for name in CONTENDERS {
        print!(" {name} |");
    }
    println!("\n|---:|{}", "---:|".repeat(CONTENDERS.len()));
    for &threads in &counts {
        let state = State::default();
        let mut samples = vec![Vec::new(); CONTENDERS.len()];
        for round in 0..rounds {
            for k in 0..CONTENDERS.len() {
                let i = (k + round) % CONTENDERS.len();
                samples[i].push(run_contender(i, &state, threads, incs));
            }
        }
        let total = (rounds * threads) as u64 * incs;
        assert_eq!(state.counter.sum() as u64, total, "percpu lost increments");
        assert_eq!(state.shared.load(Ordering::Relaxed), total, "shared atomic");
        let medians: Vec<f64> = samples.into_iter().map(median).collect();
        print!("| {threads} |");
        for m in &medians {
            print!(" {m:.2} ({:.2}×) |", m / medians[0]);
        }
        println!();
    }
}
