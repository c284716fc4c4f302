//! `prefix_agreement`: see the table in `mod.rs`.

use super::*;

/// What each server applied (and did not report lost) is in the final lineage.
pub fn prefix_agreement(h: &RHistory, out: &mut Vec<Violation>) {
    let Some((p, l)) = final_lineage(h) else {
        return; // convergence reports it
    };
    for (s, applied) in applied_by_server(h) {
        if h.finals.get(&s).is_some_and(|f| f.removed) {
            // A removed server took its store out of the cluster, and nobody reconciles it
            // any more: one that applies its removal stops at once, but one cut off while it
            // was removed never hears of it (every member refuses it), so a tail it applied
            // from a primary that lost it is never reported there.
            continue;
        }
        for (tid, d) in applied {
            if tid <= l.horizon || tid > l.last {
                if tid > l.last {
                    push(
                        out,
                        "prefix_agreement",
                        &[s, p],
                        format!(
                            "s{s} applied {tid} beyond the final primary s{p}'s last {}",
                            l.last
                        ),
                    );
                }
                continue;
            }
            match l.txns.get(&tid) {
                Some((ld, _)) if *ld == d => {}
                Some(_) => push(
                    out,
                    "prefix_agreement",
                    &[s, p],
                    format!("s{s} applied {tid} with other content than the lineage (s{p})"),
                ),
                None => push(
                    out,
                    "prefix_agreement",
                    &[s, p],
                    format!("s{s} applied {tid}, which the lineage (s{p}) does not hold, and never reported it lost"),
                ),
            }
        }
    }
}
