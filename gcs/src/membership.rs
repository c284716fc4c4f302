//! The membership half of Totem: gather, commit, recovery, and the installation of a new
//! configuration with Extended Virtual Synchrony.
//!
//! ```text
//!         token lost / merge answer / join from a member or an outsider
//!   ┌─────────────┐ ───────────────────────────────────────────────► ┌─────────┐
//!   │ OPERATIONAL │                                                    │ GATHER  │◄──┐
//!   └─────────────┘ ◄──────────────┐                                   └─────────┘   │
//!          ▲             installs T, then R          consensus: every member's join  │
//!          │                       │                 has the same proc and fail sets │
//!   ┌─────────────┐  commit token  │                                   ┌─────────┐   │
//!   │  RECOVERY   │ ◄──────────────┴── second rotation ─────────────── │ COMMIT  │   │
//!   └─────────────┘                                                    └─────────┘   │
//!          │ token lost / a new member gives up                            │ token lost
//!          └───────────────────────────────────────────────────────────────┴─────────┘
//! ```
//!
//! - **Gather.** Every process multicasts a join naming the processes it has heard of and those
//!   it gave up on; sets received are merged into its own. Once every process not given up on
//!   has sent a join with identical sets, the smallest of them (the representative) forms the
//!   ring. Those that do not come to agree within `consensus_timeout` are given up on; any
//!   change of the sets restarts that timeout, so processes whose timeouts would fire together
//!   do not give up on each other. A newer incarnation of a node makes the older one failed at
//!   once.
//! - **Commit.** The commit token goes round twice: the first rotation collects every member's
//!   previous ring id, aru, highest delivered and highest received seq, the second tells
//!   everyone what was collected.
//! - **Recovery.** The new ring runs, and each member re-sends, wrapped in new-ring packets, the
//!   old-ring packets its transitional set may be missing. It is complete when, on two
//!   consecutive visits, nobody had anything left to re-send and everything sent had reached
//!   every member; the member that notices marks the token `recovered`, and the others install
//!   at their next visit.
//! - **Install.** The transitional view, then the regular one, with the delivery split below;
//!   then Operational.
//! - **Merge.** The representative of an operational ring multicasts a merge-detect every
//!   `merge_detect_interval`. A member of another ring that hears it answers it directly, and
//!   that answer starts the membership round (neither the announcement nor another ring's data
//!   does). So rings merge only across a link that works in both directions: a daemon that can
//!   send but not receive is heard and answered, never hears the answer, and leaves the others'
//!   ring alone.
//!
//! One reading of EVS we chose (and the checkers test): a member that never installs a view,
//! because it gave up during that view's recovery, counts as failed *for that view*. Safe
//! delivery binds the members that installed it, and `view_agreement` requires the others to
//! move on to a view without it.
//!
//! Where EVS is enforced:
//! - Failure atomicity and transitional views: at `install`, each member of the new ring that
//!   comes from the same old ring (the transitional set) has, thanks to recovery, exactly the same
//!   old-ring packets, and walks them with the same rule: packets up to the highest seq any of
//!   them delivered, and agreed packets up to the first hole or the first not-yet-safe safe
//!   packet, are delivered in the old regular view; then the transitional view; then the rest, in
//!   order, skipping after a hole the packets of senders outside the transitional set (they may
//!   depend causally on the missing packet); then the new regular view.
//! - Safe delivery: a safe packet waits until the token's aru covered it on two consecutive
//!   visits (everyone has it), or, at a view change, for the transitional view.
//! - View ids: a new ring's seq is above every seq any member had seen, and the representative is
//!   part of the id, so ids are unique and each process sees them increase.
//!
//! Deviations from the Totem paper: the commit token carries each member's highest delivered
//! seq (not just its aru), which gives the regular/transitional split above directly; a newer
//! incarnation of a node makes members fail the older one at once instead of waiting for the
//! consensus timeout; a process alone waits one join timeout before forming a ring of one; a
//! change of the gather sets restarts the consensus timeout; another ring's announcement starts
//! a merge only once answered (see `on_merge_detect`), and another ring's data never does; a
//! daemon removed from the cluster (`Node::set_removed`) is failed as soon as anyone names it,
//! and its control packets are ignored.

use crate::node::{Commit, Dest, Gather, Node, Output, Passed, Recovery, State};
use crate::ring::Ring;
use crate::timer::Timer;
use crate::wire::{self, Body, CommitToken, Join, MemberEntry, MergeDetect, Packet, Token};
use crate::{ProcId, RingId, View, ViewId, ViewKind};
use bytes::Bytes;
use std::collections::{BTreeSet, VecDeque};

/// How far ahead of ours a join's ring number may be (see `on_join`): far more membership
/// changes than any cluster goes through.
const RING_SEQ_JUMP_MAX: u64 = 1 << 32;

impl Node {
    /// Starts (or restarts) a membership round.
    pub(crate) fn enter_gather(&mut self, reason: &'static str, extra: BTreeSet<ProcId>) {
        self.stats.gathers += 1;
        tracing::debug!(me = ?self.me, reason, from = ?self.phase(), "enter gather");
        self.held_token = None;
        self.passed = None;
        self.timers.stop_all();
        let mut proc_set: BTreeSet<ProcId> = extra;
        proc_set.insert(self.me);
        if let Some(r) = &self.installed {
            proc_set.extend(r.members.iter().copied());
        }
        let not_before = if proc_set.len() == 1 {
            self.now.saturating_add(self.cfg.join_timeout)
        } else {
            self.now
        };
        let mut g = Gather {
            proc_set,
            fail_set: BTreeSet::new(),
            consensus: BTreeSet::from([self.me]),
            not_before,
        };
        fail_superseded(&mut g, self.me);
        fail_removed(&mut g, &self.removed);
        self.state = State::Gather(g);
        self.send_join();
        self.timers
            .set(Timer::Join, self.now.saturating_add(self.cfg.join_timeout));
        self.timers.set(
            Timer::Consensus,
            self.now.saturating_add(self.cfg.consensus_timeout),
        );
        self.check_consensus();
    }

    fn send_join(&mut self) {
        let State::Gather(g) = &self.state else {
            return;
        };
        let join = Join {
            proc_set: g.proc_set.iter().copied().collect(),
            fail_set: g.fail_set.iter().copied().collect(),
            ring_seq: self.ring_seq_max,
        };
        self.send_control(Dest::All, &Packet::Join(join));
    }

    pub(crate) fn on_join(&mut self, from: ProcId, join: Join) {
        // Ring numbers grow by one per membership change. A join claiming a number billions
        // ahead is forged or corrupt: taking it would push our next ring towards the end of
        // the counter space (see `wire::COUNTER_MAX`), where peers refuse it.
        if join.ring_seq > self.ring_seq_max.saturating_add(RING_SEQ_JUMP_MAX) {
            self.stats.ignored += 1;
            return;
        }
        self.ring_seq_max = self.ring_seq_max.max(join.ring_seq);
        let enter = match &self.state {
            State::Operational => {
                let inst = self.installed.as_ref().expect("operational has a ring");
                // A join a member sent before our ring formed is stale.
                !(inst.contains(from) && join.ring_seq < inst.id.seq)
            }
            State::Commit(c) => c.members.contains(&from) && join.ring_seq >= c.ring.seq,
            State::Recovery(r) => r.ring.contains(from) && join.ring_seq >= r.ring.id.seq,
            State::Gather(_) => false,
        };
        if enter {
            self.enter_gather("join received", BTreeSet::from([from]));
        }
        let me = self.me;
        let State::Gather(g) = &mut self.state else {
            self.stats.ignored += 1;
            return;
        };
        let mut changed = false;
        if join.fail_set.contains(&me) {
            // It gave up on us: we cannot be in one ring with it this round.
            changed |= g.fail_set.insert(from);
            changed |= g.proc_set.insert(from);
        } else if g.fail_set.contains(&from) {
            return;
        } else {
            changed |= g.proc_set.insert(from);
            for p in &join.proc_set {
                changed |= g.proc_set.insert(*p);
            }
            for p in &join.fail_set {
                changed |= g.fail_set.insert(*p);
            }
        }
        changed |= fail_superseded(g, me);
        changed |= fail_removed(g, &self.removed);
        if changed {
            g.consensus = BTreeSet::from([me]);
            // The sets changed, so every agreement so far is void: give the others a whole
            // timeout to agree with the new sets. Without this, members whose timeouts fire
            // together fail each other for the agreement that the reset has just thrown away,
            // and split into rings of one. The sets only grow within a round, so the restarts
            // are bounded by twice the number of processes.
            self.timers.set(
                Timer::Consensus,
                self.now.saturating_add(self.cfg.consensus_timeout),
            );
        }
        let agrees = join.proc_set.iter().eq(g.proc_set.iter())
            && join.fail_set.iter().eq(g.fail_set.iter());
        if agrees {
            g.consensus.insert(from);
        }
        if changed {
            self.send_join();
        }
        self.check_consensus();
    }

    /// In gather, the removed daemons were just set (see `Node::set_removed`): those named
    /// are failed now, and the round starts over with the new sets.
    pub(crate) fn fail_removed_now(&mut self) {
        let me = self.me;
        let State::Gather(g) = &mut self.state else {
            return;
        };
        if !fail_removed(g, &self.removed) {
            return;
        }
        g.consensus = BTreeSet::from([me]);
        self.timers.set(
            Timer::Consensus,
            self.now.saturating_add(self.cfg.consensus_timeout),
        );
        self.send_join();
        self.check_consensus();
    }

    pub(crate) fn on_join_timeout(&mut self) {
        if !matches!(self.state, State::Gather(_)) {
            return;
        }
        self.send_join();
        self.timers
            .set(Timer::Join, self.now.saturating_add(self.cfg.join_timeout));
        self.check_consensus();
    }

    pub(crate) fn on_consensus_timeout(&mut self) {
        let me = self.me;
        let State::Gather(g) = &mut self.state else {
            return;
        };
        let members: BTreeSet<ProcId> = g.proc_set.difference(&g.fail_set).copied().collect();
        let missing: Vec<ProcId> = members.difference(&g.consensus).copied().collect();
        // Members that have not agreed within the timeout are considered failed. If everyone
        // agreed but no commit token came, the round starts over: a representative that really
        // is gone will not answer the new round and is failed at the next timeout.
        g.fail_set.extend(missing);
        g.consensus = BTreeSet::from([me]);
        tracing::debug!(me = ?me, fail = ?g.fail_set, "consensus timeout");
        self.send_join();
        self.timers.set(
            Timer::Consensus,
            self.now.saturating_add(self.cfg.consensus_timeout),
        );
        self.check_consensus();
    }

    /// In gather: if every member agrees and we are the smallest, form the ring.
    fn check_consensus(&mut self) {
        let State::Gather(g) = &self.state else {
            return;
        };
        if self.now < g.not_before {
            return;
        }
        let members: Vec<ProcId> = g.proc_set.difference(&g.fail_set).copied().collect();
        if members.first() != Some(&self.me) || !members.iter().all(|p| g.consensus.contains(p)) {
            return;
        }
        let ring = RingId {
            seq: self.ring_seq_max + 1,
            rep: self.me,
        };
        self.ring_seq_max = ring.seq;
        let n = members.len();
        let mut ct = CommitToken {
            ring,
            members: members.clone(),
            entries: vec![None; n],
            rotation: 0,
            hop: 0,
        };
        ct.entries[0] = Some(self.my_entry());
        tracing::debug!(me = ?self.me, ring = ?ring, members = ?members, "consensus: forming ring");
        self.state = State::Commit(Commit {
            ring,
            members,
            last_hop: 0,
        });
        self.timers.stop(Timer::Join);
        self.timers.stop(Timer::Consensus);
        self.timers.set(
            Timer::TokenLoss,
            self.now.saturating_add(self.cfg.token_timeout),
        );
        self.forward_commit(ct);
    }

    fn my_entry(&self) -> MemberEntry {
        match &self.installed {
            Some(r) => MemberEntry {
                old_ring: Some(r.id),
                aru: r.window.aru(),
                high_delivered: r.delivered,
                high_seq: r.window.high(),
            },
            None => MemberEntry {
                old_ring: None,
                aru: 0,
                high_delivered: 0,
                high_seq: 0,
            },
        }
    }

    /// Passes the commit token to the next member (to ourselves on a ring of one).
    fn forward_commit(&mut self, mut ct: CommitToken) {
        loop {
            ct.hop = ct.hop.saturating_add(1);
            let i = ct.members.binary_search(&self.me).expect("member");
            let next = ct.members[(i + 1) % ct.members.len()];
            if next != self.me {
                let ring = ct.ring;
                let frame = self.send_control(Dest::Node(next.node), &Packet::Commit(ct));
                self.passed = Some(Passed {
                    dest: next.node,
                    frame,
                    ring,
                    seq: u64::MAX,
                });
                self.timers.set(
                    Timer::TokenRetransmit,
                    self.now.saturating_add(self.cfg.token_retransmit_timeout),
                );
                return;
            }
            match self.commit_step(ct) {
                Some(again) => ct = again,
                None => return,
            }
        }
    }

    pub(crate) fn on_commit_token(&mut self, _from: ProcId, ct: CommitToken) {
        if ct.members.binary_search(&self.me).is_err()
            || ct.members.iter().any(|p| self.removed.contains(&p.node))
        {
            self.stats.ignored += 1;
            return;
        }
        if let Some(ct) = self.commit_step(ct) {
            self.forward_commit(ct);
        }
    }

    /// Handles the commit token at our position; returns it if it must travel on.
    fn commit_step(&mut self, mut ct: CommitToken) -> Option<CommitToken> {
        let me = self.me;
        let my_idx = ct.members.binary_search(&me).ok()?;
        let is_rep = my_idx == 0;
        match &mut self.state {
            State::Gather(g) => {
                let members: Vec<ProcId> = g.proc_set.difference(&g.fail_set).copied().collect();
                let newer = self
                    .installed
                    .as_ref()
                    .is_none_or(|r| ct.ring.seq > r.id.seq);
                let jump = ct.ring.seq > self.ring_seq_max.saturating_add(RING_SEQ_JUMP_MAX);
                if ct.rotation != 0 || is_rep || members != ct.members || !newer || jump {
                    self.stats.ignored += 1;
                    return None;
                }
                self.ring_seq_max = self.ring_seq_max.max(ct.ring.seq);
                ct.entries[my_idx] = Some(self.my_entry());
                self.state = State::Commit(Commit {
                    ring: ct.ring,
                    members: ct.members.clone(),
                    last_hop: ct.hop,
                });
                self.timers.stop(Timer::Join);
                self.timers.stop(Timer::Consensus);
                self.timers.set(
                    Timer::TokenLoss,
                    self.now.saturating_add(self.cfg.token_timeout),
                );
                Some(ct)
            }
            State::Commit(c) if c.ring == ct.ring && ct.hop > c.last_hop => {
                c.last_hop = ct.hop;
                let complete = ct.entries.iter().all(Option::is_some);
                let ok = match (is_rep, ct.rotation) {
                    (true, 0) => complete,
                    (false, 1) => complete,
                    _ => false,
                };
                if !ok {
                    self.stats.ignored += 1;
                    return None;
                }
                ct.rotation = 1;
                self.enter_recovery(&ct);
                Some(ct)
            }
            State::Recovery(r) if r.ring.id == ct.ring && ct.hop > r.last_hop => {
                r.last_hop = ct.hop;
                if !(is_rep && ct.rotation == 1) {
                    self.stats.ignored += 1;
                    return None;
                }
                // The commit token went round twice: everyone is in recovery. Start the token.
                self.passed = None;
                self.timers.stop(Timer::TokenRetransmit);
                let token = Token::first(ct.ring);
                self.timers.set(
                    Timer::TokenLoss,
                    self.now.saturating_add(self.cfg.token_timeout),
                );
                self.token_visit(token);
                None
            }
            _ => {
                self.stats.ignored += 1;
                None
            }
        }
    }

    fn enter_recovery(&mut self, ct: &CommitToken) {
        let me = self.me;
        let entries: Vec<MemberEntry> = ct.entries.iter().map(|e| e.expect("complete")).collect();
        let my_idx = ct.members.binary_search(&me).expect("member");
        let old = entries[my_idx].old_ring;
        let trans: Vec<ProcId> = match old {
            Some(_) => ct
                .members
                .iter()
                .zip(&entries)
                .filter(|(_, e)| e.old_ring == old)
                .map(|(p, _)| *p)
                .collect(),
            None => vec![me],
        };
        let from_old: Vec<&MemberEntry> = entries.iter().filter(|e| e.old_ring == old).collect();
        let low_aru = from_old.iter().map(|e| e.aru).min().unwrap_or(0);
        let high_delivered = from_old.iter().map(|e| e.high_delivered).max().unwrap_or(0);
        let mut queue = VecDeque::new();
        if let Some(inst) = &self.installed {
            for st in inst
                .window
                .present(low_aru.saturating_add(1), inst.window.high())
            {
                if matches!(st.data.body, Body::App(_)) {
                    queue.push_back(st.data.seq);
                }
            }
        }
        tracing::debug!(me = ?me, ring = ?ct.ring, trans = ?trans, resend = queue.len(), "enter recovery");
        self.state = State::Recovery(Box::new(Recovery {
            ring: Ring::new(ct.ring, ct.members.clone()),
            trans,
            high_delivered,
            queue,
            clean_visits: 0,
            last_hop: ct.hop,
        }));
        self.timers.set(
            Timer::TokenLoss,
            self.now.saturating_add(self.cfg.token_timeout),
        );
    }

    /// The next old-ring packet to re-send through the new ring, wrapped, as packet `seq`.
    pub(crate) fn next_recovery_frame(&mut self, ring: RingId, seq: u64) -> Option<Bytes> {
        let State::Recovery(rec) = &mut self.state else {
            return None;
        };
        let inst = self.installed.as_ref()?;
        while let Some(old_seq) = rec.queue.pop_front() {
            if let Some(st) = inst.window.get(old_seq) {
                return Some(wire::encode_recovered(
                    self.me, ring, seq, &st.data, &st.frame,
                ));
            }
        }
        None
    }

    /// Recovery is complete: deliver what remains of the old ring, the transitional view, then
    /// the new regular view; the new ring becomes the installed one.
    pub(crate) fn install(&mut self) {
        let State::Recovery(rec) = std::mem::replace(&mut self.state, State::Operational) else {
            unreachable!("install from recovery only");
        };
        let rec = *rec;
        if let Some(old) = self.installed.take() {
            let trans_view = View {
                id: ViewId {
                    ring: rec.ring.id,
                    kind: ViewKind::Transitional,
                },
                members: rec.trans.clone(),
            };
            let mut in_trans = false;
            let mut hole = false;
            for seq in old.delivered + 1..=old.window.high() {
                match old.window.get(seq) {
                    None => {
                        hole = true;
                        if !in_trans {
                            self.out.push_back(Output::View(trans_view.clone()));
                            in_trans = true;
                        }
                    }
                    Some(st) => {
                        if !in_trans && st.safe() && seq > rec.high_delivered {
                            self.out.push_back(Output::View(trans_view.clone()));
                            in_trans = true;
                        }
                        let data = st.data.clone();
                        if hole && rec.trans.binary_search(&data.sender).is_err() {
                            self.reassembly.drop_sender(data.sender);
                        } else {
                            self.deliver_packet(&data);
                        }
                    }
                }
            }
            if !in_trans {
                self.out.push_back(Output::View(trans_view));
            }
        }
        self.reassembly.clear();
        self.send_queue.restart_partial();
        let view = Node::regular_view(&rec.ring);
        tracing::debug!(me = ?self.me, view = ?view.id, members = ?view.members, "install");
        self.out.push_back(Output::View(view.clone()));
        self.view = Some(view);
        self.stats.views += 1;
        let is_rep = rec.ring.is_rep(self.me);
        self.installed = Some(rec.ring);
        if is_rep {
            self.timers.set(
                Timer::MergeDetect,
                self.now.saturating_add(self.cfg.merge_detect_interval),
            );
        }
        self.deliver_ready();
    }

    /// Another ring's representative announced its ring, or a member of another ring answered
    /// our announcement.
    ///
    /// An announcement alone does not start a merge: it is answered, and only the answer does.
    /// A daemon that can send but no longer receive (a one-way link failure into it) keeps
    /// announcing its ring of one; if the announcement itself started a round, the others would
    /// merge with it at each one and fail it a consensus timeout later, changing views every few
    /// hundred milliseconds for as long as the link stays broken. The answer proves the link
    /// works both ways before anyone leaves its ring: it reaches the announcer only if the
    /// announcer can hear us, and the announcer's joins reach us only if we can hear it.
    pub(crate) fn on_merge_detect(&mut self, from: ProcId, m: MergeDetect) {
        let Some(ours) = self.installed.as_ref().map(|r| r.id) else {
            self.stats.ignored += 1;
            return;
        };
        let foreign = matches!(self.state, State::Operational)
            && ours != m.ring
            && self.installed.as_ref().is_some_and(|r| !r.contains(from));
        if !foreign {
            self.stats.ignored += 1;
        } else if m.answer {
            self.enter_gather(
                "another ring answered our announcement",
                BTreeSet::from([from]),
            );
        } else {
            let answer = MergeDetect {
                ring: ours,
                answer: true,
            };
            self.send_control(Dest::Node(from.node), &Packet::MergeDetect(answer));
        }
    }

    pub(crate) fn on_merge_detect_timeout(&mut self) {
        if !matches!(self.state, State::Operational) {
            return;
        }
        let Some(ring) = self.installed.as_ref().map(|r| r.id) else {
            return;
        };
        let announce = MergeDetect {
            ring,
            answer: false,
        };
        self.send_control(Dest::All, &Packet::MergeDetect(announce));
        self.timers.set(
            Timer::MergeDetect,
            self.now.saturating_add(self.cfg.merge_detect_interval),
        );
    }
}

/// A daemon removed from the cluster is given up on as soon as anyone names it (see
/// `Node::set_removed`).
fn fail_removed(g: &mut Gather, removed: &BTreeSet<crate::NodeId>) -> bool {
    let mut changed = false;
    for p in &g.proc_set {
        if removed.contains(&p.node) {
            changed |= g.fail_set.insert(*p);
        }
    }
    changed
}

/// A node seen with a newer incarnation has restarted: its older incarnation is gone.
fn fail_superseded(g: &mut Gather, me: ProcId) -> bool {
    let mut changed = false;
    let procs: Vec<ProcId> = g.proc_set.iter().copied().collect();
    for w in procs.windows(2) {
        // Sorted by (node, incarnation): an older incarnation comes right before a newer one.
        if w[0].node == w[1].node && w[0] != me {
            changed |= g.fail_set.insert(w[0]);
        }
    }
    changed
}
