//! Interop with a real SIP user agent (baresip): registration with digest auth,
//! a call between two registered phones through the B2BUA and the RTP relay, a
//! recorded tone, the CDR; and a wrong password that gets no binding.
//!
//! Needs `baresip` (Debian package `baresip-core`, installed by scripts/setup.sh);
//! skipped with a message when it is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_media::backend::Disposition;
use tandem_media::digest::Algorithm;
use tandem_media::relay::{Relay, RelayConfig};
use tandem_media::service::{Service, ServiceConfig};
use tandem_media::testing::MemoryBackend;

const CALLER_TONE_HZ: f64 = 1000.0;
const CALLEE_TONE_HZ: f64 = 600.0;

fn have_baresip() -> bool {
    Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A port free for both UDP and TCP on 127.0.0.1 that this test process has not handed
/// out before. baresip binds it later, so a port given twice (its SIP port equal to its
/// ctrl_tcp port, or to the other phone's) made ctrl_tcp fail to listen ("connection
/// refused"); the kernel may well offer the port just released again.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..100 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        if given.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!("no free UDP+TCP port on 127.0.0.1 in 100 tries");
}

/// A 16-bit mono 8 kHz WAV with a sine tone.
fn write_tone(path: &Path, hz: f64, secs: u32) {
    let n = 8000 * secs;
    let mut data = Vec::with_capacity(n as usize * 2);
    for i in 0..n {
        let v = (2.0 * std::f64::consts::PI * hz * f64::from(i) / 8000.0).sin() * 12000.0;
        data.extend_from_slice(&(v as i16).to_le_bytes());
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(b"RIFF").unwrap();
    f.write_all(&(36 + data.len() as u32).to_le_bytes())
        .unwrap();
    f.write_all(b"WAVEfmt ").unwrap();
    f.write_all(&16u32.to_le_bytes()).unwrap();
    f.write_all(&1u16.to_le_bytes()).unwrap(); // PCM
    f.write_all(&1u16.to_le_bytes()).unwrap(); // mono
    f.write_all(&8000u32.to_le_bytes()).unwrap();
    f.write_all(&16000u32.to_le_bytes()).unwrap();
    f.write_all(&2u16.to_le_bytes()).unwrap();
    f.write_all(&16u16.to_le_bytes()).unwrap();
    f.write_all(b"data").unwrap();
    f.write_all(&(data.len() as u32).to_le_bytes()).unwrap();
    f.write_all(&data).unwrap();
}

/// Read a 16-bit PCM WAV: (sample rate, channels, interleaved samples).
fn read_wav(path: &Path) -> (u32, u16, Vec<i16>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[0..4], b"RIFF");
    assert_eq!(&b[8..12], b"WAVE");
    let (mut rate, mut channels, mut pos) = (0u32, 0u16, 12usize);
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = &b[pos + 8..(pos + 8 + len).min(b.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes(body[2..4].try_into().unwrap());
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            assert_eq!(u16::from_le_bytes(body[14..16].try_into().unwrap()), 16);
        } else if id == b"data" {
            let s = body
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (rate, channels, s);
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// The strongest frequency of a channel on a 50 Hz grid from 200 to 3400 Hz.
fn dominant_hz(samples: &[i16], channels: u16, ch: usize, rate: u32) -> f64 {
    let x: Vec<f64> = samples
        .chunks_exact(channels as usize)
        .map(|f| f64::from(f[ch]))
        .collect();
    assert!(
        x.len() > rate as usize,
        "recording too short: {} samples",
        x.len()
    );
    tandem_media::testing::dominant_hz(&x, f64::from(rate))
}

/// One headless baresip process with its own config dir; killed on drop.
struct Phone {
    child: Child,
    ctrl: u16,
    dir: PathBuf,
}

impl Phone {
    fn start(
        dir: &Path,
        name: &str,
        user: &str,
        pass: &str,
        server: SocketAddr,
        tone: &Path,
    ) -> Phone {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let sip_port = free_port();
        let ctrl = free_port();
        let config = format!(
            "poll_method\t\tepoll\n\
sip_listen\t\t127.0.0.1:{sip_port}\n\
module_path\t\t/usr/lib/baresip/modules\n\
module\t\t\tg711.so\n\
module\t\t\taufile.so\n\
module\t\t\taubridge.so\n\
module_app\t\taccount.so\n\
module_app\t\tmenu.so\n\
module_app\t\tctrl_tcp.so\n\
ctrl_tcp_listen\t\t127.0.0.1:{ctrl}\n\
audio_source\t\taufile,{}\n\
audio_player\t\taubridge,{name}\n\
audio_alert\t\taubridge,{name}\n\
rtp_ports\t\t{}-{}\n\
net_interface\t\t127.0.0.1\n",
            tone.display(),
            20000 + (sip_port % 500) * 20,
            20000 + (sip_port % 500) * 20 + 18,
        );
        std::fs::write(dir.join("config"), config).unwrap();
        let accounts = format!(
            "<sip:{user}@{server};transport=udp>;auth_pass={pass};answermode=auto;regint=600;audio_codecs=PCMU,PCMA\n"
        );
        std::fs::write(dir.join("accounts"), accounts).unwrap();
        std::fs::write(dir.join("contacts"), "").unwrap();
        let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&dir)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start baresip");
        Phone { child, ctrl, dir }
    }

    /// Send a command over ctrl_tcp (netstring-framed JSON).
    fn command(&self, cmd: &str, params: &str) {
        let json = format!("{{\"command\":\"{cmd}\",\"params\":\"{params}\",\"token\":\"t\"}}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(("127.0.0.1", self.ctrl)) {
                Ok(mut s) => {
                    s.write_all(format!("{}:{},", json.len(), json).as_bytes())
                        .unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("ctrl_tcp of {}: {e}", self.dir.display()),
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("--- baresip log of {}:\n{tail}", self.dir.display());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_register_call_record_and_wrong_password() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    if !have_baresip() {
        eprintln!("SKIPPED: baresip not installed (scripts/setup.sh installs baresip-core)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::new());
    backend.add_user("1001", "secret-a");
    backend.add_user("1002", "secret-b");
    backend.add_user("1003", "secret-c");
    let recordings = tmp.path().join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    let relay = Relay::start(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertised_ip: "127.0.0.1".parse().unwrap(),
        port_low: 31000,
        port_high: 31999,
        recordings_dir: recordings.clone(),
    })
    .await
    .unwrap();
    let mut cfg = ServiceConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    // baresip 1.0 (libre 1.1) fails on any challenge with an algorithm it does not know.
    cfg.digest_algorithms = vec![Algorithm::Md5];
    let svc = Service::start(cfg, backend.clone(), relay).await.unwrap();
    let server = svc.local_addr();

    let tone_a = tmp.path().join("tone_a.wav");
    let tone_b = tmp.path().join("tone_b.wav");
    write_tone(&tone_a, CALLER_TONE_HZ, 30);
    write_tone(&tone_b, CALLEE_TONE_HZ, 30);

    let alice = Phone::start(tmp.path(), "alice", "1001", "secret-a", server, &tone_a);
    let bob = Phone::start(tmp.path(), "bob", "1002", "secret-b", server, &tone_b);
    let mallory = Phone::start(
        tmp.path(),
        "mallory",
        "1003",
        "not-the-password",
        server,
        &tone_a,
    );

    // Both register with digest auth (RFC 3261 §10, §22).
    let b2 = backend.clone();
    wait_for("two registrations", Duration::from_secs(15), || {
        let b = b2.stored_bindings();
        b.iter().any(|x| x.aor == "1001") && b.iter().any(|x| x.aor == "1002")
    })
    .await;
    // The wrong password is refused (403) and leaves no binding.
    let svc_ref = &svc;
    wait_for("auth failure of 1003", Duration::from_secs(10), || {
        svc_ref.status().auth_failures_total > 0
    })
    .await;
    assert!(
        !backend.stored_bindings().iter().any(|b| b.aor == "1003"),
        "wrong password must not register"
    );
    assert_eq!(svc.status().registrations.len(), 2);

    // Alice calls Bob, who answers automatically.
    let mut ended = backend.subscribe();
    alice.command("dial", &format!("sip:1002@{server}"));
    wait_for("answer", Duration::from_secs(15), || {
        svc_ref.status().call_answers_total == 1
    })
    .await;
    let answered_at = Instant::now();
    assert_eq!(svc.status().calls.len(), 1);
    assert_eq!(svc.status().calls[0].state, "answered");
    tokio::time::sleep(Duration::from_secs(4)).await;
    alice.command("hangup", "");
    let hung_up_at = Instant::now();
    let record = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("CDR within 10 s")
        .unwrap();
    assert_eq!(record.caller, "1001");
    assert_eq!(record.callee, "1002");
    assert_eq!(record.disposition, Disposition::Answered);
    let expected = (hung_up_at - answered_at).as_secs_f64();
    assert!(
        (record.billsec() as f64 - expected).abs() <= 1.0,
        "billsec {} vs measured {expected:.1}",
        record.billsec()
    );
    assert_eq!(record.recording_id, Some(record.id.to_string()));
    wait_for("call cleared", Duration::from_secs(5), || {
        svc_ref.status().calls.is_empty()
    })
    .await;

    // The recording: caller's tone on channel 1, callee's on channel 2.
    let calls = backend.calls();
    let (_, recording) = calls.last().unwrap();
    let recording = recording.as_ref().expect("answered call has a recording");
    assert_eq!(recording.codec, "PCMU");
    let (rate, channels, samples) = read_wav(&recording.path);
    assert_eq!((rate, channels), (8000, 2));
    let secs = samples.len() as f64 / f64::from(channels) / f64::from(rate);
    assert!(
        (secs - expected).abs() <= 1.5,
        "recording {secs:.1} s vs call {expected:.1} s"
    );
    assert_eq!(dominant_hz(&samples, channels, 0, rate), CALLER_TONE_HZ);
    assert_eq!(dominant_hz(&samples, channels, 1, rate), CALLEE_TONE_HZ);

    drop(mallory);
    if std::env::var("INTEROP_LOGS").is_ok() {
        eprintln!("--- alice\n{}\n--- bob\n{}", alice.log(), bob.log());
    }
    svc.shutdown().await;
}
