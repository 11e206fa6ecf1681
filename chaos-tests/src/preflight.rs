//! What this host can do: root, `ip netns`, nftables, tc netem, NFQUEUE.
//!
//! Scenarios state what they need; when something is missing they print
//! `skipped: <why>` and pass, so the suite runs everywhere and means something
//! where it can (CI installs the tools with `chaos-tests/setup.sh`).

use std::sync::OnceLock;

use crate::{cmd, registry};

/// Capabilities of the host, probed once per process.
#[derive(Debug, Clone)]
pub struct Host {
    /// Why network namespaces cannot be used, if they cannot.
    pub netns: Result<(), String>,
    /// Why nftables rules cannot be used in a namespace, if they cannot.
    pub nft: Result<(), String>,
    /// Why `tc qdisc … netem` cannot be used, if it cannot.
    pub netem: Result<(), String>,
    /// Why the NFQUEUE impairer cannot be used (iptables-legacy `-j NFQUEUE`
    /// and nfnetlink_queue in a namespace), if it cannot.
    pub nfqueue: Result<(), String>,
}

/// How the loss + delay fault (netem) is made on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossDelay {
    /// `tc qdisc … netem`.
    Netem,
    /// The userspace impairer (`chaos-tests impair`) behind an NFQUEUE rule.
    Nfqueue,
    /// Neither: loss only, with nftables, and no delay.
    Degraded,
}

impl LossDelay {
    pub fn name(self) -> &'static str {
        match self {
            LossDelay::Netem => "netem",
            LossDelay::Nfqueue => "nfqueue",
            LossDelay::Degraded => "degraded",
        }
    }
}

/// What a scenario needs beyond namespaces.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub nft: bool,
    pub netem: bool,
}

impl Host {
    /// Probe once (creates and deletes one namespace `<prefix>pr`).
    pub fn get() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(probe)
    }

    /// How loss + delay is made here: netem, else NFQUEUE, else degraded.
    /// `CHAOS_IMPAIRMENT=nfqueue` or `=degraded` picks a lesser one that
    /// works (to exercise the impairer on a kernel with netem, or the
    /// degraded path anywhere).
    pub fn loss_delay(&self) -> LossDelay {
        match std::env::var("CHAOS_IMPAIRMENT").as_deref() {
            Ok("degraded") => return LossDelay::Degraded,
            Ok("nfqueue") if self.nfqueue.is_ok() => return LossDelay::Nfqueue,
            _ => {}
        }
        if self.netem.is_ok() {
            LossDelay::Netem
        } else if self.nfqueue.is_ok() {
            LossDelay::Nfqueue
        } else {
            LossDelay::Degraded
        }
    }

    /// Why a scenario with `needs` must be skipped here, if it must.
    pub fn skip_reason(&self, needs: Needs) -> Option<String> {
        if let Err(e) = &self.netns {
            return Some(e.clone());
        }
        if needs.nft {
            if let Err(e) = &self.nft {
                return Some(e.clone());
            }
        }
        if needs.netem {
            if let Err(e) = &self.netem {
                return Some(e.clone());
            }
        }
        None
    }
}

fn probe() -> Host {
    let no = |why: &str| Host {
        netns: Err(why.to_string()),
        nft: Err(why.to_string()),
        netem: Err(why.to_string()),
        nfqueue: Err(why.to_string()),
    };
    if !nix::unistd::geteuid().is_root() {
        return no("needs root (network namespaces, veth, nftables); run as root or in CI");
    }
    if !cmd::on_path("ip") {
        return no("`ip` (iproute2) not found; run chaos-tests/setup.sh");
    }
    registry::remove_leftovers_once();
    let owner = match registry::Owner::claim() {
        Ok(o) => o,
        Err(e) => return no(&format!("cannot write an owner file: {e:#}")),
    };
    let ns = format!("{}pr", owner.prefix);
    if let Err(e) = cmd::ip(&["netns", "add", &ns]) {
        return no(&format!("`ip netns add` does not work here: {e:#}"));
    }
    let host = Host {
        netns: Ok(()),
        nft: probe_nft(&ns),
        netem: probe_netem(&ns),
        nfqueue: probe_nfqueue(&ns),
    };
    let _ = registry::kill_and_delete_ns(&ns);
    drop(owner);
    let why = |r: &Result<(), String>| match r {
        Ok(()) => "yes".to_string(),
        Err(e) => format!("no: {e}"),
    };
    println!(
        "chaos: host: nft {}; tc netem {}; NFQUEUE {}; loss + delay made with: {}",
        why(&host.nft),
        why(&host.netem),
        why(&host.nfqueue),
        host.loss_delay().name()
    );
    host
}

fn probe_nft(ns: &str) -> Result<(), String> {
    if !cmd::on_path("nft") {
        return Err("`nft` (nftables) not found; run chaos-tests/setup.sh".into());
    }
    cmd::nft(
        ns,
        "add table inet tdmprobe; add chain inet tdmprobe input { type filter hook input priority 0; policy accept; }",
    )
    .map(drop)
    .map_err(|e| format!("nftables does not work in a namespace: {e:#}"))
}

fn probe_netem(ns: &str) -> Result<(), String> {
    if !cmd::on_path("tc") {
        return Err("`tc` (iproute2) not found; run chaos-tests/setup.sh".into());
    }
    cmd::ip(&[
        "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ])
    .and_then(|_| {
        cmd::in_ns(
            ns,
            "tc",
            &["qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms"],
        )
    })
    .map(drop)
    .map_err(|e| {
        format!("tc netem is not available (kernel without sch_netem, CONFIG_NET_SCH_NETEM): {e:#}")
    })
}

/// iptables-legacy accepts an NFQUEUE rule in the namespace, and a thread in
/// it can bind a queue (nfnetlink_queue). nftables' `queue` is not used: it
/// needs CONFIG_NFT_QUEUE, which kernels without netem often lack too.
fn probe_nfqueue(ns: &str) -> Result<(), String> {
    if !cmd::on_path("iptables-legacy") {
        return Err(
            "`iptables-legacy` (Debian package iptables) not found; run chaos-tests/setup.sh"
                .into(),
        );
    }
    cmd::in_ns(
        ns,
        "iptables-legacy",
        &[
            "-w",
            "-A",
            "OUTPUT",
            "-o",
            "lo",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "0",
            "--queue-bypass",
        ],
    )
    .map_err(|e| {
        format!(
            "iptables-legacy -j NFQUEUE does not work (CONFIG_NETFILTER_XT_TARGET_NFQUEUE?): {e:#}"
        )
    })?;
    let name = ns.to_string();
    std::thread::spawn(move || -> Result<(), String> {
        crate::netns::enter(&name).map_err(|e| format!("{e:#}"))?;
        let mut q =
            nfq::Queue::open().map_err(|e| format!("opening a netfilter queue socket: {e}"))?;
        q.bind(0)
            .map_err(|e| format!("binding NFQUEUE 0 (CONFIG_NETFILTER_NETLINK_QUEUE?): {e}"))?;
        let _ = q.unbind(0);
        Ok(())
    })
    .join()
    .map_err(|_| "the NFQUEUE probe thread panicked".to_string())?
}
