//! The simulator driver: N production `gcs::Node`s in one thread over virtual time.
//!
//! One priority queue ordered by `(time, insertion number)` holds datagram arrivals, node
//! deadlines, application sends and scenario actions. The loop pops the earliest event, sets the
//! clock, steps the node and routes its outputs through the faulty network. Nothing here reads a
//! clock or an OS random source, so a seed replays the same history byte for byte.

pub use crate::faults::Action;
use crate::faults::{self, Net, Plan};
use crate::history::{Event as HEvent, History, MsgId};
use crate::host::{recipients, HostIo};
use crate::options::Options;
use crate::prng::Prng;
use crate::queue::{fnv, EventQueue, DIGEST_START};
use bytes::{BufMut, Bytes, BytesMut};
use gcs::{Node, Output, ProcId, Service, Time};
use std::time::Duration;

/// Receives one trace line per simulated event.
pub type Tracer = Box<dyn FnMut(&str)>;

#[derive(Debug)]
enum Ev {
    Arrive { to: usize, bytes: Bytes },
    Timer { node: usize, gen: u64 },
    AppSend { node: usize },
    Action(Action),
}

struct SimNode {
    node: Option<Node>,
    incarnation: u64,
    io: HostIo,
    next_msg: u64,
    phase: Option<gcs::Phase>,
}

const MSG_HEADER: usize = 25;

/// Totals of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages delivered, summed over processes.
    pub delivered: u64,
    /// Views (regular and transitional) installed, summed over processes.
    pub views: u64,
    /// Datagrams put on the simulated wire.
    pub datagrams: u64,
    /// Multicasts requested.
    pub sent: u64,
}

/// A simulated cluster.
pub struct Cluster {
    opts: Options,
    now: Time,
    queue: EventQueue<Ev>,
    nodes: Vec<SimNode>,
    net: Net,
    app_rng: Prng,
    history: History,
    totals: Totals,
    digest: u64,
    trace: Option<Tracer>,
}

impl Cluster {
    /// A cluster for `opts`; nothing runs until `run`.
    pub fn new(opts: Options) -> Cluster {
        let mut root = Prng::new(opts.seed);
        let n = opts.nodes;
        Cluster {
            now: Time::ZERO,
            queue: EventQueue::default(),
            nodes: (0..n)
                .map(|_| SimNode {
                    node: None,
                    incarnation: 0,
                    io: HostIo::default(),
                    next_msg: 0,
                    phase: None,
                })
                .collect(),
            net: Net::new(n, opts.calm_net, root.fork()),
            app_rng: root.fork(),
            history: History::default(),
            totals: Totals::default(),
            digest: DIGEST_START,
            trace: None,
            opts,
        }
    }

    /// Prints (through `f`) one line per event.
    pub fn set_trace(&mut self, f: Tracer) {
        self.trace = Some(f);
    }

    fn tr(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let s = line();
            t(&s);
        }
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.queue.push(at, ev);
    }

    /// Adds a scenario action at `at`.
    pub fn at(&mut self, at: Time, action: Action) {
        self.schedule(at, Ev::Action(action));
    }

    /// Builds the seeded scenario: boot, a storm of faults, heal, calm.
    pub fn plan_swarm(&mut self) {
        let plan = faults::plan_swarm(&self.opts, false);
        self.install(plan);
    }

    /// A hand-written scenario instead of the swarm: boots every daemon at time zero, runs
    /// until `end`, and checks liveness from `calm_from` on. Add faults with [`Cluster::at`].
    pub fn plan_manual(&mut self, calm_from: Time, end: Time) {
        let plan = faults::plan_manual(&self.opts, calm_from, end);
        self.install(plan);
    }

    fn install(&mut self, plan: Plan) {
        for (t, a) in plan.actions {
            self.at(t, a);
        }
        self.history.calm_from = Some(plan.calm_from);
        self.history.end = plan.end;
        self.history.sends_until = plan.sends_until;
    }

    /// Runs until the history's end time; returns the history and totals.
    pub fn run(mut self) -> (History, Totals, u64) {
        let end = self.history.end;
        while let Some((at, ev)) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.digest = fnv(self.digest, &at.0.to_le_bytes());
            match ev {
                Ev::Arrive { to, bytes } => self.arrive(to, bytes),
                Ev::Timer { node, gen } => self.timer(node, gen),
                Ev::AppSend { node } => self.app_send(node),
                Ev::Action(a) => self.action(a),
            }
        }
        self.now = end;
        (self.history, self.totals, self.digest)
    }

    fn proc_of(&self, i: usize) -> ProcId {
        ProcId::new(i as u32, self.nodes[i].incarnation)
    }

    fn action(&mut self, a: Action) {
        let now = self.now;
        self.tr(|| format!("{now:?} action {a:?}"));
        match a {
            Action::SetNet(p) => self.net.params = p,
            Action::SetLinks(l) => self.net.links = l,
            Action::Swap { .. }
            | Action::VoterChange { .. }
            | Action::StoreFails(_)
            | Action::StoreHeals(_) => {}
            Action::Crash(i) | Action::Wipe(i) => {
                if self.nodes[i].node.take().is_some() {
                    let p = self.proc_of(i);
                    self.log(p, HEvent::Crashed { at: self.now });
                    self.nodes[i].io.crashed();
                }
            }
            Action::Restart(i) => {
                if self.nodes[i].node.is_none() {
                    self.nodes[i].incarnation += 1;
                    self.nodes[i].next_msg = 0;
                    let p = self.proc_of(i);
                    let node = Node::new(self.opts.gcs.clone(), p, self.now)
                        .expect("simulator configuration is valid");
                    self.nodes[i].node = Some(node);
                    self.history.procs.entry(p).or_default();
                    self.drain(i);
                    let first = self.send_delay();
                    self.schedule(self.now.saturating_add(first), Ev::AppSend { node: i });
                }
            }
            Action::Pause(i) => self.nodes[i].io.paused = self.nodes[i].node.is_some(),
            Action::Resume(i) => self.resume(i),
            Action::Heal => {
                let n = self.opts.nodes;
                self.net.params = self.opts.calm_net;
                self.net.links = vec![vec![true; n]; n];
                for i in 0..n {
                    self.resume(i);
                    if self.nodes[i].node.is_none() {
                        self.action(Action::Restart(i));
                    }
                }
            }
        }
    }

    fn resume(&mut self, i: usize) {
        if !self.nodes[i].io.paused {
            return;
        }
        self.nodes[i].io.paused = false;
        // Stale timers fire first (the daemon notices the time that passed), then the backlog.
        if let Some(node) = self.nodes[i].node.as_mut() {
            node.handle_timeout(self.now);
        }
        self.drain(i);
        while let Some(b) = self.nodes[i].io.next_buffered() {
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_packet(self.now, b);
            }
            self.drain(i);
        }
    }

    fn send_delay(&mut self) -> Duration {
        let mean = self.opts.send_interval.as_micros() as f64;
        Duration::from_micros(self.app_rng.exp(mean) as u64 + 1)
    }

    fn app_send(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return; // This incarnation's sender dies with it; a restart schedules a new one.
        }
        let next = self.send_delay();
        self.schedule(self.now.saturating_add(next), Ev::AppSend { node: i });
        if self.nodes[i].io.paused || self.now >= self.history.sends_until {
            return;
        }
        let service = self.app_rng.pick(&Service::ALL);
        let len = if self.app_rng.chance(self.opts.large_fraction) {
            self.app_rng.range(2_000, 60_000) as usize
        } else {
            self.app_rng.range(MSG_HEADER as u64, 300) as usize
        };
        let p = self.proc_of(i);
        let msg = MsgId {
            sender: p,
            n: self.nodes[i].next_msg,
        };
        let payload = encode_payload(msg, service, len);
        let node = self.nodes[i].node.as_mut().expect("running");
        if node.multicast(self.now, service, payload).is_ok() {
            self.nodes[i].next_msg += 1;
            self.totals.sent += 1;
            self.log(
                p,
                HEvent::Sent {
                    msg,
                    service,
                    at: self.now,
                },
            );
            let now = self.now;
            self.tr(|| format!("{now:?} n{i} send {p:?}#{} {service:?} {len}B", msg.n));
        }
        self.drain(i);
    }

    fn arrive(&mut self, to: usize, bytes: Bytes) {
        let sn = &mut self.nodes[to];
        if sn.node.is_none() {
            return;
        }
        if sn.io.paused {
            sn.io.buffer(bytes);
            return;
        }
        self.digest = fnv(self.digest, &bytes[..bytes.len().min(48)]);
        if self.trace.is_some() {
            let d = gcs::wire::describe(&bytes);
            let now = self.now;
            self.tr(|| format!("{now:?} n{to} recv {d}"));
        }
        let node = self.nodes[to].node.as_mut().expect("running");
        node.handle_packet(self.now, bytes);
        self.drain(to);
    }

    fn timer(&mut self, i: usize, gen: u64) {
        let sn = &mut self.nodes[i];
        if !sn.io.fires(gen) || sn.node.is_none() {
            return;
        }
        if self.trace.is_some() {
            let now = self.now;
            self.tr(|| format!("{now:?} n{i} timeout"));
        }
        let node = self.nodes[i].node.as_mut().expect("running");
        node.handle_timeout(self.now);
        self.drain(i);
    }

    /// Routes everything node `i` produced, and re-arms its deadline.
    fn drain(&mut self, i: usize) {
        let from = self.proc_of(i);
        loop {
            let Some(node) = self.nodes[i].node.as_mut() else {
                return;
            };
            let Some(out) = node.poll_output() else {
                break;
            };
            match out {
                Output::Transmit { dest, bytes } => {
                    for j in recipients(dest, i, self.opts.nodes) {
                        self.send(i, j, bytes.clone());
                    }
                }
                Output::Deliver(d) => {
                    let (msg, ok) = decode_payload(&d.payload, d.sender);
                    self.totals.delivered += 1;
                    let now = self.now;
                    self.tr(|| {
                        format!(
                            "{now:?} n{i} deliver {:?}#{} {:?} {}B",
                            msg.sender,
                            msg.n,
                            d.service,
                            d.payload.len()
                        )
                    });
                    self.log(
                        from,
                        HEvent::Delivered {
                            msg,
                            service: d.service,
                            at: self.now,
                            payload_ok: ok,
                        },
                    );
                }
                Output::View(v) => {
                    self.totals.views += 1;
                    let now = self.now;
                    self.tr(|| format!("{now:?} n{i} view {:?} {:?}", v.id, v.members));
                    self.digest = fnv(self.digest, &v.id.ring.seq.to_le_bytes());
                    self.log(
                        from,
                        HEvent::View {
                            view: v,
                            at: self.now,
                        },
                    );
                }
            }
        }
        let phase = self.nodes[i].node.as_ref().map(|n| n.phase());
        if phase != self.nodes[i].phase {
            let (now, was) = (self.now, self.nodes[i].phase);
            self.tr(|| format!("{now:?} n{i} phase {was:?} -> {phase:?}"));
            self.nodes[i].phase = phase;
        }
        let deadline = self.nodes[i].node.as_ref().and_then(|n| n.poll_deadline());
        if let Some((at, gen)) = self.nodes[i].io.rearm(deadline, self.now) {
            self.schedule(at, Ev::Timer { node: i, gen });
        }
    }

    fn log(&mut self, p: ProcId, e: HEvent) {
        self.history.procs.entry(p).or_default().push(e);
    }

    fn send(&mut self, from: usize, to: usize, bytes: Bytes) {
        self.totals.datagrams += 1;
        for d in self.net.delays(from, to) {
            self.schedule(
                Time(self.now.0 + d),
                Ev::Arrive {
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }
}

/// The simulator's payload: the message id, its service and length, then a pattern derived from
/// the id, so that a receiver can tell a corrupt or misattributed payload.
pub fn encode_payload(msg: MsgId, service: Service, len: usize) -> Bytes {
    let len = len.max(MSG_HEADER);
    let mut b = BytesMut::with_capacity(len);
    b.put_u32_le(msg.sender.node);
    b.put_u64_le(msg.sender.incarnation);
    b.put_u64_le(msg.n);
    b.put_u8(service.to_u8());
    b.put_u32_le(len as u32);
    let seed = pattern_seed(msg);
    for k in MSG_HEADER..len {
        b.put_u8(seed.wrapping_add(k as u64) as u8);
    }
    b.freeze()
}

fn pattern_seed(msg: MsgId) -> u64 {
    fnv(
        fnv(0x1234, &msg.sender.incarnation.to_le_bytes()),
        &msg.n.to_le_bytes(),
    ) ^ msg.sender.node as u64
}

/// Reads back a simulator payload: the id it names and whether it is intact and was delivered
/// with the sender the daemon claims.
pub fn decode_payload(p: &[u8], claimed_sender: ProcId) -> (MsgId, bool) {
    if p.len() < MSG_HEADER {
        return (
            MsgId {
                sender: claimed_sender,
                n: u64::MAX,
            },
            false,
        );
    }
    let node = u32::from_le_bytes(p[0..4].try_into().expect("4"));
    let inc = u64::from_le_bytes(p[4..12].try_into().expect("8"));
    let n = u64::from_le_bytes(p[12..20].try_into().expect("8"));
    let len = u32::from_le_bytes(p[21..25].try_into().expect("4")) as usize;
    let msg = MsgId {
        sender: ProcId::new(node, inc),
        n,
    };
    let seed = pattern_seed(msg);
    let ok = msg.sender == claimed_sender
        && len == p.len()
        && Service::from_u8(p[20]).is_some()
        && p[MSG_HEADER..]
            .iter()
            .enumerate()
            .all(|(k, b)| *b == seed.wrapping_add((k + MSG_HEADER) as u64) as u8);
    (msg, ok)
}
