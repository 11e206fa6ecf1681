//! The node side of the telephony service: SIP users and registrations in the
//! replicated config, CDRs and recordings committed through Raft.
//!
//! | config key | value |
//! |---|---|
//! | `sip.user.<extension>` | `{"password": "...", "display_name": "..."}` (`tandem sip user add`) |
//! | `sip.binding.<extension>/<contact hash>` | a registration (media's `Binding`), with its expiry |
//!
//! Registrations are written through Raft before the REGISTER is answered, so a
//! phone stays registered on the new master after a failover.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_media::backend::{
    AuthBurst, Backend, Binding, CallRecord, Disposition as MediaDisposition, SipUser, SourceBan,
};
use tandem_media::error::BackendError;
use tandem_media::relay::RecordingFile;
use tandem_replication::cdr::{Cdr, Direction, Disposition};
use tandem_replication::replica::Replica;
use tandem_replication::store::query;
use tandem_replication::types::{RecordingMeta, Request};

use crate::settings::bans::{ban_key, StoredBan, BAN_PREFIX, MAX_BANS};
use crate::settings::sip::{binding_key, StoredUser, BINDING_PREFIX, USER_PREFIX};
use tandem_alarms::service::AlarmService;

/// [`Backend`] over this node's replica.
pub struct NodeBackend {
    pub replica: Arc<Replica>,
    pub alarms: Arc<AlarmService>,
    /// This node's name (the CDR's `node`).
    pub node: String,
}

fn backend_err(e: tandem_replication::Error) -> BackendError {
    BackendError {
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

fn fatal(message: String) -> BackendError {
    BackendError {
        message,
        retryable: false,
    }
}

impl NodeBackend {
    fn list<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Vec<(String, T)> {
        match query::config_list(&self.replica.tree(), prefix) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|e| match serde_json::from_str::<T>(&e.value) {
                    Ok(v) => Some((e.key, v)),
                    Err(err) => {
                        tracing::warn!(key = %e.key, error = %err, "ignoring a malformed SIP config entry");
                        None
                    }
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, prefix, "cannot read SIP config");
                Vec::new()
            }
        }
    }
}

impl Backend for NodeBackend {
    fn user(&self, extension: &str) -> Option<SipUser> {
        let e = query::config_get(&self.replica.tree(), &format!("{USER_PREFIX}{extension}"))
            .ok()
            .flatten()?;
        let u: StoredUser = serde_json::from_str(&e.value).ok()?;
        Some(SipUser {
            extension: extension.to_string(),
            password: u.password,
            display_name: u.display_name,
        })
    }

    fn bindings(&self, aor: &str) -> Vec<Binding> {
        self.list::<Binding>(&format!("{BINDING_PREFIX}{aor}/"))
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    fn all_bindings(&self) -> Vec<Binding> {
        self.list::<Binding>(BINDING_PREFIX)
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    async fn save_binding(&self, b: Binding) -> Result<(), BackendError> {
        let key = binding_key(&b.aor, &b.contact);
        let value = serde_json::to_string(&b).map_err(|e| fatal(e.to_string()))?;
        self.replica
            .write(Request::SetConfig { key, value })
            .await
            .map(|_| ())
            .map_err(backend_err)
    }

    async fn remove_binding(&self, aor: &str, contact: &str) -> Result<(), BackendError> {
        let key = binding_key(aor, contact);
        self.replica
            .write(Request::DeleteConfig { key })
            .await
            .map(|_| ())
            .map_err(backend_err)
    }

    async fn call_ended(
        &self,
        record: CallRecord,
        recording: Option<RecordingFile>,
    ) -> Result<(), BackendError> {
        let mut recording_id = record.recording_id.clone();
        if let Some(f) = recording {
            let blobs = self
                .replica
                .blobs
                .clone()
                .ok_or_else(|| fatal("this node stores no recordings (witness)".to_string()))?;
            let (id, path, sha) = (f.id.clone(), f.path.clone(), f.sha256.clone());
            let size = tokio::task::spawn_blocking(move || blobs.adopt(&id, &path, &sha))
                .await
                .map_err(|e| fatal(e.to_string()))?
                .map_err(|e| fatal(e.to_string()))?;
            let meta = RecordingMeta {
                id: f.id.clone(),
                call_id: record.call_id.clone(),
                sha256: f.sha256.clone(),
                size,
                duration_ms: f.duration_ms,
                codec: f.codec.clone(),
                created: record.end.timestamp_micros(),
                holders: [self.replica.id].into_iter().collect(),
            };
            self.replica
                .write(Request::AddRecording { meta })
                .await
                .map_err(backend_err)?;
            recording_id = Some(f.id);
        }
        let duration = (record.end - record.start).num_seconds().max(0) as u64;
        let cdr = Cdr {
            id: record.id,
            start: record.start,
            answer: record.answer,
            end: record.end,
            caller: record.caller.clone(),
            callee: record.callee.clone(),
            direction: Direction::Internal,
            disposition: match record.disposition {
                MediaDisposition::Answered => Disposition::Answered,
                MediaDisposition::NoAnswer => Disposition::NoAnswer,
                MediaDisposition::Busy => Disposition::Busy,
                MediaDisposition::Failed => Disposition::Failed,
                MediaDisposition::Cancelled => Disposition::Cancelled,
            },
            duration,
            billsec: record.billsec().max(0) as u64,
            recording_id,
            node: self.node.clone(),
        };
        self.replica
            .add_cdrs(vec![cdr])
            .await
            .map(|_| ())
            .map_err(backend_err)
    }

    fn security_event(&self, burst: &AuthBurst) {
        // One alarm per burst: the alarm names the first source; the WARN line of
        // the service lists the others and the accounts.
        if let Some(source) = burst.sample.first() {
            self.alarms.auth_failure_burst(*source, burst.failures);
        }
    }

    async fn ban(&self, ban: SourceBan) -> Result<(), BackendError> {
        let held = query::config_list(&self.replica.tree(), BAN_PREFIX).map_or(0, |v| v.len());
        if held >= MAX_BANS {
            return Err(fatal(format!(
                "the ban list is full ({MAX_BANS} sip.ban.* entries); {} is dropped by this master's SIP service only",
                ban.source
            )));
        }
        let value = serde_json::to_string(&StoredBan {
            until_unix: ban.until_unix,
            failures: ban.failures,
        })
        .map_err(|e| fatal(e.to_string()))?;
        self.replica
            .write(Request::SetConfig {
                key: ban_key(ban.source),
                value,
            })
            .await
            .map(|_| ())
            .map_err(backend_err)
    }

    fn banned(&self, source: IpAddr, now_unix: i64) -> bool {
        query::config_get(&self.replica.tree(), &ban_key(source))
            .ok()
            .flatten()
            .and_then(|e| serde_json::from_str::<StoredBan>(&e.value).ok())
            .is_some_and(|b| b.until_unix > now_unix)
    }
}

/// On the master, remove registrations and bans that expired (every `every`).
pub async fn expire_bindings(replica: Arc<Replica>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        if !replica.is_leader() {
            continue;
        }
        let now = chrono::Utc::now().timestamp();
        let lapsed = |prefix: &str, expired: &dyn Fn(&str) -> bool| -> Vec<String> {
            query::config_list(&replica.tree(), prefix)
                .map(|entries| {
                    entries
                        .into_iter()
                        .filter(|e| expired(&e.value))
                        .map(|e| e.key)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut keys = lapsed(BINDING_PREFIX, &|v| {
            serde_json::from_str::<Binding>(v).map_or(true, |b| b.expires_at_unix < now)
        });
        keys.extend(lapsed(BAN_PREFIX, &|v| {
            serde_json::from_str::<StoredBan>(v).map_or(true, |b| b.until_unix <= now)
        }));
        for key in keys {
            if key.starts_with(BAN_PREFIX) {
                tracing::info!(%key, "sip: ban lapsed, removed");
            }
            let _ = replica.write(Request::DeleteConfig { key }).await;
        }
    }
}

/// When to run nft for the ban list (the decision; [`sync_ban_firewall`] does the I/O).
#[derive(Debug, Default)]
struct BanSync {
    /// What was last handed to nft (None: nothing yet) and when.
    applied: Option<(BTreeMap<IpAddr, i64>, Instant)>,
}

impl BanSync {
    /// Re-apply an unchanged, non-empty list this often (a reload of the
    /// appliance's nftables.conf empties the sets; a failed apply is retried).
    const REFRESH: Duration = Duration::from_secs(60);

    /// The list to apply now, if any: when it changed, or [`BanSync::REFRESH`]
    /// after the last apply while there are bans; never while there are none and
    /// none were applied (nft is not touched on a node that never banned).
    fn due(&mut self, want: BTreeMap<IpAddr, i64>, now: Instant) -> Option<BTreeMap<IpAddr, i64>> {
        let due = match &self.applied {
            None => !want.is_empty(),
            Some((had, at)) => {
                (*had != want && !(had.is_empty() && want.is_empty()))
                    || (!want.is_empty() && now.saturating_duration_since(*at) >= Self::REFRESH)
            }
        };
        if !due {
            return None;
        }
        self.applied = Some((want.clone(), now));
        Some(want)
    }
}

/// Apply the replicated ban list (`sip.ban.*`) to this node's nftables sets,
/// checked every 2 s (see [`BanSync`]); a failure is logged once per distinct error.
pub async fn sync_ban_firewall(replica: Arc<Replica>, nft: tandem_media::firewall::NftConfig) {
    let mut sync = BanSync::default();
    let mut reported: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = chrono::Utc::now().timestamp();
        let entries: Vec<(String, String)> = query::config_list(&replica.tree(), BAN_PREFIX)
            .map(|v| v.into_iter().map(|e| (e.key, e.value)).collect())
            .unwrap_or_default();
        let Some(want) = sync.due(crate::settings::bans::active(&entries, now), Instant::now())
        else {
            continue;
        };
        match tandem_media::firewall::apply(&nft, &want, now).await {
            Ok(()) => {
                if reported.take().is_some() {
                    tracing::info!("sip: the nftables ban sets work again");
                }
                tracing::debug!(bans = want.len(), table = %nft.table, "sip: banned sources applied to the nftables sets sip_ban/sip_ban6");
            }
            Err(e) => {
                let text = e.to_string();
                if reported.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, bans = want.len(), "sip: banned sources not put into the firewall (retried every minute; set [sip] ban_firewall = false to stop trying)");
                    reported = Some(text);
                }
            }
        }
    }
}

/// The telephony service of this node, as the daemon runs it.
pub struct SipRuntime {
    /// The running service (None if it could not start: `error` says why).
    pub handle: Option<tandem_media::service::ServiceHandle<NodeBackend>>,
    /// The relay (for metrics).
    pub relay: Option<tandem_media::relay::Relay>,
    /// Why the service is not running.
    pub error: Option<String>,
}

impl crate::http::state::TelephonyStatus for SipRuntime {
    /// `service` part of `GET /api/v1/sip/status`.
    fn status(&self) -> tandem_api::SipServiceState {
        match &self.handle {
            Some(h) => tandem_api::SipServiceState::Running(Box::new(tandem_api::SipService {
                status: h.status(),
                listen: h.local_addr().to_string(),
                relay: self.relay.as_ref().map(|r| {
                    let s = r.stats();
                    tandem_api::RelayCounters {
                        packets_relayed: s.packets_relayed,
                        packets_lost: s.packets_lost,
                        packets_dropped: s.packets_dropped,
                        active_sessions: s.active_sessions,
                        recordings_started: s.recordings_started,
                    }
                }),
            })),
            None => tandem_api::SipServiceState::NotRunning {
                active: false,
                error: self.error.clone(),
            },
        }
    }

    /// Prometheus lines for the service and the relay.
    fn metrics_text(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        if let Some(h) = &self.handle {
            let s = h.status();
            line(
                "tandem_sip_registrations",
                "gauge",
                "Unexpired SIP registrations",
                s.registrations.len() as u64,
            );
            line(
                "tandem_sip_registrations_total",
                "counter",
                "Successful REGISTERs",
                s.registrations_total,
            );
            line(
                "tandem_sip_auth_failures_total",
                "counter",
                "SIP authentication failures",
                s.auth_failures_total,
            );
            line(
                "tandem_sip_call_attempts_total",
                "counter",
                "Call attempts",
                s.call_attempts_total,
            );
            line(
                "tandem_sip_call_answers_total",
                "counter",
                "Answered calls",
                s.call_answers_total,
            );
            line(
                "tandem_sip_call_failures_total",
                "counter",
                "Busy, unanswered or failed calls",
                s.call_failures_total,
            );
            line(
                "tandem_sip_active_calls",
                "gauge",
                "Calls in progress",
                s.active_calls,
            );
            line(
                "tandem_sip_parse_errors_total",
                "counter",
                "Unparseable SIP messages",
                s.parse_errors_total,
            );
            for (name, help, v) in [
                (
                    "tandem_sip_auth_replays_total",
                    "Digest responses with a nonce count used before, challenged again",
                    s.auth_replays_total,
                ),
                (
                    "tandem_sip_sources_banned_total",
                    "Sources banned for password guessing",
                    s.sources_banned_total,
                ),
                (
                    "tandem_sip_accounts_locked_total",
                    "Accounts locked for password guessing",
                    s.accounts_locked_total,
                ),
                (
                    "tandem_sip_tcp_refused_total",
                    "SIP/TCP connections closed at accept, over a cap",
                    s.tcp_refused_total,
                ),
                (
                    "tandem_sip_tcp_evicted_total",
                    "SIP/TCP connections without a complete message closed to make room",
                    s.tcp_evicted_total,
                ),
            ] {
                line(name, "counter", help, v);
            }
        }
        if let Some(r) = &self.relay {
            let s = r.stats();
            line(
                "tandem_rtp_packets_relayed_total",
                "counter",
                "RTP packets relayed",
                s.packets_relayed,
            );
            line(
                "tandem_rtp_packets_lost_total",
                "counter",
                "RTP packets missing in the sequence numbers received",
                s.packets_lost,
            );
            line(
                "tandem_rtp_packets_dropped_total",
                "counter",
                "RTP/RTCP packets dropped (wrong source, not RTP, no destination)",
                s.packets_dropped,
            );
            line(
                "tandem_rtp_bytes_relayed_total",
                "counter",
                "RTP and RTCP bytes relayed",
                s.bytes_relayed,
            );
            line(
                "tandem_rtp_active_sessions",
                "gauge",
                "Media sessions holding ports",
                s.active_sessions,
            );
        }
        out
    }
}

/// The address the SIP listener and the RTP relay bind to. With a VIP and the
/// unspecified `[sip] listen` (the default 0.0.0.0), the VIP itself, when the
/// kernel lets this node bind an address it does not hold yet
/// (`net.ipv4.ip_nonlocal_bind = 1`, which the appliance sets): then replies
/// to phones, requests to them and relayed RTP leave from the VIP, the address
/// the phones sent to. On 0.0.0.0 the kernel picks the node's own address as
/// their source, which phones behind NAT never receive (RFC 3581 §4: a response
/// leaves from the address the request was sent to).
fn vip_listen(
    listen: std::net::SocketAddr,
    vip: Option<IpAddr>,
    nonlocal_bind: impl Fn(IpAddr) -> bool,
) -> std::net::SocketAddr {
    match vip {
        Some(vip) if listen.ip().is_unspecified() && nonlocal_bind(vip) => {
            std::net::SocketAddr::new(vip, listen.port())
        }
        Some(vip) if listen.ip().is_unspecified() => {
            tracing::warn!(%vip, %listen, "SIP replies and RTP leave from this node's own address, not the VIP: phones behind NAT will not receive them; set net.ipv4.ip_nonlocal_bind = 1 (net.ipv6 for an IPv6 VIP; the appliance's sysctl.d/60-tandem.conf does)");
            listen
        }
        _ => listen,
    }
}

/// Does the kernel let this process bind `ip` while it is not on an interface
/// (`ip_nonlocal_bind`, read in this process's network namespace)?
fn nonlocal_bind_allowed(ip: IpAddr) -> bool {
    let knob = match ip {
        IpAddr::V4(_) => "/proc/sys/net/ipv4/ip_nonlocal_bind",
        IpAddr::V6(_) => "/proc/sys/net/ipv6/ip_nonlocal_bind",
    };
    std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "1")
}

/// Start the telephony service on a data node: SIP on `[sip] listen`, media ports
/// from `[sip] rtp_ports`, addresses advertised as the VIP (or the listen address).
/// It answers only while this node is master. A failure to start is logged and
/// shown in `tandem sip status`; the node runs on without telephony.
pub async fn start(
    cfg: &crate::config::Config,
    replica: Arc<Replica>,
    alarms: Arc<AlarmService>,
    roles: Arc<crate::run::role::RoleState>,
    tasks: &super::Tasks,
) -> Arc<SipRuntime> {
    use std::net::SocketAddr;
    let failed = |error: String| {
        tracing::error!(%error, "telephony service not started");
        Arc::new(SipRuntime {
            handle: None,
            relay: None,
            error: Some(error),
        })
    };
    let listen = vip_listen(cfg.sip.listen, cfg.vip_address(), nonlocal_bind_allowed);
    // The address phones are given: the VIP, else the listen address, else the
    // node's cluster address.
    let advertised_ip = cfg.vip_address().unwrap_or_else(|| {
        if listen.ip().is_unspecified() {
            cfg.advertise()
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .unwrap_or(listen.ip())
        } else {
            listen.ip()
        }
    });
    let incoming = cfg.node.data_dir.join("recordings").join(".incoming");
    if let Err(e) = std::fs::create_dir_all(&incoming) {
        return failed(format!("{}: {e}", incoming.display()));
    }
    let relay_cfg = tandem_media::relay::RelayConfig {
        bind_ip: listen.ip(),
        advertised_ip,
        port_low: cfg.sip.rtp_ports.low,
        port_high: cfg.sip.rtp_ports.high,
        recordings_dir: incoming,
    };
    let relay = match tandem_media::relay::Relay::start(relay_cfg).await {
        Ok(r) => r,
        Err(e) => return failed(e.to_string()),
    };
    let backend = Arc::new(NodeBackend {
        replica: replica.clone(),
        alarms,
        node: cfg.node_name(),
    });
    let mut scfg = tandem_media::service::ServiceConfig::new(
        listen,
        SocketAddr::new(advertised_ip, listen.port()),
    );
    scfg.realm = cfg.cluster.name.clone();
    scfg.digest_algorithms = cfg.sip.digest_algorithms.clone();
    scfg.active = false;
    let handle = match tandem_media::service::Service::start(scfg, backend, relay.clone()).await {
        Ok(h) => h,
        Err(e) => return failed(e.to_string()),
    };
    let sip_port = handle.local_addr().port();
    tracing::info!(listen = %handle.local_addr(), advertised = %advertised_ip, rtp_ports = %cfg.sip.rtp_ports, "telephony service started (answers while this node is master)");
    let rt = Arc::new(SipRuntime {
        handle: Some(handle),
        relay: Some(relay),
        error: None,
    });
    // Answer only as master, from the moment the role changes: the VIP is added a
    // few ms after the role changes, and whatever reaches an inactive service is
    // dropped (polling the role every 50 ms lost a phone's first INVITE after a
    // failover; only its retransmission 500 ms later was answered).
    let weak = Arc::downgrade(&rt);
    let mut role = roles.subscribe();
    tasks.spawn("sip role follower", async move {
        loop {
            let Some(rt) = weak.upgrade() else { return };
            if let Some(h) = &rt.handle {
                h.set_active(
                    *role.borrow_and_update() == tandem_failover::controller::Role::Master,
                );
            }
            drop(rt);
            // Woken by a role change; the timeout only notices a stopped service.
            let wait = tokio::time::timeout(std::time::Duration::from_secs(1), role.changed());
            if let Ok(Err(_)) = wait.await {
                return; // the role controller is gone: shutting down
            }
        }
    });
    if cfg.sip.ban_firewall {
        let nft = tandem_media::firewall::NftConfig::new(sip_port);
        tasks.spawn("sip ban firewall", sync_ban_firewall(replica.clone(), nft));
    }
    tasks.spawn(
        "registration expiry",
        expire_bindings(replica, std::time::Duration::from_secs(10)),
    );
    rt
}

#[cfg(test)]
mod tests {
    use super::{vip_listen, BanSync};
    use std::collections::BTreeMap;
    use std::net::{IpAddr, SocketAddr};
    use std::time::{Duration, Instant};

    #[test]
    fn nft_runs_when_the_ban_list_changes_and_every_minute_while_there_are_bans() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut sync = BanSync::default();
        let ban: BTreeMap<IpAddr, i64> = [("198.18.0.5".parse().unwrap(), 1000)].into();
        // A node that never banned leaves the firewall alone.
        assert_eq!(sync.due(BTreeMap::new(), t0), None);
        assert_eq!(sync.due(ban.clone(), t0), Some(ban.clone()));
        assert_eq!(sync.due(ban.clone(), t0 + s(2)), None);
        assert_eq!(
            sync.due(ban.clone(), t0 + s(60)),
            Some(ban.clone()),
            "refresh"
        );
        // Lifted: the sets are emptied once, then left alone.
        assert_eq!(sync.due(BTreeMap::new(), t0 + s(62)), Some(BTreeMap::new()));
        assert_eq!(sync.due(BTreeMap::new(), t0 + s(64)), None);
        assert_eq!(sync.due(BTreeMap::new(), t0 + s(200)), None);
    }

    #[test]
    fn the_default_listen_address_becomes_the_vip_when_it_can_be_bound() {
        let any: SocketAddr = "0.0.0.0:5060".parse().unwrap();
        let vip: IpAddr = "198.18.0.200".parse().unwrap();
        let on_vip: SocketAddr = "198.18.0.200:5060".parse().unwrap();
        assert_eq!(vip_listen(any, Some(vip), |_| true), on_vip);
        assert_eq!(vip_listen(any, Some(vip), |_| false), any);
        assert_eq!(vip_listen(any, None, |_| true), any);
        let own: SocketAddr = "198.18.0.1:5080".parse().unwrap();
        assert_eq!(vip_listen(own, Some(vip), |_| true), own);
    }
}
