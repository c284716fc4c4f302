//! `liveness`: once the run calms down, the live processes end up together, having delivered
//! the same messages, including everything they sent in their final view.
//!
//! Checked only when `calm_from` is set. Let L be the processes alive at the end.
//! (a) Every p in L ends in a regular view, the same one F for all, and F's members are exactly
//! L. (b) Every p in L delivered the same set of messages in F. (c) Every message with service
//! other than `Unreliable` sent by some p in L after p installed its last view is delivered by
//! every member of L.
//!
//! EVS paper: the membership and delivery specifications only constrain what happens; this is
//! the matching progress guarantee (cf. specification 1.4 and the termination of the membership
//! algorithm): connected, non-failing processes eventually install a common configuration
//! containing exactly themselves and deliver the messages sent in it.

use super::{fmt_msg, Index, Mix, ProcIx, Sink, Violation};
use crate::history::History;
use gcs::{ProcId, Service, ViewKind};
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "liveness";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    if ix.h.calm_from.is_none() {
        return;
    }
    let mut sink = Sink::new(PROPERTY, out);
    let live: Vec<&ProcIx<'_>> = ix.procs.iter().filter(|px| !px.crashed).collect();
    let live_ids: Vec<ProcId> = live.iter().map(|px| px.id).collect();

    // (a) Everyone ends in one regular view made of exactly the live processes.
    let mut finals: BTreeMap<gcs::ViewId, Vec<ProcId>> = BTreeMap::new();
    for px in &live {
        match px.views.last() {
            Some(v) if v.kind() == ViewKind::Regular => {
                finals.entry(v.id()).or_default().push(px.id);
                if v.view.members != live_ids {
                    sink.report(
                        vec![px.id],
                        None,
                        format!(
                            "{} ends in {:?} {:?}, but the live processes are {live_ids:?}",
                            px.id,
                            v.id(),
                            v.view.members
                        ),
                    );
                }
            }
            Some(v) => sink.report(
                vec![px.id],
                None,
                format!("{} ends in transitional view {:?}", px.id, v.id()),
            ),
            None => sink.report(
                vec![px.id],
                None,
                format!("{} never installed a view", px.id),
            ),
        }
    }
    if finals.len() > 1 {
        let procs: Vec<ProcId> = finals.values().map(|ps| ps[0]).collect();
        sink.report(
            procs,
            None,
            format!("live processes end in different views: {finals:?}"),
        );
    }

    // (b) Same messages delivered in the final view (if it is common).
    if finals.len() == 1 && finals.values().all(|ps| ps.len() == live.len()) {
        let set = |px: &ProcIx<'_>| -> Vec<Mix> {
            let v = px.views.last().map_or(0..0, |v| v.dels.clone());
            let mut s: Vec<Mix> = px.dels[v].iter().map(|d| d.m).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let first = live[0];
        let reference = set(first);
        for px in &live[1..] {
            let mine = set(px);
            let missing = reference.iter().find(|m| mine.binary_search(m).is_err());
            let extra = mine.iter().find(|m| reference.binary_search(m).is_err());
            let diff = match (missing, extra) {
                (Some(m), _) => Some((*m, first.id, px.id)),
                (None, Some(m)) => Some((*m, px.id, first.id)),
                (None, None) => None,
            };
            if let Some((m, has, lacks)) = diff {
                let msg = ix.msgs[m as usize];
                sink.report(
                    vec![first.id, px.id],
                    Some(msg),
                    format!(
                        "in the final view, {has} delivered {} and {lacks} did not",
                        fmt_msg(msg)
                    ),
                );
            }
        }
    }

    // (c) Messages sent in the final view reach every live process.
    for px in &live {
        let Some(last) = px.views.last() else {
            continue;
        };
        for s in px.sends.iter().filter(|s| s.ev > last.ev) {
            if s.service == Service::Unreliable || s.msg.sender != px.id {
                continue;
            }
            for qx in &live {
                if !qx.delivered(s.m) {
                    sink.report(
                        vec![px.id, qx.id],
                        Some(s.msg),
                        format!(
                            "{} sent {} in its final view {:?}; live {} never delivered it",
                            px.id,
                            fmt_msg(s.msg),
                            last.id(),
                            qx.id
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    #[test]
    fn catches_a_partition_that_never_heals() {
        let mut b = B::new();
        b.reg_all(1, &[1]).reg_all(2, &[2]).calm();
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
        names(&v, &[2], None);
        names(&v, &[1, 2], None);
    }

    #[test]
    fn catches_a_crashed_member_still_in_the_final_view() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]).crash(3).calm();
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 2);
        names(&v, &[1], None);
        names(&v, &[2], None);
    }

    #[test]
    fn catches_a_final_transitional_view() {
        let mut b = B::new();
        b.reg_all(1, &[1]).trans(1, 2, &[1]).calm();
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
    }

    #[test]
    fn catches_different_deliveries_in_the_final_view() {
        // 1's reliable message, sent in the final view, is delivered by 1 only.
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).calm().bcast(1, 0, Reliable, &[1]);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 2);
        names(&v, &[1, 2], Some((1, 0))); // (b) and (c)
        assert!(v
            .iter()
            .any(|x| x.detail.contains("in the final view, n1.0 delivered")));
        assert!(v.iter().any(|x| x.detail.contains("never delivered it")));
    }

    #[test]
    fn catches_a_final_view_message_lost_before_the_view_ends() {
        // (c): 2 sent it in the final view and nobody delivered it (self_delivery fires too).
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).calm().send(2, 0, Agreed);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[2, 1], Some((2, 0)));
        names(&v, &[2, 2], Some((2, 0)));
    }

    #[test]
    fn unchecked_unless_calm_and_fine_when_healed() {
        let mut b = B::new();
        b.reg_all(1, &[1]).reg_all(2, &[2]);
        clean(&b.build());
        b.trans(1, 3, &[1])
            .trans(2, 3, &[2])
            .reg_all(3, &[1, 2])
            .calm();
        b.bcast(1, 0, Reliable, &[1, 2]).send(2, 0, Unreliable);
        clean(&b.build());
    }
}
