//! The conformance suite: one set of checks that every backend must pass.
//!
//! A backend's test provides a [`Harness`] and calls [`run_all`] (or single checks).
//! Checks panic with a message on failure, as tests do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::error::StorageError;
use crate::types::{
    ApplyOutcome, Direction, Oid, PackStats, Record, RequestKey, Revision, Tid, TidRange,
    Transaction, TxnMeta,
};
use crate::Storage;

/// How the suite makes and restarts stores.
pub trait Harness {
    /// The backend.
    type S: Storage;
    /// A new, empty store.
    fn fresh(&mut self) -> Self::S;
    /// Simulates a crash and restart of `store`: writes that returned durable survive.
    fn restart(&mut self, store: Self::S) -> Self::S;
}

/// Oid `n`.
pub fn oid(n: u64) -> Oid {
    Oid::from_u64(n)
}

/// A transaction at `tid` writing `data` (None: delete) to each `(oid, data)`.
pub fn txn(tid: u64, records: &[(u64, Option<&str>)]) -> Transaction {
    Transaction {
        tid: Tid(tid),
        meta: TxnMeta {
            user: Bytes::from_static(b"suite"),
            description: Bytes::from(format!("txn {tid}")),
            extension: Bytes::new(),
            time: tid * 10,
            request: None,
        },
        records: records
            .iter()
            .map(|(o, d)| Record {
                oid: oid(*o),
                data: d.map(|s| Bytes::copy_from_slice(s.as_bytes())),
                expected_serial: None,
            })
            .collect(),
    }
}

fn data(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn rev(o: u64, tid: u64, d: Option<&str>) -> Revision {
    Revision {
        oid: oid(o),
        tid: Tid(tid),
        data: d.map(|s| Bytes::copy_from_slice(s.as_bytes())),
    }
}

fn collect<I: Iterator<Item = crate::Result<T>>, T>(it: I) -> Vec<T> {
    it.map(|r| r.expect("iteration error")).collect()
}

fn tids(s: &impl Storage, range: TidRange, dir: Direction) -> Vec<u64> {
    collect(s.iter(range, dir).expect("iter"))
        .iter()
        .map(|t| t.tid.0)
        .collect()
}

/// Runs every check.
pub fn run_all<H: Harness>(h: &mut H) {
    apply_batch_matches_apply(h);
    unsynced_applies_are_visible_and_durable_after_sync(h);
    empty_store(h);
    commit_and_load(h);
    tids_must_increase(h);
    conflicts_write_nothing(h);
    invalid_transactions(h);
    iter_ranges(h);
    apply_rules(h);
    fast_recovery_round_trip(h);
    fill_resume(h);
    truncate_and_lost_archive(h);
    pack_keeps_newest_before(h);
    pack_gc_removes_unreachable_objects(h);
    pack_gc_refused_during_a_fill_changes_nothing(h);
    pack_gc_with_an_empty_list_is_pack(h);
    object_count_follows_every_write(h);
    restart_keeps_durable_writes(h);
    replication_state_slot(h);
    concurrent_commits(h);
    request_keys_are_kept(h);
    the_log_below_the_horizon_is_listed(h);
}

/// `iter_logged` lists what the log holds whatever the horizon: what a store applied itself
/// before a fill moved its horizon past it, then what it applied after.
pub fn the_log_below_the_horizon_is_listed<H: Harness>(h: &mut H) {
    let s = h.fresh();
    s.commit(&txn(1, &[(1, Some("a1"))])).unwrap();
    s.commit(&txn(2, &[(2, Some("b2"))])).unwrap();
    // A donor's objects, consistent at 5: the horizon moves to 5.
    s.fill(&[rev(3, 4, Some("c4"))]).unwrap();
    s.fill_finish(Tid(5)).unwrap();
    assert_eq!(s.horizon().unwrap(), Tid(5));
    assert!(matches!(
        s.iter(TidRange::after(Tid(1)), Direction::Forward),
        Err(StorageError::HistoryTruncated { .. })
    ));
    s.commit(&txn(6, &[(1, Some("a6"))])).unwrap();
    let s = h.restart(s);
    let logged = collect(s.iter_logged(TidRange::after(Tid(1))).unwrap());
    assert_eq!(
        logged,
        vec![txn(2, &[(2, Some("b2"))]), txn(6, &[(1, Some("a6"))])]
    );
    let all = collect(s.iter_logged(TidRange::ALL).unwrap());
    assert_eq!(
        all.iter().map(|t| t.tid.0).collect::<Vec<_>>(),
        vec![1, 2, 6]
    );
}

/// A transaction's request key (`TxnMeta::request`) is kept with it: by `commit` and
/// `apply`, across a restart, in iteration, and in the lost archive; it is part of what
/// makes two transactions the same for `apply`.
pub fn request_keys_are_kept<H: Harness>(h: &mut H) {
    let keyed = |tid: u64, client: u64, request: u64, recs: &[(u64, Option<&str>)]| {
        let mut t = txn(tid, recs);
        t.meta.request = Some(RequestKey { client, request });
        t
    };
    let s = h.fresh();
    let t1 = keyed(1, 7, 1, &[(1, Some("a1"))]);
    let t2 = txn(2, &[(2, Some("b2"))]);
    let t3 = keyed(3, u64::MAX, u64::MAX, &[(1, Some("a3"))]);
    s.commit(&t1).unwrap();
    assert_eq!(s.apply(Tid(1), &t2).unwrap(), ApplyOutcome::Applied);
    assert_eq!(s.apply(Tid(2), &t3).unwrap(), ApplyOutcome::Applied);
    s.sync().unwrap();
    let s = h.restart(s);
    let all = collect(s.iter(TidRange::ALL, Direction::Forward).unwrap());
    assert_eq!(all, vec![t1.clone(), t2.clone(), t3.clone()]);
    assert_eq!(s.apply(Tid(2), &t3).unwrap(), ApplyOutcome::AlreadyPresent);
    let other_key = keyed(3, u64::MAX, 5, &[(1, Some("a3"))]);
    assert!(
        s.apply(Tid(2), &other_key).is_err(),
        "a different key is a different transaction"
    );
    s.truncate_after(Tid(1)).unwrap();
    let lost = collect(s.lost_transactions().unwrap());
    assert_eq!(
        lost.into_iter().map(|l| l.txn).collect::<Vec<_>>(),
        vec![t2, t3]
    );
}

/// A new store is empty.
pub fn empty_store<H: Harness>(h: &mut H) {
    let s = h.fresh();
    assert_eq!(s.last_transaction().unwrap(), Tid::ZERO);
    assert_eq!(s.horizon().unwrap(), Tid::ZERO);
    assert_eq!(s.load(&oid(1)).unwrap(), None);
    assert_eq!(s.load_before(&oid(1), Tid(5)).unwrap(), None);
    assert!(s.history(&oid(1), 10).unwrap().is_empty());
    assert!(tids(&s, TidRange::ALL, Direction::Forward).is_empty());
    assert!(tids(&s, TidRange::ALL, Direction::Reverse).is_empty());
    assert!(s.lost_transactions().unwrap().next().is_none());
    assert_eq!(s.fill_progress().unwrap(), None);
}

/// Commits are visible through load, load_before, history and iter.
pub fn commit_and_load<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let t1 = txn(10, &[(1, Some("a1")), (2, Some("b1"))]);
    s.commit(&t1).unwrap();
    s.commit(&txn(20, &[(1, Some("a2"))])).unwrap();
    s.commit(&txn(30, &[(2, None)])).unwrap();
    assert_eq!(s.last_transaction().unwrap(), Tid(30));
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 20, Some("a2"))));
    assert_eq!(s.load(&oid(2)).unwrap(), Some(rev(2, 30, None)), "deleted");
    assert_eq!(s.load(&oid(3)).unwrap(), None);
    assert_eq!(
        s.load_before(&oid(1), Tid(20)).unwrap(),
        Some(rev(1, 10, Some("a1")))
    );
    assert_eq!(
        s.load_before(&oid(1), Tid(21)).unwrap(),
        Some(rev(1, 20, Some("a2")))
    );
    assert_eq!(s.load_before(&oid(1), Tid(10)).unwrap(), None);
    assert_eq!(
        s.load_before(&oid(2), Tid(31)).unwrap(),
        Some(rev(2, 30, None))
    );
    assert_eq!(
        s.history(&oid(1), 5).unwrap(),
        vec![rev(1, 20, Some("a2")), rev(1, 10, Some("a1"))]
    );
    assert_eq!(s.history(&oid(1), 1).unwrap(), vec![rev(1, 20, Some("a2"))]);
    let all = collect(s.iter(TidRange::ALL, Direction::Forward).unwrap());
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], t1, "iter returns the transaction as committed");
    // Reads as of a point: the revision current then, whatever came after.
    assert_eq!(
        s.load_at(&oid(1), Tid(30)).unwrap(),
        Some(rev(1, 20, Some("a2")))
    );
    assert_eq!(
        s.load_at(&oid(1), Tid(20)).unwrap(),
        Some(rev(1, 20, Some("a2")))
    );
    assert_eq!(
        s.load_at(&oid(1), Tid(19)).unwrap(),
        Some(rev(1, 10, Some("a1")))
    );
    assert_eq!(s.load_at(&oid(1), Tid(9)).unwrap(), None);
    assert_eq!(
        s.load_at(&oid(2), Tid(29)).unwrap(),
        Some(rev(2, 10, Some("b1")))
    );
    assert_eq!(s.load_at(&oid(3), Tid::MAX).unwrap(), None);
}

/// A tid that does not increase is refused and writes nothing.
pub fn tids_must_increase<H: Harness>(h: &mut H) {
    let s = h.fresh();
    assert!(matches!(
        s.commit(&txn(0, &[(1, Some("x"))])),
        Err(StorageError::InvalidTransaction { .. })
    ));
    s.commit(&txn(5, &[(1, Some("a"))])).unwrap();
    for t in [5, 4] {
        assert_eq!(
            s.commit(&txn(t, &[(1, Some("b"))])),
            Err(StorageError::NonIncreasingTid {
                tid: Tid(t),
                last: Tid(5)
            })
        );
    }
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 5, Some("a"))));
    assert_eq!(tids(&s, TidRange::ALL, Direction::Forward), vec![5]);
}

/// A conflict names the oid and nothing of the transaction is written.
pub fn conflicts_write_nothing<H: Harness>(h: &mut H) {
    let s = h.fresh();
    s.commit(&txn(1, &[(1, Some("a")), (2, Some("b"))]))
        .unwrap();
    s.commit(&txn(2, &[(2, Some("b2"))])).unwrap();
    let mut t = txn(3, &[(1, Some("a3")), (2, Some("b3")), (3, Some("c3"))]);
    t.records[0].expected_serial = Some(Tid(1)); // right
    t.records[1].expected_serial = Some(Tid(1)); // stale: now 2
    t.records[2].expected_serial = Some(Tid::ZERO); // new object: right
    assert_eq!(
        s.commit(&t),
        Err(StorageError::Conflict {
            oid: oid(2),
            expected: Tid(1),
            actual: Tid(2)
        })
    );
    assert_eq!(s.last_transaction().unwrap(), Tid(2));
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 1, Some("a"))));
    assert_eq!(s.load(&oid(3)).unwrap(), None);
    // Creating an existing object with expected ZERO conflicts.
    let mut t = txn(3, &[(1, Some("x"))]);
    t.records[0].expected_serial = Some(Tid::ZERO);
    assert_eq!(
        s.commit(&t),
        Err(StorageError::Conflict {
            oid: oid(1),
            expected: Tid::ZERO,
            actual: Tid(1)
        })
    );
    // With the right serials it commits.
    let mut t = txn(3, &[(1, Some("a3")), (2, Some("b3"))]);
    t.records[0].expected_serial = Some(Tid(1));
    t.records[1].expected_serial = Some(Tid(2));
    s.commit(&t).unwrap();
    assert_eq!(s.load(&oid(2)).unwrap(), Some(rev(2, 3, Some("b3"))));
}

/// Malformed transactions and oversized oids are refused with clear errors.
pub fn invalid_transactions<H: Harness>(h: &mut H) {
    let s = h.fresh();
    assert_eq!(
        Oid::new(vec![0u8; crate::OID_LEN_MAX + 1]),
        Err(StorageError::OidTooLarge {
            len: crate::OID_LEN_MAX + 1,
            max: crate::OID_LEN_MAX
        })
    );
    assert!(Oid::new(vec![7u8; crate::OID_LEN_MAX]).is_ok());
    let dup = txn(1, &[(1, Some("a")), (1, Some("b"))]);
    assert!(matches!(
        s.commit(&dup),
        Err(StorageError::InvalidTransaction { .. })
    ));
    // Long and empty oids work.
    let long = Oid::new(vec![7u8; crate::OID_LEN_MAX]).unwrap();
    let empty = Oid::new(Bytes::new()).unwrap();
    let mut t = txn(1, &[]);
    for o in [&long, &empty] {
        t.records.push(Record {
            oid: o.clone(),
            data: data("v"),
            expected_serial: None,
        });
    }
    s.commit(&t).unwrap();
    assert_eq!(s.load(&long).unwrap().unwrap().data, data("v"));
    assert_eq!(s.load(&empty).unwrap().unwrap().data, data("v"));
    assert_eq!(s.last_transaction().unwrap(), Tid(1));
    // An empty transaction is a transaction.
    s.commit(&txn(2, &[])).unwrap();
    assert_eq!(tids(&s, TidRange::ALL, Direction::Forward), vec![1, 2]);
}

/// `iter` bounds are inclusive and optional, in both directions.
pub fn iter_ranges<H: Harness>(h: &mut H) {
    let s = h.fresh();
    for t in [3u64, 5, 7, 9, 256, 257] {
        s.commit(&txn(t, &[(t % 3, Some("x")), (100 + t, Some("y"))]))
            .unwrap();
    }
    let r = |a: Option<u64>, b: Option<u64>| TidRange::new(a.map(Tid), b.map(Tid));
    let f = Direction::Forward;
    let b = Direction::Reverse;
    assert_eq!(tids(&s, r(None, None), f), vec![3, 5, 7, 9, 256, 257]);
    assert_eq!(tids(&s, r(None, None), b), vec![257, 256, 9, 7, 5, 3]);
    assert_eq!(tids(&s, r(Some(5), Some(9)), f), vec![5, 7, 9]);
    assert_eq!(tids(&s, r(Some(5), Some(9)), b), vec![9, 7, 5]);
    assert_eq!(tids(&s, r(Some(4), Some(8)), f), vec![5, 7]);
    assert_eq!(tids(&s, r(Some(4), Some(8)), b), vec![7, 5]);
    assert_eq!(tids(&s, r(Some(9), None), f), vec![9, 256, 257]);
    assert_eq!(tids(&s, r(None, Some(3)), b), vec![3]);
    assert_eq!(tids(&s, r(Some(8), Some(8)), f), Vec::<u64>::new());
    assert_eq!(tids(&s, r(Some(9), Some(5)), f), Vec::<u64>::new());
    assert_eq!(tids(&s, r(Some(9), Some(5)), b), Vec::<u64>::new());
    assert_eq!(tids(&s, TidRange::after(Tid(9)), f), vec![256, 257]);
    assert_eq!(tids(&s, TidRange::after(Tid::MAX), f), Vec::<u64>::new());
    assert_eq!(tids(&s, r(Some(0), Some(u64::MAX)), b).len(), 6);
    let t = collect(s.iter(r(Some(256), Some(256)), b).unwrap());
    assert_eq!(t, vec![txn(256, &[(1, Some("x")), (356, Some("y"))])]);
}

/// `apply`: in order, idempotent, refuses gaps and divergence.
pub fn apply_rules<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let t1 = txn(10, &[(1, Some("a"))]);
    let t2 = txn(20, &[(1, Some("b")), (2, Some("c"))]);
    assert_eq!(s.apply(Tid::ZERO, &t1).unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        s.apply(Tid(15), &t2),
        Err(StorageError::Gap {
            tid: Tid(20),
            prev: Tid(15),
            last: Tid(10)
        })
    );
    assert_eq!(s.apply(Tid(10), &t2).unwrap(), ApplyOutcome::Applied);
    assert_eq!(s.apply(Tid(10), &t2).unwrap(), ApplyOutcome::AlreadyPresent);
    assert_eq!(
        s.apply(Tid::ZERO, &t1).unwrap(),
        ApplyOutcome::AlreadyPresent
    );
    // Serials are not checked on apply.
    let mut t1s = t1.clone();
    t1s.records[0].expected_serial = Some(Tid(99));
    assert_eq!(
        s.apply(Tid::ZERO, &t1s).unwrap(),
        ApplyOutcome::AlreadyPresent
    );
    let mut other = t2.clone();
    other.records[1].data = data("C");
    assert_eq!(
        s.apply(Tid(10), &other),
        Err(StorageError::DivergentApply { tid: Tid(20) })
    );
    let mut other = t2.clone();
    other.meta.time += 1;
    assert_eq!(
        s.apply(Tid(10), &other),
        Err(StorageError::DivergentApply { tid: Tid(20) })
    );
    assert_eq!(
        s.apply(Tid::ZERO, &txn(15, &[(1, Some("z"))])),
        Err(StorageError::NonIncreasingTid {
            tid: Tid(15),
            last: Tid(20)
        })
    );
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 20, Some("b"))));
    let mut t3 = txn(30, &[(2, Some("d"))]);
    t3.records[0].expected_serial = Some(Tid(1)); // wrong, but ignored by apply
    assert_eq!(s.apply(Tid(20), &t3).unwrap(), ApplyOutcome::Applied);
    // Idempotent even after pack removed some of its records.
    s.commit(&txn(40, &[(1, Some("e")), (2, Some("f"))]))
        .unwrap();
    s.pack(Tid(41)).unwrap();
    assert_eq!(s.apply(Tid(10), &t2).unwrap(), ApplyOutcome::AlreadyPresent);
    let mut other = t2.clone();
    other.records[0].data = data("B");
    assert_eq!(
        s.apply(Tid(10), &other),
        Err(StorageError::DivergentApply { tid: Tid(20) })
    );
}

/// A far-behind store catches up with `fast_recovery` + `fill`, and then knows its hole.
pub fn fast_recovery_round_trip<H: Harness>(h: &mut H) {
    let src = h.fresh();
    let dst = h.fresh();
    let t1 = txn(1, &[(1, Some("a1")), (2, Some("b1")), (3, Some("c1"))]);
    src.commit(&t1).unwrap();
    dst.apply(Tid::ZERO, &t1).unwrap();
    src.commit(&txn(2, &[(1, Some("a2")), (4, Some("d2"))]))
        .unwrap();
    src.commit(&txn(3, &[(2, None), (1, Some("a3"))])).unwrap();
    src.commit(&txn(4, &[(5, Some("e4"))])).unwrap();

    let fr = src.fast_recovery(Tid(1), None).unwrap();
    assert_eq!(fr.consistent_at, Tid(4));
    let revs = collect(fr.revisions);
    assert_eq!(
        revs,
        vec![
            rev(1, 3, Some("a3")),
            rev(2, 3, None),
            rev(4, 2, Some("d2")),
            rev(5, 4, Some("e4"))
        ],
        "newest revision of each object changed after 1, in oid order"
    );
    let all = collect(src.fast_recovery(Tid::ZERO, None).unwrap().revisions);
    assert_eq!(all.len(), 5);
    let after = collect(
        src.fast_recovery(Tid::ZERO, Some(&oid(3)))
            .unwrap()
            .revisions,
    );
    assert_eq!(after, vec![rev(4, 2, Some("d2")), rev(5, 4, Some("e4"))]);

    // Fill refuses revisions that are not newer than the last transaction.
    assert!(matches!(
        dst.fill(&[rev(1, 1, Some("x"))]),
        Err(StorageError::InvalidFill { .. })
    ));
    dst.fill(&revs[..2]).unwrap();
    assert_eq!(dst.fill_progress().unwrap().unwrap().last_oid, oid(2));
    assert!(matches!(
        dst.commit(&txn(9, &[])),
        Err(StorageError::InvalidFill { .. })
    ));
    dst.fill(&revs[2..]).unwrap();
    assert!(matches!(
        dst.fill_finish(Tid(3)),
        Err(StorageError::InvalidFill { .. })
    ));
    dst.fill_finish(Tid(4)).unwrap();
    assert_eq!(dst.fill_progress().unwrap(), None);
    assert_eq!(dst.last_transaction().unwrap(), Tid(4));
    assert_eq!(dst.horizon().unwrap(), Tid(4));
    for o in 1..=5 {
        assert_eq!(
            dst.load(&oid(o)).unwrap(),
            src.load(&oid(o)).unwrap(),
            "oid {o}"
        );
    }
    // The hole is reported, not papered over.
    assert_eq!(
        dst.load_before(&oid(1), Tid(3)),
        Err(StorageError::HistoryTruncated { horizon: Tid(4) })
    );
    assert_eq!(
        dst.iter(TidRange::ALL, Direction::Forward).err(),
        Some(StorageError::HistoryTruncated { horizon: Tid(4) })
    );
    assert_eq!(
        dst.load_before(&oid(1), Tid(5)).unwrap(),
        Some(rev(1, 3, Some("a3")))
    );
    assert_eq!(
        dst.load_before(&oid(3), Tid(5)).unwrap(),
        Some(rev(3, 1, Some("c1")))
    );
    // And it follows the primary from there.
    let t5 = txn(5, &[(3, Some("c5"))]);
    src.commit(&t5).unwrap();
    assert_eq!(dst.apply(Tid(4), &t5).unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        tids(&dst, TidRange::after(Tid(4)), Direction::Forward),
        vec![5]
    );
    assert_eq!(
        collect(dst.fast_recovery(Tid(4), None).unwrap().revisions),
        vec![rev(3, 5, Some("c5"))]
    );
    // A new store filled from scratch.
    let fresh = h.fresh();
    let fr = src.fast_recovery(Tid::ZERO, None).unwrap();
    let at = fr.consistent_at;
    fresh.fill(&collect(fr.revisions)).unwrap();
    fresh.fill_finish(at).unwrap();
    for o in 1..=5 {
        assert_eq!(fresh.load(&oid(o)).unwrap(), src.load(&oid(o)).unwrap());
    }
    assert_eq!(
        fresh.truncate_after(Tid(4)),
        Err(StorageError::HistoryTruncated { horizon: Tid(5) })
    );
}

/// A fill broken off and resumed after its last oid, then topped up, converges.
pub fn fill_resume<H: Harness>(h: &mut H) {
    let src = h.fresh();
    for t in 1..=5u64 {
        src.commit(&txn(t, &[(t, Some("v")), (t + 10, Some("w"))]))
            .unwrap();
    }
    let dst = h.fresh();
    let fr = src.fast_recovery(Tid::ZERO, None).unwrap();
    let t1 = fr.consistent_at;
    let part: Vec<Revision> = collect(fr.revisions).into_iter().take(4).collect();
    dst.fill(&part).unwrap();
    let dst = h.restart(dst);
    let progress = dst
        .fill_progress()
        .unwrap()
        .expect("fill survives a restart");
    assert_eq!(progress.last_oid, oid(4));
    // The sender moves on meanwhile, including objects already sent.
    src.commit(&txn(6, &[(1, Some("v6")), (20, Some("x"))]))
        .unwrap();
    let fr = src
        .fast_recovery(Tid::ZERO, Some(&progress.last_oid))
        .unwrap();
    dst.fill(&collect(fr.revisions)).unwrap();
    let fr = src.fast_recovery(t1, None).unwrap();
    let at = fr.consistent_at;
    dst.fill(&collect(fr.revisions)).unwrap();
    dst.fill_finish(at).unwrap();
    for o in 0..=21 {
        assert_eq!(
            dst.load(&oid(o)).unwrap(),
            src.load(&oid(o)).unwrap(),
            "oid {o}"
        );
    }
}

/// `truncate_after` moves the suffix to the lost archive and restores older revisions.
pub fn truncate_and_lost_archive<H: Harness>(h: &mut H) {
    let s = h.fresh();
    s.commit(&txn(1, &[(1, Some("a1")), (2, Some("b1"))]))
        .unwrap();
    s.commit(&txn(2, &[(1, Some("a2"))])).unwrap();
    let t3 = txn(3, &[(2, None), (3, Some("c3"))]);
    let t4 = txn(4, &[(1, Some("a4"))]);
    s.commit(&t3).unwrap();
    s.commit(&t4).unwrap();
    assert_eq!(s.truncate_after(Tid(9)).unwrap(), Vec::<Tid>::new());
    assert_eq!(s.truncate_after(Tid(2)).unwrap(), vec![Tid(3), Tid(4)]);
    assert_eq!(s.last_transaction().unwrap(), Tid(2));
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 2, Some("a2"))));
    assert_eq!(
        s.load(&oid(2)).unwrap(),
        Some(rev(2, 1, Some("b1"))),
        "delete undone"
    );
    assert_eq!(s.load(&oid(3)).unwrap(), None, "creation undone");
    assert_eq!(s.history(&oid(1), 9).unwrap().len(), 2);
    assert_eq!(tids(&s, TidRange::ALL, Direction::Reverse), vec![2, 1]);
    let lost = collect(s.lost_transactions().unwrap());
    assert_eq!(lost.len(), 2);
    assert_eq!(
        (lost[0].seq, lost[0].truncated_after, &lost[0].txn),
        (0, Tid(2), &t3)
    );
    assert_eq!(
        (lost[1].seq, lost[1].truncated_after, &lost[1].txn),
        (1, Tid(2), &t4)
    );
    // The same tids may be committed again; the archive keeps both lives.
    s.commit(&txn(3, &[(3, Some("again"))])).unwrap();
    assert_eq!(
        s.truncate_after(Tid::ZERO).unwrap(),
        vec![Tid(1), Tid(2), Tid(3)]
    );
    assert_eq!(s.last_transaction().unwrap(), Tid::ZERO);
    assert_eq!(s.load(&oid(1)).unwrap(), None);
    let lost = collect(s.lost_transactions().unwrap());
    assert_eq!(
        lost.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(lost[4].txn, txn(3, &[(3, Some("again"))]));
    let s = h.restart(s);
    assert_eq!(collect(s.lost_transactions().unwrap()).len(), 5);
}

/// `pack(before)` keeps the newest revision before `before` and everything after.
pub fn pack_keeps_newest_before<H: Harness>(h: &mut H) {
    let s = h.fresh();
    s.commit(&txn(1, &[(1, Some("a1")), (2, Some("b1"))]))
        .unwrap();
    s.commit(&txn(2, &[(1, Some("a2"))])).unwrap();
    s.commit(&txn(3, &[(1, Some("a3")), (3, Some("c3"))]))
        .unwrap();
    s.commit(&txn(4, &[(1, Some("a4"))])).unwrap();
    let stats = s.pack(Tid(4)).unwrap();
    assert_eq!(
        stats.revisions_removed, 2,
        "a1 and a2 go; a3 is the newest before 4"
    );
    assert_eq!(stats.horizon, Tid(3));
    assert_eq!(s.horizon().unwrap(), Tid(3));
    assert_eq!(
        s.history(&oid(1), 9).unwrap(),
        vec![rev(1, 4, Some("a4")), rev(1, 3, Some("a3"))]
    );
    assert_eq!(s.load(&oid(2)).unwrap(), Some(rev(2, 1, Some("b1"))));
    assert_eq!(
        s.load_before(&oid(1), Tid(4)).unwrap(),
        Some(rev(1, 3, Some("a3")))
    );
    assert_eq!(
        s.load_before(&oid(1), Tid(3)),
        Err(StorageError::HistoryTruncated { horizon: Tid(3) })
    );
    assert_eq!(
        s.iter(TidRange::ALL, Direction::Forward).err(),
        Some(StorageError::HistoryTruncated { horizon: Tid(3) })
    );
    assert_eq!(
        tids(&s, TidRange::after(Tid(3)), Direction::Forward),
        vec![4]
    );
    // Pack beyond the last transaction is capped.
    s.pack(Tid(100)).unwrap();
    assert_eq!(s.horizon().unwrap(), Tid(4));
    assert_eq!(s.history(&oid(1), 9).unwrap(), vec![rev(1, 4, Some("a4"))]);
    let s = h.restart(s);
    assert_eq!(s.horizon().unwrap(), Tid(4));
    assert_eq!(s.load(&oid(3)).unwrap(), Some(rev(3, 3, Some("c3"))));
}

/// `pack_gc(before, unreachable)`: packs, then removes whole every listed object whose newest
/// revision is older than `before`; listed objects written at or after `before` stay.
pub fn pack_gc_removes_unreachable_objects<H: Harness>(h: &mut H) {
    let s = h.fresh();
    s.commit(&txn(
        10,
        &[
            (1, Some("a1")),
            (2, Some("b1")),
            (3, Some("c1")),
            (4, Some("d1")),
        ],
    ))
    .unwrap();
    s.commit(&txn(20, &[(1, Some("a2")), (2, Some("b2")), (4, None)]))
        .unwrap();
    let t30 = txn(30, &[(3, Some("c3")), (5, Some("e3"))]);
    s.commit(&t30).unwrap();
    s.commit(&txn(39, &[(7, Some("g39"))])).unwrap();
    let t40 = txn(40, &[(2, Some("b4")), (6, Some("f4"))]);
    s.commit(&t40).unwrap();
    assert_eq!(
        s.object_count().unwrap(),
        6,
        "1, 2, 3, 5, 6, 7 (4 is deleted)"
    );

    // 2 was written at `before`: it stays. 3 and 7 (newest revisions at 30 and 39) and 4
    // (deleted at 20) go. 9 was never written; 3 is listed twice.
    let list = [oid(2), oid(3), oid(4), oid(7), oid(9), oid(3)];
    let stats = s.pack_gc(Tid(40), &list).unwrap();
    assert_eq!(
        stats,
        PackStats {
            revisions_removed: 7,
            objects_removed: 3,
            horizon: Tid(39)
        },
        "pack removes a1 b1 c1 d1; the collection c3, the deletion of 4 and g39"
    );
    assert_eq!(s.horizon().unwrap(), Tid(39));
    let check = |s: &H::S| {
        for o in [3, 4, 7] {
            assert_eq!(s.load(&oid(o)).unwrap(), None, "oid {o} is gone");
            assert!(s.history(&oid(o), 9).unwrap().is_empty(), "oid {o}");
            for t in [40, 41, u64::MAX] {
                assert_eq!(s.load_before(&oid(o), Tid(t)).unwrap(), None, "oid {o}");
            }
            assert_eq!(
                s.load_before(&oid(o), Tid(39)),
                Err(StorageError::HistoryTruncated { horizon: Tid(39) })
            );
        }
        // Listed but written at `before`: kept, with what pack keeps of its history.
        assert_eq!(s.load(&oid(2)).unwrap(), Some(rev(2, 40, Some("b4"))));
        assert_eq!(
            s.history(&oid(2), 9).unwrap(),
            vec![rev(2, 40, Some("b4")), rev(2, 20, Some("b2"))]
        );
        assert_eq!(
            s.load_before(&oid(2), Tid(40)).unwrap(),
            Some(rev(2, 20, Some("b2")))
        );
        // Not listed: kept as pack keeps them.
        assert_eq!(s.history(&oid(1), 9).unwrap(), vec![rev(1, 20, Some("a2"))]);
        assert_eq!(s.history(&oid(5), 9).unwrap(), vec![rev(5, 30, Some("e3"))]);
        assert_eq!(s.history(&oid(6), 9).unwrap(), vec![rev(6, 40, Some("f4"))]);
        assert_eq!(
            s.load_before(&oid(5), Tid(40)).unwrap(),
            Some(rev(5, 30, Some("e3")))
        );
        assert_eq!(s.object_count().unwrap(), 4, "1, 2, 5, 6");
        // Transactions after the horizon are whole; nothing of the removed objects shows.
        assert_eq!(
            collect(
                s.iter(TidRange::after(Tid(39)), Direction::Forward)
                    .unwrap()
            ),
            vec![t40.clone()]
        );
        assert_eq!(
            collect(
                s.iter(TidRange::after(Tid(39)), Direction::Reverse)
                    .unwrap()
            ),
            vec![t40.clone()]
        );
        let fr = s.fast_recovery(Tid::ZERO, None).unwrap();
        assert_eq!(
            collect(fr.revisions),
            vec![
                rev(1, 20, Some("a2")),
                rev(2, 40, Some("b4")),
                rev(5, 30, Some("e3")),
                rev(6, 40, Some("f4"))
            ]
        );
    };
    check(&s);
    // Again with the same arguments: nothing left to do.
    assert_eq!(
        s.pack_gc(Tid(40), &list).unwrap(),
        PackStats {
            revisions_removed: 0,
            objects_removed: 0,
            horizon: Tid(39)
        }
    );
    check(&s);
    let s = h.restart(s);
    check(&s);
    // Transaction headers stay: a duplicate apply is still recognised (and a divergent one
    // refused) though the record of 3 in transaction 30 is gone.
    assert_eq!(
        s.apply(Tid(20), &t30).unwrap(),
        ApplyOutcome::AlreadyPresent
    );
    let mut other = t30.clone();
    other.records[0].data = data("C3");
    assert_eq!(
        s.apply(Tid(20), &other),
        Err(StorageError::DivergentApply { tid: Tid(30) })
    );
    // A removed object may be created again: it does not exist.
    let mut t = txn(50, &[(3, Some("c50"))]);
    t.records[0].expected_serial = Some(Tid::ZERO);
    s.commit(&t).unwrap();
    assert_eq!(s.load(&oid(3)).unwrap(), Some(rev(3, 50, Some("c50"))));
    assert_eq!(
        s.history(&oid(3), 9).unwrap(),
        vec![rev(3, 50, Some("c50"))]
    );
    assert_eq!(s.object_count().unwrap(), 5);
    // Everything older than `last + 1` is collectable: the bound is capped like pack's.
    let stats = s.pack_gc(Tid(1000), &[oid(3), oid(5)]).unwrap();
    assert_eq!(stats.objects_removed, 2);
    assert_eq!(stats.horizon, Tid(50));
    assert_eq!(s.load(&oid(3)).unwrap(), None);
    assert_eq!(s.load(&oid(5)).unwrap(), None);
    assert_eq!(s.object_count().unwrap(), 3);
}

/// A refused `pack_gc` (and `pack`) changes nothing.
pub fn pack_gc_refused_during_a_fill_changes_nothing<H: Harness>(h: &mut H) {
    let s = h.fresh();
    s.commit(&txn(1, &[(1, Some("a1")), (2, Some("b1"))]))
        .unwrap();
    s.commit(&txn(2, &[(1, Some("a2"))])).unwrap();
    s.fill(&[rev(3, 5, Some("c5"))]).unwrap();
    let progress = s.fill_progress().unwrap();
    let check = |s: &H::S| {
        assert_eq!(s.horizon().unwrap(), Tid::ZERO);
        assert_eq!(s.last_transaction().unwrap(), Tid(2));
        assert_eq!(
            s.history(&oid(1), 9).unwrap(),
            vec![rev(1, 2, Some("a2")), rev(1, 1, Some("a1"))]
        );
        assert_eq!(s.history(&oid(2), 9).unwrap(), vec![rev(2, 1, Some("b1"))]);
        assert_eq!(s.load(&oid(3)).unwrap(), Some(rev(3, 5, Some("c5"))));
        assert_eq!(s.object_count().unwrap(), 3, "a filled object counts");
        assert_eq!(s.fill_progress().unwrap(), progress);
    };
    for before in [Tid(2), Tid(3), Tid(100)] {
        assert!(
            matches!(
                s.pack_gc(before, &[oid(1), oid(2), oid(3)]),
                Err(StorageError::InvalidFill { .. })
            ),
            "pack_gc during a fill"
        );
        assert!(matches!(
            s.pack(before),
            Err(StorageError::InvalidFill { .. })
        ));
        check(&s);
    }
    let s = h.restart(s);
    check(&s);
    s.fill_finish(Tid(5)).unwrap();
    assert_eq!(s.horizon().unwrap(), Tid(5));
    let stats = s.pack_gc(Tid(3), &[oid(2), oid(3)]).unwrap();
    assert_eq!(
        stats,
        PackStats {
            revisions_removed: 2,
            objects_removed: 1,
            horizon: Tid(5)
        },
        "a1 packed, 2 collected, 3 (filled at 5) kept"
    );
    assert_eq!(s.load(&oid(2)).unwrap(), None);
    assert_eq!(s.load(&oid(3)).unwrap(), Some(rev(3, 5, Some("c5"))));
    assert_eq!(s.object_count().unwrap(), 2);
}

/// `pack_gc(before, &[])` is `pack(before)`: same answer, same store afterwards.
pub fn pack_gc_with_an_empty_list_is_pack<H: Harness>(h: &mut H) {
    let build = |s: &H::S| {
        for t in 1..=12u64 {
            let d = if t % 5 == 0 { None } else { Some("v") };
            s.commit(&txn(t, &[(t % 4, d), (t % 3 + 10, Some("w"))]))
                .unwrap();
        }
    };
    let a = h.fresh();
    let b = h.fresh();
    build(&a);
    build(&b);
    let same = |a: &H::S, b: &H::S| {
        assert_eq!(a.horizon().unwrap(), b.horizon().unwrap());
        assert_eq!(a.last_transaction().unwrap(), b.last_transaction().unwrap());
        assert_eq!(a.object_count().unwrap(), b.object_count().unwrap());
        for o in (0..4).chain(10..13) {
            assert_eq!(a.load(&oid(o)).unwrap(), b.load(&oid(o)).unwrap());
            assert_eq!(
                a.history(&oid(o), 99).unwrap(),
                b.history(&oid(o), 99).unwrap()
            );
        }
        let after = TidRange::after(a.horizon().unwrap());
        assert_eq!(
            collect(a.iter(after, Direction::Forward).unwrap()),
            collect(b.iter(after, Direction::Forward).unwrap())
        );
    };
    for before in [0, 3, 3, 7, 100] {
        let pa = a.pack(Tid(before)).unwrap();
        let pb = b.pack_gc(Tid(before), &[]).unwrap();
        assert_eq!(pa, pb, "before {before}");
        assert_eq!(pa.objects_removed, 0);
        same(&a, &b);
    }
    // Before 0 nothing is older: a list changes nothing either.
    let c = h.fresh();
    build(&c);
    assert_eq!(
        c.pack_gc(Tid::ZERO, &[oid(1), oid(10)]).unwrap(),
        PackStats::default()
    );
    assert_eq!(c.history(&oid(1), 99).unwrap().len(), 3);
    assert_eq!(c.horizon().unwrap(), Tid::ZERO);
}

/// `object_count`: objects whose current revision is not a deletion, after every kind of
/// write, a restart included.
pub fn object_count_follows_every_write<H: Harness>(h: &mut H) {
    let count = |s: &H::S| s.object_count().unwrap();
    let s = h.fresh();
    assert_eq!(count(&s), 0);
    s.commit(&txn(1, &[(1, Some("a")), (2, Some("b")), (3, None)]))
        .unwrap();
    assert_eq!(count(&s), 2, "deleting an absent object counts nothing");
    s.commit(&txn(2, &[(1, None), (4, Some("d"))])).unwrap();
    assert_eq!(count(&s), 2);
    s.commit(&txn(3, &[(1, Some("a3")), (2, Some("b3"))]))
        .unwrap();
    assert_eq!(count(&s), 3, "1 again, 2 overwritten");
    let mut bad = txn(4, &[(5, Some("e")), (2, Some("x"))]);
    bad.records[1].expected_serial = Some(Tid(1));
    assert!(matches!(s.commit(&bad), Err(StorageError::Conflict { .. })));
    assert_eq!(count(&s), 3, "a refused commit counts nothing");
    let t4 = txn(4, &[(5, Some("e")), (2, None)]);
    assert_eq!(s.apply(Tid(3), &t4).unwrap(), ApplyOutcome::Applied);
    assert_eq!(count(&s), 3);
    assert_eq!(s.apply(Tid(3), &t4).unwrap(), ApplyOutcome::AlreadyPresent);
    assert_eq!(count(&s), 3);
    // In one batch: the second transaction sees the first's objects.
    let r = s.apply_batch(&[
        (Tid(4), txn(5, &[(6, Some("f"))])),
        (Tid(5), txn(6, &[(6, None), (7, Some("g")), (8, Some("h"))])),
        (Tid(9), txn(10, &[(9, Some("i"))])),
    ]);
    assert_eq!(r[0], Ok(ApplyOutcome::Applied));
    assert_eq!(r[1], Ok(ApplyOutcome::Applied));
    assert!(matches!(r[2], Err(StorageError::Gap { .. })));
    assert_eq!(count(&s), 5, "1, 4, 5, 7, 8");
    let s = h.restart(s);
    assert_eq!(count(&s), 5);
    assert_eq!(
        s.truncate_after(Tid(3)).unwrap(),
        vec![Tid(4), Tid(5), Tid(6)]
    );
    assert_eq!(count(&s), 3, "back to 1, 2, 4");
    s.pack(Tid(3)).unwrap();
    assert_eq!(count(&s), 3, "pack keeps every current revision");
    s.fill(&[rev(1, 5, None), rev(3, 5, Some("c")), rev(8, 5, Some("h"))])
        .unwrap();
    assert_eq!(count(&s), 4, "-1, +3, +8, while the fill is open");
    s.fill(&[rev(8, 4, None)]).unwrap();
    assert_eq!(count(&s), 4, "an older filled revision is not current");
    s.fill_finish(Tid(5)).unwrap();
    assert_eq!(count(&s), 4);
    let stats = s.pack_gc(Tid(6), &[oid(1), oid(4)]).unwrap();
    assert_eq!(stats.objects_removed, 2);
    assert_eq!(count(&s), 3, "1 was deleted already, 4 goes");
    let s = h.restart(s);
    assert_eq!(count(&s), 3);
    s.commit(&txn(7, &[(4, Some("again"))])).unwrap();
    assert_eq!(count(&s), 4);
}

/// A restart keeps every write that returned.
pub fn restart_keeps_durable_writes<H: Harness>(h: &mut H) {
    let s = h.fresh();
    for t in 1..=20u64 {
        s.commit(&txn(t, &[(t % 4, Some("x")), (t % 7 + 10, Some("y"))]))
            .unwrap();
    }
    s.sync().unwrap();
    let before: Vec<Transaction> = collect(s.iter(TidRange::ALL, Direction::Forward).unwrap());
    let s = h.restart(s);
    assert_eq!(s.last_transaction().unwrap(), Tid(20));
    let after: Vec<Transaction> = collect(s.iter(TidRange::ALL, Direction::Forward).unwrap());
    assert_eq!(before, after);
    s.commit(&txn(21, &[(1, Some("z"))])).unwrap();
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 21, Some("z"))));
}

/// The replication state: one durable slot beside the data, outside the transactional
/// history (truncate, pack and fills leave it alone; it may be set during a fill).
pub fn replication_state_slot<H: Harness>(h: &mut H) {
    let state = |s: &H::S| s.replication_state().unwrap();
    let b = |v: &[u8]| Some(Bytes::copy_from_slice(v));
    let s = h.fresh();
    assert_eq!(state(&s), None, "a new store has none");
    s.set_replication_state(b"epoch 1").unwrap();
    assert_eq!(state(&s), b(b"epoch 1"));
    s.set_replication_state(b"epoch 2, longer").unwrap();
    assert_eq!(state(&s), b(b"epoch 2, longer"), "replaced");
    s.set_replication_state(b"").unwrap();
    assert_eq!(state(&s), b(b""), "an empty state is a state");
    s.set_replication_state(b"epoch 3").unwrap();
    assert_eq!(
        s.last_transaction().unwrap(),
        Tid::ZERO,
        "not a transaction"
    );
    let s = h.restart(s);
    assert_eq!(state(&s), b(b"epoch 3"), "survives a restart");

    // Commits, truncate_after and pack leave it alone.
    s.commit(&txn(1, &[(1, Some("a1"))])).unwrap();
    s.commit(&txn(2, &[(1, Some("a2"))])).unwrap();
    s.commit(&txn(3, &[(1, Some("a3"))])).unwrap();
    assert_eq!(state(&s), b(b"epoch 3"));
    assert_eq!(s.truncate_after(Tid(2)).unwrap(), vec![Tid(3)]);
    assert_eq!(state(&s), b(b"epoch 3"), "untouched by truncate_after");
    s.pack(Tid(3)).unwrap();
    assert_eq!(state(&s), b(b"epoch 3"), "untouched by pack");

    // A fill leaves it alone, and it may be set while the fill is open.
    s.fill(&[rev(2, 5, Some("b5"))]).unwrap();
    assert_eq!(state(&s), b(b"epoch 3"), "untouched by fill");
    let progress = s.fill_progress().unwrap();
    assert!(progress.is_some());
    s.set_replication_state(b"epoch 4").unwrap();
    assert_eq!(
        s.fill_progress().unwrap(),
        progress,
        "the fill is unchanged"
    );
    let s = h.restart(s);
    assert_eq!(state(&s), b(b"epoch 4"));
    assert_eq!(s.fill_progress().unwrap(), progress);
    s.fill_finish(Tid(5)).unwrap();
    assert_eq!(state(&s), b(b"epoch 4"), "untouched by fill_finish");
    assert_eq!(s.last_transaction().unwrap(), Tid(5));

    // Too large: refused, nothing changed.
    let big = vec![7u8; crate::META_LEN_MAX + 1];
    assert_eq!(
        s.set_replication_state(&big),
        Err(StorageError::StateTooLarge {
            len: crate::META_LEN_MAX + 1,
            max: crate::META_LEN_MAX
        })
    );
    assert_eq!(state(&s), b(b"epoch 4"));
    let s = h.restart(s);
    assert_eq!(
        state(&s),
        b(b"epoch 4"),
        "the refused state was not written"
    );
    assert_eq!(s.last_transaction().unwrap(), Tid(5));
    assert_eq!(s.load(&oid(2)).unwrap(), Some(rev(2, 5, Some("b5"))));
    // At the maximum it is accepted.
    s.set_replication_state(&big[1..]).unwrap();
    let s = h.restart(s);
    assert_eq!(state(&s), b(&big[1..]));
    // And the data path goes on as before.
    s.commit(&txn(6, &[(1, Some("a6"))])).unwrap();
    assert_eq!(s.load(&oid(1)).unwrap(), Some(rev(1, 6, Some("a6"))));
    assert_eq!(state(&s), b(&big[1..]));
}

/// Many threads committing at once: each commit either succeeds or fails cleanly, and the
/// store holds exactly the successful ones.
pub fn concurrent_commits<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let next = AtomicU64::new(1);
    let ok = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for th in 0..8u64 {
            let (s, next, ok) = (&s, &next, &ok);
            scope.spawn(move || {
                for i in 0..25u64 {
                    loop {
                        let tid = next.fetch_add(1, Ordering::SeqCst);
                        let t = txn(
                            tid,
                            &[(th * 1000 + i, Some("v")), (100_000 + th, Some("w"))],
                        );
                        match s.commit(&t) {
                            Ok(()) => {
                                ok.lock().unwrap().push(tid);
                                break;
                            }
                            Err(StorageError::NonIncreasingTid { .. }) => continue,
                            Err(e) => panic!("commit {tid}: {e}"),
                        }
                    }
                }
            });
        }
    });
    let mut ok = ok.into_inner().unwrap();
    ok.sort_unstable();
    assert_eq!(ok.len(), 200);
    assert_eq!(tids(&s, TidRange::ALL, Direction::Forward), ok.to_vec());
    assert_eq!(s.last_transaction().unwrap(), Tid(*ok.last().unwrap()));
}

/// `apply_batch` judges each transaction as `apply` would, in order, and keeps what it applied.
pub fn apply_batch_matches_apply<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let t1 = txn(1, &[(1, Some("a"))]);
    let t2 = txn(2, &[(1, Some("b")), (2, Some("c"))]);
    let t3 = txn(3, &[(2, None)]);
    let r = s.apply_batch(&[
        (Tid(0), t1.clone()),
        (Tid(1), t2.clone()),
        (Tid(2), t3.clone()),
    ]);
    assert_eq!(r, vec![Ok(ApplyOutcome::Applied); 3]);
    assert_eq!(s.last_transaction().unwrap(), Tid(3));
    assert_eq!(s.load(&oid(1)).unwrap().unwrap().data, data("b"));
    // Already present, then a gap: the gap and what follows it are refused, nothing changes.
    let t5 = txn(5, &[(3, Some("x"))]);
    let t6 = txn(6, &[(3, Some("y"))]);
    let r = s.apply_batch(&[(Tid(2), t3.clone()), (Tid(4), t5), (Tid(5), t6)]);
    assert_eq!(r[0], Ok(ApplyOutcome::AlreadyPresent));
    assert!(matches!(r[1], Err(StorageError::Gap { .. })), "{r:?}");
    assert!(matches!(r[2], Err(StorageError::Gap { .. })), "{r:?}");
    assert_eq!(s.last_transaction().unwrap(), Tid(3));
    assert_eq!(s.load(&oid(3)).unwrap(), None);
    // What a batch applied survives a restart.
    let s = h.restart(s);
    assert_eq!(s.last_transaction().unwrap(), Tid(3));
    assert_eq!(
        tids(&s, TidRange::new(None, None), Direction::Forward),
        vec![1, 2, 3]
    );
}

/// Applies without a sync: visible at once, judged as `apply_batch` judges, and durable
/// once a sync from another handle (a sync thread's) or a later synced write returned.
pub fn unsynced_applies_are_visible_and_durable_after_sync<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let t1 = txn(1, &[(1, Some("a"))]);
    let t2 = txn(2, &[(1, Some("b"))]);
    let r = s.apply_batch_unsynced(&[(Tid(0), t1.clone()), (Tid(1), t2.clone())]);
    assert_eq!(r, vec![Ok(ApplyOutcome::Applied); 2]);
    assert_eq!(s.last_transaction().unwrap(), Tid(2));
    assert_eq!(s.load(&oid(1)).unwrap().unwrap().data, data("b"));
    let r = s.apply_batch_unsynced(&[(Tid(1), t2), (Tid(5), txn(6, &[(2, Some("x"))]))]);
    assert_eq!(r[0], Ok(ApplyOutcome::AlreadyPresent));
    assert!(matches!(r[1], Err(StorageError::Gap { .. })), "{r:?}");
    // Synced through another handle where the backend has one (a server's sync thread).
    match s.read_handle() {
        Some(other) => other.sync().unwrap(),
        None => s.sync().unwrap(),
    }
    let t3 = txn(3, &[(2, Some("c"))]);
    assert_eq!(
        s.apply_batch_unsynced(&[(Tid(2), t3)]),
        vec![Ok(ApplyOutcome::Applied)]
    );
    // A later synced write makes the unsynced one before it durable too.
    s.set_replication_state(b"promise").unwrap();
    let s = h.restart(s);
    assert_eq!(s.last_transaction().unwrap(), Tid(3));
    assert_eq!(
        tids(&s, TidRange::new(None, None), Direction::Forward),
        vec![1, 2, 3]
    );
    assert_eq!(s.load(&oid(2)).unwrap().unwrap().data, data("c"));
}
