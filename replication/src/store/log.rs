//! The Raft log in sled, with group commit.
//!
//! Entries live in tree `log` keyed by big-endian index; the vote, the committed log
//! id and the last purged log id live in tree `raft_meta`. `append` inserts the
//! entries and hands openraft's completion callback to the [`Flusher`]; the flusher
//! runs one flush (fsync) for every callback that arrived before it started,
//! so many appends share one disk flush. openraft only counts an entry toward the
//! commit quorum after its callback fires, so nothing is acknowledged before it is on
//! disk.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use tokio::sync::{mpsc, oneshot};

use super::codec::{CommittedLogId, PurgedLogId, Versioned};
use super::durable::DurableDb;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// The sled-backed Raft log. Cheap to clone (sled trees are shared handles).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<Flusher>,
}

/// Shares one fsync between all appends that arrive while the previous one runs.
///
/// Every flush of the log's database goes through this one task, never through
/// concurrent `flush_async` calls: sled 0.34 can leave concurrent `flush_async`
/// futures un-woken forever (spacejam/sled#1241), which froze a node's Raft core when
/// a deposed leader saved its new vote and truncated its log at the same moment. The
/// task runs sled's blocking `flush` on a thread of its own, one at a time.
pub struct Flusher {
    tx: mpsc::UnboundedSender<FlushWaiter>,
}

/// Someone waiting for the next fsync.
enum FlushWaiter {
    /// openraft's completion callback of an `append`.
    Append(LogFlushed<TypeConfig>),
    /// A store operation (vote, truncate, purge) awaiting durability.
    Wait(oneshot::Sender<io::Result<()>>),
}

impl Flusher {
    fn start(db: Arc<DurableDb>) -> Flusher {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushWaiter>();
        // The fsync runs on a thread of its own, never on tokio's blocking pool:
        // whatever else fills that pool (CSV exports waiting for slow clients,
        // recording reads), the log's durability does not wait behind it.
        let (flush_tx, flush_rx) =
            std::sync::mpsc::channel::<oneshot::Sender<Result<(), String>>>();
        let spawned = std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                while let Ok(done) = flush_rx.recv() {
                    let _ = done.send(db.flush().map_err(|e| e.to_string()));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log fsync thread: every log write will fail");
        }
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let (done, flushed) = oneshot::channel();
                let res = match flush_tx.send(done) {
                    Ok(()) => flushed
                        .await
                        .unwrap_or_else(|_| Err("log fsync thread stopped".into())),
                    Err(_) => Err("log fsync thread stopped".into()),
                };
                for waiter in batch.drain(..) {
                    let r = res.clone().map_err(io::Error::other);
                    match waiter {
                        FlushWaiter::Append(cb) => cb.log_io_completed(r),
                        FlushWaiter::Wait(done) => {
                            let _ = done.send(r);
                        }
                    }
                }
            }
        });
        Flusher { tx }
    }

    /// Wait until everything written so far is on disk.
    async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(FlushWaiter::Wait(tx))
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("log flusher stopped"))?
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Read,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Write,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn vote_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Vote,
        ErrorVerb::Write,
        openraft::AnyError::new(&e),
    )
    .into()
}

impl LogStore {
    /// Open the log trees in `db`. Must be called inside a tokio runtime.
    pub fn open(db: Arc<DurableDb>) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            log: db.db().open_tree("log")?,
            meta: db.db().open_tree("raft_meta")?,
            flusher: Arc::new(Flusher::start(db)),
        })
    }

    fn get_meta<T: Versioned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => T::decode(&v).map(Some).map_err(read_err),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<PurgedLogId>(KEY_PURGED)?.map(|p| p.0))
    }

    /// The last committed log id this node knows of (saved by openraft).
    pub fn committed(&self) -> Option<LogId> {
        self.get_meta::<CommittedLogId>(KEY_COMMITTED)
            .ok()
            .flatten()
            .and_then(|c| c.0)
    }

    /// Number of entries currently in the log (for status and tests).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let iter = match end {
            Some(end) => self.log.range(start.to_be_bytes()..end.to_be_bytes()),
            None => self.log.range(start.to_be_bytes()..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(read_err)?;
            out.push(Entry::decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.last_purged()?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(*Entry::decode(&v).map_err(read_err)?.get_log_id()),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta
            .insert(KEY_VOTE, vote.encode().map_err(vote_err)?)
            .map_err(vote_err)?;
        // A vote must be durable before it is answered (Raft §5.2).
        self.flusher.flush().await.map_err(vote_err)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: it rides on the next log flush. Losing it on a
        // crash only means re-applying from the state machine's applied index.
        self.meta
            .insert(
                KEY_COMMITTED,
                CommittedLogId(committed).encode().map_err(write_err)?,
            )
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<CommittedLogId>(KEY_COMMITTED)?
            .and_then(|c| c.0))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let key = entry.get_log_id().index.to_be_bytes();
            batch.insert(&key, entry.encode().map_err(write_err)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        if self.flusher.tx.send(FlushWaiter::Append(callback)).is_err() {
            return Err(write_err(io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.flusher.flush().await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never
        // a hole.
        self.meta
            .insert(KEY_PURGED, PurgedLogId(log_id).encode().map_err(write_err)?)
            .map_err(write_err)?;
        self.flusher.flush().await.map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
