//! The side-by-side demo `percpu` runs by default: `percpu::Counter` against one shared atomic
//! and against padded atomics indexed by `sched_getcpu()`, from 1 thread to 2× the CPUs.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// A way to count increments from many threads.
pub trait Contender: Sync {
    fn name(&self) -> &'static str;
    fn inc(&self);
    fn total(&self) -> u64;
}

struct PerCpu(percpu::Counter);
impl Contender for PerCpu {
    fn name(&self) -> &'static str {
        "percpu::Counter"
    }
    #[inline]
    fn inc(&self) {
        self.0.inc();
    }
    fn total(&self) -> u64 {
        self.0.sum() as u64
    }
}

struct Shared(CachePadded<AtomicU64>);
impl Contender for Shared {
    fn name(&self) -> &'static str {
        "shared AtomicU64"
    }
    #[inline]
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct SchedSharded(Vec<CachePadded<AtomicU64>>);
impl Contender for SchedSharded {
    fn name(&self) -> &'static str {
        "sched_getcpu slots"
    }
    #[inline]
    fn inc(&self) {
        let cpu = rseq_sys::sched_getcpu().unwrap_or(0) as usize;
        self.0[cpu % self.0.len()].fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.0.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// One measurement: per-thread cost of one increment.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub ns_per_op: f64,
    pub exact: bool,
}

/// Runs `threads` threads incrementing for `duration`; threads start before the clock does.
pub fn measure(contender: &dyn Contender, threads: usize, duration: Duration) -> Cell {
    let start = Arc::new(Barrier::new(threads + 1));
    let stop = AtomicBool::new(false);
    let before = contender.total();
    let (ops, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (start, stop) = (start.clone(), &stop);
                s.spawn(move || {
                    start.wait();
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            contender.inc();
                        }
                        ops += 256;
                    }
                    ops
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        (ops, t0.elapsed())
    });
    Cell {
        ns_per_op: elapsed.as_nanos() as f64 * threads as f64 / ops.max(1) as f64,
        exact: contender.total() - before == ops,
    }
}

/// 1, 2, 4, ... up to and including 2 × `cpus`.
pub fn thread_counts(cpus: usize) -> Vec<usize> {
    let max = 2 * cpus.max(1);
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n < max)
        .collect();
    counts.push(max);
    counts
}

/// Runs the demo for about `total` and prints the table to stdout (progress to stderr).
pub fn run(total: Duration) {
    let cpus = num_cpus::get();
    let contenders: Vec<Box<dyn Contender>> = vec![
        Box::new(PerCpu(percpu::Counter::new())),
        Box::new(Shared(CachePadded::new(AtomicU64::new(0)))),
        Box::new(SchedSharded(
            (0..rseq_sys::possible_cpus())
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        )),
    ];
    let counts = thread_counts(cpus);
    let cells = counts.len() * contenders.len();
    let per_cell = total / cells as u32;
    println!(
        "\nper-CPU counter demo: ns per increment per thread ({} CPUs, {:.2} s per cell, counter path: {})",
        cpus,
        per_cell.as_secs_f64(),
        percpu::mode()
    );
    let mut rows = Vec::new();
    let mut done = 0;
    for &threads in &counts {
        let mut row = Vec::new();
        for c in &contenders {
            done += 1;
            eprint!(
                "\r  measuring {done}/{cells}: {:<20} {threads:>3} threads ",
                c.name()
            );
            let _ = std::io::stderr().flush();
            row.push(measure(c.as_ref(), threads, per_cell));
        }
        rows.push((threads, row));
    }
    eprint!("\r{:70}\r", "");
    print!("{:>7}", "threads");
    for c in &contenders {
        print!(" {:>20}", c.name());
    }
    println!(" {:>15} {:>15}", "vs shared", "vs sched_getcpu");
    for (threads, row) in rows {
        print!("{threads:>7}");
        for cell in &row {
            let mark = if cell.exact { "" } else { " (inexact!)" };
            print!(" {:>17.2} ns{mark}", cell.ns_per_op);
        }
        println!(
            " {:>14.1}× {:>14.1}×",
            row[1].ns_per_op / row[0].ns_per_op,
            row[2].ns_per_op / row[0].ns_per_op
        );
    }
}

#[cfg(test)]
mod tests {
    use super::thread_counts;

    #[test]
    fn thread_counts_double_up_to_twice_the_cpus() {
        assert_eq!(thread_counts(1), [1, 2]);
        assert_eq!(thread_counts(2), [1, 2, 4]);
        assert_eq!(thread_counts(3), [1, 2, 4, 6]);
        assert_eq!(thread_counts(16), [1, 2, 4, 8, 16, 32]);
    }
}
