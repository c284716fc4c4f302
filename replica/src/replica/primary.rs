//! The primary's commit path: admission, conflict checks, idempotency, and the multicast.
//!
//! A commit from client to every replica:
//!
//! 1. The client sends `CommitRequest { client, request, records (with expected serials) }`
//!    to any server. A server that is not primary redirects it (`NotPrimary { primary }`) or,
//!    while an election or swap settles, holds it.
//! 2. The primary checks the idempotency key: the client's last committed request in the
//!    client table (`crate::clients`: every server keeps it from the keys in transaction
//!    headers), or an in-flight commit with the same key; either way a retry gets the first
//!    outcome. Then the
//!    reserved oids and the sizes (`validate_txn`), then conflicts against the newest serial,
//!    in-flight commits first, then the store.
//! 3. It assigns `tid = last assigned + 1`, puts the key in the transaction's header, and
//!    multicasts `Commit { epoch, prev, txn }`: AGREED in sync mode (the majority's `Applied`
//!    reports prove more than SAFE would, two rotations sooner), SAFE in async mode.
//! 4. Every server, the primary included, applies it at delivery (`apply.rs`), durably and in
//!    delivery order, refusing it if the epoch or the sender is not the working primary's; it
//!    emits an `Invalidation` for its clients and reports `Applied` (`durability.rs`).
//! 5. **Sync mode** (the default): the primary answers once the commit was delivered in its
//!    regular view, applied durably by the primary itself, and reported durable by servers
//!    holding a majority of the vote weight. A commit delivered only in a transitional view is
//!    answered `Retry`: its outcome is unknown, and the retry finds the key in the table. So an
//!    acknowledged commit is on a majority of disks, and every later primary is elected by a
//!    majority that includes one of them with the newest epoch: it is lost only if a majority
//!    of disks is. **Async mode**: the primary commits locally (`Storage::commit`), answers at
//!    once, then multicasts; at most `window` transactions may lack a majority's durable copy,
//!    so a failover loses at most the window, and what it loses is archived and reported
//!    (`recovery.rs`).

use super::*;

impl<S: Storage> Replica<S> {
    /// A client asks for a commit; the answer comes later as [`Output::Reply`].
    pub fn handle_commit(&mut self, now: Time, req: ReqId, c: CommitRequest) {
        self.now = now;
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        self.on_commit_request(req, c);
    }

    pub(super) fn hold(&mut self, req: ReqId, c: CommitRequest) {
        if self.held.len() >= self.cfg.held_max {
            self.reply(req, Err(CommitError::Busy));
        } else {
            self.held.push_back((req, c));
        }
    }

    pub(super) fn on_commit_request(&mut self, req: ReqId, c: CommitRequest) {
        let last_assigned = match &self.role {
            RoleState::Down { .. } => {
                return self.reply(req, Err(CommitError::Down("stopped".into())));
            }
            RoleState::Primary(p) if !p.stopping => p.last_assigned,
            RoleState::Primary(_) => return self.hold(req, c),
            RoleState::Follower(_) => {
                let component = self.view.as_ref().is_some_and(|v| v.primary_component);
                return match self.primary {
                    Some((p, _)) if p != self.me => {
                        self.reply(req, Err(CommitError::NotPrimary { primary: Some(p) }))
                    }
                    // Ours, starting (catching up after a swap).
                    Some(_) => self.hold(req, c),
                    // An election or a swap is under way: hold until it settles.
                    None if component => self.hold(req, c),
                    None => self.reply(req, Err(CommitError::NotPrimary { primary: None })),
                };
            }
        };
        if !self.async_window_open() {
            return self.hold(req, c);
        }
        let mut last_assigned = last_assigned;
        if c.records.iter().any(|r| r.oid == zeo_pack_oid()) {
            // The table goes just before a pack order, whose apply clamps its bound to the
            // table's tid: the pack then removes what the caller asked for and keeps the log
            // a rebuild of the table reads.
            if let Err(e) = self.write_client_table() {
                return self.fail(e);
            }
            if let Some(p) = self.role.primary() {
                last_assigned = p.last_assigned;
            }
        }
        if let Err(e) = self.primary_commit(req, c, last_assigned) {
            self.fail(e);
        }
    }

    /// The tid and request number of `client`'s last committed request: from the client
    /// table, else from a client record of the format before keys lived in transaction
    /// headers (noted in the table once read).
    pub(super) fn client_last(&mut self, client: u64) -> Result<Option<(Tid, u64)>, StorageError> {
        if let Some(v) = self.clients.get(client) {
            return Ok(Some(v));
        }
        let Some(rev) = self.store.load(&client_oid(client))? else {
            return Ok(None);
        };
        let request = client_request(rev.data.as_deref());
        self.clients.note(client, rev.tid, request);
        Ok(Some((rev.tid, request)))
    }

    /// Sends the client table as of the next tid, in a transaction of its own: what the
    /// primary applied, the keys of the commits it sent and has not applied yet (each
    /// ordered before the table), at most `client_table_max` clients.
    pub(super) fn write_client_table(&mut self) -> Result<(), StorageError> {
        let Some(p) = self.role.primary_mut() else {
            return Ok(());
        };
        p.commits_since_table = 0;
        let tid = p.last_assigned.next();
        let txn = Transaction {
            tid,
            meta: TxnMeta {
                user: Bytes::from_static(b"standby"),
                description: Bytes::from_static(b"client table"),
                ..TxnMeta::default()
            },
            records: vec![self.client_table_record()],
        };
        self.stats.client_tables += 1;
        self.primary_send(txn, None)
    }

    /// The client table as of the next tid this primary assigns, as a record.
    pub(super) fn client_table_record(&self) -> Record {
        let mut table = self.clients.clone();
        for (&(client, request), &tid) in &self.in_flight.keys {
            if tid > self.last {
                table.note(client, tid, request);
            }
        }
        table.prune(self.cfg.client_table_max);
        Record {
            oid: client_table_oid(),
            data: Some(table.encode()),
            expected_serial: None,
        }
    }

    /// After a client's commit: writes the table once enough commits went by since the last
    /// one (at least `client_table_every`, and at least as many as the table has clients, so
    /// that it costs a bounded number of bytes per commit).
    fn count_commit_for_table(&mut self) -> Result<(), StorageError> {
        let every = self
            .cfg
            .client_table_every
            .max(self.clients.len() as u64)
            .max(1);
        let Some(p) = self.role.primary_mut() else {
            return Ok(());
        };
        p.commits_since_table += 1;
        if p.commits_since_table >= every {
            self.write_client_table()?;
        }
        Ok(())
    }

    /// A commit request reaches the working primary, whose last assigned tid is
    /// `last_assigned`.
    pub(super) fn primary_commit(
        &mut self,
        req: ReqId,
        c: CommitRequest,
        last_assigned: Tid,
    ) -> Result<(), StorageError> {
        let key = (c.client, c.request);
        if let Some(tid) = self.in_flight.keys.get(&key) {
            if let Some(p) = self.in_flight.pending.get_mut(tid) {
                if !p.answered {
                    p.reqs.push(req);
                    return Ok(());
                }
            }
        }
        let epoch = self.primary.map(|(_, e)| e).unwrap_or_default();
        if let Some((rev_tid, last)) = self.client_last(c.client)? {
            if last == c.request {
                if rev_tid <= self.majority_applied()
                    || matches!(self.cfg.mode, CommitMode::Async { .. })
                {
                    self.reply(
                        req,
                        Ok(Committed {
                            tid: rev_tid,
                            epoch,
                            duplicate: true,
                        }),
                    );
                } else {
                    self.in_flight.dup_waiting.push((rev_tid, req, epoch));
                }
                return Ok(());
            }
            if last > c.request {
                self.reply(
                    req,
                    Err(CommitError::Stale {
                        request: c.request,
                        last,
                    }),
                );
                return Ok(());
            }
        }
        let mut seen = BTreeSet::new();
        for r in &c.records {
            if is_replica_owned(&r.oid) {
                self.reply(
                    req,
                    Err(CommitError::Invalid(format!("reserved oid {}", r.oid))),
                );
                return Ok(());
            }
            if !seen.insert(r.oid.clone()) {
                self.reply(
                    req,
                    Err(CommitError::Invalid(format!("oid {} twice", r.oid))),
                );
                return Ok(());
            }
            if let Some(expected) = r.expected_serial {
                let actual = match self.in_flight.serial.get(&r.oid) {
                    Some(t) => *t,
                    None => self.store.load(&r.oid)?.map(|v| v.tid).unwrap_or(Tid::ZERO),
                };
                if actual != expected {
                    self.reply(
                        req,
                        Err(CommitError::Conflict {
                            oid: r.oid.clone(),
                            expected,
                            actual,
                        }),
                    );
                    return Ok(());
                }
            }
        }
        let next = Tid(last_assigned.0 + 1);
        let tid = match c.tid {
            TidChoice::Next => next,
            TidChoice::AtLeast(t) => next.max(t),
            TidChoice::Exactly(t) if t >= next => t,
            TidChoice::Exactly(t) => {
                let last = last_assigned;
                self.reply(
                    req,
                    Err(CommitError::Invalid(format!(
                        "tid {t} is not above the last tid {last}"
                    ))),
                );
                return Ok(());
            }
        };
        if tid.0 >= crate::COUNTER_MAX {
            self.reply(
                req,
                Err(CommitError::Invalid(format!("tid {tid} is out of range"))),
            );
            return Ok(());
        }
        // Every replica must be able to apply what the primary sends: refuse here what a
        // store would refuse there.
        let size = crate::config::txn_wire_bytes(&c.meta, &c.records);
        if size > self.cfg.commit_bytes_max {
            let max = self.cfg.commit_bytes_max;
            self.reply(
                req,
                Err(CommitError::Invalid(format!(
                    "transaction of {size} bytes, max {max}"
                ))),
            );
            return Ok(());
        }
        let records: Vec<Record> = c
            .records
            .into_iter()
            .map(|r| Record {
                expected_serial: None,
                ..r
            })
            .collect();
        let oids: Vec<Oid> = records.iter().map(|r| r.oid.clone()).collect();
        let txn = Transaction {
            tid,
            meta: TxnMeta {
                request: Some(RequestKey {
                    client: c.client,
                    request: c.request,
                }),
                ..c.meta
            },
            records,
        };
        if let Err(e) = storage::validate_txn(&txn) {
            self.reply(req, Err(CommitError::Invalid(e.to_string())));
            return Ok(());
        }
        for o in &oids {
            self.in_flight.serial.insert(o.clone(), tid);
        }
        self.in_flight.keys.insert(key, tid);
        self.in_flight.pending.insert(
            tid,
            Pending {
                reqs: vec![req],
                epoch: self.primary.map(|(_, e)| e).unwrap_or_default(),
                key,
                oids,
                delivered_regular: false,
                answered: false,
                sent_at: self.now,
                delivered_at: None,
            },
        );
        self.primary_send(txn, Some(req))?;
        self.count_commit_for_table()
    }

    /// Sends a transaction as primary: async mode commits it locally first and answers. Only
    /// the primary sends (its commit path, its start, its voter change).
    pub(super) fn primary_send(
        &mut self,
        txn: Transaction,
        req: Option<ReqId>,
    ) -> Result<(), StorageError> {
        let epoch = self.primary.map(|(_, e)| e).unwrap_or_default();
        if let CommitMode::Async { .. } = self.cfg.mode {
            self.store.commit(&txn)?;
            self.clients.note_txn(&txn)?;
            self.last = txn.tid;
            if txn.records.iter().any(|r| r.oid == lineage_oid()) {
                // The epoch marker: the store's lineage now names this epoch.
                self.after_store_change()?;
            } else if txn.records.iter().any(|r| r.oid == voters_oid()) {
                self.reload_voters()?;
            }
            if let Some(req) = req {
                if let Some(p) = self.in_flight.pending.get_mut(&txn.tid) {
                    p.answered = true;
                }
                self.reply(
                    req,
                    Ok(Committed {
                        tid: txn.tid,
                        epoch,
                        duplicate: false,
                    }),
                );
            }
        }
        let Some(p) = self.role.primary_mut() else {
            return Ok(());
        };
        let prev = std::mem::replace(&mut p.last_assigned, txn.tid);
        self.primary_last_known = self.primary_last_known.max(txn.tid);
        // Sync mode needs no SAFE delivery: the answer waits for servers with a majority of
        // the vote to report the commit durable, which says more than "received by every
        // member". AGREED lets every server apply as soon as the commit arrives, two token
        // rotations earlier. Async mode answered before sending; SAFE there keeps a backup
        // from applying what the rest of its view may never see, which bounds what a
        // failover moves to the lost archive.
        let service = match self.cfg.mode {
            CommitMode::Sync => Service::Agreed,
            CommitMode::Async { .. } => Service::Safe,
        };
        self.multicast(service, Msg::Commit { epoch, prev, txn });
        Ok(())
    }
}
