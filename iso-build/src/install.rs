//! `tandem-iso install`: runs on the live system. Finds the answer file (kernel
//! command line URL, a `TANDEM-ANSWER` file system, the copy embedded in the ISO,
//! or the console dialogue), validates it completely and checks it against the
//! machine before any disk is touched, then partitions, copies the system,
//! configures it, installs GRUB for BIOS and UEFI, and reboots or powers off.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::answer::{self, Answer, DiskChoice, Finish, Problem, Problems};
use crate::error::{io, Error, Result};
use crate::render;
use crate::stage::{say, Stages};

/// Where live-boot mounts the installer medium.
pub const LIVE_MEDIUM: &str = "/run/live/medium";
/// File system label (or GPT partition name) of an answer-file stick.
pub const ANSWER_LABEL: &str = "TANDEM-ANSWER";

/// Where an answer file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `tandem.answer=<url>` on the kernel command line.
    Url(String),
    /// `answer.toml` on a file system labelled TANDEM-ANSWER (device).
    Partition(String),
    /// `/tandem/answer.toml` inside the ISO.
    Embedded,
    /// A file given with `--answer`.
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(u) => write!(f, "{u} (kernel command line tandem.answer=)"),
            Source::Partition(d) => write!(f, "{d}:/answer.toml (label {ANSWER_LABEL})"),
            Source::Embedded => write!(f, "/tandem/answer.toml in the ISO"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `tandem.answer=` from a kernel command line: `None` if absent.
pub fn cmdline_answer(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tandem.answer="))
        .map(str::to_string)
}

/// One disk as `lsblk` shows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Disk {
    /// Device path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Model, if known.
    #[serde(default)]
    pub model: Option<String>,
    /// `disk`, `rom`, `loop`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Read-only.
    #[serde(default)]
    pub ro: bool,
}

#[derive(Deserialize)]
struct Lsblk {
    blockdevices: Vec<Disk>,
}

/// Parses `lsblk -J -b -d -o PATH,SIZE,MODEL,TYPE,RO`.
pub fn parse_lsblk(json: &str) -> std::result::Result<Vec<Disk>, serde_json::Error> {
    Ok(serde_json::from_str::<Lsblk>(json)?.blockdevices)
}

/// Picks the target disk among `disks` (already without the installer medium and
/// the answer stick). Errors name the `disk.*` key and list the candidates.
pub fn choose_disk(
    choice: &DiskChoice,
    disks: &[Disk],
    excluded: &[String],
) -> std::result::Result<Disk, Problem> {
    let listing = || {
        disks
            .iter()
            .map(|d| {
                format!(
                    "{} {} GB {}",
                    d.path,
                    d.size / 1_000_000_000,
                    d.model.clone().unwrap_or_default().trim()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let usable: Vec<&Disk> = disks
        .iter()
        .filter(|d| d.kind == "disk" && !d.ro && d.size > 0)
        .collect();
    match choice {
        DiskChoice::Path(p) => {
            let real = fs::canonicalize(p)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.clone());
            if excluded.contains(&real) {
                return Err(Problem {
                    key: "disk.path".into(),
                    message: format!("{p} holds the installer medium or the answer file"),
                    fix: format!("name the disk to install to; disks here: {}", listing()),
                });
            }
            match usable.iter().find(|d| d.path == real || d.path == *p) {
                Some(d) => Ok((*d).clone()),
                None => Err(Problem {
                    key: "disk.path".into(),
                    message: format!("{p} is not a writable disk on this machine"),
                    fix: format!(
                        "use one of: {}",
                        if disks.is_empty() {
                            "(no disk found)".into()
                        } else {
                            listing()
                        }
                    ),
                }),
            }
        }
        DiskChoice::Filter {
            min_bytes,
            max_bytes,
            model,
        } => {
            let m: Vec<&&Disk> = usable
                .iter()
                .filter(|d| !excluded.contains(&d.path))
                .filter(|d| min_bytes.map_or(true, |b| d.size >= b))
                .filter(|d| max_bytes.map_or(true, |b| d.size <= b))
                .filter(|d| {
                    model.as_ref().map_or(true, |want| {
                        d.model
                            .as_deref()
                            .unwrap_or("")
                            .to_lowercase()
                            .contains(&want.to_lowercase())
                    })
                })
                .collect();
            match m.as_slice() {
                [one] => Ok((**one).clone()),
                [] => Err(Problem {
                    key: "disk".into(),
                    message: "no disk matches min_size_gb/max_size_gb/model".into(),
                    fix: format!(
                        "loosen the filter or set disk.path; disks here: {}",
                        listing()
                    ),
                }),
                many => Err(Problem {
                    key: "disk".into(),
                    message: format!(
                        "{} disks match the filter: {}",
                        many.len(),
                        many.iter()
                            .map(|d| d.path.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    fix: "narrow the filter (model, sizes) or set disk.path".into(),
                }),
            }
        }
    }
}

/// Checks that every interface MAC of the answer is present (`present`: lower-case MACs).
pub fn check_macs(a: &Answer, present: &[String]) -> Vec<Problem> {
    a.interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| !present.contains(&i.mac))
        .map(|(n, i)| Problem {
            key: format!("network.interface[{n}].mac"),
            message: format!("no interface with MAC {} on this machine", i.mac),
            fix: format!("use one of: {}", present.join(", ")),
        })
        .collect()
}

/// MAC addresses of this machine's physical interfaces.
pub fn present_macs() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            if e.file_name() == "lo" {
                continue;
            }
            if let Ok(m) = fs::read_to_string(e.path().join("address")) {
                if let Some(m) = answer::normalize_mac(m.trim()) {
                    v.push(m);
                }
            }
        }
    }
    v.sort();
    v
}

/// The whole disk a partition or file system device belongs to (`/dev/sr0` stays).
fn parent_disk(dev: &str) -> String {
    let out = Command::new("lsblk")
        .args(["-n", "-d", "-o", "PKNAME"])
        .arg(dev)
        .output();
    match out {
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty() => {
            format!("/dev/{}", String::from_utf8_lossy(&o.stdout).trim())
        }
        _ => dev.to_string(),
    }
}

/// Device mounted at `mountpoint`, from /proc/mounts.
fn mounted_device(mountpoint: &str) -> Option<String> {
    let m = fs::read_to_string("/proc/mounts").ok()?;
    m.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let dev = f.next()?;
        (f.next()? == mountpoint).then(|| dev.to_string())
    })
}

/// Options of `tandem-iso install`.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Answer file path (skips the search).
    pub answer: Option<PathBuf>,
    /// Terminal for the dialogue when no answer file is found.
    pub tty: PathBuf,
    /// Do everything except the final reboot/poweroff.
    pub no_finish: bool,
}

/// Finds and reads the answer file; `Ok(None)` means "ask on the console".
fn find_answer(o: &InstallOptions, st: &Stages) -> Result<Option<(Source, String)>> {
    if let Some(p) = &o.answer {
        let t = fs::read_to_string(p).map_err(io(format!("reading {}", p.display())))?;
        return Ok(Some((Source::File(p.clone()), t)));
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match cmdline_answer(&cmdline).as_deref() {
        Some("none") => {
            say("  tandem.answer=none: answer files are ignored");
            return Ok(None);
        }
        Some(url) => {
            say(&format!("  fetching the answer file from {url}"));
            bring_up_dhcp();
            let mut last = String::new();
            for attempt in 1..=30 {
                let out = Command::new("curl")
                    .args(["-fsSL", "--max-time", "10", url])
                    .output();
                match out {
                    Ok(o) if o.status.success() => {
                        return Ok(Some((
                            Source::Url(url.to_string()),
                            String::from_utf8_lossy(&o.stdout).into_owned(),
                        )))
                    }
                    Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => last = e.to_string(),
                }
                if attempt % 5 == 0 {
                    say(&format!(
                        "  still trying {url} (attempt {attempt}/30): {last}"
                    ));
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            return Err(st.fail(format!("could not fetch the answer file from {url}: {last}; check the URL and that the network offers DHCP")));
        }
        None => {}
    }
    for tag in ["LABEL", "PARTLABEL"] {
        let out = Command::new("blkid")
            .args(["-o", "device", "-t", &format!("{tag}={ANSWER_LABEL}")])
            .output();
        if let Ok(out) = out {
            if let Some(dev) = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
            {
                let mnt = Path::new("/run/tandem-answer");
                fs::create_dir_all(mnt).map_err(io("creating /run/tandem-answer"))?;
                st.run(Command::new("mount").args(["-o", "ro"]).arg(&dev).arg(mnt))?;
                let text = fs::read_to_string(mnt.join("answer.toml"));
                let _ = Command::new("umount").arg(mnt).status();
                let text = text.map_err(|e| st.fail(format!("{dev} is labelled {ANSWER_LABEL} but has no readable answer.toml at its top: {e}")))?;
                return Ok(Some((Source::Partition(dev), text)));
            }
        }
    }
    let emb = Path::new(LIVE_MEDIUM).join("tandem/answer.toml");
    if emb.exists() {
        let t = fs::read_to_string(&emb).map_err(io(format!("reading {}", emb.display())))?;
        return Ok(Some((Source::Embedded, t)));
    }
    Ok(None)
}

/// DHCP on every wired interface of the live system (for `tandem.answer=<url>`).
fn bring_up_dhcp() {
    let _ = fs::create_dir_all("/run/systemd/network");
    let _ = fs::write(
        "/run/systemd/network/90-live-dhcp.network",
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
    );
    let _ = Command::new("networkctl").arg("reload").status();
    let _ = Command::new("systemctl")
        .args(["restart", "systemd-networkd"])
        .status();
}

/// The installer's main flow.
pub fn install(o: &InstallOptions) -> Result<()> {
    crate::stage::add_consoles(&["/dev/ttyS0", "/dev/tty1"]);
    let mut st = Stages::new(8);
    say("tandem installer");
    st.begin("answer file");
    let found = find_answer(o, &st)?;
    let (origin, answer) = match found {
        Some((src, text)) => {
            say(&format!("  using {src}"));
            let a = answer::parse(&text).map_err(|problems| Error::Answer {
                origin: src.to_string(),
                problems,
            })?;
            (src.to_string(), a)
        }
        None => {
            say(&format!(
                "  no answer file found: asking on {}",
                o.tty.display()
            ));
            let a = crate::dialogue::run_on_tty(&o.tty)?;
            ("console dialogue".to_string(), a)
        }
    };

    st.begin("check the answer against this machine");
    let medium = mounted_device(LIVE_MEDIUM).map(|d| parent_disk(&d));
    let mut excluded: Vec<String> = medium.into_iter().collect();
    if let Ok(out) = Command::new("blkid")
        .args(["-o", "device", "-t", &format!("LABEL={ANSWER_LABEL}")])
        .output()
    {
        for d in String::from_utf8_lossy(&out.stdout).lines() {
            excluded.push(parent_disk(d));
        }
    }
    let lsblk =
        st.run(Command::new("lsblk").args(["-J", "-b", "-d", "-o", "PATH,SIZE,MODEL,TYPE,RO"]))?;
    let disks =
        parse_lsblk(&lsblk).map_err(|e| st.fail(format!("cannot read lsblk output: {e}")))?;
    let mut problems = check_macs(&answer, &present_macs());
    if !Path::new("/usr/share/zoneinfo")
        .join(&answer.timezone)
        .is_file()
    {
        problems.push(Problem {
            key: "system.timezone".into(),
            message: format!("`{}` is not in the time zone database", answer.timezone),
            fix: "use a name from /usr/share/zoneinfo, e.g. \"UTC\" or \"Europe/Berlin\"".into(),
        });
    }
    let disk = match choose_disk(&answer.disk, &disks, &excluded) {
        Ok(d) => Some(d),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    if !problems.is_empty() {
        return Err(Error::Answer {
            origin,
            problems: Problems(problems),
        });
    }
    let disk = disk.expect("checked");
    say(&format!(
        "  target disk {} ({} GB{}), host {}, node {} ({}), {}",
        disk.path,
        disk.size / 1_000_000_000,
        disk.model
            .as_deref()
            .map(|m| format!(", {}", m.trim()))
            .unwrap_or_default(),
        answer.hostname,
        answer.node_id,
        answer.role.as_str(),
        render::bootstrap_words(&answer)
    ));
    for w in answer.warnings() {
        say(&format!("  warning: {w}"));
    }
    if disk.size < 4_000_000_000 {
        return Err(Error::Answer {
            origin,
            problems: Problems(vec![Problem {
                key: "disk".into(),
                message: format!(
                    "{} has only {} MB; at least 4 GB are needed",
                    disk.path,
                    disk.size / 1_000_000
                ),
                fix: "choose a larger disk".into(),
            }]),
        });
    }

    st.begin(&format!("partition {}", disk.path));
    let _ = Command::new("swapoff").arg("-a").status();
    st.run(Command::new("wipefs").args(["-a", "-q"]).arg(&disk.path))?;
    st.run(Command::new("sgdisk").arg("--zap-all").arg(&disk.path))?;
    st.run(
        Command::new("sgdisk")
            .args(["-n", "1:0:+1M", "-t", "1:EF02", "-c", "1:bios-boot"])
            .args(["-n", "2:0:+200M", "-t", "2:EF00", "-c", "2:efi"])
            .args(["-n", "3:0:0", "-t", "3:8304", "-c", "3:tandem-root"])
            .arg(&disk.path),
    )?;
    let _ = Command::new("partprobe").arg(&disk.path).status();
    st.run(Command::new("udevadm").arg("settle"))?;
    let parts = partitions(&st, &disk.path)?;
    let (esp, root) = (&parts[1], &parts[2]);
    st.run(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "TANDEM-EFI"])
            .arg(esp),
    )?;
    st.run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "tandem-root"])
            .arg(root),
    )?;

    st.begin("copy the system");
    let target = Path::new("/target");
    fs::create_dir_all(target).map_err(io("creating /target"))?;
    st.run(Command::new("mount").arg(root).arg(target))?;
    let sq = Path::new(LIVE_MEDIUM).join("live/filesystem.squashfs");
    st.run(
        Command::new("unsquashfs")
            .args(["-f", "-n", "-d"])
            .arg(target)
            .arg(&sq),
    )?;
    fs::create_dir_all(target.join("boot/efi")).map_err(io("creating /target/boot/efi"))?;
    st.run(Command::new("mount").arg(esp).arg(target.join("boot/efi")))?;

    st.begin("configure");
    let root_uuid = blkid_uuid(&st, root)?;
    let esp_uuid = blkid_uuid(&st, esp)?;
    configure_target(target, &answer, &root_uuid, &esp_uuid)?;

    st.begin("boot loader (BIOS and UEFI)");
    let (kernel, initrd) = crate::build::kernel_files(&target.join("boot"))
        .ok_or_else(|| st.fail("no kernel in /target/boot"))?;
    st.run(
        Command::new("grub-install")
            .args(["--target=i386-pc", "--modules=part_gpt ext2"])
            .arg(format!(
                "--boot-directory={}",
                target.join("boot").display()
            ))
            .arg(&disk.path),
    )?;
    st.run(
        Command::new("grub-install")
            .args([
                "--target=x86_64-efi",
                "--removable",
                "--no-nvram",
                "--modules=part_gpt ext2",
            ])
            .arg(format!(
                "--efi-directory={}",
                target.join("boot/efi").display()
            ))
            .arg(format!(
                "--boot-directory={}",
                target.join("boot").display()
            )),
    )?;
    fs::write(
        target.join("boot/grub/grub.cfg"),
        render::installed_grub_cfg(&root_uuid, &kernel, &initrd),
    )
    .map_err(io("writing grub.cfg"))?;

    st.begin("finish");
    st.run(&mut Command::new("sync"))?;
    st.run(Command::new("umount").arg(target.join("boot/efi")))?;
    st.run(Command::new("umount").arg(target))?;
    let secs = st.finish();
    say(&format!(
        "tandem installed on {} in {secs:.0} s (answer: {origin})",
        disk.path
    ));
    if o.no_finish {
        return Ok(());
    }
    match answer.finish {
        Finish::Poweroff => {
            say("powering off (system.finish = \"poweroff\")");
            let _ = Command::new("systemctl").arg("poweroff").status();
        }
        Finish::Reboot => {
            say("removing the installer medium and rebooting into the installed system");
            let _ = Command::new("eject").arg("-m").arg("/dev/sr0").status();
            let _ = Command::new("systemctl").arg("reboot").status();
        }
    }
    Ok(())
}

/// Partition device paths of `disk`, in order.
fn partitions(st: &Stages, disk: &str) -> Result<Vec<String>> {
    let out = st.run(
        Command::new("lsblk")
            .args(["-ln", "-o", "PATH,TYPE"])
            .arg(disk),
    )?;
    let parts: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let p = f.next()?;
            (f.next()? == "part").then(|| p.to_string())
        })
        .collect();
    if parts.len() != 3 {
        return Err(st.fail(format!(
            "expected 3 partitions on {disk} after partitioning, found {parts:?}"
        )));
    }
    Ok(parts)
}

fn blkid_uuid(st: &Stages, dev: &str) -> Result<String> {
    let u = st
        .run(
            Command::new("blkid")
                .args(["-s", "UUID", "-o", "value"])
                .arg(dev),
        )?
        .trim()
        .to_string();
    if u.is_empty() {
        return Err(st.fail(format!("{dev} has no file system UUID")));
    }
    Ok(u)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).map_err(io(format!("creating {}", p.display())))?;
    }
    fs::write(path, text).map_err(io(format!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

/// Writes host name, time zone, network, fstab, node config and first-boot state
/// into the mounted target.
pub fn configure_target(target: &Path, a: &Answer, root_uuid: &str, esp_uuid: &str) -> Result<()> {
    let t = |p: &str| target.join(p.trim_start_matches('/'));
    write_file(&t("/etc/hostname"), &format!("{}\n", a.hostname), 0o644)?;
    write_file(&t("/etc/hosts"), &render::hosts(&a.hostname), 0o644)?;
    write_file(&t("/etc/timezone"), &format!("{}\n", a.timezone), 0o644)?;
    let lt = t("/etc/localtime");
    let _ = fs::remove_file(&lt);
    std::os::unix::fs::symlink(format!("/usr/share/zoneinfo/{}", a.timezone), &lt)
        .map_err(io("linking /etc/localtime"))?;
    write_file(&t("/etc/fstab"), &render::fstab(root_uuid, esp_uuid), 0o644)?;
    for (name, text) in render::networkd_files(a) {
        write_file(&t(&format!("/etc/systemd/network/{name}")), &text, 0o644)?;
    }
    write_file(&t(render::CONFIG_PATH), &render::node_config(a), 0o644)?;
    write_file(&t("/etc/nftables.conf"), &render::nftables(a), 0o644)?;
    let state = serde_json::to_string_pretty(a).expect("answer serializes");
    write_file(&t(render::INSTALL_STATE), &state, 0o600)?;
    if let Some(tok) = &a.admin_token {
        write_file(
            &t(&format!("{}/admin.token", render::DATA_DIR)),
            &format!("{tok}\n"),
            0o600,
        )?;
    }
    write_file(&t("/etc/machine-id"), "", 0o444)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disks() -> Vec<Disk> {
        parse_lsblk(
            r#"{"blockdevices":[
            {"path":"/dev/sr0","size":300000000,"model":"QEMU DVD-ROM","type":"rom","ro":false},
            {"path":"/dev/vda","size":8589934592,"model":null,"type":"disk","ro":false},
            {"path":"/dev/sda","size":500107862016,"model":"Samsung SSD 870","type":"disk","ro":false},
            {"path":"/dev/vdb","size":1048576,"model":null,"type":"disk","ro":false}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn cmdline_url_found() {
        assert_eq!(
            cmdline_answer("boot=live tandem.answer=http://10.0.2.2:8000/a.toml quiet"),
            Some("http://10.0.2.2:8000/a.toml".into())
        );
        assert_eq!(cmdline_answer("boot=live"), None);
    }

    #[test]
    fn disk_by_path_and_filter() {
        let d = disks();
        assert_eq!(
            choose_disk(&DiskChoice::Path("/dev/vda".into()), &d, &[])
                .unwrap()
                .path,
            "/dev/vda"
        );
        let e = choose_disk(&DiskChoice::Path("/dev/vdz".into()), &d, &[]).unwrap_err();
        assert_eq!(e.key, "disk.path");
        assert!(e.fix.contains("/dev/sda"), "{e}");
        let e = choose_disk(&DiskChoice::Path("/dev/sr0".into()), &d, &[]).unwrap_err();
        assert_eq!(e.key, "disk.path");
        let f = DiskChoice::Filter {
            min_bytes: Some(100_000_000_000),
            max_bytes: None,
            model: Some("samsung".into()),
        };
        assert_eq!(choose_disk(&f, &d, &[]).unwrap().path, "/dev/sda");
        let f = DiskChoice::Filter {
            min_bytes: Some(1_000_000_000),
            max_bytes: None,
            model: None,
        };
        let e = choose_disk(&f, &d, &[]).unwrap_err();
        assert!(e.message.contains("2 disks match"), "{e}");
        assert_eq!(
            choose_disk(&f, &d, &["/dev/sda".into()]).unwrap().path,
            "/dev/vda"
        );
        let e = choose_disk(
            &DiskChoice::Path("/dev/vda".into()),
            &d,
            &["/dev/vda".into()],
        )
        .unwrap_err();
        assert!(e.message.contains("installer medium"), "{e}");
    }

    #[test]
    fn missing_mac_named() {
        let a = answer::parse(
            "[disk]\npath=\"/dev/vda\"\n[system]\nhostname=\"a\"\n[[network.interface]]\nmac=\"52:54:00:00:00:09\"\naddress=\"198.18.0.1/24\"\n[node]\nid=1\n[cluster]\nmode=\"init\"\n",
        )
        .unwrap();
        let p = check_macs(&a, &["52:54:00:00:00:01".into()]);
        assert_eq!(p[0].key, "network.interface[0].mac");
        assert!(p[0].fix.contains("52:54:00:00:00:01"));
        assert!(check_macs(&a, &["52:54:00:00:00:09".into()]).is_empty());
    }

    #[test]
    fn configure_writes_config_and_state() {
        let a = answer::parse(
            "[disk]\npath=\"/dev/vda\"\n[system]\nhostname=\"pbx\"\ntimezone=\"Europe/Berlin\"\n[[network.interface]]\nmac=\"52:54:00:00:00:09\"\naddress=\"198.18.0.1/24\"\n[node]\nid=1\n[cluster]\nmode=\"init\"\n[api]\nadmin_token=\"0123456789abcdef0123\"\n",
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        configure_target(d.path(), &a, "u1", "u2").unwrap();
        let r = |p: &str| fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(r("etc/hostname"), "pbx\n");
        assert!(r("etc/fstab").contains("UUID=u1 / ext4"));
        assert!(r("etc/systemd/network/10-tandem-0.network").contains("Address=198.18.0.1/24"));
        assert!(r("etc/tandem/tandem.toml").contains("id = 1"));
        assert_eq!(r("var/lib/tandem/admin.token"), "0123456789abcdef0123\n");
        assert_eq!(
            fs::read_link(d.path().join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/Europe/Berlin")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(d.path().join("etc/tandem/install.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
