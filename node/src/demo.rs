//! `tandem demo`: a 3-node cluster on 127.0.0.1 in one terminal, then a failover.
//!
//! Spawns three `tandem run` processes (this same binary) with temporary data dirs,
//! enrolls nodes 2 and 3 with the join token, writes sample CDRs through the master,
//! kills the master with SIGKILL, waits for the new master and reads every CDR back
//! from a standby. Everything it started is stopped and removed at the end, also on
//! error or Ctrl-C (children are killed on drop).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{Duration as ChronoDuration, Utc};
use tandem_api::{Cdr, CdrFilter};
use tandem_harness::LocalCluster;

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

/// What `tandem demo --json` prints at the end.
#[derive(serde::Serialize)]
struct DemoResult {
    killed_master: usize,
    new_master: usize,
    failover_ms: u64,
    cdrs_written: usize,
    cdrs_on_standby: usize,
    standby: usize,
    ok: bool,
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
    let view = cluster.nodes[master].client()?.cluster().await?;
    say(json_mode, crate::cli::cluster::status_text(&view));

    let cdrs = sample_cdrs(n_cdrs);
    say(
        json_mode,
        format!(
            "▶ writing {n_cdrs} CDRs through the master (node {})",
            master + 1
        ),
    );
    let resp = cluster.nodes[master].client()?.cdrs_add(&cdrs).await?;
    say(
        json_mode,
        format!(
            "  HTTP 201: {} inserted, committed at log index {}",
            resp.inserted, resp.index
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
        .cdrs_query(&CdrFilter {
            limit: Some(n_cdrs.max(1)),
            ..CdrFilter::default()
        })
        .await?;
    let count = got.count;
    say(
        json_mode,
        format!(
            "▶ CDRs read from standby node {} (its local copy):",
            standby + 1
        ),
    );
    if !json_mode {
        for r in got.cdrs.iter().take(10) {
            println!(
                "  {}  {} → {}  {:<9}  billsec {}",
                r.start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                r.caller,
                r.callee,
                r.disposition.as_str(),
                r.billsec
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
            serde_json::to_string_pretty(&DemoResult {
                killed_master: master + 1,
                new_master: new_master + 1,
                failover_ms: failover_ms as u64,
                cdrs_written: n_cdrs,
                cdrs_on_standby: count,
                standby: standby + 1,
                ok,
            })?
        );
    }
    if !ok {
        bail!("CDRs missing on the standby after failover");
    }
    Ok(())
}
