//! `smtp.*` and `alarm.*`: checked with the alarm mailer's own parsers
//! (`tandem_alarms::smtp::SmtpSettings`, `rules::RulesConfig`, `rules::Silence`,
//! `recipients::Routing`), so the server refuses exactly what the mailer could not use.

use std::collections::BTreeMap;

use serde_json::Value;
use tandem_alarms::ConfigError;

use super::SettingError;

/// The `smtp.*` keys the mailer reads.
pub const SMTP_KEYS: &[&str] = &[
    "smtp.host",
    "smtp.port",
    "smtp.security",
    "smtp.username",
    "smtp.password",
    "smtp.from",
    "smtp.ca_file",
    "smtp.fallback_host",
    "smtp.timeout_s",
];

fn from(e: ConfigError) -> SettingError {
    let key = match &e {
        ConfigError::Invalid { key, .. }
        | ConfigError::UnknownList { key, .. }
        | ConfigError::BadAddress { key, .. }
        | ConfigError::Missing { key } => key.clone(),
    };
    let text = e.to_string();
    let prefix = format!("config key `{key}`: ");
    let problem = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
    SettingError::new(&key, problem, "see docs/alarms.md for the accepted values")
}

/// Check one `smtp.*` key on its own (settings are set one key at a time, so rules
/// across keys, such as username with password, are checked when mail is sent).
pub fn smtp_key(key: &str, value: &Value) -> Result<(), SettingError> {
    if !SMTP_KEYS.contains(&key) {
        return Err(SettingError::new(
            key,
            "unknown SMTP setting",
            format!("use one of {}", SMTP_KEYS.join(", ")),
        ));
    }
    let mut entries = BTreeMap::new();
    entries.insert("smtp.host".to_string(), Value::String("localhost".into()));
    // The username/password pair rule is not this key's business here.
    if key == "smtp.username" || key == "smtp.password" {
        for pair in ["smtp.username", "smtp.password"] {
            entries.insert(pair.to_string(), Value::String("x".into()));
        }
    }
    entries.insert(key.to_string(), value.clone());
    tandem_alarms::smtp::SmtpSettings::from_entries(&entries)
        .map(|_| ())
        .map_err(from)
}

/// Check an `alarm.*` key with the whole alarm configuration as it would be after
/// the change (a route naming a list that does not exist is refused).
pub fn alarm_key(
    key: &str,
    value: &Value,
    current: &BTreeMap<String, Value>,
) -> Result<(), SettingError> {
    let mut entries = current.clone();
    entries.insert(key.to_string(), value.clone());
    tandem_alarms::rules::RulesConfig::from_entries(&entries).map_err(from)?;
    tandem_alarms::recipients::Routing::from_entries(&entries).map_err(from)?;
    tandem_alarms::rules::Silence::from_entries(&entries).map_err(from)?;
    Ok(())
}
