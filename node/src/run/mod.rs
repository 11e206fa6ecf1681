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
    identity::create_data_dir(&cfg)?;
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
        .with_context(|| {
            format!(
                "api.listen: cannot listen on {} — fix: another program (or another tandem) \
                 uses that port, stop it or choose another api.listen; a port below 1024 needs \
                 CAP_NET_BIND_SERVICE",
                cfg.api.listen
            )
        })?;
    tracing::info!(node = cfg.node.id, api = %cfg.api.listen, peer = %cfg.cluster.listen, "tandem node running");
    tasks.spawn("retention", retention::retention(replica.clone()));
    let stop = tasks.cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    let raft_stopped = watch_raft(&replica, &tasks);
    let app = crate::http::router(state);
    crate::http::serve::serve(
        listener,
        api_tls,
        app,
        crate::http::serve::Limits::default(),
        tasks.cancel.clone(),
    )
    .await;
    tracing::info!("shutting down");
    tasks.cancel.cancel();
    tasks.join(std::time::Duration::from_secs(5)).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), replica.raft.shutdown()).await;
    // The role driver ends once Raft has stopped (it lets go of the VIP first).
    tasks
        .join_after_raft(std::time::Duration::from_secs(5))
        .await;
    if let Some(why) = raft_stopped.get() {
        anyhow::bail!(
            "the Raft core stopped: {why}; the node exits so that systemd restarts it \
             (check the disk of node.data_dir: free space, errors in the kernel log)"
        );
    }
    Ok(())
}

/// Watches the Raft core: if it stops on its own (a storage error such as a full
/// disk), the node shuts down and `run` fails, so that the process exits non-zero
/// and systemd restarts it, instead of running on as a fenced node whose `/health`
/// looks alive. The reason, once it happened.
fn watch_raft(
    replica: &Arc<tandem_replication::replica::Replica>,
    tasks: &Tasks,
) -> Arc<std::sync::OnceLock<String>> {
    let stopped = Arc::new(std::sync::OnceLock::new());
    let (mut metrics, seen, stop) = (
        replica.raft.metrics(),
        stopped.clone(),
        tasks.cancel.clone(),
    );
    tokio::spawn(async move {
        loop {
            if let Err(e) = &metrics.borrow_and_update().running_state {
                tracing::error!(error = %e, "Raft core stopped: shutting down to be restarted");
                let _ = seen.set(e.to_string());
                stop.cancel();
                return;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    });
    stopped
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
