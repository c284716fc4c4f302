//! A small host server embedding a gcs daemon: a replicated key-value map where every `set`
//! is an AGREED multicast, so every member applies the same writes in the same order, and views
//! show who is in the group.
//!
//! ```text
//! cargo run -p gcs --features net --example embed -- cluster.toml 0
//! set color blue        # typed on stdin; applied everywhere in one order
//! get color
//! ```

use bytes::Bytes;
use gcs::net::{ClusterConfig, Event, Gcs};
use gcs::Service;
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(id)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: embed <cluster.toml> <daemon-id>");
        std::process::exit(2);
    };
    let cluster = ClusterConfig::from_file(path.as_ref())?;
    let (gcs, mut events) = Gcs::start(cluster, id.parse()?, 4096).await?;
    println!("started as {:?}", gcs.id());
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::View(v)) => println!("view {:?} {:?}", v.id, v.members),
                Some(Event::Message(m)) => {
                    let text = String::from_utf8_lossy(&m.payload);
                    if let Some((k, v)) = text.split_once(' ') {
                        map.insert(k.to_string(), v.to_string());
                        println!("applied {k}={v} (from {:?})", m.sender);
                    }
                }
                None => break,
            },
            line = lines.next_line() => match line? {
                Some(l) if l.starts_with("set ") => {
                    gcs.multicast(Service::Agreed, Bytes::from(l[4..].to_string())).await?;
                }
                Some(l) if l.starts_with("get ") => {
                    println!("{} = {:?}", &l[4..], map.get(&l[4..]));
                }
                Some(_) => println!("commands: set <key> <value> | get <key>"),
                None => break,
            },
        }
    }
    gcs.shutdown().await?;
    Ok(())
}
