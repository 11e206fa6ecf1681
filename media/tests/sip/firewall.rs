//! The nftables ban set for real, inside a network namespace this test creates
//! (and deletes, also on failure): elements appear with their timeout, lapse by
//! themselves, and are removed when the ban is lifted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_media::error::FirewallError;
use tandem_media::firewall::{self, NftConfig};

/// A network namespace, deleted on drop (its nft tables go with it).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn netns() -> Option<Netns> {
    let name = format!("tandem-ban-{}", std::process::id());
    let out = Command::new("ip").args(["netns", "add", &name]).output();
    match out {
        Ok(o) if o.status.success() => Some(Netns(name)),
        Ok(o) => {
            eprintln!(
                "skipped: cannot create a network namespace ({}); run as root",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("skipped: `ip` not available ({e}); install iproute2");
            None
        }
    }
}

fn ips(list: &str) -> Vec<IpAddr> {
    // `nft list set` prints `elements = { 198.18.0.5 timeout 10s expires 9s, ... }`.
    list.split(|c: char| c == '{' || c == '}' || c == ',' || c.is_whitespace())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[tokio::test]
async fn bans_appear_in_the_nft_set_and_leave_it_on_expiry_or_unban() {
    let Some(ns) = netns() else { return };
    let cfg = NftConfig {
        command: ["ip", "netns", "exec", &ns.0, "nft"]
            .map(String::from)
            .to_vec(),
        table: "tandem".into(),
        port: 5060,
    };
    let now = chrono::Utc::now().timestamp();
    let short: IpAddr = "198.18.0.5".parse().unwrap();
    let long: IpAddr = "198.18.0.6".parse().unwrap();
    let v6: IpAddr = "2001:db8::6".parse().unwrap();
    let mut bans = BTreeMap::from([(short, now + 2), (long, now + 600), (v6, now + 600)]);
    match firewall::apply(&cfg, &bans, now).await {
        Ok(()) => {}
        Err(e @ (FirewallError::NotInstalled { .. } | FirewallError::NotPermitted { .. })) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    }
    let list = |set: &'static str| {
        let cfg = cfg.clone();
        async move {
            ips(
                &firewall::run(&cfg, &["list", "set", "inet", "tandem", set], None)
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(list("sip_ban").await, vec![short, long]);
    assert_eq!(list("sip_ban6").await, vec![v6]);
    // Applied again (as every node does periodically): one pair of rules, same set.
    firewall::apply(&cfg, &bans, now).await.unwrap();
    let chain = firewall::run(
        &cfg,
        &["list", "chain", "inet", "tandem", "sip_ban_input"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(chain.matches(" drop").count(), 2, "{chain}");
    assert!(chain.contains("th dport 5060 drop"), "{chain}");
    // The kernel drops the short ban when its timeout runs out.
    let t0 = Instant::now();
    while list("sip_ban").await.contains(&short) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "2 s ban still listed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(list("sip_ban").await, vec![long]);
    // Lifting a ban (its key deleted) removes the element at the next apply.
    bans.remove(&short);
    bans.remove(&long);
    firewall::apply(&cfg, &bans, chrono::Utc::now().timestamp())
        .await
        .unwrap();
    assert!(list("sip_ban").await.is_empty());
    assert_eq!(list("sip_ban6").await, vec![v6]);
}
