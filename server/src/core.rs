//! The storage server's shell around [`ServerCore`]: what the tokio driver
//! (`gcs::net::driver::run`) runs. It turns requests that carry answer channels into core
//! requests that carry ids, executes the core's checkpoint commands on files (see
//! [`crate::checkpoint`]), and keeps the read handle of readers outside the driver's task.
//! Everything the servers decide between them is in the core.

use crate::checkpoint;
use crate::membership::{Configured, MembershipChange};
use crate::transfer;
use gcs::net::driver::{Core, CoreOutput};
use gcs::Time;
use replica::{
    CommitError, CommitRequest, Committed, Replica, ReqId, ServerId, Staleness, SwapError,
};
use servercore::checkpoint::CheckpointCommand;
use servercore::{CoreOptions, Output};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use storage::{Oid, Revision, Storage, StorageError};
use tokio::sync::oneshot;

pub use servercore::{ReadError, ServerCore, ServerEvent, ServerStatus};

/// What the application (the client-facing side of the server) asks.
#[derive(Debug)]
pub enum ServerRequest {
    /// A commit; answered when the replica answers.
    Commit {
        /// The commit.
        c: CommitRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Committed, CommitError>>,
    },
    /// Ask for a planned swap to `to`.
    Swap {
        /// The new primary.
        to: ServerId,
        /// Accepted (forwarded through the ring) or refused.
        reply: oneshot::Sender<Result<(), SwapError>>,
    },
    /// Runs a function on the store in the server's task, between two inputs: what it reads
    /// is one consistent state, with no commit applied halfway (the ZEO face reads this way).
    Inspect(Inspect),
    /// The server's status.
    Status {
        /// Where it goes.
        reply: oneshot::Sender<ServerStatus>,
    },
    /// The configured servers' gcs addresses as resolved now (host names are resolved again
    /// periodically: a server that moved keeps its place in the ring).
    Readdress {
        /// `(id, address)` of configured servers.
        daemons: Vec<(ServerId, std::net::SocketAddr)>,
    },
    /// Add or remove a read replica (see [`crate::membership`]): committed like a write by
    /// `(client, request)`, answered when the commit is.
    ChangeMembership {
        /// The asking client's id.
        client: u64,
        /// Its request number.
        request: u64,
        /// The change.
        change: MembershipChange,
        /// The answer.
        reply: oneshot::Sender<Result<Committed, CommitError>>,
    },
    /// Give servers a vote and take it from others (see [`replica::voters`]), answered once
    /// the new voters are durable on a majority of them.
    ChangeVoters {
        /// Servers given a vote, with their weights.
        add: Vec<(ServerId, u32)>,
        /// Servers whose vote is taken away.
        remove: Vec<ServerId>,
        /// The answer.
        reply: oneshot::Sender<Result<Committed, CommitError>>,
    },
    /// A checkpoint's manifest, listed and checksummed off the server's task (see
    /// [`ServerShell`]'s checkpoint work); not for applications.
    CheckpointMade {
        /// The transfer.
        id: u64,
        /// The manifest, or why there is none.
        made: Result<servercore::checkpoint::Manifest, String>,
    },
    /// A donor's serving thread ended: every file sent once (`Ok`), or cancelled or failed;
    /// not for applications.
    CheckpointServed {
        /// The transfer.
        id: u64,
        /// `Err`: why it stopped.
        result: Result<(), String>,
    },
    /// A checkpoint's files, fetched from the donor, checked against its manifest and synced
    /// off the server's task; not for applications.
    CheckpointVerified {
        /// The transfer.
        id: u64,
        /// What the donor announced.
        manifest: servercore::checkpoint::Manifest,
        /// `Err`: a file is missing, of another length or checksum, or could not be synced.
        verified: Result<(), String>,
    },
    /// The shell's own sync thread reports a store sync (see [`SyncWorker`]); not for
    /// applications.
    StoreSynced {
        /// The highest sync id it covered.
        id: u64,
        /// Which store it synced (a checkpoint install opens another).
        generation: u64,
        /// `Err`: the store failed.
        result: Result<(), String>,
    },
}

/// The store's fsyncs, on a thread of their own: the server's task applies delivered commits
/// without waiting for the disk and goes on passing the token, while this thread syncs and
/// reports back through the server's request channel ([`ServerRequest::StoreSynced`]).
/// Syncs asked while one runs are served by the next one together (group commit).
pub struct SyncWorker {
    jobs: std::sync::mpsc::Sender<SyncJob>,
    /// Hands the thread the request channel once the driver exists.
    completions: Option<std::sync::mpsc::Sender<tokio::sync::mpsc::Sender<ServerRequest>>>,
}

/// Gives the sync thread and the checkpoint work the server's request channel
/// ([`ServerShell::take_sync_handoff`]).
pub struct SyncHandoff {
    sync: Option<std::sync::mpsc::Sender<tokio::sync::mpsc::Sender<ServerRequest>>>,
    reports: Reports,
}

/// Where work done off the server's task reports, once the driver runs.
type Reports = Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<ServerRequest>>>;

impl SyncHandoff {
    /// From now on the sync thread and checkpoint work report through `requests` (until
    /// then the sync thread reports nothing, and checkpoint work runs in the server's task).
    pub fn reports_to(self, requests: tokio::sync::mpsc::Sender<ServerRequest>) {
        let _ = self.reports.set(requests.clone());
        if let Some(c) = self.sync {
            let _ = c.send(requests);
        }
    }
}

/// Checkpoint work that reads every byte of a store (seconds for gigabytes), done on a
/// thread of its own: in the server's task it held the token that long, the ring re-formed
/// without this server, the transfer was abandoned, and a 5 GiB bootstrap started over
/// forever (`scripts/bench-catchup`).
#[derive(Clone)]
enum CheckpointWork {
    /// Donor: list and checksum the files of a checkpoint made in `dir`.
    Manifest {
        id: u64,
        dir: PathBuf,
        tid: storage::Tid,
    },
    /// Recipient: fetch the files from the donor into `dir`, then check and sync them.
    Fetch {
        id: u64,
        dir: PathBuf,
        manifest: servercore::checkpoint::Manifest,
        source: transfer::Source,
        cancel: transfer::Cancel,
    },
}

impl CheckpointWork {
    fn run(self) -> ServerRequest {
        match self {
            CheckpointWork::Manifest { id, dir, tid } => ServerRequest::CheckpointMade {
                id,
                made: checkpoint::manifest(&dir, tid),
            },
            CheckpointWork::Fetch {
                id,
                dir,
                manifest,
                source,
                cancel,
            } => {
                // A shell thread, not a core: the clock only times the fetch for the log.
                #[allow(clippy::disallowed_methods)]
                let t = std::time::Instant::now();
                transfer::yield_to_the_ring();
                // Checked and synced file by file as they arrive.
                let verified =
                    transfer::fetch(&source, id, &dir, &manifest.files, &cancel).map(|bytes| {
                        let secs = t.elapsed().as_secs_f64();
                        tracing::info!(
                            id,
                            bytes,
                            secs,
                            mb_per_s = bytes as f64 / 1e6 / secs.max(1e-9),
                            "checkpoint files fetched"
                        );
                    });
                ServerRequest::CheckpointVerified {
                    id,
                    manifest,
                    verified,
                }
            }
        }
    }
}

struct SyncJob {
    id: u64,
    generation: u64,
    store: Arc<dyn Storage>,
}

impl SyncWorker {
    fn spawn() -> std::io::Result<SyncWorker> {
        let (jobs, rx) = std::sync::mpsc::channel::<SyncJob>();
        let (completions, sender) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("standby-sync".into())
            .spawn(move || {
                let Ok(requests) = sender.recv() else { return };
                Self::run(rx, requests);
            })?;
        Ok(SyncWorker {
            jobs,
            completions: Some(completions),
        })
    }

    fn run(
        rx: std::sync::mpsc::Receiver<SyncJob>,
        requests: tokio::sync::mpsc::Sender<ServerRequest>,
    ) {
        while let Ok(first) = rx.recv() {
            // Everything asked by now is covered by one sync per store.
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut k = 0;
            while k < batch.len() {
                let run = batch[k..]
                    .iter()
                    .take_while(|j| Arc::ptr_eq(&j.store, &batch[k].store))
                    .count();
                let last = &batch[k + run - 1];
                let result = batch[k].store.sync().map_err(|e| e.to_string());
                let done = ServerRequest::StoreSynced {
                    id: last.id,
                    generation: last.generation,
                    result,
                };
                if requests.blocking_send(done).is_err() {
                    return; // the server stopped
                }
                k += run;
            }
        }
    }
}

/// A function run on the store by [`ServerRequest::Inspect`]: given the store and its
/// staleness, or why it cannot be read now.
pub struct Inspect(pub Box<InspectFn>);

/// The function of an [`Inspect`].
pub type InspectFn = dyn FnOnce(Result<(&dyn Storage, Staleness), ReadError>) + Send;

impl std::fmt::Debug for Inspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspect(..)")
    }
}

/// A read of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// The current revision of an object.
    Load(Oid),
    /// The newest revision older than a tid.
    LoadBefore(Oid, storage::Tid),
    /// Up to `n` revisions, newest first.
    History(Oid, u32),
    /// Only the staleness (last transaction).
    Last,
    /// Transactions in `[start, stop]`, at most `max`.
    Iterate {
        /// First tid.
        start: storage::Tid,
        /// Last tid.
        stop: storage::Tid,
        /// Page size.
        max: u32,
    },
    /// The lost archive, at most `max` entries from the start.
    Lost {
        /// Page size.
        max: u32,
    },
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadAnswer {
    /// A revision, or none.
    Revision(Option<Revision>),
    /// Revisions.
    Revisions(Vec<Revision>),
    /// Nothing but the staleness.
    Last,
    /// Transactions, and whether the range holds more.
    Transactions(Vec<storage::Transaction>, bool),
    /// Archived lost transactions.
    Lost(Vec<storage::LostTransaction>),
}

/// Object bytes above which a page of iteration ends (the client asks for the next page).
pub(crate) const ITERATE_PAGE_BYTES: usize = 8 << 20;

/// Runs `op` on `store` as of `at`, the server's read point (what its disk holds: newer
/// transactions may be applied and not yet synced, and stay unseen).
pub(crate) fn read_store<S: Storage + ?Sized>(
    store: &S,
    op: ReadOp,
    at: storage::Tid,
) -> Result<ReadAnswer, StorageError> {
    Ok(match op {
        ReadOp::Load(oid) => ReadAnswer::Revision(store.load_at(&oid, at)?),
        ReadOp::LoadBefore(oid, tid) => {
            ReadAnswer::Revision(store.load_before(&oid, tid.min(at.next()))?)
        }
        ReadOp::History(oid, n) => {
            let n = n.min(10_000) as usize;
            // Revisions past `at` are left out; asked for as many more as there were.
            let mut revs = store.history(&oid, n)?;
            let unseen = revs.iter().filter(|r| r.tid > at).count();
            if unseen > 0 {
                revs = store.history(&oid, n + unseen)?;
                revs.retain(|r| r.tid <= at);
                revs.truncate(n);
            }
            ReadAnswer::Revisions(revs)
        }
        ReadOp::Last => ReadAnswer::Last,
        ReadOp::Iterate { start, stop, max } => {
            let stop = stop.min(at);
            let max = max.clamp(1, 10_000) as usize;
            let mut txns = Vec::new();
            let mut bytes = 0usize;
            let mut more = false;
            let range = storage::TidRange::new(Some(start), Some(stop));
            for t in store.iter(range, storage::Direction::Forward)? {
                // A page holds at least one transaction, whatever its size.
                if txns.len() == max || bytes >= ITERATE_PAGE_BYTES {
                    more = true;
                    break;
                }
                let t = t?;
                bytes += t
                    .records
                    .iter()
                    .map(|r| r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len()))
                    .sum::<usize>();
                txns.push(t);
            }
            ReadAnswer::Transactions(txns, more)
        }
        ReadOp::Lost { max } => {
            let mut v = Vec::new();
            for l in store.lost_transactions()? {
                if v.len() >= max.clamp(1, 10_000) as usize {
                    break;
                }
                v.push(l?);
            }
            ReadAnswer::Lost(v)
        }
    })
}

/// Opens a store directory (checkpoints are opened with it).
pub type OpenStore<S> = Box<dyn Fn(&Path) -> Result<S, StorageError> + Send>;

/// What a server needs to send and receive checkpoints: its data directory (see
/// [`checkpoint::current_store_dir`]) and how to open a store.
pub struct CheckpointSupport<S> {
    /// The data directory.
    pub data: PathBuf,
    /// Opens a store directory.
    pub open: OpenStore<S>,
    /// Where a donor listens for the recipient's fetch (an ephemeral port on it): the
    /// server's ring address, which every other server reaches.
    pub listen_ip: std::net::IpAddr,
}

/// The store's read handle ([`Storage::read_handle`]) for readers outside the server's task,
/// while the replica says reads are served. The shell replaces the handle when a checkpoint
/// replaces the store, and updates the flag after every input.
#[derive(Default)]
pub struct DirectReads {
    store: RwLock<Option<Arc<dyn Storage>>>,
    readable: AtomicBool,
    /// The read point ([`ServerCore::read_point`]) after the last input.
    point: AtomicU64,
}

impl DirectReads {
    /// The handle, if the store has one and reads are served now. A reader must still
    /// check, after reading, that no fill began meanwhile (`fill_progress` is `None`): the
    /// flag moves only at the end of the input that starts one.
    pub fn get(&self) -> Option<Arc<dyn Storage>> {
        if !self.readable.load(Ordering::Acquire) {
            return None;
        }
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The point reads are served as of (see [`ServerCore::read_point`]): a reader bounds
    /// what it reads by it, whatever the store holds beyond.
    pub fn read_point(&self) -> storage::Tid {
        storage::Tid(self.point.load(Ordering::Acquire))
    }

    fn set_store(&self, store: Option<Arc<dyn Storage>>) {
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = store;
    }
}

/// One storage server's core and what executes its outputs.
pub struct ServerShell<S: Storage + 'static> {
    core: ServerCore<S>,
    direct: Arc<DirectReads>,
    /// Syncs off this task, for a store that has a handle to sync through (else inline).
    sync: Option<SyncWorker>,
    /// The store a sync is for: one more at each checkpoint install.
    store_generation: u64,
    ckpt: Option<CheckpointSupport<S>>,
    /// Donor: the transfers being served, and how to stop each; recipient: the fetches.
    serving: BTreeMap<u64, transfer::Cancel>,
    fetching: BTreeMap<u64, transfer::Cancel>,
    waiting: BTreeMap<ReqId, oneshot::Sender<Result<Committed, CommitError>>>,
    next_req: u64,
    /// The time of the last input (reports of executed commands carry it).
    now: Time,
    /// The driver's request channel, for work done off this task.
    reports: Reports,
}

impl<S: Storage + 'static> ServerShell<S> {
    /// Wires `node` and `replica` together.
    pub fn new(
        node: gcs::Node,
        replica: Replica<S>,
        ckpt: Option<CheckpointSupport<S>>,
        configured: Configured,
    ) -> ServerShell<S> {
        let direct = Arc::new(DirectReads::default());
        direct.set_store(replica.store().read_handle());
        direct.readable.store(replica.readable(), Ordering::Release);
        direct
            .point
            .store(replica.synced_tid().0, Ordering::Release);
        let opts = CoreOptions {
            checkpoints: ckpt.is_some(),
            ..CoreOptions::default()
        };
        let sync = match SyncWorker::spawn() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no sync thread: the store syncs in the server's task");
                None
            }
        };
        ServerShell {
            core: ServerCore::new(node, replica, configured, opts),
            direct,
            sync,
            store_generation: 0,
            ckpt,
            serving: BTreeMap::new(),
            fetching: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_req: 1,
            now: Time::ZERO,
            reports: Reports::default(),
        }
    }

    /// The read handle for readers outside the server's task.
    pub fn direct_reads(&self) -> Arc<DirectReads> {
        self.direct.clone()
    }

    /// Where the sync thread and checkpoint work will send their reports, to be given the
    /// driver's request channel once the driver runs (`driver::spawn` returns it): see
    /// [`SyncHandoff::reports_to`].
    pub fn take_sync_handoff(&mut self) -> SyncHandoff {
        SyncHandoff {
            sync: self.sync.as_mut().and_then(|w| w.completions.take()),
            reports: self.reports.clone(),
        }
    }

    /// Runs `work` on a thread of its own that reports through the request channel, or here
    /// if there is no channel yet or no thread.
    fn off_task(&mut self, work: CheckpointWork) {
        if let Some(requests) = self.reports.get().cloned() {
            let w = work.clone();
            let spawned = std::thread::Builder::new()
                .name("standby-ckpt".into())
                .spawn(move || {
                    let _ = requests.blocking_send(w.run());
                });
            match spawned {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for checkpoint work: done in the server's task")
                }
            }
        }
        let report = work.run();
        let _ = self.handle_request(self.now, report);
    }

    /// Runs `work` on a thread of its own that reports through the request channel; false if
    /// there is no channel yet or no thread (work that waits on the network never runs in the
    /// server's task).
    fn off_task_only(&mut self, work: CheckpointWork) -> bool {
        let Some(requests) = self.reports.get().cloned() else {
            return false;
        };
        std::thread::Builder::new()
            .name("standby-ckpt".into())
            .spawn(move || {
                let _ = requests.blocking_send(work.run());
            })
            .map_err(|e| tracing::warn!(error = %e, "no thread for a checkpoint transfer"))
            .is_ok()
    }

    /// Donor: the checkpoint of transfer `id` was made and listed; serve its files on a
    /// thread of its own, and offer them.
    fn checkpoint_listed(
        &mut self,
        id: u64,
        made: Result<servercore::checkpoint::Manifest, String>,
    ) {
        let now = self.now;
        if !self.core.awaits_checkpoint(id) {
            // Discarded while it was listed: nothing to serve (its directory is gone).
            return;
        }
        let offered = made.and_then(|manifest| {
            let ck = self.ckpt.as_ref().ok_or("no data directory")?;
            let requests = self
                .reports
                .get()
                .cloned()
                .ok_or("no report channel to serve a checkpoint from")?;
            let (listener, source) = transfer::listen(ck.listen_ip)?;
            let dir = ck.data.join(format!("outgoing-{id}"));
            let cancel = transfer::Cancel::default();
            let (files, src, stop) = (manifest.files.clone(), source.clone(), cancel.clone());
            std::thread::Builder::new()
                .name("standby-ckpt-serve".into())
                .spawn(move || {
                    transfer::yield_to_the_ring();
                    let result = transfer::serve(listener, &src, id, &dir, &files, &stop);
                    let _ = requests.blocking_send(ServerRequest::CheckpointServed { id, result });
                })
                .map_err(|e| format!("no thread to serve a checkpoint: {e}"))?;
            self.serving.insert(id, cancel);
            tracing::info!(id, addr = %source.addr, "serving a checkpoint");
            Ok((manifest, bytes::Bytes::from(source.encode())))
        });
        self.core.checkpoint_made(now, id, offered);
    }

    /// Syncs the store: on the sync thread if the store has a handle for it, else here.
    fn sync_store(&mut self, id: u64) {
        let handle = self.core.store().read_handle();
        match (self.sync.as_ref(), handle) {
            (Some(w), Some(store)) => {
                let job = SyncJob {
                    id,
                    generation: self.store_generation,
                    store,
                };
                if w.jobs.send(job).is_ok() {
                    return;
                }
                tracing::warn!("the sync thread stopped: the store syncs in the server's task");
                self.sync = None;
                self.sync_store(id)
            }
            _ => {
                let result = self.core.store().sync().map_err(|e| e.to_string());
                self.core.store_synced(self.now, id, result);
            }
        }
    }

    fn wait(&mut self, reply: oneshot::Sender<Result<Committed, CommitError>>) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        self.waiting.insert(id, reply);
        id
    }

    fn after_input(&mut self) {
        // The point first: a reader that sees the flag set reads at a point no older than
        // the input's (points only grow, except across a checkpoint install, which clears
        // the flag first).
        self.direct
            .point
            .store(self.core.read_point().0, Ordering::Release);
        self.direct
            .readable
            .store(self.core.readable(), Ordering::Release);
    }

    fn dir(&self, kind: &str, id: u64) -> Option<PathBuf> {
        self.ckpt
            .as_ref()
            .map(|c| c.data.join(format!("{kind}-{id}")))
    }

    /// Executes a checkpoint command on files and reports back to the core.
    fn execute(&mut self, c: CheckpointCommand) {
        let now = self.now;
        match c {
            CheckpointCommand::Make { id, to: _ } => {
                let made = match self.dir("outgoing", id) {
                    Some(dir) => checkpoint::make_files(self.core.store(), &dir).map(|t| (dir, t)),
                    None => Err("no data directory".to_string()),
                };
                match made {
                    Ok((dir, tid)) => self.off_task(CheckpointWork::Manifest { id, dir, tid }),
                    Err(e) => self.core.checkpoint_made(now, id, Err(e)),
                }
            }
            CheckpointCommand::Discard { id } => {
                if let Some(cancel) = self.serving.remove(&id) {
                    cancel.store(true, Ordering::Relaxed);
                }
                if let Some(dir) = self.dir("outgoing", id) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            CheckpointCommand::Prepare { id, donor: _ } => {
                let r = match self.dir("incoming", id) {
                    Some(dir) => checkpoint::prepare(&dir).map_err(|e| e.to_string()),
                    None => Err("no data directory".to_string()),
                };
                if let Err(e) = r {
                    let reason = format!("cannot create the checkpoint side directory: {e}");
                    self.core.transfer_failed(now, id, &reason);
                }
            }
            CheckpointCommand::Fetch {
                id,
                donor: _,
                manifest,
                source,
            } => {
                let fetch = (|| {
                    let source = transfer::Source::decode(&source.0)
                        .ok_or_else(|| "a malformed checkpoint source".to_string())?;
                    if let Some((name, len, _)) = manifest
                        .files
                        .iter()
                        .find(|f| f.1 > checkpoint::CHECKPOINT_FILE_MAX)
                    {
                        return Err(format!("{name}: {len} bytes offered"));
                    }
                    let dir = self.dir("incoming", id).ok_or("no data directory")?;
                    Ok((source, dir))
                })();
                match fetch {
                    Ok((source, dir)) => {
                        let cancel = transfer::Cancel::default();
                        self.fetching.insert(id, cancel.clone());
                        let work = CheckpointWork::Fetch {
                            id,
                            dir,
                            manifest,
                            source,
                            cancel,
                        };
                        if !self.off_task_only(work) {
                            self.fetching.remove(&id);
                            self.core.transfer_failed(
                                now,
                                id,
                                "no thread to fetch a checkpoint on",
                            );
                        }
                    }
                    Err(e) => self.core.transfer_failed(now, id, &e),
                }
            }
            CheckpointCommand::Abandon { id } => {
                if let Some(cancel) = self.fetching.remove(&id) {
                    cancel.store(true, Ordering::Relaxed);
                }
                if let Some(dir) = self.dir("incoming", id) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }

    /// Verifies the side directory, moves it into place, opens it and hands it to the core.
    fn install(
        &mut self,
        id: u64,
        manifest: &servercore::checkpoint::Manifest,
        verified: Result<(), String>,
    ) {
        let now = self.now;
        if self.core.installing_transfer() != Some(id) {
            // Abandoned while its files were checked (its directory is gone or going).
            return;
        }
        if let Err(e) = verified {
            // Not fetched (the donor unreachable, a broken connection, a checksum): asked
            // again shortly.
            self.core.transfer_failed(now, id, &e);
            return;
        }
        let promoted = (|| {
            let ck = self.ckpt.as_ref().ok_or("no data directory")?;
            let dir = ck.data.join(format!("incoming-{id}"));
            {
                // Opened in the side directory only to check it, then closed again.
                let probe = (ck.open)(&dir).map_err(|e| e.to_string())?;
                let last = probe.last_transaction().map_err(|e| e.to_string())?;
                if last != manifest.tid {
                    return Err(format!(
                        "checkpoint holds {last}, announced {}",
                        manifest.tid
                    ));
                }
            }
            let (new_dir, old_dir) =
                checkpoint::promote(&ck.data, &dir).map_err(|e| e.to_string())?;
            let store = (ck.open)(&new_dir).map_err(|e| e.to_string())?;
            tracing::info!(tid = %manifest.tid, dir = %new_dir.display(), "checkpoint promoted");
            Ok::<_, String>((store, old_dir))
        })();
        match promoted {
            Ok((store, old_dir)) => {
                // Direct readers let go of the old store first: the replica drops (closes) it
                // in `checkpoint_ready`, and only then is its directory moved.
                self.direct.readable.store(false, Ordering::Release);
                self.direct.set_store(None);
                // Syncs still running are for the old store: their reports are dropped.
                self.store_generation += 1;
                let r = self.core.checkpoint_ready(now, id, Ok(store));
                self.direct.set_store(self.core.store().read_handle());
                if r.is_ok() {
                    if let Some(ck) = self.ckpt.as_ref() {
                        checkpoint::retire(&ck.data, &old_dir);
                    }
                }
            }
            Err(e) => {
                let _ = self.core.checkpoint_ready(now, id, Err(e));
            }
        }
    }
}

impl<S: Storage + 'static> Drop for ServerShell<S> {
    fn drop(&mut self) {
        // A stopped or killed server closes its store: no direct reader keeps it open (a
        // restart in the same process opens the same directory).
        self.direct.readable.store(false, Ordering::Release);
        self.direct.set_store(None);
    }
}

impl<S: Storage + 'static> Core for ServerShell<S> {
    type Request = ServerRequest;
    type Event = ServerEvent;

    fn handle_packet(&mut self, now: Time, bytes: bytes::Bytes) {
        self.now = now;
        self.core.handle_packet(now, bytes);
        self.after_input();
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.core.handle_timeout(now);
        self.after_input();
    }

    fn handle_request(&mut self, now: Time, req: ServerRequest) -> Option<ServerRequest> {
        self.now = now;
        match req {
            ServerRequest::Commit { c, reply } => {
                let id = self.wait(reply);
                self.core.commit(now, id, c);
            }
            ServerRequest::Swap { to, reply } => {
                let _ = reply.send(self.core.request_swap(now, to));
            }
            ServerRequest::Inspect(Inspect(f)) => match self.core.read(now) {
                Ok((store, st)) => f(Ok((store as &dyn Storage, st))),
                Err(e) => f(Err(e)),
            },
            ServerRequest::Status { reply } => {
                let _ = reply.send(self.core.status(now));
            }
            ServerRequest::Readdress { daemons } => self.core.readdress(now, &daemons),
            ServerRequest::ChangeMembership {
                client,
                request,
                change,
                reply,
            } => {
                let id = self.wait(reply);
                self.core
                    .membership_change(now, id, client, request, change);
            }
            ServerRequest::ChangeVoters { add, remove, reply } => {
                let id = self.wait(reply);
                self.core.voter_change(now, id, &add, &remove);
            }
            ServerRequest::CheckpointMade { id, made } => self.checkpoint_listed(id, made),
            ServerRequest::CheckpointServed { id, result } => {
                // Still in the map: not cancelled by a discard, so the core is told.
                if self.serving.remove(&id).is_some() {
                    match result {
                        Ok(()) => self.core.checkpoint_served(now, id),
                        Err(e) => self.core.serving_failed(now, id, e),
                    }
                }
            }
            ServerRequest::CheckpointVerified {
                id,
                manifest,
                verified,
            } => {
                self.fetching.remove(&id);
                self.install(id, &manifest, verified)
            }
            ServerRequest::StoreSynced {
                id,
                generation,
                result,
            } => {
                if generation == self.store_generation {
                    self.core.store_synced(now, id, result);
                }
            }
        }
        self.after_input();
        None
    }

    fn poll_deadline(&self) -> Option<Time> {
        self.core.poll_deadline()
    }

    fn poll_output(&mut self) -> Option<CoreOutput<ServerEvent>> {
        loop {
            let o = self.core.poll_output();
            // The replica applies delivered commits in its poll, so the read point moves
            // here too: published before the events that tell readers of what it covers (a
            // ZEO connection told of a tid reads again until the point reaches it).
            self.direct
                .point
                .store(self.core.read_point().0, Ordering::Release);
            let o = o?;
            match o {
                Output::Transmit { dest, bytes } => {
                    return Some(CoreOutput::Transmit { dest, bytes })
                }
                Output::Peers { daemons, removed } => {
                    return Some(CoreOutput::Peers(gcs::net::driver::AddressBook {
                        daemons,
                        removed,
                    }))
                }
                Output::Event(e) => return Some(CoreOutput::Event(e)),
                Output::Reply { id, result } => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Output::Checkpoint(c) => {
                    self.execute(c);
                    self.after_input();
                }
                Output::SyncStore { id } => {
                    self.sync_store(id);
                    self.after_input();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{MemOptions, MemStorage, Tid, Transaction, TxnMeta};

    fn put(tid: u64, oid: u64, v: &str) -> Transaction {
        Transaction {
            tid: Tid(tid),
            meta: TxnMeta::default(),
            records: vec![storage::Record {
                oid: Oid::from_u64(oid),
                data: Some(bytes::Bytes::from(v.to_string())),
                expected_serial: None,
            }],
        }
    }

    /// What a store holds past the read point (applied, not yet synced) stays unseen by
    /// every read: loads, loads before, histories and iterations.
    #[test]
    fn reads_are_served_as_of_the_read_point() {
        let s = MemStorage::new(MemOptions::default());
        for (t, v) in [(10, "a"), (20, "b"), (30, "c")] {
            s.commit(&put(t, 1, v)).unwrap();
        }
        let at = Tid(20);
        let tid_of = |a: ReadAnswer| match a {
            ReadAnswer::Revision(r) => r.map(|r| r.tid),
            a => panic!("{a:?}"),
        };
        let load = read_store(&s, ReadOp::Load(Oid::from_u64(1)), at).unwrap();
        assert_eq!(tid_of(load), Some(Tid(20)));
        let before = read_store(&s, ReadOp::LoadBefore(Oid::from_u64(1), Tid::MAX), at).unwrap();
        assert_eq!(tid_of(before), Some(Tid(20)));
        let before = read_store(&s, ReadOp::LoadBefore(Oid::from_u64(1), Tid(20)), at).unwrap();
        assert_eq!(tid_of(before), Some(Tid(10)));
        match read_store(&s, ReadOp::History(Oid::from_u64(1), 2), at).unwrap() {
            ReadAnswer::Revisions(v) => {
                assert_eq!(
                    v.iter().map(|r| r.tid).collect::<Vec<_>>(),
                    [Tid(20), Tid(10)]
                )
            }
            a => panic!("{a:?}"),
        }
        let op = ReadOp::Iterate {
            start: Tid::ZERO,
            stop: Tid::MAX,
            max: 100,
        };
        match read_store(&s, op, at).unwrap() {
            ReadAnswer::Transactions(t, more) => {
                assert_eq!(
                    t.iter().map(|t| t.tid).collect::<Vec<_>>(),
                    [Tid(10), Tid(20)]
                );
                assert!(!more);
            }
            a => panic!("{a:?}"),
        }
        // At the store's last transaction, everything is seen.
        let load = read_store(&s, ReadOp::Load(Oid::from_u64(1)), Tid(30)).unwrap();
        assert_eq!(tid_of(load), Some(Tid(30)));
    }
}
