//! What decoding a forged body allocates: a length field that claims 2^40 elements or bytes
//! in a body of a few dozen bytes must cost no more than the body, not what it claims. A test
//! binary of its own, since it counts every allocation of the process (one test, one thread).

mod common;

use common::{requests_with_a_length, with_u64_at, EMPTY_META, FIELDS};
use standby_client::proto::{ProtoError, Request, Response};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use storage::{Oid, Tid};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn claims_of_terabytes_allocate_next_to_nothing() {
    let invalidation = Response::Invalidation {
        tid: Tid(1),
        oids: vec![Oid::from_u64(1)],
    };
    let mut forged = Vec::new();
    for (q, at) in &requests_with_a_length() {
        forged.push((with_u64_at(&q.encode(1)[4..], *at, 1 << 40), true));
    }
    forged.push((
        with_u64_at(&invalidation.encode(1)[4..], FIELDS + 8, 1 << 40),
        false,
    ));
    for (body, is_request) in &forged {
        // Our sequences: at most 4 KiB preallocated.
        let used = allocated_to_refuse(body, *is_request);
        println!(
            "body of {} bytes claiming 2^40: {used} bytes allocated",
            body.len()
        );
        assert!(
            used < 16 << 10,
            "{used} bytes allocated to refuse a body of {} bytes",
            body.len()
        );
    }
    // The records of a transaction in an answer are storage's `Vec`: serde's own cap, 1 MiB.
    let txns = Response::Transactions {
        txns: vec![storage::Transaction::default()],
        more: false,
    };
    let body = with_u64_at(&txns.encode(1)[4..], FIELDS + 8 + 8 + EMPTY_META, 1 << 40);
    let used = allocated_to_refuse(&body, false);
    println!("transaction records claiming 2^40: {used} bytes allocated");
    assert!(used <= (1 << 20) + (16 << 10), "{used} bytes");
}

/// Bytes allocated while `body` is decoded and refused as truncated.
fn allocated_to_refuse(body: &[u8], is_request: bool) -> usize {
    {
        let region = Region::new(GLOBAL);
        let refused = if is_request {
            Request::decode(body).err()
        } else {
            Response::decode(body).err()
        };
        let used = region.change();
        assert_eq!(refused, Some(ProtoError::Truncated));
        used.bytes_allocated
    }
}
