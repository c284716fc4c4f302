// The value formats serve the RocksDB backend; the in-memory one uses only a few of them.
#![cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
//! Value and key encodings (shared by the RocksDB backend and the in-memory checksums).
//!
//! Every stored value is framed as
//!
//! ```text
//! [format version: u8 = 1][kind: u8][payload ...][crc32 of everything before: u32 BE]
//! ```
//!
//! Integers are big-endian, byte strings are `u32 BE length ++ bytes`, an optional state is
//! `0u8` (deleted) or `1u8 ++ bytes`. Decoding checks the length, the checksum, the version,
//! the kind and that the payload is consumed exactly; any mismatch is
//! [`StorageError::Corrupt`] naming what was being read.

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::types::{Oid, Record, Tid, Transaction, TxnMeta, OID_LEN_MAX};

/// Version of the value format. Bump on any incompatible change.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// The first bytes of the format marker stored under the meta key `format`.
pub(crate) const MAGIC: &[u8] = b"standby-storage";

/// Value kinds (second byte of every value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    TxnHeader = 1,
    TxnRecord = 2,
    Current = 3,
    History = 4,
    Lost = 5,
    MetaState = 6,
    Format = 7,
    Replication = 8,
}

pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(kind: Kind, capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity + 6);
        buf.push(FORMAT_VERSION);
        buf.push(kind as u8);
        Writer { buf }
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        // Lengths are bounded by validate_txn (DATA_LEN_MAX < u32::MAX).
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn opt_data(&mut self, v: &Option<Bytes>) {
        match v {
            None => self.u8(0),
            Some(d) => {
                self.u8(1);
                self.bytes(d);
            }
        }
    }
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'a dyn Fn() -> String,
}

impl<'a> Reader<'a> {
    /// Checks the frame of `value` and returns a reader over its payload.
    pub(crate) fn open(kind: Kind, value: &'a [u8], what: &'a dyn Fn() -> String) -> Result<Self> {
        if value.len() < 6 {
            return Err(StorageError::corrupt(format!(
                "{}: value of {} bytes is too short",
                what(),
                value.len()
            )));
        }
        let (body, crc) = value.split_at(value.len() - 4);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(StorageError::corrupt(format!(
                "{}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})",
                what()
            )));
        }
        if body[0] != FORMAT_VERSION {
            return Err(StorageError::corrupt(format!(
                "{}: unknown format version {} (this build reads {FORMAT_VERSION})",
                what(),
                body[0]
            )));
        }
        if body[1] != kind as u8 {
            return Err(StorageError::corrupt(format!(
                "{}: value of kind {} where kind {} ({kind:?}) was expected",
                what(),
                body[1],
                kind as u8
            )));
        }
        Ok(Reader {
            buf: &body[2..],
            what,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(StorageError::corrupt(format!(
                "{}: truncated value (needed {n} more bytes, {} left)",
                (self.what)(),
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn bytes(&mut self) -> Result<Bytes> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    pub(crate) fn oid(&mut self) -> Result<Oid> {
        let b = self.bytes()?;
        if b.len() > OID_LEN_MAX {
            return Err(StorageError::corrupt(format!(
                "{}: stored oid of {} bytes",
                (self.what)(),
                b.len()
            )));
        }
        Oid::new(b)
    }
    pub(crate) fn opt_data(&mut self) -> Result<Option<Bytes>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            f => Err(StorageError::corrupt(format!(
                "{}: bad data flag {f}",
                (self.what)()
            ))),
        }
    }
    /// Whether the payload is consumed.
    pub(crate) fn at_end(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(StorageError::corrupt(format!(
                "{}: {} trailing bytes",
                (self.what)(),
                self.buf.len()
            )))
        }
    }
}

/// A checksum of a transaction's content (tid, metadata, oids and states; not the expected
/// serials). Stored in the transaction header so that `apply` can recognise a duplicate
/// even after `pack` removed some of its records.
pub(crate) fn txn_digest(txn: &Transaction) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&txn.tid.to_be_bytes());
    for f in [&txn.meta.user, &txn.meta.description, &txn.meta.extension] {
        h.update(&(f.len() as u64).to_be_bytes());
        h.update(f);
    }
    h.update(&txn.meta.time.to_be_bytes());
    h.update(&(txn.records.len() as u64).to_be_bytes());
    for r in &txn.records {
        h.update(&(r.oid.as_bytes().len() as u64).to_be_bytes());
        h.update(r.oid.as_bytes());
        match &r.data {
            None => h.update(&[0]),
            Some(d) => {
                h.update(&[1]);
                h.update(&(d.len() as u64).to_be_bytes());
                h.update(d);
            }
        }
    }
    h.finalize()
}

/// The header of a stored transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnHeader {
    pub(crate) meta: TxnMeta,
    /// Records at commit time (pack may have removed some since).
    pub(crate) record_count: u32,
    pub(crate) digest: u32,
}

fn write_meta(w: &mut Writer, meta: &TxnMeta) {
    w.bytes(&meta.user);
    w.bytes(&meta.description);
    w.bytes(&meta.extension);
    w.u64(meta.time);
}

fn read_meta(r: &mut Reader<'_>) -> Result<TxnMeta> {
    Ok(TxnMeta {
        user: r.bytes()?,
        description: r.bytes()?,
        extension: r.bytes()?,
        time: r.u64()?,
    })
}

impl TxnHeader {
    pub(crate) fn of(txn: &Transaction) -> TxnHeader {
        TxnHeader {
            meta: txn.meta.clone(),
            record_count: txn.records.len() as u32,
            digest: txn_digest(txn),
        }
    }
    pub(crate) fn encode(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut w = Writer::new(
            Kind::TxnHeader,
            m.user.len() + m.description.len() + m.extension.len() + 32,
        );
        write_meta(&mut w, m);
        w.u32(self.record_count);
        w.u32(self.digest);
        w.finish()
    }
    pub(crate) fn decode(v: &[u8], what: &dyn Fn() -> String) -> Result<TxnHeader> {
        let mut r = Reader::open(Kind::TxnHeader, v, what)?;
        let meta = read_meta(&mut r)?;
        let record_count = r.u32()?;
        let digest = r.u32()?;
        r.finish()?;
        Ok(TxnHeader {
            meta,
            record_count,
            digest,
        })
    }
}

pub(crate) fn encode_record(oid: &Oid, data: &Option<Bytes>) -> Vec<u8> {
    let len = oid.as_bytes().len() + data.as_ref().map_or(0, |d| d.len());
    let mut w = Writer::new(Kind::TxnRecord, len + 16);
    w.bytes(oid.as_bytes());
    w.opt_data(data);
    w.finish()
}

pub(crate) fn decode_record(v: &[u8], what: &dyn Fn() -> String) -> Result<Record> {
    let mut r = Reader::open(Kind::TxnRecord, v, what)?;
    let oid = r.oid()?;
    let data = r.opt_data()?;
    r.finish()?;
    Ok(Record {
        oid,
        data,
        expected_serial: None,
    })
}

pub(crate) fn encode_current(tid: Tid, data: &Option<Bytes>) -> Vec<u8> {
    let mut w = Writer::new(Kind::Current, data.as_ref().map_or(0, |d| d.len()) + 16);
    w.u64(tid.0);
    w.opt_data(data);
    w.finish()
}

/// A current revision whose state is record `idx` of its transaction (key `tid ++ idx` in
/// `txn`): large states are written once, not twice.
pub(crate) fn encode_current_ref(tid: Tid, idx: u32) -> Vec<u8> {
    let mut w = Writer::new(Kind::Current, 13);
    w.u64(tid.0);
    w.u8(CURRENT_REF);
    w.u32(idx);
    w.finish()
}

/// Data flag of a current value that refers to its transaction's record.
const CURRENT_REF: u8 = 2;

/// A current revision: its tid and where its state is (inline, or a record of the
/// transaction at that tid).
pub(crate) fn decode_current(v: &[u8], what: &dyn Fn() -> String) -> Result<(Tid, HistoryValue)> {
    let mut r = Reader::open(Kind::Current, v, what)?;
    let tid = Tid(r.u64()?);
    let state = match r.buf.first() {
        Some(&CURRENT_REF) => {
            r.u8()?;
            HistoryValue::Ref(r.u32()?)
        }
        _ => HistoryValue::Inline(r.opt_data()?),
    };
    r.finish()?;
    Ok((tid, state))
}

/// The tid of a current revision and whether it holds a state (`false`: a deletion). Checks
/// the whole value like [`decode_current`] but does not copy the state.
pub(crate) fn decode_current_head(v: &[u8], what: &dyn Fn() -> String) -> Result<(Tid, bool)> {
    let mut r = Reader::open(Kind::Current, v, what)?;
    let tid = Tid(r.u64()?);
    let live = match r.u8()? {
        0 => false,
        1 => {
            let n = r.u32()? as usize;
            r.take(n)?;
            true
        }
        CURRENT_REF => {
            r.u32()?;
            true
        }
        f => {
            return Err(StorageError::corrupt(format!(
                "{}: bad data flag {f}",
                what()
            )))
        }
    };
    r.finish()?;
    Ok((tid, live))
}

/// Where a revision's state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HistoryValue {
    /// In the transaction's record number `idx` (key `tid ++ idx`).
    Ref(u32),
    /// Inline: a revision received by a fast-recovery fill, whose transaction is absent.
    Inline(Option<Bytes>),
}

impl HistoryValue {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            HistoryValue::Ref(idx) => {
                let mut w = Writer::new(Kind::History, 5);
                w.u8(0);
                w.u32(*idx);
                w.finish()
            }
            HistoryValue::Inline(data) => {
                let mut w = Writer::new(Kind::History, data.as_ref().map_or(0, |d| d.len()) + 8);
                w.u8(1);
                w.opt_data(data);
                w.finish()
            }
        }
    }
    pub(crate) fn decode(v: &[u8], what: &dyn Fn() -> String) -> Result<HistoryValue> {
        let mut r = Reader::open(Kind::History, v, what)?;
        let hv = match r.u8()? {
            0 => HistoryValue::Ref(r.u32()?),
            1 => HistoryValue::Inline(r.opt_data()?),
            t => {
                return Err(StorageError::corrupt(format!(
                    "{}: bad history tag {t}",
                    what()
                )))
            }
        };
        r.finish()?;
        Ok(hv)
    }
}

pub(crate) fn encode_lost(truncated_after: Tid, txn: &Transaction) -> Vec<u8> {
    let size: usize = txn
        .records
        .iter()
        .map(|r| r.oid.as_bytes().len() + r.data.as_ref().map_or(0, |d| d.len()) + 9)
        .sum();
    let mut w = Writer::new(Kind::Lost, size + 64);
    w.u64(truncated_after.0);
    w.u64(txn.tid.0);
    write_meta(&mut w, &txn.meta);
    w.u32(txn.records.len() as u32);
    for rec in &txn.records {
        w.bytes(rec.oid.as_bytes());
        w.opt_data(&rec.data);
    }
    w.finish()
}

pub(crate) fn decode_lost(v: &[u8], what: &dyn Fn() -> String) -> Result<(Tid, Transaction)> {
    let mut r = Reader::open(Kind::Lost, v, what)?;
    let truncated_after = Tid(r.u64()?);
    let tid = Tid(r.u64()?);
    let meta = read_meta(&mut r)?;
    let n = r.u32()?;
    let mut records = Vec::new();
    for _ in 0..n {
        let oid = r.oid()?;
        let data = r.opt_data()?;
        records.push(Record {
            oid,
            data,
            expected_serial: None,
        });
    }
    r.finish()?;
    Ok((truncated_after, Transaction { tid, meta, records }))
}

/// The store-wide state, kept under one meta key and rewritten by every write batch, so
/// that data and `last_transaction` change atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MetaState {
    /// The last transaction (or fast-recovery point).
    pub(crate) last: Tid,
    /// The oldest state reproduced exactly (see `StorageError::HistoryTruncated`).
    pub(crate) horizon: Tid,
    /// The consistency point of the last finished fill (`Tid::ZERO`: none).
    pub(crate) fill_tid: Tid,
    /// The next lost-archive sequence number.
    pub(crate) lost_seq_next: u64,
    /// An unfinished fill: greatest oid and greatest revision tid written so far.
    pub(crate) fill: Option<(Oid, Tid)>,
    /// Objects whose current revision is not a deletion (`Storage::object_count`). The last
    /// field: a state written before it existed ends without it (see `decode_versioned`).
    pub(crate) objects: u64,
}

impl MetaState {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::MetaState, 64);
        w.u64(self.last.0);
        w.u64(self.horizon.0);
        w.u64(self.fill_tid.0);
        w.u64(self.lost_seq_next);
        match &self.fill {
            None => w.u8(0),
            Some((oid, tid)) => {
                w.u8(1);
                w.bytes(oid.as_bytes());
                w.u64(tid.0);
            }
        }
        w.u64(self.objects);
        w.finish()
    }
    /// Decodes a state that has the object count (every state an open store writes).
    pub(crate) fn decode(v: &[u8]) -> Result<MetaState> {
        match MetaState::decode_versioned(v)? {
            (meta, true) => Ok(meta),
            (_, false) => Err(StorageError::corrupt(
                "meta state: the object count is missing",
            )),
        }
    }
    /// Decodes a state, with or without the object count; `false`: the state was written by
    /// a version without it, `objects` is 0 and the objects must be counted.
    pub(crate) fn decode_versioned(v: &[u8]) -> Result<(MetaState, bool)> {
        let what = || "meta state".to_string();
        let mut r = Reader::open(Kind::MetaState, v, &what)?;
        let last = Tid(r.u64()?);
        let horizon = Tid(r.u64()?);
        let fill_tid = Tid(r.u64()?);
        let lost_seq_next = r.u64()?;
        let fill = match r.u8()? {
            0 => None,
            1 => Some((r.oid()?, Tid(r.u64()?))),
            t => {
                return Err(StorageError::corrupt(format!(
                    "meta state: bad fill tag {t}"
                )))
            }
        };
        let counted = !r.at_end();
        let objects = if counted { r.u64()? } else { 0 };
        r.finish()?;
        Ok((
            MetaState {
                last,
                horizon,
                fill_tid,
                lost_seq_next,
                fill,
                objects,
            },
            counted,
        ))
    }
}

/// The replication state (`meta/replication`): opaque bytes, at most `META_LEN_MAX`.
pub(crate) fn encode_replication(state: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(Kind::Replication, state.len() + 4);
    w.bytes(state);
    w.finish()
}

pub(crate) fn decode_replication(v: &[u8]) -> Result<Bytes> {
    let what = || "replication state".to_string();
    let mut r = Reader::open(Kind::Replication, v, &what)?;
    let state = r.bytes()?;
    r.finish()?;
    Ok(state)
}

pub(crate) fn encode_format() -> Vec<u8> {
    let mut w = Writer::new(Kind::Format, MAGIC.len() + 4);
    w.bytes(MAGIC);
    w.finish()
}

pub(crate) fn check_format(v: &[u8]) -> Result<()> {
    let what = || "format marker".to_string();
    let mut r = Reader::open(Kind::Format, v, &what)?;
    let magic = r.bytes()?;
    r.finish()?;
    if magic != MAGIC {
        return Err(StorageError::corrupt("format marker: not a standby store"));
    }
    Ok(())
}

/// Keys. Big-endian throughout, so that byte order is tid order.
pub(crate) mod keys {
    use crate::error::{Result, StorageError};
    use crate::types::{Oid, Tid};

    /// Index of the header under a transaction's tid; record `i` is at `i + 1`.
    pub(crate) const HEADER_IDX: u32 = 0;

    /// `txn` column family: `tid (8) ++ idx (4)`.
    pub(crate) fn txn(tid: Tid, idx: u32) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&tid.to_be_bytes());
        k[8..].copy_from_slice(&idx.to_be_bytes());
        k
    }

    pub(crate) fn parse_txn(k: &[u8]) -> Result<(Tid, u32)> {
        if k.len() != 12 {
            return Err(StorageError::corrupt(format!(
                "txn key of {} bytes (expected 12)",
                k.len()
            )));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&k[..8]);
        let mut i = [0u8; 4];
        i.copy_from_slice(&k[8..]);
        Ok((Tid(u64::from_be_bytes(t)), u32::from_be_bytes(i)))
    }

    /// `history` column family: `oid length (u16) ++ oid ++ tid (8)`. The length prefix keeps
    /// each oid's revisions contiguous and sorted by tid.
    pub(crate) fn history(oid: &Oid, tid: Tid) -> Vec<u8> {
        let o = oid.as_bytes();
        let mut k = Vec::with_capacity(o.len() + 10);
        k.extend_from_slice(&(o.len() as u16).to_be_bytes());
        k.extend_from_slice(o);
        k.extend_from_slice(&tid.to_be_bytes());
        k
    }

    /// The oid prefix of `history` keys.
    pub(crate) fn history_prefix(oid: &Oid) -> Vec<u8> {
        let o = oid.as_bytes();
        let mut k = Vec::with_capacity(o.len() + 2);
        k.extend_from_slice(&(o.len() as u16).to_be_bytes());
        k.extend_from_slice(o);
        k
    }

    pub(crate) fn parse_history(k: &[u8]) -> Result<(Oid, Tid)> {
        let bad =
            || StorageError::corrupt(format!("history key of {} bytes is malformed", k.len()));
        if k.len() < 10 {
            return Err(bad());
        }
        let n = u16::from_be_bytes([k[0], k[1]]) as usize;
        if k.len() != n + 10 {
            return Err(bad());
        }
        let oid = Oid::new(bytes::Bytes::copy_from_slice(&k[2..2 + n])).map_err(|_| bad())?;
        let mut t = [0u8; 8];
        t.copy_from_slice(&k[2 + n..]);
        Ok((oid, Tid(u64::from_be_bytes(t))))
    }

    /// `lost` column family: archive sequence number (8).
    pub(crate) fn lost(seq: u64) -> [u8; 8] {
        seq.to_be_bytes()
    }

    /// `meta` column family keys.
    pub(crate) const META_FORMAT: &[u8] = b"format";
    pub(crate) const META_STATE: &[u8] = b"state";
    pub(crate) const META_REPLICATION: &[u8] = b"replication";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_corruption() {
        let v = encode_current(Tid(7), &Some(Bytes::from_static(b"hello")));
        let what = || "test".to_string();
        assert_eq!(
            decode_current(&v, &what).unwrap(),
            (
                Tid(7),
                HistoryValue::Inline(Some(Bytes::from_static(b"hello")))
            )
        );
        // Every single-bit flip is detected.
        for i in 0..v.len() * 8 {
            let mut w = v.clone();
            w[i / 8] ^= 1 << (i % 8);
            assert!(matches!(
                decode_current(&w, &what),
                Err(StorageError::Corrupt { .. })
            ));
        }
        // Every truncation is detected.
        for n in 0..v.len() {
            assert!(matches!(
                decode_current(&v[..n], &what),
                Err(StorageError::Corrupt { .. })
            ));
        }
        // A value of another kind is refused.
        assert!(matches!(
            HistoryValue::decode(&v, &what),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn wrong_version_is_named() {
        let mut v = encode_current(Tid(7), &None);
        v[0] = 9;
        let n = v.len();
        let crc = crc32fast::hash(&v[..n - 4]);
        v[n - 4..].copy_from_slice(&crc.to_be_bytes());
        let err = decode_current(&v, &|| "x".into()).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");
    }

    #[test]
    fn current_ref_round_trip_and_corruption() {
        let what = || "test".to_string();
        let v = encode_current_ref(Tid(11), 3);
        assert_eq!(
            decode_current(&v, &what).unwrap(),
            (Tid(11), HistoryValue::Ref(3))
        );
        assert_eq!(decode_current_head(&v, &what).unwrap(), (Tid(11), true));
        for n in 0..v.len() {
            assert!(decode_current(&v[..n], &what).is_err());
            assert!(decode_current_head(&v[..n], &what).is_err());
        }
        for i in 0..v.len() * 8 {
            let mut w = v.clone();
            w[i / 8] ^= 1 << (i % 8);
            assert!(decode_current(&w, &what).is_err());
        }
    }

    #[test]
    fn current_head_matches_current() {
        let what = || "test".to_string();
        for data in [None, Some(Bytes::new()), Some(Bytes::from_static(b"state"))] {
            let v = encode_current(Tid(9), &data);
            assert_eq!(
                decode_current_head(&v, &what).unwrap(),
                (Tid(9), data.is_some())
            );
            for n in 0..v.len() {
                assert!(decode_current_head(&v[..n], &what).is_err());
            }
            let mut w = v.clone();
            w[10] ^= 0x80;
            assert!(matches!(
                decode_current_head(&w, &what),
                Err(StorageError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn meta_state_with_and_without_the_object_count() {
        let meta = MetaState {
            last: Tid(7),
            horizon: Tid(3),
            fill_tid: Tid(2),
            lost_seq_next: 4,
            fill: Some((Oid::from_u64(5), Tid(6))),
            objects: 42,
        };
        let v = meta.encode();
        assert_eq!(MetaState::decode(&v).unwrap(), meta);
        assert_eq!(
            MetaState::decode_versioned(&v).unwrap(),
            (meta.clone(), true)
        );
        // The same state as written before the count existed: the count is its last field.
        let n = v.len();
        let mut old = v[..n - 12].to_vec();
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_be_bytes());
        let uncounted = MetaState {
            objects: 0,
            ..meta.clone()
        };
        assert_eq!(
            MetaState::decode_versioned(&old).unwrap(),
            (uncounted, false)
        );
        let e = MetaState::decode(&old).unwrap_err();
        assert!(e.to_string().contains("object count"), "{e}");
        // A partial count is refused.
        let mut bad = v[..n - 8].to_vec();
        let crc = crc32fast::hash(&bad);
        bad.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            MetaState::decode_versioned(&bad),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn replication_state_round_trip() {
        for state in [&b""[..], b"epoch 7"] {
            let v = encode_replication(state);
            assert_eq!(
                decode_replication(&v).unwrap(),
                Bytes::copy_from_slice(state)
            );
            let mut w = v.clone();
            w[3] ^= 1;
            assert!(matches!(
                decode_replication(&w),
                Err(StorageError::Corrupt { .. })
            ));
        }
        assert!(matches!(
            decode_replication(&encode_format()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn txn_keys_sort_by_tid() {
        assert!(keys::txn(Tid(1), 5) < keys::txn(Tid(2), 0));
        assert!(keys::txn(Tid(255), 0) < keys::txn(Tid(256), 0));
        assert_eq!(keys::parse_txn(&keys::txn(Tid(9), 3)).unwrap(), (Tid(9), 3));
        let o = Oid::new(&b"ab"[..]).unwrap();
        assert!(keys::history(&o, Tid(1)) < keys::history(&o, Tid(2)));
        assert_eq!(
            keys::parse_history(&keys::history(&o, Tid(4))).unwrap(),
            (o, Tid(4))
        );
    }
}
