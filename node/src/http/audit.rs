//! The audit log: who changed what, when, from where, with what outcome.
//!
//! Entries are replicated config entries under the reserved `audit.` prefix (keys
//! sorted by time, see `settings::users::audit_key`), so every node holds the same log
//! and serves `GET /api/v1/audit` from its local copy.
//!
//! ```text
//!  request ─▶ auth (role check) ─▶ around(): write entry (status: none) ── fails ─▶ 503, not run
//!                                      │ committed
//!                                      ▼
//!                                  handler ─▶ write entry again with its status ─▶ answer
//! ```
//!
//! A mutating request that cannot be audited is refused (503, nothing changed): the
//! first write happens before the handler runs. If the second write (the outcome)
//! fails, the answer is still sent (the change is done) and the entry keeps
//! `status: null`; a warning is logged. The log keeps the newest
//! `retention.audit_entries` (default 10,000).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tandem_api as api;
use tandem_replication::store::query;
use tandem_replication::types::Request as RaftRequest;

use crate::http::error::ApiError;
use crate::http::params::{no_unknown, parse_time};
use crate::http::state::{AppState, St};
use crate::settings::retention;
use crate::settings::users::{audit_key, audit_micros, AUDIT_PREFIX};

/// The log is trimmed after every this many entries written by a node.
const PRUNE_EVERY: u64 = 64;
/// Most entries removed by one trim.
const PRUNE_MAX: usize = 512;
/// Default and largest `limit` of `GET /api/v1/audit`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// Version of the stored entry.
const VERSION: u32 = 1;

/// Entries written by this process (drives the trim).
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// The stored form of an entry (`audit.<µs>.<node>.<nonce>`).
#[derive(Debug, Serialize, Deserialize)]
struct StoredEntry {
    v: u32,
    #[serde(flatten)]
    entry: api::AuditEntry,
}

/// An audited request as known before it runs.
pub struct Audited {
    pub who: String,
    pub role: api::Role,
    pub from: String,
    pub method: String,
    pub route: String,
    pub target: String,
}

impl Audited {
    fn entry(&self, st: &AppState, at: DateTime<Utc>, status: Option<u16>) -> api::AuditEntry {
        api::AuditEntry {
            at,
            who: self.who.clone(),
            role: self.role,
            from: self.from.clone(),
            node: st.replica.id,
            method: self.method.clone(),
            route: self.route.clone(),
            target: self.target.clone(),
            status,
        }
    }
}

async fn put(st: &AppState, key: &str, entry: api::AuditEntry) -> Result<(), ApiError> {
    let value = serde_json::to_string(&StoredEntry { v: VERSION, entry }).expect("audit json");
    let r = st
        .replica
        .write(RaftRequest::SetConfig {
            key: key.to_string(),
            value,
        })
        .await;
    let result = if r.is_ok() { "ok" } else { "failed" };
    st.metrics.audit_writes.with_label_values(&[result]).inc();
    r?;
    Ok(())
}

/// The client address of a request, as the server saw it (HTTP or HTTPS).
pub fn client_socket(ext: &axum::http::Extensions) -> Option<std::net::SocketAddr> {
    use axum::extract::ConnectInfo;
    // `http::serve` inserts it for every request, HTTP and HTTPS alike.
    ext.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0)
}

/// The client address of a request as the audit log shows it (`ip:port`).
pub fn client_addr(ext: &axum::http::Extensions) -> String {
    client_socket(ext).map_or_else(|| "unknown".into(), |a| a.to_string())
}

/// Record `a`, run `handler`, record its status. Refuses with 503 (without running
/// the handler) when the entry cannot be written.
pub async fn around(
    st: &AppState,
    a: Audited,
    handler: impl Future<Output = Response>,
) -> Response {
    let at = Utc::now();
    let key = audit_key(at.timestamp_micros(), st.replica.id);
    if let Err(e) = put(st, &key, a.entry(st, at, None)).await {
        tracing::warn!(who = %a.who, route = %a.route, error = ?e, "audit log not writable: request refused");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}: refused because the audit log cannot be written (nothing was changed): {}; retry once the cluster has a master (`tandem status`)",
                a.route,
                e.message()
            ),
        )
        .into_response();
    }
    let resp = handler.await;
    let status = resp.status().as_u16();
    if let Err(e) = put(st, &key, a.entry(st, at, Some(status))).await {
        tracing::warn!(who = %a.who, route = %a.route, status, error = ?e, "audit outcome not recorded");
    }
    tracing::info!(who = %a.who, role = %a.role, from = %a.from, route = %a.route, target = %a.target, status, "audited request");
    trim(st).await;
    resp
}

/// Record a finished request in one write (refused requests, logins).
pub async fn record(st: &AppState, a: Audited, status: StatusCode) -> Result<(), ApiError> {
    let at = Utc::now();
    let key = audit_key(at.timestamp_micros(), st.replica.id);
    put(st, &key, a.entry(st, at, Some(status.as_u16()))).await?;
    trim(st).await;
    Ok(())
}

/// The keys to remove so that at most `max` of `keys` (sorted oldest first) remain,
/// at most `PRUNE_MAX` at once.
fn excess(keys: &[String], max: usize) -> &[String] {
    let n = keys.len().saturating_sub(max).min(PRUNE_MAX);
    &keys[..n]
}

/// Every `PRUNE_EVERY` entries: remove the oldest beyond `retention.audit_entries`.
async fn trim(st: &AppState) {
    if !WRITTEN
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(PRUNE_EVERY)
    {
        return;
    }
    let tree = st.replica.tree();
    // A bad stored value (validate refuses them) falls back to the default.
    let max = query::config_get(&tree, retention::AUDIT_ENTRIES)
        .ok()
        .flatten()
        .and_then(|e| serde_json::from_str(&e.value).ok())
        .and_then(|v| retention::audit_entries(retention::AUDIT_ENTRIES, &v).ok())
        .unwrap_or(retention::DEFAULT_AUDIT_ENTRIES);
    let keys: Vec<String> = match query::config_list(&tree, AUDIT_PREFIX) {
        Ok(entries) => entries.into_iter().map(|e| e.key).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "audit trim: cannot list the log");
            return;
        }
    };
    for key in excess(&keys, max) {
        if let Err(e) = st
            .replica
            .write(RaftRequest::DeleteConfig { key: key.clone() })
            .await
        {
            tracing::warn!(error = %e, "audit trim stopped");
            return;
        }
    }
}

/// `GET /api/v1/audit?limit=&since=`: the newest `limit` entries at or after `since`,
/// oldest first, from this node's copy.
pub(crate) async fn audit_get(
    State(st): St,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Json<api::AuditLog>, ApiError> {
    let limit = match params.remove("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!("limit: `{v}` is not a number in 1..={MAX_LIMIT}"))
            })?,
    };
    let since = match params.remove("since") {
        None => None,
        Some(v) => Some(parse_time("since", &v)?.timestamp_micros()),
    };
    no_unknown(&params)?;
    let mut entries: Vec<api::AuditEntry> = query::config_list(&st.replica.tree(), AUDIT_PREFIX)?
        .into_iter()
        .filter(|e| since.is_none_or(|s| audit_micros(&e.key).is_some_and(|t| t >= s)))
        .filter_map(|e| match serde_json::from_str::<StoredEntry>(&e.value) {
            Ok(s) => Some(s.entry),
            Err(err) => {
                tracing::warn!(key = %e.key, error = %err, "unreadable audit entry skipped");
                None
            }
        })
        .collect();
    let skip = entries.len().saturating_sub(limit);
    entries.drain(..skip);
    Ok(Json(api::AuditLog { entries }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_beyond_the_bound_are_removed_a_batch_at_a_time() {
        let keys: Vec<String> = (0..10).map(|i| format!("audit.{i:016}")).collect();
        assert!(excess(&keys, 10).is_empty());
        assert_eq!(excess(&keys, 7), &keys[..3]);
        let many: Vec<String> = (0..PRUNE_MAX + 50).map(|i| i.to_string()).collect();
        assert_eq!(excess(&many, 10).len(), PRUNE_MAX);
    }
}
