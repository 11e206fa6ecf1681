//! `tandem bench --slow-connections N`: a resource benchmark under slowloris-style
//! connections (issue 14). Not a timed test: it prints figures and a PASS/FAIL line.
//!
//! ```text
//!  3 nodes on 127.0.0.1-3 (this binary, shipped limits, nofile = the unit's 65536)
//!    baseline: writer (100 CDR/s, pooled keep-alive client) + /health probe (1/s,
//!              a fresh connection each time) on the master and on a standby, and a
//!              phone's SIP/TCP OPTIONS (1/s, fresh connection) on the master
//!    flood:    same, plus N slow connections to EACH port (API, peer, SIP/TCP) of the
//!              master and of the standby, from many 127.x.y.z sources; a connection
//!              the server closes is opened again after --slow-reopen-ms
//!  sampled every second: VmRSS/VmHWM and open fds of both nodes (/proc/<pid>)
//! ```
//!
//! What a slow connection sends: API, a request line and headers one byte every
//! --slow-drip-ms that never end; peer port, a TLS record header and the start of a
//! ClientHello, then one byte per drip; SIP/TCP, the start of an OPTIONS request,
//! then one byte per drip. A connection closed within 1 s of being connected, before
//! any byte came back, counts as refused (closed at accept); a later close as closed
//! (timeout or eviction).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tandem_api::{CdrsAdded, Client};
use tandem_harness::LocalCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Options of the slow-connection benchmark (part of `tandem bench`).
#[derive(clap::Args, Debug, Clone)]
pub struct SlowBenchArgs {
    /// Run the slow-connection resource benchmark with this many slow connections
    /// to each port (API, peer, SIP/TCP) of the master and of a standby.
    #[arg(long, value_name = "N")]
    pub slow_connections: Option<usize>,
    /// Seconds of the flood phase.
    #[arg(long, default_value_t = 60)]
    pub slow_seconds: u64,
    /// Seconds of the baseline phase (writer and probe, no slow connection).
    #[arg(long, default_value_t = 15)]
    pub slow_baseline_seconds: u64,
    /// Slow connections per source address (127.x.y.z); below the ports'
    /// per-source caps (API 256, SIP/TCP 128), so that the global caps are tested.
    #[arg(long, default_value_t = 100)]
    pub slow_per_source: usize,
    /// Pause before a slow connection closed by the server is opened again, ms.
    #[arg(long, default_value_t = 1000)]
    pub slow_reopen_ms: u64,
    /// Pause between two bytes of a slow connection, ms.
    #[arg(long, default_value_t = 2000)]
    pub slow_drip_ms: u64,
    /// Flood only the master's ports (not a standby's).
    #[arg(long)]
    pub slow_master_only: bool,
}

/// The open-file limit of the shipped unit (`LimitNOFILE=65536` in
/// appliance/rootfs/etc/systemd/system/tandem.service): the nodes run with it.
const UNIT_NOFILE: u64 = 65_536;
/// The benchmark's own limit (it holds every slow connection).
const BENCH_NOFILE: u64 = 1 << 20;
/// CDR writes per second of the writer.
const CDR_RATE: u64 = 100;
/// Bounds stated in docs/benchmarks.md.
const BOUND_RSS_MB: f64 = 512.0;
const BOUND_HEALTH: Duration = Duration::from_secs(1);
const BOUND_FD_SHARE: f64 = 0.5;
/// A close this soon after connecting, with nothing received, is a refusal.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The slow connections of one port are opened over this time.
const RAMP: Duration = Duration::from_secs(5);

pub fn check_args(a: &SlowBenchArgs) -> anyhow::Result<()> {
    if let Some(n) = a.slow_connections {
        if n == 0 || n > 20_000 {
            bail!("--slow-connections must be between 1 and 20000");
        }
    }
    if a.slow_seconds == 0 || a.slow_seconds > 3600 {
        bail!("--slow-seconds must be between 1 and 3600");
    }
    if a.slow_baseline_seconds == 0 || a.slow_baseline_seconds > 3600 {
        bail!("--slow-baseline-seconds must be between 1 and 3600");
    }
    if a.slow_per_source == 0 || a.slow_per_source > 10_000 {
        bail!("--slow-per-source must be between 1 and 10000");
    }
    if a.slow_drip_ms == 0 || a.slow_reopen_ms > 60_000 || a.slow_drip_ms > 60_000 {
        bail!("--slow-drip-ms must be 1-60000 and --slow-reopen-ms at most 60000");
    }
    Ok(())
}

/// Which port a slow connection goes to, and what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Api,
    Peer,
    Sip,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Api => "API (HTTP)",
            Port::Peer => "peer (TLS)",
            Port::Sip => "SIP/TCP",
        }
    }

    /// The first bytes sent at once, then one byte of [`Port::drip`] per drip.
    fn prefix(self) -> &'static [u8] {
        match self {
            Port::Api => b"POST /api/v1/cdrs HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nx-slow: ",
            // TLS record header (handshake, 512 bytes announced), ClientHello header,
            // client version 3.3: the rest never comes.
            Port::Peer => &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03],
            Port::Sip => b"OPTIONS sip:bench@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK",
        }
    }

    fn drip(self) -> u8 {
        match self {
            Port::Peer => 0x5a,
            _ => b'a',
        }
    }
}

/// Counters of the slow connections to one port.
#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    connect_failed: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    open_now: AtomicU64,
    peak_open: AtomicU64,
}

impl Counts {
    fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let now = self.open_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }
}

struct Target {
    node: usize,
    port: Port,
    addr: SocketAddr,
    counts: Arc<Counts>,
}

/// Source address of slow connection `i` of target `t`: 127.(100+t).a.b, a new one
/// every `per_source` connections.
fn source(t: usize, i: usize, per_source: usize) -> IpAddr {
    let s = i / per_source;
    IpAddr::V4(Ipv4Addr::new(
        127,
        (100 + t) as u8,
        (s / 250) as u8,
        (s % 250 + 1) as u8,
    ))
}

/// One slow connection, re-opened whenever the server closes it, until `stop`.
async fn slow_client(
    src: IpAddr,
    dst: SocketAddr,
    port: Port,
    counts: Arc<Counts>,
    drip: Duration,
    reopen: Duration,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let sock = match TcpSocket::new_v4() {
            Ok(s) => s,
            Err(_) => {
                counts.connect_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(reopen).await;
                continue;
            }
        };
        let _ = sock.set_reuseaddr(true);
        if sock.bind(SocketAddr::new(src, 0)).is_err() {
            counts.connect_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(reopen).await;
            continue;
        }
        let mut s = match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst)).await {
            Ok(Ok(s)) => s,
            _ => {
                counts.connect_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(reopen).await;
                continue;
            }
        };
        counts.opened();
        let t0 = Instant::now();
        let got_bytes = hold(&mut s, port, drip, &stop).await;
        counts.open_now.fetch_sub(1, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if !got_bytes && t0.elapsed() < REFUSED_WITHIN {
            counts.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.closed.fetch_add(1, Ordering::Relaxed);
        }
        drop(s);
        tokio::time::sleep(reopen).await;
    }
}

/// Sends the prefix, then a byte per drip, until the server closes (or `stop`).
/// True if the server sent anything back (an error answer).
async fn hold(s: &mut TcpStream, port: Port, drip: Duration, stop: &AtomicBool) -> bool {
    let mut got = false;
    if s.write_all(port.prefix()).await.is_err() {
        return got;
    }
    let mut buf = [0u8; 512];
    let mut tick = tokio::time::interval(drip);
    tick.tick().await;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return got,
                Ok(_) => got = true,
            },
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) || s.write_all(&[port.drip()]).await.is_err() {
                    return got;
                }
            }
        }
    }
}

/// (finished at, latency ms, ok)
type Samples = Arc<Mutex<Vec<(Instant, f64, bool)>>>;

fn writer(
    client: Arc<Client>,
    samples: Samples,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CDR_RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = chrono::Utc::now();
        let mut i = 0i64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            i += 1;
            let (client, samples) = (client.clone(), samples.clone());
            tokio::spawn(async move {
                let t = start + chrono::Duration::milliseconds(i);
                let cdr = tandem_api::Cdr::new_call(
                    "100",
                    "200",
                    t,
                    Some(t),
                    t + chrono::Duration::seconds(30),
                    "bench-slow",
                );
                let body = serde_json::to_vec(&cdr).expect("cdr json");
                let t0 = Instant::now();
                let ok = matches!(
                    client.post_raw::<CdrsAdded>("/api/v1/cdrs", body).await,
                    Ok((201, _))
                );
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                samples
                    .lock()
                    .expect("samples")
                    .push((Instant::now(), ms, ok));
            });
        }
    })
}

/// `GET /health` on a fresh connection (as a monitor or load balancer does); ok if
/// answered 200 within [`BOUND_HEALTH`].
async fn probe_once(addr: SocketAddr) -> (f64, bool) {
    let t0 = Instant::now();
    let r = tokio::time::timeout(BOUND_HEALTH, async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<bool, std::io::Error>(out.starts_with(b"HTTP/1.1 200"))
    })
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    (ms, matches!(r, Ok(Ok(true))))
}

/// A phone's OPTIONS over a fresh SIP/TCP connection; ok if a SIP response came
/// within [`BOUND_HEALTH`] (a phone locked out by the flood gets none).
async fn sip_probe_once(addr: SocketAddr, n: u64) -> (f64, bool) {
    let t0 = Instant::now();
    let r = tokio::time::timeout(BOUND_HEALTH, async {
        let mut s = TcpStream::connect(addr).await?;
        let local = s.local_addr()?;
        let msg = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKprobe{n}\r\n\
             From: <sip:probe@{addr}>;tag=p{n}\r\nTo: <sip:{addr}>\r\nCall-ID: bench-probe-{n}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(msg.as_bytes()).await?;
        let mut buf = vec![0u8; 4096];
        let got = s.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..got].starts_with(b"SIP/2.0 "))
    })
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    (ms, matches!(r, Ok(Ok(true))))
}

/// Probes `addr` once a second: `/health`, or with `sip` a SIP/TCP OPTIONS.
fn prober(
    addr: SocketAddr,
    sip: bool,
    samples: Samples,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let (ms, ok) = if sip {
                sip_probe_once(addr, n).await
            } else {
                probe_once(addr).await
            };
            samples
                .lock()
                .expect("samples")
                .push((Instant::now(), ms, ok));
        }
    })
}

/// Peak VmHWM and VmRSS (kB) and open fds of one process, sampled.
#[derive(Default, Clone, Copy)]
struct Usage {
    hwm_kb: u64,
    rss_kb: u64,
    peak_rss_kb: u64,
    fds: u64,
    peak_fds: u64,
}

fn status_kb(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sample(pid: u32, u: &mut Usage) {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        u.hwm_kb = u.hwm_kb.max(status_kb(&text, "VmHWM:"));
        u.rss_kb = status_kb(&text, "VmRSS:");
        u.peak_rss_kb = u.peak_rss_kb.max(u.rss_kb);
    }
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        u.fds = d.count() as u64;
        u.peak_fds = u.peak_fds.max(u.fds);
    }
}

/// The soft open-file limit of a process, from /proc/<pid>/limits.
fn nofile_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// (ok, failed, p50, p99, max) of the samples finished in [from, to].
fn window(s: &Samples, from: Instant, to: Instant) -> (usize, usize, f64, f64, f64) {
    let s = s.lock().expect("samples");
    let mut v: Vec<f64> = Vec::new();
    let mut failed = 0;
    for (t, ms, ok) in s.iter().filter(|(t, _, _)| *t >= from && *t <= to) {
        let _ = t;
        if *ok {
            v.push(*ms);
        } else {
            failed += 1;
        }
    }
    let n = v.len();
    (
        n,
        failed,
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        pct(&mut v, 1.0),
    )
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

fn getrlimit_nofile() -> anyhow::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .context("reading RLIMIT_NOFILE")
}

fn set_nofile(soft: u64, hard: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)
        .with_context(|| format!("setting RLIMIT_NOFILE to {soft}/{hard}"))
}

pub async fn run(
    exe: &std::path::Path,
    args: &SlowBenchArgs,
    json_mode: bool,
) -> anyhow::Result<()> {
    let n = args.slow_connections.unwrap_or(5_000);
    let say = |s: String| {
        if !json_mode {
            println!("{s}");
        }
    };
    // The nodes inherit the unit's limit (or the hard limit, if lower: a
    // container); the benchmark then raises its own soft limit to the hard one (it
    // holds every slow connection's socket).
    let hard = getrlimit_nofile()?.1;
    let hard = if hard < BENCH_NOFILE && set_nofile(BENCH_NOFILE, BENCH_NOFILE).is_ok() {
        BENCH_NOFILE
    } else {
        hard
    };
    let node_nofile = UNIT_NOFILE.min(hard);
    set_nofile(node_nofile, hard)?;
    let mut master_only = args.slow_master_only;
    if !master_only && (6 * n as u64 + 1000) > hard {
        eprintln!("▶ open-file hard limit {hard} is too low for 6 x {n} slow connections: flooding the master's ports only");
        master_only = true;
    }
    if 3 * n as u64 + 1000 > hard {
        bail!("open-file hard limit {hard} is too low for 3 x {n} slow connections; lower --slow-connections");
    }
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let mut cluster = LocalCluster::prepare(exe.to_path_buf(), 3, &ips, "")?;
    let mut sip_ports = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let ip = ips[i];
        let port = free_port(ip)?;
        let text = std::fs::read_to_string(&node.config)?;
        let fixed = text.replacen(
            &format!("[sip]\nlisten = \"{ip}:0\""),
            &format!("[sip]\nlisten = \"{ip}:{port}\""),
            1,
        );
        if fixed == text {
            bail!("could not set the SIP port in {}", node.config.display());
        }
        std::fs::write(&node.config, fixed)?;
        sip_ports.push(port);
    }
    eprintln!(
        "▶ starting 3 nodes on 127.0.0.1-3 (nofile {node_nofile}, the unit sets {UNIT_NOFILE}; shipped limits; data under {})",
        cluster.root.display()
    );
    cluster.bootstrap().await?;
    set_nofile(hard, hard)?;
    let t0 = Instant::now();
    let m = loop {
        if let Some(m) = cluster.master().await {
            break m;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("no master within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sb = (m + 1) % 3;
    let flooded: Vec<usize> = if master_only { vec![m] } else { vec![m, sb] };
    let pid = |i: usize| {
        cluster.nodes[i]
            .child
            .as_ref()
            .and_then(|c| c.id())
            .unwrap_or(0)
    };
    let pids: Vec<u32> = [m, sb].iter().map(|&i| pid(i)).collect();
    let nofile: Vec<Option<u64>> = pids.iter().map(|&p| nofile_of(p)).collect();
    let api = |i: usize| -> anyhow::Result<SocketAddr> { Ok(cluster.nodes[i].api_addr.parse()?) };
    let client = Arc::new(cluster.nodes[m].client()?);

    let stop = Arc::new(AtomicBool::new(false));
    let writes: Samples = Arc::default();
    let health: Vec<Samples> = vec![Arc::default(), Arc::default()];
    let mut tasks = vec![writer(client.clone(), writes.clone(), stop.clone())];
    for (k, &i) in [m, sb].iter().enumerate() {
        tasks.push(prober(api(i)?, false, health[k].clone(), stop.clone()));
    }
    // A phone on the master's SIP/TCP port (only the master runs the SIP service).
    let phone: Samples = Arc::default();
    let master_sip = SocketAddr::new(ips[m].parse()?, sip_ports[m]);
    tasks.push(prober(master_sip, true, phone.clone(), stop.clone()));
    let usage = Arc::new(Mutex::new(vec![Usage::default(); 2]));
    {
        let (usage, stop, pids) = (usage.clone(), stop.clone(), pids.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                {
                    let mut u = usage.lock().expect("usage");
                    for (k, &p) in pids.iter().enumerate() {
                        sample(p, &mut u[k]);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    eprintln!(
        "▶ baseline: {CDR_RATE} CDR writes/s and /health every second for {} s",
        args.slow_baseline_seconds
    );
    let base_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.slow_baseline_seconds)).await;
    let base_to = Instant::now();
    let base_usage = usage.lock().expect("usage").clone();

    let mut targets = Vec::new();
    for &i in &flooded {
        let node = &cluster.nodes[i];
        let sip: SocketAddr = SocketAddr::new(ips[i].parse()?, sip_ports[i]);
        for (port, addr) in [
            (Port::Api, api(i)?),
            (Port::Peer, node.peer_addr.parse()?),
            (Port::Sip, sip),
        ] {
            targets.push(Target {
                node: i,
                port,
                addr,
                counts: Arc::default(),
            });
        }
    }
    eprintln!(
        "▶ flood: {n} slow connections to each of {} ports ({} per source, opened over {:?}) for {} s",
        targets.len(),
        args.slow_per_source,
        RAMP,
        args.slow_seconds
    );
    let flood_stop = Arc::new(AtomicBool::new(false));
    let mut slow = Vec::new();
    let drip = Duration::from_millis(args.slow_drip_ms);
    let reopen = Duration::from_millis(args.slow_reopen_ms);
    let flood_from = Instant::now();
    for (t, target) in targets.iter().enumerate() {
        for i in 0..n {
            let src = source(t, i, args.slow_per_source);
            let (dst, port, counts, fs) = (
                target.addr,
                target.port,
                target.counts.clone(),
                flood_stop.clone(),
            );
            let delay = RAMP.mul_f64(i as f64 / n as f64);
            slow.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                slow_client(src, dst, port, counts, drip, reopen, fs).await;
            }));
        }
    }
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    while flood_from.elapsed() < Duration::from_secs(args.slow_seconds) {
        progress.tick().await;
        let line: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "n{} {} {}",
                    t.node + 1,
                    t.port.name(),
                    t.counts.open_now.load(Ordering::Relaxed)
                )
            })
            .collect();
        eprintln!(
            "  {:>3} s open: {}",
            flood_from.elapsed().as_secs(),
            line.join(", ")
        );
    }
    let flood_to = Instant::now();
    let flood_usage = usage.lock().expect("usage").clone();
    flood_stop.store(true, Ordering::Relaxed);
    for s in slow {
        s.abort();
    }
    // Writes after the flood (all slow sockets dropped).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_to = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let term_changes = client.health().await.map(|h| h.term).unwrap_or(0);

    let wb = window(&writes, base_from, base_to);
    let wf = window(&writes, flood_from, flood_to);
    let wa = window(&writes, after_from, after_to);
    let hb: Vec<_> = health
        .iter()
        .map(|h| window(h, base_from, base_to))
        .collect();
    let hf: Vec<_> = health
        .iter()
        .map(|h| window(h, flood_from, flood_to))
        .collect();
    let pb = window(&phone, base_from, base_to);
    let pf = window(&phone, flood_from, flood_to);
    let rss_mb = |u: &Usage| u.hwm_kb.max(u.peak_rss_kb) as f64 / 1024.0;
    let peak_rss = flood_usage.iter().map(rss_mb).fold(0.0, f64::max);
    let fd_bound = (node_nofile as f64 * BOUND_FD_SHARE) as u64;
    let pass_writes = wf.1 == 0 && wa.1 == 0 && wf.0 > 0;
    let pass_health = hf.iter().all(|h| h.1 == 0 && h.0 > 0);
    let pass_phone = pf.1 == 0 && pf.0 > 0;
    let pass_rss = peak_rss < BOUND_RSS_MB;
    let pass_fds = flood_usage.iter().all(|u| u.peak_fds < fd_bound)
        && nofile.iter().all(|l| *l == Some(node_nofile));
    let pass = pass_writes && pass_health && pass_phone && pass_rss && pass_fds;
    let role = |k: usize| if k == 0 { "master" } else { "standby" };

    if json_mode {
        let ports: Vec<_> = targets
            .iter()
            .map(|t| {
                let c = &t.counts;
                json!({"node": t.node + 1, "port": t.port.name(), "addr": t.addr.to_string(),
                       "opened": c.opened.load(Ordering::Relaxed),
                       "refused": c.refused.load(Ordering::Relaxed),
                       "closed": c.closed.load(Ordering::Relaxed),
                       "connect_failed": c.connect_failed.load(Ordering::Relaxed),
                       "peak_open": c.peak_open.load(Ordering::Relaxed)})
            })
            .collect();
        let nodes: Vec<_> = (0..2)
            .map(|k| {
                let u = &flood_usage[k];
                json!({"role": role(k), "nofile": nofile[k], "baseline_rss_mb": base_usage[k].rss_kb as f64 / 1024.0,
                       "peak_rss_mb": rss_mb(u), "peak_fds": u.peak_fds,
                       "health_baseline": {"ok": hb[k].0, "failed": hb[k].1, "p50_ms": hb[k].2, "p99_ms": hb[k].3, "max_ms": hb[k].4},
                       "health_flood": {"ok": hf[k].0, "failed": hf[k].1, "p50_ms": hf[k].2, "p99_ms": hf[k].3, "max_ms": hf[k].4}})
            })
            .collect();
        let w = |x: (usize, usize, f64, f64, f64)| json!({"ok": x.0, "failed": x.1, "p50_ms": x.2, "p99_ms": x.3, "max_ms": x.4});
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "slow_connections_per_port": n, "per_source": args.slow_per_source,
                "writes": {"baseline": w(wb), "flood": w(wf), "after": w(wa)},
                "sip_phone": {"baseline": w(pb), "flood": w(pf)},
                "nodes": nodes, "ports": ports, "term": term_changes,
                "bounds": {"rss_mb": BOUND_RSS_MB, "health_ms": BOUND_HEALTH.as_millis() as u64, "fds": fd_bound},
                "pass": pass,
            }))?
        );
    }
    say(format!(
        "slow connections: {n} to each port of {}, {} per source, re-opened {} ms after a close, a byte every {} ms; {} s baseline, {} s flood",
        if master_only { "the master" } else { "the master and a standby" },
        args.slow_per_source,
        args.slow_reopen_ms,
        args.slow_drip_ms,
        args.slow_baseline_seconds,
        args.slow_seconds
    ));
    let wl = |name: &str, x: (usize, usize, f64, f64, f64)| {
        format!(
            "  CDR writes {name:<9} {:>6} ok {:>5} failed   p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
            x.0, x.1, x.2, x.3, x.4
        )
    };
    say(wl("baseline", wb));
    say(wl("flood", wf));
    say(wl("after", wa));
    for k in 0..2 {
        for (name, h) in [("baseline", hb[k]), ("flood", hf[k])] {
            say(format!(
                "  /health {:<7} {name:<9} {:>4} ok {:>4} failed   p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
                role(k),
                h.0,
                h.1,
                h.2,
                h.3,
                h.4
            ));
        }
    }
    for (name, h) in [("baseline", pb), ("flood", pf)] {
        say(format!(
            "  SIP/TCP phone OPTIONS (master) {name:<9} {:>4} ok {:>4} failed   p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
            h.0, h.1, h.2, h.3, h.4
        ));
    }
    for t in &targets {
        let c = &t.counts;
        say(format!(
            "  node {} {:<10} {:<21} opened {:>7}  refused {:>7}  closed later {:>7}  connect failed {:>6}  peak open {:>5}",
            t.node + 1,
            t.port.name(),
            t.addr,
            c.opened.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.closed.load(Ordering::Relaxed),
            c.connect_failed.load(Ordering::Relaxed),
            c.peak_open.load(Ordering::Relaxed)
        ));
    }
    for k in 0..2 {
        let u = &flood_usage[k];
        say(format!(
            "  {:<7} nofile {:>6}  RSS baseline {:>6.1} MB  peak {:>6.1} MB  open fds baseline {:>5}  peak {:>5}",
            role(k),
            nofile[k].map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            base_usage[k].rss_kb as f64 / 1024.0,
            rss_mb(u),
            base_usage[k].fds,
            u.peak_fds
        ));
    }
    say(format!(
        "  bound: 0 failed writes during and after the flood [{}], every /health 200 within {} ms on both nodes [{}], every phone OPTIONS answered within that time [{}], peak RSS < {BOUND_RSS_MB} MB [{}], open fds < {fd_bound} under nofile {node_nofile} [{}]",
        verdict(pass_writes),
        BOUND_HEALTH.as_millis(),
        verdict(pass_health),
        verdict(pass_phone),
        verdict(pass_rss),
        verdict(pass_fds)
    ));
    say(format!("{} slow-connection resource bound", verdict(pass)));
    drop(cluster);
    Ok(())
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_change_every_per_source_connections_and_stay_in_loopback() {
        assert_eq!(source(0, 0, 100), source(0, 99, 100));
        assert_ne!(source(0, 99, 100), source(0, 100, 100));
        assert_ne!(source(0, 0, 100), source(1, 0, 100));
        assert_eq!(
            source(5, 20_000 * 100 - 1, 100).to_string(),
            "127.105.79.250"
        );
    }

    #[test]
    fn status_fields_are_read_in_kb() {
        let text = "Name:\ttandem\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\n";
        assert_eq!(status_kb(text, "VmHWM:"), 123_456);
        assert_eq!(status_kb(text, "VmRSS:"), 65_432);
        assert_eq!(status_kb(text, "VmSwap:"), 0);
    }
}
