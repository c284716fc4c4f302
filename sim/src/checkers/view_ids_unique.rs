//! `view_ids_unique`: one configuration id names one membership.
//!
//! Two installs of the same regular `ViewId`, by any processes, list identical members. A
//! transitional configuration is identified by its id together with the regular view it comes
//! from (see [`super::ViewKey`]): when two rings merge, each side installs a transitional view
//! with the same id but its own members, so for transitional views the members must be equal
//! when both the id and the previous regular view are equal.
//!
//! EVS paper, specification 1.1 (paraphrased): a configuration has a unique identifier and a
//! single membership set seen identically by all processes that install it.

use super::{Index, Sink, ViewKey, Violation};
use crate::history::History;
use gcs::ProcId;
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "view_ids_unique";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    // Key -> first installer and its members.
    let mut seen: BTreeMap<ViewKey, (ProcId, &[ProcId])> = BTreeMap::new();
    for px in &ix.procs {
        for v in &px.views {
            let members = v.view.members.as_slice();
            match seen.get(&v.key()) {
                None => {
                    seen.insert(v.key(), (px.id, members));
                }
                Some(&(q, theirs)) if theirs != members => sink.report(
                    vec![q, px.id],
                    None,
                    format!(
                        "{q} installed {:?} as {theirs:?} but {} as {members:?}",
                        v.id(),
                        px.id
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
    fn catches_two_memberships_for_one_regular_view() {
        let mut b = B::new();
        b.reg(1, 1, &[1, 2])
            .reg(2, 1, &[1, 2, 3])
            .reg(3, 1, &[1, 2, 3]);
        let v = has(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 2);
        names(&v, &[1, 2], None);
        names(&v, &[1, 3], None);
    }

    #[test]
    fn catches_two_memberships_for_one_transitional_view() {
        // 1 and 2 both come from ring 1 into ring 2, but disagree on who moves with them.
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]);
        b.trans(1, 2, &[1, 2]).reg(1, 2, &[1, 2]);
        b.trans(2, 2, &[1, 2, 3]).reg(2, 2, &[1, 2]);
        b.crash(3);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], None);
    }

    #[test]
    fn merging_sides_may_share_a_transitional_id() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).reg_all(2, &[3]);
        b.trans_all(4, &[1, 2])
            .trans_all(4, &[3])
            .reg_all(4, &[1, 2, 3]);
        clean(&b.build());
    }
}
