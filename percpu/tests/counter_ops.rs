//! The fuzz target's op runner over a deterministic pseudo-random corpus, in both paths.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;
mod ops {
    pub mod counter;
}

use common::{assert_child_passed, run_child, scaled};

fn run_corpus() {
    // About 25 ops per input: a corpus that decodes to far fewer means the decoder broke.
    common::run_corpus(0x5eed, scaled(1500), 200, 10, |data| {
        let ops = ops::counter::decode(data);
        ops::counter::run(&ops);
        ops.len()
    });
}

#[test]
fn counter_ops_match_the_model() {
    assert!(matches!(percpu::mode(), percpu::Mode::Rseq { .. }));
    run_corpus();
}

#[test]
fn counter_ops_match_the_model_on_the_fallback_path() {
    let out = run_child(
        "child_counter_ops_fallback",
        &[("PERCPU_FORCE_FALLBACK", "1")],
        None,
    );
    assert_child_passed("child_counter_ops_fallback", &out);
}

#[test]
#[ignore = "run in a child by counter_ops_match_the_model_on_the_fallback_path"]
fn child_counter_ops_fallback() {
    assert!(percpu::forced_fallback());
    run_corpus();
}
