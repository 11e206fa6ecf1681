//! An in-memory [`Backend`] for tests and the load benchmark: users, bindings and
//! CDRs in mutexes, with a channel announcing each ended call; and [`dominant_hz`],
//! the tone check the interop and chaos tests apply to recordings.

use crate::backend::{AuthBurst, Backend, Binding, CallRecord, SipUser, SourceBan};
use crate::error::BackendError;
use crate::relay::RecordingFile;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Shared in-memory state; clone it to look inside from a test.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Users by extension.
    users: Mutex<HashMap<String, SipUser>>,
    /// All bindings.
    bindings: Mutex<Vec<Binding>>,
    /// Ended calls in order, with their recordings.
    calls: Mutex<Vec<(CallRecord, Option<RecordingFile>)>>,
    /// Security events (one per burst).
    security: Mutex<Vec<AuthBurst>>,
    /// Replicated ban list stand-in.
    bans: Mutex<HashMap<IpAddr, SourceBan>>,
    /// Announces every ended call.
    ended: broadcast::Sender<CallRecord>,
    /// Offset added to the wall clock (to test expiry).
    clock_offset: Mutex<i64>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// Empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend {
            inner: Arc::new(Inner {
                users: Mutex::default(),
                bindings: Mutex::default(),
                calls: Mutex::default(),
                security: Mutex::default(),
                bans: Mutex::default(),
                ended: broadcast::channel(1024).0,
                clock_offset: Mutex::new(0),
            }),
        }
    }

    /// Add a user.
    pub fn add_user(&self, extension: &str, password: &str) {
        self.inner.users.lock().unwrap().insert(
            extension.to_string(),
            SipUser {
                extension: extension.to_string(),
                password: password.to_string(),
                display_name: None,
            },
        );
    }

    /// Snapshot of the stored bindings.
    pub fn stored_bindings(&self) -> Vec<Binding> {
        self.inner.bindings.lock().unwrap().clone()
    }

    /// Ended calls so far.
    pub fn calls(&self) -> Vec<(CallRecord, Option<RecordingFile>)> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Security events so far.
    pub fn security_events(&self) -> Vec<AuthBurst> {
        self.inner.security.lock().unwrap().clone()
    }

    /// Bans written so far (expired ones included).
    pub fn bans(&self) -> Vec<SourceBan> {
        let mut v: Vec<SourceBan> = self.inner.bans.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|b| b.source);
        v
    }

    /// Lift a ban (what deleting `sip.ban.<ip>` does on a node).
    pub fn unban(&self, source: IpAddr) {
        self.inner.bans.lock().unwrap().remove(&source);
    }

    /// Subscribe to ended calls.
    pub fn subscribe(&self) -> broadcast::Receiver<CallRecord> {
        self.inner.ended.subscribe()
    }

    /// Move the backend's clock (binding expiry) by `secs`.
    pub fn advance_clock(&self, secs: i64) {
        *self.inner.clock_offset.lock().unwrap() += secs;
    }
}

impl Backend for MemoryBackend {
    fn user(&self, extension: &str) -> Option<SipUser> {
        self.inner.users.lock().unwrap().get(extension).cloned()
    }

    fn bindings(&self, aor: &str) -> Vec<Binding> {
        let b = self.inner.bindings.lock().unwrap();
        b.iter().filter(|b| b.aor == aor).cloned().collect()
    }

    fn all_bindings(&self) -> Vec<Binding> {
        self.inner.bindings.lock().unwrap().clone()
    }

    async fn save_binding(&self, b: Binding) -> Result<(), BackendError> {
        let mut all = self.inner.bindings.lock().unwrap();
        all.retain(|x| !(x.aor == b.aor && x.contact == b.contact));
        all.push(b);
        Ok(())
    }

    async fn remove_binding(&self, aor: &str, contact: &str) -> Result<(), BackendError> {
        let mut all = self.inner.bindings.lock().unwrap();
        all.retain(|x| !(x.aor == aor && x.contact == contact));
        Ok(())
    }

    async fn call_ended(
        &self,
        record: CallRecord,
        recording: Option<RecordingFile>,
    ) -> Result<(), BackendError> {
        self.inner
            .calls
            .lock()
            .unwrap()
            .push((record.clone(), recording));
        let _ = self.inner.ended.send(record);
        Ok(())
    }

    fn security_event(&self, burst: &AuthBurst) {
        self.inner.security.lock().unwrap().push(burst.clone());
    }

    async fn ban(&self, ban: SourceBan) -> Result<(), BackendError> {
        self.inner.bans.lock().unwrap().insert(ban.source, ban);
        Ok(())
    }

    fn banned(&self, source: IpAddr, now_unix: i64) -> bool {
        self.inner
            .bans
            .lock()
            .unwrap()
            .get(&source)
            .is_some_and(|b| b.until_unix > now_unix)
    }

    fn now_unix(&self) -> i64 {
        chrono::Utc::now().timestamp() + *self.inner.clock_offset.lock().unwrap()
    }
}

/// Goertzel power of `hz` in `x` (samples at `rate` Hz).
fn goertzel(x: &[f64], rate: f64, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / rate;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for v in x {
        let s = v + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// The strongest frequency of `x` (samples at `rate` Hz) on a 50 Hz grid from 200 to
/// 3400 Hz, the telephone band: tests play a known tone and look for it here.
pub fn dominant_hz(x: &[f64], rate: f64) -> f64 {
    let mut best = (0.0, 0.0);
    let mut hz = 200.0;
    while hz <= 3400.0 {
        let p = goertzel(x, rate, hz);
        if p > best.1 {
            best = (hz, p);
        }
        hz += 50.0;
    }
    best.0
}

#[cfg(test)]
mod tone_tests {
    #[test]
    fn a_pure_tone_is_found_on_the_grid() {
        for hz in [600.0, 1000.0, 3400.0] {
            let x: Vec<f64> = (0..8000)
                .map(|i| (2.0 * std::f64::consts::PI * hz * f64::from(i) / 8000.0).sin())
                .collect();
            assert_eq!(super::dominant_hz(&x, 8000.0), hz);
        }
    }
}
