//! Fault injectors, each with its heal.
//!
//! | fault | how | heal |
//! |---|---|---|
//! | crash | SIGKILL to the tandem pid | [`Cluster::start_node`] |
//! | freeze | SIGSTOP | SIGCONT |
//! | link down | `ip link set eth0 down` in the node's namespace | `… up` |
//! | partition | nftables `inet tdmchaos` table, input chain of the receiving namespace: `ip saddr { … } drop` | delete the table |
//! | loss, delay, jitter | `tc qdisc add dev eth0 root netem …` | `tc qdisc del dev eth0 root` |
//!
//! Partitions drop IP only: ARP still crosses them, so an isolated old
//! master that keeps the VIP is seen by the single-answerer prober.
//! Every injector returns the instant of the fault: when the signal was sent,
//! or when the last rule of a partition was in place (a partition is a few
//! `nft` calls, ~10 ms each; measuring from its first rule would let writes
//! slip through the half-built cut and fake a fast failover).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::cluster::Cluster;
use crate::{cmd, topology};

/// Faults in force, so that [`Cluster::heal_all`] can undo them.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    nft: BTreeSet<String>,
    netem: BTreeSet<String>,
    links_down: BTreeSet<u64>,
}

/// One side of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Node(u64),
    Client,
}

const TABLE: &str = "inet tdmchaos";

impl Cluster {
    fn ep_ns(&self, e: Endpoint) -> String {
        match e {
            Endpoint::Node(id) => self.node(id).ns.clone(),
            Endpoint::Client => self.topology().client.clone(),
        }
    }

    fn ep_ip(&self, e: Endpoint) -> Ipv4Addr {
        match e {
            Endpoint::Node(id) => self.node(id).ip,
            Endpoint::Client => topology::CLIENT_IP,
        }
    }

    /// Freeze node `id` (SIGSTOP).
    pub fn pause(&mut self, id: u64) -> anyhow::Result<Instant> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// Thaw node `id` (SIGCONT).
    pub fn resume(&mut self, id: u64) -> anyhow::Result<Instant> {
        self.signal(id, Signal::SIGCONT)
    }

    /// `ip link set eth0 down` in node `id`'s namespace.
    pub fn link_down(&mut self, id: u64) -> anyhow::Result<Instant> {
        let at = Instant::now();
        cmd::ip(&["-n", &self.node(id).ns, "link", "set", "eth0", "down"])?;
        self.faults.links_down.insert(id);
        Ok(at)
    }

    /// `ip link set eth0 up` in node `id`'s namespace.
    pub fn link_up(&mut self, id: u64) -> anyhow::Result<Instant> {
        let at = Instant::now();
        cmd::ip(&["-n", &self.node(id).ns, "link", "set", "eth0", "up"])?;
        self.faults.links_down.remove(&id);
        Ok(at)
    }

    fn nft_in(&mut self, ns: &str, rules: &str) -> anyhow::Result<()> {
        let script = format!(
            "add table {TABLE}; \
             add chain {TABLE} input {{ type filter hook input priority -10; policy accept; }}; \
             add chain {TABLE} output {{ type filter hook output priority -10; policy accept; }}; \
             {rules}"
        );
        self.faults.nft.insert(ns.to_string());
        cmd::nft(ns, &script).with_context(|| format!("nftables in {ns}"))?;
        Ok(())
    }

    /// One-way cut: IP packets from any of `from` to any of `to` are dropped
    /// (at the input of each `to` namespace, so packets to the VIP are cut too).
    /// Returns the instant the last rule was in place (the cut is complete).
    pub fn block(&mut self, from: &[Endpoint], to: &[Endpoint]) -> anyhow::Result<Instant> {
        let sources = from
            .iter()
            .map(|e| self.ep_ip(*e).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for t in to {
            let ns = self.ep_ns(*t);
            self.nft_in(
                &ns,
                &format!("add rule {TABLE} input ip saddr {{ {sources} }} drop"),
            )?;
        }
        Ok(Instant::now())
    }

    /// Symmetric partition between the sets `a` and `b`.
    pub fn partition(&mut self, a: &[Endpoint], b: &[Endpoint]) -> anyhow::Result<Instant> {
        let at = self.block(a, b)?;
        self.block(b, a)?;
        Ok(at)
    }

    /// Random loss of `percent` % of the IP packets node `id` sends, with
    /// nftables (`numgen random`): the fallback when tc netem is missing.
    pub fn nft_loss(&mut self, id: u64, percent: u32) -> anyhow::Result<Instant> {
        let at = Instant::now();
        let ns = self.node(id).ns.clone();
        self.nft_in(
            &ns,
            &format!("add rule {TABLE} output numgen random mod 100 < {percent} drop"),
        )?;
        Ok(at)
    }

    /// Remove every nftables rule the harness added.
    pub fn heal_nft(&mut self) -> anyhow::Result<Instant> {
        let at = Instant::now();
        let mut first_err = None;
        for ns in std::mem::take(&mut self.faults.nft) {
            if let Err(e) = cmd::nft(&ns, &format!("delete table {TABLE}")) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(at), Err)
    }

    /// `tc qdisc add dev eth0 root netem <args>` on node `id`, e.g.
    /// `["loss", "5%", "delay", "100ms", "50ms"]`.
    pub fn netem(&mut self, id: u64, args: &[&str]) -> anyhow::Result<Instant> {
        let at = Instant::now();
        let ns = self.node(id).ns.clone();
        let mut full = vec!["qdisc", "add", "dev", "eth0", "root", "netem"];
        full.extend_from_slice(args);
        cmd::in_ns(&ns, "tc", &full)?;
        self.faults.netem.insert(ns);
        Ok(at)
    }

    /// Remove every netem qdisc the harness added.
    pub fn heal_netem(&mut self) -> anyhow::Result<Instant> {
        let at = Instant::now();
        let mut first_err = None;
        for ns in std::mem::take(&mut self.faults.netem) {
            if let Err(e) = cmd::in_ns(&ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(at), Err)
    }

    /// Undo every fault in force: rules, qdiscs, links, frozen processes.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_nft()?;
        self.heal_netem()?;
        for id in std::mem::take(&mut self.faults.links_down) {
            cmd::ip(&["-n", &self.node(id).ns, "link", "set", "eth0", "up"])?;
        }
        let paused: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.is_running() && n.is_paused())
            .map(|n| n.id)
            .collect();
        for id in paused {
            self.resume(id)?;
        }
        Ok(())
    }
}
