//! The policy rules driven with a fake clock (`t0` + offsets), asserting the exact
//! decisions, in the manner of openraft's `engine/tests/elect_test.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::*;
use crate::types::MemberKind::{Data, Witness};

const MS: Duration = Duration::from_millis(1);

fn cfg() -> PolicyConfig {
    PolicyConfig {
        caught_up_within: 200,
        reachable_within: 1000 * MS,
        handover_every: 1000 * MS,
        promote_every: 500 * MS,
    }
}

/// A voter that matched `matched` and answered `age_ms` ago.
fn voter(id: NodeId, kind: MemberKind, matched: u64, age_ms: u32) -> Member {
    Member {
        id,
        kind,
        voter: true,
        matched: Some(matched),
        contact_age: Some(age_ms * MS),
    }
}

fn learner(id: NodeId, matched: u64, age_ms: u32) -> Member {
    Member {
        voter: false,
        ..voter(id, Data, matched, age_ms)
    }
}

/// Node 3 leads with `members` (itself included) and a log up to `last`.
fn view(my_kind: MemberKind, last: u64, mut members: Vec<Member>) -> LeaderView {
    members.push(voter(3, my_kind, last, 0));
    LeaderView {
        me: 3,
        my_kind,
        last_log_index: last,
        members,
    }
}

fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
    v.iter().copied().collect()
}

// ---- rule 1: witness hand-over ----

#[test]
fn a_leading_witness_hands_over_to_the_most_up_to_date_data_voter() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(
        Witness,
        1000,
        vec![voter(1, Data, 950, 10), voter(2, Data, 990, 10)],
    );
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::HandOver { to: 2 }]
    );
}

#[test]
fn a_leading_data_node_never_hands_over() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(Data, 1000, vec![voter(1, Data, 1000, 10)]);
    assert_eq!(d.handle(Event::Tick(&v), t0), vec![]);
}

#[test]
fn only_data_voters_receive_a_hand_over() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    // Another witness and a data learner, both fully caught up and reachable;
    // the learner is promoted (rule 2) but not handed leadership.
    let v = view(
        Witness,
        1000,
        vec![voter(1, Witness, 1000, 10), learner(2, 1000, 10)],
    );
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::Promote { ids: ids(&[2]) }]
    );
}

#[test]
fn an_unreachable_data_voter_is_passed_over_even_if_more_up_to_date() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    // Node 2 holds more of the log but has not answered for 1001 ms (the bound is
    // 1000 ms); node 1 answered exactly 1000 ms ago: still reachable.
    let v = view(
        Witness,
        1000,
        vec![voter(1, Data, 900, 1000), voter(2, Data, 1000, 1001)],
    );
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::HandOver { to: 1 }]
    );
}

#[test]
fn a_data_voter_that_never_answered_is_not_reachable() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let mut silent = voter(1, Data, 1000, 0);
    silent.contact_age = None;
    let v = view(Witness, 1000, vec![silent]);
    assert_eq!(d.handle(Event::Tick(&v), t0), vec![]);
}

#[test]
fn caught_up_means_within_the_bound_inclusive() {
    let t0 = Instant::now();
    // 200 behind: caught up.
    let mut d = LeaderDuties::new(cfg());
    let v = view(Witness, 1000, vec![voter(1, Data, 800, 10)]);
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::HandOver { to: 1 }]
    );
    // 201 behind: not (the leader keeps replicating; a later tick hands over).
    let mut d = LeaderDuties::new(cfg());
    let v = view(Witness, 1000, vec![voter(1, Data, 799, 10)]);
    assert_eq!(d.handle(Event::Tick(&v), t0), vec![]);
    // Matched index not known yet: not caught up.
    let mut d = LeaderDuties::new(cfg());
    let mut unknown = voter(1, Data, 0, 10);
    unknown.matched = None;
    let v = view(Witness, 10, vec![unknown]);
    assert_eq!(d.handle(Event::Tick(&v), t0), vec![]);
}

#[test]
fn a_tie_goes_to_the_highest_id() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(
        Witness,
        1000,
        vec![voter(2, Data, 990, 10), voter(1, Data, 990, 10)],
    );
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::HandOver { to: 2 }]
    );
}

#[test]
fn one_hand_over_at_a_time_and_not_more_often_than_every_second() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(Witness, 1000, vec![voter(1, Data, 1000, 10)]);
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::HandOver { to: 1 }]
    );
    // Still running 5 s later: no second one.
    assert_eq!(d.handle(Event::Tick(&v), t0 + 5000 * MS), vec![]);
    // Finished at 5 s (it failed, say): past the pacing, so the next starts at once.
    assert_eq!(d.handle(Event::HandOverFinished, t0 + 5000 * MS), vec![]);
    assert_eq!(
        d.handle(Event::Tick(&v), t0 + 5001 * MS),
        vec![Decision::HandOver { to: 1 }]
    );
    // Finished quickly: the next waits for `handover_every` after the start.
    assert_eq!(d.handle(Event::HandOverFinished, t0 + 5100 * MS), vec![]);
    assert_eq!(d.handle(Event::Tick(&v), t0 + 6000 * MS), vec![]);
    assert_eq!(
        d.handle(Event::Tick(&v), t0 + 6001 * MS),
        vec![Decision::HandOver { to: 1 }]
    );
}

// ---- rule 2: learner promotion ----

#[test]
fn caught_up_reachable_learners_are_promoted_together() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(
        Data,
        1000,
        vec![
            voter(1, Data, 1000, 10),
            learner(4, 800, 10),    // 200 behind: ready
            learner(5, 1000, 20),   // ready
            learner(6, 799, 10),    // 201 behind: not yet
            learner(7, 1000, 1001), // silent for too long
        ],
    );
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![Decision::Promote { ids: ids(&[4, 5]) }]
    );
}

#[test]
fn promotions_are_checked_at_most_every_500_ms() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let nobody = view(Data, 1000, vec![voter(1, Data, 1000, 10)]);
    let ready = view(Data, 1000, vec![learner(4, 1000, 10)]);
    // A check with nothing to promote still counts as the check.
    assert_eq!(d.handle(Event::Tick(&nobody), t0), vec![]);
    assert_eq!(d.handle(Event::Tick(&ready), t0 + 499 * MS), vec![]);
    assert_eq!(
        d.handle(Event::Tick(&ready), t0 + 500 * MS),
        vec![Decision::Promote { ids: ids(&[4]) }]
    );
    // The promotion has not committed yet: asked again on the next check, not before.
    assert_eq!(d.handle(Event::Tick(&ready), t0 + 999 * MS), vec![]);
    assert_eq!(
        d.handle(Event::Tick(&ready), t0 + 1000 * MS),
        vec![Decision::Promote { ids: ids(&[4]) }]
    );
}

#[test]
fn a_witness_leader_hands_over_and_promotes_in_the_same_tick() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(
        Witness,
        1000,
        vec![voter(1, Data, 1000, 10), learner(4, 1000, 10)],
    );
    assert_eq!(
        d.handle(Event::Tick(&v), t0),
        vec![
            Decision::HandOver { to: 1 },
            Decision::Promote { ids: ids(&[4]) }
        ]
    );
}

#[test]
fn nothing_to_do_in_a_settled_cluster() {
    let t0 = Instant::now();
    let mut d = LeaderDuties::new(cfg());
    let v = view(
        Data,
        1000,
        vec![voter(1, Data, 1000, 10), voter(2, Witness, 1000, 10)],
    );
    for k in 0..10 {
        assert_eq!(d.handle(Event::Tick(&v), t0 + k * 300 * MS), vec![]);
    }
}

// ---- rule 3: switchover target ----

#[test]
fn switchover_to_a_named_node_must_be_another_data_voter() {
    let v = view(
        Data,
        1000,
        vec![
            voter(1, Data, 10, 10),
            voter(2, Witness, 1000, 10),
            learner(4, 1000, 10),
        ],
    );
    assert_eq!(switchover_target(&v, &cfg(), Some(1)), Ok(1));
    assert_eq!(
        switchover_target(&v, &cfg(), Some(3)),
        Err(InvalidRequest::AlreadyLeader { node: 3 })
    );
    for not_data_voter in [2, 4, 42] {
        assert_eq!(
            switchover_target(&v, &cfg(), Some(not_data_voter)),
            Err(InvalidRequest::NotADataVoter {
                node: not_data_voter
            })
        );
    }
}

#[test]
fn switchover_to_anyone_picks_the_best_reachable_data_voter() {
    // Node 2 is further but silent; node 1 reachable: node 1.
    let v = view(
        Data,
        1000,
        vec![voter(1, Data, 900, 10), voter(2, Data, 1000, 5000)],
    );
    assert_eq!(switchover_target(&v, &cfg(), None), Ok(1));
    // Nobody reachable: the most up to date anyway (the hand-over will say why it
    // failed).
    let v = view(
        Data,
        1000,
        vec![voter(1, Data, 900, 5000), voter(2, Data, 1000, 5000)],
    );
    assert_eq!(switchover_target(&v, &cfg(), None), Ok(2));
    // Tie: the highest id.
    let v = view(
        Data,
        1000,
        vec![voter(1, Data, 1000, 10), voter(2, Data, 1000, 10)],
    );
    assert_eq!(switchover_target(&v, &cfg(), None), Ok(2));
    // Only a witness besides this node.
    let v = view(Data, 1000, vec![voter(2, Witness, 1000, 10)]);
    assert_eq!(
        switchover_target(&v, &cfg(), None),
        Err(InvalidRequest::NoHandOverTarget)
    );
}
