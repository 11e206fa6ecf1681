//! `/health` and `/api/v1/cluster`: roles, leader, lag, members; switchover, leave, join token.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tandem_api as api;
use tandem_replication::blobs::sync::Backlog;
use tandem_replication::replica::{MemberStatus, Replica};
use tandem_replication::types::MemberKind;

use tandem_failover::state::RoleState;

use crate::http::error::ApiError;
use crate::http::params::*;
use crate::http::state::St;

/// `GET /health` (no token).
/// `GET /health`: 200 while the Raft core runs, 503 once it stopped (the node is
/// about to exit and be restarted; a load balancer must not send traffic here).
pub(crate) async fn health(State(st): St) -> (StatusCode, Json<api::Health>) {
    let r = &st.replica;
    let m = r.metrics();
    let status = if m.running_state.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(api::Health {
            node_id: r.id,
            role: st.roles.role().as_str().to_string(),
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            commit_index: r.commit_index(),
            vip_held: st.roles.vip_held(),
        }),
    )
}

/// The cluster view shown by `tandem status`.
pub fn cluster_view(r: &Replica, roles: &RoleState) -> api::ClusterView {
    let m = r.metrics();
    let members = r.members();
    let voters = members.iter().filter(|x| x.voter).count();
    let data_voters = members
        .iter()
        .filter(|x| x.voter && x.kind == MemberKind::Data)
        .count();
    let mut notes = Vec::new();
    if voters == 2 {
        notes.push(
            "2 voters: a write needs both; if either is down the cluster cannot commit. Add a witness (3rd voter) for automatic failover."
                .to_string(),
        );
    }
    if voters % 2 == 0 && voters > 2 {
        notes.push(format!(
            "{voters} voters: an even count tolerates no more failures than {} voters",
            voters - 1
        ));
    }
    if m.current_leader.is_none() {
        notes.push("no leader: election in progress or quorum lost; writes are refused".into());
    }
    if voters == 2 && data_voters == 2 {
        notes.push(
            "2 data nodes and no witness: the master role is never taken over automatically (no majority after a failure); add a witness"
                .to_string(),
        );
    }
    for id in roles.unreachable() {
        notes.push(format!("member {id} does not answer the master"));
    }
    if roles.maintenance() {
        notes.push("this node is in maintenance: it will not become master".into());
    }
    let lag = r.lag();
    let vip_holder = if roles.vip_held() {
        Some(r.id)
    } else if roles.has_vip {
        m.current_leader
    } else {
        None
    };
    api::ClusterView {
        node_id: r.id,
        role: roles.role().as_str().to_string(),
        vip_held: roles.vip_held(),
        maintenance: roles.maintenance(),
        unreachable: roles.unreachable(),
        leader_id: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        commit_index: r.commit_index(),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        lag: api::Lag {
            entries: lag.entries,
            ms: lag.ms,
        },
        voters,
        data_voters,
        quorum: voters / 2 + 1,
        vip_holder,
        members: members.into_iter().map(member).collect(),
        notes,
        recording_sync: r.blobs.as_ref().map(|_| sync_view(r.blob_stats.backlog())),
    }
}

fn member(m: MemberStatus) -> api::Member {
    api::Member {
        id: m.id,
        name: m.name,
        kind: m.kind,
        addr: m.addr,
        api: m.api,
        voter: m.voter,
        matched_index: m.matched_index,
        lag_entries: m.lag_entries,
        lag_ms: m.lag_ms,
        last_contact_ms: m.last_contact_ms,
    }
}

/// The recording-sync backlog as the API shows it.
pub(crate) fn sync_view(b: Backlog) -> api::RecordingSync {
    api::RecordingSync {
        files: b.files,
        bytes: b.bytes,
        rate_bytes_per_s: b.rate_bytes_per_s,
        eta_s: b.eta_s,
        cap_bytes_per_s: b.cap_bytes_per_s,
    }
}

/// `GET /api/v1/cluster`.
pub(crate) async fn cluster(State(st): St) -> Json<api::ClusterView> {
    Json(cluster_view(&st.replica, &st.roles))
}

/// The body of `POST /api/v1/cluster/switchover`: empty, or `{"to": <node id>}`.
pub fn switchover_target(body: &[u8]) -> Result<Option<u64>, ApiError> {
    match optional_field(body, "to")? {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad("to: expected a node id (integer)")),
    }
}

pub(crate) async fn switchover(
    State(st): St,
    body: Bytes,
) -> Result<Json<api::Switchover>, ApiError> {
    let to = switchover_target(&body)?;
    let t0 = Instant::now();
    let leader = st.replica.switchover(to).await?;
    Ok(Json(api::Switchover {
        master: leader,
        took_ms: t0.elapsed().as_millis() as u64,
    }))
}

pub(crate) async fn leave(State(st): St) -> Result<Json<api::Left>, ApiError> {
    st.replica.remove_node(st.replica.id).await?;
    Ok(Json(api::Left {
        removed: st.replica.id,
    }))
}

/// The join token of the cluster, served by the node that ran `tandem init` (the only
/// one holding the CA key, so the only one that can admit a node). Lets an installer or
/// an operator fetch it remotely with the admin token.
pub(crate) async fn join_token(State(st): St) -> Result<Json<api::JoinTokenInfo>, ApiError> {
    match st.cfg.read_join_token() {
        Ok(token) => Ok(Json(api::JoinTokenInfo {
            token,
            node_id: st.replica.id,
        })),
        Err(e) => Err(ApiError::new(StatusCode::NOT_FOUND, e)),
    }
}
