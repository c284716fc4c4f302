//! The storage-server simulator: N servers, each the production `servercore::ServerCore` (the
//! gcs `Node` and the `Replica` as the server wires them) over an in-memory store, and a set
//! of clients with retries, on the [`crate::world`] framework: the same virtual time, event
//! loop, seeded faulty network, fault schedule, host lifecycle, trace and digest as the gcs
//! simulator. This file is the [`App`] of the `replica` mode: it starts and stops servers
//! over their disks, runs the clients and the operator, and records the history. A crash
//! drops the core (memory) and keeps the store (disk). This file is the core's second shell: it executes the core's checkpoint commands
//! over simulated files and a simulated point-to-point fetch (the checkpoint's content travels
//! underneath as a store snapshot; its file, checksum and messages are real; the fetch takes
//! time in proportion to the file, fails if the donor crashed, restarted or discarded the
//! transfer, or if either direction between the two is cut when it ends).
//!
//! Around the core it plays the rest of a server's world. A server whose store failed is
//! started again a second later, as a supervisor does after `standby-server` exits with 75;
//! every start goes through `servercore::open_replica`, as the server's does. A crash keeps
//! the store, a disk loss replaces it with an empty one. The replicas' direct datagrams cross
//! the same faulty network as the gcs packets. Clients follow the client library's retry
//! policy (`standby_client::retry`) and read through `ServerCore::read`, the production read
//! path; an operator changes voters in about half the seeds, and adds a spare that starts
//! outside the others' configuration files to the address book (`ServerCore::membership_change`,
//! as `standby add-replica` does) and may remove it again (`standby remove-replica`); each
//! server's address book (`Output::Peers`) decides whom its datagrams reach. What a run records is in [`history`] (roles, applies, acknowledgements, reads,
//! losses, final stores); the properties judged on it are in [`checkers`], tested on hand-made
//! histories in `checkers_test.rs`.

pub mod checkers;
pub mod history;

use crate::faults::{self, Action, Plan};
use crate::options::Options;
use crate::prng::Prng;
use crate::queue::{fnv, DIGEST_START};
pub use crate::world::Tracer;
use crate::world::{self, App, World};
use bytes::Bytes;
use gcs::{Node, ProcId, Time};
use history::{FinalStore, REvent, RHistory};
use replica::{
    CommitError, CommitMode, CommitRequest, GroupKind, RecoveryPolicy, ReplicaConfig, ReqId, Role,
    ServerSpec,
};
use servercore::checkpoint::{CheckpointCommand, Manifest};
use servercore::membership::Configured;
use servercore::{CoreOptions, Output, ServerEvent};
use standby_client::retry::{Answer, CommitRetry, Verdict};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use storage::{Direction, MemOptions, MemStorage, Oid, Record, Storage, Tid, TidRange, TxnMeta};

type Core = servercore::ServerCore<MemStorage>;

/// How fast a simulated checkpoint fetch goes (bytes per millisecond): a store of 16,384
/// transactions (1 MiB) takes about 100 ms, long enough for faults to fall inside.
const SIM_FETCH_BYTES_PER_MS: u64 = 10 * 1024;

/// The options of one replica run.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// Network, faults and gcs configuration (shared with the gcs simulator).
    pub base: Options,
    /// How many of the servers (the last ones) form a remote group.
    pub remote: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct objects the clients write.
    pub keyspace: u64,
    /// Mean pause between a client's requests.
    pub think: Duration,
    /// A client's patience before retrying elsewhere.
    pub client_timeout: Duration,
    /// Commit mode.
    pub mode: CommitMode,
    /// Recovery thresholds (small, so every path runs).
    pub recovery: RecoveryPolicy,
    /// Planned swaps in the storm, and one in calm weather.
    pub swaps: bool,
    /// How many servers (before the remote ones) start without a vote: spares that voter
    /// changes may give one.
    pub spares: usize,
    /// Voter changes (add, remove, replace) in the storm, and one in calm weather.
    pub voter_changes: bool,
    /// The spare (if there is one) starts outside the other servers' configuration files:
    /// an operator adds it to the address book while running (`standby add-replica`). (Seed
    /// 2528 found an election that never completed: a server rebuilt on an empty store lacked
    /// the addition and left the newcomer out of the view's members while the others counted
    /// it; every ring member is a member now.)
    pub joiner: bool,
    /// An operator removes the spare from the cluster (`standby remove-replica`) in the storm.
    /// (The first sweep with it on failed seeds 1805, 1828, 2180, 3108, 3228, 3682, 3832. A
    /// server cut off while the spare was removed kept the spare in its address book; the
    /// removed spare, still running, and that server heard each other while the others
    /// refused the spare, so the server kept forming a ring with the spare alone and never
    /// rejoined (its async tail stayed unreported); seed 3228 was the mirror case, a server
    /// holding a removal the others lost. Now the gcs nodes fail a removed daemon as soon as
    /// anyone names it (`gcs::Node::set_removed`), and a removed server that applies its
    /// removal leaves the ring and exits (`ServerCore::is_removed`; seed 1828, where it went
    /// on applying a tail that was later lost). One cut off while it was removed never learns
    /// it: its store is no longer judged (seed 3682, see `prefix_agreement`).)
    pub remove_spare: bool,
    /// Each server's address book (`Output::Peers`) decides whom its datagrams reach, as the
    /// server's driver does (off: every datagram reaches every server).
    pub address_books: bool,
    /// Stores sync off the ring's task (`ReplicaConfig::defer_syncs`, the server's
    /// `sync_off_ring`): a crash takes back what was applied and not yet synced. Drawn per
    /// seed, half and half, so that the sweep covers both paths.
    pub defer_syncs: bool,
    /// How many client commits apart the primary writes the client table
    /// (`ReplicaConfig::client_table_every`): drawn small in most seeds, so that tables are
    /// written, rebuilt from and sent with fills many times per run.
    pub client_table_every: u64,
}

impl ReplicaOptions {
    /// A calm cluster for hand-written scenarios: no faults unless the script adds them,
    /// sync mode, four clients, no swaps.
    pub fn calm(seed: u64, servers: usize) -> ReplicaOptions {
        let mut o = ReplicaOptions::swarm(seed, servers);
        o.base.storm_net = o.base.calm_net;
        o.remote = 0;
        o.clients = 4;
        o.keyspace = 100;
        o.think = Duration::from_millis(5);
        o.mode = CommitMode::Sync;
        o.recovery = RecoveryPolicy::default();
        o.swaps = false;
        o.spares = 0;
        o.voter_changes = false;
        o.joiner = false;
        o.remove_spare = false;
        o.defer_syncs = false;
        o
    }

    /// The options for `seed` with `servers` storage servers.
    pub fn swarm(seed: u64, servers: usize) -> ReplicaOptions {
        let mut base = Options::swarm(seed, servers);
        let mut r = Prng::new(seed ^ 0x4E9_11CA);
        base.gcs.max_message_size = 1 << 20;
        let remote = if servers >= 4 && r.chance(0.3) { 1 } else { 0 };
        // Drawn from their own generator, so that adding them left every other draw of a
        // seed as it was.
        let mut rv = Prng::new(seed ^ 0x707E_5E75);
        let voter_changes = rv.chance(0.5);
        // At least three voters: with two, one lost disk stops the cluster (the other is no
        // majority), which no protocol can help.
        let spares = if voter_changes && servers - remote >= 4 {
            rv.range(0, 1) as usize
        } else {
            0
        };
        // Address-book changes, from a stream of their own too.
        let mut rm = Prng::new(seed ^ 0xADD2_E550);
        let joiner = spares > 0 && rm.chance(0.5);
        let remove_spare = spares > 0 && rm.chance(0.3);
        let defer_syncs = Prng::new(seed ^ 0x5_1C5_DEF).chance(0.5);
        let client_table_every = Prng::new(seed ^ 0xC11E_7AB1).pick(&[2, 8, 64, 1_000]);
        let mode = if r.chance(0.25) {
            CommitMode::Async {
                window: r.pick(&[1, 8, 64]),
            }
        } else {
            CommitMode::Sync
        };
        ReplicaOptions {
            base,
            remote,
            clients: r.range(1, 8) as usize,
            keyspace: r.pick(&[4, 32, 500]),
            think: Duration::from_millis(r.range(1, 40)),
            client_timeout: Duration::from_millis(300),
            mode,
            recovery: RecoveryPolicy {
                fast_after: r.pick(&[5, 50, 100_000]),
                checkpoint_after: r.pick(&[20, 1_000_000]),
                // Chunks of a few transactions each, or of many. Sizes count each
                // transaction's encoding overhead (`replica::config::txn_wire_bytes`): 1 KiB
                // holds about as many as 512 bytes did when only data was counted.
                chunk_bytes: r.pick(&[1024, 16 * 1024]),
                chunks_per_request: r.pick(&[1, 4]),
            },
            swaps: true,
            spares,
            voter_changes,
            joiner,
            remove_spare,
            address_books: true,
            defer_syncs,
            client_table_every,
        }
    }

    /// The joining spare (see [`Self::joiner`]), if any.
    pub fn joiner_id(&self) -> Option<u32> {
        (self.joiner && self.spares > 0)
            .then(|| (self.base.nodes - self.remote - self.spares) as u32)
    }

    /// The replication configuration every server holds.
    pub fn config(&self) -> ReplicaConfig {
        let n = self.base.nodes;
        let servers = (0..n)
            .map(|i| {
                let remote = i >= n - self.remote;
                let spare = !remote && i >= n - self.remote - self.spares;
                ServerSpec {
                    id: i as u32,
                    name: format!("s{i}"),
                    group: if remote {
                        "remote"
                    } else if spare {
                        replica::ADDED_GROUP
                    } else {
                        "main"
                    }
                    .into(),
                    kind: if remote || spare {
                        GroupKind::Remote
                    } else {
                        GroupKind::Failover
                    },
                    weight: if remote || spare { 0 } else { 1 },
                }
            })
            .collect();
        let mut c = ReplicaConfig::new(servers, self.mode);
        c.recovery = self.recovery;
        c.commit_bytes_max = 64 * 1024;
        c.held_max = 1000;
        c.defer_syncs = self.defer_syncs;
        c.client_table_every = self.client_table_every;
        // Fewer clients than this run anyway; the table must fit the simulated ring's 1 MiB
        // messages with a chunk (`check_message_limit`).
        c.client_table_max = 1_000;
        c
    }
}

/// The replica simulator's own events (the world carries datagrams, timers and actions).
#[derive(Debug)]
pub enum Ev {
    /// A client thinks of its next request.
    ClientTick {
        /// The client.
        client: usize,
    },
    /// A client gives up waiting for attempt `attempt` and tries the next server.
    ClientTimeout {
        client: usize,
        request: u64,
        attempt: u64,
    },
    /// A client sends attempt `attempt` (after a redirect or a back-off).
    ClientSend {
        client: usize,
        request: u64,
        attempt: u64,
    },
    /// A request reaches a server.
    Request {
        server: usize,
        req: ReqId,
        c: CommitRequest,
    },
    /// An answer reaches a client.
    Answer {
        req: ReqId,
        result: Result<replica::Committed, CommitError>,
    },
    /// The operator sends attempt `attempt` of voter change `op` to `server`.
    OperatorSend {
        op: usize,
        attempt: u32,
        server: usize,
    },
    /// The operator gives up waiting for attempt `attempt` of voter change `op`.
    OperatorTimeout { op: usize, attempt: u32 },
    /// A server's store sync (`servercore::Output::SyncStore`) returns, unless the server
    /// restarted since (another incarnation).
    Synced {
        server: usize,
        incarnation: u64,
        id: u64,
    },
    /// A checkpoint fetch (`CheckpointCommand::Fetch`) ends, unless the recipient restarted
    /// since or abandoned it.
    Fetched {
        server: usize,
        incarnation: u64,
        id: u64,
        donor: usize,
        manifest: Manifest,
    },
}

/// A change an operator asked for, followed until answered.
struct VoterOp {
    kind: OpKind,
    attempt: u32,
    finished: bool,
}

enum OpKind {
    /// Who votes.
    Voters {
        add: Vec<(u32, u32)>,
        remove: Vec<u32>,
    },
    /// The address book: a server added as a read replica, or removed. Retried under one
    /// (client, request), so that it is applied once.
    Membership {
        change: servercore::membership::MembershipChange,
        client: u64,
    },
}

/// Attempts an operator makes before giving up on a voter change.
const OPERATOR_ATTEMPTS: u32 = 40;

struct Server {
    core: Option<Core>,
    /// The store while the server is down (its disk).
    disk: Option<MemStorage>,
    /// The disk was lost while the server was down.
    disk_lost: bool,
    /// Its store fails every write (see `Action::StoreFails`).
    store_failing: bool,
    /// Its address book (`Output::Peers`): whom it sends to and accepts datagrams from...
    peers: Option<std::collections::BTreeSet<u32>>,
    /// ...whom it refuses...
    removed: std::collections::BTreeSet<u32>,
    /// ...and the senders outside it it accepted, whose address its driver learned.
    learned: std::collections::BTreeSet<u32>,
}

struct Inflight {
    c: CommitRequest,
    attempt: u64,
    /// Where the attempt goes.
    target: usize,
}

struct Client {
    id: u64,
    next_request: u64,
    inflight: Option<Inflight>,
    /// Where its commits go: the client library's policy, over server indices.
    route: CommitRetry<usize>,
    serials: BTreeMap<u64, Tid>,
}

/// Totals of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RTotals {
    /// Commits acknowledged to clients.
    pub acked: u64,
    /// Client attempts (first tries and retries).
    pub attempts: u64,
    /// Reads served.
    pub reads: u64,
    /// Transactions applied, summed over servers.
    pub applied: u64,
    /// Elections completed, summed over servers.
    pub elections: u64,
    /// Swaps asked.
    pub swaps: u64,
    /// Checkpoints installed.
    pub checkpoints: u64,
    /// Recoveries by transactions started (servers running at the end).
    pub recoveries_full: u64,
    /// Recoveries by objects started (servers running at the end).
    pub recoveries_fast: u64,
    /// Transactions moved to lost archives.
    pub lost: u64,
    /// Open object fills started over from a donor of another history (servers running at
    /// the end).
    pub fills_restarted: u64,
    /// Client tables written by primaries (servers running at the end).
    pub client_tables: u64,
    /// Servers that left the ring because their store failed.
    pub store_failures: u64,
    /// Voter changes asked, carried out (answered with the new voters' tid), and refused
    /// (the primary said why: the primary itself removed, no voter left, ...).
    pub voter_changes: u64,
    /// See [`Self::voter_changes`].
    pub voter_changes_done: u64,
    /// See [`Self::voter_changes`].
    pub voter_changes_refused: u64,
    /// Address-book changes (a read replica added or removed) asked, carried out, refused.
    pub membership_changes: u64,
    /// See [`Self::membership_changes`].
    pub membership_changes_done: u64,
    /// See [`Self::membership_changes`].
    pub membership_changes_refused: u64,
    /// Removed servers that stopped on learning of their removal (`ServerCore::is_removed`),
    /// as `standby-server` exits then.
    pub removed_exits: u64,
}

/// A simulated storage cluster.
pub struct ReplicaCluster {
    opts: ReplicaOptions,
    cfg: ReplicaConfig,
    w: World<Ev>,
    servers: Vec<Server>,
    clients: Vec<Client>,
    client_rng: Prng,
    /// How long each store sync takes.
    disk_rng: Prng,
    next_req: u64,
    /// Which client attempt a request id belongs to.
    req_owner: BTreeMap<ReqId, (usize, u64, u64)>,
    history: RHistory,
    totals: RTotals,
    /// Simulated checkpoint files, by (server, transfer id): a donor's `outgoing` file and
    /// the incarnation that serves it; the recipients' `incoming` side directories.
    outgoing_files: BTreeMap<(usize, u64), (Bytes, u64)>,
    incoming_files: BTreeSet<(usize, u64)>,
    /// What a checkpoint holds, by (recipient, transfer id): the donor's store as it was made.
    underneath: BTreeMap<(usize, u64), MemStorage>,
    /// Voter changes asked, and which attempt a request id belongs to.
    voter_ops: Vec<VoterOp>,
    op_reqs: BTreeMap<ReqId, (usize, u32)>,
    /// The fewest voters an operator leaves: three, or as many as the cluster started with.
    min_voters: usize,
}

/// The gcs address a simulated server stands at (never used for a socket).
fn sim_addr(id: u32) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7400 + id as u16))
}

/// The digest of a transaction's content (tid, records).
pub fn txn_digest(t: &storage::Transaction) -> u64 {
    let mut h = fnv(DIGEST_START, &t.tid.0.to_le_bytes());
    for r in &t.records {
        h = fnv(h, r.oid.as_bytes());
        h = fnv(h, &[r.data.is_some() as u8]);
        if let Some(d) = &r.data {
            h = fnv(h, d);
        }
    }
    h
}

/// The idempotency key a transaction carries in its header, if any.
pub fn txn_key(t: &storage::Transaction) -> Option<(u64, u64)> {
    t.meta.request.map(|k| (k.client, k.request))
}

impl ReplicaCluster {
    /// A cluster for `opts`; nothing runs until `run`.
    pub fn new(opts: ReplicaOptions) -> ReplicaCluster {
        let cfg = opts.config();
        cfg.validate().expect("simulator configuration is valid");
        cfg.check_message_limit(opts.base.gcs.max_message_size)
            .expect("the simulator's commits fit its ring's messages");
        let mut root = Prng::new(opts.base.seed ^ 0x5E7A_11CA);
        let n = opts.base.nodes;
        let mut history = RHistory::new(opts.mode);
        history.eligible = (0..n as u32)
            .filter(|i| {
                cfg.eligible(*i)
                    || cfg
                        .server(*i)
                        .is_some_and(|s| s.group == replica::ADDED_GROUP)
            })
            .collect();
        ReplicaCluster {
            w: World::new(n, opts.base.calm_net, root.fork()),
            servers: (0..n)
                .map(|_| Server {
                    core: None,
                    disk: Some(MemStorage::new(MemOptions { sync: true })),
                    disk_lost: false,
                    store_failing: false,
                    peers: None,
                    removed: Default::default(),
                    learned: Default::default(),
                })
                .collect(),
            clients: (0..opts.clients)
                .map(|i| Client {
                    id: 1000 + i as u64,
                    next_request: 1,
                    inflight: None,
                    route: CommitRetry::new(i),
                    serials: BTreeMap::new(),
                })
                .collect(),
            client_rng: root.fork(),
            disk_rng: root.fork(),
            next_req: 1,
            req_owner: BTreeMap::new(),
            history,
            totals: RTotals::default(),
            outgoing_files: BTreeMap::new(),
            incoming_files: BTreeSet::new(),
            underneath: BTreeMap::new(),
            voter_ops: Vec::new(),
            op_reqs: BTreeMap::new(),
            min_voters: replica::VoterConfig::from_file(&cfg).voters.len().min(3),
            cfg,
            opts,
        }
    }

    /// Prints (through `f`) one line per event.
    pub fn set_trace(&mut self, f: Tracer) {
        self.w.set_trace(f);
    }

    fn tr(&mut self, line: impl FnOnce() -> String) {
        self.w.tr(line);
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.w.schedule(at, ev);
    }

    /// Adds a scenario action at `at`.
    pub fn at(&mut self, at: Time, action: Action) {
        self.w.at(at, action);
    }

    /// The seeded scenario: boot, storm (with swaps), heal, calm (with one swap).
    pub fn plan_swarm(&mut self) {
        let mut plan = faults::plan_swarm(&self.opts.base, self.opts.swaps);
        if self.opts.voter_changes {
            self.plan_voter_changes(&mut plan);
        }
        self.plan_membership(&mut plan);
        self.install(plan);
    }

    /// Address-book changes: the joining spare is added (in the storm or in calm weather),
    /// and the spare may be removed later (refused if a voter change gave it a vote).
    fn plan_membership(&mut self, plan: &mut Plan) {
        let mut r = Prng::new(self.opts.base.seed ^ 0x5EA7_B00C);
        let n = self.opts.base.nodes;
        let spare = n - self.opts.remote - self.opts.spares;
        let late = plan.calm_from.saturating_add(self.opts.base.calm / 4);
        let mut at = Time(r.range(150_000, late.0.max(150_001)));
        if let Some(j) = self.opts.joiner_id() {
            let via = r.range(0, n as u64 - 1) as usize;
            plan.actions.push((
                at,
                Action::Membership {
                    via,
                    server: j as usize,
                    add: true,
                },
            ));
        }
        if self.opts.remove_spare && self.opts.spares > 0 {
            at = at.saturating_add(Duration::from_millis(r.range(100, 3000)));
            let via = r.range(0, n as u64 - 1) as usize;
            plan.actions.push((
                at,
                Action::Membership {
                    via,
                    server: spare,
                    add: false,
                },
            ));
        }
    }

    /// Voter changes in the storm (one to three) and one in calm weather, through any
    /// server: add a server, remove one, or replace one or two by others at once (the case
    /// where the old and the new sets have disjoint majorities). Some are followed within
    /// the change's window by a partition between the servers leaving and those arriving, or
    /// by the crash of the server asked. Whether each is carried out or refused (removing the
    /// primary, say) depends on the cluster then.
    fn plan_voter_changes(&mut self, plan: &mut Plan) {
        let mut r = Prng::new(self.opts.base.seed ^ 0x0C4A_66E5);
        let n = self.opts.base.nodes;
        let members = n - self.opts.remote;
        let storm_end = plan.calm_from;
        let draw = |r: &mut Prng| -> (usize, Vec<usize>, Vec<usize>) {
            let mut order: Vec<usize> = (0..members).collect();
            for k in (1..order.len()).rev() {
                order.swap(k, r.range(0, k as u64) as usize);
            }
            let via = r.range(0, n as u64 - 1) as usize;
            let (add, remove) = match r.range(0, 3) {
                0 => (vec![order[0]], vec![]),
                1 => (vec![], vec![order[0]]),
                2 => (vec![order[0]], vec![order[1]]),
                _ if members >= 4 => (vec![order[0], order[1]], vec![order[2], order[3]]),
                _ => (vec![order[0]], vec![order[1]]),
            };
            (via, add, remove)
        };
        if storm_end.0 > 300_000 {
            for _ in 0..r.range(1, 3) {
                let at = Time(r.range(200_000, storm_end.0));
                let (via, add, remove) = draw(&mut r);
                // (Faults drawn after the heal are dropped: the calm phase has none.)
                let fault_at = at.saturating_add(Duration::from_millis(r.range(0, 60)));
                match r.range(0, 3) {
                    _ if fault_at >= storm_end => {}
                    // A partition in the middle: the arriving servers (and some others) on
                    // one side, the leaving ones on the other.
                    0 | 1 => {
                        let cut = fault_at;
                        let side: Vec<bool> = (0..n)
                            .map(|k| {
                                if add.contains(&k) {
                                    true
                                } else if remove.contains(&k) {
                                    false
                                } else {
                                    r.chance(0.5)
                                }
                            })
                            .collect();
                        let links = (0..n)
                            .map(|a| (0..n).map(|b| side[a] == side[b]).collect())
                            .collect();
                        plan.actions.push((cut, Action::SetLinks(links)));
                        let back = cut.saturating_add(Duration::from_millis(r.range(100, 1500)));
                        if back < storm_end {
                            plan.actions
                                .push((back, Action::SetLinks(vec![vec![true; n]; n])));
                        }
                    }
                    // The server asked crashes in the middle (it may be the primary).
                    2 => {
                        let crash = fault_at;
                        plan.actions.push((crash, Action::Crash(via)));
                        let back = crash.saturating_add(Duration::from_millis(r.range(50, 1500)));
                        if back < storm_end {
                            plan.actions.push((back, Action::Restart(via)));
                        }
                    }
                    _ => {}
                }
                plan.actions
                    .push((at, Action::VoterChange { via, add, remove }));
            }
        }
        let at = storm_end.saturating_add(self.opts.base.calm / 5);
        let (via, add, remove) = draw(&mut r);
        plan.actions
            .push((at, Action::VoterChange { via, add, remove }));
    }

    /// A hand-written scenario: every server boots at once; add actions with [`Self::at`].
    pub fn plan_manual(&mut self, calm_from: Time, end: Time) {
        let plan = faults::plan_manual(&self.opts.base, calm_from, end);
        self.install(plan);
    }

    fn install(&mut self, plan: Plan) {
        self.w.install(&plan);
        self.history.calm_from = plan.calm_from;
        self.history.end = plan.end;
        self.history.sends_until = plan.sends_until;
        for c in 0..self.clients.len() {
            let t = Time(100_000 + c as u64 * 1000);
            self.schedule(t, Ev::ClientTick { client: c });
        }
    }

    /// Runs to the end; returns the history, the totals and the run's digest.
    pub fn run(mut self) -> (RHistory, RTotals, u64) {
        world::run(&mut self);
        self.finish();
        let digest = self.w.digest();
        (self.history, self.totals, digest)
    }

    fn finish(&mut self) {
        // The cluster's address book as the primary (else any running server) has it.
        let judge = self
            .servers
            .iter()
            .filter_map(|s| s.core.as_ref())
            .max_by_key(|c| c.replica().role() == Role::Primary);
        let book: Option<Vec<u32>> = judge.map(|c| c.address_book());
        let removed: Vec<u32> = judge
            .and_then(|c| c.membership())
            .map(|m| m.removed.clone())
            .unwrap_or_default();
        for (i, s) in self.servers.iter().enumerate() {
            let store: &MemStorage = match (&s.core, &s.disk) {
                (Some(c), _) => c.store(),
                (None, Some(d)) => d,
                (None, None) => continue,
            };
            let mut f = FinalStore {
                running: s.core.is_some(),
                role: s.core.as_ref().map(|c| c.replica().role()),
                last: store.last_transaction().unwrap_or_default(),
                horizon: store.horizon().unwrap_or_default(),
                outside: book.as_ref().is_some_and(|b| !b.contains(&(i as u32))),
                removed: removed.contains(&(i as u32)),
                ..FinalStore::default()
            };
            let range = if f.horizon == Tid::ZERO {
                TidRange::new(None, None)
            } else {
                TidRange::after(f.horizon)
            };
            if let Ok(it) = store.iter(range, Direction::Forward) {
                for t in it.flatten() {
                    f.txns.insert(t.tid, (txn_digest(&t), txn_key(&t)));
                }
            }
            let mut h = DIGEST_START;
            // The client table as a restart would rebuild it from this store, and as the
            // running server holds it: both the same function of the history everywhere.
            // Its object is left out: a server filled by objects holds it at its fill
            // point, with the content the donor's had there (`replica::clients`).
            // A store the table cannot be rebuilt from digests apart from every other.
            let rebuilt = match replica::read_client_table(store, f.last) {
                Ok(t) => t.encode(),
                Err(e) => bytes::Bytes::from(format!("{e} at s{i}")),
            };
            h = fnv(h, &rebuilt);
            let held = s.core.as_ref().map(|c| c.replica().client_table().encode());
            h = fnv(h, held.as_deref().unwrap_or(&rebuilt));
            let table_oid = replica::client_table_oid();
            if let Ok(fr) = store.fast_recovery(Tid::ZERO, None) {
                for r in fr.revisions.flatten() {
                    if r.oid == table_oid {
                        continue;
                    }
                    h = fnv(h, r.oid.as_bytes());
                    h = fnv(h, &r.tid.0.to_le_bytes());
                    if let Some(d) = &r.data {
                        h = fnv(h, d);
                    }
                }
            }
            f.state_digest = h;
            self.history.finals.insert(i as u32, f);
        }
        for s in &self.servers {
            if let Some(c) = &s.core {
                let st = c.replica().stats();
                self.totals.elections += st.elections;
                self.totals.recoveries_full += st.recoveries_full;
                self.totals.recoveries_fast += st.recoveries_fast;
                self.totals.fills_restarted += st.fills_restarted;
                self.totals.client_tables += st.client_tables;
            }
        }
    }

    /// Stops server `i` (see [`App::stop`]): the core's memory is lost, its store stays as
    /// its disk, or is replaced by an empty one if `wiped`.
    fn stop_server(&mut self, i: usize, wiped: bool) -> bool {
        let Some(core) = self.servers[i].core.take() else {
            return false;
        };
        self.history.events.push(REvent::Stopped {
            at: self.w.now,
            server: i as u32,
        });
        self.outgoing_files.retain(|k, _| k.0 != i);
        self.incoming_files.retain(|k| k.0 != i);
        self.underneath.retain(|k, _| k.0 != i);
        let store = core.into_store();
        store.crash();
        if wiped {
            self.servers[i].disk_lost = true;
            self.history.events.push(REvent::Wiped {
                at: self.w.now,
                server: i as u32,
            });
        }
        self.servers[i].disk = Some(if wiped {
            MemStorage::new(MemOptions { sync: true })
        } else {
            store
        });
        true
    }

    /// Starts server `i` as incarnation `incarnation` over its disk (see [`App::start`]).
    fn start_server(&mut self, i: usize, incarnation: u64) -> bool {
        let now = self.w.now;
        let store = self.servers[i]
            .disk
            .take()
            .expect("a stopped server has its disk");
        let cfg = self.cfg_of(i);
        let lost = self.servers[i].disk_lost;
        match servercore::open_replica(cfg, i as u32, store, lost) {
            // Refused as `standby-server` refuses it: the process exits for its
            // supervisor to try again later.
            Err(servercore::OpenError::NotWritable { store, error }) => {
                self.tr(|| format!("{now:?} s{i} store refused at start: {error}"));
                self.servers[i].disk = Some(store);
                self.supervisor_restart(i);
                false
            }
            Ok(r) => {
                self.servers[i].disk_lost = false;
                let p = ProcId::new(i as u32, incarnation);
                let node = Node::new(self.opts.base.gcs.clone(), p, self.w.now)
                    .expect("simulator configuration is valid");
                let opts = CoreOptions {
                    checkpoints: true,
                    check_invariants: true,
                };
                let configured = self.configured(i);
                self.servers[i].peers = Some(configured.daemons.iter().map(|(d, _)| *d).collect());
                self.servers[i].removed.clear();
                self.servers[i].learned.clear();
                let core = Core::new(node, r, configured, opts);
                self.servers[i].core = Some(core);
                true
            }
            Err(servercore::OpenError::Replica(e)) => {
                panic!("server {i} cannot reopen its store: {e}")
            }
        }
    }

    /// The actions only storage servers have (see [`App::on_action`]).
    fn server_action(&mut self, a: Action) {
        match a {
            Action::StoreFails(i) | Action::StoreHeals(i) => {
                let failing = matches!(a, Action::StoreFails(_));
                let s = &mut self.servers[i];
                s.store_failing = failing;
                let why = failing.then_some("simulated: no space left on device");
                match (&s.core, &s.disk) {
                    (Some(c), _) => c.store().set_failing(why),
                    (None, Some(d)) => d.set_failing(why),
                    (None, None) => {}
                }
            }
            Action::Swap { via, to } => {
                self.totals.swaps += 1;
                let now = self.w.now;
                let paused = self.w.paused(via);
                if let Some(c) = self.servers[via].core.as_mut().filter(|_| !paused) {
                    let res = c.request_swap(now, to as u32);
                    self.tr(|| format!("{now:?} s{via} swap to s{to}: {res:?}"));
                    self.drain(via);
                }
            }
            Action::VoterChange { via, add, remove } => {
                self.totals.voter_changes += 1;
                let op = self.voter_ops.len();
                self.voter_ops.push(VoterOp {
                    kind: OpKind::Voters {
                        add: add.iter().map(|a| (*a as u32, 1)).collect(),
                        remove: remove.iter().map(|r| *r as u32).collect(),
                    },
                    attempt: 0,
                    finished: false,
                });
                self.operator_send(op, 0, via);
            }
            Action::Membership { via, server, add } => {
                self.totals.membership_changes += 1;
                let op = self.voter_ops.len();
                let id = server as u32;
                let change = if add {
                    servercore::membership::MembershipChange::Add(
                        servercore::membership::AddedServer {
                            id,
                            name: format!("s{id}"),
                            gcs: sim_addr(id),
                            client: format!("127.0.0.1:{}", 8400 + id),
                            admin: format!("127.0.0.1:{}", 9400 + id),
                        },
                    )
                } else {
                    servercore::membership::MembershipChange::Remove(id)
                };
                self.voter_ops.push(VoterOp {
                    kind: OpKind::Membership {
                        change,
                        client: 0xAD00_0000 + op as u64,
                    },
                    attempt: 0,
                    finished: false,
                });
                self.operator_send(op, 0, via);
            }
            _ => {}
        }
    }

    /// Server `i`'s process is gone (its store failed): its supervisor starts it again a
    /// little later, as systemd does after `standby-server` exits with status 75.
    fn supervisor_restart(&mut self, i: usize) {
        let at = self
            .w
            .now
            .saturating_add(std::time::Duration::from_millis(1000));
        self.w.at(at, Action::Restart(i));
    }

    /// Executes server `i`'s outputs until its core is quiet, then re-arms its timer.
    fn drain(&mut self, i: usize) {
        world::drain(self, i);
    }

    fn core(&mut self, i: usize) -> &mut Core {
        self.servers[i]
            .core
            .as_mut()
            .expect("a server with outputs runs")
    }

    fn output(&mut self, i: usize, out: Output) {
        let now = self.w.now;
        match out {
            Output::Transmit { dest, bytes } => {
                let books: Vec<bool> = (0..self.servers.len())
                    .map(|to| self.reaches(i, to))
                    .collect();
                self.w.transmit_to(i, dest, &bytes, |to| books[to]);
            }
            Output::Reply { id: req, result } => {
                self.tr(|| format!("{now:?} s{i} reply {req:?} {result:?}"));
                if let Ok(c) = &result {
                    if let Some((client, _, request)) = self.req_owner.get(&req) {
                        let cl = &self.clients[*client];
                        self.history.events.push(REvent::Ack {
                            at: now,
                            server: i as u32,
                            client: cl.id,
                            request: *request,
                            tid: c.tid,
                            epoch: c.epoch,
                        });
                    }
                }
                let d = self.client_delay();
                self.schedule(now.saturating_add(d), Ev::Answer { req, result });
            }
            Output::Event(e) => self.event(i, e),
            // Membership (added and removed replicas) is the storage server's; the simulated
            // cluster keeps its configured servers and their addresses.
            Output::Peers { daemons, removed } => {
                self.tr(|| {
                    format!(
                        "{now:?} s{i} address book {:?} removed {removed:?}",
                        daemons.iter().map(|(id, _)| id).collect::<Vec<_>>()
                    )
                });
                let s = &mut self.servers[i];
                s.peers = Some(daemons.iter().map(|(id, _)| *id).collect());
                s.removed = removed.into_iter().collect();
                s.learned.clear();
            }
            Output::Checkpoint(c) => self.checkpoint_command(i, c),
            Output::SyncStore { id } => {
                // An fsync's time; a crash before it returns loses what it would have made
                // durable (`MemStorage::crash`).
                let d = Duration::from_micros(self.disk_rng.range(20, 1500));
                let incarnation = self.w.incarnation(i);
                self.schedule(
                    now.saturating_add(d),
                    Ev::Synced {
                        server: i,
                        incarnation,
                        id,
                    },
                );
            }
        }
    }

    /// A store sync returns: the sync itself runs now, covering at least what was applied
    /// when it was asked.
    fn synced(&mut self, i: usize, incarnation: u64, id: u64) {
        let now = self.w.now;
        if self.w.incarnation(i) != incarnation {
            return;
        }
        let Some(core) = self.servers[i].core.as_mut() else {
            return;
        };
        let result = core.store().sync().map_err(|e| e.to_string());
        core.store_synced(now, id, result);
        self.drain(i);
    }

    fn event(&mut self, i: usize, e: ServerEvent) {
        let now = self.w.now;
        match e {
            ServerEvent::Role(info) => {
                if info.role == replica::Role::Down {
                    // The core left the ring (it takes no more input); the process exits and
                    // its supervisor starts it again, as `standby-server` does.
                    self.tr(|| format!("{now:?} s{i} store failed: leaves the ring"));
                    self.totals.store_failures += 1;
                    self.w.at(now, Action::Crash(i));
                    self.supervisor_restart(i);
                }
                let promised = info.promised;
                self.tr(|| {
                    format!(
                        "{now:?} s{i} role {:?} primary {:?} promised {promised}",
                        info.role, info.primary
                    )
                });
                self.history.events.push(REvent::Role {
                    at: now,
                    server: i as u32,
                    role: info.role,
                    primary: info.primary,
                    promised,
                    in_primary_component: info.in_primary_component,
                });
                if let (replica::Role::Primary, Some((p, epoch))) = (info.role, info.primary) {
                    if p == i as u32 {
                        // The view the replica was elected in (the core's may be newer), and
                        // who votes under the configuration it now holds: the newest one
                        // reported at the election (it caught up from the most advanced voter
                        // before taking the role).
                        let (voters, _) = self.core(i).replica().voters();
                        let weighted = info
                            .view
                            .iter()
                            .copied()
                            .filter(|s| {
                                voters.voters.ids().contains(s)
                                    || voters.old.as_ref().is_some_and(|o| o.ids().contains(s))
                            })
                            .collect();
                        self.history.events.push(REvent::Elected {
                            at: now,
                            server: p,
                            epoch,
                            component: info.view.clone(),
                            weighted,
                        });
                    }
                }
            }
            ServerEvent::Invalidate(inv) => {
                let t = self
                    .core(i)
                    .store()
                    .iter(
                        TidRange::new(Some(inv.tid), Some(inv.tid)),
                        Direction::Forward,
                    )
                    .ok()
                    .and_then(|mut it| it.next())
                    .and_then(|t| t.ok());
                if let Some(t) = t {
                    self.totals.applied += 1;
                    self.history.events.push(REvent::Applied {
                        at: now,
                        server: i as u32,
                        tid: t.tid,
                        digest: txn_digest(&t),
                    });
                }
            }
            ServerEvent::Lost(l) => {
                if l.server == i as u32 {
                    self.totals.lost += l.tids.len() as u64;
                    self.tr(|| format!("{now:?} s{i} lost {:?}", l.tids));
                    self.history.events.push(REvent::Lost {
                        at: now,
                        server: i as u32,
                        tids: l.tids,
                    });
                }
            }
            ServerEvent::NeedCheckpoint { donor } => {
                self.tr(|| format!("{now:?} s{i} needs a checkpoint from s{donor}"));
            }
            ServerEvent::Membership(_) if self.core(i).is_removed() => {
                // The membership names this server removed: the core has left the ring for
                // good, and the process exits (`standby-server` does, with status 0: its
                // supervisor does not start it again).
                self.tr(|| format!("{now:?} s{i} was removed from the cluster: exits"));
                self.totals.removed_exits += 1;
                self.w.at(now, Action::Crash(i));
            }
            ServerEvent::Claim(_) | ServerEvent::Durable(_) | ServerEvent::Membership(_) => {}
        }
    }

    /// Executes a checkpoint command over simulated files and reports back, as the server's
    /// shell does over real ones.
    fn checkpoint_command(&mut self, i: usize, c: CheckpointCommand) {
        let now = self.w.now;
        self.tr(|| format!("{now:?} s{i} checkpoint {}", command_line(&c)));
        match c {
            CheckpointCommand::Make { id, to } => {
                let snap = self.core(i).store().snapshot();
                let incarnation = self.w.incarnation(i);
                let made = snap
                    .last_transaction()
                    .map_err(|e| e.to_string())
                    .map(|tid| {
                        // The file's bytes stand for the store's: 64 per transaction (the
                        // simulator's tids count them), so that big stores take longer to
                        // fetch.
                        let len = 1 + (tid.0 as usize).min(1 << 14) * 64;
                        let bytes: Bytes = (0..len).map(|k| (k as u64 ^ id) as u8).collect();
                        let crc = crc32fast::hash(&bytes);
                        self.outgoing_files.insert((i, id), (bytes, incarnation));
                        let m = Manifest {
                            tid,
                            files: vec![("checkpoint".to_string(), len as u64, crc)],
                        };
                        (m, Bytes::from(format!("s{i}")))
                    });
                if made.is_ok() {
                    self.underneath.insert((to as usize, id), snap);
                }
                self.core(i).checkpoint_made(now, id, made);
            }
            CheckpointCommand::Discard { id } => {
                self.outgoing_files.remove(&(i, id));
            }
            CheckpointCommand::Prepare { id, donor: _ } => {
                self.incoming_files.insert((i, id));
            }
            CheckpointCommand::Fetch {
                id,
                donor,
                manifest,
                source,
            } => {
                // The source is the donor shell's own: here it names the donor, and must be
                // the one the offer's sender is.
                if source.0 != format!("s{donor}").as_bytes() {
                    self.core(i)
                        .transfer_failed(now, id, "a source of another server");
                    return;
                }
                let len: u64 = manifest.files.iter().map(|f| f.1).sum();
                let d = Duration::from_millis(1 + len / SIM_FETCH_BYTES_PER_MS);
                let incarnation = self.w.incarnation(i);
                self.schedule(
                    now.saturating_add(d),
                    Ev::Fetched {
                        server: i,
                        incarnation,
                        id,
                        donor: donor as usize,
                        manifest,
                    },
                );
            }
            CheckpointCommand::Abandon { id } => {
                self.incoming_files.remove(&(i, id));
                self.underneath.remove(&(i, id));
            }
        }
    }

    /// A checkpoint fetch ends: the files arrived if the donor still serves them (the same
    /// incarnation, not discarded, not paused) and both directions between the two are up;
    /// then they are checked against the manifest and installed, as the server's shell does.
    fn fetched(&mut self, i: usize, incarnation: u64, id: u64, donor: usize, manifest: Manifest) {
        let now = self.w.now;
        if self.w.incarnation(i) != incarnation
            || self.servers[i].core.is_none()
            || !self.incoming_files.contains(&(i, id))
        {
            return;
        }
        let served = self
            .outgoing_files
            .get(&(donor, id))
            .filter(|(_, inc)| {
                *inc == self.w.incarnation(donor)
                    && self.servers[donor].core.is_some()
                    && !self.w.paused(donor)
            })
            .map(|(bytes, _)| bytes.clone())
            .filter(|_| self.w.net.links[donor][i] && self.w.net.links[i][donor]);
        let Some(file) = served else {
            self.tr(|| format!("{now:?} s{i} checkpoint fetch {id} from s{donor} failed"));
            self.incoming_files.remove(&(i, id));
            self.core(i)
                .transfer_failed(now, id, "the donor stopped serving the checkpoint");
            self.drain(i);
            return;
        };
        // Sent once: the donor's shell reports it.
        self.core(donor).checkpoint_served(now, id);
        self.drain(donor);
        self.incoming_files.remove(&(i, id));
        let snap = self.underneath.remove(&(i, id));
        let ready = match (&manifest.files[..], snap) {
            ([(_, len, crc)], Some(snap))
                if file.len() as u64 == *len && crc32fast::hash(&file) == *crc =>
            {
                Ok(snap)
            }
            _ => Err("checkpoint files do not match the manifest".to_string()),
        };
        if ready.is_ok() {
            self.totals.checkpoints += 1;
        }
        let r = self.core(i).checkpoint_ready(now, id, ready);
        self.tr(|| format!("{now:?} s{i} checkpoint {id} installed: {r:?}"));
        self.drain(i);
    }

    /// The configured servers (addresses are never used: the simulated network routes by
    /// index).
    /// Server `i`'s configuration file: everyone's, but the joining spare is only in its own
    /// (the others learn of it when an operator adds it).
    fn cfg_of(&self, i: usize) -> ReplicaConfig {
        let mut cfg = self.cfg.clone();
        if let Some(j) = self.opts.joiner_id().filter(|j| *j != i as u32) {
            cfg.servers.retain(|s| s.id != j);
        }
        cfg
    }

    /// Server `i`'s configured daemons and replication configuration (see [`Self::cfg_of`]).
    fn configured(&self, i: usize) -> Configured {
        let replica = self.cfg_of(i);
        Configured {
            daemons: replica
                .servers
                .iter()
                .map(|s| (s.id, sim_addr(s.id)))
                .collect(),
            replica,
        }
    }

    /// Whether a datagram from `from` reaches `to`, as the servers' drivers decide
    /// (`gcs::net::driver`): the sender sends to the addresses its book holds and those it
    /// learned; the recipient accepts its book's, and learns any other sender it has not
    /// been told was removed.
    fn reaches(&mut self, from: usize, to: usize) -> bool {
        if !self.opts.address_books {
            return true;
        }
        let (f, t) = (from as u32, to as u32);
        let s = &self.servers[from];
        let sends = s.peers.as_ref().is_none_or(|p| p.contains(&t)) || s.learned.contains(&t);
        if !sends {
            return false;
        }
        let r = &mut self.servers[to];
        if r.peers.as_ref().is_none_or(|p| p.contains(&f)) || r.learned.contains(&f) {
            return true;
        }
        if r.removed.contains(&f) {
            return false;
        }
        r.learned.insert(f);
        true
    }

    // ---- clients ---------------------------------------------------------------------

    fn client_delay(&mut self) -> Duration {
        Duration::from_micros(self.client_rng.range(50, 400))
    }

    fn client_tick(&mut self, c: usize) {
        if self.w.now >= self.history.sends_until || self.clients[c].inflight.is_some() {
            return;
        }
        if self.client_rng.chance(0.3) {
            self.client_read(c);
            let think = self.think();
            self.schedule(
                self.w.now.saturating_add(think),
                Ev::ClientTick { client: c },
            );
            return;
        }
        let n = self.client_rng.range(1, 3);
        let mut records = Vec::new();
        let cl_id = self.clients[c].id;
        let request = self.clients[c].next_request;
        self.clients[c].next_request += 1;
        let mut used = Vec::new();
        for _ in 0..n {
            let k = self.client_rng.range(0, self.opts.keyspace - 1);
            if used.contains(&k) {
                continue;
            }
            used.push(k);
            let expected = if self.client_rng.chance(0.3) {
                Some(
                    self.clients[c]
                        .serials
                        .get(&k)
                        .copied()
                        .unwrap_or(Tid::ZERO),
                )
            } else {
                None
            };
            let data = if self.client_rng.chance(0.05) {
                None
            } else {
                Some(Bytes::from(format!("c{cl_id}r{request}k{k}")))
            };
            records.push(Record {
                oid: Oid::from_u64(k),
                data,
                expected_serial: expected,
            });
        }
        let cr = CommitRequest {
            client: cl_id,
            request,
            meta: TxnMeta::default(),
            records,
            tid: replica::TidChoice::Next,
        };
        self.send_attempt(c, cr, 0);
    }

    fn think(&mut self) -> Duration {
        let mean = self.opts.think.as_micros() as f64;
        Duration::from_micros(self.client_rng.exp(mean) as u64 + 1)
    }

    fn client_read(&mut self, c: usize) {
        let i = self.client_rng.range(0, self.servers.len() as u64 - 1) as usize;
        if self.w.paused(i) {
            return;
        }
        let now = self.w.now;
        let Some(core) = self.servers[i].core.as_mut() else {
            return;
        };
        // The production read path: one consistent state between two inputs, or refused while
        // an object recovery is open.
        let Ok((store, st)) = core.read(now) else {
            self.drain(i);
            return;
        };
        let k = self.client_rng.range(0, self.opts.keyspace - 1);
        // As of what the server's disk holds, as every production reader reads.
        let tid = st.last_tid;
        let rev = store.load_at(&Oid::from_u64(k), tid).ok().flatten();
        // Reading gave the core an input's time: what it has to say goes out now.
        self.drain(i);
        self.totals.reads += 1;
        self.history.events.push(REvent::Read {
            at: self.w.now,
            server: i as u32,
            tid,
        });
        if let Some(rev) = rev {
            self.clients[c].serials.insert(k, rev.tid);
        }
    }

    /// The client library's routing: the primary it was told of, else the servers in turn.
    fn send_attempt(&mut self, c: usize, cr: CommitRequest, attempt: u64) {
        let all: Vec<usize> = (0..self.servers.len()).collect();
        let target = self.clients[c].route.next(&all).unwrap_or(0);
        self.clients[c].inflight = Some(Inflight {
            c: cr,
            attempt,
            target,
        });
        let request = self.clients[c].inflight.as_ref().map_or(0, |f| f.c.request);
        self.client_send(c, request, attempt);
    }

    /// Whether `(request, attempt)` is the client's current attempt (timers and answers of
    /// earlier ones are ignored).
    fn current(&self, c: usize, request: u64, attempt: u64) -> bool {
        self.clients[c]
            .inflight
            .as_ref()
            .is_some_and(|f| f.attempt == attempt && f.c.request == request)
    }

    fn client_send(&mut self, c: usize, request: u64, attempt: u64) {
        if !self.current(c, request, attempt) {
            return;
        }
        let f = self.clients[c].inflight.as_ref().expect("current");
        let (cr, server) = (f.c.clone(), f.target);
        let cr_request = cr.request;
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.req_owner.insert(req, (c, attempt, cr.request));
        self.totals.attempts += 1;
        let now = self.w.now;
        self.tr(|| {
            format!(
                "{now:?} c{c} request {} attempt {attempt} to s{server}",
                cr.request
            )
        });
        let d = self.client_delay();
        self.schedule(now.saturating_add(d), Ev::Request { server, req, c: cr });
        let t = self.opts.client_timeout;
        self.schedule(
            now.saturating_add(t),
            Ev::ClientTimeout {
                client: c,
                request: cr_request,
                attempt,
            },
        );
    }

    fn client_timeout(&mut self, c: usize, request: u64, attempt: u64) {
        if !self.current(c, request, attempt) {
            return;
        }
        let cr = self.clients[c]
            .inflight
            .as_ref()
            .expect("current")
            .c
            .clone();
        let target = self.clients[c].inflight.as_ref().map_or(0, |f| f.target);
        let pause = match self.clients[c].route.on_answer(target, Answer::Unknown) {
            Verdict::Retry(p) => p,
            Verdict::Done => Duration::ZERO,
        };
        self.clients[c].inflight = None;
        self.resend_at(c, cr, attempt + 1, self.w.now.saturating_add(pause));
    }

    fn request(&mut self, server: usize, req: ReqId, c: CommitRequest) {
        let now = self.w.now;
        self.tr(|| {
            format!(
                "{now:?} s{server} gets {req:?} c{} r{}",
                c.client, c.request
            )
        });
        if self.w.paused(server) {
            return;
        }
        let s = &mut self.servers[server];
        let Some(core) = s.core.as_mut() else {
            return;
        };
        core.commit(self.w.now, req, c);
        self.drain(server);
    }

    /// The operator's voter change `op` reaches `server` (attempt `attempt`).
    fn operator_send(&mut self, op: usize, attempt: u32, server: usize) {
        if self.voter_ops[op].finished || self.voter_ops[op].attempt != attempt {
            return;
        }
        let now = self.w.now;
        let t = now.saturating_add(Duration::from_millis(1000));
        self.schedule(t, Ev::OperatorTimeout { op, attempt });
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.op_reqs.insert(req, (op, attempt));
        let (add, remove) = match &self.voter_ops[op].kind {
            OpKind::Voters { add, remove } => (add.clone(), remove.clone()),
            OpKind::Membership { change, client } => {
                let (change, client) = (change.clone(), *client);
                self.tr(|| format!("{now:?} operator {change:?} attempt {attempt} to s{server}"));
                if self.w.paused(server) {
                    return;
                }
                if let Some(core) = self.servers[server].core.as_mut() {
                    core.membership_change(now, req, client, 1, change);
                    self.drain(server);
                }
                return;
            }
        };
        self.tr(|| {
            format!("{now:?} operator voters +{add:?} -{remove:?} attempt {attempt} to s{server}")
        });
        // Like an operator reading `/status` first: never fewer than three voters (or than the
        // cluster started with), for the same reason as the spares.
        if let Some(core) = self.servers[server].core.as_ref() {
            let voters = &core.replica().voters().0.voters;
            let left = voters
                .ids()
                .into_iter()
                .filter(|v| !remove.contains(v))
                .chain(add.iter().map(|(a, _)| *a).filter(|a| !voters.contains(*a)))
                .count();
            if left < self.min_voters {
                self.tr(|| {
                    format!("{now:?} operator skips voters +{add:?} -{remove:?}: {left} voters would be left")
                });
                self.voter_ops[op].finished = true;
                self.totals.voter_changes_refused += 1;
                return;
            }
        }
        if self.w.paused(server) {
            return;
        }
        let s = &mut self.servers[server];
        if let Some(core) = s.core.as_mut() {
            core.voter_change(now, req, &add, &remove);
            self.drain(server);
        }
    }

    fn operator_retry(&mut self, op: usize, server: usize, pause: Duration) {
        let o = &mut self.voter_ops[op];
        o.attempt += 1;
        if o.attempt >= OPERATOR_ATTEMPTS {
            o.finished = true;
            return;
        }
        let attempt = o.attempt;
        let at = self.w.now.saturating_add(pause);
        self.schedule(
            at,
            Ev::OperatorSend {
                op,
                attempt,
                server,
            },
        );
    }

    /// The answer to an operator's voter change.
    fn operator_answer(
        &mut self,
        op: usize,
        attempt: u32,
        result: Result<replica::Committed, CommitError>,
    ) {
        if self.voter_ops[op].finished || self.voter_ops[op].attempt != attempt {
            return;
        }
        let now = self.w.now;
        self.tr(|| format!("{now:?} operator change {op}: {result:?}"));
        let voters = matches!(self.voter_ops[op].kind, OpKind::Voters { .. });
        match result {
            Ok(_) => {
                self.voter_ops[op].finished = true;
                if voters {
                    self.totals.voter_changes_done += 1;
                } else {
                    self.totals.membership_changes_done += 1;
                }
            }
            Err(CommitError::Invalid(_)) => {
                self.voter_ops[op].finished = true;
                if voters {
                    self.totals.voter_changes_refused += 1;
                } else {
                    self.totals.membership_changes_refused += 1;
                }
            }
            Err(CommitError::NotPrimary { primary: Some(p) }) => {
                self.operator_retry(op, p as usize, Duration::from_millis(10));
            }
            Err(_) => {
                let next = self.client_rng.range(0, self.servers.len() as u64 - 1);
                self.operator_retry(op, next as usize, Duration::from_millis(100));
            }
        }
    }

    fn answer(&mut self, req: ReqId, result: Result<replica::Committed, CommitError>) {
        if let Some((op, attempt)) = self.op_reqs.remove(&req) {
            return self.operator_answer(op, attempt, result);
        }
        let Some((c, attempt, request)) = self.req_owner.remove(&req) else {
            return;
        };
        if !self.current(c, request, attempt) {
            return;
        }
        let f = self.clients[c].inflight.as_ref().expect("current");
        let cr = f.c.clone();
        let target = f.target;
        let now = self.w.now;
        self.tr(|| {
            format!(
                "{now:?} c{c} request {} attempt {attempt}: {result:?}",
                cr.request
            )
        });
        let said = Answer::of(&result, |p| Some(p as usize));
        let verdict = self.clients[c].route.on_answer(target, said);
        self.clients[c].inflight = None;
        match (verdict, result) {
            (Verdict::Retry(pause), _) => {
                self.resend_at(c, cr, attempt + 1, now.saturating_add(pause));
            }
            (Verdict::Done, Ok(done)) => {
                self.totals.acked += 1;
                for r in &cr.records {
                    let k = u64::from_be_bytes(r.oid.as_bytes().try_into().unwrap_or([0; 8]));
                    self.clients[c].serials.insert(k, done.tid);
                }
                let think = self.think();
                self.schedule(now.saturating_add(think), Ev::ClientTick { client: c });
            }
            (Verdict::Done, Err(e)) => {
                if let CommitError::Conflict { oid, actual, .. } = &e {
                    let k = u64::from_be_bytes(oid.as_bytes().try_into().unwrap_or([0; 8]));
                    self.clients[c].serials.insert(k, *actual);
                }
                self.history.events.push(REvent::Failed {
                    at: now,
                    client: self.clients[c].id,
                    request: cr.request,
                    error: e.to_string(),
                });
                let think = self.think();
                self.schedule(now.saturating_add(think), Ev::ClientTick { client: c });
            }
        }
    }

    /// The next attempt, to where the retry policy says, at `at`.
    fn resend_at(&mut self, c: usize, cr: CommitRequest, attempt: u64, at: Time) {
        let all: Vec<usize> = (0..self.servers.len()).collect();
        let target = self.clients[c].route.next(&all).unwrap_or(0);
        let request = cr.request;
        self.clients[c].inflight = Some(Inflight {
            c: cr,
            attempt,
            target,
        });
        self.schedule(
            at,
            Ev::ClientSend {
                client: c,
                request,
                attempt,
            },
        );
    }
}

impl App for ReplicaCluster {
    type Core = Core;
    type Event = Ev;

    fn world(&mut self) -> &mut World<Ev> {
        &mut self.w
    }

    fn core(&mut self, host: usize) -> Option<&mut Core> {
        self.servers[host].core.as_mut()
    }

    fn start(&mut self, host: usize, incarnation: u64) -> bool {
        self.start_server(host, incarnation)
    }

    fn stop(&mut self, host: usize, wiped: bool) -> bool {
        self.stop_server(host, wiped)
    }

    fn on_paused(&mut self, host: usize) {
        self.history.events.push(REvent::Stopped {
            at: self.w.now,
            server: host as u32,
        });
    }

    fn on_heal(&mut self, host: usize) {
        if self.servers[host].store_failing {
            world::act(self, Action::StoreHeals(host));
        }
    }

    fn on_outputs(&mut self, i: usize) {
        while let Some(out) = self.servers[i].core.as_mut().and_then(|c| c.poll_output()) {
            self.output(i, out);
        }
    }

    fn on_action(&mut self, a: Action) {
        self.server_action(a);
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::ClientTick { client } => self.client_tick(client),
            Ev::ClientTimeout {
                client,
                request,
                attempt,
            } => self.client_timeout(client, request, attempt),
            Ev::ClientSend {
                client,
                request,
                attempt,
            } => self.client_send(client, request, attempt),
            Ev::Request { server, req, c } => self.request(server, req, c),
            Ev::Answer { req, result } => self.answer(req, result),
            Ev::OperatorSend {
                op,
                attempt,
                server,
            } => self.operator_send(op, attempt, server),
            Ev::OperatorTimeout { op, attempt } => {
                if !self.voter_ops[op].finished && self.voter_ops[op].attempt == attempt {
                    let next = self.client_rng.range(0, self.servers.len() as u64 - 1);
                    self.operator_retry(op, next as usize, Duration::ZERO);
                }
            }
            Ev::Synced {
                server,
                incarnation,
                id,
            } => self.synced(server, incarnation, id),
            Ev::Fetched {
                server,
                incarnation,
                id,
                donor,
                manifest,
            } => self.fetched(server, incarnation, id, donor, manifest),
        }
    }
}

impl ReplicaCluster {
    /// The roles of running servers (for scenario tests).
    pub fn roles(&self) -> Vec<Option<Role>> {
        self.servers
            .iter()
            .map(|s| s.core.as_ref().map(|c| c.replica().role()))
            .collect()
    }
}

/// What one replica seed produced.
#[derive(Debug)]
pub struct ReplicaReport {
    /// The options the seed drew.
    pub options: ReplicaOptions,
    /// Counts.
    pub totals: RTotals,
    /// Every property violated.
    pub violations: Vec<crate::checkers::Violation>,
    /// A digest of the run: equal for equal runs.
    pub digest: u64,
    /// The recorded history.
    pub history: RHistory,
}

/// Runs the swarm scenario of `seed` with `servers` storage servers and checks it.
pub fn run_replica_seed(seed: u64, servers: usize, trace: Option<Tracer>) -> ReplicaReport {
    run_replica_options(ReplicaOptions::swarm(seed, servers), trace)
}

/// Runs the swarm scenario of explicit options.
pub fn run_replica_options(options: ReplicaOptions, trace: Option<Tracer>) -> ReplicaReport {
    let mut c = ReplicaCluster::new(options.clone());
    if let Some(t) = trace {
        c.set_trace(t);
    }
    c.plan_swarm();
    finish_run(options, c)
}

/// Runs a hand-written scenario: `script` adds actions to a booted cluster.
pub fn run_replica_script(
    options: ReplicaOptions,
    calm_from: Time,
    end: Time,
    script: impl FnOnce(&mut ReplicaCluster),
) -> ReplicaReport {
    let mut c = ReplicaCluster::new(options.clone());
    c.plan_manual(calm_from, end);
    script(&mut c);
    finish_run(options, c)
}

fn finish_run(options: ReplicaOptions, c: ReplicaCluster) -> ReplicaReport {
    let (history, totals, digest) = c.run();
    let violations = checkers::check_all(&history);
    ReplicaReport {
        options,
        totals,
        violations,
        digest,
        history,
    }
}

/// One trace line for a checkpoint command.
fn command_line(c: &CheckpointCommand) -> String {
    match c {
        CheckpointCommand::Fetch {
            id,
            donor,
            manifest,
            ..
        } => format!("fetch {id} from s{donor} (tid {})", manifest.tid),
        other => format!("{other:?}"),
    }
}
