//! Planned swaps and a primary kill on loopback, under load: prints the write pause of each
//! swap (the longest gap between two acknowledged commits around it), the unavailability after
//! the kill, and the requests that failed for the application.
//!
//! `cargo run --release -p server --example failover_bench -- [--clients 16] [--swaps 5]
//!  [--port 7700] [--rocksdb DIR]` (`--rocksdb` needs `--features rocksdb`).
//!
//! Three servers in this process, each with its own gcs daemon on 127.0.0.1, sync commits,
//! blind writes of 100 bytes by in-process clients that follow redirects and retry with their
//! idempotency key.

#![allow(clippy::print_stdout)]

use bytes::Bytes;
use gcs::net::{ClusterConfig, Security};
use replica::{CommitMode, ReplicaConfig};
use server::client::LocalClient;
use server::{ServerOptions, StorageServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{Oid, Record, TxnMeta};

struct Args {
    clients: usize,
    swaps: usize,
    port: u16,
    rocksdb: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        clients: 16,
        swaps: 5,
        port: 7700,
        rocksdb: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--clients" => a.clients = val.parse().expect("--clients N"),
            "--swaps" => a.swaps = val.parse().expect("--swaps N"),
            "--port" => a.port = val.parse().expect("--port N"),
            "--rocksdb" => a.rocksdb = Some(val.into()),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// Completion times of acknowledged commits (since the start), and failures.
#[derive(Default)]
struct Log {
    acks: Vec<Duration>,
    failed: Vec<String>,
}

async fn start(
    cluster: &ClusterConfig,
    cfg: &ReplicaConfig,
    id: u32,
    rocks: &Option<std::path::PathBuf>,
) -> StorageServer {
    let opts = ServerOptions {
        cluster: cluster.clone(),
        id,
        replica: cfg.clone(),
        security: Security::Plaintext,
        after_disk_loss: false,
    };
    match rocks {
        #[cfg(feature = "rocksdb")]
        Some(dir) => {
            let source = server::StoreSource::DataDir {
                data: dir.join(format!("s{id}")),
                open: Box::new(|p: &std::path::Path| {
                    storage::RocksStorage::open(p, storage::RocksOptions::default())
                }),
            };
            let (s, mut ev) = StorageServer::start(opts, source, 1 << 16)
                .await
                .expect("start");
            tokio::spawn(async move { while ev.recv().await.is_some() {} });
            s
        }
        #[cfg(not(feature = "rocksdb"))]
        Some(_) => panic!("--rocksdb needs --features rocksdb"),
        None => {
            let source = server::StoreSource::Open(storage::MemStorage::default());
            let (s, mut ev) = StorageServer::start(opts, source, 1 << 16)
                .await
                .expect("start");
            tokio::spawn(async move { while ev.recv().await.is_some() {} });
            s
        }
    }
}

fn pause_around(log: &Log, at: Duration) -> Duration {
    let lo = at.saturating_sub(Duration::from_millis(50));
    let hi = at + Duration::from_millis(1500);
    let mut acks: Vec<Duration> = log
        .acks
        .iter()
        .copied()
        .filter(|t| *t >= lo && *t <= hi)
        .collect();
    acks.sort();
    acks.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(hi - lo)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|i| format!("127.0.0.1:{}", a.port + i).parse().expect("addr"))
        .collect();
    let mut cluster = ClusterConfig::from_addrs(&addrs);
    // Loopback: detect a dead primary quickly.
    cluster.protocol.token_timeout_ms = Some(100);
    cluster.protocol.consensus_timeout_ms = Some(150);
    cluster.protocol.join_timeout_ms = Some(20);
    cluster.protocol.token_retransmit_timeout_ms = Some(30);
    let cfg = ReplicaConfig::uniform(3, CommitMode::Sync);
    let mut servers = Vec::new();
    for id in 0..3 {
        servers.push(Arc::new(start(&cluster, &cfg, id, &a.rocksdb).await));
    }
    // Wait for a primary.
    loop {
        let st = servers[0].status().await.expect("running");
        if st.primary.is_some() && st.view.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    #[allow(clippy::disallowed_methods)] // benchmark timing
    let t0 = std::time::Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let servers = servers.clone();
        let log = log.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = LocalClient::new(servers, 1000 + c as u64);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let rec = Record {
                    oid: Oid::from_u64((c as u64) << 32 | (n % 1000)),
                    data: Some(Bytes::from(vec![b'x'; 100])),
                    expected_serial: None,
                };
                let r = client
                    .commit(TxnMeta::default(), vec![rec], Duration::from_secs(10))
                    .await;
                let mut l = log.lock().expect("log");
                match r {
                    Ok(_) => l.acks.push(t0.elapsed()),
                    Err(e) => l.failed.push(e.to_string()),
                }
            }
            client.retries
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut swap_at = Vec::new();
    for k in 0..a.swaps {
        let to = ((k + 1) % 3) as u32;
        let before = servers[0].status().await.expect("running").primary;
        let at = t0.elapsed();
        let r = servers[(k + 2) % 3].swap(to).await.expect("running");
        swap_at.push((at, before.map(|p| p.0), to, r));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Kill the primary (no goodbye).
    let primary = servers[0]
        .status()
        .await
        .expect("running")
        .primary
        .expect("one")
        .0;
    let kill_at = t0.elapsed();
    servers[primary as usize].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap_or(0);
    }
    let l = log.lock().expect("log");
    println!(
        "{} clients, {} commits acknowledged in {:.1} s, {} retries or redirects, {} failed",
        a.clients,
        l.acks.len(),
        t0.elapsed().as_secs_f64(),
        retries,
        l.failed.len()
    );
    for (at, from, to, r) in &swap_at {
        println!(
            "swap s{:?} -> s{to} at {:.3} s ({r:?}): write pause {:.2} ms",
            from.unwrap_or(u32::MAX),
            at.as_secs_f64(),
            pause_around(&l, *at).as_secs_f64() * 1e3
        );
    }
    println!(
        "kill of primary s{primary} at {:.3} s: writes flowing again after {:.1} ms",
        kill_at.as_secs_f64(),
        pause_around(&l, kill_at).as_secs_f64() * 1e3
    );
    for f in l.failed.iter().take(5) {
        println!("failed: {f}");
    }
}
