//! The replica's side of the blob channel: serving recording chunks to peers (with
//! the test-only fault injection that damages some of them).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use crate::blobs::sync::{serve_chunk, SyncStats};
use crate::blobs::BlobStore;
use crate::network::BlobChunk;
use crate::types::NodeId;

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
