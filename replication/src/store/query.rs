//! Reads from the local state machine: config keys and CDR range scans.
//!
//! Reads are served from whatever this node has applied (stale reads); the caller
//! adds how fresh that is. Scans are iterators over sled, so an export of every CDR
//! streams without holding the rows in memory.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::codec;
use super::keys;
use crate::cdr::Cdr;

/// One config entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigEntry {
    pub key: String,
    /// JSON text of the value.
    pub value: String,
    /// Log index of the write that set it.
    pub version: u64,
}

/// A CDR query. Times bound `start`: `from <= start < to`.
#[derive(Debug, Clone, Default)]
pub struct CdrQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// Resume after this position (from a previous page's `next_cursor`).
    pub cursor: Option<Cursor>,
}

/// Opaque position in a scan: (start time key, CDR id). Shown to clients as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub [u8; 24]);

impl Cursor {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Cursor> {
        let v = hex::decode(s).ok()?;
        let a: [u8; 24] = v.try_into().ok()?;
        Some(Cursor(a))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("store read: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record: {0}")]
    Codec(#[from] codec::CodecError),
}

pub fn config_get(tree: &sled::Tree, key: &str) -> Result<Option<ConfigEntry>, QueryError> {
    match tree.get(keys::config_key(key))? {
        None => Ok(None),
        Some(v) => {
            let (version, value): (u64, String) = codec::decode(&v)?;
            Ok(Some(ConfigEntry {
                key: key.to_string(),
                value,
                version,
            }))
        }
    }
}

pub fn config_list(tree: &sled::Tree, prefix: &str) -> Result<Vec<ConfigEntry>, QueryError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(keys::config_key(prefix)) {
        let (k, v) = item?;
        let (version, value): (u64, String) = codec::decode(&v)?;
        out.push(ConfigEntry {
            key: String::from_utf8_lossy(&k[1..]).into_owned(),
            value,
            version,
        });
    }
    Ok(out)
}

pub fn cdr_get(tree: &sled::Tree, id: &uuid::Uuid) -> Result<Option<Cdr>, QueryError> {
    let Some(time) = tree.get(keys::cdr_key(id))? else {
        return Ok(None);
    };
    let mut pos = [0u8; 24];
    if time.len() != 8 {
        return Ok(None);
    }
    pos[..8].copy_from_slice(&time);
    pos[8..].copy_from_slice(id.as_bytes());
    cdr_at(tree, &pos)
}

fn cdr_at(tree: &sled::Tree, pos: &[u8; 24]) -> Result<Option<Cdr>, QueryError> {
    match tree.get(keys::primary_key(pos))? {
        None => Ok(None),
        Some(v) => Ok(Some(codec::decode(&v)?)),
    }
}

/// Number of CDRs stored.
pub fn cdr_count(tree: &sled::Tree) -> usize {
    tree.scan_prefix([keys::CDR]).count()
}

/// Scan CDRs in start-time order. Each item carries the cursor that resumes after it.
pub fn cdr_scan(
    tree: &sled::Tree,
    q: &CdrQuery,
) -> impl Iterator<Item = Result<(Cursor, Cdr), QueryError>> + Send + 'static {
    cdr_scan_raw(tree, q).map(|item| {
        let (pos, bytes) = item?;
        Ok((pos, codec::decode::<Cdr>(&bytes)?))
    })
}

/// [`cdr_scan`] without decoding: the stored bytes of each CDR, for readers that
/// decode them in place (`codec::decode_borrowed` into a `cdr::CdrRef`).
pub fn cdr_scan_raw(
    tree: &sled::Tree,
    q: &CdrQuery,
) -> impl Iterator<Item = Result<(Cursor, sled::IVec), QueryError>> + Send + 'static {
    // Pick the narrowest index.
    let (prefix_byte, party) = match (&q.caller, &q.callee) {
        (Some(c), _) => (keys::BY_CALLER, Some(c.clone())),
        (None, Some(c)) => (keys::BY_CALLEE, Some(c.clone())),
        (None, None) => (keys::BY_START, None),
    };
    let prefix = keys::index_prefix(prefix_byte, party.as_deref());
    let mut lo = prefix.clone();
    match (&q.cursor, &q.from) {
        (Some(c), _) => {
            lo.extend_from_slice(&c.0);
            lo.push(0); // strictly after the cursor
        }
        (None, Some(from)) => lo.extend_from_slice(&keys::time_key(from)),
        (None, None) => {}
    }
    let mut hi = prefix.clone();
    match &q.to {
        Some(to) => hi.extend_from_slice(&keys::time_key(to)),
        None => hi.extend_from_slice(&[0xff; 25]),
    }
    let callee_filter = if q.caller.is_some() {
        q.callee.clone()
    } else {
        None
    };
    let tree = tree.clone();
    let range = if lo < hi {
        Some(tree.range(lo..hi))
    } else {
        None
    };
    let primary = prefix_byte == keys::BY_START;
    range.into_iter().flatten().filter_map(move |item| {
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        let pos = keys::position_of(&k)?;
        // The time index holds the CDR itself; the party indexes point to it.
        let found = if primary {
            Ok(Some(v))
        } else {
            tree.get(keys::primary_key(&pos)).map_err(QueryError::from)
        };
        match found {
            Ok(Some(bytes)) => {
                if let Some(want) = &callee_filter {
                    match codec::decode_borrowed::<crate::cdr::CdrRef>(&bytes) {
                        Ok(cdr) if cdr.callee != want.as_str() => return None,
                        Ok(_) => {}
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                Some(Ok((Cursor(pos), bytes)))
            }
            Ok(None) => None, // index entry without record: skip
            Err(e) => Some(Err(e)),
        }
    })
}

/// The metadata of one recording.
pub fn recording_get(
    tree: &sled::Tree,
    id: &str,
) -> Result<Option<crate::types::RecordingMeta>, QueryError> {
    match tree.get(keys::recording_key(id))? {
        None => Ok(None),
        Some(v) => Ok(Some(codec::decode(&v)?)),
    }
}

/// Every recording's metadata in id order, starting after `after` (a page cursor).
pub fn recording_scan(
    tree: &sled::Tree,
    after: Option<&str>,
) -> impl Iterator<Item = Result<crate::types::RecordingMeta, QueryError>> + Send + 'static {
    let lo = match after {
        Some(a) => {
            let mut k = keys::recording_key(a);
            k.push(0);
            k
        }
        None => vec![keys::RECORDING],
    };
    tree.range(lo..vec![keys::RECORDING + 1])
        .map(|item| Ok(codec::decode(&item?.1)?))
}

/// Number of recordings known.
pub fn recording_count(tree: &sled::Tree) -> usize {
    tree.scan_prefix([keys::RECORDING]).count()
}
