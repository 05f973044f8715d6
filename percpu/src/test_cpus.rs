//! CPU placement for the unit tests: which CPUs the thread may run on, and moving it.

/// The CPUs the calling thread may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of_val(&set);
    // SAFETY: a valid, writable set of `size` bytes.
    let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    assert_eq!(rc, 0);
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: in-range CPU numbers.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`; false if it may not run there.
pub(crate) fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t with one in-range CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set) == 0
    }
}

/// Moves the calling thread to an allowed CPU other than the one it runs on, if there is one.
pub(crate) fn move_to_another_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let here = unsafe { libc::sched_getcpu() };
    if let Some(&other) = allowed_cpus().iter().find(|&&cpu| cpu as i32 != here) {
        pin(other);
    }
}
