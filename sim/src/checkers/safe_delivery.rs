//! `safe_delivery`: a safe message delivered by one member of a view is delivered by all.
//!
//! If p delivers m with service `Safe` in view V (regular or transitional), then every member q
//! of V delivers m, unless q crashed. A q that did not deliver m and did not crash is reported
//! only when it certainly will not deliver it any more: if it installed a view with an id above
//! V's, or if the run calmed down (`calm_from` is set) so it had every chance to.
//!
//! A member of V that never installed V is not bound by it: it gave up on V during V's recovery
//! (its token was lost before it could see recovery complete), so for V it is a failed member;
//! `view_agreement` then requires the others to install a later view without it. This is the
//! one reading of "unless it fails" that a partitionable system can honour: the member that gave
//! up goes on from its previous regular view with its own transitional view, which does not
//! contain the process that delivered m.
//!
//! EVS paper, specifications 7.1 and 7.2 (paraphrased, "safe delivery"): when a process delivers
//! a safe message in a regular configuration, every member of that configuration has it and will
//! deliver it unless it fails; in a transitional configuration the same holds for its members.

use super::{fmt_msg, Index, Sink, Violation};
use crate::history::History;
use gcs::{ProcId, Service};
use std::collections::BTreeSet;

/// The property's name.
pub const PROPERTY: &str = "safe_delivery";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    let calm = ix.h.calm_from.is_some();
    let mut reported: BTreeSet<(ProcId, u32)> = BTreeSet::new();
    for px in &ix.procs {
        for (i, d) in px.dels.iter().enumerate() {
            if d.service != Service::Safe || !px.is_first(i) {
                continue;
            }
            let Some(v) = d.view.map(|v| &px.views[v]) else {
                continue;
            };
            for &q in &v.view.members {
                if q == px.id || ix.crashed(q) {
                    continue;
                }
                let qx = ix.proc(q);
                if qx.is_some_and(|qx| qx.delivered(d.m)) {
                    continue;
                }
                let installed_v = qx.is_some_and(|qx| qx.views.iter().any(|w| w.key() == v.key()));
                if !installed_v {
                    continue;
                }
                let moved_on = qx.and_then(|qx| qx.max_view).is_some_and(|w| w > v.id());
                if !(moved_on || calm) || !reported.insert((q, d.m)) {
                    continue;
                }
                let why = if moved_on {
                    "moved on to a later view"
                } else {
                    "the run calmed down"
                };
                sink.report(
                    vec![px.id, q],
                    Some(d.msg),
                    format!(
                        "{} delivered safe {} in {:?}; member {q} never did ({why}, no crash)",
                        px.id,
                        fmt_msg(d.msg),
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

    /// Ring 1 = {1,2,3}; 1 sends a safe message that 1 and 2 deliver; 3 then installs ring 2.
    fn base() -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]).bcast(1, 0, Safe, &[1, 2]);
        b
    }

    #[test]
    fn catches_a_member_that_moved_on_without_it() {
        let mut b = base();
        b.trans(3, 2, &[3]).reg(3, 2, &[3]);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1); // reported once although both 1 and 2 delivered it
        names(&v, &[1, 3], Some((1, 0)));
    }

    #[test]
    fn catches_a_member_that_never_got_it_once_calm() {
        let mut b = base();
        b.calm();
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 3], Some((1, 0)));
    }

    #[test]
    fn catches_a_miss_in_a_transitional_view() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]).send(1, 0, Safe).crash(3);
        b.trans_all(2, &[1, 2])
            .deliver(1, (1, 0), Safe)
            .reg_all(2, &[1, 2]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], Some((1, 0)));
    }

    #[test]
    fn a_member_that_never_installed_the_view_is_not_bound() {
        // 1 and 2 come from ring 1; 1 installs T2 = {1,2} and delivers the safe message there,
        // but 2 gave up on ring 2 during its recovery and went on alone (T3 = {2}).
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).send(1, 0, Safe);
        b.trans(1, 2, &[1, 2])
            .deliver(1, (1, 0), Safe)
            .reg(1, 2, &[1, 2]);
        b.trans(2, 3, &[2]).reg(2, 3, &[2]);
        b.trans(1, 4, &[1]).reg(1, 4, &[1]);
        let h = b.build();
        assert!(
            super::super::check_all(&h)
                .iter()
                .all(|v| v.property != super::PROPERTY),
            "{:?}",
            super::super::check_all(&h)
        );
    }

    #[test]
    fn crash_or_still_pending_is_fine() {
        // 3 crashed.
        let mut b = base();
        b.crash(3);
        clean(&b.build());
        // 3 is still in ring 1 and the run never calmed: it may yet deliver.
        clean(&base().build());
        // Agreed (not safe) messages carry no such promise.
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).bcast(1, 0, Agreed, &[1]);
        b.trans(2, 2, &[2]).reg(2, 2, &[2]);
        clean(&b.build());
    }
}
