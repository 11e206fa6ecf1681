//! Answers that were wrong on a probe of the release binary (hardening issue,
//! defect 10): each must be right, with the JSON error shape and a reason.

use reqwest::Method;
use tandem_api::RawAnswer;

use super::*;

/// `answer` is an error in the JSON shape (`{"error": "..."}`) whose text
/// contains `expect`.
fn json_error(what: &str, answer: &RawAnswer, status: u16, expect: &str) {
    let body = String::from_utf8_lossy(&answer.body);
    assert_eq!(answer.status, status, "{what}: {body}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: not JSON: {:?} {body}",
        answer.header("content-type")
    );
    let text = answer.error();
    assert!(text.contains(expect), "{what}: {text:?} lacks {expect:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_the_json_error_shape() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();

    let big = vec![b' '; tandem::http::MAX_BODY + 1];
    let a = c
        .raw(Method::POST, "/api/v1/cdrs", Some(big))
        .await
        .unwrap();
    json_error("oversized body", &a, 413, "16 MiB");

    let a = c
        .raw(Method::GET, "/api/v1/cluster/switchover", None)
        .await
        .unwrap();
    json_error("wrong method", &a, 405, "not allowed");
    assert_eq!(a.header("allow"), Some("POST"));

    let long = format!("/api/v1/config/{}", "k".repeat(20_000));
    let a = c.raw(Method::GET, &long, None).await.unwrap();
    json_error("long URI", &a, 414, "");

    let a = c
        .raw(Method::GET, "/api/v1/recordings/%ff%fe", None)
        .await
        .unwrap();
    json_error("bad UTF-8 path", &a, 400, "UTF-8");

    let a = c
        .raw(Method::GET, "/api/v1/nothing-here", None)
        .await
        .unwrap();
    json_error("unknown route", &a, 404, "/api/v1/nothing-here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_in_one_batch_store_one_and_say_so() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let one = cdr(1);
    let added = c.cdrs_add(&[one.clone(), one.clone()]).await.unwrap();
    assert_eq!((added.inserted, added.duplicates), (1, 1), "{added:?}");
    let again = c.cdrs_add(&[one.clone(), cdr(2)]).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (1, 1), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_as_the_last_voter_is_refused_with_the_reason() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let e = c.leave().await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("last voter"), "{e}");
    let e = c.switchover(Some(9)).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
}

/// Defect 9: maintenance on the only data node took the service down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_the_last_eligible_data_node_needs_force() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let e = c.maintenance_set(1, true, false).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("last data node"), "{e}");
    assert_eq!(cluster.master().await, Some(0), "still the master");
    // The CLI says how to do it on purpose, and --force does it.
    let config = cluster.nodes[0].config.to_str().unwrap().to_string();
    let err = cluster
        .tandem(&["maintenance", "on", "--config", &config])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    cluster
        .tandem(&["maintenance", "on", "--force", "--config", &config])
        .await
        .unwrap();
    let v = c.config_get("maintenance.1").await.unwrap();
    assert_eq!(v.value, serde_json::json!(true));
}

/// `tandem run --config <text>` must fail at start-up; its stderr.
async fn startup_refused(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(exe())
            .args(["run", "--config"])
            .arg(&path)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: the node started instead of refusing"))
    .unwrap();
    assert!(!out.status.success(), "{name}: exit status {}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_name_the_key_the_file_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = |extra: &str| {
        format!(
            "[node]\nid = 1\ndata_dir = {:?}\n[cluster]\nlisten = \"127.0.0.1:0\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n{extra}",
            data.display()
        )
    };
    let err = startup_refused(
        dir.path(),
        "snap",
        &base("").replace("[api]", "snapshot_logs = 0\n[api]"),
    )
    .await;
    assert!(
        err.contains("cluster.snapshot_logs") && err.contains("fix"),
        "{err}"
    );

    let hook = dir.path().join("on-master.sh");
    let err = startup_refused(
        dir.path(),
        "hook",
        &base(&format!("[hooks]\non_master = {:?}\n", hook.display())),
    )
    .await;
    assert!(
        err.contains("hooks.on_master") && err.contains("chmod"),
        "{err}"
    );
    std::fs::write(&hook, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = startup_refused(
        dir.path(),
        "hook2",
        &base(&format!("[hooks]\non_master = {:?}\n", hook.display())),
    )
    .await;
    assert!(err.contains("is not executable"), "{err}");

    let err = startup_refused(
        dir.path(),
        "datadir",
        "[node]\nid = 1\ndata_dir = \"/proc/tandem-cannot-be-here\"\n",
    )
    .await;
    assert!(
        err.contains("node.data_dir")
            && err.contains("/proc/tandem-cannot-be-here")
            && err.contains("fix"),
        "{err}"
    );

    let err = startup_refused(
        dir.path(),
        "tls",
        // Appended to the [api] section.
        &base("tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n"),
    )
    .await;
    assert!(
        err.contains("api.tls_cert") && err.contains("/nonexistent/c.pem") && err.contains("fix"),
        "{err}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = startup_refused(
        dir.path(),
        "bind",
        &base("").replace(
            "[api]\nlisten = \"127.0.0.1:0\"",
            &format!("[api]\nlisten = \"127.0.0.1:{port}\""),
        ),
    )
    .await;
    assert!(
        err.contains("api.listen") && err.contains(&port.to_string()) && err.contains("fix"),
        "{err}"
    );
}
