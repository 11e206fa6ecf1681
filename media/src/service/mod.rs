//! The socket driver of the SIP core: UDP and TCP listeners on the service
//! address, one task owning the [`Core`], and the backend writes it asks for.
//!
//! ```text
//!  UDP socket ─┐                       ┌─▶ UDP send_to
//!  TCP conns ──┼─▶ core task (Core) ───┼─▶ TCP connection writers
//!  timers ─────┘        ▲              └─▶ spawned: Backend::save_binding / call_ended
//!                       └── WritesDone ◀──┘
//! ```
//!
//! Only the master answers: while inactive ([`ServiceHandle::set_active`]) every
//! received message is dropped (the standby does not hold the VIP anyway; dropping
//! rather than 503 keeps phones retrying towards the address that will move).

use crate::b2bua::{CallStatus, Clock, Core, CoreConfig, Counters, Output, Peer};
use crate::backend::Backend;
use crate::digest::Algorithm;
use crate::error::MediaError;
use crate::guard::GuardConfig;
use crate::registrar::RegistrarConfig;
use crate::relay::Relay;
use crate::sip::transaction::TimerConfig;
use crate::sip::Transport;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

mod tcp;
use tcp::Tcp;
pub use tcp::{Backoff, TcpLimits};

/// Settings of the SIP service (`[sip]` in the node config).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Address the UDP and TCP listeners bind to (e.g. 0.0.0.0:5060). Port 0 picks one.
    pub listen: SocketAddr,
    /// Address put in Via/Contact (the VIP); its port is replaced by the bound port when 0.
    pub advertised: SocketAddr,
    /// Digest realm.
    pub realm: String,
    /// Ringing time before a call ends as no-answer.
    pub no_answer_timeout: Duration,
    /// Shortest registration accepted (423 below).
    pub min_expires: u32,
    /// Longest registration granted.
    pub max_expires: u32,
    /// Registration time when the phone names none.
    pub default_expires: u32,
    /// Password-guessing limits: per source (ban), per account (lock), log interval.
    pub guard: GuardConfig,
    /// Digest nonce lifetime in seconds.
    pub nonce_ttl_secs: i64,
    /// RFC 3261 timer values.
    pub timers: TimerConfig,
    /// Whether to listen on TCP too.
    pub tcp: bool,
    /// Connection caps and timeouts of SIP over TCP.
    pub tcp_limits: TcpLimits,
    /// User-Agent / Server header.
    pub user_agent: String,
    /// Digest algorithms offered in challenges, most preferred first. Default
    /// SHA-256 then MD5 (RFC 8760); user agents that give up on the first algorithm
    /// they do not know (baresip 1.0 / libre 1.1) need `[Md5]` alone.
    pub digest_algorithms: Vec<crate::digest::Algorithm>,
    /// Whether to answer from the start (master) or drop until `set_active(true)`.
    pub active: bool,
}

impl ServiceConfig {
    /// Defaults for a service on `listen`, advertising `advertised`.
    pub fn new(listen: SocketAddr, advertised: SocketAddr) -> ServiceConfig {
        ServiceConfig {
            listen,
            advertised,
            realm: "tandem".into(),
            no_answer_timeout: Duration::from_secs(30),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            guard: GuardConfig::default(),
            nonce_ttl_secs: 300,
            timers: TimerConfig::default(),
            tcp: true,
            tcp_limits: TcpLimits::default(),
            user_agent: format!("tandem/{}", env!("CARGO_PKG_VERSION")),
            active: true,
            digest_algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }
}

/// A registration as shown by `tandem sip status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistrationStatus {
    /// Extension.
    pub aor: String,
    /// Contact URI.
    pub contact: String,
    /// Where the phone registered from.
    pub source: SocketAddr,
    /// Seconds until it lapses.
    pub expires_in: i64,
}

/// Snapshot for `tandem sip status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SipStatus {
    /// Whether this node answers SIP (master).
    pub active: bool,
    /// Unexpired registrations.
    pub registrations: Vec<RegistrationStatus>,
    /// Calls in progress.
    pub calls: Vec<CallStatus>,
    /// Successful REGISTERs (counter).
    pub registrations_total: u64,
    /// Authentication failures (counter).
    pub auth_failures_total: u64,
    /// Call attempts (counter).
    pub call_attempts_total: u64,
    /// Answered calls (counter).
    pub call_answers_total: u64,
    /// Busy / unanswered / failed calls (counter).
    pub call_failures_total: u64,
    /// Calls in progress (gauge).
    pub active_calls: u64,
    /// Unparseable messages (counter).
    pub parse_errors_total: u64,
    /// Replayed digest nonce counts, challenged again (counter).
    #[serde(default)]
    pub auth_replays_total: u64,
    /// Sources banned for password guessing (counter).
    #[serde(default)]
    pub sources_banned_total: u64,
    /// Accounts locked for password guessing (counter).
    #[serde(default)]
    pub accounts_locked_total: u64,
    /// SIP/TCP connections closed at accept, over a cap (counter).
    #[serde(default)]
    pub tcp_refused_total: u64,
    /// SIP/TCP connections without a complete message closed to make room for a
    /// new one at the total cap (counter).
    #[serde(default)]
    pub tcp_evicted_total: u64,
}

enum Event {
    Bytes(Vec<u8>, Peer),
    WritesDone(u64, Result<(), crate::error::BackendError>),
    Shutdown,
}

/// Control of a running service.
pub struct ServiceHandle<B: Backend> {
    /// Bound address (UDP and TCP share the port).
    local: SocketAddr,
    /// Answer or drop.
    active: Arc<AtomicBool>,
    /// Events into the core task.
    tx: mpsc::Sender<Event>,
    /// Metrics.
    counters: Arc<Counters>,
    /// Calls in progress.
    calls: Arc<Mutex<BTreeMap<uuid::Uuid, CallStatus>>>,
    /// For registrations.
    backend: Arc<B>,
    /// The core task.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The TCP accept task.
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// TCP connections (for the refusal counter).
    tcp: Arc<Tcp>,
}

/// The SIP service.
pub struct Service;

/// The UDP socket and, with `tcp`, the TCP listener on the same address. With port
/// 0 the kernel picks the UDP port; the same number may be taken for TCP (by any
/// outgoing connection's ephemeral port), then another port is tried.
async fn bind(
    listen: SocketAddr,
    tcp: bool,
) -> Result<(UdpSocket, Option<TcpListener>), MediaError> {
    let err = |transport, addr, source| MediaError::SipBind {
        transport,
        addr,
        source,
    };
    let mut tries = if listen.port() == 0 { 20 } else { 1 };
    loop {
        tries -= 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| err("UDP", listen, e))?;
        if !tcp {
            return Ok((udp, None));
        }
        let local = udp.local_addr().map_err(|e| err("UDP", listen, e))?;
        match TcpListener::bind(local).await {
            Ok(l) => return Ok((udp, Some(l))),
            Err(e) if tries > 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(err("TCP", local, e)),
        }
    }
}

impl Service {
    /// Bind the sockets and start the core task. The service starts inactive when
    /// `cfg.active` is false (standby).
    pub async fn start<B: Backend>(
        cfg: ServiceConfig,
        backend: Arc<B>,
        relay: Relay,
    ) -> Result<ServiceHandle<B>, MediaError> {
        let (udp, listener) = bind(cfg.listen, cfg.tcp).await?;
        let local = udp.local_addr().map_err(|source| MediaError::SipBind {
            transport: "UDP",
            addr: cfg.listen,
            source,
        })?;
        // Bursts of REGISTERs after a failover must not overflow the default buffer.
        for (opt, name) in [(true, "SO_RCVBUF"), (false, "SO_SNDBUF")] {
            let size = 4 << 20;
            let r = if opt {
                nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::RcvBuf, &size)
            } else {
                nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::SndBuf, &size)
            };
            if let Err(e) = r {
                tracing::debug!(option = name, error = %e, "sip: socket buffer size not set");
            }
        }
        let mut advertised = cfg.advertised;
        if advertised.port() == 0 {
            advertised.set_port(local.port());
        }
        let (tx, rx) = mpsc::channel::<Event>(4096);
        let active = Arc::new(AtomicBool::new(cfg.active));
        let conns = Arc::new(Tcp::new(cfg.tcp_limits.clone()));
        let conns_view = conns.clone();
        let accept = listener.map(|listener| {
            tokio::spawn(tcp::accept_loop(
                listener,
                tx.clone(),
                conns.clone(),
                active.clone(),
            ))
        });
        let core_cfg = CoreConfig {
            advertised,
            registrar: RegistrarConfig {
                realm: cfg.realm.clone(),
                min_expires: cfg.min_expires,
                max_expires: cfg.max_expires,
                default_expires: cfg.default_expires,
            },
            no_answer_timeout: cfg.no_answer_timeout,
            timers: cfg.timers,
            user_agent: cfg.user_agent.clone(),
            guard: cfg.guard.clone(),
            nonce_ttl_secs: cfg.nonce_ttl_secs,
            digest_algorithms: cfg.digest_algorithms.clone(),
        };
        let core = Core::new(core_cfg, backend.clone(), relay);
        let counters = core.counters();
        let calls = core.status_view();
        tracing::info!(%local, %advertised, tcp = cfg.tcp, "sip: service listening");
        let task = tokio::spawn(core_loop(
            core,
            Arc::new(udp),
            rx,
            tx.clone(),
            conns,
            active.clone(),
            backend.clone(),
        ));
        Ok(ServiceHandle {
            local,
            active,
            tx,
            counters,
            calls,
            backend,
            task: Mutex::new(Some(task)),
            accept: Mutex::new(accept),
            tcp: conns_view,
        })
    }
}

impl<B: Backend> ServiceHandle<B> {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Master: answer; standby: drop everything received.
    pub fn set_active(&self, active: bool) {
        let was = self.active.swap(active, Ordering::SeqCst);
        if was != active {
            tracing::info!(active, "sip: service role changed");
        }
    }

    /// Registrations, calls and counters.
    pub fn status(&self) -> SipStatus {
        let now = self.backend.now_unix();
        let mut registrations: Vec<RegistrationStatus> = self
            .backend
            .all_bindings()
            .into_iter()
            .filter(|b| b.expires_at_unix > now)
            .map(|b| RegistrationStatus {
                aor: b.aor,
                contact: b.contact,
                source: b.source,
                expires_in: b.expires_at_unix - now,
            })
            .collect();
        registrations.sort_by(|a, b| a.aor.cmp(&b.aor).then(a.contact.cmp(&b.contact)));
        let c = &self.counters;
        SipStatus {
            active: self.active.load(Ordering::SeqCst),
            registrations,
            calls: self
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
            registrations_total: c.registrations.load(Ordering::Relaxed),
            auth_failures_total: c.auth_failures.load(Ordering::Relaxed),
            call_attempts_total: c.call_attempts.load(Ordering::Relaxed),
            call_answers_total: c.call_answers.load(Ordering::Relaxed),
            call_failures_total: c.call_failures.load(Ordering::Relaxed),
            active_calls: c.active_calls.load(Ordering::Relaxed),
            parse_errors_total: c.parse_errors.load(Ordering::Relaxed),
            auth_replays_total: c.auth_replays.load(Ordering::Relaxed),
            sources_banned_total: c.sources_banned.load(Ordering::Relaxed),
            accounts_locked_total: c.accounts_locked.load(Ordering::Relaxed),
            tcp_refused_total: self.tcp.refused(),
            tcp_evicted_total: self.tcp.evicted(),
        }
    }

    /// Stop the service (calls in progress are dropped without CDR).
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Event::Shutdown).await;
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        // Wait until the listener is really closed so the port can be bound again.
        let accept = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(a) = accept {
            a.abort();
            let _ = a.await;
        }
    }
}

impl<B: Backend> Drop for ServiceHandle<B> {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        if let Some(a) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            a.abort();
        }
    }
}

fn clock<B: Backend>(backend: &B) -> Clock {
    Clock {
        now: Instant::now(),
        wall: chrono::Utc::now(),
        unix: backend.now_unix(),
    }
}

async fn core_loop<B: Backend>(
    mut core: Core<B>,
    udp: Arc<UdpSocket>,
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    conns: Arc<Tcp>,
    active: Arc<AtomicBool>,
    backend: Arc<B>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = core
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = udp.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if active.load(Ordering::Relaxed) {
                        let peer = Peer { addr: from, transport: Transport::Udp };
                        core.on_bytes(&buf[..n], peer, &clock(&*backend));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "sip: UDP receive error"),
            },
            ev = rx.recv() => match ev {
                Some(Event::Bytes(bytes, peer)) => {
                    if active.load(Ordering::Relaxed) {
                        core.on_bytes(&bytes, peer, &clock(&*backend));
                    }
                }
                Some(Event::WritesDone(token, result)) => core.on_writes_done(token, result, &clock(&*backend)),
                Some(Event::Shutdown) | None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        core.poll(&clock(&*backend));
        for out in core.take_outputs() {
            perform(out, &udp, &conns, &tx, &backend).await;
        }
    }
    tracing::info!("sip: service stopped");
}

async fn perform<B: Backend>(
    out: Output,
    udp: &Arc<UdpSocket>,
    conns: &Arc<Tcp>,
    tx: &mpsc::Sender<Event>,
    backend: &Arc<B>,
) {
    match out {
        Output::Send { peer, bytes } => match peer.transport {
            Transport::Udp => {
                if let Err(e) = udp.try_send_to(&bytes, peer.addr) {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        let _ = udp.send_to(&bytes, peer.addr).await;
                    } else {
                        tracing::debug!(to = %peer.addr, error = %e, "sip: UDP send failed");
                    }
                }
            }
            Transport::Tcp => tcp::send(peer.addr, bytes, conns, tx),
        },
        Output::WriteBindings {
            token,
            save,
            remove,
        } => {
            let backend = backend.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut result = Ok(());
                for b in save {
                    if let Err(e) = backend.save_binding(b).await {
                        result = Err(e);
                        break;
                    }
                }
                if result.is_ok() {
                    for (aor, contact) in remove {
                        if let Err(e) = backend.remove_binding(&aor, &contact).await {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let _ = tx.send(Event::WritesDone(token, result)).await;
            });
        }
        Output::CallEnded { record, media } => {
            let backend = backend.clone();
            tokio::spawn(async move {
                let recording = match media {
                    Some(m) => match m.finish().await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(id = %record.id, error = %e, "sip: recording failed");
                            None
                        }
                    },
                    None => None,
                };
                let id = record.id;
                if let Err(e) = backend.call_ended(record, recording).await {
                    tracing::error!(%id, error = %e, "sip: CDR could not be committed");
                }
            });
        }
        Output::SecurityEvent(burst) => backend.security_event(&burst),
        Output::Ban(ban) => {
            let backend = backend.clone();
            tokio::spawn(async move {
                let source = ban.source;
                if let Err(e) = backend.ban(ban).await {
                    // At most one warning a minute: an attack from many sources
                    // may fail many writes (no quorum, full list).
                    static LAST: AtomicI64 = AtomicI64::new(0);
                    let now = chrono::Utc::now().timestamp();
                    if now - LAST.load(Ordering::Relaxed) >= 60 {
                        LAST.store(now, Ordering::Relaxed);
                        tracing::warn!(%source, error = %e, "sip: ban not replicated (further failures this minute not logged); this service still drops the source");
                    } else {
                        tracing::debug!(%source, error = %e, "sip: ban not replicated");
                    }
                }
            });
        }
    }
}
