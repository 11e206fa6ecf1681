//! `tandem run`: the only wiring of a node's parts.
//!
//! ```text
//!  config ─▶ identity (auto-init when single node) ─▶ Replica::start ─▶ initialize?
//!     ─▶ role driver (role.rs) ─▶ alarm mailer ─▶ telephony (telephony.rs, data nodes)
//!     ─▶ retention (retention.rs) ─▶ HTTP API (crate::http) ─▶ wait for SIGTERM/Ctrl-C
//! ```

pub mod identity;
pub mod retention;
pub mod role;
pub mod telephony;

use std::sync::Arc;

use anyhow::{bail, Context};
use tandem_replication::replica::Replica;
use tandem_replication::tls::NodeIdentity;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, NodeRole};
use identity::{admin_token, bootstrap_marker, init, node_info, replica_config};

/// Run the node until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Check the API certificate before touching anything else.
    let api_tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::server_config(cert, key)?),
        _ => None,
    };
    std::fs::create_dir_all(&cfg.node.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.node.data_dir.display()))?;
    // First start (also when `init` runs implicitly below): the token is printed once.
    let first_start = !cfg.token_file().exists();
    if !NodeIdentity::exists(&cfg.tls_dir()) {
        if cfg.cluster.peers.iter().any(|p| p.id != cfg.node.id) {
            bail!(
                "{}: no node certificate. On the first node run `tandem init --config FILE`; on the \
                 others `tandem join <first-node-peer-addr> --token T --config FILE`",
                cfg.tls_dir().display()
            );
        }
        let token = init(&cfg)?;
        tracing::info!(
            "single-node cluster initialized; join token written to {}",
            cfg.tls_dir().join("join.token").display()
        );
        let _ = token;
    }
    let (token, created) = admin_token(&cfg)?;
    if created || first_start {
        // Printed once, on first start; afterwards it is only in the file (mode 0600).
        println!(
            "admin token (also in {}): {token}",
            cfg.token_file().display()
        );
    }
    let replica = Replica::start(replica_config(&cfg)).await?;
    if bootstrap_marker(&cfg).exists() {
        let mut members = std::collections::BTreeMap::new();
        members.insert(cfg.node.id, node_info(&cfg));
        replica.initialize(members).await?;
        std::fs::remove_file(bootstrap_marker(&cfg))?;
    }
    let tasks = Tasks::new();
    let roles = role::start(replica.clone(), &cfg, &tasks).await?;
    let alarms = tandem_alarms::service::AlarmService::new(tandem_alarms::service::Identity {
        cluster: cfg.cluster.name.clone(),
        node: cfg.node_name(),
        tls_dir: cfg.tls_dir(),
    });
    let (drive, deliver) = alarms.jobs(replica.clone(), roles.clone());
    tasks.spawn("alarm driver", drive);
    tasks.spawn("alarm delivery", deliver);
    let state = Arc::new(crate::http::AppState::new(
        replica.clone(),
        roles.clone(),
        alarms.clone(),
        token,
        cfg.clone(),
    ));
    if cfg.node.role == NodeRole::Data {
        let sip = telephony::start(&cfg, replica.clone(), alarms, roles, &tasks).await;
        let _ = state.sip.set(sip);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("api.listen: cannot listen on {}", cfg.api.listen))?;
    tracing::info!(node = cfg.node.id, api = %cfg.api.listen, peer = %cfg.cluster.listen, "tandem node running");
    tasks.spawn("retention", retention::retention(replica.clone()));
    let stop = tasks.cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    let app = crate::http::router(state);
    match api_tls {
        Some(tls) => {
            let listener = crate::http::tls::TlsListener::new(listener, tls)?;
            // The client address goes to the audit log.
            let app = app.into_make_service_with_connect_info::<crate::http::tls::TlsClientAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(tasks.cancel.clone().cancelled_owned())
                .await
                .context("HTTPS API server")?;
        }
        None => axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(tasks.cancel.clone().cancelled_owned())
        .await
        .context("HTTP API server")?,
    }
    tracing::info!("shutting down");
    tasks.cancel.cancel();
    tasks.join(std::time::Duration::from_secs(5)).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), replica.raft.shutdown()).await;
    // The role driver ends once Raft has stopped (it lets go of the VIP first).
    tasks
        .join_after_raft(std::time::Duration::from_secs(5))
        .await;
    Ok(())
}

/// The node's long-running tasks: one cancellation token for all, and trackers so
/// that shutdown waits for each to end (no task outlives `run`).
pub struct Tasks {
    /// Cancelled on SIGTERM / Ctrl-C (or when the API server stops).
    pub cancel: CancellationToken,
    tracker: TaskTracker,
    /// Tasks that must outlive the cancellation and end when Raft stops (the role
    /// driver: it releases the VIP when Raft's metrics channel closes).
    after_raft: TaskTracker,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            after_raft: TaskTracker::new(),
        }
    }

    /// Run `job` until it ends or the node shuts down.
    pub fn spawn<F>(&self, name: &'static str, job: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            if cancel.run_until_cancelled(job).await.is_some() {
                tracing::debug!(task = name, "task ended");
            }
        });
    }

    /// Run `job` to its own end (not cancelled); joined after Raft has stopped.
    pub fn spawn_until_raft_stops<F>(&self, name: &'static str, job: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.after_raft.spawn(async move {
            job.await;
            tracing::debug!(task = name, "task ended");
        });
    }

    /// Wait (at most `limit`) for the tasks that end with Raft.
    async fn join_after_raft(&self, limit: std::time::Duration) {
        self.after_raft.close();
        if tokio::time::timeout(limit, self.after_raft.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.after_raft.len(),
                "role driver still running {limit:?} after Raft stopped"
            );
        }
    }

    /// Wait (at most `limit`) for every task to end after the cancellation.
    async fn join(&self, limit: std::time::Duration) {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tracker.len(),
                "tasks still running {limit:?} after shutdown began"
            );
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
