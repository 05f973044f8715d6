//! Real programs under `LD_PRELOAD=libpercpu_malloc.so`, each compared with a plain run: python3
//! (dicts, strings, threads), sqlite3 (a few hundred thousand rows), `sort` on a generated file,
//! and a multi-threaded C stress program of our own (`tests/stress.c`: every function of the
//! malloc family, every alignment, cross-thread frees, 2,000 short-lived threads, C edge
//! cases). Each must exit 0 with identical output, on the rseq path and under
//! `PERCPU_FORCE_FALLBACK=1`; the C program also where `rseq(2)` fails (a seccomp filter).
//! Also: the allocation functions' other names (`tests/other_names.c`), the library loaded with
//! `dlopen` into a running multi-threaded program (`tests/dlopen.c`), how much of its code a
//! program keeps resident (`tests/footprint.c`), and the rseq area it shares where glibc
//! registers none (`tests/shared.c`).

#[path = "../../rseq-sys/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `libpercpu_malloc.so`, which cargo builds with this package's tests beside the test binary
/// (in `deps/`; `cargo build` copies it one level up).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|dir| dir.join("libpercpu_malloc.so"))
        .find(|lib| lib.exists())
        .unwrap_or_else(|| panic!("no libpercpu_malloc.so in or above {}", deps.display()))
}

/// Runs `program args` with `stdin`, plain or preloaded (with `env`); returns stdout, checking
/// the exit status.
fn run(program: &str, args: &[&str], stdin: &[u8], preload: bool, env: &[(&str, &str)]) -> Vec<u8> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if preload {
        cmd.env("LD_PRELOAD", library());
        cmd.envs(env.iter().copied());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (is it installed? .ci/run installs it)"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} (preload: {preload}, {env:?}) failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The program's output plain, then preloaded on both paths: all three must match.
fn same_output(program: &str, args: &[&str], stdin: &[u8]) {
    let plain = run(program, args, stdin, false, &[]);
    assert!(!plain.is_empty(), "{program} printed nothing");
    for env in [&[][..], &[("PERCPU_FORCE_FALLBACK", "1")][..]] {
        let preloaded = run(program, args, stdin, true, env);
        assert!(
            preloaded == plain,
            "{program} {args:?} printed something else under the preload ({env:?}):\n{}",
            String::from_utf8_lossy(&preloaded)
        );
    }
}

#[test]
fn python3_dicts_strings_and_threads() {
    let script = r#"
import threading, hashlib, json
def work(seed, out):
    d = {}
    for i in range(60000):
        k = f"key-{seed}-{i * 7919 % 100003}"
        d[k] = [i, str(i) * (i % 7), {"n": i}]
    s = "".join(sorted(d)[::97])
    out[seed] = (len(d), hashlib.sha256(s.encode()).hexdigest(), sum(v[0] for v in d.values()))
out = {}
threads = [threading.Thread(target=work, args=(t, out)) for t in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(sorted(out.items())))
big = [bytes(1000 + i % 50000) for i in range(3000)]
print(sum(map(len, big)))
"#;
    same_output("python3", &["-c", script], b"");
}

#[test]
fn sqlite3_hundreds_of_thousands_of_rows() {
    let sql = "
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, value REAL, tag TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)
INSERT INTO t SELECT i, 'name-' || (i * 7919 % 300007), i * 0.5, printf('%08x', i * 2654435761 % 4294967296) FROM n;
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(value), min(name), max(tag) FROM t;
SELECT tag, count(*) FROM t GROUP BY substr(tag, 1, 2) ORDER BY 1 LIMIT 5;
SELECT name FROM t WHERE name LIKE 'name-1234%' ORDER BY name LIMIT 5;
DELETE FROM t WHERE id % 3 = 0;
VACUUM;
SELECT count(*), avg(value) FROM t;
";
    same_output("sqlite3", &[":memory:"], sql.as_bytes());
}

#[test]
fn sort_a_large_generated_file() {
    let mut input = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..400_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(
            input,
            "{:016x} line {i} {}",
            x,
            "word ".repeat((x % 12) as usize)
        )
        .unwrap();
    }
    let sorted = run("sort", &["--parallel=4", "-S", "64M"], &input, false, &[]);
    assert_eq!(sorted.iter().filter(|&&b| b == b'\n').count(), 400_000);
    same_output("sort", &["--parallel=4", "-S", "64M"], &input);
}

/// Compiles `tests/NAME.c` into a temporary binary (removed when the guard drops), named for
/// this process and call, since tests that compile the same program run at once.
fn compile(name: &str) -> TempBinary {
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/{name}.c"));
    let binary = std::env::temp_dir().join(format!(
        "percpu-malloc-{name}-{}-{build}",
        std::process::id()
    ));
    let status = Command::new("cc")
        .args([
            "-O2",
            "-Wall",
            "-Wno-alloc-size-larger-than",
            "-pthread",
            "-o",
        ])
        .arg(&binary)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("cc (is it installed? .ci/run installs it)");
    assert!(status.success(), "compiling {}", source.display());
    TempBinary(binary)
}

struct TempBinary(PathBuf);

impl Drop for TempBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_c_stress_program() {
    let binary = compile("stress");
    same_output(binary.0.to_str().unwrap(), &[], b"");
}

/// C23's `free_sized` and `free_aligned_sized`, the obsolete `cfree` (bound as an old binary
/// binds it) and glibc's `__libc_*` names all reach the library, on both paths: a block one of
/// them allocates is counted in the library's statistics, and one of them frees leaves them as
/// they were (`tests/other_names.c`). Left to glibc, these take its heap or abort on ours.
#[test]
fn every_other_name_of_the_allocation_functions_is_the_librarys() {
    let binary = compile("other_names");
    for env in [&[][..], &[("PERCPU_FORCE_FALLBACK", "1")][..]] {
        let out = run(binary.0.to_str().unwrap(), &[], b"", true, env);
        assert_eq!(out, b"ok\n", "{env:?}");
    }
}

/// Where `rseq(2)` fails (seccomp, old kernels), glibc's registration and ours both fail and every
/// thread takes the fallback path for real, with no registration behind it (unlike
/// `PERCPU_FORCE_FALLBACK=1`): the same program must print the same.
#[test]
fn the_c_stress_program_without_rseq() {
    use std::os::unix::process::CommandExt;

    let binary = compile("stress");
    let plain = run(binary.0.to_str().unwrap(), &[], b"", false, &[]);
    let mut cmd = Command::new(&binary.0);
    cmd.env("LD_PRELOAD", library());
    // SAFETY: the filter is installed between fork and exec with prctl calls only, which are
    // async-signal-safe and allocate nothing.
    unsafe { cmd.pre_exec(common::deny_rseq_enosys) };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(out.stdout == plain, "the output differs from a plain run");
}

/// Under a finite `RLIMIT_AS` the allocator reserves no 2 GiB class map, and `free` finds each
/// block's class through the slab descriptors instead: the same program must print the same.
#[test]
fn the_c_stress_program_where_address_space_is_limited() {
    use std::os::unix::process::CommandExt;

    let binary = compile("stress");
    let plain = run(binary.0.to_str().unwrap(), &[], b"", false, &[]);
    let mut cmd = Command::new(&binary.0);
    cmd.env("LD_PRELOAD", library())
        .env("PERCPU_MALLOC_STATS", "1");
    // SAFETY: the closure runs in the child between fork and exec and only calls setrlimit,
    // which is async-signal-safe. 1 TiB: finite, yet no limit on what the program needs.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 40,
                rlim_max: 1 << 40,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(out.stdout == plain, "the output differs from a plain run");
    assert!(stderr.contains("class map: none"), "{stderr}");
}

/// Every process that preloads the library keeps resident each 64 KiB window of its code that
/// runs at all (the kernel maps a file's pages around each fault, in windows aligned to 64 KiB
/// of virtual address). `layout.ld` gathers the code a program runs through in a `.text.percpu`
/// section at the front, so a program that takes every path keeps at most the front resident,
/// plus what the last window reaches past it (without the script: about 80% of the code). The
/// library's segments are aligned to 64 KiB (`build.rs`), and glibc 2.35 and later load it at
/// such an address, so there the windows are the same in every process: exactly those the front
/// spans, from the start of its segment. Where LLD links the library (Rust's default on x86_64
/// Linux), the unwinder is linked in and `libgcc_s.so.1` is never loaded.
///
/// The bound holds for an optimized library (`.ci/run` runs these tests with `--release`). An
/// unoptimized one calls small functions of `core` out of line, and they lie in `.text`.
#[test]
fn a_program_keeps_only_the_front_of_the_library_s_code_resident() {
    let binary = compile("footprint");
    let library = library().canonicalize().unwrap();
    let image = std::fs::read(&library).unwrap();
    let code = code_front(&image);
    let window = 64 << 10;
    assert!(
        code.align >= window,
        "segments aligned to {:#x}: build.rs's max-page-size unused",
        code.align
    );
    let aligned = glibc_at_least(2, 35);
    let bound = if aligned {
        // From the segment's first page to the end of the window holding the front's last byte.
        let first_page = code.segment % window;
        (first_page + code.front).next_multiple_of(window) - first_page
    } else {
        // The front's pages, and the rest of the last 64 KiB window they reach into.
        code.front.next_multiple_of(4096) + window - 4096
    } >> 10;
    let linked_by_lld = image.windows(12).any(|w| w == b"Linker: LLD ");
    for env in [&[][..], &[("PERCPU_FORCE_FALLBACK", "1")][..]] {
        let out = Command::new(&binary.0)
            .arg(&library)
            .env("LD_PRELOAD", &library)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{env:?}: {}", out.status);
        let report = String::from_utf8(out.stdout).unwrap();
        let resident: u64 = report
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("code KiB "))
            .and_then(|rest| rest.split(" of ").next()?.parse().ok())
            .unwrap_or_else(|| panic!("{env:?}: unexpected report {report:?}"));
        assert!(
            cfg!(debug_assertions) || resident <= bound,
            "{env:?}: {resident} KiB of the library's code resident, more than {bound} KiB: its \
             front is {} KiB (load address aligned: {aligned})",
            code.front >> 10
        );
        if linked_by_lld {
            assert!(
                !report.contains("libgcc_s"),
                "{env:?}: libgcc_s.so.1 was loaded"
            );
        }
    }
}

/// Where the code a program runs through lies in the library: see [`code_front`].
struct CodeFront {
    /// Bytes from the executable segment's first page to the `.text` section.
    front: u64,
    /// The executable segment's first page (its address in the file's layout).
    segment: u64,
    /// The segment's alignment (`p_align`).
    align: u64,
}

/// The front of the library's executable segment: from its first page to its `.text` section,
/// which `layout.ld` places after `.text.percpu` and the PLT; panics if the library has no
/// `.text.percpu`. A 64-bit little-endian ELF file.
fn code_front(elf: &[u8]) -> CodeFront {
    let u16_at = |at: usize| u64::from(u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()));
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()));
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "not a 64-bit little-endian ELF file"
    );
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    // The executable PT_LOAD segment (p_type 1, p_flags has PF_X).
    let (segment, align) = (0..phnum)
        .map(|i| (phoff + i * phentsize) as usize)
        .find(|&at| u32_at(at) == 1 && u32_at(at + 4) & 1 != 0)
        .map(|at| (u64_at(at + 0x10) & !4095, u64_at(at + 0x30)))
        .expect("no executable segment");
    let section = |i: u64| (shoff + i * shentsize) as usize;
    let names = u64_at(section(shstrndx) + 0x18) as usize;
    let address_of = |wanted: &[u8]| {
        (0..shnum).map(section).find_map(|at| {
            let name = &elf[names + u32_at(at) as usize..];
            let name = &name[..name.iter().position(|&b| b == 0)?];
            (name == wanted).then(|| u64_at(at + 0x10))
        })
    };
    let percpu = address_of(b".text.percpu").expect("no .text.percpu section: layout.ld unused");
    let text = address_of(b".text").expect("no .text section");
    assert!(
        percpu < text,
        ".text.percpu at {percpu:#x} is not ahead of .text at {text:#x}"
    );
    CodeFront {
        front: text - segment,
        segment,
        align,
    }
}

/// Whether this process runs on glibc `major.minor` or later.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = version
        .to_str()
        .unwrap()
        .split('.')
        .map(|n| n.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap_or(0)) >= (major, minor)
}

/// The library keeps each thread's registration in initial-exec TLS. `dlopen` must still load
/// it (glibc finds it static TLS room, which needs its TLS aligned no more than glibc's own),
/// and threads that started before the load must each get their own.
#[test]
fn dlopened_while_threads_run() {
    let binary = compile("dlopen");
    let library = library();
    for env in [&[][..], &[("PERCPU_FORCE_FALLBACK", "1")][..]] {
        let out = Command::new(&binary.0)
            .arg(&library)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == b"ok\n",
            "{env:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Where glibc registers no rseq, the library registers the area it offers to the program's own
/// copies of rseq-sys (rseq-sys's `shared` module; its tests check that a copy joins it), in
/// every thread.
#[test]
fn registers_the_area_it_shares_where_glibc_registers_none() {
    let binary = compile("shared");
    let out = Command::new(&binary.0)
        .env("LD_PRELOAD", library())
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", out.status);
    assert_eq!(stdout, "main: registered\nthread: registered\n");
}

/// The case that sharing is for: a Rust program using percpu (this test binary, re-run as a child)
/// under the preload, where glibc registers no rseq. Its copy of rseq-sys must take the
/// library's area, in the main thread (where the library registered first, before `main`) and in
/// threads of its own, and its counters must run on rseq with exact sums.
#[test]
fn a_rust_program_using_percpu_shares_the_librarys_registration() {
    let lib = library();
    let out = common::run_child(
        "child_using_percpu_under_the_preload",
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("GLIBC_TUNABLES", "glibc.pthread.rseq=0"),
        ],
        None,
    );
    common::assert_child_passed("child_using_percpu_under_the_preload", &out);
}

#[test]
#[ignore = "run in a child by a_rust_program_using_percpu_shares_the_librarys_registration"]
fn child_using_percpu_under_the_preload() {
    assert_eq!(
        rseq_sys::glibc_rseq_size(),
        0,
        "GLIBC_TUNABLES did not take effect"
    );
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
    let symbol = unsafe {
        libc::dlsym(
            libc::RTLD_DEFAULT,
            rseq_sys::shared::SHARED_AREA_SYMBOL.as_ptr(),
        )
    };
    assert!(!symbol.is_null(), "the preloaded library exports its area");
    // SAFETY: `export_shared_area!` defines the symbol with exactly this signature.
    let library_area = unsafe {
        std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> *mut libc::c_void>(symbol)
    };
    let preload = std::env::var("LD_PRELOAD").unwrap();
    static COUNTER: percpu::Counter = percpu::Counter::new();
    const THREADS: usize = 8;
    const ADDS: i64 = 100_000;
    let check_thread = || {
        let current = rseq_sys::current().expect("rseq for this thread");
        assert_eq!(current.area().as_ptr().cast(), library_area());
        let shared = rseq_sys::shared::current_use().expect("the library's area");
        assert_eq!(
            (shared.object.to_str(), shared.users),
            (Ok(preload.as_str()), 2),
            "the library exports the area; it and this program use it"
        );
        assert!(
            matches!(percpu::mode(), percpu::Mode::Rseq { .. }),
            "{:?}",
            percpu::mode()
        );
        for _ in 0..ADDS {
            COUNTER.inc();
        }
    };
    check_thread();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(check_thread);
        }
    });
    assert_eq!(COUNTER.sum(), (THREADS as i64 + 1) * ADDS);
}

#[test]
fn statistics_at_exit_when_asked() {
    let lib = library();
    let out = Command::new("sh")
        .args(["-c", "echo hello | cat"])
        .env("LD_PRELOAD", &lib)
        .env("PERCPU_MALLOC_STATS", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("percpu-malloc statistics:"), "{stderr}");
    assert!(stderr.contains("total:"), "{stderr}");
    assert!(
        stderr.contains("class map: 2.0 GiB of address space reserved"),
        "{stderr}"
    );
    // And nothing without the variable.
    let quiet = Command::new("sh")
        .args(["-c", "echo hello | cat"])
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

/// What the scripts below start with: `ctypes` and the C library, its `malloc` and `free` typed.
const PYTHON_LIBC: &str = "
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
";

/// Runs a python3 script under the preload (after [`PYTHON_LIBC`]), checking it exits 0: its
/// stdout and stderr.
fn python3_preloaded(script: &str) -> (String, String) {
    let out = Command::new("python3")
        .args(["-c", &format!("{PYTHON_LIBC}{script}")])
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// `malloc_stats()`, glibc's call for a report on stderr, gives percpu's statistics as they are
/// at the call (glibc's would describe arenas the preloaded library never uses), with no exit
/// report unless asked for.
#[test]
fn malloc_stats_reports_the_blocks_in_use_now() {
    // 300 blocks of 1000 bytes (class 1024) held across the call, then freed.
    let script = "
held = [libc.malloc(1000) for _ in range(300)]
libc.malloc_stats()
for p in held: libc.free(p)
print('done')
";
    let (stdout, stderr) = python3_preloaded(script);
    assert_eq!(stdout, "done\n");
    assert_eq!(
        stderr.matches("percpu-malloc statistics:").count(),
        1,
        "one report, at the call:\n{stderr}"
    );
    // The 1024-byte class's row: class, allocs, frees, in use (a number and its unit), ...
    let row: Vec<&str> = stderr
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"1024"))
        .unwrap_or_else(|| panic!("no row for class 1024:\n{stderr}"));
    let (allocs, frees): (u64, u64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
    let in_use: f64 = row[3].parse().unwrap();
    assert!(allocs.saturating_sub(frees) >= 300, "{row:?}");
    assert!(row[4] == "KiB" && in_use >= 300.0, "{row:?}");
}

/// `mallinfo2()` and `mallinfo()` give the allocator's figures in glibc's fields: blocks in use
/// within the arena, and large blocks (a mapping each) apart.
#[test]
fn mallinfo_reports_the_blocks_in_use_now() {
    // 300 blocks of 1000 bytes and one of 4 MiB held across the calls, then freed.
    let script = "
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
        ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
class IntInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n, _ in Info._fields_]
libc.mallinfo2.restype = Info
libc.mallinfo.restype = IntInfo
before = libc.mallinfo2()
held = [libc.malloc(1000) for _ in range(300)] + [libc.malloc(4 << 20)]
now, small = libc.mallinfo2(), libc.mallinfo()
for p in held: libc.free(p)
for info in (before, now, small):
    print(' '.join(str(getattr(info, n)) for n, _ in Info._fields_))
";
    let (stdout, _) = python3_preloaded(script);
    let rows: Vec<Vec<u64>> = stdout
        .lines()
        .map(|line| line.split(' ').map(|n| n.parse().unwrap()).collect())
        .collect();
    let [before, now, small] = [&rows[0], &rows[1], &rows[2]];
    let (arena, hblks, hblkhd, uordblks, fordblks) = (0, 3, 4, 7, 8);
    assert!(
        now[uordblks] >= before[uordblks] + 300 * 1000,
        "{now:?} {before:?}"
    );
    assert!(now[hblks] > before[hblks], "{now:?} {before:?}");
    assert!(
        now[hblkhd] >= before[hblkhd] + (4 << 20),
        "{now:?} {before:?}"
    );
    assert_eq!(now[arena], now[uordblks] + now[fordblks], "{now:?}");
    assert_eq!(
        small, now,
        "the int fields hold the same figures while they fit"
    );
}

/// `malloc_info()` writes the allocator's figures in glibc's XML (glibc's own would describe arenas
/// the preloaded library never uses): the freed blocks its caches hold per class, the large blocks
/// in use, the slab memory; and returns `EINVAL` for options other than 0, as glibc's does.
#[test]
fn malloc_info_writes_the_allocators_figures_as_glibcs_xml() {
    // 300 blocks of 1000 bytes (class 1024) freed, and one of 4 MiB held, across the call.
    let script = "
import tempfile, xml.etree.ElementTree as ET
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
freed = [libc.malloc(1000) for _ in range(300)]
large = libc.malloc(4 << 20)
for p in freed: libc.free(p)
with tempfile.NamedTemporaryFile() as out:
    stream = libc.fopen(out.name.encode(), b'w')
    print(libc.malloc_info(0, stream), libc.malloc_info(1, stream))
    libc.fclose(stream)
    doc = ET.parse(out.name).getroot()
libc.free(large)
heap = doc.find('heap')
sizes = {int(s.get('to')): int(s.get('count')) for s in heap.find('sizes')}
totals = {t.get('type'): (int(t.get('count')), int(t.get('size'))) for t in doc.findall('total')}
system = {s.get('type'): int(s.get('size')) for s in doc.findall('system')}
aspace = {s.get('type'): int(s.get('size')) for s in doc.findall('aspace')}
print(sizes.get(1024, 0), sum(sizes.values()), *totals['rest'], *totals['mmap'])
print(system['current'], system['max'], aspace['total'], heap.find('system').get('size'))
";
    let (stdout, _) = python3_preloaded(script);
    let rows: Vec<Vec<u64>> = stdout
        .lines()
        .map(|line| line.split(' ').map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows[0], [0, libc::EINVAL as u64], "malloc_info's results");
    let [
        class_1024,
        cached,
        rest_count,
        rest_size,
        mmap_count,
        mmap_size,
    ] = rows[1][..]
    else {
        panic!("{stdout}")
    };
    assert!(class_1024 >= 300, "{stdout}");
    assert_eq!(cached, rest_count, "{stdout}");
    assert!(mmap_count >= 1 && mmap_size >= 4 << 20, "{stdout}");
    let [current, max, mapped, heap_current] = rows[2][..] else {
        panic!("{stdout}")
    };
    assert!(
        rest_size <= current && current == max && current <= mapped && heap_current == current,
        "{stdout}"
    );
}
