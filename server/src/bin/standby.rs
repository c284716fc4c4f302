//! `standby` — the operator's and developer's command line for a storage cluster.
//!
//! ```text
//! standby --config standby.toml status
//! standby --config standby.toml put KEY VALUE
//! standby --config standby.toml get KEY [--replica-lag N]
//! standby --config standby.toml log [--from TID] [--to TID] [--max N]
//! standby --config standby.toml switchover --to ID
//! standby --config standby.toml add-server --id 3 --name s3 --gcs H:P --client H:P --admin H:P
//! standby --config standby.toml replace-server --old 2 --id 3 --name s3 --gcs H:P ...
//! standby --config standby.toml remove-server --id 3
//! standby --config standby.toml lost --server ID
//! standby --config standby.toml workload --seconds 10 --clients 8
//! standby keygen --dir DIR          # cluster.key (servers) and client.token (clients)
//! ```
//! Keys are UTF-8 names; each maps to an object id (its bytes). Values are stored as given.

#![allow(clippy::print_stdout)]

use bytes::Bytes;
use clap::{Parser, Subcommand};
use server::config::StandbyConfig;
use server::netclient::{Client, ReadFrom};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{Oid, Tid};

#[derive(Parser)]
#[command(about = "Command line for a standby storage cluster")]
struct Cli {
    /// The cluster configuration (gives the servers' client addresses and the client token).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Server client addresses (instead of --config), comma-separated.
    #[arg(long, global = true, value_delimiter = ',')]
    servers: Vec<String>,
    /// Client token file (with --servers).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// A server joining the cluster: who it is and where (a read replica's flags, and a voter's
/// with its weight).
#[derive(clap::Args)]
struct JoiningServer {
    /// Its id (never used before in this cluster).
    #[arg(long)]
    id: u32,
    /// Its name.
    #[arg(long)]
    name: String,
    /// Its gcs (ring) address, host:port.
    #[arg(long)]
    gcs: String,
    /// Its client address, host:port.
    #[arg(long)]
    client: String,
    /// Its admin address, host:port.
    #[arg(long)]
    admin: String,
}

impl JoiningServer {
    /// Its membership entry (the gcs address resolved now).
    fn added(&self) -> Result<server::membership::AddedServer, String> {
        Ok(server::membership::AddedServer {
            id: self.id,
            name: self.name.clone(),
            gcs: server::config::resolve(&self.gcs)?,
            client: self.client.clone(),
            admin: self.admin.clone(),
        })
    }
}

/// A voting server joining the cluster.
#[derive(clap::Args)]
struct NewServer {
    #[command(flatten)]
    server: JoiningServer,
    /// Its vote weight.
    #[arg(long, default_value_t = 1)]
    weight: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every server: role, epoch, last tid, lag, view.
    Status,
    /// Read a key (from the primary, or from a replica at most N transactions behind).
    Get {
        /// The key.
        key: String,
        /// Read from a replica at most this many transactions behind (else the primary).
        #[arg(long)]
        replica_lag: Option<u64>,
        /// ... and that was current at most this long ago (a replica cut off from the
        /// primary cannot tell how many transactions it missed, only for how long).
        #[arg(long)]
        max_staleness_ms: Option<u64>,
        /// Read from this server only (refused if it cannot prove it is within the bounds
        /// given; without bounds it answers, saying how stale it may be).
        #[arg(long)]
        server: Option<u32>,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// List transactions.
    Log {
        /// First tid.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last tid.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        max: u32,
    },
    /// Follow lagging servers (recovery, checkpoint transfer) with a progress bar each until
    /// every server is at the primary's last transaction.
    Catchup {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Planned swap: make server ID the primary.
    Switchover {
        /// The new primary.
        #[arg(long)]
        to: u32,
    },
    /// Add a voting server to the running cluster: it joins as a read replica (unless it
    /// already has), prints the entry for its configuration file, and waits while you start
    /// it: once it caught up (a learner), it is given a vote (joint configuration, then the
    /// new one).
    AddServer {
        #[command(flatten)]
        new: NewServer,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Replace voting server OLD (dead or alive) by a new one, as `add-server` does, in one
    /// voter change; then OLD is removed from the cluster.
    ReplaceServer {
        /// The server replaced.
        #[arg(long)]
        old: u32,
        #[command(flatten)]
        new: NewServer,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Take a voting server's vote away, then remove it from the cluster. The primary cannot
    /// be removed: swap first (`switchover`).
    RemoveServer {
        /// The server.
        #[arg(long)]
        id: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Add a read replica to the running cluster (it never votes nor becomes primary). Then
    /// start it with a configuration file listing the cluster's servers and itself (with
    /// `kind = "remote"` and `weight = 0`); it joins and copies the store by itself.
    AddReplica {
        #[command(flatten)]
        new: JoiningServer,
    },
    /// Remove a server without a vote (an added replica or a remote one): the others stop
    /// sending to it and ignore it from then on.
    RemoveReplica {
        /// Its id.
        #[arg(long)]
        id: u32,
    },
    /// List a server's lost-transactions archive, or export it as JSON lines.
    Lost {
        /// The server whose archive to list.
        #[arg(long)]
        server: u32,
        /// Write every archived transaction as one JSON line (tid, objects, hex data) here.
        #[arg(long)]
        export: Option<PathBuf>,
    },
    /// Run a write workload and print what it saw.
    Workload {
        /// How long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: u64,
        /// Events to report the write pause of, as NAME@SECONDS after the start (comma
        /// separated): the longest gap between commits that starts within 0.5 s before and
        /// 3 s after each.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// Closed-loop write benchmark: each client keeps one commit of a new key in flight;
    /// prints commits/s (and MB/s of values) and latency percentiles over the measured window.
    Bench {
        /// Measured seconds (after a 2 s warm-up).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: u64,
        /// Bytes of each value (pseudo-random, so that nothing compresses them away).
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Processes (the servers of a local cluster) whose CPU time over the measured window
        /// is added to the load generator's own, to print CPU microseconds per commit: a
        /// figure that holds still on a noisy machine where throughput does not.
        #[arg(long, value_delimiter = ',')]
        cpu_pids: Vec<u32>,
    },
    /// Read throughput: `--objects` objects of 1 KiB written first, then clients loading them
    /// from `--spread` servers (the primary first, then the others by id), each client held
    /// to one server so that every load reaches it.
    BenchReads {
        /// Measured seconds (after a 2 s warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients, spread over the servers.
        #[arg(long, default_value_t = 16)]
        clients: u64,
        /// How many servers serve the loads.
        #[arg(long, default_value_t = 1)]
        spread: usize,
        /// Objects to read.
        #[arg(long, default_value_t = 10_000)]
        objects: u64,
        /// The objects are already there (an earlier `--write-only` run with the same
        /// `--objects`): read without writing them, e.g. from disk after the servers
        /// restarted with the page cache dropped.
        #[arg(long, conflicts_with = "write_only")]
        written: bool,
        /// Only write the objects and wait until the servers applied them.
        #[arg(long)]
        write_only: bool,
        /// Processes whose CPU time is counted with the load generator's (see `bench`).
        #[arg(long, value_delimiter = ',')]
        cpu_pids: Vec<u32>,
    },
    /// Make a cluster key (servers) and a client token (clients) in DIR.
    Keygen {
        /// Where to write cluster.key and client.token.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Rotate: add a new key to DIR/cluster.key (keeping the newest one already there,
        /// dropping older ones) and leave client.token alone. Copy the file to every server
        /// and send each SIGHUP: they move to the new key together and drop the old one,
        /// without a view change.
        #[arg(long)]
        rotate: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("standby: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("standby: {e}");
            ExitCode::FAILURE
        }
    }
}

fn key_oid(key: &str) -> Result<Oid, String> {
    Oid::new(Bytes::from(key.as_bytes().to_vec())).map_err(|e| e.to_string())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no random source: {e}"))?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn printable(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => format!("0x{}", hex(b)),
    }
}

async fn connect(cli: &Cli, id: u64) -> Result<Client, String> {
    let (addrs, token, tls) = match &cli.config {
        Some(p) => {
            let c = StandbyConfig::from_file(p).map_err(|e| e.to_string())?;
            let tls = c.client_tls()?;
            let token = match &c.client_token_file {
                Some(t) => std::fs::read_to_string(c.resolve(t)).map_err(|e| e.to_string())?,
                None => String::new(),
            };
            (
                c.servers
                    .iter()
                    .map(|s| s.client.clone())
                    .collect::<Vec<_>>(),
                token,
                tls,
            )
        }
        None => {
            let token = match &cli.token_file {
                Some(t) => std::fs::read_to_string(t).map_err(|e| e.to_string())?,
                None => String::new(),
            };
            (cli.servers.clone(), token, None)
        }
    };
    if addrs.is_empty() {
        return Err("give --config FILE or --servers ADDR,...".into());
    }
    Client::connect_with(&addrs, Bytes::from(token.trim().to_string()), id, tls)
        .await
        .map_err(|e| e.to_string())
}

/// A client id for this invocation: random, so that two runs never share idempotency keys.
fn fresh_id() -> Result<u64, String> {
    Ok(u64::from_le_bytes(random_bytes::<8>()?))
}

async fn run(cli: Cli) -> Result<(), String> {
    match &cli.cmd {
        Cmd::Keygen { dir, rotate: true } => {
            let path = dir.join("cluster.key");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let keys = gcs::crypto::parse_key_file(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (last_id, last) = keys.last().cloned().ok_or("no key in the file")?;
            let id = last_id
                .checked_add(1)
                .ok_or("key id 255 reached: start a new series (a cluster restart)")?;
            let new = gcs::ClusterKey::from_bytes(random_bytes::<32>()?);
            // Written beside it, then renamed over it: a server reading it at that moment
            // sees the old file or the new one, never half of one.
            let tmp = dir.join("cluster.key.new");
            let _ = std::fs::remove_file(&tmp);
            write_secret(
                &tmp,
                &gcs::crypto::write_key_file(&[(last_id, last), (id, new)]),
            )?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "{}: key {id} added after key {last_id}; copy it to every server and send each SIGHUP",
                path.display()
            );
            Ok(())
        }
        Cmd::Keygen { dir, rotate: false } => {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let key = gcs::crypto::keygen(random_bytes::<32>()?);
            write_secret(&dir.join("cluster.key"), &key)?;
            write_secret(
                &dir.join("client.token"),
                &format!("{}\n", hex(&random_bytes::<24>()?)),
            )?;
            println!(
                "wrote {0}/cluster.key and {0}/client.token (mode 0600)",
                dir.display()
            );
            Ok(())
        }
        Cmd::Status => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let all = c.status_all().await;
            println!(
                "{:<4} {:<10} {:>7} {:>12} {:>8} {:<10} view",
                "id", "role", "epoch", "last tid", "lag", "primary"
            );
            for s in all {
                match s {
                    Ok(s) => println!(
                        "{:<4} {:<10} {:>7} {:>12} {:>8} {:<10} {:?}",
                        s.id,
                        format!("{:?}", s.role),
                        s.primary.map(|p| p.1 .0.to_string()).unwrap_or("-".into()),
                        s.last_tid.0,
                        s.primary_last_known.0.saturating_sub(s.last_tid.0),
                        s.primary
                            .map(|p| format!("s{}", p.0))
                            .unwrap_or("none".into()),
                        s.servers
                            .iter()
                            .filter(|i| i.in_view)
                            .map(|i| i.id)
                            .collect::<Vec<_>>()
                    ),
                    Err(e) => println!("{e}"),
                }
            }
            Ok(())
        }
        Cmd::Get {
            key,
            replica_lag,
            max_staleness_ms,
            server,
        } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let max_staleness = max_staleness_ms.map(Duration::from_millis);
            let from = match (server, replica_lag, max_staleness) {
                (Some(id), _, _) => ReadFrom::Server {
                    id: *id,
                    max_lag: *replica_lag,
                    max_staleness,
                },
                (None, None, None) => ReadFrom::Primary,
                (None, lag, _) => ReadFrom::Replica {
                    max_lag: lag.unwrap_or(u64::MAX),
                    max_staleness,
                },
            };
            let (rev, st) = c
                .load_reporting(key_oid(key)?, from)
                .await
                .map_err(|e| e.to_string())?;
            let behind = match st.behind_for {
                Some(d) if d.is_zero() => "current".to_string(),
                Some(d) => format!("may have missed commits for {:.3} s", d.as_secs_f64()),
                None => "not current since it started".to_string(),
            };
            let how = format!(
                "server {} ({:?}) at tid {}, {} transactions behind, {behind}",
                st.server, st.role, st.last_tid.0, st.lag
            );
            match rev.and_then(|r| r.data.map(|d| (r.tid, d))) {
                Some((tid, d)) => println!("{}\t(tid {}; {how})", printable(&d), tid.0),
                None => return Err(format!("{key}: not found ({how})")),
            }
            Ok(())
        }
        Cmd::Put { key, value } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let mut t = c.begin();
            t.store(key_oid(key)?, Some(Bytes::from(value.clone())), None);
            let done = c
                .commit(t, Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            println!("committed as tid {} (epoch {})", done.tid.0, done.epoch.0);
            Ok(())
        }
        Cmd::Log { from, to, max } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let (txns, more) = c
                .iterate(Tid(*from), Tid(*to), *max)
                .await
                .map_err(|e| e.to_string())?;
            print_txns(&txns);
            if more {
                println!(
                    "... more after {}",
                    txns.last().map(|t| t.tid.0).unwrap_or(0)
                );
            }
            Ok(())
        }
        Cmd::Switchover { to } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            c.switchover(*to).await.map_err(|e| e.to_string())?;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Ok(st) = c.refresh().await {
                    if st.primary.map(|p| p.0) == Some(*to) {
                        println!(
                            "s{to} is primary (epoch {})",
                            st.primary.map(|p| p.1 .0).unwrap_or(0)
                        );
                        return Ok(());
                    }
                }
            }
            Err(format!("s{to} did not become primary within 5 s"))
        }
        Cmd::AddReplica { new } => {
            let added = new.added()?;
            let (id, name, gcs_addr, client, admin) =
                (added.id, &new.name, added.gcs, &new.client, &new.admin);
            let mut c = connect(&cli, fresh_id()?).await?;
            let done = c
                .change_membership(
                    server::membership::MembershipChange::Add(added),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "replica s{id} ({name}) added at tid {}; its entry for the configuration file:",
                done.tid.0
            );
            println!(
                "[[server]]\nid = {id}\nname = \"{name}\"\ngcs = \"{gcs_addr}\"\nclient = \"{client}\"\nadmin = \"{admin}\"\ngroup = \"added\"\nkind = \"remote\"\nweight = 0"
            );
            Ok(())
        }
        Cmd::AddServer { new, timeout } => {
            add_voter(&cli, new, None, Duration::from_secs(*timeout)).await
        }
        Cmd::ReplaceServer { old, new, timeout } => {
            add_voter(&cli, new, Some(*old), Duration::from_secs(*timeout)).await
        }
        Cmd::RemoveServer { id, timeout } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let done = c
                .change_voters(vec![], vec![*id], Duration::from_secs(*timeout))
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "s{id} no longer votes (voters written at tid {})",
                done.tid.0
            );
            let done = c
                .change_membership(
                    server::membership::MembershipChange::Remove(*id),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|e| e.to_string())?;
            println!("server s{id} removed at tid {}", done.tid.0);
            Ok(())
        }
        Cmd::RemoveReplica { id } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let done = c
                .change_membership(
                    server::membership::MembershipChange::Remove(*id),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| e.to_string())?;
            println!("server s{id} removed at tid {}", done.tid.0);
            Ok(())
        }
        Cmd::Lost { server, export } => {
            let mut c = connect(&cli, fresh_id()?).await?;
            let txns = c
                .lost_archive(*server, 10_000)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(path) = export {
                let mut out = String::new();
                for t in &txns {
                    let recs: Vec<serde_json::Value> = t
                        .records
                        .iter()
                        .map(|r| serde_json::json!({"oid": hex(r.oid.as_bytes()), "data": r.data.as_ref().map(|d| hex(d))}))
                        .collect();
                    out.push_str(&serde_json::json!({"tid": t.tid.0, "records": recs}).to_string());
                    out.push('\n');
                }
                std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
                println!(
                    "exported {} lost transactions to {}",
                    txns.len(),
                    path.display()
                );
            } else {
                print_txns(&txns);
                println!("{} lost transactions on s{server}", txns.len());
            }
            Ok(())
        }
        Cmd::Workload {
            seconds,
            clients,
            events,
        } => workload(&cli, *seconds, *clients, events).await,
        Cmd::Bench {
            seconds,
            clients,
            value_bytes,
            cpu_pids,
        } => bench(&cli, *seconds, *clients, *value_bytes, cpu_pids).await,
        Cmd::BenchReads {
            seconds,
            clients,
            spread,
            objects,
            written,
            write_only,
            cpu_pids,
        } => {
            let phase = match (*written, *write_only) {
                (true, _) => ReadPhase::ReadOnly,
                (_, true) => ReadPhase::WriteOnly,
                _ => ReadPhase::Both,
            };
            bench_reads(&cli, *seconds, *clients, *spread, *objects, phase, cpu_pids).await
        }
        Cmd::Catchup { timeout } => catchup(&cli, *timeout).await,
    }
}

/// `add-server` and `replace-server`: the new server joins as a replica, then gets a vote
/// (taking `old`'s in the same change), then `old` leaves the cluster.
async fn add_voter(
    cli: &Cli,
    new: &NewServer,
    old: Option<u32>,
    timeout: Duration,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let added = new.server.added()?;
    let (id, gcs_addr) = (added.id, added.gcs);
    let mut c = connect(cli, fresh_id()?).await?;
    // Refused before anything changes: the primary cannot give its vote away (the primary
    // would refuse the voter change only after the new server had joined the membership).
    if let Some(old) = old {
        let st = c.refresh().await.map_err(|e| e.to_string())?;
        if st.primary.is_some_and(|(p, _)| p == old) {
            return Err(format!(
                "s{old} is the primary: swap to another voter first (`standby switchover --to ID`)"
            ));
        }
    }
    let done = c
        .change_membership(
            server::membership::MembershipChange::Add(added),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "s{id} ({}) is a member (tid {}); start it with the cluster's servers and this entry:",
        new.server.name, done.tid.0
    );
    println!(
        "[[server]]\nid = {id}\nname = \"{}\"\ngcs = \"{gcs_addr}\"\nclient = \"{}\"\nadmin = \"{}\"\ngroup = \"added\"\nkind = \"remote\"\nweight = 0",
        new.server.name, new.server.client, new.server.admin
    );
    println!("waiting for s{id} to join and catch up...");
    let remove: Vec<u32> = old.into_iter().collect();
    let done = loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!(
                "s{id} did not join and catch up within {timeout:?}"
            ));
        }
        match c
            .change_voters(vec![(id, new.weight)], remove.clone(), left)
            .await
        {
            Ok(d) => break d,
            // Not started yet, or not yet in the ring: ask again.
            Err(server::netclient::ClientError::Commit(replica::CommitError::Invalid(why)))
                if why.contains("not in the primary's view") =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    println!("s{id} votes (voters written at tid {})", done.tid.0);
    if let Some(old) = old {
        let done = c
            .change_membership(
                server::membership::MembershipChange::Remove(old),
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| e.to_string())?;
        println!("server s{old} removed at tid {}", done.tid.0);
    }
    Ok(())
}

/// A table of transactions: tid, record count, the first objects.
fn print_txns(txns: &[storage::Transaction]) {
    println!("{:>12}  {:>7}  objects", "tid", "records");
    for t in txns {
        let names: Vec<String> = t
            .records
            .iter()
            .take(4)
            .map(|r| printable(r.oid.as_bytes()))
            .collect();
        println!(
            "{:>12}  {:>7}  {}",
            t.tid.0,
            t.records.len(),
            names.join(", ")
        );
    }
}

fn write_secret(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

async fn workload(cli: &Cli, seconds: u64, clients: u64, events: &[String]) -> Result<(), String> {
    let mut marks = Vec::new();
    for e in events {
        let (name, at) = e
            .split_once('@')
            .ok_or_else(|| format!("--events: {e:?} is not NAME@SECONDS"))?;
        let at: f64 = at
            .parse()
            .map_err(|_| format!("--events: {e:?} is not NAME@SECONDS"))?;
        marks.push((name.to_string(), Duration::from_secs_f64(at)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Acknowledged commit times since the start, and failures.
    let log = Arc::new(Mutex::new((Vec::<Duration>::new(), Vec::<String>::new())));
    let t0 = tokio::time::Instant::now();
    let base = fresh_id()?;
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut c = connect(cli, base.wrapping_add(k)).await?;
        let (stop, log) = (stop.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            // The last acknowledged write of each key: checked against the store at the end.
            let mut acked: std::collections::BTreeMap<String, u64> = Default::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{base:x}-{k}-{}", n % 100);
                let mut t = c.begin();
                t.store(
                    Oid::new(Bytes::from(key.clone().into_bytes())).expect("short key"),
                    Some(Bytes::from(n.to_be_bytes().to_vec())),
                    None,
                );
                let r = c.commit(t, Duration::from_secs(30)).await;
                let mut l = log.lock().expect("log");
                match r {
                    Ok(_) => {
                        l.0.push(t0.elapsed());
                        acked.insert(key, n);
                    }
                    Err(e) => l.1.push(e.to_string()),
                }
            }
            (c, acked)
        }));
    }
    let mut last_report = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let l = log.lock().expect("log");
        println!(
            "  {:>3} s: {:>7} commits in the last second, {} failed so far",
            t0.elapsed().as_secs(),
            l.0.len() - last_report,
            l.1.len()
        );
        last_report = l.0.len();
    }
    stop.store(true, Ordering::Relaxed);
    let mut retries = 0;
    let mut lost = 0u64;
    let mut checked = 0u64;
    for t in tasks {
        let Ok((mut c, acked)) = t.await else {
            continue;
        };
        retries += c.retries;
        // Every acknowledged write must be there (or a later write of the same key).
        for (key, n) in acked {
            checked += 1;
            let oid = Oid::new(Bytes::from(key.into_bytes())).expect("short key");
            let stored = match c.load(oid, ReadFrom::Primary).await {
                Ok((Some(rev), _)) => rev
                    .data
                    .and_then(|d| d.as_ref().try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0),
                _ => 0,
            };
            if stored < n {
                lost += 1;
            }
        }
    }
    let mut l = log.lock().expect("log");
    l.0.sort();
    let pauses: Vec<(Duration, Duration)> =
        l.0.windows(2)
            .filter(|w| w[1] - w[0] > Duration::from_millis(20))
            .map(|w| (w[0], w[1] - w[0]))
            .collect();
    for (at, gap) in &pauses {
        println!(
            "  writes paused at {:.2} s for {:.1} ms",
            at.as_secs_f64(),
            gap.as_secs_f64() * 1e3
        );
    }
    for (name, t) in &marks {
        let lo = t.saturating_sub(Duration::from_millis(500));
        let hi = *t + Duration::from_secs(3);
        let worst =
            l.0.windows(2)
                .filter(|w| w[0] >= lo && w[0] <= hi)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
        println!(
            "{name}: longest write pause {:.1} ms",
            worst.as_secs_f64() * 1e3
        );
    }
    println!(
        "workload: {} commits acknowledged in {:.1} s ({:.0}/s) by {clients} clients; {} retries or redirects absorbed; {} failed; lost commits: {lost} (of {checked} keys checked)",
        l.0.len(),
        t0.elapsed().as_secs_f64(),
        l.0.len() as f64 / t0.elapsed().as_secs_f64(),
        retries,
        l.1.len(),
    );
    for f in l.1.iter().take(5) {
        println!("  failed: {f}");
    }
    if l.1.is_empty() && lost == 0 {
        Ok(())
    } else {
        Err("the workload saw failures or lost commits".into())
    }
}

/// CPU time of every thread of process `pid` so far, from `/proc/PID/task/*/schedstat`
/// (nanoseconds on a CPU; threads that ended are not counted, the load generator's and the
/// servers' threads live as long as the run).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut sum = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        sum += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// CPU time of the listed processes and of this one: (theirs, ours), nanoseconds.
fn cpu_sample(pids: &[u32]) -> Option<(u64, u64)> {
    let theirs = pids.iter().map(|p| cpu_ns(*p)).sum::<Option<u64>>()?;
    Some((theirs, cpu_ns(std::process::id())?))
}

/// CPU time of `pids` and of this process over `[start, start + window]` (see [`cpu_sample`]):
/// (theirs, ours) in nanoseconds, `None` if a process is gone.
fn cpu_over_window(
    start: tokio::time::Instant,
    window: Duration,
    pids: Vec<u32>,
) -> tokio::task::JoinHandle<Option<(u64, u64)>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(start).await;
        let a = cpu_sample(&pids);
        tokio::time::sleep_until(start + window).await;
        let b = cpu_sample(&pids);
        a.zip(b)
            .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)))
    })
}

/// The benchmark clients' latencies (microseconds), sorted, and their failures summed.
async fn gather_latencies(
    tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, u64)>>,
) -> Result<(Vec<u32>, u64), String> {
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        failed += f;
    }
    lat.sort_unstable();
    Ok((lat, failed))
}

/// Percentile `p` of sorted latencies in microseconds, in milliseconds (0 when empty).
fn percentile_ms(lat: &[u32], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i] as f64 / 1e3
}

async fn bench(
    cli: &Cli,
    seconds: u64,
    clients: u64,
    value_bytes: usize,
    cpu_pids: &[u32],
) -> Result<(), String> {
    let warmup = Duration::from_secs(2);
    let window = Duration::from_secs(seconds);
    let base = fresh_id()?;
    let t0 = tokio::time::Instant::now();
    // CPU over exactly the measured window.
    let pids = cpu_pids.to_vec();
    let cpu = cpu_over_window(t0 + warmup, window, pids);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut c = connect(cli, base.wrapping_add(k)).await?;
        let value = noise(value_bytes, base.wrapping_add(k));
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut failed = 0u64;
            let mut n = 0u64;
            loop {
                let start = tokio::time::Instant::now();
                if start.duration_since(t0) >= warmup + window {
                    break;
                }
                n += 1;
                let mut t = c.begin();
                let key = format!("b/{base:x}/{k}/{n}");
                t.store(
                    Oid::new(Bytes::from(key.into_bytes())).expect("short key"),
                    Some(value.clone()),
                    None,
                );
                let r = c.commit(t, Duration::from_secs(30)).await;
                if start.duration_since(t0) >= warmup {
                    match r {
                        Ok(_) => lat.push(start.elapsed().as_micros() as u32),
                        Err(_) => failed += 1,
                    }
                }
            }
            (lat, failed)
        }));
    }
    let (lat, failed) = gather_latencies(tasks).await?;
    let pct = |p: f64| percentile_ms(&lat, p);
    let rate = lat.len() as f64 / window.as_secs_f64();
    let size = if value_bytes == 100 {
        String::new()
    } else {
        format!(
            ", values of {value_bytes} bytes: {:.1} MB/s",
            rate * value_bytes as f64 / 1e6
        )
    };
    println!(
        "bench: {clients} clients, {rate:.0} commits/s over {seconds} s{size}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, failed {failed}",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        lat.last().copied().unwrap_or(0) as f64 / 1e3
    );
    let cpu = cpu.await.map_err(|e| e.to_string())?;
    match cpu {
        Some((servers, ours)) if !lat.is_empty() => {
            let per = |ns: u64| ns as f64 / 1e3 / lat.len() as f64;
            println!(
                "bench: {clients} clients, cpu {:.1} us per commit ({:.1} in {} processes, {:.1} in the load generator; {:.2} CPUs busy)",
                per(servers + ours),
                per(servers),
                cpu_pids.len(),
                per(ours),
                (servers + ours) as f64 / 1e9 / window.as_secs_f64(),
            );
        }
        _ if !cpu_pids.is_empty() => println!("bench: cpu not measured (a process is gone)"),
        _ => {}
    }
    Ok(())
}

/// `len` pseudo-random bytes (xorshift from `seed`): values that no store compresses.
fn noise(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// What `bench-reads` does: write the objects, read them, or both.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadPhase {
    Both,
    WriteOnly,
    ReadOnly,
}

/// `bench-reads`: loads of objects spread over `servers` servers (the primary first, then the
/// others by id), each client held to one of them (`ReadFrom::Server`, so the client library's
/// cache is not used: every load reaches a server). The objects are written first (unless
/// `phase` says they are there already).
async fn bench_reads(
    cli: &Cli,
    seconds: u64,
    clients: u64,
    servers: usize,
    objects: u64,
    phase: ReadPhase,
    cpu_pids: &[u32],
) -> Result<(), String> {
    let base = fresh_id()?;
    let mut c = connect(cli, base).await?;
    let st = c.refresh().await.map_err(|e| e.to_string())?;
    let Some((primary, _)) = st.primary else {
        return Err("no primary".into());
    };
    let mut order: Vec<u32> = vec![primary];
    order.extend(st.servers.iter().map(|s| s.id).filter(|i| *i != primary));
    if servers == 0 || servers > order.len() {
        return Err(format!("--spread must be 1..={}", order.len()));
    }
    order.truncate(servers);
    // The objects: 1 KiB each, 100 to a commit; then every target must have applied them.
    let key = |n: u64| Oid::new(Bytes::from(format!("r/{n:08}").into_bytes())).expect("short key");
    let mut last = storage::Tid::ZERO;
    let to_write = if phase == ReadPhase::ReadOnly {
        0
    } else {
        objects
    };
    for chunk in (0..to_write).collect::<Vec<_>>().chunks(100) {
        let mut t = c.begin();
        for n in chunk {
            // Incompressible, as pickles nearly are: a repeated byte compressed 2 GB of
            // objects into 128 MB of table files, and no load read the disk.
            t.store(key(*n), Some(noise(1024, (*n << 1) | 1)), None);
        }
        last = c
            .commit(t, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?
            .tid;
    }
    let started = tokio::time::Instant::now();
    'wait: loop {
        let all = c.status_all().await;
        if order.iter().all(|id| {
            all.iter()
                .any(|s| s.as_ref().is_ok_and(|s| s.id == *id && s.last_tid >= last))
        }) {
            break 'wait;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the servers did not apply the objects within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if phase == ReadPhase::WriteOnly {
        println!(
            "bench-reads: {objects} objects of 1 KiB written and applied on {servers} servers"
        );
        return Ok(());
    }
    let warmup = Duration::from_secs(2);
    let window = Duration::from_secs(seconds);
    let t0 = tokio::time::Instant::now();
    let pids = cpu_pids.to_vec();
    let cpu = cpu_over_window(t0 + warmup, window, pids);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut c = connect(cli, base.wrapping_add(1 + k)).await?;
        let target = order[k as usize % order.len()];
        tasks.push(tokio::spawn(async move {
            let from = ReadFrom::Server {
                id: target,
                max_lag: None,
                max_staleness: None,
            };
            // A fixed stride through the objects (no random source needed, no two clients
            // in step).
            let mut n = k.wrapping_mul(7919) % objects.max(1);
            let mut lat: Vec<u32> = Vec::new();
            let mut failed = 0u64;
            loop {
                let start = tokio::time::Instant::now();
                if start.duration_since(t0) >= warmup + window {
                    break;
                }
                n = (n + 104_729) % objects.max(1);
                let r = c.load(key(n), from).await;
                if start.duration_since(t0) >= warmup {
                    match r {
                        Ok((Some(_), _)) => lat.push(start.elapsed().as_micros() as u32),
                        _ => failed += 1,
                    }
                }
            }
            (lat, failed)
        }));
    }
    let (lat, failed) = gather_latencies(tasks).await?;
    let pct = |p: f64| percentile_ms(&lat, p);
    let names: Vec<String> = order.iter().map(|i| format!("s{i}")).collect();
    println!(
        "bench-reads: {clients} clients on {} ({}), {objects} objects of 1 KiB, {:.0} loads/s over {seconds} s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, failed {failed}",
        servers,
        names.join(" "),
        lat.len() as f64 / window.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1e3
    );
    if let Some((theirs, ours)) = cpu.await.map_err(|e| e.to_string())? {
        if !lat.is_empty() {
            let per = |ns: u64| ns as f64 / 1e3 / lat.len() as f64;
            println!(
                "bench-reads: cpu {:.1} us per load ({:.1} in {} processes, {:.1} in the load generator)",
                per(theirs + ours),
                per(theirs),
                cpu_pids.len(),
                per(ours)
            );
        }
    }
    Ok(())
}

async fn catchup(cli: &Cli, timeout: u64) -> Result<(), String> {
    let mut c = connect(cli, fresh_id()?).await?;
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>4} [{bar:40}] {pos}/{len} transactions caught up ({per_sec}, eta {eta}) {msg}",
    )
    .map_err(|e| e.to_string())?
    .progress_chars("=> ");
    let mut shown: std::collections::BTreeMap<u32, (indicatif::ProgressBar, u64)> =
        Default::default();
    let started = tokio::time::Instant::now();
    loop {
        let all = c.status_all().await;
        let newest = all
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .map(|s| s.primary_last_known.0.max(s.last_tid.0))
            .max()
            .unwrap_or(0);
        // A server that does not answer yet (starting, cut off) is not caught up.
        let mut behind = all.iter().filter(|s| s.is_err()).count();
        for s in all.iter().filter_map(|s| s.as_ref().ok()) {
            let lag = newest.saturating_sub(s.last_tid.0);
            if lag > 0 {
                behind += 1;
            }
            let entry = shown.entry(s.id).or_insert_with(|| {
                let b = bars.add(indicatif::ProgressBar::new(lag.max(1)));
                b.set_style(style.clone());
                b.set_prefix(format!("s{}", s.id));
                (b, lag)
            });
            let (bar, first_lag) = entry;
            if lag > *first_lag {
                *first_lag = lag;
                bar.set_length(lag.max(1));
            }
            bar.set_position(first_lag.saturating_sub(lag));
            bar.set_message(format!("{:?}, last tid {}", s.role, s.last_tid.0));
        }
        if behind == 0 && !all.is_empty() {
            for (b, _) in shown.values() {
                b.finish();
            }
            println!("every server is at tid {newest}");
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(timeout) {
            return Err(format!("{behind} server(s) still behind after {timeout} s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap's own checks of the command line, and the benchmark commands parsed as the
    /// scripts give them (a subcommand flag named like a global one, as `bench-reads
    /// --servers` once was, passes the checks and panics only when parsed).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::Parser;
        super::Cli::command().debug_assert();
        for args in [
            &[
                "standby",
                "bench-reads",
                "--spread",
                "2",
                "--cpu-pids",
                "1,2",
            ][..],
            &["standby", "bench-reads", "--objects", "9", "--write-only"],
            &["standby", "bench-reads", "--objects", "9", "--written"],
            &["standby", "bench", "--clients", "4", "--cpu-pids", "1,2,3"],
            &[
                "standby",
                "bench",
                "--clients",
                "1",
                "--value-bytes",
                "16777216",
            ],
        ] {
            assert!(super::Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        let both = ["standby", "bench-reads", "--written", "--write-only"];
        assert!(
            super::Cli::try_parse_from(both).is_err(),
            "one phase or both"
        );
    }
}
