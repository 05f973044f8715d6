//! Architectures without commit sequences, simulated on this one with
//! `RUSTFLAGS="--cfg rseq_sys_no_sequences"` (see `.ci/run`): rseq-sys builds its no-sequences
//! module, and percpu must take its atomic fallback and stay exact.
#![cfg(rseq_sys_no_sequences)]

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;

use common::{assert_child_passed, run_child};
use percpu::{Counter, FallbackReason, Mode};

fn counter_is_exact_across_threads() {
    let counter = Counter::new();
    std::thread::scope(|s| {
        for t in 0..8 {
            let counter = &counter;
            s.spawn(move || (0..20_000).for_each(|i| counter.add(if i % 2 == 0 { t } else { -1 })));
        }
    });
    let expected: i64 = (0..8).map(|t| 10_000 * t - 10_000).sum();
    assert_eq!(counter.sum(), expected);
    assert_eq!(counter.take(), expected);
}

/// glibc owns rseq, but this "architecture" cannot locate its area (no thread pointer access).
#[test]
fn without_sequences_a_glibc_process_falls_back() {
    const { assert!(!rseq_sys::HAS_SEQUENCES) };
    assert_eq!(
        rseq_sys::status().reason,
        Some(rseq_sys::Unavailable::NoThreadPointer)
    );
    assert_eq!(
        percpu::mode(),
        Mode::Fallback(FallbackReason::NoRseq(Some(
            rseq_sys::Unavailable::NoThreadPointer
        )))
    );
    counter_is_exact_across_threads();
}

#[test]
fn without_sequences_our_own_registration_still_falls_back() {
    let out = run_child(
        "child_own_registration_no_sequences",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        None,
    );
    assert_child_passed("child_own_registration_no_sequences", &out);
}

#[test]
#[ignore = "run in a child by without_sequences_our_own_registration_still_falls_back"]
fn child_own_registration_no_sequences() {
    let current = rseq_sys::current().expect("registration works without sequences");
    assert_eq!(current.owner(), rseq_sys::Owner::Own);
    assert!(current.kernel_size() >= 20);
    assert!(current.sequences().is_none());
    assert_eq!(percpu::mode(), Mode::Fallback(FallbackReason::NoSequences));
    counter_is_exact_across_threads();
}
