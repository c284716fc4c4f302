//! `reads_monotone`: see the table in `mod.rs`.

use super::*;

/// Reads at one server never see an older last transaction than an earlier read there,
/// unless the server reported lost transactions in between.
pub fn reads_monotone(h: &RHistory, out: &mut Vec<Violation>) {
    let mut last: BTreeMap<ServerId, Tid> = BTreeMap::new();
    for e in &h.events {
        match e {
            REvent::Read { at, server, tid } => {
                let prev = last.entry(*server).or_default();
                if tid < prev {
                    push(
                        out,
                        "reads_monotone",
                        &[*server],
                        format!("read at s{server} at {at:?} saw {tid} after an earlier read saw {prev}"),
                    );
                }
                *prev = (*prev).max(*tid);
            }
            REvent::Lost { server, .. } | REvent::Wiped { server, .. } => {
                last.remove(server);
            }
            _ => {}
        }
    }
}
