//! The embeddable async API at daemon level: a `Node` on a real UDP socket inside the host's
//! tokio runtime. (Named groups and client sessions build on the same driver.)

use super::config::ClusterConfig;
use super::driver::{self, Clock, Core, CoreOutput};
use crate::{Delivery, Node, NodeId, Output, ProcId, Service, SubmitError, Time, View};
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What the application receives, in the EVS order the daemon produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message.
    Message(Delivery),
    /// A configuration change (transitional, then regular).
    View(View),
}

/// A multicast waiting for the daemon.
#[derive(Debug)]
pub struct MulticastRequest {
    service: Service,
    payload: Bytes,
}

impl Core for Node {
    type Request = MulticastRequest;
    type Event = Event;

    fn handle_packet(&mut self, now: Time, bytes: Bytes) {
        Node::handle_packet(self, now, bytes)
    }

    fn handle_timeout(&mut self, now: Time) {
        Node::handle_timeout(self, now)
    }

    fn handle_request(&mut self, now: Time, req: MulticastRequest) -> Option<MulticastRequest> {
        match self.multicast(now, req.service, req.payload.clone()) {
            Err(SubmitError::QueueFull { .. }) => Some(req),
            // Too large is refused before the request is sent; nothing else can fail.
            _ => None,
        }
    }

    fn poll_deadline(&self) -> Option<Time> {
        Node::poll_deadline(self)
    }

    fn poll_output(&mut self) -> Option<CoreOutput<Event>> {
        Some(match Node::poll_output(self)? {
            Output::Transmit { dest, bytes } => CoreOutput::Transmit { dest, bytes },
            Output::Deliver(d) => CoreOutput::Event(Event::Message(d)),
            Output::View(v) => CoreOutput::Event(Event::View(v)),
        })
    }
}

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// This id is not in the cluster configuration.
    #[error("daemon id {0} is not in the cluster configuration")]
    UnknownId(NodeId),
    /// The protocol parameters are inconsistent.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The group layer refused its configuration.
    #[error("group layer: {0}")]
    Groups(String),
    /// The socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `Security::Keys` without a key.
    #[error("no cluster key given")]
    NoKey,
    /// A key was refused (two keys with one id).
    #[error("cluster key: {0}")]
    Key(String),
}

/// Why a multicast failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SendError {
    /// Refused by the daemon (too large).
    #[error(transparent)]
    Refused(#[from] SubmitError),
    /// The daemon has stopped.
    #[error("the daemon has stopped")]
    Stopped,
}

/// A running daemon embedded in this process.
pub struct Gcs {
    me: ProcId,
    requests: mpsc::Sender<MulticastRequest>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// Key rotation for the daemon-level API is not exposed yet; holding the sender keeps the
    /// driver's control channel open.
    _keys: mpsc::Sender<driver::KeyControl>,
    max_message_size: usize,
}

impl Gcs {
    /// Starts daemon `id` of `cluster` on the current tokio runtime, without datagram protection
    /// (tests and benchmarks on a trusted loopback). Returns the handle and the event stream
    /// (bounded by `event_capacity`: not draining it back-pressures the daemon).
    pub async fn start(
        cluster: ClusterConfig,
        id: NodeId,
        event_capacity: usize,
    ) -> Result<(Gcs, mpsc::Receiver<Event>), StartError> {
        Self::start_with(cluster, id, super::Security::Plaintext, event_capacity).await
    }

    /// Like `start`, with datagram protection (`Security::Key` for real deployments).
    pub async fn start_with(
        cluster: ClusterConfig,
        id: NodeId,
        security: super::Security,
        event_capacity: usize,
    ) -> Result<(Gcs, mpsc::Receiver<Event>), StartError> {
        let clock = Clock::new();
        let me = ProcId::new(id, driver::fresh_incarnation());
        let node = Node::new(cluster.protocol(), me, clock.now())?;
        let max_message_size = cluster.protocol().max_message_size;
        let r = driver::spawn(node, clock, cluster, id, me, &security, event_capacity)?;
        Ok((
            Gcs {
                me,
                requests: r.requests,
                shutdown: Some(r.shutdown),
                task: r.task,
                _keys: r.keys,
                max_message_size,
            },
            r.events,
        ))
    }

    /// This daemon's process id.
    pub fn id(&self) -> ProcId {
        self.me
    }

    /// Multicasts `payload`. Returns once the daemon has queued it (the request channel and the
    /// daemon's send queue are bounded: a sender faster than the ring waits here).
    pub async fn multicast(&self, service: Service, payload: Bytes) -> Result<(), SendError> {
        if payload.len() > self.max_message_size {
            return Err(SendError::Refused(SubmitError::TooLarge {
                size: payload.len(),
                max: self.max_message_size,
            }));
        }
        self.requests
            .send(MulticastRequest { service, payload })
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// Stops the daemon (the others see it leave after their token timeout).
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
