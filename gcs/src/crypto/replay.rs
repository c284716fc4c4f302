//! Replay protection: per sender node, the newest incarnation seen and a sliding window of the
//! packet counters already accepted from it.

use crate::{NodeId, ProcId};
use std::collections::BTreeMap;

/// How many counters below the highest one seen are still accepted (once each).
///
/// A sealer's counter grows by one per datagram, so a packet is only refused as too old when
/// more than `WINDOW` later datagrams of the same sender overtook it on the network.
pub const WINDOW: u64 = 1024;

const WORDS: usize = (WINDOW / 64) as usize;

/// Most sender nodes whose replay state is kept. The configuration's node ids are fixed and a
/// ring has at most [`crate::wire::MEMBERS_MAX`] members, so this is far above any real cluster;
/// only authenticated packets create an entry, so reaching it needs the cluster key. Past it,
/// packets from further nodes are refused ([`Verdict::TooManySenders`]) rather than evicting a
/// tracked node, which would let that node's old packets be replayed.
pub const MAX_TRACKED_NODES: usize = 4096;

/// A sliding window over one sender incarnation's counters.
///
/// Bit `c % WINDOW` of the bitmap stands for counter `c` for every `c` in
/// `top + 1 - WINDOW ..= top`; memory is constant (`WINDOW` bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest counter accepted; `None` before the first.
    top: Option<u64>,
    bits: [u64; WORDS],
}

/// What the window says about a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen and recent enough.
    Fresh,
    /// Already accepted once.
    Replay,
    /// More than [`WINDOW`] below the highest counter accepted: cannot tell, so refused.
    TooOld,
    /// From an incarnation older than the newest seen for that node.
    OldIncarnation,
    /// A node beyond [`MAX_TRACKED_NODES`].
    TooManySenders,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is fresh.
    pub const fn new() -> Self {
        ReplayWindow {
            top: None,
            bits: [0; WORDS],
        }
    }

    fn bit(c: u64) -> (usize, u64) {
        let i = c % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `counter` would be accepted. Does not change the window.
    pub fn check(&self, counter: u64) -> Verdict {
        let Some(top) = self.top else {
            return Verdict::Fresh;
        };
        if counter > top {
            return Verdict::Fresh;
        }
        if top - counter >= WINDOW {
            return Verdict::TooOld;
        }
        let (w, m) = Self::bit(counter);
        if self.bits[w] & m != 0 {
            Verdict::Replay
        } else {
            Verdict::Fresh
        }
    }

    /// Records `counter` as accepted. Call only after `check` said [`Verdict::Fresh`] and the
    /// packet authenticated; anything else is ignored.
    pub fn accept(&mut self, counter: u64) {
        if self.check(counter) != Verdict::Fresh {
            return;
        }
        match self.top {
            Some(top) if counter <= top => {}
            Some(top) if counter - top < WINDOW => {
                // Forget the counters that slide out: those that now share a slot with
                // `top + 1 ..= counter`.
                for c in top + 1..=counter {
                    let (w, m) = Self::bit(c);
                    self.bits[w] &= !m;
                }
                self.top = Some(counter);
            }
            _ => {
                self.bits = [0; WORDS];
                self.top = Some(counter);
            }
        }
        let (w, m) = Self::bit(counter);
        self.bits[w] |= m;
    }

    /// The highest counter accepted.
    pub fn top(&self) -> Option<u64> {
        self.top
    }
}

/// The replay state of every sender node: newest incarnation and its window.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplayGuard {
    nodes: BTreeMap<NodeId, (u64, ReplayWindow)>,
}

impl ReplayGuard {
    /// What a packet from `from` with `counter` would get. Does not change anything.
    pub(crate) fn check(&self, from: ProcId, counter: u64) -> Verdict {
        match self.nodes.get(&from.node) {
            None if self.nodes.len() >= MAX_TRACKED_NODES => Verdict::TooManySenders,
            None => Verdict::Fresh,
            Some((inc, _)) if from.incarnation > *inc => Verdict::Fresh,
            Some((inc, _)) if from.incarnation < *inc => Verdict::OldIncarnation,
            Some((_, w)) => w.check(counter),
        }
    }

    /// Records an authenticated packet that `check` found fresh. A newer incarnation replaces the
    /// node's state: from then on its older incarnations are refused.
    pub(crate) fn accept(&mut self, from: ProcId, counter: u64) {
        if self.check(from, counter) != Verdict::Fresh {
            return;
        }
        let entry = self
            .nodes
            .entry(from.node)
            .or_insert((from.incarnation, ReplayWindow::new()));
        if entry.0 != from.incarnation {
            *entry = (from.incarnation, ReplayWindow::new());
        }
        entry.1.accept(counter);
    }

    /// How many sender nodes are tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn window_basics() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(5), Verdict::Fresh);
        w.accept(5);
        assert_eq!(w.check(5), Verdict::Replay);
        assert_eq!(w.check(4), Verdict::Fresh);
        w.accept(5 + WINDOW - 1);
        assert_eq!(w.check(5), Verdict::Replay);
        assert_eq!(w.check(4), Verdict::TooOld);
        w.accept(5 + WINDOW);
        assert_eq!(w.check(5), Verdict::TooOld);
        assert_eq!(w.check(6), Verdict::Fresh);
        w.accept(u64::MAX);
        assert_eq!(w.check(u64::MAX), Verdict::Replay);
        assert_eq!(w.check(u64::MAX - WINDOW + 1), Verdict::Fresh);
        assert_eq!(w.check(u64::MAX - WINDOW), Verdict::TooOld);
    }

    #[test]
    fn guard_incarnations_and_bound() {
        let mut g = ReplayGuard::default();
        let old = ProcId::new(1, 5);
        let new = ProcId::new(1, 6);
        g.accept(old, 0);
        assert_eq!(g.check(old, 0), Verdict::Replay);
        assert_eq!(g.check(new, 0), Verdict::Fresh);
        g.accept(new, 0);
        assert_eq!(g.check(old, 1), Verdict::OldIncarnation);
        for n in 2..MAX_TRACKED_NODES as u32 + 1 {
            g.accept(ProcId::new(n, 1), 0);
        }
        assert_eq!(g.tracked(), MAX_TRACKED_NODES);
        let extra = ProcId::new(u32::MAX, 1);
        assert_eq!(g.check(extra, 0), Verdict::TooManySenders);
        g.accept(extra, 0);
        assert_eq!(g.tracked(), MAX_TRACKED_NODES);
        // Tracked nodes keep working.
        assert_eq!(g.check(new, 1), Verdict::Fresh);
    }

    proptest! {
        /// The window agrees with the obvious model: a counter is accepted iff it was never
        /// accepted and is within `WINDOW` of the highest accepted so far.
        #[test]
        fn window_matches_model(ops in proptest::collection::vec((0u64..4000, any::<bool>()), 0..600)) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            for (c, big) in ops {
                let c = if big { c.wrapping_mul(1_000_003) } else { c };
                let top = seen.iter().next_back().copied();
                let expect = match top {
                    Some(t) if c + WINDOW <= t => Verdict::TooOld,
                    _ if seen.contains(&c) => Verdict::Replay,
                    _ => Verdict::Fresh,
                };
                prop_assert_eq!(w.check(c), expect);
                if expect == Verdict::Fresh {
                    w.accept(c);
                    seen.insert(c);
                }
                prop_assert_eq!(w.top(), seen.iter().next_back().copied());
            }
        }
    }
}
