//! Forged bodies for the decoding tests: messages with the offset of a length field (a count
//! of elements or bytes) in their body, to claim far more than the body holds.

use bytes::Bytes;
use standby_client::proto::Request;
use storage::{Oid, Record, TxnMeta};

/// Body offsets: version, id, variant, then the fields in order.
pub(crate) const FIELDS: usize = 1 + 8 + 4;

/// An empty `TxnMeta`: three lengths, the time and the request key's tag (none).
pub(crate) const EMPTY_META: usize = 4 * 8 + 1;

/// `b` with the eight bytes at `at` (a length or a count) replaced by `v`.
pub(crate) fn with_u64_at(b: &[u8], at: usize, v: u64) -> Vec<u8> {
    let mut b = b.to_vec();
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    b
}

/// Requests, each with the offset of a length field in its body: a token's, the first
/// record's oid's, the voters to add.
pub(crate) fn requests_with_a_length() -> [(Request, usize); 3] {
    [
        (
            Request::Hello {
                token: Bytes::from_static(b"t"),
            },
            FIELDS,
        ),
        (
            Request::Commit {
                client: 1,
                request: 2,
                meta: TxnMeta::default(),
                records: vec![Record {
                    oid: Oid::from_u64(3),
                    data: None,
                    expected_serial: None,
                }],
            },
            FIELDS + 16 + EMPTY_META,
        ),
        (
            Request::ChangeVoters {
                add: vec![(1, 1)],
                remove: vec![],
            },
            FIELDS,
        ),
    ]
}
