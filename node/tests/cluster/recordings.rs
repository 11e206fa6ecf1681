//! Recordings: stored only once a second data node holds the bytes, served from a
//! standby with range requests, resumed after a kill, damaged chunks re-sent, a wiped
//! standby re-fetches everything, retention.

use sha2::{Digest, Sha256};
use tandem_api::{Recording, RecordingUnavailable};
use tandem_harness::LocalNode;

use super::*;

/// Deterministic pseudo-random bytes (incompressible, so nothing flatters the copy).
fn body(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn upload(
    c: &Client,
    dir: &std::path::Path,
    id: &str,
    data: &[u8],
    wait_s: u64,
) -> (u16, Recording) {
    let f = dir.join(format!("{id}.upload"));
    std::fs::write(&f, data).unwrap();
    let r = c
        .upload(
            &format!("/api/v1/recordings?wait_s={wait_s}"),
            &f,
            &[
                ("x-recording-id", id.to_string()),
                ("x-call-id", format!("call-{id}")),
                ("x-codec", "PCMU".to_string()),
                ("x-duration-ms", "60000".to_string()),
            ],
        )
        .await
        .unwrap();
    std::fs::remove_file(&f).unwrap();
    r
}

/// GET a recording with an optional Range header: (status, bytes, headers). Plain
/// reqwest: the test checks statuses, headers and bytes, none of which is JSON.
async fn fetch(
    node: &LocalNode,
    id: &str,
    range: Option<&str>,
) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let token = std::fs::read_to_string(node.dir.join("admin.token")).unwrap();
    let mut req = reqwest::Client::new()
        .get(format!("http://{}/api/v1/recordings/{id}", node.api_addr))
        .bearer_auth(token.trim());
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.bytes().await.unwrap().to_vec(), headers)
}

/// PUT a config value; asserts the answer is 200 (updated) or 201 (created).
async fn put_config(c: &Client, key: &str, value: &serde_json::Value) {
    let (s, e): (u16, ConfigEntry) = c
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/v1/config/{key}"),
            value,
        )
        .await
        .unwrap();
    assert!(s == 200 || s == 201, "{s}: {e:?}");
    assert_eq!(e.key, key, "{e:?}");
}

async fn set_cap(c: &Client, kbps: u64) {
    put_config(
        c,
        "replication.recording_bandwidth_kbps",
        &serde_json::json!(kbps),
    )
    .await;
    // The sync re-reads the cap every second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

/// The recording `id` once `want` nodes hold it, or as it is at `timeout` (None if
/// not listed at all).
async fn wait_holders(c: &Client, id: &str, want: usize, timeout: Duration) -> Option<Recording> {
    let t0 = Instant::now();
    loop {
        let list = c.recordings("?limit=10000").await.unwrap();
        let r = list.recordings.into_iter().find(|r| r.id == id);
        if r.as_ref().is_some_and(|r| r.holders.len() >= want) || t0.elapsed() > timeout {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_is_stored_once_a_standby_holds_it_and_the_standby_serves_ranges() {
    let cluster = three_nodes("").await;
    let m = cluster.master().await.unwrap();
    let c = cluster.nodes[m].client().unwrap();
    // 50 MB at 80 Mbit/s (10 MB/s): the copy takes ~5 s, long enough to see it pending.
    set_cap(&c, 80_000).await;
    let data = body(50 * 1024 * 1024, 1);
    let id = "rec-50mb";
    let observer = cluster.nodes[(m + 1) % 3].client().unwrap();
    let watch = tokio::spawn(async move {
        // Seen as pending from a standby while the upload waits.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(v) = observer.recordings("?state=pending").await {
                if !v.recordings.is_empty() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let t0 = Instant::now();
    let (status, v) = upload(&c, &cluster.root, id, &data, 120).await;
    let took = t0.elapsed();
    assert_eq!(status, 201, "{v:?}");
    assert_eq!(v.state, "stored");
    assert_eq!(v.sha256, sha(&data));
    assert_eq!(v.size, data.len() as u64);
    let holders: Vec<u64> = v.holders.clone();
    assert!(holders.len() >= 2, "{v:?}");
    assert!(
        watch.await.unwrap(),
        "the recording was never seen pending before 201"
    );
    eprintln!("50 MB upload answered 201 after {took:?}, holders {holders:?}");
    // At 201, a standby has the complete, fsynced file under its final name.
    let standby = holders
        .iter()
        .map(|h| *h as usize - 1)
        .find(|i| *i != m)
        .unwrap();
    let on_disk = std::fs::read(cluster.nodes[standby].dir.join("recordings").join(id)).unwrap();
    assert_eq!(sha(&on_disk), sha(&data));
    // Download from the standby: byte-identical, and a range request.
    let (s, bytes, h) = fetch(&cluster.nodes[standby], id, None).await;
    assert_eq!(s, 200);
    assert_eq!(sha(&bytes), sha(&data), "download differs");
    assert_eq!(h["accept-ranges"], "bytes");
    let (s, part, h) = fetch(&cluster.nodes[standby], id, Some("bytes=1000000-1999999")).await;
    assert_eq!(s, 206);
    assert_eq!(part, &data[1_000_000..2_000_000]);
    assert_eq!(
        h["content-range"],
        format!("bytes 1000000-1999999/{}", data.len())
    );
    let (s, _, h) = fetch(&cluster.nodes[standby], id, Some("bytes=99999999-")).await;
    assert_eq!(s, 416);
    assert_eq!(h["content-range"], format!("bytes */{}", data.len()));
    // Unknown id: 404. Known but not yet here: 503 naming the holders.
    let (s, _, _) = fetch(&cluster.nodes[standby], "no-such-recording", None).await;
    assert_eq!(s, 404);
    set_cap(&c, 8).await; // 1 kB/s: the next copy stays pending
    let small = body(200_000, 2);
    let (status, v) = upload(&c, &cluster.root, "rec-slow", &small, 0).await;
    assert_eq!(status, 202, "{v:?}");
    assert_eq!(v.state, "pending");
    let (s, body503, _) = fetch(&cluster.nodes[standby], "rec-slow", None).await;
    assert_eq!(s, 503);
    let e: RecordingUnavailable = serde_json::from_slice(&body503)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&body503)));
    assert_eq!(e.held_by, [m as u64 + 1], "{e:?}");
    assert!(e.error.contains("not yet replicated"), "{e:?}");
    // Status shows the backlog on the standby (once its sync has seen the metadata).
    let sc = cluster.nodes[standby].client().unwrap();
    let t0 = Instant::now();
    loop {
        let view = sc.cluster().await.unwrap();
        if let Some(sync) = view.recording_sync.as_ref().filter(|s| s.files == 1) {
            assert!(sync.bytes > 0, "{view:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no backlog shown: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lifting the cap at run time lets it complete.
    set_cap(&c, 0).await;
    let r = wait_holders(&c, "rec-slow", 3, Duration::from_secs(20)).await;
    assert_eq!(
        r.as_ref().map(|r| r.state.as_str()),
        Some("stored"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_killed_mid_transfer_resumes_where_it_stopped() {
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.unwrap();
    let c = cluster.nodes[m].client().unwrap();
    set_cap(&c, 40_000).await; // 5 MB/s: 50 MB take ~10 s
    let data = body(50 * 1024 * 1024, 3);
    let (status, v) = upload(&c, &cluster.root, "rec-resume", &data, 0).await;
    assert_eq!(status, 202, "{v:?}");
    let victim = (m + 1) % 3;
    let part = cluster.nodes[victim].dir.join("recordings/rec-resume.part");
    let t0 = Instant::now();
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 8 * 1024 * 1024 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "transfer to node {} never started",
            victim + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.nodes[victim].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(
        kept > 0 && kept < data.len() as u64,
        "partial file {kept} bytes"
    );
    cluster.start(victim).unwrap();
    let victim_id = victim as u64 + 1;
    let t0 = Instant::now();
    loop {
        let r = wait_holders(&c, "rec-resume", 1, Duration::from_secs(1))
            .await
            .expect("rec-resume is not listed");
        if r.holders.contains(&victim_id) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "node {victim_id} never completed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = std::fs::read(cluster.nodes[victim].dir.join("recordings/rec-resume")).unwrap();
    assert_eq!(sha(&got), sha(&data));
    let log = std::fs::read_to_string(cluster.nodes[victim].dir.with_extension("log")).unwrap();
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming recording transfer") && l.contains("rec-resume"))
        .unwrap_or_else(|| panic!("node {victim_id} did not resume"));
    eprintln!("{resumed}");
    assert!(!resumed.contains("offset=0 "), "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunk_is_detected_and_fetched_again() {
    let mut cluster =
        LocalCluster::prepare(exe(), 3, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], "").unwrap();
    // Node 1 damages its first 3 outgoing chunks after checksumming them.
    cluster.nodes[0]
        .env
        .push(("TANDEM_FAULT_CORRUPT_CHUNKS".into(), "3".into()));
    cluster.bootstrap().await.unwrap();
    let c = cluster.nodes[0].client().unwrap();
    let data = body(5 * 1024 * 1024, 4);
    // Upload to node 1 (the only holder at first), whatever its role.
    let (status, v) = upload(&c, &cluster.root, "rec-damaged", &data, 60).await;
    assert_eq!(status, 201, "{v:?}");
    let r = wait_holders(&c, "rec-damaged", 3, Duration::from_secs(30))
        .await
        .expect("rec-damaged is not listed");
    assert_eq!(r.holders.len(), 3, "{r:?}");
    let mut rejected = 0;
    for n in &cluster.nodes[1..] {
        let got = std::fs::read(n.dir.join("recordings/rec-damaged")).unwrap();
        assert_eq!(sha(&got), sha(&data), "node {} has a damaged copy", n.id);
        let metrics = reqwest::get(format!("http://{}/metrics", n.api_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        rejected += metrics
            .lines()
            .find_map(|l| l.strip_prefix("tandem_recording_chunks_rejected_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert_eq!(rejected, 3, "the 3 damaged chunks were not all caught");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_standby_fetches_every_recording_again() {
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.unwrap();
    let c = cluster.nodes[m].client().unwrap();
    let mut want = Vec::new();
    for i in 0..4 {
        let data = body(1024 * 1024 + i * 1000, 10 + i as u64);
        let id = format!("rec-wipe-{i}");
        let (status, v) = upload(&c, &cluster.root, &id, &data, 60).await;
        assert_eq!(status, 201, "{v:?}");
        want.push((id, sha(&data)));
    }
    let victim = (m + 1) % 3;
    for (id, _) in &want {
        wait_holders(&c, id, 3, Duration::from_secs(20)).await;
    }
    cluster.nodes[victim].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A replaced disk: the store and the recordings are gone (the node keeps its
    // certificate, as after `tandem restore` of the config).
    std::fs::remove_dir_all(cluster.nodes[victim].dir.join("raft")).unwrap();
    std::fs::remove_dir_all(cluster.nodes[victim].dir.join("recordings")).unwrap();
    cluster.start(victim).unwrap();
    let dir = cluster.nodes[victim].dir.join("recordings");
    let t0 = Instant::now();
    loop {
        let done = want
            .iter()
            .all(|(id, sum)| std::fs::read(dir.join(id)).is_ok_and(|b| &sha(&b) == sum));
        if done {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "wiped node did not re-fetch every recording"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_cdrs_and_recordings_on_every_node() {
    let cluster = three_nodes("").await;
    let m = cluster.master().await.unwrap();
    let c = cluster.nodes[m].client().unwrap();
    // Old CDRs (March 2026) and new ones (now).
    let old: Vec<Cdr> = (0..300).map(cdr).collect();
    let now = chrono::Utc::now();
    let fresh: Vec<Cdr> = (0..20)
        .map(|i| {
            Cdr::new_call(
                "100",
                "200",
                now - chrono::Duration::seconds(i),
                None,
                now,
                "t",
            )
        })
        .collect();
    for batch in [&old, &fresh] {
        let (s, v) = post_cdrs(&c, serde_json::to_vec(batch).unwrap())
            .await
            .unwrap();
        assert_eq!(s, 201, "{v:?}");
    }
    let (s, _) = upload(&c, &cluster.root, "rec-old", &body(10_000, 5), 30).await;
    assert_eq!(s, 201);
    for (k, v) in [
        ("retention.cdr_days", serde_json::json!(30)),
        ("retention.recording_days", serde_json::json!(0.00002)), // ~1.7 s
        ("retention.interval_s", serde_json::json!(1)),
    ] {
        put_config(&c, k, &v).await;
    }
    let fresh_ids: HashSet<String> = fresh.iter().map(|c| c.id.to_string()).collect();
    for n in &cluster.nodes {
        let nc = n.client().unwrap();
        let t0 = Instant::now();
        loop {
            let ids = ids_on(&nc).await.unwrap();
            let recs = nc.recordings("").await.unwrap();
            if ids == fresh_ids && recs.recordings.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node {}: {} CDRs left (want the {} fresh ones), recordings {:?}",
                n.id,
                ids.len(),
                fresh_ids.len(),
                recs.recordings
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// `POST /api/v1/recordings` of `data` under `id` straight to `node`, the body
/// sent in two halves `pause` apart (so that two uploads overlap); the status.
async fn upload_slowly(node: &LocalNode, id: &str, data: Vec<u8>, pause: Duration) -> u16 {
    use futures::StreamExt as _;
    let token = std::fs::read_to_string(node.dir.join("admin.token")).unwrap();
    let half = data.len() / 2;
    let (first, second) = (data[..half].to_vec(), data[half..].to_vec());
    let chunks =
        futures::stream::iter([first, second])
            .enumerate()
            .then(move |(i, c)| async move {
                if i == 1 {
                    tokio::time::sleep(pause).await;
                }
                Ok::<_, std::io::Error>(c)
            });
    reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/recordings?wait_s=20",
            node.api_addr
        ))
        .bearer_auth(token.trim())
        .header("x-recording-id", id)
        .header("x-call-id", format!("call-{id}"))
        .header("content-length", data.len())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every node that serves `id` serves bytes with the sha256 of its metadata.
async fn served_bytes_match_the_metadata(cluster: &LocalCluster, id: &str) -> String {
    let c = cluster.nodes[0].client().unwrap();
    let meta = wait_holders(&c, id, 2, Duration::from_secs(30))
        .await
        .expect("recording listed");
    assert!(meta.holders.len() >= 2, "{meta:?}");
    for n in &cluster.nodes {
        let (status, bytes, _) = fetch(n, id, None).await;
        assert_eq!(status, 200, "node {}", n.id);
        assert_eq!(sha(&bytes), meta.sha256, "node {} serves other bytes", n.id);
    }
    meta.sha256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploads_of_one_id_never_leave_bytes_and_metadata_disagreeing() {
    let cluster = three_nodes("").await;
    let m = &cluster.nodes[cluster.master().await.unwrap()];
    let (a, b) = (body(400_000, 11), body(400_000, 12));

    // Overlapping uploads of one id with other bytes, on one node: one is
    // stored, the other refused (both were "stored" before, the file held the
    // later bytes under the first sha256, and GET answered 503 for ever).
    let slow = upload_slowly(m, "same-id", a.clone(), Duration::from_millis(800));
    let fast = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        upload_slowly(m, "same-id", b.clone(), Duration::ZERO).await
    };
    let (s1, s2) = tokio::join!(slow, fast);
    let mut statuses = [s1, s2];
    statuses.sort();
    assert!(
        matches!(statuses, [201 | 202, 409]),
        "one stored, one refused: {statuses:?}"
    );
    let stored = served_bytes_match_the_metadata(&cluster, "same-id").await;
    assert!(stored == sha(&a) || stored == sha(&b));

    // Again with the stored bytes: a retry, 200; with other bytes: 409.
    let winner = if stored == sha(&a) { &a } else { &b };
    let loser = if stored == sha(&a) { &b } else { &a };
    assert_eq!(
        upload_slowly(m, "same-id", winner.clone(), Duration::ZERO).await,
        200
    );
    assert_eq!(
        upload_slowly(m, "same-id", loser.clone(), Duration::ZERO).await,
        409
    );

    // At once on two nodes: the metadata committed first wins.
    let standby = cluster.nodes.iter().find(|n| n.id != m.id).unwrap();
    let (s1, s2) = tokio::join!(
        upload_slowly(m, "two-nodes", a.clone(), Duration::from_millis(100)),
        upload_slowly(standby, "two-nodes", b.clone(), Duration::from_millis(100)),
    );
    let mut statuses = [s1, s2];
    statuses.sort();
    assert!(
        matches!(statuses, [201 | 202, 409]),
        "one stored, one refused: {statuses:?}"
    );
    served_bytes_match_the_metadata(&cluster, "two-nodes").await;
}
