//! Named process groups on top of the daemon ring, in the style of Spread; sans-IO.
//!
//! A [`Daemon`] wraps one [`Node`](crate::Node) and serves client *sessions* (processes). Sessions
//! join and leave named groups and multicast to one or several groups; they receive messages
//! and per-group membership views. The driver contract is the node's: feed
//! `handle_packet`/`handle_timeout`, call the session methods, and after every call drain
//! `poll_output` ([`DaemonOutput`]: datagrams to send, events for sessions, daemon views).
//!
//! # Semantics
//!
//! - **Members.** A session is a [`MemberId`]: its daemon (a `ProcId`), a session number never
//!   reused by that daemon run, and a name unique among the daemon's live sessions. Its
//!   *private group* is `#name#node` ([`MemberId::private_group`]); a message to it reaches that
//!   session only.
//! - **Open groups.** Anyone may multicast to any groups, member or not. A message to several
//!   groups reaches each session once (with the whole group list); the sender gets it too when it
//!   is a member of one of the groups. All messages are in the ring's one total order, whatever
//!   the service.
//! - **Membership is ordered with the messages.** `join`, `leave` and `disconnect` are AGREED
//!   multicasts applied at delivery: every daemon applies them at the same point of the stream,
//!   so every member sees a change between the same two messages.
//! - **Group views follow daemon views.** On a transitional daemon view, every group that lost
//!   members (their daemon is not in the transitional set) gets a *transitional* group view
//!   (reason `Network`); groups that lose nobody get nothing. On the regular daemon view, each
//!   daemon multicasts the memberships of its own sessions for that view (the *state
//!   exchange*); once every daemon's state is delivered, the group state is their union, and every
//!   group that changed, or had a transitional view, gets a *regular* view (reason `Network`).
//!   Messages, joins and leaves delivered during the exchange are held and processed in order
//!   right after it: the same ones at every daemon, since the order is total. When the regular
//!   daemon view brings nobody new (the daemons of the view shared our state all along), there
//!   is no exchange. A daemon view during an exchange abandons it: what was held is processed
//!   in the transitional context and a new exchange runs in the next regular view.
//! - **View ids** ([`GroupViewId`]): the daemon view in whose context the group view was made, the
//!   smallest daemon of the *lineage* (the daemons known to share this daemon's group state),
//!   and a counter of membership events in that context. Daemons that share a lineage process
//!   the same events from the same state, so the same id always names the same members; lineages
//!   in one daemon view are disjoint, so ids of different lineages differ. Ids increase at every
//!   session.
//! - `joined`/`left` of a view are relative to the previous view of that group delivered at
//!   this daemon (whatever its kind). Membership events delivered in a transitional context have
//!   kind `Transitional` if the group had a transitional view since its last regular one.
//! - Joins and leaves of members whose daemon is no longer reachable (delivered in a
//!   transitional configuration) are ignored: those members were already removed.
//!
//! # Limits
//!
//! Group names: 1..=[`MAX_GROUP_NAME`] (32) bytes of printable ASCII without space or `#`
//! (`#` starts private groups). Session names: 1..=[`MAX_SESSION_NAME`] (16) bytes, same rules.
//! At most [`MAX_DESTINATIONS`] groups per multicast; [`Limits`] bounds sessions per daemon and
//! groups per session. A message may be as large as the ring's `max_message_size` minus a small
//! header (the default ring allows 32 MiB).

mod codec;
mod daemon;
mod limits;

pub use codec::DecodeError;
pub use daemon::{Daemon, GroupStats};
pub use limits::{GroupError, Limits, MAX_DESTINATIONS, MAX_GROUP_NAME, MAX_SESSION_NAME};

use crate::node::Dest;
use crate::{ProcId, Service, View, ViewId, ViewKind};
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// A client session of one daemon. Numbers are never reused by a daemon run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SessionId(pub u32);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A group member (a session), cluster-wide. Ordered by daemon, then session number.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    /// The daemon (run) serving the session.
    pub daemon: ProcId,
    /// The session number on that daemon.
    pub session: u32,
    /// The session's name.
    pub name: Arc<str>,
}

impl MemberId {
    /// The session's private group, `#name#node`: a message to it reaches this session only.
    pub fn private_group(&self) -> String {
        limits::private_group(&self.name, self.daemon.node)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}#{:?}/{}", self.name, self.daemon, self.session)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A group view's identity; see the module docs. Ordered, and increasing at every session.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupViewId {
    /// The daemon view (transitional or regular) in whose context the view was made.
    pub view: ViewId,
    /// The smallest daemon of the lineage that made it.
    pub origin: ProcId,
    /// Membership events in that context before this one (0: the view change itself).
    pub seq: u32,
}

impl fmt::Debug for GroupViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}/{}", self.view, self.origin, self.seq)
    }
}

/// Why a group view changed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Reason {
    /// A session joined.
    Join,
    /// A session left.
    Leave,
    /// A session disconnected (it left all its groups).
    Disconnect,
    /// Daemons became unreachable (partition, crash) or reachable (merge).
    Network,
}

/// A group's membership as delivered to its local members.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GroupView {
    /// The group.
    pub group: String,
    /// Unique; the same id always comes with the same members.
    pub id: GroupViewId,
    /// Transitional (members that go on together after a network change, until the next regular
    /// view) or regular.
    pub kind: ViewKind,
    /// Sorted.
    pub members: Vec<MemberId>,
    /// Members not in the previous view of this group delivered here. Sorted.
    pub joined: Vec<MemberId>,
    /// Members of the previous view that are not in this one. Sorted.
    pub left: Vec<MemberId>,
    /// What caused it.
    pub reason: Reason,
}

/// Something a session must be told.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SessionEvent {
    /// A message to one of the session's groups or to its private group.
    Message {
        /// Who sent it.
        sender: MemberId,
        /// The groups it was sent to (as given by the sender, duplicates removed).
        groups: Arc<[String]>,
        /// Its service level.
        service: Service,
        /// Its content (a slice of the delivered buffer).
        payload: Bytes,
    },
    /// A new view of a group the session is a member of.
    Membership(Arc<GroupView>),
    /// The session's own `leave` took effect: it gets nothing more for this group.
    SelfLeave {
        /// The group it left.
        group: String,
    },
}

/// Something the driver must do, in order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DaemonOutput {
    /// Send a datagram (from the ring).
    Transmit {
        /// To whom.
        dest: Dest,
        /// The datagram.
        bytes: Bytes,
    },
    /// Hand an event to a session.
    Session {
        /// The session.
        sid: SessionId,
        /// The event.
        event: SessionEvent,
    },
    /// The ring installed a daemon view (for logs and monitoring; sessions see group views).
    DaemonView(View),
}

/// Checks that a delivered ring payload is a well-formed group-layer message (for fuzzing and
/// diagnostics); the daemon itself counts and drops malformed ones.
pub fn validate_payload(payload: &bytes::Bytes) -> Result<(), DecodeError> {
    codec::decode(payload).map(|_| ())
}
