//! The freelist fuzz target's op runner over a deterministic pseudo-random corpus, both paths.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;
mod ops {
    pub mod freelist;
}

use common::{assert_child_passed, run_child, scaled};

fn run_corpus() {
    common::run_corpus(0xf7ee, scaled(600), 160, 50, |data| {
        let input = ops::freelist::decode(data);
        ops::freelist::run(&input);
        input.ops.len()
    });
}

#[test]
fn freelist_ops_match_the_model() {
    assert!(matches!(percpu::mode(), percpu::Mode::Rseq { .. }));
    run_corpus();
}

#[test]
fn freelist_ops_match_the_model_on_the_fallback_path() {
    let out = run_child(
        "child_freelist_ops_fallback",
        &[("PERCPU_FORCE_FALLBACK", "1")],
        None,
    );
    assert_child_passed("child_freelist_ops_fallback", &out);
}

#[test]
#[ignore = "run in a child by freelist_ops_match_the_model_on_the_fallback_path"]
fn child_freelist_ops_fallback() {
    assert!(percpu::forced_fallback());
    run_corpus();
}
