//! `convergence`: see the table in `mod.rs`.

use super::*;

/// After the calm phase: one primary, everyone caught up with equal objects, commits flowing.
pub fn convergence(h: &RHistory, out: &mut Vec<Violation>) {
    let running: Vec<(&ServerId, &crate::replica::history::FinalStore)> = h
        .finals
        .iter()
        .filter(|(_, f)| f.running && !f.outside)
        .collect();
    let prim: Vec<ServerId> = running
        .iter()
        .filter(|(_, f)| f.role == Some(Role::Primary))
        .map(|(s, _)| **s)
        .collect();
    if prim.len() != 1 {
        push(
            out,
            "convergence",
            &prim,
            format!(
                "{} primaries at the end (roles: {:?})",
                prim.len(),
                running
                    .iter()
                    .map(|(s, f)| (**s, f.role))
                    .collect::<Vec<_>>()
            ),
        );
        return;
    }
    let p = &h.finals[&prim[0]];
    for (s, f) in &running {
        if f.last != p.last || f.state_digest != p.state_digest {
            push(
                out,
                "convergence",
                &[**s, prim[0]],
                format!(
                    "s{s} ends at {} ({:?}) while the primary s{} is at {}{}",
                    f.last,
                    f.role,
                    prim[0],
                    p.last,
                    if f.last == p.last {
                        " with other objects"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    if h.finals.values().any(|f| !f.running && !f.outside) {
        push(
            out,
            "convergence",
            &[],
            "a server is not running at the end".into(),
        );
    }
    let acks_after_calm = h
        .events
        .iter()
        .any(|e| matches!(e, REvent::Ack { at, .. } if *at > h.calm_from));
    let any_client = h
        .events
        .iter()
        .any(|e| matches!(e, REvent::Ack { .. } | REvent::Failed { .. }));
    if any_client && !acks_after_calm && h.sends_until > h.calm_from {
        push(
            out,
            "convergence",
            &[],
            "no commit acknowledged after the network healed".into(),
        );
    }
}
