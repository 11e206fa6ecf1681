//! RTP/RTCP relay between the two legs of a call, with recording.
//!
//! ```text
//!  caller ──RTP──► [A rtp :p]  ┐                      ┌ [B rtp :q]  ──RTP──► callee
//!  caller ◄──────  [A rtp :p]  │   worker thread       │ [B rtp :q] ◄──────  callee
//!  caller ─RTCP──► [A rtcp:p+1]├─ epoll + recvmmsg ────┤ [B rtcp:q+1] ─RTCP─► callee
//!                              │   latch, count, send  │
//!                              └──── Recorder (wav.rs) ┘ ──chunks──► recorder thread ──► <id>.wav
//! ```
//!
//! Design for 1,000+ concurrent calls on two cores:
//! * A fixed number of worker threads (one per core, at most 4), each owning the sockets
//!   of the sessions assigned to it round-robin, waiting on one `epoll` set. A readable
//!   socket is drained with `recvmmsg` (one system call for every packet queued) and the
//!   packets go out of the other leg's socket with one `send_to` or, when several were
//!   queued, one `sendmmsg`. No task or allocation per packet; counters are summed per
//!   batch and published with relaxed atomics.
//! * Symmetric RTP (RFC 4961; for phones behind NAT): each leg latches to the source
//!   address of its first RTP packet (and separately of its first RTCP packet). Until
//!   then media for that leg goes to the address signalled in SDP (RTCP to port + 1).
//!   After latching, packets from any other source are dropped and counted; signalling a
//!   new address for the leg (re-INVITE) clears its latch.
//! * Recording: the worker decodes G.711 through a table and places samples in the
//!   session's [`Recorder`] (pure placement logic, see `wav.rs`); every 250 ms (at the
//!   session's own packet times, so calls do not all drain at once) the final frames are
//!   handed as one chunk to a single recorder thread that owns the files and
//!   writes them through 64 KiB buffers, so no file system call is on the packet path;
//!   that thread wakes at most ~50 times a second under load.
//!   On finish the header sizes are fixed, the file is fsynced (and its directory), and
//!   its SHA-256, size and duration computed.
//! * Control (set remote, codec, start recording, finish) reaches the owning worker as a
//!   message on a channel, with an eventfd to wake it; the worker applies control
//!   messages before reading sockets, so an address set before the SDP is sent is in
//!   force for the first packet.
//! * Ports: pairs (even RTP, odd RTCP) from `[port_low, port_high]`, handed out in FIFO
//!   order (a freed pair goes to the back, so a late packet of an ended call rarely hits
//!   a new one); a pair that cannot be bound (used by another program) is skipped.
//!
//! Use by the B2BUA, per call:
//!
//! ```no_run
//! # async fn call(relay: tandem_media::relay::Relay) -> Result<(), tandem_media::error::MediaError> {
//! use tandem_media::relay::Codec;
//! let media = relay.allocate("call-id@host")?; // at INVITE
//! let sdp_to_callee = media.local_b(); // offer to the callee names VIP:port of leg B
//! media.set_remote_a("192.0.2.10:4000".parse().unwrap()); // from the caller's offer
//! media.set_remote_b("192.0.2.20:4002".parse().unwrap()); // from the callee's answer
//! media.set_codec(Codec::Pcmu, 0);
//! let sdp_to_caller = media.local_a(); // answer to the caller names VIP:port of leg A
//! media.start_recording("0193e0b2-recording-id")?; // at 200 OK
//! // ... BYE ...
//! if let Some(file) = media.finish().await? {
//!     // commit file.sha256, file.size, file.duration_ms, file.codec with the CDR
//! }
//! # let _ = (sdp_to_callee, sdp_to_caller);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::error::MediaError;
use crate::rtp::{self, SeqStats};
use crate::wav::{self, Decode, Leg, Recorder};

/// The audio codecs the relay can record (G.711, ITU-T G.711; no transcoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, static RTP payload type 0 (RFC 3551 §6).
    Pcmu,
    /// G.711 A-law, static RTP payload type 8 (RFC 3551 §6).
    Pcma,
}

impl Codec {
    /// The codec of a static payload type (RFC 3551 table 4), `None` for anything else.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The encoding name as in SDP `a=rtpmap` and in recording metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    fn decode(self) -> Decode {
        match self {
            Codec::Pcmu => Decode::Ulaw,
            Codec::Pcma => Decode::Alaw,
        }
    }
}

/// How the relay binds and advertises its ports and where it writes recordings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address the RTP sockets bind to (0.0.0.0 in production).
    pub bind_ip: IpAddr,
    /// Address written into SDP (the VIP).
    pub advertised_ip: IpAddr,
    /// Lowest port of `[sip] rtp_ports` (inclusive); RTP on even ports.
    pub port_low: u16,
    /// Highest port of `[sip] rtp_ports` (inclusive); RTCP on the odd port after each RTP port.
    pub port_high: u16,
    /// Directory where finished WAV files are written (created if missing).
    pub recordings_dir: PathBuf,
}

/// Counters for metrics; a snapshot of the relay's atomics (all cumulative except
/// `active_sessions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// RTP packets forwarded to the other leg.
    pub packets_relayed: u64,
    /// RTCP packets forwarded to the other leg.
    pub rtcp_relayed: u64,
    /// RTP packets missing in the sequence numbers received (RFC 3550 §6.4.1 / A.3).
    pub packets_lost: u64,
    /// Packets dropped: wrong source after latching, not RTP/RTCP, no destination yet,
    /// or the send failed.
    pub packets_dropped: u64,
    /// Bytes of RTP and RTCP forwarded.
    pub bytes_relayed: u64,
    /// Sessions holding ports now.
    pub active_sessions: u64,
    /// Recordings started.
    pub recordings_started: u64,
    /// Packets not placed in a recording because they came later than the jitter window.
    pub recording_late_packets: u64,
}

/// The relay's atomics (see [`RelayStats`] for their meaning).
#[derive(Debug, Default)]
struct Counters {
    /// See [`RelayStats::packets_relayed`].
    packets_relayed: AtomicU64,
    /// See [`RelayStats::rtcp_relayed`].
    rtcp_relayed: AtomicU64,
    /// See [`RelayStats::packets_lost`].
    packets_lost: AtomicU64,
    /// See [`RelayStats::packets_dropped`].
    packets_dropped: AtomicU64,
    /// See [`RelayStats::bytes_relayed`].
    bytes_relayed: AtomicU64,
    /// See [`RelayStats::active_sessions`].
    active_sessions: AtomicU64,
    /// See [`RelayStats::recordings_started`].
    recordings_started: AtomicU64,
    /// See [`RelayStats::recording_late_packets`].
    recording_late_packets: AtomicU64,
}

/// Free port pairs.
#[derive(Debug)]
struct Allocator {
    /// Even RTP ports whose pair is free, in the order they will be handed out.
    free: VecDeque<u16>,
}

impl Allocator {
    /// Binds the next free pair that can be bound; `None` when none can.
    fn take_pair(&mut self, ip: IpAddr) -> Option<(u16, UdpSocket, UdpSocket)> {
        for _ in 0..self.free.len() {
            let port = self.free.pop_front()?;
            let rtp = bind(ip, port);
            let rtcp = bind(ip, port + 1);
            match (rtp, rtcp) {
                (Ok(a), Ok(b)) => return Some((port, a, b)),
                (a, b) => {
                    let err = a.err().or(b.err());
                    tracing::debug!(port, error = ?err, "RTP port pair in use, skipped");
                    self.free.push_back(port);
                }
            }
        }
        None
    }
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// What the worker threads and the recorder thread share.
#[derive(Debug)]
struct Shared {
    /// The configuration given to `start`.
    cfg: RelayConfig,
    /// Metrics.
    counters: Counters,
    /// Free ports.
    alloc: Mutex<Allocator>,
}

/// The sending side of one worker.
#[derive(Debug)]
struct WorkerHandle {
    /// Control messages for the worker.
    tx: mpsc::Sender<Cmd>,
    /// Written after each message to wake the worker from `epoll_wait`.
    wake: Arc<EventFd>,
}

#[derive(Debug)]
struct Inner {
    /// State shared with the threads.
    shared: Arc<Shared>,
    /// One handle per worker thread.
    workers: Vec<WorkerHandle>,
    /// Files of started recordings go to the recorder thread through this.
    writer: mpsc::Sender<WriterMsg>,
    /// Next session key (unique per relay; also picks the worker).
    next_key: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.tx.send(Cmd::Shutdown);
            let _ = w.wake.write(1);
        }
    }
}

/// The RTP relay: one per service; cheap to clone (Arc inside). The worker threads stop
/// when the last clone and the last [`MediaSession`] are dropped.
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    /// Validates the port range, creates the recordings directory and starts the worker
    /// threads (one per core, at most 4) and the recorder thread.
    pub async fn start(cfg: RelayConfig) -> Result<Relay, MediaError> {
        let first = cfg.port_low.saturating_add(cfg.port_low % 2);
        let pairs: VecDeque<u16> = (first..cfg.port_high)
            .step_by(2)
            .filter(|p| *p != 0)
            .collect();
        if cfg.port_low > cfg.port_high || pairs.len() < 2 {
            return Err(MediaError::InvalidPortRange {
                low: cfg.port_low,
                high: cfg.port_high,
            });
        }
        std::fs::create_dir_all(&cfg.recordings_dir).map_err(|source| MediaError::RecordingIo {
            path: cfg.recordings_dir.clone(),
            what: "create directory",
            source,
        })?;
        warn_if_fd_limit_low(pairs.len());
        let shared = Arc::new(Shared {
            cfg,
            counters: Counters::default(),
            alloc: Mutex::new(Allocator { free: pairs }),
        });
        let (writer_tx, writer_rx) = mpsc::channel();
        spawn_thread("rtp-recorder".into(), move || run_writer(writer_rx))?;
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let io = |what: &str, e: nix::Error| MediaError::RelayIo {
                what: what.to_string(),
                source: std::io::Error::from(e),
            };
            let epoll =
                Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| io("epoll_create", e))?;
            let wake = Arc::new(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| io("eventfd", e))?,
            );
            epoll
                .add(&*wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN))
                .map_err(|e| io("epoll_ctl eventfd", e))?;
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                epoll,
                wake: wake.clone(),
                rx,
                shared: shared.clone(),
                writer: writer_tx.clone(),
                sessions: HashMap::new(),
            };
            spawn_thread(format!("rtp-relay-{i}"), move || worker.run())?;
            workers.push(WorkerHandle { tx, wake });
        }
        tracing::info!(
            workers = n,
            bind = %shared.cfg.bind_ip,
            advertised = %shared.cfg.advertised_ip,
            ports = %format!("{}-{}", shared.cfg.port_low, shared.cfg.port_high),
            recordings = %shared.cfg.recordings_dir.display(),
            "RTP relay started"
        );
        Ok(Relay {
            inner: Arc::new(Inner {
                shared,
                workers,
                writer: writer_tx,
                next_key: AtomicU64::new(1),
            }),
        })
    }

    /// Reserve two RTP/RTCP port pairs for one call: leg A faces the caller, leg B the callee.
    /// Fails with [`MediaError::PortsExhausted`] when the range has fewer than two free pairs.
    pub fn allocate(&self, call_id: &str) -> Result<MediaSession, MediaError> {
        let shared = &self.inner.shared;
        let ip = shared.cfg.bind_ip;
        let (a, b) = {
            let mut alloc = shared.alloc.lock().unwrap_or_else(|e| e.into_inner());
            let Some(a) = alloc.take_pair(ip) else {
                return Err(self.exhausted(call_id));
            };
            let Some(b) = alloc.take_pair(ip) else {
                drop(a.1);
                drop(a.2);
                alloc.free.push_front(a.0);
                return Err(self.exhausted(call_id));
            };
            (a, b)
        };
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let worker = (key % self.inner.workers.len() as u64) as usize;
        let ports = [a.0, b.0];
        let session = Session {
            call_id: call_id.to_string(),
            ports,
            sockets: [a.1, a.2, b.1, b.2],
            legs: Default::default(),
            codec: None,
            seen_codec: None,
            recording: None,
            next_drain: Instant::now(),
        };
        shared
            .counters
            .active_sessions
            .fetch_add(1, Ordering::Relaxed);
        let media = MediaSession {
            relay: self.clone(),
            key,
            worker,
            call_id: call_id.to_string(),
            ports,
            recording: Mutex::new(None),
            finished: false,
        };
        media.send(Cmd::Add(key, Box::new(session)))?;
        tracing::debug!(
            call_id,
            port_a = ports[0],
            port_b = ports[1],
            "media session allocated"
        );
        Ok(media)
    }

    fn exhausted(&self, call_id: &str) -> MediaError {
        let c = &self.inner.shared.cfg;
        tracing::warn!(
            call_id,
            low = c.port_low,
            high = c.port_high,
            active = self
                .inner
                .shared
                .counters
                .active_sessions
                .load(Ordering::Relaxed),
            "no free RTP port pair"
        );
        MediaError::PortsExhausted
    }

    /// Snapshot of the counters (for metrics).
    pub fn stats(&self) -> RelayStats {
        let c = &self.inner.shared.counters;
        RelayStats {
            packets_relayed: c.packets_relayed.load(Ordering::Relaxed),
            rtcp_relayed: c.rtcp_relayed.load(Ordering::Relaxed),
            packets_lost: c.packets_lost.load(Ordering::Relaxed),
            packets_dropped: c.packets_dropped.load(Ordering::Relaxed),
            bytes_relayed: c.bytes_relayed.load(Ordering::Relaxed),
            active_sessions: c.active_sessions.load(Ordering::Relaxed),
            recordings_started: c.recordings_started.load(Ordering::Relaxed),
            recording_late_packets: c.recording_late_packets.load(Ordering::Relaxed),
        }
    }

    /// Number of worker threads (for the benchmark's report).
    pub fn worker_threads(&self) -> usize {
        self.inner.workers.len()
    }
}

/// Every port pair is two sockets; a full range needs that many descriptors on top of
/// the rest of the process. Say so at start rather than fail calls later with EMFILE.
fn warn_if_fd_limit_low(pairs: usize) {
    use nix::sys::resource::{getrlimit, Resource};
    if let Ok((soft, _hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let needed = 2 * pairs as u64 + 256;
        if soft < needed {
            tracing::warn!(
                soft_limit = soft,
                needed,
                "open-file limit is lower than the RTP port range needs (2 sockets per pair); raise LimitNOFILE or narrow [sip] rtp_ports, or calls will fail with 'too many open files' under load"
            );
        }
    }
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), MediaError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map(|_| ())
        .map_err(|source| MediaError::RelayIo {
            what: format!("spawn thread {name}"),
            source,
        })
}

/// The media of one call: two port pairs on the relay. Dropping it without
/// [`finish`](MediaSession::finish) also releases the ports (the recording, if any, is
/// closed with correct sizes but not fsynced).
#[derive(Debug)]
pub struct MediaSession {
    /// The relay (keeps the workers alive).
    relay: Relay,
    /// Session key inside the relay.
    key: u64,
    /// Index of the owning worker.
    worker: usize,
    /// SIP Call-ID, for logs and errors.
    call_id: String,
    /// RTP ports of leg A and leg B (RTCP is +1).
    ports: [u16; 2],
    /// Recording id once started.
    recording: Mutex<Option<String>>,
    /// Set by `finish` so that `Drop` does nothing more.
    finished: bool,
}

impl MediaSession {
    fn send(&self, cmd: Cmd) -> Result<(), MediaError> {
        let w = &self.relay.inner.workers[self.worker];
        w.tx.send(cmd).map_err(|_| MediaError::RelayStopped)?;
        let _ = w.wake.write(1);
        Ok(())
    }

    fn send_or_log(&self, cmd: Cmd) {
        if self.send(cmd).is_err() {
            tracing::warn!(call_id = %self.call_id, "RTP relay worker stopped; media command lost");
        }
    }

    /// advertised_ip + RTP port for the SDP sent to the caller.
    pub fn local_a(&self) -> SocketAddr {
        SocketAddr::new(self.relay.inner.shared.cfg.advertised_ip, self.ports[0])
    }

    /// advertised_ip + RTP port for the SDP sent to the callee.
    pub fn local_b(&self) -> SocketAddr {
        SocketAddr::new(self.relay.inner.shared.cfg.advertised_ip, self.ports[1])
    }

    /// Where to send media for leg A as signalled in SDP (the relay latches to the real source).
    /// Signalling a different address later (re-INVITE) clears the latch of that leg.
    pub fn set_remote_a(&self, rtp: SocketAddr) {
        self.send_or_log(Cmd::SetRemote(self.key, Leg::A, rtp));
    }

    /// Where to send media for leg B as signalled in SDP (the relay latches to the real source).
    /// Signalling a different address later (re-INVITE) clears the latch of that leg.
    pub fn set_remote_b(&self, rtp: SocketAddr) {
        self.send_or_log(Cmd::SetRemote(self.key, Leg::B, rtp));
    }

    /// The negotiated codec (from the callee's SDP answer) and its payload type number.
    pub fn set_codec(&self, codec: Codec, payload_type: u8) {
        self.send_or_log(Cmd::SetCodec(self.key, codec, payload_type));
    }

    /// Start writing the two-channel WAV (channel 1 = caller A, channel 2 = callee B) at answer.
    /// The file is `<recordings_dir>/<recording_id>.wav`; it must not exist yet.
    pub fn start_recording(&self, recording_id: &str) -> Result<(), MediaError> {
        let mut rec = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = rec.as_ref() {
            return Err(MediaError::RecordingAlreadyStarted {
                call_id: self.call_id.clone(),
                recording_id: existing.clone(),
            });
        }
        if !valid_recording_id(recording_id) {
            return Err(MediaError::InvalidRecordingId {
                id: recording_id.to_string(),
            });
        }
        let path = self
            .relay
            .inner
            .shared
            .cfg
            .recordings_dir
            .join(format!("{recording_id}.wav"));
        let io = |what, source| MediaError::RecordingIo {
            path: path.clone(),
            what,
            source,
        };
        let mut file = File::options()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("create", e))?;
        file.write_all(&wav::wav_header(0))
            .map_err(|e| io("write header", e))?;
        self.relay
            .inner
            .writer
            .send(WriterMsg::Open {
                key: self.key,
                id: recording_id.to_string(),
                path: path.clone(),
                file,
            })
            .map_err(|_| MediaError::RelayStopped)?;
        self.send(Cmd::StartRecording(self.key, Instant::now()))?;
        self.relay
            .inner
            .shared
            .counters
            .recordings_started
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(call_id = %self.call_id, recording_id, path = %path.display(), "recording started");
        *rec = Some(recording_id.to_string());
        Ok(())
    }

    /// Stop relaying, release the ports, finish the WAV; Some(file) if recording was started.
    pub async fn finish(mut self) -> Result<Option<RecordingFile>, MediaError> {
        self.finished = true;
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Remove(self.key, Some(tx)))?;
        let written = match rx.await {
            Err(_) => return Err(MediaError::RelayStopped),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(w))) => w,
        };
        let call_id = self.call_id.clone();
        let file = tokio::task::spawn_blocking(move || finalize(written, true))
            .await
            .map_err(|_| MediaError::RelayStopped)??;
        tracing::info!(
            call_id,
            recording_id = %file.id,
            size = file.size,
            duration_ms = file.duration_ms,
            codec = %file.codec,
            sha256 = %file.sha256,
            "recording finished"
        );
        Ok(Some(file))
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        if !self.finished {
            self.send_or_log(Cmd::Remove(self.key, None));
        }
    }
}

/// Recording ids become file names: keep them boring.
fn valid_recording_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A finished recording, ready for its metadata to be committed and its bytes replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFile {
    /// The recording id given to `start_recording`.
    pub id: String,
    /// Where the WAV file is.
    pub path: PathBuf,
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
    /// Audio duration in milliseconds.
    pub duration_ms: u64,
    /// "PCMU" or "PCMA".
    pub codec: String,
}

/// Epoll token of the worker's eventfd (session tokens are `key << 2 | socket index`).
const WAKE_TOKEN: u64 = u64::MAX;
/// Packets read per `recvmmsg` call.
const BATCH: usize = 32;
/// Receive buffer per packet: larger than any RTP packet on an Ethernet path.
const BUF_LEN: usize = 2048;
/// How often a recorder hands its final frames to the recorder thread.
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// How often a worker looks for recorders that got no packets (and so were not drained).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Control messages to a worker.
#[derive(Debug)]
enum Cmd {
    /// A new session with its bound sockets.
    Add(u64, Box<Session>),
    /// Signalled RTP address of a leg.
    SetRemote(u64, Leg, SocketAddr),
    /// Negotiated codec and payload type.
    SetCodec(u64, Codec, u8),
    /// Start placing packets in a recorder; frame 0 is the instant given.
    StartRecording(u64, Instant),
    /// End the session; the reply carries the written recording, if any.
    Remove(u64, Option<FinishReply>),
    /// The relay is gone.
    Shutdown,
}

/// Reply to `finish`: `None` when no recording was started.
type FinishReply = oneshot::Sender<Option<Result<Written, MediaError>>>;

/// Per-leg relay state.
#[derive(Debug, Default)]
struct LegState {
    /// RTP address from SDP.
    signalled: Option<SocketAddr>,
    /// Source of the first RTP packet received (symmetric RTP).
    latched_rtp: Option<SocketAddr>,
    /// Source of the first RTCP packet received.
    latched_rtcp: Option<SocketAddr>,
    /// Sequence bookkeeping for the loss counter.
    seq: SeqStats,
}

impl LegState {
    /// Where RTP (or RTCP) for this leg goes: the latched source, else the signalled address.
    fn destination(&self, rtcp: bool) -> Option<SocketAddr> {
        if rtcp {
            self.latched_rtcp.or_else(|| {
                self.signalled
                    .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
            })
        } else {
            self.latched_rtp.or(self.signalled)
        }
    }
}

/// A session as the worker sees it.
#[derive(Debug)]
struct Session {
    /// SIP Call-ID, for logs.
    call_id: String,
    /// RTP ports of leg A and B.
    ports: [u16; 2],
    /// A RTP, A RTCP, B RTP, B RTCP.
    sockets: [UdpSocket; 4],
    /// Leg A and B.
    legs: [LegState; 2],
    /// Negotiated codec and its payload type.
    codec: Option<(Codec, u8)>,
    /// First G.711 codec seen in packets (for metadata when none was negotiated).
    seen_codec: Option<Codec>,
    /// Placement state once recording started.
    recording: Option<Recorder>,
    /// When the recorder's final frames are next handed to the recorder thread.
    next_drain: Instant,
}

impl Session {
    fn decode_for(&mut self, pt: u8) -> Option<Decode> {
        let codec = match Codec::from_payload_type(pt) {
            Some(c) => Some(c),
            None => self.codec.filter(|(_, p)| *p == pt).map(|(c, _)| c),
        }?;
        self.seen_codec.get_or_insert(codec);
        Some(codec.decode())
    }
}

/// One worker thread: owns the sockets of its sessions.
struct Worker {
    /// Readiness of all sockets and the eventfd.
    epoll: Epoll,
    /// Woken after each control message.
    wake: Arc<EventFd>,
    /// Control messages.
    rx: mpsc::Receiver<Cmd>,
    /// Counters, allocator, configuration.
    shared: Arc<Shared>,
    /// Recorded frames go here.
    writer: mpsc::Sender<WriterMsg>,
    /// Sessions by key.
    sessions: HashMap<u64, Session>,
}

/// Counters summed over one batch, published at its end.
#[derive(Default)]
struct BatchCounts {
    relayed: u64,
    rtcp: u64,
    lost: u64,
    dropped: u64,
    bytes: u64,
    late: u64,
}

impl Worker {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut recv_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut send_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut bufs = vec![[0u8; BUF_LEN]; BATCH];
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            if !self.apply_commands() {
                break;
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.drain_idle_recorders(now);
                next_sweep = now + SWEEP_EVERY;
            }
            let timeout_ms = next_sweep
                .saturating_duration_since(now)
                .as_millis()
                .clamp(1, 1000) as u16;
            let n = match self.epoll.wait(&mut events, EpollTimeout::from(timeout_ms)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "RTP relay epoll_wait failed; worker stops");
                    break;
                }
            };
            // Control messages sent before these packets arrived must be in force for
            // them (an address signalled, then the phone's first packet).
            if !self.apply_commands() {
                break;
            }
            let mut counts = BatchCounts::default();
            let now = Instant::now();
            for ev in &events[..n] {
                let token = ev.data();
                if token == WAKE_TOKEN {
                    let _ = self.wake.read();
                    continue;
                }
                let (key, idx) = (token >> 2, (token & 3) as usize);
                if let Some(s) = self.sessions.get_mut(&key) {
                    relay_socket(
                        s,
                        idx,
                        now,
                        &mut recv_hdrs,
                        &mut send_hdrs,
                        &mut bufs,
                        &mut counts,
                    );
                    // Each session hands over its final frames on its own schedule (its
                    // packets' phase), so the work is spread instead of one burst for
                    // all calls.
                    if now >= s.next_drain {
                        drain_session(key, s, now, &self.writer);
                    }
                }
            }
            let c = &self.shared.counters;
            for (v, a) in [
                (counts.relayed, &c.packets_relayed),
                (counts.rtcp, &c.rtcp_relayed),
                (counts.lost, &c.packets_lost),
                (counts.dropped, &c.packets_dropped),
                (counts.bytes, &c.bytes_relayed),
                (counts.late, &c.recording_late_packets),
            ] {
                if v > 0 {
                    a.fetch_add(v, Ordering::Relaxed);
                }
            }
        }
        // Shut down: close every session (recordings closed without a reply).
        let keys: Vec<u64> = self.sessions.keys().copied().collect();
        for key in keys {
            self.remove(key, None);
        }
    }

    /// Applies queued control messages; false when the worker must stop.
    fn apply_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
                Ok(cmd) => self.apply(cmd),
            }
        }
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(key, session) => {
                for (i, s) in session.sockets.iter().enumerate() {
                    let ev = EpollEvent::new(EpollFlags::EPOLLIN, key << 2 | i as u64);
                    if let Err(e) = self.epoll.add(s, ev) {
                        tracing::error!(call_id = %session.call_id, error = %e, "epoll_ctl add failed; no media for this call");
                    }
                }
                self.sessions.insert(key, *session);
            }
            Cmd::SetRemote(key, leg, addr) => {
                if let Some(s) = self.sessions.get_mut(&key) {
                    let l = &mut s.legs[leg as usize];
                    if l.signalled.is_some_and(|old| old != addr) {
                        // Re-signalled mid-call (re-INVITE: the phone moved or a transfer):
                        // latch again to whoever sends first from now on.
                        l.latched_rtp = None;
                        l.latched_rtcp = None;
                    }
                    tracing::debug!(call_id = %s.call_id, ?leg, %addr, "remote media address signalled");
                    l.signalled = Some(addr);
                }
            }
            Cmd::SetCodec(key, codec, pt) => {
                if let Some(s) = self.sessions.get_mut(&key) {
                    s.codec = Some((codec, pt));
                }
            }
            Cmd::StartRecording(key, start) => {
                if let Some(s) = self.sessions.get_mut(&key) {
                    s.recording = Some(Recorder::new(start));
                    // Spread the sessions' drain instants over the whole period: calls
                    // answered together must not all hand over their audio together.
                    let spread_us = key.wrapping_mul(7919) % DRAIN_EVERY.as_micros() as u64;
                    s.next_drain = start + DRAIN_EVERY + Duration::from_micros(spread_us);
                }
            }
            Cmd::Remove(key, reply) => self.remove(key, reply),
            Cmd::Shutdown => {}
        }
    }

    fn remove(&mut self, key: u64, reply: Option<FinishReply>) {
        let Some(mut s) = self.sessions.remove(&key) else {
            if let Some(r) = reply {
                let _ = r.send(None);
            }
            return;
        };
        for sock in &s.sockets {
            let _ = self.epoll.delete(sock);
        }
        let ports = s.ports;
        let recorder = s.recording.take();
        let codec = s
            .codec
            .map(|(c, _)| c)
            .or(s.seen_codec)
            .unwrap_or(Codec::Pcmu);
        let call_id = std::mem::take(&mut s.call_id);
        drop(s); // closes the four sockets before their ports are handed out again
        {
            let mut alloc = self.shared.alloc.lock().unwrap_or_else(|e| e.into_inner());
            alloc.free.extend(ports);
        }
        self.shared
            .counters
            .active_sessions
            .fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(%call_id, port_a = ports[0], port_b = ports[1], "media session ended, ports released");
        match recorder {
            Some(mut rec) => {
                let tail = rec.finish(Instant::now());
                if !tail.is_empty() {
                    let _ = self.writer.send(WriterMsg::Data { key, bytes: tail });
                }
                let stats = rec.stats();
                tracing::debug!(%call_id, placed = stats.placed, too_late = stats.too_late, ignored = stats.ignored, reanchored = stats.reanchored, "recorder closed");
                let msg = WriterMsg::Close {
                    key,
                    codec: codec.name(),
                    reply,
                };
                if let Err(mpsc::SendError(WriterMsg::Close { reply: Some(r), .. })) =
                    self.writer.send(msg)
                {
                    let _ = r.send(Some(Err(MediaError::RelayStopped)));
                }
            }
            None => {
                if let Some(r) = reply {
                    let _ = r.send(None);
                }
            }
        }
    }

    /// Drains the recorders of sessions that received no packet for a while (silence,
    /// hold): their frames are final too.
    fn drain_idle_recorders(&mut self, now: Instant) {
        for (key, s) in self.sessions.iter_mut() {
            if now >= s.next_drain + DRAIN_EVERY {
                drain_session(*key, s, now, &self.writer);
            }
        }
    }
}

/// Hands a session's final recorded frames to the recorder thread.
fn drain_session(key: u64, s: &mut Session, now: Instant, writer: &mpsc::Sender<WriterMsg>) {
    s.next_drain = now + DRAIN_EVERY;
    if let Some(rec) = s.recording.as_mut() {
        let bytes = rec.drain(now);
        if !bytes.is_empty() {
            let _ = writer.send(WriterMsg::Data { key, bytes });
        }
    }
}

/// Reads everything queued on socket `idx` of a session and forwards it.
fn relay_socket(
    s: &mut Session,
    idx: usize,
    now: Instant,
    recv_hdrs: &mut MultiHeaders<SockaddrStorage>,
    send_hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [[u8; BUF_LEN]],
    counts: &mut BatchCounts,
) {
    let leg = if idx < 2 { Leg::A } else { Leg::B };
    let other = 1 - leg as usize;
    let rtcp = idx % 2 == 1;
    let fd = s.sockets[idx].as_raw_fd();
    let mut meta = [(0usize, None::<SocketAddr>); BATCH];
    // Bounded: at most 8 batches per readiness event, so one flooded socket cannot
    // starve the others (epoll is level-triggered and reports it again).
    for _ in 0..8 {
        let n = match recv_batch(fd, recv_hdrs, bufs, &mut meta) {
            Ok(n) => n,
            Err(_) => break, // EAGAIN: drained
        };
        if n == 0 {
            break;
        }
        let mut forward = [0usize; BATCH];
        let mut nf = 0;
        for (i, &(len, src)) in meta[..n].iter().enumerate() {
            let Some(src) = src else {
                counts.dropped += 1;
                continue;
            };
            let pkt = &bufs[i][..len];
            let state = &mut s.legs[leg as usize];
            let latched = if rtcp {
                &mut state.latched_rtcp
            } else {
                &mut state.latched_rtp
            };
            match *latched {
                Some(a) if a != src => {
                    counts.dropped += 1;
                    continue;
                }
                Some(_) => {}
                None => {
                    let valid = if rtcp {
                        rtp::parse_rtcp(pkt).is_ok()
                    } else {
                        rtp::parse(pkt).is_ok()
                    };
                    if !valid {
                        counts.dropped += 1;
                        continue;
                    }
                    tracing::debug!(call_id = %s.call_id, ?leg, rtcp, %src, "latched to media source (symmetric RTP)");
                    *latched = Some(src);
                }
            }
            if rtcp {
                if rtp::parse_rtcp(pkt).is_err() {
                    counts.dropped += 1;
                    continue;
                }
            } else {
                let Ok(h) = rtp::parse(pkt) else {
                    counts.dropped += 1;
                    continue;
                };
                if rtp::is_muxed_rtcp(&h) {
                    // RTCP multiplexed on the RTP port (RFC 5761): relayed as it is, no
                    // sequence numbers to count, nothing to record.
                    forward[nf] = i;
                    nf += 1;
                    continue;
                }
                counts.lost += s.legs[leg as usize].seq.update(h.ssrc, h.sequence);
                if s.recording.is_some() {
                    let decode = s.decode_for(h.payload_type);
                    if let Some(rec) = s.recording.as_mut() {
                        let before = rec.stats().too_late;
                        rec.push(leg, h.ssrc, h.timestamp, decode, h.payload(pkt), now);
                        counts.late += rec.stats().too_late - before;
                    }
                }
            }
            forward[nf] = i;
            nf += 1;
        }
        if nf > 0 {
            match s.legs[other].destination(rtcp) {
                None => counts.dropped += nf as u64,
                Some(dest) => {
                    let out = &s.sockets[other * 2 + rtcp as usize];
                    let sent = send_batch(out, send_hdrs, bufs, &meta, &forward[..nf], dest);
                    let bytes: u64 = forward[..sent].iter().map(|&i| meta[i].0 as u64).sum();
                    if rtcp {
                        counts.rtcp += sent as u64;
                    } else {
                        counts.relayed += sent as u64;
                    }
                    counts.bytes += bytes;
                    counts.dropped += (nf - sent) as u64;
                }
            }
        }
        if n < BATCH {
            break;
        }
    }
}

/// One `recvmmsg` (non-blocking): fills `meta` with (length, source) per packet.
fn recv_batch(
    fd: std::os::fd::RawFd,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [[u8; BUF_LEN]],
    meta: &mut [(usize, Option<SocketAddr>); BATCH],
) -> nix::Result<usize> {
    let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .take(BATCH)
        .map(|b| [std::io::IoSliceMut::new(&mut b[..])])
        .collect();
    let res = recvmmsg(fd, hdrs, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
    let mut n = 0;
    for msg in res {
        meta[n] = (msg.bytes, msg.address.and_then(|a| to_std(&a)));
        n += 1;
    }
    Ok(n)
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Sends the packets `which` (indexes into `bufs`) to `dest`: one `send_to`, or one
/// `sendmmsg` for several. Returns how many were sent.
fn send_batch(
    sock: &UdpSocket,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &[[u8; BUF_LEN]],
    meta: &[(usize, Option<SocketAddr>); BATCH],
    which: &[usize],
    dest: SocketAddr,
) -> usize {
    if let [i] = which {
        return usize::from(sock.send_to(&bufs[*i][..meta[*i].0], dest).is_ok());
    }
    let iovs: Vec<[std::io::IoSlice<'_>; 1]> = which
        .iter()
        .map(|&i| [std::io::IoSlice::new(&bufs[i][..meta[i].0])])
        .collect();
    let addr = SockaddrStorage::from(dest);
    let addrs: Vec<Option<SockaddrStorage>> = vec![Some(addr); which.len()];
    match sendmmsg(
        sock.as_raw_fd(),
        hdrs,
        &iovs,
        &addrs,
        [],
        MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(res) => res.count(),
        Err(_) => 0,
    }
}

/// Messages to the recorder thread.
#[derive(Debug)]
enum WriterMsg {
    /// A recording file was created (header placeholder written).
    Open {
        /// Session key.
        key: u64,
        /// Recording id.
        id: String,
        /// File path.
        path: PathBuf,
        /// The open file, positioned after the header.
        file: File,
    },
    /// Final frames to append.
    Data {
        /// Session key.
        key: u64,
        /// Little-endian interleaved samples.
        bytes: Vec<u8>,
    },
    /// No more frames: flush and hand the file back (or close it if nobody waits).
    Close {
        /// Session key.
        key: u64,
        /// Codec name for the metadata.
        codec: &'static str,
        /// Where `finish` waits.
        reply: Option<FinishReply>,
    },
}

/// A recording whose samples are all written, before its header is fixed.
#[derive(Debug)]
struct Written {
    /// Recording id.
    id: String,
    /// File path.
    path: PathBuf,
    /// The file, flushed.
    file: File,
    /// Bytes of samples after the header.
    data_len: u64,
    /// Codec name.
    codec: &'static str,
}

/// A recording being written by the recorder thread.
struct OpenFile {
    /// Recording id.
    id: String,
    /// File path.
    path: PathBuf,
    /// Buffered writer (64 KiB).
    out: BufWriter<File>,
    /// Bytes of samples written so far.
    data_len: u64,
    /// First write error, reported at close.
    error: Option<std::io::Error>,
}

/// The recorder thread: owns the open recording files. It blocks for the first
/// message, then takes everything queued and sleeps a little before waiting again, so
/// that under load it wakes some 50 times a second rather than once per chunk (each
/// wake-up would take a core away from the relay workers for a moment).
fn run_writer(rx: mpsc::Receiver<WriterMsg>) {
    let mut files: HashMap<u64, OpenFile> = HashMap::new();
    while let Ok(first) = rx.recv() {
        handle_writer_msg(&mut files, first);
        loop {
            match rx.try_recv() {
                Ok(msg) => handle_writer_msg(&mut files, msg),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        std::thread::sleep(WRITER_PAUSE);
    }
}

/// How long the recorder thread pauses after emptying its queue.
const WRITER_PAUSE: Duration = Duration::from_millis(20);

fn handle_writer_msg(files: &mut HashMap<u64, OpenFile>, msg: WriterMsg) {
    match msg {
        WriterMsg::Open {
            key,
            id,
            path,
            file,
        } => {
            files.insert(
                key,
                OpenFile {
                    id,
                    path,
                    out: BufWriter::with_capacity(64 * 1024, file),
                    data_len: 0,
                    error: None,
                },
            );
        }
        WriterMsg::Data { key, bytes } => {
            if let Some(f) = files.get_mut(&key) {
                if f.error.is_none() {
                    match f.out.write_all(&bytes) {
                        Ok(()) => f.data_len += bytes.len() as u64,
                        Err(e) => {
                            tracing::error!(path = %f.path.display(), error = %e, "recording write failed");
                            f.error = Some(e);
                        }
                    }
                }
            }
        }
        WriterMsg::Close { key, codec, reply } => {
            let Some(f) = files.remove(&key) else {
                if let Some(r) = reply {
                    let _ = r.send(None);
                }
                return;
            };
            let result = close_file(f, codec);
            match reply {
                Some(r) => {
                    let _ = r.send(Some(result));
                }
                None => {
                    // Session dropped without finish: fix the header, no fsync.
                    if let Ok(w) = result {
                        if let Err(e) = finalize(w, false) {
                            tracing::error!(error = %e, "closing abandoned recording failed");
                        }
                    }
                }
            }
        }
    }
}

fn close_file(f: OpenFile, codec: &'static str) -> Result<Written, MediaError> {
    let io = |what, source| MediaError::RecordingIo {
        path: f.path.clone(),
        what,
        source,
    };
    if let Some(e) = f.error {
        return Err(io("write", e));
    }
    let file = f
        .out
        .into_inner()
        .map_err(|e| io("flush", e.into_error()))?;
    Ok(Written {
        id: f.id,
        path: f.path,
        file,
        data_len: f.data_len,
        codec,
    })
}

/// Fixes the header sizes, fsyncs the file and its directory (when `sync`), and
/// computes the metadata by reading the file back.
fn finalize(w: Written, sync: bool) -> Result<RecordingFile, MediaError> {
    let Written {
        id,
        path,
        mut file,
        data_len,
        codec,
    } = w;
    let io = |what, source| MediaError::RecordingIo {
        path: path.clone(),
        what,
        source,
    };
    // A WAV data chunk holds at most 4 GiB (≈ 37 h at 32 kB/s); longer calls keep the
    // samples but the size fields saturate.
    let header = wav::wav_header(u32::try_from(data_len).unwrap_or(u32::MAX - 36));
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header))
        .map_err(|e| io("write header", e))?;
    if sync {
        file.sync_all().map_err(|e| io("fsync", e))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(|e| io("fsync directory", e))?;
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io("read back", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io("read back", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let frames = data_len / wav::FRAME_BYTES as u64;
    Ok(RecordingFile {
        id,
        path,
        sha256: hex::encode(hasher.finalize()),
        size,
        duration_ms: frames * 1000 / wav::SAMPLE_RATE as u64,
        codec: codec.to_string(),
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_payload_types() {
        assert_eq!(Codec::from_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(101), None);
        assert_eq!(Codec::Pcmu.name(), "PCMU");
        assert_eq!(Codec::Pcma.name(), "PCMA");
    }

    #[test]
    fn recording_ids_are_file_name_safe() {
        assert!(valid_recording_id("0193a-b_c.1"));
        for bad in ["", ".hidden", "../x", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_recording_id(bad), "{bad:?}");
        }
    }

    /// A range must hold two even/odd pairs (one call).
    #[tokio::test]
    async fn port_range_validation() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |low, high| RelayConfig {
            bind_ip: "127.0.0.1".parse().unwrap(),
            advertised_ip: "127.0.0.1".parse().unwrap(),
            port_low: low,
            port_high: high,
            recordings_dir: dir.path().to_path_buf(),
        };
        assert!(matches!(
            Relay::start(cfg(20000, 20002)).await,
            Err(MediaError::InvalidPortRange { .. })
        ));
        assert!(matches!(
            Relay::start(cfg(20010, 20000)).await,
            Err(MediaError::InvalidPortRange { .. })
        ));
    }
}
