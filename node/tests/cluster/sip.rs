//! SIP users in the replicated config: add, list (no passwords), errors, remove.

use tandem::settings::sip::StoredUser;
use tandem_api::ConfigList;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_users_are_replicated_and_passwords_never_shown() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let cfg = cluster.nodes[0].config.display().to_string();
    let tandem = |args: &[&str]| {
        let out = std::process::Command::new(exe())
            .args(args)
            .args(["--config", &cfg])
            .env("TANDEM_IGNORE_ETC", "1")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = tandem(&[
        "sip",
        "user",
        "add",
        "201",
        "--password",
        "s3cret-pw",
        "--name",
        "Reception",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("SIP user 201 added"), "{out}");
    let (ok, _, err) = tandem(&["sip", "user", "add", "202", "--password", "another-pw"]);
    assert!(ok, "{err}");
    let (ok, out, _) = tandem(&["sip", "user", "list"]);
    assert!(ok);
    assert!(
        out.contains("201") && out.contains("Reception") && out.contains("202"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "password shown: {out}");
    // Not through the generic config API either.
    let c = cluster.nodes[0].client().unwrap();
    let e = c.config_get("sip.user.201").await.unwrap();
    let user: StoredUser = serde_json::from_value(e.value.clone()).unwrap();
    assert_eq!(user.password, "***", "{e:?}");
    assert_eq!(user.display_name.as_deref(), Some("Reception"), "{e:?}");
    // Nor in the listing: the answer's bytes as they came, then its entries.
    let a = c
        .raw(reqwest::Method::GET, "/api/v1/config?prefix=sip.", None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&a.body);
    assert_eq!(a.status, 200, "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let list: ConfigList = a.json().unwrap();
    let keys: Vec<&str> = list.config.iter().map(|e| e.key.as_str()).collect();
    assert!(
        keys.contains(&"sip.user.201") && keys.contains(&"sip.user.202"),
        "{keys:?}"
    );
    // Bad input is refused with the reason.
    let (ok, _, err) = tandem(&["sip", "user", "add", "20 1", "--password", "long-enough"]);
    assert!(!ok && err.contains("extension"), "{err}");
    let (ok, _, err) = tandem(&["sip", "user", "add", "203", "--password", "short"]);
    assert!(!ok && err.contains("at least 8"), "{err}");
    // Remove; a second removal is a 404 naming the user.
    let (ok, _, err) = tandem(&["sip", "user", "remove", "202"]);
    assert!(ok, "{err}");
    let (ok, _, err) = tandem(&["sip", "user", "remove", "202"]);
    assert!(!ok && err.contains("no SIP user 202"), "{err}");
    let (ok, out, _) = tandem(&["sip", "status"]);
    assert!(ok && out.contains("registrations: 0"), "{out}");
    // The single node is master: its telephony service answers.
    assert!(out.contains("telephony service: active (master)"), "{out}");
    let metrics = reqwest::get(format!("http://{}/metrics", cluster.nodes[0].api_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tandem_sip_active_calls 0"), "{metrics}");
    assert!(
        metrics.contains("tandem_rtp_packets_relayed_total 0"),
        "{metrics}"
    );
}
