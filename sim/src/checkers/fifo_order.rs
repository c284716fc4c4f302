//! `fifo_order`: each sender's fifo (and stronger) messages are delivered in the order sent.
//!
//! For a sender p and two messages m1 sent before m2, both with service `Fifo` or stronger and
//! with the same origin (regular view of delivery): a process that delivers m2 delivered m1
//! before it. It suffices to check each message against the one p sent just before it with the
//! same origin: the property then follows by induction along the chain.
//!
//! EVS paper, specification 5 restricted to one sender (paraphrased): messages from one sender
//! in one configuration are delivered in the order they were sent, without gaps.

use super::{fmt_msg, Index, Mix, Sink, Violation, NONE};
use crate::history::History;
use gcs::{Service, ViewId};
use std::collections::BTreeMap;

/// The property's name.
pub const PROPERTY: &str = "fifo_order";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    for px in &ix.procs {
        let p = px.id;
        // Origin -> p's fifo messages with that origin, in send order.
        let mut chains: BTreeMap<ViewId, Vec<Mix>> = BTreeMap::new();
        for s in &px.sends {
            if s.service >= Service::Fifo && s.msg.sender == p {
                if let Some(o) = ix.origin[s.m as usize] {
                    chains.entry(o).or_default().push(s.m);
                }
            }
        }
        for qx in &ix.procs {
            for chain in chains.values() {
                for w in chain.windows(2) {
                    let (m1, m2) = (w[0], w[1]);
                    let at2 = qx.del_pos[m2 as usize];
                    if at2 == NONE {
                        continue;
                    }
                    let at1 = qx.del_pos[m1 as usize];
                    if at1 != NONE && at1 < at2 {
                        continue;
                    }
                    let (msg1, msg2) = (ix.msgs[m1 as usize], ix.msgs[m2 as usize]);
                    let how = if at1 == NONE {
                        "never"
                    } else {
                        "only after it"
                    };
                    sink.report(
                        vec![p, qx.id],
                        Some(msg2),
                        format!(
                            "{} delivered {} but {how} delivered {}, sent before it by {p}",
                            qx.id,
                            fmt_msg(msg2),
                            fmt_msg(msg1)
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

    fn sent(s1: gcs::Service, s2: gcs::Service) -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).send(1, 0, s1).send(1, 1, s2);
        b.deliver(1, (1, 0), s1).deliver(1, (1, 1), s2);
        b
    }

    #[test]
    fn catches_a_reordering() {
        let mut b = sent(Fifo, Fifo);
        b.deliver(2, (1, 1), Fifo).deliver(2, (1, 0), Fifo);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1, 2], Some((1, 1)));
        assert!(v[0].detail.contains("only after it"));
    }

    #[test]
    fn catches_a_gap() {
        let mut b = sent(Fifo, Fifo);
        b.send(1, 2, Fifo).deliver(1, (1, 2), Fifo);
        b.deliver(2, (1, 0), Fifo).deliver(2, (1, 2), Fifo);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1, 2], Some((1, 2)));
        assert!(v[0].detail.contains("never delivered n1.0#1"));
    }

    #[test]
    fn reliable_messages_are_unordered() {
        let mut b = sent(Reliable, Fifo);
        b.deliver(2, (1, 1), Fifo).deliver(2, (1, 0), Reliable);
        clean(&b.build());
    }
}
