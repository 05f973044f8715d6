//! rseq-sys inside a shared object that a running, multi-threaded program loads with `dlopen`
//! (a Python extension module, a plugin): it must load, and every thread, including those that
//! existed before the load, must read its own registration through that object's copy.
//!
//! The object (`tests/dlopen-probe/`) also holds 4 KiB of thread-local data aligned to 128, which
//! glibc's static TLS cannot place, so the object gets dynamic TLS: the path where the block's
//! TLS descriptor calls into the loader. Built with `initial-exec-tls`, the same object cannot
//! be loaded on x86_64, which the test checks too: that is the trade the feature documents, and
//! it shows that the probe does ask for what initial-exec cannot give.
//!
//! The same object, preloaded into a process where glibc registers no rseq, offers its area to
//! the program's copy of rseq-sys (`rseq_sys::shared`): both copies must use the thread's one
//! registration, whichever registers first, and it must outlast all but the last to leave.
//!
//! Needs a dynamically linked test binary and cargo (it builds the probe); the static binaries
//! of `ci/qemu.sh` leave it out.
#![cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
))]

mod common;

use std::ffi::{CStr, CString, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, mpsc};

/// The probe's report for the calling thread (see `rseq_sys_probe` in the probe).
#[derive(Clone, Copy, Debug)]
struct Report {
    area: usize,
    kernel_size: usize,
    fast_area: usize,
    fast_kernel_size: usize,
    scratch: usize,
}

type ProbeFn = unsafe extern "C" fn(*mut usize);

/// Builds the probe (with `features`) in a target directory of its own, named by `label`, so
/// that tests running at once never overwrite each other's object: its path.
fn build_probe(label: &str, features: &[&str]) -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dlopen-probe-{label}"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dlopen-probe/Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--offline",
            "--locked",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .args(features.iter().flat_map(|f| ["--features", f]))
        // The probe is built as the crate is, not as this test run's flags say.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the probe ({label}) failed");
    target_dir.join("debug/librseq_sys_dlopen_probe.so")
}

/// The version of `name` that a `Cargo.lock` pins.
fn locked_version(lock: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(lock).expect("read Cargo.lock");
    let entry = format!("name = \"{name}\"\nversion = \"");
    let start = text.find(&entry).expect("package in Cargo.lock") + entry.len();
    text[start..].split('"').next().unwrap().to_string()
}

/// The probe builds `--offline`, from what the workspace's build already fetched: its lock file
/// must pin the workspace's `libc`.
#[test]
fn the_probe_locks_the_workspaces_libc() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        locked_version(&crate_dir.join("tests/dlopen-probe/Cargo.lock"), "libc"),
        locked_version(&crate_dir.join("../Cargo.lock"), "libc"),
        "update rseq-sys/tests/dlopen-probe/Cargo.lock (cargo update -p libc --manifest-path ...)"
    );
}

/// `dlopen`s `path`: its `rseq_sys_probe`, or glibc's message.
fn load(path: &Path) -> Result<ProbeFn, String> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the object's initialisers are Rust's, which do nothing
    // unsafe at load time. The handle is never closed: the object stays for the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message after a failed dlopen.
        return Err(unsafe { CStr::from_ptr(libc::dlerror()) }
            .to_string_lossy()
            .into_owned());
    }
    // SAFETY: a live handle and a NUL-terminated name.
    let symbol = unsafe { libc::dlsym(handle, c"rseq_sys_probe".as_ptr()) };
    assert!(!symbol.is_null(), "the probe exports rseq_sys_probe");
    // SAFETY: the probe defines `rseq_sys_probe` with exactly this signature.
    Ok(unsafe { std::mem::transmute::<*mut libc::c_void, ProbeFn>(symbol) })
}

fn probe(f: ProbeFn) -> Report {
    let mut out = [0usize; 5];
    // SAFETY: `out` holds the five words the probe writes.
    unsafe { f(out.as_mut_ptr()) };
    let [area, kernel_size, fast_area, fast_kernel_size, scratch] = out;
    Report {
        area,
        kernel_size,
        fast_area,
        fast_kernel_size,
        scratch,
    }
}

/// Checks one thread's report against what this test binary's own rseq-sys sees.
fn check(report: Report) {
    assert_eq!(
        (report.fast_area, report.fast_kernel_size),
        (report.area, report.kernel_size),
        "the fast path disagrees with the registration"
    );
    assert_eq!(report.scratch % 128, 0, "thread-local data misaligned");
    // With glibc's area both copies share it: the probe's must be this thread's. Without it
    // only one copy can register (the kernel takes one area per thread); the other falls back.
    if let Some(host) = rseq_sys::current()
        && host.owner() == rseq_sys::Owner::Glibc
    {
        assert_eq!(report.area, host.area().as_ptr() as usize);
        assert_eq!(report.kernel_size, host.kernel_size() as usize);
    }
}

#[test]
fn loads_into_a_running_program_and_reads_each_threads_registration() {
    const EARLY: usize = 3;
    const LATE: usize = 3;
    let probe_path = build_probe("descriptors", &[]);
    // Threads that exist before the load: the loader must give them the object's TLS as well.
    let loaded = Barrier::new(EARLY + 1);
    let (send, receive) = mpsc::channel::<ProbeFn>();
    let receive = std::sync::Mutex::new(receive);
    let reports: Vec<Report> = std::thread::scope(|s| {
        let early: Vec<_> = (0..EARLY)
            .map(|_| {
                s.spawn(|| {
                    let _ = rseq_sys::current();
                    loaded.wait();
                    let f = receive.lock().unwrap().recv().unwrap();
                    let report = probe(f);
                    check(report);
                    report
                })
            })
            .collect();
        let f = load(&probe_path).unwrap_or_else(|e| panic!("dlopen failed: {e}"));
        loaded.wait();
        for _ in 0..EARLY {
            send.send(f).unwrap();
        }
        let late: Vec<_> = (0..LATE)
            .map(|_| {
                s.spawn(move || {
                    let report = probe(f);
                    check(report);
                    report
                })
            })
            .collect();
        let mine = probe(f);
        check(mine);
        let mut all = vec![mine];
        all.extend(early.into_iter().chain(late).map(|t| t.join().unwrap()));
        all
    });
    // Each thread (all alive until the scope ends) has its own area and its own TLS.
    for (i, a) in reports.iter().enumerate() {
        for b in &reports[i + 1..] {
            assert_ne!(a.scratch, b.scratch, "two threads share thread-local data");
            if a.area != 0 {
                assert_ne!(a.area, b.area, "two threads read one area");
            }
        }
    }
    if rseq_sys::current().is_some_and(|c| c.owner() == rseq_sys::Owner::Glibc) {
        assert!(reports.iter().all(|r| r.area != 0 && r.kernel_size != 0));
    }
}

/// The trade `initial-exec-tls` makes: the same object then needs static TLS it cannot have.
#[cfg(all(target_arch = "x86_64", not(rseq_sys_no_sequences)))]
#[test]
fn the_initial_exec_build_of_the_same_object_cannot_be_loaded() {
    let probe_path = build_probe("initial_exec", &["initial-exec-tls"]);
    match load(&probe_path) {
        Ok(_) => panic!("an initial-exec object with 128-aligned TLS was loaded"),
        Err(e) => assert!(e.contains("static TLS"), "unexpected dlopen error: {e}"),
    }
}

/// A symbol of the preloaded probe.
fn preloaded(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    assert!(!symbol.is_null(), "the preloaded probe exports {name:?}");
    symbol
}

/// `rseq(2)` registering `area` with `len` bytes for this thread: 0 or the errno.
fn try_register(area: *mut u8, len: usize) -> i32 {
    // SAFETY: the caller's area is valid and aligned for `len` bytes for the thread's life (or
    // registered already, in which case the kernel only compares).
    let rc = unsafe { libc::syscall(libc::SYS_rseq, area, len as u32, 0, rseq_sys::abi::RSEQ_SIG) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

#[test]
fn copies_share_a_preloaded_objects_area_where_glibc_registers_none() {
    let probe_path = build_probe("descriptors", &[]);
    let out = common::run_child(
        "child_sharing_a_preloaded_area",
        &[
            ("GLIBC_TUNABLES", "glibc.pthread.rseq=0"),
            ("LD_PRELOAD", probe_path.to_str().unwrap()),
        ],
        None,
    );
    common::assert_child_passed("child_sharing_a_preloaded_area", &out);
}

#[test]
#[ignore = "run in a child by copies_share_a_preloaded_objects_area_where_glibc_registers_none"]
fn child_sharing_a_preloaded_area() {
    assert_eq!(
        rseq_sys::glibc_rseq_size(),
        0,
        "GLIBC_TUNABLES did not take effect"
    );
    // SAFETY: the probe defines these with exactly these signatures.
    let (report_fn, area_fn, unregister_fn) = unsafe {
        (
            std::mem::transmute::<*mut c_void, ProbeFn>(preloaded(c"rseq_sys_probe")),
            std::mem::transmute::<*mut c_void, extern "C" fn() -> *mut u8>(preloaded(
                rseq_sys::shared::SHARED_AREA_SYMBOL,
            )),
            std::mem::transmute::<*mut c_void, extern "C" fn() -> i32>(preloaded(
                c"rseq_sys_probe_unregister",
            )),
        )
    };
    let len = (rseq_sys::feature_size() as usize).max(32);
    let host_area = || rseq_sys::current().map(|c| c.area().as_ptr() as usize);
    let registered_here = |area: *mut u8| try_register(area, len) == libc::EBUSY;

    // This copy first (the probe runs no code at load), then the probe's.
    let exported = area_fn();
    assert_eq!(
        host_area(),
        Some(exported as usize),
        "this copy took the preloaded area"
    );
    assert_eq!(rseq_sys::status().owner, rseq_sys::Owner::Own);
    let report = probe(report_fn);
    assert_eq!(
        (report.area, report.fast_area),
        (exported as usize, exported as usize)
    );
    assert_eq!(report.kernel_size, rseq_sys::kernel_size() as usize);
    assert!(
        registered_here(exported),
        "the kernel has this area registered"
    );
    let shared = rseq_sys::shared::current_use().expect("the area is the probe's");
    let preload = std::env::var("LD_PRELOAD").unwrap();
    assert_eq!(
        (shared.object.to_str(), shared.users),
        (Ok(preload.as_str()), 2),
        "the probe exports it, to 2 users"
    );

    std::thread::scope(|s| {
        // The other order, in a thread of its own, and sequences running on the shared area.
        s.spawn(|| {
            let report = probe(report_fn);
            let exported = area_fn();
            assert_eq!(
                report.area, exported as usize,
                "the probe took its own exported area"
            );
            assert_eq!(host_area(), Some(report.area), "this copy joined it");
            assert!(registered_here(exported));
            for index in [
                rseq_sys::Index::CpuId,
                rseq_sys::Index::best(rseq_sys::kernel_size()),
            ] {
                let mut slots = common::Slots::new(index);
                for _ in 0..10_000 {
                    slots.add(1);
                }
                assert_eq!(slots.sum(), 10_000);
            }
        });
        // Leaving, one copy at a time: the registration outlasts the first to leave.
        s.spawn(|| {
            let exported = area_fn();
            assert_eq!(host_area(), Some(exported as usize));
            assert_eq!(probe(report_fn).area, exported as usize);
            // SAFETY: the protocol's layout: the count of users, a `u32` accessed atomically,
            // follows the area's 256 bytes.
            let users = unsafe { &*exported.add(256).cast::<std::sync::atomic::AtomicU32>() };
            assert_eq!(users.load(std::sync::atomic::Ordering::Relaxed), 2);
            // Not while another copy is (un)registering on this thread, as a signal handler
            // interrupting it would find: refused, and nothing changes.
            users.store(u32::MAX, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                rseq_sys::unregister_current_thread(),
                Err(rseq_sys::UnregisterError::Errno(libc::EBUSY))
            );
            users.store(2, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(host_area(), Some(exported as usize));
            assert_eq!(rseq_sys::unregister_current_thread(), Ok(()));
            assert_eq!(users.load(std::sync::atomic::Ordering::Relaxed), 1);
            assert_eq!(host_area(), None);
            assert_eq!(rseq_sys::shared::current_use(), None);
            assert_eq!(
                rseq_sys::status().reason,
                Some(rseq_sys::Unavailable::Unregistered)
            );
            assert_eq!(
                probe(report_fn).area,
                exported as usize,
                "the probe's copy keeps it"
            );
            assert!(registered_here(exported), "and so does the kernel");
            assert_eq!(unregister_fn(), 0);
            assert_eq!(probe(report_fn).area, 0);
            // The last to leave unregistered it: the thread is free to register anew.
            assert_eq!(
                try_register(exported, len),
                0,
                "still registered after the last left"
            );
            assert_eq!(
                // SAFETY: the area this thread just registered, with its length and signature.
                unsafe {
                    libc::syscall(
                        libc::SYS_rseq,
                        exported,
                        len as u32,
                        rseq_sys::abi::RSEQ_FLAG_UNREGISTER,
                        rseq_sys::abi::RSEQ_SIG,
                    )
                },
                0
            );
        });
    });
}
