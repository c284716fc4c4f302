//! The storage cluster's configuration file (the same file on every host).
//!
//! ```toml
//! mode = "sync"                  # or "async"
//! async_window = 64              # async: most acknowledged commits a failover may lose
//! key_file = "cluster.key"       # gcs datagram key (gcs-keygen / standby keygen), relative to this file
//! client_token_file = "client.token"   # optional: clients must present this token (it allows everything)
//! client_tokens_file = "tokens"        # optional: `ROLE TOKEN` lines, role read, write or admin
//! fast_recovery_after = 100000   # recover by objects when further behind (tids)
//! checkpoint_after = 1000000     # an empty store further behind gets a checkpoint
//! sync_off_ring = false          # true: fsync applied commits on a thread of their own
//! zeo_storage = "1"              # the storage name ZEO clients register with
//!
//! [[server]]
//! id = 0                         # stable; also its gcs daemon id
//! name = "s0"
//! gcs = "127.0.0.1:7400"         # UDP, between servers
//! client = "127.0.0.1:7600"      # TCP, for clients
//! admin = "127.0.0.1:7700"       # HTTP: /health /primary /replica /status /metrics
//! zeo = "127.0.0.1:8100"         # optional: ZEO 5 for ZODB clients, writable: only the primary listens
//! zeo_read_only = "127.0.0.1:8200"   # optional: ZEO 5, read-only clients: every server listens
//! group = "main"                 # replica group
//! kind = "failover"              # or "remote" (never primary, never votes)
//! weight = 1                     # vote weight (failover only)
//!
//! client_plaintext = true        # plain TCP on the client ports (else [tls] is required)
//!
//! [tls]                          # TLS on the client ports, instead of client_plaintext
//! ca = "ca.pem"                  # signs the servers' certificates; clients check against it
//! cert = "server.pem"            # this host's certificate chain (each host has its own file here)
//! key = "server.key"
//! client_ca = "clients-ca.pem"   # optional: clients must show a certificate it signed
//! client_cert = "client.pem"     # optional: what the CLI shows
//! client_key = "client.key"
//!
//! [protocol]                     # optional: gcs timing, as in gcs cluster files
//! token_timeout_ms = 200
//! ```

use gcs::net::config::{ProtocolSection, SocketSection};
use gcs::net::ClusterConfig;
use replica::{CommitMode, GroupKind, RecoveryPolicy, ReplicaConfig, ServerId, ServerSpec};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

pub use servercore::membership::check_host_port;

/// Resolves `host:port` (the first address).
pub fn resolve(a: &str) -> Result<SocketAddr, String> {
    a.to_socket_addrs()
        .map_err(|e| format!("{a}: {e}"))?
        .next()
        .ok_or_else(|| format!("{a}: no address"))
}

/// One server of the file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// Stable id (its gcs daemon id).
    pub id: ServerId,
    /// Name for humans.
    pub name: String,
    /// UDP address of its gcs daemon (`host:port`; a host name is resolved at start-up).
    pub gcs: String,
    /// TCP address for clients (`host:port`; given to clients as is).
    pub client: String,
    /// HTTP admin address (`host:port`; where this server listens).
    pub admin: String,
    /// ZEO address for writable ZODB clients (`host:port`): listened on only while this
    /// server is the primary, so that stock clients given every server's address keep
    /// polling the others and land on the primary (see [`crate::zeo`]).
    #[serde(default)]
    pub zeo: Option<String>,
    /// ZEO address for read-only ZODB clients (`host:port`): listened on by every server.
    #[serde(default)]
    pub zeo_read_only: Option<String>,
    /// Replica group.
    #[serde(default = "default_group")]
    pub group: String,
    /// "failover" or "remote".
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Vote weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_group() -> String {
    "main".into()
}
fn default_kind() -> String {
    "failover".into()
}
fn default_weight() -> u32 {
    1
}
fn default_zeo_storage() -> String {
    "1".into()
}
fn default_mode() -> String {
    "sync".into()
}

/// `[tls]`: certificate files, relative to the configuration file. The same file is on every
/// host, so `cert` and `key` name each host's own files at the same path.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The CA (PEM) that signed the servers' certificates: what clients check them against.
    pub ca: PathBuf,
    /// This host's certificate chain (PEM), read again when it changes.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// If set, clients must also show a certificate signed by this CA (PEM).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The certificate the CLI shows (with `client_ca`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// "sync" or "async".
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Async loss bound.
    #[serde(default)]
    pub async_window: Option<u64>,
    /// The gcs datagram key file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The client token file: one token that allows everything.
    #[serde(default)]
    pub client_token_file: Option<PathBuf>,
    /// Client tokens with roles: `ROLE TOKEN` lines (`read`, `write`, `admin`).
    #[serde(default)]
    pub client_tokens_file: Option<PathBuf>,
    /// Recovery threshold: by objects beyond this many tids.
    #[serde(default)]
    pub fast_recovery_after: Option<u64>,
    /// Recovery threshold: checkpoint for an empty store beyond this many tids.
    #[serde(default)]
    pub checkpoint_after: Option<u64>,
    /// Applied commits are synced on a thread of their own, not in the task that passes the
    /// gcs token (`ReplicaConfig::defer_syncs`). Default false: each apply run syncs in that
    /// task, which measured faster on 2 vCPUs (see `defer_syncs`).
    #[serde(default)]
    pub sync_off_ring: Option<bool>,
    /// The storage name ZEO clients register with (`"1"`, ZEO's default).
    #[serde(default = "default_zeo_storage")]
    pub zeo_storage: String,
    /// The servers.
    #[serde(rename = "server")]
    pub servers: Vec<ServerEntry>,
    /// gcs timing.
    #[serde(default)]
    pub protocol: ProtocolSection,
    /// gcs sockets.
    #[serde(default)]
    pub socket: SocketSection,
    /// TLS on the client ports (servers) and to them (the CLI).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Plain TCP on the client ports: only when set (a throwaway cluster on loopback, or a
    /// network where something else encrypts). Without it, `[tls]` is required.
    #[serde(default)]
    pub client_plaintext: bool,
    /// Where the file was read from (relative paths are resolved against it).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("{0}")]
    Parse(String),
    /// Valid TOML, impossible cluster.
    #[error("{0}")]
    Invalid(String),
}

impl StandbyConfig {
    /// Reads and checks a file.
    pub fn from_file(path: &Path) -> Result<StandbyConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = StandbyConfig::from_toml(&text)?;
        c.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(c)
    }

    /// Parses and checks a text.
    pub fn from_toml(text: &str) -> Result<StandbyConfig, ConfigFileError> {
        let c: StandbyConfig =
            toml::from_str(text).map_err(|e| ConfigFileError::Parse(e.to_string()))?;
        c.replica().map_err(ConfigFileError::Invalid)?;
        for s in &c.servers {
            for (what, a) in [("gcs", &s.gcs), ("client", &s.client), ("admin", &s.admin)]
                .into_iter()
                .chain(s.zeo.iter().map(|a| ("zeo", a)))
                .chain(s.zeo_read_only.iter().map(|a| ("zeo_read_only", a)))
            {
                check_host_port(a).map_err(|e| {
                    ConfigFileError::Invalid(format!("server {}: {what} address {e}", s.id))
                })?;
            }
        }
        Ok(c)
    }

    /// A path of the file, resolved against the file's directory.
    /// The client side's TLS configuration (`None`: plain TCP, which needs
    /// `client_plaintext = true`).
    pub fn client_tls(&self) -> Result<Option<crate::netclient::Tls>, String> {
        match &self.tls {
            Some(t) => {
                let identity = match (&t.client_cert, &t.client_key) {
                    (Some(c), Some(k)) => Some((self.resolve(c), self.resolve(k))),
                    (None, None) => None,
                    _ => return Err("[tls]: client_cert and client_key go together".into()),
                };
                crate::tls::client_config(
                    &self.resolve(&t.ca),
                    identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                )
                .map(Some)
                .map_err(|e| e.to_string())
            }
            None => self.plaintext().map(|()| None),
        }
    }

    /// Without `[tls]`: plain TCP, allowed only by `client_plaintext = true`.
    fn plaintext(&self) -> Result<(), String> {
        if self.client_plaintext {
            Ok(())
        } else {
            Err("the client ports need [tls] (certificate files) or client_plaintext = true".into())
        }
    }

    /// The server side's TLS (`None`: plain TCP, which needs `client_plaintext = true`).
    pub fn server_tls(&self) -> Result<Option<crate::tls::ServerTls>, String> {
        match &self.tls {
            Some(t) => crate::tls::ServerTls::load(crate::tls::ServerFiles {
                cert: self.resolve(&t.cert),
                key: self.resolve(&t.key),
                client_ca: t.client_ca.as_ref().map(|p| self.resolve(p)),
            })
            .map(Some)
            .map_err(|e| e.to_string()),
            None => self.plaintext().map(|()| None),
        }
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The gcs cluster formed by the servers' daemons, with host names resolved now (a
    /// server whose address changes later must be restarted everywhere: the ring's members
    /// are addresses).
    pub fn cluster(&self) -> Result<ClusterConfig, String> {
        let mut c = ClusterConfig::from_addrs(&[]);
        let mut daemons = Vec::new();
        for s in &self.servers {
            daemons.push(gcs::net::config::DaemonAddr {
                id: s.id,
                addr: resolve(&s.gcs).map_err(|e| format!("server {} gcs address: {e}", s.id))?,
            });
        }
        c.daemons = daemons;
        c.protocol = self.protocol.clone();
        c.socket = self.socket.clone();
        Ok(c)
    }

    /// The replication configuration.
    pub fn replica(&self) -> Result<ReplicaConfig, String> {
        let mode = match self.mode.as_str() {
            "sync" => CommitMode::Sync,
            "async" => CommitMode::Async {
                window: self.async_window.unwrap_or(64),
            },
            m => return Err(format!("mode must be \"sync\" or \"async\", not {m:?}")),
        };
        let mut servers = Vec::new();
        for s in &self.servers {
            let kind = match s.kind.as_str() {
                "failover" => GroupKind::Failover,
                "remote" => GroupKind::Remote,
                k => {
                    return Err(format!(
                        "server {}: kind must be \"failover\" or \"remote\", not {k:?}",
                        s.id
                    ))
                }
            };
            servers.push(ServerSpec {
                id: s.id,
                name: s.name.clone(),
                group: s.group.clone(),
                kind,
                weight: if kind == GroupKind::Remote {
                    0
                } else {
                    s.weight
                },
            });
        }
        let mut r = ReplicaConfig::new(servers, mode);
        // With a ZEO face, tids are ZODB timestamps (2^32 per minute), so the thresholds,
        // which count tids, default to spans of time instead of transaction counts.
        let d = if self.has_zeo() {
            RecoveryPolicy {
                fast_after: crate::zeo::tid::MINUTE * 60,
                checkpoint_after: crate::zeo::tid::MINUTE * 60 * 24,
                ..RecoveryPolicy::default()
            }
        } else {
            RecoveryPolicy::default()
        };
        r.recovery.fast_after = self.fast_recovery_after.unwrap_or(d.fast_after);
        r.recovery.checkpoint_after = self.checkpoint_after.unwrap_or(d.checkpoint_after);
        r.defer_syncs = self.sync_off_ring.unwrap_or(r.defer_syncs);
        r.validate().map_err(|e| e.to_string())?;
        Ok(r)
    }

    /// Whether any server serves ZEO (tids are then ZODB timestamps).
    pub fn has_zeo(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.zeo.is_some() || s.zeo_read_only.is_some())
    }

    /// The entry of server `id`.
    pub fn server(&self, id: ServerId) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_port_needs_tls_or_an_explicit_plaintext() {
        let bare = StandbyConfig::from_toml(GOOD).unwrap();
        assert!(bare.server_tls().is_err());
        assert!(bare.client_tls().is_err());
        let plain = StandbyConfig::from_toml(&format!("client_plaintext = true\n{GOOD}")).unwrap();
        assert!(plain.server_tls().unwrap().is_none());
        assert!(plain.client_tls().unwrap().is_none());
        // With [tls], unreadable certificate files are an error, never plain TCP.
        let missing = StandbyConfig::from_toml(&format!(
            "client_plaintext = true\n{GOOD}\n[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n"
        ))
        .unwrap();
        assert!(missing.server_tls().is_err());
        assert!(missing.client_tls().is_err());
    }

    const GOOD: &str = r#"
mode = "sync"
[[server]]
id = 0
name = "a"
gcs = "127.0.0.1:7400"
client = "127.0.0.1:7600"
admin = "127.0.0.1:7700"
[[server]]
id = 1
name = "b"
gcs = "127.0.0.1:7401"
client = "127.0.0.1:7601"
admin = "127.0.0.1:7701"
kind = "remote"
weight = 0
"#;

    #[test]
    fn a_good_file_gives_both_configurations() {
        let c = StandbyConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.cluster().unwrap().daemons.len(), 2);
        let r = c.replica().unwrap();
        assert!(r.eligible(0));
        assert!(!r.eligible(1));
        assert!(!r.defer_syncs, "applies sync in the ring's task by default");
        let off = format!("sync_off_ring = true\n{GOOD}");
        let r = StandbyConfig::from_toml(&off).unwrap().replica().unwrap();
        assert!(r.defer_syncs);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let e = StandbyConfig::from_toml(&GOOD.replace("\"sync\"", "\"maybe\"")).unwrap_err();
        assert!(e.to_string().contains("mode must be"), "{e}");
        let e = StandbyConfig::from_toml(&GOOD.replace("kind = \"remote\"", "kind = \"x\""))
            .unwrap_err();
        assert!(e.to_string().contains("kind must be"), "{e}");
        let e = StandbyConfig::from_toml("mode = \"sync\"\nserver = []").unwrap_err();
        assert!(!e.to_string().is_empty());
        let e = StandbyConfig::from_toml(&format!("{GOOD}\nbogus = 1")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
