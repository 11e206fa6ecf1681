//! The alarm driver inside `tandem run`: reads the sources once a second, feeds the
//! rules engine, queues rendered mails in a local in-memory outbox and delivers them.
//!
//! ```text
//!  every 1 s: config alarm.*/smtp.* ─┐
//!             raft metrics, members ─┼─▶ Observer ─▶ Engine ─▶ Routing::split ─▶ render ─▶ outbox
//!             roles.unreachable() ───┘                                                       │
//!  delivery task, every 1 s: Outbox::next (hourly cap, digest) ─▶ Mailer::send ─ ok ─▶ history
//!                                        └ retryable ─▶ Outbox::failed (backoff) ◀───────────┘
//! ```
//!
//! Only the master mails; any other node mails only "quorum lost" about itself (it
//! cannot reach the master). The outbox is local and in memory: mails queued on a node
//! that dies are lost (the replicated outbox is still to do, see docs/alarms.md).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use serde::Serialize;
use serde_json::Value;
use tandem_replication::replica::Replica;
use tandem_replication::store::query;
use tandem_replication::types::{MemberKind, Request};

use super::catalog::AlarmId;
use super::mail::{self, MailContext};
use super::outbox::{queue_key, Failure, Outbox, Outgoing, QueuedMail, QUEUE_PREFIX};
use super::recipients::Routing;
use super::rules::{Engine, Event, Millis, Notification, RulesConfig, Silence};
use super::smtp::{Mailer, RetryPolicy, SmtpSettings};
use super::sources::{Observer, Snapshot};
use tandem_api as api;

use tandem_failover::controller::Role;
use tandem_failover::state::RoleState;

/// Most entries kept in the history.
const HISTORY: usize = 200;
/// No leader (or a leader without quorum acks) for this long raises quorum lost.
const QUORUM_GRACE_MS: u64 = 5000;
/// Default of `alarm.max_mails_per_hour`.
const MAX_PER_HOUR: usize = 30;
/// Default of `alarm.disk_threshold_percent`.
const DISK_THRESHOLD_PERCENT: u64 = 85;
/// Default of `alarm.recording_sync_threshold_s`: raise when the backlog needs longer.
const SYNC_BEHIND_S: u64 = 300;

/// (percent used, bytes free for unprivileged users) of the filesystem holding `dir`.
fn disk_usage(dir: &std::path::Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    let total = st.blocks() as u64 * frag;
    let avail = st.blocks_available() as u64 * frag;
    let free = st.blocks_free() as u64 * frag;
    if total == 0 {
        return None;
    }
    let used = total - free;
    // Like df: used / (used + available to users).
    let pct = (used * 100).div_ceil(used + avail).min(100);
    Some((pct, avail))
}

/// Default of `alarm.lag_threshold_s`.
const LAG_THRESHOLD_S: u64 = 30;

/// One line of `tandem alarm history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub at_ms: Millis,
    pub message_id: String,
    pub subject: String,
    pub to: Vec<String>,
    /// "sent" or "failed".
    pub outcome: &'static str,
    pub server: Option<String>,
    pub error: Option<String>,
}

struct State {
    engine: Engine,
    outbox: Outbox,
    history: VecDeque<HistoryEntry>,
    sent: u64,
    failed: u64,
    /// The last bad `alarm.*`/`smtp.*` setting, shown in the status (logged once).
    config_error: Option<String>,
    entries: BTreeMap<String, Value>,
    routing: Routing,
    now_ms: Millis,
    /// Authentication-failure bursts reported by the telephony service: source →
    /// (failures, when last reported, ms).
    auth_bursts: BTreeMap<std::net::IpAddr, (u32, Millis)>,
    /// Mails the master queued, to be written to the replicated outbox.
    to_replicate: Vec<Outgoing>,
    /// Replicated outbox keys of mails that went out (or were given up), to delete.
    to_forget: Vec<String>,
    /// Message-IDs being sent right now.
    in_flight: HashSet<String>,
    /// Message-IDs sent (or given up) recently: not adopted again from the
    /// replicated outbox while their deletion commits.
    done: HashMap<String, Millis>,
}

/// How long a sent Message-ID is remembered (its outbox entry is deleted well
/// before).
const DONE_MEMORY_MS: Millis = 600_000;

/// An authentication-failure burst keeps `security.auth_failures` raised this long.
const AUTH_BURST_HOLD_MS: Millis = 300_000;

/// Shared between the driver, the delivery task and the API.
pub struct AlarmService {
    cluster: String,
    node: String,
    /// This node's TLS directory (node certificate expiry).
    tls_dir: std::path::PathBuf,
    state: Mutex<State>,
}

fn wall_ms() -> Millis {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Who sends: the names in every mail, and where this node's certificate lives.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `[cluster] name`.
    pub cluster: String,
    /// This node's name (`[node] name`, or `node-<id>`).
    pub node: String,
    /// This node's TLS directory (node certificate expiry).
    pub tls_dir: std::path::PathBuf,
}

impl AlarmService {
    /// A service with no driver running (for tests, or outside a runtime).
    pub fn new(id: Identity) -> Arc<AlarmService> {
        Arc::new(AlarmService {
            cluster: id.cluster,
            node: id.node,
            tls_dir: id.tls_dir,
            state: Mutex::new(State {
                engine: Engine::new(RulesConfig::default()),
                outbox: Outbox::new(MAX_PER_HOUR, RetryPolicy::default()),
                history: VecDeque::new(),
                sent: 0,
                failed: 0,
                config_error: None,
                entries: BTreeMap::new(),
                routing: Routing::default(),
                now_ms: 0,
                auth_bursts: BTreeMap::new(),
                to_replicate: Vec::new(),
                to_forget: Vec::new(),
                in_flight: HashSet::new(),
                done: HashMap::new(),
            }),
        })
    }

    /// The service's two long-running jobs, for the caller to spawn (and cancel):
    /// the driver (observes the cluster, runs the rules, replicates the outbox) and the
    /// delivery task (sends mails with retries).
    pub fn jobs(
        self: &Arc<Self>,
        replica: Arc<Replica>,
        roles: Arc<RoleState>,
    ) -> (
        impl std::future::Future<Output = ()> + Send + 'static,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        (
            self.clone().drive(replica.clone(), roles.clone()),
            self.clone().deliver(replica, roles),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The telephony service saw `failures` failed authentications from `source` in
    /// a short time: raises `security.auth_failures` on this node until no burst was
    /// reported for 5 minutes.
    pub fn auth_failure_burst(&self, source: std::net::IpAddr, failures: u32) {
        tracing::warn!(alarm = "security.auth_failures", %source, failures, "repeated authentication failures");
        let now = wall_ms();
        self.lock().auth_bursts.insert(source, (failures, now));
    }

    /// `GET /api/v1/alarms`: active alarms, outbox and counters of this node.
    pub fn status(&self) -> api::AlarmStatus {
        let st = self.lock();
        let active = st
            .engine
            .active(st.now_ms)
            .into_iter()
            .map(|a| {
                let d = a.alarm.def();
                api::ActiveAlarm {
                    id: a.alarm.as_str().to_string(),
                    family: d.family.as_str().to_string(),
                    severity: d.severity.label().to_string(),
                    title: d.title.to_string(),
                    subject: a.subject.clone(),
                    since: mail::format_time(a.since_ms),
                    since_ms: a.since_ms,
                    detail: a.detail.clone(),
                    flapping: a.flapping,
                    muted: a.muted,
                }
            })
            .collect();
        let outbox = st
            .outbox
            .iter()
            .map(|o| api::QueuedMail {
                message_id: o.mail.message_id.clone(),
                subject: o.mail.subject.clone(),
                to: o.to.clone(),
                alarms: o.alarms.iter().map(|a| a.as_str().to_string()).collect(),
                queued: mail::format_time(o.queued_ms),
                attempts: o.attempts,
                last_error: o.last_error.clone(),
            })
            .collect();
        api::AlarmStatus {
            node: self.node.clone(),
            active,
            maintenance: st.engine.maintenance(),
            outbox,
            mails_sent: st.sent,
            mails_failed: st.failed,
            mails_queued: st.outbox.len(),
            config_error: st.config_error.clone(),
        }
    }

    /// `GET /api/v1/alarms/history`: the last mails sent or given up, newest first.
    pub fn history(&self) -> api::AlarmHistory {
        let st = self.lock();
        api::AlarmHistory {
            history: st
                .history
                .iter()
                .rev()
                .map(|h| api::MailRecord {
                    at_ms: h.at_ms,
                    message_id: h.message_id.clone(),
                    subject: h.subject.clone(),
                    to: h.to.clone(),
                    outcome: h.outcome.to_string(),
                    server: h.server.clone(),
                    error: h.error.clone(),
                })
                .collect(),
        }
    }

    pub fn counters(&self) -> (u64, u64, usize) {
        let st = self.lock();
        (st.sent, st.failed, st.outbox.len())
    }

    /// Route, render and queue notifications. Not the master: only quorum-lost items
    /// go out (from the local outbox); everything else is the master's to send.
    fn enqueue(&self, st: &mut State, notifications: Vec<Notification>, is_master: bool) {
        for n in notifications {
            let n = if is_master {
                n
            } else {
                let items: Vec<_> = n
                    .items
                    .iter()
                    .filter(|i| i.alarm == AlarmId::QuorumLost && i.subject == self.node)
                    .cloned()
                    .collect();
                if items.is_empty() {
                    tracing::debug!(notification = %n.id, "alarm notification left to the master");
                    continue;
                }
                n.with_items(items, "local")
            };
            let (deliveries, unrouted) = st.routing.split(&n);
            for a in unrouted {
                tracing::warn!(alarm = %a, "alarm has no recipients: set alarm.route.<family> or alarm.route.default (docs/alarms.md)");
            }
            let ctx = MailContext {
                cluster: &self.cluster,
                node: &self.node,
            };
            for d in deliveries {
                let m = mail::render(&d.notification, &ctx);
                let alarms: Vec<AlarmId> = d.notification.items.iter().map(|i| i.alarm).collect();
                tracing::info!(message_id = %m.message_id, alarms = ?alarms.iter().map(|a| a.as_str()).collect::<Vec<_>>(), to = ?d.to, subject = %m.subject, "alarm mail queued");
                let now = st.now_ms;
                let covers = vec![m.message_id.clone()];
                let o = Outgoing {
                    mail: m,
                    to: d.to,
                    alarms,
                    severity: d.notification.severity(),
                    queued_ms: now,
                    attempts: 0,
                    next_try_ms: now,
                    last_error: None,
                    covers,
                    replicated: is_master,
                };
                if is_master {
                    // Into the replicated outbox first (drive): whichever node is
                    // master next sends it if this one dies before it went out.
                    st.to_replicate.push(o);
                } else {
                    st.outbox.push(o);
                }
            }
        }
    }

    fn snapshot(
        replica: &Replica,
        roles: &RoleState,
        entries: &BTreeMap<String, Value>,
    ) -> Snapshot {
        let m = replica.metrics();
        let members = replica.members();
        let name = |id: u64| {
            members
                .iter()
                .find(|x| x.id == id)
                .map(|x| x.name.clone())
                .unwrap_or_else(|| format!("node-{id}"))
        };
        let leader = m.state == ServerState::Leader;
        let threshold_s = entries
            .get("alarm.lag_threshold_s")
            .and_then(Value::as_u64)
            .unwrap_or(LAG_THRESHOLD_S);
        let mut s = Snapshot {
            node: replica.info.name.clone(),
            leader: m.current_leader.map(name),
            leader_without_quorum: leader
                && m.millis_since_quorum_ack
                    .is_some_and(|ms| ms > QUORUM_GRACE_MS),
            maintenance: entries.get("alarm.maintenance") == Some(&Value::Bool(true)),
            ..Snapshot::default()
        };
        if leader {
            let voters: Vec<_> = members.iter().filter(|x| x.voter).collect();
            if voters.len() == 2 && voters.iter().all(|x| x.kind == MemberKind::Data) {
                s.two_data_voters = voters.iter().map(|x| x.name.clone()).collect();
            }
            for id in roles.unreachable() {
                let witness = members
                    .iter()
                    .any(|x| x.id == id && x.kind == MemberKind::Witness);
                s.unreachable.insert(name(id), witness);
            }
            for x in &members {
                if x.id == replica.id || s.unreachable.contains_key(&x.name) {
                    continue;
                }
                if let Some(ms) = x.lag_ms.filter(|&ms| ms > threshold_s * 1000) {
                    s.lagging.insert(
                        x.name.clone(),
                        format!(
                            "Behind by {} entries / {} s (threshold {threshold_s} s).",
                            x.lag_entries.unwrap_or(0),
                            ms / 1000
                        ),
                    );
                }
            }
        }
        // This node's data directory below its reserve: writes are refused.
        if let Err(e) = replica.space.check(replica.id) {
            s.local.insert(AlarmId::DiskFull, e.to_string());
        }
        // This node's recordings volume and blob sync.
        if let Some(blobs) = &replica.blobs {
            let threshold = entries
                .get("alarm.disk_threshold_percent")
                .and_then(Value::as_u64)
                .unwrap_or(DISK_THRESHOLD_PERCENT);
            if let Some((used_pct, free)) = disk_usage(blobs.dir()) {
                if used_pct >= threshold {
                    s.local.insert(
                        AlarmId::DiskSpaceLow,
                        format!(
                            "The volume of {} is {used_pct} % full (threshold {threshold} %), {} MB free.",
                            blobs.dir().display(),
                            free / 1_000_000
                        ),
                    );
                }
            }
            let backlog = replica.blob_stats.backlog();
            let behind_s = entries
                .get("alarm.recording_sync_threshold_s")
                .and_then(Value::as_u64)
                .unwrap_or(SYNC_BEHIND_S);
            if backlog.files > 0 && backlog.eta_s.is_none_or(|eta| eta > behind_s) {
                s.local.insert(
                    AlarmId::RecordingSyncBehind,
                    format!(
                        "{} recordings ({} MB) still to copy to this node{}.",
                        backlog.files,
                        backlog.bytes / 1_000_000,
                        match backlog.eta_s {
                            Some(eta) => format!(", about {eta} s at the current rate"),
                            None => ", and no transfer is progressing".to_string(),
                        }
                    ),
                );
            }
        }
        s
    }

    fn read_entries(replica: &Replica) -> BTreeMap<String, Value> {
        let tree = replica.tree();
        let mut all = Vec::new();
        for prefix in ["alarm.", "smtp."] {
            match query::config_list(&tree, prefix) {
                Ok(list) => all.extend(list.into_iter().map(|e| (e.key, e.value))),
                Err(e) => tracing::warn!(error = %e, prefix, "alarms: cannot read the config"),
            }
        }
        super::entries_from_text(all)
    }

    async fn drive(self: Arc<Self>, replica: Arc<Replica>, roles: Arc<RoleState>) {
        let mut observer = Observer::new(QUORUM_GRACE_MS);
        // (when checked, condition) of the node certificate.
        let mut cert_checked: (Millis, Option<String>) = (0, None);
        // Day of the last heartbeat; none at start, so a node that becomes master
        // after the hour sends today's.
        let mut last_heartbeat: Option<u64> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = wall_ms();
            let entries = Self::read_entries(&replica);
            let snap = Self::snapshot(&replica, &roles, &entries);
            let is_master = replica.is_leader();
            {
                let mut st = self.lock();
                st.now_ms = now;
                if entries != st.entries {
                    let parsed = RulesConfig::from_entries(&entries).and_then(|r| {
                        Ok((
                            r,
                            Routing::from_entries(&entries)?,
                            Silence::from_entries(&entries)?,
                        ))
                    });
                    match parsed {
                        Ok((rules, routing, silences)) => {
                            st.engine.set_config(rules);
                            st.engine.set_silences(silences);
                            let cap = max_per_hour(&entries).unwrap_or(MAX_PER_HOUR);
                            st.outbox.set_max_per_hour(cap);
                            st.outbox.set_policy(retry_policy(&entries));
                            st.routing = routing;
                            st.config_error = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "alarm settings not applied; the previous ones stay in force");
                            st.config_error = Some(e.to_string());
                        }
                    }
                    st.entries = entries;
                }
                let mut snap = snap;
                st.auth_bursts
                    .retain(|_, (_, at)| now.saturating_sub(*at) < AUTH_BURST_HOLD_MS);
                if !st.auth_bursts.is_empty() {
                    // Sources only (not counts): the detail stays stable while the burst
                    // goes on, so it is one state change, not a mail per report.
                    let sources: Vec<String> =
                        st.auth_bursts.keys().map(|ip| ip.to_string()).collect();
                    snap.local.insert(
                        AlarmId::AuthFailures,
                        format!(
                            "SIP digest authentication failed repeatedly from {}.",
                            sources.join(", ")
                        ),
                    );
                }
                // The node certificate (checked every 10 s: a file read and a parse).
                if now.saturating_sub(cert_checked.0) >= 10_000 {
                    cert_checked = (now, self.cert_condition(&st.entries, now));
                }
                if let Some(detail) = &cert_checked.1 {
                    snap.local.insert(AlarmId::CertExpiring, detail.clone());
                }
                let mut events = observer.observe(&snap, now);
                // The daily "still alive" mail (off unless alarm.heartbeat = true).
                if is_master && st.entries.get("alarm.heartbeat") == Some(&Value::Bool(true)) {
                    let hour = st
                        .entries
                        .get("alarm.heartbeat_hour")
                        .and_then(Value::as_u64)
                        .unwrap_or(8);
                    if let Some(day) = super::sources::heartbeat_due(now, hour, last_heartbeat) {
                        last_heartbeat = Some(day);
                        events.push(Event::Raise {
                            alarm: AlarmId::Heartbeat,
                            subject: self.node.clone(),
                            detail: format!(
                                "Master {}, {} members, term {}.",
                                self.node,
                                replica.members().len(),
                                replica.metrics().current_term
                            ),
                        });
                    }
                }
                events.push(Event::Tick);
                for ev in events {
                    tracing::debug!(event = ?ev, "alarm event");
                    let out = st.engine.handle(ev, now);
                    self.enqueue(&mut st, out, is_master);
                }
            }
            // Mails are taken from the replicated outbox only by the lease-holding
            // master (a restarted node may be Raft leader for a moment without it).
            self.sync_outbox(&replica, lease_master(&replica, &roles))
                .await;
        }
    }

    /// `security.cert_expiring` detail if this node's certificate expires within
    /// `alarm.cert_warn_days` (default 30).
    fn cert_condition(&self, entries: &BTreeMap<String, Value>, now: Millis) -> Option<String> {
        let warn = entries
            .get("alarm.cert_warn_days")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let id = tandem_replication::tls::NodeIdentity::load(&self.tls_dir).ok()?;
        let not_after = id.not_after_unix().ok()?;
        let left = super::sources::days_left(not_after, now);
        (left < warn).then(|| {
            let when = chrono::DateTime::from_timestamp(not_after, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
            let path = self.tls_dir.join("node.pem");
            if left < 0 {
                format!("The node certificate {} expired on {when}.", path.display())
            } else {
                format!(
                    "The node certificate {} expires on {when} (in {left} days).",
                    path.display()
                )
            }
        })
    }

    /// Keep the replicated outbox and this node's outbox in step: write what the
    /// master queued, delete what went out, and on the master adopt queued mails it
    /// does not have (queued by a previous master that died before sending them).
    /// A node that is not master leaves replicated mails to the master.
    async fn sync_outbox(&self, replica: &Replica, is_master: bool) {
        const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
        let (writes, forgets) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.to_replicate),
                std::mem::take(&mut st.to_forget),
            )
        };
        for o in writes {
            let key = queue_key(&o.mail.message_id);
            let value = serde_json::to_string(&QueuedMail::of(&o)).expect("mail json");
            let res = tokio::time::timeout(
                WRITE_TIMEOUT,
                replica.write(Request::SetConfig { key, value }),
            )
            .await;
            if !matches!(res, Ok(Ok(_))) {
                // No quorum: send it from here rather than not at all.
                tracing::warn!(message_id = %o.mail.message_id, "alarm mail not written to the replicated outbox; sending it from this node's outbox");
                let mut o = o;
                o.replicated = false;
                self.lock().outbox.push(o);
            }
        }
        let mut failed = Vec::new();
        for key in forgets {
            let res = tokio::time::timeout(
                WRITE_TIMEOUT,
                replica.write(Request::DeleteConfig { key: key.clone() }),
            )
            .await;
            if !matches!(res, Ok(Ok(_))) {
                failed.push(key);
            }
        }
        let queued = if is_master {
            query::config_list(&replica.tree(), QUEUE_PREFIX).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut st = self.lock();
        st.to_forget.extend(failed);
        let now = wall_ms();
        st.done
            .retain(|_, at| now.saturating_sub(*at) < DONE_MEMORY_MS);
        if !is_master {
            st.outbox.retain(|o| !o.replicated);
            return;
        }
        let mut have: HashSet<String> = st
            .outbox
            .iter()
            .flat_map(|o| o.covers.iter().cloned())
            .collect();
        have.extend(st.in_flight.iter().cloned());
        have.extend(st.done.keys().cloned());
        for e in queued {
            match serde_json::from_str::<QueuedMail>(&e.value) {
                Ok(q) if !have.contains(&q.message_id) => {
                    tracing::info!(message_id = %q.message_id, subject = %q.subject, "alarm mail taken from the replicated outbox");
                    have.insert(q.message_id.clone());
                    st.outbox.push(q.outgoing(now));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(key = %e.key, error = %err, "dropping a malformed replicated outbox entry");
                    st.to_forget.push(e.key);
                }
            }
        }
    }

    /// Before a mail of the replicated outbox goes out: is this node still the
    /// lease-holding master, and is the mail still queued? The read-index barrier
    /// brings this node's state up to the cluster's commit index first, so a copy
    /// of the outbox older than the node's last absence (mails another master sent
    /// and deleted meanwhile) is never taken for the current one.
    async fn still_queued(&self, replica: &Replica, roles: &RoleState, job: &Outgoing) -> Claim {
        if !lease_master(replica, roles) {
            return Claim::NotMaster;
        }
        if let Err(e) = replica.linearizable_barrier(Duration::from_secs(3)).await {
            return Claim::Unknown(e.to_string());
        }
        if !lease_master(replica, roles) {
            return Claim::NotMaster;
        }
        let tree = replica.tree();
        let queued = job.covers.iter().any(|mid| {
            query::config_get(&tree, &queue_key(mid))
                .ok()
                .flatten()
                .is_some()
        });
        if queued {
            Claim::Send
        } else {
            Claim::Delivered
        }
    }

    async fn deliver(self: Arc<Self>, replica: Arc<Replica>, roles: Arc<RoleState>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = wall_ms();
            let (job, entries) = {
                let mut st = self.lock();
                let ctx = MailContext {
                    cluster: &self.cluster,
                    node: &self.node,
                };
                let job = st.outbox.next(now, &ctx);
                if let Some(j) = &job {
                    let covers = j.covers.clone();
                    st.in_flight.extend(covers);
                }
                (job, st.entries.clone())
            };
            let Some(mut job) = job else {
                continue;
            };
            if job.replicated {
                match self.still_queued(&replica, &roles, &job).await {
                    Claim::Send => {}
                    Claim::Delivered => {
                        tracing::info!(message_id = %job.mail.message_id, "alarm mail not sent: no longer in the replicated outbox (another master sent it)");
                        let mut st = self.lock();
                        let now = wall_ms();
                        for mid in &job.covers {
                            st.in_flight.remove(mid);
                            st.done.insert(mid.clone(), now);
                        }
                        continue;
                    }
                    other => {
                        if let Claim::Unknown(e) = &other {
                            tracing::debug!(error = %e, message_id = %job.mail.message_id, "alarm mail held: cannot confirm it is still queued");
                        }
                        // Back to the queue; a node that is not master drops its
                        // copies of replicated mails (sync_outbox), the master's own
                        // copy is tried again in a second.
                        let mut st = self.lock();
                        for mid in &job.covers {
                            st.in_flight.remove(mid);
                        }
                        job.next_try_ms = wall_ms() + 1000;
                        st.outbox.push(job);
                        continue;
                    }
                }
            }
            let result = match SmtpSettings::from_entries(&entries) {
                Ok(settings) => match Mailer::new(settings) {
                    Ok(m) => m.send(&job.mail, &job.to).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e.into()),
            };
            let now = wall_ms();
            let is_master = replica.is_leader();
            let mut st = self.lock();
            for mid in &job.covers {
                st.in_flight.remove(mid);
            }
            let finished = |st: &mut State, job: &Outgoing| {
                for mid in &job.covers {
                    st.done.insert(mid.clone(), now);
                    if job.replicated {
                        st.to_forget.push(queue_key(mid));
                    }
                }
            };
            let smtp_event = match result {
                Ok(sent) => {
                    finished(&mut st, &job);
                    tracing::info!(message_id = %sent.message_id, server = %sent.server, "alarm mail sent");
                    st.sent += 1;
                    st.outbox.sent(now);
                    push_history(&mut st, &job, now, "sent", Some(sent.server), None);
                    Event::Clear {
                        alarm: AlarmId::SmtpFailing,
                        subject: self.node.clone(),
                    }
                }
                Err(e) => {
                    let detail = e.to_string();
                    let job_copy = job.clone();
                    match st.outbox.failed(job, e.is_retryable(), detail.clone(), now) {
                        Failure::Retry(delay) => {
                            tracing::warn!(error = %e, message_id = %job_copy.mail.message_id, attempts = job_copy.attempts + 1, retry_in_s = delay.as_secs(), "alarm mail not delivered; will retry");
                        }
                        Failure::GaveUp => {
                            finished(&mut st, &job_copy);
                            tracing::error!(error = %e, message_id = %job_copy.mail.message_id, attempts = job_copy.attempts + 1, "alarm mail given up");
                            st.failed += 1;
                            push_history(
                                &mut st,
                                &job_copy,
                                now,
                                "failed",
                                None,
                                Some(detail.clone()),
                            );
                        }
                    }
                    Event::Raise {
                        alarm: AlarmId::SmtpFailing,
                        subject: self.node.clone(),
                        detail,
                    }
                }
            };
            let out = st.engine.handle(smtp_event, now);
            self.enqueue(&mut st, out, is_master);
        }
    }
}

/// Whether this node may send the mails of the replicated outbox: it is the Raft
/// leader and the role controller holds the master role (with its lease).
fn lease_master(replica: &Replica, roles: &RoleState) -> bool {
    replica.is_leader() && roles.role() == Role::Master
}

/// What [`AlarmService::still_queued`] found.
enum Claim {
    /// Still queued and this node is the master: send it.
    Send,
    /// Gone from the replicated outbox: sent by another master.
    Delivered,
    /// This node is not the lease-holding master (any more).
    NotMaster,
    /// The barrier failed (no quorum): try again later.
    Unknown(String),
}

/// `alarm.retry_first_s` / `alarm.retry_max_s` over the defaults (30 s doubling up
/// to 30 min). A mail is given up after 24 h.
fn retry_policy(entries: &BTreeMap<String, Value>) -> RetryPolicy {
    let mut p = RetryPolicy::default();
    let secs = |k: &str| {
        entries
            .get(k)
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    };
    if let Some(d) = secs("alarm.retry_first_s") {
        p.first = d;
    }
    if let Some(d) = secs("alarm.retry_max_s") {
        p.max = d;
    }
    p.max = p.max.max(p.first);
    p
}

/// `alarm.max_mails_per_hour`, if set to a number.
fn max_per_hour(entries: &BTreeMap<String, Value>) -> Option<usize> {
    entries
        .get("alarm.max_mails_per_hour")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

fn push_history(
    st: &mut State,
    job: &Outgoing,
    now: Millis,
    outcome: &'static str,
    server: Option<String>,
    error: Option<String>,
) {
    if st.history.len() >= HISTORY {
        st.history.pop_front();
    }
    st.history.push_back(HistoryEntry {
        at_ms: now,
        message_id: job.mail.message_id.clone(),
        subject: job.mail.subject.clone(),
        to: job.to.clone(),
        outcome,
        server,
        error,
    });
}
