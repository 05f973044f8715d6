//! `PerCpuAlloc` as this test binary's global allocator: std collections under churn from many
//! more threads than CPUs (with migration and signals), cross-thread frees, every alignment,
//! sizes up to 64 MiB, realloc chains, zeroed memory, fork, thousands of short-lived threads,
//! and memory going back to the kernel. `everything_again_in_fallback_mode` reruns the whole
//! binary under `PERCPU_FORCE_FALLBACK=1`.

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

use common::{
    Rng, SignalStorm, allowed_cpus, assert_child_passed, run_child, scaled, set_affinity,
    stress_threads,
};
use percpu::{Mode, PerCpuAlloc};

#[cfg(not(feature = "global-allocator"))]
#[global_allocator]
static GLOBAL: PerCpuAlloc = PerCpuAlloc::new();
#[cfg(feature = "global-allocator")]
use percpu::GLOBAL_ALLOCATOR as GLOBAL;

const FALLBACK_ENV: (&str, &str) = ("PERCPU_FORCE_FALLBACK", "1");

fn in_fallback_run() -> bool {
    std::env::var("PERCPU_FORCE_FALLBACK").as_deref() == Ok("1")
}

#[test]
fn the_path_taken_is_the_one_asked_for() {
    let mode = percpu::mode();
    if in_fallback_run() {
        assert!(matches!(mode, Mode::Fallback(_)), "{mode}");
    } else if rseq_sys::current().is_some() {
        assert!(matches!(mode, Mode::Rseq { .. }), "{mode}");
    }
}

/// A byte pattern for value `n`: its number, then a fill byte, so any mix-up of blocks shows.
/// Built and compared with memset and memcmp, which stay fast in unoptimised test builds.
fn pattern(n: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(n as u8).wrapping_mul(31) | 1; len];
    let head = len.min(8);
    v[..head].copy_from_slice(&n.to_le_bytes()[..head]);
    v
}

#[test]
fn collections_churn_across_threads_with_migration_and_signals() {
    let threads = stress_threads();
    let cpus = allowed_cpus();
    let storm = SignalStorm::start(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let handle = storm.handle();
            let cpus = &cpus;
            s.spawn(move || {
                handle.enlist(t);
                let mut rng = Rng::new(t as u64 + 1);
                let mut strings: Vec<String> = Vec::new();
                let mut map: HashMap<u64, Vec<u8>> = HashMap::new();
                let mut tree: BTreeMap<u64, Box<[u64]>> = BTreeMap::new();
                for round in 0..scaled(20_000) as u64 {
                    let key = rng.below(512);
                    match rng.below(4) {
                        0 => {
                            let len = rng.below(300) as usize;
                            map.insert(key, pattern(key, len));
                        }
                        1 => {
                            let len = 1 + rng.below(64) as usize;
                            tree.insert(key, vec![key; len].into_boxed_slice());
                        }
                        2 => strings.push(format!("{t}:{round}:{}", "x".repeat(key as usize % 40))),
                        _ => {
                            map.remove(&key);
                            tree.remove(&key);
                            if strings.len() > 200 {
                                strings.drain(..100);
                            }
                        }
                    }
                    if round % 1000 == 0 {
                        set_affinity(&[cpus[rng.below(cpus.len() as u64) as usize]]);
                        std::thread::yield_now();
                    }
                }
                handle.leave(t);
                for (key, value) in &map {
                    assert_eq!(*value, pattern(*key, value.len()), "thread {t} key {key}");
                }
                for (key, value) in &tree {
                    assert!(value.iter().all(|v| v == key), "thread {t} key {key}");
                }
                for s in &strings {
                    assert!(s.starts_with(&format!("{t}:")), "{s}");
                }
            });
        }
    });
    assert!(storm.finish() > 0, "no signal was delivered");
}

#[test]
fn blocks_freed_by_other_threads_over_channels() {
    let pairs = (stress_threads() / 2).max(2);
    let per_pair = scaled(40_000) as u64;
    std::thread::scope(|s| {
        for p in 0..pairs {
            let (tx, rx) = mpsc::sync_channel::<(u64, Box<[u8]>)>(256);
            s.spawn(move || {
                let mut rng = Rng::new(p as u64 * 7 + 3);
                for n in 0..per_pair {
                    let len = match rng.below(10) {
                        0 => rng.below(70_000) as usize, // sometimes large
                        _ => rng.below(2_000) as usize,
                    };
                    tx.send((n, pattern(n, len).into_boxed_slice())).unwrap();
                }
            });
            s.spawn(move || {
                let mut expected = 0;
                for (n, block) in rx {
                    assert_eq!(n, expected);
                    assert_eq!(*block, *pattern(n, block.len()), "pair {p} block {n}");
                    expected += 1;
                }
                assert_eq!(expected, per_pair);
            });
        }
    });
}

/// Blocks smaller than a cache line, allocated on one thread and freed by address (`free`, as
/// C's is) on another, go home to the CPU that carved them (see the slab allocator's homed
/// classes); many more threads than CPUs, with migration and signals. Every block arrives
/// intact, and at the end every one is back: after `trim`, no slab of those classes is left.
#[test]
fn small_blocks_freed_by_address_on_other_threads_all_come_home() {
    static ALLOCATOR: PerCpuAlloc = PerCpuAlloc::new();
    let pairs = (stress_threads() / 2).max(2);
    let per_pair = scaled(40_000) as u64;
    let cpus = allowed_cpus();
    let storm = SignalStorm::start(2 * pairs);
    std::thread::scope(|s| {
        for p in 0..pairs {
            let (tx, rx) = mpsc::sync_channel::<(u64, usize, usize)>(256);
            let (producer, consumer) = (storm.handle(), storm.handle());
            let cpus = &cpus;
            s.spawn(move || {
                producer.enlist(2 * p);
                let mut rng = Rng::new(p as u64 * 5 + 1);
                for n in 0..per_pair {
                    let len = 1 + rng.below(48) as usize;
                    let layout = Layout::from_size_align(len, 1).unwrap();
                    // SAFETY: a valid layout.
                    let block = unsafe { ALLOCATOR.alloc(layout) };
                    assert!(!block.is_null());
                    let bytes = pattern(n ^ (p as u64) << 40, len);
                    // SAFETY: the block has `len` bytes.
                    unsafe { block.copy_from_nonoverlapping(bytes.as_ptr(), len) };
                    tx.send((n, len, block as usize)).unwrap();
                    if n.is_multiple_of(2000) {
                        set_affinity(&[cpus[rng.below(cpus.len() as u64) as usize]]);
                    }
                }
                producer.leave(2 * p);
            });
            s.spawn(move || {
                consumer.enlist(2 * p + 1);
                let mut received = 0u64;
                for (n, len, block) in rx {
                    // SAFETY: a live block of `len` bytes, handed over by its producer.
                    let got = unsafe { std::slice::from_raw_parts(block as *const u8, len) };
                    assert_eq!(
                        got,
                        pattern(n ^ (p as u64) << 40, len),
                        "pair {p} block {n}"
                    );
                    // SAFETY: allocated by ALLOCATOR, freed once.
                    unsafe { ALLOCATOR.free(block as *mut u8) };
                    received += 1;
                    if received.is_multiple_of(3000) {
                        set_affinity(&[cpus[(received / 3000) as usize % cpus.len()]]);
                    }
                }
                assert_eq!(received, per_pair);
                consumer.leave(2 * p + 1);
            });
        }
    });
    assert!(storm.finish() > 0, "no signal was delivered");
    let total = pairs as u64 * per_pair;
    let stats = ALLOCATOR.stats();
    let (allocs, frees) = stats.classes[..3]
        .iter()
        .fold((0, 0), |(a, f), c| (a + c.allocs, f + c.frees));
    assert_eq!((allocs, frees), (total, total), "{stats}");
    ALLOCATOR.trim();
    let stats = ALLOCATOR.stats();
    for class in &stats.classes[..3] {
        assert_eq!(class.slabs, 0, "{stats}");
    }
}

#[test]
fn every_alignment_up_to_a_mebibyte_and_sizes_up_to_64_mebibytes() {
    let mut sizes = vec![
        0usize, 1, 7, 8, 15, 16, 17, 100, 1000, 4095, 4096, 4097, 32768, 32769,
    ];
    sizes.extend((16..=26).map(|shift| 1usize << shift));
    sizes.extend([3 << 20, (1 << 26) - 1]);
    for shift in 0..=20 {
        let align = 1usize << shift;
        for &size in &sizes {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a valid layout (zero size included: PerCpuAlloc serves it).
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            if size > 0 {
                // SAFETY: `size` bytes are ours: touch the first and last.
                unsafe {
                    p.add(size - 1).write(0xa5);
                    p.write(0x5a);
                    assert_eq!(p.read(), 0x5a);
                    assert_eq!(p.add(size - 1).read(), if size == 1 { 0x5a } else { 0xa5 });
                }
            }
            // SAFETY: allocated above with `layout`.
            unsafe { GLOBAL.dealloc(p, layout) };
        }
    }
}

#[test]
fn realloc_chains_that_grow_and_shrink_keep_their_contents() {
    let reference: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let mut rng = Rng::new(99);
    for chain in 0..scaled(40) {
        let mut v: Vec<u8> = Vec::new();
        for _ in 0..30 {
            let target = match rng.below(3) {
                0 => rng.below(100) as usize,
                1 => rng.below(50_000) as usize,
                _ => rng.below(3 << 20) as usize,
            };
            if target > v.len() {
                v.extend_from_slice(&reference[v.len()..target]); // realloc up
            } else {
                v.truncate(target);
                v.shrink_to_fit(); // realloc down
            }
            assert!(v[..] == reference[..target], "chain {chain} at {target}");
        }
    }
}

#[test]
fn zeroed_allocations_are_zero_after_memory_was_dirtied() {
    for size in [1, 40, 500, 4096, 30_000, 100_000, 5 << 20] {
        for _ in 0..4 {
            // Dirty blocks of this size, free them, then ask for zeroed ones.
            drop(vec![0xffu8; size]);
            let zeroed = vec![0u8; size]; // alloc_zeroed
            assert!(zeroed.iter().all(|&b| b == 0), "size {size}");
        }
    }
}

#[test]
fn fork_then_allocate_in_the_child_while_other_threads_allocate() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let stop = &stop;
            s.spawn(move || {
                let mut keep = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    keep.push(pattern(n, (n % 5000) as usize));
                    if keep.len() > 100 {
                        keep.clear();
                    }
                    if n.is_multiple_of(5000) {
                        GLOBAL.trim(); // takes every lock on the slow paths
                    }
                    n += 1;
                }
                assert!(n > 0, "thread {t}");
            });
        }
        for round in 0..scaled(20).max(3) {
            // SAFETY: the child only allocates, checks and calls _exit: no locks of the parent's
            // other threads are needed except the allocator's, which fork handlers released.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let ok = (0..2000u64).all(|n| {
                    let v = pattern(n, (n as usize * 37) % 70_000);
                    v == pattern(n, v.len())
                });
                let map: HashMap<u64, String> = (0..500).map(|k| (k, k.to_string())).collect();
                let ok = ok && map[&499] == "499";
                // SAFETY: leaving the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child {round} status {status:#x}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// An allocator of this test's own, so that its figures are not mixed with other tests'.
static LOCAL: PerCpuAlloc = PerCpuAlloc::new();

#[test]
fn thousands_of_short_lived_threads_strand_nothing() {
    let threads = scaled(2000);
    let layout = Layout::from_size_align(200, 8).unwrap();
    let (tx, rx) = mpsc::channel::<usize>();
    let mut live = Vec::new();
    for batch in 0..threads.div_ceil(50) {
        let handles: Vec<_> = (0..50.min(threads - batch * 50))
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    // SAFETY: a valid layout; blocks are freed below, by this thread or main.
                    let blocks: Vec<usize> = (0..64)
                        .map(|_| unsafe { LOCAL.alloc(layout) } as usize)
                        .collect();
                    for (i, &b) in blocks.iter().enumerate() {
                        if i % 8 == 0 {
                            tx.send(b).unwrap(); // freed by the main thread
                        } else {
                            // SAFETY: allocated above with `layout`.
                            unsafe { LOCAL.dealloc(b as *mut u8, layout) };
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        live.extend(rx.try_iter());
    }
    assert_eq!(live.len(), threads * 8);
    for b in live {
        // SAFETY: allocated by a worker with `layout`, sent here, freed once.
        unsafe { LOCAL.dealloc(b as *mut u8, layout) };
    }
    let stats = LOCAL.stats();
    assert_eq!(stats.allocs(), threads as u64 * 64);
    assert_eq!(stats.frees(), stats.allocs());
    assert_eq!(stats.in_use_bytes(), 0);
    // Every block is reachable again: after a trim, no slab is left serving the class.
    LOCAL.trim();
    let stats = LOCAL.stats();
    assert!(stats.classes.iter().all(|c| c.slabs == 0), "{stats}");
    assert_eq!(
        stats.slab_released_bytes, stats.slab_mapped_bytes,
        "{stats}"
    );
}

/// Resident set size from `/proc/self/statm`, in bytes.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
#[ignore = "run in a child process by memory_returns_to_the_kernel_after_trim"]
fn memory_return_child() {
    let before = resident_bytes();
    let target = scaled(1 << 30);
    let mut blocks: Vec<Box<[u8]>> = Vec::with_capacity(target / 512);
    let mut total = 0;
    let mut rng = Rng::new(5);
    while total < target {
        let len = 64 + rng.below(4000) as usize;
        blocks.push(vec![1u8; len].into_boxed_slice()); // touched: resident
        total += len;
    }
    let peak = resident_bytes();
    drop(blocks);
    let released = GLOBAL.trim();
    let after = resident_bytes();
    let mib = |b: usize| b >> 20;
    println!(
        "resident: {} MiB before, {} MiB with {} MiB allocated, {} MiB after trim \
         ({} MiB released)\n{}",
        mib(before),
        mib(peak),
        mib(total),
        mib(after),
        mib(released),
        GLOBAL.stats()
    );
    assert!(peak >= before + total / 2, "the blocks were never resident");
    assert!(
        after <= before + (32 << 20),
        "{} MiB still resident above the {} MiB at the start",
        mib(after - before),
        mib(before)
    );
}

#[test]
fn memory_returns_to_the_kernel_after_trim() {
    let env: &[(&str, &str)] = if in_fallback_run() {
        &[FALLBACK_ENV]
    } else {
        &[]
    };
    let out = run_child("memory_return_child", env, None);
    assert_child_passed("memory_return_child", &out);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn everything_again_in_fallback_mode() {
    if in_fallback_run() {
        return; // This is the rerun.
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--skip", "everything_again_in_fallback_mode"])
        .env(FALLBACK_ENV.0, FALLBACK_ENV.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok"),
        "fallback run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
