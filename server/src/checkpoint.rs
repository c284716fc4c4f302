//! Checkpoint transfer between servers, for a store that is empty or cannot be reconciled
//! (`replica::Output::NeedCheckpoint`).
//!
//! - The recipient multicasts `Request`. The donor writes a checkpoint of its store into
//!   `<data>/outgoing-<id>` (`Storage::checkpoint`: for RocksDB, hard links and a copy of the
//!   live WAL) and streams its files through the ring in chunks, one chunk in flight beyond
//!   what the node's send queue holds (back-pressure: the next chunk is read only once the
//!   previous one was queued), then `Done` with each file's length and CRC-32.
//! - The recipient writes the chunks into the side directory `<data>/incoming-<id>`, checks
//!   every length and checksum, opens the store there to check its last transaction, closes
//!   it, renames the directory to `store-<n>`, points `<data>/CURRENT` at it (write, fsync,
//!   rename), and only then opens it for good and hands it to the replica. The old store is
//!   closed by the replica when it lets go of it, and its directory is kept as
//!   `replaced-<n>` for the operator (its lost archive is there). No file is ever swapped
//!   under an open store.
//! - Anything wrong (a missing chunk after a view change, a checksum, a donor that cannot make
//!   checkpoints) abandons the attempt; the replica asks again at its next election.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use replica::ServerId;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use storage::Tid;

/// First byte of a checkpoint message (replica messages start with their format version, 1).
pub const TAG: u8 = 0xC7;

/// Bytes of file data per chunk.
pub const CHUNK: usize = 256 * 1024;

/// A checkpoint-transfer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CkptMsg {
    /// `from` asks `donor` for a checkpoint.
    Request {
        /// The recipient.
        from: ServerId,
        /// The donor.
        donor: ServerId,
        /// Transfer id (unique per recipient run).
        id: u64,
    },
    /// A piece of a file.
    Chunk {
        /// The recipient.
        to: ServerId,
        /// Transfer id.
        id: u64,
        /// File name (no directories).
        name: String,
        /// Where the data goes in the file.
        offset: u64,
        /// The data.
        data: Bytes,
    },
    /// Every file was sent: names, lengths, CRC-32s, and the checkpoint's last transaction.
    Done {
        /// The recipient.
        to: ServerId,
        /// Transfer id.
        id: u64,
        /// The checkpoint's last transaction.
        tid: Tid,
        /// `(name, length, crc32)` of every file.
        files: Vec<(String, u64, u32)>,
    },
    /// The donor cannot make a checkpoint.
    Failed {
        /// The recipient.
        to: ServerId,
        /// Transfer id.
        id: u64,
        /// Why.
        reason: String,
    },
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn get_str(r: &mut &[u8]) -> Option<String> {
    if r.len() < 2 {
        return None;
    }
    let n = r.get_u16() as usize;
    if r.len() < n {
        return None;
    }
    let s = std::str::from_utf8(&r[..n]).ok()?.to_string();
    r.advance(n);
    Some(s)
}

fn get_u32(r: &mut &[u8]) -> Option<u32> {
    (r.len() >= 4).then(|| r.get_u32())
}

fn get_u64(r: &mut &[u8]) -> Option<u64> {
    (r.len() >= 8).then(|| r.get_u64())
}

/// A file name a donor may send: plain, no path separators, no dots-only names.
fn safe_name(n: &str) -> bool {
    !n.is_empty()
        && n != "."
        && n != ".."
        && !n.contains('/')
        && !n.contains('\\')
        && !n.contains('\0')
}

impl CkptMsg {
    /// Encodes it.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(TAG);
        match self {
            CkptMsg::Request { from, donor, id } => {
                b.put_u8(1);
                b.put_u32(*from);
                b.put_u32(*donor);
                b.put_u64(*id);
            }
            CkptMsg::Chunk {
                to,
                id,
                name,
                offset,
                data,
            } => {
                b.put_u8(2);
                b.put_u32(*to);
                b.put_u64(*id);
                put_str(&mut b, name);
                b.put_u64(*offset);
                b.put_u32(data.len() as u32);
                b.put_slice(data);
            }
            CkptMsg::Done { to, id, tid, files } => {
                b.put_u8(3);
                b.put_u32(*to);
                b.put_u64(*id);
                b.put_u64(tid.0);
                b.put_u32(files.len() as u32);
                for (n, len, crc) in files {
                    put_str(&mut b, n);
                    b.put_u64(*len);
                    b.put_u32(*crc);
                }
            }
            CkptMsg::Failed { to, id, reason } => {
                b.put_u8(4);
                b.put_u32(*to);
                b.put_u64(*id);
                // At most 1000 bytes, cut at a character boundary (the reason may quote a
                // path in any script).
                let mut end = reason.len().min(1000);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                put_str(&mut b, &reason[..end]);
            }
        }
        b.freeze()
    }

    /// Decodes it (`None` for anything malformed; never panics).
    pub fn decode(mut r: &[u8]) -> Option<CkptMsg> {
        let r = &mut r;
        if r.len() < 2 || r.get_u8() != TAG {
            return None;
        }
        let m = match r.get_u8() {
            1 => CkptMsg::Request {
                from: get_u32(r)?,
                donor: get_u32(r)?,
                id: get_u64(r)?,
            },
            2 => {
                let to = get_u32(r)?;
                let id = get_u64(r)?;
                let name = get_str(r)?;
                let offset = get_u64(r)?;
                let n = get_u32(r)? as usize;
                if r.len() < n || !safe_name(&name) {
                    return None;
                }
                let data = Bytes::copy_from_slice(&r[..n]);
                r.advance(n);
                CkptMsg::Chunk {
                    to,
                    id,
                    name,
                    offset,
                    data,
                }
            }
            3 => {
                let to = get_u32(r)?;
                let id = get_u64(r)?;
                let tid = Tid(get_u64(r)?);
                let n = get_u32(r)? as usize;
                if n > r.len() / 14 {
                    return None;
                }
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = get_str(r)?;
                    if !safe_name(&name) {
                        return None;
                    }
                    files.push((name, get_u64(r)?, get_u32(r)?));
                }
                CkptMsg::Done { to, id, tid, files }
            }
            4 => CkptMsg::Failed {
                to: get_u32(r)?,
                id: get_u64(r)?,
                reason: get_str(r)?,
            },
            _ => return None,
        };
        r.is_empty().then_some(m)
    }
}

/// The donor's side of one transfer: the files of a checkpoint, read chunk by chunk.
pub struct Outgoing {
    /// The recipient.
    pub to: ServerId,
    /// Transfer id.
    pub id: u64,
    dir: PathBuf,
    tid: Tid,
    files: Vec<(String, u64, u32)>,
    file: usize,
    offset: u64,
}

impl Outgoing {
    /// Writes a checkpoint of `store` into `dir` and lists its files.
    pub fn start<S: storage::Storage>(
        store: &S,
        dir: PathBuf,
        to: ServerId,
        id: u64,
    ) -> Result<Outgoing, String> {
        let _ = fs::remove_dir_all(&dir);
        let tid = store.checkpoint(&dir).map_err(|e| e.to_string())?;
        let mut files = Vec::new();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            let (len, crc) = file_crc(&dir.join(&n)).map_err(|e| e.to_string())?;
            files.push((n, len, crc));
        }
        Ok(Outgoing {
            to,
            id,
            dir,
            tid,
            files,
            file: 0,
            offset: 0,
        })
    }

    /// The next message to send, or `None` when everything, `Done` included, was sent.
    pub fn next_msg(&mut self) -> Option<Result<CkptMsg, String>> {
        while self.file < self.files.len() {
            let (name, len, _) = self.files[self.file].clone();
            if self.offset >= len {
                self.file += 1;
                self.offset = 0;
                continue;
            }
            let want = CHUNK.min((len - self.offset) as usize);
            let mut buf = vec![0u8; want];
            let r = fs::File::open(self.dir.join(&name)).and_then(|mut f| {
                f.seek(SeekFrom::Start(self.offset))?;
                f.read_exact(&mut buf)
            });
            if let Err(e) = r {
                return Some(Err(format!("{name}: {e}")));
            }
            let offset = self.offset;
            self.offset += want as u64;
            return Some(Ok(CkptMsg::Chunk {
                to: self.to,
                id: self.id,
                name,
                offset,
                data: Bytes::from(buf),
            }));
        }
        if self.file == self.files.len() {
            self.file += 1;
            return Some(Ok(CkptMsg::Done {
                to: self.to,
                id: self.id,
                tid: self.tid,
                files: self.files.clone(),
            }));
        }
        None
    }

    /// Removes the donor's copy.
    pub fn finish(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
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

/// The recipient's side of one transfer.
pub struct Incoming {
    /// Transfer id.
    pub id: u64,
    /// The donor.
    pub donor: ServerId,
    /// The side directory.
    pub dir: PathBuf,
    /// Bytes received so far (for progress reports).
    pub received: u64,
}

impl Incoming {
    /// A fresh side directory for transfer `id`.
    pub fn start(data: &Path, donor: ServerId, id: u64) -> io::Result<Incoming> {
        let dir = data.join(format!("incoming-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Incoming {
            id,
            donor,
            dir,
            received: 0,
        })
    }

    /// Writes a chunk.
    pub fn chunk(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.dir.join(name))?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)?;
        self.received += data.len() as u64;
        Ok(())
    }

    /// Checks every file against the donor's list and syncs them; the extra files a broken
    /// earlier attempt may have left are refused too.
    pub fn verify(&self, files: &[(String, u64, u32)]) -> Result<(), String> {
        // Empty files travel as their entry in the list only.
        for (name, len, _) in files {
            let p = self.dir.join(name);
            if *len == 0 && !p.exists() {
                fs::File::create(&p).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        let present = fs::read_dir(&self.dir).map_err(|e| e.to_string())?.count();
        if present != files.len() {
            return Err(format!(
                "{present} files received, {} announced",
                files.len()
            ));
        }
        for (name, len, crc) in files {
            let p = self.dir.join(name);
            let (l, c) = file_crc(&p).map_err(|e| format!("{name}: {e}"))?;
            if (l, c) != (*len, *crc) {
                return Err(format!(
                    "{name}: {l} bytes crc {c:08x}, announced {len} bytes crc {crc:08x}"
                ));
            }
            fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }
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
    fn a_long_failure_reason_is_cut_at_a_character_boundary() {
        // 999 ASCII bytes, then characters of 3 bytes: byte 1000 falls inside one.
        let reason = format!("{}{}", "x".repeat(999), "路".repeat(10));
        let m = CkptMsg::Failed {
            to: 1,
            id: 9,
            reason: reason.clone(),
        };
        let Some(CkptMsg::Failed { reason: sent, .. }) = CkptMsg::decode(&m.encode()) else {
            panic!("does not decode");
        };
        assert_eq!(sent, "x".repeat(999));
        assert!(reason.starts_with(&sent));
    }

    #[test]
    fn messages_round_trip_and_bad_input_is_refused() {
        let ms = vec![
            CkptMsg::Request {
                from: 1,
                donor: 0,
                id: 9,
            },
            CkptMsg::Chunk {
                to: 1,
                id: 9,
                name: "000012.sst".into(),
                offset: 7,
                data: Bytes::from_static(b"abc"),
            },
            CkptMsg::Done {
                to: 1,
                id: 9,
                tid: Tid(5),
                files: vec![("CURRENT".into(), 16, 0xdead_beef)],
            },
            CkptMsg::Failed {
                to: 1,
                id: 9,
                reason: "no".into(),
            },
        ];
        for m in ms {
            let b = m.encode();
            assert_eq!(CkptMsg::decode(&b), Some(m.clone()));
            for cut in 0..b.len() {
                assert_eq!(CkptMsg::decode(&b[..cut]), None);
            }
        }
        let evil = CkptMsg::Chunk {
            to: 1,
            id: 9,
            name: "../etc".into(),
            offset: 0,
            data: Bytes::new(),
        };
        assert_eq!(
            CkptMsg::decode(&evil.encode()),
            None,
            "path escapes refused"
        );
    }

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
    fn current_points_at_the_promoted_store() {
        let d = tempfile::tempdir().unwrap();
        let first = current_store_dir(d.path()).unwrap();
        assert!(first.ends_with("store-0"));
        fs::create_dir_all(&first).unwrap();
        let inc = Incoming::start(d.path(), 0, 3).unwrap();
        let (new, old) = promote(d.path(), &inc.dir).unwrap();
        assert_eq!(old, first);
        assert!(new.ends_with("store-1"));
        assert_eq!(current_store_dir(d.path()).unwrap(), new);
        retire(d.path(), &old);
        assert!(d.path().join("replaced-0").exists());
    }
}
