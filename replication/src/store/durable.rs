//! A flush that really reaches the disk.
//!
//! `sled::Db::flush` (0.34) is not an fsync. On Linux it writes its buffers with
//! `pwrite` and then calls `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`, which
//! starts and waits for the write-back of those pages but flushes neither the file's
//! metadata (its new length: sled's file grows at its end) nor the disk's volatile
//! write cache. Values too large for sled's log (a page over ~128 KiB, e.g. a leaf of
//! the Raft log holding several big entries) go to files under `db/blobs/`, which sled
//! writes without any sync at all. A kill -9 loses nothing (the page cache survives the
//! process), but a power cut or a kernel crash can lose writes that were acknowledged.
//!
//! [`DurableDb::flush`] therefore runs sled's flush and then makes it durable itself:
//! every blob file not yet synced is fsynced (and the `blobs` directory after a new
//! one), then the main file is fdatasynced. fsync works on the file, not on the
//! descriptor, so syncing our own descriptor covers what sled wrote through its own.
//! Every flush of the store goes through here.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The sled database plus what it takes to make its flush durable. Cheap to share
/// behind an `Arc`; flushes may run concurrently.
pub struct DurableDb {
    db: sled::Db,
    /// sled's main file (`<dir>/db`), opened once.
    main: File,
    main_path: PathBuf,
    blobs_dir: PathBuf,
    /// Blob files already fsynced (sled never rewrites a blob in place: a new value
    /// gets a new file). Pruned to the files present at each flush.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DurableDb {
    /// Wrap the sled database opened at `dir` (the path given to `sled::Config::path`).
    /// Also syncs `dir` and its parent once, so the files sled created at open survive
    /// a power cut.
    pub fn new(db: sled::Db, dir: &Path) -> io::Result<DurableDb> {
        let main_path = dir.join("db");
        let main = File::open(&main_path).map_err(|e| named(&main_path, e))?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(DurableDb {
            db,
            main,
            main_path,
            blobs_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// sled's flush, then fsync of new blob files and fdatasync of the main file.
    /// Blocking: call it from a blocking thread.
    pub fn flush(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        self.sync_blobs()?;
        self.main.sync_data().map_err(|e| named(&self.main_path, e))
    }

    fn sync_blobs(&self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(named(&self.blobs_dir, e)),
        };
        let mut synced = self.synced_blobs.lock().expect("blob set lock poisoned");
        let mut present = HashSet::new();
        let mut new_file = false;
        for entry in entries {
            let entry = entry.map_err(|e| named(&self.blobs_dir, e))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                match File::open(&path) {
                    Ok(f) => f.sync_all().map_err(|e| named(&path, e))?,
                    // Removed by sled since the listing (garbage-collected).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(named(&path, e)),
                }
                new_file = true;
            }
            present.insert(name);
        }
        if new_file {
            sync_dir(&self.blobs_dir)?;
        }
        *synced = present;
        Ok(())
    }

    /// Blob files synced so far (tests).
    #[cfg(test)]
    fn synced_blob_count(&self) -> usize {
        self.synced_blobs.lock().unwrap().len()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named(dir, e))
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("sync {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> DurableDb {
        let db = sled::Config::new().path(dir.join("db")).open().unwrap();
        DurableDb::new(db, &dir.join("db")).unwrap()
    }

    #[test]
    fn a_large_value_goes_to_a_blob_file_and_the_flush_syncs_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = open(tmp.path());
        d.db().insert(b"small", &[1u8; 100][..]).unwrap();
        d.flush().unwrap();
        assert_eq!(d.synced_blob_count(), 0, "no blob for a small value");

        // Over sled's log limit (segment 512 KiB / 4): written to db/blobs/<lsn>.
        d.db().insert(b"large", vec![2u8; 300 * 1024]).unwrap();
        d.flush().unwrap();
        let blobs: Vec<_> = std::fs::read_dir(tmp.path().join("db/blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "sled wrote no blob file");
        assert_eq!(d.synced_blob_count(), blobs.len(), "every blob file synced");
        for b in &blobs {
            assert!(d.synced_blobs.lock().unwrap().contains(b));
        }

        // The set follows the directory: a removed value's blob leaves it.
        d.db().remove(b"large").unwrap();
        d.flush().unwrap();
        let left: HashSet<OsString> = std::fs::read_dir(tmp.path().join("db/blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(d.synced_blobs.lock().unwrap().is_subset(&left));
    }

    #[test]
    fn a_missing_database_file_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let err = DurableDb::new(db, &tmp.path().join("nowhere"))
            .err()
            .expect("no file there");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }
}
