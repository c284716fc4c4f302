//! Voting members changed while running, with real processes and the operator's commands:
//! three `standby-server` processes under a write load; one is killed and replaced by a new
//! server on a new address (`standby replace-server`), the cluster grows to five voters
//! (`standby add-server`, twice) and shrinks back to three (`standby remove-server`, twice).
//! No request fails, every acknowledged write is there at the end, each epoch's commits were
//! acknowledged by one server, and the members converge. Every process is stopped by PID.
#![cfg(feature = "cli")]

mod common;

use common::{check_load, free_tcp, free_udp, primary_of, Cluster, Load};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server joining: its id and addresses, and its configuration entry.
struct Joining {
    id: u32,
    gcs: String,
    client: String,
    admin: String,
}

impl Joining {
    fn new(id: u32) -> Joining {
        Joining {
            id,
            gcs: format!("127.0.0.1:{}", free_udp()),
            client: format!("127.0.0.1:{}", free_tcp()),
            admin: format!("127.0.0.1:{}", free_tcp()),
        }
    }

    fn entry(&self) -> String {
        format!(
            "[[server]]\nid = {}\nname = \"s{}\"\ngcs = \"{}\"\nclient = \"{}\"\nadmin = \"{}\"\ngroup = \"added\"\nkind = \"remote\"\nweight = 0\n",
            self.id, self.id, self.gcs, self.client, self.admin
        )
    }

    fn args(&self) -> Vec<String> {
        [
            "--id",
            &self.id.to_string(),
            "--name",
            &format!("s{}", self.id),
            "--gcs",
            &self.gcs,
            "--client",
            &self.client,
            "--admin",
            &self.admin,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Runs `standby <args>` against the cluster in the background.
fn standby(c: &Cluster, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_standby"))
        .arg("--config")
        .arg(&c.conf)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("standby runs")
}

/// Waits (at most `limit`) for a command; its output. Killed and failed on the limit.
async fn finish(mut child: Child, limit: Duration, c: &Cluster) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "standby failed: {text}\n{}", c.logs());
            return text;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "standby did not finish within {limit:?}: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the joining server with the cluster's file plus the entries of every server added
/// so far (its own included).
fn start_joining(c: &mut Cluster, added: &[&Joining]) {
    let j = added.last().expect("the joining server");
    let mut conf = std::fs::read_to_string(&c.conf).unwrap();
    let at = conf.find("[protocol]").unwrap();
    let entries: String = added.iter().map(|a| a.entry()).collect();
    conf.insert_str(at, &entries);
    let path = c.dir.path().join(format!("standby-s{}.toml", j.id));
    std::fs::write(&path, conf).unwrap();
    while c.children.len() <= j.id as usize {
        c.children.push(None);
    }
    c.conf_of.insert(j.id, path);
    c.start(j.id);
}

/// The voters as server `i` reports them on `/status` (`{s0,s1,s3}`), once it answers.
async fn voters_at(admin: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = format!(
            "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            common::TOKEN
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let body = text.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        Some(v["voters"]["summary"].as_str()?.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

/// Waits until every admin address in `admins` reports `want` as its voters.
async fn voters_become(admins: &[String], want: &str, c: &Cluster) {
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.clear();
        for a in admins {
            seen.push(voters_at(a).await);
        }
        if seen.iter().all(|s| s.as_deref() == Some(want)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("voters are {seen:?}, not {want}:\n{}", c.logs());
}

/// Waits until the servers at `clients` report the same last transaction.
async fn members_converge(clients: &[String], c: &Cluster) {
    let mut last = Vec::new();
    for _ in 0..200 {
        last.clear();
        for a in clients {
            last.push(common::status_at(a).await.map(|s| s.last_tid));
        }
        if last.iter().all(|l| l.is_some() && *l == last[0]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the members do not converge: {last:?}\n{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_killed_voter_then_grow_to_five_and_shrink_to_three_under_load() {
    let mut c = Cluster::new(3);
    let load = Load::start(&c, 4, 8).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. A backup dies for good; s3, on a new address, takes its vote.
    let p = primary_of(&c).await;
    let dead = (p + 1) % 3;
    c.kill9(dead);
    let s3 = Joining::new(3);
    let mut args = vec![
        "replace-server".to_string(),
        "--old".into(),
        dead.to_string(),
    ];
    args.extend(s3.args());
    let cmd = standby(&c, &args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    start_joining(&mut c, &[&s3]);
    let out = finish(cmd, Duration::from_secs(60), &c).await;
    assert!(out.contains("s3 votes"), "{out}");
    assert!(out.contains(&format!("server s{dead} removed")), "{out}");
    let mut voters: Vec<u32> = (0..3).filter(|i| *i != dead).chain([3]).collect();
    let list = |v: &[u32]| {
        let mut v = v.to_vec();
        v.sort();
        format!(
            "{{{}}}",
            v.iter()
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let admins = |c: &Cluster, v: &[u32], extra: &[&Joining]| -> Vec<String> {
        v.iter()
            .map(|i| match extra.iter().find(|j| j.id == *i) {
                Some(j) => j.admin.clone(),
                None => c.admins[*i as usize].clone(),
            })
            .collect()
    };
    voters_become(&admins(&c, &voters, &[&s3]), &list(&voters), &c).await;
    eprintln!("replaced s{dead} by s3: voters {}", list(&voters));

    // 2. Grow to five: s4, then s5.
    let s4 = Joining::new(4);
    let s5 = Joining::new(5);
    for (j, before) in [(&s4, vec![&s3]), (&s5, vec![&s3, &s4])] {
        let mut args = vec!["add-server".to_string()];
        args.extend(j.args());
        let cmd = standby(&c, &args);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut all = before.clone();
        all.push(j);
        start_joining(&mut c, &all);
        let out = finish(cmd, Duration::from_secs(60), &c).await;
        assert!(out.contains(&format!("s{} votes", j.id)), "{out}");
        voters.push(j.id);
    }
    let joined = [&s3, &s4, &s5];
    voters_become(&admins(&c, &voters, &joined), &list(&voters), &c).await;
    eprintln!("grown: voters {}", list(&voters));

    // 3. Shrink to three: two voters that are not the primary lose their vote and leave.
    let p = primary_of(&c).await;
    // (The newest ones, so that the test's clients keep an address of the first three.)
    let going: Vec<u32> = voters
        .iter()
        .rev()
        .copied()
        .filter(|v| *v != p)
        .take(2)
        .collect();
    for g in &going {
        let cmd = standby(
            &c,
            &["remove-server".to_string(), "--id".into(), g.to_string()],
        );
        let out = finish(cmd, Duration::from_secs(60), &c).await;
        assert!(out.contains(&format!("server s{g} removed")), "{out}");
        voters.retain(|v| v != g);
    }
    voters_become(&admins(&c, &voters, &joined), &list(&voters), &c).await;
    eprintln!("shrunk: voters {}", list(&voters));
    for g in &going {
        c.kill9(*g);
    }

    // The three voters left elect on their own: a kill -9 of the primary fails over.
    let p = primary_of(&c).await;
    let killed_at = tokio::time::Instant::now();
    c.kill9(p);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = load
        .first_ack_after(killed_at + Duration::from_millis(1))
        .unwrap_or_else(|| panic!("no commit after the kill:\n{}", c.logs()));
    eprintln!(
        "kill -9 of s{p}: writes again after {:?}",
        resumed - killed_at
    );
    c.start(p);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let s = load.stop().await;
    check_load(&c, &s).await;
    let clients: Vec<String> = voters
        .iter()
        .map(|i| match joined.iter().find(|j| j.id == *i) {
            Some(j) => j.client.clone(),
            None => c.clients[*i as usize].clone(),
        })
        .collect();
    members_converge(&clients, &c).await;
}

/// The case a review found in the bus first: once two of the first voters were replaced, a
/// server that joins on an empty store reports its configuration file's voters (the first
/// three, two of them gone). Only the newest configuration reported may bind the election, or
/// no view elects again. Here: two replaces, then an `add-server`, then a kill -9 of the
/// primary, which the three newer voters fail over from on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_two_first_voters_then_add_a_server_that_starts_from_its_file() {
    let mut c = Cluster::new(3);
    let load = Load::start(&c, 4, 8).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = primary_of(&c).await;
    let (s3, s4, s5) = (Joining::new(3), Joining::new(4), Joining::new(5));
    let mut joined: Vec<&Joining> = Vec::new();
    for (old, j) in [((p + 1) % 3, &s3), ((p + 2) % 3, &s4)] {
        c.kill9(old);
        let mut args = vec![
            "replace-server".to_string(),
            "--old".into(),
            old.to_string(),
        ];
        args.extend(j.args());
        let cmd = standby(&c, &args);
        tokio::time::sleep(Duration::from_millis(300)).await;
        joined.push(j);
        start_joining(&mut c, &joined);
        let out = finish(cmd, Duration::from_secs(60), &c).await;
        assert!(out.contains(&format!("s{} votes", j.id)), "{out}");
        assert!(out.contains(&format!("server s{old} removed")), "{out}");
    }
    let mut voters = vec![format!("s{p}"), "s3".into(), "s4".into()];
    voters.sort();
    let want = format!("{{{}}}", voters.join(","));
    let admins = vec![
        c.admins[p as usize].clone(),
        s3.admin.clone(),
        s4.admin.clone(),
    ];
    voters_become(&admins, &want, &c).await;
    eprintln!("two first voters replaced: voters {want}");

    // s5 starts from a file whose voters are the first three: the cluster still elects.
    let mut args = vec!["add-server".to_string()];
    args.extend(s5.args());
    let cmd = standby(&c, &args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    joined.push(&s5);
    start_joining(&mut c, &joined);
    let out = finish(cmd, Duration::from_secs(60), &c).await;
    assert!(out.contains("s5 votes"), "{out}");
    voters.push("s5".into());
    let want = format!("{{{}}}", voters.join(","));
    let mut admins = admins;
    admins.push(s5.admin.clone());
    voters_become(&admins, &want, &c).await;
    eprintln!("added s5: voters {want}");

    // The first primary goes: s3, s4 and s5 (three of four votes) elect among themselves.
    let killed_at = tokio::time::Instant::now();
    c.kill9(p);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resumed = load
        .first_ack_after(killed_at + Duration::from_millis(1))
        .unwrap_or_else(|| panic!("no commit after the kill:\n{}", c.logs()));
    eprintln!(
        "kill -9 of s{p}: writes again after {:?}",
        resumed - killed_at
    );
    c.start(p);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = load.stop().await;
    check_load(&c, &s).await;
    let clients = vec![
        c.clients[p as usize].clone(),
        s3.client.clone(),
        s4.client.clone(),
        s5.client.clone(),
    ];
    members_converge(&clients, &c).await;
}
