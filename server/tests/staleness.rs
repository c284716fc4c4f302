//! A replica left alone (the two other servers killed, as a partition would leave it) goes on
//! serving its last state: a read bounded in time is refused once the bound passes, an
//! unbounded one is served and says for how long the replica may have missed commits;
//! `/status` and `/metrics` say it too. Real processes on loopback (the network partition
//! itself is in `netns.rs`).
#![cfg(feature = "cli")]

mod common;

use bytes::Bytes;
use common::{client, primary_of, put, Cluster, TOKEN};
use server::netclient::{Client, ClientError, ReadFrom};
use std::time::Duration;
use storage::Oid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_alone_refuses_reads_bounded_in_time_and_says_how_stale_it_is() {
    let mut c = Cluster::new(3);
    let mut cl = client(&c, 1).await;
    put(&mut cl, "probe").await;
    let p = primary_of(&c).await;
    let r = (p + 1) % 3;
    let bound = Duration::from_millis(800);
    let key = Oid::new(Bytes::from_static(b"probe")).unwrap();
    let bounded = ReadFrom::Server {
        id: r,
        max_lag: Some(0),
        max_staleness: Some(bound),
    };
    // Current: served, zero behind.
    let mut st = None;
    for _ in 0..100 {
        if let Ok((rev, s)) = cl.load_reporting(key.clone(), bounded).await {
            assert!(rev.is_some());
            st = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = st.unwrap_or_else(|| panic!("s{r} never served a bounded read:\n{}", c.logs()));
    assert_eq!(st.behind_for, Some(Duration::ZERO), "{st:?}");

    // The others die: s{r} is alone, out of any primary component.
    let cut_at = tokio::time::Instant::now();
    for i in 0..3 {
        if i != r {
            c.kill9(i);
        }
    }
    let mut only = Client::connect(
        &[c.clients[r as usize].clone()],
        Bytes::from_static(TOKEN.as_bytes()),
        2,
    )
    .await
    .unwrap();
    // Within the bound it may still serve; past it, never.
    let refused = loop {
        match only.load_reporting(key.clone(), bounded).await {
            Err(ClientError::TooStale { server, why }) => {
                assert_eq!(server, r);
                break (tokio::time::Instant::now(), why);
            }
            Ok((_, s)) => {
                assert!(
                    s.behind_for.is_some_and(|b| b <= bound),
                    "served outside the bound: {s:?}"
                );
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(cut_at.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "bounded read ({bound:?}) refused {:?} after the cut: {}",
        refused.0 - cut_at,
        refused.1
    );
    // Counted from the last moment it knew it was current, not from the view that told it
    // otherwise (a token timeout and a membership round later).
    assert!(refused.0 - cut_at >= bound - Duration::from_millis(50));
    assert!(
        refused.0 - cut_at < bound + Duration::from_millis(400),
        "refused only {:?} after the cut",
        refused.0 - cut_at
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Unbounded: served, with how stale it is.
    let unbounded = ReadFrom::Server {
        id: r,
        max_lag: None,
        max_staleness: None,
    };
    let (rev, s) = only.load_reporting(key.clone(), unbounded).await.unwrap();
    assert!(rev.is_some());
    let behind = s.behind_for.expect("it was current once");
    assert!(
        behind >= Duration::from_secs(2) && behind < cut_at.elapsed() + Duration::from_millis(600),
        "behind {behind:?}, cut {:?} ago",
        cut_at.elapsed()
    );
    assert_eq!(s.role, replica::Role::ReadOnly);
    // The admin endpoint says it too.
    let (_, status) = c.admin_get(r, "/status").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(v["behind_seconds"].as_f64().unwrap() >= 2.0, "{status}");
    let (_, metrics) = c.admin_get(r, "/metrics").await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("standby_behind_seconds{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs >= 2.0, "{line}");
}
