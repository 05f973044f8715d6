//! Counter operation sequences checked against a model. Shared by the fuzz target
//! (`fuzz/fuzz_targets/counter_ops.rs`) and the deterministic test (`tests/counter_ops.rs`).
//!
//! Every input decodes to some sequence of operations (no input is rejected), so the fuzzer
//! explores freely. Panics mean a mismatch with the model.

use percpu::{Counter, CounterGroup, CounterName};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    A,
    B,
    C,
}

impl CounterName for Stat {
    const ALL: &'static [Self] = &[Stat::A, Stat::B, Stat::C];
    fn index(self) -> usize {
        self as usize
    }
}

/// One operation; `target` 0 is the `Counter`, 1..=3 a group member.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Add {
        target: u8,
        value: i64,
    },
    Inc {
        target: u8,
    },
    Dec {
        target: u8,
    },
    Take {
        target: u8,
    },
    Sum {
        target: u8,
    },
    Snapshot,
    TakeSnapshot,
    /// Adds from `threads` short-lived threads, `adds` each.
    Threads {
        threads: u8,
        adds: u16,
        value: i16,
    },
}

fn take(n: usize, data: &mut &[u8]) -> Option<Vec<u8>> {
    if data.len() < n {
        return None;
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Some(head.to_vec())
}

/// Decodes `data` into operations, consuming bytes greedily.
pub fn decode(mut data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    while let Some(tag) = take(1, &mut data) {
        let target = tag[0] >> 4 & 3;
        let op = match tag[0] % 8 {
            0 => match take(8, &mut data) {
                Some(b) => Op::Add {
                    target,
                    value: i64::from_le_bytes(b.try_into().unwrap()),
                },
                None => break,
            },
            1 => Op::Inc { target },
            2 => Op::Dec { target },
            3 => Op::Take { target },
            4 => Op::Sum { target },
            5 => Op::Snapshot,
            6 => Op::TakeSnapshot,
            _ => match take(3, &mut data) {
                Some(b) => Op::Threads {
                    threads: b[0] % 4 + 1,
                    adds: u16::from(b[1]) * 4,
                    value: i16::from(b[2] as i8),
                },
                None => break,
            },
        };
        ops.push(op);
    }
    ops
}

/// The expected state: current sums, and sums at the last take, per target.
#[derive(Default)]
struct Model {
    sum: [i64; 4],
    taken_at: [i64; 4],
}

/// Runs `ops` on fresh counters and checks every read against the model.
pub fn run(ops: &[Op]) {
    let counter = Counter::new();
    let group = CounterGroup::<Stat, 3>::new();
    let mut model = Model::default();
    let add = |target: u8, value: i64| match target {
        0 => counter.add(value),
        t => group.add(Stat::ALL[usize::from(t) - 1], value),
    };
    let read = |target: u8| match target {
        0 => counter.sum(),
        t => group.sum(Stat::ALL[usize::from(t) - 1]),
    };
    for &op in ops {
        match op {
            Op::Add { target, value } => {
                add(target, value);
                model.sum[usize::from(target)] = model.sum[usize::from(target)].wrapping_add(value);
            }
            Op::Inc { target } | Op::Dec { target } => {
                let value = if matches!(op, Op::Inc { .. }) { 1 } else { -1 };
                match (target, value) {
                    (0, 1) => counter.inc(),
                    (0, _) => counter.dec(),
                    (t, 1) => group.inc(Stat::ALL[usize::from(t) - 1]),
                    (t, _) => group.dec(Stat::ALL[usize::from(t) - 1]),
                }
                model.sum[usize::from(target)] = model.sum[usize::from(target)].wrapping_add(value);
            }
            Op::Take { target: 0 } => {
                let expect = model.sum[0].wrapping_sub(model.taken_at[0]);
                assert_eq!(counter.take(), expect, "Counter::take");
                model.taken_at[0] = model.sum[0];
            }
            Op::Take { .. } | Op::TakeSnapshot => {
                let got = group.take_snapshot();
                for (i, stat) in Stat::ALL.iter().enumerate() {
                    let expect = model.sum[i + 1].wrapping_sub(model.taken_at[i + 1]);
                    assert_eq!(got[*stat], expect, "take_snapshot {stat:?}");
                    model.taken_at[i + 1] = model.sum[i + 1];
                }
            }
            Op::Sum { target } => {
                assert_eq!(read(target), model.sum[usize::from(target)], "sum {target}")
            }
            Op::Snapshot => {
                let snap = group.snapshot();
                for (i, stat) in Stat::ALL.iter().enumerate() {
                    assert_eq!(snap[*stat], model.sum[i + 1], "snapshot {stat:?}");
                }
            }
            Op::Threads {
                threads,
                adds,
                value,
            } => {
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let add = &add;
                        s.spawn(move || (0..adds).for_each(|_| add(t % 4, i64::from(value))));
                    }
                });
                for t in 0..threads {
                    let total = i64::from(value) * i64::from(adds);
                    model.sum[usize::from(t % 4)] =
                        model.sum[usize::from(t % 4)].wrapping_add(total);
                }
            }
        }
    }
    for target in 0..4 {
        assert_eq!(
            read(target),
            model.sum[usize::from(target)],
            "final sum {target}"
        );
    }
}
