//! The election round: members' states, the promise of the next epoch, and the primary's start.
//!
//! No vote messages exist: every member runs the same pure rules ([`crate::election`]) on the
//! same states, delivered in agreed order, and reaches the same answer.
//!
//! 1. **States.** In every regular view each member multicasts `State` (agreed order): its
//!    promised epoch, last tid, lineage, whether it was primary, whether its store is
//!    consistent, whether it votes, and its voter configuration. A member whose own
//!    configuration says the view cannot elect goes `ReadOnly` at once, but still sends its
//!    state, since the others need it.
//! 2. **Primary component.** Once every member's state is delivered, each checks that the
//!    members that kept their disks form a primary component under the *newest* voter
//!    configuration reported (by the tid that wrote it; a joining server's file binds
//!    nobody): more than half the weight, or exactly half including the lowest-id voter (the
//!    tie-breaker), of each set (both sets of a joint configuration, see
//!    [`crate::voters`]). Two disjoint sets can never both pass. Otherwise everyone is
//!    `ReadOnly`.
//! 3. **Choice.** `choose_primary`: among consistent members that kept their disks and vote in
//!    the configuration they report, the greatest `(epoch of last transaction, last tid)`,
//!    then the sitting primary, then the lowest id. `choose_donor` ranks the same way over the
//!    voters of either set (a leaving voter may hold more, and the new primary catches up
//!    from it first); none while a voter with an open object fill holds, in its own log,
//!    more than every member that may carry the history (the view waits rather than drop
//!    it). `next_epoch` is one above every promise and every epoch in any state.
//!    A server that lost its disk (`Replica::after_disk_loss`) has no vote until it has caught
//!    up.
//! 4. **Promise.** Each member writes the epoch durably (the store's replication-state slot),
//!    then multicasts `Promise`. The chosen server starts as primary only once every member's
//!    promise is delivered in the same regular view. So a majority has promised before any
//!    commit of the epoch exists, and any later election, needing a majority, meets that
//!    promise and picks a higher epoch: one primary per epoch, and epochs only grow.
//! 5. **Start.** The primary's first transaction is the epoch marker, which appends
//!    `(epoch, base = its last tid)` to the lineage object. Its tids continue above every tid
//!    any member reported, so the tids of a lost tail are never reused for other content while
//!    that loss is being reported.

use super::*;

impl<S: Storage> Replica<S> {
    pub(super) fn in_view(&self, s: ServerId) -> bool {
        self.view.as_ref().is_some_and(|v| v.members.contains(&s))
    }

    pub(super) fn on_state(&mut self, from: ServerId, s: MemberState) -> Result<(), StorageError> {
        let Some(v) = self.view.as_ref() else {
            return Ok(());
        };
        // Every member takes part, whatever its own configuration said at the view: all of
        // them reach the same answer from the same states.
        if s.server != from || !v.members.contains(&from) {
            return Ok(());
        }
        if self.election.is_some() {
            return Ok(());
        }
        self.states.insert(from, s);
        if !v.members.iter().all(|m| self.states.contains_key(m)) {
            return Ok(());
        }
        let states: Vec<MemberState> = self.states.values().cloned().collect();
        // A server that lost its disk lost its promises: it does not vote until it has
        // caught up under a primary elected without it. The newest configuration reported
        // decides whether this is a primary component.
        if !is_primary_component(&states) {
            let voters: Vec<ServerId> = states
                .iter()
                .filter(|s| s.voter)
                .map(|s| s.server)
                .collect();
            let configs: Vec<String> = states.iter().map(|s| s.config.to_string()).collect();
            tracing::warn!(
                server = self.me,
                ?voters,
                ?configs,
                "not a primary component under the newest configuration reported"
            );
            if self.view.as_ref().is_some_and(|v| v.primary_component) {
                self.not_primary_component();
            }
            return Ok(());
        }
        if let Some(v) = self.view.as_mut() {
            if !v.primary_component {
                v.primary_component = true;
                self.set_role(FollowerRole::Syncing);
            }
        }
        let (Some(p), Some(donor)) = (choose_primary(&states), choose_donor(&states)) else {
            if crate::election::waits_for_an_open_fill(&states) {
                tracing::warn!(
                    server = self.me,
                    "a voter with an open object fill holds more than every member that may \
                     carry the history: no election until its donor, or a member holding as \
                     much, is back"
                );
            } else {
                tracing::warn!(
                    server = self.me,
                    "primary component without an eligible member"
                );
            }
            return Ok(());
        };
        let epoch = next_epoch(&states);
        // The history starts from the donor's (the primary's own, unless a leaving voter holds
        // more: the primary then catches up from it first).
        let ps = &self.states[&donor];
        let tid_floor = Tid(states.iter().map(|s| s.last_tid.0).max().unwrap_or(0) + 1);
        let election = Election {
            primary: p,
            epoch,
            base: ps.last_tid,
            base_lineage: ps.lineage.clone(),
            donor,
            tid_floor,
            promises: BTreeSet::new(),
        };
        // Servers already holding the primary's history count as durable up to its end.
        for s in &states {
            if common_prefix(&s.lineage, s.last_tid, &ps.lineage, ps.last_tid) == Some(ps.last_tid)
                && s.last_tid == ps.last_tid
            {
                self.applied.insert(s.server, ps.last_tid);
            }
        }
        self.primary_last_known = self.primary_last_known.max(ps.last_tid);
        self.stats.elections += 1;
        tracing::info!(server = self.me, primary = p, donor, %epoch, base = %election.base, "elected");
        self.election = Some(election);
        self.promise(epoch)
    }

    pub(super) fn promise(&mut self, epoch: Epoch) -> Result<(), StorageError> {
        if epoch > self.durable.promised {
            self.durable.promised = epoch;
            self.persist()?;
        }
        self.multicast(
            Service::Agreed,
            Msg::Promise {
                server: self.me,
                epoch,
            },
        );
        Ok(())
    }

    pub(super) fn on_promise(
        &mut self,
        from: ServerId,
        server: ServerId,
        epoch: Epoch,
    ) -> Result<(), StorageError> {
        if from != server || !self.in_view(from) {
            return Ok(());
        }
        let members = self
            .view
            .as_ref()
            .map(|v| v.members.clone())
            .unwrap_or_default();
        // A primary starts only in the regular view its promises were made in: once the view
        // is transitional, members may already have moved on.
        if !self.view.as_ref().is_some_and(|v| v.regular) {
            return Ok(());
        }
        let Some(el) = self.election.as_mut() else {
            return Ok(());
        };
        if el.epoch != epoch {
            return Ok(());
        }
        el.promises.insert(server);
        if !members.iter().all(|m| el.promises.contains(m)) {
            return Ok(());
        }
        let el = el.clone();
        self.primary = Some((el.primary, el.epoch));
        if el.primary == self.me {
            self.start_recovery(&el)?;
            self.maybe_become_primary()
        } else {
            self.send_held_away(Some(el.primary));
            self.set_role(FollowerRole::Syncing);
            self.start_recovery(&el)
        }
    }

    /// The chosen primary starts once it holds the base (after a handover it may still be
    /// applying the old primary's last commits or catching up).
    pub(super) fn maybe_become_primary(&mut self) -> Result<(), StorageError> {
        let Some(el) = self.election.clone() else {
            return Ok(());
        };
        // Only a follower that recovers nothing starts (a primary is one already, and a
        // stopped server never starts).
        let ready = matches!(&self.role, RoleState::Follower(f) if f.recovery.is_none());
        if el.primary != self.me
            || self.primary != Some((self.me, el.epoch))
            || !ready
            || self.last < el.base
        {
            return Ok(());
        }
        let mut lineage = self.lineage.clone();
        lineage.push(EpochStart {
            epoch: el.epoch,
            base: self.last,
        });
        if lineage.len() > LINEAGE_MAX {
            lineage.drain(..lineage.len() - LINEAGE_MAX);
        }
        let tid = el.tid_floor.max(Tid(self.last.0 + 1));
        let marker = Transaction {
            tid,
            meta: TxnMeta {
                user: Bytes::from_static(b"standby"),
                description: Bytes::from(format!("epoch {} starts", el.epoch.0)),
                extension: Bytes::new(),
                time: 0,
                request: None,
            },
            // Each epoch starts with a client table: a rebuild never reads log of an
            // earlier epoch.
            records: vec![
                Record {
                    oid: lineage_oid(),
                    data: Some(encode_lineage(&lineage)),
                    expected_serial: None,
                },
                self.client_table_record(),
            ],
        };
        // Its own vote counts what its disk holds (`sync.rs`).
        self.applied.insert(self.me, self.synced);
        // The follower's state ends: it recovers nothing (above), and what is left of a
        // backlog (commits a handover left buffered) is applied already, the base being at
        // most our last. The primary's starts.
        let from = self.role();
        self.role = RoleState::Primary(PrimaryState::new(self.last));
        self.announce_role(from);
        self.primary_send(marker, None)?;
        self.start_pending_change();
        self.drive_voter_change();
        self.release_held();
        Ok(())
    }
}
