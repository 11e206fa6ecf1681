//! Every bad input gets a 4xx with a JSON error that says what is wrong.

use serde_json::json;

use super::*;

/// The status and the text of an error answer (the request must have failed).
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Option<u16>, String) {
    let e = r.expect_err("the node accepted a bad request");
    (e.status(), e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_with_a_clear_error() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let good = serde_json::to_value(cdr(1)).unwrap();

    // Bad request bodies are built as JSON values on purpose: no typed CDR can be
    // missing a field or carry a wrong type.
    let post = |body: Vec<u8>| {
        let c = cluster.nodes[0].client().unwrap();
        async move { refused(post_cdrs(&c, body).await) }
    };
    let (status, e) = post(b"{\"id\": ".to_vec()).await;
    assert!(status == Some(400) && e.contains("malformed JSON"), "{e}");
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("caller");
    let (status, e) = post(serde_json::to_vec(&missing).unwrap()).await;
    assert!(
        status == Some(400) && e.contains("missing field `caller`"),
        "{e}"
    );
    let mut wrong = good.clone();
    wrong["duration"] = json!("long");
    let (status, e) = post(serde_json::to_vec(&wrong).unwrap()).await;
    assert!(status == Some(400) && e.contains("invalid type"), "{e}");
    let mut order = good.clone();
    order["end"] = json!("2020-01-01T00:00:00Z");
    let (status, e) = post(serde_json::to_vec(&order).unwrap()).await;
    assert!(status == Some(400) && e.contains("`end`"), "{e}");
    let (status, e) = post(b"[]".to_vec()).await;
    assert!(status == Some(400) && e.contains("empty array"), "{e}");
    let mut unknown = good.clone();
    unknown["colour"] = json!("red");
    let (status, e) = post(serde_json::to_vec(&unknown).unwrap()).await;
    assert!(
        status == Some(400) && e.contains("unknown field `colour`"),
        "{e}"
    );

    for (query, expect) in [
        (
            "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "bad time range",
        ),
        ("from=yesterday", "not an RFC 3339 time"),
        ("limit=1000000", "too large"),
        ("limit=-3", "not a positive integer"),
        ("limit=0", "at least 1"),
        ("cursor=zz", "cursor"),
        ("format=xml", "format"),
        ("colour=red", "unknown query parameter `colour`"),
        ("consistency=maybe", "consistency"),
    ] {
        let (status, e) = refused(c.get::<CdrPage>(&format!("/api/v1/cdrs?{query}")).await);
        assert!(status == Some(400) && e.contains(expect), "{query}: {e}");
    }
    let (status, e) = refused(c.config_get("no.such.key").await);
    assert_eq!(status, Some(404), "{e}");
    // The client sends the key percent-encoded: `bad%20key`.
    let (status, e) = refused(c.config_set("bad key", &json!(1)).await);
    assert!(status == Some(400) && e.contains("only letters"), "{e}");

    // No token, wrong token → 401.
    let anon = Client::new(c.base.clone(), None).unwrap();
    let (status, e) = refused(anon.cdrs_query(&CdrFilter::default()).await);
    assert!(status == Some(401) && e.contains("Bearer"), "{e}");
    let wrong = Client::new(c.base.clone(), Some("nope".into())).unwrap();
    let (status, e) = refused(wrong.cluster().await);
    assert_eq!(status, Some(401), "{e}");
    // /health needs no token.
    assert_eq!(anon.health().await.unwrap().role, "master");
    // The node is still fine after all that.
    let (status, _) = post_cdrs(&c, serde_json::to_vec(&good).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 201);
    cluster.nodes[0].kill();
}

#[tokio::test]
async fn bad_config_file_stops_startup_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nheartbeat_ms = 2000\nelection_timeout_min_ms = 1000\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(exe())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("heartbeat_ms"),
        "{err}"
    );
    std::fs::write(&path, "[node]\ncolour = 1\n").unwrap();
    let out = tokio::process::Command::new(exe())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("colour"), "{err}");
}

/// `tandem run` with no config: single node on 127.0.0.1:8080 / :7000, data in
/// ./tandem-data, admin token created with mode 0600 and printed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_config_prints_the_admin_token_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut cmd = tokio::process::Command::new(exe());
        cmd.arg("run")
            .current_dir(dir.path())
            .env("TANDEM_IGNORE_ETC", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    let anon = Client::new("http://127.0.0.1:8080".into(), None).unwrap();
    let wait_master = || async {
        let t0 = Instant::now();
        loop {
            if let Ok(h) = anon.health().await {
                if h.role == "master" {
                    return h;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no master on 127.0.0.1:8080"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let stop = |mut child: tokio::process::Child| async move {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(10), async {
            let mut s = String::new();
            if let Some(mut o) = child.stdout.take() {
                tokio::io::AsyncReadExt::read_to_string(&mut o, &mut s)
                    .await
                    .unwrap();
            }
            child.wait().await.unwrap();
            s
        })
        .await
        .expect("node did not stop on SIGTERM");
        out
    };
    let child = start();
    wait_master().await;
    let first = stop(child).await;
    let token_path = dir.path().join("tandem-data/admin.token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert!(
        first.contains(token.trim()),
        "token not printed on first start: {first:?}"
    );
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let child = start();
    wait_master().await;
    let second = stop(child).await;
    assert!(
        !second.contains(token.trim()),
        "token printed again: {second:?}"
    );
}

/// Replicated settings are checked by the server before they are proposed: a bad
/// value is refused with 400 naming the key, and nothing is replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replicated_settings_are_refused_before_they_are_replicated() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    for (key, value, expect) in [
        // "true" as a string used to be stored and read as "off".
        ("maintenance.1", json!("true"), "not a boolean"),
        // There is no node 99.
        ("maintenance.99", json!(true), "node 99 is not a member"),
        ("retention.cdr_days", json!("a year"), "number of days"),
        ("retention.interval_s", json!(0), "seconds > 0"),
        ("smtp.port", json!(70000), "smtp.port"),
        (
            "alarm.route.cluster",
            json!(["nobody"]),
            "recipient list `nobody`",
        ),
        ("replication.recording_bandwidth_kbps", json!(-1), "KB/s"),
        ("sip.user.201", json!({"password": "short"}), "at least 8"),
    ] {
        let (status, e) = refused(c.config_set(key, &value).await);
        assert!(
            status == Some(400) && e.contains(&format!("config key `{key}`")) && e.contains(expect),
            "{key} = {value}: {e}"
        );
        let (status, _) = refused(c.config_get(key).await);
        assert_eq!(status, Some(404), "{key} was stored anyway");
    }
    // Good values still go through, and free keys take any JSON.
    c.config_set("retention.cdr_days", &json!(365))
        .await
        .unwrap();
    c.config_set("maintenance.1", &json!(false)).await.unwrap();
    c.config_set("site.name", &json!({"city": "Berlin"}))
        .await
        .unwrap();
}
