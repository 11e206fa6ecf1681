//! A node's identity on disk: the cluster CA and node certificate (`tandem init`), the
//! join token, the admin token, and what the node announces to the cluster.
//!
//! (Start-up itself is in `run/mod.rs`.)
//!
//! ```text
//!  config ─▶ ensure identity (auto-init when single node) ─▶ Replica::start ─▶ initialize?
//!                                                               │
//!                                           HTTP API (axum) ◀───┘ ─▶ wait for SIGTERM/Ctrl-C
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use tandem_replication::replica::ReplicaConfig;
use tandem_replication::tls::{ClusterCa, JoinToken, NodeIdentity, ServiceNames};
use tandem_replication::types::NodeInfo;

use crate::config::Config;

/// The member description this node announces to the cluster.
pub fn node_info(cfg: &Config) -> NodeInfo {
    NodeInfo {
        addr: cfg.advertise(),
        api: cfg.api.listen.to_string(),
        name: cfg.node_name(),
        kind: cfg.node.role,
    }
}

pub fn replica_config(cfg: &Config) -> ReplicaConfig {
    ReplicaConfig {
        id: cfg.node.id,
        info: node_info(cfg),
        data_dir: cfg.node.data_dir.clone(),
        listen: cfg.cluster.listen,
        heartbeat_ms: cfg.cluster.heartbeat_ms,
        rpc_timeout_ms: cfg.cluster.rpc_timeout_ms(),
        election_timeout_min_ms: cfg.cluster.election_timeout_min_ms,
        election_timeout_max_ms: cfg.cluster.election_timeout_max_ms,
        snapshot_logs: cfg.cluster.snapshot_logs,
        cache_mb: cfg.cluster.cache_mb,
        min_free_bytes: cfg.cluster.min_free_mb << 20,
        recording_cap_kbps: cfg.replication.recording_bandwidth_kbps,
        tls_dir: cfg.tls_dir(),
        admin_token_file: cfg.token_file(),
        service_hosts: cfg
            .vip_address()
            .map(|ip| ip.to_string())
            .into_iter()
            .collect(),
    }
}

/// The names this node's certificate carries for its HTTPS API: its peer and API
/// addresses, its name, the machine's host name and the VIP (plus the loopback
/// names every certificate has). A joiner's certificate gets the same from the node
/// that signs it (`Joins::handle`).
pub fn service_names(cfg: &Config) -> ServiceNames {
    let info = node_info(cfg);
    let mut names = ServiceNames::default();
    for host in [&info.addr, &info.api, &info.name] {
        names.add_host(host);
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.add_host(&h);
    }
    if let Some(vip) = cfg.vip_address() {
        names.add_host(&vip.to_string());
    }
    names
}

/// Marker: this node created the cluster and must initialize Raft on first start.
pub(crate) fn bootstrap_marker(cfg: &Config) -> std::path::PathBuf {
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
    create_data_dir(cfg)?;
    let ca = ClusterCa::generate(&cfg.cluster.name)?;
    ca.save(&dir)?;
    ca.issue_identity_for(cfg.node.id, &service_names(cfg))?
        .save(&dir)?;
    let token = JoinToken::generate(&ca);
    write_private(&dir.join("join.token"), token.to_string().as_bytes())?;
    std::fs::write(bootstrap_marker(cfg), b"initialize on first start\n")?;
    // The cluster-wide admin token: created here, handed to every node that joins.
    admin_token(cfg)?;
    Ok(token)
}

/// Read the join token this node created with `init`.
pub fn read_join_token(cfg: &Config) -> anyhow::Result<String> {
    cfg.read_join_token().map_err(anyhow::Error::msg)
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

/// Creates `node.data_dir` (and its parents); the error names the key, the
/// directory and the fix.
pub fn create_data_dir(cfg: &Config) -> anyhow::Result<()> {
    let dir = &cfg.node.data_dir;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "node.data_dir: cannot create {} — fix: create it and give it to the user tandem \
             runs as (the package uses /var/lib/tandem, owner tandem), or point node.data_dir \
             at a writable directory",
            dir.display()
        )
    })
}
