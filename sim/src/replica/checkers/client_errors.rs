//! `client_errors`: see the table in `mod.rs`.

use super::*;

/// Clients see no final error but conflicts.
pub fn client_errors(h: &RHistory, out: &mut Vec<Violation>) {
    for e in &h.events {
        if let REvent::Failed {
            at,
            client,
            request,
            error,
        } = e
        {
            if !error.starts_with("conflict") {
                push(
                    out,
                    "client_errors",
                    &[],
                    format!("c{client}r{request} failed at {at:?}: {error}"),
                );
            }
        }
    }
}
