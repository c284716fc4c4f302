//! `standby-server --config standby.toml --id 0 --data data/s0 [--insecure]`
//!
//! Runs one storage server: its gcs daemon (UDP, sealed with the cluster key), its RocksDB
//! store under `--data` (layout: `CURRENT` -> `store-N`), the client port (TCP) and the admin
//! endpoint (HTTP), at the addresses the configuration gives for `--id`. Stops on SIGINT or
//! SIGTERM. Logs (`RUST_LOG`, default `info`) have one line for every view change, election,
//! role change, swap, recovery and checkpoint.

use clap::Parser;
use gcs::net::Security;
use gcs::ClusterKey;
use server::config::StandbyConfig;
use server::front::{self, Front};
use server::zeo::{ZeoFace, ZeoOptions};
use server::{ServerEvent, ServerOptions, StorageServer, StoreSource};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use storage::{RocksOptions, RocksStorage};

#[derive(Parser)]
#[command(about = "Run one standby storage server")]
struct Args {
    /// The cluster configuration (the same file on every host).
    #[arg(long)]
    config: PathBuf,
    /// This server's id in the configuration.
    #[arg(long)]
    id: u32,
    /// Data directory of this server.
    #[arg(long)]
    data: PathBuf,
    /// Run without the cluster key (traffic between servers neither authenticated nor
    /// encrypted): only for a throwaway cluster on loopback.
    #[arg(long)]
    insecure: bool,
    /// This server lost its data directory since it last ran: do not vote until caught up.
    #[arg(long)]
    after_disk_loss: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("standby-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("standby-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let cfg = StandbyConfig::from_file(&args.config).map_err(|e| e.to_string())?;
    let me = cfg
        .server(args.id)
        .ok_or_else(|| format!("server {} is not in {}", args.id, args.config.display()))?
        .clone();
    let security =
        match (&cfg.key_file, args.insecure) {
            (_, true) => {
                tracing::warn!(
                    "--insecure: traffic between servers is neither authenticated nor encrypted"
                );
                Security::Plaintext
            }
            (Some(k), false) => {
                let path = cfg.resolve(k);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let key = ClusterKey::from_key_file(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Security::Key { id: 1, key }
            }
            (None, false) => return Err(
                "no key_file in the configuration (make one with `standby keygen`), or --insecure"
                    .into(),
            ),
        };
    let token = match &cfg.client_token_file {
        Some(p) => {
            let path = cfg.resolve(p);
            let t =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(bytes::Bytes::from(t.trim().to_string()))
        }
        None => None,
    };
    let opts = ServerOptions {
        cluster: cfg.cluster()?,
        id: args.id,
        replica: cfg.replica()?,
        security,
        after_disk_loss: args.after_disk_loss,
    };
    let source = StoreSource::DataDir {
        data: args.data.clone(),
        open: Box::new(|p: &std::path::Path| RocksStorage::open(p, RocksOptions::default())),
    };
    let (server, mut events) = StorageServer::start(opts, source, 1 << 16)
        .await
        .map_err(|e| e.to_string())?;
    let server = Arc::new(server);
    let (tx, _) = tokio::sync::broadcast::channel(1 << 14);
    let configured: Vec<(u32, String, String)> = cfg
        .servers
        .iter()
        .map(|s| (s.id, s.name.clone(), s.client.clone()))
        .collect();
    let front = Arc::new(Front {
        server: server.clone(),
        token,
        topology: std::sync::RwLock::new(configured.clone()),
        configured,
        events: tx.clone(),
        hello_timeout: server::front::HELLO_TIMEOUT,
    });
    let fan = tx;
    let topo = front.clone();
    // The ZEO face, when this server has a ZEO address: it gets every event, in order.
    let mut zeo_metrics: Option<server::admin::ExtraMetrics> = None;
    let zeo_events = if me.zeo.is_some() || me.zeo_read_only.is_some() {
        let resolve = |a: &Option<String>| -> Result<Option<std::net::SocketAddr>, String> {
            a.as_deref().map(server::config::resolve).transpose()
        };
        let opts = ZeoOptions {
            storage_name: cfg.zeo_storage.clone(),
            writable: resolve(&me.zeo)?,
            read_only: resolve(&me.zeo_read_only)?,
            ..ZeoOptions::default()
        };
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| format!("no random seed: {e}"))?;
        let face = ZeoFace::new(server.clone(), opts, u64::from_le_bytes(seed));
        let f = face.clone();
        zeo_metrics = Some(Arc::new(move || f.metrics()));
        let (ztx, zrx) = tokio::sync::mpsc::channel(1 << 16);
        tokio::spawn(async move {
            if let Err(e) = face.run(zrx).await {
                tracing::error!(error = %e, "ZEO face stopped");
            }
        });
        Some(ztx)
    } else {
        None
    };
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let Some(z) = &zeo_events {
                // In order and never dropped: the face holds commits' answers on them.
                let _ = z.send(e.clone()).await;
            }
            match &e {
                ServerEvent::Role(r) => {
                    tracing::info!(role = ?r.role, primary = ?r.primary, "role changed")
                }
                ServerEvent::Lost(l) => {
                    // The count and the range, not every tid: a long-isolated former primary
                    // can move very many, and `standby lost` lists them all.
                    tracing::warn!(
                        server = l.server,
                        truncated_after = ?l.truncated_after,
                        transactions = l.tids.len(),
                        first = ?l.tids.first(),
                        last = ?l.tids.last(),
                        objects = l.oids.len(),
                        "transactions moved to the lost archive (`standby lost` lists them)"
                    )
                }
                ServerEvent::NeedCheckpoint { donor } => {
                    tracing::info!(donor, "recovering from a checkpoint")
                }
                ServerEvent::Membership(m) => topo.set_membership(m),
                ServerEvent::Invalidate(_) | ServerEvent::Durable(_) => {}
            }
            let _ = fan.send(e);
        }
    });
    // Host names in the file are resolved again every 10 s: a peer that moved (a rescheduled
    // pod) keeps its place in the ring instead of being refused at its new address.
    let names: Vec<(u32, String)> = cfg.servers.iter().map(|s| (s.id, s.gcs.clone())).collect();
    let re = server.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let mut daemons = Vec::new();
            for (id, name) in &names {
                match tokio::net::lookup_host(name.as_str()).await {
                    Ok(mut a) => {
                        if let Some(a) = a.next() {
                            daemons.push((*id, a));
                        }
                    }
                    Err(e) => tracing::debug!(server = id, %name, error = %e, "cannot resolve"),
                }
            }
            if re.readdress(daemons).await.is_err() {
                return;
            }
        }
    });
    let clients = tokio::net::TcpListener::bind(&me.client)
        .await
        .map_err(|e| format!("client port {}: {e}", me.client))?;
    let admin = tokio::net::TcpListener::bind(&me.admin)
        .await
        .map_err(|e| format!("admin port {}: {e}", me.admin))?;
    tracing::info!(id = args.id, gcs = %me.gcs, client = %me.client, admin = %me.admin, zeo = ?me.zeo, zeo_read_only = ?me.zeo_read_only, data = %args.data.display(), "storage server running");
    tokio::spawn(front::serve(clients, front));
    let adm = server.clone();
    tokio::spawn(async move {
        if let Err(e) = server::admin::serve_with(admin, adm, zeo_metrics).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    match Arc::try_unwrap(server) {
        Ok(s) => s.shutdown().await.map_err(|e| e.to_string()),
        Err(s) => {
            s.kill();
            Ok(())
        }
    }
}
