//! `disjoint_primaries`: see the table in `mod.rs`.

use super::*;

/// Two primaries that act at the same time were elected by components that share a server
/// with a vote (under the configuration each was elected under): two disjoint majorities (of
/// whatever voter configurations) never both elect, and servers without a vote (read
/// replicas, spares) make no majority. A primary acts from its election until its next role
/// change or until it stops (crash, lost disk, pause).
pub fn disjoint_primaries(h: &RHistory, out: &mut Vec<Violation>) {
    // (server, epoch, from, until, the component's servers with a vote)
    let mut tenures: Vec<(ServerId, Epoch, Time, Time, &[ServerId])> = Vec::new();
    let mut open: BTreeMap<ServerId, usize> = BTreeMap::new();
    for e in &h.events {
        match e {
            REvent::Elected {
                at,
                server,
                epoch,
                weighted,
                ..
            } => {
                if let Some(k) = open.get(server) {
                    if tenures[*k].1 == *epoch {
                        continue; // the same tenure, said again
                    }
                    tenures[*k].3 = *at;
                }
                open.insert(*server, tenures.len());
                tenures.push((*server, *epoch, *at, h.end, weighted));
            }
            REvent::Role {
                at, server, role, ..
            } if *role != Role::Primary => {
                if let Some(k) = open.remove(server) {
                    tenures[k].3 = *at;
                }
            }
            REvent::Stopped { at, server } => {
                if let Some(k) = open.remove(server) {
                    tenures[k].3 = *at;
                }
            }
            _ => {}
        }
    }
    for (i, a) in tenures.iter().enumerate() {
        for b in &tenures[i + 1..] {
            let overlap = a.2 < b.3 && b.2 < a.3;
            if overlap && a.1 != b.1 && !a.4.iter().any(|s| b.4.contains(s)) {
                push(
                    out,
                    "disjoint_primaries",
                    &[a.0, b.0],
                    format!(
                        "s{} (primary of {} from {:?}, elected by {:?}) and s{} (primary of {} from {:?}, elected by {:?}) acted at the same time",
                        a.0, a.1, a.2, a.4, b.0, b.1, b.2, b.4
                    ),
                );
            }
        }
    }
}
