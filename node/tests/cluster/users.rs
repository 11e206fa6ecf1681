//! API users, roles and the audit log (docs/security.md): every route of the route
//! table answered for each kind of caller as the table says; users, tokens and audit
//! entries replicated to the standbys; tokens stored hashed and shown once.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use tandem::http::{route_table, Access};
use tandem_api::{
    AuditEntry, AuditLog, IssuedToken, Role, TokenCreate, UserCreate, UserCreated, UserList, WhoAmI,
};

use super::*;
use tandem_api::client::RawAnswer;

/// A caller of the walk: its token and, if the token is valid, its role.
struct Caller {
    label: &'static str,
    token: Option<String>,
    role: Option<Role>,
}

async fn add_user(admin: &Client, name: &str, role: Role, expires_s: Option<u64>) -> IssuedToken {
    let v = admin
        .user_create(&UserCreate {
            name: name.into(),
            role,
            password: None,
            token: Some(TokenCreate { expires_s }),
        })
        .await
        .unwrap();
    assert_eq!(v.user.role, role);
    v.token.expect("token asked for")
}

/// Fill a route's path parameters with values no handler finds (so that a call that
/// passes the check changes nothing), and pick a body each handler refuses.
fn probe(method: &str, path: &str) -> (String, Option<Vec<u8>>) {
    let mut p = path
        .replace("{key}", "zz.probe")
        .replace("{name}", "nobody")
        .replace("{id}", "0000000000000000")
        .replace("{ext}", "999");
    if p == "/api/v1/recordings" && method == "POST" {
        p.push_str("?bogus=1");
    }
    let body = match (method, p.as_str()) {
        ("POST", "/api/v1/cluster/switchover") => Some(br#"{"to": "x"}"#.to_vec()),
        ("POST" | "PUT", _) => Some(b"not json".to_vec()),
        _ => None,
    };
    (p, body)
}

async fn call(
    c: &Client,
    token: &Option<String>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> RawAnswer {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    c.with_token(token.clone())
        .raw(m, path, body)
        .await
        .unwrap()
}

/// `GET /api/v1/audit` of a node until `pred` holds for one entry (bounded).
async fn wait_audit(c: &Client, what: &str, pred: impl Fn(&AuditEntry) -> bool) -> AuditEntry {
    let t0 = Instant::now();
    loop {
        let log = c.audit(Some(10_000), None).await.unwrap();
        if let Some(e) = log.entries.iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{}: no audit entry for {what}: {:#?}",
            c.base,
            log.entries
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Call until the status is `want` (a standby applies users a moment after the master).
async fn wait_status(c: &Client, token: &str, path: &str, want: u16) -> RawAnswer {
    let t0 = Instant::now();
    loop {
        let a = call(c, &Some(token.to_string()), "GET", path, None).await;
        if a.status == want {
            return a;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{}: GET {path} answers {} (want {want}): {}",
            c.base,
            a.status,
            a.error()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_the_route_table_says() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let admin = cluster.nodes[0].client().unwrap();
    let bootstrap = std::fs::read_to_string(cluster.nodes[0].dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let ada = add_user(&admin, "ada", Role::Admin, None).await;
    let otto = add_user(&admin, "otto", Role::Operator, None).await;
    let rita = add_user(&admin, "rita", Role::Reporting, None).await;
    let brief = add_user(&admin, "brief", Role::Admin, Some(1)).await;
    let gone = admin
        .token_create("rita", &TokenCreate::default())
        .await
        .unwrap();
    admin.token_revoke("rita", &gone.id).await.unwrap();
    // A token of the right shape whose secret was never issued.
    let wrong = format!("tandem.ada.{}.{}", ada.id, "0".repeat(64));
    let callers = [
        Caller {
            label: "bootstrap admin",
            token: Some(bootstrap),
            role: Some(Role::Admin),
        },
        Caller {
            label: "admin user",
            token: Some(ada.token.clone()),
            role: Some(Role::Admin),
        },
        Caller {
            label: "operator",
            token: Some(otto.token.clone()),
            role: Some(Role::Operator),
        },
        Caller {
            label: "reporting",
            token: Some(rita.token.clone()),
            role: Some(Role::Reporting),
        },
        Caller {
            label: "no token",
            token: None,
            role: None,
        },
        Caller {
            label: "wrong token",
            token: Some(wrong),
            role: None,
        },
        Caller {
            label: "expired token",
            token: Some(brief.token.clone()),
            role: None,
        },
        Caller {
            label: "revoked token",
            token: Some(gone.token.clone()),
            role: None,
        },
    ];
    // The one-second token is expired once two seconds have passed (whole seconds).
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut routes = route_table();
    assert!(routes.len() >= 30, "{routes:?}");
    // Leaving the cluster goes last: an admin's call does remove the node.
    routes.sort_by_key(|r| r.path == "/api/v1/cluster/leave");
    let mut seen = BTreeMap::new();
    for spec in &routes {
        let method = spec.method.as_str();
        let (path, body) = probe(method, spec.path);
        // On `leave`, the admins come last (see the break below).
        let leave = spec.path == "/api/v1/cluster/leave";
        let order: Vec<&Caller> = if leave {
            callers.iter().rev().collect()
        } else {
            callers.iter().collect()
        };
        for c in order {
            let a = call(&admin, &c.token, method, &path, body.clone()).await;
            let needed = match spec.access {
                Access::Public => None,
                Access::Authenticated => Some(Role::Reporting),
                Access::Role(r) => Some(r),
                // zz.probe: read by operators, written by admins only.
                Access::ConfigKey if method == "GET" => Some(Role::Operator),
                Access::ConfigKey => Some(Role::Admin),
            };
            let what = format!("{} {method} {path}: {} {}", c.label, a.status, a.error());
            match (needed, c.role) {
                (None, _) => assert!(![401, 403].contains(&a.status), "{what}"),
                (Some(_), None) => assert_eq!(a.status, 401, "{what}"),
                (Some(n), Some(r)) if r < n => {
                    assert_eq!(a.status, 403, "{what}");
                    let msg = a.error();
                    assert!(
                        msg.contains(&format!("needs role {n}"))
                            && msg.contains(&format!("has role {r}")),
                        "{what}"
                    );
                }
                (Some(_), Some(_)) => assert!(![401, 403].contains(&a.status), "{what}"),
            }
            *seen.entry(a.status).or_insert(0) += 1;
            if leave && c.role == Some(Role::Admin) {
                break; // the node has left: the walk is over
            }
        }
    }
    assert!(
        seen.contains_key(&401) && seen.contains_key(&403),
        "{seen:?}"
    );
    let metrics = call(&admin, &None, "GET", "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for status in ["401", "403"] {
        let line = format!("tandem_api_refused_total{{status=\"{status}\"}}");
        assert!(text.contains(&line), "{line} missing: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_allow_their_work_and_reserved_keys_have_no_back_door() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let admin = cluster.nodes[0].client().unwrap();
    let otto = admin.with_token(Some(
        add_user(&admin, "otto", Role::Operator, None).await.token,
    ));
    let rita_token = Some(add_user(&admin, "rita", Role::Reporting, None).await.token);
    let rita = admin.with_token(rita_token.clone());
    // Reporting: CDR query and export, recording list and download.
    let cdrs: Vec<Cdr> = (0..5).map(cdr).collect();
    admin.cdrs_add(&cdrs).await.unwrap();
    let page = rita.cdrs_query(&CdrFilter::default()).await.unwrap();
    assert_eq!(page.cdrs.len(), 5);
    let mut csv_out = Vec::new();
    rita.cdrs_export(&CdrFilter::default(), &mut csv_out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(csv_out).unwrap().lines().count(),
        6,
        "header + 5 rows"
    );
    // Exports are audited, however the query spells the format; JSON pages are not.
    let a = call(
        &rita,
        &rita_token,
        "GET",
        "/api/v1/cdrs?format=%63sv&caller=1001",
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.error());
    let exports = |log: &AuditLog| {
        log.entries
            .iter()
            .filter(|e| e.who == "rita" && e.route == "GET /api/v1/cdrs")
            .map(|e| (e.target.clone(), e.status))
            .collect::<Vec<_>>()
    };
    let log = admin.audit(None, None).await.unwrap();
    assert_eq!(
        exports(&log),
        [
            ("format=csv".to_string(), Some(200)),
            ("format=%63sv&caller=1001".to_string(), Some(200))
        ],
        "{log:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.wav");
    std::fs::write(&f, b"RIFF a short recording").unwrap();
    let (status, rec) = admin
        .upload(
            "/api/v1/recordings?wait_s=0",
            &f,
            &[("x-recording-id", "rec-1".into())],
        )
        .await
        .unwrap();
    assert!([201, 202].contains(&status), "{status} {rec:?}");
    rita.recordings("").await.unwrap();
    let mut wav = Vec::new();
    rita.download("/api/v1/recordings/rec-1", &mut wav)
        .await
        .unwrap();
    assert_eq!(wav, b"RIFF a short recording");
    // Operator: maintenance and alarm keys, not others; not users.
    let (created, _) = otto
        .config_set("maintenance.1", &serde_json::json!(false))
        .await
        .unwrap();
    assert!(created);
    let e = otto
        .config_set("retention.cdr_days", &serde_json::json!(30))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(
        e.to_string().contains("needs role admin")
            && e.to_string().contains("`otto` has role operator"),
        "{e}"
    );
    let e = otto.users().await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // The refused write is in the audit log, with who asked.
    let refused = wait_audit(&admin, "otto's refused write", |e| {
        e.who == "otto" && e.status == Some(403) && e.target == "key=retention.cdr_days"
    })
    .await;
    assert_eq!(refused.route, "PUT /api/v1/config/{key}");
    assert!(refused.from.starts_with("127.0.0.1:"), "{refused:?}");
    // Reserved prefixes: not through the config API, for anyone.
    for key in ["user.mallory", "user.otto", "audit.0000000000000001.1.0"] {
        let e = admin
            .config_set(key, &serde_json::json!({"role": "admin"}))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400), "{key}: {e}");
        assert!(e.to_string().contains("reserved"), "{e}");
        assert_eq!(admin.config_get(key).await.unwrap_err().status(), Some(400));
        assert_eq!(
            admin.config_delete(key).await.unwrap_err().status(),
            Some(400)
        );
    }
    let list = admin.config_list(Some("user.")).await.unwrap();
    assert!(list.config.is_empty(), "{:?}", list.config);
    assert!(admin
        .config_list(Some("audit."))
        .await
        .unwrap()
        .config
        .is_empty());
    // otto is still an operator; made a reporting user, the same token loses the
    // operator's rights at once.
    let me: WhoAmI = otto.whoami().await.unwrap();
    assert_eq!((me.user.as_str(), me.role), ("otto", Role::Operator));
    let cfg = cluster.nodes[0].config.display().to_string();
    let out = cluster
        .tandem(&[
            "user",
            "set",
            "otto",
            "--role",
            "reporting",
            "--config",
            &cfg,
        ])
        .await
        .unwrap();
    assert!(out.contains("now has role reporting"), "{out}");
    let e = otto
        .config_set("maintenance.1", &serde_json::json!(true))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("`otto` has role reporting"), "{e}");
    // Guessing passwords: after 5 failures from one address, 429 for a minute.
    let anon = admin.with_token(None);
    for _ in 0..5 {
        let e = anon.login("otto", "a wrong password").await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
    }
    let e = anon.login("otto", "a wrong password").await.unwrap_err();
    assert_eq!(e.status(), Some(429), "{e}");
    assert!(
        e.to_string()
            .contains("too many failed logins from 127.0.0.1"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_keeps_the_newest_entries() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let admin = cluster.nodes[0].client().unwrap();
    admin
        .config_set("retention.audit_entries", &serde_json::json!(100))
        .await
        .unwrap();
    // Trimmed every 64 audited requests: 200 requests trim at least twice.
    for i in 0..200 {
        admin
            .config_set(&format!("zz.n{i}"), &serde_json::json!(i))
            .await
            .unwrap();
    }
    let log = admin.audit(Some(10_000), None).await.unwrap();
    let n = log.entries.len();
    assert!((100..=100 + 64).contains(&n), "{n} entries kept");
    let targets: Vec<&str> = log.entries.iter().map(|e| e.target.as_str()).collect();
    assert!(
        !targets.contains(&"key=zz.n0"),
        "the oldest entry was kept: {targets:?}"
    );
    assert_eq!(targets.last(), Some(&"key=zz.n199"), "the newest is last");
    let metrics = cluster.nodes[0]
        .anonymous()
        .unwrap()
        .raw(reqwest::Method::GET, "/metrics", None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("tandem_audit_writes_total{result=\"ok\"}"),
        "{text}"
    );
}

/// Every file under `dir` (recursively) as bytes.
fn all_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_tokens_and_audit_replicate_and_tokens_are_stored_hashed() {
    let mut cluster = three_nodes("").await;
    let m = cluster.master().await.expect("master");
    let s = (m + 1) % 3;
    let master = cluster.nodes[m].client().unwrap();
    let standby = cluster.nodes[s].client().unwrap();
    // `tandem user add` on the master prints the token once.
    let cfg = cluster.nodes[m].config.display().to_string();
    let out = cluster
        .tandem(&[
            "user",
            "add",
            "rita",
            "--role",
            "reporting",
            "--token",
            "--json",
            "--config",
            &cfg,
        ])
        .await
        .unwrap();
    let created: UserCreated = serde_json::from_str(&out).unwrap();
    let token = created.token.expect("token").token;
    // The reporting token works on a standby once it has applied the user.
    let a = wait_status(&standby, &token, "/api/v1/cdrs", 200).await;
    assert!(
        a.header("x-tandem-node") == Some(&cluster.nodes[s].id.to_string()),
        "served locally"
    );
    let me: WhoAmI = standby
        .with_token(Some(token.clone()))
        .whoami()
        .await
        .unwrap();
    assert_eq!((me.user.as_str(), me.role), ("rita", Role::Reporting));
    assert_eq!(
        call(&standby, &Some(token.clone()), "GET", "/api/v1/audit", None)
            .await
            .status,
        403
    );
    // Shown once: neither the listing nor the CLI's list shows it again.
    let listed = master
        .raw(reqwest::Method::GET, "/api/v1/users", None)
        .await
        .unwrap();
    let secret = token.rsplit('.').next().unwrap().to_string();
    assert!(!String::from_utf8_lossy(&listed.body).contains(&secret));
    let users: UserList = listed.json().unwrap();
    assert_eq!(users.users.len(), 1);
    let out = cluster
        .tandem(&["user", "list", "--config", &cfg])
        .await
        .unwrap();
    assert!(out.contains("rita") && !out.contains(&secret), "{out}");
    // A user added through a standby (forwarded), with a password from stdin; its
    // session from a login on another node works on every node.
    let scfg = cluster.nodes[s].config.display().to_string();
    let mut child = std::process::Command::new(exe())
        .args([
            "user",
            "add",
            "otto",
            "--role",
            "operator",
            "--password-stdin",
            "--config",
            &scfg,
        ])
        .env("TANDEM_IGNORE_ETC", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"operator password 1\n")
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let third = cluster.nodes[(m + 2) % 3].client().unwrap();
    let t0 = Instant::now();
    let session = loop {
        match third
            .with_token(None)
            .login("otto", "operator password 1")
            .await
        {
            Ok(v) => break v,
            Err(e) if e.status() == Some(401) && t0.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("login: {e}"),
        }
    };
    assert_eq!(session.role, Role::Operator);
    let e = third
        .with_token(None)
        .login("otto", "wrong password!!")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    // The operator's session switches a node to maintenance through a standby.
    let target = cluster.nodes[s].id;
    let key = format!("maintenance.{target}");
    wait_status(&standby, &session.token, "/api/v1/whoami", 200).await;
    standby
        .with_token(Some(session.token.clone()))
        .config_set(&key, &serde_json::json!(false))
        .await
        .unwrap();
    // Audit entries are readable from every node, with who, what, outcome, where from.
    for n in &cluster.nodes {
        let c = n.client().unwrap();
        let e = wait_audit(&c, "otto's maintenance write", |e| {
            e.who == "otto" && e.target == format!("key={key}") && e.status.is_some()
        })
        .await;
        assert_eq!(
            (e.role, e.node, e.status),
            (Role::Operator, target, Some(201)),
            "{e:?}"
        );
        assert!(e.from.starts_with("127.0.0."), "{e:?}");
        let e = wait_audit(&c, "rita's creation", |e| e.route == "POST /api/v1/users").await;
        assert_eq!((e.who.as_str(), e.status), ("bootstrap-admin", Some(201)));
        wait_audit(&c, "otto's login", |e| {
            e.route == "POST /api/v1/login" && e.who == "otto"
        })
        .await;
    }
    // Logging out ends the session on every node; an API token is not a session.
    let ended = third
        .with_token(Some(session.token.clone()))
        .logout()
        .await
        .unwrap();
    assert_eq!(ended.revoked, session.id);
    wait_status(&standby, &session.token, "/api/v1/whoami", 401).await;
    let e = standby
        .with_token(Some(token.clone()))
        .logout()
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let out = cluster
        .tandem(&["audit", "--json", "--limit", "5", "--config", &cfg])
        .await
        .unwrap();
    let log: AuditLog = serde_json::from_str(&out).unwrap();
    assert!(!log.entries.is_empty() && log.entries.len() <= 5, "{log:?}");
    // A second token for rita, expiring in 12 hours, printed once by the CLI.
    let out = cluster
        .tandem(&[
            "user",
            "token",
            "rita",
            "--expires",
            "12h",
            "--json",
            "--config",
            &cfg,
        ])
        .await
        .unwrap();
    let second: IssuedToken = serde_json::from_str(&out).unwrap();
    let left = second.expires.expect("expiry") - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(11) && left <= chrono::Duration::hours(12),
        "{left}"
    );
    let a = wait_status(&standby, &second.token, "/api/v1/whoami", 200).await;
    assert_eq!(
        a.json::<WhoAmI>().unwrap().token_id,
        Some(second.id.clone())
    );
    // Revoking the token and removing the user stop them on the standby too.
    let rita_id = users.users[0].tokens[0].id.clone();
    let out = cluster
        .tandem(&["user", "revoke", "rita", &rita_id, "--config", &cfg])
        .await
        .unwrap();
    assert!(out.contains("revoked"), "{out}");
    let a = wait_status(&standby, &token, "/api/v1/cdrs", 401).await;
    assert!(a.error().contains("not valid"), "{}", a.error());
    cluster
        .tandem(&["user", "remove", "otto", "--config", &cfg])
        .await
        .unwrap();
    wait_status(&standby, &session.token, "/api/v1/whoami", 401).await;
    // Stored hashed: no node's data (Raft log, state machine) nor log holds the secret
    // of any token, while the SHA-256 of rita's is there.
    let hash = tandem::settings::users::secret_hash(&secret);
    let session_secret = session.token.rsplit('.').next().unwrap().to_string();
    let t0 = Instant::now();
    for n in &cluster.nodes {
        loop {
            let files = all_bytes(&n.dir);
            let found = files.iter().any(|(_, b)| contains(b, hash.as_bytes()));
            if found || t0.elapsed() > Duration::from_secs(20) {
                assert!(
                    found,
                    "node {}: the token's hash is nowhere in {}",
                    n.id,
                    n.dir.display()
                );
                for (p, b) in &files {
                    for sec in [&secret, &session_secret] {
                        assert!(
                            !contains(b, sec.as_bytes()),
                            "token secret stored in {}",
                            p.display()
                        );
                    }
                }
                let log = std::fs::read(n.log_path()).unwrap_or_default();
                assert!(
                    !contains(&log, secret.as_bytes()),
                    "token logged in {}",
                    n.log_path().display()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // A change that cannot be audited is not made: with the master and the other
    // standby gone, the survivor refuses (503) before the handler runs.
    for i in [m, (m + 2) % 3] {
        cluster.nodes[i].kill();
    }
    let e = standby
        .config_set("zz.unaudited", &serde_json::json!(1))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(e.to_string().contains("audit log cannot be written"), "{e}");
    assert_eq!(
        standby
            .config_get("zz.unaudited")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
}
