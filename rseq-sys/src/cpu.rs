//! CPU, node and mm_cid reads, and how many per-CPU slots a process needs.
//!
//! Everything here works without rseq (falling back to `sched_getcpu`) and allocates nothing, so
//! it can run inside a global allocator.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::registration::current;

/// The CPU the calling thread runs on: the rseq field when registered, else `sched_getcpu()`.
/// `None` only when both are unavailable.
#[inline]
pub fn current_cpu() -> Option<u32> {
    match current() {
        Some(c) => Some(c.cpu_id()),
        None => sched_getcpu(),
    }
}

/// The CPU this thread ran on a moment ago, for threads without rseq: `sched_getcpu()`, asked
/// again after 64 calls (or after [`forget_cpu_hint`]) and reported unchanged in between.
///
/// For spreading work over per-CPU data where a stale CPU costs locality, never correctness
/// (another CPU's try-locked cache, another CPU's atomic shard): `sched_getcpu` is a vDSO call
/// on every use, a sixth of a preloaded `malloc`'s time under `larson` without rseq. A caller
/// that sees the cost of staleness (a contended lock) calls [`forget_cpu_hint`]. `None` when
/// `sched_getcpu` fails. Allocates nothing.
#[inline]
pub fn cpu_hint() -> Option<u32> {
    crate::thread_block::with(crate::thread_block::ThreadBlock::cpu_hint)
}

/// Makes the next [`cpu_hint`] ask `sched_getcpu` again (the thread may have moved).
#[inline]
pub fn forget_cpu_hint() {
    crate::thread_block::with(crate::thread_block::ThreadBlock::forget_cpu_hint);
}

/// `sched_getcpu()`, or `None` when it fails.
#[inline]
pub fn sched_getcpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// The NUMA node of the current CPU, when the kernel fills `node_id` for this thread.
#[inline]
pub fn current_node() -> Option<u32> {
    current()?.node_id()
}

/// The current memory-map concurrency id, when the kernel fills `mm_cid` for this thread.
#[inline]
pub fn current_mm_cid() -> Option<u32> {
    current()?.mm_cid()
}

static POSSIBLE_CPUS: AtomicU32 = AtomicU32::new(0);

/// How many per-CPU slots cover every CPU id this system can ever report: the highest id in
/// `/sys/devices/system/cpu/possible` plus one (falling back to `sysconf(_SC_NPROCESSORS_CONF)`).
///
/// This, not the online or affinity count, sizes per-CPU arrays: CPU ids can be sparse (cpusets,
/// hotplug) and exceed the number of CPUs a process may use. mm_cid values are below it too.
/// Cached after the first call, so it is cheap enough for fast paths.
#[inline]
pub fn possible_cpus() -> u32 {
    match POSSIBLE_CPUS.load(Ordering::Relaxed) {
        0 => possible_cpus_slow(),
        n => n,
    }
}

#[cold]
fn possible_cpus_slow() -> u32 {
    let n = read_possible_cpus().unwrap_or_else(sysconf_cpus).max(1);
    POSSIBLE_CPUS.store(n, Ordering::Relaxed);
    n
}

fn sysconf_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u32::try_from(n).unwrap_or(1)
}

fn read_possible_cpus() -> Option<u32> {
    let mut buf = [0u8; 4096];
    // SAFETY: a NUL-terminated path; the descriptor is closed below on every path.
    let fd = unsafe {
        libc::open(
            c"/sys/devices/system/cpu/possible".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads into the unfilled tail of a stack buffer we own.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    parse_cpu_list(&buf[..len]).map(|max| max + 1)
}

/// The highest CPU id in a kernel CPU list such as `0-3,8,10-11\n`; `None` if malformed or empty.
pub fn parse_cpu_list(text: &[u8]) -> Option<u32> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return None;
    }
    let mut max = None;
    for range in text.split(|&b| b == b',') {
        let mut ends = range.splitn(2, |&b| b == b'-');
        let first = parse_u32(ends.next()?)?;
        let last = match ends.next() {
            Some(end) => parse_u32(end)?,
            None => first,
        };
        if last < first {
            return None;
        }
        max = Some(max.map_or(last, |m: u32| m.max(last)));
    }
    max
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists_give_the_highest_id() {
        assert_eq!(parse_cpu_list(b"0-1\n"), Some(1));
        assert_eq!(parse_cpu_list(b"0"), Some(0));
        assert_eq!(parse_cpu_list(b"0-3,8,10-11\n"), Some(11));
        assert_eq!(parse_cpu_list(b"4,0-2"), Some(4));
    }

    #[test]
    fn malformed_cpu_lists_are_rejected() {
        for bad in [
            &b""[..],
            b"\n",
            b"a",
            b"0-",
            b"-1",
            b"3-1",
            b"0,,1",
            b"1-2-3",
            b"9999999999",
        ] {
            assert_eq!(
                parse_cpu_list(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
