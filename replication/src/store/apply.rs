//! Deterministic apply: a pure function of (state, entries) → (batch, responses).
//!
//! It reads the state-machine tree, writes nothing itself and returns one
//! `sled::Batch` holding the data AND the new applied log id, which the caller
//! applies atomically. No clock, no randomness, no network: timestamps come inside
//! the entries. Tests drive it with a temporary sled tree.

use std::collections::HashSet;

use openraft::{EntryPayload, RaftLogId};

use super::codec::{self, AppliedLogId, StoredConfig, Versioned};
use super::keys;
use crate::cdr::Cdr;
use crate::types::{Entry, RecordingMeta, Request, Response, StoredMembership};

/// Everything one call to [`apply_entries`] produced.
pub struct Applied {
    pub batch: sled::Batch,
    pub responses: Vec<Response>,
    /// CDRs newly inserted (for metrics).
    pub cdrs_inserted: u64,
}

/// Compute the effect of `entries` on `tree`. Entries are applied in order; later
/// entries see the effect of earlier ones in the same call.
///
/// An `Expire` entry must be applied in a call of its own (the state machine does
/// so): it scans the tree, which does not yet hold what earlier entries of the same
/// call wrote, and the result must not depend on how entries were grouped.
pub fn apply_entries(
    tree: &sled::Tree,
    entries: impl IntoIterator<Item = Entry>,
) -> Result<Applied, ApplyError> {
    let mut batch = sled::Batch::default();
    let mut responses = Vec::new();
    let mut cdrs_inserted = 0u64;
    // CDR ids and config keys written earlier in this call (not yet in the tree).
    let mut new_ids: HashSet<uuid::Uuid> = HashSet::new();
    let mut config_written: std::collections::HashMap<String, bool> = Default::default();
    // Recordings written earlier in this call (None: deleted).
    let mut recordings: std::collections::HashMap<String, Option<RecordingMeta>> =
        Default::default();
    let mut last = None;
    for entry in entries {
        let log_id = *entry.get_log_id();
        last = Some(log_id);
        let resp = match entry.payload {
            EntryPayload::Blank => Response::Done,
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m);
                batch.insert(keys::MEMBERSHIP, stored.encode()?);
                Response::Done
            }
            EntryPayload::Normal(req) => match req {
                Request::SetConfig { key, value } => {
                    let existed = match config_written.get(&key) {
                        Some(present) => *present,
                        None => tree.contains_key(keys::config_key(&key))?,
                    };
                    batch.insert(
                        keys::config_key(&key),
                        StoredConfig {
                            version: log_id.index,
                            value,
                        }
                        .encode()?,
                    );
                    config_written.insert(key.clone(), true);
                    Response::Config {
                        key,
                        version: log_id.index,
                        existed,
                    }
                }
                Request::DeleteConfig { key } => {
                    let existed = match config_written.get(&key) {
                        Some(present) => *present,
                        None => tree.contains_key(keys::config_key(&key))?,
                    };
                    batch.remove(keys::config_key(&key));
                    config_written.insert(key.clone(), false);
                    Response::Config {
                        key,
                        version: log_id.index,
                        existed,
                    }
                }
                Request::AddCdrs { cdrs } => {
                    let (mut inserted, mut duplicate_ids) = (0u32, Vec::new());
                    for cdr in cdrs {
                        if new_ids.contains(&cdr.id) || tree.contains_key(keys::cdr_key(&cdr.id))? {
                            duplicate_ids.push(cdr.id);
                            continue;
                        }
                        insert_cdr(&mut batch, &cdr)?;
                        new_ids.insert(cdr.id);
                        inserted += 1;
                    }
                    cdrs_inserted += u64::from(inserted);
                    Response::Cdrs {
                        inserted,
                        duplicates: duplicate_ids.len() as u32,
                        duplicate_ids,
                    }
                }
                Request::AddRecording { meta } => {
                    match recording(tree, &recordings, &meta.id)? {
                        // The id is taken by other bytes (two uploads raced on two
                        // nodes): the first one committed stays, the other is refused.
                        Some(have) if have.sha256 != meta.sha256 => Response::RecordingConflict {
                            id: have.id,
                            sha256: have.sha256,
                        },
                        current => {
                            let merged = match current {
                                // A retry (or a second upload of the same bytes): keep
                                // the first metadata, add the new holders.
                                Some(mut have) => {
                                    have.holders.extend(meta.holders.iter().copied());
                                    have
                                }
                                None => {
                                    batch.insert(
                                        keys::recording_age_key(meta.created, &meta.id),
                                        &[][..],
                                    );
                                    meta
                                }
                            };
                            batch.insert(keys::recording_key(&merged.id), merged.encode()?);
                            let resp = Response::Recording {
                                id: merged.id.clone(),
                                known: true,
                                holders: merged.holders.iter().copied().collect(),
                            };
                            recordings.insert(merged.id.clone(), Some(merged));
                            resp
                        }
                    }
                }
                Request::RecordingHeld { id, node, held } => {
                    match recording(tree, &recordings, &id)? {
                        Some(mut have) => {
                            if held {
                                have.holders.insert(node);
                            } else {
                                have.holders.remove(&node);
                            }
                            batch.insert(keys::recording_key(&id), have.encode()?);
                            let resp = Response::Recording {
                                id: id.clone(),
                                known: true,
                                holders: have.holders.iter().copied().collect(),
                            };
                            recordings.insert(id, Some(have));
                            resp
                        }
                        None => Response::Recording {
                            id,
                            known: false,
                            holders: Vec::new(),
                        },
                    }
                }
                Request::Expire {
                    cdrs_before,
                    recordings_before,
                    limit,
                } => {
                    let cdrs = match cdrs_before {
                        Some(before) => expire_cdrs(tree, &mut batch, before, limit)?,
                        None => 0,
                    };
                    let recs = match recordings_before {
                        Some(before) => expire_recordings(tree, &mut batch, before, limit)?,
                        None => 0,
                    };
                    Response::Expired {
                        cdrs,
                        recordings: recs,
                    }
                }
            },
        };
        responses.push(resp);
    }
    if let Some(last) = last {
        batch.insert(keys::APPLIED, AppliedLogId(Some(last)).encode()?);
    }
    Ok(Applied {
        batch,
        responses,
        cdrs_inserted,
    })
}

fn insert_cdr(batch: &mut sled::Batch, cdr: &Cdr) -> Result<(), ApplyError> {
    batch.insert(
        keys::index_key(keys::BY_START, None, &cdr.start, &cdr.id),
        cdr.encode()?,
    );
    batch.insert(&keys::cdr_key(&cdr.id), &keys::time_key(&cdr.start)[..]);
    batch.insert(
        keys::index_key(keys::BY_CALLER, Some(&cdr.caller), &cdr.start, &cdr.id),
        &[][..],
    );
    batch.insert(
        keys::index_key(keys::BY_CALLEE, Some(&cdr.callee), &cdr.start, &cdr.id),
        &[][..],
    );
    Ok(())
}

/// A recording as this call sees it: written earlier in the call, else in the tree.
fn recording(
    tree: &sled::Tree,
    overlay: &std::collections::HashMap<String, Option<RecordingMeta>>,
    id: &str,
) -> Result<Option<RecordingMeta>, ApplyError> {
    if let Some(m) = overlay.get(id) {
        return Ok(m.clone());
    }
    match tree.get(keys::recording_key(id))? {
        Some(v) => Ok(Some(RecordingMeta::decode(&v)?)),
        None => Ok(None),
    }
}

/// Delete up to `limit` CDRs with `start < before` (oldest first) and their indexes.
fn expire_cdrs(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    before: i64,
    limit: u32,
) -> Result<u32, ApplyError> {
    let mut end = vec![keys::BY_START];
    end.extend_from_slice(&keys::micros_key(before));
    let mut n = 0;
    for item in tree.range(vec![keys::BY_START]..end) {
        if n >= limit {
            break;
        }
        let (k, v) = item?;
        let cdr = Cdr::decode(&v)?;
        batch.remove(k);
        batch.remove(&keys::cdr_key(&cdr.id)[..]);
        batch.remove(keys::index_key(
            keys::BY_CALLER,
            Some(&cdr.caller),
            &cdr.start,
            &cdr.id,
        ));
        batch.remove(keys::index_key(
            keys::BY_CALLEE,
            Some(&cdr.callee),
            &cdr.start,
            &cdr.id,
        ));
        n += 1;
    }
    Ok(n)
}

/// Delete the metadata of up to `limit` recordings created before `before` (each
/// node's blob sync then removes the files that no metadata names).
fn expire_recordings(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    before: i64,
    limit: u32,
) -> Result<u32, ApplyError> {
    let mut end = vec![keys::RECORDING_BY_AGE];
    end.extend_from_slice(&keys::micros_key(before));
    let mut n = 0;
    for item in tree.range(vec![keys::RECORDING_BY_AGE]..end) {
        if n >= limit {
            break;
        }
        let (k, _) = item?;
        let id = &k[9..];
        let mut rk = vec![keys::RECORDING];
        rk.extend_from_slice(id);
        batch.remove(k);
        batch.remove(rk);
        n += 1;
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("state machine read: {0}")]
    Sled(#[from] sled::Error),
    #[error("state machine encode: {0}")]
    Codec(#[from] codec::CodecError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::{CommittedLeaderId, Entry as RaftEntry};

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("sm").unwrap()
    }

    fn entry(index: u64, req: Request) -> Entry {
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    fn cdr(caller: &str, minute: u32) -> Cdr {
        let start = format!("2026-01-01T10:{minute:02}:00Z").parse().unwrap();
        let end = format!("2026-01-01T10:{minute:02}:30Z").parse().unwrap();
        Cdr::new_call(caller, "200", start, None, end, "a")
    }

    fn run(tree: &sled::Tree, entries: Vec<Entry>) -> Vec<Response> {
        let applied = apply_entries(tree, entries).unwrap();
        tree.apply_batch(applied.batch).unwrap();
        applied.responses
    }

    #[test]
    fn retried_cdr_write_is_not_duplicated() {
        let t = tree();
        let c = cdr("100", 1);
        // The same CDR twice in one entry, then again in a later entry (a client retry).
        let r = run(
            &t,
            vec![
                entry(
                    1,
                    Request::AddCdrs {
                        cdrs: vec![c.clone(), c.clone()],
                    },
                ),
                entry(
                    2,
                    Request::AddCdrs {
                        cdrs: vec![c.clone()],
                    },
                ),
            ],
        );
        let dup = |inserted| Response::Cdrs {
            inserted,
            duplicates: 1,
            duplicate_ids: vec![c.id],
        };
        assert_eq!(r[0], dup(1));
        assert_eq!(r[1], dup(0));
        let by_start = t.scan_prefix([keys::BY_START]).count();
        let by_caller = t.scan_prefix([keys::BY_CALLER]).count();
        assert_eq!((by_start, by_caller), (1, 1));
    }

    #[test]
    fn applied_index_is_in_the_same_batch_as_the_data() {
        let t = tree();
        let applied = apply_entries(
            &t,
            vec![entry(
                7,
                Request::SetConfig {
                    key: "k".into(),
                    value: "1".into(),
                },
            )],
        )
        .unwrap();
        // Nothing is visible before the batch is applied, everything after.
        assert!(t.get(keys::APPLIED).unwrap().is_none());
        t.apply_batch(applied.batch).unwrap();
        let got = AppliedLogId::decode(&t.get(keys::APPLIED).unwrap().unwrap()).unwrap();
        assert_eq!(got.0.unwrap().index, 7);
        assert!(t.get(keys::config_key("k")).unwrap().is_some());
    }

    #[test]
    fn config_versions_are_log_indexes_and_apply_is_deterministic() {
        let cdrs = vec![cdr("1", 1), cdr("2", 2)];
        let entries = || {
            vec![
                entry(
                    3,
                    Request::SetConfig {
                        key: "smtp.host".into(),
                        value: "\"a\"".into(),
                    },
                ),
                entry(
                    4,
                    Request::SetConfig {
                        key: "smtp.host".into(),
                        value: "\"b\"".into(),
                    },
                ),
                entry(
                    5,
                    Request::DeleteConfig {
                        key: "other".into(),
                    },
                ),
                entry(6, Request::AddCdrs { cdrs: cdrs.clone() }),
            ]
        };
        let (a, b) = (tree(), tree());
        let ra = run(&a, entries());
        let rb = run(&b, entries());
        assert_eq!(ra, rb);
        assert_eq!(
            ra[1],
            Response::Config {
                key: "smtp.host".into(),
                version: 4,
                existed: true
            }
        );
        assert_eq!(
            ra[2],
            Response::Config {
                key: "other".into(),
                version: 5,
                existed: false
            }
        );
        // Same entries, byte-identical trees.
        let dump = |t: &sled::Tree| t.iter().map(|kv| kv.unwrap()).collect::<Vec<_>>();
        assert_eq!(dump(&a), dump(&b));
        let v = StoredConfig::decode(&a.get(keys::config_key("smtp.host")).unwrap().unwrap())
            .unwrap()
            .value;
        assert_eq!(v, "\"b\"");
    }

    fn meta(id: &str, created: i64, holder: u64) -> RecordingMeta {
        RecordingMeta {
            id: id.into(),
            call_id: format!("call-{id}"),
            sha256: "ab".repeat(32),
            size: 1000,
            duration_ms: 5000,
            codec: "PCMU".into(),
            created,
            holders: [holder].into_iter().collect(),
        }
    }

    #[test]
    fn recording_holders_merge_and_unknown_ids_are_reported() {
        let t = tree();
        let r = run(
            &t,
            vec![
                entry(
                    1,
                    Request::AddRecording {
                        meta: meta("a", 10, 1),
                    },
                ),
                // Same id again (a retried upload): holders merge, metadata kept.
                entry(
                    2,
                    Request::AddRecording {
                        meta: meta("a", 99, 2),
                    },
                ),
                entry(
                    3,
                    Request::RecordingHeld {
                        id: "a".into(),
                        node: 3,
                        held: true,
                    },
                ),
                entry(
                    4,
                    Request::RecordingHeld {
                        id: "gone".into(),
                        node: 3,
                        held: true,
                    },
                ),
            ],
        );
        let holders = |r: &Response| match r {
            Response::Recording { holders, known, .. } => (holders.clone(), *known),
            other => panic!("{other:?}"),
        };
        assert_eq!(holders(&r[1]), (vec![1, 2], true));
        assert_eq!(holders(&r[2]), (vec![1, 2, 3], true));
        assert_eq!(holders(&r[3]), (vec![], false));
        let m = crate::store::query::recording_get(&t, "a")
            .unwrap()
            .unwrap();
        assert_eq!(m.created, 10, "the first metadata stays");
    }

    #[test]
    fn a_recording_id_taken_by_other_bytes_is_refused_and_keeps_its_holders() {
        let t = tree();
        let other = RecordingMeta {
            sha256: "cd".repeat(32),
            ..meta("a", 20, 2)
        };
        let r = run(
            &t,
            vec![
                entry(
                    1,
                    Request::AddRecording {
                        meta: meta("a", 10, 1),
                    },
                ),
                entry(2, Request::AddRecording { meta: other }),
            ],
        );
        assert!(
            matches!(&r[1], Response::RecordingConflict { id, sha256 } if id == "a" && *sha256 == "ab".repeat(32)),
            "{:?}",
            r[1]
        );
        let m = crate::store::query::recording_get(&t, "a")
            .unwrap()
            .unwrap();
        assert_eq!(m.holders.into_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.sha256, "ab".repeat(32));
    }

    #[test]
    fn expire_deletes_old_records_with_their_indexes_only() {
        let t = tree();
        let old = cdr("100", 1);
        let new = cdr("100", 30);
        run(
            &t,
            vec![
                entry(
                    1,
                    Request::AddCdrs {
                        cdrs: vec![old.clone(), new.clone()],
                    },
                ),
                entry(
                    2,
                    Request::AddRecording {
                        meta: meta("r-old", 5, 1),
                    },
                ),
                entry(
                    3,
                    Request::AddRecording {
                        meta: meta("r-new", 50, 1),
                    },
                ),
            ],
        );
        let cut = (old.start + chrono::Duration::minutes(5)).timestamp_micros();
        let r = run(
            &t,
            vec![entry(
                4,
                Request::Expire {
                    cdrs_before: Some(cut),
                    recordings_before: Some(20),
                    limit: 100,
                },
            )],
        );
        assert_eq!(
            r[0],
            Response::Expired {
                cdrs: 1,
                recordings: 1
            }
        );
        let left: Vec<_> = crate::store::query::cdr_scan(&t, &Default::default())
            .map(|x| x.unwrap().1.id)
            .collect();
        assert_eq!(left, vec![new.id]);
        // No index entry of the deleted CDR is left behind.
        assert!(!t.contains_key(keys::cdr_key(&old.id)).unwrap());
        assert_eq!(t.scan_prefix([keys::BY_CALLER]).count(), 1);
        assert_eq!(t.scan_prefix([keys::BY_CALLEE]).count(), 1);
        assert!(crate::store::query::recording_get(&t, "r-old")
            .unwrap()
            .is_none());
        assert!(crate::store::query::recording_get(&t, "r-new")
            .unwrap()
            .is_some());
        assert_eq!(t.scan_prefix([keys::RECORDING_BY_AGE]).count(), 1);
    }

    #[test]
    fn expire_respects_its_limit() {
        let t = tree();
        let cdrs: Vec<Cdr> = (0..10).map(|m| cdr("100", m)).collect();
        run(&t, vec![entry(1, Request::AddCdrs { cdrs })]);
        let r = run(
            &t,
            vec![entry(
                2,
                Request::Expire {
                    cdrs_before: Some(i64::MAX),
                    recordings_before: None,
                    limit: 4,
                },
            )],
        );
        assert_eq!(
            r[0],
            Response::Expired {
                cdrs: 4,
                recordings: 0
            }
        );
        assert_eq!(crate::store::query::cdr_count(&t), 6);
    }
}
