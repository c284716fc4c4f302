//! Storage servers on separate hosts (network namespaces, ../shared/harness/netns-cluster):
//! three failover servers, one remote replica and a client host. Under a write workload from
//! the client host, the primary is partitioned away from everyone and healed, then the remote
//! replica is partitioned away and healed. Checks: no request fails for the application, no
//! acknowledged commit is lost, the remote replica never becomes primary, and every server
//! converges. Needs root: without it the test says so and returns.
#![cfg(feature = "cli")]

use std::path::Path;
use std::time::Duration;
use tests::netns::Harness;

const PREFIX: &str = "stbt";
const SUBNET: &str = "10.91.0";

#[allow(clippy::disallowed_methods)] // real processes, real time
fn sleep(d: Duration) {
    std::thread::sleep(d);
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// The server whose admin /primary answers 200, asked from the client host.
fn primary(h: &Harness) -> Option<u32> {
    primary_of(h, SUBNET, 5, 3)
}

/// The host (of `1..=servers` on `subnet`) whose admin /primary answers 200, asked from
/// `client`.
fn primary_of(h: &Harness, subnet: &str, client: u32, servers: u32) -> Option<u32> {
    (1..=servers).find(|i| {
        h.exec(
            client,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "-m",
                "1",
                &format!("http://{subnet}.{i}:7700/primary"),
            ],
        )
        .is_some()
    })
}

/// Writes `conf` as `<dir>/standby.toml` and starts `standby-server` on hosts `1..=n` (ids
/// from 0), each logging to `<dir>/s<host>.log`; the configuration's path.
fn start_servers(h: &Harness, dir: &Path, conf: &str, n: u32) -> String {
    let conf_path = dir.join("standby.toml");
    std::fs::write(&conf_path, conf).unwrap();
    let conf_s = conf_path.to_str().unwrap().to_string();
    for i in 1..=n {
        let data = dir.join(format!("s{i}"));
        let log = dir.join(format!("s{i}.log"));
        h.run(&[
            "exec",
            "-b",
            "--log",
            log.to_str().unwrap(),
            &i.to_string(),
            env!("CARGO_BIN_EXE_standby-server"),
            "--config",
            &conf_s,
            "--id",
            &(i - 1).to_string(),
            "--data",
            data.to_str().unwrap(),
        ]);
    }
    conf_s
}

#[test]
fn partitions_of_the_primary_and_of_a_remote_replica_lose_nothing() {
    let Some(h) = Harness::open(
        "partitions_of_the_primary_and_of_a_remote_replica_lose_nothing",
        PREFIX,
        SUBNET,
    ) else {
        return;
    };
    h.run(&["up", "5"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.key"), gcs::crypto::keygen([9; 32])).unwrap();
    std::fs::write(dir.path().join("client.token"), "netns-token").unwrap();
    let mut conf =
        String::from("key_file = \"cluster.key\"\nclient_token_file = \"client.token\"\nclient_plaintext = true\n");
    for i in 1..=4u32 {
        let kind = if i == 4 { "remote" } else { "failover" };
        let weight = if i == 4 { 0 } else { 1 };
        conf += &format!(
            "[[server]]\nid = {}\nname = \"s{}\"\ngcs = \"{SUBNET}.{i}:7400\"\nclient = \"{SUBNET}.{i}:7600\"\nadmin = \"{SUBNET}.{i}:7700\"\ngroup = \"{}\"\nkind = \"{kind}\"\nweight = {weight}\n",
            i - 1,
            i - 1,
            if i == 4 { "dr" } else { "main" }
        );
    }
    conf += "[protocol]\ntoken_timeout_ms = 300\ntoken_retransmit_timeout_ms = 60\njoin_timeout_ms = 40\nconsensus_timeout_ms = 400\nmerge_detect_interval_ms = 150\n";
    let conf_s = start_servers(&h, dir.path(), &conf, 4);
    let logs = || {
        (1..=4)
            .map(|i| {
                let t = std::fs::read_to_string(dir.path().join(format!("s{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(12).collect();
                format!(
                    "--- s{}\n{}",
                    i - 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut p = None;
    for _ in 0..100 {
        p = primary(&h);
        if p.is_some() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let p = p.unwrap_or_else(|| panic!("no primary:\n{}", logs()));
    // The workload runs on host 5 for 16 s.
    let wl_log = dir.path().join("workload.log");
    let wl: u32 = h
        .run(&[
            "exec",
            "-b",
            "--log",
            wl_log.to_str().unwrap(),
            "5",
            env!("CARGO_BIN_EXE_standby"),
            "--config",
            &conf_s,
            "workload",
            "--seconds",
            "16",
            "--clients",
            "4",
        ])
        .parse()
        .expect("pid");
    sleep(Duration::from_secs(3));
    // The primary is cut off from everyone (the client host included).
    let others: Vec<String> = (1..=5).filter(|i| *i != p).map(|i| i.to_string()).collect();
    h.run(&["partition", &format!("{p}|{}", others.join(","))]);
    sleep(Duration::from_secs(4));
    let during = primary(&h);
    assert!(
        during.is_some() && during != Some(p),
        "a new primary on the majority side: {during:?}\n{}",
        logs()
    );
    h.run(&["heal"]);
    sleep(Duration::from_secs(3));
    // The remote replica is cut off, then comes back and catches up.
    h.run(&["partition", "4|1,2,3,5"]);
    sleep(Duration::from_secs(3));
    h.run(&["heal"]);
    // The workload finishes and checks every acknowledged write.
    for _ in 0..400 {
        if !alive(wl) {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let out = std::fs::read_to_string(&wl_log).unwrap_or_default();
    assert!(
        out.contains(" 0 failed; lost commits: 0 "),
        "workload:\n{out}\n{}",
        logs()
    );
    eprintln!("{out}");
    // Every server (the remote replica too) at the same last tid; the remote one never primary.
    let mut converged = false;
    let mut last = String::new();
    for _ in 0..100 {
        last = h
            .exec(
                5,
                &[env!("CARGO_BIN_EXE_standby"), "--config", &conf_s, "status"],
            )
            .unwrap_or_default();
        let tids: Vec<&str> = last
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(3))
            .collect();
        if tids.len() == 4 && tids.iter().all(|t| *t == tids[0]) {
            converged = true;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    assert!(converged, "status:\n{last}\n{}", logs());
    let remote_log = std::fs::read_to_string(dir.path().join("s4.log")).unwrap_or_default();
    assert!(
        !remote_log.contains("role=Primary"),
        "the remote replica became primary"
    );
}

/// A replica cut off from the other servers under writes (the client host still reaches it):
/// `standby get --server R --max-staleness-ms 1000` is refused once a second has passed, an
/// unbounded `standby get --server R` is served and says for how long R may have missed
/// commits, and after the heal the bounded read is served again.
#[test]
fn a_partitioned_replica_refuses_reads_bounded_in_time() {
    let Some(h) = Harness::open(
        "a_partitioned_replica_refuses_reads_bounded_in_time",
        "stbl",
        "10.92.0",
    ) else {
        return;
    };
    let subnet = "10.92.0";
    h.run(&["up", "4"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cluster.key"),
        gcs::crypto::keygen([11; 32]),
    )
    .unwrap();
    std::fs::write(dir.path().join("client.token"), "netns-token").unwrap();
    let mut conf =
        String::from("key_file = \"cluster.key\"\nclient_token_file = \"client.token\"\nclient_plaintext = true\n");
    for i in 1..=3u32 {
        conf += &format!(
            "[[server]]\nid = {}\nname = \"s{}\"\ngcs = \"{subnet}.{i}:7400\"\nclient = \"{subnet}.{i}:7600\"\nadmin = \"{subnet}.{i}:7700\"\n",
            i - 1,
            i - 1
        );
    }
    let conf_s = start_servers(&h, dir.path(), &conf, 3);
    let standby = |args: &[&str]| -> Option<String> {
        let mut cmd = vec![env!("CARGO_BIN_EXE_standby"), "--config", &conf_s];
        cmd.extend_from_slice(args);
        h.exec(4, &cmd)
    };
    let mut put = None;
    for _ in 0..100 {
        put = standby(&["put", "probe", "v1"]);
        if put.is_some() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    assert!(put.is_some(), "no write accepted");
    // Which server is primary, asked from the client host; the replica is another.
    let mut primary = None;
    for _ in 0..50 {
        primary = primary_of(&h, subnet, 4, 3);
        if primary.is_some() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let primary = primary.expect("a primary");
    let r = primary % 3 + 1; // host of the replica
    let rid = (r - 1).to_string();
    let bounded = [
        "get",
        "probe",
        "--server",
        &rid,
        "--max-staleness-ms",
        "1000",
    ];
    // Right after start-up the ring may still be merging: a read then is served but says how
    // long the replica may have missed commits. Wait (bounded) for the steady state the test
    // starts from: a bounded read served by a replica that says it is current.
    let mut served = None;
    for _ in 0..50 {
        served = standby(&bounded);
        if served.as_deref().is_some_and(|s| s.contains("current")) {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let served = served.expect("the replica serves a bounded read while current");
    assert!(served.contains("current"), "{served}");
    // Writes go on while the replica is cut off from the other servers.
    let wl_log = dir.path().join("workload.log");
    h.run(&[
        "exec",
        "-b",
        "--log",
        wl_log.to_str().unwrap(),
        "4",
        env!("CARGO_BIN_EXE_standby"),
        "--config",
        &conf_s,
        "workload",
        "--seconds",
        "6",
        "--clients",
        "2",
    ]);
    sleep(Duration::from_millis(500));
    let others: Vec<String> = (1..=3u32)
        .filter(|i| *i != r)
        .map(|i| i.to_string())
        .collect();
    h.run(&["partition", &format!("{r}|{}", others.join(","))]);
    sleep(Duration::from_millis(2500));
    assert!(
        standby(&bounded).is_none(),
        "a replica cut off 2.5 s ago served a read bounded to 1 s"
    );
    let unbounded = standby(&["get", "probe", "--server", &rid])
        .expect("an unbounded read is served by the cut-off replica");
    assert!(
        unbounded.contains("may have missed commits for"),
        "{unbounded}"
    );
    let secs: f64 = unbounded
        .split("may have missed commits for ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("seconds");
    assert!(secs >= 2.0, "{unbounded}");
    eprintln!("cut-off replica: {unbounded}");
    h.run(&["heal"]);
    let mut back = false;
    for _ in 0..100 {
        if standby(&bounded).is_some() {
            back = true;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    assert!(
        back,
        "the replica never served a bounded read again after the heal"
    );
}
