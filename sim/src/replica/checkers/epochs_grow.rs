//! `epochs_grow`: see the table in `mod.rs`.

use super::*;

/// Promises never decrease; a server's own primary epochs strictly increase.
pub fn epochs_grow(h: &RHistory, out: &mut Vec<Violation>) {
    let mut promised: BTreeMap<ServerId, Epoch> = BTreeMap::new();
    let mut led: BTreeMap<ServerId, Epoch> = BTreeMap::new();
    for e in &h.events {
        if let REvent::Wiped { server, .. } = e {
            // Its promises went with its disk (it does not vote until it promises again).
            promised.remove(server);
        }
        if let REvent::Role {
            at,
            server,
            role,
            primary,
            promised: p,
            ..
        } = e
        {
            let last = promised.entry(*server).or_default();
            if p < last {
                push(
                    out,
                    "epochs_grow",
                    &[*server],
                    format!("s{server}'s promise went from {last} down to {p} at {at:?}"),
                );
            }
            *last = (*last).max(*p);
            if let (Role::Primary, Some((s, ep))) = (role, primary) {
                if s == server {
                    let prev = led.insert(*server, *ep).unwrap_or_default();
                    if *ep <= prev {
                        push(
                            out,
                            "epochs_grow",
                            &[*server],
                            format!(
                                "s{server} primary of {ep} at {at:?} after being primary of {prev}"
                            ),
                        );
                    }
                }
            }
        }
    }
}
