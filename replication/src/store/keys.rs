//! Key layout of the state-machine tree. Everything of the state machine lives in ONE
//! sled tree so that a single `sled::Batch` covers the data and the applied index.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `0x00` | `applied`, `membership` | applied log id, membership |
//! | `c` | config key | (version, JSON text) |
//! | `s` | start (8) + id (16) | the CDR (primary copy, in time order: range scans and exports read sequentially) |
//! | `d` | CDR id (16 bytes) | start (8): id index, for de-duplication and lookups |
//! | `r` | caller + `0x00` + start + id | empty: caller index |
//! | `e` | callee + `0x00` + start + id | empty: callee index |
//! | `g` | recording id | recording metadata |
//! | `G` | created + recording id | empty: recordings by age (retention) |

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub const APPLIED: &[u8] = b"\x00applied";
pub const MEMBERSHIP: &[u8] = b"\x00membership";
pub const META_PREFIX: u8 = 0;
pub const CONFIG: u8 = b'c';
pub const CDR: u8 = b'd';
pub const BY_START: u8 = b's';
pub const BY_CALLER: u8 = b'r';
pub const BY_CALLEE: u8 = b'e';
pub const RECORDING: u8 = b'g';
pub const RECORDING_BY_AGE: u8 = b'G';

/// Order-preserving encoding of microseconds since the epoch.
pub fn micros_key(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// The start time (microseconds) of a scan position (`time key + id`).
pub fn micros_of(pos: &[u8; 24]) -> i64 {
    let mut t = [0u8; 8];
    t.copy_from_slice(&pos[..8]);
    (u64::from_be_bytes(t) ^ (1 << 63)) as i64
}

pub fn recording_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(RECORDING);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn recording_age_key(created: i64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + id.len());
    k.push(RECORDING_BY_AGE);
    k.extend_from_slice(&micros_key(created));
    k.extend_from_slice(id.as_bytes());
    k
}

/// Order-preserving encoding of a timestamp (microseconds, sign bit flipped).
pub fn time_key(t: &DateTime<Utc>) -> [u8; 8] {
    micros_key(t.timestamp_micros())
}

pub fn config_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(CONFIG);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn cdr_key(id: &Uuid) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = CDR;
    k[1..].copy_from_slice(id.as_bytes());
    k
}

/// `prefix [+ party + 0x00]`: the start of an index range.
pub fn index_prefix(prefix: u8, party: Option<&str>) -> Vec<u8> {
    let mut k = vec![prefix];
    if let Some(p) = party {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

/// Full index key: `index_prefix + time_key + id`.
pub fn index_key(prefix: u8, party: Option<&str>, start: &DateTime<Utc>, id: &Uuid) -> Vec<u8> {
    let mut k = index_prefix(prefix, party);
    k.extend_from_slice(&time_key(start));
    k.extend_from_slice(id.as_bytes());
    k
}

/// Primary key of a CDR at a scan position (`s` + time + id).
pub fn primary_key(pos: &[u8; 24]) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = BY_START;
    k[1..].copy_from_slice(pos);
    k
}

/// The (time, id) suffix of an index key: the position a cursor resumes after.
pub fn position_of(index_key: &[u8]) -> Option<[u8; 24]> {
    if index_key.len() < 24 {
        return None;
    }
    let mut p = [0u8; 24];
    p.copy_from_slice(&index_key[index_key.len() - 24..]);
    Some(p)
}
