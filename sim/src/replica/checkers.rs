//! Checkers for the replication service, run on every simulated [`RHistory`].
//!
//! | property              | what must hold                                                       |
//! |-----------------------|----------------------------------------------------------------------|
//! | `single_primary`      | at most one server is primary per epoch, only in a primary component, never a remote server |
//! | `acks_from_primary`   | every acknowledged commit came from a server that was primary of its epoch in a primary component |
//! | `epochs_grow`         | a server's promise never goes down; its own primary epochs strictly grow |
//! | `prefix_agreement`    | what each server applied (less what it reported lost) is in the final primary lineage, with the same content |
//! | `acked_durable`       | sync: every acknowledged commit is in the final lineage; async: at most the window per primary change is lost, and every loss is reported |
//! | `idempotent_once`     | each idempotency key is applied at most once, with the tid its acks named |
//! | `reads_monotone`      | reads at one server never go backwards (apart from reported losses) |
//! | `client_errors`       | clients only ever see conflicts as final errors (redirects and retries are absorbed) |
//! | `convergence`         | after healing: one primary, every server at its last tid with the same objects, and commits flowing |

use super::history::{REvent, RHistory};
use crate::checkers::{Violation, CAP};
use gcs::{ProcId, Time};
use replica::{CommitMode, Epoch, Role, ServerId};
use std::collections::{BTreeMap, BTreeSet};
use storage::Tid;

/// A checker's entry point.
pub type Checker = fn(&RHistory, &mut Vec<Violation>);

/// Every replica property, in table order.
pub const CHECKERS: [(&str, Checker); 9] = [
    ("single_primary", single_primary),
    ("acks_from_primary", acks_from_primary),
    ("epochs_grow", epochs_grow),
    ("prefix_agreement", prefix_agreement),
    ("acked_durable", acked_durable),
    ("idempotent_once", idempotent_once),
    ("reads_monotone", reads_monotone),
    ("client_errors", client_errors),
    ("convergence", convergence),
];

/// Runs every checker.
pub fn check_all(h: &RHistory) -> Vec<Violation> {
    let mut out = Vec::new();
    for (_, c) in CHECKERS {
        c(h, &mut out);
    }
    out
}

fn push(out: &mut Vec<Violation>, property: &'static str, servers: &[ServerId], detail: String) {
    let n = out.iter().filter(|v| v.property == property).count();
    if n < CAP {
        out.push(Violation {
            property,
            procs: servers.iter().map(|s| ProcId::new(*s, 0)).collect(),
            msg: None,
            detail,
        });
    }
}

/// `(server, epoch)` of every primary start, with its time and component flag.
fn primaries(h: &RHistory) -> Vec<(Time, ServerId, Epoch, bool)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            REvent::Role {
                at,
                server,
                role: Role::Primary,
                primary: Some((p, epoch)),
                in_primary_component,
                ..
            } if p == server => Some((*at, *server, *epoch, *in_primary_component)),
            _ => None,
        })
        .collect()
}

/// At most one primary per epoch; primaries only in primary components.
pub fn single_primary(h: &RHistory, out: &mut Vec<Violation>) {
    let mut by_epoch: BTreeMap<Epoch, BTreeSet<ServerId>> = BTreeMap::new();
    for (at, s, e, pc) in primaries(h) {
        by_epoch.entry(e).or_default().insert(s);
        if !h.eligible.contains(&s) {
            push(
                out,
                "single_primary",
                &[s],
                format!("s{s}, which may not become primary (remote group), became primary of {e} at {at:?}"),
            );
        }
        if !pc {
            push(
                out,
                "single_primary",
                &[s],
                format!("s{s} became primary of {e} at {at:?} outside a primary component"),
            );
        }
    }
    for (e, servers) in by_epoch {
        if servers.len() > 1 {
            let v: Vec<ServerId> = servers.into_iter().collect();
            push(
                out,
                "single_primary",
                &v,
                format!("{} primaries of {e}", v.len()),
            );
        }
    }
}

/// Every ack names an epoch its server was primary of (in a primary component) before.
pub fn acks_from_primary(h: &RHistory, out: &mut Vec<Violation>) {
    let p = primaries(h);
    for e in &h.events {
        if let REvent::Ack {
            at,
            server,
            client,
            request,
            epoch,
            ..
        } = e
        {
            let ok = p
                .iter()
                .any(|(t, s, ep, pc)| t <= at && s == server && ep == epoch && *pc);
            if !ok {
                push(
                    out,
                    "acks_from_primary",
                    &[*server],
                    format!(
                        "s{server} acknowledged c{client}r{request} at {at:?} for {epoch} without being its primary"
                    ),
                );
            }
        }
    }
}

/// Promises never decrease; a server's own primary epochs strictly increase.
pub fn epochs_grow(h: &RHistory, out: &mut Vec<Violation>) {
    let mut promised: BTreeMap<ServerId, Epoch> = BTreeMap::new();
    let mut led: BTreeMap<ServerId, Epoch> = BTreeMap::new();
    for e in &h.events {
        if let REvent::Wiped { server, .. } = e {
            // Its promises went with its disk (it does not vote until it promises again).
            promised.remove(server);
        }
        if let REvent::Role {
            at,
            server,
            role,
            primary,
            promised: p,
            ..
        } = e
        {
            let last = promised.entry(*server).or_default();
            if p < last {
                push(
                    out,
                    "epochs_grow",
                    &[*server],
                    format!("s{server}'s promise went from {last} down to {p} at {at:?}"),
                );
            }
            *last = (*last).max(*p);
            if let (Role::Primary, Some((s, ep))) = (role, primary) {
                if s == server {
                    let prev = led.insert(*server, *ep).unwrap_or_default();
                    if *ep <= prev {
                        push(
                            out,
                            "epochs_grow",
                            &[*server],
                            format!(
                                "s{server} primary of {ep} at {at:?} after being primary of {prev}"
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// The final primary's store: the lineage everything is judged against.
fn final_lineage(h: &RHistory) -> Option<(ServerId, &super::history::FinalStore)> {
    let mut p = h
        .finals
        .iter()
        .filter(|(_, f)| f.running && f.role == Some(Role::Primary));
    let one = p.next()?;
    if p.next().is_some() {
        return None;
    }
    Some((*one.0, one.1))
}

/// Each server's applied transactions, less those it reported lost, as of the end.
fn applied_by_server(h: &RHistory) -> BTreeMap<ServerId, BTreeMap<Tid, u64>> {
    let mut m: BTreeMap<ServerId, BTreeMap<Tid, u64>> = BTreeMap::new();
    for e in &h.events {
        match e {
            REvent::Applied {
                server,
                tid,
                digest,
                ..
            } => {
                m.entry(*server).or_default().insert(*tid, *digest);
            }
            REvent::Lost { server, tids, .. } => {
                let a = m.entry(*server).or_default();
                for t in tids {
                    a.remove(t);
                }
            }
            REvent::Wiped { server, .. } => {
                m.remove(server);
            }
            _ => {}
        }
    }
    m
}

/// What each server applied (and did not report lost) is in the final lineage.
pub fn prefix_agreement(h: &RHistory, out: &mut Vec<Violation>) {
    let Some((p, l)) = final_lineage(h) else {
        return; // convergence reports it
    };
    for (s, applied) in applied_by_server(h) {
        for (tid, d) in applied {
            if tid <= l.horizon || tid > l.last {
                if tid > l.last {
                    push(
                        out,
                        "prefix_agreement",
                        &[s, p],
                        format!(
                            "s{s} applied {tid} beyond the final primary s{p}'s last {}",
                            l.last
                        ),
                    );
                }
                continue;
            }
            match l.txns.get(&tid) {
                Some((ld, _)) if *ld == d => {}
                Some(_) => push(
                    out,
                    "prefix_agreement",
                    &[s, p],
                    format!("s{s} applied {tid} with other content than the lineage (s{p})"),
                ),
                None => push(
                    out,
                    "prefix_agreement",
                    &[s, p],
                    format!("s{s} applied {tid}, which the lineage (s{p}) does not hold, and never reported it lost"),
                ),
            }
        }
    }
}

/// Every tid any server reported moving to its lost archive.
fn reported_lost(h: &RHistory) -> BTreeSet<Tid> {
    h.events
        .iter()
        .filter_map(|e| match e {
            REvent::Lost { tids, .. } => Some(tids.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Acknowledged commits survive (sync), or their loss is bounded and reported (async).
pub fn acked_durable(h: &RHistory, out: &mut Vec<Violation>) {
    let Some((p, l)) = final_lineage(h) else {
        return;
    };
    let reported = reported_lost(h);
    // Distinct lost tids: a duplicate answer names the same transaction again.
    let mut lost: BTreeSet<Tid> = BTreeSet::new();
    for e in &h.events {
        if let REvent::Ack {
            at,
            server,
            client,
            request,
            tid,
            ..
        } = e
        {
            if *tid <= l.horizon {
                continue;
            }
            let held = l.txns.get(tid).and_then(|(_, k)| *k) == Some((*client, *request));
            if held {
                continue;
            }
            lost.insert(*tid);
            match h.mode {
                CommitMode::Sync => push(
                    out,
                    "acked_durable",
                    &[*server, p],
                    format!(
                        "c{client}r{request} acknowledged by s{server} at {at:?} as {tid} is not in the final lineage (s{p})"
                    ),
                ),
                CommitMode::Async { .. } => {
                    if !reported.contains(tid) && !wiped_after(h, *server, *at) {
                        push(
                            out,
                            "acked_durable",
                            &[*server, p],
                            format!("c{client}r{request} ({tid}) was lost without a report"),
                        );
                    }
                }
            }
        }
    }
    if let CommitMode::Async { window } = h.mode {
        // Only a change of primary can lose an async tail: the first start loses nothing.
        let changes = (primaries(h).len() as u64).saturating_sub(1);
        let lost = lost.len() as u64;
        if lost > window * changes {
            push(
                out,
                "acked_durable",
                &[],
                format!("{lost} acknowledged commits lost, above {window} per primary change ({changes})"),
            );
        }
    }
}

/// An async primary that lost its disk after acknowledging took its unreplicated tail with
/// it: nobody is left to report that loss (it still counts against the bound).
fn wiped_after(h: &RHistory, server: ServerId, at: Time) -> bool {
    h.events
        .iter()
        .any(|w| matches!(w, REvent::Wiped { at: wat, server: ws } if *ws == server && *wat > at))
}

/// Each idempotency key is applied at most once, at the tid its acks named.
pub fn idempotent_once(h: &RHistory, out: &mut Vec<Violation>) {
    let Some((p, l)) = final_lineage(h) else {
        return;
    };
    let mut seen: BTreeMap<(u64, u64), Tid> = BTreeMap::new();
    for (tid, (_, k)) in &l.txns {
        if let Some(k) = k {
            if let Some(first) = seen.insert(*k, *tid) {
                push(
                    out,
                    "idempotent_once",
                    &[p],
                    format!("c{}r{} applied twice: {first} and {tid}", k.0, k.1),
                );
            }
        }
    }
    // An async ack of a transaction later reported lost names a tid that is gone; the retry
    // that followed legitimately applied the request again (acked_durable bounds such losses).
    let reported = reported_lost(h);
    for e in &h.events {
        if let REvent::Ack {
            at,
            server,
            client,
            request,
            tid,
            ..
        } = e
        {
            if matches!(h.mode, CommitMode::Async { .. })
                && (reported.contains(tid) || wiped_after(h, *server, *at))
            {
                continue;
            }
            if let Some(t) = seen.get(&(*client, *request)) {
                if t != tid {
                    push(
                        out,
                        "idempotent_once",
                        &[p],
                        format!("c{client}r{request} acknowledged as {tid} but applied as {t}"),
                    );
                }
            }
        }
    }
}

/// Reads at one server never see an older last transaction than an earlier read there,
/// unless the server reported lost transactions in between.
pub fn reads_monotone(h: &RHistory, out: &mut Vec<Violation>) {
    let mut last: BTreeMap<ServerId, Tid> = BTreeMap::new();
    for e in &h.events {
        match e {
            REvent::Read { at, server, tid } => {
                let prev = last.entry(*server).or_default();
                if tid < prev {
                    push(
                        out,
                        "reads_monotone",
                        &[*server],
                        format!("read at s{server} at {at:?} saw {tid} after an earlier read saw {prev}"),
                    );
                }
                *prev = (*prev).max(*tid);
            }
            REvent::Lost { server, .. } | REvent::Wiped { server, .. } => {
                last.remove(server);
            }
            _ => {}
        }
    }
}

/// Clients see no final error but conflicts.
pub fn client_errors(h: &RHistory, out: &mut Vec<Violation>) {
    for e in &h.events {
        if let REvent::Failed {
            at,
            client,
            request,
            error,
        } = e
        {
            if !error.starts_with("conflict") {
                push(
                    out,
                    "client_errors",
                    &[],
                    format!("c{client}r{request} failed at {at:?}: {error}"),
                );
            }
        }
    }
}

/// After the calm phase: one primary, everyone caught up with equal objects, commits flowing.
pub fn convergence(h: &RHistory, out: &mut Vec<Violation>) {
    let running: Vec<(&ServerId, &super::history::FinalStore)> =
        h.finals.iter().filter(|(_, f)| f.running).collect();
    let prim: Vec<ServerId> = running
        .iter()
        .filter(|(_, f)| f.role == Some(Role::Primary))
        .map(|(s, _)| **s)
        .collect();
    if prim.len() != 1 {
        push(
            out,
            "convergence",
            &prim,
            format!(
                "{} primaries at the end (roles: {:?})",
                prim.len(),
                running
                    .iter()
                    .map(|(s, f)| (**s, f.role))
                    .collect::<Vec<_>>()
            ),
        );
        return;
    }
    let p = &h.finals[&prim[0]];
    for (s, f) in &running {
        if f.last != p.last || f.state_digest != p.state_digest {
            push(
                out,
                "convergence",
                &[**s, prim[0]],
                format!(
                    "s{s} ends at {} ({:?}) while the primary s{} is at {}{}",
                    f.last,
                    f.role,
                    prim[0],
                    p.last,
                    if f.last == p.last {
                        " with other objects"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    if h.finals.values().any(|f| !f.running) {
        push(
            out,
            "convergence",
            &[],
            "a server is not running at the end".into(),
        );
    }
    let acks_after_calm = h
        .events
        .iter()
        .any(|e| matches!(e, REvent::Ack { at, .. } if *at > h.calm_from));
    let any_client = h
        .events
        .iter()
        .any(|e| matches!(e, REvent::Ack { .. } | REvent::Failed { .. }));
    if any_client && !acks_after_calm && h.sends_until > h.calm_from {
        push(
            out,
            "convergence",
            &[],
            "no commit acknowledged after the network healed".into(),
        );
    }
}

#[cfg(test)]
#[path = "checkers_test.rs"]
mod checkers_test;
