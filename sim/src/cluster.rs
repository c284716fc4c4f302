//! The `gcs` mode: N production `gcs::Node`s on the [`world`] framework. This file holds only
//! what is particular to it: the application on each daemon (seeded multicasts of
//! self-checking payloads, [`encode_payload`]) and the recording of sends, deliveries, views
//! and crashes in the [`History`] the EVS checkers judge. Time, the queue, the faulty network,
//! crashes, pauses, trace and digest are the world's.

pub use crate::faults::Action;
use crate::faults::{self, Plan};
use crate::history::{Event as HEvent, History, MsgId};
use crate::options::Options;
use crate::prng::Prng;
use crate::queue::fnv;
pub use crate::world::Tracer;
use crate::world::{self, App, World};
use bytes::{BufMut, Bytes, BytesMut};
use gcs::{Node, Output, ProcId, Service, Time};
use std::time::Duration;

/// The gcs simulator's own event: a daemon's application sends a multicast.
#[derive(Debug)]
pub struct AppSend {
    node: usize,
}

struct SimNode {
    node: Option<Node>,
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

/// A simulated cluster of gcs daemons: the [`App`] of the `gcs` mode.
pub struct Cluster {
    w: World<AppSend>,
    opts: Options,
    nodes: Vec<SimNode>,
    app_rng: Prng,
    history: History,
    totals: Totals,
}

impl Cluster {
    /// A cluster for `opts`; nothing runs until `run`.
    pub fn new(opts: Options) -> Cluster {
        let mut root = Prng::new(opts.seed);
        let n = opts.nodes;
        let mut w = World::new(n, opts.calm_net, root.fork());
        w.trace_io(gcs::wire::describe);
        Cluster {
            w,
            nodes: (0..n)
                .map(|_| SimNode {
                    node: None,
                    next_msg: 0,
                    phase: None,
                })
                .collect(),
            app_rng: root.fork(),
            history: History::default(),
            totals: Totals::default(),
            opts,
        }
    }

    /// Prints (through `f`) one line per event.
    pub fn set_trace(&mut self, f: Tracer) {
        self.w.set_trace(f);
    }

    /// Adds a scenario action at `at`.
    pub fn at(&mut self, at: Time, action: Action) {
        self.w.at(at, action);
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
        self.w.install(&plan);
        self.history.calm_from = Some(plan.calm_from);
        self.history.end = plan.end;
        self.history.sends_until = plan.sends_until;
    }

    /// Runs until the history's end time; returns the history, the totals and the digest.
    pub fn run(mut self) -> (History, Totals, u64) {
        world::run(&mut self);
        self.totals.datagrams = self.w.datagrams;
        (self.history, self.totals, self.w.digest())
    }

    fn proc_of(&self, i: usize) -> ProcId {
        ProcId::new(i as u32, self.w.incarnation(i))
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
        let now = self.w.now;
        self.w
            .schedule(now.saturating_add(next), AppSend { node: i });
        if self.w.paused(i) || now >= self.history.sends_until {
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
        if node.multicast(now, service, payload).is_ok() {
            self.nodes[i].next_msg += 1;
            self.totals.sent += 1;
            self.log(
                p,
                HEvent::Sent {
                    msg,
                    service,
                    at: now,
                },
            );
            self.w
                .tr(|| format!("{now:?} n{i} send {p:?}#{} {service:?} {len}B", msg.n));
        }
        world::drain(self, i);
    }

    fn log(&mut self, p: ProcId, e: HEvent) {
        self.history.procs.entry(p).or_default().push(e);
    }
}

impl App for Cluster {
    type Core = Node;
    type Event = AppSend;

    fn world(&mut self) -> &mut World<AppSend> {
        &mut self.w
    }

    fn core(&mut self, host: usize) -> Option<&mut Node> {
        self.nodes[host].node.as_mut()
    }

    fn start(&mut self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].next_msg = 0;
        let p = ProcId::new(i as u32, incarnation);
        let node = Node::new(self.opts.gcs.clone(), p, self.w.now)
            .expect("simulator configuration is valid");
        self.nodes[i].node = Some(node);
        self.history.procs.entry(p).or_default();
        true
    }

    fn on_started(&mut self, i: usize) {
        let first = self.send_delay();
        let now = self.w.now;
        self.w
            .schedule(now.saturating_add(first), AppSend { node: i });
    }

    fn stop(&mut self, i: usize, _wiped: bool) -> bool {
        if self.nodes[i].node.take().is_none() {
            return false;
        }
        let p = self.proc_of(i);
        self.log(p, HEvent::Crashed { at: self.w.now });
        true
    }

    fn on_event(&mut self, e: AppSend) {
        self.app_send(e.node);
    }

    /// Routes everything node `i` produced.
    fn on_outputs(&mut self, i: usize) {
        let from = self.proc_of(i);
        let now = self.w.now;
        loop {
            let Some(node) = self.nodes[i].node.as_mut() else {
                return;
            };
            let Some(out) = node.poll_output() else {
                break;
            };
            match out {
                Output::Transmit { dest, bytes } => self.w.transmit(i, dest, &bytes),
                Output::Deliver(d) => {
                    let (msg, ok) = decode_payload(&d.payload, d.sender);
                    self.totals.delivered += 1;
                    self.w.tr(|| {
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
                            at: now,
                            payload_ok: ok,
                        },
                    );
                }
                Output::View(v) => {
                    self.totals.views += 1;
                    self.w
                        .tr(|| format!("{now:?} n{i} view {:?} {:?}", v.id, v.members));
                    self.w.fold(&v.id.ring.seq.to_le_bytes());
                    self.log(from, HEvent::View { view: v, at: now });
                }
            }
        }
        let phase = self.nodes[i].node.as_ref().map(|n| n.phase());
        if phase != self.nodes[i].phase {
            let was = self.nodes[i].phase;
            self.w
                .tr(|| format!("{now:?} n{i} phase {was:?} -> {phase:?}"));
            self.nodes[i].phase = phase;
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
