//! Two `gcs::Node`s that formed a ring (once, then cloned for every run), whose live traffic
//! is tampered with: the input is a list of 11-byte edits `(pos: u16, value: u64, mode: u8)`.
//! Before each new forgery the pair runs for a millisecond of virtual time (node 1 keeps
//! multicasting, so its queue is never empty); then the next datagram in flight is copied and
//! 8 bytes of it at `pos` are overwritten (mode bit 0 clear) or XORed (set) with `value`, or
//! with one of the four largest u64 (mode bit 2: where `+ 1` overflows). Edits with mode bit 1
//! set go on editing the same copy (several fields of one token), which is then delivered as
//! well as the original. Tokens, data packets, joins and commit tokens with structure intact
//! but fields anywhere in their range are what a key holder could send; the nodes must neither
//! panic, nor break their invariants (debug assertions on), nor grow without bound (libFuzzer's
//! RSS limit).
#![no_main]

use bytes::Bytes;
use gcs::{Config, Dest, Node, Output, ProcId, Service, Time};
use libfuzzer_sys::fuzz_target;

#[path = "edits.rs"]
mod edits;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone)]
struct Pair {
    nodes: [Node; 2],
    now: Time,
    /// In flight: (to, datagram).
    wire: Vec<(usize, Bytes)>,
}

impl Pair {
    fn new() -> Option<Pair> {
        let mk = |n| Node::new(Config::default(), ProcId::new(n, 1), Time::ZERO).ok();
        let mut p = Pair {
            nodes: [mk(1)?, mk(2)?],
            now: Time::ZERO,
            wire: Vec::new(),
        };
        for _ in 0..5_000 {
            if p.nodes
                .iter()
                .all(|n| n.view().is_some_and(|v| v.members.len() == 2))
            {
                return Some(p);
            }
            p.step();
        }
        None
    }

    /// One millisecond: timers, then a few hops of the datagrams in flight (the token moves on
    /// at most four times; a ring under load is never quiet).
    fn step(&mut self) {
        self.now = self.now.saturating_add(Duration::from_millis(1));
        for n in self.nodes.iter_mut() {
            if n.poll_deadline().is_some_and(|t| t <= self.now) {
                n.handle_timeout(self.now);
            }
        }
        for _ in 0..4 {
            self.collect();
            if self.wire.is_empty() {
                return;
            }
            for (to, bytes) in std::mem::take(&mut self.wire) {
                self.nodes[to].handle_packet(self.now, bytes);
            }
        }
    }

    fn collect(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            while let Some(o) = n.poll_output() {
                if let Output::Transmit { dest, bytes } = o {
                    if matches!(dest, Dest::All) || dest == Dest::Node(2 - i as u32) {
                        self.wire.push((1 - i, bytes));
                    }
                }
            }
        }
    }
}

static FORMED: OnceLock<Option<Pair>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some(mut p) = FORMED.get_or_init(Pair::new).clone() else {
        return;
    };
    let mut pending = data.chunks_exact(11).peekable();
    let mut k = 0u32;
    while let Some(first) = pending.next() {
        if k % 2 == 0 {
            let _ = p.nodes[0].multicast(p.now, Service::Agreed, Bytes::from_static(b"load"));
        }
        k += 1;
        p.step();
        p.collect();
        let Some((to, original)) = p.wire.first().cloned() else {
            continue;
        };
        let mut forged = original.to_vec();
        edits::edit(&mut forged, first, false);
        while let Some(more) = pending.next_if(|e| e[10] & 2 != 0) {
            edits::edit(&mut forged, more, false);
        }
        p.nodes[to].handle_packet(p.now, Bytes::from(forged));
    }
    // Whatever was forged, the pair keeps running without a panic.
    for _ in 0..20 {
        p.step();
    }
});
