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
