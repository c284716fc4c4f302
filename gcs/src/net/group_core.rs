//! The group daemon under the tokio driver: routes each session's events to its channel without
//! ever blocking the ring. A session that does not read its events gets a bounded backlog, then
//! is disconnected with a reason; the ring never waits for it.

use super::driver::{Core, CoreOutput};
use super::session::{SessionError, SessionRequest};
use crate::groups::{Daemon, DaemonOutput, GroupError, MemberId, SessionEvent, SessionId};
use crate::Time;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use tokio::sync::{mpsc, oneshot};

/// A request to the group daemon: open a session, or act for one.
#[derive(Debug)]
pub enum GroupRequest {
    /// Open a session named `name`.
    Connect {
        /// Session name (see `groups::Limits` for the rules).
        name: String,
        /// Where its events go.
        events: mpsc::Sender<SessionEvent>,
        /// The new session's id and identity.
        reply: oneshot::Sender<Result<(SessionId, MemberId), SessionError>>,
    },
    /// A request of an open session.
    Session(SessionId, SessionRequest),
}

struct Sink {
    tx: mpsc::Sender<SessionEvent>,
    backlog: VecDeque<SessionEvent>,
    backlog_bytes: usize,
}

/// `groups::Daemon` plus per-session event routing.
pub struct GroupCore {
    daemon: Daemon,
    sinks: BTreeMap<SessionId, Sink>,
    /// Bytes of undelivered events a session may accumulate before it is disconnected.
    backlog_max: usize,
    /// Sessions disconnected for being too slow.
    pub slow_disconnects: u64,
    /// Sessions whose leave must still be ordered (found while routing, without a `now`).
    to_close: Vec<SessionId>,
    last_now: Time,
}

fn event_bytes(e: &SessionEvent) -> usize {
    match e {
        SessionEvent::Message { payload, .. } => payload.len() + 64,
        _ => 256,
    }
}

impl GroupCore {
    /// Wraps `daemon`; a session may fall `backlog_max` bytes behind before it is cut off.
    pub fn new(daemon: Daemon, backlog_max: usize) -> GroupCore {
        GroupCore {
            daemon,
            sinks: BTreeMap::new(),
            backlog_max,
            slow_disconnects: 0,
            to_close: Vec::new(),
            last_now: Time::ZERO,
        }
    }

    /// The group daemon.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    fn route(&mut self, sid: SessionId, event: SessionEvent) {
        let Some(sink) = self.sinks.get_mut(&sid) else {
            return;
        };
        if sink.backlog.is_empty() {
            match sink.tx.try_send(event) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.sinks.remove(&sid);
                    self.to_close.push(sid);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(e)) => {
                    sink.backlog_bytes += event_bytes(&e);
                    sink.backlog.push_back(e);
                }
            }
        } else {
            sink.backlog_bytes += event_bytes(&event);
            sink.backlog.push_back(event);
        }
        if sink.backlog_bytes > self.backlog_max {
            tracing::warn!(
                ?sid,
                bytes = sink.backlog_bytes,
                "session too slow: disconnected"
            );
            self.slow_disconnects += 1;
            self.sinks.remove(&sid);
            self.to_close.push(sid);
        }
    }

    /// Moves backlogs into channels that have room again.
    fn flush(&mut self) {
        for sink in self.sinks.values_mut() {
            while let Some(e) = sink.backlog.pop_front() {
                let n = event_bytes(&e);
                match sink.tx.try_send(e) {
                    Ok(()) => sink.backlog_bytes -= n,
                    Err(mpsc::error::TrySendError::Full(e)) => {
                        sink.backlog.push_front(e);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        sink.backlog.clear();
                        break;
                    }
                }
            }
        }
    }

    fn close_pending(&mut self, now: Time) {
        self.last_now = self.last_now.max(now);
        for sid in std::mem::take(&mut self.to_close) {
            let _ = self.daemon.disconnect(now, sid);
        }
    }

    fn close(&mut self, now: Time, sid: SessionId) {
        // Dropping the sender ends the session's event stream; the daemon orders its leave.
        self.sinks.remove(&sid);
        let _ = self.daemon.disconnect(now, sid);
    }
}

fn refused(e: GroupError) -> SessionError {
    SessionError::Refused(e)
}

impl Core for GroupCore {
    type Request = GroupRequest;
    type Event = std::convert::Infallible;

    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        self.close_pending(now);
        self.daemon.handle_packet(now, bytes);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.close_pending(now);
        self.flush();
        self.daemon.handle_timeout(now);
    }

    fn handle_request(&mut self, now: Time, req: GroupRequest) -> Option<GroupRequest> {
        self.close_pending(now);
        match req {
            GroupRequest::Connect {
                name,
                events,
                reply,
            } => {
                let r = self.daemon.connect(now, &name).map_err(refused);
                let r = r.map(|sid| {
                    self.sinks.insert(
                        sid,
                        Sink {
                            tx: events,
                            backlog: VecDeque::new(),
                            backlog_bytes: 0,
                        },
                    );
                    let m = self.daemon.member(sid).expect("just connected").clone();
                    (sid, m)
                });
                let _ = reply.send(r);
                None
            }
            GroupRequest::Session(sid, SessionRequest::Disconnect) => {
                self.close(now, sid);
                None
            }
            GroupRequest::Session(sid, SessionRequest::Join { group, reply }) => {
                let _ = reply.send(self.daemon.join(now, sid, &group).map_err(refused));
                None
            }
            GroupRequest::Session(sid, SessionRequest::Leave { group, reply }) => {
                let _ = reply.send(self.daemon.leave(now, sid, &group).map_err(refused));
                None
            }
            GroupRequest::Session(
                sid,
                SessionRequest::Multicast {
                    groups,
                    service,
                    payload,
                    reply,
                },
            ) => match self.daemon.multicast(now, sid, &groups, service, &payload) {
                Err(GroupError::QueueFull { .. }) => Some(GroupRequest::Session(
                    sid,
                    SessionRequest::Multicast {
                        groups,
                        service,
                        payload,
                        reply,
                    },
                )),
                r => {
                    let _ = reply.send(r.map_err(refused));
                    None
                }
            },
        }
    }

    fn poll_deadline(&self) -> Option<Time> {
        if !self.to_close.is_empty() {
            return Some(self.last_now); // leaves to order now
        }
        let d = self.daemon.poll_deadline();
        if self.sinks.values().any(|s| !s.backlog.is_empty()) {
            // Retry backlogs soon, without spinning.
            let retry = self
                .last_now
                .saturating_add(std::time::Duration::from_millis(1));
            return Some(d.map_or(retry, |d| d.min(retry)));
        }
        d
    }

    fn poll_output(&mut self) -> Option<CoreOutput<std::convert::Infallible>> {
        loop {
            match self.daemon.poll_output()? {
                DaemonOutput::Transmit { dest, bytes } => {
                    return Some(CoreOutput::Transmit { dest, bytes })
                }
                DaemonOutput::Session { sid, event } => self.route(sid, event),
                DaemonOutput::DaemonView(v) => {
                    tracing::info!(view = ?v.id, members = ?v.members, "daemon view");
                }
            }
        }
    }
}
