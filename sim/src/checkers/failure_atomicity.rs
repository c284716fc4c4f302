//! `failure_atomicity`: processes that go through the same two consecutive views delivered the
//! same messages in the first of them.
//!
//! If p and q both install V, and both install W as their very next view after V, then they
//! delivered the same set of messages in V. Views are compared by [`super::ViewKey`], so the two
//! sides of a merge (same transitional id, different previous regular view) are not compared.
//!
//! EVS paper, specification 3 (failure atomicity, paraphrased): if two processes both proceed
//! from one configuration directly to the same next configuration, they delivered the same set
//! of messages in the first one.

use super::{fmt_msg, Index, Mix, Sink, ViewKey, Violation};
use crate::history::History;
use gcs::ProcId;
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "failure_atomicity";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    // (V, W) -> the first process seen going V -> W, with what it delivered in V (sorted).
    let mut groups: BTreeMap<(ViewKey, ViewKey), (ProcId, Vec<Mix>)> = BTreeMap::new();
    for px in &ix.procs {
        let q = px.id;
        for v in &px.views {
            let Some(w) = v.next.map(|j| &px.views[j]) else {
                continue;
            };
            let mut set: Vec<Mix> = px.dels[v.dels.clone()].iter().map(|d| d.m).collect();
            set.sort_unstable();
            set.dedup();
            let Some((p, theirs)) = groups.get(&(v.key(), w.key())) else {
                groups.insert((v.key(), w.key()), (q, set));
                continue;
            };
            // The smallest message in the symmetric difference, and who delivered it.
            let only_p = theirs.iter().find(|m| set.binary_search(m).is_err());
            let only_q = set.iter().find(|m| theirs.binary_search(m).is_err());
            let diff = match (only_p, only_q) {
                (Some(a), Some(b)) if b < a => Some((*b, q, *p)),
                (Some(a), _) => Some((*a, *p, q)),
                (None, Some(b)) => Some((*b, q, *p)),
                (None, None) => None,
            };
            if let Some((m, has, lacks)) = diff {
                let msg = ix.msgs[m as usize];
                sink.report(
                    vec![*p, q],
                    Some(msg),
                    format!(
                        "{p} and {q} both went from {:?} to {:?}, but {has} delivered {} in {:?} and {lacks} did not",
                        v.id(),
                        w.id(),
                        fmt_msg(msg),
                        v.id()
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
    fn catches_a_message_missing_at_one_process() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3])
            .send(3, 0, Reliable)
            .deliver_all(&[1, 3], (3, 0), Reliable);
        b.crash(3);
        b.trans_all(2, &[1, 2]).reg_all(2, &[1, 2]);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1, 2], Some((3, 0)));
        assert!(v[0].detail.contains("n1.0 delivered n3.0#0"));
    }

    #[test]
    fn catches_a_difference_in_the_transitional_view() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).send(1, 0, Reliable);
        b.trans_all(2, &[1, 2])
            .deliver(2, (1, 0), Reliable)
            .reg_all(2, &[1, 2]);
        b.deliver(1, (1, 0), Reliable);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], Some((1, 0)));
    }

    #[test]
    fn different_next_views_may_differ() {
        // 2 leaves with 1's message undelivered; 1 goes on alone: different next views.
        let mut b = B::new();
        b.reg_all(1, &[1, 2])
            .send(1, 0, Reliable)
            .deliver(1, (1, 0), Reliable);
        b.trans(1, 3, &[1]).reg(1, 3, &[1]);
        b.trans(2, 4, &[2]).reg(2, 4, &[2]);
        clean(&b.build());
    }
}
