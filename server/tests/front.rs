//! The client port: the client library end to end, and bad input (garbage, truncated and
//! oversize frames, another protocol version, a wrong token) answered with clear errors while
//! the server keeps serving others.

use bytes::Bytes;
use gcs::net::{ClusterConfig, Security};
use replica::{CommitMode, ReplicaConfig};
use server::front::{self, Front};
use server::netclient::{Client, ClientError, ReadFrom};
use server::proto::{
    read_frame, ErrorKind, Request, Response, FRAME_MAX, HELLO_FRAME_MAX, VERSION,
};
use server::{ServerOptions, StorageServer, StoreSource};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use storage::{Oid, Tid};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TOKEN: &[u8] = b"s3cret";

/// One server (a primary component by itself) with its client port; returns the port's address.
async fn one_server() -> (Arc<StorageServer>, String) {
    one_server_with(vec![(front::Access::Admin, Bytes::from_static(TOKEN))]).await
}

/// [`one_server`] with these client tokens.
async fn one_server_with(tokens: Vec<(front::Access, Bytes)>) -> (Arc<StorageServer>, String) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = udp.local_addr().unwrap();
    drop(udp);
    let cluster = ClusterConfig::from_addrs(&[addr]);
    let cfg = ReplicaConfig::uniform(1, CommitMode::Sync);
    let opts = ServerOptions {
        cluster,
        id: 0,
        replica: cfg,
        security: Security::Plaintext,
        after_disk_loss: false,
    };
    let (s, mut ev) = StorageServer::start(
        opts,
        StoreSource::Open(storage::MemStorage::default()),
        1024,
    )
    .await
    .unwrap();
    let server = Arc::new(s);
    let (tx, _) = tokio::sync::broadcast::channel(1024);
    let fan = tx.clone();
    tokio::spawn(async move {
        while let Some(e) = ev.recv().await {
            let _ = fan.send(e);
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client_addr = listener.local_addr().unwrap().to_string();
    let f = Arc::new(Front {
        server: server.clone(),
        tokens: Some(tokens),
        configured: vec![(0, "s0".into(), client_addr.clone())],
        topology: std::sync::RwLock::new(vec![(0, "s0".into(), client_addr.clone())]),
        events: tx,
        hello_timeout: Duration::from_millis(300),
        write_stall_max: Duration::from_millis(500),
        tls: None,
    });
    tokio::spawn(front::serve(listener, f));
    // Wait for the primary.
    for _ in 0..200 {
        if server.status().await.unwrap().primary.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (server, client_addr)
}

async fn answer(s: &mut TcpStream) -> Option<Response> {
    let body = tokio::time::timeout(Duration::from_secs(5), read_frame(s))
        .await
        .expect("an answer in time")
        .ok()??;
    Some(Response::decode(&body).expect("a well-formed answer").1)
}

async fn raw(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_commits_reads_iterates_and_hears_invalidations() {
    let (_server, addr) = one_server().await;
    let mut c = Client::connect(std::slice::from_ref(&addr), Bytes::from_static(TOKEN), 42)
        .await
        .unwrap();
    assert_eq!(c.primary(), Some(0));
    // A subscriber on its own connection.
    let mut sub = raw(&addr).await;
    sub.write_all(
        &Request::Hello {
            token: Bytes::from_static(TOKEN),
        }
        .encode(1),
    )
    .await
    .unwrap();
    assert!(matches!(
        answer(&mut sub).await,
        Some(Response::Welcome { server: 0 })
    ));
    sub.write_all(&Request::Subscribe.encode(2)).await.unwrap();
    assert_eq!(answer(&mut sub).await, Some(Response::Ok));

    let mut t = c.begin();
    t.store(
        Oid::from_u64(1),
        Some(Bytes::from_static(b"one")),
        Some(Tid::ZERO),
    );
    let done = c.commit(t, Duration::from_secs(5)).await.unwrap();
    let (rev, _) = c.load(Oid::from_u64(1), ReadFrom::Primary).await.unwrap();
    let rev = rev.unwrap();
    assert_eq!(
        (rev.tid, rev.data.unwrap()),
        (done.tid, Bytes::from_static(b"one"))
    );
    // A stale serial is a conflict, reported to the application.
    let mut t = c.begin();
    t.store(
        Oid::from_u64(1),
        Some(Bytes::from_static(b"two")),
        Some(Tid::ZERO),
    );
    assert!(matches!(
        c.commit(t, Duration::from_secs(5)).await,
        Err(ClientError::Commit(replica::CommitError::Conflict { .. }))
    ));
    let (txns, _) = c.iterate(Tid(1), Tid(u64::MAX), 100).await.unwrap();
    assert!(txns.iter().any(|t| t.tid == done.tid));
    assert_eq!(
        c.last_transaction().await.unwrap(),
        txns.last().unwrap().tid
    );
    assert_eq!(c.history(Oid::from_u64(1), 5).await.unwrap().len(), 1);
    let st = c.refresh().await.unwrap();
    assert!(
        st.since_last_commit_us.is_some_and(|us| us < 60_000_000),
        "the status says how long ago the last commit was: {st:?}"
    );
    // The subscriber heard the commit (the epoch marker may come first).
    loop {
        match answer(&mut sub).await {
            Some(Response::Invalidation { tid, oids }) if tid == done.tid => {
                assert_eq!(oids, vec![Oid::from_u64(1)]);
                break;
            }
            Some(Response::Invalidation { .. }) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let (_server, addr) = one_server().await;

    // A wrong token: refused, connection closed.
    let mut s = raw(&addr).await;
    s.write_all(
        &Request::Hello {
            token: Bytes::from_static(b"guess"),
        }
        .encode(1),
    )
    .await
    .unwrap();
    match answer(&mut s).await {
        Some(Response::Error {
            kind: ErrorKind::Unauthorized,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(answer(&mut s).await.is_none(), "closed");

    // A request before Hello: refused, closed.
    let mut s = raw(&addr).await;
    s.write_all(&Request::Status.encode(1)).await.unwrap();
    assert!(matches!(
        answer(&mut s).await,
        Some(Response::Error {
            kind: ErrorKind::Unauthorized,
            ..
        })
    ));

    // Another protocol version: named, closed.
    let mut s = raw(&addr).await;
    let mut f = Request::Hello {
        token: Bytes::from_static(TOKEN),
    }
    .encode(1)
    .to_vec();
    f[4] = VERSION + 1;
    s.write_all(&f).await.unwrap();
    match answer(&mut s).await {
        Some(Response::Error {
            kind: ErrorKind::Version,
            message,
        }) => assert!(message.contains("version"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Garbage inside a well-delimited frame: an error, and the connection still works.
    let mut s = raw(&addr).await;
    s.write_all(
        &Request::Hello {
            token: Bytes::from_static(TOKEN),
        }
        .encode(1),
    )
    .await
    .unwrap();
    assert!(matches!(
        answer(&mut s).await,
        Some(Response::Welcome { .. })
    ));
    let mut g = vec![0, 0, 0, 12, VERSION, 200];
    g.extend_from_slice(&7u64.to_be_bytes());
    g.extend_from_slice(&[0xde, 0xad]);
    s.write_all(&g).await.unwrap();
    match answer(&mut s).await {
        Some(Response::Error {
            kind: ErrorKind::BadRequest,
            message,
        }) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
    let mut cut = Request::Load {
        oid: Oid::from_u64(1),
    }
    .encode(8)
    .to_vec();
    let n = cut.len() as u32 - 4 - 3;
    cut.truncate(cut.len() - 3);
    cut[..4].copy_from_slice(&n.to_be_bytes());
    s.write_all(&cut).await.unwrap();
    assert!(matches!(
        answer(&mut s).await,
        Some(Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));
    s.write_all(&Request::LastTransaction.encode(9))
        .await
        .unwrap();
    assert!(
        matches!(answer(&mut s).await, Some(Response::Last { .. })),
        "still serving"
    );

    // An oversize frame: refused without reading it, closed. A large frame before Hello (well
    // under the frame limit) too: a stranger cannot make the server hold big buffers.
    for (len, says) in [(FRAME_MAX, "larger"), (HELLO_FRAME_MAX, "before Hello")] {
        let mut s = raw(&addr).await;
        s.write_all(&(len as u32 + 1).to_be_bytes()).await.unwrap();
        match answer(&mut s).await {
            Some(Response::Error {
                kind: ErrorKind::BadRequest,
                message,
            }) => assert!(message.contains(says), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(answer(&mut s).await.is_none(), "closed");
    }
    // Frames that are not a Hello, every 100 ms, for longer than the greeting may take (300
    // ms here): told so and closed. Each bad frame gets its answer, but none extends the
    // deadline; with a deadline per frame this connection would stay open.
    let s = raw(&addr).await;
    let (mut rd, mut wr) = s.into_split();
    let mut g = vec![0, 0, 0, 12, VERSION, 200];
    g.extend_from_slice(&7u64.to_be_bytes());
    g.extend_from_slice(&[0xde, 0xad]);
    let writer = tokio::spawn(async move {
        for _ in 0..30 {
            if wr.write_all(&g).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = tokio::time::Instant::now();
    let mut told = None;
    while let Ok(Some(body)) = read_frame(&mut rd).await {
        if let Ok((_, Response::Error { kind, message })) = Response::decode(&body) {
            if kind == ErrorKind::Unauthorized {
                told = Some(message);
            }
        }
    }
    assert!(
        told.as_deref().is_some_and(|m| m.contains("no Hello")),
        "{told:?}"
    );
    // Closed while the bad frames were still coming (they come for 3 s; the deadline is at
    // 0.3 s, so the margin is wide even on a loaded machine).
    assert!(
        start.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        start.elapsed()
    );
    writer.abort();
    // A truncated frame then a hang-up: nothing to answer, nothing breaks.
    let mut s = raw(&addr).await;
    s.write_all(&[0, 0, 0, 50, VERSION]).await.unwrap();
    drop(s);

    // Through all of it, a proper client is served.
    let mut c = Client::connect(&[addr], Bytes::from_static(TOKEN), 7)
        .await
        .unwrap();
    let mut t = c.begin();
    t.store(Oid::from_u64(9), Some(Bytes::from_static(b"ok")), None);
    c.commit(t, Duration::from_secs(5)).await.unwrap();
    // A transaction over `commit_bytes_max` is refused as invalid, and nothing is applied.
    let before = c.last_transaction().await.unwrap();
    let mut t = c.begin();
    t.store(
        Oid::from_u64(10),
        Some(Bytes::from(vec![0u8; (24 << 20) + 1])),
        None,
    );
    assert!(matches!(
        c.commit(t, Duration::from_secs(5)).await,
        Err(ClientError::Commit(replica::CommitError::Invalid(_)))
    ));
    assert_eq!(c.last_transaction().await.unwrap(), before);
    // A value of 16 MiB commits, and loads back whole.
    let big = Bytes::from(
        (0..16u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut t = c.begin();
    t.store(Oid::from_u64(11), Some(big.clone()), None);
    let done = c.commit(t, Duration::from_secs(10)).await.unwrap();
    let (rev, _) = c.load(Oid::from_u64(11), ReadFrom::Primary).await.unwrap();
    let rev = rev.unwrap();
    assert_eq!(rev.tid, done.tid);
    assert!(
        rev.data.unwrap() == big,
        "the 16 MiB value came back changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_cache_is_kept_coherent_by_invalidations() {
    let (_server, addr) = one_server().await;
    let mut reader = Client::connect(std::slice::from_ref(&addr), Bytes::from_static(TOKEN), 1)
        .await
        .unwrap();
    reader.enable_cache(1000);
    let mut writer = Client::connect(std::slice::from_ref(&addr), Bytes::from_static(TOKEN), 2)
        .await
        .unwrap();
    let put = |v: &'static [u8]| {
        let mut t = server::netclient::Txn::default();
        t.store(Oid::from_u64(5), Some(Bytes::from_static(v)), None);
        t
    };
    let t = put(b"first");
    writer.commit(t, Duration::from_secs(5)).await.unwrap();
    let any = ReadFrom::Replica {
        max_lag: 0,
        max_staleness: None,
    };
    // Wait for the subscription, then fill the cache and hit it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reader.cache_hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never served a read"
        );
        let (rev, _) = reader.load(Oid::from_u64(5), any).await.unwrap();
        assert_eq!(rev.unwrap().data.unwrap(), Bytes::from_static(b"first"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another client writes: the cached state is dropped and the new one read.
    let t = put(b"second");
    writer.commit(t, Duration::from_secs(5)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (rev, _) = reader.load(Oid::from_u64(5), any).await.unwrap();
        if rev.unwrap().data.unwrap() == Bytes::from_static(b"second") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache kept a stale state"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection that said hello with `token`.
async fn hello(addr: &str, token: &'static [u8]) -> TcpStream {
    let mut s = raw(addr).await;
    s.write_all(
        &Request::Hello {
            token: Bytes::from_static(token),
        }
        .encode(1),
    )
    .await
    .unwrap();
    assert!(
        matches!(answer(&mut s).await, Some(Response::Welcome { .. })),
        "hello with {:?}",
        String::from_utf8_lossy(token)
    );
    s
}

async fn ask(s: &mut TcpStream, req: Request) -> Response {
    s.write_all(&req.encode(2)).await.unwrap();
    answer(s).await.expect("an answer")
}

fn unauthorized(r: &Response) -> bool {
    matches!(
        r,
        Response::Error {
            kind: ErrorKind::Unauthorized,
            ..
        }
    )
}

/// Tokens with roles: a read token reads but cannot commit, a write token commits but cannot
/// switch over or read the lost archive, an admin token can; the refusals leave the connection
/// open. The admin endpoint answers its probes to anyone and `/status` and `/metrics` only to
/// an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_have_roles_and_the_admin_endpoint_wants_an_admin_token() {
    const READ: &[u8] = b"read-token-0123456789";
    const WRITE: &[u8] = b"write-token-0123456789";
    const ADMIN: &[u8] = b"admin-token-0123456789";
    let parsed = front::parse_tokens(&format!(
        "# roles\nread {}\nwrite {}\n\nadmin {}\n",
        String::from_utf8_lossy(READ),
        String::from_utf8_lossy(WRITE),
        String::from_utf8_lossy(ADMIN)
    ))
    .unwrap();
    assert!(front::parse_tokens("root 0123456789abcdef0123").is_err());
    assert!(front::parse_tokens("read short").is_err());
    let (server, addr) = one_server_with(parsed).await;
    let commit = |request| Request::Commit {
        client: 9,
        request,
        meta: Default::default(),
        records: vec![storage::Record {
            oid: Oid::from_u64(5),
            data: Some(Bytes::from_static(b"x")),
            expected_serial: None,
        }],
    };

    let mut r = hello(&addr, READ).await;
    assert!(matches!(
        ask(
            &mut r,
            Request::Load {
                oid: Oid::from_u64(5)
            }
        )
        .await,
        Response::Revision { .. }
    ));
    assert!(unauthorized(&ask(&mut r, commit(1)).await));
    assert!(unauthorized(
        &ask(&mut r, Request::Switchover { to: 0 }).await
    ));
    assert!(
        matches!(ask(&mut r, Request::Status).await, Response::Status(_)),
        "still open"
    );

    let mut w = hello(&addr, WRITE).await;
    assert!(matches!(
        ask(&mut w, commit(1)).await,
        Response::Commit(Ok(_))
    ));
    assert!(unauthorized(
        &ask(&mut w, Request::LostArchive { max: 10 }).await
    ));
    assert!(unauthorized(
        &ask(&mut w, Request::Switchover { to: 0 }).await
    ));

    let mut a = hello(&addr, ADMIN).await;
    assert!(matches!(
        ask(&mut a, Request::LostArchive { max: 10 }).await,
        Response::Transactions { .. }
    ));
    assert!(matches!(
        ask(&mut a, commit(2)).await,
        Response::Commit(Ok(_))
    ));

    // The admin endpoint.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(server::admin::serve_with(
        listener,
        server.clone(),
        None,
        Some(vec![Bytes::from_static(ADMIN)]),
    ));
    let get = |path: &'static str, token: Option<&'static [u8]>| async move {
        use tokio::io::AsyncReadExt;
        let mut s = TcpStream::connect(admin).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {}\r\n", String::from_utf8_lossy(t)))
            .unwrap_or_default();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).await.unwrap();
        b.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
    };
    assert_eq!(get("/health", None).await, 200);
    assert_eq!(get("/primary", None).await, 200);
    for path in ["/status", "/metrics"] {
        assert_eq!(get(path, None).await, 401, "{path} without a token");
        assert_eq!(get(path, Some(READ)).await, 401, "{path} with a read token");
        assert_eq!(
            get(path, Some(b"guess")).await,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            get(path, Some(ADMIN)).await,
            200,
            "{path} with the admin token"
        );
    }
}

/// A client that sends requests and never reads the answers fills its socket and is cut off
/// once a frame has waited `write_stall_max` (500 ms here), while another client's commits go
/// on unhindered. The scans it asked for ran off the ring's task, a page bounded in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_slows_nobody() {
    let (_server, addr) = one_server().await;
    let mut w = hello(&addr, TOKEN).await;
    for i in 0..12u64 {
        let r = ask(
            &mut w,
            Request::Commit {
                client: 3,
                request: i + 1,
                meta: Default::default(),
                records: vec![storage::Record {
                    oid: Oid::from_u64(100 + i),
                    data: Some(Bytes::from(vec![i as u8; 1 << 20])),
                    expected_serial: None,
                }],
            },
        )
        .await;
        assert!(matches!(r, Response::Commit(Ok(_))), "{r:?}");
    }
    // One page is at most 8 MiB of objects (and at least one transaction): 12 MiB written,
    // the first page ends after 8 MiB with more to come.
    match ask(
        &mut w,
        Request::Iterate {
            start: Tid::ZERO,
            stop: Tid::MAX,
            max: 1000,
        },
    )
    .await
    {
        Response::Transactions { txns, more } => {
            let bytes: usize = txns
                .iter()
                .flat_map(|t| &t.records)
                .map(|r| r.data.as_ref().map_or(0, |d| d.len()))
                .sum();
            assert!(more, "{} transactions, {bytes} bytes, no more", txns.len());
            assert!(
                (8 << 20..9 << 20).contains(&bytes),
                "{bytes} bytes in a page"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut slow = hello(&addr, TOKEN).await;
    for i in 0..40u64 {
        let req = Request::Iterate {
            start: Tid::ZERO,
            stop: Tid::MAX,
            max: 1000,
        };
        slow.write_all(&req.encode(10 + i)).await.unwrap();
    }
    // Meanwhile commits keep their pace.
    let started = tokio::time::Instant::now();
    for i in 0..30u64 {
        let t = tokio::time::Instant::now();
        let r = ask(
            &mut w,
            Request::Commit {
                client: 3,
                request: 100 + i,
                meta: Default::default(),
                records: vec![storage::Record {
                    oid: Oid::from_u64(7),
                    data: Some(Bytes::from_static(b"small")),
                    expected_serial: None,
                }],
            },
        )
        .await;
        assert!(matches!(r, Response::Commit(Ok(_))), "{r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a commit took {:?}",
            t.elapsed()
        );
    }
    if started.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_secs(1) - started.elapsed()).await;
    }
    // The slow client finds its connection closed once it drains what was buffered.
    let mut drained = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => drained += n,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the connection stayed open");
    assert!(
        drained < (40 * 8) << 20,
        "it got every answer ({drained} bytes): it was not cut off"
    );
    eprintln!("cut off after {drained} bytes of the 40 answers it asked for");
}
