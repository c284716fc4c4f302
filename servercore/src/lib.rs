//! One storage server as a single sans-IO state machine: the gcs [`Node`](gcs::Node), the
//! [`Replica`](replica::Replica) and the protocols between servers that are neither (the
//! checkpoint transfer, the membership of read replicas, the retry of multicasts the node had
//! no room for), wired together once.
//!
//! ```text
//!   datagram / timer ──►┌──────────────┐──► Transmit (datagrams to send)
//!   commit, swap,       │  ServerCore  │──► Reply { id } (a commit's or a change's answer)
//!   membership change ─►│ Node+Replica │──► Event (role, invalidation, durable, lost, ...)
//!   checkpoint report ─►└──────────────┘──► Checkpoint(command) (file work to execute)
//!                                       ──► Peers (the address book changed)
//! ```
//!
//! Inputs carry `now`; the core holds no socket, clock, thread, channel or file. Two shells
//! drive it: `server` (the tokio driver, which executes checkpoint commands on files and
//! answers requests through channels) and `sim` (virtual time, checkpoint files simulated
//! over store snapshots, the messages real). What runs in production is what the simulator
//! runs.
//!
//! How to drive it: after every input, drain [`ServerCore::poll_output`] until `None`,
//! executing each output in order (a checkpoint command's report is itself an input, which
//! may be given at once or later); then sleep until [`ServerCore::poll_deadline`] and call
//! [`ServerCore::handle_timeout`].
//!
//! # Inputs and outputs
//!
//! Every input carries `now`. Inputs: a datagram ([`ServerCore::handle_packet`]), a timer
//! ([`ServerCore::handle_timeout`]), requests that carry an id and are answered later by
//! `Reply { id }` (commit, membership change, voter change), calls answered at once (swap,
//! readdress, read, status), and the reports of checkpoint commands (`checkpoint_made`,
//! `checkpoint_served`, `checkpoint_ready`, `transfer_failed`). Outputs ([`Output`]): datagrams, a
//! new address book (`Peers`), events for the application ([`ServerEvent`]: role, claim,
//! invalidation, durable point, loss, a needed checkpoint, membership), replies by id, and
//! checkpoint commands ([`checkpoint::CheckpointCommand`]: make and discard on the donor;
//! prepare, fetch and abandon on the recipient; the files go between the shells, not
//! through the ring). [`open_replica`] is how a server starts
//! over its store; a store that cannot take a synced write is refused before anything else.
//!
//! # What the core adds to the replica under faults
//!
//! - A replica that goes `Down` (its store failed) gets its node fed nothing more, so the other
//!   servers see it leave and elect without it; `standby-server` then exits 75 for its
//!   supervisor. A server that applies the membership object naming it removed leaves the ring
//!   the same way, for good (`ServerCore::is_removed`; `standby-server` exits 0), and the
//!   others' nodes fail it at once in every membership round (see [`membership`]).
//! - A primary claims to be primary (status, `/primary`, the role pushed to clients) only while
//!   its node had the token within half the token timeout; the others need a whole token
//!   timeout and a membership round to elect someone else, so two claims never overlap. After
//!   a lapse it claims again only once the token went round twice or a new view elected it. A
//!   server that has not had the token lately names no primary.
//! - `Staleness::behind_for` is the time since the last token visit at which the replica was
//!   current (zero while it is).
//! - The configured servers' addresses can change under it: `readdress` (which `standby-server`
//!   calls every 10 s with freshly resolved host names) updates the address book.

pub mod checkpoint;
mod core;
pub mod envelope;
pub mod membership;

pub use crate::core::{
    open_replica, CoreOptions, OpenError, Output, ReadError, ServerCore, ServerEvent, ServerStatus,
};
