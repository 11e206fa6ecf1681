//! Errors of the replication crate.
//!
//! [`Error::is_retryable`] splits what a caller may retry (no leader yet, peer down,
//! forwarded write lost in a leader change) from what it must not (bad input,
//! storage failure).

use std::path::PathBuf;

use crate::types::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened or written.
    #[error("storage at {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    /// No leader is known right now (election in progress or no quorum).
    #[error("no leader is known (election in progress or quorum lost); retry shortly")]
    NoLeader,
    /// The leader could not be reached to forward a write or a read.
    #[error("leader {leader} at {addr} unreachable: {reason}")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        reason: String,
    },
    /// A peer RPC failed.
    #[error("peer {peer} at {addr}: {reason}")]
    Peer {
        peer: NodeId,
        addr: String,
        reason: String,
    },
    /// The request was refused as invalid.
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
    /// Raft reported an error that is not retryable.
    #[error("raft: {reason}")]
    Raft { reason: String },
    /// A membership change was refused.
    #[error("membership change refused: {reason}")]
    Membership { reason: String },
    /// The node is shutting down.
    #[error("node is shutting down")]
    Shutdown,
    /// TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl Error {
    /// True when the same call may succeed if retried after a short wait.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NoLeader | Error::LeaderUnreachable { .. } | Error::Peer { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
