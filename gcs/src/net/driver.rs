//! The tokio driver: one task per daemon runs the sans-IO core against a UDP socket, real timers
//! and a request channel. It adds no protocol logic: everything it does is move bytes, read the
//! clock and hand events over.
//!
//! The task `select!`s over the socket, the core's earliest deadline and its request channel;
//! each turn takes every datagram and request already waiting (up to a bound), not just one,
//! so a busy daemon pays one wake-up per burst. With a cluster key every outgoing datagram is
//! sealed and every incoming one opened by [`crate::crypto`], and the key rotation runs here
//! beside the core: its announcements never reach the core. Reading the key file again
//! (`KeyControl::Reload`, which `gcsd` and `standby-server` do on SIGHUP) starts a rotation that
//! finishes by itself without a view change; `GroupDaemon::{add_key, set_send_key,
//! remove_key}` are the manual steps.
//!
//! IP multicast is optional (`[socket] multicast` in the cluster file); tokens always go by
//! unicast. A core may replace the address book while running ([`CoreOutput::Peers`]): from
//! then on datagrams from the daemons it names as removed are refused (a removed server cannot
//! rejoin), and a datagram from an address the book does not hold is accepted only if it
//! opens with the cluster key and its sender is not removed; its address is then learned for
//! the replies. A daemon whose book is stale (it missed the addition of a server while it was
//! paused or cut off) so still rings with the newcomer and catches up on the change, instead of
//! refusing it and never joining a view again.

use super::config::ClusterConfig;
use crate::crypto::rotation::{is_announcement, KeyRotation, KeyStatus};
use crate::crypto::SealedHeader;
use crate::{Dest, NodeId, PacketSecurity, Time};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// The one place that reads the wall clock: monotonic time since the driver started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    /// A clock whose zero is now.
    #[allow(clippy::disallowed_methods)] // the driver is where time enters the system
    pub fn new() -> Clock {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    /// The current time for the core.
    pub fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    /// The tokio instant for a core deadline.
    pub fn instant(&self, t: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + std::time::Duration::from_micros(t.0))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A process-unique incarnation number that grows across restarts: microseconds since the Unix
/// epoch at start-up (a restart within the same microsecond is not a concern).
#[allow(clippy::disallowed_methods)] // read once at start-up, never inside the core
pub fn fresh_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// What a driven core emits.
#[derive(Debug)]
pub enum CoreOutput<E> {
    /// A datagram to send.
    Transmit {
        /// To whom.
        dest: Dest,
        /// The datagram.
        bytes: Bytes,
    },
    /// Something for the application.
    Event(E),
    /// The cluster's address book changed (servers added or removed while running): send to
    /// these daemons from now on, and refuse the removed ones (see the module docs).
    Peers(AddressBook),
}

/// A cluster's address book as a core sets it ([`CoreOutput::Peers`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressBook {
    /// The daemons, and where they listen.
    pub daemons: Vec<(NodeId, SocketAddr)>,
    /// Daemons removed from the cluster: their datagrams are refused, wherever they come from.
    pub removed: Vec<NodeId>,
}

/// A sans-IO state machine the driver can run (the ring `Node`, or the groups layer on it).
pub trait Core: Send + 'static {
    /// A request from the application (carries its own reply channel if it needs one).
    type Request: Send + 'static;
    /// An event for the application.
    type Event: Send + 'static;
    /// A datagram arrived.
    fn handle_packet(&mut self, now: Time, bytes: Bytes);
    /// The deadline passed.
    fn handle_timeout(&mut self, now: Time);
    /// Applies a request; gives it back if it must wait (a full send queue), to be retried.
    fn handle_request(&mut self, now: Time, req: Self::Request) -> Option<Self::Request>;
    /// The next deadline.
    fn poll_deadline(&self) -> Option<Time>;
    /// The next output.
    fn poll_output(&mut self) -> Option<CoreOutput<Self::Event>>;
}

/// Sends to the daemons of the cluster other than us.
struct Peers {
    all: Vec<SocketAddr>,
    by_id: Vec<(NodeId, SocketAddr)>,
    /// Our own address (our multicasts come back from it).
    own: Option<SocketAddr>,
    /// Daemons removed from the cluster (see [`AddressBook::removed`]).
    removed: Vec<NodeId>,
}

impl Peers {
    fn new(cluster: &ClusterConfig, me: NodeId) -> Peers {
        Peers::of(cluster.daemons.iter().map(|d| (d.id, d.addr)), me)
    }

    fn of(daemons: impl Iterator<Item = (NodeId, SocketAddr)>, me: NodeId) -> Peers {
        let (mine, by_id): (Vec<_>, Vec<_>) = daemons.partition(|(id, _)| *id == me);
        Peers {
            all: by_id.iter().map(|(_, a)| *a).collect(),
            by_id,
            own: mine.first().map(|(_, a)| *a),
            removed: Vec::new(),
        }
    }

    fn book(book: AddressBook, me: NodeId) -> Peers {
        let mut p = Peers::of(book.daemons.into_iter(), me);
        p.removed = book.removed;
        p
    }

    fn knows(&self, from: SocketAddr) -> bool {
        self.own == Some(from) || self.all.contains(&from)
    }

    /// A daemon the book did not hold sent from `from` (authenticated): send to it there.
    fn learn(&mut self, id: NodeId, from: SocketAddr) {
        if self.removed.contains(&id) {
            return;
        }
        tracing::info!(daemon = id, %from, "a daemon the address book does not hold: learned from its traffic");
        self.by_id.retain(|(i, _)| *i != id);
        self.by_id.push((id, from));
        self.all = self.by_id.iter().map(|(_, a)| *a).collect();
    }

    fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.by_id.iter().find(|(i, _)| *i == id).map(|(_, a)| *a)
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    // A full socket buffer or an unreachable peer is a lost datagram: the protocol recovers.
    match socket.try_send_to(bytes, to) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let _ = socket.send_to(bytes, to).await;
        }
        Err(e) => tracing::trace!(%to, error = %e, "send failed"),
    }
}

async fn recv_multicast(s: &Option<UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Whether a datagram from `from` may reach the core, and the sender to learn if it is one the
/// book does not hold. Any sender while the address book is the configured one (the cluster
/// key authenticates members). Once the core has set it ([`CoreOutput::Peers`]): the book's
/// addresses, and others whose datagram names a sender that is not removed (sealed datagrams
/// are only learned from once they open: see [`receive`]); a removed server must not rejoin.
fn admitted(peers: &Peers, strict: bool, from: SocketAddr, datagram: &[u8], sealed: bool) -> Admit {
    if !strict || peers.knows(from) {
        return Admit::Yes;
    }
    let sender = if sealed {
        SealedHeader::decode(datagram).ok().map(|h| h.sender.node)
    } else {
        crate::wire::sender(datagram).map(|p| p.node)
    };
    match sender {
        Some(id) if !peers.removed.contains(&id) => Admit::Learn(id),
        _ => Admit::No,
    }
}

/// See [`admitted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    /// From an address the book does not hold, naming this sender.
    Learn(NodeId),
    No,
}

/// Admits ([`admitted`]), opens (when security is on) and hands a datagram to the core, or a
/// key announcement to the rotation; true for the latter. A datagram that fails to open is
/// counted by the security layer and never reaches the core's parser; the address of a sender
/// the book does not hold is learned once its datagram opened.
#[allow(clippy::too_many_arguments)]
fn receive<C: Core>(
    core: &mut C,
    security: &mut Option<PacketSecurity>,
    rotation: &mut Option<KeyRotation>,
    peers: &mut Peers,
    strict: bool,
    now: Time,
    from: SocketAddr,
    datagram: &[u8],
) -> bool {
    let admit = admitted(peers, strict, from, datagram, security.is_some());
    if admit == Admit::No {
        return false;
    }
    let plain = match security.as_mut() {
        Some(sec) => match sec.open(datagram) {
            Ok(plain) => plain,
            Err(_) => return false,
        },
        None => Bytes::copy_from_slice(datagram),
    };
    if let Admit::Learn(id) = admit {
        peers.learn(id, from);
    }
    if security.is_some() && is_announcement(&plain) {
        if let (Some(r), Ok(h)) = (rotation.as_mut(), SealedHeader::decode(datagram)) {
            r.on_announcement(now, h.sender.node, &plain);
            return true;
        }
        return false;
    }
    core.handle_packet(now, plain);
    false
}

/// A change to the cluster keys of a running daemon (rotation without a view change: add the new
/// key everywhere, then make it the send key everywhere, then remove the old one).
#[derive(Debug)]
pub enum KeyControl {
    /// Accept datagrams sealed with this key too.
    Add {
        /// Its id.
        id: crate::KeyId,
        /// The key.
        key: crate::ClusterKey,
        /// Result.
        reply: oneshot::Sender<Result<(), crate::CryptoError>>,
    },
    /// Seal with this (already added) key from now on.
    SetSendKey {
        /// Its id.
        id: crate::KeyId,
        /// Result.
        reply: oneshot::Sender<Result<(), crate::CryptoError>>,
    },
    /// Stop accepting this key.
    Remove {
        /// Its id.
        id: crate::KeyId,
        /// Result.
        reply: oneshot::Sender<Result<(), crate::CryptoError>>,
    },
    /// The key file was read again: accept every key in it (except those the rotation
    /// already dropped) and forget held keys it no longer lists (never the send key). The
    /// switch to a new key and the drop of the old one follow by themselves
    /// ([`crate::crypto::rotation`]).
    Reload {
        /// The file's keys.
        keys: Vec<(crate::KeyId, crate::ClusterKey)>,
        /// What the daemon holds afterwards, or why a key was refused.
        reply: oneshot::Sender<Result<KeyStatus, String>>,
    },
    /// What the daemon holds and knows of its peers' keys (`None`: no key layer).
    Status {
        /// The answer.
        reply: oneshot::Sender<Option<KeyStatus>>,
    },
}

fn reload_keys(
    sec: &mut PacketSecurity,
    rot: &mut KeyRotation,
    now: Time,
    keys: &[(crate::KeyId, crate::ClusterKey)],
) -> Result<KeyStatus, String> {
    let mut refused = Vec::new();
    for (id, key) in keys {
        if rot.is_retired(*id) {
            continue;
        }
        if let Err(e) = sec.add_key(*id, key) {
            refused.push(format!("key {id}: {e}"));
        }
    }
    for id in sec.key_ids() {
        if !keys.iter().any(|(k, _)| *k == id) && id != sec.send_key() {
            let _ = sec.remove_key(id);
        }
    }
    rot.keys_changed(now);
    if refused.is_empty() {
        Ok(rot.status(now, sec))
    } else {
        Err(refused.join("; "))
    }
}

fn key_control(
    security: &mut Option<PacketSecurity>,
    rotation: &mut Option<KeyRotation>,
    now: Time,
    c: KeyControl,
) {
    let c = match (security.as_mut(), rotation.as_mut(), c) {
        (Some(sec), Some(rot), KeyControl::Reload { keys, reply }) => {
            let _ = reply.send(reload_keys(sec, rot, now, &keys));
            return;
        }
        (_, _, KeyControl::Reload { reply, .. }) => {
            let _ = reply.send(Err("this daemon runs without a cluster key".into()));
            return;
        }
        (sec, rot, KeyControl::Status { reply }) => {
            let _ = reply.send(match (sec, rot) {
                (Some(s), Some(r)) => Some(r.status(now, s)),
                _ => None,
            });
            return;
        }
        (_, _, c) => c,
    };
    let (r, reply) = match (security.as_mut(), c) {
        (Some(s), KeyControl::Add { id, key, reply }) => (s.add_key(id, &key), reply),
        (Some(s), KeyControl::SetSendKey { id, reply }) => (s.set_send_key(id), reply),
        (Some(s), KeyControl::Remove { id, reply }) => (s.remove_key(id), reply),
        (None, KeyControl::Add { id, reply, .. })
        | (None, KeyControl::SetSendKey { id, reply })
        | (None, KeyControl::Remove { id, reply }) => {
            (Err(crate::CryptoError::NoSuchKey(id)), reply)
        }
        (_, KeyControl::Reload { .. } | KeyControl::Status { .. }) => return,
    };
    let _ = reply.send(r);
}

/// The driver's connections to the application.
pub struct Channels<C: Core> {
    /// Requests from the application.
    pub requests: mpsc::Receiver<C::Request>,
    /// Events to the application (bounded: an application that does not drain them
    /// back-pressures this daemon).
    pub events: mpsc::Sender<C::Event>,
    /// Fires (or is dropped) to stop the daemon.
    pub shutdown: oneshot::Receiver<()>,
    /// Key rotation.
    pub keys: mpsc::Receiver<KeyControl>,
}

/// The datagram path: the socket, and the cluster key layer when security is on.
pub struct Transport {
    /// The bound UDP socket.
    pub socket: UdpSocket,
    /// With IP multicast: the socket joined to the group, and the group address.
    pub multicast: Option<(UdpSocket, SocketAddr)>,
    /// Seals every outgoing datagram and opens every incoming one (None: plaintext, tests only).
    pub security: Option<PacketSecurity>,
}

/// Runs `core` for daemon `me` of `cluster` until shutdown.
pub async fn run<C: Core>(
    mut core: C,
    clock: Clock,
    transport: Transport,
    cluster: ClusterConfig,
    me: NodeId,
    channels: Channels<C>,
) -> io::Result<()> {
    let Transport {
        socket,
        multicast,
        mut security,
    } = transport;
    let (mcast_socket, mcast_group) = match multicast {
        Some((s, g)) => (Some(s), Some(g)),
        None => (None, None),
    };
    let mut mbuf = vec![0u8; 65_536];
    let Channels {
        mut requests,
        events,
        mut shutdown,
        mut keys,
    } = channels;
    let mut peers = Peers::new(&cluster, me);
    let mut rotation = security.as_ref().map(|_| KeyRotation::new(me, clock.now()));
    let mut announced = false;
    let mut strict = false;
    let mut buf = vec![0u8; 65_536];
    let mut waiting: VecDeque<C::Request> = VecDeque::new();
    let mut requests_open = true;
    let mut immediate = 0u32;
    loop {
        // Outputs first: they are in protocol order; transmits leave at once.
        while let Some(out) = core.poll_output() {
            match out {
                CoreOutput::Transmit { dest, bytes } => {
                    let bytes = match security.as_mut() {
                        Some(sec) => match sec.seal(dest, &bytes) {
                            Ok(b) => b,
                            Err(e) => {
                                // Only a counter exhausted after 2^64 datagrams: stop rather than
                                // ever reuse a nonce.
                                return Err(io::Error::other(format!("cannot seal: {e}")));
                            }
                        },
                        None => bytes,
                    };
                    match dest {
                        Dest::All => match mcast_group {
                            Some(g) => send(&socket, &bytes, g).await,
                            None => {
                                for a in &peers.all {
                                    send(&socket, &bytes, *a).await;
                                }
                            }
                        },
                        Dest::Node(id) => {
                            if let Some(a) = peers.addr(id) {
                                send(&socket, &bytes, a).await;
                            }
                        }
                    }
                }
                CoreOutput::Event(e) => {
                    if events.send(e).await.is_err() {
                        return Ok(()); // the application is gone
                    }
                }
                CoreOutput::Peers(book) => {
                    peers = Peers::book(book, me);
                    strict = true;
                }
            }
        }
        // Key rotation: switch, drop, announce (after an announcement came in, or when due).
        if let (Some(sec), Some(rot)) = (security.as_mut(), rotation.as_mut()) {
            let now = clock.now();
            if announced || rot.deadline() <= now {
                announced = false;
                if let Some(a) = rot.tick(now, sec) {
                    for k in sec.key_ids() {
                        let Ok(bytes) = sec.seal_with(k, Dest::All, &a) else {
                            continue;
                        };
                        match mcast_group {
                            Some(g) => send(&socket, &bytes, g).await,
                            None => {
                                for a in &peers.all {
                                    send(&socket, &bytes, *a).await;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Requests that had to wait for room in the send queue.
        while let Some(r) = waiting.pop_front() {
            if let Some(r) = core.handle_request(clock.now(), r) {
                waiting.push_front(r);
                break;
            }
        }
        let deadline = core.poll_deadline();
        if deadline.is_some_and(|t| t <= clock.now()) && immediate < 64 {
            // Due now (a released token, an overdue timer): tokio's timers have millisecond
            // granularity, far coarser than a token hop, so do not sleep on it. Bounded, so that
            // the socket and the shutdown signal are still polled.
            immediate += 1;
            core.handle_timeout(clock.now());
            continue;
        }
        immediate = 0;
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        let rotation_due = rotation.as_ref().map(|r| r.deadline());
        let rotation_sleep = async {
            match rotation_due {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => {
                        announced |= receive(&mut core, &mut security, &mut rotation, &mut peers, strict, clock.now(), from, &buf[..n])
                    }
                    Err(e) => tracing::trace!(error = %e, "recv failed"),
                }
                // Drain what else is queued before timers: a daemon that was paused reads its
                // backlog first (the core also detects the pause from its overdue timers).
                for _ in 0..256 {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => {
                            announced |= receive(&mut core, &mut security, &mut rotation, &mut peers, strict, clock.now(), from, &buf[..n])
                        }
                        Err(_) => break,
                    }
                }
            }
            req = requests.recv(), if requests_open && waiting.is_empty() => {
                match req {
                    Some(r) => {
                        let now = clock.now();
                        if let Some(r) = core.handle_request(now, r) {
                            waiting.push_back(r);
                        }
                        // Take what else is queued in the same turn (bounded, like the socket
                        // drain): many clients' requests cost one pass of the loop, not one each.
                        for _ in 0..64 {
                            if !waiting.is_empty() {
                                break;
                            }
                            match requests.try_recv() {
                                Ok(r) => {
                                    if let Some(r) = core.handle_request(now, r) {
                                        waiting.push_back(r);
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => requests_open = false,
                }
            }
            r = recv_multicast(&mcast_socket, &mut mbuf) => {
                if let Ok((n, from)) = r {
                    announced |= receive(&mut core, &mut security, &mut rotation, &mut peers, strict, clock.now(), from, &mbuf[..n]);
                }
            }
            Some(k) = keys.recv() => key_control(&mut security, &mut rotation, clock.now(), k),
            _ = rotation_sleep => {}
            _ = sleep => core.handle_timeout(clock.now()),
        }
    }
}

/// A core running under the driver in its own task, and the application's ends of its
/// channels.
pub struct Running<C: Core> {
    /// Requests to the core.
    pub requests: mpsc::Sender<C::Request>,
    /// Events from the core (bounded: not draining them back-pressures the daemon).
    pub events: mpsc::Receiver<C::Event>,
    /// Send (or drop) to stop the daemon.
    pub shutdown: oneshot::Sender<()>,
    /// Key rotation.
    pub keys: mpsc::Sender<KeyControl>,
    /// The driver's task.
    pub task: tokio::task::JoinHandle<io::Result<()>>,
}

/// Binds daemon `id`'s socket (and its multicast group, if configured), seals traffic as
/// process `me` when `security` has a key, and runs `core` under the driver on the current
/// tokio runtime. Every embedding (the daemon-level API, the group daemon, the storage server)
/// starts its core this way.
pub fn spawn<C: Core>(
    core: C,
    clock: Clock,
    cluster: ClusterConfig,
    id: NodeId,
    me: crate::ProcId,
    security: &super::Security,
    event_capacity: usize,
) -> Result<Running<C>, super::StartError> {
    let addr = cluster
        .addr_of(id)
        .ok_or(super::StartError::UnknownId(id))?;
    let socket = super::udp::bind(addr, cluster.socket.recv_buffer, cluster.socket.send_buffer)
        .map_err(|source| super::StartError::Bind { addr, source })?;
    let multicast = super::udp::multicast_for(&cluster, addr, &socket)
        .map_err(|source| super::StartError::Bind { addr, source })?;
    let security = match security {
        super::Security::Key { id, key } => Some(PacketSecurity::new(me, *id, key)),
        super::Security::Keys(keys) => {
            let Some((first, rest)) = keys.split_first() else {
                return Err(super::StartError::NoKey);
            };
            let mut sec = PacketSecurity::new(me, first.0, &first.1);
            for (id, key) in rest {
                sec.add_key(*id, key)
                    .map_err(|e| super::StartError::Key(e.to_string()))?;
            }
            Some(sec)
        }
        super::Security::Plaintext => None,
    };
    let (req_tx, req_rx) = mpsc::channel(4096);
    let (ev_tx, ev_rx) = mpsc::channel(event_capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let (keys_tx, keys_rx) = mpsc::channel(16);
    let channels = Channels {
        requests: req_rx,
        events: ev_tx,
        shutdown: stop_rx,
        keys: keys_rx,
    };
    let transport = Transport {
        socket,
        multicast,
        security,
    };
    let task = tokio::spawn(run(core, clock, transport, cluster, id, channels));
    Ok(Running {
        requests: req_tx,
        events: ev_rx,
        shutdown: stop_tx,
        keys: keys_tx,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_control, MergeDetect, Packet};
    use crate::{ProcId, RingId};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn datagram_from(node: NodeId) -> Bytes {
        let from = ProcId::new(node, 1);
        let ring = RingId { seq: 4, rep: from };
        encode_control(
            from,
            &Packet::MergeDetect(MergeDetect {
                ring,
                answer: false,
            }),
        )
    }

    /// A daemon whose book missed an addition accepts the newcomer (not removed) and learns
    /// where to answer it; a removed daemon is refused wherever it sends from; before the core
    /// set its book, every sender is accepted as configured.
    #[test]
    fn unknown_senders_are_learned_unless_removed() {
        let book = AddressBook {
            daemons: vec![(0, addr(7000)), (1, addr(7001)), (2, addr(7002))],
            removed: vec![5],
        };
        let mut peers = Peers::book(book, 0);
        let d4 = datagram_from(4);
        assert_eq!(admitted(&peers, false, addr(7004), &d4, false), Admit::Yes);
        assert_eq!(
            admitted(&peers, true, addr(7001), &datagram_from(1), false),
            Admit::Yes
        );
        assert_eq!(
            admitted(&peers, true, addr(7004), &d4, false),
            Admit::Learn(4)
        );
        assert_eq!(
            admitted(&peers, true, addr(7005), &datagram_from(5), false),
            Admit::No,
            "a removed daemon"
        );
        assert_eq!(
            admitted(&peers, true, addr(7009), b"not one of ours", false),
            Admit::No
        );
        assert_eq!(peers.addr(4), None);
        peers.learn(4, addr(7004));
        assert_eq!(peers.addr(4), Some(addr(7004)));
        assert!(peers.knows(addr(7004)) && peers.all.contains(&addr(7004)));
        peers.learn(5, addr(7005));
        assert_eq!(peers.addr(5), None, "a removed daemon is never learned");
    }
}
