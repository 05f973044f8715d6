//! Alternating rounds of small alloc+free pairs (one thread) for PerCpuAlloc, mimalloc,
//! jemalloc and glibc, each used as a value; prints median ns per pair and ratios to PerCpuAlloc.
//! `cargo run --release -p percpu-benches --example alloc_ab [ROUNDS] [PAIRS]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use mimalloc::MiMalloc;
use percpu::PerCpuAlloc;
use percpu_benches::{median, ns_per_call};
use tikv_jemallocator::Jemalloc;

static PERCPU: PerCpuAlloc = PerCpuAlloc::new();

/// ns per alloc+free pair of `size` bytes; generic, so each allocator is called directly as
/// a `#[global_allocator]` would be.
fn pairs<A: GlobalAlloc>(alloc: &A, size: usize, n: u64) -> f64 {
    let l = Layout::from_size_align(size, 8).unwrap();
    ns_per_call(n, || {
        // SAFETY: a valid layout; freed at once with it.
        unsafe {
            let p = alloc.alloc(l);
            alloc.dealloc(black_box(p), l);
        }
    })
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let rounds = args.next().unwrap_or(11);
    let n = args.next().unwrap_or(5_000_000);
    let names = ["percpu", "mimalloc", "jemalloc", "glibc"];
    println!("mode: {}", percpu::mode());
    for size in [16, 64, 256, 1024, 4096] {
        let mut times = vec![Vec::new(); names.len()];
        // Every round runs every allocator back to back, so drift hits all of them alike.
        for _ in 0..rounds {
            times[0].push(pairs(&PERCPU, size, n));
            times[1].push(pairs(&MiMalloc, size, n));
            times[2].push(pairs(&Jemalloc, size, n));
            times[3].push(pairs(&System, size, n));
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        let cells: Vec<String> = names
            .iter()
            .zip(&medians)
            .map(|(name, t)| format!("{name} {t:.2} ns ({:.2}×)", t / medians[0]))
            .collect();
        println!("{size:>5} B: {}", cells.join(", "));
    }
}
