//! Figure and bound: failover time and service gap, from the writer's acks.
//!
//! * **failover time**: from the fault instant to the first 201 of a write
//!   *sent* after the fault (a request sent before the fault and answered by
//!   the old master just before it died does not count).
//! * **service gap**: the longest interval, within a window, during which no
//!   write was acknowledged (window edges count as acks); the figure of
//!   switchover, which should be invisible to writers.

use std::time::{Duration, Instant};

use crate::invariants::no_lost_write::Ack;

/// Time from `fault` to the first ack of a request sent at or after it.
pub fn failover(acks: &[Ack], fault: Instant) -> Option<Duration> {
    acks.iter()
        .filter(|a| a.sent >= fault)
        .map(|a| a.acked - fault)
        .min()
}

/// Longest interval in `[from, to]` without an ack, and where it started.
pub fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut times: Vec<Instant> = acks
        .iter()
        .map(|a| a.acked)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut prev = from;
    let mut best = (Duration::ZERO, from);
    for t in times.into_iter().chain(std::iter::once(to)) {
        if t - prev > best.0 {
            best = (t - prev, prev);
        }
        prev = t;
    }
    best
}

/// Nearest-rank percentiles of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Percentiles of `samples`, None if empty.
pub fn percentiles(samples: &[Duration]) -> Option<Percentiles> {
    let mut s = samples.to_vec();
    s.sort();
    let rank = |p: f64| -> Duration {
        let k = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[k.clamp(1, s.len()) - 1]
    };
    (!s.is_empty()).then(|| Percentiles {
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: *s.last().unwrap_or(&Duration::ZERO),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(t0: Instant, sent_ms: u64, acked_ms: u64) -> Ack {
        Ack {
            sent: t0 + Duration::from_millis(sent_ms),
            acked: t0 + Duration::from_millis(acked_ms),
            ids: vec![],
        }
    }

    #[test]
    fn failover_counts_only_requests_sent_after_the_fault() {
        let t0 = Instant::now();
        let fault = t0 + Duration::from_millis(100);
        // Sent before the fault, acked after it: not a proof of recovery.
        let acks = [ack(t0, 90, 120), ack(t0, 700, 900), ack(t0, 800, 850)];
        assert_eq!(failover(&acks, fault), Some(Duration::from_millis(750)));
        assert_eq!(failover(&acks[..1], fault), None);
    }

    #[test]
    fn gap_includes_window_edges() {
        let t0 = Instant::now();
        let acks = [ack(t0, 0, 100), ack(t0, 0, 200), ack(t0, 0, 900)];
        let (g, at) = longest_gap(&acks, t0, t0 + Duration::from_millis(1000));
        assert_eq!(g, Duration::from_millis(700));
        assert_eq!(at, t0 + Duration::from_millis(200));
        let (g, _) = longest_gap(&[], t0, t0 + Duration::from_millis(50));
        assert_eq!(g, Duration::from_millis(50));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&s).unwrap();
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p90, Duration::from_millis(90));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert_eq!(
            percentiles(&[Duration::from_millis(7)]).unwrap().p99,
            Duration::from_millis(7)
        );
        assert!(percentiles(&[]).is_none());
    }
}
