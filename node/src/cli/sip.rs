//! `tandem sip user add|remove|list`, `tandem sip status`.

use serde::Serialize;
use tandem_api::{SipServiceState, SipStatusView};

use super::{connect, print, SipCmd, SipUserCmd};

#[derive(Serialize)]
struct Saved {
    extension: String,
    display_name: Option<String>,
    created: bool,
}

pub async fn run(action: SipCmd) -> anyhow::Result<()> {
    match action {
        SipCmd::User {
            action:
                SipUserCmd::Add {
                    common,
                    extension,
                    password,
                    name,
                },
        } => {
            let (_, c) = connect(&common)?;
            let user = tandem_api::SipUserPut {
                password,
                display_name: name,
            };
            let (created, u) = c.sip_user_put(&extension, &user).await?;
            let v = Saved {
                extension: u.extension,
                display_name: u.display_name,
                created,
            };
            print(&common, &v, |v| {
                format!(
                    "SIP user {} {}",
                    v.extension,
                    if v.created { "added" } else { "updated" }
                )
            });
        }
        SipCmd::User {
            action: SipUserCmd::Remove { common, extension },
        } => {
            let (_, c) = connect(&common)?;
            let v = c.sip_user_delete(&extension).await?;
            print(&common, &v, |v| format!("SIP user {} removed", v.removed));
        }
        SipCmd::User {
            action: SipUserCmd::List { common },
        } => {
            let (_, c) = connect(&common)?;
            let v = c.sip_users().await?;
            print(&common, &v, |v| {
                if v.users.is_empty() {
                    return "no SIP users (add one with `tandem sip user add 201 --password ...`)"
                        .to_string();
                }
                v.users
                    .iter()
                    .map(|u| {
                        format!(
                            "{:<10} {}",
                            u.extension,
                            u.display_name.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SipCmd::Status { common } => {
            let (_, c) = connect(&common)?;
            let v = c.sip_status().await?;
            print(&common, &v, sip_status_text);
        }
    }
    Ok(())
}

/// Text of `tandem sip status`.
fn sip_status_text(v: &SipStatusView) -> String {
    let mut s = String::new();
    s.push_str(&format!("registrations: {}\n", v.registrations.len()));
    for r in &v.registrations {
        s.push_str(&format!(
            "  {:<10} {:<40} from {:<22} expires in {} s\n",
            r.extension, r.contact, r.source, r.expires_in_s
        ));
    }
    match &v.service {
        None => s.push_str("telephony service: not running on this node\n"),
        Some(SipServiceState::NotRunning { error, .. }) => s.push_str(&format!(
            "telephony service: not running ({})\n",
            error.as_deref().unwrap_or("unknown reason")
        )),
        Some(SipServiceState::Running(svc)) => {
            let st = &svc.status;
            s.push_str(&format!(
                "telephony service: {} on {}\n",
                if st.active {
                    "active (master)"
                } else {
                    "standing by"
                },
                svc.listen
            ));
            s.push_str(&format!("calls in progress: {}\n", st.calls.len()));
            for c in &st.calls {
                s.push_str(&format!(
                    "  {} -> {}  {}  since {}\n",
                    c.caller,
                    c.callee,
                    c.state,
                    c.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
            s.push_str(&format!(
                "counters: {} registrations, {} auth failures, {} call attempts, {} answered, {} failed\n",
                st.registrations_total,
                st.auth_failures_total,
                st.call_attempts_total,
                st.call_answers_total,
                st.call_failures_total
            ));
        }
    }
    s.trim_end().to_string()
}
