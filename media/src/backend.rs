//! What the telephony service needs from the node: users from the replicated
//! configuration, registrations, CDRs and source bans written through Raft, alarms.
//!
//! The node implements [`Backend`] on its replicated state; tests use
//! [`crate::testing::MemoryBackend`]. Reads are synchronous (local state), writes
//! are futures that complete once committed, so a REGISTER is answered 200 only
//! when its binding survives a failover.

use crate::error::BackendError;
pub use crate::guard::AuthBurst;
use crate::sip::Transport;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

/// A SIP account (an extension), from `tandem sip user add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipUser {
    /// The extension number, also the digest user name and the AOR user part.
    pub extension: String,
    /// Digest password (kept in the replicated config, never logged).
    pub password: String,
    /// Name shown to the called party (From display name).
    pub display_name: Option<String>,
}

/// One registration: where an extension can be reached (RFC 3261 §10.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Address of record: the extension.
    pub aor: String,
    /// The phone's Contact URI as registered.
    pub contact: String,
    /// Address the REGISTER came from; requests go there (works behind NAT).
    pub source: SocketAddr,
    /// Transport the REGISTER came over; requests use the same.
    pub transport: Transport,
    /// Unix time (seconds) when the binding lapses.
    pub expires_at_unix: i64,
    /// Call-ID of the REGISTER (§10.3 step 7 ordering).
    pub call_id: String,
    /// CSeq of the REGISTER (§10.3 step 7 ordering).
    pub cseq: u32,
}

/// A source banned after repeated authentication failures (`sip.ban.<ip>` in the
/// node's replicated config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBan {
    /// The banned address.
    pub source: IpAddr,
    /// Unix time (seconds) when the ban lapses.
    pub until_unix: i64,
    /// Failures that triggered it (for the operator).
    pub failures: u32,
}

/// How a call ended, for the CDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// The callee answered (billsec = end - answer).
    Answered,
    /// Ringing until the no-answer timeout, or the callee's phone timed out (408/480 from it).
    NoAnswer,
    /// The callee was busy (486/600).
    Busy,
    /// Unknown or offline callee, or any other failure.
    Failed,
    /// The caller hung up before the answer (CANCEL).
    Cancelled,
}

impl Disposition {
    /// Lower-case name as in CDR exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::NoAnswer => "no_answer",
            Disposition::Busy => "busy",
            Disposition::Failed => "failed",
            Disposition::Cancelled => "cancelled",
        }
    }
}

/// A finished call, as handed to the node for the CDR store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// CDR id; also the recording id when recorded.
    pub id: uuid::Uuid,
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// When the INVITE was accepted for routing.
    pub start: DateTime<Utc>,
    /// When the callee answered.
    pub answer: Option<DateTime<Utc>>,
    /// When the call ended.
    pub end: DateTime<Utc>,
    /// Caller extension.
    pub caller: String,
    /// Called extension (as dialled).
    pub callee: String,
    /// How it ended.
    pub disposition: Disposition,
    /// Recording id when the call was answered and recorded.
    pub recording_id: Option<String>,
}

impl CallRecord {
    /// Billable seconds: end - answer, rounded to the nearest second (0 if unanswered).
    pub fn billsec(&self) -> i64 {
        self.answer
            .map(|a| ((self.end - a).num_milliseconds() + 500) / 1000)
            .unwrap_or(0)
    }
}

/// The node side of the telephony service.
pub trait Backend: Send + Sync + 'static {
    /// A user by extension, from the local copy of the replicated config.
    fn user(&self, extension: &str) -> Option<SipUser>;
    /// Bindings of an AOR from local replicated state (may include expired ones).
    fn bindings(&self, aor: &str) -> Vec<Binding>;
    /// All bindings (for `tandem sip status`); may include expired ones.
    fn all_bindings(&self) -> Vec<Binding>;
    /// Add or refresh a binding (same aor + contact replaces), committed through Raft.
    fn save_binding(&self, b: Binding) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Remove one binding, committed through Raft.
    fn remove_binding(
        &self,
        aor: &str,
        contact: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Commit the CDR and, when recorded, the recording's metadata; hand its bytes
    /// to the recording replication.
    fn call_ended(
        &self,
        record: CallRecord,
        recording: Option<crate::relay::RecordingFile>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Password guessing detected (a source banned or an account locked): raise
    /// the security alarm. Called once per burst.
    fn security_event(&self, burst: &AuthBurst);
    /// Ban a source: committed through Raft, so every node's firewall drops it and
    /// a new master still refuses it; the entry lapses at `until_unix`.
    fn ban(&self, ban: SourceBan) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Whether `source` is on the replicated ban list at `now_unix` (local state).
    fn banned(&self, source: IpAddr, now_unix: i64) -> bool;
    /// Wall clock in Unix seconds (binding expiry); tests may fake it.
    fn now_unix(&self) -> i64 {
        Utc::now().timestamp()
    }
}
