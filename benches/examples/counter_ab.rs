//! A/B of `percpu::Counter::inc` against rseq-sys's raw per-CPU add on one thread, alternating
//! rounds so machine drift hits both equally. Prints the median ns/op of each and the ratio;
//! without rseq (run it under `benches/malloc/norseq.c`), the counter's fallback alone.
//! `cargo run --release -p percpu-benches --example counter_ab [ROUNDS] [OPS]`

use percpu_benches::{RawRseqSlots, median, ns_per_call};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let rounds = args.next().unwrap_or(11);
    let ops = args.next().unwrap_or(50_000_000);
    let counter = percpu::Counter::new();
    if rseq_sys::current().is_none() {
        // No rseq (a seccomp filter, an old kernel): the counter's fallback alone.
        let a = median(
            (0..rounds)
                .map(|_| ns_per_call(ops, || counter.inc()))
                .collect(),
        );
        assert_eq!(
            counter.sum() as u64,
            rounds * ops,
            "counter lost increments"
        );
        println!("mode: {}", percpu::mode());
        println!("percpu::Counter::inc  {a:.3} ns/op (no rseq: no raw add to compare)");
        return;
    }
    let raw = RawRseqSlots::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(ns_per_call(ops, || counter.inc()));
        b.push(ns_per_call(ops, || raw.inc()));
    }
    assert_eq!(
        counter.sum() as u64,
        rounds * ops,
        "counter lost increments"
    );
    let (a, b) = (median(a), median(b));
    println!("mode: {}", percpu::mode());
    println!("percpu::Counter::inc  {a:.3} ns/op");
    println!("rseq-sys raw add      {b:.3} ns/op");
    println!("ratio                 {:.3}×", a / b);
}
