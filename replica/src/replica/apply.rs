//! Applying delivered commits in order, as batches.

use super::*;

impl<S: Storage> Replica<S> {
    pub(super) fn on_commit(
        &mut self,
        now: Time,
        from: ServerId,
        epoch: Epoch,
        prev: Tid,
        txn: Transaction,
    ) -> Result<(), StorageError> {
        if self.primary != Some((from, epoch)) || epoch < self.durable.promised {
            self.stats.fenced += 1;
            return Ok(());
        }
        self.primary_last_known = self.primary_last_known.max(txn.tid);
        if let Some(f) = self.role.follower_mut() {
            if f.recovery.is_some() || !f.backlog.is_empty() {
                if f.backlog.len() >= BACKLOG_MAX {
                    f.backlog.clear();
                    f.backlog_overflowed = true;
                }
                f.backlog.push_back((prev, txn));
                return Ok(());
            }
        }
        // Applied in a batch (one sync) before anything that depends on it: the next
        // non-commit delivery, a view, a client request, or the end of this input.
        let regular = self.view.as_ref().is_some_and(|v| v.regular);
        let _ = now;
        self.apply_queue.push(QueuedCommit {
            prev,
            txn,
            mine: from == self.me,
            regular,
        });
        Ok(())
    }

    /// Applies the queued commits as one batch. A gap moves the rest to the backlog and
    /// starts recovery from the primary.
    pub(super) fn flush_applies(&mut self) -> Result<(), StorageError> {
        if self.apply_queue.is_empty() {
            return Ok(());
        }
        let now = self.now;
        let queue = std::mem::take(&mut self.apply_queue);
        let batch: Vec<(Tid, Transaction)> =
            queue.iter().map(|q| (q.prev, q.txn.clone())).collect();
        // Synced here, or off the ring's task with `defer_syncs` (`sync.rs`).
        let results = self.apply_run(&batch);
        let mut mine = false;
        for (k, (q, r)) in queue.iter().zip(results).enumerate() {
            match r {
                Ok(ApplyOutcome::Applied) | Ok(ApplyOutcome::AlreadyPresent) => {}
                Err(e @ StorageError::Gap { .. }) if q.txn.tid > self.last => {
                    // A primary's own commits chain onto its store (it assigned them; the
                    // ring delivers one sender's messages in order): a gap there means the
                    // store is not what it thinks, and it stops.
                    let Some(f) = self.role.follower_mut() else {
                        return Err(e);
                    };
                    // We missed transactions: keep these, recover the gap from the primary.
                    for q in &queue[k..] {
                        f.backlog.push_back((q.prev, q.txn.clone()));
                    }
                    tracing::debug!(server = self.me, last = %self.last, tid = %q.txn.tid, prev = %q.prev, "gap in delivered commits");
                    self.start_gap_recovery();
                    break;
                }
                Err(e) => return Err(e),
            }
            if q.txn.tid > self.last {
                self.last = q.txn.tid;
            }
            self.after_apply(now, &q.txn)?;
            if q.mine {
                mine = true;
                if let Some(p) = self.in_flight.pending.get_mut(&q.txn.tid) {
                    p.delivered_regular = q.regular;
                    p.delivered_at = Some(now);
                    if !q.regular && !p.answered {
                        p.answered = true;
                        for r in std::mem::take(&mut p.reqs) {
                            self.reply(r, Err(CommitError::Retry));
                        }
                    }
                }
            }
        }
        self.after_apply_run();
        if mine {
            // Its own vote counts once synced (`sync.rs`); reports from the backups may
            // already hold a majority that only waited for this delivery.
            self.release_acks();
        }
        Ok(())
    }

    pub(super) fn start_gap_recovery(&mut self) {
        if let Some((p, _)) = self.primary {
            if let Some(f) = self.role.follower_mut() {
                f.recovery = Some(Recovery {
                    donor: p,
                    fetch_id: 0,
                    step: RecoveryStep::Txns { until: None },
                    outstanding: 0,
                });
            }
            self.set_role(FollowerRole::Syncing);
            self.fetch();
        }
    }

    pub(super) fn after_apply(&mut self, now: Time, txn: &Transaction) -> Result<(), StorageError> {
        self.stats.applied += 1;
        self.clients.note_txn(txn)?;
        self.last_commit_at = Some(now);
        if txn.records.iter().any(|r| r.oid == lineage_oid()) {
            self.after_store_change()?;
        } else if txn.records.iter().any(|r| r.oid == voters_oid()) {
            self.reload_voters()?;
        } else if txn.records.iter().any(|r| r.oid == membership_oid()) {
            self.out.push_back(Output::MembershipChanged);
        }
        if let Some(order) = txn.records.iter().find(|r| r.oid == zeo_pack_oid()) {
            match order.data.as_deref().and_then(decode_pack_order) {
                Some((before, oids)) => {
                    // A pack only removes what no answer needs any more: one that fails
                    // leaves a correct store with more history, so it does not stop the
                    // server.
                    // Never past the newest client table: a rebuild reads the log after it
                    // (the primary writes one just before each pack order).
                    let table_tid = self
                        .store
                        .load(&client_table_oid())?
                        .map_or(Tid::ZERO, |r| r.tid);
                    let before = before.min(table_tid);
                    match self.store.pack_gc(before, &oids) {
                        Ok(st) => tracing::info!(
                            server = self.me,
                            tid = %txn.tid,
                            before = %before,
                            revisions_removed = st.revisions_removed,
                            "pack order applied"
                        ),
                        Err(e) => tracing::error!(
                            server = self.me,
                            tid = %txn.tid,
                            error = %e,
                            "pack order failed; the store keeps its history"
                        ),
                    }
                }
                None => {
                    tracing::error!(server = self.me, tid = %txn.tid, "malformed pack order ignored")
                }
            }
        }
        let oids: Vec<Oid> = txn
            .records
            .iter()
            .map(|r| r.oid.clone())
            .filter(|o| !is_reserved(o))
            .collect();
        let client = txn
            .meta
            .request
            .map(|k| k.client)
            .or_else(|| txn.records.iter().find_map(|r| client_of_oid(&r.oid)));
        // Told once synced (`sync.rs`).
        self.unsynced_invalidations.push_back(Invalidation {
            tid: txn.tid,
            oids,
            client,
        });
        Ok(())
    }
}
