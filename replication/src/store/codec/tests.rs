//! Every stored record: today's bytes (written before records were versioned per
//! type) still decode, new writes are byte for byte the same (an older tandem reads
//! them too), and a newer version is a typed error naming the record.

use super::*;
use crate::fixtures::{self as f, golden, golden1};

/// `value` encodes to exactly `bytes`, and `bytes` decodes back to `value`.
fn same_as_v1<T: Versioned + std::fmt::Debug>(value: &T, bytes: &[u8]) {
    assert_eq!(T::VERSION, 1, "{}", T::NAME);
    assert_eq!(
        hex::encode(value.encode().unwrap()),
        hex::encode(bytes),
        "{} encodes differently from version 1",
        T::NAME
    );
    let back = T::decode(bytes).unwrap();
    assert_eq!(format!("{back:?}"), format!("{value:?}"), "{}", T::NAME);
}

/// The same bytes tagged as version 2 are refused with a typed error.
fn newer_is_refused<T: Versioned + std::fmt::Debug>(bytes: &[u8]) {
    let mut newer = bytes.to_vec();
    newer[0] = 2;
    match T::decode(&newer) {
        Err(CodecError::Newer {
            type_name,
            found: 2,
            newest: 1,
        }) => assert_eq!(type_name, T::NAME),
        other => panic!("{}: {other:?}", T::NAME),
    }
}

#[test]
fn every_stored_record_reads_and_writes_the_version_1_bytes() {
    let cdr = golden1("CDR");
    same_as_v1(&f::cdr(), &cdr);
    newer_is_refused::<Cdr>(&cdr);

    let rec = golden1("REC");
    same_as_v1(&f::recording(), &rec);
    newer_is_refused::<RecordingMeta>(&rec);

    // Earlier releases wrote the config entry as a (u64, String) tuple.
    let cfg = golden1("CFG");
    same_as_v1(
        &StoredConfig {
            version: 7,
            value: "\"mail.example.com\"".into(),
        },
        &cfg,
    );
    newer_is_refused::<StoredConfig>(&cfg);

    let mem = golden1("MEM");
    same_as_v1(&f::stored_membership(), &mem);
    newer_is_refused::<StoredMembership>(&mem);

    let applied = golden1("APPLIED");
    same_as_v1(&AppliedLogId(Some(f::log_id())), &applied);
    same_as_v1(&CommittedLogId(Some(f::log_id())), &applied);
    same_as_v1(&AppliedLogId(None), &golden1("APPLIEDNONE"));
    newer_is_refused::<AppliedLogId>(&applied);
    newer_is_refused::<CommittedLogId>(&applied);

    let purged = golden1("LOGID");
    same_as_v1(&PurgedLogId(f::log_id()), &purged);
    newer_is_refused::<PurgedLogId>(&purged);

    let vote = golden1("VOTE");
    same_as_v1(&f::vote(), &vote);
    newer_is_refused::<Vote>(&vote);

    let entries = golden("ENTRY");
    let fixtures = f::entries();
    assert_eq!(entries.len(), fixtures.len());
    for (bytes, entry) in entries.iter().zip(&fixtures) {
        same_as_v1(entry, bytes);
        newer_is_refused::<Entry>(bytes);
    }
}

#[test]
fn the_borrowed_cdr_view_reads_the_current_version_only() {
    let bytes = golden1("CDR");
    let view: CdrRef = decode_borrowed(&bytes).unwrap();
    assert_eq!((view.caller, view.callee), ("100", "200"));
    assert_eq!(view.recording_id, Some("rec-1"));
    let mut newer = bytes.clone();
    newer[0] = 2;
    assert!(matches!(
        decode_borrowed::<CdrRef>(&newer),
        Err(CodecError::Newer {
            type_name: "stored CDR",
            found: 2,
            ..
        })
    ));
    let mut older = bytes;
    older[0] = 0;
    assert!(matches!(
        decode_borrowed::<CdrRef>(&older),
        Err(CodecError::NotCurrent { found: 0, .. })
    ));
    assert!(matches!(
        decode_borrowed::<CdrRef>(&[]),
        Err(CodecError::Empty { .. })
    ));
}

#[test]
fn an_error_names_the_record_the_version_and_what_to_do() {
    let mut bytes = golden1("REC");
    bytes[0] = 9;
    let text = RecordingMeta::decode(&bytes).unwrap_err().to_string();
    assert!(
        text.contains("stored recording metadata has format version 9"),
        "{text}"
    );
    assert!(text.contains("upgrade this node"), "{text}");
}

/// A data directory as an earlier release left it (its exact bytes, written
/// straight into sled) opens and reads through the store: an in-place upgrade.
#[tokio::test]
async fn a_store_written_by_an_earlier_release_opens() {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::RaftLogReader;

    use crate::store::{keys, query};

    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let log = db.open_tree("log").unwrap();
        for (bytes, e) in golden("ENTRY").iter().zip(f::entries()) {
            log.insert(e.log_id.index.to_be_bytes(), bytes.as_slice())
                .unwrap();
        }
        let meta = db.open_tree("raft_meta").unwrap();
        meta.insert("vote", golden1("VOTE")).unwrap();
        meta.insert("committed", golden1("APPLIED")).unwrap();
        db.insert("sm_current", b"sm.0".as_slice()).unwrap();
        let sm = db.open_tree("sm.0").unwrap();
        sm.insert(keys::APPLIED, golden1("APPLIED")).unwrap();
        sm.insert(keys::MEMBERSHIP, golden1("MEM")).unwrap();
        sm.insert(keys::config_key("smtp.host"), golden1("CFG"))
            .unwrap();
        let cdr = f::cdr();
        sm.insert(
            keys::index_key(keys::BY_START, None, &cdr.start, &cdr.id),
            golden1("CDR"),
        )
        .unwrap();
        sm.insert(keys::cdr_key(&cdr.id), &keys::time_key(&cdr.start)[..])
            .unwrap();
        sm.insert(keys::recording_key("rec-1"), golden1("REC"))
            .unwrap();
        db.flush().unwrap();
    }
    let (mut log, mut sm) = crate::store::open(dir.path(), 8).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(f::vote()));
    assert_eq!(log.read_committed().await.unwrap(), Some(f::log_id()));
    let entries = log.try_get_log_entries(40..48).await.unwrap();
    assert_eq!(format!("{entries:?}"), format!("{:?}", f::entries()));
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(f::log_id()));
    assert_eq!(membership, f::stored_membership());
    let tree = sm.shared.tree();
    let entry = query::config_get(&tree, "smtp.host").unwrap().unwrap();
    assert_eq!(
        (entry.version, entry.value.as_str()),
        (7, "\"mail.example.com\"")
    );
    let cdrs: Vec<_> = query::cdr_scan(&tree, &query::CdrQuery::default())
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(cdrs, vec![f::cdr()]);
    assert_eq!(
        query::recording_get(&tree, "rec-1").unwrap(),
        Some(f::recording())
    );
}
