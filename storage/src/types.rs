//! Value types shared by every backend: tids, oids, transactions, revisions.

use std::fmt;

use bytes::Bytes;
#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::error::StorageError;

/// Largest accepted oid, in bytes. Oids are keys, not payloads: 1 KiB leaves room for any
/// structured identifier while keeping RocksDB keys (oid + 10 bytes of framing) small.
pub const OID_LEN_MAX: usize = 1024;

/// Largest accepted object state, in bytes (256 MiB). Larger states are rejected with
/// [`StorageError::DataTooLarge`] before anything is written.
pub const DATA_LEN_MAX: usize = 256 << 20;

/// Largest accepted metadata field (user, description, extension), in bytes (1 MiB).
pub const META_LEN_MAX: usize = 1 << 20;

/// Largest number of records in one transaction.
pub const RECORDS_MAX: usize = 1 << 20;

/// A transaction id: strictly increasing, assigned by the writer (the primary).
///
/// `Tid::ZERO` means "no transaction": it is what an empty store reports as its last
/// transaction, and it is never a valid tid for a commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(transparent))]
pub struct Tid(pub u64);

impl Tid {
    /// "No transaction".
    pub const ZERO: Tid = Tid(0);
    /// The largest tid.
    pub const MAX: Tid = Tid(u64::MAX);

    /// Big-endian bytes: byte order is tid order.
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// The tid right after this one (`MAX` stays `MAX`): `load_before(oid, at.next())` reads
    /// the revision current as of `at`.
    pub fn next(self) -> Tid {
        Tid(self.0.saturating_add(1))
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// An object id: opaque bytes, at most [`OID_LEN_MAX`] long (the empty oid is valid).
///
/// With feature `serde` it is its bytes; deserializing goes through [`Oid::new`], so an oid
/// too long is refused there as everywhere else. (The serde forms of the types here are part
/// of the replica's message format: changing their fields changes it.)
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(try_from = "Bytes")
)]
pub struct Oid(Bytes);

impl Oid {
    /// Checks the length and wraps the bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Result<Oid, StorageError> {
        let bytes = bytes.into();
        if bytes.len() > OID_LEN_MAX {
            return Err(StorageError::OidTooLarge {
                len: bytes.len(),
                max: OID_LEN_MAX,
            });
        }
        Ok(Oid(bytes))
    }

    /// A 64-bit object number as an oid (8 big-endian bytes, ZODB style).
    pub fn from_u64(n: u64) -> Oid {
        Oid(Bytes::copy_from_slice(&n.to_be_bytes()))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw bytes, shared.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl TryFrom<Bytes> for Oid {
    type Error = StorageError;

    fn try_from(bytes: Bytes) -> Result<Oid, StorageError> {
        Oid::new(bytes)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid(")?;
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Transaction metadata, as in ZODB: who, why, free-form extension bytes, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct TxnMeta {
    /// The user name.
    pub user: Bytes,
    /// The description.
    pub description: Bytes,
    /// Opaque extension bytes (the replica stores its idempotency key here, for instance).
    pub extension: Bytes,
    /// Commit time, as chosen by the writer (the storage never reads a clock).
    pub time: u64,
    /// The idempotency key of the client request that wrote this transaction, if a client's.
    /// The store keeps it in the transaction's header and never interprets it: the
    /// replication layer rebuilds from the log which requests it has committed.
    pub request: Option<RequestKey>,
}

/// A client request's idempotency key: the client, and its request number (increasing per
/// client). A retried request carries the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct RequestKey {
    /// The client.
    pub client: u64,
    /// Its request number.
    pub request: u64,
}

/// One change in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Record {
    /// The object changed.
    pub oid: Oid,
    /// The new state, or `None` to delete the object.
    pub data: Option<Bytes>,
    /// Optimistic concurrency: the serial (tid of the current revision) this change was based
    /// on. `None`: no check. `Some(Tid::ZERO)`: the object must not exist yet. Only
    /// [`crate::Storage::commit`] checks it; [`crate::Storage::apply`] ignores it.
    pub expected_serial: Option<Tid>,
}

/// A transaction: a tid, metadata and records (at most one per oid).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Transaction {
    /// The transaction id.
    pub tid: Tid,
    /// Metadata.
    pub meta: TxnMeta,
    /// The changes, in the writer's order.
    pub records: Vec<Record>,
}

/// One revision of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Revision {
    /// The object.
    pub oid: Oid,
    /// The transaction that wrote this revision (its serial).
    pub tid: Tid,
    /// The state, or `None` if this revision deleted the object.
    pub data: Option<Bytes>,
}

/// A transaction moved to the lost archive by [`crate::Storage::truncate_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostTransaction {
    /// Archive sequence number: increases with every archived transaction, never reused.
    pub seq: u64,
    /// The `tid` argument of the `truncate_after` call that removed it.
    pub truncated_after: Tid,
    /// The transaction as it was committed.
    pub txn: Transaction,
}

/// Inclusive tid bounds for [`crate::Storage::iter`]; `None` means unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TidRange {
    /// First tid included.
    pub start: Option<Tid>,
    /// Last tid included.
    pub stop: Option<Tid>,
}

impl TidRange {
    /// Every transaction.
    pub const ALL: TidRange = TidRange {
        start: None,
        stop: None,
    };

    /// `[start, stop]`, both optional.
    pub fn new(start: Option<Tid>, stop: Option<Tid>) -> TidRange {
        TidRange { start, stop }
    }

    /// Transactions after `tid` (exclusive): what a replica at `tid` is missing.
    pub fn after(tid: Tid) -> TidRange {
        match tid.0.checked_add(1) {
            Some(next) => TidRange::new(Some(Tid(next)), None),
            // Nothing is after Tid::MAX: an empty range.
            None => TidRange::new(Some(Tid::MAX), Some(Tid::ZERO)),
        }
    }

    /// Lowest and highest included tid.
    pub fn bounds(&self) -> (Tid, Tid) {
        (
            self.start.unwrap_or(Tid::ZERO),
            self.stop.unwrap_or(Tid::MAX),
        )
    }
}

/// Iteration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Increasing tids.
    Forward,
    /// Decreasing tids.
    Reverse,
}

/// What [`crate::Storage::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The transaction was new and is now stored.
    Applied,
    /// The same transaction was already stored: nothing was written.
    AlreadyPresent,
}

/// What [`crate::Storage::pack`] or [`crate::Storage::pack_gc`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Revisions removed, those of the objects removed entirely included.
    pub revisions_removed: u64,
    /// Objects removed entirely by [`crate::Storage::pack_gc`] (always 0 for `pack`).
    pub objects_removed: u64,
    /// The history horizon after the pack.
    pub horizon: Tid,
}

/// Progress of an unfinished fast-recovery fill (see [`crate::Storage::fill`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillProgress {
    /// The greatest oid filled so far (streams come in oid order: resume after it).
    pub last_oid: Oid,
    /// The greatest revision tid filled so far.
    pub tid_max: Tid,
}

/// Checks a transaction's shape (sizes, duplicate oids, tid non-zero). Does not look at
/// the store.
pub fn validate_txn(txn: &Transaction) -> Result<(), StorageError> {
    if txn.tid == Tid::ZERO {
        return Err(StorageError::InvalidTransaction {
            reason: "tid 0 is reserved for \"no transaction\"".into(),
        });
    }
    for (name, field) in [
        ("user", &txn.meta.user),
        ("description", &txn.meta.description),
        ("extension", &txn.meta.extension),
    ] {
        if field.len() > META_LEN_MAX {
            return Err(StorageError::InvalidTransaction {
                reason: format!("{name} is {} bytes, max {META_LEN_MAX}", field.len()),
            });
        }
    }
    if txn.records.len() > RECORDS_MAX {
        return Err(StorageError::InvalidTransaction {
            reason: format!("{} records, max {RECORDS_MAX}", txn.records.len()),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &txn.records {
        // Oid::new checks the length, but the field is public, so check again.
        if r.oid.as_bytes().len() > OID_LEN_MAX {
            return Err(StorageError::OidTooLarge {
                len: r.oid.as_bytes().len(),
                max: OID_LEN_MAX,
            });
        }
        if let Some(d) = &r.data {
            if d.len() > DATA_LEN_MAX {
                return Err(StorageError::DataTooLarge {
                    oid: r.oid.clone(),
                    len: d.len(),
                    max: DATA_LEN_MAX,
                });
            }
        }
        if !seen.insert(r.oid.as_bytes()) {
            return Err(StorageError::InvalidTransaction {
                reason: format!("oid {} appears twice", r.oid),
            });
        }
    }
    Ok(())
}

/// Same content, ignoring `expected_serial` (which only matters at commit time).
pub(crate) fn same_content(a: &Transaction, b: &Transaction) -> bool {
    a.tid == b.tid
        && a.meta == b.meta
        && a.records.len() == b.records.len()
        && a.records
            .iter()
            .zip(&b.records)
            .all(|(x, y)| x.oid == y.oid && x.data == y.data)
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    #[test]
    fn an_oid_is_its_bytes_and_too_long_one_is_refused() {
        let oid = Oid::new(vec![7u8; OID_LEN_MAX]).unwrap();
        let encoded = bincode::serialize(&oid).unwrap();
        assert_eq!(encoded, bincode::serialize(&oid.to_bytes()).unwrap());
        assert_eq!(bincode::deserialize::<Oid>(&encoded).unwrap(), oid);

        let too_long = bincode::serialize(&Bytes::from(vec![7u8; OID_LEN_MAX + 1])).unwrap();
        let e = bincode::deserialize::<Oid>(&too_long).unwrap_err();
        assert!(e.to_string().contains("longer than the maximum"), "{e}");
    }

    #[test]
    fn a_transaction_round_trips() {
        let txn = Transaction {
            tid: Tid(9),
            meta: TxnMeta {
                user: Bytes::from_static(b"u"),
                description: Bytes::new(),
                extension: Bytes::from_static(b"x"),
                time: 3,
                request: None,
            },
            records: vec![
                Record {
                    oid: Oid::from_u64(1),
                    data: Some(Bytes::from_static(b"v")),
                    expected_serial: Some(Tid(4)),
                },
                Record {
                    oid: Oid::from_u64(2),
                    data: None,
                    expected_serial: None,
                },
            ],
        };
        let encoded = bincode::serialize(&txn).unwrap();
        assert_eq!(bincode::deserialize::<Transaction>(&encoded).unwrap(), txn);
    }
}
