//! `gcs-user`: a scriptable session of a `gcsd`, in the spirit of Spread's `spuser`.
//!
//! ```text
//! gcs-user (--unix PATH | --tcp ADDR --token-file FILE) --name NAME [--join g1,g2] [--drain-ms N]
//! ```
//!
//! Reads commands from standard input, one per line:
//!
//! | command | does |
//! |---|---|
//! | `j GROUP` | join GROUP |
//! | `l GROUP` | leave GROUP |
//! | `s GROUP[,GROUP...] TEXT` | multicast TEXT, AGREED |
//! | `S GROUP[,GROUP...] TEXT` | multicast TEXT, SAFE |
//! | `q` | quit |
//!
//! and prints one line per event on standard output:
//!
//! ```text
//! MSG from=#alice#0 groups=chat service=Agreed len=5 hello
//! VIEW group=chat kind=Regular reason=Join members=#alice#0,#bob#1 joined=#bob#1 left=
//! LEFT group=chat
//! ```
//!
//! (control characters of a message are printed escaped). Errors go to standard error. At the end
//! of standard input it keeps printing for `--drain-ms` (default 500), then disconnects and exits
//! 0; when the daemon closes the session it prints the reason on standard error and exits 1.

use bytes::Bytes;
use gcs::groups::{MemberId, SessionEvent};
use gcs::net::{client, Session};
use gcs::Service;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A scriptable session of a gcsd: commands on standard input, events on standard output.
#[derive(clap::Parser)]
#[command(name = "gcs-user", version)]
struct Args {
    /// The daemon's Unix socket.
    #[arg(long, required_unless_present = "tcp", conflicts_with = "tcp")]
    unix: Option<PathBuf>,
    /// The daemon's TCP address (with --token-file).
    #[arg(long, requires = "token_file")]
    tcp: Option<String>,
    /// The file holding the TCP token (one line).
    #[arg(long, requires = "tcp")]
    token_file: Option<PathBuf>,
    /// This session's name.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    name: String,
    /// Groups to join at once, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "")]
    join: Vec<String>,
    /// How long to keep printing after the end of standard input, in milliseconds.
    #[arg(long = "drain-ms", default_value_t = 500)]
    drain_ms: u64,
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message, as before.
    let mut args = <Args as clap::Parser>::parse();
    args.join.retain(|g| !g.is_empty());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gcs-user: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gcs-user: {e}");
            ExitCode::FAILURE
        }
    };
    // The stdin reader is a blocking thread that may wait forever: do not join it.
    rt.shutdown_background();
    code
}

fn names(ms: &[MemberId]) -> String {
    ms.iter()
        .map(|m| m.private_group())
        .collect::<Vec<_>>()
        .join(",")
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload)
        .chars()
        .flat_map(|c| {
            let s: String = if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            };
            s.chars().collect::<Vec<_>>()
        })
        .collect()
}

fn line(e: &SessionEvent) -> String {
    match e {
        SessionEvent::Message {
            sender,
            groups,
            service,
            payload,
        } => format!(
            "MSG from={} groups={} service={:?} len={} {}",
            sender.private_group(),
            groups.join(","),
            service,
            payload.len(),
            text(payload)
        ),
        SessionEvent::Membership(v) => format!(
            "VIEW group={} kind={:?} reason={:?} members={} joined={} left={}",
            v.group,
            v.kind,
            v.reason,
            names(&v.members),
            names(&v.joined),
            names(&v.left)
        ),
        SessionEvent::SelfLeave { group } => format!("LEFT group={group}"),
    }
}

/// Prints an event; false if standard output is gone.
fn print(e: &SessionEvent) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line(e))
        .and_then(|_| out.flush())
        .is_ok()
}

/// Runs one command; false on `q`.
async fn command(s: &Session, input: &str) -> bool {
    let input = input.trim_end_matches(['\r', '\n']);
    let (cmd, rest) = input.split_once(' ').unwrap_or((input, ""));
    let r = match cmd {
        "" | "#" => return true,
        "q" => return false,
        "j" => s.join(rest.trim()).await,
        "l" => s.leave(rest.trim()).await,
        "s" | "S" => {
            let (groups, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            let groups: Vec<&str> = groups.split(',').filter(|g| !g.is_empty()).collect();
            let service = if cmd == "s" {
                Service::Agreed
            } else {
                Service::Safe
            };
            s.multicast(&groups, service, Bytes::copy_from_slice(msg.as_bytes()))
                .await
        }
        other => {
            eprintln!("error: unknown command {other:?} (j GROUP, l GROUP, s|S GROUPS TEXT, q)");
            return true;
        }
    };
    if let Err(e) = r {
        eprintln!("error: {input}: {e}");
    }
    true
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let mut session = match (&args.unix, &args.tcp, &args.token_file) {
        (Some(path), _, _) => client::connect_unix(path, &args.name).await,
        (None, Some(addr), Some(tf)) => {
            let token =
                std::fs::read_to_string(tf).map_err(|e| format!("{}: {e}", tf.display()))?;
            client::connect_tcp(addr.as_str(), &args.name, token.trim()).await
        }
        _ => unreachable!("checked by parse"),
    }
    .map_err(|e| format!("cannot connect: {e}"))?;
    eprintln!("connected as {}", session.member().private_group());
    for g in &args.join {
        session
            .join(g)
            .await
            .map_err(|e| format!("join {g}: {e}"))?;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            e = session.next_event() => match e {
                Some(e) => {
                    if !print(&e) {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                None => {
                    let why = session.close_reason().unwrap_or_else(|| "session closed".into());
                    eprintln!("closed: {why}");
                    return Ok(ExitCode::FAILURE);
                }
            },
            l = lines.next_line() => match l {
                Ok(Some(l)) => {
                    if !command(&session, &l).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("error: standard input: {e}");
                    break;
                }
            },
        }
    }
    // Drain: what is already on its way still gets printed.
    let _ = tokio::time::timeout(Duration::from_millis(args.drain_ms), async {
        while let Some(e) = session.next_event().await {
            if !print(&e) {
                break;
            }
        }
    })
    .await;
    session.disconnect().await;
    Ok(ExitCode::SUCCESS)
}
