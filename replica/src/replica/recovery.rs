//! The start of a recovery (by transactions, by objects or from a checkpoint), truncation of a parted history, and catching up.
//!
//! After an election each member compares its lineage with the primary's
//! ([`crate::election::common_prefix`]):
//!
//! - **Parted history** (an async tail the cluster lost): `truncate_after(common)` moves the
//!   extra transactions to the store's lost archive, and a `Lost { tids, oids }` report goes to
//!   this server's clients at once and to every server's clients at its delivery.
//! - **Behind**: it fetches from the donor (the primary; the old primary during a swap), a
//!   window of chunks per request for back-pressure (the donor side is `donor.rs`, the
//!   receiving side `recipient.rs`), resuming from its own last tid after any break:
//!   - *by transactions* (behind by at most `fast_after` tids): whole transactions, applied in
//!     order;
//!   - *by objects* (further behind, or the donor packed that history): the newest revision of
//!     each object changed since (`Storage::fast_recovery`, `fill`), resumable from the fill
//!     progress; then the transactions written meanwhile are filled as revisions and
//!     `fill_finish` makes the store consistent. The consistency point and the lineage the fill
//!     came from survive restarts in the replication-state slot. A fill resumes only from a
//!     primary whose history holds that lineage up to the consistency point; otherwise it
//!     starts over (when everything filled so far lies in the shared history) or the server
//!     takes a checkpoint;
//!   - *from a checkpoint* (an empty store further behind than `checkpoint_after`, or a history
//!     that cannot be reconciled): `Output::NeedCheckpoint { donor }`; the transfer is the
//!     storage server's (`servercore::checkpoint`), which hands the opened store back through
//!     `install_checkpoint`. What the old store held beyond the shared history is reported lost.
//! - Commits delivered meanwhile are buffered and applied once the stream reaches them.
//!
//! A server outside the primary component keeps serving reads ([`crate::Replica::staleness`]:
//! its last tid, the newest tid it knows of, the time of its last commit) and rejoins by itself:
//! the healed view runs an election, then the recovery above.

use super::*;

impl<S: Storage> Replica<S> {
    pub(super) fn start_recovery(&mut self, el: &Election) -> Result<(), StorageError> {
        if el.primary == self.me && self.last >= el.base {
            return Ok(());
        }
        if self.durable.fill_since.is_none() {
            match common_prefix(&self.lineage, self.last, &el.base_lineage, el.base) {
                Some(c) if c < self.last => {
                    if !self.truncate(c)? {
                        return self.need_checkpoint(el.donor);
                    }
                }
                Some(_) => {}
                None => return self.need_checkpoint(el.donor),
            }
        }
        if self.durable.fill_since.is_none() && self.last >= el.base {
            self.caught_up();
            return Ok(());
        }
        let behind = el.base.0.saturating_sub(self.last.0);
        let mut progress = self.store.fill_progress()?;
        let mut restart = false;
        if let Some(since) = self.durable.fill_since {
            // An open fill is consistent with the history its first chunk came from, at
            // `since`. It resumes only if this primary's history holds that one up to
            // `since`; otherwise (an async tail that was lost, a primary elected from behind)
            // what was filled so far must all lie in the shared part, and the fill starts over
            // from this donor; if not, only a checkpoint can make the store consistent.
            let shared =
                common_prefix(&self.durable.fill_lineage, since, &el.base_lineage, el.base);
            if shared != Some(since) {
                let tid_max = progress.as_ref().map_or(Tid::ZERO, |p| p.tid_max);
                match shared {
                    // (Our own history before the fill was a prefix of the first donor's.)
                    Some(c) if tid_max <= c && self.last <= c => {
                        tracing::info!(
                            server = self.me,
                            since = %since,
                            shared = %c,
                            "open fill came from another history: starting it over"
                        );
                        self.durable.fill_since = None;
                        self.durable.fill_lineage.clear();
                        self.persist()?;
                        progress = None;
                        restart = true;
                        self.stats.fills_restarted += 1;
                    }
                    _ => return self.need_checkpoint(el.donor),
                }
            }
        }
        let step = if let Some(p) = progress {
            RecoveryStep::Objects {
                after_oid: Some(p.last_oid),
            }
        } else if self.durable.fill_since.is_some() || restart {
            RecoveryStep::Objects { after_oid: None }
        } else if self.last == Tid::ZERO && behind > self.cfg.recovery.checkpoint_after {
            return self.need_checkpoint(el.donor);
        } else if behind > self.cfg.recovery.fast_after {
            RecoveryStep::Objects { after_oid: None }
        } else {
            RecoveryStep::Txns { until: None }
        };
        tracing::info!(
            server = self.me,
            donor = el.donor,
            ?step,
            behind,
            "recovery starts"
        );
        match step {
            RecoveryStep::Txns { .. } => self.stats.recoveries_full += 1,
            _ => self.stats.recoveries_fast += 1,
        }
        // Only a follower recovers (every member after the promise round, the chosen primary
        // included until it holds the base).
        if let Some(f) = self.role.follower_mut() {
            f.recovery = Some(Recovery {
                donor: el.donor,
                fetch_id: 0,
                step,
                outstanding: 0,
            });
        }
        self.fetch();
        Ok(())
    }

    pub(super) fn need_checkpoint(&mut self, donor: ServerId) -> Result<(), StorageError> {
        tracing::warn!(
            server = self.me,
            donor,
            "history cannot be reconciled: checkpoint"
        );
        self.stats.checkpoints += 1;
        if let Some(f) = self.role.follower_mut() {
            f.recovery = Some(Recovery {
                donor,
                fetch_id: u64::MAX,
                step: RecoveryStep::Txns { until: None },
                outstanding: 0,
            });
        }
        self.out.push_back(Output::NeedCheckpoint { donor });
        Ok(())
    }

    /// The shell installed a checkpoint copied from the donor (see
    /// [`Output::NeedCheckpoint`]): the replica continues on `store`, catching up from there.
    pub fn install_checkpoint(&mut self, store: S) -> Result<(), StorageError> {
        self.flush_applies()?;
        // What the old store holds beyond the history it shares with the checkpoint is
        // discarded with it: report it lost like a truncation would.
        let new_last = store.last_transaction()?;
        let new_lineage = read_lineage(&store)?;
        // Where the histories part; if the lineages share no entry (more than `LINEAGE_MAX`
        // epochs apart), that point is unknown and the report starts at the horizon.
        let keep = match common_prefix(&self.lineage, self.last, &new_lineage, new_last) {
            Some(c) => c,
            None => self.store.horizon()?,
        };
        if keep < self.last {
            let mut tids = Vec::new();
            let mut oids = BTreeSet::new();
            // From the log, the horizon aside: a fill may have moved it past transactions
            // this server applied itself on a history the lineage no longer holds.
            if let Ok(it) = self.store.iter_logged(TidRange::after(keep)) {
                for t in it {
                    let t = t?;
                    tids.push(t.tid);
                    oids.extend(
                        t.records
                            .into_iter()
                            .map(|r| r.oid)
                            .filter(|o| !is_reserved(o)),
                    );
                }
            }
            if !tids.is_empty() {
                tracing::warn!(
                    server = self.me,
                    n = tids.len(),
                    "checkpoint replaces transactions the lineage never had"
                );
                self.report_lost(keep, tids, oids.into_iter().collect());
            }
        }
        self.store = store;
        let promised = self.durable.promised;
        self.reload()?;
        if promised > self.durable.promised {
            self.durable.promised = promised;
            self.persist()?;
        }
        let resume = self.view.as_ref().is_some_and(|v| v.regular) && self.primary.is_some();
        let Some(f) = self.role.follower_mut() else {
            return Ok(());
        };
        let Some(rec) = f.recovery.take() else {
            return Ok(());
        };
        if resume {
            f.recovery = Some(Recovery {
                donor: rec.donor,
                fetch_id: 0,
                step: RecoveryStep::Txns { until: None },
                outstanding: 0,
            });
            self.fetch();
        }
        Ok(())
    }

    /// Truncates after `tid`, reporting what was lost; false if the store's history does not
    /// reach back that far.
    pub(super) fn truncate(&mut self, tid: Tid) -> Result<bool, StorageError> {
        let mut oids = BTreeSet::new();
        let lost: Vec<Transaction> = match self.store.iter(TidRange::after(tid), Direction::Forward)
        {
            Ok(it) => it.collect::<Result<_, _>>()?,
            Err(StorageError::HistoryTruncated { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        for t in &lost {
            oids.extend(
                t.records
                    .iter()
                    .map(|r| r.oid.clone())
                    .filter(|o| !is_reserved(o)),
            );
        }
        let tids = match self.store.truncate_after(tid) {
            Ok(t) => t,
            Err(StorageError::HistoryTruncated { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        tracing::warn!(server = self.me, after = %tid, n = tids.len(), "lost transactions archived");
        self.last = self.store.last_transaction()?;
        // The truncation synced, and `synced` may not name a tid the store no longer has.
        self.synced_write();
        self.after_store_change()?;
        self.report_lost(tid, tids, oids.into_iter().collect());
        Ok(true)
    }

    /// Reports transactions moved out of the lineage: our own clients hear at once (reads
    /// after this point see the store without them), the others when the report is delivered
    /// to their servers.
    pub(super) fn report_lost(&mut self, truncated_after: Tid, tids: Vec<Tid>, oids: Vec<Oid>) {
        self.stats.lost += tids.len() as u64;
        let report = LostReport {
            server: self.me,
            truncated_after,
            tids,
            oids,
        };
        self.out.push_back(Output::Lost(report.clone()));
        self.multicast(
            Service::Agreed,
            Msg::Lost {
                server: report.server,
                truncated_after: report.truncated_after,
                tids: report.tids,
                oids: report.oids,
            },
        );
    }

    pub(super) fn fetch(&mut self) {
        let Some(rec) = self.role.recovery_mut() else {
            return;
        };
        rec.fetch_id = self.next_fetch_id;
        self.next_fetch_id += 1;
        rec.outstanding = self.cfg.recovery.chunks_per_request.max(1);
        let req = match &rec.step {
            RecoveryStep::Txns { until } => FetchReq::Txns {
                after: self.last,
                until: *until,
            },
            RecoveryStep::Objects { after_oid } => FetchReq::Objects {
                since: self.last,
                after_oid: after_oid.clone(),
            },
            RecoveryStep::FillTxns { after, until } => FetchReq::Txns {
                after: *after,
                until: Some(*until),
            },
        };
        tracing::debug!(
            server = self.me,
            donor = rec.donor,
            fetch_id = rec.fetch_id,
            ?req,
            "fetch"
        );
        let m = Msg::Fetch {
            from: self.me,
            donor: rec.donor,
            fetch_id: rec.fetch_id,
            chunks: rec.outstanding,
            req,
        };
        self.multicast(Service::Agreed, m);
    }

    pub(super) fn caught_up(&mut self) {
        if let Some(f) = self.role.follower_mut() {
            f.recovery = None;
        }
        if !self.durable.voter && self.primary.is_some() {
            self.durable.voter = true;
            if let Err(e) = self.persist() {
                return self.fail(e);
            }
            tracing::info!(server = self.me, "caught up after a disk loss: votes again");
        }
        if self.primary.is_some_and(|(p, _)| p == self.me) {
            return;
        }
        if self.view.as_ref().is_some_and(|v| v.regular) && self.primary.is_some() {
            self.set_role(FollowerRole::Backup);
            self.applied_dirty = true;
        }
    }
}
