//! Storage micro-benchmark: what the sled state machine costs per CDR on this machine,
//! without network, HTTP or Raft. It answers two questions the cluster benchmark
//! (`tandem bench`) cannot separate:
//!
//! 1. apply: µs of CPU per CDR for `apply_entries` + `apply_batch` in entries of
//!    `MAX_CDRS_PER_ENTRY`, split into its parts (id look-up, the four keys), and the
//!    write ceiling that implies for N nodes sharing this machine's cores;
//! 2. export: rows/s of a full scan in time order (decode only), and of the scan plus
//!    CSV formatting, the way `GET /api/v1/cdrs?format=csv` does it;
//! 3. flush: latency of one small write + sled's own flush (pwrite + sync_file_range)
//!    against the same + `DurableDb::flush` (that, then fdatasync), in the same run.
//!
//! Run: `cargo bench -p tandem-replication --bench store [-- ROWS]` (default 200,000).

use std::time::Instant;

// The allocator the tandem binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use chrono::{Duration, TimeZone, Utc};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tandem_replication::cdr::{Cdr, CdrRef, CSV_COLUMNS};
use tandem_replication::replica::MAX_CDRS_PER_ENTRY;
use tandem_replication::store::apply::apply_entries;
use tandem_replication::store::codec;
use tandem_replication::store::durable::DurableDb;
use tandem_replication::store::query::{self, CdrQuery};
use tandem_replication::types::{Request, TypeConfig};

fn cdrs(n: usize, callers: usize) -> Vec<Cdr> {
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    (0..n)
        .map(|i| {
            let start = base + Duration::milliseconds(i as i64 * 37);
            let answer = start + Duration::seconds(3);
            let end = answer + Duration::seconds(60 + (i % 240) as i64);
            let mut c = Cdr::new_call(
                &format!("1{:03}", i % callers),
                &format!("2{:03}", (i * 7) % callers),
                start,
                Some(answer),
                end,
                "node-1",
            );
            c.recording_id = Some(uuid::Uuid::new_v4().to_string());
            c
        })
        .collect()
}

fn entry(index: u64, cdrs: Vec<Cdr>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::AddCdrs { cdrs }),
    }
}

fn open_tree(dir: &std::path::Path, cache_mb: u64) -> (sled::Db, sled::Tree) {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mb * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("open sled");
    let tree = db.open_tree("sm.0").expect("tree");
    (db, tree)
}

/// Apply `rows` CDRs in full entries; returns µs of wall time per CDR (single thread,
/// so wall ≈ CPU of the applying thread; sled's own flusher threads are not counted).
fn apply_run(tree: &sled::Tree, all: &[Cdr]) -> f64 {
    let t = Instant::now();
    for (i, chunk) in all.chunks(MAX_CDRS_PER_ENTRY).enumerate() {
        let applied = apply_entries(tree, [entry(i as u64 + 1, chunk.to_vec())]).expect("apply");
        tree.apply_batch(applied.batch).expect("batch");
    }
    t.elapsed().as_secs_f64() * 1e6 / all.len() as f64
}

fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    // sled page cache, MiB (the node's default `[node] cache_mb` is 64).
    let cache_mb: u64 = std::env::var("CACHE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let all = cdrs(rows, 500);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;

    println!("store benchmark: {rows} CDRs, entries of {MAX_CDRS_PER_ENTRY}, sled cache {cache_mb} MiB, {cores} CPU(s)");

    // 1. apply into an empty tree, then the same ids again (all duplicates: look-ups only).
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tree) = open_tree(dir.path(), cache_mb);
    let apply_us = apply_run(&tree, &all);
    let dup_us = apply_run(&tree, &all);
    // Raw sled cost of the four keys, without apply_entries' look-ups and encoding.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (_db2, raw) = open_tree(dir2.path(), cache_mb);
    let encoded: Vec<Vec<u8>> = all
        .iter()
        .map(|c| {
            let mut v = vec![1u8];
            v.extend(bincode::serialize(c).unwrap());
            v
        })
        .collect();
    let mut per_key = Vec::new();
    for (name, prefix) in [
        ("time (value = CDR)", b's'),
        ("id", b'd'),
        ("caller", b'r'),
        ("callee", b'e'),
    ] {
        let t = Instant::now();
        for (chunk_i, chunk) in all.chunks(MAX_CDRS_PER_ENTRY).enumerate() {
            let mut batch = sled::Batch::default();
            for (j, c) in chunk.iter().enumerate() {
                let mut k = vec![prefix];
                match prefix {
                    b'd' => k.extend_from_slice(c.id.as_bytes()),
                    b'r' | b'e' => {
                        k.extend_from_slice(if prefix == b'r' {
                            c.caller.as_bytes()
                        } else {
                            c.callee.as_bytes()
                        });
                        k.push(0);
                        k.extend_from_slice(&c.start.timestamp_micros().to_be_bytes());
                        k.extend_from_slice(c.id.as_bytes());
                    }
                    _ => {
                        k.extend_from_slice(&c.start.timestamp_micros().to_be_bytes());
                        k.extend_from_slice(c.id.as_bytes());
                    }
                }
                let v: &[u8] = if prefix == b's' {
                    &encoded[chunk_i * MAX_CDRS_PER_ENTRY + j]
                } else {
                    &[]
                };
                batch.insert(k, v);
            }
            raw.apply_batch(batch).expect("batch");
        }
        per_key.push((name, t.elapsed().as_secs_f64() * 1e6 / rows as f64));
    }
    // The same id keys inserted one by one (no batch): sled's per-batch overhead.
    let t = Instant::now();
    for c in &all {
        let mut k = vec![b'D'];
        k.extend_from_slice(c.id.as_bytes());
        raw.insert(k, &[][..]).expect("insert");
    }
    let single_us = t.elapsed().as_secs_f64() * 1e6 / rows as f64;
    db.flush().expect("flush");

    println!("apply (apply_entries + apply_batch, one thread):");
    println!(
        "  new CDRs           {apply_us:8.2} µs/CDR  ({:>9.0} CDRs/s)",
        1e6 / apply_us
    );
    println!("  duplicates only    {dup_us:8.2} µs/CDR  (id look-up + decode)");
    for (name, us) in &per_key {
        println!("  raw key: {name:<20} {us:6.2} µs/CDR");
    }
    println!("  raw key: id, one insert each {single_us:6.2} µs/CDR (no batch)");
    for nodes in [1.0, 3.0] {
        // Every node applies every CDR; all nodes share this machine's cores.
        println!(
            "  ceiling from apply alone, {nodes} node(s) on {cores} core(s): {:>9.0} CDRs/s",
            cores * 1e6 / (apply_us * nodes)
        );
    }

    // 2. export: scan + decode, then scan + decode + CSV.
    let q = CdrQuery::default();
    let t = Instant::now();
    let mut n = 0usize;
    for item in query::cdr_scan(&tree, &q) {
        item.expect("scan");
        n += 1;
    }
    let scan_s = t.elapsed().as_secs_f64();
    assert_eq!(n, rows, "scan saw every row");
    let t = Instant::now();
    let mut w = csv::Writer::from_writer(std::io::sink());
    w.write_record(CSV_COLUMNS).unwrap();
    for item in query::cdr_scan(&tree, &q) {
        let (_, cdr) = item.expect("scan");
        w.write_record(cdr.csv_record()).unwrap();
    }
    w.flush().unwrap();
    let csv_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut w = csv::Writer::from_writer(std::io::sink());
    w.write_record(CSV_COLUMNS).unwrap();
    for item in query::cdr_scan_raw(&tree, &q) {
        let (_, bytes) = item.expect("scan");
        let cdr: CdrRef = codec::decode_borrowed(&bytes).expect("decode");
        cdr.write_csv(&mut w).unwrap();
    }
    w.flush().unwrap();
    let raw_s = t.elapsed().as_secs_f64();
    // A 10,000-row JSON page, as `GET /api/v1/cdrs?limit=10000` builds it.
    let page = 10_000.min(rows);
    let t = Instant::now();
    let owned: Vec<Cdr> = query::cdr_scan(&tree, &q)
        .take(page)
        .map(|i| i.expect("scan").1)
        .collect();
    let owned_len = serde_json::to_vec(&owned).unwrap().len();
    let json_owned_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let raw: Vec<sled::IVec> = query::cdr_scan_raw(&tree, &q)
        .take(page)
        .map(|i| i.expect("scan").1)
        .collect();
    let views: Vec<CdrRef> = raw
        .iter()
        .map(|b| codec::decode_borrowed(b).expect("decode"))
        .collect();
    // Sized up front, as the API does (JSON is ~2-3x the stored bytes): growing a
    // multi-megabyte buffer by doubling copies it each time.
    let mut out = Vec::with_capacity(tandem_replication::cdr::json_capacity(
        raw.iter().map(|b| b.len()),
    ));
    serde_json::to_writer(&mut out, &views).unwrap();
    let view_len = out.len();
    let json_view_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(owned_len, view_len, "same JSON either way");
    println!("JSON page of {page} rows (scan + serialize, one thread):");
    println!("  owned Cdr          {json_owned_ms:8.2} ms");
    println!("  CdrRef in place    {json_view_ms:8.2} ms  (as the API does)");
    println!("export (time order, one thread):");
    println!("  scan + decode      {:>9.0} rows/s", rows as f64 / scan_s);
    println!(
        "  scan + decode + CSV{:>9.0} rows/s  (owned Cdr, csv_record)",
        rows as f64 / csv_s
    );
    println!(
        "  scan + CSV in place{:>9.0} rows/s  (CdrRef::write_csv, as the API does)",
        rows as f64 / raw_s
    );

    flush_latency();
}

/// p50 / p99 of (one 300-byte insert + flush), sled's flush against the durable one,
/// interleaved so that both see the same disk.
fn flush_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let db = sled::Config::new()
        .path(&path)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("open sled");
    let durable = DurableDb::new(db, &path).expect("durable");
    let value = [7u8; 300];
    let (mut plain, mut synced) = (Vec::new(), Vec::new());
    for i in 0..1000u64 {
        let t = Instant::now();
        durable
            .db()
            .insert(i.to_be_bytes(), &value[..])
            .expect("insert");
        if i % 2 == 0 {
            durable.db().flush().expect("flush");
            plain.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            durable.flush().expect("durable flush");
            synced.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p) as usize]
    };
    println!("flush (one 300-byte insert + flush, 500 of each, interleaved):");
    println!(
        "  sled flush only    p50 {:6.3} ms  p99 {:6.3} ms  (pwrite + sync_file_range: not durable on power loss)",
        pct(&mut plain, 0.5),
        pct(&mut plain, 0.99)
    );
    println!(
        "  DurableDb::flush   p50 {:6.3} ms  p99 {:6.3} ms  (+ fdatasync, as tandem does)",
        pct(&mut synced, 0.5),
        pct(&mut synced, 0.99)
    );
}
