//! The leader's background work: paced heartbeats, and the standing duties decided
//! by [`crate::policy`] (witness hand-over, learner promotion), carried out here.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, ServerState};
use tokio::sync::mpsc;

use super::Replica;
use crate::network::Contacts;
use crate::policy::{Decision, Event, LeaderDuties, LeaderView, Member};
use crate::types::{MemberKind, NodeId, RaftMetrics};

/// The cluster as the policy sees it: `m` and `contacts` are the leader's view
/// (matched indexes and contact ages are known on the leader only).
pub(super) fn leader_view(
    me: NodeId,
    my_kind: MemberKind,
    m: &RaftMetrics,
    contacts: &Contacts,
    now: Instant,
) -> LeaderView {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    LeaderView {
        me,
        my_kind,
        last_log_index: m.last_log_index.unwrap_or(0),
        members: membership
            .nodes()
            .map(|(id, info)| Member {
                id: *id,
                kind: info.kind,
                voter: voters.contains(id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index),
                contact_age: if *id == me {
                    Some(Duration::ZERO)
                } else {
                    contacts.last(*id).map(|t| now.saturating_duration_since(t))
                },
            })
            .collect(),
    }
}

/// On the leader, a heartbeat to every follower each `every` (openraft's own
/// heartbeat runs at the longer RPC timeout, see `ReplicaConfig::rpc_timeout_ms`).
/// A follower busy with an earlier request gets the heartbeat right after it.
pub(super) async fn heartbeat_pacer(replica: Weak<Replica>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = replica.upgrade() else { return };
        // Not while handing over (a switchover lets the followers' leader lease
        // lapse so the target can win; `trigger().heartbeat()` ignores openraft's
        // own heartbeat switch).
        if r.is_leader() && !r.is_stepping_down() && r.raft.trigger().heartbeat().await.is_err() {
            return; // Raft shut down
        }
    }
}

/// The leader's standing duties: a thin driver that shows the policy the cluster
/// as this leader sees it (every 20 ms) and carries out its decisions. It also
/// samples the leader's log index clock (per-follower lag in ms).
pub(super) async fn leader_duties(replica: Weak<Replica>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut duties: Option<LeaderDuties> = None;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    loop {
        tick.tick().await;
        let Some(r) = replica.upgrade() else { return };
        let duties = duties.get_or_insert_with(|| LeaderDuties::new(r.policy));
        let now = Instant::now();
        while done_rx.try_recv().is_ok() {
            duties.handle(Event::HandOverFinished, now);
        }
        let m = r.metrics();
        if m.state != ServerState::Leader {
            continue;
        }
        r.freshness.clock.record(m.last_log_index.unwrap_or(0), now);
        let view = leader_view(r.id, r.info.kind, &m, &r.contacts, now);
        for decision in duties.handle(Event::Tick(&view), now) {
            match decision {
                Decision::HandOver { to } => {
                    let (r, done) = (r.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        match r.switchover(Some(to)).await {
                            Ok(to) => {
                                tracing::info!(to, "witness handed leadership to a data node")
                            }
                            Err(e) => {
                                tracing::warn!(to, error = %e, "witness could not hand leadership over yet; will retry")
                            }
                        }
                        let _ = done.send(());
                    });
                }
                Decision::Promote { ids } => {
                    tracing::info!(ready = ?ids, "promoting caught-up learners to voters");
                    if let Err(e) = r
                        .raft
                        .change_membership(ChangeMembers::AddVoterIds(ids), false)
                        .await
                    {
                        tracing::warn!(error = %e, "promotion failed; will retry");
                    }
                }
            }
        }
    }
}
