//! The openraft type configuration and the requests that travel in the Raft log.
//!
//! Every request is small: CDRs, config keys, membership. Recording bytes never
//! travel in the log (openraft sends heartbeats on the same stream as entries).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cdr::Cdr;

/// Identifier of a node in the cluster (`[node] id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Type configuration of tandem's Raft group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

/// What kind of member a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    /// Stores everything and may become master.
    #[default]
    Data,
    /// Votes but never campaigns and never stores recording bytes.
    Witness,
}

impl fmt::Display for MemberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberKind::Data => f.write_str("data"),
            MemberKind::Witness => f.write_str("witness"),
        }
    }
}

/// What the cluster knows about a member: where to reach it.
///
/// Stored in the Raft membership, so every node learns the addresses of the others.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Peer (Raft RPC, mutual TLS) address, `host:port`.
    pub addr: String,
    /// HTTP API address, `host:port`, if known (used by clients and `tandem status`).
    pub api: String,
    /// Human-readable name (`[node] name`).
    pub name: String,
    /// Data node or witness.
    pub kind: MemberKind,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({}, peer {}, api {})",
            self.name, self.kind, self.addr, self.api
        )
    }
}

/// A change to the replicated state. Version 1 of the log format.
///
/// Timestamps are carried inside the request (set by the proposer), so that apply
/// never reads a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Set a configuration key to a JSON value (stored as JSON text).
    SetConfig { key: String, value: String },
    /// Remove a configuration key.
    DeleteConfig { key: String },
    /// Insert call detail records; records whose id already exists are skipped.
    AddCdrs { cdrs: Vec<Cdr> },
    /// Register a recording's metadata (its bytes are already fsynced on the nodes in
    /// `meta.holders`). Idempotent on the id: a retry merges the holders.
    AddRecording { meta: RecordingMeta },
    /// `node` now holds (fsynced, sha256 verified) or no longer holds the bytes of `id`.
    RecordingHeld {
        id: String,
        node: NodeId,
        held: bool,
    },
    /// Retention: delete up to `limit` CDRs that started before `cdrs_before` and up to
    /// `limit` recordings created before `recordings_before` (microseconds since the
    /// epoch, chosen by the proposer: apply reads no clock).
    Expire {
        cdrs_before: Option<i64>,
        recordings_before: Option<i64>,
        limit: u32,
    },
}

/// What the cluster knows of one call recording. The bytes live in files on the
/// data nodes listed in `holders`, never in Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingMeta {
    /// Recording id (file name): letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// SIP Call-ID (or the PBX's call reference) the recording belongs to.
    pub call_id: String,
    /// Hex sha256 of the bytes, checked on every write and read.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Length of the audio in milliseconds (0 if unknown).
    pub duration_ms: u64,
    /// Codec / format, e.g. "PCMU", "PCMA", "audio/wav".
    pub codec: String,
    /// When it was stored, microseconds since the epoch (retention uses it).
    pub created: i64,
    /// Data nodes that hold the fsynced bytes.
    pub holders: std::collections::BTreeSet<NodeId>,
}

impl Request {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::SetConfig { .. } => "set_config",
            Request::DeleteConfig { .. } => "delete_config",
            Request::AddCdrs { .. } => "add_cdrs",
            Request::AddRecording { .. } => "add_recording",
            Request::RecordingHeld { .. } => "recording_held",
            Request::Expire { .. } => "expire",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::SetConfig { key, .. } => write!(f, "set_config({key})"),
            Request::DeleteConfig { key } => write!(f, "delete_config({key})"),
            Request::AddCdrs { cdrs } => write!(f, "add_cdrs({})", cdrs.len()),
            Request::AddRecording { meta } => write!(f, "add_recording({})", meta.id),
            Request::RecordingHeld { id, node, held } => {
                write!(f, "recording_held({id}, node {node}, {held})")
            }
            Request::Expire { limit, .. } => write!(f, "expire(limit {limit})"),
        }
    }
}

/// The result of applying a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    /// Nothing to report (blank and membership entries).
    #[default]
    Done,
    /// A config key was written (or removed) at this version (the log index).
    Config {
        key: String,
        version: u64,
        existed: bool,
    },
    /// CDRs inserted and skipped as duplicates of an existing id (listed, so that a
    /// batch merged from several client requests can be split back).
    Cdrs {
        inserted: u32,
        duplicates: u32,
        duplicate_ids: Vec<uuid::Uuid>,
    },
    /// A recording's holders after the write (`known` false: no such recording, e.g.
    /// a holder report for a recording that retention already removed).
    Recording {
        id: String,
        known: bool,
        holders: Vec<NodeId>,
    },
    /// How many records retention removed.
    Expired { cdrs: u32, recordings: u32 },
    /// `AddRecording` refused: the id is already taken by other bytes (`sha256`
    /// is the stored recording's). Recordings are immutable.
    RecordingConflict { id: String, sha256: String },
}
