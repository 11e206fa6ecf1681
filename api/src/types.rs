//! Request and response bodies of every endpoint (docs/api.md).

use serde::{Deserialize, Serialize};

pub use tandem_replication::cdr::Cdr;
pub use tandem_replication::types::MemberKind;

/// Every error answer: `{"error": "..."}` (plus endpoint-specific fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub node_id: u64,
    /// `master`, `standby`, `witness`, `candidate` or `fenced`.
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub applied_index: u64,
    pub commit_index: u64,
    pub vip_held: bool,
}

/// How far this node's local copy is behind the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    pub entries: u64,
    pub ms: u64,
}

/// One member of the cluster as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub kind: MemberKind,
    /// Peer (Raft) address.
    pub addr: String,
    /// API address.
    pub api: String,
    pub voter: bool,
    /// Last log index known to be on that node (leader's view), if known.
    pub matched_index: Option<u64>,
    pub lag_entries: Option<u64>,
    pub lag_ms: Option<u64>,
    /// Milliseconds since the peer last answered this node (known on the leader).
    pub last_contact_ms: Option<u64>,
}

/// The recording files this node still has to fetch from its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingSync {
    pub files: u64,
    pub bytes: u64,
    /// Receive rate over the last seconds.
    pub rate_bytes_per_s: u64,
    /// Estimated seconds to finish (None when idle or stalled).
    pub eta_s: Option<u64>,
    /// Bandwidth cap in force (0 = unlimited).
    pub cap_bytes_per_s: u64,
}

/// `GET /api/v1/cluster` (`tandem status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub node_id: u64,
    pub role: String,
    pub vip_held: bool,
    pub maintenance: bool,
    /// Members the master cannot reach (empty on standbys).
    pub unreachable: Vec<u64>,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub lag: Lag,
    pub voters: usize,
    pub data_voters: usize,
    pub quorum: usize,
    pub vip_holder: Option<u64>,
    pub members: Vec<Member>,
    /// Plain-language warnings (even voter count, no witness, no leader, …).
    pub notes: Vec<String>,
    /// None on a witness (it holds no recording bytes).
    pub recording_sync: Option<RecordingSync>,
}

/// `POST /api/v1/cluster/switchover` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// Node to hand over to (default: the most up-to-date other data node).
    pub to: Option<u64>,
}

/// `POST /api/v1/cluster/switchover` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Switchover {
    pub master: u64,
    pub took_ms: u64,
}

/// `POST /api/v1/cluster/leave` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Left {
    pub removed: u64,
}

/// `GET /api/v1/cluster/join-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub token: String,
    pub node_id: u64,
}

/// One replicated config entry (`GET|PUT /api/v1/config/{key}`); secrets show `***`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub key: String,
    pub value: serde_json::Value,
    /// Log index of the write that set it.
    pub version: u64,
}

/// `GET /api/v1/config?prefix=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigList {
    pub config: Vec<ConfigEntry>,
}

/// `DELETE /api/v1/config/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigDeleted {
    pub key: String,
    pub deleted: bool,
    pub version: u64,
}

/// `POST /api/v1/cdrs` answer (201 once committed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdrsAdded {
    pub inserted: u32,
    pub duplicates: u32,
    /// Log index of the entry.
    pub index: u64,
}

/// `GET /api/v1/cdrs` (JSON page).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdrPage {
    pub cdrs: Vec<Cdr>,
    pub count: usize,
    /// Pass as `cursor` for the next page; None on the last one.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/v1/cdrs` (query and export).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdrFilter {
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// Read through the leader (`consistency=strong`).
    pub strong: bool,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl CdrFilter {
    /// The query string (with its `?`, or empty) for `format` (`json` or `csv`).
    pub fn query_string(&self, format: &str) -> String {
        let mut q: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("from", &self.from),
            ("to", &self.to),
            ("caller", &self.caller),
            ("callee", &self.callee),
            ("cursor", &self.cursor),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if self.strong {
            q.push(("consistency", "strong".into()));
        }
        if format != "json" {
            q.push(("format", format.into()));
        }
        encode_query(&q)
    }
}

/// `?k=v&…` with the values percent-encoded (empty for no pair).
pub fn encode_query(q: &[(&str, String)]) -> String {
    if q.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One active alarm (`GET /api/v1/alarms`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActiveAlarm {
    pub id: String,
    pub family: String,
    pub severity: String,
    pub title: String,
    pub subject: String,
    /// RFC 3339.
    pub since: String,
    pub since_ms: u64,
    pub detail: String,
    pub flapping: bool,
    pub muted: bool,
}

/// One queued alarm mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedMail {
    pub message_id: String,
    pub subject: String,
    pub to: Vec<String>,
    pub alarms: Vec<String>,
    pub queued: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// `GET /api/v1/alarms`: this node's active alarms, outbox and mail counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmStatus {
    pub node: String,
    pub active: Vec<ActiveAlarm>,
    pub maintenance: bool,
    pub outbox: Vec<QueuedMail>,
    pub mails_sent: u64,
    pub mails_failed: u64,
    pub mails_queued: usize,
    /// Why the alarm settings could not be read, if so.
    pub config_error: Option<String>,
}

/// One line of `GET /api/v1/alarms/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailRecord {
    pub at_ms: u64,
    pub message_id: String,
    pub subject: String,
    pub to: Vec<String>,
    /// `sent` or `failed`.
    pub outcome: String,
    pub server: Option<String>,
    pub error: Option<String>,
}

/// `GET /api/v1/alarms/history`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmHistory {
    pub history: Vec<MailRecord>,
}

/// `POST /api/v1/alarms/test` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlarmTestRequest {
    /// One address (default: every address of every recipient list).
    pub to: Option<String>,
}

/// `POST /api/v1/alarms/test` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmTestSent {
    pub message_id: String,
    pub to: Vec<String>,
    /// `host:port` that accepted it.
    pub server: String,
    /// The server's final reply.
    pub reply: String,
}

/// A recording's metadata (`POST /api/v1/recordings`, `GET /api/v1/recordings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    pub id: String,
    pub call_id: String,
    pub sha256: String,
    pub size: u64,
    /// 0 if unknown.
    pub duration_ms: u64,
    pub codec: String,
    /// RFC 3339.
    pub created: Option<String>,
    /// Data nodes that hold the bytes (fsynced).
    pub holders: Vec<u64>,
    /// `stored` (enough copies) or `pending`.
    pub state: String,
}

/// `GET /api/v1/recordings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordingList {
    pub recordings: Vec<Recording>,
    /// Pass as `after` for the next page.
    pub next_after: Option<String>,
    pub node: u64,
    pub sync: Option<RecordingSync>,
}

/// The 503 answer of `GET /api/v1/recordings/{id}` on a node without the bytes (a
/// witness, or a copy not yet replicated here); `Retry-After` says when to ask again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingUnavailable {
    pub error: String,
    /// `stored` or `pending`, as in [`Recording::state`].
    pub state: String,
    /// Data nodes that hold the bytes: download it there.
    pub held_by: Vec<u64>,
}

/// One recording whose bytes do not match their checksum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadRecording {
    pub id: String,
    pub error: String,
}

/// `POST /api/v1/recordings/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub node: u64,
    pub checked: usize,
    pub ok: usize,
    pub bad: Vec<BadRecording>,
    pub missing: Vec<String>,
}

/// `POST /api/v1/recordings/verify` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// One recording (default: all).
    pub id: Option<String>,
}

/// One SIP user (`GET /api/v1/sip/users`); the password is never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipUser {
    pub extension: String,
    pub display_name: Option<String>,
}

/// `GET /api/v1/sip/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SipUsers {
    pub users: Vec<SipUser>,
}

/// `PUT /api/v1/sip/users/{ext}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SipUserPut {
    pub password: String,
    pub display_name: Option<String>,
}

/// `DELETE /api/v1/sip/users/{ext}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SipUserRemoved {
    pub removed: String,
}

/// One registration as the replicated config holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub extension: String,
    pub contact: String,
    pub source: String,
    pub expires_in_s: i64,
}

/// The RTP relay's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayCounters {
    pub packets_relayed: u64,
    pub packets_lost: u64,
    pub packets_dropped: u64,
    pub active_sessions: u64,
    pub recordings_started: u64,
}

/// The telephony service on the node that answers (`service` of `/sip/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SipService {
    #[serde(flatten)]
    pub status: tandem_media::service::SipStatus,
    /// Bound SIP address.
    pub listen: String,
    pub relay: Option<RelayCounters>,
}

/// The `service` of `/sip/status`: running, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SipServiceState {
    Running(Box<SipService>),
    NotRunning { active: bool, error: Option<String> },
}

/// `GET /api/v1/sip/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SipStatusView {
    pub node: u64,
    pub registrations: Vec<Registration>,
    /// None on a node that runs no telephony service (witness).
    pub service: Option<SipServiceState>,
}
