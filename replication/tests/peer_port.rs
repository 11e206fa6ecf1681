//! The peer port against a client without credentials: what it may send, how long
//! it may stay, how many such connections there may be; and that cluster traffic
//! and joins still go through. A real peer server on 127.0.0.1 with the cluster's
//! TLS material, driven by rustls clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use openraft::raft::{VoteRequest, VoteResponse};
use openraft::Vote;
use tandem_replication::network::{
    self, LeaderOp, LeaderReply, PeerClient, PeerLimits, RpcHandler, RpcRequest, RpcResponse,
};
use tandem_replication::tls::{self, ClusterCa, JoinToken};
use tandem_replication::types::{NodeId, NodeInfo, Request};

// The allocator of the tandem binary, so that memory behaves as in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tests that measure the process's memory run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Answers votes, refuses joins with a fixed text, counts what it was asked.
#[derive(Default)]
struct Peer {
    joins: std::sync::atomic::AtomicUsize,
}

const JOIN_ANSWER: &str = "this test server enrols nobody";

impl RpcHandler for Peer {
    async fn handle(&self, peer: Option<NodeId>, req: RpcRequest) -> RpcResponse {
        match req {
            RpcRequest::Vote(v) => RpcResponse::Vote(Ok(VoteResponse::new(v.vote, None, true))),
            RpcRequest::Leader(_) => {
                assert!(
                    peer.is_some(),
                    "a leader op from a client without certificate"
                );
                RpcResponse::Leader(Ok(LeaderReply::Done))
            }
            RpcRequest::Join { .. } => {
                assert_eq!(peer, None);
                self.joins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                RpcResponse::Join(Err(JOIN_ANSWER.into()))
            }
            other => RpcResponse::Refused(format!("{} is not handled here", other.name())),
        }
    }
}

/// A cluster CA and the three TLS configurations of the tests.
struct Material {
    ca: ClusterCa,
    server: Arc<rustls::ServerConfig>,
    /// A member's client side (certificate of node 1).
    member: Arc<rustls::ClientConfig>,
    /// A client without a certificate (what `tandem join` uses).
    anonymous: Arc<rustls::ClientConfig>,
}

fn material() -> Material {
    let ca = ClusterCa::generate("test").unwrap();
    let server = tls::server_config(&ca.issue_identity(2).unwrap()).unwrap();
    let member = tls::client_config(&ca.issue_identity(1).unwrap()).unwrap();
    let anonymous = tls::join_client_config(&ca.fingerprint()).unwrap();
    Material {
        ca,
        server,
        member,
        anonymous,
    }
}

/// The peer server with its shipped limits.
async fn start_default(m: &Material) -> (String, Arc<Peer>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = Arc::new(Peer::default());
    tokio::spawn(network::serve(listener, m.server.clone(), peer.clone()));
    (addr, peer)
}

/// The peer server with the given limits.
async fn start(m: &Material, limits: PeerLimits) -> (String, Arc<Peer>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = Arc::new(Peer::default());
    tokio::spawn(network::serve_with(
        listener,
        m.server.clone(),
        peer.clone(),
        limits,
    ));
    (addr, peer)
}

fn vote(term: u64) -> RpcRequest {
    RpcRequest::Vote(VoteRequest::new(Vote::new(term, 1), None))
}

/// A real RPC from a member (client certificate of node 1), on a new connection.
async fn member_vote(m: &Material, addr: &str, term: u64) -> std::io::Result<()> {
    let mut c = PeerClient::new(2, addr.to_string(), m.member.clone());
    match c.call(&vote(term), Duration::from_secs(5)).await? {
        RpcResponse::Vote(Ok(v)) => {
            assert_eq!(v.vote.leader_id().term, term);
            Ok(())
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Whether the server has closed this connection (else it is still open after
/// `wait`).
async fn closed_within<R: tokio::io::AsyncRead + Unpin>(r: &mut R, wait: Duration) -> bool {
    tokio::time::timeout(wait, closed_by_server(r))
        .await
        .is_ok()
}

/// Resident memory of this process (the server runs in it), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// The first bytes of a join request's body (version byte + variant), so that a
/// frame looks like a join until its length is considered.
fn join_head() -> Vec<u8> {
    let frame = network::encode_frame(&RpcRequest::Join {
        secret: String::new(),
        id: 0,
        csr_pem: String::new(),
        info: Default::default(),
    })
    .unwrap();
    frame[4..9].to_vec()
}

/// Read until the server closes the connection (EOF or an error such as a reset);
/// frames it sends on the way (a refusal) are skipped.
async fn closed_by_server<R: tokio::io::AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_without_certificate_cannot_make_the_server_buffer_a_large_frame() {
    let _serial = SERIAL.lock().await;
    let m = material();
    let (addr, _) = start_default(&m).await;
    const CONNECTIONS: usize = 12;
    const ANNOUNCED: u32 = 60 * 1024 * 1024;
    // What each client tries to send of its body: the old server buffered all of
    // it (12 × 48 MiB resident) and kept waiting for the rest.
    const SENT: usize = 48 * 1024 * 1024;
    let before = rss();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = m.anonymous.clone();
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let s = network::connect(&addr, tls, Duration::from_secs(5))
                .await
                .expect("TLS without a client certificate is accepted (joins)");
            let (mut rd, mut wr) = tokio::io::split(s);
            let writer = async move {
                wr.write_all(&ANNOUNCED.to_le_bytes()).await?;
                wr.write_all(&join_head()).await?;
                wr.flush().await?;
                // Static zeros: the clients add nothing to the resident memory.
                static CHUNK: [u8; 1 << 20] = [0; 1 << 20];
                let mut sent = 0;
                while sent < SENT {
                    wr.write_all(&CHUNK).await?;
                    sent += CHUNK.len();
                }
                wr.flush().await?;
                // Keep the connection open: the server must be the one to close it.
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(wr)
            };
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::select! {
                    _ = closed_by_server(&mut rd) => {}
                    // A write fails once the server has closed (reset).
                    _ = writer => {}
                }
            })
            .await
            .is_ok();
            (closed, rd)
        }));
    }
    let mut still_open = 0;
    let mut keep = Vec::new();
    for c in clients {
        let (closed, rd) = c.await.unwrap();
        if !closed {
            still_open += 1;
        }
        keep.push(rd);
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{still_open} of {CONNECTIONS} connections still open after {:?}; RSS grew by {} MiB",
        t0.elapsed(),
        grown >> 20
    );
    assert_eq!(
        still_open, 0,
        "the server must close a connection without certificate that announces a {ANNOUNCED}-byte frame"
    );
    assert!(
        grown < 50 * 1024 * 1024,
        "RSS grew by {} MiB for {CONNECTIONS} announced frames of {} MiB",
        grown >> 20,
        ANNOUNCED >> 20
    );
    drop(keep);
}

#[test]
fn the_shipped_limits_are_sane() {
    use network::server::*;
    let d = PeerLimits::default();
    assert_eq!(d.unauthenticated_deadline, UNAUTHENTICATED_DEADLINE);
    assert_eq!(d.handshake_timeout, HANDSHAKE_TIMEOUT);
    assert_eq!(d.max_join_frame, MAX_JOIN_FRAME);
    assert_eq!(d.max_unauthenticated, MAX_UNAUTHENTICATED_CONNECTIONS);
    assert_eq!(d.max_authenticated, MAX_AUTHENTICATED_CONNECTIONS);
    // Long enough for a joiner across a slow WAN, short enough that a connection
    // held open costs little.
    for t in [UNAUTHENTICATED_DEADLINE, HANDSHAKE_TIMEOUT] {
        assert!(
            t >= Duration::from_secs(3) && t <= Duration::from_secs(30),
            "{t:?}"
        );
    }
    // A join request with a real CSR fits many times over; a Raft batch never
    // needs the unauthenticated path.
    let (_, csr_pem) = tls::NodeIdentity::generate_csr(7).unwrap();
    let join = network::encode_frame(&RpcRequest::Join {
        secret: "ab".repeat(32),
        id: 7,
        csr_pem,
        info: NodeInfo {
            addr: "203.0.113.250:7000".into(),
            api: "203.0.113.250:8080".into(),
            name: "a-rather-long-node-name-for-a-standby-in-the-second-site".into(),
            ..Default::default()
        },
    })
    .unwrap();
    assert!(
        join.len() * 16 < MAX_JOIN_FRAME,
        "join frame {} bytes",
        join.len()
    );
    // The connection caps are checked where they are defined (at compile time).
}

/// Short limits, so that the deadlines can be watched.
fn quick() -> PeerLimits {
    PeerLimits {
        handshake_timeout: Duration::from_millis(500),
        unauthenticated_deadline: Duration::from_millis(500),
        ..PeerLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_certificate_that_sends_nothing_is_dropped_at_the_deadline() {
    let _serial = SERIAL.lock().await;
    let m = material();
    let (addr, _) = start(&m, quick()).await;
    // TLS done, no request.
    let t0 = Instant::now();
    let mut idle = network::connect(&addr, m.anonymous.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "an idle connection without a certificate must be dropped"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "dropped too early: {took:?}"
    );
    // Half a join, then nothing: the deadline covers the whole request.
    let mut slow = network::connect(&addr, m.anonymous.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    slow.write_all(&1000u32.to_le_bytes()).await.unwrap();
    slow.write_all(&join_head()).await.unwrap();
    slow.flush().await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
    // Plain TCP that never starts the handshake: dropped at the handshake timeout.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let t0 = Instant::now();
    assert!(closed_within(&mut tcp, Duration::from_secs(3)).await);
    assert!(t0.elapsed() >= Duration::from_millis(400));
    // A member's connection has no such deadline: idle, then used.
    let mut member = network::connect(&addr, m.member.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    match network::exchange(&mut member, &vote(3), Duration::from_secs(5))
        .await
        .unwrap()
    {
        RpcResponse::Vote(Ok(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_certificate_are_capped_and_members_still_get_through() {
    let _serial = SERIAL.lock().await;
    let m = material();
    const CAP: usize = 8;
    let (addr, _) = start(
        &m,
        PeerLimits {
            max_unauthenticated: CAP,
            ..PeerLimits::default()
        },
    )
    .await;
    // Far more idle TLS connections without a certificate than the cap (the
    // shipped 10 s deadline would keep each of them).
    let mut anonymous = Vec::new();
    for _ in 0..5 * CAP {
        anonymous.push(
            network::connect(&addr, m.anonymous.clone(), Duration::from_secs(5))
                .await
                .unwrap(),
        );
    }
    let mut open = 0;
    for s in &mut anonymous {
        if !closed_within(s, Duration::from_millis(50)).await {
            open += 1;
        }
    }
    assert!(
        open <= CAP,
        "{open} connections without certificate open, cap {CAP}"
    );
    // And connections that never even start TLS (what filled the file descriptors).
    let mut raw = Vec::new();
    for _ in 0..20 * CAP {
        raw.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut raw_open = 0;
    for s in &mut raw {
        if !closed_within(s, Duration::from_millis(10)).await {
            raw_open += 1;
        }
    }
    assert!(
        raw_open <= CAP,
        "{raw_open} idle TCP connections open, cap {CAP}"
    );
    // Members, on new connections, are served all the same: several at once, as
    // the streams of a cluster (a member is in the pool only during its
    // handshake; fewer handshakes at once than the cap, as 16 nodes' reconnections
    // are against the shipped cap).
    for round in 0..4 {
        let calls = (0..CAP as u64 / 2).map(|i| member_vote(&m, &addr, 10 * round + i));
        for r in futures::future::join_all(calls).await {
            r.expect("a member must get through while the pool is full");
        }
    }
    // And a joiner gets its answer (the oldest waiting connection makes room).
    let dir = tempfile::tempdir().unwrap();
    let err = tandem_replication::replica::join(
        &addr,
        &JoinToken::generate(&m.ca),
        5,
        NodeInfo::default(),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(JOIN_ANSWER), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_beyond_their_cap_are_refused_until_one_leaves() {
    let _serial = SERIAL.lock().await;
    let m = material();
    let (addr, _) = start(
        &m,
        PeerLimits {
            max_authenticated: 3,
            ..PeerLimits::default()
        },
    )
    .await;
    let mut members = Vec::new();
    for term in 0..3 {
        let mut s = network::connect(&addr, m.member.clone(), Duration::from_secs(5))
            .await
            .unwrap();
        network::exchange(&mut s, &vote(term), Duration::from_secs(5))
            .await
            .unwrap();
        members.push(s);
    }
    assert!(
        member_vote(&m, &addr, 9).await.is_err(),
        "a fourth member connection"
    );
    members.pop();
    let mut ok = false;
    for _ in 0..50 {
        if member_vote(&m, &addr, 9).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot given back is used again");
    // Those open all along still work.
    for s in &mut members {
        network::exchange(s, &vote(1), Duration::from_secs(5))
            .await
            .unwrap();
    }
}

/// A leader op whose frame is about 1 MiB.
fn big_write() -> RpcRequest {
    RpcRequest::Leader(LeaderOp::Write(Request::SetConfig {
        key: "k".into(),
        value: "x".repeat(1 << 20),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_without_certificate_may_send() {
    let _serial = SERIAL.lock().await;
    let m = material();
    let (addr, peer) = start_default(&m).await;
    let anonymous = || network::connect(&addr, m.anonymous.clone(), Duration::from_secs(5));
    let t = Duration::from_secs(5);
    // A member sends frames as large as ever.
    let mut member = network::connect(&addr, m.member.clone(), t).await.unwrap();
    match network::exchange(&mut member, &big_write(), t)
        .await
        .unwrap()
    {
        RpcResponse::Leader(Ok(LeaderReply::Done)) => {}
        other => panic!("{other:?}"),
    }
    // Without a certificate: refused on the length, then closed.
    let mut s = anonymous().await.unwrap();
    match network::exchange(&mut s, &big_write(), t).await {
        Ok(RpcResponse::Refused(why)) => assert!(why.contains("at most 65536 bytes"), "{why}"),
        // The close may overtake the refusal (the body is never read).
        Err(_) => {}
        Ok(other) => panic!("{other:?}"),
    }
    assert!(closed_within(&mut s, t).await);
    // A small request of another kind: the refusal members have always seen.
    let mut s = anonymous().await.unwrap();
    match network::exchange(&mut s, &vote(1), t).await.unwrap() {
        RpcResponse::Refused(why) => assert!(why.contains("client certificate"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(closed_within(&mut s, t).await);
    // One join, answered; the connection is then closed.
    let join = RpcRequest::Join {
        secret: "00".repeat(32),
        id: 5,
        csr_pem: tls::NodeIdentity::generate_csr(5).unwrap().1,
        info: NodeInfo::default(),
    };
    let mut s = anonymous().await.unwrap();
    match network::exchange(&mut s, &join, t).await.unwrap() {
        RpcResponse::Join(Err(why)) => assert_eq!(why, JOIN_ANSWER),
        other => panic!("{other:?}"),
    }
    assert!(
        network::exchange(&mut s, &join, t).await.is_err(),
        "one join per connection"
    );
    // `tandem join`'s own path.
    let dir = tempfile::tempdir().unwrap();
    let err = tandem_replication::replica::join(
        &addr,
        &JoinToken::generate(&m.ca),
        5,
        NodeInfo::default(),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(JOIN_ANSWER), "{err}");
    assert_eq!(peer.joins.load(std::sync::atomic::Ordering::SeqCst), 2);
}
