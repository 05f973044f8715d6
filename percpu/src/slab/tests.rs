//! The allocator used as a value: layouts, levels, statistics and memory return.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;

use super::class::class_of;
use super::pages::SLAB_SIZE;
use super::*;
use crate::freelist::MAX_CHAIN;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Fills `len` bytes at `p` with a pattern derived from `seed`.
unsafe fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: (caller) `p` has `len` writable bytes.
        unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
    }
}

unsafe fn check(p: *const u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: (caller) `p` has `len` readable bytes.
        let byte = unsafe { *p.add(i) };
        assert_eq!(byte, seed.wrapping_add(i as u8), "byte {i} of {len}");
    }
}

#[test]
fn every_class_and_large_size_gets_distinct_usable_memory() {
    let a = PerCpuAlloc::new();
    let mut sizes: Vec<usize> = (0..=256).collect();
    sizes.extend(SIZES.iter().flat_map(|&s| [s - 1, s, s + 1]));
    sizes.extend([40_000, 100_000, 1 << 20, (1 << 20) + 1]);
    let mut blocks = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let l = layout(size, 1);
        // SAFETY: a valid layout.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null(), "size {size}");
        assert_eq!(p as usize % 16, 0, "size {size}");
        // SAFETY: a live block of this allocator.
        assert!(unsafe { a.usable_size(p) } >= size, "size {size}");
        // SAFETY: the block has `size` bytes.
        unsafe { fill(p, size, i as u8) };
        blocks.push((p, l, i as u8));
    }
    for &(p, l, seed) in &blocks {
        // SAFETY: still live; no other block overlapped it.
        unsafe { check(p, l.size(), seed) };
        // SAFETY: allocated here with `l`.
        unsafe { a.dealloc(p, l) };
    }
}

#[test]
fn every_power_of_two_alignment_up_to_a_mebibyte() {
    let a = PerCpuAlloc::new();
    for shift in 0..=20 {
        let align = 1usize << shift;
        for size in [0, 1, align / 2, align, align + 1, 3 * align, 50_000] {
            let l = layout(size, align);
            // SAFETY: a valid layout.
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: the block has `size` bytes.
            unsafe { fill(p, size, 7) };
            // SAFETY: as above.
            unsafe { check(p, size, 7) };
            // SAFETY: allocated here with `l`.
            unsafe { a.dealloc(p, l) };
        }
    }
}

#[test]
fn no_block_is_handed_out_twice() {
    let a = PerCpuAlloc::new();
    for size in [16, 48, 1000, 32 << 10] {
        let l = layout(size, 8);
        let n = 3 * SLAB_SIZE / size + 1000; // several slabs, through every level
        // SAFETY: a valid layout.
        let blocks: Vec<usize> = (0..n).map(|_| unsafe { a.alloc(l) } as usize).collect();
        let distinct: HashSet<usize> = blocks.iter().copied().collect();
        assert_eq!(distinct.len(), n, "size {size}");
        let mut sorted = blocks.clone();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[1] - w[0] >= size),
            "overlap at size {size}"
        );
        for &p in &blocks {
            // SAFETY: allocated here with `l`.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
        // Freed blocks come back: the same set again.
        // SAFETY: a valid layout.
        let again: HashSet<usize> = (0..n).map(|_| unsafe { a.alloc(l) } as usize).collect();
        assert_eq!(again.len(), n);
        for &p in &again {
            // SAFETY: allocated here with `l`.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
    }
}

#[test]
fn free_by_pointer_alone_finds_the_class() {
    let a = PerCpuAlloc::new();
    for size in [1, 100, 5000, 32 << 10, 100_000] {
        let l = layout(size, 1);
        // SAFETY: a valid layout.
        let p = unsafe { a.alloc(l) };
        // SAFETY: a live block.
        let usable = unsafe { a.usable_size(p) };
        assert!(
            usable >= size && (size > MAX_SMALL || usable == SIZES[class_for(size, 1).unwrap()])
        );
        // SAFETY: a live block of this allocator, freed once.
        unsafe { a.free(p) };
    }
    let stats = a.stats();
    assert_eq!(stats.allocs(), 5);
    assert_eq!(stats.frees(), 5);
    assert_eq!(stats.in_use_bytes(), 0);
    // SAFETY: null is allowed.
    unsafe { a.free(ptr::null_mut()) };
}

#[test]
fn realloc_stays_in_place_within_a_class_and_keeps_contents_across_levels() {
    let a = PerCpuAlloc::new();
    let l = layout(100, 8);
    // SAFETY: a valid layout.
    let p = unsafe { a.alloc(l) };
    // SAFETY: 100 bytes.
    unsafe { fill(p, 100, 3) };
    // 100 and 112 share the 112-byte class.
    // SAFETY: `p` is live with `l`.
    let q = unsafe { a.realloc(p, l, 112) };
    assert_eq!(p, q);
    // Grow through small classes into large ones and back down, checking the prefix.
    let mut p = q;
    let mut size = 112;
    for next in [
        500,
        4000,
        40_000,
        1 << 20,
        9 << 20,
        3 << 20,
        60_000,
        20_000,
        50,
        8,
    ] {
        // SAFETY: `p` is live with (size, 8).
        let q = unsafe { a.realloc(p, layout(size, 8), next) };
        assert!(!q.is_null());
        // SAFETY: the kept prefix.
        unsafe { check(q, size.min(next).min(100), 3) };
        p = q;
        size = next;
    }
    // SAFETY: live with (size, 8).
    unsafe { a.dealloc(p, layout(size, 8)) };
    assert_eq!(a.stats().in_use_bytes(), 0);
}

/// C's `realloc` by address: the kept prefix survives growing and shrinking moves (through the
/// fast attempt once the target class has cached blocks, else the usual way), and no move writes
/// past its new block (neighbours keep their patterns).
#[test]
fn realloc_by_address_keeps_the_prefix_and_nothing_else() {
    let a = PerCpuAlloc::new();
    let sizes = [24, 300, 40, 1000, 16, 700, 130, 64];
    // Warm every class involved, so that later moves find cached blocks.
    for &size in &sizes {
        // SAFETY: a valid layout; freed at once by address.
        unsafe { a.free(a.alloc(layout(size, 16))) };
    }
    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
    for round in 0..200u8 {
        let mut size = sizes[round as usize % sizes.len()];
        // SAFETY: a valid layout.
        let mut p = unsafe { a.alloc(layout(size, 16)) };
        // SAFETY: `size` bytes.
        unsafe { fill(p, size, round) };
        for step in 1..sizes.len() {
            let next = sizes[(round as usize + step) % sizes.len()];
            // SAFETY: `p` is live; C's contract.
            let q = unsafe { a.realloc_unsized(p, next) };
            assert!(!q.is_null());
            // SAFETY: the kept prefix, then the whole new block.
            unsafe {
                check(q, size.min(next), round);
                fill(q, next, round);
            }
            (p, size) = (q, next);
        }
        live.push((p, size, round));
    }
    // A shrinking move into a cached block between live neighbours: blocks carved in a row,
    // every other one freed into the cache, the first of them last, so that the cache hands it
    // back with live blocks on both sides.
    let row: Vec<*mut u8> = (0..64)
        // SAFETY: a valid layout.
        .map(|_| unsafe { a.alloc(layout(40, 16)) })
        .collect();
    for (i, &p) in row.iter().enumerate().rev() {
        // SAFETY: live, 40 bytes.
        unsafe {
            if i % 2 == 1 {
                a.free(p);
            } else {
                fill(p, 40, i as u8);
            }
        }
    }
    // SAFETY: a valid layout; then C's contract.
    let big = unsafe { a.alloc(layout(1000, 16)) };
    // SAFETY: 1000 bytes.
    unsafe { fill(big, 1000, 9) };
    // SAFETY: `big` is live.
    let small = unsafe { a.realloc_unsized(big, 40) };
    // SAFETY: the kept prefix.
    unsafe { check(small, 40, 9) };
    live.push((small, 40, 9));
    for (i, &p) in row.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        // SAFETY: live, 40 bytes.
        unsafe {
            check(p, 40, i as u8);
            a.free(p);
        }
    }
    for (p, size, round) in live {
        // SAFETY: live, `size` bytes, never written by anyone else.
        unsafe {
            check(p, size, round);
            a.free(p);
        }
    }
    assert_eq!(a.stats().in_use_bytes(), 0);
}

/// C's `realloc` shrinks in place while at least half of the block stays in use (every class:
/// its contents stay, and `usable_size` still names the whole block), and moves below that, so
/// that a small remainder never pins a large block. The blocks kept are freed by address, and
/// their class's counts come out even.
#[test]
fn realloc_by_address_shrinks_in_place_down_to_half_its_block() {
    let a = PerCpuAlloc::new();
    for (class, &block) in SIZES.iter().enumerate() {
        for (new_size, stays) in [
            (block, true),
            (block / 2, true),
            (block / 2 - 1, class_of(block / 2 - 1) == class),
            (1, class == 0),
        ] {
            let seed = class as u8;
            // SAFETY: a valid layout; `block` bytes.
            let p = unsafe { a.alloc(layout(block, 16)) };
            // SAFETY: `p` holds `block` bytes.
            unsafe { fill(p, block, seed) };
            // SAFETY: `p` is live; C's contract.
            let q = unsafe { a.realloc_unsized(p, new_size) };
            assert_eq!(q == p, stays, "{block}-byte block resized to {new_size}");
            // SAFETY: `q` is live and holds at least `new_size` bytes, the kept prefix.
            unsafe { check(q, new_size, seed) };
            // SAFETY: `q` is live.
            let usable = unsafe { a.usable_size(q) };
            if stays {
                assert_eq!(usable, block, "kept its class");
            } else {
                assert!(
                    usable >= new_size && usable < block,
                    "{usable} for {new_size}"
                );
            }
            // SAFETY: live; by address, as the docs require.
            unsafe { a.free(q) };
        }
    }
    assert_eq!(a.stats().in_use_bytes(), 0);
}

/// `alloc_by_size` (C's `malloc`, freed by address): every size from 0 across the size classes
/// to large blocks gets a block aligned to 16 with at least that many usable bytes, distinct
/// from every other live block; sizes no block can have get null; everything comes back.
#[test]
fn alloc_by_size_serves_every_size_aligned_to_16() {
    let a = PerCpuAlloc::new();
    let mut sizes: Vec<usize> = (0..=1100).collect();
    sizes.extend(SIZES.iter().flat_map(|&s| [s - 1, s, s + 1]));
    sizes.extend([MAX_SMALL + 1, 300 << 10, 5 << 20]);
    let mut live = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let p = a.alloc_by_size(size);
        assert!(!p.is_null(), "size {size}");
        assert_eq!(p as usize % 16, 0, "size {size} at {p:?}");
        // SAFETY: a live block of this allocator.
        assert!(unsafe { a.usable_size(p) } >= size.max(1), "size {size}");
        // SAFETY: `size` bytes.
        unsafe { fill(p, size, i as u8) };
        live.push((p, size, i as u8));
    }
    let distinct: HashSet<usize> = live.iter().map(|&(p, _, _)| p as usize).collect();
    assert_eq!(distinct.len(), live.len());
    assert!(a.alloc_by_size(usize::MAX).is_null());
    assert!(a.alloc_by_size(isize::MAX as usize - 8).is_null());
    for (p, size, seed) in live {
        // SAFETY: live, `size` bytes, written only above; freed by address.
        unsafe {
            check(p, size, seed);
            a.free(p);
        }
    }
    assert_eq!(a.stats().in_use_bytes(), 0);
}

#[test]
fn large_realloc_remaps_without_copying_when_it_can() {
    let a = PerCpuAlloc::new();
    let l = layout(1 << 20, 8);
    // SAFETY: a valid layout.
    let p = unsafe { a.alloc(l) };
    // SAFETY: 1 MiB.
    unsafe { fill(p, 1 << 20, 9) };
    // Shrinking a mapping never moves it.
    // SAFETY: live with `l`.
    let q = unsafe { a.realloc(p, l, 512 << 10) };
    assert_eq!(p, q);
    // SAFETY: live, 512 KiB kept.
    unsafe { check(q, 512 << 10, 9) };
    // SAFETY: live with (512 KiB, 8).
    let r = unsafe { a.realloc(q, layout(512 << 10, 8), 64 << 20) };
    assert!(!r.is_null());
    // SAFETY: as above.
    unsafe { check(r, 512 << 10, 9) };
    // SAFETY: live with (64 MiB, 8).
    unsafe { a.dealloc(r, layout(64 << 20, 8)) };
}

/// Freed large mappings stay resident while cached, so the cache holds no more than the most
/// large blocks in use at once (4 MiB when fewer), keeping the most recently freed. Blocks that
/// keep growing, each freed for the next (1 to 6 MiB), leave only the last cached, and the next
/// allocation of its size gets it back; a batch of blocks freed together stays cached whole.
#[test]
fn the_large_cache_holds_no_more_than_the_most_large_blocks_in_use() {
    let a = PerCpuAlloc::new();
    let mut last = (ptr::null_mut(), 0);
    for mib in 1..=6 {
        let l = layout(mib << 20, 16);
        // SAFETY: a valid layout.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        let mapping = a.stats().large_in_use_bytes;
        // SAFETY: allocated above with `l`.
        unsafe { a.dealloc(p, l) };
        last = (p, mapping);
    }
    assert_eq!(
        a.stats().large_cached_bytes,
        last.1,
        "only the last (6 MiB) mapping fits a budget of the 6 MiB ever in use at once"
    );
    let l = layout(6 << 20, 16);
    // SAFETY: a valid layout.
    let again = unsafe { a.alloc(l) };
    assert_eq!(again, last.0, "the mapping freed last is the one kept");
    // SAFETY: allocated above with `l`.
    unsafe { a.dealloc(again, l) };

    // Three 3 MiB blocks in use at once: 9 MiB of budget, all three stay cached.
    let l = layout(3 << 20, 16);
    // SAFETY: a valid layout.
    let batch: Vec<*mut u8> = (0..3).map(|_| unsafe { a.alloc(l) }).collect();
    let in_use = a.stats().large_in_use_bytes;
    for &p in &batch {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { a.dealloc(p, l) };
    }
    assert_eq!(a.stats().large_cached_bytes, in_use);
}

/// A block that keeps growing, each new one allocated before the old is freed (as a growing
/// table is): the blocks in use and the cache together never hold more than the most large
/// blocks ever in use at once, so the cache keeps no step of the growth but the last ones,
/// which the blocks' peak still has room for.
#[test]
fn large_blocks_in_use_and_cached_never_exceed_their_peak() {
    let a = PerCpuAlloc::new();
    let mib = 1 << 20;
    let mut peak = 0;
    let mut check = |step: &str| {
        let stats = a.stats();
        peak = peak.max(stats.large_in_use_bytes);
        let held = stats.large_in_use_bytes + stats.large_cached_bytes;
        assert!(
            held <= peak.max(4 * mib),
            "{step}: {held} bytes in use and cached, past the peak of {peak}"
        );
    };
    let mut old: Option<(*mut u8, Layout)> = None;
    for size in 2..=9 {
        let l = layout(size * mib, 16);
        // SAFETY: a valid layout.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        check(&format!("{size} MiB allocated"));
        if let Some((q, ql)) = old.replace((p, l)) {
            // SAFETY: allocated above with `ql`, freed once.
            unsafe { a.dealloc(q, ql) };
            check(&format!("{} MiB freed", size - 1));
        }
    }
    let (last, l) = old.unwrap();
    // SAFETY: allocated above with `l`.
    unsafe { a.dealloc(last, l) };
    check("9 MiB freed");
    assert!(
        a.stats().large_cached_bytes >= 9 * mib,
        "the last block stays cached"
    );
    // SAFETY: a valid layout.
    let again = unsafe { a.alloc(l) };
    assert_eq!(again, last, "and comes back for its size");
    // SAFETY: allocated above with `l`.
    unsafe { a.dealloc(again, l) };
}

#[test]
fn zeroed_memory_is_zero_even_when_reused() {
    let a = PerCpuAlloc::new();
    for size in [16, 200, 3000, 32 << 10, 200_000] {
        let l = layout(size, 16);
        for round in 0..3 {
            // SAFETY: a valid layout.
            let p = unsafe { a.alloc_zeroed(l) };
            // SAFETY: `size` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().all(|&b| b == 0), "size {size} round {round}");
            // SAFETY: dirty it before it goes back, so the next round reuses dirty memory.
            unsafe { ptr::write_bytes(p, 0xa5, size) };
            // SAFETY: allocated here with `l`.
            unsafe { a.dealloc(p, l) };
        }
    }
}

#[test]
fn counts_and_bytes_in_use_are_exact() {
    let a = PerCpuAlloc::new();
    let l = layout(24, 8); // the 32-byte class
    // SAFETY: a valid layout.
    let blocks: Vec<*mut u8> = (0..1000).map(|_| unsafe { a.alloc(l) }).collect();
    let class = a.stats().classes[1];
    assert_eq!((class.size, class.allocs, class.frees), (32, 1000, 0));
    assert_eq!(class.in_use_bytes, 32_000);
    for &p in &blocks[..400] {
        // SAFETY: allocated here with `l`.
        unsafe { a.dealloc(p, l) };
    }
    let stats = a.stats();
    assert_eq!(stats.classes[1].frees, 400);
    assert_eq!(stats.in_use_bytes(), 600 * 32);
    let text = stats.to_string();
    assert!(text.contains("     32         1000          400"), "{text}");
    for &p in &blocks[400..] {
        // SAFETY: allocated here with `l`.
        unsafe { a.dealloc(p, l) };
    }
}

#[test]
fn trim_returns_every_free_slab_to_the_kernel() {
    let a = PerCpuAlloc::new();
    let l = layout(1024, 8);
    let n = 64 * SLAB_SIZE / 1024; // 16 MiB over 64 slabs
    // SAFETY: a valid layout.
    let blocks: Vec<*mut u8> = (0..n).map(|_| unsafe { a.alloc(l) }).collect();
    for &p in &blocks {
        // SAFETY: touch every block so its memory is resident.
        unsafe { ptr::write_bytes(p, 1, 1024) };
    }
    let before = a.stats();
    assert!(before.classes[class_of(1024)].slabs >= 64);
    for &p in &blocks {
        // SAFETY: allocated here with `l`.
        unsafe { a.dealloc(p, l) };
    }
    let released = a.trim();
    let after = a.stats();
    let class = after.classes[class_of(1024)];
    assert_eq!(class.slabs, 0, "{after}");
    assert_eq!(class.cpu_cached_bytes + class.transfer_bytes, 0, "{after}");
    // Slabs beyond the resident few went back as they emptied; trim releases the rest.
    assert_eq!(released, super::pages::RESIDENT_EMPTY_SLABS * SLAB_SIZE);
    assert_eq!(after.slab_empty_bytes, 0);
    assert_eq!(after.slab_released_bytes, after.slab_mapped_bytes);
    // And the memory serves again.
    // SAFETY: a valid layout.
    let p = unsafe { a.alloc(l) };
    assert!(!p.is_null());
    // SAFETY: allocated here with `l`.
    unsafe { a.dealloc(p, l) };
}

#[test]
fn per_cpu_caches_hold_what_they_are_configured_to() {
    let budget = 4096;
    let a = PerCpuAlloc::with_cpu_cache_bytes(budget);
    let l = layout(64, 8);
    // SAFETY: a valid layout.
    let blocks: Vec<*mut u8> = (0..10_000).map(|_| unsafe { a.alloc(l) }).collect();
    for &p in &blocks {
        // SAFETY: allocated here with `l`.
        unsafe { a.dealloc(p, l) };
    }
    let class = a.stats().classes[class_of(64)];
    let cpus = rseq_sys::possible_cpus() as usize;
    assert!(class.cpu_cached_bytes <= cpus * budget, "{class:?}");
    assert_eq!(class.allocs, 10_000);
    // Everything not cached is at the transfer or central level, none lost.
    let carved = class.slabs * (SLAB_SIZE / 64) * 64;
    assert_eq!(
        class.cpu_cached_bytes + class.transfer_bytes + class.central_bytes,
        carved,
        "{class:?}"
    );
}

/// Each CPU's cache limit follows its use. Freeing a long run of blocks, with no allocation in
/// between, leaves the caches holding a batch or two each; bursts of allocations and frees grow
/// them again until a burst fits.
#[test]
fn cache_limits_follow_use() {
    let size = 16;
    let (l, c) = (layout(size, 8), class_of(size));
    let a = PerCpuAlloc::new();
    let rseq = matches!(crate::mode(), crate::Mode::Rseq { .. });
    let cpus = rseq_sys::possible_cpus() as usize;
    let burst = |n: usize| {
        // SAFETY: a valid layout.
        let blocks: Vec<*mut u8> = (0..n).map(|_| unsafe { a.alloc(l) }).collect();
        for &p in &blocks {
            // SAFETY: allocated here with `l`.
            unsafe { a.dealloc(p, l) };
        }
    };
    // 20,000 frees in a row: past a capacity's worth (2,048) the limits fall to a batch (64),
    // though the allocations before them doubled the limit once (128).
    burst(20_000);
    let collected = a.stats().classes[c];
    if rseq {
        assert!(
            collected.cpu_cached_bytes <= cpus * 2 * MAX_CHAIN * size,
            "{collected:?}"
        );
    }
    // Bursts of 1,000 both ways: each doubles the limit once, until one holds the burst.
    for _ in 0..12 {
        burst(1000);
    }
    let busy = a.stats().classes[c];
    if rseq {
        // Most of the last burst stays cached (a migration may split it between CPUs).
        assert!(busy.cpu_cached_bytes >= 500 * size, "{busy:?}");
    }
    assert_eq!(busy.allocs, 32_000);
    assert_eq!(busy.frees, 32_000);
}

#[test]
fn huge_requests_fail_cleanly() {
    let a = PerCpuAlloc::new();
    let l = layout(isize::MAX as usize - 4095, 4096);
    // SAFETY: a valid layout.
    assert!(unsafe { a.alloc(l) }.is_null());
    // SAFETY: a valid layout.
    let p = unsafe { a.alloc(layout(10, 8)) };
    // SAFETY: realloc to an impossible size keeps the old block.
    let q = unsafe { a.realloc(p, layout(10, 8), isize::MAX as usize - 8192) };
    assert!(q.is_null());
    // SAFETY: still live.
    unsafe { a.dealloc(p, layout(10, 8)) };
}

/// The fast attempt takes only a block already in this CPU's cache, counts it like any
/// allocation, and leaves everything else (a fresh allocator, large sizes, threads without
/// sequences) to the caller's usual path.
#[test]
fn the_fast_attempt_takes_only_what_the_cache_holds() {
    let a = PerCpuAlloc::new();
    assert!(
        a.try_alloc_fast(64).is_none(),
        "no heap yet, nothing to take"
    );
    let l = layout(64, 16);
    // SAFETY: a valid layout; the block is freed below.
    let first = unsafe { a.alloc(l) };
    assert!(!first.is_null());
    assert!(
        a.try_alloc_fast(MAX_SMALL + 1).is_none(),
        "large sizes have no cache"
    );
    // SAFETY: `first` is live; freed by address once.
    unsafe { a.free(first) };
    if !matches!(crate::mode(), crate::Mode::Rseq { .. }) {
        assert!(
            a.try_alloc_fast(64).is_none(),
            "without sequences the fast attempt never runs"
        );
        return;
    }
    // The freed block sits in the cache of the index that freed it, and an attempt from
    // another index finds nothing. A migration can come at any moment on a busy machine (it
    // failed this test once under qemu); here it is forced where the thread may run elsewhere.
    // So each try frees a block and takes it back at once, refreshing the thread's memo as the
    // usual path would (a stale one fails every attempt); only a migration or an interruption
    // in between fails a try.
    crate::test_cpus::move_to_another_cpu();
    let (block, before) = (0..1000)
        .find_map(|_| {
            // SAFETY: a valid layout; the block is freed at once.
            unsafe { a.free(a.alloc(l)) };
            a.fast.direct.remember();
            let before = a.stats().allocs();
            a.try_alloc_fast(64).map(|block| (block, before))
        })
        .expect("the cached block");
    assert_eq!(
        a.stats().allocs(),
        before + 1,
        "a fast allocation is counted"
    );
    // SAFETY: a live block of at least 64 bytes.
    unsafe {
        fill(block.as_ptr(), 64, 7);
        check(block.as_ptr(), 64, 7);
        a.free(block.as_ptr());
    }
}

/// A block smaller than a cache line that `free` gets on an index other than its slab's home
/// goes home (through this CPU's remote buffer, then the home's shard of the transfer level),
/// never into this CPU's cache, where the next allocation would take it while its neighbours
/// are in use on the home CPU: passive false sharing. It counts as freed, and `trim` finds it.
#[test]
fn small_blocks_freed_away_from_home_go_home() {
    use super::pages::PageHeap;
    let (l, c) = (layout(16, 16), class_of(16));
    let rseq = matches!(crate::mode(), crate::Mode::Rseq { .. });
    let shards = (rseq_sys::possible_cpus() as usize).clamp(1, crate::freelist::MAX_SHARDS);
    // A migration between the frees and the allocations below would make another CPU's blocks
    // ours; such attempts are repeated, and one that saw a single index is checked.
    let mut checked = false;
    for _attempt in 0..50 {
        let a = PerCpuAlloc::new();
        // SAFETY: a valid layout.
        let blocks: Vec<*mut u8> = (0..300).map(|_| unsafe { a.alloc(l) }).collect();
        let heap = a.heap().expect("a heap");
        let list = &heap.class(c).list;
        let id = list.current_index();
        // Their slabs move to the next index, whose shard of the transfer level is not ours.
        let home = id.map_or(0, |id| (id + 1) % shards + 1) as u32;
        for &p in &blocks {
            let slab = heap.pages.lookup(p as usize).expect("a slab block");
            heap.pages
                .set_word(slab, PageHeap::slab_class_word(slab), home);
        }
        for &p in &blocks {
            // SAFETY: allocated here, freed once, by address.
            unsafe { a.free(p) };
        }
        let sent: HashSet<usize> = blocks.iter().map(|&p| p as usize).collect();
        // SAFETY: a valid layout.
        let again: Vec<*mut u8> = (0..300).map(|_| unsafe { a.alloc(l) }).collect();
        let stable = id.is_some() && list.current_index() == id;
        if rseq && shards > 1 && stable {
            let reused = again
                .iter()
                .filter(|&&p| sent.contains(&(p as usize)))
                .count();
            assert_eq!(reused, 0, "blocks homed elsewhere were handed out here");
            checked = true;
        }
        let class = a.stats().classes[c];
        assert_eq!((class.allocs, class.frees), (600, 300));
        assert_eq!(class.in_use_bytes, 300 * 16);
        for &p in &again {
            // SAFETY: allocated here with `l`, freed once.
            unsafe { a.dealloc(p, l) };
        }
        // Blocks on their way home (in remote buffers) go back to their slabs too.
        a.trim();
        let class = a.stats().classes[c];
        assert_eq!(class.slabs, 0, "{class:?}");
        assert_eq!(
            class.cpu_cached_bytes + class.transfer_bytes,
            0,
            "{class:?}"
        );
        if checked || !rseq || shards == 1 {
            break;
        }
    }
    assert!(
        checked || !rseq || shards == 1,
        "every attempt migrated between its frees and its allocations"
    );
}

/// The other half of homes: a small block freed on its slab's home index goes into this CPU's
/// cache, as any block does, so the next allocations here take it back. A block sent to the
/// remote buffer by mistake would sit there (it holds 128 before any goes on), once the buffer
/// is in use: blocks homed elsewhere put it to use first. The cache may hold a refill's
/// leftovers above the blocks freed: 200 allocations cover both.
#[test]
fn small_blocks_freed_at_home_stay_in_this_cpu_s_cache() {
    use super::pages::PageHeap;
    let (l, c) = (layout(16, 16), class_of(16));
    let shards = (rseq_sys::possible_cpus() as usize).clamp(1, crate::freelist::MAX_SHARDS);
    if !matches!(crate::mode(), crate::Mode::Rseq { .. }) || shards == 1 {
        return;
    }
    let rehome = |heap: &Heap, blocks: &[*mut u8], home: usize| {
        for &p in blocks {
            let slab = heap.pages.lookup(p as usize).expect("a slab block");
            heap.pages
                .set_word(slab, PageHeap::slab_class_word(slab), home as u32);
        }
    };
    for _attempt in 0..50 {
        let a = PerCpuAlloc::new();
        // SAFETY: a valid layout.
        let away: Vec<*mut u8> = (0..100).map(|_| unsafe { a.alloc(l) }).collect();
        let heap = a.heap().expect("a heap");
        let list = &heap.class(c).list;
        let Some(id) = list
            .current_index()
            .filter(|&id| id < super::pages::HOMED_INDICES as usize)
        else {
            return; // No slab has a home there.
        };
        rehome(heap, &away, (id + 1) % shards + 1);
        for &p in &away {
            // SAFETY: allocated here, freed once, by address.
            unsafe { a.free(p) };
        }
        // SAFETY: a valid layout.
        let home: Vec<*mut u8> = (0..100).map(|_| unsafe { a.alloc(l) }).collect();
        rehome(heap, &home, id + 1);
        for &p in &home {
            // SAFETY: allocated here, freed once, by address.
            unsafe { a.free(p) };
        }
        let sent: HashSet<usize> = home.iter().map(|&p| p as usize).collect();
        // SAFETY: a valid layout.
        let again: Vec<*mut u8> = (0..200).map(|_| unsafe { a.alloc(l) }).collect();
        let stable = list.current_index() == Some(id);
        for &p in &again {
            // SAFETY: allocated here with `l`, freed once.
            unsafe { a.dealloc(p, l) };
        }
        if stable {
            let reused = again
                .iter()
                .filter(|&&p| sent.contains(&(p as usize)))
                .count();
            assert_eq!(reused, 100, "blocks freed at home were not reused at home");
            return;
        }
    }
    panic!("every attempt migrated between its frees and its allocations");
}
