//! The HTTP API (axum): health, cluster, config, CDRs, recordings, SIP, alarms, metrics,
//! users and the audit log. Every route is in one table ([`routes`]) with who may call it.
//!
//! Reads are served from this node's local state (stale reads) with headers that say
//! how fresh it is; `consistency=strong` first runs a Raft read-index barrier through
//! the leader. Writes sent to a standby are forwarded to the master by the replica.
//! Every bad input gets a 4xx with `{"error": "..."}` naming the problem.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware::{self};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

pub mod alarms;
pub mod audit;
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
pub mod throttle;
pub mod tls;
pub mod users;

pub use auth::{Access, Audit, RouteSpec};
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

/// One entry of [`routes`]: what the permission check and the tests see, and the
/// handler.
struct Entry {
    spec: RouteSpec,
    handler: MethodRouter<Arc<AppState>>,
}

fn r<H, T>(method: Method, path: &'static str, access: Access, audit: Audit, h: H) -> Entry
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
    Entry {
        spec: RouteSpec {
            method,
            path,
            access,
            audit,
        },
        handler: on(filter, h),
    }
}

/// Every route of the API with who may call it and whether it is audited: the one
/// table the router is built from ([`router`]) and the permission tests walk
/// ([`route_table`]). A route cannot exist without an [`Access`].
#[rustfmt::skip] // one route per line: the table reads as the permission matrix
fn routes() -> Vec<Entry> {
    use tandem_api::Role::{Admin, Operator, Reporting};
    use Access::{Authenticated, ConfigKey, Public, Role};
    use Audit::{Export, No, Yes};
    use Method as M;
    vec![
        r(M::GET,    "/health",                          Public,          No,     cluster::health),
        r(M::GET,    "/metrics",                         Public,          No,     scrape::metrics),
        r(M::POST,   "/api/v1/login",                    Public,          No,     users::login),
        r(M::GET,    "/api/v1/whoami",                   Authenticated,   No,     users::whoami),
        r(M::POST,   "/api/v1/logout",                   Authenticated,   Yes,    users::logout),
        r(M::GET,    "/api/v1/cluster",                  Role(Reporting), No,     cluster::cluster),
        r(M::POST,   "/api/v1/cluster/leave",            Role(Admin),     Yes,    cluster::leave),
        r(M::GET,    "/api/v1/cluster/join-token",       Role(Admin),     Yes,    cluster::join_token),
        r(M::POST,   "/api/v1/cluster/switchover",       Role(Operator),  Yes,    cluster::switchover),
        r(M::GET,    "/api/v1/config",                   Role(Operator),  No,     config::config_list),
        r(M::GET,    "/api/v1/config/{key}",             ConfigKey,       No,     config::config_get),
        r(M::PUT,    "/api/v1/config/{key}",             ConfigKey,       Yes,    config::config_put),
        r(M::DELETE, "/api/v1/config/{key}",             ConfigKey,       Yes,    config::config_delete),
        r(M::POST,   "/api/v1/cdrs",                     Role(Operator),  No,     cdrs::cdrs_post),
        r(M::GET,    "/api/v1/cdrs",                     Role(Reporting), Export, cdrs::cdrs_get),
        r(M::POST,   "/api/v1/recordings",               Role(Operator),  No,     recordings::upload),
        r(M::GET,    "/api/v1/recordings",               Role(Reporting), No,     recordings::list),
        r(M::POST,   "/api/v1/recordings/verify",        Role(Operator),  No,     recordings::verify),
        r(M::GET,    "/api/v1/recordings/{id}",          Role(Reporting), Yes,    recordings::download),
        r(M::GET,    "/api/v1/sip/users",                Role(Operator),  No,     sip::users_list),
        r(M::PUT,    "/api/v1/sip/users/{ext}",          Role(Operator),  Yes,    sip::user_put),
        r(M::DELETE, "/api/v1/sip/users/{ext}",          Role(Operator),  Yes,    sip::user_delete),
        r(M::GET,    "/api/v1/sip/status",               Role(Operator),  No,     sip::status),
        r(M::GET,    "/api/v1/alarms",                   Role(Operator),  No,     alarms::alarms_status),
        r(M::GET,    "/api/v1/alarms/history",           Role(Operator),  No,     alarms::alarms_history),
        r(M::POST,   "/api/v1/alarms/test",              Role(Operator),  Yes,    alarms::alarms_test),
        r(M::GET,    "/api/v1/users",                    Role(Admin),     No,     users::users_list),
        r(M::POST,   "/api/v1/users",                    Role(Admin),     Yes,    users::user_create),
        r(M::GET,    "/api/v1/users/{name}",             Role(Admin),     No,     users::user_get),
        r(M::PUT,    "/api/v1/users/{name}",             Role(Admin),     Yes,    users::user_update),
        r(M::DELETE, "/api/v1/users/{name}",             Role(Admin),     Yes,    users::user_delete),
        r(M::POST,   "/api/v1/users/{name}/tokens",      Role(Admin),     Yes,    users::token_create),
        r(M::DELETE, "/api/v1/users/{name}/tokens/{id}", Role(Admin),     Yes,    users::token_revoke),
        r(M::GET,    "/api/v1/audit",                    Role(Admin),     No,     audit::audit_get),
    ]
}

/// The route table (method, path, access, audit) as the router uses it.
pub fn route_table() -> Vec<RouteSpec> {
    routes().into_iter().map(|e| e.spec).collect()
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for Entry { spec, mut handler } in routes() {
        if spec.path == "/api/v1/recordings" && spec.method == Method::POST {
            // Recording uploads stream files of any size.
            handler = handler.layer(DefaultBodyLimit::disable());
        }
        let path = spec.path;
        let st = state.clone();
        handler = handler.route_layer(middleware::from_fn(move |req, next| {
            auth::authorize(st.clone(), spec.clone(), req, next)
        }));
        router = router.route(path, handler);
    }
    router
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
