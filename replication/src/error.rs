//! Errors of the replication crate.
//!
//! Every variant carries typed parts: openraft's own errors ([`RPCError`],
//! [`ForwardToLeader`](openraft::error::ForwardToLeader)'s leader id and node,
//! [`Fatal`], [`ChangeMembershipError`], [`InitializeError`]), io and sled errors with
//! the path they are about, ids and addresses of peers. Nothing is classified by
//! looking at a message.
//!
//! [`Error::is_retryable`] splits what a caller may retry after a short wait (no
//! leader yet, leadership moving, a peer or the leader unreachable, a membership
//! change already in progress, a hand-over that did not finish) from what it must
//! not (bad input, storage failure, Raft stopped, an operation the leader refused).
//!
//! `Error` is `Clone` (sources that are not are held in an `Arc`), so one result can
//! be handed to several waiters (the CDR batcher answers every request merged into
//! one entry) without turning it into text.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RPCError,
    RaftError,
};

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, NodeInfo};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    // ---- retryable ----
    /// No leader is known right now (election in progress or no quorum).
    #[error("no leader is known (election in progress or quorum lost); retry in a second, and if it lasts see `tandem status` for members that do not answer")]
    NoLeader,

    /// This node is not (or no longer) the leader; openraft's `ForwardToLeader`.
    #[error("{}", ForwardText(leader_id, leader_node))]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader_node: Option<NodeInfo>,
    },

    /// The leader could not be reached to forward an operation to it.
    #[error("leader {leader} at {addr} unreachable: {source}; retry shortly, and if it lasts check that tandem runs there and that this node reaches its peer port")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        #[source]
        source: Box<RPCError<NodeId, NodeInfo>>,
    },

    /// A call to a peer (join, elect) failed: transport (retryable) or the peer
    /// answered with a refusal (`RPCError::RemoteError`, not retryable).
    #[error("{} ({rpc}): {source}", PeerName(peer, addr))]
    Peer {
        /// None when the peer's id is not known yet (a join).
        peer: Option<NodeId>,
        addr: String,
        rpc: &'static str,
        #[source]
        source: Box<RPCError<NodeId, NodeInfo, Refusal>>,
    },

    /// The hand-over target did not receive this leader's whole log in time.
    #[error("node {peer} at {addr} did not catch up with the leader's log ({matched} < {last}) within {waited:?}; retry the switchover once it has (see its lag in `tandem status`)")]
    CatchUpTimeout {
        peer: NodeId,
        addr: String,
        matched: u64,
        last: u64,
        waited: Duration,
    },

    /// This node campaigned (a switchover asked it to) and did not win.
    #[error(
        "node {node} was not elected within {waited:?}{}",
        ElectedInstead(elected_instead)
    )]
    NotElected {
        node: NodeId,
        waited: Duration,
        /// Another node that won an election held meanwhile, and its term.
        elected_instead: Option<(NodeId, u64)>,
    },

    /// openraft refused a membership change (`InProgress` is retryable).
    #[error("membership change refused: {source}")]
    Membership {
        #[source]
        source: ChangeMembershipError<NodeId>,
    },

    // ---- fatal ----
    /// The leader ran the operation and it failed there.
    #[error("the leader (node {leader}) could not {op}: {source}")]
    OnLeader {
        leader: NodeId,
        /// What was asked, e.g. "hand over leadership" (see `LeaderOp::describe`).
        op: &'static str,
        #[source]
        source: LeaderFailure,
    },

    /// The request was refused as invalid.
    #[error("invalid request: {reason}")]
    Invalid { reason: InvalidRequest },

    /// Less than the reserve is free in the data directory of `node`: writes that
    /// add data are refused until space is freed.
    #[error("disk full: node {node} has {} MiB free in {}, less than the {} MiB it keeps in reserve; writes are refused until space is freed (old recordings, logs, or lower retention.* / [cluster] min_free_mb); reads go on", free >> 20, dir.display(), reserve >> 20)]
    DiskFull {
        node: NodeId,
        dir: PathBuf,
        free: u64,
        reserve: u64,
    },

    /// The store (sled) under `path` failed.
    #[error("store at {}: {source}; check the disk (free space, errors in the kernel log) and that the tandem user may write there", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: Arc<sled::Error>,
    },

    /// A file or directory could not be used.
    #[error("cannot {what} {}: {source}; check that the path exists and that the tandem user may write there", path.display())]
    Io {
        path: PathBuf,
        /// What was being done, e.g. "create the store directory".
        what: &'static str,
        #[source]
        source: Arc<io::Error>,
    },

    /// The recordings directory could not be opened.
    #[error("recordings: {source}")]
    Blobs {
        #[source]
        source: Arc<crate::blobs::BlobError>,
    },

    /// The peer listener could not be bound.
    #[error("cannot listen for peers on {addr}: {source}; check `[cluster]` listen/advertise (the address must belong to this machine) and that no other process holds the port")]
    Listen {
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },

    /// openraft refused the timer settings.
    #[error("Raft settings refused: {source}; fix the [cluster] timeouts (heartbeat_ms < lease_ms < election_timeout_min_ms <= election_timeout_max_ms)")]
    RaftConfig {
        #[source]
        source: Arc<openraft::ConfigError>,
    },

    /// Raft stopped for good on this node (storage failure or panic).
    #[error("Raft stopped on this node: {source}; restart tandem and read its log for the storage error that stopped it")]
    Fatal {
        #[source]
        source: Box<Fatal<NodeId>>,
    },

    /// The cluster could not be initialized with these members.
    #[error(
        "cluster initialization refused: {source}; this node's id must be one of [cluster] peers"
    )]
    Initialize {
        #[source]
        source: InitializeError<NodeId, NodeInfo>,
    },

    /// A linearizable read's index was not applied here in time.
    #[error("this node did not apply up to index {index} within {waited:?} (it is behind the leader); retry, or read with consistency=stale")]
    ApplyTimeout { index: u64, waited: Duration },

    /// A peer answered with a reply of the wrong kind (a bug or a mixed-version
    /// cluster).
    #[error("{} answered {rpc} with an unexpected {got} reply; check that every node runs the same tandem version (`tandem upgrade status`)", PeerName(peer, addr))]
    UnexpectedReply {
        peer: Option<NodeId>,
        addr: String,
        rpc: &'static str,
        got: &'static str,
    },

    /// The node is shutting down.
    #[error("node is shutting down")]
    Shutdown,

    /// TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(Arc<crate::tls::TlsError>),
}

/// Why the leader could not run an operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaderFailure {
    /// This node is the leader: its own error.
    #[error(transparent)]
    Local(Box<Error>),
    /// The leader is another node: its description of the error and its class,
    /// as the peer protocol carries them (see `network::ForwardError`).
    #[error("{reason}")]
    Remote { reason: String, class: FailureClass },
}

impl LeaderFailure {
    /// The class of the leader's error, wherever it ran.
    pub fn class(&self) -> FailureClass {
        match self {
            LeaderFailure::Local(e) => FailureClass::of(e),
            LeaderFailure::Remote { class, .. } => class.clone(),
        }
    }
}

/// What kind of failure a leader reports to a node that forwarded an operation
/// to it, so that the forwarding node answers its client exactly as the leader
/// would have (the same HTTP status, the same retry advice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureClass {
    /// The same call may succeed after a short wait ([`Error::is_retryable`]).
    Retryable,
    /// The request was refused as invalid.
    Invalid(InvalidRequest),
    /// The leader's disk is full ([`Error::DiskFull`]); the text says which.
    DiskFull,
    /// Anything else: retrying will not help.
    Permanent,
}

impl FailureClass {
    /// The class of `e`.
    pub fn of(e: &Error) -> FailureClass {
        if let Some(reason) = e.invalid_request() {
            FailureClass::Invalid(reason.clone())
        } else if e.is_disk_full() {
            FailureClass::DiskFull
        } else if e.is_retryable() {
            FailureClass::Retryable
        } else {
            FailureClass::Permanent
        }
    }
}

/// What a peer answered when it refused a request (join token wrong, election
/// lost...): its own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub reason: String,
}

/// A request refused as invalid; each names the node it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidRequest {
    #[error("node {node} is already the master")]
    AlreadyLeader { node: NodeId },
    #[error(
        "node {node} is not a data voter of this cluster (see `tandem status` for the members)"
    )]
    NotADataVoter { node: NodeId },
    #[error("no other data voter to hand over to")]
    NoHandOverTarget,
    #[error("node {node} is the last voter: it cannot be removed")]
    LastVoter { node: NodeId },
    #[error("node {node} is not a member of this cluster")]
    NotAMember { node: NodeId },
}

impl Error {
    /// Why the request was refused as invalid, on this node or on the leader it
    /// was forwarded to; `None` for any other error.
    pub fn invalid_request(&self) -> Option<&InvalidRequest> {
        match self {
            Error::Invalid { reason } => Some(reason),
            Error::OnLeader { source, .. } => match source {
                LeaderFailure::Local(e) => e.invalid_request(),
                LeaderFailure::Remote {
                    class: FailureClass::Invalid(reason),
                    ..
                } => Some(reason),
                LeaderFailure::Remote { .. } => None,
            },
            _ => None,
        }
    }

    /// True when a disk that is full refused the request, on this node or on the
    /// leader it was forwarded to.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull { .. } => true,
            Error::OnLeader { source, .. } => source.class() == FailureClass::DiskFull,
            _ => false,
        }
    }

    /// True when the same call may succeed if retried after a short wait.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NoLeader
            | Error::ForwardToLeader { .. }
            | Error::LeaderUnreachable { .. }
            | Error::CatchUpTimeout { .. }
            | Error::NotElected { .. } => true,
            Error::Peer { source, .. } => !matches!(**source, RPCError::RemoteError(_)),
            Error::Membership { source } => matches!(source, ChangeMembershipError::InProgress(_)),
            Error::OnLeader { source, .. } => source.class() == FailureClass::Retryable,
            Error::Invalid { .. }
            | Error::DiskFull { .. }
            | Error::Store { .. }
            | Error::Io { .. }
            | Error::Blobs { .. }
            | Error::Listen { .. }
            | Error::RaftConfig { .. }
            | Error::Fatal { .. }
            | Error::Initialize { .. }
            | Error::ApplyTimeout { .. }
            | Error::UnexpectedReply { .. }
            | Error::Shutdown
            | Error::Tls(_) => false,
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            what,
            source: Arc::new(source),
        }
    }

    pub fn store(path: impl Into<PathBuf>, source: sled::Error) -> Error {
        Error::Store {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub fn invalid(reason: InvalidRequest) -> Error {
        Error::Invalid { reason }
    }
}

impl From<crate::tls::TlsError> for Error {
    fn from(e: crate::tls::TlsError) -> Error {
        Error::Tls(Arc::new(e))
    }
}

impl From<Fatal<NodeId>> for Error {
    fn from(source: Fatal<NodeId>) -> Error {
        match source {
            Fatal::Stopped => Error::Shutdown,
            source => Error::Fatal {
                source: Box::new(source),
            },
        }
    }
}

impl From<ClientWriteError<NodeId, NodeInfo>> for Error {
    fn from(e: ClientWriteError<NodeId, NodeInfo>) -> Error {
        match e {
            ClientWriteError::ForwardToLeader(f) => Error::ForwardToLeader {
                leader_id: f.leader_id,
                leader_node: f.leader_node,
            },
            ClientWriteError::ChangeMembershipError(source) => Error::Membership { source },
        }
    }
}

impl From<CheckIsLeaderError<NodeId, NodeInfo>> for Error {
    fn from(e: CheckIsLeaderError<NodeId, NodeInfo>) -> Error {
        match e {
            CheckIsLeaderError::ForwardToLeader(f) => Error::ForwardToLeader {
                leader_id: f.leader_id,
                leader_node: f.leader_node,
            },
            // Lost the quorum while confirming leadership: there is no usable leader.
            CheckIsLeaderError::QuorumNotEnough(_) => Error::NoLeader,
        }
    }
}

impl From<InitializeError<NodeId, NodeInfo>> for Error {
    fn from(source: InitializeError<NodeId, NodeInfo>) -> Error {
        Error::Initialize { source }
    }
}

impl<E: Into<Error>> From<RaftError<NodeId, E>> for Error {
    fn from(e: RaftError<NodeId, E>) -> Error {
        match e {
            RaftError::APIError(api) => api.into(),
            RaftError::Fatal(f) => f.into(),
        }
    }
}

impl From<openraft::error::Infallible> for Error {
    fn from(e: openraft::error::Infallible) -> Error {
        match e {}
    }
}

/// "peer 2 at host:port", or "peer at host:port" when the id is not known.
struct PeerName<'a>(&'a Option<NodeId>, &'a String);

impl fmt::Display for PeerName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "peer {id} at {}", self.1),
            None => write!(f, "peer at {}", self.1),
        }
    }
}

struct ForwardText<'a>(&'a Option<NodeId>, &'a Option<NodeInfo>);

impl fmt::Display for ForwardText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this node is not the leader")?;
        match (self.0, self.1) {
            (Some(id), Some(n)) => write!(f, " (the leader is node {id} at {})", n.addr)?,
            (Some(id), None) => write!(f, " (the leader is node {id})")?,
            _ => f.write_str(" and knows no leader")?,
        }
        f.write_str("; leadership is moving: retry shortly")
    }
}

struct ElectedInstead<'a>(&'a Option<(NodeId, u64)>);

impl fmt::Display for ElectedInstead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((leader, term)) => write!(
                f,
                ": node {leader} was elected instead (term {term}); it is the master now"
            ),
            None => f.write_str("; retry the switchover"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::{InProgress, NetworkError, RemoteError, Unreachable};

    fn io_err() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
    }

    /// The retryable/fatal split, variant by variant: node's API answers 503 for
    /// the retryable ones, 400 for `Invalid`, 500 for the rest.
    #[test]
    fn retryable_and_fatal_are_split_by_kind_not_by_text() {
        let retryable = [
            Error::NoLeader,
            Error::ForwardToLeader {
                leader_id: Some(2),
                leader_node: None,
            },
            Error::LeaderUnreachable {
                leader: 2,
                addr: "10.0.0.2:7000".into(),
                source: Box::new(RPCError::Unreachable(Unreachable::new(&io_err()))),
            },
            Error::Peer {
                peer: Some(2),
                addr: "10.0.0.2:7000".into(),
                rpc: "elect",
                source: Box::new(RPCError::Network(NetworkError::new(&io_err()))),
            },
            Error::CatchUpTimeout {
                peer: 2,
                addr: "a".into(),
                matched: 1,
                last: 2,
                waited: Duration::from_secs(5),
            },
            Error::NotElected {
                node: 2,
                waited: Duration::from_secs(5),
                elected_instead: None,
            },
            Error::Membership {
                source: ChangeMembershipError::InProgress(InProgress {
                    committed: None,
                    membership_log_id: None,
                }),
            },
        ];
        let retryable: Vec<Error> = retryable
            .into_iter()
            .chain([
                // A retryable error on the leader is retryable here too, whether
                // the leader is this node or answered over the peer protocol.
                Error::OnLeader {
                    leader: 1,
                    op: "hand over leadership",
                    source: LeaderFailure::Local(Box::new(Error::NoLeader)),
                },
                Error::OnLeader {
                    leader: 1,
                    op: "hand over leadership",
                    source: LeaderFailure::Remote {
                        reason: "no leader".into(),
                        class: FailureClass::Retryable,
                    },
                },
            ])
            .collect();
        for e in &retryable {
            assert!(e.is_retryable(), "{e:?}");
        }
        let fatal = [
            Error::Peer {
                peer: None,
                addr: "10.0.0.1:7000".into(),
                rpc: "join",
                source: Box::new(RPCError::RemoteError(RemoteError::new(
                    0,
                    Refusal {
                        reason: "join token refused".into(),
                    },
                ))),
            },
            Error::OnLeader {
                leader: 1,
                op: "hand over leadership",
                source: LeaderFailure::Remote {
                    reason: "store at /x: disk full".into(),
                    class: FailureClass::Permanent,
                },
            },
            Error::invalid(InvalidRequest::NotADataVoter { node: 42 }),
            Error::io("create the store directory", "/x", io_err()),
            Error::from(Fatal::Panicked),
            Error::ApplyTimeout {
                index: 9,
                waited: Duration::from_secs(5),
            },
            Error::Shutdown,
        ];
        for e in &fatal {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }

    /// Small enough to pass around in a `Result` (clippy's `result_large_err`).
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<Error>() <= 128);
    }

    #[test]
    fn openraft_errors_keep_their_parts() {
        let f = openraft::error::ForwardToLeader::<NodeId, NodeInfo>::new(
            3,
            NodeInfo {
                addr: "10.0.0.3:7000".into(),
                ..Default::default()
            },
        );
        let e: Error = RaftError::<NodeId, ClientWriteError<NodeId, NodeInfo>>::APIError(
            ClientWriteError::ForwardToLeader(f),
        )
        .into();
        match &e {
            Error::ForwardToLeader {
                leader_id: Some(3),
                leader_node: Some(n),
            } => assert_eq!(n.addr, "10.0.0.3:7000"),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("node 3 at 10.0.0.3:7000"), "{e}");
        let stopped: Error =
            RaftError::<NodeId, ClientWriteError<NodeId, NodeInfo>>::Fatal(Fatal::Stopped).into();
        assert!(matches!(stopped, Error::Shutdown));
    }

    #[test]
    fn messages_name_the_thing_and_what_to_do() {
        let e = Error::LeaderUnreachable {
            leader: 2,
            addr: "10.0.0.2:7000".into(),
            source: Box::new(RPCError::Unreachable(Unreachable::new(&io_err()))),
        };
        let text = e.to_string();
        assert!(text.contains("leader 2 at 10.0.0.2:7000"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        let e = Error::OnLeader {
            leader: 1,
            op: "hand over leadership",
            source: LeaderFailure::Remote {
                reason: "invalid request: node 42 is not a data voter of this cluster".into(),
                class: FailureClass::Invalid(InvalidRequest::NotADataVoter { node: 42 }),
            },
        };
        assert!(e.to_string().contains("node 42 is not a data voter"), "{e}");
        assert_eq!(
            e.invalid_request(),
            Some(&InvalidRequest::NotADataVoter { node: 42 })
        );
        assert!(!e.is_retryable());
        // A clone is the same typed value, not a text copy.
        let c = e.clone();
        assert!(matches!(
            c,
            Error::OnLeader {
                source: LeaderFailure::Remote { .. },
                ..
            }
        ));
    }
}
