//! Three `replica::Replica`s (in-memory stores) in one view, with a client writing through the
//! primary, whose messages are tampered with: the input is a list of 12-byte edits
//! `(pos: u16, value: u64, mode: u8, sender: u8)`. Before each edit the primary gets a commit
//! and the ring delivers a few messages; then the next message in flight (or direct datagram)
//! is copied, 8 bytes of it at `pos` are overwritten (mode bit 0 clear) or XORed (set) with
//! `value`, or with one of the four largest u64 (mode bit 2: where `+ 1` overflows), and the
//! copy is delivered to every member as if `sender % 3` had multicast it. Mode bit 1 installs a new view first (so forged states meet an election). What a member
//! could send must never panic a replica (debug assertions on, overflow checks included).
#![no_main]

use bytes::Bytes;
use gcs::{ProcId, RingId, Time, View, ViewId, ViewKind};
use libfuzzer_sys::fuzz_target;

#[path = "edits.rs"]
mod edits;
use replica::{CommitMode, CommitRequest, Output, Replica, ReplicaConfig, ReqId};
use std::collections::VecDeque;
use storage::{MemStorage, Oid, Record, TxnMeta};

const N: u32 = 3;

struct Cluster {
    servers: Vec<Replica<MemStorage>>,
    /// Multicasts not yet delivered: (sender, payload).
    wire: VecDeque<(u32, Bytes)>,
    /// Direct datagrams not yet delivered: (to, datagram).
    direct: VecDeque<(u32, Bytes)>,
    ring_seq: u64,
    now: Time,
}

impl Cluster {
    fn new() -> Option<Cluster> {
        let cfg = ReplicaConfig::uniform(N, CommitMode::Sync);
        let servers = (0..N)
            .map(|i| Replica::new(cfg.clone(), i, MemStorage::default()).ok())
            .collect::<Option<Vec<_>>>()?;
        let mut c = Cluster {
            servers,
            wire: VecDeque::new(),
            direct: VecDeque::new(),
            ring_seq: 0,
            now: Time(1),
        };
        c.view();
        Some(c)
    }

    /// A transitional then a regular view of every server.
    fn view(&mut self) {
        self.ring_seq += 4;
        let members: Vec<ProcId> = (0..N).map(|i| ProcId::new(i, 1)).collect();
        for kind in [ViewKind::Transitional, ViewKind::Regular] {
            let v = View {
                id: ViewId {
                    ring: RingId {
                        seq: self.ring_seq,
                        rep: members[0],
                    },
                    kind,
                },
                members: members.clone(),
            };
            for r in &mut self.servers {
                r.handle_view(self.now, &v);
            }
        }
        self.run(1_000);
    }

    fn drain(&mut self) {
        for (i, r) in self.servers.iter_mut().enumerate() {
            while let Some(o) = r.poll_output() {
                match o {
                    Output::Multicast { payload, .. } => self.wire.push_back((i as u32, payload)),
                    Output::Direct { to, payload } => self.direct.push_back((to, payload)),
                    _ => {}
                }
            }
        }
    }

    fn deliver(&mut self, sender: u32, payload: &[u8]) {
        for r in &mut self.servers {
            r.handle_delivery(self.now, ProcId::new(sender, 1), payload);
        }
    }

    /// Delivers up to `max` messages, direct datagrams first.
    fn run(&mut self, max: usize) {
        for _ in 0..max {
            self.drain();
            if let Some((to, d)) = self.direct.pop_front() {
                if let Some(r) = self.servers.get_mut(to as usize) {
                    r.handle_direct(self.now, &d);
                }
                continue;
            }
            let Some((sender, payload)) = self.wire.pop_front() else {
                return;
            };
            self.deliver(sender, &payload);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mut c) = Cluster::new() else {
        return;
    };
    for (k, e) in data.chunks_exact(12).enumerate() {
        let k = k as u64;
        let write = CommitRequest {
            client: 7,
            request: k + 1,
            meta: TxnMeta::default(),
            records: vec![Record {
                oid: Oid::from_u64(k % 5),
                data: Some(Bytes::from_static(b"v")),
                expected_serial: None,
            }],
            tid: replica::TidChoice::Next,
        };
        for r in &mut c.servers {
            r.handle_commit(c.now, ReqId(k), write.clone());
        }
        c.run(3);
        c.drain();
        if e[10] & 2 != 0 {
            c.view();
        }
        let sender = u32::from(e[11]) % N;
        if let Some((_, original)) = c.wire.front().cloned() {
            let mut forged = original.to_vec();
            edits::edit(&mut forged, e, true);
            c.deliver(sender, &forged);
        } else if let Some((to, original)) = c.direct.front().cloned() {
            let mut forged = original.to_vec();
            edits::edit(&mut forged, e, true);
            if let Some(r) = c.servers.get_mut(to as usize) {
                r.handle_direct(c.now, &forged);
            }
        }
    }
    c.run(10_000);
});
