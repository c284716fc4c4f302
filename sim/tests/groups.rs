//! The groups storm in `cargo test`: group daemons under the seed's swarm faults with a random
//! workload of sessions (joins, leaves, disconnects, multi-group and private sends), and cuts
//! fired into state exchanges; group-level virtual synchrony checked on every history. (This
//! replaced the storm that `gcs/tests/groups.rs`, now `groups_scripted.rs`, ran on a fixed-delay
//! network.) Longer sweeps:
//! `cargo run -p sim --release -- groups --seeds 0..1000 --nodes 5`.

use sim::checkers::{fmt_violations, replay_command};
use sim::groups::{run_groups_seed, GroupTotals, GroupsReport};

fn assert_clean(seed: u64, nodes: usize) -> GroupsReport {
    let r = run_groups_seed(seed, nodes, None);
    assert!(
        r.violations.is_empty(),
        "seed {seed} ({nodes} nodes) violated: {}\nreplay: {}",
        fmt_violations(&r.violations),
        replay_command("groups", seed, nodes)
    );
    r
}

#[test]
fn two_hundred_group_storms_are_group_consistent() {
    let mut sum = GroupTotals::default();
    for seed in 0..200 {
        let t = assert_clean(seed, 5).totals;
        sum.delivered += t.delivered;
        sum.views += t.views;
        sum.abandoned += t.abandoned;
        sum.held += t.held;
    }
    // The storms reach the cases they are for: exchanges abandoned midway, messages held
    // during exchanges, and plenty of traffic and views.
    assert!(sum.abandoned > 50, "{sum:?}");
    assert!(sum.held > 10_000, "{sum:?}");
    assert!(sum.delivered > 1_000_000 && sum.views > 100_000, "{sum:?}");
}

#[test]
fn group_storms_on_other_cluster_sizes() {
    for (seed, nodes) in [(1, 2), (2, 3), (3, 3), (4, 4), (5, 7), (6, 9)] {
        assert_clean(seed, nodes);
    }
}

#[test]
fn a_group_storm_replays_identically() {
    let a = run_groups_seed(42, 5, None);
    let b = run_groups_seed(42, 5, None);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.history.sessions, b.history.sessions);
    assert_ne!(a.digest, run_groups_seed(43, 5, None).digest);
}
