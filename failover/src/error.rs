//! Errors of the failover crate.

/// A failure to change the VIP or to announce it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interface named in `[vip] interface` does not exist.
    #[error("interface `{interface}` not found (check [vip] interface)")]
    NoInterface { interface: String },
    /// A netlink request failed.
    #[error("netlink {op} of {address} on {interface}: {reason}")]
    Netlink {
        op: &'static str,
        address: String,
        interface: String,
        reason: String,
    },
    /// Sending an announcement failed.
    #[error("announce {address} on {interface}: {reason}")]
    Announce {
        address: String,
        interface: String,
        reason: String,
    },
    /// The operation needs privileges this process lacks (CAP_NET_ADMIN / CAP_NET_RAW).
    #[error("{what} needs {capability} (run as root or grant the capability)")]
    Permission {
        what: String,
        capability: &'static str,
    },
}

impl Error {
    /// Retrying later may succeed (a transient netlink or socket error).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Netlink { .. } | Error::Announce { .. })
    }
}
