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
    nft_check(&f);
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
    // The installed node serves HTTPS with the certificate the cluster CA issued at
    // init: curl verifies it against ca.pem and the name 127.0.0.1.
    let ca = data.join("tls").join("ca.pem");
    let t = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "3", "--cacert"])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{api}/health"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"node_id\":1") {
            break;
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
    // Plain HTTP gets nothing; the operator's CLI, given the same config, connects.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "3"])
        .arg(format!("http://127.0.0.1:{api}/health"))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("node_id"),
        "plain HTTP answered"
    );
    let status = Command::new(&tandem)
        .args(["status", "--json", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "tandem status over HTTPS: {}",
        String::from_utf8_lossy(&status.stderr)
    );
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

const FW_ANSWER: &str = "[disk]\npath = \"/dev/vda\"\n[system]\nhostname = \"pbx-a\"\n\
    [[network.interface]]\nmac = \"52:54:00:00:00:01\"\naddress = \"198.18.7.1/24\"\n\
    [node]\nid = 1\n[cluster]\nmode = \"init\"\n";

/// `nft -c -f` on a file: Ok(false) when nft cannot be run here (not installed,
/// not root), with the reason printed.
fn nft_check(f: &Path) -> bool {
    match Command::new("nft").arg("-c").arg("-f").arg(f).output() {
        Err(_) => {
            eprintln!("skipped nft -c: nft not installed (iso-build/setup.sh --ci installs it)");
            false
        }
        Ok(o)
            if !o.status.success()
                && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted") =>
        {
            eprintln!("skipped nft -c: needs root");
            false
        }
        Ok(o) => {
            assert!(
                o.status.success(),
                "nft -c {}: {}\n{}",
                f.display(),
                String::from_utf8_lossy(&o.stderr),
                std::fs::read_to_string(f).unwrap()
            );
            true
        }
    }
}

#[test]
fn rendered_firewall_parses_for_default_given_and_open_allow_lists() {
    let dir = tempfile::tempdir().unwrap();
    for (i, extra) in [
        "",
        "[firewall]\napi_allow = [\"198.18.9.0/24\", \"fd00::/64\"]\npeer_allow = [\"198.18.7.2\"]\n",
        "[firewall]\napi_allow = [\"any\"]\npeer_allow = [\"fd00::7\"]\n",
    ]
    .iter()
    .enumerate()
    {
        let a = tandem_iso::answer::parse(&format!("{FW_ANSWER}{extra}")).unwrap();
        let text = tandem_iso::render::nftables(&a);
        assert!(text.contains("policy drop"), "{text}");
        // SIP and RTP stay open to every source; API and peer only by the lists.
        assert!(text.contains("\t\tudp dport 5060 accept"), "{text}");
        assert!(text.contains("\t\tudp dport 10000-20000 accept"), "{text}");
        match i {
            0 => {
                assert!(text.contains("elements = { 198.18.7.0/24 }"), "{text}");
                assert!(text.contains("ip saddr @api_allow tcp dport 8080 accept"));
                assert!(text.contains("ip saddr @peer_allow tcp dport 7000 accept"));
                assert!(!text.contains("\t\ttcp dport 8080 accept"), "{text}");
            }
            1 => {
                assert!(text.contains("elements = { fd00::/64 }"), "{text}");
                assert!(text.contains("elements = { 198.18.7.2/32 }"), "{text}");
            }
            _ => {
                assert!(text.contains("\t\ttcp dport 8080 accept"), "{text}");
                assert!(text.contains("ip6 saddr @peer_allow6 tcp dport 7000"));
            }
        }
        let f = dir.path().join(format!("nftables-{i}.conf"));
        std::fs::write(&f, &text).unwrap();
        if !nft_check(&f) {
            return;
        }
    }
}

/// Network namespaces created by a test, deleted on drop (also on failure).
struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

/// Does a TCP connection from `src` (in namespace `ns`) to `dst:port` complete?
fn connects(ns: &str, src: &str, dst: &str, port: u16) -> bool {
    let code = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(1.5)\ns.bind(('{src}',0))\n\
         try:\n  s.connect(('{dst}',{port}))\n  print('open')\nexcept OSError:\n  print('blocked')\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &code])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "open"
}

/// The installed firewall for real: the rendered ruleset loaded in a namespace,
/// reached from allowed and other sources in a second one.
#[test]
fn rendered_firewall_admits_only_the_allowed_sources_to_api_and_peer_ports() {
    let pid = std::process::id();
    let (srv, cli) = (format!("tandem-fw-s{pid}"), format!("tandem-fw-c{pid}"));
    let out = ip(&["netns", "add", &srv]);
    if !out.status.success() {
        eprintln!(
            "skipped: cannot create a network namespace ({}); run as root",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let mut guard = Namespaces(vec![srv.clone()]);
    assert!(ip(&["netns", "add", &cli]).status.success());
    guard.0.push(cli.clone());
    let run = |args: &[&str]| {
        let o = ip(args);
        assert!(
            o.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "-n", &srv, "link", "add", "fw0", "type", "veth", "peer", "name", "fw1", "netns", &cli,
    ]);
    run(&["-n", &srv, "addr", "add", "198.18.7.1/24", "dev", "fw0"]);
    run(&["-n", &cli, "addr", "add", "198.18.7.2/24", "dev", "fw1"]);
    run(&["-n", &cli, "addr", "add", "198.18.7.3/24", "dev", "fw1"]);
    for (ns, dev) in [(&srv, "fw0"), (&cli, "fw1"), (&srv, "lo"), (&cli, "lo")] {
        run(&["-n", ns, "link", "set", dev, "up"]);
    }
    let a = tandem_iso::answer::parse(&format!(
        "{FW_ANSWER}[firewall]\napi_allow = [\"198.18.7.2\"]\npeer_allow = [\"198.18.7.0/24\"]\n"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("nftables.conf");
    std::fs::write(&f, tandem_iso::render::nftables(&a)).unwrap();
    let load = Command::new("ip")
        .args(["netns", "exec", &srv, "nft", "-f"])
        .arg(&f)
        .output();
    match load {
        Err(_) => {
            eprintln!("skipped: nft not installed (iso-build/setup.sh --ci installs it)");
            return;
        }
        Ok(o) => assert!(
            o.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
    // Listeners on the API, peer and SIP ports of the server namespace.
    let listen = "import socket,select,time\nls=[]\nfor p in (8080,7000,5060):\n  s=socket.socket()\n  \
        s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n  s.bind(('0.0.0.0',p))\n  s.listen(64)\n  ls.append(s)\n\
        print('ready',flush=True)\nend=time.time()+60\nwhile time.time()<end:\n  r,_,_=select.select(ls,[],[],0.5)\n  \
        for s in r:\n    c,_=s.accept()\n    c.close()\n";
    let mut server = Kill(
        Command::new("ip")
            .args(["netns", "exec", &srv, "python3", "-c", listen])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let (allowed, other, node) = ("198.18.7.2", "198.18.7.3", "198.18.7.1");
    assert!(
        connects(&cli, allowed, node, 8080),
        "API from the allowed host"
    );
    assert!(!connects(&cli, other, node, 8080), "API from another host");
    assert!(
        connects(&cli, allowed, node, 7000),
        "peer port from the network"
    );
    assert!(
        connects(&cli, other, node, 7000),
        "peer port from the network"
    );
    assert!(connects(&cli, other, node, 5060), "SIP from anywhere");
    // An operator widens the list live, as docs/security.md says.
    let add = Command::new("ip")
        .args([
            "netns",
            "exec",
            &srv,
            "nft",
            "add",
            "element",
            "inet",
            "tandem",
            "api_allow",
            "{",
            "198.18.7.3",
            "}",
        ])
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(
        connects(&cli, other, node, 8080),
        "API after nft add element"
    );
}
