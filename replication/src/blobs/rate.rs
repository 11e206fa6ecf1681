//! The recording bandwidth cap: a token bucket driven by the caller's clock.

use std::time::{Duration, Instant};

/// Paces transfers to `rate` bytes per second, allowing bursts of `burst` bytes.
/// A rate of 0 means unlimited. The rate can change at any time (replicated config).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_s: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: rate_bytes_per_s,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn set_rate(&mut self, rate_bytes_per_s: u64, now: Instant) {
        if rate_bytes_per_s != self.rate {
            self.refill(now);
            self.rate = rate_bytes_per_s;
            self.tokens = self.tokens.min(self.burst as f64);
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
    }

    /// Take `bytes` (at most the burst) if the bucket holds them; otherwise take
    /// nothing and say how long until it will.
    pub fn try_take(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        self.refill(now);
        let want = bytes.min(self.burst) as f64;
        if self.tokens >= want {
            self.tokens -= want;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (want - self.tokens) / self.rate as f64,
            ))
        }
    }

    /// Take `bytes` (which may exceed the burst: the debt is paid by waiting).
    /// Returns how long to wait before sending them.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 100_000, t0);
        // 10 MB in 100 kB chunks, each sent when the bucket says so.
        let mut now = t0;
        for _ in 0..100 {
            now += b.take(100_000, now);
        }
        let secs = now.duration_since(t0).as_secs_f64();
        // The first 100 kB ride on the burst: 9.9 MB at 1 MB/s.
        assert!((secs - 9.9).abs() < 0.01, "took {secs} s");
    }

    #[test]
    fn try_take_never_runs_into_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.try_take(500, t0), Ok(()));
        let wait = b.try_take(250, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.25).abs() < 0.001, "{wait:?}");
        assert_eq!(b.try_take(250, t0 + wait), Ok(()));
    }

    #[test]
    fn unlimited_never_waits_and_rate_changes_apply() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 1, t0);
        assert_eq!(b.take(1 << 30, t0), Duration::ZERO);
        b.set_rate(1000, t0);
        let w = b.take(2000, t0);
        assert!(w >= Duration::from_millis(1900), "{w:?}");
    }
}
