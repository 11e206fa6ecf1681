//! `tandem-iso vip-release`: the stop step of `tandem.service` (ExecStopPost).
//! Removes the node's VIP from every interface that still holds it, so a stopped
//! or crashed node never answers for the service address.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use crate::error::{io, Error, Result};
use crate::stage::say;

/// `vip.address` of a node config, if any.
pub fn vip_of_config(text: &str) -> std::result::Result<Option<IpAddr>, String> {
    let v: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    match v.get("vip").and_then(|s| s.get("address")) {
        None => Ok(None),
        Some(a) => {
            let s = a.as_str().ok_or("vip.address is not a string")?;
            s.parse()
                .map(Some)
                .map_err(|_| format!("vip.address `{s}` is not an IP address"))
        }
    }
}

/// Interfaces and prefixes holding `vip`, from `ip -o addr show` output.
pub fn holders(ip_o_addr: &str, vip: IpAddr) -> Vec<(String, u8)> {
    ip_o_addr
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "2: eth0    inet 10.0.0.100/24 brd ..."
            let iface = f
                .get(1)?
                .trim_end_matches(':')
                .split('@')
                .next()?
                .to_string();
            let (addr, prefix) = f.get(3)?.split_once('/')?;
            (addr.parse::<IpAddr>().ok()? == vip).then(|| Some((iface, prefix.parse().ok()?)))?
        })
        .collect()
}

/// Removes the VIP named in `config` from every interface.
pub fn release(config: &Path, dry_run: bool) -> Result<()> {
    let text =
        std::fs::read_to_string(config).map_err(io(format!("reading {}", config.display())))?;
    let vip = vip_of_config(&text).map_err(|m| Error::Stage {
        stage: "vip-release".into(),
        message: format!("{}: {m}", config.display()),
    })?;
    let Some(vip) = vip else {
        say("vip-release: no vip.address configured; nothing to do");
        return Ok(());
    };
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .map_err(io("running ip -o addr show"))?;
    let held = holders(&String::from_utf8_lossy(&out.stdout), vip);
    if held.is_empty() {
        say(&format!("vip-release: {vip} is not on any interface"));
    }
    for (iface, prefix) in held {
        say(&format!(
            "vip-release: ip addr del {vip}/{prefix} dev {iface}{}",
            if dry_run { " (dry run)" } else { "" }
        ));
        if !dry_run {
            crate::stage::run_in(
                "vip-release",
                Command::new("ip").args(["addr", "del", &format!("{vip}/{prefix}"), "dev", &iface]),
                crate::stage::Echo::None,
                None,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vip_on_interfaces() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever\n\
                   2: eth0    inet 10.0.0.100/24 scope global secondary eth0\\       valid_lft 3sec\n\
                   3: vlan7@eth0    inet 10.0.0.100/32 scope global vlan7\n\
                   2: eth0    inet6 fe80::1/64 scope link\n";
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        assert_eq!(
            holders(out, vip),
            vec![("eth0".to_string(), 24), ("vlan7".to_string(), 32)]
        );
        assert!(holders(out, "10.0.0.99".parse().unwrap()).is_empty());
    }

    #[test]
    fn reads_vip_from_config() {
        assert_eq!(
            vip_of_config("[vip]\naddress = \"10.0.0.100\"\n").unwrap(),
            Some("10.0.0.100".parse().unwrap())
        );
        assert_eq!(vip_of_config("[node]\nid = 1\n").unwrap(), None);
        assert!(vip_of_config("[vip]\naddress = \"x\"\n").is_err());
    }
}
