//! Cluster configuration for real networks, from a TOML file or from code.
//!
//! ```toml
//! key_file = "cluster.key"    # optional: the cluster key (gcs-keygen), relative to this file
//!
//! # Every daemon of the cluster: its id (stable across restarts) and UDP address.
//! [[daemon]]
//! id = 0
//! addr = "127.0.0.1:7400"
//! [[daemon]]
//! id = 1
//! addr = "127.0.0.1:7401"
//!
//! [protocol]              # optional; every key has a LAN default (see gcs::Config)
//! token_timeout_ms = 400
//! token_retransmit_timeout_ms = 60
//! token_hold_ms = 20
//! idle_before_hold_ms = 100
//! join_timeout_ms = 50
//! consensus_timeout_ms = 400
//! merge_detect_interval_ms = 200
//! pause_grace_ms = 300
//! max_packet_size = 8192
//! personal_window = 64
//! global_window = 256
//! accelerated_window = 16
//! max_message_size = 33554432
//! send_queue_max_bytes = 67108864
//! send_queue_max_delay_ms = 100
//!
//! [socket]                # optional
//! recv_buffer = 8388608   # SO_RCVBUF bytes
//! send_buffer = 8388608   # SO_SNDBUF bytes
//! # multicast = "239.192.0.1:7500"   # send to-all datagrams once, to this IPv4 group
//! ```

use crate::{Config, NodeId};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// One daemon of the cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DaemonAddr {
    /// Stable id of the daemon (its node id).
    pub id: NodeId,
    /// Where it receives datagrams.
    pub addr: SocketAddr,
}

/// Protocol parameters; each missing key keeps `gcs::Config::default()`'s value.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProtocolSection {
    /// See `Config::token_timeout`.
    pub token_timeout_ms: Option<u64>,
    /// See `Config::token_retransmit_timeout`.
    pub token_retransmit_timeout_ms: Option<u64>,
    /// See `Config::token_hold`.
    pub token_hold_ms: Option<u64>,
    /// See `Config::idle_before_hold`.
    pub idle_before_hold_ms: Option<u64>,
    /// See `Config::join_timeout`.
    pub join_timeout_ms: Option<u64>,
    /// See `Config::consensus_timeout`.
    pub consensus_timeout_ms: Option<u64>,
    /// See `Config::merge_detect_interval`.
    pub merge_detect_interval_ms: Option<u64>,
    /// See `Config::pause_grace`.
    pub pause_grace_ms: Option<u64>,
    /// See `Config::max_packet_size`.
    pub max_packet_size: Option<usize>,
    /// See `Config::personal_window`.
    pub personal_window: Option<u32>,
    /// See `Config::global_window`.
    pub global_window: Option<u32>,
    /// See `Config::accelerated_window`.
    pub accelerated_window: Option<u32>,
    /// See `Config::max_message_size`.
    pub max_message_size: Option<usize>,
    /// See `Config::send_queue_max_bytes`.
    pub send_queue_max_bytes: Option<usize>,
    /// See `Config::send_queue_max_delay` (0: bytes only).
    pub send_queue_max_delay_ms: Option<u64>,
}

/// Socket options.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SocketSection {
    /// Receive buffer (SO_RCVBUF), bytes.
    #[serde(default = "default_buffer")]
    pub recv_buffer: usize,
    /// Send buffer (SO_SNDBUF), bytes.
    #[serde(default = "default_buffer")]
    pub send_buffer: usize,
    /// IP multicast group (IPv4 `group:port`) for datagrams to every daemon, instead of one
    /// unicast copy per daemon. Tokens always go unicast.
    #[serde(default)]
    pub multicast: Option<std::net::SocketAddrV4>,
}

fn default_buffer() -> usize {
    8 << 20
}

impl Default for SocketSection {
    fn default() -> Self {
        SocketSection {
            recv_buffer: default_buffer(),
            send_buffer: default_buffer(),
            multicast: None,
        }
    }
}

/// The whole cluster file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster key file (made by `gcs-keygen`), relative to the configuration file's
    /// directory unless absolute. `gcsd --key` overrides it.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// Every daemon, by id.
    #[serde(rename = "daemon")]
    pub daemons: Vec<DaemonAddr>,
    /// Protocol parameters.
    #[serde(default)]
    pub protocol: ProtocolSection,
    /// Socket options.
    #[serde(default)]
    pub socket: SocketSection,
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ClusterConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("invalid cluster configuration: {0}")]
    Parse(String),
    /// Valid syntax, impossible content.
    #[error("invalid cluster configuration: {0}")]
    Invalid(String),
}

impl ClusterConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<ClusterConfig, ClusterConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Self::from_toml(&text)?;
        if let (Some(k), Some(dir)) = (c.key_file.as_mut(), path.parent()) {
            if k.is_relative() {
                *k = dir.join(&*k);
            }
        }
        Ok(c)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<ClusterConfig, ClusterConfigError> {
        let c: ClusterConfig =
            toml::from_str(text).map_err(|e| ClusterConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// A cluster of `addrs`, ids 0.., default parameters.
    pub fn from_addrs(addrs: &[SocketAddr]) -> ClusterConfig {
        ClusterConfig {
            key_file: None,
            daemons: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| DaemonAddr {
                    id: i as NodeId,
                    addr: *a,
                })
                .collect(),
            protocol: ProtocolSection::default(),
            socket: SocketSection::default(),
        }
    }

    /// Checks ids are unique and the protocol parameters consistent.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if self.daemons.is_empty() {
            return Err(ClusterConfigError::Invalid("no [[daemon]] listed".into()));
        }
        let mut ids: Vec<NodeId> = self.daemons.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(ClusterConfigError::Invalid("duplicate daemon id".into()));
        }
        self.protocol()
            .validate()
            .map_err(|e| ClusterConfigError::Invalid(e.to_string()))
    }

    /// The address of daemon `id`.
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.daemons.iter().find(|d| d.id == id).map(|d| d.addr)
    }

    /// The protocol parameters as the core takes them.
    pub fn protocol(&self) -> Config {
        let p = &self.protocol;
        let d = Config::default();
        let ms = |v: Option<u64>, dflt: Duration| v.map(Duration::from_millis).unwrap_or(dflt);
        Config {
            token_timeout: ms(p.token_timeout_ms, d.token_timeout),
            token_retransmit_timeout: ms(p.token_retransmit_timeout_ms, d.token_retransmit_timeout),
            token_hold: ms(p.token_hold_ms, d.token_hold),
            idle_before_hold: ms(p.idle_before_hold_ms, d.idle_before_hold),
            join_timeout: ms(p.join_timeout_ms, d.join_timeout),
            consensus_timeout: ms(p.consensus_timeout_ms, d.consensus_timeout),
            merge_detect_interval: ms(p.merge_detect_interval_ms, d.merge_detect_interval),
            pause_grace: ms(p.pause_grace_ms, d.pause_grace),
            max_packet_size: p.max_packet_size.unwrap_or(d.max_packet_size),
            personal_window: p.personal_window.unwrap_or(d.personal_window),
            global_window: p.global_window.unwrap_or(d.global_window),
            accelerated_window: p.accelerated_window.unwrap_or(d.accelerated_window),
            max_message_size: p.max_message_size.unwrap_or(d.max_message_size),
            send_queue_max_bytes: p.send_queue_max_bytes.unwrap_or(d.send_queue_max_bytes),
            send_queue_max_delay: ms(p.send_queue_max_delay_ms, d.send_queue_max_delay),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let doc = include_str!("config.rs");
        let toml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start().to_string() + "\n")
            .collect();
        let c = ClusterConfig::from_toml(&toml).unwrap();
        assert_eq!(c.daemons.len(), 2);
        assert_eq!(c.protocol().token_timeout, Duration::from_millis(400));
    }

    #[test]
    fn a_relative_key_file_is_found_beside_the_configuration() {
        let dir = std::env::temp_dir().join(format!("gcs-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(
            &path,
            "key_file = \"cluster.key\"\n[[daemon]]\nid = 0\naddr = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let c = ClusterConfig::from_file(&path).unwrap();
        assert_eq!(c.key_file, Some(dir.join("cluster.key")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_bad_files_with_clear_errors() {
        let e = ClusterConfig::from_toml("[[daemon]]\nid = 0\naddr = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("invalid"), "{e}");
        let dup = "[[daemon]]\nid = 0\naddr = \"127.0.0.1:1\"\n[[daemon]]\nid = 0\naddr = \"127.0.0.1:2\"\n";
        assert!(ClusterConfig::from_toml(dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let bad = "[[daemon]]\nid = 0\naddr = \"127.0.0.1:1\"\n[protocol]\ntoken_timeout_ms = 10\n";
        assert!(ClusterConfig::from_toml(bad).is_err());
        assert!(
            ClusterConfig::from_toml("[[daemon]]\nid=0\naddr=\"127.0.0.1:1\"\nbogus=1\n").is_err()
        );
    }
}
