//! Banned SIP sources in nftables: two sets with per-element timeouts and a
//! chain that drops their packets to the SIP port.
//!
//! ```text
//!  table inet tandem
//!    set sip_ban  { type ipv4_addr; flags timeout; }   ← 198.18.0.5 timeout 600s
//!    set sip_ban6 { type ipv6_addr; flags timeout; }
//!    chain sip_ban_input (hook input, priority -10)
//!      ip  saddr @sip_ban  meta l4proto {6, 17} th dport 5060 drop
//!      ip6 saddr @sip_ban6 meta l4proto {6, 17} th dport 5060 drop
//! ```
//!
//! [`script`] is pure: the whole desired state as one nft transaction (tables,
//! sets and chain created when missing, the chain's rules and the sets' elements
//! replaced), so applying it twice changes nothing and a reload of the appliance's
//! `nftables.conf` (which flushes the ruleset) is repaired by the next apply. The
//! kernel removes an element when its timeout runs out; [`apply`] runs the script.

use crate::error::FirewallError;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Where the ban set lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// The command that runs nft, program first (`["nft"]`; tests run it inside a
    /// network namespace with `["ip", "netns", "exec", <ns>, "nft"]`).
    pub command: Vec<String>,
    /// The table (family inet); the appliance's firewall uses `tandem`.
    pub table: String,
    /// The SIP port whose packets from banned sources are dropped.
    pub port: u16,
}

impl NftConfig {
    /// `nft` itself, table `tandem`, SIP on `port`.
    pub fn new(port: u16) -> NftConfig {
        NftConfig {
            command: vec!["nft".into()],
            table: "tandem".into(),
            port,
        }
    }
}

/// Name of the IPv4 ban set.
pub const SET_V4: &str = "sip_ban";
/// Name of the IPv6 ban set.
pub const SET_V6: &str = "sip_ban6";
/// Name of the chain that drops banned sources.
pub const CHAIN: &str = "sip_ban_input";

/// The nft transaction that makes the ban sets hold exactly `bans` (address → Unix
/// time the ban lapses), each element timing out at its lapse time.
pub fn script(cfg: &NftConfig, bans: &BTreeMap<IpAddr, i64>, now_unix: i64) -> String {
    let t = &cfg.table;
    let port = cfg.port;
    let mut s = format!(
        "add table inet {t}\n\
         add set inet {t} {SET_V4} {{ type ipv4_addr; flags timeout; }}\n\
         add set inet {t} {SET_V6} {{ type ipv6_addr; flags timeout; }}\n\
         add chain inet {t} {CHAIN} {{ type filter hook input priority -10; policy accept; }}\n\
         flush chain inet {t} {CHAIN}\n\
         add rule inet {t} {CHAIN} ip saddr @{SET_V4} meta l4proto {{ 6, 17 }} th dport {port} drop\n\
         add rule inet {t} {CHAIN} ip6 saddr @{SET_V6} meta l4proto {{ 6, 17 }} th dport {port} drop\n\
         flush set inet {t} {SET_V4}\n\
         flush set inet {t} {SET_V6}\n"
    );
    let element = |ip: &IpAddr, until: &i64| format!("{ip} timeout {}s", (until - now_unix).max(1));
    let v4: Vec<String> = bans
        .iter()
        .filter(|(ip, until)| ip.is_ipv4() && **until > now_unix)
        .map(|(ip, until)| element(ip, until))
        .collect();
    let v6: Vec<String> = bans
        .iter()
        .filter(|(ip, until)| ip.is_ipv6() && **until > now_unix)
        .map(|(ip, until)| element(ip, until))
        .collect();
    for (set, elements) in [(SET_V4, v4), (SET_V6, v6)] {
        if !elements.is_empty() {
            let _ = writeln!(
                s,
                "add element inet {t} {set} {{ {} }}",
                elements.join(", ")
            );
        }
    }
    s
}

/// Run [`script`] through nft (one atomic transaction).
pub async fn apply(
    cfg: &NftConfig,
    bans: &BTreeMap<IpAddr, i64>,
    now_unix: i64,
) -> Result<(), FirewallError> {
    let text = script(cfg, bans, now_unix);
    run(cfg, &["-f", "-"], Some(&text)).await.map(|_| ())
}

/// Run nft with `args` (and `stdin`); its stdout.
pub async fn run(
    cfg: &NftConfig,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, FirewallError> {
    use tokio::io::AsyncWriteExt;
    let program = cfg.command.join(" ");
    let Some((first, rest)) = cfg.command.split_first() else {
        return Err(FirewallError::NotInstalled {
            program,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "empty command"),
        });
    };
    let mut child = tokio::process::Command::new(first)
        .args(rest)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| FirewallError::NotInstalled {
            program: program.clone(),
            source,
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(text) = stdin {
            let _ = pipe.write_all(text.as_bytes()).await;
        }
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| FirewallError::Failed {
            status: "timeout".into(),
            stderr: format!("{program} did not finish within 10 s"),
        })?
        .map_err(|source| FirewallError::NotInstalled {
            program: program.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return Err(FirewallError::NotPermitted { stderr });
    }
    Err(FirewallError::Failed {
        status: out.status.to_string(),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_rules_and_elements_with_remaining_timeouts() {
        let cfg = NftConfig::new(5060);
        let bans: BTreeMap<IpAddr, i64> = [
            ("198.18.0.5".parse().unwrap(), 1600),
            ("198.18.0.6".parse().unwrap(), 1000),
            ("2001:db8::7".parse().unwrap(), 1010),
        ]
        .into_iter()
        .collect();
        let s = script(&cfg, &bans, 1000);
        assert!(s.contains("flush chain inet tandem sip_ban_input\n"), "{s}");
        assert!(s.contains("th dport 5060 drop"), "{s}");
        assert!(
            s.contains("add element inet tandem sip_ban { 198.18.0.5 timeout 600s }"),
            "lapsed 198.18.0.6 left out: {s}"
        );
        assert!(
            s.contains("add element inet tandem sip_ban6 { 2001:db8::7 timeout 10s }"),
            "{s}"
        );
        // No bans: the sets are emptied, nothing added.
        let s = script(&cfg, &BTreeMap::new(), 1000);
        assert!(
            s.contains("flush set inet tandem sip_ban\n") && !s.contains("add element"),
            "{s}"
        );
    }
}
