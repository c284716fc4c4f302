//! A test daemon for multi-process and multi-host tests: runs one gcs daemon, multicasts
//! messages that name themselves (the simulator's payload format) at a steady rate, and logs
//! every event as one line, so a test can rebuild the run as a simulator `History` and judge
//! it with the same EVS checkers.
//!
//! ```text
//! gcs-probe --config cluster.toml --id 0 [--key FILE] --rate 200 --send-until US --until US
//! ```
//! `--send-until` and `--until` are wall-clock instants (microseconds since the Unix epoch)
//! shared by all probes of a test, so every log stops at the same moment.
//!
//! Lines: `START node inc`, `SENT n service t`, `VIEW R|T seq repnode repinc t m1node.m1inc,...`,
//! `DELIV node inc n service ok t`, `END t`.

use gcs::net::{ClusterConfig, Event, Gcs, Security};
use gcs::{ClusterKey, Service, ViewKind};
use sim::cluster::{decode_payload, encode_payload};
use sim::history::MsgId;
use std::io::Write;
use std::time::Duration;

#[allow(clippy::disallowed_methods)] // test tool: wall-clock timestamps shared by processes
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn arg(name: &str) -> Option<String> {
    let v: Vec<String> = std::env::args().collect();
    v.iter()
        .position(|a| a == name)
        .and_then(|i| v.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cluster =
        ClusterConfig::from_file(arg("--config").expect("--config").as_ref()).expect("config");
    let id: u32 = arg("--id").expect("--id").parse().expect("id");
    let rate: u64 = arg("--rate").map_or(200, |r| r.parse().expect("rate"));
    let send_until: u64 = arg("--send-until")
        .expect("--send-until")
        .parse()
        .expect("us");
    let until: u64 = arg("--until").expect("--until").parse().expect("us");
    let security = match arg("--key") {
        Some(f) => Security::Key {
            id: 1,
            key: ClusterKey::from_key_file(&std::fs::read_to_string(f).expect("key file"))
                .expect("key"),
        },
        None => Security::Plaintext,
    };
    let (gcs, mut events) = Gcs::start_with(cluster, id, security, 1 << 16)
        .await
        .expect("start");
    let me = gcs.id();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "START {} {}", me.node, me.incarnation);
    let _ = out.flush();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    let mut last_flush = now_us();
    loop {
        let now = now_us();
        if now >= until {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if now < send_until => {
                let service = Service::ALL[(n % 6) as usize];
                let len = if n.is_multiple_of(97) { 20_000 } else { 100 };
                let payload = encode_payload(MsgId { sender: me, n }, service, len);
                // Log the send before handing it over: a delivery can never precede its SENT.
                // Flushed at once: a kill -9 may lose the tail of the log, never a SENT whose
                // message others deliver.
                let _ = writeln!(out, "SENT {n} {} {}", service.to_u8(), now_us());
                let _ = out.flush();
                if gcs.multicast(service, payload).await.is_err() {
                    break;
                }
                n += 1;
            }
            ev = tokio::time::timeout(Duration::from_millis(5), events.recv()) => {
                match ev {
                    Ok(Some(Event::View(v))) => {
                        let members: Vec<String> = v.members.iter().map(|m| format!("{}.{}", m.node, m.incarnation)).collect();
                        let kind = if v.id.kind == ViewKind::Regular { "R" } else { "T" };
                        let _ = writeln!(out, "VIEW {kind} {} {} {} {} {}", v.id.ring.seq, v.id.ring.rep.node, v.id.ring.rep.incarnation, now_us(), members.join(","));
                    }
                    Ok(Some(Event::Message(d))) => {
                        let (m, ok) = decode_payload(&d.payload, d.sender);
                        let _ = writeln!(out, "DELIV {} {} {} {} {} {}", m.sender.node, m.sender.incarnation, m.n, d.service.to_u8(), ok as u8, now_us());
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }
        if now_us() - last_flush > 20_000 {
            let _ = out.flush();
            last_flush = now_us();
        }
    }
    let _ = writeln!(out, "END {}", now_us());
    let _ = out.flush();
    // Leave without a goodbye: the others' logs have ended at the same instant.
    std::process::exit(0);
}
