//! `percpu`: the rseq report, the per-CPU counter demo, and the benchmark suite.
//!
//! ```text
//! percpu                 report, then a ~5 s demo
//! percpu info [--json]   the report only
//! percpu demo [--seconds S]
//! percpu bench [--quick] [--json] [--out DIR]
//! ```

mod bench;
mod demo;
mod report;

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: percpu [COMMAND]

Commands:
  (none)                 print the rseq report, then run the ~5 s counter demo
  info [--json]          print the rseq report (--json: one JSON object)
  demo [--seconds S]     run the counter demo for about S seconds (default 5)
  bench [--quick] [--json] [--out DIR]
                         run the side-by-side suite (counters, freelists, allocation) at
                         1 ... 2x CPUs threads and print the tables (--json: one JSON
                         object; --quick: a short run; --out DIR: write README.md, SVG
                         plots and results.json there)
  help                   print this message

Environment:
  PERCPU_FORCE_FALLBACK=1   use the atomic fallback instead of rseq";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args.iter().map(String::as_str).collect::<Vec<_>>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("percpu: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    match args {
        [] => {
            print!("{}", report::Report::collect().to_text());
            demo::run(Duration::from_secs(5));
        }
        ["info"] => print!("{}", report::Report::collect().to_text()),
        ["info", "--json"] => println!("{}", report::Report::collect().to_json()),
        ["demo"] => demo::run(Duration::from_secs(5)),
        ["demo", "--seconds", s] => demo::run(parse_seconds(s)?),
        ["bench", rest @ ..] => return bench_command(rest),
        ["help" | "--help" | "-h"] => println!("{USAGE}"),
        ["--version" | "-V"] => println!("percpu {}", env!("CARGO_PKG_VERSION")),
        [cmd @ ("info" | "demo"), rest @ ..] => {
            return Err(format!("unexpected arguments to {cmd}: {}", rest.join(" ")));
        }
        [other, ..] => return Err(format!("unknown command {other:?}")),
    }
    Ok(())
}

fn bench_command(args: &[&str]) -> Result<(), String> {
    let (mut quick, mut json, mut out, mut fallback_child) = (false, false, None, false);
    let mut args = args.iter();
    while let Some(&arg) = args.next() {
        match arg {
            "--quick" => quick = true,
            "--json" => json = true,
            "--out" => match args.next() {
                Some(dir) => out = Some(std::path::PathBuf::from(dir)),
                None => return Err("--out wants a directory".to_string()),
            },
            // Internal: the fallback contenders, run by `percpu bench` itself.
            "--fallback-child" => fallback_child = true,
            other => return Err(format!("unexpected argument to bench: {other:?}")),
        }
    }
    let effort = if quick {
        bench::Effort::QUICK
    } else {
        bench::Effort::FULL
    };
    if fallback_child {
        if !percpu::forced_fallback() {
            return Err("--fallback-child needs PERCPU_FORCE_FALLBACK=1".to_string());
        }
        let families = bench::run_families(effort, &mut |line| eprintln!("percpu bench: {line}"));
        print!("{}", bench::fallback_child_lines(&families));
        return Ok(());
    }
    if percpu::forced_fallback() {
        return Err("run bench without PERCPU_FORCE_FALLBACK: it measures both paths".to_string());
    }
    let families = bench::run_suite(effort, quick)?;
    let machine = bench::Machine::collect();
    let command = format!("percpu bench{}", if quick { " --quick" } else { "" });
    if json {
        println!("{}", bench::to_json(&machine, &families));
    } else {
        print!("{}", bench::to_markdown(&machine, &families, &command));
    }
    if let Some(dir) = out {
        bench::write_report(&dir, &machine, &families, &command)?;
        eprintln!("percpu bench: report written to {}", dir.display());
    }
    Ok(())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "--seconds wants a number of seconds in (0, 3600], not {s:?}"
        )),
    }
}
