//! One slot per timer kind; the driver only ever sees the earliest deadline.

use crate::Time;

/// Every timer the core uses.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Timer {
    /// Token (or commit token) not seen for `token_timeout`: start a membership round.
    TokenLoss = 0,
    /// Resend the token (or commit token) we passed if nobody used it.
    TokenRetransmit = 1,
    /// Release a token held on an idle ring, or one passed to ourselves on a ring of one.
    TokenHold = 2,
    /// Resend our join while gathering.
    Join = 3,
    /// Give up on members that have not agreed.
    Consensus = 4,
    /// Announce our ring so that partitioned rings can merge.
    MergeDetect = 5,
}

const COUNT: usize = 6;
const ALL: [Timer; COUNT] = [
    Timer::TokenLoss,
    Timer::TokenRetransmit,
    Timer::TokenHold,
    Timer::Join,
    Timer::Consensus,
    Timer::MergeDetect,
];

/// Deadlines, one per `Timer`.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    slots: [Option<Time>; COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Time) {
        self.slots[timer as usize] = Some(at);
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Time> {
        self.slots[timer as usize]
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.slots[timer as usize] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.slots = [None; COUNT];
    }

    /// The earliest deadline of all running timers.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.slots.iter().flatten().min().copied()
    }

    /// Removes and returns one timer that has expired at `now` (earliest first).
    pub(crate) fn pop_expired(&mut self, now: Time) -> Option<Timer> {
        let mut best: Option<(Time, Timer)> = None;
        for t in ALL {
            if let Some(at) = self.slots[t as usize] {
                if at <= now && best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, t));
                }
            }
        }
        let (_, t) = best?;
        self.slots[t as usize] = None;
        Some(t)
    }
}
