//! Owning, typed layers over [`RawFreeList`]: [`FreeList<T>`] and [`Pool<T>`].
//!
//! Values are boxed so that one address stands for each; the raw freelist never touches the
//! boxes, so these layers own them and drop them with themselves.

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use super::{DEFAULT_CAPACITY_PER_CPU, FreeListError, RawFreeList};

/// A per-CPU freelist of owned values.
///
/// `push` never fails for lack of room: a full per-CPU cache moves a batch to the global level,
/// which grows. It hands the value back only when the kernel refuses memory. `pop` takes from
/// the current CPU's cache first, so it may return `None` while other CPUs' caches hold values;
/// [`FreeList::drain`] reaches them all.
///
/// `Send` and `Sync` when `T: Send`: values move between threads but are never shared.
///
/// ```
/// let list = percpu::FreeList::new();
/// list.push(String::from("a")).unwrap();
/// list.push(String::from("b")).unwrap();
/// let mut all: Vec<String> = list.drain().collect();
/// all.sort();
/// assert_eq!(all, ["a", "b"]);
/// ```
pub struct FreeList<T> {
    raw: RawFreeList,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: the list owns its values and hands each out to exactly one caller; moving values
// between threads needs only `T: Send`.
unsafe impl<T: Send> Send for FreeList<T> {}
// SAFETY: shared use only moves values in and out (never hands out `&T`), so `T: Send` suffices.
unsafe impl<T: Send> Sync for FreeList<T> {}

impl<T> FreeList<T> {
    /// An empty list with [`DEFAULT_CAPACITY_PER_CPU`] values per CPU cache.
    ///
    /// # Panics
    /// If the kernel refuses the memory for its caches (like `Vec` on allocation failure); use
    /// [`FreeList::try_with_capacity_per_cpu`] to handle that.
    pub fn new() -> FreeList<T> {
        Self::with_capacity_per_cpu(DEFAULT_CAPACITY_PER_CPU)
    }

    /// An empty list caching up to `capacity` values per CPU.
    ///
    /// # Panics
    /// If `capacity` is 0 or above [`super::MAX_CAPACITY_PER_CPU`], or memory is refused.
    pub fn with_capacity_per_cpu(capacity: usize) -> FreeList<T> {
        match Self::try_with_capacity_per_cpu(capacity) {
            Ok(list) => list,
            Err(e) => panic!("FreeList::with_capacity_per_cpu({capacity}): {e}"),
        }
    }

    /// Like [`FreeList::with_capacity_per_cpu`], returning the error instead of panicking.
    pub fn try_with_capacity_per_cpu(capacity: usize) -> Result<FreeList<T>, FreeListError> {
        Ok(FreeList {
            raw: RawFreeList::new(capacity)?,
            _owns: PhantomData,
        })
    }

    /// Adds `value`; hands it back only if no memory can be had.
    pub fn push(&self, value: T) -> Result<(), T> {
        let block = NonNull::from(Box::leak(Box::new(value))).cast::<u8>();
        self.raw.push(block).map_err(|block| {
            // SAFETY: the raw list refused it, so the box is still ours.
            *unsafe { Box::from_raw(block.cast::<T>().as_ptr()) }
        })
    }

    /// Takes a value from this CPU's cache or the global level.
    pub fn pop(&self) -> Option<T> {
        let block = self.raw.pop()?;
        // SAFETY: every address in the list came from `Box::leak` in `push` and comes out once.
        Some(*unsafe { Box::from_raw(block.cast::<T>().as_ptr()) })
    }

    /// Moves every CPU's cache to the global level, then yields values until the list is empty
    /// (values pushed meanwhile by other threads may be yielded too; values in a cache that a
    /// thread without rseq kept locked past the drain's patience stay in the list, as values
    /// other threads hold do).
    ///
    /// # Panics
    /// If other CPUs cannot be fenced (no membarrier and no way to run on each CPU); see
    /// [`FreeList::try_drain`].
    pub fn drain(&self) -> impl Iterator<Item = T> + '_ {
        match self.try_drain() {
            Ok(values) => values,
            Err(e) => panic!("FreeList::drain: {e}"),
        }
    }

    /// Like [`FreeList::drain`], returning the error instead of panicking (nothing is lost: the
    /// values stay in the list).
    pub fn try_drain(&self) -> Result<impl Iterator<Item = T> + '_, FreeListError> {
        match self.raw.drain() {
            Ok(_) | Err(FreeListError::CacheBusy) => {}
            Err(e) => return Err(e),
        }
        Ok(std::iter::from_fn(|| {
            let block = self.raw.pop_global()?;
            // SAFETY: as in `pop`.
            Some(*unsafe { Box::from_raw(block.cast::<T>().as_ptr()) })
        }))
    }
}

impl<T> Default for FreeList<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for FreeList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreeList")
            .field("capacity_per_cpu", &self.raw.capacity_per_cpu())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for FreeList<T> {
    fn drop(&mut self) {
        self.raw.take_all(|block| {
            // SAFETY: as in `pop`; `&mut self` means no one else can take it.
            drop(unsafe { Box::from_raw(block.cast::<T>().as_ptr()) });
        });
    }
}

/// Recycles boxed objects per CPU: [`Pool::get`] reuses one this CPU freed recently (warm in its
/// cache) or makes a new one, and the guard gives it back on drop.
///
/// ```
/// let buffers = percpu::Pool::new(|| Vec::<u8>::with_capacity(4096));
/// {
///     let mut buf = buffers.get();
///     buf.extend_from_slice(b"hello");
/// } // back in the pool
/// let buf = buffers.get();
/// assert!(buf.capacity() >= 4096); // the same allocation, still holding "hello": reset it
/// ```
///
/// Objects come back as they were left; reset them on `get` if that matters. `Sync` when
/// `T: Send`.
pub struct Pool<T> {
    raw: RawFreeList,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

// SAFETY: as for FreeList: objects move between threads, each held by one guard at a time.
unsafe impl<T: Send> Send for Pool<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Pool<T> {}

impl<T> Pool<T> {
    /// A pool making new objects with `make`, caching [`DEFAULT_CAPACITY_PER_CPU`] per CPU.
    ///
    /// # Panics
    /// If the kernel refuses memory for the caches.
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Pool<T> {
        Self::with_capacity_per_cpu(DEFAULT_CAPACITY_PER_CPU, make)
    }

    /// A pool caching up to `capacity` idle objects per CPU.
    ///
    /// # Panics
    /// If `capacity` is 0 or too large, or memory is refused.
    pub fn with_capacity_per_cpu(
        capacity: usize,
        make: impl Fn() -> T + Send + Sync + 'static,
    ) -> Pool<T> {
        match RawFreeList::new(capacity) {
            Ok(raw) => Pool {
                raw,
                make: Box::new(make),
            },
            Err(e) => panic!("Pool::with_capacity_per_cpu({capacity}): {e}"),
        }
    }

    /// An idle object, or a new one.
    pub fn get(&self) -> Pooled<'_, T> {
        let object = match self.raw.pop() {
            // SAFETY: every address in the pool came from `Box::into_raw` in `Pooled::drop`.
            Some(block) => unsafe { Box::from_raw(block.cast::<T>().as_ptr()) },
            None => Box::new((self.make)()),
        };
        Pooled {
            pool: self,
            object: Some(object),
        }
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("capacity_per_cpu", &self.raw.capacity_per_cpu())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        self.raw.take_all(|block| {
            // SAFETY: as in `get`; `&mut self` means no guard is alive.
            drop(unsafe { Box::from_raw(block.cast::<T>().as_ptr()) });
        });
    }
}

/// An object borrowed from a [`Pool`]; returns to it on drop.
pub struct Pooled<'a, T> {
    pool: &'a Pool<T>,
    object: Option<Box<T>>,
}

impl<T> Pooled<'_, T> {
    /// Keeps the object instead of returning it to the pool.
    pub fn into_inner(mut self) -> Box<T> {
        self.object.take().expect("present until drop")
    }
}

impl<T> Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.object.as_deref().expect("present until drop")
    }
}

impl<T> DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.object.as_deref_mut().expect("present until drop")
    }
}

impl<T: fmt::Debug> fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            let block = NonNull::from(Box::leak(object)).cast::<u8>();
            if let Err(block) = self.pool.raw.push(block) {
                // No memory to keep it: free it instead.
                // SAFETY: refused by the raw list, so still ours.
                drop(unsafe { Box::from_raw(block.cast::<T>().as_ptr()) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cpus::{allowed_cpus, pin};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn values_are_dropped_exactly_once_with_the_list() {
        let drops = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let list = FreeList::with_capacity_per_cpu(4);
        for _ in 0..100 {
            assert!(list.push(Counted(drops.clone())).is_ok());
        }
        drop(list.pop());
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        drop(list);
        assert_eq!(drops.load(Ordering::Relaxed), 100);
    }

    /// Values in a cache that a thread without rseq keeps locked stay in the list: `drain` does
    /// not panic over them, and the next drain gets them.
    #[test]
    fn drain_leaves_a_locked_cache_in_the_list_without_panicking() {
        let list = FreeList::<u32>::with_capacity_per_cpu(8);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(pin(allowed_cpus()[0]));
                let cpu = list.raw.fallback_id();
                for v in 1..=3u32 {
                    let block = Box::into_raw(Box::new(v)) as usize;
                    list.raw.push_direct(block, super::super::Unbacked).unwrap();
                }
                let word = list.raw.try_lock(cpu).expect("free");
                assert_eq!(list.drain().count(), 0, "all three are in the held cache");
                list.raw
                    .locked
                    .count(cpu)
                    .store(word - rseq_sys::STACK_LOCKED, Ordering::Release);
                let mut values: Vec<u32> = list.drain().collect();
                values.sort_unstable();
                assert_eq!(values, [1, 2, 3]);
            });
        });
    }

    /// A draining thread that migrates must still get every value: refilled items parked in the
    /// first CPU's cache would otherwise be left behind.
    #[test]
    fn drain_yields_everything_even_when_the_thread_migrates() {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            eprintln!("one CPU allowed: no migration to test");
            return;
        }
        std::thread::spawn(move || {
            assert!(pin(cpus[0]));
            let list = FreeList::with_capacity_per_cpu(8);
            for n in 0..100 {
                list.push(n).unwrap();
            }
            let mut drain = list.drain();
            let mut got = vec![drain.next().unwrap()];
            assert!(pin(cpus[1]));
            got.extend(drain);
            got.sort_unstable();
            assert_eq!(got, (0..100).collect::<Vec<_>>());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_pool_reuses_its_objects() {
        let made = Arc::new(AtomicUsize::new(0));
        let pool = {
            let made = made.clone();
            Pool::new(move || {
                made.fetch_add(1, Ordering::Relaxed);
                vec![0u8; 64]
            })
        };
        let first = pool.get().as_ptr() as usize;
        for _ in 0..100 {
            let buf = pool.get();
            assert_eq!(buf.as_ptr() as usize, first, "same CPU, same object");
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);
        let kept = pool.get().into_inner();
        assert_eq!(kept.as_ptr() as usize, first);
        drop(pool.get());
        assert_eq!(
            made.load(Ordering::Relaxed),
            2,
            "a kept object leaves the pool"
        );
    }
}
