//! What the multi-process tests share: a cluster of `standby-server` processes with RocksDB on
//! loopback (every process stopped by PID when the cluster is dropped), a write load from the
//! TCP client library that records every acknowledgement, and the end-of-test checks (every
//! acknowledged write is there, the servers converge).
#![allow(dead_code)] // each test binary uses its own part

use bytes::Bytes;
use server::netclient::{Client, ReadFrom};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::Oid;

pub(crate) const TOKEN: &str = "processes-test-token";

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) conf: PathBuf,
    /// Servers started with another configuration file than `conf`.
    pub(crate) conf_of: BTreeMap<u32, PathBuf>,
    /// Servers whose data directory is elsewhere than `<dir>/s<i>`.
    pub(crate) data_of: BTreeMap<u32, PathBuf>,
    pub(crate) children: Vec<Option<Child>>,
    pub(crate) clients: Vec<String>,
    pub(crate) admins: Vec<String>,
    /// Arguments every server is started with.
    pub(crate) args: Vec<String>,
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

pub(crate) fn free_tcp() -> u16 {
    fresh_port(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

pub(crate) fn free_udp() -> u16 {
    fresh_port(|| {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

impl Cluster {
    /// `n` servers with the test timings, all started.
    pub(crate) fn new(n: u32) -> Cluster {
        Cluster::with(n, BTreeMap::new(), true)
    }

    /// `n` servers, with the data directories of `data_of`; started if `start`.
    pub(crate) fn with(n: u32, data_of: BTreeMap<u32, PathBuf>, start: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.key"), gcs::crypto::keygen([7; 32])).unwrap();
        std::fs::write(dir.path().join("client.token"), TOKEN).unwrap();
        let mut conf = String::from(
            "key_file = \"cluster.key\"\nclient_token_file = \"client.token\"\nclient_plaintext = true\nmode = \"sync\"\ncheckpoint_after = 100\n",
        );
        let mut clients = Vec::new();
        let mut admins = Vec::new();
        for i in 0..n {
            let c = format!("127.0.0.1:{}", free_tcp());
            let a = format!("127.0.0.1:{}", free_tcp());
            conf.push_str(&format!(
                "[[server]]\nid = {i}\nname = \"s{i}\"\ngcs = \"127.0.0.1:{}\"\nclient = \"{c}\"\nadmin = \"{a}\"\n",
                free_udp(),
            ));
            clients.push(c);
            admins.push(a);
        }
        conf.push_str("[protocol]\ntoken_timeout_ms = 200\nconsensus_timeout_ms = 300\njoin_timeout_ms = 20\n");
        let path = dir.path().join("standby.toml");
        std::fs::write(&path, conf).unwrap();
        let mut c = Cluster {
            dir,
            conf: path,
            conf_of: BTreeMap::new(),
            data_of,
            children: (0..n).map(|_| None).collect(),
            clients,
            admins,
            args: Vec::new(),
        };
        if start {
            for i in 0..n {
                c.start(i);
            }
        }
        c
    }

    pub(crate) fn data(&self, i: u32) -> PathBuf {
        self.data_of
            .get(&i)
            .cloned()
            .unwrap_or_else(|| self.dir.path().join(format!("s{i}")))
    }

    pub(crate) fn start(&mut self, i: u32) {
        self.start_with(i, &[]);
    }

    pub(crate) fn start_with(&mut self, i: u32, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_standby-server"))
            .args(["--config"])
            .arg(self.conf_of.get(&i).unwrap_or(&self.conf))
            .args(["--id", &i.to_string(), "--data"])
            .arg(self.data(i))
            .args(&self.args)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("standby-server starts");
        self.children[i as usize] = Some(child);
    }

    pub(crate) fn log_path(&self, i: u32) -> PathBuf {
        self.dir.path().join(format!("s{i}.log"))
    }

    pub(crate) fn pid(&self, i: u32) -> i32 {
        self.children[i as usize].as_ref().expect("running").id() as i32
    }

    pub(crate) fn kill9(&mut self, i: u32) {
        if let Some(mut c) = self.children[i as usize].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Waits (at most `limit`) for server `i` to exit by itself; its status, or `None` if it
    /// still runs.
    pub(crate) async fn wait_exit(&mut self, i: u32, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(c) = self.children[i as usize].as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.children[i as usize] = None;
                    return Some(st);
                }
            } else {
                return None;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn signal(&self, i: u32, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid(i).to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig}");
    }

    pub(crate) fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..self.children.len() {
            let p: &Path = &self.log_path(i as u32);
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s.push_str(&format!(
                "--- s{i}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }

    /// The status code and body of `GET <path>` on server `i`'s admin endpoint, with the
    /// cluster's (admin) client token.
    pub(crate) async fn admin_get(&self, i: u32, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ask = async {
            let mut s = tokio::net::TcpStream::connect(&self.admins[i as usize])
                .await
                .ok()?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf).to_string();
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            Some((code, body))
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .ok()
            .flatten()
    }
}

pub(crate) async fn client(c: &Cluster, id: u64) -> Client {
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

pub(crate) async fn primary_of(c: &Cluster) -> u32 {
    let mut cl = client(c, 999_999).await;
    cl.refresh().await.unwrap().primary.unwrap().0
}

pub(crate) async fn put(cl: &mut Client, key: &str) -> storage::Tid {
    let mut t = cl.begin();
    t.store(
        Oid::new(Bytes::from(key.to_string().into_bytes())).unwrap(),
        Some(Bytes::from_static(b"v")),
        None,
    );
    cl.commit(t, Duration::from_secs(10)).await.unwrap().tid
}

/// The status the server at client address `addr` gives of itself, asked directly.
pub(crate) async fn status_at(addr: &str) -> Option<server::proto::StatusInfo> {
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

/// Polls `cond` every `every` until it holds (true) or `limit` has passed (false).
pub(crate) async fn eventually<F, Fut>(limit: Duration, every: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// What a write load saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Key -> the newest value acknowledged (a counter; values are padded to the load's size).
    pub(crate) acked: BTreeMap<String, u64>,
    /// Epoch -> the servers that acknowledged commits in it.
    pub(crate) by_epoch: BTreeMap<u64, BTreeSet<u32>>,
    /// Errors the application saw.
    pub(crate) failed: Vec<String>,
    /// When each acknowledgement arrived.
    pub(crate) acks: Vec<tokio::time::Instant>,
}

/// Writers committing through the client library, each over its own 50 keys.
pub(crate) struct Load {
    pub(crate) seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `writers` clients writing values of `value_len` bytes (at least 8).
    pub(crate) async fn start(c: &Cluster, writers: u64, value_len: usize) -> Load {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for k in 0..writers {
            let mut cl = client(c, 100 + k).await;
            let (seen, stop) = (seen.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("k{k}-{}", n % 50);
                    let mut value = n.to_be_bytes().to_vec();
                    value.resize(value_len.max(8), 0x5a);
                    let mut t = cl.begin();
                    t.store(
                        Oid::new(Bytes::from(key.clone().into_bytes())).unwrap(),
                        Some(Bytes::from(value)),
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
        Load { seen, stop, tasks }
    }

    /// The first acknowledgement after `t`, if one came.
    pub(crate) fn first_ack_after(&self, t: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.seen
            .lock()
            .unwrap()
            .acks
            .iter()
            .find(|a| **a > t)
            .copied()
    }

    /// Stops the writers and returns what they saw.
    pub(crate) async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let s = std::mem::take(&mut *self.seen.lock().unwrap());
        s
    }
}

/// What every load must end with: no request failed for the application, the load ran,
/// each epoch's commits were acknowledged by one server, and every acknowledged write is there.
pub(crate) async fn check_load(c: &Cluster, s: &Seen) {
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
    check_acked(c, s).await;
}

/// Every acknowledged write is there (or a later one of the same key), read from the primary.
pub(crate) async fn check_acked(c: &Cluster, s: &Seen) {
    let mut cl = client(c, 8).await;
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
            .map(|d| u64::from_be_bytes(d[..8].try_into().unwrap()))
            .unwrap_or(0);
        assert!(stored >= *n, "{key}: acknowledged {n}, stored {stored}");
    }
}

/// Waits (at most 5 s) until every server reports the same last transaction.
pub(crate) async fn converge(c: &Cluster) {
    let mut cl = client(c, 9).await;
    let mut last = Vec::new();
    for _ in 0..100 {
        last = cl
            .status_all()
            .await
            .into_iter()
            .map(|r| r.map(|s| s.last_tid))
            .collect::<Vec<_>>();
        if last.iter().all(|l| l.is_ok() && *l == last[0]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the servers do not converge: {last:?}\n{}", c.logs());
}
