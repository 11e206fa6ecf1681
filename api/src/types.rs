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

// ---- users, tokens, login, audit (docs/security.md) ----

/// What an API user may do. Ordered: each role can do everything the one before it
/// can (`reporting` < `operator` < `admin`); the bootstrap admin token is `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads CDRs (query and CSV export), lists and downloads recordings, reads the
    /// cluster status.
    Reporting,
    /// Also: switchover, maintenance, alarm settings and test mail, SIP users,
    /// recording upload and verification, CDR writes.
    Operator,
    /// Everything: users and tokens, the audit log, every config key, join token,
    /// leaving the cluster.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Reporting, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reporting => "reporting",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`: use admin, operator or reporting"))
    }
}

/// `POST /api/v1/users` body: a new user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    /// 1-32 of a-z 0-9 _ -, starting with a letter.
    pub name: String,
    pub role: Role,
    /// Password for `POST /api/v1/login` (people); none for a machine user.
    #[serde(default)]
    pub password: Option<String>,
    /// Also issue an API token (returned once in the answer).
    #[serde(default)]
    pub token: Option<TokenCreate>,
}

/// `PUT /api/v1/users/{name}` body: change a user's role and/or password.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `POST /api/v1/users/{name}/tokens` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Seconds until the token stops working (none: until revoked).
    #[serde(default)]
    pub expires_s: Option<u64>,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    /// `api` (issued by an admin) or `session` (from `POST /api/v1/login`).
    pub kind: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    /// Who issued it.
    pub created_by: String,
}

/// One user (`GET /api/v1/users`, `GET /api/v1/users/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    /// Whether the user can log in with a password.
    pub password: bool,
    pub created: chrono::DateTime<chrono::Utc>,
    pub created_by: String,
    pub tokens: Vec<TokenInfo>,
}

/// `GET /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

/// A newly issued token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedToken {
    pub user: String,
    pub id: String,
    /// The bearer token (`Authorization: Bearer <token>`). Not stored by the node
    /// (only its SHA-256): keep it now, it cannot be shown again.
    pub token: String,
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/v1/users` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserCreated {
    pub user: UserInfo,
    pub token: Option<IssuedToken>,
}

/// `DELETE /api/v1/users/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRemoved {
    pub removed: String,
    pub tokens_revoked: usize,
}

/// `DELETE /api/v1/users/{name}/tokens/{id}`, `POST /api/v1/logout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub user: String,
    pub revoked: String,
}

/// `POST /api/v1/login` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

/// `POST /api/v1/login` answer: a session token (a bearer token that expires).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginSession {
    pub user: String,
    pub role: Role,
    pub token: String,
    pub id: String,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/v1/whoami`: who the presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The user name, or `bootstrap-admin` for `<data_dir>/admin.token`.
    pub user: String,
    pub role: Role,
    /// Id of the token used (none for the bootstrap admin token).
    pub token_id: Option<String>,
}

/// One audit log entry: who did what, when, from where, with what outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the node received the request.
    pub at: chrono::DateTime<chrono::Utc>,
    /// User name, or `bootstrap-admin`.
    pub who: String,
    pub role: Role,
    /// Client address as the node saw it (`ip:port`).
    pub from: String,
    /// Node that received the request.
    pub node: u64,
    pub method: String,
    /// Route template, e.g. `PUT /api/v1/config/{key}`.
    pub route: String,
    /// Path parameters and query, e.g. `key=maintenance.2`.
    pub target: String,
    /// HTTP status answered; none while the request runs, or if the node stopped
    /// before it could record the outcome.
    pub status: Option<u16>,
}

/// `GET /api/v1/audit?limit=&since=`: oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
}
