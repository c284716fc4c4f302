//! The dispatcher: turns the server's events, in order, into what ZEO clients see.
//!
//! On the primary an invalidation is held until the replica's durable point passes its tid;
//! then, under the shared lock, it goes to every registered connection that was not told of
//! it yet, except the committer's, which gets its `tpc_finish` reply at that same place in
//! its stream. Elsewhere invalidations go out as commits are applied. Because one task
//! writes them all in tid order and a connection's `sent` mark is raised with each, every
//! connection sees tids increasing, which a stock client's cache insists on.

use super::codec::{self, bin, Value};
use super::tid::to_zeo;
use super::ZeoFace;
use crate::ServerEvent;
use replica::{Invalidation, Role};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use storage::Tid;
use tokio::sync::mpsc;

/// See the module docs.
pub struct Dispatcher {
    face: Arc<ZeoFace>,
    role: Role,
    held: VecDeque<Invalidation>,
    durable: Tid,
    /// When a primary that stepped down with no other primary in sight stops serving
    /// writable clients, unless it is elected again first.
    grace_until: Option<tokio::time::Instant>,
}

/// How long a primary whose view changed keeps its writable connections while the servers
/// of its (still primary) component elect again. A ring re-forms within a few token timeouts after a lost token (a busy
/// machine), and usually elects the same primary: closing every connection then would fail
/// every client's transaction for nothing. When another server is named primary, or the
/// grace runs out, the connections are closed and clients find the primary by themselves.
const STEP_DOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Dispatcher {
    pub(crate) fn new(face: Arc<ZeoFace>) -> Dispatcher {
        Dispatcher {
            face,
            role: Role::ReadOnly,
            held: VecDeque::new(),
            durable: Tid::ZERO,
            grace_until: None,
        }
    }

    /// Runs until the event stream ends.
    pub(crate) async fn run(mut self, mut events: mpsc::Receiver<ServerEvent>) {
        loop {
            let grace = self.grace_until;
            let e = tokio::select! {
                e = events.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
                _ = async {
                    match grace {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    // Set only after stepping down, cleared on becoming primary again.
                    self.grace_until = None;
                    tracing::info!("no longer primary: writable ZEO clients are sent away");
                    self.stop_serving();
                    continue;
                }
            };
            self.handle(e);
        }
    }

    /// Stops serving writable clients: the listener task closes the writable address, and
    /// only then their connections (see `ZeoFace::writable_listener`).
    fn stop_serving(&mut self) {
        self.face.set_role(self.role);
    }

    fn handle(&mut self, e: ServerEvent) {
        match e {
            ServerEvent::Role(r) => {
                let was = self.role;
                self.role = r.role;
                if r.role == Role::Primary {
                    if was != Role::Primary {
                        self.durable = Tid::ZERO;
                    }
                    self.grace_until = None;
                    self.face.set_role(Role::Primary);
                } else if was == Role::Primary || self.grace_until.is_some() {
                    // Writable clients are still served (primary until now, or in the grace).
                    // What is still held may not be durable on a majority: it stays held
                    // until the next primary's first commit shows the history went on past
                    // it (or a `Lost` report drops it).
                    // Another primary, or outside any primary component (this server
                    // cannot be elected again before the partition heals): at once.
                    let other = r.primary.is_some_and(|(p, _)| p != self.face.server.id());
                    if other || r.role == Role::Down || !r.in_primary_component {
                        self.grace_until = None;
                        self.stop_serving();
                    } else if self.grace_until.is_none() {
                        self.grace_until = Some(tokio::time::Instant::now() + STEP_DOWN_GRACE);
                    }
                } else {
                    self.face.set_role(r.role);
                }
            }
            ServerEvent::Invalidate(inv) => {
                self.held.push_back(inv);
                if self.role != Role::Primary {
                    self.release(Tid::MAX);
                } else {
                    self.release(self.durable);
                }
            }
            ServerEvent::Durable(t) => {
                self.durable = self.durable.max(t);
                if self.role == Role::Primary {
                    self.release(self.durable);
                }
            }
            ServerEvent::Lost(l) if l.server != self.face.server.id() => {
                // Another server's history was cut back; this one's is whole, and so is what
                // its clients were told. A client that cached the lost transactions from that
                // server verifies with a last tid this server never had, and is told to drop
                // its cache (`getInvalidations`). Cutting `released` back here would make this
                // server claim a last tid below what its own clients saw: they would refuse
                // it ("Server behind client") until it committed past them.
                tracing::debug!(server = l.server, "another server's lost transactions");
            }
            ServerEvent::Lost(l) => {
                // This server's history was cut back: what its clients were told may be gone.
                // Every connection is closed so that clients verify their caches again.
                self.held.retain(|i| i.tid <= l.truncated_after);
                let mut sh = self.face.lock();
                sh.released = sh.released.min(l.truncated_after);
                let n = sh.conns.len();
                for c in sh.conns.values() {
                    c.close();
                }
                tracing::warn!(
                    connections = n,
                    truncated_after = ?l.truncated_after,
                    "history cut back: every ZEO connection closed; a client that saw a lost \
                     tid refuses this server until it passes that tid"
                );
            }
            // The claim lease is for routers of clients (probes, the client port); the face's
            // own step-down (with its grace) follows the elected role.
            ServerEvent::NeedCheckpoint { .. }
            | ServerEvent::Membership(_)
            | ServerEvent::Claim(_) => {}
        }
    }

    /// Releases held invalidations up to `upto`.
    fn release(&mut self, upto: Tid) {
        while self.held.front().is_some_and(|i| i.tid <= upto) {
            let Some(inv) = self.held.pop_front() else {
                break;
            };
            self.dispatch(&inv);
        }
    }

    fn dispatch(&self, inv: &Invalidation) {
        let z = to_zeo(inv.tid);
        let oids: Vec<Value> = inv
            .oids
            .iter()
            .filter(|o| o.as_bytes().len() == 8)
            .map(|o| bin(o.as_bytes()))
            .collect();
        let frame = codec::server_call("invalidateTransaction", vec![bin(&z), Value::Array(oids)]);
        let mut sh = self.face.lock();
        for c in sh.conns.values_mut() {
            if !c.registered || inv.tid <= c.sent {
                continue;
            }
            if inv.tid.0 <= super::tid::OFFSET {
                // The transactions of a forming cluster (epoch markers, the first oid
                // block) all show as z64: nothing to tell.
            } else if inv.client == Some(c.client) {
                if let Some((msgid, started)) = c.finishing.take() {
                    c.send(codec::reply(&msgid, bin(&z)));
                    let st = &self.face.stats;
                    st.commits.fetch_add(1, Ordering::Relaxed);
                    st.finishes.fetch_add(1, Ordering::Relaxed);
                    st.finish_us
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            } else {
                c.send(frame.clone());
            }
            c.sent = inv.tid;
        }
        if inv.tid > sh.released {
            sh.released = inv.tid;
        }
        let r = sh.released;
        drop(sh);
        self.face.released_tx.send_replace(r);
    }
}
