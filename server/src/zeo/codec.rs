//! ZEO 5 framing and messages with msgpack marshalling (`M5`).
//!
//! A frame is a 4-byte big-endian length and that many bytes. After the handshake (one frame
//! each way holding the protocol: the server says `M5`, the client echoes it) every frame is
//! one msgpack array `(msgid, async, name, args)`. Calls from the client carry an integer
//! msgid (or, for `loadBefore`, the tuple `(oid, tid)`: it is echoed as received); replies
//! are `(msgid, 0, ".reply", result)`, errors `(msgid, 2, ".reply", (class, state))`, and
//! calls the server makes `(0, true, name, args)`.
//!
//! Decoding never panics: lengths are bounded by the caller's frame limit, nesting by
//! [`MAX_DEPTH`], and msgpack's own preallocation is capped by the decoder.

use bytes::{BufMut, Bytes, BytesMut};
pub use rmpv::Value;

/// Deepest nesting accepted in a message (ZEO's deepest is a handful of levels).
pub const MAX_DEPTH: usize = 32;

/// The protocol this server speaks: ZEO 5 with msgpack.
pub const PROTOCOL: &[u8] = b"M5";

/// A message that is not a ZEO 5 call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not msgpack, or trailing bytes.
    #[error("not a msgpack message: {0}")]
    Msgpack(String),
    /// msgpack, but not `(msgid, async, name, args)`.
    #[error("not a ZEO call: {0}")]
    Shape(&'static str),
}

/// One call from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Echoed in the reply.
    pub msgid: Value,
    /// No reply is wanted.
    pub is_async: bool,
    /// The method.
    pub name: String,
    /// Its arguments.
    pub args: Vec<Value>,
}

impl Call {
    /// The client's keep-alive (`(-1, 0, ".reply", None)`), which needs no answer.
    pub fn is_heartbeat(&self) -> bool {
        self.name == ".reply"
    }
}

/// Decodes one frame's payload.
pub fn decode(frame: &[u8]) -> Result<Call, CodecError> {
    let mut rd = frame;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| CodecError::Msgpack(e.to_string()))?;
    if !rd.is_empty() {
        return Err(CodecError::Msgpack(format!(
            "{} bytes after the message",
            rd.len()
        )));
    }
    let Value::Array(mut parts) = v else {
        return Err(CodecError::Shape("not an array"));
    };
    if parts.len() != 4 {
        return Err(CodecError::Shape("not 4 elements"));
    }
    let args = match parts.pop() {
        Some(Value::Array(a)) => a,
        Some(Value::Nil) => Vec::new(),
        _ => return Err(CodecError::Shape("arguments are not an array")),
    };
    let name = match parts.pop() {
        Some(Value::String(s)) => s
            .into_str()
            .ok_or(CodecError::Shape("method name is not UTF-8"))?,
        _ => return Err(CodecError::Shape("method name is not a string")),
    };
    let is_async = match parts.pop() {
        Some(Value::Boolean(b)) => b,
        Some(Value::Integer(i)) => i.as_u64() != Some(0),
        Some(Value::Nil) => false,
        _ => return Err(CodecError::Shape("async flag is not a boolean")),
    };
    let msgid = parts.pop().unwrap_or(Value::Nil);
    Ok(Call {
        msgid,
        is_async,
        name,
        args,
    })
}

/// Encodes a value into a frame (length prefix included).
pub fn frame(v: &Value) -> Bytes {
    let mut body = Vec::with_capacity(64);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut body, v);
    raw_frame(&body)
}

/// A raw frame (the handshake).
pub fn raw_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// A reply frame.
pub fn reply(msgid: &Value, result: Value) -> Bytes {
    frame(&Value::Array(vec![
        msgid.clone(),
        Value::from(0),
        Value::from(".reply"),
        result,
    ]))
}

/// An error reply frame: the client rebuilds `class` from `state` (see [`super::errors`]).
pub fn error(msgid: &Value, class: &str, state: Value) -> Bytes {
    frame(&Value::Array(vec![
        msgid.clone(),
        Value::from(2),
        Value::from(".reply"),
        Value::Array(vec![Value::from(class), state]),
    ]))
}

/// A call the server makes (no reply expected).
pub fn server_call(name: &str, args: Vec<Value>) -> Bytes {
    frame(&Value::Array(vec![
        Value::from(0),
        Value::Boolean(true),
        Value::from(name),
        Value::Array(args),
    ]))
}

/// `bytes` as msgpack bin.
pub fn bin(b: &[u8]) -> Value {
    Value::Binary(b.to_vec())
}

/// A map with string keys.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// The 8 bytes of an oid or tid argument (`None` and nil give `None`).
pub fn bytes8(v: &Value) -> Option<[u8; 8]> {
    match v {
        Value::Binary(b) | Value::Ext(_, b) => b.as_slice().try_into().ok(),
        Value::String(s) => s.as_bytes().try_into().ok(),
        _ => None,
    }
}

/// A bytes argument (bin, or str as its UTF-8 bytes; nil is empty).
pub fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Binary(b) => Some(b.clone()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_decode_and_replies_echo_tuple_msgids() {
        let msgid = Value::Array(vec![bin(&[0; 8]), bin(&[1; 8])]);
        let call = Value::Array(vec![
            msgid.clone(),
            Value::Boolean(false),
            Value::from("loadBefore"),
            Value::Array(vec![bin(&[0; 8]), bin(&[1; 8])]),
        ]);
        let f = frame(&call);
        let c = decode(&f[4..]).unwrap();
        assert_eq!(c.name, "loadBefore");
        assert_eq!(c.msgid, msgid);
        assert!(!c.is_async);
        let r = reply(&c.msgid, Value::Nil);
        let back = rmpv::decode::read_value(&mut &r[4..]).unwrap();
        assert_eq!(back[0], msgid);
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\xc1",
            b"\x93\x01\xc2\xa3abc",
            b"\x94\x01\xc2\x01\x90",
            b"\x94\x01\xc2\xa1x\x90\x00",
            b"\xdd\xff\xff\xff\xff",
            b"\xc6\xff\xff\xff\xff",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // Nesting beyond the limit.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(decode(&deep).is_err());
    }

    proptest::proptest! {
        /// What the `zeo_input` fuzz target asserts: any bytes decode to a call or an error,
        /// and a decoded call re-encodes to one that encodes the same.
        #[test]
        fn any_bytes_decode_or_fail_and_calls_re_encode(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            prefix in 0usize..4,
        ) {
            let heads: [&[u8]; 4] = [b"", b"\x94\x01\xc2\xa4ping", b"\x94\x00\xc3\xa6storea", b"\x94"];
            let mut bytes = heads[prefix].to_vec();
            bytes.extend_from_slice(&data);
            if let Ok(c) = decode(&bytes) {
                let encode = |c: &Call| {
                    frame(&Value::Array(vec![
                        c.msgid.clone(),
                        Value::Boolean(c.is_async),
                        Value::from(c.name.as_str()),
                        Value::Array(c.args.clone()),
                    ]))
                };
                let again = encode(&c);
                let back = decode(&again[4..]).expect("re-encoded call decodes");
                proptest::prop_assert_eq!(encode(&back), again);
            }
        }

        /// Well-formed calls always decode, to what was sent: the round trip above is not
        /// left to the chance that random bytes decode.
        #[test]
        fn well_formed_calls_decode_to_what_was_sent(
            msgid in proptest::prelude::any::<i64>(),
            is_async in proptest::prelude::any::<bool>(),
            name in "[a-zA-Z_]{1,20}",
            ints in proptest::collection::vec(proptest::prelude::any::<i64>(), 0..4),
            blobs in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..4),
        ) {
            let args: Vec<Value> = ints
                .into_iter()
                .map(Value::from)
                .chain(blobs.into_iter().map(Value::Binary))
                .collect();
            let sent = Value::Array(vec![
                Value::from(msgid),
                Value::Boolean(is_async),
                Value::from(name.as_str()),
                Value::Array(args.clone()),
            ]);
            let c = decode(&frame(&sent)[4..]).expect("a well-formed call decodes");
            proptest::prop_assert_eq!(c.msgid, Value::from(msgid));
            proptest::prop_assert_eq!(c.is_async, is_async);
            proptest::prop_assert_eq!(c.name, name);
            proptest::prop_assert_eq!(c.args, args);
        }
    }
}
