//! The session protocol between a client process and `gcsd` (Unix socket or TCP).
//!
//! A stream of frames, each a `u32` little-endian length then that many bytes of bincode
//! (options fixed in [`options`]: fixed-width integers, little endian, a size limit, trailing
//! bytes rejected). The client speaks first with [`ClientFrame::Hello`] (protocol version, session
//! name, token for TCP); the daemon answers [`ServerFrame::Welcome`] (its version, the session's
//! identity, the largest message it accepts) or [`ServerFrame::Refused`] and closes.
//!
//! Then the client sends requests, each with an id the daemon echoes in a [`ServerFrame::Reply`]
//! (requests of one session are answered in order), and the daemon sends the session's events
//! (messages, views, self-leaves) in delivery order. [`ServerFrame::Closed`] says why the daemon
//! ends a session (too slow a reader, shutdown); [`ClientFrame::Bye`] ends it from the client.
//!
//! Decoding bytes from the other side never panics: every failure is a [`FrameError`]
//! (proptest below; fuzz target `session_frames`).

use crate::groups::{GroupError, GroupView, GroupViewId, MemberId, Reason, SessionEvent};
use crate::{ProcId, Service, ViewId, ViewKind};
use bincode::Options;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes a frame may carry beyond a message's payload (group names, sender, framing).
pub const FRAME_OVERHEAD: usize = 64 << 10;
/// Largest frame before the handshake is done (a `Hello` or a `Welcome` is tiny): an
/// unauthenticated peer cannot make the other side allocate more.
pub const HANDSHAKE_FRAME_MAX: usize = 4096;

/// The bincode options of every frame, with `limit` the largest frame body.
pub fn options(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(limit as u64)
        .reject_trailing_bytes()
}

/// A frame that cannot be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix exceeds the limit.
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended or failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// A message payload: serialized as one byte string (not byte by byte).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(Bytes::from(v)))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A session member on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMember {
    /// Its daemon.
    pub daemon: ProcId,
    /// Session number on that daemon.
    pub session: u32,
    /// Session name.
    pub name: String,
}

impl From<&MemberId> for WireMember {
    fn from(m: &MemberId) -> Self {
        WireMember {
            daemon: m.daemon,
            session: m.session,
            name: m.name.to_string(),
        }
    }
}

impl From<WireMember> for MemberId {
    fn from(m: WireMember) -> Self {
        MemberId {
            daemon: m.daemon,
            session: m.session,
            name: Arc::from(m.name),
        }
    }
}

/// Why a request was refused, on the wire: [`GroupError`] with owned strings, or something
/// outside the groups layer (authentication, version, connection limits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// A `GroupError` variant, by name, its fields and its message.
    Group {
        /// `GroupError` variant.
        kind: GroupErrorKind,
        /// Its string field (a name, or the rule broken).
        name: String,
        /// Its second string field (the rule broken), if any.
        reason: String,
        /// Its numbers (limit, size...).
        a: u64,
        /// Its second number.
        b: u64,
        /// `GroupError`'s own message.
        message: String,
    },
    /// Anything else, as text.
    Other(String),
}

/// The variants of [`GroupError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum GroupErrorKind {
    Config,
    UnknownSession,
    InvalidSessionName,
    NameInUse,
    TooManySessions,
    InvalidGroupName,
    TooManyGroups,
    AlreadyMember,
    NotMember,
    NoGroups,
    TooManyDestinations,
    TooLarge,
    QueueFull,
}

impl From<&GroupError> for WireError {
    fn from(e: &GroupError) -> Self {
        use GroupErrorKind as K;
        let message = e.to_string();
        let (kind, name, reason, a, b) = match e {
            GroupError::Config(r) => (K::Config, String::new(), r.to_string(), 0, 0),
            GroupError::UnknownSession(s) => {
                (K::UnknownSession, String::new(), "".into(), *s as u64, 0)
            }
            GroupError::InvalidSessionName { name, reason } => (
                K::InvalidSessionName,
                name.clone(),
                reason.to_string(),
                0,
                0,
            ),
            GroupError::NameInUse(n) => (K::NameInUse, n.clone(), String::new(), 0, 0),
            GroupError::TooManySessions { max } => (
                K::TooManySessions,
                String::new(),
                String::new(),
                *max as u64,
                0,
            ),
            GroupError::InvalidGroupName { name, reason } => {
                (K::InvalidGroupName, name.clone(), reason.to_string(), 0, 0)
            }
            GroupError::TooManyGroups { max } => (
                K::TooManyGroups,
                String::new(),
                String::new(),
                *max as u64,
                0,
            ),
            GroupError::AlreadyMember(g) => (K::AlreadyMember, g.clone(), String::new(), 0, 0),
            GroupError::NotMember(g) => (K::NotMember, g.clone(), String::new(), 0, 0),
            GroupError::NoGroups => (K::NoGroups, String::new(), String::new(), 0, 0),
            GroupError::TooManyDestinations { count, max } => (
                K::TooManyDestinations,
                String::new(),
                String::new(),
                *count as u64,
                *max as u64,
            ),
            GroupError::TooLarge { size, max } => (
                K::TooLarge,
                String::new(),
                String::new(),
                *size as u64,
                *max as u64,
            ),
            GroupError::QueueFull { queued } => (
                K::QueueFull,
                String::new(),
                String::new(),
                *queued as u64,
                0,
            ),
        };
        WireError::Group {
            kind,
            name,
            reason,
            a,
            b,
            message,
        }
    }
}

/// The rules the groups layer names in its errors (`GroupError`'s `&'static str` fields). A
/// remote error carrying one of them is rebuilt exactly; another text (a daemon of another
/// version) becomes [`crate::net::SessionError::Remote`].
const KNOWN_REASONS: &[&str] = &[
    "empty",
    "longer than 16 bytes",
    "longer than 32 bytes",
    "only printable ASCII without space or '#'",
    "names starting with '#' are private groups",
    "a private group is #name#node",
    "a private group ends with the daemon's node id",
];

fn intern(s: &str) -> Option<&'static str> {
    KNOWN_REASONS.iter().copied().find(|k| *k == s)
}

impl WireError {
    /// The group error it stands for, when this build can rebuild it exactly; otherwise the
    /// text to report.
    pub fn into_group_error(self) -> Result<GroupError, String> {
        use GroupErrorKind as K;
        let WireError::Group {
            kind,
            name,
            reason,
            a,
            b,
            message,
        } = self
        else {
            let WireError::Other(s) = self else {
                unreachable!()
            };
            return Err(s);
        };
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(match kind {
            K::Config => return Err(message),
            K::UnknownSession => GroupError::UnknownSession(a as u32),
            K::InvalidSessionName => match intern(&reason) {
                Some(reason) => GroupError::InvalidSessionName { name, reason },
                None => return Err(message),
            },
            K::NameInUse => GroupError::NameInUse(name),
            K::TooManySessions => GroupError::TooManySessions { max: n(a) },
            K::InvalidGroupName => match intern(&reason) {
                Some(reason) => GroupError::InvalidGroupName { name, reason },
                None => return Err(message),
            },
            K::TooManyGroups => GroupError::TooManyGroups { max: n(a) },
            K::AlreadyMember => GroupError::AlreadyMember(name),
            K::NotMember => GroupError::NotMember(name),
            K::NoGroups => GroupError::NoGroups,
            K::TooManyDestinations => GroupError::TooManyDestinations {
                count: n(a),
                max: n(b),
            },
            K::TooLarge => GroupError::TooLarge {
                size: n(a),
                max: n(b),
            },
            K::QueueFull => GroupError::QueueFull { queued: n(a) },
        })
    }
}

/// Client → daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame: open a session.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        version: u32,
        /// Session name.
        name: String,
        /// The daemon's client token (required over TCP).
        token: Option<String>,
    },
    /// Join a group.
    Join {
        /// Request id.
        id: u64,
        /// The group.
        group: String,
    },
    /// Leave a group.
    Leave {
        /// Request id.
        id: u64,
        /// The group.
        group: String,
    },
    /// Multicast.
    Multicast {
        /// Request id.
        id: u64,
        /// Destination groups.
        groups: Vec<String>,
        /// `Service::to_u8`.
        service: u8,
        /// Content.
        payload: Payload,
    },
    /// End the session.
    Bye,
}

/// Daemon → client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The session is open.
    Welcome {
        /// [`PROTOCOL_VERSION`] of the daemon.
        version: u32,
        /// The session's identity.
        member: WireMember,
        /// Its private group.
        private_group: String,
        /// Largest payload the daemon's ring accepts.
        max_message: u64,
    },
    /// The session was not opened; the daemon closes the connection.
    Refused {
        /// Why.
        error: WireError,
    },
    /// Result of request `id`.
    Reply {
        /// Request id.
        id: u64,
        /// `None`: done.
        error: Option<WireError>,
    },
    /// A delivered message.
    Message {
        /// Its sender.
        sender: WireMember,
        /// Its destination groups.
        groups: Vec<String>,
        /// `Service::to_u8`.
        service: u8,
        /// Content.
        payload: Payload,
    },
    /// A group view (every field of [`GroupView`]).
    View {
        /// The group.
        group: String,
        /// `GroupViewId::view`.
        view: ViewId,
        /// `GroupViewId::origin`.
        origin: ProcId,
        /// `GroupViewId::seq`.
        seq: u32,
        /// Regular or transitional.
        kind: ViewKind,
        /// Members.
        members: Vec<WireMember>,
        /// Joined.
        joined: Vec<WireMember>,
        /// Left.
        left: Vec<WireMember>,
        /// Why.
        reason: WireReason,
    },
    /// The session's own leave took effect.
    SelfLeave {
        /// The group.
        group: String,
    },
    /// The daemon ends the session.
    Closed {
        /// Why.
        reason: String,
    },
}

/// [`Reason`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum WireReason {
    Join,
    Leave,
    Disconnect,
    Network,
}

impl From<Reason> for WireReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Join => WireReason::Join,
            Reason::Leave => WireReason::Leave,
            Reason::Disconnect => WireReason::Disconnect,
            Reason::Network => WireReason::Network,
        }
    }
}

impl From<WireReason> for Reason {
    fn from(r: WireReason) -> Self {
        match r {
            WireReason::Join => Reason::Join,
            WireReason::Leave => Reason::Leave,
            WireReason::Disconnect => Reason::Disconnect,
            WireReason::Network => Reason::Network,
        }
    }
}

fn members(v: &[MemberId]) -> Vec<WireMember> {
    v.iter().map(WireMember::from).collect()
}

fn unwire(v: Vec<WireMember>) -> Vec<MemberId> {
    v.into_iter().map(MemberId::from).collect()
}

impl ServerFrame {
    /// The frame of a session event.
    pub fn event(e: &SessionEvent) -> ServerFrame {
        match e {
            SessionEvent::Message {
                sender,
                groups,
                service,
                payload,
            } => ServerFrame::Message {
                sender: sender.into(),
                groups: groups.to_vec(),
                service: service.to_u8(),
                payload: Payload(payload.clone()),
            },
            SessionEvent::Membership(v) => ServerFrame::View {
                group: v.group.clone(),
                view: v.id.view,
                origin: v.id.origin,
                seq: v.id.seq,
                kind: v.kind,
                members: members(&v.members),
                joined: members(&v.joined),
                left: members(&v.left),
                reason: v.reason.into(),
            },
            SessionEvent::SelfLeave { group } => ServerFrame::SelfLeave {
                group: group.clone(),
            },
        }
    }

    /// The session event this frame carries (`None` for other frames); an unknown service
    /// code is an error.
    pub fn into_event(self) -> Result<Option<SessionEvent>, FrameError> {
        Ok(Some(match self {
            ServerFrame::Message {
                sender,
                groups,
                service,
                payload,
            } => SessionEvent::Message {
                sender: sender.into(),
                groups: Arc::from(groups),
                service: Service::from_u8(service)
                    .ok_or_else(|| FrameError::Malformed(format!("unknown service {service}")))?,
                payload: payload.0,
            },
            ServerFrame::View {
                group,
                view,
                origin,
                seq,
                kind,
                members,
                joined,
                left,
                reason,
            } => SessionEvent::Membership(Arc::new(GroupView {
                group,
                id: GroupViewId { view, origin, seq },
                kind,
                members: unwire(members),
                joined: unwire(joined),
                left: unwire(left),
                reason: reason.into(),
            })),
            ServerFrame::SelfLeave { group } => SessionEvent::SelfLeave { group },
            _ => return Ok(None),
        }))
    }
}

/// Appends the frame of `msg` (length prefix and body) to `out`.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // No limit on what we write ourselves: the peer enforces its own.
    options(usize::MAX)
        .serialize_into(&mut *out, msg)
        .expect("serializing into a Vec cannot fail");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The frame of `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = Vec::new();
    encode_into(msg, &mut v);
    v
}

/// Decodes one frame body (without its length prefix) of at most `max` bytes.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8], max: usize) -> Result<T, FrameError> {
    if body.len() > max {
        return Err(FrameError::TooLarge {
            size: body.len(),
            max,
        });
    }
    options(max)
        .deserialize(body)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads one frame of at most `max` body bytes. `Ok(None)` at a clean end of stream (between
/// frames).
pub async fn read_frame<T, R>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    T: serde::de::DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_le_bytes(len) as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    let mut body = vec![0u8; size];
    r.read_exact(&mut body).await?;
    decode(&body, max).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(n: u32) -> WireMember {
        WireMember {
            daemon: ProcId::new(n, 77),
            session: n + 1,
            name: format!("m{n}"),
        }
    }

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            ServerFrame::Welcome {
                version: PROTOCOL_VERSION,
                member: member(1),
                private_group: "#m1#1".into(),
                max_message: 1 << 25,
            },
            ServerFrame::Message {
                sender: member(2),
                groups: vec!["a".into(), "b".into()],
                service: Service::Safe.to_u8(),
                payload: Payload(Bytes::from_static(b"hello")),
            },
            ServerFrame::Reply { id: 9, error: None },
            ServerFrame::Closed {
                reason: "too slow".into(),
            },
        ];
        for f in frames {
            let bytes = encode(&f);
            assert_eq!(
                bytes.len() - 4,
                u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize
            );
            let back: ServerFrame = decode(&bytes[4..], 1 << 20).unwrap();
            assert_eq!(back, f);
        }
        // A payload is one length and the bytes, not a byte-by-byte sequence.
        let m = ClientFrame::Multicast {
            id: 1,
            groups: vec![],
            service: 4,
            payload: Payload(Bytes::from(vec![7u8; 1000])),
        };
        assert!(encode(&m).len() < 1000 + 40);
        // Trailing bytes are refused.
        let mut b = encode(&ClientFrame::Bye);
        b.push(0);
        assert!(decode::<ClientFrame>(&b[4..], 100).is_err());
    }

    #[test]
    fn group_errors_cross_the_wire_exactly() {
        use crate::groups::{Daemon, Limits};
        use crate::{Config, Time};
        let mut d = Daemon::new(
            Config::default(),
            Limits::default(),
            ProcId::new(0, 1),
            Time::ZERO,
        )
        .unwrap();
        let mut errors = Vec::new();
        for name in ["", "a b", "#x", &"n".repeat(17)] {
            errors.push(d.connect(Time::ZERO, name).unwrap_err());
        }
        let sid = d.connect(Time::ZERO, "ok").unwrap();
        for g in ["", "a b", "#x", &"g".repeat(33)] {
            errors.push(d.join(Time::ZERO, sid, g).unwrap_err());
        }
        for g in ["#x", "#x#", "#x#y", "#a#b#1"] {
            errors.push(
                d.multicast(Time::ZERO, sid, &[g.to_string()], Service::Agreed, b"")
                    .unwrap_err(),
            );
        }
        errors.push(d.leave(Time::ZERO, sid, "nope").unwrap_err());
        errors.push(GroupError::TooLarge { size: 10, max: 5 });
        for e in errors {
            let w = WireError::from(&e);
            let bytes = encode(&ServerFrame::Reply {
                id: 1,
                error: Some(w),
            });
            let ServerFrame::Reply { error: Some(w), .. } = decode(&bytes[4..], 4096).unwrap()
            else {
                panic!()
            };
            assert_eq!(w.into_group_error(), Ok(e));
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ClientFrame>(&bytes, 256);
            let _ = decode::<ServerFrame>(&bytes, 256);
            if let Ok(f) = decode::<ServerFrame>(&bytes, 1 << 16) {
                let _ = f.into_event();
            }
        }

        #[test]
        fn mutated_frames_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let f = ServerFrame::View {
                group: "chat".into(),
                view: ViewId { ring: crate::RingId { seq: 3, rep: ProcId::new(0, 1) }, kind: ViewKind::Regular },
                origin: ProcId::new(0, 1),
                seq: 2,
                kind: ViewKind::Regular,
                members: vec![member(0), member(1)],
                joined: vec![member(1)],
                left: vec![],
                reason: WireReason::Join,
            };
            let mut b = encode(&f)[4..].to_vec();
            let n = b.len();
            b[pos % n] = byte;
            b.truncate(n - cut.min(n));
            if let Ok(f) = decode::<ServerFrame>(&b, 1 << 16) {
                let _ = f.into_event();
            }
        }
    }
}
