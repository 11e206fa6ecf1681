//! `tandem run`: wire the replica, the admin token and the HTTP API together.
//!
//! ```text
//!  config ─▶ ensure identity (auto-init when single node) ─▶ Replica::start ─▶ initialize?
//!                                                               │
//!                                           HTTP API (axum) ◀───┘ ─▶ wait for SIGTERM/Ctrl-C
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tandem_replication::replica::{Replica, ReplicaConfig};
use tandem_replication::tls::{ClusterCa, JoinToken, NodeIdentity};
use tandem_replication::types::{MemberKind, NodeInfo};

use crate::config::{Config, NodeRole};

/// The member description this node announces to the cluster.
pub fn node_info(cfg: &Config) -> NodeInfo {
    NodeInfo {
        addr: cfg.advertise(),
        api: cfg.api.listen.clone(),
        name: cfg.node_name(),
        kind: match cfg.node.role {
            NodeRole::Data => MemberKind::Data,
            NodeRole::Witness => MemberKind::Witness,
        },
    }
}

pub fn replica_config(cfg: &Config) -> ReplicaConfig {
    ReplicaConfig {
        id: cfg.node.id,
        info: node_info(cfg),
        data_dir: cfg.node.data_dir.clone(),
        listen: cfg.cluster.listen.clone(),
        heartbeat_ms: cfg.cluster.heartbeat_ms,
        rpc_timeout_ms: cfg.cluster.rpc_timeout_ms(),
        election_timeout_min_ms: cfg.cluster.election_timeout_min_ms,
        election_timeout_max_ms: cfg.cluster.election_timeout_max_ms,
        snapshot_logs: cfg.cluster.snapshot_logs,
        cache_mb: cfg.cluster.cache_mb,
        recording_cap_kbps: cfg.replication.recording_bandwidth_kbps,
        tls_dir: cfg.tls_dir(),
        admin_token_file: cfg.token_file(),
    }
}

/// Marker: this node created the cluster and must initialize Raft on first start.
fn bootstrap_marker(cfg: &Config) -> std::path::PathBuf {
    cfg.node.data_dir.join("bootstrap")
}

/// `tandem init`: create the cluster CA, this node's certificate and a join token.
/// Returns the token to give to joining nodes.
pub fn init(cfg: &Config) -> anyhow::Result<JoinToken> {
    let dir = cfg.tls_dir();
    if NodeIdentity::exists(&dir) {
        bail!(
            "{} already holds a node certificate: this node is already initialized or joined \
             (remove the data dir {} to start over)",
            dir.display(),
            cfg.node.data_dir.display()
        );
    }
    std::fs::create_dir_all(&cfg.node.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.node.data_dir.display()))?;
    let ca = ClusterCa::generate(&cfg.cluster.name)?;
    ca.save(&dir)?;
    ca.issue_identity(cfg.node.id)?.save(&dir)?;
    let token = JoinToken::generate(&ca);
    write_private(&dir.join("join.token"), token.to_string().as_bytes())?;
    std::fs::write(bootstrap_marker(cfg), b"initialize on first start\n")?;
    // The cluster-wide admin token: created here, handed to every node that joins.
    admin_token(cfg)?;
    Ok(token)
}

/// Read the join token this node created with `init`.
pub fn read_join_token(cfg: &Config) -> anyhow::Result<String> {
    let p = cfg.tls_dir().join("join.token");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| {
            format!(
                "{}: no join token here (only the node that ran `tandem init` has one)",
                p.display()
            )
        })?
        .trim()
        .to_string())
}

/// Write a file readable by root only (mode 0600).
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Load the admin token, creating it on first start. Returns (token, created now).
pub fn admin_token(cfg: &Config) -> anyhow::Result<(String, bool)> {
    let path = cfg.token_file();
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok((t.trim().to_string(), false)),
        _ => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let token = hex::encode(rand::random::<[u8; 24]>());
            write_private(&path, format!("{token}\n").as_bytes())?;
            Ok((token, true))
        }
    }
}

/// Run the node until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Check the API certificate before touching anything else.
    let api_tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(cert), Some(key)) => Some(crate::https::server_config(cert, key)?),
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
    let roles = crate::role::start(replica.clone(), &cfg).await?;
    let alarms = crate::alarms::service::AlarmService::start(replica.clone(), roles.clone(), &cfg);
    let state = Arc::new(crate::api::AppState::new(
        replica.clone(),
        roles.clone(),
        alarms.clone(),
        token,
        cfg.clone(),
    ));
    if cfg.node.role == NodeRole::Data {
        let sip = crate::telephony::start(&cfg, replica.clone(), alarms, roles).await;
        let _ = state.sip.set(sip);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("api.listen: cannot listen on {}", cfg.api.listen))?;
    tracing::info!(node = cfg.node.id, api = %cfg.api.listen, peer = %cfg.cluster.listen, "tandem node running");
    tokio::spawn(crate::recordings::retention(state.clone()));
    let app = crate::api::router(state);
    match api_tls {
        Some(tls) => {
            let listener = crate::https::TlsListener::new(listener, tls)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("HTTPS API server")?;
        }
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("HTTP API server")?,
    }
    tracing::info!("shutting down");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), replica.raft.shutdown()).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
