//! Exact scenarios on a perfect in-process network: what one input does, and the claims of the
//! Totem and EVS papers that do not need faults (the simulator covers those).

use bytes::Bytes;
use gcs::{
    Config, Delivery, Dest, Node, Output, Phase, ProcId, Service, SubmitError, Time, View, ViewKind,
};
use std::collections::VecDeque;
use std::time::Duration;

/// N nodes, a lossless network with a fixed one-way delay of 100 us, virtual time.
struct Lan {
    nodes: Vec<Option<Node>>,
    now: Time,
    wire: VecDeque<(Time, usize, Bytes)>,
    delivered: Vec<Vec<Delivery>>,
    views: Vec<Vec<View>>,
    cfg: Config,
    /// Frozen nodes: no timers run, datagrams wait in their socket.
    frozen: Vec<bool>,
    inbox: Vec<VecDeque<Bytes>>,
}

impl Lan {
    fn new(n: usize) -> Lan {
        Lan::with(n, Config::default())
    }

    fn with(n: usize, cfg: Config) -> Lan {
        let mut lan = Lan {
            nodes: Vec::new(),
            now: Time::ZERO,
            wire: VecDeque::new(),
            delivered: vec![Vec::new(); n],
            views: vec![Vec::new(); n],
            cfg: cfg.clone(),
            frozen: vec![false; n],
            inbox: vec![VecDeque::new(); n],
        };
        for i in 0..n {
            lan.nodes.push(Some(
                Node::new(cfg.clone(), ProcId::new(i as u32, 1), Time::ZERO).unwrap(),
            ));
            lan.drain(i);
        }
        lan
    }

    fn drain(&mut self, i: usize) {
        let n = self.nodes.len();
        while let Some(out) = self.nodes[i].as_mut().and_then(|x| x.poll_output()) {
            match out {
                Output::Transmit {
                    dest: Dest::All,
                    bytes,
                } => {
                    for j in (0..n).filter(|j| *j != i) {
                        self.wire.push_back((
                            self.now.saturating_add(Duration::from_micros(100)),
                            j,
                            bytes.clone(),
                        ));
                    }
                }
                Output::Transmit {
                    dest: Dest::Node(j),
                    bytes,
                } => {
                    self.wire.push_back((
                        self.now.saturating_add(Duration::from_micros(100)),
                        j as usize,
                        bytes,
                    ));
                }
                Output::Deliver(d) => self.delivered[i].push(d),
                Output::View(v) => self.views[i].push(v),
            }
        }
    }

    /// Runs until `until` (virtual).
    fn run_for(&mut self, d: Duration) {
        let until = self.now.saturating_add(d);
        loop {
            let next_packet = self.wire.front().map(|w| w.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.frozen[*i])
                .filter_map(|(i, n)| n.as_ref().and_then(|n| n.poll_deadline()).map(|t| (t, i)))
                .min();
            let pick_packet = match (next_packet, next_timer) {
                (Some(p), Some((t, _))) => p <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if pick_packet {
                let (at, to, bytes) = self.wire.pop_front().unwrap();
                if at > until {
                    self.wire.push_front((at, to, bytes));
                    break;
                }
                self.now = self.now.max(at);
                if self.frozen[to] {
                    self.inbox[to].push_back(bytes);
                    continue;
                }
                if std::env::var("LAN_TRACE").is_ok() && self.nodes[to].is_some() {
                    eprintln!("{:?} n{to} {}", self.now, gcs::wire::describe(&bytes));
                }
                if let Some(n) = self.nodes[to].as_mut() {
                    n.handle_packet(self.now, bytes);
                }
                self.drain(to);
            } else {
                let (t, i) = next_timer.unwrap();
                if t > until {
                    break;
                }
                self.now = self.now.max(t);
                self.nodes[i].as_mut().unwrap().handle_timeout(self.now);
                self.drain(i);
            }
        }
        self.now = until;
    }

    /// The node wakes up: its overdue timers fire, then it reads what waited in its socket.
    fn thaw(&mut self, i: usize) {
        self.frozen[i] = false;
        let now = self.now;
        self.nodes[i].as_mut().unwrap().handle_timeout(now);
        self.drain(i);
        while let Some(b) = self.inbox[i].pop_front() {
            self.nodes[i].as_mut().unwrap().handle_packet(now, b);
            self.drain(i);
        }
    }

    fn send(&mut self, i: usize, service: Service, payload: Bytes) -> Result<(), SubmitError> {
        let now = self.now;
        let r = self.nodes[i]
            .as_mut()
            .unwrap()
            .multicast(now, service, payload);
        self.drain(i);
        r
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().unwrap()
    }
}

#[test]
fn nodes_booting_together_form_one_ring_and_first_view_is_regular() {
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    for i in 0..3 {
        assert_eq!(lan.node(i).phase(), Phase::Operational);
        let last = lan.views[i].last().unwrap();
        assert_eq!(last.members.len(), 3, "node {i}: {:?}", lan.views[i]);
        assert_eq!(
            lan.views[i][0].id.kind,
            ViewKind::Regular,
            "no transitional view before the first"
        );
    }
    assert_eq!(lan.views[0].last(), lan.views[2].last());
}

#[test]
fn every_service_is_delivered_in_one_total_order_including_to_the_sender() {
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    for k in 0..300u32 {
        let service = Service::ALL[(k % 6) as usize];
        lan.send(
            (k % 3) as usize,
            service,
            Bytes::from(k.to_le_bytes().to_vec()),
        )
        .unwrap();
    }
    lan.run_for(Duration::from_millis(500));
    let seq = |i: usize| {
        lan.delivered[i]
            .iter()
            .map(|d| d.payload.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(seq(0).len(), 300);
    assert_eq!(seq(0), seq(1));
    assert_eq!(seq(0), seq(2));
    // FIFO per sender.
    for i in 0..3u32 {
        let mine: Vec<u32> = seq(0)
            .iter()
            .map(|p| u32::from_le_bytes(p[..4].try_into().unwrap()))
            .filter(|k| k % 3 == i)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn a_sixteen_mebibyte_message_is_fragmented_and_reassembled() {
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big = Bytes::from(big);
    lan.send(1, Service::Safe, big.clone()).unwrap();
    lan.send(2, Service::Agreed, Bytes::from_static(b"small after"))
        .unwrap();
    lan.run_for(Duration::from_secs(5));
    let order = |i: usize| {
        lan.delivered[i]
            .iter()
            .map(|d| d.sender)
            .collect::<Vec<_>>()
    };
    for i in 0..3 {
        assert_eq!(lan.delivered[i].len(), 2, "node {i}");
        assert_eq!(order(i), order(0), "same total order everywhere");
        let got = lan.delivered[i]
            .iter()
            .find(|d| d.sender == ProcId::new(1, 1))
            .unwrap();
        assert!(got.payload == big, "node {i}: the big message differs");
        assert_eq!(got.service, Service::Safe);
    }
}

#[test]
fn oversized_messages_and_full_queues_are_refused_with_typed_errors() {
    let mut lan = Lan::new(1);
    let max = lan.cfg.max_message_size;
    let err = lan
        .send(0, Service::Agreed, Bytes::from(vec![0u8; max + 1]))
        .unwrap_err();
    assert_eq!(err, SubmitError::TooLarge { size: max + 1, max });
    // Nothing is ordered before the ring forms, so the queue fills.
    let chunk = Bytes::from(vec![0u8; 8 << 20]);
    let mut refused = false;
    for _ in 0..16 {
        if let Err(SubmitError::QueueFull { .. }) = lan.send(0, Service::Agreed, chunk.clone()) {
            refused = true;
            break;
        }
    }
    assert!(refused);
}

/// A sender that keeps a saturated ring's queue full feels back-pressure (`QueueFull`) before
/// its messages wait longer than `send_queue_max_delay` in the queue; with only the byte bound
/// they wait seconds.
#[test]
fn a_saturated_sender_waits_about_the_queue_delay_bound_not_seconds() {
    // The longest wait, from acceptance to delivery at the sender, of the messages delivered
    // after the first 0.5 s of a 2 s burst, and how many messages were delivered.
    fn worst_wait(delay: Duration) -> (Duration, usize) {
        let cfg = Config {
            // A slow ring: two 1 KiB packets per visit, about 7 MB/s on the Lan.
            max_packet_size: 1024,
            personal_window: 2,
            global_window: 8,
            accelerated_window: 0,
            send_queue_max_delay: delay,
            ..Config::default()
        };
        let mut lan = Lan::with(3, cfg);
        lan.run_for(Duration::from_secs(1));
        assert!(lan
            .views
            .iter()
            .all(|v| v.last().is_some_and(|v| v.members.len() == 3)));
        let start = lan.now;
        let mut seen = 0;
        let mut worst = Duration::ZERO;
        while lan.now.since(start) < Duration::from_secs(2) {
            loop {
                let mut p = vec![0u8; 1000];
                p[..8].copy_from_slice(&lan.now.as_micros().to_le_bytes());
                match lan.send(0, Service::Agreed, Bytes::from(p)) {
                    Ok(()) => {}
                    Err(SubmitError::QueueFull { .. }) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
            lan.run_for(Duration::from_millis(1));
            if lan.now.since(start) > Duration::from_millis(500) {
                for d in &lan.delivered[0][seen..] {
                    let sent = Time(u64::from_le_bytes(d.payload[..8].try_into().unwrap()));
                    worst = worst.max(lan.now.since(sent));
                }
            }
            seen = lan.delivered[0].len();
        }
        (worst, seen)
    }
    let (bounded, n_bounded) = worst_wait(Duration::from_millis(100));
    let (unbounded, n_unbounded) = worst_wait(Duration::ZERO);
    assert!(
        bounded < Duration::from_millis(250),
        "waited {bounded:?} with a 100 ms bound"
    );
    assert!(
        unbounded > Duration::from_secs(1),
        "waited only {unbounded:?} on bytes alone: the test no longer saturates the ring"
    );
    // The ring carries as much either way.
    assert!(
        n_bounded * 10 >= n_unbounded * 9,
        "{n_bounded} delivered with the bound, {n_unbounded} without"
    );
}

#[test]
fn garbage_datagrams_are_counted_and_change_nothing() {
    let mut lan = Lan::new(2);
    lan.run_for(Duration::from_millis(500));
    let view = lan.node(0).view().cloned();
    let now = lan.now;
    let n = lan.nodes[0].as_mut().unwrap();
    for junk in [
        &b""[..],
        b"hello",
        &[
            0x42, 0x53, 1, 2, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 255, 255,
        ][..],
    ] {
        n.handle_packet(now, Bytes::copy_from_slice(junk));
    }
    assert_eq!(lan.node(0).stats().malformed, 3);
    lan.run_for(Duration::from_millis(100));
    assert_eq!(lan.node(0).view().cloned(), view);
}

#[test]
fn a_crashed_member_is_excluded_after_the_token_timeout_with_a_transitional_view() {
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    lan.send(0, Service::Agreed, Bytes::from_static(b"before"))
        .unwrap();
    lan.run_for(Duration::from_millis(50));
    lan.nodes[2] = None;
    lan.wire.retain(|w| w.1 != 2);
    lan.run_for(lan.cfg.token_timeout + lan.cfg.consensus_timeout * 2);
    for i in 0..2 {
        let v = &lan.views[i];
        let n = v.len();
        assert_eq!(v[n - 2].id.kind, ViewKind::Transitional);
        assert_eq!(v[n - 2].members, vec![ProcId::new(0, 1), ProcId::new(1, 1)]);
        assert_eq!(v[n - 1].members, vec![ProcId::new(0, 1), ProcId::new(1, 1)]);
        assert!(v[n - 1].id > v[n - 3].id, "view ids increase");
    }
}

#[test]
fn a_restarted_daemon_comes_back_as_a_new_incarnation_and_replaces_the_old_one_quickly() {
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    // Node 2 restarts before the others notice (faster than the token timeout).
    let now = lan.now;
    lan.nodes[2] = Some(Node::new(lan.cfg.clone(), ProcId::new(2, 2), now).unwrap());
    lan.drain(2);
    lan.run_for(lan.cfg.token_timeout / 2);
    let expect = vec![ProcId::new(0, 1), ProcId::new(1, 1), ProcId::new(2, 2)];
    for i in 0..3 {
        assert_eq!(lan.node(i).view().unwrap().members, expect, "node {i}");
    }
    lan.send(2, Service::Safe, Bytes::from_static(b"new incarnation"))
        .unwrap();
    lan.run_for(Duration::from_millis(100));
    assert!(lan.delivered[0]
        .iter()
        .any(|d| d.sender == ProcId::new(2, 2)));
}

#[test]
fn an_idle_ring_holds_the_token_and_a_busy_one_does_not() {
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    let tokens = |lan: &Lan| -> u64 { (0..3).map(|i| lan.node(i).stats().tokens).sum() };
    // Past `idle_before_hold`, an idle ring costs a few token passes per `token_hold`.
    lan.run_for(lan.cfg.idle_before_hold * 2);
    let before = tokens(&lan);
    lan.run_for(Duration::from_secs(1));
    let idle = tokens(&lan) - before;
    // Without holding, 1 s at 100 us per hop would be ~10,000 token passes.
    assert!(idle < 200, "{idle} token passes in an idle second");
    // The first message after the quiet spell still goes through within a hold.
    lan.send(1, Service::Agreed, Bytes::from_static(b"wake"))
        .unwrap();
    lan.run_for(lan.cfg.token_hold * 2);
    assert!((0..3).all(|i| lan.delivered[i].len() == 1));
    // Under light steady load from a non-representative, the token keeps moving: every
    // message is delivered everywhere within a few hops, never a whole hold.
    for k in 0..50u32 {
        lan.send(2, Service::Agreed, Bytes::from(k.to_le_bytes().to_vec()))
            .unwrap();
        lan.run_for(Duration::from_millis(5));
        assert!(
            (0..3).all(|i| lan.delivered[i].len() == 2 + k as usize),
            "message {k} waited for a held token"
        );
    }
}

#[test]
fn daemons_frozen_together_resume_without_a_view_change() {
    // A whole host stalls (suspend, hypervisor pause) for three token timeouts. When the daemons
    // wake, their token-loss timers are long overdue, yet nobody failed: they must notice their
    // own pause, read what waited in their sockets, and carry on in the same view.
    let mut lan = Lan::new(3);
    lan.run_for(Duration::from_millis(500));
    lan.send(
        1,
        Service::Agreed,
        Bytes::from_static(b"keep the token moving"),
    )
    .unwrap();
    lan.run_for(Duration::from_millis(1));
    let views_before: Vec<usize> = lan.views.iter().map(|v| v.len()).collect();
    lan.frozen = vec![true; 3];
    lan.run_for(lan.cfg.token_timeout * 3);
    for i in 0..3 {
        lan.thaw(i);
    }
    lan.run_for(Duration::from_secs(2));
    for (i, before) in views_before.iter().enumerate() {
        assert_eq!(
            lan.views[i].len(),
            *before,
            "node {i} changed view: {:?}",
            lan.views[i]
        );
        assert!(
            lan.node(i).stats().pauses >= 1,
            "node {i} did not notice its pause"
        );
    }
    lan.send(2, Service::Safe, Bytes::from_static(b"after"))
        .unwrap();
    lan.run_for(Duration::from_millis(100));
    assert!((0..3).all(|i| lan.delivered[i].len() == 2));
}
