//! Pure election rules: who becomes primary, with which epoch, and how far two servers'
//! histories agree. Every member of a view runs these on the same inputs (the states
//! delivered in agreed order), so every member reaches the same answer without a vote.

use crate::config::ServerId;
use crate::voters::VoterConfig;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use storage::Tid;

/// A primary's term. Each primary has its own epoch, strictly greater than every epoch any
/// earlier primary had; commits carry it and servers refuse older ones.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// One step of a lineage: the primary of `epoch` wrote its first transaction right after
/// `base`. A store's lineage (the list of these, oldest first) says which primary wrote each
/// of its transactions, which is how two stores find where their histories part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    /// The primary's epoch.
    pub epoch: Epoch,
    /// The last transaction before its first one.
    pub base: Tid,
}

/// How many lineage entries a store keeps (older ones are dropped; a server whose history
/// parted from the primary's before the oldest kept entry recovers by objects).
pub const LINEAGE_MAX: usize = 64;

/// What a member tells the others at the start of every regular view of a primary component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// Who.
    pub server: ServerId,
    /// The highest epoch it durably promised to support.
    pub promised: Epoch,
    /// Its last transaction.
    pub last_tid: Tid,
    /// Its lineage (oldest first, at most [`LINEAGE_MAX`] entries).
    pub lineage: Vec<EpochStart>,
    /// The epoch it was the working primary of in its previous view, if any.
    pub primary_in: Option<Epoch>,
    /// False while a recovery fill is open: its store is not consistent at any tid yet.
    pub consistent: bool,
    /// False for a server that restarted after losing its disk, until it has caught up
    /// again: what it promised before is gone, so its vote could elect a second primary.
    pub voter: bool,
    /// The voter configuration its store holds.
    pub config: VoterConfig,
    /// The tid that wrote it (`Tid::ZERO`: the configuration file's). Tids only grow across
    /// primaries, so the highest one reported is the newest configuration step.
    pub config_tid: Tid,
}

impl MemberState {
    /// The epoch of its last transaction (`Epoch(0)` for an empty store).
    pub fn last_epoch(&self) -> Epoch {
        self.lineage.last().map(|e| e.epoch).unwrap_or_default()
    }
}

/// Whether a member's state may carry the history forward: a consistent store that kept its
/// disk, of a server that votes in the configuration it reports.
fn may_carry(s: &MemberState) -> bool {
    s.consistent && s.voter && s.config.votes(s.server)
}

/// The order of histories: (epoch of its last transaction, last tid), the sitting primary on
/// ties, then the lowest server id.
fn rank(s: &MemberState) -> (Epoch, Tid, bool, Reverse<ServerId>) {
    let sitting = s.primary_in == Some(s.last_epoch());
    (s.last_epoch(), s.last_tid, sitting, Reverse(s.server))
}

/// The new primary: among the members that may become primary (a voter of the new set of the
/// configuration it reports, consistent store, its disk kept), the most up-to-date one, by
/// (epoch of its last transaction, last tid); the sitting primary wins a tie, then the lowest
/// server id. `None` if no member qualifies.
///
/// Independent of the order of `states`, and always a member of them.
pub fn choose_primary(states: &[MemberState]) -> Option<ServerId> {
    states
        .iter()
        .filter(|s| may_carry(s) && s.config.eligible(s.server))
        .max_by_key(|s| rank(s))
        .map(|s| s.server)
}

/// Whose history the new primary starts from: the most up-to-date member that votes in the
/// configuration it reports (in either set while a change is under way). Usually the primary
/// itself; a voter on its way out may hold more, and then the primary first catches up from
/// it, so that no commit a majority acknowledged is left behind.
///
/// `None` as well while a voter whose object fill is open is ahead of every member that may
/// carry the history: its store is consistent at no tid, but its log up to the fill's start
/// (what it reports as its last tid) holds transactions no carrier has, which electing now
/// would drop. The view waits for the fill's donor, or any member holding as much, to come
/// back. (Simulator seed 2119 of 5cd2283: a member at tid 608 was elected while a filling
/// voter's log reached 1164, and 570 acknowledged async commits were lost.)
pub fn choose_donor(states: &[MemberState]) -> Option<ServerId> {
    let best = states
        .iter()
        .filter(|s| may_carry(s))
        .max_by_key(|s| rank(s))?;
    (!open_fill_ahead(states, best)).then_some(best.server)
}

/// Whether a voter with an open fill holds, in its own log, more than every member that may
/// carry the history: then [`choose_donor`] chooses none and the view waits.
pub fn waits_for_an_open_fill(states: &[MemberState]) -> bool {
    states
        .iter()
        .filter(|s| may_carry(s))
        .max_by_key(|s| rank(s))
        .is_some_and(|best| open_fill_ahead(states, best))
}

fn open_fill_ahead(states: &[MemberState], best: &MemberState) -> bool {
    let history = |s: &MemberState| (s.last_epoch(), s.last_tid);
    states
        .iter()
        .any(|s| !s.consistent && s.voter && s.config.votes(s.server) && history(s) > history(best))
}

/// Whether the members whose states these are form a primary component: the servers that
/// kept their disks are one under the newest voter configuration any of them reports (both
/// sets of a joint one; every one written at that tid, should two histories have parted
/// there).
///
/// Why the newest alone: a configuration step is written only once the step before it is
/// durable on a majority of its sets, so a component that is a primary component under an
/// older configuration than another component's newest holds a server of that majority, which
/// reports the later step: the two components then answer to one configuration, or to two
/// adjacent ones whose majorities meet (see `voters.rs`). Older reports must not count: a
/// server that joins with an empty store reports its configuration file, and a server that
/// was down through two changes the voters of long ago; either would stop every election.
pub fn is_primary_component(states: &[MemberState]) -> bool {
    let counted: Vec<&MemberState> = states.iter().filter(|s| s.voter).collect();
    let members: Vec<ServerId> = counted.iter().map(|s| s.server).collect();
    let Some(newest) = counted.iter().map(|s| s.config_tid).max() else {
        return false;
    };
    counted
        .iter()
        .filter(|s| s.config_tid == newest)
        .all(|s| s.config.is_primary_component(&members))
}

/// The epoch the next primary takes: above every epoch any member promised or wrote in.
pub fn next_epoch(states: &[MemberState]) -> Epoch {
    let top = states
        .iter()
        .map(|s| s.promised.max(s.last_epoch()))
        .max()
        .unwrap_or_default();
    Epoch(top.0 + 1)
}

/// The last tid up to which history `mine` (lineage, last tid) equals history `theirs`:
/// `Some(my_last)` if mine is a prefix of theirs, a smaller tid if mine parted from theirs
/// there, `None` if the lineages kept are too short to tell.
///
/// Why lineages decide it: a store only accepts epoch `e`'s transactions after its history up
/// to `e`'s base was made equal to that primary's (recovery truncates and catches up first),
/// so two stores holding epoch `e` with the same base agree up to the base, and within `e`
/// (one primary, one sequence) up to the shorter of their two ends.
pub fn common_prefix(
    mine: &[EpochStart],
    my_last: Tid,
    theirs: &[EpochStart],
    their_last: Tid,
) -> Option<Tid> {
    if my_last == Tid::ZERO {
        return Some(Tid::ZERO);
    }
    for i in (0..mine.len()).rev() {
        let my_end = mine.get(i + 1).map(|n| n.base).unwrap_or(my_last);
        if let Some(j) = theirs
            .iter()
            .position(|t| t.epoch == mine[i].epoch && t.base == mine[i].base)
        {
            let their_end = theirs.get(j + 1).map(|n| n.base).unwrap_or(their_last);
            return Some(my_end.min(their_end));
        }
    }
    // No shared epoch: they agree on nothing after the oldest base we know, and on everything
    // before it only if that base is the beginning.
    match mine.first() {
        Some(first) if first.base == Tid::ZERO => Some(Tid::ZERO),
        Some(_) => None,
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voters::VoterSet;
    use proptest::prelude::*;

    /// Voters `0..n` except `remote`, weight 1.
    fn cfg(n: u32, remote: &[u32]) -> VoterConfig {
        VoterConfig::single(VoterSet::new(
            (0..n).filter(|id| !remote.contains(id)).map(|id| (id, 1)),
        ))
    }

    fn with(c: &VoterConfig, mut v: Vec<MemberState>) -> Vec<MemberState> {
        for s in &mut v {
            s.config = c.clone();
            s.config_tid = Tid(10);
        }
        v
    }

    fn st(server: u32, epochs: &[(u64, u64)], last: u64) -> MemberState {
        MemberState {
            server,
            promised: Epoch(epochs.last().map(|e| e.0).unwrap_or(0)),
            last_tid: Tid(last),
            lineage: epochs
                .iter()
                .map(|(e, b)| EpochStart {
                    epoch: Epoch(*e),
                    base: Tid(*b),
                })
                .collect(),
            primary_in: None,
            consistent: true,
            voter: true,
            config: cfg(3, &[]),
            config_tid: Tid::ZERO,
        }
    }

    #[test]
    fn newest_epoch_beats_longer_history() {
        let c = cfg(3, &[]);
        let old = st(0, &[(1, 0), (2, 50)], 200); // a former primary with an unreplicated tail
        let new = st(1, &[(1, 0), (2, 50), (3, 120)], 130);
        assert_eq!(
            choose_primary(&with(&c, vec![old.clone(), new.clone()])),
            Some(1)
        );
        assert_eq!(choose_primary(&with(&c, vec![new, old])), Some(1));
    }

    #[test]
    fn no_donor_while_a_voter_with_an_open_fill_is_ahead() {
        let c = cfg(3, &[]);
        let behind = st(1, &[(1, 0), (3, 500)], 608);
        let mut filling = st(2, &[(1, 0), (3, 500), (4, 773)], 1164);
        filling.consistent = false;
        assert_eq!(
            choose_donor(&with(&c, vec![behind.clone(), filling.clone()])),
            None
        );
        // Its fill behind the carrier's history: no wait.
        let ahead = st(0, &[(1, 0), (3, 500), (5, 1100)], 1200);
        assert_eq!(
            choose_donor(&with(&c, vec![behind.clone(), filling.clone(), ahead])),
            Some(0)
        );
        // A member without a vote holds nothing the election must keep.
        let c2 = cfg(3, &[2]);
        assert_eq!(choose_donor(&with(&c2, vec![behind, filling])), Some(1));
    }

    #[test]
    fn sitting_primary_wins_ties_then_lowest_id() {
        let c = cfg(3, &[]);
        let a = st(0, &[(4, 0)], 9);
        let mut b = st(2, &[(4, 0)], 9);
        assert_eq!(
            choose_primary(&with(&c, vec![a.clone(), b.clone()])),
            Some(0)
        );
        b.primary_in = Some(Epoch(4));
        assert_eq!(choose_primary(&with(&c, vec![a, b])), Some(2));
    }

    #[test]
    fn remote_and_inconsistent_members_never_chosen() {
        let c = cfg(3, &[2]);
        let mut a = st(0, &[(1, 0)], 5);
        let b = st(1, &[(1, 0)], 4);
        let r = st(2, &[(1, 0)], 9);
        assert_eq!(
            choose_primary(&with(&c, vec![a.clone(), b.clone(), r.clone()])),
            Some(0)
        );
        a.consistent = false;
        assert_eq!(
            choose_primary(&with(&c, vec![a.clone(), b, r.clone()])),
            Some(1)
        );
        assert_eq!(choose_primary(&with(&c, vec![a, r])), None);
    }

    #[test]
    fn a_leaving_voter_with_more_history_is_the_donor() {
        // Joint {0,1,2} -> {0,1,3}: s2 leaves and holds the most; s3 has not caught up.
        let joint = VoterConfig {
            voters: VoterSet::new([(0, 1), (1, 1), (3, 1)]),
            old: Some(VoterSet::new([(0, 1), (1, 1), (2, 1)])),
        };
        let states = with(
            &joint,
            vec![
                st(0, &[(1, 0)], 7),
                st(2, &[(1, 0)], 9),
                st(3, &[(1, 0)], 3),
            ],
        );
        assert_eq!(choose_primary(&states), Some(0));
        assert_eq!(choose_donor(&states), Some(2));
        assert!(is_primary_component(&states));
        // Under the joint configuration (the newest reported), {0, 3} is no majority of the
        // old set; a member still on the old set (older) changes nothing.
        let mut old_only = states.clone();
        old_only[2].config = VoterConfig::single(VoterSet::new([(0, 1), (1, 1), (2, 1)]));
        old_only[2].config_tid = Tid(5);
        assert!(is_primary_component(&old_only));
        old_only.remove(1);
        assert!(
            !is_primary_component(&old_only),
            "{{0,3}} is no majority of {{0,1,2}}"
        );
    }

    #[test]
    fn only_the_newest_configuration_reported_binds() {
        // Voters {0,3,4} since tid 20; s5 joins on an empty store with the file's {0,1,2}.
        let now = VoterConfig::single(VoterSet::new([(0, 1), (3, 1), (4, 1)]));
        let mut states = vec![
            st(0, &[(1, 0)], 30),
            st(3, &[(1, 0)], 30),
            st(4, &[(1, 0)], 30),
        ];
        for s in &mut states {
            s.config = now.clone();
            s.config_tid = Tid(20);
        }
        let mut fresh = st(5, &[], 0);
        fresh.config = cfg(3, &[]);
        assert!(is_primary_component(&states));
        states.push(fresh);
        assert!(
            is_primary_component(&states),
            "a file's voters never bind a stored set"
        );
        // Two histories that parted at one tid: both configurations bind.
        let mut forked = states.clone();
        forked[1].config = VoterConfig::single(VoterSet::new([(1, 1), (2, 1), (3, 1)]));
        assert!(!is_primary_component(&forked));
        // A brand-new cluster: every member on the file's voters.
        let new: Vec<MemberState> = (0..2).map(|i| st(i, &[], 0)).collect();
        assert!(is_primary_component(&new), "2 of {{0,1,2}}");
        assert!(!is_primary_component(&new[1..]));
    }

    #[test]
    fn next_epoch_is_above_promises_and_histories() {
        let mut a = st(0, &[(3, 0)], 5);
        a.promised = Epoch(7);
        let b = st(1, &[(3, 0), (5, 4)], 6);
        assert_eq!(next_epoch(&[a, b]), Epoch(8));
        assert_eq!(next_epoch(&[]), Epoch(1));
    }

    fn l(v: &[(u64, u64)]) -> Vec<EpochStart> {
        v.iter()
            .map(|(e, b)| EpochStart {
                epoch: Epoch(*e),
                base: Tid(*b),
            })
            .collect()
    }

    #[test]
    fn common_prefix_cases() {
        let primary = l(&[(1, 0), (2, 50), (4, 90)]);
        // A prefix: behind in the same epoch.
        assert_eq!(
            common_prefix(&l(&[(1, 0), (2, 50)]), Tid(70), &primary, Tid(120)),
            Some(Tid(70))
        );
        // Parted: wrote past epoch 2's end in epoch 2 (an async tail), then epoch 3 never
        // made it into the primary's lineage.
        assert_eq!(
            common_prefix(&l(&[(1, 0), (2, 50), (3, 95)]), Tid(99), &primary, Tid(120)),
            Some(Tid(90))
        );
        assert_eq!(common_prefix(&[], Tid(0), &primary, Tid(120)), Some(Tid(0)));
        assert_eq!(
            common_prefix(&l(&[(9, 0)]), Tid(5), &primary, Tid(120)),
            Some(Tid(0))
        );
        assert_eq!(
            common_prefix(&l(&[(9, 40)]), Tid(45), &primary, Tid(120)),
            None
        );
        // Ahead of them in the same epoch: agree up to their end.
        assert_eq!(
            common_prefix(&primary, Tid(130), &primary, Tid(120)),
            Some(Tid(120))
        );
    }

    fn arb_state() -> impl Strategy<Value = MemberState> {
        (
            0u32..6,
            0u64..5,
            0u64..5,
            0u64..100,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(server, promised, e, last, sitting, consistent, voter)| {
                MemberState {
                    server,
                    promised: Epoch(promised),
                    last_tid: Tid(last),
                    lineage: if e == 0 {
                        vec![]
                    } else {
                        vec![EpochStart {
                            epoch: Epoch(e),
                            base: Tid(0),
                        }]
                    },
                    primary_in: sitting.then_some(Epoch(e)),
                    consistent,
                    voter,
                    config: cfg(6, &[5]),
                    config_tid: Tid::ZERO,
                }
            })
    }

    proptest! {
        #[test]
        fn choice_is_a_member_and_order_independent(
            mut states in proptest::collection::vec(arb_state(), 0..6),
            rot in 0usize..6,
        ) {
            // One state per server, as in a view.
            states.sort_by_key(|s| s.server);
            states.dedup_by_key(|s| s.server);
            let c = cfg(6, &[5]);
            let a = choose_primary(&states);
            if let Some(p) = a {
                prop_assert!(states.iter().any(|s| s.server == p && s.consistent && s.voter));
                prop_assert!(c.eligible(p));
            }
            let n = states.len().max(1);
            states.rotate_left(rot % n);
            states.reverse();
            prop_assert_eq!(choose_primary(&states), a);
            let e = next_epoch(&states);
            prop_assert!(states.iter().all(|s| s.promised < e && s.last_epoch() < e));
        }
    }
}
