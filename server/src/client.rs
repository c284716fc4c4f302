//! An in-process client over server handles: follows redirects to the primary and retries an
//! ambiguous commit with the same idempotency key, so that failovers and swaps never surface as
//! errors. (The network client library of issue 6 will follow the same rules over TCP.)

use crate::{Stopped, StorageServer};
use replica::{CommitError, CommitRequest, Committed, ServerId};
use std::sync::Arc;
use std::time::Duration;
use storage::{Record, TxnMeta};

/// A client of a set of servers.
pub struct LocalClient {
    servers: Vec<Arc<StorageServer>>,
    client: u64,
    next_request: u64,
    primary: Option<usize>,
    /// Attempts beyond the first, over this client's life (redirects and retries).
    pub retries: u64,
}

/// Why a commit failed for the application.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A final answer: a conflict, an invalid request, a stale request number.
    #[error(transparent)]
    Commit(CommitError),
    /// No server answered with an outcome within the deadline.
    #[error("no outcome after {0:?}")]
    Timeout(Duration),
}

impl LocalClient {
    /// A client with a cluster-unique id.
    pub fn new(servers: Vec<Arc<StorageServer>>, client: u64) -> LocalClient {
        LocalClient {
            servers,
            client,
            next_request: 1,
            primary: None,
            retries: 0,
        }
    }

    fn index_of(&self, id: ServerId) -> Option<usize> {
        self.servers.iter().position(|s| s.id() == id)
    }

    /// Commits `records`, retrying through failovers and swaps until `deadline` passes.
    pub async fn commit(
        &mut self,
        meta: TxnMeta,
        records: Vec<Record>,
        deadline: Duration,
    ) -> Result<Committed, ClientError> {
        let request = self.next_request;
        self.next_request += 1;
        let c = CommitRequest {
            client: self.client,
            request,
            meta,
            records,
            tid: replica::TidChoice::Next,
        };
        let started = tokio::time::Instant::now();
        let mut turn = self.client as usize;
        let mut first = true;
        loop {
            if started.elapsed() > deadline {
                return Err(ClientError::Timeout(deadline));
            }
            if !first {
                self.retries += 1;
            }
            first = false;
            let i = match self.primary {
                Some(p) => p,
                None => {
                    turn += 1;
                    turn % self.servers.len()
                }
            };
            let answer =
                tokio::time::timeout(Duration::from_secs(2), self.servers[i].commit(c.clone()))
                    .await;
            match answer {
                Ok(Ok(Ok(done))) => {
                    self.primary = Some(i);
                    return Ok(done);
                }
                Ok(Ok(Err(CommitError::NotPrimary { primary: Some(p) }))) => {
                    self.primary = self.index_of(p);
                }
                Ok(Ok(Err(e))) if e.is_final() => return Err(ClientError::Commit(e)),
                Ok(Ok(Err(_))) | Ok(Err(Stopped)) | Err(_) => {
                    // Retry, NotPrimary(None), Busy, Down, a stopped or silent server: try the
                    // next one after a short pause.
                    self.primary = None;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}
