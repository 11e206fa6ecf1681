//! The API port's accept loop (HTTP/1.1, plain or TLS), with the limits that keep
//! one client from taking the port down (the model is mini-redis's
//! `run(listener, shutdown)` with its connection limit):
//!
//! ```text
//!  accept ─ error (EMFILE...) ─▶ back off 5 ms … 1 s, log at most every 10 s
//!    │
//!    ├─ MAX_PER_SOURCE from that address ─▶ closed
//!    ├─ MAX_CONNECTIONS reached ─▶ the oldest connection that has not started a
//!    │   request yet (TLS handshake, first headers) is closed to make room; none
//!    │   (every connection has served a request) ─▶ the new one is closed
//!    │
//!    ├─ TLS handshake (HANDSHAKE_TIMEOUT)
//!    ├─ request headers (HEADER_TIMEOUT)
//!    └─ no request in flight and no byte either way for IDLE_TIMEOUT ─▶ closed
//! ```
//!
//! A flood of slow clients (slowloris: headers a byte at a time, from many sources)
//! therefore cannot lock a monitor or a CDR writer out for the 10 s of
//! HEADER_TIMEOUT: their connections are the ones that make room, while a client
//! that sends its request at once leaves that set within milliseconds.
//!
//! A request in flight is never cut by the idle timer (a recording upload may
//! wait minutes for its second copy); a CSV export whose client stops reading is
//! stopped by the export itself ([`crate::http::export::EXPORT_STALL`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Most connections the API port holds at once (the unit's `LimitNOFILE` is
/// 65536; the peer and SIP ports have caps of their own).
pub const MAX_CONNECTIONS: usize = 4096;
/// Most connections from one source address, so that one client cannot take
/// every slot.
pub const MAX_PER_SOURCE: usize = 256;
/// Time a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers once it started one, and to
/// start its first request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight and no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed accept, doubled on each failure in a row up to the max.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Warnings a client can cause are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(5);

/// The limits of one API listener (the constants above, shorter in tests).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub handshake: Duration,
    pub header: Duration,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_source: MAX_PER_SOURCE,
            handshake: HANDSHAKE_TIMEOUT,
            header: HEADER_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets requests in
/// flight finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let tls = tls.map(TlsAcceptor::from);
    let slots = Slots::new(limits);
    let graceful = GracefulShutdown::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut refused = RateLimitedWarn::default();
    let mut failed = RateLimitedWarn::default();
    let mut evicted = RateLimitedWarn::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => {
                backoff = ACCEPT_BACKOFF_MIN;
                c
            }
            Err(e) => {
                failed.warn(
                    |n| tracing::warn!(error = %e, left_out = n, "API accept failed; backing off"),
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                refused.warn(|n| {
                    tracing::warn!(%peer, left_out = n, ?full, max = limits.max_connections, per_source = limits.max_per_source, "API connection refused: too many connections")
                });
                continue;
            }
        };
        if slot.made_room {
            evicted.warn(|n| {
                tracing::warn!(%peer, left_out = n, max = limits.max_connections, "API port full: the oldest connection that had not sent a request yet was closed to make room")
            });
        }
        let conn = Connection {
            tls: tls.clone(),
            app: app.clone(),
            peer,
            limits,
            watcher: graceful.watcher(),
        };
        tokio::spawn(async move {
            let evict = slot.evict.clone();
            tokio::select! {
                () = conn.run(tcp, &slot) => {}
                () = evict.cancelled() => {
                    tracing::debug!(%peer, "API connection closed to make room: no request after the port filled");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("API: requests still running at shutdown were cut");
    }
}

/// One accepted connection.
struct Connection {
    tls: Option<TlsAcceptor>,
    app: Router,
    peer: SocketAddr,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    async fn run(self, tcp: TcpStream, slot: &Slot) {
        let _ = tcp.set_nodelay(true);
        let activity = Activity::new();
        let started = slot.started_hook();
        match self.tls.clone() {
            None => {
                self.http(Tracked::new(tcp, activity.clone()), activity, started)
                    .await
            }
            Some(acceptor) => {
                match tokio::time::timeout(self.limits.handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        self.http(Tracked::new(tls, activity.clone()), activity, started)
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "API TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "API TLS handshake timed out"),
                }
            }
        }
    }

    async fn http<T>(self, io: Tracked<T>, activity: Arc<Activity>, started: Started)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let counted = activity.clone();
        let started = Arc::new(started);
        let app = self.app;
        // Every request carries the client's address (`ConnectInfo`) and counts
        // as traffic until its answer is ready (its body then moves bytes).
        let service = tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            started.mark();
            let running = InFlight::start(&counted);
            let answer = app.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let r = answer.await;
                drop(running);
                r
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let conn = self.watcher.watch(conn);
        tokio::select! {
            r = conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "API connection ended with an error");
                }
            }
            _ = activity.idle_for(self.limits.idle) => {
                tracing::debug!(%peer, "API connection idle: closed");
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests run.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once no request has run and no byte moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle {
                return;
            }
            tokio::time::sleep(idle.saturating_sub(quiet).max(idle / 4)).await;
        }
    }
}

/// Held while a request runs (until its answer is ready).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A stream that records when it last moved a byte.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Tracked<T> {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connection slots: a total and a per-source count, and which connections have
/// not started a request yet (oldest first: the ones closed to make room).
#[derive(Clone)]
struct Slots {
    limits: Limits,
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Connections that have not started a request, by slot id (ids grow with
    /// accept time, so the first is the oldest), with their eviction signal.
    waiting: BTreeMap<u64, CancellationToken>,
    /// Ids of the slots still counted (an evicted slot is uncounted at once).
    counted: HashMap<u64, IpAddr>,
    next_id: u64,
}

impl Table {
    fn uncount(&mut self, id: u64) {
        self.waiting.remove(&id);
        let Some(source) = self.counted.remove(&id) else {
            return;
        };
        self.total -= 1;
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// Its source holds `max_per_source` connections.
    Source,
    /// The port holds `max_connections`, and each has started a request.
    Total,
}

/// One taken slot, given back on drop.
struct Slot {
    slots: Slots,
    id: u64,
    /// Cancelled when the connection is closed to make room for a newer one.
    evict: CancellationToken,
    /// Taking this slot closed an older connection.
    made_room: bool,
}

/// Marks a connection as having started a request (it is no longer closed to
/// make room).
struct Started {
    slots: Slots,
    id: u64,
    done: std::sync::atomic::AtomicBool,
}

impl Started {
    fn mark(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.slots
                .table
                .lock()
                .expect("slots lock")
                .waiting
                .remove(&self.id);
        }
    }
}

impl Slot {
    fn started_hook(&self) -> Started {
        Started {
            slots: self.slots.clone(),
            id: self.id,
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Slots {
    fn new(limits: Limits) -> Slots {
        Slots {
            limits,
            table: Arc::default(),
        }
    }

    /// A slot for a new connection from `source`: refused over the per-source cap;
    /// when the port is full, the oldest connection that has not started a request
    /// is evicted (signalled and uncounted at once) to make room, and only if there
    /// is none is the new one refused.
    fn take(&self, source: IpAddr) -> Result<Slot, Full> {
        let mut t = self.table.lock().expect("slots lock");
        if t.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source {
            return Err(Full::Source);
        }
        let mut made_room = false;
        if t.total >= self.limits.max_connections {
            let Some((&oldest, _)) = t.waiting.iter().next() else {
                return Err(Full::Total);
            };
            if let Some(token) = t.waiting.get(&oldest) {
                token.cancel();
            }
            t.uncount(oldest);
            made_room = true;
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = CancellationToken::new();
        t.waiting.insert(id, evict.clone());
        t.counted.insert(id, source);
        *t.per_source.entry(source).or_default() += 1;
        t.total += 1;
        Ok(Slot {
            slots: self.clone(),
            id,
            evict,
            made_room,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .table
            .lock()
            .expect("slots lock")
            .uncount(self.id);
    }
}

/// Logs the first warning, then at most one per [`WARN_EVERY`] with the count
/// of those left out.
#[derive(Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    left_out: u64,
}

impl RateLimitedWarn {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            self.left_out += 1;
            return;
        }
        log(std::mem::take(&mut self.left_out));
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with `limits` whose `/slow` answers after `slow`; its address and
    /// the token that stops it.
    async fn server(limits: Limits, slow: Duration) -> (SocketAddr, CancellationToken) {
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    tokio::time::sleep(slow).await;
                    "done"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, None, app, limits, stop.clone()));
        (addr, stop)
    }

    fn short() -> Limits {
        Limits {
            max_connections: 8,
            max_per_source: 4,
            handshake: Duration::from_millis(300),
            header: Duration::from_millis(300),
            idle: Duration::from_millis(600),
        }
    }

    /// Reads until EOF or `within`; true if the server closed the connection.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        let t0 = Instant::now();
        while t0.elapsed() < within {
            match tokio::time::timeout(within - t0.elapsed(), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_source_over_its_cap_is_closed_and_others_are_served() {
        let (addr, stop) = server(short(), Duration::ZERO).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
        // Another source still gets an answer.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = other.connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // A slot given back is reused.
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 200"));
        stop.cancel();
    }

    #[tokio::test]
    async fn slow_headers_and_silent_connections_are_closed() {
        let (addr, stop) = server(short(), Duration::ZERO).await;
        // Says nothing at all.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        // Slowloris: a header byte every 100 ms keeps bytes moving, but the
        // headers never end.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nx-a: ").await.unwrap();
        let t0 = Instant::now();
        let mut closed = false;
        while t0.elapsed() < Duration::from_secs(3) {
            if slow.write_all(b"a").await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await
            {
                // An error answer (408) or EOF: the server gave up on it.
                closed = n == 0 || buf.starts_with(b"HTTP/1.1 408");
                if closed {
                    break;
                }
            }
        }
        assert!(closed, "slow headers kept the connection open");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_long_request_is_not_cut_by_the_idle_timer() {
        // The answer takes 3 idle periods, with no byte moving meanwhile.
        let (addr, stop) = server(short(), Duration::from_millis(1800)).await;
        let out = get(addr, "/slow").await;
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("done"),
            "{out}"
        );
        stop.cancel();
    }

    #[test]
    fn slots_cap_the_total_and_each_source() {
        let slots = Slots::new(Limits {
            max_connections: 3,
            max_per_source: 2,
            ..Limits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let take = |ip| {
            let s = slots.take(ip)?;
            s.started_hook().mark();
            Ok::<Slot, Full>(s)
        };
        let a1 = take(a).unwrap();
        let _a2 = take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(Full::Source), "per source");
        let _b1 = take(b).unwrap();
        // Every connection has started a request: nothing to make room with.
        assert_eq!(slots.take(b).err(), Some(Full::Total), "total");
        drop(a1);
        assert!(slots.take(b).is_ok(), "a slot given back is reused");
    }

    /// Issue 14: slow clients filling the port locked every other client out.
    #[test]
    fn a_full_port_closes_its_oldest_connection_without_a_request_to_make_room() {
        let slots = Slots::new(Limits {
            max_connections: 3,
            max_per_source: 3,
            ..Limits::default()
        });
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let slow1 = slots.take(ip("127.0.0.2")).unwrap();
        let served = slots.take(ip("127.0.0.3")).unwrap();
        served.started_hook().mark();
        let slow2 = slots.take(ip("127.0.0.2")).unwrap();
        // Full: the oldest connection still without a request makes room.
        let fresh = slots.take(ip("127.0.0.1")).unwrap();
        assert!(fresh.made_room);
        assert!(slow1.evict.is_cancelled());
        assert!(!served.evict.is_cancelled() && !slow2.evict.is_cancelled());
        // The evicted slot was uncounted at once; its drop does not count twice.
        drop(slow1);
        assert_eq!(slots.table.lock().unwrap().total, 3);
        fresh.started_hook().mark();
        let next = slots.take(ip("127.0.0.4")).unwrap();
        assert!(slow2.evict.is_cancelled(), "then the next oldest");
        next.started_hook().mark();
        // Only connections that served a request are left: refused.
        assert_eq!(slots.take(ip("127.0.0.5")).err(), Some(Full::Total));
        drop((slow2, served, fresh, next));
        let t = slots.table.lock().unwrap();
        assert_eq!(
            (
                t.total,
                t.per_source.len(),
                t.waiting.len(),
                t.counted.len()
            ),
            (0, 0, 0, 0)
        );
    }

    /// Issue 14, through the accept loop: a port full of slowloris connections
    /// from many sources (each under its per-source cap) still answers a client
    /// that sends its request at once.
    #[tokio::test]
    async fn slow_clients_filling_the_port_do_not_lock_out_a_prompt_client() {
        let limits = Limits {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            ..short()
        };
        let (addr, stop) = server(limits, Duration::ZERO).await;
        let mut slow = Vec::new();
        for i in 0..limits.max_connections {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            let src = format!("127.0.1.{}:0", 1 + i / limits.max_per_source);
            sock.bind(src.parse().unwrap()).unwrap();
            let mut s = sock.connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nx-slow: ").await.unwrap();
            slow.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = tokio::time::timeout(Duration::from_secs(5), get(addr, "/"))
            .await
            .expect("answered");
        assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
        // The one closed to make room was the oldest slow connection.
        assert!(closed_within(&mut slow[0], Duration::from_secs(2)).await);
        stop.cancel();
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_was_left_out() {
        let mut w = RateLimitedWarn::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            w.warn(|n| logged.push(n));
        }
        assert_eq!(logged, vec![0]);
        assert_eq!(w.left_out, 4);
    }
}
