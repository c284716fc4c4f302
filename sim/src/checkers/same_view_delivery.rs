//! `same_view_delivery`: a message is delivered in the same configuration everywhere, and that
//! configuration contains its sender.
//!
//! All processes that deliver m have the same origin(·, m) (the regular view m was delivered in,
//! or, for a delivery in a transitional view, the regular view before it), and m's sender is a
//! member of that view.
//!
//! EVS paper, specification 2.3 (paraphrased): if two processes deliver a message, they deliver
//! it in the same regular configuration (or its transitional successor), and a message is
//! delivered only within a configuration of which its sender is a member.

use super::{fmt_msg, Index, Sink, Violation};
use crate::history::History;
use gcs::{ProcId, ViewId};

/// The property's name.
pub const PROPERTY: &str = "same_view_delivery";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    // Per message: the first process (in ProcId order) that delivered it, and its origin there.
    let mut first: Vec<Option<(ProcId, ViewId)>> = vec![None; ix.msgs.len()];
    for px in &ix.procs {
        let p = px.id;
        for (i, d) in px.dels.iter().enumerate() {
            if !px.is_first(i) {
                continue;
            }
            let Some(o) = d.view.and_then(|v| px.views[v].origin_ix) else {
                continue; // views_well_formed reports deliveries outside any regular view
            };
            let origin = &px.views[o];
            let what = || fmt_msg(d.msg);
            if !origin.has(d.msg.sender) {
                sink.report(
                    vec![p],
                    Some(d.msg),
                    format!(
                        "{p} delivered {} in {:?} {:?}, which does not contain its sender",
                        what(),
                        origin.id(),
                        origin.view.members
                    ),
                );
            }
            match first[d.m as usize] {
                None => first[d.m as usize] = Some((p, origin.id())),
                Some((q, theirs)) if theirs != origin.id() => sink.report(
                    vec![q, p],
                    Some(d.msg),
                    format!(
                        "{q} delivered {} in {theirs:?} but {p} in {:?}",
                        what(),
                        origin.id()
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    #[test]
    fn catches_delivery_in_two_views() {
        // 2 delivers 1's message in the next regular view rather than where 1 delivered it.
        let mut b = B::new();
        b.reg_all(1, &[1, 2])
            .send(1, 0, Reliable)
            .deliver(1, (1, 0), Reliable);
        b.trans_all(2, &[1, 2])
            .reg_all(2, &[1, 2])
            .deliver(2, (1, 0), Reliable);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], Some((1, 0)));
    }

    #[test]
    fn catches_delivery_in_a_view_without_the_sender() {
        let mut b = B::new();
        b.reg_all(1, &[1]).reg_all(2, &[2]).send(1, 0, Reliable);
        b.deliver(2, (1, 0), Reliable);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[2], Some((1, 0)));
    }

    #[test]
    fn regular_and_following_transitional_view_are_one_origin() {
        // 1 delivers in ring 1's regular view, 2 in the transitional view that follows it.
        let mut b = B::new();
        b.reg_all(1, &[1, 2])
            .send(1, 0, Reliable)
            .deliver(1, (1, 0), Reliable);
        b.trans(1, 2, &[1]).reg(1, 2, &[1]);
        b.trans(2, 3, &[2])
            .deliver(2, (1, 0), Reliable)
            .reg(2, 3, &[2]);
        clean(&b.build());
    }
}
