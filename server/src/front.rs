//! The client port: one task per TCP connection speaking [`crate::proto`]. Bad input gets an
//! `Error` frame (and, when the framing itself is broken, the connection is closed); it never
//! affects other connections or the server.
//!
//! A connection must say `Hello` (with the client token, when the cluster has tokens) first:
//! until then a frame holds at most 4 KiB (`HELLO_FRAME_MAX`) and the greeting must be done
//! within [`HELLO_TIMEOUT`]; a server takes at most [`CONNECTIONS_MAX`] connections. Each
//! request is checked against its token's role ([`Access`]: read, write, admin). A client whose
//! answer waits longer than [`WRITE_STALL_MAX`] for room in its socket is cut off as one that
//! stopped reading, so a stuck reader holds no server memory for long.

use crate::membership::{Membership, MembershipChange};
use crate::proto::{ErrorKind, FrameError, ProtoError, Request, Response, ServerInfo, StatusInfo};
use crate::{ReadAnswer, ReadOp, ServerEvent, StorageServer};
use bytes::Bytes;
use futures_util::StreamExt;
use standby_client::framing::FrameCodec;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

/// A client connection: plain TCP, or TLS over it.
pub use standby_client::ClientStream;
use tokio::sync::broadcast;

/// What a client token allows, in increasing order: each level includes the ones below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Loads, history, iteration, status, the invalidation stream.
    Read,
    /// Reads and commits.
    Write,
    /// Everything: switchover, adding and removing replicas, the lost archive, and the admin
    /// endpoint's `/status` and `/metrics`.
    Admin,
}

impl std::str::FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Access, String> {
        match s {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "admin" => Ok(Access::Admin),
            other => Err(format!("{other:?} is not a role (read, write or admin)")),
        }
    }
}

/// The client tokens: `ROLE TOKEN` lines (`read`, `write` or `admin`), blank lines and `#`
/// comments ignored.
pub fn parse_tokens(text: &str) -> Result<Vec<(Access, Bytes)>, String> {
    let mut v = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (role, token) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("line {}: expected ROLE TOKEN", n + 1))?;
        let token = token.trim();
        if token.len() < 16 {
            return Err(format!(
                "line {}: a token needs at least 16 characters",
                n + 1
            ));
        }
        v.push((
            role.parse().map_err(|e| format!("line {}: {e}", n + 1))?,
            Bytes::from(token.to_string()),
        ));
    }
    Ok(v)
}

/// The access `token` gives among `tokens` (every token is compared, in constant time each).
pub fn access_of(tokens: &[(Access, Bytes)], token: &[u8]) -> Option<Access> {
    let mut found = None;
    for (a, t) in tokens {
        if constant_time_eq(token, t) {
            found = found.max(Some(*a));
        }
    }
    found
}

/// The access a request needs.
fn needs(req: &Request) -> Access {
    match req {
        Request::Commit { .. } => Access::Write,
        Request::AddReplica { .. }
        | Request::RemoveReplica { .. }
        | Request::LostArchive { .. }
        | Request::Switchover { .. } => Access::Admin,
        _ => Access::Read,
    }
}

/// What every connection shares.
pub struct Front {
    /// The server.
    pub server: Arc<StorageServer>,
    /// The tokens clients may present, with what each allows (`None`: no token needed, every
    /// client has [`Access::Admin`]: for a throwaway cluster only).
    pub tokens: Option<Vec<(Access, Bytes)>>,
    /// The servers of the configuration file (id, name, client address).
    pub configured: Vec<(u32, String, String)>,
    /// The servers now, for topology answers: the configured ones as added and removed while
    /// running (see [`Front::set_membership`]).
    pub topology: std::sync::RwLock<Vec<(u32, String, String)>>,
    /// Invalidations and loss reports, for subscribers.
    pub events: broadcast::Sender<ServerEvent>,
    /// How long a new connection has to say Hello ([`HELLO_TIMEOUT`] in the server).
    pub hello_timeout: std::time::Duration,
    /// How long one frame to a client may wait for room in its socket before the client is
    /// cut off as one that stopped reading ([`WRITE_STALL_MAX`] in the server).
    pub write_stall_max: std::time::Duration,
    /// TLS on the port (`None`: plain TCP, only when the configuration says so).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

impl Front {
    /// The topology for `configured` servers (id, name, client address) after `m`.
    pub fn topology_of(
        configured: &[(u32, String, String)],
        m: &Membership,
    ) -> Vec<(u32, String, String)> {
        configured
            .iter()
            .filter(|(id, _, _)| !m.is_removed(*id))
            .cloned()
            .chain(
                m.added
                    .iter()
                    .map(|a| (a.id, a.name.clone(), a.client.clone())),
            )
            .collect()
    }

    /// Applies a membership the server announced to the topology clients are given.
    pub fn set_membership(&self, m: &Membership) {
        let t = Front::topology_of(&self.configured, m);
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = t;
    }
}

/// Most client connections served at once; more are told so and closed.
pub const CONNECTIONS_MAX: usize = 4096;
/// How long a new connection has to say Hello, by default.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a frame may wait for a client to make room, by default.
pub const WRITE_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts clients until the listener fails.
pub async fn serve(listener: TcpListener, front: Arc<Front>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        match listener.accept().await {
            Ok((mut sock, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = CONNECTIONS_MAX, "too many client connections: refused");
                    tokio::spawn(async move {
                        let m = format!("too many connections (at most {CONNECTIONS_MAX})");
                        let frame = err(ErrorKind::Unavailable, m).encode(0);
                        let _ = tokio::time::timeout(HELLO_TIMEOUT, sock.write_all(&frame)).await;
                    });
                    continue;
                };
                let f = front.clone();
                tokio::spawn(async move {
                    let _ = sock.set_nodelay(true);
                    let stream: Box<dyn ClientStream> = match &f.tls {
                        None => Box::new(sock),
                        Some(tls) => {
                            // The handshake counts against the Hello deadline.
                            let hs =
                                tokio::time::timeout(f.hello_timeout, tls.acceptor().accept(sock))
                                    .await;
                            match hs {
                                Ok(Ok(s)) => Box::new(s),
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake failed: connection closed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "no TLS handshake in time: connection closed");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = connection(stream, f).await {
                        tracing::debug!(%peer, error = %e, "client connection ended");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

/// Equal, in time independent of where they differ (`subtle`; only the length may show).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

async fn connection(sock: Box<dyn ClientStream>, front: Arc<Front>) -> std::io::Result<()> {
    let (rd, wr) = tokio::io::split(sock);
    // Frames of at most 4 KiB until the Hello is accepted (see `FrameCodec::client_port`).
    let mut frames = FramedRead::new(rd, FrameCodec::client_port());
    // Answers and pushed events share the socket: each frame is written whole under a lock,
    // by the task that has it (no hop through a writer task for every answer).
    let (cut, mut cut_rx) = tokio::sync::watch::channel(false);
    let tx = Out {
        w: Arc::new(tokio::sync::Mutex::new(wr)),
        cut: Arc::new(cut),
        stall_max: front.write_stall_max,
    };
    let mut hello = false;
    let mut access = Access::Read;
    // One deadline for the whole greeting: bad frames before Hello do not extend it.
    let hello_deadline = tokio::time::Instant::now() + front.hello_timeout;
    let result = loop {
        let read = if hello {
            tokio::select! {
                r = frames.next() => r.transpose(),
                _ = cut_rx.wait_for(|c| *c) => break Ok(()),
            }
        } else {
            // Before Hello: small frames only, and not forever.
            match tokio::time::timeout_at(hello_deadline, frames.next()).await {
                Ok(r) => r.transpose(),
                Err(_) => {
                    let m = format!("no Hello within {:?}", front.hello_timeout);
                    let _ = tx.send(err(ErrorKind::Unauthorized, m).encode(0)).await;
                    break Ok(());
                }
            }
        };
        let body = match read {
            Ok(Some(b)) => b,
            Ok(None) => break Ok(()),
            Err(FrameError::Io(e)) => break Err(e),
            Err(FrameError::Proto(e)) => {
                // The length itself is unusable: say why and close.
                let _ = tx
                    .send(err(ErrorKind::BadRequest, e.to_string()).encode(0))
                    .await;
                break Ok(());
            }
        };
        let (id, req) = match Request::decode(&body) {
            Ok(x) => x,
            Err(ProtoError::Version(v)) => {
                let m = format!(
                    "protocol version {v} is not supported (this server speaks {})",
                    crate::proto::VERSION
                );
                let _ = tx.send(err(ErrorKind::Version, m).encode(0)).await;
                break Ok(());
            }
            Err(e) => {
                // The frame was delimited correctly: answer and keep the connection.
                let id = crate::proto::frame_id(&body).unwrap_or(0);
                if tx
                    .send(err(ErrorKind::BadRequest, e.to_string()).encode(id))
                    .await
                    .is_err()
                {
                    break Ok(());
                }
                continue;
            }
        };
        if !hello {
            let granted = match (&req, &front.tokens) {
                (Request::Hello { .. }, None) => Some(Access::Admin),
                (Request::Hello { token }, Some(t)) => access_of(t, token),
                _ => None,
            };
            let Some(granted) = granted else {
                let _ = tx
                    .send(
                        err(
                            ErrorKind::Unauthorized,
                            "a Hello with one of the cluster's client tokens must come first",
                        )
                        .encode(id),
                    )
                    .await;
                break Ok(());
            };
            access = granted;
            hello = true;
            frames.decoder_mut().hello_accepted();
            let _ = tx
                .send(
                    Response::Welcome {
                        server: front.server.id(),
                    }
                    .encode(id),
                )
                .await;
            continue;
        }
        let need = needs(&req);
        let answer = if access < need {
            err(
                ErrorKind::Unauthorized,
                format!("this token allows {access:?} requests; this one needs {need:?}"),
            )
        } else {
            handle(&front, req, &tx).await
        };
        if tx.send(answer.encode(id)).await.is_err() {
            break Ok(());
        }
    };
    result
}

/// The write side of a client connection, shared by its answers and its pushed events. A
/// client that stops reading fills its socket's buffer; a frame that cannot be written within
/// `stall_max` cuts the connection off (`cut` tells the reading loop), so such a client costs
/// a bounded backlog (its socket buffer, and the event channel, whose laggards are told to
/// drop their cache) and never holds up the server or other clients.
#[derive(Clone)]
struct Out {
    w: Arc<tokio::sync::Mutex<tokio::io::WriteHalf<Box<dyn ClientStream>>>>,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    stall_max: std::time::Duration,
}

impl Out {
    async fn send(&self, frame: Bytes) -> std::io::Result<()> {
        if *self.cut.borrow() {
            return Err(std::io::Error::other("connection cut off"));
        }
        let write = async { self.w.lock().await.write_all(&frame).await };
        match tokio::time::timeout(self.stall_max, write).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    stall = ?self.stall_max,
                    "a client stopped reading its answers or its events: connection cut off"
                );
                self.cut.send_replace(true);
                Err(std::io::Error::other("client stopped reading"))
            }
        }
    }
}

async fn handle(front: &Front, req: Request, tx: &Out) -> Response {
    let stopped = || err(ErrorKind::Internal, "the server has stopped");
    match req {
        Request::Hello { .. } => err(ErrorKind::BadRequest, "already said hello"),
        Request::Commit {
            client,
            request,
            meta,
            records,
        } => {
            if let Some(r) = records
                .iter()
                .find(|r| r.oid.as_bytes().first() == Some(&replica::RESERVED_OID_PREFIX))
            {
                let e = replica::CommitError::Invalid(format!("reserved oid {}", r.oid));
                return Response::Commit(Err(e));
            }
            let c = replica::CommitRequest {
                client,
                request,
                meta,
                records,
                tid: replica::TidChoice::Next,
            };
            match front.server.commit(c).await {
                Ok(r) => Response::Commit(r),
                Err(_) => stopped(),
            }
        }
        Request::AddReplica {
            client,
            request,
            server,
        } => match front
            .server
            .change_membership(client, request, MembershipChange::Add(server))
            .await
        {
            Ok(r) => Response::Commit(r),
            Err(_) => stopped(),
        },
        Request::RemoveReplica {
            client,
            request,
            id,
        } => match front
            .server
            .change_membership(client, request, MembershipChange::Remove(id))
            .await
        {
            Ok(r) => Response::Commit(r),
            Err(_) => stopped(),
        },
        Request::ChangeVoters { add, remove } => {
            match front.server.change_voters(add, remove).await {
                Ok(r) => Response::Commit(r),
                Err(_) => stopped(),
            }
        }
        Request::Load { oid } => read(front, ReadOp::Load(oid)).await,
        Request::LoadBefore { oid, tid } => read(front, ReadOp::LoadBefore(oid, tid)).await,
        Request::History { oid, n } => read(front, ReadOp::History(oid, n)).await,
        Request::LastTransaction => read(front, ReadOp::Last).await,
        Request::Iterate { start, stop, max } => {
            // A scan runs on this connection's task (through the store's read handle when it
            // has one), not on the ring's, and its page is bounded in bytes.
            let op = ReadOp::Iterate { start, stop, max };
            match front
                .server
                .read_fast(move |store, at| crate::core::read_store(store, op.clone(), at))
                .await
            {
                Ok(Ok(ReadAnswer::Transactions(txns, more))) => {
                    Response::Transactions { txns, more }
                }
                Ok(Ok(_)) => err(ErrorKind::Internal, "unexpected answer to an iteration"),
                Ok(Err(e)) => err(ErrorKind::Unavailable, e.to_string()),
                Err(_) => err(ErrorKind::Internal, "the server has stopped"),
            }
        }
        Request::Status => match front.server.status().await {
            Ok(st) => Response::Status(status_info(front, &st)),
            Err(_) => stopped(),
        },
        Request::Subscribe => {
            let me = front.server.id();
            let configured = front.configured.clone();
            let mut events = front.events.subscribe();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let frame = match events.recv().await {
                        Ok(ServerEvent::Invalidate(i)) => Response::Invalidation {
                            tid: i.tid,
                            oids: i.oids,
                        },
                        Ok(ServerEvent::Lost(l)) => Response::Lost {
                            server: l.server,
                            tids: l.tids,
                            oids: l.oids,
                        },
                        Ok(ServerEvent::Role(r) | ServerEvent::Claim(r)) => Response::RoleChange {
                            server: me,
                            role: r.role,
                            primary: r.primary,
                        },
                        Ok(ServerEvent::Membership(m)) => Response::Topology {
                            servers: Front::topology_of(&configured, &m),
                        },
                        Ok(ServerEvent::NeedCheckpoint { .. }) | Ok(ServerEvent::Durable(_)) => {
                            continue
                        }
                        // A subscriber that fell behind must drop its whole cache: say so with
                        // an invalidation of everything (no oids, tid 0).
                        Err(broadcast::error::RecvError::Lagged(_)) => Response::Invalidation {
                            tid: storage::Tid::ZERO,
                            oids: Vec::new(),
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if tx.send(frame.encode(0)).await.is_err() {
                        return;
                    }
                }
            });
            Response::Ok
        }
        Request::LostArchive { max } => read(front, ReadOp::Lost { max }).await,
        Request::Switchover { to } => match front.server.swap(to).await {
            Ok(Ok(())) => Response::Ok,
            Ok(Err(e)) => err(ErrorKind::Unavailable, e.to_string()),
            Err(_) => stopped(),
        },
    }
}

async fn read(front: &Front, op: ReadOp) -> Response {
    match front.server.read(op).await {
        Ok(Ok((a, st))) => match a {
            ReadAnswer::Revision(rev) => Response::Revision {
                rev,
                last_tid: st.last_tid,
            },
            ReadAnswer::Revisions(v) => Response::Revisions(v),
            ReadAnswer::Last => Response::Last {
                tid: st.last_tid,
                role: st.role,
                primary_last_known: st.primary_last_known,
                behind_for_us: st.behind_for.map(|d| d.as_micros() as u64),
            },
            ReadAnswer::Transactions(txns, more) => Response::Transactions { txns, more },
            ReadAnswer::Lost(v) => Response::Transactions {
                txns: v.into_iter().map(|l| l.txn).collect(),
                more: false,
            },
        },
        Ok(Err(e)) => err(ErrorKind::Unavailable, e.to_string()),
        Err(_) => err(ErrorKind::Internal, "the server has stopped"),
    }
}

/// The status frame: this server, and the configured topology with who is in its view.
pub fn status_info(front: &Front, st: &crate::ServerStatus) -> StatusInfo {
    StatusInfo {
        id: st.id,
        role: st.staleness.role,
        last_tid: st.staleness.last_tid,
        primary_last_known: st.staleness.primary_last_known,
        since_last_commit_us: st.since_last_commit.map(|d| d.as_micros() as u64),
        behind_for_us: st.staleness.behind_for.map(|d| d.as_micros() as u64),
        primary: st.primary,
        servers: front
            .topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, name, addr)| ServerInfo {
                id: *id,
                name: name.clone(),
                client_addr: addr.clone(),
                in_view: st.view.contains(id),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_grants_its_highest_role_and_near_misses_grant_nothing() {
        let tokens = vec![
            (Access::Read, Bytes::from_static(b"reader-token")),
            (Access::Admin, Bytes::from_static(b"admin-token")),
            (Access::Write, Bytes::from_static(b"admin-token")),
        ];
        assert_eq!(access_of(&tokens, b"reader-token"), Some(Access::Read));
        assert_eq!(access_of(&tokens, b"admin-token"), Some(Access::Admin));
        for miss in [
            &b"admin-tokeN"[..],
            b"admin-toke",
            b"admin-token2",
            b"",
            b"x",
        ] {
            assert_eq!(access_of(&tokens, miss), None, "{miss:?}");
        }
    }
}
