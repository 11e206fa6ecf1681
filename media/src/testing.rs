//! An in-memory [`Backend`] for tests and the load benchmark: users, bindings and
//! CDRs in mutexes, with a channel announcing each ended call.

use crate::backend::{Backend, Binding, CallRecord, SipUser};
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
    /// Security events (source, failures).
    security: Mutex<Vec<(IpAddr, u32)>>,
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
    pub fn security_events(&self) -> Vec<(IpAddr, u32)> {
        self.inner.security.lock().unwrap().clone()
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

    fn security_event(&self, source: IpAddr, failures: u32) {
        self.inner.security.lock().unwrap().push((source, failures));
    }

    fn now_unix(&self) -> i64 {
        chrono::Utc::now().timestamp() + *self.inner.clock_offset.lock().unwrap()
    }
}
