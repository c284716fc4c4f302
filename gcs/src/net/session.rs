//! Sessions: the application's handle on the group layer, the same whether the daemon is
//! embedded in this process or is a `gcsd` reached over a socket (`net::client`).
//!
//! A session joins and leaves named groups, multicasts to one or several groups (open groups:
//! it need not be a member), and receives a stream of [`SessionEvent`]s: messages, group views
//! (transitional then regular, with who joined, who left and why), and its own leaves.

use super::group_core::GroupRequest;
use crate::groups::{GroupError, MemberId, SessionEvent, SessionId};
use crate::Service;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Why a session call failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The daemon refused it (bad name, not a member, too large...).
    #[error(transparent)]
    Refused(#[from] GroupError),
    /// The daemon (or the connection to it) is gone, or the session was disconnected.
    #[error("session closed: {0}")]
    Closed(String),
    /// The daemon answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A remote daemon (`gcsd`) refused it for a reason this client cannot rebuild as a
    /// [`GroupError`] (a bad token, a protocol version, another build's rule): its message.
    #[error("refused by the daemon: {0}")]
    Remote(String),
}

/// What a session asks of its daemon.
#[derive(Debug)]
pub enum SessionRequest {
    /// Join a group.
    Join {
        /// The group.
        group: String,
        /// Result.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// Leave a group.
    Leave {
        /// The group.
        group: String,
        /// Result.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// Multicast to groups.
    Multicast {
        /// Destination groups.
        groups: Vec<String>,
        /// Service level.
        service: Service,
        /// Content.
        payload: Bytes,
        /// Result (sent once the daemon accepted it; waits while its send queue is full).
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// End the session (leaves all its groups).
    Disconnect,
}

/// A connected session.
pub struct Session {
    pub(crate) member: MemberId,
    pub(crate) sid: SessionId,
    pub(crate) requests: mpsc::Sender<GroupRequest>,
    pub(crate) events: mpsc::Receiver<SessionEvent>,
    /// Why the daemon ended the session, when it said (sessions of a `gcsd`).
    pub(crate) close_reason: Arc<Mutex<Option<String>>>,
}

impl Session {
    pub(crate) fn new(
        member: MemberId,
        sid: SessionId,
        requests: mpsc::Sender<GroupRequest>,
        events: mpsc::Receiver<SessionEvent>,
    ) -> Session {
        Session {
            member,
            sid,
            requests,
            events,
            close_reason: Arc::default(),
        }
    }

    /// Why the session was closed by the other side, once [`next_event`](Session::next_event)
    /// returned `None`: for a session of a `gcsd`, the daemon's reason (e.g. "too slow: ...")
    /// or a lost connection. `None` for embedded sessions and while the session is open.
    pub fn close_reason(&self) -> Option<String> {
        self.close_reason.lock().ok().and_then(|r| r.clone())
    }

    /// This session's identity (daemon, number, name); its private group is
    /// `member().private_group()`.
    pub fn member(&self) -> &MemberId {
        &self.member
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), SessionError>>) -> SessionRequest,
    ) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(GroupRequest::Session(self.sid, make(tx)))
            .await
            .map_err(|_| SessionError::Closed("daemon stopped".into()))?;
        rx.await
            .map_err(|_| SessionError::Closed("daemon stopped".into()))?
    }

    /// Joins `group`; its members (this session included) see a regular view with reason Join.
    pub async fn join(&self, group: &str) -> Result<(), SessionError> {
        let group = group.to_string();
        self.call(|reply| SessionRequest::Join { group, reply })
            .await
    }

    /// Leaves `group`.
    pub async fn leave(&self, group: &str) -> Result<(), SessionError> {
        let group = group.to_string();
        self.call(|reply| SessionRequest::Leave { group, reply })
            .await
    }

    /// Multicasts `payload` to `groups` with `service`. Waits while the daemon's send queue is
    /// full (back-pressure).
    pub async fn multicast(
        &self,
        groups: &[&str],
        service: Service,
        payload: Bytes,
    ) -> Result<(), SessionError> {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        self.call(|reply| SessionRequest::Multicast {
            groups,
            service,
            payload,
            reply,
        })
        .await
    }

    /// The next event; `None` once the session is closed (disconnected, daemon stopped, or
    /// disconnected by the daemon for not reading its events).
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    /// An event if one is ready.
    pub fn try_next_event(&mut self) -> Option<SessionEvent> {
        self.events.try_recv().ok()
    }

    /// Ends the session: it leaves all its groups (reason Disconnect).
    pub async fn disconnect(self) {
        let _ = self
            .requests
            .send(GroupRequest::Session(self.sid, SessionRequest::Disconnect))
            .await;
    }
}
