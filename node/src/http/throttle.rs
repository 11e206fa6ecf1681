//! Login throttle: after [`MAX_FAILURES`] failed logins from one client address within
//! [`WINDOW`], further logins from it are refused (429) until the oldest of those
//! failures is older than the window. Plain logic with the time passed in; the login
//! handler holds one per node (failures are not replicated: a client that moves to
//! another node starts again there, still paying one Argon2 verification per try).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed logins allowed from one address within [`WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// How long a failure counts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest are forgotten first).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Default)]
pub struct LoginThrottle {
    /// Recent failures per client address, oldest first.
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl LoginThrottle {
    fn forget_old(q: &mut VecDeque<Instant>, now: Instant) {
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            q.pop_front();
        }
    }

    /// `Err(wait)` when `ip` may not try again before `wait` has passed.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(q) = self.failures.get_mut(&ip) else {
            return Ok(());
        };
        Self::forget_old(q, now);
        match q.front() {
            Some(oldest) if q.len() >= MAX_FAILURES => {
                Err(WINDOW.saturating_sub(now.saturating_duration_since(*oldest)))
            }
            _ => Ok(()),
        }
    }

    /// A failed login from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.failures.len() >= MAX_ADDRESSES && !self.failures.contains_key(&ip) {
            self.failures.retain(|_, q| {
                Self::forget_old(q, now);
                !q.is_empty()
            });
            if self.failures.len() >= MAX_ADDRESSES {
                // Still full of fresh failures: forget the address with the oldest one.
                if let Some(k) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| *k)
                {
                    self.failures.remove(&k);
                }
            }
        }
        let q = self.failures.entry(ip).or_default();
        Self::forget_old(q, now);
        q.push_back(now);
        while q.len() > MAX_FAILURES {
            q.pop_front();
        }
    }

    /// A successful login from `ip`: its failures are forgotten.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn five_failures_in_a_minute_block_that_address_until_the_first_ages_out() {
        let t0 = Instant::now();
        let mut th = LoginThrottle::default();
        for i in 0..MAX_FAILURES as u64 {
            assert_eq!(th.check(A, t0 + Duration::from_secs(i)), Ok(()));
            th.failed(A, t0 + Duration::from_secs(i));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(th.check(A, now), Err(Duration::from_secs(50)));
        assert_eq!(th.check(B, now), Ok(()), "other addresses are not affected");
        // The first failure ages out at t0 + 60 s: one more try is allowed.
        assert_eq!(th.check(A, t0 + WINDOW), Ok(()));
        th.failed(A, t0 + WINDOW);
        assert!(th.check(A, t0 + WINDOW).is_err());
    }

    #[test]
    fn a_success_forgets_the_failures() {
        let t0 = Instant::now();
        let mut th = LoginThrottle::default();
        for _ in 0..MAX_FAILURES - 1 {
            th.failed(A, t0);
        }
        th.succeeded(A);
        th.failed(A, t0);
        assert_eq!(th.check(A, t0), Ok(()));
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let t0 = Instant::now();
        let mut th = LoginThrottle::default();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            th.failed(
                IpAddr::V4(i.into()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(th.failures.len() <= MAX_ADDRESSES);
    }
}
