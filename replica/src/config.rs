//! The replication configuration: which storage servers exist, which may become primary, and
//! how commits are acknowledged. Every server of a cluster must hold the same configuration:
//! the primary-component rule and the election are computed from it independently by each.

use gcs::NodeId;
use storage::TxnMeta;

/// A storage server's identity: the id of the gcs daemon it runs (one server per daemon).
pub type ServerId = NodeId;

/// What a replica group may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// Servers that vote for the primary component and may become primary.
    Failover,
    /// Servers that receive every commit and serve reads but never vote nor become primary
    /// (another site, a reporting copy).
    Remote,
}

/// One storage server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Its gcs daemon id.
    pub id: ServerId,
    /// A name for humans (logs, status).
    pub name: String,
    /// The replica group it belongs to.
    pub group: String,
    /// What its group may do.
    pub kind: GroupKind,
    /// Its vote in the primary-component rule (failover servers only; 0 = no vote).
    pub weight: u32,
}

/// When a commit is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Answered once the transaction is delivered in the primary's regular view, durable
    /// on the primary, and reported durable by servers holding a majority of the vote weight.
    /// An acknowledged commit then survives every later election.
    Sync,
    /// Answered after the primary's local durable commit. At most `window` acknowledged
    /// transactions may lack a majority's durable copy at any time: that is the bound on what
    /// a failover can lose. Lost transactions are archived and reported.
    Async {
        /// The loss bound, in transactions.
        window: u64,
    },
}

/// How far behind a replica must be before it recovers by objects or by checkpoint instead of
/// by transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// Behind by more than this many tids: fast recovery (newest revision of each object)
    /// rather than every transaction.
    pub fast_after: u64,
    /// An empty store behind by more than this many tids asks its shell for a checkpoint.
    pub checkpoint_after: u64,
    /// Target size of one recovery chunk, in bytes.
    pub chunk_bytes: usize,
    /// Chunks a donor sends per request: the recipient's window (back-pressure).
    pub chunks_per_request: u32,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            fast_after: 100_000,
            checkpoint_after: 1_000_000,
            chunk_bytes: 256 * 1024,
            chunks_per_request: 4,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Every storage server of the cluster.
    pub servers: Vec<ServerSpec>,
    /// When commits are answered.
    pub mode: CommitMode,
    /// Recovery thresholds and stream sizes.
    pub recovery: RecoveryPolicy,
    /// Requests held while no primary is known (elections, swaps) before new ones are refused.
    pub held_max: usize,
    /// The largest transaction accepted, in bytes as [`txn_wire_bytes`] counts them (an
    /// upper bound of its encoding). It travels as one gcs message, and a recovery chunk
    /// carries up to `recovery.chunk_bytes` plus one such transaction, so the node's
    /// `max_message_size` must hold both ([`Self::check_message_limit`]). Default 24 MiB: a
    /// 16 MiB value commits with room to spare, and with the default 256 KiB chunks every
    /// message fits the ring's default 32 MiB.
    pub commit_bytes_max: usize,
    /// Apply delivered commits without waiting for the disk and sync them off the ring's task
    /// ([`crate::Output::Sync`], see `replica/src/replica/sync.rs`). Reads and invalidations
    /// only show what is synced either way. Off by default: on this project's 2-vCPU
    /// benchmark machine the hand-over to the sync thread and back cost more than the fsync
    /// it keeps off the ring's task (1 / 16 / 64 clients, three runs each: 1,128-1,225 /
    /// 6,084-7,770 / 9,241-11,335 commits/s on, 1,182-1,407 / 7,218-7,834 / 9,609-10,313
    /// off, and more CPU per commit on; BENCHMARKS.md).
    pub defer_syncs: bool,
    /// The primary writes the client table (`crate::clients`) at least this many client
    /// commits apart (and at least as many as the table has clients). A restart reads at
    /// most that many transactions' headers to rebuild it. Default 1,000.
    pub client_table_every: u64,
    /// The most clients the table keeps: beyond, the clients with the oldest commits are
    /// dropped when it is written (a retry of such a client's last request then counts as a
    /// new request). Default 100,000 (2.4 MB written once every 100,000 commits at most).
    pub client_table_max: usize,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No server may become primary.
    #[error("no failover server with a non-zero weight: no component could ever be primary")]
    NoVoters,
    /// Two servers share an id.
    #[error("server id {0} is listed twice")]
    DuplicateId(ServerId),
    /// A remote server was given a vote.
    #[error("remote server {0} has a weight: remote groups never vote")]
    RemoteWeight(ServerId),
    /// The largest transaction would not fit one ring message with a recovery chunk.
    #[error(
        "the largest transaction ({commit} bytes) plus a recovery chunk ({chunk} bytes), the \
         largest client table ({table} bytes) and {slack} bytes of envelope exceed the ring's \
         max_message_size ({message} bytes)",
        slack = MESSAGE_SLACK
    )]
    CommitTooLargeForRing {
        /// `commit_bytes_max`.
        commit: usize,
        /// `recovery.chunk_bytes`.
        chunk: usize,
        /// The encoded size of a table of `client_table_max` clients (the last chunk of an
        /// object fill carries one).
        table: usize,
        /// The node's `max_message_size`.
        message: usize,
    },
}

/// Room a ring message keeps beyond the transactions it carries: the replica message's own
/// fields and the server's envelope.
pub const MESSAGE_SLACK: usize = 64 << 10;

/// An upper bound of the bytes a transaction takes in a replica message (fixed-width
/// lengths, tags and tids counted whole): what `commit_bytes_max` and the recovery chunk
/// size are measured in.
pub fn txn_wire_bytes<'a>(
    meta: &TxnMeta,
    records: impl IntoIterator<Item = &'a storage::Record>,
) -> usize {
    96 + meta.user.len()
        + meta.description.len()
        + meta.extension.len()
        + records
            .into_iter()
            .map(|r| 40 + r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len()))
            .sum::<usize>()
}

impl ReplicaConfig {
    /// A configuration with default policies.
    pub fn new(servers: Vec<ServerSpec>, mode: CommitMode) -> ReplicaConfig {
        ReplicaConfig {
            servers,
            mode,
            recovery: RecoveryPolicy::default(),
            held_max: 10_000,
            commit_bytes_max: 24 << 20,
            defer_syncs: false,
            client_table_every: 1_000,
            client_table_max: 100_000,
        }
    }

    /// `n` failover servers with ids `0..n`, weight 1 each, all in group "main" (tests,
    /// benchmarks, single-site clusters).
    pub fn uniform(n: u32, mode: CommitMode) -> ReplicaConfig {
        let servers = (0..n)
            .map(|id| ServerSpec {
                id,
                name: format!("s{id}"),
                group: "main".into(),
                kind: GroupKind::Failover,
                weight: 1,
            })
            .collect();
        ReplicaConfig::new(servers, mode)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, s) in self.servers.iter().enumerate() {
            if self.servers[..i].iter().any(|o| o.id == s.id) {
                return Err(ConfigError::DuplicateId(s.id));
            }
            if s.kind == GroupKind::Remote && s.weight != 0 {
                return Err(ConfigError::RemoteWeight(s.id));
            }
        }
        if self.weight_total() == 0 {
            return Err(ConfigError::NoVoters);
        }
        Ok(())
    }

    /// Checks that every message the replica sends fits a ring message of
    /// `max_message_size` bytes: the largest commit, and a recovery chunk (which may end
    /// with one such commit past its nominal size).
    pub fn check_message_limit(&self, max_message_size: usize) -> Result<(), ConfigError> {
        let chunk = self.recovery.chunk_bytes;
        let table = crate::clients::encoded_len(self.client_table_max);
        let need = self
            .commit_bytes_max
            .saturating_add(chunk)
            .saturating_add(table)
            .saturating_add(MESSAGE_SLACK);
        if need > max_message_size {
            return Err(ConfigError::CommitTooLargeForRing {
                commit: self.commit_bytes_max,
                chunk,
                table,
                message: max_message_size,
            });
        }
        Ok(())
    }

    /// The server `id`, if configured.
    pub fn server(&self, id: ServerId) -> Option<&ServerSpec> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// Whether `id` has a vote in the primary-component rule (unknown servers have none).
    pub fn votes(&self, id: ServerId) -> bool {
        self.server(id).is_some_and(|s| voting_weight(s) > 0)
    }

    /// Whether `id` may become primary.
    pub fn eligible(&self, id: ServerId) -> bool {
        self.server(id)
            .is_some_and(|s| s.kind == GroupKind::Failover && s.weight > 0)
    }

    fn weight_total(&self) -> u64 {
        self.servers.iter().map(|s| voting_weight(s) as u64).sum()
    }

    /// The vote weight of `members` (unknown or remote servers weigh nothing; each server
    /// counts once).
    pub fn weight_of(&self, members: &[ServerId]) -> u64 {
        self.servers
            .iter()
            .filter(|s| members.contains(&s.id))
            .map(|s| voting_weight(s) as u64)
            .sum()
    }

    /// Whether `weight` is a strict majority of the total vote weight.
    pub fn is_majority(&self, weight: u64) -> bool {
        2 * weight > self.weight_total()
    }

    /// The primary-component rule. A set of servers forms the primary component iff
    /// - it holds more than half of the total vote weight, or
    /// - it holds exactly half and contains the tie-breaker: the voter with the lowest id.
    ///
    /// Two disjoint sets can never both qualify, so concurrent partitions never both accept
    /// writes; over time, any two primary components share at least one voter, which is what
    /// carries epochs and acknowledged commits from one to the next.
    pub fn is_primary_component(&self, members: &[ServerId]) -> bool {
        let w = self.weight_of(members);
        let total = self.weight_total();
        if total == 0 {
            return false;
        }
        if 2 * w > total {
            return true;
        }
        2 * w == total && self.tie_breaker().is_some_and(|t| members.contains(&t))
    }

    fn tie_breaker(&self) -> Option<ServerId> {
        self.servers
            .iter()
            .filter(|s| voting_weight(s) > 0)
            .map(|s| s.id)
            .min()
    }
}

pub(crate) fn voting_weight(s: &ServerSpec) -> u32 {
    match s.kind {
        GroupKind::Failover => s.weight,
        GroupKind::Remote => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(id: ServerId, kind: GroupKind, weight: u32) -> ServerSpec {
        ServerSpec {
            id,
            name: format!("s{id}"),
            group: match kind {
                GroupKind::Failover => "main".into(),
                GroupKind::Remote => "remote".into(),
            },
            kind,
            weight,
        }
    }

    fn cfg(weights: &[u32]) -> ReplicaConfig {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| spec(i as ServerId, GroupKind::Failover, *w))
            .collect();
        ReplicaConfig::new(servers, CommitMode::Sync)
    }

    #[test]
    fn majority_and_tie_breaker() {
        let c = cfg(&[1, 1, 1, 1]);
        assert!(c.is_primary_component(&[0, 1, 2]));
        assert!(
            c.is_primary_component(&[0, 3]),
            "half with the lowest voter"
        );
        assert!(!c.is_primary_component(&[1, 2]), "half without it");
        assert!(!c.is_primary_component(&[]));
        let w = cfg(&[3, 1, 1]);
        assert!(w.is_primary_component(&[0]));
        assert!(!w.is_primary_component(&[1, 2]));
    }

    #[test]
    fn remote_servers_never_count() {
        let mut c = cfg(&[1, 1, 1]);
        c.servers.push(spec(9, GroupKind::Remote, 0));
        assert!(!c.is_primary_component(&[0, 9]));
        assert!(!c.eligible(9));
        assert!(c.validate().is_ok());
        c.servers[3].weight = 1;
        assert_eq!(c.validate(), Err(ConfigError::RemoteWeight(9)));
        assert_eq!(cfg(&[0, 0]).validate(), Err(ConfigError::NoVoters));
    }

    #[test]
    fn the_largest_commit_and_a_chunk_must_fit_a_ring_message() {
        let c = cfg(&[1, 1, 1]);
        let ring_default = gcs::Config::default().max_message_size;
        assert_eq!(c.check_message_limit(ring_default), Ok(()));
        assert_eq!(
            c.check_message_limit(16 << 20),
            Err(ConfigError::CommitTooLargeForRing {
                commit: 24 << 20,
                chunk: 256 * 1024,
                table: 2_400_001,
                message: 16 << 20
            })
        );
        // A 16 MiB value fits the default limit, with its transaction's overhead.
        let rec = storage::Record {
            oid: storage::Oid::from_u64(1),
            data: Some(bytes::Bytes::from(vec![0u8; 16 << 20])),
            expected_serial: None,
        };
        assert!(txn_wire_bytes(&TxnMeta::default(), [&rec]) <= c.commit_bytes_max);
    }

    proptest::proptest! {
        /// Two disjoint sets of servers are never both primary components.
        #[test]
        fn disjoint_sets_never_both_primary(
            weights in proptest::collection::vec(0u32..4, 1..8),
            side in proptest::collection::vec(0u8..3, 8),
        ) {
            let c = cfg(&weights);
            let n = weights.len();
            let a: Vec<ServerId> = (0..n).filter(|i| side[*i] == 0).map(|i| i as ServerId).collect();
            let b: Vec<ServerId> = (0..n).filter(|i| side[*i] == 1).map(|i| i as ServerId).collect();
            proptest::prop_assert!(!(c.is_primary_component(&a) && c.is_primary_component(&b)));
        }
    }
}
