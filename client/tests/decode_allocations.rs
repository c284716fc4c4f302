//! What decoding a forged body allocates: a length field that claims 2^40 elements or bytes
//! in a body of a few dozen bytes must cost no more than the body, not what it claims. A test
//! binary of its own, since it counts every allocation of the process (one test, one thread).

use bytes::Bytes;
use standby_client::proto::{ProtoError, Request, Response};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use storage::{Oid, Record, Tid, TxnMeta};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn with_u64_at(b: &[u8], at: usize, v: u64) -> Vec<u8> {
    let mut b = b.to_vec();
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn claims_of_terabytes_allocate_next_to_nothing() {
    // Body offsets: version, id, variant, then the fields in order.
    let fields = 1 + 8 + 4;
    let commit = Request::Commit {
        client: 1,
        request: 2,
        meta: TxnMeta::default(),
        records: vec![Record {
            oid: Oid::from_u64(3),
            data: None,
            expected_serial: None,
        }],
    };
    let requests = [
        (
            Request::Hello {
                token: Bytes::from_static(b"t"),
            },
            fields,
        ),
        (commit, fields + 16 + 4 * 8),
        (
            Request::ChangeVoters {
                add: vec![(1, 1)],
                remove: vec![],
            },
            fields,
        ),
    ];
    let invalidation = Response::Invalidation {
        tid: Tid(1),
        oids: vec![Oid::from_u64(1)],
    };
    let mut forged = Vec::new();
    for (q, at) in &requests {
        forged.push((with_u64_at(&q.encode(1)[4..], *at, 1 << 40), true));
    }
    forged.push((
        with_u64_at(&invalidation.encode(1)[4..], fields + 8, 1 << 40),
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
    let body = with_u64_at(&txns.encode(1)[4..], fields + 8 + 8 + 4 * 8, 1 << 40);
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
