//! RTP/RTCP relay between the two legs of a call, with recording (skeleton: API fixed,
//! implementation in progress).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::MediaError;

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
    /// Directory where finished WAV files are written.
    pub recordings_dir: PathBuf,
}

/// Counters for metrics; a snapshot of the relay's atomics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// RTP packets forwarded to the other leg.
    pub packets_relayed: u64,
    /// RTCP packets forwarded to the other leg.
    pub rtcp_relayed: u64,
    /// RTP packets missing in the sequence numbers received (RFC 3550 §6.4.1 / A.3).
    pub packets_lost: u64,
    /// Packets dropped: wrong source after latching, not RTP/RTCP, or no destination yet.
    pub packets_dropped: u64,
    /// Bytes of RTP and RTCP forwarded.
    pub bytes_relayed: u64,
    /// Sessions holding ports now.
    pub active_sessions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    packets_relayed: AtomicU64,
    rtcp_relayed: AtomicU64,
    packets_lost: AtomicU64,
    packets_dropped: AtomicU64,
    bytes_relayed: AtomicU64,
    active_sessions: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    cfg: RelayConfig,
    counters: Counters,
    free: Mutex<std::collections::VecDeque<u16>>,
}

/// The RTP relay: one per service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    /// Validates the port range and starts the relay.
    pub async fn start(cfg: RelayConfig) -> Result<Relay, MediaError> {
        if cfg.port_low > cfg.port_high {
            return Err(MediaError::InvalidPortRange {
                low: cfg.port_low,
                high: cfg.port_high,
            });
        }
        let first = cfg.port_low + (cfg.port_low % 2);
        let free = (first..cfg.port_high).step_by(2).collect();
        Ok(Relay {
            inner: Arc::new(Inner {
                cfg,
                counters: Counters::default(),
                free: Mutex::new(free),
            }),
        })
    }

    /// Reserve two RTP/RTCP port pairs for one call: leg A faces the caller, leg B the callee.
    pub fn allocate(&self, call_id: &str) -> Result<MediaSession, MediaError> {
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < 2 {
            return Err(MediaError::PortsExhausted);
        }
        let a = free.pop_front().ok_or(MediaError::PortsExhausted)?;
        let b = free.pop_front().ok_or(MediaError::PortsExhausted)?;
        self.inner
            .counters
            .active_sessions
            .fetch_add(1, Ordering::Relaxed);
        Ok(MediaSession {
            relay: self.clone(),
            call_id: call_id.to_string(),
            port_a: a,
            port_b: b,
        })
    }

    /// Snapshot of the counters (for metrics).
    pub fn stats(&self) -> RelayStats {
        let c = &self.inner.counters;
        RelayStats {
            packets_relayed: c.packets_relayed.load(Ordering::Relaxed),
            rtcp_relayed: c.rtcp_relayed.load(Ordering::Relaxed),
            packets_lost: c.packets_lost.load(Ordering::Relaxed),
            packets_dropped: c.packets_dropped.load(Ordering::Relaxed),
            bytes_relayed: c.bytes_relayed.load(Ordering::Relaxed),
            active_sessions: c.active_sessions.load(Ordering::Relaxed),
        }
    }
}

/// The media of one call: two port pairs on the relay.
#[derive(Debug)]
pub struct MediaSession {
    relay: Relay,
    call_id: String,
    port_a: u16,
    port_b: u16,
}

impl MediaSession {
    /// advertised_ip + RTP port for the SDP sent to the caller.
    pub fn local_a(&self) -> SocketAddr {
        SocketAddr::new(self.relay.inner.cfg.advertised_ip, self.port_a)
    }

    /// advertised_ip + RTP port for the SDP sent to the callee.
    pub fn local_b(&self) -> SocketAddr {
        SocketAddr::new(self.relay.inner.cfg.advertised_ip, self.port_b)
    }

    /// Where to send media for leg A as signalled in SDP (the relay latches to the real source).
    pub fn set_remote_a(&self, rtp: SocketAddr) {
        let _ = rtp;
    }

    /// Where to send media for leg B as signalled in SDP (the relay latches to the real source).
    pub fn set_remote_b(&self, rtp: SocketAddr) {
        let _ = rtp;
    }

    /// The negotiated codec (from the callee's SDP answer) and its payload type number.
    pub fn set_codec(&self, codec: Codec, payload_type: u8) {
        let _ = (codec, payload_type);
    }

    /// Start writing the two-channel WAV (channel 1 = caller A, channel 2 = callee B) at answer.
    pub fn start_recording(&self, recording_id: &str) -> Result<(), MediaError> {
        let _ = (recording_id, &self.call_id);
        Ok(())
    }

    /// Stop relaying, release the ports, finish the WAV; Some(file) if recording was started.
    pub async fn finish(self) -> Result<Option<RecordingFile>, MediaError> {
        let mut free = self
            .relay
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        free.push_back(self.port_a);
        free.push_back(self.port_b);
        self.relay
            .inner
            .counters
            .active_sessions
            .fetch_sub(1, Ordering::Relaxed);
        Ok(None)
    }
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
