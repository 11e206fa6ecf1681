//! Rendering a [`Notification`] as a mail: subject, plain-text body, Message-ID.
//!
//! Subject: `[SEVERITY][cluster][where] Title`; `where` is the alarms' common subject
//! (usually a node name) or the sending node when they differ. A mail whose items all
//! report the end of a problem is labelled `[CLEARED]`.

use chrono::{DateTime, Utc};

use super::catalog::{fill, Kind};
use super::rules::{Item, Millis, Notification, StableHasher, Transition};

/// Where the mail comes from.
#[derive(Debug, Clone, Copy)]
pub struct MailContext<'a> {
    /// `cluster.name` of the node config.
    pub cluster: &'a str,
    /// Name of the node that sends (`node.name`).
    pub node: &'a str,
}

/// A mail ready to hand to SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    /// `<id@cluster.tandem>`: stable, so a resend after failover is recognisably the
    /// same mail.
    pub message_id: String,
    pub subject: String,
    pub body: String,
}

/// Message-ID for a notification id: `<id@cluster.tandem>` (cluster name reduced to
/// letters, digits and `-` so the header stays valid).
pub fn message_id(id: &str, cluster: &str) -> String {
    let mut domain: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if domain.is_empty() {
        domain.push_str("cluster");
    }
    format!("<{id}@{domain}.tandem>")
}

/// "2026-11-23 13:02:16 UTC".
pub fn format_time(ms: Millis) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

/// "45 s", "12 min", "3 h 5 min", "2 d 4 h".
pub fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The headline of one item: "Node down", "Node back", "Node down (still active)".
pub fn item_title(i: &Item) -> String {
    let d = i.alarm.def();
    match i.transition {
        Transition::Raised | Transition::Event => d.title.to_string(),
        Transition::Cleared => d.cleared_title.to_string(),
        Transition::Reminder => format!("{} (still active)", d.title),
        Transition::Flapping => format!("{} is flapping", d.title),
        Transition::Stable { active: true } => {
            format!("{} (stopped flapping, still active)", d.title)
        }
        Transition::Stable { active: false } if d.kind == Kind::State => {
            format!("{} (stopped flapping)", d.cleared_title)
        }
        Transition::Stable { active: false } => format!("{} (stopped flapping)", d.title),
    }
}

fn severity_label(n: &Notification) -> &'static str {
    if n.all_clear() {
        "CLEARED"
    } else {
        n.severity().label()
    }
}

fn location<'a>(n: &'a Notification, ctx: &MailContext<'a>) -> &'a str {
    match n.items.first() {
        Some(first)
            if first.subject != "cluster" && n.items.iter().all(|i| i.subject == first.subject) =>
        {
            &first.subject
        }
        _ => ctx.node,
    }
}

/// `[CRITICAL][prod][node-b] Node down`; several items: `… 3 alarms: A, B, C`.
pub fn subject(n: &Notification, ctx: &MailContext) -> String {
    let head = format!(
        "[{}][{}][{}]",
        severity_label(n),
        ctx.cluster,
        location(n, ctx)
    );
    match n.items.as_slice() {
        [one] => format!("{head} {}", item_title(one)),
        items => {
            let mut titles: Vec<String> = items.iter().take(3).map(item_title).collect();
            if items.len() > 3 {
                titles.push(format!("+{} more", items.len() - 3));
            }
            format!("{head} {} alarms: {}", items.len(), titles.join(", "))
        }
    }
}

/// Word-wrap `text` at 72 columns, every line indented by `indent`.
fn wrap(text: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > 72 {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn item_block(i: &Item, ctx: &MailContext, n: &Notification) -> String {
    let d = i.alarm.def();
    let label = if i.transition.is_clear() {
        "CLEARED"
    } else {
        d.severity.label()
    };
    let mut s = format!(
        "== {label} - {} ({}, {})\n\n",
        item_title(i),
        i.alarm,
        i.transition.as_str()
    );
    s.push_str("What:\n");
    s.push_str(&wrap(&fill(d.text, &i.subject, &i.detail), "  "));
    if i.subject == "cluster" {
        s.push_str(&format!(
            "Where:\n  cluster {} (reported by {})\n",
            ctx.cluster, ctx.node
        ));
    } else {
        s.push_str(&format!(
            "Where:\n  cluster {}, {} (reported by {})\n",
            ctx.cluster, i.subject, ctx.node
        ));
    }
    let since = match i.transition {
        Transition::Event => format!("  {}\n", format_time(i.since_ms)),
        Transition::Cleared | Transition::Stable { active: false } => format!(
            "  raised {}, cleared {} (lasted {})\n",
            format_time(i.since_ms),
            format_time(i.at_ms),
            format_duration(i.at_ms.saturating_sub(i.since_ms))
        ),
        _ => format!(
            "  {} (for {})\n",
            format_time(i.since_ms),
            format_duration(n.at_ms.saturating_sub(i.since_ms))
        ),
    };
    s.push_str(if i.transition == Transition::Event {
        "When:\n"
    } else {
        "Since:\n"
    });
    s.push_str(&since);
    s.push_str("What to do:\n");
    if i.transition.is_clear() {
        s.push_str("  Nothing; the condition has ended.\n");
    } else {
        s.push_str(&wrap(d.advice, "  "));
    }
    s
}

/// Render a notification for the given sender.
pub fn render(n: &Notification, ctx: &MailContext) -> RenderedMail {
    let mut body = String::new();
    let count = n.items.len();
    body.push_str(&format!(
        "{} alarm {} in cluster {}, sent by {} at {}.\n\n",
        count,
        if count == 1 { "change" } else { "changes" },
        ctx.cluster,
        ctx.node,
        format_time(n.at_ms)
    ));
    for (k, i) in n.items.iter().enumerate() {
        if k > 0 {
            body.push('\n');
        }
        body.push_str(&item_block(i, ctx, n));
    }
    body.push_str(&format!(
        "\n-- \ntandem alarm mailer - notification {}\n\
         Catalog and settings: docs/alarms.md - active alarms: `tandem alarm list`\n",
        n.id
    ));
    RenderedMail {
        message_id: message_id(&n.id, ctx.cluster),
        subject: subject(n, ctx),
        body,
    }
}

/// The mail sent by `tandem alarm test`: unique per request (`nonce`, e.g. the time in
/// ms plus a counter), so two tests are two mails.
pub fn test_mail(ctx: &MailContext, now: Millis, nonce: &str) -> RenderedMail {
    let mut h = StableHasher::new();
    h.write(b"tandem-alarm-test-v1");
    h.write(ctx.cluster.as_bytes());
    h.write(ctx.node.as_bytes());
    h.write(&now.to_be_bytes());
    h.write(nonce.as_bytes());
    let id = h.hex();
    RenderedMail {
        message_id: message_id(&id, ctx.cluster),
        subject: format!("[INFO][{}][{}] Test mail", ctx.cluster, ctx.node),
        body: format!(
            "This is a test mail from the tandem alarm mailer of cluster {}, sent by {} at {}.\n\n\
             If you read this, alarm mail reaches you. Nothing to do.\n\n-- \n\
             tandem alarm mailer - test {} - docs/alarms.md\n",
            ctx.cluster,
            ctx.node,
            format_time(now),
            id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::AlarmId;
    use super::*;

    const T: Millis = 1_795_914_136_000; // 2026-11-28 ...

    fn item(alarm: AlarmId, subject: &str, transition: Transition, since: Millis) -> Item {
        Item {
            alarm,
            subject: subject.into(),
            transition,
            detail: String::new(),
            since_ms: since,
            at_ms: T,
        }
    }

    fn n(items: Vec<Item>) -> Notification {
        Notification {
            id: "0123456789abcdef0123456789abcdef".into(),
            at_ms: T,
            items,
        }
    }

    const CTX: MailContext = MailContext {
        cluster: "prod",
        node: "node-a",
    };

    #[test]
    fn subject_has_severity_cluster_place_and_title() {
        let m = render(
            &n(vec![item(
                AlarmId::MasterChanged,
                "node-a",
                Transition::Event,
                T,
            )]),
            &CTX,
        );
        assert_eq!(m.subject, "[CRITICAL][prod][node-a] Master changed");
        let m = render(
            &n(vec![item(
                AlarmId::NodeDown,
                "node-b",
                Transition::Cleared,
                T - 300_000,
            )]),
            &CTX,
        );
        assert_eq!(m.subject, "[CLEARED][prod][node-b] Node back");
        assert!(m.body.contains("lasted 5 min"), "{}", m.body);
        let m = render(
            &n(vec![item(
                AlarmId::QuorumLost,
                "node-a",
                Transition::Reminder,
                T - 7_200_000,
            )]),
            &CTX,
        );
        assert_eq!(
            m.subject,
            "[CRITICAL][prod][node-a] Quorum lost (still active)"
        );
        assert!(m.body.contains("for 2 h 0 min"), "{}", m.body);
    }

    #[test]
    fn grouped_mail_lists_every_alarm_with_what_where_since_and_advice() {
        let items = vec![
            item(AlarmId::WitnessLost, "witness", Transition::Raised, T),
            item(AlarmId::DiskSpaceLow, "node-b", Transition::Raised, T),
            item(AlarmId::QuorumLost, "node-a", Transition::Raised, T),
            item(AlarmId::SmtpFailing, "node-a", Transition::Flapping, T),
        ];
        let m = render(&n(items), &CTX);
        assert_eq!(
            m.subject,
            "[CRITICAL][prod][node-a] 4 alarms: Witness lost, Disk space low, Quorum lost, +1 more"
        );
        for needle in [
            "cluster.quorum_lost",
            "storage.disk_space_low",
            "SMTP failing is flapping",
            "Where:\n  cluster prod, node-b",
            "Since:\n  ",
            "What to do:\n  Free space",
        ] {
            assert!(m.body.contains(needle), "missing {needle:?} in\n{}", m.body);
        }
        assert_eq!(m.body.matches("== ").count(), 4);
        assert!(
            m.body.lines().all(|l| l.chars().count() <= 100),
            "{}",
            m.body
        );
        assert_eq!(
            m.message_id,
            "<0123456789abcdef0123456789abcdef@prod.tandem>"
        );
    }

    /// The example in docs/alarms.md is this mail, verbatim; bodies stay ASCII (no
    /// quoted-printable in the operator's inbox).
    #[test]
    fn docs_show_a_real_mail() {
        let since = 1_795_438_936_000; // 2026-11-23 13:02:16 UTC
        let n = Notification {
            id: "5e0c2a1f9b7d4c3e8a6f0b1d2c3e4f50".into(),
            at_ms: since + 10_000,
            items: vec![Item {
                detail: "The master (node-a) gets no answer from it.".into(),
                ..item(AlarmId::NodeDown, "node-b", Transition::Raised, since)
            }],
        };
        let m = render(&n, &CTX);
        let text = format!(
            "Subject: {}\nMessage-ID: {}\n\n{}",
            m.subject, m.message_id, m.body
        );
        assert!(text.is_ascii());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alarms.md");
        let doc = std::fs::read_to_string(path).expect("docs/alarms.md exists");
        assert!(
            doc.contains(&text),
            "docs/alarms.md: update the first example mail to:\n{text}"
        );
    }

    #[test]
    fn message_id_domain_is_sanitised() {
        assert_eq!(message_id("ab", "Prod Site/1"), "<ab@prod-site-1.tandem>");
        assert_eq!(message_id("ab", ""), "<ab@cluster.tandem>");
    }

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(format_duration(45_000), "45 s");
        assert_eq!(format_duration(12 * 60_000), "12 min");
        assert_eq!(format_duration(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(format_duration(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn test_mails_differ_per_nonce() {
        let a = test_mail(&CTX, T, "1");
        let b = test_mail(&CTX, T, "2");
        assert_ne!(a.message_id, b.message_id);
        assert_eq!(a.subject, "[INFO][prod][node-a] Test mail");
    }
}
