//! Invariant: no acknowledged write is lost.
//!
//! A write is acknowledged (HTTP 201 from `POST /api/v1/cdrs`) only once it is
//! committed, so every CDR id the writer saw acknowledged must, at the end of
//! the scenario, be stored on every data node — read from each node's own
//! address with the admin token, paging with the cursor. Writes whose outcome
//! is unknown (timeout, reset) may or may not be there; they are counted, not
//! checked.
//!
//! The writer runs in the client namespace: `workers` loops that each post a
//! batch of CDRs to the VIP, wait for the answer (bounded by a timeout) and
//! post the next one at once. Every ack is kept with the instant its request
//! was sent and the instant the 201 arrived, for the failover-time and
//! service-gap figures.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use tandem_api::{Cdr, CdrsAdded};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::api::http;
use crate::netns::NsExecutor;

/// One acknowledged request.
#[derive(Debug, Clone)]
pub struct Ack {
    pub sent: Instant,
    pub acked: Instant,
    pub ids: Vec<Uuid>,
}

/// Everything the writer saw.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    pub acks: Vec<Ack>,
    pub requests: u64,
    /// Requests without a 201, by cause.
    pub failures: BTreeMap<String, u64>,
    /// CDRs of failed requests (may or may not be stored).
    pub unknown_ids: u64,
    /// CDRs a 201 reported as duplicates (must stay 0: ids are never reused).
    pub duplicates: u64,
}

impl WriterLog {
    pub fn acked_ids(&self) -> HashSet<Uuid> {
        self.acks
            .iter()
            .flat_map(|a| a.ids.iter().copied())
            .collect()
    }

    pub fn failed_requests(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// How to write.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Base URLs to post to (`http://198.18.0.200:8080`); on failure a worker
    /// moves to the next one (only useful with several).
    pub targets: Vec<String>,
    pub token: String,
    /// Concurrent request loops.
    pub workers: usize,
    /// CDRs per request.
    pub batch: usize,
    /// Deadline of one request.
    pub timeout: Duration,
}

/// A running writer.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    done: Vec<oneshot::Receiver<()>>,
}

fn batch(n: usize, worker: usize) -> Vec<Cdr> {
    let end = Utc::now();
    (0..n)
        .map(|i| {
            let start = end - ChronoDuration::seconds(60 + i as i64);
            let answer = (i % 3 != 2).then(|| start + ChronoDuration::seconds(5));
            Cdr::new_call(
                &format!("1{:02}", worker % 100),
                &format!("2{:02}", i % 100),
                start,
                answer,
                end,
                "chaos",
            )
        })
        .collect()
}

fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_request() || e.is_body() {
        "connection reset/closed".into()
    } else {
        "other".into()
    }
}

impl Writer {
    /// Start the worker loops on the client namespace thread.
    pub fn start(client: &NsExecutor, cfg: WriterConfig) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let done = (0..cfg.workers.max(1))
            .map(|w| {
                let (stop, log, cfg) = (stop.clone(), log.clone(), cfg.clone());
                client.spawn(move || async move {
                    let mut target = w % cfg.targets.len();
                    while !stop.load(Ordering::Relaxed) {
                        let cdrs = batch(cfg.batch, w);
                        let ids: Vec<Uuid> = cdrs.iter().map(|c| c.id).collect();
                        let url = format!("{}/api/v1/cdrs", cfg.targets[target]);
                        let sent = Instant::now();
                        let r = http()
                            .post(&url)
                            .bearer_auth(&cfg.token)
                            .json(&cdrs)
                            .timeout(cfg.timeout)
                            .send()
                            .await;
                        let outcome = match r {
                            Ok(resp) if resp.status().as_u16() == 201 => {
                                let acked = Instant::now();
                                // Acknowledged by the 201 alone; an answer that does not
                                // decode reports no duplicates (as it always did).
                                let dups = resp
                                    .json::<CdrsAdded>()
                                    .await
                                    .map(|a| u64::from(a.duplicates))
                                    .unwrap_or(0);
                                Ok((acked, dups))
                            }
                            Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
                            Err(e) => Err(cause(&e)),
                        };
                        let failed = outcome.is_err();
                        {
                            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                            l.requests += 1;
                            match outcome {
                                Ok((acked, dups)) => {
                                    l.duplicates += dups;
                                    l.acks.push(Ack { sent, acked, ids });
                                }
                                Err(c) => {
                                    *l.failures.entry(c).or_default() += 1;
                                    l.unknown_ids += ids.len() as u64;
                                }
                            }
                        }
                        if failed {
                            target = (target + 1) % cfg.targets.len();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Writer { stop, log, done }
    }

    /// Completion instant of the first ack of a request sent at or after `t`.
    pub fn first_ack_sent_after(&self, t: Instant) -> Option<Instant> {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.acks.iter().filter(|a| a.sent >= t).map(|a| a.acked).min()
    }

    /// Acknowledged requests so far, in order of completion per worker.
    pub fn acks_snapshot(&self) -> Vec<Ack> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acks
            .clone()
    }

    /// Acknowledged requests so far.
    pub fn acks(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acks
            .len()
    }

    /// Stop the loops (each finishes its request in flight) and return the log.
    pub async fn stop(self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        for d in self.done {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        log
    }
}

/// Acknowledged ids missing from a node's store.
pub fn missing(acked: &HashSet<Uuid>, stored: &HashSet<Uuid>) -> Vec<Uuid> {
    let mut m: Vec<Uuid> = acked.difference(stored).copied().collect();
    m.sort();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_acked_id_must_be_stored() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let unacked = Uuid::new_v4();
        let acked: HashSet<Uuid> = [a, b].into();
        assert!(missing(&acked, &[a, b, unacked].into()).is_empty());
        assert_eq!(missing(&acked, &[a, unacked].into()), vec![b]);
    }

    #[test]
    fn batches_are_valid_cdrs_with_fresh_ids() {
        let x = batch(5, 1);
        let y = batch(5, 1);
        assert_eq!(x.len(), 5);
        assert!(x.iter().all(|c| c.validate().is_ok()));
        assert!(x.iter().all(|c| y.iter().all(|d| d.id != c.id)));
    }
}
