//! The ZEO face: every storage server speaks ZEO 5 (msgpack, `M5`) to stock ZODB clients
//! (`ZEO.ClientStorage`), beside the native client port.
//!
//! # Two addresses
//! - `zeo` (writable): listened on **only while this server is the primary**. A stock client
//!   given every server's `zeo` address opens a connection to each; the non-primaries refuse
//!   the TCP connect, so the client keeps polling them every 1-2 s and lands on whichever is
//!   primary now. Answering `register` with `ReadOnlyError` instead would make a stock client
//!   give up on that address until all others fail (the pitfall of a failover it never
//!   follows), and accepting then closing makes it reconnect in a tight loop. When the server
//!   stops being primary it closes the listener, and only then every writable connection
//!   (a client reconnecting at once must be refused, not accepted and dropped): the clients
//!   reconnect and find the new primary by themselves. A primary whose view changed but whose
//!   component can still elect it (a ring re-formed after a lost token on a busy machine) keeps
//!   its clients for a grace of 3 s; another primary named, or a minority view, ends it at once.
//! - `zeo_read_only`: listened on by every server, for `read_only=True` clients (and
//!   `read_only_fallback` ones, whose writable `register` is answered `ReadOnlyError` and who
//!   then register read-only on the same connection). A replica outside the primary component
//!   keeps serving its last state there.
//!
//! # Commits
//! Stores are buffered per connection ([`session`]). `vote` takes per-object locks (all the
//! transaction's objects, in oid order, so two voters never deadlock and transactions on
//! disjoint objects commit in parallel), then checks serials, `checkCurrentSerialInTransaction`
//! and undos against the primary's store in one consistent read. A conflict goes back as ZEO's
//! client-side conflict resolution dict (the client resolves, stores again and votes again); a
//! read conflict as `ReadConflictError`. `tpc_finish` submits the transaction as one replicated
//! commit (its idempotency key is the connection's client id and a request number; the tid
//! is the primary's wall clock as a ZODB timestamp, or exactly the restored tid) and the
//! locks are released when it is answered. Committing at finish rather than at vote keeps a
//! `tpc_abort` after a successful vote correct.
//!
//! # What clients see, and when
//! The [`Dispatcher`] reads the server's events in order. On the primary it holds each
//! invalidation until the replica's `Durable` point passes it (a majority of the vote has the
//! commit on disk), and the committer's own `tpc_finish` reply is written at that same point,
//! in tid order with the invalidations on that connection: so no ZEO client ever sees a tid
//! that a failover could lose, in sync and in async mode alike (a stock client that has seen a
//! newer tid than a server's refuses that server: "Server behind client"). A new primary's
//! tids start above every tid it has seen. On other servers invalidations go out as commits
//! are applied. When a server's history is cut back (`Lost`), every ZEO connection it has is
//! closed so clients verify their caches again; a client whose cache is newer than every
//! server is stranded, which the server logs and counts (`zeo_stranded` in `/metrics`).
//!
//! # Reads, and the order on a connection
//! `loadBefore` and the vote's checks run on the connection's own task
//! (`StorageServer::read_fast`: through the store's read handle, checking afterwards that no
//! fill began, else in the server's task), so reads neither wait behind the ring's work nor
//! add to it. On each connection tids only increase: one dispatcher task writes every
//! invalidation, and raises the connection's `sent` mark under the lock that `register` also
//! takes. A `loadBefore` answer saying "current" is written under that same lock and only if
//! the connection was told of nothing newer than the state it was read from; otherwise the
//! read is done again, since a stale "current" would stay in the client's cache.
//!
//! # Oids
//! `new_oids` hands out blocks from a high-water mark replicated as the shell-owned object
//! [`replica::zeo_oids_oid`]: a block is committed (durable on a majority) before any oid of it
//! is given out, so no oid is handed out twice, across failovers too.
//!
//! # Not supported
//! Blobs (`IBlobStorage` is not claimed; a blob store fails the vote with a clear error),
//! server-side conflict resolution (the server cannot run the application's classes: ZEO's
//! client-side mode is used), pickle marshalling (`Z5`).
//!
//! # Files
//! `codec` frames and msgpack calls; `session` one connection (handshake, `register`,
//! reads as tasks of their own, transaction calls in order on a task that may wait);
//! `commit` what a vote reads in one consistent read (serial and read-current checks, undo
//! records) and pack's reachability walk; `pickle` the references inside a ZODB record, read
//! without running Python; `dispatch` events to clients; `tid` ZODB timestamps (a store
//! tid is the ZEO tid plus an offset, so the first epoch markers show as `z64`).

pub mod codec;
mod commit;
mod dispatch;
pub(crate) mod pickle;
mod session;
pub mod tid;

pub use dispatch::Dispatcher;

use crate::{ServerEvent, StorageServer};
use replica::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::Tid;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// How a ZEO face is set up.
#[derive(Clone, Debug)]
pub struct ZeoOptions {
    /// The storage name clients register with.
    pub storage_name: String,
    /// The writable address (listened on while primary).
    pub writable: Option<SocketAddr>,
    /// The read-only address (always listened on).
    pub read_only: Option<SocketAddr>,
    /// Largest frame accepted after the handshake.
    pub max_frame: usize,
    /// Most bytes queued for a client that does not read before it is cut off.
    pub max_queued: usize,
    /// How long a new connection has for the handshake.
    pub handshake_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl Default for ZeoOptions {
    fn default() -> Self {
        ZeoOptions {
            storage_name: "1".into(),
            writable: None,
            read_only: None,
            max_frame: 300 << 20,
            max_queued: 512 << 20,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct ZeoStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Transactions committed through this face.
    pub commits: AtomicU64,
    /// Conflicts returned at vote.
    pub conflicts: AtomicU64,
    /// Connections closed for bad input (framing, msgpack, protocol).
    pub bad_input: AtomicU64,
    /// Clients that registered and left at once with a cache newer than this server (a stock
    /// client refuses a server that is behind it: "Server behind client").
    pub stranded: AtomicU64,
    /// `tpc_finish` calls answered with a tid.
    pub finishes: AtomicU64,
    /// Sum over them, in microseconds, of the time from the session taking the call up to
    /// the reply queued (the commit durable as the mode promises, and its invalidations
    /// queued to every other client before it).
    pub finish_us: AtomicU64,
    /// The part of it up to the replicated commit answered to the session.
    pub finish_commit_us: AtomicU64,
}

/// What the dispatcher writes to one connection, and what it knows of it.
pub(crate) struct ConnOut {
    /// Frames to write, in order (the connection's writer task drains it).
    tx: mpsc::UnboundedSender<bytes::Bytes>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicU64>,
    /// Set when the connection must be closed (a client that does not read, a role change).
    closed: watch::Sender<bool>,
    /// The newest tid this connection was told of (register, invalidations, its own
    /// commits): anything at or below it is not sent again.
    pub(crate) sent: Tid,
    /// Registered: invalidations flow.
    pub(crate) registered: bool,
    /// Registered on the writable address (closed when the server stops being primary).
    pub(crate) writable: bool,
    /// The idempotency client id of this connection's commits.
    pub(crate) client: u64,
    /// A `tpc_finish` waiting for its commit to become visible: its msgid, and when the
    /// session took it up (for the stage timings).
    pub(crate) finishing: Option<(rmpv::Value, tokio::time::Instant)>,
    max_queued: u64,
}

impl ConnOut {
    /// Queues a frame; a client that lets more than the limit pile up is cut off.
    pub(crate) fn send(&self, frame: bytes::Bytes) {
        let len = frame.len() as u64;
        let n = self
            .queued
            .fetch_add(len, Ordering::Relaxed)
            .saturating_add(len);
        if n > self.max_queued {
            tracing::warn!(
                client = self.client,
                queued = n,
                "ZEO client does not read its answers: connection closed"
            );
            self.close();
            return;
        }
        let _ = self.tx.send(frame);
    }

    /// Asks the connection to close.
    pub(crate) fn close(&self) {
        let _ = self.closed.send(true);
    }
}

/// The dispatch state every connection and the dispatcher share (one lock: registering and
/// dispatching one invalidation exclude each other, so no invalidation falls between a
/// client's `register` answer and its subscription).
pub(crate) struct Shared {
    /// Open connections by connection number.
    pub(crate) conns: BTreeMap<u64, ConnOut>,
    /// The newest tid whose invalidations were dispatched: what `register` and
    /// `lastTransaction` answer.
    pub(crate) released: Tid,
    /// This server's role as the dispatcher last saw it.
    pub(crate) role: Role,
}

/// One server's ZEO face.
pub struct ZeoFace {
    pub(crate) server: Arc<StorageServer>,
    pub(crate) opts: ZeoOptions,
    pub(crate) shared: Mutex<Shared>,
    /// Tells the sessions when the released point moves (tpc_finish waits on it).
    pub(crate) released_tx: watch::Sender<Tid>,
    pub(crate) locks: commit::OidLocks,
    pub(crate) oids: tokio::sync::Mutex<commit::OidBlock>,
    /// The client id of this face's own commits (oid blocks, packs), and their numbers.
    pub(crate) own_client: u64,
    pub(crate) own_request: AtomicU64,
    client_base: u64,
    next_conn: AtomicU64,
    generation: AtomicU64,
    role_tx: watch::Sender<Role>,
    /// Counters.
    pub stats: ZeoStats,
}

impl ZeoFace {
    /// A face over `server`. `seed` must differ between the runs of every server of the
    /// cluster (it makes the connections' client ids unique): pass random bytes.
    pub fn new(server: Arc<StorageServer>, opts: ZeoOptions, seed: u64) -> Arc<ZeoFace> {
        // Client ids: the seed's high bits, a counter below. Client records are keyed by
        // them, so two servers (or two runs) must never hand out the same one.
        let client_base = seed & !0xffff_ffff;
        let (released_tx, _) = watch::channel(Tid::ZERO);
        let (role_tx, _) = watch::channel(Role::ReadOnly);
        Arc::new(ZeoFace {
            server,
            opts,
            shared: Mutex::new(Shared {
                conns: BTreeMap::new(),
                released: Tid::ZERO,
                role: Role::ReadOnly,
            }),
            released_tx,
            locks: commit::OidLocks::default(),
            oids: tokio::sync::Mutex::new(commit::OidBlock::default()),
            own_client: client_base | 0xffff_fffe,
            own_request: AtomicU64::new(now_micros()),
            client_base,
            next_conn: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            role_tx,
            stats: ZeoStats::default(),
        })
    }

    /// Runs the face: the dispatcher over `events` (every server event, in order) and the
    /// listeners. Returns when the event stream ends.
    pub async fn run(self: Arc<Self>, events: mpsc::Receiver<ServerEvent>) -> std::io::Result<()> {
        // The server's last tid at start: what a client registering before any event sees.
        if let Ok(Ok(st)) = self.server.inspect(|_, st| Ok(st)).await {
            let mut sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            sh.released = st.last_tid;
            let _ = self.released_tx.send(st.last_tid);
        }
        if let Some(addr) = self.opts.read_only {
            let l = TcpListener::bind(addr).await?;
            tracing::info!(%addr, "ZEO read-only address listening");
            tokio::spawn(session::accept_loop(self.clone(), l, false, None));
        }
        if let Some(addr) = self.opts.writable {
            tokio::spawn(self.clone().writable_listener(addr));
        }
        Dispatcher::new(self).run(events).await;
        Ok(())
    }

    /// Listens on the writable address while this server is primary.
    async fn writable_listener(self: Arc<Self>, addr: SocketAddr) {
        let mut role = self.role_tx.subscribe();
        loop {
            // Wait to be primary.
            while *role.borrow_and_update() != Role::Primary {
                if role.changed().await.is_err() {
                    return;
                }
            }
            let listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break Some(l),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "cannot listen on the ZEO address yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if *role.borrow() != Role::Primary {
                            break None;
                        }
                    }
                }
            };
            let Some(listener) = listener else { continue };
            tracing::info!(%addr, "primary: ZEO writable address listening");
            let (stop_tx, stop_rx) = watch::channel(false);
            let accept = tokio::spawn(session::accept_loop(
                self.clone(),
                listener,
                true,
                Some(stop_rx),
            ));
            while *role.borrow_and_update() == Role::Primary {
                if role.changed().await.is_err() {
                    break;
                }
            }
            let _ = stop_tx.send(true);
            let _ = accept.await;
            // The address is closed first (the accept task owned the listener), and only
            // then the writable connections: a client that reconnects at once is refused
            // and keeps polling. Accepted and then dropped before `register`, a stock client
            // would stop trying this address while any other one is still polled.
            let n = {
                let sh = self.lock();
                let mut n = 0;
                for c in sh.conns.values().filter(|c| c.writable) {
                    c.close();
                    n += 1;
                }
                n
            };
            tracing::info!(%addr, connections = n, "no longer primary: ZEO writable address closed, then its connections");
        }
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.lock().role = role;
        if self.role_tx.send_replace(role) != role {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts role changes: an oid block taken in an older generation is not used again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A new connection's number and client id.
    pub(crate) fn next_connection(&self) -> (u64, u64) {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        (n, self.client_base | (n % 0xffff_fff0))
    }

    /// Adds a connection's output (not registered yet).
    pub(crate) fn add_conn(
        &self,
        n: u64,
        client: u64,
        writable: bool,
        tx: mpsc::UnboundedSender<bytes::Bytes>,
        queued: Arc<AtomicU64>,
        closed: watch::Sender<bool>,
    ) {
        let mut sh = self.lock();
        sh.conns.insert(
            n,
            ConnOut {
                tx,
                queued,
                closed,
                sent: Tid::ZERO,
                registered: false,
                writable,
                client,
                finishing: None,
                max_queued: self.opts.max_queued as u64,
            },
        );
    }

    pub(crate) fn remove_conn(&self, n: u64) {
        self.lock().conns.remove(&n);
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the face's counters (`standby_zeo_*`, unlabelled) in `reg`.
    pub fn register_metrics(&self, reg: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        let s = &self.stats;
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let c = Counter::<u64>::default();
            c.inc_by(v.load(Ordering::Relaxed));
            reg.register(name, help, c);
        };
        counter(
            "zeo_connections",
            "ZEO connections accepted",
            &s.connections,
        );
        counter("zeo_commits", "ZEO transactions committed", &s.commits);
        counter(
            "zeo_conflicts",
            "ZEO conflicts sent back for resolution",
            &s.conflicts,
        );
        counter(
            "zeo_bad_input",
            "ZEO connections closed for bad input",
            &s.bad_input,
        );
        counter(
            "zeo_stranded",
            "ZEO clients whose cache is newer than every server",
            &s.stranded,
        );
        counter(
            "zeo_finish_samples",
            "tpc_finish calls answered with a tid",
            &s.finishes,
        );
        counter(
            "zeo_finish_microseconds",
            "Sum over them of the time from the call taken up to the reply queued",
            &s.finish_us,
        );
        counter(
            "zeo_finish_commit_microseconds",
            "The part of it up to the replicated commit answered",
            &s.finish_commit_us,
        );
        let open = Gauge::<i64>::default();
        open.set(i64::try_from(s.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        reg.register("zeo_open", "ZEO connections open", open);
    }

    /// The face's metrics alone, as exposition text (for tests and tools).
    pub fn metrics(&self) -> String {
        let mut reg = prometheus_client::registry::Registry::with_prefix("standby");
        self.register_metrics(&mut reg);
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &reg) {
            Ok(()) => out,
            Err(_) => String::new(),
        }
    }
}

/// Objects no ZEO client may see or write: the replica's (lineage, client records) and the
/// shell's (membership, oid high-water mark, pack orders, undo backpointers). ZODB oids are
/// 8 bytes and never reach the reserved first byte in practice.
pub(crate) use replica::is_reserved as is_shell_or_replica;

fn now_micros() -> u64 {
    (tid::wall_clock_nanos() / 1000) as u64
}

/// The oids a ZODB record (two pickles) refers to, as pack follows them (see the `pickle`
/// module); an error for a record it cannot read. Public for the fuzz targets.
pub fn record_references(record: &[u8]) -> Result<Vec<[u8; 8]>, String> {
    pickle::references(record).map_err(|e| e.to_string())
}
