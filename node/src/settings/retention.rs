//! `retention.*`: how long CDRs and recordings are kept.
//!
//! | key | value | default |
//! |---|---|---|
//! | `retention.cdr_days` | days (a number, fractions allowed; 0 = keep forever) | keep forever |
//! | `retention.recording_days` | days, as above | keep forever |
//! | `retention.interval_s` | seconds between two checks (> 0) | 600 |
//! | `retention.audit_entries` | audit log entries kept (100 ..= 1,000,000) | 10,000 |

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::SettingError;

pub const CDR_DAYS: &str = "retention.cdr_days";
pub const RECORDING_DAYS: &str = "retention.recording_days";
pub const INTERVAL_S: &str = "retention.interval_s";
pub const AUDIT_ENTRIES: &str = "retention.audit_entries";
/// Audit log entries kept when `retention.audit_entries` is not set.
pub const DEFAULT_AUDIT_ENTRIES: usize = 10_000;
const AUDIT_RANGE: std::ops::RangeInclusive<u64> = 100..=1_000_000;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

/// The retention settings, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Age after which CDRs are deleted (None = kept forever).
    pub cdr_age: Option<Duration>,
    /// Age after which recordings are deleted (None = kept forever).
    pub recording_age: Option<Duration>,
    /// Time between two checks.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            cdr_age: None,
            recording_age: None,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// Longest retention in days (about 2700 years). An age far beyond it once
/// panicked (more seconds than a `Duration` holds) or, in microseconds cast to
/// `i64`, wrapped into a cutoff near now that deleted recent CDRs.
pub const MAX_DAYS: f64 = 1_000_000.0;

fn days(key: &str, v: &Value) -> Result<Option<Duration>, SettingError> {
    match v.as_f64() {
        Some(d) if d > 0.0 && d <= MAX_DAYS => Ok(Some(Duration::from_secs_f64(d * 86_400.0))),
        Some(0.0) => Ok(None),
        _ => Err(SettingError::new(
            key,
            format!("{v} is not a number of days from 0 to {MAX_DAYS}"),
            "set a number, e.g. 365 (0 keeps everything)",
        )),
    }
}

/// The cutoff (µs since the epoch) of `age` at `now_micros`: what is older goes.
/// `None` keeps everything (no age, or an age reaching before the epoch's range).
pub fn cutoff(age: Option<Duration>, now_micros: i64) -> Option<i64> {
    let age = i64::try_from(age?.as_micros()).ok()?;
    now_micros.checked_sub(age)
}

fn interval(key: &str, v: &Value) -> Result<Duration, SettingError> {
    v.as_u64()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            SettingError::new(
                key,
                format!("{v} is not a whole number of seconds > 0"),
                "set e.g. 600",
            )
        })
}

/// `retention.audit_entries`: how many audit log entries are kept.
pub fn audit_entries(key: &str, v: &Value) -> Result<usize, SettingError> {
    v.as_u64()
        .filter(|n| AUDIT_RANGE.contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| {
            SettingError::new(
                key,
                format!(
                    "{v} is not a whole number of entries in {}..={}",
                    AUDIT_RANGE.start(),
                    AUDIT_RANGE.end()
                ),
                format!("set e.g. {DEFAULT_AUDIT_ENTRIES} (the default)"),
            )
        })
}

/// Check one `retention.*` key.
pub fn validate(key: &str, value: &Value) -> Result<(), SettingError> {
    match key {
        CDR_DAYS | RECORDING_DAYS => days(key, value).map(|_| ()),
        INTERVAL_S => interval(key, value).map(|_| ()),
        AUDIT_ENTRIES => audit_entries(key, value).map(|_| ()),
        _ => Err(SettingError::new(
            key,
            "unknown retention setting",
            format!("use {CDR_DAYS}, {RECORDING_DAYS}, {INTERVAL_S} or {AUDIT_ENTRIES}"),
        )),
    }
}

impl Retention {
    /// From the `retention.*` entries (JSON values). A bad stored value (written
    /// before the server validated settings) is reported and that key left at its
    /// default, so retention never deletes on a misread value.
    pub fn from_entries(entries: &BTreeMap<String, Value>) -> (Retention, Vec<SettingError>) {
        let mut r = Retention::default();
        let mut errors = Vec::new();
        for (key, v) in entries {
            match key.as_str() {
                CDR_DAYS => match days(key, v) {
                    Ok(d) => r.cdr_age = d,
                    Err(e) => errors.push(e),
                },
                RECORDING_DAYS => match days(key, v) {
                    Ok(d) => r.recording_age = d,
                    Err(e) => errors.push(e),
                },
                INTERVAL_S => match interval(key, v) {
                    Ok(d) => r.interval = d,
                    Err(e) => errors.push(e),
                },
                _ => {}
            }
        }
        (r, errors)
    }
}
