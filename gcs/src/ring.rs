//! The ordering half of Totem: per-ring receive window, the local send queue and packing, and
//! reassembly of fragmented messages. Membership calls into this module; it never calls back.
//!
//! Small application messages are packed several to a packet; a large one is cut into
//! fragments carried by consecutive packets of its sender and put back together here, by
//! sender, with offset checks. The token visit itself runs in `Node::on_token` (`node.rs`);
//! this is the rule it follows.
//!
//! # The token
//!
//! A ring is its members in ascending `ProcId` order, and the token (`wire::Token`) visits them
//! in that order. What it carries:
//!
//! | field | meaning |
//! |---|---|
//! | `token_seq` | grows at every pass, so a stale or duplicated token is recognised and ignored |
//! | `seq` | the highest sequence number handed out in this ring so far |
//! | `aru`, `aru_addr` | all-received-up-to: a member whose gap-free receipt is lower lowers it and becomes `aru_addr`; only `aru_addr` may raise it again |
//! | `rtr` | sequence numbers someone asked to have retransmitted |
//! | `fcc`, `backlog` | flow control: packets sent during the last rotation, packets queued |
//! | `recovery_owner`, `recovered` | progress of the recovery after a membership change (`membership`) |
//!
//! At each visit a member, in order: retransmits the `rtr` packets it holds; originates new
//! packets within its personal window and what remains of the global one; updates `aru`;
//! asks (in `rtr`) for the packets it lacks among those certainly sent, up to the `seq` it saw
//! at its previous visit; passes the token on; and only then sends its last
//! `accelerated_window` packets. Sending those after the token is the Accelerated Ring
//! refinement: the next member starts its visit while this one is still transmitting. An idle
//! ring does not spin: once nothing was sent, missing or undelivered for `idle_before_hold`,
//! the representative keeps the token for `token_hold` at each visit, and a local multicast
//! ends the hold at once. Any steady load, however light, keeps the token moving.
//!
//! # Delivery
//!
//! Packets are delivered in `seq` order, never across a gap. A packet holding a SAFE message
//! also waits until its `seq` is at most the smaller of two `aru` sightings: the one this member
//! passed on at its previous visit and the one arriving now. Between those two sightings the
//! token went all the way round, and any member still missing the packet would have pulled
//! `aru` below it, so everyone has it. Weaker services use the same total order (FIFO and causal
//! order follow from it); an UNRELIABLE message may be refused when the send queue is full.

use crate::wire::{AppBody, Body, Data, DataBuilder};
use crate::{ProcId, RingId, Service};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

/// A packet of a ring, decoded, with the datagram it came in (kept for retransmission).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) data: Data,
    pub(crate) frame: Bytes,
}

impl Stored {
    pub(crate) fn safe(&self) -> bool {
        match &self.data.body {
            Body::App(a) => a.safe,
            Body::Recovered { .. } => false,
        }
    }
}

/// The packets of one ring by sequence number, from the oldest not yet garbage-collected.
///
/// Invariants: every seq `<= aru` has been received (and may have been collected);
/// `aru <= high`; slots cover `base .. base + slots.len()`.
#[derive(Clone, Debug)]
pub(crate) struct RecvWindow {
    base: u64,
    slots: VecDeque<Option<Stored>>,
    aru: u64,
    high: u64,
}

impl RecvWindow {
    pub(crate) fn new() -> RecvWindow {
        RecvWindow {
            base: 1,
            slots: VecDeque::new(),
            aru: 0,
            high: 0,
        }
    }

    /// All sequence numbers up to this one have been received.
    pub(crate) fn aru(&self) -> u64 {
        self.aru
    }

    /// Highest sequence number received.
    pub(crate) fn high(&self) -> u64 {
        self.high
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&Stored> {
        if seq < self.base {
            return None;
        }
        self.slots.get((seq - self.base) as usize)?.as_ref()
    }

    /// How many places the window holds (received or awaited): what it costs in memory.
    #[cfg(test)]
    pub(crate) fn span(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn has(&self, seq: u64) -> bool {
        seq <= self.aru || self.get(seq).is_some()
    }

    /// Stores a packet. Returns false for a duplicate or one too far ahead (`limit`).
    pub(crate) fn insert(&mut self, stored: Stored, limit: u64) -> bool {
        let seq = stored.data.seq;
        if seq <= self.aru || seq > self.aru.saturating_add(limit) {
            return false;
        }
        let idx = (seq - self.base) as usize;
        while self.slots.len() <= idx {
            self.slots.push_back(None);
        }
        if self.slots[idx].is_some() {
            return false;
        }
        self.slots[idx] = Some(stored);
        self.high = self.high.max(seq);
        while self.get(self.aru + 1).is_some() {
            self.aru += 1;
        }
        true
    }

    /// Drops packets up to `upto` (all of them received, and no longer needed by anyone).
    pub(crate) fn collect(&mut self, upto: u64) {
        let upto = upto.min(self.aru);
        while self.base <= upto {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Sequence numbers in `from..=to` that are missing.
    pub(crate) fn missing(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        (from.max(self.aru + 1)..=to).filter(move |s| self.get(*s).is_none())
    }

    /// Sequence numbers of stored packets in `from..=to`, ascending.
    pub(crate) fn present(&self, from: u64, to: u64) -> impl Iterator<Item = &Stored> + '_ {
        (from.max(self.base)..=to).filter_map(move |s| self.get(s))
    }
}

/// One application message waiting to be ordered.
#[derive(Clone, Debug)]
struct Pending {
    service: Service,
    payload: Bytes,
}

/// Application messages waiting for the token, in submission order.
#[derive(Clone, Debug, Default)]
pub(crate) struct SendQueue {
    msgs: VecDeque<Pending>,
    /// Bytes of the front message already packed into ordered packets.
    front_offset: usize,
    bytes: usize,
}

impl SendQueue {
    pub(crate) fn push(&mut self, service: Service, payload: Bytes) {
        self.bytes += payload.len();
        self.msgs.push_back(Pending { service, payload });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Bytes waiting (including the unsent part of a message being fragmented).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many packets of `payload_room` bytes the queue would fill, at least (for backlog).
    pub(crate) fn packets_estimate(&self, payload_room: usize) -> u32 {
        let n = self.bytes.div_ceil(payload_room.max(1));
        n.min(u32::MAX as usize) as u32
    }

    /// Packs queued messages into `b` until it is full or the queue is empty. A message that
    /// does not fit is split; the rest goes into the next packet.
    pub(crate) fn fill(&mut self, b: &mut DataBuilder) {
        while let Some(front) = self.msgs.front() {
            let room = b.room();
            let left = front.payload.len() - self.front_offset;
            // Start a message in a fresh packet rather than leave a sliver of it at the end.
            if room == 0 || (left > room && room < 256 && b.chunks() > 0) {
                break;
            }
            let take = left.min(room);
            let off = self.front_offset;
            b.push(
                front.service,
                front.payload.len() as u32,
                off as u32,
                &front.payload[off..off + take],
            );
            self.bytes -= take;
            if take == left {
                self.msgs.pop_front();
                self.front_offset = 0;
            } else {
                self.front_offset += take;
                break;
            }
        }
    }

    /// A new ring starts: a message whose first fragments were ordered in the old ring is sent
    /// again whole (receivers drop incomplete messages at a configuration change).
    pub(crate) fn restart_partial(&mut self) {
        self.bytes += self.front_offset;
        self.front_offset = 0;
    }
}

#[derive(Clone, Debug)]
struct Partial {
    service: Service,
    total_len: u32,
    buf: BytesMut,
}

/// Messages being put back together, one per sender (a sender's fragments are consecutive in
/// its own packets, and its packets are delivered in order).
#[derive(Clone, Debug, Default)]
pub(crate) struct Reassembly {
    partial: BTreeMap<ProcId, Partial>,
    /// Fragments that did not continue what we had (dropped; a bug or a sender restart).
    pub(crate) broken: u64,
}

impl Reassembly {
    /// Feeds the chunks of one delivered packet; calls `deliver` for each complete message.
    pub(crate) fn feed(
        &mut self,
        sender: ProcId,
        app: &AppBody,
        mut deliver: impl FnMut(Service, Bytes),
    ) {
        for c in &app.chunks {
            let whole = c.offset == 0 && c.data.len() == c.total_len as usize;
            if whole {
                if self.partial.remove(&sender).is_some() {
                    self.broken += 1;
                }
                deliver(c.service, c.data.clone());
                continue;
            }
            let fits = match self.partial.get(&sender) {
                Some(p) => {
                    p.total_len == c.total_len
                        && p.service == c.service
                        && p.buf.len() == c.offset as usize
                }
                None => c.offset == 0,
            };
            if !fits {
                self.partial.remove(&sender);
                self.broken += 1;
                continue;
            }
            let p = self.partial.entry(sender).or_insert_with(|| Partial {
                service: c.service,
                total_len: c.total_len,
                buf: BytesMut::with_capacity(c.total_len as usize),
            });
            p.buf.extend_from_slice(&c.data);
            if p.buf.len() == p.total_len as usize {
                let p = self.partial.remove(&sender).expect("present");
                deliver(p.service, p.buf.freeze());
            }
        }
    }

    /// A configuration change: incomplete messages are never delivered.
    pub(crate) fn clear(&mut self) {
        self.partial.clear();
    }

    /// Forgets an incomplete message of `sender` (its remaining fragments will never come).
    pub(crate) fn drop_sender(&mut self, sender: ProcId) {
        self.partial.remove(&sender);
    }
}

/// A ring this process is part of: its members and the ordering state kept per ring.
#[derive(Clone, Debug)]
pub(crate) struct Ring {
    pub(crate) id: RingId,
    /// Ascending; the token travels in this order.
    pub(crate) members: Vec<ProcId>,
    pub(crate) window: RecvWindow,
    /// Highest sequence number delivered (or skipped as a recovery packet).
    pub(crate) delivered: u64,
    /// `token_seq` of the last token accepted.
    pub(crate) last_token_seq: u64,
    /// `aru` as this member passed the token last time (safe delivery needs two sightings).
    pub(crate) prev_aru_out: u64,
    /// Every member has received everything up to here.
    pub(crate) safe_upto: u64,
    /// `seq` as this member passed the token last time: everything up to it has been sent.
    pub(crate) last_pass_seq: u64,
    /// Packets this member sent during its last visit (flow control).
    pub(crate) my_fcc: u32,
    /// This member's contribution to the token's backlog.
    pub(crate) my_backlog: u32,
    /// Since when every token visit found nothing to do (the representative then holds it).
    pub(crate) idle_since: Option<crate::Time>,
}

impl Ring {
    pub(crate) fn new(id: RingId, members: Vec<ProcId>) -> Ring {
        Ring {
            id,
            members,
            window: RecvWindow::new(),
            delivered: 0,
            last_token_seq: 0,
            prev_aru_out: 0,
            safe_upto: 0,
            last_pass_seq: 0,
            my_fcc: 0,
            my_backlog: 0,
            idle_since: None,
        }
    }

    pub(crate) fn contains(&self, p: ProcId) -> bool {
        self.members.binary_search(&p).is_ok()
    }

    /// The member after `me` in ring order.
    pub(crate) fn next_after(&self, me: ProcId) -> ProcId {
        let i = self.members.binary_search(&me).unwrap_or(0);
        self.members[(i + 1) % self.members.len()]
    }

    pub(crate) fn is_rep(&self, me: ProcId) -> bool {
        self.members.first() == Some(&me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, Packet};

    fn stored(seq: u64) -> Stored {
        let ring = RingId::default();
        let mut b = DataBuilder::new(ProcId::new(0, 0), ring, seq, 1024);
        b.push(Service::Agreed, 1, 0, b"x");
        let frame = b.finish();
        let Packet::Data(data) = decode(frame.clone()).unwrap().1 else {
            panic!()
        };
        Stored { data, frame }
    }

    #[test]
    fn window_tracks_aru_and_missing() {
        let mut w = RecvWindow::new();
        assert!(w.insert(stored(1), 100));
        assert!(w.insert(stored(3), 100));
        assert!(!w.insert(stored(3), 100), "duplicate");
        assert!(!w.insert(stored(500), 100), "too far ahead");
        assert_eq!((w.aru(), w.high()), (1, 3));
        assert_eq!(w.missing(1, 5).collect::<Vec<_>>(), vec![2, 4, 5]);
        assert!(w.insert(stored(2), 100));
        assert_eq!(w.aru(), 3);
        w.collect(2);
        assert!(w.get(2).is_none() && w.has(2) && w.get(3).is_some());
        assert!(!w.insert(stored(2), 100), "below aru");
    }

    #[test]
    fn queue_packs_and_fragments() {
        let mut q = SendQueue::default();
        q.push(Service::Agreed, Bytes::from(vec![1u8; 10]));
        q.push(Service::Safe, Bytes::from(vec![2u8; 3000]));
        let ring = RingId::default();
        let me = ProcId::new(0, 0);
        let mut frames = Vec::new();
        let mut seq = 1;
        while !q.is_empty() {
            let mut b = DataBuilder::new(me, ring, seq, 1024);
            q.fill(&mut b);
            frames.push(b.finish());
            seq += 1;
        }
        assert_eq!(frames.len(), 4);
        let mut r = Reassembly::default();
        let mut got = Vec::new();
        for f in frames {
            let Packet::Data(d) = decode(f).unwrap().1 else {
                panic!()
            };
            let Body::App(app) = &d.body else { panic!() };
            r.feed(me, app, |s, p| got.push((s, p)));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (Service::Agreed, Bytes::from(vec![1u8; 10])));
        assert_eq!(got[1], (Service::Safe, Bytes::from(vec![2u8; 3000])));
        assert_eq!(r.broken, 0);
    }
}
