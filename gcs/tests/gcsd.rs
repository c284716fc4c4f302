//! Real processes: three `gcsd` daemons on 127.0.0.1 with a cluster key from `gcs-keygen`, and
//! `gcs-user` sessions over their Unix sockets and TCP, driven through standard input. Checks the
//! lines they print (views, messages in one order, leaves, disconnects), that a wrong token is
//! refused, and that SIGTERM shuts a daemon down cleanly (sessions told, socket file removed).
//!
//! Every process is killed by its PID when the test ends (`Proc`'s drop); every wait is bounded.

use gcs::ClusterKey;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Waits `d` without sleeping the thread through `thread::sleep` (forbidden by clippy.toml).
fn pause(d: Duration) {
    let (_tx, rx) = mpsc::channel::<()>();
    let _ = rx.recv_timeout(d);
}

struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines of stdout ("O ...") and stderr ("E ...").
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (tag, stream) in [
            ("O", Box::new(out) as Box<dyn std::io::Read + Send>),
            ("E", Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines() {
                    let Ok(l) = l else { break };
                    if tx.send(format!("{tag} {l}")).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line matching `f` (bounded wait).
    fn wait_out(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        self.wait_tagged("O ", what, f)
    }

    fn wait_err(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        self.wait_tagged("E ", what, f)
    }

    fn wait_tagged(&mut self, tag: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        // Each line within WAIT, and a bounded number of lines: no clock needed.
        for _ in 0..100_000 {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Some(body) = l.strip_prefix(tag) {
                        if f(body) {
                            return body.to_string();
                        }
                    }
                }
                Err(e) => panic!(
                    "{}: no line for {what} ({e:?}); saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
        panic!("{}: too many lines without {what}", self.name)
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (bounded) for the process to exit, collecting its output.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut idle = Duration::ZERO;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return s;
            }
            assert!(
                idle < WAIT,
                "{} did not exit; saw:\n{}",
                self.name,
                self.seen.join("\n")
            );
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Timeout) => idle += Duration::from_millis(20),
                Err(RecvTimeoutError::Disconnected) => {
                    pause(Duration::from_millis(20));
                    idle += Duration::from_millis(20);
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // By PID (Child::kill is SIGKILL to this child only).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    socks.iter().map(|s| s.local_addr().unwrap()).collect()
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    // Short: Unix socket paths are limited to ~108 bytes. One per test: they run in parallel.
    let d = std::env::temp_dir().join(format!("gcsd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_cluster(dir: &Path, addrs: &[SocketAddr]) -> PathBuf {
    let mut t = String::new();
    for (i, a) in addrs.iter().enumerate() {
        t += &format!("[[daemon]]\nid = {i}\naddr = \"{a}\"\n");
    }
    t += "[protocol]\ntoken_timeout_ms = 300\ntoken_retransmit_timeout_ms = 30\n\
          token_hold_ms = 5\njoin_timeout_ms = 30\nconsensus_timeout_ms = 300\n\
          merge_detect_interval_ms = 100\npause_grace_ms = 200\n";
    let p = dir.join("cluster.toml");
    std::fs::write(&p, t).unwrap();
    p
}

fn members_of(view_line: &str) -> usize {
    view_line
        .split(' ')
        .find_map(|w| w.strip_prefix("members="))
        .map_or(0, |m| m.split(',').filter(|s| !s.is_empty()).count())
}

fn user(name: &str, conn: &[&str], join: &str) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gcs-user"));
    c.args(conn)
        .args(["--name", name, "--join", join, "--drain-ms", "300"]);
    Proc::spawn(name, &mut c)
}

#[test]
fn three_gcsd_processes_serve_gcs_user_sessions_over_unix_and_tcp() {
    let dir = scratch("s");
    let cluster = write_cluster(&dir, &free_udp(3));
    let key = dir.join("cluster.key");
    let st = Command::new(env!("CARGO_BIN_EXE_gcs-keygen"))
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let bad_token = dir.join("bad-token");
    std::fs::write(&bad_token, "wrong\n").unwrap();
    let tcp = free_tcp();
    let sock = |i: usize| dir.join(format!("{i}.sock"));
    let mut daemons = Vec::new();
    for i in 0..3 {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gcsd"));
        c.arg("--config")
            .arg(&cluster)
            .args(["--id", &i.to_string()])
            .arg("--key")
            .arg(&key)
            .arg("--unix")
            .arg(sock(i));
        if i == 1 {
            c.args(["--tcp", &tcp.to_string()])
                .arg("--token-file")
                .arg(&token);
        }
        let mut p = Proc::spawn(&format!("gcsd{i}"), &mut c);
        p.wait_err("ready", |l| l.contains("gcsd ready"));
        daemons.push(p);
    }
    // The socket is private to this user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sock(0)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let s0 = sock(0).display().to_string();
    let s2 = sock(2).display().to_string();
    let tok = token.display().to_string();
    let tcp_s = tcp.to_string();
    let mut alice = user("alice", &["--unix", &s0], "chat");
    let mut bob = user("bob", &["--tcp", &tcp_s, "--token-file", &tok], "chat");
    let mut carol = user("carol", &["--unix", &s2], "chat");
    for u in [&mut alice, &mut bob, &mut carol] {
        u.wait_out("a view of 3", |l| {
            l.starts_with("VIEW group=chat kind=Regular") && members_of(l) == 3
        });
    }

    // A wrong token is refused with a reason; the process exits non-zero.
    let badtok = bad_token.display().to_string();
    let mut mallory = user(
        "mallory",
        &["--tcp", &tcp_s, "--token-file", &badtok],
        "chat",
    );
    mallory.wait_err("refusal", |l| l.contains("authentication failed"));
    assert!(!mallory.wait_exit().success());

    // Messages from two senders, AGREED and SAFE: every member prints the same lines in the same
    // order.
    for k in 0..5 {
        alice.send(&format!("s chat a{k}"));
        bob.send(&format!("S chat b{k}"));
    }
    let mut orders = Vec::new();
    for u in [&mut alice, &mut bob, &mut carol] {
        let mut got = Vec::new();
        while got.len() < 10 {
            got.push(u.wait_out("messages", |l| l.starts_with("MSG ")));
        }
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    assert!(orders[0].contains(&"MSG from=#alice#0 groups=chat service=Agreed len=2 a0".into()));
    assert!(orders[0].contains(&"MSG from=#bob#1 groups=chat service=Safe len=2 b4".into()));

    // A private group, from a TCP session to a Unix one.
    bob.send("s #carol#2 psst");
    carol.wait_out("private message", |l| {
        l == "MSG from=#bob#1 groups=#carol#2 service=Agreed len=4 psst"
    });

    // Refused calls are reported on stderr and the session goes on.
    alice.send("j bad#name");
    alice.wait_err("error", |l| l.contains("invalid group name"));

    // Carol leaves: she prints LEFT, the others a view with reason Leave.
    carol.send("l chat");
    carol.wait_out("self leave", |l| l == "LEFT group=chat");
    for u in [&mut alice, &mut bob] {
        let v = u.wait_out("carol's leave", |l| l.contains("reason=Leave"));
        assert!(v.ends_with("left=#carol#2"), "{v}");
        assert_eq!(members_of(&v), 2);
    }

    // Alice's standard input ends: she drains, disconnects and exits 0; bob sees why.
    alice.close_stdin();
    assert!(alice.wait_exit().success());
    let v = bob.wait_out("alice's disconnect", |l| l.contains("reason=Disconnect"));
    assert!(v.contains("left=#alice#0"), "{v}");

    // SIGTERM: gcsd 2 tells carol, exits 0 and removes its socket.
    let pid = daemons[2].child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    carol.wait_err("shutdown reason", |l| l.contains("daemon shutting down"));
    assert!(!carol.wait_exit().success());
    assert!(daemons[2].wait_exit().success());
    assert!(!sock(2).exists(), "socket file left behind");

    // The rest of the ring still works for bob.
    bob.send("s chat still-here");
    bob.wait_out("own message", |l| l.ends_with("still-here"));
    bob.send("q");
    assert!(bob.wait_exit().success());

    drop(daemons);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Key rotation on running `gcsd` processes: a second key is added to the key file and every
/// daemon gets SIGHUP; they move to it and drop the old one while two sessions exchange
/// messages, with no view change; a daemon restarted with the old key alone is shut out.
#[test]
fn gcsd_processes_rotate_their_key_on_sighup_without_a_view_change() {
    let dir = scratch("k");
    let cluster = write_cluster(&dir, &free_udp(3));
    let key = dir.join("cluster.key");
    let old = ClusterKey::from_bytes([0x31; 32]);
    std::fs::write(&key, gcs::crypto::write_key_file(&[(1, old.clone())])).unwrap();
    let sock = |i: usize| dir.join(format!("{i}.sock"));
    let start = |i: usize, key: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gcsd"));
        c.arg("--config")
            .arg(&cluster)
            .args(["--id", &i.to_string()])
            .arg("--key")
            .arg(key)
            .arg("--unix")
            .arg(sock(i))
            .env("RUST_LOG", "info");
        let mut p = Proc::spawn(&format!("gcsd{i}"), &mut c);
        p.wait_err("ready", |l| l.contains("gcsd ready"));
        p
    };
    let mut daemons: Vec<Proc> = (0..3).map(|i| start(i, &key)).collect();
    let s0 = sock(0).display().to_string();
    let s1 = sock(1).display().to_string();
    let mut alice = user("alice", &["--unix", &s0], "chat");
    let mut bob = user("bob", &["--unix", &s1], "chat");
    for u in [&mut alice, &mut bob] {
        u.wait_out("a view of 2", |l| {
            l.starts_with("VIEW group=chat kind=Regular") && members_of(l) == 2
        });
    }
    let new = ClusterKey::from_bytes([0x32; 32]);
    std::fs::write(
        &key,
        gcs::crypto::write_key_file(&[(1, old.clone()), (2, new)]),
    )
    .unwrap();
    for d in &daemons {
        let ok = Command::new("kill")
            .args(["-HUP", &d.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    for k in 0..20 {
        alice.send(&format!("s chat a{k}"));
        pause(Duration::from_millis(100));
    }
    for d in daemons.iter_mut() {
        d.wait_err("the switch", |l| {
            l.contains("sealing with the new cluster key")
        });
        d.wait_err("the drop", |l| l.contains("old cluster key dropped"));
    }
    alice.send("s chat after");
    let mut got = Vec::new();
    loop {
        let l = bob.wait_out("messages", |l| {
            l.starts_with("MSG ") || l.starts_with("VIEW")
        });
        assert!(
            !l.starts_with("VIEW"),
            "a view changed during the rotation: {l}"
        );
        got.push(l.clone());
        if l.ends_with(" after") {
            break;
        }
    }
    assert_eq!(got.len(), 21, "{got:?}");

    // gcsd 2 restarted with the old key alone: the other two never take it in.
    let old_file = dir.join("old.key");
    std::fs::write(&old_file, gcs::crypto::write_key_file(&[(1, old)])).unwrap();
    drop(daemons.pop());
    let lone = start(2, &old_file);
    pause(Duration::from_secs(2));
    let s2 = sock(2).display().to_string();
    let mut carol = user("carol", &["--unix", &s2], "chat");
    carol.wait_out("a view of her own", |l| {
        l.starts_with("VIEW group=chat kind=Regular") && members_of(l) == 1
    });
    pause(Duration::from_secs(2));
    alice.send("s chat still");
    let l = bob.wait_out("still, or a view", |l| {
        l.ends_with(" still") || l.starts_with("VIEW")
    });
    assert!(
        l.ends_with(" still"),
        "the old-key daemon was taken in: {l}"
    );
    drop(carol);
    drop(lone);
    drop(daemons);
    let _ = std::fs::remove_dir_all(&dir);
}
