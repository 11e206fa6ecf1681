//! SIP signalling: message parsing/building ([`message`]), the transaction layer
//! of RFC 3261 §17 ([`transaction`]) and dialogs ([`dialog`]).
//!
//! ```text
//!  bytes ──parse──▶ SipMessage ──▶ transaction (dedup, retransmit, timers)
//!                                      │
//!                                      ▼
//!                           registrar / B2BUA (the "TU")
//! ```
//! Everything here is synchronous and clock-free: callers pass `now`.

pub mod dialog;
pub mod message;
pub mod transaction;

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Request, Response, SipMessage, StatusCode, Version};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub use message::{parse, ParseError};

/// Methods this server implements (sent in Allow, RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO";

/// Transport a message came in on or is sent over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// Datagrams: the transaction layer retransmits (RFC 3261 §17).
    Udp,
    /// A stream: reliable, no retransmissions, Content-Length framing.
    Tcp,
}

impl Transport {
    /// Token used in Via (`SIP/2.0/UDP`) and `;transport=` parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// Whether the transaction layer must retransmit over this transport.
    pub fn unreliable(self) -> bool {
        self == Transport::Udp
    }
}

/// A new random token (branch suffix, tags, Call-IDs).
pub fn random_token() -> String {
    use rand::Rng;
    let v: u64 = rand::thread_rng().gen();
    format!("{v:016x}")
}

/// A new RFC 3261 §8.1.1.7 branch (magic cookie prefix).
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token())
}

/// RFC 3261 §18.2.1 + RFC 3581: record where a request really came from in its
/// top Via (`received`, and `rport` when the client asked for it).
pub fn stamp_via(req: &mut Request, source: SocketAddr) {
    for h in req.headers.iter_mut() {
        if let Header::Via(v) = h {
            let value = v.value().to_string();
            let (top, rest) = match value.split_once(',') {
                Some((t, r)) => (t.trim().to_string(), Some(r.to_string())),
                None => (value.clone(), None),
            };
            let mut parts: Vec<String> = top.split(';').map(|s| s.to_string()).collect();
            let mut has_received = false;
            for p in parts.iter_mut().skip(1) {
                let key = p
                    .split('=')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase();
                if key == "rport" {
                    *p = format!("rport={}", source.port());
                } else if key == "received" {
                    *p = format!("received={}", source.ip());
                    has_received = true;
                }
            }
            if !has_received {
                parts.push(format!("received={}", source.ip()));
            }
            let mut new = parts.join(";");
            if let Some(rest) = rest {
                new.push(',');
                new.push_str(&rest);
            }
            v.replace(new);
            return;
        }
    }
}

/// A response to `req` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied;
/// `to_tag` is added to To when it has none (§8.2.6.2).
pub fn response(req: &Request, code: u16, to_tag: Option<&str>, server: &str) -> Response {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(t) => {
                let value = t.value();
                match (to_tag, message::tag(value)) {
                    (Some(tag), None) => {
                        headers.push(Header::To(format!("{value};tag={tag}").into()))
                    }
                    _ => headers.push(h.clone()),
                }
            }
            _ => {}
        }
    }
    headers.push(Header::Other("Server".into(), server.into()));
    Response {
        status_code: status(code),
        version: Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// A status code with its RFC 3261 §21 reason phrase.
pub fn status(code: u16) -> StatusCode {
    let reason = match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => return StatusCode::from(code),
    };
    StatusCode::Other(code, reason.into())
}

/// Serialize a message, setting Content-Length from the body.
pub fn to_bytes(msg: impl Into<SipMessage>) -> Vec<u8> {
    let mut msg: SipMessage = msg.into();
    let len = msg.body().len() as u32;
    let headers = match &mut msg {
        SipMessage::Request(r) => &mut r.headers,
        SipMessage::Response(r) => &mut r.headers,
    };
    headers.retain(|h| !matches!(h, Header::ContentLength(_)));
    headers.push(Header::ContentLength(len.into()));
    msg.to_string().into_bytes()
}

/// Status code number of a response.
pub fn code(resp: &Response) -> u16 {
    resp.status_code.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_gets_received_and_rport() {
        // RFC 3261 §18.2.1, RFC 3581 §4.
        let raw = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let SipMessage::Request(mut req) = parse(raw.as_bytes()).unwrap() else {
            panic!("request expected")
        };
        stamp_via(&mut req, "127.0.0.9:4000".parse().unwrap());
        let resp = response(&req, 200, Some("abc"), "tandem");
        let bytes = to_bytes(resp);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("rport=4000"), "{text}");
        assert!(text.contains("received=127.0.0.9"), "{text}");
        assert!(text.contains("To: <sip:a@b>;tag=abc"), "{text}");
        let back = parse(&bytes).unwrap();
        assert!(back.is_response());
    }
}
