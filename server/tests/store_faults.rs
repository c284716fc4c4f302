//! Stores that fail, in real processes (`standby-server` with RocksDB on loopback):
//!
//! - A disk that fills up (a small tmpfs per server, filled by the test) on the primary, then
//!   on a backup, under a write load: the failed server leaves the ring and exits with status
//!   75 (its `/health` says why meanwhile), writes flow on without it, nothing acknowledged is
//!   lost, and once space is freed the restarted server catches up. Needs root to mount the
//!   tmpfs: without it the test says so and returns.
//! - A store corrupt at start-up is refused with status 78 and a message naming the fault and
//!   the rebuild command; `--rebuild` sets it aside and refills it from the others;
//!   `--verify` reads a whole store and finds a flipped byte in a table file.
#![cfg(feature = "cli")]

mod common;

use common::{check_acked, client, converge, primary_of, put, status_at, Cluster, Load};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Small tmpfs mounts, unmounted when dropped.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Fills the file system holding `dir` to the last byte; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x33u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", dir.display());
            break;
        }
    }
    // What is left is smaller than a chunk: take it byte by byte.
    while f.write_all(&[0x33]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// Polls server `i`'s `/health` until it answers 503 (then returns its body) or the process
/// is gone.
async fn health_failure(c: &Cluster, i: u32, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Some((503, body)) = c.admin_get(i, "/health").await {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until server `i` is a backup at or past the primary's last transaction.
async fn caught_up(c: &Cluster, i: u32) {
    let mut cl = client(c, 77).await;
    let target = put(&mut cl, "catch-up-mark").await;
    for _ in 0..400 {
        if let Some(st) = status_at(&c.clients[i as usize]).await {
            if st.last_tid >= target && st.role == replica::Role::Backup {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("s{i} did not catch up to {target:?}:\n{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_primary_then_on_a_backup_loses_nothing() {
    let test = "a_full_disk_on_the_primary_then_on_a_backup_loses_nothing";
    if !tests::netns::is_root() {
        eprintln!("SKIPPED {test}: needs root to mount a small tmpfs per server");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let mut mounts = Mounts(Vec::new());
    let mut data_of = BTreeMap::new();
    for i in 0..3u32 {
        let m = base.path().join(format!("m{i}"));
        std::fs::create_dir_all(&m).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
            .arg(&m)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", m.display());
        mounts.0.push(m.clone());
        data_of.insert(i, m.join("data"));
    }
    let mut c = Cluster::with(3, data_of, false);
    c.args = vec!["--store-failure-exit-after".into(), "1".into()];
    for i in 0..3 {
        c.start(i);
    }
    let load = Load::start(&c, 4, 8 << 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. The primary's disk fills up.
    let p = primary_of(&c).await;
    let filler = fill(&mounts.0[p as usize]);
    let filled_at = tokio::time::Instant::now();
    let body = health_failure(&c, p, Duration::from_secs(40))
        .await
        .unwrap_or_else(|| panic!("s{p}'s /health never said it failed:\n{}", c.logs()));
    let failed_at = tokio::time::Instant::now();
    assert!(
        body.contains("No space left on device"),
        "/health does not say why: {body}"
    );
    let status = c.wait_exit(p, Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(75),
        "s{p} did not exit with status 75:\n{}",
        c.logs()
    );
    let log = std::fs::read_to_string(c.log_path(p)).unwrap();
    assert!(log.contains("store failed"), "no log line says why:\n{log}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = load
        .first_ack_after(failed_at)
        .unwrap_or_else(|| panic!("no commit after the primary's disk filled:\n{}", c.logs()));
    eprintln!(
        "full disk on the primary: failure noticed {:?} after the disk filled, writes flowing on a new primary {:?} after that",
        failed_at - filled_at,
        resumed - failed_at
    );
    assert!(
        resumed - failed_at < Duration::from_secs(3),
        "writes paused {:?}",
        resumed - failed_at
    );
    assert_ne!(primary_of(&c).await, p);
    // Space is freed; the supervisor (this test) restarts it and it catches up.
    std::fs::remove_file(&filler).unwrap();
    c.start(p);
    caught_up(&c, p).await;

    // 2. A backup's disk fills up: the cluster goes on.
    let p = primary_of(&c).await;
    let b = (p + 1) % 3;
    let filler = fill(&mounts.0[b as usize]);
    health_failure(&c, b, Duration::from_secs(40))
        .await
        .unwrap_or_else(|| panic!("s{b}'s /health never said it failed:\n{}", c.logs()));
    let failed_at = tokio::time::Instant::now();
    let status = c.wait_exit(b, Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(75), "{}", c.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = load
        .first_ack_after(failed_at)
        .unwrap_or_else(|| panic!("no commit after the backup failed:\n{}", c.logs()));
    eprintln!(
        "full disk on a backup: a commit acknowledged {:?} after the failure",
        first - failed_at
    );
    assert!(
        first - failed_at < Duration::from_secs(3),
        "writes paused {:?} for a backup's failure",
        first - failed_at
    );
    assert!(
        load.first_ack_after(failed_at + Duration::from_millis(1500))
            .is_some(),
        "writes stopped after the backup failed:\n{}",
        c.logs()
    );
    assert_eq!(
        primary_of(&c).await,
        p,
        "a backup's failure moved the primary"
    );
    std::fs::remove_file(&filler).unwrap();
    c.start(b);
    caught_up(&c, b).await;

    let s = load.stop().await;
    assert!(
        s.failed.is_empty(),
        "the application saw errors: {:?}\n{}",
        s.failed,
        c.logs()
    );
    assert!(s.acked.len() > 50, "the load ran: {} keys", s.acked.len());
    check_acked(&c, &s).await;
    converge(&c).await;
    drop(c);
    drop(mounts);
}

/// Overwrites `len` bytes of `file` at `at` with garbage.
fn garble(file: &Path, at: u64, len: usize) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&vec![0xA5; len]).unwrap();
    f.sync_all().unwrap();
}

fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    v.sort();
    v
}

fn store_dir(data: &Path) -> PathBuf {
    data.join(
        std::fs::read_to_string(data.join("CURRENT"))
            .unwrap()
            .trim(),
    )
}

fn verify(c: &Cluster, i: u32) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_standby-server"))
        .args(["--config"])
        .arg(&c.conf)
        .args(["--id", &i.to_string(), "--data"])
        .arg(c.data(i))
        .arg("--verify")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_refused_and_rebuilt_from_the_others() {
    let mut c = Cluster::new(3);
    let mut cl = client(&c, 1).await;
    for i in 0..40 {
        put(&mut cl, &format!("before-{i}")).await;
    }
    let p = primary_of(&c).await;
    let v = (p + 1) % 3;
    c.kill9(v);

    // A garbled manifest: refused with 78, the fault and the command named.
    let manifest = files(&store_dir(&c.data(v)), "MANIFEST-", "")
        .pop()
        .expect("a manifest");
    let len = std::fs::metadata(&manifest).unwrap().len();
    garble(&manifest, len / 3, 32);
    c.start(v);
    let status = c.wait_exit(v, Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(c.log_path(v)).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(78),
        "a corrupt store was not refused:\n{log}"
    );
    assert!(log.contains("is corrupt"), "{log}");
    assert!(
        log.contains("--rebuild"),
        "the rebuild command is not named:\n{log}"
    );

    // Rebuilt from the others, with more commits meanwhile (past `checkpoint_after`: it
    // comes as a checkpoint, with table files).
    for i in 0..150 {
        put(&mut cl, &format!("during-{i}")).await;
    }
    c.start_with(v, &["--rebuild"]);
    caught_up(&c, v).await;
    assert!(
        c.data(v)
            .join("corrupt-0")
            .join(manifest.file_name().unwrap())
            .exists(),
        "the corrupt store is not kept aside"
    );

    // --verify: sound, then a flipped byte in a table file is found.
    c.kill9(v);
    let (code, text) = verify(&c, v);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("sound"), "{text}");
    let tables = files(&store_dir(&c.data(v)), "", ".sst");
    let table = tables
        .iter()
        .max_by_key(|t| std::fs::metadata(t).unwrap().len())
        .expect("the checkpoint brought table files");
    garble(table, 100, 16);
    let (code, text) = verify(&c, v);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("corrupt") && text.contains("--rebuild"),
        "{text}"
    );

    // Rebuilt again, it serves as before.
    c.start_with(v, &["--rebuild"]);
    caught_up(&c, v).await;
    converge(&c).await;
}
