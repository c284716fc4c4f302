//! `ServerCore`: see the crate docs. The node's datagrams of an input leave first; then the
//! replica sees that input's views and deliveries in the order the node produced them, and its
//! multicasts enter the node's send queue at once.
//!
//! Datagrams first because the token is among them: the next servers take their token hops
//! while this one writes its store, instead of every rotation waiting for a disk. Every
//! delivery of one input reaches the replica before the replica is polled, so the commits of
//! one token visit are applied as one batch (`Storage::apply_batch`: on RocksDB one write batch
//! and one fsync); the replica applies what it queued before handling any view or other
//! message.

use crate::checkpoint::{self, CheckpointCommand, CkptMsg, Manifest};
use crate::envelope::{self, Channel};
use crate::membership::{Configured, Membership, MembershipChange};
use bytes::Bytes;
use gcs::{Node, Service, SubmitError, Time};
use replica::{
    CommitError, CommitRequest, Committed, Invalidation, LostReport, Replica, ReqId, Role,
    RoleInfo, ServerId, Staleness, SwapError,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use storage::Storage;

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
    /// Why its store failed, if it did: it has then left the ring (its node is fed nothing
    /// more, so the others elect without it) and serves nothing.
    pub down_reason: Option<String>,
    /// Who votes, as its store says, and the tid that wrote it (zero: the configuration
    /// file's voters).
    pub voters: (replica::VoterConfig, storage::Tid),
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

/// Why a server could not open its replica (see [`open_replica`]).
#[derive(Debug)]
pub enum OpenError<S> {
    /// The store cannot take a synced write now (a full disk): it is handed back, untouched.
    NotWritable {
        /// The store.
        store: S,
        /// What the check met.
        error: storage::StorageError,
    },
    /// The replica could not read its state from the store.
    Replica(storage::StorageError),
}

/// Opens the replica over `store` as a starting server does, in the server and in the
/// simulator alike. A store that cannot take a synced write is refused first: joining the ring
/// only to fail at the first write would cost the others a view change at every restart. Then
/// the replica reads its state; after a disk loss it does not vote until it has caught up.
pub fn open_replica<S: Storage>(
    cfg: replica::ReplicaConfig,
    id: ServerId,
    store: S,
    after_disk_loss: bool,
) -> Result<Replica<S>, OpenError<S>> {
    if let Err(error) = store.check_writable() {
        return Err(OpenError::NotWritable { store, error });
    }
    let r = if after_disk_loss {
        Replica::after_disk_loss(cfg, id, store)
    } else {
        Replica::new(cfg, id, store)
    };
    r.map_err(OpenError::Replica)
}

/// What the core asks of its shell, in order.
#[derive(Debug)]
pub enum Output {
    /// A datagram to send.
    Transmit {
        /// Where.
        dest: gcs::Dest,
        /// The datagram.
        bytes: Bytes,
    },
    /// The gcs address book changed (a read replica was added or removed, a server moved):
    /// send to `daemons`, refuse datagrams from `removed` (the driver learns the address of a
    /// sender it does not know, unless removed: see `gcs::net::driver`).
    Peers {
        /// The servers and their gcs addresses.
        daemons: Vec<(ServerId, SocketAddr)>,
        /// Servers removed from the cluster.
        removed: Vec<ServerId>,
    },
    /// Something for the application.
    Event(ServerEvent),
    /// The answer to the commit or membership change the shell gave with this id.
    Reply {
        /// The request's id, as the shell gave it.
        id: ReqId,
        /// The answer.
        result: Result<Committed, CommitError>,
    },
    /// File work for a checkpoint transfer (see [`checkpoint`]).
    Checkpoint(CheckpointCommand),
    /// Sync the store off this task (`Storage::sync`, which may serve several of these at
    /// once), then report with [`ServerCore::store_synced`] and the highest id it covered.
    /// Until then what the server applied is visible but not counted as durable.
    SyncStore {
        /// Increases with every request.
        id: u64,
    },
}

/// How a core is set up beyond its node and replica.
#[derive(Clone, Debug, Default)]
pub struct CoreOptions {
    /// The shell executes checkpoint commands (the server has a data directory). Without,
    /// this server neither sends nor receives checkpoints.
    pub checkpoints: bool,
    /// Check the replica's invariants after every input even in a release build (the
    /// simulator does; debug builds always do).
    pub check_invariants: bool,
}

/// A node output held back for the replica (see `ServerCore::feed_replica`).
enum ForReplica {
    Deliver(gcs::Delivery),
    View(gcs::View),
}

/// The donor's side of a checkpoint transfer.
struct Outgoing {
    to: ServerId,
    /// The recipient's process: a restarted recipient (a newer incarnation) knows nothing
    /// of this transfer.
    to_proc: gcs::ProcId,
    id: u64,
    /// The offer went out: the shell serves the files until it reports them sent.
    offered: bool,
}

/// The recipient's side of a checkpoint transfer.
struct Incoming {
    id: u64,
    donor: ServerId,
    /// The donor's process, once known (from the view at the request, else from its offer):
    /// a restarted donor (a newer incarnation) will never serve this transfer.
    donor_proc: Option<gcs::ProcId>,
    /// `Fetch` was asked of the shell, for a checkpoint offered to end at this tid.
    installing: Option<storage::Tid>,
}

/// How long after a failed checkpoint transfer the recipient asks again.
const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// One storage server: a gcs node and a replica over store `S`.
pub struct ServerCore<S: Storage + 'static> {
    opts: CoreOptions,
    outgoing: Option<Outgoing>,
    incoming: Option<Incoming>,
    next_ckpt_id: u64,
    /// A checkpoint transfer that failed (the donor was busy with another or stopped serving
    /// it, the files could not be fetched, checked or installed) is asked again at this time,
    /// from this donor, while the replica still waits for one: the replica sets no timers,
    /// and would otherwise wait for the next view.
    checkpoint_retry: Option<(Time, ServerId)>,
    node: Node,
    replica: Replica<S>,
    /// Replica and checkpoint multicasts the node's send queue had no room for yet.
    unsent: VecDeque<(Service, Bytes)>,
    /// The members of the current regular view, by process (a checkpoint transfer is bound to
    /// its peer's process, see `abandon_transfers_outside_view`).
    view: Vec<gcs::ProcId>,
    out: VecDeque<Output>,
    /// Node deliveries and views not yet given to the replica (see [`Self::feed_replica`]).
    for_replica: VecDeque<ForReplica>,
    /// The time of the input being handled.
    now: Time,
    /// The configured servers, and the membership last read from the store (`None`: not yet
    /// announced to the shell and the application).
    configured: Configured,
    membership: Option<Membership>,
    /// The primary stopped claiming: the node's token-visit count then. It claims again after
    /// two more visits, or when a new view elects it.
    lapsed: Option<u64>,
    /// The last token visit at which this server knew it was current (see
    /// [`Self::staleness`]).
    current_at: Option<Time>,
    /// The membership object it applied names this server removed: it has left the ring
    /// for good (see [`Self::is_removed`]).
    removed: bool,
}

impl<S: Storage + 'static> ServerCore<S> {
    /// Wires `node` and `replica` together.
    pub fn new(
        node: Node,
        replica: Replica<S>,
        configured: Configured,
        opts: CoreOptions,
    ) -> ServerCore<S> {
        // Transfer ids unique across this server's runs: its incarnation, then a counter.
        let next_ckpt_id = node.id().incarnation << 8;
        let mut core = ServerCore {
            opts,
            outgoing: None,
            incoming: None,
            next_ckpt_id,
            checkpoint_retry: None,
            node,
            replica,
            unsent: VecDeque::new(),
            view: Vec::new(),
            out: VecDeque::new(),
            for_replica: VecDeque::new(),
            now: Time::ZERO,
            configured,
            membership: None,
            lapsed: None,
            current_at: None,
            removed: false,
        };
        // The address book and topology the store holds, before the first datagram.
        core.reload_membership();
        core
    }

    /// The store failed, or this server was removed from the cluster: the node is no longer
    /// fed, so the others see this server leave. (A replica that went `Down` stays down: the
    /// process starts over on a fresh open; a removed server never comes back.)
    fn left_ring(&self) -> bool {
        self.removed || self.replica.role() == Role::Down
    }

    /// Whether this server was removed from the cluster (`standby remove-replica`): once its
    /// store holds a membership object naming it removed, it takes no more part in the ring
    /// (no datagram, no timer), reads as `Down` with the reason in [`ServerStatus`], and its
    /// shell should stop (`standby-server` exits). The others refuse it anyway; a removed
    /// server that stayed up would be heard by a server whose address book missed the
    /// removal, and keep it out of the others' ring (see `gcs::Node::set_removed`).
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Why a removed server is down.
    const REMOVED: &'static str =
        "this server was removed from the cluster (standby remove-replica): it no longer takes part";

    /// How long a primary goes on claiming to be primary without having the token: half the
    /// token timeout (see [`Self::check_claim`]).
    fn lease(&self) -> std::time::Duration {
        self.node.config().token_timeout / 2
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A datagram arrived: a gcs packet or a replica's direct message.
    pub fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        if self.left_ring() {
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

    /// The deadline of [`Self::poll_deadline`] passed.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.left_ring() {
            return;
        }
        self.check_claim(now);
        if let Some((at, donor)) = self.checkpoint_retry {
            if at <= now {
                self.checkpoint_retry = None;
                // Still waiting for a checkpoint (no other transfer open, still recovering).
                if self.incoming.is_none() && self.replica.role() == Role::Syncing {
                    self.ask_checkpoint(now, donor);
                }
            }
        }
        self.node.handle_timeout(now);
        self.pump(now);
    }

    /// A commit; answered by [`Output::Reply`] with `id` (unique among the requests open).
    pub fn commit(&mut self, now: Time, id: ReqId, c: CommitRequest) {
        self.begin(now);
        self.replica.handle_commit(now, id, c);
        self.pump(now);
    }

    /// A membership change (see [`crate::membership`]): committed like a write, answered by
    /// [`Output::Reply`] with `id`.
    pub fn membership_change(
        &mut self,
        now: Time,
        id: ReqId,
        client: u64,
        request: u64,
        change: MembershipChange,
    ) {
        self.begin(now);
        self.change_membership(now, id, client, request, change);
        self.pump(now);
    }

    /// A change of who votes (see [`replica::voters`]): new voters must have joined (added
    /// as replicas) and catch up as learners first; answered by [`Output::Reply`] with `id`
    /// once the new voters are durable on a majority of them.
    pub fn voter_change(
        &mut self,
        now: Time,
        id: ReqId,
        add: &[(ServerId, u32)],
        remove: &[ServerId],
    ) {
        self.begin(now);
        self.replica.handle_voter_change(now, id, add, remove);
        self.pump(now);
    }

    /// Asks for a planned swap to `to`: accepted (forwarded through the ring) or refused.
    pub fn request_swap(&mut self, now: Time, to: ServerId) -> Result<(), SwapError> {
        self.begin(now);
        let r = self.replica.request_swap(now, to);
        self.pump(now);
        r
    }

    /// New addresses for configured servers: the address book follows at once.
    pub fn readdress(&mut self, now: Time, daemons: &[(ServerId, SocketAddr)]) {
        self.begin(now);
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
                self.out.push_back(Output::Peers {
                    daemons: m.peers(&self.configured),
                    removed: m.removed.clone(),
                });
            }
        }
        self.pump(now);
    }

    /// The store and its staleness, between two inputs: one consistent state, with no commit
    /// applied halfway; or why it cannot be read now. Read it as of the staleness's
    /// `last_tid` (`Storage::load_at`, ranges bounded by it): the store may hold newer
    /// transactions that are not synced yet.
    pub fn read(&mut self, now: Time) -> Result<(&S, Staleness), ReadError> {
        self.begin(now);
        self.pump(now);
        if self.replica.readable() {
            Ok((self.replica.store(), self.staleness(now)))
        } else {
            Err(ReadError::Recovering)
        }
    }

    /// The server's status now.
    pub fn status(&mut self, now: Time) -> ServerStatus {
        self.begin(now);
        self.pump(now);
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
            view: self.view.iter().map(|p| p.node).collect(),
            gcs: self.node.stats().clone(),
            since_last_commit: self
                .replica
                .staleness()
                .last_commit_at
                .map(|t| now.since(t)),
            down_reason: match self.replica.down_reason() {
                Some(r) => Some(r.to_string()),
                None => self.removed.then(|| Self::REMOVED.to_string()),
            },
            voters: {
                let (c, t) = self.replica.voters();
                (c.clone(), t)
            },
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// When to call [`Self::handle_timeout`].
    pub fn poll_deadline(&self) -> Option<Time> {
        if self.left_ring() {
            return None;
        }
        let node = match (
            self.node.poll_deadline(),
            self.checkpoint_retry.map(|(t, _)| t),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A claiming primary wakes when its lease would run out, to stop claiming on time.
        let lease_end = match (
            self.replica.role(),
            self.lapsed,
            self.node.last_token_visit(),
        ) {
            (Role::Primary, None, Some((t, _))) => {
                Some(t.saturating_add(self.lease() + std::time::Duration::from_micros(1)))
            }
            _ => None,
        };
        match (node, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next output. The replica sees an input's deliveries and views only once the
    /// datagrams of that input were taken (see `feed_replica`).
    pub fn poll_output(&mut self) -> Option<Output> {
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

    // ---- what shells read -----------------------------------------------------------------

    /// The servers of its current gcs view.
    pub fn view_members(&self) -> Vec<ServerId> {
        self.view.iter().map(|p| p.node).collect()
    }

    /// The servers in this server's address book: its configuration file's, plus those
    /// added, minus those removed (see [`crate::membership`]).
    pub fn address_book(&self) -> Vec<ServerId> {
        match &self.membership {
            Some(m) => m
                .peers(&self.configured)
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
            None => self.configured.daemons.iter().map(|(id, _)| *id).collect(),
        }
    }

    /// The membership its store holds (added and removed servers; `None` before it was
    /// first read).
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// The replica (for status and tests).
    pub fn replica(&self) -> &Replica<S> {
        &self.replica
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.replica.store()
    }

    /// Whether reads are served now (no object recovery open, the store not failed).
    pub fn readable(&self) -> bool {
        self.replica.readable()
    }

    /// The point reads are served as of: the last transaction synced to this server's disk
    /// (the store may hold newer ones, applied and not yet synced; see `Staleness::last_tid`).
    pub fn read_point(&self) -> storage::Tid {
        self.replica.synced_tid()
    }

    /// The store, the core dropped (a crash in the simulator keeps the disk).
    pub fn into_store(self) -> S {
        self.replica.into_store()
    }

    // ---- internals ------------------------------------------------------------------------

    fn begin(&mut self, now: Time) {
        self.now = now;
        self.check_claim(now);
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
        // The node gives up on removed daemons at once wherever they appear, so that a server
        // whose book is stale cannot ring with one (see `gcs::Node::set_removed`).
        self.node.set_removed(self.now, m.removed.iter().copied());
        tracing::info!(server = me, added = ?m.added.iter().map(|a| a.id).collect::<Vec<_>>(), removed = ?m.removed, "membership");
        let added: Vec<(ServerId, String)> =
            m.added.iter().map(|a| (a.id, a.name.clone())).collect();
        self.replica.set_read_replicas(&added, &m.removed);
        self.out.push_back(Output::Peers {
            daemons: m.peers(&self.configured),
            removed: m.removed.clone(),
        });
        self.out
            .push_back(Output::Event(ServerEvent::Membership(m.clone())));
        let removed = m.is_removed(me);
        self.membership = Some(m);
        if removed && !self.removed {
            tracing::error!(server = me, "{}", Self::REMOVED);
            self.removed = true;
            self.stop_taking_part();
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
            .and_then(|m| m.apply(&change, &self.configured, self.replica.voters().0));
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
                request: None,
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

    fn answer(&mut self, id: ReqId, mut result: Result<Committed, CommitError>) {
        if let Err(CommitError::NotPrimary { primary }) = &mut result {
            // A redirect to a primary this server cannot vouch for sends the client back to a
            // server that may be frozen or cut off, for a whole attempt's patience.
            if !self.token_recent(self.now) {
                *primary = None;
            }
        }
        self.out.push_back(Output::Reply { id, result });
    }

    /// After an input: the replica's answers to a request, then the node's outputs. The
    /// node's datagrams (the token above all) go to the shell before the replica sees the
    /// deliveries and views of the same input (see [`Self::feed_replica`]).
    fn pump(&mut self, now: Time) {
        self.now = now;
        self.drain_replica(now);
        self.take_node_outputs();
        self.check_claim(now);
        self.check_invariants();
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) || self.opts.check_invariants {
            self.replica.check_invariants();
        }
    }

    fn take_node_outputs(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                gcs::Output::Transmit { dest, bytes } => {
                    self.out.push_back(Output::Transmit { dest, bytes })
                }
                // A server that left the ring takes nothing more from it.
                gcs::Output::Deliver(_) | gcs::Output::View(_) if self.left_ring() => {}
                gcs::Output::Deliver(d) => self.for_replica.push_back(ForReplica::Deliver(d)),
                gcs::Output::View(v) => self.for_replica.push_back(ForReplica::View(v)),
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
                ForReplica::Deliver(d) => match envelope::open(&d.payload) {
                    Some((Channel::Replica, body)) => {
                        self.replica.handle_delivery(now, d.sender, &body)
                    }
                    Some((Channel::Checkpoint, body)) => {
                        self.on_checkpoint_msg(now, d.sender, &body)
                    }
                    None => {
                        tracing::debug!(sender = ?d.sender, "ring payload of no known channel dropped")
                    }
                },
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
                        self.view = v.members.clone();
                        self.abandon_transfers_outside_view();
                        tracing::info!(server = self.replica.id(), view = ?v.id, members = ?v.members, "view");
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
        self.check_invariants();
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

    /// A checkpoint-transfer message, in its envelope, queued like the replica's.
    fn send_ckpt(&mut self, now: Time, m: &CkptMsg) {
        self.send(
            now,
            Service::Agreed,
            envelope::seal(Channel::Checkpoint, &m.encode()),
        );
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
                replica::Output::Multicast { service, payload } => {
                    let sealed = envelope::seal(Channel::Replica, &payload);
                    self.send(now, service, sealed)
                }
                replica::Output::Reply { req, result } => self.answer(req, result),
                replica::Output::Role(r) => {
                    if r.role == Role::Down {
                        self.leave_ring();
                    }
                    let primary = r.role == Role::Primary;
                    self.out.push_back(Output::Event(ServerEvent::Role(r)));
                    if primary && self.lapsed.is_some() {
                        // Not claimed until the token went round again (`check_claim`).
                        self.push_claim();
                    }
                }
                replica::Output::Invalidate(i) => self
                    .out
                    .push_back(Output::Event(ServerEvent::Invalidate(i))),
                replica::Output::Durable(t) => {
                    self.out.push_back(Output::Event(ServerEvent::Durable(t)))
                }
                replica::Output::Lost(l) => self.out.push_back(Output::Event(ServerEvent::Lost(l))),
                replica::Output::NeedCheckpoint { donor } => {
                    self.out
                        .push_back(Output::Event(ServerEvent::NeedCheckpoint { donor }));
                    self.ask_checkpoint(now, donor);
                }
                replica::Output::MembershipChanged => self.reload_membership(),
                replica::Output::Direct { to, payload } => self.out.push_back(Output::Transmit {
                    dest: gcs::Dest::Node(to),
                    bytes: payload,
                }),
                replica::Output::Sync { id } => self.out.push_back(Output::SyncStore { id }),
            }
        }
    }

    /// The store failed. A member that stays in the ring with a failed store freezes the
    /// cluster: as primary it can no longer commit, yet the others keep naming it; as a backup
    /// it blocks every election that waits for its state. So the node is fed nothing more
    /// (no datagram, no timer): to the others this server is gone, they install a view
    /// without it after their token timeout and elect among themselves. What the process
    /// does next is the shell's choice (`standby-server` exits so that its supervisor
    /// restarts it on a fresh open of the store).
    fn leave_ring(&mut self) {
        tracing::error!(
            server = self.replica.id(),
            reason = self.replica.down_reason().unwrap_or("unknown"),
            "store failed: this server leaves the ring"
        );
        self.stop_taking_part();
    }

    /// What leaving the ring drops: what the replica was still to see, what it was still to
    /// send, and the checkpoint transfers under way.
    fn stop_taking_part(&mut self) {
        self.for_replica.clear();
        self.unsent.clear();
        if let Some(o) = self.outgoing.take() {
            self.command(CheckpointCommand::Discard { id: o.id });
        }
        if let Some(i) = self.incoming.take() {
            self.command(CheckpointCommand::Abandon { id: i.id });
        }
    }

    /// Whether the replica receives every commit as it is made: in a primary component, not
    /// read-only nor down (it may still be applying or catching up: its lag in transactions
    /// says how far).
    fn replica_current(&self) -> bool {
        if self.removed {
            return false;
        }
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
        if self.removed {
            st.role = Role::Down;
            st.in_primary_component = false;
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
                .is_some_and(|(t, _)| now.since(t) <= self.lease())
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
        if self.left_ring() || self.replica.role() != Role::Primary {
            self.lapsed = None;
            return;
        }
        let visits = self.node.last_token_visit().map_or(0, |(_, n)| n);
        match self.lapsed {
            None if !self.token_recent(now) => {
                self.lapsed = Some(visits);
                tracing::warn!(
                    server = self.replica.id(),
                    lease = ?self.lease(),
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
            view: self.view_members(),
        };
        if self.lapsed.is_some() {
            info.role = Role::Syncing;
            info.primary = None;
        }
        self.out.push_back(Output::Event(ServerEvent::Claim(info)));
    }

    // ---- checkpoint transfer (see `checkpoint.rs`) ----------------------------------------

    fn command(&mut self, c: CheckpointCommand) {
        self.out.push_back(Output::Checkpoint(c));
    }

    fn ask_checkpoint(&mut self, now: Time, donor: ServerId) {
        if !self.opts.checkpoints {
            tracing::error!(
                server = self.replica.id(),
                "a checkpoint is needed but this server has no data directory"
            );
            return;
        }
        if self.incoming.is_some() {
            return;
        }
        let id = self.next_ckpt_id;
        self.next_ckpt_id += 1;
        tracing::info!(
            server = self.replica.id(),
            donor,
            id,
            "asking for a checkpoint"
        );
        let donor_proc = self.view.iter().find(|p| p.node == donor).copied();
        self.incoming = Some(Incoming {
            id,
            donor,
            donor_proc,
            installing: None,
        });
        self.command(CheckpointCommand::Prepare { id, donor });
        let m = CkptMsg::Request {
            from: self.replica.id(),
            donor,
            id,
        };
        self.send_ckpt(now, &m);
    }

    fn abandon_transfers_outside_view(&mut self) {
        // By process, not by server id: a peer that restarted between two views (a crash,
        // then its supervisor) is in the new view under a newer incarnation, and knows nothing
        // of the transfer; waiting for it would wait forever.
        let procs = self.view.clone();
        // A new view elects again: the replica asks for a checkpoint itself if it still needs
        // one, from the donor of that election.
        self.checkpoint_retry = None;
        if let Some(o) = self.outgoing.take_if(|o| !procs.contains(&o.to_proc)) {
            tracing::warn!(to = o.to, "checkpoint recipient left: transfer abandoned");
            self.command(CheckpointCommand::Discard { id: o.id });
        }
        let gone = |i: &mut Incoming| match i.donor_proc {
            Some(p) => !procs.contains(&p),
            None => !procs.iter().any(|p| p.node == i.donor),
        };
        if let Some(i) = self.incoming.take_if(gone) {
            tracing::warn!(donor = i.donor, "checkpoint donor left: transfer abandoned");
            self.command(CheckpointCommand::Abandon { id: i.id });
        }
    }

    /// The shell's sync that started after [`Output::SyncStore`] `id` was asked returned
    /// (`Err`: the store failed, and the server leaves the ring).
    pub fn store_synced(&mut self, now: Time, id: u64, result: Result<(), String>) {
        self.now = now;
        match result {
            Ok(()) => self.replica.handle_synced(now, id),
            Err(e) => self.replica.handle_sync_failed(now, &e),
        }
        self.pump(now);
    }

    /// Donor: the shell made the checkpoint of transfer `id` and serves it from `source`
    /// (or could not): the offer goes to the recipient.
    pub fn checkpoint_made(&mut self, now: Time, id: u64, made: Result<(Manifest, Bytes), String>) {
        self.now = now;
        let Some(o) = self.outgoing.as_mut().filter(|o| o.id == id && !o.offered) else {
            // Discarded meanwhile (a shell checks `awaits_checkpoint` before it serves).
            return;
        };
        match made {
            Ok((m, source)) if source.len() <= checkpoint::SOURCE_MAX => {
                tracing::info!(to = o.to, id, files = m.files.len(), tid = %m.tid, "offering a checkpoint");
                o.offered = true;
                let offer = CkptMsg::Offer {
                    to: o.to,
                    id,
                    tid: m.tid,
                    files: m.files,
                    source: checkpoint::Source(source),
                };
                self.send_ckpt(now, &offer);
            }
            Ok((_, source)) => self.outgoing_failed(
                now,
                format!("a checkpoint source of {} bytes", source.len()),
            ),
            Err(reason) => self.outgoing_failed(now, reason),
        }
        self.pump(now);
    }

    /// Donor: whether transfer `id` waits for the shell's `checkpoint_made` (a shell starts
    /// serving only then: a transfer discarded meanwhile has nothing to serve).
    pub fn awaits_checkpoint(&self, id: u64) -> bool {
        self.outgoing
            .as_ref()
            .is_some_and(|o| o.id == id && !o.offered)
    }

    /// Donor: the shell stopped serving transfer `id` without sending it whole (no recipient
    /// came in time, a connection failed, an accept error): it is discarded and the recipient
    /// told, which then asks again.
    pub fn serving_failed(&mut self, now: Time, id: u64, reason: String) {
        self.now = now;
        if self.outgoing.as_ref().is_some_and(|o| o.id == id) {
            self.outgoing_failed(now, reason);
        }
        self.pump(now);
    }

    /// Donor: the shell sent every file of transfer `id` once: it is discarded.
    pub fn checkpoint_served(&mut self, now: Time, id: u64) {
        self.now = now;
        if let Some(o) = self.outgoing.take_if(|o| o.id == id && o.offered) {
            tracing::info!(to = o.to, id, "checkpoint served");
            self.command(CheckpointCommand::Discard { id });
        }
        self.pump(now);
    }

    fn outgoing_failed(&mut self, now: Time, reason: String) {
        let Some(o) = self.outgoing.take() else {
            return;
        };
        tracing::error!(to = o.to, id = o.id, %reason, "cannot offer a checkpoint");
        self.command(CheckpointCommand::Discard { id: o.id });
        let f = CkptMsg::Failed {
            to: o.to,
            id: o.id,
            reason,
        };
        self.send_ckpt(now, &f);
    }

    /// A checkpoint message `sender` multicast. Requests count only from the server they name,
    /// and a transfer's offer only from its donor: another member cannot feed a recovering
    /// server files of its own.
    fn on_checkpoint_msg(&mut self, now: Time, sender_proc: gcs::ProcId, payload: &[u8]) {
        let sender = sender_proc.node;
        let me = self.replica.id();
        let Some(m) = CkptMsg::decode(payload) else {
            tracing::debug!("malformed checkpoint message dropped");
            return;
        };
        let ours = |i: &Incoming, id: u64| {
            i.id == id
                && i.donor == sender
                && i.donor_proc.is_none_or(|p| p == sender_proc)
                && i.installing.is_none()
        };
        // A recipient asking again, of this donor or another one, gave up on what it was
        // offered here (a broken connection, a failed check, a view that named another
        // donor): that offer ends.
        if let CkptMsg::Request { from, .. } = &m {
            if *from == sender {
                if let Some(o) = self.outgoing.take_if(|o| o.to_proc == sender_proc) {
                    self.command(CheckpointCommand::Discard { id: o.id });
                }
            }
        }
        match m {
            CkptMsg::Request { from, donor, id } if donor == me && from == sender => {
                let refused = if self.outgoing.is_some() {
                    Some("a transfer is already under way")
                } else if !self.opts.checkpoints {
                    Some("the donor has no data directory")
                } else {
                    None
                };
                if let Some(reason) = refused {
                    let f = CkptMsg::Failed {
                        to: from,
                        id,
                        reason: reason.to_string(),
                    };
                    self.send_ckpt(now, &f);
                    return;
                }
                self.outgoing = Some(Outgoing {
                    to: from,
                    to_proc: sender_proc,
                    id,
                    offered: false,
                });
                self.command(CheckpointCommand::Make { id, to: from });
            }
            CkptMsg::Offer {
                to,
                id,
                tid,
                files,
                source,
            } if to == me => {
                let Some(inc) = self.incoming.as_mut().filter(|i| ours(i, id)) else {
                    return;
                };
                inc.donor_proc.get_or_insert(sender_proc);
                inc.installing = Some(tid);
                let donor = inc.donor;
                tracing::info!(server = me, donor, id, files = files.len(), %tid, "checkpoint offered: fetching it");
                self.command(CheckpointCommand::Fetch {
                    id,
                    donor,
                    manifest: Manifest { tid, files },
                    source,
                });
            }
            CkptMsg::Failed { to, id, reason } if to == me => {
                if let Some(i) = self.incoming.take_if(|i| ours(i, id)) {
                    tracing::error!(%reason, "the donor could not send a checkpoint: asking again shortly");
                    self.command(CheckpointCommand::Abandon { id: i.id });
                    self.checkpoint_retry =
                        Some((self.now.saturating_add(CHECKPOINT_RETRY), i.donor));
                }
            }
            _ => {}
        }
    }

    /// Recipient: the transfer whose files the shell is checking and installing, if any.
    pub fn installing_transfer(&self) -> Option<u64> {
        self.incoming
            .as_ref()
            .filter(|i| i.installing.is_some())
            .map(|i| i.id)
    }

    /// Recipient: the shell could not prepare or fetch transfer `id`: it is abandoned, and
    /// asked again shortly.
    pub fn transfer_failed(&mut self, now: Time, id: u64, reason: &str) {
        self.now = now;
        if let Some(i) = self.incoming.take_if(|i| i.id == id) {
            tracing::error!(%reason, "checkpoint transfer abandoned: asking again shortly");
            self.command(CheckpointCommand::Abandon { id: i.id });
            self.checkpoint_retry = Some((now.saturating_add(CHECKPOINT_RETRY), i.donor));
        }
        self.pump(now);
    }

    /// Recipient: the shell installed the checkpoint of transfer `id` as the live store and
    /// opened it (or could not). The replica takes it and drops (closes) the store it had:
    /// a shell with readers of the old store lets them go first.
    pub fn checkpoint_ready(
        &mut self,
        now: Time,
        id: u64,
        ready: Result<S, String>,
    ) -> Result<(), String> {
        self.now = now;
        let Some(inc) = self
            .incoming
            .take_if(|i| i.id == id && i.installing.is_some())
        else {
            return Err(format!("no checkpoint transfer {id} is being installed"));
        };
        let announced = inc.installing.unwrap_or_default();
        // The store must end where the donor said: a checkpoint of another point in the
        // history would be taken for this one.
        let r = ready.and_then(|store| match store.last_transaction() {
            Ok(last) if last == announced => self
                .replica
                .install_checkpoint(store)
                .map_err(|e| e.to_string()),
            Ok(last) => Err(format!("checkpoint holds {last}, announced {announced}")),
            Err(e) => Err(e.to_string()),
        });
        match &r {
            Ok(()) => tracing::info!(
                server = self.replica.id(),
                donor = inc.donor,
                "checkpoint installed"
            ),
            Err(e) => {
                tracing::error!(error = %e, "checkpoint refused: asking again shortly");
                self.command(CheckpointCommand::Abandon { id });
                self.checkpoint_retry = Some((now.saturating_add(CHECKPOINT_RETRY), inc.donor));
            }
        }
        self.pump(now);
        r
    }
}
