//! `ApiError`: every failure answered as `{"error": message}` with a status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
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
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// The text answered as `error`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<ReplError> for ApiError {
    fn from(e: ReplError) -> ApiError {
        // The same status whether this node or the leader it forwarded to
        // found the problem.
        let status = if e.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else if e.invalid_request().is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
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
