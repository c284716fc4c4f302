//! The storage server: a gcs node, the replica state machine and a store, run by the gcs tokio
//! driver on a real UDP socket, with an async handle for the client-facing side.
//!
//! [`ServerCore`] (crate `servercore`) is the whole server as one sans-IO state machine: the
//! simulator drives it too. Here [`core::ServerShell`] executes its outputs (answers through
//! channels, checkpoint files, the read handle) inside the gcs tokio driver.
//!
//! [`StorageServer`] is the async handle the client-facing side uses: `commit`, `swap`,
//! `change_membership`, `change_voters`, `readdress`, `status`, `load` (with its staleness),
//! `inspect` (a read in the server's task), `kill`, and two ways to read without waiting behind
//! the ring's work: `direct_reads`, the store's own read handle (`Storage::read_handle`,
//! RocksDB only), published by the shell only while the replica serves reads and taken back
//! before a checkpoint replaces the store and when the core stops; and `read_fast`, which reads
//! through it on the caller's task and falls back to the server's task when a fill began
//! meanwhile.
//!
//! The primary's replica times each sync commit's two stages, to its delivery back at the
//! primary and then to durable on a majority (`ReplicaStats::stage_*`, on `/metrics` beside
//! the token count): that is how to see, in token rotations, what a commit is waiting for.
//!
//! Beside it: [`front`] the client port, [`tls`] its TLS, [`admin`] the HTTP endpoint,
//! [`config`] the cluster file, [`client`] the in-process client, [`checkpoint`] the data
//! directory, `zeo` the ZEO 5 face for stock ZODB clients.

pub mod admin;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod core;
pub mod front;
pub mod tls;
pub mod transfer;
pub mod zeo;

pub use crate::core::{
    CheckpointSupport, Inspect, InspectFn, OpenStore, ReadAnswer, ReadError, ReadOp, ServerCore,
    ServerEvent, ServerRequest, ServerShell, ServerStatus,
};
pub use servercore::membership;
/// The TCP client library (crate `standby-client`).
pub use standby_client as netclient;
pub use standby_client::proto;

use gcs::net::driver::{self, Clock};
use gcs::net::{ClusterConfig, Security, StartError};
use gcs::{Node, ProcId};
use replica::{CommitError, CommitRequest, Committed, ReplicaConfig, ServerId, SwapError};
use storage::{Oid, Revision, Storage};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerStartError {
    /// The gcs side.
    #[error(transparent)]
    Gcs(#[from] StartError),
    /// The replication configuration.
    #[error(transparent)]
    Config(#[from] replica::ConfigError),
    /// The store.
    #[error("store: {0}")]
    Storage(#[from] storage::StorageError),
}

/// The server stopped before answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the storage server has stopped")]
pub struct Stopped;

/// How to start a server.
pub struct ServerOptions {
    /// The gcs cluster (every storage server is one daemon of it).
    pub cluster: ClusterConfig,
    /// This server's id (its daemon id).
    pub id: ServerId,
    /// The replication configuration (the same on every server).
    pub replica: ReplicaConfig,
    /// Datagram protection.
    pub security: Security,
    /// The store lost its disk since it last ran (it must not vote until caught up).
    pub after_disk_loss: bool,
}

/// How a server's store is provided.
pub enum StoreSource<S> {
    /// A store opened by the caller (it cannot receive or send checkpoints).
    Open(S),
    /// A data directory (layout in [`checkpoint`]): the live store is opened with `open`, and
    /// checkpoints are received into and sent from it.
    DataDir {
        /// The data directory.
        data: std::path::PathBuf,
        /// Opens a store directory.
        open: OpenStore<S>,
    },
}

/// A running storage server.
pub struct StorageServer {
    id: ServerId,
    direct: std::sync::Arc<core::DirectReads>,
    requests: mpsc::Sender<ServerRequest>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    keys: mpsc::Sender<driver::KeyControl>,
}

impl StorageServer {
    /// Starts a server over `store` on the current tokio runtime. Returns the handle and the
    /// event stream (roles, invalidations, losses; bounded by `event_capacity`: not draining
    /// it back-pressures the server).
    pub async fn start<S: Storage + 'static>(
        opts: ServerOptions,
        source: StoreSource<S>,
        event_capacity: usize,
    ) -> Result<(StorageServer, mpsc::Receiver<ServerEvent>), ServerStartError> {
        let mut after_disk_loss = opts.after_disk_loss;
        let mut rebuild_mark = None;
        let (store, ckpt) = match source {
            StoreSource::Open(s) => (s, None),
            StoreSource::DataDir { data, open } => {
                let removed = checkpoint::remove_transfer_leftovers(&data)
                    .map_err(storage::StorageError::from)?;
                if removed > 0 {
                    tracing::info!(
                        removed,
                        "removed the checkpoint transfers of an earlier run"
                    );
                }
                let (dir, new) =
                    checkpoint::live_store_dir(&data).map_err(storage::StorageError::from)?;
                if !new {
                    if let Some(what) = checkpoint::check_live_store(&dir) {
                        return Err(storage::StorageError::Corrupt { what }.into());
                    }
                }
                let store = open(&dir)?;
                if new {
                    checkpoint::mark_created(&data).map_err(storage::StorageError::from)?;
                }
                // A store set aside for a rebuild: empty, and it must not vote until caught
                // up, however often the server restarts before its first election.
                let mark = dir.join(checkpoint::REBUILD_MARK);
                if mark.exists() {
                    after_disk_loss = true;
                    rebuild_mark = Some(mark);
                }
                // A donor serves checkpoint files on its ring address (which every other
                // server reaches), on a port of the moment.
                let listen_ip = opts
                    .cluster
                    .daemons
                    .iter()
                    .find(|d| d.id == opts.id)
                    .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |d| d.addr.ip());
                let ckpt = CheckpointSupport {
                    data,
                    open,
                    listen_ip,
                };
                (store, Some(ckpt))
            }
        };
        opts.replica.validate()?;
        opts.replica
            .check_message_limit(opts.cluster.protocol().max_message_size)?;
        let configured = membership::Configured {
            daemons: opts
                .cluster
                .daemons
                .iter()
                .map(|d| (d.id, d.addr))
                .collect(),
            replica: opts.replica.clone(),
        };
        let cluster = opts.cluster;
        let id = opts.id;
        let clock = Clock::new();
        let me = ProcId::new(id, driver::fresh_incarnation());
        let node = Node::new(cluster.protocol(), me, clock.now()).map_err(StartError::from)?;
        let replica = servercore::open_replica(opts.replica, id, store, after_disk_loss).map_err(
            |e| match e {
                servercore::OpenError::NotWritable { error, .. } => error,
                servercore::OpenError::Replica(error) => error,
            },
        )?;
        if let Some(mark) = rebuild_mark {
            // The replication state now says "no vote until caught up".
            std::fs::remove_file(&mark).map_err(storage::StorageError::from)?;
        }
        let mut core = ServerShell::new(node, replica, ckpt, configured);
        let direct = core.direct_reads();
        let sync_handoff = core.take_sync_handoff();
        let r = driver::spawn(core, clock, cluster, id, me, &opts.security, event_capacity)?;
        sync_handoff.reports_to(r.requests.clone());
        Ok((
            StorageServer {
                id,
                direct,
                requests: r.requests,
                shutdown: Some(r.shutdown),
                task: r.task,
                keys: r.keys,
            },
            r.events,
        ))
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// The cluster key file was read again: see `gcs::net::driver::KeyControl::Reload`. The
    /// servers move to the newest key together once every one holds it, then drop the old
    /// one, without a view change.
    pub async fn reload_keys(
        &self,
        keys: Vec<(gcs::KeyId, gcs::ClusterKey)>,
    ) -> Result<Result<gcs::crypto::rotation::KeyStatus, String>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.keys
            .send(driver::KeyControl::Reload { keys, reply })
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// The keys this server holds and seals with, and what it heard of its peers' (`None`:
    /// it runs without a cluster key).
    pub async fn key_status(&self) -> Result<Option<gcs::crypto::rotation::KeyStatus>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.keys
            .send(driver::KeyControl::Status { reply })
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ServerRequest,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Commits through this server (its answer may be a redirect to the primary).
    pub async fn commit(
        &self,
        c: CommitRequest,
    ) -> Result<Result<Committed, CommitError>, Stopped> {
        self.ask(|reply| ServerRequest::Commit { c, reply }).await
    }

    /// Adds or removes a read replica (see [`membership`]), committed by `(client, request)`
    /// like a write (the answer may be a redirect to the primary).
    pub async fn change_membership(
        &self,
        client: u64,
        request: u64,
        change: membership::MembershipChange,
    ) -> Result<Result<Committed, CommitError>, Stopped> {
        self.ask(|reply| ServerRequest::ChangeMembership {
            client,
            request,
            change,
            reply,
        })
        .await
    }

    /// Gives servers a vote and takes it from others (see [`replica::voters`]); the answer
    /// may be a redirect to the primary.
    pub async fn change_voters(
        &self,
        add: Vec<(ServerId, u32)>,
        remove: Vec<ServerId>,
    ) -> Result<Result<Committed, CommitError>, Stopped> {
        self.ask(|reply| ServerRequest::ChangeVoters { add, remove, reply })
            .await
    }

    /// Gives the configured servers' gcs addresses as resolved now: the server sends to and
    /// accepts datagrams from the new ones at once (a peer whose host name now resolves
    /// elsewhere, a rescheduled pod for instance, keeps its place in the ring).
    pub async fn readdress(
        &self,
        daemons: Vec<(ServerId, std::net::SocketAddr)>,
    ) -> Result<(), Stopped> {
        self.requests
            .send(ServerRequest::Readdress { daemons })
            .await
            .map_err(|_| Stopped)
    }

    /// Asks for a planned swap to `to`.
    pub async fn swap(&self, to: ServerId) -> Result<Result<(), SwapError>, Stopped> {
        self.ask(|reply| ServerRequest::Swap { to, reply }).await
    }

    /// Reads the current revision of `oid` here, with this server's staleness.
    pub async fn load(
        &self,
        oid: Oid,
    ) -> Result<Result<(Option<Revision>, replica::Staleness), ReadError>, Stopped> {
        Ok(self.read(ReadOp::Load(oid)).await?.map(|(a, s)| match a {
            ReadAnswer::Revision(r) => (r, s),
            _ => (None, s),
        }))
    }

    /// Any read here, with this server's staleness.
    pub async fn read(
        &self,
        op: ReadOp,
    ) -> Result<Result<(ReadAnswer, replica::Staleness), ReadError>, Stopped> {
        self.inspect(move |store, st| Ok((core::read_store(store, op, st.last_tid)?, st)))
            .await
    }

    /// A handle on the store for reads on the caller's task, without a round trip through
    /// the server's task: `None` if the store has none or reads are not served now (then
    /// use [`Self::inspect`]). A reader checks after reading that no fill began meanwhile
    /// (`fill_progress` is `None`): the readable flag moves at the end of the input that
    /// starts one. [`Self::read_fast`] does both.
    pub fn direct_reads(&self) -> Option<std::sync::Arc<dyn Storage>> {
        self.direct.get()
    }

    /// Runs a read on the store, given the point to read it as of (the server's read point,
    /// [`core::DirectReads::read_point`]: what its disk held before the read ran; `f` bounds
    /// what it reads by it, `Storage::load_at`): on
    /// the caller's task through [`Self::direct_reads`] when the store has a handle and reads
    /// are served (the read neither waits behind the ring's work nor adds to it), else in the
    /// server's task ([`Self::inspect`]). A direct read that met the start of a fill, or
    /// failed during one, is run again in the server's task, which refuses it.
    pub async fn read_fast<T: Send + 'static>(
        &self,
        f: impl Fn(&dyn Storage, storage::Tid) -> Result<T, storage::StorageError> + Send + 'static,
    ) -> Result<Result<T, ReadError>, Stopped> {
        if let Some(store) = self.direct_reads() {
            let direct = (|| {
                let at = store.last_transaction()?.min(self.direct.read_point());
                let v = f(&*store, at)?;
                Ok::<_, storage::StorageError>(store.fill_progress()?.is_none().then_some(v))
            })();
            match direct {
                Ok(Some(v)) => return Ok(Ok(v)),
                Ok(None) => {}
                Err(_) if matches!(store.fill_progress(), Ok(Some(_))) => {}
                Err(e) => return Ok(Err(ReadError::Storage(e.to_string()))),
            }
        }
        self.inspect(move |store, st| f(store, st.last_tid)).await
    }

    /// Runs `f` on the store in the server's task (one consistent state: no commit is
    /// applied while it runs, so keep it short) and returns what it returns.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Storage, replica::Staleness) -> Result<T, storage::StorageError>
            + Send
            + 'static,
    ) -> Result<Result<T, ReadError>, Stopped> {
        self.ask(|reply| {
            ServerRequest::Inspect(Inspect(Box::new(move |r| {
                let out = r.and_then(|(store, st)| {
                    f(store, st).map_err(|e| ReadError::Storage(e.to_string()))
                });
                let _ = reply.send(out);
            })))
        })
        .await
    }

    /// This server's status.
    pub async fn status(&self) -> Result<ServerStatus, Stopped> {
        self.ask(|reply| ServerRequest::Status { reply }).await
    }

    /// Stops the server (the others see it leave after their token timeout).
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Stops the server at once, as a crash would: the task is aborted, its socket closes,
    /// nothing is said to the others (they notice by token loss).
    pub fn kill(&self) {
        self.task.abort();
    }
}
