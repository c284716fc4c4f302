//! The packet security layer around real `Node`s on a perfect in-process network: a daemon
//! without the cluster key cannot join or inject, a replaying attacker changes nothing, and a key
//! rotation on a running ring causes no view change.

use bytes::Bytes;
use gcs::crypto::SealedHeader;
use gcs::{ClusterKey, Config, Dest, Node, Output, PacketSecurity, ProcId, Service, Time, View};
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Seals and opens with the layer.
    Sealed,
    /// Talks the plain core protocol, no layer.
    Plain,
}

struct Daemon {
    node: Node,
    sec: PacketSecurity,
    mode: Mode,
    delivered: Vec<(ProcId, Bytes)>,
    views: Vec<View>,
}

/// Daemons on one lossless network with a fixed 100 us delay. Everything sent is also recorded
/// (as an eavesdropper would) so that tests can replay it.
struct Lan {
    daemons: Vec<Daemon>,
    now: Time,
    wire: VecDeque<(Time, usize, Bytes)>,
    captured: Vec<(usize, Bytes)>,
}

const KEY: [u8; 32] = [0x42; 32];

impl Lan {
    /// One daemon per entry: its key (`None`: plain, no layer).
    fn new(keys: &[Option<[u8; 32]>]) -> Lan {
        let mut lan = Lan {
            daemons: Vec::new(),
            now: Time::ZERO,
            wire: VecDeque::new(),
            captured: Vec::new(),
        };
        for (i, k) in keys.iter().enumerate() {
            let me = ProcId::new(i as u32, 1);
            let key = ClusterKey::from_bytes(k.unwrap_or([1; 32]));
            lan.daemons.push(Daemon {
                node: Node::new(Config::default(), me, Time::ZERO).unwrap(),
                sec: PacketSecurity::new(me, 0, &key),
                mode: if k.is_some() {
                    Mode::Sealed
                } else {
                    Mode::Plain
                },
                delivered: Vec::new(),
                views: Vec::new(),
            });
        }
        for i in 0..keys.len() {
            lan.drain(i);
        }
        lan
    }

    fn drain(&mut self, i: usize) {
        let n = self.daemons.len();
        let at = self.now.saturating_add(Duration::from_micros(100));
        while let Some(out) = self.daemons[i].node.poll_output() {
            match out {
                Output::Transmit { dest, bytes } => {
                    let d = &mut self.daemons[i];
                    let bytes = match d.mode {
                        Mode::Sealed => d.sec.seal(dest, &bytes).unwrap(),
                        Mode::Plain => bytes,
                    };
                    let to: Vec<usize> = match dest {
                        Dest::All => (0..n).filter(|j| *j != i).collect(),
                        Dest::Node(j) => vec![j as usize],
                    };
                    for j in to {
                        self.captured.push((j, bytes.clone()));
                        self.wire.push_back((at, j, bytes.clone()));
                    }
                }
                Output::Deliver(m) => self.daemons[i].delivered.push((m.sender, m.payload)),
                Output::View(v) => self.daemons[i].views.push(v),
            }
        }
    }

    fn receive(&mut self, to: usize, bytes: Bytes) {
        let d = &mut self.daemons[to];
        let inner = match d.mode {
            Mode::Plain => Some(bytes),
            Mode::Sealed => d.sec.open(&bytes).ok(),
        };
        if let Some(inner) = inner {
            d.node.handle_packet(self.now, inner);
        }
        self.drain(to);
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now.saturating_add(d);
        loop {
            let next_packet = self.wire.front().map(|w| w.0);
            let next_timer = (0..self.daemons.len())
                .filter_map(|i| self.daemons[i].node.poll_deadline().map(|t| (t, i)))
                .min();
            let packet_first = match (next_packet, next_timer) {
                (Some(p), Some((t, _))) => p <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if packet_first {
                let (at, to, bytes) = self.wire.pop_front().unwrap();
                if at > until {
                    self.wire.push_front((at, to, bytes));
                    break;
                }
                self.now = self.now.max(at);
                self.receive(to, bytes);
            } else {
                let (t, i) = next_timer.unwrap();
                if t > until {
                    break;
                }
                self.now = self.now.max(t);
                self.daemons[i].node.handle_timeout(self.now);
                self.drain(i);
            }
        }
        self.now = until;
    }

    /// Delivers every datagram on the wire now (their receivers may put more on it): the
    /// eavesdropper's record then holds only what reached its addressee.
    fn settle(&mut self) {
        for _ in 0..self.wire.len() {
            let Some((at, to, bytes)) = self.wire.pop_front() else {
                break;
            };
            self.now = self.now.max(at);
            self.receive(to, bytes);
        }
    }

    fn send(&mut self, i: usize, payload: &[u8]) {
        let now = self.now;
        self.daemons[i]
            .node
            .multicast(now, Service::Agreed, Bytes::copy_from_slice(payload))
            .unwrap();
        self.drain(i);
    }

    fn members(&self, i: usize) -> Vec<ProcId> {
        self.daemons[i].views.last().unwrap().members.clone()
    }
}

fn procs(ids: &[u32]) -> Vec<ProcId> {
    ids.iter().map(|i| ProcId::new(*i, 1)).collect()
}

/// Three daemons with the cluster key, an intruder with another key (3) and one without the
/// layer at all (4), all on the same network, all multicasting.
#[test]
fn a_daemon_without_the_key_cannot_join_or_inject() {
    let mut lan = Lan::new(&[Some(KEY), Some(KEY), Some(KEY), Some([0x99; 32]), None]);
    lan.run_for(Duration::from_millis(500));
    for round in 0..20u8 {
        for i in 0..5 {
            lan.send(i, &[i as u8, round]);
        }
        lan.run_for(Duration::from_millis(20));
    }
    lan.run_for(Duration::from_millis(500));

    for i in 0..3 {
        let d = &lan.daemons[i];
        // Only the keyed daemons ever appear in a view.
        for v in &d.views {
            assert!(
                v.members.iter().all(|p| p.node < 3),
                "daemon {i} saw an intruder in {v:?}"
            );
        }
        assert_eq!(lan.members(i), procs(&[0, 1, 2]));
        // Every keyed multicast delivered, none of the intruders'.
        assert_eq!(d.delivered.len(), 60, "daemon {i}");
        assert!(d.delivered.iter().all(|(s, p)| s.node < 3 && p[0] < 3));
        // Everything the intruders sent was dropped by the layer and counted.
        let st = d.sec.stats();
        assert!(st.auth_failed > 0, "{st:?}");
        assert!(st.malformed > 0, "{st:?}");
        assert_eq!(
            d.node.stats().malformed,
            0,
            "the core never saw a bad datagram"
        );
    }
    // Each keyed daemon refused exactly the datagrams the intruders addressed to it (those
    // still on the wire at the end reach it first).
    lan.settle();
    for i in 0..3 {
        let from_intruders = |plain: bool| {
            lan.captured
                .iter()
                .filter(|(to, b)| {
                    *to == i
                        && match SealedHeader::decode(b) {
                            Ok(h) => !plain && h.sender.node == 3,
                            Err(_) => plain,
                        }
                })
                .count() as u64
        };
        let st = lan.daemons[i].sec.stats();
        assert_eq!(st.auth_failed, from_intruders(false), "daemon {i}");
        assert_eq!(st.malformed, from_intruders(true), "daemon {i}");
        assert_eq!(st.dropped(), st.auth_failed + st.malformed);
    }
    // The intruders only ever form rings alone, and deliver only their own messages.
    for i in 3..5 {
        let d = &lan.daemons[i];
        assert!(d.views.iter().all(|v| v.members == procs(&[i as u32])));
        assert!(d.delivered.iter().all(|(s, _)| s.node == i as u32));
    }
}

/// An eavesdropper records every sealed datagram and plays all of it back later, to everyone:
/// nothing is accepted, no view changes, nothing is delivered twice.
#[test]
fn replayed_traffic_is_refused() {
    let mut lan = Lan::new(&[Some(KEY), Some(KEY), Some(KEY)]);
    lan.run_for(Duration::from_millis(300));
    for k in 0..30u8 {
        lan.send((k % 3) as usize, &[k]);
        lan.run_for(Duration::from_millis(2));
    }
    lan.run_for(Duration::from_millis(300));
    let views: Vec<usize> = lan.daemons.iter().map(|d| d.views.len()).collect();
    let delivered: Vec<usize> = lan.daemons.iter().map(|d| d.delivered.len()).collect();
    assert_eq!(delivered, vec![30, 30, 30]);
    let opened: Vec<u64> = lan.daemons.iter().map(|d| d.sec.stats().opened).collect();

    // Everything already received (what is still in flight would be news to its recipient).
    let captured: Vec<(usize, Bytes)> = std::mem::take(&mut lan.captured)
        .into_iter()
        .filter(|c| !lan.wire.iter().any(|(_, to, b)| (*to, b) == (c.0, &c.1)))
        .collect();
    assert!(captured.len() > 100);
    // To the recipient it was meant for, twice, and to everyone else.
    for (to, bytes) in &captured {
        for j in 0..3 {
            for _ in 0..(if j == *to { 2 } else { 1 }) {
                lan.receive(j, bytes.clone());
            }
        }
    }
    for (i, d) in lan.daemons.iter().enumerate() {
        let st = d.sec.stats();
        assert_eq!(st.opened, opened[i], "daemon {i}: a replay was accepted");
        assert_eq!(
            st.replayed + st.too_old + st.misdirected + st.looped_back,
            captured.len() as u64 + captured.iter().filter(|(to, _)| *to == i).count() as u64,
            "daemon {i}: {st:?}"
        );
    }
    lan.run_for(Duration::from_millis(300));
    for (i, d) in lan.daemons.iter().enumerate() {
        assert_eq!(d.views.len(), views[i], "daemon {i}: view change");
        assert_eq!(d.delivered.len(), delivered[i], "daemon {i}");
    }
}

/// Add the new key everywhere, switch the send key everywhere, remove the old key: while
/// messages flow, with no view change and no loss.
#[test]
fn key_rotation_on_a_running_ring_causes_no_view_change() {
    let mut lan = Lan::new(&[Some(KEY), Some(KEY), Some(KEY)]);
    lan.run_for(Duration::from_millis(300));
    let views: Vec<usize> = lan.daemons.iter().map(|d| d.views.len()).collect();
    let new = ClusterKey::from_bytes([0x77; 32]);
    let mut k = 0u8;
    let mut traffic = |lan: &mut Lan| {
        for _ in 0..10 {
            lan.send((k % 3) as usize, &[k]);
            k += 1;
            lan.run_for(Duration::from_millis(3));
        }
    };
    traffic(&mut lan);
    for i in 0..3 {
        lan.daemons[i].sec.add_key(1, &new).unwrap();
        traffic(&mut lan);
    }
    for i in 0..3 {
        lan.daemons[i].sec.set_send_key(1).unwrap();
        traffic(&mut lan);
    }
    lan.run_for(Duration::from_millis(100));
    for i in 0..3 {
        lan.daemons[i].sec.remove_key(0).unwrap();
        traffic(&mut lan);
    }
    lan.run_for(Duration::from_millis(300));
    for (i, d) in lan.daemons.iter().enumerate() {
        assert_eq!(d.views.len(), views[i], "daemon {i}: view change");
        assert_eq!(d.delivered.len(), 100, "daemon {i}");
        assert_eq!(
            d.sec.stats().dropped(),
            0,
            "daemon {i}: {:?}",
            d.sec.stats()
        );
        assert_eq!(d.sec.key_ids(), vec![1]);
    }
    // The old key is really gone: a daemon still sealing with it is shut out.
    let mut late = PacketSecurity::new(ProcId::new(0, 1), 0, &ClusterKey::from_bytes(KEY));
    let stale = late.seal(Dest::All, b"anything").unwrap();
    assert!(lan.daemons[1].sec.open(&stale).is_err());
}
