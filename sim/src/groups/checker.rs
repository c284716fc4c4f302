//! Group-level virtual synchrony, judged on a [`GroupHistory`], reporting [`Violation`]s: the
//! one checker of the groups storm and of the scripted scenarios of
//! `sim/tests/groups_scripted.rs`.
//!
//! | property                 | what must hold                                                  |
//! |--------------------------|-----------------------------------------------------------------|
//! | `group_view_agreement`   | one (group, view id) has the same members and kind everywhere   |
//! | `group_view_membership`  | a session only receives views of which it is a member           |
//! | `group_view_ids_ordered` | the view ids of a group increase at every session               |
//! | `group_same_delivery`    | sessions that install the same two consecutive views of a group |
//! |                          | delivered the same messages to it in between, in the same order |
//! | `group_agreed_order`     | any two sessions deliver their common messages in one order     |
//! | `group_final_views`      | after the calm phase, the live members of a group share its     |
//! |                          | last view                                                       |
//! | `group_api`              | the daemon accepted every call of the (valid) workload          |

use super::{GroupHistory, SessionKey};
use crate::checkers::{Violation, CAP};
use bytes::Bytes;
use gcs::{GroupViewId, MemberId, SessionEvent, ViewKind};
use std::collections::{BTreeMap, BTreeSet};

fn push(out: &mut Vec<Violation>, property: &'static str, s: &[SessionKey], detail: String) {
    let n = out.iter().filter(|v| v.property == property).count();
    if n < CAP {
        out.push(Violation {
            property,
            procs: s.iter().map(|k| k.daemon).collect(),
            msg: None,
            detail,
        });
    }
}

/// Every group property, in the order of the table above.
pub fn check_all(h: &GroupHistory) -> Vec<Violation> {
    let mut out = Vec::new();
    views_and_deliveries(h, &mut out);
    agreed_order(h, &mut out);
    final_views(h, &mut out);
    for (at, s, what) in &h.refused {
        push(
            &mut out,
            "group_api",
            &[*s],
            format!("{at:?}: refused {what}"),
        );
    }
    out
}

type ViewKey = (String, GroupViewId);

fn views_and_deliveries(h: &GroupHistory, out: &mut Vec<Violation>) {
    let mut by_id: BTreeMap<ViewKey, (SessionKey, Vec<MemberId>, ViewKind)> = BTreeMap::new();
    let mut between: BTreeMap<(String, GroupViewId, GroupViewId), (SessionKey, Vec<Bytes>)> =
        BTreeMap::new();
    for (&s, events) in &h.sessions {
        let mut current: BTreeMap<String, (GroupViewId, Vec<Bytes>)> = BTreeMap::new();
        for e in events {
            match e {
                SessionEvent::Membership(v) => {
                    let key = (v.group.clone(), v.id);
                    match by_id.get(&key) {
                        Some((other, m, k)) if *m != v.members || *k != v.kind => push(
                            out,
                            "group_view_agreement",
                            &[s, *other],
                            format!(
                                "view {:?} of {}: {:?} {:?} at {s:?}, {k:?} {m:?} at {other:?}",
                                v.id, v.group, v.kind, v.members
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            by_id.insert(key, (s, v.members.clone(), v.kind));
                        }
                    }
                    if !v
                        .members
                        .iter()
                        .any(|m| m.daemon == s.daemon && m.session == s.sid)
                    {
                        push(
                            out,
                            "group_view_membership",
                            &[s],
                            format!(
                                "{s:?} got view {:?} of {} without being in it",
                                v.id, v.group
                            ),
                        );
                    }
                    if let Some((prev, msgs)) = current.remove(&v.group) {
                        if prev >= v.id {
                            push(
                                out,
                                "group_view_ids_ordered",
                                &[s],
                                format!(
                                    "{s:?}: views of {} go back: {prev:?} then {:?}",
                                    v.group, v.id
                                ),
                            );
                        }
                        let k = (v.group.clone(), prev, v.id);
                        match between.get(&k) {
                            Some((other, m)) if *m != msgs => push(
                                out,
                                "group_same_delivery",
                                &[s, *other],
                                format!(
                                    "{s:?} and {other:?} delivered different messages to {} between {prev:?} and {:?}: {msgs:?} vs {m:?}",
                                    v.group, v.id
                                ),
                            ),
                            Some(_) => {}
                            None => {
                                between.insert(k, (s, msgs));
                            }
                        }
                    }
                    current.insert(v.group.clone(), (v.id, Vec::new()));
                }
                SessionEvent::SelfLeave { group } => {
                    current.remove(group);
                }
                SessionEvent::Message {
                    groups, payload, ..
                } => {
                    for g in groups.iter() {
                        if let Some((_, msgs)) = current.get_mut(g) {
                            msgs.push(payload.clone());
                        }
                    }
                }
            }
        }
    }
}

fn agreed_order(h: &GroupHistory, out: &mut Vec<Violation>) {
    let orders: Vec<(SessionKey, Vec<&Bytes>)> = h
        .sessions
        .iter()
        .map(|(s, events)| {
            let order = events
                .iter()
                .filter_map(|e| match e {
                    SessionEvent::Message { payload, .. } => Some(payload),
                    _ => None,
                })
                .collect();
            (*s, order)
        })
        .collect();
    let sets: Vec<BTreeSet<&Bytes>> = orders
        .iter()
        .map(|(_, o)| o.iter().copied().collect())
        .collect();
    for (i, (s, a)) in orders.iter().enumerate() {
        for (j, (t, b)) in orders.iter().enumerate().skip(i + 1) {
            let a2: Vec<_> = a.iter().filter(|m| sets[j].contains(*m)).collect();
            let b2: Vec<_> = b.iter().filter(|m| sets[i].contains(*m)).collect();
            if a2 != b2 {
                let at = a2.iter().zip(&b2).position(|(x, y)| x != y).unwrap_or(0);
                push(
                    out,
                    "group_agreed_order",
                    &[*s, *t],
                    format!(
                        "{s:?} and {t:?} disagree on the order of their common messages from #{at}: {:?} vs {:?}",
                        a2.get(at),
                        b2.get(at)
                    ),
                );
            }
        }
    }
}

fn final_views(h: &GroupHistory, out: &mut Vec<Violation>) {
    let mut last: BTreeMap<&str, BTreeMap<GroupViewId, SessionKey>> = BTreeMap::new();
    for (s, joined) in &h.finals {
        for g in joined {
            let v = h.sessions.get(s).and_then(|evs| {
                evs.iter().rev().find_map(|e| match e {
                    SessionEvent::Membership(v) if v.group == *g => Some(v.id),
                    _ => None,
                })
            });
            match v {
                Some(id) => {
                    last.entry(g).or_default().insert(id, *s);
                }
                None => push(
                    out,
                    "group_final_views",
                    &[*s],
                    format!("{s:?} is in {g} at the end but never got a view of it"),
                ),
            }
        }
    }
    for (g, ids) in last {
        if ids.len() > 1 {
            let who: Vec<SessionKey> = ids.values().copied().collect();
            push(
                out,
                "group_final_views",
                &who,
                format!("the last views of {g} differ at the end: {:?}", ids.keys()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::run_groups_seed;

    fn clean_run() -> GroupHistory {
        let r = run_groups_seed(3, 4, None);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(
            r.totals.delivered > 1000 && r.totals.views > 50,
            "{:?}",
            r.totals
        );
        r.history
    }

    fn properties(h: &GroupHistory) -> BTreeSet<&'static str> {
        check_all(h).into_iter().map(|v| v.property).collect()
    }

    /// The session with the most events.
    fn busiest(h: &GroupHistory) -> SessionKey {
        *h.sessions
            .iter()
            .max_by_key(|(_, e)| e.len())
            .expect("sessions")
            .0
    }

    #[test]
    fn two_messages_swapped_at_one_session_break_the_order() {
        let mut h = clean_run();
        let s = busiest(&h);
        let evs = h.sessions.get_mut(&s).expect("listed");
        let msgs: Vec<usize> = (0..evs.len())
            .filter(|k| matches!(evs[*k], SessionEvent::Message { .. }))
            .collect();
        let (a, b) = (msgs[msgs.len() / 2], msgs[msgs.len() / 2 + 1]);
        evs.swap(a, b);
        let p = properties(&h);
        assert!(p.contains("group_agreed_order"), "{p:?}");
    }

    #[test]
    fn a_view_with_other_members_breaks_agreement_and_membership() {
        let mut h = clean_run();
        let s = busiest(&h);
        let evs = h.sessions.get_mut(&s).expect("listed");
        let k = evs
            .iter()
            .rposition(|e| matches!(e, SessionEvent::Membership(v) if v.members.len() > 1))
            .expect("a view with two members");
        let SessionEvent::Membership(v) = &evs[k] else {
            unreachable!()
        };
        let mut v = (**v).clone();
        v.members
            .retain(|m| !(m.daemon == s.daemon && m.session == s.sid));
        evs[k] = SessionEvent::Membership(v.into());
        let p = properties(&h);
        assert!(p.contains("group_view_agreement"), "{p:?}");
        assert!(p.contains("group_view_membership"), "{p:?}");
    }

    #[test]
    fn a_message_lost_at_one_session_breaks_same_delivery() {
        let h = clean_run();
        let s = busiest(&h);
        let msgs: Vec<usize> = (0..h.sessions[&s].len())
            .filter(|k| matches!(h.sessions[&s][*k], SessionEvent::Message { .. }))
            .collect();
        // Some message of the busiest session was delivered between two views that another
        // member installed too: dropping it there must be seen.
        let caught = msgs.iter().rev().take(50).any(|k| {
            let mut bad = h.clone();
            bad.sessions.get_mut(&s).expect("listed").remove(*k);
            properties(&bad).contains("group_same_delivery")
        });
        assert!(caught);
    }

    #[test]
    fn views_going_back_are_caught() {
        let mut h = clean_run();
        let s = busiest(&h);
        let evs = h.sessions.get_mut(&s).expect("listed");
        let views: Vec<usize> = (0..evs.len())
            .filter(|k| matches!(&evs[*k], SessionEvent::Membership(_)))
            .collect();
        let g = match &evs[*views.last().expect("views")] {
            SessionEvent::Membership(v) => v.group.clone(),
            _ => unreachable!(),
        };
        let of_g: Vec<usize> = views
            .into_iter()
            .filter(|k| matches!(&evs[*k], SessionEvent::Membership(v) if v.group == g))
            .collect();
        assert!(of_g.len() >= 2);
        let last = evs.remove(*of_g.last().expect("views"));
        evs.insert(of_g[0], last);
        let p = properties(&h);
        assert!(p.contains("group_view_ids_ordered"), "{p:?}");
    }

    #[test]
    fn a_live_member_without_the_last_view_is_caught() {
        let mut h = clean_run();
        // A group with two live members at the end, and one of them.
        let mut members: BTreeMap<&String, Vec<SessionKey>> = BTreeMap::new();
        for (s, gs) in &h.finals {
            for g in gs {
                members.entry(g).or_default().push(*s);
            }
        }
        let (g, s) = members
            .iter()
            .find(|(_, m)| m.len() >= 2)
            .map(|(g, m)| ((*g).clone(), m[0]))
            .expect("a group with two live members");
        let evs = h.sessions.get_mut(&s).expect("listed");
        let k = evs
            .iter()
            .rposition(|e| matches!(e, SessionEvent::Membership(v) if v.group == g))
            .expect("its last view");
        // An older view instead of the last one: another member's last view differs.
        let older = evs[..k].iter().rev().find_map(|e| match e {
            SessionEvent::Membership(o) if o.group == g => Some(o.clone()),
            _ => None,
        });
        match older {
            Some(o) => evs[k] = SessionEvent::Membership(o),
            None => {
                evs.remove(k);
            }
        }
        let p = properties(&h);
        assert!(p.contains("group_final_views"), "{p:?}");
    }
}
