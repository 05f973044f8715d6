//! Registration under each regime a process can be in: glibc owning rseq (the default), glibc's
//! rseq disabled (we register our own), rseq blocked by seccomp (ENOSYS and EPERM), and across
//! fork and thread churn.
//!
//! Regimes other than the default re-execute this test binary as a child that runs one `#[ignore]`d
//! test, so they are set before glibc starts, as they would be for a real program.

// Linked so that `--features percpu/global-allocator` puts these tests on `PerCpuAlloc`.
extern crate percpu as _;

mod common;

use common::{Slots, allowed_cpus, assert_child_passed, run_child, set_affinity};
use rseq_sys::{Index, Owner, Unavailable, UnregisterError};
use std::ptr;
use std::sync::atomic::Ordering;

fn auxv_feature_size() -> u32 {
    // SAFETY: getauxval has no preconditions.
    match unsafe { libc::getauxval(27) } {
        0 => 20,
        n => n as u32,
    }
}

fn indexes() -> Vec<Index> {
    let mut v = vec![Index::CpuId];
    if rseq_sys::kernel_size() >= 28 {
        v.push(Index::MmCid);
    }
    v
}

#[test]
fn default_process_shares_glibcs_registration() {
    let glibc_size = rseq_sys::glibc_rseq_size();
    assert_ne!(
        glibc_size, 0,
        "glibc >= 2.35 registers rseq unless GLIBC_TUNABLES disables it"
    );
    let status = rseq_sys::status();
    assert_eq!(status.owner, Owner::Glibc);
    assert_eq!(status.reason, None);
    assert_eq!(
        rseq_sys::shared::current_use(),
        None,
        "glibc's area is nobody's export"
    );
    let feature = auxv_feature_size();
    assert_eq!(rseq_sys::feature_size(), feature);
    let expected = match glibc_size {
        20 | 32 => feature.min(32),
        n => n,
    };
    assert_eq!(status.kernel_size, expected);
    assert_eq!(rseq_sys::kernel_size(), expected);
    assert_best_index_follows_kernel_size();
    // The thread really is registered already: a second registration must be refused.
    let mut foreign = Box::new(Aligned([0u8; 64]));
    // SAFETY: rseq(2) on a live, 64-byte-aligned area this test owns (leaked where the kernel
    // keeps using it); the kernel validates the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            foreign.0.as_mut_ptr(),
            32u32,
            0,
            rseq_sys::abi::RSEQ_SIG,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        rc != 0 && matches!(errno, Some(libc::EINVAL | libc::EBUSY)),
        "rc {rc}, {errno:?}"
    );
}

#[repr(C, align(64))]
struct Aligned([u8; 64]);

/// CI runs these tests again with `--features percpu/global-allocator`; this makes sure that run
/// really allocates through `PerCpuAlloc` (without the feature there is nothing to check).
#[test]
fn allocations_go_through_percpu_when_it_is_installed() {
    let Some(alloc) = percpu::installed_global_allocator() else {
        return;
    };
    let before = alloc.stats().allocs();
    let block = std::hint::black_box(vec![7u8; 100]);
    assert!(
        alloc.stats().allocs() > before,
        "not allocated by PerCpuAlloc"
    );
    assert_eq!(block.iter().map(|&b| b as usize).sum::<usize>(), 700);
}

/// The index kept with the registration is the one its kernel size calls for, on this thread and
/// on a new one, and the same on both (`best_index` promises one choice per process).
fn assert_best_index_follows_kernel_size() {
    let check = || {
        let current = rseq_sys::current().unwrap();
        let best = current.best_index();
        assert_eq!(best, Index::best(current.kernel_size()));
        let field = rseq_sys::abi::MM_CID_OFFSET as u32 + 4;
        let expected = if current.kernel_size() >= field {
            Index::MmCid
        } else {
            Index::CpuId
        };
        assert_eq!(best, expected, "kernel_size {}", current.kernel_size());
        best
    };
    let here = check();
    let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(check)).collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), here, "one index choice per process");
    }
}

#[test]
fn a_spawned_thread_has_the_same_registration_kind() {
    let main = rseq_sys::status();
    let spawned = std::thread::spawn(rseq_sys::status).join().unwrap();
    assert_eq!(spawned, main);
    let a = rseq_sys::current().unwrap().area();
    let b = std::thread::spawn(|| rseq_sys::current().unwrap().area().as_ptr() as usize)
        .join()
        .unwrap();
    assert_ne!(a.as_ptr() as usize, b, "each thread has its own area");
}

#[test]
fn pinned_cpu_reads_agree_with_sched_getcpu_and_sysfs() {
    let allowed = allowed_cpus();
    let possible = rseq_sys::possible_cpus();
    let kernel_size = rseq_sys::kernel_size();
    std::thread::spawn(move || {
        for &cpu in &allowed {
            set_affinity(&[cpu]);
            let rseq = rseq_sys::current().unwrap();
            assert_eq!(rseq.cpu_id() as usize, cpu);
            assert_eq!(rseq_sys::current_cpu(), Some(cpu as u32));
            assert_eq!(rseq_sys::sched_getcpu(), Some(cpu as u32));
            assert!(rseq.cpu_id() < possible);
            match rseq.node_id() {
                Some(node) => {
                    assert!(kernel_size >= 24);
                    let link = format!("/sys/devices/system/cpu/cpu{cpu}/node{node}");
                    assert!(
                        std::path::Path::new(&link).exists() || node == 0,
                        "{link} missing"
                    );
                }
                None => assert!(kernel_size < 24),
            }
            match rseq.mm_cid() {
                Some(cid) => {
                    assert!(kernel_size >= 28);
                    assert!(cid < possible, "mm_cid {cid} >= possible CPUs {possible}");
                }
                None => assert!(kernel_size < 28),
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn possible_cpus_covers_every_cpu_in_sysfs() {
    let text = std::fs::read("/sys/devices/system/cpu/possible").unwrap();
    let max = rseq_sys::cpu::parse_cpu_list(&text).unwrap();
    assert_eq!(rseq_sys::possible_cpus(), max + 1);
    for cpu in allowed_cpus() {
        assert!((cpu as u32) < rseq_sys::possible_cpus());
    }
}

#[test]
fn glibcs_area_cannot_be_unregistered_by_us() {
    assert_eq!(
        rseq_sys::unregister_current_thread(),
        Err(UnregisterError::OwnedByGlibc)
    );
    assert_eq!(rseq_sys::status().owner, Owner::Glibc);
}

#[test]
fn fork_child_keeps_a_valid_registration() {
    let parent = rseq_sys::status();
    // One array per kind of index, made before the fork: the child must not allocate.
    let mut slots: Vec<Slots> = indexes().into_iter().map(Slots::new).collect();
    // SAFETY: the child below only makes async-signal-safe calls and sequences before _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // Child: no allocation, no panics on the success path; report through the exit code.
        let status = rseq_sys::status();
        let mut code = 0;
        if status != parent || rseq_sys::current().is_none() {
            code = 10;
        }
        for slots in &slots {
            for _ in 0..10_000 {
                slots.add(3);
            }
        }
        if slots.iter_mut().map(Slots::sum).sum::<i64>() != 30_000 * slots.len() as i64 {
            code = 11;
        }
        // SAFETY: leaving the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut wstatus = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut wstatus, 0) }, pid);
    assert!(libc::WIFEXITED(wstatus), "child died: {wstatus:#x}");
    assert_eq!(
        libc::WEXITSTATUS(wstatus),
        0,
        "10: registration lost, 11: wrong sum"
    );
}

#[test]
fn two_thousand_short_lived_threads_each_get_a_registration() {
    const THREADS: usize = 2_000;
    const BATCH: usize = 64;
    const ADDS: usize = 100;
    let main = rseq_sys::status();
    let mut slots: Vec<Slots> = indexes().into_iter().map(Slots::new).collect();
    std::thread::scope(|s| {
        for batch in (0..THREADS).collect::<Vec<_>>().chunks(BATCH) {
            let handles: Vec<_> = batch
                .iter()
                .map(|_| {
                    s.spawn(|| {
                        assert_eq!(rseq_sys::status(), main);
                        for _ in 0..ADDS {
                            for slots in &slots {
                                slots.add(1);
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        }
    });
    for slots in &mut slots {
        assert_eq!(slots.sum(), (THREADS * ADDS) as i64);
    }
}

// ---- glibc's rseq disabled: we register our own area ----

#[test]
fn with_glibc_rseq_disabled_we_register_our_own() {
    let out = run_child(
        "child_glibc_rseq_disabled",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        None,
    );
    assert_child_passed("child_glibc_rseq_disabled", &out);
}

#[test]
#[ignore = "run in a child by with_glibc_rseq_disabled_we_register_our_own"]
fn child_glibc_rseq_disabled() {
    assert_eq!(
        rseq_sys::glibc_rseq_size(),
        0,
        "GLIBC_TUNABLES did not take effect"
    );
    let status = rseq_sys::status();
    assert_eq!(status.owner, Owner::Own, "{status:?}");
    assert_eq!(status.kernel_size, auxv_feature_size());
    assert_eq!(
        rseq_sys::shared::current_use(),
        None,
        "nothing exports an area here: this copy's own"
    );
    assert_best_index_follows_kernel_size();
    let align = rseq_sys::feature_align() as usize;
    let area = rseq_sys::current().unwrap().area().as_ptr() as usize;
    assert_eq!(
        area % align.max(32),
        0,
        "own area must honour AT_RSEQ_ALIGN"
    );

    // Sequences work in many threads, each with its own registration.
    const THREADS: usize = 16;
    const ADDS: i64 = 50_000;
    for index in indexes() {
        let slots = Slots::new(index);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    assert_eq!(rseq_sys::status().owner, Owner::Own);
                    for _ in 0..ADDS {
                        slots.add(2);
                    }
                });
            }
        });
        let mut slots = slots;
        assert_eq!(slots.sum(), THREADS as i64 * ADDS * 2, "{index:?}");
    }

    // A copy that finds another registering the thread's shared area (a signal handler that
    // interrupted it) answers "none" without remembering it, and registers when asked after.
    std::thread::spawn(|| {
        if rseq_sys::current_if_registered().is_some() {
            return; // `PerCpuAlloc`'s copy registered this thread first: nothing to interrupt.
        }
        let area = rseq_sys::shared::this_copys_area().cast::<u8>();
        // SAFETY: the protocol's layout (`rseq_sys::shared::SharedArea`): the count of users, a
        // `u32` accessed atomically, follows the 256 bytes of the area.
        let users = unsafe { &*area.add(256).cast::<std::sync::atomic::AtomicU32>() };
        assert_eq!(users.load(Ordering::Relaxed), 0);
        users.store(u32::MAX, Ordering::Relaxed);
        assert!(rseq_sys::current().is_none());
        assert_eq!(rseq_sys::status().reason, None, "not a reason to give up");
        users.store(0, Ordering::Relaxed);
        let current = rseq_sys::current().expect("registered once the other copy is done");
        assert_eq!(current.area().as_ptr().cast::<u8>(), area);
        assert_eq!(users.load(Ordering::Relaxed), 1);
    })
    .join()
    .unwrap();

    // Our own area can be given up; the thread then reports why and is not registered again.
    std::thread::spawn(|| {
        assert_eq!(rseq_sys::status().owner, Owner::Own);
        assert_eq!(rseq_sys::unregister_current_thread(), Ok(()));
        let after = rseq_sys::status();
        assert_eq!(after.owner, Owner::None);
        assert_eq!(after.reason, Some(Unavailable::Unregistered));
        assert_eq!(after.kernel_size, 0);
        assert!(rseq_sys::current().is_none());
        assert_eq!(
            rseq_sys::unregister_current_thread(),
            Err(UnregisterError::NotRegistered)
        );
        // The kernel agrees: registering this thread again now succeeds.
        let mut area = Box::new(Aligned([0u8; 64]));
        // SAFETY: rseq(2) on a live, 64-byte-aligned area this test owns (leaked where the kernel
        // keeps using it); the kernel validates the rest.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rseq,
                area.0.as_mut_ptr(),
                32u32,
                0,
                rseq_sys::abi::RSEQ_SIG,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: rseq(2) on a live, 64-byte-aligned area this test owns (leaked where the kernel
        // keeps using it); the kernel validates the rest.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rseq,
                area.0.as_mut_ptr(),
                32u32,
                1,
                rseq_sys::abi::RSEQ_SIG,
            )
        };
        assert_eq!(
            rc,
            0,
            "unregister the test's area: {}",
            std::io::Error::last_os_error()
        );
    })
    .join()
    .unwrap();

    // Someone else (another library) registered a thread first: we get EINVAL and fall back.
    // A bare pthread, because nothing may allocate on it before the foreign registration: std's
    // thread start does, and an rseq-based global allocator would register the thread itself.
    let mut foreign = Foreign {
        area: Box::leak(Box::new(Aligned([0u8; 64]))).0.as_mut_ptr(),
        rc: -1,
        error: None,
        status: None,
        cpu: None,
    };
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `foreign` outlives the thread (joined below) and is touched only by it meanwhile.
    unsafe {
        let arg = (&raw mut foreign).cast();
        assert_eq!(
            libc::pthread_create(&mut thread, ptr::null(), foreign_first, arg),
            0
        );
        assert_eq!(libc::pthread_join(thread, ptr::null_mut()), 0);
    }
    assert_eq!(foreign.rc, 0, "{:?}", foreign.error);
    let status = foreign.status.unwrap();
    assert_eq!(status.owner, Owner::None);
    assert_eq!(status.reason, Some(Unavailable::Errno(libc::EINVAL)));
    assert_eq!(status.kernel_size, 0);
    assert!(foreign.cpu.is_some(), "sched_getcpu fallback");
}

/// What a thread registered by "another library" saw (see `foreign_first`).
struct Foreign {
    area: *mut u8,
    rc: libc::c_long,
    error: Option<std::io::Error>,
    status: Option<rseq_sys::Status>,
    cpu: Option<u32>,
}

/// Registers `area` with rseq(2) before anything else runs on this thread, then records what
/// rseq-sys makes of the thread.
extern "C" fn foreign_first(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the `Foreign` the creating thread lent us until it joins.
    let foreign = unsafe { &mut *arg.cast::<Foreign>() };
    // SAFETY: rseq(2) on a live (leaked), 64-byte-aligned area this test owns; the kernel
    // validates the rest.
    foreign.rc = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            foreign.area,
            32u32,
            0,
            rseq_sys::abi::RSEQ_SIG,
        )
    };
    if foreign.rc != 0 {
        foreign.error = Some(std::io::Error::last_os_error());
    }
    foreign.status = Some(rseq_sys::status());
    foreign.cpu = rseq_sys::current_cpu();
    ptr::null_mut()
}

/// `current_if_registered` never registers: on a thread that has not asked yet it is `None`, and
/// after `current` it returns that same registration. On a bare pthread, where nothing (such as
/// an allocator built on this crate) can have asked first.
#[test]
fn current_if_registered_only_reports() {
    extern "C" fn look(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the array the creating thread lent us until it joins.
        let seen = unsafe { &mut *arg.cast::<[Option<usize>; 3]>() };
        let area = |c: Option<rseq_sys::Current>| c.map(|c| c.area().as_ptr() as usize);
        seen[0] = area(rseq_sys::current_if_registered());
        seen[1] = area(rseq_sys::current());
        seen[2] = area(rseq_sys::current_if_registered());
        ptr::null_mut()
    }
    let mut seen: [Option<usize>; 3] = [Some(1), None, None];
    // SAFETY: a plain pthread running `look` on `seen`, joined before `seen` is read.
    unsafe {
        let mut thread: libc::pthread_t = core::mem::zeroed();
        let arg = (&raw mut seen).cast();
        assert_eq!(libc::pthread_create(&mut thread, ptr::null(), look, arg), 0);
        assert_eq!(libc::pthread_join(thread, ptr::null_mut()), 0);
    }
    assert_eq!(seen[0], None, "reported a registration nobody asked for");
    assert!(seen[1].is_some(), "rseq works here");
    assert_eq!(seen[2], seen[1]);
}

// ---- rseq blocked by seccomp ----

#[test]
fn with_rseq_blocked_by_seccomp_enosys_we_fall_back() {
    let out = run_child(
        "child_rseq_blocked",
        &[("RSEQ_TEST_ERRNO", "ENOSYS")],
        Some(common::deny_rseq_enosys),
    );
    assert_child_passed("child_rseq_blocked", &out);
}

#[test]
fn with_rseq_blocked_by_seccomp_eperm_we_fall_back() {
    let out = run_child(
        "child_rseq_blocked",
        &[("RSEQ_TEST_ERRNO", "EPERM")],
        Some(common::deny_rseq_eperm),
    );
    assert_child_passed("child_rseq_blocked", &out);
}

#[test]
#[ignore = "run in a child by the with_rseq_blocked_by_seccomp_* tests"]
fn child_rseq_blocked() {
    let errno = match std::env::var("RSEQ_TEST_ERRNO").as_deref() {
        Ok("ENOSYS") => libc::ENOSYS,
        Ok("EPERM") => libc::EPERM,
        other => panic!("RSEQ_TEST_ERRNO not set by the parent: {other:?}"),
    };
    assert_eq!(
        rseq_sys::glibc_rseq_size(),
        0,
        "glibc's own registration must have failed too"
    );
    for status in [
        rseq_sys::status(),
        std::thread::spawn(rseq_sys::status).join().unwrap(),
    ] {
        assert_eq!(status.owner, Owner::None);
        assert_eq!(status.reason, Some(Unavailable::Errno(errno)));
        assert_eq!(status.kernel_size, 0);
    }
    assert!(rseq_sys::current().is_none(), "no sequences without rseq");
    assert_eq!(rseq_sys::kernel_size(), 0);
    assert_eq!(rseq_sys::current_node(), None);
    assert_eq!(rseq_sys::current_mm_cid(), None);
    // The process keeps working: CPU ids come from sched_getcpu, threads run.
    let cpus: Vec<Option<u32>> = (0..8)
        .map(|_| std::thread::spawn(rseq_sys::current_cpu).join().unwrap())
        .collect();
    assert!(
        cpus.iter()
            .all(|c| c.is_some_and(|c| c < rseq_sys::possible_cpus())),
        "{cpus:?}"
    );
}
