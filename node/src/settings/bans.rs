//! `sip.ban.<address>`: sources the telephony service banned after repeated
//! authentication failures, replicated so every node's firewall drops them and a
//! new master keeps refusing them.
//!
//! | config key | value |
//! |---|---|
//! | `sip.ban.198.51.100.7` | `{"until_unix": 1767225600, "failures": 5}` |
//! | `sip.ban.2001-db8--7` | the same for an IPv6 source (`:` written `-`: keys take no `:`) |
//!
//! The master writes them (`run::telephony`), and deletes them once `until_unix`
//! is past; an operator lifts one early with `tandem config delete sip.ban.<address>`
//! or adds one by hand with `tandem config set`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use super::SettingError;

/// Prefix of ban keys.
pub const BAN_PREFIX: &str = "sip.ban.";

/// Most bans the telephony service writes (a guessing attack from a whole network
/// must not grow the replicated config without limit; past it the master's SIP
/// service still drops the sources it banned, and the per-account lock holds).
pub const MAX_BANS: usize = 10_000;

/// The stored form of a ban.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredBan {
    /// Unix time (seconds) when the ban lapses.
    pub until_unix: i64,
    /// Failures that led to it (0 for a ban set by hand).
    #[serde(default)]
    pub failures: u32,
}

/// The config key of a ban on `ip`.
pub fn ban_key(ip: IpAddr) -> String {
    format!("{BAN_PREFIX}{}", ip.to_string().replace(':', "-"))
}

/// The address of a `sip.ban.<address>` key.
pub fn ban_source(key: &str) -> Option<IpAddr> {
    let rest = key.strip_prefix(BAN_PREFIX)?;
    if rest.contains('.') {
        rest.parse().ok()
    } else {
        rest.replace('-', ":").parse().ok()
    }
}

/// Check one `sip.ban.*` key before it is proposed.
pub fn validate(key: &str, value: &Value) -> Result<(), SettingError> {
    if ban_source(key).is_none() {
        return Err(SettingError::new(
            key,
            "not an IP address after sip.ban.",
            "use sip.ban.<IPv4> (sip.ban.198.51.100.7) or sip.ban.<IPv6 with - for :> (sip.ban.2001-db8--7)",
        ));
    }
    let ban: StoredBan = serde_json::from_value(value.clone()).map_err(|e| {
        SettingError::new(
            key,
            format!("not a ban: {e}"),
            "set {\"until_unix\": <Unix seconds when it lapses>}",
        )
    })?;
    if ban.until_unix <= 0 {
        return Err(SettingError::new(
            key,
            format!("until_unix {} is not a time", ban.until_unix),
            "give the Unix time (seconds) when the ban lapses, e.g. `date -d +1hour +%s`",
        ));
    }
    Ok(())
}

/// The bans in force at `now_unix`, from `(key, value)` entries of the config
/// (malformed and expired ones left out): address → Unix time it lapses.
pub fn active(entries: &[(String, String)], now_unix: i64) -> BTreeMap<IpAddr, i64> {
    entries
        .iter()
        .filter_map(|(k, v)| {
            let ip = ban_source(k)?;
            let ban: StoredBan = serde_json::from_str(v).ok()?;
            (ban.until_unix > now_unix).then_some((ip, ban.until_unix))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_for_both_families() {
        for ip in ["198.51.100.7", "2001:db8::7", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let key = ban_key(ip);
            assert!(!key.contains(':'), "{key}");
            assert_eq!(ban_source(&key), Some(ip), "{key}");
        }
        assert_eq!(ban_source("sip.ban.not-an-ip"), None);
    }

    #[test]
    fn validation_and_expiry() {
        assert!(validate(
            "sip.ban.198.51.100.7",
            &json!({"until_unix": 2_000_000_000})
        )
        .is_ok());
        let e = validate("sip.ban.x", &json!({"until_unix": 1})).unwrap_err();
        assert!(e.fix.contains("sip.ban.198.51.100.7"), "{e}");
        let e = validate("sip.ban.10.0.0.1", &json!({"until": 5})).unwrap_err();
        assert!(e.problem.contains("not a ban"), "{e}");
        assert!(validate("sip.ban.10.0.0.1", &json!({"until_unix": 0})).is_err());
        let entries = vec![
            (
                ban_key("10.0.0.1".parse().unwrap()),
                r#"{"until_unix": 100}"#.to_string(),
            ),
            (
                ban_key("10.0.0.2".parse().unwrap()),
                r#"{"until_unix": 300, "failures": 5}"#.to_string(),
            ),
            ("sip.ban.10.0.0.3".to_string(), "garbage".to_string()),
        ];
        let a = active(&entries, 200);
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            vec![("10.0.0.2".parse().unwrap(), 300)]
        );
    }
}
