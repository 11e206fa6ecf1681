//! A running cluster member: openraft + the peer server + the write path.
//!
//! ```text
//!  write(req) ─▶ leader?  yes ─▶ raft.client_write ─▶ commit (majority fsynced) ─▶ apply ─▶ Ok
//!                         no  ─▶ LeaderOp::Write over peer TLS to the leader ─────────────▶ Ok
//!  add_cdrs(v) ─▶ CdrBatcher (merges concurrent calls into one entry) ─▶ write
//! ```
//!
//! The leader also runs its standing duties, decided by [`crate::policy`]: a learner
//! whose log is close to the leader's is promoted to voter (so a joining node first
//! catches up, by snapshot + log, then votes), and a witness that leads hands
//! leadership to a data node.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{RPCError, RaftError, RemoteError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::blobs::sync::SyncStats;
use crate::blobs::BlobStore;
use crate::cdr::Cdr;
use crate::error::{InvalidRequest, LeaderFailure, Refusal};
use crate::network::{
    self, ForwardError, JoinAccepted, LeaderOp, LeaderReply, PeerClient, RpcHandler, RpcRequest,
    RpcResponse,
};
use crate::policy::{
    self, Decision, Event, LeaderDuties, LeaderView, Member as PolicyMember, PolicyConfig,
};
use crate::store::{self, LogStore, SmShared};
use crate::tls::{self, ClusterCa, JoinToken, NodeIdentity};
use crate::types::{MemberKind, NodeId, NodeInfo, Raft, RaftMetrics, Request, Response};
use crate::{Error, Result};

/// Settings of one member (derived from the node's config file).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: NodeId,
    pub info: NodeInfo,
    pub data_dir: PathBuf,
    /// Where the peer server listens.
    pub listen: String,
    /// How often the leader sends heartbeats (it renews its lease with them).
    pub heartbeat_ms: u64,
    /// How long a peer has to answer an AppendEntries before openraft gives up on
    /// it (openraft's `heartbeat_interval`, which 0.9 uses as that timeout). At least
    /// `heartbeat_ms`; see `rpc_timeout_ms()` in the node's config.
    pub rpc_timeout_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) every this many entries.
    pub snapshot_logs: u64,
    /// sled page cache, MiB.
    pub cache_mb: u64,
    /// Directory with ca.pem, node.pem, node.key (and ca.key + join.token on the
    /// node that ran `init`).
    pub tls_dir: PathBuf,
    /// The cluster's admin API token file (handed to joining nodes).
    pub admin_token_file: PathBuf,
    /// Recording transfer cap from the node file, kbit/s (0 = unlimited); the
    /// replicated key `replication.recording_bandwidth_kbps` overrides it.
    pub recording_cap_kbps: u64,
}

/// The most CDRs merged into one log entry (keeps entries small: heartbeats share
/// the stream).
pub const MAX_CDRS_PER_ENTRY: usize = 256;
/// CDR entries being committed at once by the batcher.
pub const WRITES_IN_FLIGHT: usize = 4;
pub use crate::policy::PROMOTE_WITHIN;

/// Freshness of this node's state compared with the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    pub entries: u64,
    pub ms: u64,
}

/// Tracks, on a follower, the leader's commit index as heard in AppendEntries, to
/// tell how far behind local apply is (in entries and in time).
#[derive(Default)]
struct LagTracker {
    seen: Mutex<VecDeque<(u64, Instant)>>,
}

impl LagTracker {
    fn observe(&self, leader_commit: u64, now: Instant) {
        let mut seen = self.seen.lock().expect("lag lock");
        if seen.back().is_none_or(|(i, _)| *i < leader_commit) {
            seen.push_back((leader_commit, now));
            if seen.len() > 4096 {
                seen.pop_front();
            }
        }
    }

    fn lag(&self, applied: u64, now: Instant) -> Lag {
        let mut seen = self.seen.lock().expect("lag lock");
        while seen.front().is_some_and(|(i, _)| *i <= applied) {
            // Keep the newest one so that `entries` stays known.
            if seen.len() == 1 {
                break;
            }
            seen.pop_front();
        }
        match (seen.front(), seen.back()) {
            (Some((first, t)), Some((last, _))) if *last > applied => Lag {
                entries: last - applied,
                ms: now
                    .duration_since(if *first > applied { *t } else { now })
                    .as_millis() as u64,
            },
            _ => Lag::default(),
        }
    }
}

/// Times at which the leader's log reached each index (for per-follower lag in ms).
#[derive(Default)]
struct IndexClock {
    samples: Mutex<VecDeque<(u64, Instant)>>,
}

impl IndexClock {
    fn record(&self, index: u64, now: Instant) {
        let mut s = self.samples.lock().expect("clock lock");
        if s.back().is_none_or(|(i, _)| *i < index) {
            s.push_back((index, now));
            while s.len() > 8192
                || s.front()
                    .is_some_and(|(_, t)| now.duration_since(*t) > Duration::from_secs(300))
            {
                s.pop_front();
            }
        }
    }

    /// How long ago the first entry after `matched` was appended by the leader.
    fn behind_ms(&self, matched: u64, now: Instant) -> u64 {
        let s = self.samples.lock().expect("clock lock");
        s.iter()
            .find(|(i, _)| *i > matched)
            .map(|(_, t)| now.duration_since(*t).as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Per-peer view for `tandem status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub kind: MemberKind,
    pub addr: String,
    pub api: String,
    pub voter: bool,
    /// Last log index known to be on that node (leader's view), if known.
    pub matched_index: Option<u64>,
    pub lag_entries: Option<u64>,
    pub lag_ms: Option<u64>,
    /// Milliseconds since the peer last answered this node (known on the leader).
    pub last_contact_ms: Option<u64>,
}

struct CdrBatch {
    cdrs: Vec<Cdr>,
    done: oneshot::Sender<Result<(u64, Response)>>,
}

/// A running member of the cluster.
pub struct Replica {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    log: LogStore,
    client_tls: Arc<rustls::ClientConfig>,
    tls_dir: PathBuf,
    admin_token_file: PathBuf,
    /// Set while this leader hands over leadership: new writes are refused (the
    /// caller retries on the new leader), so none is lost in the switch.
    stepping_down: std::sync::atomic::AtomicBool,
    /// Whether this node may campaign (false for witnesses and in maintenance).
    elect_allowed: std::sync::atomic::AtomicBool,
    forward_pool: Mutex<HashMap<NodeId, Vec<PeerClient>>>,
    lag: LagTracker,
    clock: IndexClock,
    /// When this node last received AppendEntries (entries or heartbeat) from a leader.
    last_leader_contact: Mutex<Option<Instant>>,
    /// When this node last refused its vote to a candidate whose log is behind its own.
    stale_candidate_at: Mutex<Option<Instant>>,
    /// When each peer last answered this node's Raft RPCs.
    contacts: network::Contacts,
    cdr_tx: mpsc::Sender<CdrBatch>,
    /// Writes committed through this node (metrics).
    pub writes_committed: std::sync::atomic::AtomicU64,
    /// Recording files of this node (None on a witness: it stores no recordings).
    pub blobs: Option<Arc<BlobStore>>,
    /// Blob channel counters and backlog.
    pub blob_stats: Arc<SyncStats>,
    /// Thresholds of the leader's duties and of the switchover target choice.
    policy: PolicyConfig,
    /// Fault injection for tests: damage this many outgoing blob chunks
    /// (`TANDEM_FAULT_CORRUPT_CHUNKS`).
    corrupt_chunks: std::sync::atomic::AtomicU64,
}

impl Replica {
    /// AppendEntries this node sent a second time on another connection because
    /// the first was not answered in time (see `network::Hedge`), since start.
    pub fn hedged_appends(&self) -> u64 {
        self.contacts.hedged()
    }

    /// Open the store, load the TLS identity, start Raft and the peer server.
    pub async fn start(cfg: ReplicaConfig) -> Result<Arc<Replica>> {
        let identity = NodeIdentity::load(&cfg.tls_dir)?;
        let server_tls = tls::server_config(&identity)?;
        let client_tls = tls::client_config(&identity)?;
        let (log, sm) = store::open(&cfg.data_dir.join("raft"), cfg.cache_mb)?;
        let raft_config = Config {
            cluster_name: "tandem".into(),
            // openraft 0.9 uses heartbeat_interval both as the heartbeat period and
            // as the time a peer has to answer an AppendEntries. tandem wants short
            // heartbeats but patience with a slow answer, so openraft gets the longer
            // RPC timeout and `heartbeat_pacer` sends the heartbeats.
            heartbeat_interval: cfg.rpc_timeout_ms.max(cfg.heartbeat_ms),
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            // Keep some log after a snapshot so a briefly lagging follower catches up
            // from the log, not a full snapshot.
            max_in_snapshot_log_to_keep: (cfg.snapshot_logs / 2).min(1000),
            purge_batch_size: (cfg.snapshot_logs / 4).clamp(1, 256),
            // Keep each AppendEntries small (≤ ~1 MiB): heartbeats share the stream.
            max_payload_entries: 16,
            snapshot_max_chunk_size: 1024 * 1024,
            install_snapshot_timeout: 5_000,
            enable_elect: cfg.info.kind == MemberKind::Data,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| Error::RaftConfig {
            source: Arc::new(e),
        })?);
        let shared = sm.shared.clone();
        let contacts = network::Contacts::default();
        let raft = Raft::new(
            cfg.id,
            raft_config,
            network::Network {
                tls: client_tls.clone(),
                contacts: contacts.clone(),
            },
            log.clone(),
            sm,
        )
        .await?;
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| Error::Listen {
                addr: cfg.listen.clone(),
                source: Arc::new(e),
            })?;
        let (cdr_tx, cdr_rx) = mpsc::channel(4096);
        let blobs = match cfg.info.kind {
            MemberKind::Data => {
                let dir = cfg.data_dir.join("recordings");
                Some(Arc::new(BlobStore::open(&dir).map_err(|e| {
                    Error::Blobs {
                        source: Arc::new(e),
                    }
                })?))
            }
            MemberKind::Witness => None,
        };
        let corrupt_chunks = std::env::var("TANDEM_FAULT_CORRUPT_CHUNKS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if corrupt_chunks > 0 {
            tracing::warn!(
                chunks = corrupt_chunks,
                "fault injection: damaging outgoing recording chunks (TANDEM_FAULT_CORRUPT_CHUNKS)"
            );
        }
        let replica = Arc::new(Replica {
            id: cfg.id,
            info: cfg.info.clone(),
            raft,
            sm: shared,
            log,
            client_tls,
            tls_dir: cfg.tls_dir.clone(),
            admin_token_file: cfg.admin_token_file.clone(),
            stepping_down: Default::default(),
            elect_allowed: std::sync::atomic::AtomicBool::new(cfg.info.kind == MemberKind::Data),
            forward_pool: Mutex::new(HashMap::new()),
            lag: LagTracker::default(),
            clock: IndexClock::default(),
            last_leader_contact: Mutex::new(None),
            stale_candidate_at: Mutex::new(None),
            contacts,
            cdr_tx,
            writes_committed: Default::default(),
            blobs: blobs.clone(),
            blob_stats: Arc::new(SyncStats::default()),
            corrupt_chunks: std::sync::atomic::AtomicU64::new(corrupt_chunks),
            policy: PolicyConfig::new(Duration::from_millis(cfg.election_timeout_min_ms)),
        });
        if let Some(blobs) = blobs {
            tokio::spawn(crate::blobs::sync::run(
                Arc::downgrade(&replica),
                blobs,
                replica.blob_stats.clone(),
                cfg.recording_cap_kbps,
            ));
        }
        tokio::spawn(network::serve(
            listener,
            server_tls,
            Arc::new(Handler(Arc::downgrade(&replica))),
        ));
        tokio::spawn(cdr_batcher(Arc::downgrade(&replica), cdr_rx));
        tokio::spawn(leader_duties(Arc::downgrade(&replica)));
        tokio::spawn(heartbeat_pacer(
            Arc::downgrade(&replica),
            Duration::from_millis(cfg.heartbeat_ms.max(1)),
        ));
        tracing::info!(node = cfg.id, listen = %cfg.listen, "replica started");
        Ok(replica)
    }

    /// Initialize a brand-new cluster whose first members are `members` (no-op if
    /// this node already has state).
    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Already initialized meanwhile (another member's vote or entries arrived).
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// TLS settings for connections to peers.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.client_tls.clone()
    }

    /// The state-machine tree, for local (stale) reads.
    pub fn tree(&self) -> sled::Tree {
        self.sm.tree()
    }

    /// Commit index known to this node.
    pub fn commit_index(&self) -> u64 {
        self.log.committed().map(|l| l.index).unwrap_or(0)
    }

    /// Entries in the local log (for status).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// How far this node's applied state is behind the leader.
    pub fn lag(&self) -> Lag {
        if self.is_leader() {
            return Lag::default();
        }
        let applied = self.metrics().last_applied.map(|l| l.index).unwrap_or(0);
        self.lag.lag(applied, Instant::now())
    }

    /// Write through Raft (forwarded to the leader when this node is not it).
    /// Returns once the entry is committed and applied on the leader.
    pub async fn write(&self, req: Request) -> Result<(u64, Response)> {
        match self.leader_op_at(LeaderOp::Write(req)).await? {
            (_, LeaderReply::Written { index, response }) => Ok((index, response)),
            (leader, other) => Err(unexpected_reply(leader, "write", &other)),
        }
    }

    /// Insert CDRs; concurrent calls are merged into shared log entries (group
    /// commit). Returns the log index and this call's inserted/duplicate counts.
    pub async fn add_cdrs(&self, cdrs: Vec<Cdr>) -> Result<(u64, Response)> {
        // A large request is cut into entries of at most MAX_CDRS_PER_ENTRY.
        let mut waits = Vec::new();
        let mut rest = cdrs;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(MAX_CDRS_PER_ENTRY));
            let (tx, rx) = oneshot::channel();
            self.cdr_tx
                .send(CdrBatch {
                    cdrs: rest,
                    done: tx,
                })
                .await
                .map_err(|_| Error::Shutdown)?;
            waits.push(rx);
            rest = tail;
        }
        let (mut index, mut inserted, mut duplicate_ids) = (0, 0, Vec::new());
        for rx in waits {
            match rx.await.map_err(|_| Error::Shutdown)?? {
                (
                    i,
                    Response::Cdrs {
                        inserted: n,
                        duplicate_ids: d,
                        ..
                    },
                ) => {
                    index = index.max(i);
                    inserted += n;
                    duplicate_ids.extend(d);
                }
                (i, _) => index = index.max(i),
            }
        }
        Ok((
            index,
            Response::Cdrs {
                inserted,
                duplicates: duplicate_ids.len() as u32,
                duplicate_ids,
            },
        ))
    }

    /// Index a linearizable read must wait for (Raft §6.4 read index), then wait
    /// until this node has applied it.
    pub async fn linearizable_barrier(&self, timeout: Duration) -> Result<u64> {
        let index = match self.leader_op_at(LeaderOp::ReadIndex).await? {
            (_, LeaderReply::ReadIndex { index }) => index,
            (leader, other) => return Err(unexpected_reply(leader, "read index", &other)),
        };
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(waited, _) => {
                    Error::ApplyTimeout { index, waited }
                }
                openraft::metrics::WaitError::ShuttingDown => Error::Shutdown,
            })?;
        Ok(index)
    }

    /// Remove a node from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.leader_op(LeaderOp::Remove { id }).await.map(|_| ())
    }

    /// Run `op` on the leader: locally if we are it, else forwarded. Retries while
    /// leadership moves, for up to ~5 s.
    pub async fn leader_op(&self, op: LeaderOp) -> Result<LeaderReply> {
        self.leader_op_at(op).await.map(|(_, reply)| reply)
    }

    /// [`Self::leader_op`], with the id of the leader that answered.
    async fn leader_op_at(&self, op: LeaderOp) -> Result<(NodeId, LeaderReply)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last_err = Error::NoLeader;
        while Instant::now() < deadline {
            let m = self.metrics();
            let membership = m.membership_config.membership();
            let attempt = match m.current_leader {
                Some(l) if l == self.id => self.run_leader_op(op.clone()).await,
                Some(l) => match membership.get_node(&l) {
                    Some(info) => self.forward(l, info.addr.clone(), op.clone()).await,
                    None => Err(OpFailure::NotLeader { leader: Some(l) }),
                },
                None => Err(OpFailure::NotLeader { leader: None }),
            };
            match attempt {
                Ok(reply) => return Ok((m.current_leader.unwrap_or(self.id), reply)),
                Err(OpFailure::NotLeader { leader: None }) => last_err = Error::NoLeader,
                Err(OpFailure::NotLeader {
                    leader: Some(leader),
                }) => {
                    last_err = Error::ForwardToLeader {
                        leader_id: Some(leader),
                        leader_node: membership.get_node(&leader).cloned(),
                    }
                }
                Err(OpFailure::Unreachable(e)) => last_err = e,
                Err(OpFailure::Failed(e)) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last_err)
    }

    async fn forward(
        &self,
        leader: NodeId,
        addr: String,
        op: LeaderOp,
    ) -> Result<LeaderReply, OpFailure> {
        let what = op.describe();
        let mut client = {
            let mut pool = self.forward_pool.lock().expect("pool lock");
            pool.get_mut(&leader).and_then(|v| v.pop())
        }
        .unwrap_or_else(|| PeerClient::new(leader, addr.clone(), self.client_tls.clone()));
        let res = client
            .call(&RpcRequest::Leader(op), Duration::from_secs(10))
            .await;
        match res {
            Ok(RpcResponse::Leader(r)) => {
                self.forward_pool
                    .lock()
                    .expect("pool lock")
                    .entry(leader)
                    .or_default()
                    .push(client);
                r.map_err(|e| match e {
                    ForwardError::NotLeader { leader } => OpFailure::NotLeader { leader },
                    ForwardError::Failed(reason) => OpFailure::Failed(Error::OnLeader {
                        leader,
                        op: what,
                        source: LeaderFailure::Remote { reason },
                    }),
                })
            }
            Ok(other) => Err(OpFailure::Failed(Error::UnexpectedReply {
                peer: Some(leader),
                addr,
                rpc: "leader_op",
                got: other.kind(),
            })),
            Err(e) => Err(OpFailure::Unreachable(Error::LeaderUnreachable {
                leader,
                addr,
                source: Box::new(network::rpc_error(e)),
            })),
        }
    }

    /// Perform a leader operation on this node (which believes it is the leader).
    async fn run_leader_op(&self, op: LeaderOp) -> Result<LeaderReply, OpFailure> {
        if self.is_stepping_down() && !matches!(op, LeaderOp::ReadIndex) {
            return Err(OpFailure::NotLeader { leader: None });
        }
        let what = op.describe();
        // openraft says another node leads now: the caller tries again there.
        let refused = |e: Error| match e {
            Error::ForwardToLeader { leader_id, .. } => {
                tracing::debug!(?leader_id, "leader op refused: not the leader");
                OpFailure::NotLeader { leader: leader_id }
            }
            e => OpFailure::on_leader(self.id, what, e),
        };
        match op {
            LeaderOp::Switchover { to } => self
                .run_switchover(to)
                .await
                .map(|leader| LeaderReply::SwitchedTo { leader })
                .map_err(|e| OpFailure::on_leader(self.id, what, e)),
            LeaderOp::Write(req) => match self.raft.client_write(req).await {
                Ok(resp) => {
                    self.writes_committed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(LeaderReply::Written {
                        index: resp.log_id.index,
                        response: resp.data,
                    })
                }
                Err(e) => Err(refused(e.into())),
            },
            LeaderOp::ReadIndex => match self.raft.ensure_linearizable().await {
                Ok(read_log_id) => Ok(LeaderReply::ReadIndex {
                    index: read_log_id.map(|l| l.index).unwrap_or(0),
                }),
                // Whatever the reason (another leader, no quorum, Raft stopped), this
                // node cannot confirm a read: the caller retries on the leader.
                Err(e) => {
                    tracing::debug!(error = %e, "read index refused");
                    Err(OpFailure::NotLeader {
                        leader: e.forward_to_leader().and_then(|f| f.leader_id),
                    })
                }
            },
            LeaderOp::AddLearner { id, info } => {
                let m = self.metrics();
                if m.membership_config.membership().get_node(&id).is_some() {
                    // Already a member (a retried join): update nothing, succeed.
                    return Ok(LeaderReply::Done);
                }
                self.raft
                    .add_learner(id, info, false)
                    .await
                    .map(|_| LeaderReply::Done)
                    .map_err(|e| refused(e.into()))
            }
            LeaderOp::Remove { id } => {
                let m = self.metrics();
                let membership = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(OpFailure::on_leader(
                            self.id,
                            what,
                            Error::invalid(InvalidRequest::LastVoter { node: id }),
                        ));
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else if membership.get_node(&id).is_some() {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    return Err(OpFailure::on_leader(
                        self.id,
                        what,
                        Error::invalid(InvalidRequest::NotAMember { node: id }),
                    ));
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map(|_| LeaderReply::Done)
                    .map_err(|e| refused(e.into()))
            }
        }
    }

    /// The cluster as the policy sees it (matched indexes and contact ages are the
    /// leader's view; call it on the leader).
    fn leader_view(&self, m: &RaftMetrics, now: Instant) -> LeaderView {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        LeaderView {
            me: self.id,
            my_kind: self.info.kind,
            last_log_index: m.last_log_index.unwrap_or(0),
            members: membership
                .nodes()
                .map(|(id, info)| PolicyMember {
                    id: *id,
                    kind: info.kind,
                    voter: voters.contains(id),
                    matched: m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).copied().flatten())
                        .map(|l| l.index),
                    contact_age: if *id == self.id {
                        Some(Duration::ZERO)
                    } else {
                        self.contacts
                            .last(*id)
                            .map(|t| now.saturating_duration_since(t))
                    },
                })
                .collect(),
        }
    }

    /// The members with their replication state (leader's view when we lead).
    pub fn members(&self) -> Vec<MemberStatus> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let now = Instant::now();
        membership
            .nodes()
            .map(|(id, info)| {
                let matched = match &m.replication {
                    Some(r) => r.get(id).map(|l| l.map(|l| l.index).unwrap_or(0)),
                    None if *id == self.id => Some(last),
                    None => None,
                };
                MemberStatus {
                    id: *id,
                    name: info.name.clone(),
                    kind: info.kind,
                    addr: info.addr.clone(),
                    api: info.api.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag_entries: matched.map(|x| last.saturating_sub(x)),
                    lag_ms: matched.map(|x| self.clock.behind_ms(x, now)),
                    last_contact_ms: if *id == self.id {
                        Some(0)
                    } else if m.state == ServerState::Leader {
                        self.contacts
                            .last(*id)
                            .map(|t| now.saturating_duration_since(t).as_millis() as u64)
                    } else {
                        None
                    },
                }
            })
            .collect()
    }

    /// Time since this node last heard from a leader (None: never since start).
    pub fn since_leader_contact(&self, now: Instant) -> Option<Duration> {
        self.last_leader_contact
            .lock()
            .expect("contact lock")
            .map(|t| now.saturating_duration_since(t))
    }

    /// How long ago this node refused its vote to a candidate because the
    /// candidate's log was behind this node's.
    pub fn since_stale_candidate(&self, now: Instant) -> Option<Duration> {
        self.stale_candidate_at
            .lock()
            .expect("stale lock")
            .map(|t| now.saturating_duration_since(t))
    }

    /// Whether this node may campaign (data node, not in maintenance).
    pub fn elect_allowed(&self) -> bool {
        self.elect_allowed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Start an election now (fast takeover, see the failover driver).
    pub async fn campaign_now(&self) -> Result<()> {
        Ok(self.raft.trigger().elect().await?)
    }

    pub fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Allow or forbid this node to start elections (maintenance mode). Witnesses never
    /// campaign whatever is asked.
    pub fn set_elect(&self, allowed: bool) {
        let allowed = allowed && self.info.kind == MemberKind::Data;
        self.elect_allowed
            .store(allowed, std::sync::atomic::Ordering::SeqCst);
        self.raft.runtime_config().elect(allowed);
    }

    /// Move leadership to `to` (or the most up-to-date other data voter). Runs on the
    /// leader (forwarded there otherwise); returns the new leader's id.
    pub async fn switchover(&self, to: Option<NodeId>) -> Result<NodeId> {
        match self.leader_op_at(LeaderOp::Switchover { to }).await? {
            (_, LeaderReply::SwitchedTo { leader }) => Ok(leader),
            (leader, other) => Err(unexpected_reply(leader, "switchover", &other)),
        }
    }

    /// Graceful leadership transfer (openraft 0.9 has no transfer-leader call):
    /// 1. refuse new writes (callers retry on the new leader) and let the target catch
    ///    up to our last log index;
    /// 2. stop heartbeats and our own campaigning, so followers' leader lease runs out;
    /// 3. ask the target to campaign; its log is the most complete, so it wins;
    /// 4. resume as a follower.
    async fn run_switchover(&self, to: Option<NodeId>) -> Result<NodeId> {
        use std::sync::atomic::Ordering::SeqCst;
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(Error::NoLeader);
        }
        let view = self.leader_view(&m, Instant::now());
        let target_id =
            policy::switchover_target(&view, &self.policy, to).map_err(Error::invalid)?;
        let target_info = m
            .membership_config
            .membership()
            .get_node(&target_id)
            .cloned()
            .ok_or(Error::invalid(InvalidRequest::NotADataVoter {
                node: target_id,
            }))?;
        tracing::info!(from = self.id, to = target_id, "switchover: starting");
        self.stepping_down.store(true, SeqCst);
        let result = async {
            // 1. Target catches up with everything we have.
            let deadline = Instant::now() + Duration::from_secs(5);
            self.wait_caught_up(target_id, &target_info.addr, deadline)
                .await?;
            // 2. Let the followers' leader lease lapse.
            self.raft.runtime_config().heartbeat(false);
            self.raft.runtime_config().elect(false);
            // A write accepted just before the switchover started may have been
            // appended after the check above: the target must hold it too, or the
            // other voters refuse it their vote (its log would be behind).
            self.wait_caught_up(target_id, &target_info.addr, deadline)
                .await?;
            // 3. Ask the target to campaign until it wins.
            let addr = target_info.addr.clone();
            let mut client = PeerClient::new(target_id, addr.clone(), self.client_tls.clone());
            let peer_err = |source| Error::Peer {
                peer: Some(target_id),
                addr: addr.clone(),
                rpc: "elect",
                source,
            };
            match client
                .call(&RpcRequest::Elect, Duration::from_secs(10))
                .await
            {
                Ok(RpcResponse::Elected(Ok(()))) => Ok(target_id),
                Ok(RpcResponse::Elected(Err(reason))) => Err(peer_err(Box::new(
                    RPCError::RemoteError(RemoteError::new(target_id, Refusal { reason })),
                ))),
                Ok(other) => Err(Error::UnexpectedReply {
                    peer: Some(target_id),
                    addr: addr.clone(),
                    rpc: "elect",
                    got: other.kind(),
                }),
                Err(e) => Err(peer_err(Box::new(network::rpc_error(e)))),
            }
        }
        .await;
        // 4. Back to normal, whatever happened.
        self.raft.runtime_config().heartbeat(true);
        self.raft
            .runtime_config()
            .elect(self.elect_allowed.load(SeqCst));
        self.stepping_down.store(false, SeqCst);
        match &result {
            Ok(t) => tracing::info!(from = self.id, to = *t, "switchover: done"),
            Err(e) => {
                tracing::warn!(error = %e, "switchover failed; this node resumes as leader if it still is")
            }
        }
        result
    }

    /// Wait until `target` holds every entry of this leader's log.
    async fn wait_caught_up(&self, target: NodeId, addr: &str, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        loop {
            let m = self.metrics();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).copied().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if matched >= last {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::CatchUpTimeout {
                    peer: target,
                    addr: addr.to_string(),
                    matched,
                    last,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Campaign until this node is leader (asked by the leader during a switchover).
    async fn campaign(&self) -> Result<()> {
        const PATIENCE: Duration = Duration::from_secs(5);
        let deadline = Instant::now() + PATIENCE;
        let term_at_start = self.metrics().current_term;
        while Instant::now() < deadline {
            if self.is_leader() {
                return Ok(());
            }
            let m = self.metrics();
            // Another node won an election held since the hand-over began: stop, a
            // new election would only take the master role away from it again.
            if let Some(leader) = m.current_leader.filter(|l| *l != self.id) {
                if m.current_term > term_at_start {
                    return Err(Error::NotElected {
                        node: self.id,
                        waited: PATIENCE.saturating_sub(deadline - Instant::now()),
                        elected_instead: Some((leader, m.current_term)),
                    });
                }
            }
            if m.state != ServerState::Candidate {
                self.raft.trigger().elect().await?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::NotElected {
            node: self.id,
            waited: PATIENCE,
            elected_instead: None,
        })
    }

    /// Handle a join: check the token, sign the CSR, add the node as a learner.
    async fn handle_join(
        &self,
        secret: String,
        id: NodeId,
        csr_pem: String,
        info: NodeInfo,
    ) -> Result<JoinAccepted, JoinRefusal> {
        let me = self.id;
        let ca = ClusterCa::load(&self.tls_dir).map_err(|_| JoinRefusal::NoCaKey { node: me })?;
        let token_path = self.tls_dir.join("join.token");
        let token_text =
            std::fs::read_to_string(&token_path).map_err(|e| JoinRefusal::NoTokenFile {
                node: me,
                path: token_path.clone(),
                source: Arc::new(e),
            })?;
        let token: JoinToken =
            token_text
                .trim()
                .parse()
                .map_err(|e| JoinRefusal::StoredTokenUnreadable {
                    path: token_path.clone(),
                    source: Arc::new(e),
                })?;
        if !token.secret_matches(&secret) {
            tracing::warn!(joiner = id, "join refused: wrong token");
            return Err(JoinRefusal::WrongSecret);
        }
        let members = self
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(i, n)| (*i, n.clone()))
            .collect::<Vec<_>>();
        if let Some((_, existing)) = members.iter().find(|(i, _)| *i == id) {
            if existing.addr != info.addr {
                return Err(JoinRefusal::IdTaken {
                    id,
                    by: existing.addr.clone(),
                });
            }
        }
        let cert_pem = ca
            .sign_csr(id, &csr_pem)
            .map_err(|e| JoinRefusal::Csr(Arc::new(e)))?;
        self.leader_op(LeaderOp::AddLearner {
            id,
            info: info.clone(),
        })
        .await
        .map_err(|source| JoinRefusal::AddLearner { id, source })?;
        tracing::info!(joiner = id, addr = %info.addr, "node enrolled and added as learner");
        let admin_token = std::fs::read_to_string(&self.admin_token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Ok(JoinAccepted {
            cert_pem,
            ca_pem: ca.cert_pem.clone(),
            members,
            admin_token,
        })
    }
}

/// Why this node refused a join (sent to the joiner as its text).
#[derive(Debug, thiserror::Error)]
enum JoinRefusal {
    #[error("node {node} does not hold the cluster CA key; send the join to the node that ran `tandem init`")]
    NoCaKey { node: NodeId },
    #[error("node {node} has no join token file {}: {source}", path.display())]
    NoTokenFile {
        node: NodeId,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("stored join token {} unreadable: {source}", path.display())]
    StoredTokenUnreadable {
        path: PathBuf,
        #[source]
        source: Arc<tls::TlsError>,
    },
    #[error("join token refused: wrong secret (get the token printed by `tandem init`)")]
    WrongSecret,
    #[error("node id {id} is already used by {by} ; pick another [node] id")]
    IdTaken { id: NodeId, by: String },
    #[error(transparent)]
    Csr(Arc<tls::TlsError>),
    #[error("adding node {id} as learner: {source}")]
    AddLearner {
        id: NodeId,
        #[source]
        source: Error,
    },
}

/// Enroll this node with a cluster: generate a key + CSR, send them with the token
/// to `addr`, save the returned certificate. The node then starts with `run` and is
/// promoted to voter once it has caught up.
pub async fn join(
    addr: &str,
    token: &JoinToken,
    id: NodeId,
    info: NodeInfo,
    tls_dir: &std::path::Path,
) -> Result<JoinAccepted> {
    let (key_pem, csr_pem) = NodeIdentity::generate_csr(id)?;
    let tls = tls::join_client_config(&token.ca_fingerprint)?;
    let peer_err = |source| Error::Peer {
        peer: None,
        addr: addr.to_string(),
        rpc: "join",
        source,
    };
    let mut stream = network::connect(addr, tls, Duration::from_secs(10))
        .await
        .map_err(|e| peer_err(Box::new(network::rpc_error(e))))?;
    let req = RpcRequest::Join {
        secret: token.secret.clone(),
        id,
        csr_pem,
        info,
    };
    let resp = network::exchange(&mut stream, &req, Duration::from_secs(30))
        .await
        .map_err(|e| peer_err(Box::new(network::rpc_error(e))))?;
    match resp {
        RpcResponse::Join(Ok(acc)) => {
            let identity = NodeIdentity {
                cert_pem: acc.cert_pem.clone(),
                key_pem,
                ca_pem: acc.ca_pem.clone(),
            };
            identity.save(tls_dir)?;
            Ok(acc)
        }
        // The peer's id is not known before the join: 0 stands for "the node at addr".
        RpcResponse::Join(Err(reason)) | RpcResponse::Refused(reason) => Err(peer_err(Box::new(
            RPCError::RemoteError(RemoteError::new(0, Refusal { reason })),
        ))),
        other => Err(Error::UnexpectedReply {
            peer: None,
            addr: addr.to_string(),
            rpc: "join",
            got: other.kind(),
        }),
    }
}

/// Why a leader operation did not run, as the write path sees it.
enum OpFailure {
    /// Not (or no longer) the leader, which may be known: retry there.
    NotLeader { leader: Option<NodeId> },
    /// The leader could not be reached: retry (`Error::LeaderUnreachable`).
    Unreachable(Error),
    /// It ran on the leader and failed there: give up.
    Failed(Error),
}

impl OpFailure {
    /// A failure of this node, the leader, running `op`.
    fn on_leader(me: NodeId, op: &'static str, e: Error) -> OpFailure {
        OpFailure::Failed(Error::OnLeader {
            leader: me,
            op,
            source: LeaderFailure::Local(Box::new(e)),
        })
    }

    /// The form sent back to a node that forwarded the op (text: see
    /// `network::ForwardError`).
    fn into_wire(self) -> ForwardError {
        match self {
            OpFailure::NotLeader { leader } => ForwardError::NotLeader { leader },
            // The forwarding node adds "the leader could not ...": send the cause.
            OpFailure::Failed(Error::OnLeader {
                source: LeaderFailure::Local(e),
                ..
            }) => ForwardError::Failed(e.to_string()),
            OpFailure::Failed(e) | OpFailure::Unreachable(e) => ForwardError::Failed(e.to_string()),
        }
    }
}

fn unexpected_reply(leader: NodeId, rpc: &'static str, got: &LeaderReply) -> Error {
    Error::UnexpectedReply {
        peer: Some(leader),
        addr: String::new(),
        rpc,
        got: got.kind(),
    }
}

struct Handler(std::sync::Weak<Replica>);

impl RpcHandler for Handler {
    async fn handle(&self, peer: Option<NodeId>, req: RpcRequest) -> RpcResponse {
        let Some(r) = self.0.upgrade() else {
            return RpcResponse::Refused("node is shutting down".into());
        };
        match req {
            RpcRequest::AppendEntries(rpc) => {
                *r.last_leader_contact.lock().expect("contact lock") = Some(Instant::now());
                if let Some(c) = rpc.leader_commit {
                    r.lag.observe(c.index, Instant::now());
                }
                RpcResponse::AppendEntries(r.raft.append_entries(rpc).await)
            }
            RpcRequest::Vote(rpc) => {
                let candidate_log = rpc.last_log_id;
                let resp = r.raft.vote(rpc).await;
                // Refused because the candidate's log is behind ours: that candidate
                // cannot win this vote (what a witness rescue waits for).
                if let Ok(v) = &resp {
                    if !v.vote_granted && candidate_log < v.last_log_id {
                        *r.stale_candidate_at.lock().expect("stale lock") = Some(Instant::now());
                    }
                }
                RpcResponse::Vote(resp)
            }
            RpcRequest::InstallSnapshot(rpc) => {
                RpcResponse::InstallSnapshot(r.raft.install_snapshot(rpc).await)
            }
            RpcRequest::Leader(op) => {
                tracing::trace!(?peer, "forwarded leader op");
                RpcResponse::Leader(r.run_leader_op(op).await.map_err(OpFailure::into_wire))
            }
            RpcRequest::Join {
                secret,
                id,
                csr_pem,
                info,
            } => RpcResponse::Join(
                r.handle_join(secret, id, csr_pem, info)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            RpcRequest::Elect => {
                RpcResponse::Elected(r.campaign().await.map_err(|e| e.to_string()))
            }
            RpcRequest::BlobRead { id, offset, len } => {
                let Some(blobs) = r.blobs.clone() else {
                    return RpcResponse::Blob(Err(format!(
                        "node {} is a witness and stores no recordings",
                        r.id
                    )));
                };
                let corrupt = r
                    .corrupt_chunks
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok();
                let stats = r.blob_stats.clone();
                let res = tokio::task::spawn_blocking(move || {
                    crate::blobs::sync::serve_chunk(&blobs, &stats, &id, offset, len, corrupt)
                })
                .await
                .unwrap_or_else(|e| Err(format!("blob read task failed: {e}")));
                RpcResponse::Blob(res)
            }
        }
    }
}

/// Merge concurrent CDR writes into shared entries of at most MAX_CDRS_PER_ENTRY.
async fn cdr_batcher(replica: std::sync::Weak<Replica>, mut rx: mpsc::Receiver<CdrBatch>) {
    // Few writes in flight: while they commit, new requests pile up in the channel
    // and the next entry carries many of them (group commit).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
    let mut carried: Option<CdrBatch> = None;
    loop {
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let first = match carried.take() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => return,
            },
        };
        let mut count = first.cdrs.len();
        let mut group = vec![first];
        while count < MAX_CDRS_PER_ENTRY {
            match rx.try_recv() {
                Ok(b) if count + b.cdrs.len() <= MAX_CDRS_PER_ENTRY => {
                    count += b.cdrs.len();
                    group.push(b);
                }
                Ok(b) => {
                    carried = Some(b);
                    break;
                }
                Err(_) => break,
            }
        }
        let Some(r) = replica.upgrade() else { return };
        tokio::spawn(async move {
            let cdrs: Vec<Cdr> = group.iter().flat_map(|b| b.cdrs.iter().cloned()).collect();
            let res = r.write(Request::AddCdrs { cdrs }).await;
            for b in group {
                let mine = match &res {
                    Ok((index, Response::Cdrs { duplicate_ids, .. })) => {
                        let dups: Vec<uuid::Uuid> = b
                            .cdrs
                            .iter()
                            .map(|c| c.id)
                            .filter(|id| duplicate_ids.contains(id))
                            .collect();
                        Ok((
                            *index,
                            Response::Cdrs {
                                inserted: (b.cdrs.len() - dups.len()) as u32,
                                duplicates: dups.len() as u32,
                                duplicate_ids: dups,
                            },
                        ))
                    }
                    Ok(other) => Ok(other.clone()),
                    Err(e) => Err(e.clone()),
                };
                let _ = b.done.send(mine);
            }
            drop(permit);
        });
    }
}

/// Leader background work: sample the log index clock; promote caught-up learners.
/// On the leader, a heartbeat to every follower each `every` (openraft's own
/// heartbeat runs at the longer RPC timeout, see `ReplicaConfig::rpc_timeout_ms`).
/// A follower busy with an earlier request gets the heartbeat right after it.
async fn heartbeat_pacer(replica: std::sync::Weak<Replica>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = replica.upgrade() else { return };
        // Not while handing over (a switchover lets the followers' leader lease
        // lapse so the target can win; `trigger().heartbeat()` ignores openraft's
        // own heartbeat switch).
        if r.is_leader() && !r.is_stepping_down() && r.raft.trigger().heartbeat().await.is_err() {
            return; // Raft shut down
        }
    }
}

/// The leader's standing duties (see [`crate::policy`]): a thin driver that shows
/// the policy the cluster as this leader sees it and carries out its decisions.
async fn leader_duties(replica: std::sync::Weak<Replica>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut duties: Option<LeaderDuties> = None;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    loop {
        tick.tick().await;
        let Some(r) = replica.upgrade() else { return };
        let duties = duties.get_or_insert_with(|| LeaderDuties::new(r.policy));
        let now = Instant::now();
        while done_rx.try_recv().is_ok() {
            duties.handle(Event::HandOverFinished, now);
        }
        let m = r.metrics();
        if m.state != ServerState::Leader {
            continue;
        }
        r.clock.record(m.last_log_index.unwrap_or(0), now);
        let view = r.leader_view(&m, now);
        for decision in duties.handle(Event::Tick(&view), now) {
            match decision {
                Decision::HandOver { to } => {
                    let (r, done) = (r.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        match r.switchover(Some(to)).await {
                            Ok(to) => {
                                tracing::info!(to, "witness handed leadership to a data node")
                            }
                            Err(e) => {
                                tracing::warn!(to, error = %e, "witness could not hand leadership over yet; will retry")
                            }
                        }
                        let _ = done.send(());
                    });
                }
                Decision::Promote { ids } => {
                    tracing::info!(ready = ?ids, "promoting caught-up learners to voters");
                    if let Err(e) = r
                        .raft
                        .change_membership(ChangeMembers::AddVoterIds(ids), false)
                        .await
                    {
                        tracing::warn!(error = %e, "promotion failed; will retry");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_tracker_reports_entries_and_age() {
        let t = LagTracker::default();
        let t0 = Instant::now();
        t.observe(10, t0);
        t.observe(20, t0 + Duration::from_millis(100));
        let lag = t.lag(5, t0 + Duration::from_millis(250));
        assert_eq!(
            lag,
            Lag {
                entries: 15,
                ms: 250
            }
        );
        let lag = t.lag(15, t0 + Duration::from_millis(300));
        assert_eq!(
            lag,
            Lag {
                entries: 5,
                ms: 200
            }
        );
        assert_eq!(t.lag(20, t0 + Duration::from_millis(400)), Lag::default());
    }

    #[test]
    fn index_clock_gives_age_of_first_missing_entry() {
        let c = IndexClock::default();
        let t0 = Instant::now();
        c.record(1, t0);
        c.record(5, t0 + Duration::from_millis(10));
        assert_eq!(c.behind_ms(3, t0 + Duration::from_millis(50)), 40);
        assert_eq!(c.behind_ms(5, t0 + Duration::from_millis(50)), 0);
    }
}
