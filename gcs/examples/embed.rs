//! A small host server embedding a gcs daemon: a replicated key-value map. The server opens a
//! session on its embedded daemon, joins the group `kv`, and turns every `set` into an AGREED
//! multicast; every server applies the same writes in the same order, and group views show which
//! servers are present (a partition shows up as a transitional then a regular view).
//!
//! ```text
//! gcs-keygen cluster.key
//! cargo run -p gcs --features net --example embed -- cluster.toml 0 cluster.key
//! set color blue        # typed on stdin; applied everywhere in one order
//! get color
//! ```

use bytes::Bytes;
use gcs::groups::SessionEvent;
use gcs::net::{ClusterConfig, DaemonOptions, GroupDaemon, Security};
use gcs::{ClusterKey, Service};
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(id), Some(key_file)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: embed <cluster.toml> <daemon-id> <key-file>");
        std::process::exit(2);
    };
    let cluster = ClusterConfig::from_file(path.as_ref())?;
    let key = ClusterKey::from_key_file(&std::fs::read_to_string(key_file)?)?;
    let security = Security::Key { id: 1, key };
    let daemon = GroupDaemon::start(DaemonOptions::new(cluster, id.parse()?, security)).await?;
    let mut session = daemon.connect(&format!("kv{id}")).await?;
    session.join("kv").await?;
    println!("started as {:?}", session.member());
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            ev = session.next_event() => match ev {
                Some(SessionEvent::Membership(v)) => println!(
                    "view {:?} {:?}: {} servers ({:?})",
                    v.kind, v.reason, v.members.len(), v.members.iter().map(|m| m.private_group()).collect::<Vec<_>>()
                ),
                Some(SessionEvent::Message { sender, payload, .. }) => {
                    let text = String::from_utf8_lossy(&payload);
                    if let Some((k, v)) = text.split_once(' ') {
                        map.insert(k.to_string(), v.to_string());
                        println!("applied {k}={v} (from {})", sender.private_group());
                    }
                }
                Some(_) => {}
                None => break,
            },
            line = lines.next_line() => match line? {
                Some(l) if l.starts_with("set ") => {
                    session.multicast(&["kv"], Service::Agreed, Bytes::from(l[4..].to_string())).await?;
                }
                Some(l) if l.starts_with("get ") => {
                    println!("{} = {:?}", &l[4..], map.get(&l[4..]));
                }
                Some(_) => println!("commands: set <key> <value> | get <key>"),
                None => break,
            },
        }
    }
    session.disconnect().await;
    daemon.shutdown().await?;
    Ok(())
}
