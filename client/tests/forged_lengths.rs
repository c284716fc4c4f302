//! Length fields claiming up to 2^64 elements or bytes in bodies of a few dozen bytes, read by
//! the client protocol's decoder. (What such a refusal allocates: `decode_allocations.rs`.)

mod common;

use common::{requests_with_a_length, with_u64_at, EMPTY_META, FIELDS};
use standby_client::proto::{ErrorKind, ProtoError, Request, Response};
use storage::{Tid, Transaction, TxnMeta};

/// Length fields claiming up to 2^64 elements or bytes, in frames of a few dozen bytes:
/// refused as truncated, at once, without allocating for the claim (strings and bytes are
/// checked against the bytes left before they are read; sequences preallocate at most
/// 4 KiB, see `capped` in `proto.rs`).
#[test]
// The clock only bounds how long the refusals take.
#[allow(clippy::disallowed_methods)]
fn lengths_claiming_terabytes_are_refused_quickly() {
    let requests = requests_with_a_length();
    let responses = [
        (
            Response::Transactions {
                txns: vec![Transaction {
                    tid: Tid(1),
                    meta: TxnMeta::default(),
                    records: vec![],
                }],
                more: false,
            },
            FIELDS,
        ),
        // The records of the first transaction (storage's `Vec`, serde's 1 MiB cap).
        (
            Response::Transactions {
                txns: vec![Transaction::default()],
                more: false,
            },
            FIELDS + 8 + 8 + EMPTY_META,
        ),
        (Response::Revisions(vec![]), FIELDS),
        (
            Response::Invalidation {
                tid: Tid(1),
                oids: vec![],
            },
            FIELDS + 8,
        ),
        (Response::Topology { servers: vec![] }, FIELDS),
        (
            Response::Error {
                kind: ErrorKind::Internal,
                message: "m".into(),
            },
            FIELDS + 4,
        ),
    ];
    let mut forged_requests = Vec::new();
    let mut forged_responses = Vec::new();
    for claim in [1 << 40, 1 << 62, u64::MAX] {
        for (q, at) in &requests {
            forged_requests.push(with_u64_at(&q.encode(1)[4..], *at, claim));
        }
        for (p, at) in &responses {
            forged_responses.push(with_u64_at(&p.encode(1)[4..], *at, claim));
        }
    }
    // The claims are where the offsets say: with the count put back, each decodes.
    for (q, at) in &requests {
        let b = q.encode(1)[4..].to_vec();
        let n = u64::from_le_bytes(b[*at..*at + 8].try_into().unwrap());
        assert_eq!(
            Request::decode(&with_u64_at(&b, *at, n)),
            Ok((1, q.clone()))
        );
        assert!(n <= 1, "{q:?}: offset {at} holds {n}");
    }
    for (p, at) in &responses {
        let b = p.encode(1)[4..].to_vec();
        let n = u64::from_le_bytes(b[*at..*at + 8].try_into().unwrap());
        assert!(n <= 1, "{p:?}: offset {at} holds {n}");
    }
    let start = std::time::Instant::now();
    for _ in 0..100 {
        for b in &forged_requests {
            assert_eq!(Request::decode(b), Err(ProtoError::Truncated), "{b:?}");
        }
        for b in &forged_responses {
            assert_eq!(Response::decode(b), Err(ProtoError::Truncated), "{b:?}");
        }
    }
    let took = start.elapsed();
    // Milliseconds in a debug build; the bound leaves room for a loaded machine.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}
