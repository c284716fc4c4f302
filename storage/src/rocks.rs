//! The durable backend, on RocksDB. Layout, group commit and crash semantics are described
//! in `DESIGN.md`; in short:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `txn` | `tid (8) ++ idx (4)`; idx 0 = header, idx i+1 = record i | `TxnHeader` / record |
//! | `revisions` | escaped oid ++ `!tid (8)`: an object's revisions newest first | `Ref(idx)` into `txn` (large state), `Logged(idx, state)` (small state or deletion, also in `txn`), `Filled(state)` (from a fill) |
//! | `lost` | archive seq (8) | truncated-after tid ++ whole transaction |
//! | `meta` | `format`, `state`, `replication` | format marker; `MetaState`; replication state |
//!
//! Every data write goes through one `WriteBatch` that also rewrites `meta/state`, so data,
//! `last_transaction` and the object count change atomically (a pack writes several
//! batches, each one consistent). The replication state is one key of its own,
//! outside the transactional history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBRawIteratorWithThreadMode,
    Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions, DB,
};

use crate::codec::{
    check_format, decode_lost, decode_record, decode_replication, encode_format, encode_lost,
    encode_record, encode_replication, keys, MetaState, RevValue, TxnHeader, LAYOUT,
};
use crate::error::{Result, StorageError};
use crate::mem::{
    check_fill_finish, check_fill_revision, check_horizon, check_load_before,
    check_replication_state, finish_meta, iter_is_truncated, pack_bound, recount,
};
use crate::types::{
    same_content, validate_txn, ApplyOutcome, Direction, FillProgress, LostTransaction, Oid,
    PackStats, Record, Revision, Tid, TidRange, Transaction,
};
use crate::{FastRecovery, LostIter, Storage, TxnIter};

const CF_TXN: &str = "txn";
const CF_REVISIONS: &str = "revisions";
const CF_LOST: &str = "lost";
const CF_META: &str = "meta";
const CFS: [&str; 4] = [CF_TXN, CF_REVISIONS, CF_LOST, CF_META];
/// The column families of layout 1, which `revisions` replaced.
const LAYOUT_1_CFS: [&str; 2] = ["current", "history"];

/// Deletes per write batch when packing (a batch ends between two objects, so one with a
/// long history may exceed it).
const PACK_BATCH_OPS: usize = 16 * 1024;
/// Read-ahead for scans (`iter`, `fast_recovery`, `pack`, `verify`, the object count).
const SCAN_READAHEAD: usize = 4 << 20;
/// States up to this size are copied into their revision (a load is one read); larger ones
/// are only in the transaction's record, which the revision names: every byte written
/// costs a copy, a checksum and a compression, twice over with the log.
const REVISION_INLINE_MAX: usize = 512;

/// Options of [`RocksStorage`].
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// `commit`/`apply` return after an fsync of the write-ahead log (shared by concurrent
    /// committers). Off (tests, benchmarks): writes survive a process crash, not an OS crash.
    pub sync: bool,
    /// Block cache size in bytes.
    pub block_cache_bytes: usize,
    /// Memtable size of each column family. Small on purpose: every commit inserts several
    /// keys at random places of the memtable skip lists, and in a large memtable each insert
    /// is a chain of cache misses (with 64 MiB, memtable inserts were a third of a loaded
    /// server's CPU; see BENCHMARKS.md).
    pub write_buffer_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            sync: true,
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 8 << 20,
        }
    }
}

/// RocksDB's errors by kind: corruption (a checksum, a manifest, a missing table file) is
/// told apart from an I/O failure (disk full, a failed device), because an operator answers
/// the two differently (rebuild the store, or free space and restart).
fn rocks_err(e: rocksdb::Error) -> StorageError {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => StorageError::Corrupt {
            what: e.into_string(),
        },
        rocksdb::ErrorKind::IOError => StorageError::Io(e.into_string()),
        _ => StorageError::Rocks(e.into_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation of the guarded state happens after the fallible work, so a panic
    // elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Request {
    Commit(Transaction),
    Apply(Tid, Transaction),
}

impl Request {
    fn txn(&self) -> &Transaction {
        match self {
            Request::Commit(t) | Request::Apply(_, t) => t,
        }
    }
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    pending: Vec<(u64, Request)>,
    done: BTreeMap<u64, Result<ApplyOutcome>>,
    leader: bool,
}

struct WriterState {
    meta: MetaState,
    poisoned: Option<String>,
}

/// The RocksDB backend.
pub struct RocksStorage {
    /// Shared with the handles of [`Storage::read_handle`]; the database closes with the last.
    inner: Arc<RocksShared>,
}

#[doc(hidden)]
pub struct RocksShared {
    db: DB,
    path: PathBuf,
    sync: bool,
    writer: Mutex<WriterState>,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
}

impl std::ops::Deref for RocksStorage {
    type Target = RocksShared;
    fn deref(&self) -> &RocksShared {
        &self.inner
    }
}

impl std::fmt::Debug for RocksStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStorage")
            .field("path", &self.path)
            .field("sync", &self.sync)
            .finish()
    }
}

/// Resets the leader flag if the leader unwinds, so followers are not stuck forever.
struct LeaderGuard<'a> {
    store: &'a RocksStorage,
    armed: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut q = lock(&self.store.queue);
            q.leader = false;
            self.store.queue_cv.notify_all();
        }
    }
}

impl RocksStorage {
    /// Opens (creating if needed) the store in `path`. A checkpoint directory opens the
    /// same way.
    pub fn open(path: impl AsRef<Path>, opts: RocksOptions) -> Result<RocksStorage> {
        let path = path.as_ref().to_path_buf();
        // A store of layout 1 has column families this build does not open: say so, rather
        // than RocksDB's "column families not opened".
        if let Ok(names) = DB::list_cf(&Options::default(), &path) {
            if names.iter().any(|n| LAYOUT_1_CFS.contains(&n.as_str())) {
                return Err(StorageError::Layout {
                    found: 1,
                    reads: LAYOUT,
                });
            }
        }
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        // Reuse obsolete write-ahead logs instead of appending to new files: an fsync of an
        // overwrite within the file's size has no metadata to journal (0.13 ms against 0.19
        // for an append on this machine's ext4), and every commit waits for one.
        db_opts.set_recycle_log_file_num(4);
        // Small column families (meta, lost) would otherwise pin every log until their
        // memtable fills: cap the logs kept, flushing what holds the oldest one.
        db_opts.set_max_total_wal_size(64 << 20);
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_block_size(32 << 10);
        // `revisions` is read by seeks within one object's prefix (every commit reads the
        // current revision of each object it writes, most often a new one): the escaped oid
        // is the prefix RocksDB filters on, in the memtable and in every table file, so a
        // seek skips the files that do not hold the object instead of reading a block of
        // each. Scans of the whole family say so (`total_order_seek`).
        let mut rev_table = BlockBasedOptions::default();
        rev_table.set_block_cache(&cache);
        rev_table.set_block_size(32 << 10);
        rev_table.set_bloom_filter(10.0, false);
        rev_table.set_whole_key_filtering(false);
        let cfs = CFS.map(|name| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(opts.write_buffer_bytes.max(1 << 20));
            if name == CF_TXN || name == CF_REVISIONS {
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            if name == CF_REVISIONS {
                o.set_block_based_table_factory(&rev_table);
                // RocksDB matches the filters of table files to the extractor by this name:
                // it must change with the key encoding.
                o.set_prefix_extractor(SliceTransform::create(
                    "standby-oid-prefix",
                    keys::rev_prefix_of,
                    Some(keys::rev_in_domain),
                ));
                o.set_memtable_prefix_bloom_ratio(0.1);
            }
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(rocks_err)?;
        let store = RocksStorage {
            inner: Arc::new(RocksShared {
                db,
                path,
                sync: opts.sync,
                writer: Mutex::new(WriterState {
                    meta: MetaState::default(),
                    poisoned: None,
                }),
                queue: Mutex::new(Queue::default()),
                queue_cv: Condvar::new(),
            }),
        };
        let meta = store.open_meta()?;
        lock(&store.writer).meta = meta;
        Ok(store)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole store and checks it: every block of every table against its checksum
    /// (RocksDB's), then every transaction record and every revision through the decoders
    /// (this crate's format checks) with the log record it names. Returns how many keys were read. Costs a full
    /// read of the store: for `standby-server --verify`, not for every start.
    pub fn verify(&self) -> Result<u64> {
        let mut keys = 0u64;
        for name in CFS {
            let mut r = Self::scan_opts();
            r.set_verify_checksums(true);
            r.fill_cache(false);
            let mut it = self.db.raw_iterator_cf_opt(self.cf(name)?, r);
            it.seek_to_first();
            while it.valid() {
                keys += 1;
                it.next();
            }
            it.status().map_err(|e| match rocks_err(e) {
                StorageError::Corrupt { what } => StorageError::Corrupt {
                    what: format!("column family {name}: {what}"),
                },
                other => other,
            })?;
        }
        let horizon = self.horizon()?;
        let range = if horizon == Tid::ZERO {
            TidRange::new(None, None)
        } else {
            TidRange::after(horizon)
        };
        for t in self.iter(range, Direction::Forward)? {
            t?;
        }
        // Every revision, and the log record each names: a `Ref`'s state must be there, a
        // `Logged` copy must match its record (a pack deletes the record it names).
        let snap = self.db.snapshot();
        let mut r = Self::scan_opts();
        r.set_verify_checksums(true);
        r.fill_cache(false);
        let mut it = snap.raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, r);
        it.seek_to_first();
        while let Some((k, v)) = it.item() {
            let (oid, tid, _) = keys::parse_rev(k)?;
            let rv = RevValue::decode(v, &|| format!("revision of {oid} at {tid}"))?;
            if let RevValue::Logged(idx, data) = &rv {
                let logged = self.resolve_value(&snap, &oid, tid, RevValue::Ref(*idx))?;
                if &logged != data {
                    return Err(StorageError::corrupt(format!(
                        "revision of {oid} at {tid}: its copy differs from record {idx}"
                    )));
                }
            } else {
                self.resolve_value(&snap, &oid, tid, rv)?;
            }
            it.next();
        }
        it.status().map_err(rocks_err)?;
        Ok(keys)
    }

    fn open_meta(&self) -> Result<MetaState> {
        let meta_cf = self.cf(CF_META)?;
        let format = self
            .db
            .get_pinned_cf(meta_cf, keys::META_FORMAT)
            .map_err(rocks_err)?;
        match format {
            Some(f) => {
                check_format(&f)?;
                drop(f);
                let v = self
                    .db
                    .get_pinned_cf(meta_cf, keys::META_STATE)
                    .map_err(rocks_err)?
                    .ok_or_else(|| StorageError::corrupt("meta state is missing"))?;
                let (mut meta, counted) = MetaState::decode_versioned(&v)?;
                drop(v);
                if !counted {
                    // Written by a version without the object count: count once, store it.
                    meta.objects = self.count_objects()?;
                    let mut b = WriteBatch::default();
                    b.put_cf(meta_cf, keys::META_STATE, meta.encode());
                    self.db
                        .write_opt(b, &self.write_opts(true))
                        .map_err(rocks_err)?;
                }
                Ok(meta)
            }
            None => {
                // A new store, unless something is already there.
                for name in CFS {
                    let mut it = self
                        .db
                        .raw_iterator_cf_opt(self.cf(name)?, Self::scan_opts());
                    it.seek_to_first();
                    if it.valid() {
                        return Err(StorageError::corrupt(format!(
                            "column family {name} holds data but the format marker is missing"
                        )));
                    }
                    it.status().map_err(rocks_err)?;
                }
                let meta = MetaState::default();
                let mut b = WriteBatch::default();
                b.put_cf(meta_cf, keys::META_FORMAT, encode_format());
                b.put_cf(meta_cf, keys::META_STATE, meta.encode());
                self.db
                    .write_opt(b, &self.write_opts(true))
                    .map_err(rocks_err)?;
                Ok(meta)
            }
        }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::corrupt(format!("column family {name} is missing")))
    }

    fn write_opts(&self, sync: bool) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        w
    }

    /// Read options of a scan: read-ahead, and the whole key order (`revisions` has a prefix
    /// extractor, under which a seek may otherwise stay within one object).
    fn scan_opts() -> ReadOptions {
        let mut r = ReadOptions::default();
        r.set_readahead_size(SCAN_READAHEAD);
        r.set_total_order_seek(true);
        r
    }

    fn read_meta(&self) -> Result<MetaState> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META)?, keys::META_STATE)
            .map_err(rocks_err)?
            .ok_or_else(|| StorageError::corrupt("meta state is missing"))?;
        MetaState::decode(&v)
    }

    /// Counts the objects whose current revision holds a state: one scan of `revisions`,
    /// the first key of each object.
    fn count_objects(&self) -> Result<u64> {
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, Self::scan_opts());
        it.seek_to_first();
        let mut n = 0u64;
        while let Some((k, v)) = it.item() {
            let (oid, tid, plen) = keys::parse_rev(k)?;
            if RevValue::decode_live(v, &|| format!("revision of {oid} at {tid}"))? {
                n += 1;
            }
            let past = keys::rev_past(&k[..plen]);
            skip_object(&mut it, &past);
        }
        it.status().map_err(rocks_err)?;
        Ok(n)
    }

    /// Read options for an iterator over one object's revisions: it stays within `prefix`
    /// (filtered by the prefix blooms) and stops at its end.
    fn object_opts(prefix: &[u8]) -> ReadOptions {
        let mut r = ReadOptions::default();
        r.set_prefix_same_as_start(true);
        r.set_iterate_upper_bound(keys::rev_past(prefix));
        r
    }

    /// The serial of `oid` and whether its current revision holds a state; `(Tid::ZERO,
    /// false)` if it has none. Does not copy the state.
    fn current_head(&self, oid: &Oid) -> Result<(Tid, bool)> {
        let prefix = keys::rev_prefix(oid);
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, Self::object_opts(&prefix));
        it.seek(&prefix);
        let head = match object_item(&it, &prefix)? {
            Some((tid, v)) => {
                let live = RevValue::decode_live(v, &|| format!("revision of {oid} at {tid}"))?;
                (tid, live)
            }
            None => (Tid::ZERO, false),
        };
        it.status().map_err(rocks_err)?;
        Ok(head)
    }

    fn current_of(&self, oid: &Oid) -> Result<Option<(Tid, Option<Bytes>)>> {
        let prefix = keys::rev_prefix(oid);
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, Self::object_opts(&prefix));
        it.seek(&prefix);
        let found = match object_item(&it, &prefix)? {
            None => None,
            Some((tid, v)) => match RevValue::decode(v, &|| format!("revision of {oid} at {tid}"))?
            {
                RevValue::Logged(_, d) | RevValue::Filled(d) => Some((tid, d)),
                // The state is a record of its transaction: read both at one snapshot, so
                // that a pack or truncation between the two reads cannot split them.
                RevValue::Ref(_) => None,
            },
        };
        it.status().map_err(rocks_err)?;
        drop(it);
        if found.is_some() {
            return Ok(found);
        }
        let snap = self.db.snapshot();
        Ok(self
            .revision_at_or_before(&snap, oid, Tid::MAX)?
            .map(|r| (r.tid, r.data)))
    }

    fn write_batch(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        self.db
            .write_opt(batch, &self.write_opts(sync))
            .map_err(rocks_err)
    }

    /// Runs `f` with the writer lock, refusing if an earlier write failed.
    fn with_writer<T>(&self, f: impl FnOnce(&mut WriterState) -> Result<T>) -> Result<T> {
        let mut w = lock(&self.writer);
        if let Some(p) = &w.poisoned {
            return Err(StorageError::Poisoned(p.clone()));
        }
        f(&mut w)
    }

    /// Writes `batch` (which must include the new meta state, if it changed) and installs
    /// `meta`; a failed write poisons the store.
    fn commit_batch(&self, w: &mut WriterState, batch: WriteBatch, meta: MetaState) -> Result<()> {
        self.commit_batch_opt(w, batch, meta, self.sync)
    }

    /// [`Self::commit_batch`] with an explicit sync (`false`: durable at the next sync).
    fn commit_batch_opt(
        &self,
        w: &mut WriterState,
        batch: WriteBatch,
        meta: MetaState,
        sync: bool,
    ) -> Result<()> {
        match self.write_batch(batch, sync) {
            Ok(()) => {
                w.meta = meta;
                Ok(())
            }
            Err(e) => {
                w.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }

    // ---- group commit ----------------------------------------------------------------

    /// Queues a commit or apply and waits for its result. The first waiter that finds no
    /// leader becomes the leader: it takes the whole queue, writes it as one batch with one
    /// fsync, hands every request its result, and wakes the others.
    fn submit(&self, req: Request) -> Result<ApplyOutcome> {
        let mut q = lock(&self.queue);
        let id = q.next_id;
        q.next_id += 1;
        q.pending.push((id, req));
        loop {
            if let Some(r) = q.done.remove(&id) {
                return r;
            }
            if !q.leader {
                q.leader = true;
                let batch = std::mem::take(&mut q.pending);
                drop(q);
                let mut guard = LeaderGuard {
                    store: self,
                    armed: true,
                };
                let results = self.run_group(batch, self.sync);
                q = lock(&self.queue);
                q.done.extend(results);
                q.leader = false;
                guard.armed = false;
                self.queue_cv.notify_all();
                continue;
            }
            q = self
                .queue_cv
                .wait(q)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// One group of applies: validated in order against the state the earlier ones leave,
    /// written as one batch (with one fsync if `sync`). The writer lock serialises it with
    /// the commit queue.
    fn apply_group(&self, txns: &[(Tid, Transaction)], sync: bool) -> Vec<Result<ApplyOutcome>> {
        let reqs = txns
            .iter()
            .enumerate()
            .map(|(i, (p, t))| (i as u64, Request::Apply(*p, t.clone())))
            .collect();
        let mut results = self.run_group(reqs, sync);
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    fn run_group(
        &self,
        mut reqs: Vec<(u64, Request)>,
        sync: bool,
    ) -> Vec<(u64, Result<ApplyOutcome>)> {
        // Tid order inside the group, so that concurrent committers that drew increasing
        // tids do not fail because they queued in another order.
        reqs.sort_by_key(|(_, r)| r.txn().tid);
        let mut w = lock(&self.writer);
        if let Some(p) = &w.poisoned {
            let p = p.clone();
            return reqs
                .into_iter()
                .map(|(id, _)| (id, Err(StorageError::Poisoned(p.clone()))))
                .collect();
        }
        let mut group = Group {
            meta: w.meta.clone(),
            batch: WriteBatch::default(),
            current: BTreeMap::new(),
            txns: BTreeMap::new(),
        };
        let mut results = Vec::with_capacity(reqs.len());
        let mut applied = Vec::new();
        for (id, req) in &reqs {
            let r = self.group_one(&mut group, req);
            if matches!(r, Ok(ApplyOutcome::Applied)) {
                applied.push(results.len());
            }
            results.push((*id, r));
        }
        if !applied.is_empty() {
            let meta_cf = match self.cf(CF_META) {
                Ok(cf) => cf,
                Err(e) => {
                    for i in applied {
                        results[i].1 = Err(e.clone());
                    }
                    return results;
                }
            };
            group
                .batch
                .put_cf(meta_cf, keys::META_STATE, group.meta.encode());
            if let Err(e) = self.commit_batch_opt(&mut w, group.batch, group.meta, sync) {
                for i in applied {
                    results[i].1 = Err(e.clone());
                }
            }
        }
        results
    }

    fn group_one(&self, g: &mut Group, req: &Request) -> Result<ApplyOutcome> {
        let txn = req.txn();
        validate_txn(txn)?;
        check_no_fill(&g.meta)?;
        match req {
            Request::Commit(_) => {
                if txn.tid <= g.meta.last {
                    return Err(StorageError::NonIncreasingTid {
                        tid: txn.tid,
                        last: g.meta.last,
                    });
                }
            }
            Request::Apply(prev, _) => {
                if txn.tid <= g.meta.last {
                    return match g.txns.get(&txn.tid) {
                        Some(other) if same_content(other, txn) => Ok(ApplyOutcome::AlreadyPresent),
                        Some(_) => Err(StorageError::DivergentApply { tid: txn.tid }),
                        None => self.stored_duplicate(txn, g.meta.last),
                    };
                }
                if *prev != g.meta.last {
                    return Err(StorageError::Gap {
                        tid: txn.tid,
                        prev: *prev,
                        last: g.meta.last,
                    });
                }
            }
        }
        // The current revision of each object before this transaction (one point read per
        // record, for the serial check and the object count), as the earlier members of the
        // group leave it. Only `commit` checks serials.
        let mut was_live = Vec::with_capacity(txn.records.len());
        for r in &txn.records {
            let (actual, live) = match g.current.get(&r.oid) {
                Some(c) => *c,
                None => self.current_head(&r.oid)?,
            };
            if let (Request::Commit(_), Some(expected)) = (req, r.expected_serial) {
                if actual != expected {
                    return Err(StorageError::Conflict {
                        oid: r.oid.clone(),
                        expected,
                        actual,
                    });
                }
            }
            was_live.push(live);
        }
        self.put_txn(&mut g.batch, txn)?;
        for (r, was) in txn.records.iter().zip(was_live) {
            let is = r.data.is_some();
            g.current.insert(r.oid.clone(), (txn.tid, is));
            g.meta.objects = recount(g.meta.objects, was, is);
        }
        g.txns.insert(txn.tid, txn.clone());
        g.meta.last = txn.tid;
        Ok(ApplyOutcome::Applied)
    }

    fn put_txn(&self, b: &mut WriteBatch, txn: &Transaction) -> Result<()> {
        let (txn_cf, rev_cf) = (self.cf(CF_TXN)?, self.cf(CF_REVISIONS)?);
        b.put_cf(
            txn_cf,
            keys::txn(txn.tid, keys::HEADER_IDX),
            TxnHeader::of(txn).encode(),
        );
        for (i, r) in txn.records.iter().enumerate() {
            let idx = i as u32 + 1;
            b.put_cf(
                txn_cf,
                keys::txn(txn.tid, idx),
                encode_record(&r.oid, &r.data),
            );
            let rev = match &r.data {
                // Written once: the revision refers to the record.
                Some(d) if d.len() > REVISION_INLINE_MAX => RevValue::Ref(idx),
                _ => RevValue::Logged(idx, r.data.clone()),
            };
            b.put_cf(rev_cf, keys::rev(&r.oid, txn.tid), rev.encode());
        }
        Ok(())
    }

    /// `apply` of a tid at or before the last one: is it stored with the same content?
    fn stored_duplicate(&self, txn: &Transaction, last: Tid) -> Result<ApplyOutcome> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_TXN)?);
        it.seek(keys::txn(txn.tid, keys::HEADER_IDX));
        let present = match it.key() {
            Some(k) => keys::parse_txn(k)?.0 == txn.tid,
            None => false,
        };
        it.status().map_err(rocks_err)?;
        if !present {
            return Err(StorageError::NonIncreasingTid { tid: txn.tid, last });
        }
        let (header, stored) = read_txn_at(&mut it, txn.tid)?;
        let same = header.meta == txn.meta
            && header.record_count as usize == txn.records.len()
            && header.digest == crate::codec::txn_digest(txn)
            && stored.iter().all(|(idx, r)| {
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

    /// The state the revision value `value` of `oid` at `tid` holds or points to.
    fn resolve(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        oid: &Oid,
        tid: Tid,
        value: &[u8],
    ) -> Result<Option<Bytes>> {
        let what = || format!("revision of {oid} at {tid}");
        let value = RevValue::decode(value, &what)?;
        self.resolve_value(snap, oid, tid, value)
    }

    /// The state a revision of `oid` at `tid` holds or points to.
    fn resolve_value(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        oid: &Oid,
        tid: Tid,
        value: RevValue,
    ) -> Result<Option<Bytes>> {
        let what = || format!("revision of {oid} at {tid}");
        match value {
            RevValue::Logged(_, d) | RevValue::Filled(d) => Ok(d),
            RevValue::Ref(idx) => {
                let v = snap
                    .get_pinned_cf(self.cf(CF_TXN)?, keys::txn(tid, idx))
                    .map_err(rocks_err)?
                    .ok_or_else(|| {
                        StorageError::corrupt(format!(
                            "{}: record {idx} of transaction {tid} is missing",
                            what()
                        ))
                    })?;
                let rec = decode_record(&v, &|| format!("record {idx} of transaction {tid}"))?;
                if &rec.oid != oid {
                    return Err(StorageError::corrupt(format!(
                        "{}: record {idx} of transaction {tid} is for {}",
                        what(),
                        rec.oid
                    )));
                }
                Ok(rec.data)
            }
        }
    }

    /// The newest revision of `oid` with tid `<= at`: the first key at or after
    /// `rev(oid, at)`, the tid being inverted.
    fn revision_at_or_before(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        oid: &Oid,
        at: Tid,
    ) -> Result<Option<Revision>> {
        let prefix = keys::rev_prefix(oid);
        let mut it = snap.raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, Self::object_opts(&prefix));
        it.seek(keys::rev(oid, at));
        let found = match object_item(&it, &prefix)? {
            Some((tid, v)) => {
                let data = self.resolve(snap, oid, tid, v)?;
                Some(Revision {
                    oid: oid.clone(),
                    tid,
                    data,
                })
            }
            _ => None,
        };
        it.status().map_err(rocks_err)?;
        Ok(found)
    }
}

/// Revisions of one object older than the pack bound, met by the pack scan, newest first:
/// `revisions` key, tid, and the record of its transaction if one is stored.
type OldRevisions = Vec<(Vec<u8>, Tid, Option<u32>)>;

/// A pack under way: the batch being filled and the state the written batches lead to.
struct PackRun {
    batch: WriteBatch,
    meta: MetaState,
    stats: PackStats,
}

/// The object the pack scan is in: its oid, whether its current revision holds a state,
/// whether it has a revision at or after the bound, and its revisions before it.
struct PackObject {
    oid: Oid,
    live: bool,
    newer: bool,
    old: OldRevisions,
}

impl RocksStorage {
    /// Transactions in `range` that the log holds, without the horizon's check.
    fn iter_unchecked(&self, range: TidRange, direction: Direction) -> Result<TxnIter<'_>> {
        let (lo, hi) = range.bounds();
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_TXN)?, Self::scan_opts());
        match direction {
            Direction::Forward => it.seek(keys::txn(lo, keys::HEADER_IDX)),
            Direction::Reverse => it.seek_for_prev(keys::txn(hi, u32::MAX)),
        }
        Ok(Box::new(RocksTxnIter {
            it,
            lo,
            hi,
            direction,
            done: lo > hi,
        }))
    }
    /// `pack_gc` (and so `pack`) under the writer lock: one scan of `revisions`, one object
    /// at a time (newest revision first), deletions written in batches of about
    /// [`PACK_BATCH_OPS`] cut between objects.
    fn pack_locked(
        &self,
        w: &mut WriterState,
        before: Tid,
        unreachable: &[Oid],
    ) -> Result<PackStats> {
        check_no_fill(&w.meta)?;
        let bound = pack_bound(before, w.meta.last);
        if bound == Tid::ZERO {
            return Ok(PackStats {
                horizon: w.meta.horizon,
                ..PackStats::default()
            });
        }
        let unreachable: BTreeSet<&Oid> = unreachable.iter().collect();
        let mut meta = w.meta.clone();
        meta.horizon = meta.horizon.max(Tid(bound.0 - 1));
        // The new horizon goes into the first batch written (with or before any deletion:
        // it only makes answers stricter); every batch that removes objects carries the new
        // object count.
        let mut run = PackRun {
            batch: WriteBatch::default(),
            stats: PackStats {
                horizon: meta.horizon,
                ..PackStats::default()
            },
            meta,
        };
        // The iterator reads the store as it was before the first batch.
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, Self::scan_opts());
        it.seek_to_first();
        let mut object: Option<PackObject> = None;
        loop {
            let item = match it.item() {
                Some((k, v)) => {
                    let (oid, tid, _) = keys::parse_rev(k)?;
                    Some((oid, tid, k.to_vec(), v))
                }
                None => None,
            };
            let same = matches!((&item, &object), (Some((o, ..)), Some(p)) if *o == p.oid);
            if !same {
                if let Some(done) = object.take() {
                    let gc = unreachable.contains(&done.oid);
                    self.pack_object(&mut run, done, gc)?;
                    if run.batch.len() >= PACK_BATCH_OPS {
                        let full = std::mem::take(&mut run.batch);
                        self.pack_flush(w, full, &run.meta)?;
                    }
                }
            }
            let Some((oid, tid, key, v)) = item else {
                break;
            };
            let rv = RevValue::decode(v, &|| format!("revision of {oid} at {tid}"))?;
            let o = object.get_or_insert_with(|| PackObject {
                // The first key of an object is its current revision.
                live: !matches!(rv, RevValue::Logged(_, None) | RevValue::Filled(None)),
                oid,
                newer: false,
                old: Vec::new(),
            });
            if tid >= bound {
                o.newer = true;
            } else {
                o.old.push((key, tid, rv.record_idx()));
            }
            it.next();
        }
        it.status().map_err(rocks_err)?;
        self.pack_flush(w, run.batch, &run.meta)?;
        Ok(run.stats)
    }

    /// The pack of one object: removed whole if `gc` and its current revision is older
    /// than the bound, else every revision before the bound but the newest of them.
    fn pack_object(&self, run: &mut PackRun, o: PackObject, gc: bool) -> Result<()> {
        let (txn_cf, rev_cf) = (self.cf(CF_TXN)?, self.cf(CF_REVISIONS)?);
        let whole = gc && !o.newer && !o.old.is_empty();
        if whole {
            run.meta.objects = recount(run.meta.objects, o.live, false);
            run.stats.objects_removed += 1;
        }
        // Unless the object goes whole, the newest revision before the bound (the first of
        // `old`, newest first) stays.
        for (key, tid, idx) in o.old.into_iter().skip(usize::from(!whole)) {
            run.batch.delete_cf(rev_cf, key);
            if let Some(idx) = idx {
                run.batch.delete_cf(txn_cf, keys::txn(tid, idx));
            }
            run.stats.revisions_removed += 1;
        }
        Ok(())
    }

    /// Writes a batch of the pack, with `meta` if it changed (which also installs it; a
    /// failed write then poisons the store, as for every write of `meta/state`).
    fn pack_flush(
        &self,
        w: &mut WriterState,
        mut batch: WriteBatch,
        meta: &MetaState,
    ) -> Result<()> {
        if *meta != w.meta {
            batch.put_cf(self.cf(CF_META)?, keys::META_STATE, meta.encode());
            self.commit_batch(w, batch, meta.clone())
        } else if !batch.is_empty() {
            self.write_batch(batch, self.sync)
        } else {
            Ok(())
        }
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

/// The write batch of one group commit, with what earlier members of the group changed.
struct Group {
    meta: MetaState,
    batch: WriteBatch,
    /// Current revisions set by earlier transactions of the group: serial, and whether it
    /// holds a state.
    current: BTreeMap<Oid, (Tid, bool)>,
    /// Transactions accepted earlier in the group (for duplicate applies).
    txns: BTreeMap<Tid, Transaction>,
}

/// Reads the transaction whose header is under the iterator; leaves the iterator after its
/// last record. Returns the header and the remaining records by index.
fn read_txn_at(
    it: &mut DBRawIteratorWithThreadMode<'_, DB>,
    tid: Tid,
) -> Result<(TxnHeader, Vec<(u32, Record)>)> {
    let header = match it.item() {
        Some((k, v)) => {
            let (t, idx) = keys::parse_txn(k)?;
            if t != tid || idx != keys::HEADER_IDX {
                return Err(StorageError::corrupt(format!(
                    "transaction {t}: record {idx} without a header"
                )));
            }
            TxnHeader::decode(v, &|| format!("header of transaction {tid}"))?
        }
        None => {
            it.status().map_err(rocks_err)?;
            return Err(StorageError::corrupt(format!(
                "header of transaction {tid} vanished"
            )));
        }
    };
    let mut records = Vec::new();
    it.next();
    while let Some((k, v)) = it.item() {
        let (t, idx) = keys::parse_txn(k)?;
        if t != tid {
            break;
        }
        if idx == keys::HEADER_IDX || idx > header.record_count {
            return Err(StorageError::corrupt(format!(
                "transaction {tid}: record index {idx} out of 1..={}",
                header.record_count
            )));
        }
        records.push((
            idx,
            decode_record(v, &|| format!("record {idx} of transaction {tid}"))?,
        ));
        it.next();
    }
    it.status().map_err(rocks_err)?;
    Ok((header, records))
}

/// Streams transactions from the `txn` column family. Holds one transaction at a time.
struct RocksTxnIter<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
    lo: Tid,
    hi: Tid,
    direction: Direction,
    done: bool,
}

impl RocksTxnIter<'_> {
    fn step(&mut self) -> Result<Option<Transaction>> {
        let Some(k) = self.it.key() else {
            self.it.status().map_err(rocks_err)?;
            return Ok(None);
        };
        let (tid, _) = keys::parse_txn(k)?;
        if tid < self.lo || tid > self.hi {
            return Ok(None);
        }
        if self.direction == Direction::Reverse {
            self.it.seek(keys::txn(tid, keys::HEADER_IDX));
        }
        let (header, records) = read_txn_at(&mut self.it, tid)?;
        if self.direction == Direction::Reverse {
            match tid.0.checked_sub(1) {
                Some(p) if Tid(p) >= self.lo => self.it.seek_for_prev(keys::txn(Tid(p), u32::MAX)),
                _ => self.done = true,
            }
        }
        Ok(Some(Transaction {
            tid,
            meta: header.meta,
            records: records.into_iter().map(|(_, r)| r).collect(),
        }))
    }
}

impl Iterator for RocksTxnIter<'_> {
    type Item = Result<Transaction>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        fuse(&mut self.done, r)
    }
}

/// One step of a streaming iterator: an item, the end, or an error that also ends the stream.
fn fuse<T>(done: &mut bool, step: Result<Option<T>>) -> Option<Result<T>> {
    match step {
        Ok(Some(item)) => Some(Ok(item)),
        Ok(None) => {
            *done = true;
            None
        }
        Err(e) => {
            *done = true;
            Some(Err(e))
        }
    }
}

/// Streams current revisions changed after `since`, in oid order.
struct RocksFastIter<'a> {
    // Declared before `snap`: the iterator reads at that snapshot and is dropped first.
    it: DBRawIteratorWithThreadMode<'a, DB>,
    /// The iterator's snapshot, at which states that are records of their transaction
    /// are read too.
    snap: rocksdb::SnapshotWithThreadMode<'a, DB>,
    store: &'a RocksStorage,
    since: Tid,
    done: bool,
}

impl RocksFastIter<'_> {
    fn step(&mut self) -> Result<Option<Revision>> {
        while let Some((k, v)) = self.it.item() {
            // The first key of an object is its current revision; the tid is in the key,
            // so unchanged objects are skipped without decoding their state.
            let (oid, tid, plen) = keys::parse_rev(k)?;
            let state = if tid > self.since {
                Some(RevValue::decode(v, &|| {
                    format!("revision of {oid} at {tid}")
                })?)
            } else {
                None
            };
            let past = keys::rev_past(&k[..plen]);
            skip_object(&mut self.it, &past);
            if let Some(state) = state {
                let data = self.store.resolve_value(&self.snap, &oid, tid, state)?;
                return Ok(Some(Revision { oid, tid, data }));
            }
        }
        self.it.status().map_err(rocks_err)?;
        Ok(None)
    }
}

/// The tid and value under `it` if it is a revision of the object whose prefix is `prefix`;
/// `None` past its last. A key under the prefix that is not a revision key is `Corrupt`, not
/// "no revision" (which a commit's serial check would take for a new object).
fn object_item<'a>(
    it: &'a DBRawIteratorWithThreadMode<'_, DB>,
    prefix: &[u8],
) -> Result<Option<(Tid, &'a [u8])>> {
    match it.item() {
        Some((k, v)) if k.starts_with(prefix) => {
            let (_, tid, n) = keys::parse_rev(k)?;
            if n != prefix.len() {
                return Err(StorageError::corrupt(format!(
                    "revision key of {} bytes under another oid's prefix",
                    k.len()
                )));
            }
            Ok(Some((tid, v)))
        }
        _ => Ok(None),
    }
}

/// Moves `it` from an object's revision to the next object's first: a step, then a seek
/// if the object has more revisions (most objects of a scan have few).
fn skip_object(it: &mut DBRawIteratorWithThreadMode<'_, DB>, past: &[u8]) {
    it.next();
    if it.key().is_some_and(|k| k < past) {
        it.seek(past);
    }
}

impl Iterator for RocksFastIter<'_> {
    type Item = Result<Revision>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        fuse(&mut self.done, r)
    }
}

struct RocksLostIter<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
    done: bool,
}

impl RocksLostIter<'_> {
    fn step(&mut self) -> Result<Option<LostTransaction>> {
        let Some((k, v)) = self.it.item() else {
            self.it.status().map_err(rocks_err)?;
            return Ok(None);
        };
        let seq = u64::from_be_bytes(
            k.try_into()
                .map_err(|_| StorageError::corrupt(format!("lost key of {} bytes", k.len())))?,
        );
        let (truncated_after, txn) = decode_lost(v, &|| format!("lost transaction #{seq}"))?;
        self.it.next();
        Ok(Some(LostTransaction {
            seq,
            truncated_after,
            txn,
        }))
    }
}

impl Iterator for RocksLostIter<'_> {
    type Item = Result<LostTransaction>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        fuse(&mut self.done, r)
    }
}

impl Storage for RocksStorage {
    fn last_transaction(&self) -> Result<Tid> {
        Ok(self.read_meta()?.last)
    }

    fn horizon(&self) -> Result<Tid> {
        Ok(self.read_meta()?.horizon)
    }

    fn load(&self, oid: &Oid) -> Result<Option<Revision>> {
        Ok(self.current_of(oid)?.map(|(tid, data)| Revision {
            oid: oid.clone(),
            tid,
            data,
        }))
    }

    fn load_before(&self, oid: &Oid, tid: Tid) -> Result<Option<Revision>> {
        let snap = self.db.snapshot();
        let meta_v = snap
            .get_pinned_cf(self.cf(CF_META)?, keys::META_STATE)
            .map_err(rocks_err)?
            .ok_or_else(|| StorageError::corrupt("meta state is missing"))?;
        let meta = MetaState::decode(&meta_v)?;
        check_load_before(meta.horizon, tid)?;
        match tid.0.checked_sub(1) {
            None => Ok(None),
            Some(at) => self.revision_at_or_before(&snap, oid, Tid(at)),
        }
    }

    fn history(&self, oid: &Oid, n: usize) -> Result<Vec<Revision>> {
        let snap = self.db.snapshot();
        let prefix = keys::rev_prefix(oid);
        let mut it = snap.raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, Self::object_opts(&prefix));
        it.seek(&prefix);
        let mut out = Vec::new();
        while out.len() < n {
            let Some((tid, v)) = object_item(&it, &prefix)? else {
                break;
            };
            let data = self.resolve(&snap, oid, tid, v)?;
            out.push(Revision {
                oid: oid.clone(),
                tid,
                data,
            });
            it.next();
        }
        it.status().map_err(rocks_err)?;
        Ok(out)
    }

    fn iter(&self, range: TidRange, direction: Direction) -> Result<TxnIter<'_>> {
        // The iterator is created under the writer lock, so the horizon it was checked
        // against and its implicit snapshot agree.
        let w = lock(&self.writer);
        iter_is_truncated(w.meta.horizon, &range)?;
        let it = self.iter_unchecked(range, direction);
        drop(w);
        it
    }

    fn iter_logged(&self, range: TidRange) -> Result<TxnIter<'_>> {
        self.iter_unchecked(range, Direction::Forward)
    }

    fn commit(&self, txn: &Transaction) -> Result<()> {
        self.submit(Request::Commit(txn.clone())).map(|_| ())
    }

    fn apply(&self, prev: Tid, txn: &Transaction) -> Result<ApplyOutcome> {
        self.submit(Request::Apply(prev, txn.clone()))
    }

    fn apply_batch(&self, txns: &[(Tid, Transaction)]) -> Vec<Result<ApplyOutcome>> {
        self.apply_group(txns, self.sync)
    }

    fn apply_batch_unsynced(&self, txns: &[(Tid, Transaction)]) -> Vec<Result<ApplyOutcome>> {
        self.apply_group(txns, false)
    }

    fn fast_recovery(&self, since: Tid, after: Option<&Oid>) -> Result<FastRecovery<'_>> {
        let w = lock(&self.writer);
        check_no_fill(&w.meta)?;
        let consistent_at = w.meta.last;
        let snap = self.db.snapshot();
        let mut opts = Self::scan_opts();
        opts.set_snapshot(&snap);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_REVISIONS)?, opts);
        drop(w);
        match after {
            None => it.seek_to_first(),
            Some(a) => it.seek(keys::rev_past(&keys::rev_prefix(a))),
        }
        Ok(FastRecovery {
            consistent_at,
            revisions: Box::new(RocksFastIter {
                it,
                snap,
                store: self,
                since,
                done: false,
            }),
        })
    }

    fn fill(&self, revisions: &[Revision]) -> Result<()> {
        self.with_writer(|w| {
            for r in revisions {
                check_fill_revision(r, w.meta.last)?;
            }
            let (rev_cf, meta_cf) = (self.cf(CF_REVISIONS)?, self.cf(CF_META)?);
            let mut meta = w.meta.clone();
            let (mut last_oid, mut tid_max) = meta.fill.clone().unwrap_or_default();
            let mut current: BTreeMap<&Oid, (Tid, bool)> = BTreeMap::new();
            let mut b = WriteBatch::default();
            for r in revisions {
                let (cur, was) = match current.get(&r.oid) {
                    Some(c) => *c,
                    None => self.current_head(&r.oid)?,
                };
                if r.tid >= cur {
                    current.insert(&r.oid, (r.tid, r.data.is_some()));
                    meta.objects = recount(meta.objects, was, r.data.is_some());
                }
                b.put_cf(
                    rev_cf,
                    keys::rev(&r.oid, r.tid),
                    RevValue::Filled(r.data.clone()).encode(),
                );
                last_oid = last_oid.max(r.oid.clone());
                tid_max = tid_max.max(r.tid);
            }
            if revisions.is_empty() && meta.fill.is_none() {
                return Ok(());
            }
            meta.fill = Some((last_oid, tid_max));
            b.put_cf(meta_cf, keys::META_STATE, meta.encode());
            self.commit_batch(w, b, meta)
        })
    }

    fn fill_progress(&self) -> Result<Option<FillProgress>> {
        Ok(self
            .read_meta()?
            .fill
            .map(|(last_oid, tid_max)| FillProgress { last_oid, tid_max }))
    }

    fn fill_finish(&self, consistent_at: Tid) -> Result<()> {
        self.with_writer(|w| {
            check_fill_finish(&w.meta, consistent_at)?;
            let mut meta = w.meta.clone();
            finish_meta(&mut meta, consistent_at);
            let mut b = WriteBatch::default();
            b.put_cf(self.cf(CF_META)?, keys::META_STATE, meta.encode());
            self.commit_batch(w, b, meta)
        })
    }

    fn truncate_after(&self, tid: Tid) -> Result<Vec<Tid>> {
        self.with_writer(|w| {
            check_no_fill(&w.meta)?;
            if tid >= w.meta.last {
                return Ok(Vec::new());
            }
            check_horizon(w.meta.horizon, tid)?;
            let (txn_cf, rev_cf, lost_cf, meta_cf) = (
                self.cf(CF_TXN)?,
                self.cf(CF_REVISIONS)?,
                self.cf(CF_LOST)?,
                self.cf(CF_META)?,
            );
            let mut meta = w.meta.clone();
            let mut b = WriteBatch::default();
            let mut removed = Vec::new();
            let mut touched = BTreeSet::new();
            let mut it = self.db.raw_iterator_cf_opt(txn_cf, Self::scan_opts());
            let first = Tid(tid.0 + 1);
            it.seek(keys::txn(first, keys::HEADER_IDX));
            while let Some(k) = it.key() {
                let (t, _) = keys::parse_txn(k)?;
                let (header, records) = read_txn_at(&mut it, t)?;
                b.delete_cf(txn_cf, keys::txn(t, keys::HEADER_IDX));
                for (idx, r) in &records {
                    b.delete_cf(txn_cf, keys::txn(t, *idx));
                    b.delete_cf(rev_cf, keys::rev(&r.oid, t));
                    touched.insert(r.oid.clone());
                }
                let txn = Transaction {
                    tid: t,
                    meta: header.meta,
                    records: records.into_iter().map(|(_, r)| r).collect(),
                };
                b.put_cf(
                    lost_cf,
                    keys::lost(meta.lost_seq_next),
                    encode_lost(tid, &txn),
                );
                meta.lost_seq_next += 1;
                removed.push(t);
            }
            it.status().map_err(rocks_err)?;
            // The current revision of every touched object becomes its newest revision at
            // or before `tid` by the deletions alone; the object count follows (both read
            // from the state before this batch).
            let snap = self.db.snapshot();
            for oid in &touched {
                let (_, was) = self.current_head(oid)?;
                let is = self
                    .revision_at_or_before(&snap, oid, tid)?
                    .is_some_and(|r| r.data.is_some());
                meta.objects = recount(meta.objects, was, is);
            }
            drop(snap);
            let mut it = self.db.raw_iterator_cf(txn_cf);
            it.seek_for_prev(keys::txn(tid, u32::MAX));
            let newest = match it.key() {
                Some(k) => keys::parse_txn(k)?.0,
                None => Tid::ZERO,
            };
            it.status().map_err(rocks_err)?;
            meta.last = newest.max(meta.fill_tid);
            b.put_cf(meta_cf, keys::META_STATE, meta.encode());
            self.commit_batch(w, b, meta)?;
            Ok(removed)
        })
    }

    fn lost_transactions(&self) -> Result<LostIter<'_>> {
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_LOST)?, Self::scan_opts());
        it.seek_to_first();
        Ok(Box::new(RocksLostIter { it, done: false }))
    }

    fn pack_gc(&self, before: Tid, unreachable: &[Oid]) -> Result<PackStats> {
        self.with_writer(|w| self.pack_locked(w, before, unreachable))
    }

    fn object_count(&self) -> Result<u64> {
        Ok(self.read_meta()?.objects)
    }

    fn replication_state(&self) -> Result<Option<Bytes>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META)?, keys::META_REPLICATION)
            .map_err(rocks_err)?;
        v.map(|v| decode_replication(&v)).transpose()
    }

    fn set_replication_state(&self, state: &[u8]) -> Result<()> {
        self.with_writer(|w| {
            check_replication_state(state)?;
            let mut b = WriteBatch::default();
            b.put_cf(
                self.cf(CF_META)?,
                keys::META_REPLICATION,
                encode_replication(state),
            );
            // `meta/state` is unchanged: the slot is outside the transactional history (an
            // open fill does not block it either).
            let meta = w.meta.clone();
            self.commit_batch(w, b, meta)
        })
    }

    fn checkpoint(&self, dir: &Path) -> Result<Tid> {
        self.with_writer(|w| {
            let cp = Checkpoint::new(&self.db).map_err(rocks_err)?;
            cp.create_checkpoint(dir).map_err(rocks_err)?;
            Ok(w.meta.last)
        })
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(rocks_err)
    }

    fn read_handle(&self) -> Option<Arc<dyn Storage>> {
        Some(Arc::new(RocksStorage {
            inner: self.inner.clone(),
        }))
    }
}
