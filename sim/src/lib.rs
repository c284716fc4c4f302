//! Deterministic simulation of `gcs` daemons ([`cluster`], command `gcs`), of storage servers
//! ([`replica`], command `replica`) and of named groups with client sessions ([`groups`],
//! command `groups`): virtual time, a seeded faulty network, checkers. All run the production
//! cores unmodified, on one framework, [`world`]: the event loop, the network and its faults,
//! the hosts' lifecycle, the trace and the digest are its; each mode is an [`world::App`] that
//! says what runs on a host and records the history its checkers judge.
//!
//! Everything in a run derives from one `u64` seed: the fault mix ([`options::Options::swarm`]),
//! the scenario ([`cluster::Cluster::plan_swarm`]) and every network decision. The same seed gives
//! the same history, byte for byte, so any failure replays with `--seed N --trace`.

pub mod checkers;
pub mod cluster;
pub mod faults;
pub mod groups;
pub mod history;
mod host;
pub mod options;
pub mod prng;
pub mod queue;
pub mod replica;
pub mod run;
pub mod world;
