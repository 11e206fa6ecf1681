//! Node configuration file (TOML).
//!
//! The file lives at [`DEFAULT_CONFIG_PATH`] unless `tandem run --config FILE`
//! names another one. Every section and every key is optional; an empty file
//! (or no file at all, see [`Config::default_single_node`]) gives a working
//! single-node setup. Unknown sections and keys are rejected so that a typo
//! never silently falls back to a default.
//!
//! Loading happens in three steps:
//!
//! 1. **parse** — TOML into the section structs below. Fixed defaults come from
//!    the `Default` impls of the section structs (the only place they are
//!    written down).
//! 2. **validate** — [`Config::validate`] checks the rules that a successful
//!    parse does not guarantee (timer ordering, peer list consistency,
//!    address syntax, ...).
//! 3. **resolve** — [`Config::resolve`] fills in the defaults that depend on
//!    other keys (`node.name`, `cluster.advertise`, `cluster.tls_dir`,
//!    `api.token_file`, `vip.prefix`).
//!
//! Every error names the file, the key (as a dotted path such as
//! `cluster.peers[2].addr`) and how to fix it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_media::digest::Algorithm;

mod fields;
pub use fields::{FieldError, RtpPorts, RTP_PORT_MIN};

/// Where `tandem run` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tandem/tandem.toml";

/// The pseudo path used in errors about a configuration that did not come
/// from a file (for example [`Config::default_single_node`]).
pub const DEFAULTS_PATH: &str = "<defaults>";

/// Fewest log entries between two snapshots (`cluster.snapshot_logs`).
const MIN_SNAPSHOT_LOGS: u64 = 10;

/// Timer defaults, repeated in the fix hints of timer errors.
const TIMER_DEFAULTS: &str = "defaults: heartbeat_ms = 100, lease_ms = 600, \
     election_timeout_min_ms = 1000, election_timeout_max_ms = 1500";

/// Everything that can go wrong while loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error(
        "{}: cannot read configuration file: {source} — fix: check the path given \
         with --config (default {DEFAULT_CONFIG_PATH}) and that the file is readable",
        .path.display()
    )]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{}: {message}\nfix: {}", .path.display(), parse_fix(.message))]
    Parse {
        /// The file that was being parsed.
        path: PathBuf,
        /// toml's message, which includes line, column, the offending line
        /// (hence the key) and what was expected; prefixed with the dotted
        /// key (like `node.colour: `) when it can be determined.
        message: String,
    },
    /// The file parsed, but a value (or a combination of values) is invalid.
    #[error("{}: {key}: {problem} — fix: {fix}", .path.display())]
    Invalid {
        /// The file the value came from, or [`DEFAULTS_PATH`].
        path: PathBuf,
        /// Dotted path of the offending key, like `cluster.peers[2].addr`.
        key: String,
        /// What is wrong with it.
        problem: String,
        /// What the operator should change.
        fix: String,
    },
}

impl ConfigError {
    /// The dotted key an [`ConfigError::Invalid`] error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The file (or [`DEFAULTS_PATH`]) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Parse { path, .. }
            | ConfigError::Invalid { path, .. } => path,
        }
    }
}

/// A fix hint for a toml parse error, chosen from toml's message.
fn parse_fix(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or section, or correct its spelling (the accepted names are \
         listed above; every key is documented in the example tandem.toml)"
    } else if message.contains("unknown variant") {
        "use one of the values listed above"
    } else if message.contains("invalid type") || message.contains("invalid value") {
        "give the key a value of the type shown above (numbers without quotes, \
         strings and paths in double quotes)"
    } else if message.contains("missing field") {
        "add the missing key shown above"
    } else if message.contains("duplicate key") {
        "keep only one of the duplicated keys or sections"
    } else {
        "correct the TOML syntax at the position shown above"
    }
}

/// The role of this node in the cluster (`[node] role`): `data` (votes, stores
/// data, can become master and hold the VIP) or `witness` (votes, never master,
/// never carries calls, never holds the VIP). The same enum the cluster uses for its
/// members.
pub use tandem_replication::types::MemberKind as NodeRole;

/// One cluster member as listed in `[[cluster.peers]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The member's `node.id`; required, unique, at least 1.
    pub id: u64,
    /// The member's peer (raft) address, i.e. its `cluster.advertise`, as
    /// `ip:port`; required.
    pub addr: String,
    /// The member's admin API address as `ip:port`, used to forward requests
    /// to it; optional, no default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// The complete node configuration: one field per TOML section.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: identity and storage of this node.
    pub node: NodeSection,
    /// `[cluster]`: membership, peer transport and consensus timers.
    pub cluster: ClusterSection,
    /// `[vip]`: the floating service address held by the master.
    pub vip: VipSection,
    /// `[api]`: the admin HTTP API.
    pub api: ApiSection,
    /// `[sip]`: the telephony listener and media ports.
    pub sip: SipSection,
    /// `[replication]`: data replication between nodes.
    pub replication: ReplicationSection,
    /// `[hooks]`: operator scripts run on role changes.
    pub hooks: HooksSection,
}

/// `[node]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Unique numeric id of this node in the cluster; the raft node id.
    /// Must be at least 1 and match this node's entry in other nodes'
    /// `cluster.peers`. Default: 1.
    pub id: u64,
    /// Human-readable name shown in logs, the API and alarms.
    /// Default: `"node-<id>"` (filled in by [`Config::resolve`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `"data"` for a full node, `"witness"` for a vote-only tie-breaker
    /// (e.g. the third site of a two-node cluster). Default: `"data"`.
    pub role: NodeRole,
    /// Directory for the replicated database, raft log, snapshots and
    /// recordings; relative paths are relative to the working directory.
    /// Default: `"./tandem-data"`.
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            name: None,
            role: NodeRole::Data,
            data_dir: PathBuf::from("./tandem-data"),
        }
    }
}

/// `[cluster]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Cluster name; nodes refuse to talk to a cluster with another name,
    /// which protects against cabling two clusters together. Default:
    /// `"tandem"`.
    pub name: String,
    /// Address the peer (raft) transport listens on, as `ip:port`.
    /// Default: `"127.0.0.1:7000"`.
    #[serde(deserialize_with = "fields::peer_listen")]
    pub listen: SocketAddr,
    /// Address other nodes use to reach this node's peer transport, as
    /// `ip:port`; differs from `listen` behind NAT or when listening on
    /// `0.0.0.0`. Default: the value of `cluster.listen` (filled in by
    /// [`Config::resolve`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Interval at which the leader sends heartbeats (and renews its lease).
    /// Must be less than `lease_ms`. Default: 100.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout: how long a follower
    /// waits without heartbeats before starting an election. Must be greater
    /// than `lease_ms`. Default: 1000.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout; the spread avoids
    /// split votes. Must be at least `election_timeout_min_ms`. Default: 1500.
    pub election_timeout_max_ms: u64,
    /// How long the master may act on its leadership without hearing from a
    /// quorum (leader lease). Must be greater than `heartbeat_ms` and less than
    /// `election_timeout_min_ms`, so a new master cannot be elected while the
    /// old one still believes it is master. Default: 600.
    pub lease_ms: u64,
    /// Build a state snapshot (and truncate the raft log) every N log entries;
    /// bounds disk use and the time a lagging node needs to catch up.
    /// Default: 20000.
    pub snapshot_logs: u64,
    /// Page cache size of the embedded database (sled), in MiB; at least 1.
    /// Default: 64.
    pub cache_mb: u64,
    /// Free space kept in `node.data_dir`, in MiB: below it, writes that add data
    /// (CDRs, config, recordings) are refused with 507 and `storage.disk_full` is
    /// raised, before the store runs out of space; 0 turns the guard off.
    /// Default: 256.
    pub min_free_mb: u64,
    /// Directory with the peer TLS material (CA, node certificate and key).
    /// Default: `"<data_dir>/tls"` (filled in by [`Config::resolve`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// Cluster members as `[[cluster.peers]]` tables. May or may not include
    /// this node (if it does, its `addr` must equal `cluster.advertise`).
    /// Default: empty, i.e. a single-node cluster.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerEntry>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: "tandem".to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            advertise: None,
            heartbeat_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 1500,
            lease_ms: 600,
            snapshot_logs: 20_000,
            cache_mb: 64,
            min_free_mb: 256,
            tls_dir: None,
            peers: Vec::new(),
        }
    }
}

impl ClusterSection {
    /// How long a peer has to answer an AppendEntries: half the lease (an answer
    /// within it still renews the lease). Not a key of its own: it follows from the
    /// lease. The replica never waits less than `heartbeat_ms`.
    pub fn rpc_timeout_ms(&self) -> u64 {
        self.lease_ms / 2
    }
}

/// `[vip]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VipSection {
    /// Floating IP address (v4 or v6, without prefix or port) that follows
    /// the master, so phones and trunks need a single address. Not allowed on
    /// a witness. Default: none (no VIP is managed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Prefix length the VIP is added with. At most 32 for IPv4, 128 for IPv6.
    /// Default: 24 for an IPv4 address, 64 for IPv6 (filled in by
    /// [`Config::resolve`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// Network interface the VIP is added to, like `"eth0"`.
    /// Default: none (the interface whose subnet contains the VIP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Number of gratuitous ARP / unsolicited neighbour advertisements sent
    /// after taking over the VIP, so switches and hosts update their caches;
    /// at least 1. Default: 3.
    pub garp_count: u32,
    /// Pause between those announcements, in milliseconds. Default: 200.
    pub garp_interval_ms: u64,
}

impl Default for VipSection {
    fn default() -> Self {
        VipSection {
            address: None,
            prefix: None,
            interface: None,
            garp_count: 3,
            garp_interval_ms: 200,
        }
    }
}

/// `[api]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Address the admin HTTP API listens on, as `ip:port`.
    /// Default: `"127.0.0.1:8080"` (local access only).
    #[serde(deserialize_with = "fields::api_listen")]
    pub listen: SocketAddr,
    /// PEM certificate (chain) for serving the API over HTTPS; set together
    /// with `tls_key`. Default: none (plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`; set together with it.
    /// Default: none (plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// File holding the admin bearer token (created on first start if
    /// missing). Default: `"<data_dir>/admin.token"` (filled in by
    /// [`Config::resolve`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            token_file: None,
        }
    }
}

/// `[sip]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    /// Address the SIP listener binds to, as `ip:port`.
    /// Default: `"0.0.0.0:5060"`: with a `[vip]` and `net.ipv4.ip_nonlocal_bind = 1`
    /// the VIP itself (replies and RTP leave from it), else all interfaces.
    #[serde(deserialize_with = "fields::sip_listen")]
    pub listen: SocketAddr,
    /// UDP port range for RTP media, as `"LOW-HIGH"`: LOW even (RTP uses even
    /// ports, RTCP the odd one above), LOW < HIGH, both within 1024-65535.
    /// Default: `"10000-20000"`.
    pub rtp_ports: RtpPorts,
    /// Digest algorithms offered to phones, in order of preference: `"SHA-256"`,
    /// `"MD5"` (RFC 8760). Some phones give up on the first algorithm they do not
    /// know (baresip 1.0 among them): list only `"MD5"` for those.
    /// Default: `["SHA-256", "MD5"]`.
    #[serde(with = "fields::digest_algorithms")]
    pub digest_algorithms: Vec<Algorithm>,
    /// Put sources banned for password guessing (`sip.ban.*`, replicated) into
    /// the nftables sets `inet tandem sip_ban` / `sip_ban6`, so this node's kernel
    /// drops their SIP packets; nft is run only while there are bans. `false`:
    /// the SIP service alone refuses them (a host whose firewall is not tandem's).
    /// Default: `true`.
    pub ban_firewall: bool,
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            rtp_ports: RtpPorts::default(),
            digest_algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            ban_firewall: true,
        }
    }
}

/// `[replication]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Bandwidth cap for copying call recordings to other nodes, in kbit/s,
    /// so bulk copies do not starve live calls on a shared link;
    /// 0 means unlimited. Default: 0.
    pub recording_bandwidth_kbps: u64,
}

/// `[hooks]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// Executable run when this node becomes master (e.g. to notify
    /// monitoring or adjust firewall rules). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_master: Option<PathBuf>,
    /// Executable run when this node becomes standby. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_standby: Option<PathBuf>,
    /// Executable run when this node fences itself (lost quorum while
    /// master). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_fenced: Option<PathBuf>,
    /// Time a hook may run before it is killed, in milliseconds, so a hung
    /// script cannot delay a failover indefinitely; at least 1. Default: 5000.
    pub timeout_ms: u64,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            on_master: None,
            on_standby: None,
            on_fenced: None,
            timeout_ms: 5000,
        }
    }
}

impl Config {
    /// Reads, parses, validates and resolves the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses, validates and resolves configuration text; `path` is only used
    /// in error messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| dotted_key_at(text, span.start));
            // A typed field's own error: the key, the problem and its fix.
            if let (Some(key), Some(field)) = (&key, FieldError::from_message(e.message())) {
                return ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    problem: field.problem,
                    fix: field.fix,
                };
            }
            let message = e.to_string().trim_end().to_string();
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: match key {
                    Some(key) => format!("{key}: {message}"),
                    None => message,
                },
            }
        })?;
        // Validate before resolving, so errors can tell a key the operator
        // wrote from one that was derived from another key.
        config.validate(path)?;
        config.resolve();
        Ok(config)
    }

    /// The configuration `tandem run` uses without `--config`: all defaults,
    /// resolved (a single data node with id 1).
    pub fn default_single_node() -> Config {
        let mut config = Config::default();
        config.resolve();
        config
    }

    /// Fills in the defaults that depend on other keys: `node.name`,
    /// `cluster.advertise`, `cluster.tls_dir`, `api.token_file` and (when
    /// `vip.address` is a valid IP) `vip.prefix`. Keys already set are kept.
    pub fn resolve(&mut self) {
        self.node.name = Some(self.node_name());
        self.cluster.advertise = Some(self.advertise());
        self.cluster.tls_dir = Some(self.tls_dir());
        self.api.token_file = Some(self.token_file());
        self.vip.prefix = self.vip_prefix().or(self.vip.prefix);
    }

    /// `node.name`, or its default `"node-<id>"`.
    pub fn node_name(&self) -> String {
        self.node
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.node.id))
    }

    /// `cluster.advertise`, or its default, `cluster.listen`.
    pub fn advertise(&self) -> String {
        self.cluster
            .advertise
            .clone()
            .unwrap_or_else(|| self.cluster.listen.to_string())
    }

    /// `cluster.tls_dir`, or its default `<data_dir>/tls`.
    pub fn tls_dir(&self) -> PathBuf {
        self.cluster
            .tls_dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("tls"))
    }

    /// The join token this node created with `tandem init` (`<tls_dir>/join.token`);
    /// the error names the file and says that only the `init` node has one.
    pub fn read_join_token(&self) -> Result<String, String> {
        let p = self.tls_dir().join("join.token");
        std::fs::read_to_string(&p)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                format!(
                    "{}: no join token here (only the node that ran `tandem init` has one): {e}",
                    p.display()
                )
            })
    }

    /// `api.token_file`, or its default `<data_dir>/admin.token`.
    pub fn token_file(&self) -> PathBuf {
        self.api
            .token_file
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("admin.token"))
    }

    /// The VIP, if `vip.address` is set and is a valid IP address.
    pub fn vip_address(&self) -> Option<IpAddr> {
        self.vip.address.as_deref()?.parse().ok()
    }

    /// `vip.prefix`, or its default (24 for IPv4, 64 for IPv6) when a valid
    /// VIP is configured; `None` without a VIP.
    pub fn vip_prefix(&self) -> Option<u8> {
        let ip = self.vip_address()?;
        Some(self.vip.prefix.unwrap_or(match ip {
            IpAddr::V4(_) => 24,
            IpAddr::V6(_) => 64,
        }))
    }

    /// All voting members: every `cluster.peers` entry plus this node
    /// (`node.id` at `cluster.advertise`), one entry per id, sorted by id.
    ///
    /// This node's entry always uses `cluster.advertise` as its address; its
    /// `api` is taken from its peer entry if it has one, else from
    /// `api.listen` unless that is a wildcard address or port 0.
    pub fn voters(&self) -> Vec<PeerEntry> {
        let own_peer_api = self
            .cluster
            .peers
            .iter()
            .find(|p| p.id == self.node.id)
            .and_then(|p| p.api.clone());
        let own_api = own_peer_api.or_else(|| {
            let addr = self.api.listen;
            (!addr.ip().is_unspecified() && addr.port() != 0).then(|| addr.to_string())
        });
        let mut voters = vec![PeerEntry {
            id: self.node.id,
            addr: self.advertise(),
            api: own_api,
        }];
        for peer in &self.cluster.peers {
            if voters.iter().all(|v| v.id != peer.id) {
                voters.push(peer.clone());
            }
        }
        voters.sort_by_key(|v| v.id);
        voters
    }

    /// Checks all rules that a successful parse does not guarantee. Stops at
    /// the first problem; `path` is only used in the error (pass
    /// [`DEFAULTS_PATH`] for a configuration built in code). Works on resolved
    /// and unresolved configurations alike.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let v = Validator { path };
        v.node(self)?;
        v.cluster_addresses(self)?;
        v.peers(self)?;
        v.timers(&self.cluster)?;
        v.snapshot_logs(&self.cluster)?;
        v.vip(self)?;
        v.api(&self.api)?;
        v.sip(&self.sip)?;
        v.hooks(&self.hooks)?;
        Ok(())
    }
}

impl Config {
    /// Checks what `validate` cannot because it looks at this host: every
    /// configured hook exists and is executable. Run at start-up (a hook that
    /// cannot run would only be noticed at the first failover).
    pub fn check_host(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let v = Validator { path };
        for (key, hook) in [
            ("hooks.on_master", &self.hooks.on_master),
            ("hooks.on_standby", &self.hooks.on_standby),
            ("hooks.on_fenced", &self.hooks.on_fenced),
        ] {
            let Some(hook) = hook else { continue };
            let problem = match std::fs::metadata(hook) {
                Err(e) => format!("{}: {e}", hook.display()),
                Ok(m) if !m.is_file() => format!("{} is not a file", hook.display()),
                Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                    format!("{} is not executable", hook.display())
                }
                Ok(_) => continue,
            };
            return Err(v.invalid(
                key,
                problem,
                format!(
                    "install the script at {} and make it executable (chmod 755), or remove \
                     the key",
                    hook.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Best effort: the dotted key (like `cluster.heartbeat_ms` or
/// `cluster.peers[1].port`) of the `key = value` line or `[table]` header at
/// byte `offset` of `text`. `None` when the line is not that simple (inline
/// tables, arrays spanning lines, syntax errors).
fn dotted_key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    if line.starts_with('[') {
        return table_header(line).map(|(name, _)| name.to_string());
    }
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let simple = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    // A one-line array (`list = ["a", "b"]`) is simple enough; inline tables
    // and arrays spanning lines are not.
    let value = value.trim();
    let one_line_array = value.starts_with('[') && value.ends_with(']');
    if key.is_empty()
        || !key.chars().all(simple)
        || value.contains('{')
        || (value.contains('[') && !one_line_array)
    {
        return None;
    }
    // The table the line belongs to: the last header above it; for an array
    // of tables, also its index.
    let mut table: Option<String> = None;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for header in text[..line_start].lines().map(str::trim) {
        if !header.starts_with('[') {
            continue;
        }
        let (name, is_array) = table_header(header)?;
        table = Some(if is_array {
            let count = counts.entry(name).or_default();
            *count += 1;
            format!("{name}[{}]", *count - 1)
        } else {
            name.to_string()
        });
    }
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

/// `[name]` or `[[name]]` (with optional trailing comment) as
/// `(name, is_array_of_tables)`.
fn table_header(line: &str) -> Option<(&str, bool)> {
    let (inner, is_array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.split_once("]]")?.0, true),
        None => (line.strip_prefix('[')?.split_once(']')?.0, false),
    };
    let name = inner.trim();
    (!name.is_empty() && !name.contains(['"', '\''])).then_some((name, is_array))
}

/// Validation helpers bound to the file name used in errors.
struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, problem: String, fix: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            problem,
            fix,
        }
    }

    /// `value` must parse as a socket address; `example` is shown in the fix.
    fn socket_addr(
        &self,
        key: &str,
        value: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        fields::socket_addr(value, example).map_err(|e| self.invalid(key, e.problem, e.fix))
    }

    /// An address other nodes connect to must name a real host and port.
    fn dialable(&self, key: &str, addr: SocketAddr, example: &str) -> Result<(), ConfigError> {
        if addr.ip().is_unspecified() {
            return Err(self.invalid(
                key,
                format!("{addr} is a wildcard address; other nodes cannot connect to it"),
                format!("use the node's real IP address, like {example}"),
            ));
        }
        if addr.port() == 0 {
            return Err(self.invalid(
                key,
                format!("{addr} has port 0; other nodes cannot connect to it"),
                format!("give the port the node listens on, like {example}"),
            ));
        }
        Ok(())
    }

    fn node(&self, c: &Config) -> Result<(), ConfigError> {
        if c.node.id == 0 {
            return Err(self.invalid(
                "node.id",
                "must be at least 1 (0 is reserved)".to_string(),
                "set node.id to this node's unique number in the cluster, like id = 1".to_string(),
            ));
        }
        if c.node.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(self.invalid(
                "node.name",
                "must not be empty".to_string(),
                format!(
                    "give the node a name, like name = \"node-{}\", or remove the key \
                     to use that default",
                    c.node.id
                ),
            ));
        }
        if c.node.data_dir.as_os_str().is_empty() {
            return Err(self.invalid(
                "node.data_dir",
                "must not be empty".to_string(),
                "set a directory, like data_dir = \"/var/lib/tandem\", or remove the key to use \
                 the default \"./tandem-data\""
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn cluster_addresses(&self, c: &Config) -> Result<(), ConfigError> {
        if c.cluster.name.trim().is_empty() {
            return Err(self.invalid(
                "cluster.name",
                "must not be empty".to_string(),
                "use the same non-empty name on every node, like name = \"tandem\"".to_string(),
            ));
        }
        if let Some(advertise) = &c.cluster.advertise {
            self.socket_addr("cluster.advertise", advertise, "10.0.0.1:7000")?;
        }
        if c.cluster.cache_mb == 0 {
            return Err(self.invalid(
                "cluster.cache_mb",
                "must be at least 1".to_string(),
                "set cache_mb = 64 (the default) or another size in MiB".to_string(),
            ));
        }
        Ok(())
    }

    fn peers(&self, c: &Config) -> Result<(), ConfigError> {
        // Valid: checked by cluster_addresses (explicit advertise) or typed
        // (cluster.listen, the default advertise).
        let advertise: SocketAddr =
            self.socket_addr("cluster.advertise", &c.advertise(), "10.0.0.1:7000")?;
        let mut ids: HashMap<u64, usize> = HashMap::new();
        // Address -> description of who uses it, for duplicate detection.
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        addrs.insert(
            advertise,
            format!("this node (node.id = {}, cluster.advertise)", c.node.id),
        );
        for (i, peer) in c.cluster.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}]");
            if peer.id == 0 {
                return Err(self.invalid(
                    format!("{key}.id"),
                    "must be at least 1 (0 is reserved)".to_string(),
                    "set it to that node's node.id".to_string(),
                ));
            }
            if let Some(first) = ids.insert(peer.id, i) {
                return Err(self.invalid(
                    format!("{key}.id"),
                    format!("id {} is already used by cluster.peers[{first}]", peer.id),
                    "give every peer a unique id, equal to that node's node.id; list each node once"
                        .to_string(),
                ));
            }
            let addr = self.socket_addr(&format!("{key}.addr"), &peer.addr, "10.0.0.2:7000")?;
            self.dialable(&format!("{key}.addr"), addr, "10.0.0.2:7000")?;
            if let Some(api) = &peer.api {
                let api_addr = self.socket_addr(&format!("{key}.api"), api, "10.0.0.2:8080")?;
                self.dialable(&format!("{key}.api"), api_addr, "10.0.0.2:8080")?;
            }
            if peer.id == c.node.id {
                if addr != advertise {
                    return Err(self.invalid(
                        format!("{key}.addr"),
                        format!(
                            "peer id {} is this node (node.id = {}), but its addr {} differs from \
                             cluster.advertise {}",
                            peer.id, c.node.id, peer.addr, advertise
                        ),
                        format!(
                            "make them equal, e.g. set cluster.advertise = \"{}\"; or, if this \
                             entry is another node, correct node.id or the peer's id",
                            peer.addr
                        ),
                    ));
                }
                continue;
            }
            if let Some(user) = addrs.insert(addr, format!("cluster.peers[{i}] (id {})", peer.id)) {
                return Err(self.invalid(
                    format!("{key}.addr"),
                    format!("{addr} is also the address of {user}"),
                    "every node needs its own address; correct this addr, or its id if the entry \
                     describes the same node"
                        .to_string(),
                ));
            }
        }
        let others = c.cluster.peers.iter().any(|p| p.id != c.node.id);
        if others {
            let source = if c.cluster.advertise.is_some() {
                String::new()
            } else {
                format!(
                    " (cluster.advertise defaults to cluster.listen = {:?})",
                    c.cluster.listen
                )
            };
            self.dialable("cluster.advertise", advertise, "10.0.0.1:7000")
                .map_err(|e| match e {
                    ConfigError::Invalid {
                        path,
                        key,
                        problem,
                        fix,
                    } => ConfigError::Invalid {
                        path,
                        key,
                        problem: format!("{problem}{source}"),
                        fix: format!(
                            "set cluster.advertise to the address other nodes use to reach this \
                             node: {fix}"
                        ),
                    },
                    other => other,
                })?;
        }
        Ok(())
    }

    fn timers(&self, c: &ClusterSection) -> Result<(), ConfigError> {
        let (hb, lease, emin, emax) = (
            c.heartbeat_ms,
            c.lease_ms,
            c.election_timeout_min_ms,
            c.election_timeout_max_ms,
        );
        if hb == 0 {
            return Err(self.invalid(
                "cluster.heartbeat_ms",
                "must be at least 1".to_string(),
                format!(
                    "set heartbeat_ms to about a sixth of lease_ms, like heartbeat_ms = {} \
                     ({TIMER_DEFAULTS})",
                    (lease / 6).max(1)
                ),
            ));
        }
        if hb >= lease {
            let mut options = Vec::new();
            if lease / 6 >= 1 {
                options.push(format!("lower cluster.heartbeat_ms to {}", lease / 6));
            }
            options.push(format!(
                "raise cluster.lease_ms to {} (keeping it below election_timeout_min_ms)",
                hb * 6
            ));
            return Err(self.invalid(
                "cluster.heartbeat_ms",
                format!(
                    "cluster.heartbeat_ms ({hb}) must be less than cluster.lease_ms ({lease}): \
                     the master renews its lease with every heartbeat"
                ),
                format!("{} ({TIMER_DEFAULTS})", options.join(" or ")),
            ));
        }
        if lease >= emin {
            let mut options = Vec::new();
            let lower = emin * 3 / 5;
            if lower > hb {
                options.push(format!("lower cluster.lease_ms to {lower}"));
            }
            let raised_min = (lease * 5 / 3).max(lease + 1);
            let mut raise = format!("raise cluster.election_timeout_min_ms to {raised_min}");
            if emax < raised_min {
                raise.push_str(&format!(
                    " and cluster.election_timeout_max_ms to {}",
                    raised_min * 3 / 2
                ));
            }
            options.push(raise);
            return Err(self.invalid(
                "cluster.lease_ms",
                format!(
                    "cluster.lease_ms ({lease}) must be less than cluster.election_timeout_min_ms \
                     ({emin}): otherwise a new master can be elected while the old one still \
                     holds its lease"
                ),
                format!("{} ({TIMER_DEFAULTS})", options.join(" or ")),
            ));
        }
        if emin > emax {
            return Err(self.invalid(
                "cluster.election_timeout_min_ms",
                format!(
                    "cluster.election_timeout_min_ms ({emin}) must not exceed \
                     cluster.election_timeout_max_ms ({emax})"
                ),
                format!(
                    "raise cluster.election_timeout_max_ms to {} (about 1.5 x the minimum) \
                     ({TIMER_DEFAULTS})",
                    emin + emin / 2
                ),
            ));
        }
        Ok(())
    }

    fn vip(&self, c: &Config) -> Result<(), ConfigError> {
        if let Some(address) = &c.vip.address {
            if c.node.role == NodeRole::Witness {
                return Err(self.invalid(
                    "vip.address",
                    "a witness never becomes master, so it cannot hold the VIP".to_string(),
                    "remove vip.address from this node's file, or set node.role = \"data\" if \
                     this node should carry calls"
                        .to_string(),
                ));
            }
            let ip: IpAddr = address.parse().map_err(|_| {
                self.invalid(
                    "vip.address",
                    format!("{address:?} is not an IP address"),
                    "write a bare IPv4 or IPv6 address, like address = \"10.0.0.100\" or \
                     \"fd00::100\" (no port; the prefix length goes in vip.prefix)"
                        .to_string(),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(self.invalid(
                    "vip.address",
                    format!("{ip} cannot be assigned to an interface"),
                    "use a free unicast address in the service subnet, \
                     like address = \"10.0.0.100\""
                        .to_string(),
                ));
            }
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if let Some(prefix) = c.vip.prefix.filter(|&p| p > max) {
                return Err(self.invalid(
                    "vip.prefix",
                    format!(
                        "{prefix} is longer than an {} address ({max} bits)",
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                    format!(
                        "use the subnet's prefix length, at most {max}, like prefix = {} \
                         (the default)",
                        if ip.is_ipv4() { 24 } else { 64 }
                    ),
                ));
            }
        }
        if c.vip.garp_count == 0 {
            return Err(self.invalid(
                "vip.garp_count",
                "must be at least 1: without announcements the network keeps sending \
                 traffic to the old master"
                    .to_string(),
                "set garp_count = 3 (the default)".to_string(),
            ));
        }
        Ok(())
    }

    fn api(&self, a: &ApiSection) -> Result<(), ConfigError> {
        match (&a.tls_cert, &a.tls_key) {
            (Some(_), None) => Err(self.invalid(
                "api.tls_key",
                "api.tls_cert is set but api.tls_key is not".to_string(),
                "add tls_key = \"/path/to/key.pem\", or remove tls_cert to serve plain HTTP"
                    .to_string(),
            )),
            (None, Some(_)) => Err(self.invalid(
                "api.tls_cert",
                "api.tls_key is set but api.tls_cert is not".to_string(),
                "add tls_cert = \"/path/to/cert.pem\", or remove tls_key to serve plain HTTP"
                    .to_string(),
            )),
            _ => Ok(()),
        }
    }

    fn sip(&self, s: &SipSection) -> Result<(), ConfigError> {
        // Address, port range and algorithm names were checked by their types
        // as the file was read; a configuration built in code can still hold
        // an empty list.
        if s.digest_algorithms.is_empty() {
            let e = fields::digest_algorithms::parse(&[]).unwrap_err();
            return Err(self.invalid("sip.digest_algorithms", e.problem, e.fix));
        }
        Ok(())
    }

    fn snapshot_logs(&self, c: &ClusterSection) -> Result<(), ConfigError> {
        if c.snapshot_logs < MIN_SNAPSHOT_LOGS {
            return Err(self.invalid(
                "cluster.snapshot_logs",
                format!(
                    "{} is too few: the node would build a snapshot every {} log entries",
                    c.snapshot_logs, c.snapshot_logs
                ),
                format!("set snapshot_logs = 20000 (the default); at least {MIN_SNAPSHOT_LOGS}"),
            ));
        }
        Ok(())
    }

    fn hooks(&self, h: &HooksSection) -> Result<(), ConfigError> {
        if h.timeout_ms == 0 {
            return Err(self.invalid(
                "hooks.timeout_ms",
                "must be at least 1: a zero timeout would kill every hook at once".to_string(),
                "set timeout_ms = 5000 (the default) or another limit in milliseconds".to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
