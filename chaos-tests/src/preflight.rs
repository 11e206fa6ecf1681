//! What this host can do: root, `ip netns`, nftables, tc netem.
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
    };
    let _ = registry::kill_and_delete_ns(&ns);
    drop(owner);
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
