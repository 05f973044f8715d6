//! `percpu bench`: one side-by-side suite (counters, freelists, allocation) at 1 … 2× CPUs
//! threads, with contenders alternating so machine drift hits all of them alike.
//!
//! For each family and thread count, every contender gets a crew of threads (started before
//! timing, `percpu_benches::Crew`), a calibrated number of operations per round, and several
//! rounds in a rotating order; the figure is the median ns per operation per thread. The
//! percpu fallback contenders need `PERCPU_FORCE_FALLBACK=1`, which is read once per process,
//! so they run in a child process of this same binary, between the same rounds' families.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::{ArrayQueue, SegQueue};
use percpu::{Counter, PerCpuAlloc, RawFreeList};
use percpu_benches::{Crew, Padded, SchedSlots, median, thread_counts, thread_local_inc};

use crate::report::{Report, json_string};

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Target wall time of one round.
    round: Duration,
    /// Rounds per contender and thread count (the median is reported).
    rounds: usize,
}

impl Effort {
    pub const FULL: Effort = Effort {
        round: Duration::from_millis(60),
        rounds: 7,
    };
    pub const QUICK: Effort = Effort {
        round: Duration::from_millis(8),
        rounds: 3,
    };
}

/// One contender: builds a crew running its operation on `threads` threads.
struct Contender {
    name: &'static str,
    crew: Box<dyn Fn(usize) -> Crew>,
}

/// A family of contenders measured together.
struct Family {
    name: &'static str,
    /// What one operation is.
    operation: &'static str,
    baseline: &'static str,
    contenders: Vec<Contender>,
}

/// Results for one family: per contender, median ns per operation per thread at each count.
#[derive(Clone, Debug)]
pub struct FamilyResult {
    pub name: String,
    pub operation: String,
    pub baseline: String,
    pub threads: Vec<usize>,
    pub contenders: Vec<(String, Vec<f64>)>,
}

static PERCPU_ALLOC: PerCpuAlloc = PerCpuAlloc::new();

fn percpu_name(rseq: &'static str, fallback: &'static str) -> &'static str {
    if percpu::forced_fallback() {
        fallback
    } else {
        rseq
    }
}

fn counter_family() -> Family {
    let mut contenders = vec![Contender {
        name: percpu_name("percpu_rseq", "percpu_fallback"),
        crew: Box::new(|t| {
            let c = Arc::new(Counter::new());
            Crew::new(t, move || c.inc())
        }),
    }];
    if !percpu::forced_fallback() {
        contenders.extend([
            Contender {
                name: "shared_atomic",
                crew: Box::new(|t| {
                    let c = Arc::new(Padded(AtomicU64::new(0)));
                    Crew::new(t, move || {
                        c.0.fetch_add(1, Ordering::Relaxed);
                    })
                }),
            },
            Contender {
                name: "sharded_atomic",
                crew: Box::new(|t| {
                    let c = Arc::new(SchedSlots::new());
                    Crew::new(t, move || c.inc())
                }),
            },
            Contender {
                name: "thread_local",
                crew: Box::new(|t| Crew::new(t, thread_local_inc)),
            },
        ]);
    }
    Family {
        name: "counters",
        operation: "one increment",
        baseline: "percpu_rseq",
        contenders,
    }
}

/// A push of an item and a pop, on any queue-like contender.
fn pair_crew<Q: Send + Sync + 'static>(
    threads: usize,
    queue: Q,
    push: fn(&Q, usize),
    pop: fn(&Q) -> Option<usize>,
) -> Crew {
    let queue = Arc::new(queue);
    Crew::new(threads, move || {
        push(&queue, 0x1000);
        black_box(pop(&queue));
    })
}

fn freelist_family() -> Family {
    let capacity = 64 * thread_counts().last().copied().unwrap_or(1);
    let mut contenders = vec![Contender {
        name: percpu_name("percpu_rseq", "percpu_fallback"),
        crew: Box::new(|t| {
            pair_crew(
                t,
                RawFreeList::new(64).expect("freelist memory"),
                |l, x| {
                    let _ = l.push(NonNull::new(x as *mut u8).expect("non-null"));
                },
                |l| l.pop().map(|b| b.as_ptr() as usize),
            )
        }),
    }];
    if !percpu::forced_fallback() {
        contenders.extend([
            Contender {
                name: "crossbeam_array_queue",
                crew: Box::new(move |t| {
                    pair_crew(
                        t,
                        ArrayQueue::new(capacity),
                        |q, x| {
                            let _ = q.push(x);
                        },
                        ArrayQueue::pop,
                    )
                }),
            },
            Contender {
                name: "crossbeam_seg_queue",
                crew: Box::new(|t| pair_crew(t, SegQueue::new(), SegQueue::push, SegQueue::pop)),
            },
            Contender {
                name: "mutex_vec",
                crew: Box::new(|t| {
                    pair_crew(
                        t,
                        Mutex::new(Vec::new()),
                        |m, x| m.lock().unwrap().push(x),
                        |m| m.lock().unwrap().pop(),
                    )
                }),
            },
        ]);
    }
    Family {
        name: "freelists",
        operation: "one push + pop pair",
        baseline: "percpu_rseq",
        contenders,
    }
}

/// Alloc + free pairs of sizes cycling through 16 B … 2 KiB on `alloc` (each thread keeps its
/// own place in the cycle: a shared one would measure its cache line instead).
fn alloc_crew<A: GlobalAlloc + Send + Sync + 'static>(threads: usize, alloc: &'static A) -> Crew {
    const SIZES: [usize; 8] = [16, 24, 48, 64, 100, 256, 640, 2048];
    thread_local! {
        static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    Crew::new(threads, move || {
        let size = NEXT.with(|n| {
            n.set(n.get().wrapping_add(1));
            SIZES[n.get() % SIZES.len()]
        });
        let layout = Layout::from_size_align(size, 8).expect("valid layout");
        // SAFETY: a valid layout; the block is freed at once with it.
        unsafe {
            let p = alloc.alloc(layout);
            alloc.dealloc(black_box(p), layout);
        }
    })
}

fn alloc_family() -> Family {
    static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
    static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
    let mut contenders = vec![Contender {
        name: percpu_name("percpu_rseq", "percpu_fallback"),
        crew: Box::new(|t| alloc_crew(t, &PERCPU_ALLOC)),
    }];
    if !percpu::forced_fallback() {
        contenders.extend([
            Contender {
                name: "glibc",
                crew: Box::new(|t| alloc_crew(t, &System)),
            },
            Contender {
                name: "mimalloc",
                crew: Box::new(|t| alloc_crew(t, &MIMALLOC)),
            },
            Contender {
                name: "jemalloc",
                crew: Box::new(|t| alloc_crew(t, &JEMALLOC)),
            },
        ]);
    }
    Family {
        name: "allocation",
        operation: "one alloc + free pair, sizes cycling through 16 B … 2 KiB",
        baseline: "percpu_rseq",
        contenders,
    }
}

/// Operations per round that take about `target` on this crew.
fn calibrate(crew: &Crew, target: Duration) -> u64 {
    let mut iters = 1_000u64;
    loop {
        let took = crew.round(iters);
        if took >= target / 4 || iters >= 1 << 30 {
            let scaled = iters as f64 * target.as_secs_f64() / took.as_secs_f64().max(1e-9);
            return (scaled as u64).clamp(1_000, 1 << 32);
        }
        iters *= 4;
    }
}

fn measure(family: &Family, effort: Effort, progress: &mut dyn FnMut(&str)) -> FamilyResult {
    let threads = thread_counts();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); family.contenders.len()];
    for (step, &t) in threads.iter().enumerate() {
        progress(&format!(
            "{}: {t} thread{} ({}/{})",
            family.name,
            if t == 1 { "" } else { "s" },
            step + 1,
            threads.len()
        ));
        let crews: Vec<Crew> = family.contenders.iter().map(|c| (c.crew)(t)).collect();
        let iters: Vec<u64> = crews.iter().map(|c| calibrate(c, effort.round)).collect();
        let mut samples = vec![Vec::new(); crews.len()];
        for round in 0..effort.rounds {
            // Rotate the order each round so no contender always runs first.
            for k in 0..crews.len() {
                let i = (k + round) % crews.len();
                let took = crews[i].round(iters[i]);
                samples[i].push(took.as_nanos() as f64 / iters[i] as f64);
            }
        }
        for (i, s) in samples.into_iter().enumerate() {
            results[i].push(median(s));
        }
    }
    FamilyResult {
        name: family.name.to_string(),
        operation: family.operation.to_string(),
        baseline: family.baseline.to_string(),
        threads,
        contenders: family
            .contenders
            .iter()
            .map(|c| c.name.to_string())
            .zip(results)
            .collect(),
    }
}

/// Runs the suite in this process (only percpu's contenders under forced fallback).
pub fn run_families(effort: Effort, progress: &mut dyn FnMut(&str)) -> Vec<FamilyResult> {
    [counter_family(), freelist_family(), alloc_family()]
        .iter()
        .map(|f| measure(f, effort, progress))
        .collect()
}

/// The whole suite: this process, then the fallback contenders from a child of this binary.
pub fn run_suite(effort: Effort, quick: bool) -> Result<Vec<FamilyResult>, String> {
    let mut progress = |line: &str| eprintln!("percpu bench: {line}");
    let mut families = run_families(effort, &mut progress);
    progress("percpu's fallback path (a child process with PERCPU_FORCE_FALLBACK=1)");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut args = vec!["bench", "--fallback-child"];
    if quick {
        args.push("--quick");
    }
    let out = std::process::Command::new(exe)
        .args(args)
        .env("PERCPU_FORCE_FALLBACK", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the fallback child: {e}"))?;
    if !out.status.success() {
        return Err(format!("the fallback child failed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        // "family<TAB>contender<TAB>ns,ns,..."
        let mut parts = line.split('\t');
        let (Some(family), Some(name), Some(ns)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let ns: Vec<f64> = ns.split(',').filter_map(|v| v.parse().ok()).collect();
        if let Some(f) = families.iter_mut().find(|f| f.name == family)
            && ns.len() == f.threads.len()
        {
            f.contenders.push((name.to_string(), ns));
        }
    }
    Ok(families)
}

/// The fallback child's output: one line per contender, for `run_suite` to read.
pub fn fallback_child_lines(families: &[FamilyResult]) -> String {
    let mut s = String::new();
    for f in families {
        for (name, ns) in &f.contenders {
            let ns: Vec<String> = ns.iter().map(|v| format!("{v:.4}")).collect();
            let _ = writeln!(s, "{}\t{}\t{}", f.name, name, ns.join(","));
        }
    }
    s
}

/// The machine, for the report: CPU model, CPUs, kernel, glibc, rseq status.
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub glibc: String,
    pub rseq: String,
}

impl Machine {
    pub fn collect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
        let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }
            .to_string_lossy()
            .into_owned();
        let report = Report::collect();
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            glibc,
            rseq: format!("{} (kernel_size {})", report.mode, report.kernel_size),
        }
    }
}

/// Ratio of `ns` to the baseline's at the same thread count (above 1: the baseline is faster).
fn ratio(family: &FamilyResult, ns: &[f64], i: usize) -> Option<f64> {
    let base = family
        .contenders
        .iter()
        .find(|(n, _)| *n == family.baseline)?;
    Some(ns[i] / base.1[i])
}

pub fn to_json(machine: &Machine, families: &[FamilyResult]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"machine\":{{\"cpu\":{},\"cpus\":{},\"kernel\":{},\"glibc\":{},\"rseq\":{}}},\"families\":[",
        json_string(&machine.cpu),
        machine.cpus,
        json_string(&machine.kernel),
        json_string(&machine.glibc),
        json_string(&machine.rseq)
    );
    for (k, f) in families.iter().enumerate() {
        let threads: Vec<String> = f.threads.iter().map(usize::to_string).collect();
        let _ = write!(
            s,
            "{}{{\"name\":{},\"operation\":{},\"unit\":\"ns per operation per thread\",\"baseline\":{},\"threads\":[{}],\"contenders\":[",
            if k > 0 { "," } else { "" },
            json_string(&f.name),
            json_string(&f.operation),
            json_string(&f.baseline),
            threads.join(",")
        );
        for (j, (name, ns)) in f.contenders.iter().enumerate() {
            let values: Vec<String> = ns.iter().map(|v| format!("{v:.4}")).collect();
            let ratios: Vec<String> = (0..ns.len())
                .map(|i| ratio(f, ns, i).map_or("null".to_string(), |r| format!("{r:.4}")))
                .collect();
            let _ = write!(
                s,
                "{}{{\"name\":{},\"ns\":[{}],\"ratio\":[{}]}}",
                if j > 0 { "," } else { "" },
                json_string(name),
                values.join(","),
                ratios.join(",")
            );
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s
}

pub fn to_markdown(machine: &Machine, families: &[FamilyResult], command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# percpu benchmark report\n");
    let _ = writeln!(
        s,
        "**Machine:** {}, {} CPUs, Linux {}, glibc {}; percpu path: {}.\n",
        machine.cpu, machine.cpus, machine.kernel, machine.glibc, machine.rseq
    );
    let _ = writeln!(
        s,
        "**Command:** `{command}`. Each figure is the median of several rounds of ns per operation \
         per thread, threads started before timing, contenders alternating round by round (the \
         fallback column comes from a child process under `PERCPU_FORCE_FALLBACK=1`). Ratios are \
         contender time / baseline time: above 1, the baseline is faster.\n"
    );
    for f in families {
        let _ = writeln!(s, "## {}\n", f.name);
        let _ = writeln!(s, "One operation: {}.\n", f.operation);
        let _ = writeln!(s, "![{} throughput](./{}.svg)\n", f.name, f.name);
        let names: Vec<&str> = f.contenders.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(s, "| threads | {} |", names.join(" | "));
        let _ = writeln!(s, "|---:|{}", "---:|".repeat(names.len()));
        for (i, t) in f.threads.iter().enumerate() {
            let cells: Vec<String> = f
                .contenders
                .iter()
                .map(|(_, ns)| match ratio(f, ns, i) {
                    Some(r) if (r - 1.0).abs() > 1e-9 => format!("{:.2} ns ({r:.2}×)", ns[i]),
                    _ => format!("{:.2} ns", ns[i]),
                })
                .collect();
            let _ = writeln!(s, "| {t} | {} |", cells.join(" | "));
        }
        s.push('\n');
    }
    s
}

/// An SVG line chart of total throughput (million operations per second, all threads) against
/// threads, one line per contender.
pub fn to_svg(family: &FamilyResult) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 190.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mops = |t: usize, ns: f64| t as f64 * 1e3 / ns.max(1e-9);
    let max_t = family.threads.iter().copied().max().unwrap_or(1).max(2) as f64;
    let max_y = family
        .contenders
        .iter()
        .flat_map(|(_, ns)| family.threads.iter().zip(ns).map(|(&t, &v)| mops(t, v)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: f64| LEFT + (t - 1.0) / (max_t - 1.0) * (W - LEFT - RIGHT);
    let y = |v: f64| H - BOTTOM - v / max_y * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}: million operations per second, all threads</text>",
        (LEFT + W - RIGHT) / 2.0,
        xml(&family.name)
    );
    // Axes, grid and ticks.
    for k in 0..=5 {
        let v = max_y * k as f64 / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for &t in &family.threads {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>",
            x(t as f64),
            H - BOTTOM + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">threads</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    for (j, (name, ns)) in family.contenders.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let points: Vec<String> = family
            .threads
            .iter()
            .zip(ns)
            .map(|(&t, &v)| format!("{:.1},{:.1}", x(t as f64), y(mops(t, v))))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
        let ly = TOP + 10.0 + 20.0 * j as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            W - RIGHT + 15.0,
            W - RIGHT + 35.0,
            W - RIGHT + 40.0,
            ly + 4.0,
            xml(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the report (README.md and one SVG per family) into `dir`.
pub fn write_report(
    dir: &Path,
    machine: &Machine,
    families: &[FamilyResult],
    command: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    write("README.md", &to_markdown(machine, families, command))?;
    write("results.json", &to_json(machine, families))?;
    for f in families {
        write(&format!("{}.svg", f.name), &to_svg(f))?;
    }
    Ok(())
}
