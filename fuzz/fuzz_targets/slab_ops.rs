//! Allocator op sequences (alloc, zeroed alloc, free with and without a layout, realloc, trim;
//! random sizes and alignments) on a `PerCpuAlloc` used as a value, every block's bytes checked:
//! `ASAN_OPTIONS=detect_leaks=0 cargo fuzz run slab_ops -- -detect_leaks=0`
//! (on stable, prefix `RUSTC_BOOTSTRAP=1`). The same runner runs as a regular test
//! (`percpu/tests/slab_ops.rs`).
#![no_main]

#[path = "../../percpu/tests/ops/slab.rs"]
mod slab;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    slab::run(&slab::decode(data));
});
