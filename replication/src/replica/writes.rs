//! The write path: writes and other leader operations run on the leader, forwarded
//! there over peer TLS from any other node, and CDR writes merged into shared log
//! entries (group commit).
//!
//! ```text
//!  write(req) ─▶ leader?  yes ─▶ raft.client_write ─▶ commit (majority fsynced) ─▶ apply ─▶ Ok
//!                         no  ─▶ LeaderOp::Write over peer TLS to the leader ─────────────▶ Ok
//!  add_cdrs(v) ─▶ cdr_batcher (merges concurrent calls into one entry) ─▶ write
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use tokio::sync::{mpsc, oneshot};

use super::switchover::Switchover;
use crate::cdr::Cdr;
use crate::error::{FailureClass, InvalidRequest, LeaderFailure};
use crate::network::{
    self, ForwardError, LeaderOp, LeaderReply, PeerClient, RpcRequest, RpcResponse,
};
use crate::types::{NodeId, Raft, RaftMetrics, Request, Response};
use crate::{Error, Result};

/// The most CDRs merged into one log entry (keeps entries small: heartbeats share
/// the stream).
pub const MAX_CDRS_PER_ENTRY: usize = 256;
/// CDR entries being committed at once by the batcher.
pub const WRITES_IN_FLIGHT: usize = 4;

struct CdrBatch {
    cdrs: Vec<Cdr>,
    done: oneshot::Sender<Result<(u64, Response)>>,
}

pub(super) struct Writes {
    id: NodeId,
    raft: Raft,
    client_tls: Arc<rustls::ClientConfig>,
    /// Runs `LeaderOp::Switchover`, and refuses writes while it steps down.
    switchover: Arc<Switchover>,
    /// Idle connections to the leader, by leader id (forwarded operations).
    forward_pool: Mutex<HashMap<NodeId, Vec<PeerClient>>>,
    /// To the CDR batcher.
    cdr_tx: mpsc::Sender<CdrBatch>,
    /// Writes committed through this node (metrics; shared with `Replica`).
    writes_committed: Arc<AtomicU64>,
    /// This node's free space: checked when it leads, before a write is proposed.
    space: Arc<super::space::Space>,
}

impl Writes {
    /// The write path, and its CDR batcher task (which stops when this is dropped).
    pub(super) fn start(
        id: NodeId,
        raft: Raft,
        client_tls: Arc<rustls::ClientConfig>,
        switchover: Arc<Switchover>,
        writes_committed: Arc<AtomicU64>,
        space: Arc<super::space::Space>,
    ) -> Arc<Writes> {
        let (cdr_tx, cdr_rx) = mpsc::channel(4096);
        let writes = Arc::new(Writes {
            id,
            raft,
            client_tls,
            switchover,
            forward_pool: Mutex::new(HashMap::new()),
            cdr_tx,
            writes_committed,
            space,
        });
        tokio::spawn(cdr_batcher(Arc::downgrade(&writes), cdr_rx));
        writes
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// An answer of the wrong kind from `leader` (named with its address).
    fn unexpected(&self, leader: NodeId, rpc: &'static str, got: &LeaderReply) -> Error {
        let addr = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Error::UnexpectedReply {
            peer: Some(leader),
            addr,
            rpc,
            got: got.kind(),
        }
    }

    /// Write through Raft (forwarded to the leader when this node is not it).
    /// Returns once the entry is committed and applied on the leader.
    pub(super) async fn write(&self, req: Request) -> Result<(u64, Response)> {
        match self.leader_op_at(LeaderOp::Write(req)).await? {
            (_, LeaderReply::Written { index, response }) => Ok((index, response)),
            (leader, other) => Err(self.unexpected(leader, "write", &other)),
        }
    }

    /// Insert CDRs; concurrent calls are merged into shared log entries (group
    /// commit). Returns the log index and this call's inserted/duplicate counts.
    pub(super) async fn add_cdrs(&self, cdrs: Vec<Cdr>) -> Result<(u64, Response)> {
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
    pub(super) async fn linearizable_barrier(&self, timeout: Duration) -> Result<u64> {
        let index = match self.leader_op_at(LeaderOp::ReadIndex).await? {
            (_, LeaderReply::ReadIndex { index }) => index,
            (leader, other) => return Err(self.unexpected(leader, "read index", &other)),
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
    pub(super) async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.leader_op(LeaderOp::Remove { id }).await.map(|_| ())
    }

    /// Move leadership to `to` (or the best other data voter), on the leader.
    pub(super) async fn switchover(&self, to: Option<NodeId>) -> Result<NodeId> {
        match self.leader_op_at(LeaderOp::Switchover { to }).await? {
            (_, LeaderReply::SwitchedTo { leader }) => Ok(leader),
            (leader, other) => Err(self.unexpected(leader, "switchover", &other)),
        }
    }

    /// Run `op` on the leader: locally if we are it, else forwarded. Retries while
    /// leadership moves, for up to ~5 s.
    pub(super) async fn leader_op(&self, op: LeaderOp) -> Result<LeaderReply> {
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
                        source: LeaderFailure::Remote {
                            reason,
                            class: FailureClass::Permanent,
                        },
                    }),
                    ForwardError::Refused { reason, class } => OpFailure::Failed(Error::OnLeader {
                        leader,
                        op: what,
                        source: LeaderFailure::Remote { reason, class },
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
    pub(super) async fn run_leader_op(&self, op: LeaderOp) -> Result<LeaderReply, OpFailure> {
        if self.switchover.is_stepping_down() && !matches!(op, LeaderOp::ReadIndex) {
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
                .switchover
                .run(to)
                .await
                .map(|leader| LeaderReply::SwitchedTo { leader })
                .map_err(|e| OpFailure::on_leader(self.id, what, e)),
            LeaderOp::Write(req) => {
                // Refused before the store runs out of space (which would stop Raft).
                self.space
                    .check_request(self.id, &req)
                    .map_err(|e| OpFailure::on_leader(self.id, what, e))?;
                match self.raft.client_write(req).await {
                    Ok(resp) => {
                        self.writes_committed.fetch_add(1, Ordering::Relaxed);
                        Ok(LeaderReply::Written {
                            index: resp.log_id.index,
                            response: resp.data,
                        })
                    }
                    Err(e) => Err(refused(e.into())),
                }
            }
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
}

/// Merge concurrent CDR writes into shared entries of at most MAX_CDRS_PER_ENTRY.
async fn cdr_batcher(writes: Weak<Writes>, mut rx: mpsc::Receiver<CdrBatch>) {
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
        let Some(r) = writes.upgrade() else { return };
        tokio::spawn(async move {
            let cdrs: Vec<Cdr> = group.iter().flat_map(|b| b.cdrs.iter().cloned()).collect();
            let res = r.write(Request::AddCdrs { cdrs }).await;
            let shares = match &res {
                Ok((_, Response::Cdrs { duplicate_ids, .. })) => {
                    let batches: Vec<&[Cdr]> = group.iter().map(|b| &b.cdrs[..]).collect();
                    Some(share_duplicates(&batches, duplicate_ids))
                }
                _ => None,
            };
            for (i, b) in group.into_iter().enumerate() {
                let mine = match (&res, &shares) {
                    (Ok((index, _)), Some(shares)) => {
                        let dups = shares[i].clone();
                        Ok((
                            *index,
                            Response::Cdrs {
                                inserted: (b.cdrs.len() - dups.len()) as u32,
                                duplicates: dups.len() as u32,
                                duplicate_ids: dups,
                            },
                        ))
                    }
                    (Ok(other), _) => Ok(other.clone()),
                    (Err(e), _) => Err(e.clone()),
                };
                let _ = b.done.send(mine);
            }
            drop(permit);
        });
    }
}

/// Which CDRs of each request of a group commit were duplicates, given the
/// duplicates the apply reported for the whole entry (one per skipped CDR, in
/// entry order). Apply keeps the first occurrence of a new id and skips the
/// later ones; an id already stored is skipped every time. So of the `k`
/// occurrences of an id with `d` reported duplicates, the first `k - d` were
/// stored and the rest were not, whichever requests they came from.
fn share_duplicates(batches: &[&[Cdr]], duplicate_ids: &[uuid::Uuid]) -> Vec<Vec<uuid::Uuid>> {
    let mut reported: HashMap<uuid::Uuid, usize> = HashMap::new();
    for id in duplicate_ids {
        *reported.entry(*id).or_default() += 1;
    }
    let mut occurrences: HashMap<uuid::Uuid, usize> = HashMap::new();
    for cdr in batches.iter().flat_map(|b| b.iter()) {
        *occurrences.entry(cdr.id).or_default() += 1;
    }
    // Occurrences of each id still to be stored, as we walk the entry in order.
    let mut stored_left: HashMap<uuid::Uuid, usize> = occurrences
        .iter()
        .map(|(id, k)| (*id, k - reported.get(id).copied().unwrap_or(0).min(*k)))
        .collect();
    batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .filter(|cdr| {
                    let left = stored_left.get_mut(&cdr.id).expect("counted above");
                    if *left > 0 {
                        *left -= 1;
                        false
                    } else {
                        true
                    }
                })
                .map(|cdr| cdr.id)
                .collect()
        })
        .collect()
}

/// Why a leader operation did not run, as the write path sees it.
pub(super) enum OpFailure {
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

    /// The form sent back to a node that forwarded the op: the error's text and
    /// its class (see `network::ForwardError`).
    pub(super) fn into_wire(self) -> ForwardError {
        let refused = |e: &Error| ForwardError::Refused {
            reason: e.to_string(),
            class: FailureClass::of(e),
        };
        match self {
            OpFailure::NotLeader { leader } => ForwardError::NotLeader { leader },
            // The forwarding node adds "the leader could not ...": send the cause.
            OpFailure::Failed(Error::OnLeader {
                source: LeaderFailure::Local(e),
                ..
            }) => refused(&e),
            OpFailure::Failed(e) | OpFailure::Unreachable(e) => refused(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(n: u128) -> Cdr {
        Cdr {
            id: uuid::Uuid::from_u128(n),
            ..crate::fixtures::cdr()
        }
    }

    fn counts(shares: &[Vec<uuid::Uuid>]) -> Vec<usize> {
        shares.iter().map(Vec::len).collect()
    }

    #[test]
    fn two_cdrs_of_one_id_in_one_request_store_one() {
        let a = [with_id(1), with_id(1), with_id(2)];
        let shares = share_duplicates(&[&a], &[uuid::Uuid::from_u128(1)]);
        assert_eq!(shares, vec![vec![uuid::Uuid::from_u128(1)]]);
    }

    #[test]
    fn the_first_request_of_a_group_stores_an_id_the_next_ones_repeat() {
        let (a, b, c) = ([with_id(1)], [with_id(1), with_id(3)], [with_id(1)]);
        let id1 = uuid::Uuid::from_u128(1);
        let shares = share_duplicates(&[&a, &b, &c], &[id1, id1]);
        assert_eq!(counts(&shares), vec![0, 1, 1]);
    }

    #[test]
    fn an_id_already_stored_is_a_duplicate_everywhere() {
        let (a, b) = ([with_id(7)], [with_id(7), with_id(8)]);
        let id7 = uuid::Uuid::from_u128(7);
        let shares = share_duplicates(&[&a, &b], &[id7, id7]);
        assert_eq!(counts(&shares), vec![1, 1]);
    }
}
