//! loom models of the freelist protocols. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p percpu --test loom_freelist --release`.
//!
//! 1. The global level's Treiber stack with a tagged head (`freelist/global.rs`), including the
//!    ABA interleaving; without the tag loom must find the corruption.
//! 2. The per-CPU cache protocol with drain (`freelist/mod.rs`): a committed sequence is modelled
//!    as holding its CPU's try-lock (an abort is the try-lock failing), the fence as waiting out
//!    every holder, and the drain as lock bit, fence, re-check. Without the fence and re-check
//!    loom must find a lost or duplicated item.
//! 3. The caches of threads without rseq (`push_direct`/`pop_direct` in `freelist/mod.rs`): a
//!    try-lock in the count word (compare-exchange with Acquire, unlocked by the Release store
//!    of the new count), a thread finding it held going to the global level, and a drain that
//!    waits for the lock. The slots are plain memory (loom cells), so loom checks that the lock
//!    orders every access to them; with a Relaxed lock it must report the race.
//! 4. The global level's fresh slots (`take_fresh`/`map_chunk` in `freelist/global.rs`): threads
//!    of every level sharing a slot pool claim runs of never-used slots with a compare-exchange
//!    on the pool's one counter, mapping a chunk first when nobody has (the loser of that race
//!    discards its mapping). Claims must never overlap, and a chunk's memory must be published
//!    (Release) before its pointer: loom checks the slot writes as plain memory, and with a
//!    Relaxed publish it must report the race.
#![cfg(loom)]

use std::ptr;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

fn bounded() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder
}

// ---- 1. Tagged Treiber stack ----

const NIL: u32 = u32::MAX;

struct Stack {
    head: AtomicU64,
    next: [AtomicU32; 3],
    tagged: bool,
}

impl Stack {
    /// Slots 0 → 1 → 2.
    fn new(tagged: bool) -> Arc<Stack> {
        Arc::new(Stack {
            head: AtomicU64::new(0),
            next: [AtomicU32::new(1), AtomicU32::new(2), AtomicU32::new(NIL)],
            tagged,
        })
    }

    fn pack(&self, tag: u64, first: u32) -> u64 {
        if self.tagged {
            (tag << 32) | first as u64
        } else {
            first as u64
        }
    }

    fn push(&self, slot: u32) {
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            self.next[slot as usize].store(old as u32, Ordering::Relaxed);
            let new = self.pack((old >> 32) + 1, slot);
            match self
                .head
                .compare_exchange(old, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => old = current,
            }
        }
    }

    fn pop(&self) -> Option<u32> {
        let mut old = self.head.load(Ordering::Acquire);
        loop {
            let first = old as u32;
            if first == NIL {
                return None;
            }
            let next = self.next[first as usize].load(Ordering::Relaxed);
            let new = self.pack((old >> 32) + 1, next);
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

/// A pops once; B pops twice and pushes its first back: the ABA shape. Every slot must end up
/// held exactly once.
fn aba_scenario(tagged: bool) {
    bounded().check(move || {
        let stack = Stack::new(tagged);
        let a = {
            let stack = stack.clone();
            thread::spawn(move || stack.pop())
        };
        let b = {
            let stack = stack.clone();
            thread::spawn(move || {
                let first = stack.pop();
                let second = stack.pop();
                if let Some(first) = first {
                    stack.push(first);
                }
                second
            })
        };
        let mut held: Vec<u32> = [a.join().unwrap(), b.join().unwrap()]
            .into_iter()
            .flatten()
            .collect();
        while let Some(slot) = stack.pop() {
            held.push(slot);
            assert!(held.len() <= 3, "corrupted stack: {held:?}");
        }
        held.sort_unstable();
        assert_eq!(held, [0, 1, 2], "each slot exactly once");
    });
}

#[test]
fn tagged_stack_survives_aba() {
    aba_scenario(true);
}

#[test]
#[should_panic]
fn untagged_stack_would_be_corrupted_by_aba() {
    aba_scenario(false);
}

// ---- 2. Per-CPU cache with drain ----

const LOCKED: usize = 1 << 63;

/// A sequence's commit: a plain store that overwrites whatever is there, the drainer's lock bit
/// included. Modelled as `swap` (which overwrites just the same) because loom mis-orders a plain
/// store racing a read-modify-write on the same atomic (tokio-rs/loom#254, #282) and reports
/// executions no C++ implementation can produce.
fn commit(count: &AtomicUsize, value: usize) {
    count.swap(value, Ordering::Relaxed);
}
const CAP: usize = 2;

struct Cpu {
    count: AtomicUsize,
    slots: [AtomicUsize; CAP],
}

struct Model {
    /// Held by whatever runs on the CPU: a sequence that cannot take it has been preempted
    /// (aborts and retries); the fence takes it to wait out any sequence in flight.
    cpu: Mutex<()>,
    cache: Cpu,
    global: Mutex<Vec<usize>>,
    fence_and_recheck: bool,
}

impl Model {
    fn new(fence_and_recheck: bool, cached: &[usize]) -> Arc<Model> {
        let m = Model {
            cpu: Mutex::new(()),
            cache: Cpu {
                count: AtomicUsize::new(cached.len()),
                slots: [AtomicUsize::new(0), AtomicUsize::new(0)],
            },
            global: Mutex::new(Vec::new()),
            fence_and_recheck,
        };
        for (i, &x) in cached.iter().enumerate() {
            m.cache.slots[i].store(x, Ordering::Relaxed);
        }
        Arc::new(m)
    }

    /// Runs `body` as one sequence: committed while holding the CPU, retried (aborted) if
    /// something else holds it.
    fn sequence<R>(&self, body: impl Fn(&Cpu) -> R) -> R {
        loop {
            if let Ok(_running) = self.cpu.try_lock() {
                return body(&self.cache);
            }
            thread::yield_now();
        }
    }

    /// stack_push: full (or locked) → the item goes to the global level.
    fn push(&self, x: usize) {
        let pushed = self.sequence(|cpu| {
            let n = cpu.count.load(Ordering::Relaxed);
            if n >= CAP {
                return false;
            }
            cpu.slots[n].store(x, Ordering::Relaxed);
            commit(&cpu.count, n + 1);
            true
        });
        if !pushed {
            self.global.lock().unwrap().push(x);
        }
    }

    /// stack_pop (signed compare): empty or locked → take from the global level.
    fn pop(&self) -> Option<usize> {
        let popped = self.sequence(|cpu| {
            let n = cpu.count.load(Ordering::Relaxed);
            if n as isize <= 0 {
                return None;
            }
            let x = cpu.slots[n - 1].load(Ordering::Relaxed);
            commit(&cpu.count, n - 1);
            Some(x)
        });
        popped.or_else(|| self.global.lock().unwrap().pop())
    }

    /// Waits until no sequence is in flight on the CPU (what membarrier guarantees).
    fn fence(&self) {
        drop(self.cpu.lock().unwrap());
    }

    fn drain(&self) {
        self.cache.count.fetch_or(LOCKED, Ordering::AcqRel);
        if self.fence_and_recheck {
            loop {
                self.fence();
                if self.cache.count.load(Ordering::Acquire) & LOCKED != 0 {
                    break;
                }
                self.cache.count.fetch_or(LOCKED, Ordering::AcqRel);
            }
        }
        let n = self.cache.count.load(Ordering::Acquire) & !LOCKED;
        let mut global = self.global.lock().unwrap();
        for slot in &self.cache.slots[..n.min(CAP)] {
            global.push(slot.load(Ordering::Relaxed));
        }
        drop(global);
        self.cache.count.store(0, Ordering::Release);
    }
}

/// A cache model as the scenarios drive it.
trait Cache: 'static {
    fn push(&self, x: usize);
    fn pop(&self) -> Option<usize>;
    fn drain(&self);
}

impl Cache for Model {
    fn push(&self, x: usize) {
        Model::push(self, x)
    }
    fn pop(&self) -> Option<usize> {
        Model::pop(self)
    }
    fn drain(&self) {
        Model::drain(self)
    }
}

/// Runs a pusher (of item 2), a popper and a drainer on `m` at once: what the popper got.
fn push_pop_drain<M: Cache>(m: &Arc<M>) -> Option<usize> {
    let pusher = {
        let m = m.clone();
        thread::spawn(move || m.push(2))
    };
    let popper = {
        let m = m.clone();
        thread::spawn(move || m.pop())
    };
    let drainer = {
        let m = m.clone();
        thread::spawn(move || m.drain())
    };
    pusher.join().unwrap();
    drainer.join().unwrap();
    popper.join().unwrap()
}

/// A pusher, a popper and a drainer on one cache: every item ends up exactly once.
fn drain_scenario(fence_and_recheck: bool) {
    bounded().check(move || {
        let m = Model::new(fence_and_recheck, &[1]);
        let mut all: Vec<usize> = push_pop_drain(&m).into_iter().collect();
        let n = m.cache.count.load(Ordering::Relaxed) & !LOCKED;
        all.extend(
            m.cache.slots[..n.min(CAP)]
                .iter()
                .map(|s| s.load(Ordering::Relaxed)),
        );
        all.extend(m.global.lock().unwrap().iter().copied());
        all.sort_unstable();
        assert_eq!(all, [1, 2], "each item exactly once");
    });
}

#[test]
fn drain_with_fence_and_recheck_keeps_every_item_once() {
    drain_scenario(true);
}

#[test]
#[should_panic]
fn drain_without_fence_would_lose_or_duplicate_items() {
    drain_scenario(false);
}

// ---- 3. Locked caches of threads without rseq ----

struct Locked {
    /// Depth, with `LOCKED` while a thread holds the cache.
    count: AtomicUsize,
    slots: [loom::cell::UnsafeCell<usize>; CAP],
    global: Mutex<Vec<usize>>,
    /// Acquire in the real protocol; Relaxed to show loom finds the race.
    lock_order: Ordering,
}

impl Locked {
    fn new(lock_order: Ordering, cached: &[usize]) -> Arc<Locked> {
        let slots = [
            loom::cell::UnsafeCell::new(cached.first().copied().unwrap_or(0)),
            loom::cell::UnsafeCell::new(cached.get(1).copied().unwrap_or(0)),
        ];
        Arc::new(Locked {
            count: AtomicUsize::new(cached.len()),
            slots,
            global: Mutex::new(Vec::new()),
            lock_order,
        })
    }

    /// The depth, with the lock now ours; `None` if someone holds it.
    fn try_lock(&self) -> Option<usize> {
        let word = self.count.load(Ordering::Relaxed);
        if word & LOCKED != 0 {
            return None;
        }
        self.count
            .compare_exchange(word, word | LOCKED, self.lock_order, Ordering::Relaxed)
            .ok()
            .map(|_| word)
    }

    fn unlock(&self, depth: usize) {
        self.count.store(depth, Ordering::Release);
    }

    fn push(&self, x: usize) {
        match self.try_lock() {
            Some(n) if n < CAP => {
                // SAFETY: slot `n` is ours while we hold the lock.
                self.slots[n].with_mut(|slot| unsafe { *slot = x });
                self.unlock(n + 1);
            }
            Some(n) => {
                self.unlock(n);
                self.global.lock().unwrap().push(x);
            }
            None => self.global.lock().unwrap().push(x),
        }
    }

    fn pop(&self) -> Option<usize> {
        match self.try_lock() {
            Some(n) if n > 0 => {
                // SAFETY: slot `n - 1` is ours while we hold the lock.
                let x = self.slots[n - 1].with(|slot| unsafe { *slot });
                self.unlock(n - 1);
                Some(x)
            }
            Some(n) => {
                self.unlock(n);
                self.global.lock().unwrap().pop()
            }
            None => self.global.lock().unwrap().pop(),
        }
    }

    fn drain(&self) {
        let n = loop {
            if let Some(n) = self.try_lock() {
                break n;
            }
            thread::yield_now();
        };
        let mut global = self.global.lock().unwrap();
        for slot in &self.slots[..n] {
            // SAFETY: the cache is ours while we hold the lock.
            global.push(slot.with(|slot| unsafe { *slot }));
        }
        drop(global);
        self.unlock(0);
    }
}

impl Cache for Locked {
    fn push(&self, x: usize) {
        Locked::push(self, x)
    }
    fn pop(&self) -> Option<usize> {
        Locked::pop(self)
    }
    fn drain(&self) {
        Locked::drain(self)
    }
}

/// A pusher, a popper and a drainer on one locked cache: every item ends up exactly once.
fn locked_scenario(lock_order: Ordering) {
    bounded().check(move || {
        let m = Locked::new(lock_order, &[1]);
        let mut all: Vec<usize> = push_pop_drain(&m).into_iter().collect();
        let n = m.count.load(Ordering::Acquire);
        assert_eq!(n & LOCKED, 0, "left locked");
        for slot in &m.slots[..n] {
            // SAFETY: every thread has finished.
            all.push(slot.with(|slot| unsafe { *slot }));
        }
        all.extend(m.global.lock().unwrap().iter().copied());
        all.sort_unstable();
        assert_eq!(all, [1, 2], "each item exactly once");
    });
}

#[test]
fn locked_caches_keep_every_item_once() {
    locked_scenario(Ordering::Acquire);
}

#[test]
#[should_panic]
fn a_relaxed_lock_would_race_on_the_slots() {
    locked_scenario(Ordering::Relaxed);
}

// ---- 4. Fresh slots of the global level ----

/// Slots per chunk and chunks, small enough for loom to explore every interleaving.
const CHUNK_SLOTS: u32 = 2;
const CHUNKS: usize = 2;

/// A chunk's slots' `next` links, as plain memory. The mapper writes them first (standing in
/// for the kernel's zero fill), so a claimer's write races with it unless the publish orders
/// them.
struct Chunk {
    next: [UnsafeCell<u32>; CHUNK_SLOTS as usize],
}

struct Fresh {
    fresh: AtomicU32,
    chunks: [AtomicPtr<Chunk>; CHUNKS],
    publish: Ordering,
}

impl Fresh {
    fn new(publish: Ordering) -> Arc<Fresh> {
        Arc::new(Fresh {
            fresh: AtomicU32::new(0),
            chunks: [(); CHUNKS].map(|()| AtomicPtr::new(ptr::null_mut())),
            publish,
        })
    }

    fn map_chunk(&self, chunk: usize) -> *mut Chunk {
        let slots = self.chunks[chunk].load(Ordering::Acquire);
        if !slots.is_null() {
            return slots;
        }
        let mine = Box::into_raw(Box::new(Chunk {
            next: [(); CHUNK_SLOTS as usize].map(|()| UnsafeCell::new(0)),
        }));
        // SAFETY: our own fresh allocation, not yet shared.
        for cell in unsafe { &(*mine).next } {
            // SAFETY: the cell's pointer, valid and not yet shared.
            cell.with_mut(|next| unsafe { *next = NIL });
        }
        match self.chunks[chunk].compare_exchange(
            ptr::null_mut(),
            mine,
            self.publish,
            Ordering::Acquire,
        ) {
            Ok(_) => mine,
            Err(theirs) => {
                // SAFETY: ours, never published.
                drop(unsafe { Box::from_raw(mine) });
                theirs
            }
        }
    }

    /// As `Global::take_fresh`: up to `k` never-used slots from one chunk, linked.
    fn take(&self, k: u32) -> Option<(u32, u32)> {
        let mut first = self.fresh.load(Ordering::Relaxed);
        loop {
            let chunk = (first / CHUNK_SLOTS) as usize;
            if chunk >= CHUNKS {
                return None;
            }
            let slots = self.map_chunk(chunk);
            let offset = first % CHUNK_SLOTS;
            let len = k.min(CHUNK_SLOTS - offset);
            match self.fresh.compare_exchange(
                first,
                first + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    for i in 0..len {
                        let next = if i + 1 == len { NIL } else { first + i + 1 };
                        // SAFETY: the chunk lives until the model ends; the slot is ours.
                        let cell = unsafe { &(*slots).next[(offset + i) as usize] };
                        // SAFETY: the cell's pointer; loom checks the write is ordered.
                        cell.with_mut(|p| unsafe { *p = next });
                    }
                    return Some((first, len));
                }
                Err(now) => first = now,
            }
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        for chunk in &self.chunks {
            let slots = chunk.load(Ordering::Relaxed);
            if !slots.is_null() {
                // SAFETY: published once, freed once, nobody uses it any more.
                drop(unsafe { Box::from_raw(slots) });
            }
        }
    }
}

/// Two threads claim fresh slots (one claim crossing into the second chunk): every slot claimed
/// at most once, every link as its claimer wrote it.
fn fresh_scenario(publish: Ordering) {
    bounded().check(move || {
        let fresh = Fresh::new(publish);
        let claimers: Vec<_> = [1, 3]
            .into_iter()
            .map(|k| {
                let fresh = fresh.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut want = k;
                    while want > 0 {
                        let Some((first, len)) = fresh.take(want) else {
                            break;
                        };
                        got.push((first, len));
                        want -= len;
                    }
                    got
                })
            })
            .collect();
        let mut slots = Vec::new();
        for claimer in claimers {
            for (first, len) in claimer.join().unwrap() {
                for i in 0..len {
                    let slot = first + i;
                    let chunk = fresh.chunks[(slot / CHUNK_SLOTS) as usize].load(Ordering::Acquire);
                    // SAFETY: every thread has finished; the chunk lives until `fresh` drops.
                    let cell = unsafe { &(*chunk).next[(slot % CHUNK_SLOTS) as usize] };
                    // SAFETY: the cell's pointer, read after every writer has been joined.
                    let next = cell.with(|p| unsafe { *p });
                    assert_eq!(next, if i + 1 == len { NIL } else { slot + 1 });
                    slots.push(slot);
                }
            }
        }
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2, 3], "each slot claimed exactly once");
    });
}

#[test]
fn fresh_slots_are_claimed_once() {
    fresh_scenario(Ordering::AcqRel);
}

#[test]
#[should_panic]
fn a_relaxed_chunk_publish_would_race_on_its_slots() {
    fresh_scenario(Ordering::Relaxed);
}
