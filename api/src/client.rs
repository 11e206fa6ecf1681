//! [`Client`]: one typed method per endpoint of a node's API.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::*;

/// What can go wrong talking to a node's API. Each names the request and the node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (connection refused, timeout, TLS): the node may be down.
    #[error("{what}: cannot reach the node API at {base} (is `tandem run` running?): {source}")]
    Unreachable {
        what: String,
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error status; `message` is its `error` text.
    #[error("{what}: HTTP {status}: {message}")]
    Http {
        what: String,
        status: u16,
        message: String,
    },
    /// The node answered 2xx with a body that is not the documented shape.
    #[error("{what}: unexpected answer (is the node the same version?): {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A local file or stream failed (upload source, download target).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A bad client setting (certificate that is not PEM, …).
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The HTTP status of an error answer, if the node answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth retrying: no answer, or 503 (no leader yet, quorum lost, still starting).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
            || matches!(self, ClientError::Http { status: 503, .. })
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A typed client of one node's API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `http(s)://host:port`, no trailing slash.
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

/// An answer's status and raw body (for callers that check statuses themselves).
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The body decoded as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// The `error` text of an error answer (empty if the body has none).
    pub fn error(&self) -> String {
        self.json::<ErrorBody>()
            .map(|e| e.error)
            .unwrap_or_default()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub fn new(base: String, token: Option<String>) -> Result<Client> {
        Client::with_root(base, token, None)
    }

    /// A client that also trusts `root_pem` (the API's own certificate or its CA).
    pub fn with_root(
        base: String,
        token: Option<String>,
        root_pem: Option<&[u8]>,
    ) -> Result<Client> {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(pem) = root_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Setup(format!("API certificate is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(ClientError::Setup(
                    "API certificate file holds no PEM certificate".into(),
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Client {
            http: b
                .build()
                .map_err(|e| ClientError::Setup(format!("HTTP client: {e}")))?,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The same node with another (or no) bearer token.
    pub fn with_token(&self, token: Option<String>) -> Client {
        Client {
            token,
            ..self.clone()
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, what: &str, r: reqwest::RequestBuilder) -> Result<RawAnswer> {
        let resp = r.send().await.map_err(|source| ClientError::Unreachable {
            what: what.to_string(),
            base: self.base.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                what: what.to_string(),
                base: self.base.clone(),
                source,
            })?
            .to_vec();
        Ok(RawAnswer {
            status,
            headers,
            body,
        })
    }

    fn decode<T: DeserializeOwned>(what: &str, a: RawAnswer) -> Result<(u16, T)> {
        if a.status >= 400 {
            let message = match a.json::<ErrorBody>() {
                Ok(e) => e.error,
                Err(_) => String::from_utf8_lossy(&a.body).into_owned(),
            };
            return Err(ClientError::Http {
                what: what.to_string(),
                status: a.status,
                message,
            });
        }
        let v = a.json().map_err(|source| ClientError::Decode {
            what: what.to_string(),
            source,
        })?;
        Ok((a.status, v))
    }

    /// Any request; the answer as it came (no status check).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawAnswer> {
        let what = format!("{method} {path}");
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        self.send(&what, r).await
    }

    /// GET `path`, decoded as `T` (error statuses are errors).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let what = format!("GET {path}");
        let a = self
            .send(&what, self.req(reqwest::Method::GET, path))
            .await?;
        Ok(Self::decode(&what, a)?.1)
    }

    /// `method path` with a JSON body; the status and the decoded answer.
    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<(u16, T)> {
        let what = format!("{method} {path}");
        let a = self.send(&what, self.req(method, path).json(body)).await?;
        Self::decode(&what, a)
    }

    /// POST raw bytes as JSON; the status and the decoded answer.
    pub async fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, T)> {
        let what = format!("POST {path}");
        let r = self
            .req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body);
        let a = self.send(&what, r).await?;
        Self::decode(&what, a)
    }

    // ---- cluster ----

    /// `GET /health` (no token needed).
    pub async fn health(&self) -> Result<Health> {
        self.get("/health").await
    }

    /// `GET /api/v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterView> {
        self.get("/api/v1/cluster").await
    }

    /// `POST /api/v1/cluster/switchover`.
    pub async fn switchover(&self, to: Option<u64>) -> Result<Switchover> {
        let req = SwitchoverRequest { to };
        Ok(self
            .send_json(reqwest::Method::POST, "/api/v1/cluster/switchover", &req)
            .await?
            .1)
    }

    /// `POST /api/v1/cluster/leave`: remove the node this client talks to.
    pub async fn leave(&self) -> Result<Left> {
        Ok(self
            .send_json(
                reqwest::Method::POST,
                "/api/v1/cluster/leave",
                &serde_json::json!({}),
            )
            .await?
            .1)
    }

    /// `GET /api/v1/cluster/join-token` (only the node that ran `tandem init`).
    pub async fn join_token(&self) -> Result<JoinTokenInfo> {
        self.get("/api/v1/cluster/join-token").await
    }

    // ---- config ----

    /// `GET /api/v1/config/{key}`.
    pub async fn config_get(&self, key: &str) -> Result<ConfigEntry> {
        self.get(&format!("/api/v1/config/{}", urlencode(key)))
            .await
    }

    /// `GET /api/v1/config?prefix=`.
    pub async fn config_list(&self, prefix: Option<&str>) -> Result<ConfigList> {
        let q = prefix
            .map(|p| format!("?prefix={}", urlencode(p)))
            .unwrap_or_default();
        self.get(&format!("/api/v1/config{q}")).await
    }

    /// `PUT /api/v1/config/{key}`: committed once this returns; true when created.
    pub async fn config_set(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(bool, ConfigEntry)> {
        let (status, e) = self
            .send_json(
                reqwest::Method::PUT,
                &format!("/api/v1/config/{}", urlencode(key)),
                value,
            )
            .await?;
        Ok((status == 201, e))
    }

    /// `PUT /api/v1/config/maintenance.{node}` (`tandem maintenance on|off`);
    /// `force` accepts putting the last data node that may be master in
    /// maintenance (the service stops).
    pub async fn maintenance_set(&self, node: u64, on: bool, force: bool) -> Result<ConfigEntry> {
        let path = format!(
            "/api/v1/config/maintenance.{node}{}",
            if force { "?force=true" } else { "" }
        );
        let (_, e) = self
            .send_json(reqwest::Method::PUT, &path, &serde_json::Value::Bool(on))
            .await?;
        Ok(e)
    }

    /// `DELETE /api/v1/config/{key}`.
    pub async fn config_delete(&self, key: &str) -> Result<ConfigDeleted> {
        let path = format!("/api/v1/config/{}", urlencode(key));
        self.delete(&format!("DELETE /api/v1/config/{key}"), &path)
            .await
    }

    // ---- CDRs ----

    /// `POST /api/v1/cdrs` (201 once committed).
    pub async fn cdrs_add(&self, cdrs: &[Cdr]) -> Result<CdrsAdded> {
        Ok(self
            .send_json(reqwest::Method::POST, "/api/v1/cdrs", cdrs)
            .await?
            .1)
    }

    /// `POST /api/v1/cdrs` with a body as the user gave it (one CDR or an array).
    pub async fn cdrs_add_raw(&self, body: Vec<u8>) -> Result<CdrsAdded> {
        Ok(self.post_raw("/api/v1/cdrs", body).await?.1)
    }

    /// `GET /api/v1/cdrs` (one JSON page).
    pub async fn cdrs_query(&self, filter: &CdrFilter) -> Result<CdrPage> {
        self.get(&format!("/api/v1/cdrs{}", filter.query_string("json")))
            .await
    }

    /// `GET /api/v1/cdrs?format=csv`, streamed into `out`; the bytes written.
    pub async fn cdrs_export(
        &self,
        filter: &CdrFilter,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64> {
        self.download(&format!("/api/v1/cdrs{}", filter.query_string("csv")), out)
            .await
    }

    // ---- alarms ----

    /// `GET /api/v1/alarms`.
    pub async fn alarms(&self) -> Result<AlarmStatus> {
        self.get("/api/v1/alarms").await
    }

    /// `GET /api/v1/alarms/history`.
    pub async fn alarm_history(&self) -> Result<AlarmHistory> {
        self.get("/api/v1/alarms/history").await
    }

    /// `POST /api/v1/alarms/test`.
    pub async fn alarm_test(&self, to: Option<String>) -> Result<AlarmTestSent> {
        Ok(self
            .send_json(
                reqwest::Method::POST,
                "/api/v1/alarms/test",
                &AlarmTestRequest { to },
            )
            .await?
            .1)
    }

    // ---- recordings ----

    /// `GET /api/v1/recordings` with its query string (`?state=&after=&limit=`).
    pub async fn recordings(&self, query: &str) -> Result<RecordingList> {
        self.get(&format!("/api/v1/recordings{query}")).await
    }

    /// `POST /api/v1/recordings/verify`.
    pub async fn recordings_verify(&self, id: Option<String>) -> Result<VerifyReport> {
        Ok(self
            .send_json(
                reqwest::Method::POST,
                "/api/v1/recordings/verify",
                &VerifyRequest { id },
            )
            .await?
            .1)
    }

    /// Stream a file as the body of `POST path` (recording upload); `headers` are
    /// extra request headers. 201 = stored (two copies), 202 = pending.
    pub async fn upload(
        &self,
        path: &str,
        file: &std::path::Path,
        headers: &[(&str, String)],
    ) -> Result<(u16, Recording)> {
        let what = format!("POST {path}");
        let io = |source| ClientError::Io {
            what: format!("{what}: {}", file.display()),
            source,
        };
        let f = tokio::fs::File::open(file).await.map_err(io)?;
        let len = f.metadata().await.map_err(io)?.len();
        let mut r = self
            .req(reqwest::Method::POST, path)
            .timeout(Duration::from_secs(3600))
            .header("content-length", len)
            .body(reqwest::Body::from(f));
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let a = self.send(&what, r).await?;
        Self::decode(&what, a)
    }

    /// Stream a GET body to `out` (CSV export, recording download); the bytes written.
    pub async fn download(&self, path: &str, out: &mut (dyn std::io::Write + Send)) -> Result<u64> {
        let what = format!("GET {path}");
        let unreachable = |source| ClientError::Unreachable {
            what: what.clone(),
            base: self.base.clone(),
            source,
        };
        let mut resp = self
            .req(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or(text);
            return Err(ClientError::Http {
                what,
                status,
                message,
            });
        }
        let io = |source| ClientError::Io {
            what: what.clone(),
            source,
        };
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            out.write_all(&chunk).map_err(io)?;
            n += chunk.len() as u64;
        }
        out.flush().map_err(io)?;
        Ok(n)
    }

    // ---- SIP ----

    /// `GET /api/v1/sip/users`.
    pub async fn sip_users(&self) -> Result<SipUsers> {
        self.get("/api/v1/sip/users").await
    }

    /// `PUT /api/v1/sip/users/{ext}`; true when created.
    pub async fn sip_user_put(&self, ext: &str, user: &SipUserPut) -> Result<(bool, SipUser)> {
        let (status, u) = self
            .send_json(
                reqwest::Method::PUT,
                &format!("/api/v1/sip/users/{}", urlencode(ext)),
                user,
            )
            .await?;
        Ok((status == 201, u))
    }

    /// `DELETE /api/v1/sip/users/{ext}`.
    pub async fn sip_user_delete(&self, ext: &str) -> Result<SipUserRemoved> {
        let path = format!("/api/v1/sip/users/{}", urlencode(ext));
        self.delete(&format!("DELETE /api/v1/sip/users/{ext}"), &path)
            .await
    }

    /// `GET /api/v1/sip/status`.
    pub async fn sip_status(&self) -> Result<SipStatusView> {
        self.get("/api/v1/sip/status").await
    }

    // ---- users, tokens, login, audit ----

    /// `DELETE path`, decoded as `T`.
    async fn delete<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T> {
        let a = self
            .send(what, self.req(reqwest::Method::DELETE, path))
            .await?;
        Ok(Self::decode(what, a)?.1)
    }

    /// `GET /api/v1/users`.
    pub async fn users(&self) -> Result<UserList> {
        self.get("/api/v1/users").await
    }

    /// `GET /api/v1/users/{name}`.
    pub async fn user(&self, name: &str) -> Result<UserInfo> {
        self.get(&format!("/api/v1/users/{}", urlencode(name)))
            .await
    }

    /// `POST /api/v1/users` (201; the token, if asked for, is shown only here).
    pub async fn user_create(&self, user: &UserCreate) -> Result<UserCreated> {
        Ok(self
            .send_json(reqwest::Method::POST, "/api/v1/users", user)
            .await?
            .1)
    }

    /// `PUT /api/v1/users/{name}`: change role and/or password.
    pub async fn user_update(&self, name: &str, change: &UserUpdate) -> Result<UserInfo> {
        let path = format!("/api/v1/users/{}", urlencode(name));
        Ok(self.send_json(reqwest::Method::PUT, &path, change).await?.1)
    }

    /// `DELETE /api/v1/users/{name}`.
    pub async fn user_delete(&self, name: &str) -> Result<UserRemoved> {
        let path = format!("/api/v1/users/{}", urlencode(name));
        self.delete(&format!("DELETE /api/v1/users/{name}"), &path)
            .await
    }

    /// `POST /api/v1/users/{name}/tokens`: a new token, shown once.
    pub async fn token_create(&self, name: &str, req: &TokenCreate) -> Result<IssuedToken> {
        let path = format!("/api/v1/users/{}/tokens", urlencode(name));
        Ok(self.send_json(reqwest::Method::POST, &path, req).await?.1)
    }

    /// `DELETE /api/v1/users/{name}/tokens/{id}`.
    pub async fn token_revoke(&self, name: &str, id: &str) -> Result<TokenRevoked> {
        let path = format!("/api/v1/users/{}/tokens/{}", urlencode(name), urlencode(id));
        self.delete(&format!("DELETE /api/v1/users/{name}/tokens/{id}"), &path)
            .await
    }

    /// `POST /api/v1/login` (no token needed): a session token.
    pub async fn login(&self, user: &str, password: &str) -> Result<LoginSession> {
        let req = LoginRequest {
            user: user.to_string(),
            password: password.to_string(),
        };
        Ok(self
            .send_json(reqwest::Method::POST, "/api/v1/login", &req)
            .await?
            .1)
    }

    /// `POST /api/v1/logout`: end the session whose token this client carries.
    pub async fn logout(&self) -> Result<TokenRevoked> {
        Ok(self
            .send_json(
                reqwest::Method::POST,
                "/api/v1/logout",
                &serde_json::json!({}),
            )
            .await?
            .1)
    }

    /// `GET /api/v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.get("/api/v1/whoami").await
    }

    /// `GET /api/v1/audit?limit=&since=` (since: RFC 3339).
    pub async fn audit(&self, limit: Option<usize>, since: Option<&str>) -> Result<AuditLog> {
        let mut q = Vec::new();
        if let Some(n) = limit {
            q.push(format!("limit={n}"));
        }
        if let Some(s) = since {
            q.push(format!("since={}", urlencode(s)));
        }
        let q = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        self.get(&format!("/api/v1/audit{q}")).await
    }
}
