//! Switchover: moving leadership to another data node without losing a write, and
//! this node's side of it (campaigning when the leader asks, the election switch of
//! maintenance mode).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{RPCError, RemoteError};
use openraft::ServerState;

use super::duties::leader_view;
use crate::error::{InvalidRequest, Refusal};
use crate::network::{self, Contacts, PeerClient, RpcRequest, RpcResponse};
use crate::policy::{self, PolicyConfig};
use crate::types::{MemberKind, NodeId, Raft, RaftMetrics};
use crate::{Error, Result};

/// How long a hand-over waits for its target to catch up, and a campaign to win.
const PATIENCE: Duration = Duration::from_secs(5);

pub(super) struct Switchover {
    id: NodeId,
    kind: MemberKind,
    raft: Raft,
    client_tls: Arc<rustls::ClientConfig>,
    /// Contact ages of the members (the target choice prefers reachable ones).
    contacts: Contacts,
    policy: PolicyConfig,
    /// Set while this leader hands over leadership: new writes are refused (the
    /// caller retries on the new leader), so none is lost in the switch.
    stepping_down: AtomicBool,
    /// Whether this node may campaign (false for witnesses and in maintenance).
    elect_allowed: AtomicBool,
}

impl Switchover {
    pub(super) fn new(
        id: NodeId,
        kind: MemberKind,
        raft: Raft,
        client_tls: Arc<rustls::ClientConfig>,
        contacts: Contacts,
        policy: PolicyConfig,
    ) -> Switchover {
        Switchover {
            id,
            kind,
            raft,
            client_tls,
            contacts,
            policy,
            stepping_down: AtomicBool::new(false),
            elect_allowed: AtomicBool::new(kind == MemberKind::Data),
        }
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub(super) fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(SeqCst)
    }

    pub(super) fn elect_allowed(&self) -> bool {
        self.elect_allowed.load(SeqCst)
    }

    /// Allow or forbid this node to start elections (maintenance mode). Witnesses
    /// never campaign whatever is asked.
    pub(super) fn set_elect(&self, allowed: bool) {
        let allowed = allowed && self.kind == MemberKind::Data;
        self.elect_allowed.store(allowed, SeqCst);
        self.raft.runtime_config().elect(allowed);
    }

    /// Start an election now (fast takeover, see the failover driver).
    pub(super) async fn campaign_now(&self) -> Result<()> {
        Ok(self.raft.trigger().elect().await?)
    }

    /// Graceful leadership transfer, run on the leader (openraft 0.9 has no
    /// transfer-leader call):
    /// 1. refuse new writes (callers retry on the new leader) and let the target catch
    ///    up to our last log index;
    /// 2. stop heartbeats and our own campaigning, so followers' leader lease runs out;
    /// 3. ask the target to campaign; its log is the most complete, so it wins;
    /// 4. resume as a follower.
    pub(super) async fn run(&self, to: Option<NodeId>) -> Result<NodeId> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(Error::NoLeader);
        }
        let view = leader_view(self.id, self.kind, &m, &self.contacts, Instant::now());
        let target_id =
            policy::switchover_target(&view, &self.policy, to).map_err(Error::invalid)?;
        let target_info = m
            .membership_config
            .membership()
            .get_node(&target_id)
            .cloned()
            .ok_or(Error::invalid(InvalidRequest::NotADataVoter {
                node: target_id,
            }))?;
        tracing::info!(from = self.id, to = target_id, "switchover: starting");
        self.stepping_down.store(true, SeqCst);
        let result = async {
            // 1. Target catches up with everything we have.
            let deadline = Instant::now() + PATIENCE;
            self.wait_caught_up(target_id, &target_info.addr, deadline)
                .await?;
            // 2. Let the followers' leader lease lapse.
            self.raft.runtime_config().heartbeat(false);
            self.raft.runtime_config().elect(false);
            // A write accepted just before the switchover started may have been
            // appended after the check above: the target must hold it too, or the
            // other voters refuse it their vote (its log would be behind).
            self.wait_caught_up(target_id, &target_info.addr, deadline)
                .await?;
            // 3. Ask the target to campaign until it wins.
            self.ask_to_campaign(target_id, &target_info.addr).await
        }
        .await;
        // 4. Back to normal, whatever happened.
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(self.elect_allowed());
        self.stepping_down.store(false, SeqCst);
        match &result {
            Ok(t) => tracing::info!(from = self.id, to = *t, "switchover: done"),
            Err(e) => {
                tracing::warn!(error = %e, "switchover failed; this node resumes as leader if it still is")
            }
        }
        result
    }

    async fn ask_to_campaign(&self, target: NodeId, addr: &str) -> Result<NodeId> {
        let mut client = PeerClient::new(target, addr.to_string(), self.client_tls.clone());
        let peer_err = |source| Error::Peer {
            peer: Some(target),
            addr: addr.to_string(),
            rpc: "elect",
            source,
        };
        match client
            .call(&RpcRequest::Elect, Duration::from_secs(10))
            .await
        {
            Ok(RpcResponse::Elected(Ok(()))) => Ok(target),
            Ok(RpcResponse::Elected(Err(reason))) => Err(peer_err(Box::new(
                RPCError::RemoteError(RemoteError::new(target, Refusal { reason })),
            ))),
            Ok(other) => Err(Error::UnexpectedReply {
                peer: Some(target),
                addr: addr.to_string(),
                rpc: "elect",
                got: other.kind(),
            }),
            Err(e) => Err(peer_err(Box::new(network::rpc_error(e)))),
        }
    }

    /// Wait until `target` holds every entry of this leader's log.
    async fn wait_caught_up(&self, target: NodeId, addr: &str, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        loop {
            let m = self.metrics();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).copied().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if matched >= last {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::CatchUpTimeout {
                    peer: target,
                    addr: addr.to_string(),
                    matched,
                    last,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Campaign until this node is leader (asked by the leader during a switchover).
    pub(super) async fn campaign(&self) -> Result<()> {
        /// How long a refused candidacy waits before a fresh election.
        const RECAMPAIGN: Duration = Duration::from_millis(60);
        let started = Instant::now();
        let term_at_start = self.metrics().current_term;
        let mut last_elect = started;
        while started.elapsed() < PATIENCE {
            let m = self.metrics();
            if m.state == ServerState::Leader {
                return Ok(());
            }
            // Another node won an election held since the hand-over began: stop, a
            // new election would only take the master role away from it again.
            if let Some(leader) = m.current_leader.filter(|l| *l != self.id) {
                if m.current_term > term_at_start {
                    return Err(Error::NotElected {
                        node: self.id,
                        waited: started.elapsed(),
                        elected_instead: Some((leader, m.current_term)),
                    });
                }
            }
            // The first vote requests go out while the other voters still hold the
            // old leader's lease (election_timeout_max after its last heartbeat) and
            // are refused; openraft would then keep this node a candidate for a whole
            // election timeout, long enough for another standby's fast takeover to
            // win instead. A fresh election every RECAMPAIGN wins as soon as the
            // leases lapse.
            if m.state != ServerState::Candidate || last_elect.elapsed() >= RECAMPAIGN {
                self.raft.trigger().elect().await?;
                last_elect = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::NotElected {
            node: self.id,
            waited: started.elapsed(),
            elected_instead: None,
        })
    }
}
