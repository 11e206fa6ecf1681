//! The failover driver: feeds the pure [`Controller`] with Raft metrics, clock ticks
//! and the maintenance flag, and performs its actions (VIP via netlink, announcements,
//! the VIP guard, role hooks, election switch).
//!
//! ```text
//!  raft.metrics() ─changed─┐
//!  25 ms tick ─────────────┼─▶ Controller::handle(event, now) ─▶ actions ─▶ Vip / announce / guard / hooks
//!  config maintenance.<id> ┘
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tandem_failover::announce;
use tandem_failover::controller::{
    Action, Controller, ControllerConfig, Event, Kind, RaftState, RaftView, Role,
};
use tandem_failover::guard::GuardHandle;
use tandem_failover::hooks::Hooks;
use tandem_failover::vip::{Vip, VipSpec};
use tandem_replication::replica::Replica;
use tandem_replication::store::query;
use tandem_replication::types::{MemberKind, RaftMetrics};

use crate::config::{Config, NodeRole};
pub use tandem_failover::state::RoleState;

pub use crate::settings::maintenance_key;

fn raft_view(m: &RaftMetrics) -> RaftView {
    RaftView {
        state: match m.state {
            ServerState::Leader => RaftState::Leader,
            ServerState::Follower => RaftState::Follower,
            ServerState::Candidate => RaftState::Candidate,
            ServerState::Learner => RaftState::Learner,
            ServerState::Shutdown => RaftState::Shutdown,
        },
        term: m.current_term,
        leader: m.current_leader,
        quorum_ack_age: m.millis_since_quorum_ack.map(Duration::from_millis),
        voters: m.membership_config.membership().voter_ids().count(),
    }
}

/// The VIP spec of a config, if a VIP is configured on a data node.
pub fn vip_spec(cfg: &Config) -> Option<VipSpec> {
    let address = cfg.vip_address()?;
    if cfg.node.role == NodeRole::Witness {
        return None;
    }
    Some(VipSpec {
        address,
        prefix: cfg
            .vip_prefix()
            .unwrap_or(if address.is_ipv4() { 24 } else { 64 }),
        interface: cfg
            .vip
            .interface
            .clone()
            .unwrap_or_else(|| "eth0".to_string()),
    })
}

/// Kernel lifetime of the VIP: a backstop behind the guard, in whole seconds.
pub const VIP_LIFETIME: Duration = Duration::from_secs(2);

/// Start the driver task; returns the shared role state.
pub async fn start(replica: Arc<Replica>, cfg: &Config) -> anyhow::Result<Arc<RoleState>> {
    let spec = vip_spec(cfg);
    let lease = Duration::from_millis(cfg.cluster.lease_ms);
    let kind = match replica.info.kind {
        MemberKind::Data => Kind::Data,
        MemberKind::Witness => Kind::Witness,
    };
    let (controller, initial) = Controller::new(ControllerConfig {
        kind,
        lease,
        refresh_every: (lease / 3).max(Duration::from_millis(20)),
        has_vip: spec.is_some(),
    });
    let state = Arc::new(RoleState {
        role: Mutex::new(controller.role()),
        role_watch: tokio::sync::watch::Sender::new(controller.role()),
        vip_held: AtomicBool::new(false),
        maintenance: AtomicBool::new(false),
        role_changes: AtomicU64::new(0),
        vip_acquired: AtomicU64::new(0),
        lease_age_max_ms: AtomicU64::new(0),
        has_vip: spec.is_some(),
        unreachable: Mutex::new(Default::default()),
    });
    let (vip, guard) = match &spec {
        Some(spec) => {
            let vip = Vip::open(spec.clone())
                .await
                .map_err(|e| anyhow::anyhow!("[vip]: {e}"))?;
            let exe = std::env::current_exe()?;
            let guard = GuardHandle::spawn(&exe, spec, lease)
                .map_err(|e| anyhow::anyhow!("starting the VIP guard: {e}"))?;
            (Some(vip), Some(guard))
        }
        None => (None, None),
    };
    let hooks = Hooks {
        on_master: cfg.hooks.on_master.clone(),
        on_standby: cfg.hooks.on_standby.clone(),
        on_fenced: cfg.hooks.on_fenced.clone(),
        timeout: Duration::from_millis(cfg.hooks.timeout_ms),
    };
    let mut driver = Driver {
        replica,
        controller,
        vip,
        guard,
        hooks,
        state: state.clone(),
        garp_count: cfg.vip.garp_count,
        garp_interval: Duration::from_millis(cfg.vip.garp_interval_ms),
        switchover_running: Arc::new(AtomicBool::new(false)),
        election_max: Duration::from_millis(cfg.cluster.election_timeout_max_ms),
        last_fast_elect: None,
        leader_since: None,
    };
    driver.perform(initial).await;
    tokio::spawn(driver.run());
    Ok(state)
}

struct Driver {
    replica: Arc<Replica>,
    controller: Controller,
    vip: Option<Vip>,
    guard: Option<GuardHandle>,
    hooks: Hooks,
    state: Arc<RoleState>,
    garp_count: u32,
    garp_interval: Duration,
    switchover_running: Arc<AtomicBool>,
    /// `election_timeout_max_ms`: followers refuse votes for this long after hearing
    /// the leader (openraft's leader lease), so a takeover cannot start earlier.
    election_max: Duration,
    last_fast_elect: Option<Instant>,
    /// When this node last became leader (members are judged only after a grace period).
    leader_since: Option<Instant>,
}

/// Stagger between standbys starting a fast takeover (lowest id first), so that two
/// standbys do not split the vote.
pub const TAKEOVER_STAGGER: Duration = Duration::from_millis(80);
/// Election timeouts without a leader after which a witness campaigns to rescue the
/// data nodes (see `witness_rescue_due`).
pub const WITNESS_RESCUE_AFTER: u32 = 3;
/// Pause between two rescue campaigns of a witness.
pub const WITNESS_RESCUE_RETRY: Duration = Duration::from_millis(150);

impl Driver {
    /// On the master: which members stopped answering (no RPC answer for twice the
    /// election timeout). Each change is a structured alarm event in the log.
    fn watch_members(&mut self, now: Instant) {
        let m = self.replica.metrics();
        let mut down = std::collections::BTreeSet::new();
        if m.state == ServerState::Leader
            && self
                .leader_since
                .is_some_and(|t| now.duration_since(t) > 2 * self.election_max)
        {
            let limit = (2 * self.election_max).as_millis() as u64;
            for member in self.replica.members() {
                if member.id != self.replica.id
                    && member.voter
                    && member.last_contact_ms.is_none_or(|ms| ms > limit)
                {
                    down.insert(member.id);
                }
            }
        }
        if m.state == ServerState::Leader {
            self.leader_since.get_or_insert(now);
        } else {
            self.leader_since = None;
        }
        let mut current = self.state.unreachable.lock().expect("unreachable lock");
        if *current == down {
            return;
        }
        let kind_of = |id: u64| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.kind)
                .unwrap_or(MemberKind::Data)
        };
        for id in down.difference(&current) {
            let alarm = if kind_of(*id) == MemberKind::Witness {
                "cluster.witness_lost"
            } else {
                "cluster.node_down"
            };
            tracing::warn!(
                alarm,
                node = id,
                state = "raised",
                "alarm: member {id} does not answer the master"
            );
        }
        for id in current.difference(&down) {
            let alarm = if kind_of(*id) == MemberKind::Witness {
                "cluster.witness_lost"
            } else {
                "cluster.node_down"
            };
            tracing::info!(
                alarm,
                node = id,
                state = "cleared",
                "alarm cleared: member {id} answers again"
            );
        }
        *current = down;
    }

    /// Fast takeover: openraft 0.9 followers wait `election_timeout_max` (their leader
    /// lease) *plus* a random election timeout before campaigning. A standby that has
    /// heard nothing from the leader for the lease (plus a per-node stagger) starts the
    /// election at once instead: votes are granted from then on, and the old master's
    /// own lease (`lease_ms` < election timeout) has long expired.
    fn fast_takeover_due(&mut self, now: Instant) -> bool {
        if self.replica.info.kind == MemberKind::Witness {
            return self.witness_rescue_due(now);
        }
        if self.replica.info.kind != MemberKind::Data
            || !self.replica.elect_allowed()
            || self.controller.maintenance()
        {
            return false;
        }
        let m = self.replica.metrics();
        if m.state != ServerState::Follower {
            return false;
        }
        let Some(silence) = self.replica.since_leader_contact(now) else {
            return false;
        };
        let membership = m.membership_config.membership();
        let mut standbys: Vec<u64> = membership
            .voter_ids()
            .filter(|id| Some(*id) != m.current_leader)
            .filter(|id| {
                membership
                    .get_node(id)
                    .is_some_and(|n| n.kind == MemberKind::Data)
            })
            .collect();
        standbys.sort_unstable();
        let rank = standbys
            .iter()
            .position(|id| *id == self.replica.id)
            .unwrap_or(0) as u32;
        let wait = self.election_max + Duration::from_millis(15) + TAKEOVER_STAGGER * rank;
        if silence < wait {
            return false;
        }
        if self
            .last_fast_elect
            .is_some_and(|t| now.duration_since(t) < self.election_max)
        {
            return false;
        }
        self.last_fast_elect = Some(now);
        tracing::info!(
            silence_ms = silence.as_millis() as u64,
            rank,
            "no word from the leader: starting an election (fast takeover)"
        );
        true
    }

    /// Witness rescue. A witness never campaigns on its own, but it may hold log
    /// entries that the surviving data node lacks (the dead master replicated them to
    /// the witness first): that data node can then never win the witness's vote
    /// (Raft §5.4.1), and without the witness it has no majority. When no leader has
    /// been heard for one election timeout and a data node has just asked for this
    /// witness's vote with a log behind the witness's (refused: it cannot win), or
    /// for `WITNESS_RESCUE_AFTER` election timeouts in any case, the witness
    /// campaigns itself; as leader it only brings the data
    /// nodes up to date and hands leadership to one of them at once (replica
    /// `leader_duties`). It never holds the VIP or runs the telephony service.
    fn witness_rescue_due(&mut self, now: Instant) -> bool {
        let m = self.replica.metrics();
        if m.state == ServerState::Leader {
            return false;
        }
        let Some(silence) = self.replica.since_leader_contact(now) else {
            return false;
        };
        // A data node that asked for this witness's vote with a log behind the
        // witness's cannot win: rescue at once. Otherwise give the data nodes
        // WITNESS_RESCUE_AFTER election timeouts (one may still be on its way).
        let stale_candidate = self
            .replica
            .since_stale_candidate(now)
            .is_some_and(|d| d < self.election_max);
        let wait = if stale_candidate {
            self.election_max
        } else {
            self.election_max * WITNESS_RESCUE_AFTER
        };
        if silence < wait {
            return false;
        }
        // Retried soon: a failed attempt (the data node, still campaigning, was at a
        // higher term) taught this witness that term, and the next attempt must come
        // before the data node's own next campaign raises it again.
        if self
            .last_fast_elect
            .is_some_and(|t| now.duration_since(t) < WITNESS_RESCUE_RETRY)
        {
            return false;
        }
        self.last_fast_elect = Some(now);
        tracing::warn!(
            silence_ms = silence.as_millis() as u64,
            "witness: no data node became master; campaigning to hand this witness's log to a data node (it then hands leadership over)"
        );
        true
    }

    async fn run(mut self) {
        let mut metrics = self.replica.raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stepping_down = false;
        let mut last_maintenance_check = Instant::now() - Duration::from_secs(1);
        loop {
            let event = tokio::select! {
                r = metrics.changed() => match r {
                    // Only a *new* report refreshes the lease clock (a frozen Raft core
                    // sends none, so the lease ages out).
                    Ok(()) => Event::Raft(raft_view(&metrics.borrow_and_update())),
                    Err(_) => break,
                },
                _ = tick.tick() => Event::Tick,
            };
            let now = Instant::now();
            let mut actions = Vec::new();
            if now.duration_since(last_maintenance_check) >= Duration::from_millis(200) {
                last_maintenance_check = now;
                let key = maintenance_key(self.replica.id);
                let on = query::config_get(&self.replica.tree(), &key)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.value == "true");
                if on != self.controller.maintenance() {
                    tracing::info!(maintenance = on, "maintenance mode changed");
                    self.state.maintenance.store(on, Ordering::SeqCst);
                    actions.extend(self.controller.handle(Event::Maintenance(on), now));
                }
            }
            let sd = self.replica.is_stepping_down();
            if sd != stepping_down {
                stepping_down = sd;
                actions.extend(self.controller.handle(Event::SteppingDown(sd), now));
            }
            // Measured before the event, which may be the acknowledgement that ends
            // the wait: the age just before it is the longest of that wait.
            if self.controller.role() == Role::Master {
                if let Some(age) = self.controller.lease_age(now) {
                    self.state
                        .lease_age_max_ms
                        .fetch_max(age.as_millis() as u64, Ordering::Relaxed);
                }
            }
            actions.extend(self.controller.handle(event, now));
            self.perform(actions).await;
            if matches!(event, Event::Tick) {
                self.watch_members(now);
            }
            if matches!(event, Event::Tick) && self.fast_takeover_due(now) {
                let replica = self.replica.clone();
                tokio::spawn(async move {
                    if let Err(e) = replica.campaign_now().await {
                        tracing::warn!(error = %e, "could not start the election");
                    }
                });
            }
            // A leader in maintenance hands the master role to another node.
            if self.controller.maintenance()
                && self.replica.is_leader()
                && !self.switchover_running.swap(true, Ordering::SeqCst)
            {
                let (replica, flag) = (self.replica.clone(), self.switchover_running.clone());
                tokio::spawn(async move {
                    match replica.switchover(None).await {
                        Ok(to) => tracing::info!(to, "maintenance: master role handed over"),
                        Err(e) => {
                            tracing::warn!(error = %e, "maintenance: could not hand over the master role; retrying")
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    flag.store(false, Ordering::SeqCst);
                });
            }
        }
        // Raft stopped: let go of the VIP.
        let actions = self.controller.handle(
            Event::Raft(RaftView {
                state: RaftState::Shutdown,
                term: 0,
                leader: None,
                quorum_ack_age: None,
                voters: 0,
            }),
            Instant::now(),
        );
        self.perform(actions).await;
        if let Some(vip) = &self.vip {
            let _ = vip.remove().await;
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::AcquireVip => {
                    let Some(vip) = &self.vip else { continue };
                    match vip.add_or_refresh(VIP_LIFETIME).await {
                        Ok(()) => {
                            self.state.vip_held.store(true, Ordering::SeqCst);
                            self.state.vip_acquired.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(address = %vip.spec().address, interface = %vip.spec().interface, "VIP acquired");
                            if let Some(g) = &mut self.guard {
                                let _ = g.hold().await;
                            }
                            let (iface, mac, ip) =
                                (vip.spec().interface.clone(), vip.mac(), vip.spec().address);
                            let (count, interval) = (self.garp_count, self.garp_interval);
                            tokio::spawn(async move {
                                if let Err(e) =
                                    announce::announce(&iface, mac, ip, count, interval).await
                                {
                                    tracing::warn!(error = %e, "VIP announcement failed");
                                }
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "could not add the VIP"),
                    }
                }
                Action::RefreshVip => {
                    let Some(vip) = &self.vip else { continue };
                    if let Err(e) = vip.add_or_refresh(VIP_LIFETIME).await {
                        tracing::warn!(error = %e, "could not refresh the VIP");
                    }
                    if let Some(g) = &mut self.guard {
                        let _ = g.hold().await;
                    }
                }
                Action::ReleaseVip => {
                    if let Some(g) = &mut self.guard {
                        let _ = g.release().await;
                    }
                    if let Some(vip) = &self.vip {
                        match vip.remove().await {
                            Ok(was) => {
                                if was {
                                    tracing::info!(address = %vip.spec().address, "VIP released");
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "could not remove the VIP"),
                        }
                    }
                    self.state.vip_held.store(false, Ordering::SeqCst);
                }
                Action::RunHook(role) => {
                    self.hooks.spawn(role);
                }
                Action::SetElect(allowed) => self.replica.set_elect(allowed),
                Action::RoleChanged { from, to, reason } => {
                    *self.state.role.lock().expect("role lock") = to;
                    self.state.role_watch.send_replace(to);
                    self.state.role_changes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%from, %to, ?reason, node = self.replica.id, "role changed");
                }
            }
        }
    }
}
