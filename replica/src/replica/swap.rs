//! Planned swap: the request and the handover.
//!
//! Any server forwards `SwapRequest { epoch, to }` through the ring. The primary stops assigning
//! tids (new writes are held, not failed) and multicasts `Handover { epoch, to, last }`, ordered
//! after its last commit. At its delivery every member durably promises `epoch + 1` and
//! multicasts `Promise`; once all promises are delivered, `to` applies up to `last`, starts as
//! primary, writes its epoch marker and serves the writes held meanwhile, which the old primary
//! redirects to it. The cost is one round of agreed messages and one promise fsync, with no
//! view change: in the simulator the longest pause between acknowledged commits across a swap
//! is about 12 ms (`sim/tests/replica.rs`,
//! `planned_swap_has_no_failed_request_and_a_short_pause`).

use super::*;

impl<S: Storage> Replica<S> {
    /// An operator asks for `to` to become primary. Any server may be asked; it forwards the
    /// request through the ring. Fails if there is no working primary in view or `to` may
    /// not become primary.
    pub fn request_swap(&mut self, now: Time, to: ServerId) -> Result<(), SwapError> {
        self.now = now;
        let Some((_, epoch)) = self.primary else {
            return Err(SwapError::NoPrimary);
        };
        if !self.voters.eligible(to) {
            return Err(SwapError::NotEligible(to));
        }
        if !self.in_view(to) {
            return Err(SwapError::NotInView(to));
        }
        self.multicast(Service::Agreed, Msg::SwapRequest { epoch, to });
        Ok(())
    }

    pub(super) fn on_swap_request(
        &mut self,
        epoch: Epoch,
        to: ServerId,
    ) -> Result<(), StorageError> {
        let Some((p, cur)) = self.primary else {
            return Ok(());
        };
        if cur != epoch || p == to || !self.in_view(to) || !self.voters.eligible(to) {
            return Ok(());
        }
        if !self.view.as_ref().is_some_and(|v| v.regular) {
            return Ok(());
        }
        let RoleState::Primary(ps) = &mut self.role else {
            return Ok(());
        };
        if p == self.me && !ps.stopping {
            // Stop assigning tids; the handover is ordered after every commit already sent.
            ps.stopping = true;
            let last = ps.last_assigned;
            tracing::info!(server = self.me, to, last = %last, "swap: handing over");
            self.multicast(Service::Agreed, Msg::Handover { epoch, to, last });
        }
        Ok(())
    }

    pub(super) fn on_handover(
        &mut self,
        from: ServerId,
        epoch: Epoch,
        to: ServerId,
        last: Tid,
    ) -> Result<(), StorageError> {
        if self.primary != Some((from, epoch)) || !self.in_view(to) {
            return Ok(());
        }
        let new_epoch = Epoch(epoch.0 + 1);
        // The old primary's lineage: the one it was elected on, plus its own epoch.
        let Some(prev) = self.election.clone() else {
            return Ok(());
        };
        let mut base_lineage = prev.base_lineage;
        base_lineage.push(EpochStart {
            epoch,
            base: prev.base,
        });
        if base_lineage.len() > LINEAGE_MAX {
            base_lineage.drain(..base_lineage.len() - LINEAGE_MAX);
        }
        let held: Vec<(ReqId, CommitRequest)> = if from == self.me {
            self.held.drain(..).collect()
        } else {
            Vec::new()
        };
        self.primary = None;
        self.election = Some(Election {
            primary: to,
            epoch: new_epoch,
            base: last,
            base_lineage,
            donor: from,
            tid_floor: Tid(last.0 + 1),
            promises: BTreeSet::new(),
        });
        if from == self.me {
            // What it sent and has not answered stays in flight: it answers it as a backup
            // once a majority holds it.
            if let Some(r) = self
                .step_down(FollowerRole::Backup)
                .and_then(PrimaryState::end)
            {
                self.reply(r, Err(CommitError::NotPrimary { primary: Some(to) }));
            }
        }
        for (req, _) in held {
            self.reply(req, Err(CommitError::NotPrimary { primary: Some(to) }));
        }
        self.promise(new_epoch)
    }
}
