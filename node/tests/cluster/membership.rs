//! Joining (via snapshot after log compaction), refusing bad tokens and certificates.

use tandem_replication::network::{self, RpcRequest, RpcResponse};
use tandem_replication::tls::{self, ClusterCa, JoinToken};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_joins_via_snapshot_after_log_compaction() {
    // Snapshot every 50 entries so that the log is compacted before node 4 joins.
    let mut cluster = LocalCluster::prepare(
        exe(),
        4,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
        "snapshot_logs = 50",
    )
    .unwrap();
    let joiner = cluster.nodes.pop().unwrap();
    cluster.bootstrap().await.unwrap();
    let m = cluster.master().await.unwrap();
    let c = cluster.nodes[m].client().unwrap();
    let mut want = HashSet::new();
    for i in 0..200 {
        let x = cdr(50_000 + i);
        want.insert(x.id.to_string());
        let (s, _) = post_cdrs(&c, serde_json::to_vec(&x).unwrap())
            .await
            .unwrap();
        assert_eq!(s, 201);
    }
    let v = cluster
        .wait_for(Duration::from_secs(10), "log purged on the leader", |v| {
            v.purged_index.unwrap_or(0) > 0
        })
        .await
        .unwrap();
    eprintln!("leader purged up to {}", v.purged_index.unwrap_or(0));
    cluster.nodes.push(joiner);
    // The token as an installer fetches it: from node 1's API (only node 1 has it).
    let on_disk = std::fs::read_to_string(cluster.nodes[0].dir.join("tls/join.token")).unwrap();
    let served = cluster.nodes[0]
        .client()
        .unwrap()
        .join_token()
        .await
        .unwrap();
    assert_eq!(served.token, on_disk.trim(), "{served:?}");
    let other = cluster.nodes[1].client().unwrap().join_token().await;
    assert!(
        other.is_err(),
        "node 2 has no CA key, yet served a token: {other:?}"
    );
    let token = served.token;
    let out = tokio::process::Command::new(exe())
        .args([
            "join",
            &cluster.nodes[0].peer_addr,
            "--token",
            token.trim(),
            "--config",
        ])
        .arg(&cluster.nodes[3].config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.start(3).unwrap();
    cluster
        .wait_for(Duration::from_secs(30), "node 4 to become a voter", |v| {
            v.voters == 4
        })
        .await
        .unwrap();
    let c4 = cluster.nodes[3].client().unwrap();
    let have = wait_for_ids(&c4, &want, Duration::from_secs(20)).await;
    assert!(
        want.is_subset(&have),
        "joined node lacks {} CDRs",
        want.difference(&have).count()
    );
    let view = c4.cluster().await.unwrap();
    assert!(
        view.snapshot_index.is_some(),
        "node 4 did not install a snapshot: {view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_or_foreign_certificate_is_refused() {
    let mut cluster = LocalCluster::prepare(exe(), 2, &["127.0.0.1"], "").unwrap();
    let outsider = cluster.nodes.pop().unwrap();
    cluster.bootstrap().await.unwrap();
    let token: JoinToken = std::fs::read_to_string(cluster.nodes[0].dir.join("tls/join.token"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let peer0 = cluster.nodes[0].peer_addr.clone();
    let join = |t: String| {
        let cfg = outsider.config.clone();
        let peer0 = peer0.clone();
        async move {
            tokio::process::Command::new(exe())
                .args(["join", &peer0, "--token", &t, "--config"])
                .arg(cfg)
                .output()
                .await
                .unwrap()
        }
    };
    // Right CA, wrong secret.
    let bad_secret = JoinToken {
        secret: "00".repeat(32),
        ca_fingerprint: token.ca_fingerprint.clone(),
    };
    let out = join(bad_secret.to_string()).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("join token refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Token for another cluster (CA fingerprint does not match the server).
    let other = ClusterCa::generate("other").unwrap();
    let out = join(JoinToken::generate(&other).to_string()).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");
    // A peer with a certificate from another CA cannot talk Raft to the cluster.
    let foreign = other.issue_identity(9).unwrap();
    let tls_cfg = tls::client_config(&foreign).unwrap();
    let res = async {
        let mut s = network::connect(&peer0, tls_cfg, Duration::from_secs(3)).await?;
        network::exchange(
            &mut s,
            &RpcRequest::Leader(network::LeaderOp::ReadIndex),
            Duration::from_secs(3),
        )
        .await
    }
    .await;
    assert!(
        !matches!(res, Ok(RpcResponse::Leader(Ok(_)))),
        "foreign peer was served: {res:?}"
    );
    // And the refusal is logged clearly on the node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(cluster.nodes[0].log_path()).unwrap();
    assert!(
        log.contains("peer refused"),
        "no refusal in the node log:\n{log}"
    );
    assert!(log.contains("join refused: wrong token"), "{log}");
    assert_eq!(
        cluster
            .wait_for(Duration::from_secs(2), "1 voter", |v| v.voters == 1)
            .await
            .unwrap()
            .members
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_form_leave_shrinks_to_four_which_survive_a_failure() {
    let mut cluster = LocalCluster::prepare(
        exe(),
        5,
        &[
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
        ],
        "",
    )
    .unwrap();
    cluster.bootstrap().await.unwrap();
    // `tandem leave` on node 5 removes it.
    let out = tokio::process::Command::new(exe())
        .args(["leave", "--json", "--config"])
        .arg(&cluster.nodes[4].config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .wait_for(Duration::from_secs(10), "4 voters after leave", |v| {
            v.voters == 4
        })
        .await
        .unwrap();
    cluster.nodes[4].kill();
    // Back to 5 would need a re-join; with 4 voters, lose one (quorum 3 of 4) and still commit.
    let m = cluster.master().await.unwrap();
    let victim = (m + 1) % 4;
    cluster.nodes[victim].kill();
    let x = cdr(70_000);
    let (s, _) = post_cdrs(
        &cluster.nodes[m].client().unwrap(),
        serde_json::to_vec(&x).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(s, 201);
    let want: HashSet<String> = [x.id.to_string()].into();
    for (i, n) in cluster.nodes.iter().enumerate().take(4) {
        if i != victim {
            assert!(want.is_subset(
                &wait_for_ids(&n.client().unwrap(), &want, Duration::from_secs(10)).await
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_voters_commit_only_with_both_and_status_says_so() {
    let mut cluster = LocalCluster::prepare(exe(), 2, &["127.0.0.1", "127.0.0.2"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let m = cluster.master().await.unwrap();
    let view = cluster.nodes[m].client().unwrap().cluster().await.unwrap();
    assert!(
        view.notes
            .iter()
            .any(|n| n.contains("2 voters: a write needs both")),
        "{view:?}"
    );
    let (s, _) = post_cdrs(
        &cluster.nodes[m].client().unwrap(),
        serde_json::to_vec(&cdr(1)).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(s, 201);
    // With the other voter gone, a write is not acknowledged.
    cluster.nodes[1 - m].kill();
    let res = tokio::time::timeout(
        Duration::from_secs(4),
        post_cdrs(
            &cluster.nodes[m].client().unwrap(),
            serde_json::to_vec(&cdr(2)).unwrap(),
        ),
    )
    .await;
    assert!(
        !matches!(res, Ok(Ok((201, _)))),
        "a write was acknowledged by 1 of 2 voters: {res:?}"
    );
}
