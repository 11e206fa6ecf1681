//! The state every handler shares: the replica, the role state, the alarm mailer, metrics.

use std::sync::Arc;

use axum::extract::State;
use tandem_replication::replica::Replica;

use crate::config::Config;
use crate::http::metrics::Metrics;
use tandem_failover::state::RoleState;

pub struct AppState {
    pub replica: Arc<Replica>,
    pub roles: Arc<RoleState>,
    pub(crate) token: String,
    pub cfg: Config,
    pub metrics: Metrics,
    /// The alarm mailer of this node (see `alarms::service`).
    pub alarms: Arc<tandem_alarms::service::AlarmService>,
    /// The telephony service, once started (data nodes).
    pub sip: std::sync::OnceLock<Arc<dyn TelephonyStatus>>,
    /// Failed API logins per client address (`POST /api/v1/login`).
    pub(crate) login_throttle: std::sync::Mutex<crate::http::throttle::LoginThrottle>,
}

impl AppState {
    pub fn new(
        replica: Arc<Replica>,
        roles: Arc<RoleState>,
        alarms: Arc<tandem_alarms::service::AlarmService>,
        token: String,
        cfg: Config,
    ) -> AppState {
        AppState {
            replica,
            roles,
            token,
            cfg,
            metrics: Metrics::new(),
            alarms,
            sip: std::sync::OnceLock::new(),
            login_throttle: Default::default(),
        }
    }
}

pub(crate) type St = State<Arc<AppState>>;

/// What the HTTP layer reads of the telephony service (implemented by
/// `run::telephony::SipRuntime`): its status for `/api/v1/sip/status`, its metrics.
pub trait TelephonyStatus: Send + Sync {
    /// The service's state, calls in progress and counters.
    fn status(&self) -> tandem_api::SipServiceState;
    /// Prometheus text of the service's counters.
    fn metrics_text(&self) -> String;
}
