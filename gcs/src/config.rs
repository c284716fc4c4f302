//! Protocol parameters of one daemon. Every daemon of a ring should use the same values.

use std::time::Duration;
use thiserror::Error;

/// Timeouts, windows and size limits of the ring protocol.
///
/// The defaults suit a LAN; the simulator scales them to its own network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A member that has not seen the token for this long declares it lost and starts a
    /// membership round (gather). The upper bound on how long a failure goes unnoticed.
    pub token_timeout: Duration,
    /// A member that passed the token and sees no sign of the next member using it resends it
    /// after this long (a lost token costs this, not a whole membership round).
    pub token_retransmit_timeout: Duration,
    /// On an idle ring the representative holds the token this long before passing it, so an idle
    /// ring costs almost nothing. Bounds the latency of the first message after a quiet spell.
    pub token_hold: Duration,
    /// The representative starts holding the token only after the ring has been idle this long,
    /// so a ring under steady load (even light) keeps the token moving and stays low-latency.
    pub idle_before_hold: Duration,
    /// In gather, a member resends its join this often.
    pub join_timeout: Duration,
    /// In gather, members whose join still disagrees after this long are declared failed.
    pub consensus_timeout: Duration,
    /// The representative of an operational ring announces the ring this often, so rings that
    /// can hear each other again merge.
    pub merge_detect_interval: Duration,
    /// A token-loss or consensus timer that fires more than this late means this daemon was
    /// frozen: it re-reads its socket before judging the others. Zero disables the check.
    pub pause_grace: Duration,
    /// Largest datagram the core emits (bytes, headers included).
    pub max_packet_size: usize,
    /// Packets one member may originate per token visit.
    pub personal_window: u32,
    /// Packets all members together may originate (or retransmit) per token rotation.
    pub global_window: u32,
    /// Of the packets a member originates at one visit, this many are sent after the token has
    /// been passed on (the Accelerated Ring refinement). 0 gives classic Totem.
    pub accelerated_window: u32,
    /// Largest application message (it is fragmented over as many packets as needed).
    pub max_message_size: usize,
    /// Bytes of application messages waiting to be ordered before `multicast` refuses more.
    pub send_queue_max_bytes: usize,
    /// How long the send queue may take to drain, at the rate the ring has been taking this
    /// daemon's messages while it had a backlog, before `multicast` refuses more (`QueueFull`:
    /// the driver holds the sender's request, so it waits). A sender on a saturated ring
    /// feels it before its messages wait seconds in the queue. A message is taken while the
    /// queue is below the bound, so one message may pass it; the bound never falls below what
    /// one token visit may send (`personal_window` full packets). Zero: bytes only.
    pub send_queue_max_delay: Duration,
    /// How far (in packets) a member accepts sequence numbers beyond what it has contiguously;
    /// senders stay within half of it, so it also bounds a member's receive buffer.
    pub recv_window_max: u64,
    /// Most retransmission requests the token carries.
    pub rtr_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Failover takes about token_timeout + consensus_timeout: 0.8 s. See the README
            // ("Faults and the knobs that govern them") for the trade against false suspicions.
            token_timeout: Duration::from_millis(400),
            token_retransmit_timeout: Duration::from_millis(60),
            token_hold: Duration::from_millis(20),
            idle_before_hold: Duration::from_millis(100),
            join_timeout: Duration::from_millis(50),
            consensus_timeout: Duration::from_millis(400),
            merge_detect_interval: Duration::from_millis(200),
            pause_grace: Duration::from_millis(300),
            max_packet_size: 8 * 1024,
            personal_window: 64,
            global_window: 256,
            accelerated_window: 16,
            max_message_size: 32 * 1024 * 1024,
            send_queue_max_bytes: 32 * 1024 * 1024,
            send_queue_max_delay: Duration::from_millis(100),
            recv_window_max: 16 * 1024,
            rtr_max: 256,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Two parameters contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// Checks the relations the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what| Err(ConfigError::Invalid(what));
        if self.token_retransmit_timeout.is_zero() || self.join_timeout.is_zero() {
            return bad("timeouts must be positive");
        }
        if self.token_retransmit_timeout * 2 > self.token_timeout {
            return bad("token_retransmit_timeout must be at most half of token_timeout");
        }
        if self.token_hold >= self.token_retransmit_timeout {
            // The predecessor of a holding representative would resend the token needlessly.
            return bad("token_hold must be shorter than token_retransmit_timeout");
        }
        if self.join_timeout * 2 > self.consensus_timeout {
            return bad("join_timeout must be at most half of consensus_timeout");
        }
        if self.max_packet_size < crate::wire::MIN_PACKET_SIZE {
            return bad("max_packet_size too small");
        }
        if self.max_packet_size > crate::wire::MAX_DATA_PACKET_SIZE {
            return bad("max_packet_size larger than a UDP datagram");
        }
        if self.personal_window == 0 || self.global_window < self.personal_window {
            return bad("need 0 < personal_window <= global_window");
        }
        if self.accelerated_window > self.personal_window {
            return bad("accelerated_window must not exceed personal_window");
        }
        if self.recv_window_max < 4 * self.global_window as u64 {
            return bad("recv_window_max must be at least 4 * global_window");
        }
        if self.max_message_size == 0 || self.max_message_size > u32::MAX as usize {
            return bad("max_message_size must be in 1..=u32::MAX");
        }
        if self.send_queue_max_bytes < self.max_message_size {
            // Otherwise a largest message could only ever enter an empty queue.
            return bad("send_queue_max_bytes must be at least max_message_size");
        }
        if self.rtr_max == 0 || self.rtr_max > crate::wire::RTR_MAX {
            return bad("rtr_max out of range");
        }
        Ok(())
    }
}
