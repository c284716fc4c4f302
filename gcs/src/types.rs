//! The vocabulary of the core: who is a member, which ring, which view, which service.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A daemon's identity in the static configuration (its slot in the list of daemons).
pub type NodeId = u32;

/// One run of one daemon: the node plus an incarnation number that differs on every start.
///
/// A daemon that restarts is a new process as far as Extended Virtual Synchrony is concerned:
/// the old incarnation failed, the new one joins. Rings and views are sets of `ProcId`s, so a
/// late packet from an earlier incarnation can never be mistaken for the current one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct ProcId {
    /// The daemon's node id.
    pub node: NodeId,
    /// Distinct for every start of this node (the driver picks it: a boot counter or a clock).
    pub incarnation: u64,
}

impl ProcId {
    /// A process id from its parts.
    pub const fn new(node: NodeId, incarnation: u64) -> Self {
        ProcId { node, incarnation }
    }
}

impl fmt::Debug for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.{}", self.node, self.incarnation)
    }
}

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A ring's identity: a sequence number above every ring any member had seen, plus the
/// representative that created it. Unique because a representative never reuses a sequence
/// number and its `ProcId` includes its incarnation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct RingId {
    /// Strictly greater than the ring sequence of every previous ring of every member.
    pub seq: u64,
    /// The member that formed the ring (the smallest `ProcId` of the members).
    pub rep: ProcId,
}

impl fmt::Debug for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ring{}@{:?}", self.seq, self.rep)
    }
}

/// Regular or transitional configuration (EVS).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub enum ViewKind {
    /// The members that move together from the same previous regular view into the next one.
    /// Delivered just before the regular view it leads to; ordered before it.
    Transitional,
    /// A ring that has completed membership and recovery.
    Regular,
}

/// A configuration's identity. A transitional view carries the ring id of the regular view it
/// precedes and sorts just before it, so each process sees strictly increasing view ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ViewId {
    /// The ring that this view is (regular) or leads into (transitional).
    pub ring: RingId,
    /// Transitional sorts before regular for the same ring.
    pub kind: ViewKind,
}

impl fmt::Debug for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            ViewKind::Transitional => "T",
            ViewKind::Regular => "R",
        };
        write!(f, "{}{}@{:?}", k, self.ring.seq, self.ring.rep)
    }
}

/// A configuration delivered to the application: its id and its members in the deterministic
/// ring order (ascending `ProcId`), which is the same at every member.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct View {
    /// Unique, and increasing at each process.
    pub id: ViewId,
    /// Sorted ascending; always contains the process that delivers the view.
    pub members: Vec<ProcId>,
}

impl View {
    /// Regular or transitional.
    pub fn kind(&self) -> ViewKind {
        self.id.kind
    }
}

/// Service level of one multicast, weakest first.
///
/// This ring delivers every level in the one total order (so each level's guarantee holds a
/// fortiori); `Safe` additionally waits until every member of the configuration has the message.
/// `Unreliable` may be dropped by the sender when its send queue is full instead of refusing it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub enum Service {
    /// May be lost; never duplicated or corrupted.
    Unreliable,
    /// Delivered unless the sender or receiver fails.
    Reliable,
    /// Reliable, in the order each sender sent.
    Fifo,
    /// Reliable, in an order consistent with causality.
    Causal,
    /// Causal, in one total order seen by all members.
    Agreed,
    /// Agreed, delivered only once every member of the configuration has the message.
    Safe,
}

impl Service {
    /// All levels, weakest first.
    pub const ALL: [Service; 6] = [
        Service::Unreliable,
        Service::Reliable,
        Service::Fifo,
        Service::Causal,
        Service::Agreed,
        Service::Safe,
    ];

    /// Wire code.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// From a wire code; `None` for an unknown code.
    pub fn from_u8(code: u8) -> Option<Service> {
        Service::ALL.get(code as usize).copied()
    }
}

/// A point in (virtual or real) monotonic time, in microseconds since an arbitrary origin.
///
/// The core never reads a clock: every input carries `now`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Time(pub u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// Microseconds since the origin.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: std::time::Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
