//! Counter op sequences against a model: `cargo fuzz run counter_ops`.
//! The same runner runs as a regular test (`percpu/tests/counter_ops.rs`).
#![no_main]

#[path = "../../percpu/tests/ops/counter.rs"]
mod counter;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    counter::run(&counter::decode(data));
});
