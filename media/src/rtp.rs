//! RTP and RTCP framing (RFC 3550 §5.1, §6.4) and per-stream statistics.
//!
//! The header parser is our own zero-copy `parse(&[u8]) -> Result<RtpHeader, ParseError>`
//! rather than the webrtc-rs `rtp` crate: its `Unmarshal` copies the payload into a
//! `Bytes` and the CSRC list and extensions into `Vec`s (allocations on every packet),
//! while the relay needs only the fixed header fields and the payload's offset, for
//! 100,000+ packets per second on two cores. It also keeps webrtc-util's dependency
//! tree out of the appliance. The parser never panics: every length is checked first.
//!
//! [`SeqStats`] implements the sequence-number bookkeeping of RFC 3550 Appendix A.1/A.3
//! (extended highest sequence, packets expected and lost), and [`Jitter`] the
//! interarrival jitter estimator of RFC 3550 §6.4.1 / A.8.

/// Length of the fixed RTP header (RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;

/// Why bytes are not an RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than the fixed header (or than the lengths it announces).
    #[error("packet too short: {len} bytes, need {need}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// The version field is not 2 (RFC 3550 §5.1).
    #[error("RTP/RTCP version {version}, expected 2")]
    BadVersion {
        /// Version found.
        version: u8,
    },
    /// The padding count is zero or larger than the payload (RFC 3550 §5.1, P bit).
    #[error("invalid padding length {padding} for {available} payload bytes")]
    BadPadding {
        /// The last byte of the packet.
        padding: usize,
        /// Bytes after the header.
        available: usize,
    },
}

/// The fields of an RTP header the relay and the recorder use; the payload stays in
/// the caller's buffer at `payload_offset..payload_offset + payload_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// M bit: for audio, the first packet of a talkspurt.
    pub marker: bool,
    /// Payload type (7 bits): 0 = PCMU, 8 = PCMA, others dynamic or unknown.
    pub payload_type: u8,
    /// Sequence number; increments by one per packet, wraps at 2^16.
    pub sequence: u16,
    /// Sampling instant of the first payload octet (8 kHz clock for G.711), wraps at 2^32.
    pub timestamp: u32,
    /// Synchronisation source: identifies the stream.
    pub ssrc: u32,
    /// Offset of the payload after the CSRC list and header extension.
    pub payload_offset: usize,
    /// Payload length without padding.
    pub payload_len: usize,
}

impl RtpHeader {
    /// The payload bytes of `packet` (the buffer this header was parsed from).
    pub fn payload<'a>(&self, packet: &'a [u8]) -> &'a [u8] {
        packet
            .get(self.payload_offset..self.payload_offset + self.payload_len)
            .unwrap_or(&[])
    }
}

/// Parses an RTP packet header (RFC 3550 §5.1, §5.3.1 for the extension).
pub fn parse(buf: &[u8]) -> Result<RtpHeader, ParseError> {
    if buf.len() < RTP_HEADER_LEN {
        return Err(ParseError::TooShort {
            len: buf.len(),
            need: RTP_HEADER_LEN,
        });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(ParseError::BadVersion { version });
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let csrc_count = (buf[0] & 0x0f) as usize;
    let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
    if extension {
        // 16-bit profile-defined id, 16-bit length in 32-bit words, then the words.
        let need = offset + 4;
        if buf.len() < need {
            return Err(ParseError::TooShort {
                len: buf.len(),
                need,
            });
        }
        let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]) as usize;
        offset = need + 4 * words;
    }
    if buf.len() < offset {
        return Err(ParseError::TooShort {
            len: buf.len(),
            need: offset,
        });
    }
    let mut payload_len = buf.len() - offset;
    if padding {
        let pad = buf[buf.len() - 1] as usize;
        if pad == 0 || pad > payload_len {
            return Err(ParseError::BadPadding {
                padding: pad,
                available: payload_len,
            });
        }
        payload_len -= pad;
    }
    Ok(RtpHeader {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7f,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload_offset: offset,
        payload_len,
    })
}

/// Writes a fixed 12-byte RTP header (version 2, no padding, extension or CSRCs).
pub fn write_header(
    out: &mut [u8; RTP_HEADER_LEN],
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
) {
    out[0] = 0x80;
    out[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// Whether an "RTP" header read on an RTP port is really RTCP multiplexed on it
/// (RFC 5761 §4: RTCP packet types 200-204 read as marker + payload type 72-76).
pub fn is_muxed_rtcp(h: &RtpHeader) -> bool {
    h.marker && (72..=76).contains(&h.payload_type)
}

/// The first header of an RTCP compound packet (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpHeader {
    /// Packet type: 200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP.
    pub packet_type: u8,
    /// Length of this RTCP packet in bytes (from the 32-bit word count).
    pub length: usize,
}

/// Checks that bytes start like an RTCP packet (version 2, plausible length);
/// the relay forwards RTCP unchanged and needs no more.
pub fn parse_rtcp(buf: &[u8]) -> Result<RtcpHeader, ParseError> {
    if buf.len() < 8 {
        return Err(ParseError::TooShort {
            len: buf.len(),
            need: 8,
        });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(ParseError::BadVersion { version });
    }
    let length = (u16::from_be_bytes([buf[2], buf[3]]) as usize + 1) * 4;
    if buf.len() < length {
        return Err(ParseError::TooShort {
            len: buf.len(),
            need: length,
        });
    }
    Ok(RtcpHeader {
        packet_type: buf[1],
        length,
    })
}

/// A jump in sequence numbers larger than this is a restart of the stream (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Packets this far behind the highest are late/duplicates rather than a restart (A.1).
const MAX_MISORDER: u16 = 100;

/// Sequence bookkeeping of one RTP stream (RFC 3550 Appendix A.1 and A.3).
#[derive(Debug, Clone, Default)]
pub struct SeqStats {
    /// Whether a first packet was seen.
    started: bool,
    /// SSRC of the stream; a new SSRC restarts the counts.
    ssrc: u32,
    /// Highest sequence number seen (low 16 bits).
    max_seq: u16,
    /// Wrap-arounds of the sequence number, times 2^16.
    cycles: u64,
    /// First extended sequence number of the current run.
    base_seq: u64,
    /// Packets received in the current run (duplicates included, as in A.3).
    received: u64,
    /// Losses of earlier runs (before a restart or SSRC change).
    lost_before: u64,
}

impl SeqStats {
    /// Accounts one packet; returns how many packets are newly known lost (for a counter).
    pub fn update(&mut self, ssrc: u32, seq: u16) -> u64 {
        let before = self.lost();
        if !self.started || ssrc != self.ssrc {
            self.restart(ssrc, seq);
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles += 1 << 16;
                }
                self.max_seq = seq;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // A big jump: the sender restarted its sequence (A.1 would wait for a
                // second packet; a relay keeps it simple and restarts at once).
                self.restart(ssrc, seq);
            }
            // else: late or duplicate packet, counted below.
        }
        self.received += 1;
        self.lost().saturating_sub(before)
    }

    fn restart(&mut self, ssrc: u32, seq: u16) {
        self.lost_before = self.lost();
        self.started = true;
        self.ssrc = ssrc;
        self.max_seq = seq;
        self.cycles = 0;
        self.base_seq = seq as u64;
        self.received = 0;
    }

    /// Packets expected in the current run: extended highest − first + 1 (A.3).
    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        (self.cycles + self.max_seq as u64) - self.base_seq + 1
    }

    /// Cumulative number of packets lost (never negative; duplicates can hide losses, A.3).
    pub fn lost(&self) -> u64 {
        self.lost_before + self.expected().saturating_sub(self.received)
    }
}

/// RFC 3550 §6.4.1 interarrival jitter, in the units of the transit times given.
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    /// Transit time of the previous packet.
    last_transit: Option<i64>,
    /// The running estimate, times 16 (A.8 keeps it scaled to avoid rounding).
    scaled: i64,
}

impl Jitter {
    /// Adds one packet's transit time (arrival − sending instant, any fixed unit).
    pub fn update(&mut self, transit: i64) {
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // J += (|D| − J)/16, with J kept ×16 (RFC 3550 A.8).
            self.scaled += d - ((self.scaled + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// The current jitter estimate in the unit of the transit times.
    pub fn value(&self) -> i64 {
        self.scaled >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; RTP_HEADER_LEN];
        write_header(&mut h, false, pt, seq, ts, ssrc);
        let mut v = h.to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// RFC 3550 §5.1: fixed header fields round-trip.
    #[test]
    fn parses_fixed_header() {
        let p = packet(8, 0xfffe, 0xdead_beef, 0x1234_5678, &[1, 2, 3]);
        let h = parse(&p).unwrap();
        assert_eq!(h.payload_type, 8);
        assert_eq!(h.sequence, 0xfffe);
        assert_eq!(h.timestamp, 0xdead_beef);
        assert_eq!(h.ssrc, 0x1234_5678);
        assert!(!h.marker);
        assert_eq!(h.payload(&p), &[1, 2, 3]);
    }

    /// RFC 3550 §5.1 (CC, P) and §5.3.1 (X): CSRCs, extension and padding are skipped.
    #[test]
    fn skips_csrc_extension_and_padding() {
        let mut p = packet(0, 1, 2, 3, &[]);
        p[0] |= 0x20 | 0x10 | 2; // P, X, CC = 2
        p.extend_from_slice(&[0; 8]); // two CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension, 1 word
        p.extend_from_slice(&[7, 7, 0, 2]); // payload 7 7, then 2 bytes of padding
        let h = parse(&p).unwrap();
        assert_eq!(h.payload_offset, 12 + 8 + 8);
        assert_eq!(h.payload(&p), &[7, 7]);
    }

    /// Never panics and rejects malformed input (short, wrong version, lengths past the end).
    #[test]
    fn rejects_bad_input_without_panicking() {
        assert!(matches!(parse(&[]), Err(ParseError::TooShort { .. })));
        assert!(matches!(
            parse(&[0x40; 12]),
            Err(ParseError::BadVersion { version: 1 })
        ));
        let mut p = packet(0, 1, 2, 3, &[]);
        p[0] |= 0x0f; // 15 CSRCs announced, none present
        assert!(matches!(parse(&p), Err(ParseError::TooShort { .. })));
        let mut p = packet(0, 1, 2, 3, &[1, 200]);
        p[0] |= 0x20; // padding count 200 > 2
        assert!(matches!(parse(&p), Err(ParseError::BadPadding { .. })));
        let mut p = packet(0, 1, 2, 3, &[0xbe, 0xde, 0xff, 0xff]);
        p[0] |= 0x10; // extension length past the end
        assert!(matches!(parse(&p), Err(ParseError::TooShort { .. })));
        // Every prefix of every byte pattern: no panic.
        for b in 0..=255u8 {
            let mut p = [b; 40];
            p[0] = 0x80 | (b & 0x3f);
            for len in 0..p.len() {
                let _ = parse(&p[..len]);
                let _ = parse_rtcp(&p[..len]);
            }
        }
    }

    /// RFC 5761 §4: RTCP types 200-204 on the RTP port look like M=1, PT 72-76.
    #[test]
    fn muxed_rtcp_is_recognised() {
        let sr = [0x80u8, 200, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(is_muxed_rtcp(&parse(&sr).unwrap()));
        let audio = packet(0, 1, 2, 3, &[0; 160]);
        assert!(!is_muxed_rtcp(&parse(&audio).unwrap()));
        let mut marked = packet(8, 1, 2, 3, &[0; 160]);
        marked[1] |= 0x80; // marker on an audio packet (start of talkspurt)
        assert!(!is_muxed_rtcp(&parse(&marked).unwrap()));
    }

    /// RFC 3550 §6.4.1: RTCP header, length in 32-bit words minus one.
    #[test]
    fn rtcp_header() {
        let rr = [0x81, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            parse_rtcp(&rr).unwrap(),
            RtcpHeader {
                packet_type: 201,
                length: 8
            }
        );
        assert!(parse_rtcp(&[0x81, 201, 0, 5, 0, 0, 0, 1]).is_err());
    }

    /// RFC 3550 A.3: lost = expected − received, across a sequence wrap, with reordering.
    #[test]
    fn sequence_loss_wrap_and_reorder() {
        let mut s = SeqStats::default();
        let mut newly = 0;
        for seq in [65530u16, 65531, 65533, 65532, 65534, 65535, 0, 1, 4, 5] {
            newly += s.update(7, seq);
        }
        assert_eq!(s.expected(), 12);
        assert_eq!(s.lost(), 2); // 2 and 3 missing
        assert!(newly >= s.lost());
        // A new SSRC restarts the run but keeps the losses so far.
        s.update(8, 100);
        s.update(8, 102);
        assert_eq!(s.lost(), 3);
    }

    /// RFC 3550 A.8: constant transit → zero jitter; alternating ±D → jitter tends to D.
    #[test]
    fn jitter_estimator() {
        let mut j = Jitter::default();
        for _ in 0..100 {
            j.update(500);
        }
        assert_eq!(j.value(), 0);
        for i in 0..1000 {
            j.update(if i % 2 == 0 { 500 } else { 580 });
        }
        assert!((75..=80).contains(&j.value()), "{}", j.value());
    }
}
