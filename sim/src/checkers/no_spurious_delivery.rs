//! `no_spurious_delivery`: every delivered message was really sent, as delivered.
//!
//! A delivery of message m is fine only if m's sender has a `Sent` event for m in its own log,
//! at or before the delivery time, with the same service level, and the payload arrived intact.
//!
//! EVS paper, specification 2.1 (paraphrased): a message is delivered only if some process sent
//! it (no message is created by the system), and it is delivered as sent.

use super::{fmt_msg, Index, Sink, Violation};
use crate::history::History;

/// The property's name.
pub const PROPERTY: &str = "no_spurious_delivery";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    for px in &ix.procs {
        for d in &px.dels {
            let what = || fmt_msg(d.msg);
            let problem = match ix.sent_rec(d.m) {
                None => Some(format!(
                    "{} delivered {}, which its sender never sent",
                    px.id,
                    what()
                )),
                Some(s) if s.at > d.at => Some(format!(
                    "{} delivered {} at {:?}, before it was sent at {:?}",
                    px.id,
                    what(),
                    d.at,
                    s.at
                )),
                Some(s) if s.service != d.service => Some(format!(
                    "{} delivered {} as {:?} but it was sent as {:?}",
                    px.id,
                    what(),
                    d.service,
                    s.service
                )),
                Some(_) if !d.payload_ok => Some(format!(
                    "{} delivered {} with a payload that differs from the one sent",
                    px.id,
                    what()
                )),
                Some(_) => None,
            };
            if let Some(detail) = problem {
                sink.report(vec![px.id], Some(d.msg), detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    fn base() -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]);
        b
    }

    #[test]
    fn catches_a_message_never_sent() {
        let mut b = base();
        b.deliver(2, (1, 7), Reliable);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[2], Some((1, 7)));
    }

    #[test]
    fn catches_a_message_sent_by_someone_else() {
        // 2 has a Sent event claiming 1's message: not in the sender's log, so spurious.
        let mut b = base();
        b.send_as(2, (1, 0), Reliable).deliver(1, (1, 0), Reliable);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1], Some((1, 0)));
    }

    #[test]
    fn catches_a_changed_service() {
        let mut b = base();
        b.send(1, 0, Agreed)
            .deliver(1, (1, 0), Agreed)
            .deliver(2, (1, 0), Safe);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[2], Some((1, 0)));
    }

    #[test]
    fn catches_a_corrupt_payload() {
        let mut b = base();
        b.send(1, 0, Agreed).deliver(1, (1, 0), Agreed);
        b.deliver_corrupt(2, (1, 0), Agreed);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[2], Some((1, 0)));
    }

    #[test]
    fn catches_a_delivery_before_the_send() {
        let mut b = base();
        b.deliver(2, (1, 0), Agreed)
            .send(1, 0, Agreed)
            .deliver(1, (1, 0), Agreed);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[2], Some((1, 0)));
    }
}
