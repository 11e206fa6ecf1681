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
//!
//!  leader, every 20 ms: replica duties ─ LeaderView ─▶ policy::LeaderDuties (pure)
//!                                     ◀─ Promote{ids} | HandOver{to} ─┘
//!  every stored value and peer frame: versioned (version byte + bincode, migrations)
//! ```
//!
//! - [`types`]: the openraft type config, [`Request`](types::Request) and
//!   [`Response`](types::Response).
//! - [`cdr`]: the call detail record.
//! - [`store`]: sled log store, state machine, snapshots, queries; [`store::codec`]
//!   lists every stored record and its format version.
//! - [`versioned`]: the [`Versioned`](versioned::Versioned) trait: one version byte +
//!   bincode, decode migrating older versions up, typed errors for unknown ones. Used
//!   by every stored record and by both peer messages.
//! - [`tls`]: cluster CA, node certificates, join tokens.
//! - [`network`]: peer RPC (Raft, join, forwarded writes, blob reads); its
//!   [`server`](network::server) admits connections and bounds what a client
//!   without a certificate can cost (one small join, a deadline, a pool of its own).
//! - [`replica`]: a running member: Raft + peer server, and its jobs in modules of
//!   their own (writes and forwarding, switchover, join, lag, leader duties, the blob
//!   link).
//! - [`policy`]: the leader's standing decisions as pure code (learner promotion,
//!   witness hand-over, switchover target), driven by `replica` with a clock it owns.
//! - [`blobs`]: recording files and the blob channel that copies them between data
//!   nodes (metadata in Raft, bytes never). The sync sees the cluster through the
//!   narrow [`blobs::sync::Cluster`] handle that `replica` implements.
//! - [`error`]: [`Error`] with typed sources (openraft's `RPCError`,
//!   `ForwardToLeader`, `Fatal`, `ChangeMembershipError`; io and sled errors with their
//!   path) and [`Error::is_retryable`].

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
