//! Freelist operation sequences checked against a model. Shared by the fuzz target
//! (`fuzz/fuzz_targets/freelist_ops.rs`) and the deterministic test (`tests/freelist_ops.rs`).
//!
//! Objects are fake, never-dereferenced addresses; the model knows which are in the list and
//! which the runner holds. A pop must return an object the model has in the list (never one held,
//! never twice); `PopAll` drains and must get back exactly the model's set; between ops the
//! list's statistics must account for exactly the model's items. Any input decodes.

use std::collections::BTreeSet;
use std::ptr::NonNull;

use percpu::RawFreeList;

#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Push a fresh object.
    PushNew,
    /// Push back the held object at this position (modulo how many are held).
    PushHeld(u8),
    Pop,
    Drain,
    /// Drain, pop until empty, check against the model, push everything back.
    PopAll,
    /// `threads` threads each push `each` fresh objects, pop as many, and push back what they got.
    Threads {
        threads: u8,
        each: u8,
    },
}

pub struct Input {
    pub capacity: usize,
    pub ops: Vec<Op>,
}

pub fn decode(data: &[u8]) -> Input {
    let (capacity, mut rest) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c % 16) + 1, rest),
        None => (1, data),
    };
    let mut ops = Vec::new();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        ops.push(match tag % 8 {
            0 | 1 => Op::PushNew,
            2 => Op::PushHeld(tag >> 3),
            3 | 4 => Op::Pop,
            5 => Op::Drain,
            6 => Op::PopAll,
            _ => match rest.split_first() {
                Some((&b, tail)) => {
                    rest = tail;
                    Op::Threads {
                        threads: b % 4 + 1,
                        each: (b >> 2) % 64 + 1,
                    }
                }
                None => break,
            },
        });
    }
    Input { capacity, ops }
}

fn object(n: usize) -> NonNull<u8> {
    NonNull::new((n * 64) as *mut u8).unwrap()
}

fn id(block: NonNull<u8>) -> usize {
    block.as_ptr() as usize / 64
}

pub fn run(input: &Input) {
    let list = RawFreeList::new(input.capacity).unwrap();
    let mut in_list = BTreeSet::new();
    let mut held: Vec<usize> = Vec::new();
    let mut next = 1usize;
    let take = |list: &RawFreeList, in_list: &mut BTreeSet<usize>, global: bool| -> Option<usize> {
        let got = id(if global {
            list.pop_global()?
        } else {
            list.pop()?
        });
        assert!(
            in_list.remove(&got),
            "popped object {got}, which is not in the list"
        );
        Some(got)
    };
    for &op in &input.ops {
        match op {
            Op::PushNew => {
                list.push(object(next)).unwrap();
                in_list.insert(next);
                next += 1;
            }
            Op::PushHeld(at) => {
                if !held.is_empty() {
                    let got = held.swap_remove(usize::from(at) % held.len());
                    list.push(object(got)).unwrap();
                    assert!(in_list.insert(got));
                }
            }
            Op::Pop => {
                if let Some(got) = take(&list, &mut in_list, false) {
                    held.push(got);
                }
            }
            Op::Drain => {
                list.drain().unwrap();
            }
            Op::PopAll => {
                list.drain().unwrap();
                let mut got = Vec::new();
                while let Some(x) = take(&list, &mut in_list, true) {
                    got.push(x);
                }
                assert!(in_list.is_empty(), "after a drain, pops missed {in_list:?}");
                for x in got {
                    list.push(object(x)).unwrap();
                    in_list.insert(x);
                }
            }
            Op::Threads { threads, each } => {
                let first = next;
                next += usize::from(threads) * usize::from(each);
                std::thread::scope(|s| {
                    for t in 0..usize::from(threads) {
                        let list = &list;
                        s.spawn(move || {
                            let base = first + t * usize::from(each);
                            for n in base..base + usize::from(each) {
                                list.push(object(n)).unwrap();
                            }
                            let mut got = Vec::new();
                            for _ in 0..each {
                                got.extend(list.pop());
                            }
                            for b in got {
                                list.push(b).unwrap();
                            }
                        });
                    }
                });
                in_list.extend(first..next);
            }
        }
        // Quiet between ops: the statistics are exact.
        let stats = list.stats();
        assert_eq!(
            stats.pushes - stats.pops,
            in_list.len() as u64,
            "{stats:?} after {op:?}"
        );
        assert_eq!(
            stats.cached + stats.global,
            in_list.len(),
            "{stats:?} after {op:?}"
        );
    }
    // Everything pushed and not held must come back, once.
    list.drain().unwrap();
    while take(&list, &mut in_list, true).is_some() {}
    assert!(in_list.is_empty(), "lost objects: {in_list:?}");
}
