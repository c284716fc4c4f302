//! `cargo run -p sim --release -- gcs --seeds 0..1000 --nodes 5`
//!
//! Runs seeds, prints one line per failing seed with the command that replays it, then a summary.
//! Exits non-zero if any property was violated. `--seed N --trace` replays one seed with a
//! readable event log (one line per event: virtual time, node, what happened).

use clap::{Parser, Subcommand};
use sim::run::{run_seed, Report};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Parser)]
#[command(about = "Deterministic simulator for the standby cores")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Group communication: N daemons under seeded faults, EVS checkers on every history.
    Gcs {
        /// A range of seeds, `A..B` (B excluded).
        #[arg(long, default_value = "0..100")]
        seeds: String,
        /// One seed (overrides --seeds).
        #[arg(long)]
        seed: Option<u64>,
        /// Number of daemons.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Print every event of the run (use with --seed).
        #[arg(long)]
        trace: bool,
        /// Worker threads (seeds are independent; each run is single-threaded).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once("..")?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

fn main() -> ExitCode {
    let Cli {
        cmd:
            Cmd::Gcs {
                seeds,
                seed,
                nodes,
                trace,
                threads,
            },
    } = Cli::parse();
    if !(2..=32).contains(&nodes) {
        eprintln!("--nodes must be between 2 and 32");
        return ExitCode::from(2);
    }
    let (lo, hi) = match seed {
        Some(s) => (s, s + 1),
        None => match parse_range(&seeds) {
            Some(r) => r,
            None => {
                eprintln!("--seeds must look like 0..1000");
                return ExitCode::from(2);
            }
        },
    };
    #[allow(clippy::disallowed_methods)] // wall time of the whole sweep, for the summary only
    let started = std::time::Instant::now();
    let next = AtomicU64::new(lo);
    let summary = Mutex::new((0u64, 0u64, 0u64, 0u64, 0u64, 0u64)); // seeds, failed, sim us, delivered, views, sent
    let print = Mutex::new(());
    let worker = || loop {
        let s = next.fetch_add(1, Ordering::Relaxed);
        if s >= hi {
            break;
        }
        let tracer: Option<sim::cluster::Tracer> = if trace {
            Some(Box::new(|line: &str| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }))
        } else {
            None
        };
        let r: Report = run_seed(s, nodes, tracer);
        {
            let mut t = summary.lock().expect("no panics hold this lock");
            t.0 += 1;
            t.2 += r.sim_time.as_micros();
            t.3 += r.totals.delivered;
            t.4 += r.totals.views;
            t.5 += r.totals.sent;
            if !r.violations.is_empty() {
                t.1 += 1;
            }
        }
        if !r.violations.is_empty() {
            let _g = print.lock().expect("print lock");
            println!(
                "FAIL seed {s}: {} violation(s); first: {}",
                r.violations.len(),
                r.violations[0]
            );
            for v in r.violations.iter().skip(1).take(4) {
                println!("    also: {v}");
            }
            println!(
                "    replay: cargo run -p sim --release -- gcs --seed {s} --nodes {nodes} --trace"
            );
        }
    };
    let threads = if trace { 1 } else { threads.max(1) };
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(worker);
        }
    });
    let (n, failed, sim_us, delivered, views, sent) =
        *summary.lock().expect("no panics hold this lock");
    println!(
        "gcs: {n} seeds, {nodes} nodes: {failed} failed; simulated {:.1} s; {sent} multicasts, {delivered} deliveries, {views} views installed; wall {:.1} s",
        sim_us as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
