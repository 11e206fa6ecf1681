//! Multi-process tests: real `tandem` processes on 127.0.0.x.
//!
//! Each test builds its own cluster under a temporary directory; the processes are
//! killed and the directory removed when the test ends (also on failure: drop).

mod alarms;
mod api_errors;
mod disk_full;
mod durability;
mod exports;
mod https;
mod limits;
mod membership;
mod recordings;
mod roles;
mod sip;
mod users;
mod wrong_answers;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_api::{Cdr, CdrFilter, CdrPage, CdrsAdded, Client, ClientError, ConfigEntry, Health};
use tandem_harness::LocalCluster;

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
    let mut filter = CdrFilter {
        limit: Some(10_000),
        ..CdrFilter::default()
    };
    for _ in 0..1000 {
        let page = client.cdrs_query(&filter).await?;
        ids.extend(page.cdrs.iter().map(|c| c.id.to_string()));
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
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

/// `/health` of a node, or None if it does not answer.
pub async fn health(c: &Client) -> Option<Health> {
    c.health().await.ok()
}

/// The role a node reports on `/health` (None if it does not answer).
pub async fn role(c: &Client) -> Option<String> {
    health(c).await.map(|h| h.role)
}

/// POST a body as given to `/api/v1/cdrs`: the status and the decoded answer.
pub async fn post_cdrs(c: &Client, body: Vec<u8>) -> Result<(u16, CdrsAdded), ClientError> {
    c.post_raw::<CdrsAdded>("/api/v1/cdrs", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_written_to_master_are_read_from_each_standby() {
    let cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let cdrs: Vec<Cdr> = (0..200).map(cdr).collect();
    let want: HashSet<String> = cdrs.iter().map(|c| c.id.to_string()).collect();
    let (status, v) = post_cdrs(
        &cluster.nodes[m].client().unwrap(),
        serde_json::to_vec(&cdrs).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{v:?}");
    assert_eq!(v.inserted, 200);
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i == m {
            continue;
        }
        let c = n.client().unwrap();
        let have = wait_for_ids(&c, &want, Duration::from_secs(10)).await;
        assert_eq!(have, want, "standby node {} lacks CDRs", n.id);
        assert_eq!(role(&c).await.as_deref(), Some("standby"));
    }
    // The standby's JSON page and CSV export hold exactly the records written, in
    // start-time order (both are written straight from the stored bytes).
    let mut sorted = cdrs.clone();
    sorted.sort_by_key(|c| (c.start, c.id));
    let sc = cluster.nodes[(m + 1) % 3].client().unwrap();
    let page = sc
        .cdrs_query(&CdrFilter {
            limit: Some(1000),
            ..CdrFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.cdrs, sorted, "JSON page differs from what was written");
    let mut csv_text = Vec::new();
    sc.cdrs_export(&CdrFilter::default(), &mut csv_text)
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
    let (status, v) = post_cdrs(
        &cluster.nodes[standby].client().unwrap(),
        serde_json::to_vec(&extra).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{v:?}");
    // Retrying the same write does not duplicate it (idempotent on id).
    let (status, v) = post_cdrs(
        &cluster.nodes[m].client().unwrap(),
        serde_json::to_vec(&extra).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((status, v.inserted, v.duplicates), (201, 0, 1));
    // Strong read on a standby sees the forwarded write immediately.
    let page: CdrPage = cluster.nodes[standby]
        .client()
        .unwrap()
        .cdrs_query(&CdrFilter {
            strong: true,
            caller: Some(extra.caller.clone()),
            limit: Some(10_000),
            ..CdrFilter::default()
        })
        .await
        .unwrap();
    assert!(page.cdrs.iter().any(|r| r.id == extra.id));
    // Config written on a standby is readable everywhere.
    let (created, _) = cluster.nodes[standby]
        .client()
        .unwrap()
        .config_set("retention.cdr_days", &serde_json::json!(365))
        .await
        .unwrap();
    assert!(created, "PUT of a new key must answer 201");
    let e: ConfigEntry = cluster.nodes[m]
        .client()
        .unwrap()
        .get("/api/v1/config/retention.cdr_days?consistency=strong")
        .await
        .unwrap();
    assert_eq!(e.value, 365);
}
