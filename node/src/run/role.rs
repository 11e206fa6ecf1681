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
use tandem_replication::types::{MemberKind, RaftMetrics};

use crate::config::{Config, NodeRole};
pub use tandem_failover::state::RoleState;

pub use crate::settings::{in_maintenance, maintenance_key};

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
/// Start the role driver. It is tracked by `tasks` but not cancelled: it ends when
/// Raft stops, and releases the VIP on its way out.
pub async fn start(
    replica: Arc<Replica>,
    cfg: &Config,
    tasks: &super::Tasks,
) -> anyhow::Result<Arc<RoleState>> {
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
    let takeover =
        tandem_failover::takeover::Takeover::new(tandem_failover::takeover::TakeoverConfig {
            id: replica.id,
            kind,
            election_max: Duration::from_millis(cfg.cluster.election_timeout_max_ms),
        });
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
        takeover,
    };
    driver.perform(initial).await;
    tasks.spawn_until_raft_stops("role driver", driver.run());
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
    /// Fast takeover, witness rescue and the member-down report (pure, fed each tick).
    takeover: tandem_failover::takeover::Takeover,
}

impl Driver {
    /// Feed the takeover logic a view of the replica and perform what it decides:
    /// alarm events for members that stop (or start again) answering the master, and
    /// an election started at once (fast takeover, witness rescue).
    fn takeover(&mut self, now: Instant) {
        use tandem_failover::takeover::{Action as Takeover, CampaignReason, Member, View};
        let m = self.replica.metrics();
        let kind = |k: MemberKind| match k {
            MemberKind::Data => Kind::Data,
            MemberKind::Witness => Kind::Witness,
        };
        let view = View {
            state: raft_view(&m).state,
            term: m.current_term,
            leader: m.current_leader,
            members: self
                .replica
                .members()
                .into_iter()
                .map(|s| Member {
                    id: s.id,
                    kind: kind(s.kind),
                    voter: s.voter,
                    last_contact_ms: s.last_contact_ms,
                })
                .collect(),
            since_leader_contact: self.replica.since_leader_contact(now),
            since_stale_candidate: self.replica.since_stale_candidate(now),
            elect_allowed: self.replica.elect_allowed(),
            maintenance: self.controller.maintenance(),
        };
        let actions = self.takeover.handle(&view, now);
        if actions.is_empty() {
            return;
        }
        *self.state.unreachable.lock().expect("unreachable lock") =
            self.takeover.unreachable().clone();
        let alarm = |witness: bool| {
            if witness {
                "cluster.witness_lost"
            } else {
                "cluster.node_down"
            }
        };
        for action in actions {
            match action {
                Takeover::MemberDown { id, witness } => tracing::warn!(
                    alarm = alarm(witness),
                    node = id,
                    state = "raised",
                    "alarm: member {id} does not answer the master"
                ),
                Takeover::MemberUp { id, witness } => tracing::info!(
                    alarm = alarm(witness),
                    node = id,
                    state = "cleared",
                    "alarm cleared: member {id} answers again"
                ),
                Takeover::Campaign {
                    reason,
                    silence_ms,
                    rank,
                } => {
                    match reason {
                        CampaignReason::FastTakeover => tracing::info!(
                            silence_ms,
                            rank,
                            "no word from the leader: starting an election (fast takeover)"
                        ),
                        CampaignReason::WitnessRescue => tracing::warn!(
                            silence_ms,
                            "witness: no data node became master; campaigning to hand this witness's log to a data node (it then hands leadership over)"
                        ),
                    }
                    let replica = self.replica.clone();
                    tokio::spawn(async move {
                        if let Err(e) = replica.campaign_now().await {
                            tracing::warn!(error = %e, "could not start the election");
                        }
                    });
                }
            }
        }
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
                let on = in_maintenance(&self.replica.tree(), self.replica.id);
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
                self.takeover(now);
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
