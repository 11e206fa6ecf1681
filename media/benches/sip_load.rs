//! SIP load generator against the real service on 127.0.0.1: registrations/s
//! (with digest authentication: REGISTER → 401 → REGISTER → 200) and call
//! setups/s (INVITE → 407 → INVITE → 100/180/200 → ACK, then BYE), each phone a
//! UDP socket of its own, the callee side answering automatically.
//!
//! `cargo bench -p tandem-media --bench sip_load` (env: SIP_LOAD_PHONES, default
//! 1000 phones = 500 caller/callee pairs; SIP_LOAD_CALLS, default 4000;
//! SIP_LOAD_CONCURRENCY, default 64).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_media::digest::client_authorization;
use tandem_media::relay::{Relay, RelayConfig};
use tandem_media::service::{Service, ServiceConfig};
use tandem_media::sip::message;
use tandem_media::testing::MemoryBackend;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Phone {
    ext: String,
    sock: UdpSocket,
    addr: SocketAddr,
}

/// Send a request and wait for its final response (skipping 1xx and stale
/// answers), retransmitting on T1 doubling like a real UAC (RFC 3261 §17.1).
async fn transact(
    sock: &UdpSocket,
    req: &str,
    server: SocketAddr,
    cseq: u32,
    buf: &mut [u8],
) -> Option<(u16, rsip::Response)> {
    let mut wait = Duration::from_millis(500);
    for _ in 0..7 {
        let _ = sock.send_to(req.as_bytes(), server).await;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(buf)).await {
            let Ok(rsip::SipMessage::Response(r)) = message::parse(&buf[..n]) else {
                continue;
            };
            let code = r.status_code.code();
            if code >= 200 && message::cseq(&r.headers).map(|c| c.0) == Some(cseq) {
                return Some((code, r));
            }
        }
        wait *= 2;
    }
    None
}

fn header(r: &rsip::Response, name: &str) -> Option<String> {
    use rsip::headers::UntypedHeader;
    r.headers.iter().find_map(|h| match h {
        rsip::Header::WwwAuthenticate(v) if name == "www" => Some(v.value().to_string()),
        rsip::Header::ProxyAuthenticate(v) if name == "proxy" => Some(v.value().to_string()),
        _ => None,
    })
}

fn register_msg(p: &Phone, server: SocketAddr, cseq: u32, auth: Option<&str>) -> String {
    let mut m = format!(
        "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKr{}{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{}@{server}>;tag=r{}\r\nTo: <sip:{}@{server}>\r\nCall-ID: reg-{}\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:{}@{}>\r\nExpires: 3600\r\n",
        p.addr, p.ext, p.ext, p.ext, p.ext, p.ext, p.ext, p.addr
    );
    if let Some(a) = auth {
        m.push_str(&format!("Authorization: {a}\r\n"));
    }
    m.push_str("Content-Length: 0\r\n\r\n");
    m
}

async fn register(p: &Phone, server: SocketAddr, pass: &str) -> bool {
    let mut buf = vec![0u8; 65536];
    let Some((401, r)) = transact(
        &p.sock,
        &register_msg(p, server, 1, None),
        server,
        1,
        &mut buf,
    )
    .await
    else {
        return false;
    };
    let Some(ch) = header(&r, "www") else {
        return false;
    };
    let auth = client_authorization(&ch, &p.ext, pass, "REGISTER", &format!("sip:{server}"));
    let Some(auth) = auth else { return false };
    matches!(
        transact(
            &p.sock,
            &register_msg(p, server, 2, Some(&auth)),
            server,
            2,
            &mut buf
        )
        .await,
        Some((200, _))
    )
}

fn sdp(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        ip = addr.ip(),
        port = addr.port() + 1
    )
}

fn invite_msg(
    p: &Phone,
    callee: &str,
    server: SocketAddr,
    n: u64,
    cseq: u32,
    auth: Option<&str>,
) -> String {
    let body = sdp(p.addr);
    let mut m = format!(
        "INVITE sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKi{n}x{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{}@{server}>;tag=f{n}\r\nTo: <sip:{callee}@{server}>\r\nCall-ID: call-{n}\r\n\
CSeq: {cseq} INVITE\r\nContact: <sip:{}@{}>\r\nContent-Type: application/sdp\r\n",
        p.addr, p.ext, p.ext, p.addr
    );
    if let Some(a) = auth {
        m.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    m
}

fn in_dialog(
    method: &str,
    p: &Phone,
    r: &rsip::Response,
    server: SocketAddr,
    n: u64,
    cseq: u32,
) -> String {
    let h = &r.headers;
    let to = message::to(h).unwrap_or_default();
    let target = message::contacts(h)
        .first()
        .map(|c| message::uri_of(c).to_string())
        .unwrap_or_default();
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{method}{n};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{}@{server}>;tag=f{n}\r\nTo: {to}\r\nCall-ID: call-{n}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        p.addr, p.ext
    )
}

/// Echo a request's headers into a response.
fn answer(
    req: &rsip::Request,
    code: u16,
    reason: &str,
    tag: &str,
    contact: SocketAddr,
    body: Option<String>,
) -> String {
    let h = &req.headers;
    let mut m = format!("SIP/2.0 {code} {reason}\r\n");
    use rsip::headers::UntypedHeader;
    for hd in h.iter() {
        if let rsip::Header::Via(v) = hd {
            m.push_str(&format!("Via: {}\r\n", v.value()));
        }
    }
    let to = message::to(h).unwrap_or_default();
    let to = if message::tag(to).is_some() {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    };
    m.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:callee@{contact}>\r\n",
        message::from(h).unwrap_or_default(),
        message::call_id(h).unwrap_or_default(),
        h.iter()
            .find_map(|x| match x {
                rsip::Header::CSeq(c) => Some(c.value().to_string()),
                _ => None,
            })
            .unwrap_or_default(),
    ));
    match body {
        Some(b) => m.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => m.push_str("Content-Length: 0\r\n\r\n"),
    }
    m
}

/// Callee: answer every INVITE with 180 + 200, every BYE with 200, until idle.
async fn callee_loop(p: Arc<Phone>, stop: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 65536];
    while stop.load(Ordering::Relaxed) == 0 {
        let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(200), p.sock.recv_from(&mut buf)).await
        else {
            continue;
        };
        let Ok(rsip::SipMessage::Request(req)) = message::parse(&buf[..n]) else {
            continue;
        };
        let out = match req.method {
            rsip::Method::Invite => {
                let ring = answer(&req, 180, "Ringing", "cal", p.addr, None);
                let _ = p.sock.send_to(ring.as_bytes(), from).await;
                answer(&req, 200, "OK", "cal", p.addr, Some(sdp(p.addr)))
            }
            rsip::Method::Bye => answer(&req, 200, "OK", "cal", p.addr, None),
            _ => continue,
        };
        let _ = p.sock.send_to(out.as_bytes(), from).await;
    }
}

/// Caller: one full call; returns the setup time (first INVITE → 200) on success.
async fn call(p: &Phone, callee: &str, server: SocketAddr, n: u64, pass: &str) -> Option<Duration> {
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    let (407, r) = transact(
        &p.sock,
        &invite_msg(p, callee, server, n, 1, None),
        server,
        1,
        &mut buf,
    )
    .await?
    else {
        return None;
    };
    // RFC 3261 §17.1.1.3: the ACK for a non-2xx reuses the INVITE's branch and URI.
    let ack = format!(
        "ACK sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKi{n}x1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:{}@{server}>;tag=f{n}\r\nTo: {}\r\nCall-ID: call-{n}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        p.addr,
        p.ext,
        message::to(&r.headers).unwrap_or_default()
    );
    let _ = p.sock.send_to(ack.as_bytes(), server).await;
    let ch = header(&r, "proxy")?;
    let auth = client_authorization(
        &ch,
        &p.ext,
        pass,
        "INVITE",
        &format!("sip:{callee}@{server}"),
    )?;
    let (200, ok) = transact(
        &p.sock,
        &invite_msg(p, callee, server, n, 2, Some(&auth)),
        server,
        2,
        &mut buf,
    )
    .await?
    else {
        return None;
    };
    let setup = t0.elapsed();
    let _ = p
        .sock
        .send_to(in_dialog("ACK", p, &ok, server, n, 2).as_bytes(), server)
        .await;
    match transact(
        &p.sock,
        &in_dialog("BYE", p, &ok, server, n, 3),
        server,
        3,
        &mut buf,
    )
    .await?
    {
        (200, _) => Some(setup),
        _ => None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks
    }
    let phones = env("SIP_LOAD_PHONES", 1000).max(2) / 2 * 2;
    let calls = env("SIP_LOAD_CALLS", 4000);
    let conc = env("SIP_LOAD_CONCURRENCY", 64).max(1);
    let tmp = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::new());
    for i in 0..phones {
        backend.add_user(&format!("{}", 10000 + i), "pw");
    }
    let relay = Relay::start(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertised_ip: "127.0.0.1".parse().unwrap(),
        port_low: 20000,
        port_high: 39999,
        recordings_dir: tmp.path().to_path_buf(),
    })
    .await
    .unwrap();
    let mut cfg = ServiceConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    cfg.digest_algorithms = vec![tandem_media::digest::Algorithm::Md5];
    cfg.guard.source_threshold = 1_000_000;
    cfg.guard.account_threshold = 1_000_000;
    let svc = Service::start(cfg, backend.clone(), relay).await.unwrap();
    let server = svc.local_addr();

    let mut ps = Vec::new();
    for i in 0..phones {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        ps.push(Arc::new(Phone {
            ext: format!("{}", 10000 + i),
            sock,
            addr,
        }));
    }

    // Registrations.
    let sem = Arc::new(Semaphore::new(conc));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in &ps {
        let p = p.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            register(&p, server, "pw").await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    let reg_secs = t0.elapsed().as_secs_f64();
    println!(
        "registrations: {ok}/{phones} ok in {reg_secs:.2} s = {:.0} registrations/s (digest, 2 round trips each, concurrency {conc})",
        ok as f64 / reg_secs
    );

    // Calls: first half call the second half.
    let stop = Arc::new(AtomicU64::new(0));
    let half = phones / 2;
    let mut callees = Vec::new();
    for p in &ps[half..] {
        callees.push(tokio::spawn(callee_loop(p.clone(), stop.clone())));
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let per_caller = calls.div_ceil(half);
    let conc_callers = conc.min(half);
    let callers: Vec<Arc<Phone>> = ps[..half].to_vec();
    for (w, chunk) in callers.chunks(half.div_ceil(conc_callers)).enumerate() {
        let chunk: Vec<Arc<Phone>> = chunk.to_vec();
        let ps2 = ps.clone();
        tasks.push(tokio::spawn(async move {
            let mut setups = Vec::new();
            let mut failed = 0usize;
            for round in 0..per_caller {
                for (j, p) in chunk.iter().enumerate() {
                    let idx = ps2.iter().position(|x| Arc::ptr_eq(x, p)).unwrap();
                    let callee = &ps2[idx + half].ext;
                    let n = (w * 1_000_000 + round * 1000 + j) as u64;
                    match call(p, callee, server, n, "pw").await {
                        Some(d) => setups.push(d),
                        None => failed += 1,
                    }
                }
            }
            (setups, failed)
        }));
    }
    let mut setups = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (s, f) = t.await.unwrap();
        setups.extend(s);
        failed += f;
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    for c in callees {
        let _ = c.await;
    }
    setups.sort();
    let pct = |q: f64| {
        setups
            .get(((setups.len() as f64 * q) as usize).min(setups.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "calls: {} ok, {failed} failed in {secs:.2} s = {:.0} call setups/s (each: INVITE/407/ACK/INVITE/100/180/200/ACK/BYE/200 on both legs, relay ports allocated, CDR written); setup p50 {:.1} ms p99 {:.1} ms",
        setups.len(),
        setups.len() as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    let st = svc.status();
    println!(
        "service counters: attempts {} answers {} failures {} active {} CDRs {}",
        st.call_attempts_total,
        st.call_answers_total,
        st.call_failures_total,
        st.active_calls,
        backend.calls().len()
    );
    svc.shutdown().await;
}
