//! `view_agreement`: the members of a view install it too, unless one of them fails or moves on
//! without the other.
//!
//! If p installs view V (regular or transitional) and q is a member of V, then q installs V
//! (the same [`super::ViewKey`]), or q crashed, or p crashed, or p later installs a view that does
//! not contain q.
//!
//! EVS paper, specification 1.4 (paraphrased): if a process installs a configuration containing
//! another process, then that other process installs it as well, unless one of the two fails or
//! the first one goes on to a configuration that excludes the second.

use super::{Index, Sink, ViewKey, Violation};
use crate::history::History;
use gcs::ProcId;
use std::collections::{BTreeMap, BTreeSet};

/// The property's name.
pub const PROPERTY: &str = "view_agreement";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    let installed: BTreeSet<(ProcId, ViewKey)> = ix
        .procs
        .iter()
        .flat_map(|px| px.views.iter().map(|v| (px.id, v.key())))
        .collect();
    for px in &ix.procs {
        let p = px.id;
        if px.crashed {
            continue;
        }
        // For each process q named in p's views: the index of p's last view without q.
        let mut last_without: BTreeMap<ProcId, usize> = BTreeMap::new();
        let named: BTreeSet<ProcId> = px
            .views
            .iter()
            .flat_map(|v| v.view.members.iter().copied())
            .collect();
        for (i, v) in px.views.iter().enumerate() {
            for &q in &named {
                if !v.has(q) {
                    last_without.insert(q, i);
                }
            }
        }
        for (i, v) in px.views.iter().enumerate() {
            for &q in &v.view.members {
                if q == p || ix.crashed(q) || installed.contains(&(q, v.key())) {
                    continue;
                }
                if last_without.get(&q).is_some_and(|&j| j > i) {
                    continue;
                }
                sink.report(
                    vec![p, q],
                    None,
                    format!(
                        "{p} installed {:?} {:?}; member {q} never installed it, neither crashed, and {p} never moved on without {q}",
                        v.id(),
                        v.view.members
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    #[test]
    fn catches_a_member_that_never_installs() {
        let mut b = B::new();
        b.reg_all(1, &[1]).reg_all(2, &[2]).reg(1, 3, &[1, 2]);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1, 2], None);
    }

    #[test]
    fn catches_a_member_that_skips_the_transitional_view() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2])
            .trans(1, 2, &[1, 2])
            .reg_all(2, &[1, 2]);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], None);
    }

    #[test]
    fn a_crash_or_a_later_exclusion_excuses_it() {
        // 2 crashes: excused.
        let mut b = B::new();
        b.reg_all(1, &[1])
            .reg_all(2, &[2])
            .reg(1, 3, &[1, 2])
            .crash(2);
        clean(&b.build());
        // 1 moves on to a view without 3: excused.
        let mut b = B::new();
        b.reg_all(1, &[1])
            .reg_all(2, &[3])
            .reg(1, 3, &[1, 3])
            .trans(1, 4, &[1])
            .reg(1, 4, &[1]);
        clean(&b.build());
        // 1 itself crashes: excused.
        let mut b = B::new();
        b.reg_all(1, &[1])
            .reg_all(2, &[3])
            .reg(1, 3, &[1, 3])
            .crash(1);
        clean(&b.build());
    }
}
