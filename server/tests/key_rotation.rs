//! The cluster key rotated twice on three running `standby-server` processes under a write
//! load: `standby keygen --rotate`, then SIGHUP to every server. The servers move to each new
//! key together and drop the old one, with no view change and no failed request; afterwards
//! a server started with only the old key is shut out, and comes back with the new file.
#![cfg(feature = "cli")]

mod common;

use common::{check_acked, client, eventually, Cluster, Load};
use std::process::Command;
use std::time::Duration;

async fn status(c: &Cluster, i: u32) -> serde_json::Value {
    let (_, body) = c.admin_get(i, "/status").await.expect("status");
    serde_json::from_str(&body).expect("json")
}

async fn views(c: &Cluster) -> u64 {
    let mut n = 0;
    for i in 0..3 {
        n += status(c, i).await["gcs"]["views"].as_u64().unwrap();
    }
    n
}

/// Rotates and waits until every server seals with `key` and holds nothing else.
async fn rotate(c: &Cluster, key: u64) -> Duration {
    let out = Command::new(env!("CARGO_BIN_EXE_standby"))
        .args(["keygen", "--rotate", "--dir"])
        .arg(c.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = tokio::time::Instant::now();
    for i in 0..3 {
        c.signal(i, "-HUP");
    }
    for _ in 0..200 {
        let mut done = true;
        for i in 0..3 {
            let k = &status(c, i).await["keys"];
            done &= k["send"].as_u64() == Some(key) && k["held"] == serde_json::json!([key]);
        }
        if done {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = String::new();
    for i in 0..3 {
        s += &format!("s{i}: {}\n", status(c, i).await["keys"]);
    }
    panic!("rotation to key {key} did not complete:\n{s}{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_rotates_twice_under_load_without_a_view_change() {
    let mut c = Cluster::new(3);
    let _ = client(&c, 1).await;
    let load = Load::start(&c, 4, 64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let views_before = views(&c).await;
    for i in 0..3 {
        assert_eq!(status(&c, i).await["keys"]["send"], 1);
    }
    let took = rotate(&c, 2).await;
    eprintln!("rotation to key 2 complete after {took:?}");
    let key_file_2 = std::fs::read_to_string(c.dir.path().join("cluster.key")).unwrap();
    let took = rotate(&c, 3).await;
    eprintln!("rotation to key 3 complete after {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        views(&c).await,
        views_before,
        "a view changed during the rotations"
    );
    let s = load.stop().await;
    assert!(s.failed.is_empty(), "failed requests: {:?}", s.failed);
    assert!(s.acks.len() > 100, "the load ran: {}", s.acks.len());
    check_acked(&c, &s).await;

    // A server that has only key 2 is shut out...
    let old: Vec<_> = gcs::crypto::parse_key_file(&key_file_2)
        .unwrap()
        .into_iter()
        .filter(|(id, _)| *id == 2)
        .collect();
    std::fs::write(
        c.dir.path().join("old.key"),
        gcs::crypto::write_key_file(&old),
    )
    .unwrap();
    let conf = std::fs::read_to_string(&c.conf)
        .unwrap()
        .replace("key_file = \"cluster.key\"", "key_file = \"old.key\"");
    let old_conf = c.dir.path().join("standby-old-key.toml");
    std::fs::write(&old_conf, conf).unwrap();
    c.kill9(2);
    c.conf_of.insert(2, old_conf);
    c.start(2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2 {
        let v = status(&c, i).await["view"].clone();
        assert_eq!(
            v,
            serde_json::json!([0, 1]),
            "s{i}'s view with an old-key server up"
        );
    }
    let alone = status(&c, 2).await;
    assert_eq!(alone["view"], serde_json::json!([2]), "{alone}");
    // ... and back with the current file.
    c.kill9(2);
    c.conf_of.remove(&2);
    c.start(2);
    let back = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { status(&c, 0).await["view"] == serde_json::json!([0, 1, 2]) },
    )
    .await;
    assert!(
        back,
        "s2 did not rejoin with the current key:\n{}",
        c.logs()
    );
}
