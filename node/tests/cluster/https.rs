//! The API over HTTPS when `[api] tls_cert`/`tls_key` are set.

use std::io::Write;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_https_with_the_configured_certificate() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert_path, key_path) = (cluster.root.join("api.pem"), cluster.root.join("api.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&cluster.nodes[0].config)
        .unwrap();
    writeln!(
        f,
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert_path.display(),
        key_path.display()
    )
    .unwrap();
    drop(f);
    cluster.start(0).unwrap();
    let pem = std::fs::read(&cert_path).unwrap();
    let anon = Client::with_root(
        format!("https://{}", cluster.nodes[0].api_addr),
        None,
        Some(&pem),
    )
    .unwrap();
    let t0 = Instant::now();
    let health = loop {
        match anon.health().await {
            Ok(h) if h.role == "master" => break h,
            _ if t0.elapsed() > Duration::from_secs(20) => panic!("no HTTPS /health"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(health.node_id, 1);
    // The CLI finds the scheme and the certificate through the config file.
    let out = tokio::process::Command::new(exe())
        .args(["status", "--json", "--config"])
        .arg(&cluster.nodes[0].config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The audit log names the client of an HTTPS request too.
    let token = std::fs::read_to_string(cluster.nodes[0].dir.join("admin.token")).unwrap();
    let admin = anon.with_token(Some(token.trim().to_string()));
    admin
        .config_set("zz.over_https", &serde_json::json!(true))
        .await
        .unwrap();
    let log = admin.audit(None, None).await.unwrap();
    let e = log
        .entries
        .iter()
        .find(|e| e.target == "key=zz.over_https")
        .expect("audited");
    assert!(e.from.starts_with("127.0.0.1:"), "{e:?}");
    // Plain HTTP on the same port gets nothing useful.
    let plain = Client::new(format!("http://{}", cluster.nodes[0].api_addr), None).unwrap();
    assert!(plain.health().await.is_err());
}

#[tokio::test]
async fn a_bad_api_certificate_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.path().join("d").display(),
            junk.display(),
            junk.display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(exe())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("api.tls_cert"),
        "{err}"
    );
}

/// The appliance's default: each node serves the certificate the cluster CA issued
/// it at init (the init node) or join (the others, signed by the node they joined
/// through), naming its own addresses; clients need only the cluster CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_https_with_the_cluster_ca_certificate_issued_at_init_and_join() {
    let mut cluster = LocalCluster::prepare(exe(), 2, &["127.0.0.1", "127.0.0.2"], "").unwrap();
    cluster.serve_https().unwrap();
    cluster.bootstrap().await.unwrap();
    for (i, n) in cluster.nodes.iter().enumerate() {
        // Verified against ca.pem and the node's own IP address (127.0.0.1, 127.0.0.2).
        let h = n.anonymous().unwrap().health().await.unwrap();
        assert_eq!(h.node_id, n.id);
        let out = tokio::process::Command::new(exe())
            .args(["status", "--json", "--config"])
            .arg(&n.config)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "node {}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        // A client that does not trust the cluster CA is refused.
        let stranger = Client::new(format!("https://{}", n.api_addr), None).unwrap();
        assert!(stranger.health().await.is_err(), "node {}", i + 1);
    }
}
