//! `ServerCore`: one storage server as a single sans-IO state machine, the gcs `Node` and the
//! `Replica` wired together, so that the gcs tokio driver (`gcs::net::driver::run`) can run it
//! unchanged. The wiring is the same as the simulator's: every node output is followed by the
//! replica's outputs, so the replica sees views and deliveries in the order the node produced
//! them, and its multicasts enter the node's send queue at once.

use bytes::Bytes;
use gcs::net::driver::{Core, CoreOutput};
use gcs::{Node, Output, Service, SubmitError, Time};
use replica::{
    CommitError, CommitRequest, Committed, Invalidation, LostReport, Replica, ReqId, Role,
    RoleInfo, ServerId, Staleness, SwapError,
};
use std::collections::{BTreeMap, VecDeque};
use storage::{Oid, Revision, Storage};
use tokio::sync::oneshot;

/// What the application (the client-facing side of the server) asks.
#[derive(Debug)]
pub enum ServerRequest {
    /// A commit; answered when the replica answers.
    Commit {
        /// The commit.
        c: CommitRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Committed, CommitError>>,
    },
    /// Ask for a planned swap to `to`.
    Swap {
        /// The new primary.
        to: ServerId,
        /// Accepted (forwarded through the ring) or refused.
        reply: oneshot::Sender<Result<(), SwapError>>,
    },
    /// A read of the current revision of an object, with the server's staleness.
    Load {
        /// The object.
        oid: Oid,
        /// The revision (`None`: never written) and how stale this server is; an error if the
        /// store is not readable (recovering, stopped).
        reply: oneshot::Sender<Result<(Option<Revision>, Staleness), ReadError>>,
    },
    /// The server's status.
    Status {
        /// Where it goes.
        reply: oneshot::Sender<ServerStatus>,
    },
}

/// Why a read was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The store is between two consistent states (an object recovery is open).
    #[error("recovering: reads resume when the store is consistent again")]
    Recovering,
    /// The store failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// A snapshot of a server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Its id.
    pub id: ServerId,
    /// Its staleness (role, last tid, newest tid known, last commit time).
    pub staleness: Staleness,
    /// The working primary and its epoch, if known.
    pub primary: Option<(ServerId, replica::Epoch)>,
    /// Its durable promise.
    pub promised: replica::Epoch,
    /// Counters.
    pub stats: replica::ReplicaStats,
    /// Members of its current gcs view.
    pub view: Vec<ServerId>,
}

/// What the server tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The role changed.
    Role(RoleInfo),
    /// A transaction was applied here: connected clients drop these objects.
    Invalidate(Invalidation),
    /// Transactions were moved to a lost archive: clients flush these objects.
    Lost(LostReport),
    /// The store needs a checkpoint from `donor` (see `replica::Output::NeedCheckpoint`).
    NeedCheckpoint {
        /// The server to copy from.
        donor: ServerId,
    },
}

/// One storage server: a gcs node and a replica over store `S`.
pub struct ServerCore<S: Storage + 'static> {
    node: Node,
    replica: Replica<S>,
    waiting: BTreeMap<ReqId, oneshot::Sender<Result<Committed, CommitError>>>,
    next_req: u64,
    /// Replica multicasts the node's send queue had no room for yet.
    unsent: VecDeque<(Service, Bytes)>,
    view: Vec<ServerId>,
    out: VecDeque<CoreOutput<ServerEvent>>,
}

impl<S: Storage + 'static> ServerCore<S> {
    /// Wires `node` and `replica` together.
    pub fn new(node: Node, replica: Replica<S>) -> ServerCore<S> {
        ServerCore {
            node,
            replica,
            waiting: BTreeMap::new(),
            next_req: 1,
            unsent: VecDeque::new(),
            view: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// The replica (for status and tests).
    pub fn replica(&self) -> &Replica<S> {
        &self.replica
    }

    fn status(&self) -> ServerStatus {
        ServerStatus {
            id: self.replica.id(),
            staleness: self.replica.staleness(),
            primary: self.replica.primary(),
            promised: self.replica.promised(),
            stats: self.replica.stats(),
            view: self.view.clone(),
        }
    }

    /// Moves outputs between the node and the replica until both are quiet.
    fn pump(&mut self, now: Time) {
        loop {
            self.drain_replica(now);
            match self.node.poll_output() {
                Some(Output::Transmit { dest, bytes }) => {
                    self.out.push_back(CoreOutput::Transmit { dest, bytes })
                }
                Some(Output::Deliver(d)) => self.replica.handle_delivery(now, d.sender, &d.payload),
                Some(Output::View(v)) => {
                    if v.kind() == gcs::ViewKind::Regular {
                        self.view = v.members.iter().map(|p| p.node).collect();
                        tracing::info!(server = self.replica.id(), view = ?v.id, members = ?self.view, "view");
                    }
                    self.replica.handle_view(now, &v);
                }
                None => return,
            }
        }
    }

    fn send(&mut self, now: Time, service: Service, payload: Bytes) {
        if !self.unsent.is_empty() {
            self.unsent.push_back((service, payload));
            return;
        }
        match self.node.multicast(now, service, payload.clone()) {
            Ok(()) => {}
            Err(SubmitError::QueueFull { .. }) => self.unsent.push_back((service, payload)),
            Err(e) => tracing::error!(error = %e, "replica message refused by the node"),
        }
    }

    fn retry_unsent(&mut self, now: Time) {
        while let Some((service, payload)) = self.unsent.pop_front() {
            match self.node.multicast(now, service, payload.clone()) {
                Ok(()) => {}
                Err(SubmitError::QueueFull { .. }) => {
                    self.unsent.push_front((service, payload));
                    return;
                }
                Err(e) => tracing::error!(error = %e, "replica message refused by the node"),
            }
        }
    }

    fn drain_replica(&mut self, now: Time) {
        self.retry_unsent(now);
        while let Some(o) = self.replica.poll_output() {
            match o {
                replica::Output::Multicast { service, payload } => self.send(now, service, payload),
                replica::Output::Reply { req, result } => {
                    if let Some(tx) = self.waiting.remove(&req) {
                        let _ = tx.send(result);
                    }
                }
                replica::Output::Role(r) => {
                    if r.role == Role::Down {
                        tracing::error!(server = self.replica.id(), "replica stopped");
                    }
                    self.out.push_back(CoreOutput::Event(ServerEvent::Role(r)))
                }
                replica::Output::Invalidate(i) => self
                    .out
                    .push_back(CoreOutput::Event(ServerEvent::Invalidate(i))),
                replica::Output::Lost(l) => {
                    self.out.push_back(CoreOutput::Event(ServerEvent::Lost(l)))
                }
                replica::Output::NeedCheckpoint { donor } => self
                    .out
                    .push_back(CoreOutput::Event(ServerEvent::NeedCheckpoint { donor })),
            }
        }
    }
}

impl<S: Storage + 'static> Core for ServerCore<S> {
    type Request = ServerRequest;
    type Event = ServerEvent;

    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        self.node.handle_packet(now, bytes);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.node.handle_timeout(now);
        self.pump(now);
    }

    fn handle_request(&mut self, now: Time, req: ServerRequest) -> Option<ServerRequest> {
        match req {
            ServerRequest::Commit { c, reply } => {
                let id = ReqId(self.next_req);
                self.next_req += 1;
                self.waiting.insert(id, reply);
                self.replica.handle_commit(now, id, c);
            }
            ServerRequest::Swap { to, reply } => {
                let _ = reply.send(self.replica.request_swap(now, to));
            }
            ServerRequest::Load { oid, reply } => {
                let r = if self.replica.readable() {
                    self.replica
                        .store()
                        .load(&oid)
                        .map(|rev| (rev, self.replica.staleness()))
                        .map_err(|e| ReadError::Storage(e.to_string()))
                } else {
                    Err(ReadError::Recovering)
                };
                let _ = reply.send(r);
            }
            ServerRequest::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
        self.pump(now);
        None
    }

    fn poll_deadline(&self) -> Option<Time> {
        self.node.poll_deadline()
    }

    fn poll_output(&mut self) -> Option<CoreOutput<ServerEvent>> {
        self.out.pop_front()
    }
}
