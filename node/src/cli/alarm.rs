//! `tandem alarm list|history|test|recipients|route|silence|unsilence`.

use anyhow::Context;
use serde_json::{json, Value};
use tandem_api::{AlarmHistory, AlarmStatus};

use super::{connect, print, AlarmCmd};

pub async fn run(action: AlarmCmd) -> anyhow::Result<()> {
    match action {
        AlarmCmd::List { common } => {
            let (_, c) = connect(&common)?;
            let v = c.alarms().await?;
            print(&common, &v, alarm_list_text);
            Ok(())
        }
        AlarmCmd::History { common } => {
            let (_, c) = connect(&common)?;
            let v = c.alarm_history().await?;
            print(&common, &v, history_text);
            Ok(())
        }
        AlarmCmd::Test { common, to } => {
            let (_, c) = connect(&common)?;
            let v = c.alarm_test(to).await.context("test mail not sent")?;
            print(&common, &v, |v| {
                format!(
                    "test mail sent to {} via {} ({}); Message-ID {}",
                    v.to.join(", "),
                    v.server,
                    v.reply,
                    v.message_id
                )
            });
            Ok(())
        }
        other => settings(other).await,
    }
}

/// Text of `tandem alarm list`.
pub fn alarm_list_text(v: &AlarmStatus) -> String {
    let mut s = String::new();
    if v.active.is_empty() {
        s.push_str("no active alarm\n");
    }
    for a in &v.active {
        let mut flags = Vec::new();
        if a.flapping {
            flags.push("flapping");
        }
        if a.muted {
            flags.push("muted");
        }
        s.push_str(&format!(
            "{:<8} {:<28} {:<12} since {}{}  {}\n",
            a.severity,
            a.id,
            a.subject,
            a.since,
            if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(", "))
            },
            a.detail
        ));
    }
    if v.maintenance {
        s.push_str("alarm maintenance mode is on: no alarm mail is sent\n");
    }
    s.push_str(&format!(
        "mails: {} sent, {} failed, {} queued (node {})",
        v.mails_sent, v.mails_failed, v.mails_queued, v.node
    ));
    if let Some(e) = &v.config_error {
        s.push_str(&format!("\nsettings error: {e}"));
    }
    s
}

fn history_text(v: &AlarmHistory) -> String {
    let rows: Vec<String> = v
        .history
        .iter()
        .map(|h| {
            format!(
                "{}  {:<6}  {}  → {}{}",
                tandem_alarms::mail::format_time(h.at_ms),
                h.outcome,
                h.subject,
                h.to.join(", "),
                h.error
                    .as_ref()
                    .map(|e| format!("\n    error: {e}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    if rows.is_empty() {
        "no alarm mail sent by this node since it started".to_string()
    } else {
        rows.join("\n")
    }
}

#[derive(serde::Serialize)]
struct Changed {
    key: String,
    value: Option<Value>,
    version: u64,
}

/// `tandem alarm recipients|route|silence|unsilence`: write one `alarm.*` key after
/// checking the whole alarm configuration with it, so a mistake (unknown list, bad
/// address, unknown alarm id) is refused here, naming the key.
async fn settings(action: AlarmCmd) -> anyhow::Result<()> {
    let (common, key, value, done) = match action {
        AlarmCmd::Recipients {
            common,
            list,
            addrs,
        } => {
            let key = format!("alarm.recipients.{list}");
            let done = if addrs.is_empty() {
                format!("recipient list {list} removed")
            } else {
                format!("recipient list {list}: {}", addrs.join(", "))
            };
            let v = (!addrs.is_empty()).then(|| json!(addrs));
            (common, key, v, done)
        }
        AlarmCmd::Route {
            common,
            target,
            lists,
        } => {
            let key = format!("alarm.route.{target}");
            let done = if lists.is_empty() {
                format!("route for {target} removed")
            } else {
                format!("{target} goes to {}", lists.join(", "))
            };
            let v = (!lists.is_empty()).then(|| json!(lists));
            (common, key, v, done)
        }
        AlarmCmd::Silence {
            common,
            name,
            alarm,
            subject,
            duration,
            comment,
        } => {
            if alarm.is_none() && subject.is_none() {
                anyhow::bail!("give --alarm ID, --subject NAME or both: a silence without either would mute everything (use `tandem config set alarm.maintenance true` for that)");
            }
            let secs = super::parse_duration("--for", &duration, 60)?;
            let until = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
            let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let key = format!("alarm.silence.{name}");
            let done = format!("silence {name} until {until}");
            let v = json!({"alarm": alarm, "subject": subject, "until": until, "comment": comment});
            (common, key, Some(v), done)
        }
        AlarmCmd::Unsilence { common, name } => {
            let key = format!("alarm.silence.{name}");
            (common, key, None, format!("silence {name} ended"))
        }
        AlarmCmd::List { .. } | AlarmCmd::History { .. } | AlarmCmd::Test { .. } => {
            unreachable!("handled in run")
        }
    };
    let (_, c) = connect(&common)?;
    // The whole alarm configuration as it would be after the change.
    let current = c.config_list(Some("alarm.")).await?;
    let mut entries: std::collections::BTreeMap<String, Value> = current
        .config
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    match &value {
        Some(v) => {
            entries.insert(key.clone(), v.clone());
        }
        None => {
            if entries.remove(&key).is_none() {
                anyhow::bail!("{key} is not set");
            }
        }
    }
    tandem_alarms::rules::RulesConfig::from_entries(&entries)?;
    tandem_alarms::recipients::Routing::from_entries(&entries)?;
    tandem_alarms::rules::Silence::from_entries(&entries)?;
    let version = match &value {
        Some(v) => c.config_set(&key, v).await?.1.version,
        None => c.config_delete(&key).await?.version,
    };
    let v = Changed {
        key,
        value,
        version,
    };
    print(&common, &v, |_| done);
    Ok(())
}
