//! Just enough SDP (RFC 4566) for a media-relaying B2BUA: read where a party wants
//! audio (c= and the audio m= line, RFC 3264 §5), and rewrite a description so the
//! media goes through the relay, keeping only G.711 (PCMU 0, PCMA 8) and
//! telephone-event (RFC 4733). No transcoding: the callee's answer picks the codec.

use std::net::{IpAddr, SocketAddr};

/// Why a body is not a usable SDP offer/answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not UTF-8 or no `v=` line.
    #[error("not an SDP body")]
    NotSdp,
    /// No `m=audio` line, or it has no usable port.
    #[error("no audio stream in the SDP")]
    NoAudio,
    /// No connection address (`c=`) for the audio stream.
    #[error("no connection address in the SDP")]
    NoAddress,
    /// None of the offered/answered codecs is G.711.
    #[error("no common codec (only PCMU and PCMA are supported)")]
    NoCommonCodec,
}

/// A parsed session description, kept as lines so rewriting preserves the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// The lines, without line endings.
    lines: Vec<String>,
}

/// What the audio stream of a description says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// Where the party receives RTP (c= address, m= port).
    pub rtp: SocketAddr,
    /// Payload types in order of preference.
    pub payload_types: Vec<u8>,
    /// Payload type of telephone-event, when offered.
    pub telephone_event: Option<u8>,
}

impl Audio {
    /// The first G.711 payload type (0 PCMU or 8 PCMA), i.e. the negotiated codec
    /// when this is an answer (RFC 3264 §6.1).
    pub fn g711(&self) -> Option<u8> {
        self.payload_types
            .iter()
            .copied()
            .find(|pt| *pt == 0 || *pt == 8)
    }
}

fn is_supported(pt: u8, telephone_event: Option<u8>) -> bool {
    pt == 0 || pt == 8 || Some(pt) == telephone_event
}

impl Sdp {
    /// Parse a body.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotSdp)?;
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if !lines.first().is_some_and(|l| l.starts_with("v=")) {
            return Err(SdpError::NotSdp);
        }
        Ok(Sdp { lines })
    }

    /// Index range of the first audio media section.
    fn audio_section(&self) -> Option<(usize, usize)> {
        let start = self.lines.iter().position(|l| l.starts_with("m=audio "))?;
        let end = self.lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(self.lines.len(), |i| start + 1 + i);
        Some((start, end))
    }

    /// The audio stream.
    pub fn audio(&self) -> Result<Audio, SdpError> {
        let (start, end) = self.audio_section().ok_or(SdpError::NoAudio)?;
        let mut m = self.lines[start].split_whitespace().skip(1);
        let port: u16 = m
            .next()
            .and_then(|p| p.split('/').next()?.parse().ok())
            .ok_or(SdpError::NoAudio)?;
        let _proto = m.next().ok_or(SdpError::NoAudio)?;
        let payload_types: Vec<u8> = m.filter_map(|p| p.parse().ok()).collect();
        // Media-level c= wins over session-level (RFC 4566 §5.7).
        let conn = |l: &String| {
            let rest = l.strip_prefix("c=IN ")?;
            let mut it = rest.split_whitespace();
            let _family = it.next()?;
            it.next()?.split('/').next()?.parse::<IpAddr>().ok()
        };
        let ip = self.lines[start..end]
            .iter()
            .find_map(conn)
            .or_else(|| self.lines[..start].iter().find_map(conn))
            .ok_or(SdpError::NoAddress)?;
        let telephone_event = self.lines[start..end].iter().find_map(|l| {
            let rest = l.strip_prefix("a=rtpmap:")?;
            let (pt, enc) = rest.split_once(' ')?;
            enc.to_ascii_lowercase()
                .starts_with("telephone-event/8000")
                .then(|| pt.parse().ok())?
        });
        Ok(Audio {
            rtp: SocketAddr::new(ip, port),
            payload_types,
            telephone_event,
        })
    }

    /// A copy pointing the audio at `relay` (c= and m= port), offering only G.711 and
    /// telephone-event, without ICE/RTCP attributes that describe the party's own
    /// addresses. Fails when no G.711 codec is left.
    pub fn rewrite(&self, relay: SocketAddr) -> Result<String, SdpError> {
        let audio = self.audio()?;
        let kept: Vec<u8> = audio
            .payload_types
            .iter()
            .copied()
            .filter(|pt| is_supported(*pt, audio.telephone_event))
            .collect();
        if !kept.iter().any(|pt| *pt == 0 || *pt == 8) {
            return Err(SdpError::NoCommonCodec);
        }
        let (start, end) = self.audio_section().ok_or(SdpError::NoAudio)?;
        let family = if relay.is_ipv4() { "IP4" } else { "IP6" };
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let in_audio = i >= start && i < end;
            let line = if line.starts_with("c=") {
                format!("c=IN {family} {}", relay.ip())
            } else if line.starts_with("o=") {
                let mut f: Vec<&str> = line.split_whitespace().collect();
                let ip = relay.ip().to_string();
                if f.len() == 6 {
                    f[4] = family;
                    f[5] = &ip;
                }
                f.join(" ")
            } else if i == start {
                let mut m: Vec<String> =
                    line.split_whitespace().take(3).map(String::from).collect();
                if m.len() < 3 {
                    return Err(SdpError::NoAudio);
                }
                m[1] = relay.port().to_string();
                m.extend(kept.iter().map(|pt| pt.to_string()));
                m.join(" ")
            } else if in_audio && is_dropped_attribute(line, &kept) {
                continue;
            } else {
                line.clone()
            };
            out.push_str(&line);
            out.push_str("\r\n");
        }
        Ok(out)
    }
}

/// Attributes that must not pass the relay: ICE, the party's RTCP address, and
/// format parameters of payload types we removed.
fn is_dropped_attribute(line: &str, kept: &[u8]) -> bool {
    const DROP: [&str; 6] = [
        "a=candidate:",
        "a=ice-",
        "a=rtcp:",
        "a=end-of-candidates",
        "a=remote-candidates",
        "a=crypto:",
    ];
    if DROP.iter().any(|p| line.starts_with(p)) {
        return true;
    }
    for prefix in ["a=rtpmap:", "a=fmtp:"] {
        if let Some(rest) = line.strip_prefix(prefix) {
            let pt = rest.split(' ').next().and_then(|p| p.parse::<u8>().ok());
            return !pt.is_some_and(|pt| kept.contains(&pt));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 123 456 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:40001\r\na=sendrecv\r\n";

    #[test]
    fn reads_audio_address_and_codecs() {
        // RFC 4566 §5.7 c=, §5.14 m=.
        let a = Sdp::parse(OFFER.as_bytes()).unwrap().audio().unwrap();
        assert_eq!(a.rtp, "192.168.1.20:40000".parse().unwrap());
        assert_eq!(a.payload_types, vec![9, 0, 8, 101]);
        assert_eq!(a.telephone_event, Some(101));
        assert_eq!(a.g711(), Some(0));
    }

    #[test]
    fn rewrite_points_to_relay_and_filters_codecs() {
        // RFC 3264 §5: the offer lists only what we can relay without transcoding.
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let out = sdp.rewrite("198.18.0.10:30000".parse().unwrap()).unwrap();
        assert!(out.contains("c=IN IP4 198.18.0.10\r\n"), "{out}");
        assert!(out.contains("o=- 123 456 IN IP4 198.18.0.10\r\n"));
        assert!(out.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"));
        assert!(!out.contains("G722"));
        assert!(!out.contains("a=rtcp:"));
        assert!(out.contains("a=fmtp:101 0-15"));
        let back = Sdp::parse(out.as_bytes()).unwrap().audio().unwrap();
        assert_eq!(back.rtp, "198.18.0.10:30000".parse().unwrap());
    }

    #[test]
    fn no_g711_is_an_error_and_garbage_is_not_sdp() {
        let g722 = OFFER.replace("RTP/AVP 9 0 8 101", "RTP/AVP 9");
        let sdp = Sdp::parse(g722.as_bytes()).unwrap();
        assert_eq!(
            sdp.rewrite("127.0.0.1:1".parse().unwrap()),
            Err(SdpError::NoCommonCodec)
        );
        assert_eq!(Sdp::parse(b"hello"), Err(SdpError::NotSdp));
        assert_eq!(
            Sdp::parse(b"v=0\r\n").unwrap().audio(),
            Err(SdpError::NoAudio)
        );
        let no_c = "v=0\r\nm=audio 1 RTP/AVP 0\r\n";
        assert_eq!(
            Sdp::parse(no_c.as_bytes()).unwrap().audio(),
            Err(SdpError::NoAddress)
        );
    }
}
