//! Who votes: the voter configuration, kept in the store so that it changes with the history.
//!
//! A cluster starts with the voters of its configuration file. From the first voter change on,
//! the voter configuration is an object of the store ([`voters_oid`]) written by the primary
//! as a transaction, so every server holds the configuration of the history it holds, a
//! recovering server gets it with the rest, and a lost transaction takes its change with it.
//!
//! # Changing voters: joint configurations
//! A change from voter set `old` to `new` goes through a joint configuration `(old, new)`:
//! under it a set of servers is a primary component only if it is one under `old` *and* under
//! `new`, and a commit is durable only once it is durable on a strict majority of both. The
//! primary writes the joint configuration, waits until a majority of both sets holds it, then
//! writes `new`; the next change waits until a majority of `new` holds that. In every regular
//! view each member reports its configuration, and the tid that wrote it, in its state; a
//! component is primary only if it is a primary component under the **newest** configuration
//! its members report (older reports, such as the configuration file of a server joining on
//! an empty store, bind nobody).
//!
//! Why two disjoint components can never both be primary: take the newest configuration step
//! either of them reports. A component whose members all report configurations older than a
//! committed step still holds a majority of one of them, and that majority contains a server
//! that holds the next step (it was durable on a majority before the step after it was
//! written), which then reports it: so each component meets the constraint of the newest
//! finished step, and any two sets that are primary components under the same voter set
//! intersect. `sim replica` checks it under storms with changes in the mix
//! (`checkers/disjoint_primaries.rs`).

use crate::config::{ReplicaConfig, ServerId};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use storage::Oid;

/// The object holding the voter configuration once it was changed (absent: the configuration
/// file's voters).
pub fn voters_oid() -> Oid {
    Oid::new(Bytes::from_static(&[crate::RESERVED_OID_PREFIX, b'v'])).expect("short oid")
}

/// Servers with a vote and their weights (every weight above zero).
///
/// Its serde form is the list of `(server, weight)` by id; deserializing checks it like the
/// stored form (see [`VoterSetError`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(ServerId, u32)>", into = "Vec<(ServerId, u32)>")]
pub struct VoterSet(BTreeMap<ServerId, u32>);

/// Why a list of `(server, weight)` is not a voter set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VoterSetError {
    /// More than [`VOTERS_MAX`] voters.
    #[error("{0} voters, max {VOTERS_MAX}")]
    TooMany(usize),
    /// A voter of weight zero (a server without a vote is left out, not listed with zero).
    #[error("voter {0} has weight zero")]
    ZeroWeight(ServerId),
    /// The same server twice.
    #[error("voter {0} is listed twice")]
    Duplicate(ServerId),
}

impl TryFrom<Vec<(ServerId, u32)>> for VoterSet {
    type Error = VoterSetError;

    /// Unlike [`VoterSet::new`], which leaves zero weights out, refuses anything a correct
    /// writer would not have written: this is how sets are read back.
    fn try_from(voters: Vec<(ServerId, u32)>) -> Result<VoterSet, VoterSetError> {
        if voters.len() > VOTERS_MAX {
            return Err(VoterSetError::TooMany(voters.len()));
        }
        let mut set = BTreeMap::new();
        for (id, weight) in voters {
            if weight == 0 {
                return Err(VoterSetError::ZeroWeight(id));
            }
            if set.insert(id, weight).is_some() {
                return Err(VoterSetError::Duplicate(id));
            }
        }
        Ok(VoterSet(set))
    }
}

impl From<VoterSet> for Vec<(ServerId, u32)> {
    fn from(set: VoterSet) -> Self {
        set.0.into_iter().collect()
    }
}

impl VoterSet {
    /// The set of `(server, weight)`; zero weights are left out.
    pub fn new(voters: impl IntoIterator<Item = (ServerId, u32)>) -> VoterSet {
        VoterSet(voters.into_iter().filter(|(_, w)| *w > 0).collect())
    }

    /// The voters and their weights, by id.
    pub fn iter(&self) -> impl Iterator<Item = (ServerId, u32)> + '_ {
        self.0.iter().map(|(s, w)| (*s, *w))
    }

    /// The voters' ids.
    pub fn ids(&self) -> Vec<ServerId> {
        self.0.keys().copied().collect()
    }

    /// Whether `id` votes.
    pub fn contains(&self, id: ServerId) -> bool {
        self.0.contains_key(&id)
    }

    /// How many voters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nobody votes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn total(&self) -> u64 {
        self.0.values().map(|w| *w as u64).sum()
    }

    /// The weight of `members` (each counted once; non-voters weigh nothing).
    pub fn weight_of(&self, members: &[ServerId]) -> u64 {
        self.0
            .iter()
            .filter(|(s, _)| members.contains(s))
            .map(|(_, w)| *w as u64)
            .sum()
    }

    /// The primary-component rule: more than half of the weight, or exactly half with the
    /// lowest voter id (the tie-breaker). Two disjoint sets never both qualify.
    pub fn is_primary_component(&self, members: &[ServerId]) -> bool {
        let (w, total) = (self.weight_of(members), self.total());
        if total == 0 {
            return false;
        }
        2 * w > total
            || (2 * w == total && self.0.keys().next().is_some_and(|t| members.contains(t)))
    }

    /// A strict majority of the weight: what a durable commit needs (it meets every set that
    /// is a primary component, tie-breaker included).
    pub fn is_majority(&self, members: &[ServerId]) -> bool {
        2 * self.weight_of(members) > self.total()
    }
}

/// The voter configuration: one voter set, or two while a change is under way.
///
/// Deserializing checks each set but not that `voters` is non-empty: whoever reads one from
/// outside checks that (a member's state in `wire.rs`, the stored form in [`Self::decode`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterConfig {
    /// The voters (the new ones while joint).
    pub voters: VoterSet,
    /// While a change is under way: the voters before it.
    pub old: Option<VoterSet>,
}

/// Layout version of the stored object.
const VOTERS_VERSION: u8 = 1;

/// Voters at most in one set (a bound for decoding).
pub const VOTERS_MAX: usize = 64;

impl VoterConfig {
    /// The configuration file's voters (failover servers with a weight).
    pub fn from_file(cfg: &ReplicaConfig) -> VoterConfig {
        VoterConfig {
            voters: VoterSet::new(
                cfg.servers
                    .iter()
                    .map(|s| (s.id, crate::config::voting_weight(s))),
            ),
            old: None,
        }
    }

    /// A single set.
    pub fn single(voters: VoterSet) -> VoterConfig {
        VoterConfig { voters, old: None }
    }

    /// Whether a change is under way.
    pub fn is_joint(&self) -> bool {
        self.old.is_some()
    }

    fn sets(&self) -> impl Iterator<Item = &VoterSet> {
        std::iter::once(&self.voters).chain(self.old.iter())
    }

    /// A primary component under every set.
    pub fn is_primary_component(&self, members: &[ServerId]) -> bool {
        self.sets().all(|s| s.is_primary_component(members))
    }

    /// A strict majority of every set.
    pub fn is_majority(&self, members: &[ServerId]) -> bool {
        self.sets().all(|s| s.is_majority(members))
    }

    /// Whether `id` votes in either set.
    pub fn votes(&self, id: ServerId) -> bool {
        self.sets().any(|s| s.contains(id))
    }

    /// Whether `id` may become primary: a voter of the (new) set.
    pub fn eligible(&self, id: ServerId) -> bool {
        self.voters.contains(id)
    }

    /// The stored form.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(VOTERS_VERSION);
        put_set(&mut b, &self.voters);
        match &self.old {
            None => b.put_u8(0),
            Some(o) => {
                b.put_u8(1);
                put_set(&mut b, o);
            }
        }
        b.freeze()
    }

    /// Decodes [`Self::encode`]; `None` if malformed.
    pub fn decode(mut b: &[u8]) -> Option<VoterConfig> {
        let r = &mut b;
        if take(r, 1)?[0] != VOTERS_VERSION {
            return None;
        }
        let voters = get_set(r)?;
        let old = match take(r, 1)?[0] {
            0 => None,
            1 => Some(get_set(r)?),
            _ => return None,
        };
        (r.is_empty() && !voters.is_empty()).then_some(VoterConfig { voters, old })
    }
}

impl std::fmt::Display for VoterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(s, w)| match w {
                1 => format!("s{s}"),
                w => format!("s{s}x{w}"),
            })
            .collect();
        write!(f, "{{{}}}", parts.join(","))
    }
}

impl std::fmt::Display for VoterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.old {
            None => write!(f, "{}", self.voters),
            Some(o) => write!(f, "{} -> {}", o, self.voters),
        }
    }
}

fn put_set(b: &mut BytesMut, s: &VoterSet) {
    b.put_u8(s.len() as u8);
    for (id, w) in s.iter() {
        b.put_u32(id);
        b.put_u32(w);
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (h, t) = r.split_at(n);
    *r = t;
    Some(h)
}

fn get_set(r: &mut &[u8]) -> Option<VoterSet> {
    let n = take(r, 1)?[0] as usize;
    if n > VOTERS_MAX {
        return None;
    }
    let mut voters = Vec::with_capacity(n);
    for _ in 0..n {
        let id = u32::from_be_bytes(take(r, 4)?.try_into().ok()?);
        let w = u32::from_be_bytes(take(r, 4)?.try_into().ok()?);
        voters.push((id, w));
    }
    VoterSet::try_from(voters).ok()
}

/// Whether two components could both be primary: both are primary components under every
/// configuration their members report, and they share no member. The rule of
/// [`crate::election`] must make this impossible for histories the protocol produces; the
/// simulator's checker asks it of every pair of overlapping primaries.
pub fn both_primary(a: (&[ServerId], &[VoterConfig]), b: (&[ServerId], &[VoterConfig])) -> bool {
    let primary = |(m, cs): (&[ServerId], &[VoterConfig])| {
        !cs.is_empty() && cs.iter().all(|c| c.is_primary_component(m))
    };
    primary(a) && primary(b) && !a.0.iter().any(|s| b.0.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[u32]) -> VoterSet {
        VoterSet::new(ids.iter().map(|i| (*i, 1)))
    }

    #[test]
    fn joint_needs_both() {
        let c = VoterConfig {
            voters: set(&[0, 1, 3]),
            old: Some(set(&[0, 1, 2])),
        };
        assert!(c.is_primary_component(&[0, 1]));
        assert!(!c.is_primary_component(&[0, 2]), "old only");
        assert!(!c.is_primary_component(&[0, 3]), "new only");
        assert!(c.is_majority(&[1, 2, 3]));
        assert!(!c.is_majority(&[2, 3]));
        assert!(c.votes(2) && !c.eligible(2) && c.eligible(3));
    }

    #[test]
    fn round_trip_and_bad_bytes() {
        let c = VoterConfig {
            voters: VoterSet::new([(1, 2), (4, 1)]),
            old: Some(set(&[1, 2, 3])),
        };
        assert_eq!(VoterConfig::decode(&c.encode()), Some(c.clone()));
        let e = c.encode();
        for n in 0..e.len() {
            assert_eq!(VoterConfig::decode(&e[..n]), None, "truncated at {n}");
        }
        assert_eq!(VoterConfig::decode(&[1, 0, 0]), None, "no voters");
        assert_eq!(c.to_string(), "{s1,s2,s3} -> {s1x2,s4}");
    }

    #[test]
    fn a_set_read_back_refuses_what_no_writer_writes() {
        assert_eq!(
            VoterSet::try_from(vec![(2, 1), (1, 3)]),
            Ok(VoterSet::new([(1, 3), (2, 1)]))
        );
        assert_eq!(
            VoterSet::try_from(vec![(1, 1), (2, 0)]),
            Err(VoterSetError::ZeroWeight(2))
        );
        assert_eq!(
            VoterSet::try_from(vec![(1, 1), (1, 2)]),
            Err(VoterSetError::Duplicate(1))
        );
        let many: Vec<(ServerId, u32)> = (0..=VOTERS_MAX as u32).map(|i| (i, 1)).collect();
        assert_eq!(
            VoterSet::try_from(many),
            Err(VoterSetError::TooMany(VOTERS_MAX + 1))
        );
        // The stored form goes through the same checks: version, two voters (1, 1) and
        // (1, 1), no old set.
        let twice = [1, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0];
        assert_eq!(VoterConfig::decode(&twice), None);
        let once = [1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0];
        assert_eq!(
            VoterConfig::decode(&once),
            Some(VoterConfig::single(set(&[1])))
        );
    }

    proptest! {
        /// Under one joint configuration, or one set, two disjoint sets are never both
        /// primary components.
        #[test]
        fn disjoint_sets_never_both_primary(
            old in proptest::collection::vec(0u32..3, 6),
            new in proptest::collection::vec(0u32..3, 6),
            side in proptest::collection::vec(0u8..3, 6),
        ) {
            let mk = |w: &Vec<u32>| VoterSet::new(w.iter().enumerate().map(|(i, w)| (i as u32, *w)));
            let (o, n) = (mk(&old), mk(&new));
            prop_assume!(!o.is_empty() && !n.is_empty());
            let c = VoterConfig { voters: n, old: Some(o) };
            let a: Vec<u32> = (0..6).filter(|i| side[*i as usize] == 0).collect();
            let b: Vec<u32> = (0..6).filter(|i| side[*i as usize] == 1).collect();
            let cs = std::slice::from_ref(&c);
            prop_assert!(!both_primary((&a, cs), (&b, cs)));
        }
    }
}
