//! `GET /metrics` (Prometheus text) and the middleware that counts every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::state::St;

/// Counts every request by route, method and status (see `Metrics::observe_request`).
pub(crate) async fn observe(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .observe_request(&route, &method, resp.status().as_u16(), t0.elapsed());
    resp
}

pub(crate) async fn metrics(State(st): St) -> Response {
    let mut text = st
        .metrics
        .render(&st.replica, &st.roles, st.alarms.counters());
    if let Some(sip) = st.sip.get() {
        text.push_str(&sip.metrics_text());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
