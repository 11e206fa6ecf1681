//! The SIP core: transaction layer, registrar and B2BUA call control in one
//! synchronous state machine, driven by the socket driver in [`crate::service`].
//!
//! ```text
//!  caller A ──INVITE──▶ [server tx] ─▶ Core ─▶ [client tx] ──INVITE──▶ callee B
//!           ◀─1xx/2xx── (A dialog)     │  │     (B dialog) ◀─1xx/2xx──
//!                                      │  └─ relay.allocate(): SDP of each leg points at the relay
//!                                      └──── Output::WriteBindings / CallEnded → Backend (Raft)
//! ```
//!
//! Inputs: received bytes ([`Core::on_bytes`]), finished backend writes
//! ([`Core::on_writes_done`]) and the clock ([`Core::poll`] at [`Core::next_deadline`]).
//! Outputs ([`Output`]) are performed by the driver. Time comes in as a [`Clock`];
//! reads of users and bindings are the backend's local (replicated) state.

use crate::backend::{Backend, Binding, CallRecord, Disposition, SourceBan};
use crate::digest::NonceKeeper;
use crate::error::BackendError;
use crate::guard::{Admission, AuthBurst, AuthGuard, GuardAction, GuardConfig, Notice};
use crate::registrar::{self, AuthOutcome, RegisterOutcome, RegistrarConfig};
use crate::relay::{Codec, MediaSession, Relay};
use crate::sdp::Sdp;
use crate::sip::dialog::{Dialog, DialogState};
use crate::sip::message::{self, ParseError};
use crate::sip::transaction::{ClientTx, ServerTx, TimerConfig, TxAction, TxKind};
use crate::sip::{self, new_branch, random_token, Transport};
use chrono::{DateTime, Utc};
use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Method, Request, Response, SipMessage, Version};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of the SIP core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Address written in our Via and Contact headers (the VIP and SIP port).
    pub advertised: SocketAddr,
    /// Registration limits and the digest realm.
    pub registrar: RegistrarConfig,
    /// Ringing longer than this ends the call as no-answer (480 to the caller).
    pub no_answer_timeout: Duration,
    /// RFC 3261 timer base values.
    pub timers: TimerConfig,
    /// Server / User-Agent header value.
    pub user_agent: String,
    /// Password-guessing limits (per source, per account, logging).
    pub guard: GuardConfig,
    /// How long a digest nonce stays valid (seconds).
    pub nonce_ttl_secs: i64,
    /// Digest algorithms offered, most preferred first (RFC 8760 §2.4).
    pub digest_algorithms: Vec<crate::digest::Algorithm>,
}

/// The time of an event: monotonic for timers, wall clock for CDRs, Unix seconds
/// (from the backend) for binding expiry.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic time for the transaction timers.
    pub now: Instant,
    /// Wall clock for CDR timestamps.
    pub wall: DateTime<Utc>,
    /// Unix seconds for binding expiry.
    pub unix: i64,
}

/// A remote party as seen by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Its address (source of its messages, destination of ours).
    pub addr: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send bytes to a peer.
    Send {
        /// Destination.
        peer: Peer,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Commit binding changes, then call [`Core::on_writes_done`] with `token`.
    WriteBindings {
        /// Identifies the REGISTER waiting for the result.
        token: u64,
        /// Bindings to add/refresh.
        save: Vec<Binding>,
        /// (aor, contact) pairs to remove.
        remove: Vec<(String, String)>,
    },
    /// A call is over: finish its media, then commit the CDR and recording.
    CallEnded {
        /// The CDR.
        record: CallRecord,
        /// The call's relay session, when one was allocated.
        media: Option<MediaSession>,
    },
    /// Raise the authentication-failure alarm (once per burst).
    SecurityEvent(AuthBurst),
    /// Put a source on the replicated ban list.
    Ban(SourceBan),
}

/// Counters for metrics (shared with the service handle).
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful REGISTERs that added or refreshed a binding.
    pub registrations: AtomicU64,
    /// Unregistrations (Expires: 0).
    pub unregistrations: AtomicU64,
    /// Failed authentications (wrong password, unknown user).
    pub auth_failures: AtomicU64,
    /// Authenticated INVITEs routed or rejected as calls.
    pub call_attempts: AtomicU64,
    /// Calls answered.
    pub call_answers: AtomicU64,
    /// Calls ended busy, unanswered or failed.
    pub call_failures: AtomicU64,
    /// Calls in progress.
    pub active_calls: AtomicU64,
    /// Messages that could not be parsed.
    pub parse_errors: AtomicU64,
    /// Correct digests with a nonce count used before (replays), challenged again.
    pub auth_replays: AtomicU64,
    /// Sources banned for password guessing.
    pub sources_banned: AtomicU64,
    /// Accounts locked for password guessing.
    pub accounts_locked: AtomicU64,
}

/// A call in progress, for `tandem sip status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallStatus {
    /// CDR / recording id.
    pub id: uuid::Uuid,
    /// Caller extension.
    pub caller: String,
    /// Called extension.
    pub callee: String,
    /// "ringing" or "answered".
    pub state: String,
    /// When the call started (or was answered, once answered).
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// INVITE sent to the callee, nothing back yet or only 100.
    Routing,
    /// The callee rings (18x).
    Early,
    /// 200 OK relayed.
    Answered,
}

/// Both legs of one call.
struct Call {
    /// CDR id (= recording id).
    id: uuid::Uuid,
    /// Caller extension.
    caller: String,
    /// Called extension.
    callee: String,
    /// When routing started.
    start: DateTime<Utc>,
    /// When answered.
    answer: Option<DateTime<Utc>>,
    /// Progress.
    state: CallState,
    /// Where A's messages come from.
    a_peer: Peer,
    /// A's INVITE, for building responses.
    a_invite: Request,
    /// Server transaction of A's INVITE.
    a_server_key: String,
    /// Dialog with A (we are UAS).
    a_dialog: Dialog,
    /// Where B is reached (its registration source).
    b_peer: Peer,
    /// Client transaction of our INVITE to B.
    b_client_key: String,
    /// Our INVITE to B (for CANCEL and ACK).
    b_invite: Request,
    /// Dialog with B (we are UAC).
    b_dialog: Dialog,
    /// Our ACK to B's 2xx, resent when the 2xx is retransmitted (RFC 3261 §13.2.2.4).
    b_ack: Option<Vec<u8>>,
    /// A CANCEL waits for B's first provisional response (RFC 3261 §9.1).
    cancel_pending: bool,
    /// The relay session.
    media: Option<MediaSession>,
    /// SDP we sent to A (rewritten answer), reused for re-INVITEs.
    sdp_to_a: Option<String>,
    /// SDP we sent to B (rewritten offer).
    sdp_to_b: String,
    /// When ringing turns into no-answer.
    no_answer_at: Option<Instant>,
    /// Server INVITE transactions awaiting an ACK for a 2xx, by CSeq (§13.3.1.4).
    awaiting_ack: Vec<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(String),
    Client(String),
    NoAnswer(u64),
}

struct ServerEntry {
    tx: ServerTx,
    peer: Peer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Our INVITE to the callee of this call.
    BInvite(u64),
    /// BYE / CANCEL / ACK-less requests whose answers only end the transaction.
    Other,
}

struct ClientEntry {
    tx: ClientTx,
    peer: Peer,
    request: Request,
    owner: Owner,
}

/// A challenge to send: to whom, and why.
#[derive(Debug, Clone, Copy)]
struct Challenge {
    /// Where the request came from (the nonce is bound to it).
    source: IpAddr,
    /// `stale=true` (RFC 7616 §3.3).
    stale: bool,
    /// The nonce count was used before.
    replayed: bool,
}

/// Write a guard's log line: the only WARNs of authentication failures, bounded
/// per interval (see [`crate::guard`]).
fn log_notice(n: Notice) {
    match n {
        Notice::Failure { source, account } => tracing::warn!(
            %source,
            account,
            "sip: authentication failed (further failures this interval are summarised)"
        ),
        Notice::Banned {
            source,
            failures,
            duration,
        } => tracing::warn!(
            %source,
            failures,
            ban_s = duration.as_secs(),
            "sip: source banned after repeated authentication failures (lift it: `tandem config delete sip.ban.<ip>`)"
        ),
        Notice::Locked {
            account,
            failures,
            duration,
        } => tracing::warn!(
            account,
            failures,
            lock_s = duration.as_secs(),
            "sip: account locked for new authentications after repeated failures; its registered phones keep working"
        ),
        Notice::Summary {
            interval,
            failures,
            sources,
            sample,
            accounts,
            bans,
            locks,
            refused,
        } => tracing::warn!(
            interval_s = interval.as_secs(),
            failures,
            sources,
            sample = ?sample,
            accounts = ?accounts,
            bans,
            locks,
            refused,
            "sip: authentication failures in the last interval"
        ),
        Notice::BurstOver { failures } => tracing::info!(
            failures,
            "sip: password guessing stopped (no failure for a while); the next burst raises the alarm again"
        ),
    }
}

struct PendingRegister {
    server_key: String,
    response: Response,
    registered: bool,
    unregistered: bool,
}

/// The SIP core (see the module docs).
pub struct Core<B: Backend> {
    /// Settings.
    cfg: CoreConfig,
    /// Users, bindings, CDR sink.
    backend: Arc<B>,
    /// RTP relay for call media.
    relay: Relay,
    /// Digest nonces.
    nonces: NonceKeeper,
    /// Auth-failure rate limiting.
    guard: AuthGuard,
    /// Server transactions by key (§17.2.3).
    servers: HashMap<String, ServerEntry>,
    /// Client transactions by key (§17.1.3).
    clients: HashMap<String, ClientEntry>,
    /// Calls by internal key.
    calls: HashMap<u64, Call>,
    /// Call key by A-leg Call-ID.
    by_a: HashMap<String, u64>,
    /// Call key by B-leg Call-ID.
    by_b: HashMap<String, u64>,
    /// Timer queue (lazy: stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, TimerRef)>>,
    /// REGISTERs waiting for their writes.
    pending: HashMap<u64, PendingRegister>,
    /// Next token / call key.
    next_id: u64,
    /// Things for the driver to do.
    out: Vec<Output>,
    /// Metrics.
    counters: Arc<Counters>,
    /// Calls in progress, for status.
    status: Arc<Mutex<BTreeMap<uuid::Uuid, CallStatus>>>,
}

fn server_key(branch: &str, sent_by: &str, method: Method) -> String {
    let m = if method == Method::Ack {
        Method::Invite
    } else {
        method
    };
    format!("{branch}|{sent_by}|{m}")
}

fn client_key(branch: &str, method: Method) -> String {
    format!("{branch}|{method}")
}

fn sent_by(via: &str) -> &str {
    via.split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
}

fn strip_tag(value: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let (addr, params) = match value.rfind('>') {
        Some(i) => (&value[..=i], &value[i + 1..]),
        None => value.split_at(value.find(';').unwrap_or(value.len())),
    };
    for p in params.split(';').skip(1) {
        if !p.trim().to_ascii_lowercase().starts_with("tag=") {
            parts.push(p);
        }
    }
    let mut out = addr.trim().to_string();
    for p in parts {
        out.push(';');
        out.push_str(p);
    }
    out
}

impl<B: Backend> Core<B> {
    /// A core with no state.
    pub fn new(cfg: CoreConfig, backend: Arc<B>, relay: Relay) -> Core<B> {
        Core {
            nonces: NonceKeeper::new(cfg.nonce_ttl_secs),
            guard: AuthGuard::new(cfg.guard.clone()),
            cfg,
            backend,
            relay,
            servers: HashMap::new(),
            clients: HashMap::new(),
            calls: HashMap::new(),
            by_a: HashMap::new(),
            by_b: HashMap::new(),
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            next_id: 1,
            out: Vec::new(),
            counters: Arc::default(),
            status: Arc::default(),
        }
    }

    /// Shared metrics counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Shared view of the calls in progress.
    pub fn status_view(&self) -> Arc<Mutex<BTreeMap<uuid::Uuid, CallStatus>>> {
        self.status.clone()
    }

    /// Take what the driver must do.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Number of live transactions (server, client) — for tests and status.
    pub fn transaction_counts(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }

    /// When [`Core::poll`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        match (timer, self.guard.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send(&mut self, peer: Peer, bytes: Vec<u8>) {
        self.out.push(Output::Send { peer, bytes });
    }

    fn via_host(&self) -> String {
        self.cfg.advertised.to_string()
    }

    fn contact(&self, user: &str, transport: Transport) -> String {
        match transport {
            Transport::Udp => format!("sip:{user}@{}", self.cfg.advertised),
            Transport::Tcp => format!("sip:{user}@{};transport=tcp", self.cfg.advertised),
        }
    }

    // ---------------------------------------------------------------- input

    /// A datagram or stream frame arrived from `peer`.
    pub fn on_bytes(&mut self, bytes: &[u8], peer: Peer, clock: &Clock) {
        match sip::parse(bytes) {
            Ok(SipMessage::Request(req)) => self.on_request(req, peer, clock),
            Ok(SipMessage::Response(resp)) => self.on_response(resp, peer, clock),
            Err(ParseError::KeepAlive) => {}
            Err(e) => {
                self.counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer.addr, error = %e, "sip: unparseable message");
                if let Some(resp) = message::error_response(bytes, &e, &self.cfg.user_agent) {
                    self.send(peer, resp);
                }
            }
        }
    }

    fn on_request(&mut self, mut req: Request, peer: Peer, clock: &Clock) {
        sip::stamp_via(&mut req, peer.addr);
        let h = &req.headers;
        let via = message::top_via(h).unwrap_or_default().to_string();
        let branch = message::param(&via, "branch")
            .unwrap_or_default()
            .to_string();
        let key = server_key(&branch, sent_by(&via), req.method);
        if req.method == Method::Ack {
            self.on_ack(&req, &key, clock);
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            // Retransmission (§17.2.1 / §17.2.2): absorbed by the transaction.
            let actions = entry.tx.on_request_retransmission();
            self.server_actions(&key, actions, clock);
            return;
        }
        let needs_auth = matches!(req.method, Method::Register | Method::Invite)
            && message::tag(message::to(h).unwrap_or_default()).is_none();
        let ip = peer.addr.ip().to_canonical();
        if needs_auth
            && (self.guard.is_banned(ip, clock.now) || self.backend.banned(ip, clock.unix))
        {
            tracing::debug!(source = %peer.addr, "sip: request from a banned source dropped");
            return;
        }
        let kind = if req.method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        self.servers.insert(
            key.clone(),
            ServerEntry {
                tx: ServerTx::new(kind, peer.transport.unreliable(), self.cfg.timers),
                peer,
            },
        );
        match req.method {
            Method::Register => self.on_register(&req, &key, peer, clock),
            Method::Options => {
                let mut r = sip::response(&req, 200, Some(&random_token()), &self.cfg.user_agent);
                r.headers.push(Header::Allow(sip::ALLOW.into()));
                r.headers.push(Header::Accept("application/sdp".into()));
                self.respond(&key, r, clock);
            }
            Method::Invite => self.on_invite(req, key, peer, clock),
            Method::Cancel => self.on_cancel(&req, &key, &branch, &via, clock),
            Method::Bye => self.on_bye(&req, &key, clock),
            Method::Info | Method::Update | Method::Notify | Method::Message
                if self.find_call(&req).is_some() =>
            {
                let r = sip::response(&req, 200, None, &self.cfg.user_agent);
                self.respond(&key, r, clock);
            }
            _ => {
                // RFC 3261 §8.2.1: known but not supported here.
                let mut r = sip::response(&req, 405, Some(&random_token()), &self.cfg.user_agent);
                r.headers.push(Header::Allow(sip::ALLOW.into()));
                self.respond(&key, r, clock);
            }
        }
    }

    fn find_call(&self, req: &Request) -> Option<(u64, bool)> {
        let call_id = message::call_id(&req.headers)?;
        if let Some(k) = self.by_a.get(call_id) {
            return Some((*k, true));
        }
        self.by_b.get(call_id).map(|k| (*k, false))
    }

    fn on_ack(&mut self, req: &Request, key: &str, clock: &Clock) {
        if let Some(entry) = self.servers.get_mut(key) {
            // ACK for a non-2xx final: same transaction (§17.2.1).
            let actions = entry.tx.on_ack(clock.now);
            self.server_actions(key, actions, clock);
            self.schedule(TimerRef::Server(key.to_string()));
            return;
        }
        // ACK for a 2xx: matched to the dialog by Call-ID and CSeq (§13.3.1.4).
        let Some((call_key, _)) = self.find_call(req) else {
            return;
        };
        let cseq = message::cseq(&req.headers).map(|c| c.0).unwrap_or_default();
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let Some(pos) = call.awaiting_ack.iter().position(|(n, _)| *n == cseq) else {
            return;
        };
        let (_, tx_key) = call.awaiting_ack.remove(pos);
        if let Some(entry) = self.servers.get_mut(&tx_key) {
            let actions = entry.tx.on_ack(clock.now);
            self.server_actions(&tx_key, actions, clock);
        }
    }

    /// Send a response through a server transaction.
    fn respond(&mut self, key: &str, resp: Response, clock: &Clock) {
        let code = sip::code(&resp);
        let bytes = sip::to_bytes(resp);
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let actions = entry.tx.send_response(code, bytes, clock.now);
        self.server_actions(key, actions, clock);
        self.schedule(TimerRef::Server(key.to_string()));
    }

    fn server_actions(&mut self, key: &str, actions: Vec<TxAction>, clock: &Clock) {
        for a in actions {
            match a {
                TxAction::Send(bytes) => {
                    if let Some(e) = self.servers.get(key) {
                        let peer = e.peer;
                        self.send(peer, bytes);
                    }
                }
                TxAction::Timeout => self.server_timeout(key, clock),
                TxAction::Terminated => {
                    self.servers.remove(key);
                }
                TxAction::NeedAck => {}
            }
        }
    }

    /// No ACK came for a final response to an INVITE (timer H / L).
    fn server_timeout(&mut self, key: &str, clock: &Clock) {
        let found = self
            .calls
            .iter()
            .find(|(_, c)| c.awaiting_ack.iter().any(|(_, k)| k == key))
            .map(|(k, _)| *k);
        if let Some(call_key) = found {
            // §13.3.1.4: the 2xx was never acknowledged: end the session.
            tracing::info!("sip: caller never acknowledged the answer; ending call");
            self.hangup(call_key, true, clock);
        }
    }

    fn schedule(&mut self, r: TimerRef) {
        let at = match &r {
            TimerRef::Server(k) => self.servers.get(k).and_then(|e| e.tx.next_deadline()),
            TimerRef::Client(k) => self.clients.get(k).and_then(|e| e.tx.next_deadline()),
            TimerRef::NoAnswer(k) => self.calls.get(k).and_then(|c| c.no_answer_at),
        };
        if let Some(at) = at {
            self.timers.push(Reverse((at, r)));
        }
    }

    /// Fire due timers.
    pub fn poll(&mut self, clock: &Clock) {
        let actions = self.guard.poll(clock.now);
        self.guard_actions(actions, clock);
        for _ in 0..100_000 {
            let due = matches!(self.timers.peek(), Some(Reverse((t, _))) if *t <= clock.now);
            if !due {
                break;
            }
            let Some(Reverse((_, r))) = self.timers.pop() else {
                break;
            };
            match r {
                TimerRef::Server(k) => {
                    let Some(e) = self.servers.get_mut(&k) else {
                        continue;
                    };
                    if e.tx.next_deadline().none_or_after(clock.now) {
                        continue;
                    }
                    let actions = e.tx.poll(clock.now);
                    self.server_actions(&k, actions, clock);
                    self.schedule(TimerRef::Server(k));
                }
                TimerRef::Client(k) => {
                    let Some(e) = self.clients.get_mut(&k) else {
                        continue;
                    };
                    if e.tx.next_deadline().none_or_after(clock.now) {
                        continue;
                    }
                    let actions = e.tx.poll(clock.now);
                    self.client_actions(&k, actions, None, clock);
                    self.schedule(TimerRef::Client(k));
                }
                TimerRef::NoAnswer(call_key) => {
                    let due = self
                        .calls
                        .get(&call_key)
                        .and_then(|c| c.no_answer_at)
                        .is_some_and(|t| t <= clock.now);
                    if due {
                        self.no_answer(call_key, clock);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------ registrar

    fn challenge(&mut self, req: &Request, key: &str, proxy: bool, ch: Challenge, clock: &Clock) {
        if ch.replayed {
            self.counters.auth_replays.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(source = %ch.source, method = %req.method, "sip: digest nonce count used before (replay?), challenged again");
        }
        let code = if proxy { 407 } else { 401 };
        let mut r = sip::response(req, code, Some(&random_token()), &self.cfg.user_agent);
        for c in self.nonces.challenges(
            &self.cfg.registrar.realm,
            &self.cfg.digest_algorithms,
            ch.source,
            clock.unix,
            ch.stale,
        ) {
            r.headers.push(if proxy {
                Header::ProxyAuthenticate(c.into())
            } else {
                Header::WwwAuthenticate(c.into())
            });
        }
        self.respond(key, r, clock);
    }

    /// A wrong password (or user name): count it, answer 403.
    fn auth_failed(
        &mut self,
        req: &Request,
        key: &str,
        source: IpAddr,
        (tried, account): (String, Option<String>),
        clock: &Clock,
    ) {
        self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        let actions = self
            .guard
            .failure(source, &tried, account.as_deref(), clock.now);
        self.guard_actions(actions, clock);
        self.forbidden(req, key, clock);
    }

    fn forbidden(&mut self, req: &Request, key: &str, clock: &Clock) {
        let r = sip::response(req, 403, Some(&random_token()), &self.cfg.user_agent);
        self.respond(key, r, clock);
    }

    /// Whether a request for `account` from `peer` may be checked: `Some(true)` yes,
    /// `Some(false)` answer 403 unchecked (locked account), `None` drop (banned).
    fn admit(&mut self, account: &str, peer: Peer, clock: &Clock) -> Option<bool> {
        let ip = peer.addr.ip().to_canonical();
        let registered_here = self
            .live_bindings(account, clock.unix)
            .iter()
            .any(|b| b.source.ip().to_canonical() == ip);
        match self.guard.admit(ip, account, registered_here, clock.now) {
            Admission::Allow => Some(true),
            Admission::AccountLocked => Some(false),
            Admission::SourceBanned => None,
        }
    }

    fn guard_actions(&mut self, actions: Vec<GuardAction>, clock: &Clock) {
        for a in actions {
            match a {
                GuardAction::Ban {
                    source,
                    duration,
                    failures,
                } => {
                    self.counters.sources_banned.fetch_add(1, Ordering::Relaxed);
                    self.out.push(Output::Ban(SourceBan {
                        source,
                        until_unix: clock.unix + duration.as_secs() as i64,
                        failures,
                    }));
                }
                GuardAction::Locked { account } => {
                    self.counters
                        .accounts_locked
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(account, "sip: account locked");
                }
                GuardAction::Alarm(burst) => {
                    tracing::warn!(
                        alarm = "security.auth_failures",
                        failures = burst.failures,
                        sources = burst.sources,
                        sample = ?burst.sample,
                        accounts = ?burst.accounts,
                        "sip: password guessing detected; raising the alarm (once for this burst)"
                    );
                    self.out.push(Output::SecurityEvent(burst));
                }
                GuardAction::Log(n) => log_notice(n),
            }
        }
    }

    fn authenticate(
        &mut self,
        req: &Request,
        user: &str,
        proxy: bool,
        source: IpAddr,
        clock: &Clock,
    ) -> AuthOutcome {
        let value = req.headers.iter().find_map(|h| match (h, proxy) {
            (Header::Authorization(v), false) => Some(v.value().to_string()),
            (Header::ProxyAuthorization(v), true) => Some(v.value().to_string()),
            _ => None,
        });
        let backend = self.backend.clone();
        registrar::authenticate(
            value.as_deref(),
            &req.method.to_string(),
            Some(user),
            &self.cfg.registrar.realm,
            &mut self.nonces,
            |e| backend.user(e),
            source,
            clock.unix,
        )
    }

    fn on_register(&mut self, req: &Request, key: &str, peer: Peer, clock: &Clock) {
        let to = message::to(&req.headers).unwrap_or_default();
        let Some(aor) = message::uri_user(message::uri_of(to)).map(str::to_string) else {
            let r = sip::response(req, 400, Some(&random_token()), &self.cfg.user_agent);
            return self.respond(key, r, clock);
        };
        let ip = peer.addr.ip().to_canonical();
        match self.admit(&aor, peer, clock) {
            Some(true) => {}
            Some(false) => return self.forbidden(req, key, clock),
            None => return,
        }
        match self.authenticate(req, &aor, false, ip, clock) {
            AuthOutcome::Challenge { stale, replayed } => {
                let ch = Challenge {
                    source: ip,
                    stale,
                    replayed,
                };
                return self.challenge(req, key, false, ch, clock);
            }
            AuthOutcome::Forbidden { tried, account } => {
                return self.auth_failed(req, key, ip, (tried, account), clock)
            }
            AuthOutcome::Ok(_) => self.guard.success(ip),
        }
        let existing = self.backend.bindings(&aor);
        let outcome = registrar::process_register(
            req,
            &aor,
            peer.addr,
            peer.transport,
            &existing,
            &self.cfg.registrar,
            clock.unix,
        );
        let to_tag = random_token();
        match outcome {
            RegisterOutcome::IntervalTooBrief(min) => {
                let mut r = sip::response(req, 423, Some(&to_tag), &self.cfg.user_agent);
                r.headers.push(Header::MinExpires(min.into()));
                self.respond(key, r, clock);
            }
            RegisterOutcome::BadRequest(why) => {
                tracing::info!(aor, why, "sip: bad REGISTER");
                let r = sip::response(req, 400, Some(&to_tag), &self.cfg.user_agent);
                self.respond(key, r, clock);
            }
            RegisterOutcome::Update {
                save,
                remove,
                current,
            } => {
                let mut r = sip::response(req, 200, Some(&to_tag), &self.cfg.user_agent);
                for c in registrar::contact_values(&current, clock.unix) {
                    r.headers.push(Header::Contact(c.into()));
                }
                if save.is_empty() && remove.is_empty() {
                    return self.respond(key, r, clock);
                }
                let token = self.next_id;
                self.next_id += 1;
                self.pending.insert(
                    token,
                    PendingRegister {
                        server_key: key.to_string(),
                        response: r,
                        registered: !save.is_empty(),
                        unregistered: !remove.is_empty(),
                    },
                );
                tracing::info!(aor, source = %peer.addr, saved = save.len(), removed = remove.len(), "sip: registration");
                self.out.push(Output::WriteBindings {
                    token,
                    save,
                    remove: remove.into_iter().map(|c| (aor.clone(), c)).collect(),
                });
            }
        }
    }

    /// The backend finished the writes of a REGISTER: answer it.
    pub fn on_writes_done(&mut self, token: u64, result: Result<(), BackendError>, clock: &Clock) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        match result {
            Ok(()) => {
                if p.registered {
                    self.counters.registrations.fetch_add(1, Ordering::Relaxed);
                }
                if p.unregistered {
                    self.counters
                        .unregistrations
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.respond(&p.server_key, p.response, clock);
            }
            Err(e) => {
                tracing::warn!(error = %e, "sip: binding write failed");
                let mut r = p.response;
                r.status_code = sip::status(500);
                r.headers.retain(|h| !matches!(h, Header::Contact(_)));
                r.headers.push(Header::RetryAfter("5".into()));
                self.respond(&p.server_key, r, clock);
            }
        }
    }

    // ----------------------------------------------------------------- calls

    fn live_bindings(&self, aor: &str, unix: i64) -> Vec<Binding> {
        let mut b: Vec<Binding> = self
            .backend
            .bindings(aor)
            .into_iter()
            .filter(|b| b.expires_at_unix > unix)
            .collect();
        b.sort_by_key(|b| Reverse(b.expires_at_unix));
        b
    }

    /// CDR for a call that never reached the callee.
    fn early_cdr(
        &mut self,
        req: &Request,
        caller: &str,
        callee: &str,
        d: Disposition,
        clock: &Clock,
    ) {
        self.counters.call_failures.fetch_add(1, Ordering::Relaxed);
        let record = CallRecord {
            id: uuid::Uuid::new_v4(),
            call_id: message::call_id(&req.headers)
                .unwrap_or_default()
                .to_string(),
            start: clock.wall,
            answer: None,
            end: clock.wall,
            caller: caller.to_string(),
            callee: callee.to_string(),
            disposition: d,
            recording_id: None,
        };
        self.out.push(Output::CallEnded {
            record,
            media: None,
        });
    }

    fn on_invite(&mut self, req: Request, key: String, peer: Peer, clock: &Clock) {
        let h = &req.headers;
        let to = message::to(h).unwrap_or_default().to_string();
        if message::tag(&to).is_some() {
            return self.on_reinvite(&req, &key, clock);
        }
        let trying = sip::response(&req, 100, None, &self.cfg.user_agent);
        self.respond(&key, trying, clock);
        let from = message::from(h).unwrap_or_default().to_string();
        let Some(caller) = message::uri_user(message::uri_of(&from)).map(str::to_string) else {
            let r = sip::response(&req, 400, Some(&random_token()), &self.cfg.user_agent);
            return self.respond(&key, r, clock);
        };
        let ip = peer.addr.ip().to_canonical();
        match self.admit(&caller, peer, clock) {
            Some(true) => {}
            Some(false) => return self.forbidden(&req, &key, clock),
            None => return,
        }
        let caller_user = match self.authenticate(&req, &caller, true, ip, clock) {
            AuthOutcome::Challenge { stale, replayed } => {
                let ch = Challenge {
                    source: ip,
                    stale,
                    replayed,
                };
                return self.challenge(&req, &key, true, ch, clock);
            }
            AuthOutcome::Forbidden { tried, account } => {
                return self.auth_failed(&req, &key, ip, (tried, account), clock)
            }
            AuthOutcome::Ok(u) => {
                self.guard.success(ip);
                u
            }
        };
        let a_tag = random_token();
        let reject = |core: &mut Core<B>, code: u16| {
            let r = sip::response(&req, code, Some(&a_tag), &core.cfg.user_agent);
            core.respond(&key, r, clock);
        };
        if self.live_bindings(&caller, clock.unix).is_empty() {
            tracing::info!(caller, "sip: INVITE from an unregistered user refused");
            return reject(self, 403);
        }
        self.counters.call_attempts.fetch_add(1, Ordering::Relaxed);
        let callee = message::uri_user(&req.uri.to_string())
            .or_else(|| message::uri_user(message::uri_of(&to)))
            .unwrap_or_default()
            .to_string();
        if self.backend.user(&callee).is_none() {
            tracing::info!(caller, callee, "sip: call to unknown extension");
            reject(self, 404);
            return self.early_cdr(&req, &caller, &callee, Disposition::Failed, clock);
        }
        let Some(binding) = self.live_bindings(&callee, clock.unix).into_iter().next() else {
            tracing::info!(caller, callee, "sip: callee not registered");
            reject(self, 480);
            return self.early_cdr(&req, &caller, &callee, Disposition::Failed, clock);
        };
        let offer = match Sdp::parse(&req.body).and_then(|s| s.audio().map(|a| (s, a))) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(caller, callee, error = %e, "sip: unusable SDP offer");
                reject(self, 488);
                return self.early_cdr(&req, &caller, &callee, Disposition::Failed, clock);
            }
        };
        let a_call_id = message::call_id(h).unwrap_or_default().to_string();
        let media = match self.relay.allocate(&a_call_id) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "sip: no media ports for a call");
                reject(self, 503);
                return self.early_cdr(&req, &caller, &callee, Disposition::Failed, clock);
            }
        };
        let sdp_to_b = match offer.0.rewrite(media.local_b()) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(caller, callee, error = %e, "sip: no common codec");
                reject(self, 488);
                self.out.push(Output::CallEnded {
                    record: CallRecord {
                        id: uuid::Uuid::new_v4(),
                        call_id: a_call_id,
                        start: clock.wall,
                        answer: None,
                        end: clock.wall,
                        caller,
                        callee,
                        disposition: Disposition::Failed,
                        recording_id: None,
                    },
                    media: Some(media),
                });
                self.counters.call_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        media.set_remote_a(offer.1.rtp);

        // The B leg (RFC 3261 §8.1.1: a new request from us as UAC).
        let b_peer = Peer {
            addr: binding.source,
            transport: binding.transport,
        };
        let host = self.cfg.advertised.ip();
        let display = caller_user
            .display_name
            .clone()
            .map(|d| format!("\"{}\" ", d.replace(['"', '\\'], "")))
            .or_else(|| {
                message::display_name(&from).map(|d| format!("\"{}\" ", d.replace(['"', '\\'], "")))
            })
            .unwrap_or_default();
        let mut b_dialog = Dialog {
            call_id: format!("{}@tandem", random_token()),
            local_tag: random_token(),
            remote_tag: None,
            local_uri: format!("{display}<sip:{caller}@{host}>"),
            remote_uri: format!("<sip:{callee}@{host}>"),
            remote_target: binding.contact.clone(),
            local_cseq: 0,
            remote_cseq: None,
            state: DialogState::Early,
        };
        let branch = new_branch();
        let contact = self.contact(&caller, b_peer.transport);
        let mut b_invite = b_dialog.request(
            Method::Invite,
            None,
            &branch,
            &self.via_host(),
            b_peer.transport,
            &contact,
            &self.cfg.user_agent,
        );
        b_invite.headers.push(Header::Allow(sip::ALLOW.into()));
        b_invite
            .headers
            .push(Header::ContentType("application/sdp".into()));
        b_invite.body = sdp_to_b.clone().into_bytes();
        let b_key = client_key(&branch, Method::Invite);
        let call_key = self.next_id;
        self.next_id += 1;
        let a_dialog = Dialog {
            call_id: a_call_id.clone(),
            local_tag: a_tag.clone(),
            remote_tag: message::tag(&from).map(str::to_string),
            local_uri: strip_tag(&to),
            remote_uri: strip_tag(&from),
            remote_target: message::contacts(h)
                .first()
                .map(|c| message::uri_of(c).to_string())
                .unwrap_or_else(|| message::uri_of(&from).to_string()),
            local_cseq: 0,
            remote_cseq: message::cseq(h).map(|c| c.0),
            state: DialogState::Early,
        };
        let id = uuid::Uuid::new_v4();
        tracing::info!(%id, caller, callee, to = %b_peer.addr, "sip: call routed");
        self.counters.active_calls.fetch_add(1, Ordering::Relaxed);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                CallStatus {
                    id,
                    caller: caller.clone(),
                    callee: callee.clone(),
                    state: "ringing".into(),
                    since: clock.wall,
                },
            );
        self.by_a.insert(a_call_id, call_key);
        self.by_b.insert(b_dialog.call_id.clone(), call_key);
        let bytes = sip::to_bytes(b_invite.clone());
        let (tx, actions) = ClientTx::start(
            TxKind::Invite,
            b_peer.transport.unreliable(),
            bytes,
            self.cfg.timers,
            clock.now,
        );
        self.clients.insert(
            b_key.clone(),
            ClientEntry {
                tx,
                peer: b_peer,
                request: b_invite.clone(),
                owner: Owner::BInvite(call_key),
            },
        );
        self.calls.insert(
            call_key,
            Call {
                id,
                caller,
                callee,
                start: clock.wall,
                answer: None,
                state: CallState::Routing,
                a_peer: peer,
                a_invite: req,
                a_server_key: key,
                a_dialog,
                b_peer,
                b_client_key: b_key.clone(),
                b_invite,
                b_dialog,
                b_ack: None,
                cancel_pending: false,
                media: Some(media),
                sdp_to_a: None,
                sdp_to_b,
                no_answer_at: Some(clock.now + self.cfg.no_answer_timeout),
                awaiting_ack: Vec::new(),
            },
        );
        self.client_actions(&b_key, actions, None, clock);
        self.schedule(TimerRef::Client(b_key));
        self.schedule(TimerRef::NoAnswer(call_key));
    }

    /// A re-INVITE inside a call: media stays on the relay, so answer with the SDP
    /// that side already has (RFC 3264 §8: an unchanged answer is valid).
    fn on_reinvite(&mut self, req: &Request, key: &str, clock: &Clock) {
        let Some((call_key, from_a)) = self.find_call(req) else {
            let r = sip::response(req, 481, None, &self.cfg.user_agent);
            return self.respond(key, r, clock);
        };
        let cseq = message::cseq(&req.headers).map(|c| c.0).unwrap_or_default();
        let (sdp, contact_user, transport) = {
            let call = &self.calls[&call_key];
            if from_a {
                (
                    call.sdp_to_a.clone(),
                    call.callee.clone(),
                    call.a_peer.transport,
                )
            } else {
                (
                    Some(call.sdp_to_b.clone()),
                    call.caller.clone(),
                    call.b_peer.transport,
                )
            }
        };
        let Some(sdp) = sdp.filter(|_| self.calls[&call_key].state == CallState::Answered) else {
            let r = sip::response(req, 491, None, &self.cfg.user_agent);
            return self.respond(key, r, clock);
        };
        let mut r = sip::response(req, 200, None, &self.cfg.user_agent);
        r.headers.push(Header::Contact(
            format!("<{}>", self.contact(&contact_user, transport)).into(),
        ));
        r.headers
            .push(Header::ContentType("application/sdp".into()));
        r.body = sdp.into_bytes();
        if let Some(call) = self.calls.get_mut(&call_key) {
            call.awaiting_ack.push((cseq, key.to_string()));
        }
        self.respond(key, r, clock);
    }

    /// A response to A's INVITE from the callee's side.
    fn a_response(&self, call: &Call, code: u16, body: Option<&str>) -> Response {
        let mut r = sip::response(
            &call.a_invite,
            code,
            Some(&call.a_dialog.local_tag),
            &self.cfg.user_agent,
        );
        if code > 100 && code < 300 {
            r.headers.push(Header::Contact(
                format!("<{}>", self.contact(&call.callee, call.a_peer.transport)).into(),
            ));
        }
        if let Some(b) = body {
            r.headers
                .push(Header::ContentType("application/sdp".into()));
            r.body = b.as_bytes().to_vec();
        }
        r
    }

    fn client_actions(
        &mut self,
        key: &str,
        actions: Vec<TxAction>,
        resp: Option<&Response>,
        clock: &Clock,
    ) {
        for a in actions {
            match a {
                TxAction::Send(bytes) => {
                    if let Some(e) = self.clients.get(key) {
                        let peer = e.peer;
                        self.send(peer, bytes);
                    }
                }
                TxAction::NeedAck => {
                    let Some(resp) = resp else { continue };
                    let Some(e) = self.clients.get_mut(key) else {
                        continue;
                    };
                    let ack = ack_for_non2xx(&e.request, resp);
                    let acts = e.tx.ack_built(sip::to_bytes(ack));
                    self.client_actions(key, acts, None, clock);
                }
                TxAction::Timeout => {
                    if let Some(Owner::BInvite(call_key)) = self.clients.get(key).map(|e| e.owner) {
                        self.b_failed(call_key, 408, clock);
                    }
                }
                TxAction::Terminated => {
                    self.clients.remove(key);
                }
            }
        }
    }

    fn on_response(&mut self, resp: Response, _peer: Peer, clock: &Clock) {
        let h = &resp.headers;
        let via = message::top_via(h).unwrap_or_default();
        let branch = message::param(via, "branch").unwrap_or_default();
        let Some((_, method)) = message::cseq(h) else {
            return;
        };
        let key = client_key(branch, method);
        let code = sip::code(&resp);
        let Some(entry) = self.clients.get_mut(&key) else {
            // A 2xx retransmission after the INVITE transaction ended: ACK again (§13.2.2.4).
            if method == Method::Invite && (200..300).contains(&code) {
                let call_id = message::call_id(h).unwrap_or_default();
                if let Some(call) = self.by_b.get(call_id).and_then(|k| self.calls.get(k)) {
                    if let Some(ack) = call.b_ack.clone() {
                        let peer = call.b_peer;
                        self.send(peer, ack);
                    }
                }
            }
            return;
        };
        let (pass, actions) = entry.tx.on_response(code, clock.now);
        let owner = entry.owner;
        let request = entry.request.clone();
        let peer = entry.peer;
        self.client_actions(&key, actions, Some(&resp), clock);
        self.schedule(TimerRef::Client(key.clone()));
        if !pass {
            return;
        }
        if let Owner::BInvite(call_key) = owner {
            if self.calls.contains_key(&call_key) {
                self.on_b_response(call_key, resp, clock);
            } else if (200..300).contains(&code) {
                // The call ended (cancelled, timed out) but the callee answered: ACK and BYE.
                self.ack_and_bye_orphan(&request, &resp, peer, clock);
            }
        }
    }

    fn ack_and_bye_orphan(&mut self, invite: &Request, resp: &Response, peer: Peer, clock: &Clock) {
        let h = &resp.headers;
        let mut d = Dialog {
            call_id: message::call_id(h).unwrap_or_default().to_string(),
            local_tag: message::tag(message::from(h).unwrap_or_default())
                .unwrap_or_default()
                .to_string(),
            remote_tag: message::tag(message::to(h).unwrap_or_default()).map(str::to_string),
            local_uri: strip_tag(message::from(h).unwrap_or_default()),
            remote_uri: strip_tag(message::to(h).unwrap_or_default()),
            remote_target: message::contacts(h)
                .first()
                .map(|c| message::uri_of(c).to_string())
                .unwrap_or_else(|| invite.uri.to_string()),
            local_cseq: message::cseq(h).map(|c| c.0).unwrap_or(1),
            remote_cseq: None,
            state: DialogState::Confirmed,
        };
        let contact = self.contact("tandem", peer.transport);
        let ack = d.request(
            Method::Ack,
            Some(d.local_cseq),
            &new_branch(),
            &self.via_host(),
            peer.transport,
            &contact,
            &self.cfg.user_agent,
        );
        self.send(peer, sip::to_bytes(ack));
        self.send_request(&mut d, Method::Bye, peer, clock);
    }

    /// Send an in-dialog request (BYE, CANCEL-free) through a new client transaction.
    fn send_request(&mut self, d: &mut Dialog, method: Method, peer: Peer, clock: &Clock) {
        let branch = new_branch();
        let contact = self.contact("tandem", peer.transport);
        let req = d.request(
            method,
            None,
            &branch,
            &self.via_host(),
            peer.transport,
            &contact,
            &self.cfg.user_agent,
        );
        self.start_client(req, &branch, peer, Owner::Other, clock);
    }

    fn start_client(
        &mut self,
        req: Request,
        branch: &str,
        peer: Peer,
        owner: Owner,
        clock: &Clock,
    ) {
        let key = client_key(branch, req.method);
        let kind = if req.method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        let (tx, actions) = ClientTx::start(
            kind,
            peer.transport.unreliable(),
            sip::to_bytes(req.clone()),
            self.cfg.timers,
            clock.now,
        );
        self.clients.insert(
            key.clone(),
            ClientEntry {
                tx,
                peer,
                request: req,
                owner,
            },
        );
        self.client_actions(&key, actions, None, clock);
        self.schedule(TimerRef::Client(key));
    }

    /// Rewrite B's SDP for A and program the relay with B's address and codec.
    fn take_b_sdp(&mut self, call_key: u64, body: &[u8]) -> Option<String> {
        let call = self.calls.get_mut(&call_key)?;
        let media = call.media.as_ref()?;
        let sdp = Sdp::parse(body).ok()?;
        let audio = sdp.audio().ok()?;
        let pt = audio.g711()?;
        let rewritten = sdp.rewrite(media.local_a()).ok()?;
        media.set_remote_b(audio.rtp);
        if let Some(codec) = Codec::from_payload_type(pt) {
            media.set_codec(codec, pt);
        }
        call.sdp_to_a = Some(rewritten.clone());
        Some(rewritten)
    }

    fn on_b_response(&mut self, call_key: u64, resp: Response, clock: &Clock) {
        let code = sip::code(&resp);
        let to = message::to(&resp.headers).unwrap_or_default().to_string();
        if code == 100 {
            return;
        }
        if code < 200 {
            let body = if resp.body.is_empty() {
                None
            } else {
                self.take_b_sdp(call_key, &resp.body)
            };
            let Some(call) = self.calls.get_mut(&call_key) else {
                return;
            };
            if call.b_dialog.remote_tag.is_none() {
                call.b_dialog.remote_tag = message::tag(&to).map(str::to_string);
            }
            call.state = CallState::Early;
            let cancel = std::mem::take(&mut call.cancel_pending);
            if cancel {
                self.cancel_b(call_key, clock);
                return;
            }
            if code == 180 || code == 183 {
                let call = &self.calls[&call_key];
                let r = self.a_response(call, code, body.as_deref());
                let key = call.a_server_key.clone();
                self.respond(&key, r, clock);
            }
            return;
        }
        if code < 300 {
            return self.on_b_answer(call_key, resp, clock);
        }
        self.b_failed(call_key, code, clock);
    }

    fn on_b_answer(&mut self, call_key: u64, resp: Response, clock: &Clock) {
        let to = message::to(&resp.headers).unwrap_or_default().to_string();
        let remote_target = message::contacts(&resp.headers)
            .first()
            .map(|c| message::uri_of(c).to_string());
        let body = if resp.body.is_empty() {
            self.calls.get(&call_key).and_then(|c| c.sdp_to_a.clone())
        } else {
            self.take_b_sdp(call_key, &resp.body)
        };
        let via_host = self.via_host();
        let ua = self.cfg.user_agent.clone();
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        call.b_dialog.remote_tag = message::tag(&to).map(str::to_string);
        if let Some(t) = remote_target {
            call.b_dialog.remote_target = t;
        }
        call.b_dialog.state = DialogState::Confirmed;
        let invite_cseq = message::cseq(&call.b_invite.headers)
            .map(|c| c.0)
            .unwrap_or(1);
        let transport = call.b_peer.transport;
        let contact = match transport {
            Transport::Udp => format!("sip:{}@{}", call.caller, self.cfg.advertised),
            Transport::Tcp => format!("sip:{}@{};transport=tcp", call.caller, self.cfg.advertised),
        };
        let ack = call.b_dialog.request(
            Method::Ack,
            Some(invite_cseq),
            &new_branch(),
            &via_host,
            transport,
            &contact,
            &ua,
        );
        let ack = sip::to_bytes(ack);
        call.b_ack = Some(ack.clone());
        let b_peer = call.b_peer;
        self.send(b_peer, ack);
        let Some(body) = body else {
            // §13.2.1: an answer without SDP to an offer is a protocol error.
            tracing::warn!("sip: callee answered without SDP; ending call");
            return self.b_failed_after_answer(call_key, clock);
        };
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        call.state = CallState::Answered;
        call.answer = Some(clock.wall);
        call.no_answer_at = None;
        call.a_dialog.state = DialogState::Confirmed;
        let a_cseq = message::cseq(&call.a_invite.headers)
            .map(|c| c.0)
            .unwrap_or_default();
        call.awaiting_ack.push((a_cseq, call.a_server_key.clone()));
        if let Some(m) = &call.media {
            if let Err(e) = m.start_recording(&call.id.to_string()) {
                tracing::warn!(id = %call.id, error = %e, "sip: recording could not start");
            }
        }
        let id = call.id;
        tracing::info!(%id, caller = %call.caller, callee = %call.callee, "sip: call answered");
        if let Some(s) = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            s.state = "answered".into();
            s.since = clock.wall;
        }
        self.counters.call_answers.fetch_add(1, Ordering::Relaxed);
        let call = &self.calls[&call_key];
        let r = self.a_response(call, 200, Some(&body));
        let key = call.a_server_key.clone();
        self.respond(&key, r, clock);
    }

    fn b_failed_after_answer(&mut self, call_key: u64, clock: &Clock) {
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let mut d = call.b_dialog.clone();
        let peer = call.b_peer;
        self.send_request(&mut d, Method::Bye, peer, clock);
        self.b_failed(call_key, 500, clock);
    }

    /// The callee's leg failed before answer (final error, timeout, no SDP).
    fn b_failed(&mut self, call_key: u64, code: u16, clock: &Clock) {
        let Some(call) = self.calls.get(&call_key) else {
            return;
        };
        if call.state == CallState::Answered {
            return;
        }
        let (disposition, to_a) = match code {
            486 | 600 => (Disposition::Busy, 486),
            408 => (Disposition::Failed, 480),
            480 | 603 => (Disposition::NoAnswer, code),
            401 | 407 => (Disposition::Failed, 503),
            c if c >= 300 => (Disposition::Failed, c),
            _ => (Disposition::Failed, 500),
        };
        let r = self.a_response(call, to_a, None);
        let key = call.a_server_key.clone();
        self.respond(&key, r, clock);
        self.end_call(call_key, disposition, clock);
    }

    /// Ringing too long: 480 to A, CANCEL to B, CDR no_answer.
    fn no_answer(&mut self, call_key: u64, clock: &Clock) {
        let Some(call) = self.calls.get(&call_key) else {
            return;
        };
        if call.state == CallState::Answered {
            return;
        }
        tracing::info!(id = %call.id, "sip: no answer");
        let r = self.a_response(call, 480, None);
        let key = call.a_server_key.clone();
        self.respond(&key, r, clock);
        self.cancel_b(call_key, clock);
        self.end_call(call_key, Disposition::NoAnswer, clock);
    }

    /// CANCEL our INVITE to B (RFC 3261 §9.1), or remember to once it rings.
    fn cancel_b(&mut self, call_key: u64, clock: &Clock) {
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let provisional = self
            .clients
            .get(&call.b_client_key)
            .is_some_and(|e| e.tx.provisional_seen());
        if !provisional {
            call.cancel_pending = true;
            return;
        }
        let invite = &call.b_invite;
        let mut headers = Headers::default();
        for h in invite.headers.iter() {
            match h {
                Header::Via(_)
                | Header::From(_)
                | Header::To(_)
                | Header::CallId(_)
                | Header::MaxForwards(_) => headers.push(h.clone()),
                _ => {}
            }
        }
        let n = message::cseq(&invite.headers).map(|c| c.0).unwrap_or(1);
        headers.push(Header::CSeq(format!("{n} CANCEL").into()));
        let cancel = Request {
            method: Method::Cancel,
            uri: invite.uri.clone(),
            version: Version::V2,
            headers,
            body: Vec::new(),
        };
        let via = message::top_via(&invite.headers).unwrap_or_default();
        let branch = message::param(via, "branch")
            .unwrap_or_default()
            .to_string();
        let peer = call.b_peer;
        self.start_client(cancel, &branch, peer, Owner::Other, clock);
    }

    fn on_cancel(&mut self, req: &Request, key: &str, branch: &str, via: &str, clock: &Clock) {
        let invite_key = server_key(branch, sent_by(via), Method::Invite);
        let final_sent = self.servers.get(&invite_key).map(|e| e.tx.final_sent());
        // §9.2: 481 when no transaction matches, else 200 for the CANCEL itself.
        let code = if final_sent.is_some() { 200 } else { 481 };
        let r = sip::response(req, code, None, &self.cfg.user_agent);
        self.respond(key, r, clock);
        if final_sent != Some(false) {
            return;
        }
        let call_key = self
            .calls
            .iter()
            .find(|(_, c)| c.a_server_key == invite_key)
            .map(|(k, _)| *k);
        let Some(call_key) = call_key else {
            // Not routed yet (challenge pending): just terminate the INVITE.
            return;
        };
        let call = &self.calls[&call_key];
        let r = self.a_response(call, 487, None);
        self.respond(&invite_key, r, clock);
        self.cancel_b(call_key, clock);
        self.end_call(call_key, Disposition::Cancelled, clock);
    }

    fn on_bye(&mut self, req: &Request, key: &str, clock: &Clock) {
        let Some((call_key, from_a)) = self.find_call(req) else {
            let r = sip::response(req, 481, None, &self.cfg.user_agent);
            return self.respond(key, r, clock);
        };
        let r = sip::response(req, 200, None, &self.cfg.user_agent);
        self.respond(key, r, clock);
        let answered = self.calls[&call_key].state == CallState::Answered;
        if answered {
            return self.hangup(call_key, from_a, clock);
        }
        if from_a {
            // BYE in an early dialog from the caller: like a CANCEL (§15).
            let call = &self.calls[&call_key];
            let r = self.a_response(call, 487, None);
            let invite_key = call.a_server_key.clone();
            self.respond(&invite_key, r, clock);
            self.cancel_b(call_key, clock);
            self.end_call(call_key, Disposition::Cancelled, clock);
        } else {
            self.b_failed(call_key, 480, clock);
        }
    }

    /// One side hung up an answered call: BYE the other, end the call.
    fn hangup(&mut self, call_key: u64, from_a: bool, clock: &Clock) {
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        tracing::info!(id = %call.id, by = if from_a { "caller" } else { "callee" }, "sip: hangup");
        let (mut d, peer) = if from_a {
            (call.b_dialog.clone(), call.b_peer)
        } else {
            (call.a_dialog.clone(), call.a_peer)
        };
        self.send_request(&mut d, Method::Bye, peer, clock);
        self.end_call(call_key, Disposition::Answered, clock);
    }

    fn end_call(&mut self, call_key: u64, disposition: Disposition, clock: &Clock) {
        let Some(mut call) = self.calls.remove(&call_key) else {
            return;
        };
        self.by_a.remove(&call.a_dialog.call_id);
        self.by_b.remove(&call.b_dialog.call_id);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&call.id);
        self.counters.active_calls.fetch_sub(1, Ordering::Relaxed);
        if !matches!(disposition, Disposition::Answered | Disposition::Cancelled) {
            self.counters.call_failures.fetch_add(1, Ordering::Relaxed);
        }
        let record = CallRecord {
            id: call.id,
            call_id: call.a_dialog.call_id.clone(),
            start: call.start,
            answer: call.answer,
            end: clock.wall,
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            disposition,
            recording_id: call.answer.map(|_| call.id.to_string()),
        };
        tracing::info!(id = %call.id, disposition = disposition.as_str(), billsec = record.billsec(), "sip: call ended");
        self.out.push(Output::CallEnded {
            record,
            media: call.media.take(),
        });
    }
}

/// ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same branch and
/// Request-URI as the INVITE, To from the response.
fn ack_for_non2xx(invite: &Request, resp: &Response) -> Request {
    let mut headers = Headers::default();
    if let Some(v) = invite.headers.iter().find(|h| matches!(h, Header::Via(_))) {
        headers.push(v.clone());
    }
    for h in invite.headers.iter() {
        if matches!(
            h,
            Header::From(_) | Header::CallId(_) | Header::MaxForwards(_)
        ) {
            headers.push(h.clone());
        }
    }
    if let Some(to) = message::to(&resp.headers) {
        headers.push(Header::To(to.to_string().into()));
    }
    let n = message::cseq(&invite.headers).map(|c| c.0).unwrap_or(1);
    headers.push(Header::CSeq(format!("{n} ACK").into()));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: Version::V2,
        headers,
        body: Vec::new(),
    }
}

trait DeadlineExt {
    fn none_or_after(self, now: Instant) -> bool;
}

impl DeadlineExt for Option<Instant> {
    fn none_or_after(self, now: Instant) -> bool {
        self.map_or(true, |t| t > now)
    }
}
