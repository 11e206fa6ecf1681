//! `/health` and `/api/v1/cluster`: roles, leader, lag, members; switchover, leave, join token.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;
use tandem_replication::replica::Replica;
use tandem_replication::types::MemberKind;

use tandem_failover::state::RoleState;

use crate::http::error::ApiError;
use crate::http::params::*;
use crate::http::state::St;
pub(crate) async fn health(State(st): St) -> Json<serde_json::Value> {
    let r = &st.replica;
    let m = r.metrics();
    Json(json!({
        "node_id": r.id,
        "role": st.roles.role().as_str(),
        "leader_id": m.current_leader,
        "term": m.current_term,
        "applied_index": m.last_applied.map(|l| l.index).unwrap_or(0),
        "commit_index": r.commit_index(),
        "vip_held": st.roles.vip_held(),
    }))
}

/// The cluster view shown by `tandem status`.
pub fn cluster_view(r: &Replica, roles: &RoleState) -> serde_json::Value {
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
    json!({
        "node_id": r.id,
        "role": roles.role().as_str(),
        "vip_held": roles.vip_held(),
        "maintenance": roles.maintenance(),
        "unreachable": roles.unreachable(),
        "leader_id": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index.unwrap_or(0),
        "commit_index": r.commit_index(),
        "applied_index": m.last_applied.map(|l| l.index).unwrap_or(0),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "lag": lag,
        "voters": voters,
        "data_voters": data_voters,
        "quorum": voters / 2 + 1,
        "vip_holder": vip_holder,
        "members": members,
        "notes": notes,
        "recording_sync": r.blobs.as_ref().map(|_| r.blob_stats.backlog()),
    })
}

pub(crate) async fn cluster(State(st): St) -> Json<serde_json::Value> {
    Json(cluster_view(&st.replica, &st.roles))
}

pub(crate) async fn switchover(
    State(st): St,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let to = match optional_field(&body, "to")? {
        None => None,
        Some(x) => Some(
            x.as_u64()
                .ok_or_else(|| ApiError::bad("to: expected a node id (integer)"))?,
        ),
    };
    let t0 = Instant::now();
    let leader = st.replica.switchover(to).await?;
    Ok(Json(
        json!({ "master": leader, "took_ms": t0.elapsed().as_millis() as u64 }),
    ))
}

pub(crate) async fn leave(State(st): St) -> Result<Json<serde_json::Value>, ApiError> {
    st.replica.remove_node(st.replica.id).await?;
    Ok(Json(json!({ "removed": st.replica.id })))
}

/// The join token of the cluster, served by the node that ran `tandem init` (the only
/// one holding the CA key, so the only one that can admit a node). Lets an installer or
/// an operator fetch it remotely with the admin token.
pub(crate) async fn join_token(State(st): St) -> Result<Json<serde_json::Value>, ApiError> {
    match st.cfg.read_join_token() {
        Ok(token) => Ok(Json(json!({ "token": token, "node_id": st.replica.id }))),
        Err(e) => Err(ApiError::new(StatusCode::NOT_FOUND, e)),
    }
}
