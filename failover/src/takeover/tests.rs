//! Each rule at its boundary, on a fake clock (`t0` + offsets), asserting the exact
//! actions, in the manner of openraft's `engine/tests/elect_test.rs`.

use super::*;

const MS: fn(u64) -> Duration = Duration::from_millis;
const EMAX: u64 = 1500;

fn takeover(id: u64, kind: Kind) -> Takeover {
    Takeover::new(TakeoverConfig {
        id,
        kind,
        election_max: MS(EMAX),
    })
}

/// A data node that learned of leader 1 (term 5) 10 s before `t0` and has followed
/// it since: the history a standby has when its leader goes silent.
fn standby(id: u64, t0: Instant) -> Takeover {
    let mut t = takeover(id, Kind::Data);
    let then = t0 - Duration::from_secs(10);
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(0)), then),
        vec![]
    );
    t
}

fn member(id: u64, kind: Kind) -> Member {
    Member {
        id,
        kind,
        voter: true,
        last_contact_ms: None,
    }
}

/// Three data voters 1, 2, 3; node 1 leads at term 5.
fn three_data() -> Vec<Member> {
    vec![
        member(1, Kind::Data),
        member(2, Kind::Data),
        member(3, Kind::Data),
    ]
}

/// A follower of `leader` that last heard it `contact_ms` ago.
fn follower(members: Vec<Member>, leader: Option<u64>, contact_ms: Option<u64>) -> View {
    View {
        state: RaftState::Follower,
        term: 5,
        leader,
        members,
        since_leader_contact: contact_ms.map(MS),
        since_stale_candidate: None,
        elect_allowed: true,
        maintenance: false,
    }
}

fn campaign(reason: CampaignReason, silence_ms: u64, rank: u32) -> Vec<Action> {
    vec![Action::Campaign {
        reason,
        silence_ms,
        rank,
    }]
}

fn fast(silence_ms: u64, rank: u32) -> Vec<Action> {
    campaign(CampaignReason::FastTakeover, silence_ms, rank)
}

/// A follower's own leader lease (openraft 0.9: votes refused for `election_max`
/// after hearing the leader) ends at the same moment on every voter, so the first
/// standby campaigns just after it: `election_max + 15 ms`, not one ms earlier.
#[test]
fn first_standby_campaigns_at_election_max_plus_margin() {
    let t0 = Instant::now();
    let mut t = standby(2, t0);
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1514)), t0),
        vec![]
    );
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1515)), t0 + MS(1)),
        fast(1515, 0)
    );
}

#[test]
fn second_standby_waits_one_stagger_more() {
    let t0 = Instant::now();
    let mut t = standby(3, t0);
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1594)), t0),
        vec![]
    );
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1595)), t0 + MS(1)),
        fast(1595, 1)
    );
}

/// The rank counts the data voters other than the leader: witnesses and learners
/// are skipped, and without a known leader the dead one still takes its place.
#[test]
fn rank_counts_data_voters_other_than_the_leader() {
    let t0 = Instant::now();
    let members = vec![
        member(1, Kind::Data),
        member(2, Kind::Witness),
        Member {
            voter: false,
            ..member(3, Kind::Data)
        },
        member(4, Kind::Data),
    ];
    let mut t = standby(4, t0);
    assert_eq!(
        t.handle(&follower(members.clone(), Some(1), Some(1515)), t0),
        fast(1515, 0)
    );
    // No leader known (this node granted a vote to a candidate): 1 and 4 are the
    // standbys, so 4 is second.
    let mut t = standby(4, t0);
    assert_eq!(
        t.handle(&follower(members.clone(), None, Some(1594)), t0),
        vec![]
    );
    assert_eq!(
        t.handle(&follower(members, None, Some(1595)), t0),
        fast(1595, 1)
    );
}

#[test]
fn a_node_missing_from_the_voters_takes_rank_zero() {
    let t0 = Instant::now();
    let mut t = standby(9, t0);
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1515)), t0),
        fast(1515, 0)
    );
}

/// One fast campaign per `election_max`: a failed one is not repeated at every tick.
#[test]
fn fast_campaigns_are_paced_by_election_max() {
    let t0 = Instant::now();
    let mut t = standby(2, t0);
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(2000)), t0),
        fast(2000, 0)
    );
    let later = |ms: u64| follower(three_data(), Some(1), Some(2000 + ms));
    assert_eq!(t.handle(&later(25), t0 + MS(25)), vec![]);
    assert_eq!(t.handle(&later(1499), t0 + MS(1499)), vec![]);
    assert_eq!(t.handle(&later(1500), t0 + MS(1500)), fast(3500, 0));
}

#[test]
fn only_a_follower_takes_over() {
    let t0 = Instant::now();
    for state in [
        RaftState::Leader,
        RaftState::Candidate,
        RaftState::Learner,
        RaftState::Shutdown,
    ] {
        let mut t = standby(2, t0);
        let v = View {
            state,
            ..follower(three_data(), Some(1), Some(5000))
        };
        assert_eq!(t.handle(&v, t0), vec![], "{state:?}");
    }
}

#[test]
fn no_takeover_when_elections_are_not_allowed_or_in_maintenance() {
    let t0 = Instant::now();
    let mut t = standby(2, t0);
    let v = View {
        elect_allowed: false,
        ..follower(three_data(), Some(1), Some(5000))
    };
    assert_eq!(t.handle(&v, t0), vec![]);
    let v = View {
        maintenance: true,
        ..follower(three_data(), Some(1), Some(5000))
    };
    assert_eq!(t.handle(&v, t0), vec![]);
    // Neither attempt counted: allowed again, it campaigns at once.
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(5000)), t0 + MS(1)),
        fast(5000, 0)
    );
}

/// A node that never heard a leader since it started (a restart with a dead master)
/// leaves the election to openraft's own timer.
#[test]
fn no_takeover_without_any_leader_contact() {
    let t0 = Instant::now();
    let mut t = standby(2, t0);
    assert_eq!(t.handle(&follower(three_data(), Some(1), None), t0), vec![]);
}

fn two_data_and_witness() -> Vec<Member> {
    vec![
        member(1, Kind::Data),
        member(2, Kind::Data),
        member(3, Kind::Witness),
    ]
}

/// The witness as openraft reports it: elections disabled, leader known or not.
fn witness_view(contact_ms: u64, stale_ms: Option<u64>) -> View {
    View {
        since_stale_candidate: stale_ms.map(MS),
        elect_allowed: false,
        ..follower(two_data_and_witness(), None, Some(contact_ms))
    }
}

fn rescue(silence_ms: u64) -> Vec<Action> {
    campaign(CampaignReason::WitnessRescue, silence_ms, 0)
}

#[test]
fn witness_rescues_after_three_election_timeouts_without_a_leader() {
    let t0 = Instant::now();
    let mut t = takeover(3, Kind::Witness);
    assert_eq!(t.handle(&witness_view(4499, None), t0), vec![]);
    assert_eq!(
        t.handle(&witness_view(4500, None), t0 + MS(1)),
        rescue(4500)
    );
}

/// Raft §5.4.1: a candidate whose log is behind the witness's can never win its vote;
/// the witness rescues after one election timeout instead of three.
#[test]
fn witness_rescues_after_one_election_timeout_when_a_stale_candidate_asked() {
    let t0 = Instant::now();
    let mut t = takeover(3, Kind::Witness);
    assert_eq!(t.handle(&witness_view(1499, Some(10)), t0), vec![]);
    assert_eq!(
        t.handle(&witness_view(1500, Some(10)), t0 + MS(1)),
        rescue(1500)
    );
    // A refusal `election_max` ago or more no longer counts.
    let mut t = takeover(3, Kind::Witness);
    assert_eq!(t.handle(&witness_view(1500, Some(1499)), t0), rescue(1500));
    let mut t = takeover(3, Kind::Witness);
    assert_eq!(t.handle(&witness_view(4499, Some(1500)), t0), vec![]);
}

#[test]
fn witness_retries_its_rescue_every_150_ms() {
    let t0 = Instant::now();
    let mut t = takeover(3, Kind::Witness);
    assert_eq!(t.handle(&witness_view(5000, None), t0), rescue(5000));
    assert_eq!(t.handle(&witness_view(5149, None), t0 + MS(149)), vec![]);
    assert_eq!(
        t.handle(&witness_view(5150, None), t0 + MS(150)),
        rescue(5150)
    );
}

/// The rescue ignores the election switch (always off on a witness) and the node's
/// raft state, except as leader: then it hands leadership over instead.
#[test]
fn witness_rescues_as_follower_or_candidate_but_not_as_leader() {
    let t0 = Instant::now();
    for (state, expect) in [
        (RaftState::Candidate, rescue(5000)),
        (RaftState::Follower, rescue(5000)),
        (RaftState::Leader, vec![]),
    ] {
        let mut t = takeover(3, Kind::Witness);
        let v = View {
            state,
            ..witness_view(5000, None)
        };
        assert_eq!(t.handle(&v, t0), expect, "{state:?}");
    }
    let mut t = takeover(3, Kind::Witness);
    let v = View {
        since_leader_contact: None,
        ..witness_view(0, None)
    };
    assert_eq!(t.handle(&v, t0), vec![], "never heard a leader");
}

/// node 1 leading, with node 2's and 3's last answer `c2` / `c3` ms ago.
fn leader_view(c2: Option<u64>, c3: Option<u64>) -> View {
    let mut members = two_data_and_witness();
    members[0].last_contact_ms = Some(0);
    members[1].last_contact_ms = c2;
    members[2].last_contact_ms = c3;
    View {
        state: RaftState::Leader,
        leader: Some(1),
        ..follower(members, Some(1), None)
    }
}

/// Members are judged only once this node has led for `2 × election_max` (a new
/// leader has no answers yet), then a voter silent for more than that is down.
#[test]
fn members_down_after_twice_election_max_with_a_grace_period_after_election() {
    let t0 = Instant::now();
    let mut t = takeover(1, Kind::Data);
    assert_eq!(t.handle(&leader_view(None, None), t0), vec![]);
    assert_eq!(t.handle(&leader_view(None, None), t0 + MS(3000)), vec![]);
    assert_eq!(
        t.handle(&leader_view(Some(3000), Some(3001)), t0 + MS(3001)),
        vec![Action::MemberDown {
            id: 3,
            witness: true
        }]
    );
    assert_eq!(t.unreachable(), &BTreeSet::from([3]));
    assert_eq!(
        t.handle(&leader_view(Some(3001), Some(3002)), t0 + MS(3002)),
        vec![Action::MemberDown {
            id: 2,
            witness: false
        }]
    );
    assert_eq!(
        t.handle(&leader_view(Some(3002), Some(3003)), t0 + MS(3003)),
        vec![]
    );
    assert_eq!(
        t.handle(&leader_view(Some(3003), Some(5)), t0 + MS(3004)),
        vec![Action::MemberUp {
            id: 3,
            witness: true
        }]
    );
}

#[test]
fn learners_and_this_node_are_never_down() {
    let t0 = Instant::now();
    let mut t = takeover(1, Kind::Data);
    let mut v = leader_view(Some(5), Some(5));
    v.members[0].last_contact_ms = None;
    v.members.push(Member {
        voter: false,
        ..member(4, Kind::Data)
    });
    assert_eq!(t.handle(&v, t0), vec![]);
    assert_eq!(t.handle(&v, t0 + MS(10_000)), vec![]);
}

/// Losing leadership clears every alarm (a standby judges nobody), and a new term as
/// leader starts a new grace period.
#[test]
fn losing_leadership_clears_the_down_set_and_restarts_the_grace_period() {
    let t0 = Instant::now();
    let mut t = takeover(1, Kind::Data);
    t.handle(&leader_view(None, None), t0);
    assert_eq!(
        t.handle(&leader_view(Some(9), None), t0 + MS(3001)).len(),
        1
    );
    let standby = View {
        state: RaftState::Follower,
        leader: Some(2),
        ..leader_view(None, None)
    };
    assert_eq!(
        t.handle(&standby, t0 + MS(3100)),
        vec![Action::MemberUp {
            id: 3,
            witness: true
        }]
    );
    assert!(t.unreachable().is_empty());
    assert_eq!(t.handle(&leader_view(None, None), t0 + MS(4000)), vec![]);
    assert_eq!(t.handle(&leader_view(None, None), t0 + MS(7000)), vec![]);
    assert_eq!(
        t.handle(&leader_view(None, Some(1)), t0 + MS(7001)),
        vec![Action::MemberDown {
            id: 2,
            witness: false
        }]
    );
}

/// The healed-partition defect seen on real nodes. The old master, healed from a
/// partition, learns the new leader's term from the answer to its own heartbeat. It
/// becomes a follower before any AppendEntries of the new leader has arrived. Its
/// last contact is from before the cut. Counting its silence from that contact, it
/// campaigned at once, and its higher term deposed the healthy new master. Now it
/// first waits to hear that leader.
#[test]
fn a_healed_old_master_waits_to_hear_the_new_leader() {
    let t0 = Instant::now();
    let mut t = takeover(1, Kind::Data);
    let leading = View {
        state: RaftState::Leader,
        ..follower(three_data(), Some(1), Some(9_000))
    };
    assert_eq!(t.handle(&leading, t0), vec![]);
    let healed = |contact_ms: u64| View {
        term: 6,
        ..follower(three_data(), Some(2), Some(contact_ms))
    };
    let t1 = t0 + MS(400);
    // The old logic campaigned here: fast(9400, 0).
    assert_eq!(t.handle(&healed(9_400), t1), vec![]);
    assert_eq!(t.handle(&healed(10_914), t1 + MS(1514)), vec![]);
    // Still nothing from the new leader: it is gone too, take over as usual.
    assert_eq!(t.handle(&healed(10_915), t1 + MS(1515)), fast(1515, 0));
}

#[test]
fn a_healed_old_master_that_hears_the_new_leader_stays_a_follower() {
    let t0 = Instant::now();
    let mut t = takeover(1, Kind::Data);
    let leading = View {
        state: RaftState::Leader,
        ..follower(three_data(), Some(1), Some(9_000))
    };
    t.handle(&leading, t0);
    let healed = |contact_ms: u64| View {
        term: 6,
        ..follower(three_data(), Some(2), Some(contact_ms))
    };
    assert_eq!(t.handle(&healed(9_400), t0 + MS(25)), vec![]);
    for i in 2..200 {
        assert_eq!(t.handle(&healed(i * 25 % 100), t0 + MS(i * 25)), vec![]);
    }
}

/// The fix must not slow the normal takeover: a standby that has long known its
/// leader campaigns `election_max + 15 ms` after the leader's last AppendEntries.
#[test]
fn a_standby_whose_leader_dies_still_campaigns_at_election_max_plus_margin() {
    let t0 = Instant::now();
    let mut t = standby(2, t0);
    for i in 0..=60 {
        // Heartbeats every 100 ms until t0; the leader dies right after.
        let now = t0 + MS(i * 25);
        assert_eq!(
            t.handle(&follower(three_data(), Some(1), Some(i * 25)), now),
            vec![]
        );
    }
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1514)), t0 + MS(1514)),
        vec![]
    );
    assert_eq!(
        t.handle(&follower(three_data(), Some(1), Some(1515)), t0 + MS(1515)),
        fast(1515, 0)
    );
}

/// A new leader learned through its own AppendEntries: the contact is as recent as
/// the learning, so nothing changes; and a vote granted to a candidate (no leader
/// known at the new term) does not restart the silence either.
#[test]
fn learning_a_leader_through_its_heartbeat_or_granting_a_vote_adds_no_wait() {
    let t0 = Instant::now();
    let mut t = standby(3, t0);
    let new_leader = |contact_ms: u64| View {
        term: 6,
        ..follower(three_data(), Some(2), Some(contact_ms))
    };
    assert_eq!(t.handle(&new_leader(0), t0), vec![]);
    assert_eq!(t.handle(&new_leader(1514), t0 + MS(1514)), vec![]);
    // Standbys other than leader 2: 1 and 3, so this node is second.
    assert_eq!(t.handle(&new_leader(1594), t0 + MS(1594)), vec![]);
    assert_eq!(t.handle(&new_leader(1595), t0 + MS(1595)), fast(1595, 1));

    let mut t = standby(2, t0);
    let voted = View {
        term: 6,
        ..follower(three_data(), None, Some(1595))
    };
    assert_eq!(t.handle(&voted, t0), fast(1595, 1));
}
