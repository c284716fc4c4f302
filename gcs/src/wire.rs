//! The packets daemons exchange, and their encoding.
//!
//! Every packet starts with the same header: magic, wire version, kind, and the sending process.
//! Data packets (the hot path) are encoded by hand so that receivers slice application payloads
//! out of the datagram without copying; the control packets (token, join, commit token, merge
//! detect) go through bincode with options fixed here, behind the header version, so that a
//! dependency bump cannot silently change the format. Decoding never panics: any byte string
//! yields a packet or a `WireError`.
//!
//! # Forged input
//!
//! The packet security layer (`crypto`) keeps out anyone without the cluster key, so the core
//! is written for the remaining case: a key holder sending anything well-formed. Every counter
//! a packet carries (ring numbers, sequence numbers, token passes) is below [`COUNTER_MAX`],
//! refused here otherwise, so adding one or a window to it never overflows. Past decoding, the
//! node ignores a token that claims packets beyond its own receipt plus the receive window
//! (which never grows past `recv_window_max`), and a join or commit token whose ring number is
//! more than 2^32 ahead of its own. The fuzz targets `node_packets` and `ring_traffic` (which
//! edits the live traffic of a formed ring) reach these paths.

use crate::{ProcId, RingId, Service};
use bincode::Options;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const MAGIC: u16 = 0x5342; // "SB"
/// Wire format version; bump on any change of layout.
pub const WIRE_VERSION: u8 = 1;
/// Header: magic u16, version u8, kind u8, sender node u32, sender incarnation u64.
pub const HEADER_LEN: usize = 16;
/// Smallest `max_packet_size` a configuration may use.
pub const MIN_PACKET_SIZE: usize = 1024;
/// Largest datagram (UDP payload limit over IPv4).
pub const MAX_PACKET_SIZE: usize = 65_507;
/// Largest `max_packet_size` a configuration may use (room for re-wrapping during recovery).
pub const MAX_DATA_PACKET_SIZE: usize = MAX_PACKET_SIZE - 64;
/// Most retransmission requests one token may carry.
pub const RTR_MAX: usize = 4096;
/// Most members a ring may have (bounds join and commit token sizes).
pub const MEMBERS_MAX: usize = 256;
/// Every counter a packet carries (ring numbers, sequence numbers, token passes) is below
/// this; larger values are refused as malformed. No real ring gets near it (2^62 packets at
/// ten million a second take 14,000 years), and the bound lets the core add one, or a window,
/// to any counter it received without overflow.
pub const COUNTER_MAX: u64 = 1 << 62;

/// Refuses a counter at or above [`COUNTER_MAX`].
fn counter(v: u64, what: &'static str) -> Result<u64, WireError> {
    if v >= COUNTER_MAX {
        return Err(WireError::Malformed(what));
    }
    Ok(v)
}

/// Fixed part of a data packet after the header: ring (20), seq (8), body tag (1).
const DATA_FIXED: usize = 29;
/// Extra fixed part of a recovered packet: old ring (20), old seq (8), old sender (12).
const RECOVERED_FIXED: usize = 40;
/// App body fixed part: safe flag (1), chunk count (2).
const APP_FIXED: usize = 3;
/// Per chunk: service (1), total length (4), offset (4), length (4).
pub(crate) const CHUNK_HEADER: usize = 13;

/// Why a datagram was not accepted. Counted and dropped by the node; never fatal.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its declared content.
    #[error("truncated packet")]
    Truncated,
    /// Not one of ours (wrong magic).
    #[error("bad magic")]
    BadMagic,
    /// A different wire version.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// Unknown packet kind.
    #[error("unknown packet kind {0}")]
    Kind(u8),
    /// A field holds an impossible value.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    Data = 1,
    Token = 2,
    Join = 3,
    Commit = 4,
    MergeDetect = 5,
}

/// One piece of an application message. A message that fits is one chunk with `offset == 0`
/// and `data.len() == total_len`; a larger one is split over consecutive packets of its sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) service: Service,
    pub(crate) total_len: u32,
    pub(crate) offset: u32,
    pub(crate) data: Bytes,
}

/// The application content of one ordered packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppBody {
    /// Some chunk asks for safe delivery, so the whole packet waits for it.
    pub(crate) safe: bool,
    pub(crate) chunks: Vec<Chunk>,
}

/// What an ordered packet carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Application messages originated in this ring.
    App(AppBody),
    /// During recovery: a packet of the members' previous ring, re-sent through the new ring so
    /// that everyone coming from that ring ends up with the same set.
    Recovered {
        old_ring: RingId,
        old_seq: u64,
        old_sender: ProcId,
        app: AppBody,
    },
}

/// A packet with a place in a ring's total order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Data {
    pub(crate) ring: RingId,
    pub(crate) seq: u64,
    /// The member that originated it (retransmissions keep the original bytes).
    pub(crate) sender: ProcId,
    pub(crate) body: Body,
}

/// The regular token: ordering, flow control, retransmission requests and recovery progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    pub(crate) ring: RingId,
    /// Incremented at every pass; a member accepts only a token newer than the last it saw.
    pub(crate) token_seq: u64,
    /// Highest sequence number assigned in this ring.
    pub(crate) seq: u64,
    /// All-received-up-to: a lower bound (one rotation late) of every member's contiguous receipt.
    pub(crate) aru: u64,
    /// The member that last lowered `aru`; only it may raise it again.
    pub(crate) aru_addr: Option<ProcId>,
    /// Packets sent during the last rotation (flow control).
    pub(crate) fcc: u32,
    /// Packets waiting in members' send queues (flow control fairness).
    pub(crate) backlog: u32,
    /// Sequence numbers some member is missing.
    pub(crate) rtr: Vec<u64>,
    /// In recovery: a member that still has old-ring packets to re-send.
    pub(crate) recovery_owner: Option<ProcId>,
    /// Recovery is complete (some member verified it): members still recovering install.
    pub(crate) recovered: bool,
}

impl Token {
    /// The token a new ring starts with: its first pass, nothing sent yet.
    pub(crate) fn first(ring: RingId) -> Token {
        Token {
            ring,
            token_seq: 1,
            seq: 0,
            aru: 0,
            aru_addr: None,
            fcc: 0,
            backlog: 0,
            rtr: Vec::new(),
            recovery_owner: None,
            recovered: false,
        }
    }
}

/// Gather-phase announcement: whom I have heard of and whom I consider failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Join {
    pub(crate) proc_set: Vec<ProcId>,
    pub(crate) fail_set: Vec<ProcId>,
    /// Highest ring sequence number the sender has seen.
    pub(crate) ring_seq: u64,
}

/// What one member reports about its previous ring in the commit token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberEntry {
    /// Its last installed regular ring (None for a process that never installed one).
    pub(crate) old_ring: Option<RingId>,
    /// Its contiguous receipt in that ring.
    pub(crate) aru: u64,
    /// The highest sequence number it delivered in that ring.
    pub(crate) high_delivered: u64,
    /// The highest sequence number it received in that ring.
    pub(crate) high_seq: u64,
}

/// The commit token: travels the new ring twice; the first rotation collects every member's
/// entry, the second tells everyone all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommitToken {
    pub(crate) ring: RingId,
    /// Ascending: the ring order.
    pub(crate) members: Vec<ProcId>,
    pub(crate) entries: Vec<Option<MemberEntry>>,
    /// 0 while collecting, 1 while distributing.
    pub(crate) rotation: u8,
    /// Incremented at every pass (duplicate detection).
    pub(crate) hop: u32,
}

/// An operational representative's periodic announcement of its ring, or (with `answer`) the
/// reply of a member of another ring that heard it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MergeDetect {
    pub(crate) ring: RingId,
    /// This is an answer to an announcement of the receiver: the sender heard the receiver's
    /// ring, so a receiver that gets it knows the link works both ways.
    pub(crate) answer: bool,
}

/// Any packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Packet {
    Data(Data),
    Token(Token),
    Join(Join),
    Commit(CommitToken),
    MergeDetect(MergeDetect),
}

fn bincode_options() -> impl Options {
    crate::bincode_slice::options(MAX_PACKET_SIZE as u64)
}

fn put_header(buf: &mut BytesMut, kind: Kind, from: ProcId) {
    buf.put_u16_le(MAGIC);
    buf.put_u8(WIRE_VERSION);
    buf.put_u8(kind as u8);
    buf.put_u32_le(from.node);
    buf.put_u64_le(from.incarnation);
}

fn put_ring(buf: &mut BytesMut, ring: RingId) {
    buf.put_u64_le(ring.seq);
    buf.put_u32_le(ring.rep.node);
    buf.put_u64_le(ring.rep.incarnation);
}

fn put_proc(buf: &mut BytesMut, p: ProcId) {
    buf.put_u32_le(p.node);
    buf.put_u64_le(p.incarnation);
}

/// Encodes a control packet (everything but data).
pub(crate) fn encode_control(from: ProcId, packet: &Packet) -> Bytes {
    let mut buf = BytesMut::with_capacity(256);
    let (kind, body) = match packet {
        Packet::Token(t) => (Kind::Token, bincode_options().serialize(t)),
        Packet::Join(j) => (Kind::Join, bincode_options().serialize(j)),
        Packet::Commit(c) => (Kind::Commit, bincode_options().serialize(c)),
        Packet::MergeDetect(m) => (Kind::MergeDetect, bincode_options().serialize(m)),
        Packet::Data(_) => unreachable!("data packets are built by DataBuilder"),
    };
    // Serialising our own in-memory structs cannot fail short of a size-limit bug.
    let body = body.expect("control packet exceeds the wire size limit");
    put_header(&mut buf, kind, from);
    buf.extend_from_slice(&body);
    buf.freeze()
}

/// Builds one data packet of application chunks, in place.
pub(crate) struct DataBuilder {
    buf: BytesMut,
    count_at: usize,
    safe_at: usize,
    chunks: u16,
    limit: usize,
}

impl DataBuilder {
    /// Starts a packet of `ring` with sequence number `seq`, at most `limit` bytes long.
    pub(crate) fn new(from: ProcId, ring: RingId, seq: u64, limit: usize) -> DataBuilder {
        let mut buf = BytesMut::with_capacity(limit);
        put_header(&mut buf, Kind::Data, from);
        put_ring(&mut buf, ring);
        buf.put_u64_le(seq);
        buf.put_u8(0); // Body::App
        let safe_at = buf.len();
        buf.put_u8(0);
        let count_at = buf.len();
        buf.put_u16_le(0);
        DataBuilder {
            buf,
            count_at,
            safe_at,
            chunks: 0,
            limit,
        }
    }

    /// Payload bytes that still fit in one more chunk (0 if not even a chunk header fits).
    pub(crate) fn room(&self) -> usize {
        if self.chunks == u16::MAX {
            return 0;
        }
        self.limit
            .saturating_sub(self.buf.len())
            .saturating_sub(CHUNK_HEADER)
    }

    /// Appends a chunk; the caller checked `room()`.
    pub(crate) fn push(&mut self, service: Service, total_len: u32, offset: u32, data: &[u8]) {
        debug_assert!(data.len() <= self.room());
        self.buf.put_u8(service.to_u8());
        self.buf.put_u32_le(total_len);
        self.buf.put_u32_le(offset);
        self.buf.put_u32_le(data.len() as u32);
        self.buf.extend_from_slice(data);
        if service == Service::Safe {
            self.buf[self.safe_at] = 1;
        }
        self.chunks += 1;
    }

    /// Number of chunks so far.
    pub(crate) fn chunks(&self) -> u16 {
        self.chunks
    }

    /// The finished datagram.
    pub(crate) fn finish(mut self) -> Bytes {
        let c = self.chunks.to_le_bytes();
        self.buf[self.count_at..self.count_at + 2].copy_from_slice(&c);
        self.buf.freeze()
    }
}

/// Re-wraps a stored data packet of an old ring as a `Recovered` packet of the new ring, reusing
/// its application body bytes as they are. `old_frame` must be an `App` data packet.
pub(crate) fn encode_recovered(
    from: ProcId,
    ring: RingId,
    seq: u64,
    old: &Data,
    old_frame: &Bytes,
) -> Bytes {
    let app_start = HEADER_LEN + DATA_FIXED;
    let app = &old_frame[app_start..];
    let mut buf = BytesMut::with_capacity(app_start + RECOVERED_FIXED + app.len());
    put_header(&mut buf, Kind::Data, from);
    put_ring(&mut buf, ring);
    buf.put_u64_le(seq);
    buf.put_u8(1); // Body::Recovered
    put_ring(&mut buf, old.ring);
    buf.put_u64_le(old.seq);
    put_proc(&mut buf, old.sender);
    buf.extend_from_slice(app);
    buf.freeze()
}

/// Encodes an `App` data packet (used to rebuild an old-ring packet received inside a
/// `Recovered` one, so that it can be stored and re-sent like any other).
pub(crate) fn encode_app_data(d: &Data) -> Bytes {
    let Body::App(app) = &d.body else {
        unreachable!("only application packets are rebuilt")
    };
    let mut buf = BytesMut::new();
    put_header(&mut buf, Kind::Data, d.sender);
    put_ring(&mut buf, d.ring);
    buf.put_u64_le(d.seq);
    buf.put_u8(0);
    buf.put_u8(app.safe as u8);
    buf.put_u16_le(app.chunks.len() as u16);
    for c in &app.chunks {
        buf.put_u8(c.service.to_u8());
        buf.put_u32_le(c.total_len);
        buf.put_u32_le(c.offset);
        buf.put_u32_le(c.data.len() as u32);
        buf.extend_from_slice(&c.data);
    }
    buf.freeze()
}

fn need(buf: &Bytes, n: usize) -> Result<(), WireError> {
    if buf.remaining() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_proc(buf: &mut Bytes) -> Result<ProcId, WireError> {
    need(buf, 12)?;
    Ok(ProcId::new(buf.get_u32_le(), buf.get_u64_le()))
}

fn get_ring(buf: &mut Bytes) -> Result<RingId, WireError> {
    need(buf, 8)?;
    let seq = counter(buf.get_u64_le(), "ring number")?;
    Ok(RingId {
        seq,
        rep: get_proc(buf)?,
    })
}

fn get_app(buf: &mut Bytes) -> Result<AppBody, WireError> {
    need(buf, APP_FIXED)?;
    let safe = match buf.get_u8() {
        0 => false,
        1 => true,
        _ => return Err(WireError::Malformed("safe flag")),
    };
    let count = buf.get_u16_le() as usize;
    // Each chunk needs at least its header: reject impossible counts before allocating.
    if count * CHUNK_HEADER > buf.remaining() {
        return Err(WireError::Truncated);
    }
    let mut chunks = Vec::with_capacity(count);
    let mut any_safe = false;
    for _ in 0..count {
        need(buf, CHUNK_HEADER)?;
        let service =
            Service::from_u8(buf.get_u8()).ok_or(WireError::Malformed("service level"))?;
        let total_len = buf.get_u32_le();
        let offset = buf.get_u32_le();
        let len = buf.get_u32_le() as usize;
        need(buf, len)?;
        if (offset as u64) + (len as u64) > total_len as u64 {
            return Err(WireError::Malformed("chunk beyond its message"));
        }
        any_safe |= service == Service::Safe;
        let data = buf.split_to(len);
        chunks.push(Chunk {
            service,
            total_len,
            offset,
            data,
        });
    }
    if buf.has_remaining() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    if any_safe != safe {
        return Err(WireError::Malformed("safe flag disagrees with chunks"));
    }
    Ok(AppBody { safe, chunks })
}

fn decode_data(mut buf: Bytes, sender: ProcId) -> Result<Data, WireError> {
    need(&buf, DATA_FIXED)?;
    let ring = get_ring(&mut buf)?;
    let seq = counter(buf.get_u64_le(), "sequence number")?;
    if seq == 0 {
        return Err(WireError::Malformed("sequence number 0"));
    }
    let body = match buf.get_u8() {
        0 => Body::App(get_app(&mut buf)?),
        1 => {
            let old_ring = get_ring(&mut buf)?;
            need(&buf, 8)?;
            let old_seq = counter(buf.get_u64_le(), "sequence number")?;
            let old_sender = get_proc(&mut buf)?;
            if old_seq == 0 {
                return Err(WireError::Malformed("sequence number 0"));
            }
            Body::Recovered {
                old_ring,
                old_seq,
                old_sender,
                app: get_app(&mut buf)?,
            }
        }
        _ => return Err(WireError::Malformed("body tag")),
    };
    Ok(Data {
        ring,
        seq,
        sender,
        body,
    })
}

fn sorted_unique(v: &[ProcId]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// The sending process a datagram's header names, if it is one of ours (not authenticated:
/// the driver uses it to learn the address of a daemon its book does not hold).
pub fn sender(datagram: &[u8]) -> Option<ProcId> {
    let mut b = datagram.get(..HEADER_LEN)?;
    if b.get_u16_le() != MAGIC || b.get_u8() != WIRE_VERSION {
        return None;
    }
    let _kind = b.get_u8();
    Some(ProcId::new(b.get_u32_le(), b.get_u64_le()))
}

/// Decodes a control packet's body, with the datagram limit enforced
/// ([`crate::bincode_slice`]) and nothing after it.
fn control<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    match crate::bincode_slice::decode(body, bincode_options()) {
        Ok((v, 0)) => Ok(v),
        Ok(_) => Err(WireError::Malformed("bytes after a control packet")),
        Err(e) if crate::bincode_slice::is_truncation(&e) => Err(WireError::Truncated),
        Err(_) => Err(WireError::Malformed("control packet encoding")),
    }
}

/// Decodes a datagram: the sending process and the packet.
pub(crate) fn decode(mut buf: Bytes) -> Result<(ProcId, Packet), WireError> {
    if buf.len() > MAX_PACKET_SIZE {
        return Err(WireError::Malformed("oversized datagram"));
    }
    need(&buf, HEADER_LEN)?;
    if buf.get_u16_le() != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = buf.get_u8();
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let kind = buf.get_u8();
    let from = ProcId::new(buf.get_u32_le(), buf.get_u64_le());
    let packet = match kind {
        k if k == Kind::Data as u8 => Packet::Data(decode_data(buf, from)?),
        k if k == Kind::Token as u8 => {
            let t: Token = control(&buf)?;
            if t.rtr.len() > RTR_MAX
                || t.aru > t.seq
                || [t.ring.seq, t.token_seq, t.seq]
                    .into_iter()
                    .chain(t.rtr.iter().copied())
                    .any(|v| v >= COUNTER_MAX)
            {
                return Err(WireError::Malformed("token"));
            }
            Packet::Token(t)
        }
        k if k == Kind::Join as u8 => {
            let j: Join = control(&buf)?;
            if j.proc_set.len() > MEMBERS_MAX
                || j.fail_set.len() > MEMBERS_MAX
                || !sorted_unique(&j.proc_set)
                || !sorted_unique(&j.fail_set)
                || j.ring_seq >= COUNTER_MAX
            {
                return Err(WireError::Malformed("join sets"));
            }
            Packet::Join(j)
        }
        k if k == Kind::Commit as u8 => {
            let c: CommitToken = control(&buf)?;
            if c.members.is_empty()
                || c.members.len() > MEMBERS_MAX
                || c.entries.len() != c.members.len()
                || !sorted_unique(&c.members)
                || c.members[0] != c.ring.rep
                || c.rotation > 1
                || c.ring.seq >= COUNTER_MAX
                || c.entries.iter().flatten().any(|e| {
                    e.old_ring
                        .map_or(0, |r| r.seq)
                        .max(e.aru)
                        .max(e.high_delivered)
                        .max(e.high_seq)
                        >= COUNTER_MAX
                })
            {
                return Err(WireError::Malformed("commit token"));
            }
            Packet::Commit(c)
        }
        k if k == Kind::MergeDetect as u8 => {
            let m: MergeDetect = control(&buf)?;
            counter(m.ring.seq, "ring number")?;
            Packet::MergeDetect(m)
        }
        k => return Err(WireError::Kind(k)),
    };
    Ok((from, packet))
}

/// Decodes a datagram and throws the result away: `Ok` iff the core would accept its encoding.
/// For fuzzing and diagnostics; the node decodes through the crate-private `decode`.
pub fn validate(datagram: Bytes) -> Result<(), WireError> {
    decode(datagram).map(|_| ())
}

/// One line describing a datagram, for traces and debugging tools.
pub fn describe(datagram: &Bytes) -> String {
    match decode(datagram.clone()) {
        Err(e) => format!("undecodable ({e})"),
        Ok((from, Packet::Data(d))) => match d.body {
            Body::App(a) => format!(
                "data {:?} seq={} from={from:?} chunks={}{}",
                d.ring,
                d.seq,
                a.chunks.len(),
                if a.safe { " safe" } else { "" }
            ),
            Body::Recovered {
                old_ring, old_seq, ..
            } => format!(
                "recovered {:?} seq={} from={from:?} carrying {old_ring:?} seq={old_seq}",
                d.ring, d.seq
            ),
        },
        Ok((from, Packet::Token(t))) => format!(
            "token {:?} #{} from={from:?} seq={} aru={} fcc={} rtr={:?}{}",
            t.ring,
            t.token_seq,
            t.seq,
            t.aru,
            t.fcc,
            t.rtr,
            if t.recovery_owner.is_some() {
                " recovering"
            } else {
                ""
            }
        ),
        Ok((from, Packet::Join(j))) => format!(
            "join from={from:?} procs={:?} failed={:?} ring_seq={}",
            j.proc_set, j.fail_set, j.ring_seq
        ),
        Ok((from, Packet::Commit(c))) => format!(
            "commit {:?} from={from:?} rotation={} hop={} members={:?}",
            c.ring, c.rotation, c.hop, c.members
        ),
        Ok((from, Packet::MergeDetect(m))) => format!(
            "merge-detect {:?} answer={} from={from:?}",
            m.ring, m.answer
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: u32) -> ProcId {
        ProcId::new(n, 7)
    }

    #[test]
    fn data_round_trip() {
        let ring = RingId { seq: 9, rep: p(1) };
        let mut b = DataBuilder::new(p(2), ring, 42, 1400);
        b.push(Service::Agreed, 5, 0, b"hello");
        b.push(Service::Safe, 10, 3, b"abc");
        let frame = b.finish();
        assert!(frame.len() <= 1400);
        let (from, pkt) = decode(frame.clone()).unwrap();
        assert_eq!(from, p(2));
        let Packet::Data(d) = pkt else { panic!() };
        assert_eq!((d.ring, d.seq, d.sender), (ring, 42, p(2)));
        let Body::App(app) = &d.body else { panic!() };
        assert!(app.safe);
        assert_eq!(app.chunks.len(), 2);
        assert_eq!(&app.chunks[0].data[..], b"hello");
        assert_eq!(app.chunks[1].offset, 3);

        let new_ring = RingId { seq: 10, rep: p(1) };
        let rec = encode_recovered(p(3), new_ring, 1, &d, &frame);
        let (_, pkt) = decode(rec).unwrap();
        let Packet::Data(r) = pkt else { panic!() };
        match r.body {
            Body::Recovered {
                old_ring,
                old_seq,
                old_sender,
                app: a2,
            } => {
                assert_eq!((old_ring, old_seq, old_sender), (ring, 42, p(2)));
                assert_eq!(&a2, app);
            }
            _ => panic!("expected recovered"),
        }
    }

    #[test]
    fn control_round_trip() {
        let t = Token {
            ring: RingId { seq: 3, rep: p(0) },
            token_seq: 5,
            seq: 100,
            aru: 90,
            aru_addr: Some(p(1)),
            fcc: 3,
            backlog: 4,
            rtr: vec![91, 95],
            recovery_owner: None,
            recovered: true,
        };
        let bytes = encode_control(p(0), &Packet::Token(t.clone()));
        assert_eq!(decode(bytes).unwrap(), (p(0), Packet::Token(t)));
        let j = Join {
            proc_set: vec![p(0), p(1)],
            fail_set: vec![],
            ring_seq: 4,
        };
        let bytes = encode_control(p(1), &Packet::Join(j.clone()));
        assert_eq!(decode(bytes).unwrap(), (p(1), Packet::Join(j)));
    }

    #[test]
    fn rejects_foreign_and_truncated() {
        assert_eq!(decode(Bytes::from_static(b"")), Err(WireError::Truncated));
        assert_eq!(
            decode(Bytes::from_static(&[0u8; 20])),
            Err(WireError::BadMagic)
        );
        let ring = RingId { seq: 1, rep: p(0) };
        let mut b = DataBuilder::new(p(0), ring, 1, 1400);
        b.push(Service::Agreed, 3, 0, b"abc");
        let frame = b.finish();
        for cut in 0..frame.len() {
            assert!(decode(frame.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut v = frame.to_vec();
        v[2] = 99;
        assert_eq!(decode(Bytes::from(v)), Err(WireError::Version(99)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(bytes));
        }

        #[test]
        fn decode_never_panics_on_mutated_headers(kind in 0u8..8, tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut v = vec![0x42, 0x53, WIRE_VERSION, kind];
            v.extend_from_slice(&[0; 12]);
            v.extend_from_slice(&tail);
            let _ = decode(Bytes::from(v));
        }
    }
}
