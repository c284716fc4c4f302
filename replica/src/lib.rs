//! Replication service: view-driven primary election over `gcs`, applying commits through
//! `storage`.
//!
//! [`Replica`] is a sans-IO state machine (see `replica/mod.rs` for its states): the shell feeds
//! it gcs views and deliveries and client requests and carries out its [`Output`]s. The
//! simulator (`sim`, command `replica`) and the server binary are its two shells.
//!
//! Rules, each enforced in one place:
//! - primary component = a strict majority of the vote weight, or exactly half with the lowest
//!   voter ([`voters::VoterSet::is_primary_component`]), under the newest voter configuration
//!   the view's members report (voters change through joint configurations, [`voters`]);
//! - the primary is the most up-to-date eligible member, sitting primary on ties
//!   ([`election::choose_primary`]), with an epoch above every promise
//!   ([`election::next_epoch`]), and acts only once every member durably promised it;
//! - commits carry the epoch; older epochs and other senders are refused;
//! - sync mode answers once servers with a majority of the vote hold the commit durably.
//!
//! The steps themselves are documented where they run: the election in
//! `replica/election_round.rs`, the commit path in `replica/primary.rs` and
//! `replica/durability.rs`, the planned swap in `replica/swap.rs`, the recovery of a lagging
//! server in `replica/recovery.rs`, voter changes in `replica/voter_change.rs`.
//!
//! # Reserved objects
//!
//! Oids starting with [`RESERVED_OID_PREFIX`] (`0xFF`) are never a client's. The lineage
//! ([`lineage_oid`]), the client table ([`client_table_oid`], see [`clients`]) and the voter
//! configuration ([`voters_oid`]) are written only by the replica; so were the idempotency
//! records of the format before keys lived in transaction headers ([`client_oid`], still
//! read). The others belong to the shell, which keeps clients from writing
//! them: the membership of read replicas ([`membership_oid`]), the ZEO oid mark
//! ([`zeo_oids_oid`]), ZEO pack orders ([`zeo_pack_oid`]; every server runs
//! `Storage::pack_gc` as it applies one) and ZEO undo backpointers.
//!
//! # Where each property is enforced and checked
//!
//! The checkers are the simulator's (`sim/src/replica/checkers/`), run on every seed.
//!
//! | property | enforced in | checked by |
//! |---|---|---|
//! | at most one primary per epoch, only in a primary component, never a remote server | `is_primary_component`, `choose_primary`, the promise round (`on_promise`) | `single_primary`, `acks_from_primary` |
//! | two primaries acting at once were elected by components sharing a server, while voters change | every reported configuration must agree ([`voters::VoterSet::is_primary_component`]), joint configurations (`voter_change.rs`) | `disjoint_primaries` |
//! | epochs only grow | `next_epoch`, the durable promise (`promise`) | `epochs_grow` |
//! | every history is a prefix of the lineage, apart from reported losses | the epoch fence at delivery (`on_commit`), `apply(prev, …)`, `common_prefix` and truncation | `prefix_agreement` |
//! | sync: no acknowledged commit lost | `release_acks` (delivered in the regular view, applied here, a majority's `Applied` of the current epoch) | `acked_durable` |
//! | async: loss bounded by the window, and reported | `async_window_open`, `truncate`, `install_checkpoint` | `acked_durable` |
//! | a retried commit is applied once | the client table (keys from transaction headers, [`clients`]) and the in-flight keys in `primary_commit` | `idempotent_once` |
//! | reads never go backwards | the store is only applied to; losses are reported before reads see them | `reads_monotone` |
//! | clients see no errors but conflicts | redirects, holds, `Retry` | `client_errors` |
//! | after healing: one primary, everyone at its last tid | an election in every regular view, recovery | `convergence` |
//!
//! # Words
//!
//! - **tid**: a transaction id, strictly increasing along the primary lineage.
//! - **epoch**: a primary's term; **promise**: a server's durable word to refuse older epochs.
//! - **lineage**: the list of `(epoch, base tid)` a store's transactions came from, kept in a
//!   reserved object; two stores agree up to the [`election::common_prefix`] of their lineages.
//! - **primary component**: a view holding a majority of the vote weight (of every voter
//!   configuration its members report).
//! - **donor**: the server a lagging one recovers from.

/// Every tid and epoch stays below this. Messages and stored state holding a larger one are
/// refused as malformed or corrupt, so that the next tid or epoch (`+ 1`) can always be
/// computed: no cluster gets near it (2^62 commits at ten million a second take 14,000 years).
pub const COUNTER_MAX: u64 = 1 << 62;

pub mod clients;
pub mod config;
pub mod election;
mod replica;
mod types;
pub mod voters;
pub mod wire;

pub use clients::{client_table_oid, read_client_table, ClientTable};
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
