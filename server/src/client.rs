//! An in-process client over server handles: follows redirects to the primary and retries an
//! ambiguous commit with the same idempotency key, so that failovers and swaps never surface as
//! errors, by the same retry policy as the TCP client ([`standby_client::retry`]).

use crate::{Stopped, StorageServer};
use replica::{CommitError, CommitRequest, Committed, ServerId};
use standby_client::retry::{Answer, CommitRetry, Verdict};
use std::sync::Arc;
use std::time::Duration;
use storage::{Record, TxnMeta};

/// A client of a set of servers.
pub struct LocalClient {
    servers: Vec<Arc<StorageServer>>,
    client: u64,
    next_request: u64,
    /// Routing by server index: the same policy as the TCP client's.
    route: CommitRetry<usize>,
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
            route: CommitRetry::new(client as usize),
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
        let all: Vec<usize> = (0..self.servers.len()).collect();
        let mut first = true;
        loop {
            if started.elapsed() > deadline {
                return Err(ClientError::Timeout(deadline));
            }
            if !first {
                self.retries += 1;
            }
            first = false;
            let Some(i) = self.route.next(&all) else {
                return Err(ClientError::Timeout(deadline));
            };
            let answer =
                tokio::time::timeout(Duration::from_secs(2), self.servers[i].commit(c.clone()))
                    .await;
            let said = match &answer {
                Ok(Ok(r)) => Answer::of(r, |p| self.index_of(p)),
                // A stopped or silent server.
                Ok(Err(Stopped)) | Err(_) => Answer::Unknown,
            };
            match (self.route.on_answer(i, said), answer) {
                (Verdict::Retry(pause), _) => {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                (Verdict::Done, Ok(Ok(Ok(done)))) => return Ok(done),
                (Verdict::Done, Ok(Ok(Err(e)))) => return Err(ClientError::Commit(e)),
                // The policy ends a request only on a commit or a final answer.
                (Verdict::Done, _) => return Err(ClientError::Timeout(deadline)),
            }
        }
    }
}
