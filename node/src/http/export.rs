//! The CSV export engine: a full export is cut into start-time slices scanned by worker
//! threads and streamed in order through bounded channels (memory stays flat).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use tandem_replication::cdr::{CdrRef, CSV_COLUMNS};
use tandem_replication::store::codec;
use tandem_replication::store::query::{self, CdrQuery};
use tandem_replication::store::Tree;
use tokio::sync::Semaphore;

use crate::http::ApiError;

/// Hands CSV bytes on in ~256 KiB chunks to `send` (a bounded channel: memory stays
/// flat however many rows are exported).
struct ChunkSender<F: FnMut(Vec<u8>) -> std::io::Result<()>> {
    buf: Vec<u8>,
    send: F,
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> ChunkSender<F> {
    fn new(send: F) -> Self {
        ChunkSender {
            buf: Vec::with_capacity(CHUNK + 4096),
            send,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096));
        (self.send)(chunk)
    }
}

const CHUNK: usize = 256 * 1024;

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> std::io::Write for ChunkSender<F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

fn client_gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
}

/// A full export (no limit) is cut into this many start-time slices, scanned by
/// [`EXPORT_WORKERS`] threads and streamed in order: with sled's page cache far smaller
/// than the data, one thread paging the tree in was the export's limit.
const EXPORT_SLICES: usize = 64;
const EXPORT_WORKERS: usize = 2;

/// Most CSV exports one node runs at once; one more is answered 503. Each holds
/// a thread of its own (plus [`EXPORT_WORKERS`] scan threads for a full export)
/// for as long as its client reads.
pub const MAX_EXPORTS: usize = 8;
/// An export whose client takes no data for this long is stopped (its thread
/// and its slot freed).
pub const EXPORT_STALL: Duration = Duration::from_secs(30);

static EXPORTS: Semaphore = Semaphore::const_new(MAX_EXPORTS);

/// The CSV of `q` (at most `limit` rows) as a stream of chunks, produced on a
/// thread of the export's own (never tokio's blocking pool, which the rest of
/// the node needs): 503 when [`MAX_EXPORTS`] are running already.
pub(crate) fn csv_stream(
    tree: Tree,
    q: CdrQuery,
    limit: Option<usize>,
) -> Result<impl futures::Stream<Item = std::io::Result<Bytes>>, ApiError> {
    csv_stream_on(&EXPORTS, EXPORT_STALL, tree, q, limit)
}

/// [`csv_stream`] with its slots and stall limit given (tests use short ones).
fn csv_stream_on(
    slots: &'static Semaphore,
    stall: Duration,
    tree: Tree,
    q: CdrQuery,
    limit: Option<usize>,
) -> Result<impl futures::Stream<Item = std::io::Result<Bytes>>, ApiError> {
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_EXPORTS} CSV exports are running on this node, its limit: retry when \
                 one ends, or export from another node"
            ),
        )
    };
    let permit = slots.try_acquire().map_err(|_| busy())?;
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    std::thread::Builder::new()
        .name("csv-export".into())
        .spawn(move || {
            let _slot = permit;
            stream_csv(&runtime, stall, tree, q, limit, tx);
        })
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot start a CSV export thread");
            busy()
        })?;
    Ok(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn stream_csv(
    runtime: &tokio::runtime::Handle,
    stall: Duration,
    tree: Tree,
    q: CdrQuery,
    limit: Option<usize>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    // Waits for the client to take a chunk, at most `stall`.
    let send = |item: std::io::Result<Bytes>| {
        // The timer is made inside block_on: it needs the runtime's context.
        match runtime.block_on(async { tokio::time::timeout(stall, tx.send(item)).await }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(client_gone()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("client took no data for {} ms", stall.as_millis()),
            )),
        }
    };
    let w = csv::Writer::from_writer(ChunkSender::new(|chunk| send(Ok(Bytes::from(chunk)))));
    if let Err(e) = export(&tree, q, limit, w) {
        tracing::info!(error = %e, "CSV export stopped");
        let _ = send(Err(std::io::Error::other(e)));
    }
}

fn export<F: FnMut(Vec<u8>) -> std::io::Result<()>>(
    tree: &Tree,
    q: CdrQuery,
    limit: Option<usize>,
    mut w: csv::Writer<ChunkSender<F>>,
) -> Result<(), String> {
    w.write_record(CSV_COLUMNS).map_err(|e| e.to_string())?;
    let slices = match limit {
        None => query::cdr_slices(tree, &q, EXPORT_SLICES).map_err(|e| e.to_string())?,
        Some(_) => vec![q],
    };
    if slices.len() > 1 {
        let mut out = w.into_inner().map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
        return export_slices(tree, &slices, &mut out.send);
    }
    write_rows(tree, &slices[0], limit, &mut w)
}

/// The CSV rows of `q` (at most `limit`), written from the stored bytes (no
/// per-field allocation), then flushed.
fn write_rows<W: std::io::Write>(
    tree: &Tree,
    q: &CdrQuery,
    limit: Option<usize>,
    w: &mut csv::Writer<W>,
) -> Result<(), String> {
    for item in query::cdr_scan_raw(tree, q).take(limit.unwrap_or(usize::MAX)) {
        let (_, bytes) = item.map_err(|e| e.to_string())?;
        let cdr: CdrRef = codec::decode_borrowed(&bytes).map_err(|e| e.to_string())?;
        cdr.write_csv(w).map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())
}

/// What an export worker hands to the streaming thread.
enum Part {
    Chunk(Vec<u8>),
    /// Every row of the worker's current slice was sent.
    SliceDone,
    Failed(String),
}

/// Scan `slices` on [`EXPORT_WORKERS`] threads (slice i on worker i mod W, each with
/// a channel of two chunks: memory stays bounded) and pass their CSV to `send` in
/// slice order.
fn export_slices(
    tree: &Tree,
    slices: &[CdrQuery],
    send: &mut impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> Result<(), String> {
    std::thread::scope(|scope| {
        // Owned by this closure: dropped (so a blocked worker's send fails and it
        // stops) before the scope waits for the workers.
        let mut parts = Vec::with_capacity(EXPORT_WORKERS);
        for w in 0..EXPORT_WORKERS {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Part>(2);
            let mine: Vec<CdrQuery> = slices
                .iter()
                .skip(w)
                .step_by(EXPORT_WORKERS)
                .cloned()
                .collect();
            std::thread::Builder::new()
                .name(format!("export-{w}"))
                .spawn_scoped(scope, move || export_worker(tree, mine, tx))
                .map_err(|e| format!("cannot start an export thread: {e}"))?;
            parts.push(rx);
        }
        for i in 0..slices.len() {
            loop {
                match parts[i % EXPORT_WORKERS].recv() {
                    Ok(Part::Chunk(bytes)) => send(bytes).map_err(|e| e.to_string())?,
                    Ok(Part::SliceDone) => break,
                    Ok(Part::Failed(e)) => return Err(e),
                    Err(_) => return Err("an export thread stopped".into()),
                }
            }
        }
        Ok(())
    })
}

fn export_worker(tree: &Tree, slices: Vec<CdrQuery>, tx: std::sync::mpsc::SyncSender<Part>) {
    for q in slices {
        let chunks = tx.clone();
        let mut w = csv::Writer::from_writer(ChunkSender::new(move |chunk| {
            chunks.send(Part::Chunk(chunk)).map_err(|_| client_gone())
        }));
        let done = match write_rows(tree, &q, None, &mut w) {
            Ok(()) => tx.send(Part::SliceDone),
            Err(e) => tx.send(Part::Failed(e)),
        };
        if done.is_err() {
            return; // the streaming thread stopped (client gone or an error)
        }
    }
}

#[cfg(test)]
mod export_tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use tandem_replication::cdr::Cdr;
    use tandem_replication::store::apply::apply_entries;
    use tandem_replication::types::Request as RaftRequest;

    /// A state-machine tree holding `n` CDRs (the store needs a runtime for its flusher).
    fn tree_with(dir: &std::path::Path, n: i64) -> Tree {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (_log, sm) = tandem_replication::store::open(dir, 16).unwrap();
        let tree = sm.shared.tree();
        let base: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let cdrs: Vec<Cdr> = (0..n)
            .map(|i| {
                let start = base + chrono::Duration::seconds(i * 7 % 5000);
                let end = start + chrono::Duration::seconds(60);
                Cdr::new_call(&format!("1{}", i % 9), "200", start, None, end, "a")
            })
            .collect();
        let entry = tandem_replication::types::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(RaftRequest::AddCdrs { cdrs }),
        };
        let applied = apply_entries(&tree, [entry]).unwrap();
        tree.apply_batch(applied.batch).unwrap();
        tree
    }

    fn run(tree: &Tree, q: CdrQuery, limit: Option<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        let w = csv::Writer::from_writer(ChunkSender::new(|chunk: Vec<u8>| {
            out.extend_from_slice(&chunk);
            Ok(())
        }));
        export(tree, q, limit, w).unwrap();
        out
    }

    #[test]
    fn the_sliced_export_equals_the_single_scan() {
        // Enough rows for several 256 KiB chunks per slice and worker.
        let dir = tempfile::tempdir().unwrap();
        let tree = tree_with(dir.path(), 20_000);
        for q in [
            CdrQuery::default(),
            CdrQuery {
                caller: Some("13".into()),
                ..Default::default()
            },
            CdrQuery {
                from: Some("2026-02-01T00:10:00Z".parse().unwrap()),
                to: Some("2026-02-01T01:00:00Z".parse().unwrap()),
                ..Default::default()
            },
        ] {
            assert!(query::cdr_slices(&tree, &q, EXPORT_SLICES).unwrap().len() > 1);
            // A limit above the row count takes the single-scan path.
            let single = run(&tree, q.clone(), Some(usize::MAX));
            let sliced = run(&tree, q.clone(), None);
            assert!(single.len() > 1000, "{q:?} exports rows");
            assert_eq!(
                String::from_utf8(sliced).unwrap(),
                String::from_utf8(single).unwrap(),
                "{q:?}"
            );
        }
    }

    #[test]
    fn a_client_that_goes_away_stops_the_sliced_export() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree_with(dir.path(), 20_000);
        let mut sent = 0;
        let w = csv::Writer::from_writer(ChunkSender::new(|_chunk: Vec<u8>| {
            sent += 1;
            if sent > 2 {
                Err(client_gone())
            } else {
                Ok(())
            }
        }));
        let err = export(&tree, CdrQuery::default(), None, w).unwrap_err();
        assert!(err.contains("client went away"), "{err}");
    }

    #[test]
    fn an_export_whose_client_takes_no_data_is_stopped_and_its_slot_freed() {
        static SLOTS: Semaphore = Semaphore::const_new(MAX_EXPORTS);
        let dir = tempfile::tempdir().unwrap();
        // Far more CSV than the stream's queue holds: the export thread blocks.
        let tree = tree_with(dir.path(), 30_000);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stall = Duration::from_millis(300);
            let open = || csv_stream_on(&SLOTS, stall, tree.clone(), CdrQuery::default(), None);
            let mut stalled = Vec::new();
            for _ in 0..MAX_EXPORTS {
                stalled.push(open().map_err(|e| e.message().to_string()).unwrap());
            }
            let busy = open().err().expect("a slot over the cap");
            assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
            // Nobody reads: every export gives up after `stall` and frees its slot.
            let t0 = std::time::Instant::now();
            while SLOTS.available_permits() < MAX_EXPORTS {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "stalled exports kept {} slots",
                    MAX_EXPORTS - SLOTS.available_permits()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // What the stalled client gets when it reads at last: the queued chunks,
            // then the end of the stream (the export was cut), never a hang.
            use futures::StreamExt;
            let mut s = Box::pin(stalled.pop().unwrap());
            let mut bytes = 0;
            while let Some(item) = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .expect("a stopped export ends its stream")
            {
                bytes += item.map(|b| b.len()).unwrap_or(0);
            }
            assert!(
                bytes < 30_000 * 50,
                "the whole export was sent: {bytes} bytes"
            );
            // The freed slots serve new exports.
            assert!(open().is_ok());
        });
    }
}
