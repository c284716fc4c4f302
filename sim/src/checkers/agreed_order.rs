//! `agreed_order`: agreed and safe messages are delivered in one total order.
//!
//! (a) For each regular view V, the sequences of messages with service `Agreed` or `Safe` that
//! the processes delivered in V (its regular part, not the transitional view after it) are
//! prefixes of one another. (b) Any two processes deliver any two agreed/safe messages that both
//! delivered in the same relative order.
//!
//! EVS paper, specifications 6.1 and 6.2 (paraphrased, "totally ordered delivery"): there is one
//! order on delivered messages that every process respects; and within a regular configuration a
//! process may only stop short of another, not skip over a message the other delivered before a
//! later one (the transitional configuration is where such holes are allowed).

use super::{fmt_msg, Index, Mix, Sink, Violation, NONE};
use crate::history::History;
use gcs::{ProcId, Service, ViewId, ViewKind};
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "agreed_order";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    let agreed = |s: Service| s >= Service::Agreed;

    // (a) Per regular view: each process's agreed sequence there.
    let mut per_view: BTreeMap<ViewId, Vec<(ProcId, Vec<Mix>)>> = BTreeMap::new();
    for px in &ix.procs {
        for v in px.views.iter().filter(|v| v.kind() == ViewKind::Regular) {
            let seq: Vec<Mix> = v
                .dels
                .clone()
                .filter(|&i| px.is_first(i) && agreed(px.dels[i].service))
                .map(|i| px.dels[i].m)
                .collect();
            per_view.entry(v.id()).or_default().push((px.id, seq));
        }
    }
    for (vid, seqs) in &per_view {
        let Some((lp, longest)) = seqs
            .iter()
            .max_by_key(|(p, s)| (s.len(), std::cmp::Reverse(*p)))
        else {
            continue;
        };
        for (q, s) in seqs {
            let Some(k) = s.iter().zip(longest).position(|(a, b)| a != b) else {
                continue;
            };
            let (mq, mp) = (ix.msgs[s[k] as usize], ix.msgs[longest[k] as usize]);
            sink.report(
                vec![*lp, *q],
                Some(mq),
                format!(
                    "in {vid:?}, agreed message #{k} was {} at {lp} but {} at {q}",
                    fmt_msg(mp),
                    fmt_msg(mq)
                ),
            );
        }
    }

    // (b) Pairwise: p's agreed order, restricted to what q delivered, must increase at q.
    for (a, px) in ix.procs.iter().enumerate() {
        for qx in &ix.procs[a + 1..] {
            if sink.full() {
                return;
            }
            let mut last: Option<(u32, Mix)> = None;
            for (i, d) in px.dels.iter().enumerate() {
                if !agreed(d.service) || !px.is_first(i) {
                    continue;
                }
                let at_q = qx.del_pos[d.m as usize];
                if at_q == NONE || !agreed(qx.dels[at_q as usize].service) {
                    continue;
                }
                if let Some((prev_q, prev)) = last {
                    if at_q < prev_q {
                        let prev = ix.msgs[prev as usize];
                        sink.report(
                            vec![px.id, qx.id],
                            Some(d.msg),
                            format!(
                                "{} delivered {} before {} but {} after",
                                px.id,
                                fmt_msg(prev),
                                fmt_msg(d.msg),
                                qx.id
                            ),
                        );
                    }
                }
                last = Some((at_q, d.m));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    fn two_sent() -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3])
            .send(1, 0, Agreed)
            .send(2, 0, Agreed);
        b
    }

    #[test]
    fn catches_two_processes_in_opposite_orders() {
        let mut b = two_sent();
        b.deliver(1, (1, 0), Agreed).deliver(1, (2, 0), Agreed);
        b.deliver(2, (2, 0), Agreed).deliver(2, (1, 0), Agreed);
        b.deliver(3, (1, 0), Agreed).deliver(3, (2, 0), Agreed);
        let v = only(&b.build(), super::PROPERTY);
        // (a): 1's sequence is the reference (longest, then smallest id); 2 differs at 2#0.
        assert!(v.iter().any(|x| x.detail.contains("agreed message #0")));
        names(&v, &[1, 2], Some((2, 0)));
        // (b): 2 delivered 2#0 before 1#0, 3 after.
        names(&v, &[2, 3], Some((1, 0)));
    }

    #[test]
    fn catches_a_hole_in_the_regular_view() {
        // 2 skips 1#0 but delivers 2#0 in the regular view: not a prefix of 1's sequence.
        let mut b = two_sent();
        b.deliver_all(&[1, 3], (1, 0), Agreed)
            .deliver_all(&[1, 3], (2, 0), Agreed);
        b.deliver(2, (2, 0), Agreed).crash(2);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1, 2], Some((2, 0)));
    }

    #[test]
    fn catches_an_inversion_in_the_transitional_view() {
        // Only (b) can see this: (a) ignores transitional views.
        let mut b = two_sent();
        b.crash(3).trans_all(2, &[1, 2]);
        b.deliver(1, (1, 0), Agreed).deliver(1, (2, 0), Agreed);
        b.deliver(2, (2, 0), Agreed).deliver(2, (1, 0), Agreed);
        b.reg_all(2, &[1, 2]);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1, 2], Some((2, 0)));
    }

    /// Ring 1 = {1,2,3} orders 1#0, 3#0, 2#0. 3 delivers all three in the regular view, then is
    /// cut off; 1 and 2 never got 3#0.
    fn partition(in_transitional: bool) -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2, 3]);
        b.send(1, 0, Agreed).send(3, 0, Agreed).send(2, 0, Agreed);
        b.deliver(3, (1, 0), Agreed)
            .deliver(3, (3, 0), Agreed)
            .deliver(3, (2, 0), Agreed);
        b.trans(3, 3, &[3]).reg(3, 3, &[3]);
        if in_transitional {
            b.trans_all(2, &[1, 2]);
        }
        b.deliver_all(&[1, 2], (1, 0), Agreed)
            .deliver_all(&[1, 2], (2, 0), Agreed);
        if !in_transitional {
            b.trans_all(2, &[1, 2]);
        }
        b.reg_all(2, &[1, 2]);
        b
    }

    #[test]
    fn a_hole_in_the_transitional_view_is_fine() {
        clean(&partition(true).build());
    }

    #[test]
    fn the_same_hole_in_the_regular_view_is_caught() {
        let v = only(&partition(false).build(), super::PROPERTY);
        assert_eq!(v.len(), 2);
        names(&v, &[3, 1], Some((2, 0)));
        names(&v, &[3, 2], Some((2, 0)));
    }
}
