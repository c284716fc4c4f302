//! Spread-style group communication: a Totem single-ring protocol with Extended Virtual
//! Synchrony, as a sans-IO state machine.
//!
//! A [`Node`] is one daemon. It is fed datagrams, timer expiries and multicast requests, each with
//! the current time, and it answers with datagrams to send, messages and views to deliver, and the
//! next deadline. See [`node`] for the driving loop, `ARCHITECTURE.md` for the protocol.
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
