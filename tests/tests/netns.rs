//! Multi-host tests: `gcs-probe` daemons in network namespaces (../shared/harness/netns-cluster),
//! one per host, through partitions, heal, 20 % loss, 50 ms delay, kill -9 and SIGSTOP/SIGCONT;
//! the simulator's EVS checkers judge what every daemon logged. Needs root: without it the test
//! says so and is counted as skipped by its message (it does not pretend to have run).

use gcs::Time;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::netns::Harness;
use tests::{check_probe_logs, wall_us};

/// The tests share one harness cluster name: they take turns.
static HARNESS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sleep_until_us(t: u64) {
    let now = wall_us();
    if t > now {
        #[allow(clippy::disallowed_methods)] // real processes, real time
        std::thread::sleep(Duration::from_micros(t - now));
    }
}

fn start(
    h: &Harness,
    dir: &Path,
    node: u32,
    tag: &str,
    send_until: u64,
    until: u64,
) -> (u32, PathBuf) {
    let log = dir.join(format!("probe-{node}-{tag}.log"));
    let pid = h.run(&[
        "exec",
        "-b",
        "--log",
        log.to_str().unwrap(),
        &node.to_string(),
        env!("CARGO_BIN_EXE_gcs-probe"),
        "--config",
        dir.join("cluster.toml").to_str().unwrap(),
        "--key",
        dir.join("key").to_str().unwrap(),
        "--id",
        &(node - 1).to_string(),
        "--rate",
        "100",
        "--send-until",
        &send_until.to_string(),
        "--until",
        &until.to_string(),
    ]);
    (pid.parse().expect("pid"), log)
}

#[test]
fn five_hosts_through_partition_loss_delay_kill_and_pause_keep_evs() {
    let _turn = HARNESS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(h) = Harness::open(
        "five_hosts_through_partition_loss_delay_kill_and_pause_keep_evs",
        "gcst",
        "10.90.0",
    ) else {
        return;
    };
    h.run(&["up", "5"]);
    let dir = std::env::temp_dir().join(format!("gcs-netns-{}", wall_us()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = String::new();
    for i in 1..=5 {
        toml += &format!("[[daemon]]\nid = {}\naddr = \"10.90.0.{i}:7400\"\n", i - 1);
    }
    toml += "[protocol]\ntoken_timeout_ms = 400\ntoken_retransmit_timeout_ms = 60\ntoken_hold_ms = 10\njoin_timeout_ms = 40\nconsensus_timeout_ms = 400\nmerge_detect_interval_ms = 150\npause_grace_ms = 250\n";
    std::fs::write(dir.join("cluster.toml"), toml).unwrap();
    std::fs::write(dir.join("key"), gcs::crypto::keygen([7u8; 32])).unwrap();

    let s = 1_000_000u64;
    let t0 = wall_us() + s;
    let (send_until, until) = (t0 + 22 * s, t0 + 26 * s);
    let mut procs: Vec<(u32, PathBuf, Option<Time>)> = (1..=5)
        .map(|n| {
            let (pid, log) = start(&h, &dir, n, "a", send_until, until);
            (pid, log, None)
        })
        .collect();
    sleep_until_us(t0 + 3 * s);
    h.run(&["partition", "1,2|3,4,5"]);
    sleep_until_us(t0 + 6 * s);
    h.run(&["heal"]);
    h.run(&["loss", "3", "20"]);
    sleep_until_us(t0 + 9 * s);
    h.run(&["clear", "3"]);
    h.run(&["delay", "2", "50", "5"]);
    sleep_until_us(t0 + 12 * s);
    h.run(&["clear", "2"]);
    let _ = Command::new("kill")
        .args(["-KILL", &procs[4].0.to_string()])
        .status();
    procs[4].2 = Some(Time(wall_us()));
    sleep_until_us(t0 + 13 * s);
    let _ = Command::new("kill")
        .args(["-STOP", &procs[3].0.to_string()])
        .status();
    sleep_until_us(t0 + 14 * s + s / 2);
    let _ = Command::new("kill")
        .args(["-CONT", &procs[3].0.to_string()])
        .status();
    sleep_until_us(t0 + 15 * s);
    let (pid, log) = start(&h, &dir, 5, "b", send_until, until);
    procs.push((pid, log, None));
    let calm_from = Time(t0 + 16 * s);
    sleep_until_us(until + 3 * s);
    for (pid, _, _) in &procs {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let logs: Vec<_> = procs
        .iter()
        .map(|(_, log, killed)| (log.clone(), *killed))
        .collect();
    check_probe_logs(&logs, calm_from, Time(send_until), Time(until), 5_000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_hosts_with_ip_multicast_form_a_ring_and_deliver() {
    let _turn = HARNESS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(h) = Harness::open(
        "three_hosts_with_ip_multicast_form_a_ring_and_deliver",
        "gcst",
        "10.90.0",
    ) else {
        return;
    };
    h.run(&["up", "3"]);
    let dir = std::env::temp_dir().join(format!("gcs-netns-mc-{}", wall_us()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = String::new();
    for i in 1..=3 {
        toml += &format!("[[daemon]]\nid = {}\naddr = \"10.90.0.{i}:7400\"\n", i - 1);
    }
    toml += "[protocol]\ntoken_timeout_ms = 400\ntoken_retransmit_timeout_ms = 60\ntoken_hold_ms = 10\njoin_timeout_ms = 40\nconsensus_timeout_ms = 400\nmerge_detect_interval_ms = 150\n[socket]\nmulticast = \"239.192.77.1:7500\"\n";
    std::fs::write(dir.join("cluster.toml"), toml).unwrap();
    std::fs::write(dir.join("key"), gcs::crypto::keygen([8u8; 32])).unwrap();
    let s = 1_000_000u64;
    let t0 = wall_us() + s;
    let (send_until, until) = (t0 + 4 * s, t0 + 6 * s);
    let procs: Vec<(u32, PathBuf)> = (1..=3)
        .map(|n| start(&h, &dir, n, "a", send_until, until))
        .collect();
    sleep_until_us(until + 2 * s);
    for (pid, _) in &procs {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let logs: Vec<_> = procs.iter().map(|(_, log)| (log.clone(), None)).collect();
    check_probe_logs(&logs, Time(t0), Time(send_until), Time(until), 2_000);
    let _ = std::fs::remove_dir_all(&dir);
}
