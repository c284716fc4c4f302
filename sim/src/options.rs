//! What one seed's run looks like: the network, the faults, the load. All drawn from the seed
//! ("swarm testing": each seed explores a different mix of faults).
//!
//! A seed draws: loss from none up to 15 %, duplication, a delay spread with optional long
//! tails (which reorder), a partition mode (splits, isolation, one-way links, or a mix), whether
//! daemons crash (and restart as new incarnations) and whether they pause (a frozen daemon
//! resumes with stale timers and a socket backlog), the share of large (fragmented) messages,
//! and the accelerated window.

use crate::prng::Prng;
use std::time::Duration;

/// How one-way delays are drawn between `delay_min_us` and `delay_max_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayDist {
    /// Uniform over the range: heavy reordering.
    Uniform,
    /// `delay_min_us` plus an exponential with mean a quarter of the spread, capped at
    /// `delay_max_us`: mostly quick, sometimes slow, as on a loaded LAN.
    Exponential,
}

/// Network behaviour for a period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetParams {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub dup: f64,
    /// Smallest one-way delay, microseconds.
    pub delay_min_us: u64,
    /// Largest ordinary one-way delay, microseconds (the spread reorders datagrams).
    pub delay_max_us: u64,
    /// Probability that a datagram takes a much longer path (up to 20x `delay_max_us`).
    pub tail: f64,
    /// Shape of the ordinary delays.
    pub dist: DelayDist,
}

impl NetParams {
    /// A healthy LAN.
    pub fn calm() -> NetParams {
        NetParams {
            loss: 0.0,
            dup: 0.0,
            delay_min_us: 100,
            delay_max_us: 400,
            tail: 0.0,
            dist: DelayDist::Uniform,
        }
    }
}

/// How the network splits during storms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionMode {
    /// Never split.
    None,
    /// Random two- or three-way splits.
    Split,
    /// One node cut off from all others.
    Isolate,
    /// Random one-way link failures (a hears b, b does not hear a).
    Asymmetric,
    /// Any of the above.
    Mixed,
}

/// Everything that shapes one run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed everything derives from.
    pub seed: u64,
    /// Number of daemons.
    pub nodes: usize,
    /// Length of the faulty phase.
    pub storm: Duration,
    /// Length of the calm phase that follows (liveness is checked at its end).
    pub calm: Duration,
    /// No sends in the last part of the calm phase, so the last messages drain.
    pub drain: Duration,
    /// Network during stormy periods.
    pub storm_net: NetParams,
    /// Network during calm periods.
    pub calm_net: NetParams,
    /// Splits during stormy periods.
    pub partitions: PartitionMode,
    /// Whether daemons crash (and restart as new incarnations) during storms.
    pub crashes: bool,
    /// Whether daemons freeze for a while during storms.
    pub pauses: bool,
    /// Mean time between two multicasts of one daemon.
    pub send_interval: Duration,
    /// Fraction of multicasts that are large (fragmented over many packets).
    pub large_fraction: f64,
    /// The protocol configuration, scaled to the simulated network.
    pub gcs: gcs::Config,
}

impl Options {
    /// The options for `seed` with `nodes` daemons.
    pub fn swarm(seed: u64, nodes: usize) -> Options {
        let mut r = Prng::new(seed ^ 0x05EE_D0F5_7A2D);
        let storm_net = NetParams {
            loss: r.pick(&[0.0, 0.001, 0.01, 0.05, 0.15]),
            dup: r.pick(&[0.0, 0.01, 0.1]),
            delay_min_us: r.range(50, 300),
            delay_max_us: r.range(400, 4000),
            tail: r.pick(&[0.0, 0.001, 0.02]),
            dist: r.pick(&[DelayDist::Uniform, DelayDist::Exponential]),
        };
        let partitions = r.pick(&[
            PartitionMode::None,
            PartitionMode::Split,
            PartitionMode::Isolate,
            PartitionMode::Asymmetric,
            PartitionMode::Mixed,
            PartitionMode::Mixed,
        ]);
        let gcs = gcs::Config {
            token_timeout: Duration::from_millis(300),
            token_retransmit_timeout: Duration::from_millis(40),
            token_hold: Duration::from_millis(10),
            idle_before_hold: Duration::from_millis(r.range(0, 50)),
            join_timeout: Duration::from_millis(30),
            consensus_timeout: Duration::from_millis(300),
            merge_detect_interval: Duration::from_millis(150),
            pause_grace: Duration::from_millis(150),
            max_packet_size: 1400,
            personal_window: 16,
            global_window: 64,
            accelerated_window: r.pick(&[0, 4, 16]),
            max_message_size: 1 << 20,
            send_queue_max_bytes: 4 << 20,
            // Drawn from a generator of its own, so that every other draw of a seed stays as
            // it was: bytes only, a tight time bound, the default one.
            send_queue_max_delay: Duration::from_millis(
                Prng::new(seed ^ 0x5E0D_E1A7).pick(&[0, 5, 100]),
            ),
            recv_window_max: 2048,
            rtr_max: 128,
        };
        Options {
            seed,
            nodes,
            storm: Duration::from_millis(r.range(3000, 8000)),
            calm: Duration::from_millis(6000),
            drain: Duration::from_millis(2000),
            storm_net,
            calm_net: NetParams::calm(),
            partitions,
            crashes: r.chance(0.5),
            pauses: r.chance(0.4),
            send_interval: Duration::from_millis(r.range(5, 60)),
            large_fraction: r.pick(&[0.0, 0.01, 0.05]),
            gcs,
        }
    }
}
