//! The client protocol: length-prefixed binary frames over TCP, versioned.
//!
//! ```text
//! frame   = len:u32 (big-endian, of what follows) ++ body      (len <= FRAME_MAX)
//! body    = version:u8 ++ kind:u8 ++ id:u64 ++ fields
//! ```
//! The first frame a client sends is `Hello { token }`; the server answers `Welcome` or an
//! `Error` and closes. Then each request carries an id chosen by the client, echoed by its
//! answer; `Subscribe` makes the server push `Invalidation` and `Lost` frames (id 0) on the
//! connection. Decoding never panics: anything malformed is a [`ProtoError`], the server answers
//! with an `Error` frame where it can and keeps serving its other clients.
//!
//! Transactions are built client-side (`begin`, `store` each object, `commit`) and travel as
//! one `Commit`: the primary checks every record's serial at once, so nothing is held open on
//! the server between calls.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use replica::voters::VOTERS_MAX;
use replica::{CommitError, Committed, Epoch, Role, ServerId};
use storage::{Oid, Record, Revision, Tid, Transaction, TxnMeta};

/// Protocol version spoken by this build.
pub const VERSION: u8 = 1;
/// The largest frame accepted (a commit of up to 16 MiB of data, with room for its framing).
pub const FRAME_MAX: usize = 17 << 20;
/// The largest frame accepted before a connection has said Hello: a Hello and its token fit
/// many times over, and a stranger cannot make the server hold large buffers.
pub const HELLO_FRAME_MAX: usize = 4096;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Shorter than its fields.
    #[error("truncated frame")]
    Truncated,
    /// Longer than [`FRAME_MAX`].
    #[error("frame of {0} bytes is larger than the maximum {FRAME_MAX}")]
    TooLarge(usize),
    /// Longer than [`HELLO_FRAME_MAX`], before the connection said Hello.
    #[error("frame of {0} bytes before Hello (at most {HELLO_FRAME_MAX} until then)")]
    TooLargeBeforeHello(usize),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this server speaks {VERSION})")]
    Version(u8),
    /// An unknown kind or value.
    #[error("unknown tag {0}")]
    BadTag(u8),
    /// A field breaks a rule.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Server-side error codes sent in `Error` frames.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
        add: Vec<(ServerId, u32)>,
        /// Servers whose vote is taken away.
        remove: Vec<ServerId>,
    },
}

/// What a server knows of one storage server.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub servers: Vec<ServerInfo>,
}

/// A frame from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    Revisions(Vec<Revision>),
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
        oids: Vec<Oid>,
    },
    /// A pushed loss report: flush these objects.
    Lost {
        /// The server that archived them.
        server: ServerId,
        /// The tids.
        tids: Vec<Tid>,
        /// The objects.
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

// ---- encoding helpers -----------------------------------------------------------------------

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

fn put_str(b: &mut BytesMut, v: &str) {
    put_bytes(b, v.as_bytes());
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

fn put_opt_u64(b: &mut BytesMut, v: Option<u64>) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            b.put_u64(v);
        }
    }
}

fn put_meta(b: &mut BytesMut, m: &TxnMeta) {
    put_bytes(b, &m.user);
    put_bytes(b, &m.description);
    put_bytes(b, &m.extension);
    b.put_u64(m.time);
}

fn put_rev(b: &mut BytesMut, r: &Revision) {
    put_bytes(b, r.oid.as_bytes());
    b.put_u64(r.tid.0);
    put_opt_bytes(b, r.data.as_deref());
}

fn put_role(b: &mut BytesMut, r: Role) {
    b.put_u8(match r {
        Role::Primary => 0,
        Role::Backup => 1,
        Role::Syncing => 2,
        Role::ReadOnly => 3,
        Role::Down => 4,
    });
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn need(&self, n: usize) -> Result<(), ProtoError> {
        if self.0.len() < n {
            Err(ProtoError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(ProtoError::BadTag(t)),
        }
    }
    fn bytes(&mut self) -> Result<Bytes, ProtoError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        let v = Bytes::copy_from_slice(&self.0[..n]);
        self.0.advance(n);
        Ok(v)
    }
    fn str(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| ProtoError::Invalid("not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes>, ProtoError> {
        Ok(if self.bool()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, ProtoError> {
        Ok(if self.bool()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    /// A count of items of at least `min` bytes each (refuses counts the frame cannot hold).
    fn count(&mut self, min: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(ProtoError::Truncated);
        }
        Ok(n)
    }
    fn oid(&mut self) -> Result<Oid, ProtoError> {
        Oid::new(self.bytes()?).map_err(|_| ProtoError::Invalid("oid too long"))
    }
    fn meta(&mut self) -> Result<TxnMeta, ProtoError> {
        Ok(TxnMeta {
            user: self.bytes()?,
            description: self.bytes()?,
            extension: self.bytes()?,
            time: self.u64()?,
        })
    }
    fn rev(&mut self) -> Result<Revision, ProtoError> {
        Ok(Revision {
            oid: self.oid()?,
            tid: Tid(self.u64()?),
            data: self.opt_bytes()?,
        })
    }
    fn role(&mut self) -> Result<Role, ProtoError> {
        Ok(match self.u8()? {
            0 => Role::Primary,
            1 => Role::Backup,
            2 => Role::Syncing,
            3 => Role::ReadOnly,
            4 => Role::Down,
            t => return Err(ProtoError::BadTag(t)),
        })
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Trailing(self.0.len()))
        }
    }
}

fn header(kind: u8, id: u64) -> BytesMut {
    let mut b = BytesMut::with_capacity(64);
    b.put_u32(0); // length, patched by `finish`
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u64(id);
    b
}

fn finish(mut b: BytesMut) -> Bytes {
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// Reads the frame header of a body: `(kind, id, rest)`.
fn open_body(body: &[u8]) -> Result<(u8, u64, Rd<'_>), ProtoError> {
    let mut r = Rd(body);
    let v = r.u8()?;
    if v != VERSION {
        return Err(ProtoError::Version(v));
    }
    let kind = r.u8()?;
    let id = r.u64()?;
    Ok((kind, id, r))
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
        let (kind, mut b) = match self {
            Request::Hello { .. } => (1, header(1, id)),
            Request::Commit { .. } => (2, header(2, id)),
            Request::Load { .. } => (3, header(3, id)),
            Request::LoadBefore { .. } => (4, header(4, id)),
            Request::History { .. } => (5, header(5, id)),
            Request::LastTransaction => (6, header(6, id)),
            Request::Iterate { .. } => (7, header(7, id)),
            Request::Status => (8, header(8, id)),
            Request::Subscribe => (9, header(9, id)),
            Request::Switchover { .. } => (10, header(10, id)),
            Request::LostArchive { .. } => (11, header(11, id)),
            Request::AddReplica { .. } => (12, header(12, id)),
            Request::RemoveReplica { .. } => (13, header(13, id)),
            Request::ChangeVoters { .. } => (14, header(14, id)),
        };
        let _ = kind;
        match self {
            Request::Hello { token } => put_bytes(&mut b, token),
            Request::Commit {
                client,
                request,
                meta,
                records,
            } => {
                b.put_u64(*client);
                b.put_u64(*request);
                put_meta(&mut b, meta);
                b.put_u32(records.len() as u32);
                for r in records {
                    put_bytes(&mut b, r.oid.as_bytes());
                    put_opt_bytes(&mut b, r.data.as_deref());
                    put_opt_u64(&mut b, r.expected_serial.map(|t| t.0));
                }
            }
            Request::Load { oid } => put_bytes(&mut b, oid.as_bytes()),
            Request::LoadBefore { oid, tid } => {
                put_bytes(&mut b, oid.as_bytes());
                b.put_u64(tid.0);
            }
            Request::History { oid, n } => {
                put_bytes(&mut b, oid.as_bytes());
                b.put_u32(*n);
            }
            Request::Iterate { start, stop, max } => {
                b.put_u64(start.0);
                b.put_u64(stop.0);
                b.put_u32(*max);
            }
            Request::Switchover { to } => b.put_u32(*to),
            Request::LostArchive { max } => b.put_u32(*max),
            Request::AddReplica {
                client,
                request,
                server,
            } => {
                b.put_u64(*client);
                b.put_u64(*request);
                b.put_u32(server.id);
                put_str(&mut b, &server.name);
                put_str(&mut b, &server.gcs.to_string());
                put_str(&mut b, &server.client);
                put_str(&mut b, &server.admin);
            }
            Request::RemoveReplica {
                client,
                request,
                id,
            } => {
                b.put_u64(*client);
                b.put_u64(*request);
                b.put_u32(*id);
            }
            Request::ChangeVoters { add, remove } => {
                b.put_u32(add.len() as u32);
                for (id, w) in add {
                    b.put_u32(*id);
                    b.put_u32(*w);
                }
                b.put_u32(remove.len() as u32);
                for id in remove {
                    b.put_u32(*id);
                }
            }
            Request::LastTransaction | Request::Status | Request::Subscribe => {}
        }
        finish(b)
    }

    /// Decodes a frame body (without its length prefix): `(id, request)`.
    pub fn decode(body: &[u8]) -> Result<(u64, Request), ProtoError> {
        let (kind, id, mut r) = open_body(body)?;
        let req = match kind {
            1 => Request::Hello { token: r.bytes()? },
            2 => {
                let client = r.u64()?;
                let request = r.u64()?;
                let meta = r.meta()?;
                let n = r.count(6)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(Record {
                        oid: r.oid()?,
                        data: r.opt_bytes()?,
                        expected_serial: r.opt_u64()?.map(Tid),
                    });
                }
                Request::Commit {
                    client,
                    request,
                    meta,
                    records,
                }
            }
            3 => Request::Load { oid: r.oid()? },
            4 => Request::LoadBefore {
                oid: r.oid()?,
                tid: Tid(r.u64()?),
            },
            5 => Request::History {
                oid: r.oid()?,
                n: r.u32()?,
            },
            6 => Request::LastTransaction,
            7 => Request::Iterate {
                start: Tid(r.u64()?),
                stop: Tid(r.u64()?),
                max: r.u32()?,
            },
            8 => Request::Status,
            9 => Request::Subscribe,
            10 => Request::Switchover { to: r.u32()? },
            11 => Request::LostArchive { max: r.u32()? },
            12 => Request::AddReplica {
                client: r.u64()?,
                request: r.u64()?,
                server: servercore::membership::AddedServer {
                    id: r.u32()?,
                    name: r.str()?,
                    gcs: r
                        .str()?
                        .parse()
                        .map_err(|_| ProtoError::Invalid("gcs address is not ip:port"))?,
                    client: r.str()?,
                    admin: r.str()?,
                },
            },
            13 => Request::RemoveReplica {
                client: r.u64()?,
                request: r.u64()?,
                id: r.u32()?,
            },
            14 => {
                let n = r.u32()? as usize;
                if n > VOTERS_MAX {
                    return Err(ProtoError::Invalid("too many voters"));
                }
                let add = (0..n)
                    .map(|_| Ok((r.u32()?, r.u32()?)))
                    .collect::<Result<Vec<_>, ProtoError>>()?;
                let n = r.u32()? as usize;
                if n > VOTERS_MAX {
                    return Err(ProtoError::Invalid("too many voters"));
                }
                let remove = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
                Request::ChangeVoters { add, remove }
            }
            t => return Err(ProtoError::BadTag(t)),
        };
        r.end()?;
        Ok((id, req))
    }
}

fn put_commit_error(b: &mut BytesMut, e: &CommitError) {
    match e {
        CommitError::NotPrimary { primary } => {
            b.put_u8(0);
            put_opt_u64(b, primary.map(|p| p as u64));
        }
        CommitError::Retry => b.put_u8(1),
        CommitError::Conflict {
            oid,
            expected,
            actual,
        } => {
            b.put_u8(2);
            put_bytes(b, oid.as_bytes());
            b.put_u64(expected.0);
            b.put_u64(actual.0);
        }
        CommitError::Stale { request, last } => {
            b.put_u8(3);
            b.put_u64(*request);
            b.put_u64(*last);
        }
        CommitError::Invalid(m) => {
            b.put_u8(4);
            put_str(b, m);
        }
        CommitError::Busy => b.put_u8(5),
        CommitError::Down(m) => {
            b.put_u8(6);
            put_str(b, m);
        }
    }
}

fn get_commit_error(r: &mut Rd<'_>) -> Result<CommitError, ProtoError> {
    Ok(match r.u8()? {
        0 => CommitError::NotPrimary {
            primary: r.opt_u64()?.map(|p| p as ServerId),
        },
        1 => CommitError::Retry,
        2 => CommitError::Conflict {
            oid: r.oid()?,
            expected: Tid(r.u64()?),
            actual: Tid(r.u64()?),
        },
        3 => CommitError::Stale {
            request: r.u64()?,
            last: r.u64()?,
        },
        4 => CommitError::Invalid(r.str()?),
        5 => CommitError::Busy,
        6 => CommitError::Down(r.str()?),
        t => return Err(ProtoError::BadTag(t)),
    })
}

impl Response {
    /// The whole frame (length prefix included) answering request `id` (0: pushed).
    pub fn encode(&self, id: u64) -> Bytes {
        let mut b;
        match self {
            Response::Welcome { server } => {
                b = header(101, id);
                b.put_u32(*server);
            }
            Response::Commit(r) => {
                b = header(102, id);
                match r {
                    Ok(c) => {
                        b.put_u8(0);
                        b.put_u64(c.tid.0);
                        b.put_u64(c.epoch.0);
                        b.put_u8(c.duplicate as u8);
                    }
                    Err(e) => {
                        b.put_u8(1);
                        put_commit_error(&mut b, e);
                    }
                }
            }
            Response::Revision { rev, last_tid } => {
                b = header(103, id);
                match rev {
                    None => b.put_u8(0),
                    Some(r) => {
                        b.put_u8(1);
                        put_rev(&mut b, r);
                    }
                }
                b.put_u64(last_tid.0);
            }
            Response::Revisions(v) => {
                b = header(104, id);
                b.put_u32(v.len() as u32);
                for r in v {
                    put_rev(&mut b, r);
                }
            }
            Response::Last {
                tid,
                role,
                primary_last_known,
                behind_for_us,
            } => {
                b = header(105, id);
                b.put_u64(tid.0);
                put_role(&mut b, *role);
                b.put_u64(primary_last_known.0);
                put_opt_u64(&mut b, *behind_for_us);
            }
            Response::Transactions { txns, more } => {
                b = header(106, id);
                b.put_u8(*more as u8);
                b.put_u32(txns.len() as u32);
                for t in txns {
                    b.put_u64(t.tid.0);
                    put_meta(&mut b, &t.meta);
                    b.put_u32(t.records.len() as u32);
                    for r in &t.records {
                        put_bytes(&mut b, r.oid.as_bytes());
                        put_opt_bytes(&mut b, r.data.as_deref());
                    }
                }
            }
            Response::Status(s) => {
                b = header(107, id);
                b.put_u32(s.id);
                put_role(&mut b, s.role);
                b.put_u64(s.last_tid.0);
                b.put_u64(s.primary_last_known.0);
                put_opt_u64(&mut b, s.since_last_commit_us);
                put_opt_u64(&mut b, s.behind_for_us);
                match s.primary {
                    None => b.put_u8(0),
                    Some((p, e)) => {
                        b.put_u8(1);
                        b.put_u32(p);
                        b.put_u64(e.0);
                    }
                }
                b.put_u32(s.servers.len() as u32);
                for i in &s.servers {
                    b.put_u32(i.id);
                    put_str(&mut b, &i.name);
                    put_str(&mut b, &i.client_addr);
                    b.put_u8(i.in_view as u8);
                }
            }
            Response::Ok => b = header(108, id),
            Response::Invalidation { tid, oids } => {
                b = header(109, id);
                b.put_u64(tid.0);
                b.put_u32(oids.len() as u32);
                for o in oids {
                    put_bytes(&mut b, o.as_bytes());
                }
            }
            Response::Lost { server, tids, oids } => {
                b = header(110, id);
                b.put_u32(*server);
                b.put_u32(tids.len() as u32);
                for t in tids {
                    b.put_u64(t.0);
                }
                b.put_u32(oids.len() as u32);
                for o in oids {
                    put_bytes(&mut b, o.as_bytes());
                }
            }
            Response::RoleChange {
                server,
                role,
                primary,
            } => {
                b = header(112, id);
                b.put_u32(*server);
                put_role(&mut b, *role);
                match primary {
                    None => b.put_u8(0),
                    Some((p, e)) => {
                        b.put_u8(1);
                        b.put_u32(*p);
                        b.put_u64(e.0);
                    }
                }
            }
            Response::Topology { servers } => {
                b = header(113, id);
                b.put_u32(servers.len() as u32);
                for (sid, name, addr) in servers {
                    b.put_u32(*sid);
                    put_str(&mut b, name);
                    put_str(&mut b, addr);
                }
            }
            Response::Error { kind, message } => {
                b = header(111, id);
                b.put_u8(match kind {
                    ErrorKind::BadRequest => 0,
                    ErrorKind::Unauthorized => 1,
                    ErrorKind::Version => 2,
                    ErrorKind::Unavailable => 3,
                    ErrorKind::Internal => 4,
                });
                put_str(&mut b, message);
            }
        }
        finish(b)
    }

    /// Decodes a frame body (without its length prefix): `(id, response)`.
    pub fn decode(body: &[u8]) -> Result<(u64, Response), ProtoError> {
        let (kind, id, mut r) = open_body(body)?;
        let resp = match kind {
            101 => Response::Welcome { server: r.u32()? },
            102 => Response::Commit(if r.bool()? {
                Err(get_commit_error(&mut r)?)
            } else {
                Ok(Committed {
                    tid: Tid(r.u64()?),
                    epoch: Epoch(r.u64()?),
                    duplicate: r.bool()?,
                })
            }),
            103 => Response::Revision {
                rev: if r.bool()? { Some(r.rev()?) } else { None },
                last_tid: Tid(r.u64()?),
            },
            104 => {
                let n = r.count(13)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(r.rev()?);
                }
                Response::Revisions(v)
            }
            105 => Response::Last {
                tid: Tid(r.u64()?),
                role: r.role()?,
                primary_last_known: Tid(r.u64()?),
                behind_for_us: r.opt_u64()?,
            },
            106 => {
                let more = r.bool()?;
                let n = r.count(32)?;
                let mut txns = Vec::with_capacity(n);
                for _ in 0..n {
                    let tid = Tid(r.u64()?);
                    let meta = r.meta()?;
                    let k = r.count(5)?;
                    let mut records = Vec::with_capacity(k);
                    for _ in 0..k {
                        records.push(Record {
                            oid: r.oid()?,
                            data: r.opt_bytes()?,
                            expected_serial: None,
                        });
                    }
                    txns.push(Transaction { tid, meta, records });
                }
                Response::Transactions { txns, more }
            }
            107 => {
                let id_ = r.u32()?;
                let role = r.role()?;
                let last_tid = Tid(r.u64()?);
                let primary_last_known = Tid(r.u64()?);
                let since_last_commit_us = r.opt_u64()?;
                let behind_for_us = r.opt_u64()?;
                let primary = if r.bool()? {
                    Some((r.u32()?, Epoch(r.u64()?)))
                } else {
                    None
                };
                let n = r.count(13)?;
                let mut servers = Vec::with_capacity(n);
                for _ in 0..n {
                    servers.push(ServerInfo {
                        id: r.u32()?,
                        name: r.str()?,
                        client_addr: r.str()?,
                        in_view: r.bool()?,
                    });
                }
                Response::Status(StatusInfo {
                    id: id_,
                    role,
                    last_tid,
                    primary_last_known,
                    since_last_commit_us,
                    behind_for_us,
                    primary,
                    servers,
                })
            }
            108 => Response::Ok,
            109 => {
                let tid = Tid(r.u64()?);
                let n = r.count(4)?;
                let mut oids = Vec::with_capacity(n);
                for _ in 0..n {
                    oids.push(r.oid()?);
                }
                Response::Invalidation { tid, oids }
            }
            110 => {
                let server = r.u32()?;
                let n = r.count(8)?;
                let mut tids = Vec::with_capacity(n);
                for _ in 0..n {
                    tids.push(Tid(r.u64()?));
                }
                let n = r.count(4)?;
                let mut oids = Vec::with_capacity(n);
                for _ in 0..n {
                    oids.push(r.oid()?);
                }
                Response::Lost { server, tids, oids }
            }
            111 => {
                let kind = match r.u8()? {
                    0 => ErrorKind::BadRequest,
                    1 => ErrorKind::Unauthorized,
                    2 => ErrorKind::Version,
                    3 => ErrorKind::Unavailable,
                    4 => ErrorKind::Internal,
                    t => return Err(ProtoError::BadTag(t)),
                };
                Response::Error {
                    kind,
                    message: r.str()?,
                }
            }
            112 => Response::RoleChange {
                server: r.u32()?,
                role: r.role()?,
                primary: if r.bool()? {
                    Some((r.u32()?, Epoch(r.u64()?)))
                } else {
                    None
                },
            },
            113 => {
                let n = r.count(12)?;
                let mut servers = Vec::with_capacity(n);
                for _ in 0..n {
                    servers.push((r.u32()?, r.str()?, r.str()?));
                }
                Response::Topology { servers }
            }
            t => return Err(ProtoError::BadTag(t)),
        };
        r.end()?;
        Ok((id, resp))
    }
}

#[cfg(feature = "net")]
/// Reads one frame body from `r` (async), enforcing [`FRAME_MAX`]. `Ok(None)` at a clean end.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_up_to(r, FRAME_MAX).await
}

#[cfg(feature = "net")]
/// Reads the first frame of a connection, enforcing [`HELLO_FRAME_MAX`].
pub async fn read_hello_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_up_to(r, HELLO_FRAME_MAX).await
}

#[cfg(feature = "net")]
/// Reads one frame body of at most `max` bytes ([`FRAME_MAX`] or [`HELLO_FRAME_MAX`]). The
/// buffer grows with the bytes that arrive, not with the length the peer announced.
async fn read_frame_up_to<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > FRAME_MAX {
        return Err(FrameError::Proto(ProtoError::TooLarge(n)));
    }
    if n > max {
        return Err(FrameError::Proto(ProtoError::TooLargeBeforeHello(n)));
    }
    let mut body = Vec::with_capacity(n.min(64 << 10));
    let got = r
        .take(n as u64)
        .read_to_end(&mut body)
        .await
        .map_err(FrameError::Io)?;
    if got < n {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(body))
}

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

#[cfg(test)]
mod tests {
    use super::*;

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

    proptest::proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = Request::decode(&b);
            let _ = Response::decode(&b);
        }
    }
}
