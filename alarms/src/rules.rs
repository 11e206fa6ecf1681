//! Alarm rules: what becomes a mail, and when. Plain synchronous logic, no I/O, no
//! clock: the driver passes `now` (milliseconds since the Unix epoch, read once by the
//! driver) into [`Engine::handle`] and sends the returned [`Notification`]s.
//!
//! Per alarm instance (alarm id + subject, e.g. `cluster.node_down` + `node-b`):
//!
//! ```text
//!            Raise                      Clear
//!  inactive ───────▶ active ─────────────────────▶ inactive
//!                      │  (reported once unmuted;     (Cleared mailed if the
//!                      │   Reminder every repeat_s)    raise was mailed)
//!                      ▼
//!   ≥ flap_flips changes in flap_window ─▶ flapping ── stable for flap_stable ─▶ Stable
//! ```
//!
//! Items wait `group_window_ms` after the first one so that alarms firing together go
//! out as one notification. Muting (maintenance, silences, inhibition) is checked when
//! an item is queued and again when the group is sent; a raise that was muted is
//! reported later if the alarm is still active when the mute ends.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::catalog::{AlarmId, Kind, Severity};
use super::error::ConfigError;

/// Milliseconds since the Unix epoch, as passed in by the driver.
pub type Millis = u64;

/// Tunables of the engine, from the replicated `alarm.*` config keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesConfig {
    /// Items queued within this time after the first one are sent as one
    /// notification (`alarm.group_window_s`, default 10 s).
    pub group_window_ms: u64,
    /// Mail when an alarm clears (`alarm.send_cleared`, default true).
    pub send_cleared: bool,
    /// This many state changes within `flap_window_ms` mark an alarm as flapping
    /// (`alarm.flap_flips`, default 6 = three down/up cycles).
    pub flap_flips: usize,
    /// Window over which changes are counted (`alarm.flap_window_s`, default 10 min).
    pub flap_window_ms: u64,
    /// A flapping alarm is reported again after it kept one state this long
    /// (`alarm.flap_stable_s`, default 15 min).
    pub flap_stable_ms: u64,
    /// After a failover the standbys catch up with the new master: replication lag is
    /// muted this long (`alarm.failover_lag_mute_s`, default 5 min).
    pub failover_lag_mute_ms: u64,
    /// Alarms never mailed. Default: those off in the catalog (the heartbeat);
    /// `alarm.heartbeat = true` enables it, `alarm.disabled` lists more.
    pub disabled: BTreeSet<AlarmId>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            group_window_ms: 10_000,
            send_cleared: true,
            flap_flips: 6,
            flap_window_ms: 10 * 60_000,
            flap_stable_ms: 15 * 60_000,
            failover_lag_mute_ms: 5 * 60_000,
            disabled: AlarmId::ALL
                .iter()
                .copied()
                .filter(|a| !a.def().default_enabled)
                .collect(),
        }
    }
}

impl RulesConfig {
    /// Read the rule keys from the replicated config (all `alarm.*` entries; keys this
    /// function does not know are left to others, e.g. recipients).
    pub fn from_entries(entries: &BTreeMap<String, Value>) -> Result<RulesConfig, ConfigError> {
        let mut c = RulesConfig::default();
        let secs = |key: &str, v: &Value| -> Result<u64, ConfigError> {
            v.as_u64().ok_or_else(|| {
                ConfigError::invalid(key, format!("expected a whole number of seconds, got {v}"))
            })
        };
        let boolean = |key: &str, v: &Value| -> Result<bool, ConfigError> {
            v.as_bool().ok_or_else(|| {
                ConfigError::invalid(key, format!("expected true or false, got {v}"))
            })
        };
        for (key, v) in entries {
            match key.as_str() {
                "alarm.group_window_s" => c.group_window_ms = secs(key, v)?.saturating_mul(1000),
                "alarm.send_cleared" => c.send_cleared = boolean(key, v)?,
                "alarm.flap_flips" => {
                    let n = secs(key, v)?;
                    if n < 2 {
                        return Err(ConfigError::invalid(key, "must be at least 2"));
                    }
                    c.flap_flips = usize::try_from(n).unwrap_or(usize::MAX);
                }
                "alarm.flap_window_s" => c.flap_window_ms = secs(key, v)?.saturating_mul(1000),
                "alarm.flap_stable_s" => c.flap_stable_ms = secs(key, v)?.saturating_mul(1000),
                "alarm.failover_lag_mute_s" => {
                    c.failover_lag_mute_ms = secs(key, v)?.saturating_mul(1000)
                }
                "alarm.heartbeat" => {
                    if boolean(key, v)? {
                        c.disabled.remove(&AlarmId::Heartbeat);
                    } else {
                        c.disabled.insert(AlarmId::Heartbeat);
                    }
                }
                "alarm.disabled" => {
                    let list = v.as_array().ok_or_else(|| {
                        ConfigError::invalid(key, "expected a JSON array of alarm ids")
                    })?;
                    for item in list {
                        let id = item
                            .as_str()
                            .and_then(|s| s.parse::<AlarmId>().ok())
                            .ok_or_else(|| {
                                ConfigError::invalid(
                                    key,
                                    format!("{item} is not an alarm id (see docs/alarms.md)"),
                                )
                            })?;
                        c.disabled.insert(id);
                    }
                }
                _ => {}
            }
        }
        Ok(c)
    }
}

/// Input of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A condition holds (state alarm) or happened (event alarm). Raising an active
    /// alarm again only updates its detail.
    Raise {
        alarm: AlarmId,
        /// Where: a node name for node alarms, a certificate path, …
        subject: String,
        /// Free text with the figures: "lag 5400 entries / 12 s (threshold 10 s)".
        detail: String,
    },
    /// The condition ended.
    Clear { alarm: AlarmId, subject: String },
    /// Time passed: send due groups, reminders, end of flapping.
    Tick,
    /// Mute matching alarms until a time.
    Silence(Silence),
    /// Maintenance mode on or off: mutes every alarm; a note is mailed on each change.
    Maintenance(bool),
    /// The master changed: replication lag is muted for `failover_lag_mute_ms`.
    Failover,
}

/// Mutes alarms that match both `alarm` and `subject` (`None` matches any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub alarm: Option<AlarmId>,
    pub subject: Option<String>,
    pub until_ms: Millis,
}

/// Config key prefix of silences: `alarm.silence.<name>`.
pub const SILENCE_PREFIX: &str = "alarm.silence.";

impl Silence {
    /// Read `alarm.silence.<name>` = `{"alarm": "<id>", "subject": "<where>", "until":
    /// "<RFC 3339>"}` entries (`alarm` and/or `subject`; expired ones are kept, the
    /// engine ignores them).
    pub fn from_entries(entries: &BTreeMap<String, Value>) -> Result<Vec<Silence>, ConfigError> {
        let mut out = Vec::new();
        for (key, v) in entries.range(SILENCE_PREFIX.to_string()..) {
            if !key.starts_with(SILENCE_PREFIX) {
                break;
            }
            let obj = v.as_object().ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    "expected {\"alarm\": \"<id>\", \"subject\": \"<where>\", \"until\": \"<RFC 3339 time>\"}",
                )
            })?;
            if let Some(k) = obj
                .keys()
                .find(|k| !matches!(k.as_str(), "alarm" | "subject" | "until" | "comment"))
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("unknown field `{k}` (alarm, subject, until, comment)"),
                ));
            }
            let alarm = match obj.get("alarm") {
                None | Some(Value::Null) => None,
                Some(a) => Some(
                    a.as_str()
                        .and_then(|s| s.parse::<AlarmId>().ok())
                        .ok_or_else(|| {
                            ConfigError::invalid(
                                key,
                                format!("alarm: {a} is not an alarm id (see docs/alarms.md)"),
                            )
                        })?,
                ),
            };
            let subject = match obj.get("subject") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("subject: expected a string, got {other}"),
                    ))
                }
            };
            if alarm.is_none() && subject.is_none() {
                return Err(ConfigError::invalid(
                    key,
                    "give `alarm` and/or `subject` (to mute everything use alarm.maintenance)",
                ));
            }
            let until = obj
                .get("until")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        key,
                        "until: expected an RFC 3339 time, e.g. \"2026-12-01T06:00:00Z\"",
                    )
                })?;
            out.push(Silence {
                alarm,
                subject,
                until_ms: until,
            });
        }
        Ok(out)
    }

    fn matches(&self, alarm: AlarmId, subject: &str) -> bool {
        self.alarm.is_none_or(|a| a == alarm)
            && self.subject.as_deref().is_none_or(|s| s == subject)
    }
}

/// What happened to an alarm instance, as told in a mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Raised,
    Cleared,
    /// Still active after the repeat interval.
    Reminder,
    /// Changed state too often; not reported per change until stable.
    Flapping,
    /// Stopped flapping; `active` tells the state it settled in.
    Stable {
        active: bool,
    },
    /// A one-off event (master changed, heartbeat, maintenance note).
    Event,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Cleared => "cleared",
            Transition::Reminder => "reminder",
            Transition::Flapping => "flapping",
            Transition::Stable { active: true } => "stable-active",
            Transition::Stable { active: false } => "stable-cleared",
            Transition::Event => "event",
        }
    }

    /// Whether the item reports a problem that ended (shown as CLEARED).
    pub fn is_clear(self) -> bool {
        matches!(
            self,
            Transition::Cleared | Transition::Stable { active: false }
        )
    }
}

/// One alarm change inside a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub alarm: AlarmId,
    pub subject: String,
    pub transition: Transition,
    pub detail: String,
    /// When the alarm became active (for a clear: when it was raised).
    pub since_ms: Millis,
    /// When this change was queued.
    pub at_ms: Millis,
}

/// One mail's worth of alarm changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Deterministic id (32 hex digits) from the items' alarm, subject, transition and
    /// times: the same history gives the same id, which becomes the Message-ID.
    pub id: String,
    /// When the group was sent.
    pub at_ms: Millis,
    pub items: Vec<Item>,
}

impl Notification {
    fn new(at_ms: Millis, items: Vec<Item>) -> Notification {
        let mut h = StableHasher::new();
        h.write(b"tandem-alarm-v1");
        for i in &items {
            h.write(i.alarm.as_str().as_bytes());
            h.write(i.subject.as_bytes());
            h.write(i.transition.as_str().as_bytes());
            h.write(&i.since_ms.to_be_bytes());
            h.write(&i.at_ms.to_be_bytes());
        }
        Notification {
            id: h.hex(),
            at_ms,
            items,
        }
    }

    /// Rebuild with a subset of the items (a fresh id derived from the old one and `salt`).
    pub fn with_items(&self, items: Vec<Item>, salt: &str) -> Notification {
        let mut h = StableHasher::new();
        h.write(self.id.as_bytes());
        h.write(salt.as_bytes());
        Notification {
            id: h.hex(),
            at_ms: self.at_ms,
            items,
        }
    }

    /// The highest severity among the items.
    pub fn severity(&self) -> Severity {
        self.items
            .iter()
            .map(|i| i.alarm.def().severity)
            .max()
            .unwrap_or(Severity::Info)
    }

    /// Whether every item reports an end of a problem.
    pub fn all_clear(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.transition.is_clear())
    }
}

/// 128-bit FNV-1a (two 64-bit lanes), stable across Rust versions and machines: ids
/// must agree between nodes. Not a security hash; every field is length-prefixed.
pub(crate) struct StableHasher {
    a: u64,
    b: u64,
}

impl StableHasher {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> StableHasher {
        StableHasher {
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x6c62_272e_07bb_0142,
        }
    }

    fn byte(&mut self, x: u8) {
        self.a = (self.a ^ u64::from(x)).wrapping_mul(Self::PRIME);
        self.b = (self.b ^ u64::from(x.rotate_left(3))).wrapping_mul(Self::PRIME);
    }

    pub(crate) fn write(&mut self, data: &[u8]) {
        for x in (data.len() as u64).to_be_bytes() {
            self.byte(x);
        }
        for &x in data {
            self.byte(x);
        }
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.a, self.b)
    }
}

/// An active alarm, as listed by `tandem alarm list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveAlarm {
    pub alarm: AlarmId,
    pub subject: String,
    pub since_ms: Millis,
    pub detail: String,
    pub flapping: bool,
    pub muted: bool,
}

type Key = (AlarmId, String);

#[derive(Debug, Default)]
struct AlarmState {
    active: bool,
    /// Start of the current activation.
    since_ms: Millis,
    detail: String,
    /// A Raised (or equivalent) went out for the current activation.
    reported: bool,
    /// Last time a mail about this instance was queued (repeat interval).
    last_sent_ms: Millis,
    /// Times of recent state changes, for flap detection.
    flips: VecDeque<Millis>,
    last_change_ms: Millis,
    flapping: bool,
}

/// The alarm rules engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: RulesConfig,
    states: BTreeMap<Key, AlarmState>,
    pending: Vec<Item>,
    group_started: Option<Millis>,
    silences: Vec<Silence>,
    maintenance: bool,
    lag_muted_until: Millis,
}

impl Engine {
    pub fn new(cfg: RulesConfig) -> Engine {
        Engine {
            cfg,
            states: BTreeMap::new(),
            pending: Vec::new(),
            group_started: None,
            silences: Vec::new(),
            maintenance: false,
            lag_muted_until: 0,
        }
    }

    /// Replace the tunables (config changed); state is kept, except that an
    /// alarm now disabled is forgotten, and not mailed, even if it was raised
    /// (or queued in a group) before it was disabled.
    pub fn set_config(&mut self, cfg: RulesConfig) {
        self.states.retain(|key, _| !cfg.disabled.contains(&key.0));
        self.pending
            .retain(|item| !cfg.disabled.contains(&item.alarm));
        if self.pending.is_empty() {
            self.group_started = None;
        }
        self.cfg = cfg;
    }

    /// Replace the silences (from `alarm.silence.*`); `Event::Silence` adds one.
    pub fn set_silences(&mut self, silences: Vec<Silence>) {
        self.silences = silences;
    }

    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// Active alarm instances, ordered by alarm id then subject.
    pub fn active(&self, now: Millis) -> Vec<ActiveAlarm> {
        self.states
            .iter()
            .filter(|(_, s)| s.active)
            .map(|((alarm, subject), s)| ActiveAlarm {
                alarm: *alarm,
                subject: subject.clone(),
                since_ms: s.since_ms,
                detail: s.detail.clone(),
                flapping: s.flapping,
                muted: self.muted(*alarm, subject, now),
            })
            .collect()
    }

    /// Feed one event; returns the notifications to send now (at most one group).
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Notification> {
        self.silences.retain(|s| s.until_ms > now);
        match event {
            Event::Raise {
                alarm,
                subject,
                detail,
            } => self.raise(alarm, subject, detail, now),
            Event::Clear { alarm, subject } => self.clear(alarm, subject, now),
            Event::Tick => {}
            Event::Silence(s) => {
                if s.until_ms > now {
                    self.silences.push(s);
                }
            }
            Event::Maintenance(on) => {
                if on != self.maintenance {
                    self.maintenance = on;
                    if !self.cfg.disabled.contains(&AlarmId::Maintenance) {
                        let detail = if on {
                            "switched on: alarm mails are muted until it is switched off"
                        } else {
                            "switched off: alarm mails are sent again"
                        };
                        self.queue(Item {
                            alarm: AlarmId::Maintenance,
                            subject: "cluster".into(),
                            transition: Transition::Event,
                            detail: detail.into(),
                            since_ms: now,
                            at_ms: now,
                        });
                    }
                }
            }
            Event::Failover => {
                self.lag_muted_until = now.saturating_add(self.cfg.failover_lag_mute_ms);
            }
        }
        self.reconcile(now);
        self.flush(now)
    }

    fn raise(&mut self, alarm: AlarmId, subject: String, detail: String, now: Millis) {
        if self.cfg.disabled.contains(&alarm) {
            return;
        }
        let key = (alarm, subject);
        match alarm.def().kind {
            Kind::Event => {
                if self.flip(&key, now) {
                    return;
                }
                if !self.muted(alarm, &key.1, now) {
                    self.queue(Item {
                        alarm,
                        subject: key.1,
                        transition: Transition::Event,
                        detail,
                        since_ms: now,
                        at_ms: now,
                    });
                }
            }
            Kind::State => {
                let st = self.states.entry(key.clone()).or_default();
                st.detail = detail;
                if st.active {
                    return;
                }
                st.active = true;
                st.since_ms = now;
                st.reported = false;
                // Reported (or not) by `reconcile`, which knows about muting.
                self.flip(&key, now);
            }
        }
    }

    fn clear(&mut self, alarm: AlarmId, subject: String, now: Millis) {
        let key = (alarm, subject);
        let Some(st) = self.states.get_mut(&key) else {
            return;
        };
        if !st.active {
            return;
        }
        st.active = false;
        let since = st.since_ms;
        let was_reported = std::mem::take(&mut st.reported);
        let detail = std::mem::take(&mut st.detail);
        if self.flip(&key, now) || self.states.get(&key).is_some_and(|s| s.flapping) {
            return;
        }
        // Raised and cleared within one grouping window: a blip, nothing is mailed.
        let before = self.pending.len();
        self.pending.retain(|i| {
            !(i.alarm == key.0 && i.subject == key.1 && i.transition == Transition::Raised)
        });
        if self.pending.len() != before {
            if self.pending.is_empty() {
                self.group_started = None;
            }
            return;
        }
        if was_reported && self.cfg.send_cleared && !self.muted(alarm, &key.1, now) {
            self.queue(Item {
                alarm,
                subject: key.1,
                transition: Transition::Cleared,
                detail,
                since_ms: since,
                at_ms: now,
            });
        }
    }

    /// Record a state change; returns true if it made the instance start flapping
    /// (in which case the Flapping item is queued and pending items are dropped).
    fn flip(&mut self, key: &Key, now: Millis) -> bool {
        let window = self.cfg.flap_window_ms;
        let flips = self.cfg.flap_flips;
        let st = self.states.entry(key.clone()).or_default();
        st.last_change_ms = now;
        st.flips.push_back(now);
        while st
            .flips
            .front()
            .is_some_and(|&t| now.saturating_sub(t) > window)
        {
            st.flips.pop_front();
        }
        if st.flapping || st.flips.len() < flips {
            return false;
        }
        st.flapping = true;
        st.reported = false;
        let (since, detail) = (st.since_ms, st.detail.clone());
        self.pending
            .retain(|i| !(i.alarm == key.0 && i.subject == key.1));
        if self.pending.is_empty() {
            self.group_started = None;
        }
        if !self.muted(key.0, &key.1, now) {
            self.queue(Item {
                alarm: key.0,
                subject: key.1.clone(),
                transition: Transition::Flapping,
                detail: format!(
                    "{} changes within {} s{}{}",
                    flips,
                    window / 1000,
                    if detail.is_empty() {
                        ""
                    } else {
                        "; last detail: "
                    },
                    detail
                ),
                since_ms: since,
                at_ms: now,
            });
        }
        true
    }

    /// Muted by maintenance, a silence or inhibition (flapping is separate).
    fn muted(&self, alarm: AlarmId, subject: &str, now: Millis) -> bool {
        if alarm == AlarmId::Maintenance {
            return false;
        }
        if self.maintenance {
            return true;
        }
        if self
            .silences
            .iter()
            .any(|s| s.until_ms > now && s.matches(alarm, subject))
        {
            return true;
        }
        // Inhibition: a node that is down raises nothing else worth a mail.
        if alarm != AlarmId::NodeDown
            && self
                .states
                .get(&(AlarmId::NodeDown, subject.to_string()))
                .is_some_and(|s| s.active)
        {
            return true;
        }
        alarm == AlarmId::ReplicationLag && now < self.lag_muted_until
    }

    fn queue(&mut self, item: Item) {
        if self.pending.is_empty() {
            self.group_started = Some(item.at_ms);
        }
        self.pending.push(item);
    }

    /// Report what became reportable: unmuted raises, reminders, ends of flapping.
    fn reconcile(&mut self, now: Millis) {
        let keys: Vec<Key> = self.states.keys().cloned().collect();
        for key in keys {
            let muted = self.muted(key.0, &key.1, now);
            let def = key.0.def();
            let mut out = None;
            let Some(st) = self.states.get_mut(&key) else {
                continue;
            };
            while st
                .flips
                .front()
                .is_some_and(|&t| now.saturating_sub(t) > self.cfg.flap_window_ms)
            {
                st.flips.pop_front();
            }
            if st.flapping {
                if now.saturating_sub(st.last_change_ms) >= self.cfg.flap_stable_ms {
                    st.flapping = false;
                    st.flips.clear();
                    if !muted {
                        st.reported = st.active;
                        st.last_sent_ms = now;
                        out = Some(Transition::Stable { active: st.active });
                    }
                }
            } else if st.active && !muted {
                if !st.reported {
                    st.reported = true;
                    st.last_sent_ms = now;
                    out = Some(Transition::Raised);
                } else if let Some(r) = def.repeat_s {
                    if now.saturating_sub(st.last_sent_ms) >= r.saturating_mul(1000) {
                        st.last_sent_ms = now;
                        out = Some(Transition::Reminder);
                    }
                }
            }
            let item = out.map(|transition| Item {
                alarm: key.0,
                subject: key.1.clone(),
                transition,
                detail: st.detail.clone(),
                since_ms: st.since_ms,
                at_ms: now,
            });
            if !st.active && !st.flapping && st.flips.is_empty() {
                self.states.remove(&key);
            }
            if let Some(item) = item {
                self.queue(item);
            }
        }
    }

    /// Send the pending group once its window has passed, re-checking mutes.
    fn flush(&mut self, now: Millis) -> Vec<Notification> {
        let Some(start) = self.group_started else {
            return Vec::new();
        };
        if now < start.saturating_add(self.cfg.group_window_ms) {
            return Vec::new();
        }
        self.group_started = None;
        let mut items = Vec::new();
        for item in std::mem::take(&mut self.pending) {
            if self.muted(item.alarm, &item.subject, now) {
                // Muted while waiting (e.g. its node went down): report it later if
                // it is still active when the mute ends.
                if let Some(st) = self.states.get_mut(&(item.alarm, item.subject.clone())) {
                    if matches!(
                        item.transition,
                        Transition::Raised
                            | Transition::Reminder
                            | Transition::Stable { active: true }
                    ) {
                        st.reported = false;
                    }
                }
                continue;
            }
            items.push(item);
        }
        if items.is_empty() {
            return Vec::new();
        }
        vec![Notification::new(now, items)]
    }
}

#[cfg(test)]
mod tests;
