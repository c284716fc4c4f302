//! Test support, public so that other crates (the simulator, the replica) can reuse it:
//! - [`suite`]: the conformance suite every backend must pass;
//! - [`model`]: a plain, obviously-correct model of the [`crate::Storage`] semantics, for
//!   model-based tests.

pub mod model;
pub mod suite;
