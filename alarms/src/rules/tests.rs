//! Fake-clock tests of the rules engine: time is a plain millisecond counter.

use super::*;

const S: u64 = 1000;
const MIN: u64 = 60 * S;
const T0: u64 = 1_800_000_000_000;

fn raise(alarm: AlarmId, subject: &str) -> Event {
    Event::Raise {
        alarm,
        subject: subject.into(),
        detail: String::new(),
    }
}

fn clear(alarm: AlarmId, subject: &str) -> Event {
    Event::Clear {
        alarm,
        subject: subject.into(),
    }
}

/// Engine plus a clock; collects everything sent.
struct Harness {
    engine: Engine,
    now: u64,
    sent: Vec<Notification>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(RulesConfig::default())
    }
    fn with(cfg: RulesConfig) -> Harness {
        Harness {
            engine: Engine::new(cfg),
            now: T0,
            sent: Vec::new(),
        }
    }
    fn ev(&mut self, e: Event) -> usize {
        let out = self.engine.handle(e, self.now);
        let n = out.len();
        self.sent.extend(out);
        n
    }
    /// Advance the clock in 1 s ticks.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + S).min(end);
            self.ev(Event::Tick);
        }
    }
    /// (alarm, subject, transition) of every item sent so far, in order.
    fn log(&self) -> Vec<(AlarmId, String, Transition)> {
        self.sent
            .iter()
            .flat_map(|n| n.items.iter())
            .map(|i| (i.alarm, i.subject.clone(), i.transition))
            .collect()
    }
    fn take(&mut self) -> Vec<Notification> {
        std::mem::take(&mut self.sent)
    }
}

fn item(alarm: AlarmId, subject: &str, t: Transition) -> (AlarmId, String, Transition) {
    (alarm, subject.to_string(), t)
}

#[test]
fn raise_is_sent_after_the_grouping_window_and_clear_after_that() {
    let mut h = Harness::new();
    assert_eq!(
        h.ev(raise(AlarmId::NodeDown, "node-b")),
        0,
        "held for grouping"
    );
    h.advance(9 * S);
    assert!(h.sent.is_empty());
    h.advance(S);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::NodeDown, "node-b", Transition::Raised)]
    );
    assert_eq!(h.sent[0].items[0].since_ms, T0);
    h.advance(MIN);
    h.ev(clear(AlarmId::NodeDown, "node-b"));
    h.advance(10 * S);
    assert_eq!(h.sent.len(), 2);
    let c = &h.sent[1].items[0];
    assert_eq!(c.transition, Transition::Cleared);
    assert_eq!(
        c.since_ms, T0,
        "the clear tells since when the alarm lasted"
    );
}

#[test]
fn cleared_mails_can_be_switched_off() {
    let mut h = Harness::with(RulesConfig {
        send_cleared: false,
        ..RulesConfig::default()
    });
    h.ev(raise(AlarmId::DiskSpaceLow, "node-a"));
    h.advance(MIN);
    h.ev(clear(AlarmId::DiskSpaceLow, "node-a"));
    h.advance(MIN);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::DiskSpaceLow, "node-a", Transition::Raised)]
    );
}

#[test]
fn alarms_raised_together_go_out_as_one_notification() {
    let mut h = Harness::new();
    h.ev(raise(AlarmId::QuorumLost, "node-a"));
    h.advance(3 * S);
    h.ev(raise(AlarmId::WitnessLost, "witness"));
    h.advance(3 * S);
    h.ev(raise(AlarmId::DiskSpaceLow, "node-a"));
    h.advance(10 * S);
    assert_eq!(h.sent.len(), 1);
    assert_eq!(h.sent[0].items.len(), 3);
    assert_eq!(h.sent[0].severity(), Severity::Critical);
    // Something raised after the group left starts a new one.
    h.ev(raise(AlarmId::AuthFailures, "node-a"));
    h.advance(10 * S);
    assert_eq!(h.sent.len(), 2);
}

#[test]
fn a_blip_inside_the_grouping_window_sends_nothing() {
    let mut h = Harness::new();
    h.ev(raise(AlarmId::ReplicationLag, "node-b"));
    h.advance(2 * S);
    h.ev(clear(AlarmId::ReplicationLag, "node-b"));
    h.advance(MIN);
    assert!(h.sent.is_empty());
}

#[test]
fn a_lasting_alarm_is_repeated_at_its_interval() {
    let mut h = Harness::new();
    h.ev(raise(AlarmId::QuorumLost, "node-a")); // repeat: 1 h
    h.advance(10 * S);
    h.advance(3 * 60 * MIN);
    let reminders = h
        .log()
        .iter()
        .filter(|i| i.2 == Transition::Reminder)
        .count();
    assert_eq!(reminders, 3);
    // Raising it again while active does not restart anything.
    h.ev(raise(AlarmId::QuorumLost, "node-a"));
    h.advance(MIN);
    assert_eq!(h.log().len(), 4);
    // Event alarms never repeat.
    h.ev(raise(AlarmId::MasterChanged, "node-b"));
    h.advance(5 * 60 * MIN);
    assert_eq!(
        h.log()
            .iter()
            .filter(|i| i.0 == AlarmId::MasterChanged)
            .count(),
        1
    );
}

#[test]
fn a_flapping_alarm_is_reported_once_then_once_more_when_stable() {
    let mut h = Harness::new();
    // Node goes down and back every 20 s for 10 minutes: 30 flips.
    for _ in 0..15 {
        h.ev(raise(AlarmId::NodeDown, "node-c"));
        h.advance(20 * S);
        h.ev(clear(AlarmId::NodeDown, "node-c"));
        h.advance(20 * S);
    }
    let log = h.log();
    let flapping = log.iter().filter(|i| i.2 == Transition::Flapping).count();
    assert_eq!(flapping, 1, "{log:?}");
    // Before it was flapping, the first cycles were reported: 3 raises, 2 clears at most.
    assert!(log.len() <= 6, "{log:?}");
    assert_eq!(log.last().map(|i| i.2), Some(Transition::Flapping));
    // Quiet until stable for 15 min; then one mail with the settled state.
    h.advance(14 * MIN);
    assert_eq!(h.log().len(), log.len());
    h.advance(2 * MIN);
    assert_eq!(
        h.log().last().cloned(),
        Some(item(
            AlarmId::NodeDown,
            "node-c",
            Transition::Stable { active: false }
        ))
    );
    // Afterwards it behaves normally again.
    let n = h.log().len();
    h.ev(raise(AlarmId::NodeDown, "node-c"));
    h.advance(10 * S);
    assert_eq!(h.log().len(), n + 1);
}

#[test]
fn a_flapping_alarm_that_settles_active_is_reported_active_and_repeats() {
    let mut h = Harness::with(RulesConfig {
        flap_flips: 4,
        ..RulesConfig::default()
    });
    for _ in 0..2 {
        h.ev(raise(AlarmId::ReplicationLag, "node-b"));
        h.advance(S);
        h.ev(clear(AlarmId::ReplicationLag, "node-b"));
        h.advance(S);
    }
    h.ev(raise(AlarmId::ReplicationLag, "node-b"));
    h.advance(20 * MIN);
    assert_eq!(
        h.log(),
        vec![
            item(AlarmId::ReplicationLag, "node-b", Transition::Flapping),
            item(
                AlarmId::ReplicationLag,
                "node-b",
                Transition::Stable { active: true }
            ),
        ]
    );
    h.ev(clear(AlarmId::ReplicationLag, "node-b"));
    h.advance(MIN);
    assert_eq!(h.log().last().map(|i| i.2), Some(Transition::Cleared));
}

#[test]
fn node_down_inhibits_that_nodes_other_alarms_but_not_other_nodes() {
    let mut h = Harness::new();
    h.ev(raise(AlarmId::NodeDown, "node-b"));
    h.advance(S);
    h.ev(raise(AlarmId::ReplicationLag, "node-b"));
    h.ev(raise(AlarmId::RecordingSyncBehind, "node-b"));
    h.ev(raise(AlarmId::DiskSpaceLow, "node-a"));
    h.advance(MIN);
    assert_eq!(
        h.log(),
        vec![
            item(AlarmId::NodeDown, "node-b", Transition::Raised),
            item(AlarmId::DiskSpaceLow, "node-a", Transition::Raised),
        ]
    );
    // The node comes back: its clear goes out; lag, still active, is reported now.
    h.take();
    h.ev(clear(AlarmId::NodeDown, "node-b"));
    h.advance(10 * S);
    let log = h.log();
    assert!(log.contains(&item(AlarmId::NodeDown, "node-b", Transition::Cleared)));
    assert!(log.contains(&item(AlarmId::ReplicationLag, "node-b", Transition::Raised)));
    assert_eq!(h.sent.len(), 1, "one grouped mail");
}

#[test]
fn node_down_arriving_inside_the_window_also_inhibits_what_came_before() {
    let mut h = Harness::new();
    h.ev(raise(AlarmId::ReplicationLag, "node-b"));
    h.advance(2 * S);
    h.ev(raise(AlarmId::NodeDown, "node-b"));
    h.advance(MIN);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::NodeDown, "node-b", Transition::Raised)]
    );
}

#[test]
fn failover_mutes_replication_lag_for_the_configured_time() {
    let mut h = Harness::with(RulesConfig {
        failover_lag_mute_ms: 2 * MIN,
        ..RulesConfig::default()
    });
    h.ev(Event::Failover);
    h.ev(raise(AlarmId::ReplicationLag, "node-a"));
    h.ev(raise(AlarmId::DiskSpaceLow, "node-a"));
    h.advance(MIN);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::DiskSpaceLow, "node-a", Transition::Raised)]
    );
    // Caught up in time: never mailed.
    h.ev(clear(AlarmId::ReplicationLag, "node-a"));
    h.advance(5 * MIN);
    assert_eq!(h.log().len(), 1);
    // Still lagging after the mute: reported once it ends.
    h.ev(Event::Failover);
    h.ev(raise(AlarmId::ReplicationLag, "node-a"));
    h.advance(MIN + 50 * S);
    assert_eq!(h.log().len(), 1);
    h.advance(30 * S);
    assert_eq!(
        h.log().last().cloned(),
        Some(item(AlarmId::ReplicationLag, "node-a", Transition::Raised))
    );
}

#[test]
fn silences_match_by_alarm_and_or_subject_until_a_time() {
    let mut h = Harness::new();
    h.ev(Event::Silence(Silence {
        alarm: Some(AlarmId::DiskSpaceLow),
        subject: None,
        until_ms: T0 + 30 * MIN,
    }));
    h.ev(Event::Silence(Silence {
        alarm: None,
        subject: Some("node-c".into()),
        until_ms: T0 + 30 * MIN,
    }));
    h.ev(raise(AlarmId::DiskSpaceLow, "node-a"));
    h.ev(raise(AlarmId::AuthFailures, "node-c"));
    h.ev(raise(AlarmId::AuthFailures, "node-a"));
    h.advance(MIN);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::AuthFailures, "node-a", Transition::Raised)]
    );
    // The silenced alarm that cleared meanwhile is never mailed; the one that lasts is
    // reported when the silence ends.
    h.ev(clear(AlarmId::AuthFailures, "node-c"));
    h.advance(30 * MIN);
    assert_eq!(
        h.log()[1..],
        [item(AlarmId::DiskSpaceLow, "node-a", Transition::Raised)]
    );
}

#[test]
fn maintenance_mutes_everything_except_its_own_note() {
    let mut h = Harness::new();
    h.ev(Event::Maintenance(true));
    h.ev(Event::Maintenance(true)); // no change, no second note
    h.ev(raise(AlarmId::NodeDown, "node-b"));
    h.ev(raise(AlarmId::MasterChanged, "node-a"));
    h.advance(30 * MIN);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::Maintenance, "cluster", Transition::Event)]
    );
    assert!(h.engine.maintenance());
    assert!(h.engine.active(h.now)[0].muted);
    h.ev(Event::Maintenance(false));
    h.advance(10 * S);
    // The note and the alarm still active go out together; the event is not replayed.
    assert_eq!(h.sent.len(), 2);
    assert_eq!(
        h.log()[1..],
        [
            item(AlarmId::Maintenance, "cluster", Transition::Event),
            item(AlarmId::NodeDown, "node-b", Transition::Raised),
        ]
    );
}

#[test]
fn heartbeat_is_off_by_default_and_can_be_enabled() {
    let mut h = Harness::new();
    h.ev(raise(AlarmId::Heartbeat, "node-a"));
    h.advance(MIN);
    assert!(h.sent.is_empty());
    let mut entries = BTreeMap::new();
    entries.insert("alarm.heartbeat".to_string(), Value::Bool(true));
    let mut h = Harness::with(RulesConfig::from_entries(&entries).unwrap());
    h.ev(raise(AlarmId::Heartbeat, "node-a"));
    h.advance(MIN);
    assert_eq!(
        h.log(),
        vec![item(AlarmId::Heartbeat, "node-a", Transition::Event)]
    );
}

#[test]
fn notification_ids_are_deterministic_and_distinct() {
    let run = || {
        let mut h = Harness::new();
        h.ev(raise(AlarmId::NodeDown, "node-b"));
        h.advance(MIN);
        h.ev(clear(AlarmId::NodeDown, "node-b"));
        h.advance(MIN);
        h.ev(raise(AlarmId::NodeDown, "node-b"));
        h.advance(MIN);
        h.sent.iter().map(|n| n.id.clone()).collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run(), "same history, same ids");
    assert_eq!(a.len(), 3);
    let unique: BTreeSet<_> = a.iter().collect();
    assert_eq!(unique.len(), 3, "raise, clear and re-raise differ");
    assert!(a.iter().all(|id| id.len() == 32));
    // Pinned: the id must not change between builds (nodes must agree).
    let n = Notification::new(
        5,
        vec![Item {
            alarm: AlarmId::NodeDown,
            subject: "n".into(),
            transition: Transition::Raised,
            detail: String::new(),
            since_ms: 1,
            at_ms: 2,
        }],
    );
    assert_eq!(n.id, Notification::new(9, n.items.clone()).id);
    assert_eq!(n.id, PINNED_ID);
}

const PINNED_ID: &str = "30295b28c0190bd3195ddef9c0521c30";

#[test]
fn rules_config_parses_and_names_the_bad_key() {
    let mut e = BTreeMap::new();
    e.insert("alarm.group_window_s".into(), Value::from(30));
    e.insert("alarm.send_cleared".into(), Value::Bool(false));
    e.insert(
        "alarm.disabled".into(),
        serde_json::json!(["storage.disk_space_low"]),
    );
    e.insert("alarm.recipients.noc".into(), serde_json::json!(["a@b.c"]));
    let c = RulesConfig::from_entries(&e).unwrap();
    assert_eq!(c.group_window_ms, 30_000);
    assert!(!c.send_cleared);
    assert!(c.disabled.contains(&AlarmId::DiskSpaceLow));
    e.insert("alarm.flap_window_s".into(), Value::from("ten"));
    let err = RulesConfig::from_entries(&e).unwrap_err().to_string();
    assert!(err.contains("alarm.flap_window_s"), "{err}");
    e.remove("alarm.flap_window_s");
    e.insert("alarm.disabled".into(), serde_json::json!(["disk"]));
    let err = RulesConfig::from_entries(&e).unwrap_err().to_string();
    assert!(
        err.contains("alarm.disabled") && err.contains("\"disk\""),
        "{err}"
    );
}

#[test]
fn an_alarm_disabled_after_it_was_raised_is_never_mailed() {
    let mut h = Harness::new();
    // Raised while muted (held back), and raised into a pending group.
    h.ev(raise(AlarmId::NodeDown, "node-b"));
    h.ev(raise(AlarmId::DiskSpaceLow, "node-b"));
    h.ev(raise(AlarmId::DiskSpaceLow, "node-a"));
    let mut cfg = RulesConfig::default();
    cfg.disabled.insert(AlarmId::DiskSpaceLow);
    h.engine.set_config(cfg);
    h.advance(10 * MIN);
    h.ev(clear(AlarmId::NodeDown, "node-b"));
    h.advance(10 * MIN);
    let log = h.log();
    assert!(
        log.iter().all(|(a, _, _)| *a != AlarmId::DiskSpaceLow),
        "{log:?}"
    );
    assert!(
        log.iter().any(|(a, _, _)| *a == AlarmId::NodeDown),
        "{log:?}"
    );
}

#[test]
fn a_zero_grouping_window_sends_immediately() {
    let mut h = Harness::with(RulesConfig {
        group_window_ms: 0,
        ..RulesConfig::default()
    });
    assert_eq!(h.ev(raise(AlarmId::SmtpFailing, "node-a")), 1);
}

#[test]
fn silences_come_from_config_and_name_the_bad_key() {
    let mut e = BTreeMap::new();
    e.insert(
        "alarm.silence.disk-work".to_string(),
        serde_json::json!({"alarm": "storage.disk_space_low", "subject": "node-b",
                           "until": "2027-01-15T10:00:00Z", "comment": "new disks"}),
    );
    e.insert(
        "alarm.route.default".to_string(),
        serde_json::json!(["noc"]),
    );
    let s = Silence::from_entries(&e).unwrap();
    assert_eq!(
        s,
        vec![Silence {
            alarm: Some(AlarmId::DiskSpaceLow),
            subject: Some("node-b".into()),
            until_ms: 1_800_007_200_000,
        }]
    );
    let mut h = Harness::new();
    h.engine.set_silences(s);
    h.ev(raise(AlarmId::DiskSpaceLow, "node-b"));
    h.advance(MIN);
    assert!(h.sent.is_empty());
    h.engine.set_silences(Vec::new());
    h.advance(S);
    h.advance(10 * S);
    assert_eq!(h.log().len(), 1, "reported once the silence is removed");
    for (v, what) in [
        (
            serde_json::json!({"until": "2027-01-15T10:00:00Z"}),
            "alarm.maintenance",
        ),
        (
            serde_json::json!({"alarm": "disk", "until": "2027-01-15T10:00:00Z"}),
            "not an alarm id",
        ),
        (
            serde_json::json!({"subject": "n", "until": "tomorrow"}),
            "RFC 3339",
        ),
        (
            serde_json::json!({"subject": "n", "until": "2027-01-15T10:00:00Z", "x": 1}),
            "unknown field `x`",
        ),
        (serde_json::json!("node-b"), "expected {"),
    ] {
        e.insert("alarm.silence.bad".to_string(), v);
        let err = Silence::from_entries(&e).unwrap_err().to_string();
        assert!(
            err.contains("`alarm.silence.bad`") && err.contains(what),
            "{err}"
        );
    }
}
