//! Three `standby-server` processes with RocksDB on loopback, under a write load from the TCP
//! client library: kill -9 of the primary, SIGSTOP of the primary, a backup that loses its data
//! directory and is rebuilt from a checkpoint, and a switchover. Checks that
//! no request fails for the application, that every acknowledged commit is still there at the
//! end, that each epoch's commits were acknowledged by one server only, and that the servers
//! converge. Every process is stopped by PID.
#![cfg(feature = "cli")]

use bytes::Bytes;
use server::netclient::{Client, ReadFrom};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::Oid;

const TOKEN: &str = "processes-test-token";

struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// Servers started with another configuration file than `conf`.
    conf_of: BTreeMap<u32, PathBuf>,
    children: Vec<Option<Child>>,
    clients: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ports handed out so far in this test binary. The kernel may give the same ephemeral port to
/// two `bind(0)` calls once the first socket is closed, and two servers configured with one port
/// fail to start; remembering every port handed out rules that out between all tests here.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn fresh_port(bind: impl Fn() -> u16) -> u16 {
    let mut seen = HANDED_OUT.lock().unwrap();
    loop {
        let port = bind();
        if seen.insert(port) {
            return port;
        }
    }
}

fn free_tcp() -> u16 {
    fresh_port(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

fn free_udp() -> u16 {
    fresh_port(|| {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

impl Cluster {
    fn new(n: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.key"), gcs::crypto::keygen([7; 32])).unwrap();
        std::fs::write(dir.path().join("client.token"), TOKEN).unwrap();
        let mut conf = String::from(
            "key_file = \"cluster.key\"\nclient_token_file = \"client.token\"\nmode = \"sync\"\ncheckpoint_after = 100\n",
        );
        let mut clients = Vec::new();
        for i in 0..n {
            let c = format!("127.0.0.1:{}", free_tcp());
            conf.push_str(&format!(
                "[[server]]\nid = {i}\nname = \"s{i}\"\ngcs = \"127.0.0.1:{}\"\nclient = \"{c}\"\nadmin = \"127.0.0.1:{}\"\n",
                free_udp(),
                free_tcp()
            ));
            clients.push(c);
        }
        conf.push_str("[protocol]\ntoken_timeout_ms = 200\nconsensus_timeout_ms = 300\njoin_timeout_ms = 20\n");
        let path = dir.path().join("standby.toml");
        std::fs::write(&path, conf).unwrap();
        let mut c = Cluster {
            dir,
            conf: path,
            conf_of: BTreeMap::new(),
            children: (0..n).map(|_| None).collect(),
            clients,
        };
        for i in 0..n {
            c.start(i);
        }
        c
    }

    fn data(&self, i: u32) -> PathBuf {
        self.dir.path().join(format!("s{i}"))
    }

    fn start(&mut self, i: u32) {
        self.start_with(i, &[]);
    }

    fn start_with(&mut self, i: u32, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("s{i}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_standby-server"))
            .args(["--config"])
            .arg(self.conf_of.get(&i).unwrap_or(&self.conf))
            .args(["--id", &i.to_string(), "--data"])
            .arg(self.data(i))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("standby-server starts");
        self.children[i as usize] = Some(child);
    }

    fn pid(&self, i: u32) -> i32 {
        self.children[i as usize].as_ref().expect("running").id() as i32
    }

    fn kill9(&mut self, i: u32) {
        if let Some(mut c) = self.children[i as usize].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn signal(&self, i: u32, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid(i).to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig}");
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..self.children.len() {
            let p: &Path = &self.dir.path().join(format!("s{i}.log"));
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s.push_str(&format!(
                "--- s{i}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }
}

async fn client(c: &Cluster, id: u64) -> Client {
    for _ in 0..200 {
        if let Ok(cl) = Client::connect(&c.clients, Bytes::from_static(TOKEN.as_bytes()), id).await
        {
            if cl.primary().is_some() {
                return cl;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no primary within 10 s:\n{}", c.logs());
}

#[derive(Default)]
struct Seen {
    acked: BTreeMap<String, u64>,
    by_epoch: BTreeMap<u64, BTreeSet<u32>>,
    failed: Vec<String>,
    acks: Vec<tokio::time::Instant>,
}

async fn primary_of(c: &Cluster) -> u32 {
    let mut cl = client(c, 999_999).await;
    cl.refresh().await.unwrap().primary.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stop_wipe_and_switchover_under_load_lose_nothing() {
    let mut c = Cluster::new(3);
    let _ = client(&c, 1).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..4u64 {
        let mut cl = client(&c, 100 + k).await;
        let (seen, stop) = (seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("k{k}-{}", n % 50);
                let mut t = cl.begin();
                t.store(
                    Oid::new(Bytes::from(key.clone().into_bytes())).unwrap(),
                    Some(Bytes::from(n.to_be_bytes().to_vec())),
                    None,
                );
                let r = cl.commit(t, Duration::from_secs(20)).await;
                let mut s = seen.lock().unwrap();
                match r {
                    Ok(done) => {
                        s.acked.insert(key, n);
                        s.by_epoch
                            .entry(done.epoch.0)
                            .or_default()
                            .insert(cl.last_answered_by.unwrap());
                        s.acks.push(tokio::time::Instant::now());
                    }
                    Err(e) => s.failed.push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. kill -9 of the primary; it comes back 2 s later.
    let p = primary_of(&c).await;
    let killed_at = tokio::time::Instant::now();
    c.kill9(p);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = seen
        .lock()
        .unwrap()
        .acks
        .iter()
        .find(|t| **t > killed_at + Duration::from_millis(1))
        .copied();
    let resumed = resumed.unwrap_or_else(|| panic!("no commit after the kill:\n{}", c.logs()));
    eprintln!(
        "kill -9: writes flowing again after {:?}",
        resumed - killed_at
    );
    c.start(p);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. SIGSTOP of the primary for 1.5 s.
    let p = primary_of(&c).await;
    c.signal(p, "-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.signal(p, "-CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. A backup loses its disk: it comes back empty and is rebuilt from a checkpoint.
    let p = primary_of(&c).await;
    let wiped = (p + 2) % 3;
    c.kill9(wiped);
    std::fs::remove_dir_all(c.data(wiped)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start_with(wiped, &["--after-disk-loss"]);
    let mut rebuilt = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let current = std::fs::read_to_string(c.data(wiped).join("CURRENT")).unwrap_or_default();
        if current.trim() != "store-0" && !current.is_empty() {
            rebuilt = true;
            break;
        }
    }
    assert!(
        rebuilt,
        "s{wiped} was not rebuilt from a checkpoint:\n{}",
        c.logs()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 4. A switchover to another server, under load.
    let p = primary_of(&c).await;
    let to = (p + 1) % 3;
    let mut admin = client(&c, 7).await;
    admin.switchover(to).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(primary_of(&c).await, to, "{}", c.logs());

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let s = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        s.failed.is_empty(),
        "failed requests: {:?}\n{}",
        s.failed,
        c.logs()
    );
    assert!(s.acked.len() > 50, "the load ran: {} keys", s.acked.len());
    for (epoch, servers) in &s.by_epoch {
        assert_eq!(
            servers.len(),
            1,
            "epoch {epoch} acknowledged by {servers:?}"
        );
    }
    // Every acknowledged write is there (or a later one of the same key).
    let mut cl = client(&c, 8).await;
    for (key, n) in &s.acked {
        let (rev, _) = cl
            .load(
                Oid::new(Bytes::from(key.clone().into_bytes())).unwrap(),
                ReadFrom::Primary,
            )
            .await
            .unwrap();
        let stored = rev
            .and_then(|r| r.data)
            .map(|d| u64::from_be_bytes(d.as_ref().try_into().unwrap()))
            .unwrap_or(0);
        assert!(stored >= *n, "{key}: acknowledged {n}, stored {stored}");
    }
    // The servers converge.
    let mut last = Vec::new();
    for _ in 0..100 {
        last = cl
            .status_all()
            .await
            .into_iter()
            .map(|r| r.map(|s| s.last_tid))
            .collect::<Vec<_>>();
        if last.iter().all(|l| l.is_ok() && *l == last[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.iter().all(|l| l.is_ok() && *l == last[0]),
        "{last:?}\n{}",
        c.logs()
    );
}

async fn put(cl: &mut Client, key: &str) -> storage::Tid {
    let mut t = cl.begin();
    t.store(
        Oid::new(Bytes::from(key.to_string().into_bytes())).unwrap(),
        Some(Bytes::from_static(b"v")),
        None,
    );
    cl.commit(t, Duration::from_secs(10)).await.unwrap().tid
}

/// The status the server at client address `addr` gives of itself, asked directly.
async fn status_at(addr: &str) -> Option<server::proto::StatusInfo> {
    use server::proto::{read_frame, Request, Response};
    use tokio::io::AsyncWriteExt;
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let hello = Request::Hello {
            token: Bytes::from_static(TOKEN.as_bytes()),
        };
        s.write_all(&hello.encode(1)).await.ok()?;
        read_frame(&mut s).await.ok()??;
        s.write_all(&Request::Status.encode(2)).await.ok()?;
        let body = read_frame(&mut s).await.ok()??;
        match Response::decode(&body).ok()?.1 {
            Response::Status(st) => Some(st),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

/// A read replica added to a running cluster: `standby add-replica` through the client
/// library, the new server started with a file listing the cluster and itself (remote, no
/// vote); it joins, copies the store and follows the commits, and subscribed clients are told
/// of the new topology without a restart. Then it is removed: the others stop talking to it
/// and it falls back to serving read-only what it had. Voters cannot be removed, ids are not
/// reused, and clients cannot write the membership object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_a_read_replica_while_running() {
    use server::membership::{AddedServer, MembershipChange};
    let mut c = Cluster::new(3);
    let mut cl = client(&c, 7).await;
    cl.enable_cache(100);
    for i in 0..150 {
        put(&mut cl, &format!("before-{i}")).await;
    }

    // Add server 3.
    let (gcs, client3, admin) = (
        format!("127.0.0.1:{}", free_udp()),
        format!("127.0.0.1:{}", free_tcp()),
        format!("127.0.0.1:{}", free_tcp()),
    );
    let added = AddedServer {
        id: 3,
        name: "r3".into(),
        gcs: gcs.parse().unwrap(),
        client: client3.clone(),
        admin: admin.clone(),
    };
    cl.change_membership(
        MembershipChange::Add(added.clone()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let again = cl
        .change_membership(MembershipChange::Add(added), Duration::from_secs(10))
        .await;
    assert!(again.is_err(), "an id is used once: {again:?}");
    let voter = cl
        .change_membership(MembershipChange::Remove(1), Duration::from_secs(10))
        .await;
    assert!(
        format!("{voter:?}").contains("votes in elections"),
        "{voter:?}"
    );
    let mut t = cl.begin();
    t.store(
        replica::membership_oid(),
        Some(Bytes::from_static(b"{}")),
        None,
    );
    let forged = cl.commit(t, Duration::from_secs(5)).await;
    assert!(format!("{forged:?}").contains("reserved oid"), "{forged:?}");

    // The subscribed client hears of the new topology.
    let mut pushed = false;
    for _ in 0..100 {
        let _ = cl
            .load(
                Oid::new(Bytes::from_static(b"before-1")).unwrap(),
                ReadFrom::Primary,
            )
            .await;
        if cl.topology().contains_key(&3) {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pushed, "topology not pushed: {:?}", cl.topology());

    // Start it with the cluster's file plus its own entry.
    let mut conf = std::fs::read_to_string(&c.conf).unwrap();
    let at = conf.find("[protocol]").unwrap();
    conf.insert_str(
        at,
        &format!(
            "[[server]]\nid = 3\nname = \"r3\"\ngcs = \"{gcs}\"\nclient = \"{client3}\"\nadmin = \"{admin}\"\ngroup = \"added\"\nkind = \"remote\"\nweight = 0\n"
        ),
    );
    let conf3 = c.dir.path().join("standby-r3.toml");
    std::fs::write(&conf3, conf).unwrap();
    c.children.push(None);
    c.conf_of.insert(3, conf3);
    c.start(3);
    let last = put(&mut cl, "after-add").await;
    let mut caught_up = None;
    for _ in 0..300 {
        if let Some(st) = status_at(&client3).await {
            if st.last_tid >= last && st.role == replica::Role::Backup {
                caught_up = Some(st);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = caught_up.unwrap_or_else(|| panic!("r3 did not catch up:\n{}", c.logs()));
    assert!(st.primary.is_some_and(|p| p.0 != 3));

    // Remove it: the cluster carries on without it; it stays read-only at what it had.
    cl.change_membership(MembershipChange::Remove(3), Duration::from_secs(10))
        .await
        .unwrap();
    let mut alone = false;
    for _ in 0..200 {
        if let Some(st) = status_at(&client3).await {
            if st.role == replica::Role::ReadOnly {
                alone = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alone, "r3 still in the ring:\n{}", c.logs());
    let after = put(&mut cl, "after-remove").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st3 = status_at(&client3).await.expect("r3 still answers reads");
    assert!(st3.last_tid < after, "a removed replica got {after:?}");
    assert!(
        !cl.topology().contains_key(&3),
        "the topology still lists r3: {:?}",
        cl.topology()
    );
    let primary = primary_of(&c).await;
    assert_ne!(primary, 3);
}
