//! Group daemons on loopback UDP with the cluster key: sessions, named groups, group views and
//! messages over real sockets; a session that never reads is cut off without slowing the ring.

use bytes::Bytes;
use gcs::groups::{Reason, SessionEvent};
use gcs::net::{DaemonOptions, GroupDaemon, Security};
use gcs::{ClusterKey, Service};
use std::time::Duration;
use tests::{fast_cluster, is_view_of, wait_for};

fn key(b: u8) -> Security {
    Security::Key {
        id: 1,
        key: ClusterKey::from_bytes([b; 32]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_three_keyed_daemons_share_group_views_and_messages() {
    let cluster = fast_cluster(3);
    let mut daemons = Vec::new();
    for id in 0..3 {
        daemons.push(
            GroupDaemon::start(DaemonOptions::new(cluster.clone(), id, key(7)))
                .await
                .unwrap(),
        );
    }
    let mut a = daemons[0].connect("alice").await.unwrap();
    let mut b = daemons[1].connect("bob").await.unwrap();
    let mut c = daemons[2].connect("carol").await.unwrap();
    // Joins retry until the daemons have formed one ring (a join is ordered through it).
    for s in [&a, &b, &c] {
        s.join("chat").await.unwrap();
    }
    for s in [&mut a, &mut b, &mut c] {
        wait_for(s, "a view of 3", |e| is_view_of(e, 3)).await;
    }
    // Messages from every member reach every member in one order; an outsider's (open group)
    // message too.
    let outsider = daemons[2].connect("dave").await.unwrap();
    for k in 0..20u8 {
        a.multicast(&["chat"], Service::Agreed, Bytes::from(vec![b'a', k]))
            .await
            .unwrap();
        b.multicast(&["chat"], Service::Safe, Bytes::from(vec![b'b', k]))
            .await
            .unwrap();
    }
    outsider
        .multicast(
            &["chat"],
            Service::Agreed,
            Bytes::from_static(b"hi from outside"),
        )
        .await
        .unwrap();
    let mut orders = Vec::new();
    for s in [&mut a, &mut b, &mut c] {
        let mut got = Vec::new();
        while got.len() < 41 {
            if let SessionEvent::Message { payload, .. } =
                wait_for(s, "messages", |e| matches!(e, SessionEvent::Message { .. })).await
            {
                got.push(payload);
            }
        }
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    // Private group: only bob gets it.
    let bob_private = b.member().private_group();
    a.multicast(
        &[bob_private.as_str()],
        Service::Reliable,
        Bytes::from_static(b"psst"),
    )
    .await
    .unwrap();
    wait_for(
        &mut b,
        "private message",
        |e| matches!(e, SessionEvent::Message { payload, .. } if &payload[..] == b"psst"),
    )
    .await;
    // Carol leaves: the others see a view of two with reason Leave.
    c.leave("chat").await.unwrap();
    let e = wait_for(&mut a, "carol's leave", |e| is_view_of(e, 2)).await;
    let SessionEvent::Membership(v) = e else {
        unreachable!()
    };
    assert_eq!(v.reason, Reason::Leave);
    assert_eq!(v.left.len(), 1);
    // Daemon 2 stops: bob's session sees nothing (carol and dave were not in chat any more),
    // but a new member on daemon 2 would; check the ring still works for a and b.
    let d2 = daemons.pop().unwrap();
    d2.shutdown().await.unwrap();
    a.multicast(&["chat"], Service::Safe, Bytes::from_static(b"after"))
        .await
        .unwrap();
    wait_for(
        &mut b,
        "message after a daemon left",
        |e| matches!(e, SessionEvent::Message { payload, .. } if &payload[..] == b"after"),
    )
    .await;
    for d in daemons {
        d.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_reads_is_disconnected_and_the_ring_keeps_going() {
    let cluster = fast_cluster(2);
    let mut opts0 = DaemonOptions::new(cluster.clone(), 0, key(9));
    opts0.session_channel = 256;
    opts0.session_backlog_max = 1 << 20;
    let d0 = GroupDaemon::start(opts0).await.unwrap();
    let d1 = GroupDaemon::start(DaemonOptions::new(cluster, 1, key(9)))
        .await
        .unwrap();
    let slow = d0.connect("slow").await.unwrap(); // never reads
    let mut fast_reader = d0.connect("fast").await.unwrap();
    let writer = d1.connect("writer").await.unwrap();
    slow.join("feed").await.unwrap();
    fast_reader.join("feed").await.unwrap();
    writer.join("feed").await.unwrap();
    wait_for(&mut fast_reader, "a view of 3", |e| is_view_of(e, 3)).await;
    let payload = Bytes::from(vec![0u8; 4096]);
    let n = 2000;
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
    let mut saw_slow_leave = false;
    while got < n {
        match wait_for(&mut fast_reader, "feed", |_| true).await {
            SessionEvent::Message { .. } => got += 1,
            SessionEvent::Membership(v) if v.reason == Reason::Disconnect => saw_slow_leave = true,
            _ => {}
        }
    }
    assert!(saw_slow_leave, "the slow session was never cut off");
    let _ = w.await.unwrap();
    drop(slow);
    d0.shutdown().await.unwrap();
    d1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_another_key_never_joins() {
    let cluster = fast_cluster(3);
    let d0 = GroupDaemon::start(DaemonOptions::new(cluster.clone(), 0, key(1)))
        .await
        .unwrap();
    let d1 = GroupDaemon::start(DaemonOptions::new(cluster.clone(), 1, key(1)))
        .await
        .unwrap();
    let intruder = GroupDaemon::start(DaemonOptions::new(cluster, 2, key(2)))
        .await
        .unwrap();
    let mut a = d0.connect("a").await.unwrap();
    let b = d1.connect("b").await.unwrap();
    let evil = intruder.connect("evil").await.unwrap();
    a.join("g").await.unwrap();
    b.join("g").await.unwrap();
    evil.join("g").await.unwrap();
    wait_for(&mut a, "a view of 2", |e| is_view_of(e, 2)).await;
    evil.multicast(&["g"], Service::Agreed, Bytes::from_static(b"injected"))
        .await
        .unwrap();
    b.multicast(&["g"], Service::Agreed, Bytes::from_static(b"genuine"))
        .await
        .unwrap();
    let e = wait_for(&mut a, "genuine", |e| {
        matches!(e, SessionEvent::Message { .. })
    })
    .await;
    assert!(matches!(e, SessionEvent::Message { payload, .. } if &payload[..] == b"genuine"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(e) = a.try_next_event() {
        match e {
            SessionEvent::Message { payload, .. } => assert_ne!(&payload[..], b"injected"),
            SessionEvent::Membership(v) => assert!(v.members.len() <= 2, "{v:?}"),
            _ => {}
        }
    }
    for d in [d0, d1, intruder] {
        d.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_key_rotates_at_runtime_without_a_view_change() {
    let cluster = fast_cluster(3);
    let mut daemons = Vec::new();
    for id in 0..3 {
        daemons.push(
            GroupDaemon::start(DaemonOptions::new(cluster.clone(), id, key(3)))
                .await
                .unwrap(),
        );
    }
    let mut a = daemons[0].connect("a").await.unwrap();
    let b = daemons[1].connect("b").await.unwrap();
    let c = daemons[2].connect("c").await.unwrap();
    for s in [&a, &b, &c] {
        s.join("g").await.unwrap();
    }
    wait_for(&mut a, "a view of 3", |e| is_view_of(e, 3)).await;
    let new_key = ClusterKey::from_bytes([4; 32]);
    let sender = tokio::spawn(async move {
        for k in 0..300u32 {
            b.multicast(
                &["g"],
                Service::Agreed,
                Bytes::from(k.to_le_bytes().to_vec()),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        b
    });
    for d in &daemons {
        d.add_key(2, new_key.clone()).await.unwrap();
    }
    for d in &daemons {
        d.set_send_key(2).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for d in &daemons {
        d.remove_key(1).await.unwrap();
    }
    let mut got = 0;
    while got < 300 {
        match wait_for(&mut a, "messages during rotation", |_| true).await {
            SessionEvent::Message { .. } => got += 1,
            SessionEvent::Membership(v) => panic!("a view changed during key rotation: {v:?}"),
            _ => {}
        }
    }
    let _b = sender.await.unwrap();
    drop(c);
    for d in daemons {
        d.shutdown().await.unwrap();
    }
}
