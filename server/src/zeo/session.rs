//! One ZEO connection: the handshake, `register`, and every method a stock `ClientStorage`
//! and ZODB's storage tests call.
//!
//! The reading loop never blocks on a commit: transaction calls (`tpc_begin` .. `tpc_finish`,
//! `new_oids`, `pack`) go in order to the connection's transaction task, and reads run as tasks
//! of their own (a ZODB client multiplexes the loads of many threads on one connection).
//! Every frame to the client goes through the connection's [`super::ConnOut`] queue, drained
//! by a writer task; bad input closes this connection only, with a log line.

use super::codec::{self, bin, bytes8, bytes_of, map, Call, Value};
use super::commit::{self, Held, Store};
use super::tid::{self, to_store, to_zeo};
use super::ZeoFace;
use crate::ReadError;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use replica::{CommitError, CommitRequest, Role, TidChoice};
use standby_client::framing::{FrameCodec, FrameError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use storage::{Direction, Oid, Record, Storage, StorageError, Tid, TidRange, TxnMeta};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;

/// The newest store tid a ZEO tid may map to (tids at or above 2^62 are refused everywhere).
const TID_LIMIT: Tid = Tid((1 << 62) - 1);

/// Accepts connections until `stop` turns true.
pub(crate) async fn accept_loop(
    face: Arc<ZeoFace>,
    listener: TcpListener,
    writable: bool,
    mut stop: Option<watch::Receiver<bool>>,
) {
    loop {
        let accepted = match &mut stop {
            Some(s) => tokio::select! {
                a = listener.accept() => a,
                _ = s.changed() => return,
            },
            None => listener.accept().await,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ZEO accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if face.stats.open.load(Ordering::Relaxed) as usize >= face.opts.max_connections {
            tracing::warn!(%peer, "too many ZEO connections: refused");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let f = face.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            f.stats.connections.fetch_add(1, Ordering::Relaxed);
            f.stats.open.fetch_add(1, Ordering::Relaxed);
            connection(f.clone(), stream, peer, writable, stop).await;
            f.stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client went away, or the server closed it on purpose.
    Quiet,
    /// Bad input: logged, counted.
    Bad(String),
}

/// ZEO frames: the client port's framing ([`FrameCodec::lazy`]: clients are not
/// authenticated, so the buffer grows with the bytes that arrive, not with what a header
/// claims).
type Frames = FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>;

async fn read_frame(frames: &mut Frames) -> Result<BytesMut, End> {
    match frames.next().await {
        None => Err(End::Quiet),
        Some(Ok(frame)) => Ok(frame),
        Some(Err(FrameError::Proto(e))) => Err(End::Bad(e.to_string())),
        Some(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(End::Bad(format!("frame truncated: {e}")))
        }
        Some(Err(FrameError::Io(_))) => Err(End::Quiet),
    }
}

async fn connection(
    face: Arc<ZeoFace>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    writable: bool,
    stop: Option<watch::Receiver<bool>>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, FrameCodec::lazy(64));
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicU64::new(0));
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let (n, client) = face.next_connection();
    face.add_conn(n, client, writable, tx.clone(), queued.clone(), closed_tx);
    let q = queued.clone();
    let mut writer_closed = closed_rx.clone();
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = rx.recv() => f,
                r = writer_closed.changed() => {
                    if r.is_err() {
                        // The connection ended (its entry is gone): what it queued last, a
                        // `ruok` answer for one, still goes out before the shutdown.
                        while let Ok(frame) = rx.try_recv() {
                            if wr.write_all(&frame).await.is_err() {
                                break;
                            }
                        }
                    }
                    // Else closed on purpose (a client that does not read, a role change).
                    None
                }
            };
            let Some(frame) = frame else { break };
            q.fetch_sub(frame.len() as u64, Ordering::Relaxed);
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let hello = codec::raw_frame(codec::PROTOCOL);
    queued.fetch_add(hello.len() as u64, Ordering::Relaxed);
    let _ = tx.send(hello);
    let mut session = Session {
        face: face.clone(),
        n,
        writable,
        registered: false,
        calls_after_register: 0,
        read_only: !writable,
        txn_tx: None,
        iterators: Arc::new(Mutex::new(Iterators::default())),
    };
    let result = async {
        // The handshake: the client echoes the protocol (or asks `ruok`).
        let hs = tokio::time::timeout(face.opts.handshake_timeout, read_frame(&mut frames))
            .await
            .map_err(|_| End::Bad("no handshake within the deadline".into()))??;
        if &hs[..] == b"ruok" {
            session.ruok().await;
            return Err::<(), End>(End::Quiet);
        }
        if hs.len() != 2 || hs[1] != b'5' {
            return Err(End::Bad(format!("bad handshake {hs:?}")));
        }
        if hs[0] != b'M' {
            return Err(End::Bad(
                "the client wants pickle marshalling (Z5); this server speaks msgpack (M5)".into(),
            ));
        }
        frames
            .decoder_mut()
            .set_max_frame_length(face.opts.max_frame);
        loop {
            let mut stop_rx = stop.clone();
            let frame = tokio::select! {
                f = read_frame(&mut frames) => f?,
                _ = closed_rx.changed() => return Err(End::Quiet),
                _ = async {
                    match &mut stop_rx {
                        Some(s) => { let _ = s.changed().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => return Err(End::Quiet),
            };
            let call = codec::decode(&frame).map_err(|e| End::Bad(e.to_string()))?;
            if call.is_heartbeat() {
                continue;
            }
            session.handle(call).await?;
        }
    }
    .await;
    if let Err(End::Bad(why)) = &result {
        face.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, reason = %why, "ZEO connection closed");
    }
    // Closed by this server (a role change, a client that does not read, shutdown), not by
    // the client: a client that registered just before is not stranded, only moved.
    let closed_here = *closed_rx.borrow() || stop.as_ref().is_some_and(|s| *s.borrow());
    if session.registered && session.calls_after_register == 0 && !closed_here {
        // A stock client asks for `get_info` (or its invalidations) right after `register`;
        // one that hangs up instead found this server's last tid older than its cache
        // ("Server behind client") and refuses this server until it passes that tid.
        face.stats.stranded.fetch_add(1, Ordering::Relaxed);
        let last = to_zeo(face.lock().released);
        tracing::warn!(
            %peer,
            server_last_tid = %hex(&last),
            "ZEO client left right after register: its cache is probably newer than this \
             server (\"Server behind client\"); it comes back once this server passes its tid"
        );
    }
    face.remove_conn(n);
    drop(session);
    let _ = writer.await;
}

/// A ZEO error: the class a client rebuilds and its state.
#[derive(Debug)]
struct ZeoError {
    class: &'static str,
    state: Value,
}

impl ZeoError {
    /// A `ConflictError` with the committed serial (`actual`, a store tid) and the one the
    /// client sent (a ZEO tid).
    fn conflict(oid: &Oid, actual: Tid, sent: &[u8]) -> ZeoError {
        ZeoError {
            class: "ZODB.POSException.ConflictError",
            state: map(vec![
                ("message", Value::from("database conflict error")),
                ("oid", bin(oid.as_bytes())),
                (
                    "serials",
                    Value::Array(vec![bin(&to_zeo(actual)), bin(sent)]),
                ),
            ]),
        }
    }

    /// Blobs are not served (`get_info` does not claim `IBlobStorage`).
    fn no_blobs() -> ZeoError {
        ZeoError::args(
            "ZODB.POSException.Unsupported",
            vec![Value::from("this storage does not support blobs")],
        )
    }

    fn args(class: &'static str, args: Vec<Value>) -> ZeoError {
        ZeoError {
            class,
            state: Value::Array(args),
        }
    }
    fn pos_key(oid: &Oid) -> ZeoError {
        ZeoError::args("ZODB.POSException.POSKeyError", vec![bin(oid.as_bytes())])
    }
    fn read_only() -> ZeoError {
        ZeoError::args("ZODB.POSException.ReadOnlyError", vec![])
    }
    fn txn(msg: impl Into<String>) -> ZeoError {
        ZeoError::args(
            "ZODB.POSException.StorageTransactionError",
            vec![Value::from(msg.into())],
        )
    }
    fn storage(msg: impl Into<String>) -> ZeoError {
        ZeoError::args(
            "ZODB.POSException.StorageError",
            vec![Value::from(msg.into())],
        )
    }
    fn type_error(msg: impl Into<String>) -> ZeoError {
        ZeoError::args("builtins.TypeError", vec![Value::from(msg.into())])
    }
}

impl From<StorageError> for ZeoError {
    fn from(e: StorageError) -> Self {
        ZeoError::storage(e.to_string())
    }
}

impl From<ReadError> for ZeoError {
    fn from(e: ReadError) -> Self {
        ZeoError::storage(e.to_string())
    }
}

type Answer = Result<Value, ZeoError>;

fn oid_arg(v: Option<&Value>) -> Result<Oid, ZeoError> {
    v.and_then(bytes8)
        .map(|b| Oid::from_u64(u64::from_be_bytes(b)))
        .ok_or_else(|| ZeoError::type_error("an oid must be 8 bytes"))
}

fn tid_arg(v: Option<&Value>) -> Result<[u8; 8], ZeoError> {
    v.and_then(bytes8)
        .ok_or_else(|| ZeoError::type_error("a tid must be 8 bytes"))
}

/// A serial sent by a client as a store tid: `z64` (or nothing) is "a new object".
fn serial_arg(v: Option<&Value>) -> Result<(Tid, [u8; 8]), ZeoError> {
    match v {
        None | Some(Value::Nil) => Ok((Tid::ZERO, [0; 8])),
        Some(v) => {
            let z = bytes8(v).ok_or_else(|| ZeoError::type_error("a serial must be 8 bytes"))?;
            if z == [0; 8] {
                Ok((Tid::ZERO, z))
            } else {
                Ok((to_store(&z, TID_LIMIT), z))
            }
        }
    }
}

/// Iterators of one connection.
#[derive(Default)]
struct Iterators {
    next_id: i64,
    /// Transaction iterators: the next store tid to read and the last one.
    txns: BTreeMap<i64, (Tid, Tid, Option<storage::Transaction>)>,
    /// Record iterators: the records left, each with the tid whose state it restores.
    records: BTreeMap<i64, std::collections::VecDeque<(Record, Option<Tid>)>>,
    /// Their transaction's tid.
    record_tids: BTreeMap<i64, Tid>,
}

struct Session {
    face: Arc<ZeoFace>,
    n: u64,
    writable: bool,
    registered: bool,
    /// Calls since `register` (a client that makes none and leaves was stranded).
    calls_after_register: u64,
    read_only: bool,
    txn_tx: Option<mpsc::UnboundedSender<Call>>,
    iterators: Arc<Mutex<Iterators>>,
}

/// Whether a method belongs to the transaction task (in order, may wait).
fn is_txn_method(name: &str) -> bool {
    matches!(
        name,
        "tpc_begin"
            | "storea"
            | "restorea"
            | "deleteObject"
            | "checkCurrentSerialInTransaction"
            | "undoa"
            | "storeBlobStart"
            | "storeBlobChunk"
            | "storeBlobEnd"
            | "storeBlobShared"
            | "vote"
            | "tpc_finish"
            | "tpc_abort"
            | "new_oids"
            | "new_oid"
            | "pack"
    )
}

impl Session {
    fn send(&self, frame: Bytes) {
        send_frame(&self.face, self.n, frame);
    }

    fn answer(&self, call: &Call, a: Answer) {
        answer(&self.face, self.n, call, a);
    }

    async fn ruok(&self) {
        let st = self.face.server.status().await;
        let body = match st {
            Ok(s) => format!(
                "{{\"{}\": {{\"role\": \"{:?}\", \"last_tid\": \"{}\", \"connections\": {}}}}}",
                self.face.opts.storage_name,
                s.staleness.role,
                hex(&to_zeo(s.staleness.last_tid)),
                self.face.stats.open.load(Ordering::Relaxed)
            ),
            Err(_) => "{}".into(),
        };
        // The writer sends it before closing (see `connection`).
        self.send(codec::raw_frame(body.as_bytes()));
    }

    async fn handle(&mut self, call: Call) -> Result<(), End> {
        if self.registered {
            self.calls_after_register += 1;
        }
        if !self.registered {
            if call.name != "register" {
                return Err(End::Bad(format!("{:?} called before register", call.name)));
            }
            let a = self.register(&call);
            self.answer(&call, a);
            return Ok(());
        }
        if call.name == "register" {
            let a = Err(ZeoError::args(
                "builtins.ValueError",
                vec![Value::from("already registered")],
            ));
            self.answer(&call, a);
            return Ok(());
        }
        if is_txn_method(&call.name) {
            if self.read_only && call.name != "tpc_abort" {
                if call.is_async {
                    return Err(End::Bad(format!("{} on a read-only connection", call.name)));
                }
                self.answer(&call, Err(ZeoError::read_only()));
                return Ok(());
            }
            let tx = match &self.txn_tx {
                Some(t) => t.clone(),
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let task = TxnTask {
                        face: self.face.clone(),
                        n: self.n,
                        txn: None,
                        held: None,
                    };
                    tokio::spawn(task.run(rx));
                    self.txn_tx = Some(tx.clone());
                    tx
                }
            };
            let _ = tx.send(call);
            return Ok(());
        }
        let face = self.face.clone();
        let n = self.n;
        let iterators = self.iterators.clone();
        let name = call.name.clone();
        match name.as_str() {
            "loadBefore" => {
                tokio::spawn(async move {
                    if let Err(e) = load_before(&face, n, &call).await {
                        answer(&face, n, &call, Err(e));
                    }
                });
            }
            "lastTransaction" => {
                let t = self.face.lock().released;
                self.answer(&call, Ok(bin(&to_zeo(t))));
            }
            "ping" | "set_client_label" | "iterator_gc" => {
                if name == "iterator_gc" {
                    if let Some(Value::Array(ids)) = call.args.first() {
                        let mut it = self.iterators.lock().unwrap_or_else(|e| e.into_inner());
                        for id in ids.iter().filter_map(Value::as_i64) {
                            it.txns.remove(&id);
                            it.records.remove(&id);
                            it.record_tids.remove(&id);
                        }
                    }
                }
                self.answer(&call, Ok(Value::Nil));
            }
            "server_status" => {
                let s = self.face.server.status().await;
                let v = match s {
                    Ok(s) => map(vec![
                        ("storage", Value::from(self.face.opts.storage_name.as_str())),
                        ("role", Value::from(format!("{:?}", s.staleness.role))),
                        ("last_tid", bin(&to_zeo(s.staleness.last_tid))),
                        (
                            "connections",
                            Value::from(self.face.stats.open.load(Ordering::Relaxed)),
                        ),
                        (
                            "commits",
                            Value::from(self.face.stats.commits.load(Ordering::Relaxed)),
                        ),
                    ]),
                    Err(_) => Value::Nil,
                };
                self.answer(&call, Ok(v));
            }
            "sendBlob" | "loadBlob" | "storeBlob" | "receiveBlobStart" => {
                self.answer(&call, Err(ZeoError::no_blobs()));
            }
            "get_info"
            | "loadSerial"
            | "getTid"
            | "history"
            | "getInvalidations"
            | "undoLog"
            | "undoInfo"
            | "iterator_start"
            | "iterator_next"
            | "iterator_record_start"
            | "iterator_record_next"
            | "record_iternext" => {
                tokio::spawn(async move {
                    let a = read_call(&face, &iterators, &call).await;
                    answer(&face, n, &call, a);
                });
            }
            _ => {
                if call.is_async {
                    return Err(End::Bad(format!("unknown method {:?}", call.name)));
                }
                self.answer(
                    &call,
                    Err(ZeoError::args(
                        "builtins.AttributeError",
                        vec![Value::from(format!("no method {:?}", call.name))],
                    )),
                );
            }
        }
        Ok(())
    }

    fn register(&mut self, call: &Call) -> Answer {
        let name = match call.args.first() {
            Some(Value::String(s)) => s.as_str().unwrap_or("").to_string(),
            Some(Value::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        if name != self.face.opts.storage_name {
            return Err(ZeoError::args(
                "builtins.ValueError",
                vec![Value::from(format!("unknown storage {name:?}"))],
            ));
        }
        let read_only = match call.args.get(1) {
            Some(Value::Boolean(b)) => *b,
            Some(Value::Integer(i)) => i.as_u64() != Some(0),
            _ => false,
        };
        let mut sh = self.face.lock();
        if !read_only && (!self.writable || sh.role != Role::Primary) {
            return Err(ZeoError::read_only());
        }
        self.read_only = read_only;
        let released = sh.released;
        let Some(c) = sh.conns.get_mut(&self.n) else {
            return Err(ZeoError::storage("connection closing"));
        };
        c.registered = true;
        c.sent = released;
        self.registered = true;
        Ok(bin(&to_zeo(released)))
    }
}

/// Queues a frame on connection `n` (gone: dropped).
fn send_frame(face: &ZeoFace, n: u64, frame: Bytes) {
    let sh = face.lock();
    if let Some(c) = sh.conns.get(&n) {
        c.send(frame);
    }
}

/// Answers a call on connection `n`: a reply or an error frame; nothing for an async call
/// (ZEO has no way back for those).
fn answer(face: &ZeoFace, n: u64, call: &Call, a: Answer) {
    if call.is_async {
        if let Err(e) = a {
            tracing::debug!(method = %call.name, class = e.class, "error in an async call");
        }
        return;
    }
    send_frame(
        face,
        n,
        match a {
            Ok(v) => codec::reply(&call.msgid, v),
            Err(e) => codec::error(&call.msgid, e.class, e.state),
        },
    );
}

/// Answers `loadBefore` on connection `n`; an error comes back for the caller to send.
///
/// A reply that says "current" (no end tid) is checked and written under the face's lock,
/// the lock the dispatcher holds while it writes invalidations and raises `sent`: so it is
/// written only if this connection was told of nothing newer than the state it was read
/// from, and no invalidation can slip between that check and the write. (A stale "current"
/// written after an invalidation of a newer revision would stay in the client's cache as
/// current: ZODB's `test_race_load_vs_external_invalidate` finds it.)
async fn load_before(face: &Arc<ZeoFace>, n: u64, call: &Call) -> Result<(), ZeoError> {
    let oid = oid_arg(call.args.first())?;
    let z = tid_arg(call.args.get(1))?;
    let before = to_store(&z, TID_LIMIT);
    for _ in 0..100 {
        let o = oid.clone();
        let (answer, at) = face
            .server
            .read_fast(move |store, at| Ok((load_before_in(store, &o, before, at), at)))
            .await
            .map_err(|_| ZeoError::storage("server stopped"))??;
        let v = answer??;
        let current = matches!(&v, Value::Array(a) if a.get(2) == Some(&Value::Nil));
        let sh = face.lock();
        if let Some(c) = sh.conns.get(&n) {
            if current && c.sent > at {
                continue;
            }
            if !call.is_async {
                c.send(codec::reply(&call.msgid, v));
            }
        }
        return Ok(());
    }
    Err(ZeoError::storage("the object keeps changing"))
}

/// `loadBefore` on the store as of `at` (the server's read point: newer transactions may be
/// applied and not yet synced): `(data, start, end or None)`, `None` when the object has no
/// revision before `before`, `POSKeyError` when it does not exist.
fn load_before_in(
    store: &dyn Storage,
    oid: &Oid,
    before: Tid,
    at: Tid,
) -> Result<Answer, StorageError> {
    let Some(current) = store.load_at(oid, at)? else {
        return Ok(Err(ZeoError::pos_key(oid)));
    };
    let before = before.min(at.next());
    // The newest revision as of `at` is the newest before `before` when it is older: the
    // usual question (a client asking as of its snapshot for an object unchanged since)
    // costs one read, not two.
    let rev = if current.tid < before {
        Some(current.clone())
    } else {
        revision_before(store, oid, before)?
    };
    let Some(rev) = rev else {
        return Ok(if current.data.is_none() {
            Err(ZeoError::pos_key(oid))
        } else {
            Ok(Value::Nil)
        });
    };
    let Some(data) = rev.data else {
        return Ok(Err(ZeoError::pos_key(oid)));
    };
    let end = if current.tid == rev.tid {
        Value::Nil
    } else {
        // The revision right after `rev`: the oldest of those newer than it.
        let mut n = 8;
        loop {
            let h = store.history(oid, n)?;
            let next = h
                .iter()
                .filter(|r| r.tid > rev.tid && r.tid <= at)
                .map(|r| r.tid)
                .min();
            let complete = h.len() < n || h.last().is_some_and(|r| r.tid <= rev.tid);
            if complete {
                break match next {
                    Some(t) => bin(&to_zeo(t)),
                    None => Value::Nil,
                };
            }
            n *= 8;
        }
    };
    Ok(Ok(Value::Array(vec![
        Value::Binary(data.to_vec()),
        bin(&to_zeo(rev.tid)),
        end,
    ])))
}

/// The newest stored revision of `oid` older than `before`. Past a pack's horizon the store
/// refuses `load_before`; the revisions a pack keeps (the newest before its bound, and all
/// after) still answer every question about tids they cover, so those are read from the
/// object's history instead.
fn revision_before(
    store: &dyn Storage,
    oid: &Oid,
    before: Tid,
) -> Result<Option<storage::Revision>, StorageError> {
    match store.load_before(oid, before) {
        Err(StorageError::HistoryTruncated { .. }) => {}
        other => return other,
    }
    let mut n = 16;
    loop {
        let h = store.history(oid, n)?;
        if let Some(r) = h.iter().find(|r| r.tid < before) {
            return Ok(Some(r.clone()));
        }
        if h.len() < n {
            return Ok(None);
        }
        n *= 8;
    }
}

/// Transactions in `[from, stop]` as far as the store still has them: after a pack the
/// range starts above its horizon (what lies at or before it may be incomplete).
fn readable(
    store: &dyn Storage,
    from: Tid,
    stop: Tid,
    dir: Direction,
) -> Result<storage::TxnIter<'_>, StorageError> {
    match store.iter(TidRange::new(Some(from), Some(stop)), dir) {
        Err(StorageError::HistoryTruncated { horizon }) => store.iter(
            TidRange::new(Some(Tid(horizon.0.saturating_add(1)).max(from)), Some(stop)),
            dir,
        ),
        other => other,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A transaction's extension, stored as the msgpack map the client sent.
fn extension_value(ext: &[u8]) -> Vec<(Value, Value)> {
    if ext.is_empty() {
        return Vec::new();
    }
    match rmpv::decode::read_value_with_max_depth(&mut &ext[..], codec::MAX_DEPTH) {
        Ok(Value::Map(m)) => m,
        _ => Vec::new(),
    }
}

/// Whether a transaction holds only objects the server itself writes (epoch markers, oid
/// blocks, packs): ZEO clients never see those in iterators or the undo log.
fn is_internal(t: &storage::Transaction) -> bool {
    t.records.iter().all(|r| super::is_shell_or_replica(&r.oid))
}

fn txn_info(t: &storage::Transaction, id: bool) -> Value {
    let z = to_zeo(t.tid);
    let size: usize = t
        .records
        .iter()
        .map(|r| r.data.as_ref().map_or(0, |d| d.len()))
        .sum();
    let mut m = vec![
        (
            Value::from("time"),
            Value::F64(tid::seconds(u64::from_be_bytes(z))),
        ),
        (Value::from("user_name"), bin(&t.meta.user)),
        (Value::from("description"), bin(&t.meta.description)),
        (Value::from("size"), Value::from(size as u64)),
    ];
    if id {
        m.push((Value::from("id"), bin(&z)));
    } else {
        m.push((Value::from("tid"), bin(&z)));
    }
    m.extend(extension_value(&t.meta.extension));
    Value::Map(m)
}

async fn read_call(face: &Arc<ZeoFace>, iterators: &Arc<Mutex<Iterators>>, call: &Call) -> Answer {
    let args = call.args.clone();
    let name = call.name.clone();
    let stopped = |_| ZeoError::storage("server stopped");
    match name.as_str() {
        "get_info" => {
            let count = face
                .server
                .inspect(|store, _| {
                    // Reserved objects sort last (first byte 0xFF): count them from there.
                    let after = Oid::new(vec![replica::RESERVED_OID_PREFIX - 1])?;
                    let mut reserved = 0u64;
                    for r in store.fast_recovery(Tid::ZERO, Some(&after))?.revisions {
                        let r = r?;
                        if super::is_shell_or_replica(&r.oid) && r.data.is_some() {
                            reserved += 1;
                        }
                    }
                    Ok(store.object_count()?.saturating_sub(reserved))
                })
                .await
                .map_err(stopped)??;
            Ok(map(vec![
                ("length", Value::from(count)),
                ("size", Value::from(0)),
                (
                    "name",
                    Value::from(format!("standby:{}", face.opts.storage_name)),
                ),
                ("supportsUndo", Value::Boolean(true)),
                ("supports_record_iternext", Value::Boolean(true)),
                (
                    "interfaces",
                    Value::Array(
                        [
                            "IStorageRestoreable",
                            "IStorageIteration",
                            "IStorageUndoable",
                            "IStorageCurrentRecordIteration",
                            "IExternalGC",
                            "IStorage",
                        ]
                        .iter()
                        .map(|i| {
                            Value::Array(vec![Value::from("ZODB.interfaces"), Value::from(*i)])
                        })
                        .collect(),
                    ),
                ),
            ]))
        }
        "loadSerial" => {
            let oid = oid_arg(args.first())?;
            let (serial, _) = serial_arg(args.get(1))?;
            face.server
                .inspect(move |store, _| {
                    let r = revision_before(store, &oid, Tid(serial.0.saturating_add(1)))?;
                    Ok(match r {
                        Some(r) if r.tid == serial && r.data.is_some() => {
                            Ok(Value::Binary(r.data.unwrap_or_default().to_vec()))
                        }
                        _ => Err(ZeoError::pos_key(&oid)),
                    })
                })
                .await
                .map_err(stopped)??
        }
        "getTid" => {
            let oid = oid_arg(args.first())?;
            face.server
                .inspect(move |store, st| {
                    Ok(match store.load_at(&oid, st.last_tid)? {
                        Some(r) if r.data.is_some() => Ok(bin(&to_zeo(r.tid))),
                        _ => Err(ZeoError::pos_key(&oid)),
                    })
                })
                .await
                .map_err(stopped)??
        }
        "history" => {
            let oid = oid_arg(args.first())?;
            let size = args
                .get(1)
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 10_000);
            face.server
                .inspect(move |store, st| {
                    // As of the read point: revisions not yet synced stay unseen.
                    let mut revs = store.history(&oid, size as usize)?;
                    revs.retain(|r| r.tid <= st.last_tid);
                    if revs.is_empty() {
                        return Ok(Err(ZeoError::pos_key(&oid)));
                    }
                    let mut out = Vec::new();
                    for r in revs {
                        let Some(t) = commit::txn_at(store, r.tid)? else {
                            continue;
                        };
                        let mut v = txn_info(&t, false);
                        if let Value::Map(m) = &mut v {
                            for (k, val) in m.iter_mut() {
                                if k.as_str() == Some("size") {
                                    *val =
                                        Value::from(r.data.as_ref().map_or(0, |d| d.len()) as u64);
                                }
                            }
                        }
                        out.push(v);
                    }
                    Ok(Ok(Value::Array(out)))
                })
                .await
                .map_err(stopped)??
        }
        "getInvalidations" => {
            let since = to_store(&tid_arg(args.first())?, TID_LIMIT);
            let upto = face.lock().released;
            face.server
                .inspect(move |store, _| {
                    if since >= upto {
                        return Ok(Ok(Value::Array(vec![
                            bin(&to_zeo(upto)),
                            Value::Array(vec![]),
                        ])));
                    }
                    // A last tid this server never had comes from a history that was cut
                    // back elsewhere (a former primary's unreplicated tail, moved to its
                    // lost archive): what the client cached from it is not in any history
                    // here, so no list of later changes can correct it. It drops its cache.
                    if since != Tid::ZERO {
                        let here =
                            store.iter(TidRange::new(Some(since), Some(since)), Direction::Forward);
                        let known = match here {
                            Ok(mut it) => it.next().transpose()?.is_some_and(|t| t.tid == since),
                            Err(StorageError::HistoryTruncated { .. }) => false,
                            Err(e) => return Err(e),
                        };
                        if !known {
                            return Ok(Ok(Value::Nil));
                        }
                    }
                    let it = match store.iter(
                        TidRange::new(Some(Tid(since.0 + 1)), Some(upto)),
                        Direction::Forward,
                    ) {
                        Ok(it) => it,
                        Err(StorageError::HistoryTruncated { .. }) => return Ok(Ok(Value::Nil)),
                        Err(e) => return Err(e),
                    };
                    let mut oids = std::collections::BTreeSet::new();
                    for (i, t) in it.enumerate() {
                        if i >= 10_000 {
                            // Too far behind: the client drops its cache instead.
                            return Ok(Ok(Value::Nil));
                        }
                        for r in t?.records {
                            if r.oid.as_bytes().len() == 8 && !super::is_shell_or_replica(&r.oid) {
                                oids.insert(r.oid);
                            }
                        }
                    }
                    Ok(Ok(Value::Array(vec![
                        bin(&to_zeo(upto)),
                        Value::Array(oids.iter().map(|o| bin(o.as_bytes())).collect()),
                    ])))
                })
                .await
                .map_err(stopped)??
        }
        "undoLog" | "undoInfo" => {
            let first = args.first().and_then(Value::as_i64).unwrap_or(0).max(0) as usize;
            let mut last = args.get(1).and_then(Value::as_i64).unwrap_or(20);
            if last < 0 {
                last = first as i64 - last;
            }
            let last = (last.max(0) as usize).min(first + 100_000);
            let spec: Vec<(Value, Value)> = match args.get(2) {
                Some(Value::Map(m)) if name == "undoInfo" => m.clone(),
                _ => Vec::new(),
            };
            let upto = face.lock().released;
            face.server
                .inspect(move |store, _| {
                    let mut out = Vec::new();
                    let mut i = 0usize;
                    let it = readable(store, Tid::ZERO, upto, Direction::Reverse)?;
                    for t in it {
                        let t = match t {
                            Ok(t) => t,
                            Err(StorageError::HistoryTruncated { .. }) => break,
                            Err(e) => return Err(e),
                        };
                        if i >= last {
                            break;
                        }
                        if is_internal(&t) {
                            continue;
                        }
                        let info = txn_info(&t, true);
                        let matches = match &info {
                            Value::Map(m) => spec
                                .iter()
                                .all(|(k, v)| m.iter().any(|(k2, v2)| k2 == k && v2 == v)),
                            _ => false,
                        };
                        if !matches {
                            continue;
                        }
                        if i >= first {
                            out.push(info);
                        }
                        i += 1;
                    }
                    Ok(Ok(Value::Array(out)))
                })
                .await
                .map_err(stopped)??
        }
        "iterator_start" => {
            let start = match args.first() {
                Some(Value::Nil) | None => Tid(1),
                Some(v) => to_store(
                    &bytes8(v).ok_or_else(|| ZeoError::type_error("a tid must be 8 bytes"))?,
                    TID_LIMIT,
                ),
            };
            let stop = match args.get(1) {
                Some(Value::Nil) | None => TID_LIMIT,
                Some(v) => to_store(
                    &bytes8(v).ok_or_else(|| ZeoError::type_error("a tid must be 8 bytes"))?,
                    TID_LIMIT,
                ),
            };
            // A snapshot: transactions committed after the start are not shown.
            let stop = stop.min(face.lock().released);
            let mut it = iterators.lock().unwrap_or_else(|e| e.into_inner());
            it.next_id += 1;
            let id = it.next_id;
            it.txns.insert(id, (start.max(Tid(1)), stop, None));
            Ok(Value::from(id))
        }
        "iterator_next" => {
            let id = args.first().and_then(Value::as_i64).unwrap_or(-1);
            let (from, stop) = {
                let it = iterators.lock().unwrap_or_else(|e| e.into_inner());
                match it.txns.get(&id) {
                    Some((f, s, _)) => (*f, *s),
                    None => return Err(ZeoError::args("builtins.KeyError", vec![Value::from(id)])),
                }
            };
            let next = face
                .server
                .inspect(move |store, _| {
                    if from > stop {
                        return Ok(None);
                    }
                    for t in readable(store, from, stop, Direction::Forward)? {
                        let t = t?;
                        if !is_internal(&t) {
                            return Ok(Some(t));
                        }
                    }
                    Ok(None)
                })
                .await
                .map_err(stopped)??;
            let mut it = iterators.lock().unwrap_or_else(|e| e.into_inner());
            match next {
                None => {
                    it.txns.remove(&id);
                    Ok(Value::Nil)
                }
                Some(t) => {
                    let v = Value::Array(vec![
                        bin(&to_zeo(t.tid)),
                        Value::from(" "),
                        bin(&t.meta.user),
                        bin(&t.meta.description),
                        Value::Map(extension_value(&t.meta.extension)),
                    ]);
                    if let Some(e) = it.txns.get_mut(&id) {
                        e.0 = Tid(t.tid.0 + 1);
                        e.2 = Some(t);
                    }
                    Ok(v)
                }
            }
        }
        "iterator_record_start" => {
            let id = args.first().and_then(Value::as_i64).unwrap_or(-1);
            let z = tid_arg(args.get(1))?;
            let tid = to_store(&z, TID_LIMIT);
            let mut it = iterators.lock().unwrap_or_else(|e| e.into_inner());
            let records = match it.txns.get(&id) {
                Some((_, _, Some(t))) if t.tid == tid => t.records.clone(),
                _ => return Err(ZeoError::args("builtins.KeyError", vec![Value::from(id)])),
            };
            let back = records
                .iter()
                .find(|r| r.oid == commit::backpointer_oid())
                .and_then(|r| r.data.as_deref().map(commit::backpointers))
                .unwrap_or_default();
            it.next_id += 1;
            let rid = it.next_id;
            it.records.insert(
                rid,
                records
                    .into_iter()
                    .filter(|r| !super::is_shell_or_replica(&r.oid))
                    .map(|r| {
                        let b = back.get(&r.oid).copied();
                        (r, b)
                    })
                    .collect(),
            );
            it.record_tids.insert(rid, tid);
            Ok(Value::from(rid))
        }
        "iterator_record_next" => {
            let id = args.first().and_then(Value::as_i64).unwrap_or(-1);
            let mut it = iterators.lock().unwrap_or_else(|e| e.into_inner());
            let tid = it.record_tids.get(&id).copied();
            let Some(q) = it.records.get_mut(&id) else {
                return Err(ZeoError::args("builtins.KeyError", vec![Value::from(id)]));
            };
            match q.pop_front() {
                None => {
                    it.records.remove(&id);
                    it.record_tids.remove(&id);
                    Ok(Value::Nil)
                }
                Some((r, back)) => Ok(Value::Array(vec![
                    bin(r.oid.as_bytes()),
                    bin(&to_zeo(tid.unwrap_or_default())),
                    r.data.map_or(Value::Nil, |d| Value::Binary(d.to_vec())),
                    back.map_or(Value::Nil, |t| bin(&to_zeo(t))),
                ])),
            }
        }
        "record_iternext" => {
            let after = match args.first() {
                Some(Value::Nil) | None => None,
                Some(v) => Some(oid_arg(Some(v))?),
            };
            face.server
                .inspect(move |store, _| {
                    // The object after `after` (inclusive of the given next oid): the stream
                    // of current revisions in oid order.
                    let start = after.map(|o| {
                        let v = u64::from_be_bytes(o.as_bytes().try_into().unwrap_or([0; 8]));
                        v.checked_sub(1).map(Oid::from_u64)
                    });
                    let fr = match &start {
                        Some(Some(o)) => store.fast_recovery(Tid::ZERO, Some(o))?,
                        _ => store.fast_recovery(Tid::ZERO, None)?,
                    };
                    let mut found = None;
                    let mut next = None;
                    for r in fr.revisions {
                        let r = r?;
                        if r.oid.as_bytes().len() != 8
                            || super::is_shell_or_replica(&r.oid)
                            || r.data.is_none()
                        {
                            continue;
                        }
                        if found.is_none() {
                            found = Some(r);
                        } else {
                            next = Some(r.oid);
                            break;
                        }
                    }
                    Ok(match found {
                        None => Ok(Value::Nil),
                        Some(r) => Ok(Value::Array(vec![
                            bin(r.oid.as_bytes()),
                            bin(&to_zeo(r.tid)),
                            Value::Binary(r.data.unwrap_or_default().to_vec()),
                            next.map_or(Value::Nil, |o| bin(o.as_bytes())),
                        ])),
                    })
                })
                .await
                .map_err(stopped)??
        }
        _ => Err(ZeoError::type_error("unknown read")),
    }
}

/// The transaction being built on one connection.
struct Txn {
    id: Value,
    meta: TxnMeta,
    tid: Option<[u8; 8]>,
    stores: BTreeMap<Oid, Store>,
    checks: BTreeMap<Oid, Tid>,
    undos: Vec<Tid>,
    blob: bool,
    /// Records checked at a successful vote, committed at finish.
    voted: Option<Vec<Record>>,
    /// The first conflict of the last vote that returned conflicts.
    conflicted: Option<(Oid, Tid, [u8; 8])>,
}

/// The connection's transaction calls, in order.
struct TxnTask {
    face: Arc<ZeoFace>,
    n: u64,
    txn: Option<Txn>,
    held: Option<Held>,
}

impl TxnTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Call>) {
        while let Some(call) = rx.recv().await {
            let a = self.handle(&call).await;
            match a {
                Ok(Some(a)) => self.answer(&call, a),
                Ok(None) => {}
                Err(why) => {
                    tracing::warn!(method = %call.name, reason = %why, "ZEO connection closed");
                    let sh = self.face.lock();
                    if let Some(c) = sh.conns.get(&self.n) {
                        c.close();
                    }
                    return;
                }
            }
        }
    }

    fn answer(&self, call: &Call, a: Answer) {
        answer(&self.face, self.n, call, a);
    }

    fn txn_for(&mut self, v: Option<&Value>) -> Result<&mut Txn, String> {
        match (&mut self.txn, v) {
            (Some(t), Some(id)) if &t.id == id => Ok(t),
            _ => Err("a call names a transaction that is not the current one".into()),
        }
    }

    /// `Ok(Some(answer))` to answer now, `Ok(None)` when answered elsewhere (or async),
    /// `Err` to close the connection (an async call failed: ZEO has no other way to say it).
    async fn handle(&mut self, call: &Call) -> Result<Option<Answer>, String> {
        let a = &call.args;
        match call.name.as_str() {
            "tpc_begin" => {
                let id = a.first().cloned().unwrap_or(Value::Nil);
                if let Some(t) = &self.txn {
                    if t.id == id {
                        return Ok(None);
                    }
                    return Err("tpc_begin while another transaction is active".into());
                }
                let ext = match a.get(3) {
                    Some(v @ Value::Map(m)) if !m.is_empty() => {
                        let mut b = Vec::new();
                        let _ = rmpv::encode::write_value(&mut b, v);
                        Bytes::from(b)
                    }
                    _ => Bytes::new(),
                };
                let tid = match a.get(4) {
                    Some(Value::Nil) | None => None,
                    Some(v) => Some(bytes8(v).ok_or("tpc_begin: a tid must be 8 bytes")?),
                };
                self.txn = Some(Txn {
                    id,
                    meta: TxnMeta {
                        user: Bytes::from(
                            bytes_of(a.get(1).unwrap_or(&Value::Nil)).unwrap_or_default(),
                        ),
                        description: Bytes::from(
                            bytes_of(a.get(2).unwrap_or(&Value::Nil)).unwrap_or_default(),
                        ),
                        extension: ext,
                        time: 0,
                        request: None,
                    },
                    tid,
                    stores: BTreeMap::new(),
                    checks: BTreeMap::new(),
                    undos: Vec::new(),
                    blob: false,
                    voted: None,
                    conflicted: None,
                });
                Ok(None)
            }
            "storea" | "restorea" | "deleteObject" => {
                let restore = call.name == "restorea";
                let txn_arg = if restore {
                    a.get(4)
                } else if call.name == "deleteObject" {
                    a.get(2)
                } else {
                    a.get(3)
                };
                let oid =
                    oid_arg(a.first()).map_err(|e| format!("{}: {:?}", call.name, e.state))?;
                if super::is_shell_or_replica(&oid) {
                    return Err(format!("{}: oid {oid} is reserved", call.name));
                }
                let (serial, zeo_serial) =
                    serial_arg(a.get(1)).map_err(|e| format!("{}: {:?}", call.name, e.state))?;
                let data = if call.name == "deleteObject" {
                    None
                } else {
                    match a.get(2) {
                        Some(Value::Nil) if restore => None,
                        Some(v) => Some(Bytes::from(bytes_of(v).ok_or("data must be bytes")?)),
                        None => return Err(format!("{}: no data", call.name)),
                    }
                };
                let t = self.txn_for(txn_arg)?;
                t.voted = None;
                t.stores.insert(
                    oid,
                    Store {
                        serial,
                        zeo_serial,
                        data,
                        restore,
                    },
                );
                Ok(None)
            }
            "checkCurrentSerialInTransaction" => {
                let oid = oid_arg(a.first()).map_err(|e| format!("{:?}", e.state))?;
                let (serial, _) = serial_arg(a.get(1)).map_err(|e| format!("{:?}", e.state))?;
                let t = self.txn_for(a.get(2))?;
                t.checks.insert(oid, serial);
                Ok(None)
            }
            "undoa" => {
                let id = a
                    .first()
                    .and_then(bytes8)
                    .ok_or("undoa: bad transaction id")?;
                let t = self.txn_for(a.get(1))?;
                t.undos.push(to_store(&id, TID_LIMIT));
                Ok(None)
            }
            "storeBlobStart" | "storeBlobChunk" => {
                if let Some(t) = &mut self.txn {
                    t.blob = true;
                }
                Ok(None)
            }
            "storeBlobEnd" | "storeBlobShared" => {
                let txn_arg = a.last();
                let t = self.txn_for(txn_arg)?;
                t.blob = true;
                Ok(None)
            }
            "vote" => Ok(Some(self.vote(a.first()).await)),
            "tpc_finish" => self.finish(call).await,
            "tpc_abort" => {
                if self.txn.as_ref().is_some_and(|t| Some(&t.id) == a.first()) {
                    self.txn = None;
                    self.held = None;
                }
                Ok(Some(Ok(Value::Nil)))
            }
            "new_oids" => {
                let n = a
                    .first()
                    .and_then(Value::as_u64)
                    .unwrap_or(100)
                    .clamp(1, 100);
                Ok(Some(self.new_oids(n).await.map(|v| {
                    Value::Array(v.into_iter().map(|o| bin(&o.to_be_bytes())).collect())
                })))
            }
            "new_oid" => {
                Ok(Some(self.new_oids(1).await.map(|v| {
                    bin(&v.first().copied().unwrap_or(0).to_be_bytes())
                })))
            }
            "pack" => Ok(Some(self.pack(a.first()).await)),
            _ => Ok(Some(Err(ZeoError::type_error("unknown method")))),
        }
    }

    async fn vote(&mut self, id: Option<&Value>) -> Answer {
        let face = self.face.clone();
        let Some(t) = self.txn.as_mut().filter(|t| Some(&t.id) == id) else {
            return Err(ZeoError::txn(
                "vote for a transaction that is not the current one",
            ));
        };
        if t.blob {
            self.txn = None;
            return Err(ZeoError::no_blobs());
        }
        // Everything the transaction reads or writes is locked until it is answered.
        self.held = None;
        let undo_oids: Vec<Oid> = if t.undos.is_empty() {
            Vec::new()
        } else {
            let undos = t.undos.clone();
            face.server
                .inspect(move |store, _| {
                    let mut v = Vec::new();
                    for u in undos {
                        if let Some(t) = commit::txn_at(store, u)? {
                            v.extend(t.records.into_iter().map(|r| r.oid));
                        }
                    }
                    Ok(v)
                })
                .await
                .map_err(|_| ZeoError::storage("server stopped"))??
        };
        let held = face
            .locks
            .lock(
                t.stores
                    .keys()
                    .chain(t.checks.keys())
                    .cloned()
                    .chain(undo_oids),
            )
            .await;
        let (stores, checks, undos) = (t.stores.clone(), t.checks.clone(), t.undos.clone());
        let outcome = face
            .server
            .read_fast(move |store, _| commit::vote(store, &stores, &checks, &undos))
            .await
            .map_err(|_| ZeoError::storage("server stopped"))??;
        if let Some((oid, actual, expected)) = outcome.read_conflict {
            self.txn = None;
            face.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(ZeoError {
                class: "ZODB.POSException.ReadConflictError",
                state: map(vec![
                    ("message", Value::from("database read conflict error")),
                    ("oid", bin(oid.as_bytes())),
                    (
                        "serials",
                        Value::Array(vec![bin(&to_zeo(actual)), bin(&to_zeo(expected))]),
                    ),
                ]),
            });
        }
        if !outcome.undo_errors.is_empty() {
            self.txn = None;
            let errs: Vec<Value> = outcome
                .undo_errors
                .iter()
                .map(|(oid, why)| {
                    Value::Array(vec![
                        bin(oid.as_bytes()),
                        Value::Array(vec![
                            Value::from("ZODB.POSException.UndoError"),
                            map(vec![
                                ("_reason", Value::from(why.as_str())),
                                ("_oid", bin(oid.as_bytes())),
                            ]),
                        ]),
                    ])
                })
                .collect();
            return Err(ZeoError {
                class: "ZODB.POSException.MultipleUndoErrors",
                state: map(vec![
                    ("_errs", Value::Array(errs)),
                    ("_reason", Value::Nil),
                    ("_oid", Value::Nil),
                ]),
            });
        }
        t.conflicted = outcome
            .conflicts
            .first()
            .map(|(oid, actual, sent, _)| (oid.clone(), *actual, *sent));
        if !outcome.conflicts.is_empty() {
            // Client-side conflict resolution: the client resolves, stores again, votes again.
            face.stats
                .conflicts
                .fetch_add(outcome.conflicts.len() as u64, Ordering::Relaxed);
            let v = outcome
                .conflicts
                .into_iter()
                .map(|(oid, actual, sent, data)| {
                    map(vec![
                        ("oid", bin(oid.as_bytes())),
                        (
                            "serials",
                            Value::Array(vec![bin(&to_zeo(actual)), bin(&sent)]),
                        ),
                        (
                            "data",
                            data.map_or(Value::Nil, |d| Value::Binary(d.to_vec())),
                        ),
                    ])
                })
                .collect();
            return Ok(Value::Array(v));
        }
        t.voted = Some(outcome.records);
        self.held = Some(held);
        Ok(Value::Array(
            outcome.undone.iter().map(|o| bin(o.as_bytes())).collect(),
        ))
    }

    async fn finish(&mut self, call: &Call) -> Result<Option<Answer>, String> {
        let Some(t) = self.txn.take().filter(|t| Some(&t.id) == call.args.first()) else {
            return Ok(Some(Err(ZeoError::txn(
                "tpc_finish for a transaction that is not the current one",
            ))));
        };
        let Some(records) = t.voted else {
            if let Some((oid, actual, sent)) = t.conflicted {
                // A stock client finishes after nine votes that all returned conflicts: a
                // ConflictError lets the application retry the transaction.
                return Ok(Some(Err(ZeoError::conflict(&oid, actual, &sent))));
            }
            return Ok(Some(Err(ZeoError::txn(
                "tpc_finish before a successful vote",
            ))));
        };
        let started = tokio::time::Instant::now();
        let client = {
            let mut sh = self.face.lock();
            let Some(c) = sh.conns.get_mut(&self.n) else {
                return Err("connection closing".into());
            };
            c.finishing = Some((call.msgid.clone(), started));
            c.client
        };
        let choice = match t.tid {
            Some(z) => TidChoice::Exactly(to_store(&z, TID_LIMIT)),
            None => TidChoice::AtLeast(to_store(&tid::now().to_be_bytes(), TID_LIMIT)),
        };
        let mut meta = t.meta;
        meta.time = (tid::wall_clock_nanos() / 1_000_000_000) as u64;
        let req = CommitRequest {
            client,
            request: self.face.own_request.fetch_add(1, Ordering::Relaxed),
            meta,
            records,
            tid: choice,
        };
        let result = commit_with_retries(&self.face, req).await;
        if result.is_ok() {
            self.face
                .stats
                .finish_commit_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.held = None;
        match result {
            Ok(_) => Ok(None), // the dispatcher writes the reply when the commit is visible
            Err(e) => {
                let finishing = {
                    let mut sh = self.face.lock();
                    sh.conns.get_mut(&self.n).and_then(|c| c.finishing.take())
                };
                if finishing.is_none() {
                    // Answered already (a retry found the first attempt applied).
                    return Ok(None);
                }
                match e {
                    CommitError::Conflict {
                        oid,
                        expected,
                        actual,
                    } => Ok(Some(Err(ZeoError::conflict(
                        &oid,
                        actual,
                        &to_zeo(expected),
                    )))),
                    CommitError::Invalid(m) => Ok(Some(Err(ZeoError::txn(m)))),
                    other => Err(format!(
                        "the commit's outcome is unknown here ({other}): the client reconnects"
                    )),
                }
            }
        }
    }

    async fn new_oids(&mut self, n: u64) -> Result<Vec<u64>, ZeoError> {
        let face = self.face.clone();
        let mut block = face.oids.lock().await;
        let generation = face.generation();
        if block.generation != generation || block.next + n > block.limit {
            let (mark, serial) = face
                .server
                .inspect(|store, _| commit::read_oid_mark(store))
                .await
                .map_err(|_| ZeoError::storage("server stopped"))??;
            let start = if block.generation == generation {
                mark.max(block.next)
            } else {
                mark
            };
            let limit = start + n.max(10_000);
            let rec = Record {
                oid: replica::zeo_oids_oid(),
                data: Some(Bytes::copy_from_slice(&limit.to_be_bytes())),
                expected_serial: Some(serial),
            };
            face.own_commit(vec![rec])
                .await
                .map_err(|e| ZeoError::storage(format!("cannot reserve oids: {e}")))?;
            block.next = start;
            block.limit = limit;
            block.generation = generation;
        }
        let v: Vec<u64> = (block.next..block.next + n).collect();
        block.next += n;
        Ok(v)
    }

    async fn pack(&mut self, t: Option<&Value>) -> Answer {
        let secs = t.and_then(Value::as_f64).unwrap_or(0.0);
        let z = tid::timestamp((secs.max(0.0) * 1e9) as u128);
        let before = to_store(&z.to_be_bytes(), TID_LIMIT);
        let face = self.face.clone();
        let unreachable = face
            .server
            .inspect(move |store, _| {
                let b = before.min(Tid(store.last_transaction()?.0.saturating_add(1)));
                Ok((b, commit::unreachable(store, b)?))
            })
            .await
            .map_err(|_| ZeoError::storage("server stopped"))??;
        let (before, oids) = unreachable;
        // One replicated pack order: every server packs at the same point of the history.
        for chunk in oids.chunks(50_000).map(|c| c.to_vec()).chain(
            // At least one order, even with nothing to collect.
            oids.is_empty().then(Vec::new),
        ) {
            face.own_commit(vec![Record {
                oid: replica::zeo_pack_oid(),
                data: Some(replica::encode_pack_order(before, &chunk)),
                expected_serial: None,
            }])
            .await
            .map_err(|e| ZeoError::storage(format!("pack: {e}")))?;
        }
        tracing::info!(before = ?before, removed = oids.len(), "ZEO pack ordered");
        Ok(Value::Nil)
    }
}

/// Submits a commit, resubmitting with the same idempotency key while the outcome is unknown
/// and this server stays primary.
pub(crate) async fn commit_with_retries(
    face: &ZeoFace,
    req: CommitRequest,
) -> Result<replica::Committed, CommitError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match face.server.commit(req.clone()).await {
            Err(_) => return Err(CommitError::Down("server stopped".into())),
            Ok(Ok(c)) => return Ok(c),
            // The outcome is unknown, or no primary is in sight here: the same key is
            // resubmitted, so a commit is never applied twice. (A server elected but not
            // yet started holds the commit in the replica itself.)
            Ok(Err(
                CommitError::Retry | CommitError::NotPrimary { primary: None } | CommitError::Busy,
            )) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

impl ZeoFace {
    /// Commits records the face itself writes (oid blocks, pack orders); answered once
    /// durable as the mode promises.
    pub(crate) async fn own_commit(&self, records: Vec<Record>) -> Result<Tid, CommitError> {
        let req = CommitRequest {
            client: self.own_client,
            request: self.own_request.fetch_add(1, Ordering::Relaxed),
            meta: TxnMeta::default(),
            records,
            // Not a clock reading: these transactions are invisible to clients, and a fresh
            // cluster's first oid block must stay below the tids ZODB's tests restore.
            tid: TidChoice::Next,
        };
        let c = commit_with_retries(self, req).await?;
        // Wait until it is visible (released), so a client never learns of a tid before the
        // server would tell it of it.
        let mut rx = self.released_tx.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            rx.wait_for(|t| *t >= c.tid),
        )
        .await;
        Ok(c.tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{MemOptions, MemStorage, Transaction};

    fn put(tid: u64, v: &str) -> Transaction {
        Transaction {
            tid: Tid(tid),
            meta: TxnMeta::default(),
            records: vec![Record {
                oid: Oid::from_u64(1),
                data: Some(Bytes::from(v.to_string())),
                expected_serial: None,
            }],
        }
    }

    /// `loadBefore` as of the read point: a revision past it (applied, not synced) is
    /// neither returned nor named as the end of the one that is current as of that point.
    #[test]
    fn load_before_does_not_show_what_is_past_the_read_point() {
        let s = MemStorage::new(MemOptions::default());
        for (t, v) in [(10, "a"), (20, "b"), (30, "c")] {
            s.commit(&put(t, v)).unwrap();
        }
        let ans = |before: u64, at: u64| {
            load_before_in(&s, &Oid::from_u64(1), Tid(before), Tid(at))
                .unwrap()
                .unwrap()
        };
        let rev = |data: &str, start: u64, end: Option<u64>| {
            Value::Array(vec![
                Value::Binary(data.as_bytes().to_vec()),
                bin(&to_zeo(Tid(start))),
                end.map_or(Value::Nil, |e| bin(&to_zeo(Tid(e)))),
            ])
        };
        // Read point 20: "b" is current, whatever 30 wrote.
        assert_eq!(ans(u64::MAX, 20), rev("b", 20, None));
        assert_eq!(ans(20, 20), rev("a", 10, Some(20)));
        // Read point 30: everything.
        assert_eq!(ans(u64::MAX, 30), rev("c", 30, None));
        assert_eq!(ans(30, 30), rev("b", 20, Some(30)));
    }
}
