//! One envelope for everything a storage server multicasts through the ring: a channel byte
//! that says whose message it is, then that channel's own encoding. The receiving core hands
//! the message to its channel by that byte alone, so no channel's format can be mistaken for
//! another's (before, the checkpoint messages were told apart from the replica's by their
//! first byte happening to differ from the replica format's version).

use bytes::{BufMut, Bytes, BytesMut};

/// Whose message a ring payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// The replication protocol (`replica::wire::Msg`).
    Replica = 1,
    /// The checkpoint transfer ([`crate::checkpoint::CkptMsg`]).
    Checkpoint = 2,
}

/// `body` in an envelope of `channel`.
pub fn seal(channel: Channel, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + body.len());
    b.put_u8(channel as u8);
    b.put_slice(body);
    b.freeze()
}

/// The channel and body of a ring payload, or `None` for an unknown channel or an empty
/// payload (never panics).
pub fn open(payload: &Bytes) -> Option<(Channel, Bytes)> {
    let channel = match *payload.first()? {
        1 => Channel::Replica,
        2 => Channel::Checkpoint,
        _ => return None,
    };
    Some((channel, payload.slice(1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payloads_open_to_their_channel_and_others_do_not() {
        for ch in [Channel::Replica, Channel::Checkpoint] {
            let p = seal(ch, b"body");
            assert_eq!(open(&p), Some((ch, Bytes::from_static(b"body"))));
        }
        assert_eq!(open(&Bytes::new()), None);
        assert_eq!(open(&Bytes::from_static(&[0, 1])), None);
        assert_eq!(open(&Bytes::from_static(&[0xC7, 1])), None);
        assert_eq!(
            open(&Bytes::from_static(&[2])),
            Some((Channel::Checkpoint, Bytes::new()))
        );
    }
}
