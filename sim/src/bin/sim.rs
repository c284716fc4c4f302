//! `cargo run -p sim --release -- gcs --seeds 0..1000 --nodes 5`
//! `cargo run -p sim --release -- replica --seeds 0..1000 --nodes 5`
//! `cargo run -p sim --release -- groups --seeds 0..300 --nodes 5`
//!
//! Runs seeds, prints one line per failing seed with the command that replays it, then a summary.
//! Exits non-zero if any property was violated. `--seed N --trace` replays one seed with a
//! readable event log (one line per event: virtual time, node, what happened). `--digests`
//! prints every seed's run digest and verdict, to compare two builds seed by seed.

use clap::{Args, Parser, Subcommand};
use sim::checkers::{replay_command, Violation};
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
    Gcs(Sweep),
    /// Replication: N storage servers (gcs + replica + in-memory store) and retrying clients
    /// under seeded faults and swaps, replica checkers on every history.
    Replica(Sweep),
    /// Named groups: N group daemons (gcs `Daemon`) and a random workload of client sessions
    /// under seeded faults, group-level virtual synchrony checked on every history.
    Groups(Sweep),
}

#[derive(Args)]
struct Sweep {
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long, default_value = "0..100")]
    seeds: String,
    /// One seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of daemons (servers).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Print every event of the run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Worker threads (seeds are independent; each run is single-threaded).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print one line per seed, `digest SEED HEX ok|FAIL` (in completion order: sort to
    /// compare two sweeps).
    #[arg(long)]
    digests: bool,
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once("..")?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

/// What one seed reports to the sweep: its violations and counters to sum.
struct SeedResult {
    violations: Vec<Violation>,
    sim_us: u64,
    counters: Vec<u64>,
    digest: u64,
}

type Tracer = Box<dyn FnMut(&str)>;

fn main() -> ExitCode {
    let (name, sweep) = match Cli::parse().cmd {
        Cmd::Gcs(s) => ("gcs", s),
        Cmd::Replica(s) => ("replica", s),
        Cmd::Groups(s) => ("groups", s),
    };
    if !(2..=32).contains(&sweep.nodes) {
        eprintln!("--nodes must be between 2 and 32");
        return ExitCode::from(2);
    }
    let nodes = sweep.nodes;
    let run = move |seed: u64, tracer: Option<Tracer>| -> SeedResult {
        if name == "gcs" {
            let r = sim::run::run_seed(seed, nodes, tracer);
            SeedResult {
                violations: r.violations,
                sim_us: r.sim_time.as_micros(),
                counters: vec![r.totals.sent, r.totals.delivered, r.totals.views],
                digest: r.digest,
            }
        } else if name == "groups" {
            let r = sim::groups::run_groups_seed(seed, nodes, tracer);
            let t = &r.totals;
            SeedResult {
                violations: r.violations,
                sim_us: r.history.end.as_micros(),
                counters: vec![
                    t.sessions,
                    t.joins_leaves,
                    t.sent,
                    t.delivered,
                    t.views,
                    t.exchanges,
                    t.abandoned,
                    t.held,
                ],
                digest: r.digest,
            }
        } else {
            let r = sim::replica::run_replica_seed(seed, nodes, tracer);
            let t = &r.totals;
            SeedResult {
                violations: r.violations,
                sim_us: r.history.end.as_micros(),
                counters: vec![
                    t.acked,
                    t.attempts,
                    t.reads,
                    t.applied,
                    t.elections,
                    t.swaps,
                    t.lost,
                    t.checkpoints,
                    t.fills_restarted,
                    t.store_failures,
                    t.voter_changes,
                    t.voter_changes_done,
                    t.voter_changes_refused,
                    t.membership_changes,
                    t.membership_changes_done,
                    t.membership_changes_refused,
                    t.removed_exits,
                    t.recoveries_fast,
                    t.client_tables,
                ],
                digest: r.digest,
            }
        }
    };
    let labels: &[&str] = if name == "gcs" {
        &["multicasts", "deliveries", "views installed"]
    } else if name == "groups" {
        &[
            "sessions",
            "joins and leaves",
            "multicasts",
            "deliveries to sessions",
            "group views",
            "state exchanges",
            "exchanges abandoned",
            "messages held",
        ]
    } else {
        &[
            "commits acknowledged",
            "client attempts",
            "reads",
            "transactions applied",
            "elections",
            "swaps asked",
            "transactions lost (reported)",
            "checkpoints",
            "object fills started over",
            "store failures (left the ring)",
            "voter changes asked",
            "voter changes carried out",
            "voter changes refused",
            "replicas added or removed (asked)",
            "carried out",
            "refused",
            "removed servers stopped",
            "object recoveries (servers running at the end)",
            "client tables written (servers running at the end)",
        ]
    };
    sweep_seeds(name, &sweep, labels, run)
}

fn sweep_seeds(
    name: &str,
    sweep: &Sweep,
    labels: &[&str],
    run: impl Fn(u64, Option<Tracer>) -> SeedResult + Sync,
) -> ExitCode {
    let (lo, hi) = match sweep.seed {
        Some(s) => (s, s + 1),
        None => match parse_range(&sweep.seeds) {
            Some(r) => r,
            None => {
                eprintln!("--seeds must look like 0..1000");
                return ExitCode::from(2);
            }
        },
    };
    let nodes = sweep.nodes;
    let trace = sweep.trace;
    if trace {
        // The cores' own log lines (recovery steps, truncations, elections), interleaved with
        // the event lines on stdout; `RUST_LOG` narrows or widens them (default: debug).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .without_time()
            .with_target(false)
            .with_ansi(false)
            .try_init();
    }
    #[allow(clippy::disallowed_methods)] // wall time of the whole sweep, for the summary only
    let started = std::time::Instant::now();
    let next = AtomicU64::new(lo);
    // seeds, failed, simulated us, counters
    let summary = Mutex::new((0u64, 0u64, 0u64, vec![0u64; labels.len()]));
    let print = Mutex::new(());
    let worker = || loop {
        let s = next.fetch_add(1, Ordering::Relaxed);
        if s >= hi {
            break;
        }
        let tracer: Option<Tracer> = if trace {
            Some(Box::new(|line: &str| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }))
        } else {
            None
        };
        let r = run(s, tracer);
        {
            let mut t = summary.lock().expect("no panics hold this lock");
            t.0 += 1;
            t.2 += r.sim_us;
            for (a, b) in t.3.iter_mut().zip(&r.counters) {
                *a += b;
            }
            if !r.violations.is_empty() {
                t.1 += 1;
            }
        }
        if sweep.digests {
            let _g = print.lock().expect("print lock");
            let ok = if r.violations.is_empty() {
                "ok"
            } else {
                "FAIL"
            };
            println!("digest {s} {:016x} {ok}", r.digest);
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
            println!("    replay: {}", replay_command(name, s, nodes));
        }
    };
    let threads = if trace { 1 } else { sweep.threads.max(1) };
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(worker);
        }
    });
    let (n, failed, sim_us, counters) = summary.lock().expect("no panics hold this lock").clone();
    let totals: Vec<String> = labels
        .iter()
        .zip(&counters)
        .map(|(l, c)| format!("{c} {l}"))
        .collect();
    println!(
        "{name}: {n} seeds, {nodes} nodes: {failed} failed; simulated {:.1} s; {}; wall {:.1} s",
        sim_us as f64 / 1e6,
        totals.join(", "),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
