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
use crate::types::{Oid, Record, RequestKey, Tid, Transaction, TxnMeta, OID_LEN_MAX};

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
    // 3 and 4 were layout 1's current revisions and history entries.
    Lost = 5,
    MetaState = 6,
    Format = 7,
    Replication = 8,
    Revision = 9,
}

/// The on-disk layout, stored after the magic in the format marker (absent = layout 1: the
/// `current` and `history` column families, replaced in layout 2 by `revisions`).
pub(crate) const LAYOUT: u32 = 2;

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
    // Only when present: the digests of transactions written before keys existed hold.
    if let Some(k) = txn.meta.request {
        h.update(&[1]);
        h.update(&k.client.to_be_bytes());
        h.update(&k.request.to_be_bytes());
    }
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
        request: None,
    })
}

/// A request key goes last in its frame, and only when there is one: frames written before
/// keys existed end without it and still decode.
fn write_request(w: &mut Writer, k: Option<RequestKey>) {
    if let Some(k) = k {
        w.u8(1);
        w.u64(k.client);
        w.u64(k.request);
    }
}

fn read_request(r: &mut Reader<'_>) -> Result<Option<RequestKey>> {
    if r.at_end() {
        return Ok(None);
    }
    match r.u8()? {
        1 => Ok(Some(RequestKey {
            client: r.u64()?,
            request: r.u64()?,
        })),
        t => Err(StorageError::corrupt(format!(
            "unknown request key tag {t}"
        ))),
    }
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
        write_request(&mut w, m.request);
        w.finish()
    }
    pub(crate) fn decode(v: &[u8], what: &dyn Fn() -> String) -> Result<TxnHeader> {
        let mut r = Reader::open(Kind::TxnHeader, v, what)?;
        let mut meta = read_meta(&mut r)?;
        let record_count = r.u32()?;
        let digest = r.u32()?;
        meta.request = read_request(&mut r)?;
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
    write_request(&mut w, txn.meta.request);
    w.finish()
}

pub(crate) fn decode_lost(v: &[u8], what: &dyn Fn() -> String) -> Result<(Tid, Transaction)> {
    let mut r = Reader::open(Kind::Lost, v, what)?;
    let truncated_after = Tid(r.u64()?);
    let tid = Tid(r.u64()?);
    let mut meta = read_meta(&mut r)?;
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
    meta.request = read_request(&mut r)?;
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
    let mut w = Writer::new(Kind::Format, MAGIC.len() + 8);
    w.bytes(MAGIC);
    w.u32(LAYOUT);
    w.finish()
}

/// Checks the format marker: a standby store, in the layout this build reads.
pub(crate) fn check_format(v: &[u8]) -> Result<()> {
    let what = || "format marker".to_string();
    let mut r = Reader::open(Kind::Format, v, &what)?;
    let magic = r.bytes()?;
    if magic != MAGIC {
        return Err(StorageError::corrupt("format marker: not a standby store"));
    }
    let found = if r.buf.is_empty() { 1 } else { r.u32()? };
    r.finish()?;
    if found != LAYOUT {
        return Err(StorageError::Layout {
            found,
            reads: LAYOUT,
        });
    }
    Ok(())
}

/// A revision in the `revisions` column family: where its state is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RevValue {
    /// A committed state over [`crate::rocks`]'s inline limit: record `idx` of the
    /// transaction (key `tid ++ idx` in `txn`), written once.
    Ref(u32),
    /// A committed small state or a deletion, copied here so that a load is one read; it is
    /// also record `idx` of its transaction (which a pack deletes with it).
    Logged(u32, Option<Bytes>),
    /// A revision received by a fast-recovery fill: its transaction is not stored.
    Filled(Option<Bytes>),
}

impl RevValue {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            RevValue::Ref(idx) => {
                let mut w = Writer::new(Kind::Revision, 5);
                w.u8(0);
                w.u32(*idx);
                w.finish()
            }
            RevValue::Logged(idx, data) => {
                let mut w = Writer::new(Kind::Revision, data.as_ref().map_or(0, |d| d.len()) + 12);
                w.u8(1);
                w.u32(*idx);
                w.opt_data(data);
                w.finish()
            }
            RevValue::Filled(data) => {
                let mut w = Writer::new(Kind::Revision, data.as_ref().map_or(0, |d| d.len()) + 8);
                w.u8(2);
                w.opt_data(data);
                w.finish()
            }
        }
    }

    pub(crate) fn decode(v: &[u8], what: &dyn Fn() -> String) -> Result<RevValue> {
        let mut r = Reader::open(Kind::Revision, v, what)?;
        let rv = match r.u8()? {
            0 => RevValue::Ref(r.u32()?),
            1 => RevValue::Logged(r.u32()?, r.opt_data()?),
            2 => RevValue::Filled(r.opt_data()?),
            t => {
                return Err(StorageError::corrupt(format!(
                    "{}: bad revision tag {t}",
                    what()
                )))
            }
        };
        r.finish()?;
        Ok(rv)
    }

    /// Whether the revision holds a state (`false`: a deletion). Checks the whole value
    /// like [`RevValue::decode`] but does not copy the state.
    pub(crate) fn decode_live(v: &[u8], what: &dyn Fn() -> String) -> Result<bool> {
        let mut r = Reader::open(Kind::Revision, v, what)?;
        let tag = r.u8()?;
        let live = match tag {
            0 => {
                r.u32()?;
                true
            }
            1 | 2 => {
                if tag == 1 {
                    r.u32()?;
                }
                match r.u8()? {
                    0 => false,
                    1 => {
                        let n = r.u32()? as usize;
                        r.take(n)?;
                        true
                    }
                    f => {
                        return Err(StorageError::corrupt(format!(
                            "{}: bad data flag {f}",
                            what()
                        )))
                    }
                }
            }
            t => {
                return Err(StorageError::corrupt(format!(
                    "{}: bad revision tag {t}",
                    what()
                )))
            }
        };
        r.finish()?;
        Ok(live)
    }

    /// The record of the revision's transaction, if one is stored.
    pub(crate) fn record_idx(&self) -> Option<u32> {
        match self {
            RevValue::Ref(idx) | RevValue::Logged(idx, _) => Some(*idx),
            RevValue::Filled(_) => None,
        }
    }
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

    /// `revisions` column family: the oid, escaped so that byte order is oid order and no
    /// oid's keys are a prefix of another's (`0x00` becomes `0x00 0x01`, then `0x00 0x00`
    /// ends it), then the tid inverted (`!tid`, 8 bytes): an object's revisions are
    /// contiguous, newest first, so its current revision is the first key of its prefix.
    pub(crate) fn rev(oid: &Oid, tid: Tid) -> Vec<u8> {
        let mut k = rev_prefix(oid);
        k.extend_from_slice(&(!tid.0).to_be_bytes());
        k
    }

    /// The keys of every revision of `oid` start with this.
    pub(crate) fn rev_prefix(oid: &Oid) -> Vec<u8> {
        let o = oid.as_bytes();
        let mut k = Vec::with_capacity(o.len() + 12);
        for &b in o {
            k.push(b);
            if b == 0 {
                k.push(1);
            }
        }
        k.extend_from_slice(&[0, 0]);
        k
    }

    /// A key after every revision of the object whose prefix is `prefix` and before the
    /// next object's (tid 0 is never stored, so no revision has the inverted tid `!0`).
    pub(crate) fn rev_past(prefix: &[u8]) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&[0xFF; 8]);
        k
    }

    /// The length of the escaped-oid prefix of a `revisions` key (through its `0x00 0x00`).
    fn rev_prefix_len(k: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i + 1 < k.len() {
            match (k[i], k[i + 1]) {
                (0, 0) => return Some(i + 2),
                (0, _) => i += 2,
                _ => i += 1,
            }
        }
        None
    }

    /// RocksDB's prefix extractor of `revisions`: the escaped oid (the whole key if it has
    /// no prefix, which `rev_in_domain` keeps RocksDB from asking).
    pub(crate) fn rev_prefix_of(k: &[u8]) -> &[u8] {
        &k[..rev_prefix_len(k).unwrap_or(k.len())]
    }

    /// Whether a key has an escaped-oid prefix (every key the store writes has).
    pub(crate) fn rev_in_domain(k: &[u8]) -> bool {
        rev_prefix_len(k).is_some()
    }

    /// The oid and tid of a `revisions` key, and the length of its oid prefix.
    pub(crate) fn parse_rev(k: &[u8]) -> Result<(Oid, Tid, usize)> {
        let bad =
            || StorageError::corrupt(format!("revision key of {} bytes is malformed", k.len()));
        let mut oid = Vec::with_capacity(k.len().saturating_sub(10));
        let mut i = 0;
        loop {
            match (k.get(i), k.get(i + 1)) {
                (Some(0), Some(0)) => break,
                (Some(0), Some(1)) => {
                    oid.push(0);
                    i += 2;
                }
                (Some(0), _) | (None, _) => return Err(bad()),
                (Some(&b), _) => {
                    oid.push(b);
                    i += 1;
                }
            }
        }
        let prefix = i + 2;
        let t: [u8; 8] = k
            .get(prefix..)
            .and_then(|t| t.try_into().ok())
            .ok_or_else(bad)?;
        let oid = Oid::new(bytes::Bytes::from(oid)).map_err(|_| bad())?;
        Ok((oid, Tid(!u64::from_be_bytes(t)), prefix))
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

    fn revision_values() -> Vec<RevValue> {
        vec![
            RevValue::Ref(3),
            RevValue::Logged(1, None),
            RevValue::Logged(2, Some(Bytes::new())),
            RevValue::Logged(4, Some(Bytes::from_static(b"hello"))),
            RevValue::Filled(None),
            RevValue::Filled(Some(Bytes::from_static(b"state"))),
        ]
    }

    #[test]
    fn frame_round_trip_and_corruption() {
        let what = || "test".to_string();
        for rv in revision_values() {
            let v = rv.encode();
            assert_eq!(RevValue::decode(&v, &what).unwrap(), rv);
            let live = !matches!(rv, RevValue::Logged(_, None) | RevValue::Filled(None));
            assert_eq!(RevValue::decode_live(&v, &what).unwrap(), live);
            // Every single-bit flip is detected.
            for i in 0..v.len() * 8 {
                let mut w = v.clone();
                w[i / 8] ^= 1 << (i % 8);
                assert!(matches!(
                    RevValue::decode(&w, &what),
                    Err(StorageError::Corrupt { .. })
                ));
                assert!(RevValue::decode_live(&w, &what).is_err());
            }
            // Every truncation is detected.
            for n in 0..v.len() {
                assert!(matches!(
                    RevValue::decode(&v[..n], &what),
                    Err(StorageError::Corrupt { .. })
                ));
                assert!(RevValue::decode_live(&v[..n], &what).is_err());
            }
            // A value of another kind is refused.
            assert!(matches!(
                decode_record(&v, &what),
                Err(StorageError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn headers_without_a_request_key_are_those_of_before_keys() {
        let what = || "test".to_string();
        let mut h = TxnHeader {
            meta: TxnMeta {
                user: Bytes::from_static(b"u"),
                description: Bytes::from_static(b"d"),
                extension: Bytes::from_static(b"x"),
                time: 7,
                request: None,
            },
            record_count: 2,
            digest: 9,
        };
        // The frame written before keys existed: meta, count, digest.
        let mut w = Writer::new(Kind::TxnHeader, 64);
        write_meta(&mut w, &h.meta);
        w.u32(2);
        w.u32(9);
        let old = w.finish();
        assert_eq!(h.encode(), old);
        assert_eq!(TxnHeader::decode(&old, &what).unwrap(), h);
        h.meta.request = Some(RequestKey {
            client: 3,
            request: u64::MAX,
        });
        let new = h.encode();
        assert_eq!(TxnHeader::decode(&new, &what).unwrap(), h);
        // A damaged tag is refused, not taken for another key.
        let mut bad = new.clone();
        let tag = old.len() - 4;
        bad[tag] = 2;
        let n = bad.len();
        let crc = crc32fast::hash(&bad[..n - 4]);
        bad[n - 4..].copy_from_slice(&crc.to_be_bytes());
        assert!(TxnHeader::decode(&bad, &what).is_err());
    }

    #[test]
    fn wrong_version_is_named() {
        let mut v = RevValue::Filled(None).encode();
        v[0] = 9;
        let n = v.len();
        let crc = crc32fast::hash(&v[..n - 4]);
        v[n - 4..].copy_from_slice(&crc.to_be_bytes());
        let err = RevValue::decode(&v, &|| "x".into()).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");
    }

    #[test]
    fn format_marker_names_the_layout() {
        check_format(&encode_format()).unwrap();
        // Layout 1's marker: the magic alone.
        let mut w = Writer::new(Kind::Format, MAGIC.len() + 4);
        w.bytes(MAGIC);
        assert!(matches!(
            check_format(&w.finish()),
            Err(StorageError::Layout {
                found: 1,
                reads: LAYOUT
            })
        ));
        let mut w = Writer::new(Kind::Format, MAGIC.len() + 8);
        w.bytes(b"something else");
        w.u32(LAYOUT);
        assert!(matches!(
            check_format(&w.finish()),
            Err(StorageError::Corrupt { .. })
        ));
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
    }

    proptest::proptest! {
        /// Revision keys sort by oid (byte order), then newest first, whatever the oids'
        /// lengths and zero bytes; an oid's keys all start with its prefix and no other
        /// oid's do; the key parses back.
        #[test]
        fn revision_keys_sort_by_oid_then_newest_first(
            a in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 2, 0xFF]), 0..6),
            b in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 2, 0xFF]), 0..6),
            ta in 1u64..=u64::MAX,
            tb in 1u64..=u64::MAX,
        ) {
            let (oa, ob) = (Oid::new(a.clone()).unwrap(), Oid::new(b.clone()).unwrap());
            let (ka, kb) = (keys::rev(&oa, Tid(ta)), keys::rev(&ob, Tid(tb)));
            let expected = a.cmp(&b).then(tb.cmp(&ta));
            proptest::prop_assert_eq!(ka.cmp(&kb), expected);
            let pa = keys::rev_prefix(&oa);
            proptest::prop_assert!(ka.starts_with(&pa));
            proptest::prop_assert_eq!(kb.starts_with(&pa), a == b);
            proptest::prop_assert!(ka < keys::rev_past(&pa));
            proptest::prop_assert_eq!(kb < keys::rev_past(&pa), b <= a);
            let (o, t, n) = keys::parse_rev(&ka).unwrap();
            proptest::prop_assert_eq!((o, t, n), (oa, Tid(ta), pa.len()));
            proptest::prop_assert_eq!(keys::rev_prefix_of(&ka), &pa[..]);
            proptest::prop_assert_eq!(keys::rev_prefix_of(&pa), &pa[..]);
            proptest::prop_assert!(keys::rev_in_domain(&ka));
        }
    }

    #[test]
    fn malformed_revision_keys_are_corrupt() {
        for k in [
            &b""[..],
            b"\x00",
            b"ab\x00\x02",
            b"ab\x00\x00",
            b"ab\x00\x00\x01",
            // One byte past a revision key.
            b"ab\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09",
        ] {
            assert!(matches!(
                keys::parse_rev(k),
                Err(StorageError::Corrupt { .. })
            ));
        }
    }
}
