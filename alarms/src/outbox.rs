//! The local outbox: mails waiting for SMTP, retried with backoff, and an hourly cap
//! against storms: once `max_per_hour` mails went out in the last hour, the rest wait;
//! when the cap frees a slot, everything that waited for the same recipients goes out
//! as one digest. Pure (the driver passes `now`), so it is tested without sockets.

use std::collections::VecDeque;
use std::time::Duration;

use super::catalog::{AlarmId, Severity};
use super::mail::{self, MailContext, RenderedMail};
use super::rules::{Millis, StableHasher};
use super::smtp::{backoff_delay, RetryPolicy};

const HOUR_MS: u64 = 3_600_000;

/// A mail waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub mail: RenderedMail,
    pub to: Vec<String>,
    /// The alarms it reports (logs, `tandem alarm list`).
    pub alarms: Vec<AlarmId>,
    pub severity: Severity,
    pub queued_ms: Millis,
    pub attempts: u32,
    pub next_try_ms: Millis,
    pub last_error: Option<String>,
    /// Message-IDs this mail delivers: its own, or those of the mails a digest
    /// merges. Once it is sent, their entries leave the replicated outbox.
    pub covers: Vec<String>,
    /// Queued in the replicated outbox (by the master) rather than only here (a
    /// node without quorum mailing "quorum lost").
    pub replicated: bool,
}

/// What happened to a failed mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Back in the queue; tried again after this delay.
    Retry(Duration),
    /// Not retryable, or retried for too long: dropped.
    GaveUp,
}

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Outgoing>,
    /// Most mails per rolling hour (`alarm.max_mails_per_hour`, default 30).
    max_per_hour: usize,
    sent: VecDeque<Millis>,
    /// Mails were held back by the cap since the last send.
    capped: bool,
    policy: RetryPolicy,
}

impl Outbox {
    pub fn new(max_per_hour: usize, policy: RetryPolicy) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            max_per_hour: max_per_hour.max(1),
            sent: VecDeque::new(),
            capped: false,
            policy,
        }
    }

    pub fn set_max_per_hour(&mut self, n: usize) {
        self.max_per_hour = n.max(1);
    }

    /// Retry delays for mails that fail from now on.
    pub fn set_policy(&mut self, policy: RetryPolicy) {
        self.policy = policy;
    }

    pub fn push(&mut self, o: Outgoing) {
        self.queue.push_back(o);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.queue.iter()
    }

    /// Keep only the mails for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&Outgoing) -> bool) {
        self.queue.retain(keep);
    }

    /// Whether the hourly cap holds mails back right now.
    pub fn capped(&mut self, now: Millis) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= HOUR_MS)
        {
            self.sent.pop_front();
        }
        self.sent.len() >= self.max_per_hour
    }

    /// Take the next mail to send now, if any is due and the cap allows. After the cap
    /// held mails back, all due mails for the same recipients become one digest.
    pub fn next(&mut self, now: Millis, ctx: &MailContext) -> Option<Outgoing> {
        let first = self.queue.iter().position(|o| o.next_try_ms <= now)?;
        if self.capped(now) {
            self.capped = true;
            return None;
        }
        if !self.capped {
            return self.queue.remove(first);
        }
        self.capped = false;
        let to = self.queue[first].to.clone();
        let (mut parts, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|o| o.to == to && o.next_try_ms <= now);
        self.queue = rest.into();
        if parts.len() == 1 {
            return parts.pop();
        }
        Some(digest(&parts, ctx, now, self.max_per_hour))
    }

    /// The mail went out.
    pub fn sent(&mut self, now: Millis) {
        self.sent.push_back(now);
    }

    /// The mail failed: requeue it with backoff if `retryable` and not retried for too
    /// long already.
    pub fn failed(
        &mut self,
        mut o: Outgoing,
        retryable: bool,
        error: String,
        now: Millis,
    ) -> Failure {
        o.attempts += 1;
        o.last_error = Some(error);
        let elapsed = Duration::from_millis(now.saturating_sub(o.queued_ms));
        match retryable
            .then(|| backoff_delay(&self.policy, o.attempts - 1, elapsed))
            .flatten()
        {
            Some(delay) => {
                o.next_try_ms =
                    now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                self.queue.push_back(o);
                Failure::Retry(delay)
            }
            None => Failure::GaveUp,
        }
    }
}

/// One mail standing for several held back by the hourly cap.
fn digest(parts: &[Outgoing], ctx: &MailContext, now: Millis, max: usize) -> Outgoing {
    let severity = parts
        .iter()
        .map(|p| p.severity)
        .max()
        .unwrap_or(Severity::Info);
    let mut h = StableHasher::new();
    h.write(b"tandem-alarm-digest-v1");
    for p in parts {
        h.write(p.mail.message_id.as_bytes());
    }
    let id = h.hex();
    let mut body = format!(
        "More than {max} alarm mails within an hour: the {} below were held back and are \
         sent together.\n\n",
        parts.len()
    );
    for p in parts {
        body.push_str(&format!("- {}\n", p.mail.subject));
    }
    for p in parts {
        body.push_str(&format!(
            "\n=================================================================\n\
             Subject: {}\nMessage-ID: {}\n\n{}",
            p.mail.subject, p.mail.message_id, p.mail.body
        ));
    }
    let mut alarms: Vec<AlarmId> = parts.iter().flat_map(|p| p.alarms.clone()).collect();
    alarms.dedup();
    Outgoing {
        mail: RenderedMail {
            message_id: mail::message_id(&id, ctx.cluster),
            subject: format!(
                "[{}][{}][{}] Digest: {} alarm mails held back by the hourly cap",
                severity.label(),
                ctx.cluster,
                ctx.node,
                parts.len()
            ),
            body,
        },
        to: parts.first().map(|p| p.to.clone()).unwrap_or_default(),
        alarms,
        severity,
        queued_ms: parts.iter().map(|p| p.queued_ms).min().unwrap_or(now),
        attempts: 0,
        next_try_ms: now,
        last_error: None,
        covers: parts.iter().flat_map(|p| p.covers.clone()).collect(),
        replicated: parts.iter().any(|p| p.replicated),
    }
}

/// A mail as stored in the replicated outbox (config key `outbox.<hash>`): enough
/// to send it again, with the same Message-ID, from whichever node is master.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuedMail {
    pub message_id: String,
    pub subject: String,
    pub body: String,
    pub to: Vec<String>,
    pub alarms: Vec<String>,
    pub severity: String,
    pub queued_ms: Millis,
}

/// Prefix of the replicated outbox's config keys.
pub const QUEUE_PREFIX: &str = "outbox.";

/// Config key of a queued mail (Message-IDs hold characters keys may not).
pub fn queue_key(message_id: &str) -> String {
    let mut h = StableHasher::new();
    h.write(message_id.as_bytes());
    format!("{QUEUE_PREFIX}{}", h.hex())
}

impl QueuedMail {
    pub fn of(o: &Outgoing) -> QueuedMail {
        QueuedMail {
            message_id: o.mail.message_id.clone(),
            subject: o.mail.subject.clone(),
            body: o.mail.body.clone(),
            to: o.to.clone(),
            alarms: o.alarms.iter().map(|a| a.as_str().to_string()).collect(),
            severity: o.severity.label().to_string(),
            queued_ms: o.queued_ms,
        }
    }

    /// Back into an outgoing mail, due `now` (the new master tries it at once).
    pub fn outgoing(&self, now: Millis) -> Outgoing {
        let severity = [
            Severity::Info,
            Severity::Minor,
            Severity::Major,
            Severity::Critical,
        ]
        .into_iter()
        .find(|s| s.label() == self.severity)
        .unwrap_or(Severity::Major);
        Outgoing {
            mail: RenderedMail {
                message_id: self.message_id.clone(),
                subject: self.subject.clone(),
                body: self.body.clone(),
            },
            to: self.to.clone(),
            alarms: self.alarms.iter().filter_map(|a| a.parse().ok()).collect(),
            severity,
            queued_ms: self.queued_ms,
            attempts: 0,
            next_try_ms: now,
            last_error: None,
            covers: vec![self.message_id.clone()],
            replicated: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: MailContext = MailContext {
        cluster: "prod",
        node: "node-a",
    };

    fn out(n: u32, to: &str, now: Millis) -> Outgoing {
        Outgoing {
            mail: RenderedMail {
                message_id: format!("<{n}@prod.tandem>"),
                subject: format!("[MAJOR][prod][node-a] alarm {n}"),
                body: format!("body {n}\n"),
            },
            to: vec![to.into()],
            alarms: vec![AlarmId::DiskSpaceLow],
            severity: if n == 7 {
                Severity::Critical
            } else {
                Severity::Major
            },
            queued_ms: now,
            attempts: 0,
            next_try_ms: now,
            last_error: None,
            covers: vec![format!("<{n}@prod.tandem>")],
            replicated: true,
        }
    }

    #[test]
    fn storm_is_capped_per_hour_then_sent_as_one_digest_per_recipient_set() {
        let mut ob = Outbox::new(3, RetryPolicy::default());
        let t = 1_000_000;
        for n in 0..10 {
            ob.push(out(
                n,
                if n == 9 { "b@x.example" } else { "a@x.example" },
                t,
            ));
        }
        let mut sent = Vec::new();
        while let Some(o) = ob.next(t, &CTX) {
            sent.push(o);
            ob.sent(t);
        }
        assert_eq!(sent.len(), 3, "cap");
        assert_eq!(ob.len(), 7);
        assert!(ob.next(t + HOUR_MS - 1, &CTX).is_none());
        // An hour later: the 6 mails for a@ as one digest, then the one for b@ alone.
        let d = ob.next(t + HOUR_MS, &CTX).unwrap();
        ob.sent(t + HOUR_MS);
        assert_eq!(d.to, vec!["a@x.example".to_string()]);
        assert!(
            d.mail
                .subject
                .starts_with("[CRITICAL][prod][node-a] Digest: 6 alarm mails"),
            "{}",
            d.mail.subject
        );
        for n in 3..9 {
            assert!(d.mail.body.contains(&format!("body {n}")));
        }
        let b = ob.next(t + HOUR_MS, &CTX).unwrap();
        assert_eq!(b.mail.message_id, "<9@prod.tandem>");
        assert!(ob.is_empty());
        // Same held mails, same digest id.
        let mut again = Outbox::new(1, RetryPolicy::default());
        again.sent(t);
        for n in 3..9 {
            again.push(out(n, "a@x.example", t));
        }
        assert!(again.next(t, &CTX).is_none());
        assert_eq!(
            again.next(t + HOUR_MS, &CTX).unwrap().mail.message_id,
            d.mail.message_id
        );
    }

    #[test]
    fn failures_retry_with_backoff_and_give_up() {
        let mut ob = Outbox::new(30, RetryPolicy::default());
        let t = 0;
        ob.push(out(1, "a@x.example", t));
        let o = ob.next(t, &CTX).unwrap();
        assert_eq!(
            ob.failed(o, true, "refused".into(), t),
            Failure::Retry(Duration::from_secs(30))
        );
        assert!(ob.next(t + 29_000, &CTX).is_none());
        let o = ob.next(t + 30_000, &CTX).unwrap();
        assert_eq!((o.attempts, o.last_error.as_deref()), (1, Some("refused")));
        assert_eq!(
            ob.failed(o, true, "refused".into(), t + 30_000),
            Failure::Retry(Duration::from_secs(60))
        );
        let o = ob.next(t + 90_000, &CTX).unwrap();
        assert_eq!(
            ob.failed(o, false, "550".into(), t + 90_000),
            Failure::GaveUp
        );
        assert!(ob.is_empty());
        // Retried for 24 h: given up.
        ob.push(out(2, "a@x.example", t));
        let o = ob.next(t, &CTX).unwrap();
        assert_eq!(
            ob.failed(o, true, "down".into(), 24 * HOUR_MS),
            Failure::GaveUp
        );
    }
}
