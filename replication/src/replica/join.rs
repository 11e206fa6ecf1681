//! Joining: this node's side of a join (check the token, sign the CSR, add the
//! joiner as a learner, hand it the cluster's CA and admin token) and the joiner's
//! side ([`join`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, RemoteError};

use super::writes::Writes;
use crate::error::Refusal;
use crate::network::server::Throttle;
use crate::network::{self, JoinAccepted, LeaderOp, RpcRequest, RpcResponse};
use crate::tls::{self, ClusterCa, JoinToken, NodeIdentity};
use crate::types::{NodeId, NodeInfo, Raft};
use crate::{Error, Result};

static WRONG_TOKEN_WARNING: Throttle = Throttle::new(network::server::WARN_EVERY);

/// Admits new nodes (only the node that ran `tandem init` holds the CA key).
pub(super) struct Joins {
    pub(super) id: NodeId,
    pub(super) raft: Raft,
    /// Adds the joiner as a learner (on the leader).
    pub(super) writes: Arc<Writes>,
    /// ca.pem, ca.key, join.token.
    pub(super) tls_dir: PathBuf,
    /// The cluster's admin API token file, handed to the joiner.
    pub(super) admin_token_file: PathBuf,
    /// Hosts named in every certificate signed here, besides the joiner's own.
    pub(super) service_hosts: Vec<String>,
}

impl Joins {
    /// Handle a join: check the token, sign the CSR, add the node as a learner.
    pub(super) async fn handle(
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
            // Anyone reaching the peer port can send these: logged at most every
            // `WARN_EVERY`, with the number left out.
            if let Some(left_out) = WRONG_TOKEN_WARNING.allow() {
                tracing::warn!(joiner = id, left_out, "join refused: wrong token");
            }
            return Err(JoinRefusal::WrongSecret);
        }
        let members = self
            .raft
            .metrics()
            .borrow()
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
        // The joiner's API is reached at its member addresses, its name and the VIP.
        let mut names = tls::ServiceNames::default();
        for host in [&info.addr, &info.api, &info.name]
            .into_iter()
            .chain(&self.service_hosts)
        {
            names.add_host(host);
        }
        let cert_pem = ca
            .sign_csr_for(id, &csr_pem, &names)
            .map_err(|e| JoinRefusal::Csr(Arc::new(e)))?;
        self.writes
            .leader_op(LeaderOp::AddLearner {
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
pub(super) enum JoinRefusal {
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
