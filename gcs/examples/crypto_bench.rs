//! Throughput of the packet security layer: seal on one side, open on the other, per datagram
//! size. `cargo run -p gcs --release --example crypto_bench [MiB per size]`.

use gcs::{ClusterKey, Dest, PacketSecurity, ProcId};
use std::time::Duration;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let key = ClusterKey::from_bytes([0x5a; 32]);
    println!("seal+open, XChaCha20-Poly1305, {mib} MiB per size, one core");
    for size in [64usize, 1024, 8192, 65_000] {
        let mut tx = PacketSecurity::new(ProcId::new(1, 1), 0, &key);
        let mut rx = PacketSecurity::new(ProcId::new(2, 1), 0, &key);
        let plain = vec![0xa5u8; size];
        let count = (mib << 20) / size;
        let mut seal_time = Duration::ZERO;
        #[allow(clippy::disallowed_methods)] // a benchmark measures wall time
        let start = std::time::Instant::now();
        for _ in 0..count {
            #[allow(clippy::disallowed_methods)]
            let t = std::time::Instant::now();
            let sealed = tx.seal(Dest::All, &plain).expect("seal");
            seal_time += t.elapsed();
            let opened = rx.open(&sealed).expect("open");
            assert_eq!(opened.len(), size);
        }
        let total = start.elapsed();
        let bytes = (count * size) as f64;
        let mbs = |d: Duration| bytes / d.as_secs_f64() / 1e6;
        println!(
            "{size:>6} B: seal+open {:>7.1} MB/s ({:>8.0} datagrams/s); seal alone {:>7.1} MB/s, open alone {:>7.1} MB/s",
            mbs(total),
            count as f64 / total.as_secs_f64(),
            mbs(seal_time),
            mbs(total.saturating_sub(seal_time)),
        );
    }
}
