//! Files the installer writes into the target system, rendered from an
//! [`Answer`]. Pure functions: text in, text out.

use std::fmt::Write as _;

use crate::answer::{Addressing, Allow, Answer, Bootstrap, Net};

/// Where the installed node keeps its data.
pub const DATA_DIR: &str = "/var/lib/tandem";
/// The node's TLS material (cluster CA, node certificate and key), written by
/// `tandem init`/`tandem join` on first boot.
pub const TLS_DIR: &str = "/var/lib/tandem/tls";
/// The cluster CA certificate clients of the HTTPS API trust.
pub const API_CA_FILE: &str = "/var/lib/tandem/tls/ca.pem";
/// Node config path on the installed system.
pub const CONFIG_PATH: &str = "/etc/tandem/tandem.toml";
/// The validated answer, kept for first boot (mode 0600).
pub const INSTALL_STATE: &str = "/etc/tandem/install.json";
/// First-boot done marker.
pub const FIRSTBOOT_DONE: &str = "/var/lib/tandem/.firstboot-done";
/// Settings-applied marker (smtp/alarms on the init node).
pub const SETTINGS_DONE: &str = "/var/lib/tandem/.settings-done";

fn toml_str(s: &str) -> String {
    // TOML basic strings share JSON's escapes for everything we write.
    serde_json::to_string(s).expect("string")
}

/// `/etc/tandem/tandem.toml` for the installed node.
pub fn node_config(a: &Answer) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# tandem node configuration, written by the tandem installer from the answer file.\n\
         # Every key is documented in /usr/share/tandem/tandem.toml.example (docs/configuration.md).\n"
    );
    let _ = writeln!(
        s,
        "[node]\nid = {}\nname = {}\nrole = {}\ndata_dir = {}\n",
        a.node_id,
        toml_str(&a.hostname),
        toml_str(a.role.as_str()),
        toml_str(DATA_DIR)
    );
    let _ = writeln!(
        s,
        "[cluster]\nname = {}\nlisten = {}",
        toml_str(&a.cluster_name),
        toml_str(&a.listen.to_string())
    );
    if let Some(adv) = a.advertise {
        let _ = writeln!(s, "advertise = {}", toml_str(&adv.to_string()));
    }
    for p in &a.peers {
        let _ = write!(
            s,
            "\n[[cluster.peers]]\nid = {}\naddr = {}\n",
            p.id,
            toml_str(&p.addr.to_string())
        );
        if let Some(api) = p.api {
            let _ = writeln!(s, "api = {}", toml_str(&api.to_string()));
        }
    }
    s.push('\n');
    if let Some((ip, prefix)) = a.vip {
        let _ = writeln!(
            s,
            "[vip]\naddress = {}\nprefix = {}\n",
            toml_str(&ip.to_string()),
            prefix
        );
    }
    let _ = writeln!(
        s,
        "[api]\nlisten = {}\ntoken_file = {}",
        toml_str(&a.api_listen.to_string()),
        toml_str(&format!("{DATA_DIR}/admin.token"))
    );
    let _ = writeln!(
        s,
        "# HTTPS with the certificate the cluster CA issued to this node at init/join\n\
         # (it names the node's addresses, host name and VIP). Clients trust\n\
         # {API_CA_FILE}; replace both lines to serve your own certificate.\n\
         tls_cert = {}\ntls_key = {}",
        toml_str(&format!("{TLS_DIR}/node.pem")),
        toml_str(&format!("{TLS_DIR}/node.key"))
    );
    s
}

/// The SIP port the appliance opens (the node's `[sip] listen` default).
const SIP_PORT: u16 = 5060;
/// The RTP range the appliance opens (the node's `[sip] rtp_ports` default).
const RTP_PORTS: &str = "10000-20000";

/// `/etc/nftables.conf` for the installed node: input policy drop; the API and
/// peer ports only from their allow-lists (`[firewall]`), SIP and RTP from any
/// source. The allow-lists are named sets, so an operator can change them live
/// (`nft add element inet tandem api_allow { 198.18.1.0/24 }`) and for good (this
/// file). The SIP ban sets of the node (`sip_ban`, `sip_ban6`) go into the same
/// table at run time.
pub fn nftables(a: &Answer) -> String {
    let mut sets = String::new();
    let mut rules = String::new();
    for (name, allow, port, what, key) in [
        (
            "api_allow",
            &a.firewall.api,
            a.api_listen.port(),
            "tandem admin API",
            "firewall.api_allow",
        ),
        (
            "peer_allow",
            &a.firewall.peer,
            a.listen.port(),
            "tandem peer (raft) transport",
            "firewall.peer_allow",
        ),
    ] {
        match allow {
            Allow::Any => {
                let _ = writeln!(
                    rules,
                    "\t\ttcp dport {port} accept comment \"{what}, any source ({key})\""
                );
            }
            Allow::Only(nets) => {
                let v4: Vec<&Net> = nets.iter().filter(|n| n.addr.is_ipv4()).collect();
                let v6: Vec<&Net> = nets.iter().filter(|n| n.addr.is_ipv6()).collect();
                for (set, family, ty, list) in [
                    (name.to_string(), "ip", "ipv4_addr", v4),
                    (format!("{name}6"), "ip6", "ipv6_addr", v6),
                ] {
                    let _ = write!(sets, "\tset {set} {{\n\t\ttype {ty}; flags interval;\n");
                    if !list.is_empty() {
                        let elems: Vec<String> = list.iter().map(|n| n.to_string()).collect();
                        let _ = writeln!(sets, "\t\telements = {{ {} }}", elems.join(", "));
                    }
                    sets.push_str("\t}\n");
                    let _ = writeln!(
                        rules,
                        "\t\t{family} saddr @{set} tcp dport {port} accept comment \"{what} ({key})\""
                    );
                }
            }
        }
    }
    format!(
        "#!/usr/sbin/nft -f\n\
         # tandem appliance firewall, written by the tandem installer from the answer\n\
         # file ([firewall] api_allow / peer_allow; docs/security.md). Input policy drop;\n\
         # the API and peer ports only from their allow-lists, SIP and RTP from anywhere.\n\
         flush ruleset\n\
         \n\
         table inet tandem {{\n\
         {sets}\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tiifname \"lo\" accept\n\
         \t\t# ICMP (1) and ICMPv6 (58, neighbour discovery); numbers because the\n\
         \t\t# appliance has no /etc/protocols.\n\
         \t\tmeta l4proto 1 accept\n\
         \t\tmeta l4proto 58 accept\n\
         {rules}\
         \t\tudp dport {SIP_PORT} accept comment \"SIP\"\n\
         \t\ttcp dport {SIP_PORT} accept comment \"SIP\"\n\
         \t\tudp dport {RTP_PORTS} accept comment \"RTP media\"\n\
         \t\tudp sport 67 udp dport 68 accept comment \"DHCP replies\"\n\
         \t\tudp sport 123 accept comment \"NTP replies (chrony)\"\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t}}\n\
         }}\n"
    )
}

/// One systemd-networkd `.network` file per interface: (file name, content).
pub fn networkd_files(a: &Answer) -> Vec<(String, String)> {
    a.interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let mut s = format!(
                "# Written by the tandem installer (network.interface[{i}]).\n[Match]\nMACAddress={}\n\n[Network]\n",
                iface.mac
            );
            match &iface.addressing {
                Addressing::Dhcp => s.push_str("DHCP=ipv4\n"),
                Addressing::Static { address, prefix, gateway, dns } => {
                    let _ = writeln!(s, "Address={address}/{prefix}");
                    if let Some(g) = gateway {
                        let _ = writeln!(s, "Gateway={g}");
                    }
                    for d in dns {
                        let _ = writeln!(s, "DNS={d}");
                    }
                }
            }
            (format!("10-tandem-{i}.network"), s)
        })
        .collect()
}

/// `/etc/fstab` for the installed system.
pub fn fstab(root_uuid: &str, esp_uuid: &str) -> String {
    format!(
        "# Written by the tandem installer.\n\
         UUID={root_uuid} / ext4 errors=remount-ro 0 1\n\
         UUID={esp_uuid} /boot/efi vfat umask=0077,nofail 0 2\n"
    )
}

/// `/etc/hosts`.
pub fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
}

/// Kernel command line of the installed system (console on screen and serial).
pub const KERNEL_CONSOLE: &str = "console=tty0 console=ttyS0,115200n8";

/// `grub.cfg` of the installed disk, shared by the BIOS and UEFI GRUB.
pub fn installed_grub_cfg(root_uuid: &str, kernel: &str, initrd: &str) -> String {
    format!(
        "# Written by the tandem installer.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=2\n\
         insmod part_gpt\ninsmod ext2\n\
         search --no-floppy --fs-uuid --set=root {root_uuid}\n\
         menuentry \"tandem\" {{\n\
         \tlinux /boot/{kernel} root=UUID={root_uuid} ro {KERNEL_CONSOLE}\n\
         \tinitrd /boot/{initrd}\n\
         }}\n"
    )
}

/// The `tandem config set` calls first boot makes on the init node: (key, JSON value).
pub fn cluster_settings(a: &Answer) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(s) = &a.smtp {
        v.push((
            "smtp.host".to_string(),
            serde_json::Value::from(s.host.clone()).to_string(),
        ));
        if let Some(p) = s.port {
            v.push(("smtp.port".into(), p.to_string()));
        }
        for (k, val) in [
            ("smtp.security", &s.security),
            ("smtp.username", &s.username),
            ("smtp.password", &s.password),
            ("smtp.from", &s.from),
        ] {
            if let Some(val) = val {
                v.push((
                    k.to_string(),
                    serde_json::Value::from(val.clone()).to_string(),
                ));
            }
        }
    }
    if !a.alarm_recipients.is_empty() {
        v.push((
            "alarm.recipients.default".into(),
            serde_json::to_string(&a.alarm_recipients).expect("json"),
        ));
        v.push(("alarm.route.default".into(), "[\"default\"]".into()));
    }
    v
}

/// What first boot does, in words (shown by the installer's summary).
pub fn bootstrap_words(a: &Answer) -> String {
    match &a.bootstrap {
        Bootstrap::Init => "create a new cluster (tandem init)".to_string(),
        Bootstrap::Join { address, .. } => {
            format!("join the cluster through {address} (tandem join)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::parse;

    const A: &str = r#"
[disk]
path = "/dev/vda"
[system]
hostname = "pbx-b"
[[network.interface]]
mac = "52:54:00:00:00:01"
dhcp = true
[[network.interface]]
mac = "52:54:00:00:00:02"
address = "198.18.0.2/24"
gateway = "198.18.0.254"
dns = ["198.18.0.53"]
[node]
id = 2
[cluster]
mode = "join"
join_token = "tok"
[[cluster.peers]]
id = 1
addr = "198.18.0.1:7000"
api = "198.18.0.1:8080"
[[cluster.peers]]
id = 2
addr = "198.18.0.2:7000"
"#;

    #[test]
    fn node_config_carries_answer() {
        let a = parse(A).unwrap();
        let c = node_config(&a);
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["node"]["id"].as_integer(), Some(2));
        assert_eq!(v["node"]["name"].as_str(), Some("pbx-b"));
        assert_eq!(v["cluster"]["listen"].as_str(), Some("198.18.0.2:7000"));
        assert_eq!(
            v["cluster"]["peers"][0]["api"].as_str(),
            Some("198.18.0.1:8080")
        );
        assert_eq!(v["api"]["listen"].as_str(), Some("0.0.0.0:8080"));
        // HTTPS by default, with the certificate the cluster CA issues at init/join.
        assert_eq!(
            v["api"]["tls_cert"].as_str(),
            Some("/var/lib/tandem/tls/node.pem")
        );
        assert_eq!(
            v["api"]["tls_key"].as_str(),
            Some("/var/lib/tandem/tls/node.key")
        );
        assert!(v.get("vip").is_none());
    }

    #[test]
    fn networkd_static_and_dhcp() {
        let a = parse(A).unwrap();
        let f = networkd_files(&a);
        assert_eq!(f.len(), 2);
        assert!(f[0].1.contains("MACAddress=52:54:00:00:00:01") && f[0].1.contains("DHCP=ipv4"));
        assert!(
            f[1].1.contains("Address=198.18.0.2/24")
                && f[1].1.contains("Gateway=198.18.0.254")
                && f[1].1.contains("DNS=198.18.0.53")
        );
    }

    #[test]
    fn grub_cfg_has_serial_console_and_root() {
        let g = installed_grub_cfg("abcd", "vmlinuz-6.1.0-1-amd64", "initrd.img-6.1.0-1-amd64");
        assert!(g.contains("console=ttyS0,115200n8"));
        assert!(g.contains("root=UUID=abcd"));
        assert!(g.contains("serial --unit=0 --speed=115200"));
    }
}
