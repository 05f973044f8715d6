//! Freelist op sequences against a model (identity of every returned block):
//! `ASAN_OPTIONS=detect_leaks=0 cargo fuzz run freelist_ops -- -detect_leaks=0`
//! (on stable, prefix `RUSTC_BOOTSTRAP=1`; leak checks off for the reason given in
//! `counter_ops.rs`). The same runner runs as a regular test (`percpu/tests/freelist_ops.rs`).
#![no_main]

#[path = "../../percpu/tests/ops/freelist.rs"]
mod freelist;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    freelist::run(&freelist::decode(data));
});
