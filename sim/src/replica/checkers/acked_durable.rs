//! `acked_durable`: see the table in `mod.rs`.

use super::*;

/// Acknowledged commits survive (sync), or their loss is bounded and reported (async).
pub fn acked_durable(h: &RHistory, out: &mut Vec<Violation>) {
    let Some((p, l)) = final_lineage(h) else {
        return;
    };
    let reported = reported_lost(h);
    // Distinct lost tids: a duplicate answer names the same transaction again.
    let mut lost: BTreeSet<Tid> = BTreeSet::new();
    for e in &h.events {
        if let REvent::Ack {
            at,
            server,
            client,
            request,
            tid,
            ..
        } = e
        {
            if *tid <= l.horizon {
                continue;
            }
            let held = l.txns.get(tid).and_then(|(_, k)| *k) == Some((*client, *request));
            if held {
                continue;
            }
            lost.insert(*tid);
            match h.mode {
                CommitMode::Sync => push(
                    out,
                    "acked_durable",
                    &[*server, p],
                    format!(
                        "c{client}r{request} acknowledged by s{server} at {at:?} as {tid} is not in the final lineage (s{p})"
                    ),
                ),
                CommitMode::Async { .. } => {
                    if !reported.contains(tid) && !wiped_after(h, *server, *at) {
                        push(
                            out,
                            "acked_durable",
                            &[*server, p],
                            format!("c{client}r{request} ({tid}) was lost without a report"),
                        );
                    }
                }
            }
        }
    }
    if let CommitMode::Async { window } = h.mode {
        // Only a change of primary can lose an async tail: the first start loses nothing.
        let changes = (primaries(h).len() as u64).saturating_sub(1);
        let lost = lost.len() as u64;
        if lost > window * changes {
            push(
                out,
                "acked_durable",
                &[],
                format!("{lost} acknowledged commits lost, above {window} per primary change ({changes})"),
            );
        }
    }
}
