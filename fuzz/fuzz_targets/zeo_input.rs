//! What a ZEO client sends (`server::zeo::codec::decode`: a frame body after the handshake)
//! and the object records it stores, whose references pack reads
//! (`server::zeo::record_references`): any bytes give a call, a reference list or a typed
//! error, never a panic; a decoded call re-encodes to a message that decodes to the same call (the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::zeo::codec::{self, Value};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = codec::decode(data) {
        // Compared as bytes: a NaN argument is not equal to itself.
        let encode = |c: &codec::Call| {
            codec::frame(&Value::Array(vec![
                c.msgid.clone(),
                Value::Boolean(c.is_async),
                Value::from(c.name.as_str()),
                Value::Array(c.args.clone()),
            ]))
        };
        let again = encode(&c);
        let back = codec::decode(&again[4..]).expect("re-encoded call decodes");
        assert_eq!(encode(&back), again);
    }
    let _ = server::zeo::record_references(data);
});
