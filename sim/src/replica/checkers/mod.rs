//! Checkers for the replication service, run on every simulated [`RHistory`].
//!
//! | property              | what must hold                                                       |
//! |-----------------------|----------------------------------------------------------------------|
//! | `single_primary`      | at most one server is primary per epoch, only in a primary component, never a remote server |
//! | `disjoint_primaries`  | two primaries acting at the same time were elected by components that share a server (voters change in the mix) |
//! | `acks_from_primary`   | every acknowledged commit came from a server that was primary of its epoch in a primary component |
//! | `epochs_grow`         | a server's promise never goes down; its own primary epochs strictly grow |
//! | `prefix_agreement`    | what each server applied (less what it reported lost) is in the final primary lineage, with the same content (a server removed from the cluster is not judged) |
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

mod acked_durable;
mod acks_from_primary;
mod client_errors;
mod convergence;
mod disjoint_primaries;
mod epochs_grow;
mod idempotent_once;
mod prefix_agreement;
mod reads_monotone;
mod single_primary;
pub use acked_durable::acked_durable;
pub use acks_from_primary::acks_from_primary;
pub use client_errors::client_errors;
pub use convergence::convergence;
pub use disjoint_primaries::disjoint_primaries;
pub use epochs_grow::epochs_grow;
pub use idempotent_once::idempotent_once;
pub use prefix_agreement::prefix_agreement;
pub use reads_monotone::reads_monotone;
pub use single_primary::single_primary;

/// A checker's entry point.
pub type Checker = fn(&RHistory, &mut Vec<Violation>);

/// Every replica property, in table order.
pub const CHECKERS: [(&str, Checker); 10] = [
    ("single_primary", single_primary),
    ("disjoint_primaries", disjoint_primaries),
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

/// An async primary that lost its disk after acknowledging took its unreplicated tail with
/// it: nobody is left to report that loss (it still counts against the bound).
fn wiped_after(h: &RHistory, server: ServerId, at: Time) -> bool {
    h.events
        .iter()
        .any(|w| matches!(w, REvent::Wiped { at: wat, server: ws } if *ws == server && *wat > at))
}

#[cfg(test)]
#[path = "../checkers_test.rs"]
mod checkers_test;
