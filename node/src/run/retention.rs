//! Retention, run by the master: CDRs and recordings older than the configured age are
//! deleted through Raft (the cut-off travels inside the entry, so every node deletes the
//! same records).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_replication::replica::Replica;
use tandem_replication::store::query;
use tandem_replication::types::Request as RaftRequest;

/// Retention, run by the master: periodically delete CDRs and recordings older
/// than `retention.cdr_days` / `retention.recording_days` (replicated config; unset
/// or 0 = keep forever). The cut-off time travels inside the Raft entry, so every
/// node deletes exactly the same records; each node's blob sync then removes the
/// files.
/// The check runs every `retention.interval_s` seconds (default 600).
pub async fn retention(replica: Arc<Replica>) {
    const LIMIT: u32 = 5000;
    const DEFAULT_INTERVAL_S: u64 = 600;
    let mut last_run = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let interval = query::config_get(&replica.tree(), "retention.interval_s")
            .ok()
            .flatten()
            .and_then(|e| e.value.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_INTERVAL_S);
        if last_run.elapsed() < Duration::from_secs(interval) {
            continue;
        }
        last_run = Instant::now();
        let r = &replica;
        if !r.is_leader() {
            continue;
        }
        let days = |key: &str| -> Option<i64> {
            let v = query::config_get(&r.tree(), key).ok().flatten()?;
            match v.value.trim().parse::<f64>() {
                Ok(d) if d > 0.0 => Some((d * 86_400_000_000.0) as i64),
                Ok(_) => None,
                Err(_) => {
                    tracing::warn!(key, value = %v.value, "retention: not a number of days; ignored");
                    None
                }
            }
        };
        let now = chrono::Utc::now().timestamp_micros();
        let cdrs_before = days("retention.cdr_days").map(|d| now - d);
        let recordings_before = days("retention.recording_days").map(|d| now - d);
        if cdrs_before.is_none() && recordings_before.is_none() {
            continue;
        }
        // Repeat while a full batch was deleted (bounded per round).
        for _ in 0..100 {
            let req = RaftRequest::Expire {
                cdrs_before,
                recordings_before,
                limit: LIMIT,
            };
            match r.write(req).await {
                Ok((_, tandem_replication::types::Response::Expired { cdrs, recordings })) => {
                    if cdrs > 0 || recordings > 0 {
                        tracing::info!(cdrs, recordings, "retention: expired records deleted");
                    }
                    if cdrs < LIMIT && recordings < LIMIT {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: delete failed; retrying next round");
                    break;
                }
            }
        }
    }
}
