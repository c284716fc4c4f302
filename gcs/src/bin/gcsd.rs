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

const USAGE: &str = "usage: gcsd --config FILE --id N (--key FILE | --insecure) \
[--unix PATH] [--unix-mode 600|660] [--tcp ADDR --token-file FILE] [--backlog-bytes N] \
[--max-sessions N]";

struct Args {
    config: PathBuf,
    id: u32,
    key: Option<PathBuf>,
    insecure: bool,
    unix: Option<PathBuf>,
    unix_mode: u32,
    tcp: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    backlog: Option<usize>,
    max_sessions: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        config: PathBuf::new(),
        id: u32::MAX,
        key: None,
        insecure: false,
        unix: None,
        unix_mode: 0o600,
        tcp: None,
        token_file: None,
        backlog: None,
        max_sessions: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "--insecure" {
            a.insecure = true;
            i += 1;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let v = argv
            .get(i + 1)
            .cloned()
            .ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag {
            "--config" => a.config = v.into(),
            "--id" => a.id = v.parse().map_err(|e| bad(&e))?,
            "--key" => a.key = Some(v.into()),
            "--unix" => a.unix = Some(v.into()),
            "--unix-mode" => {
                a.unix_mode = match v.as_str() {
                    "600" | "0600" => 0o600,
                    "660" | "0660" => 0o660,
                    _ => return Err(bad(&"must be 600 or 660")),
                }
            }
            "--tcp" => a.tcp = Some(v.parse().map_err(|e| bad(&e))?),
            "--token-file" => a.token_file = Some(v.into()),
            "--backlog-bytes" => a.backlog = Some(v.parse().map_err(|e| bad(&e))?),
            "--max-sessions" => a.max_sessions = Some(v.parse().map_err(|e| bad(&e))?),
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    if a.config.as_os_str().is_empty() {
        return Err("--config is required".into());
    }
    if a.id == u32::MAX {
        return Err("--id is required".into());
    }
    if a.key.is_some() && a.insecure {
        return Err("give at most one of --key FILE and --insecure".into());
    }
    if a.unix.is_none() && a.tcp.is_none() {
        return Err("give --unix PATH and/or --tcp ADDR".into());
    }
    if a.tcp.is_some() != a.token_file.is_some() {
        return Err("--tcp and --token-file go together".into());
    }
    Ok(a)
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
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gcsd: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
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
