//! The node's HTTP API as the client sees it. These functions run inside the
//! client namespace (on the [`crate::netns::NsExecutor`] thread): they open
//! sockets there.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

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

/// `GET /health` of a node.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub node_id: u64,
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    #[serde(default)]
    pub applied_index: u64,
    #[serde(default)]
    pub commit_index: u64,
    #[serde(default)]
    pub vip_held: bool,
}

/// Base URL of an API at `ip`.
pub fn base(ip: impl std::fmt::Display) -> String {
    format!("http://{ip}:8080")
}

/// GET a JSON document.
pub async fn get_json(url: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<Value> {
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
        bail!("GET {url}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
}

/// `/health` of the node at `ip`.
pub async fn health(ip: impl std::fmt::Display, timeout: Duration) -> anyhow::Result<Health> {
    let v = get_json(&format!("{}/health", base(ip)), None, timeout).await?;
    Ok(serde_json::from_value(v)?)
}

/// Every CDR id stored on the node at `ip` (its local copy), paging with the cursor.
pub async fn all_cdr_ids(ip: impl std::fmt::Display, token: &str) -> anyhow::Result<HashSet<Uuid>> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    let b = base(ip);
    loop {
        let url = match &cursor {
            None => format!("{b}/api/v1/cdrs?limit=10000"),
            Some(c) => format!("{b}/api/v1/cdrs?limit=10000&cursor={c}"),
        };
        let v = get_json(&url, Some(token), Duration::from_secs(10)).await?;
        for c in v["cdrs"].as_array().into_iter().flatten() {
            if let Some(id) = c["id"].as_str().and_then(|s| s.parse().ok()) {
                ids.insert(id);
            }
        }
        match v["next_cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
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
