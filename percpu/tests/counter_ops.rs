//! The fuzz target's op runner over a deterministic pseudo-random corpus, in both paths.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;
mod ops {
    pub mod counter;
}

use common::{Rng, assert_child_passed, run_child, scaled};

fn corpus(seed: u64, inputs: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..inputs).map(move |_| {
        let len = rng.below(200) as usize;
        (0..len).map(|_| rng.next() as u8).collect()
    })
}

fn run_corpus() {
    let inputs = scaled(1500);
    let mut ops_run = 0;
    for input in corpus(0x5eed, inputs) {
        let ops = ops::counter::decode(&input);
        ops_run += ops.len();
        ops::counter::run(&ops);
    }
    // About 25 ops per input: a corpus that decodes to far fewer means the decoder broke.
    assert!(
        ops_run > 10 * inputs,
        "the corpus exercised too little: {ops_run} ops"
    );
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
