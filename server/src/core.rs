//! `ServerCore`: one storage server as a single sans-IO state machine, the gcs `Node` and the
//! `Replica` wired together, so that the gcs tokio driver (`gcs::net::driver::run`) can run it
//! unchanged. The node's datagrams of an input leave first; then the replica sees that input's
//! views and deliveries in the order the node produced them, and its multicasts enter the
//! node's send queue at once (the simulator feeds the replica in the same order).

use crate::checkpoint::{self, CkptMsg, Incoming, Outgoing};
use crate::membership::{Configured, Membership, MembershipChange};
use bytes::Bytes;
use gcs::net::driver::{Core, CoreOutput};
use gcs::{Node, Output, Service, SubmitError, Time};
use replica::{
    CommitError, CommitRequest, Committed, Invalidation, LostReport, Replica, ReqId, Role,
    RoleInfo, ServerId, Staleness, SwapError,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use storage::{Oid, Revision, Storage, StorageError};

use tokio::sync::oneshot;

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

pub(crate) fn read_store<S: Storage + ?Sized>(
    store: &S,
    op: ReadOp,
) -> Result<ReadAnswer, StorageError> {
    Ok(match op {
        ReadOp::Load(oid) => ReadAnswer::Revision(store.load(&oid)?),
        ReadOp::LoadBefore(oid, tid) => ReadAnswer::Revision(store.load_before(&oid, tid)?),
        ReadOp::History(oid, n) => {
            ReadAnswer::Revisions(store.history(&oid, n.min(10_000) as usize)?)
        }
        ReadOp::Last => ReadAnswer::Last,
        ReadOp::Iterate { start, stop, max } => {
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

/// Why a read was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The store is between two consistent states (an object recovery is open).
    #[error("recovering: reads resume when the store is consistent again")]
    Recovering,
    /// The store failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// A snapshot of a server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Its id.
    pub id: ServerId,
    /// Its staleness (role, last tid, newest tid known, last commit time).
    pub staleness: Staleness,
    /// The working primary and its epoch, if known.
    pub primary: Option<(ServerId, replica::Epoch)>,
    /// Its durable promise.
    pub promised: replica::Epoch,
    /// Counters.
    pub stats: replica::ReplicaStats,
    /// Members of its current gcs view.
    pub view: Vec<ServerId>,
    /// Its gcs daemon's counters (retransmissions, refused datagrams, ...).
    pub gcs: gcs::Stats,
    /// Time since it last applied a transaction (`None`: none since it started).
    pub since_last_commit: Option<std::time::Duration>,
    /// Why its store failed, if it did: it has then left the ring (see
    /// [`ServerCore`]'s docs) and serves nothing.
    pub down_reason: Option<String>,
}

/// What the server tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The role changed (the replica's role, as elected).
    Role(RoleInfo),
    /// What a primary may claim to be changed without its role changing: `Syncing` with no
    /// primary when it has not had the token within the lease, `Primary` again once the token
    /// went round (see `ServerCore::check_claim`). For those who route clients by it (the
    /// client port's role pushes); the ZEO face follows the elected role.
    Claim(RoleInfo),
    /// A transaction was applied here: connected clients drop these objects.
    Invalidate(Invalidation),
    /// Primary only: every transaction up to this tid is durable as the mode promises
    /// (see `replica::Output::Durable`).
    Durable(storage::Tid),
    /// Transactions were moved to a lost archive: clients flush these objects.
    Lost(LostReport),
    /// The store needs a checkpoint from `donor` (see `replica::Output::NeedCheckpoint`).
    NeedCheckpoint {
        /// The server to copy from.
        donor: ServerId,
    },
    /// The cluster's added and removed servers, at start and after every change.
    Membership(Membership),
}

/// Opens a store directory (checkpoints are opened with it).
pub type OpenStore<S> = Box<dyn Fn(&Path) -> Result<S, StorageError> + Send>;

/// A node output held back for the replica (see `ServerCore::feed_replica`).
enum ForReplica {
    Deliver(gcs::Delivery),
    View(gcs::View),
}

/// What a server needs to send and receive checkpoints: its data directory (see
/// [`checkpoint::current_store_dir`]) and how to open a store.
pub struct CheckpointSupport<S> {
    /// The data directory.
    pub data: PathBuf,
    /// Opens a store directory.
    pub open: OpenStore<S>,
}

/// The store's read handle ([`Storage::read_handle`]) for readers outside the server's task,
/// while the replica says reads are served. The core replaces the handle when a checkpoint
/// replaces the store, and updates the flag after every input.
#[derive(Default)]
pub struct DirectReads {
    store: RwLock<Option<Arc<dyn Storage>>>,
    readable: AtomicBool,
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

    fn set_store(&self, store: Option<Arc<dyn Storage>>) {
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = store;
    }
}

/// One storage server: a gcs node and a replica over store `S`.
pub struct ServerCore<S: Storage + 'static> {
    direct: Arc<DirectReads>,
    ckpt: Option<CheckpointSupport<S>>,
    outgoing: Option<(Outgoing, Option<CkptMsg>)>,
    incoming: Option<Incoming>,
    next_ckpt_id: u64,
    node: Node,
    replica: Replica<S>,
    waiting: BTreeMap<ReqId, oneshot::Sender<Result<Committed, CommitError>>>,
    next_req: u64,
    /// Replica multicasts the node's send queue had no room for yet.
    unsent: VecDeque<(Service, Bytes)>,
    view: Vec<ServerId>,
    out: VecDeque<CoreOutput<ServerEvent>>,
    /// Node deliveries and views not yet given to the replica (see [`Self::feed_replica`]).
    for_replica: VecDeque<ForReplica>,
    /// The time of the input being handled.
    now: Time,
    /// The configured servers, and the membership last read from the store (`None`: not yet
    /// announced to the driver and the application).
    configured: Configured,
    membership: Option<Membership>,
    /// The store failed: the node is no longer fed, so the others see this server leave.
    left_ring: bool,
    /// How long a primary goes on claiming to be primary without having the token (half the
    /// token timeout; see [`Self::check_claim`]).
    lease: std::time::Duration,
    /// The primary stopped claiming: the node's token-visit count then. It claims again after
    /// two more visits, or when a new view elects it.
    lapsed: Option<u64>,
    /// The last token visit at which this server knew it was current (see
    /// [`Self::staleness`]).
    current_at: Option<Time>,
}

impl<S: Storage + 'static> ServerCore<S> {
    /// Wires `node` and `replica` together.
    pub fn new(
        node: Node,
        replica: Replica<S>,
        ckpt: Option<CheckpointSupport<S>>,
        configured: Configured,
    ) -> ServerCore<S> {
        // Transfer ids unique across this server's runs: its incarnation, then a counter.
        let next_ckpt_id = node.id().incarnation << 8;
        let direct = Arc::new(DirectReads::default());
        direct.set_store(replica.store().read_handle());
        direct.readable.store(replica.readable(), Ordering::Release);
        let mut core = ServerCore {
            direct,
            ckpt,
            outgoing: None,
            incoming: None,
            next_ckpt_id,
            node,
            replica,
            waiting: BTreeMap::new(),
            next_req: 1,
            unsent: VecDeque::new(),
            view: Vec::new(),
            out: VecDeque::new(),
            for_replica: VecDeque::new(),
            now: Time::ZERO,
            configured,
            membership: None,
            left_ring: false,
            lease: std::time::Duration::ZERO,
            lapsed: None,
            current_at: None,
        };
        core.lease = core.node.config().token_timeout / 2;
        // The address book and topology the store holds, before the first datagram.
        core.reload_membership();
        core
    }

    /// Reads the membership object; on a change, gives the driver the new address book and
    /// the application the new membership.
    fn reload_membership(&mut self) {
        let stored = match self.replica.store().load(&replica::membership_oid()) {
            Ok(r) => r.and_then(|r| r.data),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the membership object");
                return;
            }
        };
        let m = match Membership::decode(stored.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                // Keep the last good one: a bad object must not empty the address book.
                tracing::error!(error = %e, "membership object ignored");
                return;
            }
        };
        if self.membership.as_ref() == Some(&m) {
            return;
        }
        let me = self.replica.id();
        if m.is_removed(me) {
            tracing::error!(
                server = me,
                "this server was removed from the cluster: the others ignore it"
            );
        }
        tracing::info!(server = me, added = ?m.added.iter().map(|a| a.id).collect::<Vec<_>>(), removed = ?m.removed, "membership");
        let added: Vec<(ServerId, String)> =
            m.added.iter().map(|a| (a.id, a.name.clone())).collect();
        self.replica.set_read_replicas(&added, &m.removed);
        self.out
            .push_back(CoreOutput::Peers(m.peers(&self.configured)));
        self.out
            .push_back(CoreOutput::Event(ServerEvent::Membership(m.clone())));
        self.membership = Some(m);
    }

    /// New addresses for configured servers: the address book follows at once.
    fn readdress(&mut self, daemons: &[(ServerId, std::net::SocketAddr)]) {
        let mut changed = false;
        for (id, addr) in daemons {
            if let Some(d) = self.configured.daemons.iter_mut().find(|d| d.0 == *id) {
                if d.1 != *addr {
                    tracing::info!(server = id, old = %d.1, new = %addr, "server address changed");
                    d.1 = *addr;
                    changed = true;
                }
            }
        }
        if changed {
            if let Some(m) = &self.membership {
                self.out
                    .push_back(CoreOutput::Peers(m.peers(&self.configured)));
            }
        }
    }

    /// Turns a membership change into a commit of the membership object, checked against the
    /// object as this server has it; the replica's conflict check (`expected_serial`) refuses
    /// it if another change committed meanwhile.
    fn change_membership(
        &mut self,
        now: Time,
        id: ReqId,
        client: u64,
        request: u64,
        change: MembershipChange,
    ) {
        if self.replica.role() != Role::Primary {
            // Not validated here against a possibly stale copy: the client goes to the primary.
            let primary = self.replica.primary().map(|(p, _)| p);
            return self.answer(id, Err(CommitError::NotPrimary { primary }));
        }
        let current = match self.replica.store().load(&replica::membership_oid()) {
            Ok(r) => r,
            Err(e) => return self.answer(id, Err(CommitError::Down(e.to_string()))),
        };
        let serial = current.as_ref().map_or(storage::Tid::ZERO, |r| r.tid);
        let next = Membership::decode(current.as_ref().and_then(|r| r.data.as_deref()))
            .and_then(|m| m.apply(&change, &self.configured));
        let next = match next {
            Ok(m) => m,
            Err(e) => return self.answer(id, Err(CommitError::Invalid(e.to_string()))),
        };
        let description = match &change {
            MembershipChange::Add(s) => format!("add replica {} ({})", s.id, s.name),
            MembershipChange::Remove(s) => format!("remove replica {s}"),
        };
        tracing::info!(server = self.replica.id(), %description, "membership change asked");
        let c = CommitRequest {
            client,
            request,
            meta: storage::TxnMeta {
                user: Bytes::from_static(b"standby"),
                description: Bytes::from(description),
                extension: Bytes::new(),
                time: 0,
            },
            records: vec![storage::Record {
                oid: replica::membership_oid(),
                data: Some(next.encode()),
                expected_serial: Some(serial),
            }],
            tid: replica::TidChoice::Next,
        };
        self.replica.handle_commit(now, id, c);
    }

    fn answer(&mut self, id: ReqId, mut r: Result<Committed, CommitError>) {
        if let Err(CommitError::NotPrimary { primary }) = &mut r {
            // A redirect to a primary this server cannot vouch for sends the client back to a
            // server that may be frozen or cut off, for a whole attempt's patience.
            if !self.token_recent(self.now) {
                *primary = None;
            }
        }
        if let Some(tx) = self.waiting.remove(&id) {
            let _ = tx.send(r);
        }
    }

    /// The replica (for status and tests).
    pub fn replica(&self) -> &Replica<S> {
        &self.replica
    }

    fn status(&self, now: Time) -> ServerStatus {
        let staleness = self.staleness(now);
        let mut primary = self.replica.primary();
        if !self.token_recent(now) {
            // Without the token lately, this server cannot vouch for who the primary is (the
            // ring may be re-forming without it): clients then look elsewhere at once instead
            // of waiting on a primary that may be gone.
            primary = None;
        }
        ServerStatus {
            id: self.replica.id(),
            staleness,
            primary,
            promised: self.replica.promised(),
            stats: self.replica.stats(),
            view: self.view.clone(),
            gcs: self.node.stats().clone(),
            since_last_commit: self
                .replica
                .staleness()
                .last_commit_at
                .map(|t| now.since(t)),
            down_reason: self.replica.down_reason().map(str::to_string),
        }
    }

    /// After an input: the replica's answers to a request, then the node's outputs. The
    /// node's datagrams (the token above all) go to the driver before the replica sees the
    /// deliveries and views of the same input (see [`Self::feed_replica`]).
    fn pump(&mut self, now: Time) {
        self.now = now;
        self.drain_replica(now);
        self.take_node_outputs();
        self.check_claim(now);
        self.direct
            .readable
            .store(self.replica.readable(), Ordering::Release);
    }

    /// The read handle for readers outside the server's task.
    pub fn direct_reads(&self) -> Arc<DirectReads> {
        self.direct.clone()
    }

    fn take_node_outputs(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Transmit { dest, bytes } => {
                    self.out.push_back(CoreOutput::Transmit { dest, bytes })
                }
                // A server that left the ring takes nothing more from it.
                Output::Deliver(_) | Output::View(_) if self.left_ring => {}
                Output::Deliver(d) => self.for_replica.push_back(ForReplica::Deliver(d)),
                Output::View(v) => self.for_replica.push_back(ForReplica::View(v)),
            }
        }
    }

    /// Hands the deliveries and views held back to the replica, once the driver has sent the
    /// datagrams of the same input. Why held back: applying the delivered commits costs a
    /// store write and an fsync, and a token that waited for them would make every server's
    /// write a step of the ring's rotation; sent first, the token moves on while this server
    /// writes. All of one input's deliveries reach the replica before it is polled, so the
    /// commits they carry are applied as one batch (one fsync); the replica itself applies what
    /// it queued before anything that depends on it (a view, another kind of message). Order
    /// is kept: the replica sees views and deliveries exactly as the node produced them.
    fn feed_replica(&mut self) {
        let now = self.now;
        while let Some(o) = self.for_replica.pop_front() {
            match o {
                ForReplica::Deliver(d) => {
                    if d.payload.first() == Some(&checkpoint::TAG) {
                        self.on_checkpoint_msg(now, d.sender.node, &d.payload);
                    } else {
                        self.replica.handle_delivery(now, d.sender, &d.payload)
                    }
                }
                ForReplica::View(v) => {
                    let mut reclaim = false;
                    if v.kind() == gcs::ViewKind::Regular {
                        if self.lapsed.take().is_some() {
                            reclaim = true;
                            // Installed with the others: whatever it is now, the new view's
                            // election says so.
                            tracing::info!(
                                server = self.replica.id(),
                                "a new view: the claim follows its election"
                            );
                        }
                        self.view = v.members.iter().map(|p| p.node).collect();
                        self.abandon_transfers_outside_view();
                        tracing::info!(server = self.replica.id(), view = ?v.id, members = ?self.view, "view");
                    }
                    self.replica.handle_view(now, &v);
                    if reclaim && self.replica.role() == Role::Primary {
                        self.push_claim();
                    }
                }
            }
        }
        self.drain_replica(now);
        self.take_node_outputs();
    }

    fn send(&mut self, now: Time, service: Service, payload: Bytes) {
        if !self.unsent.is_empty() {
            self.unsent.push_back((service, payload));
            return;
        }
        match self.node.multicast(now, service, payload.clone()) {
            Ok(()) => {}
            Err(SubmitError::QueueFull { .. }) => self.unsent.push_back((service, payload)),
            Err(e) => tracing::error!(error = %e, "replica message refused by the node"),
        }
    }

    fn retry_unsent(&mut self, now: Time) {
        while let Some((service, payload)) = self.unsent.pop_front() {
            match self.node.multicast(now, service, payload.clone()) {
                Ok(()) => {}
                Err(SubmitError::QueueFull { .. }) => {
                    self.unsent.push_front((service, payload));
                    return;
                }
                Err(e) => tracing::error!(error = %e, "replica message refused by the node"),
            }
        }
    }

    fn drain_replica(&mut self, now: Time) {
        self.retry_unsent(now);
        while let Some(o) = self.replica.poll_output() {
            match o {
                replica::Output::Multicast { service, payload } => self.send(now, service, payload),
                replica::Output::Reply { req, result } => self.answer(req, result),
                replica::Output::Role(r) => {
                    if r.role == Role::Down {
                        self.leave_ring();
                    }
                    self.out.push_back(CoreOutput::Event(ServerEvent::Role(r)));
                    if r.role == Role::Primary && self.lapsed.is_some() {
                        // Not claimed until the token went round again (`check_claim`).
                        self.push_claim();
                    }
                }
                replica::Output::Invalidate(i) => self
                    .out
                    .push_back(CoreOutput::Event(ServerEvent::Invalidate(i))),
                replica::Output::Durable(t) => self
                    .out
                    .push_back(CoreOutput::Event(ServerEvent::Durable(t))),
                replica::Output::Lost(l) => {
                    self.out.push_back(CoreOutput::Event(ServerEvent::Lost(l)))
                }
                replica::Output::NeedCheckpoint { donor } => {
                    self.out
                        .push_back(CoreOutput::Event(ServerEvent::NeedCheckpoint { donor }));
                    self.ask_checkpoint(now, donor);
                }
                replica::Output::MembershipChanged => self.reload_membership(),
                replica::Output::Direct { to, payload } => {
                    self.out.push_back(CoreOutput::Transmit {
                        dest: gcs::Dest::Node(to),
                        bytes: payload,
                    })
                }
            }
        }
        self.feed_outgoing(now);
    }

    /// The store failed. A member that stays in the ring with a failed store freezes the
    /// cluster: as primary it can no longer commit, yet the others keep naming it; as a backup
    /// it blocks every election that waits for its state. So the node is fed nothing more
    /// (no datagram, no timer): to the others this server is gone, they install a view
    /// without it after their token timeout and elect among themselves. What the process
    /// does next is the shell's choice (`standby-server` exits so that its supervisor
    /// restarts it on a fresh open of the store).
    fn leave_ring(&mut self) {
        if self.left_ring {
            return;
        }
        self.left_ring = true;
        tracing::error!(
            server = self.replica.id(),
            reason = self.replica.down_reason().unwrap_or("unknown"),
            "store failed: this server leaves the ring"
        );
        self.for_replica.clear();
        self.unsent.clear();
        if let Some((o, _)) = self.outgoing.take() {
            o.finish();
        }
        self.incoming = None;
    }

    /// Whether the replica receives every commit as it is made: in a primary component, not
    /// read-only nor down (it may still be applying or catching up: its lag in transactions
    /// says how far).
    fn replica_current(&self) -> bool {
        let st = self.replica.staleness();
        st.in_primary_component && !matches!(st.role, Role::ReadOnly | Role::Down)
    }

    /// Notes, at every input, the last token visit at which this server was current.
    fn observe_currency(&mut self, now: Time) {
        // A view the replica has not seen yet means the token visits are the new ring's, not
        // those of the view the replica's role belongs to.
        let view_pending = self
            .for_replica
            .iter()
            .any(|o| matches!(o, ForReplica::View(_)));
        if !view_pending && self.replica_current() && self.token_recent(now) {
            self.current_at = self.node.last_token_visit().map(|(t, _)| t);
        }
    }

    /// The replica's staleness with what only the server knows: the role it may claim, and
    /// how long it may have been missing commits. While it is current and the ring alive that
    /// is zero; a server cut off from the primary learns it only at the next view (a token
    /// timeout and a membership round later), so the time counts from the last token visit
    /// at which it was current, not from that view.
    fn staleness(&self, now: Time) -> Staleness {
        let mut st = self.replica.staleness();
        if self.lapsed.is_some() {
            st.role = Role::Syncing;
        }
        st.behind_for = if self.replica_current() && self.token_recent(now) {
            Some(std::time::Duration::ZERO)
        } else {
            self.current_at.map(|t| now.since(t))
        };
        st
    }

    /// Whether a primary may go on claiming to be primary: its node is operational and had the
    /// token within the lease.
    fn token_recent(&self, now: Time) -> bool {
        self.node.phase() == gcs::Phase::Operational
            && self
                .node
                .last_token_visit()
                .is_some_and(|(t, _)| now.since(t) <= self.lease)
    }

    /// A primary stops claiming to be primary (the `/primary` probe, the status clients read,
    /// the role pushed to them) as soon as it cannot be sure it still is: when it has not had
    /// the token for half the token timeout. The others need a whole token timeout, then a
    /// membership round, to elect another primary, so the two claims never overlap. A frozen
    /// server (SIGSTOP, a VM stall) finds this out at its first input after resuming, before
    /// the node reads any datagram: a token from its socket backlog may be one the others
    /// have given up on, so it claims again only after two more token visits (the token went
    /// round the whole ring since) or when a new view elects it.
    fn check_claim(&mut self, now: Time) {
        self.observe_currency(now);
        if self.left_ring || self.replica.role() != Role::Primary {
            self.lapsed = None;
            return;
        }
        let visits = self.node.last_token_visit().map_or(0, |(_, n)| n);
        match self.lapsed {
            None if !self.token_recent(now) => {
                self.lapsed = Some(visits);
                tracing::warn!(
                    server = self.replica.id(),
                    lease = ?self.lease,
                    "no token within the lease: no longer claiming to be primary"
                );
                self.push_claim();
            }
            Some(at) if visits >= at + 2 && self.token_recent(now) => {
                self.lapsed = None;
                tracing::info!(
                    server = self.replica.id(),
                    "the token went round again: claiming to be primary again"
                );
                self.push_claim();
            }
            _ => {}
        }
    }

    /// Tells the application the role it may claim now.
    fn push_claim(&mut self) {
        let mut info = replica::RoleInfo {
            role: Role::Primary,
            primary: self.replica.primary(),
            in_primary_component: self.replica.staleness().in_primary_component,
            promised: self.replica.promised(),
        };
        if self.lapsed.is_some() {
            info.role = Role::Syncing;
            info.primary = None;
        }
        self.out
            .push_back(CoreOutput::Event(ServerEvent::Claim(info)));
    }

    // ---- checkpoint transfer (see `checkpoint.rs`) ----------------------------------------

    fn ask_checkpoint(&mut self, now: Time, donor: ServerId) {
        let Some(ck) = self.ckpt.as_ref() else {
            tracing::error!(
                server = self.replica.id(),
                "a checkpoint is needed but this server has no data directory"
            );
            return;
        };
        if self.incoming.is_some() {
            return;
        }
        let id = self.next_ckpt_id;
        self.next_ckpt_id += 1;
        match Incoming::start(&ck.data, donor, id) {
            Ok(inc) => {
                tracing::info!(
                    server = self.replica.id(),
                    donor,
                    id,
                    "asking for a checkpoint"
                );
                self.incoming = Some(inc);
                let m = CkptMsg::Request {
                    from: self.replica.id(),
                    donor,
                    id,
                };
                self.send(now, Service::Agreed, m.encode());
            }
            Err(e) => tracing::error!(error = %e, "cannot create the checkpoint side directory"),
        }
    }

    fn abandon_transfers_outside_view(&mut self) {
        if self
            .outgoing
            .as_ref()
            .is_some_and(|(o, _)| !self.view.contains(&o.to))
        {
            if let Some((o, _)) = self.outgoing.take() {
                tracing::warn!(to = o.to, "checkpoint recipient left: transfer abandoned");
                o.finish();
            }
        }
        if self
            .incoming
            .as_ref()
            .is_some_and(|i| !self.view.contains(&i.donor))
        {
            tracing::warn!("checkpoint donor left: transfer abandoned");
            self.incoming = None;
        }
    }

    /// Queues checkpoint chunks while the node's send queue has room: one chunk is read ahead
    /// at most, so a large checkpoint never sits in memory.
    fn feed_outgoing(&mut self, now: Time) {
        loop {
            let Some((job, pending)) = self.outgoing.as_mut() else {
                return;
            };
            let msg = match pending.take() {
                Some(m) => m,
                None => match job.next_msg() {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        let (to, id) = (job.to, job.id);
                        tracing::error!(error = %e, "checkpoint read failed");
                        if let Some((o, _)) = self.outgoing.take() {
                            o.finish();
                        }
                        let f = CkptMsg::Failed { to, id, reason: e };
                        self.send(now, Service::Agreed, f.encode());
                        return;
                    }
                    None => {
                        if let Some((o, _)) = self.outgoing.take() {
                            tracing::info!(to = o.to, "checkpoint sent");
                            o.finish();
                        }
                        return;
                    }
                },
            };
            if !self.unsent.is_empty() {
                if let Some((_, p)) = self.outgoing.as_mut() {
                    *p = Some(msg);
                }
                return;
            }
            match self.node.multicast(now, Service::Agreed, msg.encode()) {
                Ok(()) => {}
                Err(SubmitError::QueueFull { .. }) => {
                    if let Some((_, p)) = self.outgoing.as_mut() {
                        *p = Some(msg);
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "checkpoint chunk refused");
                    return;
                }
            }
        }
    }

    /// A checkpoint message `sender` multicast. Requests count only from the server they name,
    /// and a transfer's chunks and end only from its donor: another member cannot feed a
    /// recovering server files of its own.
    fn on_checkpoint_msg(&mut self, now: Time, sender: ServerId, payload: &[u8]) {
        let me = self.replica.id();
        let Some(m) = CkptMsg::decode(payload) else {
            tracing::debug!("malformed checkpoint message dropped");
            return;
        };
        let from_donor = self.incoming.as_ref().is_some_and(|i| i.donor == sender);
        match m {
            CkptMsg::Request { from, donor, id } if donor == me && from == sender => {
                let r = match (self.ckpt.as_ref(), self.outgoing.is_some()) {
                    (_, true) => Err("a transfer is already under way".to_string()),
                    (None, _) => Err("the donor has no data directory".to_string()),
                    (Some(ck), false) => Outgoing::start(
                        self.replica.store(),
                        ck.data.join(format!("outgoing-{id}")),
                        from,
                        id,
                    ),
                };
                match r {
                    Ok(job) => {
                        tracing::info!(to = from, id, "sending a checkpoint");
                        self.outgoing = Some((job, None));
                        self.feed_outgoing(now);
                    }
                    Err(reason) => {
                        let f = CkptMsg::Failed {
                            to: from,
                            id,
                            reason,
                        };
                        self.send(now, Service::Agreed, f.encode());
                    }
                }
            }
            CkptMsg::Chunk {
                to,
                id,
                name,
                offset,
                data,
            } if to == me && from_donor => {
                let Some(inc) = self.incoming.as_mut().filter(|i| i.id == id) else {
                    return;
                };
                if let Err(e) = inc.chunk(&name, offset, &data) {
                    tracing::error!(error = %e, "cannot write checkpoint chunk: abandoned");
                    self.incoming = None;
                }
            }
            CkptMsg::Done { to, id, tid, files }
                if to == me && from_donor && self.incoming.as_ref().is_some_and(|i| i.id == id) =>
            {
                let inc = self.incoming.take().expect("checked");
                if let Err(e) = self.install(inc, tid, &files) {
                    tracing::error!(error = %e, "checkpoint refused");
                }
            }
            CkptMsg::Failed { to, id, reason }
                if to == me && from_donor && self.incoming.as_ref().is_some_and(|i| i.id == id) =>
            {
                tracing::error!(%reason, "the donor could not send a checkpoint");
                self.incoming = None;
            }
            _ => {}
        }
    }

    /// Verifies the side directory, moves it into place, opens it and hands it to the replica.
    fn install(
        &mut self,
        inc: Incoming,
        tid: storage::Tid,
        files: &[(String, u64, u32)],
    ) -> Result<(), String> {
        let ck = self.ckpt.as_ref().ok_or("no data directory")?;
        inc.verify(files)?;
        {
            // Opened in the side directory only to check it, then closed again.
            let probe = (ck.open)(&inc.dir).map_err(|e| e.to_string())?;
            let last = probe.last_transaction().map_err(|e| e.to_string())?;
            if last != tid {
                return Err(format!("checkpoint holds {last}, announced {tid}"));
            }
        }
        let (new_dir, old_dir) =
            checkpoint::promote(&ck.data, &inc.dir).map_err(|e| e.to_string())?;
        let store = (ck.open)(&new_dir).map_err(|e| e.to_string())?;
        tracing::info!(
            server = self.replica.id(),
            %tid,
            dir = %new_dir.display(),
            bytes = inc.received,
            "checkpoint installed"
        );
        // Direct readers let go of the old store first: the replica drops (closes) it here,
        // and only then is its directory moved.
        self.direct.readable.store(false, Ordering::Release);
        self.direct.set_store(None);
        self.replica
            .install_checkpoint(store)
            .map_err(|e| e.to_string())?;
        self.direct.set_store(self.replica.store().read_handle());
        checkpoint::retire(&ck.data, &old_dir);
        Ok(())
    }
}

impl<S: Storage + 'static> Drop for ServerCore<S> {
    fn drop(&mut self) {
        // A stopped or killed server closes its store: no direct reader keeps it open (a
        // restart in the same process opens the same directory).
        self.direct.readable.store(false, Ordering::Release);
        self.direct.set_store(None);
    }
}

impl<S: Storage + 'static> Core for ServerCore<S> {
    type Request = ServerRequest;
    type Event = ServerEvent;

    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        if self.left_ring {
            return;
        }
        self.check_claim(now);
        if Replica::<S>::is_direct(&bytes) {
            self.replica.handle_direct(now, &bytes);
        } else {
            self.node.handle_packet(now, bytes);
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.left_ring {
            return;
        }
        self.check_claim(now);
        self.node.handle_timeout(now);
        self.pump(now);
    }

    fn handle_request(&mut self, now: Time, req: ServerRequest) -> Option<ServerRequest> {
        self.now = now;
        self.check_claim(now);
        match req {
            ServerRequest::Commit { c, reply } => {
                let id = ReqId(self.next_req);
                self.next_req += 1;
                self.waiting.insert(id, reply);
                self.replica.handle_commit(now, id, c);
            }
            ServerRequest::Swap { to, reply } => {
                let _ = reply.send(self.replica.request_swap(now, to));
            }
            ServerRequest::Inspect(Inspect(f)) => {
                if self.replica.readable() {
                    f(Ok((
                        self.replica.store() as &dyn Storage,
                        self.staleness(now),
                    )))
                } else {
                    f(Err(ReadError::Recovering))
                }
            }
            ServerRequest::Status { reply } => {
                let _ = reply.send(self.status(now));
            }
            ServerRequest::Readdress { daemons } => self.readdress(&daemons),
            ServerRequest::ChangeMembership {
                client,
                request,
                change,
                reply,
            } => {
                let id = ReqId(self.next_req);
                self.next_req += 1;
                self.waiting.insert(id, reply);
                self.change_membership(now, id, client, request, change);
            }
        }
        self.pump(now);
        None
    }

    fn poll_deadline(&self) -> Option<Time> {
        if self.left_ring {
            return None;
        }
        let node = self.node.poll_deadline();
        // A claiming primary wakes when its lease would run out, to stop claiming on time.
        let lease_end = match (
            self.replica.role(),
            self.lapsed,
            self.node.last_token_visit(),
        ) {
            (Role::Primary, None, Some((t, _))) => {
                Some(t.saturating_add(self.lease + std::time::Duration::from_micros(1)))
            }
            _ => None,
        };
        match (node, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_output(&mut self) -> Option<CoreOutput<ServerEvent>> {
        loop {
            if let Some(o) = self.out.pop_front() {
                return Some(o);
            }
            if self.for_replica.is_empty() {
                return None;
            }
            self.feed_replica();
        }
    }
}
