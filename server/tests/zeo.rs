//! The ZEO face of three in-process storage servers on loopback, spoken to by a minimal ZEO 5
//! client written here (framing and msgpack as a stock `ClientStorage` sends them): only the
//! primary listens on the writable address, commits go through vote and finish, other
//! clients get invalidations (a read-only client on a backup too), conflicts come back for
//! client-side resolution, and bad input closes only the connection that sent it.
//! ZODB's own storage tests run against real server processes in `tests/zodb/`.

use rmpv::Value;
use server::zeo::{ZeoFace, ZeoOptions};
use server::{ServerEvent, ServerOptions, StorageServer, StoreSource};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn free_tcp(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect()
}

struct Cluster {
    servers: Vec<Arc<StorageServer>>,
    faces: Vec<Arc<ZeoFace>>,
    writable: Vec<SocketAddr>,
    read_only: Vec<SocketAddr>,
}

async fn cluster() -> Cluster {
    let mut c = gcs::net::ClusterConfig::from_addrs(&tests::free_udp_addrs(3));
    c.protocol.token_timeout_ms = Some(200);
    c.protocol.consensus_timeout_ms = Some(300);
    c.protocol.join_timeout_ms = Some(20);
    let cfg = replica::ReplicaConfig::uniform(3, replica::CommitMode::Sync);
    let (writable, read_only) = (free_tcp(3), free_tcp(3));
    let mut servers = Vec::new();
    let mut faces = Vec::new();
    for id in 0..3u32 {
        let o = ServerOptions {
            cluster: c.clone(),
            id,
            replica: cfg.clone(),
            security: gcs::net::Security::Plaintext,
            after_disk_loss: false,
        };
        let (s, mut ev) = StorageServer::start(
            o,
            StoreSource::Open(storage::MemStorage::default()),
            1 << 16,
        )
        .await
        .expect("start");
        let s = Arc::new(s);
        let face = ZeoFace::new(
            s.clone(),
            ZeoOptions {
                writable: Some(writable[id as usize]),
                read_only: Some(read_only[id as usize]),
                ..ZeoOptions::default()
            },
            (id as u64 + 1) << 40,
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<ServerEvent>(1 << 16);
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                let _ = tx.send(e).await;
            }
        });
        faces.push(face.clone());
        tokio::spawn(face.run(rx));
        servers.push(s);
    }
    Cluster {
        servers,
        faces,
        writable,
        read_only,
    }
}

/// A minimal ZEO 5 msgpack client.
struct Zeo {
    s: TcpStream,
    next: i64,
    /// Server calls (invalidations) received while waiting for replies.
    pushed: Vec<Value>,
}

fn bin(b: &[u8]) -> Value {
    Value::Binary(b.to_vec())
}

impl Zeo {
    async fn connect(addr: SocketAddr) -> std::io::Result<Zeo> {
        let mut s = TcpStream::connect(addr).await?;
        let hs = read_frame(&mut s).await?;
        assert_eq!(hs, b"M5");
        write_raw(&mut s, b"M5").await?;
        Ok(Zeo {
            s,
            next: 1,
            pushed: Vec::new(),
        })
    }

    async fn send(&mut self, msgid: Value, is_async: bool, name: &str, args: Vec<Value>) {
        let v = Value::Array(vec![
            msgid,
            Value::Boolean(is_async),
            Value::from(name),
            Value::Array(args),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        write_raw(&mut self.s, &b).await.expect("write");
    }

    /// A synchronous call: `Ok(result)` or `Err((class, state))`.
    async fn call(&mut self, name: &str, args: Vec<Value>) -> Result<Value, (String, Value)> {
        let id = self.next;
        self.next += 1;
        self.send(Value::from(id), false, name, args).await;
        loop {
            let m = match self.read().await {
                Ok(m) => m,
                Err(e) => panic!("no reply to {name}: {e}; received {:?}", self.pushed),
            };
            if m[2].as_str() == Some(".reply") && m[0].as_i64() == Some(id) {
                if m[1].as_i64() == Some(0) {
                    return Ok(m[3].clone());
                }
                let e = m[3].as_array().unwrap();
                return Err((e[0].as_str().unwrap().to_string(), e[1].clone()));
            }
            self.pushed.push(m);
        }
    }

    async fn cast(&mut self, name: &str, args: Vec<Value>) {
        self.send(Value::from(0), true, name, args).await;
    }

    async fn read(&mut self) -> std::io::Result<Value> {
        let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut self.s))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        Ok(rmpv::decode::read_value(&mut &f[..]).expect("msgpack"))
    }

    /// Waits (bounded) for an invalidation of `tid`.
    async fn invalidation(&mut self, tid: &Value) -> Value {
        loop {
            if let Some(p) = self
                .pushed
                .iter()
                .position(|m| m[2].as_str() == Some("invalidateTransaction") && &m[3][0] == tid)
            {
                return self.pushed.remove(p);
            }
            let m = self.read().await.expect("invalidation");
            self.pushed.push(m);
        }
    }

    async fn commit(
        &mut self,
        txn: i64,
        stores: &[(u64, Value, &[u8])],
    ) -> Result<Value, (String, Value)> {
        self.cast(
            "tpc_begin",
            vec![
                Value::from(txn),
                bin(b""),
                bin(b"test"),
                Value::Map(vec![]),
                Value::Nil,
                Value::from(" "),
            ],
        )
        .await;
        for (oid, serial, data) in stores {
            self.cast(
                "storea",
                vec![
                    bin(&oid.to_be_bytes()),
                    serial.clone(),
                    bin(data),
                    Value::from(txn),
                ],
            )
            .await;
        }
        let v = self.call("vote", vec![Value::from(txn)]).await?;
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            self.call("tpc_abort", vec![Value::from(txn)]).await?;
            return Err(("conflicts".into(), v));
        }
        self.call("tpc_finish", vec![Value::from(txn)]).await
    }
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_u32().await? as usize;
    let mut b = vec![0; n];
    s.read_exact(&mut b).await?;
    Ok(b)
}

async fn write_raw(s: &mut TcpStream, b: &[u8]) -> std::io::Result<()> {
    s.write_u32(b.len() as u32).await?;
    s.write_all(b).await
}

/// The index of the server whose writable address accepts (bounded wait).
async fn primary(c: &Cluster) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, a) in c.writable.iter().enumerate() {
            if let Ok(mut z) = Zeo::connect(*a).await {
                if z.call("register", vec![Value::from("1"), Value::Boolean(false)])
                    .await
                    .is_ok()
                {
                    return i;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const Z64: [u8; 8] = [0; 8];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_client_calls_commit_invalidate_and_conflict() {
    let c = cluster().await;
    let p = primary(&c).await;
    // Only the primary listens on the writable address.
    for (i, a) in c.writable.iter().enumerate() {
        if i != p {
            assert!(TcpStream::connect(a).await.is_err(), "server {i} listens");
        }
    }
    let mut a = Zeo::connect(c.writable[p]).await.unwrap();
    let last = a
        .call("register", vec![Value::from("1"), Value::Boolean(false)])
        .await
        .unwrap();
    assert_eq!(last, bin(&Z64), "a fresh storage's last tid is z64");
    let info = a.call("get_info", vec![]).await.unwrap();
    let ifaces = format!("{info:?}");
    assert!(ifaces.contains("IStorageUndoable") && !ifaces.contains("Blob"));
    // The root does not exist yet.
    let e = a
        .call(
            "loadBefore",
            vec![bin(&Z64), bin(&[0, 0, 0, 0, 0, 0, 0, 1])],
        )
        .await
        .unwrap_err();
    assert_eq!(e.0, "ZODB.POSException.POSKeyError");

    // A second client, read-only on a backup, and a third, writable.
    let backup = (p + 1) % 3;
    let mut ro = Zeo::connect(c.read_only[backup]).await.unwrap();
    let e = ro
        .call("register", vec![Value::from("1"), Value::Boolean(false)])
        .await
        .unwrap_err();
    assert_eq!(e.0, "ZODB.POSException.ReadOnlyError");
    ro.call("register", vec![Value::from("1"), Value::Boolean(true)])
        .await
        .unwrap();
    let mut b = Zeo::connect(c.writable[p]).await.unwrap();
    b.call("register", vec![Value::from("1"), Value::Boolean(false)])
        .await
        .unwrap();

    // Oids are fresh and never 0 (the root's).
    let oids = a.call("new_oids", vec![]).await.unwrap();
    let oids = oids.as_array().unwrap();
    assert_eq!(oids.len(), 100);
    assert_ne!(oids[0], bin(&Z64));
    let more = b.call("new_oids", vec![]).await.unwrap();
    let more = more.as_array().unwrap();
    assert_eq!(more.len(), 100);
    assert!(more.iter().all(|o| !oids.contains(o)));

    let t1 = a.commit(1, &[(0, bin(&Z64), b"root v1")]).await.unwrap();
    assert_ne!(t1, bin(&Z64));
    // Other clients are told; the committer is not.
    b.invalidation(&t1).await;
    ro.invalidation(&t1).await;
    // A round trip after b was told: what the server pushed to a before it is read by now.
    a.call("ping", vec![]).await.unwrap();
    assert!(
        !a.pushed
            .iter()
            .any(|m| format!("{m:?}").contains("invalidateTransaction")),
        "the committer was sent its own invalidation: {:?}",
        a.pushed
    );
    let got = b
        .call(
            "loadBefore",
            vec![
                bin(&Z64),
                bin(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(got[0], bin(b"root v1"));
    assert_eq!(got[1], t1);
    assert_eq!(got[2], Value::Nil, "current");

    // b stores on a stale serial: the conflict comes back from vote for resolution.
    let t2 = a.commit(2, &[(0, t1.clone(), b"root v2")]).await.unwrap();
    // Verification: from t1, the changes since; from a tid this server never had (one of a
    // history cut back on another server), none: the client drops its cache.
    let inv = b.call("getInvalidations", vec![t1.clone()]).await.unwrap();
    assert_eq!(
        inv.as_array().map(|a| a[1].clone()),
        Some(Value::Array(vec![bin(&Z64)]))
    );
    let t1n = u64::from_be_bytes(t1.as_slice().unwrap().try_into().unwrap());
    let foreign = bin(&(t1n + 1).to_be_bytes());
    assert_ne!(
        foreign, t2,
        "tids of commits made apart in time are not consecutive"
    );
    let inv = b.call("getInvalidations", vec![foreign]).await.unwrap();
    assert_eq!(
        inv,
        Value::Nil,
        "a last tid from a lost history must empty the cache"
    );
    let e = b
        .commit(3, &[(0, t1.clone(), b"root v2b")])
        .await
        .unwrap_err();
    assert_eq!(e.0, "conflicts");
    // {oid, serials: (committed, sent), data: the state b sent, for the client's resolver}.
    let conflict = e.1[0].as_map().expect("a conflict is a map");
    let field = |k: &str| {
        conflict
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {conflict:?}"))
    };
    assert_eq!(field("oid"), bin(&Z64));
    assert_eq!(field("serials"), Value::Array(vec![t2.clone(), t1.clone()]));
    assert_eq!(field("data"), bin(b"root v2b"));
    // Resolved by the client: stores again on the committed serial.
    let t3 = b.commit(4, &[(0, t2.clone(), b"root v3")]).await.unwrap();
    assert!(t3.as_slice() > t2.as_slice() && t2.as_slice() > t1.as_slice());
    a.invalidation(&t3).await;
    // The old revision is still there, with its end.
    let old = a
        .call("loadBefore", vec![bin(&Z64), t2.clone()])
        .await
        .unwrap();
    assert_eq!(old[0], bin(b"root v1"));
    assert_eq!(old[2], t2);
    let serial = a
        .call("loadSerial", vec![bin(&Z64), t2.clone()])
        .await
        .unwrap();
    assert_eq!(serial, bin(b"root v2"));
    let hist = a
        .call("history", vec![bin(&Z64), Value::from(10)])
        .await
        .unwrap();
    assert_eq!(hist.as_array().unwrap().len(), 3);

    // Undo the last transaction: the root goes back to v2.
    let log = a
        .call("undoLog", vec![Value::from(0), Value::from(10)])
        .await
        .unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3, "{log:?}");
    let id = log[0]
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("id"))
        .unwrap()
        .1
        .clone();
    a.cast(
        "tpc_begin",
        vec![
            Value::from(5),
            bin(b""),
            bin(b"undo"),
            Value::Map(vec![]),
            Value::Nil,
            Value::from(" "),
        ],
    )
    .await;
    a.cast("undoa", vec![id.clone(), Value::from(5)]).await;
    let undone = a.call("vote", vec![Value::from(5)]).await.unwrap();
    assert_eq!(undone, Value::Array(vec![bin(&Z64)]));
    let t5 = a.call("tpc_finish", vec![Value::from(5)]).await.unwrap();
    let cur = b
        .call(
            "loadBefore",
            vec![
                bin(&Z64),
                bin(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(cur[0], bin(b"root v2"));
    assert_eq!(cur[1], t5);
    // The iterator shows the four transactions, none of the server's own.
    let it = a
        .call("iterator_start", vec![Value::Nil, Value::Nil])
        .await
        .unwrap();
    let mut n = 0;
    while a.call("iterator_next", vec![it.clone()]).await.unwrap() != Value::Nil {
        n += 1;
    }
    assert_eq!(n, 4);
    assert_eq!(
        a.call("lastTransaction", vec![]).await.unwrap(),
        t5,
        "lastTransaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let c = cluster().await;
    let p = primary(&c).await;
    let mut good = Zeo::connect(c.writable[p]).await.unwrap();
    good.call("register", vec![Value::from("1"), Value::Boolean(false)])
        .await
        .unwrap();
    // Garbage after the handshake, a 1 GiB frame announced, a call before register, a
    // truncated frame (the client stops sending mid-frame): each connection is closed, by
    // the server.
    let cases: Vec<Vec<u8>> = vec![
        {
            let mut v = 9u32.to_be_bytes().to_vec();
            v.extend_from_slice(b"\xc1garbage!");
            v
        },
        (1u32 << 30).to_be_bytes().to_vec(),
        {
            let mut b = Vec::new();
            rmpv::encode::write_value(
                &mut b,
                &Value::Array(vec![
                    Value::from(1),
                    Value::Boolean(false),
                    Value::from("loadBefore"),
                    Value::Array(vec![]),
                ]),
            )
            .unwrap();
            let mut v = (b.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&b);
            v
        },
        {
            let mut v = 100u32.to_be_bytes().to_vec();
            v.extend_from_slice(b"\x94\x01\xc2");
            v
        },
    ];
    let n_cases = cases.len() as u64;
    for bytes in cases {
        let mut s = TcpStream::connect(c.writable[p]).await.unwrap();
        read_frame(&mut s).await.unwrap();
        write_raw(&mut s, b"M5").await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    // `ruok` instead of a protocol: the status, then the server closes (several times:
    // the answer must be written before the close every time, not by luck of timing).
    for _ in 0..20 {
        let mut s = TcpStream::connect(c.writable[p]).await.unwrap();
        read_frame(&mut s).await.unwrap();
        write_raw(&mut s, b"ruok").await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
            .await
            .expect("answered in time")
            .expect("a status frame before the close");
        let status = String::from_utf8(status).unwrap();
        assert!(status.contains("\"role\": \"Primary\""), "{status}");
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    // A bad handshake.
    let mut s = TcpStream::connect(c.writable[p]).await.unwrap();
    read_frame(&mut s).await.unwrap();
    write_raw(&mut s, b"Z4").await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    // The good client is still served, and can commit.
    let t = good.commit(1, &[(0, bin(&Z64), b"root")]).await.unwrap();
    assert_ne!(t, bin(&Z64));
    // An unknown method is an error reply, not a closed connection.
    let e = good.call("noSuchMethod", vec![]).await.unwrap_err();
    assert_eq!(e.0, "builtins.AttributeError");
    good.call("ping", vec![]).await.unwrap();
    assert_eq!(
        c.faces[p]
            .stats
            .bad_input
            .load(std::sync::atomic::Ordering::Relaxed),
        n_cases + 1,
        "every bad connection counted, the bad handshake too"
    );
    drop(c.servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_right_after_register_is_counted_as_stranded() {
    use std::sync::atomic::Ordering;
    let c = cluster().await;
    let p = primary(&c).await; // registers once, then leaves
    let stranded = |c: &Cluster| c.faces[p].stats.stranded.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stranded(&c) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = stranded(&c);
    // A client that goes on after register is not counted.
    let mut z = Zeo::connect(c.writable[p]).await.unwrap();
    z.call("register", vec![Value::from("1"), Value::Boolean(false)])
        .await
        .unwrap();
    z.call("get_info", vec![]).await.unwrap();
    drop(z);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stranded(&c), before);
    assert!(c.faces[p].metrics().contains("standby_zeo_stranded_total"));
    // Nor is one that the server closes right after register, because it stopped being the
    // primary (a swap here; a partition in `tests/zodb/faults.py`): that client moves on.
    let mut z = Zeo::connect(c.writable[p]).await.unwrap();
    z.call("register", vec![Value::from("1"), Value::Boolean(false)])
        .await
        .unwrap();
    let to = ((p + 1) % 3) as u32;
    c.servers[p].swap(to).await.unwrap().expect("swap accepted");
    let mut buf = [0u8; 64];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), z.s.read(&mut buf))
            .await
            .expect("closed by the old primary in time");
        if matches!(n, Ok(0) | Err(_)) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stranded(&c),
        before,
        "a connection the server closed is not stranded"
    );
}
