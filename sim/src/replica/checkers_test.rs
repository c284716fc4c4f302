//! Each replica checker, shown to catch a hand-made bad history and to accept a good one.

use super::*;
use crate::replica::history::FinalStore;

// ---------------------------------------------------------------------------------------------
// Event helpers
// ---------------------------------------------------------------------------------------------

const S0: ServerId = 0;
const S1: ServerId = 1;
const S2: ServerId = 2;
const SERVERS: [ServerId; 3] = [S0, S1, S2];

fn t(micros: u64) -> Time {
    Time(micros)
}

fn role(
    at: u64,
    server: ServerId,
    role: Role,
    primary: Option<(ServerId, u64)>,
    promised: u64,
    in_primary_component: bool,
) -> REvent {
    REvent::Role {
        at: t(at),
        server,
        role,
        primary: primary.map(|(p, e)| (p, Epoch(e))),
        promised: Epoch(promised),
        in_primary_component,
    }
}

/// `server` becomes primary of `epoch` in a primary component.
fn becomes_primary(at: u64, server: ServerId, epoch: u64) -> REvent {
    role(
        at,
        server,
        Role::Primary,
        Some((server, epoch)),
        epoch,
        true,
    )
}

/// `server` follows `primary` of `epoch` as a backup in a primary component.
fn becomes_backup(at: u64, server: ServerId, primary: ServerId, epoch: u64) -> REvent {
    role(
        at,
        server,
        Role::Backup,
        Some((primary, epoch)),
        epoch,
        true,
    )
}

fn applied(at: u64, server: ServerId, tid: u64, digest: u64) -> REvent {
    REvent::Applied {
        at: t(at),
        server,
        tid: Tid(tid),
        digest,
    }
}

fn ack(at: u64, server: ServerId, client: u64, request: u64, tid: u64, epoch: u64) -> REvent {
    REvent::Ack {
        at: t(at),
        server,
        client,
        request,
        tid: Tid(tid),
        epoch: Epoch(epoch),
    }
}

fn read(at: u64, server: ServerId, tid: u64) -> REvent {
    REvent::Read {
        at: t(at),
        server,
        tid: Tid(tid),
    }
}

fn lost(at: u64, server: ServerId, tids: &[u64]) -> REvent {
    REvent::Lost {
        at: t(at),
        server,
        tids: tids.iter().map(|x| Tid(*x)).collect(),
    }
}

fn wiped(at: u64, server: ServerId) -> REvent {
    REvent::Wiped { at: t(at), server }
}

fn failed(at: u64, client: u64, request: u64, error: &str) -> REvent {
    REvent::Failed {
        at: t(at),
        client,
        request,
        error: error.into(),
    }
}

fn at_of(e: &REvent) -> Time {
    match e {
        REvent::Role { at, .. }
        | REvent::Applied { at, .. }
        | REvent::Lost { at, .. }
        | REvent::Ack { at, .. }
        | REvent::Read { at, .. }
        | REvent::Wiped { at, .. }
        | REvent::Elected { at, .. }
        | REvent::Stopped { at, .. }
        | REvent::Failed { at, .. } => *at,
    }
}

/// Adds `e` keeping the events in time order (after every event at the same time).
fn add(h: &mut RHistory, e: REvent) {
    let at = at_of(&e);
    let i = h.events.partition_point(|x| at_of(x) <= at);
    h.events.insert(i, e);
}

/// Adds `tid` (with its digest and idempotency key) to the final store of each of `servers`.
fn hold(h: &mut RHistory, servers: &[ServerId], tid: u64, digest: u64, key: Option<(u64, u64)>) {
    for s in servers {
        let f = h.finals.get_mut(s).expect("a final store");
        f.txns.insert(Tid(tid), (digest, key));
        f.last = f.last.max(Tid(tid));
    }
}

fn final_store(h: &mut RHistory, server: ServerId) -> &mut FinalStore {
    h.finals.get_mut(&server).expect("a final store")
}

/// Every loss report becomes a disk wipe of its server at the same time: nobody is left to
/// report the loss.
fn wiped_instead_of_lost(h: &mut RHistory) {
    for e in &mut h.events {
        if let REvent::Lost { at, server, .. } = e {
            *e = REvent::Wiped {
                at: *at,
                server: *server,
            };
        }
    }
}

/// The final primary (s0) recovered by objects: t1 is below its horizon and no longer held.
fn recovered_past_t1(h: &mut RHistory) {
    let p = final_store(h, S0);
    p.horizon = Tid(1);
    p.txns.remove(&Tid(1));
}

// ---------------------------------------------------------------------------------------------
// Good histories
// ---------------------------------------------------------------------------------------------

/// The good history every test starts from:
///
/// - t=5: s0, s1, s2 sync in a primary component, promising e1;
/// - t=10: s0 becomes primary of e1, s1 and s2 its backups;
/// - t=20: c1r1 is applied everywhere as t1 and acknowledged by s0; s1 then reads at t1;
/// - t=25: the network heals for good (`calm_from`); c1r2 fails on a conflict;
/// - t=30: c2r1 is applied everywhere as t2 and acknowledged by s0; s1 and s2 read at t2;
/// - the end: all three run, s0 primary, each holds t1 and t2 and the same objects.
fn good(mode: CommitMode) -> RHistory {
    let mut h = RHistory::new(mode);
    h.eligible = SERVERS.to_vec();
    h.calm_from = t(25);
    h.sends_until = t(40);
    h.end = t(60);
    for s in SERVERS {
        h.events
            .push(role(5, s, Role::Syncing, None, 1, /* pc */ true));
    }
    h.events.push(becomes_primary(10, S0, 1));
    h.events.push(becomes_backup(10, S1, S0, 1));
    h.events.push(becomes_backup(10, S2, S0, 1));
    for s in SERVERS {
        h.events.push(applied(20, s, 1, 101));
    }
    h.events.push(ack(21, S0, 1, 1, 1, 1));
    h.events.push(read(22, S1, 1));
    h.events.push(failed(
        26,
        1,
        2,
        "conflict on o7: expected serial t0, current serial t1",
    ));
    for s in SERVERS {
        h.events.push(applied(30, s, 2, 102));
    }
    h.events.push(ack(31, S0, 2, 1, 2, 1));
    h.events.push(read(32, S1, 2));
    h.events.push(read(33, S2, 2));

    for s in SERVERS {
        h.finals.insert(
            s,
            FinalStore {
                running: true,
                role: Some(if s == S0 { Role::Primary } else { Role::Backup }),
                state_digest: 0xfeed,
                ..FinalStore::default()
            },
        );
    }
    hold(&mut h, &SERVERS, 1, 101, Some((1, 1)));
    hold(&mut h, &SERVERS, 2, 102, Some((2, 1)));
    h
}

fn good_sync() -> RHistory {
    good(CommitMode::Sync)
}

/// [`good_sync`] with `events` added.
fn good_sync_with(events: impl IntoIterator<Item = REvent>) -> RHistory {
    let mut h = good_sync();
    for e in events {
        add(&mut h, e);
    }
    h
}

/// An async failover on top of [`good`]: s0 acknowledges `unreplicated` commits (c10r1,
/// c11r1, … as t3, t4, …) that only it applied, then is cut off; s1 becomes primary of e2 and
/// starts at t10 (its epoch marker), then applies c10r1's retry as t11 and acknowledges it.
/// s0 comes back, reports t3, t4, … lost, and catches up. At the end s1 is primary.
fn failover(window: u64, unreplicated: u64) -> RHistory {
    let mut h = good(CommitMode::Async { window });
    let lost_tids: Vec<u64> = (3..3 + unreplicated).collect();
    for (i, tid) in lost_tids.iter().enumerate() {
        h.events.push(applied(34, S0, *tid, 100 + tid));
        h.events.push(ack(35, S0, 10 + i as u64, 1, *tid, 1));
    }
    // The partition: s0 alone, s1 and s2 form the primary component and elect s1.
    h.events
        .push(role(40, S0, Role::ReadOnly, None, 1, /* pc */ false));
    h.events.push(role(40, S1, Role::Syncing, None, 2, true));
    h.events.push(role(40, S2, Role::Syncing, None, 2, true));
    h.events.push(becomes_primary(41, S1, 2));
    h.events.push(becomes_backup(41, S2, S1, 2));
    for s in [S1, S2] {
        h.events.push(applied(42, s, 10, 210)); // epoch marker
        h.events.push(applied(44, s, 11, 211)); // c10r1's retry
    }
    h.events.push(ack(45, S1, 10, 1, 11, 2));
    // s0 rejoins: it reports its unreplicated tail lost and catches up.
    h.events.push(lost(50, S0, &lost_tids));
    h.events
        .push(role(50, S0, Role::Syncing, Some((S1, 2)), 2, true));
    h.events.push(applied(51, S0, 10, 210));
    h.events.push(applied(51, S0, 11, 211));
    h.events.push(becomes_backup(52, S0, S1, 2));

    final_store(&mut h, S0).role = Some(Role::Backup);
    final_store(&mut h, S1).role = Some(Role::Primary);
    hold(&mut h, &SERVERS, 10, 210, None);
    hold(&mut h, &SERVERS, 11, 211, Some((10, 1)));
    for s in SERVERS {
        final_store(&mut h, s).state_digest = 0xbeef;
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

fn run(h: &RHistory, checker: Checker) -> Vec<Violation> {
    let mut out = Vec::new();
    checker(h, &mut out);
    out
}

fn details(v: &[Violation]) -> Vec<String> {
    v.iter().map(|v| v.to_string()).collect()
}

/// `checker` reports at least one violation, all under `property`.
fn assert_flags(h: &RHistory, checker: Checker, property: &str) -> Vec<Violation> {
    let out = run(h, checker);
    assert!(!out.is_empty(), "{property} reported nothing on {h:#?}");
    assert!(
        out.iter().all(|v| v.property == property),
        "expected only {property}: {:#?}",
        details(&out)
    );
    out
}

/// `checker` reports nothing.
fn assert_passes(h: &RHistory, checker: Checker) {
    let out = run(h, checker);
    assert!(out.is_empty(), "unexpected: {:#?}", details(&out));
}

/// No checker reports anything.
fn assert_all_pass(h: &RHistory) {
    let out = check_all(h);
    assert!(out.is_empty(), "unexpected: {:#?}", details(&out));
}

fn procs(v: &Violation) -> Vec<ServerId> {
    v.procs.iter().map(|p| p.node).collect()
}

// ---------------------------------------------------------------------------------------------
// Good histories pass
// ---------------------------------------------------------------------------------------------

#[test]
fn a_good_sync_history_passes_every_checker() {
    assert_all_pass(&good_sync());
}

#[test]
fn a_good_async_history_passes_every_checker() {
    assert_all_pass(&good(CommitMode::Async { window: 4 }));
}

#[test]
fn an_async_failover_that_reports_its_losses_passes_every_checker() {
    assert_all_pass(&failover(1, 1));
}

#[test]
fn every_checker_of_the_table_passes_the_good_history_on_its_own() {
    let h = good_sync();
    for (name, c) in CHECKERS {
        let out = run(&h, c);
        assert!(out.is_empty(), "{name}: {:#?}", details(&out));
    }
}

#[test]
fn every_checker_of_the_table_reports_under_its_own_name() {
    // One bad history per checker, in table order.
    let bad: [RHistory; 10] = [
        good_sync_with([becomes_primary(10, S1, 1)]),
        good_sync_with([elected(45, 3, 7, &[3]), elected(50, 4, 8, &[4])]),
        good_sync_with([ack(31, S1, 3, 1, 2, 1)]),
        good_sync_with([role(40, S1, Role::ReadOnly, None, 0, false)]),
        good_sync_with([applied(35, S2, 2, 999)]),
        good_sync_with([ack(35, S0, 3, 1, 3, 1)]),
        {
            let mut h = good_sync();
            hold(&mut h, &SERVERS, 3, 103, Some((1, 1)));
            h
        },
        good_sync_with([read(40, S1, 1)]),
        good_sync_with([failed(40, 3, 1, "server stopped: disk full")]),
        {
            let mut h = good_sync();
            final_store(&mut h, S2).running = false;
            h
        },
    ];
    for ((name, c), h) in CHECKERS.iter().zip(bad.iter()) {
        assert_flags(h, *c, name);
        assert!(
            check_all(h).iter().any(|v| v.property == *name),
            "check_all misses {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// single_primary
// ---------------------------------------------------------------------------------------------

#[test]
fn single_primary_flags_two_servers_primary_of_the_same_epoch() {
    let h = good_sync_with([becomes_primary(12, S1, 1)]);
    let out = assert_flags(&h, single_primary, "single_primary");
    assert!(out.iter().any(|v| procs(v) == vec![S0, S1]), "{out:#?}");
}

#[test]
fn single_primary_flags_a_primary_outside_a_primary_component() {
    let h = good_sync_with([role(40, S0, Role::Primary, Some((S0, 2)), 2, false)]);
    assert_flags(&h, single_primary, "single_primary");
}

#[test]
fn single_primary_flags_a_remote_server_becoming_primary() {
    let mut h = good_sync();
    h.eligible = vec![S0, S1];
    add(&mut h, becomes_primary(40, S2, 2));
    let out = assert_flags(&h, single_primary, "single_primary");
    assert!(out.iter().all(|v| procs(v) == vec![S2]), "{out:#?}");
}

#[test]
fn single_primary_accepts_successive_primaries_of_distinct_epochs() {
    assert_passes(&failover(1, 1), single_primary);
}

#[test]
fn single_primary_ignores_a_primary_role_naming_another_server() {
    // A server that (wrongly or not) reports role Primary while naming s0 as the primary is
    // not counted as a primary start of its own.
    let h = good_sync_with([role(12, S1, Role::Primary, Some((S0, 1)), 1, true)]);
    assert_passes(&h, single_primary);
}

// ---------------------------------------------------------------------------------------------
// disjoint_primaries
// ---------------------------------------------------------------------------------------------

fn elected(at: u64, server: ServerId, epoch: u64, component: &[ServerId]) -> REvent {
    elected_by(at, server, epoch, component, component)
}

/// Elected by `component`, of which only `weighted` vote.
fn elected_by(
    at: u64,
    server: ServerId,
    epoch: u64,
    component: &[ServerId],
    weighted: &[ServerId],
) -> REvent {
    REvent::Elected {
        at: t(at),
        server,
        epoch: Epoch(epoch),
        component: component.to_vec(),
        weighted: weighted.to_vec(),
    }
}

#[test]
fn disjoint_primaries_flags_two_disjoint_components_electing_at_once() {
    // Seven servers: {3, 4} elect under the old voters while {5, 6} elect under the new.
    let h = good_sync_with([elected(45, 3, 5, &[3, 4]), elected(50, 5, 6, &[5, 6])]);
    let out = assert_flags(&h, disjoint_primaries, "disjoint_primaries");
    assert!(out.iter().any(|v| procs(v) == vec![3, 5]), "{out:#?}");
}

#[test]
fn disjoint_primaries_flags_components_that_share_only_a_server_without_a_vote() {
    // s6 is a read replica (or a spare) in both views: it carries no vote, so {3, 4} and
    // {5} are disjoint majorities as far as the election goes.
    let h = good_sync_with([
        elected_by(45, 3, 5, &[3, 4, 6], &[3, 4]),
        elected_by(50, 5, 6, &[5, 6], &[5]),
    ]);
    let out = assert_flags(&h, disjoint_primaries, "disjoint_primaries");
    assert!(out.iter().any(|v| procs(v) == vec![3, 5]), "{out:#?}");
}

#[test]
fn disjoint_primaries_accepts_disjoint_components_one_after_the_other() {
    // The first primary stopped acting (a role change, or a crash) before the second began.
    let mut h = good_sync();
    add(&mut h, elected(41, 3, 5, &[3, 4]));
    add(&mut h, role(42, 3, Role::ReadOnly, None, 5, false));
    add(&mut h, elected(43, 5, 6, &[5, 6]));
    add(
        &mut h,
        REvent::Stopped {
            at: t(44),
            server: 5,
        },
    );
    add(&mut h, elected(45, 4, 7, &[3, 4]));
    assert_passes(&h, disjoint_primaries);
}

#[test]
fn disjoint_primaries_accepts_overlapping_primaries_that_share_a_server() {
    // The old primary has not yet seen the partition; the new component shares s4 with its.
    let h = good_sync_with([elected(45, 3, 5, &[3, 4, 5]), elected(50, 4, 6, &[4, 5])]);
    assert_passes(&h, disjoint_primaries);
}

// ---------------------------------------------------------------------------------------------
// acks_from_primary
// ---------------------------------------------------------------------------------------------

#[test]
fn acks_from_primary_flags_an_ack_from_a_server_never_primary_of_that_epoch() {
    let h = good_sync_with([ack(31, S1, 3, 1, 2, 1)]);
    let out = assert_flags(&h, acks_from_primary, "acks_from_primary");
    assert_eq!(procs(&out[0]), vec![S1]);
}

#[test]
fn acks_from_primary_flags_an_ack_naming_an_epoch_its_server_never_led() {
    let h = good_sync_with([ack(35, S0, 3, 1, 3, 2)]);
    assert_flags(&h, acks_from_primary, "acks_from_primary");
}

#[test]
fn acks_from_primary_flags_an_ack_before_its_server_became_primary() {
    let h = good_sync_with([ack(8, S0, 3, 1, 1, 1)]);
    assert_flags(&h, acks_from_primary, "acks_from_primary");
}

#[test]
fn acks_from_primary_flags_an_ack_from_a_primary_outside_a_primary_component() {
    let mut h = good_sync();
    for e in &mut h.events {
        if let REvent::Role {
            role: Role::Primary,
            in_primary_component,
            ..
        } = e
        {
            *in_primary_component = false;
        }
    }
    assert_flags(&h, acks_from_primary, "acks_from_primary");
}

#[test]
fn acks_from_primary_accepts_acks_from_the_primary_of_each_epoch() {
    assert_passes(&failover(1, 2), acks_from_primary);
}

// ---------------------------------------------------------------------------------------------
// epochs_grow
// ---------------------------------------------------------------------------------------------

#[test]
fn epochs_grow_flags_a_promise_going_down() {
    let h = good_sync_with([role(40, S1, Role::ReadOnly, None, 0, false)]);
    let out = assert_flags(&h, epochs_grow, "epochs_grow");
    assert_eq!(procs(&out[0]), vec![S1]);
}

#[test]
fn epochs_grow_accepts_a_lower_promise_after_a_disk_wipe() {
    let h = good_sync_with([wiped(40, S1), role(41, S1, Role::Syncing, None, 0, true)]);
    assert_passes(&h, epochs_grow);
}

#[test]
fn epochs_grow_flags_a_server_leading_an_older_epoch_again() {
    let h = good_sync_with([
        becomes_primary(40, S0, 3),
        role(50, S0, Role::Primary, Some((S0, 2)), 3, true),
    ]);
    let out = assert_flags(&h, epochs_grow, "epochs_grow");
    assert!(out.iter().all(|v| procs(v) == vec![S0]));
}

#[test]
fn epochs_grow_flags_a_server_leading_the_same_epoch_twice() {
    let h = good_sync_with([becomes_primary(40, S0, 1)]);
    assert_flags(&h, epochs_grow, "epochs_grow");
}

#[test]
fn epochs_grow_accepts_a_server_leading_successively_higher_epochs() {
    let h = good_sync_with([
        role(40, S0, Role::Syncing, None, 2, true),
        becomes_primary(41, S0, 2),
    ]);
    assert_passes(&h, epochs_grow);
}

// ---------------------------------------------------------------------------------------------
// prefix_agreement
// ---------------------------------------------------------------------------------------------

#[test]
fn prefix_agreement_flags_a_tid_applied_with_other_content_than_the_lineage() {
    let mut h = good_sync();
    for e in &mut h.events {
        if let REvent::Applied {
            server: S2,
            tid: Tid(2),
            digest,
            ..
        } = e
        {
            *digest = 999;
        }
    }
    let out = assert_flags(&h, prefix_agreement, "prefix_agreement");
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(procs(&out[0]), vec![S2, S0]);
}

#[test]
fn prefix_agreement_flags_a_tid_the_lineage_lacks_that_was_never_reported_lost() {
    // s0's unreplicated t3 is skipped by the new primary (which starts at t10).
    let mut h = failover(1, 1);
    h.events.retain(|e| !matches!(e, REvent::Lost { .. }));
    let out = assert_flags(&h, prefix_agreement, "prefix_agreement");
    assert!(out.iter().all(|v| procs(v) == vec![S0, S1]), "{out:#?}");
}

#[test]
fn prefix_agreement_accepts_a_tid_the_lineage_lacks_once_reported_lost() {
    assert_passes(&failover(1, 1), prefix_agreement);
}

#[test]
fn prefix_agreement_accepts_a_tid_the_lineage_lacks_once_its_server_was_wiped() {
    let mut h = failover(1, 1);
    wiped_instead_of_lost(&mut h);
    assert_passes(&h, prefix_agreement);
}

#[test]
fn prefix_agreement_does_not_judge_a_server_removed_from_the_cluster() {
    // s2 applied t2 with other content, then was removed while cut off: it never rejoins to
    // report the loss, and its store is no longer the cluster's.
    let mut h = good_sync();
    for e in &mut h.events {
        if let REvent::Applied {
            server: S2,
            tid: Tid(2),
            digest,
            ..
        } = e
        {
            *digest = 999;
        }
    }
    let f = final_store(&mut h, S2);
    f.outside = true;
    f.removed = true;
    assert_passes(&h, prefix_agreement);
    // Outside the book alone (a replica never added) is still judged.
    final_store(&mut h, S2).removed = false;
    assert_flags(&h, prefix_agreement, "prefix_agreement");
}

#[test]
fn prefix_agreement_flags_a_tid_applied_beyond_the_final_primarys_last() {
    let h = good_sync_with([applied(35, S2, 3, 103)]);
    assert_flags(&h, prefix_agreement, "prefix_agreement");
}

#[test]
fn prefix_agreement_skips_tids_at_or_below_the_lineage_horizon() {
    // The final primary recovered by objects: t1 is below its horizon and no longer held.
    let mut h = good_sync();
    recovered_past_t1(&mut h);
    assert_passes(&h, prefix_agreement);
}

// ---------------------------------------------------------------------------------------------
// acked_durable
// ---------------------------------------------------------------------------------------------

#[test]
fn acked_durable_sync_flags_an_acked_tid_missing_from_the_final_primary() {
    let h = good_sync_with([applied(35, S0, 3, 103), ack(35, S0, 3, 1, 3, 1)]);
    let out = assert_flags(&h, acked_durable, "acked_durable");
    assert_eq!(procs(&out[0]), vec![S0, S0]);
}

#[test]
fn acked_durable_sync_flags_an_acked_tid_holding_another_request() {
    let mut h = good_sync();
    final_store(&mut h, S0)
        .txns
        .insert(Tid(2), (102, Some((9, 9))));
    assert_flags(&h, acked_durable, "acked_durable");
}

#[test]
fn acked_durable_sync_flags_a_reported_loss_of_an_acked_tid() {
    // Sync acks must survive: reporting the loss does not excuse it.
    let mut h = failover(1, 1);
    h.mode = CommitMode::Sync;
    assert_flags(&h, acked_durable, "acked_durable");
}

#[test]
fn acked_durable_async_flags_a_lost_acked_tid_without_a_report() {
    let mut h = failover(1, 1);
    h.events.retain(|e| !matches!(e, REvent::Lost { .. }));
    let out = assert_flags(&h, acked_durable, "acked_durable");
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(procs(&out[0]), vec![S0, S1]);
}

#[test]
fn acked_durable_async_accepts_a_lost_acked_tid_with_a_report() {
    assert_passes(&failover(1, 1), acked_durable);
}

#[test]
fn acked_durable_async_accepts_a_lost_acked_tid_whose_server_was_wiped_after_the_ack() {
    let mut h = failover(1, 1);
    wiped_instead_of_lost(&mut h);
    assert_passes(&h, acked_durable);
}

#[test]
fn acked_durable_async_flags_a_wipe_before_the_ack_as_no_excuse() {
    let mut h = failover(1, 1);
    h.events.retain(|e| !matches!(e, REvent::Lost { .. }));
    add(&mut h, wiped(1, S0));
    assert_flags(&h, acked_durable, "acked_durable");
}

#[test]
fn acked_durable_async_accepts_losses_up_to_the_window_per_primary_change() {
    // One change of primary (s0 of e1, then s1 of e2), window 1: one loss is within bounds.
    assert_passes(&failover(1, 1), acked_durable);
}

#[test]
fn acked_durable_async_flags_losses_above_the_window_times_primary_changes() {
    // One change of primary, window 1: two reported losses are one too many.
    let h = failover(1, 2);
    let out = assert_flags(&h, acked_durable, "acked_durable");
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(
        out[0].detail.contains("2 acknowledged commits lost"),
        "{out:#?}"
    );
}

#[test]
fn acked_durable_ignores_acks_at_or_below_the_lineage_horizon() {
    let mut h = good_sync();
    recovered_past_t1(&mut h);
    assert_passes(&h, acked_durable);
}

// ---------------------------------------------------------------------------------------------
// idempotent_once
// ---------------------------------------------------------------------------------------------

#[test]
fn idempotent_once_flags_a_key_applied_at_two_tids() {
    let mut h = good_sync();
    hold(&mut h, &SERVERS, 3, 103, Some((1, 1)));
    let out = assert_flags(&h, idempotent_once, "idempotent_once");
    assert!(out[0].detail.contains("c1r1 applied twice"), "{out:#?}");
}

#[test]
fn idempotent_once_flags_an_ack_naming_another_tid_than_the_key_was_applied_at() {
    // A retry of c2r1 answered with t1, while c2r1 was applied as t2.
    let h = good_sync_with([ack(36, S0, 2, 1, 1, 1)]);
    let out = assert_flags(&h, idempotent_once, "idempotent_once");
    let expected = format!("c2r1 acknowledged as {} but applied as {}", Tid(1), Tid(2));
    assert_eq!(out[0].detail, expected);
}

#[test]
fn idempotent_once_async_accepts_a_reapplied_retry_of_an_ack_reported_lost() {
    // c10r1 was acknowledged as t3, lost (reported), and its retry applied as t11.
    assert_passes(&failover(1, 1), idempotent_once);
}

#[test]
fn idempotent_once_sync_flags_a_reapplied_retry_of_an_ack_reported_lost() {
    let mut h = failover(1, 1);
    h.mode = CommitMode::Sync;
    assert_flags(&h, idempotent_once, "idempotent_once");
}

#[test]
fn idempotent_once_accepts_transactions_without_a_key() {
    let mut h = good_sync();
    hold(&mut h, &SERVERS, 3, 103, None);
    hold(&mut h, &SERVERS, 4, 104, None);
    assert_passes(&h, idempotent_once);
}

// ---------------------------------------------------------------------------------------------
// reads_monotone
// ---------------------------------------------------------------------------------------------

#[test]
fn reads_monotone_flags_a_read_going_backwards_at_one_server() {
    let h = good_sync_with([read(40, S1, 1)]);
    let out = assert_flags(&h, reads_monotone, "reads_monotone");
    assert_eq!(procs(&out[0]), vec![S1]);
}

#[test]
fn reads_monotone_accepts_a_read_going_backwards_after_a_lost_report() {
    let h = good_sync_with([lost(38, S1, &[2]), read(40, S1, 1)]);
    assert_passes(&h, reads_monotone);
}

#[test]
fn reads_monotone_accepts_a_read_going_backwards_after_a_disk_wipe() {
    let h = good_sync_with([wiped(38, S1), read(40, S1, 0)]);
    assert_passes(&h, reads_monotone);
}

#[test]
fn reads_monotone_does_not_excuse_a_loss_reported_by_another_server() {
    let h = good_sync_with([lost(38, S2, &[2]), read(40, S1, 1)]);
    assert_flags(&h, reads_monotone, "reads_monotone");
}

#[test]
fn reads_monotone_accepts_reads_at_different_servers_seeing_different_tids() {
    let h = good_sync_with([read(40, S0, 1)]);
    assert_passes(&h, reads_monotone);
}

// ---------------------------------------------------------------------------------------------
// client_errors
// ---------------------------------------------------------------------------------------------

#[test]
fn client_errors_flags_a_final_error_other_than_a_conflict() {
    let h = good_sync_with([failed(40, 3, 1, "server stopped: disk full")]);
    assert_flags(&h, client_errors, "client_errors");
}

#[test]
fn client_errors_flags_a_retry_error_reaching_the_client() {
    let mut h = good_sync();
    add(
        &mut h,
        failed(
            40,
            3,
            1,
            "outcome unknown: retry with the same request number",
        ),
    );
    assert_flags(&h, client_errors, "client_errors");
}

#[test]
fn client_errors_accepts_conflicts() {
    let mut h = good_sync();
    add(
        &mut h,
        failed(
            40,
            3,
            1,
            "conflict on o9: expected serial t1, current serial t2",
        ),
    );
    assert_passes(&h, client_errors);
}

// ---------------------------------------------------------------------------------------------
// convergence
// ---------------------------------------------------------------------------------------------

#[test]
fn convergence_flags_no_primary_at_the_end() {
    let mut h = good_sync();
    final_store(&mut h, S0).role = Some(Role::Backup);
    let out = assert_flags(&h, convergence, "convergence");
    assert!(out[0].detail.starts_with("0 primaries"), "{out:#?}");
}

#[test]
fn convergence_flags_two_primaries_at_the_end() {
    let mut h = good_sync();
    final_store(&mut h, S1).role = Some(Role::Primary);
    let out = assert_flags(&h, convergence, "convergence");
    assert!(out[0].detail.starts_with("2 primaries"), "{out:#?}");
    assert_eq!(procs(&out[0]), vec![S0, S1]);
}

#[test]
fn convergence_does_not_count_a_stopped_primary() {
    let mut h = good_sync();
    final_store(&mut h, S0).running = false;
    let out = assert_flags(&h, convergence, "convergence");
    assert!(out[0].detail.starts_with("0 primaries"), "{out:#?}");
}

#[test]
fn convergence_flags_a_server_at_another_last_tid() {
    let mut h = good_sync();
    final_store(&mut h, S2).last = Tid(1);
    let out = assert_flags(&h, convergence, "convergence");
    assert_eq!(procs(&out[0]), vec![S2, S0]);
}

#[test]
fn convergence_flags_a_server_with_other_objects() {
    let mut h = good_sync();
    final_store(&mut h, S2).state_digest = 1;
    let out = assert_flags(&h, convergence, "convergence");
    assert!(out[0].detail.contains("with other objects"), "{out:#?}");
}

#[test]
fn convergence_flags_a_server_not_running_at_the_end() {
    let mut h = good_sync();
    final_store(&mut h, S2).running = false;
    let out = assert_flags(&h, convergence, "convergence");
    assert!(out
        .iter()
        .any(|v| v.detail == "a server is not running at the end"));
}

#[test]
fn convergence_flags_no_ack_after_the_network_healed() {
    let mut h = good_sync();
    h.calm_from = t(35);
    let out = assert_flags(&h, convergence, "convergence");
    assert!(out[0].detail.contains("no commit acknowledged"), "{out:#?}");
}

#[test]
fn convergence_accepts_no_ack_after_calm_when_the_workload_stopped_before() {
    let mut h = good_sync();
    h.calm_from = t(35);
    h.sends_until = t(35);
    assert_passes(&h, convergence);
}

#[test]
fn convergence_accepts_no_ack_after_calm_without_any_client_activity() {
    let mut h = good_sync();
    h.calm_from = t(35);
    h.events
        .retain(|e| !matches!(e, REvent::Ack { .. } | REvent::Failed { .. }));
    assert_passes(&h, convergence);
}

// ---------------------------------------------------------------------------------------------
// Suspected checker gaps (ignored: they fail against the checkers as they are)
// ---------------------------------------------------------------------------------------------

/// acked_durable excuses an async ack whose primary was wiped after it (nobody is left to
/// report the unreplicated tail), but idempotent_once only excuses acks of tids *reported*
/// lost: the client's legitimate retry, re-applied by the next primary, is flagged.
#[test]
fn idempotent_once_async_accepts_a_reapplied_retry_of_an_ack_lost_to_a_disk_wipe() {
    let mut h = failover(1, 1);
    wiped_instead_of_lost(&mut h);
    assert_passes(&h, acked_durable);
    assert_passes(&h, idempotent_once);
}

/// acked_durable counts lost *acks*, not lost transactions: a second (duplicate) answer to a
/// retry of the same request, naming the same tid, counts that one loss twice against the
/// window bound.
#[test]
fn acked_durable_async_counts_a_lost_transaction_once_however_often_it_was_acked() {
    // Window 1, one change of primary: one lost transaction is within bounds...
    let mut h = failover(1, 1);
    assert_passes(&h, acked_durable);
    // ...and still are when the first was answered twice (a retry's duplicate answer).
    add(&mut h, ack(36, S0, 10, 1, 3, 1));
    assert_passes(&h, acked_durable);
}
