//! Attacks on the SIP port, as a prober on 127.0.0.x would run them: a captured
//! Authorization replayed (RFC 7616 §3.4 / §5.10), a password guessed for one
//! extension from many addresses, and TCP connections that hold the listener.

use super::*;
use std::io::Write;
use tandem_media::digest::{response, Credentials};

/// The same Authorization with nonce count `nc` (a phone re-using its nonce,
/// RFC 7616 §3.4: `nc` counts the requests sent with it).
fn with_nc(auth: &str, pass: &str, method: &str, nc: u32) -> String {
    let mut c = Credentials::parse(auth).unwrap();
    let old_nc = c.nc.clone().unwrap();
    let old_resp = c.response.clone();
    c.nc = Some(format!("{nc:08x}"));
    let resp = response(&c, method, pass).unwrap();
    auth.replace(&format!("nc={old_nc}"), &format!("nc={nc:08x}"))
        .replace(&old_resp, &resp)
}

#[tokio::test]
async fn a_replayed_authorization_is_challenged_again_not_accepted() {
    let e = env(33000, |_| {}).await;
    let mut phone = Ua::on("127.0.0.1", "1001", "pa", e.server).await;
    let auth = phone.challenged_auth(None, Algorithm::Md5).await;
    assert_eq!(
        phone.register_with(None, &auth).await.status_code.code(),
        200
    );

    // The captured header, replayed from another address with its own Contact.
    let mut attacker = Ua::on("127.0.0.2", "1001", "unknown", e.server).await;
    let r = attacker.register_with(None, &auth).await;
    assert_eq!(
        r.status_code.code(),
        401,
        "a nonce issued to 127.0.0.1 must not work from 127.0.0.2"
    );
    // The fresh challenge says the digest was right but the nonce is not (RFC 7616 §3.3).
    assert!(challenges(&r, false)[0].contains("stale=true"), "{r}");
    // Same source, same nonce count: a replay too.
    let r = phone.register_with(None, &auth).await;
    assert_eq!(r.status_code.code(), 401, "nc 1 was used already");
    assert!(challenges(&r, false)[0].contains("stale=true"), "{r}");
    // Only the phone is bound.
    let bound: Vec<SocketAddr> = e
        .backend
        .stored_bindings()
        .iter()
        .map(|b| b.source)
        .collect();
    assert_eq!(bound, vec![phone.addr]);
    // What a real phone does, the next count on the same nonce, still works.
    let next = with_nc(&auth, "pa", "REGISTER", 2);
    assert_eq!(
        phone.register_with(None, &next).await.status_code.code(),
        200
    );
    // And a lower count after a higher one is refused.
    let r = phone.register_with(None, &auth).await;
    assert_eq!(r.status_code.code(), 401);
    // None of that is a wrong password; the replays are counted.
    let st = e.svc.status();
    assert_eq!((st.auth_failures_total, st.auth_replays_total), (0, 2));
    e.svc.shutdown().await;
}

/// The final code of a REGISTER answering the challenge with the phone's password.
async fn registered(ua: &mut Ua) -> u16 {
    ua.register(None, Algorithm::Md5).await.status_code.code()
}

/// Log lines the service writes, captured from this (current-thread) runtime.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self, level: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn password_guessing_from_many_addresses_locks_the_account_with_one_alarm() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let e = env(33100, |_| {}).await;
    // The real phone registered before the attack.
    let mut phone = Ua::on("127.0.0.50", "1001", "pa", e.server).await;
    assert_eq!(registered(&mut phone).await, 200);

    // 50 wrong passwords for 1001 from 20 addresses: 2-3 each, under any
    // per-source limit.
    let mut guessers = Vec::new();
    for i in 0..20 {
        guessers.push(Ua::on(&format!("127.0.0.{}", 10 + i), "1001", "guess", e.server).await);
    }
    let mut refused_unchecked = 0;
    for attempt in 0..50 {
        let g = &mut guessers[attempt % 20];
        let m = g.register_msg(None, None);
        g.send(&m).await;
        let r = g.final_response().await;
        match r.status_code.code() {
            401 => {
                let ch = challenges(&r, false).remove(0);
                let auth = client_authorization(
                    &ch,
                    "1001",
                    &format!("guess{attempt}"),
                    "REGISTER",
                    &format!("sip:{}", e.server),
                )
                .unwrap();
                let code = g.register_with(None, &auth).await.status_code.code();
                assert_eq!(code, 403, "attempt {attempt}");
            }
            403 => refused_unchecked += 1,
            other => panic!("attempt {attempt}: {other}"),
        }
    }
    assert!(
        refused_unchecked > 0,
        "the account must be locked before 50 guesses"
    );
    // Locked: the right password from an address that is not the phone's is refused.
    let mut newcomer = Ua::on("127.0.0.99", "1001", "pa", e.server).await;
    let m = newcomer.register_msg(None, None);
    newcomer.send(&m).await;
    let r = newcomer.final_response().await;
    assert_eq!(r.status_code.code(), 403, "locked account, unknown address");
    // The registered phone refreshes its registration as usual.
    assert_eq!(registered(&mut phone).await, 200);
    let st = e.svc.status();
    assert_eq!((st.accounts_locked_total, st.sources_banned_total), (1, 0));
    // One alarm for the whole burst, and a bounded number of warnings.
    assert_eq!(
        e.backend.security_events().len(),
        1,
        "{:?}",
        e.backend.security_events()
    );
    let warns = log.lines("WARN");
    eprintln!("warnings of the burst:\n{}", warns.join("\n"));
    assert!(
        !warns.is_empty() && warns.len() <= 6,
        "{} warnings:\n{}",
        warns.len(),
        warns.join("\n")
    );
    e.svc.shutdown().await;
}
async fn read_until_closed(s: &mut tokio::net::TcpStream, secs: u64) -> bool {
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn options(server: SocketAddr, local: SocketAddr, n: usize) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp{n}\r\nFrom: <sip:1001@{server}>;tag=t{n}\r\n\
To: <sip:{server}>\r\nCall-ID: tcp-opt-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Whether an OPTIONS on `s` is answered (false: the connection was closed).
async fn answered(s: &mut tokio::net::TcpStream, server: SocketAddr, n: usize) -> bool {
    let local = s.local_addr().unwrap();
    if s.write_all(options(server, local, n).as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => buf[..n].starts_with(b"SIP/2.0 200 "),
        Ok(_) => false,
        Err(_) => panic!("connection {n}: neither answered nor closed within 5 s"),
    }
}

#[tokio::test]
async fn tcp_connections_over_the_per_source_cap_are_closed() {
    let e = env(33200, |_| {}).await;
    let mut conns = Vec::new();
    for _ in 0..140 {
        conns.push(tokio::net::TcpStream::connect(e.server).await.unwrap());
    }
    let mut ok = 0;
    for (i, s) in conns.iter_mut().enumerate() {
        if answered(s, e.server, i).await {
            ok += 1;
        }
    }
    assert_eq!(ok, 128, "the default per-source cap is 128 connections");
    assert_eq!(e.svc.status().tcp_refused_total, 12);
    // Closing some frees room for new ones.
    conns.truncate(100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(answered(&mut s, e.server, 999).await);
    e.svc.shutdown().await;
}

#[tokio::test]
async fn a_tcp_connection_that_never_completes_a_message_is_closed() {
    let e = env(33300, |_| {}).await;
    let mut silent = tokio::net::TcpStream::connect(e.server).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(e.server).await.unwrap();
    let local = partial.local_addr().unwrap();
    let msg = options(e.server, local, 1);
    partial
        .write_all(&msg.as_bytes()[..msg.len() / 2])
        .await
        .unwrap();
    // The default header timeout is 10 s; 30 s is the liveness bound.
    assert!(
        read_until_closed(&mut silent, 30).await,
        "silent connection kept"
    );
    assert!(
        read_until_closed(&mut partial, 30).await,
        "half a header kept"
    );
    e.svc.shutdown().await;
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed_and_the_total_cap_holds() {
    let e = env(33400, |c| {
        c.tcp_limits.idle_timeout = Duration::from_secs(2);
        c.tcp_limits.max_connections = 3;
    })
    .await;
    let mut a = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(answered(&mut a, e.server, 1).await);
    // The cap counts every source: 3 open, the 4th (another address) is closed.
    let b = tokio::net::TcpSocket::new_v4().unwrap();
    b.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut b = b.connect(e.server).await.unwrap();
    assert!(answered(&mut b, e.server, 2).await);
    let mut c = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(answered(&mut c, e.server, 3).await);
    let mut d = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(!answered(&mut d, e.server, 4).await, "over the total cap");
    // Idle for 2 s after its last message: closed (15 s is the liveness bound).
    assert!(read_until_closed(&mut a, 15).await, "idle connection kept");
    e.svc.shutdown().await;
}

#[tokio::test]
async fn at_the_total_cap_the_oldest_silent_tcp_connection_makes_room_for_a_phone() {
    let e = env(33500, |c| {
        c.tcp_limits.max_connections = 3;
    })
    .await;
    // A phone that completed a message is never evicted.
    let mut phone = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(answered(&mut phone, e.server, 1).await);
    // Two silent connections fill the port (from other addresses).
    let mut silent = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        silent.push(s.connect(e.server).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new phone gets in: the oldest silent connection is closed for it...
    let mut second = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(
        answered(&mut second, e.server, 2).await,
        "locked out by silent connections"
    );
    assert!(
        read_until_closed(&mut silent[0], 5).await,
        "oldest silent kept"
    );
    assert_eq!(e.svc.status().tcp_evicted_total, 1);
    // ...and the next one takes the other silent connection's place.
    let mut third = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(answered(&mut third, e.server, 3).await);
    assert!(
        read_until_closed(&mut silent[1], 5).await,
        "second silent kept"
    );
    // Now every connection has completed a message: the next one is refused, and
    // the phones are still served.
    let mut fourth = tokio::net::TcpStream::connect(e.server).await.unwrap();
    assert!(
        !answered(&mut fourth, e.server, 4).await,
        "over the total cap"
    );
    assert_eq!(e.svc.status().tcp_refused_total, 1);
    assert!(
        answered(&mut phone, e.server, 5).await,
        "the first phone was evicted"
    );
    e.svc.shutdown().await;
}
