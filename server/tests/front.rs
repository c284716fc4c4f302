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
        token: Some(Bytes::from_static(TOKEN)),
        configured: vec![(0, "s0".into(), client_addr.clone())],
        topology: std::sync::RwLock::new(vec![(0, "s0".into(), client_addr.clone())]),
        events: tx,
        hello_timeout: Duration::from_millis(300),
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
    // An oversized transaction is refused as invalid, and nothing is applied.
    let before = c.last_transaction().await.unwrap();
    let mut t = c.begin();
    t.store(
        Oid::from_u64(10),
        Some(Bytes::from(vec![0u8; 16 << 20])),
        None,
    );
    assert!(matches!(
        c.commit(t, Duration::from_secs(5)).await,
        Err(ClientError::Commit(replica::CommitError::Invalid(_)))
    ));
    assert_eq!(c.last_transaction().await.unwrap(), before);
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
