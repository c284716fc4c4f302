//! A checkpoint's files, fetched point to point from the donor (the protocol around it is
//! `servercore::checkpoint`'s): one TCP connection, sealed with a key made for this transfer
//! alone.
//!
//! - The donor's shell listens on an ephemeral port of its ring address, draws a 256-bit key
//!   and hands both to its core as the offer's `source` ([`Source`]). The offer travels through
//!   the ring, which is encrypted and authenticated with the cluster key, so only the members
//!   learn the key; the files never enter the ring.
//! - The recipient connects and proves it holds the key (a sealed hello); the donor then
//!   streams every file of the manifest in order, in sealed frames of at most [`FRAME`] bytes
//!   (AES-256-GCM, a counter as nonce, one direction byte per side, the transfer id as
//!   associated data): a frame cannot be altered, dropped, replayed or reordered without the
//!   recipient noticing. The recipient writes the files, then acknowledges with a sealed
//!   frame of its own, and the donor reports the checkpoint served.
//! - Each side checks its cancel flag between frames and bounds every read and write in time,
//!   so an abandoned transfer ends on both sides. A connection that fails the hello (a small
//!   frame, read within [`HELLO_TIMEOUT`]) is dropped and the donor waits for another, up to
//!   [`SERVE_TIMEOUT`]; the first one that passes it is the only one: whatever becomes of it
//!   ends the serving (the recipient asks again, for a new transfer and key), so a key never
//!   seals two streams.
//!
//! Why a connection of its own and not the ring (BENCHMARKS.md, "Large values, catch-up and
//! bootstrap"): through the ring every member received and decrypted every chunk, and chunks
//! rode the token before commits, for a seventh of a raw copy's rate.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most file bytes in one sealed frame.
pub const FRAME: usize = 1 << 20;

/// How long one read or write on the connection may take before the transfer fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a recipient waits for the donor to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a donor waits for a connection that proves it holds the key.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an idle donor looks at its cancel flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

const TAG_LEN: usize = 16;
const HELLO: &[u8] = b"standby checkpoint fetch 1";
const ACK: &[u8] = b"standby checkpoint received 1";
/// Nonce direction bytes: what the recipient sends, what the donor sends.
const FROM_RECIPIENT: u8 = 1;
const FROM_DONOR: u8 = 2;
const SOURCE_VERSION: u8 = 1;

/// Where and how to fetch one transfer's files: the donor's address and the transfer's key.
#[derive(Clone)]
pub struct Source {
    /// The donor's listening address.
    pub addr: SocketAddr,
    key: [u8; 32],
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Source").field("addr", &self.addr).finish()
    }
}

impl Source {
    /// The bytes the offer carries: a version, the key, the address as text.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![SOURCE_VERSION];
        b.extend_from_slice(&self.key);
        b.extend_from_slice(self.addr.to_string().as_bytes());
        b
    }

    /// Reads an offer's bytes (`None` if malformed).
    pub fn decode(b: &[u8]) -> Option<Source> {
        let (&v, rest) = b.split_first()?;
        if v != SOURCE_VERSION || rest.len() < 32 {
            return None;
        }
        let key: [u8; 32] = rest[..32].try_into().ok()?;
        let addr = std::str::from_utf8(&rest[32..]).ok()?.parse().ok()?;
        Some(Source { addr, key })
    }
}

/// A transfer's key and id, sealing and opening its frames.
struct Sealer {
    key: LessSafeKey,
    id: u64,
}

impl Sealer {
    fn new(key: &[u8; 32], id: u64) -> Sealer {
        let k = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256");
        Sealer {
            key: LessSafeKey::new(k),
            id,
        }
    }

    fn nonce(dir: u8, counter: u64) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[0] = dir;
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Seals `buf` in place (the tag is appended) and writes it as one frame.
    fn send(&self, w: &mut impl Write, dir: u8, counter: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        self.key
            .seal_in_place_append_tag(
                Self::nonce(dir, counter),
                Aad::from(self.id.to_be_bytes()),
                buf,
            )
            .map_err(|_| io::Error::other("sealing failed"))?;
        w.write_all(&(buf.len() as u32).to_be_bytes())?;
        w.write_all(buf)
    }

    /// Reads one frame of at most `max` plaintext bytes into `buf` and opens it; the
    /// plaintext is `buf[..n]`.
    fn recv(
        &self,
        r: &mut impl Read,
        dir: u8,
        counter: u64,
        max: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=max + TAG_LEN).contains(&len) {
            return Err(io::Error::other(format!("a frame of {len} bytes")));
        }
        buf.resize(len, 0);
        r.read_exact(buf)?;
        let plain = self
            .key
            .open_in_place(
                Self::nonce(dir, counter),
                Aad::from(self.id.to_be_bytes()),
                buf,
            )
            .map_err(|_| io::Error::other("a frame that does not open with the transfer's key"))?;
        Ok(plain.len())
    }
}

/// Donor: a listener for one transfer, and the source to offer.
pub fn listen(ip: IpAddr) -> Result<(TcpListener, Source), String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "no random key for a checkpoint transfer".to_string())?;
    let l = TcpListener::bind((ip, 0)).map_err(|e| format!("checkpoint listener on {ip}: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok((l, Source { addr, key }))
}

/// Donor: serves the files of transfer `id` in `dir` to the first connection that proves it
/// holds the key: `Ok` once it acknowledged them all; `Err` if that connection failed, none
/// came within [`SERVE_TIMEOUT`], or `cancel` was set. A connection that fails the hello is
/// dropped and another awaited.
pub fn serve(
    listener: TcpListener,
    source: &Source,
    id: u64,
    dir: &Path,
    files: &[(String, u64, u32)],
    cancel: &AtomicBool,
) -> Result<(), String> {
    let sealer = Sealer::new(&source.key, id);
    // The serving thread of a shell, not a core: the clock bounds its wait for the
    // recipient, and it sleeps between looks at its cancel flag.
    #[allow(clippy::disallowed_methods)]
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err("cancelled".into());
        }
        #[allow(clippy::disallowed_methods)]
        if std::time::Instant::now() > deadline {
            return Err(format!("no recipient within {SERVE_TIMEOUT:?}"));
        }
        let (conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => return Err(format!("accept: {e}")),
        };
        if let Err(e) = hello(&conn, &sealer) {
            tracing::warn!(id, %peer, error = %e, "a checkpoint connection without the key");
            continue;
        }
        return match send_files(conn, &sealer, dir, files, cancel) {
            Ok(bytes) => {
                tracing::info!(id, %peer, bytes, "checkpoint files sent");
                Ok(())
            }
            Err(e) => Err(format!("sending to {peer}: {e}")),
        };
    }
}

/// Donor: reads the recipient's hello (one small frame, within [`HELLO_TIMEOUT`]) and checks
/// it.
fn hello(conn: &TcpStream, sealer: &Sealer) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(HELLO.len() + TAG_LEN);
    let n = sealer.recv(&mut &*conn, FROM_RECIPIENT, 0, HELLO.len(), &mut buf)?;
    if &buf[..n] != HELLO {
        return Err(io::Error::other("not a checkpoint fetch"));
    }
    Ok(())
}

fn send_files(
    conn: TcpStream,
    sealer: &Sealer,
    dir: &Path,
    files: &[(String, u64, u32)],
    cancel: &AtomicBool,
) -> io::Result<u64> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut r = conn.try_clone()?;
    let mut w = io::BufWriter::with_capacity(FRAME + 64, conn);
    let mut buf = Vec::with_capacity(FRAME + TAG_LEN);
    let mut counter = 0u64;
    let mut sent = 0u64;
    for (name, len, _) in files {
        let mut f = fs::File::open(dir.join(name))?;
        let mut left = *len;
        while left > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::other("cancelled"));
            }
            let n = left.min(FRAME as u64) as usize;
            buf.clear();
            buf.resize(n, 0);
            f.read_exact(&mut buf)?;
            sealer.send(&mut w, FROM_DONOR, counter, &mut buf)?;
            counter += 1;
            left -= n as u64;
            sent += n as u64;
        }
    }
    w.flush()?;
    let n = sealer.recv(&mut r, FROM_RECIPIENT, 1, ACK.len(), &mut buf)?;
    if &buf[..n] != ACK {
        return Err(io::Error::other("no acknowledgement"));
    }
    Ok(sent)
}

/// Recipient: fetches the files of transfer `id` from `source` into `dir` (which exists and
/// is empty), checks each one's length and CRC-32 against the manifest as it arrives, and
/// syncs every file and the directory. Reading them back to check them took a fifth of a
/// 2.8 GiB bootstrap.
pub fn fetch(
    source: &Source,
    id: u64,
    dir: &Path,
    files: &[(String, u64, u32)],
    cancel: &AtomicBool,
) -> Result<u64, String> {
    let sealer = Sealer::new(&source.key, id);
    let conn = TcpStream::connect_timeout(&source.addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting to the donor at {}: {e}", source.addr))?;
    let run = || -> io::Result<u64> {
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut w = conn.try_clone()?;
        let mut r = io::BufReader::with_capacity(FRAME + 64, conn.try_clone()?);
        let mut buf = HELLO.to_vec();
        sealer.send(&mut w, FROM_RECIPIENT, 0, &mut buf)?;
        let mut counter = 0u64;
        let mut got = 0u64;
        // The frame being read from, and where its unread bytes start.
        let (mut start, mut end) = (0usize, 0usize);
        for (name, len, crc) in files {
            let mut f = fs::File::create(dir.join(name))?;
            let mut h = crc32fast::Hasher::new();
            let mut left = *len;
            while left > 0 {
                if start == end {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(io::Error::other("cancelled"));
                    }
                    end = sealer.recv(&mut r, FROM_DONOR, counter, FRAME, &mut buf)?;
                    start = 0;
                    counter += 1;
                }
                let n = ((end - start) as u64).min(left) as usize;
                f.write_all(&buf[start..start + n])?;
                h.update(&buf[start..start + n]);
                start += n;
                left -= n as u64;
                got += n as u64;
            }
            let c = h.finalize();
            if c != *crc {
                return Err(io::Error::other(format!(
                    "{name}: crc {c:08x}, announced {crc:08x}"
                )));
            }
            f.sync_all()?;
        }
        if start != end {
            return Err(io::Error::other("the donor sent more than its manifest"));
        }
        fs::File::open(dir)?.sync_all()?;
        let mut ack = ACK.to_vec();
        sealer.send(&mut w, FROM_RECIPIENT, 1, &mut ack)?;
        Ok(got)
    };
    run().map_err(|e| format!("fetching from the donor at {}: {e}", source.addr))
}

/// A donor's serving thread for one transfer: set the flag to stop it.
pub type Cancel = Arc<AtomicBool>;

/// Lowers the calling thread's scheduling priority (nice 10), for the threads that move a
/// checkpoint: the ring's task must not wait behind a bulk copy, or its token times out. (On
/// 2 vCPUs under 16 committing clients it did not give the commits their rate back: they fell
/// by two thirds during a 2.8 GiB bootstrap either way; BENCHMARKS.md.)
pub fn yield_to_the_ring() {
    // A failure (another OS, no permission) leaves the priority as it was: only slower for
    // the others.
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let _ = rustix::process::setpriority_process(Some(tid), 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path, spec: &[(&str, usize)]) -> Vec<(String, u64, u32)> {
        spec.iter()
            .map(|(name, len)| {
                let data: Vec<u8> = (0..*len).map(|i| (i * 31 + name.len()) as u8).collect();
                fs::write(dir.join(name), &data).unwrap();
                (name.to_string(), *len as u64, crc32fast::hash(&data))
            })
            .collect()
    }

    /// A donor serving `files` of `dir` for transfer `id` on a thread of its own.
    fn start_donor(
        dir: &Path,
        files: &[(String, u64, u32)],
        id: u64,
    ) -> (Source, Cancel, std::thread::JoinHandle<Result<(), String>>) {
        let (l, source) = listen("127.0.0.1".parse().unwrap()).unwrap();
        let cancel = Cancel::default();
        let (dir, files, stop, src) = (
            dir.to_path_buf(),
            files.to_vec(),
            cancel.clone(),
            source.clone(),
        );
        let donor = std::thread::spawn(move || serve(l, &src, id, &dir, &files, &stop));
        (source, cancel, donor)
    }

    #[test]
    fn files_arrive_whole_and_a_wrong_key_gets_nothing() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        // Empty, smaller than a frame, exactly one, and across several.
        let files = files_in(
            from.path(),
            &[("a", 0), ("b", 10), ("c", FRAME), ("d", 2 * FRAME + 7)],
        );
        let (source, _cancel, donor) = start_donor(from.path(), &files, 7);
        // A recipient with another key is refused, and the donor goes on waiting.
        let mut wrong = Source::decode(&source.encode()).unwrap();
        wrong.key[0] ^= 1;
        let bad = tempfile::tempdir().unwrap();
        assert!(fetch(&wrong, 7, bad.path(), &files, &AtomicBool::new(false)).is_err());
        // So is one for another transfer id.
        assert!(fetch(&source, 8, bad.path(), &files, &AtomicBool::new(false)).is_err());
        let got = fetch(&source, 7, to.path(), &files, &AtomicBool::new(false)).unwrap();
        assert_eq!(got, files.iter().map(|f| f.1).sum::<u64>());
        donor.join().unwrap().expect("served once");
        // Every file as the donor has it, and nothing else.
        for (name, ..) in &files {
            let (a, b) = (from.path().join(name), to.path().join(name));
            assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap(), "{name}");
        }
        assert_eq!(fs::read_dir(to.path()).unwrap().count(), files.len());
    }

    #[test]
    fn a_file_that_does_not_match_its_manifest_is_refused() {
        let from = tempfile::tempdir().unwrap();
        let files = files_in(from.path(), &[("a", 10), ("b", 3 * FRAME / 2)]);
        // The donor serves what its directory holds; the manifest says otherwise of `b`.
        let mut said = files.clone();
        said[1].2 ^= 1;
        let (source, cancel, donor) = start_donor(from.path(), &files, 3);
        let to = tempfile::tempdir().unwrap();
        let e = fetch(&source, 3, to.path(), &said, &AtomicBool::new(false)).unwrap_err();
        assert!(e.contains("b: crc"), "{e}");
        // The connection that passed the hello was the only one: no acknowledgement, so the
        // donor stops serving by itself (the recipient asks again, for a new transfer).
        let served = donor.join().unwrap();
        assert!(
            served.as_ref().is_err_and(|e| e.contains("sending to")),
            "{served:?}"
        );
        assert!(!cancel.load(Ordering::Relaxed));
    }

    #[test]
    fn a_cancelled_donor_stops_and_a_fetch_from_it_fails() {
        let from = tempfile::tempdir().unwrap();
        let files = files_in(from.path(), &[("a", 100)]);
        let (source, cancel, donor) = start_donor(from.path(), &files, 1);
        cancel.store(true, Ordering::Relaxed);
        assert!(donor.join().unwrap().is_err());
        let to = tempfile::tempdir().unwrap();
        assert!(fetch(&source, 1, to.path(), &files, &AtomicBool::new(false)).is_err());
    }

    #[test]
    fn a_source_round_trips_and_bad_bytes_are_refused() {
        let (_l, s) = listen("127.0.0.1".parse().unwrap()).unwrap();
        let b = s.encode();
        let d = Source::decode(&b).unwrap();
        assert_eq!((d.addr, d.key), (s.addr, s.key));
        // Without its version, its whole key or an address.
        for cut in 0..=33 {
            assert!(Source::decode(&b[..cut]).is_none(), "cut at {cut}");
        }
        let mut other = b.clone();
        other[0] = 2;
        assert!(Source::decode(&other).is_none(), "another version");
        assert!(
            !format!("{s:?}").contains("key"),
            "the key stays out of logs"
        );
    }
}
