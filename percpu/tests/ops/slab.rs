//! Allocator operation sequences on a `PerCpuAlloc` used as a value, checked against a model.
//! Shared by the fuzz target (`fuzz/fuzz_targets/slab_ops.rs`) and the deterministic test
//! (`tests/slab_ops.rs`).
//!
//! Every live block is filled with a pattern of its own; the model knows each block's layout
//! and pattern. Every new block must be aligned, at least as usable as asked, zero when asked,
//! and overlap no live block; every block's pattern must be intact when it is freed or
//! reallocated (realloc keeps the common prefix). A block resized by address (C's `realloc`)
//! may keep a larger size class than its new size names, so from then on it is resized and
//! freed by address only, as the API requires. At the end everything is freed and the
//! statistics must balance. Any input decodes.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

use percpu::PerCpuAlloc;

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Alloc {
        size: usize,
        align: usize,
    },
    AllocZeroed {
        size: usize,
        align: usize,
    },
    /// Free the live block at this position (modulo how many are live), with its layout.
    Free(u8),
    /// Free the live block at this position knowing only its address.
    FreeByPointer(u8),
    Realloc {
        which: u8,
        size: usize,
    },
    /// Resize the live block at this position knowing only its address (C's `realloc`).
    ReallocByPointer {
        which: u8,
        size: usize,
    },
    Trim,
}

pub struct Input {
    pub cpu_cache_bytes: usize,
    pub ops: Vec<Op>,
}

/// Sizes: mostly small, sometimes past the size classes, rarely several MiB.
fn size(a: u8, b: u8) -> usize {
    let raw = usize::from(u16::from_le_bytes([a, b]));
    match a % 16 {
        0 => raw * 64,  // up to 4 MiB
        1..=3 => raw,   // up to 64 KiB
        _ => raw % 600, // the small classes
    }
}

pub fn decode(data: &[u8]) -> Input {
    let (cpu_cache_bytes, mut rest) = match data.split_first() {
        Some((&c, rest)) => (64usize << (c % 12), rest),
        None => (4096, data),
    };
    let mut ops = Vec::new();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        let mut next = || match rest.split_first() {
            Some((&b, tail)) => {
                rest = tail;
                b
            }
            None => 0,
        };
        ops.push(match tag % 8 {
            0..=2 => {
                let size = size(next(), next());
                let align = 1 << (next() % 21);
                Op::Alloc { size, align }
            }
            3 => {
                let size = size(next(), next());
                Op::AllocZeroed {
                    size,
                    align: 1 << (tag >> 3),
                }
            }
            4 | 5 => Op::Free(next()),
            6 => {
                let which = next();
                let size = size(next(), next());
                if tag & 0x80 != 0 {
                    Op::ReallocByPointer { which, size }
                } else {
                    Op::Realloc { which, size }
                }
            }
            _ if tag & 0x80 != 0 => Op::Trim,
            _ => Op::FreeByPointer(next()),
        });
    }
    Input {
        cpu_cache_bytes,
        ops,
    }
}

struct Live {
    layout: Layout,
    seed: u8,
    /// Resized by address once: from then on freed and resized by address only.
    by_address: bool,
}

struct Model<'a> {
    alloc: &'a PerCpuAlloc,
    /// Live blocks by address.
    live: BTreeMap<usize, Live>,
    seeds: u8,
}

/// The pattern byte at offset `i` of a block with `seed`: the seed, then every 251st byte.
fn byte(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i % 251) as u8)
}

impl Model<'_> {
    /// Fills the block (whole, or its ends and every 4 KiB when large) and records it.
    fn adopt(&mut self, p: *mut u8, layout: Layout, zeroed: bool, by_address: bool) {
        let addr = p as usize;
        assert!(!p.is_null(), "allocation of {layout:?} failed");
        assert_eq!(
            addr % layout.align(),
            0,
            "{layout:?} misaligned at {addr:#x}"
        );
        // SAFETY: a live block of this allocator.
        let usable = unsafe { self.alloc.usable_size(p) };
        assert!(usable >= layout.size(), "{layout:?}: usable {usable}");
        let end = addr + layout.size().max(1);
        if let Some((&before, b)) = self.live.range(..=addr).next_back() {
            assert!(
                before + b.layout.size().max(1) <= addr,
                "overlaps {before:#x}"
            );
        }
        if let Some((&after, _)) = self.live.range(addr..).next() {
            assert!(end <= after, "{addr:#x}..{end:#x} overlaps {after:#x}");
        }
        self.seeds = self.seeds.wrapping_add(1);
        let seed = self.seeds;
        for i in positions(layout.size()) {
            // SAFETY: `i < size`, inside the block.
            unsafe {
                if zeroed {
                    assert_eq!(*p.add(i), 0, "zeroed block of {layout:?} has a byte at {i}");
                }
                *p.add(i) = byte(seed, i);
            }
        }
        self.live.insert(
            addr,
            Live {
                layout,
                seed,
                by_address,
            },
        );
    }

    /// Checks the block's pattern in its first `len` bytes.
    fn check(addr: usize, block: &Live, len: usize) {
        for i in positions(block.layout.size()).filter(|&i| i < len) {
            // SAFETY: `i < len <= size`, inside the live block.
            let found = unsafe { *(addr as *const u8).add(i) };
            assert_eq!(found, byte(block.seed, i), "byte {i} of {:?}", block.layout);
        }
    }

    fn nth(&self, which: u8) -> Option<usize> {
        let n = self.live.len();
        (n > 0).then(|| *self.live.keys().nth(usize::from(which) % n).unwrap())
    }
}

/// Offsets written and checked: every byte of small blocks; the ends and one byte per 4 KiB
/// of large ones (so multi-MiB blocks stay quick).
fn positions(size: usize) -> impl Iterator<Item = usize> {
    let step = if size <= 8192 { 1 } else { 4096 };
    (0..size)
        .step_by(step)
        .chain(size.checked_sub(1).filter(|last| last % step != 0))
}

pub fn run(input: &Input) {
    let alloc = PerCpuAlloc::with_cpu_cache_bytes(input.cpu_cache_bytes);
    let mut model = Model {
        alloc: &alloc,
        live: BTreeMap::new(),
        seeds: 0,
    };
    for &op in &input.ops {
        match op {
            Op::Alloc { size, align } | Op::AllocZeroed { size, align } => {
                let zeroed = matches!(op, Op::AllocZeroed { .. });
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a valid layout.
                let p = unsafe {
                    if zeroed {
                        alloc.alloc_zeroed(layout)
                    } else {
                        alloc.alloc(layout)
                    }
                };
                model.adopt(p, layout, zeroed, false);
            }
            Op::Free(which) | Op::FreeByPointer(which) => {
                let Some(addr) = model.nth(which) else {
                    continue;
                };
                let block = model.live.remove(&addr).unwrap();
                Model::check(addr, &block, block.layout.size());
                // SAFETY: a live block of this allocator, freed once.
                unsafe {
                    match op {
                        Op::Free(_) if !block.by_address => {
                            alloc.dealloc(addr as *mut u8, block.layout)
                        }
                        _ => alloc.free(addr as *mut u8),
                    }
                }
            }
            Op::Realloc { which, size } | Op::ReallocByPointer { which, size } => {
                let Some(addr) = model.nth(which) else {
                    continue;
                };
                let block = model.live.remove(&addr).unwrap();
                let by_address = block.by_address || matches!(op, Op::ReallocByPointer { .. });
                // SAFETY: a live block, resized by address or with its layout; the new size is
                // small enough.
                let (p, align) = unsafe {
                    if by_address {
                        (alloc.realloc_unsized(addr as *mut u8, size), 16)
                    } else {
                        let p = alloc.realloc(addr as *mut u8, block.layout, size);
                        (p, block.layout.align())
                    }
                };
                // A block kept in place keeps its address, and so its old alignment.
                let align = if p as usize == addr {
                    align.max(block.layout.align())
                } else {
                    align
                };
                let layout = Layout::from_size_align(size, align).unwrap();
                let kept = block.layout.size().min(size);
                Model::check(p as usize, &block, kept);
                model.adopt(p, layout, false, by_address);
            }
            Op::Trim => {
                alloc.trim();
            }
        }
    }
    for (addr, block) in std::mem::take(&mut model.live) {
        Model::check(addr, &block, block.layout.size());
        // SAFETY: a live block, freed once, by address when it was resized that way.
        unsafe {
            if block.by_address {
                alloc.free(addr as *mut u8);
            } else {
                alloc.dealloc(addr as *mut u8, block.layout);
            }
        }
    }
    let stats = alloc.stats();
    assert_eq!(stats.allocs(), stats.frees(), "{stats}");
    assert_eq!(stats.in_use_bytes(), 0, "{stats}");
}
