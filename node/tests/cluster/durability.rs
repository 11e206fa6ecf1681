//! No acknowledged write is lost: kill -9 of the master, restarts, crash loops.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// Writes batches of CDRs in a loop to whichever node answers; records every id
/// acknowledged with 201.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    /// Longest time between two acknowledged writes (the service gap).
    gap: Arc<Mutex<Duration>>,
    attempts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(clients: Vec<Client>, seed: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let gap = Arc::new(Mutex::new(Duration::ZERO));
        let (s, a, n, g) = (stop.clone(), acked.clone(), attempts.clone(), gap.clone());
        let task = tokio::spawn(async move {
            let mut last_ack: Option<Instant> = None;
            let mut i = seed;
            let mut target = 0;
            // Bounded: at most 100k requests, and the test stops it much earlier.
            for _ in 0..100_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let batch: Vec<Cdr> = (i..i + 5).map(cdr).collect();
                i += 5;
                n.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::to_vec(&batch).unwrap();
                let res =
                    tokio::time::timeout(Duration::from_secs(3), post_cdrs(&clients[target], body))
                        .await;
                match res {
                    Ok(Ok((201, _))) => {
                        let now = Instant::now();
                        if let Some(prev) = last_ack {
                            let mut longest = g.lock().unwrap();
                            *longest = (*longest).max(now - prev);
                        }
                        last_ack = Some(now);
                        let mut acked = a.lock().unwrap();
                        for c in &batch {
                            acked.insert(c.id.to_string());
                        }
                    }
                    _ => {
                        target = (target + 1) % clients.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Writer {
            stop,
            acked,
            gap,
            attempts,
            task,
        }
    }

    pub async fn finish_with_gap(self) -> (HashSet<String>, Duration) {
        let gap = self.gap.clone();
        let (acked, _) = self.finish().await;
        let longest = *gap.lock().unwrap();
        (acked, longest)
    }

    async fn finish(self) -> (HashSet<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.attempts.load(Ordering::Relaxed))
    }
}

fn clients(c: &LocalCluster) -> Vec<Client> {
    c.nodes.iter().map(|n| n.client().unwrap()).collect()
}

async fn wait_new_master(c: &LocalCluster, old: usize, timeout: Duration) -> usize {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(m) = c.master().await {
            if m != old {
                return m;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new master within {timeout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_master_under_load_loses_no_acknowledged_write_and_restarted_node_catches_up() {
    let mut cluster = three_nodes("").await;
    let old = cluster.master().await.expect("master");
    let writer = Writer::start(clients(&cluster), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_kill = Instant::now();
    cluster.nodes[old].kill();
    let new = wait_new_master(&cluster, old, Duration::from_secs(10)).await;
    eprintln!(
        "failover: node {} → node {} in {:?}",
        old + 1,
        new + 1,
        t_kill.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, attempts) = writer.finish().await;
    eprintln!("{} CDRs acknowledged in {attempts} requests", acked.len());
    assert!(
        acked.len() > 100,
        "too few writes acknowledged: {}",
        acked.len()
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i == old {
            continue;
        }
        let have = wait_for_ids(&n.client().unwrap(), &acked, Duration::from_secs(10)).await;
        let lost: Vec<_> = acked.difference(&have).take(5).collect();
        assert!(
            lost.is_empty(),
            "node {} lost {} acknowledged CDRs, e.g. {lost:?}",
            n.id,
            acked.difference(&have).count()
        );
    }
    // The killed node restarts, opens its store cleanly and catches up.
    cluster.start(old).unwrap();
    cluster
        .wait_health(old, Duration::from_secs(20))
        .await
        .unwrap();
    let have = wait_for_ids(
        &cluster.nodes[old].client().unwrap(),
        &acked,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        acked.is_subset(&have),
        "restarted node lacks {} CDRs",
        acked.difference(&have).count()
    );
    assert_eq!(
        role(&cluster.nodes[old].client().unwrap()).await.as_deref(),
        Some("standby")
    );
}

/// kill -9 of random nodes under write load, `TANDEM_CRASH_ROUNDS` times (default 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_of_random_nodes_loses_nothing() {
    let rounds: usize = std::env::var("TANDEM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("TANDEM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash loop: {rounds} rounds, seed {seed} (rerun with TANDEM_SEED={seed})");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut cluster = three_nodes("").await;
    let writer = Writer::start(clients(&cluster), 1_000_000);
    for round in 0..rounds {
        let victim = rand::Rng::gen_range(&mut rng, 0..cluster.nodes.len());
        tokio::time::sleep(Duration::from_millis(rand::Rng::gen_range(
            &mut rng,
            300..1500,
        )))
        .await;
        eprintln!("round {round}: kill -9 node {}", victim + 1);
        cluster.nodes[victim].kill();
        tokio::time::sleep(Duration::from_millis(rand::Rng::gen_range(
            &mut rng,
            200..2000,
        )))
        .await;
        cluster.start(victim).unwrap();
        cluster
            .wait_health(victim, Duration::from_secs(20))
            .await
            .unwrap();
        // Wait for a leader before the next kill so that a majority is always alive.
        cluster
            .wait_for(Duration::from_secs(20), "a leader", |v| {
                v.leader_id.is_some()
            })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, _) = writer.finish().await;
    assert!(!acked.is_empty());
    for n in &cluster.nodes {
        let have = wait_for_ids(&n.client().unwrap(), &acked, Duration::from_secs(20)).await;
        assert!(
            acked.is_subset(&have),
            "node {} lost {} acknowledged CDRs (seed {seed})",
            n.id,
            acked.difference(&have).count()
        );
    }
}
