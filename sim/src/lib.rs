//! Deterministic simulation of `gcs` daemons ([`cluster`], command `gcs`) and of storage
//! servers ([`replica`], command `replica`): virtual time, a seeded faulty network, checkers.
//! Both run the production cores unmodified.
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
