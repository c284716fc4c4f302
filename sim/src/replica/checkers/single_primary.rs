//! `single_primary`: see the table in `mod.rs`.

use super::*;

/// At most one primary per epoch; primaries only in primary components.
pub fn single_primary(h: &RHistory, out: &mut Vec<Violation>) {
    let mut by_epoch: BTreeMap<Epoch, BTreeSet<ServerId>> = BTreeMap::new();
    for (at, s, e, pc) in primaries(h) {
        by_epoch.entry(e).or_default().insert(s);
        if !h.eligible.contains(&s) {
            push(
                out,
                "single_primary",
                &[s],
                format!("s{s}, which may not become primary (remote group), became primary of {e} at {at:?}"),
            );
        }
        if !pc {
            push(
                out,
                "single_primary",
                &[s],
                format!("s{s} became primary of {e} at {at:?} outside a primary component"),
            );
        }
    }
    for (e, servers) in by_epoch {
        if servers.len() > 1 {
            let v: Vec<ServerId> = servers.into_iter().collect();
            push(
                out,
                "single_primary",
                &v,
                format!("{} primaries of {e}", v.len()),
            );
        }
    }
}
