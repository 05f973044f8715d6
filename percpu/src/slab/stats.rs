//! What the allocator holds, level by level: [`AllocStats`].

use core::fmt;

use super::class::CLASSES;

/// One size class's figures. Counts are exact for operations that finished before the call;
/// byte figures of caches are read while other threads move blocks, so they are approximate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size.
    pub size: usize,
    /// Blocks allocated.
    pub allocs: u64,
    /// Blocks freed.
    pub frees: u64,
    /// Bytes in blocks allocated and not freed.
    pub in_use_bytes: usize,
    /// Bytes in free blocks held by per-CPU caches.
    pub cpu_cached_bytes: usize,
    /// Bytes in free blocks at the transfer level (shared, moved in batches).
    pub transfer_bytes: usize,
    /// Bytes free inside this class's slabs (free or not yet carved).
    pub central_bytes: usize,
    /// Slabs serving this class.
    pub slabs: usize,
}

/// A [`PerCpuAlloc`](crate::PerCpuAlloc)'s memory, from
/// [`PerCpuAlloc::stats`](crate::PerCpuAlloc::stats). Reading it allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocStats {
    /// Per size class, smallest first.
    pub classes: [ClassStats; CLASSES],
    /// Large blocks (beyond the size classes) allocated.
    pub large_allocs: u64,
    /// Large blocks freed.
    pub large_frees: u64,
    /// Bytes mapped for large blocks in use (one header page each included).
    pub large_in_use_bytes: usize,
    /// Bytes of freed large mappings kept for reuse.
    pub large_cached_bytes: usize,
    /// Bytes of slab address space mapped (resident or not).
    pub slab_mapped_bytes: usize,
    /// Bytes in empty slabs kept resident for reuse.
    pub slab_empty_bytes: usize,
    /// Bytes in slabs whose memory went back to the kernel (or was never touched).
    pub slab_released_bytes: usize,
    /// Address space reserved for the map from slabs to size classes, which `free` reads: 2 GiB
    /// reserved with `MAP_NORESERVE`, of which a page per 512 MiB of slabs is ever touched; 0 where
    /// that would cost more than address space (a finite `RLIMIT_AS`, strict overcommit
    /// accounting) and the slab descriptors serve instead.
    pub class_map_reserved_bytes: usize,
}

impl Default for AllocStats {
    fn default() -> AllocStats {
        AllocStats {
            classes: [ClassStats::default(); CLASSES],
            large_allocs: 0,
            large_frees: 0,
            large_in_use_bytes: 0,
            large_cached_bytes: 0,
            slab_mapped_bytes: 0,
            slab_empty_bytes: 0,
            slab_released_bytes: 0,
            class_map_reserved_bytes: 0,
        }
    }
}

impl AllocStats {
    /// Bytes in blocks in use, small and large.
    pub fn in_use_bytes(&self) -> usize {
        self.classes.iter().map(|c| c.in_use_bytes).sum::<usize>() + self.large_in_use_bytes
    }

    /// Bytes in free blocks held by caches at every level (per-CPU, transfer, large cache).
    pub fn cached_bytes(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.cpu_cached_bytes + c.transfer_bytes)
            .sum::<usize>()
            + self.large_cached_bytes
    }

    /// Allocations of every size.
    pub fn allocs(&self) -> u64 {
        self.classes.iter().map(|c| c.allocs).sum::<u64>() + self.large_allocs
    }

    /// Frees of every size.
    pub fn frees(&self) -> u64 {
        self.classes.iter().map(|c| c.frees).sum::<u64>() + self.large_frees
    }
}

/// `n` bytes in the largest unit that keeps it readable.
struct Bytes(usize);

impl fmt::Display for Bytes {
    /// Honours width and alignment, and allocates nothing (the C library prints this at exit).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        let mut text = StackText::default();
        if unit == 0 {
            fmt::write(&mut text, format_args!("{} B", self.0))?;
        } else {
            fmt::write(&mut text, format_args!("{value:.1} {}", UNITS[unit]))?;
        }
        f.pad(text.as_str())
    }
}

/// A short string formatted on the stack.
#[derive(Default)]
struct StackText {
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        // Only whole `str`s are ever appended.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl fmt::Display for AllocStats {
    /// A table of the classes that saw use, then the totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>7} {:>12} {:>12} {:>11} {:>11} {:>11} {:>11} {:>6}",
            "class", "allocs", "frees", "in use", "cpu cache", "transfer", "central", "slabs"
        )?;
        for c in self.classes.iter().filter(|c| c.allocs > 0 || c.slabs > 0) {
            writeln!(
                f,
                "{:>7} {:>12} {:>12} {:>11} {:>11} {:>11} {:>11} {:>6}",
                c.size,
                c.allocs,
                c.frees,
                Bytes(c.in_use_bytes),
                Bytes(c.cpu_cached_bytes),
                Bytes(c.transfer_bytes),
                Bytes(c.central_bytes),
                c.slabs
            )?;
        }
        writeln!(
            f,
            "large: {} allocs, {} frees, {} in use, {} cached",
            self.large_allocs,
            self.large_frees,
            Bytes(self.large_in_use_bytes),
            Bytes(self.large_cached_bytes)
        )?;
        writeln!(
            f,
            "slabs: {} mapped, {} empty and resident, {} released",
            Bytes(self.slab_mapped_bytes),
            Bytes(self.slab_empty_bytes),
            Bytes(self.slab_released_bytes)
        )?;
        if self.class_map_reserved_bytes > 0 {
            writeln!(
                f,
                "class map: {} of address space reserved",
                Bytes(self.class_map_reserved_bytes)
            )?;
        } else {
            writeln!(f, "class map: none")?;
        }
        write!(
            f,
            "total: {} in use, {} cached, {} allocs, {} frees",
            Bytes(self.in_use_bytes()),
            Bytes(self.cached_bytes()),
            self.allocs(),
            self.frees()
        )
    }
}
