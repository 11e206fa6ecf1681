//! `/api/v1/cdrs`: add CDRs (one or a batch), query pages (JSON) and export (CSV).

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tandem_replication::cdr::{Cdr, CdrRef};
use tandem_replication::store::codec;
use tandem_replication::store::query::{self, CdrQuery, Cursor};
use tandem_replication::types::Response as RaftResponse;

use crate::http::error::ApiError;
use crate::http::export::csv_stream;
use crate::http::params::*;
use crate::http::state::St;
use crate::http::{MAX_BATCH, MAX_LIMIT};
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

pub(crate) async fn cdrs_post(State(st): St, body: Bytes) -> Result<Response, ApiError> {
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
        Json(tandem_api::CdrsAdded {
            inserted,
            duplicates,
            index,
        }),
    )
        .into_response())
}

#[derive(serde::Serialize)]
struct CdrPage<'a> {
    cdrs: Vec<CdrRef<'a>>,
    count: usize,
    next_cursor: Option<String>,
}

/// The answer's format (`format=json|csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// What a CDR query string asks for, once parsed and checked.
#[derive(Debug)]
pub struct CdrParams {
    /// Filters and the cursor to resume after.
    pub query: CdrQuery,
    pub format: Format,
    /// Most rows (JSON: 1..=[`MAX_LIMIT`], 100 when absent; CSV: any, all when absent).
    pub limit: Option<usize>,
}

/// The filters, format, limit and cursor of `GET /api/v1/cdrs` (`consistency` taken
/// out before): a bad or unknown parameter is an error naming it.
pub fn cdr_params(mut params: HashMap<String, String>) -> Result<CdrParams, ApiError> {
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
    Ok(CdrParams {
        query: CdrQuery {
            from,
            to,
            caller,
            callee,
            cursor,
        },
        format,
        limit,
    })
}

pub(crate) async fn cdrs_get(
    State(st): St,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let lag = consistency(&st.replica, &mut params).await?;
    let CdrParams {
        query: q,
        format,
        limit,
    } = cdr_params(params)?;
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
            let stream = csv_stream(tree, q, limit)?;
            Ok(with_headers(
                Body::from_stream(stream),
                headers,
                "text/csv; charset=utf-8",
            ))
        }
    }
}
