//! Freelist push+pop pairs per thread, 1 … 2× CPUs threads (threads started before timing),
//! against crossbeam's ArrayQueue and SegQueue and a Mutex<Vec>; and a batch shape (32 pushes
//! then 32 pops, reported per pair). `benches/run.sh freelists` runs it in both modes.

use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::{ArrayQueue, SegQueue};
use percpu::RawFreeList;
use percpu_benches::{Crew, thread_counts};

/// A queue-like contender: push an item, pop one.
trait Contender: Send + Sync + 'static {
    fn push(&self, item: usize);
    fn pop(&self) -> Option<usize>;
}

impl Contender for RawFreeList {
    #[inline]
    fn push(&self, item: usize) {
        let block = NonNull::new(item as *mut u8).expect("non-null items");
        let _ = RawFreeList::push(self, block);
    }
    #[inline]
    fn pop(&self) -> Option<usize> {
        RawFreeList::pop(self).map(|b| b.as_ptr() as usize)
    }
}

impl Contender for ArrayQueue<usize> {
    #[inline]
    fn push(&self, item: usize) {
        let _ = ArrayQueue::push(self, item);
    }
    #[inline]
    fn pop(&self) -> Option<usize> {
        ArrayQueue::pop(self)
    }
}

impl Contender for SegQueue<usize> {
    #[inline]
    fn push(&self, item: usize) {
        SegQueue::push(self, item);
    }
    #[inline]
    fn pop(&self) -> Option<usize> {
        SegQueue::pop(self)
    }
}

impl Contender for Mutex<Vec<usize>> {
    #[inline]
    fn push(&self, item: usize) {
        self.lock().unwrap().push(item);
    }
    #[inline]
    fn pop(&self) -> Option<usize> {
        self.lock().unwrap().pop()
    }
}

const BATCH: usize = 32;

fn bench<C: Contender>(c: &mut Criterion, name: &str, make: impl Fn() -> C) {
    for (family, batch) in [("freelist_pair", 1usize), ("freelist_batch", BATCH)] {
        let mut group = c.benchmark_group(format!("{family}/{name}"));
        for threads in thread_counts() {
            let list = Arc::new(make());
            let crew = Crew::new(threads, move || {
                for i in 0..batch {
                    list.push(0x1000 + i * 64);
                }
                for _ in 0..batch {
                    black_box(list.pop());
                }
            });
            group.throughput(Throughput::Elements((threads * batch) as u64));
            group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                b.iter_custom(|iters| crew.round(iters) / batch as u32)
            });
        }
        group.finish();
    }
}

fn freelists(c: &mut Criterion) {
    let percpu_name = match percpu::mode() {
        percpu::Mode::Rseq { .. } => "percpu_rseq",
        percpu::Mode::Fallback(_) => "percpu_fallback",
    };
    bench(c, percpu_name, || RawFreeList::new(64).unwrap());
    if percpu::forced_fallback() {
        return; // The peers do not depend on the mode: measured in the rseq run.
    }
    let capacity = 2 * BATCH * thread_counts().last().copied().unwrap_or(1);
    bench(c, "crossbeam_array_queue", || ArrayQueue::new(capacity));
    bench(c, "crossbeam_seg_queue", SegQueue::new);
    bench(c, "mutex_vec", || Mutex::new(Vec::with_capacity(capacity)));
}

criterion_group! {
    name = benches;
    config = percpu_benches::criterion_config();
    targets = freelists
}
criterion_main!(benches);
