//! Multi-process tests: real `tandem` processes on 127.0.0.x.
//!
//! Each test builds its own cluster under a temporary directory; the processes are
//! killed and the directory removed when the test ends (also on failure: drop).

mod alarms;
mod api_errors;
mod durability;
mod https;
mod membership;
mod recordings;
mod roles;
mod sip;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem::client::Client;
use tandem::demo::LocalCluster;
use tandem_replication::cdr::Cdr;

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

/// A 3-node cluster on 127.0.0.1-3, bootstrapped (init + 2 joins) and all voters.
pub async fn three_nodes(extra: &str) -> LocalCluster {
    let mut c = LocalCluster::prepare(exe(), 3, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], extra)
        .expect("prepare");
    c.bootstrap().await.expect("bootstrap");
    c
}

pub fn cdr(i: usize) -> Cdr {
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-01T08:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
        + chrono::Duration::seconds(i as i64);
    let end = start + chrono::Duration::seconds(60);
    Cdr::new_call(
        &format!("{}", 1000 + i % 50),
        &format!("{}", 2000 + i % 7),
        start,
        Some(start + chrono::Duration::seconds(5)),
        end,
        "test",
    )
}

/// Every CDR id a node holds (local read, paged).
pub async fn ids_on(client: &Client) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/cdrs?limit=10000&cursor={c}"),
            None => "/api/v1/cdrs?limit=10000".to_string(),
        };
        let v = client.get(&path).await?;
        for r in v["cdrs"].as_array().into_iter().flatten() {
            ids.insert(r["id"].as_str().unwrap_or_default().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Ok(ids)
}

/// Wait until `client` holds every id in `want` (standbys apply asynchronously).
pub async fn wait_for_ids(
    client: &Client,
    want: &HashSet<String>,
    timeout: Duration,
) -> HashSet<String> {
    let t0 = Instant::now();
    loop {
        let have = ids_on(client).await.unwrap_or_default();
        if want.is_subset(&have) || t0.elapsed() > timeout {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn health(c: &Client) -> Value {
    c.get("/health").await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_written_to_master_are_read_from_each_standby() {
    let cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let cdrs: Vec<Cdr> = (0..200).map(cdr).collect();
    let want: HashSet<String> = cdrs.iter().map(|c| c.id.to_string()).collect();
    let (status, v) = cluster.nodes[m]
        .client()
        .unwrap()
        .post_raw("/api/v1/cdrs", serde_json::to_vec(&cdrs).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["inserted"], 200);
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i == m {
            continue;
        }
        let c = n.client().unwrap();
        let have = wait_for_ids(&c, &want, Duration::from_secs(10)).await;
        assert_eq!(have, want, "standby node {} lacks CDRs", n.id);
        assert_eq!(health(&c).await["role"], "standby");
    }
    // The standby's JSON page and CSV export hold exactly the records written, in
    // start-time order (both are written straight from the stored bytes).
    let mut sorted = cdrs.clone();
    sorted.sort_by_key(|c| (c.start, c.id));
    let sc = cluster.nodes[(m + 1) % 3].client().unwrap();
    let page = sc.get("/api/v1/cdrs?limit=1000").await.unwrap();
    let got: Vec<Cdr> = serde_json::from_value(page["cdrs"].clone()).unwrap();
    assert_eq!(got, sorted, "JSON page differs from what was written");
    let mut csv_text = Vec::new();
    sc.download("/api/v1/cdrs?format=csv", &mut csv_text)
        .await
        .unwrap();
    let mut want = csv::Writer::from_writer(Vec::new());
    want.write_record(tandem_replication::cdr::CSV_COLUMNS)
        .unwrap();
    for c in &sorted {
        want.write_record(c.csv_record()).unwrap();
    }
    assert_eq!(
        String::from_utf8(csv_text).unwrap(),
        String::from_utf8(want.into_inner().unwrap()).unwrap(),
        "CSV export differs from what was written"
    );
    // A write sent to a standby is forwarded to the master and committed.
    let standby = (m + 1) % 3;
    let extra = cdr(10_000);
    let (status, v) = cluster.nodes[standby]
        .client()
        .unwrap()
        .post_raw("/api/v1/cdrs", serde_json::to_vec(&extra).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    // Retrying the same write does not duplicate it (idempotent on id).
    let (status, v) = cluster.nodes[m]
        .client()
        .unwrap()
        .post_raw("/api/v1/cdrs", serde_json::to_vec(&extra).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (status, v["inserted"].as_u64(), v["duplicates"].as_u64()),
        (201, Some(0), Some(1))
    );
    // Strong read on a standby sees the forwarded write immediately.
    let v = cluster.nodes[standby]
        .client()
        .unwrap()
        .get(&format!(
            "/api/v1/cdrs?consistency=strong&caller={}&limit=10000",
            extra.caller
        ))
        .await
        .unwrap();
    assert!(v["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == extra.id.to_string()));
    // Config written on a standby is readable everywhere.
    let (status, _) = cluster.nodes[standby]
        .client()
        .unwrap()
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/config/retention.cdr_days",
            &serde_json::json!(365),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let v = cluster.nodes[m]
        .client()
        .unwrap()
        .get("/api/v1/config/retention.cdr_days?consistency=strong")
        .await
        .unwrap();
    assert_eq!(v["value"], 365);
}
