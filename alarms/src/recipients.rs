//! Who gets which alarm: recipient lists and routes, from the replicated config.
//!
//! ```text
//! alarm.recipients.noc      = ["noc@example.com", "oncall@example.com"]
//! alarm.recipients.security = ["soc@example.com"]
//! alarm.route.cluster       = ["noc"]                 # a family
//! alarm.route.security      = ["security", "noc"]
//! alarm.route.mail.heartbeat = ["noc"]                # a single alarm
//! alarm.route.default       = ["noc"]                 # everything not routed otherwise
//! ```
//!
//! For an alarm, the route of its id wins over the route of its family, which wins
//! over `default`. An alarm with no route is mailed to nobody (and logged).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde_json::Value;

use super::catalog::{AlarmId, Family};
use super::error::ConfigError;
use super::rules::Notification;

pub const LIST_PREFIX: &str = "alarm.recipients.";
pub const ROUTE_PREFIX: &str = "alarm.route.";

/// Recipient lists and routes, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// List name → addresses.
    pub lists: BTreeMap<String, Vec<String>>,
    /// Single alarm → list names.
    pub alarms: BTreeMap<AlarmId, Vec<String>>,
    /// Family → list names.
    pub families: BTreeMap<Family, Vec<String>>,
    /// Lists for alarms without a route of their own or of their family.
    pub default: Vec<String>,
}

/// A part of a notification going to one set of addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub to: Vec<String>,
    pub notification: Notification,
}

fn string_array(key: &str, v: &Value, what: &str) -> Result<Vec<String>, ConfigError> {
    let arr = v.as_array().ok_or_else(|| {
        ConfigError::invalid(key, format!("expected a JSON array of {what}, got {v}"))
    })?;
    arr.iter()
        .map(|x| {
            x.as_str().map(str::to_string).ok_or_else(|| {
                ConfigError::invalid(key, format!("expected a JSON array of {what}, found {x}"))
            })
        })
        .collect()
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            key,
            "a list name is letters, digits, `_` and `-`",
        ));
    }
    Ok(())
}

impl Routing {
    /// Build from the replicated config (any entries; only `alarm.recipients.*` and
    /// `alarm.route.*` are read).
    pub fn from_entries(entries: &BTreeMap<String, Value>) -> Result<Routing, ConfigError> {
        let mut r = Routing::default();
        for (key, v) in entries {
            if let Some(name) = key.strip_prefix(LIST_PREFIX) {
                check_name(key, name)?;
                let addrs = string_array(key, v, "mail addresses")?;
                for a in &addrs {
                    lettre::Address::from_str(a).map_err(|e| ConfigError::BadAddress {
                        key: key.clone(),
                        address: a.clone(),
                        reason: e.to_string(),
                    })?;
                }
                r.lists.insert(name.to_string(), addrs);
            }
        }
        for (key, v) in entries {
            let Some(target) = key.strip_prefix(ROUTE_PREFIX) else {
                continue;
            };
            let lists = string_array(key, v, "recipient list names")?;
            for l in &lists {
                if !r.lists.contains_key(l) {
                    return Err(ConfigError::UnknownList {
                        key: key.clone(),
                        list: l.clone(),
                    });
                }
            }
            if target == "default" {
                r.default = lists;
            } else if let Ok(a) = target.parse::<AlarmId>() {
                r.alarms.insert(a, lists);
            } else if let Ok(f) = target.parse::<Family>() {
                r.families.insert(f, lists);
            } else {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "`{target}` is neither `default`, a family ({}) nor an alarm id \
                         (see docs/alarms.md)",
                        Family::ALL.map(|f| f.as_str()).join(", ")
                    ),
                ));
            }
        }
        Ok(r)
    }

    /// The list names that apply to an alarm.
    pub fn lists_for(&self, alarm: AlarmId) -> &[String] {
        self.alarms
            .get(&alarm)
            .or_else(|| self.families.get(&alarm.def().family))
            .unwrap_or(&self.default)
    }

    /// The addresses an alarm goes to (deduplicated, sorted).
    pub fn recipients(&self, alarm: AlarmId) -> BTreeSet<String> {
        self.lists_for(alarm)
            .iter()
            .filter_map(|l| self.lists.get(l))
            .flatten()
            .cloned()
            .collect()
    }

    /// Every address of every list (for `tandem alarm test` without `--to`).
    pub fn all_addresses(&self) -> BTreeSet<String> {
        self.lists.values().flatten().cloned().collect()
    }

    /// Split a notification by recipient set: each address gets one mail holding just
    /// its alarms. Items routed to nobody are returned separately (to be logged).
    /// With a single recipient set the notification (and its id) is unchanged.
    pub fn split(&self, n: &Notification) -> (Vec<Delivery>, Vec<AlarmId>) {
        let mut groups: Vec<(BTreeSet<String>, Vec<_>)> = Vec::new();
        let mut unrouted = Vec::new();
        for item in &n.items {
            let to = self.recipients(item.alarm);
            if to.is_empty() {
                unrouted.push(item.alarm);
                continue;
            }
            match groups.iter_mut().find(|(set, _)| *set == to) {
                Some((_, items)) => items.push(item.clone()),
                None => groups.push((to, vec![item.clone()])),
            }
        }
        let whole = groups.len() == 1 && unrouted.is_empty();
        let deliveries = groups
            .into_iter()
            .map(|(to, items)| {
                let to: Vec<String> = to.into_iter().collect();
                let notification = if whole {
                    n.clone()
                } else {
                    n.with_items(items, &to.join(","))
                };
                Delivery { to, notification }
            })
            .collect();
        (deliveries, unrouted)
    }
}

#[cfg(test)]
mod tests {
    use super::super::rules::{Item, Transition};
    use super::*;
    use serde_json::json;

    fn entries(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn sample() -> Routing {
        Routing::from_entries(&entries(&[
            (
                "alarm.recipients.noc",
                json!(["noc@example.com", "oncall@example.com"]),
            ),
            ("alarm.recipients.sec", json!(["soc@example.com"])),
            ("alarm.route.cluster", json!(["noc"])),
            ("alarm.route.security", json!(["sec", "noc"])),
            ("alarm.route.security.cert_expiring", json!(["noc"])),
            ("alarm.route.default", json!(["noc"])),
            ("alarm.group_window_s", json!(5)),
            ("smtp.host", json!("mail")),
        ]))
        .unwrap()
    }

    #[test]
    fn alarm_route_beats_family_route_beats_default() {
        let r = sample();
        let noc: BTreeSet<String> = ["noc@example.com", "oncall@example.com"]
            .map(String::from)
            .into();
        assert_eq!(r.recipients(AlarmId::NodeDown), noc);
        assert_eq!(r.recipients(AlarmId::AuthFailures).len(), 3);
        assert_eq!(r.recipients(AlarmId::CertExpiring), noc);
        assert_eq!(r.recipients(AlarmId::DiskSpaceLow), noc, "default");
        assert_eq!(r.all_addresses().len(), 3);
        let none = Routing::from_entries(&BTreeMap::new()).unwrap();
        assert!(none.recipients(AlarmId::NodeDown).is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                entries(&[("alarm.recipients.noc", json!("noc@example.com"))]),
                "alarm.recipients.noc",
                "JSON array",
            ),
            (
                entries(&[("alarm.recipients.noc", json!(["not an address"]))]),
                "alarm.recipients.noc",
                "not an address",
            ),
            (
                entries(&[("alarm.recipients.n o", json!([]))]),
                "alarm.recipients.n o",
                "list name",
            ),
            (
                entries(&[("alarm.route.cluster", json!(["nobody"]))]),
                "alarm.route.cluster",
                "`nobody` is not defined",
            ),
            (
                entries(&[
                    ("alarm.recipients.noc", json!(["a@b.example"])),
                    ("alarm.route.clustre", json!(["noc"])),
                ]),
                "alarm.route.clustre",
                "neither",
            ),
            (
                entries(&[("alarm.route.cluster", json!([1]))]),
                "alarm.route.cluster",
                "found 1",
            ),
        ];
        for (e, key, what) in cases {
            let err = Routing::from_entries(&e).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
            assert!(err.contains(what), "{err}");
        }
    }

    fn item(alarm: AlarmId) -> Item {
        Item {
            alarm,
            subject: "node-a".into(),
            transition: Transition::Raised,
            detail: String::new(),
            since_ms: 1,
            at_ms: 1,
        }
    }

    #[test]
    fn split_gives_each_recipient_set_its_own_alarms() {
        let r = sample();
        let n = Notification {
            id: "x".repeat(32),
            at_ms: 1,
            items: vec![
                item(AlarmId::NodeDown),
                item(AlarmId::AuthFailures),
                item(AlarmId::QuorumLost),
            ],
        };
        let (d, unrouted) = r.split(&n);
        assert!(unrouted.is_empty());
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].notification.items.len(), 2);
        assert_eq!(d[1].to.len(), 3);
        assert_ne!(d[0].notification.id, d[1].notification.id);
        assert_ne!(d[0].notification.id, n.id);
        // One set: unchanged id.
        let one = Notification {
            items: vec![item(AlarmId::NodeDown)],
            ..n.clone()
        };
        let (d, _) = r.split(&one);
        assert_eq!(d[0].notification.id, n.id);
        // Nobody configured: reported as unrouted.
        let (d, unrouted) = Routing::default().split(&one);
        assert!(d.is_empty());
        assert_eq!(unrouted, vec![AlarmId::NodeDown]);
    }
}
