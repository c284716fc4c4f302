//! `self_delivery`: a process that does not crash delivers its own messages.
//!
//! Checked only when the run calms down (`calm_from` is set): every message with service other
//! than `Unreliable`, sent by a process that never crashed, is delivered by that process.
//!
//! EVS paper, specification 2.4 (paraphrased, "self-delivery"): a process delivers every message
//! it sent unless it fails.

use super::{fmt_msg, Index, Sink, Violation};
use crate::history::History;
use gcs::Service;

/// The property's name.
pub const PROPERTY: &str = "self_delivery";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    if ix.h.calm_from.is_none() {
        return;
    }
    let mut sink = Sink::new(PROPERTY, out);
    for px in ix.procs.iter().filter(|px| !px.crashed) {
        for s in &px.sends {
            if s.service != Service::Unreliable && s.msg.sender == px.id && !px.delivered(s.m) {
                sink.report(
                    vec![px.id],
                    Some(s.msg),
                    format!(
                        "{} sent {} ({:?}) at {:?} and never delivered it",
                        px.id,
                        fmt_msg(s.msg),
                        s.service,
                        s.at
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
    fn catches_an_own_message_never_delivered() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).send(1, 0, Reliable);
        b.trans_all(2, &[1, 2]).reg_all(2, &[1, 2]).calm();
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[1], Some((1, 0)));
    }

    #[test]
    fn not_calm_is_unchecked() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).send(1, 0, Reliable);
        b.trans_all(2, &[1, 2]).reg_all(2, &[1, 2]);
        clean(&b.build());
    }

    #[test]
    fn unreliable_or_crashed_is_fine() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2])
            .send(1, 0, Reliable)
            .send(1, 1, Unreliable);
        b.bcast(2, 0, Reliable, &[2]).send(2, 1, Unreliable);
        b.crash(1).trans(2, 2, &[2]).reg(2, 2, &[2]).calm();
        clean(&b.build());
    }
}
