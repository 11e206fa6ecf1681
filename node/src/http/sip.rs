//! `/api/v1/sip/*`: SIP users (extensions) and the telephony service's status.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tandem_api as api;
use tandem_replication::store::query;
use tandem_replication::types::{Request, Response as RaftResponse};

use crate::http::params::created_or_ok;
use crate::http::{state::St, ApiError};
use crate::settings::sip::{
    check_extension, check_password, StoredUser, BINDING_PREFIX, USER_PREFIX,
};

/// `GET /api/v1/sip/users` (passwords are never shown).
pub async fn users_list(State(st): St) -> Result<Json<api::SipUsers>, ApiError> {
    let tree = st.replica.tree();
    let users: Vec<_> = query::config_list(&tree, USER_PREFIX)?
        .into_iter()
        .map(|e| {
            let u: Option<StoredUser> = serde_json::from_str(&e.value).ok();
            api::SipUser {
                extension: e.key.trim_start_matches(USER_PREFIX).to_string(),
                display_name: u.and_then(|u| u.display_name),
            }
        })
        .collect();
    Ok(Json(api::SipUsers { users }))
}

/// The extension (path) and body of `PUT /api/v1/sip/users/{ext}`, checked.
pub fn parse_user(ext: &str, body: &[u8]) -> Result<StoredUser, ApiError> {
    check_extension(ext).map_err(ApiError::bad)?;
    let user: StoredUser = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "body must be {{\"password\": \"...\", \"display_name\": \"...\"}}: {e}"
        ))
    })?;
    check_password(ext, &user.password).map_err(ApiError::bad)?;
    Ok(user)
}

/// `PUT /api/v1/sip/users/{ext}` with `{"password": "...", "display_name": "..."}`.
pub async fn user_put(
    State(st): St,
    Path(ext): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = parse_user(&ext, &body)?;
    let value = serde_json::to_string(&user).expect("user json");
    let (_, resp) = st
        .replica
        .write(Request::SetConfig {
            key: format!("{USER_PREFIX}{ext}"),
            value,
        })
        .await?;
    let status = created_or_ok(&resp);
    let created = status == StatusCode::CREATED;
    tracing::info!(extension = %ext, created, "SIP user saved");
    Ok((
        status,
        Json(api::SipUser {
            extension: ext,
            display_name: user.display_name,
        }),
    )
        .into_response())
}

/// `DELETE /api/v1/sip/users/{ext}`: the user and its registrations.
pub async fn user_delete(State(st): St, Path(ext): Path<String>) -> Result<Response, ApiError> {
    check_extension(&ext).map_err(ApiError::bad)?;
    let (_, resp) = st
        .replica
        .write(Request::DeleteConfig {
            key: format!("{USER_PREFIX}{ext}"),
        })
        .await?;
    if !matches!(resp, RaftResponse::Config { existed: true, .. }) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no SIP user {ext}"),
        ));
    }
    let tree = st.replica.tree();
    for e in query::config_list(&tree, &format!("{BINDING_PREFIX}{ext}/"))? {
        st.replica
            .write(Request::DeleteConfig { key: e.key })
            .await?;
    }
    tracing::info!(extension = %ext, "SIP user removed");
    Ok(Json(api::SipUserRemoved { removed: ext }).into_response())
}

/// `GET /api/v1/sip/status`: registrations (replicated) and, on the node that
/// runs the service, the calls in progress and counters.
pub async fn status(State(st): St) -> Result<Json<api::SipStatusView>, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let tree = st.replica.tree();
    let regs: Vec<_> = query::config_list(&tree, BINDING_PREFIX)?
        .into_iter()
        .filter_map(|e| serde_json::from_str::<tandem_media::backend::Binding>(&e.value).ok())
        .filter(|b| b.expires_at_unix > now)
        .map(|b| api::Registration {
            extension: b.aor,
            contact: b.contact,
            source: b.source.to_string(),
            expires_in_s: b.expires_at_unix - now,
        })
        .collect();
    Ok(Json(api::SipStatusView {
        node: st.replica.id,
        registrations: regs,
        service: st.sip.get().map(|s| s.status()),
    }))
}
