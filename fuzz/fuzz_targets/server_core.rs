//! Four `servercore::ServerCore`s (three voters and a spare, in-memory stores) wired together
//! in memory, driven by the input as a list of operations: the network (deliver, duplicate,
//! misroute, drop, reorder, cut off servers), the clock (time passes, expired timers fire),
//! hostile traffic (arbitrary datagrams; live packets edited; gcs data packets re-framed around
//! an arbitrary, edited or replayed replica or checkpoint payload, so that it gets past the gcs
//! layer and reaches the server's channels), client and operator requests (commits with
//! arbitrary records, membership and voter changes, swaps, reads, status), the checkpoint
//! shell (commands answered honestly, with failures, with wrong contents, or never; reports
//! with arbitrary ids), and the process (crashes, restarts, lost disks, failing stores).
//!
//! The first byte sets the cluster up: unless its bit 0 is set, the cluster first forms its
//! ring and elects a primary over a calm network, so that the operations start from a working
//! cluster; bit 1 makes commits asynchronous, bit 2 gives stores that lose unsynced writes in
//! a crash, bit 3 lets an idle ring pass the token a while before holding it. After the last
//! operation the network heals and the cluster runs on for a while.
//!
//! Property: nothing panics (the cores check the replica's invariants after every input in
//! this configuration, and the gcs nodes their own with debug assertions on, so a broken
//! invariant is a crash too), and the work per input is bounded (operations, deliveries per
//! operation, datagrams in flight and timer rounds are all capped).
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use gcs::{Dest, Node, ProcId, Service, Time};
use libfuzzer_sys::fuzz_target;
use replica::{
    CommitMode, CommitRequest, GroupKind, RecoveryPolicy, ReplicaConfig, ReqId, Role, ServerSpec,
    TidChoice,
};
use servercore::checkpoint::{CheckpointCommand, CkptMsg, Manifest};
use servercore::envelope::{self, Channel};
use servercore::membership::{AddedServer, Configured, MembershipChange};
use servercore::{CoreOptions, Output};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use storage::{MemOptions, MemStorage, Oid, Record, Storage, Tid, TxnMeta};

#[path = "edits.rs"]
mod edits;

type Core = servercore::ServerCore<MemStorage>;

/// Servers 0, 1 and 2 vote; server 3 is a spare a voter change may give a vote.
const SERVERS: usize = 4;
/// Ids operations name: the servers, and a few that are not (added, removed, unknown).
const IDS: u8 = 7;
/// Operations taken from one input.
const OPS_MAX: usize = 400;
/// Datagrams in flight; beyond, the oldest are lost (duplications could grow it unbounded).
const WIRE_MAX: usize = 1024;
/// Deliveries of one hop the input asks for.
const FLOW_MAX: usize = 64;
/// A network hop's latency.
const HOP: Duration = Duration::from_micros(200);
/// Deliveries the calm network may take to form the cluster before the operations, and to
/// run on after them.
const WARM_UP_DELIVERIES: usize = 20_000;
const SETTLE_DELIVERIES: usize = 10_000;
/// Steps (hops or jumps to a deadline) of one such run.
const RUN_STEPS: usize = 5_000;
/// Rounds of expired timers at one instant (a timer may set another for the same instant).
const TIMER_ROUNDS: usize = 4;
/// Recent whole ring payloads kept for replays.
const HISTORY: usize = 32;
/// Checkpoint transfer ids kept for forged messages and reports.
const KNOWN_IDS: usize = 16;
/// The largest simulated checkpoint file a recipient takes (an honest donor makes far smaller).
const SIDE_FILE_MAX: usize = 64 * 1024;

/// The input, read front to back; an exhausted input reads as zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 != 0
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        b
    }

    /// Bytes whose length the input gives first (at most `max`).
    fn blob(&mut self, max: usize) -> Bytes {
        let n = usize::from(self.byte()) % (max + 1);
        Bytes::copy_from_slice(self.bytes(n))
    }

    /// A counter: small, at the top of its range (where `+ 1` overflows), at the bound gcs and
    /// the replica put on counters (`1 << 62`), or anywhere.
    fn counter(&mut self) -> u64 {
        match self.byte() % 4 {
            0 => u64::from(self.byte()),
            1 => u64::MAX - u64::from(self.byte() % 4),
            2 => (1 << 62) - 1 + u64::from(self.byte() % 3),
            _ => self.u64(),
        }
    }

    fn server(&mut self) -> usize {
        usize::from(self.byte()) % SERVERS
    }

    fn id(&mut self) -> u32 {
        u32::from(self.byte() % IDS)
    }
}

// ---- gcs data packets ----------------------------------------------------------------------
//
// To get an arbitrary payload past the gcs layer, a live data packet keeps its header, ring
// and sequence number (which the receiving node checks against its ring) and gets a new
// body: one whole message. The offsets below mirror gcs's encoding (wire version 1); every
// packet re-framed from one gcs accepts is checked with `gcs::wire::validate`, so a change of
// format there stops this target at once instead of making it forge packets that are all
// dropped.

/// Header (16), ring (20), sequence number (8), body tag (1).
const APP_BODY: usize = 45;
/// Then the safe flag (1) and the chunk count (2); the first chunk's header is 13 bytes.
const FIRST_CHUNK: usize = APP_BODY + 3;
const FIRST_DATA: usize = FIRST_CHUNK + 13;

/// Whether `d` is a data packet of application messages (not a recovered one): magic "SB"
/// (little-endian), wire version 1, kind 1 (data), body tag 0 (application).
fn app_packet(d: &[u8]) -> bool {
    d.len() >= FIRST_CHUNK && d[0..4] == [0x42, 0x53, 1, 1] && d[APP_BODY - 1] == 0
}

fn le32(d: &[u8], at: usize) -> usize {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]) as usize
}

/// The first message of an application data packet, if it is a whole one.
fn first_message(d: &[u8]) -> Option<&[u8]> {
    if !app_packet(d) || d.len() < FIRST_DATA || (d[APP_BODY + 1] == 0 && d[APP_BODY + 2] == 0) {
        return None;
    }
    let (total, offset, len) = (
        le32(d, FIRST_CHUNK + 1),
        le32(d, FIRST_CHUNK + 5),
        le32(d, FIRST_CHUNK + 9),
    );
    (offset == 0 && len == total && FIRST_DATA + len <= d.len())
        .then(|| &d[FIRST_DATA..FIRST_DATA + len])
}

/// The sender's server id in a gcs packet's header.
fn packet_sender(d: &[u8]) -> Option<u32> {
    (d.len() >= 8).then(|| le32(d, 4) as u32)
}

/// Application data packet `d` with its body replaced by `payload`, one message of `service`.
fn reframe(d: &[u8], service: Service, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(FIRST_DATA + payload.len());
    b.put_slice(&d[..APP_BODY]);
    b.put_u8(u8::from(service == Service::Safe));
    b.put_u16_le(1);
    b.put_u8(service.to_u8());
    b.put_u32_le(payload.len() as u32);
    b.put_u32_le(0);
    b.put_u32_le(payload.len() as u32);
    b.put_slice(payload);
    let b = b.freeze();
    assert!(
        gcs::wire::validate(b.clone()).is_ok(),
        "the target forges data packets gcs no longer accepts: update its offsets"
    );
    b
}

// ---- the cluster ---------------------------------------------------------------------------

struct Datagram {
    from: usize,
    to: usize,
    bytes: Bytes,
}

struct Server {
    core: Option<Core>,
    /// The store while the server is stopped.
    disk: Option<MemStorage>,
    incarnation: u64,
    /// The disk was lost: the next start is after a disk loss.
    disk_lost: bool,
    /// Checkpoint commands not answered yet, oldest first.
    commands: VecDeque<CheckpointCommand>,
}

struct Cluster {
    servers: Vec<Server>,
    cfg: ReplicaConfig,
    gcs: gcs::Config,
    /// Stores make every write durable at once (else a crash loses the unsynced ones).
    sync: bool,
    now: Time,
    wire: VecDeque<Datagram>,
    /// Servers cut off from the others (a bit per server); 0: no partition.
    cut: u8,
    next_req: u64,
    known_ids: Vec<u64>,
    history: VecDeque<Bytes>,
    /// The checkpoint shell: files made by donors, side files of recipients, and the store
    /// each made checkpoint stands for (by recipient id and transfer id).
    files_out: BTreeMap<(usize, u64), Bytes>,
    files_in: BTreeSet<(usize, u64)>,
    underneath: BTreeMap<(u32, u64), MemStorage>,
}

fn addr(id: u32, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port.wrapping_add(id as u16)))
}

impl Cluster {
    fn new(setup: u8) -> Cluster {
        let servers = (0..SERVERS as u32)
            .map(|id| {
                let spare = id == SERVERS as u32 - 1;
                ServerSpec {
                    id,
                    name: format!("s{id}"),
                    group: if spare { replica::ADDED_GROUP } else { "main" }.into(),
                    kind: if spare {
                        GroupKind::Remote
                    } else {
                        GroupKind::Failover
                    },
                    weight: u32::from(!spare),
                }
            })
            .collect();
        let mode = if setup & 2 != 0 {
            CommitMode::Async { window: 3 }
        } else {
            CommitMode::Sync
        };
        let mut cfg = ReplicaConfig::new(servers, mode);
        // Small thresholds, so that a restarted or wiped server recovers by objects or by
        // checkpoint within a few commits.
        cfg.recovery = RecoveryPolicy {
            fast_after: 6,
            checkpoint_after: 12,
            chunk_bytes: 256,
            chunks_per_request: 2,
        };
        cfg.held_max = 8;
        cfg.commit_bytes_max = 8 * 1024;
        // The simulator's timeouts, but an idle ring holds the token as long as it may (at
        // once, unless the setup says otherwise, and 30 ms each time): every delivery costs
        // the fuzzer time, and a spinning idle token would take most of it. Small packets,
        // windows and queues, so that messages are fragmented and the send queue pushes back.
        let gcs = gcs::Config {
            token_timeout: Duration::from_millis(300),
            token_retransmit_timeout: Duration::from_millis(40),
            token_hold: Duration::from_millis(30),
            idle_before_hold: Duration::from_millis(if setup & 8 != 0 { 20 } else { 0 }),
            join_timeout: Duration::from_millis(30),
            consensus_timeout: Duration::from_millis(300),
            merge_detect_interval: Duration::from_millis(150),
            pause_grace: Duration::from_millis(150),
            max_packet_size: 1024,
            personal_window: 16,
            global_window: 64,
            accelerated_window: 4,
            max_message_size: 16 * 1024,
            send_queue_max_bytes: 16 * 1024,
            send_queue_max_delay: Duration::from_millis(20),
            recv_window_max: 256,
            rtr_max: 64,
        };
        let sync = setup & 4 == 0;
        let mut c = Cluster {
            servers: (0..SERVERS)
                .map(|_| Server {
                    core: None,
                    disk: Some(MemStorage::new(MemOptions { sync })),
                    incarnation: 0,
                    disk_lost: false,
                    commands: VecDeque::new(),
                })
                .collect(),
            cfg,
            gcs,
            sync,
            now: Time(1),
            wire: VecDeque::new(),
            cut: 0,
            next_req: 0,
            known_ids: Vec::new(),
            history: VecDeque::new(),
            files_out: BTreeMap::new(),
            files_in: BTreeSet::new(),
            underneath: BTreeMap::new(),
        };
        for i in 0..SERVERS {
            c.start(i);
        }
        c
    }

    fn configured(&self) -> Configured {
        Configured {
            daemons: (0..SERVERS as u32).map(|id| (id, addr(id, 7400))).collect(),
            replica: self.cfg.clone(),
        }
    }

    /// Starts a stopped server over its disk, as a new incarnation.
    fn start(&mut self, i: usize) {
        let Some(store) = self.servers[i].disk.take() else {
            return;
        };
        let lost = self.servers[i].disk_lost;
        let r = match servercore::open_replica(self.cfg.clone(), i as u32, store, lost) {
            Ok(r) => r,
            // A failing store is refused and stays on the disk, as `standby-server` leaves it.
            Err(servercore::OpenError::NotWritable { store, .. }) => {
                self.servers[i].disk = Some(store);
                return;
            }
            // An in-memory store always reads; if not, the server stays down for good.
            Err(servercore::OpenError::Replica(_)) => return,
        };
        self.servers[i].incarnation += 1;
        let me = ProcId::new(i as u32, self.servers[i].incarnation);
        let Ok(node) = Node::new(self.gcs.clone(), me, self.now) else {
            return;
        };
        let opts = CoreOptions {
            checkpoints: true,
            check_invariants: true,
        };
        self.servers[i].disk_lost = false;
        self.servers[i].core = Some(Core::new(node, r, self.configured(), opts));
        self.drain(i);
    }

    /// Stops a server as a crash does: what its store had not made durable is lost.
    fn crash(&mut self, i: usize, wipe: bool) {
        if let Some(core) = self.servers[i].core.take() {
            let store = core.into_store();
            store.crash();
            self.servers[i].disk = Some(store);
        }
        if wipe {
            let sync = self.sync;
            self.servers[i].disk = Some(MemStorage::new(MemOptions { sync }));
            self.servers[i].disk_lost = true;
        }
        self.servers[i].commands.clear();
        self.files_out.retain(|k, _| k.0 != i);
        self.files_in.retain(|k| k.0 != i);
        self.underneath.retain(|k, _| k.0 != i as u32);
    }

    fn core(&mut self, i: usize) -> Option<&mut Core> {
        self.servers[i].core.as_mut()
    }

    /// Takes every output of server `i`: datagrams go on the wire, checkpoint commands to the
    /// shell's queue; the rest is the application's.
    fn drain(&mut self, i: usize) {
        let mut outs = Vec::new();
        let now = self.now;
        if let Some(core) = self.core(i) {
            while let Some(o) = core.poll_output() {
                // Store syncs return at once (the in-memory store syncs every write).
                match o {
                    Output::SyncStore { id } => core.store_synced(now, id, Ok(())),
                    o => outs.push(o),
                }
            }
        }
        for o in outs {
            match o {
                Output::Transmit { dest, bytes } => {
                    if let Some(m) = first_message(&bytes) {
                        if self.history.len() == HISTORY {
                            self.history.pop_front();
                        }
                        self.history.push_back(Bytes::copy_from_slice(m));
                    }
                    let to: Vec<usize> = match dest {
                        Dest::All => (0..SERVERS).filter(|j| *j != i).collect(),
                        Dest::Node(n) => Some(n as usize)
                            .filter(|j| *j < SERVERS && *j != i)
                            .into_iter()
                            .collect(),
                    };
                    for to in to {
                        self.send(i, to, bytes.clone());
                    }
                }
                Output::Checkpoint(c) => {
                    let id = match &c {
                        CheckpointCommand::Make { id, .. }
                        | CheckpointCommand::Discard { id }
                        | CheckpointCommand::Prepare { id, .. }
                        | CheckpointCommand::Fetch { id, .. }
                        | CheckpointCommand::Abandon { id } => *id,
                    };
                    if !self.known_ids.contains(&id) {
                        if self.known_ids.len() == KNOWN_IDS {
                            self.known_ids.remove(0);
                        }
                        self.known_ids.push(id);
                    }
                    self.servers[i].commands.push_back(c);
                }
                Output::Peers { .. }
                | Output::Event(_)
                | Output::Reply { .. }
                | Output::SyncStore { .. } => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Bytes) {
        if self.wire.len() == WIRE_MAX {
            self.wire.pop_front();
        }
        self.wire.push_back(Datagram { from, to, bytes });
    }

    /// Hands a datagram to its recipient, unless a partition or a stopped server loses it.
    fn deliver(&mut self, d: Datagram) {
        let side = |s: usize| self.cut >> s & 1;
        if side(d.from) != side(d.to) {
            return;
        }
        let now = self.now;
        if let Some(core) = self.core(d.to) {
            core.handle_packet(now, d.bytes);
            self.drain(d.to);
        }
    }

    /// Every server whose deadline passed handles its timeout.
    fn fire_timers(&mut self) {
        let now = self.now;
        for _ in 0..TIMER_ROUNDS {
            let mut fired = false;
            for i in 0..SERVERS {
                if let Some(core) = self.core(i) {
                    if core.poll_deadline().is_some_and(|t| t <= now) {
                        core.handle_timeout(now);
                        fired = true;
                        self.drain(i);
                    }
                }
            }
            if !fired {
                return;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
        self.fire_timers();
    }

    /// One hop of the calm network: the datagrams in flight now (at most `n`, oldest first)
    /// arrive, the shell answers every checkpoint command honestly, and a hop's latency
    /// passes. What the deliveries send arrives at the next hop: a token takes time to go
    /// round, so an idle ring does not spin without the clock moving.
    fn hop(&mut self, n: usize) {
        for _ in 0..n.min(self.wire.len()) {
            let Some(d) = self.wire.pop_front() else {
                break;
            };
            self.deliver(d);
        }
        for i in 0..SERVERS {
            while let Some(c) = self.servers[i].commands.pop_front() {
                self.answer(i, c, Answer::Honest, &mut Input { data: &[] });
            }
        }
        self.advance(HOP);
    }

    /// The earliest deadline of a running server.
    fn next_deadline(&self) -> Option<Time> {
        self.servers
            .iter()
            .filter_map(|s| s.core.as_ref()?.poll_deadline())
            .min()
    }

    /// Jumps to the next deadline (no further than `limit` ahead, and at least a microsecond
    /// on, so that time moves even if a deadline stays in the past) and fires the timers.
    fn skip_to_deadline(&mut self, limit: Duration) {
        let cap = self.now.saturating_add(limit);
        let soonest = self.now.saturating_add(Duration::from_micros(1)).min(cap);
        let next = self.next_deadline().unwrap_or(cap).min(cap);
        self.now = next.max(soonest);
        self.fire_timers();
    }

    /// Runs the calm network for `span` of virtual time or until `done` (at most `budget`
    /// deliveries and `RUN_STEPS` steps): hops while datagrams fly, jumps to the next deadline
    /// while none does.
    fn run(&mut self, span: Duration, mut budget: usize, done: impl Fn(&Cluster) -> bool) {
        let end = self.now.saturating_add(span);
        for _ in 0..RUN_STEPS {
            if self.now >= end || budget == 0 || done(self) {
                return;
            }
            if self.wire.is_empty() {
                self.skip_to_deadline(end.since(self.now));
            } else {
                budget = budget.saturating_sub(self.wire.len());
                self.hop(usize::MAX);
            }
        }
    }

    /// Whether the cluster has formed: every server in one view, one primary.
    fn formed(&self) -> bool {
        let mut primaries = 0;
        for s in &self.servers {
            let Some(core) = &s.core else {
                return false;
            };
            if core.view_members().len() != SERVERS {
                return false;
            }
            match core.replica().role() {
                Role::Primary => primaries += 1,
                Role::Backup => {}
                _ => return false,
            }
        }
        primaries == 1
    }

    fn pick_id(&self, inp: &mut Input) -> u64 {
        let b = inp.byte();
        if b & 0x80 == 0 && !self.known_ids.is_empty() {
            self.known_ids[usize::from(b) % self.known_ids.len()]
        } else {
            inp.counter()
        }
    }

    /// A checkpoint-transfer message with fields near the live transfers' or anywhere.
    fn forged_ckpt(&self, inp: &mut Input, sender: u32) -> CkptMsg {
        let kind = inp.byte();
        let to = if kind & 0x10 != 0 { inp.id() } else { sender };
        let id = self.pick_id(inp);
        match kind % 4 {
            0 => CkptMsg::Request {
                from: sender,
                donor: inp.id(),
                id,
            },
            1 | 2 => {
                let tid = Tid(inp.counter());
                let files = (0..inp.byte() % 3)
                    .map(|_| (file_name(inp), inp.counter(), inp.u16().into()))
                    .collect();
                // A source naming the sender (as the honest shell writes it) or any bytes.
                let source = if kind % 4 == 1 {
                    Bytes::from(format!("s{sender}"))
                } else {
                    inp.blob(16)
                };
                CkptMsg::Offer {
                    to,
                    id,
                    tid,
                    files,
                    source: servercore::checkpoint::Source(source),
                }
            }
            _ => CkptMsg::Failed {
                to,
                id,
                reason: String::from_utf8_lossy(&inp.blob(16)).into_owned(),
            },
        }
    }

    /// Replaces (or delivers beside) datagram `k` in flight with a forgery: a data packet of
    /// its ring carrying another payload, or the datagram with 8 bytes edited.
    fn forge(&mut self, inp: &mut Input) {
        let k = usize::from(inp.u16());
        let mode = inp.byte();
        if self.wire.is_empty() {
            return;
        }
        let k = k % self.wire.len();
        let original = self.wire[k].bytes.clone();
        // Only a packet gcs accepts is re-framed (one an earlier edit broke is edited again):
        // then a forgery gcs refuses can only mean that the offsets here are out of date.
        let forged = if app_packet(&original) && gcs::wire::validate(original.clone()).is_ok() {
            let payload: Vec<u8> = match mode % 4 {
                // A channel byte (the two known, or any) and arbitrary bytes.
                0 => {
                    let ch = match inp.byte() % 3 {
                        0 => Channel::Replica as u8,
                        1 => Channel::Checkpoint as u8,
                        _ => inp.byte(),
                    };
                    let mut p = vec![ch];
                    p.extend_from_slice(&inp.blob(255));
                    p
                }
                // This packet's own message, edited.
                1 => {
                    let mut p = first_message(&original).unwrap_or(&[]).to_vec();
                    for _ in 0..=inp.byte() % 3 {
                        edits::edit(&mut p, inp.bytes(11), true);
                    }
                    p
                }
                // A checkpoint message built field by field.
                2 => {
                    let sender = packet_sender(&original).unwrap_or(0);
                    let m = self.forged_ckpt(inp, sender);
                    envelope::seal(Channel::Checkpoint, &m.encode()).to_vec()
                }
                // A message seen earlier (another view's, another sender's), maybe edited.
                _ => {
                    let h = usize::from(inp.byte());
                    let mut p = match self.history.len() {
                        0 => Vec::new(),
                        n => self.history[h % n].to_vec(),
                    };
                    if mode & 0x40 != 0 {
                        edits::edit(&mut p, inp.bytes(11), true);
                    }
                    p
                }
            };
            let service = Service::from_u8(mode >> 2 & 7).unwrap_or(Service::Agreed);
            reframe(&original, service, &payload)
        } else {
            let mut b = original.to_vec();
            edits::edit(&mut b, inp.bytes(11), false);
            Bytes::from(b)
        };
        if mode & 0x20 != 0 {
            let (from, to) = (self.wire[k].from, self.wire[k].to);
            self.deliver(Datagram {
                from,
                to,
                bytes: forged,
            });
        } else {
            self.wire[k].bytes = forged;
        }
    }

    /// Answers checkpoint command `c` of server `i`: as the server's shell does over real
    /// files (`Honest`), or as a broken one.
    fn answer(&mut self, i: usize, c: CheckpointCommand, how: Answer, inp: &mut Input) {
        let now = self.now;
        let failed = || "fuzz: the shell failed".to_string();
        match c {
            CheckpointCommand::Make { id, to } => {
                let Some(core) = self.servers[i].core.as_mut() else {
                    return;
                };
                let made = match how {
                    Answer::Honest => {
                        let snap = core.store().snapshot();
                        let made = snap.last_transaction().map(|tid| {
                            // The file stands for the store: longer with more transactions,
                            // so that a transfer takes several chunks.
                            let len = 1 + tid.0.min(64) as usize * 16;
                            let file: Bytes = (0..len).map(|k| (k as u64 ^ id) as u8).collect();
                            self.files_out.insert((i, id), file);
                            Manifest {
                                tid,
                                files: vec![("checkpoint".into(), len as u64, 0)],
                            }
                        });
                        if made.is_ok() {
                            self.underneath.insert((to, id), snap);
                        }
                        made.map_err(|e| e.to_string())
                    }
                    Answer::Fail => Err(failed()),
                    Answer::Wrong => Ok(Manifest {
                        tid: Tid(inp.counter()),
                        files: (0..inp.byte() % 3)
                            .map(|_| (file_name(inp), inp.counter(), 0))
                            .collect(),
                    }),
                };
                let source = match how {
                    Answer::Wrong => inp.blob(16),
                    _ => Bytes::from(format!("s{i}")),
                };
                core.checkpoint_made(now, id, made.map(|m| (m, source)));
            }
            CheckpointCommand::Discard { id } => {
                self.files_out.remove(&(i, id));
            }
            CheckpointCommand::Prepare { id, .. } => match how {
                Answer::Fail => {
                    if let Some(core) = self.core(i) {
                        core.transfer_failed(now, id, &failed());
                    }
                }
                _ => {
                    self.files_in.insert((i, id));
                }
            },
            CheckpointCommand::Fetch {
                id,
                donor,
                manifest,
                source,
            } => {
                // The honest shell fetches from the server its source names, if that one
                // still serves the transfer; the file then goes into the side directory.
                let d = donor as usize;
                let served = (source.0 == format!("s{d}").as_bytes())
                    .then(|| self.files_out.get(&(d, id)).cloned())
                    .flatten();
                let have_side = self.files_in.contains(&(i, id));
                let ready = match how {
                    Answer::Honest => match (served, have_side) {
                        (Some(file), true) if file.len() <= SIDE_FILE_MAX => {
                            if let Some(core) = self.core(d) {
                                core.checkpoint_served(now, id);
                            }
                            self.drain(d);
                            self.files_in.remove(&(i, id));
                            let snap = self.underneath.remove(&(i as u32, id));
                            Some(match (&manifest.files[..], snap) {
                                ([(_, len, _)], Some(snap)) if file.len() as u64 == *len => {
                                    Ok(snap)
                                }
                                _ => Err("fuzz: files do not match the manifest".to_string()),
                            })
                        }
                        _ => None,
                    },
                    Answer::Fail => None,
                    Answer::Wrong => Some(Ok(self.some_store(inp))),
                };
                if let Some(core) = self.core(i) {
                    match ready {
                        Some(ready) => {
                            let _ = core.checkpoint_ready(now, id, ready);
                        }
                        None => core.transfer_failed(now, id, &failed()),
                    }
                }
            }
            CheckpointCommand::Abandon { id } => {
                self.files_in.remove(&(i, id));
                self.underneath.remove(&(i as u32, id));
            }
        }
        self.drain(i);
    }

    /// A store a broken shell could open: empty, or a copy of some server's.
    fn some_store(&self, inp: &mut Input) -> MemStorage {
        let k = usize::from(inp.byte()) % (SERVERS + 1);
        let s = self.servers.get(k);
        match s.and_then(|s| s.core.as_ref().map(|c| c.store()).or(s.disk.as_ref())) {
            Some(store) => store.snapshot(),
            None => MemStorage::new(MemOptions { sync: true }),
        }
    }

    /// A report of the checkpoint shell that no command asked for, with any id.
    fn report(&mut self, inp: &mut Input) {
        let i = inp.server();
        let kind = inp.byte();
        let id = self.pick_id(inp);
        let now = self.now;
        let ok = kind & 0x10 == 0;
        match kind % 4 {
            0 => {
                let made = ok
                    .then(|| Manifest {
                        tid: Tid(inp.counter()),
                        files: (0..inp.byte() % 3)
                            .map(|_| (file_name(inp), inp.counter(), 0))
                            .collect(),
                    })
                    .ok_or_else(|| "fuzz".to_string());
                if let Some(core) = self.core(i) {
                    core.checkpoint_made(now, id, made.map(|m| (m, Bytes::from(format!("s{i}")))));
                }
            }
            1 => {
                if let Some(core) = self.core(i) {
                    if ok {
                        core.checkpoint_served(now, id);
                    } else {
                        let _ = core.awaits_checkpoint(id);
                        core.serving_failed(now, id, "fuzz".to_string());
                    }
                }
            }
            2 => {
                let ready = if ok {
                    Ok(self.some_store(inp))
                } else {
                    Err("fuzz".to_string())
                };
                if let Some(core) = self.core(i) {
                    let _ = core.checkpoint_ready(now, id, ready);
                }
            }
            _ => {
                if let Some(core) = self.core(i) {
                    core.transfer_failed(now, id, "fuzz");
                }
            }
        }
        self.drain(i);
    }

    fn req(&mut self) -> ReqId {
        self.next_req += 1;
        ReqId(self.next_req)
    }

    /// One request of a client or an operator to server `i`.
    fn request(&mut self, kind: u8, inp: &mut Input) {
        let i = inp.server();
        let now = self.now;
        let id = self.req();
        let Some(core) = self.servers[i].core.as_mut() else {
            return;
        };
        match kind {
            0 => core.commit(now, id, commit_request(inp)),
            1 => {
                let change = if inp.flag() {
                    MembershipChange::Remove(inp.id())
                } else {
                    let server = inp.id();
                    MembershipChange::Add(AddedServer {
                        id: server,
                        name: String::from_utf8_lossy(&inp.blob(6)).into_owned(),
                        gcs: addr(server, 7400),
                        client: host_port(inp),
                        admin: host_port(inp),
                    })
                };
                let (client, request) = (u64::from(inp.byte() % 4), inp.counter());
                core.membership_change(now, id, client, request, change);
            }
            2 => {
                let add: Vec<(u32, u32)> = (0..inp.byte() % 3)
                    .map(|_| (inp.id(), u32::from(inp.byte() % 3)))
                    .collect();
                let remove: Vec<u32> = (0..inp.byte() % 3).map(|_| inp.id()).collect();
                core.voter_change(now, id, &add, &remove);
            }
            3 => {
                let _ = core.request_swap(now, inp.id());
            }
            4 => {
                let oid = Oid::from_u64(u64::from(inp.byte() % 8));
                if let Ok((store, _)) = core.read(now) {
                    let _ = store.load(&oid);
                }
            }
            5 => {
                let _ = core.status(now);
            }
            _ => {
                let moved = [(inp.id(), addr(0, inp.u16()))];
                core.readdress(now, &moved);
            }
        }
        self.drain(i);
    }

    /// One operation of the input.
    fn op(&mut self, inp: &mut Input) {
        match inp.byte() % 20 {
            0 => {
                let n = usize::from(inp.byte()) % FLOW_MAX + 1;
                self.hop(n);
            }
            1..=3 => {
                // One datagram, picked anywhere in flight (reordering): delivered, delivered
                // to another server as well (duplicated, misrouted), or lost.
                let op = inp.byte();
                let k = usize::from(inp.u16());
                if self.wire.is_empty() {
                    return;
                }
                let k = k % self.wire.len();
                match op % 3 {
                    0 => {
                        if let Some(d) = self.wire.remove(k) {
                            self.deliver(d);
                        }
                    }
                    1 => {
                        let d = &self.wire[k];
                        let to = usize::from(op >> 2) % SERVERS;
                        let copy = Datagram {
                            from: d.from,
                            to: if op & 2 != 0 { to } else { d.to },
                            bytes: d.bytes.clone(),
                        };
                        self.deliver(copy);
                    }
                    _ => {
                        self.wire.remove(k);
                    }
                }
            }
            4 | 5 => {
                let b = inp.byte();
                let ms = u64::from(b & 0x3F) + 1;
                let ms = if b & 0x40 != 0 { ms * 16 } else { ms };
                self.advance(Duration::from_millis(ms));
            }
            // Timer-driven progress, in one step.
            6 => self.skip_to_deadline(Duration::from_secs(2)),
            7 => {
                let to = inp.server();
                let bytes = inp.blob(255);
                let now = self.now;
                if let Some(core) = self.core(to) {
                    core.handle_packet(now, bytes);
                    self.drain(to);
                }
            }
            8 | 9 => self.forge(inp),
            10 => self.cut = inp.byte() & ((1 << SERVERS) - 1),
            11 | 12 => self.request(0, inp),
            13 => {
                let kind = inp.byte() % 6 + 1;
                self.request(kind, inp);
            }
            14 | 15 => {
                let i = inp.server();
                let how = match inp.byte() % 4 {
                    0 | 1 => Some(Answer::Honest),
                    2 => Some(Answer::Fail),
                    _ if inp.flag() => Some(Answer::Wrong),
                    // The shell never answers.
                    _ => None,
                };
                if let Some(c) = self.servers[i].commands.pop_front() {
                    if let Some(how) = how {
                        self.answer(i, c, how, inp);
                    }
                }
            }
            16 => self.report(inp),
            17 => {
                let b = inp.byte();
                let i = usize::from(b) % SERVERS;
                match (b >> 4) % 3 {
                    0 => self.crash(i, false),
                    1 => {
                        self.crash(i, false);
                        self.start(i);
                    }
                    _ => {
                        self.crash(i, true);
                        self.start(i);
                    }
                }
            }
            18 => {
                let b = inp.byte();
                let i = usize::from(b) % SERVERS;
                let why = (b & 0x10 != 0).then_some("fuzz: no space left on device");
                match (&self.servers[i].core, &self.servers[i].disk) {
                    (Some(c), _) => c.store().set_failing(why),
                    (None, Some(d)) => d.set_failing(why),
                    (None, None) => {}
                }
            }
            _ => {
                let i = inp.server();
                self.start(i);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Answer {
    Honest,
    Fail,
    Wrong,
}

fn file_name(inp: &mut Input) -> String {
    if inp.flag() {
        "checkpoint".into()
    } else {
        String::from_utf8_lossy(&inp.blob(12)).into_owned()
    }
}

fn host_port(inp: &mut Input) -> String {
    match inp.byte() % 3 {
        0 => "h:1".into(),
        1 => String::new(),
        _ => String::from_utf8_lossy(&inp.blob(12)).into_owned(),
    }
}

/// A commit with records anywhere in their range: a few objects (so that serials conflict),
/// reserved oids, deletions, large states, any expected serial, and any tid choice.
fn commit_request(inp: &mut Input) -> CommitRequest {
    let client = u64::from(inp.byte() % 4);
    let request = match inp.byte() {
        b if b & 0x80 == 0 => u64::from(b),
        _ => inp.counter(),
    };
    let records = (0..inp.byte() % 4)
        .filter_map(|_| {
            let b = inp.byte();
            let oid = match b % 8 {
                0..=4 => Oid::from_u64(u64::from(inp.byte() % 8)),
                5 => replica::membership_oid(),
                6 => replica::voters_oid(),
                _ => {
                    let mut o = vec![];
                    if b & 8 != 0 {
                        o.push(replica::RESERVED_OID_PREFIX);
                    }
                    o.extend_from_slice(&inp.blob(12));
                    Oid::new(o).ok()?
                }
            };
            let data = match (b >> 4) % 4 {
                0 => None,
                1 => Some(Bytes::from(vec![
                    inp.byte();
                    usize::from(inp.u16()) % 12_000
                ])),
                _ => Some(inp.blob(64)),
            };
            let expected_serial = match (b >> 6) % 4 {
                0 | 1 => None,
                2 => Some(Tid(u64::from(inp.byte()))),
                _ => Some(Tid(inp.counter())),
            };
            Some(Record {
                oid,
                data,
                expected_serial,
            })
        })
        .collect();
    let tid = match inp.byte() % 4 {
        0 | 1 => TidChoice::Next,
        2 => TidChoice::AtLeast(Tid(inp.counter())),
        _ => TidChoice::Exactly(Tid(inp.counter())),
    };
    let meta = TxnMeta {
        user: inp.blob(8),
        description: inp.blob(8),
        extension: inp.blob(8),
        time: inp.counter(),
        request: None,
    };
    CommitRequest {
        client,
        request,
        meta,
        records,
        tid,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input { data };
    let setup = inp.byte();
    let mut c = Cluster::new(setup);
    if setup & 1 == 0 {
        // Form the ring and elect over a calm network first.
        c.run(Duration::from_secs(3), WARM_UP_DELIVERIES, Cluster::formed);
    }
    for _ in 0..OPS_MAX {
        if inp.is_empty() {
            break;
        }
        c.op(&mut inp);
    }
    // The network heals; whatever happened, the cluster runs on without a panic.
    c.cut = 0;
    c.run(Duration::from_secs(1), SETTLE_DELIVERIES, |_| false);
});
