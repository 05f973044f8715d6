//! A web-server-like service counting requests, bytes and errors per CPU, with a reporter thread
//! printing rates from `take()`.
//!
//! `cargo run --release -p percpu --example stats`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use percpu::{Counter, CounterGroup, CounterName};

/// What every request updates: one per-CPU block, one rseq add per field.
#[derive(Clone, Copy, Debug)]
enum Stat {
    Requests,
    BytesSent,
    Errors,
}

impl CounterName for Stat {
    const ALL: &'static [Self] = &[Stat::Requests, Stat::BytesSent, Stat::Errors];
    fn index(self) -> usize {
        self as usize
    }
}

struct ServerStats {
    per_request: CounterGroup<Stat, 3>,
    /// Open connections go up and down: a gauge is a counter too.
    connections: Counter,
}

static STATS: ServerStats = ServerStats {
    per_request: CounterGroup::new(),
    connections: Counter::new(),
};

/// A stand-in for request handling: some work, a response size, sometimes an error.
fn handle_request(worker: u64, n: u64) {
    let response_bytes = 200 + (worker * 31 + n * 17) % 1800;
    STATS.per_request.inc(Stat::Requests);
    STATS
        .per_request
        .add(Stat::BytesSent, response_bytes as i64);
    if n.is_multiple_of(97) {
        STATS.per_request.inc(Stat::Errors);
    }
}

fn main() {
    let workers = 2 * std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let stop = AtomicBool::new(false);
    println!("{workers} workers, counter path: {}", percpu::mode());
    std::thread::scope(|s| {
        for worker in 0..workers {
            let stop = &stop;
            s.spawn(move || {
                STATS.connections.inc();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    handle_request(worker, n);
                    n += 1;
                }
                STATS.connections.dec();
            });
        }
        // The reporter: rates from take_snapshot(), every add counted in exactly one interval.
        let mut last = Instant::now();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(250));
            let delta = STATS.per_request.take_snapshot();
            let secs = last.elapsed().as_secs_f64();
            last = Instant::now();
            println!(
                "{:>12.0} req/s {:>8.1} MB/s {:>8.0} err/s   connections {}",
                delta[Stat::Requests] as f64 / secs,
                delta[Stat::BytesSent] as f64 / secs / 1e6,
                delta[Stat::Errors] as f64 / secs,
                STATS.connections.sum(),
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let totals = STATS.per_request.snapshot();
    println!(
        "totals: {totals:?}, connections open: {}",
        STATS.connections.sum()
    );
    assert_eq!(STATS.connections.sum(), 0);
}
