//! The client table: each client's last committed request, for idempotency.
//!
//! A client's commit carries its idempotency key `(client, request)` in the transaction's
//! header ([`storage::TxnMeta::request`]), not in an object of its own: one record less to
//! write and index per commit. Every server keeps the table in memory, exact as of its last
//! applied transaction, by noting each transaction's key as it applies it. To rebuild it
//! after a restart, a truncation or a new store without reading the whole log, the primary
//! writes the table as a reserved object ([`client_table_oid`]) in a transaction of its own
//! every `client_table_every` commits (or every as many commits as the table has entries,
//! whichever is more, so that writing it costs a bounded number of bytes per commit), in
//! each epoch's first transaction and just before a pack order; a rebuild reads that
//! object's revision at or before the point wanted and the keys of the transactions after
//! it. Applying a transaction that holds the table replaces the memory copy with it, so
//! every server's table is the same function of the history.
//!
//! Why rebuilds never miss a key: the log after the newest table is always there. A pack
//! never removes history after it (the apply of a pack order clamps its bound to the
//! table's tid); an object fill, which leaves no log before its consistency point, ends by
//! writing the table as of that point, which the donor computed and sent with the fill's
//! last chunk. Transactions written before keys existed held a client record object
//! instead (`client_oid`): a rebuild notes those too, and the primary reads one from the
//! store when the table has no entry for a client.
//!
//! The table holds at most `client_table_max` clients; a larger one drops the clients with
//! the oldest commits when it is written, and a retry of such a client's last request is
//! then taken as a new request.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use storage::{Direction, Oid, RequestKey, Storage, StorageError, Tid, TidRange, Transaction};

use crate::replica::{client_of_oid, client_request, RESERVED_OID_PREFIX};

/// The object holding the client table (see the module docs).
pub fn client_table_oid() -> Oid {
    Oid::new(Bytes::from_static(&[RESERVED_OID_PREFIX, b't'])).expect("short oid")
}

/// Format of the encoded table: a version byte, then the entries.
const TABLE_VERSION: u8 = 1;
/// Bytes per encoded entry: client, tid, request.
const ENTRY_BYTES: usize = 24;

/// The bytes a table of `clients` clients takes encoded.
pub fn encoded_len(clients: usize) -> usize {
    clients.saturating_mul(ENTRY_BYTES).saturating_add(1)
}

/// Each client's last committed request: client -> (tid, request).
#[derive(Clone, Debug, Default)]
pub struct ClientTable {
    last: BTreeMap<u64, (Tid, u64)>,
    /// The last transaction it reflects: one at or below it is noted already. (An async
    /// primary commits its transactions, and notes them, before the ring delivers them back
    /// to it; a table it wrote must not take it back when delivered.)
    at: Tid,
}

/// Two tables are equal when they hold the same clients, whatever point they were noted to.
impl PartialEq for ClientTable {
    fn eq(&self, other: &ClientTable) -> bool {
        self.last == other.last
    }
}

impl Eq for ClientTable {}

impl ClientTable {
    /// The tid and request number of `client`'s last committed request, if known.
    pub fn get(&self, client: u64) -> Option<(Tid, u64)> {
        self.last.get(&client).copied()
    }

    /// How many clients it holds.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether it holds no client.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// `client` committed `request` at `tid`. An older tid than the one held changes
    /// nothing (a transaction seen again, or a stale read merged in).
    pub fn note(&mut self, client: u64, tid: Tid, request: u64) {
        let e = self.last.entry(client).or_insert((tid, request));
        if e.0 < tid {
            *e = (tid, request);
        }
    }

    /// Notes what a transaction says of its clients: a table it holds replaces this one,
    /// then its key (and any client record of the format before keys) is noted. Returns
    /// whether it held a table.
    pub fn note_txn(&mut self, txn: &Transaction) -> Result<bool, StorageError> {
        if txn.tid <= self.at {
            return Ok(false);
        }
        self.at = txn.tid;
        let mut replaced = false;
        for r in &txn.records {
            if r.oid == client_table_oid() {
                self.last = ClientTable::decode(r.data.as_deref().unwrap_or_default())?.last;
                replaced = true;
            }
        }
        if let Some(RequestKey { client, request }) = txn.meta.request {
            self.note(client, txn.tid, request);
        }
        for r in &txn.records {
            if let Some(client) = client_of_oid(&r.oid) {
                self.note(client, txn.tid, client_request(r.data.as_deref()));
            }
        }
        Ok(replaced)
    }

    /// Drops the clients with the oldest commits until at most `max` are left.
    pub fn prune(&mut self, max: usize) {
        if self.last.len() <= max {
            return;
        }
        let mut by_age: Vec<(Tid, u64)> = self.last.iter().map(|(c, (t, _))| (*t, *c)).collect();
        by_age.sort_unstable();
        for (_, c) in &by_age[..self.last.len() - max] {
            self.last.remove(c);
        }
    }

    /// The table as an object's state.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(1 + self.last.len() * ENTRY_BYTES);
        b.put_u8(TABLE_VERSION);
        for (c, (t, r)) in &self.last {
            b.put_u64(*c);
            b.put_u64(t.0);
            b.put_u64(*r);
        }
        b.freeze()
    }

    /// Decodes [`Self::encode`]'s output; an error names what is wrong.
    pub fn decode(data: &[u8]) -> Result<ClientTable, StorageError> {
        let Some((&version, body)) = data.split_first() else {
            return Err(StorageError::corrupt("client table: empty".to_string()));
        };
        if version != TABLE_VERSION {
            return Err(StorageError::corrupt(format!(
                "client table: unknown version {version}"
            )));
        }
        if body.len() % ENTRY_BYTES != 0 {
            return Err(StorageError::corrupt(format!(
                "client table: {} bytes is not a whole number of entries",
                body.len()
            )));
        }
        let u64_at = |e: &[u8], i: usize| {
            u64::from_be_bytes(e[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        };
        let last = body
            .chunks_exact(ENTRY_BYTES)
            .map(|e| (u64_at(e, 0), (Tid(u64_at(e, 1)), u64_at(e, 2))))
            .collect();
        Ok(ClientTable {
            last,
            at: Tid::ZERO,
        })
    }
}

/// The client table as of `at`, from the store alone: the table object's revision at or
/// before `at`, then the keys of the transactions after it up to `at` (at most the distance
/// between two written tables). A store without a table (empty, or of the format before
/// keys) is read from its horizon. [`StorageError::HistoryTruncated`] if the revision
/// wanted is older than the history the store holds.
pub fn read_client_table<S: Storage + ?Sized>(
    store: &S,
    at: Tid,
) -> Result<ClientTable, StorageError> {
    let (mut table, from) = match store.load_at(&client_table_oid(), at)? {
        Some(rev) => match rev.data {
            Some(d) => (ClientTable::decode(&d)?, rev.tid),
            None => (ClientTable::default(), rev.tid),
        },
        None => (ClientTable::default(), Tid::ZERO),
    };
    let start = from.max(store.horizon()?);
    if start < at {
        let range = TidRange::new(Some(start.next()), Some(at));
        for txn in store.iter(range, Direction::Forward)? {
            table.note_txn(&txn?)?;
        }
    }
    table.at = at;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::client_oid;
    use storage::{Record, TxnMeta};

    fn keyed(tid: u64, client: u64, request: u64) -> Transaction {
        Transaction {
            tid: Tid(tid),
            meta: TxnMeta {
                request: Some(RequestKey { client, request }),
                ..TxnMeta::default()
            },
            records: vec![],
        }
    }

    /// A table holding client 4 (request 1 at tid 2), and a transaction at `tid` writing it.
    fn table_at(tid: u64) -> (ClientTable, Transaction) {
        let mut written = ClientTable::default();
        written.note(4, Tid(2), 1);
        let txn = Transaction {
            tid: Tid(tid),
            meta: TxnMeta::default(),
            records: vec![Record {
                oid: client_table_oid(),
                data: Some(written.encode()),
                expected_serial: None,
            }],
        };
        (written, txn)
    }

    #[test]
    fn notes_keys_and_old_client_records_and_keeps_the_newest() {
        let mut t = ClientTable::default();
        t.note_txn(&keyed(5, 1, 10)).unwrap();
        t.note_txn(&keyed(3, 1, 9)).unwrap();
        assert_eq!(t.get(1), Some((Tid(5), 10)));
        let old = Transaction {
            tid: Tid(6),
            meta: TxnMeta::default(),
            records: vec![Record {
                oid: client_oid(2),
                data: Some(Bytes::copy_from_slice(&7u64.to_be_bytes())),
                expected_serial: None,
            }],
        };
        t.note_txn(&old).unwrap();
        assert_eq!(t.get(2), Some((Tid(6), 7)));
        assert_eq!(t.get(3), None);
    }

    #[test]
    fn a_written_table_replaces_the_one_in_memory() {
        let (written, txn) = table_at(3);
        let mut t = ClientTable::default();
        t.note(9, Tid(1), 1);
        assert!(t.note_txn(&txn).unwrap());
        assert_eq!(t, written);
    }

    #[test]
    fn a_transaction_noted_already_changes_nothing() {
        // An async primary notes its commits as it makes them; its own table, delivered back
        // after them, must not take them back.
        let (_, table_txn) = table_at(3);
        let mut t = ClientTable::default();
        assert!(t.note_txn(&table_txn).unwrap());
        t.note_txn(&keyed(4, 4, 2)).unwrap();
        assert!(!t.note_txn(&table_txn).unwrap());
        assert_eq!(t.get(4), Some((Tid(4), 2)));
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let mut t = ClientTable::default();
        for c in 0..50 {
            t.note(c * 7, Tid(c + 100), c * 3);
        }
        let e = t.encode();
        assert_eq!(ClientTable::decode(&e).unwrap(), t);
        assert!(ClientTable::decode(&[]).is_err());
        assert!(ClientTable::decode(&e[..e.len() - 1]).is_err());
        let mut v = e.to_vec();
        v[0] = 9;
        assert!(ClientTable::decode(&v).is_err());
    }

    #[test]
    fn prune_drops_the_oldest_commits() {
        let mut t = ClientTable::default();
        for c in 0..10u64 {
            t.note(c, Tid(100 - c), 1);
        }
        t.prune(4);
        assert_eq!(t.len(), 4);
        for c in 0..4 {
            assert!(t.get(c).is_some(), "client {c} committed last");
        }
    }
}
