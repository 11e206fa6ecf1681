//! tandem's replicated store.
//!
//! ```text
//!  client write ─▶ Replica::write ─(follower? forward to leader over peer TLS)─▶ openraft
//!                                                                               │
//!        peers ◀──── network (framed bincode RPC over mutual TLS) ◀─────────────┤
//!                                                                               ▼
//!                                   store::LogStore (sled, group fsync) ─▶ store::StateMachineStore
//!                                                                               │
//!  reporting read ─▶ Replica::tree() + store::query (local, stale) ◀────────────┘
//! ```
//!
//! - [`types`]: the openraft type config, [`Request`](types::Request) and
//!   [`Response`](types::Response).
//! - [`cdr`]: the call detail record.
//! - [`store`]: sled log store, state machine, snapshots, queries.
//! - [`tls`]: cluster CA, node certificates, join tokens.
//! - [`network`]: peer RPC (Raft, join, forwarded writes).
//! - [`replica`]: a running member: Raft + server + write path + cluster view.
//! - [`blobs`]: recording files and the blob channel that copies them between data
//!   nodes (metadata in Raft, bytes never).

pub mod blobs;
pub mod cdr;
pub mod error;
pub mod network;
pub mod policy;
pub mod replica;
pub mod store;
pub mod tls;
pub mod types;
pub mod versioned;

pub use error::{Error, Result};
#[cfg(test)]
pub(crate) mod fixtures;
