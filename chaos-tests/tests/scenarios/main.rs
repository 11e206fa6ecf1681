//! Chaos scenarios: real `tandem` processes in network namespaces, one fault
//! each, checked against the invariants of `chaos_tests::invariants`
//! (single ARP answerer for the VIP, no lost acknowledged write, failover time).
//!
//! Run as root: `cargo test -p chaos-tests --test scenarios -- --nocapture`.
//! Scenarios take a process-wide lock, so they run one at a time even with
//! several test threads (`--test-threads=1` gives the same and keeps the
//! output in order). Without root, `ip netns`, nftables or netem a scenario
//! prints `skipped: <why>` and passes. See chaos-tests/README.md.

use std::future::Future;
use std::time::{Duration, Instant};

use chaos_tests::cluster::{describe, ClusterSpec, Timers};
use chaos_tests::faults::{Endpoint, Netem};
use chaos_tests::invariants::single_answerer::{self, answered_by, Probe};
use chaos_tests::preflight::{Host, LossDelay, Needs};
use chaos_tests::scenario::{bounded, ms, serial, Scenario};
use chaos_tests::topology::{self, fmt_mac, Topology};
use chaos_tests::{netns::NsExecutor, registry};
use rand::Rng;

mod sip;

/// Run one scenario alone, on its own runtime, within `limit`.
fn scenario_test<F, Fut>(name: &str, limit: Duration, steps: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = run_alone(name, limit, steps()) {
        panic!("{e:#}");
    }
}

/// Run `steps` alone (the process-wide scenario lock), on a runtime of its own.
fn run_alone(
    name: &str,
    limit: Duration,
    steps: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let _one_at_a_time = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(bounded(name, limit, steps))
}

/// Fail if the old master answered ARP for the VIP in any probe from `from` on.
fn old_master_silent_from(s: &mut Scenario, old: u64, from: Instant, what: &str) {
    let mac = s.cluster.node(old).mac;
    let n = answered_by(&s.probes(), &mac, from);
    s.check(
        n == 0,
        format!(
            "old master node {old} ({}) answered ARP for the VIP in {n} probe(s) {what}",
            fmt_mac(&mac)
        ),
    );
}

/// From the first probe answered by the new VIP holder on, the old master
/// must stay silent (alternating answers are a split brain too).
fn old_master_silent_after_move(s: &mut Scenario, old: u64, fault: Instant) {
    match s.vip_moved(old, fault, None) {
        Some(d) => old_master_silent_from(
            s,
            old,
            fault + d,
            "after the VIP appeared on the new master",
        ),
        None => s.fail(format!(
            "the VIP never appeared on a node other than node {old}"
        )),
    }
}

// ---------------------------------------------------------------- harness

/// The harness alone (no tandem): topology up, an ARP probe from the client
/// thread sees exactly node 1's MAC for 198.18.0.1, and after the drop no
/// namespace of the run is left.
#[test]
fn harness_topology_probe_and_cleanup() {
    scenario_test("harness", Duration::from_secs(60), || async {
        println!("=== chaos harness self-test ===");
        if let Some(why) = Host::get().skip_reason(Needs::default()) {
            println!("harness: skipped: {why}");
            return Ok(());
        }
        let topo = Topology::create(3)?;
        let prefix = topo.owner.prefix.clone();
        let client = NsExecutor::start(&topo.client)?;
        let (n1, cmac) = (topo.node_macs[0], topo.client_mac);
        let answers = client
            .run(move || async move {
                tandem_failover::announce::arp_probe(
                    "eth0",
                    cmac,
                    topology::CLIENT_IP,
                    topology::node_ip(1),
                    Duration::from_millis(100),
                )
                .await
            })
            .await??;
        println!(
            "harness: ARP for 198.18.0.1 answered by {:?}",
            answers.iter().map(fmt_mac).collect::<Vec<_>>()
        );
        anyhow::ensure!(
            answers == vec![n1],
            "expected only node 1's MAC {}",
            fmt_mac(&n1)
        );
        let vip = client
            .run(move || async move {
                tandem_failover::announce::arp_probe(
                    "eth0",
                    cmac,
                    topology::CLIENT_IP,
                    topology::VIP,
                    Duration::from_millis(100),
                )
                .await
            })
            .await??;
        anyhow::ensure!(vip.is_empty(), "nobody should hold the VIP without tandem");
        drop(client);
        drop(topo);
        let left: Vec<String> = registry::list_netns()
            .into_iter()
            .filter(|n| registry::ns_prefix(n) == Some(prefix.as_str()))
            .collect();
        anyhow::ensure!(left.is_empty(), "namespaces left after drop: {left:?}");
        println!("harness: PASS (namespaces {prefix}* removed)");
        Ok(())
    });
}

/// Leftovers of a run whose owner died are removed by the next run.
#[test]
fn harness_removes_leftovers_of_a_dead_run() {
    scenario_test("leftovers", Duration::from_secs(60), || async {
        println!("=== chaos leftover removal ===");
        if let Some(why) = Host::get().skip_reason(Needs::default()) {
            println!("leftovers: skipped: {why}");
            return Ok(());
        }
        // A process that is gone by now plays the crashed owner.
        let mut dead = std::process::Command::new("true").spawn()?;
        let dead_pid = dead.id();
        dead.wait()?;
        let prefix = "tdm999999";
        let run_dir = registry::run_dir_of(prefix);
        std::fs::create_dir_all(&run_dir)?;
        std::fs::write(
            registry::owner_dir().join(format!("{prefix}.owner")),
            format!("pid={dead_pid}\nstart=1\nrun_dir={}\n", run_dir.display()),
        )?;
        let ns = format!("{prefix}n1");
        chaos_tests::cmd::ip(&["netns", "add", &ns])?;
        let report = registry::remove_leftovers();
        println!("leftovers: {}", report.summary());
        anyhow::ensure!(!registry::list_netns().contains(&ns), "{ns} still there");
        anyhow::ensure!(!run_dir.exists(), "{} still there", run_dir.display());
        println!("leftovers: PASS");
        Ok(())
    });
}

// -------------------------------------------------------------- scenarios

/// kill -9 of the master: a standby holds the VIP and takes writes within ~1 s.
#[test]
fn kill_master() {
    scenario_test("kill_master", Duration::from_secs(180), || async {
        let Some(mut s) =
            Scenario::setup("kill_master", ClusterSpec::data(3), Needs::default()).await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let at = s.cluster.kill9(m)?;
        s.fault(&format!("kill -9 of master node {m}"), at);
        s.await_failover(at, Some(m), Duration::from_secs(15)).await;
        match s.cluster.wait_master(Duration::from_secs(10), &[m]).await {
            Ok(n) => s.figure("new_master", format!("node {n}")),
            Err(e) => s.fail(format!("{e:#}")),
        }
        let t = Instant::now();
        s.cluster
            .restart_as_standby(m, Duration::from_secs(60))
            .await?;
        s.figure("rejoin_ms", ms(t.elapsed()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.finish().await
    });
}

/// SIGSTOP of the master for longer than the election timeout, then SIGCONT:
/// a standby takes over, and the old master never answers for the VIP after it
/// resumes.
#[test]
fn pause_master() {
    scenario_test("pause_master", Duration::from_secs(180), || async {
        let spec = ClusterSpec::data(3);
        let emax = spec.timers.election_timeout_max_ms;
        let Some(mut s) = Scenario::setup("pause_master", spec, Needs::default()).await? else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let pause = Duration::from_millis(2 * emax + s.rng.gen_range(0..1000));
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let at = s.cluster.pause(m)?;
        s.fault(
            &format!("SIGSTOP of master node {m} for {} ms", ms(pause)),
            at,
        );
        s.await_failover(at, Some(m), pause + Duration::from_secs(10))
            .await;
        match s.cluster.wait_master(Duration::from_secs(10), &[m]).await {
            Ok(n) => s.figure("new_master", format!("node {n}")),
            Err(e) => s.fail(format!("{e:#}")),
        }
        let rest = pause.saturating_sub(at.elapsed());
        tokio::time::sleep(rest).await;
        let resumed = s.cluster.resume(m)?;
        s.fault(&format!("SIGCONT of node {m}"), resumed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        match s.cluster.health(m).await {
            Some(h) => {
                s.figure(
                    "old_master_after_resume",
                    format!("{} (term {})", h.role, h.term),
                );
                s.check(
                    h.role != "master",
                    format!("node {m} is master again after resume: {h:?}"),
                );
            }
            None => s.fail(format!("node {m} does not answer /health after resume")),
        }
        old_master_silent_from(&mut s, m, resumed, "after it resumed");
        s.finish().await
    });
}

/// The master is cut (IP, both directions) from its peers and from the client:
/// the majority elects a new master, the old one drops the VIP (its ARP
/// answers still cross the partition, so a late drop shows as two answerers).
#[test]
fn partition_master_from_peers_and_client() {
    scenario_test("partition_master", Duration::from_secs(180), || async {
        let spec = ClusterSpec::data(3);
        let Some(mut s) = Scenario::setup(
            "partition_master",
            spec,
            Needs {
                nft: true,
                netem: false,
            },
        )
        .await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let mut rest: Vec<Endpoint> = s
            .cluster
            .nodes
            .iter()
            .filter(|n| n.id != m)
            .map(|n| Endpoint::Node(n.id))
            .collect();
        rest.push(Endpoint::Client);
        let at = s.cluster.partition(&[Endpoint::Node(m)], &rest)?;
        s.fault(
            &format!("partition {{node {m}}} | {{other nodes, client}}"),
            at,
        );
        s.await_failover(at, Some(m), Duration::from_secs(15)).await;
        match s.cluster.wait_master(Duration::from_secs(10), &[m]).await {
            Ok(n) => s.figure("new_master", format!("node {n}")),
            Err(e) => s.fail(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        old_master_silent_after_move(&mut s, m, at);
        let healed = s.cluster.heal_nft()?;
        s.fault("heal partition", healed);
        s.cluster
            .restart_as_standby(m, Duration::from_secs(30))
            .await?;
        s.figure("old_master_back_as_standby_ms", ms(healed.elapsed()));
        s.finish().await
    });
}

/// The master's link goes down (cable pulled) for 3 s: a peer takes over;
/// when the link comes back the old master does not answer for the VIP.
#[test]
fn link_down_on_master() {
    scenario_test("link_down_master", Duration::from_secs(180), || async {
        let Some(mut s) =
            Scenario::setup("link_down_master", ClusterSpec::data(3), Needs::default()).await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let at = s.cluster.link_down(m)?;
        s.fault(&format!("ip link set eth0 down on master node {m}"), at);
        s.await_failover(at, Some(m), Duration::from_secs(15)).await;
        match s.cluster.wait_master(Duration::from_secs(10), &[m]).await {
            Ok(n) => s.figure("new_master", format!("node {n}")),
            Err(e) => s.fail(format!("{e:#}")),
        }
        let rest = Duration::from_secs(3).saturating_sub(at.elapsed());
        tokio::time::sleep(rest).await;
        let up = s.cluster.link_up(m)?;
        s.fault(&format!("ip link set eth0 up on node {m}"), up);
        tokio::time::sleep(Duration::from_secs(2)).await;
        old_master_silent_from(&mut s, m, up, "after its link came back");
        s.cluster
            .restart_as_standby(m, Duration::from_secs(30))
            .await?;
        s.finish().await
    });
}

/// One-way partition: the master can send to its peers but receives nothing
/// from them (the client still reaches it). It cannot get quorum acks, so it
/// must give up the lease and a peer must become master.
#[test]
fn one_way_partition_master_cannot_receive() {
    scenario_test("one_way_partition", Duration::from_secs(180), || async {
        let spec = ClusterSpec::data(3);
        let Some(mut s) = Scenario::setup(
            "one_way_partition",
            spec,
            Needs {
                nft: true,
                netem: false,
            },
        )
        .await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let peers: Vec<Endpoint> = s
            .cluster
            .nodes
            .iter()
            .filter(|n| n.id != m)
            .map(|n| Endpoint::Node(n.id))
            .collect();
        let at = s.cluster.block(&peers, &[Endpoint::Node(m)])?;
        s.fault(
            &format!("drop peers → node {m} (node {m} → peers still flows)"),
            at,
        );
        s.await_failover(at, Some(m), Duration::from_secs(20)).await;
        match s.cluster.wait_master(Duration::from_secs(15), &[m]).await {
            Ok(n) => s.figure("new_master", format!("node {n}")),
            Err(e) => s.fail(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        old_master_silent_after_move(&mut s, m, at);
        let healed = s.cluster.heal_nft()?;
        s.fault("heal", healed);
        s.cluster
            .restart_as_standby(m, Duration::from_secs(30))
            .await?;
        s.finish().await
    });
}

/// 5 % loss and 100 ms ± 50 ms delay on every node for 60 s (CHAOS_LOSS_SECS):
/// no role change at all. The round trip between nodes becomes 100–300 ms, so
/// the cluster runs with timers sized for it by the rule of docs/failover.md
/// (`Timers::SLOW_LINK`: openraft abandons an AppendEntries after
/// `heartbeat_ms`, which the default 100 ms is below). `CHAOS_LOSS_TIMERS=default`
/// or `fast` runs with those instead, to see them fail. The impairment is tc netem where the kernel has sch_netem, else the
/// NFQUEUE impairer (`chaos-tests impair`, same loss and delay in userspace),
/// else (`degraded`) nftables loss without delay. The report says which, and
/// the impairment is checked to have happened: TCP handshakes from the client
/// to each node measured during the fault (the node's SYN-ACK is delayed), and
/// the impairers' own counts (drop rate, measured delay, no queue overflow).
#[test]
fn loss_and_jitter_cause_no_role_change() {
    chaos_tests::faults::set_impairer_bin(env!("CARGO_BIN_EXE_chaos-tests"));
    scenario_test("loss_and_jitter", Duration::from_secs(300), || async {
        let host = Host::get();
        let how = host.loss_delay();
        if how == LossDelay::Degraded && host.nft.is_err() {
            println!("=== chaos scenario loss_and_jitter ===");
            println!(
                "loss_and_jitter: skipped: neither tc netem ({}), NFQUEUE ({}) nor nftables ({}) works here",
                host.netem.clone().err().unwrap_or_default(),
                host.nfqueue.clone().err().unwrap_or_default(),
                host.nft.clone().err().unwrap_or_default()
            );
            return Ok(());
        }
        let mut spec = ClusterSpec::data(3);
        spec.timers = match std::env::var("CHAOS_LOSS_TIMERS").as_deref() {
            Ok("fast") => Timers::FAST,
            Ok("default") => Timers::DEFAULT,
            // Loss without delay: the round trip stays short, the defaults fit.
            _ if how == LossDelay::Degraded => Timers::DEFAULT,
            _ => Timers::SLOW_LINK,
        };
        let Some(mut s) = Scenario::setup("loss_and_jitter", spec, Needs::default()).await? else {
            return Ok(());
        };
        s.write_timeout = Duration::from_secs(3);
        s.start_load().await?;
        s.warm_up().await;
        let secs: u64 = std::env::var("CHAOS_LOSS_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let before = s.cluster.healths().await;
        let term_before = before[m as usize - 1].as_ref().map(|h| h.term).unwrap_or(0);
        let ids: Vec<u64> = s.cluster.nodes.iter().map(|n| n.id).collect();
        let netem = Netem {
            loss_percent: 5,
            delay_ms: 100,
            jitter_ms: 50,
        };
        s.figure("impairment", how.name());
        let mut at = Instant::now();
        let what = match how {
            LossDelay::Netem | LossDelay::Nfqueue => {
                for id in &ids {
                    let seed: u64 = s.rng.gen();
                    at = s.cluster.netem(*id, &netem, seed)?;
                    if how == LossDelay::Nfqueue {
                        s.say(format!("node {id}: impairer seed {seed}"));
                    }
                }
                if how == LossDelay::Netem {
                    format!("tc netem {netem} on every node")
                } else {
                    format!(
                        "NFQUEUE impairer {netem} on every node's eth0 output (no sch_netem here)"
                    )
                }
            }
            LossDelay::Degraded => {
                for id in &ids {
                    at = s.cluster.nft_loss(*id, netem.loss_percent)?;
                }
                s.figure(
                    "degraded",
                    "5% loss only (nftables numgen), NO delay/jitter: neither tc netem nor NFQUEUE works here (or CHAOS_IMPAIRMENT=degraded)",
                );
                "5% random loss (nftables) on every node, no delay".to_string()
            }
        };
        s.fault(&format!("{what} for {secs} s"), at);
        // Sample every node's view; any change of role, leader or term counts.
        let mut last: Vec<Option<(String, Option<u64>, u64)>> = vec![None; ids.len()];
        let mut changes = Vec::new();
        let mut samples = 0;
        let mut handshakes: Vec<Vec<Duration>> = vec![Vec::new(); ids.len()];
        let mut round = 0usize;
        while at.elapsed() < Duration::from_secs(secs) {
            for (i, h) in s.cluster.healths().await.into_iter().enumerate() {
                let Some(h) = h else { continue };
                samples += 1;
                let now = (h.role.clone(), h.leader_id, h.term);
                if let Some(prev) = &last[i] {
                    if *prev != now {
                        changes.push(format!(
                            "+{} ms node {}: {}/leader {:?}/term {} → {}/leader {:?}/term {}",
                            ms(at.elapsed()),
                            i + 1,
                            prev.0,
                            prev.1,
                            prev.2,
                            now.0,
                            now.1,
                            now.2
                        ));
                    }
                }
                last[i] = Some(now);
            }
            // One TCP handshake to one node per round: its SYN-ACK crosses
            // the node's impaired output, so the connect time is one delay.
            let i = round % ids.len();
            round += 1;
            let ip = s.cluster.node(ids[i]).ip;
            let rtt = s
                .cluster
                .client
                .run(move || async move {
                    let t = Instant::now();
                    let c = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio::net::TcpStream::connect((ip, 8080)),
                    )
                    .await;
                    matches!(c, Ok(Ok(_))).then(|| t.elapsed())
                })
                .await?;
            if let Some(d) = rtt {
                handshakes[i].push(d);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let during = s.probes();
        let vip_moves = during
            .windows(2)
            .filter(|w| {
                w[0].at >= at
                    && !w[1].macs.is_empty()
                    && !w[0].macs.is_empty()
                    && w[0].macs != w[1].macs
            })
            .count();
        let unanswered = during
            .iter()
            .filter(|p| p.at >= at && p.macs.is_empty() && p.error.is_none())
            .count();
        match how {
            LossDelay::Netem | LossDelay::Nfqueue => s.cluster.heal_netem()?,
            LossDelay::Degraded => s.cluster.heal_nft()?,
        };
        s.say("healed");
        check_impairment(&mut s, how, &netem, &mut handshakes);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = s.cluster.healths().await;
        let m_after = s
            .cluster
            .wait_master(Duration::from_secs(10), &[])
            .await
            .ok();
        let term_after = m_after
            .and_then(|id| after[id as usize - 1].as_ref().map(|h| h.term))
            .unwrap_or(0);
        s.figure("timers", s.cluster.spec.timers);
        // The margin the impaired network left: the longest wait of the master for a
        // quorum acknowledgement (it fences itself at lease_ms).
        match s.cluster.metric(m, "tandem_lease_age_max_ms").await {
            Ok(v) => s.figure(
                "lease_age_max_ms",
                format!("{v} (lease {} ms)", s.cluster.spec.timers.lease_ms),
            ),
            Err(e) => s.say(format!("lease age: {e:#}")),
        }
        if let Ok(v) = s
            .cluster
            .metric(m, "tandem_peer_appends_hedged_total")
            .await
        {
            s.figure("appends_hedged_by_master", v);
        }
        s.figure("health_samples", samples);
        s.figure("role_changes", changes.len());
        s.figure("master", format!("node {m} before, {m_after:?} after"));
        s.figure("term", format!("{term_before} before, {term_after} after"));
        s.figure("vip_moves_seen_by_arp", vip_moves);
        s.figure("arp_probes_unanswered_under_loss", unanswered);
        for c in changes.iter().take(10) {
            s.say(format!("change: {c}"));
        }
        s.check(
            changes.is_empty(),
            format!("{} role/leader/term change(s) under loss", changes.len()),
        );
        s.check(
            m_after == Some(m),
            format!("master changed: node {m} before, {m_after:?} after"),
        );
        s.check(
            term_after == term_before,
            format!(
                "term moved from {term_before} to {term_after}; after: {}",
                describe(&after)
            ),
        );
        s.finish().await
    });
}

/// Median of `v` (sorted in place); `None` when empty.
fn median(v: &mut [Duration]) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

/// The figures of the loss + delay fault, and checks that it really
/// happened: an impairment that is silently inactive fails the scenario.
fn check_impairment(s: &mut Scenario, how: LossDelay, n: &Netem, hs: &mut [Vec<Duration>]) {
    let delayed = how != LossDelay::Degraded;
    for (i, v) in hs.iter_mut().enumerate() {
        let count = v.len();
        let p50 = median(v);
        s.figure(
            &format!("handshake_ms_n{}", i + 1),
            format!(
                "p50 {} over {count} TCP connects from the client during the fault",
                p50.map_or("-".into(), |d| ms(d).to_string())
            ),
        );
        if delayed {
            // One delay (uniform 50..150 ms) plus a little; a lost SYN-ACK
            // (5 %) costs a 1 s retransmission but moves the median little.
            let lo = n.delay_ms.saturating_sub(n.jitter_ms / 2);
            let hi = n.delay_ms + n.jitter_ms + 10;
            s.check(
                p50.is_some_and(|d| (lo..=hi).contains(&(ms(d) as u64))),
                format!(
                    "node {}: TCP handshake p50 {} not within {lo}..={hi} ms: the delay did not apply",
                    i + 1,
                    p50.map_or("none (no connect succeeded)".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                ),
            );
        }
    }
    if how != LossDelay::Nfqueue {
        return;
    }
    let stats = s.cluster.take_impairer_stats();
    let (mut seen, mut dropped) = (0u64, 0u64);
    for (id, st) in &stats {
        match st {
            Ok(st) => {
                seen += st.seen;
                dropped += st.dropped;
                s.figure(
                    &format!("impairer_n{id}"),
                    format!(
                        "{} packets, {} dropped ({:.2} %), delay p50 {} p90 {} p99 {} max {} ms, late p99 {} ms, max held {}, overflow drops {}",
                        st.seen, st.dropped, st.drop_percent, st.delay_ms_p50, st.delay_ms_p90,
                        st.delay_ms_p99, st.delay_ms_max, st.late_ms_p99, st.max_held, st.overflow_drops
                    ),
                );
                s.check(
                    st.seen >= 100,
                    format!(
                        "impairer of node {id} saw only {} packets: is its NFQUEUE rule in place?",
                        st.seen
                    ),
                );
                // The median of U[D-J, D+J] is D; allow J/5 either side, and 10 ms
                // more above for the impairer's scheduling lateness on a loaded host.
                let (lo, hi) = (
                    n.delay_ms - n.jitter_ms / 5,
                    n.delay_ms + n.jitter_ms / 5 + 10,
                );
                s.check(
                    (lo..=hi).contains(&st.delay_ms_p50),
                    format!(
                        "impairer of node {id}: delay p50 {} ms not within {lo}..={hi} ms",
                        st.delay_ms_p50
                    ),
                );
                let p99_max = n.delay_ms + n.jitter_ms + 30;
                s.check(
                    st.delay_ms_p99 <= p99_max,
                    format!("impairer of node {id}: delay p99 {} ms over {p99_max} ms (impairer too slow)", st.delay_ms_p99),
                );
                s.check(
                    st.overflow_drops == 0,
                    format!("impairer of node {id}: the kernel dropped {} packets on a full queue (loss above {} %)", st.overflow_drops, n.loss_percent),
                );
            }
            Err(e) => s.fail(format!("impairer of node {id}: {e}")),
        }
    }
    s.check(
        stats.len() == hs.len(),
        format!(
            "figures from {} impairers for {} nodes",
            stats.len(),
            hs.len()
        ),
    );
    // Binomial band: 4 standard deviations (at least 1 point) around L.
    let p = f64::from(n.loss_percent) / 100.0;
    let rate = if seen == 0 {
        0.0
    } else {
        100.0 * dropped as f64 / seen as f64
    };
    let band = (400.0 * (p * (1.0 - p) / seen.max(1) as f64).sqrt()).max(1.0);
    s.figure(
        "impairer_total",
        format!(
            "{seen} packets, {dropped} dropped ({rate:.2} %; accepted band {:.2}..{:.2} %)",
            100.0 * p - band,
            100.0 * p + band
        ),
    );
    if seen < 1000 {
        s.fail(format!(
            "the impairers saw only {seen} packets in all (need ≥ 1000 to judge the drop rate)"
        ));
    } else {
        s.check(
            (rate - 100.0 * p).abs() <= band,
            format!(
                "impairers dropped {rate:.2} % of {seen} packets, want {} % ± {band:.2}",
                n.loss_percent
            ),
        );
    }
}

/// Wait `within` for a master other than the dead `old` and check it is data node
/// `want`; true when one was found.
async fn expect_new_master(s: &mut Scenario, old: u64, want: u64, within: Duration) -> bool {
    match s.cluster.wait_master(within, &[old]).await {
        Ok(n) => {
            s.figure("new_master", format!("node {n}"));
            s.check(
                n == want,
                format!("node {n} became master, expected data node {want}"),
            );
            true
        }
        Err(e) => {
            s.fail(format!("{e:#}"));
            false
        }
    }
}

/// Two data nodes and a witness: kill -9 of the master data node → the other
/// data node takes over (the witness gives it the majority).
#[test]
fn witness_cluster_kill_master() {
    scenario_test("witness_kill_master", Duration::from_secs(180), || async {
        let Some(mut s) = Scenario::setup(
            "witness_kill_master",
            ClusterSpec::two_data_one_witness(),
            Needs::default(),
        )
        .await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let other = if m == 1 { 2 } else { 1 };
        let at = s.cluster.kill9(m)?;
        s.fault(&format!("kill -9 of master data node {m}"), at);
        s.await_failover(at, Some(m), Duration::from_secs(15)).await;
        expect_new_master(&mut s, m, other, Duration::from_secs(10)).await;
        s.cluster
            .restart_as_standby(m, Duration::from_secs(60))
            .await?;
        s.finish().await
    });
}

/// Two data nodes and a witness, where the witness holds acknowledged entries the
/// standby lacks: the standby is frozen (SIGSTOP) while writes go on (committed by the
/// master and the witness), then the master is killed and the standby resumed. The
/// standby can never win the witness's vote (its log is behind, Raft §5.4.1), so the
/// witness campaigns, brings it up to date and hands it leadership: the standby
/// becomes master and no acknowledged write is lost.
#[test]
fn witness_hands_its_log_to_a_lagging_standby() {
    scenario_test("witness_rescue", Duration::from_secs(180), || async {
        let Some(mut s) = Scenario::setup(
            "witness_rescue",
            ClusterSpec::two_data_one_witness(),
            Needs::default(),
        )
        .await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let other = if m == 1 { 2 } else { 1 };
        s.cluster.pause(other)?;
        // Writes go on, committed by the master and the witness alone.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at = s.cluster.kill9(m)?;
        s.cluster.resume(other)?;
        s.fault(
            &format!("kill -9 of master data node {m} while data node {other} was frozen for 1.5 s (resumed now)"),
            at,
        );
        s.await_failover(at, Some(m), Duration::from_secs(30)).await;
        if expect_new_master(&mut s, m, other, Duration::from_secs(30)).await {
            s.figure("kill_to_master_ms", ms(at.elapsed()));
        }
        // The standby got there through the witness, not by luck.
        let witness_log = std::fs::read_to_string(&s.cluster.node(3).log).unwrap_or_default();
        let rescued = witness_log.contains("witness handed leadership to a data node");
        s.figure("witness_rescued", rescued);
        s.check(
            rescued,
            "the witness log has no hand-over (\"witness handed leadership to a data node\")",
        );
        s.cluster
            .restart_as_standby(m, Duration::from_secs(60))
            .await?;
        s.finish().await
    });
}

/// Two data nodes and a witness: kill -9 of the witness → nothing moves (same
/// master, same term, every ARP probe answered by the master alone).
#[test]
fn witness_cluster_kill_witness() {
    scenario_test("witness_kill_witness", Duration::from_secs(180), || async {
        let Some(mut s) = Scenario::setup(
            "witness_kill_witness",
            ClusterSpec::two_data_one_witness(),
            Needs::default(),
        )
        .await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let term_before = s.cluster.health(m).await.map(|h| h.term);
        let at = s.cluster.kill9(3)?;
        s.fault("kill -9 of the witness (node 3)", at);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let still = s
            .cluster
            .wait_master(Duration::from_secs(2), &[])
            .await
            .ok();
        let term_after = s.cluster.health(m).await.map(|h| h.term);
        s.figure("master", format!("node {m} before, {still:?} after"));
        s.figure(
            "term",
            format!("{term_before:?} before, {term_after:?} after"),
        );
        s.check(
            still == Some(m),
            format!("master moved from node {m} to {still:?}"),
        );
        s.check(
            term_before == term_after,
            format!("term moved: {term_before:?} → {term_after:?}"),
        );
        let mac = s.cluster.node(m).mac;
        let after: Vec<Probe> = s.probes().into_iter().filter(|p| p.at >= at).collect();
        let by_master = after.iter().filter(|p| p.macs == vec![mac]).count();
        s.figure(
            "probes_after_kill",
            format!(
                "{} ({} answered by the master alone)",
                after.len(),
                by_master
            ),
        );
        s.check(
            by_master == after.len(),
            format!(
                "the VIP did not stay put: {} of {} probes after the kill not answered by node {m} alone",
                after.len() - by_master,
                after.len()
            ),
        );
        let v = single_answerer::check(&after);
        s.figure("unanswered_after_kill", v.unanswered);
        s.finish().await
    });
}

/// `tandem switchover` on the master under write load: a new master, a
/// service gap (longest time without an acknowledged write) of at most 0.5 s,
/// and no lost write.
#[test]
fn switchover_under_write_load() {
    scenario_test("switchover", Duration::from_secs(180), || async {
        let Some(mut s) =
            Scenario::setup("switchover", ClusterSpec::data(3), Needs::default()).await?
        else {
            return Ok(());
        };
        s.start_load().await?;
        s.warm_up().await;
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let at = Instant::now();
        s.fault(&format!("tandem switchover on master node {m}"), at);
        let out = s.cluster.tandem_cli(m, &["switchover", "--json"]).await;
        let took = at.elapsed();
        match out {
            Ok(o) => s.say(format!(
                "switchover returned after {} ms: {}",
                ms(took),
                o.trim()
            )),
            Err(e) => s.fail(format!("tandem switchover: {e:#}")),
        }
        s.await_failover(at, Some(m), Duration::from_secs(10)).await;
        match s.cluster.wait_master(Duration::from_secs(10), &[m]).await {
            Ok(n) => s.figure("new_master", format!("node {n}")),
            Err(e) => s.fail(format!("{e:#}")),
        }
        // Keep writing for a while after the switchover, then measure the gap
        // over [1 s before, 5 s after].
        let until = at + Duration::from_secs(5);
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        let from = at.checked_sub(Duration::from_secs(1)).unwrap_or(at);
        let gap = s.service_gap(from, until);
        s.figure("switchover_cli_ms", ms(took));
        s.figure("service_gap_ms", ms(gap));
        s.check(
            gap <= Duration::from_millis(500),
            format!("service gap {} ms > 500 ms", ms(gap)),
        );
        s.finish().await
    });
}
