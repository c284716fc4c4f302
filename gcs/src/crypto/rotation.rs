//! Key rotation on a running cluster, without a view change and without an operator stepping
//! through the daemons one by one.
//!
//! The operator puts the new key in every daemon's key file (next to the current one) and has
//! each daemon read the file again. From there the daemons agree among themselves:
//!
//! - **Announce.** Every daemon tells every peer, once a second and at once after a change,
//!   which key ids it holds and which one it seals with. The announcement goes out sealed once
//!   under every key it holds, so that a peer holding any of them reads it.
//! - **Switch.** A daemon seals with the newest key that every peer heard from lately holds
//!   too (after a short warm-up at start, so that it hears the others first). It never goes
//!   back to an older key: a peer that shows up with old keys only is shut out until it gets
//!   the new file.
//! - **Drop.** A key older than the send key is dropped (and never taken back from the key
//!   file) once every peer heard from lately seals with a newer one, and [`DROP_AFTER`] after
//!   this daemon switched (datagrams sealed just before the switch may still be on the way). From then on a datagram
//!   sealed with the old key, a leaked one for instance, is refused.
//!
//! Peers not heard from for [`FORGET_AFTER`] (down, partitioned) do not hold rotation up; when
//! they come back with the new key they read the announcements and follow.
//!
//! Sans-IO like the rest of the layer: [`KeyRotation::tick`] takes the time and the
//! [`PacketSecurity`] it manages, and returns the announcement for the driver to send.

use super::{KeyId, PacketSecurity};
use crate::{NodeId, Time};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// First bytes of an announcement's plaintext (the core's packets start with other magics).
pub const ANNOUNCE_PREFIX: [u8; 4] = *b"KEY!";

/// How often a daemon announces its keys.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// A peer not heard from for this long no longer counts.
pub const FORGET_AFTER: Duration = Duration::from_millis(3500);

/// After start, how long a daemon waits to hear its peers before it switches keys alone.
pub const WARM_UP: Duration = Duration::from_millis(2500);

/// How long an old key is still accepted after this daemon switched away from it, so that
/// datagrams sealed with it just before the peers switched (a token in flight) still count.
pub const DROP_AFTER: Duration = Duration::from_millis(1000);

/// Whether an opened datagram is a key announcement (for [`KeyRotation::on_announcement`],
/// not for the core).
pub fn is_announcement(plain: &[u8]) -> bool {
    plain.starts_with(&ANNOUNCE_PREFIX)
}

#[derive(Clone, Debug)]
struct Heard {
    held: BTreeSet<KeyId>,
    send: KeyId,
    at: Time,
}

/// One daemon's view of the cluster's keys (see the module docs).
#[derive(Clone, Debug)]
pub struct KeyRotation {
    me: NodeId,
    started: Time,
    peers: BTreeMap<NodeId, Heard>,
    retired: BTreeSet<KeyId>,
    next_announce: Time,
    /// When this daemon last changed its send key.
    switched_at: Time,
}

/// What a daemon reports about its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key it seals with.
    pub send: KeyId,
    /// The keys it accepts.
    pub held: Vec<KeyId>,
    /// Keys it dropped and will not take back.
    pub retired: Vec<KeyId>,
    /// Peers heard from lately: their held keys and send key.
    pub peers: Vec<(NodeId, Vec<KeyId>, KeyId)>,
}

impl KeyRotation {
    /// Daemon `me`, starting at `now`.
    pub fn new(me: NodeId, now: Time) -> KeyRotation {
        KeyRotation {
            me,
            started: now,
            peers: BTreeMap::new(),
            retired: BTreeSet::new(),
            next_announce: now,
            switched_at: now,
        }
    }

    /// When [`Self::tick`] must run next.
    pub fn deadline(&self) -> Time {
        self.next_announce
    }

    /// Whether key `id` was dropped by this daemon (a reload of the key file must not add it
    /// back).
    pub fn is_retired(&self, id: KeyId) -> bool {
        self.retired.contains(&id)
    }

    /// The keys changed locally (a reload): announce at the next tick.
    pub fn keys_changed(&mut self, now: Time) {
        self.next_announce = now;
    }

    /// An announcement from peer `from` (the sealed header's sender: authenticated by the
    /// key). Malformed ones are ignored.
    pub fn on_announcement(&mut self, now: Time, from: NodeId, plain: &[u8]) {
        if from == self.me {
            return;
        }
        let Some(body) = plain.strip_prefix(&ANNOUNCE_PREFIX) else {
            return;
        };
        let Some((&send, rest)) = body.split_first() else {
            return;
        };
        let Some((&n, ids)) = rest.split_first() else {
            return;
        };
        if ids.len() != n as usize || !ids.contains(&send) {
            return;
        }
        let first = !self.peers.contains_key(&from);
        self.peers.insert(
            from,
            Heard {
                held: ids.iter().copied().collect(),
                send,
                at: now,
            },
        );
        if first {
            // A peer we did not know: tell it our keys at once.
            self.next_announce = now;
        }
    }

    fn live(&self, now: Time) -> impl Iterator<Item = &Heard> {
        self.peers
            .values()
            .filter(move |h| now.since(h.at) <= FORGET_AFTER)
    }

    /// Applies the switch and drop rules to `sec`, and returns the announcement to send to
    /// every peer (under every key held) when one is due.
    pub fn tick(&mut self, now: Time, sec: &mut PacketSecurity) -> Option<Bytes> {
        let mut changed = false;
        let live: Vec<Heard> = self.live(now).cloned().collect();
        let decided = !live.is_empty() || now.since(self.started) >= WARM_UP;
        if decided {
            let newest_shared = sec
                .key_ids()
                .into_iter()
                .filter(|k| live.iter().all(|h| h.held.contains(k)))
                .max();
            if let Some(k) = newest_shared.filter(|k| *k > sec.send_key()) {
                if sec.set_send_key(k).is_ok() {
                    tracing::info!(node = self.me, key = k, "sealing with the new cluster key");
                    self.switched_at = now;
                    changed = true;
                }
            }
            let send = sec.send_key();
            let settled = now.since(self.switched_at) >= DROP_AFTER;
            for k in sec.key_ids() {
                if k < send
                    && settled
                    && live.iter().all(|h| h.send > k)
                    && sec.remove_key(k).is_ok()
                {
                    tracing::info!(node = self.me, key = k, "old cluster key dropped");
                    self.retired.insert(k);
                    changed = true;
                }
            }
        }
        if changed {
            self.next_announce = now;
        }
        if now < self.next_announce {
            return None;
        }
        self.next_announce = now.saturating_add(ANNOUNCE_EVERY);
        let ids = sec.key_ids();
        let mut b = BytesMut::with_capacity(6 + ids.len());
        b.put_slice(&ANNOUNCE_PREFIX);
        b.put_u8(sec.send_key());
        b.put_u8(ids.len() as u8);
        b.put_slice(&ids);
        Some(b.freeze())
    }

    /// What this daemon knows of the keys, for operators.
    pub fn status(&self, now: Time, sec: &PacketSecurity) -> KeyStatus {
        KeyStatus {
            send: sec.send_key(),
            held: sec.key_ids(),
            retired: self.retired.iter().copied().collect(),
            peers: self
                .peers
                .iter()
                .filter(|(_, h)| now.since(h.at) <= FORGET_AFTER)
                .map(|(n, h)| (*n, h.held.iter().copied().collect(), h.send))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ClusterKey;
    use crate::ProcId;

    fn sec(me: NodeId, keys: &[KeyId]) -> PacketSecurity {
        let mut s = PacketSecurity::new(
            ProcId::new(me, 1),
            keys[0],
            &ClusterKey::from_bytes([keys[0] + 1; 32]),
        );
        for k in &keys[1..] {
            s.add_key(*k, &ClusterKey::from_bytes([*k + 1; 32]))
                .unwrap();
        }
        s
    }

    fn at(ms: u64) -> Time {
        Time(ms * 1000)
    }

    /// Three daemons exchanging announcements every tick, lossless.
    fn run(secs: &mut [PacketSecurity], rots: &mut [KeyRotation], from: u64, to: u64) {
        for ms in (from..to).step_by(100) {
            let mut sent = Vec::new();
            for (i, r) in rots.iter_mut().enumerate() {
                if let Some(a) = r.tick(at(ms), &mut secs[i]) {
                    sent.push((i, a));
                }
            }
            for (i, a) in sent {
                for (j, r) in rots.iter_mut().enumerate() {
                    // A peer reads it if it holds any key the sender holds.
                    let readable = secs[i]
                        .key_ids()
                        .iter()
                        .any(|k| secs[j].key_ids().contains(k));
                    if j != i && readable {
                        r.on_announcement(at(ms), i as NodeId, &a);
                    }
                }
            }
        }
    }

    #[test]
    fn a_new_key_is_taken_once_everyone_holds_it_and_the_old_one_dropped_once_nobody_uses_it() {
        let mut secs: Vec<_> = (0..3).map(|i| sec(i, &[1])).collect();
        let mut rots: Vec<_> = (0..3).map(|i| KeyRotation::new(i, at(0))).collect();
        run(&mut secs, &mut rots, 0, 3000);
        assert!(secs.iter().all(|s| s.send_key() == 1));
        // Two of three get key 2: nobody switches.
        for s in &mut secs[..2] {
            s.add_key(2, &ClusterKey::from_bytes([3; 32])).unwrap();
        }
        rots[0].keys_changed(at(3000));
        rots[1].keys_changed(at(3000));
        run(&mut secs, &mut rots, 3000, 6000);
        assert!(secs.iter().all(|s| s.send_key() == 1), "switched too early");
        assert!(secs[0].key_ids().contains(&1));
        // The third gets it: all switch, then all drop key 1.
        secs[2]
            .add_key(2, &ClusterKey::from_bytes([3; 32]))
            .unwrap();
        rots[2].keys_changed(at(6000));
        run(&mut secs, &mut rots, 6000, 9000);
        for (i, s) in secs.iter().enumerate() {
            assert_eq!(s.send_key(), 2, "daemon {i}");
            assert_eq!(s.key_ids(), vec![2], "daemon {i} still holds key 1");
            assert!(rots[i].is_retired(1));
        }
    }

    #[test]
    fn a_peer_with_old_keys_only_never_pulls_the_others_back() {
        let mut secs = vec![sec(0, &[2]), sec(1, &[2]), sec(2, &[1])];
        let mut rots: Vec<_> = (0..3).map(|i| KeyRotation::new(i, at(0))).collect();
        run(&mut secs, &mut rots, 0, 4000);
        assert_eq!(secs[0].send_key(), 2);
        assert_eq!(secs[1].send_key(), 2);
        assert_eq!(secs[2].key_ids(), vec![1], "it cannot learn key 2");
    }

    #[test]
    fn malformed_announcements_are_ignored() {
        let mut r = KeyRotation::new(0, at(0));
        for bad in [
            &b"KEY!"[..],
            b"KEY!\x02",
            b"KEY!\x02\x02\x01",
            b"KEY!\x03\x01\x01",
            b"nope",
        ] {
            r.on_announcement(at(1), 1, bad);
        }
        assert!(r.peers.is_empty());
    }
}
