//! `views_well_formed`: each process's sequence of views has the shape EVS prescribes.
//!
//! In each log: nothing is delivered before the first view; the first view is regular; the
//! process is a member of every view it installs; members are listed ascending without repeats;
//! a transitional view comes right after a regular view and is followed, with only deliveries
//! (and the application's own send requests, which it may make at any moment) in between, by the
//! regular view of the same ring (unless the process crashes first); and the
//! transitional members are members both of the regular view before it and of the one after it.
//! Also (a simulator invariant): nothing follows a `Crashed` event.
//!
//! EVS paper, specifications 1.1 and 1.3 (paraphrased): every delivery happens within a
//! configuration the process installed, and a process is a member of each configuration it
//! installs; section 4: a transitional configuration separates two regular configurations and
//! holds only processes that belong to both.

use super::{Index, Sink, Violation};
use crate::history::{Event, History};
use gcs::ViewKind;

/// The property's name.
pub const PROPERTY: &str = "views_well_formed";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    for px in &ix.procs {
        let p = px.id;
        if let Some(d) = px.dels.iter().find(|d| d.view.is_none()) {
            sink.report(
                vec![p],
                Some(d.msg),
                format!(
                    "{p} delivered a message at {:?} before installing any view",
                    d.at
                ),
            );
        }
        if let Some(c) = px
            .log
            .iter()
            .position(|e| matches!(e, Event::Crashed { .. }))
        {
            if c + 1 < px.log.len() {
                sink.report(vec![p], None, format!("{p} has events after its crash"));
            }
        }
        for (i, v) in px.views.iter().enumerate() {
            let view = v.view;
            let id = view.id;
            if i == 0 && v.kind() == ViewKind::Transitional {
                sink.report(
                    vec![p],
                    None,
                    format!("{p}'s first view {id:?} is transitional"),
                );
            }
            if !view.members.contains(&p) {
                sink.report(
                    vec![p],
                    None,
                    format!("{p} installed {id:?} without being a member"),
                );
            }
            if !view.members.windows(2).all(|w| w[0] < w[1]) {
                sink.report(
                    vec![p],
                    None,
                    format!(
                        "{p} installed {id:?} with members not sorted and unique: {:?}",
                        view.members
                    ),
                );
            }
            if v.kind() != ViewKind::Transitional {
                continue;
            }
            // What follows the transitional view.
            let Some(n) = v.next.map(|j| &px.views[j]) else {
                if !px.crashed {
                    sink.report(
                        vec![p],
                        None,
                        format!("{p}'s transitional view {id:?} is not followed by a regular view"),
                    );
                }
                continue;
            };
            if n.kind() != ViewKind::Regular || n.id().ring != id.ring {
                sink.report(
                    vec![p],
                    None,
                    format!(
                        "{p}'s transitional view {id:?} is followed by {:?}, not its regular view",
                        n.id()
                    ),
                );
                continue;
            }
            if let Some(e) = px.log[v.ev + 1..n.ev]
                .iter()
                .find(|e| !matches!(e, Event::Delivered { .. } | Event::Sent { .. }))
            {
                sink.report(
                    vec![p],
                    None,
                    format!("{p} has {e:?} between transitional view {id:?} and its regular view"),
                );
            }
            // What precedes it.
            let Some(r) = i.checked_sub(1).map(|j| &px.views[j]) else {
                continue; // reported above: first view is transitional
            };
            if r.kind() != ViewKind::Regular {
                continue; // reported at `r`: a transitional view followed by a non-regular one
            }
            for q in &view.members {
                if !r.view.members.contains(q) || !n.view.members.contains(q) {
                    sink.report(
                        vec![p, *q],
                        None,
                        format!(
                            "{p}'s transitional view {id:?} holds {q}, which is not in both {:?} {:?} and {:?} {:?}",
                            r.id(),
                            r.view.members,
                            n.id(),
                            n.view.members
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
    use gcs::ViewKind;

    #[test]
    fn catches_a_delivery_before_any_view() {
        let mut b = B::new();
        b.send(1, 0, Reliable)
            .deliver(1, (1, 0), Reliable)
            .reg(1, 1, &[1]);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[1], Some((1, 0)));
    }

    #[test]
    fn catches_a_transitional_first_view() {
        let mut b = B::new();
        b.trans(1, 1, &[1]).reg(1, 1, &[1]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
        assert!(v.iter().any(|x| x.detail.contains("first view")));
    }

    #[test]
    fn catches_a_view_without_self() {
        let mut b = B::new();
        b.reg(1, 1, &[1]).reg(1, 2, &[2]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
        assert!(v
            .iter()
            .any(|x| x.detail.contains("without being a member")));
    }

    #[test]
    fn catches_unsorted_members() {
        let mut b = B::new();
        b.reg(1, 1, &[2, 1]).reg(2, 1, &[2, 1]);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 2);
        names(&v, &[1], None);
        names(&v, &[2], None);
    }

    #[test]
    fn catches_repeated_members() {
        let mut b = B::new();
        b.reg(1, 1, &[1, 1]);
        only(&b.build(), super::PROPERTY);
    }

    #[test]
    fn catches_a_transitional_view_into_another_ring() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2])
            .trans_all(2, &[1, 2])
            .reg_all(3, &[1, 2]);
        let v = has(&b.build(), super::PROPERTY);
        assert!(v.iter().any(|x| x.detail.contains("not its regular view")));
    }

    #[test]
    fn catches_a_dangling_transitional_view_but_not_after_a_crash() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).trans_all(2, &[1, 2]).crash(1);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[2], None);
    }

    #[test]
    fn a_send_request_between_transitional_and_regular_view_is_fine() {
        // A real application reads the two views one at a time and may ask for a send in
        // between; that request is not part of the view structure.
        let mut b = B::new();
        b.reg_all(1, &[1])
            .trans(1, 2, &[1])
            .send(1, 0, Unreliable)
            .reg(1, 2, &[1]);
        assert!(super::super::check_all(&b.build())
            .iter()
            .all(|v| v.property != super::PROPERTY));
    }

    #[test]
    fn catches_a_view_of_another_ring_between_transitional_and_regular_view() {
        let mut b = B::new();
        b.reg_all(1, &[1]).trans(1, 2, &[1]).reg(1, 3, &[1]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
    }

    #[test]
    fn catches_transitional_members_outside_the_previous_view() {
        // 1 is alone in ring 1, yet its transitional view into ring 2 lists 2.
        let mut b = B::new();
        b.reg(1, 1, &[1]).reg(2, 1, &[2]);
        b.view(1, 2, ViewKind::Transitional, &[1, 2])
            .reg(1, 2, &[1, 2]);
        b.trans(2, 2, &[2]).reg(2, 2, &[1, 2]);
        let v = has(&b.build(), super::PROPERTY);
        names(&v, &[1, 2], None);
    }

    #[test]
    fn catches_events_after_a_crash() {
        let mut b = B::new();
        b.reg(1, 1, &[1]).crash(1).send(1, 0, Unreliable);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
    }

    #[test]
    fn deliveries_between_transitional_and_regular_are_fine() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).send(1, 0, Safe).trans_all(2, &[1, 2]);
        b.deliver_all(&[1, 2], (1, 0), Safe).reg_all(2, &[1, 2]);
        clean(&b.build());
    }
}
