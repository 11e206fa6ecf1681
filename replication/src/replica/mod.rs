//! A running cluster member: openraft, the peer server, and the jobs around them,
//! each in a module of its own. `Replica` holds the shared handles and delegates.
//!
//! ```text
//!                 ┌──────────────────────── Replica ─────────────────────────┐
//!  node (API) ──▶ │ write/add_cdrs/leader_op ─▶ writes      (forward, batch)  │
//!                 │ switchover/set_elect     ─▶ switchover  (hand-over, vote) │
//!  peers ───────▶ │ Handler (RPC dispatch)   ─▶ join        (enroll a node)   │
//!                 │ lag/members/since_*      ─▶ lag         (freshness)       │
//!                 │ background               ─▶ duties      (policy driver)   │
//!                 │ recordings               ─▶ blob_link   (serve, sync)     │
//!                 └──────────────────────────────────────────────────────────┘
//! ```
//!
//! - `writes`: writes and leader operations on the leader, forwarded there from
//!   any node; the CDR batcher (group commit).
//! - `switchover`: graceful leadership transfer, campaigning when asked, the
//!   election switch (maintenance).
//! - `join`: admitting a node (token, CSR, learner) and joining a cluster.
//! - `lag`: how far this node and each member are behind.
//! - `duties`: the leader's heartbeats and its standing duties, decided by
//!   [`crate::policy`] (promote caught-up learners; a witness hands leadership to a
//!   data node).
//! - `blob_link`: the blob sync's narrow handle on the cluster (`blobs` never names
//!   `Replica`: this module wires them), and serving recording chunks to peers.

mod blob_link;
mod duties;
mod join;
mod lag;
pub mod space;
mod switchover;
mod writes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::blobs::sync::SyncStats;
use crate::blobs::BlobStore;
use crate::cdr::Cdr;
use crate::network::{self, LeaderOp, LeaderReply, RpcHandler, RpcRequest, RpcResponse};
use crate::policy::PolicyConfig;
use crate::store::{self, LogStore, SmShared};
use crate::tls::{self, NodeIdentity};
use crate::types::{MemberKind, NodeId, NodeInfo, Raft, RaftMetrics, Request, Response};
use crate::{Error, Result};

pub use crate::policy::PROMOTE_WITHIN;
pub use join::join;
pub use lag::{Lag, MemberStatus};
pub use writes::{MAX_CDRS_PER_ENTRY, WRITES_IN_FLIGHT};

use blob_link::{BlobLink, BlobServe};
use join::Joins;
use lag::Freshness;
use switchover::Switchover;
use writes::{OpFailure, Writes};

/// Settings of one member (derived from the node's config file).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: NodeId,
    pub info: NodeInfo,
    pub data_dir: PathBuf,
    /// Where the peer server listens.
    pub listen: std::net::SocketAddr,
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
    /// Hosts every node certificate this node signs names besides the joiner's own
    /// addresses and name (the cluster's VIP): see [`crate::tls::ServiceNames`].
    pub service_hosts: Vec<String>,
    /// Recording transfer cap from the node file, kbit/s (0 = unlimited); the
    /// replicated key `replication.recording_bandwidth_kbps` overrides it.
    pub recording_cap_kbps: u64,
    /// Bytes kept free in `data_dir`: writes that add data are refused (disk
    /// full) below it; 0 turns the guard off.
    pub min_free_bytes: u64,
}

/// A running member of the cluster.
pub struct Replica {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    log: LogStore,
    client_tls: Arc<rustls::ClientConfig>,
    /// When each peer last answered this node's Raft RPCs.
    contacts: network::Contacts,
    /// Thresholds of the leader's duties (see `duties`).
    policy: PolicyConfig,
    writes: Arc<Writes>,
    /// Free space of the data directory (writes are refused below the reserve).
    pub space: Arc<space::Space>,
    switchover: Arc<Switchover>,
    joins: Joins,
    freshness: Freshness,
    /// Writes committed through this node (metrics).
    pub writes_committed: Arc<AtomicU64>,
    /// Recording files of this node (None on a witness: it stores no recordings).
    pub blobs: Option<Arc<BlobStore>>,
    /// Blob channel counters and backlog.
    pub blob_stats: Arc<SyncStats>,
    blob_serve: BlobServe,
    /// The blob sync's handle on the cluster (the sync stops when it is dropped).
    _blob_link: Option<Arc<BlobLink>>,
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
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Listen {
                addr: cfg.listen.to_string(),
                source: Arc::new(e),
            })?;
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
        let policy = PolicyConfig::new(Duration::from_millis(cfg.election_timeout_min_ms));
        let switchover = Arc::new(Switchover::new(
            cfg.id,
            cfg.info.kind,
            raft.clone(),
            client_tls.clone(),
            contacts.clone(),
            policy,
        ));
        let writes_committed = Arc::new(AtomicU64::new(0));
        let space = Arc::new(space::Space::new(&cfg.data_dir, cfg.min_free_bytes));
        let writes = Writes::start(
            cfg.id,
            raft.clone(),
            client_tls.clone(),
            switchover.clone(),
            writes_committed.clone(),
            space.clone(),
        );
        let joins = Joins {
            id: cfg.id,
            raft: raft.clone(),
            writes: writes.clone(),
            tls_dir: cfg.tls_dir.clone(),
            admin_token_file: cfg.admin_token_file.clone(),
            service_hosts: cfg.service_hosts.clone(),
        };
        let blob_stats = Arc::new(SyncStats::default());
        let blob_link = blobs.as_ref().map(|blobs| {
            let link = Arc::new(BlobLink {
                id: cfg.id,
                raft: raft.clone(),
                sm: shared.clone(),
                client_tls: client_tls.clone(),
                writes: writes.clone(),
            });
            tokio::spawn(crate::blobs::sync::run(
                Arc::downgrade(&link),
                blobs.clone(),
                blob_stats.clone(),
                cfg.recording_cap_kbps,
            ));
            link
        });
        let replica = Arc::new(Replica {
            id: cfg.id,
            info: cfg.info.clone(),
            raft,
            sm: shared,
            log,
            client_tls,
            contacts,
            policy,
            writes,
            space,
            switchover,
            joins,
            freshness: Freshness::default(),
            writes_committed,
            blobs,
            blob_stats,
            blob_serve: BlobServe::from_env(),
            _blob_link: blob_link,
        });
        tokio::spawn(network::serve(
            listener,
            server_tls,
            Arc::new(Handler(Arc::downgrade(&replica))),
        ));
        tokio::spawn(duties::leader_duties(Arc::downgrade(&replica)));
        tokio::spawn(duties::heartbeat_pacer(
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
        self.freshness.lag(applied, Instant::now())
    }

    /// Write through Raft (forwarded to the leader when this node is not it).
    /// Returns once the entry is committed and applied on the leader.
    pub async fn write(&self, req: Request) -> Result<(u64, Response)> {
        self.writes.write(req).await
    }

    /// Insert CDRs; concurrent calls are merged into shared log entries (group
    /// commit). Returns the log index and this call's inserted/duplicate counts.
    pub async fn add_cdrs(&self, cdrs: Vec<Cdr>) -> Result<(u64, Response)> {
        self.writes.add_cdrs(cdrs).await
    }

    /// Index a linearizable read must wait for (Raft §6.4 read index), then wait
    /// until this node has applied it.
    pub async fn linearizable_barrier(&self, timeout: Duration) -> Result<u64> {
        self.writes.linearizable_barrier(timeout).await
    }

    /// Remove a node from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.writes.remove_node(id).await
    }

    /// Run `op` on the leader: locally if we are it, else forwarded. Retries while
    /// leadership moves, for up to ~5 s.
    pub async fn leader_op(&self, op: LeaderOp) -> Result<LeaderReply> {
        self.writes.leader_op(op).await
    }

    /// Move leadership to `to` (or the most up-to-date other data voter). Runs on the
    /// leader (forwarded there otherwise); returns the new leader's id.
    pub async fn switchover(&self, to: Option<NodeId>) -> Result<NodeId> {
        self.writes.switchover(to).await
    }

    /// The members with their replication state (leader's view when we lead).
    pub fn members(&self) -> Vec<MemberStatus> {
        self.freshness
            .members(self.id, &self.metrics(), &self.contacts, Instant::now())
    }

    /// Time since this node last heard from a leader (None: never since start).
    pub fn since_leader_contact(&self, now: Instant) -> Option<Duration> {
        self.freshness.since_leader_contact(now)
    }

    /// How long ago this node refused its vote to a candidate because the
    /// candidate's log was behind this node's.
    pub fn since_stale_candidate(&self, now: Instant) -> Option<Duration> {
        self.freshness.since_stale_candidate(now)
    }

    /// Whether this node may campaign (data node, not in maintenance).
    pub fn elect_allowed(&self) -> bool {
        self.switchover.elect_allowed()
    }

    /// Start an election now (fast takeover, see the failover driver).
    pub async fn campaign_now(&self) -> Result<()> {
        self.switchover.campaign_now().await
    }

    pub fn is_stepping_down(&self) -> bool {
        self.switchover.is_stepping_down()
    }

    /// Allow or forbid this node to start elections (maintenance mode). Witnesses never
    /// campaign whatever is asked.
    pub fn set_elect(&self, allowed: bool) {
        self.switchover.set_elect(allowed)
    }
}

/// The peer server's side: each request goes to the job that handles it.
struct Handler(std::sync::Weak<Replica>);

impl RpcHandler for Handler {
    async fn handle(&self, peer: Option<NodeId>, req: RpcRequest) -> RpcResponse {
        let Some(r) = self.0.upgrade() else {
            return RpcResponse::Refused("node is shutting down".into());
        };
        match req {
            RpcRequest::AppendEntries(rpc) => {
                r.freshness
                    .append_received(rpc.leader_commit.map(|c| c.index), Instant::now());
                RpcResponse::AppendEntries(r.raft.append_entries(rpc).await)
            }
            RpcRequest::Vote(rpc) => {
                let candidate_log = rpc.last_log_id;
                let resp = r.raft.vote(rpc).await;
                // Refused because the candidate's log is behind ours: that candidate
                // cannot win this vote (what a witness rescue waits for).
                if let Ok(v) = &resp {
                    if !v.vote_granted && candidate_log < v.last_log_id {
                        r.freshness.stale_candidate_refused(Instant::now());
                    }
                }
                RpcResponse::Vote(resp)
            }
            RpcRequest::InstallSnapshot(rpc) => {
                RpcResponse::InstallSnapshot(r.raft.install_snapshot(rpc).await)
            }
            RpcRequest::Leader(op) => {
                tracing::trace!(?peer, "forwarded leader op");
                RpcResponse::Leader(
                    r.writes
                        .run_leader_op(op)
                        .await
                        .map_err(OpFailure::into_wire),
                )
            }
            RpcRequest::Join {
                secret,
                id,
                csr_pem,
                info,
            } => RpcResponse::Join(
                r.joins
                    .handle(secret, id, csr_pem, info)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            RpcRequest::Elect => {
                RpcResponse::Elected(r.switchover.campaign().await.map_err(|e| e.to_string()))
            }
            RpcRequest::BlobRead { id, offset, len } => RpcResponse::Blob(
                r.blob_serve
                    .serve(r.id, r.blobs.clone(), r.blob_stats.clone(), id, offset, len)
                    .await,
            ),
        }
    }
}
