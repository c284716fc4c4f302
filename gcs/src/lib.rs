//! Spread-style group communication: a Totem single-ring protocol with Extended Virtual
//! Synchrony, as a sans-IO state machine.
//!
//! A [`Node`] is one daemon. It is fed datagrams, timer expiries and multicast requests, each with
//! the current time, and it answers with datagrams to send, messages and views to deliver, and the
//! next deadline. See [`node`] for the driving loop; the ordering protocol (the token and the
//! delivery rule) is described in `ring.rs`, membership and view installation in
//! `membership.rs`.
//!
//! Guarantees (Extended Virtual Synchrony, Moser et al. 1994), for the processes of a view:
//! - every configuration change is delivered as a transitional view (the members coming from the
//!   same previous regular view) followed by the new regular view; view ids are unique and
//!   increase at every process;
//! - processes that go through the same two consecutive views delivered the same messages in the
//!   first (failure atomicity);
//! - messages are delivered in one total order (AGREED, and every weaker service with it);
//!   SAFE messages only once every member of the view has them;
//! - a process delivers its own messages unless it crashes.
//!
//! # Where each guarantee is enforced
//!
//! Each row names the simulator checker (`sim::checkers`) that tests it on every run.
//!
//! | property (checker) | enforced by |
//! |---|---|
//! | view ids unique and increasing (`view_ids_unique`, `view_ids_ordered`) | a new ring's seq is one above the highest any member had seen, and the representative is part of the id; a transitional view carries the id of the regular view it leads into and sorts before it |
//! | transitional view = members coming from the same regular view (`transitional_semantics`) | `enter_recovery`: the members whose commit-token entry names our previous ring |
//! | failure atomicity (`failure_atomicity`) | recovery gives every member of a transitional set the same old-ring packets (once in recovery, old-ring data counts only as re-wrapped copies), and `install` walks them by the same rule everywhere |
//! | delivered in the sending view or its transitional view (`same_view_delivery`) | `install`: up to the highest seq any transitional member delivered, and agreed packets before the first hole or first unconfirmed safe packet, in the old regular view; the rest after the transitional view |
//! | causal and FIFO order (`causal_order`, `fifo_order`) | the total order; after a hole, packets of senders outside the transitional set are skipped (they may depend on the missing one) |
//! | agreed order (`agreed_order`) | one `seq` per packet; delivery in a regular view never crosses a gap |
//! | safe delivery (`safe_delivery`) | the two-sighting `aru` rule; at a view change, unconfirmed safe packets go to the transitional view |
//! | self delivery (`self_delivery`) | the sender keeps its own packets; a message whose fragments were cut by a ring break is sent again whole in the new ring, and incomplete messages are dropped at every view change |
//! | no duplicates, nothing spurious (`no_duplicate_delivery`, `no_spurious_delivery`) | the receive window by seq; reassembly per sender with offset checks |
//! | liveness (`liveness`) | token loss, consensus timeout, merge detection; checked after the simulator's calm phase |
//!
//! # Words
//!
//! - **ring**: processes passing one token; its **representative** is its smallest member.
//! - **seq**: a packet's place in its ring's total order; **aru**: all received up to.
//! - **view** (configuration): what the application is told about membership. **Regular**: a
//!   ring that finished recovery. **Transitional**: the members of the new ring that came from
//!   the same previous regular view.
//! - **incarnation**: one run of a daemon ([`ProcId`] = node + incarnation); a restart is a
//!   new process.
//! - **hole**: an old-ring packet that no member of the transitional set holds.

pub mod bincode_slice;
mod config;
pub mod crypto;
pub mod groups;
mod membership;
#[cfg(feature = "net")]
pub mod net;
pub mod node;
mod ring;
mod timer;
mod types;
pub mod wire;

pub use config::{Config, ConfigError};
pub use crypto::{ClusterKey, CryptoError, CryptoStats, KeyFileError, KeyId, PacketSecurity};
pub use groups::{
    Daemon, DaemonOutput, GroupError, GroupStats, GroupView, GroupViewId, Limits, MemberId, Reason,
    SessionEvent, SessionId,
};
pub use node::{Delivery, Dest, Input, Node, Output, Phase, Stats, SubmitError};
pub use types::{NodeId, ProcId, RingId, Service, Time, View, ViewId, ViewKind};
pub use wire::WireError;
