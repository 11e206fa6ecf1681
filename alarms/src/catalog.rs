//! The alarm catalog: every alarm the node can raise, as data.
//!
//! An alarm is identified by a stable dotted id (`cluster.node_down`) that appears
//! in logs, metrics, config keys (`alarm.route.<id>`) and mails alike. The catalog
//! table in `docs/alarms.md` is checked against [`CATALOG`] by a unit test.

use std::fmt;
use std::str::FromStr;

/// Which part of the system an alarm is about; recipients can be routed per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Cluster,
    Replication,
    Storage,
    Media,
    Security,
    Mail,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Cluster,
        Family::Replication,
        Family::Storage,
        Family::Media,
        Family::Security,
        Family::Mail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Cluster => "cluster",
            Family::Replication => "replication",
            Family::Storage => "storage",
            Family::Media => "media",
            Family::Security => "security",
            Family::Mail => "mail",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = ();
    fn from_str(s: &str) -> Result<Family, ()> {
        Family::ALL.into_iter().find(|f| f.as_str() == s).ok_or(())
    }
}

/// How urgent an alarm is. Ordered: `Info < Minor < Major < Critical`; a grouped
/// mail carries the highest severity of its alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Minor,
    Major,
    Critical,
}

impl Severity {
    /// Upper-case label used in mail subjects: `[CRITICAL]`.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Minor => "MINOR",
            Severity::Major => "MAJOR",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether an alarm is a condition that lasts (raised, then cleared) or a one-off event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raised while a condition holds, cleared when it ends (node down → back).
    State,
    /// Happens once (master changed, daily heartbeat); never cleared.
    Event,
}

/// The static description of one alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmDef {
    pub id: AlarmId,
    pub family: Family,
    pub severity: Severity,
    pub kind: Kind,
    /// Short title, used in the mail subject: "Node down".
    pub title: &'static str,
    /// What happened; `{subject}` and `{detail}` are replaced by the event's values.
    pub text: &'static str,
    /// What the operator should do.
    pub advice: &'static str,
    /// Title of the "cleared" notification (state alarms only): "Node back".
    pub cleared_title: &'static str,
    /// Remind every this many seconds while the alarm lasts; `None`: never.
    pub repeat_s: Option<u64>,
    /// Mailed unless switched off; `false` for alarms that are opt-in (heartbeat).
    pub default_enabled: bool,
}

macro_rules! alarm_ids {
    ($($variant:ident => $id:literal),* $(,)?) => {
        /// Identifier of a catalog alarm; its string form is the stable dotted id.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum AlarmId { $($variant),* }

        impl AlarmId {
            pub const ALL: &'static [AlarmId] = &[$(AlarmId::$variant),*];
            /// The stable dotted id, e.g. `cluster.node_down`.
            pub fn as_str(self) -> &'static str {
                match self { $(AlarmId::$variant => $id),* }
            }
        }
    };
}

alarm_ids! {
    NodeDown => "cluster.node_down",
    MasterChanged => "cluster.master_changed",
    QuorumLost => "cluster.quorum_lost",
    WitnessLost => "cluster.witness_lost",
    NoWitness => "cluster.no_witness",
    Maintenance => "cluster.maintenance",
    ReplicationLag => "replication.lag",
    DiskSpaceLow => "storage.disk_space_low",
    DiskFull => "storage.disk_full",
    RecordingSyncBehind => "media.recording_sync_behind",
    AuthFailures => "security.auth_failures",
    CertExpiring => "security.cert_expiring",
    SmtpFailing => "mail.smtp_failing",
    Heartbeat => "mail.heartbeat",
}

impl AlarmId {
    /// The catalog entry of this alarm.
    pub fn def(self) -> &'static AlarmDef {
        CATALOG
            .iter()
            .find(|d| d.id == self)
            .expect("every AlarmId has a catalog entry (checked by a test)")
    }
}

impl fmt::Display for AlarmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlarmId {
    type Err = ();
    fn from_str(s: &str) -> Result<AlarmId, ()> {
        AlarmId::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or(())
    }
}

const HOUR: u64 = 3600;

/// Every alarm, in the order of the docs table.
pub const CATALOG: &[AlarmDef] = &[
    AlarmDef {
        id: AlarmId::NodeDown,
        family: Family::Cluster,
        severity: Severity::Critical,
        kind: Kind::State,
        title: "Node down",
        cleared_title: "Node back",
        text: "Node {subject} stopped answering its peers. {detail}",
        advice: "Check that the machine is powered and reachable (ping, console), then \
                 `systemctl status tandem` and `journalctl -u tandem` on it. The other \
                 nodes keep serving while a quorum remains; see `tandem status`.",
        repeat_s: Some(4 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::MasterChanged,
        family: Family::Cluster,
        severity: Severity::Critical,
        kind: Kind::Event,
        title: "Master changed",
        cleared_title: "",
        text: "Node {subject} is now the master and holds the service address. {detail}",
        advice: "If this was not a planned switchover, find out why the previous master \
                 lost its role (node down, network, maintenance) with `tandem status` and \
                 the previous master's journal. Calls in progress on it may have dropped.",
        repeat_s: None,
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::QuorumLost,
        family: Family::Cluster,
        severity: Severity::Critical,
        kind: Kind::State,
        title: "Quorum lost",
        cleared_title: "Quorum regained",
        text: "Node {subject} cannot reach a majority of the voting nodes: no \
               configuration or CDR can be committed. {detail}",
        advice: "Bring back enough voters (nodes or the witness) to form a majority; check \
                 the network between the sites (`tandem status` on each node, \
                 docs/failover.md).",
        repeat_s: Some(HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::WitnessLost,
        family: Family::Cluster,
        severity: Severity::Major,
        kind: Kind::State,
        title: "Witness lost",
        cleared_title: "Witness back",
        text: "The witness ({subject}) does not answer: one more failure stops automatic \
               failover. {detail}",
        advice: "Restore the witness host or its network path; until then avoid \
                 maintenance on the data nodes.",
        repeat_s: Some(12 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::NoWitness,
        family: Family::Cluster,
        severity: Severity::Major,
        kind: Kind::State,
        title: "No witness",
        cleared_title: "Third voter added",
        text: "The cluster votes with two data nodes and no witness: if either fails, the \
               other has no majority and does not take over the master role by itself. \
               {detail}",
        advice: "Add a witness on a third machine (`role = \"witness\"`, `tandem join`; \
                 docs/failover.md) or a third data node. Until then a failed master needs \
                 manual recovery (docs/failover.md, \"Runbook\").",
        repeat_s: Some(24 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::Maintenance,
        family: Family::Cluster,
        severity: Severity::Info,
        kind: Kind::Event,
        title: "Maintenance mode",
        cleared_title: "",
        text: "Maintenance mode {detail}.",
        advice: "While maintenance mode is on, no alarm mail is sent. Switch it off when \
                 the work is done; alarms still active are then reported.",
        repeat_s: None,
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::ReplicationLag,
        family: Family::Replication,
        severity: Severity::Major,
        kind: Kind::State,
        title: "Replication lag over threshold",
        cleared_title: "Replication caught up",
        text: "Node {subject} is behind the master beyond the threshold. {detail}",
        advice: "Check the network and disk of the lagging node (`tandem status` shows the \
                 lag per node). A standby that lags cannot take over without losing the \
                 latest writes.",
        repeat_s: Some(4 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::DiskSpaceLow,
        family: Family::Storage,
        severity: Severity::Major,
        kind: Kind::State,
        title: "Disk space low",
        cleared_title: "Disk space back to normal",
        text: "Free space on node {subject} is below the threshold. {detail}",
        advice: "Free space in the data directory (old recordings, logs) or lower the \
                 retention (`retention.*` config keys). A full disk stops replication \
                 on this node.",
        repeat_s: Some(6 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::DiskFull,
        family: Family::Storage,
        severity: Severity::Critical,
        kind: Kind::State,
        title: "Disk full: writes refused",
        cleared_title: "Disk space back: writes accepted",
        text: "Node {subject} refuses writes that add data: less free space than its \
               reserve. {detail}",
        advice: "Free space in the data directory now (old recordings, logs, files that \
                 do not belong there) or lower the retention (`retention.*`); writes resume \
                 by themselves. Reads go on meanwhile. If this node is the master, a \
                 switchover to a standby with space resumes writes at once.",
        repeat_s: Some(HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::RecordingSyncBehind,
        family: Family::Media,
        severity: Severity::Minor,
        kind: Kind::State,
        title: "Recording sync behind",
        cleared_title: "Recording sync caught up",
        text: "Node {subject} is behind in copying call recordings from the other nodes. {detail}",
        advice: "Check the link between the nodes, the bandwidth cap \
                 (`replication.recording_bandwidth_kbps`) and the free space on this node \
                 (`tandem status` shows the backlog); a recording held by one node only is \
                 lost if that node fails.",
        repeat_s: Some(12 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::AuthFailures,
        family: Family::Security,
        severity: Severity::Major,
        kind: Kind::State,
        title: "Repeated authentication failures",
        cleared_title: "Authentication failures stopped",
        text: "Many failed authentications on node {subject}. {detail}",
        advice: "Look at the sources in the journal; block them in the firewall if they \
                 are not yours, or fix the credentials of a misconfigured client.",
        repeat_s: Some(4 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::CertExpiring,
        family: Family::Security,
        severity: Severity::Major,
        kind: Kind::State,
        title: "Certificate about to expire",
        cleared_title: "Certificate renewed",
        text: "A certificate on node {subject} expires soon. {detail}",
        advice: "Renew the certificate named above and reload the node before it expires; \
                 expired peer certificates split the cluster.",
        repeat_s: Some(24 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::SmtpFailing,
        family: Family::Mail,
        severity: Severity::Major,
        kind: Kind::State,
        title: "SMTP failing",
        cleared_title: "SMTP working again",
        text: "Alarm mails from {subject} cannot be delivered. {detail}",
        advice: "Check the `smtp.*` config keys and the mail server; run `tandem alarm test` \
                 to see the exact error. Mails are kept and retried.",
        repeat_s: Some(24 * HOUR),
        default_enabled: true,
    },
    AlarmDef {
        id: AlarmId::Heartbeat,
        family: Family::Mail,
        severity: Severity::Info,
        kind: Kind::Event,
        title: "Still alive",
        cleared_title: "",
        text: "Daily heartbeat from {subject}: alarm mail works. {detail}",
        advice: "Nothing to do. If this mail stops arriving, alarm mail is broken.",
        repeat_s: None,
        default_enabled: false,
    },
];

/// Fill `{subject}` and `{detail}` into an alarm text.
pub fn fill(template: &str, subject: &str, detail: &str) -> String {
    template
        .replace("{subject}", subject)
        .replace("{detail}", detail)
        .trim()
        .to_string()
}

/// The catalog as a Markdown table, as it appears in `docs/alarms.md` (a test checks
/// that the docs contain exactly this table).
pub fn markdown_table() -> String {
    let mut s = String::from(
        "| Id | Family | Severity | Kind | Title (cleared) | Repeat | What to do |\n\
         |----|--------|----------|------|-----------------|--------|------------|\n",
    );
    for d in CATALOG {
        let title = if d.cleared_title.is_empty() {
            d.title.to_string()
        } else {
            format!("{} ({})", d.title, d.cleared_title)
        };
        let kind = match d.kind {
            Kind::State => "state",
            Kind::Event if d.default_enabled => "event",
            Kind::Event => "event, off by default",
        };
        let repeat = d
            .repeat_s
            .map(|r| format!("{} h", r / HOUR))
            .unwrap_or_else(|| "—".into());
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |\n",
            d.id,
            d.family,
            d.severity.label(),
            kind,
            title,
            repeat,
            d.advice.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_exactly_one_entry_and_round_trips() {
        for &a in AlarmId::ALL {
            assert_eq!(CATALOG.iter().filter(|d| d.id == a).count(), 1, "{a}");
            assert_eq!(a.as_str().parse::<AlarmId>(), Ok(a));
            let def = a.def();
            assert!(a.as_str().starts_with(def.family.as_str()), "{a}");
            assert!(!def.title.is_empty() && !def.advice.is_empty());
            assert_eq!(
                def.kind == Kind::State,
                !def.cleared_title.is_empty(),
                "{a}"
            );
            if def.kind == Kind::Event {
                assert_eq!(def.repeat_s, None, "{a}: events do not repeat");
            }
        }
        assert_eq!(CATALOG.len(), AlarmId::ALL.len());
        assert_eq!("nope".parse::<AlarmId>(), Err(()));
    }

    #[test]
    fn heartbeat_is_off_by_default_and_everything_else_on() {
        for d in CATALOG {
            assert_eq!(d.default_enabled, d.id != AlarmId::Heartbeat, "{}", d.id);
        }
    }

    #[test]
    fn severity_orders_by_urgency() {
        assert!(Severity::Critical > Severity::Major);
        assert!(Severity::Major > Severity::Minor);
        assert!(Severity::Minor > Severity::Info);
        assert_eq!("security".parse::<Family>(), Ok(Family::Security));
    }

    #[test]
    fn fill_replaces_placeholders() {
        assert_eq!(
            fill(AlarmId::NodeDown.def().text, "node-b", ""),
            "Node node-b stopped answering its peers."
        );
    }

    /// docs/alarms.md is the operator's copy of the catalog; keep them in sync.
    #[test]
    fn docs_contain_the_generated_catalog_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alarms.md");
        let doc = std::fs::read_to_string(path).expect("docs/alarms.md exists");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/alarms.md is out of date; replace its catalog table with:\n\n{table}"
        );
        for d in CATALOG {
            assert!(doc.contains(&format!("`{}`", d.id)), "{} not in docs", d.id);
        }
    }
}
