//! CSV exports: stalled clients cannot stop the node's writes, and a formula in
//! a CDR is not run by the spreadsheet that opens the export.

use super::*;

/// `GET /api/v1/cdrs?format=csv` answered, body left unread.
async fn open_export(node: &tandem_harness::LocalNode) -> reqwest::Response {
    let token = std::fs::read_to_string(node.dir.join("admin.token")).unwrap();
    reqwest::Client::new()
        .get(format!("http://{}/api/v1/cdrs?format=csv", node.api_addr))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_exports_are_capped_and_writes_go_on() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let node = &cluster.nodes[0];
    let c = node.client().unwrap();
    // ~15 MB of CSV: far more than the channel and socket buffers hold, so an
    // unread export keeps its thread.
    for batch in 0..10 {
        let cdrs: Vec<Cdr> = (0..10_000).map(|i| cdr(batch * 10_000 + i)).collect();
        c.cdrs_add(&cdrs).await.unwrap();
    }
    let max = tandem::http::export::MAX_EXPORTS;
    let mut stalled = Vec::new();
    for _ in 0..max {
        let r = open_export(node).await;
        assert_eq!(r.status(), 200);
        stalled.push(r);
    }
    // One more: refused with the reason, as JSON, instead of one more thread.
    let refused = open_export(node).await;
    assert_eq!(refused.status(), 503);
    let text = refused.text().await.unwrap();
    assert!(text.contains("CSV exports are running"), "{text}");

    // Writes and queries are not held up by the stalled exports.
    for i in 0..20 {
        let added =
            tokio::time::timeout(Duration::from_secs(10), c.cdrs_add(&[cdr(1_000_000 + i)]))
                .await
                .expect("a CDR write waited behind the stalled exports")
                .unwrap();
        assert_eq!(added.inserted, 1);
    }
    let page = tokio::time::timeout(
        Duration::from_secs(10),
        c.cdrs_query(&CdrFilter {
            limit: Some(10),
            ..Default::default()
        }),
    )
    .await
    .expect("a query waited behind the stalled exports")
    .unwrap();
    assert_eq!(page.count, 10);

    // Clients that go away free their slots; a new export streams every row.
    drop(stalled);
    let t0 = Instant::now();
    loop {
        let r = open_export(node).await;
        if r.status() == 200 {
            let csv = r.text().await.unwrap();
            assert_eq!(csv.lines().count(), 1 + 100_000 + 20);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "slots not freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_formulas_are_shown_as_text() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let mut evil = cdr(1);
    evil.caller = "=HYPERLINK(\"http://198.18.0.9/x\",\"call back\")".into();
    evil.callee = "+4930123456".into();
    c.cdrs_add(&[evil]).await.unwrap();
    let mut out = Vec::new();
    c.cdrs_export(&CdrFilter::default(), &mut out)
        .await
        .unwrap();
    let csv = String::from_utf8(out).unwrap();
    let row = csv
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no row: {csv:?}"));
    assert!(row.contains("\"'=HYPERLINK("), "{row}");
    assert!(row.contains(",+4930123456,"), "{row}");
}
