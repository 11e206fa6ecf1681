//! Helpers shared by the handlers: optional body fields, query parameters, freshness headers.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use chrono::{DateTime, Utc};
use tandem_replication::replica::{Lag, Replica};

use crate::http::error::ApiError;
/// One optional field of an optional JSON object body (empty body = absent; null =
/// absent). Public for the fuzz target (`node/fuzz`).
pub fn optional_field(body: &[u8], name: &str) -> Result<Option<serde_json::Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("malformed JSON: {e}")))?;
    let mut map = match v {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(m) => m,
        other => {
            return Err(ApiError::bad(format!(
                "expected a JSON object such as {{\"{name}\": ...}} or an empty body, got {}",
                json_kind(&other)
            )))
        }
    };
    // A misspelt field must not silently mean "absent" (a switchover to any node).
    if let Some(k) = map.keys().find(|k| k.as_str() != name) {
        return Err(ApiError::bad(format!(
            "unknown field `{k}`: the only field here is `{name}`"
        )));
    }
    match map.remove(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => Ok(Some(x)),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub(crate) fn freshness_headers(r: &Replica, lag: Lag) -> HeaderMap {
    let mut h = HeaderMap::new();
    let m = r.metrics();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    h.insert("x-tandem-applied-index", HeaderValue::from(applied));
    h.insert("x-tandem-lag-entries", HeaderValue::from(lag.entries));
    h.insert("x-tandem-lag-ms", HeaderValue::from(lag.ms));
    h.insert("x-tandem-node", HeaderValue::from(r.id));
    h
}

/// `consistency=strong` → wait for a read-index barrier; returns the lag to report.
pub(crate) async fn consistency(
    r: &Replica,
    params: &mut HashMap<String, String>,
) -> Result<Lag, ApiError> {
    if strong_read(params)? {
        r.linearizable_barrier(Duration::from_secs(5)).await?;
        Ok(Lag::default())
    } else {
        Ok(r.lag())
    }
}

/// Takes `consistency` out of a query: true for `strong`, false for `stale` or
/// absent, an error naming the value otherwise.
pub fn strong_read(params: &mut HashMap<String, String>) -> Result<bool, ApiError> {
    match params.remove("consistency").as_deref() {
        None | Some("stale") => Ok(false),
        Some("strong") => Ok(true),
        Some(other) => Err(ApiError::bad(format!(
            "consistency: `{other}` is not one of stale, strong"
        ))),
    }
}

/// An error for the first parameter left in a query (each handler takes out
/// the ones it knows).
pub fn no_unknown(params: &HashMap<String, String>) -> Result<(), ApiError> {
    if let Some(k) = params.keys().next() {
        return Err(ApiError::bad(format!("unknown query parameter `{k}`")));
    }
    Ok(())
}

/// An RFC 3339 time of query parameter `name`.
pub fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad(format!(
                "{name}: `{v}` is not an RFC 3339 time (example: 2026-01-31T23:59:59Z)"
            ))
        })
}

/// A response of `body` with the freshness `headers` and a content type.
pub(crate) fn with_headers(body: Body, headers: HeaderMap, content_type: &'static str) -> Response {
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 201 when a config write created its key, 200 when it replaced a value.
pub(crate) fn created_or_ok(resp: &tandem_replication::types::Response) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match resp {
        tandem_replication::types::Response::Config { existed: false, .. } => StatusCode::CREATED,
        _ => StatusCode::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_field_body_must_be_an_object_with_only_that_field() {
        assert_eq!(optional_field(b"", "to").unwrap(), None);
        assert_eq!(optional_field(b" null ", "to").unwrap(), None);
        assert_eq!(optional_field(br#"{}"#, "to").unwrap(), None);
        assert_eq!(
            optional_field(br#"{"to": 2}"#, "to").unwrap(),
            Some(serde_json::json!(2))
        );
        for (body, want) in [
            (&br#"[2]"#[..], "got an array"),
            (br#"2"#, "got a number"),
            (br#""node-2""#, "got a string"),
            (br#"{"node": 2}"#, "unknown field `node`"),
            (br#"{"to": 2, "force": true}"#, "unknown field `force`"),
        ] {
            let e = optional_field(body, "to").unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            assert!(
                e.message().contains(want),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.message()
            );
        }
    }
}
