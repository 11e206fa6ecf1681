//! Freshness: how far this node (a follower) is behind the leader, how far each
//! member is behind this leader, and when this node last heard a leader or refused a
//! stale candidate (inputs of the failover driver and of `tandem status`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::network::Contacts;
use crate::types::{MemberKind, NodeId, RaftMetrics};

/// Freshness of this node's state compared with the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    pub entries: u64,
    pub ms: u64,
}

/// Per-peer view for `tandem status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub kind: MemberKind,
    pub addr: String,
    pub api: String,
    pub voter: bool,
    /// Last log index known to be on that node (leader's view), if known.
    pub matched_index: Option<u64>,
    pub lag_entries: Option<u64>,
    pub lag_ms: Option<u64>,
    /// Milliseconds since the peer last answered this node (known on the leader).
    pub last_contact_ms: Option<u64>,
}

/// What this node observes of the leader's progress and of its own (the lag job).
#[derive(Default)]
pub(super) struct Freshness {
    /// On a follower: the leader's commit index as heard in AppendEntries.
    lag: LagTracker,
    /// On the leader: when its log reached each index (per-follower lag in ms).
    pub(super) clock: IndexClock,
    /// When this node last received AppendEntries (entries or heartbeat) from a leader.
    last_leader_contact: Mutex<Option<Instant>>,
    /// When this node last refused its vote to a candidate whose log is behind its own.
    stale_candidate_at: Mutex<Option<Instant>>,
}

impl Freshness {
    /// An AppendEntries arrived from a leader (`leader_commit`: its commit index).
    pub(super) fn append_received(&self, leader_commit: Option<u64>, now: Instant) {
        *self.last_leader_contact.lock().expect("contact lock") = Some(now);
        if let Some(c) = leader_commit {
            self.lag.observe(c, now);
        }
    }

    /// This node refused its vote to a candidate whose log is behind its own.
    pub(super) fn stale_candidate_refused(&self, now: Instant) {
        *self.stale_candidate_at.lock().expect("stale lock") = Some(now);
    }

    /// How far local apply (`applied`) is behind what the leader committed.
    pub(super) fn lag(&self, applied: u64, now: Instant) -> Lag {
        self.lag.lag(applied, now)
    }

    pub(super) fn since_leader_contact(&self, now: Instant) -> Option<Duration> {
        self.last_leader_contact
            .lock()
            .expect("contact lock")
            .map(|t| now.saturating_duration_since(t))
    }

    pub(super) fn since_stale_candidate(&self, now: Instant) -> Option<Duration> {
        self.stale_candidate_at
            .lock()
            .expect("stale lock")
            .map(|t| now.saturating_duration_since(t))
    }

    /// The members with their replication state (the leader's view when `m` is a
    /// leader's metrics).
    pub(super) fn members(
        &self,
        me: NodeId,
        m: &RaftMetrics,
        contacts: &Contacts,
        now: Instant,
    ) -> Vec<MemberStatus> {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        membership
            .nodes()
            .map(|(id, info)| {
                let matched = match &m.replication {
                    Some(r) => r.get(id).map(|l| l.map(|l| l.index).unwrap_or(0)),
                    None if *id == me => Some(last),
                    None => None,
                };
                MemberStatus {
                    id: *id,
                    name: info.name.clone(),
                    kind: info.kind,
                    addr: info.addr.clone(),
                    api: info.api.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag_entries: matched.map(|x| last.saturating_sub(x)),
                    lag_ms: matched.map(|x| self.clock.behind_ms(x, now)),
                    last_contact_ms: if *id == me {
                        Some(0)
                    } else if m.state == ServerState::Leader {
                        contacts
                            .last(*id)
                            .map(|t| now.saturating_duration_since(t).as_millis() as u64)
                    } else {
                        None
                    },
                }
            })
            .collect()
    }
}

/// Tracks, on a follower, the leader's commit index as heard in AppendEntries, to
/// tell how far behind local apply is (in entries and in time).
#[derive(Default)]
struct LagTracker {
    seen: Mutex<VecDeque<(u64, Instant)>>,
}

impl LagTracker {
    fn observe(&self, leader_commit: u64, now: Instant) {
        let mut seen = self.seen.lock().expect("lag lock");
        if seen.back().is_none_or(|(i, _)| *i < leader_commit) {
            seen.push_back((leader_commit, now));
            if seen.len() > 4096 {
                seen.pop_front();
            }
        }
    }

    fn lag(&self, applied: u64, now: Instant) -> Lag {
        let mut seen = self.seen.lock().expect("lag lock");
        while seen.front().is_some_and(|(i, _)| *i <= applied) {
            // Keep the newest one so that `entries` stays known.
            if seen.len() == 1 {
                break;
            }
            seen.pop_front();
        }
        match (seen.front(), seen.back()) {
            (Some((first, t)), Some((last, _))) if *last > applied => Lag {
                entries: last - applied,
                ms: now
                    .duration_since(if *first > applied { *t } else { now })
                    .as_millis() as u64,
            },
            _ => Lag::default(),
        }
    }
}

/// Times at which the leader's log reached each index (for per-follower lag in ms).
#[derive(Default)]
pub(super) struct IndexClock {
    samples: Mutex<VecDeque<(u64, Instant)>>,
}

impl IndexClock {
    pub(super) fn record(&self, index: u64, now: Instant) {
        let mut s = self.samples.lock().expect("clock lock");
        if s.back().is_none_or(|(i, _)| *i < index) {
            s.push_back((index, now));
            while s.len() > 8192
                || s.front()
                    .is_some_and(|(_, t)| now.duration_since(*t) > Duration::from_secs(300))
            {
                s.pop_front();
            }
        }
    }

    /// How long ago the first entry after `matched` was appended by the leader.
    fn behind_ms(&self, matched: u64, now: Instant) -> u64 {
        let s = self.samples.lock().expect("clock lock");
        s.iter()
            .find(|(i, _)| *i > matched)
            .map(|(_, t)| now.duration_since(*t).as_millis() as u64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_tracker_reports_entries_and_age() {
        let t = LagTracker::default();
        let t0 = Instant::now();
        t.observe(10, t0);
        t.observe(20, t0 + Duration::from_millis(100));
        let lag = t.lag(5, t0 + Duration::from_millis(250));
        assert_eq!(
            lag,
            Lag {
                entries: 15,
                ms: 250
            }
        );
        let lag = t.lag(15, t0 + Duration::from_millis(300));
        assert_eq!(
            lag,
            Lag {
                entries: 5,
                ms: 200
            }
        );
        assert_eq!(t.lag(20, t0 + Duration::from_millis(400)), Lag::default());
    }

    #[test]
    fn index_clock_gives_age_of_first_missing_entry() {
        let c = IndexClock::default();
        let t0 = Instant::now();
        c.record(1, t0);
        c.record(5, t0 + Duration::from_millis(10));
        assert_eq!(c.behind_ms(3, t0 + Duration::from_millis(50)), 40);
        assert_eq!(c.behind_ms(5, t0 + Duration::from_millis(50)), 0);
    }
}
