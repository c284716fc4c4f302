//! Durability off the ring's task: commits are applied without an fsync
//! (`Storage::apply_batch_unsynced`), and the shell syncs the store on a thread of its own
//! ([`Output::Sync`], answered by [`Replica::handle_synced`]).
//!
//! Why: an fsync takes from tens of microseconds to milliseconds, and a server that waits for
//! it in the task that passes the token holds the whole ring for that long. Nothing counts
//! as durable before its sync returned: the `Applied` reports a backup sends carry `synced`,
//! the primary's own vote in `majority_applied` is its `synced`, and it answers a commit
//! only once its own sync covers it. Every other store write syncs (promises, fills,
//! truncations, recovery applies) and makes what was applied before it durable too, so
//! `synced` catches up with `last` after each of them.
//!
//! Nor does anyone see an applied transaction before its sync: reads are served as of
//! `synced` ([`crate::Staleness::last_tid`]; the shells read with `Storage::load_at` and
//! bound ranges by it) and [`Output::Invalidate`] goes out as `synced` passes the tid. A
//! client that read a transaction and then met the same server again after a machine crash
//! (which takes back unsynced applies) would otherwise see history go backwards: the
//! simulator's `reads_monotone` found exactly that (seed 3183) before reads were bounded.

use super::*;

impl<S: Storage> Replica<S> {
    /// The shell's sync that started after [`Output::Sync`] `id` (and every earlier one) was
    /// asked has returned: what was applied then is durable here.
    pub fn handle_synced(&mut self, now: Time, id: u64) {
        self.now = now;
        if self.role() == Role::Down {
            return;
        }
        let mut upto = None;
        while let Some(&(i, t)) = self.syncs.front() {
            if i > id {
                break;
            }
            upto = Some(t);
            self.syncs.pop_front();
        }
        if let Some(t) = upto {
            self.advance_synced(t.min(self.last));
        }
    }

    /// The shell's sync failed: the store can no longer promise anything, so the server
    /// stops (as for any failed write).
    pub fn handle_sync_failed(&mut self, now: Time, error: &str) {
        self.now = now;
        self.fail(format!("sync: {error}"));
    }

    /// The highest tid durable on this server's disk.
    pub fn synced_tid(&self) -> Tid {
        self.synced
    }

    /// Applies a run of delivered (or recovered) commits: synced at once, unless
    /// `defer_syncs` asks for the sync off the ring's task.
    pub(super) fn apply_run(
        &mut self,
        run: &[(Tid, Transaction)],
    ) -> Vec<Result<ApplyOutcome, StorageError>> {
        if self.cfg.defer_syncs {
            self.store.apply_batch_unsynced(run)
        } else {
            self.store.apply_batch(run)
        }
    }

    /// After an apply run (see [`Self::apply_run`]): synced in line, everything applied is
    /// durable now.
    pub(super) fn after_apply_run(&mut self) {
        if !self.cfg.defer_syncs {
            self.synced_write();
        }
    }

    /// After a write that synced: everything applied before it is durable. Syncs still
    /// asked are covered (their answers find nothing left to do), and a truncation that
    /// lowered `last` lowers `synced` with it.
    pub(super) fn synced_write(&mut self) {
        self.syncs.clear();
        if self.synced > self.last {
            self.synced = self.last;
        }
        // A truncation took back what was applied past `last`: nobody is told of it.
        let last = self.last;
        self.unsynced_invalidations.retain(|i| i.tid <= last);
        self.advance_synced(self.last);
    }

    /// Asks the shell for a sync if something was applied since the last one asked.
    pub(super) fn ask_sync(&mut self) {
        let asked = self.syncs.back().map_or(self.synced, |(_, t)| *t);
        if self.last > asked && self.role() != Role::Down {
            let id = self.next_sync_id;
            self.next_sync_id += 1;
            self.syncs.push_back((id, self.last));
            self.out.push_back(Output::Sync { id });
        }
    }

    fn advance_synced(&mut self, t: Tid) {
        while self
            .unsynced_invalidations
            .front()
            .is_some_and(|i| i.tid <= t.max(self.synced))
        {
            let inv = self.unsynced_invalidations.pop_front().expect("front");
            self.out.push_back(Output::Invalidate(inv));
        }
        if t <= self.synced {
            return;
        }
        self.synced = t;
        self.applied_dirty = true;
        if let RoleState::Primary(p) = &mut self.role {
            // The primary's own vote: only what its disk holds. Answers it releases go out
            // when the shell next polls (`poll_output`), not in the middle of the write that
            // synced (a promise, a fill), which may be part of sending something else.
            let e = self.applied.entry(self.me).or_default();
            *e = (*e).max(t);
            p.acks_due = true;
        }
    }
}
