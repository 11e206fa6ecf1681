//! `tandem-iso build`: Debian 12 root file system (mmdebstrap) with the appliance
//! layer and the `tandem` binary, a compressed squashfs live system that runs the
//! installer, and a hybrid ISO (BIOS + UEFI, CD + USB) made with grub-mkimage and
//! xorriso.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{io, Error, Result};
use crate::stage::{say, Stages};

/// Debian packages of the image (live installer and installed system alike).
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "live-boot",
    "initramfs-tools",
    "zstd",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub2-common",
    "dosfstools",
    "e2fsprogs",
    "gdisk",
    "squashfs-tools",
    "chrony",
    "nftables",
    "iproute2",
    "curl",
    "ca-certificates",
    "kmod",
    "util-linux",
    "eject",
    "tzdata",
    "procps",
    "less",
];

/// Kernel module folders removed from the image (no sound, GPUs, wireless,
/// cameras on a telephony server): smaller ISO, faster install.
const TRIM_MODULES: &[&str] = &[
    "sound",
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/bluetooth",
    "drivers/iio",
    "drivers/isdn",
    "drivers/hid",
    "drivers/input/touchscreen",
    "drivers/input/joystick",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
];

/// GRUB modules built into the boot images (so nothing has to be loaded at boot).
const GRUB_MODULES_COMMON: &[&str] = &[
    "iso9660",
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "search",
    "search_fs_file",
    "search_label",
    "configfile",
    "normal",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "terminfo",
    "ls",
    "cat",
    "gzio",
    "sleep",
    "reboot",
    "halt",
];

/// Options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Output ISO path.
    pub out: PathBuf,
    /// Answer file to embed (validated first).
    pub answer: Option<PathBuf>,
    /// The `tandem` binary to package.
    pub tandem_bin: PathBuf,
    /// The `tandem-iso` binary to package (installer, first boot).
    pub tandem_iso_bin: PathBuf,
    /// The `appliance/` folder.
    pub appliance_dir: PathBuf,
    /// Work folder (root file system, staging tree); reused and cleaned.
    pub work_dir: PathBuf,
    /// apt sources file handed to mmdebstrap.
    pub sources: PathBuf,
    /// Debian suite.
    pub suite: String,
    /// Seconds since the epoch used for every time stamp.
    pub source_date_epoch: u64,
    /// Reuse an existing root file system in the work folder (skips mmdebstrap).
    pub reuse_rootfs: bool,
    /// Echo the output of long commands.
    pub verbose: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The ISO.
    pub iso: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// Build time in seconds.
    pub seconds: f64,
    /// Installed packages, `name version`, sorted.
    pub packages: Vec<String>,
}

/// The apt sources of this machine: the deb822 or one-line files apt uses.
pub fn host_sources() -> Option<PathBuf> {
    let d = Path::new("/etc/apt/sources.list.d/debian.sources");
    if d.exists() {
        return Some(d.to_path_buf());
    }
    let l = Path::new("/etc/apt/sources.list");
    if fs::read_to_string(l)
        .map(|t| t.lines().any(|x| x.trim_start().starts_with("deb ")))
        .unwrap_or(false)
    {
        return Some(l.to_path_buf());
    }
    None
}

/// Copies the appliance layer and binaries into `overlay` (a tree laid over `/`).
pub fn stage_overlay(o: &BuildOptions, overlay: &Path) -> Result<()> {
    let a = &o.appliance_dir;
    let copy = |from: PathBuf, to: &str, mode: u32| -> Result<()> {
        let dest = overlay.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().expect("parent"))
            .map_err(io(format!("creating {}", dest.display())))?;
        fs::copy(&from, &dest).map_err(io(format!(
            "copying {} to {}",
            from.display(),
            dest.display()
        )))?;
        set_mode(&dest, mode)
    };
    copy(o.tandem_bin.clone(), "/usr/local/bin/tandem", 0o755)?;
    copy(o.tandem_iso_bin.clone(), "/usr/local/bin/tandem-iso", 0o755)?;
    // Debug info is not needed on the appliance (and would triple the size).
    for b in ["usr/local/bin/tandem", "usr/local/bin/tandem-iso"] {
        if which("strip").is_some() {
            crate::stage::run_in(
                "stage appliance layer",
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg(overlay.join(b)),
                crate::stage::Echo::None,
                None,
            )?;
        }
    }
    copy(a.join("tandem.toml"), "/etc/tandem/tandem.toml", 0o644)?;
    copy(
        a.join("tandem.toml"),
        "/usr/share/tandem/tandem.toml.example",
        0o644,
    )?;
    // Everything below appliance/rootfs/ is laid over / as is.
    let root = a.join("rootfs");
    let mut files = Vec::new();
    walk(&root, &mut files)?;
    files.sort();
    for f in files {
        let rel = f.strip_prefix(&root).expect("under root");
        let exec = rel.starts_with("usr/local/lib/tandem") || rel.starts_with("usr/local/bin");
        copy(
            f.clone(),
            &format!("/{}", rel.display()),
            if exec { 0o755 } else { 0o644 },
        )?;
    }
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let e = e.map_err(io(format!("reading {}", dir.display())))?;
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", p.display())))
}

/// Shell run inside the new root by mmdebstrap's customize hook.
fn customize_script() -> String {
    let trims: Vec<String> = TRIM_MODULES
        .iter()
        .map(|m| format!("\"$k/kernel/{m}\""))
        .collect();
    format!(
        r#"set -eu
# appliance services
systemctl enable tandem.service tandem-firstboot.service tandem-settings.service tandem-installer.service \
  systemd-networkd.service systemd-resolved.service nftables.service chrony.service
systemctl mask systemd-networkd-wait-online.service
getent passwd tandem >/dev/null || useradd --system --home-dir /var/lib/tandem --no-create-home --shell /usr/sbin/nologin tandem
mkdir -p /var/lib/tandem && chown tandem:tandem /var/lib/tandem && chmod 0750 /var/lib/tandem
# smaller kernel module set, then rebuild the initramfs (with live-boot)
for k in /lib/modules/*; do
  rm -rf {trims}
  depmod -a "$(basename "$k")"
done
echo 'COMPRESS=zstd' > /etc/initramfs-tools/conf.d/tandem-compress
update-initramfs -u -k all
# one identity per installed machine, created on its first boot
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_* /etc/resolv.conf /etc/hostname
ln -sf /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
echo tandem > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\ttandem\n' > /etc/hosts
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /tmp/* 
"#,
        trims = trims.join(" ")
    )
}

/// Embedded GRUB config: find the ISO (CD, or the USB stick it was written to)
/// by its marker file and load its grub.cfg.
fn early_cfg(marker: &str) -> String {
    format!("search --no-floppy --set=root --file /{marker}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n")
}

/// The ISO's boot menu.
pub fn iso_grub_cfg() -> String {
    let cmd = "boot=live live-media-path=/live console=tty0 console=ttyS0,115200n8";
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=3\n\
         set default=0\n\
         menuentry \"Install tandem (unattended when an answer file is found)\" {{\n\
         \tlinux /live/vmlinuz {cmd}\n\tinitrd /live/initrd.img\n}}\n\
         menuentry \"Install tandem, interactive (ignore answer files)\" {{\n\
         \tlinux /live/vmlinuz {cmd} tandem.answer=none\n\tinitrd /live/initrd.img\n}}\n"
    )
}

/// Builds the ISO.
pub fn build(o: &BuildOptions) -> Result<BuildReport> {
    let mut st = Stages::new(8);
    st.echo = o.verbose;
    let epoch = o.source_date_epoch.to_string();

    st.begin("check tools and inputs");
    for (tool, pkg) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mksquashfs", "squashfs-tools"),
        ("xorriso", "xorriso"),
        ("grub-mkimage", "grub2-common"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
    ] {
        if which(tool).is_none() {
            return Err(st.fail(format!(
                "`{tool}` not found; install Debian package {pkg} (iso-build/setup.sh does)"
            )));
        }
    }
    for d in ["/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi"] {
        if !Path::new(d).is_dir() {
            return Err(st.fail(format!(
                "{d} missing; install grub-pc-bin and grub-efi-amd64-bin (iso-build/setup.sh does)"
            )));
        }
    }
    for b in [&o.tandem_bin, &o.tandem_iso_bin] {
        if !b.is_file() {
            return Err(st.fail(format!(
                "{} not found; build it first (cargo build --release -p tandem -p tandem-iso)",
                b.display()
            )));
        }
    }
    if let Some(a) = &o.answer {
        let text = fs::read_to_string(a).map_err(io(format!("reading {}", a.display())))?;
        crate::answer::parse(&text).map_err(|problems| Error::Answer {
            origin: a.display().to_string(),
            problems,
        })?;
    }
    say(&format!(
        "  SOURCE_DATE_EPOCH={epoch}, apt sources {}, suite {}",
        o.sources.display(),
        o.suite
    ));

    let work = &o.work_dir;
    let rootfs = work.join("rootfs");
    let overlay = work.join("overlay");
    let staging = work.join("staging");
    for d in [&overlay, &staging] {
        if d.exists() {
            fs::remove_dir_all(d).map_err(io(format!("removing {}", d.display())))?;
        }
        fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    stage_overlay(o, &overlay)?;
    let script = work.join("customize.sh");
    fs::write(&script, customize_script()).map_err(io("writing customize.sh"))?;

    st.begin("root file system (mmdebstrap)");
    if o.reuse_rootfs && rootfs.join("usr/bin").is_dir() {
        say("  reusing the existing root file system (--reuse-rootfs); refreshing the appliance layer");
        st.run(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", overlay.display()))
                .arg(&rootfs),
        )?;
    } else {
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs).map_err(io(format!("removing {}", rootfs.display())))?;
        }
        let mut c = Command::new("mmdebstrap");
        c.env("SOURCE_DATE_EPOCH", &epoch)
            .arg("--variant=minbase")
            .arg("--mode=root")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("--dpkgopt=path-exclude=/usr/share/man/*")
            .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
            .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
            .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
            .arg(format!("--customize-hook=sync-in {} /", overlay.display()))
            .arg(format!(
                "--customize-hook=copy-in {} /tmp",
                script.display()
            ))
            .arg("--customize-hook=chroot \"$1\" sh /tmp/customize.sh")
            .arg(&o.suite)
            .arg(&rootfs)
            .arg(&o.sources);
        st.echo_prefix = Some("I: ");
        let r = st.run(&mut c);
        st.echo_prefix = None;
        r?;
    }

    st.begin("package list");
    let list = st.run(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}/var/lib/dpkg", rootfs.display()))
            .args(["-W", "-f", "${Package} ${Version}\n"]),
    )?;
    let mut packages: Vec<String> = list.lines().map(str::to_string).collect();
    packages.sort();
    let pkg_file = with_suffix(&o.out, ".packages");
    fs::write(&pkg_file, packages.join("\n") + "\n")
        .map_err(io(format!("writing {}", pkg_file.display())))?;
    say(&format!(
        "  {} packages (list in {}):",
        packages.len(),
        pkg_file.display()
    ));
    for chunk in packages.chunks(4) {
        say(&format!("    {}", chunk.join("  ")));
    }

    st.begin("kernel and initrd");
    let (kernel, initrd) = kernel_files(&rootfs.join("boot"))
        .ok_or_else(|| st.fail("no vmlinuz-*/initrd.img-* in the root file system's /boot"))?;
    fs::create_dir_all(staging.join("live")).map_err(io("creating staging/live"))?;
    fs::copy(
        rootfs.join("boot").join(&kernel),
        staging.join("live/vmlinuz"),
    )
    .map_err(io("copying the kernel"))?;
    fs::copy(
        rootfs.join("boot").join(&initrd),
        staging.join("live/initrd.img"),
    )
    .map_err(io("copying the initrd"))?;
    say(&format!("  {kernel}, {initrd}"));

    st.begin("squashfs (zstd)");
    st.run(
        Command::new("mksquashfs")
            .env_remove("SOURCE_DATE_EPOCH")
            .arg(&rootfs)
            .arg(staging.join("live/filesystem.squashfs"))
            .args([
                "-noappend",
                "-comp",
                "zstd",
                "-Xcompression-level",
                "19",
                "-b",
                "1M",
                "-no-progress",
                "-quiet",
            ])
            .args(["-mkfs-time", &epoch, "-all-time", &epoch])
            .args(["-e", "boot/efi"]),
    )?;
    let sq = fs::metadata(staging.join("live/filesystem.squashfs"))
        .map_err(io("squashfs"))?
        .len();
    say(&format!("  filesystem.squashfs: {} MB", sq / 1_000_000));

    st.begin("boot loaders (GRUB BIOS + UEFI)");
    let marker = format!(".tandem-iso-{}", o.source_date_epoch);
    fs::write(staging.join(&marker), "tandem installer medium\n").map_err(io("marker"))?;
    fs::create_dir_all(staging.join("boot/grub")).map_err(io("creating boot/grub"))?;
    fs::write(staging.join("boot/grub/grub.cfg"), iso_grub_cfg()).map_err(io("grub.cfg"))?;
    let early = work.join("early.cfg");
    fs::write(&early, early_cfg(&marker)).map_err(io("early.cfg"))?;
    for plat in ["i386-pc", "x86_64-efi"] {
        let dst = staging.join("boot/grub").join(plat);
        fs::create_dir_all(&dst).map_err(io("grub module dir"))?;
        for e in fs::read_dir(Path::new("/usr/lib/grub").join(plat)).map_err(io("grub modules"))? {
            let p = e.map_err(io("grub modules"))?.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("mod" | "lst")) {
                fs::copy(&p, dst.join(p.file_name().expect("name")))
                    .map_err(io("copying grub modules"))?;
            }
        }
    }
    let mut bios_mods: Vec<&str> = GRUB_MODULES_COMMON.to_vec();
    bios_mods.extend(["biosdisk", "vga_text"]);
    st.run(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc-eltorito", "-p", "/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(staging.join("boot/grub/bios.img"))
            .args(&bios_mods),
    )?;
    let mut efi_mods: Vec<&str> = GRUB_MODULES_COMMON.to_vec();
    efi_mods.extend(["efi_gop", "efi_uga", "all_video"]);
    let efi_bin = work.join("BOOTX64.EFI");
    st.run(
        Command::new("grub-mkimage")
            .args(["-O", "x86_64-efi", "-p", "/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(&efi_bin)
            .args(&efi_mods),
    )?;
    fs::create_dir_all(staging.join("EFI/BOOT")).map_err(io("EFI/BOOT"))?;
    fs::copy(&efi_bin, staging.join("EFI/BOOT/BOOTX64.EFI")).map_err(io("BOOTX64.EFI"))?;
    let efiboot = work.join("efiboot.img");
    let _ = fs::remove_file(&efiboot);
    touch_tree(&st, &work.join("BOOTX64.EFI"), &epoch)?;
    // FAT image for the El Torito UEFI entry / the appended ESP; fixed serial
    // and --invariant so it is the same on every build.
    st.run(
        Command::new("mkfs.vfat")
            .args(["-C", "--invariant", "-i", "7A4D0001", "-n", "TANDEMEFI"])
            .arg(&efiboot)
            .arg("4096"),
    )?;
    st.run(
        Command::new("mmd")
            .env("SOURCE_DATE_EPOCH", &epoch)
            .arg("-i")
            .arg(&efiboot)
            .args(["::/EFI", "::/EFI/BOOT"]),
    )?;
    st.run(
        Command::new("mcopy")
            .env("SOURCE_DATE_EPOCH", &epoch)
            .arg("-m")
            .arg("-i")
            .arg(&efiboot)
            .arg(&efi_bin)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    )?;

    if let Some(a) = &o.answer {
        fs::create_dir_all(staging.join("tandem")).map_err(io("staging/tandem"))?;
        fs::copy(a, staging.join("tandem/answer.toml")).map_err(io("copying the answer file"))?;
        say(&format!(
            "  embedded answer file {} as /tandem/answer.toml",
            a.display()
        ));
    }
    write_inner_sums(&staging)?;

    st.begin("hybrid ISO (xorriso)");
    touch_tree(&st, &staging, &epoch)?;
    if o.out.exists() {
        fs::remove_file(&o.out).map_err(io(format!("removing {}", o.out.display())))?;
    }
    st.run(
        Command::new("xorriso")
            .env("SOURCE_DATE_EPOCH", &epoch)
            .args([
                "-as",
                "mkisofs",
                "-iso-level",
                "3",
                "-full-iso9660-filenames",
                "-R",
                "-V",
                "TANDEM",
            ])
            .arg("-o")
            .arg(&o.out)
            .args([
                "--grub2-mbr",
                "/usr/lib/grub/i386-pc/boot_hybrid.img",
                "-partition_offset",
                "16",
                "--mbr-force-bootable",
            ])
            .arg("-append_partition")
            .arg("2")
            .arg("0xef")
            .arg(&efiboot)
            .args([
                "-appended_part_as_gpt",
                "-iso_mbr_part_type",
                "a2a0d0eb-e5b9-3344-87c0-68b6b72699c7",
            ])
            .args([
                "-c",
                "/boot/boot.cat",
                "-b",
                "/boot/grub/bios.img",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "--grub2-boot-info",
            ])
            .args([
                "-eltorito-alt-boot",
                "-e",
                "--interval:appended_partition_2:all::",
                "-no-emul-boot",
            ])
            .arg(&staging),
    )?;

    st.begin("checksums");
    let sha = sha256_file(&o.out)?;
    let size = fs::metadata(&o.out).map_err(io("ISO size"))?.len();
    let name = o
        .out
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let sums = o.out.parent().unwrap_or(Path::new(".")).join("SHA256SUMS");
    fs::write(&sums, format!("{sha}  {name}\n"))
        .map_err(io(format!("writing {}", sums.display())))?;
    say(&format!(
        "  {sha}  {name} ({} MB) -> {}",
        size / 1_000_000,
        sums.display()
    ));
    let seconds = st.finish();
    say(&format!("built {} in {:.0} s", o.out.display(), seconds));
    Ok(BuildReport {
        iso: o.out.clone(),
        size,
        sha256: sha,
        seconds,
        packages,
    })
}

/// Sets every file's time stamp in `root` to the epoch.
fn touch_tree(st: &Stages, root: &Path, epoch: &str) -> Result<()> {
    st.run(Command::new("find").arg(root).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        &format!("@{epoch}"),
        "{}",
        "+",
    ]))?;
    Ok(())
}

/// `SHA256SUMS` inside the ISO, over its files (sorted), except itself and the
/// injectable answer file.
fn write_inner_sums(staging: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(staging, &mut files)?;
    files.sort();
    let mut s = String::new();
    for f in files {
        let rel = f
            .strip_prefix(staging)
            .expect("under staging")
            .display()
            .to_string();
        if rel == "SHA256SUMS" || rel == "tandem/answer.toml" {
            continue;
        }
        s.push_str(&format!("{}  ./{rel}\n", sha256_file(&f)?));
    }
    fs::write(staging.join("SHA256SUMS"), s).map_err(io("writing the ISO's SHA256SUMS"))
}

/// Hex SHA-256 of a file.
pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = fs::File::open(p).map_err(io(format!("opening {}", p.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(format!("reading {}", p.display())))?;
    Ok(hex::encode(h.finalize()))
}

/// `vmlinuz-<v>` and `initrd.img-<v>` of the newest kernel in `boot`.
pub fn kernel_files(boot: &Path) -> Option<(String, String)> {
    let mut kernels: Vec<String> = fs::read_dir(boot)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    let k = kernels.pop()?;
    let i = format!("initrd.img-{}", &k["vmlinuz-".len()..]);
    boot.join(&i).exists().then_some((k, i))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Full path of a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `tandem-iso inject`: a copy of `iso` with `answer` as /tandem/answer.toml,
/// boot records replayed (no rebuild).
pub fn inject(iso: &Path, answer: &Path, out: &Path) -> Result<()> {
    let mut st = Stages::new(2);
    st.begin("validate answer file");
    let text = fs::read_to_string(answer).map_err(io(format!("reading {}", answer.display())))?;
    crate::answer::parse(&text).map_err(|problems| Error::Answer {
        origin: answer.display().to_string(),
        problems,
    })?;
    st.begin("write ISO with the answer file (xorriso)");
    if out.exists() {
        fs::remove_file(out).map_err(io(format!("removing {}", out.display())))?;
    }
    st.run(
        Command::new("xorriso")
            .arg("-indev")
            .arg(iso)
            .arg("-outdev")
            .arg(out)
            .args(["-boot_image", "any", "replay"])
            .arg("-map")
            .arg(answer)
            .arg("/tandem/answer.toml"),
    )?;
    let t = st.finish();
    say(&format!("wrote {} in {t:.1} s", out.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_menu_has_serial_console_and_live_boot() {
        let c = iso_grub_cfg();
        assert!(c.contains("serial --unit=0 --speed=115200"));
        assert!(c.contains("console=ttyS0,115200n8"));
        assert!(c.contains("boot=live"));
        assert!(c.contains("tandem.answer=none"));
    }

    #[test]
    fn kernel_files_pick_matching_initrd() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "vmlinuz-6.1.0-1-amd64",
            "initrd.img-6.1.0-1-amd64",
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
        ] {
            fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(
            kernel_files(d.path()),
            Some((
                "vmlinuz-6.1.0-9-amd64".into(),
                "initrd.img-6.1.0-9-amd64".into()
            ))
        );
    }
}
