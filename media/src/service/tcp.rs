//! SIP over TCP (RFC 3261 §18): the accept loop, one reader and one writer task
//! per connection, and the limits that keep a prober from holding the listener.
//!
//! ```text
//!  accept ─▶ slot? per-source cap ── full ─▶ closed at once
//!     │        total cap ── full ─▶ close the oldest connection that has not
//!     │                             completed a message yet, or refuse
//!     │ yes
//!     ▼
//!  reader: frame by Content-Length ─▶ Event::Bytes ─▶ core task
//!     │ a message not complete within message_timeout (the first one included)
//!     │ or nothing received for idle_timeout ─▶ closed
//!  writer ◀── send() from the core task (opens a connection when none exists)
//! ```
//!
//! A full port makes room by closing its oldest connection that has not sent a
//! complete message yet (a slowloris holds its slot only until somebody needs
//! it); phones, which REGISTER right after connecting, are never evicted.
//!
//! Accept errors (EMFILE: out of file descriptors) back off exponentially instead
//! of spinning, with one warning per run of errors.

use super::Event;
use crate::b2bua::Peer;
use crate::sip::message;
use crate::sip::Transport;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// Caps and timeouts of SIP over TCP.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Accepted connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Accepted connections open at once from one address (phones behind one NAT
    /// share it: keep it above the number of TCP phones at a site).
    pub max_per_source: usize,
    /// A connection that received nothing for this long is closed. Above the
    /// longest registration (`max_expires`), so a phone that only re-registers
    /// keeps its connection.
    pub idle_timeout: Duration,
    /// A message (headers and body) must arrive completely within this time of
    /// its first byte; an accepted connection must complete its first message
    /// within this time of being accepted.
    pub message_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 2048,
            max_per_source: 128,
            idle_timeout: Duration::from_secs(3900),
            message_timeout: Duration::from_secs(10),
        }
    }
}

/// Open connections: writer queues by peer, and the accepted ones counted.
pub(super) struct Tcp {
    limits: TcpLimits,
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    accepted: Mutex<Accepted>,
    /// Connections closed at accept, over a cap.
    refused: AtomicU64,
    /// Connections closed to make room for a new one (none had sent a message).
    evicted: AtomicU64,
}

#[derive(Default)]
struct Accepted {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Accepted connections that have not completed a message, oldest first
    /// (by slot id): the candidates for eviction.
    pending: std::collections::BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    /// Slots evicted whose connection task has not ended yet: their counts were
    /// given back at eviction, not again on drop.
    evicted: std::collections::HashSet<u64>,
    next_id: u64,
}

impl Accepted {
    fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }
}

/// An accepted connection's place under the caps, given back on drop.
struct Slot {
    tcp: Arc<Tcp>,
    ip: IpAddr,
    id: u64,
    /// Notified when the slot is taken for a newer connection.
    evict: Arc<Notify>,
}

impl Slot {
    /// The connection completed a message: it is no longer evicted for room.
    fn settled(&self) {
        let mut a = self.tcp.accepted.lock().unwrap_or_else(|e| e.into_inner());
        a.pending.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.tcp.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if a.evicted.remove(&self.id) {
            return;
        }
        a.pending.remove(&self.id);
        a.release(self.ip);
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Total,
    Source,
}

impl Tcp {
    pub(super) fn new(limits: TcpLimits) -> Tcp {
        Tcp {
            limits,
            writers: Mutex::default(),
            accepted: Mutex::default(),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Connections closed to make room so far.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Connections refused over a cap so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn slot(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let mut a = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if a.per_source.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_source {
            return Err(Full::Source);
        }
        if a.total >= self.limits.max_connections {
            // Room from the oldest connection that never completed a message.
            let Some((old, (old_ip, evict))) = a.pending.pop_first() else {
                return Err(Full::Total);
            };
            a.release(old_ip);
            a.evicted.insert(old);
            evict.notify_one();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        *a.per_source.entry(ip).or_insert(0) += 1;
        a.total += 1;
        let id = a.next_id;
        a.next_id += 1;
        let evict = Arc::new(Notify::new());
        a.pending.insert(id, (ip, evict.clone()));
        Ok(Slot {
            tcp: self.clone(),
            ip,
            id,
            evict,
        })
    }

    fn writer(&self, addr: SocketAddr) -> Option<mpsc::Sender<Vec<u8>>> {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned()
    }
}

/// Exponential backoff after accept errors: 5 ms doubling to 1 s, reset by a
/// successful accept.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// Errors in the current run.
    errors: u32,
}

impl Backoff {
    /// First and longest wait.
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// An error: how long to wait before accepting again.
    pub fn failed(&mut self) -> Duration {
        self.errors = self.errors.saturating_add(1);
        let shift = (self.errors - 1).min(16);
        (Self::MIN * (1u32 << shift)).min(Self::MAX)
    }

    /// A success; returns how many errors the run had (0: none).
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.errors)
    }
}

/// Send `bytes` to `addr` on its connection, opening one when none exists
/// (RFC 3261 §18.1.1).
pub(super) fn send(addr: SocketAddr, bytes: Vec<u8>, tcp: &Arc<Tcp>, tx: &mpsc::Sender<Event>) {
    if let Some(w) = tcp.writer(addr) {
        if w.try_send(bytes).is_err() {
            tracing::debug!(to = %addr, "sip: TCP connection gone or its queue full");
        }
        return;
    }
    let tcp = tcp.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let w = spawn_connection(stream, addr, tx, tcp, None);
                let _ = w.send(bytes).await;
            }
            _ => tracing::debug!(to = %addr, "sip: TCP connect failed"),
        }
    });
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<Event>,
    tcp: Arc<Tcp>,
    active: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let errors = backoff.succeeded();
                if errors > 0 {
                    tracing::warn!(errors, "sip: TCP accepting again after errors");
                }
                if !active.load(Ordering::Relaxed) {
                    continue;
                }
                match tcp.slot(addr.ip()) {
                    Ok(slot) => {
                        spawn_connection(stream, addr, tx.clone(), tcp.clone(), Some(slot));
                    }
                    Err(full) => {
                        tcp.refused.fetch_add(1, Ordering::Relaxed);
                        // Dropping the stream closes it: the client sees the refusal.
                        tracing::debug!(%addr, ?full, "sip: TCP connection refused, over the cap");
                    }
                }
            }
            Err(e) => {
                let wait = backoff.failed();
                if backoff.errors == 1 {
                    tracing::warn!(error = %e, "sip: TCP accept failing (out of file descriptors?); backing off up to 1 s, raise LimitNOFILE if it goes on");
                } else {
                    tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "sip: TCP accept error");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Reader and writer tasks of one TCP connection; returns the writer's queue.
/// `slot` is set for accepted connections (they count under the caps and must
/// send their first message in time).
fn spawn_connection(
    stream: TcpStream,
    addr: SocketAddr,
    tx: mpsc::Sender<Event>,
    tcp: Arc<Tcp>,
    slot: Option<Slot>,
) -> mpsc::Sender<Vec<u8>> {
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(256);
    tcp.writers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(addr, wtx.clone());
    tokio::spawn(async move {
        while let Some(b) = wrx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let limits = tcp.limits.clone();
    tokio::spawn(async move {
        let peer = Peer {
            addr,
            transport: Transport::Tcp,
        };
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16384];
        let mut clock = ReadClock::new(slot.is_some(), Instant::now());
        let evict = slot.as_ref().map(|s| s.evict.clone());
        'conn: loop {
            let deadline = clock.deadline(!buf.is_empty(), &limits);
            let evicted = async {
                match &evict {
                    Some(e) => e.notified().await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                biased;
                _ = evicted => {
                    tracing::debug!(%addr, "sip: TCP connection without a message closed to make room");
                    break;
                }
                r = tokio::time::timeout_at(deadline.into(), rd.read(&mut chunk)) => r,
            };
            let n = match read {
                Err(_) => {
                    tracing::debug!(%addr, "sip: TCP connection timed out (idle or a message incomplete), closing");
                    break;
                }
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
            };
            let was_empty = buf.is_empty();
            buf.extend_from_slice(&chunk[..n]);
            let mut completed = false;
            loop {
                let skip = message::skip_keepalive(&buf);
                buf.drain(..skip);
                if buf.is_empty() {
                    break;
                }
                match message::frame(&buf) {
                    Ok(len) => {
                        let msg: Vec<u8> = buf.drain(..len).collect();
                        completed = true;
                        if tx.send(Event::Bytes(msg, peer)).await.is_err() {
                            break 'conn;
                        }
                    }
                    Err(message::ParseError::Incomplete) => break,
                    Err(e) => {
                        // Framing lost (no Content-Length, too large): answer if we can, then close.
                        tracing::debug!(%addr, error = %e, "sip: TCP framing error, closing");
                        let _ = tx.send(Event::Bytes(std::mem::take(&mut buf), peer)).await;
                        // Leave the writer a moment for the 4xx/5xx answer before closing.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break 'conn;
                    }
                }
            }
            if completed && clock.first_pending {
                if let Some(s) = &slot {
                    s.settled();
                }
            }
            clock.received(was_empty, completed, buf.is_empty(), Instant::now());
        }
        // Dropping the writer's queue ends the writer: the socket closes.
        tcp.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
    });
    wtx
}

/// When a connection's reader gives up: the time its current wait began, and
/// whether it waits for a message (short limit) or is idle (long limit).
#[derive(Debug, Clone, Copy)]
struct ReadClock {
    /// Start of the current wait.
    since: Instant,
    /// An accepted connection that has not completed a message yet.
    first_pending: bool,
}

impl ReadClock {
    fn new(accepted: bool, now: Instant) -> ReadClock {
        ReadClock {
            since: now,
            first_pending: accepted,
        }
    }

    /// The deadline of the next read; `partial`: part of a message is buffered.
    fn deadline(&self, partial: bool, limits: &TcpLimits) -> Instant {
        let limit = if partial || self.first_pending {
            limits.message_timeout
        } else {
            limits.idle_timeout
        };
        self.since + limit
    }

    /// Bytes arrived: `was_empty` before them, `completed` a message, `empty` after.
    fn received(&mut self, was_empty: bool, completed: bool, empty: bool, now: Instant) {
        if completed {
            self.first_pending = false;
        }
        if self.first_pending {
            // Keep-alives do not buy time before the first message.
            return;
        }
        if empty || completed || was_empty {
            // Idle again, or a new message begins: its clock starts now.
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.succeeded(), 10);
        assert_eq!(b.failed(), Duration::from_millis(5));
    }

    #[test]
    fn read_deadlines_short_for_messages_long_when_idle() {
        let l = TcpLimits {
            idle_timeout: Duration::from_secs(100),
            message_timeout: Duration::from_secs(10),
            ..TcpLimits::default()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = ReadClock::new(true, t0);
        assert_eq!(c.deadline(false, &l), t0 + s(10), "first message due");
        // A keep-alive before the first message buys no time.
        c.received(true, false, true, t0 + s(5));
        assert_eq!(c.deadline(false, &l), t0 + s(10));
        c.received(true, true, true, t0 + s(6));
        assert_eq!(c.deadline(false, &l), t0 + s(106), "idle after a message");
        // Half a message at 50 s: 10 s to finish it, however it trickles.
        c.received(true, false, false, t0 + s(50));
        assert_eq!(c.deadline(true, &l), t0 + s(60));
        c.received(false, false, false, t0 + s(55));
        assert_eq!(c.deadline(true, &l), t0 + s(60));
        // A connection we opened waits idle from the start.
        let c = ReadClock::new(false, t0);
        assert_eq!(c.deadline(false, &l), t0 + s(100));
    }
}
