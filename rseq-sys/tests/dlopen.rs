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
//! Needs a dynamically linked test binary and cargo (it builds the probe); the static binaries
//! of `ci/qemu.sh` leave it out.
#![cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
))]

use std::ffi::{CStr, CString};
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
