//! The allocator fuzz target's op runner over a deterministic pseudo-random corpus, both paths.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;
mod ops {
    pub mod slab;
}

use common::{assert_child_passed, run_child, scaled};

fn run_corpus() {
    common::run_corpus(0x51ab, scaled(300), 400, 50, |data| {
        let input = ops::slab::decode(data);
        ops::slab::run(&input);
        input.ops.len()
    });
}

#[test]
fn allocator_ops_match_the_model() {
    run_corpus();
}

#[test]
fn allocator_ops_match_the_model_on_the_fallback_path() {
    let out = run_child(
        "child_slab_ops_fallback",
        &[("PERCPU_FORCE_FALLBACK", "1")],
        None,
    );
    assert_child_passed("child_slab_ops_fallback", &out);
}

#[test]
#[ignore = "run in a child by allocator_ops_match_the_model_on_the_fallback_path"]
fn child_slab_ops_fallback() {
    assert!(percpu::forced_fallback());
    run_corpus();
}
