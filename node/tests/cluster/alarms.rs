//! Alarm mail against a real SMTP server (aiosmtpd, Debian package python3-aiosmtpd,
//! installed by scripts/setup.sh): `tandem alarm test` over plain SMTP and STARTTLS,
//! and the error an operator sees with bad settings.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tandem_alarms::outbox::{QueuedMail, QUEUE_PREFIX};
use tandem_api::{AlarmHistory, AlarmStatus, AlarmTestSent};
use tokio::io::AsyncBufReadExt;

use super::*;

/// Debian's interpreter: python3-aiosmtpd is installed for it, not for a pyenv python.
const PYTHON: &str = "/usr/bin/python3";

/// aiosmtpd server that stores each mail as `<dir>/NNNN.eml` (with `X-Test-Rcpt` and
/// `X-Test-Tls` headers in front), optionally requiring STARTTLS.
const SERVER_PY: &str = r#"
import asyncio, os, ssl, sys, time
from aiosmtpd.controller import Controller

port, out = int(sys.argv[1]), sys.argv[2]
kwargs = {}
if len(sys.argv) > 4:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    if os.environ.get("SMTP_TEST_MODE") == "implicit":
        kwargs = {"ssl_context": ctx}
    else:
        kwargs = {"tls_context": ctx, "require_starttls": True}
if os.environ.get("SMTP_TEST_AUTH"):
    from aiosmtpd.smtp import AuthResult
    want_user, want_pass = os.environ["SMTP_TEST_AUTH"].split(":", 1)
    def check(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login.decode() == want_user and auth_data.password.decode() == want_pass
        return AuthResult(success=ok, handled=False)
    kwargs.update({"authenticator": check, "auth_required": True, "auth_require_tls": False})

class Store:
    def __init__(self):
        self.n = 0
    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tmp = os.path.join(out, "%04d.tmp" % self.n)
        with open(tmp, "wb") as f:
            f.write(("X-Test-Rcpt: %s\r\n" % ",".join(envelope.rcpt_tos)).encode())
            tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
            f.write(("X-Test-Tls: %s\r\n" % tls).encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(out, "%04d.eml" % self.n))
        return "250 OK stored"

c = Controller(Store(), hostname="127.0.0.1", port=port, **kwargs)
c.start()
print("READY", flush=True)
while True:
    time.sleep(3600)
"#;

/// A running aiosmtpd; killed on drop.
struct SmtpServer {
    port: u16,
    dir: PathBuf,
    _child: tokio::process::Child,
}

impl SmtpServer {
    /// `None` (with a message) when /usr/bin/python3 or aiosmtpd is missing.
    async fn start(root: &Path, tls: Option<(&Path, &Path)>) -> Option<SmtpServer> {
        SmtpServer::start_on(root, tls, None).await
    }

    /// Like `start`, on a given port (a server that comes up late).
    async fn start_on(
        root: &Path,
        tls: Option<(&Path, &Path)>,
        port: Option<u16>,
    ) -> Option<SmtpServer> {
        SmtpServer::start_opts(root, tls, port, &[]).await
    }

    /// With environment for the server script: `SMTP_TEST_MODE=implicit` (TLS from
    /// the first byte instead of STARTTLS), `SMTP_TEST_AUTH=user:pass` (AUTH required).
    async fn start_opts(
        root: &Path,
        tls: Option<(&Path, &Path)>,
        port: Option<u16>,
        env: &[(&str, &str)],
    ) -> Option<SmtpServer> {
        let probe = std::process::Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            _ => {
                eprintln!(
                    "SKIPPED: {PYTHON} with aiosmtpd not found; install it with \
                     `apt-get install python3-aiosmtpd` (scripts/setup.sh does)"
                );
                return None;
            }
        }
        let dir = root.join(format!("smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("server.py");
        std::fs::write(&script, SERVER_PY).unwrap();
        let mail_dir = dir.join("mails");
        std::fs::create_dir_all(&mail_dir).unwrap();
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let mut cmd = tokio::process::Command::new(PYTHON);
        cmd.arg(&script).arg(port.to_string()).arg(&mail_dir);
        cmd.envs(env.iter().copied());
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn aiosmtpd");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        assert!(
            matches!(&ready, Ok(Ok(Some(l))) if l == "READY"),
            "aiosmtpd did not start: {ready:?}"
        );
        Some(SmtpServer {
            port,
            dir: mail_dir,
            _child: child,
        })
    }

    fn mails(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    async fn wait_mails(&self, n: usize) -> Vec<String> {
        let t0 = Instant::now();
        while self.mails().len() < n && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Give a duplicate the chance to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.mails()
    }
}

/// The value of a header (first occurrence, unfolded).
fn header(mail: &str, name: &str) -> Option<String> {
    let head = mail.split("\r\n\r\n").next().unwrap_or(mail);
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

async fn set(c: &Client, key: &str, value: Value) {
    c.config_set(key, &value)
        .await
        .unwrap_or_else(|e| panic!("setting {key}: {e}"));
}

/// The mails queued in the replicated outbox (`outbox.*` config entries), as stored.
async fn outbox(c: &Client) -> Result<Vec<QueuedMail>, ClientError> {
    let list = c.config_list(Some(QUEUE_PREFIX)).await?;
    Ok(list
        .config
        .into_iter()
        .map(|e| {
            serde_json::from_value(e.value.clone())
                .unwrap_or_else(|err| panic!("{} is not a queued mail: {err}: {e:?}", e.key))
        })
        .collect())
}

/// The `--json` output of a successful CLI run, decoded as `T`.
fn cli_json<T: DeserializeOwned>(out: &std::process::Output) -> T {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not the documented --json answer: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn alarm_test(cluster: &LocalCluster, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(exe())
        .args(["alarm", "test", "--json", "--config"])
        .arg(&cluster.nodes[0].config)
        .args(extra)
        .env("TANDEM_LOG", "warn")
        .output()
        .await
        .unwrap()
}

async fn one_node() -> LocalCluster {
    let mut c = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").expect("prepare");
    c.bootstrap().await.expect("bootstrap");
    c
}

/// Plain SMTP to 127.0.0.1:`port`, alarms mailed at once (no grouping window) to
/// the list `noc` = noc@example.com, routed by default.
async fn mail_to_noc(c: &Client, port: u16) {
    set(c, "smtp.host", json!("127.0.0.1")).await;
    set(c, "smtp.port", json!(port)).await;
    set(c, "smtp.security", json!("none")).await;
    set(c, "alarm.group_window_s", json!(0)).await;
    route_to_noc(c).await;
}

/// Alarms routed by default to the list `noc` = noc@example.com.
///
/// The free space of the machine running the tests is not the test's to control: a
/// CI machine whose disk is over 90 % full raises `storage.disk_space_low` on every
/// node, one more mail than the test counts. Tests that count mails turn it off.
async fn route_to_noc(c: &Client) {
    set(c, "alarm.disabled", json!(["storage.disk_space_low"])).await;
    set(c, "alarm.recipients.noc", json!(["noc@example.com"])).await;
    set(c, "alarm.route.default", json!(["noc"])).await;
    // The alarm service applies settings on its next 1 s tick: wait until it has.
    let t0 = Instant::now();
    loop {
        let st = c.alarms().await.unwrap();
        if st.active.iter().all(|a| a.id != "storage.disk_space_low") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not applied: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mail_over_plain_smtp_arrives_once_and_bad_port_names_host_port_cause() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), None).await else {
        return;
    };
    let cluster = one_node().await;
    let c = cluster.nodes[0].client().unwrap();
    set(&c, "smtp.host", json!("127.0.0.1")).await;
    set(&c, "smtp.port", json!(smtp.port)).await;
    set(&c, "smtp.security", json!("none")).await;
    set(&c, "smtp.from", json!("PBX <pbx@example.com>")).await;
    set(
        &c,
        "alarm.recipients.noc",
        json!(["noc@example.com", "oncall@example.com"]),
    )
    .await;

    let out = alarm_test(&cluster, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: AlarmTestSent = cli_json(&out);
    let message_id = v.message_id.clone();
    assert_eq!(v.server, format!("127.0.0.1:{}", smtp.port));

    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1, "exactly one mail: {mails:#?}");
    let m = &mails[0];
    assert_eq!(
        header(m, "Subject").as_deref(),
        Some("[INFO][tandem][node-1] Test mail")
    );
    assert_eq!(header(m, "Message-ID"), Some(message_id));
    assert_eq!(
        header(m, "X-Test-Rcpt").as_deref(),
        Some("noc@example.com,oncall@example.com")
    );
    assert!(header(m, "From").unwrap().contains("pbx@example.com"));
    assert!(m.contains("alarm mail reaches you"), "{m}");

    // --to overrides the lists.
    let out = alarm_test(&cluster, &["--to", "me@example.com"]).await;
    assert!(out.status.success());
    let mails = smtp.wait_mails(2).await;
    assert_eq!(mails.len(), 2);
    assert_eq!(
        header(&mails[1], "X-Test-Rcpt").as_deref(),
        Some("me@example.com")
    );

    // Wrong port: the CLI fails with host, port and cause.
    let bad = closed_port();
    set(&c, "smtp.port", json!(bad)).await;
    let out = alarm_test(&cluster, &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{bad}")) && err.contains("connection refused"),
        "{err}"
    );
    // The API answers 502 with the same text.
    let api_err = c.alarm_test(None).await.unwrap_err();
    assert!(
        api_err.status() == Some(502) && api_err.to_string().contains(&format!("127.0.0.1:{bad}")),
        "{api_err}"
    );
    // A fallback smarthost takes over when the primary is down.
    set(
        &c,
        "smtp.fallback_host",
        json!(format!("127.0.0.1:{}", smtp.port)),
    )
    .await;
    let out = alarm_test(&cluster, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(smtp.wait_mails(3).await.len(), 3);
    // Bad settings are refused before they are replicated: 400 naming the key, and
    // the setting in force is unchanged (the test mail still goes out).
    let e = c
        .config_set("smtp.security", &json!("ssl"))
        .await
        .expect_err("smtp.security = ssl must be refused");
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(
        e.to_string().contains("smtp.security") && e.to_string().contains("none, starttls, tls"),
        "{e}"
    );
    assert_eq!(
        c.config_get("smtp.security").await.unwrap().value,
        json!("none")
    );
    // The CLI says the same.
    let out = tokio::process::Command::new(exe())
        .args(["config", "set", "smtp.security", "ssl", "--config"])
        .arg(&cluster.nodes[0].config)
        .env("TANDEM_LOG", "warn")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("HTTP 400") && err.contains("smtp.security"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mail_over_starttls_with_a_private_ca() {
    let root = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert_path, key_path) = (root.path().join("smtp.pem"), root.path().join("smtp.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), Some((&cert_path, &key_path))).await else {
        return;
    };
    let cluster = one_node().await;
    let c = cluster.nodes[0].client().unwrap();
    set(&c, "smtp.host", json!("127.0.0.1")).await;
    set(&c, "smtp.port", json!(smtp.port)).await;
    set(&c, "smtp.security", json!("starttls")).await;
    set(&c, "alarm.recipients.noc", json!(["noc@example.com"])).await;

    // Without the CA the server certificate is not trusted: a TLS error, named.
    let out = alarm_test(&cluster, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("127.0.0.1:{}", smtp.port)) && err.contains("TLS failure"),
        "{err}"
    );
    assert!(smtp.mails().is_empty());

    eprintln!("untrusted certificate: {err}");
    // Plain SMTP against a server that requires STARTTLS is refused by the server.
    set(&c, "smtp.security", json!("none")).await;
    let out = alarm_test(&cluster, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("plain against required STARTTLS: {err}");
    assert!(!out.status.success());
    assert!(
        err.contains("HTTP 502") && err.contains("530") && err.contains("smtp.security"),
        "{err}"
    );
    assert!(smtp.mails().is_empty());

    set(&c, "smtp.security", json!("starttls")).await;
    set(&c, "smtp.ca_file", json!(cert_path.display().to_string())).await;
    let out = alarm_test(&cluster, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: AlarmTestSent = cli_json(&out);
    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(header(&mails[0], "X-Test-Tls").as_deref(), Some("True"));
    assert_eq!(
        header(&mails[0], "Message-ID").as_deref(),
        Some(v.message_id.as_str())
    );
}

async fn alarm_cmd<T: DeserializeOwned>(cluster: &LocalCluster, what: &str) -> T {
    let out = tokio::process::Command::new(exe())
        .args(["alarm", what, "--json", "--config"])
        .arg(&cluster.nodes[0].config)
        .env("TANDEM_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli_json(&out)
}

/// The node's own alarm pipeline (sources → rules → routing → outbox → SMTP):
/// switching alarm maintenance mode on and off mails a note each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_mails_alarm_notes_through_its_outbox() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), None).await else {
        return;
    };
    let cluster = one_node().await;
    let c = cluster.nodes[0].client().unwrap();
    mail_to_noc(&c, smtp.port).await;
    let v: AlarmStatus = alarm_cmd(&cluster, "list").await;
    assert!(v.active.is_empty(), "{v:?}");

    set(&c, "alarm.maintenance", json!(true)).await;
    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(
        header(&mails[0], "Subject").as_deref(),
        Some("[INFO][tandem][node-1] Maintenance mode")
    );
    assert!(mails[0].contains("switched on"), "{}", mails[0]);
    let v: AlarmStatus = alarm_cmd(&cluster, "list").await;
    assert!(v.maintenance, "{v:?}");
    assert_eq!(v.mails_sent, 1, "{v:?}");
    let h: AlarmHistory = alarm_cmd(&cluster, "history").await;
    let newest = h
        .history
        .first()
        .unwrap_or_else(|| panic!("no history: {h:?}"));
    assert_eq!(newest.outcome, "sent", "{h:?}");
    assert_eq!(
        Some(newest.message_id.as_str()),
        header(&mails[0], "Message-ID").as_deref()
    );

    set(&c, "alarm.maintenance", json!(false)).await;
    let mails = smtp.wait_mails(2).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(mails[1].contains("switched off"), "{}", mails[1]);
    assert_ne!(
        header(&mails[0], "Message-ID"),
        header(&mails[1], "Message-ID")
    );
}

/// A standby dies: the master mails "Node down" once (the other nodes mail nothing),
/// then "Node back" when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_mails_node_down_and_node_back() {
    node_down_and_back(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_mails_node_down_and_node_back_over_starttls() {
    node_down_and_back(true).await;
}

async fn node_down_and_back(starttls: bool) {
    let root = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert_path, key_path) = (root.path().join("smtp.pem"), root.path().join("smtp.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = starttls.then_some((cert_path.as_path(), key_path.as_path()));
    let Some(smtp) = SmtpServer::start(root.path(), tls).await else {
        return;
    };
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let c = cluster.nodes[m].client().unwrap();
    set(&c, "smtp.host", json!("127.0.0.1")).await;
    set(&c, "smtp.port", json!(smtp.port)).await;
    if starttls {
        set(&c, "smtp.security", json!("starttls")).await;
        set(&c, "smtp.ca_file", json!(cert_path.display().to_string())).await;
    } else {
        set(&c, "smtp.security", json!("none")).await;
    }
    set(&c, "alarm.group_window_s", json!(0)).await;
    route_to_noc(&c).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(smtp.mails().is_empty(), "{:#?}", smtp.mails());

    let victim = (m + 1) % 3;
    let name = format!("node-{}", cluster.nodes[victim].id);
    cluster.nodes[victim].kill();
    let t0 = Instant::now();
    while smtp.mails().is_empty() && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(
        header(&mails[0], "Subject"),
        Some(format!("[CRITICAL][tandem][{name}] Node down"))
    );
    assert!(mails[0].contains("What to do:"), "{}", mails[0]);
    let tls_seen = if starttls { "True" } else { "False" };
    assert_eq!(header(&mails[0], "X-Test-Tls").as_deref(), Some(tls_seen));

    cluster.start(victim).unwrap();
    let t0 = Instant::now();
    while smtp.mails().len() < 2 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mails = smtp.wait_mails(2).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(
        header(&mails[1], "Subject"),
        Some(format!("[CLEARED][tandem][{name}] Node back"))
    );
}

/// The master dies: the new master groups "Master changed" and "Node down" (the old
/// master) into one mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_mailed_once_by_the_new_master_grouped() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), None).await else {
        return;
    };
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let c = cluster.nodes[m].client().unwrap();
    set(&c, "smtp.host", json!("127.0.0.1")).await;
    set(&c, "smtp.port", json!(smtp.port)).await;
    set(&c, "smtp.security", json!("none")).await;
    set(&c, "alarm.group_window_s", json!(5)).await;
    route_to_noc(&c).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = format!("node-{}", cluster.nodes[m].id);
    cluster.nodes[m].kill();
    let t0 = Instant::now();
    while smtp.mails().is_empty() && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let subject = header(&mails[0], "Subject").unwrap();
    assert!(
        subject.starts_with("[CRITICAL][tandem][")
            && subject.contains("2 alarms: Master changed, Node down"),
        "{subject}"
    );
    assert!(mails[0].contains("cluster.master_changed"));
    assert!(
        mails[0].contains(&format!("cluster {}, {old}", "tandem")),
        "{}",
        mails[0]
    );
    let words = mails[0].split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains(&format!("The previous master was {old}.")),
        "{}",
        mails[0]
    );
}

/// Mails queued on the master while the SMTP server is down survive the master's
/// death: the new master sends them (same Message-ID), none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mails_survive_the_masters_death_and_go_out_once() {
    let root = tempfile::tempdir().unwrap();
    // Is aiosmtpd there at all? (skips with a message if not)
    if SmtpServer::start(root.path(), None).await.is_none() {
        return;
    }
    let port = closed_port();
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let c = cluster.nodes[m].client().unwrap();
    mail_to_noc(&c, port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A standby dies: "node down" is queued on the master, the SMTP server is down.
    let victim = (m + 1) % 3;
    let victim_name = format!("node-{}", cluster.nodes[victim].id);
    cluster.nodes[victim].kill();
    let t0 = Instant::now();
    let queued = loop {
        let q = outbox(&c).await.unwrap();
        if !q.is_empty() {
            break q;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "nothing queued in the replicated outbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let queued_ids: HashSet<String> = queued.into_iter().map(|q| q.message_id).collect();
    // Now the master dies with the mail still queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_master = format!("node-{}", cluster.nodes[m].id);
    cluster.nodes[m].kill();
    // The remaining node is alone with a dead standby and a dead master: bring the
    // standby back so there is a quorum and a new master.
    cluster.start(victim).unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(nm) = cluster.master().await {
            if nm != m {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no new master");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SMTP comes back: every queued mail arrives, once.
    let smtp = SmtpServer::start_on(root.path(), None, Some(port))
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        let ids: HashSet<String> = smtp
            .mails()
            .iter()
            .filter_map(|m| header(m, "Message-ID"))
            .collect();
        if queued_ids.is_subset(&ids) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "queued mails {queued_ids:?} not all delivered; got {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = smtp.mails();
    let mut count: std::collections::HashMap<String, usize> = Default::default();
    for m in &mails {
        *count.entry(header(m, "Message-ID").unwrap()).or_default() += 1;
    }
    for (id, n) in &count {
        assert_eq!(*n, 1, "{id} delivered {n} times: {mails:#?}");
    }
    let subjects: Vec<String> = mails.iter().filter_map(|m| header(m, "Subject")).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.contains(&victim_name) && s.contains("Node down")),
        "{subjects:?}"
    );
    eprintln!("delivered after the failover (old master {old_master}): {subjects:#?}");
    // Delivered mails leave the replicated outbox.
    let nc = cluster.nodes[victim].client().unwrap();
    let t0 = Instant::now();
    loop {
        let q = outbox(&nc).await.unwrap();
        if q.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "outbox not emptied: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The old master comes back with its stale copy of the outbox (the entries were
    // deleted while it was down): it must not send them again (issue 15, defect 2).
    cluster.start(m).unwrap();
    cluster
        .wait_health(m, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mails = smtp.mails();
    let mut count: std::collections::HashMap<String, usize> = Default::default();
    for mail in &mails {
        *count
            .entry(header(mail, "Message-ID").unwrap())
            .or_default() += 1;
    }
    for (id, n) in &count {
        assert_eq!(
            *n, 1,
            "{id} delivered {n} times after {old_master} restarted: {mails:#?}"
        );
    }
}

/// A node that goes down and up again and again is reported as flapping once, not
/// with a mail per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_gives_one_flapping_mail_not_dozens() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), None).await else {
        return;
    };
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let c = cluster.nodes[m].client().unwrap();
    mail_to_noc(&c, smtp.port).await;
    set(&c, "alarm.flap_flips", json!(4)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = (m + 1) % 3;
    let name = format!("node-{}", cluster.nodes[victim].id);
    let down = |v: &AlarmStatus| {
        v.active
            .iter()
            .any(|a| a.id == "cluster.node_down" && a.subject == name)
    };
    // Six down/up cycles (12 state changes).
    for cycle in 0..6 {
        cluster.nodes[victim].kill();
        let t0 = Instant::now();
        while !down(&c.alarms().await.unwrap()) {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "cycle {cycle}: node down not seen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.start(victim).unwrap();
        let t0 = Instant::now();
        while down(&c.alarms().await.unwrap()) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "cycle {cycle}: node back not seen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let subjects: Vec<String> = smtp
        .mails()
        .iter()
        .filter_map(|m| header(m, "Subject"))
        .collect();
    eprintln!("{subjects:#?}");
    let flapping = subjects.iter().filter(|s| s.contains("flapping")).count();
    assert_eq!(flapping, 1, "{subjects:#?}");
    // down, back, down (4th change: flapping) — then silence for the rest.
    assert!(
        subjects.len() <= 4,
        "{} mails for 12 changes: {subjects:#?}",
        subjects.len()
    );
}

/// The SMTP server is down for two minutes while alarms fire; when it is back,
/// every mail queued meanwhile is delivered, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_two_minutes_then_every_mail_arrives_once() {
    let root = tempfile::tempdir().unwrap();
    if SmtpServer::start(root.path(), None).await.is_none() {
        return;
    }
    let port = closed_port();
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let c = cluster.nodes[m].client().unwrap();
    mail_to_noc(&c, port).await;
    set(&c, "alarm.retry_first_s", json!(5)).await;
    set(&c, "alarm.retry_max_s", json!(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every Message-ID that passes through the replicated outbox while SMTP is down.
    let mut queued: HashSet<String> = HashSet::new();
    let (a, b) = ((m + 1) % 3, (m + 2) % 3);
    let t0 = Instant::now();
    let mut step = 0;
    while t0.elapsed() < Duration::from_secs(120) {
        let s = t0.elapsed().as_secs();
        let due = [5, 35, 65, 95];
        if step < due.len() && s >= due[step] {
            match step {
                0 => cluster.nodes[a].kill(),
                1 => cluster.start(a).unwrap(),
                2 => cluster.nodes[b].kill(),
                _ => cluster.start(b).unwrap(),
            }
            step += 1;
        }
        if let Ok(q) = outbox(&c).await {
            queued.extend(q.into_iter().map(|q| q.message_id));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(queued.len() >= 4, "too few mails queued: {queued:?}");
    let smtp = SmtpServer::start_on(root.path(), None, Some(port))
        .await
        .unwrap();
    let t1 = Instant::now();
    loop {
        let got: HashSet<String> = smtp
            .mails()
            .iter()
            .filter_map(|m| header(m, "Message-ID"))
            .collect();
        if queued.is_subset(&got) {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(40),
            "not delivered: {:?}",
            queued.difference(&got).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "{} queued mails delivered {:?} after SMTP came back",
        queued.len(),
        t1.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut count: std::collections::HashMap<String, usize> = Default::default();
    for m in smtp.mails() {
        *count.entry(header(&m, "Message-ID").unwrap()).or_default() += 1;
    }
    assert!(count.values().all(|n| *n == 1), "duplicates: {count:?}");
}

/// A node certificate inside the warning period raises `security.cert_expiring`;
/// the daily heartbeat goes out when enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_and_the_daily_heartbeat_are_mailed() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), None).await else {
        return;
    };
    let cluster = one_node().await;
    let c = cluster.nodes[0].client().unwrap();
    mail_to_noc(&c, smtp.port).await;
    // Node certificates are valid for years: warn 100 years ahead to see the alarm.
    set(&c, "alarm.cert_warn_days", json!(36_500)).await;
    set(&c, "alarm.heartbeat", json!(true)).await;
    set(&c, "alarm.heartbeat_hour", json!(0)).await;
    let t0 = Instant::now();
    let (mut cert, mut heartbeat) = (None, None);
    while (cert.is_none() || heartbeat.is_none()) && t0.elapsed() < Duration::from_secs(30) {
        for m in smtp.mails() {
            let s = header(&m, "Subject").unwrap_or_default();
            if s.contains("Certificate about to expire") {
                cert = Some(m.clone());
            }
            if s.contains("Still alive") {
                heartbeat = Some(m.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cert = cert.expect("no certificate mail");
    assert!(
        cert.contains("node.pem") && cert.contains("expires on"),
        "{cert}"
    );
    assert!(heartbeat.is_some(), "no heartbeat mail");
    // Back to the default: the alarm clears.
    set(&c, "alarm.cert_warn_days", json!(30)).await;
    let t0 = Instant::now();
    loop {
        let subjects: Vec<String> = smtp
            .mails()
            .iter()
            .filter_map(|m| header(m, "Subject"))
            .collect();
        if subjects.iter().any(|s| s.contains("Certificate renewed")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not cleared: {subjects:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Recipients, routes and silences through `tandem alarm ...`: mistakes are refused
/// before anything is written, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_recipients_routes_and_silences_from_the_cli() {
    let cluster = one_node().await;
    let cfg = cluster.nodes[0].config.display().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe())
            .arg("alarm")
            .args(args)
            .args(["--config", &cfg])
            .env("TANDEM_IGNORE_ETC", "1")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = run(&["recipients", "noc", "noc@example.com", "oncall@example.com"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["recipients", "bad", "not-an-address"]);
    assert!(!ok && out.contains("alarm.recipients.bad"), "{out}");
    let (ok, out) = run(&["route", "cluster", "noc"]);
    assert!(ok && out.contains("cluster goes to noc"), "{out}");
    let (ok, out) = run(&["route", "storage", "nobody"]);
    assert!(!ok && out.contains("nobody"), "{out}");
    let (ok, out) = run(&[
        "silence",
        "disk",
        "--alarm",
        "storage.disk_space_low",
        "--subject",
        "node-2",
        "--for",
        "2h",
    ]);
    assert!(ok && out.contains("silence disk until"), "{out}");
    let (ok, out) = run(&["silence", "x", "--alarm", "no.such_alarm", "--for", "1h"]);
    assert!(!ok && out.contains("no.such_alarm"), "{out}");
    let (ok, out) = run(&["silence", "y", "--for", "1h"]);
    assert!(!ok && out.contains("--alarm"), "{out}");
    let c = cluster.nodes[0].client().unwrap();
    let v = c.config_list(Some("alarm.")).await.unwrap();
    let keys: Vec<&str> = v.config.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "alarm.recipients.noc",
            "alarm.route.cluster",
            "alarm.silence.disk"
        ],
        "{v:?}"
    );
    let (ok, out) = run(&["unsilence", "disk"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["unsilence", "disk"]);
    assert!(
        !ok && out.contains("alarm.silence.disk is not set"),
        "{out}"
    );
}

/// Implicit TLS (smtps, TLS from the first byte) with authentication: wrong
/// password refused with the server's answer, right one delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mail_over_implicit_tls_with_auth() {
    let root = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert_path, key_path) = (root.path().join("smtp.pem"), root.path().join("smtp.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let Some(smtp) = SmtpServer::start_opts(
        root.path(),
        Some((&cert_path, &key_path)),
        None,
        &[
            ("SMTP_TEST_MODE", "implicit"),
            ("SMTP_TEST_AUTH", "pbx:right-pass"),
        ],
    )
    .await
    else {
        return;
    };
    let cluster = one_node().await;
    let c = cluster.nodes[0].client().unwrap();
    set(&c, "smtp.host", json!("127.0.0.1")).await;
    set(&c, "smtp.port", json!(smtp.port)).await;
    set(&c, "smtp.security", json!("tls")).await;
    set(&c, "smtp.ca_file", json!(cert_path.display().to_string())).await;
    set(&c, "smtp.username", json!("pbx")).await;
    set(&c, "smtp.password", json!("wrong-pass")).await;
    set(&c, "alarm.recipients.noc", json!(["noc@example.com"])).await;
    let out = alarm_test(&cluster, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("wrong password: {err}");
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("127.0.0.1:{}", smtp.port)) && err.contains("535"),
        "{err}"
    );
    assert!(smtp.mails().is_empty());
    set(&c, "smtp.password", json!("right-pass")).await;
    let out = alarm_test(&cluster, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(header(&mails[0], "X-Test-Tls").as_deref(), Some("True"));
}

/// Two data voters and no witness: the master mails `cluster.no_witness` once, and
/// the cleared mail once a witness joins as the third voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_nodes_without_a_witness_are_mailed_until_a_witness_joins() {
    let root = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpServer::start(root.path(), None).await else {
        return;
    };
    let mut cluster = LocalCluster::prepare(exe(), 3, &["127.0.0.1"], "").unwrap();
    let witness_cfg = std::fs::read_to_string(&cluster.nodes[2].config)
        .unwrap()
        .replace("name = \"node-3\"", "name = \"node-3\"\nrole = \"witness\"");
    std::fs::write(&cluster.nodes[2].config, witness_cfg).unwrap();
    let cfg = |i: usize| cluster.nodes[i].config.display().to_string();
    let (cfg0, cfg1, cfg2) = (cfg(0), cfg(1), cfg(2));
    cluster
        .tandem(&["init", "--json", "--config", &cfg0])
        .await
        .unwrap();
    let token = std::fs::read_to_string(cluster.nodes[0].dir.join("tls/join.token")).unwrap();
    let token = token.trim().to_string();
    cluster.start(0).unwrap();
    cluster
        .wait_health(0, Duration::from_secs(20))
        .await
        .unwrap();
    let c = cluster.nodes[0].client().unwrap();
    mail_to_noc(&c, smtp.port).await;
    let peer0 = cluster.nodes[0].peer_addr.clone();
    let join = ["join", &peer0, "--token", &token, "--json", "--config"];
    cluster
        .tandem(&[&join[..], &[&cfg1]].concat())
        .await
        .unwrap();
    cluster.start(1).unwrap();
    cluster
        .wait_for(Duration::from_secs(30), "2 voters", |v| v.voters == 2)
        .await
        .unwrap();
    let mails = smtp.wait_mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(
        header(&mails[0], "Subject").as_deref(),
        Some("[MAJOR][tandem][node-1] No witness")
    );
    assert!(mails[0].contains("node-1, node-2"), "{}", mails[0]);
    cluster
        .tandem(&[&join[..], &[&cfg2]].concat())
        .await
        .unwrap();
    cluster.start(2).unwrap();
    cluster
        .wait_for(Duration::from_secs(30), "3 voters", |v| v.voters == 3)
        .await
        .unwrap();
    let mails = smtp.wait_mails(2).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(
        header(&mails[1], "Subject").as_deref(),
        Some("[CLEARED][tandem][node-1] Third voter added")
    );
}
