//! Spread-style group communication: a Totem single-ring protocol with Extended Virtual Synchrony.

mod types;

pub use types::{NodeId, ProcId, RingId, Service, Time, View, ViewId, ViewKind};
