//! The `percpu` binary: its report under each regime, its JSON shape, and its errors.

use std::process::{Command, Output};

fn percpu(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_percpu"));
    cmd.args(args)
        .env_remove("GLIBC_TUNABLES")
        .env_remove("PERCPU_FORCE_FALLBACK");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run percpu")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "percpu failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn info_json(env: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
    let text = stdout(&percpu(&["info", "--json"], env));
    match serde_json::from_str(text.trim()).expect("one JSON object") {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

const KEYS: [&str; 12] = [
    "owner",
    "shared_area",
    "reason",
    "feature_size",
    "feature_align",
    "kernel_size",
    "thread_kernel_size",
    "node_id",
    "mm_cid",
    "cpu",
    "possible_cpus",
    "arch_sequences",
];

fn auxv_feature_size() -> u64 {
    // SAFETY: getauxval has no preconditions.
    match unsafe { libc::getauxval(27) } {
        0 => 20,
        n => n,
    }
}

#[test]
fn info_json_has_exactly_the_documented_keys() {
    let json = info_json(&[]);
    let mut keys: Vec<&str> = json.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn info_json_reports_glibcs_registration_by_default() {
    let json = info_json(&[]);
    assert_eq!(json["owner"], "glibc");
    assert!(json["shared_area"].is_null());
    assert!(json["reason"].is_null());
    assert_eq!(json["feature_size"].as_u64(), Some(auxv_feature_size()));
    let kernel_size = json["kernel_size"].as_u64().unwrap();
    assert!(kernel_size >= 20);
    assert_eq!(json["thread_kernel_size"].as_u64(), Some(kernel_size));
    assert_eq!(json["node_id"].as_bool(), Some(kernel_size >= 24));
    assert_eq!(json["mm_cid"].as_bool(), Some(kernel_size >= 28));
    assert!(json["cpu"].as_u64().unwrap() < json["possible_cpus"].as_u64().unwrap());
    assert_eq!(
        json["arch_sequences"].as_bool(),
        Some(cfg!(any(target_arch = "x86_64", target_arch = "aarch64")))
    );
}

#[test]
fn info_json_reports_our_own_registration_when_glibcs_is_disabled() {
    let json = info_json(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]);
    assert_eq!(json["owner"], "own");
    assert!(
        json["shared_area"].is_null(),
        "nothing exports an area here"
    );
    assert_eq!(json["kernel_size"].as_u64(), Some(auxv_feature_size()));
    assert_eq!(
        json["thread_kernel_size"].as_u64(),
        Some(auxv_feature_size())
    );
}

#[test]
fn info_text_says_whether_extensible_rseq_is_supported() {
    let json = info_json(&[]);
    let text = stdout(&percpu(&["info"], &[]));
    let line = format!(
        "extensible struct rseq supported: yes (kernel_size={})",
        json["kernel_size"]
    );
    assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    assert!(text.contains("per-CPU path:        rseq"), "{text}");
}

#[test]
fn forced_fallback_shows_in_the_report_and_the_demo_stays_exact() {
    let env = [("PERCPU_FORCE_FALLBACK", "1")];
    let text = stdout(&percpu(&["info"], &env));
    assert!(
        text.contains("atomic fallback (PERCPU_FORCE_FALLBACK=1)"),
        "{text}"
    );
    let demo = stdout(&percpu(&["demo", "--seconds", "0.3"], &env));
    assert!(
        demo.contains("threads") && !demo.contains("inexact"),
        "{demo}"
    );
}

#[test]
fn the_demo_prints_every_thread_count_exactly() {
    let demo = stdout(&percpu(&["demo", "--seconds", "0.3"], &[]));
    assert!(!demo.contains("inexact"), "{demo}");
    let rows: Vec<usize> = demo
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(rows.first(), Some(&1), "{demo}");
    assert_eq!(rows.last(), Some(&(2 * cpus)), "{demo}");
}

#[test]
fn bad_arguments_get_a_message_and_a_nonzero_exit() {
    for args in [
        &["frobnicate"][..],
        &["info", "--yaml"],
        &["demo", "--seconds", "-1"],
        &["demo", "--seconds", "x"],
    ] {
        let out = percpu(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("percpu: ") && err.contains("usage:"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// valgrind answers rseq with ENOSYS: the CLI must say so and keep working on atomics.
#[test]
fn under_valgrind_the_cli_reports_no_rseq_and_still_works() {
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(
        valgrind.is_ok_and(|o| o.status.success()),
        "valgrind is required for this test (.ci/run installs it: apt-get install valgrind)"
    );
    let run = |args: &[&str]| {
        let out = Command::new("valgrind")
            .args(["--quiet", "--error-exitcode=99"])
            .arg(format!(
                "--suppressions={}/tests/valgrind.supp",
                env!("CARGO_MANIFEST_DIR")
            ))
            .arg(env!("CARGO_BIN_EXE_percpu"))
            .args(args)
            .env_remove("GLIBC_TUNABLES")
            .output()
            .unwrap();
        stdout(&out)
    };
    let json: serde_json::Value = serde_json::from_str(run(&["info", "--json"]).trim()).unwrap();
    assert_eq!(json["owner"], "none");
    assert_eq!(json["kernel_size"], 0);
    assert_eq!(json["thread_kernel_size"], 0);
    assert!(
        json["reason"].as_str().unwrap().contains("ENOSYS"),
        "{json}"
    );
    let text = run(&["info"]);
    assert!(
        text.contains("extensible struct rseq supported: no (rseq(2) failed: ENOSYS"),
        "{text}"
    );
    let demo = run(&["demo", "--seconds", "0.5"]);
    assert!(
        demo.contains("atomic fallback") && !demo.contains("inexact"),
        "{demo}"
    );
}

#[test]
fn bench_quick_json_reports_every_family_and_contender() {
    let out = percpu(&["bench", "--quick", "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("percpu bench: counters: 1 thread"),
        "no progress shown: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["cpu", "cpus", "kernel", "glibc", "rseq"] {
        assert!(!v["machine"][key].is_null(), "machine.{key} missing");
    }
    let expected = [
        (
            "counters",
            &[
                "percpu_rseq",
                "shared_atomic",
                "sharded_atomic",
                "thread_local",
                "percpu_fallback",
            ][..],
        ),
        (
            "freelists",
            &[
                "percpu_rseq",
                "crossbeam_array_queue",
                "crossbeam_seg_queue",
                "mutex_vec",
                "percpu_fallback",
            ][..],
        ),
        (
            "allocation",
            &[
                "percpu_rseq",
                "glibc",
                "mimalloc",
                "jemalloc",
                "percpu_fallback",
            ][..],
        ),
    ];
    let families = v["families"].as_array().expect("families");
    assert_eq!(families.len(), expected.len());
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (family, (name, contenders)) in families.iter().zip(expected) {
        assert_eq!(family["name"], name);
        let threads: Vec<u64> = family["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(threads.first(), Some(&1), "{name}");
        assert_eq!(
            threads.last(),
            Some(&(2 * cpus as u64)),
            "{name}: up to 2× CPUs"
        );
        let got: Vec<&str> = family["contenders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, contenders, "{name}");
        for c in family["contenders"].as_array().unwrap() {
            let ns = c["ns"].as_array().unwrap();
            assert_eq!(ns.len(), threads.len(), "{name}/{}", c["name"]);
            for value in ns.iter().chain(c["ratio"].as_array().unwrap()) {
                let value = value.as_f64().expect("a number");
                assert!(
                    value.is_finite() && value > 0.0,
                    "{name}/{}: {value}",
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn bench_writes_a_report_with_plots() {
    let dir = std::env::temp_dir().join(format!("percpu-bench-{}", std::process::id()));
    let out = percpu(&["bench", "--quick", "--out", dir.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for family in ["counters", "freelists", "allocation"] {
        assert!(page.contains(&format!("## {family}")), "{page}");
        let svg = std::fs::read_to_string(dir.join(format!("{family}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{family}.svg"
        );
        assert_eq!(
            svg.matches("<polyline").count(),
            5,
            "{family}.svg: one line per contender"
        );
    }
    assert!(page.contains("**Machine:**"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_refuses_bad_arguments() {
    let out = percpu(&["bench", "--frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = percpu(&["bench", "--out"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = percpu(&["bench"], &[("PERCPU_FORCE_FALLBACK", "1")]);
    assert_eq!(out.status.code(), Some(2));
}
