//! A local cluster: real `tandem run` processes of one binary on 127.0.0.x ports,
//! under one temporary directory.
//!
//! ```text
//!  LocalCluster::prepare(exe, n, ips, extra) ── node<i>.toml under $TMPDIR/tandem-demo-*
//!        │ bootstrap(): `tandem init` node 1, start it, `tandem join` + start the others,
//!        ▼              wait until all vote
//!  LocalNode { child, dir, api_addr, … } ── client() → tandem_api::Client (admin token)
//! ```
//!
//! Used by `tandem demo`, `tandem bench` and the multi-process tests alike, so that
//! what the newcomer runs is what the tests run. Every process is killed and the
//! directory removed on drop (also on panic or error).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tandem_api::{Client, ClusterView, Health};
use tokio::process::{Child, Command};

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
    /// The API serves HTTPS with the node's cluster-CA certificate
    /// ([`LocalCluster::serve_https`]); clients trust `<dir>/tls/ca.pem`.
    pub https: bool,
}

impl LocalNode {
    /// A client of this node's API with the cluster's admin token.
    pub fn client(&self) -> anyhow::Result<Client> {
        let token = std::fs::read_to_string(self.dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string());
        self.client_with(token)
    }

    /// A client of this node's API without a token.
    pub fn anonymous(&self) -> anyhow::Result<Client> {
        self.client_with(None)
    }

    fn client_with(&self, token: Option<String>) -> anyhow::Result<Client> {
        if !self.https {
            return Ok(Client::new(format!("http://{}", self.api_addr), token)?);
        }
        let ca = self.dir.join("tls").join("ca.pem");
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        Ok(Client::with_root(
            format!("https://{}", self.api_addr),
            token,
            Some(&pem),
        )?)
    }

    /// Where this node's log goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
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
    /// The `tandem` binary the nodes run.
    pub exe: PathBuf,
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
                https: false,
            });
        }
        Ok(LocalCluster { root, nodes, exe })
    }

    /// Make every node serve its API over HTTPS with the certificate the cluster CA
    /// issues it at init/join (`<dir>/tls/node.pem`), as the appliance does. Call
    /// before [`LocalCluster::bootstrap`].
    pub fn serve_https(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        for n in &mut self.nodes {
            // `[api]` is the last table of the prepared config.
            let mut f = std::fs::OpenOptions::new().append(true).open(&n.config)?;
            writeln!(
                f,
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                n.dir.join("tls/node.pem").display(),
                n.dir.join("tls/node.key").display()
            )?;
            n.https = true;
        }
        Ok(())
    }

    /// Run `tandem <args>` (this cluster's binary) to completion; its stdout.
    pub async fn tandem(&self, args: &[&str]) -> anyhow::Result<String> {
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
            v.voters == want
        })
        .await?;
        Ok(())
    }

    /// Wait until node `i` (index) answers `/health`.
    pub async fn wait_health(&self, i: usize, timeout: Duration) -> anyhow::Result<Health> {
        let c = self.nodes[i].anonymous()?;
        let t0 = Instant::now();
        loop {
            if let Ok(v) = c.health().await {
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
        pred: impl Fn(&ClusterView) -> bool,
    ) -> anyhow::Result<ClusterView> {
        let t0 = Instant::now();
        // What the nodes last said: a timeout then tells "never true" from "no answer".
        let mut last = String::from("no node answered");
        while t0.elapsed() < timeout {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                match n.client() {
                    Ok(c) => match c.cluster().await {
                        Ok(v) if pred(&v) => return Ok(v),
                        Ok(v) => {
                            last = format!(
                                "node {}: role {}, {} voters, leader {:?}",
                                n.id, v.role, v.voters, v.leader_id
                            )
                        }
                        Err(e) => last = format!("node {}: {e}", n.id),
                    },
                    Err(e) => last = format!("node {}: {e}", n.id),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("timed out after {timeout:?} waiting for {what} (last: {last})")
    }

    /// Index of the node that currently reports itself master.
    pub async fn master(&self) -> Option<usize> {
        for (i, n) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.child.is_some())
        {
            if let Ok(v) = n.anonymous().ok()?.health().await {
                if v.role == "master" {
                    return Some(i);
                }
            }
        }
        None
    }
}
