//! The parts of a ZEO commit that read the store: conflict checks at vote, undo records, the
//! oid high-water mark, and pack's reachability walk. Each runs inside one
//! [`crate::StorageServer::inspect`] call, so it sees one consistent state.

use super::pickle;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use storage::{Direction, Oid, Record, Storage, StorageError, Tid, TidRange};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per-object commit locks: a voter takes every lock of its transaction in oid order (so two
/// voters never wait on each other in a cycle) and keeps them until its commit is answered.
#[derive(Default)]
pub(crate) struct OidLocks {
    map: std::sync::Mutex<BTreeMap<Oid, Arc<AsyncMutex<()>>>>,
}

/// Locks held by one transaction.
pub(crate) struct Held {
    _guards: Vec<OwnedMutexGuard<()>>,
}

impl OidLocks {
    /// Takes the locks of `oids` (any order, duplicates allowed).
    pub(crate) async fn lock(&self, oids: impl IntoIterator<Item = Oid>) -> Held {
        let oids: BTreeSet<Oid> = oids.into_iter().collect();
        let mutexes: Vec<Arc<AsyncMutex<()>>> = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 4096 {
                // Forget the locks nobody holds or waits for.
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            oids.iter()
                .map(|o| map.entry(o.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(mutexes.len());
        for m in mutexes {
            guards.push(m.lock_owned().await);
        }
        Held { _guards: guards }
    }
}

/// A block of oids this primary may hand out: `[next, limit)`.
#[derive(Default)]
pub(crate) struct OidBlock {
    pub(crate) next: u64,
    pub(crate) limit: u64,
    /// The role generation the block was taken in (a new primary takes a new block).
    pub(crate) generation: u64,
}

/// The high-water mark stored in the oid object: every oid below it may have been handed out.
pub(crate) fn read_oid_mark(store: &dyn Storage) -> Result<(u64, Tid), StorageError> {
    Ok(match store.load(&replica::zeo_oids_oid())? {
        Some(r) => {
            let v = r
                .data
                .as_deref()
                .and_then(|d| d.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(1);
            (v.max(1), r.tid)
        }
        None => (1, Tid::ZERO),
    })
}

/// A buffered store of the transaction being voted.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    /// The serial the client based it on (store tid; `Tid::ZERO`: a new object).
    pub(crate) serial: Tid,
    /// The serial as the client sent it (echoed in conflicts).
    pub(crate) zeo_serial: [u8; 8],
    /// The new state (`None`: `deleteObject`).
    pub(crate) data: Option<Bytes>,
    /// `restorea`: written as given, without a conflict check.
    pub(crate) restore: bool,
}

/// What a vote found.
#[derive(Debug, Default)]
pub(crate) struct VoteOutcome {
    /// Write conflicts: (oid, committed serial, the store's serial as sent, its data).
    pub(crate) conflicts: Vec<(Oid, Tid, [u8; 8], Option<Bytes>)>,
    /// The first read conflict: (oid, committed serial, serial read).
    pub(crate) read_conflict: Option<(Oid, Tid, Tid)>,
    /// Undo failures: (oid, reason).
    pub(crate) undo_errors: Vec<(Oid, String)>,
    /// Oids the undos write.
    pub(crate) undone: Vec<Oid>,
    /// For each undone object, the tid whose state the undo restores.
    pub(crate) backpointers: BTreeMap<Oid, Tid>,
    /// The records to commit (when there is no conflict).
    pub(crate) records: Vec<Record>,
}

fn current_serial(store: &dyn Storage, oid: &Oid) -> Result<Tid, StorageError> {
    Ok(store.load(oid)?.map(|r| r.tid).unwrap_or(Tid::ZERO))
}

/// Checks a transaction against the store and builds its records.
/// The transaction committed at `tid`, if any (packed transactions keep their header).
pub(crate) fn txn_at(
    store: &dyn Storage,
    tid: Tid,
) -> Result<Option<storage::Transaction>, StorageError> {
    store
        .iter(TidRange::new(Some(tid), Some(tid)), Direction::Forward)?
        .next()
        .transpose()
}

pub(crate) fn vote(
    store: &dyn Storage,
    stores: &BTreeMap<Oid, Store>,
    checks: &BTreeMap<Oid, Tid>,
    undos: &[Tid],
) -> Result<VoteOutcome, StorageError> {
    let mut out = VoteOutcome::default();
    for (oid, expected) in checks {
        let actual = current_serial(store, oid)?;
        if actual != *expected {
            out.read_conflict = Some((oid.clone(), actual, *expected));
            return Ok(out);
        }
    }
    let mut records: BTreeMap<Oid, Record> = BTreeMap::new();
    for u in undos {
        undo_records(
            store,
            *u,
            &mut records,
            &mut out.backpointers,
            &mut out.undo_errors,
        )?;
    }
    out.undone = records.keys().cloned().collect();
    for (oid, s) in stores {
        out.backpointers.remove(oid);
        let expected = if s.restore {
            None
        } else {
            let actual = current_serial(store, oid)?;
            if actual != s.serial {
                out.conflicts
                    .push((oid.clone(), actual, s.zeo_serial, s.data.clone()));
                continue;
            }
            Some(actual)
        };
        records.insert(
            oid.clone(),
            Record {
                oid: oid.clone(),
                data: s.data.clone(),
                expected_serial: expected,
            },
        );
    }
    if !out.backpointers.is_empty() {
        let mut data = Vec::with_capacity(out.backpointers.len() * 16);
        for (o, t) in &out.backpointers {
            data.extend_from_slice(o.as_bytes());
            data.extend_from_slice(&t.to_be_bytes());
        }
        records.insert(
            backpointer_oid(),
            Record {
                oid: backpointer_oid(),
                data: Some(Bytes::from(data)),
                expected_serial: None,
            },
        );
    }
    out.records = records.into_values().collect();
    Ok(out)
}

/// The records that undo transaction `u`: each object it wrote goes back to its revision
/// before `u` (or is deleted if `u` created it), provided nothing changed it since, or what
/// changed it left the state `u` wrote (as an earlier undo in the same transaction, or an
/// undo of an undo, does). `backpointers` gets, for each record, the tid whose state it
/// restores (ZODB's `data_txn`).
fn undo_records(
    store: &dyn Storage,
    u: Tid,
    records: &mut BTreeMap<Oid, Record>,
    backpointers: &mut BTreeMap<Oid, Tid>,
    errors: &mut Vec<(Oid, String)>,
) -> Result<(), StorageError> {
    let Some(txn) = txn_at(store, u)? else {
        errors.push((Oid::from_u64(0), "no such transaction".into()));
        return Ok(());
    };
    for r in txn
        .records
        .iter()
        .filter(|r| !super::is_shell_or_replica(&r.oid))
    {
        let current = store.load(&r.oid)?;
        // An earlier undo of this transaction already wrote this object: that is its state.
        let undoable = match (records.get(&r.oid), &current) {
            (Some(pending), _) => pending.data == r.data,
            (None, Some(c)) => c.tid == u || c.data == r.data,
            (None, None) => false,
        };
        if !undoable {
            errors.push((
                r.oid.clone(),
                "Some data were modified by a later transaction".into(),
            ));
            continue;
        }
        let before = match store.load_before(&r.oid, u) {
            Ok(b) => b,
            Err(StorageError::HistoryTruncated { .. }) => {
                errors.push((r.oid.clone(), "the history was packed away".into()));
                continue;
            }
            Err(e) => return Err(e),
        };
        match &before {
            Some(b) => backpointers.insert(r.oid.clone(), b.tid),
            None => backpointers.remove(&r.oid),
        };
        records.insert(
            r.oid.clone(),
            Record {
                oid: r.oid.clone(),
                data: before.and_then(|b| b.data),
                expected_serial: current.map(|c| c.tid),
            },
        );
    }
    Ok(())
}

/// The shell-owned record of an undo transaction that names, for each object it restores,
/// the transaction whose state it restores (8-byte oid, 8-byte store tid, repeated), so that
/// iterators can give ZODB's `data_txn`.
pub(crate) fn backpointer_oid() -> Oid {
    Oid::new(Bytes::from_static(&[
        replica::RESERVED_OID_PREFIX,
        b'z',
        b'b',
    ]))
    .expect("short oid")
}

/// Decodes a [`backpointer_oid`] record.
pub(crate) fn backpointers(data: &[u8]) -> BTreeMap<Oid, Tid> {
    data.chunks_exact(16)
        .map(|c| {
            let (o, t) = c.split_at(8);
            (
                Oid::from_u64(u64::from_be_bytes(o.try_into().unwrap_or([0; 8]))),
                Tid(u64::from_be_bytes(t.try_into().unwrap_or([0; 8]))),
            )
        })
        .collect()
}

/// The objects pack removes: every object whose newest revision is older than `before` and
/// that is reachable neither from the root (oid 0) as of `before` nor from any revision
/// written at or after `before` (ZODB's pack follows those too: an object a newer revision
/// refers to stays). References are read from the records' pickles.
///
/// If any record's pickle cannot be read, nothing is reported unreachable (the pack then
/// only drops old revisions): what cannot be read could refer to anything.
pub(crate) fn unreachable(store: &dyn Storage, before: Tid) -> Result<Vec<Oid>, StorageError> {
    let mut unreadable = 0u64;
    let mut refs = |data: &[u8]| match pickle::references(data) {
        Ok(v) => v
            .into_iter()
            .map(|o| Oid::from_u64(u64::from_be_bytes(o)))
            .collect(),
        Err(e) => {
            if unreadable == 0 {
                tracing::warn!(error = %e, "pack: a record's references cannot be read");
            }
            unreadable += 1;
            Vec::new()
        }
    };
    let mut seen: BTreeSet<Oid> = BTreeSet::new();
    let mut todo: VecDeque<Oid> = VecDeque::new();
    let visit = |oid: Oid, seen: &mut BTreeSet<Oid>, todo: &mut VecDeque<Oid>| {
        if seen.insert(oid.clone()) {
            todo.push_back(oid);
        }
    };
    visit(Oid::from_u64(0), &mut seen, &mut todo);
    // Revisions written at or after the pack time: their references keep objects alive.
    for t in store.iter(TidRange::new(Some(before), None), Direction::Forward)? {
        for r in t?.records {
            if let Some(d) = &r.data {
                for o in refs(d) {
                    visit(o, &mut seen, &mut todo);
                }
            }
        }
    }
    while let Some(oid) = todo.pop_front() {
        let mut states = Vec::new();
        match store.load_before(&oid, before) {
            Ok(Some(r)) => states.extend(r.data),
            Ok(None) => {}
            Err(StorageError::HistoryTruncated { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(r) = store.load(&oid)? {
            states.extend(r.data);
        }
        for d in states {
            for o in refs(&d) {
                visit(o, &mut seen, &mut todo);
            }
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            records = unreadable,
            "pack: no garbage collection, some references could not be read"
        );
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let all = store.fast_recovery(Tid::ZERO, None)?;
    for r in all.revisions {
        let r = r?;
        if r.oid.as_bytes().len() == 8
            && !super::is_shell_or_replica(&r.oid)
            && r.tid < before
            && !seen.contains(&r.oid)
        {
            out.push(r.oid);
        }
    }
    Ok(out)
}
