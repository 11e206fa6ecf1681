//! Replication policy: the standing decisions of a leader, as plain code.
//!
//! ```text
//!  replica::duties (driver, every 20 ms on the leader)
//!     │  LeaderView { me, my_kind, last_log_index, members: [kind, voter, matched, contact age] }
//!     ▼
//!  LeaderDuties::handle(Event::Tick(view) | Event::HandOverFinished, now)
//!     │
//!     ▼  Vec<Decision>: HandOver { to } | Promote { ids }
//!  driver: switchover(Some(to)) in a task / change_membership(AddVoterIds(ids))
//! ```
//!
//! No I/O and no clock: the driver passes `now` and the ages of the last contacts,
//! so tests drive the rules with a fake clock (see the tests below).
//!
//! Rules:
//! 1. **Witness hand-over.** A witness that leads (it campaigns only to rescue a data
//!    node whose log is behind its own) hands leadership to the data voter that is
//!    caught up (within [`PolicyConfig::caught_up_within`] entries of the leader's
//!    last index), reachable (answered within [`PolicyConfig::reachable_within`]) and
//!    the most up to date; ties go to the highest id. One hand-over at a time: none
//!    starts while one runs, nor sooner than [`PolicyConfig::handover_every`] after
//!    the previous one started.
//! 2. **Learner promotion.** Every learner that is caught up and reachable is promoted
//!    to voter, all of them in one membership change; checked at most every
//!    [`PolicyConfig::promote_every`]. Any leader does this (a witness too).
//! 3. **Switchover target** ([`switchover_target`]): the node asked for if it is
//!    another data voter; with none asked, the other data voter with the highest
//!    matched index among the reachable ones (all of them if none is reachable),
//!    ties to the highest id.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::error::InvalidRequest;
use crate::types::{MemberKind, NodeId};

/// A learner within this many entries of the leader is caught up (promoted to voter;
/// a data voter that close may receive a witness's hand-over).
pub const PROMOTE_WITHIN: u64 = 200;

/// The thresholds of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// A member whose matched index is within this many entries of the leader's last
    /// log index is caught up (may be promoted, may receive a hand-over).
    pub caught_up_within: u64,
    /// A member that answered the leader this recently is reachable. A member that
    /// never answered is not.
    pub reachable_within: Duration,
    /// Least time between the starts of two witness hand-overs.
    pub handover_every: Duration,
    /// Least time between two promotion checks.
    pub promote_every: Duration,
}

impl PolicyConfig {
    /// tandem's values; `reachable_within` is the election timeout (a member silent
    /// for that long would itself start an election).
    pub fn new(reachable_within: Duration) -> PolicyConfig {
        PolicyConfig {
            caught_up_within: PROMOTE_WITHIN,
            reachable_within,
            handover_every: Duration::from_secs(1),
            promote_every: Duration::from_millis(500),
        }
    }
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub kind: MemberKind,
    /// Voter (false: learner).
    pub voter: bool,
    /// Last log index known to be on that member (None: not known yet).
    pub matched: Option<u64>,
    /// How long ago it last answered the leader (None: never).
    pub contact_age: Option<Duration>,
}

/// What the leader knows when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub me: NodeId,
    pub my_kind: MemberKind,
    pub last_log_index: u64,
    pub members: Vec<Member>,
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a switchover to `to` (report its end with [`Event::HandOverFinished`]).
    HandOver { to: NodeId },
    /// Make these learners voters (one membership change).
    Promote { ids: BTreeSet<NodeId> },
}

/// What happened.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A periodic look at the cluster, while this node leads.
    Tick(&'a LeaderView),
    /// The hand-over started by a [`Decision::HandOver`] ended (either way).
    HandOverFinished,
}

/// The leader's duties, with the little state the rules need (one hand-over at a
/// time, the pacing of hand-overs and promotion checks).
#[derive(Debug, Clone)]
pub struct LeaderDuties {
    cfg: PolicyConfig,
    /// A hand-over is running (between a `HandOver` decision and `HandOverFinished`).
    handing_over: bool,
    /// When the last hand-over started.
    last_handover: Option<Instant>,
    /// When promotions were last checked.
    last_promotion_check: Option<Instant>,
}

impl LeaderDuties {
    pub fn new(cfg: PolicyConfig) -> LeaderDuties {
        LeaderDuties {
            cfg,
            handing_over: false,
            last_handover: None,
            last_promotion_check: None,
        }
    }

    pub fn handle(&mut self, event: Event<'_>, now: Instant) -> Vec<Decision> {
        match event {
            Event::HandOverFinished => {
                self.handing_over = false;
                Vec::new()
            }
            Event::Tick(view) => {
                let mut out = Vec::new();
                if view.my_kind == MemberKind::Witness
                    && !self.handing_over
                    && self.elapsed(self.last_handover, now, self.cfg.handover_every)
                {
                    if let Some(to) = handover_target(view, &self.cfg) {
                        self.handing_over = true;
                        self.last_handover = Some(now);
                        out.push(Decision::HandOver { to });
                    }
                }
                if self.elapsed(self.last_promotion_check, now, self.cfg.promote_every) {
                    self.last_promotion_check = Some(now);
                    let ids = ready_learners(view, &self.cfg);
                    if !ids.is_empty() && view.members.iter().any(|m| m.voter) {
                        out.push(Decision::Promote { ids });
                    }
                }
                out
            }
        }
    }

    /// At least `every` since `since` (or never happened).
    fn elapsed(&self, since: Option<Instant>, now: Instant, every: Duration) -> bool {
        since.is_none_or(|t| now.saturating_duration_since(t) >= every)
    }
}

fn reachable(m: &Member, cfg: &PolicyConfig) -> bool {
    m.contact_age.is_some_and(|age| age <= cfg.reachable_within)
}

fn caught_up(m: &Member, view: &LeaderView, cfg: &PolicyConfig) -> bool {
    m.matched
        .is_some_and(|i| view.last_log_index.saturating_sub(i) <= cfg.caught_up_within)
}

/// Rule 1's target: the most up-to-date caught-up reachable data voter other than
/// this node (ties: highest id).
pub fn handover_target(view: &LeaderView, cfg: &PolicyConfig) -> Option<NodeId> {
    view.members
        .iter()
        .filter(|m| m.id != view.me && m.voter && m.kind == MemberKind::Data)
        .filter(|m| caught_up(m, view, cfg) && reachable(m, cfg))
        .map(|m| (m.matched.unwrap_or(0), m.id))
        .max()
        .map(|(_, id)| id)
}

/// Rule 2's set: the learners that are caught up and reachable.
pub fn ready_learners(view: &LeaderView, cfg: &PolicyConfig) -> BTreeSet<NodeId> {
    view.members
        .iter()
        .filter(|m| !m.voter && m.id != view.me)
        .filter(|m| caught_up(m, view, cfg) && reachable(m, cfg))
        .map(|m| m.id)
        .collect()
}

/// Rule 3: whom a switchover hands leadership to.
pub fn switchover_target(
    view: &LeaderView,
    cfg: &PolicyConfig,
    requested: Option<NodeId>,
) -> Result<NodeId, InvalidRequest> {
    let data_voter = |m: &&Member| m.id != view.me && m.voter && m.kind == MemberKind::Data;
    match requested {
        Some(t) if t == view.me => Err(InvalidRequest::AlreadyLeader { node: t }),
        Some(t) => view
            .members
            .iter()
            .filter(data_voter)
            .find(|m| m.id == t)
            .map(|m| m.id)
            .ok_or(InvalidRequest::NotADataVoter { node: t }),
        None => {
            let best = |only_reachable: bool| {
                view.members
                    .iter()
                    .filter(data_voter)
                    .filter(|m| !only_reachable || reachable(m, cfg))
                    .map(|m| (m.matched.unwrap_or(0), m.id))
                    .max()
                    .map(|(_, id)| id)
            };
            best(true)
                .or_else(|| best(false))
                .ok_or(InvalidRequest::NoHandOverTarget)
        }
    }
}

#[cfg(test)]
mod tests;
