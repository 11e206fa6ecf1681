//! `tandem-iso`: builds the installable hybrid ISO image, and (inside the image)
//! runs the installer, first boot and the VIP stop step.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_iso::{answer, build, error::Error, firstboot, install, stage::say, vip};

#[derive(Parser, Debug)]
#[command(
    name = "tandem-iso",
    version,
    about = "Build the tandem installer ISO; installer and first-boot steps (docs/install.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the ISO (Debian 12, mmdebstrap, squashfs live installer, BIOS+UEFI hybrid).
    Build {
        /// Output ISO file.
        #[arg(long)]
        out: PathBuf,
        /// Answer file to embed (validated first).
        #[arg(long)]
        answer: Option<PathBuf>,
        /// The `tandem` binary to package.
        #[arg(long, default_value = "target/release/tandem")]
        tandem: PathBuf,
        /// The `tandem-iso` binary to package (default: this program).
        #[arg(long)]
        tandem_iso: Option<PathBuf>,
        /// The appliance layer folder.
        #[arg(long, default_value = "appliance")]
        appliance: PathBuf,
        /// Work folder (kept between builds).
        #[arg(long, default_value = "/var/tmp/tandem-iso-work")]
        work_dir: PathBuf,
        /// apt sources handed to mmdebstrap (default: this machine's).
        #[arg(long)]
        sources: Option<PathBuf>,
        /// Debian suite.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Reuse the root file system of the previous build in --work-dir.
        #[arg(long)]
        reuse_rootfs: bool,
        /// Echo every command's output.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Put an answer file into an existing ISO (no rebuild).
    Inject {
        #[arg(long)]
        iso: PathBuf,
        #[arg(long)]
        answer: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an answer file; prints every problem with its key and fix.
    ValidateAnswer {
        /// The answer file.
        file: PathBuf,
        /// Print the resulting node config.
        #[arg(long)]
        print_config: bool,
    },
    /// (live system) Install from the answer file or the console dialogue.
    Install {
        /// Answer file (default: kernel command line, TANDEM-ANSWER file system, ISO).
        #[arg(long)]
        answer: Option<PathBuf>,
        /// Terminal for the dialogue.
        #[arg(long, default_value = "/dev/tty1")]
        tty: PathBuf,
        /// Do not reboot / power off at the end.
        #[arg(long)]
        no_finish: bool,
    },
    /// (installed system) First boot: tandem init or join, once.
    Firstboot,
    /// (installed system) Apply the answer file's mail settings once the node runs.
    Settings,
    /// Remove the VIP of a node config from every interface (tandem.service stop step).
    VipRelease {
        #[arg(long, default_value = "/etc/tandem/tandem.toml")]
        config: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build {
            out,
            answer,
            tandem,
            tandem_iso,
            appliance,
            work_dir,
            sources,
            suite,
            reuse_rootfs,
            verbose,
        } => {
            let sources = match sources.or_else(build::host_sources) {
                Some(s) => s,
                None => {
                    eprintln!("error: no apt sources found in /etc/apt; pass --sources FILE");
                    return ExitCode::FAILURE;
                }
            };
            let epoch = std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    say(&format!(
                        "SOURCE_DATE_EPOCH not set; using {now} (set it to rebuild the same image)"
                    ));
                    now
                });
            let self_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tandem-iso"));
            let o = build::BuildOptions {
                out,
                answer,
                tandem_bin: tandem,
                tandem_iso_bin: tandem_iso.unwrap_or(self_exe),
                appliance_dir: appliance,
                work_dir,
                sources,
                suite,
                source_date_epoch: epoch,
                reuse_rootfs,
                verbose,
            };
            build::build(&o).map(|_| ())
        }
        Cmd::Inject { iso, answer, out } => build::inject(&iso, &answer, &out),
        Cmd::ValidateAnswer { file, print_config } => match std::fs::read_to_string(&file) {
            Err(e) => Err(Error::Io {
                context: format!("reading {}", file.display()),
                source: e,
            }),
            Ok(text) => match answer::parse(&text) {
                Ok(a) => {
                    println!(
                        "{}: valid (node {}, {}, disk {:?})",
                        file.display(),
                        a.node_id,
                        tandem_iso::render::bootstrap_words(&a),
                        a.disk
                    );
                    for w in a.warnings() {
                        println!("warning: {w}");
                    }
                    if print_config {
                        print!("{}", tandem_iso::render::node_config(&a));
                    }
                    Ok(())
                }
                Err(problems) => Err(Error::Answer {
                    origin: file.display().to_string(),
                    problems,
                }),
            },
        },
        Cmd::Install {
            answer,
            tty,
            no_finish,
        } => {
            let r = install::install(&install::InstallOptions {
                answer,
                tty,
                no_finish,
            });
            if let Err(e) = &r {
                say(&format!("\nINSTALLATION STOPPED: {e}"));
                if matches!(e, Error::Answer { .. }) {
                    say("No disk was touched. Correct the answer file and boot the installer again.");
                } else {
                    say("Fix the cause and boot the installer again; see docs/install.md, troubleshooting.");
                }
                return ExitCode::FAILURE;
            }
            Ok(())
        }
        Cmd::Firstboot => {
            tandem_iso::stage::add_consoles(&["/dev/ttyS0", "/dev/tty1"]);
            firstboot::firstboot(&firstboot::Paths::default()).map(|_| ())
        }
        Cmd::Settings => firstboot::settings(&firstboot::Paths::default()),
        Cmd::VipRelease { config, dry_run } => vip::release(&config, dry_run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}
