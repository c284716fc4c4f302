//! `gcsd`: the standalone group daemon. One per host: it joins the ring of `--config` as daemon
//! `--id` and serves client sessions (`gcs::net::client`, `gcs-user`) over a Unix socket and/or
//! TCP.
//!
//! ```text
//! gcsd --config cluster.toml --id 0 --key cluster.key --unix /run/gcs/0.sock \
//!      [--unix-mode 660] [--tcp 127.0.0.1:4803 --token-file client.token] \
//!      [--backlog-bytes N] [--max-sessions N] [--insecure]
//! ```
//!
//! - `--key` is a cluster key made by `gcs-keygen` (the same file on every daemon; or `key_file`
//!   in the cluster configuration); `--insecure`
//!   instead sends plaintext datagrams (tests on a trusted loopback only).
//! - The Unix socket's permissions are its authentication (default 0600; `--unix-mode 660` lets
//!   the owner's group in). TCP clients must present the token of `--token-file` (one line).
//! - SIGTERM / SIGINT: closes the listeners, tells every session, disconnects it, leaves the
//!   ring, removes the socket file, exits 0.
//! - Logs go to standard error; `RUST_LOG` filters them (default `info`).

use gcs::net::server::{Server, ServerOptions};
use gcs::net::{ClusterConfig, DaemonOptions, GroupDaemon, Security};
use gcs::ClusterKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// The standalone group daemon: joins the ring of `--config` as daemon `--id` and serves client
/// sessions over a Unix socket and/or TCP.
#[derive(clap::Parser)]
#[command(name = "gcsd", version)]
struct Args {
    /// The cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// This daemon's id in the configuration.
    #[arg(long)]
    id: u32,
    /// The cluster key file (made by `gcs-keygen`; or `key_file` in the configuration).
    #[arg(long, conflicts_with = "insecure")]
    key: Option<PathBuf>,
    /// Plaintext datagrams (tests on a trusted loopback only).
    #[arg(long)]
    insecure: bool,
    /// The Unix socket to serve sessions on.
    #[arg(long, required_unless_present = "tcp")]
    unix: Option<PathBuf>,
    /// The Unix socket's permissions: 600 (the owner) or 660 (and its group).
    #[arg(long, default_value = "600", value_parser = parse_unix_mode)]
    unix_mode: u32,
    /// The TCP address to serve sessions on (clients present the token of --token-file).
    #[arg(long, requires = "token_file")]
    tcp: Option<SocketAddr>,
    /// The file holding the TCP clients' token (one line).
    #[arg(long, requires = "tcp")]
    token_file: Option<PathBuf>,
    /// Bytes a session may have queued before it is cut off.
    #[arg(long = "backlog-bytes")]
    backlog: Option<usize>,
    /// Sessions served at once.
    #[arg(long)]
    max_sessions: Option<usize>,
}

fn parse_unix_mode(v: &str) -> Result<u32, String> {
    match v {
        "600" | "0600" => Ok(0o600),
        "660" | "0660" => Ok(0o660),
        _ => Err("must be 600 or 660".into()),
    }
}

fn read_token(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() || t.lines().nth(1).is_some() {
        return Err(format!(
            "{}: the token file must hold one non-empty line",
            path.display()
        ));
    }
    Ok(t.to_string())
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message, as before.
    let args = <Args as clap::Parser>::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gcsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gcsd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let cluster = ClusterConfig::from_file(&args.config).map_err(|e| e.to_string())?;
    let key_file = args.key.clone().or_else(|| cluster.key_file.clone());
    if key_file.is_none() && !args.insecure {
        return Err(
            "no cluster key: give --key FILE, set key_file in the configuration, or --insecure"
                .into(),
        );
    }
    let read_keys = |path: &std::path::Path| -> Result<Vec<(gcs::KeyId, ClusterKey)>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        gcs::crypto::parse_key_file(&text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let security = match &key_file {
        Some(path) => Security::Keys(read_keys(path)?),
        None => {
            tracing::warn!("--insecure: daemon traffic is neither authenticated nor encrypted");
            Security::Plaintext
        }
    };
    let token = match &args.token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };
    let mut opts = DaemonOptions::new(cluster, args.id, security);
    if let Some(b) = args.backlog {
        opts.session_backlog_max = b;
    }
    if let Some(m) = args.max_sessions {
        opts.limits.max_sessions = m;
    }
    let daemon = GroupDaemon::start(opts.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut sopts = ServerOptions::for_daemon(&opts);
    sopts.unix = args.unix.clone();
    sopts.unix_mode = args.unix_mode;
    sopts.tcp = args.tcp;
    sopts.token = token;
    let server = match Server::start(&daemon, sopts).await {
        Ok(s) => s,
        Err(e) => {
            let _ = daemon.shutdown().await;
            return Err(format!("cannot listen: {e}"));
        }
    };
    tracing::info!(
        daemon = ?daemon.id(),
        unix = ?server.unix_path(),
        tcp = ?server.tcp_addr(),
        "gcsd ready"
    );
    let signal = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return "no signal handlers".to_string();
        };
        loop {
            tokio::select! {
                _ = term.recv() => return "SIGTERM".to_string(),
                _ = int.recv() => return "SIGINT".to_string(),
                _ = hup.recv() => {
                    // A key rotation: read the key file again.
                    let Some(path) = &key_file else { continue };
                    match read_keys(path) {
                        Ok(keys) => match daemon.reload_keys(keys).await {
                            Ok(st) => tracing::info!(send = st.send, held = ?st.held, "SIGHUP: key file read again"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: a key was refused"),
                        },
                        Err(e) => tracing::error!(error = %e, "SIGHUP: key file not read; keys unchanged"),
                    }
                }
            }
        }
    };
    let why = signal.await;
    tracing::info!(signal = %why, "shutting down");
    server.shutdown().await;
    daemon.shutdown().await.map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}
