//! The packet security layer's `open`.
//!
//! 1. The whole input as one datagram: never panics, never authenticates.
//! 2. The input as a program over genuine traffic, checked against a model: two runs of node 1
//!    (incarnations 1 and 2) and node 2 seal datagrams, which the receiver (node 0) opens in the
//!    order, with the duplications and the corruptions the input chooses. A datagram must open iff
//!    it is intact, addressed to node 0 or to all, sealed with a key the receiver holds, not
//!    opened before, from the newest incarnation seen for its node and within `WINDOW` of the
//!    newest counter accepted from it.
#![no_main]

use gcs::crypto::{SealedHeader, WINDOW};
use gcs::{ClusterKey, Dest, PacketSecurity, ProcId};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

fuzz_target!(|data: &[u8]| {
    let k0 = ClusterKey::from_bytes([7; 32]);
    let k1 = ClusterKey::from_bytes([8; 32]);
    let me = ProcId::new(0, 1);
    let mut rx = PacketSecurity::new(me, 0, &k0);
    assert!(rx.open(data).is_err());
    assert_eq!(rx.stats().opened, 0);

    let mut peers = [
        PacketSecurity::new(ProcId::new(1, 1), 0, &k0),
        PacketSecurity::new(ProcId::new(1, 2), 0, &k0),
        PacketSecurity::new(ProcId::new(2, 1), 0, &k0),
    ];
    for p in &mut peers {
        p.add_key(1, &k1).unwrap();
    }
    let mut sealed = Vec::new();
    // Model: accepted (node, incarnation, counter); per node, newest incarnation and top counter.
    let mut accepted = BTreeSet::new();
    let mut newest: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut rx_has_k1 = false;
    for op in data.chunks(3) {
        let [code, a, b] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        match code % 6 {
            // Seal one datagram (or skip ahead `b * 4` counters first, to reach the window's end).
            0 | 1 => {
                let p = &mut peers[a as usize % 3];
                if code % 6 == 1 {
                    for _ in 0..(b as usize) * 4 {
                        p.seal(Dest::All, b"").unwrap();
                    }
                }
                let dest = match a / 3 % 3 {
                    0 => Dest::All,
                    1 => Dest::Node(0),
                    _ => Dest::Node(2),
                };
                sealed.push((p.seal(dest, op).unwrap(), op.to_vec()));
            }
            // Open one, intact or with one byte changed.
            2 | 3 if !sealed.is_empty() => {
                let (d, plain) = &sealed[a as usize % sealed.len()];
                if code % 6 == 3 {
                    let mut bad = d.to_vec();
                    let i = b as usize % bad.len();
                    bad[i] ^= a | 1;
                    assert!(rx.open(&bad).is_err(), "a modified datagram opened");
                    continue;
                }
                let h = SealedHeader::decode(d).unwrap();
                let (node, inc, c) = (h.sender.node, h.sender.incarnation, h.counter);
                let expect = (h.dest != Dest::Node(2))
                    && (h.key_id == 0 || rx_has_k1)
                    && !accepted.contains(&(node, inc, c))
                    && match newest.get(&node) {
                        None => true,
                        Some(&(i, _)) if inc > i => true,
                        Some(&(i, top)) => inc == i && c + WINDOW > top,
                    };
                let got = rx.open(d);
                assert_eq!(got.is_ok(), expect, "{h:?}: {got:?}");
                if let Ok(inner) = got {
                    assert_eq!(&inner[..], &plain[..]);
                    accepted.insert((node, inc, c));
                    let e = newest.entry(node).or_insert((inc, c));
                    if inc > e.0 {
                        *e = (inc, c);
                    }
                    e.1 = e.1.max(c);
                }
            }
            // Key rotation steps.
            4 => {
                if a % 2 == 0 {
                    rx.add_key(1, &k1).unwrap();
                    rx_has_k1 = true;
                } else if rx.remove_key(1).is_ok() {
                    rx_has_k1 = false;
                }
            }
            5 => {
                let _ = peers[a as usize % 3].set_send_key(b % 2);
            }
            _ => {}
        }
    }
});
