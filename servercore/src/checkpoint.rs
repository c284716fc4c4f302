//! The checkpoint transfer between servers, for a store that is empty or cannot be reconciled
//! (`replica::Output::NeedCheckpoint`): its messages, and the file work the core asks of its
//! shell as [`CheckpointCommand`]s.
//!
//! The ring carries only the request, the offer and a failure; the files go point to point
//! between the two shells. Through the ring every member received, decrypted and reassembled
//! every chunk it had no use for, and each rotation carried chunks before commits: a 5.7 GiB
//! bootstrap ran at 100 MB/s (a seventh of a raw copy) and cut the cluster's commits by 76 %
//! (BENCHMARKS.md, "Large values, catch-up and bootstrap").
//!
//! - The recipient multicasts `Request`. The donor's shell makes a checkpoint of its store
//!   ([`CheckpointCommand::Make`]), lists its files ([`Manifest`]) and starts serving them;
//!   it reports the manifest with a `source`, bytes the core relays without reading them (for
//!   `standby-server`: an address and a key made for this transfer alone). The core multicasts
//!   them as `Offer`.
//! - The recipient's core asks its shell to fetch the files from that source into a side
//!   directory, check every length and checksum and the checkpoint's last transaction, make it
//!   the live store and open it ([`CheckpointCommand::Fetch`]); the shell reports the opened
//!   store, and the core hands it to the replica.
//! - The donor serves until its shell reports every file sent once
//!   ([`crate::ServerCore::checkpoint_served`]) or that it stopped serving
//!   ([`crate::ServerCore::serving_failed`]: no recipient in time, a failed connection; the
//!   recipient is told), or until the recipient asks again, of it or of another donor (any
//!   request from the same process ends the offer), or leaves the view.
//! - An offer counts only from the donor the recipient asked, a request only from the server
//!   it names: another member cannot feed a recovering server files of its own.
//! - Anything wrong (the donor gone, a broken connection, a checksum, a store that does not
//!   open, a donor that cannot make checkpoints) abandons the attempt, and the recipient asks
//!   again shortly (`transfer_failed`, or `checkpoint_ready` with an error).
//! - A transfer is bound to the processes (gcs incarnations) of its donor and recipient, not
//!   to their server ids: a regular view without either ends it, since a peer that restarted
//!   between two views is there under a newer incarnation and knows nothing of the transfer.
//!   What the old store held beyond the history it shares with the checkpoint is reported
//!   lost by the replica, as for any truncation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use replica::ServerId;
use storage::Tid;

/// The most bytes an offer's `source` may hold.
pub const SOURCE_MAX: usize = 1024;

/// Where and how to fetch a checkpoint, as the donor's shell wrote it: opaque to the core, and
/// never printed whole (`standby-server`'s holds the transfer's key).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Source(pub Bytes);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({} bytes)", self.0.len())
    }
}

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
    /// The donor made the checkpoint and serves it: what it holds, and where to fetch it.
    Offer {
        /// The recipient.
        to: ServerId,
        /// Transfer id.
        id: u64,
        /// The checkpoint's last transaction.
        tid: Tid,
        /// `(name, length, crc32)` of every file.
        files: Vec<(String, u64, u32)>,
        /// Where and how to fetch the files: the donor shell's, relayed as they are.
        source: Source,
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
            CkptMsg::Offer {
                to,
                id,
                tid,
                files,
                source,
            } => {
                b.put_u8(5);
                b.put_u32(*to);
                b.put_u64(*id);
                b.put_u64(tid.0);
                b.put_u32(files.len() as u32);
                for (n, len, crc) in files {
                    put_str(&mut b, n);
                    b.put_u64(*len);
                    b.put_u32(*crc);
                }
                b.put_u16(source.0.len() as u16);
                b.put_slice(&source.0);
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
            5 => {
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
                if r.len() < 2 {
                    return None;
                }
                let k = r.get_u16() as usize;
                if r.len() < k || k > SOURCE_MAX {
                    return None;
                }
                let source = Source(Bytes::copy_from_slice(&r[..k]));
                r.advance(k);
                CkptMsg::Offer {
                    to,
                    id,
                    tid,
                    files,
                    source,
                }
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
    /// start serving its files, and report its manifest and where to fetch it with
    /// `ServerCore::checkpoint_made`; once every file was sent, report
    /// `ServerCore::checkpoint_served`.
    Make {
        /// Transfer id.
        id: u64,
        /// The recipient.
        to: ServerId,
    },
    /// Donor: transfer `id` ended (sent or abandoned): stop serving it and remove its files.
    /// Nothing to report.
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
    /// Recipient: fetch the files of transfer `id` from `source` into the side directory,
    /// check them against the manifest and the checkpoint's last transaction, make it the
    /// live store, open it, and report it with `ServerCore::checkpoint_ready`; report files
    /// that could not be fetched or did not match with `ServerCore::transfer_failed`.
    Fetch {
        /// Transfer id.
        id: u64,
        /// The donor.
        donor: ServerId,
        /// What the donor offers.
        manifest: Manifest,
        /// Where to fetch it, as the donor's shell wrote it.
        source: Source,
    },
    /// Recipient: transfer `id` was abandoned: stop fetching and remove its side directory.
    /// Nothing to report.
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
            CkptMsg::Offer {
                to: 1,
                id: 9,
                tid: Tid(5),
                files: vec![("CURRENT".into(), 16, 0xdead_beef)],
                source: Source(Bytes::from_static(b"127.0.0.1:9 key")),
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
        let evil = CkptMsg::Offer {
            to: 1,
            id: 9,
            tid: Tid(5),
            files: vec![("../etc".into(), 1, 0)],
            source: Source::default(),
        };
        assert_eq!(
            CkptMsg::decode(&evil.encode()),
            None,
            "path escapes refused"
        );
        let offer = CkptMsg::Offer {
            to: 1,
            id: 9,
            tid: Tid(5),
            files: vec![],
            source: Source(Bytes::from_static(b"addr and secret key")),
        };
        let shown = format!("{offer:?}");
        assert!(
            !shown.contains("secret") && shown.contains("19 bytes"),
            "{shown}"
        );
    }
}
