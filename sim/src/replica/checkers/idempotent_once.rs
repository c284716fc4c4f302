//! `idempotent_once`: see the table in `mod.rs`.

use super::*;

/// Each idempotency key is applied at most once, at the tid its acks named.
pub fn idempotent_once(h: &RHistory, out: &mut Vec<Violation>) {
    let Some((p, l)) = final_lineage(h) else {
        return;
    };
    let mut seen: BTreeMap<(u64, u64), Tid> = BTreeMap::new();
    for (tid, (_, k)) in &l.txns {
        if let Some(k) = k {
            if let Some(first) = seen.insert(*k, *tid) {
                push(
                    out,
                    "idempotent_once",
                    &[p],
                    format!("c{}r{} applied twice: {first} and {tid}", k.0, k.1),
                );
            }
        }
    }
    // An async ack of a transaction later reported lost names a tid that is gone; the retry
    // that followed legitimately applied the request again (acked_durable bounds such losses).
    let reported = reported_lost(h);
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
            if matches!(h.mode, CommitMode::Async { .. })
                && (reported.contains(tid) || wiped_after(h, *server, *at))
            {
                continue;
            }
            if let Some(t) = seen.get(&(*client, *request)) {
                if t != tid {
                    push(
                        out,
                        "idempotent_once",
                        &[p],
                        format!("c{client}r{request} acknowledged as {tid} but applied as {t}"),
                    );
                }
            }
        }
    }
}
