//! Real phones through real nodes: two baresip phones in the client namespace
//! register to the VIP, call each other through the master, the master is
//! killed, and without registering again they call each other through the new
//! master. Each call's CDR and recording are read from a standby.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chaos_tests::api;
use chaos_tests::cluster::ClusterSpec;
use chaos_tests::phones::{self, Phone, PhoneSpec, SourceCounter, Sources, Wav};
use chaos_tests::preflight::Needs;
use chaos_tests::scenario::{ms, Scenario};
use chaos_tests::topology;
use serde::de::DeserializeOwned;
use tandem_api::{Cdr, CdrFilter, CdrPage, SipServiceState, SipStatusView};
use tandem_replication::cdr::Disposition;

use super::scenario_test;

const NAME: &str = "sip_phones_survive_master_kill";
/// Caller and callee: extension, password, tone.
const CALLER: (&str, &str, f64) = ("1001", "chaos-secret-1001", 1000.0);
const CALLEE: (&str, &str, f64) = ("1002", "chaos-secret-1002", 600.0);
/// Registration interval the phones ask for (the registrar's maximum): they
/// refresh only after ~54 min, far beyond the test.
const REGINT_S: u32 = 3600;
/// Talk time of each call.
const TALK: Duration = Duration::from_secs(3);

/// The `[sip]` section of the data nodes. `0.0.0.0` so that the service
/// receives what is sent to the VIP on whichever node holds it (the VIP is
/// added to and removed from eth0 at run time); MD5 only, for baresip 1.0.
const SIP_CONFIG: &str = "[sip]\nlisten = \"0.0.0.0:5060\"\nrtp_ports = \"20000-20999\"\ndigest_algorithms = [\"MD5\"]\n";

/// What one call measured.
struct Call {
    dialled: Instant,
    /// The caller's CALL_ESTABLISHED (its 200 OK).
    established: Instant,
    hung_up: Instant,
    attempts: u32,
}

/// A registration as the cluster stores it.
#[derive(Debug, Clone, PartialEq)]
struct Reg {
    contact: String,
    source: String,
    /// Unix time of expiry (from `expires_in_s`, ±1 s).
    expires_at: i64,
}

#[test]
fn sip_phones_survive_master_kill() {
    scenario_test(NAME, Duration::from_secs(240), || async {
        if !phones::have_baresip() {
            println!("=== chaos scenario {NAME} ===");
            println!(
                "{NAME}: skipped: baresip not installed (chaos-tests/setup.sh installs baresip-core)"
            );
            return Ok(());
        }
        let mut spec = ClusterSpec::data(3);
        spec.data_config_extra = SIP_CONFIG.to_string();
        let Some(mut s) = Scenario::setup(
            NAME,
            spec,
            Needs {
                nft: true,
                ..Needs::default()
            },
        )
        .await?
        else {
            return Ok(());
        };
        let m1 = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        for (user, pass, _) in [CALLER, CALLEE] {
            s.cluster
                .tandem_cli(
                    m1,
                    &["sip", "user", "add", user, "--password", pass, "--json"],
                )
                .await
                .with_context(|| format!("tandem sip user add {user}"))?;
        }
        s.start_load().await?;

        let client_ns = s.cluster.topology().client.clone();
        let run_dir = s.cluster.run_dir.clone();
        let mut uas = Vec::new();
        for (i, (user, pass, hz)) in [CALLER, CALLEE].into_iter().enumerate() {
            let i = i as u16;
            let spec = PhoneSpec {
                name: format!("phone{user}"),
                user: user.into(),
                password: pass.into(),
                server: topology::VIP,
                local_ip: topology::CLIENT_IP,
                sip_port: 5070 + 10 * i,
                rtp_base: 30000 + 100 * i,
                ctrl_port: 4441 + i,
                tone_hz: hz,
                regint_s: REGINT_S,
            };
            uas.push(Phone::start(spec, &run_dir, &client_ns, &s.cluster.client).await?);
        }
        let (caller, callee) = (&uas[0], &uas[1]);
        let sources =
            SourceCounter::install(&client_ns, topology::VIP, &[5070, 5080], (30000, 30199))?;

        // Both registered, as every data node sees it (the bindings are replicated).
        let t0 = Instant::now();
        let regs_before = loop {
            let all = registrations_everywhere(&s).await;
            if all.values().all(|r| r.len() == 2) {
                break all[&m1].clone();
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!(
                    "the phones are not registered on every data node within 20 s: {all:?}; \
                     see {} and {}",
                    caller.log.display(),
                    callee.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        s.say(format!(
            "phones registered in {} ms (logs in {}): {}",
            ms(t0.elapsed()),
            run_dir.join("phones").display(),
            regs_before
                .iter()
                .map(|(u, r)| format!("{u} from {} for {} s", r.source, r.expires_at - now()))
                .collect::<Vec<_>>()
                .join(", ")
        ));

        // ---- call 1, on the first master
        let m = s.cluster.wait_master(Duration::from_secs(5), &[]).await?;
        let standby = *s.cluster.data_ids().iter().find(|id| **id != m).unwrap();
        let c1 = call(&s, caller, callee, TALK).await?;
        s.say(format!(
            "call 1 through node {m}: 200 OK {} ms after dialling, hung up after {} ms",
            ms(c1.established - c1.dialled),
            ms(c1.hung_up - c1.established)
        ));
        check_call(&mut s, "call1", &c1, m, standby, 1).await;
        let after1 = sources.read()?;

        // The counters that show a REGISTER: baresip's events and log lines,
        // each node's service counter.
        let mark = [caller.journal_len(), callee.journal_len()];
        let log_regs: Vec<usize> = uas.iter().map(Phone::registrations_in_log).collect();
        let served_before = registrations_served(&s).await;
        s.say(format!(
            "REGISTERs so far: phones' logs {log_regs:?}, answered per node {served_before:?}"
        ));

        // ---- kill -9 of the master, call 2 on the new master
        let at = s.cluster.kill9(m)?;
        s.fault(&format!("kill -9 of master node {m}"), at);
        let new = s.cluster.wait_master(Duration::from_secs(15), &[m]).await?;
        let master_seen = at.elapsed();
        s.say(format!(
            "node {new} is master with the VIP {} ms after the kill",
            ms(master_seen)
        ));
        let c2 = call(&s, caller, callee, TALK).await;
        s.await_failover(at, Some(m), Duration::from_secs(15)).await;
        let standby2 = *s
            .cluster
            .data_ids()
            .iter()
            .find(|id| **id != m && **id != new)
            .unwrap();
        match c2 {
            Ok(c2) => {
                let dialled_utc = chrono::Utc::now()
                    - chrono::Duration::from_std(c2.dialled.elapsed()).unwrap_or_default();
                s.say(format!(
                    "call 2 through node {new}: 200 OK {} ms after the kill ({} ms after dialling at {}, {} attempt(s))",
                    ms(c2.established - at),
                    ms(c2.established - c2.dialled),
                    dialled_utc.format("%H:%M:%S%.3f"),
                    c2.attempts
                ));
                s.figure("kill_to_call_200ok_ms", ms(c2.established - at));
                s.figure(
                    "kill_to_master_seen_ms",
                    format!("{} (new master node {new})", ms(master_seen)),
                );
                s.figure("call2_dial_to_200ok_ms", ms(c2.established - c2.dialled));
                check_call(&mut s, "call2", &c2, new, standby2, 2).await;
            }
            Err(e) => s.fail(format!(
                "call 2 after the failover: {e:#}\n--- {} log tail:\n{}",
                caller.spec.name,
                caller.log_tail(3000)
            )),
        }

        let after2 = sources.read()?;
        packet_sources(&mut s, "call1", Sources::default(), after1);
        packet_sources(&mut s, "call2", after1, after2);

        // No phone registered again: no REGISTERING event, no new 200 OK line
        // in their logs, the new master answered no REGISTER, same bindings.
        let reg_events: Vec<usize> = uas
            .iter()
            .zip(mark)
            .map(|(p, k)| {
                p.events_since(k, "REGISTERING").len() + p.events_since(k, "REGISTER_OK").len()
            })
            .collect();
        let log_regs_after: Vec<usize> = uas.iter().map(Phone::registrations_in_log).collect();
        let served_after = registrations_served(&s).await;
        let regs_after = registrations(&s, new).await.unwrap_or_default();
        s.figure(
            "registers_during_failover",
            format!(
                "events {reg_events:?}, log lines {log_regs:?} → {log_regs_after:?}, answered by node {new}: {:?} → {:?}",
                served_before.get(&new),
                served_after.get(&new)
            ),
        );
        s.check(
            reg_events.iter().all(|n| *n == 0),
            format!("a phone registered again during the failover (REGISTERING/REGISTER_OK events {reg_events:?})"),
        );
        s.check(
            log_regs == log_regs_after,
            format!("the phones' logs show new registrations: {log_regs:?} → {log_regs_after:?}"),
        );
        s.check(
            served_before.contains_key(&new) && served_before.get(&new) == served_after.get(&new),
            format!(
                "node {new} answered REGISTERs: {:?} → {:?}",
                served_before.get(&new),
                served_after.get(&new)
            ),
        );
        let same = regs_before.len() == regs_after.len()
            && regs_before.iter().all(|(u, r)| {
                regs_after.get(u).is_some_and(|a| {
                    a.contact == r.contact
                        && a.source == r.source
                        && (a.expires_at - r.expires_at).abs() <= 1
                })
            });
        s.check(
            same,
            format!("bindings changed over the failover: {regs_before:?} → {regs_after:?}"),
        );

        let mut uas = uas;
        for p in &mut uas {
            if !p.is_running() {
                s.fail(format!("{} exited; see {}", p.spec.name, p.log.display()));
            }
            p.stop();
        }
        let t = Instant::now();
        s.cluster
            .restart_as_standby(m, Duration::from_secs(60))
            .await?;
        s.figure("rejoin_ms", ms(t.elapsed()));
        s.finish().await
    });
}

/// SIP and RTP packets the phones received between two readings, by source;
/// all must come from the VIP (what a phone behind NAT can receive).
fn packet_sources(s: &mut Scenario, tag: &str, from: Sources, to: Sources) {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let (sv, so) = (
        d(from.sip_from_vip, to.sip_from_vip),
        d(from.sip_from_other, to.sip_from_other),
    );
    let (rv, ro) = (
        d(from.rtp_from_vip, to.rtp_from_vip),
        d(from.rtp_from_other, to.rtp_from_other),
    );
    s.figure(
        &format!("{tag}_packets_to_phones"),
        format!("SIP {sv} from the VIP, {so} from elsewhere; RTP {rv} from the VIP, {ro} from elsewhere"),
    );
    s.check(
        so == 0 && ro == 0 && sv > 0 && rv > 0,
        format!("{tag}: the phones got SIP {so} / RTP {ro} packet(s) from an address other than the VIP (and {sv} / {rv} from it)"),
    );
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `GET <node>/api/v1/<path>` with the admin token, decoded as the endpoint's type.
async fn get<T: DeserializeOwned + Send + 'static>(
    s: &Scenario,
    node: u64,
    path: &str,
) -> anyhow::Result<T> {
    let url = format!("{}/api/v1/{path}", api::base(s.cluster.node(node).ip));
    let token = s.cluster.token.clone();
    s.cluster
        .client
        .run(move || async move { api::get_json(&url, Some(&token), Duration::from_secs(2)).await })
        .await?
}

/// Unexpired registrations stored on `node`, by extension.
async fn registrations(s: &Scenario, node: u64) -> anyhow::Result<BTreeMap<String, Reg>> {
    let v: SipStatusView = get(s, node, "sip/status").await?;
    let t = now();
    Ok(v.registrations
        .into_iter()
        .map(|r| {
            (
                r.extension,
                Reg {
                    contact: r.contact,
                    source: r.source,
                    expires_at: t + r.expires_in_s,
                },
            )
        })
        .collect())
}

/// Registrations on every running data node.
async fn registrations_everywhere(s: &Scenario) -> BTreeMap<u64, BTreeMap<String, Reg>> {
    let mut out = BTreeMap::new();
    for id in s.cluster.data_ids() {
        if s.cluster.node(id).is_running() {
            out.insert(id, registrations(s, id).await.unwrap_or_default());
        }
    }
    out
}

/// REGISTERs each running node's service has answered (`registrations_total`).
async fn registrations_served(s: &Scenario) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for id in s.cluster.data_ids() {
        if !s.cluster.node(id).is_running() {
            continue;
        }
        if let Ok(v) = get::<SipStatusView>(s, id, "sip/status").await {
            if let Some(SipServiceState::Running(svc)) = v.service {
                out.insert(id, svc.status.registrations_total);
            }
        }
    }
    out
}

/// The caller dials the callee through the VIP, the callee answers by
/// itself, they talk for `talk`, the caller hangs up. A call that fails to
/// set up is tried again (up to 3 attempts, 20 s each).
async fn call(
    s: &Scenario,
    caller: &Phone,
    callee: &Phone,
    talk: Duration,
) -> anyhow::Result<Call> {
    let target = format!("sip:{}@{}", callee.spec.user, topology::VIP);
    let mut attempts = 0;
    let (dialled, established) = loop {
        attempts += 1;
        let mark = caller.journal_len();
        let dialled = Instant::now();
        caller.command("dial", &target).await?;
        let ev = caller
            .wait_event(
                mark,
                &["CALL_ESTABLISHED", "CALL_CLOSED"],
                Duration::from_secs(20),
            )
            .await;
        match ev {
            Ok(e) if e.event() == Some("CALL_ESTABLISHED") => break (dialled, e.at),
            Ok(e) => {
                s.say(format!("call attempt {attempts} failed: {}", e.json));
            }
            Err(e) => {
                s.say(format!("call attempt {attempts}: {e:#}"));
                let _ = caller.command("hangup", "").await;
            }
        }
        if attempts >= 3 {
            bail!(
                "no call set up in {attempts} attempts; see {}",
                caller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mark_b = callee.journal_len();
    tokio::time::sleep(talk.saturating_sub(established.elapsed())).await;
    let mark_a = caller.journal_len();
    caller.command("hangup", "").await?;
    let hung_up = Instant::now();
    caller
        .wait_event(mark_a, &["CALL_CLOSED"], Duration::from_secs(10))
        .await?;
    callee
        .wait_event(mark_b, &["CALL_CLOSED"], Duration::from_secs(10))
        .await?;
    Ok(Call {
        dialled,
        established,
        hung_up,
        attempts,
    })
}

/// The call's CDR and recording, read from `standby`: caller, callee,
/// answered, billsec within 1 s of the measured talk time, `node` = the
/// master it went through, and the two tones on the recording's channels.
async fn check_call(s: &mut Scenario, tag: &str, c: &Call, master: u64, standby: u64, nth: usize) {
    let (caller, callee) = (CALLER.0, CALLEE.0);
    let filter = CdrFilter {
        caller: Some(caller.into()),
        callee: Some(callee.into()),
        limit: Some(100),
        ..CdrFilter::default()
    };
    let path = format!("cdrs{}", filter.query_string("json"));
    let t0 = Instant::now();
    let cdr = loop {
        match get::<CdrPage>(s, standby, &path).await {
            Ok(v) => {
                let mut cdrs: Vec<Cdr> = v.cdrs;
                if cdrs.len() >= nth {
                    cdrs.sort_by_key(|c| c.start);
                    break Some(cdrs.swap_remove(nth - 1));
                }
            }
            Err(e) if t0.elapsed() > Duration::from_secs(15) => {
                s.fail(format!("{tag}: reading CDRs from node {standby}: {e:#}"));
                break None;
            }
            Err(_) => {}
        }
        if t0.elapsed() > Duration::from_secs(15) {
            s.fail(format!(
                "{tag}: node {standby} has no CDR {nth} of {caller} → {callee} within 15 s"
            ));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(cdr) = cdr else { return };
    let talk = (c.hung_up - c.established).as_secs_f64();
    let billsec = cdr.billsec as f64;
    let disposition = cdr.disposition.as_str();
    let want_node = format!("node-{master}");
    s.check(
        cdr.disposition == Disposition::Answered,
        format!("{tag}: disposition {disposition} (want answered): {cdr:?}"),
    );
    s.check(
        (billsec - talk).abs() <= 1.0,
        format!("{tag}: billsec {billsec} vs measured talk time {talk:.2} s"),
    );
    s.check(
        cdr.node == want_node,
        format!(
            "{tag}: CDR node {:?} (want {want_node}, the master)",
            cdr.node
        ),
    );
    let rec_id = cdr.recording_id.clone().unwrap_or_default();
    s.figure(
        &format!("{tag}_cdr"),
        format!(
            "{caller}→{callee} {disposition} billsec {billsec} (talk {talk:.2} s) node {} recording {} (read from node {standby})",
            cdr.node,
            if rec_id.is_empty() { "none" } else { &rec_id },
        ),
    );
    if rec_id.is_empty() {
        s.fail(format!("{tag}: the CDR has no recording_id: {cdr:?}"));
        return;
    }

    // The recording, from the standby (503 until its copy is there).
    let url = format!(
        "{}/api/v1/recordings/{rec_id}",
        api::base(s.cluster.node(standby).ip)
    );
    let t0 = Instant::now();
    let bytes = loop {
        let (u, token) = (url.clone(), s.cluster.token.clone());
        let got =
            s.cluster
                .client
                .run(move || async move {
                    api::get_bytes(&u, Some(&token), Duration::from_secs(5)).await
                })
                .await
                .and_then(|r| r);
        match got {
            Ok((200, b)) => break Some(b),
            Ok((status, b)) if t0.elapsed() > Duration::from_secs(20) => {
                s.fail(format!(
                    "{tag}: GET {url}: HTTP {status} after 20 s: {}",
                    String::from_utf8_lossy(&b)
                ));
                break None;
            }
            Err(e) if t0.elapsed() > Duration::from_secs(20) => {
                s.fail(format!("{tag}: GET {url}: {e:#}"));
                break None;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let Some(bytes) = bytes else { return };
    match Wav::parse(&bytes) {
        Ok(w) => {
            let (f0, f1) = if w.channels == 2 && w.samples.len() > 2 * w.rate as usize {
                (w.dominant_hz(0), w.dominant_hz(1))
            } else {
                (0.0, 0.0)
            };
            s.figure(
                &format!("{tag}_recording"),
                format!(
                    "{} bytes, {} ch {} Hz, {:.2} s, dominant {f0} Hz / {f1} Hz",
                    bytes.len(),
                    w.channels,
                    w.rate,
                    w.secs()
                ),
            );
            s.check(
                (w.channels, w.rate) == (2, 8000),
                format!(
                    "{tag}: recording is {} ch {} Hz, want 2 ch 8000 Hz",
                    w.channels, w.rate
                ),
            );
            s.check(
                (w.secs() - talk).abs() <= 1.5,
                format!(
                    "{tag}: recording {:.2} s vs talk time {talk:.2} s",
                    w.secs()
                ),
            );
            s.check(
                f0 == CALLER.2 && f1 == CALLEE.2,
                format!(
                    "{tag}: recording's dominant frequencies {f0} Hz / {f1} Hz, want {} / {}",
                    CALLER.2, CALLEE.2
                ),
            );
        }
        Err(e) => s.fail(format!("{tag}: recording {rec_id}: {e:#}")),
    }
}
