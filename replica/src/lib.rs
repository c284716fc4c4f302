//! Replication service: view-driven primary election over `gcs`, applying commits through
//! `storage`.
//!
//! [`Replica`] is a sans-IO state machine (see `replica/mod.rs` for its states): the shell feeds
//! it gcs views and deliveries and client requests and carries out its [`Output`]s. The
//! simulator (`sim`, command `replica`) and the server binary are its two shells.
//!
//! Rules, each enforced in one place:
//! - primary component = a strict majority of the vote weight, or exactly half with the lowest
//!   voter ([`voters::VoterSet::is_primary_component`]), under every voter configuration the
//!   view's members report (voters change through joint configurations, [`voters`]);
//! - the primary is the most up-to-date eligible member, sitting primary on ties
//!   ([`election::choose_primary`]), with an epoch above every promise
//!   ([`election::next_epoch`]), and acts only once every member durably promised it;
//! - commits carry the epoch; older epochs and other senders are refused;
//! - sync mode answers once servers with a majority of the vote hold the commit durably.

/// Every tid and epoch stays below this. Messages and stored state holding a larger one are
/// refused as malformed or corrupt, so that the next tid or epoch (`+ 1`) can always be
/// computed: no cluster gets near it (2^62 commits at ten million a second take 14,000 years).
pub const COUNTER_MAX: u64 = 1 << 62;

pub mod config;
pub mod election;
mod replica;
mod types;
pub mod voters;
pub mod wire;

pub use config::{
    CommitMode, ConfigError, GroupKind, RecoveryPolicy, ReplicaConfig, ServerId, ServerSpec,
};
pub use election::{Epoch, EpochStart, MemberState};
pub use replica::{
    client_of_oid, client_oid, client_request, encode_pack_order, is_reserved, lineage_oid,
    membership_oid, zeo_oids_oid, zeo_pack_oid, Replica, ReplicaStats, SwapError, ADDED_GROUP,
    RESERVED_OID_PREFIX,
};
pub use types::{
    CommitError, CommitRequest, Committed, Invalidation, LostReport, Output, ReqId, Role, RoleInfo,
    Staleness, TidChoice,
};
pub use voters::{voters_oid, VoterConfig, VoterSet};
