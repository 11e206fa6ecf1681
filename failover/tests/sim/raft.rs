//! A deliberately small model of openraft 0.9's election and lease behaviour: enough
//! to produce the `RaftView`s and the replica facts that tandem's role controller and
//! takeover logic read, with the rules that decide who can be elected when. Each
//! rule names the openraft 0.9.25 code it follows.
//!
//! Modelled:
//! - votes `(term, node, committed)` with openraft's partial order (same term,
//!   different node: incomparable unless exactly one is committed);
//! - `handle_vote_req`: a committed vote younger than the leader lease
//!   (`election_timeout_max`) refuses; then a candidate log behind ours refuses
//!   *without* touching our vote; then the vote is taken if not smaller;
//! - `handle_vote_resp`: a majority makes a leader (committed vote, a blank entry,
//!   AppendEntries at once); a refusal with a greater log delays our next election by
//!   `smaller_log_timeout` (2 × election max); a refusal hands us the uncommitted
//!   version of the answerer's vote;
//! - AppendEntries take the leader's vote if not smaller (and touch the vote time: the
//!   follower's leader lease), otherwise answer `HigherVote`, which makes the leader
//!   step down (`Notify::HigherVote`);
//! - a leader never steps down by itself (no check-quorum in 0.9): a partitioned leader
//!   stays leader, and only its quorum-ack age grows;
//! - the leader's quorum-ack time = the majority-th latest *send* time of acknowledged
//!   AppendEntries (openraft's clock progress, the leader counting as `now`);
//! - the election timer (`handle_tick_election`), checked every tick: elect when the
//!   vote time is older than `leader_lease + election_timeout` (committed vote) or
//!   `election_timeout` (uncommitted), + `smaller_log_timeout` after seeing a greater
//!   log; one election timeout per node, drawn once at start as 0.9 does;
//! - `trigger().elect()` (tandem's `campaign_now`): ignored by a leader, otherwise an
//!   election at `term + 1`, whatever `enable_elect` says.
//!
//! Not modelled: log contents (a log is its last `(term, index)`, and an accepted
//! AppendEntries gives the follower the leader's log at once), commit index, snapshots,
//! membership changes, restarts (a killed node stays dead), disk latency.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use tandem_failover::controller::{Kind, RaftState};

use crate::Us;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub term: u64,
    pub node: u64,
    pub committed: bool,
}

impl Vote {
    /// openraft 0.9 `PartialOrd for Vote` over `LeaderId` (std mode).
    pub fn partial_cmp(&self, o: &Vote) -> Option<Ordering> {
        let leader = match self.term.cmp(&o.term) {
            Ordering::Equal if self.node == o.node => Some(Ordering::Equal),
            Ordering::Equal => None,
            c => Some(c),
        };
        match leader {
            Some(Ordering::Equal) => Some(self.committed.cmp(&o.committed)),
            None => match (self.committed, o.committed) {
                (false, false) => None,
                (true, false) => Some(Ordering::Greater),
                (false, true) => Some(Ordering::Less),
                // Two leaders granted in one term: the election safety property of
                // Raft §5.2 is broken. openraft has `unreachable!` here.
                (true, true) => panic!("two committed leaders in one term: {self:?} {o:?}"),
            },
            c => c,
        }
    }

    fn ge(&self, o: &Vote) -> bool {
        matches!(
            self.partial_cmp(o),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    fn gt(&self, o: &Vote) -> bool {
        self.partial_cmp(o) == Some(Ordering::Greater)
    }
}

/// A log, by its last entry: `(term, index)`, compared like openraft's `LogId`.
pub type LogId = (u64, u64);

#[derive(Debug, Clone)]
pub enum Msg {
    Append {
        vote: Vote,
        log: LogId,
        sent: Us,
    },
    AppendOk {
        vote: Vote,
        sent: Us,
        matched: LogId,
    },
    AppendHigher {
        sender_vote: Vote,
        higher: Vote,
    },
    VoteReq {
        vote: Vote,
        last_log: LogId,
    },
    VoteResp {
        vote: Vote,
        granted: bool,
        last_log: LogId,
    },
    /// tandem's `RpcRequest::Elect` (switchover target: campaign until elected).
    Elect,
    /// Its answer, once the target's campaign loop ended.
    Elected,
}

/// The timers of one node, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub heartbeat: Us,
    pub lease: Us,
    pub election_min: Us,
    pub election_max: Us,
    /// openraft's tick (election timer check): 1.5 × its heartbeat interval, which
    /// tandem sets to the answer timeout `max(lease / 2, heartbeat)`.
    pub raft_tick: Us,
}

impl Timers {
    pub fn new(heartbeat_ms: u64, lease_ms: u64, emin_ms: u64, emax_ms: u64) -> Timers {
        Timers {
            heartbeat: heartbeat_ms * 1000,
            lease: lease_ms * 1000,
            election_min: emin_ms * 1000,
            election_max: emax_ms * 1000,
            raft_tick: (lease_ms / 2).max(heartbeat_ms) * 3 / 2 * 1000,
        }
    }
}

struct Leading {
    vote: Vote,
    /// Latest send time of an AppendEntries each peer acknowledged.
    acked: BTreeMap<u64, Us>,
    /// Each peer's log as it last acknowledged it.
    matched: BTreeMap<u64, LogId>,
}

struct Candidacy {
    vote: Vote,
    granted: BTreeSet<u64>,
}

pub struct Raft {
    pub id: u64,
    pub kind: Kind,
    voters: Vec<u64>,
    pub vote: Vote,
    vote_utime: Option<Us>,
    pub log: LogId,
    leader: Option<Leading>,
    candidate: Option<Candidacy>,
    greater_log: bool,
    /// This node's election timeout (openraft 0.9 draws it once, at start).
    election_timeout: Us,
    /// openraft's `leader_lease` = `election_timeout_max`.
    leader_lease: Us,
    smaller_log_timeout: Us,
    /// openraft's runtime `enable_elect`.
    pub elect_enabled: bool,
    /// Replica: when this node last received an AppendEntries (from any leader).
    pub last_leader_contact: Option<Us>,
    /// Replica: when this node last refused a candidate whose log is behind its own.
    pub stale_candidate_at: Option<Us>,
    /// Replica: when each peer last answered this node's RPCs.
    pub contacts: BTreeMap<u64, Us>,
}

pub type Out = Vec<(u64, Msg)>;

impl Raft {
    pub fn new(id: u64, kind: Kind, voters: Vec<u64>, timers: &Timers, et: Us) -> Raft {
        Raft {
            id,
            kind,
            voters,
            vote: Vote {
                term: 0,
                node: 0,
                committed: false,
            },
            vote_utime: None,
            log: (0, 0),
            leader: None,
            candidate: None,
            greater_log: false,
            election_timeout: et,
            leader_lease: timers.election_max,
            smaller_log_timeout: 2 * timers.election_max,
            elect_enabled: kind == Kind::Data,
            last_leader_contact: None,
            stale_candidate_at: None,
            contacts: BTreeMap::new(),
        }
    }

    /// Start as the established leader of `vote` (the cluster's initial state).
    pub fn start_as_leader(&mut self, vote: Vote, log: LogId, now: Us) {
        self.vote = vote;
        self.vote_utime = Some(now);
        self.log = log;
        self.leader = Some(Leading {
            vote,
            acked: BTreeMap::new(),
            matched: BTreeMap::new(),
        });
    }

    /// Start as a follower of `vote` that has just heard its leader.
    pub fn start_as_follower(&mut self, vote: Vote, log: LogId, now: Us) {
        self.vote = vote;
        self.vote_utime = Some(now);
        self.log = log;
        self.last_leader_contact = Some(now);
    }

    pub fn state(&self) -> RaftState {
        if self.leader.is_some() {
            RaftState::Leader
        } else if self.candidate.is_some() {
            RaftState::Candidate
        } else {
            RaftState::Follower
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.is_some()
    }

    /// openraft's `current_leader`: the node of a committed vote.
    pub fn current_leader(&self) -> Option<u64> {
        self.vote.committed.then_some(self.vote.node)
    }

    pub fn voters(&self) -> &[u64] {
        &self.voters
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The leader's latest time acknowledged by a quorum (`last_quorum_acked_time`).
    pub fn quorum_acked(&self, now: Us) -> Option<Us> {
        let l = self.leader.as_ref()?;
        let mut times: Vec<Us> = vec![now];
        times.extend(
            self.voters
                .iter()
                .filter(|v| **v != self.id)
                .filter_map(|v| l.acked.get(v).copied()),
        );
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(self.majority() - 1).copied()
    }

    /// The leader's view of a peer's log (`replication` metrics).
    pub fn matched(&self, peer: u64) -> Option<LogId> {
        self.leader.as_ref()?.matched.get(&peer).copied()
    }

    /// `VoteHandler::update_vote`.
    fn update_vote(&mut self, v: Vote, now: Us) -> Result<(), ()> {
        if !v.ge(&self.vote) {
            return Err(());
        }
        if v.gt(&self.vote) {
            self.vote = v;
        }
        self.vote_utime = Some(now);
        // update_internal_server_state
        if self.vote.node == self.id {
            // leader (committed) or candidate (uncommitted): unchanged here
        } else {
            self.leader = None;
            self.candidate = None;
        }
        Ok(())
    }

    /// `Engine::elect`.
    fn elect(&mut self, now: Us, out: &mut Out) {
        debug_assert!(self.leader.is_none());
        let vote = Vote {
            term: self.vote.term + 1,
            node: self.id,
            committed: false,
        };
        self.candidate = Some(Candidacy {
            vote,
            granted: BTreeSet::from([self.id]),
        });
        self.update_vote(vote, now).expect("a new term is greater");
        if self.majority() == 1 {
            self.establish_leader(now, out);
            return;
        }
        for &p in &self.voters {
            if p != self.id {
                out.push((
                    p,
                    Msg::VoteReq {
                        vote,
                        last_log: self.log,
                    },
                ));
            }
        }
    }

    /// `ExternalCommand::Elect` (`trigger().elect()`).
    pub fn trigger_elect(&mut self, now: Us, out: &mut Out) {
        if self.leader.is_some() {
            return;
        }
        self.elect(now, out);
    }

    /// `RaftCore::handle_tick_election`.
    pub fn tick_election(&mut self, now: Us, out: &mut Out) {
        if self.leader.is_some() || !self.elect_enabled {
            return;
        }
        if self.voters.len() > 1 {
            let mut timeout = if self.vote.committed {
                self.leader_lease + self.election_timeout
            } else {
                self.election_timeout
            };
            if self.greater_log {
                timeout += self.smaller_log_timeout;
            }
            if self.vote_utime.is_some_and(|u| u + timeout > now) {
                return;
            }
        }
        self.greater_log = false;
        self.elect(now, out);
    }

    fn establish_leader(&mut self, now: Us, out: &mut Out) {
        let c = self.candidate.take().expect("a candidate");
        let vote = Vote {
            committed: true,
            ..c.vote
        };
        self.leader = Some(Leading {
            vote,
            acked: BTreeMap::new(),
            matched: BTreeMap::new(),
        });
        self.update_vote(vote, now).expect("committed is greater");
        // The blank entry of a new leader.
        self.log = (vote.term, self.log.1 + 1);
        self.send_append(now, out);
    }

    /// AppendEntries (heartbeat or entries) to every other voter.
    pub fn send_append(&self, now: Us, out: &mut Out) {
        let Some(l) = &self.leader else { return };
        for &p in &self.voters {
            if p != self.id {
                out.push((
                    p,
                    Msg::Append {
                        vote: l.vote,
                        log: self.log,
                        sent: now,
                    },
                ));
            }
        }
    }

    /// A client write on the leader: one entry, replicated at once.
    pub fn client_write(&mut self, now: Us, out: &mut Out) {
        if let Some(l) = &self.leader {
            self.log = (l.vote.term, self.log.1 + 1);
            self.send_append(now, out);
        }
    }

    pub fn handle(&mut self, from: u64, msg: Msg, now: Us, out: &mut Out) {
        match msg {
            Msg::Append { vote, log, sent } => {
                // The replica notes every AppendEntries before openraft sees it.
                self.last_leader_contact = Some(now);
                let reply = match self.update_vote(vote, now) {
                    Err(()) => Msg::AppendHigher {
                        sender_vote: vote,
                        higher: self.vote,
                    },
                    Ok(()) => {
                        // Same leader, same term: entries only grow. A new term's
                        // leader replaces what differs.
                        self.log = if log.0 == self.log.0 {
                            log.max(self.log)
                        } else {
                            log
                        };
                        Msg::AppendOk {
                            vote,
                            sent,
                            matched: log,
                        }
                    }
                };
                out.push((from, reply));
            }
            Msg::AppendOk {
                vote,
                sent,
                matched,
            } => {
                self.contacts.insert(from, now);
                if let Some(l) = self.leader.as_mut().filter(|l| l.vote == vote) {
                    let a = l.acked.entry(from).or_insert(sent);
                    *a = (*a).max(sent);
                    let m = l.matched.entry(from).or_insert(matched);
                    *m = (*m).max(matched);
                }
            }
            Msg::AppendHigher {
                sender_vote,
                higher,
            } => {
                self.contacts.insert(from, now);
                if self.vote == sender_vote {
                    let _ = self.update_vote(higher, now);
                }
            }
            Msg::VoteReq { vote, last_log } => {
                let granted = self.handle_vote_req(vote, last_log, now);
                if !granted && last_log < self.log {
                    self.stale_candidate_at = Some(now);
                }
                out.push((
                    from,
                    Msg::VoteResp {
                        vote: self.vote,
                        granted,
                        last_log: self.log,
                    },
                ));
            }
            Msg::VoteResp {
                vote,
                granted,
                last_log,
            } => {
                self.contacts.insert(from, now);
                self.handle_vote_resp(from, vote, granted, last_log, now, out);
            }
            Msg::Elect | Msg::Elected => unreachable!("handled by the node"),
        }
    }

    /// `Engine::handle_vote_req`.
    fn handle_vote_req(&mut self, vote: Vote, last_log: LogId, now: Us) -> bool {
        if self.vote.committed
            && self
                .vote_utime
                .is_some_and(|u| now <= u + self.leader_lease)
        {
            return false;
        }
        if last_log < self.log {
            return false;
        }
        self.update_vote(vote, now).is_ok()
    }

    /// `Engine::handle_vote_resp`.
    fn handle_vote_resp(
        &mut self,
        from: u64,
        vote: Vote,
        granted: bool,
        last_log: LogId,
        now: Us,
        out: &mut Out,
    ) {
        let majority = self.majority();
        let Some(c) = self.candidate.as_mut() else {
            return;
        };
        if granted && vote == c.vote {
            c.granted.insert(from);
            if c.granted.len() >= majority {
                self.establish_leader(now, out);
            }
            return;
        }
        if last_log > self.log {
            self.greater_log = true;
        }
        let _ = self.update_vote(
            Vote {
                committed: false,
                ..vote
            },
            now,
        );
    }
}
