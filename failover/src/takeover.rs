//! Takeover timing: when a node starts an election itself instead of waiting for
//! openraft's own timer, and which members the master reports as not answering.
//!
//! `Takeover::handle(&view, now) -> Vec<Action>`: no I/O, no clock. The node's driver
//! builds a [`View`] from the replica on every clock tick, calls `handle`, and performs
//! the actions (`Campaign` = `Replica::campaign_now`, `MemberDown` / `MemberUp` = the
//! `cluster.node_down` / `cluster.witness_lost` alarm events).
//!
//! ```text
//!  replica: raft state, leader, voters, contacts ─┐
//!  since leader contact / stale candidate ────────┼─▶ Takeover::handle(view, now) ─▶ Campaign{..}
//!  elect allowed, maintenance ────────────────────┘                               MemberDown / MemberUp
//! ```
//!
//! Rules:
//! - **Fast takeover** (data node, follower, elections allowed, not in maintenance):
//!   openraft 0.9 followers wait `election_timeout_max` (their leader lease) *plus* a
//!   random election timeout before campaigning. A standby that has heard nothing from
//!   the leader for `election_max + 15 ms + TAKEOVER_STAGGER × rank` (rank: its place
//!   among the data voters other than the leader, lowest id first, so two standbys do
//!   not split the vote) campaigns at once: votes are granted from then on, and the old
//!   master's own lease (`lease_ms` < election timeout) has long expired. At most one
//!   fast campaign per `election_max`.
//! - **Witness rescue** (witness, not leader): after `election_max` of silence when a
//!   data node has just asked for this witness's vote with a log behind the witness's
//!   (it cannot win, Raft §5.4.1), or after `WITNESS_RESCUE_AFTER × election_max` in any
//!   case; retried every `WITNESS_RESCUE_RETRY`.
//! - **Silence** is the time since the later of the last AppendEntries received and
//!   the moment this node learned of its current leader (a new term with a known
//!   leader). A node that learns of a new leader without having heard from it (an old
//!   master healed from a partition learns the new term from an answer to its own
//!   heartbeat) first waits to hear that leader, instead of measuring its silence
//!   from a contact before the partition and deposing the healthy master with a
//!   higher term (docs/failover.md, "Fast takeover").
//! - **Members down** (leader only, after `2 × election_max` as leader): a voter that
//!   has not answered for more than `2 × election_max` is down; each change of the set
//!   is one `MemberDown` / `MemberUp`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::controller::{Kind, RaftState};

/// Stagger between standbys starting a fast takeover (lowest id first), so that two
/// standbys do not split the vote.
pub const TAKEOVER_STAGGER: Duration = Duration::from_millis(80);
/// Margin after `election_max` before the first standby campaigns: the voters' own
/// leader lease (`election_max` after they last heard the leader) must have run out.
pub const TAKEOVER_MARGIN: Duration = Duration::from_millis(15);
/// Election timeouts without a leader after which a witness campaigns to rescue the
/// data nodes.
pub const WITNESS_RESCUE_AFTER: u32 = 3;
/// Pause between two rescue campaigns of a witness.
pub const WITNESS_RESCUE_RETRY: Duration = Duration::from_millis(150);

/// Settings of the takeover logic.
#[derive(Debug, Clone)]
pub struct TakeoverConfig {
    /// This node's id (its rank among the standbys, and itself in the member list).
    pub id: u64,
    /// Data nodes take over; witnesses only rescue.
    pub kind: Kind,
    /// `election_timeout_max_ms`: followers refuse votes for this long after hearing
    /// the leader (openraft's leader lease), so a takeover cannot start earlier.
    pub election_max: Duration,
}

/// One member as the replica reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub kind: Kind,
    /// Voters count for the standby rank and for the down report; learners do not.
    pub voter: bool,
    /// On the leader: ms since this member last answered (None: never, or not leader).
    pub last_contact_ms: Option<u64>,
}

/// What the driver knows at one tick: plain data from the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub state: RaftState,
    pub term: u64,
    /// The leader this node knows of at `term` (openraft's `current_leader`).
    pub leader: Option<u64>,
    /// Every member of the membership, this node included.
    pub members: Vec<Member>,
    /// Time since this node last received an AppendEntries (None: never since start).
    pub since_leader_contact: Option<Duration>,
    /// Time since this node refused its vote to a candidate whose log is behind its own.
    pub since_stale_candidate: Option<Duration>,
    /// Whether this node may campaign (false for witnesses and in maintenance).
    pub elect_allowed: bool,
    /// Maintenance mode (as the role controller has it).
    pub maintenance: bool,
}

/// Why a campaign starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignReason {
    /// A standby stopped hearing the leader.
    FastTakeover,
    /// A witness campaigns to hand its log to a data node.
    WitnessRescue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an election now (`Replica::campaign_now`).
    Campaign {
        reason: CampaignReason,
        /// How long this node has not heard a leader.
        silence_ms: u64,
        /// Place among the standbys (0 for a witness).
        rank: u32,
    },
    /// A member stopped answering the master (alarm raised).
    MemberDown { id: u64, witness: bool },
    /// A member answers the master again (alarm cleared).
    MemberUp { id: u64, witness: bool },
}

pub struct Takeover {
    cfg: TakeoverConfig,
    /// When this node last started a campaign (paces the next one).
    last_fast_elect: Option<Instant>,
    /// When this node last became leader (members are judged only after a grace period).
    leader_since: Option<Instant>,
    /// Members the master currently reports down.
    unreachable: BTreeSet<u64>,
    /// The (term, leader) this node last knew of, and when it learned of it: silence
    /// is never counted from before that moment.
    known_leader: Option<(u64, u64, Instant)>,
}

impl Takeover {
    pub fn new(cfg: TakeoverConfig) -> Takeover {
        Takeover {
            cfg,
            last_fast_elect: None,
            leader_since: None,
            unreachable: BTreeSet::new(),
            known_leader: None,
        }
    }

    /// Members the master currently reports down (empty on standbys).
    pub fn unreachable(&self) -> &BTreeSet<u64> {
        &self.unreachable
    }

    /// Decide, at one tick, whether to campaign and which members are down.
    pub fn handle(&mut self, view: &View, now: Instant) -> Vec<Action> {
        if let Some(leader) = view.leader {
            if !self
                .known_leader
                .is_some_and(|(t, l, _)| t == view.term && l == leader)
            {
                self.known_leader = Some((view.term, leader, now));
            }
        }
        let mut actions = self.watch_members(view, now);
        actions.extend(self.campaign_due(view, now));
        actions
    }

    /// Time without a leader: since the last AppendEntries, but never counted from
    /// before this node learned of its current leader.
    fn silence(&self, view: &View, now: Instant) -> Option<Duration> {
        let contact = view.since_leader_contact?;
        Some(match self.known_leader {
            Some((_, _, at)) => contact.min(now.saturating_duration_since(at)),
            None => contact,
        })
    }

    /// On the leader: which members stopped answering (no answer for twice the
    /// election timeout, judged once this node has led that long).
    fn watch_members(&mut self, view: &View, now: Instant) -> Vec<Action> {
        let leader = view.state == RaftState::Leader;
        let limit = 2 * self.cfg.election_max;
        let mut down = BTreeSet::new();
        if leader
            && self
                .leader_since
                .is_some_and(|t| now.duration_since(t) > limit)
        {
            let limit_ms = limit.as_millis() as u64;
            for m in &view.members {
                if m.id != self.cfg.id
                    && m.voter
                    && m.last_contact_ms.is_none_or(|ms| ms > limit_ms)
                {
                    down.insert(m.id);
                }
            }
        }
        if leader {
            self.leader_since.get_or_insert(now);
        } else {
            self.leader_since = None;
        }
        if down == self.unreachable {
            return Vec::new();
        }
        let witness = |id: u64| {
            view.members
                .iter()
                .find(|m| m.id == id)
                .is_some_and(|m| m.kind == Kind::Witness)
        };
        let mut actions = Vec::new();
        for &id in down.difference(&self.unreachable) {
            actions.push(Action::MemberDown {
                id,
                witness: witness(id),
            });
        }
        for &id in self.unreachable.difference(&down) {
            actions.push(Action::MemberUp {
                id,
                witness: witness(id),
            });
        }
        self.unreachable = down;
        actions
    }

    fn campaign_due(&mut self, view: &View, now: Instant) -> Option<Action> {
        match self.cfg.kind {
            Kind::Witness => self.witness_rescue_due(view, now),
            Kind::Data => self.fast_takeover_due(view, now),
        }
    }

    /// Fast takeover (see the module doc).
    fn fast_takeover_due(&mut self, view: &View, now: Instant) -> Option<Action> {
        if !view.elect_allowed || view.maintenance || view.state != RaftState::Follower {
            return None;
        }
        let silence = self.silence(view, now)?;
        let mut standbys: Vec<u64> = view
            .members
            .iter()
            .filter(|m| m.voter && m.kind == Kind::Data && Some(m.id) != view.leader)
            .map(|m| m.id)
            .collect();
        standbys.sort_unstable();
        let rank = standbys
            .iter()
            .position(|id| *id == self.cfg.id)
            .unwrap_or(0) as u32;
        let wait = self.cfg.election_max + TAKEOVER_MARGIN + TAKEOVER_STAGGER * rank;
        if silence < wait {
            return None;
        }
        if self
            .last_fast_elect
            .is_some_and(|t| now.duration_since(t) < self.cfg.election_max)
        {
            return None;
        }
        self.last_fast_elect = Some(now);
        Some(Action::Campaign {
            reason: CampaignReason::FastTakeover,
            silence_ms: silence.as_millis() as u64,
            rank,
        })
    }

    /// Witness rescue. A witness never campaigns on its own, but it may hold log
    /// entries that the surviving data node lacks (the dead master replicated them to
    /// the witness first): that data node can then never win the witness's vote
    /// (Raft §5.4.1), and without the witness it has no majority. As leader the witness
    /// only brings the data nodes up to date and hands leadership to one of them at
    /// once (replica `leader_duties`).
    fn witness_rescue_due(&mut self, view: &View, now: Instant) -> Option<Action> {
        if view.state == RaftState::Leader {
            return None;
        }
        let silence = self.silence(view, now)?;
        // A data node that asked for this witness's vote with a log behind the
        // witness's cannot win: rescue at once. Otherwise give the data nodes
        // WITNESS_RESCUE_AFTER election timeouts (one may still be on its way).
        let stale_candidate = view
            .since_stale_candidate
            .is_some_and(|d| d < self.cfg.election_max);
        let wait = if stale_candidate {
            self.cfg.election_max
        } else {
            self.cfg.election_max * WITNESS_RESCUE_AFTER
        };
        if silence < wait {
            return None;
        }
        // Retried soon: a failed attempt (the data node, still campaigning, was at a
        // higher term) taught this witness that term, and the next attempt must come
        // before the data node's own next campaign raises it again.
        if self
            .last_fast_elect
            .is_some_and(|t| now.duration_since(t) < WITNESS_RESCUE_RETRY)
        {
            return None;
        }
        self.last_fast_elect = Some(now);
        Some(Action::Campaign {
            reason: CampaignReason::WitnessRescue,
            silence_ms: silence.as_millis() as u64,
            rank: 0,
        })
    }
}

#[cfg(test)]
mod tests;
