//! Retention, run by the master: CDRs and recordings older than the configured age are
//! deleted through Raft (the cut-off travels inside the entry, so every node deletes the
//! same records).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_replication::replica::Replica;
use tandem_replication::store::query;
use tandem_replication::types::Request as RaftRequest;

use crate::settings::retention::Retention;
use crate::settings::SettingError;

/// Retention, run by the master: periodically delete CDRs and recordings older
/// than `retention.cdr_days` / `retention.recording_days` (replicated config; unset
/// or 0 = keep forever). The cut-off time travels inside the Raft entry, so every
/// node deletes exactly the same records; each node's blob sync then removes the
/// files.
/// The check runs every `retention.interval_s` seconds (default 600).
pub async fn retention(replica: Arc<Replica>) {
    const LIMIT: u32 = 5000;
    let mut last_run = Instant::now();
    let mut reported: Vec<SettingError> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let entries = match query::config_list(&replica.tree(), "retention.") {
            Ok(list) => {
                tandem_alarms::entries_from_text(list.into_iter().map(|e| (e.key, e.value)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot read retention.* settings");
                continue;
            }
        };
        let (settings, errors) = Retention::from_entries(&entries);
        if errors != reported {
            for e in &errors {
                tracing::warn!(key = %e.key, error = %e, "retention: bad setting ignored");
            }
            reported = errors;
        }
        if last_run.elapsed() < settings.interval {
            continue;
        }
        last_run = Instant::now();
        let r = &replica;
        if !r.is_leader() {
            continue;
        }
        let now = chrono::Utc::now().timestamp_micros();
        let before = |age| crate::settings::retention::cutoff(age, now);
        let cdrs_before = before(settings.cdr_age);
        let recordings_before = before(settings.recording_age);
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
