//! `view_ids_ordered`: the view ids each process installs strictly increase.
//!
//! EVS paper, specification 1.2 (paraphrased): configurations are installed by every process in
//! one order consistent across processes (here: the order of `ViewId`, in which a transitional
//! view sorts just before the regular view of the same ring), and no configuration is installed
//! twice by the same process.

use super::{Index, Sink, Violation};
use crate::history::History;

/// The property's name.
pub const PROPERTY: &str = "view_ids_ordered";

/// Checks `h`, appending violations to `out`.
pub fn check(h: &History, out: &mut Vec<Violation>) {
    check_index(&Index::new(h), out);
}

pub(crate) fn check_index(ix: &Index<'_>, out: &mut Vec<Violation>) {
    let mut sink = Sink::new(PROPERTY, out);
    for px in &ix.procs {
        for w in px.views.windows(2) {
            if w[0].id() >= w[1].id() {
                sink.report(
                    vec![px.id],
                    None,
                    format!("{} installed {:?} after {:?}", px.id, w[1].id(), w[0].id()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;

    #[test]
    fn catches_a_smaller_id() {
        let mut b = B::new();
        b.reg_all(3, &[1]).reg_all(2, &[1]);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
    }

    #[test]
    fn catches_the_same_view_twice() {
        let mut b = B::new();
        b.reg_all(3, &[1]).reg_all(3, &[1]);
        let v = only(&b.build(), super::PROPERTY);
        names(&v, &[1], None);
    }

    #[test]
    fn gaps_and_transitional_before_regular_are_fine() {
        let mut b = B::new();
        b.reg_all(3, &[1]).trans_all(9, &[1]).reg_all(9, &[1]);
        clean(&b.build());
    }
}
