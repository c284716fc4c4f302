//! CPU cost of ordering: three `Node`s in one thread, datagrams handed over instantly (no
//! network, no syscalls), every sender's queue kept full. Prints AGREED messages ordered and
//! delivered per second for 100-byte and 1 KiB payloads.
//!
//! `cargo run --release -p gcs --example core_bench [seconds_per_size]`

use bytes::Bytes;
use gcs::{Config, Dest, Node, Output, ProcId, Service, Time};
use std::collections::VecDeque;
use std::time::Duration;

fn run(size: usize, secs: f64) -> (f64, f64, u64) {
    let cfg = Config::default();
    let n = 3;
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node::new(cfg.clone(), ProcId::new(i as u32, 1), Time::ZERO).unwrap())
        .collect();
    let mut wire: VecDeque<(usize, Bytes)> = VecDeque::new();
    let mut delivered = vec![0u64; n];
    let mut now = Time::ZERO;
    let payload = Bytes::from(vec![7u8; size]);
    let route = |i: usize,
                 nodes: &mut Vec<Node>,
                 wire: &mut VecDeque<(usize, Bytes)>,
                 delivered: &mut Vec<u64>| {
        while let Some(o) = nodes[i].poll_output() {
            match o {
                Output::Transmit {
                    dest: Dest::All,
                    bytes,
                } => {
                    for j in (0..n).filter(|j| *j != i) {
                        wire.push_back((j, bytes.clone()));
                    }
                }
                Output::Transmit {
                    dest: Dest::Node(j),
                    bytes,
                } => wire.push_back((j as usize, bytes)),
                Output::Deliver(_) => delivered[i] += 1,
                Output::View(_) => {}
            }
        }
    };
    for i in 0..n {
        route(i, &mut nodes, &mut wire, &mut delivered);
    }
    // Form the ring (virtual time runs the membership timers).
    while nodes
        .iter()
        .any(|x| x.view().map(|v| v.members.len()) != Some(n))
    {
        while let Some((j, b)) = wire.pop_front() {
            nodes[j].handle_packet(now, b);
            route(j, &mut nodes, &mut wire, &mut delivered);
        }
        now = now.saturating_add(Duration::from_millis(1));
        for i in 0..n {
            nodes[i].handle_timeout(now);
            route(i, &mut nodes, &mut wire, &mut delivered);
        }
    }
    let base = delivered.clone();
    #[allow(clippy::disallowed_methods)] // a benchmark measures wall time
    let start = std::time::Instant::now();
    let mut steps = 0u64;
    loop {
        for i in 0..n {
            while nodes[i].queued_bytes() < 512 * 1024 {
                nodes[i]
                    .multicast(now, Service::Agreed, payload.clone())
                    .unwrap();
            }
            if nodes[i].poll_deadline().is_some_and(|d| d <= now) {
                nodes[i].handle_timeout(now);
                route(i, &mut nodes, &mut wire, &mut delivered);
            }
        }
        for _ in 0..256 {
            let Some((j, b)) = wire.pop_front() else {
                break;
            };
            nodes[j].handle_packet(now, b);
            route(j, &mut nodes, &mut wire, &mut delivered);
            steps += 1;
        }
        // Virtual time advances slowly: fast enough for nothing to time out.
        now = now.saturating_add(Duration::from_micros(1));
        if steps % 4096 < 256 && start.elapsed().as_secs_f64() >= secs {
            break;
        }
    }
    let el = start.elapsed().as_secs_f64();
    let msgs = (delivered[0] - base[0]) as f64;
    let all: u64 = delivered.iter().zip(&base).map(|(d, b)| d - b).sum();
    (msgs / el, msgs * size as f64 / el / 1e6, all)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!("core_bench: 3 nodes, one thread, instant hand-over, AGREED, default Config");
    for size in [100usize, 1024] {
        let (rate, mb, all) = run(size, secs);
        println!(
            "  {size:>5} B: {:>10.0} msgs/s ordered+delivered ({mb:.1} MB/s of payload; {all} deliveries over the 3 nodes)",
            rate
        );
    }
}
