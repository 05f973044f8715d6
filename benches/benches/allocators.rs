//! Allocators used as values through `GlobalAlloc`: `PerCpuAlloc` against glibc (`System`),
//! mimalloc and jemalloc. Shapes:
//! - `alloc_pair/<size>`: one thread, alloc + free of one size (16 B … 4 KiB);
//! - `alloc_batch/<threads>`: each thread allocates 1,000 blocks of 64 B, then frees them
//!   (reported per block);
//! - `alloc_mixed/<threads>`: each thread allocs and frees a rotating mix of sizes (16 B … 2 KiB)
//!   with 32 blocks live, 1 … 2× CPUs threads;
//! - `alloc_xthread/<threads>`: threads in pairs, one allocating and handing blocks over a queue
//!   to the other, which frees them (reported per block).
//!
//! `benches/run.sh allocators` runs it in both modes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use mimalloc::MiMalloc;
use percpu::PerCpuAlloc;
use percpu_benches::{Crew, thread_counts};
use tikv_jemallocator::Jemalloc;

const BATCH: usize = 1000;
const MIXED_SIZES: [usize; 8] = [16, 24, 48, 64, 100, 256, 640, 2048];
const MIXED_LIVE: usize = 32;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn pairs<A: GlobalAlloc>(c: &mut Criterion, name: &str, alloc: &'static A) {
    let mut group = c.benchmark_group(format!("alloc_pair/{name}"));
    for size in [16, 64, 256, 1024, 4096] {
        let l = layout(size);
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                // SAFETY: a valid layout; the block is freed at once with it.
                unsafe {
                    let p = alloc.alloc(l);
                    alloc.dealloc(black_box(p), l);
                }
            })
        });
    }
    group.finish();
}

/// Blocks one thread keeps between calls of a crew operation.
struct Held(Cell<[usize; MIXED_LIVE]>, Cell<usize>);

thread_local! {
    static HELD: Held = const { Held(Cell::new([0; MIXED_LIVE]), Cell::new(0)) };
    static ROLE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn threaded<A: GlobalAlloc + Sync>(c: &mut Criterion, name: &str, alloc: &'static A) {
    let mut group = c.benchmark_group(format!("alloc_batch/{name}"));
    for threads in thread_counts() {
        let crew = Crew::new(threads, move || {
            let l = layout(64);
            let mut blocks = [std::ptr::null_mut(); BATCH];
            for b in &mut blocks {
                // SAFETY: a valid layout.
                *b = unsafe { alloc.alloc(l) };
            }
            for &b in black_box(&blocks) {
                // SAFETY: allocated above with `l`.
                unsafe { alloc.dealloc(b, l) };
            }
        });
        group.throughput(Throughput::Elements((threads * BATCH) as u64));
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| crew.round(iters) / BATCH as u32)
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("alloc_mixed/{name}"));
    for threads in thread_counts() {
        let crew = Crew::new(threads, move || {
            HELD.with(|held| {
                // Replace the oldest of MIXED_LIVE live blocks with one of the next size.
                let n = held.1.get();
                let mut slots = held.0.get();
                let slot = n % MIXED_LIVE;
                if slots[slot] != 0 {
                    let old = MIXED_SIZES[(n - MIXED_LIVE) % MIXED_SIZES.len()];
                    // SAFETY: allocated MIXED_LIVE calls ago with this size.
                    unsafe { alloc.dealloc(slots[slot] as *mut u8, layout(old)) };
                }
                // SAFETY: a valid layout.
                slots[slot] =
                    unsafe { alloc.alloc(layout(MIXED_SIZES[n % MIXED_SIZES.len()])) } as usize;
                held.0.set(slots);
                held.1.set(n + 1);
            });
        });
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| crew.round(iters))
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("alloc_xthread/{name}"));
    for threads in thread_counts().into_iter().filter(|t| t.is_multiple_of(2)) {
        let queues: Arc<Vec<ArrayQueue<usize>>> =
            Arc::new((0..threads / 2).map(|_| ArrayQueue::new(256)).collect());
        let next_role = Arc::new(AtomicUsize::new(0));
        let crew = Crew::new(threads, move || {
            let role = ROLE.with(|r| {
                if r.get() == usize::MAX {
                    r.set(next_role.fetch_add(1, Ordering::Relaxed));
                }
                r.get()
            });
            let queue = &queues[(role / 2) % queues.len()];
            let l = layout(64);
            if role.is_multiple_of(2) {
                // SAFETY: a valid layout; the consumer frees it with the same layout.
                let mut block = unsafe { alloc.alloc(l) } as usize;
                while let Err(back) = queue.push(block) {
                    block = back;
                    wait();
                }
            } else {
                let block = loop {
                    if let Some(b) = queue.pop() {
                        break b;
                    }
                    wait();
                };
                // SAFETY: allocated by the producer with `l`.
                unsafe { alloc.dealloc(block as *mut u8, l) };
            }
        });
        group.throughput(Throughput::Elements(threads as u64 / 2));
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| crew.round(iters))
        });
    }
    group.finish();
}

/// Waiting for the other side of a pair: with more threads than CPUs it may not be running, so
/// give it the CPU rather than spin out a time slice.
fn wait() {
    std::thread::yield_now();
}

static PERCPU: PerCpuAlloc = PerCpuAlloc::new();
static MIMALLOC: MiMalloc = MiMalloc;
static JEMALLOC: Jemalloc = Jemalloc;
static SYSTEM: System = System;

fn allocators(c: &mut Criterion) {
    let percpu_name = match percpu::mode() {
        percpu::Mode::Rseq { .. } => "percpu_rseq",
        percpu::Mode::Fallback(_) => "percpu_fallback",
    };
    pairs(c, percpu_name, &PERCPU);
    threaded(c, percpu_name, &PERCPU);
    if percpu::forced_fallback() {
        return; // The peers do not depend on the mode: measured in the rseq run.
    }
    pairs(c, "mimalloc", &MIMALLOC);
    threaded(c, "mimalloc", &MIMALLOC);
    pairs(c, "jemalloc", &JEMALLOC);
    threaded(c, "jemalloc", &JEMALLOC);
    pairs(c, "glibc", &SYSTEM);
    threaded(c, "glibc", &SYSTEM);
}

criterion_group! {
    name = benches;
    config = percpu_benches::criterion_config();
    targets = allocators
}
criterion_main!(benches);
