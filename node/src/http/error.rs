//! `ApiError`: every failure answered as `{"error": message}` with a status.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tandem_replication::error::InvalidRequest;
use tandem_replication::store::query::{self};
use tandem_replication::Error as ReplError;

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
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The message of the `{"error": ...}` body.
    pub fn message(&self) -> &str {
        &self.message
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
        // The same status whether this node or the leader it forwarded to
        // found the problem.
        let status = if e.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else if e.is_disk_full() {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            match e.invalid_request() {
                // Refused because of the cluster's current state.
                Some(
                    InvalidRequest::LastVoter { .. }
                    | InvalidRequest::AlreadyLeader { .. }
                    | InvalidRequest::NoHandOverTarget,
                ) => StatusCode::CONFLICT,
                // Refused because of what was asked.
                Some(InvalidRequest::NotADataVoter { .. } | InvalidRequest::NotAMember { .. }) => {
                    StatusCode::BAD_REQUEST
                }
                None => StatusCode::INTERNAL_SERVER_ERROR,
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

/// Longest request target (path and query string) the API reads; a longer one
/// gets 414. The longest real one (a CDR query with every filter) is far shorter.
pub const MAX_URI: usize = 8 * 1024;

/// Gives every error the JSON shape, including the ones the HTTP stack answers
/// itself in plain text or with no body (413 body too large, 405 wrong method,
/// 400 path not UTF-8, 404), and refuses over-long request targets with 414.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let target = req.uri().to_string();
    if target.len() > MAX_URI {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {} bytes, more than the {} KiB limit; shorten the \
                 path or query string",
                target.len(),
                MAX_URI / 1024
            ),
        )
        .into_response();
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_string();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than the {} MiB limit; send fewer CDRs per request \
             (at most {} per batch)",
            crate::http::MAX_BODY >> 20,
            crate::http::MAX_BATCH
        ),
        // The router adds the `Allow` header after this layer has run.
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "{method} is not allowed on {path}; the Allow header lists the methods it \
             accepts (see docs/api.md)"
        ),
        _ if detail.to_ascii_lowercase().contains("utf-8") => {
            format!("the path is not valid UTF-8 once percent-decoded: {path}")
        }
        _ if detail.is_empty() => {
            format!("{path}: {}", status.canonical_reason().unwrap_or("error"))
        }
        _ => format!("{path}: {detail}"),
    };
    let mut out = ApiError::new(status, message).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}
