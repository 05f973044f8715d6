//! A/B of `RawFreeList` push+pop pairs against rseq-sys's bare stack sequences on one per-CPU
//! array, one thread, alternating rounds. Prints median ns per pair and the ratio.
//! `cargo run --release -p percpu-benches --example freelist_ab [ROUNDS] [PAIRS]`

use std::hint::black_box;
use std::ptr::NonNull;

use percpu_benches::{Padded, median, ns_per_call};

const CAP: usize = 64;

/// Per-CPU `[count, slots]` driven by the bare sequences.
struct BareStacks(Vec<Padded<std::cell::UnsafeCell<[usize; CAP + 1]>>>);

impl BareStacks {
    fn push_pop(&self, item: usize) -> Option<usize> {
        let current = rseq_sys::current().unwrap();
        let seq = current.sequences().unwrap();
        let index = current.best_index();
        loop {
            let id = current.index(index);
            let cache = self.0[id as usize].0.get().cast::<usize>();
            // SAFETY: this thread is the only user; count then slots.
            let out = unsafe { seq.stack_push(index, id, cache, cache.add(1), CAP, item) };
            if out == rseq_sys::Outcome::Aborted {
                continue;
            }
            break;
        }
        loop {
            let id = current.index(index);
            let cache = self.0[id as usize].0.get().cast::<usize>();
            // SAFETY: as above.
            match unsafe { seq.stack_pop(index, id, cache, cache.add(1)) } {
                rseq_sys::Outcome::Committed(x) => return Some(x),
                rseq_sys::Outcome::CompareFailed => return None,
                rseq_sys::Outcome::Aborted => continue,
            }
        }
    }
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let rounds = args.next().unwrap_or(11);
    let pairs = args.next().unwrap_or(20_000_000);
    let list = percpu::RawFreeList::new(CAP).unwrap();
    let bare = BareStacks(
        (0..rseq_sys::possible_cpus())
            .map(|_| Padded(std::cell::UnsafeCell::new([0; CAP + 1])))
            .collect(),
    );
    let item = NonNull::new(0x1000 as *mut u8).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(ns_per_call(pairs, || {
            let _ = list.push(item);
            black_box(list.pop());
        }));
        b.push(ns_per_call(pairs, || {
            black_box(bare.push_pop(0x1000));
        }));
    }
    let (a, b) = (median(a), median(b));
    println!("mode: {}", percpu::mode());
    println!("RawFreeList push+pop   {a:.3} ns/pair");
    println!("bare stack sequences   {b:.3} ns/pair");
    println!("ratio                  {:.3}×", a / b);
}
