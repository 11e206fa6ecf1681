//! `/api/v1/alarms`: active alarms, mail history, test mail.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use tandem_replication::store::query::{self};
use tandem_replication::store::Tree;

use crate::http::error::ApiError;
use crate::http::params::*;
use crate::http::state::St;
/// `alarm.*` and `smtp.*` entries of the replicated config, as JSON values.
pub fn alarm_entries(
    tree: &Tree,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, ApiError> {
    let mut all = Vec::new();
    for prefix in ["alarm.", "smtp."] {
        all.extend(
            query::config_list(tree, prefix)?
                .into_iter()
                .map(|e| (e.key, e.value)),
        );
    }
    Ok(tandem_alarms::entries_from_text(all))
}

/// The body of `POST /api/v1/alarms/test`: empty, or `{"to": "addr"}`.
pub fn test_recipient(body: &[u8]) -> Result<Option<String>, ApiError> {
    match optional_field(body, "to")? {
        None => Ok(None),
        Some(serde_json::Value::String(a)) => Ok(Some(a)),
        Some(_) => Err(ApiError::bad("to: expected a mail address (string)")),
    }
}

/// `POST /api/v1/alarms/test` with optional `{"to": "addr"}`: send a test mail with
/// the configured `smtp.*` settings (to every address of every recipient list when no
/// `to` is given). 200 with the Message-ID, 400 for bad settings, 502 with the SMTP
/// error (naming host, port and cause) when the server does not take the mail.
pub(crate) async fn alarms_test(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    use tandem_alarms::{mail, recipients::Routing, smtp};
    let to = test_recipient(&body)?;
    let entries = alarm_entries(&st.replica.tree())?;
    let settings =
        smtp::SmtpSettings::from_entries(&entries).map_err(|e| ApiError::bad(e.to_string()))?;
    let to: Vec<String> = match to {
        Some(a) => vec![a],
        None => Routing::from_entries(&entries)
            .map_err(|e| ApiError::bad(e.to_string()))?
            .all_addresses()
            .into_iter()
            .collect(),
    };
    if to.is_empty() {
        return Err(ApiError::bad(
            "no recipient: pass `--to ADDR` ({\"to\": ...}) or set alarm.recipients.<list>",
        ));
    }
    let mailer = smtp::Mailer::new(settings).map_err(|e| ApiError::bad(e.to_string()))?;
    let node = st.cfg.node_name();
    let ctx = mail::MailContext {
        cluster: &st.cfg.cluster.name,
        node: &node,
    };
    let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    let m = mail::test_mail(&ctx, now, &uuid::Uuid::new_v4().to_string());
    match mailer.send(&m, &to).await {
        Ok(sent) => {
            tracing::info!(message_id = %sent.message_id, server = %sent.server, to = ?to, "alarm test mail sent");
            Ok(Json(tandem_api::AlarmTestSent {
                message_id: sent.message_id,
                to,
                server: sent.server,
                reply: sent.reply,
            })
            .into_response())
        }
        Err(e @ (smtp::SmtpError::Message { .. } | smtp::SmtpError::Config(_))) => {
            Err(ApiError::bad(e.to_string()))
        }
        Err(e) => {
            tracing::warn!(error = %e, message_id = %m.message_id, "alarm test mail failed");
            Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
        }
    }
}

/// `GET /api/v1/alarms`: this node's active alarms, outbox and mail counters.
pub(crate) async fn alarms_status(State(st): St) -> Json<tandem_api::AlarmStatus> {
    Json(st.alarms.status())
}

/// `GET /api/v1/alarms/history`: the last alarm mails sent or given up by this node.
pub(crate) async fn alarms_history(State(st): St) -> Json<tandem_api::AlarmHistory> {
    Json(st.alarms.history())
}
