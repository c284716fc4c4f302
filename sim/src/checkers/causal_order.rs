//! `causal_order`: causal (and stronger) messages are delivered after their causal predecessors.
//!
//! For a message m2 with service `Causal` or stronger sent by p, its causal predecessors are the
//! messages with service `Causal` or stronger that p delivered before sending m2, and p's own
//! earlier such messages, restricted to those whose origin (the regular view they were delivered
//! in) is the origin of m2. Every process that delivers m2 must have delivered every predecessor
//! before it. (Checking direct predecessors suffices: the relation is closed transitively by
//! checking every message.)
//!
//! EVS paper, specification 5 (paraphrased, "causal delivery"): if a message precedes another in
//! the causal order (sent-before at one process, or delivered-before-sending), and both belong to
//! the same configuration, then any process that delivers the later one has delivered the earlier
//! one first.
//!
//! Efficiency: for a fixed sender p and origin o the predecessor list only grows along p's log,
//! so each m2 is recorded as (m2, k): its predecessors are the first k entries of the list. For
//! each receiver the list is walked once, tracking the first entry it never delivered and the
//! latest position at which it delivered any of the first k entries; each m2 is then checked in
//! O(1).

use super::{fmt_msg, Index, Mix, Sink, Violation, NONE};
use crate::history::History;
use gcs::{Service, ViewId};
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "causal_order";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

/// For one (sender, origin): the predecessor list, and each message sent with how many of the
/// list's first entries precede it.
#[derive(Default)]
struct Chain {
    preds: Vec<Mix>,
    checks: Vec<(Mix, usize)>,
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    let causal = |s: Service| s >= Service::Causal;
    // Messages already in one of the current sender's chains.
    let mut listed = vec![false; ix.msgs.len()];
    for px in &ix.procs {
        let p = px.id;
        let mut chains: BTreeMap<ViewId, Chain> = BTreeMap::new();
        listed.iter_mut().for_each(|x| *x = false);
        // Merge p's deliveries and sends in log order.
        let (mut di, mut si) = (0, 0);
        while di < px.dels.len() || si < px.sends.len() {
            let take_del =
                si == px.sends.len() || (di < px.dels.len() && px.dels[di].ev < px.sends[si].ev);
            if take_del {
                let d = &px.dels[di];
                if causal(d.service) && px.is_first(di) {
                    if let Some(o) = ix.origin[d.m as usize] {
                        if !std::mem::replace(&mut listed[d.m as usize], true) {
                            chains.entry(o).or_default().preds.push(d.m);
                        }
                    }
                }
                di += 1;
            } else {
                let s = &px.sends[si];
                if causal(s.service) && s.msg.sender == p {
                    if let Some(o) = ix.origin[s.m as usize] {
                        let chain = chains.entry(o).or_default();
                        chain.checks.push((s.m, chain.preds.len()));
                        if !std::mem::replace(&mut listed[s.m as usize], true) {
                            chain.preds.push(s.m);
                        }
                    }
                }
                si += 1;
            }
        }

        for qx in &ix.procs {
            for chain in chains.values() {
                if sink.full() {
                    return;
                }
                if !chain.checks.iter().any(|(m, _)| qx.delivered(*m)) {
                    continue;
                }
                // Walk the predecessor list once for q.
                let mut j = 0;
                let mut first_missing: Option<Mix> = None;
                let mut latest: Option<(u32, Mix)> = None;
                for &(m2, k) in &chain.checks {
                    while j < k {
                        let m1 = chain.preds[j];
                        let pos = qx.del_pos[m1 as usize];
                        if pos == NONE {
                            first_missing = first_missing.or(Some(m1));
                        } else if latest.is_none_or(|(lp, _)| pos > lp) {
                            latest = Some((pos, m1));
                        }
                        j += 1;
                    }
                    let at = qx.del_pos[m2 as usize];
                    if at == NONE {
                        continue;
                    }
                    let msg2 = ix.msgs[m2 as usize];
                    if let Some(m1) = first_missing {
                        sink.report(
                            vec![p, qx.id],
                            Some(msg2),
                            format!(
                                "{} delivered {} but never its causal predecessor {} (at sender {p})",
                                qx.id,
                                fmt_msg(msg2),
                                fmt_msg(ix.msgs[m1 as usize])
                            ),
                        );
                    } else if let Some((_, m1)) = latest.filter(|(lp, _)| *lp > at) {
                        sink.report(
                            vec![p, qx.id],
                            Some(msg2),
                            format!(
                                "{} delivered {} before its causal predecessor {} (at sender {p})",
                                qx.id,
                                fmt_msg(msg2),
                                fmt_msg(ix.msgs[m1 as usize])
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    /// 1 sends 1#0; 2 delivers it then sends 2#0 (so 1#0 -> 2#0); 3 delivers both, in the order
    /// given.
    fn chain(first: (u32, u64), second: (u32, u64)) -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]);
        b.bcast(1, 0, Causal, &[1, 2]);
        b.bcast(2, 0, Causal, &[1, 2]);
        b.deliver(3, first, Causal).deliver(3, second, Causal);
        b
    }

    #[test]
    fn catches_a_delivery_before_a_delivered_predecessor() {
        let v = only(&chain((2, 0), (1, 0)).build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[2, 3], Some((2, 0)));
        assert!(v[0].detail.contains("before its causal predecessor n1.0#0"));
    }

    #[test]
    fn in_order_is_fine() {
        clean(&chain((1, 0), (2, 0)).build());
    }

    #[test]
    fn catches_a_missing_predecessor() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]);
        b.bcast(1, 0, Causal, &[1, 2]);
        b.bcast(2, 0, Safe, &[1, 2, 3]);
        // 3 never gets 1#0, which only 2's causal message requires.
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[2, 3], Some((2, 0)));
        assert!(v[0].detail.contains("never its causal predecessor n1.0#0"));
    }

    #[test]
    fn catches_own_earlier_message_after() {
        // 1 sends 1#0 then 1#1 (causal); 2 delivers 1#1 first.
        let mut b = B::new();
        b.reg_all(1, &[1, 2]);
        b.send(1, 0, Causal).send(1, 1, Causal);
        b.deliver_all(&[1], (1, 0), Causal)
            .deliver_all(&[1], (1, 1), Causal);
        b.deliver(2, (1, 1), Causal).deliver(2, (1, 0), Causal);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], Some((1, 1)));
    }

    #[test]
    fn weaker_services_and_other_views_do_not_count() {
        // 2 delivered 1#0 (fifo only) before sending 2#0: no causal constraint.
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]);
        b.bcast(1, 0, Fifo, &[1, 2]);
        b.bcast(2, 0, Causal, &[1, 2]);
        b.deliver(3, (2, 0), Causal).deliver(3, (1, 0), Fifo);
        clean(&b.build());
        // 2 delivered 1#0 in ring 1 and sent 2#0, which is delivered in ring 2: different
        // origins, so newcomer 3 may deliver 2#0 without ever seeing 1#0.
        let mut b = B::new();
        b.reg_all(1, &[1, 2]);
        b.bcast(1, 0, Causal, &[1, 2]).send(2, 0, Causal);
        b.trans_all(2, &[1, 2]).reg_all(2, &[1, 2, 3]);
        b.deliver_all(&[1, 2, 3], (2, 0), Causal);
        clean(&b.build());
    }
}
