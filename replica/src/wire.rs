//! The messages storage servers multicast to each other through the ring, and their encoding.
//! Decoding never panics: a malformed message is a [`WireError`] and is dropped by the caller.

use crate::config::ServerId;
use crate::election::{Epoch, EpochStart, MemberState, LINEAGE_MAX};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use storage::{Oid, Record, Revision, Tid, Transaction, TxnMeta};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// It ends before a field does.
    #[error("truncated message")]
    Truncated,
    /// An unknown message kind or enum value.
    #[error("unknown tag {0}")]
    BadTag(u8),
    /// A field that breaks a rule (an oid too long, too many entries).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// What a recovering server asks its donor for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchReq {
    /// Whole transactions with a tid in `(after, until]` (`until: None`: to the donor's end).
    Txns {
        /// Exclusive start.
        after: Tid,
        /// Inclusive stop.
        until: Option<Tid>,
    },
    /// The newest revision of each object changed after `since`, oids after `after_oid`.
    Objects {
        /// The recipient's last transaction.
        since: Tid,
        /// Where the previous chunk stopped.
        after_oid: Option<Oid>,
    },
}

/// One piece of a recovery stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkBody {
    /// Transactions in order, each with its predecessor in the donor's history.
    Txns {
        /// `(prev, txn)` pairs.
        txns: Vec<(Tid, Transaction)>,
        /// Nothing more in the requested range (as of the donor's last transaction).
        done: bool,
    },
    /// Revisions in oid order, consistent at `consistent_at`.
    Objects {
        /// The donor's last transaction when it read them.
        consistent_at: Tid,
        /// The donor's lineage at `consistent_at`: which history the revisions come from,
        /// so a fill resumed from another donor can tell whether it continues the same one.
        lineage: Vec<EpochStart>,
        /// The revisions.
        revisions: Vec<Revision>,
        /// The object stream is exhausted.
        done: bool,
    },
    /// The donor cannot serve the range: its history starts after `horizon`.
    Unavailable {
        /// The donor's horizon.
        horizon: Tid,
    },
}

/// A message between storage servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// A member's state, at the start of every regular view of a primary component.
    State(MemberState),
    /// `server` durably promised `epoch`: it will refuse commits of older epochs.
    Promise {
        /// Who.
        server: ServerId,
        /// What.
        epoch: Epoch,
    },
    /// A transaction from the primary of `epoch`, following `prev` in its history.
    Commit {
        /// The primary's epoch (fencing).
        epoch: Epoch,
        /// The previous transaction in the lineage.
        prev: Tid,
        /// The transaction.
        txn: Transaction,
    },
    /// `server` holds the lineage of the primary of `epoch` durably up to `tid`.
    Applied {
        /// Who.
        server: ServerId,
        /// The primary whose lineage it follows.
        epoch: Epoch,
        /// Up to where.
        tid: Tid,
    },
    /// An operator asks that `to` become primary (planned swap).
    SwapRequest {
        /// The epoch the request is about; ignored once another primary took over.
        epoch: Epoch,
        /// The new primary.
        to: ServerId,
    },
    /// The primary of `epoch` has stopped writing after `last` and hands over to `to`.
    Handover {
        /// The old primary's epoch.
        epoch: Epoch,
        /// The new primary.
        to: ServerId,
        /// The old primary's last assigned tid.
        last: Tid,
    },
    /// Recovery request from `from` to `donor`.
    Fetch {
        /// The recipient.
        from: ServerId,
        /// The server asked.
        donor: ServerId,
        /// Echoed in the chunks, so that a stale stream is told from the current one.
        fetch_id: u64,
        /// Chunks the donor may send before the next request (the window).
        chunks: u32,
        /// What.
        req: FetchReq,
    },
    /// Recovery data for `to`.
    Chunk {
        /// The recipient.
        to: ServerId,
        /// The request it answers.
        fetch_id: u64,
        /// The data.
        body: ChunkBody,
    },
    /// `server` moved transactions the primary lineage never had into its lost archive.
    Lost {
        /// Who.
        server: ServerId,
        /// Where its history parted from the primary's.
        truncated_after: Tid,
        /// The tids moved.
        tids: Vec<Tid>,
        /// The objects they wrote (caches must drop them).
        oids: Vec<Oid>,
    },
}

const T_STATE: u8 = 1;
const T_PROMISE: u8 = 2;
const T_COMMIT: u8 = 3;
const T_APPLIED: u8 = 4;
const T_SWAP: u8 = 5;
const T_HANDOVER: u8 = 6;
const T_FETCH: u8 = 7;
const T_CHUNK: u8 = 8;
const T_LOST: u8 = 9;

/// Format version, first byte of every message: a server refuses messages of another format.
pub const WIRE_VERSION: u8 = 1;

impl Msg {
    /// Encodes the message.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(WIRE_VERSION);
        match self {
            Msg::State(s) => {
                b.put_u8(T_STATE);
                b.put_u32(s.server);
                b.put_u64(s.promised.0);
                b.put_u64(s.last_tid.0);
                put_lineage(&mut b, &s.lineage);
                put_opt_u64(&mut b, s.primary_in.map(|e| e.0));
                b.put_u8(s.consistent as u8);
                b.put_u8(s.voter as u8);
                crate::voters::put_config(&mut b, &s.config);
            }
            Msg::Promise { server, epoch } => {
                b.put_u8(T_PROMISE);
                b.put_u32(*server);
                b.put_u64(epoch.0);
            }
            Msg::Commit { epoch, prev, txn } => {
                b.put_u8(T_COMMIT);
                b.put_u64(epoch.0);
                b.put_u64(prev.0);
                put_txn(&mut b, txn);
            }
            Msg::Applied { server, epoch, tid } => {
                b.put_u8(T_APPLIED);
                b.put_u32(*server);
                b.put_u64(epoch.0);
                b.put_u64(tid.0);
            }
            Msg::SwapRequest { epoch, to } => {
                b.put_u8(T_SWAP);
                b.put_u64(epoch.0);
                b.put_u32(*to);
            }
            Msg::Handover { epoch, to, last } => {
                b.put_u8(T_HANDOVER);
                b.put_u64(epoch.0);
                b.put_u32(*to);
                b.put_u64(last.0);
            }
            Msg::Fetch {
                from,
                donor,
                fetch_id,
                chunks,
                req,
            } => {
                b.put_u8(T_FETCH);
                b.put_u32(*from);
                b.put_u32(*donor);
                b.put_u64(*fetch_id);
                b.put_u32(*chunks);
                match req {
                    FetchReq::Txns { after, until } => {
                        b.put_u8(0);
                        b.put_u64(after.0);
                        put_opt_u64(&mut b, until.map(|t| t.0));
                    }
                    FetchReq::Objects { since, after_oid } => {
                        b.put_u8(1);
                        b.put_u64(since.0);
                        match after_oid {
                            None => b.put_u8(0),
                            Some(o) => {
                                b.put_u8(1);
                                put_bytes(&mut b, o.as_bytes());
                            }
                        }
                    }
                }
            }
            Msg::Chunk { to, fetch_id, body } => {
                b.put_u8(T_CHUNK);
                b.put_u32(*to);
                b.put_u64(*fetch_id);
                match body {
                    ChunkBody::Txns { txns, done } => {
                        b.put_u8(0);
                        b.put_u8(*done as u8);
                        b.put_u32(txns.len() as u32);
                        for (prev, t) in txns {
                            b.put_u64(prev.0);
                            put_txn(&mut b, t);
                        }
                    }
                    ChunkBody::Objects {
                        consistent_at,
                        lineage,
                        revisions,
                        done,
                    } => {
                        b.put_u8(1);
                        b.put_u8(*done as u8);
                        b.put_u64(consistent_at.0);
                        put_lineage(&mut b, lineage);
                        b.put_u32(revisions.len() as u32);
                        for r in revisions {
                            put_bytes(&mut b, r.oid.as_bytes());
                            b.put_u64(r.tid.0);
                            put_opt_bytes(&mut b, r.data.as_deref());
                        }
                    }
                    ChunkBody::Unavailable { horizon } => {
                        b.put_u8(2);
                        b.put_u64(horizon.0);
                    }
                }
            }
            Msg::Lost {
                server,
                truncated_after,
                tids,
                oids,
            } => {
                b.put_u8(T_LOST);
                b.put_u32(*server);
                b.put_u64(truncated_after.0);
                b.put_u32(tids.len() as u32);
                for t in tids {
                    b.put_u64(t.0);
                }
                b.put_u32(oids.len() as u32);
                for o in oids {
                    put_bytes(&mut b, o.as_bytes());
                }
            }
        }
        b.freeze()
    }

    /// Decodes a message.
    pub fn decode(mut p: &[u8]) -> Result<Msg, WireError> {
        let r = &mut p;
        let v = get_u8(r)?;
        if v != WIRE_VERSION {
            return Err(WireError::Invalid("unknown format version"));
        }
        let m = match get_u8(r)? {
            T_STATE => {
                let server = get_u32(r)?;
                let promised = get_epoch(r)?;
                let last_tid = get_tid(r)?;
                let lineage = get_lineage(r)?;
                let primary_in = get_opt_u64(r)?
                    .map(|e| counter(e, "epoch out of range").map(Epoch))
                    .transpose()?;
                let consistent = get_bool(r)?;
                let voter = get_bool(r)?;
                let config = crate::voters::get_config(r)
                    .ok_or(WireError::Invalid("voter configuration"))?;
                Msg::State(MemberState {
                    server,
                    promised,
                    last_tid,
                    lineage,
                    primary_in,
                    consistent,
                    voter,
                    config,
                })
            }
            T_PROMISE => Msg::Promise {
                server: get_u32(r)?,
                epoch: get_epoch(r)?,
            },
            T_COMMIT => Msg::Commit {
                epoch: get_epoch(r)?,
                prev: get_tid(r)?,
                txn: get_txn(r)?,
            },
            T_APPLIED => Msg::Applied {
                server: get_u32(r)?,
                epoch: get_epoch(r)?,
                tid: get_tid(r)?,
            },
            T_SWAP => Msg::SwapRequest {
                epoch: get_epoch(r)?,
                to: get_u32(r)?,
            },
            T_HANDOVER => Msg::Handover {
                epoch: get_epoch(r)?,
                to: get_u32(r)?,
                last: get_tid(r)?,
            },
            T_FETCH => {
                let from = get_u32(r)?;
                let donor = get_u32(r)?;
                let fetch_id = get_u64(r)?;
                let chunks = get_u32(r)?;
                let req = match get_u8(r)? {
                    0 => FetchReq::Txns {
                        after: get_tid(r)?,
                        until: get_opt_u64(r)?
                            .map(|t| counter(t, "tid out of range").map(Tid))
                            .transpose()?,
                    },
                    1 => FetchReq::Objects {
                        since: get_tid(r)?,
                        after_oid: match get_u8(r)? {
                            0 => None,
                            1 => Some(get_oid(r)?),
                            t => return Err(WireError::BadTag(t)),
                        },
                    },
                    t => return Err(WireError::BadTag(t)),
                };
                Msg::Fetch {
                    from,
                    donor,
                    fetch_id,
                    chunks,
                    req,
                }
            }
            T_CHUNK => {
                let to = get_u32(r)?;
                let fetch_id = get_u64(r)?;
                let body = match get_u8(r)? {
                    0 => {
                        let done = get_bool(r)?;
                        let n = get_count(r, 8 + 30)?;
                        let mut txns = Vec::with_capacity(n);
                        for _ in 0..n {
                            let prev = get_tid(r)?;
                            txns.push((prev, get_txn(r)?));
                        }
                        ChunkBody::Txns { txns, done }
                    }
                    1 => {
                        let done = get_bool(r)?;
                        let consistent_at = get_tid(r)?;
                        let lineage = get_lineage(r)?;
                        let n = get_count(r, 13)?;
                        let mut revisions = Vec::with_capacity(n);
                        for _ in 0..n {
                            revisions.push(Revision {
                                oid: get_oid(r)?,
                                tid: get_tid(r)?,
                                data: get_opt_bytes(r)?,
                            });
                        }
                        ChunkBody::Objects {
                            consistent_at,
                            lineage,
                            revisions,
                            done,
                        }
                    }
                    2 => ChunkBody::Unavailable {
                        horizon: get_tid(r)?,
                    },
                    t => return Err(WireError::BadTag(t)),
                };
                Msg::Chunk { to, fetch_id, body }
            }
            T_LOST => {
                let server = get_u32(r)?;
                let truncated_after = get_tid(r)?;
                let n = get_count(r, 8)?;
                let mut tids = Vec::with_capacity(n);
                for _ in 0..n {
                    tids.push(get_tid(r)?);
                }
                let n = get_count(r, 4)?;
                let mut oids = Vec::with_capacity(n);
                for _ in 0..n {
                    oids.push(get_oid(r)?);
                }
                Msg::Lost {
                    server,
                    truncated_after,
                    tids,
                    oids,
                }
            }
            t => return Err(WireError::BadTag(t)),
        };
        if !r.is_empty() {
            return Err(WireError::Trailing(r.len()));
        }
        Ok(m)
    }
}

fn put_opt_u64(b: &mut BytesMut, v: Option<u64>) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            b.put_u64(v);
        }
    }
}

fn put_lineage(b: &mut BytesMut, lineage: &[EpochStart]) {
    b.put_u32(lineage.len() as u32);
    for e in lineage {
        b.put_u64(e.epoch.0);
        b.put_u64(e.base.0);
    }
}

fn get_lineage(r: &mut &[u8]) -> Result<Vec<EpochStart>, WireError> {
    let n = get_count(r, 16)?;
    if n > LINEAGE_MAX {
        return Err(WireError::Invalid("lineage too long"));
    }
    let mut lineage = Vec::with_capacity(n);
    for _ in 0..n {
        lineage.push(EpochStart {
            epoch: get_epoch(r)?,
            base: get_tid(r)?,
        });
    }
    Ok(lineage)
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

fn put_opt_bytes(b: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            put_bytes(b, v);
        }
    }
}

/// Encodes a transaction (serials are not sent: replicas apply without checking them).
pub(crate) fn put_txn(b: &mut BytesMut, t: &Transaction) {
    b.put_u64(t.tid.0);
    put_bytes(b, &t.meta.user);
    put_bytes(b, &t.meta.description);
    put_bytes(b, &t.meta.extension);
    b.put_u64(t.meta.time);
    b.put_u32(t.records.len() as u32);
    for r in &t.records {
        put_bytes(b, r.oid.as_bytes());
        put_opt_bytes(b, r.data.as_deref());
    }
}

fn need(r: &[u8], n: usize) -> Result<(), WireError> {
    if r.len() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(r: &mut &[u8]) -> Result<u8, WireError> {
    need(r, 1)?;
    Ok(r.get_u8())
}

fn get_bool(r: &mut &[u8]) -> Result<bool, WireError> {
    match get_u8(r)? {
        0 => Ok(false),
        1 => Ok(true),
        t => Err(WireError::BadTag(t)),
    }
}

fn get_u32(r: &mut &[u8]) -> Result<u32, WireError> {
    need(r, 4)?;
    Ok(r.get_u32())
}

fn get_u64(r: &mut &[u8]) -> Result<u64, WireError> {
    need(r, 8)?;
    Ok(r.get_u64())
}

/// Refuses a tid or epoch at or above [`crate::COUNTER_MAX`], so that the next one (`+ 1`)
/// can always be computed.
fn counter(v: u64, what: &'static str) -> Result<u64, WireError> {
    if v >= crate::COUNTER_MAX {
        return Err(WireError::Invalid(what));
    }
    Ok(v)
}

fn get_tid(r: &mut &[u8]) -> Result<Tid, WireError> {
    Ok(Tid(counter(get_u64(r)?, "tid out of range")?))
}

fn get_epoch(r: &mut &[u8]) -> Result<Epoch, WireError> {
    Ok(Epoch(counter(get_u64(r)?, "epoch out of range")?))
}

/// A count of items of at least `min_item` bytes each: refuses counts the rest of the message
/// cannot hold, so a forged count never makes us allocate.
fn get_count(r: &mut &[u8], min_item: usize) -> Result<usize, WireError> {
    let n = get_u32(r)? as usize;
    if n.saturating_mul(min_item) > r.len() {
        return Err(WireError::Truncated);
    }
    Ok(n)
}

fn get_opt_u64(r: &mut &[u8]) -> Result<Option<u64>, WireError> {
    Ok(if get_bool(r)? {
        Some(get_u64(r)?)
    } else {
        None
    })
}

fn get_bytes(r: &mut &[u8]) -> Result<Bytes, WireError> {
    let n = get_u32(r)? as usize;
    need(r, n)?;
    let v = Bytes::copy_from_slice(&r[..n]);
    r.advance(n);
    Ok(v)
}

fn get_opt_bytes(r: &mut &[u8]) -> Result<Option<Bytes>, WireError> {
    Ok(if get_bool(r)? {
        Some(get_bytes(r)?)
    } else {
        None
    })
}

fn get_oid(r: &mut &[u8]) -> Result<Oid, WireError> {
    Oid::new(get_bytes(r)?).map_err(|_| WireError::Invalid("oid too long"))
}

pub(crate) fn get_txn(r: &mut &[u8]) -> Result<Transaction, WireError> {
    let tid = get_tid(r)?;
    let meta = TxnMeta {
        user: get_bytes(r)?,
        description: get_bytes(r)?,
        extension: get_bytes(r)?,
        time: get_u64(r)?,
    };
    let n = get_count(r, 5)?;
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        records.push(Record {
            oid: get_oid(r)?,
            data: get_opt_bytes(r)?,
            expected_serial: None,
        });
    }
    Ok(Transaction { tid, meta, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txn(tid: u64) -> Transaction {
        Transaction {
            tid: Tid(tid),
            meta: TxnMeta {
                user: Bytes::from_static(b"u"),
                description: Bytes::new(),
                extension: Bytes::from_static(b"x"),
                time: 7,
            },
            records: vec![
                Record {
                    oid: Oid::from_u64(1),
                    data: Some(Bytes::from_static(b"v")),
                    expected_serial: None,
                },
                Record {
                    oid: Oid::from_u64(2),
                    data: None,
                    expected_serial: None,
                },
            ],
        }
    }

    fn samples() -> Vec<Msg> {
        vec![
            Msg::State(MemberState {
                server: 3,
                promised: Epoch(4),
                last_tid: Tid(9),
                lineage: vec![EpochStart {
                    epoch: Epoch(2),
                    base: Tid(1),
                }],
                primary_in: Some(Epoch(2)),
                consistent: true,
                voter: false,
                config: crate::VoterConfig {
                    voters: crate::VoterSet::new([(1, 1), (3, 2)]),
                    old: Some(crate::VoterSet::new([(1, 1), (2, 1)])),
                },
            }),
            Msg::Promise {
                server: 1,
                epoch: Epoch(5),
            },
            Msg::Commit {
                epoch: Epoch(5),
                prev: Tid(9),
                txn: txn(10),
            },
            Msg::Applied {
                server: 2,
                epoch: Epoch(5),
                tid: Tid(10),
            },
            Msg::SwapRequest {
                epoch: Epoch(5),
                to: 2,
            },
            Msg::Handover {
                epoch: Epoch(5),
                to: 2,
                last: Tid(10),
            },
            Msg::Fetch {
                from: 1,
                donor: 0,
                fetch_id: 3,
                chunks: 8,
                req: FetchReq::Objects {
                    since: Tid(2),
                    after_oid: Some(Oid::from_u64(4)),
                },
            },
            Msg::Fetch {
                from: 1,
                donor: 0,
                fetch_id: 4,
                chunks: 8,
                req: FetchReq::Txns {
                    after: Tid(2),
                    until: None,
                },
            },
            Msg::Chunk {
                to: 1,
                fetch_id: 3,
                body: ChunkBody::Txns {
                    txns: vec![(Tid(9), txn(10))],
                    done: true,
                },
            },
            Msg::Chunk {
                to: 1,
                fetch_id: 3,
                body: ChunkBody::Objects {
                    consistent_at: Tid(10),
                    lineage: vec![EpochStart {
                        epoch: Epoch(2),
                        base: Tid(4),
                    }],
                    revisions: vec![Revision {
                        oid: Oid::from_u64(1),
                        tid: Tid(10),
                        data: None,
                    }],
                    done: false,
                },
            },
            Msg::Chunk {
                to: 1,
                fetch_id: 3,
                body: ChunkBody::Unavailable { horizon: Tid(5) },
            },
            Msg::Lost {
                server: 1,
                truncated_after: Tid(4),
                tids: vec![Tid(5)],
                oids: vec![Oid::from_u64(1)],
            },
        ]
    }

    #[test]
    fn tids_and_epochs_at_the_end_of_their_range_are_refused() {
        let at_end = crate::COUNTER_MAX;
        let msgs = [
            Msg::Applied {
                server: 2,
                epoch: Epoch(5),
                tid: Tid(at_end),
            },
            Msg::Applied {
                server: 2,
                epoch: Epoch(u64::MAX),
                tid: Tid(1),
            },
            Msg::Handover {
                epoch: Epoch(5),
                to: 2,
                last: Tid(u64::MAX),
            },
            Msg::Commit {
                epoch: Epoch(5),
                prev: Tid(9),
                txn: txn(u64::MAX),
            },
            Msg::State(MemberState {
                server: 3,
                promised: Epoch(at_end),
                last_tid: Tid(9),
                lineage: vec![],
                primary_in: None,
                consistent: true,
                voter: true,
                config: crate::VoterConfig::single(crate::VoterSet::new([(3, 1)])),
            }),
        ];
        for m in msgs {
            assert!(
                matches!(Msg::decode(&m.encode()), Err(WireError::Invalid(_))),
                "{m:?} accepted"
            );
        }
        let just_below = Msg::Applied {
            server: 2,
            epoch: Epoch(at_end - 1),
            tid: Tid(at_end - 1),
        };
        assert_eq!(Msg::decode(&just_below.encode()).unwrap(), just_below);
    }

    #[test]
    fn round_trip_and_every_truncation_refused() {
        for m in samples() {
            let b = m.encode();
            assert_eq!(Msg::decode(&b), Ok(m.clone()));
            for cut in 0..b.len() {
                assert!(Msg::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = b.to_vec();
            long.push(0);
            assert_eq!(Msg::decode(&long), Err(WireError::Trailing(1)));
        }
    }

    /// The cost of encoding and decoding a Commit carrying a 1 KiB transaction (four records
    /// of 256 bytes, the shape of a small ZODB commit). A measurement, not a check: run it in
    /// release with `cargo test --release -p replica commit_codec_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    // Reading the clock is the point of a timing loop; no core code runs here.
    #[allow(clippy::disallowed_methods)]
    fn commit_codec_cost() {
        let m = Msg::Commit {
            epoch: Epoch(7),
            prev: Tid(41),
            txn: Transaction {
                tid: Tid(42),
                meta: TxnMeta {
                    user: Bytes::from_static(b"alice"),
                    description: Bytes::from_static(b"/app/save"),
                    extension: Bytes::from(vec![0x7d; 16]),
                    time: 1_700_000_000,
                },
                records: (0..4)
                    .map(|i| Record {
                        oid: Oid::from_u64(i),
                        data: Some(Bytes::from(vec![i as u8; 256])),
                        expected_serial: None,
                    })
                    .collect(),
            },
        };
        // The best of many short batches: on a shared machine the minimum is what the code
        // costs, the rest is other processes.
        let rounds = 20_000;
        let bytes = m.encode();
        let (mut encode, mut decode) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..50 {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(std::hint::black_box(&m).encode());
            }
            encode = encode.min(start.elapsed() / rounds);
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(Msg::decode(std::hint::black_box(&bytes)).unwrap());
            }
            decode = decode.min(start.elapsed() / rounds);
        }
        println!(
            "commit of {} bytes: encode {encode:?}, decode {decode:?}, both {:?} (best of 50)",
            bytes.len(),
            encode + decode
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Msg::decode(&bytes);
        }

        #[test]
        fn decode_of_mutated_messages_never_panics(i in 0usize..12, pos in any::<usize>(), v in any::<u8>()) {
            let s = samples();
            let mut b = s[i % s.len()].encode().to_vec();
            let p = pos % b.len();
            b[p] = v;
            let _ = Msg::decode(&b);
        }
    }
}
