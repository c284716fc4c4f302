//! Deterministic simulation of `gcs` daemons: virtual time, a seeded faulty network, checkers.

pub mod checkers;
pub mod history;
