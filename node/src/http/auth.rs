//! Who is calling, and may they: the check in front of every route of the table in
//! `http::mod` ([`RouteSpec`]: method, path, [`Access`], [`Audit`]).
//!
//! ```text
//!  Authorization: Bearer <t>
//!    ├─ t == <data_dir>/admin.token            → bootstrap-admin, role admin
//!    ├─ t == tandem.<name>.<id>.<secret>        → user.<name> + user.<name>/token/<id>
//!    │    (local state machine: two lookups, SHA-256 of the secret compared in
//!    │     constant time, expiry checked)      → <name>, the user's role
//!    └─ otherwise                               → 401 naming what is wrong
//!  role ≥ the route's role?  no → 403 naming the role needed and the caller's
//!  audited route?           yes → http::audit::around (refused if it cannot be audited)
//! ```
//!
//! Tokens and users are read from this node's replicated state: a standby accepts a
//! token once it has applied the entry that created it (normally within a heartbeat).

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tandem_api::Role;
use tandem_replication::store::query;

use crate::http::audit::{self, Audited};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::settings::users::{
    self, parse_token, secret_hash, StoredToken, StoredUser, BOOTSTRAP_ADMIN,
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (`/health`, `/metrics`, login).
    Public,
    /// Any valid token, whatever its role (`whoami`).
    Authenticated,
    /// A token whose role is at least this one.
    Role(Role),
    /// `/config/{key}`: reading needs `operator`; writing `maintenance.*` and
    /// `alarm.*` needs `operator`, any other key `admin`; reserved keys (`user.*`,
    /// `audit.*`) are refused for everyone (they have their own API).
    ConfigKey,
}

/// Whether a route's calls go to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    No,
    /// Every call (and every call refused for lack of role).
    Yes,
    /// Calls with `format=csv` (CDR export), not JSON pages.
    Export,
}

/// One route of the API: the single table the router is built from and that the
/// permission tests walk.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    /// Full path, axum syntax (`/api/v1/config/{key}`).
    pub path: &'static str,
    pub access: Access,
    pub audit: Audit,
}

/// The caller of a request, once identified (a request extension for handlers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User name, or `bootstrap-admin`.
    pub name: String,
    pub role: Role,
    /// The token used (none for the bootstrap admin token).
    pub token_id: Option<String>,
}

/// Config keys an `operator` may write.
const OPERATOR_KEYS: [&str; 2] = ["maintenance.", "alarm."];

fn unauthorized(message: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// Identify the bearer of `token` at unix second `now` from the local state.
pub fn identify(st: &AppState, token: Option<&str>, now: i64) -> Result<Caller, ApiError> {
    let Some(token) = token.map(str::trim) else {
        return Err(unauthorized(
            "missing `Authorization: Bearer <token>`: use a user token (`tandem user token <name>`), a session from POST /api/v1/login, or the bootstrap admin token in <data_dir>/admin.token".into(),
        ));
    };
    if tandem_media::digest::constant_time_eq(token.as_bytes(), st.token.as_bytes()) {
        return Ok(Caller {
            name: BOOTSTRAP_ADMIN.into(),
            role: Role::Admin,
            token_id: None,
        });
    }
    let Some((name, id, secret)) = parse_token(token) else {
        return Err(unauthorized(
            "bearer token is neither this cluster's admin token nor a user token (tandem.<user>.<id>.<secret>); check for a truncated copy".into(),
        ));
    };
    let invalid = || {
        unauthorized(format!(
            "token {name}/{id} is not valid (revoked, user removed, or never issued); an admin can issue a new one: `tandem user token {name}`"
        ))
    };
    let tree = st.replica.tree();
    let read = |key: String| query::config_get(&tree, &key).map_err(ApiError::from);
    let Some(user) = read(users::user_key(name))? else {
        return Err(invalid());
    };
    let Some(stored) = read(users::token_key(name, id))? else {
        return Err(invalid());
    };
    let (Ok(user), Ok(stored)) = (
        serde_json::from_str::<StoredUser>(&user.value),
        serde_json::from_str::<StoredToken>(&stored.value),
    ) else {
        return Err(invalid());
    };
    if !tandem_media::digest::constant_time_eq(
        secret_hash(secret).as_bytes(),
        stored.sha256.as_bytes(),
    ) {
        return Err(invalid());
    }
    if let Some(exp) = stored.expires.filter(|e| *e <= now) {
        let at = chrono::DateTime::from_timestamp(exp, 0).unwrap_or_default();
        return Err(unauthorized(format!(
            "token {name}/{id} expired at {}; log in again or ask an admin for a new one: `tandem user token {name}`",
            at.to_rfc3339()
        )));
    }
    Ok(Caller {
        name: name.to_string(),
        role: user.role,
        token_id: Some(id.to_string()),
    })
}

/// The role `spec` needs with these path parameters (none: any caller).
fn needed(spec: &RouteSpec, params: &[(String, String)]) -> Result<Option<Role>, ApiError> {
    match spec.access {
        Access::Public | Access::Authenticated => Ok(None),
        Access::Role(r) => Ok(Some(r)),
        Access::ConfigKey => {
            let key = params
                .iter()
                .find(|(k, _)| k == "key")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            if let Some(fix) = users::reserved(key) {
                return Err(ApiError::bad(format!(
                    "config key `{key}` is reserved: {fix}"
                )));
            }
            let operator =
                spec.method == Method::GET || OPERATOR_KEYS.iter().any(|p| key.starts_with(p));
            Ok(Some(if operator {
                Role::Operator
            } else {
                Role::Admin
            }))
        }
    }
}

/// The middleware of one route: identify, check the role, audit, run.
pub(crate) async fn authorize(
    st: Arc<AppState>,
    spec: RouteSpec,
    req: Request,
    next: Next,
) -> Response {
    if spec.access == Access::Public {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = match identify(&st, token, chrono::Utc::now().timestamp()) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(
                route = spec.path,
                error = e.message(),
                "API request refused: not authenticated"
            );
            st.metrics.api_refused.with_label_values(&["401"]).inc();
            return e.into_response();
        }
    };
    let (mut parts, body) = req.into_parts();
    let mut params: Vec<(String, String)> = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    params.sort();
    let mut req = Request::from_parts(parts, body);
    let audited = match spec.audit {
        Audit::No => false,
        Audit::Yes => true,
        // Decoded as the handler decodes it (`format=%63sv` is an export too).
        Audit::Export => {
            axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(
                req.uri(),
            )
            .is_ok_and(|q| q.get("format").map(String::as_str) == Some("csv"))
        }
    };
    let a = Audited {
        who: caller.name.clone(),
        role: caller.role,
        from: audit::client_addr(req.extensions()),
        method: spec.method.to_string(),
        route: format!("{} {}", spec.method, spec.path),
        target: target(&params, req.uri().query()),
    };
    match needed(&spec, &params) {
        Err(e) => return e.into_response(),
        Ok(Some(role)) if caller.role < role => {
            let e = ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{}{} needs role {role}; `{}` has role {} (an admin can change it: `tandem user set {} --role {role}`)",
                    a.route,
                    if a.target.is_empty() { String::new() } else { format!(" ({})", a.target) },
                    caller.name,
                    caller.role,
                    caller.name
                ),
            );
            tracing::info!(who = %caller.name, role = %caller.role, route = %a.route, target = %a.target, needed = %role, "API request refused: role too low");
            st.metrics.api_refused.with_label_values(&["403"]).inc();
            if audited {
                if let Err(err) = audit::record(&st, a, StatusCode::FORBIDDEN).await {
                    tracing::warn!(error = err.message(), "refused request not audited");
                }
            }
            return e.into_response();
        }
        Ok(_) => {}
    }
    req.extensions_mut().insert(caller);
    if audited {
        audit::around(&st, a, next.run(req)).await
    } else {
        next.run(req).await
    }
}

/// What an audit entry names as the target: path parameters, then the query.
fn target(params: &[(String, String)], query: Option<&str>) -> String {
    let mut parts: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.extend(query.filter(|q| !q.is_empty()).map(str::to_string));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: Method) -> RouteSpec {
        RouteSpec {
            method,
            path: "/api/v1/config/{key}",
            access: Access::ConfigKey,
            audit: Audit::Yes,
        }
    }

    fn key(k: &str) -> Vec<(String, String)> {
        vec![("key".into(), k.into())]
    }

    #[test]
    fn config_keys_need_operator_for_maintenance_and_alarms_admin_otherwise() {
        let put = spec(Method::PUT);
        assert_eq!(
            needed(&put, &key("maintenance.2")).unwrap(),
            Some(Role::Operator)
        );
        assert_eq!(
            needed(&put, &key("alarm.route.default")).unwrap(),
            Some(Role::Operator)
        );
        assert_eq!(
            needed(&put, &key("smtp.password")).unwrap(),
            Some(Role::Admin)
        );
        assert_eq!(
            needed(&put, &key("retention.cdr_days")).unwrap(),
            Some(Role::Admin)
        );
        assert_eq!(
            needed(&spec(Method::DELETE), &key("sip.user.1")).unwrap(),
            Some(Role::Admin)
        );
        assert_eq!(
            needed(&spec(Method::GET), &key("smtp.host")).unwrap(),
            Some(Role::Operator)
        );
        for m in [Method::GET, Method::PUT, Method::DELETE] {
            let e = needed(&spec(m), &key("user.alice")).unwrap_err();
            assert!(e.message().contains("reserved"), "{}", e.message());
        }
    }

    #[test]
    fn the_audit_target_names_path_parameters_and_the_query() {
        assert_eq!(target(&key("maintenance.2"), None), "key=maintenance.2");
        assert_eq!(target(&[], Some("format=csv&from=x")), "format=csv&from=x");
        assert_eq!(target(&[], Some("")), "");
    }
}
