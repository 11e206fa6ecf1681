//! `tandem init|join|leave|switchover|maintenance|status`.

use anyhow::Context;
use serde::Serialize;
use tandem_api::ClusterView;

use super::{connect, load_config, print, Common};
use crate::run::identity;

#[derive(Serialize)]
struct Initialized {
    node_id: u64,
    join_token: String,
    admin_token: String,
    tls_dir: std::path::PathBuf,
}

/// `tandem init`: create the cluster CA, this node's certificate and a join token.
pub fn init(common: &Common) -> anyhow::Result<()> {
    let cfg = load_config(common)?;
    let token = identity::init(&cfg)?;
    let admin = identity::admin_token(&cfg)?.0;
    let v = Initialized {
        node_id: cfg.node.id,
        join_token: token.to_string(),
        admin_token: admin.clone(),
        tls_dir: cfg.tls_dir(),
    };
    print(common, &v, |_| {
        format!(
            "cluster `{}` created; this node ({}) will form it on `tandem run`.\n\
             join token (give it to the other nodes, keep it secret):\n  {token}\n\
             admin API token (the same on every node; also in {}):\n  {admin}\n\
             on each other node: tandem join {} --token <token> --config <its config>",
            cfg.cluster.name,
            cfg.node.id,
            cfg.token_file().display(),
            cfg.advertise()
        )
    });
    Ok(())
}

#[derive(Serialize)]
struct JoinedMember {
    id: u64,
    addr: String,
}

#[derive(Serialize)]
struct Joined {
    node_id: u64,
    joined_via: String,
    members: Vec<JoinedMember>,
}

/// `tandem join <addr> --token T`: enroll this node with an existing cluster.
pub async fn join(common: &Common, addr: &str, join_token: &str) -> anyhow::Result<()> {
    let cfg = load_config(common)?;
    let token = join_token
        .parse()
        .map_err(|e| anyhow::anyhow!("join token: {e}"))?;
    std::fs::create_dir_all(&cfg.node.data_dir)
        .with_context(|| format!("creating {}", cfg.node.data_dir.display()))?;
    let acc = tandem_replication::replica::join(
        addr,
        &token,
        cfg.node.id,
        identity::node_info(&cfg),
        &cfg.tls_dir(),
    )
    .await?;
    if let Some(admin) = &acc.admin_token {
        identity::write_private(&cfg.token_file(), format!("{admin}\n").as_bytes())?;
    }
    let v = Joined {
        node_id: cfg.node.id,
        joined_via: addr.to_string(),
        members: acc
            .members
            .iter()
            .map(|(i, n)| JoinedMember {
                id: *i,
                addr: n.addr.clone(),
            })
            .collect(),
    };
    print(common, &v, |v| {
        format!(
            "node {} enrolled via {addr} and added as learner ({} members before it).\n\
             start it now: tandem run{}\nit becomes a voter once it has caught up.",
            v.node_id,
            v.members.len(),
            common
                .config
                .as_ref()
                .map(|p| format!(" --config {}", p.display()))
                .unwrap_or_default()
        )
    });
    Ok(())
}

/// `tandem leave`.
pub async fn leave(common: &Common) -> anyhow::Result<()> {
    let (_, c) = connect(common)?;
    let v = c.leave().await?;
    print(common, &v, |v| {
        format!(
            "node {} removed from the cluster; stop its service now",
            v.removed
        )
    });
    Ok(())
}

/// `tandem switchover [--to ID]`.
pub async fn switchover(common: &Common, to: Option<u64>) -> anyhow::Result<()> {
    let (_, c) = connect(common)?;
    let v = c.switchover(to).await?;
    print(common, &v, |v| {
        format!(
            "master is now node {} (switchover took {} ms)",
            v.master, v.took_ms
        )
    });
    Ok(())
}

#[derive(Serialize)]
struct Maintenance {
    node: u64,
    maintenance: bool,
    version: u64,
}

/// `tandem maintenance on|off [--node ID]`.
pub async fn maintenance(
    common: &Common,
    on: bool,
    node: Option<u64>,
    force: bool,
) -> anyhow::Result<()> {
    let (cfg, c) = connect(common)?;
    let id = node.unwrap_or(cfg.node.id);
    let e = c.maintenance_set(id, on, force).await?;
    let v = Maintenance {
        node: id,
        maintenance: on,
        version: e.version,
    };
    print(common, &v, |_| {
        if on {
            format!("node {id} is in maintenance: it will not become master (a master hands over within a second)")
        } else {
            format!("node {id} left maintenance: it may become master again")
        }
    });
    Ok(())
}

/// `tandem status`.
pub async fn status(common: &Common) -> anyhow::Result<()> {
    let (_, c) = connect(common)?;
    let v = c.cluster().await?;
    print(common, &v, status_text);
    Ok(())
}

fn opt(x: Option<u64>) -> String {
    x.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

/// Text of `tandem status`.
pub fn status_text(v: &ClusterView) -> String {
    let mut s = format!(
        "node {} — role {}, leader {}, term {}\nlog {} · commit {} · applied {} · lag {} entries / {} ms\n",
        v.node_id,
        v.role,
        v.leader_id.map(|x| x.to_string()).unwrap_or_else(|| "none".into()),
        v.term,
        v.last_log_index,
        v.commit_index,
        v.applied_index,
        v.lag.entries,
        v.lag.ms,
    );
    s.push_str(&format!(
        "{:<4} {:<12} {:<8} {:<6} {:<22} {:>10} {:>10}\n",
        "id", "name", "kind", "voter", "peer addr", "lag(ent)", "lag(ms)"
    ));
    for m in &v.members {
        let kind = match m.kind {
            tandem_api::MemberKind::Data => "data",
            tandem_api::MemberKind::Witness => "witness",
        };
        s.push_str(&format!(
            "{:<4} {:<12} {:<8} {:<6} {:<22} {:>10} {:>10}\n",
            m.id,
            m.name,
            kind,
            if m.voter { "yes" } else { "no" },
            m.addr,
            opt(m.lag_entries),
            opt(m.lag_ms),
        ));
    }
    if let Some(sync) = &v.recording_sync {
        let cap = if sync.cap_bytes_per_s == 0 {
            "unlimited".to_string()
        } else {
            format!("{} kB/s", sync.cap_bytes_per_s / 1000)
        };
        if sync.files == 0 {
            s.push_str(&format!("recording sync: up to date (cap {cap})\n"));
        } else {
            s.push_str(&format!(
                "recording sync backlog: {} files, {} MB, {} kB/s, ETA {} (cap {cap})\n",
                sync.files,
                sync.bytes / 1_000_000,
                sync.rate_bytes_per_s / 1000,
                sync.eta_s
                    .map(|e| format!("{e} s"))
                    .unwrap_or_else(|| "unknown".into()),
            ));
        }
    }
    for n in &v.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}
