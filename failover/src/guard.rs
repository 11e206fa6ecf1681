//! The VIP guard: a small child process that removes the VIP when the node stops
//! refreshing it.
//!
//! The kernel lifetime of the VIP is counted in whole seconds (and checked with up to
//! a second of slack), too coarse for a ~1 s failover. So the node also starts
//! `tandem vip-guard` with a pipe: the node writes `hold` on every refresh and
//! `release` when it lets go. If the pipe closes (the node died, even by SIGKILL) or
//! no `hold` arrives within the timeout (the node is frozen, e.g. SIGSTOP), the guard
//! removes the VIP at once. The kernel lifetime stays as the last line of defence.
//!
//! ```text
//!   tandem run ──hold/release (stdin pipe)──▶ tandem vip-guard ──netlink──▶ remove VIP
//! ```

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::vip::{Vip, VipSpec};

/// The node's side: the guard child and its pipe.
pub struct GuardHandle {
    child: Child,
    stdin: ChildStdin,
}

impl GuardHandle {
    /// Start `<exe> vip-guard …` (the same binary) for `spec`.
    pub fn spawn(exe: &Path, spec: &VipSpec, timeout: Duration) -> std::io::Result<GuardHandle> {
        let mut child = Command::new(exe)
            .arg("vip-guard")
            .arg("--interface")
            .arg(&spec.interface)
            .arg("--address")
            .arg(spec.address.to_string())
            .arg("--prefix")
            .arg(spec.prefix.to_string())
            .arg("--timeout-ms")
            .arg(timeout.as_millis().to_string())
            .stdin(Stdio::piped())
            .kill_on_drop(false)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("guard has no stdin"))?;
        Ok(GuardHandle { child, stdin })
    }

    /// The VIP is (still) ours: push the guard's deadline forward.
    pub async fn hold(&mut self) -> std::io::Result<()> {
        self.stdin.write_all(b"hold\n").await
    }

    /// We released the VIP: the guard stops watching.
    pub async fn release(&mut self) -> std::io::Result<()> {
        self.stdin.write_all(b"release\n").await
    }

    /// Whether the guard process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The guard's side (`tandem vip-guard`): watch stdin, remove the VIP when the
/// holder goes silent for `timeout` or its pipe closes. Returns when stdin closes.
pub async fn run_guard(spec: VipSpec, timeout: Duration) -> Result<(), crate::error::Error> {
    let vip = Vip::open(spec).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut holding = false;
    loop {
        let next = if holding {
            match tokio::time::timeout(timeout, lines.next_line()).await {
                Ok(l) => l,
                Err(_) => {
                    let removed = vip.remove().await?;
                    tracing::warn!(
                        address = %vip.spec().address,
                        timeout_ms = timeout.as_millis() as u64,
                        removed,
                        "vip-guard: the node stopped refreshing the VIP (frozen?); VIP removed"
                    );
                    holding = false;
                    continue;
                }
            }
        } else {
            lines.next_line().await
        };
        match next {
            Ok(Some(line)) => match line.trim() {
                "hold" => holding = true,
                "release" => holding = false,
                other => tracing::warn!(line = other, "vip-guard: unknown command ignored"),
            },
            Ok(None) | Err(_) => {
                if holding {
                    let removed = vip.remove().await?;
                    tracing::warn!(address = %vip.spec().address, removed, "vip-guard: the node exited; VIP removed");
                }
                return Ok(());
            }
        }
    }
}
