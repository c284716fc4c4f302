//! Transactional storage adapter (see issue: storage). Filled by the storage work.
