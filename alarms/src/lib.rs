//! The alarm mailer: from "something is wrong" to a mail in the operator's inbox.
//!
//! ```text
//!  sources::Observer ── raft metrics, members down (RoleState::unreachable), lag,
//!      │                  alarm.maintenance; diffed once a second by service.rs
//!      │ Event::Raise / Clear / Failover / Maintenance, Tick
//!      ▼
//!  rules::Engine::handle(event, now) ── pure: grouping, repeat, flap damping,
//!      │                                 inhibition, silences, maintenance
//!      ▼ Vec<Notification> (stable id)
//!  recipients::Routing::split ── alarm.recipients.* / alarm.route.* (replicated config)
//!      │ Delivery { to, notification }
//!      ▼
//!  mail::render ── subject `[SEV][cluster][node] Title`, body, Message-ID <id@cluster.tandem>
//!      ▼
//!  outbox::Outbox ── local, in memory: backoff retries, hourly cap → digest
//!      ▼
//!  smtp::Mailer::send ── lettre: none / STARTTLS / TLS, auth, custom CA, fallback host
//!                         (smtp.* replicated config)
//! ```
//!
//! `service` is the async driver (`tandem run`) around these parts; `tandem alarm
//! test` goes straight to `mail::test_mail` + `smtp::Mailer::send`.
//!
//! [`catalog`] lists every alarm (id, family, severity, text, advice); `docs/alarms.md`
//! is the operator's copy and a test keeps the two in sync. Everything but `smtp` and
//! `service` is synchronous and clock-free (`now` is passed in), tested with a fake clock.

pub mod catalog;
pub mod error;
pub mod mail;
pub mod outbox;
pub mod recipients;
pub mod rules;
pub mod service;
pub mod smtp;
pub mod sources;

use std::collections::BTreeMap;

use serde_json::Value;

pub use catalog::{AlarmId, Family, Severity};
pub use error::ConfigError;

/// Turn stored config entries (key, JSON text) into JSON values; text that is not
/// JSON is taken as a string, as the config API does.
pub fn entries_from_text<I, K, V>(entries: I) -> BTreeMap<String, Value>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: AsRef<str>,
{
    entries
        .into_iter()
        .map(|(k, v)| {
            let text = v.as_ref();
            let value =
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
            (k.into(), value)
        })
        .collect()
}
