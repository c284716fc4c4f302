//! Three `standby-server` processes with RocksDB on loopback, under a write load from the TCP
//! client library: kill -9 of the primary, SIGSTOP of the primary, a backup that loses its data
//! directory and is rebuilt from a checkpoint, and a switchover. Checks that
//! no request fails for the application, that every acknowledged commit is still there at the
//! end, that each epoch's commits were acknowledged by one server only, and that the servers
//! converge. Every process is stopped by PID.
#![cfg(feature = "cli")]

mod common;

use bytes::Bytes;
use common::{
    check_load, client, converge, free_tcp, free_udp, primary_of, put, status_at, Cluster, Load,
};
use server::netclient::ReadFrom;
use std::time::Duration;
use storage::Oid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stop_wipe_and_switchover_under_load_lose_nothing() {
    let mut c = Cluster::new(3);
    let _ = client(&c, 1).await;
    let load = Load::start(&c, 4, 8).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. kill -9 of the primary; it comes back 2 s later.
    let p = primary_of(&c).await;
    let killed_at = tokio::time::Instant::now();
    c.kill9(p);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = load.first_ack_after(killed_at + Duration::from_millis(1));
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

    let s = load.stop().await;
    check_load(&c, &s).await;
    converge(&c).await;
}

/// A read replica added to a running cluster: `standby add-replica` through the client
/// library, the new server started with a file listing the cluster and itself (remote, no
/// vote); it joins, copies the store and follows the commits, and subscribed clients are told
/// of the new topology without a restart. Then it is removed: the others stop talking to it
/// and it falls back to serving read-only what it had. Voters cannot be removed (their vote
/// goes first), ids are not reused, and clients cannot write the membership object.
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
    // The same server asked again (an operator's retry) changes nothing; another server
    // with its id is refused.
    let again = cl
        .change_membership(
            MembershipChange::Add(added.clone()),
            Duration::from_secs(10),
        )
        .await;
    assert!(again.is_ok(), "asked again: {again:?}");
    let other = AddedServer {
        name: "other".into(),
        ..added
    };
    let taken = cl
        .change_membership(MembershipChange::Add(other), Duration::from_secs(10))
        .await;
    assert!(taken.is_err(), "an id is used once: {taken:?}");
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

    // Remove it: the cluster carries on without it, and the removed server, once it hears
    // of its removal, leaves the ring for good and exits with status 0 (a supervisor does not
    // restart it).
    cl.change_membership(MembershipChange::Remove(3), Duration::from_secs(10))
        .await
        .unwrap();
    let mut exited = None;
    for _ in 0..200 {
        if let Some(Some(child)) = c.children.get_mut(3) {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.unwrap_or_else(|| panic!("r3 still running:\n{}", c.logs()));
    assert!(status.success(), "r3 exited with {status}:\n{}", c.logs());
    put(&mut cl, "after-remove").await;
    assert!(
        !cl.topology().contains_key(&3),
        "the topology still lists r3: {:?}",
        cl.topology()
    );
    let primary = primary_of(&c).await;
    assert_ne!(primary, 3);
}
