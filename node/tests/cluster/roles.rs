//! Switchover and maintenance on a 127.0.0.x cluster (no VIP: roles only).

use serde::de::DeserializeOwned;
use tandem_api::Switchover;

use super::*;

/// What `tandem maintenance on|off --json` prints (the CLI's own answer).
#[derive(Debug, serde::Deserialize)]
struct MaintenanceSet {
    node: u64,
    maintenance: bool,
}

/// Run `tandem <args> --json`; its output decoded as `T`.
async fn tandem_cmd<T: DeserializeOwned>(args: &[&str], config: &std::path::Path) -> T {
    let out = tokio::process::Command::new(exe())
        .args(args)
        .args(["--json", "--config"])
        .arg(config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "tandem {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tandem {args:?} --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_moves_the_master_and_loses_nothing() {
    let cluster = three_nodes("").await;
    let old = cluster.master().await.unwrap();
    let target = (old + 1) % 3;
    let writer = super::durability::Writer::start(
        cluster.nodes.iter().map(|n| n.client().unwrap()).collect(),
        900_000,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v: Switchover = tandem_cmd(
        &["switchover", "--to", &cluster.nodes[target].id.to_string()],
        &cluster.nodes[old].config,
    )
    .await;
    assert_eq!(v.master, cluster.nodes[target].id, "{v:?}");
    eprintln!("switchover took {} ms", v.took_ms);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, gap) = writer.finish_with_gap().await;
    eprintln!(
        "{} CDRs acknowledged; longest gap between acknowledged writes {gap:?}",
        acked.len()
    );
    assert_eq!(cluster.master().await, Some(target));
    for n in &cluster.nodes {
        let have = wait_for_ids(&n.client().unwrap(), &acked, Duration::from_secs(10)).await;
        assert!(
            acked.is_subset(&have),
            "node {} lost {} acknowledged CDRs",
            n.id,
            acked.difference(&have).count()
        );
    }
    // Switching to a node that is not a member is refused with a clear error.
    let out = tokio::process::Command::new(exe())
        .args(["switchover", "--to", "42", "--config"])
        .arg(&cluster.nodes[target].config)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node 42 is not a data voter"),
        "{err}"
    );
    // The same answer from every node: a standby forwards the request and the
    // leader's refusal keeps its class over the peer protocol (it was a 500 on
    // standbys while the leader itself said 400).
    for n in &cluster.nodes {
        let e = n.client().unwrap().switchover(Some(42)).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "node {}: {e}", n.id);
        assert!(e.to_string().contains("node 42 is not a data voter"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_in_maintenance_hands_over_and_is_not_reelected() {
    let mut cluster = three_nodes("").await;
    let old = cluster.master().await.unwrap();
    let v: MaintenanceSet = tandem_cmd(&["maintenance", "on"], &cluster.nodes[old].config).await;
    assert!(v.maintenance, "{v:?}");
    assert_eq!(v.node, cluster.nodes[old].id, "{v:?}");
    let t0 = Instant::now();
    let new = loop {
        match cluster.master().await {
            Some(m) if m != old => break m,
            _ if t0.elapsed() > Duration::from_secs(10) => {
                panic!("master in maintenance did not hand over")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let view = cluster.nodes[old]
        .client()
        .unwrap()
        .cluster()
        .await
        .unwrap();
    assert!(view.maintenance, "{view:?}");
    // Kill the new master: the node in maintenance must not take over.
    cluster.nodes[new].kill();
    let third = (0..3).find(|i| *i != old && *i != new).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if cluster.master().await == Some(third) {
            break;
        }
        assert_ne!(
            cluster.master().await,
            Some(old),
            "node in maintenance became master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.master().await, Some(third));
    let v: MaintenanceSet = tandem_cmd(
        &["maintenance", "off"],
        &cluster.nodes[third].config.clone(),
    )
    .await;
    assert!(!v.maintenance, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_nodes_and_a_witness_fail_over_and_the_witness_never_leads() {
    let mut cluster =
        LocalCluster::prepare(exe(), 3, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], "").unwrap();
    // Node 3 is a witness.
    let text = std::fs::read_to_string(&cluster.nodes[2].config).unwrap();
    std::fs::write(
        &cluster.nodes[2].config,
        text.replace("name = \"node-3\"", "name = \"node-3\"\nrole = \"witness\""),
    )
    .unwrap();
    cluster.bootstrap().await.unwrap();
    assert_eq!(
        role(&cluster.nodes[2].client().unwrap()).await.as_deref(),
        Some("witness")
    );
    let view = cluster.nodes[0].client().unwrap().cluster().await.unwrap();
    assert_eq!(view.data_voters, 2, "{view:?}");
    let first = cluster.master().await.unwrap();
    assert_ne!(first, 2, "the witness must never be master");
    // Kill the witness: nothing moves.
    cluster.nodes[2].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.master().await,
        Some(first),
        "master changed when the witness died"
    );
    let (s, _) = post_cdrs(
        &cluster.nodes[first].client().unwrap(),
        serde_json::to_vec(&cdr(1)).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "2 of 3 voters must still commit");
    // Witness back; kill the master data node: the other data node takes over.
    cluster.start(2).unwrap();
    cluster
        .wait_health(2, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nodes[first].kill();
    let other = 1 - first;
    let t0 = Instant::now();
    while cluster.master().await != Some(other) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "standby data node did not take over"
        );
        assert_ne!(cluster.master().await, Some(2), "the witness became master");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("standby took over in {:?}", t0.elapsed());
}
