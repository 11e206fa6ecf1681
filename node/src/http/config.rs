//! `/api/v1/config`: the replicated key/value settings.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tandem_replication::store::query::{self};
use tandem_replication::types::{MemberKind, Request as RaftRequest, Response as RaftResponse};

use tandem_api as api;
use tandem_replication::store::query::ConfigEntry;

use crate::http::error::ApiError;
use crate::http::params::*;
use crate::http::state::St;
use crate::http::MAX_KEY;
/// A config key from the path: 1..=[`MAX_KEY`] bytes of letters, digits and `. _ - /`.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(ApiError::bad(format!(
            "config key must be 1..={MAX_KEY} bytes"
        )));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(ApiError::bad(format!(
            "config key `{key}`: only letters, digits and . _ - / are allowed"
        )));
    }
    Ok(())
}

pub(crate) async fn config_list(
    State(st): St,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let lag = consistency(&st.replica, &mut params).await?;
    let prefix = params.remove("prefix").unwrap_or_default();
    no_unknown(&params)?;
    let entries = query::config_list(&st.replica.tree(), &prefix)?;
    // Users, token hashes and the audit log have their own endpoints.
    let items: Vec<_> = entries
        .into_iter()
        .filter(|e| crate::settings::users::reserved(&e.key).is_none())
        .map(shown_entry)
        .collect();
    Ok((
        freshness_headers(&st.replica, lag),
        Json(api::ConfigList { config: items }),
    )
        .into_response())
}

/// A stored entry as the API shows it (secrets masked).
fn shown_entry(e: ConfigEntry) -> api::ConfigEntry {
    api::ConfigEntry {
        value: shown_value(&e.key, &e.value),
        key: e.key,
        version: e.version,
    }
}

/// A stored config value as JSON (text that is not JSON is a JSON string).
pub fn parse_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// A config value as the API shows it: secrets (SIP passwords, the SMTP password)
/// are replaced by "***" (they can be set, never read back).
pub fn shown_value(key: &str, text: &str) -> serde_json::Value {
    let mut v = parse_value(text);
    if key == "smtp.password" {
        return json!("***");
    }
    if key.starts_with(crate::settings::sip::USER_PREFIX) {
        // Not an object: serde reads a user from an array too (`["secret"]`),
        // so nothing of it is shown.
        if !v.is_object() {
            return json!("***");
        }
        if let Some(p) = v.get_mut("password") {
            *p = json!("***");
        }
    }
    v
}

pub(crate) async fn config_get(
    State(st): St,
    Path(key): Path<String>,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let lag = consistency(&st.replica, &mut params).await?;
    no_unknown(&params)?;
    match query::config_get(&st.replica.tree(), &key)? {
        Some(e) => Ok((freshness_headers(&st.replica, lag), Json(shown_entry(e))).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("config key `{key}` is not set"),
        )),
    }
}

/// The query (`force`) and body (any JSON value) of `PUT /api/v1/config/{key}`.
pub fn put_request(
    mut params: HashMap<String, String>,
    body: &[u8],
) -> Result<(bool, serde_json::Value), ApiError> {
    let force = match params.remove("force").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "force={other}: use force=true or leave it out"
            )))
        }
    };
    no_unknown(&params)?;
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("body must be a JSON value: {e}")))?;
    Ok((force, value))
}

pub(crate) async fn config_put(
    State(st): St,
    Path(key): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let (force, value) = put_request(params, &body)?;
    let members = st.replica.members();
    let tree = st.replica.tree();
    let ctx = crate::settings::Context {
        members: members.iter().map(|m| m.id).collect(),
        eligible: members
            .iter()
            .filter(|m| m.voter && m.kind == MemberKind::Data)
            .filter(|m| !crate::settings::in_maintenance(&tree, m.id))
            .map(|m| m.id)
            .collect(),
        force,
        alarm_entries: if key.starts_with("alarm.") {
            crate::http::alarms::alarm_entries(&st.replica.tree())?
        } else {
            Default::default()
        },
    };
    crate::settings::validate(&key, &value, &ctx).map_err(|e| ApiError::bad(e.to_string()))?;
    let (index, resp) = st
        .replica
        .write(RaftRequest::SetConfig {
            key: key.clone(),
            value: value.to_string(),
        })
        .await?;
    let status = created_or_ok(&resp);
    Ok((
        status,
        Json(api::ConfigEntry {
            key,
            value,
            version: index,
        }),
    )
        .into_response())
}

pub(crate) async fn config_delete(
    State(st): St,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let (index, resp) = st
        .replica
        .write(RaftRequest::DeleteConfig { key: key.clone() })
        .await?;
    match resp {
        RaftResponse::Config { existed: false, .. } => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("config key `{key}` is not set"),
        )),
        _ => Ok(Json(api::ConfigDeleted {
            key,
            deleted: true,
            version: index,
        })
        .into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the API fuzz target (`node/fuzz`): `2004e28` was parsed one bit
    /// off (2.0039999999999998e31), so the value stored and read back by every
    /// node differed from the value the PUT answered with.
    #[test]
    fn a_config_number_reads_back_as_set() {
        for body in ["2004e28", "1.2345678901234567e-300", "0.1", "365"] {
            let (_, value) = put_request(HashMap::new(), body.as_bytes()).unwrap();
            let expected: f64 = body.parse().unwrap();
            assert_eq!(value.as_f64(), Some(expected), "{body} parsed");
            assert_eq!(parse_value(&value.to_string()), value, "{body} read back");
        }
    }

    /// Found by the API fuzz target (`node/fuzz`): a SIP user stored as an array
    /// (`["secret-pass"]`, which serde reads as a user) was shown with its password.
    #[test]
    fn a_sip_password_is_never_shown() {
        let key = "sip.user.201";
        for stored in [
            r#"{"password":"secret-pass","display_name":"R"}"#,
            r#"["secret-pass","R"]"#,
            r#""secret-pass""#,
        ] {
            let shown = shown_value(key, stored).to_string();
            assert!(!shown.contains("secret-pass"), "{stored} shown as {shown}");
        }
        assert_eq!(
            shown_value(key, r#"{"password":"secret-pass"}"#),
            json!({"password": "***"})
        );
    }
}
