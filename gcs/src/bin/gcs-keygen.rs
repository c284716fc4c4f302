//! `gcs-keygen PATH`: writes a new cluster key to PATH (mode 0600, never overwriting), or to
//! standard output with `-`. Copy the file to every daemon of the cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Writes a new random cluster key. Copy the file to every daemon of the cluster (or name it in
/// the cluster configuration's `key_file`).
#[derive(clap::Parser)]
#[command(name = "gcs-keygen", version)]
struct Args {
    /// Where to write the key: a new file, made readable by its owner only (an existing file is
    /// never overwritten), or `-` for standard output.
    #[arg(value_name = "PATH")]
    path: PathBuf,
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message, as before.
    let args = <Args as clap::Parser>::parse();
    let mut random = [0u8; gcs::crypto::KEY_LEN];
    if let Err(e) = getrandom::fill(&mut random) {
        eprintln!("gcs-keygen: no random bytes from the operating system: {e}");
        return ExitCode::FAILURE;
    }
    let text = gcs::crypto::keygen(random);
    random.fill(0);
    let written = if args.path.as_os_str() == "-" {
        std::io::stdout().write_all(text.as_bytes())
    } else {
        write_private(&args.path, &text)
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gcs-keygen: {}: {e}", args.path.display());
            ExitCode::FAILURE
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
