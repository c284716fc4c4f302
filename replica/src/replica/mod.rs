//! The replica state machine: one storage server's side of replication.
//!
//! Sans-IO, like the gcs core: the shell feeds it gcs views and deliveries and client
//! requests, with the current time, and drains [`Output`]s. It sets no timers: gcs
//! membership is its only failure detector.
//!
//! ```text
//!  regular view: every member multicasts State (agreed order), with its voter configuration
//!       │ all states delivered: the members that kept their disks are a primary component
//!       │ under the newest configuration reported? (same answer everywhere)
//!       ├─ no ──► ReadOnly
//!       ▼ yes: choose_primary, choose_donor, next_epoch
//!  every member durably promises the epoch, multicasts Promise
//!       │ all promises delivered
//!       ├─► the chosen one: catches up from the donor if it is another, then Primary; first
//!       │   commit = epoch marker (lineage entry); finishes a voter change left joint
//!       └─► the others: truncate what the lineage never had (Lost), recover what they
//!           lack from the donor (transactions, objects, or a checkpoint), apply buffered
//!           commits, report Applied, Backup
//! ```
//!
//! A planned swap runs the promise round again without a view change: the primary stops
//! assigning tids, multicasts Handover (ordered after its last commit), every member
//! promises epoch + 1, and the target becomes primary once all promises are delivered.
//!
//! Inputs: gcs views and deliveries (`handle_view`, `handle_delivery`), direct datagrams from
//! other replicas (`handle_direct`), client commits (`handle_commit`, with a `TidChoice`: the
//! next tid, at least a clock reading the shell passes, or exactly a restored tid), an
//! operator's swap (`request_swap`) or voter change (`handle_voter_change`), and a checkpoint the shell installed
//! (`install_checkpoint`). Outputs ([`Output`]): `Multicast`, `Direct`, `Reply`, `Role`,
//! `Invalidate` (naming the committing client), `Durable` (primary only: the point up to which
//! a majority holds every commit on disk), `Lost`, `NeedCheckpoint`, `MembershipChanged`.
//!
//! One file per handler beside this one: `views`, `delivery`, `election_round`, `recovery`,
//! `apply`, `durability`, `primary`, `swap`, `voter_change`, `donor`, `recipient`, `role`
//! (the role and its own state), and `invariants` (checked between inputs when the shell asks, as the simulator does).

use crate::clients::{client_table_oid, read_client_table, ClientTable};
use crate::config::{CommitMode, ReplicaConfig, ServerId};
use crate::election::LINEAGE_MAX;
use crate::election::{
    choose_donor, choose_primary, common_prefix, is_primary_component, next_epoch, Epoch,
    EpochStart, MemberState,
};
use crate::types::{
    CommitError, CommitRequest, Committed, Invalidation, LostReport, Output, ReqId, Role, RoleInfo,
    Staleness, TidChoice,
};
use crate::voters::{voters_oid, VoterConfig, VoterSet};
use crate::wire::{ChunkBody, FetchReq, Msg};
use bytes::{BufMut, Bytes, BytesMut};
use gcs::{ProcId, Service, Time, View, ViewKind};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use storage::{
    ApplyOutcome, Direction, Oid, Record, RequestKey, Revision, Storage, StorageError, Tid,
    TidRange, Transaction, TxnMeta,
};

mod apply;
mod delivery;
mod donor;
mod durability;
mod election_round;
mod invariants;
mod primary;
mod recipient;
mod recovery;
mod role;
mod swap;
mod sync;
mod views;
mod voter_change;

use role::{FollowerRole, FollowerState, PrimaryState, RoleState};
use voter_change::VoterChange;
pub use voter_change::ADDED_GROUP;

/// The client whose record `oid` is, if it is one (see [`client_oid`]).
pub fn client_of_oid(oid: &Oid) -> Option<u64> {
    match oid.as_bytes() {
        [RESERVED_OID_PREFIX, b'c', id @ ..] => Some(u64::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// The request number a client record holds (0 if it holds none).
pub fn client_request(data: Option<&[u8]>) -> u64 {
    data.and_then(|d| d.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The first bytes of a direct datagram between replicas ([`Output::Direct`]): never the
/// start of a gcs packet (whose magic is `SB`).
pub(crate) const DIRECT_PREFIX: [u8; 2] = [0xD1, 0x7E];

/// Oids starting with this byte belong to the replication layer (lineage, client records);
/// clients cannot write them.
pub const RESERVED_OID_PREFIX: u8 = 0xFF;

/// The object holding a store's lineage (written by each primary's first transaction).
pub fn lineage_oid() -> Oid {
    Oid::new(Bytes::from_static(&[RESERVED_OID_PREFIX, b'e'])).expect("short oid")
}

/// The object that recorded a client's last committed request number in the format before
/// idempotency keys moved into transaction headers (written in the same transaction as the
/// request's writes). Read still, never written: see [`crate::clients`].
pub fn client_oid(client: u64) -> Oid {
    let mut b = BytesMut::with_capacity(10);
    b.put_u8(RESERVED_OID_PREFIX);
    b.put_u8(b'c');
    b.put_u64(client);
    Oid::new(b.freeze()).expect("short oid")
}

/// The object listing the servers added to (and removed from) the configured cluster. Its
/// contents belong to the shell (the storage server); the replica only orders and replicates
/// it like any object, lets commit requests write it (the shell keeps clients from doing so),
/// and says when it may have changed ([`crate::Output::MembershipChanged`]).
pub fn membership_oid() -> Oid {
    Oid::new(Bytes::from_static(&[RESERVED_OID_PREFIX, b'm'])).expect("short oid")
}

/// The ZEO face's oid high-water mark (8 bytes, big-endian): every ZODB oid below it may
/// have been handed out. Written by the shell like [`membership_oid`].
pub fn zeo_oids_oid() -> Oid {
    Oid::new(Bytes::from_static(&[RESERVED_OID_PREFIX, b'z', b'o'])).expect("short oid")
}

/// A pack order (ZODB's pack with garbage collection): the pack bound `before` (8 bytes,
/// big-endian) followed by the 8-byte oids to remove. The shell computes it on the primary
/// and commits it; every server runs [`Storage::pack_gc`] when it applies that transaction,
/// so all of them pack to the same point of the history. Running it right after the apply
/// or later gives the same store: every later transaction has a tid above `before`, and
/// `pack_gc` keeps whatever was written at or after `before`.
pub fn zeo_pack_oid() -> Oid {
    Oid::new(Bytes::from_static(&[RESERVED_OID_PREFIX, b'z', b'p'])).expect("short oid")
}

/// Reserved oids the replica itself writes (the lineage, the client table and the client
/// records of the format before it, the voters): commit requests
/// may not. The other reserved oids belong to the shell.
fn is_replica_owned(oid: &Oid) -> bool {
    matches!(
        oid.as_bytes(),
        [RESERVED_OID_PREFIX, b'e' | b'c' | b'v' | b't', ..]
    )
}

/// A pack order (see [`zeo_pack_oid`]): the bound, then the 8-byte ZODB oids to collect.
pub fn encode_pack_order(before: Tid, oids: &[Oid]) -> Bytes {
    let mut data = Vec::with_capacity(8 + oids.len() * 8);
    data.extend_from_slice(&before.to_be_bytes());
    for o in oids {
        data.extend_from_slice(o.as_bytes());
    }
    Bytes::from(data)
}

/// Decodes a pack order (see [`encode_pack_order`]); `None` if malformed.
fn decode_pack_order(data: &[u8]) -> Option<(Tid, Vec<Oid>)> {
    if data.len() < 8 || !(data.len() - 8).is_multiple_of(8) {
        return None;
    }
    let before = Tid(u64::from_be_bytes(data[..8].try_into().ok()?));
    let oids = data[8..]
        .chunks(8)
        .map(|c| Oid::from_u64(u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))))
        .collect();
    Some((before, oids))
}

/// Whether `oid` is reserved (first byte [`RESERVED_OID_PREFIX`]): the replica's or the
/// shell's, never a client's.
pub fn is_reserved(oid: &Oid) -> bool {
    oid.as_bytes().first() == Some(&RESERVED_OID_PREFIX)
}

fn encode_lineage(l: &[EpochStart]) -> Bytes {
    let mut b = BytesMut::with_capacity(l.len() * 16);
    for e in l {
        b.put_u64(e.epoch.0);
        b.put_u64(e.base.0);
    }
    b.freeze()
}

fn decode_lineage(b: &[u8]) -> Option<Vec<EpochStart>> {
    if !b.len().is_multiple_of(16) {
        return None;
    }
    b.chunks_exact(16)
        .map(|c| {
            let (epoch, base) = (be_u64(&c[..8])?, be_u64(&c[8..])?);
            (epoch < crate::COUNTER_MAX && base < crate::COUNTER_MAX).then_some(EpochStart {
                epoch: Epoch(epoch),
                base: Tid(base),
            })
        })
        .collect()
}

/// A big-endian u64 from exactly eight bytes.
fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// A store's lineage (empty for a store no primary wrote to yet).
fn read_lineage<S: Storage>(store: &S) -> Result<Vec<EpochStart>, StorageError> {
    match store.load(&lineage_oid())? {
        Some(Revision { data: Some(d), .. }) => {
            decode_lineage(&d).ok_or_else(|| StorageError::corrupt("lineage object"))
        }
        _ => Ok(Vec::new()),
    }
}

/// A store's voter configuration and the tid that wrote it (`Tid::ZERO`: the file's).
fn read_voters<S: Storage>(
    store: &S,
    cfg: &ReplicaConfig,
) -> Result<(VoterConfig, Tid), StorageError> {
    match store.load(&voters_oid())? {
        Some(Revision {
            data: Some(d), tid, ..
        }) => VoterConfig::decode(&d)
            .map(|c| (c, tid))
            .ok_or_else(|| StorageError::corrupt("voter configuration object")),
        _ => Ok((VoterConfig::from_file(cfg), Tid::ZERO)),
    }
}

/// What the replica keeps in the store's replication-state slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Durable {
    /// The highest epoch promised.
    promised: Epoch,
    /// While an object fill is open: the `consistent_at` of its first chunk (changes after it
    /// must be re-sent before the fill can finish).
    fill_since: Option<Tid>,
    /// While an object fill is open: the lineage of the history its first chunk came from
    /// (a fill may only be resumed from a donor whose history holds `fill_since` of it).
    fill_lineage: Vec<EpochStart>,
    /// Whether this server votes (false after a disk loss, until it caught up again).
    voter: bool,
}

impl Default for Durable {
    fn default() -> Self {
        Durable {
            promised: Epoch(0),
            fill_since: None,
            fill_lineage: Vec::new(),
            voter: true,
        }
    }
}

/// Layout of the replication-state slot: version, voter, promised epoch, then the open fill
/// if any (`consistent_at` of its first chunk, then that history's lineage: a count and
/// the entries).
const DURABLE_VERSION: u8 = 2;

impl Durable {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![DURABLE_VERSION, self.voter as u8];
        v.extend_from_slice(&self.promised.0.to_be_bytes());
        match self.fill_since {
            None => v.push(0),
            Some(t) => {
                v.push(1);
                v.extend_from_slice(&t.0.to_be_bytes());
                v.extend_from_slice(&(self.fill_lineage.len() as u32).to_be_bytes());
                v.extend_from_slice(&encode_lineage(&self.fill_lineage));
            }
        }
        v
    }

    fn decode(b: &[u8]) -> Result<Durable, StorageError> {
        let bad = || StorageError::corrupt("replication state");
        if b.len() < 11 || b[0] != DURABLE_VERSION || b[1] > 1 {
            return Err(bad());
        }
        let voter = b[1] == 1;
        let promised = be_u64(&b[2..10])
            .filter(|e| *e < crate::COUNTER_MAX)
            .map(Epoch)
            .ok_or_else(bad)?;
        let (fill_since, fill_lineage) = match b[10] {
            0 if b.len() == 11 => (None, Vec::new()),
            1 if b.len() >= 23 => {
                let since = be_u64(&b[11..19])
                    .filter(|t| *t < crate::COUNTER_MAX)
                    .map(Tid)
                    .ok_or_else(bad)?;
                let n = u32::from_be_bytes(b[19..23].try_into().map_err(|_| bad())?) as usize;
                if n > LINEAGE_MAX || b.len() != 23 + 16 * n {
                    return Err(bad());
                }
                let lineage = decode_lineage(&b[23..]).ok_or_else(bad)?;
                (Some(since), lineage)
            }
            _ => return Err(bad()),
        };
        Ok(Durable {
            promised,
            fill_since,
            fill_lineage,
            voter,
        })
    }
}

/// The election running in the current view (or the handover promise round).
#[derive(Clone, Debug)]
struct Election {
    primary: ServerId,
    epoch: Epoch,
    /// The primary's history at election time: where everyone catches up to.
    base: Tid,
    base_lineage: Vec<EpochStart>,
    /// Who serves recovery.
    donor: ServerId,
    /// The first tid the new primary may assign (above every tid any member holds).
    tid_floor: Tid,
    promises: BTreeSet<ServerId>,
}

/// A commit the primary sent and has not answered.
#[derive(Clone, Debug)]
struct Pending {
    reqs: Vec<ReqId>,
    epoch: Epoch,
    key: (u64, u64),
    oids: Vec<Oid>,
    /// Delivered in the regular view: may be acknowledged once a majority holds it.
    delivered_regular: bool,
    /// Already answered (async mode).
    answered: bool,
    /// When it was multicast, and when it came back delivered (for the stage timings).
    sent_at: Time,
    delivered_at: Option<Time>,
}

/// The commits this server sent as primary and has not answered, and the retries waiting for
/// them to be durable.
#[derive(Clone, Debug, Default)]
struct InFlight {
    /// By tid.
    pending: BTreeMap<Tid, Pending>,
    /// The newest pending tid writing each oid (conflicts are checked against it first).
    serial: BTreeMap<Oid, Tid>,
    /// The pending tid of each idempotency key (client, request).
    keys: BTreeMap<(u64, u64), Tid>,
    /// Retries of applied commits waiting for a majority to hold them: (tid, request, the
    /// epoch this server was primary of when it took the retry).
    dup_waiting: Vec<(Tid, ReqId, Epoch)>,
}

/// A delivered commit waiting for the next batch apply.
#[derive(Clone, Debug)]
struct QueuedCommit {
    prev: Tid,
    txn: Transaction,
    /// Sent by this server (as primary).
    mine: bool,
    /// Delivered in a regular view.
    regular: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RecoveryStep {
    /// Transactions after our last (until `until`, or the donor's end).
    Txns { until: Option<Tid> },
    /// Newest revisions of objects changed after our last.
    Objects { after_oid: Option<Oid> },
    /// The transactions in `(fill_since, until]`, filled as revisions, then `fill_finish(until)`;
    /// `after` is where the last chunk stopped.
    FillTxns { after: Tid, until: Tid },
}

#[derive(Clone, Debug)]
struct Recovery {
    donor: ServerId,
    fetch_id: u64,
    step: RecoveryStep,
    /// Chunks still expected for the current request.
    outstanding: u32,
}

#[derive(Clone, Debug)]
struct CurrentView {
    /// Every member of the ring's view, whether or not this server's configuration names it
    /// yet (see `views.rs`).
    members: Vec<ServerId>,
    regular: bool,
    primary_component: bool,
}

/// Counters for status pages and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Transactions applied (own and others').
    pub applied: u64,
    /// Commits acknowledged to clients by this server as primary.
    pub acked: u64,
    /// Elections completed in this server's views.
    pub elections: u64,
    /// Messages refused: stale epoch, not from the primary, malformed.
    pub fenced: u64,
    /// Recovery chunks applied.
    pub recovery_chunks: u64,
    /// Recoveries started by transactions (full).
    pub recoveries_full: u64,
    /// Recoveries started by objects (fast).
    pub recoveries_fast: u64,
    /// Checkpoints asked of the shell.
    pub checkpoints: u64,
    /// Sync commits answered by this server as primary with their stage timings: the sums,
    /// in microseconds, of the time from multicast to delivery back at the primary, and
    /// from there to durable on a majority (`Applied` reports), and how many commits they
    /// cover. Their ratios are the mean stage latencies, in the ring's rotations what a
    /// commit waits for.
    pub stage_delivered_us: u64,
    /// See [`Self::stage_delivered_us`].
    pub stage_durable_us: u64,
    /// See [`Self::stage_delivered_us`].
    pub stage_samples: u64,
    /// Open object fills started over because the new primary's history parted from the
    /// one they came from.
    pub fills_restarted: u64,
    /// Client tables written as primary (see [`crate::clients`]).
    pub client_tables: u64,
    /// Transactions moved to the lost archive.
    pub lost: u64,
}

/// One storage server's replication state machine over its store `S`.
pub struct Replica<S: Storage> {
    cfg: ReplicaConfig,
    me: ServerId,
    store: S,
    durable: Durable,
    lineage: Vec<EpochStart>,
    /// The voter configuration of the store's history, and the tid that wrote it.
    voters: VoterConfig,
    voters_tid: Tid,
    last: Tid,
    view: Option<CurrentView>,
    states: BTreeMap<ServerId, MemberState>,
    election: Option<Election>,
    /// The working primary (after its promise round).
    primary: Option<(ServerId, Epoch)>,
    /// The role and its own state.
    role: RoleState,
    /// Commits sent as primary and not answered (see [`RoleState`] for why not the
    /// primary's own).
    in_flight: InFlight,
    /// Commit requests held while an election or a swap settles, or while the primary
    /// stops or its async window is full.
    held: VecDeque<(ReqId, CommitRequest)>,
    /// Durable positions reported in this view (`Applied`), by server.
    applied: BTreeMap<ServerId, Tid>,
    /// `synced` grew since it was last reported (see `poll_output`).
    applied_dirty: bool,
    /// The highest tid durable on this server's disk (at most `last`): what it reports to the
    /// primary, and the primary's own vote. Applies do not wait for the disk
    /// ([`Output::Sync`]).
    synced: Tid,
    /// Syncs asked of the shell and not yet done: (id, the last tid applied when asked).
    syncs: VecDeque<(u64, Tid)>,
    next_sync_id: u64,
    /// Invalidations of applied transactions not yet synced: they go out as `synced` passes
    /// them, so that no client is told of a transaction a machine crash could take back.
    unsynced_invalidations: VecDeque<Invalidation>,
    /// The highest tid announced as [`Output::Durable`], across the server's terms as
    /// primary (what it announces never goes back).
    durable_announced: Tid,
    /// Each client's last committed request, as of `last` (see [`crate::clients`]).
    clients: ClientTable,
    /// The client table the donor of an object fill sent with its last chunk (the table as
    /// of the fill's consistency point): written into the store as the fill finishes.
    fill_clients: Option<Bytes>,
    last_commit_at: Option<Time>,
    primary_last_known: Tid,
    next_fetch_id: u64,
    apply_queue: Vec<QueuedCommit>,
    /// The time of the latest input (for work done while draining outputs).
    now: Time,
    out: VecDeque<Output>,
    stats: ReplicaStats,
}

const BACKLOG_MAX: usize = 100_000;

impl<S: Storage> Replica<S> {
    /// A server over `store` (which may hold data from an earlier run).
    pub fn new(cfg: ReplicaConfig, me: ServerId, store: S) -> Result<Replica<S>, StorageError> {
        let mut r = Replica {
            cfg,
            me,
            store,
            durable: Durable::default(),
            lineage: Vec::new(),
            voters: VoterConfig::default(),
            voters_tid: Tid::ZERO,
            last: Tid::ZERO,
            view: None,
            states: BTreeMap::new(),
            election: None,
            primary: None,
            role: RoleState::Follower(FollowerState::new(FollowerRole::ReadOnly)),
            in_flight: InFlight::default(),
            held: VecDeque::new(),
            applied: BTreeMap::new(),
            applied_dirty: false,
            synced: Tid::ZERO,
            syncs: VecDeque::new(),
            unsynced_invalidations: VecDeque::new(),
            next_sync_id: 1,
            durable_announced: Tid::ZERO,
            clients: ClientTable::default(),
            fill_clients: None,
            last_commit_at: None,
            primary_last_known: Tid::ZERO,
            next_fetch_id: 1,
            apply_queue: Vec::new(),
            now: Time::ZERO,
            out: VecDeque::new(),
            stats: ReplicaStats::default(),
        };
        r.reload()?;
        Ok(r)
    }

    fn reload(&mut self) -> Result<(), StorageError> {
        self.durable = match self.store.replication_state()? {
            None => Durable::default(),
            Some(b) => Durable::decode(&b)?,
        };
        self.last = self.store.last_transaction()?;
        if self.last.0 >= crate::COUNTER_MAX {
            return Err(StorageError::corrupt(format!(
                "last transaction {} beyond the tid range",
                self.last
            )));
        }
        self.primary_last_known = self.primary_last_known.max(self.last);
        // What a store holds when it is opened is what its disk holds.
        self.synced_write();
        self.after_store_change()
    }

    /// Re-reads what the replication layer keeps in objects after the store changed under
    /// it (start, checkpoint, fill, truncation, a new epoch).
    fn after_store_change(&mut self) -> Result<(), StorageError> {
        self.lineage = read_lineage(&self.store)?;
        self.reload_voters()?;
        // A fill, a truncation or another store: the table is rebuilt from the newest one
        // written and the log after it (a new epoch's first transaction holds one: cheap).
        self.clients = read_client_table(&self.store, self.last)?;
        self.out.push_back(Output::MembershipChanged);
        Ok(())
    }

    /// Re-reads the voter configuration (a transaction wrote it, or the store changed).
    fn reload_voters(&mut self) -> Result<(), StorageError> {
        let (voters, tid) = read_voters(&self.store, &self.cfg)?;
        if voters != self.voters {
            tracing::info!(server = self.me, %voters, %tid, "voters");
        }
        self.voters = voters;
        self.voters_tid = tid;
        Ok(())
    }

    /// A server restarting on an empty store after losing its disk. It does not vote until
    /// it has caught up under a primary elected by servers that kept theirs: whatever it
    /// promised before is gone, and counting its vote could let a second primary of an old
    /// epoch, or a primary missing acknowledged commits, be elected. (An empty store at the
    /// first start of a cluster votes: it never promised anything.)
    pub fn after_disk_loss(
        cfg: ReplicaConfig,
        me: ServerId,
        store: S,
    ) -> Result<Replica<S>, StorageError> {
        let mut r = Replica::new(cfg, me, store)?;
        r.durable.voter = false;
        r.persist()?;
        Ok(r)
    }

    /// Gives the store back (the shell keeps it across a simulated crash).
    pub fn into_store(self) -> S {
        self.store
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.me
    }

    /// The store, for reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Each client's last committed request, as of [`Self::last_tid`] (see
    /// [`crate::clients`]).
    pub fn client_table(&self) -> &ClientTable {
        &self.clients
    }

    /// Servers added to (or removed from) the configuration while running (the shell's
    /// membership object, see [`crate::membership_oid`]): added ones join as read replicas
    /// (group [`ADDED_GROUP`]) that a voter change may give a vote; removed ones no longer
    /// count as members of a view. A server that votes is never removed here.
    pub fn set_read_replicas(&mut self, added: &[(ServerId, String)], removed: &[ServerId]) {
        for (id, name) in added {
            if self.cfg.server(*id).is_none() {
                self.cfg.servers.push(crate::config::ServerSpec {
                    id: *id,
                    name: name.clone(),
                    group: ADDED_GROUP.into(),
                    kind: crate::config::GroupKind::Remote,
                    weight: 0,
                });
            }
        }
        let voters = &self.voters;
        self.cfg
            .servers
            .retain(|s| !removed.contains(&s.id) || voters.votes(s.id));
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.role()
    }

    /// Why the store failed, once it has (the role is then [`Role::Down`]).
    pub fn down_reason(&self) -> Option<&str> {
        match &self.role {
            RoleState::Down { reason } => Some(reason),
            _ => None,
        }
    }

    /// The working primary and its epoch, if known.
    pub fn primary(&self) -> Option<(ServerId, Epoch)> {
        self.primary
    }

    /// The highest epoch this server promised.
    pub fn promised(&self) -> Epoch {
        self.durable.promised
    }

    /// Its last transaction.
    pub fn last_tid(&self) -> Tid {
        self.last
    }

    /// The voter configuration its store holds, and the tid that wrote it (`Tid::ZERO`: the
    /// configuration file's voters).
    pub fn voters(&self) -> (&VoterConfig, Tid) {
        (&self.voters, self.voters_tid)
    }

    /// Its lineage.
    pub fn lineage(&self) -> &[EpochStart] {
        &self.lineage
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// How stale this server's reads are.
    pub fn staleness(&self) -> Staleness {
        Staleness {
            role: self.role(),
            // Reads are served as of what the disk holds (see `Staleness::last_tid`).
            last_tid: self.synced,
            primary_last_known: self.primary_last_known.max(self.last),
            last_commit_at: self.last_commit_at,
            in_primary_component: self.view.as_ref().is_some_and(|v| v.primary_component),
            behind_for: None,
        }
    }

    /// Whether reads are served: not while an object fill leaves the store inconsistent, nor
    /// after a storage failure.
    pub fn readable(&self) -> bool {
        self.role() != Role::Down && self.durable.fill_since.is_none()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Err(e) = self.flush_applies() {
            self.fail(e);
        }
        if let RoleState::Primary(p) = &mut self.role {
            if std::mem::take(&mut p.acks_due) {
                self.release_acks();
            }
        }
        self.ask_sync();
        if self.applied_dirty {
            self.applied_dirty = false;
            if let Some((p, epoch)) = self.primary {
                let backup = matches!(&self.role, RoleState::Follower(f)
                    if f.role == FollowerRole::Backup && f.recovery.is_none());
                if p != self.me && backup {
                    let m = Msg::Applied {
                        server: self.me,
                        epoch,
                        tid: self.synced,
                    };
                    // Straight to the primary first: in the ring's total order the report
                    // would wait behind every commit sent before it (a rotation or more
                    // under load). The ordered copy is the reliable path, for a
                    // lost datagram.
                    let mut payload = BytesMut::with_capacity(32);
                    payload.put_slice(&DIRECT_PREFIX);
                    payload.put_slice(&m.encode());
                    self.out.push_back(Output::Direct {
                        to: p,
                        payload: payload.freeze(),
                    });
                    self.multicast(Service::Agreed, m);
                }
            }
        }
        self.out.pop_front()
    }

    fn multicast(&mut self, service: Service, m: Msg) {
        self.out.push_back(Output::Multicast {
            service,
            payload: m.encode(),
        });
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        if self.role() == Role::Down {
            return;
        }
        tracing::error!(server = self.me, error = %e, "storage failure: stopping");
        let why = e.to_string();
        // The durable mirror may hold what a failed write meant to store (a promise raised in
        // memory, then refused by the disk): report what the store holds instead.
        match self.store.replication_state() {
            Ok(Some(b)) => {
                if let Ok(d) = Durable::decode(&b) {
                    self.durable = d;
                }
            }
            Ok(None) => self.durable = Durable::default(),
            Err(_) => {}
        }
        self.primary = None;
        // Whatever the role held ends: a follower's recovery, a primary's own state.
        let from = self.role();
        let down = RoleState::Down {
            reason: why.clone(),
        };
        let ended = std::mem::replace(&mut self.role, down);
        self.announce_role(from);
        for (req, _) in std::mem::take(&mut self.held) {
            self.reply(req, Err(CommitError::Down(why.clone())));
        }
        let pending = std::mem::take(&mut self.in_flight.pending);
        for p in pending.into_values().filter(|p| !p.answered) {
            for r in p.reqs {
                self.reply(r, Err(CommitError::Down(why.clone())));
            }
        }
        if let RoleState::Primary(p) = ended {
            if let Some(r) = p.end() {
                self.reply(r, Err(CommitError::Down(why.clone())));
            }
        }
    }

    fn reply(&mut self, req: ReqId, result: Result<Committed, CommitError>) {
        if result.is_ok() {
            self.stats.acked += 1;
        }
        self.out.push_back(Output::Reply { req, result });
    }

    fn persist(&mut self) -> Result<(), StorageError> {
        self.store.set_replication_state(&self.durable.encode())?;
        self.synced_write();
        Ok(())
    }
}

/// A chunk as one log field: its kind, extent and whether it ends the stream.
struct ChunkSummary<'a>(&'a ChunkBody);

impl std::fmt::Debug for ChunkSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ChunkBody::Txns { txns, done } => write!(
                f,
                "txns {}..={} ({}) done={done}",
                txns.first().map_or(0, |(p, _)| p.0),
                txns.last().map_or(0, |(_, t)| t.tid.0),
                txns.len()
            ),
            ChunkBody::Objects {
                consistent_at,
                revisions,
                done,
                ..
            } => write!(
                f,
                "objects at {} ({}) done={done}",
                consistent_at.0,
                revisions.len()
            ),
            ChunkBody::Unavailable { horizon } => write!(f, "unavailable below {}", horizon.0),
        }
    }
}

/// Why a swap request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    /// No working primary in this server's view.
    #[error("no primary in view")]
    NoPrimary,
    /// The target may not become primary (remote group, no weight, unknown).
    #[error("server {0} may not become primary")]
    NotEligible(ServerId),
    /// The target is not in this server's view.
    #[error("server {0} is not in the view")]
    NotInView(ServerId),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each invariant `check_invariants` states fails on a replica whose state breaks it
    /// (the checker checks something), and a fresh replica passes, as does a working
    /// primary.
    #[test]
    fn invariants_catch_each_broken_state() {
        let fresh = || {
            let cfg = ReplicaConfig::uniform(3, crate::CommitMode::Sync);
            Replica::new(cfg, 0, storage::MemStorage::default()).expect("open")
        };
        fresh().check_invariants();
        // A primary whose last assigned tid is its last: the state the transition into the
        // role builds (`maybe_become_primary`).
        let primary = || RoleState::Primary(PrimaryState::new(Tid::ZERO));
        let component = || {
            Some(CurrentView {
                members: vec![0, 1, 2],
                regular: true,
                primary_component: true,
            })
        };
        let mut working = fresh();
        working.role = primary();
        working.primary = Some((0, Epoch(1)));
        working.durable.promised = Epoch(1);
        working.view = component();
        working.check_invariants();
        type Break = Box<dyn Fn(&mut Replica<storage::MemStorage>)>;
        let broken: Vec<(&str, Break)> = vec![
            (
                "primary role without a working primary",
                Box::new(move |r| r.role = primary()),
            ),
            (
                "another server is the working primary",
                Box::new(move |r| {
                    r.role = primary();
                    r.primary = Some((1, Epoch(1)));
                }),
            ),
            (
                "primary outside a primary component",
                Box::new(move |r| {
                    r.role = primary();
                    r.primary = Some((0, Epoch(1)));
                }),
            ),
            (
                "above its durable promise",
                Box::new(move |r| {
                    r.role = primary();
                    r.primary = Some((0, Epoch(1)));
                    r.view = component();
                }),
            ),
            (
                "object fill open",
                Box::new(move |r| {
                    r.role = primary();
                    r.primary = Some((0, Epoch(1)));
                    r.durable.promised = Epoch(1);
                    r.view = component();
                    r.durable.fill_since = Some(Tid(3));
                }),
            ),
            (
                "a tid it never assigned",
                Box::new(move |r| {
                    r.role = primary();
                    r.primary = Some((0, Epoch(1)));
                    r.durable.promised = Epoch(1);
                    r.view = component();
                    r.last = Tid(5);
                }),
            ),
            (
                "an empty voter set",
                Box::new(|r| r.voters.voters = VoterSet::new([])),
            ),
            (
                "an empty voter set",
                Box::new(|r| r.voters.old = Some(VoterSet::new([]))),
            ),
            (
                "synced beyond the last transaction",
                Box::new(|r| r.synced = Tid(1)),
            ),
            (
                "syncs asked out of order",
                Box::new(|r| {
                    r.last = Tid(4);
                    r.synced = Tid(4);
                    r.syncs = VecDeque::from([(1, Tid(4))]);
                }),
            ),
            (
                "syncs asked out of order",
                Box::new(|r| {
                    r.last = Tid(4);
                    r.syncs = VecDeque::from([(1, Tid(3)), (2, Tid(2))]);
                }),
            ),
            (
                "syncs asked out of order",
                Box::new(|r| {
                    r.last = Tid(4);
                    r.syncs = VecDeque::from([(2, Tid(2)), (1, Tid(3))]);
                }),
            ),
            (
                "syncs asked out of order",
                Box::new(|r| {
                    r.last = Tid(4);
                    r.syncs = VecDeque::from([(1, Tid(2)), (2, Tid(5))]);
                }),
            ),
            (
                "lineage out of order",
                Box::new(|r| {
                    r.lineage = vec![
                        EpochStart {
                            epoch: Epoch(2),
                            base: Tid(1),
                        },
                        EpochStart {
                            epoch: Epoch(1),
                            base: Tid(2),
                        },
                    ]
                }),
            ),
            (
                "lineage out of order",
                Box::new(|r| {
                    r.lineage = vec![
                        EpochStart {
                            epoch: Epoch(1),
                            base: Tid(2),
                        },
                        EpochStart {
                            epoch: Epoch(2),
                            base: Tid(1),
                        },
                    ]
                }),
            ),
            (
                "backlog out of tid order",
                Box::new(|r| {
                    let txn = |t: u64| Transaction {
                        tid: Tid(t),
                        meta: TxnMeta::default(),
                        records: Vec::new(),
                    };
                    if let RoleState::Follower(f) = &mut r.role {
                        f.backlog = VecDeque::from([(Tid(1), txn(3)), (Tid(3), txn(2))]);
                    }
                }),
            ),
        ];
        for (what, breaks) in broken {
            let mut r = fresh();
            breaks(&mut r);
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.check_invariants()));
            let msg = caught
                .err()
                .and_then(|e| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| panic!("not caught: {what}"));
            assert!(msg.contains(what), "{what}: {msg}");
        }
    }

    #[test]
    fn pack_orders_round_trip_and_refuse_bad_lengths() {
        let oids = [Oid::from_u64(2), Oid::from_u64(u64::MAX)];
        for o in [&oids[..], &[]] {
            let e = encode_pack_order(Tid(9), o);
            assert_eq!(decode_pack_order(&e), Some((Tid(9), o.to_vec())));
        }
        let e = encode_pack_order(Tid(9), &oids);
        for n in [0, 7, 9, 15, 23] {
            assert_eq!(decode_pack_order(&e[..n]), None, "{n} bytes");
        }
    }

    #[test]
    fn durable_state_round_trips_and_refuses_bad_bytes() {
        let open_fill = Durable {
            promised: Epoch(7),
            fill_since: Some(Tid(161)),
            fill_lineage: vec![
                EpochStart {
                    epoch: Epoch(1),
                    base: Tid::ZERO,
                },
                EpochStart {
                    epoch: Epoch(5),
                    base: Tid(140),
                },
            ],
            voter: false,
        };
        for d in [Durable::default(), open_fill] {
            let b = d.encode();
            assert_eq!(Durable::decode(&b).unwrap(), d);
            // Every truncation and a wrong version are errors, never a panic.
            for n in 0..b.len() {
                assert!(Durable::decode(&b[..n]).is_err(), "{n}");
            }
            let mut v = b.clone();
            v[0] = 1;
            assert!(Durable::decode(&v).is_err());
        }
    }
}
