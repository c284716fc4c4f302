//! Where a commit goes next and what an answer means: the one retry policy of every client
//! (the TCP [`crate::Client`], the server crate's in-process client, the simulator's clients).
//! Sans-IO: the shell sends, waits, sleeps and keeps the deadline; the policy only chooses.
//!
//! The rules: a commit goes to the primary last learned; with none known, to the servers in
//! turn, those that just failed this request last. A redirect names the primary to try next.
//! An answer without an outcome (retry, busy, down, a closed connection, a silent server) makes
//! the target a suspect and forgets the primary, and the same request (same client id and
//! request number) is sent again: the servers apply it at most once. A final answer (a
//! conflict, an invalid or stale request) ends it. A commit ends the suspicions, and so do
//! [`FORGIVE_AFTER`] answers in a row from servers that know no primary: those may be cut off
//! for good (one partitioned alone, one removed from the cluster that never heard of it), while
//! a suspect may long since be back.

use replica::{CommitError, ServerId};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long to pause before the next attempt when no server could say where the primary is
/// (an election is under way) or an attempt ended without an outcome.
pub const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// "No primary known" answers in a row after which the suspects are tried again: about two
/// seconds of [`RETRY_PAUSE`]s, longer than an election after a lost primary takes (so that a
/// frozen primary is not asked again while the others elect), short enough that clients left
/// with only a server cut off for good find the rest of the cluster. Simulator seed 3402: a
/// replica removed while cut off, the only server its clients did not suspect, held them
/// after the partition healed.
pub const FORGIVE_AFTER: u32 = 200;

/// What an attempt's answer says, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// Committed.
    Committed,
    /// The target is not the primary; it named the primary, or could not.
    NotPrimary(Option<T>),
    /// A final answer (conflict, invalid, stale request number, refused): no retry.
    Final,
    /// No outcome: a retryable error, a closed connection, a timeout.
    Unknown,
}

impl<T> Answer<T> {
    /// What a commit's result says; `handle` turns the primary a redirect names into the
    /// client's handle for it (`None` if the client does not know that server).
    pub fn of<U>(
        result: &Result<U, CommitError>,
        handle: impl FnOnce(ServerId) -> Option<T>,
    ) -> Answer<T> {
        match result {
            Ok(_) => Answer::Committed,
            Err(CommitError::NotPrimary { primary }) => {
                Answer::NotPrimary(primary.and_then(handle))
            }
            Err(e) if e.is_final() => Answer::Final,
            Err(_) => Answer::Unknown,
        }
    }
}

/// What the shell does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request is over (committed, or failed for good).
    Done,
    /// Send again (to [`CommitRetry::next`]) after this pause.
    Retry(Duration),
}

/// The routing state of one client, over server handles `T` (ids or indices).
#[derive(Clone, Debug, Default)]
pub struct CommitRetry<T: Copy + Ord> {
    primary: Option<T>,
    suspects: BTreeSet<T>,
    turn: usize,
    /// "No primary known" answers in a row ([`FORGIVE_AFTER`]).
    unknowing: u32,
}

impl<T: Copy + Ord> CommitRetry<T> {
    /// A client that knows no primary yet; `turn` spreads clients over the servers.
    pub fn new(turn: usize) -> CommitRetry<T> {
        CommitRetry {
            primary: None,
            suspects: BTreeSet::new(),
            turn,
            unknowing: 0,
        }
    }

    /// The primary last learned.
    pub fn primary(&self) -> Option<T> {
        self.primary
    }

    /// A primary learned elsewhere (a status answer, a pushed role change).
    pub fn set_primary(&mut self, p: Option<T>) {
        self.primary = p;
    }

    /// Whether `t` failed a request lately (asked last).
    pub fn is_suspect(&self, t: T) -> bool {
        self.suspects.contains(&t)
    }

    /// The target of the next attempt among `servers` (`None`: none known).
    pub fn next(&mut self, servers: &[T]) -> Option<T> {
        if let Some(p) = self.primary {
            return Some(p);
        }
        let trusted: Vec<T> = servers
            .iter()
            .copied()
            .filter(|s| !self.suspects.contains(s))
            .collect();
        let pool = if trusted.is_empty() {
            servers
        } else {
            &trusted[..]
        };
        if pool.is_empty() {
            return None;
        }
        self.turn = self.turn.wrapping_add(1);
        Some(pool[self.turn % pool.len()])
    }

    /// The answer of the attempt sent to `target`.
    pub fn on_answer(&mut self, target: T, answer: Answer<T>) -> Verdict {
        if !matches!(answer, Answer::NotPrimary(None)) {
            self.unknowing = 0;
        }
        match answer {
            Answer::Committed => {
                self.primary = Some(target);
                self.suspects.clear();
                Verdict::Done
            }
            Answer::NotPrimary(Some(p)) => {
                self.primary = Some(p);
                Verdict::Retry(Duration::ZERO)
            }
            Answer::NotPrimary(None) => {
                // It knows no primary: an election is under way, or it is cut off. Not a
                // suspect (during an election every live server answers so, and suspecting
                // them all sent clients back to a frozen primary: 1,050 ms SIGSTOP failovers
                // against 806), but past `FORGIVE_AFTER` in a row the suspects are tried again.
                self.primary = None;
                self.unknowing += 1;
                if self.unknowing >= FORGIVE_AFTER {
                    self.unknowing = 0;
                    self.suspects.clear();
                }
                Verdict::Retry(RETRY_PAUSE)
            }
            Answer::Final => Verdict::Done,
            Answer::Unknown => {
                self.primary = None;
                self.suspects.insert(target);
                Verdict::Retry(RETRY_PAUSE)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients whose other servers all timed out once, left with one server cut off for good,
    /// try the others again after `FORGIVE_AFTER` answers of "no primary known" in a row, and
    /// not before.
    #[test]
    fn suspects_are_tried_again_after_a_run_of_no_primary_answers() {
        let servers = [0u32, 1, 2];
        let mut r = CommitRetry::new(0);
        r.on_answer(0, Answer::Unknown);
        r.on_answer(1, Answer::Unknown);
        for _ in 0..FORGIVE_AFTER - 1 {
            assert_eq!(r.next(&servers), Some(2));
            assert_eq!(
                r.on_answer(2, Answer::NotPrimary(None)),
                Verdict::Retry(RETRY_PAUSE)
            );
        }
        assert_eq!(r.next(&servers), Some(2));
        r.on_answer(2, Answer::NotPrimary(None));
        let tried: BTreeSet<u32> = (0..3).filter_map(|_| r.next(&servers)).collect();
        assert_eq!(tried.len(), 3, "every server in turn again: {tried:?}");
        // A run broken by another answer starts over.
        let mut r = CommitRetry::new(0);
        r.on_answer(0, Answer::Unknown);
        for _ in 0..FORGIVE_AFTER - 1 {
            r.on_answer(1, Answer::NotPrimary(None));
        }
        r.on_answer(2, Answer::Unknown);
        r.on_answer(1, Answer::NotPrimary(None));
        assert!(r.is_suspect(0) && r.is_suspect(2));
    }

    #[test]
    fn follows_redirects_and_tries_suspects_last() {
        let servers = [0u32, 1, 2];
        let mut r = CommitRetry::new(0);
        // No primary known: the servers in turn.
        let a = r.next(&servers).unwrap();
        assert_eq!(
            r.on_answer(a, Answer::NotPrimary(Some(2))),
            Verdict::Retry(Duration::ZERO)
        );
        assert_eq!(r.next(&servers), Some(2));
        // The primary went silent: it becomes a suspect and is not tried while others are.
        assert_eq!(r.on_answer(2, Answer::Unknown), Verdict::Retry(RETRY_PAUSE));
        for _ in 0..6 {
            assert_ne!(r.next(&servers), Some(2));
        }
        // A commit ends the suspicions and names the primary.
        assert_eq!(r.on_answer(1, Answer::Committed), Verdict::Done);
        assert_eq!(r.next(&servers), Some(1));
        r.on_answer(1, Answer::Unknown);
        r.on_answer(0, Answer::Unknown);
        r.on_answer(2, Answer::Unknown);
        // Everyone failed: all are tried again, in turn.
        let tried: BTreeSet<u32> = (0..3).filter_map(|_| r.next(&servers)).collect();
        assert_eq!(tried.len(), 3);
        assert_eq!(r.on_answer(0, Answer::Final), Verdict::Done);
        assert_eq!(CommitRetry::<u32>::new(0).next(&[]), None);
    }
}
