//! The in-memory backend, for the simulator and for tests.
//!
//! Crash semantics: with `sync: true` (the default) every write is durable when it returns
//! and [`MemStorage::crash`] loses nothing. With `sync: false`, writes are durable only
//! after [`Storage::sync`]; [`MemStorage::crash`] reverts the store to the last durable
//! state, and [`MemStorage::crash_keeping`] keeps a prefix of the un-synced writes (the
//! part of a write-ahead log that happened to reach the disk). The replication state is
//! written like any other write, so a crash can lose an un-synced one too.
//!
//! The simulator copies a store with [`MemStorage::snapshot`], its stand-in for
//! [`Storage::checkpoint`] followed by an open.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::codec::{txn_digest, MetaState, TxnHeader};
use crate::error::{Result, StorageError};
use crate::types::{
    validate_txn, ApplyOutcome, Direction, FillProgress, LostTransaction, Oid, PackStats, Record,
    Revision, Tid, TidRange, Transaction, DATA_LEN_MAX, META_LEN_MAX, OID_LEN_MAX,
};
use crate::{FastRecovery, LostIter, Storage, TxnIter};

/// Options of [`MemStorage`].
#[derive(Clone, Copy, Debug)]
pub struct MemOptions {
    /// Every write is durable when it returns. Off: only after [`Storage::sync`].
    pub sync: bool,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions { sync: true }
    }
}

#[derive(Clone, Debug)]
struct MemTxn {
    header: TxnHeader,
    /// Record index (1-based, as in the RocksDB keys) → record.
    records: BTreeMap<u32, Record>,
}

#[derive(Clone, Debug)]
struct HistEntry {
    /// Record index in the transaction, or `None` for a filled revision.
    idx: Option<u32>,
    data: Option<Bytes>,
}

#[derive(Clone, Debug, Default)]
struct MemState {
    txns: BTreeMap<Tid, MemTxn>,
    current: BTreeMap<Oid, (Tid, Option<Bytes>)>,
    history: BTreeMap<Oid, BTreeMap<Tid, HistEntry>>,
    lost: BTreeMap<u64, LostTransaction>,
    meta: MetaState,
    /// See [`Storage::replication_state`]; outside the transactional history.
    replication: Option<Bytes>,
}

/// A write, kept until it is durable (only when the store does not sync).
#[derive(Clone, Debug)]
enum MemOp {
    Commit(Transaction),
    Apply(Tid, Transaction),
    Fill(Vec<Revision>),
    FillFinish(Tid),
    Truncate(Tid),
    PackGc(Tid, Vec<Oid>),
    SetReplicationState(Bytes),
}

#[derive(Debug)]
struct Inner {
    live: MemState,
    /// What a crash keeps. `None` while everything is durable (a syncing store before its
    /// first [`Storage::apply_batch_unsynced`]): `live` is then durable.
    durable: Option<MemState>,
    pending: Vec<MemOp>,
    /// Every write but `apply_batch_unsynced` syncs (see [`MemOptions::sync`]).
    syncs: bool,
    /// Set: every write fails with this I/O error (a full or failed disk, simulated).
    failing: Option<String>,
}

/// The in-memory backend (see the module docs for its crash semantics).
#[derive(Debug)]
pub struct MemStorage {
    inner: Mutex<Inner>,
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage::new(MemOptions::default())
    }
}

fn check_no_fill(meta: &MetaState) -> Result<()> {
    match &meta.fill {
        None => Ok(()),
        Some(_) => Err(StorageError::InvalidFill {
            reason: "a fast-recovery fill is in progress: finish it first".into(),
        }),
    }
}

/// The object count after an object's current revision went from `was` to `is` (`true`:
/// a state, `false`: a deletion or no revision).
pub(crate) fn recount(objects: u64, was: bool, is: bool) -> u64 {
    match (was, is) {
        (false, true) => objects.saturating_add(1),
        (true, false) => objects.saturating_sub(1),
        _ => objects,
    }
}

impl MemState {
    fn current_serial(&self, oid: &Oid) -> Tid {
        self.current.get(oid).map_or(Tid::ZERO, |(t, _)| *t)
    }

    /// Whether the current revision of `oid` holds a state.
    fn is_live(&self, oid: &Oid) -> bool {
        self.current.get(oid).is_some_and(|(_, d)| d.is_some())
    }

    /// Replaces (`Some`) or removes (`None`) the current revision of `oid`, keeping the
    /// object count.
    fn set_current(&mut self, oid: &Oid, rev: Option<(Tid, Option<Bytes>)>) {
        let was = self.is_live(oid);
        let is = rev.as_ref().is_some_and(|(_, d)| d.is_some());
        match rev {
            Some(r) => self.current.insert(oid.clone(), r),
            None => self.current.remove(oid),
        };
        self.meta.objects = recount(self.meta.objects, was, is);
    }

    fn insert_txn(&mut self, txn: &Transaction) {
        let mut records = BTreeMap::new();
        for (i, r) in txn.records.iter().enumerate() {
            let idx = i as u32 + 1;
            records.insert(
                idx,
                Record {
                    oid: r.oid.clone(),
                    data: r.data.clone(),
                    expected_serial: None,
                },
            );
            self.set_current(&r.oid, Some((txn.tid, r.data.clone())));
            self.history.entry(r.oid.clone()).or_default().insert(
                txn.tid,
                HistEntry {
                    idx: Some(idx),
                    data: r.data.clone(),
                },
            );
        }
        self.txns.insert(
            txn.tid,
            MemTxn {
                header: TxnHeader::of(txn),
                records,
            },
        );
        self.meta.last = txn.tid;
    }

    fn commit(&mut self, txn: &Transaction) -> Result<()> {
        validate_txn(txn)?;
        check_no_fill(&self.meta)?;
        if txn.tid <= self.meta.last {
            return Err(StorageError::NonIncreasingTid {
                tid: txn.tid,
                last: self.meta.last,
            });
        }
        for r in &txn.records {
            if let Some(expected) = r.expected_serial {
                let actual = self.current_serial(&r.oid);
                if actual != expected {
                    return Err(StorageError::Conflict {
                        oid: r.oid.clone(),
                        expected,
                        actual,
                    });
                }
            }
        }
        self.insert_txn(txn);
        Ok(())
    }

    fn is_duplicate(&self, txn: &Transaction) -> Result<ApplyOutcome> {
        let Some(stored) = self.txns.get(&txn.tid) else {
            return Err(StorageError::NonIncreasingTid {
                tid: txn.tid,
                last: self.meta.last,
            });
        };
        let h = &stored.header;
        let same = h.meta == txn.meta
            && h.record_count as usize == txn.records.len()
            && h.digest == txn_digest(txn)
            && stored.records.iter().all(|(idx, r)| {
                txn.records
                    .get(*idx as usize - 1)
                    .is_some_and(|t| t.oid == r.oid && t.data == r.data)
            });
        if same {
            Ok(ApplyOutcome::AlreadyPresent)
        } else {
            Err(StorageError::DivergentApply { tid: txn.tid })
        }
    }

    fn apply(&mut self, prev: Tid, txn: &Transaction) -> Result<ApplyOutcome> {
        validate_txn(txn)?;
        check_no_fill(&self.meta)?;
        if txn.tid <= self.meta.last {
            return self.is_duplicate(txn);
        }
        if prev != self.meta.last {
            return Err(StorageError::Gap {
                tid: txn.tid,
                prev,
                last: self.meta.last,
            });
        }
        self.insert_txn(txn);
        Ok(ApplyOutcome::Applied)
    }

    fn fill(&mut self, revisions: &[Revision]) -> Result<()> {
        for r in revisions {
            check_fill_revision(r, self.meta.last)?;
        }
        let (mut last_oid, mut tid_max) = self.meta.fill.clone().unwrap_or_default();
        for r in revisions {
            let cur = self.current_serial(&r.oid);
            if r.tid >= cur {
                self.set_current(&r.oid, Some((r.tid, r.data.clone())));
            }
            self.history.entry(r.oid.clone()).or_default().insert(
                r.tid,
                HistEntry {
                    idx: None,
                    data: r.data.clone(),
                },
            );
            last_oid = last_oid.max(r.oid.clone());
            tid_max = tid_max.max(r.tid);
        }
        if !revisions.is_empty() || self.meta.fill.is_some() {
            self.meta.fill = Some((last_oid, tid_max));
        }
        Ok(())
    }

    fn fill_finish(&mut self, at: Tid) -> Result<()> {
        check_fill_finish(&self.meta, at)?;
        finish_meta(&mut self.meta, at);
        Ok(())
    }

    fn truncate(&mut self, tid: Tid) -> Result<Vec<Tid>> {
        check_no_fill(&self.meta)?;
        if tid >= self.meta.last {
            return Ok(Vec::new());
        }
        check_horizon(self.meta.horizon, tid)?;
        let removed: Vec<Tid> = self.txns.range(Tid(tid.0 + 1)..).map(|(t, _)| *t).collect();
        for t in &removed {
            let Some(mt) = self.txns.remove(t) else {
                continue;
            };
            let records: Vec<Record> = mt.records.values().cloned().collect();
            for r in &records {
                let hist = self.history.entry(r.oid.clone()).or_default();
                hist.remove(t);
                let restored = hist.iter().next_back().map(|(pt, e)| (*pt, e.data.clone()));
                if restored.is_none() {
                    self.history.remove(&r.oid);
                }
                self.set_current(&r.oid, restored);
            }
            let seq = self.meta.lost_seq_next;
            self.meta.lost_seq_next += 1;
            self.lost.insert(
                seq,
                LostTransaction {
                    seq,
                    truncated_after: tid,
                    txn: Transaction {
                        tid: *t,
                        meta: mt.header.meta.clone(),
                        records,
                    },
                },
            );
        }
        let newest = self
            .txns
            .range(..=tid)
            .next_back()
            .map_or(Tid::ZERO, |(t, _)| *t);
        self.meta.last = newest.max(self.meta.fill_tid);
        Ok(removed)
    }

    /// Removes the revisions of `oid` with a tid in `range` and their records; returns how
    /// many.
    fn remove_revisions(&mut self, oid: &Oid, range: impl RangeBounds<Tid>) -> u64 {
        let Some(hist) = self.history.get_mut(oid) else {
            return 0;
        };
        let old: Vec<Tid> = hist.range(range).map(|(t, _)| *t).collect();
        let mut removed = 0;
        for t in old {
            if let Some(e) = hist.remove(&t) {
                removed += 1;
                if let (Some(idx), Some(mt)) = (e.idx, self.txns.get_mut(&t)) {
                    let gone = mt.records.remove(&idx);
                    debug_assert!(gone.is_some_and(|r| &r.oid == oid));
                }
            }
        }
        if hist.is_empty() {
            self.history.remove(oid);
        }
        removed
    }

    /// `pack` is `pack_gc` with an empty list.
    fn pack_gc(&mut self, before: Tid, unreachable: &[Oid]) -> Result<PackStats> {
        check_no_fill(&self.meta)?;
        let b = pack_bound(before, self.meta.last);
        let mut stats = PackStats {
            horizon: self.meta.horizon,
            ..PackStats::default()
        };
        if b == Tid::ZERO {
            return Ok(stats);
        }
        // Objects with a revision older than the newest before the bound: (oid, that one).
        let packed: Vec<(Oid, Tid)> = self
            .history
            .iter()
            .filter_map(|(oid, hist)| {
                let (&keep, _) = hist.range(..b).next_back()?;
                let (&oldest, _) = hist.first_key_value()?;
                (oldest < keep).then(|| (oid.clone(), keep))
            })
            .collect();
        for (oid, keep) in packed {
            stats.revisions_removed += self.remove_revisions(&oid, ..keep);
        }
        let unreachable: BTreeSet<&Oid> = unreachable.iter().collect();
        for oid in unreachable {
            if self.current.get(oid).is_some_and(|(t, _)| *t < b) {
                stats.revisions_removed += self.remove_revisions(oid, ..);
                self.set_current(oid, None);
                stats.objects_removed += 1;
            }
        }
        self.meta.horizon = self.meta.horizon.max(Tid(b.0 - 1));
        stats.horizon = self.meta.horizon;
        Ok(stats)
    }

    fn set_replication_state(&mut self, state: Bytes) -> Result<()> {
        check_replication_state(&state)?;
        self.replication = Some(state);
        Ok(())
    }

    fn exec(&mut self, op: &MemOp) -> Result<()> {
        match op {
            MemOp::Commit(t) => self.commit(t),
            MemOp::Apply(p, t) => self.apply(*p, t).map(|_| ()),
            MemOp::Fill(r) => self.fill(r),
            MemOp::FillFinish(t) => self.fill_finish(*t),
            MemOp::Truncate(t) => self.truncate(*t).map(|_| ()),
            MemOp::PackGc(t, u) => self.pack_gc(*t, u).map(|_| ()),
            MemOp::SetReplicationState(st) => self.set_replication_state(st.clone()),
        }
    }

    fn txn_at(&self, tid: Tid, mt: &MemTxn) -> Transaction {
        Transaction {
            tid,
            meta: mt.header.meta.clone(),
            records: mt.records.values().cloned().collect(),
        }
    }
}

/// `min(before, last + 1)`: pack never moves the horizon past the last transaction.
pub(crate) fn pack_bound(before: Tid, last: Tid) -> Tid {
    Tid(before.0.min(last.0.saturating_add(1)))
}

pub(crate) fn check_horizon(horizon: Tid, tid: Tid) -> Result<()> {
    if horizon > Tid::ZERO && tid < horizon {
        return Err(StorageError::HistoryTruncated { horizon });
    }
    Ok(())
}

/// Refuses a replication state longer than [`META_LEN_MAX`].
pub(crate) fn check_replication_state(state: &[u8]) -> Result<()> {
    if state.len() > META_LEN_MAX {
        return Err(StorageError::StateTooLarge {
            len: state.len(),
            max: META_LEN_MAX,
        });
    }
    Ok(())
}

pub(crate) fn check_load_before(horizon: Tid, tid: Tid) -> Result<()> {
    if horizon > Tid::ZERO && tid <= horizon {
        return Err(StorageError::HistoryTruncated { horizon });
    }
    Ok(())
}

pub(crate) fn check_fill_revision(r: &Revision, last: Tid) -> Result<()> {
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
    if r.tid <= last {
        return Err(StorageError::InvalidFill {
            reason: format!(
                "revision of {} at {} is not newer than the last transaction {last}",
                r.oid, r.tid
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_fill_finish(meta: &MetaState, at: Tid) -> Result<()> {
    if at < meta.last {
        return Err(StorageError::InvalidFill {
            reason: format!(
                "finish at {at} is before the last transaction {}",
                meta.last
            ),
        });
    }
    if let Some((_, tid_max)) = &meta.fill {
        if at < *tid_max {
            return Err(StorageError::InvalidFill {
                reason: format!("finish at {at} is before a filled revision at {tid_max}"),
            });
        }
    }
    Ok(())
}

pub(crate) fn finish_meta(meta: &mut MetaState, at: Tid) {
    if at > meta.last {
        meta.last = at;
        meta.horizon = meta.horizon.max(at);
        meta.fill_tid = at;
    }
    meta.fill = None;
}

pub(crate) fn iter_is_truncated(horizon: Tid, range: &TidRange) -> Result<()> {
    let (lo, hi) = range.bounds();
    if lo <= hi && horizon > Tid::ZERO && lo <= horizon {
        return Err(StorageError::HistoryTruncated { horizon });
    }
    Ok(())
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock can only come from a bug in this module; the state
    // is still the last consistent one (every mutation validates before it writes).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemStorage {
    /// Transactions in `range` that the log holds, without the horizon's check.
    fn iter_unchecked(&self, range: TidRange, direction: Direction) -> Result<TxnIter<'_>> {
        let (lo, hi) = range.bounds();
        Ok(Box::new(MemTxnIter {
            store: self,
            next: if lo <= hi {
                Some(match direction {
                    Direction::Forward => lo,
                    Direction::Reverse => hi,
                })
            } else {
                None
            },
            lo,
            hi,
            direction,
        }))
    }
    /// An empty store.
    pub fn new(opts: MemOptions) -> MemStorage {
        MemStorage {
            inner: Mutex::new(Inner {
                live: MemState::default(),
                durable: if opts.sync {
                    None
                } else {
                    Some(MemState::default())
                },
                pending: Vec::new(),
                syncs: opts.sync,
                failing: None,
            }),
        }
    }

    /// From now on every write (and `sync`) fails with an I/O error saying `why`, as on a
    /// full or failed disk, until called with `None`. Reads keep working. The simulator's
    /// storage fault.
    pub fn set_failing(&self, why: Option<&str>) {
        lock(&self.inner).failing = why.map(str::to_string);
    }

    fn check_writable(inner: &Inner) -> Result<()> {
        match &inner.failing {
            Some(why) => Err(StorageError::Io(why.clone())),
            None => Ok(()),
        }
    }

    /// Simulates a crash and restart: every write not yet durable is lost.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Simulates a crash in which the first `n` writes not yet durable reached the disk
    /// (and the rest did not).
    pub fn crash_keeping(&self, n: usize) {
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        if let Some(durable) = inner.durable.as_mut() {
            for op in inner.pending.iter().take(n) {
                let r = durable.exec(op);
                debug_assert!(r.is_ok(), "replaying a write that succeeded: {r:?}");
            }
            inner.pending.clear();
            inner.live = durable.clone();
        }
    }

    /// A new store holding a copy of this store's durable state (what [`Self::crash`] would
    /// keep), replication state included, with the same options. Writes not yet durable
    /// are not copied. The two stores are independent afterwards.
    ///
    /// The simulator's stand-in for [`Storage::checkpoint`] followed by an open (the
    /// in-memory store has no directory to checkpoint into).
    pub fn snapshot(&self) -> MemStorage {
        let g = lock(&self.inner);
        // Object states are shared `Bytes`: the copy clones maps, not payloads.
        let state = g.durable.as_ref().unwrap_or(&g.live).clone();
        let sync = g.syncs;
        MemStorage {
            inner: Mutex::new(Inner {
                durable: if sync { None } else { Some(state.clone()) },
                live: state,
                pending: Vec::new(),
                syncs: sync,
                failing: None,
            }),
        }
    }

    /// How many returned writes are not yet durable.
    pub fn pending_writes(&self) -> usize {
        lock(&self.inner).pending.len()
    }

    fn write<T>(&self, op: MemOp, f: impl FnOnce(&mut MemState) -> Result<T>) -> Result<T> {
        let mut g = lock(&self.inner);
        Self::check_writable(&g)?;
        let out = f(&mut g.live)?;
        if g.durable.is_some() {
            g.pending.push(op);
            if g.syncs {
                Self::flush(&mut g);
            }
        }
        Ok(out)
    }

    /// Makes every pending write durable, in order.
    fn flush(inner: &mut Inner) {
        if let Some(durable) = inner.durable.as_mut() {
            for op in inner.pending.drain(..) {
                let r = durable.exec(&op);
                debug_assert!(r.is_ok(), "replaying a write that succeeded: {r:?}");
            }
        }
    }
}

impl Storage for MemStorage {
    fn last_transaction(&self) -> Result<Tid> {
        Ok(lock(&self.inner).live.meta.last)
    }

    fn horizon(&self) -> Result<Tid> {
        Ok(lock(&self.inner).live.meta.horizon)
    }

    fn load(&self, oid: &Oid) -> Result<Option<Revision>> {
        let g = lock(&self.inner);
        Ok(g.live.current.get(oid).map(|(tid, data)| Revision {
            oid: oid.clone(),
            tid: *tid,
            data: data.clone(),
        }))
    }

    fn load_before(&self, oid: &Oid, tid: Tid) -> Result<Option<Revision>> {
        let g = lock(&self.inner);
        check_load_before(g.live.meta.horizon, tid)?;
        Ok(g.live.history.get(oid).and_then(|h| {
            h.range(..tid).next_back().map(|(t, e)| Revision {
                oid: oid.clone(),
                tid: *t,
                data: e.data.clone(),
            })
        }))
    }

    fn history(&self, oid: &Oid, n: usize) -> Result<Vec<Revision>> {
        let g = lock(&self.inner);
        Ok(g.live.history.get(oid).map_or_else(Vec::new, |h| {
            h.iter()
                .rev()
                .take(n)
                .map(|(t, e)| Revision {
                    oid: oid.clone(),
                    tid: *t,
                    data: e.data.clone(),
                })
                .collect()
        }))
    }

    fn iter(&self, range: TidRange, direction: Direction) -> Result<TxnIter<'_>> {
        let horizon = lock(&self.inner).live.meta.horizon;
        iter_is_truncated(horizon, &range)?;
        self.iter_unchecked(range, direction)
    }

    fn iter_logged(&self, range: TidRange) -> Result<TxnIter<'_>> {
        self.iter_unchecked(range, Direction::Forward)
    }

    fn commit(&self, txn: &Transaction) -> Result<()> {
        self.write(MemOp::Commit(txn.clone()), |s| s.commit(txn))
    }

    fn apply(&self, prev: Tid, txn: &Transaction) -> Result<ApplyOutcome> {
        let mut g = lock(&self.inner);
        Self::check_writable(&g)?;
        let out = g.live.apply(prev, txn)?;
        if out == ApplyOutcome::Applied && g.durable.is_some() {
            g.pending.push(MemOp::Apply(prev, txn.clone()));
            if g.syncs {
                Self::flush(&mut g);
            }
        }
        Ok(out)
    }

    fn apply_batch_unsynced(&self, txns: &[(Tid, Transaction)]) -> Vec<Result<ApplyOutcome>> {
        let mut g = lock(&self.inner);
        if let Err(e) = Self::check_writable(&g) {
            return txns.iter().map(|_| Err(e.clone())).collect();
        }
        let inner = &mut *g;
        if inner.durable.is_none() {
            // From now on a crash keeps only what was synced (a syncing store pays for the
            // copy once, at its first unsynced write).
            inner.durable = Some(inner.live.clone());
        }
        txns.iter()
            .map(|(prev, txn)| {
                let out = inner.live.apply(*prev, txn)?;
                if out == ApplyOutcome::Applied {
                    inner.pending.push(MemOp::Apply(*prev, txn.clone()));
                }
                Ok(out)
            })
            .collect()
    }

    fn fast_recovery(&self, since: Tid, after: Option<&Oid>) -> Result<FastRecovery<'_>> {
        let g = lock(&self.inner);
        check_no_fill(&g.live.meta)?;
        // A snapshot of the changed objects (states are shared `Bytes`, not copied): the
        // in-memory store has no cheaper consistent view, and it is small by nature.
        let range = match after {
            Some(a) => g.live.current.range((
                std::ops::Bound::Excluded(a.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => g.live.current.range(..),
        };
        let revisions: Vec<Revision> = range
            .filter(|(_, (t, _))| *t > since)
            .map(|(oid, (tid, data))| Revision {
                oid: oid.clone(),
                tid: *tid,
                data: data.clone(),
            })
            .collect();
        Ok(FastRecovery {
            consistent_at: g.live.meta.last,
            revisions: Box::new(revisions.into_iter().map(Ok)),
        })
    }

    fn fill(&self, revisions: &[Revision]) -> Result<()> {
        self.write(MemOp::Fill(revisions.to_vec()), |s| s.fill(revisions))
    }

    fn fill_progress(&self) -> Result<Option<FillProgress>> {
        Ok(lock(&self.inner)
            .live
            .meta
            .fill
            .clone()
            .map(|(last_oid, tid_max)| FillProgress { last_oid, tid_max }))
    }

    fn fill_finish(&self, consistent_at: Tid) -> Result<()> {
        self.write(MemOp::FillFinish(consistent_at), |s| {
            s.fill_finish(consistent_at)
        })
    }

    fn truncate_after(&self, tid: Tid) -> Result<Vec<Tid>> {
        self.write(MemOp::Truncate(tid), |s| s.truncate(tid))
    }

    fn lost_transactions(&self) -> Result<LostIter<'_>> {
        Ok(Box::new(MemLostIter {
            store: self,
            next: 0,
        }))
    }

    fn pack_gc(&self, before: Tid, unreachable: &[Oid]) -> Result<PackStats> {
        self.write(MemOp::PackGc(before, unreachable.to_vec()), |s| {
            s.pack_gc(before, unreachable)
        })
    }

    fn object_count(&self) -> Result<u64> {
        Ok(lock(&self.inner).live.meta.objects)
    }

    fn replication_state(&self) -> Result<Option<Bytes>> {
        Ok(lock(&self.inner).live.replication.clone())
    }

    fn set_replication_state(&self, state: &[u8]) -> Result<()> {
        check_replication_state(state)?;
        let state = Bytes::copy_from_slice(state);
        self.write(MemOp::SetReplicationState(state.clone()), |s| {
            s.set_replication_state(state)
        })
    }

    fn checkpoint(&self, _dir: &Path) -> Result<Tid> {
        Err(StorageError::Unsupported(
            "checkpoint: the in-memory store has no files; copy it with MemStorage::snapshot",
        ))
    }

    fn sync(&self) -> Result<()> {
        let mut g = lock(&self.inner);
        Self::check_writable(&g)?;
        Self::flush(&mut g);
        Ok(())
    }
}

/// Walks the live store with a cursor, one lock per transaction: no copy of the range.
struct MemTxnIter<'a> {
    store: &'a MemStorage,
    next: Option<Tid>,
    lo: Tid,
    hi: Tid,
    direction: Direction,
}

impl Iterator for MemTxnIter<'_> {
    type Item = Result<Transaction>;

    fn next(&mut self) -> Option<Self::Item> {
        let cursor = self.next?;
        let g = lock(&self.store.inner);
        let found = match self.direction {
            Direction::Forward => g.live.txns.range(cursor..=self.hi).next(),
            Direction::Reverse => g.live.txns.range(self.lo..=cursor).next_back(),
        };
        let Some((tid, mt)) = found else {
            self.next = None;
            return None;
        };
        self.next = match self.direction {
            Direction::Forward => tid.0.checked_add(1).map(Tid).filter(|t| *t <= self.hi),
            Direction::Reverse => tid.0.checked_sub(1).map(Tid).filter(|t| *t >= self.lo),
        };
        Some(Ok(g.live.txn_at(*tid, mt)))
    }
}

struct MemLostIter<'a> {
    store: &'a MemStorage,
    next: u64,
}

impl Iterator for MemLostIter<'_> {
    type Item = Result<LostTransaction>;

    fn next(&mut self) -> Option<Self::Item> {
        let g = lock(&self.store.inner);
        let (seq, lt) = g.live.lost.range(self.next..).next()?;
        self.next = seq + 1;
        Some(Ok(lt.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::suite::{oid, txn};

    fn state(s: &MemStorage) -> Option<Bytes> {
        s.replication_state().unwrap()
    }

    fn b(v: &[u8]) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(v))
    }

    fn all(s: &MemStorage) -> Vec<Transaction> {
        s.iter(TidRange::ALL, Direction::Forward)
            .unwrap()
            .map(|t| t.unwrap())
            .collect()
    }

    #[test]
    fn snapshot_is_an_independent_copy() {
        let s = MemStorage::default();
        s.commit(&txn(1, &[(1, Some("a1")), (2, Some("b1"))]))
            .unwrap();
        s.commit(&txn(2, &[(1, Some("a2"))])).unwrap();
        s.truncate_after(Tid(1)).unwrap();
        s.set_replication_state(b"epoch 1").unwrap();
        let c = s.snapshot();
        assert_eq!(c.last_transaction().unwrap(), Tid(1));
        assert_eq!(all(&c), all(&s));
        assert_eq!(c.load(&oid(1)).unwrap(), s.load(&oid(1)).unwrap());
        assert_eq!(c.lost_transactions().unwrap().count(), 1);
        assert_eq!(state(&c), b(b"epoch 1"));

        // Writes to either side do not reach the other.
        s.commit(&txn(3, &[(1, Some("s3"))])).unwrap();
        s.set_replication_state(b"epoch 2").unwrap();
        assert_eq!(c.last_transaction().unwrap(), Tid(1));
        assert_eq!(state(&c), b(b"epoch 1"));
        c.commit(&txn(4, &[(2, Some("c4"))])).unwrap();
        c.set_replication_state(b"copy").unwrap();
        assert_eq!(s.last_transaction().unwrap(), Tid(3));
        assert_eq!(s.load(&oid(2)).unwrap().unwrap().tid, Tid(1));
        assert_eq!(state(&s), b(b"epoch 2"));
        assert_eq!(c.load(&oid(1)).unwrap().unwrap().tid, Tid(1));

        // Same options: the copy of a syncing store syncs too.
        assert_eq!(c.pending_writes(), 0);
        c.crash();
        assert_eq!(c.last_transaction().unwrap(), Tid(4));
        assert_eq!(state(&c), b(b"copy"));
    }

    /// A syncing store keeps unsynced applies until a sync or a synced write, and a crash
    /// before either loses them (what the simulator's crashes rely on).
    #[test]
    fn a_crash_loses_unsynced_applies_of_a_syncing_store() {
        let s = MemStorage::default();
        s.commit(&txn(1, &[(1, Some("a1"))])).unwrap();
        let r = s.apply_batch_unsynced(&[(Tid(1), txn(2, &[(1, Some("a2"))]))]);
        assert_eq!(r, vec![Ok(ApplyOutcome::Applied)]);
        assert_eq!(s.pending_writes(), 1);
        assert_eq!(s.snapshot().last_transaction().unwrap(), Tid(1));
        s.crash();
        assert_eq!(s.last_transaction().unwrap(), Tid(1));
        assert_eq!(s.load(&oid(1)).unwrap().unwrap().tid, Tid(1));
        // Synced by `sync`, or by the next synced write: kept.
        s.apply_batch_unsynced(&[(Tid(1), txn(2, &[(1, Some("a2"))]))]);
        s.sync().unwrap();
        s.apply_batch_unsynced(&[(Tid(2), txn(3, &[(1, Some("a3"))]))]);
        s.set_replication_state(b"promise").unwrap();
        assert_eq!(s.pending_writes(), 0);
        s.crash();
        assert_eq!(s.last_transaction().unwrap(), Tid(3));
        assert_eq!(state(&s), b(b"promise"));
    }

    #[test]
    fn snapshot_of_an_unsynced_store_leaves_out_unsynced_writes() {
        let s = MemStorage::new(MemOptions { sync: false });
        s.commit(&txn(1, &[(1, Some("a1"))])).unwrap();
        s.set_replication_state(b"epoch 1").unwrap();
        s.sync().unwrap();
        s.commit(&txn(2, &[(1, Some("a2"))])).unwrap();
        s.set_replication_state(b"epoch 2").unwrap();
        let c = s.snapshot();
        assert_eq!(c.last_transaction().unwrap(), Tid(1));
        assert_eq!(c.load(&oid(1)).unwrap().unwrap().tid, Tid(1));
        assert_eq!(state(&c), b(b"epoch 1"));
        assert_eq!(c.pending_writes(), 0);
        // The original is untouched, un-synced writes included.
        assert_eq!(s.last_transaction().unwrap(), Tid(2));
        assert_eq!(state(&s), b(b"epoch 2"));
        assert_eq!(s.pending_writes(), 2);

        // Same options: the copy does not sync either.
        c.commit(&txn(5, &[(3, Some("c5"))])).unwrap();
        c.set_replication_state(b"copy").unwrap();
        assert_eq!(c.pending_writes(), 2);
        c.crash();
        assert_eq!(c.last_transaction().unwrap(), Tid(1));
        assert_eq!(state(&c), b(b"epoch 1"));
        // The original still holds its un-synced writes and can make them durable.
        s.sync().unwrap();
        s.crash();
        assert_eq!(s.last_transaction().unwrap(), Tid(2));
        assert_eq!(state(&s), b(b"epoch 2"));
        assert_eq!(s.load(&oid(3)).unwrap(), None);
    }

    #[test]
    fn crash_loses_an_unsynced_replication_state() {
        let s = MemStorage::new(MemOptions { sync: false });
        s.set_replication_state(b"never synced").unwrap();
        s.crash();
        assert_eq!(state(&s), None);

        s.set_replication_state(b"epoch 1").unwrap();
        s.sync().unwrap();
        s.set_replication_state(b"epoch 2").unwrap();
        assert_eq!(s.pending_writes(), 1);
        assert_eq!(state(&s), b(b"epoch 2"));
        s.crash();
        assert_eq!(state(&s), b(b"epoch 1"), "the un-synced set is lost");

        // A crash keeping a prefix of the pending writes keeps the sets in it, in order.
        s.set_replication_state(b"epoch 3").unwrap();
        s.commit(&txn(1, &[(1, Some("a"))])).unwrap();
        s.set_replication_state(b"epoch 4").unwrap();
        s.crash_keeping(2);
        assert_eq!(state(&s), b(b"epoch 3"));
        assert_eq!(s.last_transaction().unwrap(), Tid(1));

        // A refused state is not a pending write.
        let big = vec![0u8; META_LEN_MAX + 1];
        assert!(matches!(
            s.set_replication_state(&big),
            Err(StorageError::StateTooLarge { .. })
        ));
        assert_eq!(s.pending_writes(), 0);

        // A syncing store loses nothing.
        let d = MemStorage::default();
        d.set_replication_state(b"kept").unwrap();
        d.crash();
        assert_eq!(state(&d), b(b"kept"));
    }
}
