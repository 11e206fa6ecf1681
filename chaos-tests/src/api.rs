//! The node's HTTP API as the client sees it. These functions run inside the
//! client namespace (on the [`crate::netns::NsExecutor`] thread): they open
//! sockets there.
//!
//! The transport is this module's own, not `tandem_api::Client`: one pooled
//! client per namespace thread, with a 150 ms connect timeout and a deadline per
//! request, so that a node cut off by a fault is seen as down within the polling
//! interval (the typed client waits up to 30 s). What comes back is decoded into
//! the `tandem_api` types: a renamed or missing field fails the call, naming the URL.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use tandem_api::{CdrFilter, CdrPage};
use uuid::Uuid;

pub use tandem_api::Health;

thread_local! {
    static HTTP: reqwest::Client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(150))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("building an HTTP client (TLS backend init)");
}

/// The HTTP client of the current (namespace) thread.
pub fn http() -> reqwest::Client {
    HTTP.with(|c| c.clone())
}

/// Base URL of an API at `ip`.
pub fn base(ip: impl std::fmt::Display) -> String {
    format!("http://{ip}:8080")
}

/// At most the first 500 characters of an answer, for error messages.
fn excerpt(body: &str) -> String {
    let mut s: String = body.chars().take(500).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

/// GET a JSON answer, decoded as the endpoint's documented type `T`.
pub async fn get_json<T: DeserializeOwned>(
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<T> {
    let mut req = http().get(url).timeout(timeout);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {}", excerpt(&body));
    }
    serde_json::from_str(&body).with_context(|| {
        format!(
            "GET {url}: not the documented answer (is the node the same version?): {}",
            excerpt(&body)
        )
    })
}

/// `/health` of the node at `ip`.
pub async fn health(ip: impl std::fmt::Display, timeout: Duration) -> anyhow::Result<Health> {
    get_json(&format!("{}/health", base(ip)), None, timeout).await
}

/// Every CDR id stored on the node at `ip` (its local copy), paging with the cursor.
pub async fn all_cdr_ids(ip: impl std::fmt::Display, token: &str) -> anyhow::Result<HashSet<Uuid>> {
    let mut ids = HashSet::new();
    let mut filter = CdrFilter {
        limit: Some(10_000),
        ..CdrFilter::default()
    };
    let b = base(ip);
    loop {
        let url = format!("{b}/api/v1/cdrs{}", filter.query_string("json"));
        let page: CdrPage = get_json(&url, Some(token), Duration::from_secs(10)).await?;
        ids.extend(page.cdrs.iter().map(|c| c.id));
        match page.next_cursor {
            Some(c) if !c.is_empty() => filter.cursor = Some(c),
            _ => return Ok(ids),
        }
    }
}

/// GET a body as bytes: (HTTP status, body). Any status is returned, only
/// transport errors are errors.
pub async fn get_bytes(
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut req = http().get(url).timeout(timeout);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    Ok((status, body.to_vec()))
}
