//! Errors of the alarm mailer. Each names the config key, host or address at fault.

/// A bad `alarm.*` or `smtp.*` entry in the replicated configuration. Fatal until the
/// operator fixes the key (`tandem config set <key> <value>`); retrying does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error(
        "config key `{key}`: recipient list `{list}` is not defined; set `alarm.recipients.{list}` \
         to a JSON array of addresses first"
    )]
    UnknownList { key: String, list: String },
    #[error("config key `{key}`: `{address}` is not a mail address ({reason})")]
    BadAddress {
        key: String,
        address: String,
        reason: String,
    },
    #[error("config key `{key}` is not set; set it with `tandem config set {key} <value>`")]
    Missing { key: String },
}

impl ConfigError {
    pub fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}
