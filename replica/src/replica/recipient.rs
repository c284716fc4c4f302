//! Recovery, recipient side: chunks, the end of an object fill, the backlog.

use super::*;

impl<S: Storage> Replica<S> {
    pub(super) fn on_chunk(
        &mut self,
        now: Time,
        from: ServerId,
        to: ServerId,
        fetch_id: u64,
        body: ChunkBody,
    ) -> Result<(), StorageError> {
        if to != self.me {
            return Ok(());
        }
        let Some(rec) = self.role.recovery().cloned() else {
            return Ok(());
        };
        if rec.fetch_id != fetch_id || rec.donor != from {
            return Ok(());
        }
        self.stats.recovery_chunks += 1;
        tracing::debug!(server = self.me, last = %self.last, step = ?rec.step, chunk = ?ChunkSummary(&body), "recovery chunk");
        let mut done = false;
        match (body, &rec.step) {
            (ChunkBody::Unavailable { .. }, RecoveryStep::Txns { .. }) => {
                // The donor packed that history away: recover by objects instead.
                self.set_step(RecoveryStep::Objects { after_oid: None });
                self.fetch();
                return Ok(());
            }
            (ChunkBody::Unavailable { .. }, _) => return self.need_checkpoint(rec.donor),
            (ChunkBody::Txns { txns, done: d }, RecoveryStep::Txns { .. }) => {
                // One batch per chunk (its sync off the ring's task with `defer_syncs`): a
                // recovering server must keep passing the token in time.
                let fresh: Vec<(Tid, Transaction)> = txns
                    .into_iter()
                    .filter(|(_, t)| t.tid > self.last)
                    .collect();
                let results = self.apply_run(&fresh);
                for ((_, t), r) in fresh.iter().zip(results) {
                    match r? {
                        ApplyOutcome::Applied | ApplyOutcome::AlreadyPresent => {}
                    }
                    self.last = t.tid;
                    self.after_apply(now, t)?;
                }
                self.after_apply_run();
                done = d;
            }
            (ChunkBody::Txns { txns, done: d }, RecoveryStep::FillTxns { until, .. }) => {
                let until = *until;
                if let Some((_, t)) = txns.last() {
                    let after = t.tid;
                    self.set_step(RecoveryStep::FillTxns { after, until });
                }
                let mut revs = Vec::new();
                for (_, t) in txns {
                    for r in t.records {
                        revs.push(Revision {
                            oid: r.oid,
                            tid: t.tid,
                            data: r.data,
                        });
                    }
                }
                if !revs.is_empty() {
                    self.store.fill(&revs)?;
                }
                if d {
                    self.finish_fill(until)?;
                    self.set_step(RecoveryStep::Txns { until: None });
                    self.fetch();
                    return Ok(());
                }
            }
            (
                ChunkBody::Objects {
                    consistent_at,
                    lineage,
                    revisions,
                    done: d,
                    clients,
                },
                RecoveryStep::Objects { .. },
            ) => {
                if d {
                    self.fill_clients = clients;
                }
                if self.durable.fill_since.is_none() {
                    self.durable.fill_since = Some(consistent_at);
                    self.durable.fill_lineage = lineage;
                    self.persist()?;
                }
                let last_oid = revisions.last().map(|r| r.oid.clone());
                if !revisions.is_empty() {
                    self.store.fill(&revisions)?;
                }
                if let Some(o) = last_oid {
                    self.set_step(RecoveryStep::Objects { after_oid: Some(o) });
                }
                if d {
                    let since = self.durable.fill_since.unwrap_or(consistent_at);
                    if since >= consistent_at {
                        self.finish_fill(consistent_at)?;
                        self.set_step(RecoveryStep::Txns { until: None });
                    } else {
                        self.set_step(RecoveryStep::FillTxns {
                            after: since,
                            until: consistent_at,
                        });
                    }
                    self.fetch();
                    return Ok(());
                }
            }
            _ => {
                self.stats.fenced += 1;
                return Ok(());
            }
        }
        if done {
            return self.drain_backlog(now);
        }
        if let Some(r) = self.role.recovery_mut() {
            r.outstanding = r.outstanding.saturating_sub(1);
            if r.outstanding == 0 {
                self.fetch();
            }
        }
        Ok(())
    }

    pub(super) fn set_step(&mut self, step: RecoveryStep) {
        if let Some(r) = self.role.recovery_mut() {
            r.step = step;
        }
    }

    pub(super) fn finish_fill(&mut self, at: Tid) -> Result<(), StorageError> {
        let at = at.max(self.last);
        // The client table as of the consistency point (the donor's, with its last chunk):
        // the store holds no log before it to rebuild the table from.
        match self.fill_clients.take() {
            Some(table) => self.store.fill(&[Revision {
                oid: client_table_oid(),
                tid: at,
                data: Some(table),
            }])?,
            None => tracing::warn!(
                server = self.me,
                at = %at,
                "object fill finished without the donor's client table"
            ),
        }
        self.store.fill_finish(at)?;
        self.durable.fill_since = None;
        self.durable.fill_lineage.clear();
        self.persist()?;
        self.last = self.store.last_transaction()?;
        self.after_store_change()?;
        tracing::info!(server = self.me, at = %self.last, "object recovery finished");
        Ok(())
    }

    /// The transaction stream reached the donor's end: apply the commits buffered meanwhile.
    pub(super) fn drain_backlog(&mut self, now: Time) -> Result<(), StorageError> {
        // (Chunks come only to a follower's recovery.)
        let Some(f) = self.role.follower_mut() else {
            return Ok(());
        };
        if f.backlog_overflowed {
            f.backlog_overflowed = false;
            self.fetch();
            return Ok(());
        }
        // The chained run at the front of the backlog, applied as one batch.
        let mut run: Vec<(Tid, Transaction)> = Vec::new();
        let mut end = self.last;
        while let Some((prev, t)) = f.backlog.front() {
            if t.tid <= end {
                f.backlog.pop_front();
                continue;
            }
            if *prev != end {
                break;
            }
            end = t.tid;
            run.push(f.backlog.pop_front().expect("front"));
        }
        let left = f.backlog.len();
        tracing::debug!(server = self.me, last = %self.last, run = run.len(), left, "backlog drained");
        let results = self.apply_run(&run);
        for ((_, t), r) in run.iter().zip(results) {
            r?;
            self.last = t.tid;
            self.after_apply(now, t)?;
        }
        self.after_apply_run();
        if self.role.follower().is_some_and(|f| !f.backlog.is_empty()) {
            // Still a gap (the donor was behind what we buffered): fetch again.
            self.fetch();
            return Ok(());
        }
        tracing::info!(server = self.me, last = %self.last, "caught up");
        self.caught_up();
        self.maybe_become_primary()
    }
}
