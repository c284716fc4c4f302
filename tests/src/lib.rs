//! Helpers for the cross-crate and multi-process tests in `tests/tests/`.
//!
//! A test records what each daemon's application saw as a simulator [`sim::history::History`],
//! so the very checkers that judge simulated runs judge real ones too.

pub mod netns;

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

/// Rebuilds a process's log from the lines a `gcs-probe` printed. `crashed_at`: when the test
/// killed it (the log then ends with a crash).
pub fn parse_probe_log(text: &str, crashed_at: Option<Time>) -> Option<(ProcId, Vec<HEvent>)> {
    let mut me = None;
    let mut log = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match f.first().copied() {
            Some("START") => me = Some(ProcId::new(num(1)? as u32, num(2)?)),
            Some("SENT") => {
                let p = me?;
                log.push(HEvent::Sent {
                    msg: MsgId {
                        sender: p,
                        n: num(1)?,
                    },
                    service: Service::from_u8(num(2)? as u8)?,
                    at: Time(num(3)?),
                });
            }
            Some("VIEW") => {
                let kind = if f[1] == "R" {
                    gcs::ViewKind::Regular
                } else {
                    gcs::ViewKind::Transitional
                };
                let ring = gcs::RingId {
                    seq: num(2)?,
                    rep: ProcId::new(num(3)? as u32, num(4)?),
                };
                let members = f
                    .get(6)
                    .map(|m| {
                        m.split(',')
                            .filter_map(|x| {
                                let (a, b) = x.split_once('.')?;
                                Some(ProcId::new(a.parse().ok()?, b.parse().ok()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                log.push(HEvent::View {
                    view: gcs::View {
                        id: gcs::ViewId { ring, kind },
                        members,
                    },
                    at: Time(num(5)?),
                });
            }
            Some("DELIV") => log.push(HEvent::Delivered {
                msg: MsgId {
                    sender: ProcId::new(num(1)? as u32, num(2)?),
                    n: num(3)?,
                },
                service: Service::from_u8(num(4)? as u8)?,
                payload_ok: num(5)? == 1,
                at: Time(num(6)?),
            }),
            _ => {}
        }
    }
    if let Some(at) = crashed_at {
        log.push(HEvent::Crashed { at });
    }
    Some((me?, log))
}

/// Wall-clock microseconds since the Unix epoch (processes on one machine share it).
#[allow(clippy::disallowed_methods)] // multi-process tests compare timestamps across processes
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Rebuilds a run from the logs of `gcs-probe` processes (`(log file, killed at)`) and judges it
/// with the simulator's checkers: panics naming the violations, or if fewer than
/// `min_deliveries` messages were delivered in all (a run that did nothing proves nothing).
pub fn check_probe_logs(
    logs: &[(std::path::PathBuf, Option<Time>)],
    calm_from: Time,
    sends_until: Time,
    end: Time,
    min_deliveries: usize,
) {
    let mut h = History {
        calm_from: Some(calm_from),
        sends_until,
        end,
        ..History::default()
    };
    for (path, killed) in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let (id, events) = parse_probe_log(&text, *killed)
            .unwrap_or_else(|| panic!("{} is not a probe log", path.display()));
        h.procs.insert(id, events);
    }
    let delivered = h
        .procs
        .values()
        .flatten()
        .filter(|e| matches!(e, HEvent::Delivered { .. }))
        .count();
    let dir = logs
        .first()
        .and_then(|(p, _)| p.parent())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    assert!(
        delivered >= min_deliveries,
        "only {delivered} deliveries (logs in {dir})"
    );
    let v = sim::checkers::check_all(&h);
    assert!(
        v.is_empty(),
        "logs in {dir}:\n{}",
        v.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A cluster of `n` daemons on free loopback ports with timeouts scaled for loopback tests
/// (failures noticed in a few hundred milliseconds).
pub fn fast_cluster(n: usize) -> gcs::net::ClusterConfig {
    let mut c = gcs::net::ClusterConfig::from_addrs(&free_udp_addrs(n));
    c.protocol.token_timeout_ms = Some(300);
    c.protocol.token_retransmit_timeout_ms = Some(30);
    c.protocol.token_hold_ms = Some(5);
    c.protocol.join_timeout_ms = Some(30);
    c.protocol.consensus_timeout_ms = Some(300);
    c.protocol.merge_detect_interval_ms = Some(100);
    c.protocol.pause_grace_ms = Some(200);
    c
}

/// Waits (at most 10 s) for a session event matching `f` and returns it; panics naming `what`
/// if the session closes or time runs out.
pub async fn wait_for(
    s: &mut gcs::net::Session,
    what: &str,
    mut f: impl FnMut(&gcs::groups::SessionEvent) -> bool,
) -> gcs::groups::SessionEvent {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let Some(e) = s.next_event().await else {
                panic!("session closed waiting for {what}: {:?}", s.close_reason())
            };
            if f(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// True for a regular group view with `n` members.
pub fn is_view_of(e: &gcs::groups::SessionEvent, n: usize) -> bool {
    matches!(e, gcs::groups::SessionEvent::Membership(v)
        if v.kind == gcs::ViewKind::Regular && v.members.len() == n)
}
