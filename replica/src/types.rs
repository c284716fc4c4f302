//! What goes in and out of the replica state machine.

use crate::config::ServerId;
use crate::election::Epoch;
use bytes::Bytes;
use gcs::{Service, Time};
// Commit outcomes and roles travel in the client protocol (`standby_client::proto`).
use serde::{Deserialize, Serialize};
use storage::{Oid, Record, Tid, TxnMeta};

/// A client request's handle, chosen by the shell; replies name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

/// A commit asked by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    /// The client's id, unique in the cluster and stable across its reconnects.
    pub client: u64,
    /// The client's request number: increases with each new commit; a retry of an ambiguous
    /// commit reuses it. `(client, request)` is the idempotency key.
    pub request: u64,
    /// Transaction metadata.
    pub meta: TxnMeta,
    /// The writes, each with the serial it was based on (`expected_serial`) for conflict
    /// checking, or `None` for a blind write.
    pub records: Vec<Record>,
    /// How the primary picks the tid.
    pub tid: TidChoice,
}

/// How the primary picks a commit's tid. Every choice stays strictly above every tid the
/// primary assigned before, so tids increase along the lineage whatever clients ask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TidChoice {
    /// The next tid: the last assigned plus one.
    #[default]
    Next,
    /// The next tid, or this one if it is greater: a shell that wants tids to follow a clock
    /// (ZODB's timestamps, taken from the primary's wall clock by the ZEO face) passes the
    /// clock's reading here, so the core itself reads no clock.
    AtLeast(Tid),
    /// Exactly this tid (ZODB's restore of a copied transaction); refused as
    /// [`CommitError::Invalid`] unless it is above every tid assigned so far.
    Exactly(Tid),
}

/// A commit that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Its tid.
    pub tid: Tid,
    /// The epoch of the primary that answered.
    pub epoch: Epoch,
    /// True if this answers a retry of a commit already applied.
    pub duplicate: bool,
}

/// Why a commit was not done. Only `Conflict`, `Stale` and `Invalid` are final for the
/// application; the others tell the client library where or when to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommitError {
    /// This server is not the primary; retry at `primary` (or wait for one, if `None`).
    #[error("not the primary (primary: {primary:?})")]
    NotPrimary {
        /// The primary, if known.
        primary: Option<ServerId>,
    },
    /// The outcome is unknown (the view changed while the commit was in flight): retry with
    /// the same idempotency key; the retry answers with the first outcome if there was one.
    #[error("outcome unknown: retry with the same request number")]
    Retry,
    /// An object changed since the client read it.
    #[error("conflict on {oid}: expected serial {expected}, current serial {actual}")]
    Conflict {
        /// The object.
        oid: Oid,
        /// What the client read.
        expected: Tid,
        /// What is current.
        actual: Tid,
    },
    /// The client already sent a newer request: this one is a stale duplicate.
    #[error("request {request} is older than the client's last request {last}")]
    Stale {
        /// This request.
        request: u64,
        /// The newest request recorded for the client.
        last: u64,
    },
    /// The request breaks a rule (a reserved oid, the same oid twice, too large).
    #[error("invalid commit: {0}")]
    Invalid(String),
    /// Too many requests are waiting for a primary.
    #[error("too many requests waiting for a primary")]
    Busy,
    /// The server stopped after a storage failure.
    #[error("server stopped: {0}")]
    Down(String),
}

impl CommitError {
    /// Whether this is the application's answer (a conflict, an invalid or stale request)
    /// rather than a reason for the client library to retry elsewhere or later.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            CommitError::Conflict { .. } | CommitError::Invalid(_) | CommitError::Stale { .. }
        )
    }
}

/// A server's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// In the primary component, up to date, applying the primary's commits.
    Backup,
    /// In the primary component, electing or catching up.
    Syncing,
    /// Outside any primary component (or a remote server without a primary in view): serves
    /// reads of its last state.
    ReadOnly,
    /// Stopped after a storage failure; serves nothing.
    Down,
}

/// A role change, with what the server knows of the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    /// The new role.
    pub role: Role,
    /// The working primary and its epoch, if there is one in view.
    pub primary: Option<(ServerId, Epoch)>,
    /// Whether the server's current regular view is a primary component.
    pub in_primary_component: bool,
    /// The server's durable promise at this moment.
    pub promised: Epoch,
    /// The servers of the regular view the role was taken in (for a primary: the component
    /// that elected it).
    pub view: Vec<ServerId>,
}

/// Objects a committed transaction changed: clients drop them from their caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalidation {
    /// The transaction.
    pub tid: Tid,
    /// The objects it wrote (reserved oids left out).
    pub oids: Vec<Oid>,
    /// The client whose commit it was (from its idempotency record), if a client's: a shell
    /// that must not tell a client of its own commit (ZEO) skips that client's connection.
    pub client: Option<u64>,
}

/// Transactions a server moved to its lost archive because the primary lineage never had them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostReport {
    /// Where.
    pub server: ServerId,
    /// Where its history parted from the primary's.
    pub truncated_after: Tid,
    /// The tids moved.
    pub tids: Vec<Tid>,
    /// The objects they wrote.
    pub oids: Vec<Oid>,
}

/// What the replica asks of its shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Multicast to every storage server through the ring (self included).
    Multicast {
        /// The service level.
        service: Service,
        /// The encoded [`crate::wire::Msg`].
        payload: Bytes,
    },
    /// Answer a client.
    Reply {
        /// Which request.
        req: ReqId,
        /// The answer.
        result: Result<Committed, CommitError>,
    },
    /// The role changed.
    Role(RoleInfo),
    /// Tell connected clients that a transaction was applied here.
    Invalidate(Invalidation),
    /// Primary only: every transaction up to this tid is durable on servers holding a
    /// majority of the vote (and here). Increases while the server stays primary; a shell
    /// that must not show clients a commit a failover could lose (ZEO's invalidations) holds
    /// it until this passes its tid.
    Durable(Tid),
    /// Tell connected clients to flush lost transactions.
    Lost(LostReport),
    /// This store is empty and far behind (or cannot be reconciled): the shell copies a
    /// checkpoint of `donor`'s store into a side directory, verifies it, opens it, and hands it
    /// over with [`crate::Replica::install_checkpoint`].
    NeedCheckpoint {
        /// The server to copy from.
        donor: ServerId,
    },
    /// A datagram for server `to` alone, outside the ring (unordered, may be lost): the shell
    /// sends it as is, and the recipient's shell recognises it
    /// ([`crate::Replica::is_direct`]) and hands it to [`crate::Replica::handle_direct`].
    Direct {
        /// The recipient.
        to: ServerId,
        /// The datagram.
        payload: bytes::Bytes,
    },
    /// The membership object ([`crate::membership_oid`]) may have changed in the store (a
    /// transaction wrote it, or the store was rebuilt, truncated or replaced): the shell
    /// reads it again and updates its address book and topology.
    MembershipChanged,
    /// Make the store's applied transactions durable: the shell runs [`storage::Storage::sync`]
    /// off the ring's task (one fsync may serve several of these) and then hands
    /// [`crate::Replica::handle_synced`] the highest `id` it covered. Commits are applied
    /// without waiting for the disk; nothing counts as durable here (reports to the primary,
    /// the primary's own vote) until the sync that covers it returned.
    Sync {
        /// Increases with every request.
        id: u64,
    },
}

/// How stale a server's reads are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// Its role.
    pub role: Role,
    /// The last transaction its reads see: the last one durable on its disk. (With
    /// `ReplicaConfig::defer_syncs` the store may hold newer ones, applied but not yet
    /// synced: readers bound what they read by this tid, `Storage::load_at`.)
    pub last_tid: Tid,
    /// The newest tid it knows the primary lineage reached (its own last if it knows no more).
    pub primary_last_known: Tid,
    /// When it last applied a transaction (`None`: not since it started).
    pub last_commit_at: Option<Time>,
    /// Its last regular view, and whether that view was a primary component.
    pub in_primary_component: bool,
    /// How long it may have been missing commits: zero while it is known to be current (in a
    /// primary component with a working primary, the ring alive), else the time since it last
    /// was; `None` if it has not been since it started. The replica has no clock of its own and
    /// leaves this `None`; the server, which sees the ring, fills it
    /// (`server::ServerCore`).
    pub behind_for: Option<std::time::Duration>,
}
