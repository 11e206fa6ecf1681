//! [`RoleState`]: what the rest of a node reads about its role (health, status,
//! metrics, the alarm mailer, the SIP service). The node's role driver is its only
//! writer: it sets the fields as it performs the [`Controller`](crate::controller::Controller)'s actions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::controller::Role;

/// What the rest of the node reads about roles (health, status, metrics).
pub struct RoleState {
    pub role: Mutex<Role>,
    /// The same role, for tasks that must react at once to a change (the SIP
    /// service starts answering the moment this node becomes master).
    pub role_watch: tokio::sync::watch::Sender<Role>,
    pub vip_held: AtomicBool,
    pub maintenance: AtomicBool,
    pub role_changes: AtomicU64,
    pub vip_acquired: AtomicU64,
    /// Longest time, in ms, this node went as master without a quorum
    /// acknowledgement (the lease lapses at `lease_ms`): the margin a degraded
    /// network leaves. Since start.
    pub lease_age_max_ms: AtomicU64,
    pub has_vip: bool,
    /// Members the master cannot reach (alarm events `cluster.node_down` /
    /// `cluster.witness_lost` are logged on every change).
    pub unreachable: Mutex<std::collections::BTreeSet<u64>>,
}

impl RoleState {
    pub fn role(&self) -> Role {
        *self.role.lock().expect("role lock")
    }
    /// A receiver that wakes on every role change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Role> {
        self.role_watch.subscribe()
    }
    pub fn vip_held(&self) -> bool {
        self.vip_held.load(Ordering::SeqCst)
    }
    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::SeqCst)
    }
    /// Members the master currently cannot reach (empty on standbys).
    pub fn unreachable(&self) -> Vec<u64> {
        self.unreachable
            .lock()
            .expect("unreachable lock")
            .iter()
            .copied()
            .collect()
    }
}
