//! The state machine: one sled tree (see [`super::keys`]), snapshots as files.
//!
//! Snapshots are built by scanning the tree while apply goes on (a "fuzzy" snapshot,
//! as ZooKeeper does): the snapshot is labelled with the applied log id taken before
//! the scan, and may also contain effects of a few later entries. Every request is
//! idempotent and replay converges (CDRs are insert-if-absent, config writes are
//! last-writer-wins by log order), so a node that installs it and replays the log from
//! the label reaches exactly the leader's state.
//!
//! Installing a snapshot loads it into a fresh tree and then switches the pointer
//! `sm_current` in one flushed write, so a crash mid-install leaves the old state.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};

use super::apply::apply_entries;
use super::codec::{AppliedLogId, Versioned};
use super::durable::DurableDb;
use super::keys;
use crate::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Start of a snapshot file; its last byte is the file format's version (`1`).
/// The records inside are the tree's keys and versioned values (see `codec`).
const SNAPSHOT_MAGIC: &[u8; 8] = b"TDMSNAP1";
/// Version of `current.json` (written as its `version` field; absent = 1).
const INDEX_VERSION: u8 = 1;
const POINTER_KEY: &[u8] = b"sm_current";
const LOAD_BATCH: usize = 10_000;

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

/// Description of the current snapshot file, kept as `current.json` in the snapshot dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotIndex {
    /// Format version of this file ([`INDEX_VERSION`]; files of earlier releases
    /// have none and are version 1).
    #[serde(default = "index_v1")]
    version: u8,
    meta: SnapshotMeta,
    file: String,
}

fn index_v1() -> u8 {
    1
}

/// Read `current.json` in `dir`: None if there is none (or it is unreadable: a
/// snapshot is then built anew), an error if a newer tandem wrote it.
fn read_index(dir: &Path) -> io::Result<Option<SnapshotIndex>> {
    let path = dir.join("current.json");
    let Ok(text) = std::fs::read(&path) else {
        return Ok(None);
    };
    match serde_json::from_slice::<SnapshotIndex>(&text) {
        Ok(index) if index.version > INDEX_VERSION => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} has format version {}, newer than this tandem understands (up to {INDEX_VERSION}); upgrade this node to the version that wrote it",
                path.display(),
                index.version
            ),
        )),
        Ok(index) => Ok(Some(index)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable snapshot index; a new snapshot will be built");
            Ok(None)
        }
    }
}

/// State shared between the state machine, its snapshot builders and readers.
pub struct SmShared {
    durable: Arc<DurableDb>,
    tree: RwLock<sled::Tree>,
    snap_dir: PathBuf,
    /// Serializes snapshot file replacement.
    snap_lock: Mutex<()>,
    /// Path of the file a snapshot is being received into.
    receiving: Mutex<Option<PathBuf>>,
    /// Count of CDRs inserted by apply since start (metrics).
    pub cdrs_applied: std::sync::atomic::AtomicU64,
    /// Bumped whenever recording metadata may have changed (apply or snapshot
    /// install): the blob sync rescans when it moves.
    pub recordings_generation: std::sync::atomic::AtomicU64,
}

impl SmShared {
    /// A handle on the current state-machine tree (cheap clone).
    pub fn tree(&self) -> sled::Tree {
        self.tree.read().expect("sm tree lock poisoned").clone()
    }

    pub fn snap_dir(&self) -> &Path {
        &self.snap_dir
    }
}

/// The openraft state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    pub shared: Arc<SmShared>,
}

impl StateMachineStore {
    pub fn open(durable: Arc<DurableDb>, snap_dir: &Path) -> Result<StateMachineStore, io::Error> {
        std::fs::create_dir_all(snap_dir)?;
        let db = durable.db();
        let name = match db.get(POINTER_KEY).map_err(io::Error::other)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                db.insert(POINTER_KEY, b"sm.0".as_slice())
                    .map_err(io::Error::other)?;
                "sm.0".to_string()
            }
        };
        let tree = db.open_tree(&name).map_err(io::Error::other)?;
        // Leftover trees from an interrupted install.
        for other in db.tree_names() {
            let other = String::from_utf8_lossy(&other).into_owned();
            if other.starts_with("sm.") && other != name {
                let _ = db.drop_tree(other.as_bytes());
            }
        }
        // Leftover partial snapshot files.
        for f in std::fs::read_dir(snap_dir)? {
            let f = f?;
            if f.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        Ok(StateMachineStore {
            shared: Arc::new(SmShared {
                durable: durable.clone(),
                tree: RwLock::new(tree),
                snap_dir: snap_dir.to_path_buf(),
                snap_lock: Mutex::new(()),
                receiving: Mutex::new(None),
                cdrs_applied: Default::default(),
                recordings_generation: Default::default(),
            }),
        })
    }

    fn read_applied(tree: &sled::Tree) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = match tree
            .get(keys::APPLIED)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
        {
            Some(v) => {
                AppliedLogId::decode(&v)
                    .map_err(|e| sm_err(ErrorVerb::Read, e))?
                    .0
            }
            None => None,
        };
        let membership = match tree
            .get(keys::MEMBERSHIP)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
        {
            Some(v) => StoredMembership::decode(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn current_index(&self) -> io::Result<Option<SnapshotIndex>> {
        read_index(&self.shared.snap_dir)
    }
}

/// Write `tree` (minus its meta keys) as a snapshot file; returns the file size.
fn write_snapshot_file(tree: &sled::Tree, path: &Path) -> io::Result<u64> {
    let file = std::fs::File::create(path)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(SNAPSHOT_MAGIC)?;
    let mut count = 0u64;
    for item in tree.iter() {
        let (k, v) = item.map_err(io::Error::other)?;
        if k.first() == Some(&keys::META_PREFIX) {
            continue;
        }
        w.write_all(&(k.len() as u32).to_le_bytes())?;
        w.write_all(&k)?;
        w.write_all(&(v.len() as u32).to_le_bytes())?;
        w.write_all(&v)?;
        count += 1;
    }
    w.write_all(&u32::MAX.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Load a snapshot file into an empty tree; checks magic and record count.
fn load_snapshot_file(tree: &sled::Tree, path: &Path) -> io::Result<u64> {
    let mut r = io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if magic[..7] == SNAPSHOT_MAGIC[..7] && magic[7] != SNAPSHOT_MAGIC[7] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot file {} has format version {}, this tandem reads {}; upgrade this node to the version of the leader that sent it",
                path.display(),
                char::from(magic[7]),
                char::from(SNAPSHOT_MAGIC[7])
            ),
        ));
    }
    if &magic != SNAPSHOT_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a tandem snapshot (bad magic)", path.display()),
        ));
    }
    let mut count = 0u64;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut len = [0u8; 4];
    loop {
        r.read_exact(&mut len)?;
        let klen = u32::from_le_bytes(len);
        if klen == u32::MAX {
            break;
        }
        let mut k = vec![0u8; klen as usize];
        r.read_exact(&mut k)?;
        r.read_exact(&mut len)?;
        let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut v)?;
        batch.insert(k, v);
        in_batch += 1;
        count += 1;
        if in_batch == LOAD_BATCH {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(io::Error::other)?;
            in_batch = 0;
        }
    }
    tree.apply_batch(batch).map_err(io::Error::other)?;
    let mut expect = [0u8; 8];
    r.read_exact(&mut expect)?;
    if u64::from_le_bytes(expect) != count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot record count mismatch (truncated file)",
        ));
    }
    Ok(count)
}

/// Builds a snapshot from a point-in-time label and a handle on the tree.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
    tree: sled::Tree,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let tree = self.tree.clone();
        let applied = self.applied;
        let membership = self.membership.clone();
        tokio::task::spawn_blocking(move || build_blocking(&shared, &tree, applied, membership))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
    }
}

fn build_blocking(
    shared: &SmShared,
    tree: &sled::Tree,
    applied: Option<LogId>,
    membership: StoredMembership,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    // Persist the state machine first: once this snapshot exists the log before it
    // may be purged, so the state it covers must be on disk.
    shared
        .durable
        .flush()
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let snapshot_id = match applied {
        Some(l) => format!(
            "{}-{}-{}",
            l.leader_id.term,
            l.index,
            uuid::Uuid::new_v4().simple()
        ),
        None => format!("0-0-{}", uuid::Uuid::new_v4().simple()),
    };
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: snapshot_id.clone(),
    };
    let file = format!("{snapshot_id}.snap");
    let tmp = shared.snap_dir.join(format!("{file}.tmp"));
    write_snapshot_file(tree, &tmp).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    publish(shared, &tmp, &file, &meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let f = std::fs::File::open(shared.snap_dir.join(&file))
        .map_err(|e| snap_err(ErrorVerb::Read, e))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(f)),
    })
}

/// Make `tmp` the current snapshot named `file`, replacing (and removing) the old one.
fn publish(shared: &SmShared, tmp: &Path, file: &str, meta: &SnapshotMeta) -> io::Result<()> {
    let _guard = shared.snap_lock.lock().expect("snapshot lock poisoned");
    let dir = &shared.snap_dir;
    let old = read_index(dir)?;
    // Never replace a newer snapshot with an older one.
    if let Some(old) = &old {
        if old.meta.last_log_id > meta.last_log_id {
            std::fs::remove_file(tmp)?;
            return Ok(());
        }
    }
    std::fs::rename(tmp, dir.join(file))?;
    let index = SnapshotIndex {
        version: INDEX_VERSION,
        meta: meta.clone(),
        file: file.to_string(),
    };
    let idx_tmp = dir.join("current.json.tmp");
    {
        let mut f = std::fs::File::create(&idx_tmp)?;
        f.write_all(&serde_json::to_vec(&index).map_err(io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&idx_tmp, dir.join("current.json"))?;
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(old) = old {
        if old.file != file {
            let _ = std::fs::remove_file(dir.join(old.file));
        }
    }
    Ok(())
}

impl StateMachineStore {
    /// Apply entries in one atomic batch: data + applied index. Not flushed here: the
    /// log entries they come from are already durable and are re-applied after a crash.
    fn apply_run(
        &self,
        tree: &sled::Tree,
        entries: Vec<Entry>,
    ) -> Result<Vec<Response>, StorageError> {
        let applied = apply_entries(tree, entries).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        tree.apply_batch(applied.batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.shared
            .cdrs_applied
            .fetch_add(applied.cdrs_inserted, std::sync::atomic::Ordering::Relaxed);
        if applied
            .responses
            .iter()
            .any(|r| matches!(r, Response::Recording { .. } | Response::Expired { .. }))
        {
            self.shared
                .recordings_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(applied.responses)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Self::read_applied(&self.shared.tree())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tree = self.shared.tree();
        // Retention (`Expire`) scans the tree, so it is applied in a call of its own:
        // its effect must not depend on how openraft grouped the entries.
        let mut responses = Vec::new();
        let mut run = Vec::new();
        for entry in entries {
            let alone = matches!(
                &entry.payload,
                openraft::EntryPayload::Normal(crate::types::Request::Expire { .. })
            );
            if alone && !run.is_empty() {
                responses.extend(self.apply_run(&tree, std::mem::take(&mut run))?);
            }
            run.push(entry);
            if alone {
                responses.extend(self.apply_run(&tree, std::mem::take(&mut run))?);
            }
        }
        if !run.is_empty() {
            responses.extend(self.apply_run(&tree, run)?);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let tree = self.shared.tree();
        let (applied, membership) = Self::read_applied(&tree).unwrap_or_default();
        SnapshotBuilder {
            shared: self.shared.clone(),
            tree,
            applied,
            membership,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .shared
            .snap_dir
            .join(format!("recv-{}.snap.tmp", uuid::Uuid::new_v4().simple()));
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let previous = self.shared.receiving.lock().expect("lock").replace(path);
        if let Some(prev) = previous {
            let _ = std::fs::remove_file(prev);
        }
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        // Copy whatever handle we were given (normally the file from
        // begin_receiving_snapshot) into a file of our own, then load that.
        let mut snapshot = snapshot;
        snapshot
            .flush()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        snapshot
            .seek(io::SeekFrom::Start(0))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let path = self.shared.snap_dir.join(format!(
            "install-{}.snap.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tokio::io::copy(&mut *snapshot, &mut out)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        out.sync_all()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        drop((snapshot, out));
        if let Some(received) = self.shared.receiving.lock().expect("lock").take() {
            let _ = std::fs::remove_file(received);
        }
        let shared = self.shared.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || install_blocking(&shared, &path, &meta))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(index) = self
            .current_index()
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(self.shared.snap_dir.join(&index.file))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: index.meta,
            snapshot: Box::new(f),
        }))
    }
}

fn install_blocking(
    shared: &SmShared,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let err = |e: io::Error| snap_err(ErrorVerb::Write, e);
    let db = shared.durable.db();
    let current = db
        .get(POINTER_KEY)
        .map_err(|e| sm_err(ErrorVerb::Read, e))?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "sm.0".into());
    let generation: u64 = current.trim_start_matches("sm.").parse().unwrap_or(0) + 1;
    let new_name = format!("sm.{generation}");
    let _ = db.drop_tree(new_name.as_bytes());
    let new_tree = db
        .open_tree(&new_name)
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    let records = load_snapshot_file(&new_tree, path).map_err(err)?;
    let mut batch = sled::Batch::default();
    batch.insert(
        keys::APPLIED,
        AppliedLogId(meta.last_log_id)
            .encode()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?,
    );
    batch.insert(
        keys::MEMBERSHIP,
        meta.last_membership
            .encode()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?,
    );
    new_tree
        .apply_batch(batch)
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    shared
        .durable
        .flush()
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    // The switch: one key, flushed.
    db.insert(POINTER_KEY, new_name.as_bytes())
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    shared
        .durable
        .flush()
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    *shared.tree.write().expect("sm tree lock poisoned") = new_tree;
    shared
        .recordings_generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = db.drop_tree(current.as_bytes());
    // Keep the received file as our current snapshot (we may have to send it on).
    let file = format!("{}.snap", meta.snapshot_id);
    let tmp = shared.snap_dir.join(format!("{file}.tmp"));
    std::fs::rename(path, &tmp).map_err(err)?;
    publish(shared, &tmp, &file, meta).map_err(err)?;
    tracing::info!(snapshot = %meta.snapshot_id, records, "installed snapshot");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(crate::fixtures::log_id()),
            last_membership: crate::fixtures::stored_membership(),
            snapshot_id: "3-42-abc".into(),
        }
    }

    #[test]
    fn current_json_of_earlier_releases_is_version_1_and_newer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The file as earlier releases wrote it: no version field.
        let old = serde_json::json!({ "meta": meta(), "file": "3-42-abc.snap" });
        std::fs::write(dir.path().join("current.json"), old.to_string()).unwrap();
        let index = read_index(dir.path()).unwrap().unwrap();
        assert_eq!((index.version, index.file.as_str()), (1, "3-42-abc.snap"));
        assert_eq!(index.meta.snapshot_id, "3-42-abc");
        // A newer one names the file and its version.
        let newer = serde_json::json!({ "version": 2, "meta": meta(), "file": "x.snap" });
        std::fs::write(dir.path().join("current.json"), newer.to_string()).unwrap();
        let e = read_index(dir.path()).unwrap_err().to_string();
        assert!(e.contains("current.json has format version 2"), "{e}");
        // None at all: no snapshot yet.
        let empty = tempfile::tempdir().unwrap();
        assert!(read_index(empty.path()).unwrap().is_none());
    }

    #[test]
    fn a_snapshot_file_of_another_format_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let path = dir.path().join("s.snap");
        std::fs::write(&path, b"TDMSNAP2rest").unwrap();
        let e = load_snapshot_file(&tree, &path).unwrap_err().to_string();
        assert!(e.contains("format version 2"), "{e}");
        std::fs::write(&path, b"NOTSNAPSHOT!").unwrap();
        let e = load_snapshot_file(&tree, &path).unwrap_err().to_string();
        assert!(e.contains("not a tandem snapshot"), "{e}");
    }
}
