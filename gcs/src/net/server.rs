//! The session server of `gcsd`: client processes reach a [`GroupDaemon`] over a Unix socket
//! (its file permissions are the authentication) or TCP (the client presents a token, compared in
//! constant time), speaking [`proto`](super::proto).
//!
//! Per connection, two tasks and bounded channels only:
//!
//! - the *reader* turns frames into session requests to the daemon, awaits each answer (requests
//!   of a session are answered in order, as for an embedded session) and queues a `Reply`;
//! - the *writer* owns the write half and writes replies and the session's events (taken straight
//!   from the session's channel: no third hop) in batches.
//!
//! A client that stops reading fills its socket, then the writer stops taking events, then the
//! session's channel fills and `GroupCore` keeps a bounded backlog: past it the daemon cuts the
//! session off, without the ring ever waiting. The writer then skips what is left, tells the
//! client why (`Closed { reason }`) once the frame in flight is through (within `linger`), and
//! closes. Nothing here can block the daemon or another session.

use super::daemon::{DaemonOptions, GroupDaemon};
use super::group_core::GroupRequest;
use super::proto::{
    self, ClientFrame, FrameError, ServerFrame, WireError, WireMember, HANDSHAKE_FRAME_MAX,
    PROTOCOL_VERSION,
};
use super::session::{SessionError, SessionRequest};
use crate::groups::{SessionEvent, SessionId};
use crate::Service;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// How the session server listens and what it allows.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Unix socket path (created at start, removed at shutdown).
    pub unix: Option<PathBuf>,
    /// Permission bits of the Unix socket (0o600: this user only; 0o660: and its group).
    pub unix_mode: u32,
    /// TCP address (port 0: any free port, see [`Server::tcp_addr`]).
    pub tcp: Option<SocketAddr>,
    /// The token TCP clients must present (required when `tcp` is set).
    pub token: Option<String>,
    /// Largest message payload (the ring's `max_message_size`); frames may be
    /// [`proto::FRAME_OVERHEAD`] larger.
    pub max_message: usize,
    /// The daemon's `session_backlog_max` (for the reason given to a cut-off client).
    pub backlog_max: usize,
    /// Time a client has to send its `Hello`.
    pub handshake_timeout: Duration,
    /// Time a cut-off or closing session's writer waits for the client to take the frame in
    /// flight and the `Closed` frame.
    pub linger: Duration,
    /// Connections at once (sessions are limited by the daemon's `Limits`; this bounds
    /// connections that have not said hello yet too).
    pub max_connections: usize,
}

impl ServerOptions {
    /// Options matching the daemon started with `d`, listening nowhere yet.
    pub fn for_daemon(d: &DaemonOptions) -> ServerOptions {
        ServerOptions {
            unix: None,
            unix_mode: 0o600,
            tcp: None,
            token: None,
            max_message: d.cluster.protocol().max_message_size,
            backlog_max: d.session_backlog_max,
            handshake_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(5),
            max_connections: d.limits.max_sessions + 64,
        }
    }
}

struct Shared {
    requests: mpsc::Sender<GroupRequest>,
    session_channel: usize,
    opts: ServerOptions,
    connections: Arc<Semaphore>,
}

/// A running session server. [`shutdown`](Server::shutdown) closes the listeners, tells every
/// session and disconnects it, and removes the socket file.
pub struct Server {
    unix: Option<PathBuf>,
    tcp: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Unix,
    Tcp,
}

impl Server {
    /// Starts listening for sessions of `daemon`.
    pub async fn start(daemon: &GroupDaemon, opts: ServerOptions) -> io::Result<Server> {
        if opts.tcp.is_some() && opts.token.as_deref().is_none_or(str::is_empty) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TCP listener needs a client token",
            ));
        }
        let unix = match &opts.unix {
            Some(p) => Some(bind_unix(p, opts.unix_mode)?),
            None => None,
        };
        let tcp = match opts.tcp {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let tcp_addr = match &tcp {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests: daemon.requests(),
            session_channel: daemon.session_channel().max(1),
            connections: Arc::new(Semaphore::new(opts.max_connections.max(1))),
            opts: opts.clone(),
        });
        let task = tokio::spawn(accept_loop(unix, tcp, shared, stop_rx));
        Ok(Server {
            unix: opts.unix,
            tcp: tcp_addr,
            stop,
            task,
        })
    }

    /// The TCP address listened on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The Unix socket path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// Closes the listeners, sends every session `Closed { "daemon shutting down" }`,
    /// disconnects it, and removes the socket file. Bounded by `linger`.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(p) = &self.unix {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds the Unix socket with `mode` without a window where it is more open: it is created in a
/// fresh directory only we can enter, chmod'ed there, then renamed into place. A stale socket
/// (nobody listening) is replaced; a live one is an error.
fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: another daemon is listening", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no name"))?;
    let tmpdir = dir.join(format!(
        ".{}.{}.tmp",
        file.to_string_lossy(),
        std::process::id()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&tmpdir)?;
    let tmp = tmpdir.join("s");
    let bound = (|| {
        let l = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&tmpdir);
    bound
}

async fn accept_loop(
    unix: Option<UnixListener>,
    tcp: Option<TcpListener>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = async { unix.as_ref().expect("guarded").accept().await }, if unix.is_some() => {
                match r {
                    Ok((s, _)) => spawn_conn(&mut conns, s, Kind::Unix, &shared, &stop),
                    Err(e) => accept_failed(e).await,
                }
            }
            r = async { tcp.as_ref().expect("guarded").accept().await }, if tcp.is_some() => {
                match r {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        tracing::debug!(%peer, "tcp connection");
                        spawn_conn(&mut conns, s, Kind::Tcp, &shared, &stop)
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(unix);
    drop(tcp);
    // Every connection sees the stop signal; give them `linger` (plus the daemon round trip).
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.opts.linger + Duration::from_secs(1), all)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

async fn accept_failed(e: io::Error) {
    // Out of descriptors and the like: do not spin.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn spawn_conn<S>(
    conns: &mut JoinSet<()>,
    stream: S,
    kind: Kind,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = shared.clone();
    let stop = stop.clone();
    conns.spawn(async move {
        match shared.connections.clone().try_acquire_owned() {
            Ok(_permit) => connection(stream, kind, &shared, stop).await,
            Err(_) => {
                let (_, mut wr) = tokio::io::split(stream);
                let max = shared.opts.max_connections;
                let f = ServerFrame::Refused {
                    error: WireError::Other(format!("too many connections (limit {max})")),
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), wr.write_all(&proto::encode(&f)))
                        .await;
            }
        }
    });
}

/// Compares a presented token with the expected one in time independent of where they differ
/// (`subtle`; only the length may show).
fn token_matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

async fn send_and_close<W: AsyncWrite + Unpin>(wr: &mut W, f: &ServerFrame) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(&proto::encode(f)).await?;
        wr.shutdown().await
    })
    .await;
}

async fn connection<S>(stream: S, kind: Kind, shared: &Shared, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let refuse = |error: WireError| ServerFrame::Refused { error };
    // Handshake: a Hello within the timeout, the right version, the token over TCP.
    let hello = tokio::select! {
        _ = stop.changed() => return,
        r = tokio::time::timeout(
            shared.opts.handshake_timeout,
            proto::read_frame::<ClientFrame, _>(&mut rd, HANDSHAKE_FRAME_MAX),
        ) => r,
    };
    let (name, token) = match hello {
        Ok(Ok(Some(ClientFrame::Hello {
            version,
            name,
            token,
        }))) => {
            if version != PROTOCOL_VERSION {
                let why = format!(
                    "protocol version {version} not supported (this daemon speaks {PROTOCOL_VERSION})"
                );
                return send_and_close(&mut wr, &refuse(WireError::Other(why))).await;
            }
            (name, token)
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(_))) => {
            let why = "the first frame must be Hello".to_string();
            return send_and_close(&mut wr, &refuse(WireError::Other(why))).await;
        }
        Ok(Err(e)) => {
            let why = format!("bad hello: {e}");
            return send_and_close(&mut wr, &refuse(WireError::Other(why))).await;
        }
        Err(_) => {
            let why = "no hello in time".to_string();
            return send_and_close(&mut wr, &refuse(WireError::Other(why))).await;
        }
    };
    if kind == Kind::Tcp {
        let expected = shared.opts.token.as_deref().unwrap_or_default();
        if !token.as_deref().is_some_and(|t| token_matches(expected, t)) {
            tracing::info!(%name, "tcp client refused: bad token");
            let why = "authentication failed: bad or missing token".to_string();
            return send_and_close(&mut wr, &refuse(WireError::Other(why))).await;
        }
    }
    // Open the session.
    let (events_tx, events) = mpsc::channel(shared.session_channel);
    let (reply, rx) = oneshot::channel();
    let connect = GroupRequest::Connect {
        name: name.clone(),
        events: events_tx,
        reply,
    };
    if shared.requests.send(connect).await.is_err() {
        let why = WireError::Other("daemon stopped".into());
        return send_and_close(&mut wr, &refuse(why)).await;
    }
    let (sid, member) = match rx.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return send_and_close(&mut wr, &refuse(session_error(&e))).await,
        Err(_) => {
            let why = WireError::Other("daemon stopped".into());
            return send_and_close(&mut wr, &refuse(why)).await;
        }
    };
    tracing::info!(?member, ?kind, "session open");
    let welcome = ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
        member: WireMember::from(&member),
        private_group: member.private_group(),
        max_message: shared.opts.max_message as u64,
    };
    if wr.write_all(&proto::encode(&welcome)).await.is_err() {
        let _ = shared
            .requests
            .send(GroupRequest::Session(sid, SessionRequest::Disconnect))
            .await;
        return;
    }
    let (replies_tx, replies) = mpsc::channel(64);
    let mut writer = tokio::spawn(writer(
        wr,
        replies,
        events,
        stop,
        shared.requests.clone(),
        shared.opts.clone(),
    ));
    let max_frame = shared
        .opts
        .max_message
        .saturating_add(proto::FRAME_OVERHEAD);
    let writer_done = tokio::select! {
        why = reader(rd, &shared.requests, sid, replies_tx, max_frame) => {
            tracing::info!(?member, why, "session closed by the client");
            false
        }
        _ = &mut writer => true,
    };
    let _ = shared
        .requests
        .send(GroupRequest::Session(sid, SessionRequest::Disconnect))
        .await;
    if !writer_done
        && tokio::time::timeout(shared.opts.linger, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

fn session_error(e: &SessionError) -> WireError {
    match e {
        SessionError::Refused(g) => WireError::from(g),
        other => WireError::Other(other.to_string()),
    }
}

async fn call(
    requests: &mpsc::Sender<GroupRequest>,
    sid: SessionId,
    make: impl FnOnce(oneshot::Sender<Result<(), SessionError>>) -> SessionRequest,
) -> Option<WireError> {
    let (tx, rx) = oneshot::channel();
    if requests
        .send(GroupRequest::Session(sid, make(tx)))
        .await
        .is_err()
    {
        return Some(WireError::Other("daemon stopped".into()));
    }
    match rx.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(session_error(&e)),
        Err(_) => Some(WireError::Other("daemon stopped".into())),
    }
}

/// Frames from the client → requests to the daemon → replies. Returns why it stopped.
async fn reader<R: AsyncRead + Unpin>(
    mut rd: R,
    requests: &mpsc::Sender<GroupRequest>,
    sid: SessionId,
    replies: mpsc::Sender<ServerFrame>,
    max_frame: usize,
) -> &'static str {
    loop {
        let frame = match proto::read_frame::<ClientFrame, _>(&mut rd, max_frame).await {
            Ok(Some(f)) => f,
            Ok(None) => return "end of stream",
            Err(FrameError::Io(_)) => return "connection lost",
            Err(e) => {
                let reason = format!("protocol error: {e}");
                let _ = replies.send(ServerFrame::Closed { reason }).await;
                return "protocol error";
            }
        };
        let (id, error) = match frame {
            ClientFrame::Bye => return "bye",
            ClientFrame::Hello { .. } => {
                let reason = "protocol error: a second Hello".to_string();
                let _ = replies.send(ServerFrame::Closed { reason }).await;
                return "protocol error";
            }
            ClientFrame::Join { id, group } => (
                id,
                call(requests, sid, |reply| SessionRequest::Join { group, reply }).await,
            ),
            ClientFrame::Leave { id, group } => (
                id,
                call(requests, sid, |reply| SessionRequest::Leave {
                    group,
                    reply,
                })
                .await,
            ),
            ClientFrame::Multicast {
                id,
                groups,
                service,
                payload,
            } => match Service::from_u8(service) {
                None => (
                    id,
                    Some(WireError::Other(format!("unknown service {service}"))),
                ),
                Some(service) => (
                    id,
                    call(requests, sid, |reply| SessionRequest::Multicast {
                        groups,
                        service,
                        payload: payload.0,
                        reply,
                    })
                    .await,
                ),
            },
        };
        if replies
            .send(ServerFrame::Reply { id, error })
            .await
            .is_err()
        {
            return "writer gone";
        }
    }
}

/// Largest batch of frames written at once.
const BATCH: usize = 256 << 10;

/// Writes `buf`; if the session is cut off or the server stops while the client is not
/// reading, waits at most `linger` more for the client to take it.
async fn write_checked<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &[u8],
    cut: impl Fn() -> bool,
    linger: Duration,
) -> io::Result<()> {
    let fut = wr.write_all(buf);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if cut() {
                    return tokio::time::timeout(linger, fut)
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
                }
            }
        }
    }
}

async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut replies: mpsc::Receiver<ServerFrame>,
    mut events: mpsc::Receiver<SessionEvent>,
    mut stop: watch::Receiver<bool>,
    requests: mpsc::Sender<GroupRequest>,
    opts: ServerOptions,
) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut replies_open = true;
    let closing: String = loop {
        // A cut-off session (the daemon dropped its channel) gets nothing more but the reason.
        if *stop.borrow() {
            break "daemon shutting down".into();
        }
        if events.is_closed() {
            break if requests.is_closed() {
                "daemon stopped".into()
            } else {
                format!(
                    "too slow: more than {} bytes of unread events",
                    opts.backlog_max
                )
            };
        }
        let mut last = false;
        tokio::select! {
            biased;
            r = stop.changed() => match r {
                Ok(()) => continue,
                Err(_) => break "daemon shutting down".into(), // the server was dropped
            },
            f = replies.recv(), if replies_open => match f {
                Some(f) => {
                    last = matches!(f, ServerFrame::Closed { .. });
                    proto::encode_into(&f, &mut buf);
                }
                None => replies_open = false,
            },
            e = events.recv() => match e {
                Some(e) => proto::encode_into(&ServerFrame::event(&e), &mut buf),
                None => continue,
            },
        }
        if !replies_open {
            return; // the reader is gone: the client closed (or said bye)
        }
        // Batch what else is ready.
        while !last && buf.len() < BATCH {
            if let Ok(f) = replies.try_recv() {
                last = matches!(f, ServerFrame::Closed { .. });
                proto::encode_into(&f, &mut buf);
            } else if let Ok(e) = events.try_recv() {
                proto::encode_into(&ServerFrame::event(&e), &mut buf);
            } else {
                break;
            }
        }
        let cut = || events.is_closed() || *stop.borrow();
        if write_checked(&mut wr, &buf, cut, opts.linger)
            .await
            .is_err()
        {
            return;
        }
        buf.clear();
        if last {
            let _ = wr.shutdown().await;
            return;
        }
        if replies.is_empty() && events.is_empty() {
            let _ = wr.flush().await;
        }
    };
    tracing::info!(reason = %closing, "closing session");
    let _ = tokio::time::timeout(opts.linger, async {
        wr.write_all(&proto::encode(&ServerFrame::Closed { reason: closing }))
            .await?;
        wr.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
        assert!(!token_matches("secret", "secre"));
        assert!(!token_matches("secret", ""));
        assert!(!token_matches("", "x"));
    }
}
