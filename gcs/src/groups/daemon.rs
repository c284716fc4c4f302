//! `Daemon`: a ring node plus the group state machine. See the module docs of `groups`.

use super::codec::{self, Msg, StateEntry};
use super::limits::{self, check_destination, check_public_group, check_session_name};
use super::{
    DaemonOutput, GroupError, GroupView, GroupViewId, Limits, MemberId, Reason, SessionEvent,
    SessionId, MAX_DESTINATIONS,
};
use crate::{
    Config, Delivery, Node, Output, ProcId, RingId, Service, SubmitError, Time, View, ViewId,
    ViewKind,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Counters for operators and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Groups-layer messages from the ring that failed to decode (dropped everywhere alike).
    pub malformed: u64,
    /// State messages of an abandoned exchange.
    pub stale_states: u64,
    /// Joins and leaves ignored (member already in / not in the group, or its daemon is gone).
    pub ignored_ops: u64,
    /// State exchanges completed.
    pub exchanges: u64,
    /// State exchanges abandoned because the daemon view changed.
    pub exchanges_abandoned: u64,
    /// Messages held during exchanges.
    pub held: u64,
}

#[derive(Debug)]
struct Session {
    member: MemberId,
    private: String,
    /// Groups joined or being joined (requests already sent), as the session sees them.
    wanted: BTreeSet<String>,
}

/// A delivered message waiting for the end of a state exchange.
#[derive(Debug)]
struct Held {
    sender: ProcId,
    service: Service,
    msg: Msg,
}

#[derive(Debug)]
struct Exchange {
    view: View,
    states: BTreeMap<ProcId, Vec<StateEntry>>,
    held: Vec<Held>,
}

type GroupMap = BTreeMap<String, BTreeSet<MemberId>>;

/// One daemon: a ring [`Node`] and the named process groups of its sessions.
///
/// Driving is the node's contract (see [`crate::node`]): after every call, drain
/// [`poll_output`](Daemon::poll_output); call [`handle_timeout`](Daemon::handle_timeout) at
/// [`poll_deadline`](Daemon::poll_deadline). Session calls are refused with a typed
/// [`GroupError`] and then have no effect.
#[derive(Debug)]
pub struct Daemon {
    node: Node,
    limits: Limits,
    max_message_size: usize,
    now: Time,
    out: VecDeque<DaemonOutput>,
    sessions: BTreeMap<SessionId, Session>,
    /// Private group name → local session.
    private: BTreeMap<String, SessionId>,
    next_session: u32,
    /// Control messages that must be sent (state, disconnect), waiting for send-queue room.
    outbox: VecDeque<Bytes>,
    // ----- the agreed group state (the same at every daemon of a lineage)
    groups: GroupMap,
    /// Reverse index of `groups`.
    member_groups: BTreeMap<MemberId, BTreeSet<String>>,
    /// Groups that had a transitional view since their last regular one.
    trans_groups: BTreeSet<String>,
    /// Daemons of the last daemon view (transitional or regular).
    reachable: BTreeSet<ProcId>,
    /// Daemons known to share this daemon's group state.
    lineage: BTreeSet<ProcId>,
    /// The daemon view that group views are currently made in, and the event counter in it.
    ctx: Option<ViewId>,
    counter: u32,
    exchange: Option<Exchange>,
    stats: GroupStats,
}

impl Daemon {
    /// A daemon that starts now, alone, looking for the others. `me` as for [`Node::new`].
    pub fn new(cfg: Config, limits: Limits, me: ProcId, now: Time) -> Result<Daemon, GroupError> {
        limits.validate(cfg.max_message_size)?;
        let max_message_size = cfg.max_message_size;
        let node = Node::new(cfg, me, now)?;
        let mut d = Daemon {
            node,
            limits,
            max_message_size,
            now,
            out: VecDeque::new(),
            sessions: BTreeMap::new(),
            private: BTreeMap::new(),
            next_session: 1,
            outbox: VecDeque::new(),
            groups: BTreeMap::new(),
            member_groups: BTreeMap::new(),
            trans_groups: BTreeSet::new(),
            reachable: BTreeSet::from([me]),
            lineage: BTreeSet::from([me]),
            ctx: None,
            counter: 0,
            exchange: None,
            stats: GroupStats::default(),
        };
        d.pump();
        Ok(d)
    }

    /// This daemon's process id.
    pub fn id(&self) -> ProcId {
        self.node.id()
    }

    /// The ring node (phase, daemon view, ring counters).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Counters of the groups layer.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether a state exchange is running (messages are being held).
    pub fn exchanging(&self) -> bool {
        self.exchange.is_some()
    }

    /// The members of `group` as last delivered at this daemon (None: no members).
    pub fn group_members(&self, group: &str) -> Option<&BTreeSet<MemberId>> {
        self.groups.get(group)
    }

    /// The member id of a live local session.
    pub fn member(&self, sid: SessionId) -> Option<&MemberId> {
        self.sessions.get(&sid).map(|s| &s.member)
    }

    /// Live local sessions.
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.keys().copied()
    }

    /// The next thing to do, in order. Drain after every call.
    pub fn poll_output(&mut self) -> Option<DaemonOutput> {
        self.out.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_deadline(&self) -> Option<Time> {
        self.node.poll_deadline()
    }

    /// A datagram arrived.
    pub fn handle_packet(&mut self, now: Time, datagram: Bytes) {
        self.advance(now);
        self.node.handle_packet(now, datagram);
        self.pump();
    }

    /// The deadline has passed.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        self.node.handle_timeout(now);
        self.pump();
    }

    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    // ------------------------------------------------------------ session calls

    /// A new client session named `name` (unique among this daemon's live sessions).
    pub fn connect(&mut self, now: Time, name: &str) -> Result<SessionId, GroupError> {
        self.advance(now);
        check_session_name(name).map_err(|reason| GroupError::InvalidSessionName {
            name: name.to_owned(),
            reason,
        })?;
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(GroupError::TooManySessions {
                max: self.limits.max_sessions,
            });
        }
        let private = limits::private_group(name, self.id().node);
        if self.private.contains_key(&private) {
            return Err(GroupError::NameInUse(name.to_owned()));
        }
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        let member = MemberId {
            daemon: self.id(),
            session: sid.0,
            name: Arc::from(name),
        };
        self.private.insert(private.clone(), sid);
        self.sessions.insert(
            sid,
            Session {
                member,
                private,
                wanted: BTreeSet::new(),
            },
        );
        Ok(sid)
    }

    /// Ends a session: it leaves all its groups (reason `Disconnect`, seen by the other members
    /// at the same point of the stream) and gets no more events. Never refused for a live session.
    pub fn disconnect(&mut self, now: Time, sid: SessionId) -> Result<(), GroupError> {
        self.advance(now);
        let s = self
            .sessions
            .remove(&sid)
            .ok_or(GroupError::UnknownSession(sid.0))?;
        self.private.remove(&s.private);
        self.outbox
            .push_back(codec::encode_disconnect(sid.0, &s.member.name));
        self.flush_outbox();
        self.pump();
        Ok(())
    }

    /// Asks to join `group` (a public group). The session's view of the group arrives when the
    /// join is ordered.
    pub fn join(&mut self, now: Time, sid: SessionId, group: &str) -> Result<(), GroupError> {
        self.advance(now);
        let s = self.session(sid)?;
        check_public_group(group).map_err(|reason| GroupError::InvalidGroupName {
            name: group.to_owned(),
            reason,
        })?;
        if s.wanted.contains(group) {
            return Err(GroupError::AlreadyMember(group.to_owned()));
        }
        if s.wanted.len() >= self.limits.max_groups_per_session {
            return Err(GroupError::TooManyGroups {
                max: self.limits.max_groups_per_session,
            });
        }
        let msg = codec::encode_join(sid.0, &s.member.name, group);
        self.submit(Service::Agreed, msg)?;
        self.sessions
            .get_mut(&sid)
            .expect("checked")
            .wanted
            .insert(group.to_owned());
        Ok(())
    }

    /// Asks to leave `group`. Messages to it may still arrive until `SelfLeave`.
    pub fn leave(&mut self, now: Time, sid: SessionId, group: &str) -> Result<(), GroupError> {
        self.advance(now);
        let s = self.session(sid)?;
        if !s.wanted.contains(group) {
            return Err(GroupError::NotMember(group.to_owned()));
        }
        let msg = codec::encode_leave(sid.0, &s.member.name, group);
        self.submit(Service::Agreed, msg)?;
        self.sessions
            .get_mut(&sid)
            .expect("checked")
            .wanted
            .remove(group);
        Ok(())
    }

    /// Multicasts `payload` to `groups` (public or private; membership not required) with
    /// `service`. Each receiving session gets it once.
    pub fn multicast<G: AsRef<str>>(
        &mut self,
        now: Time,
        sid: SessionId,
        groups: &[G],
        service: Service,
        payload: &[u8],
    ) -> Result<(), GroupError> {
        self.advance(now);
        let s = self.session(sid)?;
        if groups.is_empty() {
            return Err(GroupError::NoGroups);
        }
        let mut dests: Vec<&str> = Vec::with_capacity(groups.len());
        for g in groups {
            let g = g.as_ref();
            check_destination(g).map_err(|reason| GroupError::InvalidGroupName {
                name: g.to_owned(),
                reason,
            })?;
            if !dests.contains(&g) {
                dests.push(g);
            }
        }
        if dests.len() > MAX_DESTINATIONS {
            return Err(GroupError::TooManyDestinations {
                count: dests.len(),
                max: MAX_DESTINATIONS,
            });
        }
        let header = codec::app_header_len(&s.member.name, &dests);
        let max = self.max_message_size.saturating_sub(header);
        if payload.len() > max {
            return Err(GroupError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let msg = codec::encode_app(sid.0, &s.member.name, &dests, payload);
        self.submit(service, msg)
    }

    fn session(&self, sid: SessionId) -> Result<&Session, GroupError> {
        self.sessions
            .get(&sid)
            .ok_or(GroupError::UnknownSession(sid.0))
    }

    /// Hands a session's message to the ring, after any control message still waiting.
    fn submit(&mut self, service: Service, msg: Bytes) -> Result<(), GroupError> {
        self.flush_outbox();
        if !self.outbox.is_empty() {
            return Err(GroupError::QueueFull {
                queued: self.node.queued_bytes(),
            });
        }
        let r = self.node.multicast(self.now, service, msg);
        self.pump();
        r.map_err(|e| match e {
            SubmitError::QueueFull { queued } => GroupError::QueueFull { queued },
            SubmitError::TooLarge { size, max } => GroupError::TooLarge { size, max },
        })
    }

    fn flush_outbox(&mut self) {
        while let Some(b) = self.outbox.front() {
            match self.node.multicast(self.now, Service::Agreed, b.clone()) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(SubmitError::QueueFull { .. }) => break,
                Err(SubmitError::TooLarge { .. }) => {
                    // Limits::validate makes this impossible; never wedge the outbox.
                    debug_assert!(false, "control message larger than max_message_size");
                    self.outbox.pop_front();
                }
            }
        }
    }

    // ------------------------------------------------------------ ring outputs

    fn pump(&mut self) {
        self.flush_outbox();
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Transmit { dest, bytes } => {
                    self.out.push_back(DaemonOutput::Transmit { dest, bytes })
                }
                Output::Deliver(d) => self.on_deliver(d),
                Output::View(v) => self.on_view(v),
            }
            self.flush_outbox();
        }
    }

    fn on_deliver(&mut self, d: Delivery) {
        let msg = match codec::decode(&d.payload) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(me = ?self.id(), from = ?d.sender, error = %e, "dropped groups message");
                return;
            }
        };
        if let Msg::State { ring, members } = msg {
            self.on_state(d.sender, ring, members);
            return;
        }
        let held = Held {
            sender: d.sender,
            service: d.service,
            msg,
        };
        match &mut self.exchange {
            Some(x) => {
                self.stats.held += 1;
                x.held.push(held);
            }
            None => self.apply(held),
        }
    }

    fn on_view(&mut self, v: View) {
        self.out.push_back(DaemonOutput::DaemonView(v.clone()));
        match v.id.kind {
            ViewKind::Transitional => self.on_transitional(v),
            ViewKind::Regular => self.on_regular(v),
        }
    }

    fn on_transitional(&mut self, v: View) {
        let held = match self.exchange.take() {
            Some(x) => {
                self.stats.exchanges_abandoned += 1;
                x.held
            }
            None => Vec::new(),
        };
        self.reachable = v.members.iter().copied().collect();
        let reachable = &self.reachable;
        self.lineage.retain(|p| reachable.contains(p));
        self.ctx = Some(v.id);
        self.counter = 0;
        let mut losses = Vec::new();
        for (g, members) in &self.groups {
            let lost: Vec<MemberId> = members
                .iter()
                .filter(|m| !self.reachable.contains(&m.daemon))
                .cloned()
                .collect();
            if !lost.is_empty() {
                losses.push((g.clone(), lost));
            }
        }
        for (g, lost) in losses {
            for m in &lost {
                self.remove_member(&g, m);
            }
            self.trans_groups.insert(g.clone());
            self.emit_view(
                &g,
                ViewKind::Transitional,
                Vec::new(),
                lost,
                Reason::Network,
            );
        }
        for h in held {
            self.apply(h);
        }
    }

    fn on_regular(&mut self, v: View) {
        let held = self.exchange.take().map(|x| x.held).unwrap_or_default();
        self.reachable = v.members.iter().copied().collect();
        if self.reachable == self.lineage {
            // Every daemon of the view shares our state already: nothing to exchange.
            self.complete(v, None, held);
            return;
        }
        let me = self.id();
        let lo = MemberId {
            daemon: me,
            session: 0,
            name: Arc::from(""),
        };
        let mine = self
            .member_groups
            .range(lo..)
            .take_while(|(m, _)| m.daemon == me)
            .map(|(m, gs)| (m.session, &*m.name, gs.iter()));
        let state = codec::encode_state(v.id.ring, mine);
        self.outbox.push_back(state);
        self.exchange = Some(Exchange {
            view: v,
            states: BTreeMap::new(),
            held,
        });
    }

    fn on_state(&mut self, from: ProcId, ring: RingId, members: Vec<StateEntry>) {
        let Some(x) = &mut self.exchange else {
            self.stats.stale_states += 1;
            return;
        };
        if x.view.id.ring != ring || x.view.members.binary_search(&from).is_err() {
            self.stats.stale_states += 1;
            return;
        }
        x.states.insert(from, members);
        if x.states.len() < x.view.members.len() {
            return;
        }
        let x = self.exchange.take().expect("present");
        let mut union = GroupMap::new();
        for (daemon, entries) in x.states {
            for e in entries {
                let m = MemberId {
                    daemon,
                    session: e.session,
                    name: e.name,
                };
                for g in e.groups {
                    union.entry(g).or_default().insert(m.clone());
                }
            }
        }
        self.complete(x.view, Some(union), x.held);
    }

    /// The regular daemon view `v` is now in force for the groups: install `state` (None: keep
    /// ours), give a regular view to every group that changed or had a transitional view, then
    /// process what was held.
    fn complete(&mut self, v: View, state: Option<GroupMap>, held: Vec<Held>) {
        self.stats.exchanges += u64::from(state.is_some());
        self.ctx = Some(v.id);
        self.counter = 0;
        self.lineage = v.members.iter().copied().collect();
        let mut changed: Vec<(String, Vec<MemberId>, Vec<MemberId>)> = Vec::new();
        if let Some(new) = state {
            let empty = BTreeSet::new();
            let names: BTreeSet<&String> = self.groups.keys().chain(new.keys()).collect();
            for g in names {
                let old = self.groups.get(g).unwrap_or(&empty);
                let now = new.get(g).unwrap_or(&empty);
                if old != now || self.trans_groups.contains(g) {
                    let joined = now.difference(old).cloned().collect();
                    let left = old.difference(now).cloned().collect();
                    changed.push((g.clone(), joined, left));
                }
            }
            self.member_groups.clear();
            for (g, ms) in &new {
                for m in ms {
                    self.member_groups
                        .entry(m.clone())
                        .or_default()
                        .insert(g.clone());
                }
            }
            self.groups = new;
        } else {
            for g in &self.trans_groups {
                changed.push((g.clone(), Vec::new(), Vec::new()));
            }
        }
        self.trans_groups.clear();
        for (g, joined, left) in changed {
            self.emit_view(&g, ViewKind::Regular, joined, left, Reason::Network);
        }
        for h in held {
            self.apply(h);
        }
    }

    // ------------------------------------------------------------ applying messages

    fn apply(&mut self, h: Held) {
        let member = |session: u32, name: Arc<str>| MemberId {
            daemon: h.sender,
            session,
            name,
        };
        match h.msg {
            Msg::App {
                session,
                name,
                groups,
                payload,
            } => self.deliver_app(member(session, name), groups, h.service, payload),
            Msg::Join {
                session,
                name,
                group,
            } => {
                let m = member(session, name);
                if !self.reachable.contains(&m.daemon) || !self.add_member(&group, &m) {
                    self.stats.ignored_ops += 1;
                    return;
                }
                self.counter += 1;
                let kind = self.kind_of(&group);
                self.emit_view(&group, kind, vec![m], Vec::new(), Reason::Join);
            }
            Msg::Leave {
                session,
                name,
                group,
            } => {
                let m = member(session, name);
                if !self.remove_member(&group, &m) {
                    self.stats.ignored_ops += 1;
                    return;
                }
                self.counter += 1;
                let kind = self.kind_of(&group);
                self.emit_view(&group, kind, Vec::new(), vec![m.clone()], Reason::Leave);
                if let Some(sid) = self.local_session(&m) {
                    self.out.push_back(DaemonOutput::Session {
                        sid,
                        event: SessionEvent::SelfLeave { group },
                    });
                }
            }
            Msg::Disconnect { session, name } => {
                let m = member(session, name);
                let groups = self.member_groups.get(&m).cloned().unwrap_or_default();
                for g in groups {
                    self.remove_member(&g, &m);
                    self.counter += 1;
                    let kind = self.kind_of(&g);
                    self.emit_view(&g, kind, Vec::new(), vec![m.clone()], Reason::Disconnect);
                }
            }
            Msg::State { .. } => unreachable!("state messages are never held"),
        }
    }

    fn deliver_app(
        &mut self,
        sender: MemberId,
        groups: Arc<[String]>,
        service: Service,
        payload: Bytes,
    ) {
        let me = self.id();
        let mut to = BTreeSet::new();
        for g in groups.iter() {
            if g.starts_with('#') {
                if let Some(sid) = self.private.get(g) {
                    to.insert(*sid);
                }
            } else if let Some(ms) = self.groups.get(g) {
                for m in local_range(ms, me) {
                    if let Some(sid) = self.local_session(m) {
                        to.insert(sid);
                    }
                }
            }
        }
        for sid in to {
            self.out.push_back(DaemonOutput::Session {
                sid,
                event: SessionEvent::Message {
                    sender: sender.clone(),
                    groups: groups.clone(),
                    service,
                    payload: payload.clone(),
                },
            });
        }
    }

    fn kind_of(&self, group: &str) -> ViewKind {
        if self.trans_groups.contains(group) {
            ViewKind::Transitional
        } else {
            ViewKind::Regular
        }
    }

    /// The live local session of member `m`, if any.
    fn local_session(&self, m: &MemberId) -> Option<SessionId> {
        if m.daemon != self.id() {
            return None;
        }
        let sid = SessionId(m.session);
        self.sessions
            .get(&sid)
            .filter(|s| s.member.name == m.name)
            .map(|_| sid)
    }

    fn add_member(&mut self, group: &str, m: &MemberId) -> bool {
        let added = self
            .groups
            .entry(group.to_owned())
            .or_default()
            .insert(m.clone());
        if added {
            self.member_groups
                .entry(m.clone())
                .or_default()
                .insert(group.to_owned());
        }
        added
    }

    fn remove_member(&mut self, group: &str, m: &MemberId) -> bool {
        let Some(ms) = self.groups.get_mut(group) else {
            return false;
        };
        if !ms.remove(m) {
            return false;
        }
        if ms.is_empty() {
            self.groups.remove(group);
        }
        if let Some(gs) = self.member_groups.get_mut(m) {
            gs.remove(group);
            if gs.is_empty() {
                self.member_groups.remove(m);
            }
        }
        true
    }

    /// Delivers the group's current membership as a new view to its local members.
    fn emit_view(
        &mut self,
        group: &str,
        kind: ViewKind,
        joined: Vec<MemberId>,
        left: Vec<MemberId>,
        reason: Reason,
    ) {
        let me = self.id();
        let Some(ms) = self.groups.get(group) else {
            return; // Nobody left to tell.
        };
        let local: Vec<SessionId> = local_range(ms, me)
            .filter_map(|m| self.local_session(m))
            .collect();
        if local.is_empty() {
            return;
        }
        let view = Arc::new(GroupView {
            group: group.to_owned(),
            id: GroupViewId {
                view: self.ctx.expect("group views only after a daemon view"),
                origin: *self.lineage.first().expect("lineage holds us"),
                seq: self.counter,
            },
            kind,
            members: ms.iter().cloned().collect(),
            joined,
            left,
            reason,
        });
        for sid in local {
            self.out.push_back(DaemonOutput::Session {
                sid,
                event: SessionEvent::Membership(view.clone()),
            });
        }
    }
}

/// The members of `ms` served by daemon `me` (they sort together).
fn local_range(ms: &BTreeSet<MemberId>, me: ProcId) -> impl Iterator<Item = &MemberId> {
    let lo = MemberId {
        daemon: me,
        session: 0,
        name: Arc::from(""),
    };
    ms.range(lo..).take_while(move |m| m.daemon == me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs a lone daemon's timers for `d`, collecting session events.
    fn run(
        d: &mut Daemon,
        now: &mut Time,
        dur: Duration,
        events: &mut Vec<(SessionId, SessionEvent)>,
    ) {
        let until = now.saturating_add(dur);
        while let Some(t) = d.poll_deadline().filter(|t| *t <= until) {
            *now = (*now).max(t);
            d.handle_timeout(*now);
            while let Some(o) = d.poll_output() {
                if let DaemonOutput::Session { sid, event } = o {
                    events.push((sid, event));
                }
            }
        }
        *now = until;
    }

    fn lone() -> (Daemon, Time) {
        let d = Daemon::new(
            Config::default(),
            Limits::default(),
            ProcId::new(0, 1),
            Time::ZERO,
        )
        .unwrap();
        (d, Time::ZERO)
    }

    #[test]
    fn a_lone_daemon_serves_its_sessions() {
        let (mut d, mut now) = lone();
        let mut ev = Vec::new();
        run(&mut d, &mut now, Duration::from_secs(3), &mut ev);
        assert!(d.node().view().is_some());
        let a = d.connect(now, "a").unwrap();
        d.join(now, a, "g").unwrap();
        d.multicast(now, a, &["g"], Service::Safe, b"hi").unwrap();
        run(&mut d, &mut now, Duration::from_millis(100), &mut ev);
        assert_eq!(ev.len(), 2);
        let SessionEvent::Membership(v) = &ev[0].1 else {
            panic!("{ev:?}")
        };
        assert_eq!(v.members, vec![d.member(a).unwrap().clone()]);
        assert_eq!((v.reason, v.kind), (Reason::Join, ViewKind::Regular));
        assert!(
            matches!(&ev[1].1, SessionEvent::Message { payload, service: Service::Safe, .. } if &payload[..] == b"hi")
        );
        assert_eq!(d.group_members("g").map(|m| m.len()), Some(1));
    }

    #[test]
    fn malformed_groups_messages_from_the_ring_are_counted_and_dropped() {
        let (mut d, mut now) = lone();
        let mut ev = Vec::new();
        run(&mut d, &mut now, Duration::from_secs(3), &mut ev);
        let a = d.connect(now, "a").unwrap();
        d.join(now, a, "g").unwrap();
        for junk in [&b""[..], b"\x01", b"\x02\0\0\0\0\x01a\x01#", b"\x09junk"] {
            d.node
                .multicast(now, Service::Agreed, Bytes::copy_from_slice(junk))
                .unwrap();
        }
        run(&mut d, &mut now, Duration::from_millis(100), &mut ev);
        assert_eq!(d.stats().malformed, 4);
        assert_eq!(ev.len(), 1, "only the join's view: {ev:?}");
    }

    #[test]
    fn a_full_send_queue_refuses_sends_but_never_loses_a_disconnect() {
        // A 64 MiB queue bounded by bytes alone: the halving fill below then leaves less room
        // than a disconnect needs (the time bound, before any ring, would leave other room).
        let cfg = Config {
            send_queue_max_bytes: 64 << 20,
            send_queue_max_delay: Duration::ZERO,
            ..Config::default()
        };
        let mut d = Daemon::new(cfg, Limits::default(), ProcId::new(0, 1), Time::ZERO).unwrap();
        let mut now = Time::ZERO;
        // Before the first ring nothing is ordered: fill the queue.
        let a = d.connect(now, "a").unwrap();
        let b = d.connect(now, "b").unwrap();
        d.join(now, b, "g").unwrap();
        // Fill it to the last byte: halve the size at each refusal.
        let mut size = 8usize << 20;
        let mut refused = 0;
        while size > 0 {
            let chunk = vec![0u8; size];
            match d.multicast(now, a, &["g"], Service::Agreed, &chunk) {
                Ok(()) => {}
                Err(GroupError::QueueFull { .. }) => {
                    refused += 1;
                    size /= 2;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0);
        d.disconnect(now, a).unwrap();
        assert!(!d.outbox.is_empty(), "the disconnect waits for room");
        assert!(matches!(
            d.join(now, b, "h"),
            Err(GroupError::QueueFull { .. })
        ));
        assert_eq!(d.join(now, a, "h"), Err(GroupError::UnknownSession(a.0)));
        let mut ev = Vec::new();
        run(&mut d, &mut now, Duration::from_secs(5), &mut ev);
        assert!(d.outbox.is_empty());
        // b saw a's messages, then nothing about a (a was never in g); the disconnect was ordered.
        assert!(ev.iter().all(|(sid, _)| *sid == b));
        assert!(d.member_groups.keys().all(|m| m.session != a.0));
        d.join(now, b, "h").unwrap();
    }
}
