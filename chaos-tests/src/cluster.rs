//! A tandem cluster of real processes in the namespaces of a [`Topology`].
//!
//! Bootstrap is the operator's flow (see `node/src/demo.rs` for the same on
//! 127.0.0.1): `tandem init` on node 1, `tandem run` there, then for every
//! other node `tandem join 198.18.0.1:7000 --token T` and `tandem run`, each
//! inside its own namespace with `ip netns exec`. `ip netns exec` execs the
//! command (no fork), so the pid of the child is tandem's own pid: signals go
//! to the real process.
//!
//! [`Cluster`] is the guard of a run: dropping it stops the client thread,
//! kills every process it started, deletes the namespaces and the run
//! directory (logs are kept, and their path printed, if the run failed).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tandem_api::ClusterView;
use uuid::Uuid;

use crate::api::{self, Health};
use crate::cmd;
use crate::netns::NsExecutor;
use crate::topology::{self, Topology};

/// Raft and lease timers of the cluster under test.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Timers {
    /// Fast failover, for fault tests.
    pub const FAST: Timers = Timers {
        heartbeat_ms: 50,
        lease_ms: 300,
        election_timeout_min_ms: 450,
        election_timeout_max_ms: 600,
    };
    /// Sized for a link of up to ~300 ms round trip (docs/failover.md, "Sizing the
    /// timers"): a peer has `lease_ms / 2` to answer an AppendEntries, which must be
    /// at least twice the worst round trip.
    pub const SLOW_LINK: Timers = Timers {
        heartbeat_ms: 200,
        lease_ms: 1200,
        election_timeout_min_ms: 1600,
        election_timeout_max_ms: 2400,
    };
    /// The appliance defaults (`appliance/tandem.toml`).
    pub const DEFAULT: Timers = Timers {
        heartbeat_ms: 100,
        lease_ms: 600,
        election_timeout_min_ms: 1000,
        election_timeout_max_ms: 1500,
    };
}

impl std::fmt::Display for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "heartbeat {} ms, lease {} ms, election timeout {}..{} ms",
            self.heartbeat_ms,
            self.lease_ms,
            self.election_timeout_min_ms,
            self.election_timeout_max_ms
        )
    }
}

/// `[node] role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Data,
    Witness,
}

/// Shape of the cluster to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Role of node `i + 1`.
    pub roles: Vec<Role>,
    pub timers: Timers,
    pub garp_count: u32,
    pub garp_interval_ms: u64,
    /// Wait for a master that holds the VIP (false: master role only; for
    /// developing the harness against a tandem without VIP support).
    pub require_vip: bool,
    /// TOML appended to every data node's config (e.g. a `[sip]` section).
    pub data_config_extra: String,
}

impl ClusterSpec {
    /// `n` data nodes with the fast timers.
    pub fn data(n: usize) -> ClusterSpec {
        ClusterSpec {
            roles: vec![Role::Data; n],
            timers: Timers::FAST,
            garp_count: 3,
            garp_interval_ms: 100,
            require_vip: target_is_vip(),
            data_config_extra: String::new(),
        }
    }

    /// Two data nodes and a witness (node 3).
    pub fn two_data_one_witness() -> ClusterSpec {
        let mut s = ClusterSpec::data(3);
        s.roles[2] = Role::Witness;
        s
    }
}

/// Writes go to the VIP unless `CHAOS_TARGET=nodes` (harness development only).
pub fn target_is_vip() -> bool {
    std::env::var("CHAOS_TARGET")
        .map(|v| v != "nodes")
        .unwrap_or(true)
}

/// One node of the cluster.
pub struct Node {
    pub id: u64,
    pub role: Role,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// MAC of the node's eth0 (what an ARP reply from it carries).
    pub mac: [u8; 6],
    pub dir: PathBuf,
    pub config: PathBuf,
    /// stdout+stderr of every `tandem run` of this node, appended.
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// Pid of the running tandem process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_data(&self) -> bool {
        self.role == Role::Data
    }

    /// Frozen with SIGSTOP and not yet thawed.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// The cluster and everything it runs on; the cleanup guard of a run.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<Node>,
    /// Thread in the client namespace: all HTTP and ARP traffic of the harness.
    pub client: NsExecutor,
    /// Cluster-wide admin token.
    pub token: String,
    pub tandem: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub(crate) faults: crate::faults::FaultState,
    keep_logs: bool,
    topo: Topology,
}

/// The tandem binary: `TANDEM_BIN`, or `<workspace>/target/debug/tandem`
/// after `cargo build -p tandem` (once per process; skipped with
/// `CHAOS_NO_BUILD=1`).
pub fn tandem_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_tandem().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find_tandem() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("TANDEM_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace directory")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("tandem");
    if std::env::var_os("CHAOS_NO_BUILD").is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(&cargo);
        build
            .args(["build", "-q", "-p", "tandem"])
            .current_dir(&workspace)
            .stdin(Stdio::null());
        // Under `cargo test` this process carries the variables cargo sets for
        // the crate under test (CARGO_PKG_NAME=chaos-tests, …). Build scripts
        // that watch them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`) would
        // see a change and rebuild ring, rustls, … here, and again at the next
        // plain `cargo test`: minutes per run, inside the scenario's time bound.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_ref())
            {
                build.env_remove(k.as_ref());
            }
        }
        let status = build.status();
        match status {
            Ok(s) if s.success() => {}
            other if bin.is_file() => eprintln!(
                "chaos: `cargo build -p tandem` failed ({other:?}); using the existing {}",
                bin.display()
            ),
            other => bail!(
                "`cargo build -p tandem` failed ({other:?}) and there is no {}",
                bin.display()
            ),
        }
    }
    if !bin.is_file() {
        bail!(
            "no tandem binary at {} (build it with `cargo build -p tandem` or set TANDEM_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(400);

impl Cluster {
    /// Build the topology, write the configs, bootstrap and start every node,
    /// and wait until all are voters and there is a master.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let tandem = tandem_bin()?;
        let topo = Topology::create(spec.roles.len())?;
        let run_dir = topo.owner.run_dir.clone();
        let log_dir = run_dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let client = NsExecutor::start(&topo.client)?;
        let nodes = spec
            .roles
            .iter()
            .enumerate()
            .map(|(i, role)| {
                let id = i as u64 + 1;
                Node {
                    id,
                    role: *role,
                    ns: topo.node_ns(id).to_string(),
                    ip: topology::node_ip(id),
                    mac: topo.node_macs[i],
                    dir: run_dir.join(format!("node{id}")),
                    config: run_dir.join(format!("node{id}.toml")),
                    log: log_dir.join(format!("node{id}.log")),
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let mut c = Cluster {
            spec,
            nodes,
            client,
            token: String::new(),
            tandem,
            run_dir,
            log_dir,
            faults: Default::default(),
            // Until the bootstrap succeeds, a teardown keeps the logs.
            keep_logs: true,
            topo,
        };
        for n in &c.nodes {
            std::fs::write(&n.config, config_text(&c.spec, n))
                .with_context(|| format!("writing {}", n.config.display()))?;
            // As the appliance's sysctl.d/60-tandem.conf: a node may bind the
            // VIP before it holds it (the SIP service binds it; per namespace).
            cmd::in_ns(
                &n.ns,
                "sh",
                &["-c", "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind"],
            )
            .with_context(|| format!("net.ipv4.ip_nonlocal_bind = 1 in {}", n.ns))?;
        }
        if let Err(e) = c.bootstrap().await {
            c.keep_logs();
            return Err(e.context(format!(
                "bootstrapping the cluster (logs: {})",
                c.log_dir.display()
            )));
        }
        c.keep_logs = false;
        Ok(c)
    }

    /// The topology (namespace names, MACs).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Ids of the data nodes.
    pub fn data_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_data())
            .map(|n| n.id)
            .collect()
    }

    /// Log of the harness' own `tandem` CLI calls.
    pub fn cli_log(&self) -> PathBuf {
        self.log_dir.join("cli.log")
    }

    /// Run `tandem <args> --config <node's config>` inside the node's namespace.
    pub async fn tandem_cli(&self, id: u64, args: &[&str]) -> anyhow::Result<String> {
        let n = self.node(id);
        let cfg = n.config.display().to_string();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--config", cfg.as_str()]);
        cmd::tandem_in_ns(&n.ns, &self.tandem, &full, &self.cli_log(), CLI_TIMEOUT).await
    }

    async fn bootstrap(&mut self) -> anyhow::Result<()> {
        self.tandem_cli(1, &["init", "--json"])
            .await
            .context("tandem init on node 1")?;
        let n1 = self.node(1);
        let join_token = read_trimmed(&n1.dir.join("tls/join.token"))?;
        self.token = read_trimmed(&n1.dir.join("admin.token"))?;
        self.start_node(1)?;
        self.wait_health(1, Duration::from_secs(20)).await?;
        let peer1 = format!("{}:7000", topology::node_ip(1));
        for id in 2..=self.nodes.len() as u64 {
            self.tandem_cli(id, &["join", &peer1, "--token", &join_token, "--json"])
                .await
                .with_context(|| format!("tandem join on node {id}"))?;
            self.start_node(id)?;
        }
        let want = self.nodes.len();
        let t0 = Instant::now();
        loop {
            let url = format!("{}/api/v1/cluster", api::base(topology::node_ip(1)));
            let token = self.token.clone();
            let v = self
                .client
                .run(move || async move {
                    api::get_json::<ClusterView>(&url, Some(&token), HEALTH_TIMEOUT).await
                })
                .await?;
            if let Ok(v) = v {
                if v.voters == want {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("not all {want} nodes became voters within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_master(Duration::from_secs(30), &[]).await?;
        Ok(())
    }

    /// Start `tandem run` for node `id` (its log is appended to).
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let tandem = self.tandem.clone();
        let n = self.node_mut(id);
        if n.child.is_some() {
            bail!("node {id} is already running");
        }
        cmd::append(
            &n.log,
            &format!(
                "\n=== chaos: tandem run started at {} ===\n",
                chrono::Utc::now()
            ),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("opening {}", n.log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns])
            .arg(&tandem)
            .arg("run")
            .arg("--config")
            .arg(&n.config)
            .env(
                "TANDEM_LOG",
                std::env::var("TANDEM_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting tandem run in {}", n.ns))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// Signal the tandem process of node `id`.
    pub fn signal(&mut self, id: u64, sig: Signal) -> anyhow::Result<Instant> {
        let n = self.node_mut(id);
        let pid = n
            .pid()
            .with_context(|| format!("node {id} is not running"))?;
        let at = Instant::now();
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("{sig} to node {id}"))?;
        match sig {
            Signal::SIGSTOP => n.paused = true,
            Signal::SIGCONT => n.paused = false,
            _ => {}
        }
        Ok(at)
    }

    /// SIGKILL node `id` and reap it; returns the instant of the signal.
    pub fn kill9(&mut self, id: u64) -> anyhow::Result<Instant> {
        let at = self.signal(id, Signal::SIGKILL)?;
        let n = self.node_mut(id);
        if let Some(mut c) = n.child.take() {
            let _ = c.wait();
        }
        n.paused = false;
        Ok(at)
    }

    /// Nodes whose process exited without the harness killing it.
    pub fn crashed(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((n.id, status.to_string()));
                    n.child = None;
                }
            }
        }
        out
    }

    /// `/health` of node `id`, or None if it does not answer in time.
    pub async fn health(&self, id: u64) -> Option<Health> {
        let ip = self.node(id).ip;
        self.client
            .run(move || async move { api::health(ip, HEALTH_TIMEOUT).await.ok() })
            .await
            .ok()
            .flatten()
    }

    /// The value of an unlabelled gauge or counter in node `id`'s `/metrics`.
    pub async fn metric(&self, id: u64, name: &str) -> anyhow::Result<f64> {
        let ip = self.node(id).ip;
        let (status, body) = self
            .client
            .run(move || async move {
                api::get_bytes(&format!("{}/metrics", api::base(ip)), None, HEALTH_TIMEOUT).await
            })
            .await??;
        anyhow::ensure!(status == 200, "node {id}: GET /metrics answered {status}");
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("node {id}: no metric {name} in /metrics"))
    }

    /// `/health` of every node, asked concurrently; index `id - 1`.
    pub async fn healths(&self) -> Vec<Option<Health>> {
        let ips: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.ip).collect();
        self.client
            .run(move || async move {
                let asks = ips
                    .into_iter()
                    .map(|ip| async move { api::health(ip, HEALTH_TIMEOUT).await.ok() });
                futures::future::join_all(asks).await
            })
            .await
            .unwrap_or_default()
    }

    /// Wait until node `id` answers `/health`.
    pub async fn wait_health(&self, id: u64, timeout: Duration) -> anyhow::Result<Health> {
        let t0 = Instant::now();
        loop {
            if let Some(h) = self.health(id).await {
                return Ok(h);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "node {id} did not answer /health within {timeout:?}; see {}",
                    self.node(id).log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Is `h` a master in the sense of the spec (holding the VIP if required)?
    pub fn is_master(&self, h: &Health) -> bool {
        h.role == "master" && (h.vip_held || !self.spec.require_vip)
    }

    /// Wait for exactly one master among the nodes not in `exclude`; its id.
    pub async fn wait_master(&self, timeout: Duration, exclude: &[u64]) -> anyhow::Result<u64> {
        let t0 = Instant::now();
        loop {
            let hs = self.healths().await;
            let masters: Vec<u64> = hs
                .iter()
                .flatten()
                .filter(|h| self.is_master(h) && !exclude.contains(&h.node_id))
                .map(|h| h.node_id)
                .collect();
            if masters.len() == 1 {
                return Ok(masters[0]);
            }
            if t0.elapsed() > timeout {
                let what = if self.spec.require_vip {
                    "a master holding the VIP (role master, vip_held true)"
                } else {
                    "a master"
                };
                bail!(
                    "no single {what} within {timeout:?} (excluding {exclude:?}); last /health: {}",
                    describe(&hs)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restart a stopped node and wait until it is a standby that has caught up
    /// with the master's commit index.
    pub async fn restart_as_standby(&mut self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        if !self.node(id).is_running() {
            self.start_node(id)?;
        }
        let t0 = Instant::now();
        loop {
            let hs = self.healths().await;
            let master_commit = hs
                .iter()
                .flatten()
                .find(|h| h.role == "master")
                .map(|h| h.commit_index);
            if let (Some(h), Some(mc)) = (&hs[id as usize - 1], master_commit) {
                let want_role = if self.node(id).is_data() {
                    "standby"
                } else {
                    "witness"
                };
                if h.role == want_role && h.applied_index + 50 >= mc {
                    return Ok(());
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "node {id} not back as a caught-up standby within {timeout:?}; last /health: {}; see {}",
                    describe(&hs),
                    self.node(id).log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// All CDR ids stored on node `id` (read at its own address).
    pub async fn cdr_ids(&self, id: u64) -> anyhow::Result<HashSet<Uuid>> {
        let ip = self.node(id).ip;
        let token = self.token.clone();
        self.client
            .run(move || async move { api::all_cdr_ids(ip, &token).await })
            .await?
    }

    /// Keep the logs when the cluster is dropped (the run failed).
    pub fn keep_logs(&mut self) {
        self.keep_logs = true;
    }

    /// Stop everything and delete the namespaces (also done on drop).
    fn teardown(&mut self) {
        self.client.stop();
        self.faults.kill_impairers();
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let pid = Pid::from_raw(c.id() as i32);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = c.wait();
            }
        }
        for e in self.topo.destroy() {
            eprintln!("chaos: cleanup: {e}");
        }
        let asked = std::env::var_os("CHAOS_KEEP_LOGS").is_some();
        if self.keep_logs || asked || std::thread::panicking() {
            for n in &self.nodes {
                let _ = std::fs::remove_dir_all(&n.dir);
            }
            println!("chaos: logs of this run kept in {}", self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// One line per node: id, role, leader, term, vip.
pub fn describe(hs: &[Option<Health>]) -> String {
    hs.iter()
        .enumerate()
        .map(|(i, h)| match h {
            Some(h) => format!(
                "n{}={} leader={:?} term={} applied={} vip={}",
                i + 1,
                h.role,
                h.leader_id,
                h.term,
                h.applied_index,
                h.vip_held
            ),
            None => format!("n{}=no answer", i + 1),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn read_trimmed(p: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// The TOML config of one node.
pub fn config_text(spec: &ClusterSpec, n: &Node) -> String {
    let t = spec.timers;
    let role = match n.role {
        Role::Data => "data",
        Role::Witness => "witness",
    };
    let mut s = format!(
        "# written by chaos-tests\n[node]\nid = {id}\nname = \"node-{id}\"\nrole = \"{role}\"\ndata_dir = \"{dir}\"\n\n\
         [cluster]\nlisten = \"{ip}:7000\"\nheartbeat_ms = {hb}\nlease_ms = {lease}\n\
         election_timeout_min_ms = {emin}\nelection_timeout_max_ms = {emax}\n\n\
         [api]\nlisten = \"0.0.0.0:8080\"\n",
        id = n.id,
        dir = n.dir.display(),
        ip = n.ip,
        hb = t.heartbeat_ms,
        lease = t.lease_ms,
        emin = t.election_timeout_min_ms,
        emax = t.election_timeout_max_ms,
    );
    if n.role == Role::Data {
        s.push_str(&format!(
            "\n[vip]\naddress = \"{vip}\"\nprefix = {p}\ninterface = \"eth0\"\ngarp_count = {c}\ngarp_interval_ms = {gi}\n",
            vip = topology::VIP,
            p = topology::PREFIX_LEN,
            c = spec.garp_count,
            gi = spec.garp_interval_ms,
        ));
        if !spec.data_config_extra.is_empty() {
            s.push('\n');
            s.push_str(&spec.data_config_extra);
        }
    }
    s
}
