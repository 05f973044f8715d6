//! `percpu`: the rseq report and the per-CPU counter demo.
//!
//! ```text
//! percpu                 report, then a ~5 s demo
//! percpu info [--json]   the report only
//! percpu demo [--seconds S]
//! ```

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
        ["help" | "--help" | "-h"] => println!("{USAGE}"),
        ["--version" | "-V"] => println!("percpu {}", env!("CARGO_PKG_VERSION")),
        [cmd @ ("info" | "demo"), rest @ ..] => {
            return Err(format!("unexpected arguments to {cmd}: {}", rest.join(" ")));
        }
        [other, ..] => return Err(format!("unknown command {other:?}")),
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
