//! The named groups layer on a perfect in-process network (fixed delay, virtual time) with
//! partitions, heals and crashes: hand-written scenarios and scripted runs, each judged by the
//! groups mode's checker (`sim::groups::checker`). The random storm (seeded faults, interrupted
//! exchanges, many seeds) is the simulator's `groups` mode: `sim/src/groups/`,
//! `sim/tests/groups.rs`. (These scenarios were `gcs/tests/groups.rs`, with a copy of the
//! checker of their own.)

use bytes::Bytes;
use gcs::groups::{MAX_DESTINATIONS, MAX_GROUP_NAME};
use gcs::{
    Config, Daemon, DaemonOutput, Dest, GroupError, GroupView, Limits, MemberId, ProcId, Reason,
    Service, SessionEvent, SessionId, Time, ViewKind,
};
use sim::checkers::{fmt_violations, Violation};
use sim::groups::{checker, GroupHistory, SessionKey};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// A session: its daemon slot and its id there (on the daemon's current run).
type S = (usize, SessionId);

struct Net {
    daemons: Vec<Option<Daemon>>,
    incarnations: Vec<u64>,
    now: Time,
    /// (arrival, from, to, datagram); the delay is fixed, so arrivals are in order.
    wire: VecDeque<(Time, usize, usize, Bytes)>,
    /// Datagrams between daemons on different sides are dropped.
    side: Vec<u8>,
    /// Every session's events, under the daemon run that served it.
    events: BTreeMap<SessionKey, Vec<SessionEvent>>,
    cfg: Config,
    limits: Limits,
}

const DELAY: Duration = Duration::from_micros(100);

impl Net {
    fn new(n: usize) -> Net {
        Net::with_limits(n, Limits::default())
    }

    fn with_limits(n: usize, limits: Limits) -> Net {
        let cfg = Config::default();
        let mut net = Net {
            daemons: Vec::new(),
            incarnations: vec![1; n],
            now: Time::ZERO,
            wire: VecDeque::new(),
            side: vec![0; n],
            events: BTreeMap::new(),
            cfg: cfg.clone(),
            limits: limits.clone(),
        };
        for i in 0..n {
            let d = Daemon::new(
                cfg.clone(),
                limits.clone(),
                ProcId::new(i as u32, 1),
                Time::ZERO,
            )
            .unwrap();
            net.daemons.push(Some(d));
            net.drain(i);
        }
        net
    }

    fn d(&mut self, i: usize) -> &mut Daemon {
        self.daemons[i].as_mut().expect("daemon up")
    }

    /// Where the events of session `sid` of daemon `i`'s current run are filed.
    fn key(&self, (i, sid): S) -> SessionKey {
        SessionKey {
            daemon: ProcId::new(i as u32, self.incarnations[i]),
            sid: sid.0,
        }
    }

    /// The events of `s`.
    fn events(&self, s: S) -> &[SessionEvent] {
        &self.events[&self.key(s)]
    }

    fn drain(&mut self, i: usize) {
        let n = self.daemons.len();
        let at = self.now.saturating_add(DELAY);
        while let Some(out) = self.daemons[i].as_mut().and_then(|d| d.poll_output()) {
            match out {
                DaemonOutput::Transmit {
                    dest: Dest::All,
                    bytes,
                } => {
                    for j in (0..n).filter(|j| *j != i) {
                        self.wire.push_back((at, i, j, bytes.clone()));
                    }
                }
                DaemonOutput::Transmit {
                    dest: Dest::Node(j),
                    bytes,
                } => self.wire.push_back((at, i, j as usize, bytes)),
                DaemonOutput::Session { sid, event } => {
                    let key = self.key((i, sid));
                    self.events.entry(key).or_default().push(event)
                }
                DaemonOutput::DaemonView(_) => {}
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now.saturating_add(d);
        loop {
            let next_packet = self.wire.front().map(|w| w.0);
            let next_timer = self
                .daemons
                .iter()
                .enumerate()
                .filter_map(|(i, d)| d.as_ref().and_then(|d| d.poll_deadline()).map(|t| (t, i)))
                .min();
            let pick_packet = match (next_packet, next_timer) {
                (Some(p), Some((t, _))) => p <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if pick_packet {
                let (at, from, to, bytes) = self.wire.front().cloned().unwrap();
                if at > until {
                    break;
                }
                self.wire.pop_front();
                self.now = self.now.max(at);
                if self.side[from] != self.side[to] {
                    continue;
                }
                if let Some(d) = self.daemons[to].as_mut() {
                    d.handle_packet(self.now, bytes);
                    self.drain(to);
                }
            } else {
                let (t, i) = next_timer.unwrap();
                if t > until {
                    break;
                }
                self.now = self.now.max(t);
                let now = self.now;
                self.d(i).handle_timeout(now);
                self.drain(i);
            }
        }
        self.now = until;
    }

    fn ms(&mut self, ms: u64) {
        self.run_for(Duration::from_millis(ms));
    }

    /// Long enough for any partition, merge or crash to settle into new views.
    fn settle(&mut self) {
        let d = self.cfg.token_timeout + self.cfg.consensus_timeout * 2 + Duration::from_secs(1);
        self.run_for(d);
    }

    fn partition(&mut self, sides: &[&[usize]]) {
        for (k, side) in sides.iter().enumerate() {
            for &i in side.iter() {
                self.side[i] = k as u8;
            }
        }
    }

    fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
    }

    fn crash(&mut self, i: usize) {
        self.daemons[i] = None;
    }

    fn restart(&mut self, i: usize) {
        // The new incarnation numbers its sessions from scratch; their events are filed under
        // the new run, apart from the old one's.
        self.incarnations[i] += 1;
        let me = ProcId::new(i as u32, self.incarnations[i]);
        self.daemons[i] =
            Some(Daemon::new(self.cfg.clone(), self.limits.clone(), me, self.now).unwrap());
        self.drain(i);
    }

    fn connect(&mut self, i: usize, name: &str) -> S {
        let now = self.now;
        let sid = self.d(i).connect(now, name).unwrap();
        let key = self.key((i, sid));
        self.events.entry(key).or_default();
        (i, sid)
    }

    fn join(&mut self, s: S, g: &str) {
        let now = self.now;
        self.d(s.0).join(now, s.1, g).unwrap();
        self.drain(s.0);
    }

    fn leave(&mut self, s: S, g: &str) {
        let now = self.now;
        self.d(s.0).leave(now, s.1, g).unwrap();
        self.drain(s.0);
    }

    fn disconnect(&mut self, s: S) {
        let now = self.now;
        self.d(s.0).disconnect(now, s.1).unwrap();
        self.drain(s.0);
    }

    fn send(&mut self, s: S, groups: &[&str], payload: &str) {
        let now = self.now;
        self.d(s.0)
            .multicast(now, s.1, groups, Service::Agreed, payload.as_bytes())
            .unwrap();
        self.drain(s.0);
    }

    fn member(&mut self, s: S) -> MemberId {
        self.d(s.0).member(s.1).unwrap().clone()
    }

    /// The views of `group` delivered to `s`.
    fn views(&self, s: S, group: &str) -> Vec<Arc<GroupView>> {
        self.events(s)
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Membership(v) if v.group == group => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    /// The payloads delivered to `s`.
    fn msgs(&self, s: S) -> Vec<String> {
        self.events(s)
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Message { payload, .. } => {
                    Some(String::from_utf8(payload.to_vec()).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// A compact trace of `s`: views of `group` and messages, in delivery order.
    fn trace(&self, s: S, group: &str) -> Vec<String> {
        self.events(s)
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Membership(v) if v.group == group => Some(format!(
                    "{:?} {:?} {:?} {:?}",
                    v.id, v.kind, v.reason, v.members
                )),
                SessionEvent::Message { payload, .. } => {
                    Some(String::from_utf8(payload.to_vec()).unwrap())
                }
                _ => None,
            })
            .collect()
    }
}

fn names(v: &GroupView) -> Vec<&str> {
    v.members.iter().map(|m| &*m.name).collect()
}

/// Boots `n` daemons and waits for the ring.
fn booted(n: usize) -> Net {
    let mut net = Net::new(n);
    net.ms(500);
    net
}

/// Three daemons, with a session `p{i}` on daemon `i` each, all members of `g`.
fn p0_p1_p2_in_g() -> (Net, Vec<S>) {
    let mut net = booted(3);
    let s: Vec<S> = (0..3).map(|i| net.connect(i, &format!("p{i}"))).collect();
    for &x in &s {
        net.join(x, "g");
    }
    net.ms(100);
    (net, s)
}

/// Three daemons, with sessions `a` on daemon 0 and `b` on daemon 1, both members of `g`.
fn a_and_b_in_g() -> (Net, S, S) {
    let mut net = booted(3);
    let a = net.connect(0, "a");
    let b = net.connect(1, "b");
    net.join(a, "g");
    net.join(b, "g");
    net.ms(100);
    (net, a, b)
}

// ------------------------------------------------------------------ basic semantics

#[test]
fn join_leave_and_disconnect_are_seen_in_the_same_order_by_every_member() {
    let mut net = booted(3);
    let a = net.connect(0, "a");
    let b = net.connect(1, "b");
    let c = net.connect(2, "c");
    let d = net.connect(0, "d");
    for s in [a, b, c, d] {
        net.join(s, "g");
    }
    net.ms(20);
    net.send(a, &["g"], "m1");
    net.ms(20);
    net.leave(b, "g");
    net.ms(20);
    net.send(c, &["g"], "m2");
    net.ms(20);
    net.disconnect(d);
    net.ms(20);
    net.send(a, &["g"], "m3");
    net.ms(200);

    // Joins were submitted together: each member sees the joins after its own.
    let va = net.views(a, "g");
    let vc = net.views(c, "g");
    assert_eq!(names(&va[0]), ["a"]);
    assert_eq!(va[0].reason, Reason::Join);
    assert_eq!(va[0].joined, vec![net.member(a)]);
    let last = va.last().unwrap();
    assert_eq!(names(last), ["a", "c"]);
    assert_eq!(last.reason, Reason::Disconnect);
    assert_eq!(&*last.left[0].name, "d");
    // a and c: identical traces from c's join on.
    let ta = net.trace(a, "g");
    let tc = net.trace(c, "g");
    assert_eq!(ta[ta.len() - tc.len()..], tc[..]);
    assert_eq!(
        tc.iter().filter(|l| l.starts_with('m')).count(),
        3,
        "{tc:?}"
    );
    // The leave is between m1 and m2 for both.
    let pos = |t: &Vec<String>, f: &dyn Fn(&String) -> bool| t.iter().position(f).unwrap();
    for t in [&ta, &tc] {
        let leave = pos(t, &|l| l.contains("Leave"));
        assert!(pos(t, &|l| l == "m1") < leave && leave < pos(t, &|l| l == "m2"));
    }
    // b left: it got its self-leave and m1, not m2 or m3.
    assert_eq!(net.msgs(b), ["m1"]);
    assert!(net
        .events(b)
        .iter()
        .any(|e| matches!(e, SessionEvent::SelfLeave { group } if group == "g")));
    // View ids increase and every copy of an id has the same members.
    check_groups(&net);
    assert!(va.windows(2).all(|w| w[0].id < w[1].id));
    assert!(vc
        .iter()
        .all(|v| va.iter().any(|x| x.id == v.id && x.members == v.members)));
}

#[test]
fn open_groups_private_groups_self_delivery_and_multi_group_send() {
    let mut net = booted(2);
    let a = net.connect(0, "a");
    let b = net.connect(1, "b");
    let c = net.connect(1, "c");
    net.join(a, "g1");
    net.join(b, "g1");
    net.join(b, "g2");
    net.join(c, "g2");
    net.ms(100);
    // c is not in g1: an open group send reaches a and b, not c; c does not get its own.
    net.send(c, &["g1"], "open");
    net.ms(20);
    // To both groups: b (in both) once; a and c (each in one) once; the sender c too.
    net.send(c, &["g1", "g2", "g1"], "both");
    // Private group of a, from b on the other daemon.
    let pa = net.member(a).private_group();
    assert_eq!(pa, "#a#0");
    net.ms(20);
    net.send(b, &[pa.as_str()], "private");
    net.ms(20);
    // Self delivery to a member of the group.
    net.send(a, &["g1"], "self");
    net.ms(100);
    assert_eq!(net.msgs(a), ["open", "both", "private", "self"]);
    assert_eq!(net.msgs(b), ["open", "both", "self"]);
    assert_eq!(net.msgs(c), ["both"]);
    let mc = net.member(c);
    let SessionEvent::Message {
        sender,
        groups,
        service,
        ..
    } = net
        .events(b)
        .iter()
        .find(|e| matches!(e, SessionEvent::Message { payload, .. } if &payload[..] == b"both"))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(*sender, mc);
    assert_eq!(&groups[..], ["g1".to_owned(), "g2".to_owned()]);
    assert_eq!(*service, Service::Agreed);
    check_groups(&net);
}

#[test]
fn three_sessions_on_two_daemons_share_one_view_sequence() {
    let mut net = booted(2);
    let s = [
        net.connect(0, "x"),
        net.connect(0, "y"),
        net.connect(1, "z"),
    ];
    for (k, &x) in s.iter().enumerate() {
        net.join(x, "g");
        net.send(x, &["g"], &format!("hello{k}"));
    }
    net.ms(100);
    let last: Vec<_> = s
        .iter()
        .map(|&x| net.views(x, "g").pop().unwrap())
        .collect();
    assert!(last
        .iter()
        .all(|v| v.id == last[0].id && names(v) == ["x", "y", "z"]));
    // Everyone delivered hello2 (sent after all joins were queued), in the same order.
    let seqs: Vec<_> = s.iter().map(|&x| net.msgs(x)).collect();
    assert!(seqs.iter().all(|m| m.ends_with(&["hello2".to_owned()])));
    check_groups(&net);
}

#[test]
fn a_session_can_leave_and_join_again_and_names_are_reusable_after_disconnect() {
    let mut net = booted(2);
    let a = net.connect(0, "a");
    let b = net.connect(1, "b");
    net.join(a, "g");
    net.join(b, "g");
    net.leave(a, "g");
    net.join(a, "g");
    net.ms(100);
    let v = net.views(b, "g");
    let reasons: Vec<_> = v.iter().map(|v| v.reason).collect();
    assert_eq!(reasons.last(), Some(&Reason::Join));
    assert_eq!(names(v.last().unwrap()), ["a", "b"]);
    net.disconnect(a);
    let a2 = net.connect(0, "a");
    assert_ne!(a2.1, a.1, "session numbers are not reused");
    net.join(a2, "g");
    net.ms(100);
    let v = net.views(b, "g");
    assert_eq!(v[v.len() - 2].reason, Reason::Disconnect);
    assert_eq!(names(v.last().unwrap()), ["a", "b"]);
    assert_eq!(v.last().unwrap().members[0], net.member(a2));
    check_groups(&net);
}

// ------------------------------------------------------------------ network changes

#[test]
fn a_partition_gives_transitional_then_regular_views_and_a_heal_merges() {
    let (mut net, s) = p0_p1_p2_in_g();
    let before: Vec<usize> = s.iter().map(|&x| net.views(x, "g").len()).collect();
    net.partition(&[&[0, 1], &[2]]);
    net.settle();
    for (k, &x) in s.iter().enumerate() {
        let v = net.views(x, "g");
        let new = &v[before[k]..];
        assert_eq!(new.len(), 2, "session {k}: {new:#?}");
        assert_eq!(new[0].kind, ViewKind::Transitional);
        assert_eq!(new[1].kind, ViewKind::Regular);
        assert!(new.iter().all(|v| v.reason == Reason::Network));
        let (members, left): (&[&str], &[&str]) = if k < 2 {
            (&["p0", "p1"], &["p2"])
        } else {
            (&["p2"], &["p0", "p1"])
        };
        assert_eq!(names(&new[0]), members);
        assert_eq!(names(&new[1]), members);
        let l: Vec<&str> = new[0].left.iter().map(|m| &*m.name).collect();
        assert_eq!(l, left);
        assert!(new[1].left.is_empty() && new[1].joined.is_empty());
    }
    // Each side keeps working: a join on the minority side.
    let q = net.connect(2, "q");
    net.join(q, "g");
    net.ms(100);
    assert_eq!(names(&net.views(s[2], "g").pop().unwrap()), ["p2", "q"]);

    net.heal();
    net.settle();
    let merged: Vec<_> = s
        .iter()
        .map(|&x| net.views(x, "g").pop().unwrap())
        .collect();
    for v in &merged {
        assert_eq!(v.kind, ViewKind::Regular);
        assert_eq!(v.reason, Reason::Network);
        assert_eq!(names(v), ["p0", "p1", "p2", "q"]);
        assert_eq!(v.id, merged[0].id);
    }
    let j0: Vec<&str> = merged[0].joined.iter().map(|m| &*m.name).collect();
    let j2: Vec<&str> = merged[2].joined.iter().map(|m| &*m.name).collect();
    assert_eq!(j0, ["p2", "q"]);
    assert_eq!(j2, ["p0", "p1"]);
    check_groups(&net);
}

#[test]
fn messages_sent_during_the_state_exchange_come_after_the_merge_view_everywhere() {
    let (mut net, s) = p0_p1_p2_in_g();
    net.partition(&[&[0], &[1, 2]]);
    net.settle();
    net.heal();
    // Step until each daemon is in its exchange, and send from its session right then.
    let mut done = [false; 3];
    for _ in 0..100_000 {
        net.run_for(Duration::from_micros(50));
        for (i, &x) in s.iter().enumerate() {
            if !done[i] && net.d(i).exchanging() {
                net.send(x, &["g"], &format!("during{i}"));
                done[i] = true;
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
    }
    let sent = done.iter().filter(|d| **d).count();
    assert_eq!(sent, 3, "every daemon ran an exchange");
    net.settle();
    for &x in &s {
        let t = net.trace(x, "g");
        let merge = t
            .iter()
            .rposition(|l| l.contains("Network") && l.contains("Regular"))
            .unwrap();
        for i in 0..3 {
            let m = t.iter().position(|l| *l == format!("during{i}")).unwrap();
            assert!(merge < m, "{x:?}: {t:#?}");
        }
    }
    assert!(net.d(0).stats().exchanges >= 2);
    check_groups(&net);
}

/// A merge interrupted by a new partition: daemons 0 and 1 come from different sides, start the
/// exchange with daemon 2, and lose it before the exchange completes. They go on together in a
/// transitional configuration without having merged their group states: each processes the held
/// join in its own lineage, so the two views carry different ids (origin), and the next
/// exchange merges them.
#[test]
fn an_exchange_interrupted_by_a_partition_keeps_lineages_apart_until_the_next_one() {
    for delay_us in (0..200).map(|k| k * 10) {
        let (mut net, _a, b) = a_and_b_in_g();
        net.partition(&[&[0], &[1, 2]]);
        net.settle();
        net.heal();
        while !net.d(0).exchanging() {
            net.run_for(Duration::from_micros(20));
        }
        let c = net.connect(0, "c");
        net.join(c, "g");
        net.run_for(Duration::from_micros(delay_us));
        net.partition(&[&[0, 1], &[2]]);
        net.settle();
        if net.d(0).stats().exchanges_abandoned == 0 || net.d(1).stats().exchanges_abandoned == 0 {
            continue; // The exchange completed before the cut: try a shorter window.
        }
        check_groups(&net);
        let vc = net.views(c, "g");
        let vb = net.views(b, "g");
        let joined_c = |v: &Arc<GroupView>| v.reason == Reason::Join && &*v.joined[0].name == "c";
        let at0 = vc.iter().find(|v| joined_c(v)).unwrap();
        if at0.id.view.kind != ViewKind::Transitional {
            continue; // The join was ordered in the next ring, after the cut: try a later cut.
        }
        let at1 = vb.iter().find(|v| joined_c(v)).unwrap();
        assert_eq!(names(at0), ["a", "c"]);
        assert_eq!(names(at1), ["c", "b"], "members sort by daemon");
        assert_eq!(at0.id.view, at1.id.view, "same daemon view context");
        assert_ne!(at0.id, at1.id, "different lineages, different ids");
        let last_c = vc.last().unwrap();
        let last_b = vb.last().unwrap();
        assert_eq!(last_c.id, last_b.id);
        assert_eq!(names(last_c), ["a", "c", "b"]);
        assert_eq!(last_c.reason, Reason::Network);
        return;
    }
    panic!("never managed to interrupt an exchange");
}

#[test]
fn a_crashed_daemon_takes_its_members_out_and_a_restart_brings_new_ones() {
    let (mut net, s) = p0_p1_p2_in_g();
    net.crash(2);
    net.settle();
    for &x in &s[..2] {
        let v = net.views(x, "g");
        let n = v.len();
        assert_eq!(v[n - 2].kind, ViewKind::Transitional);
        assert_eq!(names(&v[n - 1]), ["p0", "p1"]);
    }
    net.restart(2);
    let p2 = net.connect(2, "p2");
    net.join(p2, "g");
    net.settle();
    for &x in &[s[0], s[1], p2] {
        let v = net.views(x, "g").pop().unwrap();
        assert_eq!(names(&v), ["p0", "p1", "p2"]);
        assert_eq!(v.members[2].daemon, ProcId::new(2, 2));
    }
    check_groups(&net);
}

#[test]
fn groups_that_lose_nobody_see_no_view_change() {
    let (mut net, a, b) = a_and_b_in_g();
    let n = net.views(a, "g").len();
    net.crash(2);
    net.settle();
    assert_eq!(net.views(a, "g").len(), n);
    net.send(a, &["g"], "still");
    net.ms(100);
    assert_eq!(net.msgs(b), ["still"]);
}

// ------------------------------------------------------------------ limits

#[test]
fn limits_are_typed_errors() {
    let limits = Limits {
        max_sessions: 2,
        max_groups_per_session: 2,
    };
    let mut net = Net::with_limits(1, limits);
    net.ms(500);
    let now = net.now;
    let d = net.d(0);
    let a = d.connect(now, "a").unwrap();
    assert_eq!(d.connect(now, "a"), Err(GroupError::NameInUse("a".into())));
    assert!(matches!(
        d.connect(now, "has space"),
        Err(GroupError::InvalidSessionName { .. })
    ));
    assert!(matches!(
        d.connect(now, &"n".repeat(17)),
        Err(GroupError::InvalidSessionName { .. })
    ));
    let _b = d.connect(now, "b").unwrap();
    assert_eq!(
        d.connect(now, "c"),
        Err(GroupError::TooManySessions { max: 2 })
    );
    let long = "g".repeat(MAX_GROUP_NAME + 1);
    assert!(matches!(
        d.join(now, a, &long),
        Err(GroupError::InvalidGroupName { .. })
    ));
    assert!(matches!(
        d.join(now, a, "#a#0"),
        Err(GroupError::InvalidGroupName { .. })
    ));
    d.join(now, a, &"g".repeat(MAX_GROUP_NAME)).unwrap();
    d.join(now, a, "h").unwrap();
    assert_eq!(
        d.join(now, a, "h"),
        Err(GroupError::AlreadyMember("h".into()))
    );
    assert_eq!(
        d.join(now, a, "i"),
        Err(GroupError::TooManyGroups { max: 2 })
    );
    assert_eq!(d.leave(now, a, "i"), Err(GroupError::NotMember("i".into())));
    let none: [&str; 0] = [];
    assert_eq!(
        d.multicast(now, a, &none, Service::Agreed, b"x"),
        Err(GroupError::NoGroups)
    );
    let many: Vec<String> = (0..=MAX_DESTINATIONS).map(|k| format!("g{k}")).collect();
    assert!(matches!(
        d.multicast(now, a, &many, Service::Agreed, b"x"),
        Err(GroupError::TooManyDestinations { .. })
    ));
    assert!(matches!(
        d.multicast(now, a, &["#x"], Service::Agreed, b"x"),
        Err(GroupError::InvalidGroupName { .. })
    ));
    assert_eq!(
        d.multicast(now, SessionId(99), &["g"], Service::Agreed, b"x"),
        Err(GroupError::UnknownSession(99))
    );
    // 16 MiB passes; above the ring's max_message_size minus the header does not.
    let big = vec![7u8; 16 << 20];
    d.multicast(now, a, &["h"], Service::Agreed, &big).unwrap();
    let max = Config::default().max_message_size;
    let huge = vec![0u8; max];
    match d.multicast(now, a, &["h"], Service::Agreed, &huge) {
        Err(GroupError::TooLarge { size, max: m }) => {
            assert_eq!(size, max);
            assert!(m < max && m > max - 64);
        }
        other => panic!("{other:?}"),
    }
    // Limits that cannot fit the state exchange are refused up front.
    let bad = Limits {
        max_sessions: 1 << 20,
        max_groups_per_session: 1000,
    };
    assert!(matches!(
        Daemon::new(Config::default(), bad, ProcId::new(0, 1), Time::ZERO),
        Err(GroupError::Config(_))
    ));
    net.ms(2000);
    // The 16 MiB message arrived whole (a is in h).
    let got = net
        .events((0, a))
        .iter()
        .find_map(|e| match e {
            SessionEvent::Message { payload, .. } => Some(payload.len()),
            _ => None,
        })
        .unwrap();
    assert_eq!(got, 16 << 20);
}

// ------------------------------------------------------------------ consistency checker

/// What the groups mode's checker finds in everything `net` recorded; `finals`: the sessions
/// alive at the end with the groups each is in, whose last views must agree.
fn group_violations(net: &Net, finals: Vec<(SessionKey, BTreeSet<String>)>) -> Vec<Violation> {
    checker::check_all(&GroupHistory {
        sessions: net.events.clone(),
        finals,
        ..GroupHistory::default()
    })
}

/// Group-level virtual synchrony over everything `net` recorded (`sim::groups::checker`):
/// view ids increase at every session; one (group, view id) has the same members and kind
/// everywhere and contains the sessions that receive it; sessions that install the same two
/// consecutive views of a group delivered the same messages to it in between, in the same
/// order; any two sessions deliver their common messages in the same order.
fn check_groups(net: &Net) {
    let v = group_violations(net, Vec::new());
    assert!(v.is_empty(), "{}", fmt_violations(&v));
}

/// xorshift64*, for reproducible random workloads.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

/// Random joins, leaves, disconnects, reconnects and multi-group sends (some to private
/// groups) by the sessions of the live daemons.
struct Workload {
    live: Vec<(S, String, BTreeSet<&'static str>)>,
    names: usize,
    sent: usize,
}

impl Workload {
    fn new(net: &mut Net, per_daemon: usize) -> Workload {
        let mut w = Workload {
            live: Vec::new(),
            names: 0,
            sent: 0,
        };
        for i in 0..net.daemons.len() {
            for _ in 0..per_daemon {
                w.connect(net, i);
            }
        }
        w
    }

    fn connect(&mut self, net: &mut Net, i: usize) {
        if net.daemons[i].is_some() {
            self.names += 1;
            let name = format!("s{}", self.names);
            self.live
                .push((net.connect(i, &name), name, BTreeSet::new()));
        }
    }

    /// The sessions of a crashed daemon are gone.
    fn crashed(&mut self, i: usize) {
        self.live.retain(|(s, _, _)| s.0 != i);
    }

    fn act(&mut self, net: &mut Net, rng: &mut Rng) {
        if self.live.is_empty() {
            self.connect(net, rng.below(net.daemons.len()));
            return;
        }
        let k = rng.below(self.live.len());
        let s = self.live[k].0;
        match rng.below(10) {
            0 | 1 => {
                let g = GROUPS[rng.below(3)];
                if self.live[k].2.insert(g) {
                    net.join(s, g);
                } else {
                    self.live[k].2.remove(g);
                    net.leave(s, g);
                }
            }
            2 if rng.below(6) == 0 => {
                net.disconnect(s);
                self.live.remove(k);
                self.connect(net, rng.below(net.daemons.len()));
            }
            _ => {
                self.sent += 1;
                let mut dests = vec![GROUPS[rng.below(3)].to_owned()];
                if rng.below(3) == 0 {
                    dests.push(GROUPS[rng.below(3)].to_owned());
                }
                if rng.below(5) == 0 {
                    let (o, name, _) = &self.live[rng.below(self.live.len())];
                    dests.push(format!("#{name}#{}", o.0));
                }
                let dests: Vec<&str> = dests.iter().map(|d| d.as_str()).collect();
                net.send(s, &dests, &format!("m{}", self.sent));
            }
        }
    }

    /// The live sessions and the groups each is in: after the final heal each must see the
    /// same last view of each of its groups as the others.
    fn finals(&self, net: &Net) -> Vec<(SessionKey, BTreeSet<String>)> {
        self.live
            .iter()
            .map(|(s, _, joined)| (net.key(*s), joined.iter().map(|g| g.to_string()).collect()))
            .collect()
    }
}

fn print_stats(net: &Net, seed: u64) {
    if std::env::var("GROUPS_STATS").is_ok() {
        let events: usize = net.events.values().map(|e| e.len()).sum();
        eprintln!("seed {seed}: {events} session events");
        for (i, d) in net.daemons.iter().enumerate() {
            if let Some(d) = d {
                eprintln!("  d{i}: {:?}", d.stats());
            }
        }
    }
}

/// Scripted faults (two partitions, two heals, a crash with restart) under a random workload
/// on 4 daemons.
fn scripted_run(seed: u64) {
    const N: usize = 4;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut net = booted(N);
    let mut w = Workload::new(&mut net, 2);
    let a = rng.below(N);
    let mut script = vec![(800u64, 1u8), (4000, 2), (6000, 3), (9000, 2), (10000, 4)].into_iter();
    let mut next = script.next();
    let mut t = 0u64;
    while t < 14_000 {
        if let Some((at, what)) = next {
            if t >= at {
                next = script.next();
                match what {
                    1 => {
                        let (x, y): (Vec<usize>, Vec<usize>) = (0..N).partition(|i| *i <= a % 3);
                        net.partition(&[&x, &y]);
                    }
                    2 => net.heal(),
                    3 => net.partition(&[&[a], &(0..N).filter(|i| *i != a).collect::<Vec<_>>()]),
                    _ => {
                        let victim = (a + 1) % N;
                        net.crash(victim);
                        w.crashed(victim);
                        net.ms(1500);
                        net.restart(victim);
                    }
                }
            }
        }
        for _ in 0..1 + rng.below(3) {
            w.act(&mut net, &mut rng);
        }
        let step = 1 + rng.below(10) as u64;
        net.ms(step);
        t += step;
    }
    net.heal();
    net.settle();
    print_stats(&net, seed);
    let v = group_violations(&net, w.finals(&net));
    assert!(v.is_empty(), "seed {seed}: {}", fmt_violations(&v));
    let delivered: usize = net.events.values().map(|e| e.len()).sum();
    assert!(delivered > 2000, "seed {seed}: only {delivered} events");
}

#[test]
fn scripted_partitions_heals_and_a_crash_are_group_consistent() {
    for seed in 1..=6 {
        scripted_run(seed);
    }
}
