//! `acks_from_primary`: see the table in `mod.rs`.

use super::*;

/// Every ack names an epoch its server was primary of (in a primary component) before.
pub fn acks_from_primary(h: &RHistory, out: &mut Vec<Violation>) {
    let p = primaries(h);
    for e in &h.events {
        if let REvent::Ack {
            at,
            server,
            client,
            request,
            epoch,
            ..
        } = e
        {
            let ok = p
                .iter()
                .any(|(t, s, ep, pc)| t <= at && s == server && ep == epoch && *pc);
            if !ok {
                push(
                    out,
                    "acks_from_primary",
                    &[*server],
                    format!(
                        "s{server} acknowledged c{client}r{request} at {at:?} for {epoch} without being its primary"
                    ),
                );
            }
        }
    }
}
