//! Fixed values of every stored record and peer message, used by the format tests.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use uuid::Uuid;

use crate::cdr::{Cdr, Direction, Disposition};
use crate::network::{LeaderOp, LeaderReply, RpcRequest, RpcResponse};
use crate::types::{
    Entry, LogId, MemberKind, NodeInfo, RecordingMeta, Request, Response, StoredMembership, Vote,
};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn cdr() -> Cdr {
    Cdr {
        id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        start: t("2026-01-02T03:04:05.123456Z"),
        answer: Some(t("2026-01-02T03:04:08Z")),
        end: t("2026-01-02T03:05:08Z"),
        caller: "100".into(),
        callee: "200".into(),
        direction: Direction::Inbound,
        disposition: Disposition::Answered,
        duration: 63,
        billsec: 60,
        recording_id: Some("rec-1".into()),
        node: "node-1".into(),
    }
}

pub fn recording() -> RecordingMeta {
    RecordingMeta {
        id: "rec-1".into(),
        call_id: "call-1@pbx".into(),
        sha256: "ab".repeat(32),
        size: 4096,
        duration_ms: 2500,
        codec: "audio/wav".into(),
        created: 1_767_322_445_123_456,
        holders: BTreeSet::from([1, 2]),
    }
}

pub fn log_id() -> LogId {
    LogId::new(CommittedLeaderId::new(3, 1), 42)
}

pub fn node(id: u64, kind: MemberKind) -> NodeInfo {
    NodeInfo {
        addr: format!("10.0.0.{id}:7000"),
        api: format!("10.0.0.{id}:8080"),
        name: format!("node-{id}"),
        kind,
    }
}

pub fn membership() -> Membership<u64, NodeInfo> {
    Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        BTreeMap::from([
            (1, node(1, MemberKind::Data)),
            (2, node(2, MemberKind::Data)),
            (3, node(3, MemberKind::Witness)),
            (4, node(4, MemberKind::Data)),
        ]),
    )
}

pub fn stored_membership() -> StoredMembership {
    StoredMembership::new(Some(log_id()), membership())
}

pub fn vote() -> Vote {
    Vote::new_committed(3, 1)
}

pub fn entries() -> Vec<Entry> {
    let e = |index, payload| Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
        payload,
    };
    vec![
        e(40, EntryPayload::Blank),
        e(41, EntryPayload::Membership(membership())),
        e(
            42,
            EntryPayload::Normal(Request::SetConfig {
                key: "smtp.host".into(),
                value: "\"mail.example.com\"".into(),
            }),
        ),
        e(
            43,
            EntryPayload::Normal(Request::AddCdrs { cdrs: vec![cdr()] }),
        ),
        e(
            44,
            EntryPayload::Normal(Request::AddRecording { meta: recording() }),
        ),
        e(
            45,
            EntryPayload::Normal(Request::RecordingHeld {
                id: "rec-1".into(),
                node: 2,
                held: true,
            }),
        ),
        e(
            46,
            EntryPayload::Normal(Request::Expire {
                cdrs_before: Some(1_700_000_000_000_000),
                recordings_before: None,
                limit: 1000,
            }),
        ),
        e(
            47,
            EntryPayload::Normal(Request::DeleteConfig {
                key: "smtp.host".into(),
            }),
        ),
    ]
}

pub fn requests() -> Vec<RpcRequest> {
    vec![
        RpcRequest::Vote(openraft::raft::VoteRequest::new(
            Vote::new(4, 2),
            Some(log_id()),
        )),
        RpcRequest::Leader(LeaderOp::Write(Request::SetConfig {
            key: "k".into(),
            value: "1".into(),
        })),
        RpcRequest::Leader(LeaderOp::Switchover { to: Some(2) }),
        RpcRequest::Elect,
        RpcRequest::BlobRead {
            id: "rec-1".into(),
            offset: 262_144,
            len: 4096,
        },
        RpcRequest::Join {
            secret: "s3cret".into(),
            id: 4,
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            info: node(4, MemberKind::Data),
        },
    ]
}

pub fn responses() -> Vec<RpcResponse> {
    vec![
        RpcResponse::Leader(Ok(LeaderReply::Written {
            index: 42,
            response: Response::Config {
                key: "k".into(),
                version: 42,
                existed: false,
            },
        })),
        RpcResponse::Leader(Err(crate::network::ForwardError::NotLeader {
            leader: Some(2),
        })),
        RpcResponse::Elected(Err("not elected".into())),
        RpcResponse::Refused("a client certificate signed by the cluster CA is required".into()),
    ]
}

/// The byte strings of kind `kind` in `testdata/golden-v1.txt`, in file order.
pub fn golden(kind: &str) -> Vec<Vec<u8>> {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/golden-v1.txt"
    ));
    let found: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == kind)
        .map(|(_, h)| hex::decode(h).expect("golden hex"))
        .collect();
    assert!(!found.is_empty(), "no {kind} line in golden-v1.txt");
    found
}

/// The one byte string of kind `kind`.
pub fn golden1(kind: &str) -> Vec<u8> {
    let mut all = golden(kind);
    assert_eq!(all.len(), 1, "{kind}");
    all.remove(0)
}
