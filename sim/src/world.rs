//! The simulation framework every simulator mode runs on (`gcs`, `replica`, `groups`): one
//! [`World`] that owns virtual time, the event queue, the faulty network, the hosts' lifecycle
//! and I/O, the trace and the run digest, and an [`App`] per mode that says what runs on a host
//! and what the rest of its world does (clients, operators, disks).
//!
//! How a run proceeds:
//! 1. The mode builds its app with a [`World`] inside (the network's generator forked from the
//!    seed), then [`World::install`]s a [`Plan`] (`faults::plan_swarm` or `plan_manual`): every
//!    scenario [`Action`] is queued at its time and the run's end is set. The app queues its own
//!    first events ([`World::schedule`]).
//! 2. [`run`] pops the earliest event (`(time, insertion number)` order, so equal times keep
//!    their scheduling order), sets [`World::now`] and folds the time into the digest. A
//!    datagram arrival goes to the host's core, or waits in its socket while the host is paused,
//!    or is lost if the host is down. A timer event whose generation is still current fires the
//!    core's timeout. An action changes the network or a host's lifecycle (below); actions only
//!    a mode knows go to [`App::on_action`]. App events go to [`App::on_event`].
//! 3. After every input the host is drained ([`drain`]): [`App::on_outputs`] executes what the
//!    core produced (datagrams go through [`World::transmit`] and the faulty network), then the
//!    host's timer follows the core's new deadline.
//! 4. The run stops at the plan's end; the app reads its history and totals, and the world its
//!    digest.
//!
//! Host lifecycle, the same for every mode: `Crash` and `Wipe` drop the core
//! ([`App::stop`]) with the host's socket buffer and timer; `Restart` starts a new incarnation
//! ([`App::start`], which may refuse, as a server whose store fails does), drains it and calls
//! [`App::on_started`]; `Pause` freezes a running host (datagrams queue, timers wait);
//! `Resume` fires its stale timeout, then feeds the backlog; `Heal` makes the network whole and
//! calm and resumes and restarts every host ([`App::on_heal`] first).
//!
//! Nothing here reads a clock or an OS random source: a seed replays the same run, byte for
//! byte, and the digest (event times, datagram heads, and whatever the app folds in with
//! [`World::fold`]) tells two runs apart.

use crate::faults::{Action, Net, Plan};
use crate::host::{recipients, HostIo};
use crate::options::NetParams;
use crate::prng::Prng;
use crate::queue::{fnv, EventQueue, DIGEST_START};
use bytes::Bytes;
use gcs::{Dest, Time};

/// Receives one trace line per simulated event.
pub type Tracer = Box<dyn FnMut(&str)>;

/// What the world needs of the core a host runs: the sans-IO inputs and the deadline.
pub trait HostCore {
    /// A datagram arrived.
    fn handle_packet(&mut self, now: Time, bytes: Bytes);
    /// The deadline passed (or the host resumed from a pause).
    fn handle_timeout(&mut self, now: Time);
    /// When the core wants its next timeout.
    fn poll_deadline(&self) -> Option<Time>;
}

impl HostCore for gcs::Node {
    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        gcs::Node::handle_packet(self, now, bytes)
    }
    fn handle_timeout(&mut self, now: Time) {
        gcs::Node::handle_timeout(self, now)
    }
    fn poll_deadline(&self) -> Option<Time> {
        gcs::Node::poll_deadline(self)
    }
}

impl HostCore for gcs::Daemon {
    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        gcs::Daemon::handle_packet(self, now, bytes)
    }
    fn handle_timeout(&mut self, now: Time) {
        gcs::Daemon::handle_timeout(self, now)
    }
    fn poll_deadline(&self) -> Option<Time> {
        gcs::Daemon::poll_deadline(self)
    }
}

impl<S: storage::Storage> HostCore for servercore::ServerCore<S> {
    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        servercore::ServerCore::handle_packet(self, now, bytes)
    }
    fn handle_timeout(&mut self, now: Time) {
        servercore::ServerCore::handle_timeout(self, now)
    }
    fn poll_deadline(&self) -> Option<Time> {
        servercore::ServerCore::poll_deadline(self)
    }
}

/// One simulator mode: what runs on the hosts and around them. The app owns its [`World`]
/// (reached through [`App::world`]) and the cores (reached through [`App::core`]); the
/// framework's functions ([`run`], [`act`], [`drain`]) take the app and call its hooks.
pub trait App: Sized {
    /// What a host runs.
    type Core: HostCore;
    /// The mode's own events (client requests, workload steps, ...).
    type Event;
    /// The world the app lives in.
    fn world(&mut self) -> &mut World<Self::Event>;
    /// Host `host`'s core, if it runs.
    fn core(&mut self, host: usize) -> Option<&mut Self::Core>;
    /// Starts incarnation `incarnation` of host `host` (which is down) and keeps its core;
    /// false if it did not start (the world leaves the host down).
    fn start(&mut self, host: usize, incarnation: u64) -> bool;
    /// Host `host` stops (`wiped`: and loses its disk): drops its core; false if it was down.
    fn stop(&mut self, host: usize, wiped: bool) -> bool;
    /// Host `host` started and its first outputs went out.
    fn on_started(&mut self, _host: usize) {}
    /// Host `host` was paused while running.
    fn on_paused(&mut self, _host: usize) {}
    /// The network heals: before host `host` resumes (and restarts if down).
    fn on_heal(&mut self, _host: usize) {}
    /// Executes what host `host`'s core produced, until it is quiet.
    fn on_outputs(&mut self, host: usize);
    /// A scenario action the world does not handle itself (swaps, voter changes, stores).
    fn on_action(&mut self, _action: Action) {}
    /// One of the app's own events.
    fn on_event(&mut self, event: Self::Event);
}

/// An event in the queue.
enum Ev<E> {
    Arrive { to: usize, bytes: Bytes },
    Timer { host: usize, gen: u64 },
    Action(Action),
    App(E),
}

/// Virtual time, the event queue, the faulty network, the hosts' I/O, trace and digest.
pub struct World<E> {
    /// The current virtual time.
    pub now: Time,
    /// When the run stops.
    pub end: Time,
    queue: EventQueue<Ev<E>>,
    /// The network between hosts.
    pub net: Net,
    calm_net: NetParams,
    io: Vec<HostIo>,
    incarnations: Vec<u64>,
    digest: u64,
    trace: Option<Tracer>,
    describe: Option<fn(&Bytes) -> String>,
    /// Datagrams put on the simulated wire (one per recipient).
    pub datagrams: u64,
}

impl<E> World<E> {
    /// A world of `hosts` hosts, all down, on a whole network with `calm` behaviour (also what
    /// `Heal` restores), whose losses and delays draw from `net_rng`.
    pub fn new(hosts: usize, calm: NetParams, net_rng: Prng) -> World<E> {
        World {
            now: Time::ZERO,
            end: Time::ZERO,
            queue: EventQueue::default(),
            net: Net::new(hosts, calm, net_rng),
            calm_net: calm,
            io: (0..hosts).map(|_| HostIo::default()).collect(),
            incarnations: vec![0; hosts],
            digest: DIGEST_START,
            trace: None,
            describe: None,
            datagrams: 0,
        }
    }

    /// Traces arrivals (described by `describe`) and timeouts too, not only the app's lines.
    pub fn trace_io(&mut self, describe: fn(&Bytes) -> String) {
        self.describe = Some(describe);
    }

    /// Prints (through `f`) one line per event.
    pub fn set_trace(&mut self, f: Tracer) {
        self.trace = Some(f);
    }

    /// Whether a tracer is set (to skip building costly lines).
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Emits one trace line (built only if a tracer is set).
    pub fn tr(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let s = line();
            t(&s);
        }
    }

    /// Folds `bytes` into the run digest.
    pub fn fold(&mut self, bytes: &[u8]) {
        self.digest = fnv(self.digest, bytes);
    }

    /// The run digest so far: equal for equal runs.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.io.len()
    }

    /// Host `host`'s current incarnation (0 before its first start).
    pub fn incarnation(&self, host: usize) -> u64 {
        self.incarnations[host]
    }

    /// Whether host `host` is paused.
    pub fn paused(&self, host: usize) -> bool {
        self.io[host].paused
    }

    /// Queues the app event `ev` at `at`.
    pub fn schedule(&mut self, at: Time, ev: E) {
        self.queue.push(at, Ev::App(ev));
    }

    /// Queues the scenario action `action` at `at`.
    pub fn at(&mut self, at: Time, action: Action) {
        self.queue.push(at, Ev::Action(action));
    }

    /// Queues every action of `plan` and sets the run's end.
    pub fn install(&mut self, plan: &Plan) {
        for (t, a) in &plan.actions {
            self.at(*t, a.clone());
        }
        self.end = plan.end;
    }

    /// Puts a datagram from host `from` to `dest` on the faulty network: each recipient gets
    /// zero, one or two copies after the network's delays.
    pub fn transmit(&mut self, from: usize, dest: Dest, bytes: &Bytes) {
        self.transmit_to(from, dest, bytes, |_| true)
    }

    /// [`Self::transmit`] to the recipients `reaches` admits (an address book: who the sender
    /// sends to and who accepts its datagrams).
    pub fn transmit_to(
        &mut self,
        from: usize,
        dest: Dest,
        bytes: &Bytes,
        reaches: impl Fn(usize) -> bool,
    ) {
        for to in recipients(dest, from, self.hosts()).filter(|to| reaches(*to)) {
            self.datagrams += 1;
            for d in self.net.delays(from, to) {
                self.queue.push(
                    Time(self.now.0 + d),
                    Ev::Arrive {
                        to,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }
}

/// Runs `app` until its world's end (see the module doc).
pub fn run<A: App>(app: &mut A) {
    let end = app.world().end;
    while let Some((at, ev)) = app.world().queue.pop() {
        if at > end {
            break;
        }
        let w = app.world();
        w.now = at;
        w.fold(&at.0.to_le_bytes());
        match ev {
            Ev::Arrive { to, bytes } => arrive(app, to, bytes),
            Ev::Timer { host, gen } => timer(app, host, gen),
            Ev::Action(a) => act(app, a),
            Ev::App(e) => app.on_event(e),
        }
    }
    app.world().now = end;
}

/// Carries out a scenario action now (traced as `action ...`).
pub fn act<A: App>(app: &mut A, a: Action) {
    let w = app.world();
    let now = w.now;
    w.tr(|| format!("{now:?} action {a:?}"));
    match a {
        Action::SetNet(p) => app.world().net.params = p,
        Action::SetLinks(l) => app.world().net.links = l,
        Action::Crash(i) | Action::Wipe(i) => {
            if app.stop(i, matches!(a, Action::Wipe(_))) {
                app.world().io[i].crashed();
            }
        }
        Action::Restart(i) => {
            if app.core(i).is_none() {
                let incarnation = app.world().incarnations[i] + 1;
                if app.start(i, incarnation) {
                    app.world().incarnations[i] = incarnation;
                    drain(app, i);
                    app.on_started(i);
                }
            }
        }
        Action::Pause(i) => {
            let running = app.core(i).is_some();
            app.world().io[i].paused = running;
            if running {
                app.on_paused(i);
            }
        }
        Action::Resume(i) => resume(app, i),
        Action::Heal => {
            let w = app.world();
            let n = w.hosts();
            w.net.params = w.calm_net;
            w.net.links = vec![vec![true; n]; n];
            for i in 0..n {
                app.on_heal(i);
                resume(app, i);
                if app.core(i).is_none() {
                    act(app, Action::Restart(i));
                }
            }
        }
        a => app.on_action(a),
    }
}

/// A paused host resumes: stale timers fire first (the core notices the time that passed),
/// then the datagrams that waited in its socket.
pub fn resume<A: App>(app: &mut A, i: usize) {
    let w = app.world();
    if !w.io[i].paused {
        return;
    }
    w.io[i].paused = false;
    let now = w.now;
    if let Some(core) = app.core(i) {
        core.handle_timeout(now);
    }
    drain(app, i);
    while let Some(b) = app.world().io[i].next_buffered() {
        if let Some(core) = app.core(i) {
            core.handle_packet(now, b);
        }
        drain(app, i);
    }
}

fn arrive<A: App>(app: &mut A, to: usize, bytes: Bytes) {
    if app.core(to).is_none() {
        return;
    }
    let w = app.world();
    if w.io[to].paused {
        w.io[to].buffer(bytes);
        return;
    }
    w.fold(&bytes[..bytes.len().min(48)]);
    if let (Some(describe), true) = (w.describe, w.tracing()) {
        let (now, d) = (w.now, describe(&bytes));
        w.tr(|| format!("{now:?} n{to} recv {d}"));
    }
    let now = w.now;
    if let Some(core) = app.core(to) {
        core.handle_packet(now, bytes);
    }
    drain(app, to);
}

fn timer<A: App>(app: &mut A, i: usize, gen: u64) {
    if !app.world().io[i].fires(gen) || app.core(i).is_none() {
        return;
    }
    let w = app.world();
    let now = w.now;
    if w.describe.is_some() {
        w.tr(|| format!("{now:?} n{i} timeout"));
    }
    if let Some(core) = app.core(i) {
        core.handle_timeout(now);
    }
    drain(app, i);
}

/// Executes everything host `i` produced ([`App::on_outputs`]), then re-arms its timer on the
/// core's deadline.
pub fn drain<A: App>(app: &mut A, i: usize) {
    app.on_outputs(i);
    let deadline = app.core(i).and_then(|c| c.poll_deadline());
    let w = app.world();
    if let Some((at, gen)) = w.io[i].rearm(deadline, w.now) {
        w.queue.push(at, Ev::Timer { host: i, gen });
    }
}
