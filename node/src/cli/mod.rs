//! Command-line interface: `tandem <command>`. Every command has `--help` and `--json`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::Client;
use crate::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "tandem: high-availability clustered telephony appliance",
    long_about = "tandem keeps configuration, call detail records and recordings replicated through Raft \
                  across 2+ nodes; the master holds the service address, standbys serve reporting.\n\n\
                  First time? Run `tandem demo`.",
    after_help = "Docs: docs/getting-started.md, docs/configuration.md, docs/api.md"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by commands that talk to a node.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Node config file (for the API address, data dir and token). Without it the
    /// defaults are used: API on 127.0.0.1:8080, data in ./tandem-data.
    #[arg(long, short = 'c', global = true, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// API base URL, overriding the config (e.g. http://127.0.0.1:8080).
    #[arg(long, global = true, env = "TANDEM_API")]
    pub api: Option<String>,
    /// Admin bearer token, overriding <data_dir>/admin.token.
    #[arg(
        long = "admin-token",
        global = true,
        env = "TANDEM_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a 3-node cluster on 127.0.0.1, write CDRs, kill the master, show the
    /// failover and read the CDRs back from a standby. No root, no config.
    Demo {
        #[command(flatten)]
        common: Common,
        /// Number of sample CDRs to write.
        #[arg(long, default_value_t = 20)]
        cdrs: usize,
    },
    /// Run one node (foreground). Without --config: a single-node cluster on
    /// 127.0.0.1 with data in ./tandem-data.
    Run {
        #[command(flatten)]
        common: Common,
    },
    /// Create a new cluster on this node: cluster CA, node certificate, join token.
    Init {
        #[command(flatten)]
        common: Common,
    },
    /// Enroll this node with an existing cluster; start it afterwards with `tandem run`.
    Join {
        #[command(flatten)]
        common: Common,
        /// Peer address (host:port, `[cluster] listen`) of the node that ran `tandem init`.
        addr: String,
        /// Join token printed by `tandem init` (also in <data_dir>/tls/join.token there).
        #[arg(long = "token", value_name = "T")]
        join_token: String,
    },
    /// Remove this node from the cluster (it stops replicating; stop the service after).
    Leave {
        #[command(flatten)]
        common: Common,
    },
    /// Move the master role to another data node with no lost write.
    Switchover {
        #[command(flatten)]
        common: Common,
        /// Node id to hand over to (default: the most up-to-date other data node).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Keep a node out of the master role (a master in maintenance hands over first).
    Maintenance {
        #[command(flatten)]
        common: Common,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Node id (default: the node of --config).
        #[arg(long)]
        node: Option<u64>,
    },
    /// (internal) Watchdog child that removes the VIP when the node stops refreshing it.
    #[command(hide = true)]
    VipGuard {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        address: std::net::IpAddr,
        #[arg(long)]
        prefix: u8,
        #[arg(long)]
        timeout_ms: u64,
    },
    /// Roles, leader, term, indexes and per-node lag.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Read and change replicated configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Benchmarks: committed CDR writes/s and latency (3 nodes vs 1 node), standby
    /// lag, and standby queries over a large CDR set. Prints figures; see docs/benchmarks.md.
    Bench {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: crate::bench::BenchArgs,
    },
    /// Call detail records: add, query, export CSV.
    Cdr {
        #[command(subcommand)]
        action: CdrCmd,
    },
    /// Telephony: SIP users (extensions) and the service's status. See docs/telephony.md.
    Sip {
        #[command(subcommand)]
        action: SipCmd,
    },
    /// Call recordings: list, download, verify, upload. See docs/recordings.md.
    Recording {
        #[command(subcommand)]
        action: RecordingCmd,
    },
    /// Alarm mails: active alarms, history, test mail. See docs/alarms.md.
    Alarm {
        #[command(subcommand)]
        action: AlarmCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum AlarmCmd {
    /// Active alarms on the node, its mail outbox and counters.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Alarm mails this node sent or gave up on since it started.
    History {
        #[command(flatten)]
        common: Common,
    },
    /// Send a test mail with the configured smtp.* settings; prints the SMTP error
    /// (host, port, cause) if the server does not take it.
    Test {
        #[command(flatten)]
        common: Common,
        /// Recipient (default: every address of every alarm.recipients.* list).
        #[arg(long, value_name = "ADDR")]
        to: Option<String>,
    },
    /// Set a recipient list (`alarm.recipients.<list>`); no address removes it.
    Recipients {
        #[command(flatten)]
        common: Common,
        /// List name, e.g. noc.
        list: String,
        /// Mail addresses.
        addrs: Vec<String>,
    },
    /// Send a family (cluster, replication, storage, media, security, mail), one alarm
    /// id, or `default` to recipient lists (`alarm.route.<target>`); no list removes it.
    Route {
        #[command(flatten)]
        common: Common,
        target: String,
        lists: Vec<String>,
    },
    /// Mute alarms for a while (`alarm.silence.<name>`): by alarm id, subject or both.
    Silence {
        #[command(flatten)]
        common: Common,
        /// Name of the silence (to end it early with `tandem alarm unsilence`).
        name: String,
        /// Alarm id to mute, e.g. storage.disk_space_low.
        #[arg(long)]
        alarm: Option<String>,
        /// Subject to mute, e.g. node-b.
        #[arg(long)]
        subject: Option<String>,
        /// How long: e.g. 30m, 2h, 1d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// End a silence early.
    Unsilence {
        #[command(flatten)]
        common: Common,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print one key.
    Get {
        #[command(flatten)]
        common: Common,
        key: String,
    },
    /// Set a key to a value (JSON; a bare word is taken as a string).
    Set {
        #[command(flatten)]
        common: Common,
        key: String,
        value: String,
    },
    /// List keys (optionally under a prefix).
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CdrFilter {
    /// Start of the time range (RFC 3339, inclusive), e.g. 2026-01-01T00:00:00Z.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the time range (RFC 3339, exclusive).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub caller: Option<String>,
    #[arg(long)]
    pub callee: Option<String>,
    /// Ask the leader for a linearizable read instead of this node's local state.
    #[arg(long)]
    pub strong: bool,
}

#[derive(Subcommand, Debug)]
pub enum CdrCmd {
    /// Add CDRs from a JSON file (one object or an array), or `-` for stdin.
    Add {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
    },
    /// Query CDRs (one page; use --cursor for the next).
    Query {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: CdrFilter,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Export CDRs as CSV (streams; all rows unless --limit).
    Export {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: CdrFilter,
        #[arg(long)]
        limit: Option<usize>,
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SipCmd {
    /// SIP users: the extensions phones register as.
    User {
        #[command(subcommand)]
        action: SipUserCmd,
    },
    /// Registrations (replicated) and, on the master, calls in progress and counters.
    Status {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
pub enum SipUserCmd {
    /// Add a user, or change its password / name.
    Add {
        #[command(flatten)]
        common: Common,
        /// Extension: the SIP user name and number (e.g. 201).
        extension: String,
        /// Digest password (at least 8 characters). Or set TANDEM_SIP_PASSWORD.
        #[arg(long, env = "TANDEM_SIP_PASSWORD", hide_env_values = true)]
        password: String,
        /// Display name shown to the called party.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a user and its registrations.
    Remove {
        #[command(flatten)]
        common: Common,
        extension: String,
    },
    /// List the users (passwords are never shown).
    List {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
pub enum RecordingCmd {
    /// List recordings with their state (stored = on two data nodes, pending) and
    /// the nodes that hold them, and this node's sync backlog.
    List {
        #[command(flatten)]
        common: Common,
        /// Only recordings not yet on a second data node.
        #[arg(long)]
        pending: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Continue after this id (from the previous page's `next_after`).
        #[arg(long)]
        after: Option<String>,
    },
    /// Download a recording (sha256 checked by the node) from the node's API.
    Get {
        #[command(flatten)]
        common: Common,
        id: String,
        /// Output file (default: <id> in the current directory).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Re-read this node's recording files and check their sha256 (one id or all).
    Verify {
        #[command(flatten)]
        common: Common,
        id: Option<String>,
    },
    /// Upload a recording file (as an external PBX would); waits until a second data
    /// node holds it.
    Upload {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
        /// Recording id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        call_id: Option<String>,
        /// Codec or MIME type, e.g. PCMU, audio/wav.
        #[arg(long)]
        codec: Option<String>,
        #[arg(long)]
        duration_ms: Option<u64>,
        /// Seconds to wait for the second copy before answering "pending".
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
    },
}

/// The config of `--config` and an API client for that node (with the overrides).
pub fn connect(common: &Common) -> anyhow::Result<(Config, Client)> {
    let cfg = load_config(common)?;
    let client = Client::for_config(&cfg, common.api.clone(), common.token.clone())?;
    Ok((cfg, client))
}

/// Load the config named by `--config`, or the defaults when none is given.
pub fn load_config(common: &Common) -> anyhow::Result<Config> {
    match &common.config {
        Some(p) => Ok(Config::load(p)?),
        None => {
            let default = std::path::Path::new(DEFAULT_CONFIG_PATH);
            if default.exists() && std::env::var_os("TANDEM_IGNORE_ETC").is_none() {
                Ok(Config::load(default)?)
            } else {
                Ok(Config::default_single_node())
            }
        }
    }
}

fn print(common: &Common, value: &Value, text: impl FnOnce(&Value) -> String) {
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", text(value));
    }
}

fn filter_query(f: &CdrFilter) -> Vec<(String, String)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("from", &f.from),
        ("to", &f.to),
        ("caller", &f.caller),
        ("callee", &f.callee),
    ] {
        if let Some(v) = v {
            q.push((k.to_string(), v.clone()));
        }
    }
    if f.strong {
        q.push(("consistency".into(), "strong".into()));
    }
    q
}

fn encode_query(q: &[(String, String)]) -> String {
    if q.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn status_text(v: &Value) -> String {
    let mut s = format!(
        "node {} — role {}, leader {}, term {}\nlog {} · commit {} · applied {} · lag {} entries / {} ms\n",
        v["node_id"], v["role"].as_str().unwrap_or("?"),
        v["leader_id"].as_u64().map(|x| x.to_string()).unwrap_or_else(|| "none".into()),
        v["term"], v["last_log_index"], v["commit_index"], v["applied_index"],
        v["lag"]["entries"], v["lag"]["ms"],
    );
    s.push_str(&format!(
        "{:<4} {:<12} {:<8} {:<6} {:<22} {:>10} {:>10}\n",
        "id", "name", "kind", "voter", "peer addr", "lag(ent)", "lag(ms)"
    ));
    for m in v["members"].as_array().into_iter().flatten() {
        let opt = |x: &Value| {
            x.as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "{:<4} {:<12} {:<8} {:<6} {:<22} {:>10} {:>10}\n",
            m["id"].to_string(),
            m["name"].as_str().unwrap_or(""),
            m["kind"].as_str().unwrap_or(""),
            if m["voter"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            m["addr"].as_str().unwrap_or(""),
            opt(&m["lag_entries"]),
            opt(&m["lag_ms"]),
        ));
    }
    if let Some(sync) = v["recording_sync"].as_object() {
        let files = sync["files"].as_u64().unwrap_or(0);
        let cap = sync["cap_bytes_per_s"].as_u64().unwrap_or(0);
        let cap = if cap == 0 {
            "unlimited".to_string()
        } else {
            format!("{} kB/s", cap / 1000)
        };
        if files == 0 {
            s.push_str(&format!("recording sync: up to date (cap {cap})\n"));
        } else {
            s.push_str(&format!(
                "recording sync backlog: {files} files, {} MB, {} kB/s, ETA {} (cap {cap})\n",
                sync["bytes"].as_u64().unwrap_or(0) / 1_000_000,
                sync["rate_bytes_per_s"].as_u64().unwrap_or(0) / 1000,
                sync["eta_s"]
                    .as_u64()
                    .map(|e| format!("{e} s"))
                    .unwrap_or_else(|| "unknown".into()),
            ));
        }
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        s.push_str(&format!("note: {}\n", n.as_str().unwrap_or("")));
    }
    s
}

/// Text of `tandem alarm list`.
pub fn alarm_list_text(v: &Value) -> String {
    let mut s = String::new();
    let active = v["active"].as_array().cloned().unwrap_or_default();
    if active.is_empty() {
        s.push_str("no active alarm\n");
    }
    for a in &active {
        let mut flags = Vec::new();
        if a["flapping"] == true {
            flags.push("flapping");
        }
        if a["muted"] == true {
            flags.push("muted");
        }
        s.push_str(&format!(
            "{:<8} {:<28} {:<12} since {}{}  {}\n",
            a["severity"].as_str().unwrap_or(""),
            a["id"].as_str().unwrap_or(""),
            a["subject"].as_str().unwrap_or(""),
            a["since"].as_str().unwrap_or(""),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(", "))
            },
            a["detail"].as_str().unwrap_or("")
        ));
    }
    if v["maintenance"] == true {
        s.push_str("alarm maintenance mode is on: no alarm mail is sent\n");
    }
    s.push_str(&format!(
        "mails: {} sent, {} failed, {} queued (node {})",
        v["mails_sent"],
        v["mails_failed"],
        v["mails_queued"],
        v["node"].as_str().unwrap_or("?")
    ));
    if let Some(e) = v["config_error"].as_str() {
        s.push_str(&format!("\nsettings error: {e}"));
    }
    s
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { common, cdrs } => crate::demo::run(common.json, cdrs).await,
        Command::Bench { common, args } => crate::bench::run(args, common.json).await,
        Command::Run { common } => crate::run::run(load_config(&common)?).await,
        Command::Init { common } => {
            let cfg = load_config(&common)?;
            let token = crate::run::identity::init(&cfg)?;
            let admin = crate::run::identity::admin_token(&cfg)?.0;
            let v = json!({"node_id": cfg.node.id, "join_token": token.to_string(), "admin_token": admin, "tls_dir": cfg.tls_dir()});
            print(&common, &v, |_| {
                format!(
                    "cluster `{}` created; this node ({}) will form it on `tandem run`.\n\
                     join token (give it to the other nodes, keep it secret):\n  {token}\n\
                     admin API token (the same on every node; also in {}):\n  {admin}\n\
                     on each other node: tandem join {} --token <token> --config <its config>",
                    cfg.cluster.name,
                    cfg.node.id,
                    cfg.token_file().display(),
                    cfg.advertise()
                )
            });
            Ok(())
        }
        Command::Join {
            common,
            addr,
            join_token,
        } => {
            let cfg = load_config(&common)?;
            let token = join_token
                .parse()
                .map_err(|e| anyhow::anyhow!("join token: {e}"))?;
            std::fs::create_dir_all(&cfg.node.data_dir)
                .with_context(|| format!("creating {}", cfg.node.data_dir.display()))?;
            let acc = tandem_replication::replica::join(
                &addr,
                &token,
                cfg.node.id,
                crate::run::identity::node_info(&cfg),
                &cfg.tls_dir(),
            )
            .await?;
            if let Some(admin) = &acc.admin_token {
                crate::run::identity::write_private(
                    &cfg.token_file(),
                    format!("{admin}\n").as_bytes(),
                )?;
            }
            let v = json!({"node_id": cfg.node.id, "joined_via": addr, "members": acc.members.iter().map(|(i, n)| json!({"id": i, "addr": n.addr})).collect::<Vec<_>>()});
            print(&common, &v, |_| {
                format!(
                    "node {} enrolled via {addr} and added as learner ({} members before it).\n\
                     start it now: tandem run{}\nit becomes a voter once it has caught up.",
                    cfg.node.id,
                    acc.members.len(),
                    common
                        .config
                        .as_ref()
                        .map(|p| format!(" --config {}", p.display()))
                        .unwrap_or_default()
                )
            });
            Ok(())
        }
        Command::Leave { common } => {
            let (_, c) = connect(&common)?;
            let (_, v) = c
                .send_json(reqwest::Method::POST, "/api/v1/cluster/leave", &json!({}))
                .await?;
            print(&common, &v, |v| {
                format!(
                    "node {} removed from the cluster; stop its service now",
                    v["removed"]
                )
            });
            Ok(())
        }
        Command::Switchover { common, to } => {
            let (_, c) = connect(&common)?;
            let (_, v) = c
                .send_json(
                    reqwest::Method::POST,
                    "/api/v1/cluster/switchover",
                    &json!({ "to": to }),
                )
                .await?;
            print(&common, &v, |v| {
                format!(
                    "master is now node {} (switchover took {} ms)",
                    v["master"], v["took_ms"]
                )
            });
            Ok(())
        }
        Command::Maintenance {
            common,
            state,
            node,
        } => {
            let (cfg, c) = connect(&common)?;
            let id = node.unwrap_or(cfg.node.id);
            let on = state == "on";
            let (_, v) = c
                .send_json(
                    reqwest::Method::PUT,
                    &format!("/api/v1/config/{}", crate::settings::maintenance_key(id)),
                    &json!(on),
                )
                .await?;
            let v = json!({"node": id, "maintenance": on, "version": v["version"]});
            print(&common, &v, |_| {
                if on {
                    format!("node {id} is in maintenance: it will not become master (a master hands over within a second)")
                } else {
                    format!("node {id} left maintenance: it may become master again")
                }
            });
            Ok(())
        }
        Command::VipGuard {
            interface,
            address,
            prefix,
            timeout_ms,
        } => {
            let spec = tandem_failover::vip::VipSpec {
                address,
                prefix,
                interface,
            };
            tandem_failover::guard::run_guard(spec, std::time::Duration::from_millis(timeout_ms))
                .await?;
            Ok(())
        }
        Command::Status { common } => {
            let (_, c) = connect(&common)?;
            let v = c.get("/api/v1/cluster").await?;
            print(&common, &v, status_text);
            Ok(())
        }
        Command::Config { action } => match action {
            ConfigCmd::Get { common, key } => {
                let (_, c) = connect(&common)?;
                let v = c
                    .get(&format!("/api/v1/config/{}", urlencode(&key)))
                    .await?;
                print(&common, &v, |v| {
                    format!("{} = {} (version {})", key, v["value"], v["version"])
                });
                Ok(())
            }
            ConfigCmd::Set { common, key, value } => {
                let (_, c) = connect(&common)?;
                let parsed: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
                let (_, v) = c
                    .send_json(
                        reqwest::Method::PUT,
                        &format!("/api/v1/config/{}", urlencode(&key)),
                        &parsed,
                    )
                    .await?;
                print(&common, &v, |v| {
                    format!(
                        "{} = {} (version {}, committed)",
                        key, v["value"], v["version"]
                    )
                });
                Ok(())
            }
            ConfigCmd::List { common, prefix } => {
                let (_, c) = connect(&common)?;
                let q = prefix
                    .map(|p| format!("?prefix={}", urlencode(&p)))
                    .unwrap_or_default();
                let v = c.get(&format!("/api/v1/config{q}")).await?;
                print(&common, &v, |v| {
                    v["config"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| {
                            format!(
                                "{} = {} (version {})",
                                e["key"].as_str().unwrap_or(""),
                                e["value"],
                                e["version"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                Ok(())
            }
        },
        Command::Alarm {
            action:
                action @ (AlarmCmd::List { .. } | AlarmCmd::History { .. } | AlarmCmd::Test { .. }),
        } => match action {
            AlarmCmd::List { common } => {
                let (_, c) = connect(&common)?;
                let v = c.get("/api/v1/alarms").await?;
                print(&common, &v, alarm_list_text);
                Ok(())
            }
            AlarmCmd::History { common } => {
                let (_, c) = connect(&common)?;
                let v = c.get("/api/v1/alarms/history").await?;
                print(&common, &v, |v| {
                    let rows: Vec<String> = v["history"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|h| {
                            format!(
                                "{}  {:<6}  {}  → {}{}",
                                crate::alarms::mail::format_time(h["at_ms"].as_u64().unwrap_or(0)),
                                h["outcome"].as_str().unwrap_or(""),
                                h["subject"].as_str().unwrap_or(""),
                                h["to"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|a| a.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                h["error"]
                                    .as_str()
                                    .map(|e| format!("\n    error: {e}"))
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    if rows.is_empty() {
                        "no alarm mail sent by this node since it started".to_string()
                    } else {
                        rows.join("\n")
                    }
                });
                Ok(())
            }
            AlarmCmd::Test { common, to } => {
                let (_, c) = connect(&common)?;
                let (_, v) = c
                    .send_json(
                        reqwest::Method::POST,
                        "/api/v1/alarms/test",
                        &json!({ "to": to }),
                    )
                    .await
                    .context("test mail not sent")?;
                print(&common, &v, |v| {
                    format!(
                        "test mail sent to {} via {} ({}); Message-ID {}",
                        v["to"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        v["server"].as_str().unwrap_or("?"),
                        v["reply"].as_str().unwrap_or(""),
                        v["message_id"].as_str().unwrap_or("?")
                    )
                });
                Ok(())
            }
            _ => unreachable!("matched above"),
        },
        Command::Alarm { action } => alarm_settings(action).await,
        Command::Recording { action } => recording_command(action).await,
        Command::Sip { action } => sip_command(action).await,
        Command::Cdr { action } => match action {
            CdrCmd::Add { common, file } => {
                let (_, c) = connect(&common)?;
                let body = if file.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                } else {
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
                };
                let (_, v) = c.post_raw("/api/v1/cdrs", body).await?;
                print(&common, &v, |v| {
                    format!(
                        "{} inserted, {} duplicates (log index {})",
                        v["inserted"], v["duplicates"], v["index"]
                    )
                });
                Ok(())
            }
            CdrCmd::Query {
                common,
                filter,
                limit,
                cursor,
            } => {
                let (_, c) = connect(&common)?;
                let mut q = filter_query(&filter);
                q.push(("limit".into(), limit.to_string()));
                if let Some(cur) = cursor {
                    q.push(("cursor".into(), cur));
                }
                let v = c.get(&format!("/api/v1/cdrs{}", encode_query(&q))).await?;
                print(&common, &v, |v| {
                    let mut s = String::new();
                    for r in v["cdrs"].as_array().into_iter().flatten() {
                        s.push_str(&format!(
                            "{}  {} → {}  {}  {}s  {}\n",
                            r["start"].as_str().unwrap_or(""),
                            r["caller"].as_str().unwrap_or(""),
                            r["callee"].as_str().unwrap_or(""),
                            r["disposition"].as_str().unwrap_or(""),
                            r["billsec"],
                            r["id"].as_str().unwrap_or("")
                        ));
                    }
                    s.push_str(&format!("{} rows", v["count"]));
                    if let Some(n) = v["next_cursor"].as_str() {
                        s.push_str(&format!("; next page: --cursor {n}"));
                    }
                    s
                });
                Ok(())
            }
            CdrCmd::Export {
                common,
                filter,
                limit,
                out,
            } => {
                let (_, c) = connect(&common)?;
                let mut q = filter_query(&filter);
                q.push(("format".into(), "csv".into()));
                if let Some(l) = limit {
                    q.push(("limit".into(), l.to_string()));
                }
                let path = format!("/api/v1/cdrs{}", encode_query(&q));
                let bytes = match &out {
                    Some(p) => {
                        let mut f = std::io::BufWriter::new(
                            std::fs::File::create(p)
                                .with_context(|| format!("creating {}", p.display()))?,
                        );
                        c.download(&path, &mut f).await?
                    }
                    None => {
                        c.download(&path, &mut std::io::BufWriter::new(std::io::stdout()))
                            .await?
                    }
                };
                if out.is_some() {
                    let v = json!({"bytes": bytes, "out": out});
                    print(&common, &v, |_| format!("{bytes} bytes written"));
                }
                Ok(())
            }
        },
    }
}

async fn recording_command(action: RecordingCmd) -> anyhow::Result<()> {
    match action {
        RecordingCmd::List {
            common,
            pending,
            limit,
            after,
        } => {
            let (_, c) = connect(&common)?;
            let mut q = vec![("limit".to_string(), limit.to_string())];
            if pending {
                q.push(("state".into(), "pending".into()));
            }
            if let Some(a) = after {
                q.push(("after".into(), a));
            }
            let v = c
                .get(&format!("/api/v1/recordings{}", encode_query(&q)))
                .await?;
            print(&common, &v, |v| {
                let mut out = String::new();
                for r in v["recordings"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{}  {:>10} B  {:<7}  holders {}  call {}  {}\n",
                        r["id"].as_str().unwrap_or(""),
                        r["size"],
                        r["state"].as_str().unwrap_or(""),
                        r["holders"],
                        r["call_id"].as_str().unwrap_or(""),
                        r["created"].as_str().unwrap_or(""),
                    ));
                }
                if let Some(s) = v["sync"].as_object() {
                    out.push_str(&format!(
                        "this node still has to fetch {} recordings ({} bytes)\n",
                        s["files"], s["bytes"]
                    ));
                }
                if let Some(n) = v["next_after"].as_str() {
                    out.push_str(&format!("more: --after {n}\n"));
                }
                out.trim_end().to_string()
            });
            Ok(())
        }
        RecordingCmd::Get { common, id, out } => {
            let (_, c) = connect(&common)?;
            let out = out.unwrap_or_else(|| PathBuf::from(&id));
            let tmp = out.with_extension("download");
            let bytes = {
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?,
                );
                let r = c
                    .download(&format!("/api/v1/recordings/{id}"), &mut f)
                    .await;
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                r?
            };
            std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
            let v = json!({"id": id, "bytes": bytes, "out": out});
            print(&common, &v, |_| {
                format!("{bytes} bytes written to {}", out.display())
            });
            Ok(())
        }
        RecordingCmd::Verify { common, id } => {
            let (_, c) = connect(&common)?;
            let body = match &id {
                Some(id) => json!({ "id": id }),
                None => json!({}),
            };
            let (_, v) = c
                .send_json(reqwest::Method::POST, "/api/v1/recordings/verify", &body)
                .await?;
            print(&common, &v, |v| {
                format!(
                    "node {}: {} checked, {} ok, bad {}, missing {}",
                    v["node"], v["checked"], v["ok"], v["bad"], v["missing"]
                )
            });
            let bad = v["bad"].as_array().is_some_and(|a| !a.is_empty());
            if bad {
                anyhow::bail!("some recordings failed their sha256 check (a good copy is fetched from another node)");
            }
            Ok(())
        }
        RecordingCmd::Upload {
            common,
            file,
            id,
            call_id,
            codec,
            duration_ms,
            wait_s,
        } => {
            let (_, c) = connect(&common)?;
            let mut headers = Vec::new();
            for (k, v) in [
                ("x-recording-id", id),
                ("x-call-id", call_id),
                ("x-codec", codec),
                ("x-duration-ms", duration_ms.map(|d| d.to_string())),
            ] {
                if let Some(v) = v {
                    headers.push((k, v));
                }
            }
            let (status, v) = c
                .upload(
                    &format!("/api/v1/recordings?wait_s={wait_s}"),
                    &file,
                    &headers,
                )
                .await?;
            print(&common, &v, |v| {
                format!(
                    "recording {} {} ({} bytes, sha256 {}), held by nodes {}{}",
                    v["id"].as_str().unwrap_or(""),
                    v["state"].as_str().unwrap_or(""),
                    v["size"],
                    v["sha256"].as_str().unwrap_or(""),
                    v["holders"],
                    if status == 202 {
                        "; the copy to a second node goes on (see `tandem status`)"
                    } else {
                        ""
                    }
                )
            });
            Ok(())
        }
    }
}

async fn sip_command(action: SipCmd) -> anyhow::Result<()> {
    match action {
        SipCmd::User {
            action:
                SipUserCmd::Add {
                    common,
                    extension,
                    password,
                    name,
                },
        } => {
            let (_, c) = connect(&common)?;
            let (status, v) = c
                .send_json(
                    reqwest::Method::PUT,
                    &format!("/api/v1/sip/users/{extension}"),
                    &json!({"password": password, "display_name": name}),
                )
                .await?;
            print(&common, &v, |_| {
                format!(
                    "SIP user {extension} {}",
                    if status == 201 { "added" } else { "updated" }
                )
            });
            Ok(())
        }
        SipCmd::User {
            action: SipUserCmd::Remove { common, extension },
        } => {
            let (_, c) = connect(&common)?;
            let (_, v) = c
                .send_json(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/sip/users/{extension}"),
                    &json!(null),
                )
                .await?;
            print(&common, &v, |_| format!("SIP user {extension} removed"));
            Ok(())
        }
        SipCmd::User {
            action: SipUserCmd::List { common },
        } => {
            let (_, c) = connect(&common)?;
            let v = c.get("/api/v1/sip/users").await?;
            print(&common, &v, |v| {
                let users = v["users"].as_array().cloned().unwrap_or_default();
                if users.is_empty() {
                    return "no SIP users (add one with `tandem sip user add 201 --password ...`)"
                        .to_string();
                }
                users
                    .iter()
                    .map(|u| {
                        format!(
                            "{:<10} {}",
                            u["extension"].as_str().unwrap_or(""),
                            u["display_name"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        SipCmd::Status { common } => {
            let (_, c) = connect(&common)?;
            let v = c.get("/api/v1/sip/status").await?;
            print(&common, &v, sip_status_text);
            Ok(())
        }
    }
}

/// Text of `tandem sip status`.
fn sip_status_text(v: &Value) -> String {
    let mut s = String::new();
    let regs = v["registrations"].as_array().cloned().unwrap_or_default();
    s.push_str(&format!("registrations: {}\n", regs.len()));
    for r in &regs {
        s.push_str(&format!(
            "  {:<10} {:<40} from {:<22} expires in {} s\n",
            r["extension"].as_str().unwrap_or(""),
            r["contact"].as_str().unwrap_or(""),
            r["source"].as_str().unwrap_or(""),
            r["expires_in_s"]
        ));
    }
    match v["service"].as_object() {
        None => s.push_str("telephony service: not running on this node\n"),
        Some(svc) => {
            s.push_str(&format!(
                "telephony service: {}\n",
                if svc["active"].as_bool() == Some(true) {
                    "active (master)"
                } else {
                    "standing by"
                }
            ));
            let calls = svc["calls"].as_array().cloned().unwrap_or_default();
            s.push_str(&format!("calls in progress: {}\n", calls.len()));
            for c in &calls {
                s.push_str(&format!(
                    "  {} -> {}  {}  since {}\n",
                    c["caller"].as_str().unwrap_or(""),
                    c["callee"].as_str().unwrap_or(""),
                    c["state"].as_str().unwrap_or(""),
                    c["since"].as_str().unwrap_or("")
                ));
            }
            if let Some(k) = svc.get("counters") {
                s.push_str(&format!("counters: {k}\n"));
            }
        }
    }
    s.trim_end().to_string()
}

/// Parse "30m", "2h", "1d", "90s" into seconds.
fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        anyhow::anyhow!("--for {s:?}: write a number and a unit, like 30m, 2h or 1d")
    })?;
    let mult = match unit {
        "s" => 1,
        "m" | "" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => anyhow::bail!("--for {s:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    Ok(n * mult)
}

/// `tandem alarm recipients|route|silence|unsilence`: write one `alarm.*` key after
/// checking the whole alarm configuration with it, so a mistake (unknown list, bad
/// address, unknown alarm id) is refused here, naming the key.
async fn alarm_settings(action: AlarmCmd) -> anyhow::Result<()> {
    let (common, key, value, done) = match action {
        AlarmCmd::Recipients {
            common,
            list,
            addrs,
        } => {
            let key = format!("alarm.recipients.{list}");
            let done = if addrs.is_empty() {
                format!("recipient list {list} removed")
            } else {
                format!("recipient list {list}: {}", addrs.join(", "))
            };
            let v = (!addrs.is_empty()).then(|| json!(addrs));
            (common, key, v, done)
        }
        AlarmCmd::Route {
            common,
            target,
            lists,
        } => {
            let key = format!("alarm.route.{target}");
            let done = if lists.is_empty() {
                format!("route for {target} removed")
            } else {
                format!("{target} goes to {}", lists.join(", "))
            };
            let v = (!lists.is_empty()).then(|| json!(lists));
            (common, key, v, done)
        }
        AlarmCmd::Silence {
            common,
            name,
            alarm,
            subject,
            duration,
            comment,
        } => {
            if alarm.is_none() && subject.is_none() {
                anyhow::bail!("give --alarm ID, --subject NAME or both: a silence without either would mute everything (use `tandem config set alarm.maintenance true` for that)");
            }
            let secs = parse_duration(&duration)?;
            let until = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
            let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let key = format!("alarm.silence.{name}");
            let done = format!("silence {name} until {until}");
            let v = json!({"alarm": alarm, "subject": subject, "until": until, "comment": comment});
            (common, key, Some(v), done)
        }
        AlarmCmd::Unsilence { common, name } => {
            let key = format!("alarm.silence.{name}");
            (common, key, None, format!("silence {name} ended"))
        }
        _ => unreachable!("handled in run"),
    };
    let (_, c) = connect(&common)?;
    // The whole alarm configuration as it would be after the change.
    let current = c.get("/api/v1/config?prefix=alarm.").await?;
    let mut entries: std::collections::BTreeMap<String, Value> = current["config"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["key"].as_str()?.to_string(), e["value"].clone())))
        .collect();
    match &value {
        Some(v) => {
            entries.insert(key.clone(), v.clone());
        }
        None => {
            if entries.remove(&key).is_none() {
                anyhow::bail!("{key} is not set");
            }
        }
    }
    crate::alarms::rules::RulesConfig::from_entries(&entries)?;
    crate::alarms::recipients::Routing::from_entries(&entries)?;
    crate::alarms::rules::Silence::from_entries(&entries)?;
    let v = match &value {
        Some(v) => {
            c.send_json(reqwest::Method::PUT, &format!("/api/v1/config/{key}"), v)
                .await?
                .1
        }
        None => {
            c.send_json(
                reqwest::Method::DELETE,
                &format!("/api/v1/config/{key}"),
                &json!(null),
            )
            .await?
            .1
        }
    };
    print(&common, &v, |_| done);
    Ok(())
}
