//! `/api/v1/users`, `/api/v1/login`, `/api/v1/whoami`: API users, their tokens and
//! password sessions, stored in the replicated config under `user.` (see
//! `settings::users` for the records and the token format).
//!
//! Tokens are shown once, in the answer that issues them; the node keeps only the
//! SHA-256 of their secret. Removing a user or a token takes effect on each node as
//! soon as it applies the removal.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tandem_api as api;
use tandem_replication::store::query;
use tandem_replication::types::{Request as RaftRequest, Response as RaftResponse};

use std::time::Instant;

use crate::http::audit::{self, Audited};
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::{AppState, St};
use crate::http::throttle;
use crate::settings::users::{self as u, StoredToken, StoredUser, TokenKind};

/// Largest login body (user + password).
const MAX_LOGIN_BODY: usize = 4096;

fn body<T: DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("body must be {shape}: {e}")))
}

fn time(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no user `{name}` (`tandem user list` shows them)"),
    )
}

/// The stored user `name` (checked), or 404.
fn stored_user(st: &AppState, name: &str) -> Result<StoredUser, ApiError> {
    u::check_name(name).map_err(ApiError::bad)?;
    let e = query::config_get(&st.replica.tree(), &u::user_key(name))?
        .ok_or_else(|| not_found(name))?;
    serde_json::from_str(&e.value).map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored user `{name}` is unreadable: {err}"),
        )
    })
}

/// A user's tokens: (config key, id, record).
fn tokens(st: &AppState, name: &str) -> Result<Vec<(String, String, StoredToken)>, ApiError> {
    let prefix = u::tokens_prefix(name);
    Ok(query::config_list(&st.replica.tree(), &prefix)?
        .into_iter()
        .filter_map(|e| {
            let id = e.key.strip_prefix(&prefix)?.to_string();
            let t = serde_json::from_str(&e.value).ok()?;
            Some((e.key, id, t))
        })
        .collect())
}

fn info(st: &AppState, name: &str, user: &StoredUser) -> Result<api::UserInfo, ApiError> {
    Ok(api::UserInfo {
        name: name.to_string(),
        role: user.role,
        password: user.password.is_some(),
        created: time(user.created),
        created_by: user.created_by.clone(),
        tokens: tokens(st, name)?
            .into_iter()
            .map(|(_, id, t)| api::TokenInfo {
                id,
                kind: t.kind.as_str().to_string(),
                created: time(t.created),
                expires: t.expires.map(time),
                created_by: t.created_by,
            })
            .collect(),
    })
}

async fn set(
    st: &AppState,
    key: String,
    value: &impl serde::Serialize,
) -> Result<RaftResponse, ApiError> {
    let value = serde_json::to_string(value).expect("record json");
    Ok(st
        .replica
        .write(RaftRequest::SetConfig { key, value })
        .await?
        .1)
}

async fn delete(st: &AppState, key: String) -> Result<bool, ApiError> {
    let (_, resp) = st.replica.write(RaftRequest::DeleteConfig { key }).await?;
    Ok(matches!(resp, RaftResponse::Config { existed: true, .. }))
}

/// Store a new token of `kind` for `name`; the bearer token, shown once.
async fn issue(
    st: &AppState,
    name: &str,
    kind: TokenKind,
    expires: Option<i64>,
    by: &str,
    now: i64,
) -> Result<api::IssuedToken, ApiError> {
    let (id, token, sha256) = u::new_token(name);
    let record = StoredToken {
        v: 1,
        kind,
        sha256,
        created: now,
        expires,
        created_by: by.to_string(),
    };
    set(st, u::token_key(name, &id), &record).await?;
    tracing::info!(user = name, token = %id, kind = kind.as_str(), by, "API token issued");
    Ok(api::IssuedToken {
        user: name.to_string(),
        id,
        token,
        expires: expires.map(time),
    })
}

/// Check and hash an optional new password (off the async threads: Argon2 is slow
/// on purpose).
async fn password_hash(name: &str, password: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(p) = password else { return Ok(None) };
    u::check_password(name, &p).map_err(ApiError::bad)?;
    let h = tokio::task::spawn_blocking(move || u::hash_password(&p))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("hashing: {e}")))?;
    Ok(Some(h))
}

/// `GET /api/v1/users`.
pub(crate) async fn users_list(State(st): St) -> Result<Json<api::UserList>, ApiError> {
    let mut users = Vec::new();
    for e in query::config_list(&st.replica.tree(), u::USER_PREFIX)? {
        let Some(name) = u::user_of_key(&e.key) else {
            continue;
        };
        let Ok(user) = serde_json::from_str::<StoredUser>(&e.value) else {
            tracing::warn!(key = %e.key, "unreadable user record skipped");
            continue;
        };
        users.push(info(&st, name, &user)?);
    }
    Ok(Json(api::UserList { users }))
}

/// `GET /api/v1/users/{name}`.
pub(crate) async fn user_get(
    State(st): St,
    Path(name): Path<String>,
) -> Result<Json<api::UserInfo>, ApiError> {
    let user = stored_user(&st, &name)?;
    Ok(Json(info(&st, &name, &user)?))
}

/// `POST /api/v1/users`: 201 with the user (and its first token, shown once).
pub(crate) async fn user_create(
    State(st): St,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: api::UserCreate = body(
        &bytes,
        r#"{"name": "...", "role": "admin|operator|reporting", "password": "..." (optional), "token": {"expires_s": N} (optional)}"#,
    )?;
    let name = req.name;
    u::check_name(&name).map_err(ApiError::bad)?;
    if query::config_get(&st.replica.tree(), &u::user_key(&name))?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "user `{name}` exists; change it with `tandem user set {name}` or remove it first"
            ),
        ));
    }
    let now = Utc::now().timestamp();
    let expires = match &req.token {
        Some(t) => u::expiry(now, t.expires_s).map_err(ApiError::bad)?,
        None => None,
    };
    let password = password_hash(&name, req.password).await?;
    let user = StoredUser::new(req.role, password, now, &caller.name);
    set(&st, u::user_key(&name), &user).await?;
    tracing::info!(user = %name, role = %user.role, by = %caller.name, "API user created");
    let token = match req.token {
        Some(_) => Some(issue(&st, &name, TokenKind::Api, expires, &caller.name, now).await?),
        None => None,
    };
    let created = api::UserCreated {
        user: info(&st, &name, &user)?,
        token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `PUT /api/v1/users/{name}`: change the role and/or the password.
pub(crate) async fn user_update(
    State(st): St,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<api::UserInfo>, ApiError> {
    let mut user = stored_user(&st, &name)?;
    let req: api::UserUpdate = body(
        &bytes,
        r#"{"role": "...", "password": "..."} (either or both)"#,
    )?;
    if req.role.is_none() && req.password.is_none() {
        return Err(ApiError::bad(
            "nothing to change: give role and/or password",
        ));
    }
    if let Some(r) = req.role {
        user.role = r;
    }
    if let Some(h) = password_hash(&name, req.password).await? {
        user.password = Some(h);
    }
    set(&st, u::user_key(&name), &user).await?;
    tracing::info!(user = %name, role = %user.role, "API user changed");
    Ok(Json(info(&st, &name, &user)?))
}

/// `DELETE /api/v1/users/{name}`: the user first (its tokens stop working at once),
/// then its token records.
pub(crate) async fn user_delete(
    State(st): St,
    Path(name): Path<String>,
) -> Result<Json<api::UserRemoved>, ApiError> {
    u::check_name(&name).map_err(ApiError::bad)?;
    if !delete(&st, u::user_key(&name)).await? {
        return Err(not_found(&name));
    }
    let mut revoked = 0;
    for (key, _, _) in tokens(&st, &name)? {
        revoked += usize::from(delete(&st, key).await?);
    }
    tracing::info!(user = %name, tokens = revoked, "API user removed");
    Ok(Json(api::UserRemoved {
        removed: name,
        tokens_revoked: revoked,
    }))
}

/// `POST /api/v1/users/{name}/tokens`: 201 with the new token (shown once).
pub(crate) async fn token_create(
    State(st): St,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    stored_user(&st, &name)?;
    let req: api::TokenCreate = if bytes.iter().all(u8::is_ascii_whitespace) {
        api::TokenCreate::default()
    } else {
        body(&bytes, r#"{"expires_s": N} (or empty: no expiry)"#)?
    };
    let now = Utc::now().timestamp();
    let expires = u::expiry(now, req.expires_s).map_err(ApiError::bad)?;
    let t = issue(&st, &name, TokenKind::Api, expires, &caller.name, now).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// `DELETE /api/v1/users/{name}/tokens/{id}`.
pub(crate) async fn token_revoke(
    State(st): St,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<api::TokenRevoked>, ApiError> {
    u::check_name(&name).map_err(ApiError::bad)?;
    u::check_token_id(&id).map_err(ApiError::bad)?;
    if !delete(&st, u::token_key(&name, &id)).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("user `{name}` has no token {id} (`tandem user list` shows the ids)"),
        ));
    }
    tracing::info!(user = %name, token = %id, "API token revoked");
    Ok(Json(api::TokenRevoked {
        user: name,
        revoked: id,
    }))
}

/// `POST /api/v1/logout`: end the session whose token the request carries (API
/// tokens are revoked by an admin instead).
pub(crate) async fn logout(
    State(st): St,
    Extension(caller): Extension<Caller>,
) -> Result<Json<api::TokenRevoked>, ApiError> {
    let session = match &caller.token_id {
        Some(id) => tokens(&st, &caller.name)?
            .into_iter()
            .find(|(_, tid, t)| tid == id && t.kind == TokenKind::Session),
        None => None,
    };
    let Some((key, id, _)) = session else {
        return Err(ApiError::bad(format!(
            "the token of this request is not a login session; an API token is revoked with `tandem user revoke {} <id>`",
            caller.name
        )));
    };
    delete(&st, key).await?;
    tracing::info!(user = %caller.name, session = %id, "API session ended");
    Ok(Json(api::TokenRevoked {
        user: caller.name,
        revoked: id,
    }))
}

/// `GET /api/v1/whoami`.
pub(crate) async fn whoami(Extension(caller): Extension<Caller>) -> Json<api::WhoAmI> {
    Json(api::WhoAmI {
        user: caller.name,
        role: caller.role,
        token_id: caller.token_id,
    })
}

/// `POST /api/v1/login` with `{"user", "password"}`: a session token valid for
/// `SESSION_SECS`. Every wrong user or password gets the same 401 (logged on this
/// node with the client address, not written to the replicated audit log, which
/// clients without credentials must not be able to fill); a success is audited.
pub(crate) async fn login(State(st): St, req: Request) -> Result<Response, ApiError> {
    let from = audit::client_addr(req.extensions());
    let ip = audit::client_socket(req.extensions()).map(|a| a.ip());
    if let Some(ip) = ip {
        let verdict = st
            .login_throttle
            .lock()
            .expect("throttle lock")
            .check(ip, Instant::now());
        if let Err(wait) = verdict {
            tracing::warn!(%from, "API login refused: too many failures from this address");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed logins from {ip} ({} within {} s); try again in {} s",
                    throttle::MAX_FAILURES,
                    throttle::WINDOW.as_secs(),
                    wait.as_secs().max(1)
                ),
            ));
        }
    }
    let bytes = axum::body::to_bytes(req.into_body(), MAX_LOGIN_BODY)
        .await
        .map_err(|e| ApiError::bad(format!("login body: {e}")))?;
    let login: api::LoginRequest = body(&bytes, r#"{"user": "...", "password": "..."}"#)?;
    let user = stored_user(&st, &login.user).ok();
    let phc = user.as_ref().and_then(|x| x.password.clone());
    let password = login.password;
    // Unknown users and users without password still pay for one verification.
    let ok = tokio::task::spawn_blocking(move || match phc {
        Some(h) => u::verify_password(&password, &h),
        None => {
            u::verify_password(&password, u::dummy_hash());
            false
        }
    })
    .await
    .unwrap_or(false);
    if let Some(ip) = ip {
        let mut throttle = st.login_throttle.lock().expect("throttle lock");
        if ok {
            throttle.succeeded(ip);
        } else {
            throttle.failed(ip, Instant::now());
        }
    }
    let Some(user) = user.filter(|_| ok) else {
        tracing::warn!(user = %login.user, %from, "API login failed");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "login failed: unknown user, wrong password, or a user without password login (an admin sets one with `tandem user set <name> --password-prompt`)",
        ));
    };
    let now = Utc::now().timestamp();
    for (key, _, t) in tokens(&st, &login.user)? {
        if t.kind == TokenKind::Session && t.expires.is_some_and(|e| e <= now) {
            delete(&st, key).await?;
        }
    }
    let expires = now + u::SESSION_SECS;
    let t = issue(
        &st,
        &login.user,
        TokenKind::Session,
        Some(expires),
        &login.user,
        now,
    )
    .await?;
    let a = Audited {
        who: login.user.clone(),
        role: user.role,
        from,
        method: "POST".into(),
        route: "POST /api/v1/login".into(),
        target: format!("session={}", t.id),
    };
    audit::record(&st, a, StatusCode::OK).await?;
    Ok(Json(api::LoginSession {
        user: login.user,
        role: user.role,
        token: t.token,
        id: t.id,
        expires: time(expires),
    })
    .into_response())
}
