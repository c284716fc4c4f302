//! The simulator sweep that runs in `cargo test`: seeded storms of loss, duplication, reordering,
//! partitions, crashes and pauses, then a calm phase; every EVS checker on every history.
//! Longer sweeps: `cargo run -p sim --release -- gcs --seeds 0..10000 --nodes 5`.

use sim::checkers::{fmt_violations, replay_command};
use sim::history::Event;
use sim::run::run_seed;

fn assert_clean(seed: u64, nodes: usize) -> sim::run::Report {
    let r = run_seed(seed, nodes, None);
    assert!(
        r.violations.is_empty(),
        "seed {seed} ({nodes} nodes) violated: {}\nreplay: {}",
        fmt_violations(&r.violations),
        replay_command("gcs", seed, nodes)
    );
    r
}

#[test]
fn two_hundred_seeds_with_faults_five_nodes() {
    let mut faulty = 0;
    let mut delivered = 0;
    for seed in 0..200 {
        let r = assert_clean(seed, 5);
        let o = &r.options;
        if o.storm_net.loss > 0.0
            || o.crashes
            || o.pauses
            || o.partitions != sim::options::PartitionMode::None
        {
            faulty += 1;
        }
        delivered += r.totals.delivered;
    }
    // The sweep must actually exercise faults and deliver traffic, or it proves nothing.
    assert!(faulty > 150, "only {faulty} of 200 seeds had faults");
    assert!(delivered > 1_000_000, "only {delivered} deliveries");
}

#[test]
fn mixed_cluster_sizes_up_to_nine() {
    for (seed, nodes) in [(1, 2), (2, 3), (3, 4), (4, 7), (5, 9), (6, 9), (7, 9)] {
        assert_clean(seed, nodes);
    }
}

#[test]
fn a_seed_replays_byte_for_byte() {
    let a = run_seed(42, 5, None);
    let b = run_seed(42, 5, None);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.history.procs, b.history.procs);
    let c = run_seed(43, 5, None);
    assert_ne!(a.digest, c.digest, "different seeds should differ");
}

#[test]
fn trace_is_deterministic_and_readable() {
    use std::sync::{Arc, Mutex};
    let run = |seed| {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = lines.clone();
        run_seed(
            seed,
            3,
            Some(Box::new(move |s: &str| {
                l2.lock().unwrap().push(s.to_string())
            })),
        );
        let v = lines.lock().unwrap().clone();
        v
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert!(a.iter().any(|l| l.contains(" recv token ")));
    assert!(a.iter().any(|l| l.contains(" view R")));
}

#[test]
fn views_and_deliveries_happen_after_heal() {
    // Liveness is checked by the checkers; also make sure the final calm phase is not empty.
    let r = assert_clean(11, 5);
    let calm = r.history.calm_from.unwrap();
    let late_deliveries = r
        .history
        .procs
        .values()
        .flatten()
        .filter(|e| matches!(e, Event::Delivered { at, .. } if *at > calm))
        .count();
    assert!(late_deliveries > 1000, "{late_deliveries}");
}
