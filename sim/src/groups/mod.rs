//! The `groups` mode: N production `gcs::Daemon`s (the named groups layer over the ring) on the
//! [`crate::world`] framework, under the seed's swarm faults (loss, duplication, reordering,
//! partitions, one-way links, crashes, pauses), with a random workload of client sessions:
//! connects, joins, leaves, disconnects and multi-group sends, some to private groups. During
//! the storm the workload also cuts the network through a daemon that is in the middle of a
//! state exchange, so that exchanges are abandoned (a random cut rarely lands inside one).
//!
//! Every session's events are recorded in a [`GroupHistory`]; [`checker`] judges group-level
//! virtual synchrony on it. This mode replaced the random storm that `gcs/tests/groups.rs` (now
//! `sim/tests/groups_scripted.rs`) ran on a hand-written fixed-delay network.

pub mod checker;

use crate::checkers::Violation;
use crate::faults;
use crate::options::Options;
use crate::prng::Prng;
pub use crate::world::Tracer;
use crate::world::{self, App, World};
use gcs::{Daemon, DaemonOutput, Limits, ProcId, Service, SessionEvent, SessionId, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The groups the workload uses (besides private groups).
pub const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

/// A session: the daemon run serving it and its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionKey {
    /// The daemon (node and incarnation).
    pub daemon: ProcId,
    /// The session number on that daemon.
    pub sid: u32,
}

/// What a groups run records.
#[derive(Clone, Debug, Default)]
pub struct GroupHistory {
    /// Every event each session was given, in order.
    pub sessions: BTreeMap<SessionKey, Vec<SessionEvent>>,
    /// The sessions alive at the end (after the calm phase) and the groups each is in.
    pub finals: Vec<(SessionKey, BTreeSet<String>)>,
    /// Calls the workload made that the daemon refused (it only makes valid ones).
    pub refused: Vec<(Time, SessionKey, String)>,
    /// When the network healed for good.
    pub calm_from: Time,
    /// When the run stopped.
    pub end: Time,
}

/// Totals of one groups run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupTotals {
    /// Sessions connected.
    pub sessions: u64,
    /// Joins and leaves asked.
    pub joins_leaves: u64,
    /// Multicasts sent.
    pub sent: u64,
    /// Messages delivered to sessions.
    pub delivered: u64,
    /// Group views delivered to sessions.
    pub views: u64,
    /// State exchanges completed (daemons running at the end).
    pub exchanges: u64,
    /// State exchanges abandoned (daemons running at the end).
    pub abandoned: u64,
    /// Messages held during exchanges (daemons running at the end).
    pub held: u64,
}

/// The groups mode's own event: the workload's next step.
#[derive(Debug)]
pub struct Tick;

struct Live {
    host: usize,
    sid: SessionId,
    name: String,
    joined: BTreeSet<&'static str>,
}

/// A simulated cluster of group daemons with client sessions.
pub struct GroupsCluster {
    w: World<Tick>,
    opts: Options,
    daemons: Vec<Option<Daemon>>,
    rng: Prng,
    live: Vec<Live>,
    names: u64,
    interrupts: u32,
    history: GroupHistory,
    totals: GroupTotals,
    sends_until: Time,
}

/// Per daemon; the workload keeps far fewer sessions, in at most three groups each. (The
/// defaults do not fit the simulator's 1 MiB messages: a state exchange must fit in one.)
const LIMITS: Limits = Limits {
    max_sessions: 64,
    max_groups_per_session: 8,
};

/// Re-partitions fired at an exchange, at most, per run.
const INTERRUPTS_MAX: u32 = 20;

impl GroupsCluster {
    /// A cluster for `opts`, with the seed's swarm plan; nothing runs until `run`.
    pub fn new(opts: Options) -> GroupsCluster {
        let mut root = Prng::new(opts.seed ^ 0x6209_5C0E);
        let n = opts.nodes;
        let mut w = World::new(n, opts.calm_net, root.fork());
        w.trace_io(gcs::wire::describe);
        let plan = faults::plan_swarm(&opts, false);
        w.install(&plan);
        w.schedule(Time(100_000), Tick);
        GroupsCluster {
            w,
            daemons: (0..n).map(|_| None).collect(),
            rng: root.fork(),
            live: Vec::new(),
            names: 0,
            interrupts: 0,
            history: GroupHistory {
                calm_from: plan.calm_from,
                end: plan.end,
                ..GroupHistory::default()
            },
            totals: GroupTotals::default(),
            sends_until: plan.sends_until,
            opts,
        }
    }

    /// Prints (through `f`) one line per event.
    pub fn set_trace(&mut self, f: Tracer) {
        self.w.set_trace(f);
    }

    /// Runs to the end; returns the history, the totals and the run's digest.
    pub fn run(mut self) -> (GroupHistory, GroupTotals, u64) {
        world::run(&mut self);
        for l in &self.live {
            let key = self.key(l.host, l.sid);
            let groups = l.joined.iter().map(|g| g.to_string()).collect();
            self.history.finals.push((key, groups));
        }
        for d in self.daemons.iter().flatten() {
            let s = d.stats();
            self.totals.exchanges += s.exchanges;
            self.totals.abandoned += s.exchanges_abandoned;
            self.totals.held += s.held;
        }
        (self.history, self.totals, self.w.digest())
    }

    fn key(&self, host: usize, sid: SessionId) -> SessionKey {
        SessionKey {
            daemon: ProcId::new(host as u32, self.w.incarnation(host)),
            sid: sid.0,
        }
    }

    /// The daemon of `host` if a client can talk to it (running, not frozen).
    fn reachable(&mut self, host: usize) -> Option<&mut Daemon> {
        if self.w.paused(host) {
            return None;
        }
        self.daemons[host].as_mut()
    }

    fn refused(&mut self, host: usize, sid: SessionId, what: String) {
        let key = self.key(host, sid);
        self.history.refused.push((self.w.now, key, what));
    }

    fn connect(&mut self, host: usize) {
        let now = self.w.now;
        let name = format!("s{}", self.names + 1);
        let Some(d) = self.reachable(host) else {
            return;
        };
        match d.connect(now, &name) {
            Ok(sid) => {
                self.names += 1;
                self.totals.sessions += 1;
                let key = self.key(host, sid);
                self.history.sessions.entry(key).or_default();
                self.w
                    .tr(|| format!("{now:?} n{host} connect {name} {sid:?}"));
                self.live.push(Live {
                    host,
                    sid,
                    name,
                    joined: BTreeSet::new(),
                });
            }
            Err(e) => self.refused(host, SessionId(u32::MAX), format!("connect: {e}")),
        }
        world::drain(self, host);
    }

    /// One random step of the workload (as the storm of `gcs/tests/groups.rs`, now
    /// `sim/tests/groups_scripted.rs`, did it).
    fn act(&mut self) {
        let n = self.daemons.len() as u64;
        if self.live.is_empty() {
            let host = self.rng.range(0, n - 1) as usize;
            self.connect(host);
            return;
        }
        let k = self.rng.range(0, self.live.len() as u64 - 1) as usize;
        let (host, sid) = (self.live[k].host, self.live[k].sid);
        let now = self.w.now;
        let what = self.rng.range(0, 9);
        if self.reachable(host).is_none() {
            return; // A frozen daemon's clients wait.
        }
        match what {
            0 | 1 => {
                let g = GROUPS[self.rng.range(0, 2) as usize];
                self.totals.joins_leaves += 1;
                let join = self.live[k].joined.insert(g);
                if !join {
                    self.live[k].joined.remove(g);
                }
                let d = self.reachable(host).expect("checked");
                let r = if join {
                    d.join(now, sid, g)
                } else {
                    d.leave(now, sid, g)
                };
                self.w
                    .tr(|| format!("{now:?} n{host} {sid:?} join={join} {g}"));
                if let Err(e) = r {
                    self.refused(host, sid, format!("join={join} {g}: {e}"));
                }
            }
            2 if self.rng.range(0, 5) == 0 => {
                let d = self.reachable(host).expect("checked");
                let r = d.disconnect(now, sid);
                self.w.tr(|| format!("{now:?} n{host} {sid:?} disconnect"));
                if let Err(e) = r {
                    self.refused(host, sid, format!("disconnect: {e}"));
                }
                self.live.remove(k);
                world::drain(self, host);
                let other = self.rng.range(0, n - 1) as usize;
                self.connect(other);
                return;
            }
            _ => {
                self.totals.sent += 1;
                let mut dests = vec![GROUPS[self.rng.range(0, 2) as usize].to_owned()];
                if self.rng.chance(1.0 / 3.0) {
                    dests.push(GROUPS[self.rng.range(0, 2) as usize].to_owned());
                }
                if self.rng.chance(0.2) {
                    let o = &self.live[self.rng.range(0, self.live.len() as u64 - 1) as usize];
                    dests.push(format!("#{}#{}", o.name, o.host));
                }
                let payload = format!("m{}", self.totals.sent);
                let d = self.reachable(host).expect("checked");
                let r = d.multicast(now, sid, &dests, Service::Agreed, payload.as_bytes());
                self.w
                    .tr(|| format!("{now:?} n{host} {sid:?} send {payload} to {dests:?}"));
                if let Err(e) = r {
                    self.refused(host, sid, format!("send {payload}: {e}"));
                }
            }
        }
        world::drain(self, host);
    }

    /// During the storm, now and then, cuts the network through a daemon that is exchanging
    /// group state, so that the exchange is abandoned.
    fn interrupt_exchange(&mut self) {
        if self.interrupts >= INTERRUPTS_MAX
            || self.w.now >= self.history.calm_from
            || !self.rng.chance(1.0 / 3.0)
        {
            return;
        }
        let exchanging: Vec<usize> = (0..self.daemons.len())
            .filter(|i| self.daemons[*i].as_ref().is_some_and(|d| d.exchanging()))
            .collect();
        if exchanging.is_empty() {
            return;
        }
        self.interrupts += 1;
        let n = self.daemons.len();
        let sides = self.rng.range(1, 3);
        let mut side: Vec<u64> = (0..n).map(|_| self.rng.range(0, sides - 1)).collect();
        let x = exchanging[self.rng.range(0, exchanging.len() as u64 - 1) as usize];
        if side.iter().all(|s| *s == side[x]) {
            side[x] += 1;
        }
        let links = (0..n)
            .map(|a| (0..n).map(|b| side[a] == side[b]).collect())
            .collect();
        let now = self.w.now;
        self.w
            .tr(|| format!("{now:?} cut through n{x}'s exchange: sides {side:?}"));
        self.w.net.links = links;
    }
}

impl App for GroupsCluster {
    type Core = Daemon;
    type Event = Tick;

    fn world(&mut self) -> &mut World<Tick> {
        &mut self.w
    }

    fn core(&mut self, host: usize) -> Option<&mut Daemon> {
        self.daemons[host].as_mut()
    }

    fn start(&mut self, host: usize, incarnation: u64) -> bool {
        let me = ProcId::new(host as u32, incarnation);
        let d = Daemon::new(self.opts.gcs.clone(), LIMITS, me, self.w.now)
            .expect("simulator configuration is valid");
        self.daemons[host] = Some(d);
        true
    }

    fn stop(&mut self, host: usize, _wiped: bool) -> bool {
        if self.daemons[host].take().is_none() {
            return false;
        }
        // Its sessions are gone with it.
        self.live.retain(|l| l.host != host);
        true
    }

    fn on_outputs(&mut self, host: usize) {
        while let Some(out) = self.daemons[host].as_mut().and_then(|d| d.poll_output()) {
            match out {
                DaemonOutput::Transmit { dest, bytes } => self.w.transmit(host, dest, &bytes),
                DaemonOutput::Session { sid, event } => {
                    let now = self.w.now;
                    match &event {
                        SessionEvent::Membership(v) => {
                            self.totals.views += 1;
                            self.w.fold(&v.id.view.ring.seq.to_le_bytes());
                            self.w.tr(|| {
                                format!(
                                    "{now:?} n{host} {sid:?} view {} {:?} {:?} {:?}",
                                    v.group, v.id, v.kind, v.members
                                )
                            });
                        }
                        SessionEvent::Message { payload, .. } => {
                            self.totals.delivered += 1;
                            self.w.fold(payload);
                        }
                        SessionEvent::SelfLeave { .. } => {}
                    }
                    let key = self.key(host, sid);
                    self.history.sessions.entry(key).or_default().push(event);
                }
                DaemonOutput::DaemonView(_) => {}
            }
        }
    }

    fn on_event(&mut self, _: Tick) {
        if self.names == 0 {
            // The first step: two sessions on every daemon.
            for host in 0..self.daemons.len() {
                self.connect(host);
                self.connect(host);
            }
        } else if self.w.now < self.sends_until {
            self.interrupt_exchange();
            for _ in 0..self.rng.range(0, 2) {
                self.act();
            }
        }
        let next = Duration::from_micros(self.rng.range(100, 3100));
        let at = self.w.now.saturating_add(next);
        self.w.schedule(at, Tick);
    }
}

/// What one groups seed produced.
#[derive(Debug)]
pub struct GroupsReport {
    /// The options the seed drew.
    pub options: Options,
    /// Counts.
    pub totals: GroupTotals,
    /// Every property violated.
    pub violations: Vec<Violation>,
    /// A digest of the run: equal for equal runs.
    pub digest: u64,
    /// The recorded history.
    pub history: GroupHistory,
}

/// Runs the groups storm of `seed` with `nodes` daemons and checks it.
pub fn run_groups_seed(seed: u64, nodes: usize, trace: Option<Tracer>) -> GroupsReport {
    let options = Options::swarm(seed, nodes);
    let mut c = GroupsCluster::new(options.clone());
    if let Some(t) = trace {
        c.set_trace(t);
    }
    let (history, totals, digest) = c.run();
    let violations = checker::check_all(&history);
    GroupsReport {
        options,
        totals,
        violations,
        digest,
        history,
    }
}
