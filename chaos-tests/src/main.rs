//! `chaos-tests`: the soak run and the cleanup of leftovers.
//!
//! * `chaos-tests soak --rounds 50`: one cluster, the master killed with
//!   SIGKILL every round and restarted as a standby; prints each round's
//!   failover time, then p50/p90/p99/max and the invariant violations. Exits
//!   non-zero on any violation.
//! * `chaos-tests cleanup`: remove namespaces, processes and directories left
//!   by runs whose process is gone.
//! * `chaos-tests impair --queue N --loss 5 --delay-ms 100 --jitter-ms 50`:
//!   the userspace netem (see `chaos_tests::impair`), started by the fault
//!   injector with `ip netns exec <node ns>`; prints `impair-stats {json}` on
//!   SIGTERM.
//!
//! Ctrl-C or SIGTERM stops a soak and removes everything it created.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chaos_tests::cluster::ClusterSpec;
use chaos_tests::preflight::Needs;
use chaos_tests::registry;
use chaos_tests::scenario::{ms, Scenario};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaos-tests",
    about = "Fault tests of tandem in network namespaces (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Kill the master repeatedly on one cluster; print failover percentiles.
    Soak {
        /// Number of kill-master rounds.
        #[arg(long, default_value_t = 50)]
        rounds: u32,
        /// Data nodes in the cluster (at least 3, so one can die).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Remove leftovers (namespaces, processes, directories) of dead runs.
    Cleanup {
        /// Also remove the logs kept by failed runs (/tmp/tandem-chaos-tdm*).
        #[arg(long)]
        logs: bool,
    },
    /// Drop and delay the packets of an NFQUEUE (netem's loss + delay in
    /// userspace); run inside the namespace, with an iptables-legacy
    /// `-j NFQUEUE --queue-num N` rule. Prints its figures on SIGTERM.
    Impair {
        /// NFQUEUE number to bind (in this network namespace).
        #[arg(long, default_value_t = 0)]
        queue: u16,
        /// Loss, percent of the packets.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Mean delay of the packets not lost, ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Jitter: delays are uniform in delay ± jitter, ms.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// RNG seed (random if not given; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// Most packets held at once (kernel queue length); beyond it the
        /// kernel drops and the drops are reported as `overflow_drops`.
        #[arg(long, default_value_t = 8192)]
        capacity: u32,
        /// Exit by itself after this many seconds.
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Impair {
            queue,
            loss,
            delay_ms,
            jitter_ms,
            seed,
            capacity,
            max_secs,
        } => {
            let opts = chaos_tests::impair::RunOptions {
                queue,
                params: chaos_tests::impair::Params {
                    loss_percent: loss,
                    delay: Duration::from_millis(delay_ms),
                    jitter: Duration::from_millis(jitter_ms),
                },
                seed: seed.unwrap_or_else(rand::random),
                capacity,
                max_run: Duration::from_secs(max_secs),
            };
            match chaos_tests::impair::run(&opts) {
                Ok(stats) => {
                    println!("{}", stats.line());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("impair: FAILED: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Cleanup { logs } => {
            let r = registry::remove_leftovers();
            println!("cleanup: {}", r.summary());
            if logs {
                let dirs = registry::remove_kept_logs();
                println!("cleanup: removed {} kept log directories", dirs.len());
            }
            if r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Soak { rounds, nodes } => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("soak: tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                // Dropping the soak future (on a signal) drops its Scenario,
                // which kills the nodes and deletes the namespaces.
                tokio::select! {
                    r = soak(rounds, nodes) => match r {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("soak: FAILED: {e:#}");
                            ExitCode::FAILURE
                        }
                    },
                    sig = stop_signal() => {
                        eprintln!("soak: {sig}: stopping and removing the cluster");
                        ExitCode::from(130)
                    }
                }
            })
        }
    }
}

/// Ctrl-C or SIGTERM; the name of the signal.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted (Ctrl-C)"
        }
    }
}

async fn soak(rounds: u32, nodes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(nodes >= 3, "--nodes must be at least 3 (got {nodes})");
    let Some(mut s) = Scenario::setup("soak", ClusterSpec::data(nodes), Needs::default()).await?
    else {
        return Ok(());
    };
    s.start_load().await?;
    let t0 = Instant::now();
    for round in 1..=rounds {
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(15), &[]).await?;
        let at = s.cluster.kill9(m)?;
        let write = s.await_failover(at, Some(m), Duration::from_secs(15)).await;
        let new = s
            .cluster
            .wait_master(Duration::from_secs(15), &[m])
            .await
            .ok();
        let vip = s.await_vip_moved(m, at, Duration::from_millis(500)).await;
        let show = |d: Option<Duration>| d.map_or("-".to_string(), |d| ms(d).to_string());
        println!(
            "round {round:>3}/{rounds}: killed master node {m}, new master {}, failover {} ms (VIP seen on new holder after {} ms)",
            new.map_or("none".to_string(), |n| format!("node {n}")),
            show(write),
            show(vip)
        );
        if new.is_none() {
            s.fail(format!(
                "round {round}: no new master after killing node {m}"
            ));
        }
        let restarted = Instant::now();
        if let Err(e) = s
            .cluster
            .restart_as_standby(m, Duration::from_secs(60))
            .await
        {
            s.fail(format!("round {round}: node {m} did not come back: {e:#}"));
            break;
        }
        println!(
            "           node {m} back as standby after {} ms",
            ms(restarted.elapsed())
        );
    }
    s.figure("rounds", rounds);
    s.figure("soak_duration_s", t0.elapsed().as_secs());
    s.finish().await
}
