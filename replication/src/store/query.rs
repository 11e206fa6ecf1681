//! Reads from the local state machine: config keys and CDR range scans.
//!
//! Reads are served from whatever this node has applied (stale reads); the caller
//! adds how fresh that is. Scans are iterators over sled, so an export of every CDR
//! streams without holding the rows in memory.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::codec::{self, StoredConfig, Versioned};
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
            let StoredConfig { version, value } = StoredConfig::decode(&v)?;
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
        let StoredConfig { version, value } = StoredConfig::decode(&v)?;
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
        Some(v) => Ok(Some(Cdr::decode(&v)?)),
    }
}

/// Number of CDRs stored.
pub fn cdr_count(tree: &sled::Tree) -> usize {
    tree.scan_prefix([keys::CDR]).count()
}

/// The index a query scans (its prefix byte) and the key range `lo..hi` it covers.
fn scan_bounds(q: &CdrQuery) -> (u8, Vec<u8>, Vec<u8>) {
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
    (prefix_byte, lo, hi)
}

/// Split `q` (no cursor) into at most `n` queries over consecutive start-time slices
/// whose scans, one after the other, give exactly the rows of `q` in the same order:
/// lets an export scan several slices at once. A query with a cursor, or whose rows
/// all share one start time, stays whole.
pub fn cdr_slices(tree: &sled::Tree, q: &CdrQuery, n: usize) -> Result<Vec<CdrQuery>, QueryError> {
    if q.cursor.is_some() || n < 2 {
        return Ok(vec![q.clone()]);
    }
    let (_, lo, hi) = scan_bounds(q);
    if lo >= hi {
        return Ok(vec![q.clone()]);
    }
    let start_of = |k: &[u8]| keys::position_of(k).map(|p| keys::micros_of(&p));
    let mut range = tree.range(lo..hi);
    let (first, last) = match (range.next(), range.next_back()) {
        (Some(a), Some(b)) => (start_of(&a?.0), start_of(&b?.0)),
        _ => return Ok(vec![q.clone()]),
    };
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(vec![q.clone()]);
    };
    // Slice i covers [first + i·step, first + (i+1)·step); the first and the last keep
    // the query's own outer bounds.
    let span = (last as i128 - first as i128 + 1) as u128;
    let step = span.div_ceil(n as u128).max(1);
    let count = span.div_ceil(step);
    let bound = |i: u128| {
        let micros = i64::try_from(first as i128 + (i * step) as i128).ok()?;
        DateTime::from_timestamp_micros(micros)
    };
    let slices: Option<Vec<CdrQuery>> = (0..count)
        .map(|i| {
            let mut part = q.clone();
            if i > 0 {
                part.from = Some(bound(i)?);
            }
            if i + 1 < count {
                part.to = Some(bound(i + 1)?);
            }
            Some(part)
        })
        .collect();
    Ok(slices.unwrap_or_else(|| vec![q.clone()]))
}

/// Scan CDRs in start-time order. Each item carries the cursor that resumes after it.
pub fn cdr_scan(
    tree: &sled::Tree,
    q: &CdrQuery,
) -> impl Iterator<Item = Result<(Cursor, Cdr), QueryError>> + Send + 'static {
    cdr_scan_raw(tree, q).map(|item| {
        let (pos, bytes) = item?;
        Ok((pos, Cdr::decode(&bytes)?))
    })
}

/// [`cdr_scan`] without decoding: the stored bytes of each CDR, for readers that
/// decode them in place (`codec::decode_borrowed` into a `cdr::CdrRef`).
pub fn cdr_scan_raw(
    tree: &sled::Tree,
    q: &CdrQuery,
) -> impl Iterator<Item = Result<(Cursor, sled::IVec), QueryError>> + Send + 'static {
    let (prefix_byte, lo, hi) = scan_bounds(q);
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
        Some(v) => Ok(Some(crate::types::RecordingMeta::decode(&v)?)),
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
        .map(|item| Ok(crate::types::RecordingMeta::decode(&item?.1)?))
}

/// Number of recordings known.
pub fn recording_count(tree: &sled::Tree) -> usize {
    tree.scan_prefix([keys::RECORDING]).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::apply_entries;
    use crate::types::{Entry, LogId, Request};
    use openraft::{CommittedLeaderId, EntryPayload};

    /// 300 CDRs over ~5 hours, several per start time, three callers and two callees.
    fn loaded() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        let base: DateTime<Utc> = "2026-01-01T08:00:00Z".parse().unwrap();
        let cdrs: Vec<Cdr> = (0..300i64)
            .map(|i| {
                // Uneven spacing, and ties: i / 3 seconds squared.
                let start = base + chrono::Duration::seconds((i / 3) * (i / 3) * 2);
                let end = start + chrono::Duration::seconds(30);
                let caller = format!("10{}", i % 3);
                let callee = format!("20{}", i % 2);
                Cdr::new_call(&caller, &callee, start, None, end, "a")
            })
            .collect();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Request::AddCdrs { cdrs }),
        };
        let applied = apply_entries(&tree, [entry]).unwrap();
        tree.apply_batch(applied.batch).unwrap();
        tree
    }

    fn ids(tree: &sled::Tree, q: &CdrQuery) -> Vec<uuid::Uuid> {
        cdr_scan(tree, q).map(|r| r.unwrap().1.id).collect()
    }

    #[test]
    fn slices_of_a_query_scan_exactly_its_rows_in_order() {
        let tree = loaded();
        let t = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let queries = [
            CdrQuery::default(),
            CdrQuery {
                from: t("2026-01-01T08:30:00Z"),
                to: t("2026-01-01T11:00:00Z"),
                ..Default::default()
            },
            CdrQuery {
                caller: Some("101".into()),
                ..Default::default()
            },
            CdrQuery {
                caller: Some("102".into()),
                callee: Some("201".into()),
                from: t("2026-01-01T09:00:00Z"),
                ..Default::default()
            },
            CdrQuery {
                callee: Some("200".into()),
                to: t("2026-01-01T09:00:00Z"),
                ..Default::default()
            },
        ];
        for q in &queries {
            let whole = ids(&tree, q);
            assert!(!whole.is_empty(), "{q:?} finds rows");
            for n in [2, 3, 7, 64, 1000] {
                let slices = cdr_slices(&tree, q, n).unwrap();
                assert!(slices.len() <= n, "{n} asked, {} given", slices.len());
                if n >= 3 {
                    assert!(slices.len() > 1, "{q:?} split in {n}");
                }
                let joined: Vec<_> = slices.iter().flat_map(|s| ids(&tree, s)).collect();
                assert_eq!(joined, whole, "{q:?} in {n} slices");
            }
        }
    }

    #[test]
    fn a_query_with_a_cursor_or_one_start_time_or_no_rows_stays_whole() {
        let tree = loaded();
        let first = cdr_scan(&tree, &CdrQuery::default())
            .next()
            .unwrap()
            .unwrap();
        let with_cursor = CdrQuery {
            cursor: Some(first.0),
            ..Default::default()
        };
        assert_eq!(cdr_slices(&tree, &with_cursor, 4).unwrap().len(), 1);
        // The first three CDRs share one start time.
        let one_time = CdrQuery {
            to: Some(first.1.start + chrono::Duration::microseconds(1)),
            ..Default::default()
        };
        assert_eq!(ids(&tree, &one_time).len(), 3);
        assert_eq!(cdr_slices(&tree, &one_time, 4).unwrap().len(), 1);
        let none = CdrQuery {
            caller: Some("nobody".into()),
            ..Default::default()
        };
        assert_eq!(cdr_slices(&tree, &none, 4).unwrap().len(), 1);
    }
}
