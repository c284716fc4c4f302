//! One seed, start to finish: plan, run, check.

use crate::checkers::{check_all, Violation};
use crate::cluster::{Cluster, Totals, Tracer};
use crate::history::History;
use crate::options::Options;
use gcs::Time;

/// What one seed produced.
#[derive(Debug)]
pub struct Report {
    /// The options the seed drew.
    pub options: Options,
    /// Simulated time covered.
    pub sim_time: Time,
    /// Counts.
    pub totals: Totals,
    /// Every property violated, with the processes and message involved.
    pub violations: Vec<Violation>,
    /// A digest of the run's event stream: equal digests for equal runs.
    pub digest: u64,
    /// The recorded history.
    pub history: History,
}

/// Runs the swarm scenario of `seed` with `nodes` daemons and checks it.
pub fn run_seed(seed: u64, nodes: usize, trace: Option<Tracer>) -> Report {
    run_options(Options::swarm(seed, nodes), trace)
}

/// Runs a scenario with explicit options.
pub fn run_options(options: Options, trace: Option<Tracer>) -> Report {
    let mut c = Cluster::new(options.clone());
    if let Some(t) = trace {
        c.set_trace(t);
    }
    c.plan_swarm();
    checked(options, c)
}

/// Runs `c` to its end and checks the history.
fn checked(options: Options, c: Cluster) -> Report {
    let (history, totals, digest) = c.run();
    let violations = check_all(&history);
    Report {
        options,
        sim_time: history.end,
        totals,
        violations,
        digest,
        history,
    }
}

/// Runs a hand-written scenario: `script` adds actions to a booted cluster (see
/// [`Cluster::plan_manual`]); the history is checked like any other.
pub fn run_script(
    options: Options,
    calm_from: Time,
    end: Time,
    script: impl FnOnce(&mut Cluster),
) -> Report {
    let mut c = Cluster::new(options.clone());
    c.plan_manual(calm_from, end);
    script(&mut c);
    checked(options, c)
}
