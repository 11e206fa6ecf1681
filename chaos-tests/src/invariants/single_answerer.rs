//! Invariant: at most one node answers ARP for the VIP at any time.
//!
//! Two nodes answering at once (split brain at layer 2) sends some clients
//! to a master that is no longer the master. From the client namespace the
//! prober sends an ARP request for the VIP every 50 ms and collects the
//! distinct MACs that answer within a 40 ms window
//! (`tandem_failover::announce::arp_probe`); every probe is recorded for the
//! whole scenario. A violation is one probe answered by two different MACs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_failover::announce::{arp_probe, interface_mac};
use tokio::sync::oneshot;

use crate::netns::NsExecutor;
use crate::topology::{self, fmt_mac};

/// Time between the starts of two probes.
pub const INTERVAL: Duration = Duration::from_millis(50);
/// How long a probe listens for answers.
pub const WINDOW: Duration = Duration::from_millis(40);

/// One ARP probe of the VIP.
#[derive(Debug, Clone)]
pub struct Probe {
    pub at: Instant,
    /// Distinct MACs that answered (empty: nobody holds the VIP).
    pub macs: Vec<[u8; 6]>,
    pub error: Option<String>,
}

/// A running prober; [`Prober::stop`] returns every probe.
pub struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    done: oneshot::Receiver<Result<(), String>>,
}

impl Prober {
    /// Start probing the VIP from the client namespace's eth0.
    pub fn start(client: &NsExecutor, expected_mac: [u8; 6]) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), probes.clone());
        let done = client.spawn(move || async move {
            let mac = interface_mac("eth0").map_err(|e| e.to_string())?;
            if mac != expected_mac {
                return Err(format!(
                    "eth0 of the client namespace has MAC {}, expected {} (not in the namespace?)",
                    fmt_mac(&mac),
                    fmt_mac(&expected_mac)
                ));
            }
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                let r = arp_probe("eth0", mac, topology::CLIENT_IP, topology::VIP, WINDOW).await;
                let probe = match r {
                    Ok(macs) => Probe {
                        at,
                        macs,
                        error: None,
                    },
                    Err(e) => Probe {
                        at,
                        macs: Vec::new(),
                        error: Some(e.to_string()),
                    },
                };
                p.lock().unwrap_or_else(|e| e.into_inner()).push(probe);
            }
            Ok(())
        });
        Prober { stop, probes, done }
    }

    /// Probes recorded so far.
    pub fn snapshot(&self) -> Vec<Probe> {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop and return every probe (an error if the prober could not run).
    pub async fn stop(self) -> Result<Vec<Probe>, String> {
        self.stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(2), self.done).await {
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err("the ARP prober task was cancelled".into()),
            _ => {}
        }
        let probes = self
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(probes)
    }
}

/// A probe answered by more than one MAC.
#[derive(Debug, Clone)]
pub struct Violation {
    pub at: Instant,
    pub macs: Vec<[u8; 6]>,
}

/// What the probes show.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub probes: usize,
    /// Probes that failed to run (socket errors).
    pub errors: usize,
    pub first_error: Option<String>,
    /// Probes nobody answered (no VIP holder at that moment).
    pub unanswered: usize,
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// The invariant holds and the probes are trustworthy (under 10 % errors, at least one probe).
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.probes > 0 && self.errors * 10 < self.probes
    }
}

/// Check the invariant over recorded probes.
pub fn check(probes: &[Probe]) -> Verdict {
    let mut v = Verdict {
        probes: probes.len(),
        ..Verdict::default()
    };
    for p in probes {
        if let Some(e) = &p.error {
            v.errors += 1;
            v.first_error.get_or_insert_with(|| e.clone());
        } else if p.macs.is_empty() {
            v.unanswered += 1;
        } else if p.macs.len() > 1 {
            v.violations.push(Violation {
                at: p.at,
                macs: p.macs.clone(),
            });
        }
    }
    v
}

/// Probes at or after `from` in which `mac` answered.
pub fn answered_by(probes: &[Probe], mac: &[u8; 6], from: Instant) -> usize {
    probes
        .iter()
        .filter(|p| p.at >= from && p.macs.contains(mac))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(at: Instant, macs: &[[u8; 6]]) -> Probe {
        Probe {
            at,
            macs: macs.to_vec(),
            error: None,
        }
    }

    #[test]
    fn two_macs_in_one_probe_is_a_violation() {
        let t = Instant::now();
        let a = [2, 0, 0, 0, 0, 1];
        let b = [2, 0, 0, 0, 0, 2];
        let probes = [
            probe(t, &[a]),
            probe(t + INTERVAL, &[]),
            probe(t + INTERVAL * 2, &[a, b]),
            probe(t + INTERVAL * 3, &[b]),
        ];
        let v = check(&probes);
        assert_eq!(v.probes, 4);
        assert_eq!(v.unanswered, 1);
        assert_eq!(v.violations.len(), 1);
        assert!(!v.ok());
        assert_eq!(answered_by(&probes, &a, t + INTERVAL), 1);
    }

    #[test]
    fn a_move_between_probes_is_fine() {
        let t = Instant::now();
        let probes = [
            probe(t, &[[2, 0, 0, 0, 0, 1]]),
            probe(t + INTERVAL, &[[2, 0, 0, 0, 0, 2]]),
        ];
        assert!(check(&probes).ok());
    }

    #[test]
    fn a_prober_that_cannot_probe_proves_nothing() {
        let t = Instant::now();
        let probes = [Probe {
            at: t,
            macs: vec![],
            error: Some("EPERM".into()),
        }];
        assert!(!check(&probes).ok());
        assert!(!check(&[]).ok());
    }
}
