//! `/init` for the test VMs (see `ci/qemu.sh`): mounts what the tests read (/proc for
//! re-executing themselves, /sys for possible CPUs), runs every line of `/tests/list`
//! (`binary [args...]`) with `PERCPU_TEST_SCALE` passed through, prints one status line per
//! binary and a summary, then powers the machine off.
//!
//! Built with plain `rustc` (no dependencies) as a static binary for each target.

use std::ffi::{CString, c_char};
use std::process::Command;

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f) = (
        CString::new(source).unwrap(),
        CString::new(target).unwrap(),
        CString::new(fstype).unwrap(),
    );
    unsafe extern "C" {
        fn mount(s: *const c_char, t: *const c_char, f: *const c_char, flags: u64, data: *const u8) -> i32;
    }
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    if unsafe { mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) } != 0 {
        println!("QEMU-INIT: mount {target} failed: {}", std::io::Error::last_os_error());
    }
}

/// What regime this VM gives the tests: the kernel's rseq auxv entries and glibc's view.
fn print_rseq_facts() {
    unsafe extern "C" {
        fn getauxval(key: u64) -> u64;
        static __rseq_size: u32;
    }
    // SAFETY: getauxval has no preconditions; `__rseq_size` is a constant set by glibc's
    // start-up code (this binary is static, linked against glibc >= 2.35).
    let (feature_size, align, glibc) = unsafe { (getauxval(27), getauxval(28), __rseq_size) };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "QEMU-INIT: Linux {}, AT_RSEQ_FEATURE_SIZE={feature_size} AT_RSEQ_ALIGN={align} \
         glibc __rseq_size={glibc}, {} CPUs",
        release.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn power_off() -> ! {
    unsafe extern "C" {
        fn sync();
        fn reboot(cmd: i32) -> i32;
    }
    // SAFETY: PID 1 flushing and powering off; nothing runs afterwards.
    unsafe {
        sync();
        reboot(0x4321_fedc); // LINUX_REBOOT_CMD_POWER_OFF
    }
    loop {
        std::thread::park();
    }
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    print_rseq_facts();
    let list = std::fs::read_to_string("/tests/list").unwrap_or_default();
    let scale = std::fs::read_to_string("/tests/scale").unwrap_or_else(|_| "1".into());
    let (mut passed, mut failed) = (0, 0);
    for line in list.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let binary = words.next().unwrap();
        let start = std::time::Instant::now();
        let status = Command::new(format!("/tests/{binary}"))
            .args(words)
            .env("PERCPU_TEST_SCALE", scale.trim())
            .env("RUST_BACKTRACE", "1")
            .current_dir("/tmp")
            .status();
        let ok = status.as_ref().is_ok_and(|s| s.success());
        if ok { passed += 1 } else { failed += 1 }
        println!(
            "QEMU-TEST {binary}: {} ({:?}, {:.1} s)",
            if ok { "ok" } else { "FAILED" },
            status,
            start.elapsed().as_secs_f64()
        );
    }
    println!("QEMU-SUMMARY: {passed} passed, {failed} failed");
    power_off();
}
