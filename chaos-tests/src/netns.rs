//! A thread that lives in another network namespace and runs async work there.
//!
//! Network namespaces belong to threads, and a socket belongs to the namespace
//! of the thread that created it. [`NsExecutor`] starts one thread, moves it
//! into `/var/run/netns/<name>` with `setns(2)`, and runs a current-thread tokio
//! runtime on it; the harness sends it closures that build futures (HTTP
//! requests, ARP probes), which run as local tasks on that thread, so every
//! socket they open is inside the namespace. Results come back on oneshot
//! channels, usable from any runtime.

use std::future::Future;
use std::os::fd::AsFd;

use anyhow::{anyhow, Context};
use nix::sched::{setns, CloneFlags};
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Executor thread in a network namespace; stopped (tasks cancelled) on drop.
pub struct NsExecutor {
    pub ns: String,
    tx: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsExecutor {
    /// Start the thread and enter namespace `ns`.
    pub fn start(ns: &str) -> anyhow::Result<NsExecutor> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let name = ns.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{ns}"))
            .spawn(move || {
                let entered = enter(&name).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building the namespace runtime")
                });
                let rt = match entered {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(()));
                        rt
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    while let Some(job) = rx.recv().await {
                        job();
                    }
                });
                // Dropping `local` cancels the tasks still running.
            })
            .context("spawning the namespace thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("namespace thread for {ns} died"))?
            .map_err(|e| anyhow!(e))?;
        Ok(NsExecutor {
            ns: ns.to_string(),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Run `f()` as a task in the namespace; the receiver gets its output.
    pub fn spawn<F, Fut, T>(&self, f: F) -> oneshot::Receiver<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            tokio::task::spawn_local(async move {
                let _ = tx.send(f().await);
            });
        });
        if let Some(q) = &self.tx {
            let _ = q.send(job);
        }
        rx
    }

    /// Run `f()` in the namespace and wait for its output.
    pub async fn run<F, Fut, T>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.spawn(f)
            .await
            .map_err(|_| anyhow!("the executor of namespace {} stopped", self.ns))
    }

    /// Stop the thread; tasks still running are cancelled.
    pub fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NsExecutor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Move the calling thread into network namespace `ns`.
pub(crate) fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {path}"))?;
    Ok(())
}
