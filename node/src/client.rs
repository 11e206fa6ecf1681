//! A small HTTP client for the CLI commands that talk to a running node.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::Config;

pub struct Client {
    http: reqwest::Client,
    pub base: String,
    token: Option<String>,
}

/// Turn a listen address into one a client can connect to (0.0.0.0 → 127.0.0.1).
pub fn connectable(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    }
}

impl Client {
    pub fn new(base: String, token: Option<String>) -> anyhow::Result<Client> {
        Client::with_root(base, token, None)
    }

    /// A client that also trusts `root_pem` (the API's own certificate or its CA).
    pub fn with_root(
        base: String,
        token: Option<String>,
        root_pem: Option<&[u8]>,
    ) -> anyhow::Result<Client> {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(pem) = root_pem {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(pem).context("API certificate is not PEM")?,
            );
        }
        Ok(Client {
            http: b.build()?,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Client for the node described by `cfg`, with `api`/`token` overrides. With
    /// `[api] tls_cert` set it uses HTTPS and trusts that certificate (typically
    /// self-signed on an appliance).
    pub fn for_config(
        cfg: &Config,
        api: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<Client> {
        let scheme = if cfg.api.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let base = api.unwrap_or_else(|| format!("{scheme}://{}", connectable(&cfg.api.listen)));
        let token = match token {
            Some(t) => Some(t),
            None => std::fs::read_to_string(cfg.token_file())
                .ok()
                .map(|t| t.trim().to_string()),
        };
        let root = match &cfg.api.tls_cert {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("api.tls_cert: reading {}", p.display()))?,
            ),
            None => None,
        };
        Client::with_root(base, token, root.as_deref())
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn finish(
        &self,
        what: &str,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> anyhow::Result<(u16, Value)> {
        let resp = resp.with_context(|| {
            format!(
                "{what}: cannot reach the node API at {} (is `tandem run` running?)",
                self.base
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{what}: HTTP {status}: {msg}");
        }
        Ok((status, body))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.req(reqwest::Method::GET, path).send().await;
        Ok(self.finish(&format!("GET {path}"), r).await?.1)
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let r = self.req(method.clone(), path).json(body).send().await;
        self.finish(&format!("{method} {path}"), r).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let r = self
            .req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        self.finish(&format!("POST {path}"), r).await
    }

    /// Stream a file as the body of a POST (recording upload); `headers` are extra
    /// request headers. Returns the status and the JSON answer.
    pub async fn upload(
        &self,
        path: &str,
        file: &std::path::Path,
        headers: &[(&str, String)],
    ) -> anyhow::Result<(u16, Value)> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().await?.len();
        let mut r = self
            .req(reqwest::Method::POST, path)
            .timeout(Duration::from_secs(3600))
            .header("content-length", len)
            .body(reqwest::Body::from(f));
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let resp = r.send().await;
        self.finish(&format!("POST {path}"), resp).await
    }

    /// Stream a GET body to `out` (for CSV export).
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> anyhow::Result<u64> {
        let mut resp = self
            .req(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .with_context(|| format!("GET {path}: cannot reach the node API at {}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("GET {path}: HTTP {status}: {text}");
        }
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        out.flush()?;
        Ok(n)
    }
}
