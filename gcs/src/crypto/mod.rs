//! The packet security layer: authenticated encryption and replay protection for every datagram
//! between daemons, with a cluster key that can be rotated at runtime.
//!
//! It sits between the core and the socket, and is sans-IO like the core: no socket, no clock,
//! no random source; the caller supplies the key bytes.
//!
//! ```text
//!   Node ── Output::Transmit{dest, bytes} ──► PacketSecurity::seal(dest, bytes) ──► socket
//!   Node ◄── handle_packet(now, b) ◄───────── PacketSecurity::open(datagram) ◄── socket
//!                                              (Err: dropped and counted, never parsed)
//! ```
//!
//! # Sealed datagram
//!
//! ```text
//!   offset  size  field
//!        0     2  magic "SS" (0x5353, little endian)
//!        2     1  format version (1)
//!        3     1  key id
//!        4     4  sender node (u32 LE)
//!        8     8  sender incarnation (u64 LE)
//!       16     8  packet counter (u64 LE)
//!       24     1  destination kind: 0 every daemon, 1 one daemon
//!       25     3  reserved, zero
//!       28     4  destination node (u32 LE; zero when kind is 0)
//!       32     n  XChaCha20-Poly1305 ciphertext of the inner datagram
//!     32+n    16  Poly1305 tag
//! ```
//!
//! The 32-byte header travels in clear and is the AEAD's associated data, so it is authenticated
//! too: changing any byte of a sealed datagram makes [`PacketSecurity::open`] fail. A datagram
//! grows by [`SEALED_OVERHEAD`] (48) bytes; the driver must leave that much room under the UDP limit
//! (`max_packet_size + 64 + SEALED_OVERHEAD <= wire::MAX_PACKET_SIZE`, the 64 being the room the
//! core keeps for recovery re-wrapping).
//!
//! # Nonces are never reused under one key
//!
//! XChaCha20-Poly1305 loses confidentiality and authenticity if one key ever seals two messages
//! with one nonce, so nonces are built deterministically, without a random source:
//!
//! ```text
//!   nonce (24 bytes) = sender node u32 LE ‖ sender incarnation u64 LE ‖ counter u64 LE ‖ 0u32
//! ```
//!
//! - Two daemons never share a node id (the static configuration gives each its own).
//! - One daemon never runs twice with one incarnation: the core already requires every start to
//!   use a greater incarnation than the last (a `ProcId` names one run; EVS breaks otherwise).
//! - Within one run, the counter starts at 0 and grows by one per sealed datagram, whatever key
//!   seals it; [`PacketSecurity::seal`] refuses to go on rather than wrap at 2^64 (after
//!   centuries at a billion packets per second).
//!
//! So a (node, incarnation, counter) triple, hence a nonce, is used once per run and never again
//! under any key. The only way to break this is to start a daemon twice with the same
//! `ProcId`, which the core forbids anyway. (The 192-bit nonce would also allow random nonces;
//! deterministic ones need no RNG in the core and carry the replay counter for free.)
//!
//! # Replay protection
//!
//! For each sender node the opener keeps the newest incarnation it has authenticated and, for it,
//! a sliding window of [`WINDOW`] counters ([`ReplayWindow`], a 1024-bit bitmap). A datagram is
//! refused if its incarnation is older than the newest one seen for its node, if its counter was
//! already accepted, or if it is more than [`WINDOW`] below the highest counter accepted (too
//! old to tell). The window is checked before decryption (cheap refusal) and updated only after
//! the datagram authenticated, so forged packets cannot move it. Memory is bounded: at most
//! [`MAX_TRACKED_NODES`] nodes, each a few hundred bytes; past that, new nodes are refused, never
//! evicted (see the constant). Only key holders can create entries.
//!
//! Replay protection is per *sealer*, not per inner packet, and that is what the ring needs: a
//! member legitimately receives again data packets it already has (retransmissions, and packets
//! re-sent during recovery, which keep the original sender's bytes). Each such copy is sealed
//! afresh by the member that retransmits it, with its own incarnation and a new counter, so the
//! layer accepts it and the core decides what a duplicate means. What the layer refuses is a
//! copy of a *sealed datagram* played back by someone on the network. Consequently the sender in
//! the sealed header need not match the sender in the inner packet, and is not required to.
//!
//! # Misdirection
//!
//! The destination the core gave (`Dest`) is sealed with the datagram, and `open` refuses a
//! unicast datagram addressed to another node. Otherwise someone on the path could take a token
//! sent to one member, which the recipient has not seen yet, and hand it to another member: its
//! counter would be fresh there.
//!
//! Datagrams sealed by the opener's own `ProcId` are refused as well (`looped_back`): the core
//! ignores its own multicasts looped back anyway, and the replay window only ever sees other
//! processes' counters.
//!
//! # Key rotation without a view change
//!
//! Keys have an id (`u8`, in clear in the header). The layer holds several keys, seals with the
//! *send key* and opens with whichever key the datagram names. To rotate from key `a` to key
//! `b` on a running cluster:
//!
//! 1. on every daemon, [`add_key`](PacketSecurity::add_key)`(b, new)`: everyone can now open
//!    both, still sealing with `a`;
//! 2. once every daemon has `b`, on every daemon
//!    [`set_send_key`](PacketSecurity::set_send_key)`(b)`: during this step some seal with `a`
//!    and some with `b`, and everybody opens both;
//! 3. once every daemon seals with `b` and datagrams sealed with `a` can no longer be in flight
//!    (a few token rotations; a second is plenty on a LAN),
//!    [`remove_key`](PacketSecurity::remove_key)`(a)` everywhere.
//!
//! No packet is refused at any step, so the ring never notices: no token loss, no view change.
//! Doing step 2 on a daemon before step 1 finished everywhere makes its packets unreadable to
//! the daemons still without `b`, which they count as `unknown_key` and which the ring sees as
//! loss. The counter is per run, not per key, so rotation keeps the nonce argument intact.
//!
//! # Limits of the design
//!
//! Every key holder is trusted: a daemon with the key can claim any node id in the sealed header
//! (and any `ProcId` inside). The layer protects against daemons *without* the key: they can
//! neither read, forge, modify, nor replay traffic, and so can neither join nor inject.

mod keyfile;
mod replay;
pub mod rotation;

pub use keyfile::{keygen, parse_key_file, write_key_file, ClusterKey, KeyFileError, KEY_LEN};
pub use replay::{ReplayWindow, Verdict, MAX_TRACKED_NODES, WINDOW};

use crate::{Dest, ProcId};
use bytes::{BufMut, Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use replay::ReplayGuard;
use std::collections::BTreeMap;
use thiserror::Error;

const MAGIC: u16 = 0x5353; // "SS"
/// Sealed datagram format version.
pub const SEAL_VERSION: u8 = 1;
/// Bytes of the clear header of a sealed datagram.
pub const SEALED_HEADER_LEN: usize = 32;
/// Bytes of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// How much longer a sealed datagram is than the datagram it carries.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + TAG_LEN;

/// A key's name on the wire, chosen by the operator (e.g. incremented at every rotation).
pub type KeyId = u8;

/// The clear header of a sealed datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    /// The key that sealed it.
    pub key_id: KeyId,
    /// The daemon run that sealed it.
    pub sender: ProcId,
    /// That run's packet counter.
    pub counter: u64,
    /// To whom the sender addressed it.
    pub dest: Dest,
}

impl SealedHeader {
    fn encode(&self) -> [u8; SEALED_HEADER_LEN] {
        let mut h = [0u8; SEALED_HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        h[2] = SEAL_VERSION;
        h[3] = self.key_id;
        h[4..8].copy_from_slice(&self.sender.node.to_le_bytes());
        h[8..16].copy_from_slice(&self.sender.incarnation.to_le_bytes());
        h[16..24].copy_from_slice(&self.counter.to_le_bytes());
        if let Dest::Node(n) = self.dest {
            h[24] = 1;
            h[28..32].copy_from_slice(&n.to_le_bytes());
        }
        h
    }

    /// Reads the clear header of a sealed datagram. Says nothing about authenticity.
    pub fn decode(datagram: &[u8]) -> Result<SealedHeader, CryptoError> {
        if datagram.len() < SEALED_OVERHEAD {
            return Err(CryptoError::Truncated);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&datagram[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if u16::from_le_bytes([datagram[0], datagram[1]]) != MAGIC {
            return Err(CryptoError::BadMagic);
        }
        if datagram[2] != SEAL_VERSION {
            return Err(CryptoError::Version(datagram[2]));
        }
        let u32_at = |i: usize| {
            u32::from_le_bytes([
                datagram[i],
                datagram[i + 1],
                datagram[i + 2],
                datagram[i + 3],
            ])
        };
        let dest = match (datagram[24], u32_at(28)) {
            _ if datagram[25..28] != [0, 0, 0] => return Err(CryptoError::Malformed),
            (0, 0) => Dest::All,
            (1, n) => Dest::Node(n),
            _ => return Err(CryptoError::Malformed),
        };
        Ok(SealedHeader {
            key_id: datagram[3],
            sender: ProcId::new(u32_at(4), u64_at(8)),
            counter: u64_at(16),
            dest,
        })
    }

    fn nonce(&self) -> XNonce {
        let mut n = [0u8; 24];
        n[0..4].copy_from_slice(&self.sender.node.to_le_bytes());
        n[4..12].copy_from_slice(&self.sender.incarnation.to_le_bytes());
        n[12..20].copy_from_slice(&self.counter.to_le_bytes());
        XNonce::from(n)
    }
}

/// Why a datagram was not sealed or opened, or a key operation was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// Shorter than a header and a tag.
    #[error("sealed datagram truncated")]
    Truncated,
    /// Not a sealed datagram (e.g. a plain core datagram from a daemon without security).
    #[error("not a sealed datagram (bad magic)")]
    BadMagic,
    /// Another format version.
    #[error("unsupported sealed datagram version {0}")]
    Version(u8),
    /// Reserved bits set or an unknown destination kind.
    #[error("malformed sealed header")]
    Malformed,
    /// Sealed by this very process: our own multicast looped back (or played back to us).
    #[error("own datagram looped back")]
    OwnDatagram,
    /// A unicast datagram for another node.
    #[error("datagram addressed to node {0}")]
    Misdirected(u32),
    /// Sealed with a key id this layer does not hold.
    #[error("unknown key id {0}")]
    UnknownKey(KeyId),
    /// The tag does not verify: another key, or modified in transit.
    #[error("authentication failed")]
    Authentication,
    /// This sender's counter was already accepted.
    #[error("replayed datagram")]
    Replay,
    /// Too far behind the sender's newest counter to tell whether it is a replay.
    #[error("datagram too old for the replay window")]
    TooOld,
    /// From an incarnation older than the newest seen for that node.
    #[error("datagram from an old incarnation")]
    OldIncarnation,
    /// From a node beyond the tracked-node bound.
    #[error("too many sender nodes")]
    TooManySenders,
    /// This run sealed 2^64 datagrams: restart with a new incarnation.
    #[error("packet counter exhausted")]
    CounterExhausted,
    /// Larger than the AEAD can seal (256 GiB).
    #[error("datagram too large to seal")]
    TooLarge,
    /// A key operation named a key that is not held.
    #[error("no key with id {0}")]
    NoSuchKey(KeyId),
    /// `remove_key` on the key used for sending.
    #[error("key {0} is the send key: switch the send key first")]
    RemoveSendKey(KeyId),
    /// `add_key` with an id already held for different key bytes.
    #[error("key id {0} is already used by another key")]
    KeyIdInUse(KeyId),
}

/// What the layer counted. Every refused datagram is counted in exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CryptoStats {
    /// Datagrams sealed.
    pub sealed: u64,
    /// Datagrams opened (authenticated, fresh).
    pub opened: u64,
    /// Refused: truncated, bad magic, another version, reserved bits (not ours, or not sealed).
    pub malformed: u64,
    /// Refused: a unicast datagram addressed to another node.
    pub misdirected: u64,
    /// Refused: sealed by this process itself (IP multicast loopback). Harmless, so not part
    /// of [`dropped`](Self::dropped).
    pub looped_back: u64,
    /// Refused: sealed with a key id not held.
    pub unknown_key: u64,
    /// Refused: failed authentication (wrong key or tampered).
    pub auth_failed: u64,
    /// Refused: counter already accepted.
    pub replayed: u64,
    /// Refused: counter below the replay window.
    pub too_old: u64,
    /// Refused: older incarnation than the newest seen for its node.
    pub old_incarnation: u64,
    /// Refused: node beyond [`MAX_TRACKED_NODES`].
    pub too_many_senders: u64,
}

impl CryptoStats {
    /// Datagrams refused by `open` (all but `looped_back`).
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.misdirected
            + self.unknown_key
            + self.auth_failed
            + self.replayed
            + self.too_old
            + self.old_incarnation
            + self.too_many_senders
    }
}

/// One key and its expanded cipher state.
struct HeldKey {
    key: ClusterKey,
    cipher: XChaCha20Poly1305,
}

/// One daemon run's packet security: seals what it sends, opens what it receives.
pub struct PacketSecurity {
    me: ProcId,
    /// Next counter to use; `None` once exhausted.
    next_counter: Option<u64>,
    keys: BTreeMap<KeyId, HeldKey>,
    send_key: KeyId,
    replay: ReplayGuard,
    stats: CryptoStats,
}

impl std::fmt::Debug for PacketSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSecurity")
            .field("me", &self.me)
            .field("next_counter", &self.next_counter)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("send_key", &self.send_key)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PacketSecurity {
    /// The layer of process `me` (the same `ProcId` as its `Node`: a new incarnation at every
    /// start, see the module docs), holding one key, used for sending.
    pub fn new(me: ProcId, key_id: KeyId, key: &ClusterKey) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(key_id, held(key));
        PacketSecurity {
            me,
            next_counter: Some(0),
            keys,
            send_key: key_id,
            replay: ReplayGuard::default(),
            stats: CryptoStats::default(),
        }
    }

    /// The process whose datagrams this layer seals.
    pub fn me(&self) -> ProcId {
        self.me
    }

    /// Adds a key that `open` accepts (rotation step 1). Adding the same key again is a no-op;
    /// reusing an id for other bytes is refused (remove it first).
    pub fn add_key(&mut self, id: KeyId, key: &ClusterKey) -> Result<(), CryptoError> {
        match self.keys.get(&id) {
            Some(k) if k.key == *key => Ok(()),
            Some(_) => Err(CryptoError::KeyIdInUse(id)),
            None => {
                self.keys.insert(id, held(key));
                Ok(())
            }
        }
    }

    /// Seals from now on with key `id`, which must be held (rotation step 2).
    pub fn set_send_key(&mut self, id: KeyId) -> Result<(), CryptoError> {
        if !self.keys.contains_key(&id) {
            return Err(CryptoError::NoSuchKey(id));
        }
        self.send_key = id;
        Ok(())
    }

    /// Forgets key `id` (rotation step 3); datagrams sealed with it are refused from now on. The
    /// send key cannot be removed.
    pub fn remove_key(&mut self, id: KeyId) -> Result<(), CryptoError> {
        if id == self.send_key {
            return Err(CryptoError::RemoveSendKey(id));
        }
        self.keys
            .remove(&id)
            .map(|_| ())
            .ok_or(CryptoError::NoSuchKey(id))
    }

    /// The key used for sealing.
    pub fn send_key(&self) -> KeyId {
        self.send_key
    }

    /// The ids of the keys held, ascending.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    /// What was counted so far.
    pub fn stats(&self) -> &CryptoStats {
        &self.stats
    }

    /// Sender nodes whose replay state is kept (at most [`MAX_TRACKED_NODES`]).
    pub fn tracked_senders(&self) -> usize {
        self.replay.tracked()
    }

    /// Seals one datagram of the core, for `dest` (the `Output::Transmit` destination), with
    /// the send key and the next counter.
    ///
    /// Fails only with [`CryptoError::CounterExhausted`], after 2^64 datagrams (or for a
    /// datagram beyond the AEAD's 256 GiB limit).
    pub fn seal(&mut self, dest: Dest, plain: &[u8]) -> Result<Bytes, CryptoError> {
        self.seal_with(self.send_key, dest, plain)
    }

    /// [`seal`](Self::seal) with a held key other than the send key (key announcements go out
    /// once under every key held, so that a peer holding any of them reads one). The counter
    /// is shared by all keys, so no nonce repeats under any key.
    pub fn seal_with(
        &mut self,
        key_id: KeyId,
        dest: Dest,
        plain: &[u8],
    ) -> Result<Bytes, CryptoError> {
        if !self.keys.contains_key(&key_id) {
            return Err(CryptoError::NoSuchKey(key_id));
        }
        let counter = self.next_counter.ok_or(CryptoError::CounterExhausted)?;
        self.next_counter = counter.checked_add(1);
        let header = SealedHeader {
            key_id,
            sender: self.me,
            counter,
            dest,
        };
        let aad = header.encode();
        let mut out = BytesMut::with_capacity(SEALED_OVERHEAD + plain.len());
        out.put_slice(&aad);
        out.put_slice(plain);
        let cipher = &self
            .keys
            .get(&key_id)
            .ok_or(CryptoError::NoSuchKey(key_id))?
            .cipher;
        let tag = cipher
            .encrypt_in_place_detached(&header.nonce(), &aad, &mut out[SEALED_HEADER_LEN..])
            .map_err(|_| CryptoError::TooLarge)?;
        out.put_slice(&tag);
        self.stats.sealed += 1;
        Ok(out.freeze())
    }

    /// Opens a received datagram: checks the header, the replay state and the tag, and returns
    /// the inner datagram for `Node::handle_packet`. Anything refused is counted in
    /// [`stats`](Self::stats) and must be dropped: its content was never looked at.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Bytes, CryptoError> {
        let r = self.try_open(datagram);
        if let Err(e) = &r {
            let s = &mut self.stats;
            match e {
                CryptoError::Truncated
                | CryptoError::BadMagic
                | CryptoError::Version(_)
                | CryptoError::Malformed => s.malformed += 1,
                CryptoError::Misdirected(_) => s.misdirected += 1,
                CryptoError::OwnDatagram => s.looped_back += 1,
                CryptoError::UnknownKey(_) => s.unknown_key += 1,
                CryptoError::Authentication => s.auth_failed += 1,
                CryptoError::Replay => s.replayed += 1,
                CryptoError::TooOld => s.too_old += 1,
                CryptoError::OldIncarnation => s.old_incarnation += 1,
                CryptoError::TooManySenders => s.too_many_senders += 1,
                CryptoError::CounterExhausted
                | CryptoError::TooLarge
                | CryptoError::NoSuchKey(_)
                | CryptoError::RemoveSendKey(_)
                | CryptoError::KeyIdInUse(_) => {}
            }
            tracing::trace!(me = ?self.me, error = %e, "dropped sealed datagram");
        } else {
            self.stats.opened += 1;
        }
        r
    }

    fn try_open(&mut self, datagram: &[u8]) -> Result<Bytes, CryptoError> {
        let header = SealedHeader::decode(datagram)?;
        match header.dest {
            Dest::Node(n) if n != self.me.node => return Err(CryptoError::Misdirected(n)),
            _ if header.sender == self.me => return Err(CryptoError::OwnDatagram),
            _ => {}
        }
        let cipher = &self
            .keys
            .get(&header.key_id)
            .ok_or(CryptoError::UnknownKey(header.key_id))?
            .cipher;
        // Cheap refusal before any cryptography; the state changes only after authentication.
        verdict(self.replay.check(header.sender, header.counter))?;
        let (aad, rest) = datagram.split_at(SEALED_HEADER_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = BytesMut::from(body);
        cipher
            .decrypt_in_place_detached(&header.nonce(), aad, &mut plain, Tag::from_slice(tag))
            .map_err(|_| CryptoError::Authentication)?;
        self.replay.accept(header.sender, header.counter);
        Ok(plain.freeze())
    }
}

fn held(key: &ClusterKey) -> HeldKey {
    HeldKey {
        key: key.clone(),
        cipher: XChaCha20Poly1305::new(key.as_bytes().into()),
    }
}

fn verdict(v: Verdict) -> Result<(), CryptoError> {
    match v {
        Verdict::Fresh => Ok(()),
        Verdict::Replay => Err(CryptoError::Replay),
        Verdict::TooOld => Err(CryptoError::TooOld),
        Verdict::OldIncarnation => Err(CryptoError::OldIncarnation),
        Verdict::TooManySenders => Err(CryptoError::TooManySenders),
    }
}

#[cfg(test)]
mod tests;
