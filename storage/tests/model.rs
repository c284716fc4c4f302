//! Model-based test: random operation sequences run against a backend and against the plain
//! model (`storage::testing::model`); every answer is compared.

use bytes::Bytes;
use proptest::prelude::*;
use storage::testing::model::Model;
use storage::{
    Direction, MemOptions, MemStorage, Oid, Record, Revision, Storage, Tid, TidRange, Transaction,
    TxnMeta,
};

const OIDS: u8 = 6;

#[derive(Clone, Debug)]
enum Expect {
    None,
    Right,
    Wrong,
}

#[derive(Clone, Debug)]
enum Op {
    Commit {
        dt: u8,
        recs: Vec<(u8, Option<u8>, Expect)>,
    },
    Apply {
        dt: u8,
        prev_ok: bool,
        recs: Vec<(u8, Option<u8>)>,
    },
    ApplyDup {
        pick: usize,
        mutate: bool,
    },
    Iter {
        a: Option<u8>,
        b: Option<u8>,
        rev: bool,
    },
    LoadBefore {
        o: u8,
        t: u8,
    },
    History {
        o: u8,
        n: u8,
    },
    FastRecovery {
        since: u8,
        after: Option<u8>,
    },
    Fill {
        revs: Vec<(u8, u8, Option<u8>)>,
        finish: Option<u8>,
    },
    FillFinish {
        dt: u8,
    },
    Truncate {
        back: u8,
    },
    Pack {
        back: u8,
    },
    /// `pack_gc` with the oids whose bit is set in `unreachable` (bit `OIDS`: an oid never
    /// written; bit `OIDS + 1`: the first oid twice).
    PackGc {
        back: u8,
        unreachable: u8,
    },
    SetReplicationState {
        v: u8,
        too_large: bool,
    },
    Restart,
    Copy,
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    let data = proptest::option::weighted(0.85, any::<u8>());
    let expect = prop_oneof![Just(Expect::None), Just(Expect::Right), Just(Expect::Wrong)];
    prop_oneof![
        6 => (0u8..3, prop::collection::vec((0..OIDS, data.clone(), expect), 0..4))
            .prop_map(|(dt, recs)| Op::Commit { dt, recs }),
        3 => (0u8..3, prop::bool::weighted(0.8), prop::collection::vec((0..OIDS, data.clone()), 0..4))
            .prop_map(|(dt, prev_ok, recs)| Op::Apply { dt, prev_ok, recs }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, mutate)| Op::ApplyDup { pick, mutate }),
        3 => (proptest::option::of(any::<u8>()), proptest::option::of(any::<u8>()), any::<bool>())
            .prop_map(|(a, b, rev)| Op::Iter { a, b, rev }),
        2 => (0..OIDS, any::<u8>()).prop_map(|(o, t)| Op::LoadBefore { o, t }),
        1 => (0..OIDS, 0u8..5).prop_map(|(o, n)| Op::History { o, n }),
        2 => (any::<u8>(), proptest::option::of(0..OIDS)).prop_map(|(since, after)| Op::FastRecovery { since, after }),
        1 => (prop::collection::vec((0..OIDS, 0u8..4, data), 0..4), proptest::option::weighted(0.7, 0u8..3))
            .prop_map(|(revs, finish)| Op::Fill { revs, finish }),
        1 => (0u8..3).prop_map(|dt| Op::FillFinish { dt }),
        1 => (0u8..6).prop_map(|back| Op::Truncate { back }),
        1 => (0u8..6).prop_map(|back| Op::Pack { back }),
        2 => (0u8..6, any::<u8>()).prop_map(|(back, unreachable)| Op::PackGc { back, unreachable }),
        1 => (any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(v, too_large)| Op::SetReplicationState { v, too_large }),
        1 => Just(Op::Restart),
        1 => Just(Op::Copy),
        1 => Just(Op::Sync),
    ]
}

/// Oids of 1 to 4 bytes, with zero bytes, each a byte-prefix of others ("o", "o\0",
/// "o\0\0", "o\x03", "o\0\x04", ...): a layout that keys by oid must keep their revisions apart
/// and in oid order.
fn oid(o: u8) -> Oid {
    let mut v = vec![b'o'];
    v.extend(std::iter::repeat_n(0, (o % 3) as usize));
    if o >= 3 {
        v.push(o);
    }
    Oid::new(v).unwrap()
}

/// A state: a third of them larger than what a backend copies into its revision (RocksDB
/// keeps those only in the transaction's record), so every operation meets both.
fn data(v: Option<u8>) -> Option<Bytes> {
    v.map(|v| {
        let n = if v % 3 == 0 {
            600 + v as usize
        } else {
            (v % 5) as usize + 1
        };
        Bytes::from(vec![v; n])
    })
}

fn txn(tid: Tid, recs: Vec<Record>) -> Transaction {
    Transaction {
        tid,
        meta: TxnMeta {
            user: Bytes::from_static(b"u"),
            description: Bytes::from(format!("{}", tid.0)),
            extension: Bytes::new(),
            time: tid.0,
            request: None,
        },
        records: recs,
    }
}

fn dedup(recs: Vec<Record>) -> Vec<Record> {
    let mut seen = std::collections::BTreeSet::new();
    recs.into_iter()
        .filter(|r| seen.insert(r.oid.clone()))
        .collect()
}

trait Backend {
    fn store(&self) -> &dyn Storage;
    /// Crash and restart; returns whether un-synced writes are lost.
    fn restart(&mut self) -> bool;
    /// Replaces the store with a copy of it (checkpoint + open, or `MemStorage::snapshot`);
    /// returns whether un-synced writes are left out of the copy.
    fn copy(&mut self) -> bool;
}

struct Mem(MemStorage, bool);

impl Backend for Mem {
    fn store(&self) -> &dyn Storage {
        &self.0
    }
    fn restart(&mut self) -> bool {
        self.0.crash();
        !self.1
    }
    fn copy(&mut self) -> bool {
        self.0 = self.0.snapshot();
        !self.1
    }
}

#[cfg(feature = "rocksdb")]
struct Rocks(Option<storage::RocksStorage>, tempfile::TempDir, u32);

#[cfg(feature = "rocksdb")]
impl Backend for Rocks {
    fn store(&self) -> &dyn Storage {
        self.0.as_ref().unwrap()
    }
    fn restart(&mut self) -> bool {
        // A process crash (drop without any shutdown work) keeps what the WAL has.
        let path = self.0.take().unwrap().path().to_path_buf();
        self.0 = Some(storage::RocksStorage::open(path, rocks_opts()).unwrap());
        false
    }
    fn copy(&mut self) -> bool {
        // A checkpoint holds every write that returned, synced or not.
        self.2 += 1;
        let cp = self.1.path().join(format!("checkpoint-{}", self.2));
        self.0.take().unwrap().checkpoint(&cp).unwrap();
        self.0 = Some(storage::RocksStorage::open(cp, rocks_opts()).unwrap());
        false
    }
}

#[cfg(feature = "rocksdb")]
fn rocks_opts() -> storage::RocksOptions {
    storage::RocksOptions {
        sync: false,
        block_cache_bytes: 1 << 20,
        ..storage::RocksOptions::default()
    }
}

fn collect<T>(it: impl Iterator<Item = storage::Result<T>>) -> storage::Result<Vec<T>> {
    it.collect()
}

fn check_state(s: &dyn Storage, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(s.last_transaction().unwrap(), m.last_transaction());
    prop_assert_eq!(s.horizon().unwrap(), m.horizon());
    prop_assert_eq!(s.fill_progress().unwrap(), m.fill_progress());
    prop_assert_eq!(s.replication_state().unwrap(), m.replication_state());
    prop_assert_eq!(s.object_count().unwrap(), m.object_count());
    for o in 0..OIDS {
        prop_assert_eq!(s.load(&oid(o)).unwrap(), m.load(&oid(o)), "load {}", o);
    }
    prop_assert_eq!(
        collect(s.lost_transactions().unwrap()).unwrap(),
        m.lost_transactions()
    );
    Ok(())
}

fn run(b: &mut dyn Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::new();
    let mut durable = m.clone();
    for op in ops {
        let last = m.last_transaction();
        match op {
            Op::Commit { dt, recs } => {
                let recs = recs
                    .into_iter()
                    .map(|(o, d, e)| Record {
                        oid: oid(o),
                        data: data(d),
                        expected_serial: match e {
                            Expect::None => None,
                            Expect::Right => Some(m.serial(&oid(o))),
                            Expect::Wrong => Some(Tid(m.serial(&oid(o)).0 + 1)),
                        },
                    })
                    .collect();
                let t = txn(Tid(last.0 + dt as u64), dedup(recs));
                prop_assert_eq!(b.store().commit(&t), m.commit(&t), "commit {:?}", t);
            }
            Op::Apply { dt, prev_ok, recs } => {
                let recs = recs
                    .into_iter()
                    .map(|(o, d)| Record {
                        oid: oid(o),
                        data: data(d),
                        expected_serial: None,
                    })
                    .collect();
                let t = txn(Tid(last.0 + dt as u64), dedup(recs));
                let prev = if prev_ok { last } else { Tid(last.0 + 7) };
                prop_assert_eq!(
                    b.store().apply(prev, &t),
                    m.apply(prev, &t),
                    "apply {:?}",
                    t
                );
            }
            Op::ApplyDup { pick, mutate } => {
                let tids = m.tids();
                if tids.is_empty() {
                    continue;
                }
                let mut t = m.original(tids[pick % tids.len()]).unwrap().clone();
                if mutate {
                    t.meta.time += 1;
                }
                prop_assert_eq!(b.store().apply(Tid::ZERO, &t), m.apply(Tid::ZERO, &t));
            }
            Op::Iter { a, b: hi, rev } => {
                let span = last.0 + 3;
                let range = TidRange::new(
                    a.map(|a| Tid(a as u64 % span)),
                    hi.map(|h| Tid(h as u64 % span)),
                );
                let dir = if rev {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                let got = b.store().iter(range, dir).and_then(collect);
                prop_assert_eq!(got, m.iter(range, dir), "iter {:?} {:?}", range, dir);
            }
            Op::LoadBefore { o, t } => {
                let t = Tid(t as u64 % (last.0 + 3));
                prop_assert_eq!(b.store().load_before(&oid(o), t), m.load_before(&oid(o), t));
            }
            Op::History { o, n } => {
                prop_assert_eq!(
                    b.store().history(&oid(o), n as usize).unwrap(),
                    m.history(&oid(o), n as usize)
                );
            }
            Op::FastRecovery { since, after } => {
                let since = Tid(since as u64 % (last.0 + 2));
                let after = after.map(oid);
                let got = b
                    .store()
                    .fast_recovery(since, after.as_ref())
                    .and_then(|fr| Ok((fr.consistent_at, collect(fr.revisions)?)));
                prop_assert_eq!(got, m.fast_recovery(since, after.as_ref()));
            }
            Op::Fill { revs, finish } => {
                let revs: Vec<Revision> = revs
                    .into_iter()
                    .map(|(o, dt, d)| Revision {
                        oid: oid(o),
                        tid: Tid(last.0 + dt as u64),
                        data: data(d),
                    })
                    .collect();
                prop_assert_eq!(b.store().fill(&revs), m.fill(&revs), "fill {:?}", revs);
                if let Some(f) = finish {
                    let at = Tid(last.0 + 2 + f as u64);
                    prop_assert_eq!(b.store().fill_finish(at), m.fill_finish(at));
                }
            }
            Op::FillFinish { dt } => {
                let at = Tid(last.0 + dt as u64);
                prop_assert_eq!(b.store().fill_finish(at), m.fill_finish(at));
            }
            Op::Truncate { back } => {
                let t = Tid(last.0.saturating_sub(back as u64));
                prop_assert_eq!(b.store().truncate_after(t), m.truncate_after(t));
            }
            Op::Pack { back } => {
                let t = Tid((last.0 + 1).saturating_sub(back as u64));
                prop_assert_eq!(b.store().pack(t), m.pack(t));
            }
            Op::PackGc { back, unreachable } => {
                let t = Tid((last.0 + 1).saturating_sub(back as u64));
                let mut list: Vec<Oid> = (0..OIDS)
                    .filter(|o| unreachable & (1 << o) != 0)
                    .map(oid)
                    .collect();
                if unreachable & (1 << OIDS) != 0 {
                    list.push(oid(OIDS + 3));
                }
                if unreachable & (1 << (OIDS + 1)) != 0 {
                    list.push(oid(0));
                }
                let got = b.store().pack_gc(t, &list);
                prop_assert_eq!(got, m.pack_gc(t, &list), "pack_gc {:?} {:?}", t, list);
                // Nothing of a removed object is left.
                for o in &list {
                    if m.load(o).is_none() {
                        prop_assert!(b.store().history(o, 9).unwrap().is_empty());
                        let after = Tid(m.horizon().0 + 1);
                        prop_assert_eq!(b.store().load_before(o, after).unwrap(), None);
                    }
                }
            }
            Op::SetReplicationState { v, too_large } => {
                let len = if too_large {
                    storage::META_LEN_MAX + 1
                } else {
                    v as usize % 9
                };
                let st = vec![v; len];
                prop_assert_eq!(
                    b.store().set_replication_state(&st),
                    m.set_replication_state(&st)
                );
            }
            Op::Restart => {
                if b.restart() {
                    m = durable.clone();
                }
            }
            Op::Copy => {
                if b.copy() {
                    m = durable.clone();
                }
            }
            Op::Sync => {
                b.store().sync().unwrap();
                durable = m.clone();
            }
        }
        check_state(b.store(), &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mem_sync_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&mut Mem(MemStorage::new(MemOptions { sync: true }), true), ops)?;
    }

    #[test]
    fn mem_unsynced_crash_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&mut Mem(MemStorage::new(MemOptions { sync: false }), false), ops)?;
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rocks_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let s = storage::RocksStorage::open(dir.path(), rocks_opts()).unwrap();
        run(&mut Rocks(Some(s), dir, 0), ops)?;
    }
}
