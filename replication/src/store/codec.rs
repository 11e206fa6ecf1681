//! The records tandem stores in sled or in a snapshot, each with its format version
//! (see [`crate::versioned`]): one version byte, then bincode.
//!
//! | record | where | type | version |
//! |---|---|---|---|
//! | CDR | `sm.N` / `s…` | [`Cdr`] | 1 |
//! | recording metadata | `sm.N` / `g…` | [`RecordingMeta`] | 1 |
//! | config entry (settings, SIP users, alarm outbox…) | `sm.N` / `c…` | [`StoredConfig`] | 1 |
//! | applied log id | `sm.N` / `\0applied` | [`AppliedLogId`] | 1 |
//! | membership (also from a snapshot's meta) | `sm.N` / `\0membership` | [`StoredMembership`] | 1 |
//! | Raft log entry | `log` | [`Entry`] | 1 |
//! | vote | `raft_meta` / `vote` | [`Vote`] | 1 |
//! | committed log id | `raft_meta` / `committed` | [`CommittedLogId`] | 1 |
//! | last purged log id | `raft_meta` / `last_purged` | [`PurgedLogId`] | 1 |
//!
//! Version 1 is the format every tandem so far has written (a `1` byte, then
//! bincode): existing stores open unchanged. The JSON text inside a config entry
//! (e.g. an alarm outbox mail) is the owner's format, not versioned here.
//!
//! Index entries (`d`, `r`, `e`, `G` keys) hold no value or a fixed 8-byte time key:
//! their layout is the key layout of [`super::keys`].

use serde::{Deserialize, Serialize};

use crate::cdr::{Cdr, CdrRef};
use crate::types::{Entry, LogId, RecordingMeta, StoredMembership, Vote};
use crate::versioned::initial_version;
pub use crate::versioned::{CodecError, Versioned};

/// A config entry as stored: the log index of the write that set it, and the JSON
/// text of the value. (Same bytes as the `(u64, String)` tuple of earlier releases.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub version: u64,
    pub value: String,
}

/// The last log id the state machine applied (stored with the data it produced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLogId(pub Option<LogId>);

/// The last committed log id the log store knows of (saved by openraft).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedLogId(pub Option<LogId>);

/// The log id up to which the log was purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgedLogId(pub LogId);

initial_version!(Cdr, "stored CDR", 1);
initial_version!(RecordingMeta, "stored recording metadata", 1);
initial_version!(StoredConfig, "stored config entry", 1);
initial_version!(AppliedLogId, "stored applied log id", 1);
initial_version!(StoredMembership, "stored membership", 1);
initial_version!(Entry, "Raft log entry", 1);
initial_version!(Vote, "stored vote", 1);
initial_version!(CommittedLogId, "stored committed log id", 1);
initial_version!(PurgedLogId, "stored purged log id", 1);

/// A view that decodes a stored record in place, borrowing its strings (the CSV
/// export reads a million CDRs this way). It reads the current version only.
pub trait BorrowedView<'a>: Deserialize<'a> {
    /// The owned type whose current layout the view mirrors.
    type Owned: Versioned;
}

impl<'a> BorrowedView<'a> for CdrRef<'a> {
    type Owned = Cdr;
}

/// Decode `bytes` as a borrowed view of the current version of `T::Owned`. An older
/// version is [`CodecError::NotCurrent`]: decode it with `T::Owned::decode`, which
/// migrates it (no older version of any stored record exists yet).
pub fn decode_borrowed<'a, T: BorrowedView<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let name = <T::Owned as Versioned>::NAME;
    let current = <T::Owned as Versioned>::VERSION;
    match bytes.split_first() {
        None => Err(CodecError::Empty { type_name: name }),
        Some((&tag, body)) if tag == current => {
            bincode::deserialize(body).map_err(|e| CodecError::Corrupt {
                type_name: name,
                version: tag,
                source: std::sync::Arc::new(e),
            })
        }
        Some((&found, _)) if found > current => Err(CodecError::Newer {
            type_name: name,
            found,
            newest: current,
        }),
        Some((&found, _)) => Err(CodecError::NotCurrent {
            type_name: name,
            found,
            current,
        }),
    }
}

#[cfg(test)]
mod tests;
