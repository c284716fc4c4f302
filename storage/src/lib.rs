//! Transactional storage adapter: the layer every replica applies commits through and
//! recovers from. The Rust heir of the ZODB storage API the replication design needs.
//!
//! One synchronous trait, [`Storage`], two backends:
//! - [`MemStorage`] (always built): `BTreeMap`s, with crash semantics for the simulator
//!   ([`MemStorage::crash`] loses exactly what was not made durable);
//! - `RocksStorage` (feature `rocksdb`): durable, group commit, checksummed values.
//!
//! # Model
//! Objects are named by an [`Oid`] (at most [`OID_LEN_MAX`] bytes). A [`Transaction`] has a
//! [`Tid`] (strictly increasing, assigned by the writer, never 0), metadata and records
//! (oid → new state, or delete). Every object keeps its revisions `(tid, state)` until
//! [`Storage::pack`] removes the old ones; [`Storage::pack_gc`] (ZODB's pack with garbage
//! collection) also removes, whole, the objects the caller found unreachable.
//!
//! # History horizon
//! A store reproduces every state at or after its *horizon* (`Tid::ZERO` for a store with
//! its whole history). `pack(before)` (and `pack_gc`) moves the horizon to `before - 1`;
//! a fast-recovery fill finished at `t` moves it to `t`. Questions about older states
//! (`load_before(oid, tid)` with `tid <= horizon`, `iter` starting at or before the horizon,
//! `truncate_after` below it) fail with [`StorageError::HistoryTruncated`] instead of
//! answering wrongly. Transactions after the horizon are always complete. One exception to
//! "every state", on purpose: an object removed by [`Storage::pack_gc`] is absent from
//! every state, those it was part of included (its records were all at or before the new
//! horizon; the caller declared it unreachable, so no answer about a reachable object
//! needs it).
//!
//! # Replication state
//! Beside the data, each store keeps one small opaque slot
//! ([`Storage::set_replication_state`]) where the replication layer keeps its promised epoch.
//! It is durable like a commit but outside the transactional history.
//!
//! See `DESIGN.md` beside this crate for the on-disk layout and the invariants.

mod codec;
mod error;
mod mem;
#[cfg(feature = "rocksdb")]
mod rocks;
pub mod testing;
mod types;

use std::path::Path;

use bytes::Bytes;

pub use error::{Result, StorageError};
pub use mem::{MemOptions, MemStorage};
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksOptions, RocksStorage};
pub use types::{
    validate_txn, ApplyOutcome, Direction, FillProgress, LostTransaction, Oid, PackStats, Record,
    RequestKey, Revision, Tid, TidRange, Transaction, TxnMeta, DATA_LEN_MAX, META_LEN_MAX,
    OID_LEN_MAX, RECORDS_MAX,
};

/// A stream of transactions, read lazily.
pub type TxnIter<'a> = Box<dyn Iterator<Item = Result<Transaction>> + Send + 'a>;
/// A stream of revisions, read lazily.
pub type RevisionIter<'a> = Box<dyn Iterator<Item = Result<Revision>> + Send + 'a>;
/// A stream of archived lost transactions, read lazily.
pub type LostIter<'a> = Box<dyn Iterator<Item = Result<LostTransaction>> + Send + 'a>;

/// The answer of [`Storage::fast_recovery`].
pub struct FastRecovery<'a> {
    /// The sender's last transaction when the stream was opened: the stream is the newest
    /// revision, as of this tid, of every object it covers.
    pub consistent_at: Tid,
    /// The revisions, in oid byte order. Deletions come as revisions with `data: None`.
    pub revisions: RevisionIter<'a>,
}

/// The storage seam. Synchronous: RocksDB blocks anyway, and the simulator calls it
/// directly. Every method may be called from several threads at once.
///
/// Writes (`commit`, `apply`, `fill`, `fill_finish`, `truncate_after`,
/// `set_replication_state`) are atomic: when one fails, the store is unchanged. `pack` and
/// `pack_gc` are refused without any change by their checks (open fill, poisoned store); the
/// in-memory store applies them whole, while RocksDB writes their deletions in bounded
/// batches, each of which leaves a consistent store (see [`Self::pack_gc`]). When the store
/// syncs (the default), `commit`, `apply` and `set_replication_state` return after the write
/// is durable.
pub trait Storage: Send + Sync {
    /// The last transaction, or the point a fast-recovery fill was finished at;
    /// `Tid::ZERO` for an empty store.
    fn last_transaction(&self) -> Result<Tid>;

    /// The history horizon (see the crate docs); `Tid::ZERO` when the whole history is kept.
    fn horizon(&self) -> Result<Tid>;

    /// The current revision of `oid`: `None` if it never existed, `data: None` if its newest
    /// revision deletes it.
    fn load(&self, oid: &Oid) -> Result<Option<Revision>>;

    /// The newest revision of `oid` with a tid `< tid` (ZODB's `loadBefore`).
    /// [`StorageError::HistoryTruncated`] if `tid <= horizon` (and the horizon is not zero).
    fn load_before(&self, oid: &Oid, tid: Tid) -> Result<Option<Revision>>;

    /// Up to `n` stored revisions of `oid`, newest first. Packed revisions are absent.
    fn history(&self, oid: &Oid, n: usize) -> Result<Vec<Revision>>;

    /// The revision of `oid` current as of `at`: [`Self::load`] unless the current revision
    /// is newer than `at`, then [`Self::load_before`] `at.next()`. A server reads this way at
    /// the point its store has synced, so that no reader sees a transaction a machine crash
    /// could take back.
    fn load_at(&self, oid: &Oid, at: Tid) -> Result<Option<Revision>> {
        match self.load(oid)? {
            Some(r) if r.tid > at => self.load_before(oid, at.next()),
            other => Ok(other),
        }
    }

    /// Transactions with a tid in `range` (inclusive bounds), streamed in `direction`.
    /// Each item holds one whole transaction; memory does not grow with the range.
    /// [`StorageError::HistoryTruncated`] if the range starts at or before a non-zero horizon.
    /// Records come with `expected_serial: None`.
    fn iter(&self, range: TidRange, direction: Direction) -> Result<TxnIter<'_>>;

    /// The transactions the store's log holds with a tid in `range`, in increasing order,
    /// whatever the horizon. Below the horizon that is what this store applied itself
    /// before a fill moved the horizon past it (headers always, records until a pack removed
    /// them), not a history to read objects from: it is for reporting what a parted history
    /// loses when no truncation can reach back that far.
    fn iter_logged(&self, range: TidRange) -> Result<TxnIter<'_>>;

    /// Commits a new transaction. Fails with [`StorageError::NonIncreasingTid`] unless
    /// `txn.tid` is greater than [`Self::last_transaction`], and with
    /// [`StorageError::Conflict`] (naming the first such record's oid) if a record's
    /// `expected_serial` is not the object's current serial. Nothing is written on failure.
    fn commit(&self, txn: &Transaction) -> Result<()>;

    /// The replica path: applies a transaction the primary already committed, whose
    /// predecessor on the primary is `prev`. Serials are not checked.
    /// - `txn.tid > last`: applied if `prev == last`, else [`StorageError::Gap`];
    /// - `txn.tid <= last` and stored with the same content: [`ApplyOutcome::AlreadyPresent`];
    /// - stored with other content: [`StorageError::DivergentApply`];
    /// - not stored: [`StorageError::NonIncreasingTid`].
    fn apply(&self, prev: Tid, txn: &Transaction) -> Result<ApplyOutcome>;

    /// Applies several transactions in order, each as [`Self::apply`] would (`prev` of each
    /// is its predecessor on the primary), with one sync for the whole batch where the backend
    /// can (RocksDB: one write batch, one fsync). One result per transaction; every one
    /// answered `Ok` is durable (when the store syncs) once this returns. A transaction that
    /// fails changes nothing, and those after it are judged as `apply` would judge them then
    /// (after a gap, the rest of the chain gaps too).
    fn apply_batch(&self, txns: &[(Tid, Transaction)]) -> Vec<Result<ApplyOutcome>> {
        txns.iter().map(|(p, t)| self.apply(*p, t)).collect()
    }

    /// [`Self::apply_batch`] without waiting for the disk: what it applied is visible at once
    /// and durable after the next [`Self::sync`] that starts once this returned, or after any
    /// later write that syncs (every other write method does, when the store syncs). A server
    /// applies delivered commits this way and syncs on another thread, so that its ring's
    /// task never waits for an fsync. Backends without that distinction apply and sync.
    fn apply_batch_unsynced(&self, txns: &[(Tid, Transaction)]) -> Vec<Result<ApplyOutcome>> {
        self.apply_batch(txns)
    }

    /// Sender side of fast recovery: the newest revision of every object changed after
    /// `since` (`Tid::ZERO`: every object), with oid greater than `after` if given, in oid
    /// order, consistent at the returned tid.
    ///
    /// Resuming a broken stream: fill what was received, reopen with `after` = the last oid
    /// filled (see [`Self::fill_progress`]), then, once that stream is filled, run one more
    /// `fast_recovery(t1)` where `t1` is the `consistent_at` of the first stream (objects at
    /// or before the resume oid may have changed since), and finish at the last stream's
    /// `consistent_at`.
    fn fast_recovery(&self, since: Tid, after: Option<&Oid>) -> Result<FastRecovery<'_>>;

    /// Receiver side of fast recovery: stores revisions received from
    /// [`Self::fast_recovery`]. Each must be newer than this store's last transaction. A
    /// revision replaces the current one only if it is at least as new. Commits, applies,
    /// truncates, packs and fast-recovery reads are refused until [`Self::fill_finish`].
    fn fill(&self, revisions: &[Revision]) -> Result<()>;

    /// The progress of an unfinished fill, or `None`.
    fn fill_progress(&self) -> Result<Option<FillProgress>>;

    /// Ends a fill: the store is now consistent at `consistent_at`, which becomes its last
    /// transaction. If that is newer than the previous last transaction, the transactions
    /// in between are absent: the horizon moves up to `consistent_at`.
    fn fill_finish(&self, consistent_at: Tid) -> Result<()>;

    /// Removes every transaction after `tid` and moves it to the lost archive (see
    /// [`Self::lost_transactions`]); the current revisions go back to their state at `tid`.
    /// Returns the removed tids, in increasing order. No-op if `tid >= last`.
    /// [`StorageError::HistoryTruncated`] if `tid` is below the horizon.
    fn truncate_after(&self, tid: Tid) -> Result<Vec<Tid>>;

    /// The lost archive, in archive order: every transaction ever removed by
    /// [`Self::truncate_after`], for an operator to list and export.
    fn lost_transactions(&self) -> Result<LostIter<'_>>;

    /// Drops every revision older than the newest one before `before` (capped at
    /// `last + 1`), so the state at `before - 1` and after stays exact. The horizon moves
    /// up to `before - 1`. Transactions keep their headers and their remaining records.
    /// [`StorageError::InvalidFill`] while a fill is open. The same as
    /// [`Self::pack_gc`] with an empty list.
    fn pack(&self, before: Tid) -> Result<PackStats> {
        self.pack_gc(before, &[])
    }

    /// Pack with garbage collection (ZODB's pack): first what [`Self::pack`]`(before)` does,
    /// then removes entirely every object of `unreachable` whose current (newest) revision
    /// is older than `before` (the state after a deletion included). An object of the list
    /// written at or after `before` stays, with everything `pack` keeps of it, whatever the
    /// list says; oids the store does not hold and repeated oids are ignored. A removed
    /// object loses its current revision, its whole history and its records in every
    /// transaction (transaction headers stay). Afterwards [`Self::load`] answers `None` for
    /// it, [`Self::history`] is empty, [`Self::load_before`] answers `None` at every tid
    /// above the new horizon, and neither [`Self::iter`] nor [`Self::fast_recovery`] shows
    /// it; it may be created again by a later commit (its serial is then `Tid::ZERO`).
    ///
    /// Deterministic: the result depends only on the store and the arguments. The horizon
    /// rules are those of `pack` (the bound is capped at `last + 1`; the horizon moves up to
    /// `before - 1`). [`StorageError::InvalidFill`] while a fill is open, and then nothing
    /// changes. The caller computes `unreachable` (the store does not parse object states):
    /// it must not contain an object referenced by any state kept, including the states
    /// written at or after `before` (FileStorage's "reachable from the future").
    ///
    /// Crash and failure: the in-memory store applies the whole call at once. RocksDB
    /// writes the new horizon with the first batch of deletions and the deletions in
    /// bounded batches after it (so memory does not grow with the store); an object is
    /// always removed whole within one batch, together with the new object count. A crash,
    /// a failed write (which poisons the store: reopen it) or a corrupt value met part-way
    /// leaves a consistent store in which part of the work is done (extra old revisions,
    /// listed objects not yet removed; never a wrong answer); calling again with the same
    /// arguments finishes it.
    fn pack_gc(&self, before: Tid, unreachable: &[Oid]) -> Result<PackStats>;

    /// Number of objects whose current revision is not a deletion (exact), for ZODB's
    /// `len()`. Objects received by a fill count, an open fill included. Cheap: a counter
    /// kept by every write, not a scan.
    fn object_count(&self) -> Result<u64>;

    /// The replication state: the bytes last written by [`Self::set_replication_state`], or
    /// `None` if it was never set.
    fn replication_state(&self) -> Result<Option<Bytes>>;

    /// Replaces the replication state: one small durable slot beside the data, where the
    /// replication layer keeps its promised epoch. Opaque to the store.
    ///
    /// The write is atomic and has the same durability as [`Self::commit`]: durable when it
    /// returns if the store syncs, else after [`Self::sync`] (a crash before that may revert
    /// it, like any other write).
    ///
    /// It is not part of the transactional history: [`Self::truncate_after`], [`Self::fill`],
    /// [`Self::fill_finish`] and [`Self::pack`] leave it alone, and it is allowed while a
    /// fill is open (it is not a data write). [`Self::checkpoint`] copies it (a checkpoint
    /// is the whole store).
    ///
    /// [`StorageError::StateTooLarge`] if `state` is longer than [`META_LEN_MAX`]; nothing
    /// is written then.
    fn set_replication_state(&self, state: &[u8]) -> Result<()>;

    /// Writes a consistent copy of the store (data, history, lost archive and replication
    /// state) into the new directory `dir` and returns the last transaction it holds. The
    /// backend's `open` on `dir` gives a store in that state.
    fn checkpoint(&self, dir: &Path) -> Result<Tid>;

    /// Makes every write that returned durable, those of [`Self::apply_batch_unsynced`]
    /// included (a no-op when the store keeps nothing unsynced). Safe to call from another
    /// thread while the owner goes on writing (through [`Self::read_handle`]).
    fn sync(&self) -> Result<()>;

    /// Checks that the store takes a synced write now: a sync, then the replication state
    /// written again as it is (nothing else changes). A server runs it before it joins its
    /// ring, so that a store that cannot write (a full disk) is refused at start rather than
    /// at its first write, when leaving again costs the others a view change.
    fn check_writable(&self) -> Result<()> {
        self.sync()?;
        match self.replication_state()? {
            Some(state) => self.set_replication_state(&state),
            None => Ok(()),
        }
    }

    /// Another handle on this same store (not a copy), for reads on other threads while the
    /// owner goes on writing: a server answers its clients' reads without passing them
    /// through the task that applies commits. `None` if the backend has none (then reads go
    /// through the owner). Reads through it see every write that returned; the owner alone
    /// writes.
    fn read_handle(&self) -> Option<std::sync::Arc<dyn Storage>> {
        None
    }
}
