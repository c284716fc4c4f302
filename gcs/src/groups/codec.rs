//! The groups layer's messages, carried as payloads of the ring's (AGREED or application
//! service) multicasts.
//!
//! Layout: a tag byte, then the fields, little-endian; a name is a length byte and its bytes.
//!
//! | tag | message | fields |
//! |---|---|---|
//! | 1 | `App` | session u32, name, group count u16 (≥ 1), groups, payload (the rest) |
//! | 2 | `Join` | session u32, name, group |
//! | 3 | `Leave` | session u32, name, group |
//! | 4 | `Disconnect` | session u32, name |
//! | 5 | `State` | ring seq u64, rep node u32, rep incarnation u64, member count u32, members: session u32, name, group count u16, groups |
//!
//! The sending daemon is not encoded: it is the ring's `Delivery::sender`, so a daemon can only
//! speak for its own sessions. An `App` payload is a slice of the delivered buffer (no copy on
//! receipt; one copy on sending, into the message). Decoding never panics and checks every name
//! against the same rules as the session calls.

use super::limits::{check_destination, check_public_group, check_session_name, MAX_DESTINATIONS};
use crate::{ProcId, RingId};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use thiserror::Error;

const TAG_APP: u8 = 1;
const TAG_JOIN: u8 = 2;
const TAG_LEAVE: u8 = 3;
const TAG_DISCONNECT: u8 = 4;
const TAG_STATE: u8 = 5;

/// Fixed part of a state message: tag, ring (20), member count.
pub(crate) const STATE_FIXED: usize = 1 + 20 + 4;

/// Why a groups-layer message from the ring was dropped (counted in `GroupStats::malformed`).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its declared content.
    #[error("truncated groups message")]
    Truncated,
    /// Unknown tag.
    #[error("unknown groups message tag {0}")]
    Tag(u8),
    /// A name breaks the naming rules.
    #[error("bad name in groups message: {0}")]
    Name(&'static str),
    /// A count out of range.
    #[error("bad count in groups message: {0}")]
    Count(&'static str),
    /// Bytes after the last field.
    #[error("{0} trailing bytes in groups message")]
    Trailing(usize),
}

/// One session's memberships in a state message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StateEntry {
    pub(crate) session: u32,
    pub(crate) name: Arc<str>,
    pub(crate) groups: Vec<String>,
}

/// A decoded groups-layer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Msg {
    App {
        session: u32,
        name: Arc<str>,
        groups: Arc<[String]>,
        payload: Bytes,
    },
    Join {
        session: u32,
        name: Arc<str>,
        group: String,
    },
    Leave {
        session: u32,
        name: Arc<str>,
        group: String,
    },
    Disconnect {
        session: u32,
        name: Arc<str>,
    },
    State {
        ring: RingId,
        members: Vec<StateEntry>,
    },
}

fn put_name(b: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= u8::MAX as usize);
    b.put_u8(s.len() as u8);
    b.put_slice(s.as_bytes());
}

/// Header size of an `App` message (everything but the payload).
pub(crate) fn app_header_len<G: AsRef<str>>(name: &str, groups: &[G]) -> usize {
    1 + 4 + 1 + name.len() + 2 + groups.iter().map(|g| 1 + g.as_ref().len()).sum::<usize>()
}

/// An application message: the header, then the payload (copied once, here).
pub(crate) fn encode_app<G: AsRef<str>>(
    session: u32,
    name: &str,
    groups: &[G],
    payload: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(app_header_len(name, groups) + payload.len());
    b.put_u8(TAG_APP);
    b.put_u32_le(session);
    put_name(&mut b, name);
    b.put_u16_le(groups.len() as u16);
    for g in groups {
        put_name(&mut b, g.as_ref());
    }
    b.put_slice(payload);
    b.freeze()
}

fn encode_op(tag: u8, session: u32, name: &str, group: Option<&str>) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + 4 + 1 + name.len() + 33);
    b.put_u8(tag);
    b.put_u32_le(session);
    put_name(&mut b, name);
    if let Some(g) = group {
        put_name(&mut b, g);
    }
    b.freeze()
}

pub(crate) fn encode_join(session: u32, name: &str, group: &str) -> Bytes {
    encode_op(TAG_JOIN, session, name, Some(group))
}

pub(crate) fn encode_leave(session: u32, name: &str, group: &str) -> Bytes {
    encode_op(TAG_LEAVE, session, name, Some(group))
}

pub(crate) fn encode_disconnect(session: u32, name: &str) -> Bytes {
    encode_op(TAG_DISCONNECT, session, name, None)
}

/// The state message of one daemon for the state exchange of `ring`.
pub(crate) fn encode_state<'a, I, G>(ring: RingId, members: I) -> Bytes
where
    I: IntoIterator<Item = (u32, &'a str, G)>,
    G: IntoIterator<Item = &'a String>,
    G::IntoIter: ExactSizeIterator,
{
    let mut b = BytesMut::with_capacity(256);
    b.put_u8(TAG_STATE);
    b.put_u64_le(ring.seq);
    b.put_u32_le(ring.rep.node);
    b.put_u64_le(ring.rep.incarnation);
    let count_at = b.len();
    b.put_u32_le(0);
    let mut count = 0u32;
    for (session, name, groups) in members {
        let groups = groups.into_iter();
        b.put_u32_le(session);
        put_name(&mut b, name);
        b.put_u16_le(groups.len() as u16);
        for g in groups {
            put_name(&mut b, g);
        }
        count += 1;
    }
    b[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    b.freeze()
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&str, DecodeError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Name("not UTF-8"))
    }
    fn session_name(&mut self) -> Result<Arc<str>, DecodeError> {
        let s = self.str()?;
        check_session_name(s).map_err(DecodeError::Name)?;
        Ok(Arc::from(s))
    }
    fn public_group(&mut self) -> Result<String, DecodeError> {
        let s = self.str()?;
        check_public_group(s).map_err(DecodeError::Name)?;
        Ok(s.to_owned())
    }
    fn end(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Decodes one message delivered by the ring. Never panics.
pub(crate) fn decode(buf: &Bytes) -> Result<Msg, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8()?;
    let msg = match tag {
        TAG_APP => {
            let session = r.u32()?;
            let name = r.session_name()?;
            let n = r.u16()? as usize;
            if n == 0 {
                return Err(DecodeError::Count("no destination group"));
            }
            if n > MAX_DESTINATIONS {
                return Err(DecodeError::Count("too many destination groups"));
            }
            let mut groups = Vec::with_capacity(n);
            for _ in 0..n {
                let g = r.str()?;
                check_destination(g).map_err(DecodeError::Name)?;
                groups.push(g.to_owned());
            }
            let payload = buf.slice(r.pos..);
            return Ok(Msg::App {
                session,
                name,
                groups: groups.into(),
                payload,
            });
        }
        TAG_JOIN | TAG_LEAVE => {
            let session = r.u32()?;
            let name = r.session_name()?;
            let group = r.public_group()?;
            if tag == TAG_JOIN {
                Msg::Join {
                    session,
                    name,
                    group,
                }
            } else {
                Msg::Leave {
                    session,
                    name,
                    group,
                }
            }
        }
        TAG_DISCONNECT => {
            let session = r.u32()?;
            let name = r.session_name()?;
            Msg::Disconnect { session, name }
        }
        TAG_STATE => {
            let seq = r.u64()?;
            let node = r.u32()?;
            let incarnation = r.u64()?;
            let ring = RingId {
                seq,
                rep: ProcId { node, incarnation },
            };
            let count = r.u32()?;
            let mut members = Vec::new();
            for _ in 0..count {
                let session = r.u32()?;
                let name = r.session_name()?;
                let n = r.u16()?;
                let mut groups = Vec::new();
                for _ in 0..n {
                    groups.push(r.public_group()?);
                }
                members.push(StateEntry {
                    session,
                    name,
                    groups,
                });
            }
            Msg::State { ring, members }
        }
        t => return Err(DecodeError::Tag(t)),
    };
    r.end()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> RingId {
        RingId {
            seq: 7,
            rep: ProcId::new(3, 9),
        }
    }

    #[test]
    fn round_trips() {
        let app = encode_app(5, "alice", &["chat", "#bob#2"], b"hello");
        let Msg::App {
            session,
            name,
            groups,
            payload,
        } = decode(&app).unwrap()
        else {
            panic!()
        };
        assert_eq!((session, &*name), (5, "alice"));
        assert_eq!(&groups[..], &["chat".to_owned(), "#bob#2".to_owned()]);
        assert_eq!(&payload[..], b"hello");
        // The payload is a slice of the delivered buffer, not a copy.
        assert_eq!(payload.as_ptr(), app[app.len() - 5..].as_ptr());
        assert_eq!(app.len(), app_header_len("alice", &["chat", "#bob#2"]) + 5);

        assert_eq!(
            decode(&encode_join(1, "a", "g")).unwrap(),
            Msg::Join {
                session: 1,
                name: "a".into(),
                group: "g".into()
            }
        );
        assert_eq!(
            decode(&encode_leave(1, "a", "g")).unwrap(),
            Msg::Leave {
                session: 1,
                name: "a".into(),
                group: "g".into()
            }
        );
        assert_eq!(
            decode(&encode_disconnect(2, "b")).unwrap(),
            Msg::Disconnect {
                session: 2,
                name: "b".into()
            }
        );
        let gs = vec!["x".to_owned(), "y".to_owned()];
        let none: Vec<String> = Vec::new();
        let st = encode_state(ring(), [(1, "a", gs.iter()), (2, "b", none.iter())]);
        assert_eq!(st.len(), STATE_FIXED + (4 + 2 + 2 + 2 + 2) + (4 + 2 + 2));
        assert_eq!(
            decode(&st).unwrap(),
            Msg::State {
                ring: ring(),
                members: vec![
                    StateEntry {
                        session: 1,
                        name: "a".into(),
                        groups: gs.clone()
                    },
                    StateEntry {
                        session: 2,
                        name: "b".into(),
                        groups: vec![]
                    }
                ]
            }
        );
    }

    #[test]
    fn bad_messages_are_typed_errors() {
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Truncated));
        assert_eq!(decode(&Bytes::from_static(&[9])), Err(DecodeError::Tag(9)));
        let mut j = encode_join(1, "a", "g").to_vec();
        j.push(0);
        assert_eq!(decode(&Bytes::from(j)), Err(DecodeError::Trailing(1)));
        let bad = encode_join(1, "a", "#g#1");
        assert!(matches!(decode(&bad), Err(DecodeError::Name(_))));
        let none: [&str; 0] = [];
        let empty = encode_app(1, "a", &none, b"x");
        assert!(matches!(decode(&empty), Err(DecodeError::Count(_))));
        // A huge declared member count with no members is truncated, not an allocation.
        let mut st = encode_state(
            ring(),
            std::iter::empty::<(u32, &str, std::slice::Iter<'_, String>)>(),
        )
        .to_vec();
        st[21..25].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&Bytes::from(st)), Err(DecodeError::Truncated));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            which in 0usize..5,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let gs = ["chat".to_owned(), "ops".to_owned()];
            let base = match which {
                0 => encode_app(5, "alice", &["chat", "#bob#2"], b"payload"),
                1 => encode_join(1, "a", "chat"),
                2 => encode_leave(1, "a", "chat"),
                3 => encode_disconnect(1, "a"),
                _ => encode_state(ring(), [(1, "a", gs.iter()), (2, "bb", gs.iter())]),
            };
            let mut v = base.to_vec();
            for (at, x) in flips {
                let n = v.len();
                v[at % n] ^= x;
            }
            v.truncate(cut % (v.len() + 1));
            let _ = decode(&Bytes::from(v));
        }

        #[test]
        fn app_round_trips(session in any::<u32>(), name in "[a-z]{1,16}",
                           groups in proptest::collection::vec("[a-zA-Z0-9_.-]{1,32}", 1..8),
                           payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = encode_app(session, &name, &groups, &payload);
            let Msg::App { session: s, name: n, groups: g, payload: p } = decode(&b).unwrap() else {
                panic!("not an app message")
            };
            prop_assert_eq!(s, session);
            prop_assert_eq!(&*n, name.as_str());
            prop_assert_eq!(&g[..], &groups[..]);
            prop_assert_eq!(&p[..], &payload[..]);
        }
    }
}
