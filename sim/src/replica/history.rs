//! What the replica simulator records of a run, for the replica checkers.

use gcs::Time;
use replica::{CommitMode, Epoch, Role, ServerId};
use std::collections::BTreeMap;
use storage::Tid;

/// One thing a server or client did or saw, in global time order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum REvent {
    /// A server's role changed.
    Role {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
        /// Its new role.
        role: Role,
        /// The working primary it knows of.
        primary: Option<(ServerId, Epoch)>,
        /// Its durable promise at that moment.
        promised: Epoch,
        /// Whether its current regular view is a primary component.
        in_primary_component: bool,
    },
    /// A server applied transaction `tid` (its content digest, and the idempotency key it
    /// carries).
    Applied {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
        /// The transaction.
        tid: Tid,
        /// Digest of its records.
        digest: u64,
    },
    /// A server moved transactions to its lost archive.
    Lost {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
        /// The tids moved.
        tids: Vec<Tid>,
    },
    /// A client was told its commit succeeded.
    Ack {
        /// When (at the server).
        at: Time,
        /// The answering server.
        server: ServerId,
        /// The client.
        client: u64,
        /// Its request number.
        request: u64,
        /// The tid it was told.
        tid: Tid,
        /// The epoch it was told.
        epoch: Epoch,
    },
    /// A client read at a server whose last transaction was `tid`.
    Read {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
        /// Its last transaction at the read.
        tid: Tid,
    },
    /// A server became primary of `epoch`, elected by the members of `component` (its
    /// view's servers), of which `weighted` vote under the configuration it was elected under
    /// (either set of a joint one): read replicas and spares elect nothing.
    Elected {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
        /// Its epoch.
        epoch: Epoch,
        /// The servers of its view.
        component: Vec<ServerId>,
        /// Those of them with a vote.
        weighted: Vec<ServerId>,
    },
    /// A server stopped acting: crashed, lost its disk, or froze (it acts again only after
    /// a new role).
    Stopped {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
    },
    /// A server lost its disk (it comes back empty).
    Wiped {
        /// When.
        at: Time,
        /// Which server.
        server: ServerId,
    },
    /// A client got a final error (not a redirect or a retry).
    Failed {
        /// When.
        at: Time,
        /// The client.
        client: u64,
        /// Its request number.
        request: u64,
        /// The error.
        error: String,
    },
}

/// A server's store at the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalStore {
    /// Whether the server was running at the end.
    pub running: bool,
    /// Its role at the end.
    pub role: Option<Role>,
    /// Its last transaction.
    pub last: Tid,
    /// Its horizon (transactions at or below are not all present).
    pub horizon: Tid,
    /// Its transactions after the horizon: digest and idempotency key.
    pub txns: BTreeMap<Tid, (u64, Option<(u64, u64)>)>,
    /// Digest of its current object states (equal on converged servers, however recovered).
    pub state_digest: u64,
    /// Outside the cluster at the end (removed from the address book, or never added): not
    /// expected to run or converge.
    pub outside: bool,
    /// Removed from the cluster, as the final primary's membership says (see
    /// `prefix_agreement`).
    pub removed: bool,
}

/// Everything the checkers read.
#[derive(Clone, Debug)]
pub struct RHistory {
    /// Events in time order.
    pub events: Vec<REvent>,
    /// Final stores, by server.
    pub finals: BTreeMap<ServerId, FinalStore>,
    /// The commit mode of the run.
    pub mode: CommitMode,
    /// When the network healed for good.
    pub calm_from: Time,
    /// When the workload stopped sending.
    pub sends_until: Time,
    /// End of the run.
    pub end: Time,
    /// Servers that may become primary (voters, and the spares a voter change may make
    /// voters).
    pub eligible: Vec<ServerId>,
}

impl RHistory {
    /// An empty history.
    pub fn new(mode: CommitMode) -> RHistory {
        RHistory {
            events: Vec::new(),
            finals: BTreeMap::new(),
            mode,
            calm_from: Time::ZERO,
            sends_until: Time::ZERO,
            end: Time::ZERO,
            eligible: Vec::new(),
        }
    }
}
