//! The checkpoint transfer between servers, for a store that is empty or cannot be reconciled
//! (`replica::Output::NeedCheckpoint`): its messages, and the file work the core asks of its
//! shell as [`CheckpointCommand`]s.
//!
//! - The recipient multicasts `Request`. The donor's shell makes a checkpoint of its store
//!   ([`CheckpointCommand::Make`]) and reports its [`Manifest`]; the core then streams the files
//!   through the ring in chunks, one chunk read ([`CheckpointCommand::Read`]) beyond what the
//!   node's send queue holds (back-pressure: the next chunk is read only once the previous one
//!   was queued), then `Done` with each file's length and CRC-32.
//! - Chunks count only from the donor the recipient asked, requests only from the server they
//!   name: another member cannot feed a recovering server files of its own.
//! - The recipient's shell writes the chunks into a side directory
//!   ([`CheckpointCommand::Write`]); at `Done` it checks every length and checksum and the
//!   checkpoint's last transaction, makes it the live store and opens it
//!   ([`CheckpointCommand::Install`]), and reports the opened store; the core hands it to the
//!   replica. How the server lays this out on disk is in `server::checkpoint`.
//! - Anything wrong (a missing chunk after a view change, a checksum, a donor that cannot make
//!   checkpoints) abandons the attempt; the replica asks again at its next election.
//! - A transfer is bound to the processes (gcs incarnations) of its donor and recipient, not
//!   to their server ids: a regular view without either ends it, since a peer that restarted
//!   between two views is there under a newer incarnation and knows nothing of the transfer.
//! - Files travel in chunks of [`CHUNK`] (256 KiB). What the old store held beyond the history
//!   it shares with the checkpoint is reported lost by the replica, as for any truncation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use replica::ServerId;
use storage::Tid;

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
        if r.is_empty() {
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

/// What a donor's checkpoint holds: its last transaction and `(name, length, crc32)` of every
/// file, in the order they are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint's last transaction.
    pub tid: Tid,
    /// `(name, length, crc32)` of every file.
    pub files: Vec<(String, u64, u32)>,
}

/// File work the core asks of its shell for a checkpoint transfer. The shell reports back
/// through the `ServerCore` method each variant names; commands of one transfer are issued
/// one at a time and in order, and a transfer's id is unique per recipient run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointCommand {
    /// Donor: make a checkpoint of the store (`ServerCore::store`) for transfer `id` to `to`,
    /// and report it with `ServerCore::checkpoint_made`.
    Make {
        /// Transfer id.
        id: u64,
        /// The recipient.
        to: ServerId,
    },
    /// Donor: read `len` bytes of file `name` of transfer `id` at `offset`, and report them
    /// with `ServerCore::chunk_read`.
    Read {
        /// Transfer id.
        id: u64,
        /// File name, as in the manifest.
        name: String,
        /// Where to read.
        offset: u64,
        /// How much.
        len: usize,
    },
    /// Donor: transfer `id` ended (sent or abandoned): remove its files. Nothing to report.
    Discard {
        /// Transfer id.
        id: u64,
    },
    /// Recipient: prepare an empty side directory for transfer `id` from `donor`. Report only
    /// a failure (`ServerCore::transfer_failed`).
    Prepare {
        /// Transfer id.
        id: u64,
        /// The donor.
        donor: ServerId,
    },
    /// Recipient: write a chunk of transfer `id`. Report only a failure.
    Write {
        /// Transfer id.
        id: u64,
        /// File name (checked: no directories).
        name: String,
        /// Where it goes in the file.
        offset: u64,
        /// The data.
        data: Bytes,
    },
    /// Recipient: every chunk of transfer `id` arrived. Check the files against the
    /// manifest and the checkpoint's last transaction, make it the live store, open it, and
    /// report it with `ServerCore::checkpoint_ready`.
    Install {
        /// Transfer id.
        id: u64,
        /// The donor.
        donor: ServerId,
        /// What the donor sent.
        manifest: Manifest,
    },
    /// Recipient: transfer `id` was abandoned: remove its side directory. Nothing to report.
    Abandon {
        /// Transfer id.
        id: u64,
    },
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
}
