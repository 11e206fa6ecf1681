//! The replica's side of the blob channel: the narrow handle the blob sync gets on
//! the cluster ([`BlobLink`], an implementation of [`blobs::sync::Cluster`]), and
//! serving recording chunks to peers (with the test-only fault injection that
//! damages some of them).
//!
//! This is the only place where `blobs` and `replica` meet: `blobs` never names the
//! replica.
//!
//! [`blobs::sync::Cluster`]: crate::blobs::sync::Cluster

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use super::writes::Writes;
use crate::blobs::sync::{serve_chunk, Cluster, SyncStats};
use crate::blobs::BlobStore;
use crate::network::BlobChunk;
use crate::store::query::{self, QueryError};
use crate::store::SmShared;
use crate::types::{MemberKind, NodeId, Raft, RecordingMeta, Request};
use crate::Result;

/// What the blob sync may see and do of the cluster.
pub(super) struct BlobLink {
    pub(super) id: NodeId,
    /// Membership (the sources' addresses).
    pub(super) raft: Raft,
    /// Recording metadata and config reads, local.
    pub(super) sm: Arc<SmShared>,
    pub(super) client_tls: Arc<rustls::ClientConfig>,
    /// The `RecordingHeld` write.
    pub(super) writes: Arc<Writes>,
}

impl Cluster for BlobLink {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn data_member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .filter(|n| n.kind == MemberKind::Data)
            .map(|n| n.addr.clone())
    }

    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.client_tls.clone()
    }

    fn config(&self, key: &str) -> Option<String> {
        query::config_get(&self.sm.tree(), key)
            .ok()
            .flatten()
            .map(|e| e.value)
    }

    fn recordings_generation(&self) -> u64 {
        self.sm.recordings_generation.load(SeqCst)
    }

    fn recordings(&self) -> impl Iterator<Item = Result<RecordingMeta, QueryError>> + Send {
        query::recording_scan(&self.sm.tree(), None)
    }

    async fn report_held(&self, id: &str) -> Result<()> {
        let req = Request::RecordingHeld {
            id: id.to_string(),
            node: self.id,
            held: true,
        };
        self.writes.write(req).await.map(|_| ())
    }
}

pub(super) struct BlobServe {
    /// Fault injection for tests: damage this many outgoing blob chunks
    /// (`TANDEM_FAULT_CORRUPT_CHUNKS`).
    corrupt_chunks: AtomicU64,
}

impl BlobServe {
    pub(super) fn from_env() -> BlobServe {
        let corrupt_chunks = std::env::var("TANDEM_FAULT_CORRUPT_CHUNKS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if corrupt_chunks > 0 {
            tracing::warn!(
                chunks = corrupt_chunks,
                "fault injection: damaging outgoing recording chunks (TANDEM_FAULT_CORRUPT_CHUNKS)"
            );
        }
        BlobServe {
            corrupt_chunks: AtomicU64::new(corrupt_chunks),
        }
    }

    /// Answer a `BlobRead` (`blobs` is None on a witness).
    pub(super) async fn serve(
        &self,
        me: NodeId,
        blobs: Option<Arc<BlobStore>>,
        stats: Arc<SyncStats>,
        id: String,
        offset: u64,
        len: u32,
    ) -> Result<BlobChunk, String> {
        let Some(blobs) = blobs else {
            return Err(format!("node {me} is a witness and stores no recordings"));
        };
        let corrupt = self
            .corrupt_chunks
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        tokio::task::spawn_blocking(move || serve_chunk(&blobs, &stats, &id, offset, len, corrupt))
            .await
            .unwrap_or_else(|e| Err(format!("blob read task failed: {e}")))
    }
}
