//! Writes real datagrams of a small ring (boot, messages of every size class, a member leaving)
//! as seed inputs for the fuzz targets: `cargo run -p gcs --example fuzz_seeds -- fuzz/seeds`.
//! Without seeds a fuzzer takes long to guess the header's magic and the bincode layouts.

use bytes::Bytes;
use gcs::{Config, Dest, Node, Output, ProcId, Service, Time};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::new(Config::default(), ProcId::new(i, 1), Time::ZERO).expect("config"))
        .collect();
    let mut wire: VecDeque<(usize, Bytes)> = VecDeque::new();
    // One seed per (kind byte, length class), the first of each.
    let mut seeds: BTreeMap<(u8, usize), Bytes> = BTreeMap::new();
    let mut now = Time::ZERO;
    for step in 0..4000u32 {
        now = now.saturating_add(Duration::from_micros(200));
        if step % 400 == 7 {
            let size = [10usize, 1000, 5000, 200_000][(step / 400) as usize % 4];
            let service = Service::ALL[(step / 400) as usize % Service::ALL.len()];
            let _ =
                nodes[(step % 3) as usize].multicast(now, service, Bytes::from(vec![7u8; size]));
        }
        let alive = if step > 3000 { 2 } else { 3 };
        for (i, n) in nodes.iter_mut().enumerate().take(alive) {
            if n.poll_deadline().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
            while let Some(o) = n.poll_output() {
                if let Output::Transmit { dest, bytes } = o {
                    if bytes.len() > 3 {
                        seeds
                            .entry((bytes[3], bytes.len().ilog2() as usize))
                            .or_insert_with(|| bytes.clone());
                    }
                    match dest {
                        Dest::All => (0..3).filter(|j| *j != i).for_each(|j| {
                            wire.push_back((j, bytes.clone()));
                        }),
                        Dest::Node(j) => wire.push_back((j as usize, bytes)),
                    }
                }
            }
        }
        for _ in 0..wire.len() {
            if let Some((to, b)) = wire.pop_front() {
                if to < alive {
                    nodes[to].handle_packet(now, b);
                }
            }
        }
    }
    for target in ["wire_decode", "node_packets"] {
        let dir = format!("{out}/{target}");
        std::fs::create_dir_all(&dir)?;
        for ((kind, class), bytes) in &seeds {
            // Seeds for node_packets stay small: one datagram per file, and only up to 8 KiB.
            if target == "node_packets" && bytes.len() > 8192 {
                continue;
            }
            std::fs::write(format!("{dir}/kind{kind}-len2e{class}"), bytes)?;
        }
    }
    println!("{} seeds per target in {out}", seeds.len());
    Ok(())
}
