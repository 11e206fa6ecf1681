//! Peer RPC: length-prefixed, versioned bincode frames over mutual TLS.
//!
//! ```text
//!  frame = u32 LE length | u8 protocol version | bincode(RpcRequest | RpcResponse)
//! ```
//!
//! The version byte and the body are the message's versioned encoding (see
//! [`crate::versioned`]): `RpcRequest` and `RpcResponse` are version
//! [`PROTOCOL_VERSION`], and every frame read is decoded by their `Versioned::decode`.
//! The handshake stays as it was: a frame of another protocol version is refused
//! with a message naming both versions (rolling upgrades, which would accept the
//! previous version and migrate it, are for later).
//!
//! One request at a time per connection; concurrency comes from several
//! connections (openraft opens one client per replication stream; forwarded writes
//! use a small pool). A client without a certificate may only send one small `Join`
//! within a deadline; the limits of the server (connections, sizes, timeouts) are
//! in [`server`].

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::types::{NodeId, NodeInfo, Request, Response, TypeConfig};
use crate::versioned::{initial_version, Versioned};

pub mod server;
pub use server::{serve, serve_with, PeerLimits};

/// Version of the peer protocol. A peer speaking another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;
/// Shortest timeout for an AppendEntries exchange.
pub const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);
/// Largest frame accepted from a member (a snapshot chunk or a batch of entries is
/// far smaller). A connection without a client certificate may send much less:
/// [`server::MAX_JOIN_FRAME`].
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A membership or write operation that only the leader can perform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    /// A client write (config, CDRs).
    Write(Request),
    /// Add a node as a learner (does not wait for it to catch up).
    AddLearner { id: NodeId, info: NodeInfo },
    /// Remove a node from the cluster (voter or learner).
    Remove { id: NodeId },
    /// Confirm leadership for a linearizable read; returns the index to wait for.
    ReadIndex,
    /// Hand leadership to `to` (or the best other data voter) without losing writes.
    Switchover { to: Option<NodeId> },
}

/// What the leader answers to a [`LeaderOp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Written {
        index: u64,
        response: Response,
    },
    Done,
    ReadIndex {
        index: u64,
    },
    /// Leadership moved to this node.
    SwitchedTo {
        leader: NodeId,
    },
}

/// Why a forwarded operation failed. `NotLeader` tells the sender where to go;
/// `Refused` carries the leader's error with its class, so the forwarding node
/// answers as the leader would have.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The first protocol's form: text only. Still read (as a permanent failure)
    /// from peers that send it; no longer sent.
    #[error("{0}")]
    Failed(String),
    #[error("{reason}")]
    Refused {
        reason: String,
        class: crate::error::FailureClass,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Leader(LeaderOp),
    /// The leader asks this node to start an election now (switchover).
    Elect,
    /// Read part of a recording file (the blob channel; sent on a connection of its
    /// own, never on a Raft replication stream).
    BlobRead {
        id: String,
        offset: u64,
        len: u32,
    },
    /// A new node asks to be enrolled: token secret + CSR. Allowed without a client cert.
    Join {
        secret: String,
        id: NodeId,
        csr_pem: String,
        info: NodeInfo,
    },
}

impl LeaderOp {
    /// What the operation does, for messages ("the leader could not {describe}").
    pub fn describe(&self) -> &'static str {
        match self {
            LeaderOp::Write(_) => "commit the write",
            LeaderOp::AddLearner { .. } => "add the node as a learner",
            LeaderOp::Remove { .. } => "remove the node",
            LeaderOp::ReadIndex => "confirm its leadership for a read",
            LeaderOp::Switchover { .. } => "hand over leadership",
        }
    }
}

impl LeaderReply {
    /// The variant's name, for "unexpected reply" errors.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaderReply::Written { .. } => "written",
            LeaderReply::Done => "done",
            LeaderReply::ReadIndex { .. } => "read_index",
            LeaderReply::SwitchedTo { .. } => "switched_to",
        }
    }
}

impl RpcRequest {
    pub fn name(&self) -> &'static str {
        match self {
            RpcRequest::AppendEntries(_) => "append_entries",
            RpcRequest::Vote(_) => "vote",
            RpcRequest::InstallSnapshot(_) => "install_snapshot",
            RpcRequest::Leader(_) => "leader_op",
            RpcRequest::Join { .. } => "join",
            RpcRequest::Elect => "elect",
            RpcRequest::BlobRead { .. } => "blob_read",
        }
    }
}

/// Part of a recording file, with the sha256 of `data` computed by the sender so
/// that a chunk damaged on the way is detected and fetched again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobChunk {
    pub offset: u64,
    /// Size of the whole file.
    pub total: u64,
    pub data: Vec<u8>,
    pub sha256: [u8; 32],
}

/// The node's certificate and where the cluster is, returned to a joiner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub cert_pem: String,
    pub ca_pem: String,
    pub members: Vec<(NodeId, NodeInfo)>,
    /// The cluster's admin API token (one token for every node's API).
    pub admin_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Leader(Result<LeaderReply, ForwardError>),
    Join(Result<JoinAccepted, String>),
    Elected(Result<(), String>),
    Blob(Result<BlobChunk, String>),
    /// The request was refused before being handled (not authenticated, bad version).
    Refused(String),
}

impl RpcResponse {
    /// The variant's name, for "unexpected reply" errors.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcResponse::AppendEntries(_) => "append_entries",
            RpcResponse::Vote(_) => "vote",
            RpcResponse::InstallSnapshot(_) => "install_snapshot",
            RpcResponse::Leader(_) => "leader_op",
            RpcResponse::Join(_) => "join",
            RpcResponse::Elected(_) => "elected",
            RpcResponse::Blob(_) => "blob",
            RpcResponse::Refused(_) => "refused",
        }
    }
}

initial_version!(RpcRequest, "peer request", PROTOCOL_VERSION);
initial_version!(RpcResponse, "peer response", PROTOCOL_VERSION);
const _: () = assert!(
    <RpcRequest as Versioned>::VERSION == PROTOCOL_VERSION
        && <RpcResponse as Versioned>::VERSION == PROTOCOL_VERSION
);

/// `msg` as one frame: length, then its versioned encoding (protocol version, bincode).
pub fn encode_frame<T: Versioned>(msg: &T) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    msg.encode_into(&mut buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Versioned>(
    w: &mut W,
    msg: &T,
) -> io::Result<()> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf).await?;
    w.flush().await
}

/// A frame's length header, checked against [`MAX_FRAME`] (nothing allocated yet).
pub(crate) async fn read_frame_len<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<usize> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    Ok(len)
}

pub async fn read_frame<R: AsyncRead + Unpin, T: Versioned>(r: &mut R) -> io::Result<T> {
    let len = read_frame_len(r).await?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode_frame_body(&buf)
}

/// The message in a frame's body (version byte + bincode). Only this node's own
/// protocol version is accepted (the handshake of a mixed-version cluster is refused
/// as before); decoding goes through the message type's versioned decode.
pub fn decode_frame_body<T: Versioned>(body: &[u8]) -> io::Result<T> {
    check_version(body)?;
    T::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A frame body of another protocol version (or an empty one) is refused.
fn check_version(body: &[u8]) -> io::Result<()> {
    match body.first() {
        Some(&PROTOCOL_VERSION) => Ok(()),
        Some(&other) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer speaks protocol version {other}, this node {PROTOCOL_VERSION}; upgrade the older node"),
        )),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame")),
    }
}

type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Open a TLS connection to a peer.
pub async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> io::Result<TlsClientStream> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(tls)
            .connect(crate::tls::server_name(), tcp)
            .await
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )
    })?
}

/// One request/response exchange on a connection.
pub async fn exchange(
    stream: &mut TlsClientStream,
    req: &RpcRequest,
    timeout: Duration,
) -> io::Result<RpcResponse> {
    exchange_frame(stream, &encode_frame(req)?, req.name(), timeout).await
}

/// [`exchange`] of an already encoded request.
async fn exchange_frame(
    stream: &mut TlsClientStream,
    frame: &[u8],
    name: &str,
    timeout: Duration,
) -> io::Result<RpcResponse> {
    tokio::time::timeout(timeout, async {
        stream.write_all(frame).await?;
        stream.flush().await?;
        read_frame(stream).await
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{name} timed out after {timeout:?}"),
        )
    })?
}

/// A refusal from the peer is an error of the call, like a transport error.
fn refused_is_error(addr: &str, resp: RpcResponse) -> io::Result<RpcResponse> {
    match resp {
        RpcResponse::Refused(why) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("peer {addr} refused: {why}"),
        )),
        resp => Ok(resp),
    }
}

/// A client connection to one peer that reconnects on demand.
pub struct PeerClient {
    pub target: NodeId,
    pub addr: String,
    tls: Arc<rustls::ClientConfig>,
    stream: Option<TlsClientStream>,
    contacts: Option<Contacts>,
    /// Set on Raft replication streams: AppendEntries run in tasks of their own on
    /// a pool of connections, and small ones are hedged.
    hedge: Option<Hedge>,
}

/// When each peer last answered an RPC of ours (the leader's view of reachability:
/// heartbeats answer every `heartbeat_ms`, even when no entry is replicated), and
/// how many AppendEntries were hedged.
#[derive(Clone, Default)]
pub struct Contacts {
    last: Arc<std::sync::Mutex<std::collections::HashMap<NodeId, Instant>>>,
    hedged: Arc<AtomicU64>,
}

impl Contacts {
    pub fn record(&self, peer: NodeId) {
        self.last
            .lock()
            .expect("contacts lock")
            .insert(peer, Instant::now());
    }

    pub fn last(&self, peer: NodeId) -> Option<Instant> {
        self.last.lock().expect("contacts lock").get(&peer).copied()
    }

    /// AppendEntries sent a second time, on another connection, since start.
    pub fn hedged(&self) -> u64 {
        self.hedged.load(Ordering::Relaxed)
    }
}

/// Largest AppendEntries frame that is hedged (heartbeats and small batches; a big
/// batch is never sent twice).
const HEDGE_MAX_FRAME: usize = 64 * 1024;
/// Idle connections a replication stream keeps to its peer.
const HEDGE_IDLE: usize = 2;

/// Hedged AppendEntries: when the answer is later than this peer's usual round trip
/// (see [`RttEstimate::hedge_after`]), the same request goes out on a second
/// connection and the first answer wins.
///
/// Why: one replication stream carries one request at a time, on one TCP
/// connection. A lost segment stalls that connection for a retransmission timeout,
/// which on a 200 ms-RTT link with jitter is 300–800 ms, longer than openraft waits
/// for the answer (`ReplicaConfig::rpc_timeout_ms`); two followers stalled at once
/// and the leader's lease (quorum acknowledgement) lapses. A second connection has
/// its own segments and its own timer. Sending an AppendEntries twice is harmless:
/// the follower finds the entries already present and answers the same, and the
/// late answer is dropped.
struct Hedge {
    /// Idle connections, oldest first: calls take turns on them, so each keeps a
    /// current RTT estimate in the kernel and none sits idle long.
    idle: Arc<std::sync::Mutex<VecDeque<TlsClientStream>>>,
    connecting: Arc<AtomicBool>,
    /// Updated by every exchange that gets its answer, even one openraft stopped
    /// waiting for (so a slower network is learnt).
    rtt: Arc<std::sync::Mutex<RttEstimate>>,
}

/// Smoothed round trip of one peer's answers (RFC 6298 gains).
#[derive(Debug, Default, Clone, Copy)]
struct RttEstimate {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimate {
    fn observe(&mut self, sample: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let dev = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + dev) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    /// When to send a second copy of a request that has not been answered, given
    /// the time openraft waits for the answer: the usual round trip plus two
    /// deviations, but within a quarter to a half of that wait, so that the second
    /// copy still has time to be answered.
    fn hedge_after(&self, wait: Duration) -> Duration {
        let usual = self.srtt.map(|s| s + self.rttvar * 2).unwrap_or(wait);
        usual.clamp(wait / 4, wait / 2)
    }
}

impl PeerClient {
    pub fn new(target: NodeId, addr: String, tls: Arc<rustls::ClientConfig>) -> PeerClient {
        PeerClient {
            target,
            addr,
            tls,
            stream: None,
            contacts: None,
            hedge: None,
        }
    }

    /// Send one request; on any error the connection is dropped and re-opened next time.
    ///
    /// Cancellation-safe: the connection is held by the call while it runs and comes
    /// back only with the answer. A call dropped half-way (openraft drops a request
    /// it stopped waiting for) takes its connection with it, so the next call can
    /// never read the answer meant for the dropped one.
    pub async fn call(&mut self, req: &RpcRequest, timeout: Duration) -> io::Result<RpcResponse> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => connect(&self.addr, self.tls.clone(), timeout).await?,
        };
        let resp = exchange(&mut stream, req, timeout)
            .await
            .and_then(|r| refused_is_error(&self.addr, r))?;
        self.stream = Some(stream);
        self.answered();
        Ok(resp)
    }

    fn answered(&self) {
        if let Some(c) = &self.contacts {
            c.record(self.target);
        }
    }

    /// Send an AppendEntries, hedged when it is small (see [`Hedge`]). The exchange
    /// runs in a task of its own: when openraft stops waiting (after `wait`), it
    /// still finishes and its connection is reused, never read by another call
    /// half-way.
    async fn call_append(
        &mut self,
        req: &RpcRequest,
        timeout: Duration,
        wait: Duration,
    ) -> io::Result<RpcResponse> {
        let Some(h) = self.hedge.as_ref() else {
            return self.call(req, timeout).await;
        };
        let frame: Arc<[u8]> = encode_frame(req)?.into();
        let hedgeable = frame.len() <= HEDGE_MAX_FRAME;
        let t0 = Instant::now();
        let hedge_after = h.rtt.lock().expect("rtt lock").hedge_after(wait);
        let first = match h.take_idle() {
            Some(stream) => stream,
            None => connect(&self.addr, self.tls.clone(), timeout).await?,
        };
        let mut first = h.spawn_exchange(&self.addr, first, frame.clone(), timeout);
        let result = tokio::select! {
            r = &mut first => flatten(r),
            _ = tokio::time::sleep(hedge_after), if hedgeable => match h.take_idle() {
                Some(stream) => {
                    if let Some(c) = &self.contacts {
                        c.hedged.fetch_add(1, Ordering::Relaxed);
                    }
                    let left = timeout.saturating_sub(t0.elapsed());
                    let second = h.spawn_exchange(&self.addr, stream, frame, left);
                    first_success(first, second).await
                }
                // No spare connection yet (one is being opened): wait for the first.
                None => flatten(first.await),
            },
        };
        h.keep_warm(&self.addr, &self.tls);
        let resp = result?;
        self.answered();
        Ok(resp)
    }
}

impl Hedge {
    fn new() -> Hedge {
        Hedge {
            idle: Default::default(),
            connecting: Default::default(),
            rtt: Default::default(),
        }
    }

    fn take_idle(&self) -> Option<TlsClientStream> {
        self.idle.lock().expect("idle lock").pop_front()
    }

    /// Run one exchange in a task of its own (a hedged call may stop waiting for
    /// it); the connection goes back to the idle list when it answered.
    fn spawn_exchange(
        &self,
        addr: &str,
        mut stream: TlsClientStream,
        frame: Arc<[u8]>,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<io::Result<RpcResponse>> {
        let (idle, rtt, addr) = (self.idle.clone(), self.rtt.clone(), addr.to_string());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let resp = exchange_frame(&mut stream, &frame, "append_entries", timeout)
                .await
                .and_then(|r| refused_is_error(&addr, r))?;
            rtt.lock().expect("rtt lock").observe(t0.elapsed());
            let mut idle = idle.lock().expect("idle lock");
            if idle.len() <= HEDGE_IDLE {
                idle.push_back(stream);
            }
            Ok(resp)
        })
    }

    /// Open a spare connection in the background when fewer than [`HEDGE_IDLE`]
    /// are idle, so that a hedge never waits for a handshake.
    fn keep_warm(&self, addr: &str, tls: &Arc<rustls::ClientConfig>) {
        if self.idle.lock().expect("idle lock").len() >= HEDGE_IDLE
            || self.connecting.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let (idle, connecting) = (self.idle.clone(), self.connecting.clone());
        let (addr, tls) = (addr.to_string(), tls.clone());
        tokio::spawn(async move {
            match connect(&addr, tls, Duration::from_secs(5)).await {
                Ok(stream) => idle.lock().expect("idle lock").push_back(stream),
                Err(e) => tracing::debug!(%addr, error = %e, "spare peer connection failed"),
            }
            connecting.store(false, Ordering::SeqCst);
        });
    }
}

fn flatten(r: Result<io::Result<RpcResponse>, tokio::task::JoinError>) -> io::Result<RpcResponse> {
    r.map_err(io::Error::other)?
}

/// The first of two exchanges to succeed; if both fail, the error of the first to fail.
async fn first_success(
    mut a: tokio::task::JoinHandle<io::Result<RpcResponse>>,
    mut b: tokio::task::JoinHandle<io::Result<RpcResponse>>,
) -> io::Result<RpcResponse> {
    tokio::select! {
        r = &mut a => match flatten(r) {
            Ok(resp) => Ok(resp),
            Err(e) => flatten(b.await).map_err(|_| e),
        },
        r = &mut b => match flatten(r) {
            Ok(resp) => Ok(resp),
            Err(e) => flatten(a.await).map_err(|_| e),
        },
    }
}

/// openraft's network factory: one [`PeerClient`] per replication stream.
#[derive(Clone)]
pub struct Network {
    pub tls: Arc<rustls::ClientConfig>,
    pub contacts: Contacts,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let mut c = PeerClient::new(target, node.addr.clone(), self.tls.clone());
        c.contacts = Some(self.contacts.clone());
        c.hedge = Some(Hedge::new());
        c
    }
}

/// A transport failure as openraft's [`RPCError`]: `Unreachable` (back off before
/// retrying) for refused, timed-out or unauthenticated connections, `Network`
/// otherwise.
pub fn rpc_error<E: std::error::Error>(e: io::Error) -> RPCError<NodeId, NodeInfo, E> {
    match e.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::TimedOut
        | io::ErrorKind::PermissionDenied
        | io::ErrorKind::NotFound => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Network(NetworkError::new(&io::Error::other(format!(
        "unexpected reply to {what}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        // openraft's TTL is the time it waits for the answer (lease_ms / 2): too short
        // for a full batch of entries on a loaded machine. Give payloads at least a
        // second (an abandoned exchange finishes in its own task).
        let ttl = option.hard_ttl().max(APPEND_TIMEOUT_FLOOR);
        match self
            .call_append(&RpcRequest::AppendEntries(rpc), ttl, option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            RpcResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("append_entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(&RpcRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            RpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        match self
            .call(&RpcRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            RpcResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("vote")),
        }
    }
}

/// What the server does with a request from an (optionally) authenticated peer.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: Option<NodeId>,
        req: RpcRequest,
    ) -> impl std::future::Future<Output = RpcResponse> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Vote;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// A peer whose answers echo the request (vote term; for AppendEntries the
    /// arrival number, in a `HigherVote` term) after a delay chosen per arrival.
    struct SlowPeer {
        arrivals: AtomicUsize,
        delay_of: fn(usize) -> Duration,
    }

    impl RpcHandler for SlowPeer {
        async fn handle(&self, _peer: Option<NodeId>, req: RpcRequest) -> RpcResponse {
            let n = self.arrivals.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep((self.delay_of)(n)).await;
            match req {
                RpcRequest::Vote(v) => RpcResponse::Vote(Ok(VoteResponse::new(v.vote, None, true))),
                RpcRequest::AppendEntries(_) => RpcResponse::AppendEntries(Ok(
                    AppendEntriesResponse::HigherVote(Vote::new(n as u64, 2)),
                )),
                _ => RpcResponse::Refused("not in this test".into()),
            }
        }
    }

    async fn peer(delay_of: fn(usize) -> Duration) -> (PeerClient, Arc<SlowPeer>) {
        let ca = crate::tls::ClusterCa::generate("test").unwrap();
        let server = crate::tls::server_config(&ca.issue_identity(2).unwrap()).unwrap();
        let client = crate::tls::client_config(&ca.issue_identity(1).unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler = Arc::new(SlowPeer {
            arrivals: AtomicUsize::new(0),
            delay_of,
        });
        tokio::spawn(serve(listener, server, handler.clone()));
        let mut network = Network {
            tls: client,
            contacts: Contacts::default(),
        };
        let info = NodeInfo {
            addr,
            ..Default::default()
        };
        (network.new_client(2, &info).await, handler)
    }

    fn vote(term: u64) -> RpcRequest {
        RpcRequest::Vote(VoteRequest::new(Vote::new(term, 1), None))
    }

    fn voted_term(r: RpcResponse) -> u64 {
        match r {
            RpcResponse::Vote(Ok(v)) => v.vote.leader_id().term,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn append() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    /// The arrival number the slow peer put in its answer.
    fn arrival(r: AppendEntriesResponse<NodeId>) -> u64 {
        match r {
            AppendEntriesResponse::HigherVote(v) => v.leader_id().term,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cancelled_call_never_hands_its_answer_to_the_next_one() {
        // The first request is answered after 300 ms, the caller gives up at 50 ms
        // (as openraft does after heartbeat_ms); the second is answered at once.
        let (mut c, _) = peer(|n| Duration::from_millis(if n == 0 { 300 } else { 0 })).await;
        let t = Duration::from_secs(2);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), c.call(&vote(7), t)).await;
        assert!(cancelled.is_err(), "the first call must still be waiting");
        let second = c.call(&vote(8), t).await.unwrap();
        assert_eq!(
            voted_term(second),
            8,
            "the answer of the cancelled call was read"
        );
        assert_eq!(voted_term(c.call(&vote(9), t).await.unwrap()), 9);
    }

    #[tokio::test]
    async fn a_slow_append_is_hedged_on_a_second_connection() {
        // Arrival 0 (warm-up) is quick; arrival 1 is stuck for 2 s (a stalled TCP
        // connection); its copy, arrival 2, is answered at once.
        let (mut c, peer) = peer(|n| Duration::from_millis(if n == 1 { 2000 } else { 0 })).await;
        let wait = Duration::from_millis(400);
        let opt = || RPCOption::new(wait);
        assert_eq!(arrival(c.append_entries(append(), opt()).await.unwrap()), 0);
        // Let the spare connection open, so that the hedge does not wait for one.
        for _ in 0..100 {
            if c.hedge.as_ref().unwrap().idle.lock().unwrap().len() >= HEDGE_IDLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let answer = tokio::time::timeout(wait, c.append_entries(append(), opt()))
            .await
            .expect("the hedged copy must be answered before openraft gives up")
            .unwrap();
        assert_eq!(arrival(answer), 2, "the second copy's answer wins");
        assert!(t0.elapsed() < wait);
        assert_eq!(c.contacts.as_ref().unwrap().hedged(), 1);
        // Later calls get their own answers (the stuck one finishes in the
        // background and never answers for another call).
        assert_eq!(arrival(c.append_entries(append(), opt()).await.unwrap()), 3);
        assert_eq!(arrival(c.append_entries(append(), opt()).await.unwrap()), 4);
        assert_eq!(peer.arrivals.load(Ordering::SeqCst), 5);
    }

    /// Frames as earlier releases wrote them (`testdata/golden-v1.txt`): they decode
    /// through the versioned decode, and new frames are the same bytes.
    #[test]
    fn frames_of_the_current_protocol_decode_and_encode_unchanged() {
        use crate::fixtures::{self as f, golden};
        for (bytes, req) in golden("REQ").iter().zip(f::requests()) {
            assert_eq!(hex::encode(encode_frame(&req).unwrap()), hex::encode(bytes));
            let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            let back: RpcRequest = decode_frame_body(&bytes[4..]).unwrap();
            assert_eq!(format!("{back:?}"), format!("{req:?}"));
        }
        for (bytes, resp) in golden("RESP").iter().zip(f::responses()) {
            assert_eq!(
                hex::encode(encode_frame(&resp).unwrap()),
                hex::encode(bytes)
            );
            let back: RpcResponse = decode_frame_body(&bytes[4..]).unwrap();
            assert_eq!(format!("{back:?}"), format!("{resp:?}"));
        }
        assert_eq!(golden("REQ").len(), f::requests().len());
        assert_eq!(golden("RESP").len(), f::responses().len());
    }

    /// A leader's refusal crosses the wire with its class (the typed form), and
    /// the text-only form of the first protocol still decodes.
    #[test]
    fn forwarded_failures_keep_their_class() {
        use crate::error::{FailureClass, InvalidRequest};
        let class = FailureClass::Invalid(InvalidRequest::NotADataVoter { node: 42 });
        let sent = RpcResponse::Leader(Err(ForwardError::Refused {
            reason: "invalid request: node 42 is not a data voter".into(),
            class: class.clone(),
        }));
        let frame = encode_frame(&sent).unwrap();
        match decode_frame_body::<RpcResponse>(&frame[4..]).unwrap() {
            RpcResponse::Leader(Err(ForwardError::Refused { class: got, .. })) => {
                assert_eq!(got, class)
            }
            other => panic!("{other:?}"),
        }
        let old = RpcResponse::Leader(Err(ForwardError::Failed("disk full".into())));
        let frame = encode_frame(&old).unwrap();
        assert!(matches!(
            decode_frame_body::<RpcResponse>(&frame[4..]).unwrap(),
            RpcResponse::Leader(Err(ForwardError::Failed(t))) if t == "disk full"
        ));
    }

    #[test]
    fn another_protocol_version_is_refused_as_before() {
        let mut body = encode_frame(&RpcRequest::Elect).unwrap()[4..].to_vec();
        body[0] = 2;
        let e = decode_frame_body::<RpcRequest>(&body).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            "peer speaks protocol version 2, this node 1; upgrade the older node"
        );
        // The versioned decode on its own names the message and the version.
        match RpcRequest::decode(&body) {
            Err(crate::versioned::CodecError::Newer {
                type_name: "peer request",
                found: 2,
                newest: 1,
            }) => {}
            other => panic!("{other:?}"),
        }
        // A damaged body of the right version is an error, not a panic.
        let e = decode_frame_body::<RpcRequest>(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("peer request"), "{e}");
    }

    #[test]
    fn the_hedge_delay_follows_the_round_trip_within_bounds() {
        let wait = Duration::from_millis(100);
        let mut r = RttEstimate::default();
        assert_eq!(
            r.hedge_after(wait),
            Duration::from_millis(50),
            "no sample yet"
        );
        for _ in 0..20 {
            r.observe(Duration::from_millis(1));
        }
        assert_eq!(
            r.hedge_after(wait),
            Duration::from_millis(25),
            "a LAN: the floor"
        );
        let mut r = RttEstimate::default();
        for ms in [30, 34, 30, 34, 30, 34, 30, 34] {
            r.observe(Duration::from_millis(ms));
        }
        let h = r.hedge_after(wait);
        assert!(
            h > Duration::from_millis(32) && h < Duration::from_millis(45),
            "{h:?}"
        );
        for _ in 0..20 {
            r.observe(Duration::from_millis(200));
        }
        assert_eq!(
            r.hedge_after(wait),
            Duration::from_millis(50),
            "never past half the wait"
        );
    }
}
