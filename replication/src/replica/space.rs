//! Free space of the data directory. Writes that add data are refused while less
//! than the reserve is free, so that the store never runs into "no space left on
//! device" (which stops the Raft core): the node keeps serving reads, the refusal
//! says what to do (HTTP 507), and writes go on by themselves once space is freed.

use std::path::{Path, PathBuf};

use crate::types::{NodeId, Request};
use crate::{Error, Result};

/// The data directory's free space and the reserve kept under writes.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    /// Bytes that must stay free; 0 turns the guard off.
    reserve: u64,
}

impl Space {
    pub fn new(dir: &Path, reserve: u64) -> Space {
        Space {
            dir: dir.to_path_buf(),
            reserve,
        }
    }

    /// Bytes free for the node (as `df` shows them); `None` if the filesystem
    /// cannot be asked.
    pub fn free(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// `Err(DiskFull)` while less than the reserve is free.
    pub fn check(&self, node: NodeId) -> Result<()> {
        match self.free() {
            Some(free) if self.reserve > 0 && free < self.reserve => Err(Error::DiskFull {
                node,
                dir: self.dir.clone(),
                free,
                reserve: self.reserve,
            }),
            _ => Ok(()),
        }
    }

    /// The refusal `req` gets now, if it adds data (CDRs, config, recordings);
    /// deletes, holder reports and membership changes always go through.
    pub fn check_request(&self, node: NodeId, req: &Request) -> Result<()> {
        match req {
            Request::AddCdrs { .. } | Request::SetConfig { .. } | Request::AddRecording { .. } => {
                self.check(node)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_data_but_not_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Space::new(dir.path(), u64::MAX);
        let e = s.check(3).unwrap_err();
        assert!(matches!(e, Error::DiskFull { node: 3, .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("node 3") && text.contains("free"), "{text}");
        assert!(s
            .check_request(3, &Request::DeleteConfig { key: "k".into() })
            .is_ok());
        assert!(s
            .check_request(3, &Request::AddCdrs { cdrs: vec![] })
            .is_err());
        // Off with a zero reserve.
        assert!(Space::new(dir.path(), 0).check(3).is_ok());
    }
}
