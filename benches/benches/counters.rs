//! Counter increments per thread, 1 … 2× CPUs threads, threads started before timing.
//!
//! `benches/run.sh counters` runs this twice (rseq, then `PERCPU_FORCE_FALLBACK=1`) and tabulates
//! both runs side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use percpu_benches::{Crew, Padded, RawRseqSlots, SchedSlots, thread_counts, thread_local_inc};

fn bench_contender<F: Fn() + Send + Sync + 'static>(c: &mut Criterion, name: &str, op: F) {
    let op = Arc::new(op);
    let mut group = c.benchmark_group(format!("counter/{name}"));
    for threads in thread_counts() {
        let crew = {
            let op = op.clone();
            Crew::new(threads, move || op())
        };
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| crew.round(iters))
        });
    }
    group.finish();
}

fn counters(c: &mut Criterion) {
    let percpu_name = match percpu::mode() {
        percpu::Mode::Rseq { .. } => "percpu_rseq",
        percpu::Mode::Fallback(_) => "percpu_fallback",
    };
    let counter = Arc::new(percpu::Counter::new());
    bench_contender(c, percpu_name, move || counter.inc());
    if percpu::forced_fallback() {
        return; // The other contenders do not depend on the mode: measured in the rseq run.
    }
    if rseq_sys::current().and_then(|c| c.sequences()).is_some() {
        let raw = Arc::new(RawRseqSlots::new());
        bench_contender(c, "rseq_sys_raw_add", move || raw.inc());
    }
    let shared = Arc::new(Padded(AtomicU64::new(0)));
    bench_contender(c, "shared_atomic", move || {
        shared.0.fetch_add(1, Ordering::Relaxed);
    });
    let sched = Arc::new(SchedSlots::new());
    bench_contender(c, "sched_getcpu_atomic", move || sched.inc());
    bench_contender(c, "thread_local", thread_local_inc);
}

criterion_group! {
    name = benches;
    config = percpu_benches::criterion_config();
    targets = counters
}
criterion_main!(benches);
