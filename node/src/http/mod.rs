//! The HTTP API (axum): health, cluster, config, CDRs, recordings, SIP, alarms, metrics.
//!
//! Reads are served from this node's local state (stale reads) with headers that say
//! how fresh it is; `consistency=strong` first runs a Raft read-index barrier through
//! the leader. Writes sent to a standby are forwarded to the master by the replica.
//! Every bad input gets a 4xx with `{"error": "..."}` naming the problem.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::routing::{get, post};
use axum::Router;

pub mod alarms;
pub mod auth;
pub mod cdrs;
pub mod cluster;
pub mod config;
pub mod error;
pub mod export;
pub mod metrics;
pub mod params;
pub mod recordings;
pub mod scrape;
pub mod serve;
pub mod sip;
pub mod state;
pub mod tls;

pub use error::ApiError;
pub use state::AppState;

/// Most rows one JSON page returns.
pub const MAX_LIMIT: usize = 10_000;
/// Most CDRs one POST may carry.
pub const MAX_BATCH: usize = 10_000;
/// Largest request body.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest config key.
pub const MAX_KEY: usize = 200;

pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/cluster", get(cluster::cluster))
        .route("/cluster/leave", post(cluster::leave))
        .route("/cluster/join-token", get(cluster::join_token))
        .route("/cluster/switchover", post(cluster::switchover))
        .route("/config", get(config::config_list))
        .route(
            "/config/{key}",
            get(config::config_get)
                .put(config::config_put)
                .delete(config::config_delete),
        )
        .route("/cdrs", post(cdrs::cdrs_post).get(cdrs::cdrs_get))
        .route(
            "/recordings",
            post(recordings::upload)
                .get(recordings::list)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/recordings/verify", post(recordings::verify))
        .route("/recordings/{id}", get(recordings::download))
        .route("/sip/users", get(sip::users_list))
        .route(
            "/sip/users/{ext}",
            axum::routing::put(sip::user_put).delete(sip::user_delete),
        )
        .route("/sip/status", get(sip::status))
        .route("/alarms", get(alarms::alarms_status))
        .route("/alarms/history", get(alarms::alarms_history))
        .route("/alarms/test", post(alarms::alarms_test))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(cluster::health))
        .route("/metrics", get(scrape::metrics))
        .nest("/api/v1", admin)
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}; see docs/api.md", uri.path()),
            )
        })
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            scrape::observe,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
