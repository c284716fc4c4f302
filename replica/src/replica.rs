//! The replica state machine: one storage server's side of replication.
//!
//! Sans-IO, like the gcs core: the shell feeds it gcs views and deliveries and client
//! requests, with the current time, and drains [`Output`]s. It sets no timers: gcs
//! membership is its only failure detector.
//!
//! ```text
//!  regular view ──► not a primary component ──────────────► ReadOnly
//!       │
//!       ▼ primary component
//!  Syncing: every member multicasts State (agreed order)
//!       │ all states delivered: choose_primary + next_epoch, same answer everywhere
//!       ▼
//!  every member durably promises the epoch, multicasts Promise
//!       │ all promises delivered
//!       ├─► the chosen one: Primary; first commit = epoch marker (lineage entry)
//!       └─► the others: truncate what the lineage never had (Lost), recover what they
//!           lack from the donor (transactions, objects, or a checkpoint), apply buffered
//!           commits, report Applied, Backup
//! ```
//!
//! A planned swap runs the promise round again without a view change: the primary stops
//! assigning tids, multicasts Handover (ordered after its last commit), every member
//! promises epoch + 1, and the target becomes primary once all promises are delivered.

use crate::config::{CommitMode, ReplicaConfig, ServerId};
use crate::election::LINEAGE_MAX;
use crate::election::{choose_primary, common_prefix, next_epoch, Epoch, EpochStart, MemberState};
use crate::types::{
    CommitError, CommitRequest, Committed, Invalidation, LostReport, Output, ReqId, Role, RoleInfo,
    Staleness, TidChoice,
};
use crate::wire::{ChunkBody, FetchReq, Msg};
use bytes::{BufMut, Bytes, BytesMut};
use gcs::{ProcId, Service, Time, View, ViewKind};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use storage::{
    ApplyOutcome, Direction, Oid, Record, Revision, Storage, StorageError, Tid, TidRange,
    Transaction, TxnMeta,
};

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

/// Client records cached at most (the cache starts over beyond).
const CLIENT_CACHE_MAX: usize = 100_000;

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

/// The object recording a client's last committed request number (written in the same
/// transaction as the request's writes: the idempotency record).
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

/// Reserved oids the replica itself writes (the lineage, client records): commit requests
/// may not. The other reserved oids belong to the shell.
fn is_replica_owned(oid: &Oid) -> bool {
    matches!(oid.as_bytes(), [RESERVED_OID_PREFIX, b'e' | b'c', ..])
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
    last: Tid,
    view: Option<CurrentView>,
    states: BTreeMap<ServerId, MemberState>,
    election: Option<Election>,
    /// The working primary (after its promise round).
    primary: Option<(ServerId, Epoch)>,
    role: Role,
    /// Why the store failed (`role` is then `Down`).
    down_reason: Option<String>,
    was_primary_in: Option<Epoch>,
    // Primary side.
    last_assigned: Tid,
    stopping: bool,
    pending: BTreeMap<Tid, Pending>,
    pending_serial: BTreeMap<Oid, Tid>,
    pending_keys: BTreeMap<(u64, u64), Tid>,
    /// Retries of applied commits waiting for a majority to hold them: (tid, request, the
    /// epoch this server was primary of when it took the retry).
    dup_waiting: Vec<(Tid, ReqId, Epoch)>,
    held: VecDeque<(ReqId, CommitRequest)>,
    /// Durable positions reported in this view (`Applied`), by server.
    applied: BTreeMap<ServerId, Tid>,
    // Backup side.
    recovery: Option<Recovery>,
    backlog: VecDeque<(Tid, Transaction)>,
    backlog_overflowed: bool,
    applied_dirty: bool,
    /// The highest tid announced as [`Output::Durable`].
    durable_announced: Tid,
    /// Client records as the store has them (tid, last request; `None`: no record), so that
    /// the primary's idempotency check does not read the store for every commit. Filled on
    /// reads and on every write of a client record; cleared whenever the store changes
    /// otherwise (fill, truncation, checkpoint, start).
    client_cache: BTreeMap<u64, Option<(Tid, u64)>>,
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
            last: Tid::ZERO,
            view: None,
            states: BTreeMap::new(),
            election: None,
            primary: None,
            role: Role::ReadOnly,
            down_reason: None,
            was_primary_in: None,
            last_assigned: Tid::ZERO,
            stopping: false,
            pending: BTreeMap::new(),
            pending_serial: BTreeMap::new(),
            pending_keys: BTreeMap::new(),
            dup_waiting: Vec::new(),
            held: VecDeque::new(),
            applied: BTreeMap::new(),
            recovery: None,
            backlog: VecDeque::new(),
            backlog_overflowed: false,
            applied_dirty: false,
            durable_announced: Tid::ZERO,
            client_cache: BTreeMap::new(),
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
        self.after_store_change()
    }

    /// Re-reads what the replication layer keeps in objects after the store changed under
    /// it (start, checkpoint, fill, truncation, a new epoch).
    fn after_store_change(&mut self) -> Result<(), StorageError> {
        self.lineage = read_lineage(&self.store)?;
        // The store may have changed under the cache (a fill, a truncation, another store).
        self.client_cache.clear();
        self.out.push_back(Output::MembershipChanged);
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

    /// Servers added to (or removed from) the configuration while running: read replicas,
    /// remote and without a vote (the shell's membership object, see
    /// [`crate::membership_oid`]). Only their messages and view membership are affected:
    /// a server without a vote changes no election, so servers that learn of a change at
    /// different times still elect alike. Voting servers are never removed here.
    pub fn set_read_replicas(&mut self, added: &[(ServerId, String)], removed: &[ServerId]) {
        for (id, name) in added {
            if self.cfg.server(*id).is_none() {
                self.cfg.servers.push(crate::config::ServerSpec {
                    id: *id,
                    name: name.clone(),
                    group: "added".into(),
                    kind: crate::config::GroupKind::Remote,
                    weight: 0,
                });
            }
        }
        self.cfg
            .servers
            .retain(|s| !removed.contains(&s.id) || crate::config::voting_weight(s) > 0);
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Why the store failed, once it has (the role is then [`Role::Down`]).
    pub fn down_reason(&self) -> Option<&str> {
        self.down_reason.as_deref()
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
            role: self.role,
            last_tid: self.last,
            primary_last_known: self.primary_last_known.max(self.last),
            last_commit_at: self.last_commit_at,
            in_primary_component: self.view.as_ref().is_some_and(|v| v.primary_component),
            behind_for: None,
        }
    }

    /// Whether reads are served: not while an object fill leaves the store inconsistent, nor
    /// after a storage failure.
    pub fn readable(&self) -> bool {
        self.role != Role::Down && self.durable.fill_since.is_none()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Err(e) = self.flush_applies() {
            self.fail(e);
        }
        if self.applied_dirty {
            self.applied_dirty = false;
            if let Some((p, epoch)) = self.primary {
                if p != self.me && self.recovery.is_none() && self.role == Role::Backup {
                    let m = Msg::Applied {
                        server: self.me,
                        epoch,
                        tid: self.last,
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

    fn set_role(&mut self, role: Role) {
        let info = RoleInfo {
            role,
            primary: self.primary,
            in_primary_component: self.view.as_ref().is_some_and(|v| v.primary_component),
            promised: self.durable.promised,
        };
        if self.role != role || role == Role::Primary || role == Role::Backup {
            tracing::info!(server = self.me, ?role, primary = ?self.primary, "role");
        }
        self.role = role;
        self.out.push_back(Output::Role(info));
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        if self.role == Role::Down {
            return;
        }
        tracing::error!(server = self.me, error = %e, "storage failure: stopping");
        let why = e.to_string();
        self.down_reason = Some(why.clone());
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
        self.set_role(Role::Down);
        for (req, _) in std::mem::take(&mut self.held) {
            self.reply(req, Err(CommitError::Down(why.clone())));
        }
        let pending = std::mem::take(&mut self.pending);
        for p in pending.into_values().filter(|p| !p.answered) {
            for r in p.reqs {
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
        self.store.set_replication_state(&self.durable.encode())
    }

    // ---- views -----------------------------------------------------------------------

    /// Checks the replica's own invariants; panics, naming the one broken, if any is. The
    /// storage-server core runs it after every input in debug builds and always in the
    /// simulator (`servercore::CoreOptions::check_invariants`), as `gcs::Node` checks its own.
    pub fn check_invariants(&self) {
        let me = self.me;
        let fail = |what: &str| -> ! {
            panic!("replica s{me} invariant broken: {what} (role {:?}, primary {:?}, last {}, promised {})",
                self.role, self.primary, self.last, self.durable.promised.0)
        };
        // A server is Down exactly when its store failed, and says why.
        if (self.role == Role::Down) != self.down_reason.is_some() {
            fail("Down without a reason, or a reason without Down");
        }
        if self.role == Role::Primary {
            // Only an elected primary of a primary component acts as one...
            let Some((p, epoch)) = self.primary else {
                fail("primary role without a working primary");
            };
            if p != me {
                fail("primary role while another server is the working primary");
            }
            if !self.view.as_ref().is_some_and(|v| v.primary_component) {
                fail("primary outside a primary component");
            }
            // ...under an epoch it durably promised...
            if self.durable.promised < epoch {
                fail("primary of an epoch above its durable promise");
            }
            // ...over a whole, consistent store...
            if self.recovery.is_some() || self.durable.fill_since.is_some() {
                fail("primary while recovering or with an object fill open");
            }
            // ...and every transaction it applied since is one it assigned.
            if self.last > self.last_assigned {
                fail("primary applied a tid it never assigned");
            }
        }
        // The lineage: epochs strictly increase, and so do (weakly) their starting tids.
        if !self
            .lineage
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].base <= w[1].base)
        {
            fail("lineage out of order");
        }
        // Commits held back during a recovery are kept in delivery order, which is tid order
        // (some may already be applied by the recovery: they are skipped when it ends).
        if !self
            .backlog
            .iter()
            .zip(self.backlog.iter().skip(1))
            .all(|((_, a), (_, b))| a.tid < b.tid)
        {
            fail("backlog out of tid order");
        }
    }

    /// A gcs view was installed.
    pub fn handle_view(&mut self, now: Time, view: &View) {
        if self.role == Role::Down {
            return;
        }
        self.now = now;
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        let mut members: Vec<ServerId> = view
            .members
            .iter()
            .map(|p: &ProcId| p.node)
            .filter(|n| self.cfg.server(*n).is_some())
            .collect();
        members.dedup();
        let regular = view.kind() == ViewKind::Regular;
        if !regular {
            // The old view ends: commits still arrive (the transitional set's), but nothing
            // new is accepted until the next regular view elects.
            if let Some(v) = self.view.as_mut() {
                v.regular = false;
            }
            if self.role == Role::Primary {
                self.stopping = true;
            }
            return;
        }
        let primary_component = self.cfg.is_primary_component(&members);
        self.was_primary_in = match (self.role, self.primary) {
            (Role::Primary, Some((_, e))) => Some(e),
            _ => None,
        };
        // Everything in flight from the previous view has an unknown outcome now.
        let pending = std::mem::take(&mut self.pending);
        for p in pending.into_values().filter(|p| !p.answered) {
            for r in p.reqs {
                self.reply(r, Err(CommitError::Retry));
            }
        }
        for (_, r, _) in std::mem::take(&mut self.dup_waiting) {
            self.reply(r, Err(CommitError::Retry));
        }
        self.pending_serial.clear();
        self.pending_keys.clear();
        self.applied.clear();
        self.states.clear();
        self.election = None;
        self.primary = None;
        self.stopping = false;
        self.recovery = None;
        self.backlog.clear();
        self.backlog_overflowed = false;
        self.view = Some(CurrentView {
            members,
            regular: true,
            primary_component,
        });
        if primary_component {
            self.set_role(Role::Syncing);
            let fill_open = self.durable.fill_since.is_some();
            let state = MemberState {
                server: self.me,
                promised: self.durable.promised,
                last_tid: self.last,
                lineage: self.lineage.clone(),
                primary_in: self.was_primary_in,
                consistent: !fill_open,
                voter: self.durable.voter,
            };
            self.multicast(Service::Agreed, Msg::State(state));
        } else {
            self.set_role(Role::ReadOnly);
            for (req, _) in std::mem::take(&mut self.held) {
                self.reply(req, Err(CommitError::NotPrimary { primary: None }));
            }
        }
    }

    // ---- deliveries ------------------------------------------------------------------

    /// A gcs delivery. Messages that are not replication messages, or come from a server
    /// not in the configuration, are counted and dropped.
    pub fn handle_delivery(&mut self, now: Time, sender: ProcId, payload: &[u8]) {
        if self.role == Role::Down {
            return;
        }
        let from = sender.node;
        self.now = now;
        let Ok(msg) = Msg::decode(payload) else {
            self.stats.fenced += 1;
            return;
        };
        if !matches!(msg, Msg::Commit { .. }) {
            if let Err(e) = self.flush_applies() {
                return self.fail(e);
            }
        }
        if self.cfg.server(from).is_none() {
            self.stats.fenced += 1;
            return;
        }
        let r = match msg {
            Msg::State(s) => self.on_state(from, s),
            Msg::Promise { server, epoch } => self.on_promise(from, server, epoch),
            Msg::Commit { epoch, prev, txn } => self.on_commit(now, from, epoch, prev, txn),
            Msg::Applied { server, epoch, tid } => {
                self.on_applied(from, server, epoch, tid);
                Ok(())
            }
            Msg::SwapRequest { epoch, to } => self.on_swap_request(epoch, to),
            Msg::Handover { epoch, to, last } => self.on_handover(from, epoch, to, last),
            // A fetch counts only from the server it names, a chunk only from the donor of
            // the recovery it belongs to (see `on_chunk`).
            Msg::Fetch { from: who, .. } if who != from => Ok(()),
            Msg::Fetch {
                from: who,
                donor,
                fetch_id,
                chunks,
                req,
            } => self.on_fetch(who, donor, fetch_id, chunks, req),
            Msg::Chunk { to, fetch_id, body } => {
                match self.on_chunk(now, from, to, fetch_id, body) {
                    // The stream does not fit this store (it parted from the donor's history
                    // mid-recovery): start over from a checkpoint rather than stop.
                    Err(
                        StorageError::InvalidFill { .. }
                        | StorageError::Gap { .. }
                        | StorageError::DivergentApply { .. }
                        | StorageError::NonIncreasingTid { .. },
                    ) => match self.recovery.as_ref().map(|r| r.donor) {
                        Some(d) => self.need_checkpoint(d),
                        None => Ok(()),
                    },
                    r => r,
                }
            }
            Msg::Lost {
                server,
                truncated_after,
                tids,
                oids,
            } if server != self.me => {
                self.out.push_back(Output::Lost(LostReport {
                    server,
                    truncated_after,
                    tids,
                    oids,
                }));
                Ok(())
            }
            Msg::Lost { .. } => Ok(()),
        };
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn in_view(&self, s: ServerId) -> bool {
        self.view.as_ref().is_some_and(|v| v.members.contains(&s))
    }

    fn on_state(&mut self, from: ServerId, s: MemberState) -> Result<(), StorageError> {
        let Some(v) = self.view.as_ref() else {
            return Ok(());
        };
        if !v.primary_component || s.server != from || !v.members.contains(&from) {
            return Ok(());
        }
        if self.election.is_some() {
            return Ok(());
        }
        self.states.insert(from, s);
        if !v.members.iter().all(|m| self.states.contains_key(m)) {
            return Ok(());
        }
        let states: Vec<MemberState> = self.states.values().cloned().collect();
        // A server that lost its disk lost its promises: it does not vote until it has
        // caught up under a primary elected without it.
        let voters: Vec<ServerId> = states
            .iter()
            .filter(|s| s.voter)
            .map(|s| s.server)
            .collect();
        if !self.cfg.is_primary_component(&voters) {
            tracing::warn!(
                server = self.me,
                ?voters,
                "not enough servers with their disks to elect"
            );
            if let Some(v) = self.view.as_mut() {
                v.primary_component = false;
            }
            self.set_role(Role::ReadOnly);
            for (req, _) in std::mem::take(&mut self.held) {
                self.reply(req, Err(CommitError::NotPrimary { primary: None }));
            }
            return Ok(());
        }
        let Some(p) = choose_primary(&self.cfg, &states) else {
            tracing::warn!(
                server = self.me,
                "primary component without an eligible member"
            );
            return Ok(());
        };
        let epoch = next_epoch(&states);
        let ps = &self.states[&p];
        let tid_floor = Tid(states.iter().map(|s| s.last_tid.0).max().unwrap_or(0) + 1);
        let election = Election {
            primary: p,
            epoch,
            base: ps.last_tid,
            base_lineage: ps.lineage.clone(),
            donor: p,
            tid_floor,
            promises: BTreeSet::new(),
        };
        // Servers already holding the primary's history count as durable up to its end.
        for s in &states {
            if common_prefix(&s.lineage, s.last_tid, &ps.lineage, ps.last_tid) == Some(ps.last_tid)
                && s.last_tid == ps.last_tid
            {
                self.applied.insert(s.server, ps.last_tid);
            }
        }
        self.primary_last_known = self.primary_last_known.max(ps.last_tid);
        self.stats.elections += 1;
        tracing::info!(server = self.me, primary = p, %epoch, base = %election.base, "elected");
        self.election = Some(election);
        self.promise(epoch)
    }

    fn promise(&mut self, epoch: Epoch) -> Result<(), StorageError> {
        if epoch > self.durable.promised {
            self.durable.promised = epoch;
            self.persist()?;
        }
        self.multicast(
            Service::Agreed,
            Msg::Promise {
                server: self.me,
                epoch,
            },
        );
        Ok(())
    }

    fn on_promise(
        &mut self,
        from: ServerId,
        server: ServerId,
        epoch: Epoch,
    ) -> Result<(), StorageError> {
        if from != server || !self.in_view(from) {
            return Ok(());
        }
        let members = self
            .view
            .as_ref()
            .map(|v| v.members.clone())
            .unwrap_or_default();
        // A primary starts only in the regular view its promises were made in: once the view
        // is transitional, members may already have moved on.
        if !self.view.as_ref().is_some_and(|v| v.regular) {
            return Ok(());
        }
        let Some(el) = self.election.as_mut() else {
            return Ok(());
        };
        if el.epoch != epoch {
            return Ok(());
        }
        el.promises.insert(server);
        if !members.iter().all(|m| el.promises.contains(m)) {
            return Ok(());
        }
        let el = el.clone();
        self.primary = Some((el.primary, el.epoch));
        if el.primary == self.me {
            self.start_recovery(&el)?;
            self.maybe_become_primary()
        } else {
            for (req, _) in std::mem::take(&mut self.held) {
                self.reply(
                    req,
                    Err(CommitError::NotPrimary {
                        primary: Some(el.primary),
                    }),
                );
            }
            self.set_role(Role::Syncing);
            self.start_recovery(&el)
        }
    }

    /// The chosen primary starts once it holds the base (after a handover it may still be
    /// applying the old primary's last commits or catching up).
    fn maybe_become_primary(&mut self) -> Result<(), StorageError> {
        let Some(el) = self.election.clone() else {
            return Ok(());
        };
        if el.primary != self.me
            || self.primary != Some((self.me, el.epoch))
            || self.role == Role::Primary
            || self.recovery.is_some()
            || self.last < el.base
        {
            return Ok(());
        }
        let mut lineage = self.lineage.clone();
        lineage.push(EpochStart {
            epoch: el.epoch,
            base: self.last,
        });
        if lineage.len() > LINEAGE_MAX {
            lineage.drain(..lineage.len() - LINEAGE_MAX);
        }
        self.last_assigned = self.last;
        self.stopping = false;
        let tid = el.tid_floor.max(Tid(self.last.0 + 1));
        let marker = Transaction {
            tid,
            meta: TxnMeta {
                user: Bytes::from_static(b"standby"),
                description: Bytes::from(format!("epoch {} starts", el.epoch.0)),
                extension: Bytes::new(),
                time: 0,
            },
            records: vec![Record {
                oid: lineage_oid(),
                data: Some(encode_lineage(&lineage)),
                expected_serial: None,
            }],
        };
        self.applied.insert(self.me, self.last);
        self.set_role(Role::Primary);
        self.primary_send(marker, None)?;
        self.release_held();
        Ok(())
    }

    fn start_recovery(&mut self, el: &Election) -> Result<(), StorageError> {
        if el.primary == self.me && self.last >= el.base {
            return Ok(());
        }
        if self.durable.fill_since.is_none() {
            match common_prefix(&self.lineage, self.last, &el.base_lineage, el.base) {
                Some(c) if c < self.last => {
                    if !self.truncate(c)? {
                        return self.need_checkpoint(el.donor);
                    }
                }
                Some(_) => {}
                None => return self.need_checkpoint(el.donor),
            }
        }
        if self.durable.fill_since.is_none() && self.last >= el.base {
            self.caught_up();
            return Ok(());
        }
        let behind = el.base.0.saturating_sub(self.last.0);
        let mut progress = self.store.fill_progress()?;
        let mut restart = false;
        if let Some(since) = self.durable.fill_since {
            // An open fill is consistent with the history its first chunk came from, at
            // `since`. It resumes only if this primary's history holds that one up to
            // `since`; otherwise (an async tail that was lost, a primary elected from behind)
            // what was filled so far must all lie in the shared part, and the fill starts over
            // from this donor; if not, only a checkpoint can make the store consistent.
            let shared =
                common_prefix(&self.durable.fill_lineage, since, &el.base_lineage, el.base);
            if shared != Some(since) {
                let tid_max = progress.as_ref().map_or(Tid::ZERO, |p| p.tid_max);
                match shared {
                    // (Our own history before the fill was a prefix of the first donor's.)
                    Some(c) if tid_max <= c && self.last <= c => {
                        tracing::info!(
                            server = self.me,
                            since = %since,
                            shared = %c,
                            "open fill came from another history: starting it over"
                        );
                        self.durable.fill_since = None;
                        self.durable.fill_lineage.clear();
                        self.persist()?;
                        progress = None;
                        restart = true;
                        self.stats.fills_restarted += 1;
                    }
                    _ => return self.need_checkpoint(el.donor),
                }
            }
        }
        let step = if let Some(p) = progress {
            RecoveryStep::Objects {
                after_oid: Some(p.last_oid),
            }
        } else if self.durable.fill_since.is_some() || restart {
            RecoveryStep::Objects { after_oid: None }
        } else if self.last == Tid::ZERO && behind > self.cfg.recovery.checkpoint_after {
            return self.need_checkpoint(el.donor);
        } else if behind > self.cfg.recovery.fast_after {
            RecoveryStep::Objects { after_oid: None }
        } else {
            RecoveryStep::Txns { until: None }
        };
        tracing::info!(
            server = self.me,
            donor = el.donor,
            ?step,
            behind,
            "recovery starts"
        );
        match step {
            RecoveryStep::Txns { .. } => self.stats.recoveries_full += 1,
            _ => self.stats.recoveries_fast += 1,
        }
        self.recovery = Some(Recovery {
            donor: el.donor,
            fetch_id: 0,
            step,
            outstanding: 0,
        });
        self.fetch();
        Ok(())
    }

    fn need_checkpoint(&mut self, donor: ServerId) -> Result<(), StorageError> {
        tracing::warn!(
            server = self.me,
            donor,
            "history cannot be reconciled: checkpoint"
        );
        self.stats.checkpoints += 1;
        self.recovery = Some(Recovery {
            donor,
            fetch_id: u64::MAX,
            step: RecoveryStep::Txns { until: None },
            outstanding: 0,
        });
        self.out.push_back(Output::NeedCheckpoint { donor });
        Ok(())
    }

    /// The shell installed a checkpoint copied from the donor (see
    /// [`Output::NeedCheckpoint`]): the replica continues on `store`, catching up from there.
    pub fn install_checkpoint(&mut self, store: S) -> Result<(), StorageError> {
        self.flush_applies()?;
        // What the old store holds beyond the history it shares with the checkpoint is
        // discarded with it: report it lost like a truncation would.
        let new_last = store.last_transaction()?;
        let new_lineage = read_lineage(&store)?;
        let keep = common_prefix(&self.lineage, self.last, &new_lineage, new_last)
            .unwrap_or(Tid::ZERO)
            .max(self.store.horizon()?);
        if keep < self.last {
            let mut tids = Vec::new();
            let mut oids = BTreeSet::new();
            if let Ok(it) = self.store.iter(TidRange::after(keep), Direction::Forward) {
                for t in it {
                    let t = t?;
                    tids.push(t.tid);
                    oids.extend(
                        t.records
                            .into_iter()
                            .map(|r| r.oid)
                            .filter(|o| !is_reserved(o)),
                    );
                }
            }
            if !tids.is_empty() {
                tracing::warn!(
                    server = self.me,
                    n = tids.len(),
                    "checkpoint replaces transactions the lineage never had"
                );
                self.report_lost(keep, tids, oids.into_iter().collect());
            }
        }
        self.store = store;
        let promised = self.durable.promised;
        self.reload()?;
        if promised > self.durable.promised {
            self.durable.promised = promised;
            self.persist()?;
        }
        let Some(rec) = self.recovery.take() else {
            return Ok(());
        };
        if self.view.as_ref().is_some_and(|v| v.regular) && self.primary.is_some() {
            self.recovery = Some(Recovery {
                donor: rec.donor,
                fetch_id: 0,
                step: RecoveryStep::Txns { until: None },
                outstanding: 0,
            });
            self.fetch();
        }
        Ok(())
    }

    /// Truncates after `tid`, reporting what was lost; false if the store's history does not
    /// reach back that far.
    fn truncate(&mut self, tid: Tid) -> Result<bool, StorageError> {
        let mut oids = BTreeSet::new();
        let lost: Vec<Transaction> = match self.store.iter(TidRange::after(tid), Direction::Forward)
        {
            Ok(it) => it.collect::<Result<_, _>>()?,
            Err(StorageError::HistoryTruncated { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        for t in &lost {
            oids.extend(
                t.records
                    .iter()
                    .map(|r| r.oid.clone())
                    .filter(|o| !is_reserved(o)),
            );
        }
        let tids = match self.store.truncate_after(tid) {
            Ok(t) => t,
            Err(StorageError::HistoryTruncated { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        tracing::warn!(server = self.me, after = %tid, n = tids.len(), "lost transactions archived");
        self.last = self.store.last_transaction()?;
        self.after_store_change()?;
        self.report_lost(tid, tids, oids.into_iter().collect());
        Ok(true)
    }

    /// Reports transactions moved out of the lineage: our own clients hear at once (reads
    /// after this point see the store without them), the others when the report is delivered
    /// to their servers.
    fn report_lost(&mut self, truncated_after: Tid, tids: Vec<Tid>, oids: Vec<Oid>) {
        self.stats.lost += tids.len() as u64;
        let report = LostReport {
            server: self.me,
            truncated_after,
            tids,
            oids,
        };
        self.out.push_back(Output::Lost(report.clone()));
        self.multicast(
            Service::Agreed,
            Msg::Lost {
                server: report.server,
                truncated_after: report.truncated_after,
                tids: report.tids,
                oids: report.oids,
            },
        );
    }

    fn fetch(&mut self) {
        let Some(rec) = self.recovery.as_mut() else {
            return;
        };
        rec.fetch_id = self.next_fetch_id;
        self.next_fetch_id += 1;
        rec.outstanding = self.cfg.recovery.chunks_per_request.max(1);
        let req = match &rec.step {
            RecoveryStep::Txns { until } => FetchReq::Txns {
                after: self.last,
                until: *until,
            },
            RecoveryStep::Objects { after_oid } => FetchReq::Objects {
                since: self.last,
                after_oid: after_oid.clone(),
            },
            RecoveryStep::FillTxns { after, until } => FetchReq::Txns {
                after: *after,
                until: Some(*until),
            },
        };
        tracing::debug!(
            server = self.me,
            donor = rec.donor,
            fetch_id = rec.fetch_id,
            ?req,
            "fetch"
        );
        let m = Msg::Fetch {
            from: self.me,
            donor: rec.donor,
            fetch_id: rec.fetch_id,
            chunks: rec.outstanding,
            req,
        };
        self.multicast(Service::Agreed, m);
    }

    fn caught_up(&mut self) {
        self.recovery = None;
        if !self.durable.voter && self.primary.is_some() {
            self.durable.voter = true;
            if let Err(e) = self.persist() {
                return self.fail(e);
            }
            tracing::info!(server = self.me, "caught up after a disk loss: votes again");
        }
        if self.primary.is_some_and(|(p, _)| p == self.me) {
            return;
        }
        if self.view.as_ref().is_some_and(|v| v.regular) && self.primary.is_some() {
            self.set_role(Role::Backup);
            self.applied_dirty = true;
        }
    }

    // ---- commits -----------------------------------------------------------------------

    fn on_commit(
        &mut self,
        now: Time,
        from: ServerId,
        epoch: Epoch,
        prev: Tid,
        txn: Transaction,
    ) -> Result<(), StorageError> {
        if self.primary != Some((from, epoch)) || epoch < self.durable.promised {
            self.stats.fenced += 1;
            return Ok(());
        }
        self.primary_last_known = self.primary_last_known.max(txn.tid);
        if self.recovery.is_some() || !self.backlog.is_empty() {
            if self.backlog.len() >= BACKLOG_MAX {
                self.backlog.clear();
                self.backlog_overflowed = true;
            }
            self.backlog.push_back((prev, txn));
            return Ok(());
        }
        // Applied in a batch (one sync) before anything that depends on it: the next
        // non-commit delivery, a view, a client request, or the end of this input.
        let regular = self.view.as_ref().is_some_and(|v| v.regular);
        let _ = now;
        self.apply_queue.push(QueuedCommit {
            prev,
            txn,
            mine: from == self.me,
            regular,
        });
        Ok(())
    }

    /// Applies the queued commits as one batch. A gap moves the rest to the backlog and
    /// starts recovery from the primary.
    fn flush_applies(&mut self) -> Result<(), StorageError> {
        if self.apply_queue.is_empty() {
            return Ok(());
        }
        let now = self.now;
        let queue = std::mem::take(&mut self.apply_queue);
        let batch: Vec<(Tid, Transaction)> =
            queue.iter().map(|q| (q.prev, q.txn.clone())).collect();
        let results = self.store.apply_batch(&batch);
        let mut mine = false;
        for (k, (q, r)) in queue.iter().zip(results).enumerate() {
            match r {
                Ok(ApplyOutcome::Applied) | Ok(ApplyOutcome::AlreadyPresent) => {}
                Err(StorageError::Gap { .. }) if q.txn.tid > self.last => {
                    // We missed transactions: keep these, recover the gap from the primary.
                    tracing::debug!(server = self.me, last = %self.last, tid = %q.txn.tid, prev = %q.prev, "gap in delivered commits");
                    for q in &queue[k..] {
                        self.backlog.push_back((q.prev, q.txn.clone()));
                    }
                    self.start_gap_recovery();
                    break;
                }
                Err(e) => return Err(e),
            }
            if q.txn.tid > self.last {
                self.last = q.txn.tid;
            }
            self.after_apply(now, &q.txn)?;
            if q.mine {
                mine = true;
                if let Some(p) = self.pending.get_mut(&q.txn.tid) {
                    p.delivered_regular = q.regular;
                    p.delivered_at = Some(now);
                    if !q.regular && !p.answered {
                        p.answered = true;
                        for r in std::mem::take(&mut p.reqs) {
                            self.reply(r, Err(CommitError::Retry));
                        }
                    }
                }
            }
        }
        if mine {
            self.applied.insert(self.me, self.last);
            self.release_acks();
        }
        Ok(())
    }

    fn start_gap_recovery(&mut self) {
        if let Some((p, _)) = self.primary {
            self.recovery = Some(Recovery {
                donor: p,
                fetch_id: 0,
                step: RecoveryStep::Txns { until: None },
                outstanding: 0,
            });
            self.set_role(Role::Syncing);
            self.fetch();
        }
    }

    fn after_apply(&mut self, now: Time, txn: &Transaction) -> Result<(), StorageError> {
        self.stats.applied += 1;
        self.note_client_records(txn);
        self.last_commit_at = Some(now);
        self.applied_dirty = true;
        if txn.records.iter().any(|r| r.oid == lineage_oid()) {
            self.after_store_change()?;
        } else if txn.records.iter().any(|r| r.oid == membership_oid()) {
            self.out.push_back(Output::MembershipChanged);
        }
        if let Some(order) = txn.records.iter().find(|r| r.oid == zeo_pack_oid()) {
            match order.data.as_deref().and_then(decode_pack_order) {
                Some((before, oids)) => {
                    // A pack only removes what no answer needs any more: one that fails
                    // leaves a correct store with more history, so it does not stop the
                    // server.
                    match self.store.pack_gc(before, &oids) {
                        Ok(st) => tracing::info!(
                            server = self.me,
                            tid = %txn.tid,
                            before = %before,
                            revisions_removed = st.revisions_removed,
                            "pack order applied"
                        ),
                        Err(e) => tracing::error!(
                            server = self.me,
                            tid = %txn.tid,
                            error = %e,
                            "pack order failed; the store keeps its history"
                        ),
                    }
                }
                None => {
                    tracing::error!(server = self.me, tid = %txn.tid, "malformed pack order ignored")
                }
            }
        }
        let oids: Vec<Oid> = txn
            .records
            .iter()
            .map(|r| r.oid.clone())
            .filter(|o| !is_reserved(o))
            .collect();
        let client = txn.records.iter().find_map(|r| client_of_oid(&r.oid));
        self.out.push_back(Output::Invalidate(Invalidation {
            tid: txn.tid,
            oids,
            client,
        }));
        Ok(())
    }

    /// Whether a datagram is a direct message between replicas ([`Output::Direct`]) rather
    /// than a gcs packet: the shell hands those to [`Self::handle_direct`].
    pub fn is_direct(datagram: &[u8]) -> bool {
        datagram.starts_with(&DIRECT_PREFIX)
    }

    /// A direct message from another server arrived (outside the ring: unordered, maybe
    /// lost or duplicated). Only `Applied` reports travel this way, and one counts only if
    /// it names this server's epoch as primary: an epoch has one lineage, in which a
    /// server's durable history only grows, so a late or repeated report is still true.
    pub fn handle_direct(&mut self, now: Time, datagram: &[u8]) {
        self.now = now;
        if self.role != Role::Primary || !Self::is_direct(datagram) {
            return;
        }
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        match Msg::decode(&datagram[DIRECT_PREFIX.len()..]) {
            Ok(Msg::Applied { server, epoch, tid }) if self.primary == Some((self.me, epoch)) => {
                self.on_applied(server, server, epoch, tid)
            }
            _ => self.stats.fenced += 1,
        }
    }

    /// Reports count for the whole view: within one view every primary (the elected one,
    /// then each swap target) continues the same lineage, and a server only reports once it
    /// holds that lineage.
    fn on_applied(&mut self, from: ServerId, server: ServerId, _epoch: Epoch, tid: Tid) {
        if from != server || !self.in_view(from) {
            return;
        }
        let e = self.applied.entry(server).or_default();
        *e = (*e).max(tid);
        self.release_acks();
    }

    /// The highest tid held durably by servers with a majority of the vote weight.
    fn majority_applied(&self) -> Tid {
        let mut tids: Vec<Tid> = self.applied.values().copied().collect();
        tids.sort_unstable();
        tids.dedup();
        for t in tids.into_iter().rev() {
            let holders: Vec<ServerId> = self
                .applied
                .iter()
                .filter(|(_, a)| **a >= t)
                .map(|(s, _)| *s)
                .collect();
            if self.cfg.is_majority(self.cfg.weight_of(&holders)) {
                return t;
            }
        }
        Tid::ZERO
    }

    fn release_acks(&mut self) {
        // Durable on a majority, and here: this server applied it (so it was delivered here).
        // Reports can come straight from the backups, ahead of our own delivery.
        let durable = self.majority_applied().min(self.last);
        if self.role == Role::Primary && durable > self.durable_announced {
            self.durable_announced = durable;
            self.out.push_back(Output::Durable(durable));
        }
        if self.pending.is_empty() && self.dup_waiting.is_empty() {
            return;
        }
        let done: Vec<Tid> = self.pending.range(..=durable).map(|(t, _)| *t).collect();
        for tid in done {
            let p = self.pending.remove(&tid).expect("listed");
            self.pending_keys.remove(&p.key);
            for o in &p.oids {
                if self.pending_serial.get(o) == Some(&tid) {
                    self.pending_serial.remove(o);
                }
            }
            if p.answered {
                continue;
            }
            if let Some(d) = p.delivered_at {
                self.stats.stage_delivered_us += d.since(p.sent_at).as_micros() as u64;
                self.stats.stage_durable_us += self.now.since(d).as_micros() as u64;
                self.stats.stage_samples += 1;
            }
            let result = if p.delivered_regular {
                Ok(Committed {
                    tid,
                    epoch: p.epoch,
                    duplicate: false,
                })
            } else {
                Err(CommitError::Retry)
            };
            let mut first = true;
            for r in p.reqs {
                let res = result.clone().map(|mut c| {
                    c.duplicate = !first;
                    c
                });
                first = false;
                self.reply(r, res);
            }
        }
        let waiting = std::mem::take(&mut self.dup_waiting);
        for (tid, r, epoch) in waiting {
            if tid <= durable {
                self.reply(
                    r,
                    Ok(Committed {
                        tid,
                        epoch,
                        duplicate: true,
                    }),
                );
            } else {
                self.dup_waiting.push((tid, r, epoch));
            }
        }
        // Async mode: requests held for the loss window may go now.
        self.release_held();
    }

    /// Serves held requests while this server is a working primary with room in its window.
    fn release_held(&mut self) {
        while self.role == Role::Primary && !self.stopping && self.async_window_open() {
            let Some((req, c)) = self.held.pop_front() else {
                break;
            };
            self.on_commit_request(req, c);
        }
    }

    fn async_window_open(&self) -> bool {
        match self.cfg.mode {
            CommitMode::Async { window } => (self.pending.len() as u64) < window.max(1),
            CommitMode::Sync => true,
        }
    }

    /// A client asks for a commit; the answer comes later as [`Output::Reply`].
    pub fn handle_commit(&mut self, now: Time, req: ReqId, c: CommitRequest) {
        self.now = now;
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        self.on_commit_request(req, c);
    }

    fn hold(&mut self, req: ReqId, c: CommitRequest) {
        if self.held.len() >= self.cfg.held_max {
            self.reply(req, Err(CommitError::Busy));
        } else {
            self.held.push_back((req, c));
        }
    }

    fn on_commit_request(&mut self, req: ReqId, c: CommitRequest) {
        match self.role {
            Role::Down => {
                return self.reply(req, Err(CommitError::Down("stopped".into())));
            }
            Role::Primary if !self.stopping => {}
            Role::Primary => return self.hold(req, c),
            _ => {
                let component = self.view.as_ref().is_some_and(|v| v.primary_component);
                return match self.primary {
                    Some((p, _)) if p != self.me => {
                        self.reply(req, Err(CommitError::NotPrimary { primary: Some(p) }))
                    }
                    // Ours, starting (catching up after a swap).
                    Some(_) => self.hold(req, c),
                    // An election or a swap is under way: hold until it settles.
                    None if component => self.hold(req, c),
                    None => self.reply(req, Err(CommitError::NotPrimary { primary: None })),
                };
            }
        }
        if !self.async_window_open() {
            return self.hold(req, c);
        }
        if let Err(e) = self.primary_commit(req, c) {
            self.fail(e);
        }
    }

    /// The tid and request number of `client`'s record in the store (its last committed
    /// request), from the cache of client records when it has it.
    fn client_last(&mut self, client: u64) -> Result<Option<(Tid, u64)>, StorageError> {
        if let Some(v) = self.client_cache.get(&client) {
            return Ok(*v);
        }
        let v = self
            .store
            .load(&client_oid(client))?
            .map(|rev| (rev.tid, client_request(rev.data.as_deref())));
        self.cache_client(client, v);
        Ok(v)
    }

    fn cache_client(&mut self, client: u64, v: Option<(Tid, u64)>) {
        if self.client_cache.len() >= CLIENT_CACHE_MAX {
            self.client_cache.clear();
        }
        self.client_cache.insert(client, v);
    }

    /// A transaction was written to the store (or found there already): a cached client
    /// record it rewrites is the store's now, unless the cache holds a newer one (an old
    /// transaction delivered again is applied as already present and must not take the cache
    /// back). A client not cached stays so (the store may hold a newer record than this).
    fn note_client_records(&mut self, txn: &Transaction) {
        for r in &txn.records {
            if let Some(client) = client_of_oid(&r.oid) {
                let older = match self.client_cache.get(&client) {
                    Some(Some((tid, _))) => *tid < txn.tid,
                    Some(None) => true,
                    None => false,
                };
                if older {
                    let v = Some((txn.tid, client_request(r.data.as_deref())));
                    self.client_cache.insert(client, v);
                }
            }
        }
    }

    fn primary_commit(&mut self, req: ReqId, c: CommitRequest) -> Result<(), StorageError> {
        let key = (c.client, c.request);
        if let Some(tid) = self.pending_keys.get(&key) {
            if let Some(p) = self.pending.get_mut(tid) {
                if !p.answered {
                    p.reqs.push(req);
                    return Ok(());
                }
            }
        }
        let epoch = self.primary.map(|(_, e)| e).unwrap_or_default();
        if let Some((rev_tid, last)) = self.client_last(c.client)? {
            if last == c.request {
                if rev_tid <= self.majority_applied()
                    || matches!(self.cfg.mode, CommitMode::Async { .. })
                {
                    self.reply(
                        req,
                        Ok(Committed {
                            tid: rev_tid,
                            epoch,
                            duplicate: true,
                        }),
                    );
                } else {
                    self.dup_waiting.push((rev_tid, req, epoch));
                }
                return Ok(());
            }
            if last > c.request {
                self.reply(
                    req,
                    Err(CommitError::Stale {
                        request: c.request,
                        last,
                    }),
                );
                return Ok(());
            }
        }
        let mut seen = BTreeSet::new();
        for r in &c.records {
            if is_replica_owned(&r.oid) {
                self.reply(
                    req,
                    Err(CommitError::Invalid(format!("reserved oid {}", r.oid))),
                );
                return Ok(());
            }
            if !seen.insert(r.oid.clone()) {
                self.reply(
                    req,
                    Err(CommitError::Invalid(format!("oid {} twice", r.oid))),
                );
                return Ok(());
            }
            if let Some(expected) = r.expected_serial {
                let actual = match self.pending_serial.get(&r.oid) {
                    Some(t) => *t,
                    None => self.store.load(&r.oid)?.map(|v| v.tid).unwrap_or(Tid::ZERO),
                };
                if actual != expected {
                    self.reply(
                        req,
                        Err(CommitError::Conflict {
                            oid: r.oid.clone(),
                            expected,
                            actual,
                        }),
                    );
                    return Ok(());
                }
            }
        }
        let next = Tid(self.last_assigned.0 + 1);
        let tid = match c.tid {
            TidChoice::Next => next,
            TidChoice::AtLeast(t) => next.max(t),
            TidChoice::Exactly(t) if t >= next => t,
            TidChoice::Exactly(t) => {
                let last = self.last_assigned;
                self.reply(
                    req,
                    Err(CommitError::Invalid(format!(
                        "tid {t} is not above the last tid {last}"
                    ))),
                );
                return Ok(());
            }
        };
        if tid.0 >= crate::COUNTER_MAX {
            self.reply(
                req,
                Err(CommitError::Invalid(format!("tid {tid} is out of range"))),
            );
            return Ok(());
        }
        // Every replica must be able to apply what the primary sends: refuse here what a
        // store would refuse there.
        let size: usize = c.meta.user.len()
            + c.meta.description.len()
            + c.meta.extension.len()
            + c.records
                .iter()
                .map(|r| 16 + r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len()))
                .sum::<usize>();
        if size > self.cfg.commit_bytes_max {
            let max = self.cfg.commit_bytes_max;
            self.reply(
                req,
                Err(CommitError::Invalid(format!(
                    "transaction of {size} bytes, max {max}"
                ))),
            );
            return Ok(());
        }
        let mut records: Vec<Record> = c
            .records
            .into_iter()
            .map(|r| Record {
                expected_serial: None,
                ..r
            })
            .collect();
        let oids: Vec<Oid> = records.iter().map(|r| r.oid.clone()).collect();
        records.push(Record {
            oid: client_oid(c.client),
            data: Some(Bytes::copy_from_slice(&c.request.to_be_bytes())),
            expected_serial: None,
        });
        let txn = Transaction {
            tid,
            meta: c.meta,
            records,
        };
        if let Err(e) = storage::validate_txn(&txn) {
            self.reply(req, Err(CommitError::Invalid(e.to_string())));
            return Ok(());
        }
        for o in &oids {
            self.pending_serial.insert(o.clone(), tid);
        }
        self.pending_keys.insert(key, tid);
        self.pending.insert(
            tid,
            Pending {
                reqs: vec![req],
                epoch: self.primary.map(|(_, e)| e).unwrap_or_default(),
                key,
                oids,
                delivered_regular: false,
                answered: false,
                sent_at: self.now,
                delivered_at: None,
            },
        );
        self.primary_send(txn, Some(req))
    }

    /// Sends a transaction as primary: async mode commits it locally first and answers.
    fn primary_send(&mut self, txn: Transaction, req: Option<ReqId>) -> Result<(), StorageError> {
        let epoch = self.primary.map(|(_, e)| e).unwrap_or_default();
        if let CommitMode::Async { .. } = self.cfg.mode {
            self.store.commit(&txn)?;
            self.note_client_records(&txn);
            self.last = txn.tid;
            if txn.records.iter().any(|r| r.oid == lineage_oid()) {
                // The epoch marker: the store's lineage now names this epoch.
                self.after_store_change()?;
            }
            if let Some(req) = req {
                if let Some(p) = self.pending.get_mut(&txn.tid) {
                    p.answered = true;
                }
                self.reply(
                    req,
                    Ok(Committed {
                        tid: txn.tid,
                        epoch,
                        duplicate: false,
                    }),
                );
            }
        }
        let prev = self.last_assigned;
        self.last_assigned = txn.tid;
        self.primary_last_known = self.primary_last_known.max(txn.tid);
        // Sync mode needs no SAFE delivery: the answer waits for servers with a majority of
        // the vote to report the commit durable, which says more than "received by every
        // member". AGREED lets every server apply as soon as the commit arrives, two token
        // rotations earlier. Async mode answered before sending; SAFE there keeps a backup
        // from applying what the rest of its view may never see, which bounds what a
        // failover moves to the lost archive.
        let service = match self.cfg.mode {
            CommitMode::Sync => Service::Agreed,
            CommitMode::Async { .. } => Service::Safe,
        };
        self.multicast(service, Msg::Commit { epoch, prev, txn });
        Ok(())
    }

    // ---- swap ----------------------------------------------------------------------------

    /// An operator asks for `to` to become primary. Any server may be asked; it forwards the
    /// request through the ring. Fails if there is no working primary in view or `to` may
    /// not become primary.
    pub fn request_swap(&mut self, now: Time, to: ServerId) -> Result<(), SwapError> {
        self.now = now;
        let Some((_, epoch)) = self.primary else {
            return Err(SwapError::NoPrimary);
        };
        if !self.cfg.eligible(to) {
            return Err(SwapError::NotEligible(to));
        }
        if !self.in_view(to) {
            return Err(SwapError::NotInView(to));
        }
        self.multicast(Service::Agreed, Msg::SwapRequest { epoch, to });
        Ok(())
    }

    fn on_swap_request(&mut self, epoch: Epoch, to: ServerId) -> Result<(), StorageError> {
        let Some((p, cur)) = self.primary else {
            return Ok(());
        };
        if cur != epoch || p == to || !self.in_view(to) || !self.cfg.eligible(to) {
            return Ok(());
        }
        if !self.view.as_ref().is_some_and(|v| v.regular) {
            return Ok(());
        }
        if p == self.me && self.role == Role::Primary && !self.stopping {
            // Stop assigning tids; the handover is ordered after every commit already sent.
            self.stopping = true;
            tracing::info!(server = self.me, to, last = %self.last_assigned, "swap: handing over");
            self.multicast(
                Service::Agreed,
                Msg::Handover {
                    epoch,
                    to,
                    last: self.last_assigned,
                },
            );
        }
        Ok(())
    }

    fn on_handover(
        &mut self,
        from: ServerId,
        epoch: Epoch,
        to: ServerId,
        last: Tid,
    ) -> Result<(), StorageError> {
        if self.primary != Some((from, epoch)) || !self.in_view(to) {
            return Ok(());
        }
        let new_epoch = Epoch(epoch.0 + 1);
        // The old primary's lineage: the one it was elected on, plus its own epoch.
        let Some(prev) = self.election.clone() else {
            return Ok(());
        };
        let mut base_lineage = prev.base_lineage;
        base_lineage.push(EpochStart {
            epoch,
            base: prev.base,
        });
        if base_lineage.len() > LINEAGE_MAX {
            base_lineage.drain(..base_lineage.len() - LINEAGE_MAX);
        }
        let held: Vec<(ReqId, CommitRequest)> = if from == self.me {
            self.held.drain(..).collect()
        } else {
            Vec::new()
        };
        self.primary = None;
        self.election = Some(Election {
            primary: to,
            epoch: new_epoch,
            base: last,
            base_lineage,
            donor: from,
            tid_floor: Tid(last.0 + 1),
            promises: BTreeSet::new(),
        });
        if from == self.me {
            self.stopping = false;
            self.set_role(Role::Backup);
        }
        for (req, _) in held {
            self.reply(req, Err(CommitError::NotPrimary { primary: Some(to) }));
        }
        self.promise(new_epoch)
    }

    // ---- recovery: donor side ------------------------------------------------------------

    fn on_fetch(
        &mut self,
        who: ServerId,
        donor: ServerId,
        fetch_id: u64,
        chunks: u32,
        req: FetchReq,
    ) -> Result<(), StorageError> {
        if donor != self.me || !self.in_view(who) {
            return Ok(());
        }
        let chunk_bytes = self.cfg.recovery.chunk_bytes.max(1);
        let chunks = chunks.clamp(1, 64);
        let mut bodies = Vec::new();
        match req {
            FetchReq::Txns { after, until } => {
                let range = TidRange::new(Some(Tid(after.0 + 1)), until);
                let it = match self.store.iter(range, Direction::Forward) {
                    Ok(it) => it,
                    Err(StorageError::HistoryTruncated { horizon }) => {
                        bodies.push(ChunkBody::Unavailable { horizon });
                        Box::new(std::iter::empty())
                    }
                    Err(e) => return Err(e),
                };
                let mut it = it.peekable();
                let mut prev = after;
                while bodies.len() < chunks as usize
                    && !matches!(bodies.last(), Some(ChunkBody::Unavailable { .. }))
                {
                    let mut txns = Vec::new();
                    let mut size = 0;
                    while size < chunk_bytes {
                        let Some(t) = it.next() else { break };
                        let t = t?;
                        size += 64
                            + t.records
                                .iter()
                                .map(|r| {
                                    r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len())
                                })
                                .sum::<usize>();
                        let p = prev;
                        prev = t.tid;
                        txns.push((p, t));
                    }
                    let done = it.peek().is_none();
                    bodies.push(ChunkBody::Txns { txns, done });
                    if done {
                        break;
                    }
                }
            }
            FetchReq::Objects { since, after_oid } => {
                let fr = self.store.fast_recovery(since, after_oid.as_ref())?;
                let consistent_at = fr.consistent_at;
                let mut it = fr.revisions.peekable();
                while bodies.len() < chunks as usize {
                    let mut revisions = Vec::new();
                    let mut size = 0;
                    while size < chunk_bytes {
                        let Some(r) = it.next() else { break };
                        let r = r?;
                        size +=
                            32 + r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len());
                        revisions.push(r);
                    }
                    let done = it.peek().is_none();
                    bodies.push(ChunkBody::Objects {
                        consistent_at,
                        lineage: self.lineage.clone(),
                        revisions,
                        done,
                    });
                    if done {
                        break;
                    }
                }
            }
        }
        for body in bodies {
            self.multicast(
                Service::Agreed,
                Msg::Chunk {
                    to: who,
                    fetch_id,
                    body,
                },
            );
        }
        Ok(())
    }

    // ---- recovery: recipient side ---------------------------------------------------------

    fn on_chunk(
        &mut self,
        now: Time,
        from: ServerId,
        to: ServerId,
        fetch_id: u64,
        body: ChunkBody,
    ) -> Result<(), StorageError> {
        if to != self.me {
            return Ok(());
        }
        let Some(rec) = self.recovery.clone() else {
            return Ok(());
        };
        if rec.fetch_id != fetch_id || rec.donor != from {
            return Ok(());
        }
        self.stats.recovery_chunks += 1;
        tracing::debug!(server = self.me, last = %self.last, step = ?rec.step, chunk = ?ChunkSummary(&body), "recovery chunk");
        let mut done = false;
        match (body, &rec.step) {
            (ChunkBody::Unavailable { .. }, RecoveryStep::Txns { .. }) => {
                // The donor packed that history away: recover by objects instead.
                self.set_step(RecoveryStep::Objects { after_oid: None });
                self.fetch();
                return Ok(());
            }
            (ChunkBody::Unavailable { .. }, _) => return self.need_checkpoint(rec.donor),
            (ChunkBody::Txns { txns, done: d }, RecoveryStep::Txns { .. }) => {
                // One batch, one sync per chunk: a recovering server must keep passing the
                // token in time.
                let fresh: Vec<(Tid, Transaction)> = txns
                    .into_iter()
                    .filter(|(_, t)| t.tid > self.last)
                    .collect();
                let results = self.store.apply_batch(&fresh);
                for ((_, t), r) in fresh.iter().zip(results) {
                    match r? {
                        ApplyOutcome::Applied | ApplyOutcome::AlreadyPresent => {}
                    }
                    self.last = t.tid;
                    self.after_apply(now, t)?;
                }
                done = d;
            }
            (ChunkBody::Txns { txns, done: d }, RecoveryStep::FillTxns { until, .. }) => {
                let until = *until;
                if let Some((_, t)) = txns.last() {
                    let after = t.tid;
                    self.set_step(RecoveryStep::FillTxns { after, until });
                }
                let mut revs = Vec::new();
                for (_, t) in txns {
                    for r in t.records {
                        revs.push(Revision {
                            oid: r.oid,
                            tid: t.tid,
                            data: r.data,
                        });
                    }
                }
                if !revs.is_empty() {
                    self.store.fill(&revs)?;
                }
                if d {
                    self.finish_fill(until)?;
                    self.set_step(RecoveryStep::Txns { until: None });
                    self.fetch();
                    return Ok(());
                }
            }
            (
                ChunkBody::Objects {
                    consistent_at,
                    lineage,
                    revisions,
                    done: d,
                },
                RecoveryStep::Objects { .. },
            ) => {
                if self.durable.fill_since.is_none() {
                    self.durable.fill_since = Some(consistent_at);
                    self.durable.fill_lineage = lineage;
                    self.persist()?;
                }
                let last_oid = revisions.last().map(|r| r.oid.clone());
                if !revisions.is_empty() {
                    self.store.fill(&revisions)?;
                }
                if let Some(o) = last_oid {
                    self.set_step(RecoveryStep::Objects { after_oid: Some(o) });
                }
                if d {
                    let since = self.durable.fill_since.unwrap_or(consistent_at);
                    if since >= consistent_at {
                        self.finish_fill(consistent_at)?;
                        self.set_step(RecoveryStep::Txns { until: None });
                    } else {
                        self.set_step(RecoveryStep::FillTxns {
                            after: since,
                            until: consistent_at,
                        });
                    }
                    self.fetch();
                    return Ok(());
                }
            }
            _ => {
                self.stats.fenced += 1;
                return Ok(());
            }
        }
        if done {
            return self.drain_backlog(now);
        }
        if let Some(r) = self.recovery.as_mut() {
            r.outstanding = r.outstanding.saturating_sub(1);
            if r.outstanding == 0 {
                self.fetch();
            }
        }
        Ok(())
    }

    fn set_step(&mut self, step: RecoveryStep) {
        if let Some(r) = self.recovery.as_mut() {
            r.step = step;
        }
    }

    fn finish_fill(&mut self, at: Tid) -> Result<(), StorageError> {
        let at = at.max(self.last);
        self.store.fill_finish(at)?;
        self.durable.fill_since = None;
        self.durable.fill_lineage.clear();
        self.persist()?;
        self.last = self.store.last_transaction()?;
        self.after_store_change()?;
        tracing::info!(server = self.me, at = %self.last, "object recovery finished");
        Ok(())
    }

    /// The transaction stream reached the donor's end: apply the commits buffered meanwhile.
    fn drain_backlog(&mut self, now: Time) -> Result<(), StorageError> {
        if self.backlog_overflowed {
            self.backlog_overflowed = false;
            self.fetch();
            return Ok(());
        }
        // The chained run at the front of the backlog, applied as one batch.
        let mut run: Vec<(Tid, Transaction)> = Vec::new();
        let mut end = self.last;
        while let Some((prev, t)) = self.backlog.front() {
            if t.tid <= end {
                self.backlog.pop_front();
                continue;
            }
            if *prev != end {
                break;
            }
            end = t.tid;
            run.push(self.backlog.pop_front().expect("front"));
        }
        tracing::debug!(server = self.me, last = %self.last, run = run.len(), left = self.backlog.len(), "backlog drained");
        let results = self.store.apply_batch(&run);
        for ((_, t), r) in run.iter().zip(results) {
            r?;
            self.last = t.tid;
            self.after_apply(now, t)?;
        }
        if !self.backlog.is_empty() {
            // Still a gap (the donor was behind what we buffered): fetch again.
            self.fetch();
            return Ok(());
        }
        tracing::info!(server = self.me, last = %self.last, "caught up");
        self.caught_up();
        self.maybe_become_primary()
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
    /// (the checker checks something), and a fresh replica passes.
    #[test]
    fn invariants_catch_each_broken_state() {
        let fresh = || {
            let cfg = ReplicaConfig::uniform(3, crate::CommitMode::Sync);
            Replica::new(cfg, 0, storage::MemStorage::default()).expect("open")
        };
        fresh().check_invariants();
        type Break = Box<dyn Fn(&mut Replica<storage::MemStorage>)>;
        let broken: Vec<(&str, Break)> = vec![
            ("Down without a reason", Box::new(|r| r.role = Role::Down)),
            (
                "primary role without a working primary",
                Box::new(|r| r.role = Role::Primary),
            ),
            (
                "another server is the working primary",
                Box::new(|r| {
                    r.role = Role::Primary;
                    r.primary = Some((1, Epoch(1)));
                }),
            ),
            (
                "primary outside a primary component",
                Box::new(|r| {
                    r.role = Role::Primary;
                    r.primary = Some((0, Epoch(1)));
                }),
            ),
            (
                "above its durable promise",
                Box::new(|r| {
                    r.role = Role::Primary;
                    r.primary = Some((0, Epoch(1)));
                    r.view = Some(CurrentView {
                        members: vec![0, 1, 2],
                        regular: true,
                        primary_component: true,
                    });
                }),
            ),
            (
                "object fill open",
                Box::new(|r| {
                    r.role = Role::Primary;
                    r.primary = Some((0, Epoch(1)));
                    r.durable.promised = Epoch(1);
                    r.view = Some(CurrentView {
                        members: vec![0, 1, 2],
                        regular: true,
                        primary_component: true,
                    });
                    r.durable.fill_since = Some(Tid(3));
                }),
            ),
            (
                "a tid it never assigned",
                Box::new(|r| {
                    r.role = Role::Primary;
                    r.primary = Some((0, Epoch(1)));
                    r.durable.promised = Epoch(1);
                    r.view = Some(CurrentView {
                        members: vec![0, 1, 2],
                        regular: true,
                        primary_component: true,
                    });
                    r.last = Tid(5);
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
                "backlog out of tid order",
                Box::new(|r| {
                    let txn = |t: u64| Transaction {
                        tid: Tid(t),
                        meta: TxnMeta::default(),
                        records: Vec::new(),
                    };
                    r.backlog = VecDeque::from([(Tid(1), txn(3)), (Tid(3), txn(2))]);
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
