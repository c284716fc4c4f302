//! The groups layer's decoder (`gcs::groups`) on arbitrary ring payloads: it must return,
//! never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gcs::groups::validate_payload(&Bytes::copy_from_slice(data));
});
