//! N nodes on a fake clock and a fake network. Each node is the Raft model
//! (`raft.rs`) + tandem's real role `Controller` + the real `Takeover`, joined by a
//! driver that does what `node/src/run/role.rs` does: every Raft event is a metrics report
//! (`Event::Raft`), a 25 ms tick drives `Event::Tick` and then `Takeover::handle`, and
//! a `Campaign` is `campaign_now` (openraft's `trigger().elect()`). Around them the
//! replica's own loops: the heartbeat pacer (every `heartbeat_ms`, leader only), a
//! witness leader's hand-over to a caught-up data node (`leader_duties` +
//! `run_switchover`), and the hand-over target's `campaign` loop.
//!
//! The VIP is held exactly between a controller's `AcquireVip` and `ReleaseVip`
//! actions; a killed node holds nothing (its guard removes the VIP when the pipe
//! closes). The two-holders check runs at every change of a holder.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tandem_failover::controller::{
    Action, Controller, ControllerConfig, Event, Kind, RaftState, RaftView, Reason, Role,
};
use tandem_failover::takeover::{self, CampaignReason, Member, Takeover, TakeoverConfig, View};

use crate::net::Network;
use crate::raft::{Msg, Out, Raft, Timers, Vote};
use crate::rng::Rng;
use crate::Us;

/// The role driver's tick (`node/src/run/role.rs`).
pub const DRIVER_TICK: Us = 25_000;
/// `leader_duties` and `campaign` poll every 20 ms.
pub const DUTY_TICK: Us = 20_000;
/// A runaway schedule is a failure, not a hang.
const MAX_EVENTS: u64 = 5_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Role {
        from: Role,
        to: Role,
        reason: Reason,
    },
    VipAcquired,
    VipReleased,
    Campaign {
        reason: CampaignReason,
        silence_ms: u64,
        rank: u32,
    },
    MemberDown(u64),
    MemberUp(u64),
    Fault(String),
    /// A message received (recorded only when tracing).
    Got {
        from: u64,
        msg: String,
    },
}

#[derive(Debug, Clone)]
pub struct Record {
    pub at: Us,
    pub node: u64,
    pub what: What,
}

/// The witness leader's hand-over in progress (`run_switchover`): the target catches
/// up (5 s at most), then heartbeats stop and the target is asked to campaign; the
/// call ends with its answer, its 10 s timeout, or at once if the target's process
/// is gone (the connection is reset).
struct Handover {
    to: u64,
    /// Elect sent: heartbeats stopped until the hand-over ends.
    electing: bool,
    until: Us,
}

/// A hand-over target's `campaign` loop (5 s at most), answering `from` at its end.
struct CampaignLoop {
    from: u64,
    until: Us,
    term_at_start: u64,
}

pub struct Node {
    pub raft: Raft,
    pub controller: Controller,
    pub takeover: Takeover,
    pub alive: bool,
    /// The replica's `elect_allowed` (data node, not in maintenance).
    elect_allowed: bool,
    handover: Option<Handover>,
    last_handover: Option<Us>,
    campaign: Option<CampaignLoop>,
    duty_scheduled: bool,
}

enum Ev {
    Deliver { from: u64, to: u64, msg: Msg },
    DriverTick(u64),
    RaftTick(u64),
    Heartbeat(u64),
    Duty(u64),
    ClientWrite,
}

struct Item {
    at: Us,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kinds: Vec<Kind>,
    pub timers: Timers,
    /// One-way delay range, µs.
    pub delay: (Us, Us),
    /// Whether the first master had heard an earlier leader before it was elected
    /// (the usual case; a node that bootstrapped the cluster has not).
    pub master_heard_a_leader: bool,
}

pub struct Cluster {
    pub now: Us,
    base: Instant,
    pub rng: Rng,
    pub net: Network,
    pub nodes: Vec<Node>,
    pub timers: Timers,
    queue: BinaryHeap<Reverse<Item>>,
    seq: u64,
    events: u64,
    pub records: Vec<Record>,
    holders: BTreeSet<u64>,
    /// Safety violations seen (two VIP holders), with the time.
    pub violations: Vec<String>,
    /// Record every vote message and hand-over request (for one schedule's history).
    pub trace: bool,
}

fn ms(us: Us) -> Duration {
    Duration::from_micros(us)
}

impl Cluster {
    /// Node 1 is the established leader at term 1; every other node has just heard
    /// it. Every periodic task starts at a random phase.
    pub fn new(setup: &Setup, seed: u64) -> Cluster {
        let mut rng = Rng::new(seed);
        let timers = setup.timers;
        let ids: Vec<u64> = (1..=setup.kinds.len() as u64).collect();
        let vote = Vote {
            term: 1,
            node: 1,
            committed: true,
        };
        let start: Us = 10 * timers.election_max;
        let mut nodes = Vec::new();
        for (&id, &kind) in ids.iter().zip(&setup.kinds) {
            let et = rng.range(timers.election_min, timers.election_max - 1);
            let mut raft = Raft::new(id, kind, ids.clone(), &timers, et);
            if id == 1 {
                raft.start_as_leader(vote, (1, 1), start);
                if setup.master_heard_a_leader {
                    raft.last_leader_contact = Some(start - timers.election_max);
                }
            } else {
                raft.start_as_follower(vote, (1, 1), start);
            }
            let (controller, initial) = Controller::new(ControllerConfig {
                kind,
                lease: ms(timers.lease),
                refresh_every: (ms(timers.lease) / 3).max(Duration::from_millis(20)),
                has_vip: kind == Kind::Data,
            });
            assert!(initial
                .iter()
                .all(|a| matches!(a, Action::ReleaseVip | Action::SetElect(false))));
            let takeover = Takeover::new(TakeoverConfig {
                id,
                kind,
                election_max: ms(timers.election_max),
            });
            nodes.push(Node {
                raft,
                controller,
                takeover,
                alive: true,
                elect_allowed: kind == Kind::Data,
                handover: None,
                last_handover: None,
                campaign: None,
                duty_scheduled: false,
            });
        }
        let mut c = Cluster {
            now: start,
            base: Instant::now(),
            rng,
            net: Network::new(setup.delay),
            nodes,
            timers,
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            records: Vec::new(),
            holders: BTreeSet::new(),
            violations: Vec::new(),
            trace: false,
        };
        for &id in &ids {
            let p = c.rng.range(0, DRIVER_TICK);
            c.schedule(start + p, Ev::DriverTick(id));
            let p = c.rng.range(0, timers.raft_tick);
            c.schedule(start + p, Ev::RaftTick(id));
            let p = c.rng.range(0, timers.heartbeat);
            c.schedule(start + p, Ev::Heartbeat(id));
            if setup.kinds[id as usize - 1] == Kind::Witness {
                c.schedule(start + DUTY_TICK, Ev::Duty(id));
                c.nodes[id as usize - 1].duty_scheduled = true;
            }
        }
        let p = c.rng.range(0, 100_000);
        c.schedule(start + p, Ev::ClientWrite);
        for id in ids {
            c.report(id);
        }
        c
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn at(&self, t: Us) -> Instant {
        self.base + ms(t)
    }

    fn schedule(&mut self, at: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Item {
            at,
            seq: self.seq,
            ev,
        }));
    }

    pub fn record(&mut self, node: u64, what: What) {
        self.records.push(Record {
            at: self.now,
            node,
            what,
        });
    }

    /// The node that holds the VIP now (if exactly one does).
    pub fn master(&self) -> Option<u64> {
        let mut it = self.holders.iter();
        match (it.next(), it.next()) {
            (Some(&id), None) => Some(id),
            _ => None,
        }
    }

    // --- faults (raft-rs harness style) ---

    pub fn cut(&mut self, a: u64, b: u64) {
        self.record(a, What::Fault(format!("cut {a} <-> {b}")));
        self.net.cut(a, b);
    }

    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.record(from, What::Fault(format!("cut {from} -> {to}")));
        self.net.cut_one_way(from, to);
    }

    pub fn isolate(&mut self, id: u64) {
        self.record(id, What::Fault(format!("isolate {id}")));
        let all = self.ids();
        self.net.isolate(id, &all);
    }

    pub fn recover(&mut self) {
        self.record(0, What::Fault("recover".into()));
        self.net.recover();
    }

    pub fn set_drop(&mut self, p: f64) {
        self.record(0, What::Fault(format!("drop {p}")));
        self.net.set_drop(p);
    }

    /// SIGKILL: the node stops; in-flight messages it sent still arrive.
    pub fn kill(&mut self, id: u64) {
        self.record(id, What::Fault(format!("kill {id}")));
        self.node_mut(id).alive = false;
        if self.holders.remove(&id) {
            self.record(id, What::VipReleased);
        }
    }

    /// Maintenance mode on or off (the replicated flag, as the driver polls it).
    pub fn maintenance(&mut self, id: u64, on: bool) {
        self.record(id, What::Fault(format!("maintenance {id} {on}")));
        let now = self.at(self.now);
        let actions = self
            .node_mut(id)
            .controller
            .handle(Event::Maintenance(on), now);
        let n = self.node_mut(id);
        n.elect_allowed = !on && n.raft.kind == Kind::Data;
        self.perform(id, actions);
    }

    // --- running ---

    /// Process every event up to `t` (inclusive), then set the clock to `t`.
    pub fn run_until(&mut self, t: Us) {
        while self.queue.peek().is_some_and(|Reverse(i)| i.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Run until `done(self)` holds (checked after every event) or `limit` passes;
    /// returns the time it first held.
    pub fn run_until_or(&mut self, limit: Us, done: impl Fn(&Cluster) -> bool) -> Option<Us> {
        if done(self) {
            return Some(self.now);
        }
        while self.queue.peek().is_some_and(|Reverse(i)| i.at <= limit) {
            self.step();
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(limit);
        None
    }

    fn step(&mut self) {
        let Reverse(Item { at, ev, .. }) = self.queue.pop().expect("an event");
        self.events += 1;
        assert!(self.events < MAX_EVENTS, "runaway schedule");
        self.now = at;
        match ev {
            Ev::Deliver { from, to, msg } => {
                if !self.node(to).alive {
                    return;
                }
                if self.trace && !matches!(msg, Msg::Append { .. } | Msg::AppendOk { .. }) {
                    let msg = format!("{msg:?}");
                    self.record(to, What::Got { from, msg });
                }
                if let Msg::Elect = msg {
                    let n = self.node_mut(to);
                    n.campaign = Some(CampaignLoop {
                        from,
                        until: at + 5_000_000,
                        term_at_start: n.raft.vote.term,
                    });
                    self.ensure_duty(to);
                    return;
                }
                if let Msg::Elected = msg {
                    let n = self.node_mut(to);
                    if n.handover
                        .as_ref()
                        .is_some_and(|h| h.to == from && h.electing)
                    {
                        n.handover = None;
                    }
                    return;
                }
                let mut out = Out::new();
                self.node_mut(to).raft.handle(from, msg, at, &mut out);
                self.send(to, out);
                self.report(to);
            }
            Ev::DriverTick(id) => {
                if !self.node(id).alive {
                    return;
                }
                self.schedule(at + DRIVER_TICK, Ev::DriverTick(id));
                self.driver_tick(id);
            }
            Ev::RaftTick(id) => {
                if !self.node(id).alive {
                    return;
                }
                self.schedule(at + self.timers.raft_tick, Ev::RaftTick(id));
                let mut out = Out::new();
                self.node_mut(id).raft.tick_election(at, &mut out);
                self.send(id, out);
                self.report(id);
            }
            Ev::Heartbeat(id) => {
                if !self.node(id).alive {
                    return;
                }
                self.schedule(at + self.timers.heartbeat, Ev::Heartbeat(id));
                let n = self.node(id);
                // The pacer skips heartbeats while the node hands over.
                if n.raft.is_leader() && !n.handover.as_ref().is_some_and(|h| h.electing) {
                    let mut out = Out::new();
                    n.raft.send_append(at, &mut out);
                    self.send(id, out);
                }
            }
            Ev::Duty(id) => {
                self.node_mut(id).duty_scheduled = false;
                if self.node(id).alive {
                    self.duty(id);
                }
            }
            Ev::ClientWrite => {
                let next = at + self.rng.range(10_000, 200_000);
                self.schedule(next, Ev::ClientWrite);
                // Clients write through the VIP: only the VIP holder takes writes.
                if let Some(m) = self.master() {
                    let mut out = Out::new();
                    self.node_mut(m).raft.client_write(at, &mut out);
                    self.send(m, out);
                    self.report(m);
                }
            }
        }
    }

    fn send(&mut self, from: u64, out: Out) {
        for (to, msg) in out {
            if let Some(d) = self.net.transit(from, to, &mut self.rng) {
                self.schedule(self.now + d, Ev::Deliver { from, to, msg });
            }
        }
    }

    fn ensure_duty(&mut self, id: u64) {
        if !self.node(id).duty_scheduled {
            self.node_mut(id).duty_scheduled = true;
            self.schedule(self.now + DUTY_TICK, Ev::Duty(id));
        }
    }

    /// What openraft's metrics give the role driver.
    fn raft_view(&self, id: u64) -> RaftView {
        let r = &self.node(id).raft;
        RaftView {
            state: r.state(),
            term: r.vote.term,
            leader: r.current_leader(),
            quorum_ack_age: r
                .quorum_acked(self.now)
                .map(|t| Duration::from_millis((self.now - t) / 1000)),
            voters: r.voters().len(),
        }
    }

    /// A metrics report: the driver's `Event::Raft`.
    fn report(&mut self, id: u64) {
        let view = self.raft_view(id);
        let now = self.at(self.now);
        let actions = self.node_mut(id).controller.handle(Event::Raft(view), now);
        self.perform(id, actions);
    }

    /// The driver's tick: `Event::Tick`, then the takeover logic.
    fn driver_tick(&mut self, id: u64) {
        let now = self.at(self.now);
        let actions = self.node_mut(id).controller.handle(Event::Tick, now);
        self.perform(id, actions);
        let view = self.takeover_view(id);
        let actions = self.node_mut(id).takeover.handle(&view, now);
        for a in actions {
            match a {
                takeover::Action::Campaign {
                    reason,
                    silence_ms,
                    rank,
                } => {
                    self.record(
                        id,
                        What::Campaign {
                            reason,
                            silence_ms,
                            rank,
                        },
                    );
                    let (mut out, t) = (Out::new(), self.now);
                    self.node_mut(id).raft.trigger_elect(t, &mut out);
                    self.send(id, out);
                    self.report(id);
                }
                takeover::Action::MemberDown { id: m, .. } => self.record(id, What::MemberDown(m)),
                takeover::Action::MemberUp { id: m, .. } => self.record(id, What::MemberUp(m)),
            }
        }
    }

    /// What the role driver reads from the replica.
    fn takeover_view(&self, id: u64) -> View {
        let n = self.node(id);
        let r = &n.raft;
        let since = |t: Option<Us>| t.map(|t| ms(self.now - t));
        View {
            state: r.state(),
            term: r.vote.term,
            leader: r.current_leader(),
            members: r
                .voters()
                .iter()
                .map(|&m| Member {
                    id: m,
                    kind: self.node(m).raft.kind,
                    voter: true,
                    last_contact_ms: if m == id {
                        Some(0)
                    } else if r.is_leader() {
                        r.contacts.get(&m).map(|t| (self.now - t) / 1000)
                    } else {
                        None
                    },
                })
                .collect(),
            since_leader_contact: since(r.last_leader_contact),
            since_stale_candidate: since(r.stale_candidate_at),
            elect_allowed: n.elect_allowed,
            maintenance: n.controller.maintenance(),
        }
    }

    fn perform(&mut self, id: u64, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::AcquireVip => {
                    self.record(id, What::VipAcquired);
                    self.holders.insert(id);
                    if self.holders.len() > 1 {
                        let mut s = format!("t={} ms: VIP held by", self.now / 1000);
                        for h in &self.holders {
                            let _ = write!(s, " {h}");
                        }
                        self.violations.push(s);
                    }
                }
                Action::ReleaseVip => {
                    if self.holders.remove(&id) {
                        self.record(id, What::VipReleased);
                    }
                }
                Action::RoleChanged { from, to, reason } => {
                    self.record(id, What::Role { from, to, reason })
                }
                Action::SetElect(on) => {
                    let r = &mut self.node_mut(id).raft;
                    r.elect_enabled = on && r.kind == Kind::Data;
                }
                Action::RefreshVip | Action::RunHook(_) => {}
            }
        }
    }

    /// `leader_duties` (witness hand-over) and the target's `campaign` loop, every 20 ms.
    fn duty(&mut self, id: u64) {
        let now = self.now;
        let mut again = false;
        // The hand-over target campaigns until it wins, another node wins a newer
        // term, or 5 s pass.
        if let Some(c) = &self.node(id).campaign {
            let r = &self.node(id).raft;
            let other_won =
                r.current_leader().is_some_and(|l| l != id) && r.vote.term > c.term_at_start;
            if r.is_leader() || other_won || now >= c.until {
                let from = c.from;
                self.node_mut(id).campaign = None;
                self.send(id, vec![(from, Msg::Elected)]);
            } else {
                if r.state() != RaftState::Candidate {
                    let mut out = Out::new();
                    self.node_mut(id).raft.trigger_elect(now, &mut out);
                    self.send(id, out);
                    self.report(id);
                }
                again = true;
            }
        }
        if self.node(id).raft.kind == Kind::Witness {
            again = true;
            self.witness_duty(id);
        }
        if again {
            self.ensure_duty(id);
        }
    }

    /// A witness leader hands leadership to the most up-to-date data voter it
    /// reaches: that node catches up, the witness stops its heartbeats and elections
    /// and asks it to campaign (`RpcRequest::Elect`).
    fn witness_duty(&mut self, id: u64) {
        let now = self.now;
        let n = self.node(id);
        if let Some(h) = &n.handover {
            let gone = h.electing && !self.node(h.to).alive;
            if !n.raft.is_leader() || now >= h.until || gone {
                self.node_mut(id).handover = None;
                return;
            }
            if !h.electing && n.raft.matched(h.to).is_some_and(|m| m >= n.raft.log) {
                let to = h.to;
                let h = self.node_mut(id).handover.as_mut().expect("handover");
                h.electing = true;
                h.until = now + 10_000_000;
                self.send(id, vec![(to, Msg::Elect)]);
            }
            return;
        }
        if !n.raft.is_leader() || n.last_handover.is_some_and(|t| now - t < 1_000_000) {
            return;
        }
        let last = n.raft.log.1;
        let best = n
            .raft
            .voters()
            .iter()
            .filter(|&&v| v != id && self.node(v).raft.kind == Kind::Data)
            .filter_map(|&v| n.raft.matched(v).map(|m| (m.1, v)))
            .filter(|(index, _)| last.saturating_sub(*index) <= 200)
            .max();
        if let Some((_, to)) = best {
            let n = self.node_mut(id);
            n.last_handover = Some(now);
            n.handover = Some(Handover {
                to,
                electing: false,
                until: now + 5_000_000,
            });
        }
    }

    /// The records, for a failing schedule's report.
    pub fn history(&self) -> String {
        let mut s = String::new();
        for r in &self.records {
            let _ = writeln!(
                s,
                "  {:>8.1} ms  node {}  {:?}",
                r.at as f64 / 1000.0,
                r.node,
                r.what
            );
        }
        s
    }
}
