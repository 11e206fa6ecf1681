//! SIP message entry point: bytes in, a checked [`rsip::SipMessage`] out.
//!
//! [`parse`] is what the socket driver (and the fuzz target) calls for every datagram
//! or stream frame. It enforces the size limit, recognises keep-alives, checks the
//! request line and the mandatory headers of RFC 3261 §8.1.1 and hands the rest to
//! rsip. [`frame`] finds message boundaries on a stream (RFC 3261 §18.3,
//! Content-Length framing). [`error_response`] builds the 4xx/5xx answer for a
//! request that could not be parsed, from its raw header lines, so even a message
//! rsip rejects gets a proper response when it carries enough to be answered.

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Method, SipMessage};

/// Largest message accepted (RFC 3261 §18.1.1 allows UDP up to 65 535 bytes).
pub const MAX_MESSAGE_SIZE: usize = 65_535;

/// Why a byte buffer is not a usable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Larger than the limit: answered with 513 Message Too Large (RFC 3261 §21.5.14).
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size received.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A stream holds only part of a message so far: read more (RFC 3261 §18.3).
    #[error("incomplete message, need more bytes")]
    Incomplete,
    /// CRLF keep-alive (RFC 5626 §3.5.1): not an error, nothing to answer.
    #[error("keep-alive")]
    KeepAlive,
    /// Request method not known to this server: 501 Not Implemented (RFC 3261 §8.2.1).
    #[error("unknown method {method}")]
    UnknownMethod {
        /// The method token as received.
        method: String,
    },
    /// SIP version other than 2.0: 505 Version Not Supported (RFC 3261 §8.2.2... §21.5.18).
    #[error("unsupported SIP version {version}")]
    BadVersion {
        /// The version token as received.
        version: String,
    },
    /// A mandatory header (RFC 3261 §8.1.1) is missing or unreadable: 400.
    #[error("missing or malformed {name} header")]
    BadHeader {
        /// Header name.
        name: &'static str,
    },
    /// Anything else that is not SIP: 400 Bad Request when answerable, else dropped.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What was wrong, for the log.
        reason: String,
    },
}

/// Kind of message found by [`peek_start_line`].
enum StartLine<'a> {
    Request { method: &'a str, version: &'a str },
    Response,
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn start_line(head: &str) -> Result<StartLine<'_>, ParseError> {
    let line = head.split("\r\n").next().unwrap_or_default();
    if line.starts_with("SIP/") {
        return Ok(StartLine::Response);
    }
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    if method.is_empty()
        || uri.is_empty()
        || parts.next().is_some()
        || !method.bytes().all(is_token_char)
    {
        return Err(ParseError::Malformed {
            reason: "bad request line".into(),
        });
    }
    Ok(StartLine::Request { method, version })
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Raw header lines of a head (folded lines joined), as (name, value).
fn raw_headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.split("\r\n").skip(1).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name.trim(), value.trim()))
    })
}

fn canonical_name(name: &str) -> Option<&'static str> {
    const NAMES: [(&str, &str, &str); 7] = [
        ("via", "v", "Via"),
        ("from", "f", "From"),
        ("to", "t", "To"),
        ("call-id", "i", "Call-ID"),
        ("cseq", "", "CSeq"),
        ("content-length", "l", "Content-Length"),
        ("contact", "m", "Contact"),
    ];
    NAMES.iter().find_map(|(long, short, canon)| {
        (name.eq_ignore_ascii_case(long) || (!short.is_empty() && name.eq_ignore_ascii_case(short)))
            .then_some(*canon)
    })
}

fn content_length(head: &str) -> Result<Option<usize>, ParseError> {
    for (name, value) in raw_headers(head) {
        if canonical_name(name) == Some("Content-Length") {
            return value
                .parse::<usize>()
                .map(Some)
                .map_err(|_| ParseError::BadHeader {
                    name: "Content-Length",
                });
        }
    }
    Ok(None)
}

/// Length of the first complete message at the start of a stream buffer
/// (RFC 3261 §18.3: on streams Content-Length is mandatory and frames the body).
/// Leading CRLFs (keep-alives) are reported as [`ParseError::KeepAlive`] with
/// nothing consumed: call [`skip_keepalive`] first.
pub fn frame(buf: &[u8]) -> Result<usize, ParseError> {
    let Some(end) = head_end(buf) else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::TooLarge {
                size: buf.len(),
                limit: MAX_MESSAGE_SIZE,
            });
        }
        return Err(ParseError::Incomplete);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Malformed {
        reason: "header is not UTF-8".into(),
    })?;
    let body = content_length(head)?.ok_or(ParseError::BadHeader {
        name: "Content-Length",
    })?;
    let total = end + 4 + body;
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::TooLarge {
            size: total,
            limit: MAX_MESSAGE_SIZE,
        });
    }
    if buf.len() < total {
        return Err(ParseError::Incomplete);
    }
    Ok(total)
}

/// Number of leading CR/LF bytes (stream keep-alives, RFC 5626 §3.5.1).
pub fn skip_keepalive(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

/// Parse one complete SIP message (a UDP datagram or a frame cut by [`frame`]).
///
/// Never panics; every failure is a [`ParseError`] that [`error_response`] can
/// turn into an answer for requests.
pub fn parse(buf: &[u8]) -> Result<SipMessage, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::TooLarge {
            size: buf.len(),
            limit: MAX_MESSAGE_SIZE,
        });
    }
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::KeepAlive);
    }
    let end = head_end(buf).ok_or_else(|| ParseError::Malformed {
        reason: "no empty line after the headers".into(),
    })?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Malformed {
        reason: "header is not UTF-8".into(),
    })?;
    if let StartLine::Request { method, version } = start_line(head)? {
        if version != "SIP/2.0" {
            return Err(ParseError::BadVersion {
                version: version.chars().take(32).collect(),
            });
        }
        if method.parse::<Method>().is_err() {
            return Err(ParseError::UnknownMethod {
                method: method.chars().take(32).collect(),
            });
        }
    }
    // RFC 3261 §18.3: a datagram body longer than Content-Length is truncated, a
    // shorter one is an error.
    let body_len = buf.len() - end - 4;
    let used = match content_length(head)? {
        Some(cl) if cl > body_len => {
            return Err(ParseError::BadHeader {
                name: "Content-Length",
            })
        }
        Some(cl) => end + 4 + cl,
        None => buf.len(),
    };
    let mut msg = SipMessage::try_from(&buf[..used]).map_err(|e| ParseError::Malformed {
        reason: e.to_string().chars().take(200).collect(),
    })?;
    normalize_compact(headers_mut(&mut msg));
    check_mandatory(&msg)?;
    Ok(msg)
}

fn headers_mut(msg: &mut SipMessage) -> &mut Headers {
    match msg {
        SipMessage::Request(r) => &mut r.headers,
        SipMessage::Response(r) => &mut r.headers,
    }
}

/// Compact header forms (RFC 3261 §7.3.3) arrive as `Other`: give them their type.
fn normalize_compact(headers: &mut Headers) {
    for h in headers.iter_mut() {
        if let Header::Other(name, value) = h {
            let value = std::mem::take(value);
            *h = match name.to_ascii_lowercase().as_str() {
                "v" => Header::Via(value.into()),
                "f" => Header::From(value.into()),
                "t" => Header::To(value.into()),
                "i" => Header::CallId(value.into()),
                "m" => Header::Contact(value.into()),
                "l" => Header::ContentLength(value.into()),
                "c" => Header::ContentType(value.into()),
                _ => Header::Other(std::mem::take(name), value),
            };
        }
    }
}

fn check_mandatory(msg: &SipMessage) -> Result<(), ParseError> {
    let h = headers(msg);
    let via = top_via(h).ok_or(ParseError::BadHeader { name: "Via" })?;
    if !via.contains(' ') {
        return Err(ParseError::BadHeader { name: "Via" });
    }
    from(h).ok_or(ParseError::BadHeader { name: "From" })?;
    to(h).ok_or(ParseError::BadHeader { name: "To" })?;
    call_id(h)
        .filter(|c| !c.is_empty())
        .ok_or(ParseError::BadHeader { name: "Call-ID" })?;
    if let SipMessage::Request(r) = msg {
        // RFC 3261 §8.1.1.5: the CSeq method matches the request method.
        let (_, method) = cseq(h).ok_or(ParseError::BadHeader { name: "CSeq" })?;
        if method != r.method {
            return Err(ParseError::BadHeader { name: "CSeq" });
        }
    } else {
        // A response may answer a method we do not know (our own 501s).
        h.iter()
            .find_map(|h| match h {
                Header::CSeq(v) => v.value().split_whitespace().next()?.parse::<u32>().ok(),
                _ => None,
            })
            .ok_or(ParseError::BadHeader { name: "CSeq" })?;
    }
    Ok(())
}

/// The headers of either kind of message.
pub fn headers(msg: &SipMessage) -> &Headers {
    match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    }
}

/// Value of the topmost Via (first of a comma-separated list).
pub fn top_via(h: &Headers) -> Option<&str> {
    h.iter().find_map(|h| match h {
        Header::Via(v) => Some(v.value().split(',').next().unwrap_or_default().trim()),
        _ => None,
    })
}

/// Value of the From header.
pub fn from(h: &Headers) -> Option<&str> {
    h.iter().find_map(|h| match h {
        Header::From(v) => Some(v.value()),
        _ => None,
    })
}

/// Value of the To header.
pub fn to(h: &Headers) -> Option<&str> {
    h.iter().find_map(|h| match h {
        Header::To(v) => Some(v.value()),
        _ => None,
    })
}

/// Value of the Call-ID header.
pub fn call_id(h: &Headers) -> Option<&str> {
    h.iter().find_map(|h| match h {
        Header::CallId(v) => Some(v.value().trim()),
        _ => None,
    })
}

/// Values of all Contact headers (each may hold several comma-separated contacts).
pub fn contacts(h: &Headers) -> Vec<&str> {
    h.iter()
        .filter_map(|h| match h {
            Header::Contact(v) => Some(v.value()),
            _ => None,
        })
        .flat_map(split_list)
        .collect()
}

/// Split a header value at commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// CSeq number and method.
pub fn cseq(h: &Headers) -> Option<(u32, Method)> {
    let v = h.iter().find_map(|h| match h {
        Header::CSeq(v) => Some(v.value()),
        _ => None,
    })?;
    let mut parts = v.split_whitespace();
    let n = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    Some((n, m))
}

/// Value of an `Other` header by name (case-insensitive).
pub fn other<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find_map(|h| match h {
        Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.as_str()),
        _ => None,
    })
}

/// Value of the Expires header.
pub fn expires(h: &Headers) -> Option<u32> {
    h.iter().find_map(|h| match h {
        Header::Expires(v) => v.value().trim().parse().ok(),
        _ => None,
    })
}

/// Value of the Content-Type header.
pub fn content_type(h: &Headers) -> Option<&str> {
    h.iter().find_map(|h| match h {
        Header::ContentType(v) => Some(v.value()),
        _ => None,
    })
}

/// Parameter `name` of a name-addr / via value (`;name=value` after the address part).
/// A flag parameter without value gives `Some("")`.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    // Parameters of the header come after the closing '>' when there is one.
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The `tag` parameter of a From/To value.
pub fn tag(value: &str) -> Option<&str> {
    param(value, "tag").filter(|t| !t.is_empty())
}

/// The URI of a name-addr (`"Bob" <sip:b@h>;tag=x` → `sip:b@h`) or addr-spec.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or_default().trim(),
    }
}

/// The user part of a SIP URI (`sip:1001@host;x` → `1001`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    let user = user.split(':').next().unwrap_or_default();
    (!user.is_empty()).then_some(user)
}

/// The display name of a name-addr, without quotes.
pub fn display_name(value: &str) -> Option<&str> {
    let lt = value.find('<')?;
    let d = value[..lt].trim().trim_matches('"').trim();
    (!d.is_empty()).then_some(d)
}

/// Copy of the raw head with only the header lines a response must echo
/// (RFC 3261 §8.2.6.2: Via, From, To, Call-ID, CSeq), or `None` when one is missing.
fn echo_headers(head: &str) -> Option<Vec<(&'static str, &str)>> {
    let mut out = Vec::new();
    for (name, value) in raw_headers(head) {
        if let Some(c @ ("Via" | "From" | "To" | "Call-ID" | "CSeq")) = canonical_name(name) {
            out.push((c, value));
        }
    }
    for needed in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if !out.iter().any(|(n, _)| *n == needed) {
            return None;
        }
    }
    Some(out)
}

/// Answer to a request that [`parse`] rejected, built from its raw header lines;
/// `None` when it must be dropped (responses, ACK, keep-alives, or too broken to answer).
pub fn error_response(buf: &[u8], err: &ParseError, server: &str) -> Option<Vec<u8>> {
    let (code, reason) = match err {
        ParseError::TooLarge { .. } => (513, "Message Too Large"),
        ParseError::UnknownMethod { .. } => (501, "Not Implemented"),
        ParseError::BadVersion { .. } => (505, "Version Not Supported"),
        ParseError::BadHeader { .. } | ParseError::Malformed { .. } => (400, "Bad Request"),
        ParseError::Incomplete | ParseError::KeepAlive => return None,
    };
    let limit = buf.len().min(MAX_MESSAGE_SIZE);
    let end = head_end(&buf[..limit]).unwrap_or(limit);
    let head = match std::str::from_utf8(&buf[..end]) {
        Ok(h) => h,
        Err(e) => std::str::from_utf8(&buf[..e.valid_up_to()]).ok()?,
    };
    let StartLine::Request { method, .. } = start_line(head).ok()? else {
        return None;
    };
    if method.eq_ignore_ascii_case("ACK") {
        return None; // RFC 3261 §17.1.1.3: ACK is never answered
    }
    let echoed = echo_headers(head)?;
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (name, value) in echoed {
        if value.contains(['\r', '\n']) {
            return None;
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Server: {server}\r\n"));
    if code == 501 {
        out.push_str(&format!("Allow: {}\r\n", super::ALLOW));
    }
    out.push_str(&format!(
        "Warning: 399 tandem \"{}\"\r\n",
        warning_text(err)
    ));
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

fn warning_text(err: &ParseError) -> String {
    err.to_string()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:1001@127.0.0.1>\r\n\
From: \"Alice\" <sip:1001@127.0.0.1>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:1001@127.0.0.1:5062>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_register_and_reads_headers() {
        let msg = parse(REGISTER.as_bytes()).unwrap();
        let h = headers(&msg);
        assert_eq!(cseq(h), Some((1826, Method::Register)));
        assert_eq!(tag(from(h).unwrap()), Some("456248"));
        assert_eq!(
            param(top_via(h).unwrap(), "branch"),
            Some("z9hG4bK776asdhds")
        );
        assert_eq!(param(top_via(h).unwrap(), "rport"), Some(""));
        assert_eq!(uri_user(uri_of(to(h).unwrap())), Some("1001"));
        assert_eq!(display_name(from(h).unwrap()), Some("Alice"));
        assert_eq!(expires(h), Some(7200));
    }

    #[test]
    fn compact_headers_are_understood() {
        // RFC 3261 §7.3.3 compact forms.
        let m =
            "OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nf: <sip:a@b>;tag=1\r\n\
t: <sip:a@b>\r\ni: abc\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        let msg = parse(m.as_bytes()).unwrap();
        assert_eq!(call_id(headers(&msg)), Some("abc"));
    }

    #[test]
    fn unknown_method_gets_501_with_echoed_headers() {
        // RFC 3261 §8.2.1: unrecognised method → 501.
        let m = REGISTER
            .replace("REGISTER sip", "FOO sip")
            .replace("1826 REGISTER", "1826 FOO");
        let err = parse(m.as_bytes()).unwrap_err();
        assert!(matches!(err, ParseError::UnknownMethod { .. }));
        let resp = String::from_utf8(error_response(m.as_bytes(), &err, "t").unwrap()).unwrap();
        assert!(resp.starts_with("SIP/2.0 501 Not Implemented\r\n"));
        assert!(resp.contains("Call-ID: 843817637684230@998sdasdh09\r\n"));
        assert!(resp.contains("Allow: "));
        // the answer itself parses
        parse(resp.as_bytes()).unwrap();
    }

    #[test]
    fn oversized_message_gets_513() {
        // RFC 3261 §21.5.14 Message Too Large.
        let mut m = REGISTER.replace("Content-Length: 0\r\n\r\n", "");
        m.push_str(&format!(
            "X-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(70_000)
        ));
        let err = parse(m.as_bytes()).unwrap_err();
        assert!(matches!(err, ParseError::TooLarge { .. }));
        let resp = error_response(m.as_bytes(), &err, "t").unwrap();
        assert!(resp.starts_with(b"SIP/2.0 513 "));
    }

    #[test]
    fn missing_call_id_is_400_or_dropped() {
        // RFC 3261 §8.1.1: Call-ID is mandatory. Without it the request cannot be
        // answered in a way the client could match, so it is dropped.
        let m = REGISTER.replace("Call-ID: 843817637684230@998sdasdh09\r\n", "");
        let err = parse(m.as_bytes()).unwrap_err();
        assert_eq!(err, ParseError::BadHeader { name: "Call-ID" });
        assert!(error_response(m.as_bytes(), &err, "t").is_none());
        // A CSeq that does not match the method is answered 400 (§8.1.1.5).
        let m = REGISTER.replace("1826 REGISTER", "1826 INVITE");
        let err = parse(m.as_bytes()).unwrap_err();
        let resp = error_response(m.as_bytes(), &err, "t").unwrap();
        assert!(resp.starts_with(b"SIP/2.0 400 Bad Request"));
    }

    #[test]
    fn bad_version_gets_505() {
        let m = REGISTER.replace("127.0.0.1 SIP/2.0\r\nVia", "127.0.0.1 SIP/3.0\r\nVia");
        let err = parse(m.as_bytes()).unwrap_err();
        let resp = error_response(m.as_bytes(), &err, "t").unwrap();
        assert!(resp.starts_with(b"SIP/2.0 505 "));
    }

    #[test]
    fn datagram_body_shorter_than_content_length_is_rejected() {
        // RFC 3261 §18.3.
        let m = REGISTER.replace("Content-Length: 0", "Content-Length: 10");
        assert!(parse(m.as_bytes()).is_err());
        // longer: truncated to Content-Length
        let mut m = REGISTER.to_string();
        m.push_str("garbage");
        let msg = parse(m.as_bytes()).unwrap();
        assert!(msg.body().is_empty());
    }

    #[test]
    fn stream_framing_uses_content_length() {
        // RFC 3261 §18.3: Content-Length frames messages on streams.
        let mut two = REGISTER.replace("Content-Length: 0", "Content-Length: 4");
        two.push_str("abcd");
        let one_len = two.len();
        two.push_str(REGISTER);
        assert_eq!(frame(two.as_bytes()), Ok(one_len));
        assert_eq!(
            frame(&two.as_bytes()[..one_len - 1]),
            Err(ParseError::Incomplete)
        );
        assert_eq!(frame(&two.as_bytes()[..20]), Err(ParseError::Incomplete));
        assert_eq!(frame(&two.as_bytes()[one_len..]), Ok(REGISTER.len()));
        assert_eq!(skip_keepalive(b"\r\n\r\nREG"), 4);
    }

    #[test]
    fn garbage_never_panics() {
        let samples: [&[u8]; 8] = [
            b"",
            b"\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"INVITE\r\n\r\n",
            b"SIP/2.0 200\r\n\r\n",
            b"INVITE sip: SIP/2.0\r\nVia: x\r\nCSeq: a b\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"REGISTER sip:a SIP/2.0\r\nVia:\r\nFrom:\r\nTo:\r\nCall-ID:\r\nCSeq:\r\n\r\n",
        ];
        for s in samples {
            if let Err(e) = parse(s) {
                let _ = error_response(s, &e, "t");
            }
            let _ = frame(s);
        }
    }
}
