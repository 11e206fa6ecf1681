//! Typed replicated settings: every key of the replicated config that a node reads,
//! one module per namespace, and [`validate`], which the API runs before a
//! `SetConfig` is proposed (a bad value gets 400 naming the key and the fix, instead
//! of being replicated to every node and failing later in a reader).
//!
//! | namespace | module | reader |
//! |---|---|---|
//! | `smtp.*`, `alarm.*` | [`alarm`] (parsers of `tandem-alarms`) | the alarm mailer |
//! | `retention.*` | [`retention`] | `run::retention` |
//! | `maintenance.<id>` | [`maintenance_key`], [`maintenance_value`] | the role driver |
//! | `replication.recording_bandwidth_kbps` | [`recording_cap`] | blob sync |
//! | `sip.user.<ext>`, `sip.binding.*` | [`sip`] | the telephony backend |
//! | `sip.ban.<address>` | [`bans`] | the SIP service and every node's firewall |
//! | `user.*`, `audit.*` (reserved: refused here) | [`users`] | `http::auth`, `http::audit` |
//!
//! Keys outside these namespaces are free (an integrator's own keys).

pub mod alarm;
pub mod bans;
pub mod retention;
pub mod sip;
pub mod users;

use std::collections::BTreeMap;

use serde_json::Value;

/// A setting the server refuses: which key, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}; {fix}")]
pub struct SettingError {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl SettingError {
    pub fn new(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> SettingError {
        SettingError {
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// What [`validate`] needs to know of the cluster and of the current settings.
#[derive(Debug, Default)]
pub struct Context {
    /// Ids of the current members (for `maintenance.<id>`).
    pub members: Vec<u64>,
    /// Ids of the data voters that are not in maintenance now (for
    /// `maintenance.<id>`: the last one may not be put in maintenance).
    pub eligible: Vec<u64>,
    /// The operator said "I know" (`?force=true`, `--force`): a change that
    /// would leave no node able to be master is accepted.
    pub force: bool,
    /// The current `alarm.*` and `smtp.*` entries (alarm rules are checked as a whole).
    pub alarm_entries: BTreeMap<String, Value>,
}

/// Config key that holds a node's maintenance flag (replicated, so the master knows).
pub fn maintenance_key(id: u64) -> String {
    format!("maintenance.{id}")
}

/// Whether node `id` is in maintenance, as `tree` (this node's copy of the
/// replicated config) says.
pub fn in_maintenance(tree: &tandem_replication::store::Tree, id: u64) -> bool {
    tandem_replication::store::query::config_get(tree, &maintenance_key(id))
        .ok()
        .flatten()
        .is_some_and(|e| e.value == "true")
}

/// The node id of a `maintenance.<id>` key.
pub fn maintenance_node(key: &str) -> Option<Result<u64, SettingError>> {
    let id = key.strip_prefix("maintenance.")?;
    Some(id.parse().map_err(|_| {
        SettingError::new(
            key,
            format!("`{id}` is not a node id"),
            "use maintenance.<node id>, e.g. maintenance.2 (ids in `tandem status`)",
        )
    }))
}

/// The stored maintenance flag: only the JSON booleans `true` / `false`.
pub fn maintenance_value(key: &str, value: &Value) -> Result<bool, SettingError> {
    value.as_bool().ok_or_else(|| {
        SettingError::new(
            key,
            format!("{value} is not a boolean"),
            "set true or false (JSON booleans, not strings), or use `tandem maintenance on|off`",
        )
    })
}

/// Config key of the recording-sync bandwidth cap.
pub const RECORDING_CAP_KEY: &str = tandem_replication::blobs::sync::CAP_CONFIG_KEY;

/// `replication.recording_bandwidth_kbps`: KB/s, 0 = unlimited.
pub fn recording_cap(key: &str, value: &Value) -> Result<u64, SettingError> {
    value.as_u64().ok_or_else(|| {
        SettingError::new(
            key,
            format!("{value} is not a whole number of KB/s"),
            "set a number ≥ 0 (0 = unlimited), e.g. 2048",
        )
    })
}

/// Check `value` for `key` before it is proposed. `Ok` for keys outside the known
/// namespaces.
pub fn validate(key: &str, value: &Value, ctx: &Context) -> Result<(), SettingError> {
    if let Some(fix) = users::reserved(key) {
        return Err(SettingError::new(key, "reserved key", fix));
    }
    if key.starts_with("smtp.") {
        return alarm::smtp_key(key, value);
    }
    if key.starts_with("alarm.") {
        return alarm::alarm_key(key, value, &ctx.alarm_entries);
    }
    if key.starts_with("retention.") {
        return retention::validate(key, value);
    }
    if let Some(id) = maintenance_node(key) {
        let id = id?;
        let on = maintenance_value(key, value)?;
        if !ctx.members.contains(&id) {
            return Err(SettingError::new(
                key,
                format!("node {id} is not a member of this cluster"),
                format!("members are {:?} (`tandem status`)", ctx.members),
            ));
        }
        if on && !ctx.force && ctx.eligible.iter().all(|&e| e == id) {
            return Err(SettingError::new(
                key,
                format!(
                    "node {id} is the last data node that may be master: in maintenance, \
                     no node would carry the service"
                ),
                "take another data node out of maintenance first, or add --force \
                 (`?force=true`) to stop the service on purpose"
                    .to_string(),
            ));
        }
        return Ok(());
    }
    if key.starts_with("replication.") {
        if key != RECORDING_CAP_KEY {
            return Err(SettingError::new(
                key,
                "unknown replication setting",
                format!("the only one is {RECORDING_CAP_KEY}"),
            ));
        }
        return recording_cap(key, value).map(|_| ());
    }
    if key.starts_with(bans::BAN_PREFIX) {
        return bans::validate(key, value);
    }
    if key.starts_with("sip.") {
        return sip::validate(key, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
