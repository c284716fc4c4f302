//! `transitional_semantics`: a transitional view holds exactly the processes that move together
//! from the same regular view into the next one.
//!
//! For p installing transitional view T between its previous regular view R and its next regular
//! view N: every q in N's members that installed N is in T if and only if q's previous regular
//! view before N is R (same id). In particular a q that had no regular view before N (a new
//! process) is in no transitional view leading to N.
//!
//! EVS paper, section 4 (paraphrased): the transitional configuration delivered before a new
//! regular configuration consists of those members of the new configuration that come to it
//! directly from the same regular configuration as the receiving process.

use super::{Index, Sink, Violation};
use crate::history::History;
use gcs::{ProcId, ViewId, ViewKind};
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "transitional_semantics";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    // (process, regular view it installed) -> its previous regular view.
    let mut came_from: BTreeMap<(ProcId, ViewId), Option<ViewId>> = BTreeMap::new();
    for px in &ix.procs {
        for v in &px.views {
            if v.kind() == ViewKind::Regular {
                came_from.insert((px.id, v.id()), v.prev_regular);
            }
        }
    }
    for px in &ix.procs {
        let p = px.id;
        for t in &px.views {
            if t.kind() != ViewKind::Transitional {
                continue;
            }
            let Some(n) = t.next.map(|j| &px.views[j]) else {
                continue;
            };
            let Some(r) = t.prev_regular else {
                continue; // views_well_formed reports it
            };
            if n.kind() != ViewKind::Regular || n.id().ring != t.id().ring {
                continue; // views_well_formed reports it
            }
            for &q in &n.view.members {
                let Some(&from) = came_from.get(&(q, n.id())) else {
                    continue; // q did not install N
                };
                let same = from == Some(r);
                if same == t.has(q) {
                    continue;
                }
                let detail = if same {
                    format!(
                        "{q} came from {r:?} into {:?} like {p}, but is missing from {p}'s transitional view {:?}",
                        n.id(),
                        t.view.members
                    )
                } else {
                    format!(
                        "{q} is in {p}'s transitional view {:?} into {:?}, but came from {from:?}, not {r:?}",
                        t.view.members,
                        n.id()
                    )
                };
                sink.report(vec![p, q], None, detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    #[test]
    fn catches_a_companion_left_out() {
        // 1 and 2 both go from ring 1 to ring 2, but 1's transitional view omits 2.
        let mut b = B::new();
        b.reg_all(1, &[1, 2]);
        b.trans(1, 2, &[1]).trans(2, 2, &[1, 2]);
        b.reg_all(2, &[1, 2]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], None);
    }

    #[test]
    fn catches_a_newcomer_in_the_transitional_view() {
        // 3 has no previous regular view, yet 1's transitional view into ring 2 lists it.
        let mut b = B::new();
        b.reg_all(1, &[1]);
        b.trans(1, 2, &[1, 3]).reg(1, 2, &[1, 3]);
        b.reg(3, 2, &[1, 3]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 3], None);
    }

    #[test]
    fn catches_a_member_from_another_ring() {
        // 1 (from ring 1) and 3 (from ring 2) merge; 1's transitional view lists 3.
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).reg(3, 2, &[3]);
        b.trans(1, 4, &[1, 2]).trans(2, 4, &[1, 2]);
        b.trans(3, 4, &[3]);
        b.reg_all(4, &[1, 2, 3]);
        clean(&b.build());
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).reg(3, 2, &[3]);
        b.trans(1, 4, &[1, 2, 3]).trans(2, 4, &[1, 2]);
        b.trans(3, 4, &[3]);
        b.reg_all(4, &[1, 2, 3]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 3], None);
    }
}
