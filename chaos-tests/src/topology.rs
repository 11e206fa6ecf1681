//! The network: one switch namespace holding a bridge, one namespace per node
//! and one client namespace, each joined to the bridge by a veth pair.
//!
//! ```text
//!            ┌──────────── <prefix>sw ─────────────┐
//!            │   br0 ── v1 ── v2 ── v3 … ── vc     │
//!            └─────│─────│─────│───────────│──────┘
//!   <prefix>n1  eth0  n2 eth0 n3 eth0    cl eth0
//!   198.18.0.1       .2       .3         .100        VIP 198.18.0.200
//! ```
//!
//! Interface names are local to their namespace, so every node has an `eth0`
//! (the `[vip] interface` of its config). No namespace has a default route:
//! nothing leaves 198.18.0.0/24. Deleting a namespace deletes its veth end and
//! with it the peer in the switch.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};

use crate::cmd;
use crate::registry::{self, Owner};

/// First three octets of the test subnet (inside 198.18.0.0/15, RFC 2544).
pub const SUBNET: [u8; 3] = [198, 18, 0];
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The service address the master holds.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// Prefix length of the subnet and of the VIP.
pub const PREFIX_LEN: u8 = 24;

/// Address of node `id` (1-based).
pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], id as u8)
}

/// `aa:bb:…` form of a MAC address.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Namespaces, bridge and links of one run. Destroyed on drop.
pub struct Topology {
    /// The claimed prefix (owner file removed last).
    pub owner: Owner,
    pub switch: String,
    pub client: String,
    /// Node namespaces; index `id - 1`.
    pub nodes: Vec<String>,
    /// MAC of each node's eth0; index `id - 1`.
    pub node_macs: Vec<[u8; 6]>,
    pub client_mac: [u8; 6],
    created: Vec<String>,
}

impl Topology {
    /// Build the switch, `n` node namespaces and the client namespace.
    pub fn create(n: usize) -> anyhow::Result<Topology> {
        if n == 0 || n > 99 {
            bail!("topology: 1..=99 nodes, not {n}");
        }
        let owner = Owner::claim()?;
        let p = owner.prefix.clone();
        let mut t = Topology {
            switch: format!("{p}sw"),
            client: format!("{p}cl"),
            nodes: (1..=n).map(|i| format!("{p}n{i}")).collect(),
            node_macs: Vec::new(),
            client_mac: [0; 6],
            created: Vec::new(),
            owner,
        };
        t.build().context("building the namespace topology")?;
        Ok(t)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        cmd::ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        cmd::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// veth `port` in the switch (enslaved to br0) ↔ `eth0` in `ns`, with `addr`.
    fn attach(&self, ns: &str, port: &str, addr: Ipv4Addr, mac_tail: u8) -> anyhow::Result<()> {
        let sw = self.switch.as_str();
        let mac = format!("02:54:00:00:00:{mac_tail:02x}");
        cmd::ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "address", &mac,
            "netns", ns,
        ])?;
        cmd::ip(&["-n", sw, "link", "set", port, "master", "br0"])?;
        cmd::ip(&["-n", sw, "link", "set", port, "up"])?;
        let cidr = format!("{addr}/{PREFIX_LEN}");
        cmd::ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        cmd::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        self.add_ns(&sw)?;
        cmd::ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        cmd::ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, ns) in self.nodes.clone().iter().enumerate() {
            self.add_ns(ns)?;
            let id = i as u64 + 1;
            self.attach(ns, &format!("v{id}"), node_ip(id), id as u8)?;
        }
        let cl = self.client.clone();
        self.add_ns(&cl)?;
        self.attach(&cl, "vc", CLIENT_IP, 100)?;
        self.node_macs = self
            .nodes
            .iter()
            .map(|ns| link_mac(ns, "eth0"))
            .collect::<anyhow::Result<_>>()?;
        self.client_mac = link_mac(&cl, "eth0")?;
        Ok(())
    }

    /// Namespace of node `id` (1-based).
    pub fn node_ns(&self, id: u64) -> &str {
        &self.nodes[id as usize - 1]
    }

    /// Node id whose eth0 has this MAC, if any.
    pub fn node_of_mac(&self, mac: &[u8; 6]) -> Option<u64> {
        self.node_macs
            .iter()
            .position(|m| m == mac)
            .map(|i| i as u64 + 1)
    }

    /// Kill every process left in our namespaces and delete them. Idempotent.
    pub fn destroy(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        // Nodes and client first, the switch last.
        for ns in self.created.drain(..).rev() {
            if let (_, Err(e)) = registry::kill_and_delete_ns(&ns) {
                errors.push(format!("{ns}: {e:#}"));
            }
        }
        errors
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for e in self.destroy() {
            eprintln!("chaos: cleanup: {e}");
        }
    }
}

/// MAC address of `dev` in namespace `ns`.
pub fn link_mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = cmd::ip(&["-n", ns, "-o", "link", "show", "dev", dev])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .and_then(parse_mac)
        .with_context(|| format!("no MAC for {dev} in {ns}: {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = [0x02, 0x54, 0, 0, 0, 0x0a];
        assert_eq!(parse_mac(&fmt_mac(&m)), Some(m));
        assert_eq!(parse_mac("02:54:00:00:00"), None);
        assert_eq!(parse_mac("02:54:00:00:00:0a:01"), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(node_ip(3).to_string(), "198.18.0.3");
        assert_ne!(VIP, CLIENT_IP);
    }
}
