//! A full disk (a small tmpfs as the data directory): writes get 507 with the
//! reason and `storage.disk_full` is raised instead of the Raft core stopping
//! for good; once space is freed, writes resume by themselves and every
//! acknowledged CDR is there.

use std::path::{Path, PathBuf};

use super::*;

/// A tmpfs mounted for the test, unmounted when dropped (also on failure).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, mb: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

async fn disk_full_alarm(c: &Client) -> bool {
    c.alarms()
        .await
        .is_ok_and(|a| a.active.iter().any(|x| x.id == "storage.disk_full"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_and_recovers_once_space_is_freed() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "min_free_mb = 16").unwrap();
    let dir = cluster.nodes[0].dir.clone();
    // Declared after the cluster: dropped (unmounted) once the node is stopped.
    let Some(_tmpfs) = Tmpfs::mount(&dir, 96) else {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root and the tmpfs filesystem)");
        return;
    };
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();

    // Leave ~30 MiB: the reserve (16 MiB) is reached after a few MiB of CDRs.
    let filler = dir.join("filler");
    let fill = free_bytes(&dir).saturating_sub(30 << 20) as usize;
    std::fs::write(&filler, vec![0u8; fill]).unwrap();

    let mut acked = HashSet::new();
    let mut refusal = None;
    for batch in 0..400 {
        let cdrs: Vec<Cdr> = (0..500).map(|i| cdr(batch * 500 + i)).collect();
        match c.cdrs_add(&cdrs).await {
            Ok(_) => acked.extend(cdrs.iter().map(|c| c.id.to_string())),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let e = refusal.expect("the disk never filled up");
    assert_eq!(e.status(), Some(507), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");
    assert!(e.to_string().contains("min_free_mb"), "{e}");
    assert!(!acked.is_empty());

    // The NOC hears of it; reads and /health go on.
    let t0 = Instant::now();
    while !disk_full_alarm(&c).await {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no storage.disk_full alarm"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.health().await.unwrap();
    c.cdrs_query(&CdrFilter {
        limit: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();

    // Space freed: writes resume by themselves, the alarm clears.
    std::fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    loop {
        match c.cdrs_add(&[cdr(9_000_000)]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "writes did not resume: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let t0 = Instant::now();
    while disk_full_alarm(&c).await {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "storage.disk_full not cleared"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let have = wait_for_ids(&c, &acked, Duration::from_secs(20)).await;
    assert!(
        acked.is_subset(&have),
        "{} acknowledged CDRs lost",
        acked.difference(&have).count()
    );
    cluster.nodes[0].kill();
}

/// Without the reserve (`min_free_mb = 0`) the store itself runs out of space:
/// the node must not stay up fenced with a healthy-looking `/health`; it exits
/// non-zero (systemd restarts it) and, restarted with space, has every
/// acknowledged CDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_runs_out_of_space_exits_non_zero_and_loses_nothing() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "min_free_mb = 0").unwrap();
    let dir = cluster.nodes[0].dir.clone();
    let Some(_tmpfs) = Tmpfs::mount(&dir, 96) else {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root and the tmpfs filesystem)");
        return;
    };
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let filler = dir.join("filler");
    let fill = free_bytes(&dir).saturating_sub(8 << 20) as usize;
    std::fs::write(&filler, vec![0u8; fill]).unwrap();
    let mut acked = HashSet::new();
    let mut failed = false;
    for batch in 0..400 {
        let cdrs: Vec<Cdr> = (0..500).map(|i| cdr(batch * 500 + i)).collect();
        match tokio::time::timeout(Duration::from_secs(10), c.cdrs_add(&cdrs)).await {
            Ok(Ok(_)) => acked.extend(cdrs.iter().map(|c| c.id.to_string())),
            Ok(Err(e)) => {
                eprintln!("write refused: {e}");
                failed = true;
                break;
            }
            Err(_) => {
                eprintln!("write timed out");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the disk never filled up");
    let child = cluster.nodes[0].child.as_mut().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the node kept running after its store failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "exit status {status}");
    std::fs::remove_file(&filler).unwrap();
    cluster.nodes[0].child = None;
    cluster.start(0).unwrap();
    cluster
        .wait_health(0, Duration::from_secs(30))
        .await
        .unwrap();
    let have = wait_for_ids(&c, &acked, Duration::from_secs(30)).await;
    assert!(
        acked.is_subset(&have),
        "{} acknowledged CDRs lost",
        acked.difference(&have).count()
    );
    cluster.nodes[0].kill();
}
