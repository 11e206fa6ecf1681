//! Command-line interface: `tandem <command>`. Every command has `--help` and `--json`.
//!
//! This file holds the clap definitions and the dispatch; each noun has its own file
//! (`cluster.rs`: init, join, leave, switchover, maintenance, status; `config.rs`;
//! `cdr.rs`; `alarm.rs`; `recording.rs`; `sip.rs`; `user.rs`: users, tokens, audit). Every command talks to a node
//! through the typed client of `tandem-api` and renders the typed answer.

mod alarm;
mod cdr;
pub mod cluster;
mod config;
mod recording;
mod sip;
mod user;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use tandem_api::Client;

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
    /// Bearer token: a user token (`tandem user token`) or the bootstrap admin token;
    /// default: <data_dir>/admin.token.
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
        /// Accept putting the last data node that may be master in maintenance:
        /// no node carries the service until one leaves maintenance.
        #[arg(long)]
        force: bool,
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
    /// lag, and standby queries over a large CDR set; with --slow-connections N, a
    /// resource benchmark under slow connections. Prints figures; see docs/benchmarks.md.
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
    /// API users and their tokens, with roles admin, operator, reporting.
    #[command(long_about = USER_HELP)]
    User {
        #[command(subcommand)]
        action: UserCmd,
    },
    /// The audit log: who changed what, when, from where, with what outcome (admin).
    /// Replicated: every node shows the same entries. See docs/security.md.
    Audit {
        #[command(flatten)]
        common: Common,
        /// Newest entries to show (1..=10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
    },
}

const USER_HELP: &str = concat!(
    "API users and their tokens. Roles (each includes the one before):\n\n",
    "  reporting  read CDRs (query, CSV export), list and download recordings, cluster status\n",
    "  operator   also switchover, maintenance, alarm settings and test mail, SIP users,\n",
    "             recording upload/verify, CDR writes\n",
    "  admin      everything: users and tokens, the audit log, every config key, join token,\n",
    "             leave\n\n",
    "A token is shown once, when it is issued (the node keeps only its SHA-256). People log in\n",
    "with a password (POST /api/v1/login gives a session token). The bootstrap admin token in\n",
    "<data_dir>/admin.token always works. Every change is in `tandem audit`. See docs/security.md."
);

/// How a command gets a user's password (none of the flags: no password).
#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// Ask for the password at the terminal (twice, not echoed).
    #[arg(long)]
    pub password_prompt: bool,
    /// Read the password from the first line of stdin (scripts).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user with a role; optionally a password (for login) and a first API token.
    Add {
        #[command(flatten)]
        common: Common,
        /// 1-32 of a-z 0-9 _ -, starting with a letter.
        name: String,
        /// admin, operator or reporting.
        #[arg(long)]
        role: tandem_api::Role,
        #[command(flatten)]
        password: PasswordSource,
        /// Also issue an API token (printed once).
        #[arg(long = "token")]
        issue_token: bool,
        /// When that token expires (implies --token): days (30), or 90s, 30m, 12h, 7d;
        /// default: until revoked.
        #[arg(long, value_name = "DAYS")]
        expires: Option<String>,
    },
    /// Change a user's role and/or password.
    Set {
        #[command(flatten)]
        common: Common,
        name: String,
        #[arg(long)]
        role: Option<tandem_api::Role>,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Remove a user; all its tokens and sessions stop working.
    Remove {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// List users, their roles and tokens (ids, expiry; never the secrets).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Issue a new API token for a user (printed once).
    Token {
        #[command(flatten)]
        common: Common,
        name: String,
        /// When it expires: days (30), or 90s, 30m, 12h, 7d; default: until revoked.
        #[arg(long, value_name = "DAYS")]
        expires: Option<String>,
    },
    /// Revoke one token (id from `tandem user list`).
    Revoke {
        #[command(flatten)]
        common: Common,
        name: String,
        /// Token id (16 hex digits).
        id: String,
    },
    /// Who the token in use belongs to, and its role.
    Whoami {
        #[command(flatten)]
        common: Common,
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
    /// Set a key to a value (JSON; a bare word is taken as a string). Values of the
    /// keys the node reads (smtp.*, alarm.*, retention.*, maintenance.<id>,
    /// replication.*, sip.*) are checked first: a bad one is refused naming the key
    /// (docs/api.md).
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
    /// Delete a key (e.g. `sip.ban.<address>` lifts a SIP ban on every node).
    Delete {
        #[command(flatten)]
        common: Common,
        key: String,
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
    let client = client_for(&cfg, common.api.clone(), common.token.clone())?;
    Ok((cfg, client))
}

/// Client for the node described by `cfg`, with `api`/`token` overrides. With
/// `[api] tls_cert` set it uses HTTPS and trusts the certificates of that file and
/// the cluster CA (`<tls_dir>/ca.pem`): the appliance serves the node certificate
/// the cluster CA issued; an operator's own may be self-signed or from their CA.
pub fn client_for(
    cfg: &Config,
    api: Option<String>,
    token: Option<String>,
) -> anyhow::Result<Client> {
    let scheme = if cfg.api.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let base = api.unwrap_or_else(|| {
        format!(
            "{scheme}://{}",
            tandem_api::connectable(&cfg.api.listen.to_string())
        )
    });
    let token = match token {
        Some(t) => Some(t),
        None => std::fs::read_to_string(cfg.token_file())
            .ok()
            .map(|t| t.trim().to_string()),
    };
    let root = match &cfg.api.tls_cert {
        Some(p) => {
            let mut pem = std::fs::read(p)
                .with_context(|| format!("api.tls_cert: reading {}", p.display()))?;
            if let Ok(ca) = std::fs::read(cfg.tls_dir().join("ca.pem")) {
                pem.push(b'\n');
                pem.extend_from_slice(&ca);
            }
            Some(pem)
        }
        None => None,
    };
    Ok(Client::with_root(base, token, root.as_deref())?)
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

/// Parse a duration flag: a number and a unit (s, m, h, d) into seconds; a bare
/// number counts in `bare_unit_s`.
fn parse_duration(flag: &str, s: &str, bare_unit_s: u64) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        anyhow::anyhow!("{flag} {s:?}: write a number and a unit, like 30m, 2h or 1d")
    })?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => bare_unit_s,
        other => anyhow::bail!("{flag} {s:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    Ok(n * mult)
}

/// Print `value` as JSON with `--json`, else as the text `text` renders.
fn print<T: serde::Serialize>(common: &Common, value: &T, text: impl FnOnce(&T) -> String) {
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", text(value));
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // Run by main.rs (they use the CLI's renderers: no circle through here).
        Command::Demo { .. } | Command::Bench { .. } => {
            anyhow::bail!("`tandem demo` and `tandem bench` are started by the binary's main")
        }
        Command::Run { common } => {
            let cfg = load_config(&common)?;
            let path = common
                .config
                .as_deref()
                .unwrap_or(std::path::Path::new(DEFAULT_CONFIG_PATH));
            cfg.check_host(path)?;
            crate::run::run(cfg).await
        }
        Command::Init { common } => cluster::init(&common),
        Command::Join {
            common,
            addr,
            join_token,
        } => cluster::join(&common, &addr, &join_token).await,
        Command::Leave { common } => cluster::leave(&common).await,
        Command::Switchover { common, to } => cluster::switchover(&common, to).await,
        Command::Maintenance {
            common,
            state,
            node,
            force,
        } => cluster::maintenance(&common, state == "on", node, force).await,
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
        Command::Status { common } => cluster::status(&common).await,
        Command::Config { action } => config::run(action).await,
        Command::Alarm { action } => alarm::run(action).await,
        Command::Recording { action } => recording::run(action).await,
        Command::Sip { action } => sip::run(action).await,
        Command::Cdr { action } => cdr::run(action).await,
        Command::User { action } => user::run(action).await,
        Command::Audit {
            common,
            limit,
            since,
        } => user::audit(&common, limit, since).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks: unique argument names, valid groups, …
        super::Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_a_unit_or_the_flag_default() {
        assert_eq!(
            super::parse_duration("--expires", "30", 86_400).unwrap(),
            30 * 86_400
        );
        assert_eq!(super::parse_duration("--for", "30", 60).unwrap(), 1800);
        assert_eq!(
            super::parse_duration("--expires", "12h", 86_400).unwrap(),
            43_200
        );
        let e = super::parse_duration("--expires", "3w", 86_400).unwrap_err();
        assert!(e.to_string().contains("--expires"), "{e}");
    }
}
