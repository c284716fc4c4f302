//! The core's datagram decoder (`gcs::wire`) on arbitrary bytes: it must return, never panic,
//! and `describe` (which decodes too and formats every field) must not panic either.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let ok = gcs::wire::validate(bytes.clone()).is_ok();
    let line = gcs::wire::describe(&bytes);
    assert_eq!(ok, !line.starts_with("undecodable"));
});
