//! The client library of `gcsd`: [`connect_unix`] and [`connect_tcp`] give the very same
//! [`Session`] as [`GroupDaemon::connect`](super::GroupDaemon::connect) (join, leave, multicast,
//! next_event, disconnect), bridged to the daemon over a socket by two background tasks:
//!
//! - the *writer* turns the session's requests into frames with fresh ids and keeps each reply
//!   channel in a map of pending requests;
//! - the *reader* turns the daemon's frames back into [`SessionEvent`]s (identical to the
//!   embedded ones: members, view ids, reasons) and answers pending requests.
//!
//! Flow control: the reader always drains the socket, so replies are never stuck behind events
//! the program has not read (a program may multicast to a busy group it never reads, as with an
//! embedded session). Unread events are held in this process up to
//! [`ClientOptions::event_buffer_bytes`]; past it the client ends the session with a "too slow"
//! reason ([`Session::close_reason`]), as the daemon does past its own bound for a client
//! process that stops reading its socket altogether.
//!
//! Errors the daemon reports come back as the same `SessionError::Refused(GroupError)` as
//! embedded; authentication and version failures as `SessionError::Remote`.

use super::group_core::GroupRequest;
use super::proto::{
    self, ClientFrame, Payload, ServerFrame, WireError, HANDSHAKE_FRAME_MAX, PROTOCOL_VERSION,
};
use super::session::{Session, SessionError, SessionRequest};
use crate::groups::{GroupError, MemberId, SessionEvent, SessionId};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Client-side knobs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Capacity (events) of the session's event channel.
    pub event_channel: usize,
    /// Bytes of events this process buffers beyond the channel while the program does not read
    /// them. Replies keep flowing meanwhile (as for an embedded session); past this bound the
    /// client ends the session itself, with a "too slow" reason. (A client process that stops
    /// altogether is cut off by the daemon's own bound.)
    pub event_buffer_bytes: usize,
    /// Time allowed for connecting and the handshake.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            event_channel: 1024,
            event_buffer_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Opens a session named `name` on the `gcsd` listening at Unix socket `path`.
pub async fn connect_unix(path: impl AsRef<Path>, name: &str) -> Result<Session, SessionError> {
    connect_unix_with(path, name, &ClientOptions::default()).await
}

/// [`connect_unix`] with options.
pub async fn connect_unix_with(
    path: impl AsRef<Path>,
    name: &str,
    opts: &ClientOptions,
) -> Result<Session, SessionError> {
    let path = path.as_ref();
    let s = tokio::time::timeout(opts.connect_timeout, UnixStream::connect(path))
        .await
        .map_err(|_| SessionError::Closed(format!("{}: connect timed out", path.display())))?
        .map_err(|e| SessionError::Closed(format!("cannot connect to {}: {e}", path.display())))?;
    connect_stream(s, name, None, opts).await
}

/// Opens a session named `name` on the `gcsd` listening on TCP `addr`, presenting `token`.
pub async fn connect_tcp(
    addr: impl ToSocketAddrs,
    name: &str,
    token: &str,
) -> Result<Session, SessionError> {
    connect_tcp_with(addr, name, token, &ClientOptions::default()).await
}

/// [`connect_tcp`] with options.
pub async fn connect_tcp_with(
    addr: impl ToSocketAddrs,
    name: &str,
    token: &str,
    opts: &ClientOptions,
) -> Result<Session, SessionError> {
    let s = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SessionError::Closed("connect timed out".into()))?
        .map_err(|e| SessionError::Closed(format!("cannot connect: {e}")))?;
    let _ = s.set_nodelay(true);
    connect_stream(s, name, Some(token), opts).await
}

/// What a refusal means to the caller.
fn refusal(e: WireError) -> SessionError {
    match e.into_group_error() {
        Ok(g) => SessionError::Refused(g),
        Err(text) => SessionError::Remote(text),
    }
}

/// Opens a session over an established stream (the handshake, then the bridge tasks).
pub async fn connect_stream<S>(
    stream: S,
    name: &str,
    token: Option<&str>,
    opts: &ClientOptions,
) -> Result<Session, SessionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        name: name.to_string(),
        token: token.map(str::to_string),
    };
    let lost = |e: &dyn std::fmt::Display| SessionError::Closed(format!("handshake: {e}"));
    let answer = tokio::time::timeout(opts.connect_timeout, async {
        wr.write_all(&proto::encode(&hello)).await?;
        proto::read_frame::<ServerFrame, _>(&mut rd, HANDSHAKE_FRAME_MAX).await
    })
    .await
    .map_err(|_| SessionError::Closed("handshake timed out".into()))?;
    let (member, max_message) = match answer {
        Ok(Some(ServerFrame::Welcome {
            version,
            member,
            max_message,
            ..
        })) => {
            if version != PROTOCOL_VERSION {
                return Err(SessionError::Protocol(format!(
                    "daemon speaks protocol {version}, this client {PROTOCOL_VERSION}"
                )));
            }
            (MemberId::from(member), max_message)
        }
        Ok(Some(ServerFrame::Refused { error })) => return Err(refusal(error)),
        Ok(Some(other)) => {
            return Err(SessionError::Protocol(format!(
                "unexpected answer to hello: {other:?}"
            )))
        }
        Ok(None) => return Err(lost(&"the daemon closed the connection")),
        Err(e) => return Err(lost(&e)),
    };
    let max_message = usize::try_from(max_message).unwrap_or(usize::MAX);
    let max_frame = max_message.saturating_add(proto::FRAME_OVERHEAD);
    let (requests_tx, requests) = mpsc::channel(64);
    let (events_tx, events) = mpsc::channel(opts.event_channel.max(1));
    let session = Session::new(
        member.clone(),
        SessionId(member.session),
        requests_tx,
        events,
    );
    let shared = Arc::new(Mutex::new(Pending {
        map: BTreeMap::new(),
        closed: None,
        reason: session.close_reason.clone(),
    }));
    let (buffer_tx, buffer_rx) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicUsize::new(0));
    let (kill_tx, kill_rx) = oneshot::channel();
    tokio::spawn(mover(buffer_rx, events_tx, buffered.clone()));
    let buffer = Buffer {
        tx: buffer_tx,
        bytes: buffered,
        max: opts.event_buffer_bytes,
        kill: kill_tx,
    };
    tokio::spawn(reader(rd, buffer, shared.clone(), max_frame));
    tokio::spawn(writer(wr, requests, kill_rx, shared, max_message));
    Ok(session)
}

fn event_bytes(e: &SessionEvent) -> usize {
    match e {
        SessionEvent::Message { payload, .. } => payload.len() + 64,
        _ => 256,
    }
}

/// Events read from the socket, waiting for the program (bounded in bytes by the reader).
struct Buffer {
    tx: mpsc::UnboundedSender<SessionEvent>,
    bytes: Arc<AtomicUsize>,
    max: usize,
    /// Tells the writer to say Bye (the client cut the session off).
    kill: oneshot::Sender<()>,
}

/// Moves buffered events into the session's channel as the program reads them.
async fn mover(
    mut rx: mpsc::UnboundedReceiver<SessionEvent>,
    events: mpsc::Sender<SessionEvent>,
    bytes: Arc<AtomicUsize>,
) {
    while let Some(e) = rx.recv().await {
        let n = event_bytes(&e);
        if events.send(e).await.is_err() {
            return;
        }
        bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

type Reply = oneshot::Sender<Result<(), SessionError>>;

struct Pending {
    map: BTreeMap<u64, Reply>,
    /// Set once the connection is over: later calls fail at once with it.
    closed: Option<String>,
    /// The session's `close_reason`.
    reason: Arc<Mutex<Option<String>>>,
}

fn close(shared: &Mutex<Pending>, why: String) {
    let Ok(mut p) = shared.lock() else { return };
    if p.closed.is_some() {
        return;
    }
    if let Ok(mut r) = p.reason.lock() {
        *r = Some(why.clone());
    }
    for (_, tx) in std::mem::take(&mut p.map) {
        let _ = tx.send(Err(SessionError::Closed(why.clone())));
    }
    p.closed = Some(why);
}

async fn reader<R: AsyncRead + Unpin>(
    mut rd: R,
    events: Buffer,
    shared: Arc<Mutex<Pending>>,
    max_frame: usize,
) {
    let why = loop {
        let frame = match proto::read_frame::<ServerFrame, _>(&mut rd, max_frame).await {
            Ok(Some(f)) => f,
            Ok(None) => break "connection closed by the daemon".to_string(),
            Err(e) => break format!("connection to the daemon lost: {e}"),
        };
        match frame {
            ServerFrame::Reply { id, error } => {
                let tx = shared.lock().ok().and_then(|mut p| p.map.remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(match error {
                        None => Ok(()),
                        Some(e) => Err(refusal(e)),
                    });
                }
            }
            ServerFrame::Closed { reason } => break reason,
            other => match other.into_event() {
                Ok(Some(e)) => {
                    let n = event_bytes(&e);
                    let held = events.bytes.fetch_add(n, Ordering::Relaxed) + n;
                    if events.tx.send(e).is_err() {
                        break "session dropped".to_string();
                    }
                    if held > events.max {
                        let _ = events.kill.send(());
                        break format!(
                            "too slow: more than {} bytes of unread events in this client",
                            events.max
                        );
                    }
                }
                Ok(None) => break "protocol error: unexpected frame from the daemon".to_string(),
                Err(e) => break format!("protocol error: {e}"),
            },
        }
    };
    close(&shared, why);
    // Dropping `events` now ends the session's stream (once the program has read what is
    // buffered), after its reason is set.
}

fn to_frame(
    id: u64,
    req: SessionRequest,
    max_message: usize,
) -> Result<(ClientFrame, Reply), Option<Reply>> {
    Ok(match req {
        SessionRequest::Join { group, reply } => (ClientFrame::Join { id, group }, reply),
        SessionRequest::Leave { group, reply } => (ClientFrame::Leave { id, group }, reply),
        SessionRequest::Multicast {
            groups,
            service,
            payload,
            reply,
        } => {
            if payload.len() > max_message {
                let _ = reply.send(Err(SessionError::Refused(GroupError::TooLarge {
                    size: payload.len(),
                    max: max_message,
                })));
                return Err(None);
            }
            let f = ClientFrame::Multicast {
                id,
                groups,
                service: service.to_u8(),
                payload: Payload(payload),
            };
            (f, reply)
        }
        SessionRequest::Disconnect => return Err(None),
    })
}

async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut requests: mpsc::Receiver<GroupRequest>,
    mut kill: oneshot::Receiver<()>,
    shared: Arc<Mutex<Pending>>,
    max_message: usize,
) {
    let mut next_id = 1u64;
    let mut buf = Vec::new();
    let mut bye = false;
    let mut kill_open = true;
    loop {
        let req = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => r,
                None => break,
            },
            k = &mut kill, if kill_open => {
                kill_open = false;
                match k {
                    Ok(()) => GroupRequest::Session(SessionId(0), SessionRequest::Disconnect),
                    Err(_) => continue,
                }
            }
        };
        let mut next = Some(req);
        // Batch what is ready.
        while let Some(req) = next.take() {
            match req {
                GroupRequest::Session(_, SessionRequest::Disconnect) => bye = true,
                GroupRequest::Session(_, req) => {
                    let id = next_id;
                    next_id += 1;
                    if let Ok((frame, reply)) = to_frame(id, req, max_message) {
                        let Ok(mut p) = shared.lock() else { return };
                        if let Some(why) = &p.closed {
                            let _ = reply.send(Err(SessionError::Closed(why.clone())));
                        } else if bye {
                            let why = "session disconnected".to_string();
                            let _ = reply.send(Err(SessionError::Closed(why)));
                        } else {
                            p.map.insert(id, reply);
                            drop(p);
                            proto::encode_into(&frame, &mut buf);
                        }
                    }
                }
                GroupRequest::Connect { reply, .. } => {
                    let why = "a session cannot open another session".to_string();
                    let _ = reply.send(Err(SessionError::Protocol(why)));
                }
            }
            if buf.len() < 256 << 10 {
                next = requests.try_recv().ok();
            }
        }
        if bye {
            proto::encode_into(&ClientFrame::Bye, &mut buf);
        }
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                close(&shared, format!("connection to the daemon lost: {e}"));
            }
            buf.clear();
        }
        if bye {
            let _ = wr.shutdown().await;
            break;
        }
    }
    if !bye {
        // The session was dropped without `disconnect`: end it all the same.
        let _ = wr.write_all(&proto::encode(&ClientFrame::Bye)).await;
        let _ = wr.shutdown().await;
    }
    // Calls made after the end are answered with the reason, until the session is dropped.
    while let Some(req) = requests.recv().await {
        let why = shared
            .lock()
            .ok()
            .and_then(|p| p.closed.clone())
            .unwrap_or_else(|| "session disconnected".into());
        if let GroupRequest::Session(_, req) = req {
            if let Ok((_, reply)) = to_frame(0, req, usize::MAX) {
                let _ = reply.send(Err(SessionError::Closed(why)));
            }
        }
    }
}
