//! The replication service in the simulator: seed sweeps, determinism, and named scenarios
//! for each promise of issue 5 (failover, swap, partitions, remote groups, recovery paths).
//! Every run is judged by all replica checkers.

use gcs::Time;
use replica::{CommitMode, Role};
use sim::checkers::{fmt_violations, replay_command};
use sim::faults::Action;
use sim::replica::history::REvent;
use sim::replica::{
    run_replica_script, run_replica_seed, ReplicaCluster, ReplicaOptions, ReplicaReport,
};

fn secs(s: f64) -> Time {
    Time((s * 1e6) as u64)
}

fn clean(r: &ReplicaReport) {
    assert!(r.violations.is_empty(), "{}", fmt_violations(&r.violations));
}

fn sweep(seeds: std::ops::Range<u64>, servers: usize) {
    let mut failed = Vec::new();
    let mut acked = 0;
    for s in seeds.clone() {
        let r = run_replica_seed(s, servers, None);
        acked += r.totals.acked;
        if !r.violations.is_empty() {
            failed.push(format!(
                "seed {s}: {} (replay: {})",
                r.violations[0],
                replay_command("replica", s, servers)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(
        acked > 100 * (seeds.end - seeds.start),
        "the workload ran: {acked} acks"
    );
}

#[test]
fn seeds_with_three_servers_hold_every_property() {
    sweep(0..150, 3);
}

#[test]
fn seeds_with_five_servers_hold_every_property() {
    sweep(1000..1060, 5);
}

#[test]
fn a_seed_replays_identically() {
    let a = run_replica_seed(7, 3, None);
    let b = run_replica_seed(7, 3, None);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.history.events, b.history.events);
    let c = run_replica_seed(8, 3, None);
    assert_ne!(a.digest, c.digest, "different seeds should differ");
}

fn primary_at(r: &ReplicaReport, after: Time) -> Option<(Time, u32)> {
    r.history.events.iter().find_map(|e| match e {
        REvent::Role {
            at,
            server,
            role: Role::Primary,
            ..
        } if *at >= after => Some((*at, *server)),
        _ => None,
    })
}

fn acks_between(r: &ReplicaReport, from: Time, to: Time) -> Vec<Time> {
    r.history
        .events
        .iter()
        .filter_map(|e| match e {
            REvent::Ack { at, .. } if *at >= from && *at < to => Some(*at),
            _ => None,
        })
        .collect()
}

fn largest_gap(acks: &[Time]) -> u64 {
    acks.windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or(u64::MAX)
}

fn no_failed_requests(r: &ReplicaReport) {
    let failed: Vec<&REvent> = r
        .history
        .events
        .iter()
        .filter(|e| matches!(e, REvent::Failed { error, .. } if !error.starts_with("conflict")))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn primary_crash_fails_over_within_one_view_change() {
    let r = run_replica_script(ReplicaOptions::calm(1, 3), secs(4.0), secs(8.0), |c| {
        c.at(secs(2.0), Action::Crash(0));
        c.at(secs(4.0), Action::Restart(0));
    });
    clean(&r);
    no_failed_requests(&r);
    let (first_at, first) = primary_at(&r, Time::ZERO).expect("a primary at boot");
    assert_eq!(first, 0, "the lowest id wins the first election");
    assert!(first_at < secs(0.2));
    let (at, p) = primary_at(&r, secs(2.0)).expect("a new primary after the crash");
    assert_ne!(p, 0);
    // One view change: the new primary's first regular view after the crash elected it.
    let views_before = r
        .history
        .events
        .iter()
        .filter(|e| {
            matches!(e, REvent::Role { at: t, server, role: Role::Syncing, primary: None, .. }
                if *server == p && *t > secs(2.0) && *t < at)
        })
        .count();
    assert_eq!(views_before, 1, "elected in the first view after the crash");
    let resumed = acks_between(&r, secs(2.0), secs(8.0))[0];
    println!(
        "failover: new primary s{p} {:.1} ms after the crash, first commit acknowledged after {:.1} ms (virtual time)",
        (at.0 - secs(2.0).0) as f64 / 1e3,
        (resumed.0 - secs(2.0).0) as f64 / 1e3
    );
    assert!(at < secs(3.0), "failover took {at:?}");
}

#[test]
fn a_primary_whose_store_fails_leaves_and_comes_back_when_it_works() {
    // s0's disk fills at 2 s and is freed at 4 s; its supervisor restarts it every second.
    let r = run_replica_script(ReplicaOptions::calm(3, 3), secs(5.0), secs(9.0), |c| {
        c.at(secs(2.0), Action::StoreFails(0));
        c.at(secs(4.0), Action::StoreHeals(0));
    });
    clean(&r);
    assert!(r.totals.store_failures >= 1, "{:?}", r.totals);
    let (at, p) = primary_at(&r, secs(2.0)).expect("a new primary after the failure");
    assert_ne!(p, 0);
    assert!(at < secs(3.0), "failover took {at:?}");
    let resumed = acks_between(&r, secs(2.0), secs(9.0))[0];
    println!(
        "store failure: new primary s{p} {:.1} ms after the disk filled, first commit acknowledged after {:.1} ms (virtual time)",
        (at.0 - secs(2.0).0) as f64 / 1e3,
        (resumed.0 - secs(2.0).0) as f64 / 1e3
    );
    // Back and caught up once the store works: it ends with everyone's transactions (the
    // convergence checker) and applied commits after its restart.
    let applied_after = r
        .history
        .events
        .iter()
        .any(|e| matches!(e, REvent::Applied { at, server: 0, .. } if *at > secs(4.0)));
    assert!(applied_after, "s0 did not come back");
}

#[test]
fn planned_swap_has_no_failed_request_and_a_short_pause() {
    let r = run_replica_script(ReplicaOptions::calm(2, 3), secs(0.5), secs(6.0), |c| {
        c.at(secs(3.0), Action::Swap { via: 1, to: 2 });
    });
    clean(&r);
    no_failed_requests(&r);
    let (at, p) = primary_at(&r, secs(3.0)).expect("the swap target took over");
    assert_eq!(p, 2);
    let gap = largest_gap(&acks_between(&r, secs(2.9), secs(3.2)));
    println!(
        "swap: s2 primary {:.2} ms after the request; longest pause between acknowledged commits {:.2} ms (virtual time)",
        (at.0 - secs(3.0).0) as f64 / 1e3,
        gap as f64 / 1e3
    );
    assert!(gap < 20_000, "write pause {gap} us");
}

#[test]
fn partitioned_replica_serves_reads_then_rejoins_by_itself() {
    let isolate: Vec<Vec<bool>> = (0..3)
        .map(|a| (0..3).map(|b| (a == 2) == (b == 2)).collect())
        .collect();
    let r = run_replica_script(ReplicaOptions::calm(3, 3), secs(5.0), secs(9.0), |c| {
        c.at(secs(2.0), Action::SetLinks(isolate));
        c.at(secs(5.0), Action::SetLinks(vec![vec![true; 3]; 3]));
    });
    clean(&r);
    no_failed_requests(&r);
    let read_only = r.history.events.iter().any(|e| {
        matches!(e, REvent::Role { at, server: 2, role: Role::ReadOnly, .. } if *at > secs(2.0) && *at < secs(5.0))
    });
    assert!(read_only, "s2 went read-only while cut off");
    let reads_there = r
        .history
        .events
        .iter()
        .filter(|e| matches!(e, REvent::Read { at, server: 2, .. } if *at > secs(2.8) && *at < secs(5.0)))
        .count();
    assert!(reads_there > 0, "s2 kept serving reads while cut off");
    // The convergence checker (clean above) has s2 at the primary's last tid at the end.
    assert_eq!(r.history.finals[&2].last, r.history.finals[&0].last);
}

#[test]
fn remote_group_never_becomes_primary() {
    let mut o = ReplicaOptions::calm(4, 4);
    o.remote = 1;
    let r = run_replica_script(o, secs(5.0), secs(9.0), |c| {
        // Only s2 (failover) and s3 (remote) remain: no majority of the failover vote.
        c.at(secs(2.0), Action::Crash(0));
        c.at(secs(2.0), Action::Crash(1));
        c.at(secs(5.0), Action::Restart(0));
        c.at(secs(5.0), Action::Restart(1));
    });
    clean(&r);
    assert!(
        primary_at(&r, secs(2.1)).is_none_or(|(at, _)| at > secs(5.0)),
        "no primary while only a minority of failover servers is up"
    );
    assert!(acks_between(&r, secs(2.5), secs(5.0)).is_empty());
    let s3_read_only = r.history.events.iter().any(|e| {
        matches!(e, REvent::Role { server: 3, role: Role::ReadOnly, at, .. } if *at > secs(2.0))
    });
    assert!(s3_read_only);
}

fn lagging_run(seed: u64, tweak: impl FnOnce(&mut ReplicaOptions), wipe: bool) -> ReplicaReport {
    let mut o = ReplicaOptions::calm(seed, 3);
    tweak(&mut o);
    let r = run_replica_script(o, secs(4.0), secs(8.0), |c: &mut ReplicaCluster| {
        c.at(
            secs(1.0),
            if wipe {
                Action::Wipe(2)
            } else {
                Action::Crash(2)
            },
        );
        c.at(secs(3.0), Action::Restart(2));
    });
    clean(&r);
    no_failed_requests(&r);
    r
}

#[test]
fn lagging_replica_recovers_by_transactions() {
    let r = lagging_run(5, |_| {}, false);
    assert!(r.totals.recoveries_full >= 1, "{:?}", r.totals);
    assert_eq!(r.totals.recoveries_fast, 0);
}

#[test]
fn far_behind_replica_recovers_by_objects() {
    let r = lagging_run(6, |o| o.recovery.fast_after = 10, false);
    assert!(r.totals.recoveries_fast >= 1, "{:?}", r.totals);
}

#[test]
fn wiped_replica_recovers_from_a_checkpoint() {
    let r = lagging_run(
        7,
        |o| {
            o.recovery.checkpoint_after = 10;
        },
        true,
    );
    assert!(r.totals.checkpoints >= 1, "{:?}", r.totals);
}

#[test]
fn async_mode_holds_its_properties_under_failover() {
    let mut o = ReplicaOptions::calm(8, 3);
    o.mode = CommitMode::Async { window: 8 };
    let r = run_replica_script(o, secs(4.0), secs(8.0), |c| {
        c.at(secs(2.0), Action::Crash(0));
        c.at(secs(4.0), Action::Restart(0));
    });
    clean(&r);
    assert!(r.totals.acked > 100);
}

/// The checkpoint transfer runs through the shared core in the simulator as in the server:
/// a wiped server asks for one at its restart (s0 offers it, and s2 fetches it point to
/// point over a few milliseconds); s0 crashes in the middle of the fetch. The recipient must
/// abandon the transfer (the fetch fails, or the view loses its donor), ask again, get a whole
/// checkpoint, and every property must hold.
/// The transfer's window is measured by a first run without the crash (the same seed gives the
/// same run), so the crash lands inside it whatever the timing of the code.
#[test]
fn a_checkpoint_whose_donor_crashes_midway_is_asked_for_again() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let run = |crash_at: Option<Time>| {
        let mut o = ReplicaOptions::calm(7, 3);
        o.recovery.checkpoint_after = 10;
        let lines = Rc::new(RefCell::new(Vec::new()));
        let mut c = ReplicaCluster::new(o);
        let seen = lines.clone();
        c.set_trace(Box::new(move |l: &str| {
            if l.contains(" checkpoint ") {
                seen.borrow_mut().push(l.to_string());
            }
        }));
        c.plan_manual(secs(4.0), secs(8.0));
        c.at(secs(1.0), Action::Wipe(2));
        c.at(secs(3.0), Action::Restart(2));
        if let Some(t) = crash_at {
            c.at(t, Action::Crash(0));
            c.at(secs(3.5), Action::Restart(0));
        }
        let (history, totals, _) = c.run();
        let lines = lines.borrow().clone();
        (history, totals, lines)
    };
    // The first run: when s0 makes the checkpoint and when s2 installs it.
    let (_, _, calm) = run(None);
    let at = |what: &str| -> Time {
        let l = calm.iter().find(|l| l.contains(what)).expect(what);
        let s: f64 = l.split('s').next().unwrap().parse().unwrap();
        secs(s)
    };
    let (made_at, installed_at) = (at("s0 checkpoint Make {"), at("installed: Ok"));
    assert!(made_at < installed_at, "{calm:#?}");
    let (history, totals, lines) = run(Some(Time((made_at.0 + installed_at.0) / 2)));
    let violations = sim::replica::checkers::check_all(&history);
    assert!(violations.is_empty(), "{violations:?}\n{lines:#?}");
    let made = lines.iter().filter(|l| l.contains("Make {")).count();
    let abandoned = lines
        .iter()
        .filter(|l| l.contains("s2 checkpoint Abandon"))
        .count();
    let installed = lines.iter().filter(|l| l.contains("installed: Ok")).count();
    assert!(
        made >= 2 && abandoned >= 1 && installed == 1 && totals.checkpoints == 1,
        "made {made}, abandoned {abandoned}, installed {installed}: {lines:#?}"
    );
}

/// Seed 284, found when the simulator began honouring address books: s3 is paused while the
/// others add s4 (a spare that started outside their configuration files). Resumed, s3's book
/// lacks s4; when its driver refused the newcomer's datagrams, s3 never joined a view again and
/// so never learned of the addition. Its driver now accepts a sender it does not know unless
/// removed (learning its address), so s3 rings with s4, catches up and converges.
#[test]
fn a_server_that_missed_a_replica_add_rejoins() {
    // (Explicit, so that the scenario stays a joiner's whatever the swarm draws.)
    let mut o = ReplicaOptions::swarm(284, 5);
    o.joiner = true;
    let r = sim::replica::run_replica_options(o, None);
    clean(&r);
    assert!(r.options.joiner && r.options.address_books);
    assert!(
        r.totals.membership_changes_done >= 1,
        "the addition was carried out"
    );
}

/// Links for a partition of `n` servers into `groups` (a server in no group is alone).
fn split(n: usize, groups: &[&[usize]]) -> Vec<Vec<bool>> {
    let side = |s: usize| groups.iter().position(|g| g.contains(&s)).unwrap_or(n + s);
    (0..n)
        .map(|a| (0..n).map(|b| side(a) == side(b)).collect())
        .collect()
}

/// Five servers, s4 a spare without a vote, removed (`standby remove-replica`) through s1 at
/// 3 s while `cut` is cut off from the others; the network heals at 5 s.
fn removal_run(cut: &[usize]) -> ReplicaReport {
    let mut o = ReplicaOptions::calm(11, 5);
    o.spares = 1;
    run_replica_script(o, secs(5.0), secs(10.0), |c| {
        let others: Vec<usize> = (0..5).filter(|s| !cut.contains(s)).collect();
        c.at(secs(2.0), Action::SetLinks(split(5, &[cut, &others])));
        c.at(
            secs(3.0),
            Action::Membership {
                via: 1,
                server: 4,
                add: false,
            },
        );
        c.at(secs(5.0), Action::SetLinks(vec![vec![true; 5]; 5]));
    })
}

/// Seeds 2180, 3108 and 3832 of the swarm with removals on: s0 is cut off while the spare s4
/// is removed, so s0's address book still lists s4. Here s4 is cut off with s0 and never
/// hears of its removal either: it keeps running, and only s0 hears it (the others refuse
/// it, and do not send to it). s0 named s4 in its joins, the others failed s4 only a
/// consensus timeout later, s4 failed them likewise, and s0 kept forming a ring with s4
/// alone: it never rejoined (nor caught up, nor reported its async tail). The others' nodes
/// now fail a removed daemon as soon as anyone names it; s0 takes their fail set, rings with
/// them, applies the removal and refuses s4 too.
#[test]
fn a_server_cut_off_with_a_removed_replica_rejoins_the_others() {
    let r = removal_run(&[0, 4]);
    clean(&r);
    assert_eq!(r.totals.membership_changes_done, 1, "the removal was made");
    assert!(r.history.finals[&4].removed);
    // s4 never learned: it stays up, alone and outside the cluster.
    assert_eq!(r.totals.removed_exits, 0);
    assert!(r.history.finals[&4].running && r.history.finals[&4].outside);
    // s0 rejoined: the convergence checker (clean above) has it at the primary's last tid.
    assert!(r.history.finals[&0].running && !r.history.finals[&0].outside);
}

/// Seed 2180's own run: s0 alone is cut off while s4 is removed; s4 applies its removal. A
/// removed server that stays up is heard by s0, whose book still lists it: it now leaves the
/// ring for good instead, and its process exits (as `standby-server` does), so s0 rejoins.
#[test]
fn a_removed_replica_that_learns_of_its_removal_stops() {
    let r = removal_run(&[0]);
    clean(&r);
    assert_eq!(r.totals.membership_changes_done, 1, "the removal was made");
    assert_eq!(r.totals.removed_exits, 1, "s4 stopped once");
    let f = &r.history.finals[&4];
    assert!(!f.running && f.outside && f.removed, "{f:?}");
    let stopped = r.history.events.iter().any(
        |e| matches!(e, REvent::Stopped { at, server: 4 } if *at > secs(3.0) && *at < secs(5.0)),
    );
    assert!(stopped, "s4 stopped before the network healed");
}

/// Seed 4945 of the swarm, found by the first sweep with the fix above: the primary s1 applies
/// the removal of s3 while the others, recovering, do not yet; its node then ignored every
/// packet naming s3 as its sender, also s3's data that the others relay when asked to
/// retransmit, so s1 never filled the hole and the ring stalled with the token still going
/// round. A removed daemon's data is taken (it was ordered in a ring the members share); only
/// its control packets are ignored.
#[test]
fn a_server_that_applied_a_removal_still_takes_the_removed_members_relayed_data() {
    let r = run_replica_seed(4945, 5, None);
    assert!(r.options.remove_spare && r.options.address_books);
    clean(&r);
    assert_eq!(r.totals.membership_changes_done, 1, "the removal was made");
}
