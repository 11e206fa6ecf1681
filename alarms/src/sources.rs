//! Alarm sources: turn what the node sees (Raft metrics, the master's view of the
//! members, config flags) into rule [`Event`]s. Pure: the driver fills a [`Snapshot`]
//! once a second and [`Observer::observe`] diffs it with the previous one.

use std::collections::BTreeMap;

use super::catalog::AlarmId;
use super::rules::{Event, Millis};

/// What the node sees at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// This node's name (the subject of node-local alarms such as quorum lost).
    pub node: String,
    /// The leader this node knows, by name; `None` during elections or without quorum.
    pub leader: Option<String>,
    /// This node is the leader but has not heard from a quorum recently.
    pub leader_without_quorum: bool,
    /// On the master: members that do not answer, name → is a witness.
    pub unreachable: BTreeMap<String, bool>,
    /// On the master: members behind by more than the threshold, name → detail.
    pub lagging: BTreeMap<String, String>,
    /// On the master: the voters are exactly two data nodes (no witness, no third
    /// voter): their names. Empty otherwise.
    pub two_data_voters: Vec<String>,
    /// `alarm.maintenance`: mute alarm mails cluster-wide.
    pub maintenance: bool,
    /// Conditions of this node itself (disk space low, recording sync behind):
    /// alarm → detail, raised with this node as the subject while present.
    pub local: BTreeMap<AlarmId, String>,
}

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// The daily heartbeat is due at `hour` (UTC) of each day: returns the day number
/// (days since the epoch) when `now_ms` is at or past that hour and `last_day` is an
/// earlier day.
pub fn heartbeat_due(now_ms: u64, hour: u64, last_day: Option<u64>) -> Option<u64> {
    let day = now_ms / DAY_MS;
    let ms_in_day = now_ms % DAY_MS;
    (ms_in_day >= hour.min(23) * 3_600_000 && last_day.is_none_or(|d| d < day)).then_some(day)
}

/// Days until a certificate expiring at `not_after_unix` (negative: expired).
pub fn days_left(not_after_unix: i64, now_ms: u64) -> i64 {
    (not_after_unix * 1000 - now_ms as i64).div_euclid(DAY_MS as i64)
}

/// Diffs snapshots into events.
#[derive(Debug)]
pub struct Observer {
    /// No leader (or a leader without quorum) for this long raises quorum lost.
    quorum_grace_ms: u64,
    prev: Snapshot,
    /// Last leader seen (gaps without a leader do not count as a change).
    last_leader: Option<String>,
    no_quorum_since: Option<Millis>,
    quorum_lost: bool,
    started: bool,
}

impl Observer {
    pub fn new(quorum_grace_ms: u64) -> Observer {
        Observer {
            quorum_grace_ms,
            prev: Snapshot::default(),
            last_leader: None,
            no_quorum_since: None,
            quorum_lost: false,
            started: false,
        }
    }

    pub fn observe(&mut self, s: &Snapshot, now: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        // At start only "on" is news (the engine starts with maintenance off).
        let maintenance_changed = if self.started {
            s.maintenance != self.prev.maintenance
        } else {
            s.maintenance
        };
        if maintenance_changed {
            out.push(Event::Maintenance(s.maintenance));
        }
        // Master changed: a different leader than the last one known. The first leader
        // seen after start is not a change.
        if let Some(l) = &s.leader {
            match &self.last_leader {
                Some(prev) if prev != l => {
                    out.push(Event::Failover);
                    out.push(Event::Raise {
                        alarm: AlarmId::MasterChanged,
                        subject: l.clone(),
                        detail: format!("The previous master was {prev}."),
                    });
                }
                _ => {}
            }
            self.last_leader = Some(l.clone());
        }
        // Quorum.
        let no_quorum = s.leader.is_none() || s.leader_without_quorum;
        if no_quorum {
            let since = *self.no_quorum_since.get_or_insert(now);
            if !self.quorum_lost && now.saturating_sub(since) >= self.quorum_grace_ms {
                self.quorum_lost = true;
                out.push(Event::Raise {
                    alarm: AlarmId::QuorumLost,
                    subject: s.node.clone(),
                    detail: format!(
                        "No master with a quorum for {} s.",
                        now.saturating_sub(since) / 1000
                    ),
                });
            }
        } else {
            self.no_quorum_since = None;
            if self.quorum_lost {
                self.quorum_lost = false;
                out.push(Event::Clear {
                    alarm: AlarmId::QuorumLost,
                    subject: s.node.clone(),
                });
            }
        }
        // Members down (master's view).
        let alarm_of = |witness: bool| {
            if witness {
                AlarmId::WitnessLost
            } else {
                AlarmId::NodeDown
            }
        };
        for (name, &witness) in &s.unreachable {
            if !self.prev.unreachable.contains_key(name) {
                out.push(Event::Raise {
                    alarm: alarm_of(witness),
                    subject: name.clone(),
                    detail: format!("The master ({}) gets no answer from it.", s.node),
                });
            }
        }
        for (name, &witness) in &self.prev.unreachable {
            if !s.unreachable.contains_key(name) {
                out.push(Event::Clear {
                    alarm: alarm_of(witness),
                    subject: name.clone(),
                });
            }
        }
        // Two data voters and no witness (master's view): one alarm for the cluster.
        let no_witness = !s.two_data_voters.is_empty();
        if no_witness && self.prev.two_data_voters.is_empty() {
            out.push(Event::Raise {
                alarm: AlarmId::NoWitness,
                subject: "cluster".into(),
                detail: format!("Voters: {}.", s.two_data_voters.join(", ")),
            });
        } else if !no_witness && !self.prev.two_data_voters.is_empty() {
            out.push(Event::Clear {
                alarm: AlarmId::NoWitness,
                subject: "cluster".into(),
            });
        }
        // Replication lag (master's view).
        for (name, detail) in &s.lagging {
            if self.prev.lagging.get(name) != Some(detail) {
                out.push(Event::Raise {
                    alarm: AlarmId::ReplicationLag,
                    subject: name.clone(),
                    detail: detail.clone(),
                });
            }
        }
        for name in self.prev.lagging.keys() {
            if !s.lagging.contains_key(name) {
                out.push(Event::Clear {
                    alarm: AlarmId::ReplicationLag,
                    subject: name.clone(),
                });
            }
        }
        // Conditions of this node.
        for (alarm, detail) in &s.local {
            if self.prev.local.get(alarm) != Some(detail) {
                out.push(Event::Raise {
                    alarm: *alarm,
                    subject: s.node.clone(),
                    detail: detail.clone(),
                });
            }
        }
        for alarm in self.prev.local.keys() {
            if !s.local.contains_key(alarm) {
                out.push(Event::Clear {
                    alarm: *alarm,
                    subject: s.node.clone(),
                });
            }
        }
        self.started = true;
        self.prev = s.clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(leader: Option<&str>) -> Snapshot {
        Snapshot {
            node: "node-a".into(),
            leader: leader.map(String::from),
            ..Snapshot::default()
        }
    }

    #[test]
    fn first_leader_is_not_a_change_a_new_one_is() {
        let mut o = Observer::new(5000);
        assert!(o.observe(&snap(Some("node-a")), 0).is_empty());
        assert!(o.observe(&snap(None), 1000).is_empty(), "gap");
        let ev = o.observe(&snap(Some("node-b")), 2000);
        assert_eq!(ev[0], Event::Failover);
        assert!(
            matches!(&ev[1], Event::Raise { alarm: AlarmId::MasterChanged, subject, .. } if subject == "node-b")
        );
        assert!(o.observe(&snap(Some("node-b")), 3000).is_empty());
    }

    #[test]
    fn quorum_lost_after_the_grace_period_and_regained() {
        let mut o = Observer::new(5000);
        o.observe(&snap(Some("node-a")), 0);
        assert!(o.observe(&snap(None), 1000).is_empty());
        assert!(o.observe(&snap(None), 5999).is_empty());
        let ev = o.observe(&snap(None), 6000);
        assert!(
            matches!(&ev[..], [Event::Raise { alarm: AlarmId::QuorumLost, subject, .. }] if subject == "node-a")
        );
        assert!(o.observe(&snap(None), 9000).is_empty(), "raised once");
        let ev = o.observe(&snap(Some("node-a")), 10_000);
        assert_eq!(
            ev,
            vec![Event::Clear {
                alarm: AlarmId::QuorumLost,
                subject: "node-a".into()
            }]
        );
        // A leader that lost its quorum counts too.
        let lonely = Snapshot {
            leader_without_quorum: true,
            ..snap(Some("node-a"))
        };
        o.observe(&lonely, 11_000);
        assert_eq!(o.observe(&lonely, 16_000).len(), 1);
    }

    #[test]
    fn two_data_voters_without_a_witness_raise_one_alarm_until_a_third_joins() {
        let mut o = Observer::new(5000);
        let mut s = snap(Some("node-a"));
        s.two_data_voters = vec!["node-a".into(), "node-b".into()];
        let ev = o.observe(&s, 0);
        assert!(
            matches!(&ev[..], [Event::Raise { alarm: AlarmId::NoWitness, subject, detail }]
                if subject == "cluster" && detail.contains("node-a, node-b")),
            "{ev:?}"
        );
        assert!(o.observe(&s, 1000).is_empty(), "raised once");
        s.two_data_voters.clear();
        assert_eq!(
            o.observe(&s, 2000),
            vec![Event::Clear {
                alarm: AlarmId::NoWitness,
                subject: "cluster".into()
            }]
        );
    }

    #[test]
    fn members_down_and_lagging_are_diffed() {
        let mut o = Observer::new(5000);
        let mut s = snap(Some("node-a"));
        o.observe(&s, 0);
        s.unreachable.insert("node-b".into(), false);
        s.unreachable.insert("witness".into(), true);
        s.lagging.insert("node-c".into(), "lag 9000 ms".into());
        let ev = o.observe(&s, 1000);
        assert_eq!(ev.len(), 3);
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Raise {
                alarm: AlarmId::WitnessLost,
                ..
            }
        )));
        assert!(o.observe(&s, 2000).is_empty());
        s.unreachable.remove("node-b");
        s.lagging.clear();
        let ev = o.observe(&s, 3000);
        assert_eq!(
            ev,
            vec![
                Event::Clear {
                    alarm: AlarmId::NodeDown,
                    subject: "node-b".into()
                },
                Event::Clear {
                    alarm: AlarmId::ReplicationLag,
                    subject: "node-c".into()
                },
            ]
        );
    }

    #[test]
    fn maintenance_flag_changes_become_events() {
        let mut o = Observer::new(5000);
        let mut s = snap(Some("node-a"));
        assert!(o.observe(&s, 0).is_empty(), "off at start: nothing");
        s.maintenance = true;
        assert_eq!(o.observe(&s, 1000), vec![Event::Maintenance(true)]);
        assert!(o.observe(&s, 2000).is_empty());
        s.maintenance = false;
        assert_eq!(o.observe(&s, 3000), vec![Event::Maintenance(false)]);
    }

    #[test]
    fn disk_space_low_is_raised_once_updated_and_cleared() {
        let mut o = Observer::new(5000);
        let mut s = snap(Some("node-a"));
        o.observe(&s, 0);
        s.local.insert(AlarmId::DiskSpaceLow, "91 % full".into());
        let ev = o.observe(&s, 1000);
        assert!(
            matches!(&ev[..], [Event::Raise { alarm: AlarmId::DiskSpaceLow, subject, detail }] if subject == "node-a" && detail == "91 % full")
        );
        assert!(o.observe(&s, 2000).is_empty(), "no repeat while unchanged");
        s.local.clear();
        assert_eq!(
            o.observe(&s, 3000),
            vec![Event::Clear {
                alarm: AlarmId::DiskSpaceLow,
                subject: "node-a".into()
            }]
        );
    }

    #[test]
    fn heartbeat_once_a_day_at_the_hour() {
        let day = 20_000u64; // some day
        let at = |h: u64, m: u64| day * DAY_MS + h * 3_600_000 + m * 60_000;
        assert_eq!(heartbeat_due(at(7, 59), 8, None), None);
        assert_eq!(heartbeat_due(at(8, 0), 8, None), Some(day));
        assert_eq!(
            heartbeat_due(at(15, 0), 8, Some(day)),
            None,
            "already sent today"
        );
        assert_eq!(
            heartbeat_due(at(8, 0) + DAY_MS, 8, Some(day)),
            Some(day + 1)
        );
    }

    #[test]
    fn certificate_days_left() {
        let now_ms = 1_800_000_000_000u64;
        let now_s = (now_ms / 1000) as i64;
        assert_eq!(days_left(now_s + 30 * 86_400 + 10, now_ms), 30);
        assert_eq!(days_left(now_s + 10, now_ms), 0);
        assert_eq!(days_left(now_s - 10, now_ms), -1);
    }
}
