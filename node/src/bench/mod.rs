//! `tandem bench`: benchmarks (see docs/benchmarks.md).
//!
//! Everything is measured in one run on local clusters of this same binary (spawned
//! through [`LocalCluster`], killed and removed at the end, also on error or Ctrl-C):
//!
//! 1. write throughput and commit latency with 1 node (baseline) and 3 nodes on
//!    127.0.0.1-3, for each writer count in `--writers` (one CDR per request, plus a
//!    batched variant with `--batch N`);
//! 2. standby lag at half the 3-node 64-writer throughput (leader commit → standby
//!    apply, from `/health` polled every 10 ms);
//! 3. RSS and disk use of each node;
//! 4. standby queries over `--query-rows` CDRs: a 10,000-row time range as JSON and a
//!    streamed CSV export of everything, with the standby's RSS during the export.
//!
//! Targets are printed next to the figures as PASS/MISS; a MISS never fails the command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod recordings;
pub mod slow;

use anyhow::{bail, Context};
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, TimeZone, Utc};
use clap::Args;
use serde::Serialize;
use tandem_api::{Cdr, CdrFilter, CdrPage, CdrsAdded, Client, Health};
use tandem_harness::LocalCluster;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds each write phase (and the standby-lag phase) runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent writers of the write phases, comma-separated (e.g. 1,16,64).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub writers: Vec<usize>,
    /// CDRs per request for an extra batched variant of every write phase
    /// (1 = only one CDR per request).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// CDRs loaded into the 3-node cluster for the standby query benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    pub query_rows: usize,
    /// Skip the write throughput/latency phases.
    #[arg(long)]
    pub skip_writes: bool,
    /// Skip the standby lag phase.
    #[arg(long)]
    pub skip_lag: bool,
    /// Skip the standby query benchmark.
    #[arg(long)]
    pub skip_query: bool,
    /// sled page cache of every benchmark node, MiB (`[cluster] cache_mb`; default:
    /// the node's default, 64).
    #[arg(long)]
    pub cache_mb: Option<u64>,
    #[command(flatten)]
    pub rec: recordings::RecordingBenchArgs,
    #[command(flatten)]
    pub slow: slow::SlowBenchArgs,
}

const CDRS: &str = "/api/v1/cdrs";
const LOOPBACK_3: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

// Targets (from the issue).
const T_MANY_WRITERS: usize = 64;
const T_MANY_CDRS_PER_S: f64 = 20_000.0;
const T_MANY_P99_MS: f64 = 25.0;
const T_ONE_CDRS_PER_S: f64 = 1_000.0;
const T_ONE_P50_MS: f64 = 1.0;
const T_LAG_P99_MS: f64 = 100.0;
const T_RANGE_QUERY_MS: f64 = 50.0;
const T_EXPORT_S: f64 = 3.0;

/// Writers of the rate-limited load in the lag phase.
const LAG_WRITERS: usize = 64;
/// Most leader indexes followed in the lag phase.
const LAG_SAMPLES: usize = 500;
const LAG_POLL: Duration = Duration::from_millis(10);
/// Rows per POST and concurrent loaders when loading the query data set.
const LOAD_BATCH: usize = 5_000;
const LOADERS: usize = 4;
/// Rows returned by the time-range query.
const RANGE_ROWS: usize = 10_000;
const RANGE_RUNS: usize = 5;

pub async fn run(args: BenchArgs, json: bool) -> anyhow::Result<()> {
    check_args(&args)?;
    slow::check_args(&args.slow)?;
    if args.slow.slow_connections.is_some() {
        let exe = std::env::current_exe().context("locating the tandem binary")?;
        return tokio::select! {
            r = slow::run(&exe, &args.slow, json) => r,
            _ = tokio::signal::ctrl_c() => {
                bail!("interrupted: the benchmark cluster was stopped and removed")
            }
        };
    }
    if args.rec.recordings {
        let exe = std::env::current_exe().context("locating the tandem binary")?;
        return tokio::select! {
            r = recordings::run(&exe, &args.rec, json) => r,
            _ = tokio::signal::ctrl_c() => {
                bail!("interrupted: the benchmark cluster was stopped and removed")
            }
        };
    }
    tokio::select! {
        r = bench(args, json) => r,
        _ = tokio::signal::ctrl_c() => {
            bail!("interrupted: the benchmark clusters were stopped and removed")
        }
    }
    // Clusters live inside `bench`: dropping it kills the nodes and removes their data.
}

fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    if args.seconds == 0 || args.seconds > 3600 {
        bail!("--seconds must be between 1 and 3600");
    }
    if args.cache_mb.is_some_and(|mb| mb == 0 || mb > 65_536) {
        bail!("--cache-mb must be between 1 and 65536 (MiB)");
    }
    if args.writers.is_empty() || args.writers.iter().any(|w| *w == 0 || *w > 4096) {
        bail!("--writers: each writer count must be between 1 and 4096");
    }
    if args.batch == 0 || args.batch > crate::http::MAX_BATCH {
        bail!(
            "--batch must be between 1 and {} (the API's limit per request)",
            crate::http::MAX_BATCH
        );
    }
    if !args.skip_query && args.query_rows == 0 {
        bail!("--query-rows must be at least 1 (or use --skip-query)");
    }
    Ok(())
}

/// Human output on stdout (unless `--json`); progress always on stderr.
struct Out {
    json: bool,
}

impl Out {
    fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }
    fn progress(&self, text: impl AsRef<str>) {
        eprintln!("{}", text.as_ref());
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn mb(bytes: u64) -> f64 {
    round2(bytes as f64 / (1024.0 * 1024.0))
}

/// Integer with thousands separators.
fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let first = match s.len() % 3 {
        0 => 3.min(s.len()),
        r => r,
    };
    let mut out = s[..first].to_string();
    for group in s.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or(""));
    }
    out
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

/// Latency (or lag) summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Summary {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl Summary {
    fn of(mut v: Vec<f64>) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let pct = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            samples: n,
            p50_ms: round2(pct(0.50)),
            p99_ms: round2(pct(0.99)),
            max_ms: round2(v[n - 1]),
            mean_ms: round2(v.iter().sum::<f64>() / n as f64),
        }
    }
}

/// One write phase.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    nodes: usize,
    writers: usize,
    batch: usize,
    seconds: f64,
    requests: u64,
    cdrs: u64,
    errors: u64,
    cdrs_per_s: f64,
    requests_per_s: f64,
    latency: Summary,
    /// CPU used during the phase, in % of one core (this process / all nodes).
    client_cpu_pct: f64,
    nodes_cpu_pct: f64,
}

/// CPU seconds (user + system) of a process from /proc/<pid>/stat (USER_HZ = 100).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Measures the CPU used by this process and by the node processes over a span.
struct CpuMeter {
    t0: Instant,
    pids: Vec<u32>,
    client0: f64,
    nodes0: f64,
}

impl CpuMeter {
    fn start(pids: Vec<u32>) -> CpuMeter {
        let nodes0 = pids.iter().map(|p| cpu_secs(&p.to_string())).sum();
        CpuMeter {
            t0: Instant::now(),
            client0: cpu_secs("self"),
            nodes0,
            pids,
        }
    }
    /// (client %, nodes %) of one core.
    fn finish(&self) -> (f64, f64) {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let nodes: f64 = self.pids.iter().map(|p| cpu_secs(&p.to_string())).sum();
        (
            round2(100.0 * (cpu_secs("self") - self.client0) / wall),
            round2(100.0 * (nodes - self.nodes0) / wall),
        )
    }
}

/// A CDR for call number `i` starting at `start`.
fn call_cdr(i: u64, start: DateTime<Utc>) -> Cdr {
    let answer = (i % 4 != 3).then(|| start + ChronoDuration::seconds(3));
    let end = start + ChronoDuration::seconds(20 + (i % 100) as i64);
    Cdr::new_call(
        &format!("1{:04}", i % 10_000),
        &format!("2{:04}", (i * 7) % 10_000),
        start,
        answer,
        end,
        "bench",
    )
}

/// A POST body of `batch` fresh CDRs (one object when `batch` is 1).
fn write_body(writer: u64, seq: &mut u64, batch: usize, start: DateTime<Utc>) -> Vec<u8> {
    let mut next = || {
        *seq += 1;
        call_cdr(writer * 1_000_000_000 + *seq, start)
    };
    let body = if batch == 1 {
        serde_json::to_vec(&next())
    } else {
        serde_json::to_vec(&(0..batch).map(|_| next()).collect::<Vec<_>>())
    };
    body.expect("a CDR serializes")
}

/// `writers` tasks post CDRs in a closed loop for `dur`.
async fn write_phase(
    client: &Arc<Client>,
    nodes: usize,
    writers: usize,
    batch: usize,
    dur: Duration,
) -> anyhow::Result<Phase> {
    let call_start = Utc::now() - ChronoDuration::minutes(5);
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut cdrs, mut errors, mut seq) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let body = write_body(w as u64, &mut seq, batch, call_start);
                let t = Instant::now();
                match client.post_raw::<CdrsAdded>(CDRS, body).await {
                    Ok((201, added)) => {
                        lat.push(ms(t.elapsed()));
                        cdrs += u64::from(added.inserted);
                    }
                    _ => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (lat, cdrs, errors)
        }));
    }
    let (mut lat, mut cdrs, mut errors) = (Vec::new(), 0u64, 0u64);
    for t in tasks {
        let (l, c, e) = t.await.context("writer task")?;
        lat.extend(l);
        cdrs += c;
        errors += e;
    }
    let secs = t0.elapsed().as_secs_f64();
    let requests = lat.len() as u64;
    Ok(Phase {
        nodes,
        writers,
        batch,
        seconds: round2(secs),
        requests,
        cdrs,
        errors,
        cdrs_per_s: round2(cdrs as f64 / secs),
        requests_per_s: round2(requests as f64 / secs),
        latency: Summary::of(lat),
        client_cpu_pct: 0.0,
        nodes_cpu_pct: 0.0,
    })
}

/// Start an `n`-node cluster on loopback and return it with the master's index.
async fn start_cluster(
    exe: &Path,
    n: usize,
    cache_mb: Option<u64>,
    out: &Out,
) -> anyhow::Result<(LocalCluster, usize)> {
    let ips: &[&str] = if n == 1 {
        &LOOPBACK_3[..1]
    } else {
        &LOOPBACK_3
    };
    let extra = cache_mb
        .map(|mb| format!("cache_mb = {mb}"))
        .unwrap_or_default();
    let mut cluster = LocalCluster::prepare(exe.to_path_buf(), n, ips, &extra)?;
    out.progress(format!(
        "▶ starting a {n}-node cluster on {} (data under {})",
        ips.join(", "),
        cluster.root.display()
    ));
    cluster.bootstrap().await?;
    let t0 = Instant::now();
    loop {
        if let Some(m) = cluster.master().await {
            return Ok((cluster, m));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("no master within 20 s after bootstrapping {n} nodes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pid_of(cluster: &LocalCluster, i: usize) -> Option<u32> {
    cluster.nodes[i].child.as_ref().and_then(|c| c.id())
}

/// (VmRSS, VmHWM) of a process in bytes.
fn proc_mem(pid: u32) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of all files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// Filesystem type holding `path` (longest matching mount point in /proc/mounts).
fn fs_type(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

#[derive(Debug, Clone, Serialize)]
struct NodeResources {
    node: u64,
    pid: Option<u32>,
    rss_mb: Option<f64>,
    peak_rss_mb: Option<f64>,
    disk_mb: f64,
}

fn resources(cluster: &LocalCluster) -> Vec<NodeResources> {
    (0..cluster.nodes.len())
        .map(|i| {
            let pid = pid_of(cluster, i);
            let (rss, hwm) = pid.map(proc_mem).unwrap_or((None, None));
            NodeResources {
                node: cluster.nodes[i].id,
                pid,
                rss_mb: rss.map(mb),
                peak_rss_mb: hwm.map(mb),
                disk_mb: mb(dir_size(&cluster.nodes[i].dir)),
            }
        })
        .collect()
}

fn show_resources(out: &Out, title: &str, res: &[NodeResources]) {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    out.say(title);
    out.say(format!(
        "  {:<6} {:>8} {:>10} {:>14} {:>10}",
        "node", "pid", "RSS MB", "peak RSS MB", "disk MB"
    ));
    for r in res {
        out.say(format!(
            "  {:<6} {:>8} {:>10} {:>14} {:>10.1}",
            r.node,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            opt(r.rss_mb),
            opt(r.peak_rss_mb),
            r.disk_mb
        ));
    }
}

/// Run the write phases on one cluster (after a short unreported warm-up).
async fn write_phases(
    cluster: &LocalCluster,
    client: &Arc<Client>,
    nodes: usize,
    args: &BenchArgs,
    out: &Out,
) -> anyhow::Result<Vec<Phase>> {
    let max_writers = args.writers.iter().copied().max().unwrap_or(1);
    out.progress(format!(
        "  warm-up: {max_writers} writers for 1 s (not reported)"
    ));
    write_phase(client, nodes, max_writers, 1, Duration::from_secs(1)).await?;
    let mut batches = vec![1];
    if args.batch > 1 {
        batches.push(args.batch);
    }
    let mut phases = Vec::new();
    for &batch in &batches {
        for &writers in &args.writers {
            out.progress(format!(
                "  {nodes} node(s): {writers} writer(s) × {batch} CDR(s)/request for {} s",
                args.seconds
            ));
            let pids = (0..cluster.nodes.len())
                .filter_map(|i| pid_of(cluster, i))
                .collect();
            let cpu = CpuMeter::start(pids);
            let mut p = write_phase(
                client,
                nodes,
                writers,
                batch,
                Duration::from_secs(args.seconds),
            )
            .await?;
            (p.client_cpu_pct, p.nodes_cpu_pct) = cpu.finish();
            out.progress(format!(
                "    {} CDRs/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; CPU: bench {:.0}%, nodes {:.0}%",
                thousands(p.cdrs_per_s),
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.errors,
                p.client_cpu_pct,
                p.nodes_cpu_pct
            ));
            phases.push(p);
        }
    }
    Ok(phases)
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    name: String,
    value: f64,
    unit: &'static str,
    target: String,
    pass: bool,
}

fn write_targets(phases: &[Phase]) -> Vec<Target> {
    let mut t = Vec::new();
    for p in phases.iter().filter(|p| p.nodes == 3 && p.batch == 1) {
        if p.writers >= T_MANY_WRITERS {
            t.push(Target {
                name: format!("3 nodes, {} writers: committed CDRs/s", p.writers),
                value: p.cdrs_per_s,
                unit: "CDRs/s",
                target: format!(">= {}", thousands(T_MANY_CDRS_PER_S)),
                pass: p.cdrs_per_s >= T_MANY_CDRS_PER_S,
            });
            t.push(Target {
                name: format!("3 nodes, {} writers: commit latency p99", p.writers),
                value: p.latency.p99_ms,
                unit: "ms",
                target: format!("<= {T_MANY_P99_MS} ms"),
                pass: p.latency.samples > 0 && p.latency.p99_ms <= T_MANY_P99_MS,
            });
        }
        if p.writers == 1 {
            t.push(Target {
                name: "3 nodes, 1 writer: committed CDRs/s".into(),
                value: p.cdrs_per_s,
                unit: "CDRs/s",
                target: format!(">= {}", thousands(T_ONE_CDRS_PER_S)),
                pass: p.cdrs_per_s >= T_ONE_CDRS_PER_S,
            });
            t.push(Target {
                name: "3 nodes, 1 writer: commit latency p50".into(),
                value: p.latency.p50_ms,
                unit: "ms",
                target: format!("<= {T_ONE_P50_MS} ms"),
                pass: p.latency.samples > 0 && p.latency.p50_ms <= T_ONE_P50_MS,
            });
        }
    }
    t
}

fn show_target(out: &Out, t: &Target) {
    let value = if t.unit == "ms" {
        format!("{:.2} ms", t.value)
    } else {
        format!("{} {}", thousands(t.value), t.unit)
    };
    out.say(format!(
        "  {:<48} {:>16}  (target {:<12}) {}",
        t.name,
        value,
        t.target,
        verdict(t.pass)
    ));
}

fn show_phases(out: &Out, phases: &[Phase], seconds: u64) {
    out.say(format!(
        "Write throughput and commit latency (POST to the master until 201; {seconds} s per phase; CPU in % of one core)"
    ));
    out.say(format!(
        "  {:<5} {:>7} {:>5} {:>12} {:>10} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10}",
        "nodes",
        "writers",
        "batch",
        "CDRs/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "bench CPU",
        "nodes CPU"
    ));
    for p in phases {
        out.say(format!(
            "  {:<5} {:>7} {:>5} {:>12} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>9.0}% {:>9.0}%",
            p.nodes,
            p.writers,
            p.batch,
            thousands(p.cdrs_per_s),
            thousands(p.requests_per_s),
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.latency.max_ms,
            p.errors,
            p.client_cpu_pct,
            p.nodes_cpu_pct
        ));
    }
}

/// 3-node vs 1-node throughput of one (writers, batch) measured on both.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    writers: usize,
    batch: usize,
    three_vs_one_node: f64,
}

/// 3-node vs 1-node throughput for each (writers, batch) measured on both.
fn ratios(phases: &[Phase]) -> Vec<Ratio> {
    phases
        .iter()
        .filter(|p| p.nodes == 3)
        .filter_map(|p3| {
            let p1 = phases
                .iter()
                .find(|p| p.nodes == 1 && p.writers == p3.writers && p.batch == p3.batch)?;
            (p1.cdrs_per_s > 0.0).then(|| Ratio {
                writers: p3.writers,
                batch: p3.batch,
                three_vs_one_node: round2(p3.cdrs_per_s / p1.cdrs_per_s),
            })
        })
        .collect()
}

/// Poll `/health` of node `api_addr` every 10 ms until `until`; returns (time, index)
/// with time = midpoint of the request and index = `field` of the answer.
fn spawn_poller(
    api_addr: &str,
    field: fn(&Health) -> u64,
    until: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<Vec<(Instant, u64)>>> {
    let c = Client::new(format!("http://{api_addr}"), None)?;
    Ok(tokio::spawn(async move {
        let mut series = Vec::new();
        let mut tick = tokio::time::interval(LAG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while Instant::now() < until {
            tick.tick().await;
            let t0 = Instant::now();
            if let Ok(h) = c.health().await {
                let t1 = Instant::now();
                series.push((t0 + (t1 - t0) / 2, field(&h)));
            }
        }
        series
    }))
}

/// Rate-limited writers plus `/health` pollers; lag per standby.
async fn lag_phase(
    cluster: &LocalCluster,
    master: usize,
    client: &Arc<Client>,
    rate: f64,
    dur: Duration,
) -> anyhow::Result<LagReport> {
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let poll_until = deadline + Duration::from_secs(3);
    let mut pollers = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let field: fn(&Health) -> u64 = if i == master {
            |h| h.commit_index
        } else {
            |h| h.applied_index
        };
        pollers.push((i, spawn_poller(&n.api_addr, field, poll_until)?));
    }

    let next = Arc::new(AtomicU64::new(0));
    let call_start = Utc::now() - ChronoDuration::minutes(5);
    let mut writers = Vec::new();
    for w in 0..LAG_WRITERS {
        let client = client.clone();
        let next = next.clone();
        writers.push(tokio::spawn(async move {
            let (mut lat, mut cdrs, mut errors, mut seq) = (Vec::new(), 0u64, 0u64, 0u64);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let at = t0 + Duration::from_secs_f64(k as f64 / rate);
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let body = write_body(1_000 + w as u64, &mut seq, 1, call_start);
                let t = Instant::now();
                match client.post_raw::<CdrsAdded>(CDRS, body).await {
                    Ok((201, added)) => {
                        lat.push(ms(t.elapsed()));
                        cdrs += u64::from(added.inserted);
                    }
                    _ => errors += 1,
                }
            }
            (lat, cdrs, errors)
        }));
    }
    let (mut lat, mut cdrs, mut errors) = (Vec::new(), 0u64, 0u64);
    for t in writers {
        let (l, c, e) = t.await.context("lag writer task")?;
        lat.extend(l);
        cdrs += c;
        errors += e;
    }
    let write_secs = t0.elapsed().as_secs_f64();
    let mut series = Vec::new();
    for (i, p) in pollers {
        series.push((i, p.await.context("poller task")?));
    }
    let leader = series
        .iter()
        .find(|(i, _)| *i == master)
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    // Indexes at which the leader's commit index was first seen (during the load).
    let points: Vec<(Instant, u64)> = leader
        .windows(2)
        .filter(|w| w[1].1 > w[0].1 && w[1].0 <= deadline)
        .map(|w| w[1])
        .collect();
    let step = points.len().div_ceil(LAG_SAMPLES).max(1);
    let sampled: Vec<(Instant, u64)> = points.iter().step_by(step).copied().collect();
    let mut standbys = Vec::new();
    let mut all = Vec::new();
    let mut worst_p99 = 0f64;
    let mut any_missing = false;
    for (i, s) in series.iter().filter(|(i, _)| *i != master) {
        let mut lags = Vec::new();
        let mut missing = 0usize;
        for (tl, x) in &sampled {
            let j = s.partition_point(|(_, a)| a < x);
            match s.get(j) {
                Some((ts, _)) => lags.push(ms(ts.saturating_duration_since(*tl))),
                None => missing += 1,
            }
        }
        all.extend(lags.iter().copied());
        let sum = Summary::of(lags);
        worst_p99 = worst_p99.max(sum.p99_ms);
        any_missing |= missing > 0 || sum.samples == 0;
        standbys.push(StandbyLag {
            node: cluster.nodes[*i].id,
            lag: sum,
            not_applied_within_3s: missing,
            polls: s.len(),
        });
    }
    let overall = Summary::of(all);
    Ok(LagReport {
        target_rate_cdrs_per_s: round2(rate),
        achieved_cdrs_per_s: round2(cdrs as f64 / write_secs),
        seconds: round2(write_secs),
        cdrs,
        errors,
        commit_latency: Summary::of(lat),
        leader_polls: leader.len(),
        sampled_indexes: sampled.len(),
        poll_interval_ms: LAG_POLL.as_millis() as u64,
        standbys,
        overall,
        worst_standby_p99_ms: worst_p99,
        target_p99_ms: T_LAG_P99_MS,
        pass: !any_missing && worst_p99 <= T_LAG_P99_MS,
    })
}

/// Counts bytes and newlines of a streamed body without keeping it.
#[derive(Default)]
struct LineCounter {
    lines: u64,
    bytes: u64,
}

impl std::io::Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Load `rows` CDRs (start times one second apart from `base`) through the master.
/// Returns (seconds, highest committed index).
async fn load_rows(
    client: &Arc<Client>,
    rows: usize,
    base: DateTime<Utc>,
    out: &Out,
) -> anyhow::Result<(f64, u64)> {
    let batches = rows.div_ceil(LOAD_BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let loaded = Arc::new(AtomicU64::new(0));
    let max_index = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    // Generous bound: 10 minutes plus 2 ms per row.
    let deadline = t0 + Duration::from_secs(600) + Duration::from_millis(2 * rows as u64);
    let mut tasks = Vec::new();
    for _ in 0..LOADERS.min(batches) {
        let (client, next, loaded, max_index) = (
            client.clone(),
            next.clone(),
            loaded.clone(),
            max_index.clone(),
        );
        let json_mode = out.json;
        tasks.push(tokio::spawn(async move {
            let out = Out { json: json_mode };
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed) as usize;
                if b >= batches {
                    return Ok(());
                }
                let lo = b * LOAD_BATCH;
                let hi = (lo + LOAD_BATCH).min(rows);
                let cdrs: Vec<Cdr> = (lo..hi)
                    .map(|i| call_cdr(i as u64, base + ChronoDuration::seconds(i as i64)))
                    .collect();
                let body = serde_json::to_vec(&cdrs)?;
                let mut attempt = 0;
                let index = loop {
                    if Instant::now() > deadline {
                        bail!("loading {rows} CDRs did not finish in time");
                    }
                    attempt += 1;
                    match client.post_raw::<CdrsAdded>(CDRS, body.clone()).await {
                        Ok((_, added)) => break added.index,
                        Err(e) if attempt >= 5 => {
                            return Err(anyhow::Error::new(e).context(format!(
                                "loading rows {lo}..{hi} failed 5 times ({} of {rows} rows loaded, {:.0} s into the load)",
                                loaded.load(Ordering::Relaxed),
                                t0.elapsed().as_secs_f64()
                            )))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                };
                max_index.fetch_max(index, Ordering::Relaxed);
                let n = (hi - lo) as u64;
                let before = loaded.fetch_add(n, Ordering::Relaxed);
                if (before + n) / 100_000 > before / 100_000 || before + n == rows as u64 {
                    let secs = t0.elapsed().as_secs_f64();
                    out.progress(format!(
                        "    loaded {} / {} CDRs ({} CDRs/s)",
                        thousands((before + n) as f64),
                        thousands(rows as f64),
                        thousands((before + n) as f64 / secs)
                    ));
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("loader task")??;
    }
    Ok((
        t0.elapsed().as_secs_f64(),
        max_index.load(Ordering::Relaxed),
    ))
}

/// Wait until some standby has applied `index`; returns (its index, seconds waited).
async fn wait_standby_applied(
    cluster: &LocalCluster,
    index: u64,
    timeout: Duration,
) -> anyhow::Result<(usize, f64)> {
    let clients = cluster
        .nodes
        .iter()
        .map(|n| n.anonymous())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    loop {
        for (i, c) in clients.iter().enumerate() {
            if let Ok(h) = c.health().await {
                if h.role == "standby" && h.applied_index >= index {
                    return Ok((i, t0.elapsed().as_secs_f64()));
                }
            }
        }
        if t0.elapsed() > timeout {
            bail!("no standby applied index {index} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn query_phase(
    cluster: &LocalCluster,
    master: usize,
    master_client: &Arc<Client>,
    rows: usize,
    out: &Out,
) -> anyhow::Result<QueryReport> {
    let base = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .context("base time")?;
    out.progress(format!(
        "▶ query benchmark: loading {} CDRs ({}-row batches, {LOADERS} loaders) through the master",
        thousands(rows as f64),
        thousands(LOAD_BATCH as f64)
    ));
    let (load_secs, max_index) = load_rows(master_client, rows, base, out).await?;
    // Every loaded row is committed at or below `max_index`; the master may have
    // changed during the load, so ask whoever is master now.
    let now_master = cluster.master().await.unwrap_or(master);
    let leader_commit = match cluster.nodes[now_master].client()?.health().await {
        Ok(h) => h.commit_index.max(max_index),
        Err(_) => max_index,
    };
    let (standby, catch_up) =
        wait_standby_applied(cluster, leader_commit, Duration::from_secs(600)).await?;
    let sc = cluster.nodes[standby].client()?;
    let standby_id = cluster.nodes[standby].id;
    out.progress(format!(
        "  standby node {standby_id} applied everything {catch_up:.2} s after the last commit; querying it"
    ));

    // (a) 10,000-row time ranges as JSON, spread over the data set.
    let expect = RANGE_ROWS.min(rows);
    let span = rows.saturating_sub(RANGE_ROWS);
    let mut runs = Vec::new();
    let mut counts_ok = true;
    for r in 0..RANGE_RUNS {
        let k = span * r / (RANGE_RUNS - 1).max(1);
        let from = base + ChronoDuration::seconds(k as i64);
        let to = from + ChronoDuration::seconds(RANGE_ROWS as i64);
        let filter = CdrFilter {
            from: Some(ts(from)),
            to: Some(ts(to)),
            limit: Some(RANGE_ROWS),
            ..CdrFilter::default()
        };
        // Timed: the answer's bytes as they arrive; decoded after the clock stops.
        let path = format!("{CDRS}{}", filter.query_string("json"));
        let mut buf = Vec::new();
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), sc.download(&path, &mut buf))
            .await
            .context("range query timed out")??;
        runs.push(ms(t.elapsed()));
        let page: CdrPage = serde_json::from_slice(&buf)
            .with_context(|| format!("GET {path}: not a page of CDRs"))?;
        let count = page.count;
        if count != expect {
            counts_ok = false;
            out.progress(format!(
                "  range query {r}: {count} rows, expected {expect}"
            ));
        }
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];

    // (b) streamed CSV export of every loaded row, with the standby's RSS meanwhile.
    let pid = pid_of(cluster, standby);
    let rss_before = pid.and_then(|p| proc_mem(p).0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut peak = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(900) {
                if let Some(rss) = pid.and_then(|p| proc_mem(p).0) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let everything = CdrFilter {
        from: Some(ts(base)),
        to: Some(ts(base + ChronoDuration::seconds(rows as i64))),
        ..CdrFilter::default()
    };
    let mut counter = LineCounter::default();
    let t = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(900),
        sc.cdrs_export(&everything, &mut counter),
    )
    .await;
    let export_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or(0);
    res.context("CSV export timed out")??;
    let (rss_after, hwm) = pid.map(proc_mem).unwrap_or((None, None));
    let peak = Some(peak.max(rss_after.unwrap_or(0))).filter(|p| *p > 0);
    let expect_lines = rows as u64 + 1;

    Ok(QueryReport {
        rows,
        standby: standby_id,
        load: LoadReport {
            seconds: round2(load_secs),
            cdrs_per_s: round2(rows as f64 / load_secs),
            batch: LOAD_BATCH,
            loaders: LOADERS,
            standby_catch_up_s: round2(catch_up),
            commit_index: leader_commit,
        },
        range_query: RangeReport {
            rows: expect,
            runs_ms: runs.iter().map(|x| round2(*x)).collect(),
            median_ms: round2(median),
            counts_ok,
            target_ms: T_RANGE_QUERY_MS,
            pass: counts_ok && median <= T_RANGE_QUERY_MS,
        },
        csv_export: ExportReport {
            seconds: round2(export_secs),
            lines: counter.lines,
            expected_lines: expect_lines,
            lines_ok: counter.lines == expect_lines,
            mb: mb(counter.bytes),
            rows_per_s: round2(rows as f64 / export_secs),
            standby_rss_before_mb: rss_before.map(mb),
            standby_rss_peak_mb: peak.map(mb),
            standby_rss_after_mb: rss_after.map(mb),
            standby_vmhwm_mb: hwm.map(mb),
            target_s: T_EXPORT_S,
            pass: counter.lines == expect_lines && export_secs <= T_EXPORT_S,
        },
    })
}

/// What `--json` prints. It goes out through a `serde_json::Value`, whose maps keep
/// their keys sorted: the output is key for key what it was when it was built with
/// `json!`.
#[derive(Debug, Serialize)]
struct Report {
    config: RunConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<Writes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<Outcome<LagReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<Outcome<QueryReport>>,
    resources: Resources,
}

/// The options and the machine the figures were measured with.
#[derive(Debug, Serialize)]
struct RunConfig {
    seconds: u64,
    writers: Vec<usize>,
    batch: usize,
    /// None with `--skip-query`.
    query_rows: Option<usize>,
    cpus: usize,
    data_dir: String,
    data_fs: Option<String>,
}

/// The write phases of both clusters.
#[derive(Debug, Serialize)]
struct Writes {
    phases: Vec<Phase>,
    three_vs_one_node: Vec<Ratio>,
    targets: Vec<Target>,
}

/// RSS and disk use of the nodes after each part (only the parts that ran).
#[derive(Debug, Default, Serialize)]
struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    one_node_after_writes: Option<Vec<NodeResources>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    three_nodes_after_writes: Option<Vec<NodeResources>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    three_nodes_after_query: Option<Vec<NodeResources>>,
}

/// A phase's figures, or why it has none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Outcome<T> {
    Done(T),
    Failed(PhaseFailure),
}

/// A phase that failed: the error and where its node logs were kept.
#[derive(Debug, Serialize)]
struct PhaseFailure {
    error: String,
    node_logs: Option<String>,
}

/// The standby lag phase.
#[derive(Debug, Serialize)]
struct LagReport {
    target_rate_cdrs_per_s: f64,
    achieved_cdrs_per_s: f64,
    seconds: f64,
    cdrs: u64,
    errors: u64,
    commit_latency: Summary,
    leader_polls: usize,
    sampled_indexes: usize,
    poll_interval_ms: u64,
    standbys: Vec<StandbyLag>,
    /// All standbys' lags together.
    overall: Summary,
    worst_standby_p99_ms: f64,
    target_p99_ms: f64,
    pass: bool,
}

/// One standby's lag behind the leader's commits.
#[derive(Debug, Serialize)]
struct StandbyLag {
    node: u64,
    lag: Summary,
    not_applied_within_3s: usize,
    polls: usize,
}

/// The standby query benchmark.
#[derive(Debug, Serialize)]
struct QueryReport {
    rows: usize,
    /// Node id of the standby queried.
    standby: u64,
    load: LoadReport,
    range_query: RangeReport,
    csv_export: ExportReport,
}

/// Loading the data set through the master.
#[derive(Debug, Serialize)]
struct LoadReport {
    seconds: f64,
    cdrs_per_s: f64,
    batch: usize,
    loaders: usize,
    standby_catch_up_s: f64,
    commit_index: u64,
}

/// The time-range queries as JSON.
#[derive(Debug, Serialize)]
struct RangeReport {
    rows: usize,
    runs_ms: Vec<f64>,
    median_ms: f64,
    counts_ok: bool,
    target_ms: f64,
    pass: bool,
}

/// The streamed CSV export of every row.
#[derive(Debug, Serialize)]
struct ExportReport {
    seconds: f64,
    lines: u64,
    expected_lines: u64,
    lines_ok: bool,
    mb: f64,
    rows_per_s: f64,
    standby_rss_before_mb: Option<f64>,
    standby_rss_peak_mb: Option<f64>,
    standby_rss_after_mb: Option<f64>,
    standby_vmhwm_mb: Option<f64>,
    target_s: f64,
    pass: bool,
}

fn opt_mb(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1} MB"))
        .unwrap_or_else(|| "-".into())
}

fn show_lag(out: &Out, lag: &LagReport) {
    out.say(format!(
        "Standby lag (leader commit → standby apply; /health polled every {} ms, so ±{} ms resolution)",
        lag.poll_interval_ms, lag.poll_interval_ms
    ));
    out.say(format!(
        "  load: {} CDRs/s target (half the 3-node 64-writer rate), {} achieved, {} errors, commit p50 {:.2} ms p99 {:.2} ms",
        thousands(lag.target_rate_cdrs_per_s),
        thousands(lag.achieved_cdrs_per_s),
        lag.errors,
        lag.commit_latency.p50_ms,
        lag.commit_latency.p99_ms,
    ));
    for s in &lag.standbys {
        out.say(format!(
            "  standby node {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} sampled indexes ({} not applied within 3 s)",
            s.node,
            s.lag.p50_ms,
            s.lag.p99_ms,
            s.lag.max_ms,
            s.lag.samples,
            s.not_applied_within_3s,
        ));
    }
    out.say(format!(
        "  all standbys together: p50 {:.1} ms, p99 {:.1} ms; worst standby p99 {:.1} ms  (target p99 <= {T_LAG_P99_MS} ms on every standby) {}",
        lag.overall.p50_ms,
        lag.overall.p99_ms,
        lag.worst_standby_p99_ms,
        verdict(lag.pass)
    ));
}

fn show_query(out: &Out, q: &QueryReport) {
    let (l, r, c) = (&q.load, &q.range_query, &q.csv_export);
    out.say(format!(
        "Standby queries (3 nodes, {} CDRs, queried on standby node {})",
        thousands(q.rows as f64),
        q.standby
    ));
    out.say(format!(
        "  load: {:.1} s ({} CDRs/s, {}-row POSTs, {} loaders); standby caught up {:.2} s after the last commit",
        l.seconds,
        thousands(l.cdrs_per_s),
        l.batch,
        l.loaders,
        l.standby_catch_up_s
    ));
    let runs: Vec<String> = r.runs_ms.iter().map(|x| format!("{x:.1}")).collect();
    out.say(format!(
        "  time-range query, {} rows as JSON: median {:.1} ms (runs: {} ms){}  (target <= {T_RANGE_QUERY_MS} ms) {}",
        thousands(r.rows as f64),
        r.median_ms,
        runs.join(", "),
        if r.counts_ok { "" } else { " WRONG ROW COUNT" },
        verdict(r.pass)
    ));
    out.say(format!(
        "  CSV export of all rows: {:.2} s, {} lines (expected {}), {:.1} MB, {} rows/s  (target <= {T_EXPORT_S} s) {}",
        c.seconds,
        thousands(c.lines as f64),
        thousands(c.expected_lines as f64),
        c.mb,
        thousands(c.rows_per_s),
        verdict(c.pass)
    ));
    out.say(format!(
        "  standby RSS during the export: before {}, peak {}, after {} (VmHWM since start {})",
        opt_mb(c.standby_rss_before_mb),
        opt_mb(c.standby_rss_peak_mb),
        opt_mb(c.standby_rss_after_mb),
        opt_mb(c.standby_vmhwm_mb),
    ));
}

async fn bench(args: BenchArgs, json_mode: bool) -> anyhow::Result<()> {
    let out = Out { json: json_mode };
    let exe = std::env::current_exe().context("locating the tandem binary")?;
    let tmp: PathBuf = std::env::temp_dir();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut report = Report {
        config: RunConfig {
            seconds: args.seconds,
            writers: args.writers.clone(),
            batch: args.batch,
            query_rows: (!args.skip_query).then_some(args.query_rows),
            cpus: cores,
            data_dir: tmp.display().to_string(),
            data_fs: fs_type(&tmp),
        },
        writes: None,
        lag: None,
        query: None,
        resources: Resources::default(),
    };
    out.say(format!(
        "tandem bench: {} CPU(s), node data under {} ({}), {} s per phase",
        cores,
        tmp.display(),
        fs_type(&tmp).unwrap_or_else(|| "?".into()),
        args.seconds
    ));
    out.say("");

    let mut phases = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut one_node_res = Vec::new();
    if !args.skip_writes {
        let (cluster, master) = start_cluster(&exe, 1, args.cache_mb, &out).await?;
        let client = Arc::new(cluster.nodes[master].client()?);
        phases.extend(write_phases(&cluster, &client, 1, &args, &out).await?);
        one_node_res = resources(&cluster);
        report.resources.one_node_after_writes = Some(one_node_res.clone());
        drop(cluster);
    }

    if !(args.skip_writes && args.skip_lag && args.skip_query) {
        let (cluster, master) = start_cluster(&exe, 3, args.cache_mb, &out).await?;
        let client = Arc::new(cluster.nodes[master].client()?);
        if !args.skip_writes {
            phases.extend(write_phases(&cluster, &client, 3, &args, &out).await?);
            let three_node_res = resources(&cluster);
            report.resources.three_nodes_after_writes = Some(three_node_res.clone());
            let targets = write_targets(&phases);
            show_phases(&out, &phases, args.seconds);
            let r = ratios(&phases);
            for x in &r {
                out.say(format!(
                    "  3 nodes / 1 node throughput at {} writer(s), batch {}: {:.2}×",
                    x.writers, x.batch, x.three_vs_one_node
                ));
            }
            out.say("Targets (3 nodes, one CDR per request):");
            if targets.is_empty() {
                out.say("  none measured (needs --writers with 1 and/or >= 64)");
            }
            for t in &targets {
                show_target(&out, t);
            }
            out.say("");
            report.writes = Some(Writes {
                phases: phases.clone(),
                three_vs_one_node: r,
                targets,
            });
            show_resources(
                &out,
                "Node resources after the 1-node write phases",
                &one_node_res,
            );
            show_resources(
                &out,
                "Node resources after the 3-node write phases",
                &three_node_res,
            );
            out.say("");
        }

        if !args.skip_lag {
            let measured = phases
                .iter()
                .filter(|p| p.nodes == 3 && p.batch == 1 && p.writers == T_MANY_WRITERS)
                .map(|p| p.cdrs_per_s)
                .next();
            let lag = async {
                let full = match measured {
                    Some(r) if r > 0.0 => r,
                    _ => {
                        let secs = args.seconds.min(3);
                        out.progress(format!(
                            "▶ measuring the 3-node {T_MANY_WRITERS}-writer rate for {secs} s (for the lag load)"
                        ));
                        write_phase(&client, 3, T_MANY_WRITERS, 1, Duration::from_secs(secs))
                            .await?
                            .cdrs_per_s
                    }
                };
                let rate = (full / 2.0).max(1.0);
                out.progress(format!(
                    "▶ standby lag: {} CDRs/s for {} s",
                    thousands(rate),
                    args.seconds
                ));
                lag_phase(
                    &cluster,
                    master,
                    &client,
                    rate,
                    Duration::from_secs(args.seconds),
                )
                .await
            }
            .await;
            match lag {
                Ok(lag) => {
                    show_lag(&out, &lag);
                    report.lag = Some(Outcome::Done(lag));
                }
                Err(e) => {
                    let v = phase_failed(&out, &cluster, "standby lag", &e);
                    report.lag = Some(Outcome::Failed(v));
                    failure.get_or_insert(e);
                }
            }
            out.say("");
        }

        if !args.skip_query {
            match query_phase(&cluster, master, &client, args.query_rows, &out).await {
                Ok(q) => {
                    show_query(&out, &q);
                    report.query = Some(Outcome::Done(q));
                }
                Err(e) => {
                    let v = phase_failed(&out, &cluster, "standby query benchmark", &e);
                    report.query = Some(Outcome::Failed(v));
                    failure.get_or_insert(e);
                }
            }
            let after = resources(&cluster);
            show_resources(&out, "Node resources after the query benchmark", &after);
            report.resources.three_nodes_after_query = Some(after);
            out.say("");
        }
        drop(cluster);
    }
    if json_mode {
        let sorted = serde_json::to_value(&report)?;
        println!("{}", serde_json::to_string_pretty(&sorted)?);
    } else if failure.is_none() {
        println!(
            "(a MISS never fails the command; figures depend on this machine's CPUs and disk)"
        );
    }
    match failure {
        Some(e) => Err(e.context("a benchmark phase failed (figures above are still valid)")),
        None => Ok(()),
    }
}

/// Report a failed phase (the other figures are still printed); keeps the node logs,
/// which the cluster's removal would otherwise delete.
fn phase_failed(out: &Out, cluster: &LocalCluster, what: &str, e: &anyhow::Error) -> PhaseFailure {
    let logs = save_logs(cluster);
    out.say(format!("{what}: FAILED: {e:#}"));
    if let Some(dir) = &logs {
        out.say(format!("  node logs kept in {}", dir.display()));
    }
    out.progress(format!("✘ {what} failed: {e:#}"));
    PhaseFailure {
        error: format!("{e:#}"),
        node_logs: logs.map(|d| d.display().to_string()),
    }
}

/// Copy the node logs to a fresh directory next to the cluster's (kept after exit).
fn save_logs(cluster: &LocalCluster) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "tandem-bench-logs-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).ok()?;
    for n in &cluster.nodes {
        let log = n.log_path();
        if let Some(name) = log.file_name() {
            let _ = std::fs::copy(&log, dir.join(name));
        }
    }
    Some(dir)
}
