//! Call recordings: files on the data nodes, metadata in Raft, bytes by a separate
//! channel.
//!
//! ```text
//!  upload / media ─▶ BlobStore::writer ─ fsync, sha256 ─▶ <data_dir>/recordings/<id>
//!                         │
//!                         └─▶ Raft: AddRecording{meta, holders: {me}}
//!                                       │ (applied on every node)
//!                                       ▼
//!  other data node: BlobSync ── BlobRead{id, offset} over its own peer TLS connection ──▶ holder
//!        <id>.part ◀── chunks (sha256 each, paced by the bandwidth cap, round robin)
//!        whole-file sha256 ✓ ─ fsync ─ rename ─▶ Raft: RecordingHeld{id, me}
//! ```
//!
//! - [`BlobStore`]: the files of one node. Writes go to a temporary name, are fsynced
//!   and checked against their sha256 before they take their final name; reads
//!   check the sha256 too (once per file version, cached).
//! - [`sync::run`]: fetches every recording this node lacks from a node that
//!   holds it, resumable, capped, fair; removes files no metadata names. It sees the
//!   cluster only through [`sync::Cluster`] (implemented by the replica).
//! - [`rate::TokenBucket`]: the bandwidth cap, a pure function of time.
//!
//! Recording bytes never travel in the Raft log: openraft sends heartbeats on the
//! same stream as entries, so a 100 MB entry would stall them.

pub mod rate;
pub mod sync;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Suffix of a file being received from another node (resumable).
pub const PART_SUFFIX: &str = ".part";
/// Prefix of a file being written by an upload (not resumable).
const UPLOAD_PREFIX: &str = ".upload-";
/// Prefix of a quarantined file (`.corrupt-<id>-<unix seconds>`): ids never start
/// with '.', so a quarantined file cannot take the name of a recording.
const QUARANTINE_PREFIX: &str = ".corrupt-";
/// What earlier releases appended to a quarantined file; still skipped when
/// listing, hence refused at the end of an id.
const OLD_QUARANTINE_SUFFIX: &str = ".corrupt";
/// Longest recording id.
pub const MAX_ID_LEN: usize = 100;
/// Written bytes are flushed to disk at least every this many bytes: many small
/// flushes instead of one big one, so that the Raft log's fsync never waits behind
/// the writeback of a 100 MB recording (measured: CDR commit p99 7x its idle value
/// with one flush at the end).
pub const FLUSH_EVERY: u64 = 1024 * 1024;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("recording id {id:?} is invalid: use 1-{MAX_ID_LEN} letters, digits, '.', '_' or '-', not starting with '.' and not ending in \".part\" or \".corrupt\" (reserved for partial and quarantined files)")]
    BadId { id: String },
    #[error(
        "recording {id} is being stored here by another upload or copy; retry to compare its bytes"
    )]
    Exists { id: String },
    #[error("recording {id} is not stored on this node")]
    Missing { id: String },
    #[error("recording {id}: sha256 of the bytes is {actual}, expected {expected}")]
    Checksum {
        id: String,
        expected: String,
        actual: String,
    },
    #[error("recording file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    fn io(path: &Path, source: io::Error) -> BlobError {
        BlobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Check a recording id (it becomes a file name).
pub fn check_id(id: &str) -> Result<(), BlobError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.ends_with(PART_SUFFIX)
        && !id.ends_with(OLD_QUARANTINE_SUFFIX);
    if ok {
        Ok(())
    } else {
        Err(BlobError::BadId { id: id.to_string() })
    }
}

/// Hex sha256 of a whole file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BlobError> {
    let mut f = File::open(path).map_err(|e| BlobError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| BlobError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BlobError::io(dir, e))
}

/// The recording files of this node, in one directory.
pub struct BlobStore {
    dir: PathBuf,
    /// Files whose sha256 was checked: id → (modified time, size, sha256).
    verified: Mutex<HashMap<String, (SystemTime, u64, String)>>,
    /// Ids an upload is storing now (see [`BlobStore::claim`]).
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// One upload's hold on a recording id (see [`BlobStore::claim`]); released on drop.
pub struct IdClaim<'a> {
    store: &'a BlobStore,
    id: String,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for IdClaim<'_> {
    fn drop(&mut self) {
        let mut claims = self.store.claims.lock().expect("claims lock");
        // Forget the id once nobody else waits for it (the map and this claim
        // are the only owners left).
        if claims
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            claims.remove(&self.id);
        }
    }
}

impl BlobStore {
    /// Open (create) the directory. Leftover uploads of a crashed process are removed;
    /// partial transfers (`.part`) are kept so they can resume.
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        fs::create_dir_all(dir).map_err(|e| BlobError::io(dir, e))?;
        for entry in fs::read_dir(dir).map_err(|e| BlobError::io(dir, e))? {
            let entry = entry.map_err(|e| BlobError::io(dir, e))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(UPLOAD_PREFIX)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            verified: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Final path of a recording.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Path of a partial transfer.
    pub fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{PART_SUFFIX}"))
    }

    /// Whether the complete file is here (not checked against its sha256).
    pub fn has(&self, id: &str) -> bool {
        self.path(id).is_file()
    }

    /// Start writing a new recording (an upload). The bytes become visible under
    /// their id only through [`BlobWriter::finish`].
    pub fn writer(&self, id: &str) -> Result<BlobWriter, BlobError> {
        check_id(id)?;
        let tmp = self
            .dir
            .join(format!("{UPLOAD_PREFIX}{id}-{}", rand::random::<u32>()));
        let file = File::create(&tmp).map_err(|e| BlobError::io(&tmp, e))?;
        Ok(BlobWriter {
            id: id.to_string(),
            tmp,
            file: Some(file),
            hash: Sha256::new(),
            size: 0,
            unsynced: 0,
            dest: self.path(id),
            dir: self.dir.clone(),
        })
    }

    /// Waits until no other upload on this node is storing `id`, then holds it
    /// until the claim is dropped: two uploads of one id run one after the other,
    /// so the second sees what the first stored.
    pub async fn claim(&self, id: &str) -> IdClaim<'_> {
        let lock = self
            .claims
            .lock()
            .expect("claims lock")
            .entry(id.to_string())
            .or_default()
            .clone();
        IdClaim {
            store: self,
            id: id.to_string(),
            _held: lock.lock_owned().await,
        }
    }

    /// Sets the file of `id` aside (quarantine name) because no metadata refers
    /// to it: left by an upload that crashed before its metadata committed.
    pub fn set_aside(&self, id: &str, why: &str) -> Result<(), BlobError> {
        check_id(id)?;
        let path = self.path(id);
        let bad = self.quarantine_path(id);
        fs::rename(&path, &bad).map_err(|e| BlobError::io(&path, e))?;
        self.verified.lock().expect("verified lock").remove(id);
        tracing::warn!(recording = id, quarantined = %bad.display(), why, "recording file set aside");
        Ok(())
    }

    fn quarantine_path(&self, id: &str) -> PathBuf {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.dir.join(format!("{QUARANTINE_PREFIX}{id}-{secs}"))
    }

    /// Take a finished file (e.g. a call recording from the media plane) into the
    /// store under `id`: copied, fsynced and checked like an upload.
    pub fn import(&self, id: &str, src: &Path) -> Result<(String, u64), BlobError> {
        let mut w = self.writer(id)?;
        let mut f = File::open(src).map_err(|e| BlobError::io(src, e))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| BlobError::io(src, e))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        w.finish(None)
    }

    /// Take a finished file that is already on this filesystem (a call recording
    /// written by the media plane) under `id` by renaming it, after checking it
    /// against `sha256`. Returns its size.
    pub fn adopt(&self, id: &str, src: &Path, sha256: &str) -> Result<u64, BlobError> {
        check_id(id)?;
        let (actual, size) = sha256_file(src)?;
        if actual != sha256 {
            return Err(BlobError::Checksum {
                id: id.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(|e| BlobError::io(src, e))?;
        let dest = self.path(id);
        match fs::rename(src, &dest) {
            Ok(()) => {}
            // Another filesystem: copy (fsynced, checked) instead.
            Err(e) if e.raw_os_error() == Some(18) => {
                self.import(id, src)?;
                let _ = fs::remove_file(src);
                return Ok(size);
            }
            Err(e) => return Err(BlobError::io(&dest, e)),
        }
        fsync_dir(&self.dir)?;
        Ok(size)
    }

    /// Check the file of `id` against `sha256` (cached per file version). A file
    /// that fails is renamed `.corrupt-<id>-<unix seconds>` so that the sync fetches a good copy.
    pub fn verify(&self, id: &str, sha256: &str) -> Result<(), BlobError> {
        check_id(id)?;
        let path = self.path(id);
        let md = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { id: id.to_string() })
            }
            Err(e) => return Err(BlobError::io(&path, e)),
        };
        let stamp = (md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len());
        if let Some((t, len, sha)) = self.verified.lock().expect("verified lock").get(id) {
            if (*t, *len) == stamp && sha == sha256 {
                return Ok(());
            }
        }
        let (actual, _) = sha256_file(&path)?;
        if actual != sha256 {
            let bad = self.quarantine_path(id);
            let _ = fs::rename(&path, &bad);
            tracing::error!(recording = id, expected = sha256, %actual, quarantined = %bad.display(), "recording file failed its sha256 check");
            return Err(BlobError::Checksum {
                id: id.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        self.verified
            .lock()
            .expect("verified lock")
            .insert(id.to_string(), (stamp.0, stamp.1, actual));
        Ok(())
    }

    /// Forget that `id` was checked (the next `verify` re-reads the file).
    pub fn forget_verified(&self, id: &str) {
        self.verified.lock().expect("verified lock").remove(id);
    }

    /// Open the file of `id` for reading after checking its sha256.
    pub fn open_verified(&self, id: &str, sha256: &str) -> Result<(File, u64), BlobError> {
        self.verify(id, sha256)?;
        let path = self.path(id);
        let f = File::open(&path).map_err(|e| BlobError::io(&path, e))?;
        let len = f.metadata().map_err(|e| BlobError::io(&path, e))?.len();
        Ok((f, len))
    }

    /// Read up to `len` bytes of `id` at `offset` (serving another node's fetch).
    pub fn read_at(&self, id: &str, offset: u64, len: usize) -> Result<(Vec<u8>, u64), BlobError> {
        check_id(id)?;
        let path = self.path(id);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { id: id.to_string() })
            }
            Err(e) => return Err(BlobError::io(&path, e)),
        };
        let total = f.metadata().map_err(|e| BlobError::io(&path, e))?.len();
        let want = (total.saturating_sub(offset)).min(len as u64) as usize;
        let mut buf = vec![0u8; want];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| BlobError::io(&path, e))?;
        Ok((buf, total))
    }

    /// Remove the file (and any partial copy) of `id`.
    pub fn remove(&self, id: &str) -> Result<(), BlobError> {
        check_id(id)?;
        for p in [self.path(id), self.part_path(id)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BlobError::io(&p, e)),
            }
        }
        self.verified.lock().expect("verified lock").remove(id);
        Ok(())
    }

    /// Ids of the complete files here, with their modification time.
    pub fn list(&self) -> Result<Vec<(String, SystemTime)>, BlobError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| BlobError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| BlobError::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_id(&name).is_err() {
                continue;
            }
            let t = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((name, t));
        }
        Ok(out)
    }

    /// Append a received chunk to the partial file of `id` at `offset`.
    pub fn write_part(
        &self,
        id: &str,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<(), BlobError> {
        let path = self.part_path(id);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| BlobError::io(&path, e))?;
        f.set_len(offset)
            .and_then(|_| f.seek(SeekFrom::Start(offset)))
            .and_then(|_| f.write_all(data))
            .map_err(|e| BlobError::io(&path, e))?;
        if sync {
            f.sync_data().map_err(|e| BlobError::io(&path, e))?;
        }
        Ok(())
    }

    /// Length of the partial file of `id` (where a transfer resumes), 0 if none.
    pub fn part_len(&self, id: &str) -> u64 {
        fs::metadata(self.part_path(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Check the complete partial file against `sha256`, fsync it and give it its
    /// final name. A mismatch deletes the partial file (the transfer restarts).
    pub fn complete_part(&self, id: &str, sha256: &str) -> Result<(), BlobError> {
        let part = self.part_path(id);
        let (actual, _) = sha256_file(&part)?;
        if actual != sha256 {
            let _ = fs::remove_file(&part);
            return Err(BlobError::Checksum {
                id: id.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(|e| BlobError::io(&part, e))?;
        let dest = self.path(id);
        fs::rename(&part, &dest).map_err(|e| BlobError::io(&dest, e))?;
        fsync_dir(&self.dir)
    }

    /// Bytes used by recordings here.
    pub fn bytes_used(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// A recording being written (an upload). Dropped without `finish`, it leaves
/// nothing behind.
pub struct BlobWriter {
    id: String,
    tmp: PathBuf,
    file: Option<File>,
    hash: Sha256,
    size: u64,
    /// Bytes written since the last flush to disk.
    unsynced: u64,
    dest: PathBuf,
    dir: PathBuf,
}

impl BlobWriter {
    pub fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        let f = self.file.as_mut().expect("writer used after finish");
        f.write_all(data).map_err(|e| BlobError::io(&self.tmp, e))?;
        self.hash.update(data);
        self.size += data.len() as u64;
        self.unsynced += data.len() as u64;
        if self.unsynced >= FLUSH_EVERY {
            f.sync_data().map_err(|e| BlobError::io(&self.tmp, e))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// fsync, check against `expected` (if the sender gave one), rename to the final
    /// name, fsync the directory. Returns (sha256, size).
    pub fn finish(mut self, expected: Option<&str>) -> Result<(String, u64), BlobError> {
        let f = self.file.take().expect("writer finished twice");
        f.sync_all().map_err(|e| BlobError::io(&self.tmp, e))?;
        drop(f);
        let sha = self.checked_digest(expected)?;
        // Never over another file of that id: a link fails if the name exists
        // (two uploads of one id must not leave the bytes of one under the
        // metadata of the other).
        match fs::hard_link(&self.tmp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BlobError::Exists {
                    id: self.id.clone(),
                })
            }
            Err(e) => return Err(BlobError::io(&self.dest, e)),
        }
        fs::remove_file(&self.tmp).map_err(|e| BlobError::io(&self.tmp, e))?;
        fsync_dir(&self.dir)?;
        Ok((sha, self.size))
    }
}

impl BlobWriter {
    /// The sha256 and size of what was written, checked against `expected`,
    /// without storing it (the temporary file is removed): for a second upload
    /// of an id that is stored already, which is only compared.
    pub fn digest_only(mut self, expected: Option<&str>) -> Result<(String, u64), BlobError> {
        self.file.take();
        let sha = self.checked_digest(expected)?;
        Ok((sha, self.size))
    }

    fn checked_digest(&mut self, expected: Option<&str>) -> Result<String, BlobError> {
        let sha = hex::encode(std::mem::take(&mut self.hash).finalize());
        match expected {
            Some(want) if !want.eq_ignore_ascii_case(&sha) => Err(BlobError::Checksum {
                id: self.id.clone(),
                expected: want.to_string(),
                actual: sha,
            }),
            _ => Ok(sha),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_verify_read_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let mut w = s.writer("rec-1").unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        let (sha, size) = w.finish(None).unwrap();
        assert_eq!(size, 11);
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        s.verify("rec-1", &sha).unwrap();
        let (data, total) = s.read_at("rec-1", 6, 100).unwrap();
        assert_eq!((data.as_slice(), total), (&b"world"[..], 11));
        // A flipped byte on disk is caught on read and the file is quarantined.
        fs::write(s.path("rec-1"), b"hellO world").unwrap();
        assert!(matches!(
            s.verify("rec-1", &sha),
            Err(BlobError::Checksum { .. })
        ));
        assert!(!s.has("rec-1"));
    }

    #[test]
    fn a_second_writer_of_one_id_never_replaces_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let (mut first, mut second) = (s.writer("r").unwrap(), s.writer("r").unwrap());
        first.write(b"first bytes").unwrap();
        second.write(b"other bytes").unwrap();
        let (sha, _) = first.finish(None).unwrap();
        assert!(matches!(second.finish(None), Err(BlobError::Exists { .. })));
        s.verify("r", &sha).unwrap();
        // Only the file itself is left: the loser's temporary file is gone.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn quarantined_files_cannot_take_a_recordings_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        assert!(matches!(
            s.writer("a.corrupt"),
            Err(BlobError::BadId { .. })
        ));
        let mut w = s.writer("a").unwrap();
        w.write(b"abc").unwrap();
        let (sha, _) = w.finish(None).unwrap();
        fs::write(s.path("a"), b"abd").unwrap();
        assert!(s.verify("a", &sha).is_err());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.len() == 1 && names[0].starts_with(".corrupt-a-"),
            "{names:?}"
        );
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn wrong_expected_sha_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let mut w = s.writer("x").unwrap();
        w.write(b"abc").unwrap();
        assert!(w.finish(Some(&"0".repeat(64))).is_err());
        assert!(!s.has("x"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn partial_transfer_resumes_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let body = b"0123456789";
        let sha = hex::encode(Sha256::digest(body));
        s.write_part("p", 0, &body[..4], true).unwrap();
        assert_eq!(s.part_len("p"), 4);
        s.write_part("p", 4, &body[4..], true).unwrap();
        s.complete_part("p", &sha).unwrap();
        assert!(s.has("p"));
        s.write_part("q", 0, b"junk", false).unwrap();
        assert!(s.complete_part("q", &sha).is_err());
        assert_eq!(s.part_len("q"), 0, "a bad partial file is dropped");
    }

    #[test]
    fn ids_that_are_not_file_names_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b", "x.part", &"a".repeat(101)] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
        check_id("2026-11-23_call-7.wav").unwrap();
    }
}
