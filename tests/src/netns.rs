//! The network-namespace harness (`../shared/harness/netns-cluster`) from a test: one cluster
//! of namespaces per prefix and subnet, torn down when the handle is dropped. Tests that need
//! it call [`Harness::open`], which says why and gives `None` when it cannot run here (not
//! root, or no harness), so that such a test reports itself skipped instead of passing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A namespace cluster named by `prefix` on `subnet` (`10.x.y`: host `i` is `subnet.i`).
pub struct Harness {
    bin: PathBuf,
    prefix: &'static str,
    subnet: &'static str,
}

/// Whether this process runs as root (namespaces, mounts).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Harness {
    /// The harness for `test`, or `None` (after printing `SKIPPED <test>: ...`) when this
    /// machine cannot run it. Clears what an earlier run of the same prefix may have left.
    pub fn open(test: &str, prefix: &'static str, subnet: &'static str) -> Option<Harness> {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/harness/netns-cluster");
        if !is_root() || !bin.exists() {
            eprintln!("SKIPPED {test}: needs root and {}", bin.display());
            return None;
        }
        let h = Harness {
            bin,
            prefix,
            subnet,
        };
        let _ = h.try_run(&["down", "--force"]);
        Some(h)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: u32) -> String {
        format!("{}.{i}", self.subnet)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("NETNS_CLUSTER_PREFIX", self.prefix)
            .env("NETNS_CLUSTER_SUBNET", self.subnet);
        c
    }

    fn try_run(&self, args: &[&str]) -> Option<String> {
        let out = self.command(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs a harness command (`up 5`, `partition 1,2|3`, `heal`, `loss 3 20`, ...); its
    /// stdout. Panics with the harness's stderr if it fails: the test cannot go on.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run netns-cluster");
        assert!(
            out.status.success(),
            "netns-cluster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `cmd` in host `i` in the foreground; its stdout, or `None` if it failed.
    pub fn exec(&self, i: u32, cmd: &[&str]) -> Option<String> {
        let mut args = vec!["exec".to_string(), i.to_string()];
        args.extend(cmd.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.command(&args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.try_run(&["down", "--force"]);
    }
}
