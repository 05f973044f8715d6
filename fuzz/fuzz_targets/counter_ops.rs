//! Counter op sequences against a model:
//! `ASAN_OPTIONS=detect_leaks=0 cargo fuzz run counter_ops -- -detect_leaks=0`
//! (on stable, prefix `RUSTC_BOOTSTRAP=1`).
//! The same runner runs as a regular test (`percpu/tests/counter_ops.rs`).
//!
//! Leak checks off: the runner's thread op joins through `std::thread::scope`, which returns
//! once the closures finish but before those threads run their TLS destructors, so LeakSanitizer
//! sees their still-live TLS destructor nodes (and, at exit, thread handles) and reports leaks
//! that are not ones.
#![no_main]

#[path = "../../percpu/tests/ops/counter.rs"]
mod counter;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    counter::run(&counter::decode(data));
});
