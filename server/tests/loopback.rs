//! Storage servers on loopback UDP in one process: commits, a planned swap under load with no
//! failed request, and (with RocksDB) a wiped replica rebuilt from a checkpoint received into
//! a side directory.

use bytes::Bytes;
use gcs::net::{ClusterConfig, Security};
use replica::{CommitMode, ReplicaConfig, Role};
use server::client::LocalClient;
use server::{ServerOptions, StorageServer, StoreSource};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use storage::{Oid, Record, TxnMeta};

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect()
}

fn cluster(n: usize) -> ClusterConfig {
    let mut c = ClusterConfig::from_addrs(&free_addrs(n));
    c.protocol.token_timeout_ms = Some(200);
    c.protocol.consensus_timeout_ms = Some(300);
    c.protocol.join_timeout_ms = Some(20);
    c
}

fn replica_config(n: u32) -> ReplicaConfig {
    ReplicaConfig::uniform(n, CommitMode::Sync)
}

fn opts(c: &ClusterConfig, cfg: &ReplicaConfig, id: u32, after_disk_loss: bool) -> ServerOptions {
    ServerOptions {
        cluster: c.clone(),
        id,
        replica: cfg.clone(),
        security: Security::Plaintext,
        after_disk_loss,
    }
}

async fn start<S: storage::Storage + 'static>(
    o: ServerOptions,
    source: StoreSource<S>,
) -> Arc<StorageServer> {
    let (s, mut ev) = StorageServer::start(o, source, 1 << 16)
        .await
        .expect("start");
    tokio::spawn(async move { while ev.recv().await.is_some() {} });
    Arc::new(s)
}

/// A server's RocksDB store in `dir`.
#[cfg(feature = "rocksdb")]
fn rocks_source(dir: &std::path::Path) -> StoreSource<storage::RocksStorage> {
    StoreSource::DataDir {
        data: dir.to_path_buf(),
        open: Box::new(|p: &std::path::Path| {
            storage::RocksStorage::open(p, storage::RocksOptions::default())
        }),
    }
}

/// Starts one server per directory on RocksDB and waits for a primary in a full view.
#[cfg(feature = "rocksdb")]
async fn start_rocks_cluster(
    c: &ClusterConfig,
    cfg: &ReplicaConfig,
    dirs: &[tempfile::TempDir],
) -> Vec<Arc<StorageServer>> {
    let mut servers = Vec::new();
    for (id, d) in dirs.iter().enumerate() {
        servers.push(start(opts(c, cfg, id as u32, false), rocks_source(d.path())).await);
    }
    wait_all(&servers, "a primary", |s| {
        s.primary.is_some() && s.view.len() == dirs.len()
    })
    .await;
    servers
}

/// Waits (bounded) until `f` holds for the status of every server in `servers`.
async fn wait_all(
    servers: &[Arc<StorageServer>],
    what: &str,
    f: impl Fn(&server::ServerStatus) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut ok = true;
        for s in servers {
            if !f(&s.status().await.expect("running")) {
                ok = false;
            }
        }
        if ok {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let mut st = Vec::new();
            for s in servers {
                st.push(s.status().await.expect("running"));
            }
            panic!("timed out waiting for {what}: {st:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn blind(oid: u64, value: &str) -> Vec<Record> {
    vec![Record {
        oid: Oid::from_u64(oid),
        data: Some(Bytes::from(value.to_string())),
        expected_serial: None,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_replicate_and_a_swap_under_load_fails_nothing() {
    let c = cluster(3);
    let cfg = replica_config(3);
    let mut servers = Vec::new();
    for id in 0..3 {
        servers.push(
            start(
                opts(&c, &cfg, id, false),
                StoreSource::Open(storage::MemStorage::default()),
            )
            .await,
        );
    }
    wait_all(&servers, "a primary", |s| {
        s.primary.is_some() && s.view.len() == 3
    })
    .await;
    // Load: 4 clients writing until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..4u64 {
        let (servers, stop) = (servers.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut cl = LocalClient::new(servers, 100 + k);
            let mut n = 0u64;
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                if let Err(e) = cl
                    .commit(
                        TxnMeta::default(),
                        blind(k << 20 | n, "v"),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    failed.push(e.to_string());
                }
            }
            (n, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = servers[0].status().await.unwrap().primary.unwrap();
    let to = (before.0 + 1) % 3;
    servers[2].swap(to).await.unwrap().expect("swap accepted");
    wait_all(&servers, "the swap", |s| s.primary.map(|p| p.0) == Some(to)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        let (n, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        total += n;
    }
    assert!(total > 100, "{total} commits");
    let st = servers[to as usize].status().await.unwrap();
    assert_eq!(st.staleness.role, Role::Primary);
    assert!(
        st.primary.unwrap().1 > before.1,
        "the new primary has a newer epoch"
    );
    let last = st.staleness.last_tid;
    wait_all(&servers, "replicas caught up", |s| {
        s.staleness.last_tid == last
    })
    .await;
    for s in &servers {
        s.kill();
    }
}

#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_is_rebuilt_from_a_checkpoint() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let c = cluster(3);
    let mut cfg = replica_config(3);
    cfg.recovery.checkpoint_after = 10;
    let mut servers = start_rocks_cluster(&c, &cfg, &dirs).await;
    let mut cl = LocalClient::new(servers.clone(), 7);
    for n in 0..200u64 {
        cl.commit(
            TxnMeta::default(),
            blind(n, &format!("v{n}")),
            Duration::from_secs(10),
        )
        .await
        .expect("commit");
    }
    // s2 dies and loses its disk; the others write on.
    let victim = if servers[2].status().await.unwrap().staleness.role == Role::Primary {
        1
    } else {
        2
    };
    servers[victim].kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::remove_dir_all(dirs[victim].path()).unwrap();
    std::fs::create_dir_all(dirs[victim].path()).unwrap();
    for n in 200..260u64 {
        cl.commit(
            TxnMeta::default(),
            blind(n, &format!("v{n}")),
            Duration::from_secs(10),
        )
        .await
        .expect("commit while one server is down");
    }
    // It comes back empty, marked as having lost its disk: it gets a checkpoint.
    servers[victim] = start(
        opts(&c, &cfg, victim as u32, true),
        rocks_source(dirs[victim].path()),
    )
    .await;
    let live: Vec<Arc<StorageServer>> = servers.clone();
    let primary_last = {
        let mut last = storage::Tid::ZERO;
        for s in &live {
            let st = s.status().await.unwrap();
            if st.staleness.role == Role::Primary {
                last = st.staleness.last_tid;
            }
        }
        last
    };
    wait_all(&live, "the wiped replica caught up", |s| {
        s.staleness.last_tid >= primary_last && s.view.len() == 3
    })
    .await;
    wait_all(
        &servers[victim..victim + 1],
        "the wiped replica backing up",
        |s| s.staleness.role == Role::Backup,
    )
    .await;
    let st = servers[victim].status().await.unwrap();
    assert_eq!(st.stats.checkpoints, 1, "{st:#?}");
    assert_eq!(st.staleness.role, Role::Backup);
    let current = std::fs::read_to_string(dirs[victim].path().join("CURRENT")).unwrap();
    assert_eq!(
        current.trim(),
        "store-1",
        "the checkpoint became the live store"
    );
    assert!(
        dirs[victim].path().join("replaced-0").exists(),
        "the old store kept aside"
    );
    // The files went point to point; once they were received whole, the donor stopped
    // serving and removed its copy, and the recipient's side directory became the store.
    let leftovers = || {
        dirs.iter()
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap())
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("outgoing-") || n.starts_with("incoming-"))
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leftovers().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "transfer directories left: {:?}",
            leftovers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rev, _) = servers[victim]
        .load(Oid::from_u64(7))
        .await
        .unwrap()
        .expect("readable");
    assert_eq!(rev.unwrap().data.unwrap(), Bytes::from("v7"));
    // Writes go on with the rebuilt replica counted.
    cl.commit(
        TxnMeta::default(),
        blind(999, "after"),
        Duration::from_secs(10),
    )
    .await
    .expect("commit after the rebuild");
    for s in &servers {
        s.kill();
    }
}

/// Two servers whose configurations each hold the other at a stale address (host names that
/// now resolve elsewhere): neither reaches the other, so they never share a view, until each
/// is given the new address (`StorageServer::readdress`, which `standby-server` calls after
/// resolving the file's host names again); then they form one ring and elect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_at_new_addresses_are_followed_after_readdress() {
    let right = cluster(2);
    let wrong = free_addrs(2);
    let mut stale0 = right.clone();
    stale0.daemons[1].addr = wrong[1];
    let mut stale1 = right.clone();
    stale1.daemons[0].addr = wrong[0];
    let cfg = replica_config(2);
    let s0 = start(
        opts(&stale0, &cfg, 0, false),
        StoreSource::Open(storage::MemStorage::new(storage::MemOptions::default())),
    )
    .await;
    let s1 = start(
        opts(&stale1, &cfg, 1, false),
        StoreSource::Open(storage::MemStorage::new(storage::MemOptions::default())),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in [&s0, &s1] {
        let st = s.status().await.unwrap();
        assert_eq!(
            st.view.len(),
            1,
            "a view with a peer at a stale address: {st:?}"
        );
    }
    s0.readdress(vec![(1, right.daemons[1].addr)])
        .await
        .unwrap();
    s1.readdress(vec![(0, right.daemons[0].addr)])
        .await
        .unwrap();
    let both = [s0.clone(), s1.clone()];
    wait_all(&both, "one view of both, with a primary", |st| {
        st.view.len() == 2 && st.primary.is_some()
    })
    .await;
}

/// A server whose configuration holds a peer at a stale address, while the peer knows where
/// it is: the peer's datagrams reach it from an address its book lacks, and its driver learns
/// that address (the sender is not removed), so the two form one ring without a readdress.
/// (The same rule lets a server that missed a replica's addition rejoin: the simulator's
/// `a_server_that_missed_a_replica_add_rejoins`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_at_a_new_address_is_learned_from_its_traffic() {
    let right = cluster(2);
    let mut stale = right.clone();
    stale.daemons[1].addr = free_addrs(1)[0];
    let cfg = replica_config(2);
    let s0 = start(
        opts(&stale, &cfg, 0, false),
        StoreSource::Open(storage::MemStorage::new(storage::MemOptions::default())),
    )
    .await;
    let s1 = start(
        opts(&right, &cfg, 1, false),
        StoreSource::Open(storage::MemStorage::new(storage::MemOptions::default())),
    )
    .await;
    let both = [s0.clone(), s1.clone()];
    wait_all(&both, "one view of both, with a primary", |st| {
        st.view.len() == 2 && st.primary.is_some()
    })
    .await;
}

/// The store's read handle: served while the replica serves reads, it sees every applied
/// commit on every server, and a stopped server takes it back (its store closes, so the same
/// directory opens again in this process).
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_follow_the_store_and_end_with_the_server() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let c = cluster(3);
    let cfg = replica_config(3);
    let mut servers = start_rocks_cluster(&c, &cfg, &dirs).await;
    let big = "b".repeat(2000);
    let mut cl = LocalClient::new(servers.clone(), 9);
    let tid = cl
        .commit(
            TxnMeta::default(),
            vec![blind(1, "small").remove(0), blind(2, &big).remove(0)],
            Duration::from_secs(10),
        )
        .await
        .expect("commit")
        .tid;
    wait_all(&servers, "the commit applied", |s| {
        s.staleness.last_tid >= tid
    })
    .await;
    for s in &servers {
        let r = s.direct_reads().expect("a RocksDB store has a read handle");
        assert!(r.last_transaction().unwrap() >= tid);
        let load = |o: u64| r.load(&Oid::from_u64(o)).unwrap().unwrap().data.unwrap();
        assert_eq!(load(1), Bytes::from_static(b"small"));
        assert_eq!(load(2), Bytes::from(big.clone()));
    }
    // A killed server lets go of its store: no handle, and the directory opens again.
    let victim = servers[2].clone();
    victim.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while victim.direct_reads().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handle still served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers[2] = start(opts(&c, &cfg, 2, false), rocks_source(dirs[2].path())).await;
    wait_all(&servers, "the restarted server back", |s| {
        s.view.len() == 3 && s.staleness.last_tid >= tid
    })
    .await;
    let r = servers[2].direct_reads().expect("handle after restart");
    let load = |o: u64| r.load(&Oid::from_u64(o)).unwrap().unwrap().data.unwrap();
    assert_eq!(load(1), Bytes::from_static(b"small"));
    assert_eq!(load(2), Bytes::from(big));
    for s in servers {
        s.kill();
    }
}

/// A 16 MiB value through the whole path: one ring message of that size, applied by every
/// store, and fetched by a server that was down when it was committed.
#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_value_commits_replicates_and_is_caught_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let c = cluster(3);
    let cfg = replica_config(3);
    let mut servers = start_rocks_cluster(&c, &cfg, &dirs).await;
    servers[2].kill();
    wait_all(&servers[..2], "a view without s2", |s| s.view.len() == 2).await;
    let big = Bytes::from(
        (0..16u32 << 20)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut cl = LocalClient::new(servers[..2].to_vec(), 11);
    let tid = cl
        .commit(
            TxnMeta::default(),
            vec![Record {
                oid: Oid::from_u64(1),
                data: Some(big.clone()),
                expected_serial: None,
            }],
            Duration::from_secs(20),
        )
        .await
        .expect("a 16 MiB value commits")
        .tid;
    servers[2] = start(opts(&c, &cfg, 2, false), rocks_source(dirs[2].path())).await;
    wait_all(&servers, "s2 back and caught up", |s| {
        s.view.len() == 3 && s.staleness.last_tid >= tid
    })
    .await;
    for s in &servers {
        let r = s.direct_reads().expect("a RocksDB store has a read handle");
        let rev = r.load(&Oid::from_u64(1)).unwrap().expect("the object");
        assert_eq!(rev.tid, tid);
        assert!(rev.data.unwrap() == big, "the value came back changed");
    }
    for s in servers {
        s.kill();
    }
}
