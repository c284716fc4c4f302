//! RocksDB-only tests: corruption, checkpoints, and the SIGKILL crash test.
#![cfg(feature = "rocksdb")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use storage::testing::suite::{oid, txn};
use storage::{
    Direction, Oid, Record, RocksOptions, RocksStorage, Storage, StorageError, Tid, TidRange,
    Transaction, TxnMeta,
};

fn opts(sync: bool) -> RocksOptions {
    RocksOptions {
        sync,
        block_cache_bytes: 4 << 20,
        ..storage::RocksOptions::default()
    }
}

fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    let cfs = ["txn", "revisions", "lost", "meta"];
    rocksdb::DB::open_cf(&rocksdb::Options::default(), path, cfs).unwrap()
}

/// The escaped oid that starts every key of its revisions (`0x00` becomes `0x00 0x01`,
/// `0x00 0x00` ends it), as the store writes it.
fn rev_prefix(o: &Oid) -> Vec<u8> {
    let mut k = Vec::new();
    for &b in o.as_bytes() {
        k.push(b);
        if b == 0 {
            k.push(1);
        }
    }
    k.extend_from_slice(&[0, 0]);
    k
}

/// The `revisions` key of `o` at `tid`: its prefix, then the tid inverted.
fn rev_key(o: &Oid, tid: u64) -> Vec<u8> {
    let mut k = rev_prefix(o);
    k.extend_from_slice(&(!tid).to_be_bytes());
    k
}

/// The oid of a `revisions` key.
fn rev_oid(k: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while !(k[i] == 0 && k[i + 1] == 0) {
        out.push(k[i]);
        i += if k[i] == 0 { 2 } else { 1 };
    }
    out
}

#[test]
fn corrupt_values_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path(), opts(true)).unwrap();
    s.commit(&txn(1, &[(1, Some("hello")), (2, Some("world"))]))
        .unwrap();
    s.commit(&txn(2, &[(1, Some("again"))])).unwrap();
    let big = "b".repeat(2000);
    s.commit(&txn(3, &[(3, Some(&big))])).unwrap();
    s.set_replication_state(b"epoch 3").unwrap();
    drop(s);
    {
        let db = raw_db(dir.path());
        // Flip a byte of the replication state.
        let meta = db.cf_handle("meta").unwrap();
        let mut v = db.get_cf(meta, b"replication").unwrap().unwrap();
        v[4] ^= 0x01;
        db.put_cf(meta, b"replication", v).unwrap();
        // Flip a byte of oid 1's current revision.
        let revs = db.cf_handle("revisions").unwrap();
        let k1 = rev_key(&oid(1), 2);
        let mut v = db.get_cf(revs, &k1).unwrap().unwrap();
        let n = v.len();
        v[n - 6] ^= 0x40;
        db.put_cf(revs, &k1, v).unwrap();
        // Truncate oid 2's current revision.
        let k2 = rev_key(&oid(2), 1);
        let v = db.get_cf(revs, &k2).unwrap().unwrap();
        db.put_cf(revs, &k2, &v[..v.len() - 3]).unwrap();
        // Replace record 1 of transaction 3 (oid 3's large state, which its revision names)
        // with a value of another format version.
        let txn_cf = db.cf_handle("txn").unwrap();
        let mut key = 3u64.to_be_bytes().to_vec();
        key.extend_from_slice(&1u32.to_be_bytes());
        let mut v = db.get_cf(txn_cf, &key).unwrap().unwrap();
        v[0] = 42;
        let n = v.len();
        let crc = crc32fast::hash(&v[..n - 4]);
        v[n - 4..].copy_from_slice(&crc.to_be_bytes());
        db.put_cf(txn_cf, &key, v).unwrap();
    }
    let s = RocksStorage::open(dir.path(), opts(true)).unwrap();
    let e = s.load(&oid(1)).unwrap_err();
    assert!(
        matches!(&e, StorageError::Corrupt { what } if what.contains("checksum")),
        "{e}"
    );
    let e = s.load(&oid(2)).unwrap_err();
    assert!(matches!(&e, StorageError::Corrupt { .. }), "{e}");
    let e = s.load(&oid(3)).unwrap_err();
    assert!(
        matches!(&e, StorageError::Corrupt { what } if what.contains("format version 42")),
        "{e}"
    );
    let e = s.history(&oid(1), 1).unwrap_err();
    assert!(matches!(&e, StorageError::Corrupt { .. }), "{e}");
    let r: Result<Vec<_>, _> = s.iter(TidRange::ALL, Direction::Forward).unwrap().collect();
    assert!(matches!(r, Err(StorageError::Corrupt { .. })));
    let r: Result<Vec<_>, _> = s.iter(TidRange::ALL, Direction::Reverse).unwrap().collect();
    assert!(matches!(r, Err(StorageError::Corrupt { .. })));
    let r: Result<Vec<_>, _> = s
        .fast_recovery(Tid::ZERO, None)
        .unwrap()
        .revisions
        .collect();
    assert!(matches!(r, Err(StorageError::Corrupt { .. })));
    let e = s.replication_state().unwrap_err();
    assert!(
        matches!(&e, StorageError::Corrupt { what } if what.contains("replication state")),
        "{e}"
    );
    // Readable data stays readable.
    assert_eq!(
        s.load_before(&oid(1), Tid(2)).unwrap().unwrap().data,
        Some(Bytes::from_static(b"hello"))
    );
    assert!(s.verify().is_err(), "verify reads every revision");
    // A new replication state replaces the corrupt one.
    s.set_replication_state(b"epoch 4").unwrap();
    assert_eq!(
        s.replication_state().unwrap(),
        Some(Bytes::from_static(b"epoch 4"))
    );
}

/// A RocksDB database in `path` with the column families `cfs`, made without the store.
fn raw_db_with(path: &std::path::Path, cfs: &[&str]) -> rocksdb::DB {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    rocksdb::DB::open_cf(&o, path, cfs).unwrap()
}

#[test]
fn foreign_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = raw_db_with(dir.path(), &["txn", "revisions", "lost", "meta"]);
        db.put_cf(db.cf_handle("revisions").unwrap(), b"x", b"not ours")
            .unwrap();
    }
    let e = RocksStorage::open(dir.path(), opts(true)).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
    // A database with other column families does not open either.
    let dir = tempfile::tempdir().unwrap();
    drop(raw_db_with(dir.path(), &["other"]));
    assert!(RocksStorage::open(dir.path(), opts(true)).is_err());
}

/// A store written in layout 1 (before `revisions` replaced `current` and `history`) is
/// refused at open with an error that says what to do, and is left as it was.
#[test]
fn a_store_of_layout_1_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    drop(raw_db_with(
        dir.path(),
        &["txn", "current", "history", "lost", "meta"],
    ));
    let e = RocksStorage::open(dir.path(), opts(true)).unwrap_err();
    assert!(
        matches!(e, StorageError::Layout { found: 1, reads: 2 }),
        "{e}"
    );
    assert!(e.to_string().contains("layout 1"), "{e}");
    let mut names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    names.sort();
    assert_eq!(
        names,
        ["current", "default", "history", "lost", "meta", "txn"]
    );
}

#[test]
fn checkpoint_opens_as_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path().join("a"), opts(true)).unwrap();
    for t in 1..=50u64 {
        s.commit(&txn(t, &[(t % 5, Some("v")), (100 + t, Some("w"))]))
            .unwrap();
    }
    s.set_replication_state(b"epoch 5").unwrap();
    let cp = dir.path().join("cp");
    assert_eq!(s.checkpoint(&cp).unwrap(), Tid(50));
    s.commit(&txn(51, &[(1, Some("after"))])).unwrap();
    s.set_replication_state(b"epoch 6").unwrap();
    let c = RocksStorage::open(&cp, opts(true)).unwrap();
    assert_eq!(c.last_transaction().unwrap(), Tid(50));
    assert_eq!(
        c.replication_state().unwrap(),
        Some(Bytes::from_static(b"epoch 5")),
        "a checkpoint copies the replication state as of the checkpoint"
    );
    assert_eq!(c.load(&oid(1)).unwrap().unwrap().tid, Tid(46));
    let a: Vec<Transaction> = s
        .iter(TidRange::new(None, Some(Tid(50))), Direction::Forward)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let b: Vec<Transaction> = c
        .iter(TidRange::ALL, Direction::Forward)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(a, b);
    // The checkpoint is a store of its own: it follows the primary with apply.
    let t51 = s
        .iter(TidRange::after(Tid(50)), Direction::Forward)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    c.apply(Tid(50), &t51).unwrap();
    assert_eq!(c.load(&oid(1)).unwrap().unwrap().tid, Tid(51));
}

#[test]
fn a_read_handle_sees_every_returned_write_and_outlives_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path().join("a"), opts(true)).unwrap();
    let big = "x".repeat(4000);
    s.commit(&txn(1, &[(1, Some("small")), (2, Some(&big))]))
        .unwrap();
    let r = s.read_handle().expect("RocksDB has read handles");
    // Written through the owner after the handle was taken (on another thread, joined
    // before the reads: this checks visibility, not concurrency).
    std::thread::scope(|sc| {
        sc.spawn(|| s.commit(&txn(2, &[(1, Some("newer"))])).unwrap());
    });
    assert_eq!(r.last_transaction().unwrap(), Tid(2));
    assert_eq!(
        r.load(&oid(1)).unwrap().unwrap().data,
        Some(Bytes::from_static(b"newer"))
    );
    assert_eq!(
        r.load(&oid(2)).unwrap().unwrap().data,
        Some(Bytes::from(big.clone()))
    );
    assert_eq!(
        r.load_before(&oid(1), Tid(2)).unwrap().unwrap().data,
        Some(Bytes::from_static(b"small"))
    );
    drop(s);
    // The database stays open for the handle until it goes too.
    assert_eq!(
        r.load(&oid(2)).unwrap().unwrap().data,
        Some(Bytes::from(big))
    );
    drop(r);
    let s = RocksStorage::open(dir.path().join("a"), opts(true)).unwrap();
    assert_eq!(s.last_transaction().unwrap(), Tid(2));
}

// ---- crash test ----------------------------------------------------------------------

const CHILD_ENV: &str = "STORAGE_CRASH_CHILD_DIR";
const RECORDS: u64 = 10;

fn crash_txn(tid: u64) -> Transaction {
    Transaction {
        tid: Tid(tid),
        meta: TxnMeta {
            user: Bytes::from_static(b"crash"),
            description: Bytes::from(format!("commit {tid}")),
            extension: Bytes::new(),
            time: tid,
            request: None,
        },
        records: (0..RECORDS)
            .map(|i| Record {
                // Objects are shared between transactions so current revisions move.
                oid: oid((tid * 7 + i) % 64),
                data: Some(Bytes::from(vec![
                    (tid + i) as u8;
                    200 + (tid % 300) as usize
                ])),
                expected_serial: None,
            })
            .collect(),
    }
}

/// The child: commits consecutive tids with sync on, printing each one after it returned.
/// Does nothing unless started by `sigkill_never_loses_a_returned_commit`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = RocksStorage::open(&dir, opts(true)).unwrap();
    let tid = s.last_transaction().unwrap().0;
    // Concurrent committers, so that the kill also lands inside group commits.
    let next = std::sync::atomic::AtomicU64::new(tid + 1);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let t = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match s.commit(&crash_txn(t)) {
                    Ok(()) => println!("COMMITTED {t}"),
                    Err(StorageError::NonIncreasingTid { .. }) => println!("SKIPPED {t}"),
                    Err(e) => panic!("commit {t}: {e}"),
                }
            });
        }
    });
}

fn rng_next(state: &mut u64) -> u64 {
    // SplitMix64.
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn sigkill_never_loses_a_returned_commit() {
    let seed: u64 = std::env::var("STORAGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut reported_all = std::collections::BTreeSet::new();
    for round in 0..6 {
        // Kill after a random number of returned commits: the kill lands at a random point
        // of the commit loop without any sleeping.
        let kill_after = 1 + rng_next(&mut rng) % 150;
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = line.strip_prefix("COMMITTED ") {
                    if let Ok(t) = t.trim().parse::<u64>() {
                        if tx.send(t).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut reported = Vec::new();
        while (reported.len() as u64) < kill_after {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(t) => reported.push(t),
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "round {round}: child stalled after {} commits: {e}",
                        reported.len()
                    );
                }
            }
        }
        // SIGKILL by pid (std's Child::kill sends SIGKILL on Unix).
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        reported.extend(rx.try_iter());
        reported_all.extend(reported.iter().copied());

        let s = RocksStorage::open(dir.path(), opts(true)).unwrap();
        let last = s.last_transaction().unwrap();
        let stored: Vec<Transaction> = s
            .iter(TidRange::ALL, Direction::Forward)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let stored_tids: std::collections::BTreeSet<u64> = stored.iter().map(|t| t.tid.0).collect();
        for t in &reported_all {
            assert!(
                stored_tids.contains(t),
                "round {round} (seed {seed}): commit {t} returned but is gone"
            );
        }
        // Nothing half there: every stored transaction is whole and correct, and the
        // current revisions are those of the newest stored transactions.
        let mut expect_current = std::collections::BTreeMap::new();
        for t in &stored {
            assert_eq!(
                t,
                &crash_txn(t.tid.0),
                "round {round}: transaction {} differs",
                t.tid
            );
            for r in &t.records {
                expect_current.insert(r.oid.clone(), (t.tid, r.data.clone()));
            }
        }
        assert_eq!(last, stored.last().map_or(Tid::ZERO, |t| t.tid));
        for (o, (tid, data)) in &expect_current {
            let cur = s.load(o).unwrap().unwrap();
            assert_eq!(
                (&cur.tid, &cur.data),
                (tid, data),
                "round {round}: current of {o}"
            );
        }
        eprintln!(
            "round {round}: killed after {} reported commits; {} stored, last {last}",
            reported.len(),
            stored.len()
        );
    }
}

// ---- pack with garbage collection, object count ----------------------------------------

const GC_OBJECTS: u64 = 600;
const GC_TXNS: u64 = 25;

/// Transaction `t` of the pack tests: 1..=GC_TXNS write every object; `GC_TXNS + 5` writes
/// every third one again (after the pack bound), and deletes every seventh.
fn gc_txn(t: u64) -> Transaction {
    let objects: Vec<u64> = if t <= GC_TXNS {
        (0..GC_OBJECTS).collect()
    } else {
        (0..GC_OBJECTS)
            .filter(|o| o % 3 == 0 || o % 7 == 0)
            .collect()
    };
    Transaction {
        tid: Tid(t),
        meta: TxnMeta {
            user: Bytes::from_static(b"gc"),
            description: Bytes::from(format!("txn {t}")),
            extension: Bytes::new(),
            time: t,
            request: None,
        },
        records: objects
            .into_iter()
            .map(|o| Record {
                oid: oid(o),
                data: if t > GC_TXNS && o % 7 == 0 && o % 3 != 0 {
                    None
                } else {
                    Some(Bytes::from(format!("{o}@{t}")))
                },
                expected_serial: None,
            })
            .collect(),
    }
}

fn gc_build(s: &dyn Storage) {
    for t in (1..=GC_TXNS).chain([GC_TXNS + 5]) {
        s.commit(&gc_txn(t)).unwrap();
    }
}

/// Every even object is "unreachable".
fn gc_list() -> Vec<Oid> {
    (0..GC_OBJECTS).filter(|o| o % 2 == 0).map(oid).collect()
}

const GC_BEFORE: Tid = Tid(GC_TXNS + 1);

/// What a store shows of every object (current revision and whole history), its object
/// count, horizon and the transactions after the horizon.
#[derive(Debug, PartialEq)]
struct Shown {
    objects: Vec<(Option<storage::Revision>, Vec<storage::Revision>)>,
    count: u64,
    horizon: Tid,
    txns: Vec<Transaction>,
}

fn object_view(s: &dyn Storage, o: u64) -> (Option<storage::Revision>, Vec<storage::Revision>) {
    (
        s.load(&oid(o)).unwrap(),
        s.history(&oid(o), usize::MAX).unwrap(),
    )
}

fn shown(s: &dyn Storage) -> Shown {
    let horizon = s.horizon().unwrap();
    Shown {
        objects: (0..GC_OBJECTS).map(|o| object_view(s, o)).collect(),
        count: s.object_count().unwrap(),
        horizon,
        txns: s
            .iter(TidRange::after(horizon), Direction::Forward)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
    }
}

/// The oids named by the records in `txn` and by the keys of `revisions`, read raw.
fn raw_oids(path: &std::path::Path) -> std::collections::BTreeSet<Vec<u8>> {
    let db = raw_db(path);
    let mut out = std::collections::BTreeSet::new();
    for (k, v) in db
        .iterator_cf(db.cf_handle("txn").unwrap(), rocksdb::IteratorMode::Start)
        .map(Result::unwrap)
    {
        // Records (index > 0) are `[version][kind][u32 len][oid]...`.
        if k[8..] != [0, 0, 0, 0] {
            let n = u32::from_be_bytes(v[2..6].try_into().unwrap()) as usize;
            out.insert(v[6..6 + n].to_vec());
        }
    }
    for (k, _) in db
        .iterator_cf(
            db.cf_handle("revisions").unwrap(),
            rocksdb::IteratorMode::Start,
        )
        .map(Result::unwrap)
    {
        out.insert(rev_oid(&k));
    }
    out
}

/// A pack large enough to take several write batches removes, on disk, every record and
/// revision of the collected objects, and ends in the same
/// store as the in-memory backend.
#[test]
fn pack_gc_over_several_batches_matches_memory_and_frees_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path(), opts(false)).unwrap();
    let m = storage::MemStorage::default();
    gc_build(&s);
    gc_build(&m);
    assert_eq!(shown(&s), shown(&m));
    let stats = s.pack_gc(GC_BEFORE, &gc_list()).unwrap();
    assert_eq!(stats, m.pack_gc(GC_BEFORE, &gc_list()).unwrap());
    // Even objects not written after the bound: 0..600 even, not a multiple of 3 or 7.
    let collected: Vec<u64> = (0..GC_OBJECTS)
        .filter(|o| o % 2 == 0 && o % 3 != 0 && o % 7 != 0)
        .collect();
    assert_eq!(stats.objects_removed, collected.len() as u64);
    assert!(
        stats.revisions_removed * 2 > 16 * 1024,
        "several batches: {stats:?}"
    );
    assert_eq!(shown(&s), shown(&m));
    let s = {
        let path = s.path().to_path_buf();
        drop(s);
        RocksStorage::open(path, opts(false)).unwrap()
    };
    assert_eq!(shown(&s), shown(&m));
    drop(s);
    let on_disk = raw_oids(dir.path());
    for o in 0..GC_OBJECTS {
        assert_eq!(
            on_disk.contains(oid(o).as_bytes()),
            !collected.contains(&o),
            "oid {o}"
        );
    }
}

/// A pack that fails part-way (here on a corrupt revision met late in the scan)
/// leaves a consistent store: the batches written before hold whole objects and the
/// matching object count. Once the entry is repaired, the same call finishes the job.
#[test]
fn pack_gc_failing_part_way_leaves_a_consistent_store_and_can_be_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path(), opts(false)).unwrap();
    let before_pack = storage::MemStorage::default();
    let after_pack = storage::MemStorage::default();
    gc_build(&s);
    gc_build(&before_pack);
    gc_build(&after_pack);
    after_pack.pack_gc(GC_BEFORE, &gc_list()).unwrap();
    drop(s);
    // Corrupt the oldest revision of the last object collected (the scan meets it after
    // the first batch).
    let corrupt = GC_OBJECTS - 2;
    let last = oid(corrupt);
    let key = rev_key(&last, 1);
    let good = {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("revisions").unwrap();
        let good = db.get_cf(cf, &key).unwrap().unwrap();
        let mut bad = good.clone();
        bad[2] ^= 0xff;
        db.put_cf(cf, &key, bad).unwrap();
        good
    };
    let s = RocksStorage::open(dir.path(), opts(false)).unwrap();
    let e = s.pack_gc(GC_BEFORE, &gc_list()).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
    // Each object is as before the pack or as after it; the count matches what is there.
    let mut done = 0;
    for o in (0..GC_OBJECTS).filter(|o| *o != corrupt) {
        let got = object_view(&s, o);
        let old = object_view(&before_pack, o);
        assert!(
            got == old || got == object_view(&after_pack, o),
            "oid {o} half packed"
        );
        if got != old {
            done += 1;
        }
    }
    assert!(done > 0, "the first batch was written");
    assert_eq!(s.load(&last).unwrap(), before_pack.load(&last).unwrap());
    let live = (0..GC_OBJECTS)
        .filter(|o| s.load(&oid(*o)).unwrap().is_some_and(|r| r.data.is_some()))
        .count();
    assert_eq!(s.object_count().unwrap(), live as u64);
    assert_eq!(
        s.horizon().unwrap(),
        Tid(GC_TXNS),
        "written with the first batch"
    );
    drop(s);
    {
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle("revisions").unwrap(), &key, good)
            .unwrap();
    }
    let s = RocksStorage::open(dir.path(), opts(false)).unwrap();
    s.pack_gc(GC_BEFORE, &gc_list()).unwrap();
    assert_eq!(shown(&s), shown(&after_pack));
}

/// A store written before the object count existed (its meta state ends without it) is
/// counted once at open, and the count is kept from then on.
#[test]
fn a_store_without_the_object_count_is_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path(), opts(true)).unwrap();
    s.commit(&txn(1, &[(1, Some("a")), (2, Some("b")), (3, Some("c"))]))
        .unwrap();
    s.commit(&txn(2, &[(2, None), (4, Some("d"))])).unwrap();
    s.fill(&[storage::Revision {
        oid: oid(5),
        tid: Tid(4),
        data: Some(Bytes::from_static(b"e")),
    }])
    .unwrap();
    assert_eq!(s.object_count().unwrap(), 4);
    drop(s);
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("meta").unwrap();
        let v = db.get_cf(cf, b"state").unwrap().unwrap();
        // The count is the last field, before the checksum: drop it, as an older version
        // wrote the state.
        let n = v.len();
        let mut old = v[..n - 12].to_vec();
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_be_bytes());
        db.put_cf(cf, b"state", old).unwrap();
    }
    let s = RocksStorage::open(dir.path(), opts(true)).unwrap();
    assert_eq!(s.object_count().unwrap(), 4, "1, 3, 4 and the filled 5");
    assert!(
        s.fill_progress().unwrap().is_some(),
        "the rest of the state is kept"
    );
    s.fill_finish(Tid(4)).unwrap();
    s.commit(&txn(5, &[(1, None)])).unwrap();
    assert_eq!(s.object_count().unwrap(), 3);
    drop(s);
    // The state now has the count, like that of a store this version created.
    let meta_len = |path: &std::path::Path| {
        let db = raw_db(path);
        let v = db.get_cf(db.cf_handle("meta").unwrap(), b"state").unwrap();
        v.unwrap().len()
    };
    let fresh = tempfile::tempdir().unwrap();
    drop(RocksStorage::open(fresh.path(), opts(true)).unwrap());
    assert_eq!(meta_len(dir.path()), meta_len(fresh.path()));
    let s = RocksStorage::open(dir.path(), opts(true)).unwrap();
    assert_eq!(s.object_count().unwrap(), 3);
}

/// Reads answered from table files (the memtables flushed by a checkpoint) and from the
/// memtable together agree with the in-memory backend: the prefix filters of `revisions`
/// never hide a revision from a seek, and scans see every object.
#[test]
fn reads_from_table_files_match_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStorage::open(dir.path().join("s"), opts(false)).unwrap();
    let m = storage::MemStorage::default();
    gc_build(&s);
    gc_build(&m);
    // Flushes the memtables to table files.
    s.checkpoint(&dir.path().join("cp")).unwrap();
    // More revisions in the memtable on top of the files, new and old objects.
    for t in GC_TXNS + 6..GC_TXNS + 9 {
        let tx = txn(t, &[(t % 50, Some("later")), (5000 + t, Some("new"))]);
        s.commit(&tx).unwrap();
        m.commit(&tx).unwrap();
    }
    let recovered = |st: &dyn Storage, since: Tid, after: Option<&Oid>| {
        st.fast_recovery(since, after)
            .unwrap()
            .revisions
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let check = |label: &str| {
        assert_eq!(shown(&s), shown(&m), "{label}");
        for since in [Tid::ZERO, Tid(GC_TXNS), Tid(GC_TXNS + 6), Tid(GC_TXNS + 10)] {
            for after in [None, Some(oid(17)), Some(oid(599))] {
                assert_eq!(
                    recovered(&s, since, after.as_ref()),
                    recovered(&m, since, after.as_ref()),
                    "{label}: fast recovery since {since} after {after:?}"
                );
            }
        }
        for o in [0, 1, 17, 49, 5000 + GC_TXNS + 7, 9999] {
            for t in [
                1,
                GC_TXNS,
                GC_TXNS + 6,
                GC_TXNS + 9,
                GC_TXNS + 11,
                GC_TXNS + 13,
            ] {
                let (a, b) = (
                    s.load_before(&oid(o), Tid(t)),
                    m.load_before(&oid(o), Tid(t)),
                );
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "{label}: {o} before {t}"
                );
            }
        }
    };
    check("after the flush");
    // A second flush, then more on top: one object's revisions in two table files and the
    // memtable.
    s.checkpoint(&dir.path().join("cp2")).unwrap();
    for t in GC_TXNS + 9..GC_TXNS + 12 {
        let tx = txn(t, &[(t % 50, Some("latest")), (17, None)]);
        s.commit(&tx).unwrap();
        m.commit(&tx).unwrap();
    }
    check("after a second flush");
    assert_eq!(
        s.pack_gc(GC_BEFORE, &gc_list()).unwrap(),
        m.pack_gc(GC_BEFORE, &gc_list()).unwrap()
    );
    check("after a pack");
    let path = s.path().to_path_buf();
    drop(s);
    let s = RocksStorage::open(path, opts(false)).unwrap();
    assert_eq!(shown(&s), shown(&m), "reopened");
    s.verify().unwrap();
}
