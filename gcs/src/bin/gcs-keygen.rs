//! `gcs-keygen PATH`: writes a new cluster key to PATH (mode 0600, never overwriting), or to
//! standard output with `-`. Copy the file to every daemon of the cluster.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: gcs-keygen PATH   (or - for standard output)");
        return ExitCode::from(2);
    };
    let mut random = [0u8; gcs::crypto::KEY_LEN];
    if let Err(e) = getrandom::fill(&mut random) {
        eprintln!("gcs-keygen: no random bytes from the operating system: {e}");
        return ExitCode::FAILURE;
    }
    let text = gcs::crypto::keygen(random);
    random.fill(0);
    let written = if path == "-" {
        std::io::stdout().write_all(text.as_bytes())
    } else {
        write_private(path, &text)
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gcs-keygen: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_private(path: &str, text: &str) -> std::io::Result<()> {
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
