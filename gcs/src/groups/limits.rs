//! Names, limits and the errors of the session calls.

use crate::ConfigError;
use thiserror::Error;

/// Longest group name, in bytes (Spread's `MAX_GROUP_NAME` is 32 including its NUL; we count
/// bytes of the name itself). Private group names always fit (see [`MAX_SESSION_NAME`]).
pub const MAX_GROUP_NAME: usize = 32;
/// Longest session (private) name, in bytes. A private group name is `#` + name + `#` + the
/// daemon's node id (at most 10 digits): at most 28 bytes, within [`MAX_GROUP_NAME`].
pub const MAX_SESSION_NAME: usize = 16;
/// Most destination groups of one multicast.
pub const MAX_DESTINATIONS: usize = 256;

/// Per-daemon limits of the groups layer. Every daemon of a cluster should use the same values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client sessions one daemon serves at once.
    pub max_sessions: usize,
    /// Groups one session may be a member of (joined or joining) at once.
    pub max_groups_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1024,
            max_groups_per_session: 256,
        }
    }
}

impl Limits {
    /// The largest state-exchange message these limits can produce (every session of the
    /// daemon in as many groups as allowed, with the longest names).
    pub fn max_state_message(&self) -> usize {
        let per_member = 4 + 1 + MAX_SESSION_NAME + 2;
        let per_group = 1 + MAX_GROUP_NAME;
        super::codec::STATE_FIXED
            + self
                .max_sessions
                .saturating_mul(per_member + self.max_groups_per_session.saturating_mul(per_group))
    }

    pub(crate) fn validate(&self, max_message_size: usize) -> Result<(), ConfigError> {
        if self.max_sessions == 0 || self.max_sessions > u32::MAX as usize {
            return Err(ConfigError::Invalid("max_sessions must be in 1..=u32::MAX"));
        }
        if self.max_groups_per_session == 0 || self.max_groups_per_session > u16::MAX as usize {
            return Err(ConfigError::Invalid(
                "max_groups_per_session must be in 1..=65535",
            ));
        }
        if self.max_state_message() > max_message_size {
            // The state exchange sends all local memberships in one message: it must fit.
            return Err(ConfigError::Invalid(
                "max_sessions * max_groups_per_session too large for max_message_size",
            ));
        }
        Ok(())
    }
}

/// Why a session call was refused. Nothing was sent.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum GroupError {
    /// The daemon's configuration or limits cannot work (a `ConfigError`'s message).
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// No such session on this daemon (never connected, or disconnected).
    #[error("unknown session {0}")]
    UnknownSession(u32),
    /// A session name breaks the naming rules.
    #[error("invalid session name {name:?}: {reason}")]
    InvalidSessionName {
        /// The name.
        name: String,
        /// Which rule.
        reason: &'static str,
    },
    /// Another session of this daemon uses the name (so its private group would be ambiguous).
    #[error("session name {0:?} already in use on this daemon")]
    NameInUse(String),
    /// The daemon serves `max_sessions` already.
    #[error("too many sessions (limit {max})")]
    TooManySessions {
        /// The limit.
        max: usize,
    },
    /// A group name breaks the naming rules (or names a private group where only a public
    /// group may be used, as in `join`).
    #[error("invalid group name {name:?}: {reason}")]
    InvalidGroupName {
        /// The name.
        name: String,
        /// Which rule.
        reason: &'static str,
    },
    /// The session is in `max_groups_per_session` groups already.
    #[error("session is in too many groups (limit {max})")]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
    /// `join` of a group the session joined (or is joining) already.
    #[error("already a member of {0:?}")]
    AlreadyMember(String),
    /// `leave` of a group the session is not in.
    #[error("not a member of {0:?}")]
    NotMember(String),
    /// `multicast` with an empty group list.
    #[error("no destination group")]
    NoGroups,
    /// `multicast` to more than [`MAX_DESTINATIONS`] groups.
    #[error("{count} destination groups exceed the limit of {max}")]
    TooManyDestinations {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is larger than the ring's `max_message_size` minus this message's header.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Largest payload for this sender and these groups.
        max: usize,
    },
    /// The daemon's send queue is full: try again once deliveries have drained it.
    #[error("send queue full ({queued} bytes waiting)")]
    QueueFull {
        /// Bytes waiting.
        queued: usize,
    },
}

impl From<ConfigError> for GroupError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(what) => GroupError::Config(what),
        }
    }
}

fn plain_chars(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'#')
}

/// A session name: 1..=16 bytes of printable ASCII, no space, no `#`.
pub(crate) fn check_session_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_SESSION_NAME {
        return Err("longer than 16 bytes");
    }
    if !plain_chars(name) {
        return Err("only printable ASCII without space or '#'");
    }
    Ok(())
}

/// A public group name: 1..=32 bytes of printable ASCII, no space, no `#` (reserved for
/// private groups).
pub(crate) fn check_public_group(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_GROUP_NAME {
        return Err("longer than 32 bytes");
    }
    if name.starts_with('#') {
        return Err("names starting with '#' are private groups");
    }
    if !plain_chars(name) {
        return Err("only printable ASCII without space or '#'");
    }
    Ok(())
}

/// A destination: a public group, or a private group `#name#node`.
pub(crate) fn check_destination(name: &str) -> Result<(), &'static str> {
    let Some(rest) = name.strip_prefix('#') else {
        return check_public_group(name);
    };
    let Some((session, node)) = rest.split_once('#') else {
        return Err("a private group is #name#node");
    };
    check_session_name(session)?;
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) || node.parse::<u32>().is_err()
    {
        return Err("a private group ends with the daemon's node id");
    }
    Ok(())
}

/// The private group of session `name` on node `node`.
pub(crate) fn private_group(name: &str, node: crate::NodeId) -> String {
    format!("#{name}#{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_public_group("chat").is_ok());
        assert!(check_public_group(&"x".repeat(32)).is_ok());
        assert!(check_public_group(&"x".repeat(33)).is_err());
        assert!(check_public_group("").is_err());
        assert!(check_public_group("a b").is_err());
        assert!(check_public_group("#a#1").is_err());
        assert!(check_public_group("é").is_err());
        assert!(check_destination("#alice#4294967295").is_ok());
        assert!(check_destination("#alice#4294967296").is_err());
        assert!(check_destination("#alice#").is_err());
        assert!(check_destination("#alice").is_err());
        assert!(check_destination("#al#ce#1").is_err());
        let longest = private_group(&"n".repeat(MAX_SESSION_NAME), u32::MAX);
        assert!(longest.len() <= MAX_GROUP_NAME);
        assert!(check_destination(&longest).is_ok());
        assert!(check_session_name("alice").is_ok());
        assert!(check_session_name(&"n".repeat(17)).is_err());
    }

    #[test]
    fn default_limits_fit_the_default_ring() {
        let cfg = crate::Config::default();
        Limits::default().validate(cfg.max_message_size).unwrap();
        let huge = Limits {
            max_sessions: 100_000,
            max_groups_per_session: 1000,
        };
        assert!(huge.validate(cfg.max_message_size).is_err());
    }
}
