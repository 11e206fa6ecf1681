//! Call recording: placing G.711 packets of both legs on one timeline and the WAV
//! (RIFF) container.
//!
//! ```text
//!   leg A packets ─┐  decode G.711     ┌──────────── jitter window ─────────┐
//!                  ├─────────────────► │ interleaved i16 frames [A, B] ...  │ ─► drain(now) ─► bytes
//!   leg B packets ─┘  place by RTP ts  └── base (flushed up to here)         │     (to the file writer)
//! ```
//!
//! [`Recorder`] is a pure state machine: the relay passes every packet with `now`
//! (monotonic) and asks for the frames that are old enough to be final. Each leg is
//! anchored when its first packet arrives: that packet's samples go to the frame that
//! corresponds to its arrival time since the recording started; every later packet of
//! the leg goes to `anchor + (timestamp − first timestamp)` using an extended (wrap-free)
//! timestamp, so reordered packets land in place, lost packets and pauses stay silent
//! (zero), and the two channels stay aligned. Frames older than the jitter window are
//! final; a packet arriving later than that loses the part that was already written.
//! A timestamp jump of more than [`MAX_JUMP_FRAMES`] (or a new SSRC) re-anchors the leg
//! at the arrival time, as a phone's clock restart would otherwise leave a long gap or
//! overwrite the past.

use std::time::Instant;

use crate::g711::{ALAW_TABLE, ULAW_TABLE};

/// Sample rate of G.711 and of the recording.
pub const SAMPLE_RATE: u32 = 8000;
/// Channels: 1 = caller (leg A), 2 = callee (leg B).
pub const CHANNELS: u16 = 2;
/// Bytes per frame (two 16-bit samples).
pub const FRAME_BYTES: usize = 4;
/// Size of the canonical PCM WAV header written by [`wav_header`].
pub const WAV_HEADER_LEN: usize = 44;
/// How long the recorder waits for late or reordered packets before frames are final: 200 ms.
pub const JITTER_WINDOW_FRAMES: u64 = 1600;
/// A packet more than this far (5 s) ahead of the arrival clock or behind what was
/// written re-anchors its leg.
pub const MAX_JUMP_FRAMES: i64 = 5 * SAMPLE_RATE as i64;

/// The 44-byte RIFF/WAVE header for 16-bit PCM, 8 kHz, 2 channels, with `data_len`
/// bytes of samples (the RIFF size field is `36 + data_len`).
pub fn wav_header(data_len: u32) -> [u8; WAV_HEADER_LEN] {
    let mut h = [0u8; WAV_HEADER_LEN];
    let byte_rate = SAMPLE_RATE * CHANNELS as u32 * 2;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&36u32.saturating_add(data_len).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&CHANNELS.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&(CHANNELS * 2).to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// One of the two legs of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// Faces the caller; channel 1.
    A = 0,
    /// Faces the callee; channel 2.
    B = 1,
}

/// How the payload of a packet is to be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// G.711 µ-law.
    Ulaw,
    /// G.711 A-law.
    Alaw,
}

/// Per-leg placement state.
#[derive(Debug, Clone, Default)]
struct LegClock {
    /// Set once the first packet of the leg (or of its current SSRC) arrived.
    anchored: bool,
    /// SSRC the anchor belongs to.
    ssrc: u32,
    /// Timestamp (low 32 bits) of the highest packet seen.
    last_ts: u32,
    /// Extended timestamp of that packet (no wrap).
    last_ext: i64,
    /// Frame index of extended timestamp 0.
    offset: i64,
}

/// Counters of what happened to packets in the recording (not in the relay).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Packets placed (fully or in part).
    pub placed: u64,
    /// Packets too late for the jitter window (dropped from the recording).
    pub too_late: u64,
    /// Packets with a payload type that is not G.711 (telephone-event, comfort noise, …).
    pub ignored: u64,
    /// Times a leg was re-anchored after a timestamp jump or SSRC change.
    pub reanchored: u64,
}

/// Places decoded packets of both legs on a common 8 kHz timeline (see module doc).
#[derive(Debug)]
pub struct Recorder {
    /// When the recording started (call answered): frame 0.
    start: Instant,
    /// Frame index of `buf[0]`: everything before was handed out by `drain`.
    base: u64,
    /// Interleaved samples [A, B] of frames `base..`, zero where nothing arrived.
    buf: Vec<i16>,
    /// Placement state of leg A and B.
    legs: [LegClock; 2],
    /// What happened to packets.
    stats: RecorderStats,
}

impl Recorder {
    /// A recorder whose frame 0 is `start`.
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            base: 0,
            buf: Vec::with_capacity(2 * 2 * JITTER_WINDOW_FRAMES as usize),
            legs: [LegClock::default(), LegClock::default()],
            stats: RecorderStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    /// Frames handed out so far (the recording's length once finished).
    pub fn frames_written(&self) -> u64 {
        self.base
    }

    fn now_frame(&self, now: Instant) -> i64 {
        let d = now.saturating_duration_since(self.start);
        (d.as_micros() as i64 * SAMPLE_RATE as i64) / 1_000_000
    }

    /// Places one packet's payload. `decode` is `None` for payload types that are not
    /// audio we know (ignored).
    pub fn push(
        &mut self,
        leg: Leg,
        ssrc: u32,
        timestamp: u32,
        decode: Option<Decode>,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(decode) = decode else {
            self.stats.ignored += 1;
            return;
        };
        if payload.is_empty() {
            return;
        }
        let now_frame = self.now_frame(now);
        let base = self.base as i64;
        let clock = &mut self.legs[leg as usize];
        let mut pos = if clock.anchored && clock.ssrc == ssrc {
            let delta = timestamp.wrapping_sub(clock.last_ts) as i32 as i64;
            let ext = clock.last_ext + delta;
            if delta > 0 {
                clock.last_ts = timestamp;
                clock.last_ext = ext;
            }
            Some(clock.offset + ext)
        } else {
            None
        };
        if let Some(p) = pos {
            if p > now_frame + MAX_JUMP_FRAMES || p < base - MAX_JUMP_FRAMES {
                self.stats.reanchored += 1;
                pos = None;
            }
        }
        let pos = match pos {
            Some(p) => p,
            None => {
                // (Re-)anchor: this packet starts at its arrival frame.
                *clock = LegClock {
                    anchored: true,
                    ssrc,
                    last_ts: timestamp,
                    last_ext: 0,
                    offset: now_frame.max(base),
                };
                clock.offset
            }
        };
        let table = match decode {
            Decode::Ulaw => &ULAW_TABLE,
            Decode::Alaw => &ALAW_TABLE,
        };
        // Skip the part that is already final (late packet).
        let skip = (base - pos).max(0) as usize;
        if skip >= payload.len() {
            self.stats.too_late += 1;
            return;
        }
        let start = (pos + skip as i64 - base) as usize;
        let end = start + payload.len() - skip;
        if self.buf.len() < 2 * end {
            self.buf.resize(2 * end, 0);
        }
        let ch = leg as usize;
        for (i, &b) in payload[skip..].iter().enumerate() {
            self.buf[2 * (start + i) + ch] = table[b as usize];
        }
        self.stats.placed += 1;
    }

    /// Frames that are final at `now` (older than the jitter window), as little-endian
    /// interleaved 16-bit samples; silence where nothing arrived. Empty when none.
    pub fn drain(&mut self, now: Instant) -> Vec<u8> {
        let until = (self.now_frame(now) - JITTER_WINDOW_FRAMES as i64).max(0) as u64;
        self.drain_until(until)
    }

    /// Every remaining frame up to `now` or the last placed sample, whichever is later.
    pub fn finish(&mut self, now: Instant) -> Vec<u8> {
        let placed_end = self.base + (self.buf.len() / 2) as u64;
        let until = (self.now_frame(now).max(0) as u64).max(placed_end);
        self.drain_until(until)
    }

    fn drain_until(&mut self, until: u64) -> Vec<u8> {
        if until <= self.base {
            return Vec::new();
        }
        let frames = (until - self.base) as usize;
        let have = (self.buf.len() / 2).min(frames);
        let mut out = vec![0u8; frames * FRAME_BYTES];
        for (o, s) in out.chunks_exact_mut(2).zip(&self.buf[..2 * have]) {
            o.copy_from_slice(&s.to_le_bytes());
        }
        self.buf.drain(..2 * have);
        self.base = until;
        out
    }
}

/// Splits interleaved little-endian 16-bit stereo samples (the WAV data chunk) into
/// channel 1 (caller) and channel 2 (callee).
pub fn split_channels(data: &[u8]) -> [Vec<i16>; 2] {
    let mut a = Vec::with_capacity(data.len() / FRAME_BYTES);
    let mut b = Vec::with_capacity(data.len() / FRAME_BYTES);
    for f in data.chunks_exact(FRAME_BYTES) {
        a.push(i16::from_le_bytes([f[0], f[1]]));
        b.push(i16::from_le_bytes([f[2], f[3]]));
    }
    [a, b]
}

/// Power of one frequency in 8 kHz samples (Goertzel algorithm), for checking what a
/// recording contains (tests, the interop tone check).
pub fn goertzel_power(samples: &[i16], freq: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / SAMPLE_RATE as f64).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The candidate frequency with the most power in `samples` (`None` if no candidates).
pub fn dominant_frequency(samples: &[i16], candidates: &[f64]) -> Option<f64> {
    candidates
        .iter()
        .copied()
        .max_by(|x, y| goertzel_power(samples, *x).total_cmp(&goertzel_power(samples, *y)))
}

#[cfg(test)]
mod tests;
