//! First boot of an installed node (`tandem-iso firstboot`, unit
//! `tandem-firstboot.service`, before `tandem.service`): runs `tandem init` or
//! `tandem join` as the answer file says, once. Idempotent: a done marker ends it
//! at once, and each step checks whether it already happened (TLS material
//! present) before acting, so a power cut half way is repaired on the next boot.
//!
//! `tandem-iso settings` (unit `tandem-settings.service`, after `tandem.service`)
//! applies the answer file's cluster-wide mail settings on the init node once
//! the node answers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::answer::{Answer, Bootstrap};
use crate::error::{io, Error, Result};
use crate::render;
use crate::stage::{say, Stages};

/// Paths used by first boot (overridable for tests).
#[derive(Debug, Clone)]
pub struct Paths {
    /// Node config.
    pub config: PathBuf,
    /// Installer state (validated answer, JSON).
    pub state: PathBuf,
    /// Data folder.
    pub data_dir: PathBuf,
    /// `tandem` binary.
    pub tandem: PathBuf,
    /// Owner (`user:group`) of the data folder after bootstrap; none in tests.
    pub owner: Option<String>,
    /// Join attempts (5 s apart) before giving up.
    pub join_attempts: u32,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            config: render::CONFIG_PATH.into(),
            state: render::INSTALL_STATE.into(),
            data_dir: render::DATA_DIR.into(),
            tandem: "/usr/local/bin/tandem".into(),
            owner: Some("tandem:tandem".into()),
            join_attempts: 360,
        }
    }
}

fn load(p: &Paths) -> Result<Answer> {
    let text =
        fs::read_to_string(&p.state).map_err(io(format!("reading {}", p.state.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Stage {
        stage: "first boot".into(),
        message: format!("{} is not a valid installer state: {e}", p.state.display()),
    })
}

/// Runs first boot; returns the join token when this node initialised the cluster.
pub fn firstboot(p: &Paths) -> Result<Option<String>> {
    let done = p.data_dir.join(".firstboot-done");
    if done.exists() {
        say(&format!(
            "tandem first boot: already done ({} exists)",
            done.display()
        ));
        return Ok(None);
    }
    let a = load(p)?;
    let mut st = Stages::new(3);
    say(&format!(
        "tandem first boot: node {} ({}), {}",
        a.node_id,
        a.role.as_str(),
        render::bootstrap_words(&a)
    ));
    fs::create_dir_all(&p.data_dir).map_err(io(format!("creating {}", p.data_dir.display())))?;
    let tls = p.data_dir.join("tls");
    let mut token = None;
    match &a.bootstrap {
        Bootstrap::Init => {
            st.begin("tandem init");
            let tok_file = tls.join("join.token");
            if tok_file.exists() {
                say("  already initialised (join token present)");
            } else {
                st.run(
                    Command::new(&p.tandem)
                        .arg("init")
                        .arg("--config")
                        .arg(&p.config)
                        .arg("--json"),
                )?;
            }
            let t = fs::read_to_string(&tok_file)
                .map_err(io(format!("reading {}", tok_file.display())))?;
            let t = t.trim().to_string();
            say(&format!("tandem: cluster `{}` created. Join token for the other nodes' answer files (cluster.join_token):", a.cluster_name));
            say(&format!("TANDEM-JOIN-TOKEN {t}"));
            token = Some(t);
        }
        Bootstrap::Join { address, token: jt } => {
            st.begin(&format!("tandem join {address}"));
            if tls.join("node.pem").exists() {
                say("  already enrolled (node certificate present)");
            } else {
                let mut last = None;
                for attempt in 1..=p.join_attempts {
                    match st.run(
                        Command::new(&p.tandem)
                            .arg("join")
                            .arg(address.to_string())
                            .arg("--token")
                            .arg(jt)
                            .arg("--config")
                            .arg(&p.config),
                    ) {
                        Ok(out) => {
                            say(&format!("  {}", out.trim()));
                            last = None;
                            break;
                        }
                        Err(e) => {
                            if attempt == 1 || attempt % 12 == 0 {
                                say(&format!(
                                    "  join attempt {attempt}/{} failed, retrying every 5 s: {e}",
                                    p.join_attempts
                                ));
                            }
                            last = Some(e);
                            std::thread::sleep(Duration::from_secs(5));
                        }
                    }
                }
                if let Some(e) = last {
                    return Err(e);
                }
            }
        }
    }
    st.begin("hand the data folder to the service user");
    if let Some(owner) = &p.owner {
        st.run(Command::new("chown").arg("-R").arg(owner).arg(&p.data_dir))?;
    }
    st.begin("done marker");
    fs::write(&done, "ok\n").map_err(io(format!("writing {}", done.display())))?;
    st.finish();
    say("tandem first boot: done; starting tandem.service");
    Ok(token)
}

/// Applies `[smtp]`/`[alarms]` from the answer file through `tandem config set`
/// once the local node answers (init node only; idempotent with a marker).
pub fn settings(p: &Paths) -> Result<()> {
    let done = p.data_dir.join(".settings-done");
    if done.exists() {
        return Ok(());
    }
    let a = load(p)?;
    let list = render::cluster_settings(&a);
    if list.is_empty() || a.bootstrap != Bootstrap::Init {
        fs::write(&done, "nothing to apply\n")
            .map_err(io(format!("writing {}", done.display())))?;
        return Ok(());
    }
    // HTTPS (render::node_config): the CLI trusts the cluster CA through the config.
    let api = format!("https://127.0.0.1:{}", a.api_listen.port());
    let mut st = Stages::new(1);
    st.begin("apply mail settings");
    let mut last = String::new();
    for (key, value) in &list {
        let mut ok = false;
        for _ in 0..120 {
            let shown = if key.contains("password") {
                "***"
            } else {
                value.as_str()
            };
            match st.run(
                Command::new(&p.tandem)
                    .args(["config", "set", key, value])
                    .arg("--config")
                    .arg(&p.config)
                    .args(["--api", &api]),
            ) {
                Ok(_) => {
                    say(&format!("  {key} = {shown}"));
                    ok = true;
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(Duration::from_secs(5));
                }
            }
        }
        if !ok {
            return Err(st.fail(format!("could not set {key}: {last}")));
        }
    }
    fs::write(&done, "ok\n").map_err(io(format!("writing {}", done.display())))?;
    st.finish();
    Ok(())
}

/// Where the state file is, for messages.
pub fn state_path() -> &'static Path {
    Path::new(render::INSTALL_STATE)
}
