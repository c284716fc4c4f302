//! Messages delivered through the ring, handed to their handler in delivery order.

use super::*;

impl<S: Storage> Replica<S> {
    /// A gcs delivery. Messages that are not replication messages, or come from a server
    /// not in the configuration, are counted and dropped.
    pub fn handle_delivery(&mut self, now: Time, sender: ProcId, payload: &[u8]) {
        if self.role() == Role::Down {
            return;
        }
        let from = sender.node;
        self.now = now;
        let Ok(msg) = Msg::decode(payload) else {
            self.stats.fenced += 1;
            return;
        };
        if !matches!(msg, Msg::Commit { .. }) {
            if let Err(e) = self.flush_applies() {
                return self.fail(e);
            }
        }
        let r = match msg {
            Msg::State(s) => self.on_state(from, s),
            Msg::Promise { server, epoch } => self.on_promise(from, server, epoch),
            Msg::Commit { epoch, prev, txn } => self.on_commit(now, from, epoch, prev, txn),
            Msg::Applied { server, epoch, tid } => {
                self.on_applied(from, server, epoch, tid);
                Ok(())
            }
            Msg::SwapRequest { epoch, to } => self.on_swap_request(epoch, to),
            Msg::Handover { epoch, to, last } => self.on_handover(from, epoch, to, last),
            // A fetch counts only from the server it names, a chunk only from the donor of
            // the recovery it belongs to (see `on_chunk`).
            Msg::Fetch { from: who, .. } if who != from => Ok(()),
            Msg::Fetch {
                from: who,
                donor,
                fetch_id,
                chunks,
                req,
            } => self.on_fetch(who, donor, fetch_id, chunks, req),
            Msg::Chunk { to, fetch_id, body } => {
                match self.on_chunk(now, from, to, fetch_id, body) {
                    // The stream does not fit this store (it parted from the donor's history
                    // mid-recovery): start over from a checkpoint rather than stop.
                    Err(
                        StorageError::InvalidFill { .. }
                        | StorageError::Gap { .. }
                        | StorageError::DivergentApply { .. }
                        | StorageError::NonIncreasingTid { .. },
                    ) => match self.role.recovery().map(|r| r.donor) {
                        Some(d) => self.need_checkpoint(d),
                        None => Ok(()),
                    },
                    r => r,
                }
            }
            Msg::Lost {
                server,
                truncated_after,
                tids,
                oids,
            } if server != self.me => {
                self.out.push_back(Output::Lost(LostReport {
                    server,
                    truncated_after,
                    tids,
                    oids,
                }));
                Ok(())
            }
            Msg::Lost { .. } => Ok(()),
        };
        if let Err(e) = r {
            self.fail(e);
        }
    }
}
