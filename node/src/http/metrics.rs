//! Prometheus metrics of the node (`GET /metrics`).
//!
//! Raft gauges are read from openraft's metrics at scrape time; counters and the
//! request-latency histogram are updated as things happen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tandem_replication::replica::Replica;

use tandem_failover::state::RoleState;

pub struct Metrics {
    registry: Registry,
    term: IntGauge,
    leader: IntGauge,
    is_leader: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    lag_entries: IntGaugeVec,
    lag_ms: IntGaugeVec,
    writes_committed: IntCounter,
    writes_seen: AtomicU64,
    cdrs_written: IntCounter,
    requests: IntCounterVec,
    latency: HistogramVec,
    vip_held: IntGauge,
    mails_sent: IntGauge,
    mails_failed: IntGauge,
    mails_queued: IntGauge,
    role_changes: IntGauge,
    lease_age_max: IntGauge,
    hedged_appends: IntGauge,
    vip_acquired: IntGauge,
    role: IntGaugeVec,
    /// Recordings accepted by this node's upload endpoint.
    pub recordings_uploaded: IntCounter,
    /// Recording downloads served by this node.
    pub recordings_served: IntCounter,
    /// API requests refused by the access check, by status (401, 403).
    pub api_refused: IntCounterVec,
    /// Audit log writes of this node, by result (ok, failed).
    pub audit_writes: IntCounterVec,
    /// Blob channel figures, read from the replica at scrape time.
    blob: [IntGauge; 8],
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let lag_entries = IntGaugeVec::new(
            Opts::new(
                "tandem_replication_lag_entries",
                "Log entries a member is behind the leader (leader's view)",
            ),
            &["peer"],
        )
        .expect("metric");
        let lag_ms = IntGaugeVec::new(
            Opts::new(
                "tandem_replication_lag_ms",
                "Age in ms of the oldest entry a member lacks (leader's view)",
            ),
            &["peer"],
        )
        .expect("metric");
        let writes_committed = IntCounter::new(
            "tandem_writes_committed_total",
            "Raft entries committed through this node while it was leader",
        )
        .expect("metric");
        let cdrs_written = IntCounter::new(
            "tandem_cdrs_written_total",
            "CDRs inserted through this node's API",
        )
        .expect("metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "tandem_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "method", "status"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tandem_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method"],
        )
        .expect("metric");
        for c in [
            Box::new(lag_entries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lag_ms.clone()),
            Box::new(writes_committed.clone()),
            Box::new(cdrs_written.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
        ] {
            r.register(c).expect("register");
        }
        let role = IntGaugeVec::new(
            Opts::new("tandem_role", "1 for this node's current role"),
            &["role"],
        )
        .expect("metric");
        r.register(Box::new(role.clone())).expect("register");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            r.register(Box::new(c.clone())).expect("register");
            c
        };
        let recordings_uploaded = counter(
            "tandem_recordings_uploaded_total",
            "Recordings received by this node's upload endpoint",
        );
        let recordings_served = counter(
            "tandem_recordings_served_total",
            "Recording downloads served by this node",
        );
        let labelled = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric");
            r.register(Box::new(c.clone())).expect("register");
            c
        };
        let api_refused = labelled(
            "tandem_api_refused_total",
            "API requests refused by the access check (401 no valid token, 403 role too low)",
            "status",
        );
        let audit_writes = labelled(
            "tandem_audit_writes_total",
            "Audit log writes of this node (failed: the audited request was refused or its outcome not recorded)",
            "result",
        );
        let blob = [
            gauge(
                &r,
                "tandem_recording_bytes_sent_total",
                "Recording bytes sent to other nodes since start",
            ),
            gauge(
                &r,
                "tandem_recording_bytes_received_total",
                "Recording bytes received from other nodes since start",
            ),
            gauge(
                &r,
                "tandem_recording_backlog_bytes",
                "Recording bytes this node still has to fetch",
            ),
            gauge(
                &r,
                "tandem_recording_backlog_files",
                "Recordings this node still has to fetch",
            ),
            gauge(
                &r,
                "tandem_recording_transfer_rate_bytes",
                "Recording receive rate, bytes per second (last seconds)",
            ),
            gauge(
                &r,
                "tandem_recording_cap_bytes",
                "Recording bandwidth cap in bytes per second (0 = unlimited)",
            ),
            gauge(
                &r,
                "tandem_recording_chunks_rejected_total",
                "Recording chunks that failed their checksum and were fetched again",
            ),
            gauge(
                &r,
                "tandem_recording_files_fetched_total",
                "Recordings copied to this node since start",
            ),
        ];
        Metrics {
            recordings_uploaded,
            recordings_served,
            api_refused,
            audit_writes,
            blob,
            vip_held: gauge(
                &r,
                "tandem_vip_held",
                "1 while this node holds the service address",
            ),
            mails_sent: gauge(
                &r,
                "tandem_alarm_mails_sent_total",
                "Alarm mails accepted by the SMTP server since start",
            ),
            mails_failed: gauge(
                &r,
                "tandem_alarm_mails_failed_total",
                "Alarm mails given up after retries since start",
            ),
            mails_queued: gauge(
                &r,
                "tandem_alarm_mails_queued",
                "Alarm mails waiting in this node's outbox",
            ),
            role_changes: gauge(
                &r,
                "tandem_role_changes_total",
                "Role changes of this node since start",
            ),
            lease_age_max: gauge(
                &r,
                "tandem_lease_age_max_ms",
                "Longest wait, in ms, for a quorum acknowledgement while master since start (the lease lapses at lease_ms)",
            ),
            hedged_appends: gauge(
                &r,
                "tandem_peer_appends_hedged_total",
                "AppendEntries sent again on a second connection because the first was not answered in time, since start",
            ),
            vip_acquired: gauge(
                &r,
                "tandem_vip_acquired_total",
                "Times this node took the VIP since start (VIP moves to it)",
            ),
            role,
            term: gauge(&r, "tandem_raft_term", "Current Raft term"),
            leader: gauge(
                &r,
                "tandem_raft_leader_id",
                "Node id of the current leader (0 = none)",
            ),
            is_leader: gauge(
                &r,
                "tandem_raft_is_leader",
                "1 if this node is the Raft leader",
            ),
            commit_index: gauge(
                &r,
                "tandem_raft_commit_index",
                "Highest log index known committed",
            ),
            applied_index: gauge(
                &r,
                "tandem_raft_applied_index",
                "Highest log index applied to the state machine",
            ),
            last_log_index: gauge(
                &r,
                "tandem_raft_last_log_index",
                "Highest log index in the local log",
            ),
            registry: r,
            lag_entries,
            lag_ms,
            writes_committed,
            writes_seen: AtomicU64::new(0),
            cdrs_written,
            requests,
            latency,
        }
    }

    /// Count one request. Every label comes from a closed set: `route` is a route of
    /// the router (or "unmatched"), the method one of the standard ones (any other is
    /// "other"), the status a number below 600 (else "other"), so no client can grow
    /// the number of series.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let method = method_label(method);
        let status = if (100..600).contains(&status) {
            status.to_string()
        } else {
            "other".to_string()
        };
        let status = status.as_str();
        self.requests
            .with_label_values(&[route, method, status])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// Series of `tandem_http_requests_total` (for tests of the label bound).
    pub fn request_series(&self) -> usize {
        prometheus::core::Collector::collect(&self.requests)
            .iter()
            .map(|f| f.get_metric().len())
            .sum()
    }

    pub fn cdrs_written(&self, n: u64) {
        self.cdrs_written.inc_by(n);
    }

    /// Refresh the gauges from the replica and encode everything.
    /// `mails` = (sent, failed, queued) from the alarm mailer.
    pub fn render(&self, r: &Replica, roles: &RoleState, mails: (u64, u64, usize)) -> String {
        let m = r.metrics();
        self.mails_sent.set(mails.0 as i64);
        self.mails_failed.set(mails.1 as i64);
        self.mails_queued.set(mails.2 as i64);
        self.vip_held.set(i64::from(roles.vip_held()));
        self.role_changes
            .set(roles.role_changes.load(Ordering::Relaxed) as i64);
        self.lease_age_max
            .set(roles.lease_age_max_ms.load(Ordering::Relaxed) as i64);
        self.hedged_appends.set(r.hedged_appends() as i64);
        self.vip_acquired
            .set(roles.vip_acquired.load(Ordering::Relaxed) as i64);
        for role in ["master", "standby", "witness", "candidate", "fenced"] {
            self.role
                .with_label_values(&[role])
                .set(i64::from(roles.role().as_str() == role));
        }
        self.term.set(m.current_term as i64);
        self.leader.set(m.current_leader.unwrap_or(0) as i64);
        self.is_leader.set(i64::from(r.is_leader()));
        self.commit_index.set(r.commit_index() as i64);
        self.applied_index
            .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        self.last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        self.lag_entries.reset();
        self.lag_ms.reset();
        for member in r.members() {
            if let (Some(e), Some(ms)) = (member.lag_entries, member.lag_ms) {
                let peer = member.id.to_string();
                self.lag_entries.with_label_values(&[&peer]).set(e as i64);
                self.lag_ms.with_label_values(&[&peer]).set(ms as i64);
            }
        }
        let s = &r.blob_stats;
        let backlog = s.backlog();
        for (g, v) in self.blob.iter().zip([
            s.bytes_sent.load(Ordering::Relaxed),
            s.bytes_received.load(Ordering::Relaxed),
            backlog.bytes,
            backlog.files,
            backlog.rate_bytes_per_s,
            backlog.cap_bytes_per_s,
            s.chunks_rejected.load(Ordering::Relaxed),
            s.files_fetched.load(Ordering::Relaxed),
        ]) {
            g.set(v as i64);
        }
        let total = r.writes_committed.load(Ordering::Relaxed);
        let seen = self.writes_seen.swap(total, Ordering::Relaxed);
        self.writes_committed.inc_by(total.saturating_sub(seen));
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `method` label: the standard methods as they are, anything else "other".
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening: custom HTTP methods used to become a new series each (120k requests
    /// took 182 MB of metrics). They now share one label value.
    #[test]
    fn custom_methods_do_not_grow_the_series() {
        let m = Metrics::new();
        for i in 0..500 {
            m.observe_request("unmatched", &format!("X{i}"), 405, Duration::from_millis(1));
        }
        m.observe_request("/health", "GET", 200, Duration::from_millis(1));
        m.observe_request("/health", "GET", 200, Duration::from_millis(1));
        assert_eq!(
            m.request_series(),
            2,
            "one series for the 500 custom methods, one for GET"
        );
    }
}
