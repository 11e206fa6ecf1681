//! Fault injectors, each with its heal.
//!
//! | fault | how | heal |
//! |---|---|---|
//! | crash | SIGKILL to the tandem pid | [`Cluster::start_node`] |
//! | freeze | SIGSTOP | SIGCONT |
//! | link down | `ip link set eth0 down` in the node's namespace | `… up` |
//! | partition | nftables `inet tdmchaos` table, input chain of the receiving namespace: `ip saddr { … } drop` | delete the table |
//! | loss, delay, jitter | `tc qdisc add dev eth0 root netem …` | `tc qdisc del dev eth0 root` |
//! | the same without sch_netem | `chaos-tests impair` in the node's namespace + iptables-legacy `OUTPUT -o eth0 -j NFQUEUE` | delete the rule, SIGTERM the impairer (it prints its figures) |
//! | loss only (neither works) | nftables `numgen random` drop in the output chain | delete the table |
//!
//! [`Cluster::netem`] picks tc netem, else the NFQUEUE impairer
//! ([`crate::impair`]), from what [`Host`] found (probed once and printed).
//!
//! Partitions drop IP only: ARP still crosses them, so an isolated old
//! master that keeps the VIP is seen by the single-answerer prober.
//! Every injector returns the instant of the fault: when the signal was sent,
//! or when the last rule of a partition was in place (a partition is a few
//! `nft` calls, ~10 ms each; measuring from its first rule would let writes
//! slip through the half-built cut and fake a fast failover).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::Cluster;
use crate::impair::Stats;
use crate::preflight::{Host, LossDelay};
use crate::{cmd, topology};

/// Faults in force, so that [`Cluster::heal_all`] can undo them.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    nft: BTreeSet<String>,
    netem: BTreeSet<String>,
    links_down: BTreeSet<u64>,
    impairers: BTreeMap<u64, Impairer>,
    impair_stats: Vec<(u64, Result<Stats, String>)>,
}

impl FaultState {
    /// SIGKILL the impairers still running (teardown; their namespaces,
    /// and so their rules, go next).
    pub(crate) fn kill_impairers(&mut self) {
        for (_, mut imp) in std::mem::take(&mut self.impairers) {
            let _ = imp.child.kill();
            let _ = imp.child.wait();
        }
    }
}

/// A running `chaos-tests impair` in a node's namespace.
#[derive(Debug)]
struct Impairer {
    ns: String,
    child: Child,
    /// Its stdout + stderr (the ready line, then the stats line).
    log: PathBuf,
}

/// Loss and delay of the packets a node sends, as `tc netem loss L% delay D J`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netem {
    pub loss_percent: u32,
    pub delay_ms: u64,
    /// Delays are spread over `delay ± jitter` (uniform).
    pub jitter_ms: u64,
}

impl Netem {
    fn tc_args(&self) -> Vec<String> {
        vec![
            "loss".into(),
            format!("{}%", self.loss_percent),
            "delay".into(),
            format!("{}ms", self.delay_ms),
            format!("{}ms", self.jitter_ms),
        ]
    }
}

impl std::fmt::Display for Netem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss {}% delay {} ms ± {} ms",
            self.loss_percent, self.delay_ms, self.jitter_ms
        )
    }
}

/// NFQUEUE number the impairer binds (queues are per namespace).
const IMPAIR_QUEUE: &str = "0";
/// How long the impairer may take to bind its queue, and to exit on SIGTERM.
const IMPAIR_START: Duration = Duration::from_secs(5);
const IMPAIR_STOP: Duration = Duration::from_secs(5);
/// The impairer stops by itself after this long, even if nobody heals it.
const IMPAIR_MAX_SECS: &str = "1800";

static IMPAIRER_BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `chaos-tests` binary that runs `impair`. Integration tests call this
/// with `env!("CARGO_BIN_EXE_chaos-tests")`; the `chaos-tests` binary itself
/// needs not (it uses its own path).
pub fn set_impairer_bin(path: impl Into<PathBuf>) {
    let _ = IMPAIRER_BIN.set(path.into());
}

fn impairer_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = IMPAIRER_BIN.get() {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("finding the current executable")?;
    if me.file_name().is_some_and(|n| n == "chaos-tests") {
        return Ok(me);
    }
    bail!(
        "no impairer binary: call chaos_tests::faults::set_impairer_bin(env!(\"CARGO_BIN_EXE_chaos-tests\")) before the netem fault"
    )
}

/// `chrt -f 10` (SCHED_FIFO) if this host allows it, else `nice -n -10`
/// (probed once). The impairer sleeps at every turn of its loop, so a
/// real-time priority costs the other tasks only its ~1 % of a core.
fn impairer_sched() -> (&'static str, &'static [&'static str]) {
    static RT: OnceLock<bool> = OnceLock::new();
    let rt =
        *RT.get_or_init(|| cmd::on_path("chrt") && cmd::run("chrt", &["-f", "10", "true"]).is_ok());
    if rt {
        ("chrt", &["-f", "10"])
    } else {
        ("nice", &["-n", "-10"])
    }
}

fn nfqueue_rule(op: &str) -> Vec<&str> {
    vec![
        "-w",
        op,
        "OUTPUT",
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        IMPAIR_QUEUE,
        "--queue-bypass",
    ]
}

/// One side of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Node(u64),
    Client,
}

const TABLE: &str = "inet tdmchaos";

impl Cluster {
    fn ep_ns(&self, e: Endpoint) -> String {
        match e {
            Endpoint::Node(id) => self.node(id).ns.clone(),
            Endpoint::Client => self.topology().client.clone(),
        }
    }

    fn ep_ip(&self, e: Endpoint) -> Ipv4Addr {
        match e {
            Endpoint::Node(id) => self.node(id).ip,
            Endpoint::Client => topology::CLIENT_IP,
        }
    }

    /// Freeze node `id` (SIGSTOP).
    pub fn pause(&mut self, id: u64) -> anyhow::Result<Instant> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// Thaw node `id` (SIGCONT).
    pub fn resume(&mut self, id: u64) -> anyhow::Result<Instant> {
        self.signal(id, Signal::SIGCONT)
    }

    /// `ip link set eth0 down` in node `id`'s namespace.
    pub fn link_down(&mut self, id: u64) -> anyhow::Result<Instant> {
        let at = Instant::now();
        cmd::ip(&["-n", &self.node(id).ns, "link", "set", "eth0", "down"])?;
        self.faults.links_down.insert(id);
        Ok(at)
    }

    /// `ip link set eth0 up` in node `id`'s namespace.
    pub fn link_up(&mut self, id: u64) -> anyhow::Result<Instant> {
        let at = Instant::now();
        cmd::ip(&["-n", &self.node(id).ns, "link", "set", "eth0", "up"])?;
        self.faults.links_down.remove(&id);
        Ok(at)
    }

    fn nft_in(&mut self, ns: &str, rules: &str) -> anyhow::Result<()> {
        let script = format!(
            "add table {TABLE}; \
             add chain {TABLE} input {{ type filter hook input priority -10; policy accept; }}; \
             add chain {TABLE} output {{ type filter hook output priority -10; policy accept; }}; \
             {rules}"
        );
        self.faults.nft.insert(ns.to_string());
        cmd::nft(ns, &script).with_context(|| format!("nftables in {ns}"))?;
        Ok(())
    }

    /// One-way cut: IP packets from any of `from` to any of `to` are dropped
    /// (at the input of each `to` namespace, so packets to the VIP are cut too).
    /// Returns the instant the last rule was in place (the cut is complete).
    pub fn block(&mut self, from: &[Endpoint], to: &[Endpoint]) -> anyhow::Result<Instant> {
        let sources = from
            .iter()
            .map(|e| self.ep_ip(*e).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for t in to {
            let ns = self.ep_ns(*t);
            self.nft_in(
                &ns,
                &format!("add rule {TABLE} input ip saddr {{ {sources} }} drop"),
            )?;
        }
        Ok(Instant::now())
    }

    /// Symmetric partition between the sets `a` and `b`.
    pub fn partition(&mut self, a: &[Endpoint], b: &[Endpoint]) -> anyhow::Result<Instant> {
        let at = self.block(a, b)?;
        self.block(b, a)?;
        Ok(at)
    }

    /// Random loss of `percent` % of the IP packets node `id` sends, with
    /// nftables (`numgen random`): the fallback when tc netem is missing.
    pub fn nft_loss(&mut self, id: u64, percent: u32) -> anyhow::Result<Instant> {
        let at = Instant::now();
        let ns = self.node(id).ns.clone();
        self.nft_in(
            &ns,
            &format!("add rule {TABLE} output numgen random mod 100 < {percent} drop"),
        )?;
        Ok(at)
    }

    /// Remove every nftables rule the harness added.
    pub fn heal_nft(&mut self) -> anyhow::Result<Instant> {
        let at = Instant::now();
        let mut first_err = None;
        for ns in std::mem::take(&mut self.faults.nft) {
            if let Err(e) = cmd::nft(&ns, &format!("delete table {TABLE}")) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(at), Err)
    }

    /// Loss and delay on every packet node `id` sends on `eth0`: tc netem,
    /// or, on a kernel without sch_netem, the NFQUEUE impairer seeded with
    /// `seed`. Returns the instant the impairment is in force. Fails where
    /// neither works ([`LossDelay::Degraded`]: use [`Cluster::nft_loss`]).
    pub fn netem(&mut self, id: u64, n: &Netem, seed: u64) -> anyhow::Result<Instant> {
        let host = Host::get();
        match host.loss_delay() {
            LossDelay::Netem => {
                let ns = self.node(id).ns.clone();
                let mut full = vec!["qdisc", "add", "dev", "eth0", "root", "netem"];
                let args = n.tc_args();
                full.extend(args.iter().map(String::as_str));
                cmd::in_ns(&ns, "tc", &full)?;
                self.faults.netem.insert(ns);
                Ok(Instant::now())
            }
            LossDelay::Nfqueue => self.impair(id, n, seed),
            LossDelay::Degraded => bail!(
                "neither tc netem ({}) nor NFQUEUE ({}) works here; run chaos-tests/setup.sh, or use nft_loss for loss without delay",
                host.netem.clone().err().unwrap_or_default(),
                host.nfqueue.clone().err().unwrap_or_default()
            ),
        }
    }

    /// Start `chaos-tests impair` in node `id`'s namespace, wait until it has
    /// bound its queue, then send eth0's output to the queue.
    fn impair(&mut self, id: u64, n: &Netem, seed: u64) -> anyhow::Result<Instant> {
        if self.faults.impairers.contains_key(&id) {
            bail!("node {id} is already impaired; heal_netem first");
        }
        let bin = impairer_bin()?;
        let ns = self.node(id).ns.clone();
        let log = self.log_dir.join(format!("impair-n{id}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the impairer log")?;
        let (loss, delay, jitter, seed) = (
            n.loss_percent.to_string(),
            n.delay_ms.to_string(),
            n.jitter_ms.to_string(),
            seed.to_string(),
        );
        // The impairer is the network here (netem runs in softirq, above any
        // task): on a loaded 2-core host its 1 ms wake-ups must not queue
        // behind compilers and debug-build nodes, or its verdicts leave late
        // (`late p99` in the figures; ~50 ms at load 8 with plain or nice'd
        // scheduling). So SCHED_FIFO where allowed, else nice -10. `chrt`,
        // `nice` and `ip` exec, so the child's pid is the impairer's.
        let (sched, sched_args) = impairer_sched();
        let child = Command::new(sched)
            .args(sched_args)
            .args(["ip", "netns", "exec", &ns])
            .arg(&bin)
            .args(["impair", "--queue", IMPAIR_QUEUE, "--loss", &loss])
            .args([
                "--delay-ms",
                &delay,
                "--jitter-ms",
                &jitter,
                "--seed",
                &seed,
            ])
            .args(["--max-secs", IMPAIR_MAX_SECS])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| {
                format!("starting nice ip netns exec {ns} {} impair", bin.display())
            })?;
        self.faults.impairers.insert(
            id,
            Impairer {
                ns: ns.clone(),
                child,
                log: log.clone(),
            },
        );
        let deadline = Instant::now() + IMPAIR_START;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("impair: ready") {
                break;
            }
            let imp = self.faults.impairers.get_mut(&id).expect("just inserted");
            if let Ok(Some(status)) = imp.child.try_wait() {
                self.faults.impairers.remove(&id);
                bail!(
                    "the impairer of node {id} exited ({status}) before binding its queue: {}",
                    text.trim()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the impairer of node {id} did not bind its queue within {IMPAIR_START:?} (log {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cmd::in_ns(&ns, "iptables-legacy", &nfqueue_rule("-A"))
            .with_context(|| format!("NFQUEUE rule for node {id}"))?;
        Ok(Instant::now())
    }

    /// Remove every netem qdisc and NFQUEUE rule the harness added and stop
    /// the impairers (their figures: [`Cluster::take_impairer_stats`]).
    /// Returns the instant the last qdisc or rule was gone.
    pub fn heal_netem(&mut self) -> anyhow::Result<Instant> {
        let mut first_err = None;
        for ns in std::mem::take(&mut self.faults.netem) {
            if let Err(e) = cmd::in_ns(&ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]) {
                first_err.get_or_insert(e);
            }
        }
        let impairers = std::mem::take(&mut self.faults.impairers);
        for imp in impairers.values() {
            if let Err(e) = cmd::in_ns(&imp.ns, "iptables-legacy", &nfqueue_rule("-D")) {
                first_err.get_or_insert(e);
            }
        }
        let at = Instant::now();
        for (id, imp) in impairers {
            let stats = stop_impairer(id, imp).map_err(|e| format!("{e:#}"));
            self.faults.impair_stats.push((id, stats));
        }
        first_err.map_or(Ok(at), Err)
    }

    /// Figures of the impairers stopped so far, by node (taken once).
    pub fn take_impairer_stats(&mut self) -> Vec<(u64, Result<Stats, String>)> {
        std::mem::take(&mut self.faults.impair_stats)
    }

    /// Undo every fault in force: rules, qdiscs, links, frozen processes.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_nft()?;
        self.heal_netem()?;
        for id in std::mem::take(&mut self.faults.links_down) {
            cmd::ip(&["-n", &self.node(id).ns, "link", "set", "eth0", "up"])?;
        }
        let paused: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.is_running() && n.is_paused())
            .map(|n| n.id)
            .collect();
        for id in paused {
            self.resume(id)?;
        }
        Ok(())
    }
}

/// SIGTERM, wait (SIGKILL after [`IMPAIR_STOP`]), read the stats line.
fn stop_impairer(id: u64, mut imp: Impairer) -> anyhow::Result<Stats> {
    let early = imp.child.try_wait().ok().flatten();
    if early.is_none() {
        let _ = kill(Pid::from_raw(imp.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + IMPAIR_STOP;
        while imp.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = match imp.child.try_wait() {
        Ok(Some(s)) => s,
        _ => {
            let _ = imp.child.kill();
            let _ = imp.child.wait();
            bail!(
                "the impairer of node {id} did not exit within {IMPAIR_STOP:?} of SIGTERM (killed; log {})",
                imp.log.display()
            );
        }
    };
    let text = std::fs::read_to_string(&imp.log)
        .with_context(|| format!("reading {}", imp.log.display()))?;
    if let Some(s) = early {
        bail!(
            "the impairer of node {id} had exited by itself ({s}) before the heal: {}",
            text.trim()
        );
    }
    text.lines().find_map(Stats::parse_line).ok_or_else(|| {
        anyhow!(
            "the impairer of node {id} exited ({status}) without its stats line: {}",
            text.trim()
        )
    })
}
