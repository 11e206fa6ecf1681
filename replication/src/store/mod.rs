//! Storage: the Raft log and the state machine in one sled database.
//!
//! ```text
//!   openraft ──append──▶ LogStore (tree `log`, `raft_meta`) ──▶ Flusher: one fsync per group
//!       │
//!       └──apply──▶ StateMachineStore (tree `sm.N`: config, CDRs, indexes, applied id)
//!                        │                       │
//!                        └─ snapshots/ (files) ◀─┘ build / install
//!   node (API) ──reads──▶ query:: functions on the current `sm.N` tree
//! ```
//!
//! Only this module touches sled. The rest of tandem sees the openraft traits
//! (writes) and [`query`] (reads); replacing the engine means rewriting this module.

pub mod apply;
pub mod codec;
pub mod durable;
pub mod keys;
// openraft's storage traits fix the error type (StorageError, ~224 bytes).
#[allow(clippy::result_large_err)]
pub mod log;
pub mod query;
#[allow(clippy::result_large_err)]
pub mod sm;

use std::path::Path;

pub use log::LogStore;

/// A handle on the state-machine tree for reads (see [`query`]).
pub type Tree = sled::Tree;
pub use sm::{SmShared, StateMachineStore};

/// Open (or create) the store under `dir`: `dir/db` (sled) and `dir/snapshots`.
///
/// `cache_mb` bounds sled's page cache. Must be called inside a tokio runtime.
pub fn open(dir: &Path, cache_mb: u64) -> Result<(LogStore, StateMachineStore), crate::Error> {
    use crate::Error;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create the store directory", dir, e))?;
    let db_dir = dir.join("db");
    let db = sled::Config::new()
        .path(&db_dir)
        .cache_capacity(cache_mb.max(1) * 1024 * 1024)
        // Never rely on the background flusher for durability: every acknowledged
        // write is flushed explicitly, with an fsync of our own (durable.rs; sled's
        // flush alone is not one). Keep it only as a safety net.
        .flush_every_ms(Some(1000))
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| Error::store(&db_dir, e))?;
    let db = std::sync::Arc::new(
        durable::DurableDb::new(db, &db_dir).map_err(|e| Error::io("open", &db_dir, e))?,
    );
    let log = LogStore::open(db.clone()).map_err(|e| Error::store(&db_dir, e))?;
    let snap_dir = dir.join("snapshots");
    let sm = StateMachineStore::open(db, &snap_dir)
        .map_err(|e| Error::io("open the state machine or its snapshots in", &snap_dir, e))?;
    Ok((log, sm))
}
