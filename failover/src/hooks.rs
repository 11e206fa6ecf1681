//! Role hooks: executables run when this node becomes master, standby or fenced
//! (`[hooks] on_master|on_standby|on_fenced`), e.g. to start or stop a co-resident PBX.
//!
//! A hook runs in its own task: the role change never waits for it. It gets the new
//! role as its first argument and in `TANDEM_ROLE`, is killed after the timeout, and
//! its exit status and (truncated) output are logged.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::controller::Role;

/// Hook executables by role, and their timeout.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub on_master: Option<PathBuf>,
    pub on_standby: Option<PathBuf>,
    pub on_fenced: Option<PathBuf>,
    pub timeout: Duration,
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Exited { code: Option<i32>, output: String },
    TimedOut { output: String },
    FailedToStart { reason: String },
}

/// Most bytes of hook output kept for the log.
pub const MAX_OUTPUT: usize = 4096;

impl Hooks {
    pub fn for_role(&self, role: Role) -> Option<&PathBuf> {
        match role {
            Role::Master => self.on_master.as_ref(),
            Role::Standby => self.on_standby.as_ref(),
            Role::Fenced => self.on_fenced.as_ref(),
            Role::Witness | Role::Candidate => None,
        }
    }

    /// Start the hook for `role` in the background (if one is configured).
    pub fn spawn(&self, role: Role) -> Option<tokio::task::JoinHandle<HookOutcome>> {
        let path = self.for_role(role)?.clone();
        let timeout = self.timeout;
        Some(tokio::spawn(async move {
            let t0 = Instant::now();
            let outcome = run(&path, role, timeout).await;
            let took_ms = t0.elapsed().as_millis() as u64;
            match &outcome {
                HookOutcome::Exited {
                    code: Some(0),
                    output,
                } => {
                    tracing::info!(hook = %path.display(), %role, took_ms, output = %output, "role hook succeeded")
                }
                HookOutcome::Exited { code, output } => {
                    tracing::warn!(hook = %path.display(), %role, took_ms, ?code, output = %output, "role hook failed")
                }
                HookOutcome::TimedOut { output } => {
                    tracing::warn!(hook = %path.display(), %role, timeout_ms = timeout.as_millis() as u64, output = %output, "role hook timed out and was killed")
                }
                HookOutcome::FailedToStart { reason } => {
                    tracing::warn!(hook = %path.display(), %role, %reason, "role hook could not start")
                }
            }
            outcome
        }))
    }
}

/// Run one hook to completion or timeout.
pub async fn run(path: &PathBuf, role: Role, timeout: Duration) -> HookOutcome {
    let child = tokio::process::Command::new(path)
        .arg(role.as_str())
        .env("TANDEM_ROLE", role.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return HookOutcome::FailedToStart {
                reason: e.to_string(),
            }
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(MAX_OUTPUT as u64).read_to_end(&mut out).await;
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(MAX_OUTPUT as u64).read_to_end(&mut err).await;
        }
        out.extend_from_slice(&err);
        out.truncate(MAX_OUTPUT);
        String::from_utf8_lossy(&out).trim().to_string()
    };
    match tokio::time::timeout(timeout, async {
        let output = collect.await;
        let status = child.wait().await;
        (output, status)
    })
    .await
    {
        Ok((output, Ok(status))) => HookOutcome::Exited {
            code: status.code(),
            output,
        },
        Ok((_, Err(e))) => HookOutcome::FailedToStart {
            reason: e.to_string(),
        },
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            HookOutcome::TimedOut {
                output: String::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn hook_gets_the_role_and_its_status_and_output_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ok = script(dir.path(), "ok", "echo \"became $1 ($TANDEM_ROLE)\"");
        let hooks = Hooks {
            on_master: Some(ok),
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let outcome = hooks.spawn(Role::Master).unwrap().await.unwrap();
        assert_eq!(
            outcome,
            HookOutcome::Exited {
                code: Some(0),
                output: "became master (master)".into()
            }
        );
        assert!(
            hooks.spawn(Role::Standby).is_none(),
            "no standby hook configured"
        );
    }

    #[tokio::test]
    async fn failing_slow_and_missing_hooks_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let fail = script(dir.path(), "fail", "echo oops >&2; exit 3");
        let slow = script(dir.path(), "slow", "sleep 30");
        let t = Duration::from_millis(300);
        assert_eq!(
            run(&fail, Role::Fenced, t).await,
            HookOutcome::Exited {
                code: Some(3),
                output: "oops".into()
            }
        );
        let t0 = Instant::now();
        assert!(matches!(
            run(&slow, Role::Standby, t).await,
            HookOutcome::TimedOut { .. }
        ));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "timeout not enforced"
        );
        assert!(matches!(
            run(&dir.path().join("missing"), Role::Master, t).await,
            HookOutcome::FailedToStart { .. }
        ));
    }
}
