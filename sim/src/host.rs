//! What every simulated host has around its core, whatever runs on it (part of the
//! [`crate::world`]): the socket buffer that fills while the host is paused, the one timer that
//! tracks its core's deadline, and the routing of its datagrams.
//!
//! The timer carries a generation that every re-arm increases, so a timer event scheduled
//! before the deadline moved is recognised as stale and ignored rather than removed from the
//! queue.

use bytes::Bytes;
use gcs::{Dest, Time};
use std::collections::VecDeque;

/// Datagrams a paused host keeps (a socket buffer: bounded, the rest is lost).
const INBOX_MAX: usize = 2000;

/// A host's I/O state across pauses and crashes.
#[derive(Debug, Default)]
pub(crate) struct HostIo {
    /// Stopped (SIGSTOP): datagrams queue, timers wait.
    pub(crate) paused: bool,
    /// Datagrams that arrived while paused.
    inbox: VecDeque<Bytes>,
    /// Bumped whenever the scheduled timer event is superseded.
    timer_gen: u64,
    /// The deadline the scheduled timer event is for.
    timer_at: Option<Time>,
}

impl HostIo {
    /// Keeps a datagram that arrived while paused, if the buffer has room.
    pub(crate) fn buffer(&mut self, bytes: Bytes) {
        if self.inbox.len() < INBOX_MAX {
            self.inbox.push_back(bytes);
        }
    }

    /// The next buffered datagram (after a resume).
    pub(crate) fn next_buffered(&mut self) -> Option<Bytes> {
        self.inbox.pop_front()
    }

    /// The host crashed: its buffer and its pending timer are gone.
    pub(crate) fn crashed(&mut self) {
        self.paused = false;
        self.inbox.clear();
        self.timer_at = None;
        self.timer_gen += 1;
    }

    /// Follows the core's deadline: when it changed, the timer event to schedule, as
    /// `(at, generation)` (the event is stale unless its generation is still current).
    pub(crate) fn rearm(&mut self, deadline: Option<Time>, now: Time) -> Option<(Time, u64)> {
        if deadline == self.timer_at {
            return None;
        }
        self.timer_gen += 1;
        self.timer_at = deadline;
        deadline.map(|at| (at.max(now), self.timer_gen))
    }

    /// A timer event of generation `gen` fired: whether it is current (and the host not
    /// paused), in which case the core's timeout runs now.
    pub(crate) fn fires(&mut self, gen: u64) -> bool {
        if self.timer_gen != gen || self.paused {
            return false;
        }
        self.timer_at = None;
        true
    }
}

/// The hosts a datagram from host `from` to `dest` goes to, among `hosts` hosts.
pub(crate) fn recipients(dest: Dest, from: usize, hosts: usize) -> impl Iterator<Item = usize> {
    let (lo, hi, only) = match dest {
        Dest::All => (0, hosts, None),
        Dest::Node(j) => (0, hosts, Some(j as usize)),
    };
    (lo..hi).filter(move |j| *j != from && only.is_none_or(|o| o == *j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearm_schedules_only_changes_and_stale_timers_do_not_fire() {
        let mut h = HostIo::default();
        let (at, g1) = h.rearm(Some(Time(50)), Time(100)).unwrap();
        assert_eq!(at, Time(100), "a past deadline fires now");
        assert_eq!(h.rearm(Some(Time(50)), Time(120)), None);
        let (_, g2) = h.rearm(Some(Time(300)), Time(120)).unwrap();
        assert!(!h.fires(g1));
        h.paused = true;
        assert!(!h.fires(g2));
        h.paused = false;
        assert!(h.fires(g2));
        h.crashed();
        assert_eq!(h.rearm(None, Time(0)), None);
    }

    #[test]
    fn datagrams_go_to_every_other_host_or_to_one() {
        assert_eq!(recipients(Dest::All, 1, 4).collect::<Vec<_>>(), [0, 2, 3]);
        assert_eq!(recipients(Dest::Node(2), 1, 4).collect::<Vec<_>>(), [2]);
        assert_eq!(recipients(Dest::Node(1), 1, 4).count(), 0);
        assert_eq!(recipients(Dest::Node(9), 1, 4).count(), 0);
    }
}
