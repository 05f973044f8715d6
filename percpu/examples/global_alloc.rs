//! `PerCpuAlloc` as the program's global allocator: worker threads build and drop collections,
//! then the allocator's statistics are printed before and after `trim()`.
//!
//! `cargo run --release -p percpu --example global_alloc`

use std::collections::HashMap;

#[cfg(not(feature = "global-allocator"))]
use percpu::PerCpuAlloc;

#[cfg(not(feature = "global-allocator"))]
#[global_allocator]
static GLOBAL: PerCpuAlloc = PerCpuAlloc::new();
// (With the `global-allocator` feature, percpu has installed one already.)
#[cfg(feature = "global-allocator")]
use percpu::GLOBAL_ALLOCATOR as GLOBAL;

fn main() {
    println!("path: {}", percpu::mode());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let words: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut counts: HashMap<String, usize> = HashMap::new();
                    for i in 0..200_000usize {
                        let word = format!("w{}", (i * 7919 + t) % 5000);
                        *counts.entry(word).or_default() += 1;
                    }
                    counts.values().sum::<usize>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(words, threads * 200_000);
    println!("{threads} threads counted {words} words\n");
    println!("{}\n", GLOBAL.stats());
    let released = GLOBAL.trim();
    println!("trim() released {} KiB\n", released >> 10);
    println!("{}", GLOBAL.stats());
}
