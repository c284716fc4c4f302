//! The client protocol: length-prefixed binary frames over TCP, versioned.
//!
//! ```text
//! frame   = len:u32 (big-endian, of what follows) ++ body      (len <= FRAME_MAX)
//! body    = version:u8 ++ bincode((id:u64, message))
//! ```
//! The framing is [`crate::framing`]'s (with the `net` feature). A body is a version byte
//! ([`VERSION`]) and then the request id and the [`Request`] or [`Response`] as serde derives
//! them, encoded by bincode with settings fixed in `bincode_options` (the same as the
//! replica's messages and `gcs::wire`'s control packets: integers, lengths and enum tags
//! fixed-width little-endian), so that a dependency bump cannot change the format. So a body
//! starts `version ++ id:u64 ++ variant:u32`, the variant being the message's position in
//! its enum. The format is what the types say, theirs in `storage` and `replica` included:
//! changing a field, or the order of variants, changes it (`the_format_is_pinned` below
//! catches it); bump [`VERSION`] then, and add new variants at the end.
//!
//! The first frame a client sends is `Hello { token }`; the server answers `Welcome` or an
//! `Error` and closes. Then each request carries an id chosen by the client, echoed by its
//! answer; `Subscribe` makes the server push `Invalidation` and `Lost` frames (id 0) on the
//! connection. Decoding never panics: anything malformed is a [`ProtoError`], the server answers
//! with an `Error` frame where it can and keeps serving its other clients. Nothing is allocated
//! for what a length field claims beyond the body that holds it: byte strings and strings are
//! checked against the bytes left before they are read, and sequences preallocate at most
//! 4 KiB whatever their count says (1 MiB, serde's own cap, for the records of a transaction
//! in a `Transactions` answer). What the types do not say is checked after bincode, by
//! [`Request::validate`].
//!
//! Transactions are built client-side (`begin`, `store` each object, `commit`) and travel as
//! one `Commit`: the primary checks every record's serial at once, so nothing is held open on
//! the server between calls.

use bincode::Options;
use bytes::{BufMut, Bytes};
use replica::voters::VOTERS_MAX;
use replica::{CommitError, Committed, Epoch, Role, ServerId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use storage::{Oid, Record, Revision, Tid, Transaction, TxnMeta};

/// Protocol version spoken by this build. 3: transaction metadata carries the request key
/// (`TxnMeta::request`); 2: serde and bincode (`bincode_options`); 1 was encoded by hand.
pub const VERSION: u8 = 3;
/// The largest frame accepted: a commit of up to the replica's default `commit_bytes_max`
/// (24 MiB, so a 16 MiB value fits), or an answer carrying one, with room for its framing.
pub const FRAME_MAX: usize = 25 << 20;
/// The largest frame accepted before a connection has said Hello: a Hello and its token fit
/// many times over, and a stranger cannot make the server hold large buffers.
pub const HELLO_FRAME_MAX: usize = 4096;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Shorter than its fields.
    #[error("truncated frame")]
    Truncated,
    /// Longer than the limit in force (`max`: [`FRAME_MAX`] on the client port).
    #[error("frame of {len} bytes is larger than the maximum {max}")]
    TooLarge {
        /// The length announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Longer than [`HELLO_FRAME_MAX`], before the connection said Hello.
    #[error("frame of {0} bytes before Hello (at most {HELLO_FRAME_MAX} until then)")]
    TooLargeBeforeHello(usize),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this server speaks {VERSION})")]
    Version(u8),
    /// A boolean or an option whose tag is neither 0 nor 1.
    #[error("unknown tag {0}")]
    BadTag(u8),
    /// A field breaks a rule.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A field bincode could not read: an unknown message kind or enum value, or a value its
    /// type refuses (an oid too long); the text is bincode's or the type's.
    #[error("malformed field: {0}")]
    Malformed(String),
}

/// Server-side error codes sent in `Error` frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame could not be read (the connection stays open if the framing is intact).
    BadRequest,
    /// Wrong or missing token.
    Unauthorized,
    /// Protocol version not spoken.
    Version,
    /// The server cannot serve this read now (recovering).
    Unavailable,
    /// Anything else.
    Internal,
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First frame: the shared client token (empty when the server asks none).
    Hello {
        /// The token.
        token: Bytes,
    },
    /// Commit a transaction built with begin/store.
    Commit {
        /// Client id (stable across reconnects).
        client: u64,
        /// Request number (the same on a retry).
        request: u64,
        /// Metadata.
        meta: TxnMeta,
        /// Records with their expected serials.
        #[serde(deserialize_with = "capped::deserialize")]
        records: Vec<Record>,
    },
    /// Current revision of an object.
    Load {
        /// The object.
        oid: Oid,
    },
    /// Newest revision older than `tid`.
    LoadBefore {
        /// The object.
        oid: Oid,
        /// The bound.
        tid: Tid,
    },
    /// Up to `n` revisions, newest first.
    History {
        /// The object.
        oid: Oid,
        /// How many.
        n: u32,
    },
    /// The server's last transaction and staleness.
    LastTransaction,
    /// Transactions with tids in `[start, stop]`, at most `max` of them.
    Iterate {
        /// First tid.
        start: Tid,
        /// Last tid (inclusive).
        stop: Tid,
        /// Page size.
        max: u32,
    },
    /// The cluster as this server sees it.
    Status,
    /// Push invalidations and loss reports on this connection.
    Subscribe,
    /// Planned swap to `to`.
    Switchover {
        /// The new primary.
        to: ServerId,
    },
    /// This server's lost-transactions archive (the first `max` entries), as `Lost` frames
    /// with the tids truncated after, then `Transactions` with the archived transactions.
    LostArchive {
        /// Page size.
        max: u32,
    },
    /// Add a read replica (see [`servercore::membership`]); answered like a commit.
    AddReplica {
        /// Client id (the change is idempotent like a commit).
        client: u64,
        /// Request number.
        request: u64,
        /// The new server.
        server: servercore::membership::AddedServer,
    },
    /// Remove a server without a vote; answered like a commit.
    RemoveReplica {
        /// Client id.
        client: u64,
        /// Request number.
        request: u64,
        /// The server.
        id: ServerId,
    },
    /// Give servers a vote (with a weight) and take it from others (see
    /// [`replica::voters`]); answered like a commit, with the tid of the new voters, once
    /// they are durable on a majority of them. Asking again asks for the same change.
    ChangeVoters {
        /// Servers given a vote, with their weights.
        #[serde(deserialize_with = "capped::deserialize")]
        add: Vec<(ServerId, u32)>,
        /// Servers whose vote is taken away.
        #[serde(deserialize_with = "capped::deserialize")]
        remove: Vec<ServerId>,
    },
}

/// What a server knows of one storage server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its id.
    pub id: ServerId,
    /// Its name.
    pub name: String,
    /// Its client address ("host:port"), as configured.
    pub client_addr: String,
    /// Whether it is in this server's current view.
    pub in_view: bool,
}

/// A server's status and its view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The answering server.
    pub id: ServerId,
    /// Its role.
    pub role: Role,
    /// Its last transaction.
    pub last_tid: Tid,
    /// Newest tid it knows the lineage reached.
    pub primary_last_known: Tid,
    /// Microseconds since its last applied commit (`None`: none since it started).
    pub since_last_commit_us: Option<u64>,
    /// Microseconds it may have been missing commits (0: current; `None`: not current since
    /// it started; see `replica::Staleness::behind_for`).
    pub behind_for_us: Option<u64>,
    /// The working primary and its epoch.
    pub primary: Option<(ServerId, Epoch)>,
    /// Every configured server.
    #[serde(deserialize_with = "capped::deserialize")]
    pub servers: Vec<ServerInfo>,
}

/// A frame from the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Hello accepted.
    Welcome {
        /// The server's id.
        server: ServerId,
    },
    /// A commit's outcome.
    Commit(Result<Committed, CommitError>),
    /// A revision (or none) and the server's last tid when it read it.
    Revision {
        /// The revision.
        rev: Option<Revision>,
        /// The server's last transaction.
        last_tid: Tid,
    },
    /// Revisions.
    Revisions(#[serde(deserialize_with = "capped::deserialize")] Vec<Revision>),
    /// Last transaction and role.
    Last {
        /// The tid.
        tid: Tid,
        /// The role.
        role: Role,
        /// Newest tid known.
        primary_last_known: Tid,
        /// Microseconds it may have been missing commits (0: current; `None`: not current
        /// since it started).
        behind_for_us: Option<u64>,
    },
    /// A page of transactions; `more` if the range holds more.
    Transactions {
        /// The page.
        #[serde(deserialize_with = "capped::deserialize")]
        txns: Vec<Transaction>,
        /// More after the last one.
        more: bool,
    },
    /// Status.
    Status(StatusInfo),
    /// Subscribed / switchover accepted.
    Ok,
    /// A pushed invalidation.
    Invalidation {
        /// The transaction.
        tid: Tid,
        /// Its objects.
        #[serde(deserialize_with = "capped::deserialize")]
        oids: Vec<Oid>,
    },
    /// A pushed loss report: flush these objects.
    Lost {
        /// The server that archived them.
        server: ServerId,
        /// The tids.
        #[serde(deserialize_with = "capped::deserialize")]
        tids: Vec<Tid>,
        /// The objects.
        #[serde(deserialize_with = "capped::deserialize")]
        oids: Vec<Oid>,
    },
    /// A pushed role change of the answering server, with the primary it knows of: clients
    /// follow a new primary without waiting for a redirect.
    RoleChange {
        /// The server.
        server: ServerId,
        /// Its role.
        role: Role,
        /// The working primary and its epoch.
        primary: Option<(ServerId, Epoch)>,
    },
    /// A pushed topology change (a replica added or removed): `(id, name, client address)`
    /// of every server.
    Topology {
        /// The servers.
        #[serde(deserialize_with = "capped::deserialize")]
        servers: Vec<(ServerId, String, String)>,
    },
    /// A request failed.
    Error {
        /// What kind.
        kind: ErrorKind,
        /// For humans.
        message: String,
    },
}

/// The bincode settings of every body (`gcs::bincode_slice::options`, as the replica's
/// messages and `gcs::wire`), at most [`FRAME_MAX`] bytes.
fn bincode_options() -> impl Options + Copy {
    gcs::bincode_slice::options(FRAME_MAX as u64)
}

/// The whole frame: length prefix, version, then `(id, msg)`.
fn encode_frame<T: Serialize>(id: u64, msg: &T) -> Bytes {
    gcs::bincode_slice::encode_after(&(id, msg), bincode_options(), 4 + 1, |out, len| {
        // A body past u32::MAX (never built: commits are bounded far below) gets a length the
        // reader refuses rather than one that desynchronises it.
        out.put_u32(u32::try_from(1 + len).unwrap_or(u32::MAX));
        out.put_u8(VERSION);
    })
}

/// Decodes a body: the version, then `(id, msg)` with nothing after it.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u64, T), ProtoError> {
    let (&version, rest) = body.split_first().ok_or(ProtoError::Truncated)?;
    if version != VERSION {
        return Err(ProtoError::Version(version));
    }
    if body.len() > FRAME_MAX {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max: FRAME_MAX,
        });
    }
    // The limit enforced on a slice, and the bytes left counted (`gcs::bincode_slice`).
    let (m, left) = gcs::bincode_slice::decode::<(u64, T)>(rest, bincode_options())
        .map_err(|e| from_bincode(*e))?;
    if left != 0 {
        return Err(ProtoError::Trailing(left));
    }
    Ok(m)
}

/// The id of a body of this version, whether or not its message decodes: a server answers a
/// malformed request with an `Error` frame carrying its id. `None`: another version, or too
/// short to hold an id.
pub fn frame_id(body: &[u8]) -> Option<u64> {
    match body {
        [VERSION, id @ ..] if id.len() >= 8 => {
            Some(u64::from_le_bytes(id[..8].try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

/// What bincode's refusal means here. The limit is the body's length, so a field that would
/// go past it is a truncated body, as is one that runs out of bytes.
fn from_bincode(e: bincode::ErrorKind) -> ProtoError {
    match e {
        e if gcs::bincode_slice::is_truncation(&e) => ProtoError::Truncated,
        bincode::ErrorKind::InvalidBoolEncoding(b) => ProtoError::BadTag(b),
        // An option's tag, a single byte.
        bincode::ErrorKind::InvalidTagEncoding(t) => {
            ProtoError::BadTag(u8::try_from(t).unwrap_or(u8::MAX))
        }
        bincode::ErrorKind::InvalidUtf8Encoding(_) => ProtoError::Invalid("not UTF-8"),
        other => ProtoError::Malformed(other.to_string()),
    }
}

/// Sequences of the messages, read without trusting their count: serde's own `Vec` reader
/// preallocates up to 1 MiB for a count that the body cannot hold; this one at most
/// [`capped::PREALLOC_BYTES`], and grows with the elements actually read.
mod capped {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::marker::PhantomData;

    /// Preallocated for a sequence at most, whatever its count says.
    pub(super) const PREALLOC_BYTES: usize = 4096;

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct Seq<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Seq<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let most = PREALLOC_BYTES / std::mem::size_of::<T>().max(1);
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(most));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(v)
            }
        }
        d.deserialize_seq(Seq(PhantomData))
    }
}

impl Request {
    /// Bytes of object data a commit carries (0 for other requests).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Request::Commit { records, .. } => records
                .iter()
                .map(|r| r.data.as_ref().map_or(0, |d| d.len()))
                .sum(),
            _ => 0,
        }
    }

    /// The whole frame (length prefix included) for request `id`.
    pub fn encode(&self, id: u64) -> Bytes {
        encode_frame(id, self)
    }

    /// The frame's body (without its length prefix), for [`crate::framing::FrameCodec`]'s
    /// encoder. Shares the bytes of [`Request::encode`].
    pub fn encode_body(&self, id: u64) -> Bytes {
        self.encode(id).slice(4..)
    }

    /// Decodes a frame body (without its length prefix): `(id, request)`.
    pub fn decode(body: &[u8]) -> Result<(u64, Request), ProtoError> {
        let (id, req) = decode_body::<Request>(body)?;
        req.validate()?;
        Ok((id, req))
    }

    /// The rules a request must follow beyond its types (checked by [`Request::decode`]):
    /// at most [`VOTERS_MAX`] servers given a vote and as many deprived of one. (Oids check
    /// their length, strings their UTF-8 and addresses their form as they are read.)
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Request::ChangeVoters { add, remove } => {
                if add.len() > VOTERS_MAX || remove.len() > VOTERS_MAX {
                    return Err(ProtoError::Invalid("too many voters"));
                }
            }
            Request::Hello { .. }
            | Request::Commit { .. }
            | Request::Load { .. }
            | Request::LoadBefore { .. }
            | Request::History { .. }
            | Request::LastTransaction
            | Request::Iterate { .. }
            | Request::Status
            | Request::Subscribe
            | Request::Switchover { .. }
            | Request::LostArchive { .. }
            | Request::AddReplica { .. }
            | Request::RemoveReplica { .. } => {}
        }
        Ok(())
    }
}

impl Response {
    /// The whole frame (length prefix included) answering request `id` (0: pushed).
    pub fn encode(&self, id: u64) -> Bytes {
        encode_frame(id, self)
    }

    /// The frame's body (without its length prefix), for [`crate::framing::FrameCodec`]'s
    /// encoder. Shares the bytes of [`Response::encode`].
    pub fn encode_body(&self, id: u64) -> Bytes {
        self.encode(id).slice(4..)
    }

    /// Decodes a frame body (without its length prefix): `(id, response)`. An answer has no
    /// rules beyond its types.
    pub fn decode(body: &[u8]) -> Result<(u64, Response), ProtoError> {
        decode_body(body)
    }
}

#[cfg(feature = "net")]
pub use crate::framing::{read_frame, read_hello_frame};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed (or ended mid-frame).
    #[error("connection: {0}")]
    Io(std::io::Error),
    /// The frame is bad.
    #[error(transparent)]
    Proto(ProtoError),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

impl From<ProtoError> for FrameError {
    fn from(e: ProtoError) -> FrameError {
        FrameError::Proto(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn reqs() -> Vec<Request> {
        vec![
            Request::Hello {
                token: Bytes::from_static(b"t"),
            },
            Request::Commit {
                client: 1,
                request: 2,
                meta: TxnMeta::default(),
                records: vec![Record {
                    oid: Oid::from_u64(3),
                    data: Some(Bytes::from_static(b"x")),
                    expected_serial: Some(Tid(4)),
                }],
            },
            Request::Load {
                oid: Oid::from_u64(1),
            },
            Request::LoadBefore {
                oid: Oid::from_u64(1),
                tid: Tid(9),
            },
            Request::History {
                oid: Oid::from_u64(1),
                n: 3,
            },
            Request::LastTransaction,
            Request::Iterate {
                start: Tid(1),
                stop: Tid(9),
                max: 10,
            },
            Request::Status,
            Request::Subscribe,
            Request::Switchover { to: 2 },
            Request::LostArchive { max: 5 },
            Request::AddReplica {
                client: 4,
                request: 9,
                server: servercore::membership::AddedServer {
                    id: 5,
                    name: "r5".into(),
                    gcs: "127.0.0.1:7925".parse().unwrap(),
                    client: "localhost:7935".into(),
                    admin: "localhost:7945".into(),
                },
            },
            Request::RemoveReplica {
                client: 4,
                request: 10,
                id: 5,
            },
            Request::ChangeVoters {
                add: vec![(5, 1), (6, 2)],
                remove: vec![1],
            },
        ]
    }

    fn resps() -> Vec<Response> {
        vec![
            Response::Welcome { server: 1 },
            Response::Commit(Ok(Committed {
                tid: Tid(5),
                epoch: Epoch(2),
                duplicate: true,
            })),
            Response::Commit(Err(CommitError::Conflict {
                oid: Oid::from_u64(1),
                expected: Tid(1),
                actual: Tid(2),
            })),
            Response::Commit(Err(CommitError::NotPrimary { primary: Some(2) })),
            Response::Revision {
                rev: Some(Revision {
                    oid: Oid::from_u64(1),
                    tid: Tid(2),
                    data: None,
                }),
                last_tid: Tid(3),
            },
            Response::Revisions(vec![]),
            Response::Last {
                tid: Tid(1),
                role: Role::Backup,
                primary_last_known: Tid(2),
                behind_for_us: Some(7),
            },
            Response::Transactions {
                txns: vec![Transaction {
                    tid: Tid(1),
                    meta: TxnMeta::default(),
                    records: vec![Record {
                        oid: Oid::from_u64(1),
                        data: None,
                        expected_serial: None,
                    }],
                }],
                more: true,
            },
            Response::Status(StatusInfo {
                id: 0,
                role: Role::Primary,
                last_tid: Tid(1),
                primary_last_known: Tid(1),
                since_last_commit_us: Some(5),
                behind_for_us: None,
                primary: Some((0, Epoch(1))),
                servers: vec![ServerInfo {
                    id: 0,
                    name: "a".into(),
                    client_addr: "127.0.0.1:1".into(),
                    in_view: true,
                }],
            }),
            Response::Ok,
            Response::Invalidation {
                tid: Tid(1),
                oids: vec![Oid::from_u64(1)],
            },
            Response::Lost {
                server: 1,
                tids: vec![Tid(1)],
                oids: vec![],
            },
            Response::Error {
                kind: ErrorKind::Unauthorized,
                message: "no".into(),
            },
            Response::RoleChange {
                server: 2,
                role: Role::Primary,
                primary: Some((2, Epoch(9))),
            },
            Response::Topology {
                servers: vec![
                    (0, "s0".into(), "127.0.0.1:7930".into()),
                    (5, "r5".into(), "localhost:7935".into()),
                ],
            },
        ]
    }

    #[test]
    fn frames_round_trip_and_every_cut_is_refused() {
        for q in reqs() {
            let f = q.encode(7);
            assert_eq!(
                u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
            assert_eq!(Request::decode(&f[4..]), Ok((7, q.clone())));
            for cut in 4..f.len() {
                assert!(Request::decode(&f[4..cut]).is_err(), "{q:?} at {cut}");
            }
        }
        for p in resps() {
            let f = p.encode(9);
            assert_eq!(Response::decode(&f[4..]), Ok((9, p.clone())));
            for cut in 4..f.len() {
                assert!(Response::decode(&f[4..cut]).is_err(), "{p:?} at {cut}");
            }
        }
    }

    #[test]
    fn another_version_is_named() {
        let mut f = Request::Status.encode(1).to_vec();
        f[4] = 9;
        assert_eq!(Request::decode(&f[4..]), Err(ProtoError::Version(9)));
    }

    /// The cost of encoding and decoding a Commit carrying one record of 1 KiB. A
    /// measurement, not a check: run it in release with
    /// `cargo test --release -p standby-client commit_codec_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    // Reading the clock is the point of a timing loop.
    #[allow(clippy::disallowed_methods)]
    fn commit_codec_cost() {
        let q = Request::Commit {
            client: 7,
            request: 42,
            meta: TxnMeta {
                user: Bytes::from_static(b"alice"),
                description: Bytes::from_static(b"/app/save"),
                extension: Bytes::from(vec![0x7d; 16]),
                time: 1_700_000_000,
                request: None,
            },
            records: vec![Record {
                oid: Oid::from_u64(1),
                data: Some(Bytes::from(vec![0xab; 1024])),
                expected_serial: Some(Tid(41)),
            }],
        };
        // The best of many short batches: on a shared machine the minimum is what the code
        // costs, the rest is other processes.
        let rounds = 20_000;
        let frame = q.encode(3);
        let (mut encode, mut decode) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..50 {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(std::hint::black_box(&q).encode(3));
            }
            encode = encode.min(start.elapsed() / rounds);
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(Request::decode(std::hint::black_box(&frame[4..])).unwrap());
            }
            decode = decode.min(start.elapsed() / rounds);
        }
        println!(
            "commit frame of {} bytes: encode {encode:?}, decode {decode:?}, both {:?} (best of 50)",
            frame.len(),
            encode + decode
        );
    }

    // ---- strategies: every variant of every message -----------------------------------------

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn oid() -> impl Strategy<Value = Oid> {
        prop_oneof![
            any::<u64>().prop_map(Oid::from_u64),
            vec(any::<u8>(), 0..20).prop_map(|v| Oid::new(v).expect("short oid")),
        ]
    }

    fn tid() -> impl Strategy<Value = Tid> {
        any::<u64>().prop_map(Tid)
    }

    fn meta() -> impl Strategy<Value = TxnMeta> {
        (bytes(8), bytes(8), bytes(8), any::<u64>()).prop_map(
            |(user, description, extension, time)| TxnMeta {
                user,
                description,
                extension,
                time,
                request: None,
            },
        )
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            oid(),
            proptest::option::of(bytes(40)),
            proptest::option::of(tid()),
        )
            .prop_map(|(oid, data, expected_serial)| Record {
                oid,
                data,
                expected_serial,
            })
    }

    fn revision() -> impl Strategy<Value = Revision> {
        (oid(), tid(), proptest::option::of(bytes(40))).prop_map(|(oid, tid, data)| Revision {
            oid,
            tid,
            data,
        })
    }

    fn transaction() -> impl Strategy<Value = Transaction> {
        (tid(), meta(), vec(record(), 0..3)).prop_map(|(tid, meta, records)| Transaction {
            tid,
            meta,
            records,
        })
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Primary),
            Just(Role::Backup),
            Just(Role::Syncing),
            Just(Role::ReadOnly),
            Just(Role::Down),
        ]
    }

    fn primary() -> impl Strategy<Value = Option<(ServerId, Epoch)>> {
        proptest::option::of((any::<ServerId>(), any::<u64>().prop_map(Epoch)))
    }

    fn commit_error() -> impl Strategy<Value = CommitError> {
        prop_oneof![
            proptest::option::of(any::<ServerId>())
                .prop_map(|primary| CommitError::NotPrimary { primary }),
            Just(CommitError::Retry),
            (oid(), tid(), tid()).prop_map(|(oid, expected, actual)| CommitError::Conflict {
                oid,
                expected,
                actual
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(request, last)| CommitError::Stale { request, last }),
            text().prop_map(CommitError::Invalid),
            Just(CommitError::Busy),
            text().prop_map(CommitError::Down),
        ]
    }

    fn error_kind() -> impl Strategy<Value = ErrorKind> {
        prop_oneof![
            Just(ErrorKind::BadRequest),
            Just(ErrorKind::Unauthorized),
            Just(ErrorKind::Version),
            Just(ErrorKind::Unavailable),
            Just(ErrorKind::Internal),
        ]
    }

    fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| (
                std::net::Ipv4Addr::from(ip),
                port
            )
                .into()),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| (
                std::net::Ipv6Addr::from(ip),
                port
            )
                .into()),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            bytes(40).prop_map(|token| Request::Hello { token }),
            (any::<u64>(), any::<u64>(), meta(), vec(record(), 0..4)).prop_map(
                |(client, request, meta, records)| Request::Commit {
                    client,
                    request,
                    meta,
                    records
                }
            ),
            oid().prop_map(|oid| Request::Load { oid }),
            (oid(), tid()).prop_map(|(oid, tid)| Request::LoadBefore { oid, tid }),
            (oid(), any::<u32>()).prop_map(|(oid, n)| Request::History { oid, n }),
            Just(Request::LastTransaction),
            (tid(), tid(), any::<u32>()).prop_map(|(start, stop, max)| Request::Iterate {
                start,
                stop,
                max
            }),
            Just(Request::Status),
            Just(Request::Subscribe),
            any::<ServerId>().prop_map(|to| Request::Switchover { to }),
            any::<u32>().prop_map(|max| Request::LostArchive { max }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<ServerId>(),
                text(),
                socket_addr(),
                text(),
                text()
            )
                .prop_map(|(client, request, id, name, gcs, c, admin)| {
                    Request::AddReplica {
                        client,
                        request,
                        server: servercore::membership::AddedServer {
                            id,
                            name,
                            gcs,
                            client: c,
                            admin,
                        },
                    }
                }),
            (any::<u64>(), any::<u64>(), any::<ServerId>()).prop_map(|(client, request, id)| {
                Request::RemoveReplica {
                    client,
                    request,
                    id,
                }
            }),
            (
                vec((any::<ServerId>(), any::<u32>()), 0..=VOTERS_MAX),
                vec(any::<ServerId>(), 0..=VOTERS_MAX)
            )
                .prop_map(|(add, remove)| Request::ChangeVoters { add, remove }),
        ]
    }

    fn status() -> impl Strategy<Value = StatusInfo> {
        (
            (any::<ServerId>(), role(), tid(), tid()),
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                primary(),
            ),
            vec(
                (any::<ServerId>(), text(), text(), any::<bool>()).prop_map(
                    |(id, name, client_addr, in_view)| ServerInfo {
                        id,
                        name,
                        client_addr,
                        in_view,
                    },
                ),
                0..4,
            ),
        )
            .prop_map(
                |(
                    (id, role, last_tid, primary_last_known),
                    (since_last_commit_us, behind_for_us, primary),
                    servers,
                )| StatusInfo {
                    id,
                    role,
                    last_tid,
                    primary_last_known,
                    since_last_commit_us,
                    behind_for_us,
                    primary,
                    servers,
                },
            )
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            any::<ServerId>().prop_map(|server| Response::Welcome { server }),
            (tid(), any::<u64>(), any::<bool>()).prop_map(|(tid, e, duplicate)| {
                Response::Commit(Ok(Committed {
                    tid,
                    epoch: Epoch(e),
                    duplicate,
                }))
            }),
            commit_error().prop_map(|e| Response::Commit(Err(e))),
            (proptest::option::of(revision()), tid())
                .prop_map(|(rev, last_tid)| Response::Revision { rev, last_tid }),
            vec(revision(), 0..4).prop_map(Response::Revisions),
            (tid(), role(), tid(), proptest::option::of(any::<u64>())).prop_map(
                |(tid, role, primary_last_known, behind_for_us)| Response::Last {
                    tid,
                    role,
                    primary_last_known,
                    behind_for_us,
                }
            ),
            (vec(transaction(), 0..3), any::<bool>())
                .prop_map(|(txns, more)| Response::Transactions { txns, more }),
            status().prop_map(Response::Status),
            Just(Response::Ok),
            (tid(), vec(oid(), 0..4)).prop_map(|(tid, oids)| Response::Invalidation { tid, oids }),
            (any::<ServerId>(), vec(tid(), 0..4), vec(oid(), 0..4))
                .prop_map(|(server, tids, oids)| Response::Lost { server, tids, oids }),
            (any::<ServerId>(), role(), primary()).prop_map(|(server, role, primary)| {
                Response::RoleChange {
                    server,
                    role,
                    primary,
                }
            }),
            vec((any::<ServerId>(), text(), text()), 0..4)
                .prop_map(|servers| Response::Topology { servers }),
            (error_kind(), text()).prop_map(|(kind, message)| Response::Error { kind, message }),
        ]
    }

    proptest! {
        #[test]
        fn every_request_round_trips_and_every_cut_is_refused(q in request(), id in any::<u64>()) {
            let f = q.encode(id);
            prop_assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
            prop_assert_eq!(&q.encode_body(id)[..], &f[4..]);
            prop_assert_eq!(frame_id(&f[4..]), Some(id));
            prop_assert_eq!(Request::decode(&f[4..]), Ok((id, q.clone())));
            for cut in 4..f.len() {
                prop_assert!(Request::decode(&f[4..cut]).is_err(), "{:?} at {}", q, cut);
            }
        }

        #[test]
        fn every_response_round_trips_and_every_cut_is_refused(p in response(), id in any::<u64>()) {
            let f = p.encode(id);
            prop_assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
            prop_assert_eq!(&p.encode_body(id)[..], &f[4..]);
            prop_assert_eq!(Response::decode(&f[4..]), Ok((id, p.clone())));
            for cut in 4..f.len() {
                prop_assert!(Response::decode(&f[4..cut]).is_err(), "{:?} at {}", p, cut);
            }
        }

        /// What the `client_frames` fuzz target asserts, on random bytes: decoding gives an
        /// error or a message, never a panic, and a message encodes back to what decodes to
        /// it. Bodies that start with the version byte reach bincode.
        #[test]
        fn random_bodies_decode_or_fail(
            versioned in any::<bool>(),
            mut b in vec(any::<u8>(), 0..400),
        ) {
            if versioned && !b.is_empty() {
                b[0] = VERSION;
            }
            if let Ok((id, q)) = Request::decode(&b) {
                prop_assert_eq!(Request::decode(&q.encode(id)[4..]), Ok((id, q)));
            }
            if let Ok((id, p)) = Response::decode(&b) {
                prop_assert_eq!(Response::decode(&p.encode(id)[4..]), Ok((id, p)));
            }
        }

        /// Valid frames with one byte changed: the closest random input gets to a message.
        #[test]
        fn mutated_frames_never_panic(
            q in request(),
            p in response(),
            pos in any::<usize>(),
            v in any::<u8>(),
        ) {
            let mut b = q.encode(1)[4..].to_vec();
            let at = pos % b.len();
            b[at] = v;
            let _ = Request::decode(&b);
            let mut b = p.encode(1)[4..].to_vec();
            let at = pos % b.len();
            b[at] = v;
            let _ = Response::decode(&b);
        }
    }

    /// The format, byte for byte: a change here is a protocol change (bump [`VERSION`]).
    #[test]
    fn the_format_is_pinned() {
        let load = Request::Load {
            oid: Oid::from_u64(1),
        }
        .encode(7);
        let mut want = vec![0, 0, 0, 29, VERSION];
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes()); // Load: the third request
        want.extend_from_slice(&8u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_be_bytes());
        assert_eq!(&load[..], &want[..]);

        let committed = Response::Commit(Ok(Committed {
            tid: Tid(5),
            epoch: Epoch(2),
            duplicate: true,
        }))
        .encode(9);
        let mut want = vec![0, 0, 0, 34, VERSION];
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes()); // Commit: the second response
        want.extend_from_slice(&0u32.to_le_bytes()); // Ok
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.push(1);
        assert_eq!(&committed[..], &want[..]);
    }

    #[test]
    fn malformed_fields_are_refused_with_their_reason() {
        // An oid longer than storage allows.
        let mut b = vec![VERSION];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes()); // Load
        b.extend_from_slice(&1025u64.to_le_bytes());
        b.extend_from_slice(&[7; 1025]);
        assert!(
            matches!(Request::decode(&b), Err(ProtoError::Malformed(m)) if m.contains("1025")),
            "{:?}",
            Request::decode(&b)
        );
        // An unknown request kind.
        let mut b = Request::Status.encode(1)[4..].to_vec();
        b[9..13].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(Request::decode(&b), Err(ProtoError::Malformed(_))));
        assert_eq!(
            frame_id(&b),
            Some(1),
            "the id of a bad request is still read"
        );
        // A boolean that is neither.
        let mut b = Response::Transactions {
            txns: vec![],
            more: true,
        }
        .encode(1)[4..]
            .to_vec();
        *b.last_mut().unwrap() = 2;
        assert_eq!(Response::decode(&b), Err(ProtoError::BadTag(2)));
        // An option's tag that is neither.
        let mut b = Response::Last {
            tid: Tid(1),
            role: Role::Primary,
            primary_last_known: Tid(1),
            behind_for_us: None,
        }
        .encode(1)[4..]
            .to_vec();
        *b.last_mut().unwrap() = 3;
        assert_eq!(Response::decode(&b), Err(ProtoError::BadTag(3)));
        // A string that is not UTF-8.
        let mut b = Response::Error {
            kind: ErrorKind::Internal,
            message: "ab".into(),
        }
        .encode(1)[4..]
            .to_vec();
        let n = b.len();
        b[n - 2..].copy_from_slice(&[0xff, 0xfe]);
        assert_eq!(Response::decode(&b), Err(ProtoError::Invalid("not UTF-8")));
        // Bytes after the message.
        let mut b = Request::Status.encode(1)[4..].to_vec();
        b.extend_from_slice(&[0, 0]);
        assert_eq!(Request::decode(&b), Err(ProtoError::Trailing(2)));
        // Nothing, or a version alone.
        assert_eq!(Request::decode(&[]), Err(ProtoError::Truncated));
        assert_eq!(Request::decode(&[VERSION]), Err(ProtoError::Truncated));
        assert_eq!(frame_id(&[VERSION, 1, 2]), None);
        assert_eq!(frame_id(&[1; 20]), None, "another version");
    }

    #[test]
    fn voter_changes_are_bounded() {
        let voters = |n: usize| Request::ChangeVoters {
            add: (0..n as u32).map(|i| (i, 1)).collect(),
            remove: (0..n as u32).collect(),
        };
        let most = voters(VOTERS_MAX);
        assert_eq!(Request::decode(&most.encode(1)[4..]), Ok((1, most)));
        let b = voters(VOTERS_MAX + 1).encode(1);
        assert_eq!(
            Request::decode(&b[4..]),
            Err(ProtoError::Invalid("too many voters"))
        );
        let b = Request::ChangeVoters {
            add: vec![],
            remove: (0..=VOTERS_MAX as u32).collect(),
        }
        .encode(1);
        assert_eq!(
            Request::decode(&b[4..]),
            Err(ProtoError::Invalid("too many voters"))
        );
    }
}
