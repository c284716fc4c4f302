//! A whole `Node` fed arbitrary datagrams (as a key holder could send them: the security layer
//! only keeps out daemons without the key). The input is split at every `0xff 0xfe` pair into
//! datagrams, each delivered 1 ms after the previous, with timers run in between. The node must
//! neither panic nor break its invariants (checked after every input: debug assertions are on).
#![no_main]

use bytes::Bytes;
use gcs::{Config, Node, ProcId, Time};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(mut node) = Node::new(Config::default(), ProcId::new(1, 1), Time::ZERO) else {
        return;
    };
    let mut now = Time::ZERO;
    let mut start = 0;
    let mut i = 0;
    while i <= data.len() {
        let end = i == data.len();
        if end || (data[i] == 0xff && data.get(i + 1) == Some(&0xfe)) {
            now = now.saturating_add(Duration::from_millis(1));
            node.handle_packet(now, Bytes::copy_from_slice(&data[start..i]));
            while node.poll_output().is_some() {}
            if let Some(t) = node.poll_deadline() {
                if t <= now {
                    node.handle_timeout(now);
                    while node.poll_output().is_some() {}
                }
            }
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
});
