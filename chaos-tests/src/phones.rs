//! Real SIP phones for the scenarios: headless baresip processes in the client
//! namespace, registered to the VIP, driven over baresip's `ctrl_tcp` module.
//!
//! ```text
//!   harness ──(NsExecutor, client ns)── ctrl_tcp 127.0.0.1:<ctrl> ──▶ baresip ──SIP/RTP──▶ VIP:5060
//!                    ▲                                                 │
//!                    └──────── events (REGISTERING, CALL_ESTABLISHED…) ┘
//! ```
//!
//! Each phone has its own SIP port, RTP port range, control port and config
//! directory under the run directory (`<run_dir>/phones/<name>/`: `config`,
//! `accounts`, the tone it plays, `baresip.log`). The phone plays a WAV tone
//! as its microphone (`aufile`), answers automatically when asked to, and
//! offers G.711 only. `ctrl_tcp` accepts one connection at a time, so one task
//! per phone owns it: it sends the commands and timestamps every message it
//! reads (command responses and events) into the phone's journal.
//!
//! A phone process is killed when its [`Phone`] is dropped; the cluster's
//! teardown also kills everything left in the client namespace.
//!
//! The tone and WAV helpers ([`write_tone`], [`dominant_hz`]) are used to check
//! the recordings the cluster made of the calls.

use std::io::Cursor;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::netns::NsExecutor;

pub use tandem_media::testing::dominant_hz;

/// Is baresip installed (Debian package `baresip-core`)?
pub fn have_baresip() -> bool {
    crate::cmd::on_path("baresip")
}

/// Where baresip 1.0 (Debian 12) keeps its modules.
const MODULE_PATH: &str = "/usr/lib/baresip/modules";

/// What one phone is.
#[derive(Debug, Clone)]
pub struct PhoneSpec {
    /// Short name (directory, log lines).
    pub name: String,
    /// Extension = SIP user = digest user name.
    pub user: String,
    pub password: String,
    /// The registrar/proxy (the VIP), port 5060.
    pub server: Ipv4Addr,
    /// Local address (the client's eth0) and SIP port (UDP and TCP; baresip
    /// also takes `sip_port + 1` for TLS).
    pub local_ip: Ipv4Addr,
    pub sip_port: u16,
    /// First port of a 20-port RTP range of its own.
    pub rtp_base: u16,
    /// ctrl_tcp port on 127.0.0.1 (in the client namespace).
    pub ctrl_port: u16,
    /// Frequency of the sine tone it plays, Hz.
    pub tone_hz: f64,
    /// Registration interval asked for (`regint`), seconds.
    pub regint_s: u32,
}

/// One message read from ctrl_tcp, with its arrival time.
#[derive(Debug, Clone)]
pub struct CtrlMsg {
    pub at: Instant,
    pub json: Value,
}

impl CtrlMsg {
    /// `type` of an event (None for a command response).
    pub fn event(&self) -> Option<&str> {
        if self.json["event"].as_bool() == Some(true) {
            self.json["type"].as_str()
        } else {
            None
        }
    }
}

/// A running baresip; killed on drop.
pub struct Phone {
    pub spec: PhoneSpec,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    journal: Arc<Mutex<Vec<CtrlMsg>>>,
    commands: Option<mpsc::UnboundedSender<String>>,
}

impl Phone {
    /// Write the phone's config under `run_dir/phones/<name>/`, start baresip
    /// in namespace `ns`, and connect to its ctrl_tcp from `client` (an
    /// executor in the same namespace).
    pub async fn start(
        spec: PhoneSpec,
        run_dir: &Path,
        ns: &str,
        client: &NsExecutor,
    ) -> anyhow::Result<Phone> {
        let dir = run_dir.join("phones").join(&spec.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tone = dir.join("tone.wav");
        write_tone(&tone, spec.tone_hz, 60)?;
        std::fs::write(dir.join("config"), config_text(&spec, &tone))
            .with_context(|| format!("writing {}/config", dir.display()))?;
        std::fs::write(dir.join("accounts"), account_line(&spec))
            .with_context(|| format!("writing {}/accounts", dir.display()))?;
        std::fs::write(dir.join("contacts"), "")?;
        let log = dir.join("baresip.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // `ip netns exec` execs baresip: the child's pid is baresip's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "baresip", "-f"])
            .arg(&dir)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| {
                format!("starting baresip in {ns} (installed? chaos-tests/setup.sh installs baresip-core)")
            })?;
        let mut phone = Phone {
            spec,
            dir,
            log,
            child: Some(child),
            journal: Arc::new(Mutex::new(Vec::new())),
            commands: None,
        };
        phone.connect(client).await?;
        Ok(phone)
    }

    /// Open the one ctrl_tcp connection (from the namespace thread, retried
    /// while baresip starts) and start its reader/writer task there.
    async fn connect(&mut self, client: &NsExecutor) -> anyhow::Result<()> {
        let port = self.spec.ctrl_port;
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let (up_tx, up_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let journal = self.journal.clone();
        drop(client.spawn(move || async move {
            let t0 = Instant::now();
            let stream = loop {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => break s,
                    Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                        let _ = up_tx.send(Err(e.to_string()));
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let _ = up_tx.send(Ok(()));
            ctrl_task(stream, rx, journal).await;
        }));
        let up = tokio::time::timeout(Duration::from_secs(15), up_rx).await;
        match up {
            Ok(Ok(Ok(()))) => {
                self.commands = Some(tx);
                Ok(())
            }
            Ok(Ok(Err(e))) => bail!(
                "{}: baresip's ctrl_tcp on 127.0.0.1:{port} not reachable within 10 s: {e}; see {}",
                self.spec.name,
                self.log.display()
            ),
            _ => bail!(
                "{}: the client namespace thread did not connect to ctrl_tcp",
                self.spec.name
            ),
        }
    }

    /// Send a ctrl_tcp command and wait (up to 5 s) for its response; returns `data`.
    pub async fn command(&self, cmd: &str, params: &str) -> anyhow::Result<String> {
        let tx = self
            .commands
            .as_ref()
            .ok_or_else(|| anyhow!("{}: not connected", self.spec.name))?;
        let since = self.journal_len();
        let msg = serde_json::json!({"command": cmd, "params": params, "token": cmd}).to_string();
        tx.send(msg)
            .map_err(|_| anyhow!("{}: the ctrl_tcp connection is closed", self.spec.name))?;
        let t0 = Instant::now();
        loop {
            if let Some(r) = self
                .messages_since(since)
                .into_iter()
                .find(|m| m.json["response"].as_bool() == Some(true))
            {
                if r.json["ok"].as_bool() != Some(true) {
                    bail!(
                        "{}: command {cmd} {params} refused: {}",
                        self.spec.name,
                        r.json
                    );
                }
                return Ok(r.json["data"].as_str().unwrap_or_default().to_string());
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!(
                    "{}: no answer to ctrl_tcp command {cmd} within 5 s; see {}",
                    self.spec.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of ctrl_tcp messages read so far (a mark for [`Phone::messages_since`]).
    pub fn journal_len(&self) -> usize {
        self.journal.lock().map(|j| j.len()).unwrap_or(0)
    }

    /// Messages read since mark `since`.
    pub fn messages_since(&self, since: usize) -> Vec<CtrlMsg> {
        self.journal
            .lock()
            .map(|j| j.get(since..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    /// Events of type `kind` seen since mark `since`.
    pub fn events_since(&self, since: usize, kind: &str) -> Vec<CtrlMsg> {
        self.messages_since(since)
            .into_iter()
            .filter(|m| m.event() == Some(kind))
            .collect()
    }

    /// Wait up to `timeout` for an event of one of `kinds` after mark `since`.
    pub async fn wait_event(
        &self,
        since: usize,
        kinds: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<CtrlMsg> {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self
                .messages_since(since)
                .into_iter()
                .find(|m| m.event().is_some_and(|k| kinds.contains(&k)))
            {
                return Ok(m);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{}: no {kinds:?} event within {timeout:?}; see {}",
                    self.spec.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// REGISTER requests the phone sent, counted in its log: baresip prints one
    /// line per REGISTER answered by the registrar (`… 200 OK … [n binding]`)
    /// or failed; this counts the successful ones.
    pub fn registrations_in_log(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("200 OK") && l.contains("binding"))
            .count()
    }

    /// The last `n` characters of the phone's log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let skip = log.chars().count().saturating_sub(n);
        log.chars().skip(skip).collect()
    }

    /// Is the baresip process still running?
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill baresip (also on drop).
    pub fn stop(&mut self) {
        self.commands.take();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads netstrings (`<len>:<json>,`) from ctrl_tcp into the journal and
/// writes the commands it is given, until either side closes.
async fn ctrl_task(
    stream: tokio::net::TcpStream,
    mut commands: mpsc::UnboundedReceiver<String>,
    journal: Arc<Mutex<Vec<CtrlMsg>>>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                let frame = format!("{}:{},", cmd.len(), cmd);
                if wr.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
            }
            n = rd.read(&mut chunk) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                buf.extend_from_slice(&chunk[..n]);
                let at = Instant::now();
                while let Some((json, used)) = netstring(&buf) {
                    if let Ok(v) = serde_json::from_slice::<Value>(json) {
                        if let Ok(mut j) = journal.lock() {
                            j.push(CtrlMsg { at, json: v });
                        }
                    }
                    buf.drain(..used);
                }
            }
        }
    }
}

/// One complete netstring at the start of `buf`: (payload, bytes used).
fn netstring(buf: &[u8]) -> Option<(&[u8], usize)> {
    let colon = buf.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&buf[..colon]).ok()?.parse().ok()?;
    let end = colon + 1 + len;
    (buf.len() > end && buf[end] == b',').then(|| (&buf[colon + 1..end], end + 1))
}

/// baresip's `config`: SIP on the client's address, ctrl_tcp on loopback,
/// the tone as microphone, G.711 only, no sound card.
fn config_text(s: &PhoneSpec, tone: &Path) -> String {
    format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t{ip}:{sip}\n\
         net_interface\t\teth0\n\
         module_path\t\t{MODULE_PATH}\n\
         module\t\t\tg711.so\n\
         module\t\t\taufile.so\n\
         module\t\t\taubridge.so\n\
         module_app\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         module_app\t\tctrl_tcp.so\n\
         ctrl_tcp_listen\t\t127.0.0.1:{ctrl}\n\
         audio_source\t\taufile,{tone}\n\
         audio_player\t\taubridge,{name}\n\
         audio_alert\t\taubridge,{name}\n\
         rtp_ports\t\t{lo}-{hi}\n",
        ip = s.local_ip,
        sip = s.sip_port,
        ctrl = s.ctrl_port,
        tone = tone.display(),
        name = s.name,
        lo = s.rtp_base,
        hi = s.rtp_base + 19,
    )
}

/// baresip's `accounts` line: digest password, auto-answer, the long
/// registration interval, G.711.
fn account_line(s: &PhoneSpec) -> String {
    format!(
        "<sip:{user}@{server};transport=udp>;auth_pass={pass};answermode=auto;regint={regint};audio_codecs=PCMU,PCMA\n",
        user = s.user,
        server = s.server,
        pass = s.password,
        regint = s.regint_s,
    )
}

/// Counts, with nftables in the phones' namespace, the SIP and RTP packets
/// the phones receive from the VIP and from any other address. A phone behind
/// NAT gets only what comes from the address it sent to (RFC 3581 §4: a
/// response leaves from the address the request was sent to), so everything
/// should come from the VIP. The table lives in the client namespace and goes
/// with it.
pub struct SourceCounter {
    ns: String,
    vip: Ipv4Addr,
}

/// Packets received by the phones: (from the VIP, from elsewhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    pub sip_from_vip: u64,
    pub sip_from_other: u64,
    pub rtp_from_vip: u64,
    pub rtp_from_other: u64,
}

const NFT_TABLE: &str = "tdmphones";

impl SourceCounter {
    /// Install the counters for SIP ports `sip` and RTP port range `rtp`.
    pub fn install(
        ns: &str,
        vip: Ipv4Addr,
        sip: &[u16],
        rtp: (u16, u16),
    ) -> anyhow::Result<SourceCounter> {
        let sip = sip
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let (lo, hi) = rtp;
        let t = NFT_TABLE;
        let script = format!(
            "add table inet {t}; \
             add chain inet {t} input {{ type filter hook input priority 0; policy accept; }}; \
             add rule inet {t} input ip saddr {vip} udp dport {{ {sip} }} counter comment \"sip vip\"; \
             add rule inet {t} input ip saddr != {vip} udp dport {{ {sip} }} counter comment \"sip other\"; \
             add rule inet {t} input ip saddr {vip} udp dport {lo}-{hi} counter comment \"rtp vip\"; \
             add rule inet {t} input ip saddr != {vip} udp dport {lo}-{hi} counter comment \"rtp other\""
        );
        crate::cmd::nft(ns, &script).context("installing the phones' packet counters")?;
        Ok(SourceCounter {
            ns: ns.to_string(),
            vip,
        })
    }

    /// The counters now.
    pub fn read(&self) -> anyhow::Result<Sources> {
        let out = crate::cmd::in_ns(&self.ns, "nft", &["list", "table", "inet", NFT_TABLE])?;
        let mut s = Sources::default();
        for line in out.lines() {
            let packets = line
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok());
            let Some(n) = packets else { continue };
            if line.contains("\"sip vip\"") {
                s.sip_from_vip = n;
            } else if line.contains("\"sip other\"") {
                s.sip_from_other = n;
            } else if line.contains("\"rtp vip\"") {
                s.rtp_from_vip = n;
            } else if line.contains("\"rtp other\"") {
                s.rtp_from_other = n;
            }
        }
        Ok(s)
    }

    /// The VIP the counters compare with.
    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }
}

impl Drop for SourceCounter {
    fn drop(&mut self) {
        let _ = crate::cmd::nft(&self.ns, &format!("delete table inet {NFT_TABLE}"));
    }
}

/// Write a mono 8 kHz 16-bit WAV with a sine tone of `hz` for `secs` seconds.
pub fn write_tone(path: &Path, hz: f64, secs: u32) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("creating {}", path.display()))?;
    for i in 0..8000 * secs {
        let v = (2.0 * std::f64::consts::PI * hz * f64::from(i) / 8000.0).sin() * 12000.0;
        w.write_sample(v as i16)?;
    }
    w.finalize()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A decoded recording: sample rate, channels, interleaved samples.
#[derive(Debug, Clone)]
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

impl Wav {
    /// Parse a 16-bit PCM WAV.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Wav> {
        let r = hound::WavReader::new(Cursor::new(bytes)).context("not a WAV file")?;
        let spec = r.spec();
        if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
            bail!("expected 16-bit PCM, got {spec:?}");
        }
        let samples = r
            .into_samples::<i16>()
            .collect::<Result<Vec<_>, _>>()
            .context("reading the WAV samples")?;
        Ok(Wav {
            rate: spec.sample_rate,
            channels: spec.channels,
            samples,
        })
    }

    /// Length in seconds.
    pub fn secs(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.channels.max(1)) / f64::from(self.rate.max(1))
    }

    /// The strongest frequency of channel `ch` (0-based) on a 50 Hz grid from
    /// 200 to 3400 Hz (the telephone band).
    pub fn dominant_hz(&self, ch: usize) -> f64 {
        let x: Vec<f64> = self
            .samples
            .chunks_exact(self.channels as usize)
            .map(|f| f64::from(f[ch]))
            .collect();
        dominant_hz(&x, f64::from(self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstrings_are_split() {
        let buf = b"5:hello,3:abc,2:x";
        let (a, n) = netstring(buf).unwrap();
        assert_eq!((a, n), (&b"hello"[..], 8));
        let (b, m) = netstring(&buf[n..]).unwrap();
        assert_eq!((b, m), (&b"abc"[..], 6));
        assert!(netstring(&buf[n + m..]).is_none());
        assert!(netstring(b"3:abcd").is_none());
    }

    #[test]
    fn a_written_tone_is_found_again() {
        let dir = std::env::temp_dir().join(format!("chaos-tone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.wav");
        write_tone(&p, 600.0, 2).unwrap();
        let wav = Wav::parse(&std::fs::read(&p).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((wav.rate, wav.channels), (8000, 1));
        assert!((wav.secs() - 2.0).abs() < 0.01);
        assert_eq!(wav.dominant_hz(0), 600.0);
    }
}
