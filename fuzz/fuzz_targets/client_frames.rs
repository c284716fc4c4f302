//! The client protocol (`server::proto`) on arbitrary frame bodies, both directions: decoding
//! returns a typed error or a frame, never panics, and what decodes encodes back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::proto::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok((id, r)) = Request::decode(data) {
        let f = r.encode(id);
        assert_eq!(Request::decode(&f[4..]), Ok((id, r)));
    }
    if let Ok((id, r)) = Response::decode(data) {
        let f = r.encode(id);
        assert_eq!(Response::decode(&f[4..]), Ok((id, r)));
    }
});
