//! What the simulator records of a run, per process, for the checkers.
//!
//! Each process (`ProcId`: a node incarnation) has its own log, in the order that process saw
//! things. The checkers only read this; they never look inside the daemons.

use gcs::{ProcId, Service, Time, View};
use std::collections::BTreeMap;

/// A multicast's identity in the simulator: the sending process and its own counter.
/// The simulator writes it into the payload, so a delivery names the message it carries.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct MsgId {
    /// The process that asked for the multicast.
    pub sender: ProcId,
    /// 0, 1, 2, ... per sender.
    pub n: u64,
}

/// One thing one process did or saw.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// The application asked its daemon to multicast `msg` (accepted by the daemon).
    Sent {
        /// Which message.
        msg: MsgId,
        /// Its service level.
        service: Service,
        /// Virtual time of the request.
        at: Time,
    },
    /// The daemon delivered a configuration change (regular or transitional) to the application.
    View {
        /// The configuration.
        view: View,
        /// Virtual time of the delivery.
        at: Time,
    },
    /// The daemon delivered a message to the application.
    Delivered {
        /// Which message the payload names (the sender claimed by the daemon is `msg.sender`).
        msg: MsgId,
        /// Service level the daemon reported.
        service: Service,
        /// Virtual time of the delivery.
        at: Time,
        /// False if the payload did not match what the sender sent (corrupt or spurious).
        payload_ok: bool,
    },
    /// The process crashed; nothing follows in its log.
    Crashed {
        /// Virtual time of the crash.
        at: Time,
    },
}

/// The whole run as the checkers see it.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every process that ever ran, with its log.
    pub procs: BTreeMap<ProcId, Vec<Event>>,
    /// From this time on the network is whole and calm and no process crashes or pauses, so the
    /// liveness properties are checked at `end`. `None`: the run never calmed (liveness unchecked).
    pub calm_from: Option<Time>,
    /// No multicast is requested at or after this time (lets the last ones drain before `end`).
    pub sends_until: Time,
    /// When the run stopped.
    pub end: Time,
}

impl History {
    /// True if `p` crashed at some point of the run.
    pub fn crashed(&self, p: ProcId) -> bool {
        self.procs
            .get(&p)
            .is_some_and(|log| log.iter().any(|e| matches!(e, Event::Crashed { .. })))
    }

    /// Processes that were still running at the end.
    pub fn live(&self) -> Vec<ProcId> {
        self.procs
            .keys()
            .copied()
            .filter(|p| !self.crashed(*p))
            .collect()
    }
}
