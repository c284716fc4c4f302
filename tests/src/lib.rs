//! Helpers for the cross-crate and multi-process tests in `tests/tests/`.
//!
//! A test records what each daemon's application saw as a simulator [`sim::history::History`],
//! so the very checkers that judge simulated runs judge real ones too.

use gcs::net::Event;
use gcs::{ProcId, Service, Time};
use sim::cluster::{decode_payload, encode_payload};
use sim::history::{Event as HEvent, History, MsgId};
use std::net::{SocketAddr, UdpSocket};

/// `n` free UDP ports on 127.0.0.1 (bound then released; a race with other processes is
/// possible but harmless in practice on a test machine).
pub fn free_udp_addrs(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("local addr"))
        .collect()
}

/// Builds a history from real runs.
#[derive(Default)]
pub struct Recorder {
    /// The history so far.
    pub history: History,
    next: std::collections::BTreeMap<ProcId, u64>,
}

impl Recorder {
    /// A payload naming a new message of `p`, and records the send.
    pub fn send(&mut self, p: ProcId, service: Service, len: usize, at: Time) -> bytes::Bytes {
        let n = self.next.entry(p).or_insert(0);
        let msg = MsgId { sender: p, n: *n };
        *n += 1;
        self.history
            .procs
            .entry(p)
            .or_default()
            .push(HEvent::Sent { msg, service, at });
        encode_payload(msg, service, len)
    }

    /// Records what `p`'s application received.
    pub fn event(&mut self, p: ProcId, e: &Event, at: Time) {
        let log = self.history.procs.entry(p).or_default();
        match e {
            Event::View(v) => log.push(HEvent::View {
                view: v.clone(),
                at,
            }),
            Event::Message(d) => {
                let (msg, payload_ok) = decode_payload(&d.payload, d.sender);
                log.push(HEvent::Delivered {
                    msg,
                    service: d.service,
                    at,
                    payload_ok,
                });
            }
        }
    }

    /// Records that `p` was killed.
    pub fn crashed(&mut self, p: ProcId, at: Time) {
        self.history
            .procs
            .entry(p)
            .or_default()
            .push(HEvent::Crashed { at });
    }
}
