//! `no_duplicate_delivery`: a process delivers each message at most once.
//!
//! EVS paper, specification 2.2 (paraphrased): a given message is delivered at most once by a
//! given process.

use super::{fmt_msg, Index, Sink, Violation};
use crate::history::History;

/// The property's name.
pub const PROPERTY: &str = "no_duplicate_delivery";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    for px in &ix.procs {
        for (i, d) in px.dels.iter().enumerate() {
            if !px.is_first(i) {
                let first = &px.dels[px.del_pos[d.m as usize] as usize];
                sink.report(
                    vec![px.id],
                    Some(d.msg),
                    format!(
                        "{} delivered {} again at {:?} (first at {:?})",
                        px.id,
                        fmt_msg(d.msg),
                        d.at,
                        first.at
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    #[test]
    fn catches_a_second_delivery() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).bcast(1, 0, Agreed, &[1, 2]);
        b.deliver(2, (1, 0), Agreed);
        let v = only(&b.build(), super::PROPERTY);
        assert_eq!(v.len(), 1);
        names(&v, &[2], Some((1, 0)));
    }

    #[test]
    fn same_number_from_two_senders_is_fine() {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]);
        b.bcast(1, 0, Agreed, &[1, 2]).bcast(2, 0, Agreed, &[1, 2]);
        clean(&b.build());
    }
}
