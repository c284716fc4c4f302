//! The files of a checkpoint transfer (the protocol is `servercore::checkpoint`'s) and the
//! layout of a server's data directory.
//!
//! - The donor writes a checkpoint of its store into `<data>/outgoing-<id>` and serves its files
//!   to the recipient ([`crate::transfer`]).
//! - The recipient fetches them into the side directory `<data>/incoming-<id>`, checks
//!   every length and checksum, opens the store there to check its last transaction, closes
//!   it, renames the directory to `store-<n>`, points `<data>/CURRENT` at it (write, fsync,
//!   rename), and only then opens it for good and hands it to the replica. The old store is
//!   closed by the replica when it lets go of it, and its directory is kept as
//!   `replaced-<n>` for the operator (its lost archive is there). No file is ever swapped
//!   under an open store.
//!
//! `CURRENT` is written only once the first store exists, so a `CURRENT` that names a missing
//! or empty store means the store was lost, and the server refuses to start rather than begin
//! again empty. Stores set aside by `standby-server --rebuild` are kept as `corrupt-<n>`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub use servercore::checkpoint::{CkptMsg, Manifest};

/// The largest file a received checkpoint may hold (RocksDB's files are far smaller).
pub const CHECKPOINT_FILE_MAX: u64 = 1 << 40;

/// Donor, [`CheckpointCommand::Make`](servercore::checkpoint::CheckpointCommand::Make), first
/// half, which needs the store: writes a checkpoint of `store` into `dir`
/// (`Storage::checkpoint`: for RocksDB, hard links and a copy of the live WAL) and returns the
/// last transaction it holds. The second half is [`manifest`].
pub fn make_files<S: storage::Storage + ?Sized>(
    store: &S,
    dir: &Path,
) -> Result<storage::Tid, String> {
    let _ = fs::remove_dir_all(dir);
    store.checkpoint(dir).map_err(|e| e.to_string())
}

/// Donor, second half of a checkpoint's making: the length and checksum of every file in
/// `dir`. It reads every byte (seconds for a store of gigabytes), so the shell runs it off
/// the ring's task.
pub fn manifest(dir: &Path, tid: storage::Tid) -> Result<Manifest, String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        let (len, crc) = file_crc(&dir.join(&n)).map_err(|e| format!("{n}: {e}"))?;
        files.push((n, len, crc));
    }
    Ok(Manifest { tid, files })
}

fn file_crc(p: &Path) -> io::Result<(u64, u32)> {
    let mut f = fs::File::open(p)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.finalize()))
}

/// Recipient, [`CheckpointCommand::Prepare`](servercore::checkpoint::CheckpointCommand::Prepare):
/// a fresh side directory `dir`.
pub fn prepare(dir: &Path) -> io::Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)
}

/// At start: removes what checkpoint transfers of an earlier run left (`outgoing-*`,
/// `incoming-*`). A transfer is bound to the processes at both ends, so none survives a
/// restart, and a donor's leftover holds hard links to table files the live store has since
/// dropped (as much disk as the store). Returns how many it removed.
pub fn remove_transfer_leftovers(data: &Path) -> io::Result<usize> {
    let mut n = 0;
    let entries = match fs::read_dir(data) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("outgoing-") || name.starts_with("incoming-"))
            && e.file_type()?.is_dir()
        {
            fs::remove_dir_all(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// The data directory's layout: `CURRENT` names the live store directory.
pub fn current_store_dir(data: &Path) -> io::Result<PathBuf> {
    match fs::read_to_string(data.join("CURRENT")) {
        Ok(name) => Ok(data.join(name.trim())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(data)?;
            set_current(data, "store-0")?;
            Ok(data.join("store-0"))
        }
        Err(e) => Err(e),
    }
}

/// The live store directory at start-up, and whether the data directory is new (no
/// `CURRENT` yet: the caller creates the store there, then calls [`mark_created`]). `CURRENT`
/// is written only once the store exists, so a `CURRENT` naming a missing or empty directory
/// means the store was lost, never that it was not made yet.
pub fn live_store_dir(data: &Path) -> io::Result<(PathBuf, bool)> {
    match fs::read_to_string(data.join("CURRENT")) {
        Ok(name) => Ok((data.join(name.trim()), false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(data)?;
            Ok((data.join("store-0"), true))
        }
        Err(e) => Err(e),
    }
}

/// Records that the first store of a new data directory exists (see [`live_store_dir`]).
pub fn mark_created(data: &Path) -> io::Result<()> {
    set_current(data, "store-0")
}

/// Why a store directory named by `CURRENT` cannot be the live store, if it cannot.
pub fn check_live_store(dir: &Path) -> Option<String> {
    let empty = fs::read_dir(dir).map(|mut d| d.next().is_none());
    match empty {
        Ok(false) => None,
        Ok(true) => Some(format!(
            "{} (named by CURRENT) is empty: the store was lost",
            dir.display()
        )),
        Err(e) => Some(format!(
            "{} (named by CURRENT) cannot be read: {e}",
            dir.display()
        )),
    }
}

/// Moves the live store out of the way before a rebuild from the other servers: it is kept
/// as `corrupt-<n>` for the operator, and `CURRENT` names a new, empty `store-<m>`. Returns
/// where the old store went (`None`: there was none).
pub fn set_aside(data: &Path) -> io::Result<Option<PathBuf>> {
    let (old, new) = live_store_dir(data)?;
    let moved = if !new && old.exists() {
        let mut n = 0u64;
        while data.join(format!("corrupt-{n}")).exists() {
            n += 1;
        }
        let to = data.join(format!("corrupt-{n}"));
        fs::rename(&old, &to)?;
        Some(to)
    } else {
        None
    };
    let mut m = 0u64;
    while data.join(format!("store-{m}")).exists() {
        m += 1;
    }
    let name = format!("store-{m}");
    fs::create_dir_all(data.join(&name))?;
    // An empty directory is the one case `check_live_store` refuses: mark it as made for a
    // rebuild.
    fs::write(data.join(&name).join(REBUILD_MARK), b"")?;
    set_current(data, &name)?;
    Ok(moved)
}

/// A file in a store directory made by [`set_aside`]: the store is new, to be filled from the
/// other servers.
pub const REBUILD_MARK: &str = "REBUILDING";

fn set_current(data: &Path, name: &str) -> io::Result<()> {
    let tmp = data.join("CURRENT.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(name.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, data.join("CURRENT"))?;
    fs::File::open(data)?.sync_all()
}

/// Moves a verified side directory into place as the next store and points `CURRENT` at it.
/// Returns the new store directory and the one it replaces.
pub fn promote(data: &Path, incoming: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let old = current_store_dir(data)?;
    let mut n = 0u64;
    while data.join(format!("store-{n}")).exists() {
        n += 1;
    }
    let name = format!("store-{n}");
    let new = data.join(&name);
    fs::rename(incoming, &new)?;
    set_current(data, &name)?;
    Ok((new, old))
}

/// Keeps a replaced store for the operator, out of the way.
pub fn retire(data: &Path, old: &Path) {
    let mut n = 0u64;
    while data.join(format!("replaced-{n}")).exists() {
        n += 1;
    }
    if let Err(e) = fs::rename(old, data.join(format!("replaced-{n}"))) {
        tracing::warn!(error = %e, old = %old.display(), "cannot move the replaced store aside");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_named_by_current_but_lost_is_refused_and_set_aside_for_a_rebuild() {
        let d = tempfile::tempdir().unwrap();
        let (dir, new) = live_store_dir(d.path()).unwrap();
        assert!(new && dir.ends_with("store-0"));
        assert!(
            !d.path().join("CURRENT").exists(),
            "CURRENT waits for the store"
        );
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), b"x").unwrap();
        mark_created(d.path()).unwrap();
        let (again, new) = live_store_dir(d.path()).unwrap();
        assert_eq!((again.clone(), new), (dir.clone(), false));
        assert_eq!(check_live_store(&dir), None);
        // Emptied (or gone): refused, naming the directory.
        fs::remove_file(dir.join("data")).unwrap();
        assert!(check_live_store(&dir).is_some_and(|w| w.contains("store-0")));
        fs::remove_dir(&dir).unwrap();
        assert!(check_live_store(&dir).is_some_and(|w| w.contains("cannot be read")));
        // Set aside: a new, marked store directory; the old one kept.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), b"x").unwrap();
        let kept = set_aside(d.path()).unwrap().expect("moved");
        assert!(kept.ends_with("corrupt-0") && kept.join("data").exists());
        let (fresh, _) = live_store_dir(d.path()).unwrap();
        assert!(fresh.join(REBUILD_MARK).exists());
        assert_eq!(check_live_store(&fresh), None);
    }

    #[test]
    fn transfer_leftovers_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        for keep in ["store-0", "replaced-1", "corrupt-2"] {
            fs::create_dir_all(d.path().join(keep)).unwrap();
        }
        fs::write(d.path().join("CURRENT"), b"store-0").unwrap();
        for gone in ["outgoing-7", "incoming-9"] {
            fs::create_dir_all(d.path().join(gone)).unwrap();
            fs::write(d.path().join(gone).join("000001.sst"), b"x").unwrap();
        }
        assert_eq!(remove_transfer_leftovers(d.path()).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["CURRENT", "corrupt-2", "replaced-1", "store-0"]);
        assert_eq!(
            remove_transfer_leftovers(&d.path().join("none")).unwrap(),
            0
        );
    }

    #[test]
    fn current_points_at_the_promoted_store() {
        let d = tempfile::tempdir().unwrap();
        let first = current_store_dir(d.path()).unwrap();
        assert!(first.ends_with("store-0"));
        fs::create_dir_all(&first).unwrap();
        let side = d.path().join("incoming-3");
        prepare(&side).unwrap();
        let (new, old) = promote(d.path(), &side).unwrap();
        assert_eq!(old, first);
        assert!(new.ends_with("store-1"));
        assert_eq!(current_store_dir(d.path()).unwrap(), new);
        retire(d.path(), &old);
        assert!(d.path().join("replaced-0").exists());
    }
}
