//! `standby-server --config standby.toml --id 0 --data data/s0 [--insecure]`
//!
//! Runs one storage server: its gcs daemon (UDP, sealed with the cluster key), its RocksDB
//! store under `--data` (layout: `CURRENT` -> `store-N`), the client port (TCP) and the admin
//! endpoint (HTTP), at the addresses the configuration gives for `--id`. Stops on SIGINT or
//! SIGTERM. Logs (`RUST_LOG`, default `info`) have one line for every view change, election,
//! role change, swap, recovery and checkpoint.
//!
//! Exit status: 0 after SIGINT or SIGTERM, or once this server learns that it was removed from
//! the cluster (`standby remove-replica`: it left the ring for good, and would at every start);
//! 75 when the store failed (disk full, an I/O error, a corrupt value met while running; the
//! server left the ring at once and lingered `--store-failure-exit-after` seconds with
//! `/health` saying why): a supervisor restarts it, and it rejoins and catches up once the store
//! works again; 78 when the store is corrupt at start-up or in another storage layout:
//! restarting does not help, rebuild it with `--rebuild`; 1 for anything else (configuration, ports).

use clap::Parser;
use gcs::net::Security;
use gcs::ClusterKey;
use server::config::StandbyConfig;
use server::front::{self, Access, Front};
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
    /// Set the live store aside (kept as `corrupt-<n>` in the data directory) and rebuild
    /// this server from the others: it starts empty and does not vote until caught up.
    #[arg(long, conflicts_with = "verify")]
    rebuild: bool,
    /// Read the whole store and check every checksum and record, then exit: 0 if sound, 78
    /// if corrupt. Does not start the server.
    #[arg(long)]
    verify: bool,
    /// After a store failure, how long the server stays up (out of the ring, `/health`
    /// answering 503 with the reason) before it exits with status 75.
    #[arg(long, default_value_t = 5.0)]
    store_failure_exit_after: f64,
}

/// The store failed while running, or cannot be opened for an I/O reason: a restart may
/// help (EX_TEMPFAIL).
const EXIT_STORE_FAILED: u8 = 75;
/// The store is corrupt: a restart does not help, a rebuild does (EX_CONFIG).
const EXIT_STORE_CORRUPT: u8 = 78;

/// Why the process ends.
struct Failure {
    code: u8,
    message: String,
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        message.to_string().into()
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { code: 1, message }
    }
}

/// A store error at start-up, with the status that tells a supervisor what to do.
fn store_failure(data: &std::path::Path, args: &Args, e: &storage::StorageError) -> Failure {
    match e {
        // Neither opens again by itself: a supervisor must not restart in a loop.
        storage::StorageError::Corrupt { .. } | storage::StorageError::Layout { .. } => Failure {
            code: EXIT_STORE_CORRUPT,
            message: format!(
                "the store in {} {}: {e}\n  rebuild it from the other servers with:\n  \
                 standby-server --config {} --id {} --data {} --rebuild",
                data.display(),
                match e {
                    storage::StorageError::Layout { .. } => "is in another layout",
                    _ => "is corrupt",
                },
                args.config.display(),
                args.id,
                data.display()
            ),
        },
        _ => Failure {
            code: EXIT_STORE_FAILED,
            message: format!("the store in {} cannot be used: {e}", data.display()),
        },
    }
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
        Err(f) => {
            eprintln!("standby-server: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Every key of the key file.
fn read_keys(path: &std::path::Path) -> Result<Vec<(gcs::KeyId, ClusterKey)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    gcs::crypto::parse_key_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `--verify`: a full read of the store.
fn verify(args: &Args) -> Result<(), Failure> {
    let (dir, new) = server::checkpoint::live_store_dir(&args.data)
        .map_err(|e| format!("{}: {e}", args.data.display()))?;
    if new {
        return Err(format!("{} holds no store", args.data.display()).into());
    }
    if let Some(what) = server::checkpoint::check_live_store(&dir) {
        return Err(store_failure(
            &args.data,
            args,
            &storage::StorageError::Corrupt { what },
        ));
    }
    let checked = RocksStorage::open(&dir, RocksOptions::default()).and_then(|s| s.verify());
    match checked {
        Ok(keys) => {
            println!("{}: sound ({keys} keys read)", dir.display());
            Ok(())
        }
        Err(e) => Err(store_failure(&args.data, args, &e)),
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    if args.verify {
        return verify(&args);
    }
    if args.rebuild {
        let moved = server::checkpoint::set_aside(&args.data)
            .map_err(|e| format!("{}: cannot set the store aside: {e}", args.data.display()))?;
        match moved {
            Some(old) => {
                tracing::warn!(kept = %old.display(), "store set aside: rebuilding from the other servers")
            }
            None => tracing::warn!("no store to set aside: rebuilding from the other servers"),
        }
    }
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
            (Some(k), false) => Security::Keys(read_keys(&cfg.resolve(k))?),
            (None, false) => return Err(
                "no key_file in the configuration (make one with `standby keygen`), or --insecure"
                    .into(),
            ),
        };
    // Client tokens: the single token of `client_token_file` allows everything; the lines
    // of `client_tokens_file` give each token a role. Neither: no token needed (loopback only).
    let mut tokens: Option<Vec<(Access, bytes::Bytes)>> = None;
    if let Some(p) = &cfg.client_token_file {
        let path = cfg.resolve(p);
        let t = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        tokens
            .get_or_insert_with(Vec::new)
            .push((Access::Admin, bytes::Bytes::from(t.trim().to_string())));
    }
    if let Some(p) = &cfg.client_tokens_file {
        let path = cfg.resolve(p);
        let t = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed =
            server::front::parse_tokens(&t).map_err(|e| format!("{}: {e}", path.display()))?;
        tokens.get_or_insert_with(Vec::new).extend(parsed);
    }
    if tokens.is_none() {
        tracing::warn!(
            "no client token configured: any client may do anything, the admin endpoint is open"
        );
    }
    let admin_tokens: Option<Vec<bytes::Bytes>> = tokens.as_ref().map(|t| {
        t.iter()
            .filter(|(a, _)| *a == Access::Admin)
            .map(|(_, t)| t.clone())
            .collect()
    });
    let client_tls = cfg.server_tls()?.map(Arc::new);
    if client_tls.is_none() {
        tracing::warn!("client port in plain TCP (client_plaintext = true)");
    }
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
    let (server, mut events) = match StorageServer::start(opts, source, 1 << 16).await {
        Ok(s) => s,
        Err(server::ServerStartError::Storage(e)) => {
            return Err(store_failure(&args.data, &args, &e))
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let server = Arc::new(server);
    let (tx, _) = tokio::sync::broadcast::channel(1 << 14);
    let configured: Vec<(u32, String, String)> = cfg
        .servers
        .iter()
        .map(|s| (s.id, s.name.clone(), s.client.clone()))
        .collect();
    let front = Arc::new(Front {
        server: server.clone(),
        tokens,
        topology: std::sync::RwLock::new(configured.clone()),
        configured,
        events: tx.clone(),
        hello_timeout: server::front::HELLO_TIMEOUT,
        write_stall_max: server::front::WRITE_STALL_MAX,
        tls: client_tls.clone(),
    });
    if let Some(tls) = client_tls {
        // Renewed certificates are served to new connections without a restart.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                match tls.reload_if_changed() {
                    Ok(true) => tracing::info!("client port: certificate files read again"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "client port: new certificate files refused; the previous ones stay in use")
                    }
                }
            }
        });
    }
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
        zeo_metrics = Some(Arc::new(move |reg| f.register_metrics(reg)));
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
    let store_failed = Arc::new(tokio::sync::Notify::new());
    let failed = store_failed.clone();
    let removed = Arc::new(tokio::sync::Notify::new());
    let was_removed = removed.clone();
    let my_id = args.id;
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if matches!(&e, ServerEvent::Role(r) if r.role == replica::Role::Down) {
                failed.notify_one();
            }
            if matches!(&e, ServerEvent::Membership(m) if m.is_removed(my_id)) {
                was_removed.notify_one();
            }
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
                ServerEvent::Invalidate(_) | ServerEvent::Durable(_) | ServerEvent::Claim(_) => {}
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
        if let Err(e) = server::admin::serve_with(admin, adm, zeo_metrics, admin_tokens).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    // SIGHUP: read the key file again (a key rotation, see `standby keygen --rotate`).
    if let Some(k) = cfg.key_file.as_ref().filter(|_| !args.insecure) {
        let path = cfg.resolve(k);
        let rk = server.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let keys = match read_keys(&path) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: key file not read; keys unchanged");
                        continue;
                    }
                };
                match rk.reload_keys(keys).await {
                    Ok(Ok(st)) => {
                        tracing::info!(send = st.send, held = ?st.held, "SIGHUP: key file read again")
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: a key was refused"),
                    Err(_) => return,
                }
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut outcome = Ok(());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = removed.notified() => {
            tracing::error!(
                "this server was removed from the cluster (standby remove-replica): it left the ring for good; exiting with status 0"
            );
        }
        _ = store_failed.notified() => {
            let reason = match server.status().await {
                Ok(st) => st.down_reason.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let linger = std::time::Duration::from_secs_f64(args.store_failure_exit_after.max(0.0));
            tracing::error!(
                %reason,
                "store failed: this server left the ring; exiting with status {EXIT_STORE_FAILED} in {linger:?} so that its supervisor restarts it"
            );
            tokio::time::sleep(linger).await;
            outcome = Err(Failure {
                code: EXIT_STORE_FAILED,
                message: format!("store failed: {reason}"),
            });
        }
    }
    tracing::info!("stopping");
    match Arc::try_unwrap(server) {
        Ok(s) => s.shutdown().await.map_err(|e| e.to_string())?,
        Err(s) => s.kill(),
    }
    outcome
}
