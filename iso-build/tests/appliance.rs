//! CI checks of the appliance layer and the installer's output (fast, no VM):
//! the firewall rules parse with `nft -c`, the node config the installer writes
//! is accepted by the real `tandem` binary (it starts and answers /health), and
//! the `tandem-iso validate-answer` command names key and fix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn nftables_rules_parse_and_open_exactly_tandem_ports() {
    let f = root().join("appliance/rootfs/etc/nftables.conf");
    let text = std::fs::read_to_string(&f).unwrap();
    for port in [
        "tcp dport 8080",
        "tcp dport 7000",
        "udp dport 5060",
        "tcp dport 5060",
        "udp dport 10000-20000",
    ] {
        assert!(text.contains(port), "{port} missing");
    }
    assert_eq!(
        text.matches(" dport ").count(),
        6,
        "only tandem's ports (and DHCP replies) are opened"
    );
    assert!(text.contains("policy drop"));
    let nft = Command::new("nft").arg("-c").arg("-f").arg(&f).output();
    match nft {
        Err(_) => {
            eprintln!("skipped nft -c: nft not installed (iso-build/setup.sh --ci installs it)")
        }
        Ok(o)
            if !o.status.success()
                && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted") =>
        {
            eprintln!("skipped nft -c: needs root")
        }
        Ok(o) => assert!(
            o.status.success(),
            "nft -c: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

#[test]
fn units_have_restart_hardening_and_vip_stop_step() {
    let u =
        std::fs::read_to_string(root().join("appliance/rootfs/etc/systemd/system/tandem.service"))
            .unwrap();
    for k in [
        "Restart=always",
        "ExecStopPost=+/usr/local/bin/tandem-iso vip-release",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ConditionPathExists=/var/lib/tandem/.firstboot-done",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
    ] {
        assert!(u.contains(k), "tandem.service lacks {k}");
    }
    let fb = std::fs::read_to_string(
        root().join("appliance/rootfs/etc/systemd/system/tandem-firstboot.service"),
    )
    .unwrap();
    assert!(
        fb.contains("Before=tandem.service")
            && fb.contains("ConditionPathExists=!/var/lib/tandem/.firstboot-done")
    );
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        // Syntax check of every unit (missing binaries on the build host are not errors we care about).
        let dir = root().join("appliance/rootfs/etc/systemd/system");
        for f in [
            "tandem.service",
            "tandem-firstboot.service",
            "tandem-settings.service",
            "tandem-installer.service",
        ] {
            let o = Command::new("systemd-analyze")
                .arg("verify")
                .arg(dir.join(f))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            for l in err.lines() {
                assert!(
                    !(l.contains("Unknown key")
                        || l.contains("Unknown section")
                        || l.contains("Failed to parse")),
                    "{f}: {l}"
                );
            }
        }
    }
}

fn tandem_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    ["debug/tandem", "release/tandem"]
        .iter()
        .map(|p| target.join(p))
        .find(|p| p.exists())
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn installer_node_config_is_accepted_by_tandem() {
    let Some(tandem) = tandem_bin() else {
        eprintln!("skipped: no tandem binary (cargo build -p tandem, or TANDEM_BIN=...)");
        return;
    };
    let (api, raft) = (free_port(), free_port());
    let answer = format!(
        "[disk]\npath = \"/dev/vda\"\n[system]\nhostname = \"pbx-a\"\n[[network.interface]]\nmac = \"52:54:00:00:00:01\"\ndhcp = true\n\
         [node]\nid = 1\n[cluster]\nmode = \"init\"\nlisten = \"127.0.0.1:{raft}\"\n[vip]\naddress = \"198.18.5.100\"\n\
         [api]\nlisten = \"127.0.0.1:{api}\"\nadmin_token = \"0123456789abcdef0123\"\n"
    );
    let a = tandem_iso::answer::parse(&answer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = tandem_iso::render::node_config(&a)
        .replace(tandem_iso::render::DATA_DIR, data.to_str().unwrap());
    let cfg_path = dir.path().join("tandem.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let init = Command::new(&tandem)
        .arg("init")
        .arg("--config")
        .arg(&cfg_path)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "tandem init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut child = Kill(
        Command::new(&tandem)
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", api)) {
            use std::io::{Read, Write};
            let _ = write!(
                s,
                "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            if b.starts_with("HTTP/1.1 200") && b.contains("\"node_id\":1") {
                break;
            }
        }
        if let Some(st) = child.0.try_wait().unwrap() {
            let mut e = String::new();
            use std::io::Read;
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut e)
                .unwrap();
            panic!("tandem run exited ({st}) with the installer's config:\n{e}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no /health within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The VIP stop step reads the same file.
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
        .arg("vip-release")
        .arg("--dry-run")
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("198.18.5.100"), "{text}");
}

#[test]
fn validate_answer_command_reports_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.toml");
    std::fs::write(&f, "[system]\nhostname = \"a\"\n[[network.interface]]\nmac = \"52:54:00:00:00:01\"\naddress = \"10.0.0.300/24\"\n[node]\nid = 1\n[cluster]\nmode = \"init\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
        .arg("validate-answer")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("disk: missing"), "{text}");
    assert!(text.contains("fix: add a [disk] section"), "{text}");
    assert!(
        text.contains("network.interface[0].address: `10.0.0.300/24`"),
        "{text}"
    );
    assert!(text.contains("nothing was written to any disk"), "{text}");
    std::fs::write(&f, "[disk]\npath = \"/dev/sda\"\nsize = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
        .arg("validate-answer")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("disk.size: unknown key (line 3)"), "{text}");
    assert!(
        text.contains("allowed here: one of `path`, `min_size_gb`, `max_size_gb`, `model`"),
        "{text}"
    );
    let ex = root().join("iso-build/examples/answer-node1.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
        .arg("validate-answer")
        .arg(&ex)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
