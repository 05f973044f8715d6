//! Per-CPU statistics counters: [`Counter`] and [`CounterGroup`].
//!
//! # Layout
//! A structure of `N` counters maps one zeroed region, sized by possible CPUs:
//!
//! ```text
//! [ rseq blocks:     cpu 0: c0 c1 .. cN-1 | cpu 1: ... ]   written only by rseq sequences
//! [ fallback shards: cpu 0: c0 c1 .. cN-1 | cpu 1: ... ]   written only by atomic fetch_add
//! ```
//!
//! Each CPU's block is `N × 8` bytes rounded up to 128, so CPUs never share a cache line, and a
//! group of `N` counters costs `N × 8` bytes per CPU, not `N` padded arrays (the layout the kernel
//! uses for per-CPU statistics).
//!
//! # Why two regions
//! An rseq add is a plain load-add-store committed on one CPU. An atomic add to the same slot
//! from a thread without rseq, on another CPU, could land between that load and store and be
//! overwritten. So threads without rseq (seccomp, valgrind, `PERCPU_FORCE_FALLBACK=1`) add
//! atomically to shards of their own, indexed by the CPU (`sched_getcpu()`, asked once every 64
//! adds: [`rseq_sys::cpu_hint`]; a thread that moved adds to its old CPU's shard until then,
//! which costs only sharing a line), and [`Counter::sum`] folds both.
//!
//! # Memory ordering
//! Adds are relaxed: they order nothing else. [`Counter::sum`] reads every slot once with relaxed
//! loads; while others add it is not a snapshot of one instant, but every add is either wholly in
//! it or wholly out, and an add that happens-before the call (the adding thread was joined, say)
//! is always in. [`Counter::take`] builds on that: it stores the sum it read as the new baseline
//! and returns the difference, so successive takes count every add exactly once, whoever takes.

use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicI64, AtomicPtr, AtomicUsize, Ordering};

use crate::mode::{forced_fallback, rseq_path};
use crate::storage::{CPU_BLOCK_ALIGN, Mapping, round_up};

/// `N` per-CPU counters in one region: the engine under [`Counter`] and [`CounterGroup`].
pub(crate) struct RawCounters<const N: usize> {
    region: AtomicPtr<u8>,
    /// Possible CPUs when the region was mapped; beside `region` so the fast path reads both
    /// from one cache line (a static in another crate costs an extra GOT load).
    cpus: AtomicUsize,
    /// Indices below this take the rseq path: `cpus`, or 0 under `PERCPU_FORCE_FALLBACK=1`, so
    /// the fast path's bounds check doubles as the force check at no cost.
    rseq_cpus: AtomicUsize,
    /// Per counter: the sum at the last [`RawCounters::take`].
    baselines: [AtomicI64; N],
    /// Per counter: adds made while the region could not be mapped (out of memory).
    spill: [AtomicI64; N],
    /// Whether `region` is this structure's own mapping (unmapped on drop), or part of a
    /// [`CounterArena`]'s.
    owns_region: bool,
}

impl<const N: usize> RawCounters<N> {
    const BLOCK: usize = round_up(N * 8, CPU_BLOCK_ALIGN);

    pub(crate) const fn new() -> Self {
        assert!(N > 0, "a counter group needs at least one counter");
        RawCounters {
            region: AtomicPtr::new(ptr::null_mut()),
            cpus: AtomicUsize::new(0),
            rseq_cpus: AtomicUsize::new(0),
            baselines: [const { AtomicI64::new(0) }; N],
            spill: [const { AtomicI64::new(0) }; N],
            owns_region: true,
        }
    }

    /// Counters in `region`, [`Self::region_len`]`(cpus)` zeroed bytes that outlive them and
    /// that nothing else uses, for `cpus` possible CPUs.
    ///
    /// # Safety
    /// As above: `region` is valid, zeroed and not shared, for as long as the counters live.
    unsafe fn in_region(region: NonNull<u8>, cpus: usize) -> Self {
        let mut counters = Self::new();
        counters.region = AtomicPtr::new(region.as_ptr());
        counters.cpus = AtomicUsize::new(cpus);
        counters.rseq_cpus = AtomicUsize::new(if forced_fallback() { 0 } else { cpus });
        counters.owns_region = false;
        counters
    }

    fn region_len(cpus: usize) -> usize {
        2 * cpus * Self::BLOCK
    }

    #[inline(always)]
    pub(crate) fn add(&self, counter: usize, value: i64) {
        debug_assert!(counter < N);
        let region = self.region.load(Ordering::Acquire);
        if region.is_null() {
            return self.add_cold(counter, value);
        }
        let rseq_cpus = self.rseq_cpus.load(Ordering::Relaxed);
        if let Some((seq, index)) = rseq_path() {
            loop {
                let id = seq.current().index(index) as usize;
                if id >= rseq_cpus {
                    // Forced fallback, or an id the kernel should never report: stay exact.
                    break;
                }
                // SAFETY: `id < cpus` and `counter < N`, so the slot is inside the rseq blocks.
                let slot = unsafe { region.add(id * Self::BLOCK + counter * 8) }.cast::<i64>();
                // SAFETY: rseq slots are written only by add sequences on their own index.
                match unsafe { seq.add(index, id as u32, slot, value) } {
                    rseq_sys::Outcome::Committed(()) => return,
                    _ => continue,
                }
            }
        }
        let cpus = self.cpus.load(Ordering::Relaxed);
        self.fallback_slot(region, cpus, fallback_shard(cpus), counter)
            .fetch_add(value, Ordering::Relaxed);
    }

    /// The fallback shard slot of `counter` on shard `shard`.
    #[inline(always)]
    fn fallback_slot(
        &self,
        region: *mut u8,
        cpus: usize,
        shard: usize,
        counter: usize,
    ) -> &AtomicI64 {
        // SAFETY: `shard < cpus` and `counter < N` place the slot inside the shard blocks, which
        // live as long as `self` and are only accessed atomically.
        unsafe {
            &*region
                .add((cpus + shard) * Self::BLOCK + counter * 8)
                .cast::<AtomicI64>()
        }
    }

    #[cold]
    #[inline(never)]
    fn add_cold(&self, counter: usize, value: i64) {
        match self.map_region() {
            Some(_) => self.add(counter, value),
            None => {
                self.spill[counter].fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    /// The region, mapping it on first use; `None` only if the kernel refuses memory.
    fn map_region(&self) -> Option<*mut u8> {
        let region = self.region.load(Ordering::Acquire);
        if !region.is_null() {
            return Some(region);
        }
        let cpus = rseq_sys::possible_cpus() as usize;
        let mapping = Mapping::new(Self::region_len(cpus))?;
        // Every mapper stores the same values, before the Release that publishes the region.
        self.cpus.store(cpus, Ordering::Relaxed);
        let rseq_cpus = if forced_fallback() { 0 } else { cpus };
        self.rseq_cpus.store(rseq_cpus, Ordering::Relaxed);
        match self.region.compare_exchange(
            ptr::null_mut(),
            mapping.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                core::mem::forget(mapping); // Owned by `self` now; unmapped in Drop.
                Some(self.region.load(Ordering::Relaxed))
            }
            Err(winner) => Some(winner), // Another thread mapped first; ours is unmapped.
        }
    }

    /// Calls `f(counter, value)` for every slot of every CPU, both regions, and the spill.
    fn for_each_slot(&self, mut f: impl FnMut(usize, i64)) {
        for (counter, spill) in self.spill.iter().enumerate() {
            f(counter, spill.load(Ordering::Relaxed));
        }
        let region = self.region.load(Ordering::Acquire);
        if region.is_null() {
            return;
        }
        let cpus = self.cpus.load(Ordering::Relaxed);
        for block in 0..2 * cpus {
            for counter in 0..N {
                // SAFETY: inside the region; rseq slots are read atomically (their writers'
                // commits are single aligned stores), shard slots are atomics.
                let slot = unsafe {
                    &*region
                        .add(block * Self::BLOCK + counter * 8)
                        .cast::<AtomicI64>()
                };
                f(counter, slot.load(Ordering::Relaxed));
            }
        }
    }

    pub(crate) fn sums(&self) -> [i64; N] {
        let mut sums = [0i64; N];
        self.for_each_slot(|c, v| sums[c] = sums[c].wrapping_add(v));
        sums
    }

    fn take(&self, counter: usize, sum: i64) -> i64 {
        sum.wrapping_sub(self.baselines[counter].swap(sum, Ordering::Relaxed))
    }
}

impl<const N: usize> Drop for RawCounters<N> {
    fn drop(&mut self) {
        let region = *self.region.get_mut();
        if self.owns_region && !region.is_null() {
            let len = Self::region_len(*self.cpus.get_mut());
            // SAFETY: the region was mapped with this length and nothing can use it after drop.
            unsafe { libc::munmap(region.cast(), len) };
        }
    }
}

/// The regions of several sets of `N` counters, back to back in one mapping: a structure that
/// keeps a set per part (the slab allocator: one per size class) then touches a page per few
/// sets as they are used, instead of a page per set. Pages are touched only as sets are added
/// to.
pub(crate) struct CounterArena<const N: usize> {
    mapping: Mapping,
    cpus: usize,
    sets: usize,
}

impl<const N: usize> CounterArena<N> {
    /// Regions for `sets` sets of counters on `cpus` possible CPUs; `None` if the kernel refuses
    /// memory.
    pub(crate) fn new(cpus: usize, sets: usize) -> Option<Self> {
        let len = RawCounters::<N>::region_len(cpus).checked_mul(sets)?;
        Some(CounterArena {
            mapping: Mapping::new(len)?,
            cpus,
            sets,
        })
    }

    /// The counters of set `set`.
    ///
    /// # Safety
    /// `set` is below the sets given to `new` and handed out once, and the arena outlives the
    /// returned counters.
    pub(crate) unsafe fn counters(&self, set: usize) -> RawCounters<N> {
        debug_assert!(set < self.sets, "counter set {set} of {}", self.sets);
        let len = RawCounters::<N>::region_len(self.cpus);
        // SAFETY: set `set`'s region lies inside the mapping (`new` sized it for every set), is
        // zeroed until its counters add, and is the caller's alone to hand out once.
        unsafe {
            RawCounters::in_region(
                NonNull::new_unchecked(self.mapping.as_ptr().add(set * len)),
                self.cpus,
            )
        }
    }
}

impl<const N: usize> fmt::Debug for CounterArena<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterArena")
            .field("cpus", &self.cpus)
            .field("sets", &self.sets)
            .finish_non_exhaustive()
    }
}

/// The shard a fallback add goes to: the current CPU (as [`rseq_sys::cpu_hint`] last saw it), or
/// a fixed per-thread shard when `sched_getcpu` fails.
#[inline(always)]
fn fallback_shard(cpus: usize) -> usize {
    match rseq_sys::cpu_hint() {
        Some(cpu) if (cpu as usize) < cpus => cpu as usize,
        _ => thread_shard() % cpus,
    }
}

fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        s.get()
    })
}

/// A per-CPU statistics counter: adds cost a few nanoseconds and never contend; reads sum all
/// CPUs.
///
/// ```
/// use percpu::Counter;
///
/// static REQUESTS: Counter = Counter::new();
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..1000).for_each(|_| REQUESTS.inc()));
///     }
/// });
/// assert_eq!(REQUESTS.sum(), 4000);
/// assert_eq!(REQUESTS.take(), 4000); // since the last take
/// REQUESTS.add(5);
/// assert_eq!(REQUESTS.take(), 5);
/// ```
///
/// Memory is mapped on first use: two 128-byte blocks per possible CPU. See the [module
/// docs](self) for the layout and the ordering guarantees.
pub struct Counter {
    raw: RawCounters<1>,
}

impl Counter {
    /// A counter at zero. Allocates nothing until the first add.
    pub const fn new() -> Counter {
        Counter {
            raw: RawCounters::new(),
        }
    }

    /// Adds `value` (wrapping on overflow).
    #[inline]
    pub fn add(&self, value: i64) {
        self.raw.add(0, value);
    }

    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts 1.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    /// The sum over all CPUs (see the module docs for what it promises while others add).
    pub fn sum(&self) -> i64 {
        self.raw.sums()[0]
    }

    /// What was added since the previous `take` (or since creation): for rate reporting.
    /// Across successive takes every add is counted exactly once.
    pub fn take(&self) -> i64 {
        self.raw.take(0, self.sum())
    }
}

impl Default for Counter {
    fn default() -> Counter {
        Counter::new()
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Counter").field(&self.sum()).finish()
    }
}

/// Names the counters of a [`CounterGroup`], usually a fieldless enum.
///
/// ```
/// #[derive(Clone, Copy, Debug)]
/// enum Stat { Requests, Bytes, Errors }
///
/// impl percpu::CounterName for Stat {
///     const ALL: &'static [Self] = &[Stat::Requests, Stat::Bytes, Stat::Errors];
///     fn index(self) -> usize { self as usize }
/// }
/// ```
pub trait CounterName: Copy + 'static {
    /// Every name, in index order (used for iteration and `Debug`).
    const ALL: &'static [Self];
    /// This name's position, `< ALL.len()`.
    fn index(self) -> usize;
}

/// `N` related counters sharing one per-CPU block, each added with one rseq add and read together.
///
/// ```
/// use percpu::{CounterGroup, CounterName};
///
/// #[derive(Clone, Copy, Debug)]
/// enum Stat { Requests, Bytes }
/// impl CounterName for Stat {
///     const ALL: &'static [Self] = &[Stat::Requests, Stat::Bytes];
///     fn index(self) -> usize { self as usize }
/// }
///
/// static STATS: CounterGroup<Stat, 2> = CounterGroup::new();
///
/// STATS.inc(Stat::Requests);
/// STATS.add(Stat::Bytes, 512);
/// let now = STATS.snapshot();
/// assert_eq!((now[Stat::Requests], now[Stat::Bytes]), (1, 512));
/// ```
///
/// `N` must equal `K::ALL.len()` (checked when the group is created).
pub struct CounterGroup<K: CounterName, const N: usize> {
    raw: RawCounters<N>,
    _names: PhantomData<fn(K)>,
}

impl<K: CounterName, const N: usize> CounterGroup<K, N> {
    /// A group at zero. Allocates nothing until the first add.
    pub const fn new() -> Self {
        assert!(
            K::ALL.len() == N,
            "CounterGroup<K, N>: N must equal K::ALL.len()"
        );
        CounterGroup {
            raw: RawCounters::new(),
            _names: PhantomData,
        }
    }

    #[inline(always)]
    fn index(name: K) -> usize {
        let i = name.index();
        assert!(i < N, "CounterName::index returned {i}, outside 0..{N}");
        i
    }

    /// Adds `value` to `name`.
    #[inline]
    pub fn add(&self, name: K, value: i64) {
        self.raw.add(Self::index(name), value);
    }

    /// Adds 1 to `name`.
    #[inline]
    pub fn inc(&self, name: K) {
        self.add(name, 1);
    }

    /// Subtracts 1 from `name`.
    #[inline]
    pub fn dec(&self, name: K) {
        self.add(name, -1);
    }

    /// The sum of `name` over all CPUs.
    pub fn sum(&self, name: K) -> i64 {
        self.snapshot()[name]
    }

    /// Every counter's sum, read in one pass over the per-CPU blocks.
    pub fn snapshot(&self) -> Snapshot<K, N> {
        Snapshot {
            values: self.raw.sums(),
            _names: PhantomData,
        }
    }

    /// Every counter's change since the previous `take_snapshot`, each counted exactly once.
    pub fn take_snapshot(&self) -> Snapshot<K, N> {
        let mut values = self.raw.sums();
        for (counter, value) in values.iter_mut().enumerate() {
            *value = self.raw.take(counter, *value);
        }
        Snapshot {
            values,
            _names: PhantomData,
        }
    }
}

impl<K: CounterName, const N: usize> Default for CounterGroup<K, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: CounterName + fmt::Debug, const N: usize> fmt::Debug for CounterGroup<K, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// The values of a [`CounterGroup`], indexed by name.
#[derive(Clone, Copy)]
pub struct Snapshot<K: CounterName, const N: usize> {
    values: [i64; N],
    _names: PhantomData<fn(K)>,
}

impl<K: CounterName, const N: usize> Snapshot<K, N> {
    /// `(name, value)` pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (K, i64)> + '_ {
        K::ALL.iter().map(|&k| (k, self.values[k.index()]))
    }

    /// The raw values in index order.
    pub fn values(&self) -> [i64; N] {
        self.values
    }
}

impl<K: CounterName, const N: usize> core::ops::Index<K> for Snapshot<K, N> {
    type Output = i64;
    fn index(&self, name: K) -> &i64 {
        &self.values[CounterGroup::<K, N>::index(name)]
    }
}

impl<K: CounterName + fmt::Debug, const N: usize> fmt::Debug for Snapshot<K, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Counter>();
    #[derive(Clone, Copy)]
    struct Name;
    impl CounterName for Name {
        const ALL: &'static [Self] = &[Name];
        fn index(self) -> usize {
            0
        }
    }
    send_sync::<CounterGroup<Name, 1>>();
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets of one arena count apart (their regions never overlap), and each set's counters
    /// borrow their region: dropping some sets leaves the others' memory mapped and counting
    /// (a set that unmapped its part of the arena would take its neighbours' pages with it).
    #[test]
    fn an_arena_s_sets_count_apart_and_outlive_each_other() {
        const SETS: usize = 40;
        let cpus = rseq_sys::possible_cpus() as usize;
        let arena = CounterArena::<5>::new(cpus, SETS).unwrap();
        // SAFETY: each set once; the arena outlives them (dropped last).
        let mut sets: Vec<Option<RawCounters<5>>> = (0..SETS)
            .map(|s| Some(unsafe { arena.counters(s) }))
            .collect();
        // Set `s` adds its number to counter `s % 4` and 1 to counter 4.
        let expected = |s: usize, rounds: i64| {
            let mut sums = [0i64; 5];
            sums[s % 4] = rounds * (s as i64 + 1);
            sums[4] = rounds;
            sums
        };
        let add_to_all = |sets: &[Option<RawCounters<5>>]| {
            for (s, set) in sets.iter().enumerate() {
                if let Some(set) = set {
                    set.add(s % 4, s as i64 + 1);
                    set.add(4, 1);
                }
            }
        };
        add_to_all(&sets);
        for (s, set) in sets.iter().enumerate() {
            assert_eq!(set.as_ref().unwrap().sums(), expected(s, 1), "set {s}");
        }
        for set in sets.iter_mut().step_by(2) {
            *set = None;
        }
        add_to_all(&sets);
        for (s, set) in sets.iter().enumerate().skip(1).step_by(2) {
            assert_eq!(set.as_ref().unwrap().sums(), expected(s, 2), "set {s}");
        }
    }

    #[test]
    fn a_group_block_is_n_words_rounded_to_cache_lines() {
        assert_eq!(RawCounters::<1>::BLOCK, 128);
        assert_eq!(RawCounters::<16>::BLOCK, 128);
        assert_eq!(RawCounters::<17>::BLOCK, 256);
    }

    #[test]
    fn fallback_adds_never_touch_rseq_slots() {
        let c = Counter::new();
        c.inc();
        let region = c.raw.map_region().unwrap();
        let cpus = c.raw.cpus.load(Ordering::Relaxed);
        c.raw
            .fallback_slot(region, cpus, 0, 0)
            .fetch_add(10, Ordering::Relaxed);
        assert_eq!(c.sum(), 11);
        let rseq_total: i64 = (0..cpus)
            // SAFETY: reading rseq slots of a counter only this thread uses.
            .map(|cpu| unsafe { *region.add(cpu * RawCounters::<1>::BLOCK).cast::<i64>() })
            .sum();
        let expect_rseq = i64::from(matches!(crate::mode(), crate::Mode::Rseq { .. }));
        assert_eq!(rseq_total, expect_rseq);
    }

    #[test]
    fn take_telescopes() {
        let c = Counter::new();
        assert_eq!(c.take(), 0);
        c.add(7);
        c.add(-2);
        assert_eq!(c.take(), 5);
        assert_eq!(c.take(), 0);
        c.dec();
        assert_eq!(c.take(), -1);
        assert_eq!(c.sum(), 4);
    }
}
