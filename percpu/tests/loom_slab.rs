//! loom model of the allocator's transfer level over its central level (`slab/heap.rs`,
//! `slab/central.rs`, `freelist/global.rs`). Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p percpu --test loom_slab --release`.
//!
//! The transfer level is the freelist's tagged Treiber stack (its ABA case is modelled in
//! `loom_freelist.rs`), here with the depth each pushed chain records so that the stack's length
//! is read from its top. Frees push onto it until that length reaches the limit, then spill to
//! the central level; allocations pop from it, else fill from the central level; a trim empties
//! it into the central level meanwhile. The central level (under its lock) returns a slab when
//! its last live block comes back. Checked: every block exactly once at the end, a slab is only
//! returned with every block of it free, live counts match, and the recorded length is exact
//! once the threads are done.
//!
//! A second model covers homes (the 16–48-byte classes): each slab's home is read without a
//! lock by every free, which pushes the block onto its home's shard (or spills it), while fills
//! under the central lock adopt a slab with returned blocks by rewriting its home. Checked: every
//! block exactly once at the end, and live counts match, whatever home a free read.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

const NIL: u32 = u32::MAX;
const BLOCKS: usize = 4;
const PER_SLAB: usize = 2;
const LIMIT: u32 = 1;

/// The transfer level: block `b` travels in slot `b` (chains of one).
struct Transfer {
    head: AtomicU64,
    next: [AtomicU32; BLOCKS],
    depth: [AtomicU32; BLOCKS],
}

fn first_of(head: u64) -> u32 {
    head as u32
}

impl Transfer {
    fn new() -> Transfer {
        Transfer {
            head: AtomicU64::new(u64::from(NIL)),
            next: core::array::from_fn(|_| AtomicU32::new(NIL)),
            depth: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn depth_of(&self, first: u32) -> u32 {
        if first == NIL {
            0
        } else {
            self.depth[first as usize].load(Ordering::Relaxed)
        }
    }

    fn len(&self) -> u32 {
        self.depth_of(first_of(self.head.load(Ordering::Acquire)))
    }

    fn push(&self, block: u32) {
        let mut old = self.head.load(Ordering::Acquire);
        loop {
            self.next[block as usize].store(first_of(old), Ordering::Relaxed);
            self.depth[block as usize].store(1 + self.depth_of(first_of(old)), Ordering::Relaxed);
            let new = (((old >> 32) + 1) << 32) | u64::from(block);
            match self
                .head
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    fn pop(&self) -> Option<u32> {
        let mut old = self.head.load(Ordering::Acquire);
        loop {
            let first = first_of(old);
            if first == NIL {
                return None;
            }
            let next = self.next[first as usize].load(Ordering::Relaxed);
            let new = (((old >> 32) + 1) << 32) | u64::from(next);
            match self
                .head
                .compare_exchange(old, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(first),
                Err(current) => old = current,
            }
        }
    }
}

#[derive(Default)]
struct Slab {
    free: Vec<u32>,
    live: u32,
    /// Back at the page heap.
    returned: bool,
}

const SLABS: usize = BLOCKS / PER_SLAB;

/// The central level at the start: every slab at the page heap, holding all its blocks.
fn all_returned() -> [Slab; SLABS] {
    core::array::from_fn(|s| Slab {
        free: (s * PER_SLAB..(s + 1) * PER_SLAB)
            .map(|b| b as u32)
            .collect(),
        live: 0,
        returned: true,
    })
}

/// Puts `block` back in its slab (the central lock held): whether the slab, now with every
/// block free, went back to the page heap.
fn give_back(central: &mut [Slab; SLABS], block: u32) -> bool {
    let slab = &mut central[block as usize / PER_SLAB];
    assert!(!slab.returned, "block {block} spilled into a returned slab");
    slab.free.push(block);
    slab.live -= 1;
    if slab.live == 0 {
        assert_eq!(
            slab.free.len(),
            PER_SLAB,
            "slab returned with a block missing"
        );
        slab.returned = true;
    }
    slab.returned
}

struct Heap {
    transfer: Transfer,
    central: Mutex<[Slab; SLABS]>,
}

impl Heap {
    fn new() -> Arc<Heap> {
        Arc::new(Heap {
            transfer: Transfer::new(),
            central: Mutex::new(all_returned()),
        })
    }

    fn alloc(&self) -> u32 {
        if let Some(block) = self.transfer.pop() {
            return block;
        }
        // Fill: a partial slab first, else one from the page heap.
        let mut central = self.central.lock().unwrap();
        let slab = (0..central.len())
            .find(|&s| !central[s].returned && !central[s].free.is_empty())
            .or_else(|| (0..central.len()).find(|&s| central[s].returned))
            .expect("4 blocks cover 2 threads");
        let slab = &mut central[slab];
        slab.returned = false;
        slab.live += 1;
        slab.free.pop().unwrap()
    }

    fn free(&self, block: u32) {
        if self.transfer.len() >= LIMIT {
            self.spill(block);
        } else {
            self.transfer.push(block);
        }
    }

    fn spill(&self, block: u32) {
        give_back(&mut self.central.lock().unwrap(), block);
    }

    fn trim(&self) {
        while let Some(block) = self.transfer.pop() {
            self.spill(block);
        }
    }
}

#[test]
fn transfer_and_central_levels_keep_every_block_once() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let heap = Heap::new();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let heap = heap.clone();
                thread::spawn(move || {
                    let a = heap.alloc();
                    let b = heap.alloc();
                    heap.free(a);
                    heap.free(b);
                })
            })
            .collect();
        let trimmer = {
            let heap = heap.clone();
            thread::spawn(move || heap.trim())
        };
        for w in workers {
            w.join().unwrap();
        }
        trimmer.join().unwrap();

        let mut transfer = Vec::new();
        let recorded = heap.transfer.len();
        while let Some(block) = heap.transfer.pop() {
            transfer.push(block);
        }
        assert_eq!(
            recorded as usize,
            transfer.len(),
            "recorded transfer length"
        );
        let central = heap.central.lock().unwrap();
        let mut all = transfer.clone();
        for (s, slab) in central.iter().enumerate() {
            let out_here = transfer
                .iter()
                .filter(|&&b| b as usize / PER_SLAB == s)
                .count();
            assert_eq!(slab.live as usize, out_here, "slab {s} live count");
            all.extend(&slab.free);
        }
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "each block exactly once");
    });
}

/// No home (a slab at the page heap).
const NO_HOME: u32 = u32::MAX;

/// Two indices, each with its shard of the transfer level; every slab has a home, read by frees
/// without the lock.
struct HomedHeap {
    shards: [Transfer; 2],
    homes: [AtomicU32; SLABS],
    central: Mutex<[Slab; SLABS]>,
}

impl HomedHeap {
    fn new() -> Arc<HomedHeap> {
        Arc::new(HomedHeap {
            shards: [Transfer::new(), Transfer::new()],
            homes: core::array::from_fn(|_| AtomicU32::new(NO_HOME)),
            central: Mutex::new(all_returned()),
        })
    }

    /// Index `home`'s allocation: its own shard, else a fill: a slab homed there, else one with
    /// returned blocks (adopted), else one from the page heap (homed there).
    fn alloc(&self, home: u32) -> u32 {
        if let Some(block) = self.shards[home as usize].pop() {
            return block;
        }
        let mut central = self.central.lock().unwrap();
        let usable = |s: usize, c: &[Slab; SLABS]| !c[s].returned && !c[s].free.is_empty();
        let slab = (0..SLABS)
            .find(|&s| usable(s, &central) && self.homes[s].load(Ordering::Relaxed) == home)
            .or_else(|| (0..SLABS).find(|&s| usable(s, &central)))
            .or_else(|| (0..SLABS).find(|&s| central[s].returned))
            .expect("4 blocks cover 2 threads of 2");
        self.homes[slab].store(home, Ordering::Relaxed);
        let slab = &mut central[slab];
        slab.returned = false;
        slab.live += 1;
        slab.free.pop().unwrap()
    }

    /// A free anywhere: to the shard of the home it reads, or to the slab past the limit.
    fn free(&self, block: u32) {
        let home = self.homes[block as usize / PER_SLAB].load(Ordering::Relaxed);
        assert_ne!(home, NO_HOME, "block {block} of a slab at the page heap");
        let shard = &self.shards[home as usize];
        if shard.len() >= LIMIT {
            self.spill(block);
        } else {
            shard.push(block);
        }
    }

    fn spill(&self, block: u32) {
        if give_back(&mut self.central.lock().unwrap(), block) {
            self.homes[block as usize / PER_SLAB].store(NO_HOME, Ordering::Relaxed);
        }
    }

    fn trim(&self) {
        for shard in &self.shards {
            while let Some(block) = shard.pop() {
                self.spill(block);
            }
        }
    }
}

/// Each index allocates two blocks and the other index frees them: every free goes home through
/// a home read without the lock, while fills adopt slabs and a trim drains both shards.
#[test]
fn homes_read_without_the_lock_keep_every_block_once() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let heap = HomedHeap::new();
        let to_1 = Arc::new(Mutex::new(Vec::<u32>::new()));
        let to_0 = Arc::new(Mutex::new(Vec::<u32>::new()));
        let workers: Vec<_> = (0..2u32)
            .map(|home| {
                let heap = heap.clone();
                let (mine, theirs) = if home == 0 {
                    (to_0.clone(), to_1.clone())
                } else {
                    (to_1.clone(), to_0.clone())
                };
                thread::spawn(move || {
                    let blocks = [heap.alloc(home), heap.alloc(home)];
                    theirs.lock().unwrap().extend(blocks);
                    // Free what the other index allocated, as far as it has handed over.
                    let handed: Vec<u32> = mine.lock().unwrap().drain(..).collect();
                    for block in handed {
                        heap.free(block);
                    }
                })
            })
            .collect();
        let trimmer = {
            let heap = heap.clone();
            thread::spawn(move || heap.trim())
        };
        for w in workers {
            w.join().unwrap();
        }
        trimmer.join().unwrap();
        // What was handed over after its receiver looked, then everything back to the slabs.
        for queue in [&to_0, &to_1] {
            let left: Vec<u32> = queue.lock().unwrap().drain(..).collect();
            for block in left {
                heap.free(block);
            }
        }
        heap.trim();

        let central = heap.central.lock().unwrap();
        let mut all: Vec<u32> = Vec::new();
        for (s, slab) in central.iter().enumerate() {
            assert_eq!(slab.live, 0, "slab {s}: every block came back");
            all.extend(&slab.free);
        }
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "each block exactly once");
    });
}
