//! The installer's answer file: TOML schema, parsing and validation.
//!
//! Parsing happens in two steps. [`RawAnswer`] mirrors the TOML text (every key
//! optional, unknown keys rejected by serde); [`validate`] then checks the whole
//! file at once and either returns a typed [`Answer`] or every [`Problem`] found,
//! each naming the dotted key, what is wrong and how to fix it. Nothing here looks
//! at the machine: checks that need the machine (does the disk exist, is the MAC
//! present) are in `install`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Default port of the peer (raft) transport, as in `appliance/tandem.toml`.
pub const RAFT_PORT: u16 = 7000;
/// Default port of the admin API.
pub const API_PORT: u16 = 8080;

/// One thing wrong with an answer file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key the problem is about, e.g. `network.interface[0].address`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.key, self.message, self.fix)
    }
}

/// Every problem of one answer file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

// ---------------------------------------------------------------------------
// Raw TOML shape
// ---------------------------------------------------------------------------

/// The answer file as written: every section and key optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnswer {
    /// `[disk]`: the target disk.
    pub disk: Option<RawDisk>,
    /// `[system]`: host name, time zone, what to do when done.
    pub system: Option<RawSystem>,
    /// `[network]`: interfaces chosen by MAC address.
    pub network: Option<RawNetwork>,
    /// `[node]`: node id and role.
    pub node: Option<RawNode>,
    /// `[cluster]`: addresses, peers, init or join.
    pub cluster: Option<RawCluster>,
    /// `[vip]`: the floating service address.
    pub vip: Option<RawVip>,
    /// `[api]`: admin API address and token.
    pub api: Option<RawApi>,
    /// `[smtp]`: mail server for alarm mails.
    pub smtp: Option<RawSmtp>,
    /// `[alarms]`: who receives alarm mails.
    pub alarms: Option<RawAlarms>,
    /// `[firewall]`: which sources may reach the API and peer ports.
    pub firewall: Option<RawFirewall>,
}

/// `[disk]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    /// Device path, e.g. `/dev/sda`.
    pub path: Option<String>,
    /// Filter: smallest acceptable disk size in GB (10^9 bytes).
    pub min_size_gb: Option<u64>,
    /// Filter: largest acceptable disk size in GB.
    pub max_size_gb: Option<u64>,
    /// Filter: substring of the disk model (as `lsblk -o MODEL` shows it).
    pub model: Option<String>,
}

/// `[system]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystem {
    /// Host name (one DNS label).
    pub hostname: Option<String>,
    /// Time zone name from the tz database, e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
    /// `reboot` or `poweroff` after the installation.
    pub finish: Option<String>,
}

/// `[network]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// `[[network.interface]]` tables.
    #[serde(default)]
    pub interface: Vec<RawInterface>,
}

/// One `[[network.interface]]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// MAC address that picks the interface.
    pub mac: Option<String>,
    /// Use DHCP (IPv4) on it.
    pub dhcp: Option<bool>,
    /// Static address with prefix, e.g. `192.0.2.10/24`.
    pub address: Option<String>,
    /// Default gateway (static only).
    pub gateway: Option<String>,
    /// DNS servers (static only).
    pub dns: Option<Vec<String>>,
}

/// `[node]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Node id, at least 1.
    pub id: Option<u64>,
    /// `data` or `witness`.
    pub role: Option<String>,
}

/// `[cluster]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster name.
    pub name: Option<String>,
    /// `init` (create the cluster) or `join` (enroll with it).
    pub mode: Option<String>,
    /// Join token printed by `tandem init` on the first node (mode `join`).
    pub join_token: Option<String>,
    /// Peer address of the node to join through (mode `join`).
    pub join_address: Option<String>,
    /// Peer (raft) listen address of this node, `ip:port`.
    pub listen: Option<String>,
    /// Address the other nodes reach this node at, `ip:port`.
    pub advertise: Option<String>,
    /// `[[cluster.peers]]` tables.
    #[serde(default)]
    pub peers: Vec<RawPeer>,
}

/// One `[[cluster.peers]]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    /// That node's id.
    pub id: Option<u64>,
    /// That node's peer address, `ip:port`.
    pub addr: Option<String>,
    /// That node's admin API address, `ip:port`.
    pub api: Option<String>,
}

/// `[vip]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    /// The floating address (no prefix).
    pub address: Option<String>,
    /// Its prefix length.
    pub prefix: Option<u8>,
}

/// `[api]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Admin API listen address, `ip:port`.
    pub listen: Option<String>,
    /// Admin bearer token to pre-set.
    pub admin_token: Option<String>,
}

/// `[smtp]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Smarthost name or address.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    pub security: Option<String>,
    /// User name for authentication.
    pub username: Option<String>,
    /// Password for authentication.
    pub password: Option<String>,
    /// Sender address.
    pub from: Option<String>,
}

/// `[alarms]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlarms {
    /// Addresses that receive every alarm mail.
    pub recipients: Option<Vec<String>>,
}

/// `[firewall]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    /// Sources allowed to reach the admin API port: networks (`"198.18.0.0/24"`),
    /// hosts (`"198.18.0.7"`, `"fd00::7"`) or `"any"`.
    pub api_allow: Option<Vec<String>>,
    /// Sources allowed to reach the peer (Raft) port, written the same way.
    pub peer_allow: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// Validated shape
// ---------------------------------------------------------------------------

/// A network, host bits cleared: `198.18.0.0/24`, `198.18.0.7/32`, `fd00::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Net {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Net {
    /// The network `addr/prefix` lies in (host bits cleared).
    pub fn containing(addr: IpAddr, prefix: u8) -> Net {
        let addr = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix.min(32)))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        };
        Net { addr, prefix }
    }

    /// One host.
    pub fn host(addr: IpAddr) -> Net {
        Net {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which sources may reach a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allow {
    /// Every source.
    Any,
    /// Only these networks (never empty).
    Only(Vec<Net>),
}

/// Source allow-lists of the API and peer ports (`[firewall]`, or the defaults
/// derived from the static interfaces and peers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    /// Who may reach the admin API port.
    pub api: Allow,
    /// Who may reach the peer port.
    pub peer: Allow,
    /// `firewall.api_allow` was given (false: the default).
    pub api_given: bool,
    /// `firewall.peer_allow` was given (false: the default).
    pub peer_given: bool,
}

impl Default for Firewall {
    /// What an answer saved before `[firewall]` existed meant: open to any source.
    fn default() -> Firewall {
        Firewall {
            api: Allow::Any,
            peer: Allow::Any,
            api_given: true,
            peer_given: true,
        }
    }
}

/// How the target disk is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskChoice {
    /// A device path.
    Path(String),
    /// The single disk that matches every given filter.
    Filter {
        /// Smallest size in bytes.
        min_bytes: Option<u64>,
        /// Largest size in bytes.
        max_bytes: Option<u64>,
        /// Model substring (case-insensitive).
        model: Option<String>,
    },
}

/// What the installer does when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finish {
    /// Reboot into the installed system.
    Reboot,
    /// Power the machine off.
    Poweroff,
}

/// How one interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Addressing {
    /// DHCP (IPv4).
    Dhcp,
    /// Fixed address.
    Static {
        /// Address.
        address: IpAddr,
        /// Prefix length.
        prefix: u8,
        /// Default gateway.
        gateway: Option<IpAddr>,
        /// DNS servers.
        dns: Vec<IpAddr>,
    },
}

/// One network interface, picked by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Lower-case MAC address `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// DHCP or static.
    pub addressing: Addressing,
}

/// Node role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Full data node.
    Data,
    /// Vote-only tie-breaker.
    Witness,
}

impl Role {
    /// The word used in `tandem.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Data => "data",
            Role::Witness => "witness",
        }
    }
}

/// Cluster bootstrap on first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bootstrap {
    /// `tandem init`: this node creates the cluster.
    Init,
    /// `tandem join <address> --token <token>`.
    Join {
        /// Peer address of the node to join through.
        address: SocketAddr,
        /// Join token.
        token: String,
    },
}

/// One cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Node id.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// Admin API address.
    pub api: Option<SocketAddr>,
}

/// SMTP settings applied to the cluster on first boot (as `smtp.*` keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smtp {
    /// Smarthost.
    pub host: String,
    /// Port.
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    pub security: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Sender.
    pub from: Option<String>,
}

/// A validated answer file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Target disk.
    pub disk: DiskChoice,
    /// Host name.
    pub hostname: String,
    /// Time zone.
    pub timezone: String,
    /// Reboot or power off at the end.
    pub finish: Finish,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Node id.
    pub node_id: u64,
    /// Node role.
    pub role: Role,
    /// Cluster name.
    pub cluster_name: String,
    /// Peer listen address.
    pub listen: SocketAddr,
    /// Advertised peer address.
    pub advertise: Option<SocketAddr>,
    /// Members.
    pub peers: Vec<Peer>,
    /// Init or join.
    pub bootstrap: Bootstrap,
    /// VIP address and prefix.
    pub vip: Option<(IpAddr, u8)>,
    /// Admin API listen address.
    pub api_listen: SocketAddr,
    /// Admin token to pre-set.
    pub admin_token: Option<String>,
    /// SMTP settings.
    pub smtp: Option<Smtp>,
    /// Alarm recipients.
    pub alarm_recipients: Vec<String>,
    /// Source allow-lists of the API and peer ports.
    #[serde(default)]
    pub firewall: Firewall,
}

impl Answer {
    /// What the installer should point out although the answer is valid: a port
    /// left open to any source because no allow-list was given and no static
    /// interface tells where the management network is.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (given, allow, key, port) in [
            (
                self.firewall.api_given,
                &self.firewall.api,
                "firewall.api_allow",
                self.api_listen.port(),
            ),
            (
                self.firewall.peer_given,
                &self.firewall.peer,
                "firewall.peer_allow",
                self.listen.port(),
            ),
        ] {
            if !given && *allow == Allow::Any {
                w.push(format!(
                    "{key} is not set and no interface has a static address: port {port}/tcp \
                     is open to any source; set {key} = [\"<management network>/<prefix>\"]"
                ));
            }
        }
        w
    }
}

/// Parses and validates an answer file's text.
pub fn parse(text: &str) -> Result<Answer, Problems> {
    let raw: RawAnswer =
        toml::from_str(text).map_err(|e| Problems(vec![toml_problem(text, &e)]))?;
    validate(&raw)
}

/// Turns a TOML/serde error into a problem naming the key.
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().to_string();
    let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or("?").to_string();
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.to_string())
            .unwrap_or_default();
        let section = line
            .and_then(|l| section_at(text, l))
            .map(|s| format!("{s}."))
            .unwrap_or_default();
        return problem(
            format!("{section}{key}"),
            format!("unknown key{at}"),
            format!("remove it or correct the spelling; allowed here: {expected}"),
        );
    }
    let key = line
        .and_then(|l| key_at(text, l))
        .unwrap_or_else(|| "answer file".to_string());
    problem(
        key,
        format!("{msg}{at}"),
        "write valid TOML with the types documented in docs/install.md",
    )
}

/// The `[section]` header in force at 1-based line `line`.
fn section_at(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|l| {
            let t = l.trim();
            let t = t
                .strip_prefix("[[")
                .and_then(|t| t.strip_suffix("]]"))
                .or_else(|| t.strip_prefix('[').and_then(|t| t.strip_suffix(']')))?;
            Some(t.trim().to_string())
        })
        .last()
}

/// Dotted key written at 1-based line `line` (`section.key`).
fn key_at(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line - 1)?.trim();
    if l.starts_with('[') {
        return section_at(text, line);
    }
    let key = l.split('=').next()?.trim();
    if key.is_empty() {
        return None;
    }
    Some(match section_at(text, line) {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// Checks a raw answer file and builds the typed [`Answer`].
pub fn validate(raw: &RawAnswer) -> Result<Answer, Problems> {
    let mut p = Vec::new();

    // [disk]
    let disk = match &raw.disk {
        None => {
            p.push(problem(
                "disk",
                "missing: the installer needs to know which disk to erase",
                "add a [disk] section with path = \"/dev/sda\", or a filter such as min_size_gb = 16 and model = \"...\"",
            ));
            None
        }
        Some(d) => {
            let filter = d.min_size_gb.is_some() || d.max_size_gb.is_some() || d.model.is_some();
            match (&d.path, filter) {
                (Some(_), true) => {
                    p.push(problem(
                        "disk.path",
                        "given together with a size/model filter",
                        "use either disk.path or the filter keys (min_size_gb, max_size_gb, model), not both",
                    ));
                    None
                }
                (Some(path), false) => {
                    if !path.starts_with("/dev/")
                        || path.len() <= 5
                        || path.contains(char::is_whitespace)
                    {
                        p.push(problem(
                            "disk.path",
                            format!("`{path}` is not a device path"),
                            "give the whole disk's device, e.g. \"/dev/sda\", \"/dev/vda\", \"/dev/nvme0n1\" or \"/dev/disk/by-id/...\"",
                        ));
                        None
                    } else {
                        Some(DiskChoice::Path(path.clone()))
                    }
                }
                (None, true) => {
                    if let (Some(a), Some(b)) = (d.min_size_gb, d.max_size_gb) {
                        if a > b {
                            p.push(problem(
                                "disk.min_size_gb",
                                format!("{a} is larger than disk.max_size_gb = {b}"),
                                "make min_size_gb at most max_size_gb",
                            ));
                        }
                    }
                    if d.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                        p.push(problem(
                            "disk.model",
                            "is empty",
                            "give a part of the model name (see `lsblk -d -o NAME,SIZE,MODEL`) or remove the key",
                        ));
                    }
                    Some(DiskChoice::Filter {
                        min_bytes: d.min_size_gb.map(|g| g * 1_000_000_000),
                        max_bytes: d.max_size_gb.map(|g| g * 1_000_000_000),
                        model: d.model.clone(),
                    })
                }
                (None, false) => {
                    p.push(problem(
                        "disk.path",
                        "missing: [disk] names no disk",
                        "set disk.path = \"/dev/sda\", or min_size_gb / max_size_gb / model to pick the disk",
                    ));
                    None
                }
            }
        }
    };

    // [system]
    let sys = raw.system.clone().unwrap_or_default();
    let hostname = match &sys.hostname {
        None => {
            p.push(problem(
                "system.hostname",
                "missing",
                "add hostname = \"pbx-a\" to [system] (letters, digits and '-', at most 63)",
            ));
            String::new()
        }
        Some(h) if !valid_hostname(h) => {
            p.push(problem(
                "system.hostname",
                format!("`{h}` is not a valid host name"),
                "use 1-63 letters, digits and '-', not starting or ending with '-'",
            ));
            String::new()
        }
        Some(h) => h.clone(),
    };
    let timezone = sys.timezone.clone().unwrap_or_else(|| "UTC".to_string());
    if !valid_timezone(&timezone) {
        p.push(problem(
            "system.timezone",
            format!("`{timezone}` is not a time zone name"),
            "use a tz database name such as \"UTC\" or \"Europe/Berlin\" (see /usr/share/zoneinfo)",
        ));
    }
    let finish = match sys.finish.as_deref() {
        None | Some("reboot") => Finish::Reboot,
        Some("poweroff") => Finish::Poweroff,
        Some(other) => {
            p.push(problem(
                "system.finish",
                format!("`{other}` is not allowed"),
                "use \"reboot\" or \"poweroff\"",
            ));
            Finish::Reboot
        }
    };

    // [network]
    let mut interfaces = Vec::new();
    let raw_ifs = raw
        .network
        .as_ref()
        .map(|n| n.interface.as_slice())
        .unwrap_or(&[]);
    if raw_ifs.is_empty() {
        p.push(problem(
            "network.interface",
            "missing: no network interface configured",
            "add a [[network.interface]] table with mac = \"52:54:00:12:34:56\" and dhcp = true (or address = \"192.0.2.10/24\")",
        ));
    }
    let mut macs = BTreeSet::new();
    let mut static_addrs = Vec::new();
    for (i, ri) in raw_ifs.iter().enumerate() {
        let k = |f: &str| format!("network.interface[{i}].{f}");
        let mac = match &ri.mac {
            None => {
                p.push(problem(
                    k("mac"),
                    "missing",
                    "give the interface's MAC address, e.g. \"52:54:00:12:34:56\" (see `ip link`)",
                ));
                None
            }
            Some(m) => match normalize_mac(m) {
                None => {
                    p.push(problem(
                        k("mac"),
                        format!("`{m}` is not a MAC address"),
                        "write six hex byte pairs separated by ':', e.g. \"52:54:00:12:34:56\"",
                    ));
                    None
                }
                Some(m) => {
                    if !macs.insert(m.clone()) {
                        p.push(problem(
                            k("mac"),
                            format!("{m} is listed twice"),
                            "list each interface once",
                        ));
                    }
                    Some(m)
                }
            },
        };
        let dhcp = ri.dhcp.unwrap_or(false);
        let addressing = match (dhcp, &ri.address) {
            (true, Some(_)) => {
                p.push(problem(
                    k("address"),
                    "given together with dhcp = true",
                    "remove address (and gateway/dns) or set dhcp = false",
                ));
                None
            }
            (true, None) => {
                if ri.gateway.is_some() || ri.dns.is_some() {
                    p.push(problem(
                        k("gateway"),
                        "gateway/dns given with dhcp = true",
                        "remove them; DHCP provides them",
                    ));
                }
                Some(Addressing::Dhcp)
            }
            (false, None) => {
                p.push(problem(
                    k("address"),
                    "missing: neither dhcp = true nor a static address",
                    "set dhcp = true or address = \"192.0.2.10/24\"",
                ));
                None
            }
            (false, Some(a)) => {
                match parse_cidr(a) {
                    Err(why) => {
                        p.push(problem(k("address"), format!("`{a}`: {why}"), "write an IP address with prefix length, e.g. \"192.0.2.10/24\" or \"2001:db8::10/64\""));
                        None
                    }
                    Ok((address, prefix)) => {
                        let gateway = match &ri.gateway {
                            None => None,
                            Some(g) => {
                                match g.parse::<IpAddr>() {
                                    Ok(g) if g.is_ipv4() == address.is_ipv4() => Some(g),
                                    Ok(_) => {
                                        p.push(problem(k("gateway"), format!("`{g}` is not of the same IP version as the address"), "use a gateway of the interface's address family"));
                                        None
                                    }
                                    Err(_) => {
                                        p.push(problem(
                                            k("gateway"),
                                            format!("`{g}` is not an IP address"),
                                            "write e.g. \"192.0.2.1\"",
                                        ));
                                        None
                                    }
                                }
                            }
                        };
                        let mut dns = Vec::new();
                        for (j, d) in ri.dns.clone().unwrap_or_default().iter().enumerate() {
                            match d.parse::<IpAddr>() {
                                Ok(a) => dns.push(a),
                                Err(_) => p.push(problem(
                                    format!("network.interface[{i}].dns[{j}]"),
                                    format!("`{d}` is not an IP address"),
                                    "write e.g. \"192.0.2.53\"",
                                )),
                            }
                        }
                        static_addrs.push(address);
                        Some(Addressing::Static {
                            address,
                            prefix,
                            gateway,
                            dns,
                        })
                    }
                }
            }
        };
        if let (Some(mac), Some(addressing)) = (mac, addressing) {
            interfaces.push(Interface { mac, addressing });
        }
    }

    // [node]
    let node = raw.node.clone().unwrap_or_default();
    let node_id = match node.id {
        None => {
            p.push(problem(
                "node.id",
                "missing",
                "add id = 1 to [node] (unique number of this node in the cluster)",
            ));
            0
        }
        Some(0) => {
            p.push(problem(
                "node.id",
                "0 is not allowed",
                "use a number from 1 up",
            ));
            0
        }
        Some(n) => n,
    };
    let role = match node.role.as_deref() {
        None | Some("data") => Role::Data,
        Some("witness") => Role::Witness,
        Some(r) => {
            p.push(problem(
                "node.role",
                format!("`{r}` is not a role"),
                "use \"data\" or \"witness\"",
            ));
            Role::Data
        }
    };

    // [cluster]
    let cl = raw.cluster.clone().unwrap_or_default();
    let cluster_name = cl.name.clone().unwrap_or_else(|| "tandem".to_string());
    if cluster_name.is_empty() || cluster_name.contains(char::is_whitespace) {
        p.push(problem(
            "cluster.name",
            format!("`{cluster_name}` is not allowed"),
            "use a name without spaces, the same on every node",
        ));
    }
    let listen = match &cl.listen {
        Some(l) => parse_sockaddr(l, "cluster.listen", RAFT_PORT, &mut p),
        None => match static_addrs.first() {
            Some(a) => Some(SocketAddr::new(*a, RAFT_PORT)),
            None => {
                p.push(problem(
                    "cluster.listen",
                    "missing: no static address to take it from",
                    "set listen = \"<this node's address>:7000\", or give an interface a static address",
                ));
                None
            }
        },
    };
    let advertise = cl
        .advertise
        .as_ref()
        .and_then(|a| parse_sockaddr(a, "cluster.advertise", RAFT_PORT, &mut p));
    if let Some(l) = listen {
        if l.ip().is_unspecified() && advertise.is_none() && !cl.peers.is_empty() {
            p.push(problem(
                "cluster.advertise",
                "missing while cluster.listen is a wildcard address",
                "set advertise = \"<address the other nodes reach this node at>:7000\"",
            ));
        }
    }
    let mut peers = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, rp) in cl.peers.iter().enumerate() {
        let k = |f: &str| format!("cluster.peers[{i}].{f}");
        let id = match rp.id {
            None | Some(0) => {
                p.push(problem(
                    k("id"),
                    "missing or 0",
                    "give that node's node.id (1 or more)",
                ));
                None
            }
            Some(id) => {
                if !ids.insert(id) {
                    p.push(problem(
                        k("id"),
                        format!("node id {id} is listed twice"),
                        "list each node once",
                    ));
                }
                Some(id)
            }
        };
        let addr = match &rp.addr {
            None => {
                p.push(problem(
                    k("addr"),
                    "missing",
                    "give that node's peer address, e.g. \"198.18.0.2:7000\"",
                ));
                None
            }
            Some(a) => parse_sockaddr(a, &k("addr"), RAFT_PORT, &mut p),
        };
        let api = rp
            .api
            .as_ref()
            .and_then(|a| parse_sockaddr(a, &k("api"), API_PORT, &mut p));
        if let (Some(id), Some(addr)) = (id, addr) {
            let own = advertise.or(listen);
            if id == node_id && own.is_some_and(|o| o != addr) {
                p.push(problem(
                    k("addr"),
                    format!(
                        "this node's own entry says {addr}, but it listens/advertises {}",
                        own.map(|o| o.to_string()).unwrap_or_default()
                    ),
                    "make this node's peers entry equal to cluster.advertise (or cluster.listen)",
                ));
            }
            peers.push(Peer { id, addr, api });
        }
    }
    let bootstrap = match cl.mode.as_deref() {
        None => {
            p.push(problem("cluster.mode", "missing", "set mode = \"init\" on the first node, mode = \"join\" (with join_token) on the others"));
            None
        }
        Some("init") => {
            if cl.join_token.is_some() {
                p.push(problem(
                    "cluster.join_token",
                    "given with mode = \"init\"",
                    "remove join_token, or set mode = \"join\"",
                ));
            }
            Some(Bootstrap::Init)
        }
        Some("join") => {
            let token = match &cl.join_token {
                None => {
                    p.push(problem("cluster.join_token", "missing for mode = \"join\"", "copy the token printed by the first node (`tandem init`, or GET /api/v1/cluster/join-token) into join_token"));
                    None
                }
                Some(t) if t.trim().is_empty() || t.contains(char::is_whitespace) => {
                    p.push(problem(
                        "cluster.join_token",
                        "empty or contains spaces",
                        "paste the token exactly as printed, on one line",
                    ));
                    None
                }
                Some(t) => Some(t.clone()),
            };
            let address = match &cl.join_address {
                Some(a) => parse_sockaddr(a, "cluster.join_address", RAFT_PORT, &mut p),
                None => match peers.iter().find(|pe| pe.id != node_id) {
                    Some(pe) => Some(pe.addr),
                    None => {
                        p.push(problem("cluster.join_address", "missing and no other node in cluster.peers", "set join_address = \"<first node's address>:7000\" or list the first node in [[cluster.peers]]"));
                        None
                    }
                },
            };
            match (address, token) {
                (Some(address), Some(token)) => Some(Bootstrap::Join { address, token }),
                _ => None,
            }
        }
        Some(m) => {
            p.push(problem(
                "cluster.mode",
                format!("`{m}` is not a mode"),
                "use \"init\" or \"join\"",
            ));
            None
        }
    };

    // [vip]
    let vip = match &raw.vip {
        None => None,
        Some(v) => match &v.address {
            None => {
                p.push(problem(
                    "vip.address",
                    "missing in [vip]",
                    "give the floating address, e.g. \"192.0.2.100\", or remove [vip]",
                ));
                None
            }
            Some(a) => match a.parse::<IpAddr>() {
                Err(_) => {
                    p.push(problem(
                        "vip.address",
                        format!("`{a}` is not an IP address"),
                        "write the address without prefix or port, e.g. \"192.0.2.100\"",
                    ));
                    None
                }
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let prefix = v.prefix.unwrap_or(if ip.is_ipv4() { 24 } else { 64 });
                    if prefix == 0 || prefix > max {
                        p.push(problem(
                            "vip.prefix",
                            format!("{prefix} is out of range"),
                            format!("use 1..={max}"),
                        ));
                    }
                    if role == Role::Witness {
                        p.push(problem(
                            "vip.address",
                            "a witness node cannot hold the VIP",
                            "remove [vip] from the witness's answer file",
                        ));
                    }
                    Some((ip, prefix))
                }
            },
        },
    };

    // [api]
    let api = raw.api.clone().unwrap_or_default();
    let api_listen = match &api.listen {
        None => Some(SocketAddr::from(([0, 0, 0, 0], API_PORT))),
        Some(l) => parse_sockaddr(l, "api.listen", API_PORT, &mut p),
    };
    if let Some(t) = &api.admin_token {
        if t.len() < 16 || !t.chars().all(|c| c.is_ascii_graphic()) {
            p.push(problem(
                "api.admin_token",
                "shorter than 16 characters or contains spaces/control characters",
                "use at least 16 printable characters, e.g. the output of `openssl rand -hex 24`",
            ));
        }
    }

    // [smtp] / [alarms]
    let smtp = match &raw.smtp {
        None => None,
        Some(s) => {
            if let Some(sec) = &s.security {
                if !["none", "starttls", "tls"].contains(&sec.as_str()) {
                    p.push(problem(
                        "smtp.security",
                        format!("`{sec}` is not allowed"),
                        "use \"none\", \"starttls\" or \"tls\"",
                    ));
                }
            }
            if s.username.is_some() != s.password.is_some() {
                p.push(problem(
                    "smtp.password",
                    "username and password must be given together",
                    "set both smtp.username and smtp.password, or neither",
                ));
            }
            match &s.host {
                None => {
                    p.push(problem(
                        "smtp.host",
                        "missing in [smtp]",
                        "give the mail server, e.g. \"mail.example.com\", or remove [smtp]",
                    ));
                    None
                }
                Some(h) => Some(Smtp {
                    host: h.clone(),
                    port: s.port,
                    security: s.security.clone(),
                    username: s.username.clone(),
                    password: s.password.clone(),
                    from: s.from.clone(),
                }),
            }
        }
    };
    let alarm_recipients = raw
        .alarms
        .as_ref()
        .and_then(|a| a.recipients.clone())
        .unwrap_or_default();
    for (i, r) in alarm_recipients.iter().enumerate() {
        let ok = r.split_once('@').is_some_and(|(u, d)| {
            !u.is_empty() && d.contains('.') && !r.contains(char::is_whitespace)
        });
        if !ok {
            p.push(problem(
                format!("alarms.recipients[{i}]"),
                format!("`{r}` is not a mail address"),
                "write e.g. \"noc@example.com\"",
            ));
        }
    }
    if !alarm_recipients.is_empty() && smtp.is_none() && raw.smtp.is_none() {
        p.push(problem(
            "smtp.host",
            "alarm recipients given but no [smtp] section",
            "add [smtp] with host = \"mail.example.com\"",
        ));
    }
    if (smtp.is_some() || !alarm_recipients.is_empty())
        && !matches!(bootstrap, Some(Bootstrap::Init))
        && bootstrap.is_some()
    {
        p.push(problem(
            "smtp",
            "mail settings are cluster-wide and applied by the node that runs init",
            "put [smtp] and [alarms] into the answer file of the node with cluster.mode = \"init\"",
        ));
    }

    // [firewall]
    let fw = raw.firewall.clone().unwrap_or_default();
    let local: Vec<Net> = interfaces
        .iter()
        .filter_map(|i| match i.addressing {
            Addressing::Static {
                address, prefix, ..
            } => Some(Net::containing(address, prefix)),
            Addressing::Dhcp => None,
        })
        .collect();
    let default_allow = |extra: Vec<Net>| {
        if local.is_empty() {
            return Allow::Any;
        }
        let mut v = local.clone();
        v.extend(extra);
        v.sort();
        v.dedup();
        Allow::Only(v)
    };
    let api_allow = match &fw.api_allow {
        Some(list) => parse_allow(list, "firewall.api_allow", &mut p),
        None => Some(default_allow(Vec::new())),
    };
    let peer_allow = match &fw.peer_allow {
        Some(list) => parse_allow(list, "firewall.peer_allow", &mut p),
        None => Some(default_allow(
            peers.iter().map(|peer| Net::host(peer.addr.ip())).collect(),
        )),
    };

    if !p.is_empty() {
        return Err(Problems(p));
    }
    Ok(Answer {
        disk: disk.expect("checked"),
        hostname,
        timezone,
        finish,
        interfaces,
        node_id,
        role,
        cluster_name,
        listen: listen.expect("checked"),
        advertise,
        peers,
        bootstrap: bootstrap.expect("checked"),
        vip,
        api_listen: api_listen.expect("checked"),
        admin_token: api.admin_token.clone(),
        smtp,
        alarm_recipients,
        firewall: Firewall {
            api: api_allow.expect("checked"),
            peer: peer_allow.expect("checked"),
            api_given: fw.api_allow.is_some(),
            peer_given: fw.peer_allow.is_some(),
        },
    })
}

/// A source allow-list: `"any"`, networks `ip/prefix` (host bits are cleared) and
/// hosts `ip`.
fn parse_allow(list: &[String], key: &str, p: &mut Vec<Problem>) -> Option<Allow> {
    if list.is_empty() {
        p.push(problem(
            key,
            "empty: nobody could reach the port",
            "list the networks that may, e.g. [\"198.18.0.0/24\"], or [\"any\"]",
        ));
        return None;
    }
    let mut nets = Vec::new();
    let mut any = false;
    let before = p.len();
    for (i, item) in list.iter().enumerate() {
        let item = item.trim();
        if item.eq_ignore_ascii_case("any") {
            any = true;
            continue;
        }
        let (a, len) = match item.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (item, None),
        };
        let Ok(ip) = a.parse::<IpAddr>() else {
            p.push(problem(
                format!("{key}[{i}]"),
                format!("`{item}` is not an IP address or network"),
                "write a network \"198.18.0.0/24\", a host \"198.18.0.7\" or \"any\" (host names are not supported)",
            ));
            continue;
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match len.map(str::parse::<u8>) {
            None => max,
            Some(Ok(n)) if n <= max => n,
            Some(_) => {
                p.push(problem(
                    format!("{key}[{i}]"),
                    format!("`{item}`: the prefix length must be 0..={max}"),
                    "write e.g. \"198.18.0.0/24\"",
                ));
                continue;
            }
        };
        if ip.is_multicast() {
            p.push(problem(
                format!("{key}[{i}]"),
                format!("`{item}` is a multicast address, never a source"),
                "write the unicast network of the clients",
            ));
            continue;
        }
        nets.push(Net::containing(ip, prefix));
    }
    if p.len() > before {
        return None;
    }
    if any {
        return Some(Allow::Any);
    }
    nets.sort();
    nets.dedup();
    Some(Allow::Only(nets))
}

/// `ip:port` (IPv6 in brackets); a bare IP gets `default_port`.
fn parse_sockaddr(
    s: &str,
    key: &str,
    default_port: u16,
    p: &mut Vec<Problem>,
) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            p.push(problem(
                key,
                format!("`{s}`: port 0"),
                format!("use a real port, normally {default_port}"),
            ));
            return None;
        }
        return Some(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    p.push(problem(
        key,
        format!("`{s}` is not an address"),
        format!("write ip:port, e.g. \"198.18.0.1:{default_port}\" (IPv6: \"[fd00::1]:{default_port}\"); host names are not supported"),
    ));
    None
}

/// `addr/prefix`.
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s.split_once('/').ok_or("no prefix length (\"/24\")")?;
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("`{l}` is not a prefix length"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len == 0 || len > max {
        return Err(format!("prefix length {len} is out of range 1..={max}"));
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err("not a host address".to_string());
    }
    Ok((ip, len))
}

/// Lower-case `aa:bb:cc:dd:ee:ff`, accepting `-` as separator.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// RFC 1123 label.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Shape of a tz database name (existence is checked on the target).
pub fn valid_timezone(tz: &str) -> bool {
    !tz.is_empty()
        && !tz.starts_with('/')
        && !tz.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        && tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[disk]
path = "/dev/vda"

[system]
hostname = "pbx-a"
timezone = "Europe/Berlin"
finish = "poweroff"

[[network.interface]]
mac = "52:54:00:12:34:01"
dhcp = true

[[network.interface]]
mac = "52-54-00-12-34-11"
address = "198.18.0.1/24"

[node]
id = 1
role = "data"

[cluster]
mode = "init"

[[cluster.peers]]
id = 1
addr = "198.18.0.1:7000"

[[cluster.peers]]
id = 2
addr = "198.18.0.2:7000"

[vip]
address = "198.18.0.100"

[api]
admin_token = "0123456789abcdef0123"

[smtp]
host = "mail.example.com"

[alarms]
recipients = ["noc@example.com"]
"#;

    #[test]
    fn good_file_gives_typed_answer() {
        let a = parse(GOOD).unwrap();
        assert_eq!(a.disk, DiskChoice::Path("/dev/vda".into()));
        assert_eq!(a.finish, Finish::Poweroff);
        assert_eq!(a.interfaces[1].mac, "52:54:00:12:34:11");
        assert_eq!(a.listen, "198.18.0.1:7000".parse().unwrap());
        assert_eq!(a.api_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.vip, Some(("198.18.0.100".parse().unwrap(), 24)));
        assert_eq!(a.bootstrap, Bootstrap::Init);
    }

    #[test]
    fn missing_disk_names_key_and_fix() {
        let text = GOOD.replace("[disk]\npath = \"/dev/vda\"\n", "");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "disk");
        assert!(e.0[0].fix.contains("path = \"/dev/sda\""), "{e}");
    }

    #[test]
    fn bad_address_names_key() {
        let text = GOOD.replace("198.18.0.1/24", "198.18.0.300/24");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "network.interface[1].address", "{e}");
        assert!(e.to_string().contains("198.18.0.300"), "{e}");
        let text = GOOD.replace("addr = \"198.18.0.2:7000\"", "addr = \"node2:7000\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "cluster.peers[1].addr", "{e}");
    }

    #[test]
    fn unknown_key_names_section_key_line_and_allowed_keys() {
        let text = GOOD.replace(
            "timezone = \"Europe/Berlin\"",
            "timezone = \"UTC\"\nhostnam = \"x\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "system.hostnam", "{e}");
        assert!(e.0[0].message.contains("line 8"), "{e}");
        assert!(e.0[0].fix.contains("hostname"), "{e}");
    }

    #[test]
    fn join_needs_token_and_address() {
        let text = GOOD
            .replace("mode = \"init\"", "mode = \"join\"")
            .replace("[smtp]\nhost = \"mail.example.com\"\n", "")
            .replace("[alarms]\nrecipients = [\"noc@example.com\"]\n", "")
            .replace("id = 1\nrole", "id = 2\nrole")
            .replace("address = \"198.18.0.1/24\"", "address = \"198.18.0.2/24\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "cluster.join_token", "{e}");
        let a = parse(&text.replace(
            "mode = \"join\"",
            "mode = \"join\"\njoin_token = \"abc.def\"",
        ))
        .unwrap();
        assert_eq!(
            a.bootstrap,
            Bootstrap::Join {
                address: "198.18.0.1:7000".parse().unwrap(),
                token: "abc.def".into()
            }
        );
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = "[system]\nhostname = \"-bad\"\n[node]\nid = 0\n";
        let e = parse(text).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "disk",
            "system.hostname",
            "network.interface",
            "node.id",
            "cluster.mode",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
    }

    #[test]
    fn witness_with_vip_is_refused() {
        let text = GOOD.replace("role = \"data\"", "role = \"witness\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "vip.address", "{e}");
    }

    #[test]
    fn disk_filter_and_path_exclusive() {
        let text = GOOD.replace(
            "path = \"/dev/vda\"",
            "path = \"/dev/vda\"\nmin_size_gb = 8",
        );
        assert_eq!(parse(&text).unwrap_err().0[0].key, "disk.path");
        let text = GOOD.replace("path = \"/dev/vda\"", "min_size_gb = 8\nmodel = \"QEMU\"");
        assert!(matches!(
            parse(&text).unwrap().disk,
            DiskChoice::Filter {
                min_bytes: Some(8_000_000_000),
                ..
            }
        ));
    }

    #[test]
    fn wrong_type_names_key() {
        let text = GOOD.replace("id = 1\nrole", "id = \"one\"\nrole");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "node.id", "{e}");
    }

    fn nets(list: &[&str]) -> Allow {
        Allow::Only(
            list.iter()
                .map(|n| {
                    let (a, l) = n.split_once('/').unwrap();
                    Net {
                        addr: a.parse().unwrap(),
                        prefix: l.parse().unwrap(),
                    }
                })
                .collect(),
        )
    }

    #[test]
    fn firewall_defaults_to_the_static_networks_and_the_peers() {
        let a = parse(GOOD).unwrap();
        assert_eq!(a.firewall.api, nets(&["198.18.0.0/24"]));
        // The peers are inside that network already: one entry each, deduplicated.
        assert_eq!(
            a.firewall.peer,
            nets(&["198.18.0.0/24", "198.18.0.1/32", "198.18.0.2/32"])
        );
        assert!(a.warnings().is_empty(), "{:?}", a.warnings());
        // Only DHCP: nothing tells the management network, so open, with a warning.
        let dhcp = GOOD
            .replace("address = \"198.18.0.1/24\"", "dhcp = true")
            .replace(
                "mode = \"init\"",
                "mode = \"init\"\nlisten = \"198.18.0.1:7000\"",
            );
        let a = parse(&dhcp).unwrap();
        assert_eq!(a.firewall.api, Allow::Any);
        assert_eq!(a.firewall.peer, Allow::Any);
        let w = a.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("firewall.api_allow") && w[0].contains("8080"),
            "{w:?}"
        );
        assert!(
            w[1].contains("firewall.peer_allow") && w[1].contains("7000"),
            "{w:?}"
        );
    }

    #[test]
    fn firewall_lists_from_the_answer_are_normalised_and_bad_entries_named() {
        let text = format!(
            "{GOOD}\n[firewall]\napi_allow = [\"10.1.2.3/16\", \"10.9.0.7\", \"fd00::1/64\", \"10.9.0.7\"]\npeer_allow = [\"any\"]\n"
        );
        let a = parse(&text).unwrap();
        assert_eq!(
            a.firewall.api,
            nets(&["10.1.0.0/16", "10.9.0.7/32", "fd00::/64"])
        );
        assert_eq!(a.firewall.peer, Allow::Any);
        assert!(
            a.warnings().is_empty(),
            "given on purpose: {:?}",
            a.warnings()
        );
        let bad = format!(
            "{GOOD}\n[firewall]\napi_allow = [\"10.0.0.0/24\", \"mgmt.example.com\", \"10.0.0.0/33\", \"224.0.0.1\"]\npeer_allow = []\n"
        );
        let e = parse(&bad).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "firewall.api_allow[1]",
                "firewall.api_allow[2]",
                "firewall.api_allow[3]",
                "firewall.peer_allow"
            ],
            "{e}"
        );
        assert!(e.to_string().contains("mgmt.example.com"), "{e}");
        let typo = format!("{GOOD}\n[firewall]\napi_alow = [\"any\"]\n");
        let e = parse(&typo).unwrap_err();
        assert!(e.to_string().contains("api_alow"), "{e}");
    }
}
