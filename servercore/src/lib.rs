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

pub mod checkpoint;
mod core;
pub mod envelope;
pub mod membership;

pub use crate::core::{
    open_replica, CoreOptions, OpenError, Output, ReadError, ServerCore, ServerEvent, ServerStatus,
};
