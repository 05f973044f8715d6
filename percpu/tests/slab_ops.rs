//! The allocator fuzz target's op runner over a deterministic pseudo-random corpus, both paths.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;
mod ops {
    pub mod slab;
}

use common::{Rng, assert_child_passed, run_child, scaled};

fn run_corpus() {
    let inputs = scaled(300);
    let mut rng = Rng::new(0x51ab);
    let mut ops_run = 0;
    for _ in 0..inputs {
        let len = rng.below(400) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let input = ops::slab::decode(&data);
        ops_run += input.ops.len();
        ops::slab::run(&input);
    }
    assert!(
        ops_run > 50 * inputs,
        "the corpus exercised too little: {ops_run} ops"
    );
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
