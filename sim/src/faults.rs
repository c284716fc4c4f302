//! The [`crate::world`]'s seeded fault schedule and the faulty network between nodes, the same
//! for every mode (gcs daemons, storage servers, group daemons).
//!
//! A run has three phases: a storm (faults on), `Heal`, then a calm phase after which liveness
//! and convergence are checked. For storage servers the storm also holds planned swaps, at most
//! one disk loss per run (losing a majority of disks loses data by definition), and up to two
//! stores that start failing, drawn from a generator of their own so that adding them left every
//! other draw of a seed unchanged; the calm phase holds one swap, which must succeed without a
//! failed request.

use crate::options::{DelayDist, NetParams, Options, PartitionMode};
use crate::prng::Prng;
use gcs::Time;
use std::time::Duration;

/// A scenario step.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Change loss, duplication and delay.
    SetNet(NetParams),
    /// `links[a][b]`: datagrams from a reach b.
    SetLinks(Vec<Vec<bool>>),
    /// The node dies (its memory is lost; a storage server keeps its durable store).
    Crash(usize),
    /// The node starts again as a new incarnation.
    Restart(usize),
    /// The node dies and loses its disk too (a storage server comes back empty).
    Wipe(usize),
    /// The node freezes: no timers, no processing; arriving datagrams wait in its socket.
    Pause(usize),
    /// The node resumes, with stale timers and a backlog of datagrams.
    Resume(usize),
    /// The node's store starts failing every write (a full or failed disk); storage servers
    /// only. The server leaves the ring and its supervisor restarts it until the store works.
    StoreFails(usize),
    /// The node's store works again (space was freed).
    StoreHeals(usize),
    /// Network whole and calm, every node running, every store working: the liveness phase
    /// starts.
    Heal,
    /// An operator asks (through node `via`) that node `to` become primary (storage servers).
    Swap {
        /// The node that receives the operator's request.
        via: usize,
        /// The node that should become primary.
        to: usize,
    },
    /// An operator asks (through node `via`, then wherever it is redirected) that nodes
    /// `add` get a vote and nodes `remove` lose theirs (storage servers).
    VoterChange {
        /// The node that receives the operator's request first.
        via: usize,
        /// Nodes given a vote.
        add: Vec<usize>,
        /// Nodes whose vote is taken away.
        remove: Vec<usize>,
    },
    /// An operator asks (through node `via`, then wherever it is redirected) that node
    /// `server` be added to the cluster's address book as a read replica, or removed from it
    /// (storage servers).
    Membership {
        /// The node that receives the operator's request first.
        via: usize,
        /// The node added or removed.
        server: usize,
        /// Added (else removed).
        add: bool,
    },
}

/// A seeded scenario: actions in time order, and the phases.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// `(when, what)`, in time order for equal times as listed.
    pub actions: Vec<(Time, Action)>,
    /// When the network heals for good (liveness is judged after it).
    pub calm_from: Time,
    /// When the run stops.
    pub end: Time,
    /// When the workload stops sending (the rest drains).
    pub sends_until: Time,
}

/// The swarm scenario of `opts`: boot, a storm of faults, heal, calm. With `storage`, the
/// storm also holds planned swaps and disk losses, and the calm phase one swap.
pub fn plan_swarm(opts: &Options, storage: bool) -> Plan {
    let swaps = storage;
    let mut r = Prng::new(opts.seed ^ 0xFA_u64.rotate_left(40));
    let n = opts.nodes;
    let mut actions = Vec::new();
    for i in 0..n {
        let t = Time(r.range(0, 50_000));
        actions.push((t, Action::Restart(i)));
    }
    let storm_end = Time::ZERO.saturating_add(opts.storm);
    let mut t = Time(r.range(100_000, 600_000));
    let mut crashed = vec![false; n];
    // Losing a majority of disks loses data by definition: at most one disk per run.
    let mut wipes = 0;
    let mut paused = vec![false; n];
    while t < storm_end {
        let period = Duration::from_millis(r.range(200, 2000));
        if r.chance(0.6) {
            actions.push((t, Action::SetNet(opts.storm_net)));
            if let Some(links) = draw_links(opts, &mut r) {
                actions.push((t, Action::SetLinks(links)));
            }
            if opts.crashes && r.chance(0.4) {
                let i = r.range(0, n as u64 - 1) as usize;
                if !crashed[i] {
                    crashed[i] = true;
                    if storage && wipes == 0 && r.chance(0.2) {
                        wipes += 1;
                        actions.push((t, Action::Wipe(i)));
                    } else {
                        actions.push((t, Action::Crash(i)));
                    }
                    if r.chance(0.7) {
                        let back = t.saturating_add(Duration::from_millis(r.range(50, 2000)));
                        if back < storm_end {
                            crashed[i] = false;
                            actions.push((back, Action::Restart(i)));
                        }
                    }
                }
            }
            if opts.pauses && r.chance(0.4) {
                let i = r.range(0, n as u64 - 1) as usize;
                if !paused[i] {
                    actions.push((t, Action::Pause(i)));
                    let back = t.saturating_add(Duration::from_millis(r.range(100, 3000)));
                    if back < storm_end {
                        actions.push((back, Action::Resume(i)));
                    } else {
                        paused[i] = true;
                    }
                }
            }
        } else {
            actions.push((t, Action::SetNet(opts.calm_net)));
            actions.push((t, Action::SetLinks(vec![vec![true; n]; n])));
        }
        if swaps && r.chance(0.3) {
            let via = r.range(0, n as u64 - 1) as usize;
            let to = r.range(0, n as u64 - 1) as usize;
            let at = t.saturating_add(Duration::from_millis(r.range(0, 200)));
            actions.push((at, Action::Swap { via, to }));
        }
        t = t.saturating_add(period);
    }
    if storage {
        // Drawn from their own generator, so that adding them left every other draw of a
        // seed as it was.
        let mut rs = Prng::new(opts.seed ^ 0x5707_E0F5);
        for _ in 0..2 {
            if !rs.chance(0.35) || storm_end.0 <= 200_000 {
                continue;
            }
            let i = rs.range(0, n as u64 - 1) as usize;
            let at = Time(rs.range(200_000, storm_end.0));
            actions.push((at, Action::StoreFails(i)));
            let back = at.saturating_add(Duration::from_millis(rs.range(200, 4000)));
            if back < storm_end {
                actions.push((back, Action::StoreHeals(i)));
            }
        }
    }
    actions.push((storm_end, Action::Heal));
    let end = storm_end.saturating_add(opts.calm);
    if swaps {
        // One swap in calm weather, which must succeed without a failed request.
        let at = storm_end.saturating_add(opts.calm / 3);
        let to = r.range(0, n as u64 - 1) as usize;
        actions.push((
            at,
            Action::Swap {
                via: (to + 1) % n,
                to,
            },
        ));
    }
    Plan {
        actions,
        calm_from: storm_end,
        end,
        sends_until: Time(end.0.saturating_sub(opts.drain.as_micros() as u64)),
    }
}

/// A manual plan: every node boots at once (1 ms apart); add faults to `actions`.
pub fn plan_manual(opts: &Options, calm_from: Time, end: Time) -> Plan {
    Plan {
        actions: (0..opts.nodes)
            .map(|i| (Time(i as u64 * 1000), Action::Restart(i)))
            .collect(),
        calm_from,
        end,
        sends_until: Time(end.0.saturating_sub(opts.drain.as_micros() as u64)),
    }
}

fn draw_links(opts: &Options, r: &mut Prng) -> Option<Vec<Vec<bool>>> {
    let n = opts.nodes;
    let mode = match opts.partitions {
        PartitionMode::None => return None,
        PartitionMode::Mixed => r.pick(&[
            PartitionMode::Split,
            PartitionMode::Isolate,
            PartitionMode::Asymmetric,
        ]),
        m => m,
    };
    let mut links = vec![vec![true; n]; n];
    match mode {
        PartitionMode::Split => {
            let parts = r.range(2, 3);
            let side: Vec<u64> = (0..n).map(|_| r.range(0, parts - 1)).collect();
            for a in 0..n {
                for b in 0..n {
                    links[a][b] = side[a] == side[b];
                }
            }
        }
        PartitionMode::Isolate => {
            let i = r.range(0, n as u64 - 1) as usize;
            for (j, row) in links.iter_mut().enumerate() {
                row[i] = j == i;
            }
            links[i] = (0..n).map(|j| j == i).collect();
        }
        PartitionMode::Asymmetric => {
            for _ in 0..r.range(1, n as u64) {
                let a = r.range(0, n as u64 - 1) as usize;
                let b = r.range(0, n as u64 - 1) as usize;
                if a != b {
                    links[a][b] = false;
                }
            }
        }
        PartitionMode::None | PartitionMode::Mixed => unreachable!(),
    }
    Some(links)
}

/// The faulty network between nodes: which links work, and how datagrams are lost,
/// duplicated and delayed.
pub struct Net {
    /// `links[a][b]`: datagrams from a reach b.
    pub links: Vec<Vec<bool>>,
    /// Current behaviour.
    pub params: NetParams,
    rng: Prng,
}

impl Net {
    /// A whole network of `n` nodes with `params`, drawing from `rng`.
    pub fn new(n: usize, params: NetParams, rng: Prng) -> Net {
        Net {
            links: vec![vec![true; n]; n],
            params,
            rng,
        }
    }

    /// The delays of the copies of one datagram from `from` to `to` (empty: lost).
    pub fn delays(&mut self, from: usize, to: usize) -> Vec<u64> {
        if !self.links[from][to] || self.rng.chance(self.params.loss) {
            return Vec::new();
        }
        let copies = if self.rng.chance(self.params.dup) {
            2
        } else {
            1
        };
        let p = self.params;
        (0..copies)
            .map(|_| {
                let (lo, hi) = (p.delay_min_us, p.delay_max_us);
                let mut d = match p.dist {
                    DelayDist::Uniform => self.rng.range(lo, hi),
                    DelayDist::Exponential => {
                        let mean = (hi.saturating_sub(lo) as f64 / 4.0).max(1.0);
                        lo + (self.rng.exp(mean) as u64).min(hi - lo.min(hi))
                    }
                };
                if self.rng.chance(p.tail) {
                    d += self.rng.range(0, p.delay_max_us * 20);
                }
                d
            })
            .collect()
    }
}
