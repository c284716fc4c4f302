//! The TCP client.
//!
//! Give it any list of server addresses: it asks one for the topology (every server's client
//! address, who is primary), sends writes to the primary, follows redirects, and on a failover
//! or swap reconnects and retries with the same idempotency key (client id, request number), so
//! the application sees neither. Reads go to the primary, or to any server whose lag behind the
//! newest transaction it knows of is within the caller's bound.
//!
//! Time bounds: the connect, the TLS handshake and the hello each wait at most 500 ms; a
//! commit attempt waits `commit_patience` (500 ms by default) before the request goes
//! elsewhere with the same key. Where reads go is [`ReadFrom`]: the primary, any replica within a lag bound in
//! transactions and in time, or one named server ([`Client::load_reporting`] says how stale the
//! answer was). The optional object cache ([`Client::enable_cache`]) follows the pushed
//! invalidation stream: a revision read from a server is cached only if no invalidation of that
//! object arrived during the read and the answering server had applied the last commit that
//! invalidated it.

use crate::framing::FrameCodec;
use crate::proto::{ErrorKind, Request, Response, StatusInfo, FRAME_MAX};
use crate::retry::{Answer, CommitRetry, Verdict, RETRY_PAUSE};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use replica::{CommitError, Committed, ServerId};
use std::collections::BTreeMap;
use std::time::Duration;
use storage::{Oid, Record, Revision, Tid, Transaction, TxnMeta};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Why a call failed for the application.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A final answer to a commit (conflict, invalid, stale request number).
    #[error(transparent)]
    Commit(CommitError),
    /// The server refused the request (bad request, unauthorized, version, unavailable).
    #[error("{kind:?}: {message}")]
    Refused {
        /// What kind.
        kind: ErrorKind,
        /// Why.
        message: String,
    },
    /// No server gave an outcome before the deadline.
    #[error("no server answered within {0:?}")]
    Timeout(Duration),
    /// No address could be reached.
    #[error("cannot reach any server: {0}")]
    Unreachable(String),
    /// The server asked for cannot prove it is within the read's bounds.
    #[error("server {server} is too stale for this read: {why}")]
    TooStale {
        /// The server.
        server: ServerId,
        /// What it reported, against which bound.
        why: String,
    },
}

/// A client's TLS configuration.
pub type Tls = std::sync::Arc<tokio_rustls::rustls::ClientConfig>;

/// A connection that said hello: frames of up to [`FRAME_MAX`] both ways, an answer's
/// announced length reserved as soon as it is read (the server is the one this client chose
/// to connect to, and authenticated with TLS where configured). Reading a frame is cancel-safe:
/// a read given up on keeps what came in the codec's buffer.
struct Conn {
    stream: Framed<Box<dyn crate::ClientStream>, FrameCodec>,
    next_id: u64,
    server: ServerId,
}

impl Conn {
    /// Connects and says hello. A live server answers at once; one that is frozen (SIGSTOP,
    /// a stalled VM) accepts the connection in its kernel and never answers, so the hello, like
    /// the connect, waits at most 500 ms.
    async fn open(addr: &str, token: &Bytes, tls: Option<&Tls>) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{addr}: connect timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream: Box<dyn crate::ClientStream> = match tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = crate::tls::server_name(addr)?;
                let hs = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp);
                let s = tokio::time::timeout(Duration::from_millis(500), hs)
                    .await
                    .map_err(|_| format!("{addr}: TLS handshake timed out"))?
                    .map_err(|e| format!("{addr}: TLS: {e}"))?;
                Box::new(s)
            }
        };
        let mut c = Conn {
            stream: Framed::new(stream, FrameCodec::reserving(FRAME_MAX)),
            next_id: 1,
            server: 0,
        };
        match c
            .call_within(
                Request::Hello {
                    token: token.clone(),
                },
                Duration::from_millis(500),
            )
            .await?
        {
            Response::Welcome { server } => {
                c.server = server;
                Ok(c)
            }
            Response::Error { message, .. } => Err(format!("{addr}: {message}")),
            other => Err(format!("{addr}: unexpected answer {other:?}")),
        }
    }

    async fn call(&mut self, req: Request) -> Result<Response, String> {
        self.call_within(req, Duration::from_secs(5)).await
    }

    /// A call that gives up after `patience` without an answer (the server may be cut off:
    /// a partition closes nothing, so only time tells).
    async fn call_within(&mut self, req: Request, patience: Duration) -> Result<Response, String> {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .send(req.encode_body(id))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let body = match tokio::time::timeout(patience, self.next_frame()).await {
                Err(_) => return Err(format!("no answer within {patience:?}")),
                Ok(Ok(Some(b))) => b,
                Ok(Ok(None)) => return Err("connection closed".into()),
                Ok(Err(e)) => return Err(e.to_string()),
            };
            let (rid, resp) = Response::decode(&body).map_err(|e| e.to_string())?;
            if rid == id || rid == 0 && matches!(resp, Response::Error { .. }) {
                return Ok(resp);
            }
        }
    }

    /// The next frame's body; `Ok(None)` at a clean end of the connection.
    async fn next_frame(&mut self) -> Result<Option<BytesMut>, crate::proto::FrameError> {
        self.stream.next().await.transpose()
    }
}

/// Where reads may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary only (always current).
    Primary,
    /// Any server that proves it is within both bounds, else the primary. A server cut off
    /// from the primary stops learning how far the others went, so a bound in transactions
    /// alone passes however stale it is: `max_staleness` bounds the time since it last knew
    /// it was current (a server that cannot say is skipped).
    Replica {
        /// The bound, in transactions behind the newest it knows of.
        max_lag: u64,
        /// The bound in time (`None`: none).
        max_staleness: Option<Duration>,
    },
    /// This server only, whatever its role: refused with [`ClientError::TooStale`] when it
    /// cannot prove it is within the bounds given (none given: always served; the answer says
    /// how stale it is, see [`Client::load_reporting`]).
    Server {
        /// The server.
        id: ServerId,
        /// The bound in transactions, if any.
        max_lag: Option<u64>,
        /// The bound in time, if any.
        max_staleness: Option<Duration>,
    },
}

/// How stale the server that answered a read was when it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStaleness {
    /// The server.
    pub server: ServerId,
    /// Its role.
    pub role: replica::Role,
    /// Its last transaction.
    pub last_tid: Tid,
    /// Transactions behind the newest it knows of.
    pub lag: u64,
    /// How long it may have been missing commits (zero: current; `None`: it has not been
    /// current since it started).
    pub behind_for: Option<Duration>,
}

impl ReadStaleness {
    fn from_last(server: ServerId, r: &Response) -> Option<ReadStaleness> {
        match r {
            Response::Last {
                tid,
                role,
                primary_last_known,
                behind_for_us,
            } => Some(ReadStaleness {
                server,
                role: *role,
                last_tid: *tid,
                lag: primary_last_known.0.saturating_sub(tid.0),
                behind_for: behind_for_us.map(Duration::from_micros),
            }),
            _ => None,
        }
    }

    /// Why it is outside the bounds, if it is.
    fn outside(&self, max_lag: Option<u64>, max_staleness: Option<Duration>) -> Option<String> {
        if let Some(m) = max_lag {
            if self.lag > m {
                return Some(format!("{} transactions behind (bound {m})", self.lag));
            }
        }
        if let Some(m) = max_staleness {
            match self.behind_for {
                None => return Some("not current since it started".into()),
                Some(b) if b > m => {
                    return Some(format!(
                        "may have missed commits for {:.3} s (bound {:.3} s)",
                        b.as_secs_f64(),
                        m.as_secs_f64()
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// A transaction being built: `begin`, `store`, then [`Client::commit`].
#[derive(Clone, Debug, Default)]
pub struct Txn {
    /// Metadata.
    pub meta: TxnMeta,
    /// The writes.
    pub records: Vec<Record>,
}

impl Txn {
    /// Writes `data` (None: delete) to `oid`, based on the revision `serial` the caller read
    /// (None: a blind write). The commit fails with a conflict if `oid` changed since.
    pub fn store(&mut self, oid: Oid, data: Option<Bytes>, serial: Option<Tid>) -> &mut Txn {
        self.records.push(Record {
            oid,
            data,
            expected_serial: serial,
        });
        self
    }
}

/// The object cache a subscription keeps coherent (see [`Client::enable_cache`]).
#[derive(Default)]
struct CacheState {
    entries: BTreeMap<Oid, Revision>,
    /// The invalidation sequence number at which each object was last invalidated, and the
    /// tid of that commit.
    invalidated: BTreeMap<Oid, (u64, Tid)>,
    seq: u64,
    /// Everything cached before this sequence number is gone (a reconnect, a lagging stream).
    flushed_at: u64,
    /// Whether the invalidation stream is up: nothing is cached or served while it is not.
    connected: bool,
    /// The primary the pushed role changes name.
    primary: Option<ServerId>,
    /// A pushed topology not yet taken by the client (server id -> client address).
    topology: Option<BTreeMap<ServerId, String>>,
    max_entries: usize,
    hits: u64,
}

impl CacheState {
    fn flush(&mut self) {
        self.seq += 1;
        self.flushed_at = self.seq;
        self.entries.clear();
        self.invalidated.clear();
    }

    fn invalidate(&mut self, tid: Tid, oids: &[Oid]) {
        self.seq += 1;
        for o in oids {
            self.entries.remove(o);
            self.invalidated.insert(o.clone(), (self.seq, tid));
        }
        if self.invalidated.len() > 100_000 {
            self.flush();
        }
    }
}

/// A client of a storage cluster.
pub struct Client {
    cache: Option<std::sync::Arc<std::sync::Mutex<CacheState>>>,
    /// TLS to the servers (`None`: plain TCP).
    tls: Option<Tls>,
    seeds: Vec<String>,
    token: Bytes,
    client: u64,
    next_request: u64,
    /// server id -> client address.
    topology: BTreeMap<ServerId, String>,
    conns: BTreeMap<ServerId, Conn>,
    /// The primary last learned and the servers that just failed us ([`CommitRetry`]).
    route: CommitRetry<ServerId>,
    /// Attempts beyond the first (redirects and retries), over this client's life.
    pub retries: u64,
    /// The server that answered the last successful commit.
    pub last_answered_by: Option<ServerId>,
    /// How long one commit attempt waits for its answer before the client tries elsewhere
    /// (with the same idempotency key), plus 1 s per 50 MB of the commit (a large commit is
    /// not sent again while it is still being written). Default 500 ms: far above a commit's
    /// latency (p99.9 under 64 clients is tens of ms), and within the default failover time
    /// (about 0.8 s), so that a client waiting on a frozen or cut-off primary tries the new
    /// one as soon as it is elected.
    pub commit_patience: Duration,
}

impl Client {
    /// Connects to any of `addrs` and learns the topology. `client` must be unique in the
    /// cluster and stable for this client's idempotency keys.
    pub async fn connect(
        addrs: &[String],
        token: Bytes,
        client: u64,
    ) -> Result<Client, ClientError> {
        Client::connect_with(addrs, token, client, None).await
    }

    /// [`Client::connect`] over TLS (`tls`: see [`crate::tls::client_config`]) when given.
    pub async fn connect_with(
        addrs: &[String],
        token: Bytes,
        client: u64,
        tls: Option<Tls>,
    ) -> Result<Client, ClientError> {
        let mut c = Client {
            tls,
            seeds: addrs.to_vec(),
            token,
            client,
            next_request: 1,
            topology: BTreeMap::new(),
            conns: BTreeMap::new(),
            route: CommitRetry::new(client as usize),
            retries: 0,
            last_answered_by: None,
            commit_patience: Duration::from_millis(500),
            cache: None,
        };
        c.refresh().await?;
        Ok(c)
    }

    /// Keeps an object cache of up to `max_entries` revisions, coherent with the cluster: a
    /// background task subscribes to the invalidation stream of a server (any; it moves to
    /// another when that one goes away) and drops every object a commit or a loss report
    /// names. While the stream is down the cache is empty and unused; a reconnect flushes it
    /// (what was missed is unknown). Pushed role changes also tell this client the new primary.
    /// Cached reads are those of [`Client::load`] with [`ReadFrom::Replica`]: a cache is a
    /// replica too, behind by at most the invalidations in flight.
    pub fn enable_cache(&mut self, max_entries: usize) {
        let state = std::sync::Arc::new(std::sync::Mutex::new(CacheState {
            max_entries: max_entries.max(1),
            ..CacheState::default()
        }));
        self.cache = Some(state.clone());
        let addrs: Vec<String> = self
            .topology
            .values()
            .cloned()
            .chain(self.seeds.iter().cloned())
            .collect();
        let token = self.token.clone();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let mut turn = 0usize;
            loop {
                if std::sync::Arc::strong_count(&state) == 1 || addrs.is_empty() {
                    return; // the client is gone
                }
                turn += 1;
                let addr = &addrs[turn % addrs.len()];
                if let Ok(mut conn) = Conn::open(addr, &token, tls.as_ref()).await {
                    if let Ok(Response::Ok) = conn.call(Request::Subscribe).await {
                        {
                            let mut st = state.lock().expect("cache lock");
                            st.flush();
                            st.connected = true;
                        }
                        loop {
                            let frame =
                                tokio::time::timeout(Duration::from_secs(1), conn.next_frame())
                                    .await;
                            let body = match frame {
                                Err(_) => {
                                    if std::sync::Arc::strong_count(&state) == 1 {
                                        return;
                                    }
                                    continue;
                                }
                                Ok(Ok(Some(b))) => b,
                                Ok(_) => break,
                            };
                            let Ok((_, resp)) = Response::decode(&body) else {
                                break;
                            };
                            let mut st = state.lock().expect("cache lock");
                            match resp {
                                Response::Invalidation { tid, oids }
                                    if tid == Tid::ZERO && oids.is_empty() =>
                                {
                                    st.flush()
                                }
                                Response::Invalidation { tid, oids } => st.invalidate(tid, &oids),
                                // A loss: nothing newer to wait for, only older states to drop.
                                Response::Lost { oids, .. } => st.invalidate(Tid::ZERO, &oids),
                                Response::RoleChange { primary, .. } => {
                                    st.primary = primary.map(|p| p.0)
                                }
                                Response::Topology { servers } => {
                                    st.topology = Some(
                                        servers.into_iter().map(|(id, _, a)| (id, a)).collect(),
                                    )
                                }
                                _ => {}
                            }
                        }
                    }
                }
                {
                    let mut st = state.lock().expect("cache lock");
                    st.connected = false;
                    st.flush();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Reads served from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache
            .as_ref()
            .map(|c| c.lock().expect("cache lock").hits)
            .unwrap_or(0)
    }

    /// The topology last learned: server id -> client address.
    pub fn topology(&self) -> &BTreeMap<ServerId, String> {
        &self.topology
    }

    /// The primary last learned.
    pub fn primary(&self) -> Option<ServerId> {
        self.route.primary()
    }

    /// Asks the servers (known ones first, then the seeds) for the topology and the primary.
    pub async fn refresh(&mut self) -> Result<StatusInfo, ClientError> {
        // Servers that just failed us are asked last (a partitioned one never answers).
        let mut addrs: Vec<String> = self
            .topology
            .iter()
            .filter(|(id, _)| !self.route.is_suspect(**id))
            .map(|(_, a)| a.clone())
            .collect();
        addrs.extend(self.seeds.iter().cloned());
        addrs.extend(
            self.topology
                .iter()
                .filter(|(id, _)| self.route.is_suspect(**id))
                .map(|(_, a)| a.clone()),
        );
        let mut last_err = String::from("no address");
        for a in addrs {
            let mut conn = match Conn::open(&a, &self.token, self.tls.as_ref()).await {
                Ok(c) => c,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            // As short as a hello: a frozen server must not hold up the search.
            match conn
                .call_within(Request::Status, Duration::from_millis(500))
                .await
            {
                Ok(Response::Status(st)) => {
                    self.topology = st
                        .servers
                        .iter()
                        .map(|s| (s.id, s.client_addr.clone()))
                        .collect();
                    self.route.set_primary(st.primary.map(|p| p.0));
                    self.conns.insert(conn.server, conn);
                    return Ok(st);
                }
                Ok(Response::Error { kind, message }) => {
                    return Err(ClientError::Refused { kind, message })
                }
                Ok(other) => last_err = format!("unexpected {other:?}"),
                Err(e) => last_err = e,
            }
        }
        Err(ClientError::Unreachable(last_err))
    }

    async fn call_on(&mut self, server: ServerId, req: Request) -> Result<Response, String> {
        self.call_on_within(server, req, Duration::from_secs(5))
            .await
    }

    async fn call_on_within(
        &mut self,
        server: ServerId,
        req: Request,
        patience: Duration,
    ) -> Result<Response, String> {
        if !self.conns.contains_key(&server) {
            let addr = self
                .topology
                .get(&server)
                .cloned()
                .ok_or_else(|| format!("server {server} unknown"))?;
            let c = Conn::open(&addr, &self.token, self.tls.as_ref()).await?;
            self.conns.insert(server, c);
        }
        let conn = self.conns.get_mut(&server).expect("inserted");
        match conn.call_within(req, patience).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conns.remove(&server);
                Err(e)
            }
        }
    }

    /// Starts a transaction.
    pub fn begin(&self) -> Txn {
        Txn::default()
    }

    /// Commits `txn` on the primary, through redirects, failovers and swaps, until `deadline`.
    pub async fn commit(&mut self, txn: Txn, deadline: Duration) -> Result<Committed, ClientError> {
        let request = self.next_request;
        self.next_request += 1;
        let req = Request::Commit {
            client: self.client,
            request,
            meta: txn.meta,
            records: txn.records,
        };
        self.on_primary(req, deadline).await
    }

    /// Adds or removes a read replica (see [`servercore::membership`]) through the primary, with
    /// the same redirects and idempotent retries as a commit.
    pub async fn change_membership(
        &mut self,
        change: servercore::membership::MembershipChange,
        deadline: Duration,
    ) -> Result<Committed, ClientError> {
        let request = self.next_request;
        self.next_request += 1;
        let req = match change {
            servercore::membership::MembershipChange::Add(server) => Request::AddReplica {
                client: self.client,
                request,
                server,
            },
            servercore::membership::MembershipChange::Remove(id) => Request::RemoveReplica {
                client: self.client,
                request,
                id,
            },
        };
        self.on_primary(req, deadline).await
    }

    /// Gives servers a vote and takes it from others (see [`replica::voters`]) through the
    /// primary, with the same redirects and retries as a commit (asking again asks for the
    /// same change). New voters must have joined as replicas; the answer comes once they
    /// caught up and the new voters are durable on a majority of them.
    pub async fn change_voters(
        &mut self,
        add: Vec<(ServerId, u32)>,
        remove: Vec<ServerId>,
        deadline: Duration,
    ) -> Result<Committed, ClientError> {
        self.on_primary(Request::ChangeVoters { add, remove }, deadline)
            .await
    }

    /// Takes what the invalidation stream pushed: a topology and a primary.
    fn take_pushes(&mut self) {
        if let Some(c) = &self.cache {
            let mut st = c.lock().expect("cache lock");
            if let Some(t) = st.topology.take() {
                self.topology = t;
            }
            if self.route.primary().is_none() {
                self.route.set_primary(st.primary);
            }
        }
    }

    /// Sends a commit-like request (answered by `Response::Commit`) to the primary until it
    /// is answered or `deadline` passes.
    async fn on_primary(
        &mut self,
        req: Request,
        deadline: Duration,
    ) -> Result<Committed, ClientError> {
        let started = tokio::time::Instant::now();
        let mut first = true;
        let patience =
            self.commit_patience + Duration::from_secs_f64(req.payload_bytes() as f64 / 50e6);
        loop {
            if started.elapsed() > deadline {
                return Err(ClientError::Timeout(deadline));
            }
            if !first {
                self.retries += 1;
            }
            first = false;
            // A topology and a primary pushed on the invalidation stream, if there is one.
            self.take_pushes();
            if self.route.primary().is_none() {
                // No primary known: ask around first.
                let _ = self.refresh().await;
            }
            let servers: Vec<ServerId> = self.topology.keys().copied().collect();
            let Some(target) = self.route.next(&servers) else {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            };
            let answer = self.call_on_within(target, req.clone(), patience).await;
            let said = match &answer {
                Ok(Response::Commit(r)) => Answer::of(r, Some),
                Ok(Response::Error {
                    kind: ErrorKind::Unauthorized | ErrorKind::Version | ErrorKind::BadRequest,
                    ..
                }) => Answer::Final,
                // A closed connection, a silent server: the outcome is unknown; the same
                // request number makes the retry safe.
                Ok(_) | Err(_) => Answer::Unknown,
            };
            let verdict = self.route.on_answer(target, said);
            match (verdict, answer) {
                (Verdict::Retry(pause), _) => {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                (Verdict::Done, Ok(Response::Commit(Ok(c)))) => {
                    self.last_answered_by = Some(target);
                    return Ok(c);
                }
                (Verdict::Done, Ok(Response::Commit(Err(e)))) => {
                    return Err(ClientError::Commit(e))
                }
                (Verdict::Done, Ok(Response::Error { kind, message })) => {
                    return Err(ClientError::Refused { kind, message })
                }
                // The policy ends a request only on the answers above.
                (Verdict::Done, _) => return Err(ClientError::Timeout(deadline)),
            }
        }
    }

    async fn read(&mut self, from: ReadFrom, req: Request) -> Result<Response, ClientError> {
        Ok(self.read_reporting(from, req).await?.0)
    }

    /// A read, and how stale the server that answered was (asked just before: its last
    /// transaction, lag and time behind). The primary's answers count as current.
    async fn read_reporting(
        &mut self,
        from: ReadFrom,
        req: Request,
    ) -> Result<(Response, ReadStaleness), ClientError> {
        self.take_pushes();
        if let ReadFrom::Server {
            id,
            max_lag,
            max_staleness,
        } = from
        {
            let st = match self.call_on(id, Request::LastTransaction).await {
                Ok(r) => ReadStaleness::from_last(id, &r),
                Err(e) => return Err(ClientError::Unreachable(e)),
            };
            let st = st.ok_or_else(|| ClientError::TooStale {
                server: id,
                why: "it does not serve reads now".into(),
            })?;
            if let Some(why) = st.outside(max_lag, max_staleness) {
                return Err(ClientError::TooStale { server: id, why });
            }
            return match self.call_on(id, req).await {
                Ok(Response::Error { kind, message }) => {
                    Err(ClientError::Refused { kind, message })
                }
                Ok(r) => Ok((r, st)),
                Err(e) => Err(ClientError::Unreachable(e)),
            };
        }
        let mut order: Vec<ServerId> = Vec::new();
        if let ReadFrom::Replica { .. } = from {
            // Prefer a replica other than the primary, in id order (spreads readers by id).
            let mut others: Vec<ServerId> = self
                .topology
                .keys()
                .copied()
                .filter(|s| Some(*s) != self.route.primary())
                .collect();
            let n = others.len().max(1);
            others.rotate_left(self.client as usize % n);
            order.extend(others);
        }
        if self.route.primary().is_none() {
            let _ = self.refresh().await;
        }
        if let Some(p) = self.route.primary() {
            order.push(p);
        }
        let mut last = String::from("no server");
        for s in order {
            let mut st = ReadStaleness {
                server: s,
                role: replica::Role::Primary,
                last_tid: Tid::ZERO,
                lag: 0,
                behind_for: Some(Duration::ZERO),
            };
            if let ReadFrom::Replica {
                max_lag,
                max_staleness,
            } = from
            {
                if Some(s) != self.route.primary() {
                    let known = match self.call_on(s, Request::LastTransaction).await {
                        Ok(r) => ReadStaleness::from_last(s, &r),
                        Err(_) => None,
                    };
                    match known {
                        Some(k) if k.outside(Some(max_lag), max_staleness).is_none() => st = k,
                        _ => continue,
                    }
                }
            }
            match self.call_on(s, req.clone()).await {
                Ok(Response::Error { kind, message }) => last = format!("{kind:?}: {message}"),
                Ok(r) => {
                    if let Response::Revision { last_tid, .. } = &r {
                        st.last_tid = st.last_tid.max(*last_tid);
                    }
                    return Ok((r, st));
                }
                Err(e) => last = e,
            }
        }
        Err(ClientError::Unreachable(last))
    }

    /// The current revision of `oid` (`None`: never written) read as `from` says, and how
    /// stale the answering server was: for a read that must say what it risks (a partitioned
    /// replica serves its last state and reports for how long it may have missed commits).
    /// Does not use the object cache.
    pub async fn load_reporting(
        &mut self,
        oid: Oid,
        from: ReadFrom,
    ) -> Result<(Option<Revision>, ReadStaleness), ClientError> {
        match self.read_reporting(from, Request::Load { oid }).await? {
            (Response::Revision { rev, .. }, st) => Ok((rev, st)),
            (other, _) => Err(ClientError::Unreachable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The current revision of `oid` (`None`: never written), and the answering server's last
    /// transaction.
    pub async fn load(
        &mut self,
        oid: Oid,
        from: ReadFrom,
    ) -> Result<(Option<Revision>, Tid), ClientError> {
        let cached = match from {
            ReadFrom::Replica { .. } => self.cache.clone(),
            ReadFrom::Primary | ReadFrom::Server { .. } => None,
        };
        let mut seq0 = None;
        if let Some(c) = &cached {
            let mut st = c.lock().expect("cache lock");
            if st.connected {
                if let Some(rev) = st.entries.get(&oid).cloned() {
                    st.hits += 1;
                    let t = rev.tid;
                    return Ok((Some(rev), t));
                }
                seq0 = Some(st.seq);
            }
        }
        match self.read(from, Request::Load { oid: oid.clone() }).await? {
            Response::Revision { rev, last_tid } => {
                if let (Some(c), Some(seq0), Some(r)) = (&cached, seq0, &rev) {
                    // Cached only if no invalidation of it (nor a flush) came in meanwhile.
                    let mut st = c.lock().expect("cache lock");
                    // ... and only if the answering server had applied the last commit that
                    // invalidated it (a lagging replica may answer with an older state).
                    let touched = st
                        .invalidated
                        .get(&oid)
                        .is_some_and(|(s, t)| *s > seq0 || last_tid < *t);
                    if st.connected && !touched && st.flushed_at <= seq0 {
                        if st.entries.len() >= st.max_entries {
                            st.entries.clear();
                        }
                        st.entries.insert(oid, r.clone());
                    }
                }
                Ok((rev, last_tid))
            }
            other => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
        }
    }

    /// The newest revision of `oid` older than `tid`.
    pub async fn load_before(
        &mut self,
        oid: Oid,
        tid: Tid,
    ) -> Result<Option<Revision>, ClientError> {
        match self
            .read(ReadFrom::Primary, Request::LoadBefore { oid, tid })
            .await?
        {
            Response::Revision { rev, .. } => Ok(rev),
            other => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
        }
    }

    /// Up to `n` revisions of `oid`, newest first.
    pub async fn history(&mut self, oid: Oid, n: u32) -> Result<Vec<Revision>, ClientError> {
        match self
            .read(ReadFrom::Primary, Request::History { oid, n })
            .await?
        {
            Response::Revisions(v) => Ok(v),
            other => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
        }
    }

    /// The primary's last transaction.
    pub async fn last_transaction(&mut self) -> Result<Tid, ClientError> {
        match self
            .read(ReadFrom::Primary, Request::LastTransaction)
            .await?
        {
            Response::Last { tid, .. } => Ok(tid),
            other => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
        }
    }

    /// Transactions in `[start, stop]`, a page of at most `max`, and whether more follow.
    pub async fn iterate(
        &mut self,
        start: Tid,
        stop: Tid,
        max: u32,
    ) -> Result<(Vec<Transaction>, bool), ClientError> {
        match self
            .read(ReadFrom::Primary, Request::Iterate { start, stop, max })
            .await?
        {
            Response::Transactions { txns, more } => Ok((txns, more)),
            other => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
        }
    }

    /// The status of every configured server (unreachable ones left out).
    pub async fn status_all(&mut self) -> Vec<Result<StatusInfo, String>> {
        let ids: Vec<ServerId> = self.topology.keys().copied().collect();
        let mut out = Vec::new();
        for s in ids {
            out.push(match self.call_on(s, Request::Status).await {
                Ok(Response::Status(st)) => Ok(st),
                Ok(other) => Err(format!("s{s}: unexpected {other:?}")),
                Err(e) => Err(format!("s{s}: {e}")),
            });
        }
        out
    }

    /// Server `server`'s lost-transactions archive (the first `max` entries).
    pub async fn lost_archive(
        &mut self,
        server: ServerId,
        max: u32,
    ) -> Result<Vec<Transaction>, ClientError> {
        match self.call_on(server, Request::LostArchive { max }).await {
            Ok(Response::Transactions { txns, .. }) => Ok(txns),
            Ok(Response::Error { kind, message }) => Err(ClientError::Refused { kind, message }),
            Ok(other) => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
            Err(e) => Err(ClientError::Unreachable(e)),
        }
    }

    /// Asks for a planned swap to `to`.
    pub async fn switchover(&mut self, to: ServerId) -> Result<(), ClientError> {
        let via = self
            .route
            .primary()
            .or_else(|| self.topology.keys().next().copied())
            .unwrap_or(0);
        match self.call_on(via, Request::Switchover { to }).await {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error { kind, message }) => Err(ClientError::Refused { kind, message }),
            Ok(other) => Err(ClientError::Unreachable(format!("unexpected {other:?}"))),
            Err(e) => Err(ClientError::Unreachable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replica::{Epoch, Role};

    /// A server of one, speaking the client port through [`FrameCodec::client_port`] as the
    /// real one does: its limit rises once the Hello is accepted.
    async fn fake_server(data: Bytes) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let me = addr.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let me = me.clone();
                let data = data.clone();
                tokio::spawn(async move {
                    let mut f = Framed::new(sock, FrameCodec::client_port());
                    while let Some(Ok(body)) = f.next().await {
                        let (id, req) = Request::decode(&body).expect("a well-formed request");
                        let answer = match req {
                            Request::Hello { .. } => {
                                f.codec_mut().hello_accepted();
                                Response::Welcome { server: 1 }
                            }
                            Request::Status => Response::Status(StatusInfo {
                                id: 1,
                                role: Role::Primary,
                                last_tid: Tid(5),
                                primary_last_known: Tid(5),
                                since_last_commit_us: None,
                                behind_for_us: Some(0),
                                primary: Some((1, Epoch(1))),
                                servers: vec![crate::proto::ServerInfo {
                                    id: 1,
                                    name: "s1".into(),
                                    client_addr: me.clone(),
                                    in_view: true,
                                }],
                            }),
                            Request::Load { oid } => {
                                // A pushed frame first: the client skips it.
                                let push = Response::Invalidation {
                                    tid: Tid(4),
                                    oids: vec![],
                                };
                                f.send(push.encode_body(0)).await.unwrap();
                                Response::Revision {
                                    rev: Some(Revision {
                                        oid,
                                        tid: Tid(5),
                                        data: Some(data.clone()),
                                    }),
                                    last_tid: Tid(5),
                                }
                            }
                            Request::Commit { records, .. } => {
                                assert_eq!(records[0].data.as_ref(), Some(&data));
                                Response::Commit(Ok(Committed {
                                    tid: Tid(6),
                                    epoch: Epoch(1),
                                    duplicate: false,
                                }))
                            }
                            _ => Response::Error {
                                kind: ErrorKind::Internal,
                                message: "not here".into(),
                            },
                        };
                        if f.send(answer.encode_body(id)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Connect, read and commit through the framed connection, with frames far larger than
    /// a read of the socket (1 MiB each way).
    #[tokio::test]
    async fn a_client_talks_to_a_framed_server() {
        let data = Bytes::from(vec![0x5a; 1 << 20]);
        let addr = fake_server(data.clone()).await;
        let mut c = Client::connect(&[addr], Bytes::new(), 1).await.unwrap();
        assert_eq!(c.primary(), Some(1));
        let (rev, last) = c.load(Oid::from_u64(1), ReadFrom::Primary).await.unwrap();
        assert_eq!(last, Tid(5));
        assert_eq!(rev.unwrap().data, Some(data.clone()));
        let mut t = c.begin();
        t.store(Oid::from_u64(1), Some(data), Some(Tid(5)));
        let done = c.commit(t, Duration::from_secs(5)).await.unwrap();
        assert_eq!(done.tid, Tid(6));
    }
}
