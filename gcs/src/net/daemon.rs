//! The group daemon on a real network: `groups::Daemon` under the tokio driver, with the
//! cluster key layer. Embedded in a host server it is used directly (`connect` gives a
//! `Session`); `gcsd` wraps it with a session server for client processes.

use super::config::ClusterConfig;
use super::driver::{self, Clock};
use super::embed::StartError;
use super::group_core::{GroupCore, GroupRequest};
use super::session::{Session, SessionError};
use crate::crypto::{ClusterKey, CryptoError, KeyId};
use crate::groups::{Daemon, Limits};
use crate::{NodeId, ProcId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How a daemon protects its datagrams.
#[derive(Clone)]
pub enum Security {
    /// Authenticated encryption with the cluster key (the default for real deployments).
    Key {
        /// Key id (carried in each datagram, for rotation).
        id: KeyId,
        /// The key.
        key: ClusterKey,
    },
    /// Several keys, as in a key file with a rotation in progress (see
    /// [`crate::crypto::rotation`]): sealing starts with the oldest, and the daemons move to
    /// the newest together once every one holds it.
    Keys(Vec<(KeyId, ClusterKey)>),
    /// No protection: only for tests and benchmarks on a trusted loopback.
    Plaintext,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Key { id, .. } => write!(f, "Key {{ id: {id}, .. }}"),
            Security::Keys(k) => write!(
                f,
                "Keys {{ ids: {:?}, .. }}",
                k.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            ),
            Security::Plaintext => write!(f, "Plaintext"),
        }
    }
}

/// Everything needed to start a daemon.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The cluster.
    pub cluster: ClusterConfig,
    /// This daemon's id in it.
    pub id: NodeId,
    /// Datagram protection.
    pub security: Security,
    /// Session and group limits.
    pub limits: Limits,
    /// Bytes of unread events a session may accumulate before it is disconnected.
    pub session_backlog_max: usize,
    /// Capacity (events) of each session's channel before its backlog starts.
    pub session_channel: usize,
}

impl DaemonOptions {
    /// Defaults for daemon `id` of `cluster` with `security`.
    pub fn new(cluster: ClusterConfig, id: NodeId, security: Security) -> DaemonOptions {
        DaemonOptions {
            cluster,
            id,
            security,
            limits: Limits::default(),
            session_backlog_max: 64 << 20,
            session_channel: 4096,
        }
    }
}

/// A running group daemon.
pub struct GroupDaemon {
    me: ProcId,
    requests: mpsc::Sender<GroupRequest>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    session_channel: usize,
    keys: mpsc::Sender<driver::KeyControl>,
}

impl GroupDaemon {
    /// Starts the daemon on the current tokio runtime.
    pub async fn start(opts: DaemonOptions) -> Result<GroupDaemon, StartError> {
        if opts.cluster.addr_of(opts.id).is_none() {
            return Err(StartError::UnknownId(opts.id));
        }
        let clock = Clock::new();
        let me = ProcId::new(opts.id, driver::fresh_incarnation());
        let daemon = Daemon::new(
            opts.cluster.protocol(),
            opts.limits.clone(),
            me,
            clock.now(),
        )
        .map_err(|e| StartError::Groups(e.to_string()))?;
        let core = GroupCore::new(daemon, opts.session_backlog_max);
        // Session traffic goes through the sessions' own channels; the driver's event channel
        // is unused here.
        let r = driver::spawn(
            core,
            clock,
            opts.cluster.clone(),
            opts.id,
            me,
            &opts.security,
            1,
        )?;
        Ok(GroupDaemon {
            me,
            requests: r.requests,
            shutdown: Some(r.shutdown),
            task: r.task,
            session_channel: opts.session_channel,
            keys: r.keys,
        })
    }

    /// This daemon's process id.
    pub fn id(&self) -> ProcId {
        self.me
    }

    /// Opens a session named `name` on this daemon.
    pub async fn connect(&self, name: &str) -> Result<Session, SessionError> {
        let (events_tx, events) = mpsc::channel(self.session_channel.max(1));
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(GroupRequest::Connect {
                name: name.to_string(),
                events: events_tx,
                reply,
            })
            .await
            .map_err(|_| SessionError::Closed("daemon stopped".into()))?;
        let (sid, member) = rx
            .await
            .map_err(|_| SessionError::Closed("daemon stopped".into()))??;
        Ok(Session::new(member, sid, self.requests.clone(), events))
    }

    async fn key_call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), CryptoError>>) -> driver::KeyControl,
    ) -> Result<(), CryptoError> {
        let (tx, rx) = oneshot::channel();
        self.keys
            .send(make(tx))
            .await
            .map_err(|_| CryptoError::NoSuchKey(0))?;
        rx.await.map_err(|_| CryptoError::NoSuchKey(0))?
    }

    /// Key rotation, step 1 (on every daemon): also accept datagrams sealed with `key`.
    pub async fn add_key(&self, id: KeyId, key: ClusterKey) -> Result<(), CryptoError> {
        self.key_call(|reply| driver::KeyControl::Add { id, key, reply })
            .await
    }

    /// Key rotation, step 2 (on every daemon, once step 1 is done everywhere): seal with `id`.
    pub async fn set_send_key(&self, id: KeyId) -> Result<(), CryptoError> {
        self.key_call(|reply| driver::KeyControl::SetSendKey { id, reply })
            .await
    }

    /// Key rotation, step 3 (once step 2 is done everywhere and in-flight datagrams are gone):
    /// stop accepting `id`.
    pub async fn remove_key(&self, id: KeyId) -> Result<(), CryptoError> {
        self.key_call(|reply| driver::KeyControl::Remove { id, reply })
            .await
    }

    /// The key file was read again: accept its keys (a rotation: the daemons move to the
    /// newest key together once every one holds it, then drop the old one, by themselves;
    /// see [`crate::crypto::rotation`]). Returns what the daemon holds afterwards.
    pub async fn reload_keys(
        &self,
        keys: Vec<(KeyId, ClusterKey)>,
    ) -> Result<crate::crypto::rotation::KeyStatus, String> {
        let (reply, rx) = oneshot::channel();
        self.keys
            .send(driver::KeyControl::Reload { keys, reply })
            .await
            .map_err(|_| "daemon stopped".to_string())?;
        rx.await.map_err(|_| "daemon stopped".to_string())?
    }

    /// The keys held and sealed with, and the peers' as last announced (`None`: no key layer).
    pub async fn key_status(&self) -> Option<crate::crypto::rotation::KeyStatus> {
        let (reply, rx) = oneshot::channel();
        self.keys
            .send(driver::KeyControl::Status { reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// A sender for requests (used by the session server).
    pub fn requests(&self) -> mpsc::Sender<GroupRequest> {
        self.requests.clone()
    }

    /// Session channel capacity.
    pub fn session_channel(&self) -> usize {
        self.session_channel
    }

    /// Stops the daemon.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
