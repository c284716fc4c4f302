//! Recovery, donor side: answering fetches with chunks.

use super::*;

impl<S: Storage> Replica<S> {
    pub(super) fn on_fetch(
        &mut self,
        who: ServerId,
        donor: ServerId,
        fetch_id: u64,
        chunks: u32,
        req: FetchReq,
    ) -> Result<(), StorageError> {
        if donor != self.me || !self.in_view(who) {
            return Ok(());
        }
        let chunk_bytes = self.cfg.recovery.chunk_bytes.max(1);
        let chunks = chunks.clamp(1, 64);
        let mut bodies = Vec::new();
        match req {
            FetchReq::Txns { after, until } => {
                let range = TidRange::new(Some(Tid(after.0 + 1)), until);
                let it = match self.store.iter(range, Direction::Forward) {
                    Ok(it) => it,
                    Err(StorageError::HistoryTruncated { horizon }) => {
                        bodies.push(ChunkBody::Unavailable { horizon });
                        Box::new(std::iter::empty())
                    }
                    Err(e) => return Err(e),
                };
                let mut it = it.peekable();
                let mut prev = after;
                while bodies.len() < chunks as usize
                    && !matches!(bodies.last(), Some(ChunkBody::Unavailable { .. }))
                {
                    let mut txns = Vec::new();
                    let mut size = 0;
                    while size < chunk_bytes {
                        let Some(t) = it.next() else { break };
                        let t = t?;
                        // Within `commit_bytes_max` each (the primary refused larger ones),
                        // so a chunk fits a ring message (`check_message_limit`).
                        size += 8 + crate::config::txn_wire_bytes(&t.meta, &t.records);
                        let p = prev;
                        prev = t.tid;
                        txns.push((p, t));
                    }
                    let done = it.peek().is_none();
                    bodies.push(ChunkBody::Txns { txns, done });
                    if done {
                        break;
                    }
                }
            }
            FetchReq::Objects { since, after_oid } => {
                let fr = self.store.fast_recovery(since, after_oid.as_ref())?;
                let consistent_at = fr.consistent_at;
                let mut it = fr.revisions.peekable();
                while bodies.len() < chunks as usize {
                    let mut revisions = Vec::new();
                    let mut size = 0;
                    while size < chunk_bytes {
                        let Some(r) = it.next() else { break };
                        let r = r?;
                        size +=
                            48 + r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len());
                        revisions.push(r);
                    }
                    let done = it.peek().is_none();
                    // The client table as of that point goes with the last chunk: the
                    // recipient will hold no log before it.
                    let clients = match done {
                        false => None,
                        true if consistent_at == self.last => Some(self.clients.encode()),
                        true => match read_client_table(&self.store, consistent_at) {
                            Ok(t) => Some(t.encode()),
                            Err(StorageError::HistoryTruncated { horizon }) => {
                                bodies.push(ChunkBody::Unavailable { horizon });
                                break;
                            }
                            Err(e) => return Err(e),
                        },
                    };
                    bodies.push(ChunkBody::Objects {
                        consistent_at,
                        lineage: self.lineage.clone(),
                        revisions,
                        done,
                        clients,
                    });
                    if done {
                        break;
                    }
                }
            }
        }
        for body in bodies {
            self.multicast(
                Service::Agreed,
                Msg::Chunk {
                    to: who,
                    fetch_id,
                    body,
                },
            );
        }
        Ok(())
    }
}
