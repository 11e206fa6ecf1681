//! Scripted SIP user agents over UDP/TCP on 127.0.0.1 against the real service
//! (in-memory backend, real RTP relay): registrar rules, authentication and its
//! rate limit, bad input, and every way a call can end with its CDR disposition.

use rsip::headers::UntypedHeader;
use rsip::{Header, Response, SipMessage};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_media::backend::{Backend as _, CallRecord, Disposition};
use tandem_media::digest::{client_authorization, Algorithm};
use tandem_media::relay::{Relay, RelayConfig};
use tandem_media::service::{Service, ServiceConfig, ServiceHandle};
use tandem_media::sip::message;
use tandem_media::testing::MemoryBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

mod core;
mod firewall;
mod security;

struct Env {
    backend: Arc<MemoryBackend>,
    svc: ServiceHandle<MemoryBackend>,
    server: SocketAddr,
    _tmp: tempfile::TempDir,
}

async fn env(port_base: u16, tweak: impl FnOnce(&mut ServiceConfig)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::new());
    for (u, p) in [("1001", "pa"), ("1002", "pb"), ("1003", "pc")] {
        backend.add_user(u, p);
    }
    let relay = Relay::start(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertised_ip: "127.0.0.1".parse().unwrap(),
        port_low: port_base,
        port_high: port_base + 99,
        recordings_dir: tmp.path().to_path_buf(),
    })
    .await
    .unwrap();
    let mut cfg = ServiceConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    tweak(&mut cfg);
    let svc = Service::start(cfg, backend.clone(), relay).await.unwrap();
    let server = svc.local_addr();
    Env {
        backend,
        svc,
        server,
        _tmp: tmp,
    }
}

/// A scripted phone on its own UDP socket.
struct Ua {
    ext: String,
    pass: String,
    sock: UdpSocket,
    addr: SocketAddr,
    server: SocketAddr,
    seq: u32,
}

impl Ua {
    async fn new(ext: &str, pass: &str, server: SocketAddr) -> Ua {
        Ua::on("127.0.0.1", ext, pass, server).await
    }

    /// A phone whose socket is bound to `ip` (another 127.0.0.x source address).
    async fn on(ip: &str, ext: &str, pass: &str, server: SocketAddr) -> Ua {
        let sock = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = sock.local_addr().unwrap();
        Ua {
            ext: ext.into(),
            pass: pass.into(),
            sock,
            addr,
            server,
            seq: 0,
        }
    }

    async fn send(&self, msg: &str) {
        self.sock
            .send_to(msg.as_bytes(), self.server)
            .await
            .unwrap();
    }

    /// Next message matching `pred`, within `secs`.
    async fn expect(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&SipMessage) -> bool,
    ) -> SipMessage {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = vec![0u8; 65536];
        loop {
            let r = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = r else {
                panic!("{}: no {what} within {secs} s", self.ext)
            };
            let m = message::parse(&buf[..n]).expect("service sends parseable SIP");
            if pred(&m) {
                return m;
            }
        }
    }

    async fn expect_code(&self, code: u16) -> Response {
        match self
            .expect(
                5,
                &format!("{code} response"),
                |m| matches!(m, SipMessage::Response(r) if r.status_code.code() == code),
            )
            .await
        {
            SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    async fn expect_request(&self, method: rsip::Method) -> rsip::Request {
        match self
            .expect(
                5,
                &format!("{method} request"),
                |m| matches!(m, SipMessage::Request(r) if r.method == method),
            )
            .await
        {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    /// Nothing arrives within `ms`.
    async fn expect_silence(&self, ms: u64) {
        let mut buf = vec![0u8; 65536];
        let r =
            tokio::time::timeout(Duration::from_millis(ms), self.sock.recv_from(&mut buf)).await;
        assert!(
            r.is_err(),
            "{}: unexpected message {:?}",
            self.ext,
            r.map(|x| x.map(|(n, _)| String::from_utf8_lossy(&buf[..n]).to_string()))
        );
    }

    fn register_msg(&mut self, expires: Option<u32>, auth: Option<&str>) -> String {
        self.seq += 1;
        let mut m = format!(
            "REGISTER sip:{s} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKreg{e}{n};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{e}@{s}>;tag=r{e}\r\nTo: <sip:{e}@{s}>\r\nCall-ID: reg-{e}-{a}\r\nCSeq: {n} REGISTER\r\n\
Contact: <sip:{e}@{a}>\r\n",
            s = self.server,
            a = self.addr,
            e = self.ext,
            n = self.seq
        );
        if let Some(x) = expires {
            m.push_str(&format!("Expires: {x}\r\n"));
        }
        if let Some(a) = auth {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }

    /// REGISTER, answer the challenge with `alg` and our password; the final code.
    async fn register(&mut self, expires: Option<u32>, alg: Algorithm) -> Response {
        let auth = self.challenged_auth(expires, alg).await;
        self.register_with(expires, &auth).await
    }

    /// REGISTER without credentials; the Authorization answering the 401's `alg`
    /// challenge with our password.
    async fn challenged_auth(&mut self, expires: Option<u32>, alg: Algorithm) -> String {
        let m = self.register_msg(expires, None);
        self.send(&m).await;
        let r = self.expect_code(401).await;
        let ch = challenges(&r, false)
            .into_iter()
            .find(|c| c.contains(&format!("algorithm={}", alg.token())))
            .expect("challenge for the algorithm");
        client_authorization(
            &ch,
            &self.ext,
            &self.pass,
            "REGISTER",
            &format!("sip:{}", self.server),
        )
        .unwrap()
    }

    /// REGISTER (new transaction) carrying `auth`; the final response.
    async fn register_with(&mut self, expires: Option<u32>, auth: &str) -> Response {
        let m = self.register_msg(expires, Some(auth));
        self.send(&m).await;
        self.final_response().await
    }

    /// The next final (>= 200) response.
    async fn final_response(&self) -> Response {
        match self
            .expect(
                5,
                "final response",
                |m| matches!(m, SipMessage::Response(r) if r.status_code.code() >= 200),
            )
            .await
        {
            SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    fn invite_msg(&self, callee: &str, call: &str, cseq: u32, auth: Option<&str>) -> String {
        let body = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
            self.addr.port() + 2
        );
        let mut m = format!(
            "INVITE sip:{callee}@{s} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKinv{call}{cseq};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{e}@{s}>;tag=from{call}\r\nTo: <sip:{callee}@{s}>\r\nCall-ID: {call}\r\nCSeq: {cseq} INVITE\r\n\
Contact: <sip:{e}@{a}>\r\nContent-Type: application/sdp\r\n",
            s = self.server,
            a = self.addr,
            e = self.ext
        );
        if let Some(x) = auth {
            m.push_str(&format!("Proxy-Authorization: {x}\r\n"));
        }
        m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        m
    }

    /// INVITE → 407 → ACK → INVITE with credentials. Returns the CSeq used.
    async fn invite(&self, callee: &str, call: &str) -> u32 {
        self.send(&self.invite_msg(callee, call, 1, None)).await;
        let r = self.expect_code(407).await;
        let to = message::to(&r.headers).unwrap().to_string();
        self.send(&format!(
            "ACK sip:{callee}@{s} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKinv{call}1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:{e}@{s}>;tag=from{call}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            s = self.server,
            a = self.addr,
            e = self.ext
        ))
        .await;
        let ch = challenges(&r, true).remove(0);
        let auth = client_authorization(
            &ch,
            &self.ext,
            &self.pass,
            "INVITE",
            &format!("sip:{callee}@{}", self.server),
        )
        .unwrap();
        self.send(&self.invite_msg(callee, call, 2, Some(&auth)))
            .await;
        2
    }

    /// Answer a request with `code` (To tag "callee" added).
    async fn reply(&self, req: &rsip::Request, code: u16, sdp: bool) {
        let mut resp = tandem_media::sip::response(req, code, Some("callee"), "ua");
        resp.headers.push(Header::Contact(
            format!("<sip:{}@{}>", self.ext, self.addr).into(),
        ));
        if sdp {
            resp.headers
                .push(Header::ContentType("application/sdp".into()));
            resp.body = format!(
                "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
                self.addr.port() + 2
            )
            .into_bytes();
        }
        let bytes = tandem_media::sip::to_bytes(resp);
        self.sock.send_to(&bytes, self.server).await.unwrap();
    }

    /// An in-dialog request built from a response we got (ACK/BYE to the far end).
    fn in_dialog(&self, method: &str, r: &Response, call: &str, cseq: u32) -> String {
        let h = &r.headers;
        let target = message::uri_of(message::contacts(h)[0]).to_string();
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{method}{call}{cseq};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{e}@{s}>;tag=from{call}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            s = self.server,
            a = self.addr,
            e = self.ext,
            to = message::to(h).unwrap()
        )
    }
}

fn challenges(r: &Response, proxy: bool) -> Vec<String> {
    r.headers
        .iter()
        .filter_map(|h| match h {
            Header::WwwAuthenticate(v) if !proxy => Some(v.value().to_string()),
            Header::ProxyAuthenticate(v) if proxy => Some(v.value().to_string()),
            _ => None,
        })
        .collect()
}

async fn next_cdr(rx: &mut tokio::sync::broadcast::Receiver<CallRecord>) -> CallRecord {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("CDR within 5 s")
        .unwrap()
}

#[tokio::test]
async fn registrar_digest_expiry_and_options() {
    let e = env(32000, |_| {}).await;
    let mut a = Ua::new("1001", "pa", e.server).await;
    // RFC 8760 §2.4: both algorithms offered, SHA-256 first by default.
    let m = a.register_msg(None, None);
    a.send(&m).await;
    let r = a.expect_code(401).await;
    let ch = challenges(&r, false);
    assert_eq!(ch.len(), 2);
    assert!(
        ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"),
        "{ch:?}"
    );
    assert!(ch[0].contains("qop=\"auth\""));
    // SHA-256 registration (RFC 8760) succeeds and is stored through the backend.
    let r = a.register(Some(600), Algorithm::Sha256).await;
    assert_eq!(r.status_code.code(), 200);
    let contact = message::contacts(&r.headers)[0].to_string();
    assert!(
        contact.contains(&format!("sip:1001@{}", a.addr)) && contact.contains("expires=600"),
        "{contact}"
    );
    let b = e.backend.stored_bindings();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].aor.as_str(), b[0].source), ("1001", a.addr));
    // MD5 as well.
    let mut b2 = Ua::new("1002", "pb", e.server).await;
    assert_eq!(
        b2.register(None, Algorithm::Md5).await.status_code.code(),
        200
    );
    // RFC 3261 §10.3 step 7: too short → 423 with Min-Expires.
    let r = a.register(Some(10), Algorithm::Md5).await;
    assert_eq!(r.status_code.code(), 423);
    assert!(r
        .headers
        .iter()
        .any(|h| matches!(h, Header::MinExpires(v) if v.value() == "60")));
    assert_eq!(e.svc.status().registrations.len(), 2);
    // Expires: 0 unregisters.
    assert_eq!(
        a.register(Some(0), Algorithm::Md5).await.status_code.code(),
        200
    );
    assert!(!e.backend.stored_bindings().iter().any(|b| b.aor == "1001"));
    // Expired bindings are not shown (and not used for routing).
    e.backend.advance_clock(4000);
    assert!(e.svc.status().registrations.is_empty());
    // OPTIONS answered 200 with Allow (RFC 3261 §11.2).
    a.send(&format!(
        "OPTIONS sip:{s} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKopt\r\nFrom: <sip:1001@{s}>;tag=o\r\n\
To: <sip:{s}>\r\nCall-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        s = e.server,
        a = a.addr
    ))
    .await;
    let r = a.expect_code(200).await;
    assert!(r.headers.iter().any(|h| matches!(h, Header::Allow(_))));
    // Standby: everything dropped.
    e.svc.set_active(false);
    a.send(&format!(
        "OPTIONS sip:{s} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKopt2\r\nFrom: <sip:1001@{s}>;tag=o\r\n\
To: <sip:{s}>\r\nCall-ID: opt2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        s = e.server,
        a = a.addr
    ))
    .await;
    a.expect_silence(500).await;
    assert!(!e.svc.status().active);
    e.svc.shutdown().await;
}

#[tokio::test]
async fn wrong_password_is_refused_then_rate_limited_with_alarm() {
    let e = env(32100, |c| c.guard.source_threshold = 3).await;
    let mut m = Ua::new("1003", "guess", e.server).await;
    for _ in 0..3 {
        assert_eq!(
            m.register(None, Algorithm::Md5).await.status_code.code(),
            403
        );
    }
    assert!(e.backend.stored_bindings().is_empty());
    // Blocked now: even the challenge is withheld (slowed down), and the alarm raised.
    let msg = m.register_msg(None, None);
    m.send(&msg).await;
    m.expect_silence(700).await;
    let ev = e.backend.security_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].failures, ev[0].sample.clone()),
        (3, vec![m.addr.ip()])
    );
    // On the replicated ban list, for the configured ban time.
    let bans = e.backend.bans();
    assert_eq!(bans.len(), 1);
    assert_eq!((bans[0].source, bans[0].failures), (m.addr.ip(), 3));
    let left = bans[0].until_unix - e.backend.now_unix();
    assert!((590..=600).contains(&left), "{left}");
    assert_eq!(e.svc.status().auth_failures_total, 3);
    assert_eq!(e.svc.status().sources_banned_total, 1);
    e.svc.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_4xx_5xx_or_is_dropped() {
    let e = env(32200, |_| {}).await;
    let a = Ua::new("1001", "pa", e.server).await;
    let base = format!(
        "Via: SIP/2.0/UDP {a};branch=z9hG4bKbad\r\nFrom: <sip:1001@{s}>;tag=x\r\nTo: <sip:{s}>\r\nCall-ID: bad1\r\n",
        s = e.server,
        a = a.addr
    );
    // RFC 3261 §8.2.1: unknown method → 501.
    a.send(&format!(
        "FROB sip:{} SIP/2.0\r\n{base}CSeq: 1 FROB\r\nContent-Length: 0\r\n\r\n",
        e.server
    ))
    .await;
    a.expect_code(501).await;
    // Known but unsupported → 405 with Allow.
    a.send(&format!(
        "SUBSCRIBE sip:{} SIP/2.0\r\n{base}CSeq: 2 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n",
        e.server
    ))
    .await;
    a.expect_code(405).await;
    // CSeq method mismatch → 400.
    a.send(&format!(
        "OPTIONS sip:{} SIP/2.0\r\n{base}CSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n",
        e.server
    ))
    .await;
    a.expect_code(400).await;
    // Too large (RFC 3261 §18.1.1 / §21.5.14) → 513.
    let pad = "x".repeat(66_000);
    let big = format!("OPTIONS sip:{} SIP/2.0\r\n{base}CSeq: 4 OPTIONS\r\nX-Pad: {pad}\r\nContent-Length: 0\r\n\r\n", e.server);
    let tcp_big = big.clone();
    // (UDP cannot carry it: send over TCP.)
    let mut s = tokio::net::TcpStream::connect(e.server).await.unwrap();
    s.write_all(tcp_big.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"SIP/2.0 513 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Garbage and a request missing Call-ID are dropped; the service still works.
    a.send("\u{1}\u{2}garbage\r\n\r\n").await;
    a.send(&format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKq\r\nCSeq: 5 OPTIONS\r\n\r\n",
        e.server, a.addr
    ))
    .await;
    a.expect_silence(300).await;
    a.send(
        &format!(
            "OPTIONS sip:{} SIP/2.0\r\n{base}CSeq: 6 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            e.server
        )
        .replace("z9hG4bKbad", "z9hG4bKok"),
    )
    .await;
    a.expect_code(200).await;
    assert!(e.svc.status().parse_errors_total >= 4);
    e.svc.shutdown().await;
}

#[tokio::test]
async fn register_over_tcp() {
    let e = env(32300, |c| c.digest_algorithms = vec![Algorithm::Md5]).await;
    let mut s = tokio::net::TcpStream::connect(e.server).await.unwrap();
    let local = s.local_addr().unwrap();
    let reg = |cseq: u32, auth: Option<String>| {
        format!(
            "REGISTER sip:{srv} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKt{cseq}\r\nFrom: <sip:1002@{srv}>;tag=t\r\n\
To: <sip:1002@{srv}>\r\nCall-ID: tcp-reg\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:1002@{local};transport=tcp>\r\n{}Content-Length: 0\r\n\r\n",
            auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default(),
            srv = e.server
        )
    };
    // Two messages in one write: Content-Length framing (RFC 3261 §18.3).
    s.write_all(format!("\r\n\r\n{}", reg(1, None)).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let challenge = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(len) = message::frame(&buf) {
            let SipMessage::Response(r) = message::parse(&buf[..len]).unwrap() else {
                panic!()
            };
            buf.drain(..len);
            assert_eq!(r.status_code.code(), 401);
            break challenges(&r, false).remove(0);
        }
    };
    let auth = client_authorization(
        &challenge,
        "1002",
        "pb",
        "REGISTER",
        &format!("sip:{}", e.server),
    )
    .unwrap();
    s.write_all(reg(2, Some(auth)).as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.backend.stored_bindings().is_empty() {
        assert!(Instant::now() < deadline, "no TCP binding");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = &e.backend.stored_bindings()[0];
    assert_eq!(b.transport, tandem_media::sip::Transport::Tcp);
    assert_eq!(b.source, local);
    e.svc.shutdown().await;
}

async fn two_phones(e: &Env) -> (Ua, Ua) {
    let mut a = Ua::new("1001", "pa", e.server).await;
    let mut b = Ua::new("1002", "pb", e.server).await;
    assert_eq!(
        a.register(None, Algorithm::Md5).await.status_code.code(),
        200
    );
    assert_eq!(
        b.register(None, Algorithm::Md5).await.status_code.code(),
        200
    );
    (a, b)
}

#[tokio::test]
async fn call_answered_and_hung_up_by_callee() {
    let e = env(32400, |_| {}).await;
    let (a, b) = two_phones(&e).await;
    let mut cdrs = e.backend.subscribe();
    a.invite("1002", "c-ans").await;
    a.expect_code(100).await;
    let inv = b.expect_request(rsip::Method::Invite).await;
    // The callee's offer points at the relay, G.711 + telephone-event only.
    let body = String::from_utf8_lossy(&inv.body).to_string();
    assert!(
        body.contains("m=audio ") && body.contains("RTP/AVP 0 8 101"),
        "{body}"
    );
    assert!(body.contains("c=IN IP4 127.0.0.1"));
    assert!(
        !body.contains(&format!("m=audio {} ", a.addr.port() + 2)),
        "media must go through the relay"
    );
    b.reply(&inv, 180, false).await;
    a.expect_code(180).await;
    b.reply(&inv, 200, true).await;
    let ok = a.expect_code(200).await;
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(
        answer.contains("RTP/AVP 8 101"),
        "callee's codec choice relayed: {answer}"
    );
    b.expect_request(rsip::Method::Ack).await;
    a.send(&a.in_dialog("ACK", &ok, "c-ans", 2)).await;
    assert_eq!(e.svc.status().calls.len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Callee hangs up: the caller gets a BYE (RFC 3261 §15.1.1).
    let bye = format!(
        "BYE sip:1001@{s} SIP/2.0\r\nVia: SIP/2.0/UDP {ba};branch=z9hG4bKbyeb\r\nFrom: {to}\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        s = e.server,
        ba = b.addr,
        to = message::to(&inv.headers).unwrap().to_string() + ";tag=callee",
        from = message::from(&inv.headers).unwrap(),
        cid = message::call_id(&inv.headers).unwrap()
    );
    b.send(&bye).await;
    b.expect_code(200).await;
    let bye_a = a.expect_request(rsip::Method::Bye).await;
    assert_eq!(message::call_id(&bye_a.headers), Some("c-ans"));
    let cdr = next_cdr(&mut cdrs).await;
    assert_eq!((cdr.caller.as_str(), cdr.callee.as_str()), ("1001", "1002"));
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.billsec(), 1);
    assert!(cdr.recording_id.is_some());
    let st = e.svc.status();
    assert_eq!(
        (
            st.call_attempts_total,
            st.call_answers_total,
            st.active_calls
        ),
        (1, 1, 0)
    );
    e.svc.shutdown().await;
}

#[tokio::test]
async fn busy_cancel_no_answer_unknown_and_offline() {
    let e = env(32500, |c| c.no_answer_timeout = Duration::from_secs(1)).await;
    let (a, b) = two_phones(&e).await;
    let mut cdrs = e.backend.subscribe();

    // Busy: 486 relayed, CDR busy.
    a.invite("1002", "c-busy").await;
    let inv = b.expect_request(rsip::Method::Invite).await;
    b.reply(&inv, 486, false).await;
    b.expect_request(rsip::Method::Ack).await; // §17.1.1.3 ACK for the non-2xx
    a.expect_code(486).await;
    assert_eq!(next_cdr(&mut cdrs).await.disposition, Disposition::Busy);

    // CANCEL before answer: 200 for the CANCEL, 487 for the INVITE, CANCEL to the callee.
    a.invite("1002", "c-cancel").await;
    let inv = b.expect_request(rsip::Method::Invite).await;
    b.reply(&inv, 180, false).await;
    a.expect_code(180).await;
    a.send(&format!(
        "CANCEL sip:1002@{s} SIP/2.0\r\nVia: SIP/2.0/UDP {aa};branch=z9hG4bKinvc-cancel2;rport\r\nMax-Forwards: 70\r\n\
From: <sip:1001@{s}>;tag=fromc-cancel\r\nTo: <sip:1002@{s}>\r\nCall-ID: c-cancel\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n",
        s = e.server,
        aa = a.addr
    ))
    .await;
    a.expect_code(200).await;
    a.expect_code(487).await;
    let cancel = b.expect_request(rsip::Method::Cancel).await;
    b.reply(&cancel, 200, false).await;
    b.reply(&inv, 487, false).await;
    assert_eq!(
        next_cdr(&mut cdrs).await.disposition,
        Disposition::Cancelled
    );

    // No answer within the configured timeout: 480 to the caller, CANCEL to the callee.
    a.invite("1002", "c-noans").await;
    let inv = b.expect_request(rsip::Method::Invite).await;
    b.reply(&inv, 180, false).await;
    let t0 = Instant::now();
    a.expect_code(480).await;
    assert!(t0.elapsed() >= Duration::from_millis(800));
    b.expect_request(rsip::Method::Cancel).await;
    assert_eq!(next_cdr(&mut cdrs).await.disposition, Disposition::NoAnswer);

    // Unknown extension → 404; known but offline → 480; both failed CDRs.
    a.invite("9999", "c-unknown").await;
    a.expect_code(404).await;
    let cdr = next_cdr(&mut cdrs).await;
    assert_eq!(
        (cdr.callee.as_str(), cdr.disposition),
        ("9999", Disposition::Failed)
    );
    a.invite("1003", "c-offline").await;
    a.expect_code(480).await;
    assert_eq!(next_cdr(&mut cdrs).await.disposition, Disposition::Failed);

    // Wrong password on INVITE → 403, no CDR.
    let mut bad = Ua::new("1001", "wrong", e.server).await;
    bad.seq = 0;
    bad.send(&bad.invite_msg("1002", "c-bad", 1, None)).await;
    let r = bad.expect_code(407).await;
    let ch = challenges(&r, true).remove(0);
    let auth = client_authorization(
        &ch,
        "1001",
        "wrong",
        "INVITE",
        &format!("sip:1002@{}", e.server),
    )
    .unwrap();
    bad.send(&bad.invite_msg("1002", "c-bad", 2, Some(&auth)))
        .await;
    bad.expect_code(403).await;

    let st = e.svc.status();
    assert_eq!(st.active_calls, 0);
    assert_eq!(st.call_attempts_total, 5);
    assert_eq!(e.backend.calls().len(), 5);
    e.svc.shutdown().await;
}

#[tokio::test]
async fn registrations_survive_a_new_master_without_reregistering() {
    // The bindings live in the (replicated) backend: a service started afresh on the
    // same address — what a failover does — routes calls to phones that registered
    // with the previous one.
    let e = env(32600, |_| {}).await;
    let (a, b) = two_phones(&e).await;
    let server = e.server;
    e.svc.shutdown().await;
    drop(e.svc);
    let relay = Relay::start(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertised_ip: "127.0.0.1".parse().unwrap(),
        port_low: 32650,
        port_high: 32699,
        recordings_dir: e._tmp.path().to_path_buf(),
    })
    .await
    .unwrap();
    let svc2 = Service::start(ServiceConfig::new(server, server), e.backend.clone(), relay)
        .await
        .unwrap();
    assert_eq!(svc2.status().registrations.len(), 2);
    let mut cdrs = e.backend.subscribe();
    a.invite("1002", "c-after-failover").await;
    let inv = b.expect_request(rsip::Method::Invite).await;
    b.reply(&inv, 200, true).await;
    let ok = a.expect_code(200).await;
    a.send(&a.in_dialog("ACK", &ok, "c-after-failover", 2))
        .await;
    a.send(&a.in_dialog("BYE", &ok, "c-after-failover", 3))
        .await;
    a.expect_code(200).await;
    b.expect_request(rsip::Method::Bye).await;
    assert_eq!(next_cdr(&mut cdrs).await.disposition, Disposition::Answered);
    svc2.shutdown().await;
}
