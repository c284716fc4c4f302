//! The `gcsd` session server and client library, in process: three keyed group daemons on
//! loopback UDP, each behind a `gcs::net::server::Server` (Unix socket, TCP with a token), and
//! sessions from `gcs::net::client` that are the same `Session` type as embedded ones. Real
//! processes (`gcsd`, `gcs-user`) are exercised by `gcs/tests/gcsd.rs`.

use bytes::Bytes;
use gcs::groups::{GroupError, Reason, SessionEvent};
use gcs::net::client::{self, ClientOptions};
use gcs::net::server::{Server, ServerOptions};
use gcs::net::{DaemonOptions, GroupDaemon, Security, SessionError};
use gcs::{ClusterKey, Service};
use std::path::PathBuf;
use std::time::Duration;
use tests::{fast_cluster, is_view_of, wait_for};
use tokio::time::timeout;

const TOKEN: &str = "a-client-token";

fn key() -> Security {
    Security::Key {
        id: 1,
        key: ClusterKey::from_bytes([5; 32]),
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gcsd-lib-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Node {
    daemon: GroupDaemon,
    server: Server,
}

async fn start(opts: DaemonOptions, unix: PathBuf) -> Node {
    let daemon = GroupDaemon::start(opts.clone()).await.unwrap();
    let mut so = ServerOptions::for_daemon(&opts);
    so.unix = Some(unix);
    so.tcp = Some("127.0.0.1:0".parse().unwrap());
    so.token = Some(TOKEN.into());
    let server = Server::start(&daemon, so).await.unwrap();
    Node { daemon, server }
}

impl Node {
    async fn stop(self) {
        self.server.shutdown().await;
        self.daemon.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_sessions_over_unix_and_tcp_behave_like_embedded_ones() {
    let dir = scratch("api");
    let cluster = fast_cluster(3);
    let mut nodes = Vec::new();
    for id in 0..3 {
        let opts = DaemonOptions::new(cluster.clone(), id, key());
        nodes.push(start(opts, dir.join(format!("{id}.sock"))).await);
    }
    let tcp = |i: usize| nodes[i].server.tcp_addr().unwrap();
    // A wrong or missing token is refused, with the reason.
    let e = client::connect_tcp(tcp(1), "mallory", "guess")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, SessionError::Remote(m) if m.contains("authentication failed")),
        "{e}"
    );
    // The daemon's refusals come back as the embedded GroupErrors.
    let e = client::connect_unix(dir.join("0.sock"), "bad name")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            SessionError::Refused(GroupError::InvalidSessionName { .. })
        ),
        "{e}"
    );

    let mut a = client::connect_unix(dir.join("0.sock"), "alice")
        .await
        .unwrap();
    let mut b = client::connect_tcp(tcp(1), "bob", TOKEN).await.unwrap();
    // One session embedded, to compare: it must see exactly what the remote ones see.
    let mut c = nodes[2].daemon.connect("carol").await.unwrap();
    let mut d = client::connect_tcp(tcp(2), "dave", TOKEN).await.unwrap();
    assert_eq!(a.member().private_group(), "#alice#0");
    assert_eq!(
        client::connect_unix(dir.join("0.sock"), "alice")
            .await
            .err(),
        Some(SessionError::Refused(GroupError::NameInUse("alice".into())))
    );
    for s in [&a, &b, &c, &d] {
        s.join("chat").await.unwrap();
    }
    assert_eq!(
        a.join("chat").await,
        Err(SessionError::Refused(GroupError::AlreadyMember(
            "chat".into()
        )))
    );
    let mut views = Vec::new();
    for s in [&mut a, &mut b, &mut c, &mut d] {
        views.push(wait_for(s, "a view of 4", |e| is_view_of(e, 4)).await);
    }
    // Views are rebuilt exactly: same id, members, joined, left, reason.
    let SessionEvent::Membership(v) = &views[2] else {
        unreachable!()
    };
    for other in &views {
        let SessionEvent::Membership(o) = other else {
            unreachable!()
        };
        assert_eq!((o.id, &o.members, o.kind), (v.id, &v.members, v.kind));
    }
    // Messages in one order, identical events (sender, groups, service, payload) everywhere.
    for k in 0..20u8 {
        a.multicast(&["chat"], Service::Agreed, Bytes::from(vec![b'a', k]))
            .await
            .unwrap();
        b.multicast(
            &["chat", "other"],
            Service::Safe,
            Bytes::from(vec![b'b', k]),
        )
        .await
        .unwrap();
    }
    let mut orders = Vec::new();
    for s in [&mut a, &mut b, &mut c, &mut d] {
        let mut got = Vec::new();
        while got.len() < 40 {
            got.push(wait_for(s, "messages", |e| matches!(e, SessionEvent::Message { .. })).await);
        }
        orders.push(got);
    }
    for o in &orders[1..] {
        assert_eq!(o, &orders[0]);
    }
    // A large message crosses the socket intact; one beyond the ring's limit is refused.
    let big = Bytes::from(vec![7u8; 3 << 20]);
    a.multicast(&["chat"], Service::Agreed, big.clone())
        .await
        .unwrap();
    let e = wait_for(&mut d, "big", |e| matches!(e, SessionEvent::Message { .. })).await;
    assert!(matches!(e, SessionEvent::Message { payload, .. } if payload == big));
    let huge = Bytes::from(vec![0u8; 64 << 20]);
    assert!(matches!(
        a.multicast(&["chat"], Service::Agreed, huge).await,
        Err(SessionError::Refused(GroupError::TooLarge { .. }))
    ));
    // Leave and disconnect.
    d.leave("chat").await.unwrap();
    wait_for(
        &mut d,
        "self leave",
        |e| matches!(e, SessionEvent::SelfLeave { group } if group == "chat"),
    )
    .await;
    let e = wait_for(&mut a, "dave's leave", |e| is_view_of(e, 3)).await;
    assert!(matches!(e, SessionEvent::Membership(v) if v.reason == Reason::Leave));
    b.disconnect().await;
    let e = wait_for(&mut c, "bob's disconnect", |e| is_view_of(e, 2)).await;
    assert!(matches!(e, SessionEvent::Membership(v) if v.reason == Reason::Disconnect));
    // Server shutdown: remote sessions end with the reason; the socket file is gone.
    let n0 = nodes.remove(0);
    n0.stop().await;
    let end = timeout(Duration::from_secs(10), async {
        while a.next_event().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "session still open after shutdown");
    assert_eq!(a.close_reason().as_deref(), Some("daemon shutting down"));
    assert!(matches!(a.join("x").await, Err(SessionError::Closed(_))));
    assert!(!dir.join("0.sock").exists());
    drop(d);
    for n in nodes {
        n.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw client that opens a session, joins `group`, and never reads its socket.
async fn stuck_client(path: &std::path::Path, name: &str, group: &str) -> tokio::net::UnixStream {
    use gcs::net::proto::{encode, ClientFrame, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        name: name.into(),
        token: None,
    };
    let join = ClientFrame::Join {
        id: 1,
        group: group.into(),
    };
    s.write_all(&encode(&hello)).await.unwrap();
    s.write_all(&encode(&join)).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_are_cut_off_with_a_reason_and_the_others_keep_receiving() {
    use gcs::net::proto::{read_frame, ServerFrame};
    let dir = scratch("slow");
    let cluster = fast_cluster(2);
    let mut o0 = DaemonOptions::new(cluster.clone(), 0, key());
    // Room for the reader that keeps up, even on a loaded machine; far less than the stream.
    o0.session_channel = 256;
    o0.session_backlog_max = 4 << 20;
    let n0 = start(o0, dir.join("0.sock")).await;
    let n1 = start(DaemonOptions::new(cluster, 1, key()), dir.join("1.sock")).await;
    // A process that stops reading its socket: the daemon's bound cuts it off.
    let mut stuck = Some(stuck_client(&dir.join("0.sock"), "stuck", "feed").await);
    // A program that never calls next_event: its client library's bound cuts it off.
    let small = ClientOptions {
        event_buffer_bytes: 1 << 20,
        ..ClientOptions::default()
    };
    let mut slow = client::connect_unix_with(dir.join("0.sock"), "slow", &small)
        .await
        .unwrap();
    let mut fast_reader = client::connect_unix(dir.join("0.sock"), "fast")
        .await
        .unwrap();
    // The writer is in the group and never reads its events either: its calls are still
    // answered (replies are not stuck behind unread events), as for an embedded session.
    let writer = client::connect_tcp(n1.server.tcp_addr().unwrap(), "writer", TOKEN)
        .await
        .unwrap();
    for s in [&slow, &fast_reader, &writer] {
        s.join("feed").await.unwrap();
    }
    wait_for(&mut fast_reader, "a view of 4", |e| is_view_of(e, 4)).await;
    let n = 4000; // 32 MiB
    let payload = Bytes::from(vec![0u8; 8192]);
    let w = tokio::spawn(async move {
        for _ in 0..n {
            writer
                .multicast(&["feed"], Service::Agreed, payload.clone())
                .await
                .unwrap();
        }
        writer
    });
    let mut got = 0;
    let mut cut = Vec::new();
    while got < n {
        match wait_for(&mut fast_reader, "feed", |_| true).await {
            SessionEvent::Message { .. } => got += 1,
            SessionEvent::Membership(v) if v.reason == Reason::Disconnect => {
                let who = v.left[0].name.to_string();
                if who == "stuck" {
                    // Reading now (within the server's linger), the stuck process gets the rest
                    // of the frame in flight, then the reason.
                    let mut s = stuck.take().unwrap();
                    let why = timeout(Duration::from_secs(4), async move {
                        loop {
                            match read_frame::<ServerFrame, _>(&mut s, 64 << 20).await {
                                Ok(Some(ServerFrame::Closed { reason })) => return reason,
                                Ok(Some(_)) => {}
                                other => panic!("no Closed frame: {other:?}"),
                            }
                        }
                    })
                    .await
                    .expect("no reason in time");
                    assert!(why.starts_with("too slow"), "{why}");
                }
                cut.push(who);
            }
            _ => {}
        }
    }
    cut.sort();
    assert_eq!(cut, ["slow", "stuck"], "both non-readers cut off");
    let end = timeout(Duration::from_secs(10), async {
        while slow.next_event().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "slow session not closed");
    let why = slow.close_reason().unwrap();
    assert!(why.starts_with("too slow"), "{why}");
    let writer = w.await.unwrap();
    writer.disconnect().await;
    n0.stop().await;
    n1.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
