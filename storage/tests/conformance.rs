//! The conformance suite against every backend.

use storage::testing::suite::{self, Harness};
use storage::{MemOptions, MemStorage};

struct MemHarness(MemOptions);

impl Harness for MemHarness {
    type S = MemStorage;
    fn fresh(&mut self) -> MemStorage {
        MemStorage::new(self.0)
    }
    fn restart(&mut self, store: MemStorage) -> MemStorage {
        store.crash();
        store
    }
}

#[test]
fn mem_conformance() {
    suite::run_all(&mut MemHarness(MemOptions { sync: true }));
}

#[test]
fn mem_unsynced_crash_loses_only_unsynced_writes() {
    use storage::testing::suite::txn;
    use storage::{Storage, Tid};
    let s = MemStorage::new(MemOptions { sync: false });
    s.commit(&txn(1, &[(1, Some("a"))])).unwrap();
    s.sync().unwrap();
    s.commit(&txn(2, &[(1, Some("b"))])).unwrap();
    s.commit(&txn(3, &[(2, Some("c"))])).unwrap();
    assert_eq!(s.pending_writes(), 2);
    s.crash_keeping(1);
    assert_eq!(s.last_transaction().unwrap(), Tid(2));
    assert_eq!(s.load(&suite::oid(2)).unwrap(), None);
    s.crash();
    assert_eq!(
        s.last_transaction().unwrap(),
        Tid(2),
        "kept writes are now durable"
    );
    s.commit(&txn(3, &[(2, Some("c"))])).unwrap();
    s.crash();
    assert_eq!(s.last_transaction().unwrap(), Tid(2));
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::*;
    use storage::{RocksOptions, RocksStorage};

    struct RocksHarness {
        dirs: Vec<tempfile::TempDir>,
        sync: bool,
    }

    impl Harness for RocksHarness {
        type S = RocksStorage;
        fn fresh(&mut self) -> RocksStorage {
            let d = tempfile::tempdir().unwrap();
            let s = RocksStorage::open(d.path(), self.opts()).unwrap();
            self.dirs.push(d);
            s
        }
        fn restart(&mut self, store: RocksStorage) -> RocksStorage {
            let path = store.path().to_path_buf();
            drop(store);
            RocksStorage::open(path, self.opts()).unwrap()
        }
    }

    impl RocksHarness {
        fn opts(&self) -> RocksOptions {
            RocksOptions {
                sync: self.sync,
                block_cache_bytes: 4 << 20,
                ..storage::RocksOptions::default()
            }
        }
    }

    #[test]
    fn rocks_conformance_sync() {
        suite::run_all(&mut RocksHarness {
            dirs: Vec::new(),
            sync: true,
        });
    }
}
