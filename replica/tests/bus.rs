//! Exact-behaviour tests of the replica state machine over a perfect "ring": every multicast is
//! delivered to every member in one total order, at once. Each test puts servers in a state,
//! steps one input, and checks what came out.

use bytes::Bytes;
use gcs::{ProcId, RingId, Service, Time, View, ViewId, ViewKind};
use replica::{
    client_oid, CommitError, CommitMode, CommitRequest, Committed, Output, Replica, ReplicaConfig,
    ReqId, Role,
};
use std::collections::VecDeque;
use storage::{MemStorage, Oid, Record, Storage, Tid, TxnMeta};

struct Bus {
    servers: Vec<Option<Replica<MemStorage>>>,
    /// Members of the current view (server ids).
    members: Vec<u32>,
    ring_seq: u64,
    /// Multicasts not yet delivered: (sender, payload).
    wire: VecDeque<(u32, Bytes)>,
    replies: Vec<(u32, ReqId, Result<Committed, CommitError>)>,
    lost: Vec<(u32, Vec<Tid>)>,
    invalidations: Vec<(u32, Tid)>,
    durable: Vec<(u32, Tid)>,
    /// Senders whose multicasts are dropped (to build diverging histories).
    muted: Vec<u32>,
    /// Direct datagrams sent (`Output::Direct`): (from, to, datagram), kept, not delivered.
    direct: Vec<(u32, u32, Bytes)>,
    /// Servers whose store syncs are held back (`Output::Sync`): (server, sync id), answered
    /// by `release_syncs`. Everyone else's are answered at once.
    slow_disks: Vec<u32>,
    held_syncs: Vec<(u32, u64)>,
}

fn cfg(n: u32, mode: CommitMode) -> ReplicaConfig {
    ReplicaConfig::uniform(n, mode)
}

fn now() -> Time {
    Time(1)
}

impl Bus {
    fn new(n: u32, mode: CommitMode) -> Bus {
        Bus::with(cfg(n, mode))
    }

    fn with(c: ReplicaConfig) -> Bus {
        let n = c.servers.len() as u32;
        Bus {
            servers: (0..n)
                .map(|i| Some(Replica::new(c.clone(), i, MemStorage::default()).expect("open")))
                .collect(),
            members: Vec::new(),
            ring_seq: 0,
            wire: VecDeque::new(),
            replies: Vec::new(),
            lost: Vec::new(),
            invalidations: Vec::new(),
            durable: Vec::new(),
            muted: Vec::new(),
            direct: Vec::new(),
            slow_disks: Vec::new(),
            held_syncs: Vec::new(),
        }
    }

    fn r(&self, i: u32) -> &Replica<MemStorage> {
        self.servers[i as usize].as_ref().expect("running")
    }

    /// Installs a transitional then a regular view of `members` at each of them, and runs
    /// until quiet.
    fn view(&mut self, members: &[u32]) {
        self.install(members);
        self.run();
    }

    /// Installs a transitional then a regular view of `members` at each of them.
    fn install(&mut self, members: &[u32]) {
        self.ring_seq += 4;
        let procs: Vec<ProcId> = members.iter().map(|m| ProcId::new(*m, 1)).collect();
        let rep = procs[0];
        for kind in [ViewKind::Transitional, ViewKind::Regular] {
            let v = View {
                id: ViewId {
                    ring: RingId {
                        seq: self.ring_seq,
                        rep,
                    },
                    kind,
                },
                members: procs.clone(),
            };
            for m in members {
                if let Some(r) = self.servers[*m as usize].as_mut() {
                    r.handle_view(now(), &v);
                }
            }
        }
        self.members = members.to_vec();
    }

    /// Delivers one message at a time until `stop` holds (true) or nothing is left (false).
    fn run_until(&mut self, stop: impl Fn(&Bus) -> bool) -> bool {
        for _ in 0..10_000 {
            for i in 0..self.servers.len() {
                self.drain(i as u32);
            }
            if stop(self) {
                return true;
            }
            let Some((from, payload)) = self.wire.pop_front() else {
                return false;
            };
            for m in self.members.clone() {
                if let Some(r) = self.servers[m as usize].as_mut() {
                    r.handle_delivery(now(), ProcId::new(from, 1), &payload);
                }
            }
        }
        panic!("the bus did not go quiet");
    }

    /// Delivers until nothing is left to deliver.
    fn run(&mut self) {
        for _ in 0..10_000 {
            for i in 0..self.servers.len() {
                self.drain(i as u32);
            }
            let Some((from, payload)) = self.wire.pop_front() else {
                return;
            };
            for m in self.members.clone() {
                if let Some(r) = self.servers[m as usize].as_mut() {
                    r.handle_delivery(now(), ProcId::new(from, 1), &payload);
                }
            }
        }
        panic!("the bus did not go quiet");
    }

    fn drain(&mut self, i: u32) {
        let Some(r) = self.servers[i as usize].as_mut() else {
            return;
        };
        while let Some(o) = r.poll_output() {
            match o {
                Output::Multicast { payload, service } => {
                    assert!(matches!(service, Service::Agreed | Service::Safe));
                    if self.members.contains(&i) && !self.muted.contains(&i) {
                        self.wire.push_back((i, payload));
                    }
                }
                Output::Reply { req, result } => self.replies.push((i, req, result)),
                Output::Lost(l) => self.lost.push((i, l.tids)),
                Output::Invalidate(inv) => self.invalidations.push((i, inv.tid)),
                Output::Direct { to, payload } => self.direct.push((i, to, payload)),
                Output::Durable(t) => self.durable.push((i, t)),
                Output::Sync { id } if self.slow_disks.contains(&i) => {
                    self.held_syncs.push((i, id))
                }
                Output::Sync { id } => r.handle_synced(now(), id),
                Output::Role(_) | Output::NeedCheckpoint { .. } | Output::MembershipChanged => {}
            }
        }
        r.check_invariants();
    }

    /// Answers the syncs held back for `i`'s disk (one sync covers every id up to the last).
    fn release_syncs(&mut self, i: u32) {
        let last = self
            .held_syncs
            .iter()
            .filter(|(s, _)| *s == i)
            .map(|(_, id)| *id)
            .max();
        self.held_syncs.retain(|(s, _)| *s != i);
        if let (Some(id), Some(r)) = (last, self.servers[i as usize].as_mut()) {
            r.handle_synced(now(), id);
        }
        self.run();
    }

    fn commit(&mut self, at: u32, req: u64, c: CommitRequest) {
        self.servers[at as usize]
            .as_mut()
            .expect("running")
            .handle_commit(now(), ReqId(req), c);
        self.run();
    }

    /// Asks server `at` for a planned swap to `to` (accepted) and runs until quiet.
    fn swap(&mut self, at: u32, to: u32) {
        self.servers[at as usize]
            .as_mut()
            .expect("running")
            .request_swap(now(), to)
            .expect("accepted");
        self.run();
    }

    fn reply(&self, req: u64) -> &Result<Committed, CommitError> {
        &self
            .replies
            .iter()
            .find(|(_, r, _)| *r == ReqId(req))
            .unwrap_or_else(|| panic!("no reply to {req}: {:?}", self.replies))
            .2
    }
}

fn put(client: u64, request: u64, oid: u64, value: &str, expected: Option<Tid>) -> CommitRequest {
    CommitRequest {
        client,
        request,
        meta: TxnMeta::default(),
        records: vec![Record {
            oid: Oid::from_u64(oid),
            data: Some(Bytes::from(value.to_string())),
            expected_serial: expected,
        }],
        tid: replica::TidChoice::Next,
    }
}

#[test]
fn a_full_view_elects_the_lowest_id_and_everyone_backs_it() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    assert_eq!(b.r(0).role(), Role::Primary);
    assert_eq!(b.r(1).role(), Role::Backup);
    assert_eq!(b.r(2).role(), Role::Backup);
    let (p, e) = b.r(1).primary().expect("known");
    assert_eq!(p, 0);
    assert_eq!(b.r(2).promised(), e);
    // The epoch marker is everyone's first transaction.
    assert_eq!(b.r(1).last_tid(), b.r(0).last_tid());
    assert_eq!(b.r(0).lineage().len(), 1);
}

#[test]
fn a_minority_view_has_no_primary_and_redirects_nowhere() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[2]);
    assert_eq!(b.r(2).role(), Role::ReadOnly);
    b.commit(2, 1, put(7, 1, 1, "a", None));
    assert_eq!(b.reply(1), &Err(CommitError::NotPrimary { primary: None }));
}

#[test]
fn a_commit_is_applied_everywhere_and_acknowledged_once() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    b.commit(0, 1, put(7, 1, 1, "a", Some(Tid::ZERO)));
    let c = b.reply(1).clone().expect("committed");
    assert!(!c.duplicate);
    for s in 0..3 {
        let rev = b.r(s).store().load(&Oid::from_u64(1)).unwrap().unwrap();
        assert_eq!(rev.tid, c.tid);
        assert!(b.invalidations.contains(&(s, c.tid)));
    }
    assert_eq!(
        b.replies.iter().filter(|(_, r, _)| *r == ReqId(1)).count(),
        1
    );
}

#[test]
fn a_backup_redirects_to_the_primary() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    b.commit(1, 1, put(7, 1, 1, "a", None));
    assert_eq!(
        b.reply(1),
        &Err(CommitError::NotPrimary { primary: Some(0) })
    );
}

#[test]
fn a_retry_gets_the_first_outcome_and_is_applied_once() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    b.commit(0, 1, put(7, 1, 1, "a", None));
    let first = b.reply(1).clone().expect("committed");
    let last = b.r(0).last_tid();
    b.commit(0, 2, put(7, 1, 1, "a", None));
    let again = b.reply(2).clone().expect("answered");
    assert_eq!(again.tid, first.tid);
    assert!(again.duplicate);
    assert_eq!(b.r(0).last_tid(), last, "nothing new was applied");
    // An older request of the same client is refused, not applied.
    b.commit(0, 3, put(7, 2, 1, "b", None));
    b.commit(0, 4, put(7, 1, 1, "c", None));
    assert!(matches!(
        b.reply(4),
        Err(CommitError::Stale {
            request: 1,
            last: 2
        })
    ));
}

#[test]
fn conflicts_and_reserved_oids_are_refused_before_anything_is_sent() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    b.commit(0, 1, put(7, 1, 1, "a", None));
    let t1 = b.reply(1).clone().unwrap().tid;
    let last = b.r(1).last_tid();
    b.commit(0, 2, put(7, 2, 1, "b", Some(Tid(1))));
    assert_eq!(
        b.reply(2),
        &Err(CommitError::Conflict {
            oid: Oid::from_u64(1),
            expected: Tid(1),
            actual: t1
        })
    );
    let mut bad = put(7, 3, 1, "x", None);
    bad.records[0].oid = client_oid(9);
    b.commit(0, 3, bad);
    assert!(matches!(b.reply(3), Err(CommitError::Invalid(_))));
    assert_eq!(b.r(1).last_tid(), last, "replicas saw nothing");
}

#[test]
fn sync_commits_wait_for_a_majority_on_disk() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    // s1 and s2 stop reporting (their Applied messages are lost): no majority, no answer.
    b.muted = vec![1, 2];
    b.commit(0, 1, put(7, 1, 1, "a", None));
    assert!(b.replies.iter().all(|(_, r, _)| *r != ReqId(1)));
    b.muted.clear();
    // One more apply report from s1 (it applies the next commit) releases both.
    b.commit(0, 2, put(8, 1, 2, "b", None));
    assert!(b.reply(1).is_ok());
    assert!(b.reply(2).is_ok());
}

/// Commits are applied without waiting for the disk, and nothing counts as durable before the
/// sync that covers it returned: not a backup's report, not the primary's own vote. Nor is
/// anything shown before: reads (the staleness's last tid) and invalidations wait for it.
#[test]
fn a_commit_counts_as_durable_only_once_its_sync_returned() {
    let mut c = cfg(3, CommitMode::Sync);
    c.defer_syncs = true;
    let mut b = Bus::with(c);
    b.view(&[0, 1, 2]);
    b.slow_disks = vec![0, 1];
    let before = b.r(0).last_tid();
    b.commit(0, 1, put(7, 1, 1, "a", None));
    // Applied everywhere, durable on s2 alone: no majority, no answer; shown on s2 alone.
    for s in 0..3 {
        assert!(b.r(s).last_tid() > b.r(s).synced_tid() || s == 2, "s{s}");
        assert_eq!(b.r(s).staleness().last_tid, b.r(s).synced_tid(), "s{s}");
    }
    let applied = b.r(0).last_tid();
    assert_eq!(
        b.r(0).staleness().last_tid,
        before,
        "reads wait for the sync"
    );
    let told: Vec<u32> = b
        .invalidations
        .iter()
        .filter(|(_, t)| *t == applied)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        told,
        vec![2],
        "only the server that synced tells its clients"
    );
    assert!(b.replies.iter().all(|(_, r, _)| *r != ReqId(1)));
    assert!(
        b.durable.iter().all(|(_, t)| *t < applied),
        "{:?}",
        b.durable
    );
    // s1's sync returns: s1 reports, a majority (s1, s2) holds it; the primary still waits
    // for its own disk, so that its reads show the committer what it was told.
    b.release_syncs(1);
    assert_eq!(b.r(1).synced_tid(), applied);
    assert!(b.replies.iter().all(|(_, r, _)| *r != ReqId(1)));
    b.release_syncs(0);
    let tid = b.reply(1).as_ref().expect("answered").tid;
    assert_eq!(tid, applied);
    assert_eq!(b.r(0).staleness().last_tid, tid);
    assert!(b.durable.iter().any(|(s, t)| *s == 0 && *t == tid));
    // And with the primary synced, it is a majority's reports it waits for: with s2 gone
    // quiet, s0 and s1 make a majority only after s1's sync.
    b.slow_disks = vec![1];
    b.muted = vec![2];
    b.commit(0, 2, put(8, 1, 2, "b", None));
    assert!(b.replies.iter().all(|(_, r, _)| *r != ReqId(2)));
    b.release_syncs(1);
    b.muted.clear();
    assert!(b.reply(2).is_ok());
    assert_eq!(b.r(0).synced_tid(), b.r(0).last_tid());
}

/// A report sent straight to the primary counts only for the primary's current epoch: a late
/// report from an earlier epoch (another lineage, maybe truncated since) releases nothing.
#[test]
fn a_direct_report_counts_only_for_the_primary_s_epoch() {
    use replica::wire::Msg;
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    // The backups' ordered reports are lost; their direct ones are held back.
    b.muted = vec![1, 2];
    b.commit(0, 1, put(7, 1, 1, "a", None));
    assert!(b.replies.iter().all(|(_, r, _)| *r != ReqId(1)));
    let (_, to, datagram) = b
        .direct
        .iter()
        .rfind(|(from, _, _)| *from == 1)
        .cloned()
        .expect("s1 reported straight to the primary");
    assert_eq!(to, 0);
    assert!(Replica::<MemStorage>::is_direct(&datagram));
    let prefix = &datagram[..2]; // the direct-datagram prefix, then the message
    let Ok(Msg::Applied { server, epoch, tid }) = Msg::decode(&datagram[prefix.len()..]) else {
        panic!("not an Applied report");
    };
    let stale = Msg::Applied {
        server,
        epoch: replica::Epoch(epoch.0 - 1),
        tid,
    };
    let mut forged = prefix.to_vec();
    forged.extend_from_slice(&stale.encode());
    let s0 = b.servers[0].as_mut().unwrap();
    s0.handle_direct(now(), &forged);
    b.drain(0);
    assert!(
        b.replies.iter().all(|(_, r, _)| *r != ReqId(1)),
        "a stale report counted"
    );
    // The real one releases the answer, and a duplicate of it changes nothing.
    let s0 = b.servers[0].as_mut().unwrap();
    s0.handle_direct(now(), &datagram);
    s0.handle_direct(now(), &datagram);
    b.drain(0);
    assert!(b.reply(1).is_ok());
    assert_eq!(
        b.replies.iter().filter(|(_, r, _)| *r == ReqId(1)).count(),
        1
    );
}

#[test]
fn a_planned_swap_hands_over_without_failing_a_request() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    let e1 = b.r(0).primary().unwrap().1;
    b.commit(0, 1, put(7, 1, 1, "a", None));
    b.swap(1, 2);
    assert_eq!(b.r(2).role(), Role::Primary);
    assert_eq!(b.r(0).role(), Role::Backup);
    let (p, e2) = b.r(0).primary().unwrap();
    assert_eq!((p, e2), (2, gcs_epoch_after(e1)));
    b.commit(0, 2, put(7, 2, 1, "b", None));
    assert_eq!(
        b.reply(2),
        &Err(CommitError::NotPrimary { primary: Some(2) })
    );
    b.commit(2, 3, put(7, 2, 1, "b", None));
    assert!(b.reply(3).is_ok());
    assert!(b
        .replies
        .iter()
        .all(|(_, _, r)| r.is_ok() || matches!(r, Err(CommitError::NotPrimary { .. }))));
}

fn gcs_epoch_after(e: replica::Epoch) -> replica::Epoch {
    replica::Epoch(e.0 + 1)
}

#[test]
fn an_async_tail_the_new_primary_never_had_is_archived_and_reported() {
    let mut b = Bus::new(3, CommitMode::Async { window: 10 });
    b.view(&[0, 1, 2]);
    b.commit(0, 1, put(7, 1, 1, "a", None));
    assert!(b.reply(1).is_ok());
    // s0's next commits never reach the others (its multicasts are lost), but async mode
    // answers at once.
    b.muted = vec![0];
    b.commit(0, 2, put(7, 2, 1, "b", None));
    b.commit(0, 3, put(7, 3, 2, "c", None));
    let tail = [
        b.reply(2).clone().unwrap().tid,
        b.reply(3).clone().unwrap().tid,
    ];
    b.muted.clear();
    // s0 is cut off; s1 and s2 elect s1, which writes on.
    b.view(&[1, 2]);
    assert_eq!(b.r(1).role(), Role::Primary);
    b.commit(1, 4, put(8, 1, 3, "d", None));
    assert!(b.reply(4).is_ok());
    // s0 comes back: the newer epoch wins, s0's tail goes to the lost archive.
    b.view(&[0, 1, 2]);
    assert_eq!(b.r(1).role(), Role::Primary);
    let (who, lost) = b.lost.iter().find(|(s, _)| *s == 0).expect("s0 reported");
    assert_eq!(*who, 0);
    assert_eq!(lost, &tail.to_vec());
    assert_eq!(b.r(0).last_tid(), b.r(1).last_tid());
    let archived: Vec<Tid> = b
        .r(0)
        .store()
        .lost_transactions()
        .unwrap()
        .map(|l| l.unwrap().txn.tid)
        .collect();
    assert_eq!(archived, tail.to_vec());
}

#[test]
fn commits_of_an_older_epoch_are_refused() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    let (_, e) = b.r(1).primary().unwrap();
    let stale = replica::wire::Msg::Commit {
        epoch: replica::Epoch(e.0 - 1),
        prev: b.r(1).last_tid(),
        txn: storage::Transaction {
            tid: Tid(1000),
            meta: TxnMeta::default(),
            records: vec![],
        },
    }
    .encode();
    let before = b.r(1).last_tid();
    let fenced = b.r(1).stats().fenced;
    b.servers[1]
        .as_mut()
        .unwrap()
        .handle_delivery(now(), ProcId::new(0, 1), &stale);
    assert_eq!(b.r(1).last_tid(), before);
    assert_eq!(b.r(1).stats().fenced, fenced + 1);
    // Garbage is counted and dropped too, never a panic.
    b.servers[1]
        .as_mut()
        .unwrap()
        .handle_delivery(now(), ProcId::new(0, 1), b"\x01\x03garbage");
    assert_eq!(b.r(1).stats().fenced, fenced + 2);
}

#[test]
fn a_restarted_server_keeps_its_promise_and_data() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    b.commit(0, 1, put(7, 1, 1, "a", None));
    let r2 = b.servers[2].take().unwrap();
    let (promised, last) = (r2.promised(), r2.last_tid());
    let store = r2.into_store();
    let back = Replica::new(cfg(3, CommitMode::Sync), 2, store).unwrap();
    assert_eq!(back.promised(), promised);
    assert_eq!(back.last_tid(), last);
    assert!(back.store().load(&Oid::from_u64(1)).unwrap().is_some());
}

/// A fill resumed under a primary of another history starts over (the bug seed 4578 of the
/// replica sweep found). s3 begins an object fill from s0, whose history has an async tail
/// nobody else got, and is cut off after its first chunk. s1 is elected from behind that tail
/// and rewrites an object s3 already filled. Resumed, the fill would only be patched with s1's
/// changes after s0's consistency point and keep the old object; it starts over instead, and
/// s3 ends with exactly s1's objects.
#[test]
fn a_fill_cut_off_and_resumed_from_another_history_starts_over() {
    let mut c = cfg(5, CommitMode::Async { window: 64 });
    c.recovery.fast_after = 1; // far behind: recover by objects
    c.recovery.chunk_bytes = 64; // a few objects a chunk
    c.recovery.chunks_per_request = 1;
    let mut b = Bus::with(c);
    b.view(&[0, 1, 2]);
    for k in 1..=20u64 {
        b.commit(0, k, put(7, k, k, &format!("v{k}"), None));
    }
    // An async tail on s0 alone.
    b.muted = vec![0];
    b.commit(0, 21, put(7, 21, 100, "tail", None));
    b.commit(0, 22, put(7, 22, 101, "tail", None));
    b.muted.clear();
    // s0 with the empty s3 and s4: they fill from s0 and are cut off after a first chunk.
    b.wire.clear();
    b.install(&[0, 3, 4]);
    let cut = b.run_until(|b| {
        [3, 4]
            .iter()
            .all(|i| b.r(*i).store().fill_progress().unwrap().is_some())
    });
    assert!(cut, "s3 and s4 never started filling");
    assert_eq!(b.r(0).role(), Role::Primary);
    b.wire.clear();
    // s1 is elected from behind s0's tail and rewrites object 1 (filled by s3 already).
    b.view(&[1, 2, 4]);
    assert_eq!(b.r(1).role(), Role::Primary);
    b.commit(1, 31, put(8, 1, 1, "s1-a", None));
    b.commit(1, 32, put(8, 2, 1, "s1-b", None));
    b.view(&[1, 2, 3, 4]);
    assert_eq!(b.r(1).role(), Role::Primary);
    for i in [3, 4] {
        assert_eq!(b.r(i).stats().fills_restarted, 1, "s{i}");
        assert_eq!(b.r(i).role(), Role::Backup, "s{i}");
        assert_eq!(b.r(i).last_tid(), b.r(1).last_tid(), "s{i}");
        for oid in (1..=20).chain([100, 101]) {
            let o = Oid::from_u64(oid);
            assert_eq!(
                b.r(i).store().load(&o).unwrap(),
                b.r(1).store().load(&o).unwrap(),
                "s{i} object {oid}"
            );
        }
    }
}

/// A recovery chunk counts only from the donor the recovering server asked: the same chunk
/// delivered as another member's multicast changes nothing, so a member cannot feed a
/// recovering server a history of its own.
#[test]
fn a_recovery_chunk_from_anyone_but_the_donor_is_ignored() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1]);
    for k in 1..=10u64 {
        b.commit(0, k, put(7, k, k, &format!("v{k}"), None));
    }
    b.run();
    // s2 joins empty and fetches from a donor; stop at the first chunk on the wire.
    b.install(&[0, 1, 2]);
    let is_chunk = |p: &Bytes| {
        matches!(
            replica::wire::Msg::decode(p),
            Ok(replica::wire::Msg::Chunk { .. })
        )
    };
    let found = b.run_until(|b| b.wire.front().is_some_and(|(_, p)| is_chunk(p)));
    assert!(found, "no recovery chunk was sent");
    let (donor, chunk) = b.wire.pop_front().expect("checked");
    let other = [0, 1]
        .into_iter()
        .find(|s| *s != donor)
        .expect("two others");
    let (chunks, last) = (b.r(2).stats().recovery_chunks, b.r(2).last_tid());
    b.servers[2]
        .as_mut()
        .expect("running")
        .handle_delivery(now(), ProcId::new(other, 1), &chunk);
    assert_eq!(
        b.r(2).stats().recovery_chunks,
        chunks,
        "taken from s{other}"
    );
    assert_eq!(b.r(2).last_tid(), last);
    // From the donor it counts, and s2 catches up.
    b.wire.push_front((donor, chunk));
    b.run();
    assert!(b.r(2).stats().recovery_chunks > chunks);
    assert_eq!(b.r(2).last_tid(), b.r(0).last_tid());
}

/// The primary picks tids as asked: at least a clock reading the shell passed, exactly a
/// restored tid only above every tid assigned, never out of range; and it announces each
/// tid durable only once a majority holds it.
#[test]
fn tids_follow_the_choice_and_durability_is_announced_after_a_majority() {
    use replica::TidChoice;
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    let mut c = put(7, 1, 1, "a", None);
    c.tid = TidChoice::AtLeast(Tid(1_000));
    b.commit(0, 1, c);
    assert_eq!(b.reply(1).as_ref().unwrap().tid, Tid(1_000));
    assert!(b.durable.iter().any(|(i, t)| *i == 0 && *t == Tid(1_000)));
    assert!(
        b.durable.iter().all(|(i, _)| *i == 0),
        "only the primary announces"
    );
    // A clock reading behind the last tid does not take tids back.
    let mut c = put(7, 2, 1, "b", None);
    c.tid = TidChoice::AtLeast(Tid(5));
    b.commit(0, 2, c);
    assert_eq!(b.reply(2).as_ref().unwrap().tid, Tid(1_001));
    let mut c = put(7, 3, 1, "c", None);
    c.tid = TidChoice::Exactly(Tid(1_001));
    b.commit(0, 3, c);
    assert!(matches!(b.reply(3), Err(CommitError::Invalid(_))));
    let mut c = put(7, 4, 1, "d", None);
    c.tid = TidChoice::Exactly(Tid(replica::COUNTER_MAX));
    b.commit(0, 4, c);
    assert!(matches!(b.reply(4), Err(CommitError::Invalid(_))));
    let mut c = put(7, 5, 1, "e", None);
    c.tid = TidChoice::Exactly(Tid(2_000));
    b.commit(0, 5, c);
    assert_eq!(b.reply(5).as_ref().unwrap().tid, Tid(2_000));
    // Without the backups' reports nothing new is announced durable.
    b.muted = vec![1, 2];
    let before = b.durable.len();
    b.commit(0, 6, put(7, 6, 1, "f", None));
    assert_eq!(b.durable.len(), before);
}

#[test]
fn a_pack_order_packs_every_server_at_the_same_point() {
    let mut b = Bus::new(3, CommitMode::Sync);
    b.view(&[0, 1, 2]);
    // Objects 1 (two revisions) and 2 (one, to be collected).
    b.commit(0, 1, put(7, 1, 1, "a", None));
    b.commit(0, 2, put(7, 2, 2, "garbage", None));
    b.commit(0, 3, put(7, 3, 1, "b", None));
    let t3 = b.reply(3).clone().unwrap().tid;
    // The shell orders a pack up to t3 (bound t3 + 1, which the order's own tid does not
    // precede), collecting object 2.
    let order = replica::encode_pack_order(storage::Tid(t3.0 + 1), &[Oid::from_u64(2)]);
    let pack = CommitRequest {
        client: 8,
        request: 1,
        meta: TxnMeta::default(),
        records: vec![Record {
            oid: replica::zeo_pack_oid(),
            data: Some(order),
            expected_serial: None,
        }],
        tid: replica::TidChoice::Next,
    };
    b.commit(0, 4, pack);
    b.reply(4)
        .clone()
        .expect("a shell-owned object may be written");
    for s in 0..3 {
        let st = b.r(s).store();
        assert_eq!(st.horizon().unwrap(), t3, "server {s}");
        assert_eq!(st.load(&Oid::from_u64(2)).unwrap(), None, "server {s}");
        assert_eq!(
            st.history(&Oid::from_u64(1), 10).unwrap().len(),
            1,
            "server {s}"
        );
    }
    // The replica's own objects stay out of reach.
    let mut bad = put(7, 5, 1, "x", None);
    bad.records[0].oid = replica::lineage_oid();
    b.commit(0, 5, bad);
    assert!(matches!(b.reply(5), Err(CommitError::Invalid(_))));
}

/// Servers 0, 1, 2 vote; 3 is a spare added while running (a learner until given a vote).
fn with_spare() -> Bus {
    let mut c = cfg(4, CommitMode::Sync);
    c.servers[3].group = replica::ADDED_GROUP.into();
    c.servers[3].kind = replica::GroupKind::Remote;
    c.servers[3].weight = 0;
    Bus::with(c)
}

fn change_voters(b: &mut Bus, at: u32, req: u64, add: &[(u32, u32)], remove: &[u32]) {
    b.servers[at as usize]
        .as_mut()
        .expect("running")
        .handle_voter_change(now(), ReqId(req), add, remove);
}

fn voters_of(b: &Bus, s: u32) -> String {
    b.r(s).voters().0.to_string()
}

#[test]
fn a_spare_gets_a_vote_through_a_joint_configuration() {
    let mut b = with_spare();
    b.view(&[0, 1, 2, 3]);
    assert_eq!(b.r(0).role(), Role::Primary);
    b.commit(0, 1, put(7, 1, 1, "a", None));
    change_voters(&mut b, 0, 10, &[(3, 1)], &[]);
    b.run();
    let done = b.reply(10).clone().expect("carried out");
    for s in 0..4 {
        assert_eq!(voters_of(&b, s), "{s0,s1,s2,s3}", "server {s}");
        assert_eq!(b.r(s).voters().1, done.tid);
    }
    // The joint configuration came first, in the history every server holds.
    let h = b.r(2).store().history(&replica::voters_oid(), 10).unwrap();
    let configs: Vec<String> = h
        .iter()
        .rev()
        .map(|r| {
            replica::VoterConfig::decode(r.data.as_deref().unwrap())
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(configs, ["{s0,s1,s2} -> {s0,s1,s2,s3}", "{s0,s1,s2,s3}"]);
    // Asking again answers with the same outcome and writes nothing.
    let last = b.r(0).last_tid();
    change_voters(&mut b, 0, 11, &[(3, 1)], &[]);
    b.run();
    assert_eq!(b.reply(11).clone().expect("answered").tid, done.tid);
    assert_eq!(b.r(0).last_tid(), last);
    // Four voters now: two of them elect only with the tie-breaker (s0).
    b.view(&[2, 3]);
    assert_eq!(b.r(2).role(), Role::ReadOnly);
    b.view(&[0, 3]);
    assert_eq!(b.r(0).role(), Role::Primary);
}

#[test]
fn a_replace_cut_in_the_middle_elects_on_neither_side() {
    let mut b = with_spare();
    b.view(&[0, 1, 2, 3]);
    change_voters(&mut b, 0, 10, &[(3, 1)], &[2]);
    // Stop once every server holds the joint configuration; the rest is lost in the cut.
    assert!(b.run_until(|b| (0..4).all(|s| b.r(s).voters().0.is_joint())));
    b.wire.clear();
    for s in 0..4 {
        assert_eq!(voters_of(&b, s), "{s0,s1,s2} -> {s0,s1,s3}");
    }
    // {1, 2} is a majority of the old voters only, {0, 3} of the new only.
    b.view(&[1, 2]);
    assert_eq!(b.r(1).role(), Role::ReadOnly);
    assert_eq!(b.r(2).role(), Role::ReadOnly);
    b.view(&[0, 3]);
    assert_eq!(b.r(0).role(), Role::ReadOnly);
    assert_eq!(b.r(3).role(), Role::ReadOnly);
    // A side with majorities of both elects, and its primary finishes the change by itself.
    b.view(&[0, 1, 3]);
    assert_eq!(b.r(0).role(), Role::Primary);
    for s in [0, 1, 3] {
        assert_eq!(voters_of(&b, s), "{s0,s1,s3}", "server {s}");
    }
    // Server 2 catches up to a configuration without its vote.
    b.view(&[0, 1, 2, 3]);
    assert_eq!(voters_of(&b, 2), "{s0,s1,s3}");
    b.view(&[1, 2]);
    assert_eq!(
        b.r(1).role(),
        Role::ReadOnly,
        "{{1, 2}} is no majority of {{0, 1, 3}}"
    );
}

#[test]
fn voter_changes_that_cannot_work_are_refused_with_a_reason() {
    let mut b = with_spare();
    b.view(&[0, 1, 2]);
    change_voters(&mut b, 0, 1, &[(3, 1)], &[]);
    change_voters(&mut b, 0, 2, &[], &[0]);
    change_voters(&mut b, 0, 3, &[(9, 1)], &[]);
    change_voters(&mut b, 1, 4, &[], &[2]);
    b.run();
    let why = |r: u64| match b.reply(r) {
        Err(CommitError::Invalid(w)) => w.clone(),
        other => panic!("{other:?}"),
    };
    assert!(why(1).contains("not in the primary's view"), "{}", why(1));
    assert!(why(2).contains("is the primary"), "{}", why(2));
    assert!(why(3).contains("not a member"), "{}", why(3));
    assert_eq!(
        b.reply(4),
        &Err(CommitError::NotPrimary { primary: Some(0) })
    );
    // Clients cannot write the voters object.
    let mut bad = put(7, 1, 1, "x", None);
    bad.records[0].oid = replica::voters_oid();
    b.commit(0, 5, bad);
    assert!(matches!(b.reply(5), Err(CommitError::Invalid(_))));
}

#[test]
fn a_server_joining_on_its_configuration_file_does_not_stop_elections() {
    // Voters 0, 1, 2; spares 3, 4 and 5. Two replaces make the voters {0, 3, 4}; then s5
    // starts on an empty store, whose voters are still the file's {0, 1, 2}.
    let mut c = cfg(6, CommitMode::Sync);
    for s in 3..6 {
        c.servers[s].group = replica::ADDED_GROUP.into();
        c.servers[s].kind = replica::GroupKind::Remote;
        c.servers[s].weight = 0;
    }
    let mut b = Bus::with(c);
    b.view(&[0, 1, 2, 3, 4]);
    change_voters(&mut b, 0, 10, &[(3, 1)], &[1]);
    b.run();
    b.reply(10).clone().expect("s3 replaces s1");
    change_voters(&mut b, 0, 11, &[(4, 1)], &[2]);
    b.run();
    b.reply(11).clone().expect("s4 replaces s2");
    assert_eq!(voters_of(&b, 0), "{s0,s3,s4}");
    assert_eq!(voters_of(&b, 5), "{s0,s1,s2}", "s5 never joined");
    b.view(&[0, 3, 4, 5]);
    assert_eq!(
        b.r(0).role(),
        Role::Primary,
        "the file's voters of s5 bind nobody"
    );
    assert_eq!(voters_of(&b, 5), "{s0,s3,s4}", "s5 caught up");
}

/// Async mode commits locally before anyone else has the transaction: a voter configuration the
/// primary wrote that way can be part of a tail the cluster loses. When that primary comes back
/// under a newer epoch, the truncation takes the configuration away with the tail, and the
/// server reports the cluster's configuration again (the one that elected the new primary), not
/// the lost one: configurations are ordered by the tid that wrote them, and a lost tid no longer
/// names one.
#[test]
fn a_voter_configuration_in_a_lost_async_tail_is_lost_with_it() {
    let mut c = cfg(4, CommitMode::Async { window: 10 });
    c.servers[3].group = replica::ADDED_GROUP.into();
    c.servers[3].kind = replica::GroupKind::Remote;
    c.servers[3].weight = 0;
    let mut b = Bus::with(c);
    b.view(&[0, 1, 2, 3]);
    assert_eq!(b.r(0).role(), Role::Primary);
    let before = voters_of(&b, 1);
    // s0's multicasts are lost from here: it writes the joint configuration locally only.
    b.muted = vec![0];
    change_voters(&mut b, 0, 50, &[(3, 1)], &[1]);
    b.run();
    assert_ne!(
        voters_of(&b, 0),
        before,
        "s0 holds a configuration nobody else has"
    );
    let lost_tid = b.r(0).voters().1;
    assert!(lost_tid > Tid::ZERO);
    b.muted.clear();
    // s0 is cut off; s1, s2 (and the spare) elect under the configuration they have.
    b.view(&[1, 2, 3]);
    assert_eq!(b.r(1).role(), Role::Primary);
    b.commit(1, 51, put(8, 1, 3, "d", None));
    assert!(b.reply(51).is_ok());
    // s0 comes back: its tail, configuration included, goes to the lost archive.
    b.view(&[0, 1, 2, 3]);
    assert_eq!(b.r(1).role(), Role::Primary);
    let (_, lost) = b.lost.iter().find(|(s, _)| *s == 0).expect("s0 reported");
    assert!(lost.contains(&lost_tid), "{lost:?} lacks {lost_tid}");
    for s in 0..4 {
        assert_eq!(voters_of(&b, s), before, "s{s}");
        assert_eq!(b.r(s).voters().1, b.r(1).voters().1, "s{s}");
    }
    assert_eq!(b.r(0).last_tid(), b.r(1).last_tid());
}

/// Idempotency keys live in transaction headers and the client table (`replica::clients`),
/// not in objects. A server restarted after the last table was written rebuilds it from
/// that table and the log after it: a retry of a request committed on either side of the
/// table gets its first outcome, an older one is refused as stale.
#[test]
fn a_restarted_primary_rebuilds_the_client_table_from_the_last_table_and_the_log() {
    let mut c = cfg(3, CommitMode::Sync);
    c.client_table_every = 3;
    let mut b = Bus::with(c.clone());
    b.view(&[0, 1, 2]);
    b.commit(0, 1, put(8, 1, 50, "early", None));
    let early = b.reply(1).clone().unwrap().tid;
    let mut tids = Vec::new();
    for k in 1..=7u64 {
        b.commit(0, 100 + k, put(7, k, k, &format!("v{k}"), None));
        tids.push(b.reply(100 + k).clone().unwrap().tid);
    }
    assert!(b.r(0).stats().client_tables >= 2, "tables written");
    assert_eq!(
        b.r(0).store().load(&client_oid(7)).unwrap(),
        None,
        "no client record object"
    );
    // Every server restarts; s0 is elected again.
    for i in 0..3 {
        let store = b.servers[i].take().unwrap().into_store();
        b.servers[i] = Some(Replica::new(c.clone(), i as u32, store).unwrap());
    }
    b.view(&[0, 1, 2]);
    assert_eq!(b.r(0).role(), Role::Primary);
    let last = b.r(0).last_tid();
    b.commit(0, 201, put(7, 7, 7, "v7", None));
    b.commit(0, 202, put(8, 1, 50, "early", None));
    b.commit(0, 203, put(7, 5, 5, "v5", None));
    let again = b.reply(201).clone().expect("answered");
    assert!(again.duplicate);
    assert_eq!(again.tid, tids[6]);
    let again = b.reply(202).clone().expect("answered");
    assert!(again.duplicate);
    assert_eq!(again.tid, early);
    assert!(matches!(
        b.reply(203),
        Err(CommitError::Stale {
            request: 5,
            last: 7
        })
    ));
    assert_eq!(b.r(0).last_tid(), last, "nothing applied twice");
}

/// A server filled by objects holds no log before its consistency point: the donor sends its
/// client table as of that point with the last chunk, and the server writes it as the fill
/// finishes. Commits that land while the fill runs move that point past the epoch's first
/// transaction (which holds a table), so only the donor's table knows them. Made primary by
/// a swap, the filled server answers a retry of such a commit with the first outcome.
/// (Without the table from the donor the retry is applied a second time.)
#[test]
fn an_object_fill_brings_the_client_table_to_a_future_primary() {
    let mut c = cfg(3, CommitMode::Sync);
    c.recovery.fast_after = 1; // far behind: recover by objects
    c.recovery.chunk_bytes = 64; // a few objects a chunk
    c.recovery.chunks_per_request = 1;
    let mut b = Bus::with(c);
    b.view(&[0, 1]);
    for k in 1..=20u64 {
        b.commit(0, k, put(9, k, k, &format!("v{k}"), None));
    }
    b.install(&[0, 1, 2]);
    let started = b.run_until(|b| b.r(2).store().fill_progress().unwrap().is_some());
    assert!(started, "s2 never started filling");
    // Delivered between two chunks: the rest of the fill is consistent past it.
    b.commit(0, 101, put(7, 1, 101, "during", None));
    let during = b.reply(101).clone().unwrap().tid;
    assert!(b.r(2).stats().recoveries_fast >= 1, "s2 filled by objects");
    assert_eq!(b.r(2).last_tid(), b.r(0).last_tid());
    assert!(
        b.r(2).store().load(&Oid::from_u64(101)).unwrap().is_some(),
        "the commit reached s2"
    );
    assert_eq!(
        b.r(2).client_table().get(7),
        Some((during, 1)),
        "the table came with the fill"
    );
    b.swap(1, 2);
    assert_eq!(b.r(2).role(), Role::Primary);
    let last = b.r(2).last_tid();
    b.commit(2, 200, put(7, 1, 101, "during", None));
    let again = b.reply(200).clone().expect("answered");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.tid, during);
    assert_eq!(b.r(2).last_tid(), last, "nothing applied twice");
}

/// An async primary commits, and notes in its client table, before the ring delivers its
/// transactions back to it. Its own table transaction, delivered after later commits were
/// noted, must not take them back: a retry of such a commit still gets its first outcome.
#[test]
fn an_async_primary_s_own_table_delivered_late_keeps_later_keys() {
    let mut c = cfg(3, CommitMode::Async { window: 8 });
    c.client_table_every = 2;
    let mut b = Bus::with(c);
    b.view(&[0, 1, 2]);
    let s0 = |b: &mut Bus, req: u64, c: CommitRequest| {
        b.servers[0]
            .as_mut()
            .unwrap()
            .handle_commit(now(), ReqId(req), c)
    };
    s0(&mut b, 1, put(1, 1, 10, "a", None));
    // The second commit is followed by a table.
    s0(&mut b, 2, put(2, 1, 11, "b", None));
    s0(&mut b, 3, put(1, 2, 12, "c", None));
    b.drain(0);
    let first = b.reply(3).clone().unwrap();
    assert!(b.r(0).stats().client_tables >= 1);
    // Deliver until the table would have taken the third commit back (it does not: then
    // until the end).
    b.run_until(|b| {
        b.r(0).client_table().get(1).map(|(t, _)| t) != Some(first.tid) || b.wire.is_empty()
    });
    s0(&mut b, 4, put(1, 2, 12, "c", None));
    b.run();
    let again = b.reply(4).clone().expect("answered");
    assert!(again.duplicate, "the retry was applied again: {again:?}");
    assert_eq!(again.tid, first.tid);
}

/// A voter that restarts with an object fill open reports the epochs its own log reaches,
/// not the donor's lineage its store already holds as a filled object: otherwise it would
/// look ahead of a member that holds everything its log does, and no view could elect while
/// it is there (`choose_donor` waits for a filling voter that is really ahead).
#[test]
fn a_voter_restarted_mid_fill_does_not_look_ahead_of_what_it_holds() {
    let mut c = cfg(3, CommitMode::Sync);
    c.recovery.fast_after = 1; // far behind: recover by objects
    c.recovery.chunk_bytes = 64; // a few objects a chunk
    c.recovery.chunks_per_request = 1;
    let mut b = Bus::with(c.clone());
    b.view(&[0, 1, 2]);
    b.view(&[0, 1]);
    for k in 1..=20u64 {
        b.commit(0, k, put(9, k, k, &format!("v{k}"), None));
    }
    let s2_last = b.r(2).last_tid();
    // s1 is away; s0 is elected again and s2 fills from it. A commit lands during the fill,
    // so that it ends with transactions filled after its objects (the lineage object, which
    // sorts last, is filled by then).
    b.install(&[0, 2]);
    let started = b.run_until(|b| b.r(2).store().fill_progress().unwrap().is_some());
    assert!(started, "s2 never started filling");
    b.servers[0]
        .as_mut()
        .unwrap()
        .handle_commit(now(), ReqId(100), put(7, 1, 100, "during", None));
    let lineage_filled = b.run_until(|b| {
        let s = b.r(2).store();
        s.fill_progress().unwrap().is_some()
            && s.load(&replica::lineage_oid())
                .unwrap()
                .is_some_and(|r| r.tid > s2_last)
    });
    assert!(
        lineage_filled,
        "s2 finished its fill before the lineage came"
    );
    b.wire.clear();
    // s2 restarts with its fill open; s0 is gone.
    let store = b.servers[2].take().unwrap().into_store();
    b.servers[2] = Some(Replica::new(c.clone(), 2, store).unwrap());
    b.servers[0] = None;
    b.view(&[1, 2]);
    assert_eq!(
        b.r(1).role(),
        Role::Primary,
        "s1 holds everything s2's log does"
    );
}
