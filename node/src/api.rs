//! The HTTP API (axum): health, cluster, config, CDRs, metrics.
//!
//! Reads are served from this node's local state (stale reads) with headers that say
//! how fresh it is; `consistency=strong` first runs a Raft read-index barrier through
//! the leader. Writes sent to a standby are forwarded to the master by the replica.
//! Every bad input gets a 4xx with `{"error": "..."}` naming the problem.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;
use tandem_replication::cdr::{Cdr, CdrRef, CSV_COLUMNS};
use tandem_replication::replica::{Lag, Replica};
use tandem_replication::store::codec;
use tandem_replication::store::query::{self, CdrQuery, Cursor};
use tandem_replication::store::Tree;
use tandem_replication::types::{MemberKind, Request as RaftRequest, Response as RaftResponse};
use tandem_replication::Error as ReplError;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::role::RoleState;

/// Most rows one JSON page returns.
pub const MAX_LIMIT: usize = 10_000;
/// Most CDRs one POST may carry.
pub const MAX_BATCH: usize = 10_000;
/// Largest request body.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest config key.
pub const MAX_KEY: usize = 200;

pub struct AppState {
    pub replica: Arc<Replica>,
    pub roles: Arc<RoleState>,
    token: String,
    pub cfg: Config,
    pub metrics: Metrics,
    /// The alarm mailer of this node (see `alarms::service`).
    pub alarms: Arc<crate::alarms::service::AlarmService>,
    /// The telephony service, once started (data nodes).
    pub sip: std::sync::OnceLock<Arc<crate::telephony::SipRuntime>>,
}

impl AppState {
    pub fn new(
        replica: Arc<Replica>,
        roles: Arc<RoleState>,
        alarms: Arc<crate::alarms::service::AlarmService>,
        token: String,
        cfg: Config,
    ) -> AppState {
        AppState {
            replica,
            roles,
            token,
            cfg,
            metrics: Metrics::new(),
            alarms,
            sip: std::sync::OnceLock::new(),
        }
    }
}

pub(crate) type St = State<Arc<AppState>>;

/// An error answered as `{"error": message}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<ReplError> for ApiError {
    fn from(e: ReplError) -> ApiError {
        let status = if e.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            match e {
                ReplError::Invalid { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<query::QueryError> for ApiError {
    fn from(e: query::QueryError) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/cluster", get(cluster))
        .route("/cluster/leave", post(leave))
        .route("/cluster/join-token", get(join_token))
        .route("/cluster/switchover", post(switchover))
        .route("/config", get(config_list))
        .route(
            "/config/{key}",
            get(config_get).put(config_put).delete(config_delete),
        )
        .route("/cdrs", post(cdrs_post).get(cdrs_get))
        .route(
            "/recordings",
            post(crate::recordings::upload)
                .get(crate::recordings::list)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/recordings/verify", post(crate::recordings::verify))
        .route("/recordings/{id}", get(crate::recordings::download))
        .route("/sip/users", get(crate::telephony::api::users_list))
        .route(
            "/sip/users/{ext}",
            axum::routing::put(crate::telephony::api::user_put)
                .delete(crate::telephony::api::user_delete),
        )
        .route("/sip/status", get(crate::telephony::api::status))
        .route("/alarms", get(alarms_status))
        .route("/alarms/history", get(alarms_history))
        .route("/alarms/test", post(alarms_test))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .nest("/api/v1", admin)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md")
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn observe(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .observe_request(&route, &method, resp.status().as_u16(), t0.elapsed());
    resp
}

async fn require_token(State(st): St, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.trim().as_bytes(), st.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bearer token does not match this cluster's admin token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` (the token is in <data_dir>/admin.token)",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(st): St) -> Json<serde_json::Value> {
    let r = &st.replica;
    let m = r.metrics();
    Json(json!({
        "node_id": r.id,
        "role": st.roles.role().as_str(),
        "leader_id": m.current_leader,
        "term": m.current_term,
        "applied_index": m.last_applied.map(|l| l.index).unwrap_or(0),
        "commit_index": r.commit_index(),
        "vip_held": st.roles.vip_held(),
    }))
}

async fn metrics(State(st): St) -> Response {
    let mut text = st
        .metrics
        .render(&st.replica, &st.roles, st.alarms.counters());
    if let Some(sip) = st.sip.get() {
        text.push_str(&sip.metrics_text());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The cluster view shown by `tandem status`.
pub fn cluster_view(r: &Replica, roles: &RoleState) -> serde_json::Value {
    let m = r.metrics();
    let members = r.members();
    let voters = members.iter().filter(|x| x.voter).count();
    let data_voters = members
        .iter()
        .filter(|x| x.voter && x.kind == MemberKind::Data)
        .count();
    let mut notes = Vec::new();
    if voters == 2 {
        notes.push(
            "2 voters: a write needs both; if either is down the cluster cannot commit. Add a witness (3rd voter) for automatic failover."
                .to_string(),
        );
    }
    if voters % 2 == 0 && voters > 2 {
        notes.push(format!(
            "{voters} voters: an even count tolerates no more failures than {} voters",
            voters - 1
        ));
    }
    if m.current_leader.is_none() {
        notes.push("no leader: election in progress or quorum lost; writes are refused".into());
    }
    if voters == 2 && data_voters == 2 {
        notes.push(
            "2 data nodes and no witness: the master role is never taken over automatically (no majority after a failure); add a witness"
                .to_string(),
        );
    }
    for id in roles.unreachable() {
        notes.push(format!("member {id} does not answer the master"));
    }
    if roles.maintenance() {
        notes.push("this node is in maintenance: it will not become master".into());
    }
    let lag = r.lag();
    let vip_holder = if roles.vip_held() {
        Some(r.id)
    } else if roles.has_vip {
        m.current_leader
    } else {
        None
    };
    json!({
        "node_id": r.id,
        "role": roles.role().as_str(),
        "vip_held": roles.vip_held(),
        "maintenance": roles.maintenance(),
        "unreachable": roles.unreachable(),
        "leader_id": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index.unwrap_or(0),
        "commit_index": r.commit_index(),
        "applied_index": m.last_applied.map(|l| l.index).unwrap_or(0),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "lag": lag,
        "voters": voters,
        "data_voters": data_voters,
        "quorum": voters / 2 + 1,
        "vip_holder": vip_holder,
        "members": members,
        "notes": notes,
        "recording_sync": r.blobs.as_ref().map(|_| r.blob_stats.backlog()),
    })
}

async fn cluster(State(st): St) -> Json<serde_json::Value> {
    Json(cluster_view(&st.replica, &st.roles))
}

/// One optional field of an optional JSON object body (empty body = absent; null =
/// absent).
pub(crate) fn optional_field(
    body: &[u8],
    name: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("malformed JSON: {e}")))?;
    match v.get_mut(name).map(serde_json::Value::take) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => Ok(Some(x)),
    }
}

async fn switchover(State(st): St, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let to = match optional_field(&body, "to")? {
        None => None,
        Some(x) => Some(
            x.as_u64()
                .ok_or_else(|| ApiError::bad("to: expected a node id (integer)"))?,
        ),
    };
    let t0 = Instant::now();
    let leader = st.replica.switchover(to).await?;
    Ok(Json(
        json!({ "master": leader, "took_ms": t0.elapsed().as_millis() as u64 }),
    ))
}

async fn leave(State(st): St) -> Result<Json<serde_json::Value>, ApiError> {
    st.replica.remove_node(st.replica.id).await?;
    Ok(Json(json!({ "removed": st.replica.id })))
}

/// The join token of the cluster, served by the node that ran `tandem init` (the only
/// one holding the CA key, so the only one that can admit a node). Lets an installer or
/// an operator fetch it remotely with the admin token.
async fn join_token(State(st): St) -> Result<Json<serde_json::Value>, ApiError> {
    match crate::daemon::read_join_token(&st.cfg) {
        Ok(token) => Ok(Json(json!({ "token": token, "node_id": st.replica.id }))),
        Err(e) => Err(ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}"))),
    }
}

fn freshness_headers(r: &Replica, lag: Lag) -> HeaderMap {
    let mut h = HeaderMap::new();
    let m = r.metrics();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    h.insert("x-tandem-applied-index", HeaderValue::from(applied));
    h.insert("x-tandem-lag-entries", HeaderValue::from(lag.entries));
    h.insert("x-tandem-lag-ms", HeaderValue::from(lag.ms));
    h.insert("x-tandem-node", HeaderValue::from(r.id));
    h
}

fn check_key(key: &str) -> Result<(), ApiError> {
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

/// `consistency=strong` → wait for a read-index barrier; returns the lag to report.
async fn consistency(r: &Replica, params: &mut HashMap<String, String>) -> Result<Lag, ApiError> {
    match params.remove("consistency").as_deref() {
        None | Some("stale") => Ok(r.lag()),
        Some("strong") => {
            r.linearizable_barrier(Duration::from_secs(5)).await?;
            Ok(Lag::default())
        }
        Some(other) => Err(ApiError::bad(format!(
            "consistency: `{other}` is not one of stale, strong"
        ))),
    }
}

fn no_unknown(params: &HashMap<String, String>) -> Result<(), ApiError> {
    if let Some(k) = params.keys().next() {
        return Err(ApiError::bad(format!("unknown query parameter `{k}`")));
    }
    Ok(())
}

async fn config_list(
    State(st): St,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let lag = consistency(&st.replica, &mut params).await?;
    let prefix = params.remove("prefix").unwrap_or_default();
    no_unknown(&params)?;
    let entries = query::config_list(&st.replica.tree(), &prefix)?;
    let items: Vec<_> = entries
        .into_iter()
        .map(
            |e| json!({"key": e.key, "value": shown_value(&e.key, &e.value), "version": e.version}),
        )
        .collect();
    Ok((
        freshness_headers(&st.replica, lag),
        Json(json!({ "config": items })),
    )
        .into_response())
}

fn parse_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// A config value as the API shows it: secrets (SIP passwords, the SMTP password)
/// are replaced by "***" (they can be set, never read back).
fn shown_value(key: &str, text: &str) -> serde_json::Value {
    let mut v = parse_value(text);
    if key == "smtp.password" {
        return json!("***");
    }
    if key.starts_with(crate::telephony::USER_PREFIX) {
        if let Some(p) = v.get_mut("password") {
            *p = json!("***");
        }
    }
    v
}

async fn config_get(
    State(st): St,
    Path(key): Path<String>,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let lag = consistency(&st.replica, &mut params).await?;
    no_unknown(&params)?;
    match query::config_get(&st.replica.tree(), &key)? {
        Some(e) => Ok((
            freshness_headers(&st.replica, lag),
            Json(
                json!({"key": e.key, "value": shown_value(&e.key, &e.value), "version": e.version}),
            ),
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("config key `{key}` is not set"),
        )),
    }
}

async fn config_put(
    State(st): St,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("body must be a JSON value: {e}")))?;
    let (index, resp) = st
        .replica
        .write(RaftRequest::SetConfig {
            key: key.clone(),
            value: value.to_string(),
        })
        .await?;
    let created = matches!(resp, RaftResponse::Config { existed: false, .. });
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"key": key, "value": value, "version": index})),
    )
        .into_response())
}

async fn config_delete(State(st): St, Path(key): Path<String>) -> Result<Response, ApiError> {
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
        _ => Ok(Json(json!({"key": key, "deleted": true, "version": index})).into_response()),
    }
}

/// Parse a POST body: one CDR object or an array of them.
pub fn parse_cdrs(body: &[u8]) -> Result<Vec<Cdr>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad(
            "empty body: expected a CDR object or an array of CDRs",
        ));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let cdrs: Vec<Cdr> = match first {
        Some(b'[') => serde_json::from_slice(body),
        Some(b'{') => serde_json::from_slice::<Cdr>(body).map(|c| vec![c]),
        _ => {
            return Err(ApiError::bad(
                "malformed JSON: expected a CDR object or an array of CDRs",
            ))
        }
    }
    .map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid CDR",
        };
        ApiError::bad(format!("{kind}: {e}"))
    })?;
    if cdrs.is_empty() {
        return Err(ApiError::bad("empty array: send at least one CDR"));
    }
    if cdrs.len() > MAX_BATCH {
        return Err(ApiError::bad(format!(
            "batch of {} CDRs is too large (max {MAX_BATCH} per request)",
            cdrs.len()
        )));
    }
    for (i, c) in cdrs.iter().enumerate() {
        c.validate()
            .map_err(|e| ApiError::bad(format!("cdrs[{i}]: {e}")))?;
    }
    Ok(cdrs)
}

async fn cdrs_post(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let cdrs = parse_cdrs(&body)?;
    let n = cdrs.len();
    let (index, resp) = st.replica.add_cdrs(cdrs).await?;
    let (inserted, duplicates) = match resp {
        RaftResponse::Cdrs {
            inserted,
            duplicates,
            ..
        } => (inserted, duplicates),
        _ => (n as u32, 0),
    };
    st.metrics.cdrs_written(u64::from(inserted));
    Ok((
        StatusCode::CREATED,
        Json(json!({"inserted": inserted, "duplicates": duplicates, "index": index})),
    )
        .into_response())
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad(format!(
                "{name}: `{v}` is not an RFC 3339 time (example: 2026-01-31T23:59:59Z)"
            ))
        })
}

#[derive(serde::Serialize)]
struct CdrPage<'a> {
    cdrs: Vec<CdrRef<'a>>,
    count: usize,
    next_cursor: Option<String>,
}

enum Format {
    Json,
    Csv,
}

async fn cdrs_get(
    State(st): St,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let lag = consistency(&st.replica, &mut params).await?;
    let from = params
        .remove("from")
        .map(|v| parse_time("from", &v))
        .transpose()?;
    let to = params
        .remove("to")
        .map(|v| parse_time("to", &v))
        .transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(ApiError::bad(format!(
                "bad time range: from ({f}) must be before to ({t})"
            )));
        }
    }
    let format = match params.remove("format").as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "format: `{other}` is not one of json, csv"
            )))
        }
    };
    let limit = match params.remove("limit") {
        None => None,
        Some(v) => {
            let n: usize = v
                .parse()
                .map_err(|_| ApiError::bad(format!("limit: `{v}` is not a positive integer")))?;
            if n == 0 {
                return Err(ApiError::bad("limit: must be at least 1"));
            }
            if n > MAX_LIMIT && matches!(format, Format::Json) {
                return Err(ApiError::bad(format!(
                    "limit {n} too large (max {MAX_LIMIT} per page; page with `cursor`, or use format=csv to export everything)"
                )));
            }
            Some(n)
        }
    };
    let cursor = params
        .remove("cursor")
        .map(|c| {
            Cursor::from_hex(&c).ok_or_else(|| {
                ApiError::bad(format!(
                    "cursor: `{c}` is not a cursor returned by this API"
                ))
            })
        })
        .transpose()?;
    let caller = params.remove("caller");
    let callee = params.remove("callee");
    no_unknown(&params)?;
    let q = CdrQuery {
        from,
        to,
        caller,
        callee,
        cursor,
    };
    let tree = st.replica.tree();
    let headers = freshness_headers(&st.replica, lag);
    match format {
        Format::Json => {
            let limit = limit.unwrap_or(100);
            let (rows, next) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                let mut rows = Vec::with_capacity(limit.min(1024));
                let mut next = None;
                for item in query::cdr_scan_raw(&tree, &q) {
                    let (pos, bytes) = item?;
                    if rows.len() == limit {
                        next = rows.last().map(|(p, _): &(Cursor, _)| *p);
                        break;
                    }
                    rows.push((pos, bytes));
                }
                Ok((rows, next))
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
            // Serialized straight from the stored bytes (no copy of any field, no
            // intermediate JSON tree).
            let cdrs = rows
                .iter()
                .map(|(_, bytes)| codec::decode_borrowed::<CdrRef>(bytes))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let page = CdrPage {
                count: cdrs.len(),
                cdrs,
                next_cursor: next.map(|c: Cursor| c.to_hex()),
            };
            let mut body = Vec::with_capacity(tandem_replication::cdr::json_capacity(
                rows.iter().map(|(_, b)| b.len()),
            ));
            serde_json::to_writer(&mut body, &page)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(with_headers(Body::from(body), headers, "application/json"))
        }
        Format::Csv => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
            tokio::task::spawn_blocking(move || stream_csv(tree, q, limit, tx));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(with_headers(
                Body::from_stream(stream),
                headers,
                "text/csv; charset=utf-8",
            ))
        }
    }
}

/// A response of `body` with the freshness `headers` and a content type.
fn with_headers(body: Body, headers: HeaderMap, content_type: &'static str) -> Response {
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Hands CSV bytes on in ~256 KiB chunks to `send` (a bounded channel: memory stays
/// flat however many rows are exported).
struct ChunkSender<F: FnMut(Vec<u8>) -> std::io::Result<()>> {
    buf: Vec<u8>,
    send: F,
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> ChunkSender<F> {
    fn new(send: F) -> Self {
        ChunkSender {
            buf: Vec::with_capacity(CHUNK + 4096),
            send,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096));
        (self.send)(chunk)
    }
}

const CHUNK: usize = 256 * 1024;

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> std::io::Write for ChunkSender<F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

fn client_gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
}

/// A full export (no limit) is cut into this many start-time slices, scanned by
/// [`EXPORT_WORKERS`] threads and streamed in order: with sled's page cache far smaller
/// than the data, one thread paging the tree in was the export's limit.
const EXPORT_SLICES: usize = 64;
const EXPORT_WORKERS: usize = 2;

fn stream_csv(
    tree: Tree,
    q: CdrQuery,
    limit: Option<usize>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let err_tx = tx.clone();
    let w = csv::Writer::from_writer(ChunkSender::new(move |chunk| {
        tx.blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| client_gone())
    }));
    if let Err(e) = export(&tree, q, limit, w) {
        let _ = err_tx.blocking_send(Err(std::io::Error::other(e)));
    }
}

fn export<F: FnMut(Vec<u8>) -> std::io::Result<()>>(
    tree: &Tree,
    q: CdrQuery,
    limit: Option<usize>,
    mut w: csv::Writer<ChunkSender<F>>,
) -> Result<(), String> {
    w.write_record(CSV_COLUMNS).map_err(|e| e.to_string())?;
    let slices = match limit {
        None => query::cdr_slices(tree, &q, EXPORT_SLICES).map_err(|e| e.to_string())?,
        Some(_) => vec![q],
    };
    if slices.len() > 1 {
        let mut out = w.into_inner().map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
        return export_slices(tree, &slices, &mut out.send);
    }
    write_rows(tree, &slices[0], limit, &mut w)
}

/// The CSV rows of `q` (at most `limit`), written from the stored bytes (no
/// per-field allocation), then flushed.
fn write_rows<W: std::io::Write>(
    tree: &Tree,
    q: &CdrQuery,
    limit: Option<usize>,
    w: &mut csv::Writer<W>,
) -> Result<(), String> {
    for item in query::cdr_scan_raw(tree, q).take(limit.unwrap_or(usize::MAX)) {
        let (_, bytes) = item.map_err(|e| e.to_string())?;
        let cdr: CdrRef = codec::decode_borrowed(&bytes).map_err(|e| e.to_string())?;
        cdr.write_csv(w).map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())
}

/// What an export worker hands to the streaming thread.
enum Part {
    Chunk(Vec<u8>),
    /// Every row of the worker's current slice was sent.
    SliceDone,
    Failed(String),
}

/// Scan `slices` on [`EXPORT_WORKERS`] threads (slice i on worker i mod W, each with
/// a channel of two chunks: memory stays bounded) and pass their CSV to `send` in
/// slice order.
fn export_slices(
    tree: &Tree,
    slices: &[CdrQuery],
    send: &mut impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> Result<(), String> {
    std::thread::scope(|scope| {
        // Owned by this closure: dropped (so a blocked worker's send fails and it
        // stops) before the scope waits for the workers.
        let mut parts = Vec::with_capacity(EXPORT_WORKERS);
        for w in 0..EXPORT_WORKERS {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Part>(2);
            let mine: Vec<CdrQuery> = slices
                .iter()
                .skip(w)
                .step_by(EXPORT_WORKERS)
                .cloned()
                .collect();
            std::thread::Builder::new()
                .name(format!("export-{w}"))
                .spawn_scoped(scope, move || export_worker(tree, mine, tx))
                .map_err(|e| format!("cannot start an export thread: {e}"))?;
            parts.push(rx);
        }
        for i in 0..slices.len() {
            loop {
                match parts[i % EXPORT_WORKERS].recv() {
                    Ok(Part::Chunk(bytes)) => send(bytes).map_err(|e| e.to_string())?,
                    Ok(Part::SliceDone) => break,
                    Ok(Part::Failed(e)) => return Err(e),
                    Err(_) => return Err("an export thread stopped".into()),
                }
            }
        }
        Ok(())
    })
}

fn export_worker(tree: &Tree, slices: Vec<CdrQuery>, tx: std::sync::mpsc::SyncSender<Part>) {
    for q in slices {
        let chunks = tx.clone();
        let mut w = csv::Writer::from_writer(ChunkSender::new(move |chunk| {
            chunks.send(Part::Chunk(chunk)).map_err(|_| client_gone())
        }));
        let done = match write_rows(tree, &q, None, &mut w) {
            Ok(()) => tx.send(Part::SliceDone),
            Err(e) => tx.send(Part::Failed(e)),
        };
        if done.is_err() {
            return; // the streaming thread stopped (client gone or an error)
        }
    }
}

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
    Ok(crate::alarms::entries_from_text(all))
}

/// `POST /api/v1/alarms/test` with optional `{"to": "addr"}`: send a test mail with
/// the configured `smtp.*` settings (to every address of every recipient list when no
/// `to` is given). 200 with the Message-ID, 400 for bad settings, 502 with the SMTP
/// error (naming host, port and cause) when the server does not take the mail.
async fn alarms_test(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    use crate::alarms::{mail, recipients::Routing, smtp};
    let to = match optional_field(&body, "to")? {
        None => None,
        Some(serde_json::Value::String(a)) => Some(a),
        Some(_) => return Err(ApiError::bad("to: expected a mail address (string)")),
    };
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
            Ok(Json(json!({
                "message_id": sent.message_id,
                "to": to,
                "server": sent.server,
                "reply": sent.reply,
            }))
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
async fn alarms_status(State(st): St) -> Json<serde_json::Value> {
    Json(st.alarms.status())
}

/// `GET /api/v1/alarms/history`: the last alarm mails sent or given up by this node.
async fn alarms_history(State(st): St) -> Json<serde_json::Value> {
    Json(st.alarms.history())
}

#[cfg(test)]
mod export_tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use tandem_replication::store::apply::apply_entries;

    /// A state-machine tree holding `n` CDRs (the store needs a runtime for its flusher).
    fn tree_with(dir: &std::path::Path, n: i64) -> Tree {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (_log, sm) = tandem_replication::store::open(dir, 16).unwrap();
        let tree = sm.shared.tree();
        let base: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let cdrs: Vec<Cdr> = (0..n)
            .map(|i| {
                let start = base + chrono::Duration::seconds(i * 7 % 5000);
                let end = start + chrono::Duration::seconds(60);
                Cdr::new_call(&format!("1{}", i % 9), "200", start, None, end, "a")
            })
            .collect();
        let entry = tandem_replication::types::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(RaftRequest::AddCdrs { cdrs }),
        };
        let applied = apply_entries(&tree, [entry]).unwrap();
        tree.apply_batch(applied.batch).unwrap();
        tree
    }

    fn run(tree: &Tree, q: CdrQuery, limit: Option<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        let w = csv::Writer::from_writer(ChunkSender::new(|chunk: Vec<u8>| {
            out.extend_from_slice(&chunk);
            Ok(())
        }));
        export(tree, q, limit, w).unwrap();
        out
    }

    #[test]
    fn the_sliced_export_equals_the_single_scan() {
        // Enough rows for several 256 KiB chunks per slice and worker.
        let dir = tempfile::tempdir().unwrap();
        let tree = tree_with(dir.path(), 20_000);
        for q in [
            CdrQuery::default(),
            CdrQuery {
                caller: Some("13".into()),
                ..Default::default()
            },
            CdrQuery {
                from: Some("2026-02-01T00:10:00Z".parse().unwrap()),
                to: Some("2026-02-01T01:00:00Z".parse().unwrap()),
                ..Default::default()
            },
        ] {
            assert!(query::cdr_slices(&tree, &q, EXPORT_SLICES).unwrap().len() > 1);
            // A limit above the row count takes the single-scan path.
            let single = run(&tree, q.clone(), Some(usize::MAX));
            let sliced = run(&tree, q.clone(), None);
            assert!(single.len() > 1000, "{q:?} exports rows");
            assert_eq!(
                String::from_utf8(sliced).unwrap(),
                String::from_utf8(single).unwrap(),
                "{q:?}"
            );
        }
    }

    #[test]
    fn a_client_that_goes_away_stops_the_sliced_export() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree_with(dir.path(), 20_000);
        let mut sent = 0;
        let w = csv::Writer::from_writer(ChunkSender::new(|_chunk: Vec<u8>| {
            sent += 1;
            if sent > 2 {
                Err(client_gone())
            } else {
                Ok(())
            }
        }));
        let err = export(&tree, CdrQuery::default(), None, w).unwrap_err();
        assert!(err.contains("client went away"), "{err}");
    }
}
