//! Call recordings through the API, and retention.
//!
//! - `POST /api/v1/recordings`: streams the body into the node's blob store (never
//!   held in memory), fsyncs it, commits the metadata through Raft, then waits until
//!   a second data node has fsynced the bytes: 201 "stored". If that takes longer
//!   than `wait_s`, 202 "pending" (the copy goes on; `tandem status` shows it).
//!   Recordings are immutable: uploading an id again with the same bytes answers
//!   200 with the stored recording; with other bytes, 409. Two uploads of one id on
//!   one node run one after the other; on two nodes, the metadata committed first
//!   wins and the other upload gets 409 (its file is set aside).
//! - `GET /api/v1/recordings/{id}`: from any data node that holds it, sha256
//!   checked, with HTTP range requests. 404 if no such recording; 503 "not yet
//!   replicated here" with the nodes that hold it.
//! - `GET /api/v1/recordings`: metadata with state (stored / pending) and holders.
//! - `POST /api/v1/recordings/verify`: re-check this node's files.
//! - [`retention`]: on the master, deletes CDRs and recordings older than the
//!   replicated `retention.cdr_days` / `retention.recording_days` through Raft.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::json;
use tandem_replication::blobs::{check_id, BlobError};
use tandem_replication::replica::Replica;
use tandem_replication::store::query;
use tandem_replication::types::{
    MemberKind, RecordingMeta, Request as RaftRequest, Response as RaftResponse,
};

use tandem_api as api;

use crate::http::{state::St, ApiError};

/// Default and longest wait for the second copy before answering 202.
const DEFAULT_WAIT_S: u64 = 120;
const MAX_WAIT_S: u64 = 3600;
/// Largest recording accepted by upload.
pub const MAX_RECORDING: u64 = 4 * 1024 * 1024 * 1024;
/// Most rows one list page returns.
const MAX_LIST: usize = 10_000;

/// Data nodes among the current members.
fn data_nodes(r: &Replica) -> usize {
    r.members()
        .iter()
        .filter(|m| m.kind == MemberKind::Data)
        .count()
}

/// Copies needed for "stored": two, or one if the cluster has a single data node.
pub fn copies_needed(r: &Replica) -> usize {
    data_nodes(r).clamp(1, 2)
}

fn state_of(meta: &RecordingMeta, needed: usize) -> &'static str {
    if meta.holders.len() >= needed {
        "stored"
    } else {
        "pending"
    }
}

fn meta_json(meta: &RecordingMeta, needed: usize) -> api::Recording {
    api::Recording {
        id: meta.id.clone(),
        call_id: meta.call_id.clone(),
        sha256: meta.sha256.clone(),
        size: meta.size,
        duration_ms: meta.duration_ms,
        codec: meta.codec.clone(),
        created: chrono::DateTime::from_timestamp_micros(meta.created)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        holders: meta.holders.iter().copied().collect(),
        state: state_of(meta, needed).to_string(),
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad(format!("header {name}: not visible ASCII text"))),
    }
}

/// The metadata that came with an upload (headers, `wait_s`).
#[derive(Debug)]
pub struct UploadInfo {
    /// `X-Recording-Id` (checked by `check_id`), or a new UUID.
    pub id: String,
    /// `X-Call-Id` (at most 256 bytes).
    pub call_id: String,
    /// `X-Codec` or `Content-Type` (at most 64 bytes), `audio/wav` when absent.
    pub codec: String,
    /// `X-Duration-Ms`.
    pub duration_ms: u64,
    /// `X-Sha256`, lower-case hex.
    pub sha256: Option<String>,
    /// How long to wait for the second copy (`wait_s`, at most an hour).
    pub wait: Duration,
}

/// The headers and query string of `POST /api/v1/recordings`, checked.
pub fn upload_info(
    h: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<UploadInfo, ApiError> {
    for k in params.keys() {
        if k != "wait_s" {
            return Err(ApiError::bad(format!(
                "unknown query parameter `{k}` (only wait_s)"
            )));
        }
    }
    let wait_s = match params.get("wait_s") {
        None => DEFAULT_WAIT_S,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_WAIT_S)
            .ok_or_else(|| {
                ApiError::bad(format!("wait_s={v}: give seconds from 0 to {MAX_WAIT_S}"))
            })?,
    };
    let id = match header_str(h, "x-recording-id")? {
        Some(id) => {
            check_id(id).map_err(|e| ApiError::bad(format!("header X-Recording-Id: {e}")))?;
            id.to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let duration_ms = match header_str(h, "x-duration-ms")? {
        None => 0,
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad(format!(
                "header X-Duration-Ms: {v:?} is not a whole number of milliseconds"
            ))
        })?,
    };
    let sha256 = match header_str(h, "x-sha256")? {
        None => None,
        Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(v) => {
            return Err(ApiError::bad(format!(
                "header X-Sha256: {v:?} is not 64 hex digits"
            )))
        }
    };
    let codec = header_str(h, "x-codec")?
        .or(header_str(h, "content-type")?)
        .unwrap_or("audio/wav")
        .to_string();
    let call_id = header_str(h, "x-call-id")?.unwrap_or("").to_string();
    if call_id.len() > 256 || codec.len() > 64 {
        return Err(ApiError::bad(
            "header X-Call-Id (max 256 bytes) or X-Codec (max 64 bytes) too long",
        ));
    }
    Ok(UploadInfo {
        id,
        call_id,
        codec,
        duration_ms,
        sha256,
        wait: Duration::from_secs(wait_s),
    })
}

/// `POST /api/v1/recordings`.
pub async fn upload(
    State(st): St,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = st.replica.clone();
    let Some(blobs) = r.blobs.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "node {} is a witness and stores no recordings: upload to a data node",
                r.id
            ),
        ));
    };
    let info = upload_info(&headers, &params)?;
    // The bytes land on this node's disk before anything is proposed.
    r.space.check(r.id)?;
    // One upload of an id at a time on this node: a second one waits, then
    // compares its bytes with what the first stored.
    let claim = blobs.claim(&info.id).await;
    let existing = query::recording_get(&r.tree(), &info.id)?;
    if existing.is_none() && blobs.has(&info.id) {
        // No metadata refers to it: left by an upload that crashed before its
        // metadata committed.
        blobs
            .set_aside(&info.id, "no metadata refers to it")
            .map_err(blob_error)?;
    }
    let t0 = Instant::now();
    let mut writer = blobs.writer(&info.id).map_err(blob_error)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("upload interrupted: {e}")))?;
        if writer.size() + chunk.len() as u64 > MAX_RECORDING {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("recording larger than {MAX_RECORDING} bytes"),
            ));
        }
        writer.write(&chunk).map_err(blob_error)?;
    }
    if writer.size() == 0 {
        return Err(ApiError::bad("empty body: send the recording's bytes"));
    }
    let expected = info.sha256.clone();
    let checksum_error = |e: BlobError| match e {
        BlobError::Checksum { .. } => ApiError::bad(format!("header X-Sha256: {e}")),
        other => blob_error(other),
    };
    if let Some(have) = existing {
        // Stored already: the same bytes again is a retry (answered like the
        // first upload), other bytes are refused.
        let (sha256, _) =
            tokio::task::spawn_blocking(move || writer.digest_only(expected.as_deref()))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(checksum_error)?;
        if sha256 != have.sha256 {
            return Err(taken(&have.id, &have.sha256, &sha256));
        }
        return Ok((StatusCode::OK, Json(meta_json(&have, copies_needed(&r)))).into_response());
    }
    let (sha256, size) = tokio::task::spawn_blocking(move || writer.finish(expected.as_deref()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            BlobError::Exists { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            other => checksum_error(other),
        })?;
    let meta = RecordingMeta {
        id: info.id.clone(),
        call_id: info.call_id,
        sha256,
        size,
        duration_ms: info.duration_ms,
        codec: info.codec,
        created: chrono::Utc::now().timestamp_micros(),
        holders: [r.id].into_iter().collect(),
    };
    match r
        .write(RaftRequest::AddRecording { meta: meta.clone() })
        .await
    {
        Ok((_, RaftResponse::RecordingConflict { id, sha256 })) => {
            // Another node's upload of this id committed first: our bytes are
            // not the recording's. The sync fetches the real one.
            if let Err(e) = blobs.set_aside(&id, "another upload of this id committed first") {
                tracing::warn!(recording = %id, error = %e, "cannot set the refused upload aside");
            }
            return Err(taken(&id, &sha256, &meta.sha256));
        }
        Ok(_) => {}
        // The metadata may still commit (a timeout is not a refusal): the file
        // stays, and a retry of the upload compares against what committed.
        Err(e) => return Err(e.into()),
    }
    drop(claim);
    st.metrics.recordings_uploaded.inc();
    tracing::info!(recording = %meta.id, size, ms = t0.elapsed().as_millis() as u64, "recording received; waiting for a second copy");
    // Wait for the second copy (fsynced on another data node, reported via Raft).
    let needed = copies_needed(&r);
    let deadline = Instant::now() + info.wait;
    let mut latest = meta;
    loop {
        if let Some(m) = query::recording_get(&r.tree(), &latest.id)? {
            latest = m;
        }
        if latest.holders.len() >= needed {
            tracing::info!(recording = %latest.id, holders = ?latest.holders, ms = t0.elapsed().as_millis() as u64, "recording stored");
            return Ok((StatusCode::CREATED, Json(meta_json(&latest, needed))).into_response());
        }
        if Instant::now() >= deadline {
            return Ok((StatusCode::ACCEPTED, Json(meta_json(&latest, needed))).into_response());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 409 for an upload whose bytes differ from the stored recording of that id.
fn taken(id: &str, stored: &str, sent: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "recording {id} already exists with other bytes (stored sha256 {stored}, \
             this upload {sent}); recordings are immutable: upload under another id"
        ),
    )
}

fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::BadId { .. } => ApiError::bad(e.to_string()),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// The query of `GET /api/v1/recordings`: `state` (stored or pending), `after` (an
/// id to resume after) and `limit` (1..=10000, 1000 when absent).
pub fn list_params(
    mut params: HashMap<String, String>,
) -> Result<(Option<String>, Option<String>, usize), ApiError> {
    let want = params.remove("state");
    if let Some(s) = &want {
        if s != "stored" && s != "pending" {
            return Err(ApiError::bad(format!(
                "state={s}: use state=stored or state=pending"
            )));
        }
    }
    let after = params.remove("after");
    let limit = match params.remove("limit") {
        None => 1000,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::bad(format!("limit={v}: give 1 to {MAX_LIST}")))?,
    };
    if let Some(k) = params.keys().next() {
        return Err(ApiError::bad(format!(
            "unknown query parameter `{k}` (state, after, limit)"
        )));
    }
    Ok((want, after, limit))
}

/// `GET /api/v1/recordings?state=&after=&limit=`.
pub async fn list(
    State(st): St,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<api::RecordingList>, ApiError> {
    let (want, after, limit) = list_params(params)?;
    let r = &st.replica;
    let needed = copies_needed(r);
    let mut rows = Vec::new();
    let mut next = None;
    for item in query::recording_scan(&r.tree(), after.as_deref()) {
        let meta = item?;
        if want
            .as_deref()
            .is_some_and(|w| w != state_of(&meta, needed))
        {
            continue;
        }
        if rows.len() == limit {
            next = rows.last().map(|v: &api::Recording| v.id.clone());
            break;
        }
        rows.push(meta_json(&meta, needed));
    }
    Ok(Json(api::RecordingList {
        recordings: rows,
        next_after: next,
        node: r.id,
        sync: r
            .blobs
            .as_ref()
            .map(|_| crate::http::cluster::sync_view(r.blob_stats.backlog())),
    }))
}

/// A `Range` that does not fit the file (answered 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A parsed `Range: bytes=...` header (one range) of a file of `size` bytes:
/// `Ok(None)` serves the whole file, `Err` is 416.
pub fn parse_range(v: &str, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None); // unknown unit: ignore, serve everything (RFC 9110 §14.2)
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: serve everything
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| Unsatisfiable)?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if size == 0 || start >= size || end < start {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// `GET /api/v1/recordings/{id}`.
pub async fn download(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id(&id).map_err(|e| ApiError::bad(e.to_string()))?;
    let r = st.replica.clone();
    let Some(meta) = query::recording_get(&r.tree(), &id)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no recording with id {id}"),
        ));
    };
    let not_here = |why: String| {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": why,
                "state": state_of(&meta, copies_needed(&r)),
                "held_by": meta.holders,
            })),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        resp
    };
    let Some(blobs) = r.blobs.clone() else {
        return Ok(not_here(format!(
            "node {} is a witness and stores no recordings; it is held by nodes {:?}",
            r.id, meta.holders
        )));
    };
    let (sha, id2) = (meta.sha256.clone(), id.clone());
    let opened = tokio::task::spawn_blocking(move || blobs.open_verified(&id2, &sha))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (mut file, size) = match opened {
        Ok(f) => f,
        Err(BlobError::Missing { .. }) | Err(BlobError::Checksum { .. }) => {
            return Ok(not_here(format!(
                "recording {id} is not yet replicated to this node (node {}); it is held by nodes {:?}: download it there or retry",
                r.id, meta.holders
            )));
        }
        Err(e) => return Err(blob_error(e)),
    };
    let range = match header_str(&headers, "range")? {
        None => None,
        Some(v) => match parse_range(v, size) {
            Ok(r) => r,
            Err(Unsatisfiable) => {
                let mut resp = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("Range {v:?} does not fit a file of {size} bytes"),
                )
                .into_response();
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return Ok(resp);
            }
        },
    };
    let (start, len, status) = match range {
        Some((a, b)) => (a, b - a + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, size, StatusCode::OK),
    };
    file.seek(SeekFrom::Start(start))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    st.metrics.recordings_served.inc();
    let body = Body::from_stream(file_stream(file, len));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let ctype = if meta.codec.contains('/') {
        meta.codec.as_str()
    } else {
        "audio/wav"
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(ctype).unwrap_or(HeaderValue::from_static("audio/wav")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", meta.sha256)).expect("hex"),
    );
    h.insert(
        "x-recording-sha256",
        HeaderValue::from_str(&meta.sha256).expect("hex"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{size}", start, start + len - 1))
                .expect("ascii"),
        );
    }
    Ok(resp)
}

/// Read `len` bytes of `file` as a stream of chunks (on the blocking pool).
fn file_stream(
    file: std::fs::File,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures::stream::unfold((Some(file), len), |(file, left)| async move {
        let mut f = file?;
        if left == 0 {
            return None;
        }
        let n = left.min(256 * 1024) as usize;
        let res = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf).map(|_| (buf, f))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match res {
            Ok((buf, f)) => Some((Ok(buf), (Some(f), left - n as u64))),
            Err(e) => Some((Err(e), (None, 0))),
        }
    })
}

/// The body of `POST /api/v1/recordings/verify`: empty, or `{"id": "..."}`.
pub fn verify_target(body: &[u8]) -> Result<Option<String>, ApiError> {
    crate::http::params::optional_field(body, "id")?
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad("field `id`: give the recording id as a string"))
        })
        .transpose()
}

/// `POST /api/v1/recordings/verify` (body `{"id": ...}` or empty for all): re-read
/// this node's files and check them against their sha256.
pub async fn verify(State(st): St, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let only = verify_target(&body)?;
    let r = st.replica.clone();
    let Some(blobs) = r.blobs.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {} is a witness and stores no recordings", r.id),
        ));
    };
    let tree = r.tree();
    let metas: Vec<RecordingMeta> = match &only {
        Some(id) => match query::recording_get(&tree, id)? {
            Some(m) => vec![m],
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no recording with id {id}"),
                ))
            }
        },
        None => query::recording_scan(&tree, None).collect::<Result<_, _>>()?,
    };
    let node = r.id;
    let report = tokio::task::spawn_blocking(move || {
        let (mut ok, mut bad, mut missing) = (0usize, Vec::new(), Vec::new());
        for m in &metas {
            blobs.forget_verified(&m.id);
            match blobs.verify(&m.id, &m.sha256) {
                Ok(()) => ok += 1,
                Err(BlobError::Missing { .. }) => missing.push(m.id.clone()),
                Err(e) => bad.push(api::BadRecording {
                    id: m.id.clone(),
                    error: e.to_string(),
                }),
            }
        }
        api::VerifyReport {
            node,
            checked: metas.len(),
            ok,
            bad,
            missing,
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::{parse_range, Unsatisfiable};

    #[test]
    fn ranges_per_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=500-5000", 1000), Ok(Some((500, 999))));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=1-2", 1000), Ok(None));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=x-2", 1000), Err(Unsatisfiable));
    }
}
