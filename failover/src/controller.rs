//! The role controller: pure logic that decides who holds the VIP.
//!
//! `handle(event, now) -> Vec<Action>`: no I/O, no clock (time comes in `now`).
//!
//! Rules (DESIGN "Cluster model"):
//! - **master** = Raft leader, data node, valid lease, not in maintenance. The lease is
//!   valid while the leader's last quorum acknowledgement is younger than `lease`
//!   (openraft's `millis_since_quorum_ack`); `lease` is below the minimum election
//!   timeout, so a paused or partitioned leader drops the VIP before anyone else can
//!   be elected.
//! - **fenced** = still believes it leads but its lease ran out (or it just lost
//!   leadership while holding the VIP): the VIP is released at once.
//! - **standby** = follower / learner data node; **witness** = never holds the VIP;
//!   **candidate** = election in progress.
//! - A starting node releases any stale VIP first.
//! - While master, the VIP is refreshed every `refresh_every` (its kernel lifetime and
//!   the guard's watchdog are pushed forward only while the lease is valid).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a member is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Data,
    Witness,
}

/// Raft's own state, as openraft reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftState {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// The role shown in `/health` and `tandem status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Standby,
    Witness,
    Candidate,
    Fenced,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Standby => "standby",
            Role::Witness => "witness",
            Role::Candidate => "candidate",
            Role::Fenced => "fenced",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller knows about Raft at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftView {
    pub state: RaftState,
    pub term: u64,
    pub leader: Option<u64>,
    /// Age of the leader's last quorum acknowledgement (leaders only).
    pub quorum_ack_age: Option<Duration>,
    /// Number of voters in the membership.
    pub voters: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Raft's state changed or was sampled.
    Raft(RaftView),
    /// Time passed (drives refresh and lease expiry between Raft updates).
    Tick,
    /// Maintenance mode switched on or off for this node.
    Maintenance(bool),
    /// The node is handing leadership over (switchover): stop being master now.
    SteppingDown(bool),
}

/// Why a role changed (for logs, metrics and alarms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Start,
    ElectedWithLease,
    LeaseExpired,
    LostLeadership,
    Maintenance,
    SteppingDown,
    Election,
    Follower,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add the VIP and announce it (gratuitous ARP / unsolicited NA).
    AcquireVip,
    /// Push the VIP's kernel lifetime and the guard's watchdog forward.
    RefreshVip,
    /// Remove the VIP now.
    ReleaseVip,
    /// Run the role hook for the new role (master, standby or fenced).
    RunHook(Role),
    /// The role changed.
    RoleChanged {
        from: Role,
        to: Role,
        reason: Reason,
    },
    /// Allow or forbid this node to start elections.
    SetElect(bool),
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub kind: Kind,
    /// Lease: the master's last quorum ack must be younger than this.
    pub lease: Duration,
    /// How often the master refreshes the VIP.
    pub refresh_every: Duration,
    /// Whether a VIP is configured at all (without one the role still changes).
    pub has_vip: bool,
}

pub struct Controller {
    cfg: ControllerConfig,
    role: Role,
    vip_held: bool,
    last_refresh: Option<Instant>,
    maintenance: bool,
    stepping_down: bool,
    raft: Option<RaftView>,
    /// When the current raft view was observed (the lease ages from then on).
    raft_seen: Option<Instant>,
}

impl Controller {
    /// A new controller; the returned actions release any stale VIP.
    pub fn new(cfg: ControllerConfig) -> (Controller, Vec<Action>) {
        let role = match cfg.kind {
            Kind::Witness => Role::Witness,
            Kind::Data => Role::Standby,
        };
        let mut actions = Vec::new();
        if cfg.has_vip && cfg.kind == Kind::Data {
            actions.push(Action::ReleaseVip);
        }
        if cfg.kind == Kind::Witness {
            actions.push(Action::SetElect(false));
        }
        let c = Controller {
            cfg,
            role,
            vip_held: false,
            last_refresh: None,
            maintenance: false,
            stepping_down: false,
            raft: None,
            raft_seen: None,
        };
        (c, actions)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn vip_held(&self) -> bool {
        self.vip_held
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// How long ago, at `now`, a quorum last acknowledged this leader: `None` when
    /// this node is not a leader with other voters, or has no acknowledgement yet.
    pub fn lease_age(&self, now: Instant) -> Option<Duration> {
        let (v, seen) = (self.raft?, self.raft_seen?);
        if v.state != RaftState::Leader || v.voters <= 1 {
            return None;
        }
        Some(v.quorum_ack_age? + now.saturating_duration_since(seen))
    }

    /// Does the leader hold a valid lease at `now`?
    fn lease_valid(&self, now: Instant) -> bool {
        match self.raft {
            Some(v) if v.state == RaftState::Leader && v.voters <= 1 => true, // nobody else can be elected
            _ => self.lease_age(now).is_some_and(|age| age < self.cfg.lease),
        }
    }

    /// The role the rules give at `now`, with the reason.
    fn target(&self, now: Instant) -> (Role, Reason) {
        if self.cfg.kind == Kind::Witness {
            return (Role::Witness, Reason::Follower);
        }
        let Some(v) = self.raft else {
            return (Role::Standby, Reason::Start);
        };
        match v.state {
            RaftState::Leader => {
                if self.maintenance {
                    (Role::Standby, Reason::Maintenance)
                } else if self.stepping_down {
                    (Role::Standby, Reason::SteppingDown)
                } else if self.lease_valid(now) {
                    (Role::Master, Reason::ElectedWithLease)
                } else if self.role == Role::Master || self.role == Role::Fenced {
                    (Role::Fenced, Reason::LeaseExpired)
                } else {
                    // Just elected, waiting for the first quorum ack.
                    (Role::Candidate, Reason::Election)
                }
            }
            RaftState::Candidate => {
                if self.role == Role::Master || self.role == Role::Fenced {
                    (Role::Fenced, Reason::LostLeadership)
                } else {
                    (Role::Candidate, Reason::Election)
                }
            }
            RaftState::Follower | RaftState::Learner => (Role::Standby, Reason::Follower),
            RaftState::Shutdown => (Role::Fenced, Reason::Shutdown),
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Raft(v) => {
                self.raft = Some(v);
                self.raft_seen = Some(now);
            }
            Event::Tick => {}
            Event::Maintenance(on) => {
                if on != self.maintenance {
                    self.maintenance = on;
                    actions.push(Action::SetElect(!on && self.cfg.kind == Kind::Data));
                }
            }
            Event::SteppingDown(on) => self.stepping_down = on,
        }
        let (to, reason) = self.target(now);
        if to != self.role {
            let from = self.role;
            self.role = to;
            // Drop the VIP before anything else when leaving master.
            if from == Role::Master && self.vip_held {
                actions.push(Action::ReleaseVip);
                self.vip_held = false;
                self.last_refresh = None;
            }
            actions.push(Action::RoleChanged { from, to, reason });
            if to == Role::Master && self.cfg.has_vip {
                actions.push(Action::AcquireVip);
                self.vip_held = true;
                self.last_refresh = Some(now);
            }
            if matches!(to, Role::Master | Role::Standby | Role::Fenced) {
                actions.push(Action::RunHook(to));
            }
        } else if self.role == Role::Master && self.vip_held {
            let due = self
                .last_refresh
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.refresh_every);
            if due {
                actions.push(Action::RefreshVip);
                self.last_refresh = Some(now);
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn cfg(kind: Kind) -> ControllerConfig {
        ControllerConfig {
            kind,
            lease: MS(300),
            refresh_every: MS(100),
            has_vip: true,
        }
    }

    fn leader(age_ms: u64) -> Event {
        Event::Raft(RaftView {
            state: RaftState::Leader,
            term: 2,
            leader: Some(1),
            quorum_ack_age: Some(MS(age_ms)),
            voters: 3,
        })
    }

    fn with_state(state: RaftState) -> Event {
        Event::Raft(RaftView {
            state,
            term: 3,
            leader: None,
            quorum_ack_age: None,
            voters: 3,
        })
    }

    fn changed(actions: &[Action]) -> Option<(Role, Role)> {
        actions.iter().find_map(|a| match a {
            Action::RoleChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
    }

    #[test]
    fn start_releases_a_stale_vip() {
        let (c, actions) = Controller::new(cfg(Kind::Data));
        assert_eq!(actions, vec![Action::ReleaseVip]);
        assert_eq!(c.role(), Role::Standby);
        assert!(!c.vip_held());
    }

    #[test]
    fn leader_with_lease_becomes_master_takes_vip_and_runs_hook() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        let a = c.handle(leader(10), t0);
        assert_eq!(changed(&a), Some((Role::Standby, Role::Master)));
        assert!(a.contains(&Action::AcquireVip));
        assert!(a.contains(&Action::RunHook(Role::Master)));
        assert!(c.vip_held());
    }

    #[test]
    fn master_refreshes_the_vip_on_schedule() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        c.handle(leader(10), t0);
        assert!(c.handle(leader(10), t0 + MS(50)).is_empty());
        assert_eq!(c.handle(leader(10), t0 + MS(100)), vec![Action::RefreshVip]);
        assert!(c.handle(Event::Tick, t0 + MS(150)).is_empty());
        assert_eq!(c.handle(leader(20), t0 + MS(200)), vec![Action::RefreshVip]);
    }

    /// Raft §5.2 + lease: a leader that stops hearing a quorum (paused, partitioned)
    /// drops the VIP once the lease runs out, even with no new Raft event.
    #[test]
    fn lease_expiry_fences_the_master_without_any_raft_event() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        c.handle(leader(50), t0);
        // 200 ms later the ack is 250 ms old: still valid.
        assert_eq!(
            c.handle(Event::Tick, t0 + MS(200)),
            vec![Action::RefreshVip]
        );
        // 260 ms later: 310 ms > 300 ms lease.
        let a = c.handle(Event::Tick, t0 + MS(260));
        assert_eq!(a[0], Action::ReleaseVip, "VIP must go first");
        assert_eq!(changed(&a), Some((Role::Master, Role::Fenced)));
        assert!(a.contains(&Action::RunHook(Role::Fenced)));
        assert!(!c.vip_held());
        // A fresh quorum ack restores the master.
        let a = c.handle(leader(5), t0 + MS(400));
        assert_eq!(changed(&a), Some((Role::Fenced, Role::Master)));
        assert!(a.contains(&Action::AcquireVip));
    }

    #[test]
    fn lease_age_grows_between_reports_and_only_on_a_leader() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        assert_eq!(c.lease_age(t0), None, "no Raft report yet");
        c.handle(leader(50), t0);
        assert_eq!(c.lease_age(t0), Some(MS(50)));
        assert_eq!(c.lease_age(t0 + MS(120)), Some(MS(170)));
        c.handle(leader(10), t0 + MS(130));
        assert_eq!(c.lease_age(t0 + MS(140)), Some(MS(20)));
        c.handle(with_state(RaftState::Follower), t0 + MS(150));
        assert_eq!(c.lease_age(t0 + MS(150)), None, "a follower has no lease");
    }

    #[test]
    fn losing_leadership_releases_the_vip_and_becomes_standby() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        c.handle(leader(0), t0);
        let a = c.handle(with_state(RaftState::Follower), t0 + MS(10));
        assert_eq!(a[0], Action::ReleaseVip);
        assert_eq!(changed(&a), Some((Role::Master, Role::Standby)));
        assert!(a.contains(&Action::RunHook(Role::Standby)));
    }

    #[test]
    fn master_turning_candidate_is_fenced_then_standby() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        c.handle(leader(0), t0);
        let a = c.handle(with_state(RaftState::Candidate), t0 + MS(10));
        assert_eq!(changed(&a), Some((Role::Master, Role::Fenced)));
        assert_eq!(a[0], Action::ReleaseVip);
        let a = c.handle(with_state(RaftState::Follower), t0 + MS(500));
        assert_eq!(changed(&a), Some((Role::Fenced, Role::Standby)));
    }

    #[test]
    fn new_leader_without_quorum_ack_waits_as_candidate() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        let a = c.handle(leader(400), t0);
        assert_eq!(changed(&a), Some((Role::Standby, Role::Candidate)));
        assert!(!a.contains(&Action::AcquireVip));
    }

    #[test]
    fn single_voter_leader_is_master_without_acks() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        let a = c.handle(
            Event::Raft(RaftView {
                state: RaftState::Leader,
                term: 1,
                leader: Some(1),
                quorum_ack_age: None,
                voters: 1,
            }),
            t0,
        );
        assert!(a.contains(&Action::AcquireVip));
    }

    #[test]
    fn witness_never_holds_the_vip_and_never_campaigns() {
        let t0 = Instant::now();
        let (mut c, actions) = Controller::new(cfg(Kind::Witness));
        assert_eq!(actions, vec![Action::SetElect(false)]);
        assert!(c.handle(leader(0), t0).is_empty());
        assert_eq!(c.role(), Role::Witness);
        assert!(!c.vip_held());
    }

    #[test]
    fn maintenance_stops_elections_and_hands_the_vip_back() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        c.handle(leader(0), t0);
        let a = c.handle(Event::Maintenance(true), t0 + MS(10));
        assert!(a.contains(&Action::SetElect(false)));
        assert!(a.contains(&Action::ReleaseVip));
        assert_eq!(c.role(), Role::Standby);
        // Still leader in Raft, but no VIP while in maintenance.
        assert!(!c
            .handle(leader(0), t0 + MS(20))
            .contains(&Action::AcquireVip));
        let a = c.handle(Event::Maintenance(false), t0 + MS(30));
        assert!(a.contains(&Action::SetElect(true)));
        assert!(a.contains(&Action::AcquireVip));
    }

    #[test]
    fn stepping_down_releases_the_vip_before_the_handover() {
        let t0 = Instant::now();
        let (mut c, _) = Controller::new(cfg(Kind::Data));
        c.handle(leader(0), t0);
        let a = c.handle(Event::SteppingDown(true), t0 + MS(10));
        assert_eq!(a[0], Action::ReleaseVip);
        assert_eq!(c.role(), Role::Standby);
    }

    #[test]
    fn without_a_vip_roles_still_change_but_no_vip_actions() {
        let t0 = Instant::now();
        let mut conf = cfg(Kind::Data);
        conf.has_vip = false;
        let (mut c, actions) = Controller::new(conf);
        assert!(actions.is_empty());
        let a = c.handle(leader(0), t0);
        assert_eq!(changed(&a), Some((Role::Standby, Role::Master)));
        assert!(!a
            .iter()
            .any(|x| matches!(x, Action::AcquireVip | Action::RefreshVip)));
        assert!(c
            .handle(Event::Tick, t0 + MS(500))
            .iter()
            .all(|x| !matches!(x, Action::RefreshVip)));
    }
}
