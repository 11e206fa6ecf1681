//! `tandem bench --recordings`: recording replication at a bandwidth cap while small
//! CDR writes run.
//!
//! Two data nodes and a witness on 127.0.0.1-3. A steady load of single-CDR writes
//! (100 per second) runs throughout; its commit latency is measured first with no
//! recording moving (the baseline of the same run), then while a recording is copied
//! to the standby at the cap, then uncapped. The "link" is measured in the same run
//! by a plain TCP copy over 127.0.0.1: run the benchmark inside a network namespace
//! whose loopback is shaped (`scripts/bench-recordings.sh` does it with tc tbf) to
//! compare against a real link speed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tandem_api::{CdrsAdded, Client};
use tandem_harness::LocalCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Options of the recording benchmark (part of `tandem bench`).
#[derive(clap::Args, Debug, Clone)]
pub struct RecordingBenchArgs {
    /// Run the recording replication benchmark (instead of the CDR benchmarks).
    #[arg(long)]
    pub recordings: bool,
    /// Size of the recording copied in each phase, MB.
    #[arg(long, default_value_t = 100)]
    pub recording_mb: u64,
    /// Cap of the capped phase, kbit/s (80000 = 10 MB/s).
    #[arg(long, default_value_t = 80_000)]
    pub cap_kbps: u64,
}

/// CDR writes per second during the whole benchmark.
const CDR_RATE: u64 = 100;

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Write `mb` MB of incompressible bytes to `path`.
fn make_file(path: &Path, mb: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

/// Throughput of a plain TCP copy over 127.0.0.1, bytes per second (the "link").
async fn tcp_baseline(bytes: u64) -> anyhow::Result<f64> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                return Ok::<u64, std::io::Error>(n);
            }
            n += k as u64;
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![7u8; 256 * 1024];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    s.shutdown().await?;
    let got = reader.await??;
    Ok(got as f64 / t0.elapsed().as_secs_f64())
}

/// Latencies of the background CDR writes: (when it finished, latency ms, ok).
type Samples = Arc<Mutex<Vec<(Instant, f64, bool)>>>;

fn cdr_load(client: Arc<Client>, samples: Samples) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CDR_RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = chrono::Utc::now();
        for i in 0u64.. {
            tick.tick().await;
            let (client, samples) = (client.clone(), samples.clone());
            tokio::spawn(async move {
                let t = start + chrono::Duration::milliseconds(i as i64);
                let cdr = tandem_api::Cdr::new_call(
                    "100",
                    "200",
                    t,
                    Some(t),
                    t + chrono::Duration::seconds(30),
                    "bench",
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

fn window(samples: &Samples, from: Instant, to: Instant) -> (f64, f64, usize, usize) {
    let s = samples.lock().expect("samples");
    let mut v: Vec<f64> = s
        .iter()
        .filter(|(t, _, ok)| *ok && *t >= from && *t <= to)
        .map(|(_, ms, _)| *ms)
        .collect();
    let failed = s
        .iter()
        .filter(|(t, _, ok)| !*ok && *t >= from && *t <= to)
        .count();
    let n = v.len();
    (pct(&mut v, 0.5), pct(&mut v, 0.99), n, failed)
}

async fn set_cap(c: &Client, kbps: u64) -> anyhow::Result<()> {
    c.config_set("replication.recording_bandwidth_kbps", &json!(kbps))
        .await?;
    // The blob sync re-reads the cap every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(())
}

/// Upload `file` as `id` (answered once committed on the uploading node) and wait
/// until the standby holds it. Returns (seconds of the copy, bytes).
async fn copy_once(
    c: &Client,
    file: &Path,
    id: &str,
    standby: u64,
) -> anyhow::Result<(f64, u64, Instant, Instant)> {
    let (status, v) = c
        .upload(
            "/api/v1/recordings?wait_s=0",
            file,
            &[("x-recording-id", id.to_string())],
        )
        .await?;
    if status != 202 && status != 201 {
        bail!("upload of {id}: HTTP {status}: {v:?}");
    }
    let size = v.size;
    let t0 = Instant::now();
    loop {
        let list = c.recordings("?limit=10000").await?;
        let held = list
            .recordings
            .iter()
            .any(|r| r.id == id && r.holders.contains(&standby));
        if held {
            let t1 = Instant::now();
            return Ok((t1.duration_since(t0).as_secs_f64(), size, t0, t1));
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{id} not on the standby after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn term(c: &Client) -> u64 {
    c.health().await.map(|h| h.term).unwrap_or(0)
}

pub async fn run(exe: &Path, args: &RecordingBenchArgs, json_mode: bool) -> anyhow::Result<()> {
    let say = |s: String| {
        if !json_mode {
            println!("{s}");
        }
    };
    let mut cluster = LocalCluster::prepare(
        exe.to_path_buf(),
        3,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        "",
    )?;
    // Node 3 is a witness: exactly one standby receives each recording.
    let cfg3 = std::fs::read_to_string(&cluster.nodes[2].config)?;
    std::fs::write(
        &cluster.nodes[2].config,
        cfg3.replacen(
            "name = \"node-3\"\n",
            "name = \"node-3\"\nrole = \"witness\"\n",
            1,
        ),
    )?;
    eprintln!(
        "▶ starting 2 data nodes + 1 witness on 127.0.0.1-3 (data under {})",
        cluster.root.display()
    );
    cluster.bootstrap().await?;
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
    let standby = if m == 0 { 2 } else { 1 };
    let client = Arc::new(cluster.nodes[m].client()?);
    let file = cluster.root.join("bench-recording.bin");
    make_file(&file, args.recording_mb).context("writing the test recording")?;
    eprintln!("▶ measuring the link: plain TCP copy over 127.0.0.1");
    let link = tcp_baseline(args.recording_mb.max(50) * 1_000_000).await?;

    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let load = cdr_load(client.clone(), samples.clone());
    eprintln!("▶ idle baseline: {CDR_RATE} CDR writes/s for 8 s, no recording moving");
    set_cap(&client, 0).await?;
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let idle = window(&samples, idle_from, Instant::now());
    let term0 = term(&client).await;

    eprintln!(
        "▶ capped: {} MB to the standby at {} kbit/s while the CDR writes go on",
        args.recording_mb, args.cap_kbps
    );
    set_cap(&client, args.cap_kbps).await?;
    let (secs, size, from, to) = copy_once(&client, &file, "bench-capped", standby).await?;
    let capped_rate = size as f64 / secs;
    let capped = window(&samples, from, to);

    eprintln!("▶ uncapped: {} MB to the standby", args.recording_mb);
    set_cap(&client, 0).await?;
    let (usecs, usize_, ufrom, uto) = copy_once(&client, &file, "bench-uncapped", standby).await?;
    let uncapped_rate = usize_ as f64 / usecs;
    let uncapped = window(&samples, ufrom, uto);
    let term1 = term(&client).await;
    load.abort();

    let cap_bytes = args.cap_kbps as f64 * 1000.0 / 8.0;
    let cap_ratio = capped_rate / cap_bytes;
    let link_ratio = uncapped_rate / link;
    let p99_ratio = capped.1 / idle.1;
    let pass_cap = (cap_ratio - 1.0).abs() <= 0.10;
    let pass_link = link_ratio >= 0.8;
    let pass_p99 = capped.1 <= 2.0 * idle.1 && capped.1 <= 50.0;
    let pass_leader = term1 == term0;
    let mbs = |b: f64| b / 1e6;
    let ok = |b: bool| if b { "ok" } else { "MISSED" };
    let report = json!({
        "recording_bytes": size,
        "cdr_writes_per_s": CDR_RATE,
        "link_bytes_per_s": link,
        "idle": {"p50_ms": idle.0, "p99_ms": idle.1, "writes": idle.2, "failed": idle.3},
        "capped": {"cap_bytes_per_s": cap_bytes, "rate_bytes_per_s": capped_rate, "seconds": secs,
                   "ratio_to_cap": cap_ratio, "cdr_p50_ms": capped.0, "cdr_p99_ms": capped.1,
                   "writes": capped.2, "failed": capped.3},
        "uncapped": {"rate_bytes_per_s": uncapped_rate, "seconds": usecs, "ratio_to_link": link_ratio,
                     "cdr_p50_ms": uncapped.0, "cdr_p99_ms": uncapped.1, "writes": uncapped.2, "failed": uncapped.3},
        "leader_changes": term1.saturating_sub(term0),
        "targets": {"rate_within_10pct_of_cap": pass_cap, "uncapped_at_least_80pct_of_link": pass_link,
                    "cdr_p99_at_most_2x_idle_and_50ms": pass_p99, "no_leader_change": pass_leader},
    });
    if json_mode {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    say(format!(
        "recording replication: {} MB to the standby, {CDR_RATE} CDR writes/s throughout",
        size / 1_000_000
    ));
    say(format!(
        "  link (plain TCP over 127.0.0.1)  {:>8.1} MB/s",
        mbs(link)
    ));
    say(format!(
        "  idle         CDR commit p50 {:>6.2} ms  p99 {:>6.2} ms  ({} writes)",
        idle.0, idle.1, idle.2
    ));
    say(format!(
        "  capped       {:>8.2} MB/s = {:.3} x cap ({:.2} MB/s)  [{}]   CDR p50 {:.2} ms p99 {:.2} ms = {:.2} x idle  [{}]",
        mbs(capped_rate),
        cap_ratio,
        mbs(cap_bytes),
        ok(pass_cap),
        capped.0,
        capped.1,
        p99_ratio,
        ok(pass_p99)
    ));
    say(format!(
        "  uncapped     {:>8.2} MB/s = {:.2} x link  [{}]   CDR p50 {:.2} ms p99 {:.2} ms",
        mbs(uncapped_rate),
        link_ratio,
        ok(pass_link),
        uncapped.0,
        uncapped.1
    ));
    say(format!(
        "  leader changes during the run: {}  [{}]",
        term1.saturating_sub(term0),
        ok(pass_leader)
    ));
    drop(cluster);
    Ok(())
}
