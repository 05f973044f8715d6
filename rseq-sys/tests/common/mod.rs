//! Helpers shared by rseq-sys's integration tests: re-executing the test binary as a child under
//! another regime, seccomp filters, signal storms and CPU migration.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;

/// Runs the ignored test `name` of this test binary in a child process, with `env` set and
/// `setup` (if any) run between fork and exec. Returns the child's output.
pub fn run_child(
    name: &str,
    env: &[(&str, &str)],
    setup: Option<fn() -> std::io::Result<()>>,
) -> Output {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env_remove("GLIBC_TUNABLES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(setup) = setup {
        // SAFETY: `setup` only makes async-signal-safe system calls (prctl), allocating nothing.
        unsafe { cmd.pre_exec(setup) };
    }
    cmd.output().expect("spawn child test")
}

/// Asserts that the child ran exactly one test and it passed.
pub fn assert_child_passed(name: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// A seccomp filter that fails `rseq(2)` with `errno` and allows everything else. Installed
/// before exec, so glibc's own registration in the new program fails too.
pub fn deny_rseq_with(errno: u32) -> std::io::Result<()> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter, sock_fprog};
    const fn stmt(code: u32, k: u32) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let filter = [
        // Foreign architecture (x32/compat calls): allow, the test never makes them.
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_rseq as u32, 0, 1),
        stmt(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | (errno & libc::SECCOMP_RET_DATA),
        ),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    // SAFETY: plain prctl calls with a valid, live filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn deny_rseq_enosys() -> std::io::Result<()> {
    deny_rseq_with(libc::ENOSYS as u32)
}

pub fn deny_rseq_eperm() -> std::io::Result<()> {
    deny_rseq_with(libc::EPERM as u32)
}

/// xorshift64*: deterministic per-thread randomness without dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data (zeroed is empty); the set is valid and writable, and
    // every CPU number is below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpus`.
pub fn set_affinity(cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`; CPU numbers come from the allowed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

/// Threads to run for stress tests: 8 per CPU this process may use.
pub fn stress_threads() -> usize {
    8 * allowed_cpus().len().max(1)
}

pub static SIGNALS_HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigusr1(_: libc::c_int) {
    SIGNALS_HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Installs a SIGUSR1 handler (with SA_RESTART) that only counts.
pub fn install_sigusr1_handler() {
    // SAFETY: a zeroed sigaction with a plain handler that only bumps an atomic
    // (async-signal-safe).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
}

/// Sends SIGUSR1 to registered threads continuously until dropped.
pub struct SignalStorm {
    tids: Arc<Vec<AtomicI32>>,
    /// Passes the storm has made over `tids`.
    passes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl SignalStorm {
    /// A storm over `slots` worker threads; each enlists itself through [`SignalStorm::handle`].
    pub fn start(slots: usize) -> SignalStorm {
        install_sigusr1_handler();
        let tids: Arc<Vec<AtomicI32>> = Arc::new((0..slots).map(|_| AtomicI32::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicU64::new(0));
        let thread = {
            let (tids, stop, passes) = (tids.clone(), stop.clone(), passes.clone());
            std::thread::spawn(move || {
                // SAFETY: getpid has no preconditions.
                let pid = unsafe { libc::getpid() };
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    for tid in tids.iter() {
                        let tid = tid.load(Ordering::Relaxed);
                        if tid == 0 {
                            continue;
                        }
                        // SAFETY: signalling one of this process's threads, which has the
                        // counting SIGUSR1 handler installed above.
                        let rc =
                            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
                        sent += u64::from(rc == 0);
                    }
                    passes.fetch_add(1, Ordering::Release);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                sent
            })
        };
        SignalStorm {
            tids,
            passes,
            stop,
            thread: Some(thread),
        }
    }

    pub fn handle(&self) -> SignalStormHandle {
        SignalStormHandle(self.tids.clone(), self.passes.clone())
    }

    /// Stops the storm; returns how many signals were sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// What a worker thread needs to enlist itself.
#[derive(Clone)]
pub struct SignalStormHandle(Arc<Vec<AtomicI32>>, Arc<AtomicU64>);

impl SignalStormHandle {
    /// Enlists the calling thread, and returns once the storm has made a whole pass since, so
    /// the storm is known to run while the thread works (where a scheduler starves the storm's
    /// thread, as in a small VM, short workers could otherwise finish before its first pass).
    /// Gives up waiting after 10 s; the storm's count then tells.
    pub fn enlist(&self, slot: usize) {
        // SAFETY: gettid has no preconditions.
        self.0[slot].store(unsafe { libc::gettid() }, Ordering::Relaxed);
        // A pass that started before the store may have missed it: wait for two.
        let start = self.1.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.1.load(Ordering::Acquire) < start + 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    pub fn leave(&self, slot: usize) {
        self.0[slot].store(0, Ordering::Relaxed);
    }
}

impl Drop for SignalStorm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One cache-line-padded slot per possible CPU (or mm_cid), written only by rseq sequences on
/// one kind of index. The kind is fixed at construction: slot `i` by CPU and slot `i` by mm_cid
/// belong to different threads at the same moment, so sequences on both kinds sharing one array
/// would race (a lost add, seen in CI).
pub struct Slots {
    index: rseq_sys::Index,
    slots: Vec<Padded>,
}

#[repr(align(128))]
struct Padded(std::cell::UnsafeCell<i64>);

// SAFETY: each slot is written only by commit sequences on the one kind of index this array was
// made for, at that index, so by one running thread at a time; it is read only after the writers
// are joined.
unsafe impl Sync for Slots {}

impl Slots {
    pub fn new(index: rseq_sys::Index) -> Slots {
        let slots = (0..rseq_sys::possible_cpus())
            .map(|_| Padded(std::cell::UnsafeCell::new(0)))
            .collect();
        Slots { index, slots }
    }

    /// Adds `value` to the slot of the index the thread runs on; returns how many times the
    /// sequence aborted.
    pub fn add(&self, value: i64) -> u64 {
        let mut aborts = 0;
        loop {
            let current = rseq_sys::current().expect("rseq registered");
            let seq = current.sequences().expect("sequences on this architecture");
            let i = current.index(self.index);
            let slot = self.slots[i as usize].0.get();
            // SAFETY: the slot is only written by sequences on index `i` of this kind.
            match unsafe { seq.add(self.index, i, slot, value) } {
                rseq_sys::Outcome::Committed(()) => return aborts,
                rseq_sys::Outcome::Aborted => aborts += 1,
                rseq_sys::Outcome::CompareFailed => unreachable!("add never compares"),
            }
        }
    }

    /// The sum of all slots, once the writers are done.
    pub fn sum(&mut self) -> i64 {
        self.slots.iter_mut().map(|p| *p.0.get_mut()).sum()
    }
}

/// `n` divided by `PERCPU_TEST_SCALE` (default 1): emulated runs (`ci/qemu.sh`) do fewer
/// iterations; every assertion stays as it is.
pub fn scaled(n: usize) -> usize {
    let scale = std::env::var("PERCPU_TEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok());
    (n / scale.unwrap_or(1).max(1)).max(1)
}

/// Feeds `inputs` pseudo-random inputs of up to `max_len` bytes (from `seed`) to `run`, which
/// decodes and runs one and returns how many ops it decoded to; fails if the corpus averaged
/// fewer than `min_ops_per_input` (a decoder that broke would exercise almost nothing).
pub fn run_corpus(
    seed: u64,
    inputs: usize,
    max_len: u64,
    min_ops_per_input: usize,
    mut run: impl FnMut(&[u8]) -> usize,
) {
    let mut rng = Rng::new(seed);
    let mut ops_run = 0;
    for _ in 0..inputs {
        let len = rng.below(max_len) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        ops_run += run(&data);
    }
    assert!(
        ops_run > min_ops_per_input * inputs,
        "the corpus exercised too little: {ops_run} ops over {inputs} inputs"
    );
}
