//! Peer RPC: length-prefixed, versioned bincode frames over mutual TLS.
//!
//! ```text
//!  frame = u32 LE length | u8 protocol version | bincode(RpcRequest | RpcResponse)
//! ```
//!
//! One request at a time per connection; concurrency comes from several
//! connections (openraft opens one client per replication stream; forwarded writes
//! use a small pool). A client without a certificate may only send `Join`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

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
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::types::{NodeId, NodeInfo, Request, Response, TypeConfig};

/// Version of the peer protocol. A peer speaking another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;
/// Shortest timeout for an AppendEntries exchange.
pub const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);
/// Largest frame accepted (a snapshot chunk or a batch of entries is far smaller).
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

/// Why a forwarded operation failed. `NotLeader` tells the sender where to go.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
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

impl RpcRequest {
    fn name(&self) -> &'static str {
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

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> io::Result<()> {
    let body = bincode::serialize(msg).map_err(io::Error::other)?;
    if body.len() + 1 > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    buf.push(PROTOCOL_VERSION);
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await
}

pub async fn read_frame<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    if buf[0] != PROTOCOL_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer speaks protocol version {}, this node {PROTOCOL_VERSION}; upgrade the older node", buf[0]),
        ));
    }
    bincode::deserialize(&buf[1..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
    tokio::time::timeout(timeout, async {
        write_frame(stream, req).await?;
        read_frame(stream).await
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} timed out after {timeout:?}", req.name()),
        )
    })?
}

/// A client connection to one peer that reconnects on demand.
pub struct PeerClient {
    pub target: NodeId,
    pub addr: String,
    tls: Arc<rustls::ClientConfig>,
    stream: Option<TlsClientStream>,
    contacts: Option<Contacts>,
}

/// When each peer last answered an RPC of ours (the leader's view of reachability:
/// heartbeats answer every `heartbeat_ms`, even when no entry is replicated).
#[derive(Clone, Default)]
pub struct Contacts(Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>);

impl Contacts {
    pub fn record(&self, peer: NodeId) {
        self.0
            .lock()
            .expect("contacts lock")
            .insert(peer, std::time::Instant::now());
    }

    pub fn last(&self, peer: NodeId) -> Option<std::time::Instant> {
        self.0.lock().expect("contacts lock").get(&peer).copied()
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
        }
    }

    /// Send one request; on any error the connection is dropped and re-opened next time.
    pub async fn call(&mut self, req: &RpcRequest, timeout: Duration) -> io::Result<RpcResponse> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.addr, self.tls.clone(), timeout).await?);
        }
        let stream = self.stream.as_mut().expect("connected above");
        match exchange(stream, req, timeout).await {
            Ok(RpcResponse::Refused(why)) => {
                self.stream = None;
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("peer {} refused: {why}", self.addr),
                ))
            }
            Ok(resp) => {
                if let Some(c) = &self.contacts {
                    c.record(self.target);
                }
                Ok(resp)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
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
        c
    }
}

fn to_rpc_err<E: std::error::Error>(e: io::Error) -> RPCError<NodeId, NodeInfo, E> {
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
        // openraft's TTL is the heartbeat interval: too short for a full batch of
        // entries on a loaded machine. Give payloads at least a second.
        let ttl = option.hard_ttl().max(APPEND_TIMEOUT_FLOOR);
        match self
            .call(&RpcRequest::AppendEntries(rpc), ttl)
            .await
            .map_err(to_rpc_err)?
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
            .map_err(to_rpc_err)?
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
            .map_err(to_rpc_err)?
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

/// Accept peer connections until the listener fails.
pub async fn serve<H: RpcHandler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "peer listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut stream = match tokio::time::timeout(
                Duration::from_secs(5),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "peer refused: TLS handshake failed (certificate not signed by this cluster's CA?)");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%remote, "peer refused: TLS handshake timed out");
                    return;
                }
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(crate::tls::peer_node_id);
            loop {
                let req: RpcRequest = match read_frame(&mut stream).await {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "bad frame from peer; closing");
                        let _ =
                            write_frame(&mut stream, &RpcResponse::Refused(e.to_string())).await;
                        return;
                    }
                };
                let resp = if peer.is_none() && !matches!(req, RpcRequest::Join { .. }) {
                    tracing::warn!(%remote, rpc = req.name(), "peer refused: no client certificate (only join is allowed without one)");
                    RpcResponse::Refused(
                        "a client certificate signed by the cluster CA is required".into(),
                    )
                } else {
                    handler.handle(peer, req).await
                };
                if let Err(e) = write_frame(&mut stream, &resp).await {
                    tracing::debug!(%remote, error = %e, "peer connection closed while answering");
                    return;
                }
            }
        });
    }
}
