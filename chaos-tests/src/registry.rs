//! Names of what a run creates, who owns them, and removal of leftovers.
//!
//! Every run claims a prefix `tdm<pid % 10000><k>` (k: a two-digit counter per
//! process), so its namespaces are `<prefix>sw` (the switch with the bridge),
//! `<prefix>n<i>` (node i), `<prefix>cl` (the client) and `<prefix>pr` (the
//! capability probe); its files live under `<tmp>/tandem-chaos-<prefix>/`.
//! Before anything is created, an owner file `<owner dir>/<prefix>.owner`
//! records the pid and start time of the owning process and the run
//! directory. A later run (or `chaos-tests cleanup`) removes the namespaces,
//! processes and directories of every prefix whose owner is gone, and any
//! namespace that matches the pattern but has no owner file at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd;

/// First letters of every namespace and directory this crate creates.
pub const PREFIX: &str = "tdm";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where owner files are kept: `/run/tandem-chaos` (tmpfs, gone at reboot like
/// the namespaces), or `<tmp>/tandem-chaos-owners` if `/run` is not writable.
pub fn owner_dir() -> PathBuf {
    let run = PathBuf::from("/run/tandem-chaos");
    if std::fs::create_dir_all(&run).is_ok() {
        return run;
    }
    let tmp = std::env::temp_dir().join("tandem-chaos-owners");
    let _ = std::fs::create_dir_all(&tmp);
    tmp
}

/// The run directory of a prefix.
pub fn run_dir_of(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tandem-chaos-{prefix}"))
}

/// A claimed prefix; dropping it removes the owner file (call it last).
#[derive(Debug)]
pub struct Owner {
    pub prefix: String,
    pub run_dir: PathBuf,
    file: PathBuf,
}

impl Owner {
    /// Claim a fresh prefix for this process and write its owner file.
    pub fn claim() -> anyhow::Result<Owner> {
        let pid = std::process::id();
        let start = process_start_time(pid as i32).unwrap_or(0);
        let dir = owner_dir();
        loop {
            let k = COUNTER.fetch_add(1, Ordering::Relaxed) % 100;
            let prefix = format!("{PREFIX}{:04}{k:02}", pid % 10_000);
            let file = dir.join(format!("{prefix}.owner"));
            if let Some(other) = read_owner(&file) {
                if other.alive() {
                    continue; // another live process with the same pid % 10000
                }
                remove_prefix(&prefix, &other.run_dir, &mut CleanupReport::default());
            }
            let run_dir = run_dir_of(&prefix);
            let text = format!("pid={pid}\nstart={start}\nrun_dir={}\n", run_dir.display());
            std::fs::write(&file, text)
                .with_context(|| format!("writing owner file {}", file.display()))?;
            return Ok(Owner {
                prefix,
                run_dir,
                file,
            });
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

struct OwnerRecord {
    pid: i32,
    start: u64,
    run_dir: PathBuf,
}

impl OwnerRecord {
    fn alive(&self) -> bool {
        self.pid > 0
            && process_start_time(self.pid).is_some_and(|s| s == self.start || self.start == 0)
    }
}

fn read_owner(file: &Path) -> Option<OwnerRecord> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut rec = OwnerRecord {
        pid: 0,
        start: 0,
        run_dir: PathBuf::new(),
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => rec.pid = v.trim().parse().unwrap_or(0),
            Some(("start", v)) => rec.start = v.trim().parse().unwrap_or(0),
            Some(("run_dir", v)) => rec.run_dir = PathBuf::from(v.trim()),
            _ => {}
        }
    }
    Some(rec)
}

/// Start time (clock ticks since boot, field 22 of /proc/<pid>/stat) of a
/// live process; None if there is none or it is a zombie (killed, not reaped:
/// it will never clean up).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); field 22 is the 20th from here.
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// If `name` is a namespace of this crate, its prefix (`tdm` + 6 digits).
pub fn ns_prefix(name: &str) -> Option<&str> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.len() < 8 || !digits.as_bytes()[..6].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let role = &digits[6..];
    let ok = matches!(role, "sw" | "cl" | "pr")
        || role
            .strip_prefix('n')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| &name[..PREFIX.len() + 6])
}

/// Names of all network namespaces (`ip netns list`).
pub fn list_netns() -> Vec<String> {
    cmd::ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Pids of the processes whose network namespace is `ns` (never this process).
pub fn ns_pids(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    cmd::ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| *p != me)
        .collect()
}

/// SIGKILL every process in `ns`, wait briefly for them to go, delete `ns`.
pub fn kill_and_delete_ns(ns: &str) -> (Vec<i32>, anyhow::Result<()>) {
    let pids = ns_pids(ns);
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    let t0 = std::time::Instant::now();
    while !ns_pids(ns).is_empty() && t0.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = cmd::ip(&["netns", "del", ns]).map(drop);
    (pids, r)
}

/// Kill processes whose command line mentions the run directory of `prefix`
/// (tandem processes whose namespace name is already gone).
fn kill_by_cmdline(prefix: &str) -> Vec<i32> {
    let needle = format!("tandem-chaos-{prefix}");
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed.push(pid);
                }
            }
        }
    }
    killed
}

/// What a cleanup removed or left alone.
#[derive(Debug, Default)]
pub struct CleanupReport {
    pub namespaces: Vec<String>,
    pub killed: Vec<i32>,
    pub dirs: Vec<PathBuf>,
    pub live: BTreeSet<String>,
    pub errors: Vec<String>,
}

impl CleanupReport {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.killed.is_empty() && self.dirs.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "removed {} namespace(s) {:?}, killed {} process(es), removed {} dir(s)",
            self.namespaces.len(),
            self.namespaces,
            self.killed.len(),
            self.dirs.len()
        );
        if !self.live.is_empty() {
            s.push_str(&format!(
                "; left alone (owner still running): {:?}",
                self.live
            ));
        }
        for e in &self.errors {
            s.push_str(&format!("\n  error: {e}"));
        }
        s
    }
}

fn remove_prefix(prefix: &str, run_dir: &Path, report: &mut CleanupReport) {
    report.killed.extend(kill_by_cmdline(prefix));
    for ns in list_netns() {
        if ns_prefix(&ns) == Some(prefix) {
            let (pids, r) = kill_and_delete_ns(&ns);
            report.killed.extend(pids);
            match r {
                Ok(()) => report.namespaces.push(ns),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    let dir = if run_dir.as_os_str().is_empty() {
        run_dir_of(prefix)
    } else {
        run_dir.to_path_buf()
    };
    if dir.exists() && std::fs::remove_dir_all(&dir).is_ok() {
        report.dirs.push(dir);
    }
}

/// Remove everything left by runs whose owner process is dead.
pub fn remove_leftovers() -> CleanupReport {
    let mut report = CleanupReport::default();
    let dir = owner_dir();
    let mut owned = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(prefix) = name.strip_suffix(".owner") else {
                continue;
            };
            owned.insert(prefix.to_string());
            match read_owner(&e.path()) {
                Some(rec) if rec.alive() => {
                    report.live.insert(prefix.to_string());
                }
                rec => {
                    let run_dir = rec.map(|r| r.run_dir).unwrap_or_default();
                    remove_prefix(prefix, &run_dir, &mut report);
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    // Namespaces of ours with no owner file at all (the file was lost).
    for ns in list_netns() {
        if let Some(prefix) = ns_prefix(&ns) {
            if !owned.contains(prefix) {
                let prefix = prefix.to_string();
                remove_prefix(&prefix, Path::new(""), &mut report);
            }
        }
    }
    report
}

/// Remove the run directories (kept logs of failed runs) of every prefix
/// whose owner is not running; returns the directories removed.
pub fn remove_kept_logs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let owners = owner_dir();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(prefix) = name.strip_prefix("tandem-chaos-") else {
            continue;
        };
        if ns_prefix(&format!("{prefix}sw")) != Some(prefix) {
            continue;
        }
        let live = read_owner(&owners.join(format!("{prefix}.owner"))).is_some_and(|o| o.alive());
        if !live && std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// [`remove_leftovers`] once per process, printing what it removed.
pub fn remove_leftovers_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let r = remove_leftovers();
        if !r.is_empty() || !r.errors.is_empty() {
            println!("chaos: leftovers of a previous run: {}", r.summary());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        assert_eq!(ns_prefix("tdm123401sw"), Some("tdm123401"));
        assert_eq!(ns_prefix("tdm123401n12"), Some("tdm123401"));
        assert_eq!(ns_prefix("tdm123401cl"), Some("tdm123401"));
        assert_eq!(ns_prefix("tdm123401n"), None);
        assert_eq!(ns_prefix("tdm12a401sw"), None);
        assert_eq!(ns_prefix("tdm123401xx"), None);
        assert_eq!(ns_prefix("other"), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some());
    }
}
