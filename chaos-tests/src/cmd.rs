//! Running the system tools the harness drives: `ip`, `nft`, `tc` and `tandem` CLI
//! commands, on the host or inside a namespace (`ip netns exec <ns> …`).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// Run `prog args…` to completion; an error names the command and its stderr.
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = output(prog, args)?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `prog args…` and return its output whatever its exit status.
pub fn output(prog: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{prog}` (is it installed and on PATH?)"))
}

/// `ip …` on the host.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// `ip netns exec <ns> prog args…`.
pub fn in_ns(ns: &str, prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, prog];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `nft <script>` inside a namespace (one argument, statements separated by `;`).
pub fn nft(ns: &str, script: &str) -> anyhow::Result<String> {
    in_ns(ns, "nft", &[script])
}

/// Is `prog` an executable on PATH?
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| is_executable(&d.join(prog))))
        .unwrap_or(false)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Run a `tandem` CLI command inside namespace `ns` with a deadline; returns
/// stdout. The command line, its stdout and stderr are appended to `log`.
pub async fn tandem_in_ns(
    ns: &str,
    tandem: &Path,
    args: &[&str],
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(tandem)
        .args(args)
        .env("TANDEM_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let line = format!("ip netns exec {ns} {} {}", tandem.display(), args.join(" "));
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("`{line}` did not finish within {timeout:?}"))?
        .with_context(|| format!("starting `{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    append(
        log,
        &format!("$ {line}\n[{}]\n{stdout}{stderr}\n", out.status),
    );
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(stdout)
}

/// Append text to a log file, ignoring errors (logs are a diagnostic aid).
pub fn append(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
}
