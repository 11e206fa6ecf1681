//! The peer server: accept loop, admission, and what a connection may send before
//! and after it has proved a certificate.
//!
//! ```text
//!  accept ──(error: back off 100 ms → 1 s, logged at most every 10 s)
//!    │
//!    ▼  unauthenticated pool (≤ 64: handshaking, or no certificate); full → the
//!    │  oldest connection still waiting for its request is dropped
//!  TLS handshake (≤ 10 s)
//!    ├─ verified client certificate ─▶ leaves the pool, takes one of ≤ 512
//!    │                                 authenticated slots (full → refused);
//!    │                                 any request, frames up to MAX_FRAME
//!    └─ no certificate ─▶ stays in the pool; within 10 s of accept it sends ONE
//!                         frame: length ≤ 64 KiB, body starting as a Join, else
//!                         refused on the length/kind, body never read; the Join is
//!                         answered and the connection closed
//! ```
//!
//! A frame's length is read first and checked against what the connection may send
//! before anything is allocated for its body.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{check_version, decode_frame_body, read_frame, write_frame};
use super::{RpcHandler, RpcRequest, RpcResponse};
use crate::types::{NodeId, NodeInfo};

/// Connections from cluster members (verified client certificate) open at once.
/// A member opens a few per peer (a Raft replication stream and its two spare
/// connections, the blob channel, a switchover) plus one per forwarded operation in
/// flight; 16 nodes with several streams each stay far below. A member beyond the
/// cap is refused (it reconnects, as after any network error).
pub const MAX_AUTHENTICATED_CONNECTIONS: usize = 512;

/// Connections without a verified certificate open at once: those still in their
/// TLS handshake and those of joining nodes. Kept apart from (and much smaller than)
/// [`MAX_AUTHENTICATED_CONNECTIONS`], so that a flood of them neither exhausts file
/// descriptors nor takes a member's slot. When the pool is full, a new connection
/// takes the place of the oldest one still waiting (in its handshake, or for its
/// request): an attacker holding connections open cannot lock members out, since a
/// member's handshake takes milliseconds and then leaves the pool.
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 64;

// The caps against a real cluster and the default open-file limit (1024).
const _: () = {
    // 16 nodes, each with a replication stream to this one (3 connections), a blob
    // channel, a switchover call and 8 forwarded operations in flight, fit.
    assert!(15 * (3 + 1 + 1 + 8) < MAX_AUTHENTICATED_CONNECTIONS);
    // Clients without a certificate get a small share...
    assert!(MAX_UNAUTHENTICATED_CONNECTIONS * 4 <= MAX_AUTHENTICATED_CONNECTIONS);
    // ...and both pools together leave a node a third of its descriptors.
    assert!(MAX_AUTHENTICATED_CONNECTIONS + MAX_UNAUTHENTICATED_CONNECTIONS <= 640);
};

/// Longest TLS handshake (any peer); a connection still handshaking is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection without a client certificate must have sent its whole join request
/// within this time of being accepted (handshake included), or it is dropped. A
/// joiner sends it right after the handshake.
pub const UNAUTHENTICATED_DEADLINE: Duration = Duration::from_secs(10);

/// Largest frame a connection without a client certificate may send: one join
/// request (secret, CSR PEM, node info: about 700 bytes in all, so a hundredfold
/// margin). A larger announced length is refused before its body is read.
pub const MAX_JOIN_FRAME: usize = 64 * 1024;

/// First pause after a failed `accept` (e.g. `EMFILE`, too many open files); it
/// doubles on each failure in a row up to [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between two `accept` attempts that fail.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Warnings an attacker can trigger (refused or dropped connections, failed
/// handshakes, failed accepts, wrong join tokens) are logged at most once per this period each, with the number
/// left out since the last one.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection without a client certificate is told when it sends anything
/// but a join.
const CERTIFICATE_REQUIRED: &str = "a client certificate signed by the cluster CA is required";

/// The peer server's limits; [`Default`] is what a node runs with (the constants
/// above). Tests shorten them.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    /// [`MAX_AUTHENTICATED_CONNECTIONS`].
    pub max_authenticated: usize,
    /// [`MAX_UNAUTHENTICATED_CONNECTIONS`].
    pub max_unauthenticated: usize,
    /// [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// [`UNAUTHENTICATED_DEADLINE`].
    pub unauthenticated_deadline: Duration,
    /// [`MAX_JOIN_FRAME`].
    pub max_join_frame: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_authenticated: MAX_AUTHENTICATED_CONNECTIONS,
            max_unauthenticated: MAX_UNAUTHENTICATED_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            unauthenticated_deadline: UNAUTHENTICATED_DEADLINE,
            max_join_frame: MAX_JOIN_FRAME,
        }
    }
}

/// Accept peer connections for as long as the task runs (a failing `accept` is
/// retried after a back-off), with the default [`PeerLimits`].
pub async fn serve<H: RpcHandler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
) {
    serve_with(listener, tls, handler, PeerLimits::default()).await
}

/// [`serve`] with the given limits.
pub async fn serve_with<H: RpcHandler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
    limits: PeerLimits,
) {
    let acceptor = TlsAcceptor::from(tls);
    let gate = Arc::new(Gate::new(&limits));
    let limits = Arc::new(limits);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => {
                backoff.reset();
                c
            }
            // The connection was gone before it was accepted: nothing to wait for.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let pause = backoff.next_pause();
                if let Some(left_out) = gate.warn_accept.allow() {
                    tracing::warn!(error = %e, retry_in = ?pause, left_out, "peer listener accept failed (file descriptors exhausted? raise LimitNOFILE)");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handler, gate, limits) = (
            acceptor.clone(),
            handler.clone(),
            gate.clone(),
            limits.clone(),
        );
        tokio::spawn(async move {
            connection(tcp, remote, acceptor, handler, gate, &limits).await;
        });
    }
}

/// Errors of `accept` that concern one connection only (not the listener).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection, from accept to close.
async fn connection<H: RpcHandler>(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    gate: Arc<Gate>,
    limits: &PeerLimits,
) {
    let deadline = tokio::time::Instant::now() + limits.unauthenticated_deadline;
    let Some(mut slot) = Gate::enter(&gate) else {
        if let Some(left_out) = gate.warn_full.allow() {
            tracing::warn!(%remote, left_out, max = limits.max_unauthenticated, "peer refused: too many connections without a client certificate");
        }
        return;
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
        () = slot.evicted() => {
            evicted(&gate, remote, limits);
            return;
        }
    };
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Some(left_out) = gate.warn_handshake.allow() {
                tracing::warn!(%remote, error = %e, left_out, "peer refused: TLS handshake failed (certificate not signed by this cluster's CA?)");
            }
            return;
        }
        Err(_) => {
            if let Some(left_out) = gate.warn_handshake.allow() {
                tracing::warn!(%remote, left_out, "peer refused: TLS handshake timed out");
            }
            return;
        }
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(crate::tls::peer_node_id);
    match peer {
        Some(id) => {
            drop(slot);
            let Ok(_permit) = gate.authenticated.clone().try_acquire_owned() else {
                if let Some(left_out) = gate.warn_members.allow() {
                    tracing::warn!(%remote, peer = id, left_out, max = limits.max_authenticated, "peer refused: too many connections from members");
                }
                return;
            };
            authenticated(stream, remote, id, &*handler).await;
        }
        None => unauthenticated(stream, remote, &*handler, slot, deadline, &gate, limits).await,
    }
}

fn evicted(gate: &Gate, remote: std::net::SocketAddr, limits: &PeerLimits) {
    if let Some(left_out) = gate.warn_full.allow() {
        tracing::warn!(%remote, left_out, max = limits.max_unauthenticated, "peer connection dropped before it showed a client certificate: too many such connections, this one waited longest");
    }
}

/// A member's connection: requests one after the other until it closes.
async fn authenticated<S, H>(mut stream: S, remote: std::net::SocketAddr, peer: NodeId, handler: &H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: RpcHandler,
{
    loop {
        let req: RpcRequest = match read_frame(&mut stream).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                tracing::warn!(%remote, peer, error = %e, "bad frame from peer; closing");
                let _ = write_frame(&mut stream, &RpcResponse::Refused(e.to_string())).await;
                return;
            }
        };
        let resp = handler.handle(Some(peer), req).await;
        if let Err(e) = write_frame(&mut stream, &resp).await {
            tracing::debug!(%remote, error = %e, "peer connection closed while answering");
            return;
        }
    }
}

/// A connection without a certificate: one join request, within the deadline.
async fn unauthenticated<S, H>(
    mut stream: S,
    remote: std::net::SocketAddr,
    handler: &H,
    mut slot: Slot,
    deadline: tokio::time::Instant,
    gate: &Gate,
    limits: &PeerLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: RpcHandler,
{
    let read = tokio::select! {
        r = tokio::time::timeout_at(deadline, read_join(&mut stream, limits.max_join_frame)) => r,
        () = slot.evicted() => {
            evicted(gate, remote, limits);
            return;
        }
    };
    let req = match read {
        Ok(Ok(Admission::Join(req))) => req,
        Ok(Ok(Admission::Refused(why))) => {
            if let Some(left_out) = gate.warn_refused.allow() {
                tracing::warn!(%remote, left_out, "peer refused: {why}");
            }
            // Best effort (the body is never read, the close may reset the answer).
            let _ = tokio::time::timeout_at(
                deadline,
                write_frame(&mut stream, &RpcResponse::Refused(why)),
            )
            .await;
            return;
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        Ok(Err(e)) => {
            if let Some(left_out) = gate.warn_refused.allow() {
                tracing::warn!(%remote, error = %e, left_out, "bad frame from peer without a client certificate; closing");
            }
            let _ = tokio::time::timeout_at(
                deadline,
                write_frame(&mut stream, &RpcResponse::Refused(e.to_string())),
            )
            .await;
            return;
        }
        Err(_) => {
            if let Some(left_out) = gate.warn_refused.allow() {
                tracing::warn!(%remote, left_out, deadline = ?limits.unauthenticated_deadline, "peer without a client certificate dropped: no join request in time");
            }
            return;
        }
    };
    // Still counted in the pool, but no longer the one to drop: its request is in.
    slot.busy();
    let resp = handler.handle(None, req).await;
    let answer = tokio::time::timeout(
        limits.unauthenticated_deadline,
        write_frame(&mut stream, &resp),
    )
    .await;
    if !matches!(answer, Ok(Ok(()))) {
        tracing::debug!(%remote, "joiner gone before its answer was written");
    }
}

/// What a connection without a certificate sent.
#[derive(Debug)]
enum Admission {
    Join(RpcRequest),
    /// Refused on its length or its kind; the body was not read.
    Refused(String),
}

/// Read one frame from a connection without a certificate: its length first, then
/// the version byte and variant of its body, and the rest only if it is a join of
/// at most `max` bytes.
async fn read_join<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Admission> {
    let len = super::read_frame_len(r).await?;
    if len > max {
        return Ok(Admission::Refused(format!(
            "frame of {len} bytes refused: without a client certificate only a join request of at most {max} bytes is accepted"
        )));
    }
    let head = join_head();
    let mut body = vec![0u8; len];
    let n = head.len().min(len);
    r.read_exact(&mut body[..n]).await?;
    // Another version: the protocol's message ("peer speaks protocol version N…").
    check_version(&body[..n])?;
    if body[..n] != head[..] {
        return Ok(Admission::Refused(CERTIFICATE_REQUIRED.into()));
    }
    r.read_exact(&mut body[n..]).await?;
    match decode_frame_body::<RpcRequest>(&body)? {
        req @ RpcRequest::Join { .. } => Ok(Admission::Join(req)),
        _ => Ok(Admission::Refused(CERTIFICATE_REQUIRED.into())),
    }
}

/// The first bytes of every join request's body: the protocol version and the
/// variant's tag (bincode: u32 little endian), taken from an encoded join so that
/// they follow the message's definition.
fn join_head() -> [u8; 5] {
    static HEAD: std::sync::OnceLock<[u8; 5]> = std::sync::OnceLock::new();
    *HEAD.get_or_init(|| {
        let frame = super::encode_frame(&RpcRequest::Join {
            secret: String::new(),
            id: 0,
            csr_pem: String::new(),
            info: NodeInfo::default(),
        })
        .expect("a join request encodes");
        frame[4..9].try_into().expect("a join frame has a body")
    })
}

/// Admission of connections: the pool of those without a certificate (oldest
/// waiting one dropped when full), the authenticated slots, and the rate limits of
/// the warnings.
struct Gate {
    authenticated: Arc<Semaphore>,
    max_unauthenticated: usize,
    pool: Mutex<Pool>,
    warn_accept: Throttle,
    /// The pool without certificate is full (kept apart from `warn_members`, so
    /// that a flood does not hide a member being refused).
    warn_full: Throttle,
    warn_members: Throttle,
    warn_handshake: Throttle,
    warn_refused: Throttle,
}

#[derive(Default)]
struct Pool {
    next_id: u64,
    /// Connections that may be dropped to make room, oldest first; dropping the
    /// sender tells the connection.
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Connections whose join request is in (being answered): counted, not dropped.
    busy: usize,
}

impl Gate {
    fn new(limits: &PeerLimits) -> Gate {
        Gate {
            authenticated: Arc::new(Semaphore::new(limits.max_authenticated)),
            max_unauthenticated: limits.max_unauthenticated,
            pool: Mutex::default(),
            warn_accept: Throttle::new(WARN_EVERY),
            warn_full: Throttle::new(WARN_EVERY),
            warn_members: Throttle::new(WARN_EVERY),
            warn_handshake: Throttle::new(WARN_EVERY),
            warn_refused: Throttle::new(WARN_EVERY),
        }
    }

    /// A place in the pool, making room by dropping the oldest waiting connection;
    /// `None` when every place is taken by a connection being answered.
    fn enter(gate: &Arc<Gate>) -> Option<Slot> {
        let mut pool = gate.pool.lock().expect("pool lock");
        if pool.waiting.len() + pool.busy >= gate.max_unauthenticated {
            // Dropping the sender is the signal.
            pool.waiting.pop_front()?;
        }
        let id = pool.next_id;
        pool.next_id += 1;
        let (tx, rx) = oneshot::channel();
        pool.waiting.push_back((id, tx));
        Some(Slot {
            gate: gate.clone(),
            id,
            evicted: Some(rx),
        })
    }
}

/// A connection's place in the pool of those without a certificate; given back
/// when dropped.
struct Slot {
    gate: Arc<Gate>,
    id: u64,
    /// Resolves when the connection was dropped from the pool; `None` once busy.
    evicted: Option<oneshot::Receiver<()>>,
}

impl Slot {
    /// Resolves when this connection must make room for a newer one.
    async fn evicted(&mut self) {
        match self.evicted.as_mut() {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }

    /// The request is in: the connection keeps its place until it is answered.
    fn busy(&mut self) {
        let mut pool = self.gate.pool.lock().expect("pool lock");
        if let Some(i) = pool.waiting.iter().position(|(id, _)| *id == self.id) {
            pool.waiting.remove(i);
            pool.busy += 1;
            self.evicted = None;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pool = self.gate.pool.lock().expect("pool lock");
        if self.evicted.is_none() {
            pool.busy -= 1;
        } else if let Some(i) = pool.waiting.iter().position(|(id, _)| *id == self.id) {
            pool.waiting.remove(i);
        }
    }
}

/// The pause before the next `accept` after failures in a row: 100 ms, doubling,
/// at most 1 s; back to the start after a success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn next_pause(&mut self) -> Duration {
        let pause = ACCEPT_BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(ACCEPT_BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// At most one warning per period; counts the ones left out.
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(left out since the last warning)` when this one may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().expect("throttle lock");
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let left_out = std::mem::take(&mut s.1);
                s.0 = Some(now);
                Some(left_out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_from_100_ms_to_1_s() {
        let mut b = AcceptBackoff::default();
        let ms: Vec<u128> = (0..7).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        for _ in 0..100 {
            b.next_pause();
        }
        assert_eq!(b.next_pause(), ACCEPT_BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_pause(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn warnings_are_throttled_and_count_what_was_left_out() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0), "the first one is logged");
        for i in 1..=5 {
            assert_eq!(t.allow_at(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(11)), None);
    }

    /// The join head tells a join apart from every other request.
    #[test]
    fn only_a_join_starts_with_the_join_head() {
        use crate::fixtures;
        let mut joins = 0;
        for req in fixtures::requests() {
            let frame = super::super::encode_frame(&req).unwrap();
            let is_join = matches!(req, RpcRequest::Join { .. });
            joins += usize::from(is_join);
            assert_eq!(frame[4..9] == join_head(), is_join, "{}", req.name());
        }
        assert!(joins > 0, "the fixtures hold a join");
    }

    /// What a frame without a certificate is refused on, before its body is read:
    /// the reader only holds the bytes offered, so a refusal that needed the body
    /// would fail with an EOF instead.
    #[tokio::test]
    async fn a_frame_is_judged_by_its_length_and_kind_before_its_body() {
        let frame = |len: u32, head: &[u8]| {
            let mut f = len.to_le_bytes().to_vec();
            f.extend_from_slice(head);
            f
        };
        let read = |bytes: Vec<u8>| async move { read_join(&mut &bytes[..], MAX_JOIN_FRAME).await };
        // Announced 60 MiB: refused on the length alone.
        match read(frame(60 << 20, &join_head())).await.unwrap() {
            Admission::Refused(why) => assert!(why.contains("at most 65536 bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
        match read(frame(60 << 20, &[])).await.unwrap() {
            Admission::Refused(_) => {}
            other => panic!("{other:?}"),
        }
        // Small, but another kind: refused on its head.
        let vote = super::super::encode_frame(&crate::fixtures::requests()[1]).unwrap();
        assert!(!matches!(
            crate::fixtures::requests()[1],
            RpcRequest::Join { .. }
        ));
        match read(frame(1000, &vote[4..9])).await.unwrap() {
            Admission::Refused(why) => assert_eq!(why, CERTIFICATE_REQUIRED),
            other => panic!("{other:?}"),
        }
        // Another protocol version: the protocol's message.
        let e = read(frame(1000, &[2, 0, 0, 0, 0])).await.unwrap_err();
        assert!(e.to_string().contains("protocol version 2"), "{e}");
        // A whole join is read and decoded.
        let join = crate::fixtures::requests()
            .into_iter()
            .find(|r| matches!(r, RpcRequest::Join { .. }))
            .unwrap();
        match read(super::super::encode_frame(&join).unwrap())
            .await
            .unwrap()
        {
            Admission::Join(RpcRequest::Join { .. }) => {}
            other => panic!("{other:?}"),
        }
        // Zero or beyond any frame: an error, as for members.
        assert!(read(frame(0, &[])).await.is_err());
        assert!(read(frame(u32::MAX, &[])).await.is_err());
    }
}
