//! A plain model of the storage semantics: a map of transactions and a map of filled
//! revisions, with every question answered by scanning them. Slow and simple on purpose.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::types::{
    same_content, validate_txn, ApplyOutcome, Direction, FillProgress, LostTransaction, Oid,
    PackStats, Record, Revision, Tid, TidRange, Transaction, DATA_LEN_MAX, META_LEN_MAX,
    OID_LEN_MAX,
};

#[derive(Clone, Debug)]
struct ModelTxn {
    /// As committed (for duplicate detection).
    original: Transaction,
    /// Records still stored: `None` once packed away.
    records: Vec<Option<Record>>,
}

/// The model. Mirrors every [`crate::Storage`] method with the same results and errors.
#[derive(Clone, Debug, Default)]
pub struct Model {
    txns: BTreeMap<Tid, ModelTxn>,
    fills: BTreeMap<(Oid, Tid), Option<Bytes>>,
    last: Tid,
    horizon: Tid,
    fill_tid: Tid,
    fill: Option<(Oid, Tid)>,
    lost: Vec<LostTransaction>,
    replication: Option<Bytes>,
}

fn fill_in_progress() -> StorageError {
    StorageError::InvalidFill {
        reason: "a fast-recovery fill is in progress: finish it first".into(),
    }
}

impl Model {
    /// An empty model.
    pub fn new() -> Model {
        Model::default()
    }

    /// Every stored revision of `oid`, oldest first.
    fn revisions(&self, oid: &Oid) -> Vec<Revision> {
        let mut out: BTreeMap<Tid, Option<Bytes>> = BTreeMap::new();
        for (tid, t) in &self.txns {
            for r in t.records.iter().flatten() {
                if &r.oid == oid {
                    out.insert(*tid, r.data.clone());
                }
            }
        }
        for ((o, tid), d) in &self.fills {
            if o == oid {
                out.insert(*tid, d.clone());
            }
        }
        out.into_iter()
            .map(|(tid, data)| Revision {
                oid: oid.clone(),
                tid,
                data,
            })
            .collect()
    }

    /// Every oid with a stored revision.
    pub fn oids(&self) -> Vec<Oid> {
        let mut out: Vec<Oid> = self
            .txns
            .values()
            .flat_map(|t| t.records.iter().flatten().map(|r| r.oid.clone()))
            .chain(self.fills.keys().map(|(o, _)| o.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Tids of the stored transactions.
    pub fn tids(&self) -> Vec<Tid> {
        self.txns.keys().copied().collect()
    }

    /// A stored transaction as it was committed.
    pub fn original(&self, tid: Tid) -> Option<&Transaction> {
        self.txns.get(&tid).map(|t| &t.original)
    }

    /// See [`crate::Storage::last_transaction`].
    pub fn last_transaction(&self) -> Tid {
        self.last
    }

    /// See [`crate::Storage::horizon`].
    pub fn horizon(&self) -> Tid {
        self.horizon
    }

    /// See [`crate::Storage::load`].
    pub fn load(&self, oid: &Oid) -> Option<Revision> {
        self.revisions(oid).pop()
    }

    /// The current serial of `oid` (`Tid::ZERO` if it has no revision).
    pub fn serial(&self, oid: &Oid) -> Tid {
        self.load(oid).map_or(Tid::ZERO, |r| r.tid)
    }

    /// See [`crate::Storage::load_before`].
    pub fn load_before(&self, oid: &Oid, tid: Tid) -> Result<Option<Revision>> {
        if self.horizon > Tid::ZERO && tid <= self.horizon {
            return Err(StorageError::HistoryTruncated {
                horizon: self.horizon,
            });
        }
        Ok(self.revisions(oid).into_iter().rev().find(|r| r.tid < tid))
    }

    /// See [`crate::Storage::history`].
    pub fn history(&self, oid: &Oid, n: usize) -> Vec<Revision> {
        self.revisions(oid).into_iter().rev().take(n).collect()
    }

    /// See [`crate::Storage::iter`] (collected).
    pub fn iter(&self, range: TidRange, direction: Direction) -> Result<Vec<Transaction>> {
        let (lo, hi) = range.bounds();
        if lo > hi {
            return Ok(Vec::new());
        }
        if self.horizon > Tid::ZERO && lo <= self.horizon {
            return Err(StorageError::HistoryTruncated {
                horizon: self.horizon,
            });
        }
        let mut out: Vec<Transaction> = self
            .txns
            .range(lo..=hi)
            .map(|(tid, t)| Transaction {
                tid: *tid,
                meta: t.original.meta.clone(),
                records: t.records.iter().flatten().cloned().collect(),
            })
            .collect();
        if direction == Direction::Reverse {
            out.reverse();
        }
        Ok(out)
    }

    fn insert(&mut self, txn: &Transaction) {
        self.txns.insert(
            txn.tid,
            ModelTxn {
                original: txn.clone(),
                records: txn
                    .records
                    .iter()
                    .map(|r| {
                        Some(Record {
                            oid: r.oid.clone(),
                            data: r.data.clone(),
                            expected_serial: None,
                        })
                    })
                    .collect(),
            },
        );
        self.last = txn.tid;
    }

    /// See [`crate::Storage::commit`].
    pub fn commit(&mut self, txn: &Transaction) -> Result<()> {
        validate_txn(txn)?;
        if self.fill.is_some() {
            return Err(fill_in_progress());
        }
        if txn.tid <= self.last {
            return Err(StorageError::NonIncreasingTid {
                tid: txn.tid,
                last: self.last,
            });
        }
        for r in &txn.records {
            if let Some(expected) = r.expected_serial {
                let actual = self.serial(&r.oid);
                if expected != actual {
                    return Err(StorageError::Conflict {
                        oid: r.oid.clone(),
                        expected,
                        actual,
                    });
                }
            }
        }
        self.insert(txn);
        Ok(())
    }

    /// See [`crate::Storage::apply`].
    pub fn apply(&mut self, prev: Tid, txn: &Transaction) -> Result<ApplyOutcome> {
        validate_txn(txn)?;
        if self.fill.is_some() {
            return Err(fill_in_progress());
        }
        if txn.tid <= self.last {
            return match self.txns.get(&txn.tid) {
                None => Err(StorageError::NonIncreasingTid {
                    tid: txn.tid,
                    last: self.last,
                }),
                Some(t) if same_content(&t.original, txn) => Ok(ApplyOutcome::AlreadyPresent),
                Some(_) => Err(StorageError::DivergentApply { tid: txn.tid }),
            };
        }
        if prev != self.last {
            return Err(StorageError::Gap {
                tid: txn.tid,
                prev,
                last: self.last,
            });
        }
        self.insert(txn);
        Ok(ApplyOutcome::Applied)
    }

    /// See [`crate::Storage::fast_recovery`] (collected).
    pub fn fast_recovery(&self, since: Tid, after: Option<&Oid>) -> Result<(Tid, Vec<Revision>)> {
        if self.fill.is_some() {
            return Err(fill_in_progress());
        }
        let revs = self
            .oids()
            .into_iter()
            .filter(|o| after.is_none_or(|a| o > a))
            .filter_map(|o| self.load(&o))
            .filter(|r| r.tid > since)
            .collect();
        Ok((self.last, revs))
    }

    /// See [`crate::Storage::fill`].
    pub fn fill(&mut self, revisions: &[Revision]) -> Result<()> {
        for r in revisions {
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
            if r.tid <= self.last {
                return Err(StorageError::InvalidFill {
                    reason: format!(
                        "revision of {} at {} is not newer than the last transaction {}",
                        r.oid, r.tid, self.last
                    ),
                });
            }
        }
        if revisions.is_empty() && self.fill.is_none() {
            return Ok(());
        }
        let (mut last_oid, mut tid_max) = self.fill.clone().unwrap_or_default();
        for r in revisions {
            self.fills.insert((r.oid.clone(), r.tid), r.data.clone());
            last_oid = last_oid.max(r.oid.clone());
            tid_max = tid_max.max(r.tid);
        }
        self.fill = Some((last_oid, tid_max));
        Ok(())
    }

    /// See [`crate::Storage::fill_progress`].
    pub fn fill_progress(&self) -> Option<FillProgress> {
        self.fill
            .clone()
            .map(|(last_oid, tid_max)| FillProgress { last_oid, tid_max })
    }

    /// See [`crate::Storage::fill_finish`].
    pub fn fill_finish(&mut self, at: Tid) -> Result<()> {
        if at < self.last {
            return Err(StorageError::InvalidFill {
                reason: format!(
                    "finish at {at} is before the last transaction {}",
                    self.last
                ),
            });
        }
        if let Some((_, tid_max)) = &self.fill {
            if at < *tid_max {
                return Err(StorageError::InvalidFill {
                    reason: format!("finish at {at} is before a filled revision at {tid_max}"),
                });
            }
        }
        if at > self.last {
            self.last = at;
            self.horizon = self.horizon.max(at);
            self.fill_tid = at;
        }
        self.fill = None;
        Ok(())
    }

    /// See [`crate::Storage::truncate_after`].
    pub fn truncate_after(&mut self, tid: Tid) -> Result<Vec<Tid>> {
        if self.fill.is_some() {
            return Err(fill_in_progress());
        }
        if tid >= self.last {
            return Ok(Vec::new());
        }
        if self.horizon > Tid::ZERO && tid < self.horizon {
            return Err(StorageError::HistoryTruncated {
                horizon: self.horizon,
            });
        }
        let removed: Vec<Tid> = self.txns.range(Tid(tid.0 + 1)..).map(|(t, _)| *t).collect();
        for t in &removed {
            if let Some(mt) = self.txns.remove(t) {
                self.lost.push(LostTransaction {
                    seq: self.lost.len() as u64,
                    truncated_after: tid,
                    txn: Transaction {
                        tid: *t,
                        meta: mt.original.meta.clone(),
                        records: mt.records.into_iter().flatten().collect(),
                    },
                });
            }
        }
        self.fills.retain(|(_, t), _| *t <= tid);
        let newest = self.txns.keys().next_back().copied().unwrap_or(Tid::ZERO);
        self.last = newest.max(self.fill_tid);
        Ok(removed)
    }

    /// See [`crate::Storage::lost_transactions`] (collected).
    pub fn lost_transactions(&self) -> Vec<LostTransaction> {
        self.lost.clone()
    }

    /// See [`crate::Storage::replication_state`].
    pub fn replication_state(&self) -> Option<Bytes> {
        self.replication.clone()
    }

    /// See [`crate::Storage::set_replication_state`]. Outside the history: nothing else
    /// in the model reads or changes it.
    pub fn set_replication_state(&mut self, state: &[u8]) -> Result<()> {
        if state.len() > META_LEN_MAX {
            return Err(StorageError::StateTooLarge {
                len: state.len(),
                max: META_LEN_MAX,
            });
        }
        self.replication = Some(Bytes::copy_from_slice(state));
        Ok(())
    }

    /// See [`crate::Storage::object_count`].
    pub fn object_count(&self) -> u64 {
        self.oids()
            .iter()
            .filter(|o| self.load(o).is_some_and(|r| r.data.is_some()))
            .count() as u64
    }

    /// Removes one revision of `oid` (a filled one, or its record).
    fn remove_revision(&mut self, oid: &Oid, tid: Tid) {
        if self.fills.remove(&(oid.clone(), tid)).is_none() {
            if let Some(t) = self.txns.get_mut(&tid) {
                for slot in t.records.iter_mut() {
                    if slot.as_ref().is_some_and(|x| &x.oid == oid) {
                        *slot = None;
                    }
                }
            }
        }
    }

    /// See [`crate::Storage::pack`].
    pub fn pack(&mut self, before: Tid) -> Result<PackStats> {
        self.pack_gc(before, &[])
    }

    /// See [`crate::Storage::pack_gc`].
    pub fn pack_gc(&mut self, before: Tid, unreachable: &[Oid]) -> Result<PackStats> {
        if self.fill.is_some() {
            return Err(fill_in_progress());
        }
        let mut stats = PackStats {
            horizon: self.horizon,
            ..PackStats::default()
        };
        let b = Tid(before.0.min(self.last.0.saturating_add(1)));
        if b == Tid::ZERO {
            return Ok(stats);
        }
        for oid in self.oids() {
            let revs = self.revisions(&oid);
            let Some(keep) = revs.iter().rev().find(|r| r.tid < b).map(|r| r.tid) else {
                continue;
            };
            for r in revs.iter().filter(|r| r.tid < keep) {
                stats.revisions_removed += 1;
                self.remove_revision(&oid, r.tid);
            }
        }
        let unreachable: BTreeSet<&Oid> = unreachable.iter().collect();
        for oid in unreachable {
            let revs = self.revisions(oid);
            if revs.last().is_some_and(|r| r.tid < b) {
                stats.objects_removed += 1;
                for r in revs {
                    stats.revisions_removed += 1;
                    self.remove_revision(oid, r.tid);
                }
            }
        }
        self.horizon = self.horizon.max(Tid(b.0 - 1));
        stats.horizon = self.horizon;
        Ok(stats)
    }
}
