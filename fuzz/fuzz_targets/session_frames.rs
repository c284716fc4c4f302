//! The session protocol between clients and `gcsd` (`gcs::net::proto`): any bytes, as a frame
//! body from a client or from a daemon, decode to a frame or a typed error, never a panic; a
//! daemon frame that decodes converts to a session event or an error.
#![no_main]

use gcs::net::proto::{decode, encode, ClientFrame, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = decode::<ClientFrame>(data, 1 << 20) {
        // What decodes re-encodes to the same bytes (the options are fixed in one place).
        assert_eq!(&encode(&f)[4..], data);
    }
    if let Ok(f) = decode::<ServerFrame>(data, 1 << 20) {
        let _ = f.into_event();
    }
});
