//! Added and removed replicas: the servers a running cluster has beyond (or no longer has of)
//! its configuration file.
//!
//! The change is a transaction like any other: the primary writes the membership object
//! ([`replica::membership_oid`]) through the normal commit path, so every server applies it in
//! the same place of the history, a recovering or rebuilt server gets it with the rest of the
//! store, and a retried request is applied once. Every server then re-reads the object
//! ([`replica::Output::MembershipChanged`]) and updates its gcs address book (who it sends to
//! and accepts datagrams from) and the topology it gives clients.
//!
//! Servers come and go this way without a vote: an added server is a read replica (a learner)
//! until a voter change gives it a vote ([`replica::voters`], the replica's own object and
//! protocol), and only a server that votes in no configuration can be removed (a voter loses
//! its vote first). So the address book and the voters change in two steps, each a
//! transaction, and a server is never a voter the others cannot reach.
//!
//! After each change the core hands the driver a new address book (`Output::Peers`, the gcs
//! driver's `CoreOutput::Peers`): datagrams go to those addresses, and a removed server's are
//! refused, so it cannot rejoin. A server whose book is stale (it missed an addition while cut
//! off) still accepts the newcomer's authenticated datagrams (the driver learns its address),
//! so it rings with it and catches up on the change. It also tells the replica its non-voting
//! members (`Replica::set_read_replicas`) and updates the topology pushed to clients.
//!
//! A removal also goes to the gcs node (`gcs::Node::set_removed`), which gives up on a removed
//! daemon as soon as anyone names it in a membership round. A server whose book missed the
//! removal (it was cut off) still hears the removed one if that one stayed up; without this,
//! the two kept forming a ring of their own while the others' rounds waited for a daemon they
//! refuse, and the stale server never rejoined. Now it takes the others' fail set, rings with
//! them, and learns the removal by the normal catch-up. And the removed server itself, once it
//! applies the object naming it removed, leaves the ring for good (`ServerCore::is_removed`):
//! it reads as down with the reason, and `standby-server` exits. One cut off while it was
//! removed never hears of it (every member refuses it): it stays up alone, read-only and ever
//! more stale, until its operator stops it.

use bytes::Bytes;
use replica::{ReplicaConfig, ServerId, VoterConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A server added to the running cluster as a read replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedServer {
    /// Its id (never used before in this cluster).
    pub id: ServerId,
    /// Its name.
    pub name: String,
    /// Its gcs (ring) address, resolved.
    pub gcs: SocketAddr,
    /// Its client address, `host:port`.
    pub client: String,
    /// Its admin address, `host:port`.
    pub admin: String,
}

/// The membership object's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Servers added, in the order they were added.
    pub added: Vec<AddedServer>,
    /// Servers removed (configured or added); their ids are never used again.
    pub removed: Vec<ServerId>,
}

/// One change asked by an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a read replica.
    Add(AddedServer),
    /// Remove a server that has no vote.
    Remove(ServerId),
}

/// Why a membership object or change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The stored object does not decode.
    #[error("the membership object is corrupt: {0}")]
    Corrupt(String),
    /// The id is taken, or was used by a removed server.
    #[error("server id {0} is already used in this cluster (ids are never reused)")]
    IdTaken(ServerId),
    /// No such server.
    #[error("server {0} is not a member")]
    NotMember(ServerId),
    /// The server votes.
    #[error("server {0} votes in elections: take its vote away first (`standby remove-server`)")]
    Voter(ServerId),
    /// A name or address is empty or not `host:port`.
    #[error("{0}")]
    Invalid(String),
}

/// The configured servers a membership applies to: their ids and gcs addresses, and which of
/// them vote.
#[derive(Clone, Debug)]
pub struct Configured {
    /// `(id, gcs address)` of every server in the configuration file.
    pub daemons: Vec<(ServerId, SocketAddr)>,
    /// The replication configuration (who votes).
    pub replica: ReplicaConfig,
}

/// Checks that `a` looks like `host:port` (resolved later); the error names it.
pub fn check_host_port(a: &str) -> Result<(), String> {
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{a:?} is not host:port")),
    }
}

fn host_port(what: &str, a: &str) -> Result<(), MembershipError> {
    check_host_port(a).map_err(|e| MembershipError::Invalid(format!("{what} address {e}")))
}

impl Membership {
    /// Decodes the stored object (absent: nobody added or removed).
    pub fn decode(b: Option<&[u8]>) -> Result<Membership, MembershipError> {
        match b {
            None => Ok(Membership::default()),
            Some(b) => {
                serde_json::from_slice(b).map_err(|e| MembershipError::Corrupt(e.to_string()))
            }
        }
    }

    /// The object's bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The membership after `change`, or why it cannot be made.
    pub fn apply(
        &self,
        change: &MembershipChange,
        configured: &Configured,
        voters: &VoterConfig,
    ) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::Add(s) => {
                if self.added.contains(s) {
                    // Asked again (an operator's retry): nothing to change.
                    return Ok(next);
                }
                let used = configured.daemons.iter().any(|(i, _)| *i == s.id)
                    || self.added.iter().any(|a| a.id == s.id)
                    || self.removed.contains(&s.id);
                if used {
                    return Err(MembershipError::IdTaken(s.id));
                }
                if s.name.is_empty() {
                    return Err(MembershipError::Invalid("empty server name".into()));
                }
                host_port("client", &s.client)?;
                host_port("admin", &s.admin)?;
                next.added.push(s.clone());
            }
            MembershipChange::Remove(id) => {
                if self.removed.contains(id) {
                    return Err(MembershipError::NotMember(*id));
                }
                if voters.votes(*id) {
                    return Err(MembershipError::Voter(*id));
                }
                if let Some(k) = self.added.iter().position(|a| a.id == *id) {
                    next.added.remove(k);
                } else if configured.daemons.iter().any(|(i, _)| i == id) {
                } else {
                    return Err(MembershipError::NotMember(*id));
                }
                next.removed.push(*id);
            }
        }
        Ok(next)
    }

    /// The gcs address book: the configured servers that were not removed, and the added
    /// ones.
    pub fn peers(&self, configured: &Configured) -> Vec<(ServerId, SocketAddr)> {
        configured
            .daemons
            .iter()
            .filter(|(i, _)| !self.removed.contains(i))
            .copied()
            .chain(self.added.iter().map(|a| (a.id, a.gcs)))
            .collect()
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: ServerId) -> bool {
        self.removed.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replica::{CommitMode, GroupKind, ServerSpec};

    fn configured() -> Configured {
        let spec = |id, kind, weight| ServerSpec {
            id,
            name: format!("s{id}"),
            group: if kind == GroupKind::Remote {
                "far".into()
            } else {
                "main".into()
            },
            kind,
            weight,
        };
        Configured {
            daemons: (0..4)
                .map(|i| (i, format!("127.0.0.1:{}", 7000 + i).parse().unwrap()))
                .collect(),
            replica: ReplicaConfig::new(
                vec![
                    spec(0, GroupKind::Failover, 1),
                    spec(1, GroupKind::Failover, 1),
                    spec(2, GroupKind::Failover, 1),
                    spec(3, GroupKind::Remote, 0),
                ],
                CommitMode::Sync,
            ),
        }
    }

    fn v(c: &Configured) -> VoterConfig {
        VoterConfig::from_file(&c.replica)
    }

    fn added(id: ServerId) -> AddedServer {
        AddedServer {
            id,
            name: format!("r{id}"),
            gcs: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
            client: format!("127.0.0.1:{}", 7200 + id),
            admin: format!("localhost:{}", 7300 + id),
        }
    }

    #[test]
    fn add_then_remove_a_read_replica() {
        let c = configured();
        let m = Membership::default()
            .apply(&MembershipChange::Add(added(7)), &c, &v(&c))
            .unwrap();
        let peers = m.peers(&c);
        assert_eq!(peers.len(), 5);
        assert!(peers.contains(&(7, "127.0.0.1:7107".parse().unwrap())));
        let back = Membership::decode(Some(&m.encode())).unwrap();
        assert_eq!(back, m);
        let m = m.apply(&MembershipChange::Remove(7), &c, &v(&c)).unwrap();
        assert_eq!(m.peers(&c).len(), 4);
        assert!(m.is_removed(7));
        // Ids are never reused, and a removed server cannot be removed twice.
        assert_eq!(
            m.apply(&MembershipChange::Add(added(7)), &c, &v(&c)),
            Err(MembershipError::IdTaken(7))
        );
        assert_eq!(
            m.apply(&MembershipChange::Remove(7), &c, &v(&c)),
            Err(MembershipError::NotMember(7))
        );
    }

    #[test]
    fn voters_and_unknown_servers_cannot_be_removed_and_taken_ids_not_added() {
        let c = configured();
        let m = Membership::default();
        assert_eq!(
            m.apply(&MembershipChange::Remove(1), &c, &v(&c)),
            Err(MembershipError::Voter(1))
        );
        assert_eq!(
            m.apply(&MembershipChange::Remove(9), &c, &v(&c)),
            Err(MembershipError::NotMember(9))
        );
        assert_eq!(
            m.apply(&MembershipChange::Add(added(2)), &c, &v(&c)),
            Err(MembershipError::IdTaken(2))
        );
        // A configured remote replica has no vote: it can go.
        let m = m.apply(&MembershipChange::Remove(3), &c, &v(&c)).unwrap();
        assert_eq!(m.peers(&c).len(), 3);
        let mut bad = added(8);
        bad.client = "nohost".into();
        assert!(matches!(
            m.apply(&MembershipChange::Add(bad), &c, &v(&c)),
            Err(MembershipError::Invalid(_))
        ));
    }

    #[test]
    fn a_server_asked_again_changes_nothing_and_a_voter_goes_once_its_vote_has() {
        let c = configured();
        let m = Membership::default()
            .apply(&MembershipChange::Add(added(7)), &c, &v(&c))
            .unwrap();
        assert_eq!(
            m.apply(&MembershipChange::Add(added(7)), &c, &v(&c)),
            Ok(m.clone())
        );
        let mut other = added(7);
        other.name = "other".into();
        assert_eq!(
            m.apply(&MembershipChange::Add(other), &c, &v(&c)),
            Err(MembershipError::IdTaken(7))
        );
        // A configured voter whose vote was taken away (s1), and an added server that was
        // given one (s7), as the voters object says.
        let live = VoterConfig::single(replica::VoterSet::new([(0, 1), (2, 1), (7, 1)]));
        let m2 = m.apply(&MembershipChange::Remove(1), &c, &live).unwrap();
        assert!(m2.is_removed(1));
        assert_eq!(
            m.apply(&MembershipChange::Remove(7), &c, &live),
            Err(MembershipError::Voter(7))
        );
    }

    #[test]
    fn a_corrupt_object_is_an_error() {
        assert!(matches!(
            Membership::decode(Some(b"{not json")),
            Err(MembershipError::Corrupt(_))
        ));
        assert_eq!(Membership::decode(None).unwrap(), Membership::default());
    }
}
