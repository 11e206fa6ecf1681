//! A scenario: a cluster under a write load and an ARP prober, faults
//! injected by the test, and the invariants checked at the end.
//!
//! ```text
//!  setup ──▶ start_load ──▶ fault … await_failover … heal ──▶ finish
//!  (skip?)   writer+prober   (the test's steps)              heal all, restart dead
//!  seed                                                      nodes, stop load, check
//!                                                            invariants, print figures
//! ```
//!
//! If the scenario ends without [`Scenario::finish`] (error, panic, time
//! bound), dropping it still tears everything down and keeps the logs.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{Cluster, ClusterSpec};
use crate::invariants::failover_time;
use crate::invariants::no_lost_write::{self, Writer, WriterConfig, WriterLog};
use crate::invariants::single_answerer::{self, Prober};
use crate::preflight::{Host, Needs};
use crate::{api, topology};

/// Scenarios share the host's namespaces and port-less addresses: one at a
/// time. Every scenario test takes this lock first.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `CHAOS_SEED` if set, else a random seed.
pub fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            eprintln!("chaos: CHAOS_SEED={s} is not a u64; using a random seed");
            rand::random()
        }),
        Err(_) => rand::random(),
    }
}

/// Run `f` with a time bound; past it the scenario is dropped (torn down) and fails.
pub async fn bounded<F>(name: &str, limit: Duration, f: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => bail!("{name}: did not finish within its time bound of {limit:?}"),
    }
}

/// Milliseconds of a duration, for figures.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// One measured failover.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Instant of the fault.
    pub fault: Instant,
    /// The master before the fault (whose MAC the VIP must leave).
    pub old_master: Option<u64>,
    /// Fault → first 201 of a write sent after it.
    pub write: Option<Duration>,
}

/// One running scenario.
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    /// Randomness of the scenario's choices (durations, order), from the seed.
    pub rng: StdRng,
    pub cluster: Cluster,
    /// Deadline of one write request (raise it under delay).
    pub write_timeout: Duration,
    writer: Option<Writer>,
    prober: Option<Prober>,
    load_started: Option<Instant>,
    /// Failovers measured with [`Scenario::await_failover`].
    pub failovers: Vec<Failover>,
    figures: Vec<(String, String)>,
    failures: Vec<String>,
    finished: bool,
}

impl Scenario {
    /// Print the banner and the seed, check the host, start the cluster.
    /// `Ok(None)`: skipped (the reason is printed).
    pub async fn setup(
        name: &str,
        spec: ClusterSpec,
        needs: Needs,
    ) -> anyhow::Result<Option<Scenario>> {
        println!("=== chaos scenario {name} ===");
        if let Some(why) = Host::get().skip_reason(needs) {
            println!("{name}: skipped: {why}");
            return Ok(None);
        }
        let seed = seed();
        println!("{name}: seed {seed} (replay with CHAOS_SEED={seed})");
        let timers = spec.timers;
        let n = spec.roles.len();
        let t0 = Instant::now();
        let cluster = Cluster::start(spec).await?;
        println!(
            "{name}: {n} nodes up in {} ms ({timers}); namespaces {}*, logs in {}",
            ms(t0.elapsed()),
            cluster.topology().owner.prefix,
            cluster.log_dir.display()
        );
        if !cluster.spec.require_vip {
            println!("{name}: CHAOS_TARGET=nodes: writing to the nodes' own addresses, VIP not required (harness development mode)");
        }
        Ok(Some(Scenario {
            name: name.to_string(),
            seed,
            rng: StdRng::seed_from_u64(seed),
            cluster,
            write_timeout: Duration::from_millis(300),
            writer: None,
            prober: None,
            load_started: None,
            failovers: Vec::new(),
            figures: Vec::new(),
            failures: Vec::new(),
            finished: false,
        }))
    }

    /// Print a progress line.
    pub fn say(&self, text: impl AsRef<str>) {
        println!("{}: {}", self.name, text.as_ref());
    }

    /// Start the ARP prober and the writer (through the VIP); wait for the first acks.
    pub async fn start_load(&mut self) -> anyhow::Result<()> {
        let c = &self.cluster;
        self.prober = Some(Prober::start(&c.client, c.topology().client_mac));
        let targets = if c.spec.require_vip {
            vec![api::base(topology::VIP)]
        } else {
            c.data_ids()
                .iter()
                .map(|id| api::base(c.node(*id).ip))
                .collect()
        };
        self.writer = Some(Writer::start(
            &c.client,
            WriterConfig {
                targets,
                token: c.token.clone(),
                workers: 2,
                batch: 5,
                timeout: self.write_timeout,
            },
        ));
        self.load_started = Some(Instant::now());
        let t0 = Instant::now();
        while self.writer.as_ref().map_or(0, Writer::acks) < 3 {
            if t0.elapsed() > Duration::from_secs(15) {
                bail!("the writer got no 201 through the VIP within 15 s of a master holding it");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Let the load run for a random 1–2 s (from the seed).
    pub async fn warm_up(&mut self) {
        let d = Duration::from_millis(self.rng.gen_range(1000..2000));
        tokio::time::sleep(d).await;
    }

    /// Record that fault `what` started at `at`.
    pub fn fault(&mut self, what: &str, at: Instant) {
        let since = self.load_started.map(|t| ms(at - t)).unwrap_or(0);
        self.say(format!("fault at +{since} ms: {what}"));
    }

    /// Wait for the first write sent after `fault` to be acknowledged; the
    /// failover is recorded (with `old_master`, for the VIP-move figure).
    /// Missing it within `timeout` is a failure.
    pub async fn await_failover(
        &mut self,
        fault: Instant,
        old_master: Option<u64>,
        timeout: Duration,
    ) -> Option<Duration> {
        let write = loop {
            let Some(w) = self.writer.as_ref() else {
                break None;
            };
            if let Some(t) = w.first_ack_sent_after(fault) {
                break Some(t - fault);
            }
            if fault.elapsed() > timeout {
                self.fail(format!(
                    "no write through the VIP succeeded within {timeout:?} of the fault"
                ));
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.failovers.push(Failover {
            fault,
            old_master,
            write,
        });
        write
    }

    /// Fault → first ARP probe in `[fault, until)` answered, and only, by a
    /// node other than `old`: when the VIP was seen on its new holder.
    pub fn vip_moved(&self, old: u64, fault: Instant, until: Option<Instant>) -> Option<Duration> {
        let mac = self.cluster.node(old).mac;
        self.probes()
            .iter()
            .filter(|p| p.at >= fault && before(p.at, until))
            .find(|p| !p.macs.is_empty() && !p.macs.contains(&mac))
            .map(|p| p.at - fault)
    }

    /// Like [`Scenario::vip_moved`], waiting up to `patience` for the probe
    /// that sees it (the prober runs every 50 ms).
    pub async fn await_vip_moved(
        &self,
        old: u64,
        fault: Instant,
        patience: Duration,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        loop {
            let d = self.vip_moved(old, fault, None);
            if d.is_some() || t0.elapsed() > patience {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fault → last ARP probe in `[fault, until)` that `old` answered (None:
    /// it never answered after the fault).
    pub fn old_master_last_arp(
        &self,
        old: u64,
        fault: Instant,
        until: Option<Instant>,
    ) -> Option<Duration> {
        let mac = self.cluster.node(old).mac;
        self.probes()
            .iter()
            .filter(|p| p.at >= fault && before(p.at, until) && p.macs.contains(&mac))
            .map(|p| p.at - fault)
            .max()
    }

    /// Add a figure to the report.
    pub fn figure(&mut self, key: &str, value: impl ToString) {
        self.figures.push((key.to_string(), value.to_string()));
    }

    /// Record a failure (the scenario goes on and fails at the end).
    pub fn fail(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.say(format!("FAILURE: {why}"));
        self.failures.push(why);
    }

    /// Record a failure unless `ok`.
    pub fn check(&mut self, ok: bool, why: impl Into<String>) {
        if !ok {
            self.fail(why);
        }
    }

    /// Longest interval in `[from, to]` without an acknowledged write so far.
    pub fn service_gap(&self, from: Instant, to: Instant) -> Duration {
        let acks = self
            .writer
            .as_ref()
            .map(Writer::acks_snapshot)
            .unwrap_or_default();
        failover_time::longest_gap(&acks, from, to).0
    }

    /// Probes recorded so far.
    pub fn probes(&self) -> Vec<single_answerer::Probe> {
        self.prober
            .as_ref()
            .map(Prober::snapshot)
            .unwrap_or_default()
    }

    /// Stop the load (writer, prober) and return what they saw.
    async fn stop_load(&mut self) -> (WriterLog, Result<Vec<single_answerer::Probe>, String>) {
        let log = match self.writer.take() {
            Some(w) => w.stop().await,
            None => WriterLog::default(),
        };
        let probes = match self.prober.take() {
            Some(p) => p.stop().await,
            None => Ok(Vec::new()),
        };
        (log, probes)
    }

    /// Heal, bring every node back, stop the load, check the invariants,
    /// print the report. An error if any invariant or step failed.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        if let Err(e) = self.cluster.heal_all() {
            self.fail(format!("healing faults: {e:#}"));
        }
        for (id, status) in self.cluster.crashed() {
            self.fail(format!(
                "node {id} exited on its own ({status}); see {}",
                self.cluster.node(id).log.display()
            ));
        }
        let down: Vec<u64> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| !n.is_running())
            .map(|n| n.id)
            .collect();
        for id in down {
            if let Err(e) = self
                .cluster
                .restart_as_standby(id, Duration::from_secs(60))
                .await
            {
                self.fail(format!("restarting node {id}: {e:#}"));
            }
        }
        // Everyone back: one more second of load, then stop.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Each failover is judged on the probes up to the next fault; the old
        // master's last answer is looked for before the VIP showed up elsewhere
        // (answers after that are split brain, checked by the scenarios).
        let mut vip_moves = Vec::new();
        let mut old_silent = Vec::new();
        for (i, f) in self.failovers.iter().enumerate() {
            let Some(old) = f.old_master else { continue };
            let next = self.failovers.get(i + 1).map(|n| n.fault);
            let moved = self.vip_moved(old, f.fault, next);
            vip_moves.extend(moved);
            let until = moved.map(|d| f.fault + d).or(next);
            old_silent.extend(self.old_master_last_arp(old, f.fault, until));
        }
        let stopped_at = Instant::now();
        let (log, probes) = self.stop_load().await;

        // No lost write.
        let acked = log.acked_ids();
        let mut lost_total = 0;
        for id in self.cluster.data_ids() {
            let t0 = Instant::now();
            let lost = loop {
                let m = match self.cluster.cdr_ids(id).await {
                    Ok(stored) => no_lost_write::missing(&acked, &stored),
                    Err(e) => {
                        self.fail(format!("reading CDRs of node {id}: {e:#}"));
                        break Vec::new();
                    }
                };
                if m.is_empty() || t0.elapsed() > Duration::from_secs(20) {
                    break m;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if !lost.is_empty() {
                self.fail(format!(
                    "node {id} lacks {} acknowledged CDR(s), e.g. {}",
                    lost.len(),
                    lost[0]
                ));
            }
            lost_total += lost.len();
        }
        if log.duplicates > 0 {
            self.fail(format!(
                "{} CDR(s) reported as duplicates on first write",
                log.duplicates
            ));
        }

        // Single answerer.
        let verdict = match &probes {
            Ok(p) => single_answerer::check(p),
            Err(e) => {
                self.fail(format!("the ARP prober could not run: {e}"));
                Default::default()
            }
        };
        if self.cluster.spec.require_vip {
            if let Some(v) = verdict.violations.first() {
                let who: Vec<String> = v
                    .macs
                    .iter()
                    .map(|m| match self.cluster.topology().node_of_mac(m) {
                        Some(id) => format!("node {id} ({})", topology::fmt_mac(m)),
                        None => topology::fmt_mac(m),
                    })
                    .collect();
                let since = self.load_started.map(|t| ms(v.at - t)).unwrap_or(0);
                self.fail(format!(
                    "{} probe(s) answered by two MACs; first at +{since} ms: {}",
                    verdict.violations.len(),
                    who.join(" and ")
                ));
            }
            if verdict.probes > 0 && verdict.errors * 10 >= verdict.probes {
                self.fail(format!(
                    "{} of {} ARP probes failed: {}",
                    verdict.errors,
                    verdict.probes,
                    verdict.first_error.clone().unwrap_or_default()
                ));
            }
        }

        // Figures.
        let start = self.load_started.unwrap_or(stopped_at);
        let (gap, gap_at) = failover_time::longest_gap(&log.acks, start, stopped_at);
        let mut lines: Vec<(String, String)> = Vec::new();
        let writes: Vec<Duration> = self.failovers.iter().filter_map(|f| f.write).collect();
        for (key, what, samples) in [
            (
                "failover_ms",
                "fault → first acked write through the VIP",
                &writes,
            ),
            (
                "vip_moved_ms",
                "fault → first ARP answer from the new holder",
                &vip_moves,
            ),
            (
                "old_master_arp_ms",
                "fault → last ARP answer from the old master",
                &old_silent,
            ),
        ] {
            if let Some(text) = summary(samples) {
                lines.push((key.into(), format!("{text}  ({what})")));
            }
        }
        if self.failovers.len() > writes.len() {
            lines.push((
                "failovers_missed".into(),
                (self.failovers.len() - writes.len()).to_string(),
            ));
        }
        lines.push((
            "writes_acked".into(),
            format!(
                "{} CDRs in {} requests ({} requests failed: {:?}; {} CDRs with unknown outcome)",
                acked.len(),
                log.acks.len(),
                log.failed_requests(),
                log.failures,
                log.unknown_ids
            ),
        ));
        lines.push((
            "longest_gap_ms".into(),
            format!("{} (at +{} ms)", ms(gap), ms(gap_at - start)),
        ));
        lines.push((
            "probes".into(),
            format!(
                "{} ({} unanswered, {} errors)",
                verdict.probes, verdict.unanswered, verdict.errors
            ),
        ));
        lines.push((
            "answerer_violations".into(),
            verdict.violations.len().to_string(),
        ));
        lines.push(("lost_writes".into(), lost_total.to_string()));
        lines.extend(self.figures.iter().cloned());
        let passed = self.failures.is_empty();
        println!("--- {} (seed {}) ---", self.name, self.seed);
        for (k, v) in &lines {
            println!("  {k:<20} {v}");
        }
        println!(
            "  {:<20} {}",
            "result",
            if passed { "PASS" } else { "FAIL" }
        );
        let json: serde_json::Map<String, serde_json::Value> = lines
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        println!(
            "chaos-result {}",
            serde_json::json!({"scenario": self.name, "seed": self.seed, "pass": passed,
                "failovers_ms": writes.iter().map(|d| ms(*d) as u64).collect::<Vec<_>>(),
                "vip_moved_ms": vip_moves.iter().map(|d| ms(*d) as u64).collect::<Vec<_>>(),
                "figures": json, "failures": self.failures})
        );
        self.finished = true;
        if passed {
            Ok(())
        } else {
            self.cluster.keep_logs();
            Err(anyhow!(
                "{} failed (seed {}): {}",
                self.name,
                self.seed,
                self.failures.join("; ")
            ))
        }
    }

    /// Failures recorded so far.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }
}

/// Is `t` before `until` (always, if there is no bound)?
fn before(t: Instant, until: Option<Instant>) -> bool {
    match until {
        Some(u) => t < u,
        None => true,
    }
}

/// One value, or percentiles of several.
fn summary(samples: &[Duration]) -> Option<String> {
    match samples {
        [] => None,
        [one] => Some(ms(*one).to_string()),
        many => failover_time::percentiles(many).map(|p| {
            format!(
                "p50 {} p90 {} p99 {} max {} (n={})",
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max),
                many.len()
            )
        }),
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if !self.finished {
            println!(
                "{}: aborted before its checks (seed {}, replay with CHAOS_SEED={})",
                self.name, self.seed, self.seed
            );
            self.cluster.keep_logs();
        }
    }
}
