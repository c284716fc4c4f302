//! Direct `Applied` reports: what a majority holds on disk, and the acknowledgements it releases.
//!
//! Each server reports `Applied { epoch, tid }` once per batch of deliveries, twice: straight to
//! the primary in a datagram of its own ([`crate::Output::Direct`], which the shells tell apart
//! from gcs packets with [`crate::Replica::is_direct`]), and through the ring in agreed order,
//! the reliable copy should the datagram be lost. The direct copy exists for speed: in the
//! ring's total order a report waits behind every commit sent before it, about two rotations
//! under load. A direct report counts only if it names the primary's current epoch; within an
//! epoch a server's durable history only grows, so a late or repeated report is still true.
//! Direct reports may arrive before the primary's own delivery of the commit; the answer still
//! waits for that delivery (the rule is in `primary.rs`).

use super::*;

impl<S: Storage> Replica<S> {
    /// Whether a datagram is a direct message between replicas ([`Output::Direct`]) rather
    /// than a gcs packet: the shell hands those to [`Self::handle_direct`].
    pub fn is_direct(datagram: &[u8]) -> bool {
        datagram.starts_with(&DIRECT_PREFIX)
    }

    /// A direct message from another server arrived (outside the ring: unordered, maybe
    /// lost or duplicated). Only `Applied` reports travel this way, and one counts only if
    /// it names this server's epoch as primary: an epoch has one lineage, in which a
    /// server's durable history only grows, so a late or repeated report is still true.
    pub fn handle_direct(&mut self, now: Time, datagram: &[u8]) {
        self.now = now;
        if self.role.primary().is_none() || !Self::is_direct(datagram) {
            return;
        }
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        match Msg::decode(&datagram[DIRECT_PREFIX.len()..]) {
            Ok(Msg::Applied { server, epoch, tid }) if self.primary == Some((self.me, epoch)) => {
                self.on_applied(server, server, epoch, tid)
            }
            _ => self.stats.fenced += 1,
        }
    }

    /// Reports count for the whole view: within one view every primary (the elected one,
    /// then each swap target) continues the same lineage, and a server only reports once it
    /// holds that lineage.
    pub(super) fn on_applied(&mut self, from: ServerId, server: ServerId, _epoch: Epoch, tid: Tid) {
        if from != server || !self.in_view(from) {
            return;
        }
        let e = self.applied.entry(server).or_default();
        *e = (*e).max(tid);
        self.release_acks();
    }

    /// The highest tid held durably by servers with a majority of the vote weight (of both
    /// sets while the voters change).
    pub(super) fn majority_applied(&self) -> Tid {
        let mut tids: Vec<Tid> = self.applied.values().copied().collect();
        tids.sort_unstable();
        tids.dedup();
        for t in tids.into_iter().rev() {
            let holders: Vec<ServerId> = self
                .applied
                .iter()
                .filter(|(_, a)| **a >= t)
                .map(|(s, _)| *s)
                .collect();
            if self.voters.is_majority(&holders) {
                return t;
            }
        }
        Tid::ZERO
    }

    pub(super) fn release_acks(&mut self) {
        // Durable on a majority, and here: this server synced it (so it was delivered here,
        // and its own reads, served as of `synced`, show it to the committer). Reports can
        // come straight from the backups, ahead of our own delivery.
        let durable = self.majority_applied().min(self.synced);
        if self.role.primary().is_some() && durable > self.durable_announced {
            self.durable_announced = durable;
            self.out.push_back(Output::Durable(durable));
        }
        self.drive_voter_change();
        if self.in_flight.pending.is_empty() && self.in_flight.dup_waiting.is_empty() {
            return;
        }
        let done: Vec<Tid> = self
            .in_flight
            .pending
            .range(..=durable)
            .map(|(t, _)| *t)
            .collect();
        for tid in done {
            let p = self.in_flight.pending.remove(&tid).expect("listed");
            self.in_flight.keys.remove(&p.key);
            for o in &p.oids {
                if self.in_flight.serial.get(o) == Some(&tid) {
                    self.in_flight.serial.remove(o);
                }
            }
            if p.answered {
                continue;
            }
            if let Some(d) = p.delivered_at {
                self.stats.stage_delivered_us += d.since(p.sent_at).as_micros() as u64;
                self.stats.stage_durable_us += self.now.since(d).as_micros() as u64;
                self.stats.stage_samples += 1;
            }
            let result = if p.delivered_regular {
                Ok(Committed {
                    tid,
                    epoch: p.epoch,
                    duplicate: false,
                })
            } else {
                Err(CommitError::Retry)
            };
            let mut first = true;
            for r in p.reqs {
                let res = result.clone().map(|mut c| {
                    c.duplicate = !first;
                    c
                });
                first = false;
                self.reply(r, res);
            }
        }
        let waiting = std::mem::take(&mut self.in_flight.dup_waiting);
        for (tid, r, epoch) in waiting {
            if tid <= durable {
                self.reply(
                    r,
                    Ok(Committed {
                        tid,
                        epoch,
                        duplicate: true,
                    }),
                );
            } else {
                self.in_flight.dup_waiting.push((tid, r, epoch));
            }
        }
        // Async mode: requests held for the loss window may go now.
        self.release_held();
    }

    /// Serves held requests while this server is a working primary with room in its window.
    pub(super) fn release_held(&mut self) {
        while self.role.primary().is_some_and(|p| !p.stopping) && self.async_window_open() {
            let Some((req, c)) = self.held.pop_front() else {
                break;
            };
            self.on_commit_request(req, c);
        }
    }

    pub(super) fn async_window_open(&self) -> bool {
        match self.cfg.mode {
            CommitMode::Async { window } => (self.in_flight.pending.len() as u64) < window.max(1),
            CommitMode::Sync => true,
        }
    }
}
