//! Real networks (feature `net`): the tokio driver, the UDP transport, the cluster configuration
//! and the embeddable async API; the session protocol, server and client of the standalone
//! daemon `gcsd` (`proto`, `server`, `client`). Protocol logic stays in the sans-IO core.

pub mod client;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod embed;
pub mod group_core;
pub mod proto;
pub mod server;
pub mod session;
pub mod udp;

pub use config::ClusterConfig;
pub use daemon::{DaemonOptions, GroupDaemon, Security};
pub use embed::{Event, Gcs, SendError, StartError};
pub use session::{Session, SessionError, SessionRequest};
