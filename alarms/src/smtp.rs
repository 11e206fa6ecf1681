//! SMTP delivery with lettre: settings from the replicated `smtp.*` keys, plain /
//! STARTTLS / implicit TLS (rustls), optional auth, a custom CA, a fallback smarthost,
//! and errors that name the server and the cause.
//!
//! ```text
//!  smtp.* config ─▶ SmtpSettings::from_entries ─▶ Mailer::new (reads smtp.ca_file)
//!  RenderedMail + recipients ─▶ Mailer::send ─▶ primary host ─(retryable error)─▶ fallback host
//!                             └▶ Mailer::send_with_retries: backoff_delay(attempt) between tries
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use super::error::ConfigError;
use super::mail::RenderedMail;

/// How the connection to the SMTP server is protected (`smtp.security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain SMTP (a trusted local relay only).
    None,
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    StartTls,
    /// TLS from the first byte ("SMTPS", usually port 465).
    Tls,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::None => "none",
            Security::StartTls => "starttls",
            Security::Tls => "tls",
        }
    }

    /// The usual port: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            Security::None => 25,
            Security::StartTls => 587,
            Security::Tls => 465,
        }
    }
}

/// A password that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// SMTP settings, from the replicated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// `smtp.host`: the smarthost name or address (required).
    pub host: String,
    /// `smtp.port`; default by security: 25, 587 (starttls) or 465 (tls).
    pub port: u16,
    /// `smtp.security`: "none", "starttls" (default) or "tls".
    pub security: Security,
    /// `smtp.username` and `smtp.password`: authenticate when both are set.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `smtp.from`: sender address; default `tandem@<host>`.
    pub from: Mailbox,
    /// `smtp.ca_file`: PEM file with the CA that signed the server certificate, for
    /// servers with a private CA (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// `smtp.fallback_host`: `host` or `host:port` tried when the primary fails with a
    /// retryable error; same security and credentials.
    pub fallback: Option<(String, u16)>,
    /// `smtp.timeout_s`: per connection and command; default 10 s.
    pub timeout: Duration,
}

fn string(entries: &BTreeMap<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    match entries.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(ConfigError::invalid(
            key,
            format!("expected a string, got {other}"),
        )),
    }
}

fn port(key: &str, v: &Value) -> Result<u16, ConfigError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| ConfigError::invalid(key, format!("expected a port 1-65535, got {v}")))
}

/// Split `host` or `host:port` (IPv6 in brackets: `[::1]:25`).
fn host_port(key: &str, text: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let (host, p) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| ConfigError::invalid(key, format!("`{text}`: missing `]`")))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (text.to_string(), None),
        }
    };
    let port = match p {
        Some(p) => port(key, &Value::String(p.to_string()))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(ConfigError::invalid(key, format!("`{text}`: empty host")));
    }
    Ok((host, port))
}

impl SmtpSettings {
    /// Read `smtp.*` from the replicated config (other keys are ignored).
    pub fn from_entries(entries: &BTreeMap<String, Value>) -> Result<SmtpSettings, ConfigError> {
        let host = string(entries, "smtp.host")?.ok_or(ConfigError::Missing {
            key: "smtp.host".into(),
        })?;
        let security = match string(entries, "smtp.security")?.as_deref() {
            None | Some("starttls") => Security::StartTls,
            Some("none") => Security::None,
            Some("tls") => Security::Tls,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "smtp.security",
                    format!("`{other}` is not one of none, starttls, tls"),
                ))
            }
        };
        let port = match entries.get("smtp.port") {
            None | Some(Value::Null) => security.default_port(),
            Some(v) => port("smtp.port", v)?,
        };
        let username = string(entries, "smtp.username")?;
        let password = string(entries, "smtp.password")?.map(Secret);
        if username.is_some() != password.is_some() {
            let missing = if username.is_some() {
                "smtp.password"
            } else {
                "smtp.username"
            };
            return Err(ConfigError::invalid(
                missing,
                "smtp.username and smtp.password are set together (or neither)",
            ));
        }
        let from_text = string(entries, "smtp.from")?.unwrap_or_else(|| format!("tandem@{host}"));
        let from = Mailbox::from_str(&from_text).map_err(|e| ConfigError::BadAddress {
            key: "smtp.from".into(),
            address: from_text.clone(),
            reason: e.to_string(),
        })?;
        let fallback = string(entries, "smtp.fallback_host")?
            .map(|t| host_port("smtp.fallback_host", &t, port))
            .transpose()?;
        let timeout = match entries.get("smtp.timeout_s") {
            None | Some(Value::Null) => Duration::from_secs(10),
            Some(v) => Duration::from_secs(v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                ConfigError::invalid("smtp.timeout_s", format!("expected seconds > 0, got {v}"))
            })?),
        };
        Ok(SmtpSettings {
            host,
            port,
            security,
            username,
            password,
            from,
            ca_file: string(entries, "smtp.ca_file")?.map(PathBuf::from),
            fallback,
            timeout,
        })
    }
}

/// A failed delivery. Every message names the server (host and port) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error(
        "SMTP server {host}:{port}: connection refused (is the server running, and are \
         smtp.host/smtp.port right?)"
    )]
    Refused { host: String, port: u16 },
    #[error("SMTP server {host}:{port}: timed out after {secs} s ({detail})")]
    Timeout {
        host: String,
        port: u16,
        secs: u64,
        detail: String,
    },
    #[error("SMTP server {host}:{port}: cannot connect: {detail}")]
    Connect {
        host: String,
        port: u16,
        detail: String,
    },
    #[error(
        "SMTP server {host}:{port}: TLS failure ({security}): {detail} (check smtp.security \
         and, for a private CA, smtp.ca_file)"
    )]
    Tls {
        host: String,
        port: u16,
        security: &'static str,
        detail: String,
    },
    #[error(
        "SMTP server {host}:{port}: authentication rejected: {detail} (check smtp.username \
         and smtp.password)"
    )]
    AuthRejected {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("SMTP server {host}:{port}: recipient refused: {detail}")]
    RecipientRefused {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("SMTP server {host}:{port}: {kind} error: {detail}")]
    Rejected {
        host: String,
        port: u16,
        /// "temporary" (4xx, retried) or "permanent" (5xx).
        kind: &'static str,
        detail: String,
    },
    #[error("SMTP server {host}:{port}: {detail}")]
    Other {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("{primary}; fallback {fallback}")]
    BothFailed {
        primary: Box<SmtpError>,
        fallback: Box<SmtpError>,
    },
    #[error("smtp.ca_file `{path}`: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("cannot build the mail: {detail}")]
    Message { detail: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl SmtpError {
    /// Whether trying again later may succeed (server down, temporary rejection).
    /// Bad settings, auth and permanent rejections need the operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            SmtpError::Refused { .. }
            | SmtpError::Timeout { .. }
            | SmtpError::Connect { .. }
            | SmtpError::Other { .. } => true,
            SmtpError::Rejected { kind, .. } => *kind == "temporary",
            SmtpError::BothFailed { primary, fallback } => {
                primary.is_retryable() || fallback.is_retryable()
            }
            _ => false,
        }
    }

    /// Classify a lettre error for `host:port`.
    fn classify(
        e: &lettre::transport::smtp::Error,
        host: &str,
        port: u16,
        s: &SmtpSettings,
    ) -> SmtpError {
        let (host, detail) = (host.to_string(), chain(e));
        if let Some(io) = io_source(e) {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return SmtpError::Refused { host, port },
                std::io::ErrorKind::TimedOut => {
                    return SmtpError::Timeout {
                        host,
                        port,
                        secs: s.timeout.as_secs(),
                        detail,
                    }
                }
                _ => {}
            }
        }
        if e.is_timeout() {
            return SmtpError::Timeout {
                host,
                port,
                secs: s.timeout.as_secs(),
                detail,
            };
        }
        if e.is_tls() || tls_source(e) {
            return SmtpError::Tls {
                host,
                port,
                security: s.security.as_str(),
                detail,
            };
        }
        if let Some(code) = e.status() {
            let code_text = code.to_string();
            // RFC 3207 §4: 530 "Must issue a STARTTLS command first".
            if code_text == "530" && detail.to_ascii_lowercase().contains("starttls") {
                return SmtpError::Tls {
                    host,
                    port,
                    security: s.security.as_str(),
                    detail,
                };
            }
            // RFC 4954 §6: 535 credentials invalid, 530/534/538 auth or encryption needed.
            if matches!(code_text.as_str(), "530" | "534" | "535" | "538") {
                return SmtpError::AuthRejected { host, port, detail };
            }
            // RFC 5321 §4.2.3: 550/551/553 mailbox unavailable / not local / bad name.
            if matches!(code_text.as_str(), "550" | "551" | "553") {
                return SmtpError::RecipientRefused { host, port, detail };
            }
            return SmtpError::Rejected {
                host,
                port,
                kind: if e.is_transient() {
                    "temporary"
                } else {
                    "permanent"
                },
                detail,
            };
        }
        if io_source(e).is_some() {
            return SmtpError::Connect { host, port, detail };
        }
        SmtpError::Other { host, port, detail }
    }
}

fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Whether a rustls error (certificate, handshake) is in the chain; lettre reports a
/// failed STARTTLS handshake as a connection error wrapping it.
fn tls_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if inner.downcast_ref::<rustls::Error>().is_some() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The error's text with its sources ("a: b: c"), each repeated part once (lettre's
/// errors include their source in their own text).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = err.source();
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in text.split(": ") {
        if parts.last() != Some(&p) {
            parts.push(p);
        }
    }
    parts.join(": ")
}

/// Retry schedule for mails while the server is down: 30 s, 1, 2, 4, … minutes,
/// capped at 30 min between tries, giving up once `give_up_after` has passed since
/// the first try. Pure, so the outbox and the tests agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_secs(30),
            max: Duration::from_secs(30 * 60),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// Delay before retry number `attempt` (0 = the first retry), or `None` when the mail
/// has been retried for longer than `give_up_after`.
pub fn backoff_delay(policy: &RetryPolicy, attempt: u32, elapsed: Duration) -> Option<Duration> {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    let delay = policy.first.saturating_mul(factor).min(policy.max);
    (elapsed.saturating_add(delay) <= policy.give_up_after).then_some(delay)
}

/// A delivered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// `host:port` that accepted it.
    pub server: String,
    /// The server's final reply, e.g. "250 OK".
    pub reply: String,
}

/// Sends mails with the configured settings.
#[derive(Debug, Clone)]
pub struct Mailer {
    settings: SmtpSettings,
    /// Contents of `smtp.ca_file`, read once.
    ca_pem: Option<Vec<u8>>,
}

impl Mailer {
    /// Check the settings and read the CA file.
    pub fn new(settings: SmtpSettings) -> Result<Mailer, SmtpError> {
        let ca_pem = match &settings.ca_file {
            None => None,
            Some(p) => {
                let pem = std::fs::read(p).map_err(|e| SmtpError::CaFile {
                    path: p.clone(),
                    detail: e.to_string(),
                })?;
                Certificate::from_pem(&pem).map_err(|e| SmtpError::CaFile {
                    path: p.clone(),
                    detail: format!("not a PEM certificate: {}", chain(&e)),
                })?;
                Some(pem)
            }
        };
        Ok(Mailer { settings, ca_pem })
    }

    pub fn settings(&self) -> &SmtpSettings {
        &self.settings
    }

    fn transport(
        &self,
        host: &str,
        port: u16,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, SmtpError> {
        let s = &self.settings;
        let tls_err = |e: lettre::transport::smtp::Error| SmtpError::Tls {
            host: host.to_string(),
            port,
            security: s.security.as_str(),
            detail: chain(&e),
        };
        let params = || -> Result<TlsParameters, SmtpError> {
            let mut b = TlsParameters::builder(host.to_string());
            if let Some(pem) = &self.ca_pem {
                let cert = Certificate::from_pem(pem).map_err(tls_err)?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls().map_err(tls_err)
        };
        let tls = match s.security {
            Security::None => Tls::None,
            Security::StartTls => Tls::Required(params()?),
            Security::Tls => Tls::Wrapper(params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(s.timeout));
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            b = b.credentials(Credentials::new(u.clone(), p.0.clone()));
        }
        Ok(b.build())
    }

    fn message(&self, mail: &RenderedMail, to: &[String]) -> Result<Message, SmtpError> {
        let mut b = Message::builder()
            .from(self.settings.from.clone())
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id.clone()))
            .header(ContentType::TEXT_PLAIN);
        if to.is_empty() {
            return Err(SmtpError::Message {
                detail: "no recipient".into(),
            });
        }
        for addr in to {
            let mbox = Mailbox::from_str(addr).map_err(|e| SmtpError::Message {
                detail: format!("`{addr}` is not a mail address: {e}"),
            })?;
            b = b.to(mbox);
        }
        b.body(mail.body.clone()).map_err(|e| SmtpError::Message {
            detail: e.to_string(),
        })
    }

    async fn send_to(&self, msg: &Message, host: &str, port: u16) -> Result<String, SmtpError> {
        let t = self.transport(host, port)?;
        match t.send(msg.clone()).await {
            Ok(resp) => Ok(format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => Err(SmtpError::classify(&e, host, port, &self.settings)),
        }
    }

    /// Send once: the primary server, then the fallback if the primary failed with a
    /// retryable error.
    pub async fn send(&self, mail: &RenderedMail, to: &[String]) -> Result<Sent, SmtpError> {
        let msg = self.message(mail, to)?;
        let s = &self.settings;
        let primary = match self.send_to(&msg, &s.host, s.port).await {
            Ok(reply) => {
                return Ok(Sent {
                    message_id: mail.message_id.clone(),
                    server: format!("{}:{}", s.host, s.port),
                    reply,
                })
            }
            Err(e) => e,
        };
        let Some((fh, fp)) = s.fallback.as_ref().filter(|_| primary.is_retryable()) else {
            return Err(primary);
        };
        tracing::warn!(error = %primary, fallback = %format!("{fh}:{fp}"), "alarm mail: primary SMTP server failed, trying the fallback");
        match self.send_to(&msg, fh, *fp).await {
            Ok(reply) => Ok(Sent {
                message_id: mail.message_id.clone(),
                server: format!("{fh}:{fp}"),
                reply,
            }),
            Err(fallback) => Err(SmtpError::BothFailed {
                primary: Box::new(primary),
                fallback: Box::new(fallback),
            }),
        }
    }

    /// Send, retrying retryable failures on the [`backoff_delay`] schedule (uses
    /// `tokio::time`, so tests can pause time). Returns the last error on giving up.
    pub async fn send_with_retries(
        &self,
        mail: &RenderedMail,
        to: &[String],
        policy: &RetryPolicy,
    ) -> Result<Sent, SmtpError> {
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.send(mail, to).await {
                Ok(sent) => return Ok(sent),
                Err(e) if e.is_retryable() => {
                    let Some(delay) = backoff_delay(policy, attempt, start.elapsed()) else {
                        return Err(e);
                    };
                    tracing::warn!(error = %e, message_id = %mail.message_id, attempt, retry_in_s = delay.as_secs(), "alarm mail not delivered; will retry");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn settings_defaults_and_full_form() {
        let s = SmtpSettings::from_entries(&entries(&[("smtp.host", json!("mail.example.com"))]))
            .unwrap();
        assert_eq!((s.port, s.security), (587, Security::StartTls));
        assert_eq!(s.from.to_string(), "tandem@mail.example.com");
        assert_eq!(s.timeout, Duration::from_secs(10));
        let s = SmtpSettings::from_entries(&entries(&[
            ("smtp.host", json!("mx1")),
            ("smtp.security", json!("tls")),
            ("smtp.username", json!("u")),
            ("smtp.password", json!("hunter2")),
            ("smtp.from", json!("PBX <pbx@example.com>")),
            ("smtp.fallback_host", json!("mx2:2525")),
            ("smtp.ca_file", json!("/etc/tandem/ca.pem")),
        ]))
        .unwrap();
        assert_eq!(s.port, 465);
        assert_eq!(s.fallback, Some(("mx2".into(), 2525)));
        assert!(!format!("{s:?}").contains("hunter2"), "password redacted");
        let s = SmtpSettings::from_entries(&entries(&[
            ("smtp.host", json!("mx1")),
            ("smtp.port", json!("2525")),
            ("smtp.fallback_host", json!("[::1]")),
        ]))
        .unwrap();
        assert_eq!((s.port, s.fallback), (2525, Some(("::1".into(), 2525))));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases: &[(&[(&str, Value)], &str)] = &[
            (&[], "smtp.host"),
            (
                &[("smtp.host", json!("h")), ("smtp.port", json!(70000))],
                "smtp.port",
            ),
            (
                &[("smtp.host", json!("h")), ("smtp.security", json!("ssl"))],
                "smtp.security",
            ),
            (
                &[("smtp.host", json!("h")), ("smtp.username", json!("u"))],
                "smtp.password",
            ),
            (
                &[("smtp.host", json!("h")), ("smtp.from", json!("nope"))],
                "smtp.from",
            ),
            (&[("smtp.host", json!(5))], "smtp.host"),
            (
                &[
                    ("smtp.host", json!("h")),
                    ("smtp.fallback_host", json!("x:y")),
                ],
                "smtp.fallback_host",
            ),
        ];
        for (pairs, key) in cases {
            let err = SmtpSettings::from_entries(&entries(pairs))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let p = RetryPolicy::default();
        let d = |a, e| backoff_delay(&p, a, Duration::from_secs(e)).map(|d| d.as_secs());
        assert_eq!(d(0, 0), Some(30));
        assert_eq!(d(1, 30), Some(60));
        assert_eq!(d(3, 0), Some(240));
        assert_eq!(d(6, 0), Some(1800), "capped at 30 min");
        assert_eq!(d(40, 0), Some(1800), "no overflow");
        assert_eq!(d(10, 23 * 3600), Some(1800));
        assert_eq!(d(10, 24 * 3600 - 60), None, "gives up after 24 h");
        // Keeps trying for hours: count the tries within 24 h.
        let (mut elapsed, mut tries) = (Duration::ZERO, 0);
        while let Some(delay) = backoff_delay(&p, tries, elapsed) {
            elapsed += delay;
            tries += 1;
        }
        assert!(
            tries > 40 && elapsed > Duration::from_secs(23 * 3600),
            "{tries} {elapsed:?}"
        );
    }

    #[test]
    fn retryable_split() {
        let refused = SmtpError::Refused {
            host: "h".into(),
            port: 1,
        };
        assert!(refused.is_retryable());
        assert!(refused.to_string().contains("h:1: connection refused"));
        assert!(!SmtpError::AuthRejected {
            host: "h".into(),
            port: 1,
            detail: String::new()
        }
        .is_retryable());
    }

    #[test]
    fn missing_ca_file_names_the_path() {
        let mut s = SmtpSettings::from_entries(&entries(&[("smtp.host", json!("h"))])).unwrap();
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let err = Mailer::new(s).unwrap_err().to_string();
        assert!(err.contains("smtp.ca_file `/nonexistent/ca.pem`"), "{err}");
    }

    #[tokio::test]
    async fn refused_connection_names_host_port_and_cause() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let s = SmtpSettings::from_entries(&entries(&[
            ("smtp.host", json!("127.0.0.1")),
            ("smtp.port", json!(port)),
            ("smtp.security", json!("none")),
        ]))
        .unwrap();
        let mail = RenderedMail {
            message_id: "<a@b.tandem>".into(),
            subject: "s".into(),
            body: "b".into(),
        };
        let err = Mailer::new(s)
            .unwrap()
            .send(&mail, &["x@example.com".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, SmtpError::Refused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{port}")) && text.contains("refused"),
            "{text}"
        );
    }
}
