//! Full ISO tests in qemu (on demand; see docs/install.md):
//!
//! ```sh
//! TANDEM_ISO_VM=1 cargo test -p tandem-iso --release --test vm -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! Builds the ISO (or takes `TANDEM_ISO=<path>`), then for each case boots it in
//! qemu with a blank qcow2 disk and an answer file, lets it install unattended,
//! boots the installed disk and checks `/health` through a user-mode network
//! port forwarded to 127.0.0.1. KVM is probed with a short kernel boot and TCG
//! used when it does not work; the accelerator is printed. Every qemu process
//! and temporary file is removed when a test ends, also on failure.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn enabled() -> bool {
    if std::env::var_os("TANDEM_ISO_VM").is_none() {
        eprintln!("skipped: set TANDEM_ISO_VM=1 to run the qemu ISO tests (docs/install.md)");
        return false;
    }
    true
}

/// Kills the VMs and removes the temporary folder on drop.
struct Lab {
    dir: tempfile::TempDir,
    vms: Vec<Child>,
}

impl Lab {
    fn new() -> Self {
        Lab {
            dir: tempfile::Builder::new()
                .prefix("tandem-iso-vm")
                .tempdir_in(work_root())
                .expect("tempdir"),
            vms: Vec::new(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.vms {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Keep the serial logs for a look after the run (the rest is removed).
        let keep = work_root().join("logs");
        let _ = fs::create_dir_all(&keep);
        if let Ok(rd) = fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
        }
    }
}

fn work_root() -> PathBuf {
    let d = std::env::var_os("TANDEM_ISO_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tandem-iso-test"));
    fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ISO under test: `TANDEM_ISO`, or built once per test run.
fn iso() -> &'static PathBuf {
    static ISO: OnceLock<PathBuf> = OnceLock::new();
    ISO.get_or_init(|| {
        if let Some(p) = std::env::var_os("TANDEM_ISO") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let tandem = std::env::var_os("TANDEM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("release/tandem"));
        if !tandem.exists() {
            run(Command::new("cargo")
                .args(["build", "--release", "-p", "tandem"])
                .current_dir(&root));
        }
        let out = work_root().join("tandem.iso");
        let t = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
            .arg("build")
            .arg("--out")
            .arg(&out)
            .arg("--tandem")
            .arg(&tandem)
            .arg("--appliance")
            .arg(root.join("appliance"))
            .arg("--work-dir")
            .arg(work_root().join("build"))
            .env(
                "SOURCE_DATE_EPOCH",
                std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "1763900000".into()),
            )
            .status()
            .unwrap();
        assert!(st.success(), "ISO build failed");
        eprintln!(
            "ISO built in {:.0} s: {} MB",
            t.elapsed().as_secs_f64(),
            fs::metadata(&out).unwrap().len() / 1_000_000
        );
        out
    })
}

/// `kvm` if a short KVM boot prints the kernel banner, else `tcg`.
fn accel() -> &'static str {
    static A: OnceLock<&'static str> = OnceLock::new();
    A.get_or_init(|| {
        if let Ok(a) = std::env::var("TANDEM_ISO_ACCEL") {
            return if a == "kvm" { "kvm" } else { "tcg" };
        }
        if !Path::new("/dev/kvm").exists() {
            eprintln!("accel: tcg (no /dev/kvm)");
            return "tcg";
        }
        let lab = Lab::new();
        let k = lab.path("vmlinuz");
        run(Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(iso())
            .args(["-extract", "/live/vmlinuz"])
            .arg(&k));
        let log = lab.path("probe.log");
        let mut c = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "kvm",
                "-m",
                "512",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&k)
            .args(["-append", "console=ttyS0 panic=-1"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let mut ok = false;
        while t.elapsed() < Duration::from_secs(20) {
            if fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Linux version")
            {
                ok = true;
                break;
            }
            if c.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = c.kill();
        let _ = c.wait();
        let a = if ok { "kvm" } else { "tcg" };
        eprintln!(
            "accel: {a} (KVM probe {})",
            if ok {
                "booted a kernel"
            } else {
                "showed no kernel output in 20 s"
            }
        );
        a
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Firmware {
    Bios,
    Uefi,
}

struct Vm<'a> {
    name: &'a str,
    fw: Firmware,
    disk: PathBuf,
    cdrom: Option<PathBuf>,
    extra_disk: Option<PathBuf>,
    api_port: u16,
    mac: &'a str,
    /// (local, remote) UDP ports of the cluster link and the cluster NIC MAC.
    link: Option<(u16, u16, &'a str)>,
    /// Attach the ISO as a hard disk (USB stick) instead of a CD.
    iso_as_disk: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(lab: &mut Lab, vm: &Vm, serial: &Path) -> usize {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "q35",
        "-m",
        "1536",
        "-smp",
        "2",
        "-accel",
        accel(),
    ])
    .args(["-display", "none", "-monitor", "none", "-no-reboot"])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()));
    if vm.fw == Firmware::Uefi {
        let vars = lab.path(&format!("{}-vars.fd", vm.name));
        if !vars.exists() {
            fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        }
        c.args([
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
    }
    c.arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", vm.disk.display()));
    if let Some(x) = &vm.extra_disk {
        c.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            x.display()
        ));
    }
    if let Some(iso) = &vm.cdrom {
        if vm.iso_as_disk {
            // As written raw to a USB stick: a USB disk (no El Torito), chosen
            // in the firmware's boot menu (bootindex).
            c.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=usb,readonly=on",
                    iso.display()
                ))
                .args([
                    "-device",
                    "qemu-xhci",
                    "-device",
                    "usb-storage,drive=usb,bootindex=0",
                ]);
        } else {
            c.arg("-drive")
                .arg(format!("file={},media=cdrom,readonly=on", iso.display()));
        }
    }
    c.arg("-netdev")
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:8080",
            vm.api_port
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={}", vm.mac));
    if let Some((l, r, mac)) = vm.link {
        c.arg("-netdev")
            .arg(format!(
                "socket,id=n1,udp=127.0.0.1:{r},localaddr=127.0.0.1:{l}"
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n1,mac={mac}"));
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    lab.vms.push(
        c.spawn()
            .expect("qemu-system-x86_64 (iso-build/setup.sh installs it)"),
    );
    lab.vms.len() - 1
}

fn serial_text(p: &Path) -> String {
    String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until the VM's qemu exits (poweroff).
fn wait_exit(lab: &mut Lab, idx: usize, serial: &Path, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(st) = lab.vms[idx].try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = lab.vms[idx].stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(
                st.success(),
                "qemu failed: {err}\n{}",
                tail(&serial_text(serial))
            );
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!(
        "VM did not power off within {limit:?}; serial:\n{}",
        tail(&serial_text(serial))
    );
}

fn wait_serial(lab: &mut Lab, idx: usize, serial: &Path, needle: &str, limit: Duration) -> String {
    let t = Instant::now();
    while t.elapsed() < limit {
        let s = serial_text(serial);
        if s.contains(needle) {
            return s;
        }
        if lab.vms[idx].try_wait().unwrap().is_some() {
            panic!("VM exited before `{needle}`:\n{}", tail(&s));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!(
        "no `{needle}` on the serial console within {limit:?}:\n{}",
        tail(&serial_text(serial))
    );
}

/// Minimal HTTP/1.1 GET on 127.0.0.1; (status, body).
/// GET over HTTPS (the appliance default) with curl: (status, body). The test does
/// not check the certificate (the cluster CA is inside the VM); the API's TLS
/// itself is covered by node/tests/cluster/https.rs.
fn http_get(port: u16, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(b) = bearer {
        cmd.arg("-H").arg(format!("Authorization: Bearer {b}"));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let status: u16 = code.trim().parse().ok()?;
    (status != 0).then(|| (status, body.to_string()))
}

fn wait_health(lab: &mut Lab, idx: usize, port: u16, serial: &Path, limit: Duration) -> String {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some((200, body)) = http_get(port, "/health", None) {
            return body;
        }
        if lab.vms[idx].try_wait().unwrap().is_some() {
            panic!("installed VM exited:\n{}", tail(&serial_text(serial)));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!(
        "/health did not answer within {limit:?}:\n{}",
        tail(&serial_text(serial))
    );
}

fn blank_disk(lab: &Lab, name: &str) -> PathBuf {
    let p = lab.path(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("8G"));
    p
}

fn inject(lab: &Lab, name: &str, answer: &str) -> PathBuf {
    let a = lab.path(&format!("{name}.toml"));
    fs::write(&a, answer).unwrap();
    let out = lab.path(&format!("{name}.iso"));
    run(Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
        .arg("inject")
        .arg("--iso")
        .arg(iso())
        .arg("--answer")
        .arg(&a)
        .arg("--out")
        .arg(&out));
    out
}

const ADMIN: &str = "test-admin-token-0123456789abcdef";

fn single_answer(mac: &str) -> String {
    format!(
        r#"[disk]
path = "/dev/vda"
[system]
hostname = "tandem-test"
timezone = "Europe/Berlin"
finish = "poweroff"
[[network.interface]]
mac = "{mac}"
dhcp = true
[node]
id = 1
[cluster]
mode = "init"
listen = "0.0.0.0:7000"
[api]
admin_token = "{ADMIN}"
"#
    )
}

/// Install from the ISO, then boot the disk; returns (install s, first boot to healthy s).
fn install_and_boot(fw: Firmware) -> (f64, f64) {
    let mut lab = Lab::new();
    let mac = "52:54:00:12:34:01";
    let cd = inject(&lab, "single", &single_answer(mac));
    let disk = blank_disk(&lab, "disk.qcow2");
    let port = free_port();
    let mut vm = Vm {
        name: "n1",
        fw,
        disk,
        cdrom: Some(cd),
        extra_disk: None,
        api_port: port,
        mac,
        link: None,
        iso_as_disk: false,
    };
    let s1 = lab.path("install.log");
    let t = Instant::now();
    let i = start(&mut lab, &vm, &s1);
    wait_exit(&mut lab, i, &s1, Duration::from_secs(40 * 60));
    let install = t.elapsed().as_secs_f64();
    let log = serial_text(&s1);
    assert!(
        log.contains("tandem installed on /dev/vda"),
        "{}",
        tail(&log)
    );
    assert!(
        log.contains("[3/8] partition /dev/vda"),
        "progress lines on serial"
    );
    vm.cdrom = None;
    let s2 = lab.path("boot.log");
    let t = Instant::now();
    let j = start(&mut lab, &vm, &s2);
    let body = wait_health(&mut lab, j, port, &s2, Duration::from_secs(20 * 60));
    let boot = t.elapsed().as_secs_f64();
    assert!(body.contains("\"node_id\":1"), "{body}");
    let boot_log = serial_text(&s2);
    assert!(
        boot_log.contains("TANDEM-JOIN-TOKEN "),
        "first boot prints the join token:\n{}",
        tail(&boot_log)
    );
    let (st, members) = http_get(port, "/api/v1/cluster", Some(ADMIN)).expect("cluster");
    assert_eq!(st, 200, "{members}");
    eprintln!(
        "{} install {:.0} s + first boot to healthy {:.0} s = {:.0} s (accel {}); /health {body}",
        if fw == Firmware::Bios { "BIOS" } else { "UEFI" },
        install,
        boot,
        install + boot,
        accel()
    );
    (install, boot)
}

#[test]
#[ignore]
fn bios_install_boots_to_healthy() {
    if !enabled() {
        return;
    }
    install_and_boot(Firmware::Bios);
}

#[test]
#[ignore]
fn uefi_install_boots_to_healthy() {
    if !enabled() {
        return;
    }
    install_and_boot(Firmware::Uefi);
}

/// A small ISO 9660 image labelled TANDEM-ANSWER holding `answer.toml`.
fn answer_stick(lab: &Lab, name: &str, answer: &str) -> PathBuf {
    let d = lab.path(&format!("{name}-dir"));
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("answer.toml"), answer).unwrap();
    let img = lab.path(&format!("{name}.img"));
    run(Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-V",
            "TANDEM-ANSWER",
            "-o",
        ])
        .arg(&img)
        .arg(&d));
    img
}

fn bad_answer_case(answer: &str, expect: &[&str]) {
    let mut lab = Lab::new();
    let stick = answer_stick(&lab, "bad", answer);
    let disk = blank_disk(&lab, "disk.qcow2");
    let blank = blank_disk(&lab, "blank.qcow2");
    let vm = Vm {
        name: "bad",
        fw: Firmware::Bios,
        disk: disk.clone(),
        cdrom: Some(iso().clone()),
        extra_disk: Some(stick),
        api_port: free_port(),
        mac: "52:54:00:12:34:09",
        link: None,
        iso_as_disk: false,
    };
    let s = lab.path("serial.log");
    let i = start(&mut lab, &vm, &s);
    let log = wait_serial(
        &mut lab,
        i,
        &s,
        "No disk was touched",
        Duration::from_secs(20 * 60),
    );
    for e in expect {
        assert!(
            log.contains(e),
            "`{e}` not on the serial console:\n{}",
            tail(&log)
        );
    }
    assert!(log.contains("INSTALLATION STOPPED"), "{}", tail(&log));
    let _ = lab.vms[i].kill();
    let _ = lab.vms[i].wait();
    // The target disk is still blank.
    run(Command::new("qemu-img")
        .arg("compare")
        .arg("-q")
        .arg(&blank)
        .arg(&disk));
    eprintln!("bad answer stopped before the disk: {expect:?}");
}

#[test]
#[ignore]
fn bad_answer_stops_before_the_disk() {
    if !enabled() {
        return;
    }
    // Missing [disk] and a bad address: both reported, with key and fix.
    let a = single_answer("52:54:00:12:34:09")
        .replace("[disk]\npath = \"/dev/vda\"\n", "")
        .replace(
            "listen = \"0.0.0.0:7000\"",
            "listen = \"198.18.0.300:7000\"",
        );
    bad_answer_case(
        &a,
        &[
            "disk: missing",
            "cluster.listen: `198.18.0.300:7000` is not an address",
            "fix: add a [disk] section",
        ],
    );
    // Unknown key.
    let a = single_answer("52:54:00:12:34:09").replace(
        "hostname = \"tandem-test\"",
        "hostname = \"tandem-test\"\nhostnme = \"x\"",
    );
    bad_answer_case(&a, &["system.hostnme: unknown key"]);
}

fn cluster_answer(id: u64, mac: &str, link_mac: &str, mode: &str) -> String {
    let extra = if mode == "init" {
        format!("[api]\nadmin_token = \"{ADMIN}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"[disk]
path = "/dev/vda"
[system]
hostname = "node-{id}"
finish = "poweroff"
[[network.interface]]
mac = "{mac}"
dhcp = true
[[network.interface]]
mac = "{link_mac}"
address = "198.18.0.{id}/24"
[node]
id = {id}
[cluster]
mode = "{mode}"
{{TOKEN}}
[[cluster.peers]]
id = 1
addr = "198.18.0.1:7000"
[[cluster.peers]]
id = 2
addr = "198.18.0.2:7000"
{extra}
# The API through qemu's port forward comes from the user-net gateway 10.0.2.2;
# without this only the static 198.18.0.0/24 could reach it.
[firewall]
api_allow = ["10.0.2.0/24", "198.18.0.0/24"]
"#
    )
}

#[test]
#[ignore]
fn two_nodes_form_a_cluster() {
    if !enabled() {
        return;
    }
    let mut lab = Lab::new();
    let (p1, p2) = (free_port(), free_port());
    let (u1, u2) = (free_port(), free_port());
    let a1 =
        cluster_answer(1, "52:54:00:00:01:01", "52:54:00:00:02:01", "init").replace("{TOKEN}", "");
    let cd1 = inject(&lab, "n1", &a1);
    let mut vm1 = Vm {
        name: "n1",
        fw: Firmware::Bios,
        disk: blank_disk(&lab, "n1.qcow2"),
        cdrom: Some(cd1),
        extra_disk: None,
        api_port: p1,
        mac: "52:54:00:00:01:01",
        link: Some((u1, u2, "52:54:00:00:02:01")),
        iso_as_disk: false,
    };
    let s = lab.path("n1-install.log");
    let t = Instant::now();
    let i = start(&mut lab, &vm1, &s);
    wait_exit(&mut lab, i, &s, Duration::from_secs(40 * 60));
    vm1.cdrom = None;
    let s1 = lab.path("n1-boot.log");
    let i1 = start(&mut lab, &vm1, &s1);
    wait_health(&mut lab, i1, p1, &s1, Duration::from_secs(20 * 60));
    eprintln!(
        "node 1 installed and healthy after {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // The integrator reads node 1's join token and writes it into node 2's answer file.
    let (st, body) = http_get(p1, "/api/v1/cluster/join-token", Some(ADMIN)).expect("join-token");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("join-token body {body}"));
    let token = v["token"].as_str().expect("token").to_string();
    let a2 = cluster_answer(2, "52:54:00:00:01:02", "52:54:00:00:02:02", "join")
        .replace("{TOKEN}", &format!("join_token = \"{token}\""));
    let cd2 = inject(&lab, "n2", &a2);
    let mut vm2 = Vm {
        name: "n2",
        fw: Firmware::Uefi,
        disk: blank_disk(&lab, "n2.qcow2"),
        cdrom: Some(cd2),
        extra_disk: None,
        api_port: p2,
        mac: "52:54:00:00:01:02",
        link: Some((u2, u1, "52:54:00:00:02:02")),
        iso_as_disk: false,
    };
    let s = lab.path("n2-install.log");
    let t = Instant::now();
    let i = start(&mut lab, &vm2, &s);
    wait_exit(&mut lab, i, &s, Duration::from_secs(40 * 60));
    vm2.cdrom = None;
    let s2 = lab.path("n2-boot.log");
    let i2 = start(&mut lab, &vm2, &s2);
    wait_health(&mut lab, i2, p2, &s2, Duration::from_secs(20 * 60));
    eprintln!(
        "node 2 installed, joined and healthy after {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // Both listed, and node 2 caught up and promoted to voter by the leader.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (st, body) = http_get(p1, "/api/v1/cluster", Some(ADMIN)).unwrap_or((0, String::new()));
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let voter = |id: u64| members.iter().any(|m| m["id"] == id && m["voter"] == true);
        if st == 200 && voter(1) && voter(2) {
            eprintln!("/api/v1/cluster lists both nodes as voters: {body}");
            break;
        }
        if Instant::now() > deadline {
            let n2 = http_get(p2, "/api/v1/cluster", Some(ADMIN));
            panic!(
                "node 2 not a voter after 300 s: node 1 says {st} {body}\nnode 2 says {n2:?}\n{}",
                tail(&serial_text(&s2))
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The ISO written raw to a disk (USB stick) boots and installs, BIOS and UEFI.
#[test]
#[ignore]
fn iso_as_usb_disk_installs_bios_and_uefi() {
    if !enabled() {
        return;
    }
    for fw in [Firmware::Bios, Firmware::Uefi] {
        let mut lab = Lab::new();
        let mac = "52:54:00:12:34:05";
        let stick = inject(&lab, "usb", &single_answer(mac));
        let vm = Vm {
            name: "usb",
            fw,
            disk: blank_disk(&lab, "disk.qcow2"),
            cdrom: Some(stick),
            extra_disk: None,
            api_port: free_port(),
            mac,
            link: None,
            iso_as_disk: true,
        };
        let s = lab.path("usb-install.log");
        let t = Instant::now();
        let i = start(&mut lab, &vm, &s);
        wait_exit(&mut lab, i, &s, Duration::from_secs(40 * 60));
        let log = serial_text(&s);
        assert!(
            log.contains("tandem installed on /dev/vda"),
            "{}",
            tail(&log)
        );
        eprintln!(
            "{} boot from the ISO as a disk: installed in {:.0} s",
            if fw == Firmware::Bios { "BIOS" } else { "UEFI" },
            t.elapsed().as_secs_f64()
        );
    }
}

/// Two builds with the same SOURCE_DATE_EPOCH (and package set) give the same ISO.
#[test]
#[ignore]
fn build_is_reproducible() {
    if !enabled() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let tandem = std::env::var_os("TANDEM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("release/tandem"));
    let lab = Lab::new();
    let mut sums = Vec::new();
    for n in ["a", "b"] {
        let out = lab.path(&format!("{n}/tandem.iso"));
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        run(Command::new(env!("CARGO_BIN_EXE_tandem-iso"))
            .arg("build")
            .arg("--out")
            .arg(&out)
            .arg("--tandem")
            .arg(&tandem)
            .arg("--appliance")
            .arg(root.join("appliance"))
            .arg("--work-dir")
            .arg(lab.path(&format!("work-{n}")))
            .env("SOURCE_DATE_EPOCH", "1763900000"));
        sums.push(fs::read_to_string(out.parent().unwrap().join("SHA256SUMS")).unwrap());
        let _ = fs::remove_dir_all(lab.path(&format!("work-{n}")));
    }
    assert_eq!(sums[0], sums[1], "two builds differ");
    eprintln!("reproducible: {}", sums[0].trim());
}
