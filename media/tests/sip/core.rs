//! The B2BUA core driven directly with bytes and a fake clock (no SIP sockets, no
//! sleeping): timer behaviour that would take half a minute on the wire.

use rsip::{Header, SipMessage};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_media::b2bua::{Clock, Core, CoreConfig, Output, Peer};
use tandem_media::backend::{Backend, Binding, Disposition};
use tandem_media::digest::{client_authorization, Algorithm};
use tandem_media::registrar::RegistrarConfig;
use tandem_media::relay::{Relay, RelayConfig};
use tandem_media::sip::transaction::TimerConfig;
use tandem_media::sip::{self, message, Transport};
use tandem_media::testing::MemoryBackend;

const A: &str = "127.0.0.1:40001";
const B: &str = "127.0.0.1:40002";

struct Harness {
    core: Core<MemoryBackend>,
    t0: Instant,
    unix: i64,
    _tmp: tempfile::TempDir,
}

fn peer(a: &str) -> Peer {
    Peer {
        addr: a.parse().unwrap(),
        transport: Transport::Udp,
    }
}

impl Harness {
    async fn new(port_base: u16) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(MemoryBackend::new());
        backend.add_user("1001", "pa");
        backend.add_user("1002", "pb");
        let unix = backend.now_unix();
        for (aor, src) in [("1001", A), ("1002", B)] {
            backend
                .save_binding(Binding {
                    aor: aor.into(),
                    contact: format!("sip:{aor}@{src}"),
                    source: src.parse().unwrap(),
                    transport: Transport::Udp,
                    expires_at_unix: unix + 3600,
                    call_id: "r".into(),
                    cseq: 1,
                })
                .await
                .unwrap();
        }
        let relay = Relay::start(RelayConfig {
            bind_ip: "127.0.0.1".parse().unwrap(),
            advertised_ip: "127.0.0.1".parse().unwrap(),
            port_low: port_base,
            port_high: port_base + 39,
            recordings_dir: tmp.path().to_path_buf(),
        })
        .await
        .unwrap();
        let cfg = CoreConfig {
            advertised: "127.0.0.1:5060".parse().unwrap(),
            registrar: RegistrarConfig {
                realm: "tandem".into(),
                min_expires: 60,
                max_expires: 3600,
                default_expires: 3600,
            },
            no_answer_timeout: Duration::from_secs(30),
            timers: TimerConfig::default(),
            user_agent: "test".into(),
            guard: Default::default(),
            nonce_ttl_secs: 300,
            digest_algorithms: vec![Algorithm::Md5],
        };
        Harness {
            core: Core::new(cfg, backend, relay),
            t0: Instant::now(),
            unix,
            _tmp: tmp,
        }
    }

    fn clock(&self, ms: u64) -> Clock {
        Clock {
            now: self.t0 + Duration::from_millis(ms),
            wall: chrono::Utc::now() + chrono::Duration::milliseconds(ms as i64),
            unix: self.unix + (ms / 1000) as i64,
        }
    }

    /// Feed bytes at `ms`; return the messages sent (destination, parsed) and other outputs.
    fn feed(
        &mut self,
        from: &str,
        bytes: &str,
        ms: u64,
    ) -> (Vec<(SocketAddr, SipMessage)>, Vec<Output>) {
        let c = self.clock(ms);
        self.core.on_bytes(bytes.as_bytes(), peer(from), &c);
        self.drain()
    }

    fn tick(&mut self, ms: u64) -> (Vec<(SocketAddr, SipMessage)>, Vec<Output>) {
        let c = self.clock(ms);
        self.core.poll(&c);
        self.drain()
    }

    fn drain(&mut self) -> (Vec<(SocketAddr, SipMessage)>, Vec<Output>) {
        let mut sent = Vec::new();
        let mut other = Vec::new();
        for o in self.core.take_outputs() {
            match o {
                Output::Send { peer, bytes } => {
                    sent.push((peer.addr, message::parse(&bytes).unwrap()))
                }
                o => other.push(o),
            }
        }
        (sent, other)
    }

    /// Authenticated INVITE from A to 1002; returns the INVITE that reached B.
    fn call(&mut self, call: &str, ms: u64) -> rsip::Request {
        let (sent, _) = self.feed(A, &invite(call, 1, None), ms);
        let r407 = response_with(&sent, 407);
        let ch = r407
            .headers
            .iter()
            .find_map(|h| match h {
                Header::ProxyAuthenticate(v) => {
                    Some(rsip::headers::UntypedHeader::value(v).to_string())
                }
                _ => None,
            })
            .unwrap();
        let auth =
            client_authorization(&ch, "1001", "pa", "INVITE", "sip:1002@127.0.0.1:5060").unwrap();
        // RFC 3261 §17.1.1.3: ACK the 407 in its transaction (same branch).
        let ack = format!(
            "ACK sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{call}1\r\n\
From: <sip:1001@127.0.0.1>;tag=fa{call}\r\nTo: {}\r\nCall-ID: {call}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            message::to(&r407.headers).unwrap()
        );
        let (sent, _) = self.feed(A, &ack, ms);
        assert!(sent.is_empty());
        let (sent, _) = self.feed(A, &invite(call, 2, Some(&auth)), ms);
        sent.into_iter()
            .find_map(|(to, m)| match m {
                SipMessage::Request(r)
                    if r.method == rsip::Method::Invite && to == B.parse().unwrap() =>
                {
                    Some(r)
                }
                _ => None,
            })
            .expect("INVITE forwarded to the callee's binding")
    }
}

fn invite(call: &str, cseq: u32, auth: Option<&str>) -> String {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40010 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{call}{cseq}\r\n\
From: <sip:1001@127.0.0.1>;tag=fa{call}\r\nTo: <sip:1002@127.0.0.1>\r\nCall-ID: {call}\r\nCSeq: {cseq} INVITE\r\n\
Contact: <sip:1001@{A}>\r\nContent-Type: application/sdp\r\n{}Content-Length: {}\r\n\r\n{body}",
        auth.map(|a| format!("Proxy-Authorization: {a}\r\n")).unwrap_or_default(),
        body.len()
    )
}

fn response_with(sent: &[(SocketAddr, SipMessage)], code: u16) -> rsip::Response {
    sent.iter()
        .find_map(|(_, m)| match m {
            SipMessage::Response(r) if r.status_code.code() == code => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {code} in {sent:?}"))
}

fn codes_to(sent: &[(SocketAddr, SipMessage)], to: &str) -> Vec<u16> {
    sent.iter()
        .filter(|(a, _)| *a == to.parse::<SocketAddr>().unwrap())
        .filter_map(|(_, m)| match m {
            SipMessage::Response(r) => Some(r.status_code.code()),
            _ => None,
        })
        .collect()
}

fn methods_to(sent: &[(SocketAddr, SipMessage)], to: &str) -> Vec<rsip::Method> {
    sent.iter()
        .filter(|(a, _)| *a == to.parse::<SocketAddr>().unwrap())
        .filter_map(|(_, m)| match m {
            SipMessage::Request(r) => Some(r.method),
            _ => None,
        })
        .collect()
}

fn b_answers(inv: &rsip::Request, code: u16) -> String {
    let mut r = sip::response(inv, code, Some("bt"), "b");
    r.headers
        .push(Header::Contact(format!("<sip:1002@{B}>").into()));
    if code == 200 {
        r.headers
            .push(Header::ContentType("application/sdp".into()));
        r.body = b"v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40020 RTP/AVP 0\r\n".to_vec();
    }
    String::from_utf8(sip::to_bytes(r)).unwrap()
}

fn ended(other: &[Output]) -> Option<Disposition> {
    other.iter().find_map(|o| match o {
        Output::CallEnded { record, .. } => Some(record.disposition),
        _ => None,
    })
}

#[tokio::test]
async fn answer_is_retransmitted_until_ack_and_unacked_answer_ends_call() {
    // RFC 3261 §13.3.1.4: the UAS resends the 2xx at T1, 2T1, ... up to T2 until the
    // ACK; without ACK for 64*T1 the session is ended with BYE.
    let mut h = Harness::new(32700).await;
    let inv = h.call("c1", 0);
    let (sent, _) = h.feed(B, &b_answers(&inv, 200), 100);
    assert_eq!(codes_to(&sent, A), vec![200]);
    assert_eq!(methods_to(&sent, B), vec![rsip::Method::Ack]);
    let (sent, _) = h.tick(600);
    assert_eq!(codes_to(&sent, A), vec![200], "first retransmission at T1");
    assert!(codes_to(&h.tick(1000).0, A).is_empty());
    assert_eq!(codes_to(&h.tick(1600).0, A), vec![200], "then 2*T1 later");
    // ACK from A stops it.
    let ok = response_with(&sent, 200);
    let ack = format!(
        "ACK sip:1002@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bKack1\r\nFrom: <sip:1001@127.0.0.1>;tag=fac1\r\n\
To: {}\r\nCall-ID: c1\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
        message::to(&ok.headers).unwrap()
    );
    h.feed(A, &ack, 1700);
    for ms in [3600, 7600, 15600] {
        assert!(
            codes_to(&h.tick(ms).0, A).is_empty(),
            "no retransmission after ACK"
        );
    }
    // The retransmitted 2xx from B (its ACK got lost) is ACKed again (§13.2.2.4).
    let (sent, _) = h.feed(B, &b_answers(&inv, 200), 16000);
    assert_eq!(methods_to(&sent, B), vec![rsip::Method::Ack]);

    // Second call: A never ACKs → BYE to B at 64*T1, CDR answered.
    let inv = h.call("c2", 20_000);
    h.feed(B, &b_answers(&inv, 200), 20_100);
    let mut bye_at = None;
    let mut disp = None;
    for ms in (20_200..60_000).step_by(500) {
        let (sent, other) = h.tick(ms);
        if methods_to(&sent, B).contains(&rsip::Method::Bye) {
            bye_at.get_or_insert(ms);
        }
        disp = disp.or(ended(&other));
    }
    let bye_at = bye_at.expect("BYE to the callee");
    assert!(
        (52_000..=52_700).contains(&bye_at),
        "BYE at {bye_at} ms (answer + 32 s)"
    );
    assert_eq!(disp, Some(Disposition::Answered));
}

#[tokio::test]
async fn ringing_past_the_no_answer_timeout_cancels_the_callee() {
    let mut h = Harness::new(32750).await;
    let inv = h.call("c3", 0);
    let (sent, _) = h.feed(B, &b_answers(&inv, 180), 200);
    assert_eq!(codes_to(&sent, A), vec![180]);
    let (sent, other) = h.tick(29_900);
    assert!(
        sent.is_empty() && other.is_empty(),
        "still ringing at 29.9 s"
    );
    let (sent, other) = h.tick(30_000);
    assert_eq!(codes_to(&sent, A), vec![480]);
    assert_eq!(methods_to(&sent, B), vec![rsip::Method::Cancel]);
    assert_eq!(ended(&other), Some(Disposition::NoAnswer));
    // B confirms: 200 for CANCEL, 487 for the INVITE, which we ACK (§17.1.1.3).
    let cancel = match &sent
        .iter()
        .find(|(a, _)| *a == B.parse().unwrap())
        .unwrap()
        .1
    {
        SipMessage::Request(r) => r.clone(),
        _ => unreachable!(),
    };
    h.feed(
        B,
        &String::from_utf8(sip::to_bytes(sip::response(&cancel, 200, None, "b"))).unwrap(),
        30_010,
    );
    let (sent, _) = h.feed(B, &b_answers(&inv, 487), 30_020);
    assert_eq!(methods_to(&sent, B), vec![rsip::Method::Ack]);
    assert!(
        codes_to(&sent, A).is_empty(),
        "the caller already has its final answer"
    );
    // Everything is forgotten once the timers ran out (D = 32 s, J/K).
    for ms in (30_100..70_000).step_by(1000) {
        h.tick(ms);
    }
    assert_eq!(h.core.transaction_counts(), (0, 0));
}
