//! Multi-process tests: separate `gcs-probe` daemon processes on 127.0.0.x with the cluster key,
//! real faults (kill -9, SIGSTOP/SIGCONT, restart), and the simulator's EVS checkers on what the
//! processes logged.

use gcs::Time;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::{check_probe_logs, wall_us};

struct Probe {
    child: Child,
    log: std::path::PathBuf,
    killed_at: Option<Time>,
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn sleep_until_us(t: u64) {
    let now = wall_us();
    if t > now {
        // A multi-process test waits in real time for real processes.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_micros(t - now));
    }
}

fn spawn(dir: &std::path::Path, id: u32, tag: &str, send_until: u64, until: u64) -> Probe {
    let log = dir.join(format!("probe-{id}-{tag}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_gcs-probe"))
        .args(["--config", dir.join("cluster.toml").to_str().unwrap()])
        .args(["--key", dir.join("key").to_str().unwrap()])
        .args(["--id", &id.to_string(), "--rate", "150"])
        .args([
            "--send-until",
            &send_until.to_string(),
            "--until",
            &until.to_string(),
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gcs-probe");
    Probe {
        child,
        log,
        killed_at: None,
    }
}

#[test]
fn five_daemon_processes_survive_kill_pause_and_restart_with_evs_intact() {
    let dir = tempfile_dir();
    let port = tests::free_udp_addrs(1)[0].port();
    let mut toml = String::new();
    for i in 0..5 {
        toml += &format!(
            "[[daemon]]\nid = {i}\naddr = \"127.0.0.{}:{port}\"\n",
            i + 1
        );
    }
    toml += "[protocol]\ntoken_timeout_ms = 300\ntoken_retransmit_timeout_ms = 30\ntoken_hold_ms = 5\njoin_timeout_ms = 30\nconsensus_timeout_ms = 300\nmerge_detect_interval_ms = 100\npause_grace_ms = 200\n";
    std::fs::write(dir.join("cluster.toml"), toml).unwrap();
    std::fs::write(dir.join("key"), gcs::crypto::keygen([42u8; 32])).unwrap();

    let t0 = wall_us();
    let s = 1_000_000u64;
    let (send_until, until) = (t0 + 11 * s, t0 + 14 * s);
    let mut probes: Vec<Probe> = (0..5)
        .map(|i| spawn(&dir, i, "a", send_until, until))
        .collect();

    sleep_until_us(t0 + 3 * s);
    signal(probes[4].child.id(), "-KILL");
    probes[4].killed_at = Some(Time(wall_us()));
    sleep_until_us(t0 + 4 * s);
    signal(probes[3].child.id(), "-STOP");
    sleep_until_us(t0 + 5 * s + s / 2);
    signal(probes[3].child.id(), "-CONT");
    sleep_until_us(t0 + 6 * s);
    probes.push(spawn(&dir, 4, "b", send_until, until));
    let calm_from = Time(t0 + 6 * s + s / 2);

    // Every probe stops by itself at `until`; kill any straggler by PID.
    sleep_until_us(until + 3 * s);
    for p in probes.iter_mut() {
        if p.child.try_wait().ok().flatten().is_none() {
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
    }
    let logs: Vec<_> = probes
        .iter()
        .map(|p| (p.log.clone(), p.killed_at))
        .collect();
    check_probe_logs(&logs, calm_from, Time(send_until), Time(until), 5_000);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gcs-probes-{}-{}", std::process::id(), wall_us()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
