//! The storage error type. Every error is a value: no method panics on caller input or on
//! what it reads from disk.

use crate::types::{Oid, Tid};

/// Errors of every [`crate::Storage`] method.
///
/// Caller errors (`Conflict`, `NonIncreasingTid`, `Gap`, `DivergentApply`, `OidTooLarge`,
/// `DataTooLarge`, `StateTooLarge`, `InvalidTransaction`, `HistoryTruncated`, `InvalidFill`)
/// leave the store unchanged. The others (`Corrupt`, `Io`, `Rocks`, `Poisoned`) are fatal to the replica that
/// sees them: it should leave its groups.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A record's `expected_serial` is not the object's current serial; nothing was written.
    #[error("conflict on {oid}: expected serial {expected}, current serial {actual}")]
    Conflict {
        /// The first conflicting object.
        oid: Oid,
        /// The serial the record was based on.
        expected: Tid,
        /// The object's current serial (`Tid::ZERO`: the object does not exist).
        actual: Tid,
    },
    /// The tid of a commit or apply is not greater than the last transaction.
    #[error("tid {tid} does not increase (last transaction {last})")]
    NonIncreasingTid {
        /// The rejected tid.
        tid: Tid,
        /// The store's last transaction.
        last: Tid,
    },
    /// `apply` was given a transaction whose predecessor is not this store's last
    /// transaction: some transactions are missing in between.
    #[error(
        "gap before {tid}: its predecessor is {prev}, this store's last transaction is {last}"
    )]
    Gap {
        /// The transaction being applied.
        tid: Tid,
        /// Its predecessor on the primary.
        prev: Tid,
        /// This store's last transaction.
        last: Tid,
    },
    /// `apply` was given a tid already stored, with different content.
    #[error("divergent apply: tid {tid} is already stored with different content")]
    DivergentApply {
        /// The tid.
        tid: Tid,
    },
    /// The question needs history that this store does not have: it was packed away, or it
    /// lies in the hole left by a fast-recovery fill. States strictly before the snapshot at
    /// `horizon` are not reproducible, and transactions at or before `horizon` may be
    /// missing or incomplete.
    #[error("history truncated: nothing is known exactly before the state at {horizon}")]
    HistoryTruncated {
        /// The oldest state (snapshot tid) this store reproduces exactly.
        horizon: Tid,
    },
    /// An oid longer than [`crate::OID_LEN_MAX`].
    #[error("oid of {len} bytes is longer than the maximum {max}")]
    OidTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An object state longer than [`crate::DATA_LEN_MAX`].
    #[error("data of {oid} is {len} bytes, longer than the maximum {max}")]
    DataTooLarge {
        /// The object.
        oid: Oid,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A replication state (see [`crate::Storage::set_replication_state`]) longer than
    /// [`crate::META_LEN_MAX`]; nothing was written.
    #[error("replication state of {len} bytes is longer than the maximum {max}")]
    StateTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A malformed transaction (tid 0, duplicate oid, oversized metadata...).
    #[error("invalid transaction: {reason}")]
    InvalidTransaction {
        /// What is wrong.
        reason: String,
    },
    /// A fast-recovery fill that does not fit this store (a revision not newer than the
    /// last transaction, a finish tid below a filled revision...).
    #[error("invalid fill: {reason}")]
    InvalidFill {
        /// What is wrong.
        reason: String,
    },
    /// Stored data failed its checks: bad checksum, unknown format version, truncated
    /// value, foreign store, or a broken cross-reference.
    #[error("corrupt storage: {what}")]
    Corrupt {
        /// What was found, and where.
        what: String,
    },
    /// A file-system error.
    #[error("i/o error: {0}")]
    Io(String),
    /// An error reported by RocksDB.
    #[error("rocksdb error: {0}")]
    Rocks(String),
    /// An earlier write failed in a way that leaves the in-memory state uncertain; the store
    /// refuses further writes. Reopen it.
    #[error("store poisoned by an earlier failed write: {0}")]
    Poisoned(String),
    /// The backend does not support this operation.
    #[error("unsupported by this backend: {0}")]
    Unsupported(&'static str),
    /// The store was written in another on-disk layout than the one this build reads and
    /// writes (an older one, or a newer build's). Nothing was changed; a server's store is
    /// rebuilt from the cluster (`standby-server --rebuild`).
    #[error("store written in layout {found}, this build reads layout {reads}")]
    Layout {
        /// The layout the store was written in.
        found: u32,
        /// The layout this build reads and writes.
        reads: u32,
    },
}

impl StorageError {
    /// A `Corrupt` error about `what`.
    pub fn corrupt(what: impl Into<String>) -> StorageError {
        StorageError::Corrupt { what: what.into() }
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> StorageError {
        StorageError::Io(e.to_string())
    }
}

/// Shorthand.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
