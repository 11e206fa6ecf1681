//! Errors of the media crate (SIP signalling, RTP relay, recording).
//!
//! Retryable errors (the caller may try again later): [`MediaError::PortsExhausted`],
//! [`BackendError`] with `retryable: true`. Everything else is fatal for the
//! operation that returned it.

use std::net::SocketAddr;

/// Every error a media component returns.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A SIP socket could not be bound (address in use, VIP not present, no permission).
    #[error("cannot bind SIP {transport} socket on {addr}: {source}; check [sip] listen and that no other SIP server runs")]
    SipBind {
        /// "UDP" or "TCP".
        transport: &'static str,
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// All RTP port pairs of `[sip] rtp_ports` are in use.
    #[error("no free RTP ports left in the configured range; widen [sip] rtp_ports")]
    PortsExhausted,
    /// The service task is gone (shut down or panicked).
    #[error("the SIP service is not running")]
    ServiceStopped,
    /// The RTP port range in the configuration cannot hold a single call.
    #[error("invalid RTP port range {low}-{high}: need low <= high and room for at least 2 even/odd port pairs; fix [sip] rtp_ports")]
    InvalidPortRange {
        /// Lowest port as configured.
        low: u16,
        /// Highest port as configured.
        high: u16,
    },
    /// A socket or OS call of the RTP relay failed.
    #[error("RTP relay: {what}: {source}")]
    RelayIo {
        /// What the relay was doing (with the address or port involved).
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The RTP relay's worker threads are gone (shut down or a worker died).
    #[error("the RTP relay is not running (worker stopped); restart the telephony service")]
    RelayStopped,
    /// A recording file could not be created, written, synced or read back.
    #[error("recording file {path}: {what}: {source}; check the recordings directory (space, permissions)")]
    RecordingIo {
        /// The file involved.
        path: std::path::PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A recording id that cannot be used as a file name.
    #[error("invalid recording id {id:?}: use letters, digits, '-', '_' and '.' only (1-128 characters, not starting with '.')")]
    InvalidRecordingId {
        /// The id as given.
        id: String,
    },
    /// `start_recording` was called twice for one call.
    #[error("recording already started for call {call_id} (recording {recording_id})")]
    RecordingAlreadyStarted {
        /// The call.
        call_id: String,
        /// The recording in progress.
        recording_id: String,
    },
}

/// Error returned by a [`crate::backend::Backend`] write (bindings, CDRs).
#[derive(Debug, Clone, thiserror::Error)]
#[error("backend write failed ({}): {message}", if *.retryable { "retryable" } else { "fatal" })]
pub struct BackendError {
    /// What went wrong, for the log.
    pub message: String,
    /// True when the write may succeed later (no quorum, leader changing).
    pub retryable: bool,
}

/// Error of the nftables ban set ([`crate::firewall`]). None is fatal: the SIP
/// service enforces bans itself; the firewall only drops the packets earlier.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The `nft` program is not there.
    #[error("cannot run {program}: {source}; install nftables (the appliance has it) to drop banned SIP sources in the firewall, meanwhile the SIP service refuses them itself")]
    NotInstalled {
        /// The command tried.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// nft ran but the kernel refused (no CAP_NET_ADMIN).
    #[error("nft is not permitted to change the ruleset ({stderr}); run the node as root or with CAP_NET_ADMIN, meanwhile the SIP service refuses banned sources itself")]
    NotPermitted {
        /// What nft said.
        stderr: String,
    },
    /// nft rejected the script (or failed otherwise).
    #[error("nft failed ({status}): {stderr}")]
    Failed {
        /// Its exit status.
        status: String,
        /// What nft said.
        stderr: String,
    },
}
