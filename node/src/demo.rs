//! `tandem demo`: a 3-node cluster on 127.0.0.1 in one terminal, then a failover.
//!
//! Spawns three `tandem run` processes (this same binary) with temporary data dirs,
//! enrolls nodes 2 and 3 with the join token, writes sample CDRs through the master,
//! kills the master with SIGKILL, waits for the new master and reads every CDR back
//! from a standby. Everything it started is stopped and removed at the end, also on
//! error or Ctrl-C (children are killed on drop).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{json, Value};
use tandem_replication::cdr::Cdr;
use tokio::process::{Child, Command};

use crate::client::Client;

/// One node process of a local test/demo cluster.
pub struct LocalNode {
    pub id: u64,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub peer_addr: String,
    pub api_addr: String,
    pub child: Option<Child>,
    /// Extra environment for the process (tests: fault injection).
    pub env: Vec<(String, String)>,
}

impl LocalNode {
    pub fn client(&self) -> anyhow::Result<Client> {
        let token = std::fs::read_to_string(self.dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string());
        Client::new(format!("http://{}", self.api_addr), token)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
    }
}

/// A set of local node processes under one temporary directory, removed on drop.
pub struct LocalCluster {
    pub root: PathBuf,
    pub nodes: Vec<LocalNode>,
    exe: PathBuf,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

impl LocalCluster {
    /// Prepare `n` node configs under a fresh temporary directory (nothing started).
    /// Node i listens on `ips[i % ips.len()]`.
    pub fn prepare(
        exe: PathBuf,
        n: usize,
        ips: &[&str],
        extra: &str,
    ) -> anyhow::Result<LocalCluster> {
        let root =
            std::env::temp_dir().join(format!("tandem-demo-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root)?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let ip = ips[i % ips.len()];
            let dir = root.join(format!("node{id}"));
            let peer_addr = format!("{ip}:{}", free_port(ip)?);
            let api_addr = format!("{ip}:{}", free_port(ip)?);
            let config = root.join(format!("node{id}.toml"));
            let text = format!(
                "[node]\nid = {id}\nname = \"node-{id}\"\ndata_dir = \"{}\"\n\n[cluster]\nlisten = \"{peer_addr}\"\n\
                 heartbeat_ms = 100\nlease_ms = 400\nelection_timeout_min_ms = 600\nelection_timeout_max_ms = 900\n{extra}\n\n\
                 [sip]\nlisten = \"{ip}:0\"\n\n[api]\nlisten = \"{api_addr}\"\n",
                dir.display()
            );
            std::fs::write(&config, text)?;
            nodes.push(LocalNode {
                id,
                dir,
                config,
                peer_addr,
                api_addr,
                child: None,
                env: Vec::new(),
            });
        }
        Ok(LocalCluster { root, nodes, exe })
    }

    async fn tandem(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.exe)
            .args(args)
            .env("TANDEM_LOG", "warn")
            .output()
            .await
            .with_context(|| format!("running {} {}", self.exe.display(), args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "tandem {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start node `i` (index) as a background process; its log goes to `<dir>.log`.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        std::fs::create_dir_all(&n.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.with_extension("log"))?;
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&n.config)
            .env(
                "TANDEM_LOG",
                std::env::var("TANDEM_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(n.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning tandem run")?;
        n.child = Some(child);
        Ok(())
    }

    /// `init` node 0, start it, then `join` and start the others; wait until all vote.
    pub async fn bootstrap(&mut self) -> anyhow::Result<()> {
        let cfg0 = self.nodes[0].config.display().to_string();
        self.tandem(&["init", "--json", "--config", &cfg0]).await?;
        let token = std::fs::read_to_string(self.nodes[0].dir.join("tls/join.token"))?
            .trim()
            .to_string();
        self.start(0)?;
        self.wait_health(0, Duration::from_secs(20)).await?;
        for i in 1..self.nodes.len() {
            let cfg = self.nodes[i].config.display().to_string();
            let peer0 = self.nodes[0].peer_addr.clone();
            self.tandem(&[
                "join", &peer0, "--token", &token, "--json", "--config", &cfg,
            ])
            .await?;
            self.start(i)?;
        }
        let want = self.nodes.len();
        self.wait_for(Duration::from_secs(30), "all nodes to become voters", |v| {
            v["voters"].as_u64() == Some(want as u64)
        })
        .await?;
        Ok(())
    }

    pub async fn wait_health(&self, i: usize, timeout: Duration) -> anyhow::Result<Value> {
        let c = Client::new(format!("http://{}", self.nodes[i].api_addr), None)?;
        let t0 = Instant::now();
        loop {
            if let Ok(v) = c.get("/health").await {
                return Ok(v);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "node {} did not answer /health within {timeout:?}; see {}",
                    i + 1,
                    self.nodes[i].dir.with_extension("log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll the cluster view of any live node until `pred` holds.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Ok(c) = n.client() {
                    if let Ok(v) = c.get("/api/v1/cluster").await {
                        if pred(&v) {
                            return Ok(v);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("timed out after {timeout:?} waiting for {what}")
    }

    /// Index of the node that currently reports itself master.
    pub async fn master(&self) -> Option<usize> {
        for (i, n) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.child.is_some())
        {
            if let Ok(v) = Client::new(format!("http://{}", n.api_addr), None)
                .ok()?
                .get("/health")
                .await
            {
                if v["role"] == "master" {
                    return Some(i);
                }
            }
        }
        None
    }
}

fn sample_cdrs(n: usize) -> Vec<Cdr> {
    let now = Utc::now();
    let base = now
        - ChronoDuration::minutes(n as i64 + 5)
        - ChronoDuration::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    (0..n)
        .map(|i| {
            let start = base + ChronoDuration::minutes(i as i64);
            let answered = i % 4 != 3;
            let answer = answered.then(|| start + ChronoDuration::seconds(4));
            let end = start + ChronoDuration::seconds(30 + (i as i64 * 7) % 90);
            Cdr::new_call(
                &format!("1{:02}", i % 10),
                &format!("2{:02}", (i * 3) % 10),
                start,
                answer,
                end,
                "demo",
            )
        })
        .collect()
}

fn say(json_mode: bool, text: impl AsRef<str>) {
    if !json_mode {
        println!("{}", text.as_ref());
    }
}

/// Run the demo; returns an error (after cleanup) if any step fails.
pub async fn run(json_mode: bool, n_cdrs: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the tandem binary")?;
    let mut cluster = LocalCluster::prepare(exe, 3, &["127.0.0.1"], "")?;
    tokio::select! {
        r = demo_steps(&mut cluster, json_mode, n_cdrs) => r,
        _ = tokio::signal::ctrl_c() => {
            say(json_mode, "interrupted: stopping the demo cluster");
            Ok(())
        }
    }
    // `cluster` is dropped here: processes killed, temp dir removed.
}

async fn demo_steps(
    cluster: &mut LocalCluster,
    json_mode: bool,
    n_cdrs: usize,
) -> anyhow::Result<()> {
    say(
        json_mode,
        format!(
            "▶ starting a 3-node cluster on 127.0.0.1 (data under {})",
            cluster.root.display()
        ),
    );
    cluster.bootstrap().await?;
    let master = cluster
        .master()
        .await
        .context("no master after bootstrap")?;
    let view = cluster.nodes[master]
        .client()?
        .get("/api/v1/cluster")
        .await?;
    say(json_mode, crate::cli::status_text(&view));

    let cdrs = sample_cdrs(n_cdrs);
    say(
        json_mode,
        format!(
            "▶ writing {n_cdrs} CDRs through the master (node {})",
            master + 1
        ),
    );
    let (status, resp) = cluster.nodes[master]
        .client()?
        .post_raw("/api/v1/cdrs", serde_json::to_vec(&cdrs)?)
        .await?;
    say(
        json_mode,
        format!(
            "  HTTP {status}: {} inserted, committed at log index {}",
            resp["inserted"], resp["index"]
        ),
    );

    say(
        json_mode,
        format!("▶ killing the master (node {}) with SIGKILL", master + 1),
    );
    let t_kill = Instant::now();
    cluster.nodes[master].kill();
    let mut new_master = None;
    while t_kill.elapsed() < Duration::from_secs(20) {
        if let Some(m) = cluster.master().await {
            new_master = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_master = new_master.context("no new master within 20 s")?;
    let failover_ms = t_kill.elapsed().as_millis();
    say(
        json_mode,
        format!(
            "  new master: node {} after {failover_ms} ms",
            new_master + 1
        ),
    );

    let standby = (0..cluster.nodes.len())
        .find(|i| *i != new_master && cluster.nodes[*i].child.is_some())
        .context("no standby left")?;
    let got = cluster.nodes[standby]
        .client()?
        .get(&format!("/api/v1/cdrs?limit={}", n_cdrs.max(1)))
        .await?;
    let count = got["count"].as_u64().unwrap_or(0) as usize;
    say(
        json_mode,
        format!(
            "▶ CDRs read from standby node {} (its local copy):",
            standby + 1
        ),
    );
    if !json_mode {
        for r in got["cdrs"].as_array().into_iter().flatten().take(10) {
            println!(
                "  {}  {} → {}  {:<9}  billsec {}",
                r["start"].as_str().unwrap_or(""),
                r["caller"].as_str().unwrap_or(""),
                r["callee"].as_str().unwrap_or(""),
                r["disposition"].as_str().unwrap_or(""),
                r["billsec"]
            );
        }
        if count > 10 {
            println!("  … and {} more", count - 10);
        }
    }
    let ok = count == n_cdrs;
    say(
        json_mode,
        if ok {
            format!("✔ all {n_cdrs} CDRs present on the standby after the failover; stopping the cluster")
        } else {
            format!("✘ only {count} of {n_cdrs} CDRs on the standby")
        },
    );
    if json_mode {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "killed_master": master + 1, "new_master": new_master + 1, "failover_ms": failover_ms,
                "cdrs_written": n_cdrs, "cdrs_on_standby": count, "standby": standby + 1, "ok": ok,
            }))?
        );
    }
    if !ok {
        bail!("CDRs missing on the standby after failover");
    }
    Ok(())
}

/// Keep `Path` in the public API of this module for tests that inspect data dirs.
pub fn node_log(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}
