//! The messages between storage servers (`replica::wire`) and the checkpoint-transfer messages
//! (`server::checkpoint`) on arbitrary bytes: decoding returns, never panics, and what decodes
//! encodes back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = replica::wire::Msg::decode(data) {
        assert_eq!(replica::wire::Msg::decode(&m.encode()), Ok(m));
    }
    if let Some(m) = server::checkpoint::CkptMsg::decode(data) {
        assert_eq!(server::checkpoint::CkptMsg::decode(&m.encode()), Some(m));
    }
});
