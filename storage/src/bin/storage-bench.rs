//! Storage benchmark: durable and non-durable commit rates, scan throughput, checkpoint
//! time, on the RocksDB backend. Prints one line per figure.
//!
//! `cargo run -p storage --release --features bench --bin storage-bench -- --help`

// A benchmark measures wall-clock time: the clock lint is for library code.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use storage::{
    Direction, Oid, Record, RocksOptions, RocksStorage, Storage, StorageError, Tid, TidRange,
    Transaction, TxnMeta,
};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks the RocksDB storage backend")]
struct Args {
    /// Working directory (created, and removed at the end).
    #[arg(long, default_value = "/tmp/storage-bench")]
    dir: PathBuf,
    /// Seconds per commit-rate measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Object sizes for the commit-rate measurements, in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,10240")]
    sizes: Vec<usize>,
    /// Concurrent committers for the commit-rate measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    committers: Vec<usize>,
    /// Objects per transaction.
    #[arg(long, default_value_t = 10)]
    objects_per_txn: usize,
    /// History to write for the scan measurements, in MiB of object data.
    #[arg(long, default_value_t = 1024)]
    history_mib: u64,
    /// Object size in the history, in bytes.
    #[arg(long, default_value_t = 10240)]
    history_object_size: usize,
    /// Distinct objects in the history (older revisions accumulate behind them).
    #[arg(long, default_value_t = 20_000)]
    history_objects: u64,
    /// Skip the commit-rate measurements.
    #[arg(long)]
    skip_commits: bool,
}

fn payload(size: usize, seed: u64) -> Bytes {
    // Not compressible to nothing, cheap to make.
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    Bytes::from(v)
}

fn txn(tid: u64, oids: impl Iterator<Item = u64>, data: &Bytes) -> Transaction {
    Transaction {
        tid: Tid(tid),
        meta: TxnMeta {
            user: Bytes::from_static(b"bench"),
            description: Bytes::new(),
            extension: Bytes::new(),
            time: tid,
            request: None,
        },
        records: oids
            .map(|o| Record {
                oid: Oid::from_u64(o),
                data: Some(data.clone()),
                expected_serial: None,
            })
            .collect(),
    }
}

struct Rate {
    commits_per_s: f64,
    mb_per_s: f64,
    retries: u64,
}

fn commit_rate(dir: &Path, sync: bool, committers: usize, size: usize, args: &Args) -> Rate {
    let _ = std::fs::remove_dir_all(dir);
    let s = RocksStorage::open(
        dir,
        RocksOptions {
            sync,
            ..RocksOptions::default()
        },
    )
    .expect("open");
    let next_tid = AtomicU64::new(1);
    let done = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let per = args.objects_per_txn as u64;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for th in 0..committers as u64 {
            let (s, next_tid, done, retries, stop) = (&s, &next_tid, &done, &retries, &stop);
            scope.spawn(move || {
                let data = payload(size, th + 1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Each committer writes its own objects (no conflicts), reusing 1000 of them.
                    let base = (th << 32) + (n % 1000) * per;
                    loop {
                        let tid = next_tid.fetch_add(1, Ordering::SeqCst);
                        match s.commit(&txn(tid, base..base + per, &data)) {
                            Ok(()) => break,
                            // Another committer's larger tid was written first: draw again.
                            Err(StorageError::NonIncreasingTid { .. }) => {
                                retries.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("commit: {e}"),
                        }
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while start.elapsed() < Duration::from_secs_f64(args.seconds) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
    Rate {
        commits_per_s: n / secs,
        mb_per_s: n * (per as f64) * size as f64 / secs / 1e6,
        retries: retries.load(Ordering::Relaxed),
    }
}

fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("create the working directory");
    println!(
        "storage-bench: dir {}, {} objects/txn, {:.1} s per rate",
        args.dir.display(),
        args.objects_per_txn,
        args.seconds
    );

    if !args.skip_commits {
        for &size in &args.sizes {
            for &committers in &args.committers {
                let dur = commit_rate(&args.dir.join("commits"), true, committers, size, &args);
                let non = commit_rate(&args.dir.join("commits"), false, committers, size, &args);
                println!(
                    "commit size={size}B committers={committers}: durable {:.0} commits/s ({:.1} MB/s, {} tid retries); non-durable {:.0} commits/s ({:.1} MB/s, {} tid retries); durable/non-durable {:.0}%",
                    dur.commits_per_s,
                    dur.mb_per_s,
                    dur.retries,
                    non.commits_per_s,
                    non.mb_per_s,
                    non.retries,
                    100.0 * dur.commits_per_s / non.commits_per_s
                );
            }
        }
    }

    // History for the scans.
    let hdir = args.dir.join("history");
    let _ = std::fs::remove_dir_all(&hdir);
    let s = RocksStorage::open(
        &hdir,
        RocksOptions {
            sync: false,
            ..RocksOptions::default()
        },
    )
    .expect("open");
    let target = args.history_mib << 20;
    let per = args.objects_per_txn as u64;
    let txn_bytes = per * args.history_object_size as u64;
    let txns = target.div_ceil(txn_bytes);
    let start = Instant::now();
    let mut next_oid = 0u64;
    for tid in 1..=txns {
        let data = payload(args.history_object_size, tid);
        let oids: Vec<u64> = (0..per)
            .map(|_| {
                next_oid = (next_oid + 1) % args.history_objects;
                next_oid
            })
            .collect();
        s.commit(&txn(tid, oids.into_iter(), &data))
            .expect("commit");
    }
    s.sync().expect("sync");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "history: wrote {txns} transactions, {:.0} MiB of object data ({} objects, {} B each) in {secs:.1} s ({:.0} MB/s, non-durable)",
        (txns * txn_bytes) as f64 / (1 << 20) as f64,
        args.history_objects.min(txns * per),
        args.history_object_size,
        (txns * txn_bytes) as f64 / secs / 1e6
    );

    for dir in [Direction::Forward, Direction::Reverse] {
        let start = Instant::now();
        let (mut n, mut bytes) = (0u64, 0u64);
        for t in s.iter(TidRange::ALL, dir).expect("iter") {
            let t = t.expect("iter item");
            n += 1;
            bytes += t
                .records
                .iter()
                .map(|r| r.data.as_ref().map_or(0, |d| d.len()) as u64)
                .sum::<u64>();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "iter {dir:?}: {n} transactions, {:.0} MiB in {secs:.2} s = {:.0} MB/s",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / secs / 1e6
        );
    }

    for (label, since) in [
        ("all objects", Tid::ZERO),
        ("changed in the last half", Tid(txns / 2)),
    ] {
        let start = Instant::now();
        let fr = s.fast_recovery(since, None).expect("fast_recovery");
        let (mut n, mut bytes) = (0u64, 0u64);
        for r in fr.revisions {
            let r = r.expect("revision");
            n += 1;
            bytes += r.data.as_ref().map_or(0, |d| d.len()) as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "fast_recovery ({label}): {n} revisions, {:.0} MiB in {secs:.2} s = {:.0} MB/s",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / secs / 1e6
        );
    }

    let cp = args.dir.join("checkpoint");
    let _ = std::fs::remove_dir_all(&cp);
    let start = Instant::now();
    let tid = s.checkpoint(&cp).expect("checkpoint");
    let secs = start.elapsed().as_secs_f64();
    let c = RocksStorage::open(&cp, RocksOptions::default()).expect("open checkpoint");
    assert_eq!(c.last_transaction().expect("last"), tid);
    println!(
        "checkpoint: {:.3} s (holds tid {}), opens as a store",
        secs, tid.0
    );
    drop(c);
    drop(s);
    std::fs::remove_dir_all(&args.dir).expect("clean up");
}
