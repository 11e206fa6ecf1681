//! Progress output and command execution shared by the builder and the installer.
//!
//! Every message goes to stdout and to each extra console (the installer adds
//! `/dev/tty1` and `/dev/ttyS0`, so it is seen on the screen and the serial line).
//! Commands run with their output captured; a failing command becomes an
//! [`Error::Command`] naming the stage, the command line and its last output lines.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::error::{Error, Result};

fn consoles() -> &'static Mutex<Vec<String>> {
    static C: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Vec::new()))
}

/// Also write every message to these devices (those that cannot be opened are
/// skipped). Each message opens the device anew: a getty starting on it hangs
/// up earlier file descriptors.
pub fn add_consoles(paths: &[&str]) {
    let mut c = consoles().lock().expect("console lock");
    c.extend(paths.iter().map(|p| p.to_string()));
}

/// Prints one line on stdout and every console.
pub fn say(msg: &str) {
    println!("{msg}");
    let _ = std::io::stdout().flush();
    let c = consoles().lock().expect("console lock");
    for p in c.iter() {
        if let Ok(mut f) = OpenOptions::new().write(true).open(p) {
            // Serial lines want CR LF.
            let _ = f.write_all(format!("{}\r\n", msg.replace('\n', "\r\n")).as_bytes());
        }
    }
}

/// Numbered stages with timing: `[3/9] name`.
pub struct Stages {
    /// Total number of stages announced.
    total: usize,
    /// Stage currently running (1-based) and its name.
    current: (usize, String),
    /// Start of the current stage.
    stage_start: Instant,
    /// Start of the whole run.
    run_start: Instant,
    /// Echo command output lines as they come.
    pub echo: bool,
    /// Echo only output lines starting with this (progress lines of a tool).
    pub echo_prefix: Option<&'static str>,
}

impl Stages {
    /// A run of `total` stages.
    pub fn new(total: usize) -> Self {
        Stages {
            total,
            current: (0, String::new()),
            stage_start: Instant::now(),
            run_start: Instant::now(),
            echo: false,
            echo_prefix: None,
        }
    }

    /// Starts the next stage.
    pub fn begin(&mut self, name: &str) {
        self.end_current();
        self.current = (self.current.0 + 1, name.to_string());
        self.stage_start = Instant::now();
        say(&format!("[{}/{}] {} ...", self.current.0, self.total, name));
    }

    fn end_current(&mut self) {
        if self.current.0 > 0 {
            say(&format!(
                "[{}/{}] {} done ({:.1} s)",
                self.current.0,
                self.total,
                self.current.1,
                self.stage_start.elapsed().as_secs_f64()
            ));
        }
    }

    /// Ends the last stage; returns the total run time in seconds.
    pub fn finish(&mut self) -> f64 {
        self.end_current();
        self.current.1.clear();
        self.run_start.elapsed().as_secs_f64()
    }

    /// Name of the running stage.
    pub fn name(&self) -> &str {
        &self.current.1
    }

    /// An error of the current stage.
    pub fn fail(&self, message: impl Into<String>) -> Error {
        Error::Stage {
            stage: self.current.1.clone(),
            message: message.into(),
        }
    }

    fn echo_mode(&self) -> Echo {
        match (self.echo, self.echo_prefix) {
            (true, _) => Echo::All,
            (false, Some(p)) => Echo::Prefix(p),
            (false, None) => Echo::None,
        }
    }

    /// Runs a command within the current stage; returns its stdout.
    pub fn run(&self, cmd: &mut Command) -> Result<String> {
        run_in(&self.current.1, cmd, self.echo_mode(), None)
    }

    /// Runs a command with `input` on its stdin.
    pub fn run_input(&self, cmd: &mut Command, input: &[u8]) -> Result<String> {
        run_in(&self.current.1, cmd, self.echo_mode(), Some(input))
    }
}

/// Shell-like rendering of a command line for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|<>".contains(c)) {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

const KEEP_LINES: usize = 60;

/// Which output lines of a command are shown while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// None (they are kept for the error message).
    None,
    /// Every line.
    All,
    /// Lines starting with this prefix.
    Prefix(&'static str),
}

impl Echo {
    fn show(self, line: &str) -> bool {
        match self {
            Echo::None => false,
            Echo::All => true,
            Echo::Prefix(p) => line.starts_with(p),
        }
    }
}

/// Runs `cmd` as part of `stage`, capturing stdout (returned) and both streams'
/// last lines (for the error).
pub fn run_in(stage: &str, cmd: &mut Command, echo: Echo, input: Option<&[u8]>) -> Result<String> {
    let line = command_line(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command {
            stage: stage.to_string(),
            command: line.clone(),
            status: "could not be started".to_string(),
            output: format!("{e} (is the program installed? see iso-build/setup.sh)"),
        })?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let err = child.stderr.take().expect("piped stderr");
    let t2 = tail.clone();
    let err_thread = std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(|l| l.ok()) {
            if echo.show(&l) {
                say(&format!("    {l}"));
            }
            let mut t = t2.lock().expect("tail");
            t.push_back(l);
            if t.len() > KEEP_LINES {
                t.pop_front();
            }
        }
    });
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut buf = [0u8; 8192];
    let mut pending = Vec::new();
    loop {
        let n = stdout
            .read(&mut buf)
            .map_err(crate::error::io(format!("reading output of {line}")))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let l = String::from_utf8_lossy(&pending[..pos]).into_owned();
            pending.drain(..=pos);
            if echo.show(&l) {
                say(&format!("    {l}"));
            }
            let mut t = tail.lock().expect("tail");
            t.push_back(l);
            if t.len() > KEEP_LINES {
                t.pop_front();
            }
        }
    }
    let status = child
        .wait()
        .map_err(crate::error::io(format!("waiting for {line}")))?;
    let _ = err_thread.join();
    if !status.success() {
        let t = tail.lock().expect("tail");
        return Err(Error::Command {
            stage: stage.to_string(),
            command: line,
            status: match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            },
            output: t.iter().cloned().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_names_stage_command_and_output() {
        let e = run_in(
            "partition",
            Command::new("sh").args(["-c", "echo out-line; echo err-line >&2; exit 3"]),
            Echo::None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stage `partition`"), "{e}");
        assert!(
            e.contains("sh -c 'echo out-line; echo err-line >&2; exit 3'"),
            "{e}"
        );
        assert!(e.contains("status 3"), "{e}");
        assert!(e.contains("out-line") && e.contains("err-line"), "{e}");
    }

    #[test]
    fn missing_program_is_named() {
        let e = run_in(
            "x",
            &mut Command::new("no-such-program-tandem"),
            Echo::None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no-such-program-tandem") && e.contains("could not be started"),
            "{e}"
        );
    }

    #[test]
    fn stdout_is_returned_and_stdin_fed() {
        let out = run_in("x", &mut Command::new("cat"), Echo::None, Some(b"hello\n")).unwrap();
        assert_eq!(out, "hello\n");
    }
}
