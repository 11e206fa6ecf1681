//! `tandem user add|set|remove|list|token|revoke|whoami`, `tandem audit`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use tandem_api::{AuditLog, IssuedToken, TokenCreate, UserCreate, UserInfo, UserUpdate};

use super::{connect, print, Common, PasswordSource, UserCmd};

pub async fn run(action: UserCmd) -> anyhow::Result<()> {
    match action {
        UserCmd::Add {
            common,
            name,
            role,
            password,
            issue_token,
            expires,
        } => {
            let (_, c) = connect(&common)?;
            let req = UserCreate {
                password: read_password(&password, &name)?,
                name,
                role,
                token: (issue_token || expires.is_some()).then_some(TokenCreate {
                    expires_s: expires_s(expires.as_deref())?,
                }),
            };
            let v = c.user_create(&req).await?;
            print(&common, &v, |v| {
                let mut s = format!(
                    "user {} added with role {}{}",
                    v.user.name,
                    v.user.role,
                    if v.user.password {
                        " (password login)"
                    } else {
                        ""
                    }
                );
                if let Some(t) = &v.token {
                    s.push('\n');
                    s.push_str(&token_text(t));
                }
                s
            });
        }
        UserCmd::Set {
            common,
            name,
            role,
            password,
        } => {
            let (_, c) = connect(&common)?;
            let change = UserUpdate {
                role,
                password: read_password(&password, &name)?,
            };
            let v = c.user_update(&name, &change).await?;
            print(&common, &v, |v| {
                format!("user {} now has role {}", v.name, v.role)
            });
        }
        UserCmd::Remove { common, name } => {
            let (_, c) = connect(&common)?;
            let v = c.user_delete(&name).await?;
            print(&common, &v, |v| {
                format!(
                    "user {} removed ({} tokens revoked)",
                    v.removed, v.tokens_revoked
                )
            });
        }
        UserCmd::List { common } => {
            let (_, c) = connect(&common)?;
            let v = c.users().await?;
            print(&common, &v, |v| {
                if v.users.is_empty() {
                    return "no users (only the bootstrap admin token); add one with `tandem user add alice --role operator --password-prompt`".into();
                }
                v.users.iter().map(user_text).collect::<Vec<_>>().join("\n")
            });
        }
        UserCmd::Token {
            common,
            name,
            expires,
        } => {
            let (_, c) = connect(&common)?;
            let v = c
                .token_create(
                    &name,
                    &TokenCreate {
                        expires_s: expires_s(expires.as_deref())?,
                    },
                )
                .await?;
            print(&common, &v, token_text);
        }
        UserCmd::Revoke { common, name, id } => {
            let (_, c) = connect(&common)?;
            let v = c.token_revoke(&name, &id).await?;
            print(&common, &v, |v| {
                format!("token {} of {} revoked", v.revoked, v.user)
            });
        }
        UserCmd::Whoami { common } => {
            let (_, c) = connect(&common)?;
            let v = c.whoami().await?;
            print(&common, &v, |v| {
                format!(
                    "{} (role {}{})",
                    v.user,
                    v.role,
                    v.token_id
                        .as_deref()
                        .map(|t| format!(", token {t}"))
                        .unwrap_or_default()
                )
            });
        }
    }
    Ok(())
}

/// `--expires`: a bare number is days; or 90s, 30m, 12h, 7d.
fn expires_s(v: Option<&str>) -> anyhow::Result<Option<u64>> {
    v.map(|v| super::parse_duration("--expires", v, 86_400))
        .transpose()
}

/// `tandem audit`.
pub async fn audit(common: &Common, limit: usize, since: Option<String>) -> anyhow::Result<()> {
    let (_, c) = connect(common)?;
    let v = c.audit(Some(limit), since.as_deref()).await?;
    print(common, &v, audit_text);
    Ok(())
}

fn audit_text(v: &AuditLog) -> String {
    if v.entries.is_empty() {
        return "no audit entries".into();
    }
    v.entries
        .iter()
        .map(|e| {
            format!(
                "{}  {:<16} {:<9} {:<22} node {}  {:<40} {:<28} {}",
                e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                e.who,
                e.role,
                e.from,
                e.node,
                e.route,
                e.target,
                e.status
                    .map_or_else(|| "no outcome".to_string(), |s| s.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn user_text(u: &UserInfo) -> String {
    let mut s = format!(
        "{:<16} {:<9} {}  created {} by {}",
        u.name,
        u.role,
        if u.password {
            "password"
        } else {
            "no password"
        },
        u.created.format("%Y-%m-%d"),
        u.created_by
    );
    for t in &u.tokens {
        s.push_str(&format!(
            "\n  token {} ({}) created {} {}",
            t.id,
            t.kind,
            t.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            t.expires.map_or_else(
                || "no expiry".to_string(),
                |e| format!(
                    "expires {}",
                    e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            )
        ));
    }
    s
}

fn token_text(t: &IssuedToken) -> String {
    format!(
        "token {} for {} ({}):\n{}\nKeep it now: it is shown only once (the node stores only its SHA-256). Use it as `Authorization: Bearer <token>` or `--admin-token`/TANDEM_TOKEN.",
        t.id,
        t.user,
        t.expires.map_or_else(
            || "no expiry; revoke with `tandem user revoke`".to_string(),
            |e| format!("expires {}", e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        ),
        t.token
    )
}

/// The password the flags ask for: typed twice at the terminal, or the first line of
/// stdin.
fn read_password(src: &PasswordSource, name: &str) -> anyhow::Result<Option<String>> {
    if src.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("--password-stdin: reading the password from stdin")?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        anyhow::ensure!(!p.is_empty(), "--password-stdin: stdin held no password");
        return Ok(Some(p));
    }
    if !src.password_prompt {
        return Ok(None);
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "--password-prompt needs a terminal; pipe the password with --password-stdin instead"
    );
    let a = prompt(&format!("password for {name}: "))?;
    let b = prompt("again: ")?;
    anyhow::ensure!(a == b, "the two passwords differ; nothing was changed");
    Ok(Some(a))
}

/// One line read from the terminal with echo off.
fn prompt(text: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("{text}");
    std::io::stderr().flush().ok();
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning terminal echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, SetArg::TCSANOW, &saved).context("restoring terminal echo")?;
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
