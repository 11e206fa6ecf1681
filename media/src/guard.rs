//! Limits on password guessing, without I/O: per source address, per account, one
//! alarm per burst and a bounded number of log lines.
//!
//! ```text
//!  failure(ip, account, now) ──▶ source counter ── threshold ──▶ Ban (replicated, nftables)
//!                          └──▶ account counter ─ threshold ──▶ account locked
//!                          └──▶ burst (first ban/lock) ───────▶ Alarm, once
//!  poll(now) ─▶ interval over ─▶ Log(Summary); quiet ─▶ burst over
//! ```
//!
//! A source over its limit is banned: requests from it that need authentication
//! are dropped (by the SIP service, and by the firewall of every node once the
//! ban is replicated). An account over its limit is locked: new authentications
//! for it are refused with 403 without looking at the password, except from an
//! address where the account has a live registration (its phones keep working).
//! The first failure of each log interval is logged as it happens; the others go
//! into one summary line at the end of the interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits of the guard (`ServiceConfig` carries them).
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Failures from one address, within `source_window`, that get it banned.
    pub source_threshold: u32,
    /// Window for counting a source's failures.
    pub source_window: Duration,
    /// How long a banned source stays banned.
    pub source_ban: Duration,
    /// Failures for one account (from any address), within `account_window`,
    /// that lock it.
    pub account_threshold: u32,
    /// Window for counting an account's failures.
    pub account_window: Duration,
    /// How long a locked account refuses new authentications.
    pub account_lock: Duration,
    /// At most one immediate failure line, then one summary, per interval.
    pub log_interval: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            source_threshold: 5,
            source_window: Duration::from_secs(60),
            source_ban: Duration::from_secs(600),
            account_threshold: 20,
            account_window: Duration::from_secs(600),
            account_lock: Duration::from_secs(600),
            log_interval: Duration::from_secs(60),
        }
    }
}

/// Whether a request that needs authentication may be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check its credentials.
    Allow,
    /// The source is banned: drop it.
    SourceBanned,
    /// The account is locked and the source is not one of its registered phones:
    /// 403 without checking.
    AccountLocked,
}

/// One attack as the alarm reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthBurst {
    /// Failures counted when the burst was detected.
    pub failures: u32,
    /// Distinct source addresses seen failing in the current interval.
    pub sources: u32,
    /// Some of them (at most [`SAMPLE`]).
    pub sample: Vec<IpAddr>,
    /// Accounts being guessed (at most [`SAMPLE`]).
    pub accounts: Vec<String>,
}

/// How many sources / accounts a log line or alarm names.
pub const SAMPLE: usize = 8;

/// What the guard asks the core to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Ban `source` for `duration` (replicate it; the firewall drops it).
    Ban {
        /// The address.
        source: IpAddr,
        /// How long.
        duration: Duration,
        /// Its failures in the window.
        failures: u32,
    },
    /// Raise the security alarm: an attack began.
    Alarm(AuthBurst),
    /// An account was locked (for the metrics; logged through [`Notice::Locked`]).
    Locked {
        /// The account.
        account: String,
    },
    /// Write this line (WARN unless said otherwise).
    Log(Notice),
}

/// A log line of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The first failure of an interval.
    Failure {
        /// Where it came from.
        source: IpAddr,
        /// The user name tried.
        account: String,
    },
    /// The first ban of an interval (the others are in the summary).
    Banned {
        /// The address.
        source: IpAddr,
        /// Its failures.
        failures: u32,
        /// How long.
        duration: Duration,
    },
    /// The first account lock of an interval.
    Locked {
        /// The account.
        account: String,
        /// Failures counted for it.
        failures: u32,
        /// How long.
        duration: Duration,
    },
    /// What else happened in the interval.
    Summary {
        /// Interval length.
        interval: Duration,
        /// Failures not logged on their own.
        failures: u32,
        /// Distinct sources.
        sources: u32,
        /// Some of them.
        sample: Vec<IpAddr>,
        /// Failures per account (the most-tried first, at most [`SAMPLE`]).
        accounts: Vec<(String, u32)>,
        /// Sources banned.
        bans: u32,
        /// Accounts locked.
        locks: u32,
        /// Requests refused unchecked (locked account) or dropped (banned source).
        refused: u32,
    },
    /// No failure for a while: the burst is over (INFO).
    BurstOver {
        /// Failures during the burst.
        failures: u32,
    },
}

/// Failures of one source or account.
#[derive(Debug, Clone)]
struct Counter {
    /// Failures in the current window.
    failures: u32,
    /// Start of the window.
    since: Instant,
    /// Banned / locked until then.
    until: Option<Instant>,
}

impl Counter {
    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now)
    }

    /// Count a failure; true when the threshold is reached now.
    fn fail(&mut self, now: Instant, window: Duration, threshold: u32, hold: Duration) -> bool {
        if self.active(now) {
            return false;
        }
        if now.saturating_duration_since(self.since) > window || self.until.is_some() {
            self.failures = 0;
            self.since = now;
            self.until = None;
        }
        self.failures += 1;
        if self.failures >= threshold {
            self.until = Some(now + hold);
            return true;
        }
        false
    }
}

/// The current log interval.
#[derive(Debug, Default)]
struct Interval {
    /// When it began (its first event).
    start: Option<Instant>,
    /// Failures since, not counting the one logged on its own.
    failures: u32,
    /// Whether its first failure / ban / lock was logged.
    logged_failure: bool,
    logged_ban: bool,
    logged_lock: bool,
    /// Distinct sources (bounded: only the count grows past the cap).
    sources: BTreeSet<IpAddr>,
    extra_sources: u32,
    /// Failures per account (bounded likewise).
    accounts: BTreeMap<String, u32>,
    bans: u32,
    locks: u32,
    refused: u32,
}

/// Most entries kept per map: an attack from a whole network cannot grow memory
/// without limit (entries past the cap are counted, not kept).
const MAX_TRACKED: usize = 100_000;
/// Sources / accounts remembered by name in one interval.
const INTERVAL_NAMES: usize = 1024;

/// Per-source and per-account failure limits (see the module docs).
#[derive(Debug)]
pub struct AuthGuard {
    cfg: GuardConfig,
    sources: HashMap<IpAddr, Counter>,
    accounts: HashMap<String, Counter>,
    interval: Interval,
    /// The attack in progress: (failures so far, last failure).
    burst: Option<(u32, Instant)>,
}

impl AuthGuard {
    /// A guard with these limits.
    pub fn new(mut cfg: GuardConfig) -> AuthGuard {
        cfg.source_threshold = cfg.source_threshold.max(1);
        cfg.account_threshold = cfg.account_threshold.max(1);
        AuthGuard {
            cfg,
            sources: HashMap::new(),
            accounts: HashMap::new(),
            interval: Interval::default(),
            burst: None,
        }
    }

    /// May a request from `source` for `account` be checked? `registered_here`:
    /// the account has a live registration from this address.
    pub fn admit(
        &mut self,
        source: IpAddr,
        account: &str,
        registered_here: bool,
        now: Instant,
    ) -> Admission {
        let verdict = if self.sources.get(&source).is_some_and(|c| c.active(now)) {
            Admission::SourceBanned
        } else if !registered_here && self.accounts.get(account).is_some_and(|c| c.active(now)) {
            Admission::AccountLocked
        } else {
            Admission::Allow
        };
        if verdict != Admission::Allow {
            self.interval.start.get_or_insert(now);
            self.interval.refused += 1;
        }
        verdict
    }

    /// Whether `source` is banned here (in memory; the replicated list is the
    /// backend's).
    pub fn is_banned(&self, source: IpAddr, now: Instant) -> bool {
        self.sources.get(&source).is_some_and(|c| c.active(now))
    }

    /// A failed authentication from `source`; `account` is the user name when
    /// such a user exists (unknown names are not locked: there is nothing to protect).
    pub fn failure(
        &mut self,
        source: IpAddr,
        tried: &str,
        account: Option<&str>,
        now: Instant,
    ) -> Vec<GuardAction> {
        let mut out = Vec::new();
        let cfg = self.cfg.clone();
        self.bound(now);
        let iv = &mut self.interval;
        iv.start.get_or_insert(now);
        if iv.logged_failure {
            iv.failures += 1;
        } else {
            iv.logged_failure = true;
            out.push(GuardAction::Log(Notice::Failure {
                source,
                account: tried.to_string(),
            }));
        }
        if iv.sources.len() < INTERVAL_NAMES {
            iv.sources.insert(source);
        } else if !iv.sources.contains(&source) {
            iv.extra_sources += 1;
        }
        if let Some(a) = account {
            if let Some(n) = iv.accounts.get_mut(a) {
                *n += 1;
            } else if iv.accounts.len() < INTERVAL_NAMES {
                iv.accounts.insert(a.to_string(), 1);
            }
        }
        let mut detected = false;
        let src = self.sources.entry(source).or_insert(Counter {
            failures: 0,
            since: now,
            until: None,
        });
        if src.fail(now, cfg.source_window, cfg.source_threshold, cfg.source_ban) {
            detected = true;
            let failures = src.failures;
            out.push(GuardAction::Ban {
                source,
                duration: cfg.source_ban,
                failures,
            });
            iv.bans += 1;
            if !iv.logged_ban {
                iv.logged_ban = true;
                out.push(GuardAction::Log(Notice::Banned {
                    source,
                    failures,
                    duration: cfg.source_ban,
                }));
            }
        }
        if let Some(a) = account {
            let acc = self.accounts.entry(a.to_string()).or_insert(Counter {
                failures: 0,
                since: now,
                until: None,
            });
            if acc.fail(
                now,
                cfg.account_window,
                cfg.account_threshold,
                cfg.account_lock,
            ) {
                detected = true;
                iv.locks += 1;
                out.push(GuardAction::Locked {
                    account: a.to_string(),
                });
                if !iv.logged_lock {
                    iv.logged_lock = true;
                    out.push(GuardAction::Log(Notice::Locked {
                        account: a.to_string(),
                        failures: acc.failures,
                        duration: cfg.account_lock,
                    }));
                }
            }
        }
        let in_burst = self.burst.is_some();
        let burst = self.burst.get_or_insert((iv.failures, now));
        burst.0 += 1;
        burst.1 = now;
        if !in_burst {
            if detected {
                let mut accounts: Vec<(String, u32)> =
                    iv.accounts.iter().map(|(a, n)| (a.clone(), *n)).collect();
                accounts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                out.push(GuardAction::Alarm(AuthBurst {
                    failures: burst.0,
                    sources: iv.sources.len() as u32 + iv.extra_sources,
                    sample: iv.sources.iter().take(SAMPLE).copied().collect(),
                    accounts: accounts.into_iter().take(SAMPLE).map(|a| a.0).collect(),
                }));
            } else {
                // Not an attack (yet): failures below every limit start no burst.
                self.burst = None;
            }
        }
        out
    }

    /// A successful authentication from `source` clears its failures.
    pub fn success(&mut self, source: IpAddr) {
        if self.sources.get(&source).is_some_and(|c| c.until.is_none()) {
            self.sources.remove(&source);
        }
    }

    /// When [`AuthGuard::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let iv = self.interval.start.map(|s| s + self.cfg.log_interval);
        let quiet = self.burst.map(|(_, last)| last + self.quiet());
        match (iv, quiet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A burst is over after this long without a failure.
    fn quiet(&self) -> Duration {
        self.cfg.account_window.max(self.cfg.source_window)
    }

    /// The summary at the end of an interval, and the end of a burst.
    pub fn poll(&mut self, now: Instant) -> Vec<GuardAction> {
        let mut out = Vec::new();
        if let Some(start) = self.interval.start {
            if now >= start + self.cfg.log_interval {
                let iv = std::mem::take(&mut self.interval);
                if iv.failures > 0 || iv.bans > 1 || iv.locks > 1 || iv.refused > 0 {
                    let mut accounts: Vec<(String, u32)> = iv.accounts.into_iter().collect();
                    accounts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    accounts.truncate(SAMPLE);
                    out.push(GuardAction::Log(Notice::Summary {
                        interval: self.cfg.log_interval,
                        failures: iv.failures,
                        sources: iv.sources.len() as u32 + iv.extra_sources,
                        sample: iv.sources.into_iter().take(SAMPLE).collect(),
                        accounts,
                        bans: iv.bans,
                        locks: iv.locks,
                        refused: iv.refused,
                    }));
                }
            }
        }
        if let Some((failures, last)) = self.burst {
            if now >= last + self.quiet() {
                self.burst = None;
                out.push(GuardAction::Log(Notice::BurstOver { failures }));
            }
        }
        out
    }

    /// Keep the maps bounded: drop what is neither active nor in its window.
    fn bound(&mut self, now: Instant) {
        let (sw, aw) = (self.cfg.source_window, self.cfg.account_window);
        let keep =
            |c: &Counter, w: Duration| c.active(now) || now.saturating_duration_since(c.since) <= w;
        if self.sources.len() >= MAX_TRACKED {
            self.sources.retain(|_, c| keep(c, sw));
        }
        if self.accounts.len() >= MAX_TRACKED {
            self.accounts.retain(|_, c| keep(c, aw));
        }
        // Still full of live entries: forget the oldest windows rather than grow.
        for _ in 0..2 {
            if self.sources.len() < MAX_TRACKED {
                break;
            }
            self.sources.retain(|_, c| c.active(now));
        }
    }
}

#[cfg(test)]
mod tests;
